"""``ursa-daemon fleet``: every rig's status document, from any machine with ``assets_ro`` keys."""

from __future__ import annotations

import re
import time
from typing import Any

import click

from ursa_daemon.cli.common import EXIT_FAILED, Context, emit_json, errors_to_exit, logs_to_stderr

__all__ = ["fleet", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``15min``, ``24h``, ``2d``, ``1h30m`` → seconds (ValueError otherwise)."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(min|s|m|h|d)", s)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(min|s|m|h|d)", "", s).strip():
        raise ValueError(f"{text!r} is not a duration: use e.g. 90s, 15m, 24h, 2d")
    return sum(float(n) * _UNITS[u] for n, u in parts)


class _Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in click's stubs
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--check", is_flag=True, help="Exit 1 when a rig needs attention, printing why.")
@click.option("--stale-after", type=_Duration(), default="15m", show_default=True,
              help="A rig whose status is older than this is stale.")
@click.option("--max-age", type=_Duration(), default="24h", show_default=True,
              help="A session pending longer than this needs attention.")
@click.pass_obj
@errors_to_exit
def fleet(obj: Context, as_json: bool, check: bool, stale_after: float, max_age: float) -> None:
    """Every rig's status (ursa/rigs/<rig_id>.json in the assets bucket), read with assets_ro.

    One line per rig: sessions by state, the oldest pending session's age, the last
    registration, when the rig last wrote its status, and whether it records or is paused.
    """
    logs_to_stderr(as_json)
    from ursa_daemon.config import Role
    from ursa_daemon.daemon.fleet import assess, read_fleet
    from ursa_daemon.store import get_store

    store = get_store(obj.config.active_profile, Role.ASSETS_RO)
    now = time.time()
    entries = [assess(e, now=now, stale_after_s=stale_after, max_age_s=max_age) for e in read_fleet(store)]
    attention = [e for e in entries if e.needs_attention]
    if as_json:
        emit_json({"rigs": [e.to_json() for e in entries]})
    else:
        from ursa_daemon.cli.render import print_fleet

        print_fleet(entries, now)
    if check:
        for e in attention:
            for reason in e.needs_attention:
                click.echo(f"{e.rig_id}: {reason}", err=True)
        if not entries:
            click.echo("fleet: no rig has written a status document (ursa/rigs/ is empty)", err=True)
        if attention or not entries:
            raise SystemExit(EXIT_FAILED)
        click.echo(f"fleet: {len(entries)} rig(s), none needs attention", err=True)
