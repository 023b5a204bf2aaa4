"""The local profile's copy: one kernel-side copy held to what hashing saw, kept partials checked
without a second sha256 pass (ursa_daemon.transfer.local_copy)."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ursa_daemon.errors import InputError
from ursa_daemon.session import FileEntry, hash_files
from ursa_daemon.store.local import LocalStore
from ursa_daemon.transfer import copy_range
from ursa_daemon.transfer.copy_range import RangeCopier
from ursa_daemon.transfer.limits import RateLimiter, UploadLimits
from ursa_daemon.transfer.local_copy import _partial
from ursa_daemon.transfer.upload import upload_files

REC = "rec_20260301_000001_abcd"
REL = "eeg/a.bin"
PART = 256 << 10


def session(tmp_path: Path, body: bytes) -> Path:
    rec = tmp_path / REC
    (rec / "eeg").mkdir(parents=True, exist_ok=True)
    (rec / REL).write_bytes(body)
    return rec


def hashed(rec: Path, body: bytes) -> FileEntry:
    """The entry hashing makes: sha256, mtime and the CRC32C of every PART slice, in one read."""
    (entry,) = hash_files(rec, [FileEntry(REL, len(body))], part_size=PART)
    assert entry.mtime_ns is not None and len(entry.part_crc32c) == -(-len(body) // PART)
    return entry


def copy(store: LocalStore, rec: Path, entry: FileEntry) -> bool:
    return upload_files(store, rec, REC, [entry], should_stop=lambda: False, limits=UploadLimits(),
                        limiter=RateLimiter(None), on_done=lambda _u: None)


def stored(store: LocalStore) -> Path:
    return Path(store.directory, "recordings", REC, REL)


def keep_partial(store: LocalStore, entry: FileEntry, kept: bytes) -> Path:
    part = _partial(store, REC, entry)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(kept)
    return part


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(min_value=(4 << 20) + 1, max_value=6 << 20),
    kept_frac=st.floats(min_value=0.0, max_value=1.0),
    torn_frac=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),
)
def test_a_kept_partial_is_kept_up_to_its_last_part_whose_crc32c_matches(
    tmp_path_factory: pytest.TempPathFactory, size: int, kept_frac: float, torn_frac: float | None
) -> None:
    """A kept prefix (a pause, a SIGKILL, a torn write at power loss) keeps its whole parts that match
    the CRC32Cs hashing took, nothing after the first that does not; the object lands byte-exact."""
    tmp_path = tmp_path_factory.mktemp("kept")
    body = os.urandom(size)
    rec = session(tmp_path, body)
    entry = hashed(rec, body)
    store = LocalStore(tmp_path / "raw", bucket_kind="raw")
    have = int(size * kept_frac)
    kept = bytearray(body[:have])
    torn = None if torn_frac is None or not have else min(have - 1, int(have * torn_frac))
    if torn is not None:
        kept[torn] ^= 0xFF
    keep_partial(store, entry, bytes(kept))
    with capture_logs() as logs:
        assert copy(store, rec, entry)
    good = min(have, torn if torn is not None else have) // PART * PART
    if have == size and torn is None:
        good = size  # the last part is short: a whole kept file checks out entirely
    resumed = [e["bytes_kept"] for e in logs if e["event"] == "upload.local_resumed"]
    assert resumed == ([good] if good else [])
    assert stored(store).read_bytes() == body


def test_a_trusted_file_keeps_the_bytes_of_its_partial_equal_to_the_source(tmp_path: Path) -> None:
    """A file whose sha256 the daemon trusted from its state (no mtime, no part CRC32Cs in its entry):
    the kept prefix is compared with the source, kept up to the first difference."""
    body = os.urandom(5 << 20)
    rec = session(tmp_path, body)
    entry = FileEntry(REL, len(body), hashlib.sha256(body).hexdigest())
    store = LocalStore(tmp_path / "raw", bucket_kind="raw")
    stale = bytearray(body[: 3 << 20])
    stale[(2 << 20) + 5] ^= 1
    keep_partial(store, entry, bytes(stale))
    with capture_logs() as logs:
        assert copy(store, rec, entry)
    assert [e["bytes_kept"] for e in logs if e["event"] == "upload.local_resumed"] == [2 << 20]
    assert stored(store).read_bytes() == body


@pytest.mark.parametrize("how", ["same size, other bytes", "appended"])
def test_a_file_changed_after_it_was_hashed_is_never_copied_into_place(tmp_path: Path, how: str) -> None:
    """No second hash: the copy holds the file to the size and mtime hashing saw."""
    body = os.urandom(5 << 20)
    rec = session(tmp_path, body)
    entry = hashed(rec, body)
    with open(rec / REL, "r+b" if how.startswith("same") else "ab") as f:
        f.write(b"\0" * 16)
    store = LocalStore(tmp_path / "raw", bucket_kind="raw")
    with pytest.raises(InputError) as info:
        copy(store, rec, entry)
    msg = str(info.value)
    assert REC in msg and REL in msg and ("changed since it was hashed" in msg or "is now 5242896 bytes" in msg)
    assert not stored(store).exists()
    assert not _partial(store, REC, entry).exists()  # a wrong copy is not kept


@pytest.mark.parametrize("how", ["written to", "renamed over"])
def test_a_file_changed_while_it_is_copied_is_caught_after_the_last_byte(tmp_path: Path, how: str) -> None:
    body = os.urandom(9 << 20)
    rec = session(tmp_path, body)
    entry = hashed(rec, body)
    store = LocalStore(tmp_path / "raw", bucket_kind="raw")
    sent = 0

    def on_bytes(n: int) -> None:  # the file changes once the copy is under way
        nonlocal sent
        first = sent == 0
        sent += n
        if not first:
            return
        if how == "written to":
            with open(rec / REL, "r+b") as f:
                f.write(b"\1")
        else:  # the same bytes, even the same mtime, but another file
            (rec / "eeg" / "new").write_bytes(body)
            os.utime(rec / "eeg" / "new", ns=(entry.mtime_ns or 0, entry.mtime_ns or 0))
            os.replace(rec / "eeg" / "new", rec / REL)

    with pytest.raises(InputError, match="changed"):
        upload_files(store, rec, REC, [entry], should_stop=lambda: False, limits=UploadLimits(),
                     limiter=RateLimiter(None), on_done=lambda _u: None, on_bytes=on_bytes)
    assert sent == len(body)  # caught after the last byte, not before
    assert not stored(store).exists()


@pytest.mark.parametrize("refused", [(), ("copy_file_range",), ("copy_file_range", "sendfile")])
def test_the_copy_falls_back_where_the_file_system_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: tuple[str, ...]
) -> None:
    """Fault injection: copy_file_range (EXDEV) and sendfile (EINVAL) refused; bytes still exact."""
    for name in refused:
        code = errno.EXDEV if name == "copy_file_range" else errno.EINVAL

        def refuse(*_a: object, _code: int = code) -> int:
            raise OSError(_code, os.strerror(_code))

        monkeypatch.setattr(copy_range.os, name, refuse)
    body = os.urandom((3 << 20) + 7)
    (tmp_path / "src").write_bytes(body)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        copier = RangeCopier(src, dst)
        pos = 0
        while pos < len(body):
            pos += copier.copy(pos, min(1 << 20, len(body) - pos))
        assert copier.copy(pos, 1) == 0  # the end of the source
    finally:
        os.close(src)
        os.close(dst)
    assert copier.how == ("copy_file_range", "sendfile", "pread")[len(refused)]
    assert (tmp_path / "dst").read_bytes() == body


def test_sweep_drops_the_partials_no_ingest_will_continue(tmp_path: Path) -> None:
    # The daemon's sweep on the local profile: partial copies of a registered or rejected
    # session, or untouched for the stale age (a session that vanished), go; a paused
    # session's fresh partial stays, and so does one a copy holds locked, however old.
    import fcntl

    from conftest import local_config_dict

    from ursa_daemon.config import config_from_dict
    from ursa_daemon.daemon import Daemon
    from ursa_daemon.daemon.activity import Activity
    from ursa_daemon.daemon.state import SessionState
    from ursa_daemon.daemon.watch import STALE_UPLOAD_S, Runner
    from ursa_daemon.transfer.local_copy import PARTIAL_DIR

    config = config_from_dict(local_config_dict(tmp_path), base_dir=tmp_path)
    old = time.time() - STALE_UPLOAD_S - 60
    cases = {
        "rec_20260101_000000_aaaa": (SessionState.REGISTERED, False, False, True),
        "rec_20260101_000000_bbbb": (SessionState.REJECTED, False, False, True),
        "rec_20260101_000000_cccc": (None, True, False, True),  # vanished, untouched for days
        "rec_20260101_000000_dddd": (None, False, False, False),  # another process's, fresh
        "rec_20260101_000000_eeee": (SessionState.PAUSED, False, False, False),
        "rec_20260101_000000_ffff": (None, True, True, False),  # old, but a copy holds it
    }
    with Daemon(config, activity=Activity(quiet_seconds=0)) as daemon:
        raw = Path(daemon.data.store("raw_rw").directory)
        held = []
        for rec_id, (state, stale, locked, _) in cases.items():
            if state is not None:
                daemon.state.upsert_session(rec_id, str(tmp_path), state)
            part = raw / PARTIAL_DIR / rec_id / f"{'0' * 24}-{'1' * 64}"
            part.parent.mkdir(parents=True)
            part.write_bytes(b"x" * 1000)
            if stale:
                os.utime(part, (old, old))
            if locked:
                fd = os.open(part, os.O_RDWR)
                fcntl.flock(fd, fcntl.LOCK_EX)
                held.append(fd)
        with capture_logs() as logs:
            Runner(daemon).sweep_uploads()
        for fd in held:
            os.close(fd)
        left = {p.name for p in (raw / PARTIAL_DIR).iterdir()}
        assert left == {rec_id for rec_id, case in cases.items() if not case[3]}
        swept = {e["rec_id"] for e in logs if e["event"] == "upload.partials_swept"}
        assert swept == {rec_id for rec_id, case in cases.items() if case[3]}
