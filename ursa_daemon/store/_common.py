"""What both obstore-backed stores share: key checks, body planning, streaming reads, listing."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, suppress
from typing import TYPE_CHECKING, Any, Self

import obstore

from ursa_daemon.errors import StoreError
from ursa_daemon.store._errors import TRANSLATABLE, translate_error, translating
from ursa_daemon.store.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PART_SIZE,
    Body,
    BucketKind,
    ObjectMeta,
)

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = ["ObstoreBackend", "StreamReader", "check_key"]


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return ``key`` if it is a relative ``/``-separated key; else ``ValueError`` naming it.

    With ``prefix=True`` the empty string and a trailing ``/`` are allowed.
    """
    if not isinstance(key, str):
        raise TypeError(f"object key must be a str, not {type(key).__name__}")
    if key.startswith("/"):
        raise ValueError(f"object key {key!r} must be relative (no leading '/')")
    if not prefix and (not key or key.endswith("/")):
        raise ValueError(
            f"object key {key!r} must name an object (non-empty, no trailing '/')"
        )
    body = key.removesuffix("/")
    if body and any(seg in ("", ".", "..") for seg in body.split("/")):
        raise ValueError(f"object key {key!r} has an empty, '.' or '..' segment")
    if any(ord(c) < 0x20 or c == "\x7f" for c in key):
        raise ValueError(f"object key {key!r} holds a control character")
    return key


class _TrackedChunks:
    """An iterator over body chunks that remembers the exception its source raised."""

    def __init__(self, source: Iterator[Any]) -> None:
        self._source = source
        self.error: BaseException | None = None

    def __iter__(self) -> _TrackedChunks:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._source)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise


def _read_chunks(fileobj: Any, size: int) -> Iterator[bytes]:
    while True:
        chunk = fileobj.read(size)
        if isinstance(chunk, str):
            raise TypeError("put() needs a binary file object (opened with 'rb')")
        if not chunk:
            return
        yield chunk


def _plan_body(
    body: Body, part_size: int, *, whole: bool
) -> tuple[memoryview | bytes | None, Iterator[Any] | None, _TrackedChunks | None]:
    """Split ``body`` into ``(data, None, None)`` for one PUT or ``(None, chunks, tracker)``.

    A stream is read ahead up to ``part_size``: if it ends by then it goes in one PUT.
    ``whole`` reads the stream to its end (conditional puts cannot be multipart).
    """
    if isinstance(body, (bytes, bytearray, memoryview)):
        return memoryview(body).cast("B"), None, None
    if isinstance(body, str):
        raise TypeError(
            "put() takes bytes, a binary file object or an iterable of bytes, not str"
        )
    source = (
        _read_chunks(body, DEFAULT_CHUNK_SIZE) if hasattr(body, "read") else iter(body)
    )
    tracker = _TrackedChunks(source)
    if whole:
        return b"".join(tracker), None, None
    head: list[Any] = []
    total = 0
    for chunk in tracker:
        head.append(chunk)
        total += len(chunk)
        if total > part_size:
            return None, itertools.chain(head, tracker), tracker
    return b"".join(head), None, None


class StreamReader:
    """A forward-only reader over obstore's chunked stream; holds at most one chunk.

    ``read(n)`` returns exactly ``n`` bytes unless the object ends first;
    ``read()`` returns the rest.
    """

    def __init__(
        self, stream: Iterator[bytes], on_error: Callable[[BaseException], StoreError]
    ) -> None:
        self._stream: Iterator[bytes] | None = stream
        self._on_error = on_error
        self._buf = b""
        self._pos = 0

    @property
    def closed(self) -> bool:
        return self._stream is None and not self._buf

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        if self._stream is None:
            return False
        try:
            chunk = next(self._stream)
        except StopIteration:
            self._stream = None
            return False
        except StoreError:
            raise
        except TRANSLATABLE as exc:
            raise self._on_error(exc) from exc
        self._buf, self._pos = bytes(chunk), 0
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = [self.read(DEFAULT_CHUNK_SIZE)]
            while parts[-1]:
                parts.append(self.read(DEFAULT_CHUNK_SIZE))
            return b"".join(parts)
        parts = []
        need = size
        while need > 0:
            if self._pos >= len(self._buf) and not self._fill():
                break
            piece = self._buf[self._pos : self._pos + need]
            self._pos += len(piece)
            need -= len(piece)
            parts.append(piece)
        if self._pos >= len(self._buf):
            self._buf, self._pos = b"", 0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        self._stream = None
        self._buf, self._pos = b"", 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _meta(raw: Any, sha256: str | None = None) -> ObjectMeta:
    return ObjectMeta(
        key=raw["path"],
        size=int(raw["size"]),
        etag=raw.get("e_tag"),
        last_modified=raw.get("last_modified"),
        sha256=sha256,
    )


class ObstoreBackend:
    """The :class:`~ursa_daemon.store.base.Store` methods over one obstore store."""

    bucket_kind: BucketKind
    bucket: str
    _store: ObjectStore

    # -- hooks for the backends -------------------------------------------------
    def uri(self, key: str) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _attributes(
        self, sha256: str | None, content_type: str | None
    ) -> dict[str, str] | None:
        return None

    def _secrets(self) -> tuple[str, ...]:
        return ()

    def _head_raw(self, key: str) -> tuple[dict[str, Any], str | None]:
        return dict(obstore.head(self._store, key)), None

    # -- shared -----------------------------------------------------------------
    def _where(self, key: str) -> str:
        try:
            return self.uri(key)
        except ValueError:
            return f"{self.bucket}/{key}"

    def _translating(
        self, op: str, key: str, *, create: bool = False
    ) -> AbstractContextManager[None]:
        return translating(
            op, self._where(key), key, secrets=self._secrets(), create=create
        )

    def list(self, prefix: str = "") -> Iterator[ObjectMeta]:
        """Every object whose key starts with ``prefix`` (a plain string prefix)."""
        check_key(prefix, prefix=True)
        return self._iter_list(prefix)

    def _iter_list(self, prefix: str) -> Iterator[ObjectMeta]:
        # obstore prefixes match whole path segments: list the parent, filter here.
        parent = (
            prefix.rstrip("/") if prefix.endswith("/") else prefix.rpartition("/")[0]
        )
        with self._translating("list", prefix):
            for batch in obstore.list(self._store, parent or None, chunk_size=1000):
                for raw in batch:
                    if raw["path"].startswith(prefix):
                        yield _meta(raw)

    def head(self, key: str) -> ObjectMeta:
        """Size, etag, last_modified and (S3) the ``sha256`` user metadata."""
        check_key(key)
        with self._translating("head", key):
            raw, sha256 = self._head_raw(key)
        return _meta(raw, sha256)

    def get(self, key: str) -> bytes:
        """The whole object in memory."""
        check_key(key)
        with self._translating("get", key):
            return bytes(obstore.get(self._store, key).bytes())

    def open(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> StreamReader:
        """A forward-only stream over the object, ``chunk_size`` bytes per network read."""
        check_key(key)
        with self._translating("open", key):
            stream = obstore.get(self._store, key).stream(min_chunk_size=chunk_size)

        def on_error(exc: BaseException) -> StoreError:
            return translate_error(
                exc, op="read", where=self._where(key), key=key, secrets=self._secrets()
            )

        return StreamReader(stream, on_error)

    def _multipart_store(self) -> Any:
        """The obstore store a multipart ``put`` goes through (S3: one without sha256 part checksums)."""
        return self._store

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
        """Write ``body`` (bytes, a binary file object, or an iterable of bytes) at ``key``.

        A body that ends within ``part_size`` goes in one PUT; a longer one is
        streamed as a multipart upload of ``part_size`` parts (all equal but the
        last, as R2 requires), at most ``max_concurrency`` in flight.
        ``create_only`` is an atomic create (``If-None-Match: *``) that raises
        ``ObjectExists`` if the key is taken; it cannot be multipart, so the whole
        body is read into memory first: use it for small marker files.

        An exception raised by the body itself (its iterator or its ``read``) is
        re-raised unchanged, never wrapped, so an uploader can recognise its own
        cancellation; obstore then abandons the upload and nothing is written.
        """
        check_key(key)
        attributes = self._attributes(sha256, content_type)
        data, chunks, tracker = _plan_body(body, part_size, whole=create_only)
        try:
            if data is not None:
                multipart = (not create_only) and len(data) > part_size
                obstore.put(
                    self._multipart_store() if multipart else self._store,
                    key,
                    data,
                    attributes=attributes,
                    mode="create" if create_only else "overwrite",
                    use_multipart=multipart,
                    chunk_size=part_size,
                    max_concurrency=max_concurrency,
                )
            else:
                assert chunks is not None
                obstore.put(
                    self._multipart_store(),
                    key,
                    chunks,
                    attributes=attributes,
                    chunk_size=part_size,
                    max_concurrency=max_concurrency,
                )
        except BaseException as exc:
            if tracker is not None and tracker.error is not None:
                raise tracker.error  # noqa: B904 - the body's own exception, unchanged, as it was raised
            if isinstance(exc, StoreError) or not isinstance(exc, TRANSLATABLE):
                raise
            raise translate_error(
                exc,
                op="put",
                where=self._where(key),
                key=key,
                secrets=self._secrets(),
                create=create_only,
            ) from exc

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        check_key(key)
        with self._translating("delete", key), suppress(FileNotFoundError):
            obstore.delete(self._store, key)
