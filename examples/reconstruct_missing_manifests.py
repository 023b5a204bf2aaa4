"""Path C of the offline-ingest runbook: rebuild missing manifests in the store.

    python examples/reconstruct_missing_manifests.py --profile r2 --rec-id rec_20260520_195628_b1dd --yes

A thin loop over ``ursa-daemon reconstruct-manifest REC_ID``: for each session it
lists ``recordings/<rec_id>/`` in the profile's raw bucket, hashes every object
without ``sha256`` metadata (one GET each), takes the participant from the stored
``participant.txt`` and PUTs ``recordings/<rec_id>/manifest.json``. A session
whose manifest is already there and valid is left alone, so it is safe to
interrupt and re-run. Then register each one with ``ingest_from_r2`` (Path B).

The config is found as everywhere (``--config``, else ``./config.yaml``, else
``/etc/ursa-daemon/config.yaml``); ``--profile`` names its entry. Without
``--yes`` it asks before writing. Exit code: 0 when every session has a manifest,
else the first failing ``reconstruct-manifest`` exit code (1 input, 2 config).
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True, help="entry of the config's profiles: (e.g. r2)")
    parser.add_argument(
        "--rec-id", dest="rec_ids", action="append", required=True, help="session id (repeatable)"
    )
    parser.add_argument("--config", default=None, help="config file (default: ./config.yaml, else /etc/ursa-daemon)")
    parser.add_argument("--yes", action="store_true", help="do not ask before writing manifests")
    args = parser.parse_args(argv)
    if not args.yes:
        print(
            f"Rebuild manifest.json for {len(args.rec_ids)} session(s) in profile {args.profile!r} "
            "(reads every object without sha256 metadata, then writes the manifest)? [y/N] ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("nothing done", file=sys.stderr)
            return 1
    base = [sys.executable, "-m", "ursa_daemon.cli"]
    if args.config is not None:
        base += ["--config", args.config]
    base += ["--profile", args.profile, "reconstruct-manifest"]
    failed = 0
    for rec_id in args.rec_ids:
        rc = subprocess.run([*base, rec_id]).returncode
        print(f"{'OK  ' if rc == 0 else 'FAIL'} {rec_id}" + ("" if rc == 0 else f" (exit {rc})"), file=sys.stderr)
        failed = failed or rc
    return failed


if __name__ == "__main__":
    sys.exit(main())
