"""How hard uploads may push: one session's :class:`UploadLimits` and the shared :class:`RateLimiter`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ursa_daemon.store.base import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY, DEFAULT_PART_SIZE

__all__ = ["DEFAULT_SLICE_SIZE", "DEFAULT_SMALL_PUT_MAX", "RateLimiter", "UploadLimits"]

#: on a MultipartStore, files larger than this go through the cuttable part-level calls
DEFAULT_SMALL_PUT_MAX = 512 << 10
#: bytes per read of a streamed body: a pause and the rate limiter act between two slices
DEFAULT_SLICE_SIZE = 64 << 10


@dataclass(frozen=True)
class UploadLimits:
    """How hard one session's upload may push."""

    max_concurrent_files: int = 4
    max_concurrency_per_file: int = DEFAULT_MAX_CONCURRENCY
    part_size: int = DEFAULT_PART_SIZE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    bandwidth_bytes_per_s: int | None = None
    small_put_max: int = DEFAULT_SMALL_PUT_MAX
    slice_size: int = DEFAULT_SLICE_SIZE


class RateLimiter:
    """A token bucket shared by every stream; ``None`` rate means unlimited."""

    def __init__(self, rate: int | None, *, burst_s: float = 0.25) -> None:
        self.rate = rate
        self._capacity = (rate or 0) * burst_s
        self._tokens = self._capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, n: int, cancel: threading.Event) -> bool:
        """Take ``n`` bytes, waiting off any debt; False (at once) when ``cancel`` is or gets set."""
        if cancel.is_set():
            return False
        if not self.rate:
            return True
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            debt_s = -self._tokens / self.rate
        if debt_s > 0:
            return not cancel.wait(debt_s)
        return True
