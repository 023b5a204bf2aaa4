"""What every subcommand shares: the resolved group options, exit codes, the error mapper, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ursa_daemon.errors import ConfigError, StateLocked, UrsaError

if TYPE_CHECKING:
    from ursa_daemon.api import DataInterface
    from ursa_daemon.config import Config

__all__ = [
    "EXIT_FAILED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Context",
    "emit_json",
    "errors_to_exit",
    "fail",
    "logs_to_stderr",
]

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


def errors_to_exit(func: F) -> F:
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
            fail(exc, "config error", EXIT_USAGE, as_json)
        except StateLocked as exc:
            fail(exc, "error", EXIT_LOCKED, as_json)
        except click.UsageError as exc:
            fail(exc, "error", EXIT_USAGE, as_json)
        except UrsaError as exc:
            fail(exc, "error", EXIT_FAILED, as_json)
        except Exception as exc:  # a bug: its traceback on stderr, and still the one JSON document
            import traceback

            traceback.print_exc(file=sys.stderr)
            fail(exc, "internal error", EXIT_FAILED, as_json, typed=True)

    return wrapper  # type: ignore[return-value]


def fail(exc: Exception, label: str, code: int, as_json: bool, *, typed: bool = False) -> NoReturn:
    from ursa_daemon.log import scrub

    message = scrub(f"{type(exc).__name__}: {exc}" if typed else str(exc))
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # a name that is not UTF-8
    if as_json:
        doc: dict[str, Any] = {"error": message, "exit_code": code}
        for attr in ("rec_id", "file", "key"):
            value = getattr(exc, attr, None)
            if isinstance(value, str):
                doc[attr] = scrub(value)
        emit_json(doc)
    click.echo(f"{label}: {message}", err=True)
    sys.exit(code)


def logs_to_stderr(as_json: bool) -> None:
    """With ``--json``, stdout carries the one JSON document: log lines move to stderr."""
    if as_json:
        from ursa_daemon.log import setup_logging

        setup_logging(stream=sys.stderr, json=True)


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))
