"""Config loading: the embedded default, and every bad config names its key and file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ursa_daemon.config import LocalProfile, Role, S3Profile, load_config, resolve_credentials
from ursa_daemon.errors import ConfigError, CredentialError

REPO = Path(__file__).resolve().parents[1]
SECRET = "sEcReT-value-0123456789"


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def base(tmp_path: Path) -> dict:
    return {
        "profile": "local",
        "recordings_root": "./rec",
        "state_dir": "./state",
        "profiles": {"local": {"kind": "local", "root": "./store"}},
    }


def test_embedded_default_loads_and_runs_without_server() -> None:
    cfg = load_config(REPO / "config.yaml")
    assert isinstance(cfg.active_profile, LocalProfile)
    assert cfg.recordings_root == REPO / "recordings"
    assert cfg.active_profile.root == REPO / ".ursa" / "store"
    assert isinstance(cfg.profiles["r2"], S3Profile)
    assert cfg.watch.settle_seconds == 30
    assert cfg.upload.max_concurrent_files == 4


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, base(tmp_path)))
    assert cfg.recordings_root == tmp_path / "rec"
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.active_profile.root == tmp_path / "store"  # type: ignore[union-attr]


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, base(tmp_path)))
    with pytest.raises(ValidationError, match="frozen"):
        cfg.profile = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (lambda d: d.update(bogus=1), "bogus", "unknown key"),
        (lambda d: d["profiles"]["local"].update(rooot="x"), "profiles.local.rooot", "unknown key"),
        (lambda d: d.update(watch={"settle_secs": 3}), "watch.settle_secs", "unknown key"),
        (lambda d: d.pop("profiles"), "profiles", "missing"),
        (lambda d: d["profiles"]["local"].pop("root"), "profiles.local.root", "missing"),
        (lambda d: d.update(watch={"settle_seconds": "soon"}), "watch.settle_seconds", "number"),
        (lambda d: d.update(upload={"max_concurrent_files": "four"}), "upload.max_concurrent_files", "integer"),
        (lambda d: d.update(upload={"max_concurrent_files": 0}), "upload.max_concurrent_files", "greater"),
        (lambda d: d["profiles"]["local"].update(kind="ftp"), "profiles.local", "kind"),
        (lambda d: d.update(profile="r2"), "profile", "not an entry of profiles"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, mutate, key: str, words: str) -> None:  # type: ignore[no-untyped-def]
    doc = base(tmp_path)
    mutate(doc)
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg
    assert key in msg
    assert words in msg


def test_s3_profile_bad_keys(tmp_path: Path) -> None:
    doc = base(tmp_path)
    doc["profiles"]["r2"] = {
        "kind": "s3",
        "endpoint": "ftp://nope",
        "raw_bucket": "r",
        "credentials": {"assets_ro": {"access_key_id_env": "A"}},
    }
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "profiles.r2.endpoint" in msg
    assert "profiles.r2.assets_bucket" in msg
    assert "profiles.r2.credentials.assets_ro" in msg


def test_yaml_errors_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "profile: [unclosed"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def _s3(**creds: object) -> S3Profile:
    return S3Profile.model_validate(
        {
            "kind": "s3",
            "endpoint": "https://example.r2.cloudflarestorage.com",
            "raw_bucket": "raw",
            "assets_bucket": "assets",
            **creds,
        }
    )


def test_credentials_from_environment_never_show_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KID", "AKIAEXAMPLEKEY12")
    monkeypatch.setenv("SEC", SECRET)
    prof = _s3(credentials={"raw_rw": {"access_key_id_env": "KID", "secret_access_key_env": "SEC"}})
    creds = resolve_credentials(prof, "raw_rw")
    assert creds.secret_access_key == SECRET
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    assert "AKIAEXAMPLEKEY12" not in repr(creds)
    # raw_ro falls back to raw_rw; a role with nothing configured is a named error
    assert resolve_credentials(prof, Role.RAW_RO).access_key_id == "AKIAEXAMPLEKEY12"
    with pytest.raises(CredentialError, match="assets_ro"):
        resolve_credentials(prof, "assets_ro")


def test_missing_env_var_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_SECRET", raising=False)
    monkeypatch.setenv("KID", "AKIAEXAMPLEKEY12")
    prof = _s3(credentials={"assets_ro": {"access_key_id_env": "KID", "secret_access_key_env": "NOPE_SECRET"}})
    with pytest.raises(CredentialError, match="NOPE_SECRET"):
        resolve_credentials(prof, "assets_ro")


def test_credentials_command(tmp_path: Path) -> None:
    script = tmp_path / "creds.py"
    script.write_text(
        "import json\nprint(json.dumps({'Version': 1, 'AccessKeyId': 'AKIACMD000000001', "
        f"'SecretAccessKey': {SECRET!r}}}))\n"
    )
    prof = _s3(credentials_command=[sys.executable, str(script)])
    creds = resolve_credentials(prof, "assets_rw")
    assert creds.access_key_id == "AKIACMD000000001"
    assert creds.secret_access_key == SECRET
    assert SECRET not in repr(creds)


def test_credentials_command_failures_never_echo_output(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.py"
    leaky.write_text(
        f"import sys\nprint({SECRET!r})\nprint({SECRET!r}, file=sys.stderr)\nsys.exit(7)\n"
    )
    prof = _s3(credentials_command=[sys.executable, str(leaky)])
    with pytest.raises(CredentialError) as info:
        resolve_credentials(prof, "assets_rw")
    assert "exited 7" in str(info.value) and SECRET not in str(info.value)

    garbage = tmp_path / "garbage.py"
    garbage.write_text(f"print(json := {json.dumps(SECRET)!r})\n")
    prof = _s3(credentials_command=[sys.executable, str(garbage)])
    with pytest.raises(CredentialError) as info:
        resolve_credentials(prof, "assets_rw")
    assert "AccessKeyId" in str(info.value) and SECRET not in str(info.value)

    prof = _s3(credentials_command=[str(tmp_path / "does-not-exist")])
    with pytest.raises(CredentialError, match="failed to run"):
        resolve_credentials(prof, "assets_rw")


def test_secret_in_config_value_is_not_echoed(tmp_path: Path) -> None:
    """Someone pastes a secret where an env-var name belongs: the error must not repeat it."""
    doc = base(tmp_path)
    doc["upload"] = {"part_size_bytes": SECRET}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, doc))
    assert "upload.part_size_bytes" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: d["profiles"]["local"].update(kind="lokal"), "profiles.local.kind: unknown profile kind 'lokal'"),
        (lambda d: d["profiles"]["local"].pop("kind"), "missing required key 'profiles.local.kind'"),
        (lambda d: d.update(profiles=["local"]), "profiles: must be a mapping of keys"),
        (lambda d: d["profiles"].update(local=5), "profiles.local: must be a mapping of keys"),
        (lambda d: d.update(upload={"max_concurrent_files": "x"}), "upload.max_concurrent_files: must be"),
    ],
)
def test_config_errors_are_in_plain_words_never_validator_internals(tmp_path: Path, mutate, words: str) -> None:  # type: ignore[no-untyped-def]
    doc = base(tmp_path)
    mutate(doc)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, doc))
    text = str(err.value)
    assert words in text, text
    for internal in ("<top level>", "Input tag", "discriminator", "Input should", "found using", "union_tag"):
        assert internal not in text, text
