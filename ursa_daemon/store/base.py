"""The one storage interface both backends implement.

A ``Store`` is one bucket seen through one credential role. Keys are
``/``-separated, relative, never starting with ``/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Literal, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "Body",
    "BucketKind",
    "CompletedPart",
    "MultipartRecord",
    "MultipartStore",
    "MultipartUpload",
    "ObjectMeta",
    "ObjectReader",
    "PartInfo",
    "PartRecord",
    "Role",
    "Store",
    "StreamBody",
]

#: Bytes read from disk / the network per chunk of a stream.
DEFAULT_CHUNK_SIZE = 1 << 20
#: Part size of a multipart upload (bodies smaller than this go in one PUT).
DEFAULT_PART_SIZE = 16 << 20
#: Parts in flight per multipart upload. R2 has answered 500s at 5; 2-3 is safe.
DEFAULT_MAX_CONCURRENCY = 2

Role = Literal["assets_ro", "assets_rw", "raw_ro", "raw_rw"]
BucketKind = Literal["raw", "assets"]

#: What ``put`` accepts: the whole body, a binary file object, or an iterable of chunks.
Body = bytes | bytearray | memoryview | IO[bytes] | Iterable[bytes]


@dataclass(frozen=True)
class ObjectMeta:
    """What ``head`` and ``list`` return for one object."""

    key: str
    size: int
    etag: str | None = None
    last_modified: datetime | None = None
    #: the ``sha256`` user metadata, where the store can return it (``head`` on S3 only)
    sha256: str | None = None


@runtime_checkable
class ObjectReader(Protocol):
    """A forward-only stream over one object; never holds the whole object."""

    def read(self, size: int = -1) -> bytes: ...

    def close(self) -> None: ...

    def __enter__(self) -> ObjectReader: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Store(Protocol):
    """One bucket behind one credential role."""

    #: which bucket this store is: ``raw`` or ``assets``
    bucket_kind: BucketKind
    #: the bucket name (S3) or directory (local) — for messages and URIs
    bucket: str

    def uri(self, key: str) -> str:
        """The storage URI of ``key`` (``s3://bucket/key`` or ``file:///dir/key``)."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectMeta]:
        """Every object whose key starts with ``prefix``, in no promised order."""
        ...

    def head(self, key: str) -> ObjectMeta:
        """Size, etag and (S3) the ``sha256`` user metadata. Raises ``ObjectNotFound``."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object in memory. Raises ``ObjectNotFound``."""
        ...

    def open(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectReader:
        """A forward-only stream over the object. Raises ``ObjectNotFound``."""
        ...

    def put(
        self,
        key: str,
        body: Body,
        *,
        sha256: str | None = None,
        content_type: str | None = None,
        create_only: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        """Write ``body`` at ``key``; multipart when it is larger than ``part_size``.

        ``sha256`` is stored as user metadata where the store supports it.
        ``create_only`` raises ``ObjectExists`` when the key is taken.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...


@dataclass(frozen=True)
class PartInfo:
    """One part of a multipart upload as the server lists it."""

    number: int
    size: int
    etag: str
    #: the part's CRC32C (base64, as S3 lists it), where the server returns it (not moto)
    checksum_crc32c: str | None = None


@dataclass(frozen=True)
class CompletedPart:
    """What completing a multipart upload needs of each part."""

    number: int
    etag: str
    #: CRC32C of the part's bytes
    crc32c: int


@dataclass(frozen=True)
class MultipartRecord:
    """A multipart upload the daemon started for one file of one session."""

    upload_id: str
    rec_id: str
    rel_path: str
    bucket: str
    key: str
    size: int
    sha256: str
    part_size: int
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class MultipartUpload:
    """An incomplete multipart upload as the server lists it (ListMultipartUploads)."""

    key: str
    upload_id: str
    #: when the server says it was created; None when it did not say or the value did not parse
    initiated: datetime | None = None
    #: the server's clock when it listed it (its ``Date`` header), to age ``initiated`` by the
    #: server's own clock rather than a rig's; None when the answer had none
    listed_at: datetime | None = None


@dataclass(frozen=True)
class PartRecord:
    """One part the server confirmed: 1-based number, size, ETag and the checksum of its bytes
    (``crc32c:<8 hex>``; kept in the ``parts.sha256`` column, named when parts carried a sha256)."""

    number: int
    size: int
    etag: str
    checksum: str


class StreamBody(Protocol):
    """The body of a part-level request: read in slices, never whole."""

    def read(self, size: int = -1, /) -> bytes: ...


@runtime_checkable
class MultipartStore(Protocol):
    """A store whose large uploads can be resumed part by part and cut mid-request (S3).

    Bodies are binary file objects read in small slices: an exception their
    ``read`` raises (a pause) is re-raised unchanged and the request is
    dropped on the spot, connection and all. ``upload_part`` and
    ``put_stream`` try once; their caller retries ``TransientStoreError``.
    ``sha256`` arguments are lowercase hex (the whole object's), ``crc32c`` a
    part's CRC32C; the server verifies what it is sent and answers a mismatch
    with ``ChecksumMismatch``.
    """

    bucket: str

    def put_stream(self, key: str, body: StreamBody, *, size: int, sha256: str) -> None:
        """One PUT of ``size`` bytes read from ``body``, with ``sha256`` as checksum and user metadata."""
        ...

    def create_multipart(self, key: str, *, sha256: str | None = None) -> str:
        """Start a multipart upload (``sha256``: the whole object's, as user metadata); its upload id."""
        ...

    def upload_part(self, key: str, upload_id: str, number: int, body: StreamBody, *, size: int, crc32c: int) -> str:
        """Send part ``number`` (1-based) with its CRC32C; its ETag. Raises ``UploadGone``."""
        ...

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """The parts the server holds for ``upload_id``. Raises ``UploadGone``."""
        ...

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[CompletedPart]) -> None:
        """Assemble the object from ``parts`` (ascending numbers). Raises ``UploadGone``."""
        ...

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop the upload and its parts; an id the server no longer knows is not an error."""
        ...

    def list_multipart(self, prefix: str) -> list[MultipartUpload]:
        """Every incomplete multipart upload under ``prefix`` (anyone's), with when it was initiated."""
        ...
