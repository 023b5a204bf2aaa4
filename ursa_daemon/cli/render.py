"""What the commands print for a person: tables, the drain report, byte and time figures.

rich is imported inside each function: ``--help`` and ``--json`` runs do not pay for it.
"""

from __future__ import annotations

import time
from typing import Any

import click

from ursa_daemon.cli.common import emit_json

__all__ = ["drain_report", "hb", "human_duration", "print_fleet", "print_results", "print_status"]


def print_results(results: list[Any]) -> None:
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


def print_status(sessions: list[Any], counts: dict[str, int], parts: dict[str, list[Any]], *,
                 pause_reason: str | None = None, cap: int | None = None) -> None:
    """The human table: fits 80 columns by wrapping; a rec_id is never cut, an error is printed whole.
    ``pause_reason``: why the daemon pauses uploads now; ``cap``: the bandwidth cap (it throttles)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ursa_daemon.log import human_bytes

    console = Console(stderr=True)
    width = max((len(s.rec_id) for s in sessions), default=6)
    title = "ursa-daemon: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no sessions")
    if pause_reason:
        title += f"; uploads paused ({pause_reason})"
    if cap:
        title += f"; throttled to {human_bytes(cap)}/s (upload.bandwidth_bytes_per_s)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("rec_id", no_wrap=True, min_width=width)
    table.add_column("state", no_wrap=True)
    table.add_column("files", justify="right", overflow="fold")
    table.add_column("bytes (rate, left)", justify="right", overflow="fold")
    table.add_column("tries", overflow="fold")
    for s in sessions:
        moved = f"{human_bytes(s.bytes_done)} / {human_bytes(s.bytes_total)}"
        if s.bytes_hashed is not None:
            moved += f"\nhashed {human_bytes(s.bytes_hashed)}"
        elif s.bytes_sending and str(s.state) == "uploading":
            moved += f"\n+{human_bytes(s.bytes_sending)} sending"
        if s.rate is not None:
            moved += f"\n{human_bytes(s.rate)}/s, {human_duration(s.eta_s or 0)} left"
        tries = str(s.attempts)
        if s.next_attempt_at is not None:
            tries += time.strftime(", next %H:%M:%S", time.localtime(s.next_attempt_at))
        state = f"{s.state} ({s.pause_reason})" if str(s.state) == "paused" and s.pause_reason else str(s.state)
        table.add_row(s.rec_id, state, f"{s.files_done}/{s.files_total}", moved, tries)
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


def print_fleet(entries: list[Any], now: float) -> None:
    """One line per rig (wrapping, never cut), then every reason a rig needs attention."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ursa_daemon.daemon.fleet import finite
    from ursa_daemon.daemon.rigs import parse_iso

    def ago(v: object) -> str:
        t = parse_iso(v)
        return "-" if t is None else human_duration(max(0.0, now - t)) + " ago"

    console = Console(stderr=True)
    n_attention = sum(1 for e in entries if e.needs_attention)
    title = f"{len(entries)} rig(s), {n_attention} need(s) attention" if entries else "no rig status documents"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("rig", no_wrap=True, min_width=max((len(e.rig_id) for e in entries), default=3))
    for col in ("", "sessions", "pending", "oldest", "last reg.", "seen", "rig"):
        table.add_column(col, overflow="fold")
    for e in entries:
        d = e.doc
        counts = d.get("counts") if isinstance(d.get("counts"), dict) else {}
        oldest = d.get("oldest_pending") if isinstance(d.get("oldest_pending"), dict) else {}
        age = finite(oldest.get("age_s"))
        mode = "recording" if d.get("recording") else ""
        if d.get("paused"):
            mode = (mode + " " if mode else "") + f"paused ({d.get('pause_reason') or '?'})"
        if d.get("running") is False:
            mode = "drain done" if d.get("command") == "drain" else "stopped"
        pending = d.get("pending_sessions")
        cells = (  # a document's strings are plain text, never rich markup
            " ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=str)) or "-",
            f"{pending} ({hb(finite(d.get('pending_bytes')) or 0)})" if isinstance(pending, int) else "-",
            human_duration(age) if age is not None else "-",
            ago(d.get("last_registration_at")),
            ago(d.get("written_at")),
            mode or "idle",
        )
        table.add_row(
            Text(e.rig_id),
            Text("STALE" if e.stale else ("CHECK" if e.needs_attention else "ok"),
                 style="bold red" if e.needs_attention else "green"),
            *(Text(c) for c in cells),
        )
    console.print(table)
    for e in entries:
        for reason in e.needs_attention:
            console.print(Text(f"{e.rig_id}: ", style="bold") + Text(reason), overflow="fold")


def drain_report(summary: Any, as_json: bool, console: Any, *, aborted: bool = False) -> None:
    from ursa_daemon.log import human_bytes

    if as_json:
        emit_json(summary.as_json())
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
        f"{human_bytes(summary.bytes_uploaded)} uploaded in {human_duration(summary.elapsed_s)}",
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


def hb(n: float) -> str:
    from ursa_daemon.log import human_bytes

    return str(human_bytes(n))


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, sec = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
