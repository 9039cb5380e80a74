"""Object storage for inputs and artifacts: S3-compatible (boto3) or a local folder."""

from app.storage.factory import make_storage
from app.storage.interface import Storage, StorageError

__all__ = ["Storage", "StorageError", "make_storage"]
