"""``Context``: what the operations below the API take (ingest, registration, downloads,
readers, verification, the daemon): the configured profile, its stores per role, the
catalog handles and the upload limits.

A fresh context reads through the ``assets_ro`` role only; :meth:`Context.enable_writes`
opens a second catalog handle on ``assets_rw`` (on the local profile there is no
credential boundary, so the flag is the only difference). Both handles open on first
use, so importing or building a context costs no lancedb/pyarrow.

The catalog's location comes from the pointer ``<assets>/ursa/ACTIVE.json``
(``{"catalog_prefix": "ursa/catalog/<name>"}``), written on first open of an empty store.
``DataInterface`` (``ursa_daemon.api``), the scientists' facade, is built on this class;
nothing here knows it.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ursa_daemon.config import Config, LocalProfile, Role, S3Profile, UploadConfig, resolve_credentials
from ursa_daemon.errors import (
    CatalogError,
    CatalogPermissionError,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StorePermissionError,
    WritesNotEnabled,
)
from ursa_daemon.log import get_logger
from ursa_daemon.store import Store, get_store
from ursa_daemon.store.lease import Lease

if TYPE_CHECKING:
    from ursa_daemon.catalog import Catalog
    from ursa_daemon.catalog.core import CommitLock

__all__ = [
    "ACTIVE_POINTER_KEY",
    "COMMIT_LOCK_TTL_S",
    "COMMIT_LOCK_WAIT_S",
    "DEFAULT_CATALOG_PREFIX",
    "Context",
    "commit_lock",
    "open_catalog",
]

log = get_logger("ursa.catalog")

#: Where the catalog pointer lives in the assets bucket.
ACTIVE_POINTER_KEY = "ursa/ACTIVE.json"
DEFAULT_CATALOG_PREFIX = "ursa/catalog/main"
_CATALOG_PREFIX_RE = re.compile(r"^ursa/catalog/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: How long the catalog's commit lock holds without its holder. A check-and-commit takes
#: well under a second to a few seconds (a drain's batch at a million rows); a holder killed
#: on this host is replaced at once, on another host after this.
COMMIT_LOCK_TTL_S = 60.0
#: How long a writer waits for the commit lock before its registration fails (and is retried
#: later, like any failed session): past the budget of a holder that died elsewhere.
COMMIT_LOCK_WAIT_S = COMMIT_LOCK_TTL_S + 60.0


def commit_lock(store: Store, prefix: str, *, ttl_s: float = COMMIT_LOCK_TTL_S,
                wait_s: float = COMMIT_LOCK_WAIT_S) -> CommitLock:
    """The catalog's commit lock: the lease ``<prefix>.commit.lock`` in the assets bucket
    (:mod:`ursa_daemon.store.lease`), beside the catalog, not in it. Every writer of the
    catalog takes it around its check-and-commit (:mod:`ursa_daemon.catalog.writes` says why)."""
    key = f"{prefix}.commit.lock"

    @contextlib.contextmanager
    def held() -> Iterator[Lease]:
        lease = Lease(store, key, f"{prefix}.commit.takeover/", ttl_s)
        try:
            current = lease.take(wait_s=wait_s)
        except StorePermissionError:
            raise CatalogPermissionError(f"take the catalog's commit lock {key}", Role.ASSETS_RW.value) from None
        if lease.took_over is not None:
            log.warning("catalog.commit_lock_taken_over", holder=lease.took_over.holder)
        if current is not None:
            raise CatalogError(
                f"the catalog's commit lock {store.uri(key)} has been held by {current.holder} for over "
                f"{wait_s:.0f} s; nothing was written (the session is retried later). If that writer is gone, "
                f"the lock expires by itself; deleting {key} by hand is safe only when no writer is running"
            )
        try:
            yield lease
        finally:
            try:
                lease.give_back()
            except StoreError as exc:  # it expires by itself; the commit's outcome stands
                log.warning("catalog.commit_lock_release_failed", error=str(exc))

    return held


def open_catalog(profile: LocalProfile | S3Profile, role: Role | str) -> Catalog:
    """Open the catalog that ``ACTIVE.json`` points at, through ``role``'s credential.

    An empty store gets the pointer to ``ursa/catalog/main`` on first open.
    """
    from ursa_daemon.catalog import Catalog  # here, not at import: the upload path never pays for it
    from ursa_daemon.store.s3 import lance_storage_options

    role = Role(role)
    store = get_store(profile, role)
    try:
        prefix = _read_or_create_pointer(store)
    except StorePermissionError:
        raise CatalogPermissionError(f"open the catalog pointer {ACTIVE_POINTER_KEY}", role.value) from None
    if isinstance(profile, LocalProfile):  # one handle serves reads and writes
        return Catalog.open(str(Path(profile.root) / "assets" / prefix), commit_lock=commit_lock(store, prefix))
    creds = resolve_credentials(profile, role)
    writable = role is Role.ASSETS_RW
    return Catalog.open(
        f"s3://{profile.assets_bucket}/{prefix}",
        storage_options=lance_storage_options(profile, creds),
        writable=writable,
        commit_lock=commit_lock(store, prefix) if writable else None,
    )


def _read_or_create_pointer(store: Store) -> str:
    try:
        raw = store.get(ACTIVE_POINTER_KEY)
    except ObjectNotFound:
        doc = json.dumps({"catalog_prefix": DEFAULT_CATALOG_PREFIX}).encode()
        try:
            store.put(ACTIVE_POINTER_KEY, doc, content_type="application/json", create_only=True)
        except ObjectExists:  # another process won the race: read theirs
            raw = store.get(ACTIVE_POINTER_KEY)
        else:
            return DEFAULT_CATALOG_PREFIX
    try:
        prefix = json.loads(raw)["catalog_prefix"]
    except (ValueError, KeyError, TypeError):
        raise CatalogError(
            f"{store.uri(ACTIVE_POINTER_KEY)} is not valid: it must be JSON "
            '{"catalog_prefix": "ursa/catalog/<name>"}; fix or delete it'
        ) from None
    if not isinstance(prefix, str) or not _CATALOG_PREFIX_RE.match(prefix):
        raise CatalogError(
            f"{store.uri(ACTIVE_POINTER_KEY)}: catalog_prefix must look like "
            "'ursa/catalog/<name>' (letters, digits, '_', '.', '-'); fix the pointer"
        )
    return prefix


class Context:
    """The profile of ``config``, its stores per role and its catalog handles (opened lazily)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._ro_catalog: Catalog | None = None
        self._rw_catalog: Catalog | None = None
        self._roles: frozenset[Role] = frozenset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(profile={self._config.profile!r}, writes={sorted(self._roles)!r})"

    @property
    def config(self) -> Config:
        return self._config

    @property
    def profile(self) -> LocalProfile | S3Profile:
        return self._config.active_profile

    @property
    def upload(self) -> UploadConfig:
        """The upload limits: part size, concurrency, bandwidth."""
        return self._config.upload

    @property
    def catalog(self) -> Catalog:
        """The read-only catalog handle (``assets_ro``), opened on first use."""
        if self._ro_catalog is None:
            self._ro_catalog = open_catalog(self.profile, Role.ASSETS_RO)
        return self._ro_catalog

    @property
    def writes_enabled(self) -> bool:
        return Role.ASSETS_RW in self._roles

    def enable_writes(self, roles: Iterable[str] = ("assets_rw",)) -> None:
        """Open write handles for ``roles`` (``assets_rw``, ``raw_rw``). Idempotent."""
        wanted = {Role(r) for r in roles}
        bad = [r.value for r in wanted if r not in (Role.ASSETS_RW, Role.RAW_RW)]
        if bad:
            raise ValueError(f"enable_writes takes write roles assets_rw and raw_rw, not {bad}")
        if Role.ASSETS_RW in wanted and self._rw_catalog is None:
            if isinstance(self.profile, LocalProfile):
                self._rw_catalog = self.catalog
            else:
                self._rw_catalog = open_catalog(self.profile, Role.ASSETS_RW)
        if Role.RAW_RW in wanted and isinstance(self.profile, S3Profile):
            resolve_credentials(self.profile, Role.RAW_RW)  # fail now, not mid-upload
        self._roles = self._roles | wanted

    def store(self, role: Role | str) -> Store:
        """The object store of ``role``; write roles need :meth:`enable_writes` first."""
        role = Role(role)
        if role in (Role.ASSETS_RW, Role.RAW_RW) and role not in self._roles:
            raise WritesNotEnabled(
                f"role {role.value!r} is not enabled: call enable_writes(roles=[{role.value!r}])"
            )
        return get_store(self.profile, role)

    def write_catalog(self) -> Catalog:
        """The ``assets_rw`` catalog handle; :class:`WritesNotEnabled` before :meth:`enable_writes`."""
        if self._rw_catalog is None:
            raise WritesNotEnabled(
                f"{type(self).__name__} is read-only: call enable_writes() before register_*; "
                "writes use the assets_rw credential role"
            )
        return self._rw_catalog

    #: the name the daemon and the tests have long used
    _write_catalog = write_catalog
