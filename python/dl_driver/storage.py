"""Storage for Python: open any location dl-driver reads or writes, and inspect or move its objects.

    >>> store = dl_driver.storage.open("s3://bucket/data", endpoint_url="http://127.0.0.1:9000")
    >>> store.put("a/b.bin", b"...")
    >>> bytes(store.get("a/b.bin"))

Reads return a ``Buffer`` that shares the bytes without a copy (``memoryview(buf)``, ``numpy.frombuffer(buf)``,
``bytes(buf)`` copies); ``store.readinto(key, start, target)`` fills memory of your own (local files straight into
it). Calls release the GIL. A missing object raises FileNotFoundError; other failures raise ``dl_driver.StorageError``
naming the URI (never a credential).
"""

from __future__ import annotations

import io

from dl_driver._core import Buffer, ObjectInfo, StorageError, Store

__all__ = ["Buffer", "ObjectInfo", "SeekableReader", "StorageError", "Store", "open"]


class SeekableReader(io.RawIOBase):
    """A read-only, seekable file of ``size`` bytes; a subclass's ``readinto`` reads from ``self._at`` on."""

    def __init__(self, size: int) -> None:
        self._size, self._at = size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = max(0, base + offset)
        return self._at


def open(uri: str, **options: str | float | bool) -> Store:  # noqa: A001 - mirrors builtins.open on purpose
    """Opens a storage location.

    Args:
        uri: ``file://PATH``, ``direct://PATH`` (O_DIRECT), ``s3://BUCKET/PREFIX``, ``az://CONTAINER/PREFIX``,
            ``memory://PREFIX`` or a local path.
        options: DLIO's storage_options names (``access_key_id``, ``secret_access_key``, ``endpoint_url``, ``region``,
            ``s3_force_path_style``, ``s3_max_attempts``), dl-driver's (``max_in_flight``, ``part_size``,
            ``max_retries``, ``retry_timeout``, ``backoff_initial``, ``backoff_max``) or the backend's object_store
            config keys (``allow_http``, ``timeout``, ``account_name``, ``account_key``, ...). ``AWS_*`` and ``AZURE_*``
            environment variables fill in the rest.
    """
    return Store(uri, {key: _text(value) for key, value in options.items()})


def _text(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
