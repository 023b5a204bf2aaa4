"""Logging: structlog JSON lines on stdout, configured once by the CLI.

Stable keys (SPEC section 6, append-only): ``timestamp`` (ISO-8601 UTC),
``level``, ``logger``, ``event`` and the context keys components bind
(``rec_id``, ``recording_hash``, ``key``, ...). Stdlib loggers (such as
``ursa.download``) go through the same renderer, their ``extra`` keys kept.
Every registered secret is replaced by ``***`` in every value before
rendering: defence in depth behind never logging credentials at all.

structlog (which pulls in rich's traceback machinery) is imported on the first
log line, not at import: ``get_logger`` hands out a proxy and ``setup_logging``
installs the stdlib handler at once but builds the structlog side when it is
first needed, so a command that logs nothing (``status``, ``--help``) never
pays for it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, MutableMapping
from types import ModuleType
from typing import Any, TextIO

__all__ = [
    "byte_progress",
    "drain_progress",
    "get_logger",
    "human_bytes",
    "library_logging",
    "register_secret",
    "scrub",
    "setup_logging",
]

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()

#: LogRecord attributes that are not ``extra`` keys.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def register_secret(value: str) -> None:
    """Remember a secret so that no log line can carry it."""
    if len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _SECRETS:
            if secret in value:
                value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def scrub(value: Any) -> Any:
    """``value`` with every registered secret replaced by ``***`` (strings, dicts, lists)."""
    return _scrub(value) if _SECRETS else value


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _SECRETS:
        return event_dict
    return {k: _scrub(v) for k, v in event_dict.items()}


def _stdlib_extra(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Carry a stdlib record's ``extra`` keys into the event."""
    record = event_dict.get("_record")
    if record is not None:
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in event_dict:
                event_dict[key] = value
    return event_dict


_SETUP_LOCK = threading.RLock()
#: The last ``setup_logging`` arguments not yet applied to structlog: (json, stream).
_pending: tuple[bool, TextIO] | None = None


def setup_logging(*, json: bool | None = None, level: str | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger once.

    ``json=None`` picks JSON unless ``stream`` is a terminal. ``level`` defaults
    to ``$URSA_LOG_LEVEL`` or INFO. The stdlib handler is installed now; structlog
    is configured now if it is already imported, else on the first log line.
    """
    global _pending
    stream = stream or sys.stdout
    if json is None:
        json = not stream.isatty()
    out: TextIO | _LateStream = stream
    if (stream is sys.stdout or stream is sys.stderr) and stream.isatty():
        # on a terminal, lines go above the progress bars shown meanwhile instead of tearing them
        out = _LateStream("stdout" if stream is sys.stdout else "stderr")
    level_name = (level or os.environ.get("URSA_LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(out)
    handler.setFormatter(_LazyFormatter(json, stream))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name)
    for noisy in ("botocore", "urllib3", "werkzeug", "apscheduler", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    with _SETUP_LOCK:
        _pending = (json, stream)
    if "structlog" in sys.modules:
        _structlog()


def _shared_processors(structlog: ModuleType) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def _structlog() -> ModuleType:
    """Import structlog; apply a pending ``setup_logging`` to it."""
    global _pending
    import structlog

    if _pending is not None:
        with _SETUP_LOCK:
            if _pending is not None:
                structlog.configure(
                    processors=[
                        *_shared_processors(structlog),
                        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
                    ],
                    logger_factory=structlog.stdlib.LoggerFactory(),
                    wrapper_class=structlog.stdlib.BoundLogger,
                    cache_logger_on_first_use=True,
                )
                _pending = None
    return structlog


class _LazyFormatter(logging.Formatter):
    """structlog's ``ProcessorFormatter`` for the root handler, built on the first record."""

    def __init__(self, json: bool, stream: TextIO) -> None:
        super().__init__()
        self._json = json
        self._stream = stream
        self._real: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self._real is None:
            with _SETUP_LOCK:
                if self._real is None:
                    structlog = _structlog()
                    renderer: Any = (
                        structlog.processors.JSONRenderer(sort_keys=False)
                        if self._json
                        else structlog.dev.ConsoleRenderer(colors=self._stream.isatty())
                    )
                    self._real = structlog.stdlib.ProcessorFormatter(
                        foreign_pre_chain=[*_shared_processors(structlog), _stdlib_extra],
                        processors=[
                            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                            structlog.processors.format_exc_info,
                            _redact,
                            renderer,
                        ],
                    )
        return self._real.format(record)


class _LazyLogger:
    """Stands for ``structlog.stdlib.get_logger(name)``; imports structlog on first use."""

    __slots__ = ("_name", "_real")

    def __init__(self, name: str) -> None:
        self._name = name
        self._real: Any = None

    def __getattr__(self, attr: str) -> Any:
        real = self._real
        if real is None:
            real = self._real = _structlog().stdlib.get_logger(self._name)
        return getattr(real, attr)

    def __repr__(self) -> str:
        return f"<lazy logger {self._name!r}>"


def library_logging(aliases: Mapping[str, str] | None = None) -> None:
    """For library use (``import ursa``): unless structlog is configured already, send its
    events to the stdlib logger of the same name (``ursa.ingest``, ...) with their keys as
    ``extra``, so they show only where the application configured logging. ``aliases`` maps
    a logger name to a second stdlib logger that gets the same events too (the seeds'
    names for ours). A later :func:`setup_logging` (the CLI) takes over."""
    structlog = _structlog()
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _redact,
            _AlsoTo(dict(aliases or {})),
            structlog.stdlib.filter_by_level,
            structlog.stdlib.render_to_log_kwargs,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


class _AlsoTo:
    """A processor: the event also goes to the stdlib logger its logger's name is aliased to."""

    _LEVELS = {"exception": logging.ERROR, "warn": logging.WARNING}

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        alias = self.aliases.get(getattr(logger, "name", ""))
        if alias is None:
            return event_dict
        level = self._LEVELS.get(method) or logging.getLevelName(method.upper())
        target = logging.getLogger(alias)
        if isinstance(level, int) and target.isEnabledFor(level):
            extra = {k: v for k, v in event_dict.items() if k != "event" and k not in _RECORD_ATTRS}
            target.log(level, event_dict.get("event"), extra=extra)
        return event_dict


#: the consoles of the progress displays on screen: log lines for a terminal go above their bars
_LIVE: list[Any] = []
_LIVE_LOCK = threading.Lock()


class _LateStream:
    """``sys.stdout`` or ``sys.stderr`` as it is at each write.

    While progress bars are on a terminal, a line for a terminal is printed by
    their console instead: above the bars, whole, never interleaved with them.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def _stream(self) -> TextIO:
        stream: TextIO = getattr(sys, self.name)
        return stream

    def write(self, text: str) -> int:
        with _LIVE_LOCK:
            console = _LIVE[-1] if _LIVE else None
        if console is not None and self._stream().isatty():
            from rich.text import Text

            console.print(Text(text.rstrip("\n")), soft_wrap=True, highlight=False)
            return len(text)
        return self._stream().write(text)

    def flush(self) -> None:
        self._stream().flush()

    def isatty(self) -> bool:
        return self._stream().isatty()


def human_bytes(n: float) -> str:
    """``1.5 MiB``: binary units, three significant digits."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _progress(console: Any, columns: list[Any], transient: bool, *, expand: bool = False) -> Any:
    from rich.progress import Progress

    class Bars(Progress):
        """Bars in one region at the bottom of the terminal; log lines scroll above them."""

        def __enter__(self) -> Bars:
            super().__enter__()
            if not self.disable:
                with _LIVE_LOCK:
                    _LIVE.append(self.console)
            return self

        def __exit__(self, *exc: Any) -> None:
            with _LIVE_LOCK:
                if self.console in _LIVE:
                    _LIVE.remove(self.console)
            super().__exit__(*exc)

    return Bars(
        *columns,
        console=console,
        disable=not console.is_terminal,  # no bars without a terminal
        transient=transient,
        expand=expand,
        redirect_stdout=False,  # log lines go through _LateStream; nothing else is printed meanwhile
        redirect_stderr=False,
    )


def byte_progress(console: Any, *, transient: bool = False) -> Any:
    """A rich bar for a byte count on ``console``; disabled when it is not a terminal."""
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ]
    return _progress(console, columns, transient)


def drain_progress(console: Any) -> Any:
    """``drain``'s bars: sessions done of found, and the current session's bytes."""
    from rich.progress import BarColumn, ProgressColumn, Task, TextColumn
    from rich.table import Column
    from rich.text import Text

    class Amount(ProgressColumn):
        def render(self, task: Task) -> Text:
            if task.fields.get("unit") == "sessions":
                total = "?" if task.total is None else str(int(task.total))
                return Text(f"{int(task.completed)}/{total} sessions")
            done = human_bytes(task.completed)
            total = "?" if task.total is None else human_bytes(task.total)
            speed = task.finished_speed or task.speed
            rate = f"  {human_bytes(speed)}/s" if speed else ""
            left = task.time_remaining
            eta = f" {int(left) // 60}:{int(left) % 60:02d} left" if left is not None and speed else ""
            return Text(f"{done}/{total}{rate}{eta}")

    columns = [
        TextColumn("{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=None),
        Amount(table_column=Column(no_wrap=True)),
    ]
    return _progress(console, columns, False, expand=True)


def get_logger(name: str) -> Any:
    """A structlog logger named ``name`` (``ursa.daemon``, ``ursa.upload``, ...), imported on first use."""
    return _LazyLogger(name)
