"""``ursa.raw``: ``RawBytes``, one raw modality in memory (``segments``: ``(key, bytes)`` sorted
by key; ``metadata``: its modality row). It is :class:`ursa_daemon.transfer.reader.RawModality`."""

from __future__ import annotations

from ursa_daemon.transfer.reader import RawModality

RawBytes = RawModality

__all__ = ["RawBytes"]
