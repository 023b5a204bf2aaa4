"""Configuration: frozen pydantic models, loaded from YAML, errors naming the key.

``load_config(path)`` reads the file, resolves relative paths against the
file's directory, and validates. Every failure is a :class:`ConfigError`
whose message names the key path (``profiles.r2.endpoint``) and the file.

Credentials are never stored in the config: a role names the environment
variables that hold its keys, or a ``credentials_command`` prints them as JSON
(AWS ``credential_process`` shape: ``{"AccessKeyId": ..., "SecretAccessKey":
..., "SessionToken": ...}``). Resolved values live in :class:`Credentials`,
whose repr and str never show the secret.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

from ursa_daemon.errors import ConfigError, CredentialError
from ursa_daemon.log import register_secret

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "ActivityConfig",
    "Config",
    "CredentialSource",
    "Credentials",
    "LocalProfile",
    "MetricsConfig",
    "Role",
    "S3Profile",
    "UploadConfig",
    "WatchConfig",
    "find_config",
    "is_loopback",
    "load_config",
    "normalise_rig_id",
    "resolve_credentials",
]

#: Searched in order when no ``--config`` is given.
DEFAULT_CONFIG_PATHS = (Path("config.yaml"), Path("/etc/ursa-daemon/config.yaml"))

#: Seconds a ``credentials_command`` may run.
DEFAULT_CREDENTIALS_TIMEOUT = 30.0


class Role(StrEnum):
    """A credential role: which bucket, read-only or read-write."""

    ASSETS_RO = "assets_ro"
    ASSETS_RW = "assets_rw"
    RAW_RO = "raw_ro"
    RAW_RW = "raw_rw"

    @property
    def bucket_kind(self) -> Literal["raw", "assets"]:
        return "raw" if self.value.startswith("raw") else "assets"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CredentialSource(_Frozen):
    """Where one role's keys come from: environment variables or a command printing JSON."""

    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    #: a command (string, split like a shell, or a list) printing credential_process JSON
    credentials_command: str | list[str] | None = None

    @field_validator("credentials_command")
    @classmethod
    def _non_empty_command(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is not None and not (v if isinstance(v, list) else v.strip()):
            raise ValueError("credentials_command must not be empty")
        return v

    def model_post_init(self, __context: Any) -> None:
        has_env = self.access_key_id_env is not None or self.secret_access_key_env is not None
        if has_env and (self.access_key_id_env is None or self.secret_access_key_env is None):
            raise ValueError("give both access_key_id_env and secret_access_key_env")
        if not has_env and self.credentials_command is None:
            raise ValueError(
                "give access_key_id_env + secret_access_key_env, or credentials_command"
            )


class Credentials:
    """Resolved keys for one role. Never shows the secret in repr, str or errors."""

    __slots__ = ("_secret", "access_key_id", "role", "session_token")

    def __init__(
        self, role: str, access_key_id: str, secret: str, session_token: str | None = None
    ) -> None:
        self.role = role
        self.access_key_id = access_key_id
        self._secret = SecretStr(secret)
        self.session_token = SecretStr(session_token) if session_token else None
        register_secret(secret)
        if session_token:
            register_secret(session_token)

    @property
    def secret_access_key(self) -> str:
        return self._secret.get_secret_value()

    def __repr__(self) -> str:
        return f"Credentials(role={self.role!r}, access_key_id={_mask(self.access_key_id)!r})"

    __str__ = __repr__


def _mask(value: str) -> str:
    """Show just enough of an access key id to tell keys apart."""
    return value[:4] + "…" if len(value) > 8 else "…"


class LocalProfile(_Frozen):
    """The embedded default: ``<root>/raw`` and ``<root>/assets`` play the two buckets."""

    kind: Literal["local"]
    root: Path


class S3Profile(_Frozen):
    """Any S3-compatible endpoint: Cloudflare R2, MinIO, moto."""

    kind: Literal["s3"]
    endpoint: str
    region: str = "auto"
    raw_bucket: str
    assets_bucket: str
    #: per role: ``assets_ro``, ``assets_rw``, ``raw_rw`` (``raw_ro`` falls back to ``raw_rw``)
    credentials: dict[Role, CredentialSource] = Field(default_factory=dict)
    #: used for every role without its own entry in ``credentials``
    credentials_command: str | list[str] | None = None
    #: plain http is only for loopback test servers
    allow_http: bool = False
    # No catalog name here: the store's own ursa/ACTIVE.json names the catalog (SPEC 3).

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("endpoint must start with https:// (or http:// for a loopback test server)")
        return v.rstrip("/")

    def bucket(self, kind: Literal["raw", "assets"]) -> str:
        return self.raw_bucket if kind == "raw" else self.assets_bucket


Profile = Annotated[LocalProfile | S3Profile, Field(discriminator="kind")]


class WatchConfig(_Frozen):
    settle_seconds: float = Field(default=30.0, ge=0)
    rescan_seconds: float = Field(default=300.0, gt=0)
    #: how often failed sessions whose backoff expired are queued again
    retry_check_seconds: float = Field(default=5.0, gt=0)
    #: a failed session is retried after base * 2**(attempts-1) seconds (±25 % jitter), at most max
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    #: ``run`` re-executes itself after this long with nothing to do, once a session brought in
    #: the catalog stack (lancedb, pyarrow: ~100 MiB), so an idle rig daemon stays small; 0: never
    shed_after_idle_seconds: float = Field(default=60.0, ge=0)


class UploadConfig(_Frozen):
    #: files uploaded at once per session
    max_concurrent_files: int = Field(default=4, ge=1, le=64)
    #: parts in flight per multipart upload; R2 answered 500s at 5, 2-3 is safe
    max_concurrency_per_file: int = Field(default=2, ge=1, le=16)
    part_size_bytes: int = Field(default=16 << 20, ge=5 << 20)
    #: optional bandwidth cap over the whole daemon, bytes per second
    bandwidth_bytes_per_s: int | None = Field(default=None, gt=0)
    #: local-time windows ``HH:MM-HH:MM`` when uploads may run (empty: always); may wrap midnight
    windows: list[str] = Field(default_factory=list)

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        for w in v:
            if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d", w):
                raise ValueError(f"window {w!r} must look like 19:00-07:00")
        return v


class ActivityConfig(_Frozen):
    quiet_seconds: float = Field(default=60.0, ge=0)
    flag_file: Path | None = None
    recorder_processes: list[str] = Field(default_factory=list)


class MetricsConfig(_Frozen):
    """``/metrics`` of ``run`` and ``drain`` (loopback unless ``allow_remote``), and its node_exporter
    ``textfile`` written every ``textfile_seconds`` (``daemon/metrics.py``)."""

    enabled: bool = False
    port: int = Field(default=9464, ge=1, le=65535)
    #: the operator's explicit yes to serving ``/metrics`` on a non-loopback address
    allow_remote: bool = False
    host: str = "127.0.0.1"
    textfile: Path | None = None
    textfile_seconds: float = Field(default=15.0, ge=1)

    @field_validator("textfile")
    @classmethod
    def _prom_name(cls, v: Path | None) -> Path | None:
        if v is not None and not v.name.endswith(".prom"):
            raise ValueError("must end in .prom (node_exporter's textfile collector reads only those), e.g. "
                             "/var/lib/node_exporter/textfile_collector/ursa.prom")
        return v

    @field_validator("host")
    @classmethod
    def _exposure(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("allow_remote") or is_loopback(v):
            return v
        raise ValueError(
            "not a loopback address: serving /metrics there lets anyone on that network read this rig's "
            "session names, counts and byte totals (never a secret). To allow it, set "
            "metrics.allow_remote: true and firewall the port to the lab's Prometheus; otherwise use "
            "127.0.0.1, or metrics.textfile for node_exporter's textfile collector"
        )


_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


def normalise_rig_id(name: str) -> str:
    """Lowercase; every run of characters an id may not hold becomes ``_``; starts with a letter
    or digit; at most 128 (SPEC section 4's ids)."""
    rid = re.sub(r"[^a-z0-9_.-]+", "_", name.lower())
    rid = re.sub(r"^[^a-z0-9]+", "", rid)[:128]
    return rid


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Config(_Frozen):
    """The whole configuration. Only ``cli`` and ``daemon`` see all of it.

    ``recordings_root`` and ``state_dir`` default to ``./recordings`` and
    ``./.ursa/state`` next to the config file (filled in by ``config_from_dict``).
    """

    profile: str
    recordings_root: Path
    state_dir: Path
    profiles: dict[str, Profile]
    watch: WatchConfig = WatchConfig()
    upload: UploadConfig = UploadConfig()
    activity: ActivityConfig = ActivityConfig()
    metrics: MetricsConfig = MetricsConfig()
    #: this rig's name in the fleet (``ursa/rigs/<rig_id>.json``); default: the host name, normalised
    rig_id: str | None = None
    #: the file it was read from (set by ``load_config``)
    source: Path | None = None

    def model_post_init(self, __context: Any) -> None:
        if self.profile not in self.profiles:
            raise ValueError(
                f"profile {self.profile!r} is not an entry of profiles: "
                f"(have {sorted(self.profiles)})"
            )

    @field_validator("rig_id")
    @classmethod
    def _rig_id(cls, v: str | None) -> str | None:
        if v is not None and not _ID_RE.match(v):
            raise ValueError(f"must be an id (a-z, 0-9, '_', '.', '-'; starting with a letter or digit; "
                             f"at most 128), e.g. {normalise_rig_id(v) or 'rig-07'!r}")
        return v

    @property
    def rig(self) -> str:
        """``rig_id``, else this host's name normalised like an id (``Rig-07.lab`` → ``rig-07.lab``)."""
        import socket
        return self.rig_id or normalise_rig_id(socket.gethostname()) or "rig"

    @property
    def active_profile(self) -> LocalProfile | S3Profile:
        return self.profiles[self.profile]

    def with_profile(self, name: str) -> Config:
        if name not in self.profiles:
            raise ConfigError(
                f"profile {name!r} is not in profiles: of {self.source} "
                f"(have {sorted(self.profiles)})",
                key="profile",
                path=str(self.source),
            )
        return self.model_copy(update={"profile": name})


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--config`` if given, else ``./config.yaml``, else ``/etc/ursa-daemon/config.yaml``."""
    if explicit is not None:
        return Path(explicit)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "no config file: pass --config PATH, or put config.yaml in the current directory "
        "or /etc/ursa-daemon/config.yaml"
    )


_PATH_KEYS = (("recordings_root",), ("state_dir",), ("activity", "flag_file"), ("metrics", "textfile"))

#: SPEC section 7's values, relative to the config file's directory like every relative path.
DEFAULT_PATHS = {"recordings_root": "./recordings", "state_dir": "./.ursa/state"}


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, resolve and validate a config file. Errors name the key path and the file."""
    cfg_path = find_config(path).resolve()
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {cfg_path}: {exc.strerror}", path=str(cfg_path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{cfg_path}: not valid YAML: {exc}", path=str(cfg_path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: the top level must be a mapping of keys", path=str(cfg_path))
    return config_from_dict(raw, base_dir=cfg_path.parent, source=cfg_path)


def config_from_dict(raw: dict[str, Any], *, base_dir: Path, source: Path | None = None) -> Config:
    """Validate a parsed mapping; relative paths are resolved against ``base_dir``."""
    data = {**DEFAULT_PATHS, **raw}
    _resolve_paths(data, base_dir)
    data["source"] = source
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, source) from None


def _resolve_paths(data: dict[str, Any], base_dir: Path) -> None:
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value:
            p = Path(os.path.expanduser(value))
            return str(p if p.is_absolute() else (base_dir / p).resolve())
        return value

    for keys in _PATH_KEYS:
        node: Any = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            if node is not data:
                node = dict(node)
                data[keys[0]] = node
            node[keys[-1]] = fix(node[keys[-1]])
    profiles = data.get("profiles")
    if isinstance(profiles, dict):
        fixed = {}
        for name, prof in profiles.items():
            if isinstance(prof, dict) and prof.get("kind") == "local" and "root" in prof:
                prof = {**prof, "root": fix(prof["root"])}
            fixed[name] = prof
        data["profiles"] = fixed


def _config_error(exc: ValidationError, source: Path | None) -> ConfigError:
    where = str(source) if source else "<config>"
    lines = []
    first_key = None
    for err in exc.errors():
        # Drop the discriminator tag pydantic inserts ("profiles.r2.s3.endpoint").
        loc = [str(p) for p in err["loc"]]
        if len(loc) > 2 and loc[0] == "profiles" and loc[2] in ("local", "s3"):
            del loc[2]  # the discriminator tag pydantic inserts
        key = ".".join(loc)
        first_key = first_key or key or None
        lines.append(_plain(err, key))
    return ConfigError(f"{where}: " + "; ".join(lines), key=first_key, path=where)


def _plain(err: Any, key: str) -> str:
    """One validation error in the config's own words, naming the key, never pydantic's."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown key {key!r}"
    if kind == "missing":
        return f"missing required key {key!r}"
    if kind == "union_tag_invalid":  # kind: is not one of ours (the kind names no secret: shown)
        tag = str(ctx.get("tag", ""))[:40]
        return f"{key}.kind: unknown profile kind {tag!r}; use 'local' or 's3'"
    if kind == "union_tag_not_found":
        return f"{key}: missing required key {key + '.kind'!r} ('local' or 's3')"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{key}: must be a mapping of keys" if key else "the top level must be a mapping of keys"
    # Never echo the input value: a misplaced secret must not reach a log.
    msg = str(err["msg"])
    for prefix, plain in (("Input should be ", "must be "), ("Value error, ", ""), ("Assertion failed, ", "")):
        if msg.startswith(prefix):
            msg = plain + msg[len(prefix):]
    return f"{key}: {msg}" if key else msg


def resolve_credentials(profile: S3Profile, role: Role | str) -> Credentials:
    """Resolve the keys of ``role`` from the environment or a command. Never logs a value."""
    role = Role(role)
    source = profile.credentials.get(role)
    if source is None and role is Role.RAW_RO:
        source = profile.credentials.get(Role.RAW_RW)
    if source is None and profile.credentials_command is not None:
        source = CredentialSource(credentials_command=profile.credentials_command)
    if source is None:
        raise CredentialError(
            f"no credentials for role {role.value!r}: add profiles.<name>.credentials.{role.value} "
            "(access_key_id_env + secret_access_key_env) or a credentials_command",
            key=f"credentials.{role.value}",
        )
    if source.access_key_id_env is not None and source.secret_access_key_env is not None:
        key_id = os.environ.get(source.access_key_id_env)
        secret = os.environ.get(source.secret_access_key_env)
        missing = [
            name
            for name, val in ((source.access_key_id_env, key_id), (source.secret_access_key_env, secret))
            if not val
        ]
        if missing:
            raise CredentialError(
                f"role {role.value!r}: environment variable(s) {', '.join(missing)} not set "
                "(export them, or set them in the unit's EnvironmentFile=)",
                key=f"credentials.{role.value}",
            )
        token = os.environ.get(source.session_token_env) if source.session_token_env else None
        assert key_id is not None and secret is not None
        return Credentials(role.value, key_id, secret, token)
    assert source.credentials_command is not None
    return _run_credentials_command(role, source.credentials_command)


def _run_credentials_command(role: Role, command: str | list[str]) -> Credentials:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    label = argv[0] if argv else "<empty>"
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=DEFAULT_CREDENTIALS_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = "timed out" if isinstance(exc, subprocess.TimeoutExpired) else exc.__class__.__name__
        raise CredentialError(
            f"role {role.value!r}: credentials_command {label!r} failed to run ({reason})",
            key=f"credentials.{role.value}.credentials_command",
        ) from None
    if proc.returncode != 0:
        # stderr may echo secrets; report only the exit status.
        raise CredentialError(
            f"role {role.value!r}: credentials_command {label!r} exited {proc.returncode}",
            key=f"credentials.{role.value}.credentials_command",
        )
    try:
        doc = json.loads(proc.stdout)
        key_id = doc["AccessKeyId"]
        secret = doc["SecretAccessKey"]
        token = doc.get("SessionToken")
        if not isinstance(key_id, str) or not isinstance(secret, str) or not key_id or not secret:
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CredentialError(
            f"role {role.value!r}: credentials_command {label!r} must print JSON with "
            "string keys AccessKeyId and SecretAccessKey",
            key=f"credentials.{role.value}.credentials_command",
        ) from None
    return Credentials(role.value, key_id, secret, token if isinstance(token, str) else None)
