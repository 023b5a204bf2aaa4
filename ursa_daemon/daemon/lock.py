"""``StateLock``: an exclusive ``flock`` on ``state_dir/lock``, so one process works on a
state directory; a second fails at once with :class:`~ursa_daemon.errors.StateLocked`."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ursa_daemon.errors import StateLocked

__all__ = ["LOCK_FD_ENV", "LOCK_NAME", "StateLock"]

LOCK_NAME = "lock"
#: names the lock's descriptor kept across ``run``'s re-exec (see :meth:`StateLock.hand_over`)
LOCK_FD_ENV = "URSA_STATE_LOCK_FD"


def _inherited_lock(path: Path) -> int | None:
    """The lock descriptor this process image was handed, if it is ``path``'s (else None)."""
    raw = os.environ.pop(LOCK_FD_ENV, None)
    if raw is None or not raw.isdigit():
        return None
    fd = int(raw)
    try:
        held, there = os.fstat(fd), os.stat(path)
    except OSError:
        return None
    if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
        return None
    os.set_inheritable(fd, False)
    return fd  # flock belongs to the open file description: taking it again succeeds at once


class StateLock:
    """An exclusive, non-blocking ``flock`` on ``state_dir/lock``, released on close or death."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = _inherited_lock(self.path) or os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise StateLocked(
                f"another ursa-daemon process (pid {holder}) holds the state lock {self.path}; "
                "stop it first (systemctl stop ursa-daemon) or use another state_dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def hand_over(self) -> dict[str, str]:
        """Keep the lock across an ``exec`` of this process: the environment for the new image."""
        assert self._fd is not None
        os.set_inheritable(self._fd, True)
        return {LOCK_FD_ENV: str(self._fd)}

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
