"""A directory playing one bucket: the ``local`` profile's ``<root>/raw`` or ``<root>/assets``.

obstore's LocalStore refuses ``attributes=``, so nothing but the bytes is
stored: ``sha256`` and ``content_type`` are dropped and ``head()`` returns
``sha256=None`` (on this profile the uploaded manifest carries the hashes).
Writes go to a temporary file renamed into place, so readers never see a
partial object.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from obstore.store import LocalStore as _ObLocalStore

from ursa_daemon.store._common import ObstoreBackend, check_key
from ursa_daemon.store.base import BucketKind

__all__ = ["LocalStore", "file_uri"]


def file_uri(path: str) -> str:
    """``file://`` + the percent-quoted absolute path (a trailing ``/`` is kept)."""
    return "file://" + quote(path, safe="/")


class LocalStore(ObstoreBackend):
    """One bucket as a directory (created if missing)."""

    def __init__(
        self, directory: str | os.PathLike[str], *, bucket_kind: BucketKind
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.bucket = self.directory
        self.bucket_kind = bucket_kind
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        self._store = _ObLocalStore(self.directory, mkdir=True, automatic_cleanup=True)

    def uri(self, key: str) -> str:
        """``file:///abs/dir/key``; ``key`` may be a prefix ending in ``/``."""
        check_key(key, prefix=True)
        return file_uri(f"{self.directory}/{key}")

    def __repr__(self) -> str:
        return f"LocalStore(directory={self.directory!r}, bucket_kind={self.bucket_kind!r})"
