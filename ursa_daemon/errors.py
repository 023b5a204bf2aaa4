"""The whole exception tree of ursa-daemon.

Callers catch the most specific class they can act on::

    UrsaError
    ├── ConfigError                 bad or unreadable config (names key path and file)
    │   └── CredentialError         a credential could not be resolved (never shows a value)
    ├── StoreError                  object store failure, translated from obstore at the boundary
    │   ├── TransientStoreError     timeouts, resets, 5xx: safe to retry
    │   ├── ObjectNotFound          also a FileNotFoundError
    │   ├── ObjectExists            also a FileExistsError (conditional put lost)
    │   ├── StorePermissionError    also a PermissionError (401/403)
    │   ├── ObjectMismatch          an object's size or sha256 is not what was uploaded
    │   └── UploadGone              the server no longer knows a multipart upload id
    ├── CatalogError                LanceDB catalog failure
    │   ├── CatalogPermissionError  the store refused a catalog read or write (names the role)
    │   ├── CatalogRowExists        a differing row holds the primary key; carries a diff
    │   ├── RecordingIdTaken        a recording of the rec_id is registered under another hash
    │   └── WritesNotEnabled        register_* before enable_writes()
    ├── StateError                  the SQLite resume state
    │   └── StateLocked             another process holds the state lock (exit code 3)
    └── InputError                  bad session input: names the session, the file and the fix

Only ``ursa_daemon.store`` catches obstore's exceptions. This module imports
nothing from the package.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CatalogError",
    "CatalogPermissionError",
    "CatalogRowExists",
    "RecordingIdTaken",
    "ChecksumMismatch",
    "ConfigError",
    "CredentialError",
    "InputError",
    "NodesPending",
    "ObjectExists",
    "ObjectMismatch",
    "ObjectNotFound",
    "StateError",
    "StateLocked",
    "StoreError",
    "StorePermissionError",
    "TransientStoreError",
    "UploadGone",
    "UrsaError",
    "WritesNotEnabled",
]


class UrsaError(Exception):
    """Root of every error ursa-daemon raises on purpose."""


class ConfigError(UrsaError):
    """The configuration is invalid; the message names the key path and the file."""

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.path = path


class CredentialError(ConfigError):
    """A credential could not be resolved. The message names the source, never the value."""


class StoreError(UrsaError):
    """An object store operation failed."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class TransientStoreError(StoreError):
    """A failure worth retrying: timeout, connection reset, throttling, 5xx."""


class ObjectNotFound(StoreError, FileNotFoundError):
    """No object at that key."""


class ObjectExists(StoreError, FileExistsError):
    """A create-only put found an object already there."""


class StorePermissionError(StoreError, PermissionError):
    """The credential in use may not do this (401/403)."""


class ObjectMismatch(StoreError):
    """An object in the store does not have the size or sha256 it should."""


class ChecksumMismatch(StoreError):
    """The server refused a body whose bytes do not match the checksum sent with it (BadDigest):
    the file changed between hashing and sending, or the bytes were damaged on the way."""


class UploadGone(StoreError):
    """A multipart upload id the server does not know (completed, aborted or expired)."""


class CatalogError(UrsaError):
    """The catalog could not be read or written."""


class CatalogPermissionError(CatalogError, PermissionError):
    """The store refused a catalog read or write: the role's key lacks the permission.

    Its message names the role and the fix, never the storage engine's text.
    """

    def __init__(self, action: str, role: str) -> None:
        self.role = role
        need = "read and write" if role.endswith("_rw") else "read"
        super().__init__(
            f"{action}: the store refused it (403 Forbidden: access denied to the assets bucket for role "
            f"{role!r}{', a read-only key?' if role.endswith('_rw') else ''}). Give role {role!r} a key with "
            f"{need} access to the assets bucket (profiles.<profile>.credentials.{role} in the config), "
            "then run `ursa-daemon check-config`"
        )


class RecordingIdTaken(CatalogError):
    """``register_session(..., one_per_rec_id=True)``: the catalog already holds a recording of
    this ``rec_id`` under another ``recording_hash`` (the other half of a dual-node session
    registered first); ``recording_hash`` is that recording's."""

    def __init__(self, rec_id: str, recording_hash: str) -> None:
        super().__init__(f"{rec_id} is already registered as recording_hash {recording_hash[:12]}…")
        self.rec_id = rec_id
        self.recording_hash = recording_hash


class CatalogRowExists(CatalogError):
    """A row with the same primary key and different fields is already registered.

    ``diff`` maps each differing field to ``(existing, candidate)``.
    """

    def __init__(
        self,
        table: str,
        primary_key: tuple[tuple[str, Any], ...],
        diff: dict[str, tuple[Any, Any]],
    ) -> None:
        self.table = table
        self.primary_key = primary_key
        self.diff = diff
        pk = ", ".join(f"{k}={v!r}" for k, v in primary_key)
        fields = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        super().__init__(
            f"{table}: a different row already exists for ({pk}); differing fields: {fields}. "
            "Pass on_conflict='overwrite' (or another policy) to replace it."
        )


class WritesNotEnabled(CatalogError):
    """``register_*`` was called before ``enable_writes()``."""


class StateError(UrsaError):
    """The resume state database failed."""


class StateLocked(StateError):
    """Another ursa-daemon process holds the lock on this state_dir."""


class NodesPending(UrsaError):
    """A dual-node session cannot be registered yet: some node's half is not in the store.

    Not a failure: the session is retried until every node named in ``nodes``
    has uploaded its node manifest, or an operator registers what is there
    (``register-from-store --allow-partial``).
    """

    def __init__(self, message: str, *, rec_id: str, missing: list[str]) -> None:
        super().__init__(message)
        self.rec_id = rec_id
        self.missing = missing
        #: the ``IngestResult`` of the upload that preceded, when raised by ``ingest``
        self.result: Any = None


class InputError(UrsaError):
    """A session on disk or in the store is malformed.

    The message names the session, the file and the fix.
    """

    def __init__(self, message: str, *, rec_id: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.rec_id = rec_id
        self.file = file
