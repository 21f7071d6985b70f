"""Write a default edge config, or check one: `python -m isthmus.edge.config write|check`.

Used by the node installer (write on first install, check before every start) and `isthmus up`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from isthmus.edge.config import _QUANTIZATIONS, ConfigError, EdgeConfig


def write_default_config(
    path: str | Path,
    *,
    model: str,
    centers: Sequence[str] = (),
    port: int = 4433,
    http_port: int = 9090,
    api_key_hashes: Sequence[str] = (),
    cert: str = "edge.crt",
    key: str = "edge.key",
    quantization: str = "none",
    device: str = "cpu",
    force: bool = False,
    center_tls: tuple[str, str, str] | None = None,
) -> bool:
    """Write a config with defaults plus these settings; keeps an existing file unless `force`.

    `api_key_hashes` items are ``SHA256HEX`` or ``SHA256HEX:name`` or ``SHA256HEX:name:max_concurrent``.
    `center_tls` is (CA, client certificate, client key) for mutual TLS to the center.
    Returns True if it wrote the file. The result is checked by loading it back before it is kept.
    """
    path = Path(path)
    if path.exists() and not force:
        return False
    data: dict[str, Any] = {
        "model": {"path": model, "quantization": quantization, "device": device},
        "listen": {"port": port, "cert": cert, "key": key},
        "http": {"port": http_port},
        "auth": {"keys": [_parse_key(i, spec) for i, spec in enumerate(api_key_hashes)]},
        "center": {"endpoints": list(centers)},
    }
    if center_tls is not None:
        data["center"].update(tls=True, ca=center_tls[0], cert=center_tls[1], key=center_tls[2])
    cfg = EdgeConfig.from_dict(data, name=path.name)  # never write a file we would refuse
    text = (
        "# isthmus edge node configuration (see deploy/edge.example.toml for every key)\n\n" + cfg.to_toml()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def _parse_key(i: int, spec: str) -> dict[str, Any]:
    """``SHA256HEX[:name[:max_concurrent]]`` -> an `[[auth.keys]]` table."""
    parts = spec.split(":")
    table: dict[str, Any] = {"sha256": parts[0].lower(), "name": parts[1] if len(parts) > 1 else f"key{i}"}
    if len(parts) > 2:
        if not parts[2].isdigit():
            raise ConfigError(f"auth.keys[{i}].max_concurrent: expected an integer, got {parts[2]!r}")
        table["max_concurrent"] = int(parts[2])
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """`write` a default config or `check` one (exit status 1 with the field on error)."""
    parser = argparse.ArgumentParser(prog="python -m isthmus.edge.config")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write a config with defaults")
    w.add_argument("--out", required=True)
    w.add_argument("--model", required=True, help="checkpoint folder")
    w.add_argument("--center", action="append", default=[], help="center replica host:port (repeatable)")
    w.add_argument("--port", type=int, default=4433, help="QUIC (UDP) port")
    w.add_argument("--http-port", type=int, default=9090, help="metrics/OpenAI API (TCP) port")
    w.add_argument("--api-key-hash", action="append", default=[], help="SHA256HEX[:name[:max_concurrent]]")
    w.add_argument("--cert", default="edge.crt")
    w.add_argument("--key", default="edge.key")
    w.add_argument("--quantization", default="none", choices=_QUANTIZATIONS)
    w.add_argument("--device", default="cpu")
    w.add_argument("--force", action="store_true", help="overwrite an existing file")
    w.add_argument("--center-tls", nargs=3, metavar=("CA", "CERT", "KEY"),
                   help="mutual TLS to the center: CA bundle, client certificate and key (PEM)")
    c = sub.add_parser("check", help="load a config and report the first error")
    c.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            cfg = EdgeConfig.load(args.path)
            print(f"{args.path}: ok (model {cfg.model.path}, {len(cfg.center.endpoints)} center endpoint(s))")
            return 0
        wrote = write_default_config(
            args.out,
            model=args.model,
            centers=args.center,
            port=args.port,
            http_port=args.http_port,
            api_key_hashes=args.api_key_hash,
            cert=args.cert,
            key=args.key,
            quantization=args.quantization,
            device=args.device,
            force=args.force,
            center_tls=tuple(args.center_tls) if args.center_tls else None,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'wrote' if wrote else 'kept existing'} {args.out}")
    return 0
