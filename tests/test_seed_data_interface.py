"""The DataInterface source (seed 000): ``ursa.DataInterface`` has its signatures and behaviour.

The method signatures and the query filter names are read from the seed's text, so a
change there shows here. Runs on the local profile, in-process.
"""

from __future__ import annotations

import ast
import inspect
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import local_config_dict, s3_config_dict
from seed_docs import check_shared_copy, text

import ursa
from ursa import DataInterface
from ursa.catalog import CatalogRowExists, WritesNotEnabled
from ursa_daemon.errors import CredentialError

DOC = text("data_interface.txt")
H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64
T0 = datetime(2026, 5, 20, 19, 56, tzinfo=UTC)


def _seed_methods() -> dict[str, ast.arguments]:
    start = DOC.index("[docs] class DataInterface:")
    region = DOC[start : DOC.index("# =========", start)]
    found = {}
    for m in re.finditer(r"def (\w+)\((.*?)\)\s*->", region, re.S):
        name = m.group(1)
        if name.startswith("_") and name != "__init__":
            continue
        fn = ast.parse(f"def f({m.group(2)}): pass").body[0]
        assert isinstance(fn, ast.FunctionDef)
        found[name] = fn.args  # overloads first, the implementation last
    return found


SEED_METHODS = _seed_methods()


def _seed_tuple(name: str) -> tuple[str, ...]:
    found = re.search(rf"{name} = (\(.*?\))", DOC, re.S)
    assert found is not None, name
    value = ast.literal_eval(found.group(1))
    assert isinstance(value, tuple)
    return value


def _default(node: ast.expr) -> Any:
    return eval(compile(ast.Expression(node), "<seed default>", "eval"), vars(ursa))  # noqa: S307 - the seed's own literals


def test_vendored_source_is_the_seed() -> None:
    check_shared_copy("data_interface.txt")


def test_every_seed_method_is_there() -> None:
    assert len(SEED_METHODS) >= 29
    for name in SEED_METHODS:
        assert hasattr(DataInterface, name), name
    assert isinstance(inspect.getattr_static(DataInterface, "catalog"), property)
    assert isinstance(inspect.getattr_static(DataInterface, "writes_enabled"), property)


@pytest.mark.parametrize("name", sorted(n for n in SEED_METHODS if n not in ("catalog", "writes_enabled")))
def test_signature_matches_the_seed(name: str) -> None:
    """Every seed parameter, with its kind and default; anything we add is optional."""
    args = SEED_METHODS[name]
    ours = inspect.signature(getattr(DataInterface, name)).parameters
    P = inspect.Parameter
    seed: list[tuple[str, Any, Any]] = []
    positional = args.args[1:]  # without self
    pos_defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    seed += [(a.arg, P.POSITIONAL_OR_KEYWORD, d) for a, d in zip(positional, pos_defaults, strict=True)]
    seed += [(a.arg, P.KEYWORD_ONLY, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    for pname, kind, default in seed:
        assert pname in ours, f"{name}: no parameter {pname!r}"
        p = ours[pname]
        assert p.kind is kind, f"{name}({pname}): {p.kind} vs the seed's {kind}"
        if default is None:
            assert p.default is P.empty, f"{name}({pname}) must be required, as in the seed"
        else:
            assert p.default == _default(default), f"{name}({pname}) default {p.default!r}"
    if args.kwarg is not None:
        assert any(p.kind is P.VAR_KEYWORD for p in ours.values()), f"{name} takes **kwargs in the seed"
    names = {s[0] for s in seed} | {"self"}
    for pname, p in ours.items():
        if pname not in names and p.kind not in (P.VAR_KEYWORD, P.VAR_POSITIONAL):
            assert p.default is not P.empty, f"{name}({pname}) is ours: it must be optional"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def data(store: Path) -> DataInterface:
    return DataInterface(profile="local", path=store)


def _raw_uri(data: DataInterface, rec_id: str, worker: str) -> str:
    from ursa_daemon.store import storage_uri

    return storage_uri(data.core.profile, "raw", f"recordings/{rec_id}/{worker}/")


def test_profile_and_path(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = DataInterface(profile="local", path=store)  # a new directory: a new local store
    data.enable_writes()
    data.register_participant(participant_id="p1", enrolled_at=T0)
    catalog_dir = store / "assets" / "ursa" / "catalog" / "main"
    assert (catalog_dir / "participants.lance").is_dir()
    tables = sorted(p.name for p in catalog_dir.iterdir())
    # the seeds' path is the catalog on local disk: its directory opens the same catalog
    assert DataInterface(profile="local", path=catalog_dir).get_participant("p1") is not None
    inside_paths = (store / "assets", store / "assets" / "ursa", catalog_dir / "participants.lance",
                    store / "raw" / "x")
    for inside in inside_paths:
        with pytest.raises(ValueError, match="inside"):
            DataInterface(profile="local", path=inside)
    assert sorted(p.name for p in catalog_dir.iterdir()) == tables  # nothing created inside
    assert not (store / "assets" / "ursa" / "assets").exists()
    with pytest.raises(ValueError, match="holds the local store"):
        DataInterface(profile="local", path=tmp_path)  # the directory above the store
    assert not (tmp_path / "raw").exists()
    with pytest.raises(ValueError, match="only valid with profile='local'"):
        DataInterface(profile="r2", path=store)
    monkeypatch.chdir(tmp_path)  # no config.yaml here or above
    if not Path("/etc/ursa-daemon/config.yaml").exists():
        with pytest.raises(ValueError, match="requires path="):
            DataInterface(profile="local")
    cfg = local_config_dict(tmp_path)
    cfg["profiles"]["lab"] = cfg["profiles"]["local"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert DataInterface(profile="lab").profile == "lab"
    cfg["profiles"]["r2"] = s3_config_dict("http://127.0.0.1:9", "raw", "assets", tmp_path)["profiles"]["s3"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    for role in ("ASSETS_RO", "ASSETS_RW", "RAW_RW"):
        monkeypatch.delenv(f"URSA_{role}_KEY_ID", raising=False)
    lazy = DataInterface()  # credentials are resolved on first use, not at construction
    with pytest.raises(CredentialError, match="URSA_ASSETS_RO_KEY_ID"):
        lazy.query()
    del cfg["profiles"]["r2"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"'r2' is not in profiles.*\['lab', 'local'\]"):
        DataInterface()  # profile="r2" by default, as in the seeds; this config has none


def test_writes_are_gated_and_registers_idempotent(data: DataInterface) -> None:
    with pytest.raises(WritesNotEnabled, match="enable_writes"):
        data.register_participant(participant_id="p1", enrolled_at=T0)
    assert data.writes_enabled is False
    data.enable_writes()
    data.enable_writes()  # idempotent
    row = data.register_participant(participant_id="p1", enrolled_at=T0, metadata={"cohort": "a"})
    assert data.register_participant(participant_id="p1", enrolled_at=T0, metadata={"cohort": "a"}) == row
    with pytest.raises(CatalogRowExists) as exc:
        data.register_participant(participant_id="p1", enrolled_at=T0, metadata={"cohort": "b"})
    assert exc.value.diff == {"metadata": ({"cohort": "a"}, {"cohort": "b"})}

    rec = data.register_recording(recording_hash=H1, participant_ids=["p1"], start_time=T0,
                                  duration=timedelta(minutes=30),
                                  metadata={"manifest_recording_id": "rec_20260520_195628_b1dd"})
    assert rec.rec_id == "rec_20260520_195628_b1dd" and rec.duration == timedelta(minutes=30)
    # the seeds' RecordingRow has no rec_id column: a recording registered without a legacy id
    bare = data.register_recording(recording_hash=H2, participant_ids=[], start_time=T0, duration=timedelta(0))
    assert "manifest_recording_id" not in bare.metadata
    # the runbook's conflict policies, on the seeds' argument names
    again = dict(recording_hash=H1, start_time=T0, metadata={"manifest_recording_id": "rec_20260520_195628_b1dd"})
    with pytest.raises(CatalogRowExists, match="duration"):
        data.register_recording(participant_ids=["p1"], duration=timedelta(minutes=45), **again)  # type: ignore[arg-type]
    longer = data.register_recording(participant_ids=["p1"], duration=timedelta(minutes=45),  # type: ignore[arg-type]
                                     on_conflict="extend", **again)
    assert longer.duration == timedelta(minutes=45)
    data.register_participant(participant_id="p2", enrolled_at=T0)
    merged = data.register_recording(participant_ids=["p2"], duration=timedelta(minutes=45),
                                      on_conflict="merge_participants", **again)  # type: ignore[arg-type]
    assert merged.participant_ids == ["p1", "p2"]
    assert data.get_recording(H1) == merged


def test_get_modality_resolves_one_worker_of_a_family(data: DataInterface) -> None:
    data.enable_writes()
    rec_id = "rec_20260520_195628_b1dd"
    data.register_recording(recording_hash=H1, participant_ids=[], start_time=T0, duration=timedelta(0),
                            metadata={"manifest_recording_id": rec_id})
    for worker in ("eeg_a", "eeg_b", "camera_0", "mic"):
        data.register_modality(recording_hash=H1, modality=worker, raw_storage_uri=_raw_uri(data, rec_id, worker))
    assert data.get_modality(H1, "camera").worker_id == "0"  # type: ignore[union-attr]
    assert data.get_modality(H1, "mic").worker_id == ""  # type: ignore[union-attr]
    assert data.get_modality(H1, "eeg_b").worker_id == "b"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="eeg_a, eeg_b"):
        data.get_modality(H1, "eeg")
    assert data.get_modality(H1, "notes") is None
    [qr] = data.query(recording_hash=H1, status="raw")
    assert sorted(qr.modalities) == ["camera", "eeg_a", "eeg_b", "mic"]
    for key in qr.modalities:  # every QueryResult key resolves to its row
        assert data.get_modality(H1, key) == qr.modalities[key]


def test_query_status_and_the_processed_store_filters(data: DataInterface) -> None:
    data.enable_writes()
    for h, rec_id, statuses in ((H1, "rec_20260101_000000_aaaa", {"eeg": "processed", "mic": "raw"}),
                                (H2, "rec_20260102_000000_bbbb", {"mic": "raw"}),
                                (H3, "rec_20260103_000000_cccc", {"mic": "failed"})):
        data.register_recording(recording_hash=h, participant_ids=[], start_time=T0, duration=timedelta(0),
                                metadata={"manifest_recording_id": rec_id})
        for worker, status in statuses.items():
            uri = _raw_uri(data, rec_id, worker)
            data.register_modality(recording_hash=h, modality=worker, raw_storage_uri=uri, ingestion_status=status)
    by = {s: {r.recording_hash: sorted(r.modalities) for r in data.query(status=s)} for s in ("ingested", "raw", "all")}
    assert by["ingested"] == {H1: ["eeg"]} == {r.recording_hash: sorted(r.modalities) for r in data.query()}
    assert by["raw"] == {H1: ["mic"], H2: ["mic"]}
    assert by["all"] == {H1: ["eeg", "mic"], H2: ["mic"], H3: ["mic"]}
    assert len(data.query(status="raw", limit=1)) == 1
    with pytest.raises(ValueError, match="status"):
        data.query(status="processed")
    filters = _seed_tuple("_FILTER_KWARG_NAMES")
    processed = _seed_tuple("_PROCESSED_KWARGS")
    assert set(processed) < set(filters)
    assert set(filters) <= set(ursa.QuerySpec.model_fields)
    values = {"time_range": (0, 1), "pipeline_version": "v1", "time_filters": [1], "metadata_filters": [1],
              "derived": [1]}
    for kwarg in processed:
        with pytest.raises(NotImplementedError, match=rf"query\({kwarg}=\.\.\.\) requires processed modalities"):
            data.query(status="raw", **{kwarg: values[kwarg]})
        with pytest.raises(NotImplementedError, match=kwarg):
            data.query(**{kwarg: values[kwarg]})
    spec = ursa.QuerySpec(recording_hash=H2)
    assert [r.recording_hash for r in data.query(spec, status="raw")] == [H2]
    with pytest.raises(TypeError, match="not both"):
        data.query(spec, recording_hash=H1)
    assert [r.recording_hash for r in data.query(spec, recording_hash=None, status="raw")] == [H2]
    with pytest.raises(TypeError, match="unexpected"):
        data.query(recordinghash=H1)
    with pytest.raises(ValueError, match="limit"):
        data.query(limit=0)


def test_legacy_id_of_rows_registered_before_it_was_written(tmp_path: Path, data: DataInterface) -> None:
    """A recording row without ``metadata["manifest_recording_id"]`` (registered by an older
    ursa-daemon) reads with it, and re-registering its session changes nothing."""
    from harness import write_session

    from ursa_daemon.transfer.ingest import ingest

    core = data.core
    core.enable_writes(roles=("assets_rw", "raw_rw"))
    rec_id = "rec_20260520_195628_b1dd"
    rec_dir = write_session(tmp_path / "rec", rec_id, {"eeg/seg_000001.bin": b"e" * 100})
    row = ingest(core, rec_dir).recording
    assert row is not None and row.metadata["manifest_recording_id"] == rec_id
    old = row.model_copy(update={"metadata": {"manifest_version": 1}})
    mods = core.catalog.list_modalities(where={"recording_hash": row.recording_hash})
    assert core.catalog.delete_recording(row.recording_hash)
    core.catalog.add_rows(mods)
    core.catalog.add_recording(old)
    assert core.get_recording(row.recording_hash).metadata == {"manifest_version": 1}
    assert ingest(core, rec_dir).recording.metadata == {"manifest_version": 1}  # identical: nothing rewritten
    assert data.get_recording(row.recording_hash).metadata["manifest_recording_id"] == rec_id  # type: ignore[union-attr]
    assert [r.metadata["manifest_recording_id"] for r in data.list_recordings()] == [rec_id]
    [qr] = data.query(metadata={"manifest_recording_id": rec_id}, status="raw")
    assert qr.metadata["manifest_recording_id"] == rec_id and qr.rec_id == rec_id
    assert data.query(metadata={"manifest_recording_id": "rec_20990101_000000_ffff"}, status="all") == []


def test_get_and_concat(tmp_path: Path, data: DataInterface) -> None:
    from harness import write_session

    data.enable_writes(roles=("assets_rw", "raw_rw"))
    one = write_session(tmp_path / "r", "rec_20260520_195628_b1dd",
                        {"eeg/seg_000002.bin": b"2", "eeg/seg_000001.bin": b"1"})
    two = write_session(tmp_path / "r", "rec_20260521_195628_b1de", {"mic/seg_000001.bin": b"m"})
    for rec in (one, two):
        data.ingest(rec / "manifest.json", source_dir=rec)
    results = data.query(status="raw")
    [eeg] = [r for r in results if "eeg" in r.modalities]
    assert [body for _, body in data.get(eeg).modalities["eeg"].segments] == [b"1", b"2"]
    assert len(data.get(results)) == 2
    with pytest.raises(ValueError, match="aligned modalities"):
        data.get(results, concat=True)
    with pytest.raises(NotImplementedError):
        data.get([results[0], results[0]], concat=True)


def test_public_names_are_ursa_daemons_own() -> None:
    """One implementation: ``ursa`` re-exports ``ursa_daemon``'s objects (sorted ``__all__``) and
    imports only names that ``ursa_daemon``'s modules export."""
    import importlib
    import importlib.util
    import pkgutil

    import ursa_daemon.catalog
    import ursa_daemon.errors
    import ursa_daemon.transfer.download
    import ursa_daemon.transfer.ingest

    assert ursa.__all__ == sorted(ursa.__all__)
    same = {
        "IngestResult": ursa_daemon.transfer.ingest.IngestResult,
        "UploadProgress": ursa_daemon.transfer.ingest.UploadProgress,
        "DownloadProgress": ursa_daemon.transfer.download.DownloadProgress,
        "RecordingRow": ursa_daemon.catalog.RecordingRow,
        "ModalityRow": ursa_daemon.catalog.ModalityRow,
        "CatalogRowExists": ursa_daemon.errors.CatalogRowExists,
        "WritesNotEnabled": ursa_daemon.errors.WritesNotEnabled,
        "ObjectStoreError": ursa_daemon.errors.StoreError,
        "ObjectStoreTransientError": ursa_daemon.errors.TransientStoreError,
    }
    for name, obj in same.items():
        assert getattr(ursa, name) is obj, name
    ursa_catalog = importlib.import_module("ursa.catalog")
    ursa_store = importlib.import_module("ursa.store")
    assert ursa_catalog.CatalogRowExists is ursa_daemon.errors.CatalogRowExists
    assert ursa_store.ObjectStoreError is ursa_daemon.errors.StoreError
    modules = ["ursa"] + [m.name for m in pkgutil.walk_packages(ursa.__path__, "ursa.")]
    for mod in modules:
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.origin is not None
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ursa_daemon"):
                exported = importlib.import_module(node.module).__all__  # type: ignore[arg-type]
                for alias in node.names:
                    assert alias.name in exported, f"{mod}: {node.module}.{alias.name} is not public"


#: names the seeds' *implementation* imports that are its internals, not the scientists' API
SEED_INTERNALS = {
    ("ursa.layout", "active_buckets"), ("ursa.layout", "validate_storage_uri"),
    ("ursa.data_interface", "CatalogWriter"),
    ("ursa.store", "get_store"), ("ursa.store", "parse_storage_uri"),
}


def _seed_imports() -> list[tuple[str, str]]:
    """Every ``from ursa... import name`` in the seed documents (one-line and parenthesised)."""
    from seed_docs import SHARED_NAMES

    found: set[tuple[str, str]] = set()
    for vendored in SHARED_NAMES:
        for m in re.finditer(r"from (ursa[\w.]*) import (\([^)]*\)|[\w, ]+)", text(vendored)):
            names = m.group(2).strip("()").replace("\n", " ")
            found |= {(m.group(1), n.strip()) for n in names.split(",") if n.strip().isidentifier()}
    return sorted(found)


def test_every_name_the_seeds_import_from_ursa_imports() -> None:
    import importlib

    seed = _seed_imports()
    assert set(seed) >= SEED_INTERNALS, "the internals list names what the seeds no longer import"
    missing = []
    for module, name in seed:
        if (module, name) in SEED_INTERNALS:
            continue
        try:
            found = hasattr(importlib.import_module(module), name)
        except ImportError:
            found = False
        if not found:
            missing.append(f"from {module} import {name}")
    assert len(seed) > 30 and not missing, missing


def test_get_results_carry_the_seeds_metadata_and_materialize_is_get(tmp_path: Path, data: DataInterface) -> None:
    from harness import write_session

    from ursa.raw import RawBytes
    from ursa.temporal import Data

    data.enable_writes(roles=("assets_rw", "raw_rw"))
    rec = write_session(tmp_path / "r", "rec_20260520_195628_b1dd", {"eeg/seg_000001.bin": b"1"})
    data.ingest(rec / "manifest.json", source_dir=rec)
    [qr] = data.query(status="raw")
    got = data.materialize(qr)
    assert isinstance(got, Data) and got == data.get(qr)
    assert got.metadata.recording_hash == qr.recording_hash  # seed: Data(metadata=rec_row)
    eeg = got.modalities["eeg"]
    assert isinstance(eeg, RawBytes) and eeg.metadata.modality == "eeg"  # seed: RawBytes(segments, metadata=mrow)
    assert eeg.metadata.raw_storage_uri == qr.modalities["eeg"].raw_storage_uri


def test_the_orchestrator_logger_the_runbook_names_gets_ingest_events(tmp_path: Path) -> None:
    """Runbook: 'surface progress via ... the structured ursa.register.orchestrator logger'.
    A fresh process, as a scientist's script: only that logger is configured."""
    import subprocess
    import sys

    from harness import write_session

    rec = write_session(tmp_path / "r", "rec_20260520_195628_b1dd", {"eeg/seg_000001.bin": b"1" * 10})
    script = f"""
import logging
from ursa import DataInterface
seen = []
class H(logging.Handler):
    def emit(self, record): seen.append((record.name, record.getMessage(), getattr(record, "rec_id", None)))
log = logging.getLogger("ursa.register.orchestrator")
log.setLevel(logging.INFO)
log.addHandler(H())
data = DataInterface(profile="local", path={str(tmp_path / "store")!r})
data.enable_writes(roles=("assets_rw", "raw_rw"))
data.ingest({str(rec / "manifest.json")!r}, source_dir={str(rec)!r})
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    seen = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    events = {event for _, event, _ in seen}
    assert {"upload.file_done", "session.registered"} <= events, seen
    assert all(name == "ursa.register.orchestrator" for name, _, _ in seen)
    assert ("ursa.register.orchestrator", "session.registered", rec.name) in seen
    assert not out.stderr.strip(), out.stderr  # nothing printed where logging was not configured


def test_metadata_with_limit_warns_as_the_seed_does(data: DataInterface) -> None:
    import warnings

    assert "if spec.metadata is not None and limit is not None: warnings.warn(" in DOC
    with pytest.warns(UserWarning, match="metadata") as caught:
        assert data.query(metadata={"protocol": "rest"}, limit=1) == []
    assert caught[0].filename == __file__  # pointed at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.query(metadata={"protocol": "rest"})
        data.query(limit=1)
