"""``ursa.store``: the object-store errors under the seeds' names.

``ObjectStoreError`` is :class:`ursa_daemon.errors.StoreError` (a failure that is not
worth retrying, or a transient one whose retries ran out; the message names the key)
and ``ObjectStoreTransientError`` is :class:`ursa_daemon.errors.TransientStoreError`
(a subclass of it). ``ObjectStore`` is the store interface.
"""

from __future__ import annotations

from ursa_daemon.errors import (
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StorePermissionError,
    TransientStoreError,
)
from ursa_daemon.store import ObjectMeta, Store

ObjectStoreError = StoreError
ObjectStoreTransientError = TransientStoreError
ObjectStore = Store

__all__ = [
    "ObjectExists",
    "ObjectMeta",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreTransientError",
    "StorePermissionError",
]
