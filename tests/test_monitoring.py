"""The shipped monitoring, tested for real: deploy/prometheus, deploy/grafana.

promtool checks and unit-tests the alert rules and checks the scrape config built
from deploy/prometheus/scrape.yml. Then a real Prometheus (Debian's `prometheus`
package, installed by .ci/run) scrapes a live `ursa-daemon run` on loopback, with
the shipped rule file loaded, while the daemon registers a good session, rejects a
bad one and pauses for a recording (the activity flag file). Through Prometheus's
HTTP API every alert expression and every dashboard panel's query is evaluated:
each parses, each panel returns data for the live rig, every rule evaluates without
error, and the rejected-session alert fires.

The tests skip (with the reason) only when the `promtool` / `prometheus` binaries
are absent. deploy/alloy/ursa-logs.alloy is not tested here: Alloy is not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import _free_port, local_config_dict
from harness import DaemonProc, age, write_session

REPO = Path(__file__).resolve().parents[1]
PROM_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROM_DIR / "ursa-alerts.yml"
ALERT_TESTS = PROM_DIR / "ursa-alerts.test.yml"
SCRAPE = PROM_DIR / "scrape.yml"
RIGS_EXAMPLE = PROM_DIR / "ursa-rigs.example.json"
DASHBOARD = REPO / "deploy" / "grafana" / "ursa-fleet.json"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian: apt-get install prometheus)"
)

#: every alert the issue asks for; the rule file may hold more
ALERT_NAMES = {
    "UrsaRigDown", "UrsaRigAbsent", "UrsaOldestPendingOverADay", "UrsaSessionsFailing", "UrsaSessionRejected",
    "UrsaInternalErrors", "UrsaRecordsButRegistersNothing", "UrsaLowFreeSpace",
}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    doc = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", []) if t.get("expr")]


def grafana_to_promql(expr: str) -> str:
    """A panel's query as Prometheus gets it for every rig: `$rig` is All (`.*`), Grafana's
    interval variables a minute."""
    expr = re.sub(r"\$\{?__\w+\}?", "1m", expr)
    return re.sub(r"\$\{?rig\}?", ".*", expr)


# -- static checks -------------------------------------------------------------


@needs_promtool
def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([PROMTOOL, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout

    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert names >= ALERT_NAMES
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    cases = [case for group in tests for case in group.get("alert_rule_test", [])]
    for name in names:  # every alert is tested both firing and not firing
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no firing case"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no quiet case"
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        if r["alert"] != "UrsaRigAbsent":  # absent() has no instance: no rig to name
            assert "{{ $labels.instance }}" in r["annotations"]["description"], r["alert"]
    assert next(r for r in rules if r["alert"] == "UrsaSessionRejected").get("for", "0m") in {"0m", "0s"}


def built_config(tmp: Path) -> Path:
    """scrape.yml as an operator installs it: beside ursa-alerts.yml and a ursa-rigs.json."""
    shutil.copy(SCRAPE, tmp / "prometheus.yml")
    shutil.copy(ALERTS, tmp / "ursa-alerts.yml")
    shutil.copy(RIGS_EXAMPLE, tmp / "ursa-rigs.json")
    return tmp / "prometheus.yml"


@needs_promtool
def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    config = built_config(tmp_path)
    proc = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "WARNING" not in out, out  # the targets file was found and parsed
    doc = yaml.safe_load(SCRAPE.read_text())
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "ursa"]
    assert len(job["static_configs"][0]["targets"]) >= 2
    assert job["file_sd_configs"][0]["files"] == ["ursa-rigs.json"]
    assert "ursa-alerts.yml" in doc["rule_files"]
    targets = json.loads(RIGS_EXAMPLE.read_text())
    assert sum(len(g["targets"]) for g in targets) >= 2
    text = SCRAPE.read_text()
    assert "allow_remote: true" in text and "textfile:" in text


def test_dashboard_json_is_sane() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert 36 <= doc["schemaVersion"] <= 41
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    rig = variables["rig"]
    assert rig["type"] == "query"
    assert rig["query"]["query"] == rig["definition"] == "label_values(ursa_sessions, instance)"
    assert rig["includeAll"] and rig["allValue"] == ".*"
    assert doc["panels"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        exprs = [t.get("expr") for t in p.get("targets", [])]
        assert exprs and all(exprs), f"panel {p['title']!r} has no query"
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        for expr in exprs:
            # every selector of an ursa metric (and up) is narrowed to the chosen rigs
            for name, sel in re.findall(r"\b(ursa_\w+|up)\b(\{[^}]*\})?", expr):
                assert 'instance=~"$rig"' in sel, f"{p['title']!r}: {name} without instance=~\"$rig\" in {expr}"
    wanted = ["ursa_sessions", "ursa_pending_bytes", "ursa_uploaded_bytes_total",
              "ursa_upload_throughput_bytes_per_second", "ursa_sessions_failed_total",
              "ursa_oldest_pending_session_age_seconds", "ursa_rig_recording", "ursa_uploads_paused",
              "ursa_last_registration_timestamp_seconds", "ursa_internal_errors_total",
              "ursa_recordings_root_free_bytes", "up{"]
    every = " ".join(e for _, e in dashboard_targets())
    for metric in wanted:
        assert metric in every, metric


# -- a real Prometheus scraping a live daemon ------------------------------------


class Prom:
    """Prometheus's HTTP API on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad query is a 400 with a JSON body
            doc = json.loads(exc.read())
        return doc

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def value(self, expr: str) -> float | None:
        doc = self.query(expr)
        result = doc.get("data", {}).get("result") or []
        return float(result[0]["value"][1]) if result else None


def wait_for(check: Callable[[], Any], timeout: float, step: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(step)


def live_prometheus_config(tmp: Path, daemon_port: int) -> Path:
    """The shipped scrape.yml's ursa job pointed at the live daemon, scraped and evaluated every second."""
    doc = yaml.safe_load(SCRAPE.read_text())
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "ursa"]
    job.pop("file_sd_configs")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{daemon_port}"]}]
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    doc["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    doc["rule_files"] = [str(ALERTS)]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@needs_prometheus
def test_live_daemon_scraped_by_prometheus_evaluates_every_alert_and_panel(tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    daemon_port, prom_port = _free_port(), _free_port()
    flag = tmp_path / "recording.flag"
    doc = local_config_dict(tmp_path)
    doc["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": daemon_port}
    # shed_after_idle_seconds 0: no idle re-exec in the middle of this test
    doc["watch"] = {"settle_seconds": 0.2, "rescan_seconds": 1.0, "retry_check_seconds": 0.5,
                    "shed_after_idle_seconds": 0}
    doc["activity"] = {"quiet_seconds": 0.2, "flag_file": str(flag)}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(doc))
    root = tmp_path / "recordings"
    root.mkdir()

    prom_log = tmp_path / "prometheus.log"
    prom = Prom(prom_port)
    with open(prom_log, "w") as log_file:
        prom_proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={live_prometheus_config(tmp_path, daemon_port)}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
             "--log.level=warn"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    daemon = DaemonProc(config, "run", log=tmp_path / "daemon.log")
    try:
        assert wait_for(prom.ready, 30), prom_log.read_text()
        # Prometheus scrapes the idle daemon through the shipped job (relabelled instance: no port)
        assert wait_for(lambda: prom.value('up{job="ursa"}') == 1.0, 30), (prom_log.read_text(), daemon.text())
        up = prom.query('up{job="ursa"}')["data"]["result"][0]["metric"]
        assert up["instance"] == "127.0.0.1", up
        assert prom.value('ursa_uploaded_bytes_total{job="ursa"}') == 0.0

        # now the rig finishes two sessions: a good one, and one whose manifest is not JSON
        good = write_session(root, "rec_20260101_000000_600d", {"eeg/seg_000000.bin": b"x" * 200_000,
                                                               "camera_0/seg_000000.bin": b"y" * 50_000})
        bad = root / "rec_20260101_000001_bad1"
        (bad / "eeg").mkdir(parents=True)
        (bad / "eeg" / "seg_000000.bin").write_bytes(b"z" * 1000)
        (bad / "manifest.json").write_text("{not json")  # rejected: bad input, not retried
        age(bad)
        registered = daemon.wait_event(lambda e: e.get("event") == "session.registered", timeout=40)
        assert registered and registered.get("rec_id") == good.name, daemon.text()
        rejected = next((e for e in daemon.events if e.get("event") == "session.rejected"), None) or (
            daemon.wait_event(lambda e: e.get("event") == "session.rejected", timeout=20))
        assert rejected and rejected.get("rec_id") == bad.name, daemon.text()

        assert wait_for(lambda: prom.value('ursa_sessions{job="ursa", state="registered"}') == 1.0, 20)
        assert wait_for(lambda: prom.value('ursa_sessions{job="ursa", state="rejected"}') == 1.0, 20)
        # the bytes moved while Prometheus watched: the counter went from 0 to the session's size
        assert wait_for(lambda: prom.value('ursa_uploaded_bytes_total{job="ursa"}') == 250_000.0, 20)
        assert (prom.value('increase(ursa_uploaded_bytes_total{job="ursa"}[5m])') or 0) > 0

        # the rejected-session alert becomes active, and fires
        def rejected_alert() -> dict[str, Any] | None:
            alerts = prom.get("/api/v1/alerts")["data"]["alerts"]
            return next((a for a in alerts if a["labels"]["alertname"] == "UrsaSessionRejected"
                         and a["state"] == "firing"), None)

        alert = wait_for(rejected_alert, 20)
        assert alert, prom.get("/api/v1/alerts")
        assert alert["labels"]["instance"] == "127.0.0.1" and alert["labels"]["state"] == "rejected"
        assert alert["labels"]["severity"] == "warning"
        assert "127.0.0.1" in alert["annotations"]["description"]
        assert "ursa-daemon status" in alert["annotations"]["description"]

        # the rig starts recording: ursa_rig_recording (and ursa_uploads_paused) follow the flag file
        # (the session writes above counted as recording for quiet_seconds: wait that out)
        assert wait_for(lambda: prom.value('ursa_rig_recording{job="ursa"}') == 0.0, 10), daemon.text()
        assert wait_for(lambda: prom.value('ursa_uploads_paused{job="ursa"}') == 0.0, 10), daemon.text()
        flag.write_text("recording\n")
        assert wait_for(lambda: prom.value('ursa_rig_recording{job="ursa"}') == 1.0, 20), daemon.text()
        assert wait_for(lambda: prom.value('ursa_uploads_paused{job="ursa"}') == 1.0, 20), daemon.text()

        # every alert expression parses and evaluates; every rule evaluates without error
        rules = alert_rules()
        for rule in rules:
            doc_q = prom.query(rule["expr"])
            assert doc_q["status"] == "success", (rule["alert"], doc_q)

        def rules_evaluated() -> list[dict[str, Any]]:
            groups = prom.get("/api/v1/rules")["data"]["groups"]
            got = [r for g in groups if g["name"] == "ursa" for r in g["rules"]]
            # a rule not yet evaluated shows the zero time
            return got if got and not any(r["lastEvaluation"].startswith("0001") for r in got) else []

        loaded = wait_for(rules_evaluated, 10)
        assert {r["name"] for r in loaded} == {r["alert"] for r in rules}
        for r in loaded:
            assert r["health"] == "ok" and not r.get("lastError"), r

        # on this rig only the rejection is alarming (and a full disk, if the test machine's is)
        usage = shutil.disk_usage(root)
        allowed = {"UrsaSessionRejected"} | ({"UrsaLowFreeSpace"} if usage.free / usage.total < 0.10 else set())
        active = {a["labels"]["alertname"] for a in prom.get("/api/v1/alerts")["data"]["alerts"]}
        assert active <= allowed, active

        # every dashboard panel's query parses and returns data for the live rig; a rate or an
        # increase needs two scrapes in its window, so wait for those briefly
        targets = dashboard_targets()

        def empty_panels() -> list[tuple[str, str, Any]]:
            out = []
            for title, expr in targets:
                got = prom.query(grafana_to_promql(expr))
                if got.get("status") != "success" or not got["data"]["result"]:
                    out.append((title, expr, got))
            return out

        missing = empty_panels()
        deadline = time.monotonic() + 15
        while missing and time.monotonic() < deadline:
            time.sleep(1)
            missing = empty_panels()
        assert not missing, missing
        for title, expr in targets:
            result = prom.query(grafana_to_promql(expr))["data"]["result"]
            assert all(s["metric"].get("instance") == "127.0.0.1" for s in result if "instance" in s["metric"]), (
                title, result)
        info = prom.query('ursa_rig_info{job="ursa"}')["data"]["result"]
        assert info and {"rig_id", "version", "host"} <= set(info[0]["metric"]), info
        backlog = prom.value('sum by (instance) (ursa_sessions{job="ursa", '
                             'state=~"discovered|hashing|uploading|paused|registering|failed"})')
        assert backlog == 0.0  # one registered, one rejected: nothing pending
    finally:
        daemon.stop()
        prom_proc.terminate()
        try:
            prom_proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom_proc.kill()
            prom_proc.wait(timeout=5)
