"""S3-compatible storage through boto3 (AWS, MinIO, moto)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.settings import Settings
from app.storage.interface import StorageError, StoredObject, validate_key
from app.storage.signing import content_disposition

# Large files go up in 8 MiB parts, two at a time: boto3's default of ten buffers 80 MiB per upload,
# too much for an API that stores several users' images at once.
_TRANSFER = TransferConfig(multipart_chunksize=8 * 1024 * 1024, max_concurrency=2)


class S3Storage:
    """Objects live under s3://bucket/prefix/<key>."""

    def __init__(self, settings: Settings, *, bucket: str, prefix: str = "") -> None:
        if not bucket:
            raise ValueError("LEAP_STORAGE_URL needs a bucket: s3://bucket[/prefix]")
        self.bucket = bucket
        self.prefix = prefix
        config = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
            signature_version="s3v4",
        )
        credentials: dict[str, Any] = {}
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            credentials = {
                "aws_access_key_id": settings.s3_access_key_id,
                "aws_secret_access_key": settings.s3_secret_access_key.get_secret_value(),
            }
        session = boto3.session.Session()
        self.client = session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=config,
            **credentials,
        )
        self.presign_client = self.client
        if settings.s3_public_endpoint_url:
            self.presign_client = session.client(
                "s3",
                endpoint_url=settings.s3_public_endpoint_url,
                region_name=settings.s3_region,
                config=config,
                **credentials,
            )

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"cannot store {key}: {error}") from error

    def put_file(self, key: str, path: Path, *, content_type: str = "application/octet-stream") -> None:
        try:
            self.client.upload_file(
                str(path), self.bucket, self._key(key), ExtraArgs={"ContentType": content_type}, Config=_TRANSFER
            )
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"cannot store {key}: {error}") from error

    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read()
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"cannot read {key}: {error}") from error

    def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (BotoCoreError, ClientError) as error:
                raise StorageError(f"cannot delete objects: {error}") from error

    def delete_prefix(self, prefix: str) -> int:
        full_prefix = self._key(prefix.rstrip("/")) + "/"
        deleted = 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if objects:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                    deleted += len(objects)
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"cannot delete {prefix}: {error}") from error
        return deleted

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def list_folders(self, prefix: str) -> Iterator[str]:
        full_prefix = self._key(prefix.rstrip("/")) + "/"
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix, Delimiter="/"):
                for item in page.get("CommonPrefixes", []):
                    yield item["Prefix"][len(full_prefix) :].rstrip("/")
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"cannot list {prefix}: {error}") from error

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        full_prefix = self._key(prefix.rstrip("/")) + "/"
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    yield StoredObject(key=self._relative(item["Key"]), modified=item["LastModified"])
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"cannot list {prefix}: {error}") from error

    def presign_get(self, key: str, *, filename: str, expires_in: timedelta, base_url: str) -> str:
        return self.presign_client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ResponseContentDisposition": content_disposition(filename),
            },
            ExpiresIn=int(expires_in.total_seconds()),
        )

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as error:
            raise StorageError(f"bucket {self.bucket} unreachable: {error}") from error

    def create_bucket(self) -> None:
        """Create the bucket if missing (development and tests; production buckets are provisioned)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)
