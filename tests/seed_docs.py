"""The seed documents' code examples, extracted from their text for the ``test_seed_*`` modules.

The seeds are web pages saved as text: a code example is a run of lines that
parses as Python (prose around it does not). The runbook's page lost its
indentation, so a flat example is re-indented from its block openers
(see :func:`reindent`). Tests then fill in ids and paths with :func:`replace`,
which fails when the document no longer says what the test replaces.
:func:`drained_r2_site` is the catalog the runbook and the tutorial run against.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import MOTO_KEY_ID, MOTO_SECRET, MotoServer, s3_config_dict
from harness import cli, write_session

DOCS = Path(__file__).parent / "seed_docs"
#: vendored name -> the file in shared/seeds/
SHARED_NAMES = {
    "data_interface.txt": "000_8fac1a8fcd2053a7.txt",
    "download_module.txt": "001_f18f6e1934e60ff4.txt",
    "ingest_orchestrator.txt": "002_b39c10b96e1673cd.txt",
    "download_tutorial.txt": "003_1665e5dfe7051cc0.txt",
    "offline_ingest_runbook.txt": "004_98f75b8b6ec6f865.txt",
}

_START = re.compile(
    r"^\s*(import \w|from [\w.]+ import |def \w|for \w|with |if |try:|print\("
    r"|[A-Za-z_][\w.]*(\[[^\]]*\])?\s*=[^=]|[A-Za-z_][\w.]*\()"
)
_OPENERS = ("if", "elif", "else", "for", "while", "try", "except", "finally", "with", "def", "class")
_CLOSERS = ("continue", "break", "return", "pass", "raise")
_REALIGN = ("elif", "else", "except", "finally")


def text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def shared_copy(name: str) -> Path | None:
    """``shared/seeds/<file>`` in a folder above this repository, when there is one."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "seeds" / SHARED_NAMES[name]
        if candidate.is_file():
            return candidate
    return None


def check_shared_copy(name: str) -> None:
    """The vendored copy is still the seed in ``shared/seeds/`` (when that folder is found)."""
    shared = shared_copy(name)
    if shared is not None:
        assert shared.read_text(encoding="utf-8") == text(name), (
            f"tests/seed_docs/{name} differs from {shared}: copy it over and rerun the seed tests"
        )


def _code_part(line: str) -> str:
    """``line`` without a trailing ``#`` comment (quotes respected)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#":
            return line[:i].rstrip()
    return line.rstrip()


def _bracket_delta(line: str) -> int:
    depth, quote = 0, None
    for c in _code_part(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
    return depth


def _keyword(stmt: str) -> str:
    return re.split(r"[\s:(]", stmt, maxsplit=1)[0]


def reindent(lines: list[str]) -> str:
    """Indent a block whose indentation was lost.

    A line ending in ``:`` opens a block; ``elif``/``else``/``except``/``finally``
    line up with the block they continue; ``continue``/``break``/``return``/``pass``/
    ``raise`` end the block they are in; a ``def`` body is one statement (the
    runbook's only function, ``on_progress``, is a one-line callback). Lines inside
    brackets are continuation lines.
    """
    out: list[str] = []
    stack: list[str] = []
    depth = 0
    for raw in lines:
        s = raw.strip()
        if depth > 0:
            out.append("    " * (len(stack) + 1) + s)
            depth += _bracket_delta(s)
            ended = depth == 0
        else:
            kw = _keyword(s)
            if kw in _REALIGN and stack:
                stack.pop()
            out.append("    " * len(stack) + s)
            depth += _bracket_delta(s)
            if depth == 0 and _code_part(s).endswith(":") and kw in _OPENERS:
                stack.append(kw)
                continue
            ended = depth == 0
            if ended and kw in _CLOSERS and stack:
                stack.pop()
                continue
        if ended and stack and stack[-1] == "def":
            stack.pop()
    return "\n".join(out) + "\n"


def _parses(src: str) -> bool:
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return False
    # a lone name or a bare call of a title-like word is prose, not an example
    return not (len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Name))


def code_blocks(doc: str, *, max_lines: int = 60) -> list[str]:
    """Every maximal run of lines that parses as Python, in document order."""
    lines = doc.splitlines()
    blocks: list[str] = []
    i = 0
    while i < len(lines):
        if not _START.match(lines[i]):
            i += 1
            continue
        best: tuple[int, str] | None = None
        for j in range(i + 1, min(len(lines), i + max_lines) + 1):
            chunk = lines[i:j]
            if not chunk[-1].strip() and j > i + 1:
                continue
            flat = not any(line[:1].isspace() for line in chunk if line.strip())
            src = reindent(chunk) if flat else "\n".join(chunk).rstrip() + "\n"
            if _parses(src):
                best = (j, src)
        if best is None:
            i += 1
            continue
        blocks.append(best[1])
        i = best[0]
    return blocks


def section(doc: str, heading: str, next_heading: str) -> str:
    """The text from the line starting with ``heading`` to the one starting with ``next_heading``."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith(next_heading))
    return "\n".join(lines[start:end]) + "\n"


def block_with(doc: str, *needles: str) -> str:
    """The one code block containing every needle."""
    found = [b for b in code_blocks(doc) if all(n in b for n in needles)]
    assert len(found) == 1, f"expected one example with {needles}, found {len(found)}"
    return found[0]


def replace(src: str, *pairs: tuple[str, str]) -> str:
    """``src`` with each ``(old, new)`` replaced; every ``old`` must occur (the document says it)."""
    for old, new in pairs:
        assert old in src, f"the example no longer contains {old!r}:\n{src}"
        src = src.replace(old, new)
    return src


def table_value(doc: str, label: str) -> list[str]:
    """The comma-separated cell after ``label`` in a two-column table saved as text lines."""
    lines = [line.strip() for line in doc.splitlines()]
    i = lines.index(label)
    cell = next(line for line in lines[i + 1 :] if line)
    cell = cell.split(" — ")[0]
    return [v.strip() for v in cell.split(",")]


@contextmanager
def drained_r2_site(
    server: MotoServer, root: Path, prefix: str, sessions: dict[str, tuple[dict[str, bytes], str | None]]
) -> Iterator[tuple[Path, str, str, pytest.MonkeyPatch]]:
    """Two buckets on moto, a ``./config.yaml`` whose ``r2`` profile is moto, and ``sessions``
    (rec_id -> files, participant) registered by a real ``ursa-daemon drain``.

    Yields (config, raw bucket, assets bucket, the monkeypatch that holds the credentials'
    environment variables until the ``with`` ends).
    """
    raw, assets = f"{prefix}-raw-{os.getpid()}", f"{prefix}-assets-{os.getpid()}"
    client = server.client()
    client.create_bucket(Bucket=raw)
    client.create_bucket(Bucket=assets)
    doc = s3_config_dict(server.endpoint, raw, assets, root)
    doc["profiles"] = {"r2": doc["profiles"]["s3"]}
    doc["profile"] = "r2"
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(doc))
    with pytest.MonkeyPatch.context() as mp:
        for role in ("ASSETS_RO", "ASSETS_RW", "RAW_RW"):
            mp.setenv(f"URSA_{role}_KEY_ID", MOTO_KEY_ID)
            mp.setenv(f"URSA_{role}_SECRET", MOTO_SECRET)
        for rec_id, (files, participant) in sessions.items():
            write_session(root / "recordings", rec_id, files, participant=participant)
        drained = cli(config, "drain", "--json")
        assert drained.returncode == 0, drained.stderr[-2000:]
        assert sorted(json.loads(drained.stdout)["registered"]) == sorted(sessions)
        yield config, raw, assets, mp
