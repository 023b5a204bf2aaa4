"""Where ``DataInterface(profile=..., path=..., config_path=...)`` points: the config's profile,
or a local store (and its catalog) on disk. A path inside another store or catalog is refused,
never turned into a second, empty catalog."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ursa_daemon.api import ACTIVE_POINTER_KEY, DEFAULT_CATALOG_PREFIX
from ursa_daemon.api import DataInterface as _CoreInterface
from ursa_daemon.config import find_config, load_config
from ursa_daemon.errors import ConfigError

__all__ = ["UnknownProfileError", "core_interface", "local_store_root"]


class UnknownProfileError(ConfigError, ValueError):
    """``profile`` names no entry of the config's ``profiles:``."""



def _is_store_root(d: Path) -> bool:
    return (d / "assets" / ACTIVE_POINTER_KEY).is_file() or ((d / "raw").is_dir() and (d / "assets").is_dir())


def _is_lance_catalog(d: Path) -> bool:
    if d.suffix == ".lance":
        return True
    try:
        return d.is_dir() and any(c.suffix == ".lance" and c.is_dir() for c in d.iterdir())
    except OSError:
        return False


def _active_catalog(root: Path) -> Path:
    pointer = root / "assets" / ACTIVE_POINTER_KEY
    prefix = DEFAULT_CATALOG_PREFIX
    if pointer.is_file():
        try:
            found = json.loads(pointer.read_text(encoding="utf-8"))["catalog_prefix"]
        except (OSError, ValueError, KeyError, TypeError):
            found = None
        if isinstance(found, str):
            prefix = found
    return root / "assets" / prefix


def local_store_root(path: str | os.PathLike[str]) -> Path:
    """The local store root that ``DataInterface(profile="local", path=path)`` opens.

    ``path`` is a store root, or the active catalog directory of one
    (``<root>/assets/ursa/catalog/<name>``), or a directory in no store and no
    catalog (a new store is started there). Anything inside an existing store or
    LanceDB catalog, or a directory right above a store, is a :class:`ValueError`
    naming what to pass instead.
    """
    p = Path(path).expanduser().resolve()
    if _is_store_root(p):
        return p
    enclosing = next((a for a in p.parents if _is_store_root(a)), None)
    if enclosing is not None:
        active = _active_catalog(enclosing)
        if p == active:
            return enclosing
        raise ValueError(
            f"path={str(path)!r} is inside the local store {enclosing}, whose catalog is {active}; "
            f"pass path={str(active)!r} (or the store root {str(enclosing)!r}): a new catalog is never "
            "created inside another one"
        )
    try:
        holds = next((c for c in p.iterdir() if c.is_dir() and _is_store_root(c)), None) if p.is_dir() else None
    except OSError:
        holds = None
    if holds is not None:
        raise ValueError(
            f"path={str(path)!r} holds the local store {holds}; pass path={str(holds)!r} (or its catalog "
            f"{str(_active_catalog(holds))!r}) instead of starting another store beside it"
        )
    inside = next((a for a in (p, *p.parents) if _is_lance_catalog(a)), None)
    if inside is not None:
        raise ValueError(
            f"path={str(path)!r} is (inside) the LanceDB catalog {inside}, which is not part of a local "
            "store (<root>/assets/ursa/catalog/<name> beside <root>/raw); pass a local store's root or "
            "its catalog directory"
        )
    return p


def core_interface(
    profile: str, path: str | os.PathLike[str] | None, config_path: str | os.PathLike[str] | None
) -> _CoreInterface:
    if path is not None:
        if profile != "local":
            raise ValueError(
                f"profile={profile!r} resolves its catalog from the config's profiles:; "
                "path= is only valid with profile='local'"
            )
        if config_path is not None:
            raise ValueError("give path= (a local catalog) or config_path=, not both")
        return _CoreInterface(profile="local", path=local_store_root(path))
    try:
        source = find_config(config_path)
    except ConfigError as exc:
        if profile == "local":
            raise ValueError(
                "profile='local' requires path= (catalog root on local disk) when no config file is found; "
                f"use DataInterface(profile='local', path=...) ({exc})"
            ) from exc
        raise
    config = load_config(source)
    if profile not in config.profiles:
        raise UnknownProfileError(
            f"profile {profile!r} is not in profiles: of {config.source} (have {sorted(config.profiles)}); "
            "add it there or pass config_path= to another config",
            key="profile",
            path=str(config.source),
        )
    return _CoreInterface(profile=profile, config=config)

