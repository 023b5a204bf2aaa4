"""The reliability suite's five invariants (issue 7), checked at the end of every reliability test.

    check_invariants(config, valid=[rec_dir, ...], invalid=[rec_id, ...])

1. Every catalog row's objects exist in the store with the size and sha256 of
   the session's uploaded manifest (every object is read back and hashed).
2. Every session in ``valid`` (complete, valid, left to finish) is registered
   exactly once: one recordings row for its rec_id, its modality rows, and
   its files in the catalog are exactly the files on disk, byte for byte.
3. No catalog row (recording or modality) exists for a session in
   ``invalid`` (a missing, changed or rejected file), and no modality row
   lacks its recording row.
4. Every raw object lies under ``recordings/<rec_id>/`` of a known session
   (``valid``, ``invalid`` or ``also``) and is its manifest, its participant,
   a node manifest or one of its files; the assets bucket holds only the
   catalog under ``ursa/``. :func:`check_download_confined` is the download half.
5. No incomplete multipart upload is left (S3 profile) under the prefix of a
   session that is registered or in ``invalid``.

The checker reads through the public read side (``DataInterface`` for the
catalog, ``get_store`` for objects) and boto3 for multipart uploads, so it
holds across rewrites of the upload path. It raises ``AssertionError`` listing
every violation, not just the first.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ursa_daemon.api import DataInterface
from ursa_daemon.config import Config, S3Profile, load_config
from ursa_daemon.errors import ObjectNotFound
from ursa_daemon.session import REC_ID_RE, load_session, recording_hash, split_worker

__all__ = ["Report", "check_download_confined", "check_invariants", "local_files", "tree_snapshot"]

_SIDE_FILES = {"manifest.json", "participant.txt"}


@dataclass
class Report:
    """What the checker saw; ``violations`` is empty when every invariant holds."""

    registered: dict[str, str] = field(default_factory=dict)  # rec_id -> recording_hash
    objects: int = 0
    violations: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        self.violations.append(msg)


def local_files(rec_dir: Path) -> dict[str, tuple[int, str]]:
    """rel_path -> (size, sha256) of the session's data files, walked the way the daemon walks them."""
    session = load_session(rec_dir)
    out = {}
    for f in session.files:
        body = (rec_dir / f.rel_path).read_bytes()
        out[f.rel_path] = (len(body), hashlib.sha256(body).hexdigest())
    return out


def _s3_client(profile: S3Profile) -> Any:
    import boto3

    from ursa_daemon.config import Role, resolve_credentials

    creds = resolve_credentials(profile, Role.RAW_RW)
    return boto3.client(
        "s3",
        endpoint_url=profile.endpoint,
        region_name=profile.region,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
    )


def _node_union(raw: Any, rec_id: str) -> dict[str, Any] | None:
    """The union of a dual-node session's uploaded node manifests, as one manifest (None if none)."""
    files: dict[str, Any] = {}
    for meta in raw.list(f"recordings/{rec_id}/_node_manifests/"):
        for f in json.loads(raw.get(meta.key)).get("files", []):
            files[f["rel_path"]] = f
    if not files:
        return None
    union = sorted(files.values(), key=lambda f: f["rel_path"])
    return {"files": union, "recording_hash": recording_hash(f["sha256"] for f in union)}


def check_invariants(
    config: Config | Path,
    *,
    valid: Iterable[Path] = (),
    invalid: Iterable[str] = (),
    also: Iterable[str] = (),
    deep: bool = True,
) -> Report:
    """Check the five invariants; ``AssertionError`` naming every violation. Returns the report."""
    cfg = load_config(config) if isinstance(config, Path) else config
    valid = list(valid)
    invalid = set(invalid)
    data = DataInterface(config=cfg)
    raw = data.store("raw_ro")
    assets = data.store("assets_ro")
    rep = Report()

    recordings = data.list_recordings()
    modalities = data.list_modalities()
    by_rec_id = Counter(r.rec_id for r in recordings)
    hashes = {r.recording_hash for r in recordings}
    mods_by_hash: dict[str, list[Any]] = {}
    for m in modalities:
        mods_by_hash.setdefault(m.recording_hash, []).append(m)
        if m.recording_hash not in hashes:
            rep.fail(f"inv3: modality row {m.modality}/{m.worker_id!r} of {m.recording_hash[:12]} has no recording row")
    for rec_id, n in by_rec_id.items():
        if n > 1:
            rep.fail(f"inv2: {rec_id} has {n} recordings rows")

    # 1: every row's objects are in the store as its manifest says
    manifests: dict[str, dict[str, Any]] = {}
    for row in recordings:
        rep.registered[row.rec_id] = row.recording_hash
        try:
            doc = json.loads(raw.get(f"recordings/{row.rec_id}/manifest.json"))
        except ObjectNotFound:
            doc = _node_union(raw, row.rec_id)  # a dual-node session: its node manifests are the markers
            if doc is None:
                rep.fail(f"inv1: {row.rec_id} is registered but recordings/{row.rec_id}/manifest.json is missing")
                continue
        manifests[row.rec_id] = doc
        files = doc.get("files", [])
        if doc.get("recording_hash") != row.recording_hash:
            rep.fail(f"inv1: {row.rec_id}: row hash {row.recording_hash[:12]} != manifest's")
        if recording_hash(f["sha256"] for f in files) != row.recording_hash:
            rep.fail(f"inv1: {row.rec_id}: recording_hash does not match the manifest's file digests")
        for f in files:
            key = f"recordings/{row.rec_id}/{f['rel_path']}"
            try:
                body = raw.get(key) if deep else None
                size = len(body) if body is not None else raw.head(key).size
            except ObjectNotFound:
                rep.fail(f"inv1: {key} is cataloged but missing")
                continue
            rep.objects += 1
            if size != f["size"]:
                rep.fail(f"inv1: {key} has {size} bytes, manifest says {f['size']}")
            elif body is not None and hashlib.sha256(body).hexdigest() != f["sha256"]:
                rep.fail(f"inv1: {key} bytes differ from the manifest's sha256")
        workers: dict[str, list[dict[str, Any]]] = {}
        for f in files:
            workers.setdefault(f["rel_path"].split("/", 1)[0], []).append(f)
        got = {(m.modality, m.worker_id): m for m in mods_by_hash.get(row.recording_hash, [])}
        want = {split_worker(w): fs for w, fs in workers.items()}
        if set(got) != set(want):
            rep.fail(f"inv1: {row.rec_id}: modality rows {sorted(got)} != manifest workers {sorted(want)}")
        for key, fs in want.items():
            m = got.get(key)
            if m is not None and (m.file_count, m.byte_count) != (len(fs), sum(f["size"] for f in fs)):
                rep.fail(f"inv1: {row.rec_id} {key}: file/byte counts {m.file_count}/{m.byte_count} != manifest")

    # 2: every valid session registered once, with exactly its files on disk
    for rec_dir in valid:
        rec_id = rec_dir.name
        if by_rec_id.get(rec_id, 0) != 1:
            rep.fail(f"inv2: {rec_id} is a complete, valid session but has {by_rec_id.get(rec_id, 0)} rows")
            continue
        doc = manifests.get(rec_id)
        if doc is None:
            continue
        cataloged = {f["rel_path"]: (f["size"], f["sha256"]) for f in doc.get("files", [])}
        on_disk = local_files(rec_dir)
        if cataloged != on_disk:
            extra, missing = sorted(set(cataloged) - set(on_disk)), sorted(set(on_disk) - set(cataloged))
            changed = sorted(k for k in set(cataloged) & set(on_disk) if cataloged[k] != on_disk[k])
            rep.fail(f"inv2/3: {rec_id}: catalog != disk (extra {extra[:3]}, missing {missing[:3]}, "
                     f"changed {changed[:3]})")

    # 3: nothing for sessions that must not be registered
    for rec_id in sorted(invalid):
        if by_rec_id.get(rec_id):
            rep.fail(f"inv3: {rec_id} must not be registered, but has a recordings row")

    # 4: nothing outside recordings/<rec_id>/ of a known session
    known = {p.name: p for p in valid} | {r: None for r in invalid} | {r: None for r in also}
    by_prefix: dict[str, list[str]] = {}
    for meta in raw.list(""):
        parts = meta.key.split("/", 2)
        if len(parts) < 3 or parts[0] != "recordings" or not REC_ID_RE.match(parts[1]):
            rep.fail(f"inv4: raw object {meta.key!r} is outside recordings/<rec_id>/")
            continue
        if parts[1] not in known and parts[1] not in rep.registered:
            rep.fail(f"inv4: raw object {meta.key!r} belongs to no session under test")
            continue
        by_prefix.setdefault(parts[1], []).append(parts[2])
    for rec_id, rels in by_prefix.items():
        rec_dir = known.get(rec_id)
        listed = {f["rel_path"] for f in manifests.get(rec_id, {}).get("files", [])}
        for rel in rels:
            if rel in _SIDE_FILES or rel.startswith("_node_manifests/") or rel in listed:
                continue
            if rec_dir is not None and (rec_dir / rel).is_file():
                continue
            if rec_dir is None and rec_id not in rep.registered:
                continue  # a rejected or vanished session: its uploaded files are its own
            rep.fail(f"inv4: raw object recordings/{rec_id}/{rel!r} is not a file of that session")
    for meta in assets.list(""):
        if not meta.key.startswith("ursa/"):
            rep.fail(f"inv4: assets object {meta.key!r} is outside ursa/")

    # 5: no incomplete multipart upload for a registered or rejected session
    if isinstance(cfg.active_profile, S3Profile):
        client = _s3_client(cfg.active_profile)
        done = set(rep.registered) | invalid
        for bucket in (cfg.active_profile.raw_bucket, cfg.active_profile.assets_bucket):
            for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                parts = up["Key"].split("/")
                if bucket != cfg.active_profile.raw_bucket or len(parts) < 2 or parts[1] in done:
                    rep.fail(f"inv5: incomplete multipart upload left at {bucket}/{up['Key']}")

    assert not rep.violations, "invariants violated:\n  " + "\n  ".join(rep.violations)
    return rep


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of everything under ``root`` (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def check_download_confined(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], dest: str) -> None:
    """Invariant 4, download half: between two snapshots of a parent, only ``dest`` (relative) changed."""
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    outside = sorted(k for k in changed if k != dest and not k.startswith(dest + os.sep))
    assert not outside, f"inv4: download touched files outside {dest}: {outside[:5]}"
