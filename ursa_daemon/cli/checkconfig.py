"""``ursa-daemon check-config``: is this rig's config usable, role by role?

The config itself was validated when it was loaded (a bad one is exit 2
before anything here runs). Then:

* **paths**: ``recordings_root`` exists and is readable (the unit mounts it
  read-only), ``state_dir`` is writable or can be created;
* **roles**: for each credential role the credentials are resolved (from the
  environment variables the profile names, or its ``credentials_command``) and
  the role's bucket is probed with the least privilege the daemon needs of it:
  a LIST on the read roles (``assets_ro``, ``raw_ro``), a PUT, HEAD and DELETE
  of a tiny object under ``ursa/probe/`` on the write roles (``assets_rw``,
  ``raw_rw``). On the ``local`` profile the two directories must be readable,
  and writable for the write roles (the same probe object, on disk).

Secrets are never printed: a role shows where its keys come from (the names of
the variables or the command) and a masked access key id; every message is
scrubbed of the resolved secrets as a second line of defence.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ursa_daemon.config import (
    Config,
    CredentialSource,
    LocalProfile,
    Role,
    S3Profile,
    _mask,
    resolve_credentials,
)
from ursa_daemon.errors import StoreError, UrsaError

__all__ = ["CheckReport", "PathCheck", "Probe", "RoleCheck", "check_config"]

Level = Literal["ok", "warn", "fail"]

#: read roles are listed, write roles get a put + head + delete of a probe object
ROLES: tuple[tuple[Role, Literal["read", "write"]], ...] = (
    (Role.ASSETS_RO, "read"),
    (Role.ASSETS_RW, "write"),
    (Role.RAW_RO, "read"),
    (Role.RAW_RW, "write"),
)
PROBE_PREFIX = "ursa/probe/"
PROBE_BODY = b"ursa-daemon check-config probe\n"


@dataclass
class Probe:
    op: str  # list, put, head, delete, access
    ok: bool
    key: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"op": self.op, "ok": self.ok, "key": self.key, "error": self.error}


@dataclass
class RoleCheck:
    role: str
    access: Literal["read", "write"]
    bucket: str
    source: str
    access_key_id: str | None = None
    error: str | None = None
    probes: list[Probe] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(p.ok for p in self.probes)

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "access": self.access,
            "bucket": self.bucket,
            "source": self.source,
            "access_key_id": self.access_key_id,
            "ok": self.ok,
            "error": self.error,
            "probes": [p.as_json() for p in self.probes],
        }


@dataclass
class PathCheck:
    name: str
    path: str
    level: Level
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "status": self.level, "detail": self.detail}


@dataclass
class CheckReport:
    config: str | None
    profile: str
    kind: str
    paths: list[PathCheck] = field(default_factory=list)
    roles: list[RoleCheck] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(p.level != "fail" for p in self.paths) and all(r.ok for r in self.roles)

    def as_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "profile": self.profile,
            "kind": self.kind,
            "ok": self.ok,
            "paths": [p.as_json() for p in self.paths],
            "roles": [r.as_json() for r in self.roles],
            "metrics": self.metrics,
        }

    def lines(self) -> list[str]:
        """The human report, one line per check."""
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        out = [f"config {self.config}: profile {self.profile!r} (kind {self.kind})"]
        for p in self.paths:
            out.append(f"  [{mark[p.level]}] {p.name} {p.path}: {p.detail}")
        for r in self.roles:
            key = f", key {r.access_key_id}" if r.access_key_id else ""
            out.append(f"  [{'ok  ' if r.ok else 'FAIL'}] role {r.role} ({r.access}) on {r.bucket} via {r.source}{key}")
            if r.error:
                out.append(f"         {r.error}")
            for pr in r.probes:
                where = f" {pr.key}" if pr.key else ""
                out.append(f"         {pr.op}{where}: {'ok' if pr.ok else pr.error}")
        if self.metrics.get("enabled"):
            out.append(f"  [ok  ] metrics served at {self.metrics['url']} while run or drain lives")
        out.append("all good" if self.ok else "something failed: see FAIL above")
        return out


def check_config(config: Config) -> CheckReport:
    """Check paths and every role of ``config``'s active profile. Never raises for a failed check."""
    profile = config.active_profile
    report = CheckReport(
        config=str(config.source) if config.source else None, profile=config.profile, kind=profile.kind
    )
    report.paths.append(_check_recordings_root(config.recordings_root))
    report.paths.append(_check_writable_dir("state_dir", config.state_dir))
    m = config.metrics
    host = f"[{m.host}]" if ":" in m.host else m.host
    report.metrics = {"enabled": m.enabled, "url": f"http://{host}:{m.port}/metrics" if m.enabled else None}
    probe_key = _probe_key()
    for role, access in ROLES:
        if isinstance(profile, LocalProfile):
            report.roles.append(_check_local_role(profile, role, access, probe_key))
        else:
            report.roles.append(_check_s3_role(profile, role, access, probe_key))
    return report


# -- paths -------------------------------------------------------------------


def _check_recordings_root(path: Path) -> PathCheck:
    if not path.exists():
        return PathCheck(
            "recordings_root", str(path), "warn",
            "does not exist yet (the systemd unit mounts it read-only: create it before starting the service)",
        )
    if not path.is_dir():
        return PathCheck("recordings_root", str(path), "fail", "is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        return PathCheck("recordings_root", str(path), "fail", "not readable by this user")
    return PathCheck("recordings_root", str(path), "ok", "readable")


def _check_writable_dir(name: str, path: Path) -> PathCheck:
    if path.is_dir():
        try:
            fd, tmp = _mkstemp(path)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            return PathCheck(name, str(path), "fail", f"not writable by this user ({exc.strerror})")
        return PathCheck(name, str(path), "ok", "writable")
    if path.exists():
        return PathCheck(name, str(path), "fail", "is not a directory")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return PathCheck(name, str(path), "ok", f"will be created (under {parent}, writable)")
    return PathCheck(name, str(path), "fail", f"does not exist and {parent} is not writable by this user")


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix=".ursa-check-", dir=directory)


def _probe_key() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname()) or "host"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{PROBE_PREFIX}{host}-{stamp}-{uuid.uuid4().hex[:8]}"


# -- roles -------------------------------------------------------------------


def _describe_source(profile: S3Profile, role: Role) -> str:
    """Where ``role``'s keys come from, by name only (never a value)."""
    source = profile.credentials.get(role)
    note = ""
    if source is None and role is Role.RAW_RO and Role.RAW_RW in profile.credentials:
        source = profile.credentials[Role.RAW_RW]
        note = " (raw_ro falls back to raw_rw)"
    if source is None and profile.credentials_command is not None:
        source = CredentialSource(credentials_command=profile.credentials_command)
    if source is None:
        return "no credentials configured"
    if source.access_key_id_env is not None:
        return f"env {source.access_key_id_env} + {source.secret_access_key_env}{note}"
    cmd = source.credentials_command
    label = (cmd.split()[0] if isinstance(cmd, str) else cmd[0]) if cmd else "?"
    return f"credentials_command {label}{note}"


def _check_s3_role(profile: S3Profile, role: Role, access: Literal["read", "write"], probe_key: str) -> RoleCheck:
    from ursa_daemon.store import S3Store

    bucket = profile.bucket(role.bucket_kind)
    check = RoleCheck(role.value, access, bucket, _describe_source(profile, role))
    try:
        creds = resolve_credentials(profile, role)
    except UrsaError as exc:  # CredentialError: names the variable or command, never a value
        check.error = str(exc)
        return check
    secrets = [creds.secret_access_key]
    if creds.session_token is not None:
        secrets.append(creds.session_token.get_secret_value())
    check.access_key_id = _mask(creds.access_key_id)
    try:
        store = S3Store.from_profile(
            profile, role.bucket_kind, creds,
            max_retries=1, retry_timeout=15.0, connect_timeout=5.0, read_timeout=15.0, request_timeout=30.0,
        )
    except (UrsaError, ValueError) as exc:
        check.error = _scrub(str(exc), secrets)
        return check
    _run_probes(check, store, access, probe_key, secrets)
    return check


def _check_local_role(profile: LocalProfile, role: Role, access: Literal["read", "write"], probe_key: str) -> RoleCheck:
    from ursa_daemon.store import get_store

    directory = Path(os.path.abspath(profile.root)) / role.bucket_kind
    check = RoleCheck(role.value, access, str(directory), "local directory (no credentials)")
    if access == "read" and not directory.is_dir():
        pc = _check_writable_dir(role.bucket_kind, directory)  # the daemon creates it on first use
        check.probes.append(Probe("access", pc.level == "ok", error=None if pc.level == "ok" else pc.detail))
        return check
    if access == "read":
        ok = os.access(directory, os.R_OK | os.X_OK)
        check.probes.append(Probe("access", ok, error=None if ok else "directory not readable by this user"))
        if not ok:
            return check
    try:
        store = get_store(profile, role)  # creates the directory, as the daemon would
    except (UrsaError, OSError) as exc:
        check.error = f"cannot open {directory}: {exc}"
        return check
    _run_probes(check, store, access, probe_key, [])
    if access == "write":
        for sub in (directory / PROBE_PREFIX.rstrip("/"), directory / "ursa"):
            try:
                sub.rmdir()  # only when empty: leave nothing behind
            except OSError:
                break
    return check


def _run_probes(check: RoleCheck, store: Any, access: str, probe_key: str, secrets: list[str]) -> None:
    def attempt(op: str, key: str | None, fn: Any) -> bool:
        try:
            fn()
        except (StoreError, OSError) as exc:
            check.probes.append(Probe(op, False, key, _scrub(f"{type(exc).__name__}: {exc}", secrets)))
            return False
        check.probes.append(Probe(op, True, key))
        return True

    if access == "read":
        attempt("list", PROBE_PREFIX, lambda: next(iter(store.list(PROBE_PREFIX)), None))
        return
    if attempt("put", probe_key, lambda: store.put(probe_key, PROBE_BODY, content_type="text/plain")):
        attempt("head", probe_key, lambda: store.head(probe_key))
        attempt("delete", probe_key, lambda: store.delete(probe_key))


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text
