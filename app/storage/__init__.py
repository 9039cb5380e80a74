"""Object storage for inputs and artifacts: S3-compatible (boto3) or a local folder."""

from app.storage.base import Storage, StorageError
from app.storage.factory import make_storage

__all__ = ["Storage", "StorageError", "make_storage"]
