"""``ursa.temporal``: ``Data``, what :meth:`ursa.DataInterface.get` returns for one recording
(``metadata``: the recording; ``modalities``: read-only, keyed like ``QueryResult.modalities``).
It is :class:`ursa_daemon.transfer.reader.RecordingData`."""

from __future__ import annotations

from ursa_daemon.transfer.reader import RecordingData

Data = RecordingData

__all__ = ["Data"]
