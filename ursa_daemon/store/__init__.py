"""Object storage: one :class:`Store` per bucket and credential role, over obstore.

``get_store(profile, role)`` is the way in. ``storage_uri`` and
``parse_storage_uri`` map between ``(bucket_kind, key)`` and the URIs the
catalog records (``s3://<bucket>/<key>`` or ``file:///<root>/<kind>/<key>``).
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import unquote

from ursa_daemon.config import LocalProfile, Role, S3Profile, resolve_credentials
from ursa_daemon.store._common import StreamReader, check_key
from ursa_daemon.store.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PART_SIZE,
    Body,
    BucketKind,
    ObjectMeta,
    ObjectReader,
    Store,
)
from ursa_daemon.store.local import LocalStore, file_uri
from ursa_daemon.store.s3 import S3Store, lance_storage_options

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "Body",
    "BucketKind",
    "LocalStore",
    "ObjectMeta",
    "ObjectReader",
    "S3Store",
    "Store",
    "StreamReader",
    "get_store",
    "lance_storage_options",
    "parse_storage_uri",
    "storage_uri",
]

_KINDS: tuple[BucketKind, ...] = ("raw", "assets")


def get_store(profile: LocalProfile | S3Profile, role: Role | str) -> Store:
    """The store of ``role``'s bucket (``raw_*`` → raw, ``assets_*`` → assets).

    For an S3 profile the role's credentials are resolved now
    (``CredentialError`` if they cannot be).
    """
    kind = Role(role).bucket_kind
    if isinstance(profile, LocalProfile):
        return LocalStore(_local_root(profile) + "/" + kind, bucket_kind=kind)
    return S3Store.from_profile(profile, kind, resolve_credentials(profile, role))


def _local_root(profile: LocalProfile) -> str:
    return os.path.abspath(profile.root)


def storage_uri(
    profile: LocalProfile | S3Profile, bucket_kind: BucketKind, key: str
) -> str:
    """The URI of ``key`` in ``bucket_kind``; ``key`` may be a prefix ending in ``/``."""
    if bucket_kind not in _KINDS:
        raise ValueError(f"bucket kind must be 'raw' or 'assets', not {bucket_kind!r}")
    check_key(key, prefix=True)
    if isinstance(profile, LocalProfile):
        return file_uri(f"{_local_root(profile)}/{bucket_kind}/{key}")
    return f"s3://{profile.bucket(bucket_kind)}/{key}"


def parse_storage_uri(
    uri: str, profile: LocalProfile | S3Profile
) -> tuple[Literal["raw", "assets"], str]:
    """``(bucket_kind, key)`` of a URI from :func:`storage_uri`; ``ValueError`` naming the URI.

    The bucket (or ``<root>/raw``, ``<root>/assets`` directory) must be the
    profile's, the scheme must match the profile kind, and the key may hold no
    ``.``/``..`` or empty segments. A prefix URI (trailing ``/``) keeps its ``/``.
    """
    if isinstance(profile, LocalProfile):
        kind, key = _parse_file_uri(uri, profile)
    else:
        kind, key = _parse_s3_uri(uri, profile)
    try:
        check_key(key, prefix=True)
    except ValueError as exc:
        raise ValueError(f"storage URI {uri!r}: {exc}") from None
    return kind, key


def _parse_s3_uri(uri: str, profile: S3Profile) -> tuple[BucketKind, str]:
    if not uri.startswith("s3://"):
        raise ValueError(
            f"storage URI {uri!r} is not an s3:// URI, but the profile is kind 's3'"
        )
    bucket, _, key = uri[len("s3://") :].partition("/")
    for kind in _KINDS:
        if bucket == profile.bucket(kind):
            return kind, key
    raise ValueError(
        f"storage URI {uri!r} names bucket {bucket!r}, which is neither the profile's raw "
        f"bucket {profile.raw_bucket!r} nor its assets bucket {profile.assets_bucket!r}"
    )


def _parse_file_uri(uri: str, profile: LocalProfile) -> tuple[BucketKind, str]:
    if not uri.startswith("file:///"):
        raise ValueError(
            f"storage URI {uri!r} is not a file:/// URI, but the profile is kind 'local'"
        )
    path = unquote(uri[len("file://") :])
    if any(seg in (".", "..") for seg in path.split("/")):
        raise ValueError(f"storage URI {uri!r} has a '.' or '..' segment")
    roots = {_local_root(profile), os.path.realpath(profile.root)}
    for root in roots:
        for kind in _KINDS:
            base = f"{root}/{kind}"
            if path == base:
                return kind, ""
            if path.startswith(base + "/"):
                return kind, path[len(base) + 1 :]
    raise ValueError(
        f"storage URI {uri!r} is not under the profile's {_local_root(profile)}/raw "
        "or /assets directory"
    )
