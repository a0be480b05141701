"""Storage adapters: one fsspec-backed layer for local disk, S3 and Azure Blob, and the stores on top."""

from fleetscore.storage.fs import Storage, open_storage

__all__ = ["Storage", "open_storage"]
