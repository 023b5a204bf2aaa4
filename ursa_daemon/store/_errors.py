"""Translate obstore's exceptions into :mod:`ursa_daemon.errors` at the store boundary.

Messages are rebuilt from obstore's text: only its first paragraph is kept, the
S3 XML body is reduced to ``Code: Message``, query strings and anything that
looks like a signature or credential are cut, and the caller's secrets are
replaced by ``<redacted>``. The original exception stays as ``__cause__``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from obstore import exceptions as obx

from ursa_daemon.errors import (
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StorePermissionError,
    TransientStoreError,
)

__all__ = ["TRANSLATABLE", "redact", "translate_error", "translating"]

#: What the boundary translates. Anything else (KeyboardInterrupt, a body's own
#: exception, a bug's TypeError) passes through untouched.
TRANSLATABLE: tuple[type[BaseException], ...] = (
    obx.BaseError,
    OSError,
    ValueError,
    NotImplementedError,
)

_MAX_DETAIL = 600
_URL_QUERY = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]*)[?#][^\s\"'<>]*")
_SIGNED_PARAM = re.compile(
    r"(?i)\b((?:x-amz-)?(?:signature|credential|security-token|token|secret[\w-]*|"
    r"access[_-]?key[\w-]*|awsaccesskeyid))(\s*[=:]\s*)[^\s&,;\"'<>]+"
)
_AUTH_HEADER = re.compile(r"(?i)\b(authorization)(\s*[=:]\s*)[^\n]+")
_STATUS = re.compile(r"(?:status code: |status: )(\d{3})\b")
_S3_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]{1,300})</Message>")
_OS_REASON = re.compile(r'kind: (\w+),\s*message: "([^"]{1,100})"')
_TRANSIENT_TEXT = re.compile(
    r"(?i)timed ?out|connection ?(?:refused|reset|closed|aborted)|broken pipe|"
    r"error sending request|dns error|incomplete ?message|unexpected ?eof|"
    r"error decoding response body|SlowDown|RequestTimeout|ServiceUnavailable|"
    r"InternalError|TooManyRequests"
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Cut query strings, signature/credential parameters and the given secrets from ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = _URL_QUERY.sub(r"\1?<query redacted>", text)
    text = _AUTH_HEADER.sub(r"\1\2<redacted>", text)
    return _SIGNED_PARAM.sub(r"\1\2<redacted>", text)


def _status(text: str) -> int | None:
    m = _STATUS.search(text)
    return int(m.group(1)) if m else None


def _detail(text: str, secrets: Iterable[str]) -> str:
    """obstore's first paragraph, without the XML body or the debug dump, redacted."""
    head = text.split("\n\nDebug source:", 1)[0]
    head = re.sub(r"<\?xml.*", "", head, flags=re.DOTALL)
    head = " ".join(head.split()).rstrip(" :")
    code, message = _S3_CODE.search(text), _S3_MESSAGE.search(text)
    if code:
        head += f" [{code.group(1)}" + (f": {message.group(1)}]" if message else "]")
    reason = _OS_REASON.search(text)
    if reason:
        head += f" ({reason.group(2)})"
    head = redact(head, secrets)
    return head if len(head) <= _MAX_DETAIL else head[: _MAX_DETAIL - 1] + "…"


def _classify(exc: BaseException, text: str, *, create: bool) -> type[StoreError]:
    status = _status(text)
    if isinstance(exc, (obx.AlreadyExistsError, FileExistsError)):
        return ObjectExists
    if create and (isinstance(exc, obx.PreconditionError) or status == 412):
        return ObjectExists
    if "<Code>NoSuchBucket</Code>" in text:
        return StoreError  # a configuration problem, not a missing object
    if isinstance(exc, (FileNotFoundError, obx.NotFoundError)):
        return ObjectNotFound
    if isinstance(
        exc, (obx.PermissionDeniedError, obx.UnauthenticatedError, PermissionError)
    ):
        return StorePermissionError
    if status in (401, 403):
        return StorePermissionError
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return TransientStoreError
    if status is not None and (status >= 500 or status in (408, 429)):
        return TransientStoreError
    if status is None and _TRANSIENT_TEXT.search(text):
        return TransientStoreError
    return StoreError


def translate_error(
    exc: BaseException,
    *,
    op: str,
    where: str,
    key: str | None,
    secrets: Iterable[str] = (),
    create: bool = False,
) -> StoreError:
    """The :class:`StoreError` subclass for ``exc``; the caller raises it ``from exc``.

    ``where`` names the object (its URI); ``create`` says a 412 means the key was taken.
    """
    secrets = tuple(secrets)
    text = str(exc)
    cls = _classify(exc, text, create=create)
    if cls is ObjectExists:
        detail = "an object already exists there"
    elif cls is ObjectNotFound:
        detail = "no such object"
    elif "<Code>NoSuchBucket</Code>" in text:
        detail = "the bucket does not exist (check the profile's bucket names)"
    else:
        detail = f"{type(exc).__name__}: {_detail(text, secrets)}"
    return cls(f"{op} {redact(where, secrets)}: {detail}", key=key)


@contextmanager
def translating(
    op: str,
    where: str,
    key: str | None,
    *,
    secrets: Iterable[str] = (),
    create: bool = False,
) -> Iterator[None]:
    """Re-raise obstore/OS errors in the block as :class:`StoreError` (``from`` the original)."""
    try:
        yield
    except StoreError:
        raise
    except TRANSLATABLE as exc:
        raise translate_error(
            exc, op=op, where=where, key=key, secrets=secrets, create=create
        ) from exc
