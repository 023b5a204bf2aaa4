"""Import :mod:`lancedb` without paying for the Lance REST namespace client up front.

``import lancedb`` imports ``lance_namespace``, which imports the generated REST
client package ``lance_namespace_urllib3_client``; that package's ``__init__``
loads every REST API module (about 0.7 s of a 1 s import on a rig). Only the
client's ``models`` subpackage is needed to import lancedb, and a catalog on a
local directory or on S3/R2 never talks to a REST namespace.

:func:`import_lancedb` therefore loads that one package lazily: a finder on
``sys.meta_path``, consulted only for the name ``lance_namespace_urllib3_client``,
gives it a module with the real ``__path__`` (so ``.models`` and every other
submodule import normally) whose ``__init__`` body runs on the first attribute
the module does not have yet (``ApiClient``, ``TableApi``, ...). Code that uses
the REST client gets exactly the real package, one attribute access later.
Nothing is patched when lancedb (or the client) was imported before, e.g. by a
scientist's own code.

On Python < 3.12 lancedb also decorates about a hundred methods with
``overrides.override``, which checks at class creation that each one overrides a
base method by disassembling the whole defining module's bytecode once per
method (about 0.2 s). That is a development-time check: with its default
``check_at_runtime=False`` the decorator returns the method unchanged. While
lancedb's modules are being imported, ``overrides.override`` is swapped for the
same decorator minus the check (it still marks ``__override__``, as
``typing.override`` does on 3.12, where lancedb uses that instead) and put back
right after, so other users of ``overrides`` in the process keep the real one.

Before lancedb is first used, :func:`size_memory_pool` gives Lance's DataFusion memory
pool (``LANCE_MEM_POOL_SIZE``, read lazily by Lance) at least :data:`MIN_MEM_POOL_BYTES`.
Lance's default is 150 MiB per CPU; on a 2-core machine that 300 MiB pool is too small
for the BTREE index update of a 4,000,000-row modalities table (a catalog of 1,000,000
recordings): the sort's non-spillable merge phase is refused its memory and ``maintain``
fails with ``Resources exhausted`` every time. The pool is a cap, not an allocation:
a point lookup or a single-session commit uses a few MiB of it whatever its size. An
operator's own ``LANCE_MEM_POOL_SIZE`` is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["LAZY_PACKAGE", "MIN_MEM_POOL_BYTES", "import_lancedb", "size_memory_pool"]

LAZY_PACKAGE = "lance_namespace_urllib3_client"
#: the least memory pool Lance gets (see the module doc): room to re-index ~1M recordings
MIN_MEM_POOL_BYTES = 1 << 30
#: Lance's own default: 150 MiB per execution partition, one partition per CPU
_LANCE_POOL_PER_CPU = 150 << 20

_lock = threading.Lock()


class _DeferredInit(importlib.abc.Loader):
    """Create the package with its real path; run its ``__init__`` on first missing attribute."""

    def __init__(self, real: importlib.machinery.ModuleSpec) -> None:
        self._real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        loader = self._real.loader
        assert isinstance(loader, importlib.abc.InspectLoader)
        started = False
        load_lock = threading.RLock()  # other threads wait for the body; this one may re-enter

        def __getattr__(name: str) -> Any:  # noqa: N807 (a module __getattr__, PEP 562)
            nonlocal started
            if not (name.startswith("__") and name.endswith("__")):
                with load_lock:
                    if not started:
                        started = True
                        code = loader.get_code(module.__name__)
                        if code is not None:
                            exec(code, module.__dict__)  # the package's own __init__, unchanged
                if name in module.__dict__:
                    return module.__dict__[name]
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

        module.__getattr__ = __getattr__  # type: ignore[method-assign]


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != LAZY_PACKAGE:
            return None
        sys.meta_path.remove(self)  # one use: find the real package, then step aside
        real = importlib.util.find_spec(fullname)
        if real is None or real.loader is None or real.submodule_search_locations is None:
            return real
        if not isinstance(real.loader, importlib.abc.InspectLoader):
            return real
        spec = importlib.machinery.ModuleSpec(fullname, _DeferredInit(real), origin=real.origin, is_package=True)
        spec.submodule_search_locations = list(real.submodule_search_locations)
        spec.has_location = real.has_location
        return spec


def size_memory_pool() -> None:
    """Set ``LANCE_MEM_POOL_SIZE`` to the larger of Lance's default and :data:`MIN_MEM_POOL_BYTES`,
    unless it is set already."""
    lance_default = _LANCE_POOL_PER_CPU * (os.cpu_count() or 1)
    os.environ.setdefault("LANCE_MEM_POOL_SIZE", str(max(MIN_MEM_POOL_BYTES, lance_default)))


def import_lancedb() -> ModuleType:
    """``import lancedb``, with the REST namespace client's ``__init__`` deferred (see module doc)."""
    size_memory_pool()
    lancedb = sys.modules.get("lancedb")
    if lancedb is not None:
        return lancedb
    with _lock:
        finder = None
        if LAZY_PACKAGE not in sys.modules:
            finder = _Finder()
            sys.meta_path.insert(0, finder)
        overrides, checked = _unchecked_override()
        try:
            return importlib.import_module("lancedb")
        finally:
            if finder is not None and finder in sys.meta_path:
                sys.meta_path.remove(finder)
            if overrides is not None:
                overrides.override = checked


def _unchecked_override() -> tuple[Any, Any]:
    """Swap ``overrides.override`` for the check-free decorator; return (module, original) to restore."""
    if sys.version_info >= (3, 12) or "lancedb.db" in sys.modules:
        return None, None
    try:
        import overrides
    except ImportError:
        return None, None
    checked = overrides.override

    def override(method: Any = None, **_options: Any) -> Any:
        if method is None:
            return override
        method.__override__ = True
        return method

    overrides.override = override
    return overrides, checked
