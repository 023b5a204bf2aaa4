"""One bucket of an S3-compatible endpoint (Cloudflare R2, MinIO, moto, AWS).

The only place obstore's S3 configuration is built. Keys reach obstore through a
``credential_provider`` callback, so the secret is in neither the store's
``config`` nor any repr.

What a PUT carries:

* ``x-amz-meta-sha256``: obstore turns every non-standard ``attributes`` key into
  ``x-amz-meta-<key>`` (on a multipart upload, on CreateMultipartUpload).
  ``head()`` reads it back with a ``HEAD`` request
  (``obstore.get(..., options={"head": True}).attributes``; ``obstore.head()``
  returns no user metadata).
* ``x-amz-checksum-sha256`` (``checksum_algorithm="sha256"``, the default):
  the base64 SHA-256 of the body on a single PUT, which S3 and R2 verify.
  obstore's multipart uploads (a streamed ``put`` longer than a part) go
  through a second obstore store without it: obstore's only part checksum is
  SHA-256, which R2 refuses on UploadPart (501 NotImplemented). Every obstore
  request is also SigV4-signed over its payload hash (``x-amz-content-sha256``).
  Pass ``None`` to turn checksums off for a store that rejects them.

Large files go through the part-level calls of :class:`MultipartStore`
(:mod:`ursa_daemon.store.multipart`, over botocore): resumable multipart
uploads and single PUTs that a pause can cut mid-request. They use the same
endpoint, region, credentials and checksum choice as the obstore store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store as _ObS3Store

from ursa_daemon.store._common import ObstoreBackend, check_key
from ursa_daemon.store.base import BucketKind, CompletedPart, MultipartUpload, PartInfo, StreamBody
from ursa_daemon.store.multipart import BotoMultipart

if TYPE_CHECKING:
    from obstore.store import S3Credential

    from ursa_daemon.config import Credentials, S3Profile

__all__ = ["S3Store", "lance_storage_options"]


class S3Store(ObstoreBackend):
    """One bucket through one credential role.

    The knobs: ``max_retries`` and ``retry_timeout`` (seconds from the first
    attempt) bound obstore's retries of connection errors, 5xx and throttling,
    with backoff from ``init_backoff`` to ``max_backoff``; ``connect_timeout``
    bounds a connect, ``read_timeout`` a stall while reading a response, and
    ``request_timeout`` a whole request (a part, or an ``open()`` stream).
    """

    _store: _ObS3Store

    def __init__(
        self,
        *,
        bucket: str,
        bucket_kind: BucketKind,
        endpoint: str,
        credentials: Credentials,
        region: str = "auto",
        allow_http: bool = False,
        checksum_algorithm: str | None = "sha256",
        max_retries: int = 5,
        retry_timeout: float = 180.0,
        init_backoff: float = 0.1,
        max_backoff: float = 15.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        request_timeout: float = 3600.0,
    ) -> None:
        endpoint = endpoint.rstrip("/")
        if endpoint.startswith("http://") and not allow_http:
            raise ValueError(
                f"endpoint {endpoint} is plain http: set allow_http (loopback test servers only)"
            )
        self.bucket = bucket
        self.bucket_kind = bucket_kind
        self.endpoint = endpoint
        self.region = region
        self._credentials = credentials
        token = credentials.session_token.get_secret_value() if credentials.session_token else None
        self._parts = BotoMultipart(
            bucket=bucket,
            endpoint=endpoint,
            region=region,
            access_key_id=credentials.access_key_id,
            secret_access_key=credentials.secret_access_key,
            session_token=token,
            checksum=bool(checksum_algorithm),
            where=self._where,
            secrets=self._secrets(),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        config: dict[str, Any] = {"endpoint": endpoint, "region": region}
        options = self._obstore_options(
            allow_http, connect_timeout, read_timeout, request_timeout, max_retries, retry_timeout,
            init_backoff, max_backoff,
        )
        plain = _ObS3Store(bucket, config=dict(config), **options)  # type: ignore[arg-type]
        self._store = plain
        if checksum_algorithm:
            config["checksum_algorithm"] = checksum_algorithm
            self._store = _ObS3Store(bucket, config=config, **options)  # type: ignore[arg-type]
        # obstore's only part checksum is sha256, which R2 refuses on UploadPart (501):
        # its multipart uploads (large streamed ``put`` bodies) go without one
        self._plain = plain

    @property
    def sends_checksums(self) -> bool:
        """Each part carries its CRC32C and each PUT its sha256, which the server verifies."""
        return self._parts.checksum

    def _multipart_store(self) -> Any:
        return self._plain

    def _obstore_options(
        self,
        allow_http: bool,
        connect_timeout: float,
        read_timeout: float,
        request_timeout: float,
        max_retries: int,
        retry_timeout: float,
        init_backoff: float,
        max_backoff: float,
    ) -> dict[str, Any]:
        return dict(
            client_options={
                "allow_http": allow_http,
                "connect_timeout": timedelta(seconds=connect_timeout),
                "read_timeout": timedelta(seconds=read_timeout),
                "timeout": timedelta(seconds=request_timeout),
            },
            retry_config={
                "max_retries": max_retries,
                "retry_timeout": timedelta(seconds=retry_timeout),
                "backoff": {
                    "init_backoff": timedelta(seconds=init_backoff),
                    "max_backoff": timedelta(seconds=max_backoff),
                },
            },
            credential_provider=self._provide_credentials,
        )

    @classmethod
    def from_profile(
        cls,
        profile: S3Profile,
        bucket_kind: BucketKind,
        credentials: Credentials,
        **knobs: Any,
    ) -> S3Store:
        """The store of ``profile``'s ``bucket_kind`` bucket; ``knobs`` go to the constructor."""
        return cls(
            bucket=profile.bucket(bucket_kind),
            bucket_kind=bucket_kind,
            endpoint=profile.endpoint,
            region=profile.region,
            allow_http=profile.allow_http,
            credentials=credentials,
            **knobs,
        )

    def _provide_credentials(self) -> S3Credential:
        creds = self._credentials
        token = creds.session_token.get_secret_value() if creds.session_token else None
        return {
            "access_key_id": creds.access_key_id,
            "secret_access_key": creds.secret_access_key,
            "token": token,
            "expires_at": None,
        }

    def _secrets(self) -> tuple[str, ...]:
        creds = self._credentials
        token = creds.session_token.get_secret_value() if creds.session_token else ""
        return tuple(s for s in (creds.secret_access_key, token) if s)

    def _attributes(
        self, sha256: str | None, content_type: str | None
    ) -> dict[str, str] | None:
        attributes = {}
        if sha256 is not None:
            attributes["sha256"] = sha256
        if content_type is not None:
            attributes["Content-Type"] = content_type
        return attributes or None

    def _head_raw(self, key: str) -> tuple[dict[str, Any], str | None]:
        result = obstore.get(self._store, key, options={"head": True})
        return dict(result.meta), result.attributes.get("sha256")

    # -- MultipartStore: part-level uploads (see ursa_daemon.store.multipart) ----

    def put_stream(self, key: str, body: StreamBody, *, size: int, sha256: str) -> None:
        """One PUT of ``size`` bytes from ``body``; a pause raised by ``body.read`` cuts it."""
        self._parts.put_stream(check_key(key), body, size=size, sha256=sha256)

    def create_multipart(self, key: str, *, sha256: str | None = None) -> str:
        """Start a multipart upload carrying the ``sha256`` user metadata; its upload id."""
        return self._parts.create_multipart(check_key(key), sha256=sha256)

    def upload_part(self, key: str, upload_id: str, number: int, body: StreamBody, *, size: int, crc32c: int) -> str:
        """Send one part (checksum ``crc32c``, verified by the server); its ETag."""
        return self._parts.upload_part(check_key(key), upload_id, number, body, size=size, crc32c=crc32c)

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """The server's own list of the parts of ``upload_id``; ``UploadGone`` if it forgot it."""
        return self._parts.list_parts(check_key(key), upload_id)

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[CompletedPart]) -> None:
        self._parts.complete_multipart(check_key(key), upload_id, parts)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._parts.abort_multipart(check_key(key), upload_id)

    def list_multipart(self, prefix: str) -> list[MultipartUpload]:
        return self._parts.list_multipart(check_key(prefix, prefix=True))

    def uri(self, key: str) -> str:
        """``s3://bucket/key``; ``key`` may be a prefix ending in ``/``."""
        check_key(key, prefix=True)
        return f"s3://{self.bucket}/{key}"

    def __repr__(self) -> str:
        return (
            f"S3Store(bucket={self.bucket!r}, bucket_kind={self.bucket_kind!r}, "
            f"endpoint={self.endpoint!r}, role={self._credentials.role!r})"
        )


def lance_storage_options(profile: S3Profile, creds: Credentials) -> dict[str, str]:
    """``storage_options`` for LanceDB/Lance to open tables on ``profile``'s endpoint.

    Keys are Lance's (object_store's ``aws_*`` config keys plus ``allow_http``).
    Path-style requests, as for R2, MinIO and moto.

    Concurrent commits: Lance (>= 0.24; lancedb 0.40 here) commits an ``s3://``
    table with its ConditionalPutCommitHandler: each new version is a PUT of
    ``_versions/<n>.manifest`` with ``If-None-Match: *``; the writer that loses
    gets 412 and rebases/retries. That is safe only where the store makes that
    PUT atomic: AWS S3 (since 2024-08), Cloudflare R2 and MinIO do. object_store
    needs ``conditional_put=etag`` (its default, set here explicitly so nobody
    disables it); no DynamoDB (``s3+ddb://``) commit store is needed. moto checks
    ``If-None-Match`` and then writes, not atomically: it is not a valid test of
    concurrent writers.

    The result holds the secret: hand it to LanceDB, never log it.
    """
    options = {
        "aws_access_key_id": creds.access_key_id,
        "aws_secret_access_key": creds.secret_access_key,
        "aws_endpoint": profile.endpoint,
        "aws_region": profile.region,
        "aws_virtual_hosted_style_request": "false",
        "aws_conditional_put": "etag",
        "allow_http": "true" if profile.allow_http else "false",
    }
    if creds.session_token:
        options["aws_session_token"] = creds.session_token.get_secret_value()
    return options
