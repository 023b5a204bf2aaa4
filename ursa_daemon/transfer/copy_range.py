"""Copy a byte range between two open files in the kernel, with fallbacks where a file system refuses."""

from __future__ import annotations

import errno
import os

__all__ = ["RangeCopier"]

#: errors that mean "not this way here" (another file system, an old kernel, a special file)
_UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF})


class RangeCopier:
    """Copies ``n`` bytes at offset ``pos`` of ``src`` to the same offset of ``dst``.

    ``copy_file_range`` first: the bytes move page cache to page cache inside
    the kernel (or the blocks are shared, on a file system that can), never
    through this process. Where it is refused (``EXDEV`` across some file
    systems, ``ENOSYS``/``EOPNOTSUPP``/``EINVAL`` on old kernels and special
    files) ``sendfile``, still in the kernel; then ``pread``/``pwrite`` of one
    buffer. The way that worked is kept for the rest of the file.
    """

    def __init__(self, src: int, dst: int) -> None:
        self.src = src
        self.dst = dst
        self.how = "copy_file_range"

    def copy(self, pos: int, n: int) -> int:
        """Bytes copied (fewer than ``n`` only at the end of ``src``; 0 there)."""
        if self.how == "copy_file_range":
            try:
                return os.copy_file_range(self.src, self.dst, n, pos, pos)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self.how = "sendfile"
        if self.how == "sendfile":
            try:
                os.lseek(self.dst, pos, os.SEEK_SET)  # sendfile writes at the file position of dst
                return os.sendfile(self.dst, self.src, pos, n)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self.how = "pread"
        return self._pread_pwrite(pos, n)

    def _pread_pwrite(self, pos: int, n: int) -> int:
        data = os.pread(self.src, n, pos)
        view = memoryview(data)
        written = 0
        while written < len(data):
            written += os.pwrite(self.dst, view[written:], pos + written)
        return len(data)
