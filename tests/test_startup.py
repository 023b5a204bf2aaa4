"""Start-up cost, checked by what a real ``ursa-daemon`` process imported (timings: tests/bench/startup.py).

Commands that do not touch the catalog import none of its stack (lancedb, pyarrow,
the Lance namespace packages); ``query`` imports lancedb but not the REST namespace
client's API modules, and that client still loads in full for code that asks for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import local_config_dict

from ursa_daemon.cli.demo import make_sample_session

CATALOG_STACK = ("lancedb", "pyarrow", "lance", "lance_namespace", "lance_namespace_urllib3_client")

#: runs the CLI in this interpreter, then writes the names of the loaded modules to argv[1]
_RUN_AND_LIST = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from ursa_daemon.cli import main
main()
"""


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    listing = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST, str(listing), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, set(json.loads(listing.read_text()))


def _top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.fixture(scope="module")
def catalog_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("startup")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({**local_config_dict(root), "watch": {"settle_seconds": 0}}))
    make_sample_session(root / "recordings")
    drained = subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), "drain", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert drained.returncode == 0, drained.stderr
    return config


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["--help"], ["query", "--help"]])
def test_commands_off_the_catalog_import_none_of_its_stack(
    catalog_config: Path, tmp_path: Path, args: list[str]
) -> None:
    proc, modules = _run(tmp_path, "--config", str(catalog_config), *args)
    assert proc.returncode == 0, proc.stderr
    assert not _top(modules) & set(CATALOG_STACK), sorted(_top(modules) & set(CATALOG_STACK))


def test_query_imports_lancedb_without_the_rest_namespace_client(catalog_config: Path, tmp_path: Path) -> None:
    proc, modules = _run(tmp_path, "--config", str(catalog_config), "query", "--participant", "Aria Lin", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["participant_ids"] for r in json.loads(proc.stdout)] == [["aria_lin"]]
    assert "lancedb" in modules
    assert not {m for m in modules if m.startswith("lance_namespace_urllib3_client.api")}
    assert "lance_namespace_urllib3_client.api_client" not in modules


def test_deferred_rest_client_still_loads_in_full_when_asked() -> None:
    probe = """
import sys, overrides
checked = overrides.override
from ursa_daemon.catalog._lance_import import import_lancedb
lancedb = import_lancedb()
assert import_lancedb() is lancedb
assert overrides.override is checked, "overrides.override put back"
assert "lance_namespace_urllib3_client.api" not in sys.modules
import lance_namespace_urllib3_client as client
from lance_namespace_urllib3_client import ApiClient, Configuration, TableApi
from lance_namespace_urllib3_client.models import ListTablesResponse
import lancedb.namespace
assert client.__version__ and ApiClient.__module__ == "lance_namespace_urllib3_client.api_client"
assert TableApi.__module__ == "lance_namespace_urllib3_client.api.table_api"
try:
    client.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("a missing name is an AttributeError")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
