"""Sessions on disk (rank 2, pure): which ``rec_*`` directories exist and are complete, their
files, manifests, hashes and object keys (SPEC section 2).

Imports only ``errors``; never the store, catalog, transfer or daemon layers. Inside the
folder imports flow ``keys`` → ``files``, ``parse``, ``walk`` → ``hashing`` → ``manifest``.
Everything here is light (stdlib only), so the names are re-exported eagerly.
"""

from __future__ import annotations

from ursa_daemon.session.files import MAX_KEY_BYTES, FileEntry, walk_session
from ursa_daemon.session.hashing import HASH_CHUNK_SIZE, HashingStopped, hash_file, hash_files, recording_hash
from ursa_daemon.session.keys import (
    MANIFEST_NAME,
    NODE_MANIFEST_DIR,
    NODE_NAME_RE,
    PARTICIPANT_NAME,
    REC_ID_RE,
    check_rel_path,
    is_data_name,
    participant_id,
    refuse_linked_session,
    rel_key,
    split_worker,
)
from ursa_daemon.session.manifest import (
    MANIFEST_VERSION,
    Session,
    augment,
    load_session,
    manifest_bytes,
    merge_node_manifests,
    node_files,
    read_manifest,
    read_participant,
    validate_manifest,
)
from ursa_daemon.session.parse import MAX_MANIFEST_BYTES, parse_json_document, parse_time_ns
from ursa_daemon.session.walk import (
    SessionDir,
    has_manifest,
    in_shard,
    parse_shard,
    scan_root,
    session_names,
    session_of,
    tree_signature,
)

__all__ = [
    "HASH_CHUNK_SIZE",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "MAX_KEY_BYTES",
    "MAX_MANIFEST_BYTES",
    "NODE_MANIFEST_DIR",
    "NODE_NAME_RE",
    "PARTICIPANT_NAME",
    "REC_ID_RE",
    "FileEntry",
    "HashingStopped",
    "Session",
    "SessionDir",
    "augment",
    "check_rel_path",
    "has_manifest",
    "hash_file",
    "hash_files",
    "in_shard",
    "is_data_name",
    "load_session",
    "manifest_bytes",
    "merge_node_manifests",
    "node_files",
    "parse_json_document",
    "parse_shard",
    "parse_time_ns",
    "participant_id",
    "refuse_linked_session",
    "read_manifest",
    "read_participant",
    "recording_hash",
    "rel_key",
    "scan_root",
    "session_names",
    "session_of",
    "split_worker",
    "tree_signature",
    "validate_manifest",
    "walk_session",
]
