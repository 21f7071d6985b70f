"""`isthmus weights manifest DIR` and `isthmus weights sync SRC DST` (see `engine/model/weights_sync.py`).

Exit status: 0 done, 1 refused or failed (the message says why; the visible version is unchanged),
2 bad arguments. With ``--audit PATH`` (or ``-`` for stdout) each sync writes one audit record
(action ``weights.sync``: source without credentials, destination, digest, outcome).

``SRC`` may be ``grpc://HOST:PORT``: a center replica serving its checkpoint through the admin
``FetchWeights`` RPC (cli/weights_grpc.py), authenticated with ``--admin-token-file`` and/or a
client certificate from ``--tls-dir``; the same verify, resume and atomic switch as the others.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="isthmus weights", description="write and sync verified checkpoints")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    manifest = sub.add_parser("manifest", help="write DIR/sha256sums.txt for every file of DIR")
    manifest.add_argument("dir", type=Path)
    sync = sub.add_parser("sync", help="copy SRC (folder or http(s) URL) to DST, verified and atomic")
    sync.add_argument("src", help="checkpoint folder, http(s):// URL serving it (with sha256sums.txt), "
                      "or grpc://HOST:PORT of a center replica")
    sync.add_argument("dst", type=Path, help="path that will point at the new version (a symlink)")
    sync.add_argument("--audit", help="audit log file to append a record to ('-': stdout)")
    sync.add_argument("--admin-token-file", help="grpc://: the center's admin token file (mode 0600)")
    sync.add_argument("--tls-dir", help="grpc://: mutual TLS folder (ca.crt, CLIENT.crt, CLIENT.key)")
    sync.add_argument("--tls-client", default="edge", help="grpc://: client certificate name in --tls-dir")
    sync.add_argument("--tls-server-name", help="grpc://: name to check in the center's certificate")
    sync.add_argument("--actor", default="", help="who runs the sync, for the audit log (default: user)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from isthmus.engine.model.weights_sync import SyncError

    if a.action == "manifest":
        from isthmus.engine.model.weights_sync import manifest_files, write_manifest

        try:
            path, digest = write_manifest(a.dir)
        except (SyncError, OSError) as exc:
            print(f"isthmus weights manifest: error: {exc}", file=sys.stderr)
            return 1
        print(f"isthmus: wrote {path} ({len(manifest_files(a.dir))} files, digest {digest})")
        return 0
    return _sync(a, SyncError)


def _sync(a: argparse.Namespace, sync_error: type[Exception]) -> int:
    from isthmus.engine.model.weights_sync import ChecksumMismatch, open_source, sync_checkpoint

    details: dict[str, object] = {"src": "", "dst": str(a.dst)}
    source: Any = None
    try:
        source = _grpc_source(a) if a.src.startswith("grpc://") else open_source(a.src)
        details["src"] = source.description  # without credentials or query
        result = sync_checkpoint(source, a.dst)
    except ChecksumMismatch as exc:
        print(f"isthmus weights sync: refused: {exc}; {a.dst} is unchanged", file=sys.stderr)
        _audit(a, "refused", {**details, "error": str(exc)})
        return 1
    except (sync_error, OSError, ValueError) as exc:  # ValueError: a bad admin token file
        print(f"isthmus weights sync: error: {exc}; {a.dst} is unchanged", file=sys.stderr)
        _audit(a, "failed", {**details, "error": str(exc)})
        return 1
    finally:
        if source is not None and hasattr(source, "close"):
            source.close()
    details.update(digest=result.digest, files=result.num_files, bytes_copied=result.num_bytes_copied)
    if result.is_up_to_date:
        print(f"isthmus: {a.dst} already shows version {result.digest[:16]}")
    else:
        resumed = f", {result.num_files_resumed} resumed" if result.num_files_resumed else ""
        print(
            f"isthmus: {a.dst} -> {result.version_dir} ({result.num_files} files verified, "
            f"{result.num_bytes_copied} bytes copied{resumed}; digest {result.digest[:16]})"
        )
    _audit(a, "ok", details)
    return 0


def _grpc_source(a: argparse.Namespace) -> Any:
    from isthmus.cli.weights_grpc import GrpcAuth, GrpcSource

    auth = GrpcAuth(token_file=a.admin_token_file, tls_dir=a.tls_dir, tls_client=a.tls_client,
                    server_name=a.tls_server_name)
    return GrpcSource(a.src, auth)


def _audit(a: argparse.Namespace, outcome: str, details: dict[str, object]) -> None:
    if not a.audit:
        return
    from isthmus.edge.audit import AuditLog

    log = AuditLog.open(a.audit)
    try:
        log.record("weights.sync", actor=a.actor or getpass.getuser(), source="cli", outcome=outcome,
                   details=details)
    finally:
        log.close()
