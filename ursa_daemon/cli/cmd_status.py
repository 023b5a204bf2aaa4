"""``ursa-daemon status``: what the state database holds."""

from __future__ import annotations

import click

from ursa_daemon.cli.common import Context, emit_json, errors_to_exit, logs_to_stderr
from ursa_daemon.cli.render import print_status

__all__ = ["status"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@errors_to_exit
def status(obj: Context, as_json: bool) -> None:
    """What the state database holds: counts by state, per-session progress, last error.

    ``bytes_done`` is what the store holds of a session (confirmed), never bytes in flight
    (``bytes_sending``). Why uploads are paused (``pause_reason``: ``flag_file``,
    ``recorder_process``, ``session_writes``, ``upload_window``, ``stopping``), for the daemon
    and for each paused session, and the bandwidth cap that throttles them.
    Sessions with multipart uploads in progress (paused, or killed mid-file)
    also show each such file's confirmed parts and bytes.
    """
    logs_to_stderr(as_json)
    from ursa_daemon.daemon.state import StateDB

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
        cap = obj.config.upload.bandwidth_bytes_per_s
        doc = {
            "counts": state_counts,
            "active": state.meta("active") == "1",
            "pause_reason": state.meta("pause_reason") or None,
            "bandwidth_cap_bytes_per_s": cap,
            "sessions": docs,
        }
    finally:
        state.close()
    if as_json:
        emit_json(doc)
        return
    print_status(sessions, state_counts, parts, pause_reason=doc["pause_reason"], cap=cap)
