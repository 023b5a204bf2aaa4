"""``ursa-daemon``: thin subcommands over the API and the daemon.

Exit codes: 0 done; 1 some sessions failed or were rejected; 2 usage or
config error; 3 another process holds the state lock; 130/143 stopped by
SIGINT/SIGTERM before the work was finished. ``--json`` prints one
JSON document on stdout; human output and progress go to stderr. Heavy
modules are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ursa_daemon.errors import ConfigError, NodesPending, StateLocked, UrsaError

if TYPE_CHECKING:
    from ursa_daemon.api import DataInterface
    from ursa_daemon.config import Config

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """What the group options resolve to, shared by every command."""

    def __init__(self, config_path: str | None, profile: str | None) -> None:
        self.config_path = config_path
        self.profile = profile
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from ursa_daemon.config import load_config

            cfg = load_config(self.config_path)
            self._config = cfg.with_profile(self.profile) if self.profile else cfg
        return self._config

    def data(self) -> DataInterface:
        from ursa_daemon.api import DataInterface

        return DataInterface(config=self.config)


def _errors_to_exit(func: F) -> F:
    """Map ``UrsaError`` to a message and exit code; bugs keep their tracebacks.

    With ``--json`` the failure is also one JSON document on stdout:
    ``{"error", "exit_code"}`` plus ``rec_id``/``file``/``key`` when the error names them.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            _fail(exc, "config error", EXIT_USAGE, as_json)
        except StateLocked as exc:
            _fail(exc, "error", EXIT_LOCKED, as_json)
        except click.UsageError as exc:
            _fail(exc, "error", EXIT_USAGE, as_json)
        except UrsaError as exc:
            _fail(exc, "error", EXIT_FAILED, as_json)
        except Exception as exc:  # a bug: its traceback on stderr, and still the one JSON document
            import traceback

            traceback.print_exc(file=sys.stderr)
            _fail(exc, "internal error", EXIT_FAILED, as_json, typed=True)

    return wrapper  # type: ignore[return-value]


def _fail(exc: Exception, label: str, code: int, as_json: bool, *, typed: bool = False) -> NoReturn:
    from ursa_daemon.log import scrub

    message = scrub(f"{type(exc).__name__}: {exc}" if typed else str(exc))
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # a name that is not UTF-8
    if as_json:
        doc: dict[str, Any] = {"error": message, "exit_code": code}
        for attr in ("rec_id", "file", "key"):
            value = getattr(exc, attr, None)
            if isinstance(value, str):
                doc[attr] = scrub(value)
        _emit_json(doc)
    click.echo(f"{label}: {message}", err=True)
    sys.exit(code)


def _logs_to_stderr(as_json: bool) -> None:
    """With ``--json``, stdout carries the one JSON document: log lines move to stderr."""
    if as_json:
        from ursa_daemon.log import setup_logging

        setup_logging(stream=sys.stderr, json=True)


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: ./config.yaml, else /etc/ursa-daemon/config.yaml).",
)
@click.option("--profile", default=None, help="Use this entry of profiles: instead of the configured one.")
@click.version_option(package_name="ursa-daemon")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, profile: str | None) -> None:
    """Rig-side ingest daemon: hash, upload and catalog recording sessions."""
    from ursa_daemon.log import setup_logging

    setup_logging()
    ctx.obj = Context(config_path, profile)


@cli.command()
@click.option("--recording-hash", default=None, help="Exactly this recording.")
@click.option("--participant", "participants", multiple=True, help="Recordings of this participant (repeatable).")
@click.option("--modality", "modalities", multiple=True, help="Recordings with this modality (repeatable: any of).")
@click.option("--rec-id", default=None, help="Exactly this session id.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def query(
    obj: Context,
    recording_hash: str | None,
    participants: tuple[str, ...],
    modalities: tuple[str, ...],
    rec_id: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Search the catalog."""
    _logs_to_stderr(as_json)
    results = obj.data().query(
        recording_hash=recording_hash,
        participants=list(participants) or None,
        modalities=list(modalities) or None,
        rec_id=rec_id,
        limit=limit,
    )
    if as_json:
        _emit_json([r.to_json() for r in results])
        return
    _print_results(results)


def _print_results(results: list[Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # fits 80 columns by wrapping: a rec_id is never cut (the hash is shortened on purpose;
    # `--json` has it whole)
    table = Table(title=f"{len(results)} recording(s)", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("rec_id", no_wrap=True, min_width=max((len(r.rec_id) for r in results), default=6))
    table.add_column("hash", no_wrap=True)
    for col in ("participants", "duration_s", "modalities"):
        table.add_column(col, overflow="fold", min_width=len(col))
    for r in results:
        table.add_row(
            r.rec_id,
            r.recording_hash[:12] + "…",
            ", ".join(r.participant_ids) or "-",
            f"{r.duration_ns / 1e9:.1f}",
            ", ".join(sorted(r.modalities)),
        )
    Console(stderr=True).print(table)


def _ingest_summary(result: Any, rec_id: str) -> dict[str, Any]:
    rec = result.recording
    return {
        "rec_id": rec_id,
        "recording_hash": None if rec is None else rec.recording_hash,
        "paused": result.paused,
        "files_uploaded": result.files_uploaded,
        "files_skipped": result.files_skipped,
        "bytes_uploaded": result.bytes_uploaded,
    }


@cli.command()
@click.argument("rec_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--participant", default=None, help="Participant name (overrides participant.txt).")
@click.option("--overwrite", is_flag=True, help="Upload every file again and replace differing catalog rows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def ingest(obj: Context, rec_dir: Path, participant: str | None, overwrite: bool, as_json: bool) -> None:
    """Upload one session and register it (Path A)."""
    _logs_to_stderr(as_json)
    if not rec_dir.is_dir():
        what = "does not exist" if not rec_dir.exists() else "is not a directory"
        raise click.BadParameter(f"{rec_dir} {what}; give the rec_* session directory to ingest")
    from rich.console import Console

    from ursa_daemon.ingest import UploadProgress
    from ursa_daemon.ingest import ingest as run_ingest
    from ursa_daemon.log import byte_progress

    data = obj.data()
    data.enable_writes(roles=("assets_rw", "raw_rw"))
    console = Console(stderr=True)
    began = time.monotonic()
    with byte_progress(console) as bar:
        task = bar.add_task(rec_dir.name, total=None)
        decided = [0]
        in_flight: dict[str, int] = {}

        def on_progress(p: UploadProgress) -> None:  # a file is done (uploaded or skipped)
            in_flight.pop(p.current_file, None)
            decided[0] = p.bytes_processed
            bar.update(task, total=p.bytes_total, completed=decided[0] + sum(in_flight.values()))

        def on_file_bytes(rel_path: str, n: int) -> None:  # bytes of a file on their way
            in_flight[rel_path] = in_flight.get(rel_path, 0) + n
            bar.update(task, completed=decided[0] + sum(in_flight.values()))

        pending: NodesPending | None = None
        try:
            result = run_ingest(
                data, rec_dir, participant=participant, overwrite=overwrite, progress=on_progress,
                on_file_bytes=on_file_bytes,
            )
        except NodesPending as exc:  # a dual-node half is in; the peer's is not yet: not a failure
            pending = exc
    if pending is not None:
        _ingest_waiting(pending, rec_dir.name, as_json)
        return
    summary = _ingest_summary(result, rec_dir.name)
    if as_json:
        _emit_json(summary)
    else:
        from ursa_daemon.log import human_bytes

        click.echo(
            f"{rec_dir.name}: registered {summary['recording_hash']} "
            f"({result.files_uploaded} uploaded, {result.files_skipped} skipped, "
            f"{human_bytes(result.bytes_uploaded)} in {_human_duration(time.monotonic() - began)})",
            err=True,
        )


def _ingest_waiting(exc: NodesPending, rec_id: str, as_json: bool) -> None:
    """``ingest`` of a dual-node half whose peer has not uploaded yet: exit 0, say who is missing."""
    result = exc.result
    counts = {
        "files_uploaded": 0 if result is None else result.files_uploaded,
        "files_skipped": 0 if result is None else result.files_skipped,
        "bytes_uploaded": 0 if result is None else result.bytes_uploaded,
    }
    if as_json:
        doc = {"rec_id": rec_id, "recording_hash": None, "paused": False, **counts}
        _emit_json({**doc, "waiting": True, "missing": exc.missing})
        return
    click.echo(
        f"{rec_id}: uploaded ({counts['files_uploaded']} uploaded, {counts['files_skipped']} skipped, "
        f"{_hb(counts['bytes_uploaded'])}); waiting for node(s) {', '.join(exc.missing)}: "
        "it is registered when their half is in (or: register-from-store --allow-partial)",
        err=True,
    )


@cli.command("register-from-store")
@click.argument("rec_id")
@click.option("--participant", default=None, help="Participant name (overrides participant.txt in the store).")
@click.option("--allow-partial", is_flag=True, help="Register a dual-node session before every node's half is in.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def register_from_store_cmd(
    obj: Context, rec_id: str, participant: str | None, allow_partial: bool, as_json: bool
) -> None:
    """Verify bytes already in the store and register them (Path B)."""
    _logs_to_stderr(as_json)
    from ursa_daemon.backfill import register_from_store

    data = obj.data()
    data.enable_writes(roles=("assets_rw",))
    result = register_from_store(data, rec_id, participant=participant, allow_partial=allow_partial)
    summary = _ingest_summary(result, rec_id)
    if as_json:
        _emit_json(summary)
    else:
        verified = f"({result.files_skipped} files verified)"
        click.echo(f"{rec_id}: registered {summary['recording_hash']} {verified}", err=True)


@cli.command("reconstruct-manifest")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def reconstruct_manifest(obj: Context, target: str, as_json: bool) -> None:
    """Rebuild a missing manifest from the files of REC_DIR (disk) or REC_ID (store) (Path C)."""
    _logs_to_stderr(as_json)
    from ursa_daemon.backfill import reconstruct_from_disk, reconstruct_from_store

    path = Path(target)
    if path.is_dir():
        written = reconstruct_from_disk(path)
        doc = json.loads(written.read_text(encoding="utf-8"))
        where = str(written)
    else:
        data = obj.data()
        data.enable_writes(roles=("raw_rw",))
        doc = reconstruct_from_store(data, target)
        where = f"recordings/{target}/manifest.json in the raw bucket"
    if as_json:
        _emit_json({"manifest": where, "recording_hash": doc["recording_hash"], "files": len(doc["files"])})
    else:
        click.echo(f"{where}: {len(doc['files'])} files, recording_hash {doc['recording_hash']}", err=True)


@cli.command()
@click.pass_obj
@_errors_to_exit
def run(obj: Context) -> None:
    """The daemon: watch, pause/resume, upload, register; stops cleanly on SIGTERM/SIGINT."""
    from ursa_daemon.daemon import Daemon

    with Daemon(obj.config, offline_ok=True) as daemon:
        daemon.run(shed=True)
    # Stopped cleanly: the state is closed and the lock released. Leave now rather than wait for the
    # interpreter's teardown, where dropping the catalog's Rust runtime was seen to take ~5 s, past
    # the stop budget systemd and the operator are promised.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_OK)


@cli.command()
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--shard",
    metavar="K/N",
    default=None,
    help="Only the sessions whose rec_id hashes to shard K of N (1 <= K <= N): N machines, one share.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON summary on stdout.")
@click.pass_obj
@_errors_to_exit
def drain(obj: Context, roots: tuple[Path, ...], shard: str | None, as_json: bool) -> None:
    """Process every complete session under ROOT (default: the configured root), then exit.

    A ROOT that is itself a rec_* session directory is that one session. With
    --shard K/N, N machines (each its own state_dir) split the sessions by a stable
    hash of rec_id, with no overlap; overlapping drains are safe too (a session
    already in the store and catalog is skipped), they only cost bandwidth.
    Exit 0: every session done; 1: some failed or were rejected; 130/143:
    stopped by SIGINT/SIGTERM first (a second signal stops at once). Sessions
    without a manifest yet are listed as incomplete, not as errors.
    """
    began = time.monotonic()
    _logs_to_stderr(as_json)
    from ursa_daemon.sessions import parse_shard

    try:
        shard_kn = None if shard is None else parse_shard(shard)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None
    from rich.console import Console

    from ursa_daemon.daemon import Daemon, DrainSummary, install_stop_handlers
    from ursa_daemon.log import drain_progress

    config = obj.config
    targets = [p.resolve() for p in roots] or [config.recordings_root]
    _check_drain_roots(targets, given=bool(roots), config=config)
    console = Console(stderr=True)
    summary = DrainSummary()

    def abort(signame: str) -> None:  # a second signal: say what is known and stop now
        summary.stopped_by = summary.stopped_by or signame
        summary.account_unfinished()
        summary.elapsed_s = time.monotonic() - began
        if console.is_terminal:
            console.show_cursor(True)
        _drain_report(summary, as_json, console, aborted=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(summary.exit_code if summary.exit_code >= 128 else 128 + int(signal.Signals[signame]))

    with Daemon(config) as daemon:
        install_stop_handlers(daemon.stopping, daemon=daemon, on_second=abort)
        with drain_progress(console) as bar:
            sessions = bar.add_task("sessions", total=None, unit="sessions")
            current = bar.add_task("", total=None, unit="bytes", visible=False)

            shown = [""]

            def on_bytes(rec_id: str, phase: str, done: int, total: int) -> None:
                label = rec_id if phase == "uploading" else f"{rec_id} {phase}"
                if label != shown[0]:  # a new session or phase: its own rate and time left
                    shown[0] = label
                    bar.reset(current, description=label, completed=done, total=total, visible=True)
                else:
                    bar.update(current, completed=done, total=total)

            daemon.on_bytes = on_bytes
            daemon.drain(
                targets,
                on_outcome=lambda _o: bar.advance(sessions),
                on_start=lambda n: bar.update(sessions, total=n),
                summary=summary,
                shard=shard_kn,
            )
    summary.elapsed_s = time.monotonic() - began  # wall time, the scan included
    _drain_report(summary, as_json, console)
    if summary.exit_code:
        sys.exit(summary.exit_code)


def _drain_report(summary: Any, as_json: bool, console: Any, *, aborted: bool = False) -> None:
    from ursa_daemon.log import human_bytes

    if as_json:
        _emit_json(summary.as_json())
        return
    parts = [
        f"{len(summary.registered)} registered",
        f"{len(summary.already_registered)} already registered",
        f"{len(summary.failed)} failed",
        f"{len(summary.rejected)} rejected",
    ]
    for name in ("incomplete", "interrupted", "not_started", "paused", "waiting"):
        n = len(getattr(summary, name))
        if n:
            parts.append(f"{n} {name.replace('_', ' ')}")
    stopped = ""
    if summary.stopped_by:
        stopped = f"stopped by {summary.stopped_by}" + (" (at once)" if aborted else "") + "; "
    click.echo(
        f"drain: {stopped}{', '.join(parts)}; {summary.files_uploaded} files, "
        f"{human_bytes(summary.bytes_uploaded)} uploaded in {_human_duration(summary.elapsed_s)}",
        err=True,
    )
    for item in summary.failed + summary.rejected + summary.waiting:
        click.echo(f"  {item['rec_id']}: {item['error']}", err=True)
    for item in summary.incomplete:
        click.echo(f"  {item['rec_id']}: {item['hint']}", err=True)
    if summary.interrupted or summary.not_started:
        left = summary.interrupted + summary.not_started
        click.echo(
            f"  not finished ({len(left)}): {', '.join(left)}; run drain again to finish them "
            "(what was uploaded is kept)",
            err=True,
        )


def _hb(n: float) -> str:
    from ursa_daemon.log import human_bytes

    return str(human_bytes(n))


def _human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, sec = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def _check_drain_roots(targets: list[Path], *, given: bool, config: Config) -> None:
    """Exit 2 naming the path when a root is missing or not a directory (a typo must not drain nothing)."""
    for root in targets:
        if root.is_dir():
            continue
        what = "does not exist" if not root.exists() else "is not a directory"
        if given:
            raise click.BadParameter(f"{root} {what}; give a directory of rec_* sessions or one rec_* directory")
        raise ConfigError(
            f"recordings_root {root} {what} (set in {config.source}); create it or fix the config",
            key="recordings_root",
            path=None if config.source is None else str(config.source),
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def status(obj: Context, as_json: bool) -> None:
    """What the state database holds: counts by state, per-session progress, last error.

    Sessions with multipart uploads in progress (paused, or killed mid-file)
    also show each such file's confirmed parts and bytes.
    """
    _logs_to_stderr(as_json)
    from ursa_daemon.state import StateDB

    state = StateDB(obj.config.state_dir)
    try:
        sessions = state.sessions()
        state_counts = state.counts()
        parts = state.part_progress()
        docs = []
        for s in sessions:
            doc = s.as_json()
            doc["parts"] = [p.as_json() for p in parts.get(s.rec_id, [])]
            docs.append(doc)
        doc = {
            "counts": state_counts,
            "active": state.meta("active") == "1",
            "sessions": docs,
        }
    finally:
        state.close()
    if as_json:
        _emit_json(doc)
        return
    _print_status(sessions, state_counts, parts)


def _print_status(sessions: list[Any], counts: dict[str, int], parts: dict[str, list[Any]]) -> None:
    """The human table: fits 80 columns by wrapping; a rec_id is never cut, an error is printed whole."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ursa_daemon.log import human_bytes

    console = Console(stderr=True)
    width = max((len(s.rec_id) for s in sessions), default=6)
    title = "ursa-daemon: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no sessions")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("rec_id", no_wrap=True, min_width=width)
    table.add_column("state", no_wrap=True)
    table.add_column("files", justify="right", overflow="fold")
    table.add_column("bytes (rate, left)", justify="right", overflow="fold")
    table.add_column("tries", overflow="fold")
    for s in sessions:
        moved = f"{human_bytes(s.bytes_done)} / {human_bytes(s.bytes_total)}"
        if s.rate is not None:
            moved += f"\n{human_bytes(s.rate)}/s, {_human_duration(s.eta_s or 0)} left"
        tries = str(s.attempts)
        if s.next_attempt_at is not None:
            tries += time.strftime(", next %H:%M:%S", time.localtime(s.next_attempt_at))
        table.add_row(s.rec_id, str(s.state), f"{s.files_done}/{s.files_total}", moved, tries)
    console.print(table)
    for s in sessions:
        if s.last_error:  # whole, wrapped to the terminal: the advice at its end is never cut
            console.print(Text(f"{s.rec_id} ({s.state}): ", style="bold") + Text(s.last_error), overflow="fold")
    if parts:
        ptable = Table(title="multipart uploads in progress (resume from the first missing part)",
                       box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        ptable.add_column("rec_id", no_wrap=True, min_width=width)
        ptable.add_column("file", overflow="fold")
        ptable.add_column("parts", justify="right")
        ptable.add_column("bytes", justify="right", overflow="fold")
        for rec_id, files in sorted(parts.items()):
            for p in files:
                ptable.add_row(
                    rec_id, p.rel_path, f"{p.parts_done}/{p.parts_total}",
                    f"{human_bytes(p.bytes_done)} / {human_bytes(p.bytes_total)}",
                )
        console.print(ptable)


@cli.command()
@click.argument("target")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--layout",
    type=click.Choice(["by_recording", "by_modality", "flat"]),
    default="by_recording",
    show_default=True,
    help="DEST/<hash>/<modality>/..., DEST/<modality>/<hash>/... or DEST/<hash>__<modality>/...",
)
@click.option(
    "--source",
    type=click.Choice(["auto", "raw", "processed"]),
    default="auto",
    show_default=True,
    help="Raw segments, processed assets, or each row's own (auto).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing files (atomically: a failure keeps the old file).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def download(
    obj: Context, target: str, dest: Path, layout: str, source: str, overwrite: bool, as_json: bool
) -> None:
    """Download a recording's bytes to DEST. TARGET is a recording_hash or a rec_id."""
    _logs_to_stderr(as_json)
    import logging

    from rich.console import Console

    from ursa_daemon.download import LOGGER_NAME, DownloadProgress
    from ursa_daemon.log import byte_progress

    console = Console(stderr=True)
    if console.is_terminal and sys.stdout.isatty():  # the bar tells it all; phase lines would tear it
        logging.getLogger(LOGGER_NAME).setLevel(logging.WARNING)
    done = 0
    with byte_progress(console) as bar:
        task = bar.add_task(target, total=None)

        def on_progress(ev: DownloadProgress) -> None:
            nonlocal done
            done = ev.bytes_done
            if ev.phase == "modality_start":
                worker = f"_{ev.worker_id}" if ev.worker_id else ""
                bar.update(task, description=f"{target} {ev.modality}{worker}")
            bar.update(task, completed=ev.bytes_done, total=ev.bytes_total)

        paths = obj.data().download(
            target, dest, layout=layout, source=source, overwrite=overwrite, progress=on_progress  # type: ignore[arg-type]
        )
    if as_json:
        _emit_json({"files": [str(p) for p in paths], "bytes": done})
    else:
        click.echo(f"{target}: {len(paths)} file(s), {_hb(done)} in {dest}", err=True)


@cli.command()
@click.argument("target", metavar="REC_ID|HASH")
@click.option("--deep", is_flag=True, help="Hash every object, even where the store keeps its sha256.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def verify(obj: Context, target: str, deep: bool, as_json: bool) -> None:
    """Re-check that every cataloged object exists with its manifest size and sha256.

    Exit 0: all match; 1: some object is missing or differs (each is named).
    """
    _logs_to_stderr(as_json)
    from ursa_daemon.verify import verify as run_verify

    reports = run_verify(obj.data(), target, deep=deep)
    ok = all(r.ok for r in reports)
    if as_json:
        _emit_json({"ok": ok, "recordings": [r.as_json() for r in reports]})
    for r in reports:
        status = "ok" if r.ok else f"{len(r.problems)} problem(s)"
        summary = f"{r.files_checked} objects, {_hb(r.bytes_checked)}"
        click.echo(f"{r.rec_id} ({r.recording_hash[:12]}…): {summary}: {status}", err=True)
        for p in r.problems:
            click.echo(f"  {p}", err=True)
    if not ok:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.option(
    "--keep-versions-hours",
    type=click.FloatRange(min=1.0),
    default=24.0,
    show_default=True,
    help="Remove table versions superseded longer ago than this (at least 1).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def maintain(obj: Context, keep_versions_hours: float, as_json: bool) -> None:
    """Compact the catalog, refresh its indexes, remove old versions: one run at a time.

    Holds the lease ursa/maintenance.lease in the assets bucket meanwhile; exits 3
    when another run holds it. Daemons never do this themselves: run it from one
    machine's timer (systemd/ursa-daemon-maintain.timer).
    """
    _logs_to_stderr(as_json)
    from datetime import timedelta

    from ursa_daemon.maintain import LeaseHeld
    from ursa_daemon.maintain import maintain as run_maintain

    try:
        report = run_maintain(obj.data(), keep_versions=timedelta(hours=keep_versions_hours))
    except LeaseHeld as exc:
        _fail(exc, "skipped", EXIT_LOCKED, as_json)
    if as_json:
        _emit_json(report.as_json())
    else:
        changed = {t: f"{report.versions_before.get(t, 0)} -> {v}" for t, v in report.versions_after.items()}
        click.echo(f"maintain: done in {report.elapsed_s:.1f}s; table versions {changed}", err=True)


@cli.command()
@click.pass_obj
@_errors_to_exit
def demo(obj: Context) -> None:
    """Make a sample rig session and run the whole path on the local profile."""
    from ursa_daemon.demo import run_demo
    from ursa_daemon.log import setup_logging

    setup_logging(stream=sys.stderr, level="WARNING")  # the demo narrates on its own

    run_demo(obj.config)


@cli.command("check-config")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def check_config_cmd(obj: Context, as_json: bool) -> None:
    """Validate the config, resolve each role's credentials and probe its bucket.

    Read roles are listed, write roles put, head and delete a tiny object under
    ursa/probe/ (local profile: the directories must be writable). Secrets are
    never shown. Exit 0: all good; 1: some check failed; 2: the config is invalid.
    """
    _logs_to_stderr(as_json)
    from ursa_daemon.checkconfig import check_config

    try:
        config = obj.config
    except ConfigError as exc:
        if as_json:
            _emit_json(
                {
                    "config": exc.path or obj.config_path,
                    "ok": False,
                    "config_error": str(exc),
                    "key": exc.key,
                    "error": str(exc),
                    "exit_code": EXIT_USAGE,
                }
            )
        click.echo(f"config error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    report = check_config(config)
    if as_json:
        _emit_json(report.as_json())
    else:
        for line in report.lines():
            click.echo(line, err=True)
    if not report.ok:
        sys.exit(EXIT_FAILED)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="ursa-daemon", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.Abort as exc:  # Ctrl-C before a command installed its own handler
        click.echo("aborted", err=True)
        sys.exit(130 if isinstance(exc.__context__, KeyboardInterrupt) else EXIT_FAILED)
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
