"""Operating a rig: deploy/install.sh, the systemd unit, check-config and the metrics endpoint.

Everything runs for real: install.sh stages a tree under a temp --root (offline:
a wheel of this checkout, no dependencies, no index), systemd-analyze verifies
the staged unit, check-config probes moto's server with auth switched on, and a
drain subprocess serves /metrics while a test scrapes it over HTTP.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import site
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import MOTO_KEY_ID, MOTO_SECRET, _free_port, local_config_dict, s3_config_dict
from harness import scrape_metrics

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"
UNIT = REPO / "systemd" / "ursa-daemon.service"
MAINT_SERVICE = REPO / "systemd" / "ursa-daemon-maintain.service"
MAINT_TIMER = REPO / "systemd" / "ursa-daemon-maintain.timer"
PREFIX = "/opt/ursa-daemon"


# -- helpers -----------------------------------------------------------------


def build_wheel(dest: Path) -> Path:
    """A py3-none-any wheel of this checkout, built without a build backend (offline, ~50 ms)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    name, version = meta["name"], meta["version"]
    dist = f"{name.replace('-', '_')}-{version}"
    files: dict[str, bytes] = {}
    for p in sorted((REPO / "ursa_daemon").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".typed"):
            files[p.relative_to(REPO).as_posix()] = p.read_bytes()
    requires = "".join(f"Requires-Dist: {d}\n" for d in meta["dependencies"])
    files[f"{dist}.dist-info/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: {meta['requires-python']}\n"
        + requires
    ).encode()
    files[f"{dist}.dist-info/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: ursa-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    scripts = "".join(f"{k} = {v}\n" for k, v in meta["scripts"].items())
    files[f"{dist}.dist-info/entry_points.txt"] = f"[console_scripts]\n{scripts}".encode()
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, body in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(body)])
    writer.writerow([f"{dist}.dist-info/RECORD", "", ""])
    files[f"{dist}.dist-info/RECORD"] = record.getvalue().encode()
    wheel = dest / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, body in files.items():
            zf.writestr(path, body)
    return wheel


def run_install(root: Path, wheel: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        "bash", str(INSTALL), "--root", str(root), "--python", sys.executable, "--from", str(wheel),
        "--venv-args", "--without-pip", "--pip-args", "--no-deps --no-index", *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def staged_site_packages(venv: Path) -> Path:
    found = list(venv.glob("lib/python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def cli(config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


# -- install.sh --------------------------------------------------------------


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """One staged install (root, wheel, output), shared by the tree and systemd-analyze tests."""
    base = tmp_path_factory.mktemp("deploy")
    wheel = build_wheel(base)
    root = base / "stage"
    return root, wheel, run_install(root, wheel)


def test_install_root_tree_idempotent_and_uninstall(staged) -> None:  # type: ignore[no-untyped-def]
    root, wheel, first = staged
    venv = root / PREFIX.lstrip("/") / "venv"
    unit = root / "etc/systemd/system/ursa-daemon.service"
    conf = root / "etc/ursa-daemon/config.yaml"
    env_file = root / "etc/ursa-daemon/credentials.env"

    # the tree
    assert unit.is_file() and conf.is_file() and env_file.is_file()
    assert (root / "var/lib/ursa-daemon").is_dir()
    assert unit.read_text() == UNIT.read_text()  # the default prefix: nothing substituted
    maint = [root / "etc/systemd/system" / f.name for f in (MAINT_SERVICE, MAINT_TIMER)]
    assert [m.read_text() for m in maint] == [MAINT_SERVICE.read_text(), MAINT_TIMER.read_text()]
    assert "skip: systemctl enable --now ursa-daemon-maintain.timer" not in first.stdout  # only with --maintenance
    assert (root / "etc/sysusers.d/ursa-daemon.conf").read_text().startswith("u ursa-daemon ")
    assert env_file.stat().st_mode & 0o077 == 0, oct(env_file.stat().st_mode)
    assert conf.stat().st_mode & 0o007 == 0
    entry = venv / "bin" / "ursa-daemon"
    assert entry.is_file() and os.access(entry, os.X_OK)
    assert entry.read_text().splitlines()[0] == f"#!{venv}/bin/python"
    # no user, no systemctl under --root: what was skipped is said
    assert "skip: create system user ursa-daemon" in first.stdout
    assert "skip: systemctl daemon-reload" in first.stdout
    assert subprocess.run(["getent", "passwd", "ursa-daemon"], capture_output=True).returncode != 0

    # the installed config is valid and points at the unit's StateDirectory
    doc = yaml.safe_load(conf.read_text())
    assert doc["state_dir"] == "/var/lib/ursa-daemon"
    assert f"ReadOnlyPaths=-{doc['recordings_root']}" in unit.read_text()

    # the entry point runs the staged package (deps borrowed from this interpreter's site-packages)
    (staged_site_packages(venv) / "_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    version = subprocess.run([str(entry), "--version"], capture_output=True, text=True, timeout=60, cwd=root)
    assert version.returncode == 0 and "0.1.0" in version.stdout, version.stderr
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import ursa_daemon; print(ursa_daemon.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=root,
    )
    assert where.stdout.strip().startswith(str(venv)), where
    checked = subprocess.run(
        [str(entry), "--config", str(conf), "check-config", "--json"],
        capture_output=True, text=True, timeout=60, cwd=root,
        env={k: v for k, v in os.environ.items() if not k.startswith("URSA_")},
    )
    assert checked.returncode == 1, checked.stderr  # valid config (not 2), but no keys yet
    report = json.loads(checked.stdout)
    assert report["profile"] == "r2" and not report["ok"]
    assert all("URSA_" in r["error"] for r in report["roles"])

    # a second install keeps an edited config and credentials
    conf.write_text(conf.read_text() + "# edited by the operator\n")
    env_file.write_text("URSA_RAW_RW_KEY_ID=x\n")
    second = run_install(root, wheel, "--maintenance")
    assert "skip: systemctl enable --now ursa-daemon-maintain.timer" in second.stdout
    assert conf.read_text().endswith("# edited by the operator\n")
    assert env_file.read_text() == "URSA_RAW_RW_KEY_ID=x\n"
    assert "kept" in second.stdout
    assert entry.is_file()

    # uninstall: unit and venv gone, config and credentials kept; --purge removes them
    gone = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--uninstall"], capture_output=True, text=True)
    assert gone.returncode == 0, gone.stderr
    assert not unit.exists() and not venv.exists() and not (root / PREFIX.lstrip("/")).exists()
    assert not any(m.exists() for m in maint)
    assert conf.is_file() and env_file.is_file()
    purge = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "--uninstall", "--purge"], capture_output=True, text=True
    )
    assert purge.returncode == 0, purge.stderr
    assert not (root / "etc/ursa-daemon").exists() and not (root / "var/lib/ursa-daemon").exists()
    assert not (root / "etc/sysusers.d/ursa-daemon.conf").exists()


def test_install_custom_prefix_rewrites_the_unit(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    root = tmp_path / "stage"
    run_install(root, wheel, "--prefix", "/srv/ursa")
    unit = (root / "etc/systemd/system/ursa-daemon.service").read_text()
    assert "ExecStart=/srv/ursa/venv/bin/ursa-daemon --config /etc/ursa-daemon/config.yaml run" in unit
    assert "/opt/ursa-daemon" not in unit
    maint = (root / "etc/systemd/system/ursa-daemon-maintain.service").read_text()
    assert "ExecStart=/srv/ursa/venv/bin/ursa-daemon --config /etc/ursa-daemon/config.yaml maintain" in maint
    assert (root / "srv/ursa/venv/bin/ursa-daemon").is_file()


def test_install_rejects_bad_arguments(tmp_path: Path) -> None:
    for args in (["--bogus"], ["--prefix", "/"], ["--prefix", "relative"], ["--purge"], ["--root"]):
        proc = subprocess.run(["bash", str(INSTALL), "--root", str(tmp_path), *args], capture_output=True, text=True)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_install_sh_is_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# -- the unit ----------------------------------------------------------------


def test_unit_directives() -> None:
    text = UNIT.read_text()
    lines = {
        ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in text.splitlines() if "=" in ln and not ln.startswith("#")
    }
    assert lines["Type"] == "notify"
    assert lines["ExecStart"] == f"{PREFIX}/venv/bin/ursa-daemon --config /etc/ursa-daemon/config.yaml run"
    assert lines["Restart"] == "on-failure"
    assert lines["IOSchedulingClass"] == "idle" and int(lines["Nice"]) > 0
    assert lines["StateDirectory"] == "ursa-daemon"
    assert lines["ProtectSystem"] == "strict" and lines["NoNewPrivileges"] == "yes"
    assert lines["SystemCallFilter"] == "@system-service" and lines["CapabilityBoundingSet"] == ""
    assert lines["ReadWritePaths"] == "/var/lib/ursa-daemon"
    # the watchdog outlives several 5 s beats; systemd waits longer than the daemon's stop budget
    from ursa_daemon.daemon import DEFAULT_STOP_BUDGET_S
    from ursa_daemon.daemon.watch import HEARTBEAT_S

    assert int(lines["WatchdogSec"].rstrip("s")) >= 4 * HEARTBEAT_S
    assert int(lines["TimeoutStopSec"].rstrip("s")) > DEFAULT_STOP_BUDGET_S + 5
    assert "StartLimitBurst" in lines and "StartLimitIntervalSec" in lines
    assert lines["User"] == "ursa-daemon"


def _directives(path: Path) -> dict[str, str]:
    return {
        ln.split("=", 1)[0]: ln.split("=", 1)[1]
        for ln in path.read_text().splitlines()
        if "=" in ln and not ln.startswith("#")
    }


def test_maintain_units() -> None:
    service, timer = _directives(MAINT_SERVICE), _directives(MAINT_TIMER)
    assert service["Type"] == "oneshot"
    assert service["ExecStart"] == f"{PREFIX}/venv/bin/ursa-daemon --config /etc/ursa-daemon/config.yaml maintain"
    assert service["SuccessExitStatus"] == "3"  # the lease is held elsewhere: not a failure
    assert service["User"] == "ursa-daemon" and service["IOSchedulingClass"] == "idle"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    # the run must end well inside the lease that keeps a second run out
    from ursa_daemon.daemon.maintain import DEFAULT_LEASE

    assert int(service["TimeoutStartSec"].rstrip("min")) * 60 < DEFAULT_LEASE.total_seconds()
    assert timer["Unit"] == "ursa-daemon-maintain.service" and timer["OnCalendar"] == "hourly"
    assert timer["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(staged) -> None:  # type: ignore[no-untyped-def]
    root, _, _ = staged
    staged_unit = root / "etc/systemd/system/ursa-daemon.service"
    if not staged_unit.exists():  # the tree test uninstalled it: stage again
        root, wheel, _ = staged
        run_install(root, wheel)
    binary = root / PREFIX.lstrip("/") / "venv/bin/ursa-daemon"
    check_dir = root.parent / "verify"
    check_dir.mkdir(exist_ok=True)
    unit = check_dir / "ursa-daemon.service"
    # verify needs ExecStart's binary to exist: point it at the staged one
    unit.write_text(staged_unit.read_text().replace(f"{PREFIX}/venv/bin/ursa-daemon", str(binary)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # unknown keys and bad values are only warnings: there must be none about this unit
    assert str(unit) not in out and "ursa-daemon.service" not in out, out
    for name in (MAINT_SERVICE.name, MAINT_TIMER.name):
        staged_text = (root / "etc/systemd/system" / name).read_text()
        (check_dir / name).write_text(staged_text.replace(f"{PREFIX}/venv/bin/ursa-daemon", str(binary)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(check_dir / MAINT_SERVICE.name), str(check_dir / MAINT_TIMER.name)],
        capture_output=True, text=True, timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "ursa-daemon-maintain" not in out, out


# -- check-config ------------------------------------------------------------


def _moto_auth(endpoint: str, count: str) -> None:
    req = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def _iam_key(moto_server, name: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    import boto3

    iam = boto3.client(
        "iam", endpoint_url=moto_server.endpoint, region_name="us-east-1",
        aws_access_key_id=MOTO_KEY_ID, aws_secret_access_key=MOTO_SECRET,
    )
    iam.create_user(UserName=name)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
    return iam.create_access_key(UserName=name)["AccessKey"]  # type: ignore[no-any-return]


def test_check_config_against_moto_good_and_bad_credentials(moto_server, s3_buckets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw, assets = s3_buckets
    key = _iam_key(moto_server, f"rig-{raw}")
    good_secret = key["SecretAccessKey"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(s3_config_dict(moto_server.endpoint, raw, assets, tmp_path)))
    (tmp_path / "recordings").mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("URSA_")}
    good = {
        f"URSA_{role}_{part}": value
        for role in ("ASSETS_RO", "ASSETS_RW", "RAW_RW")
        for part, value in (("KEY_ID", key["AccessKeyId"]), ("SECRET", good_secret))
    }
    bad = {**good, "URSA_RAW_RW_KEY_ID": MOTO_KEY_ID, "URSA_RAW_RW_SECRET": MOTO_SECRET}
    _moto_auth(moto_server.endpoint, "0")
    try:
        ok = cli(config, "check-config", "--json", env={**base, **good})
        human_ok = cli(config, "check-config", env={**base, **good})
        failed = cli(config, "check-config", "--json", env={**base, **bad})
        human = cli(config, "check-config", env={**base, **bad})
    finally:
        _moto_auth(moto_server.endpoint, "inf")

    assert ok.returncode == 0, ok.stdout + ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] and [r["role"] for r in doc["roles"]] == ["assets_ro", "assets_rw", "raw_ro", "raw_rw"]
    by_role = {r["role"]: r for r in doc["roles"]}
    assert [p["op"] for p in by_role["assets_ro"]["probes"]] == ["list"]
    assert [p["op"] for p in by_role["raw_rw"]["probes"]] == ["put", "head", "delete"]
    assert by_role["raw_rw"]["probes"][0]["key"].startswith("ursa/probe/")
    assert by_role["assets_rw"]["source"] == "env URSA_ASSETS_RW_KEY_ID + URSA_ASSETS_RW_SECRET"
    assert human_ok.returncode == 0 and "all good" in human_ok.stderr

    assert failed.returncode == 1, failed.stdout + failed.stderr
    doc = json.loads(failed.stdout)
    by_role = {r["role"]: r for r in doc["roles"]}
    assert not doc["ok"]
    assert by_role["assets_ro"]["ok"] and by_role["assets_rw"]["ok"]
    assert not by_role["raw_rw"]["ok"] and not by_role["raw_ro"]["ok"]  # raw_ro falls back to raw_rw
    assert by_role["raw_rw"]["probes"][0]["op"] == "put"
    assert "Permission" in by_role["raw_rw"]["probes"][0]["error"]
    assert human.returncode == 1
    assert "[FAIL] role raw_rw" in human.stderr and "[ok  ] role assets_rw" in human.stderr
    for proc in (ok, human_ok, failed, human):
        for text in (proc.stdout, proc.stderr):
            assert MOTO_SECRET not in text and good_secret not in text
    # the probe objects are gone
    s3 = moto_server.client()
    for bucket in (raw, assets):
        assert s3.list_objects_v2(Bucket=bucket, Prefix="ursa/probe/").get("KeyCount", 0) == 0


def test_check_config_local_missing_env_and_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(local_config_dict(tmp_path)))
    proc = cli(config, "check-config", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["kind"] == "local"
    assert {p["name"]: p["status"] for p in doc["paths"]} == {"recordings_root": "warn", "state_dir": "ok"}
    assert not list((tmp_path / "store").rglob("ursa/probe/*"))

    # a credential variable that is not set: that role fails, by name, exit 1
    doc_s3 = s3_config_dict("http://127.0.0.1:9", "raw", "assets", tmp_path)
    config.write_text(yaml.safe_dump(doc_s3))
    env = {k: v for k, v in os.environ.items() if not k.startswith("URSA_")}
    proc = cli(config, "check-config", env=env)
    assert proc.returncode == 1
    assert "URSA_ASSETS_RO_KEY_ID" in proc.stderr

    # an invalid config (a non-loopback metrics host) is exit 2, with a JSON document too
    doc_s3["metrics"] = {"enabled": True, "host": "0.0.0.0"}
    config.write_text(yaml.safe_dump(doc_s3))
    proc = cli(config, "check-config", "--json", env=env)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["key"] == "metrics.host"
    assert "loopback" in proc.stderr


# -- metrics -----------------------------------------------------------------


def scrape(url: str) -> dict[str, float] | None:
    try:
        return scrape_metrics(url, timeout=2)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_metrics_endpoint_moves_during_a_drain(tmp_path: Path) -> None:
    port = _free_port()
    doc = local_config_dict(tmp_path)
    doc["upload"] = {"bandwidth_bytes_per_s": 1_000_000, "max_concurrent_files": 1}
    doc["metrics"] = {"enabled": True, "port": port}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(doc))
    root = tmp_path / "recordings"
    total = 0
    finished = time.time() - 100
    for rec_id in ("rec_20260101_000000_aaaa", "rec_20260101_000001_bbbb"):
        for i in range(3):
            p = root / rec_id / "eeg" / f"seg_{i}.bin"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(600_000))
            total += 600_000
        manifest = root / rec_id / "manifest.json"
        manifest.write_text(json.dumps({"recording_id": rec_id, "start_time": 1_000_000}))
        os.utime(manifest, (finished, finished))

    url = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), "drain", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    samples: list[dict[str, float]] = []
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        got = scrape(url)
        if got is not None:
            samples.append(got)
        time.sleep(0.15)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out)["bytes_uploaded"] == total

    assert len(samples) >= 5, f"{len(samples)} scrapes"
    sent = [s["ursa_uploaded_bytes_total"] for s in samples]
    assert sent == sorted(sent), "a counter never goes down"
    assert any(0 < v < total for v in sent), sent  # seen moving, not only before and after
    assert len(set(sent)) >= 3, sent
    assert any(s["ursa_uploaded_files_total"] >= 1 for s in samples)
    assert any(s['ursa_sessions{state="uploading"}'] == 1 for s in samples)
    assert any(s["ursa_upload_throughput_bytes_per_second"] > 0 for s in samples)
    # the first session waits since its manifest was written (100 s ago)
    assert any(s["ursa_oldest_pending_session_age_seconds"] >= 90 for s in samples)
    registered = [s for s in samples if s["ursa_sessions_registered_total"] >= 1]
    assert registered, "the first session registered while the second uploaded"
    assert registered[-1]['ursa_sessions{state="registered"}'] >= 1
    assert registered[-1]["ursa_last_registration_timestamp_seconds"] > time.time() - 120
    assert registered[-1]["ursa_session_upload_seconds_count"] >= 1
    # one series per metric: no `_created` twin; session outcomes all named ursa_sessions_<outcome>_total
    assert not [k for s in samples for k in s if "_created" in k]
    outcomes = {k for k in samples[-1] if k.startswith("ursa_session") and k.endswith("_total")}
    assert outcomes == {f"ursa_sessions_{o}_total" for o in ("registered", "rejected", "paused", "failed")}
    assert scrape(url) is None  # the endpoint is gone with the drain
