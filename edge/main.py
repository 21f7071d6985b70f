"""``python -m isthmus.edge.main --config edge.toml [--check-config]``: run one edge node.

SIGTERM (or SIGINT) drains: the node stops admitting, lets in-flight requests finish within the
configured grace period, cancels what is left, and the process exits 0. An invalid configuration
is refused before anything starts, with a message naming the field (exit status 2).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .config import EdgeConfig

log = logging.getLogger("isthmus.edge")

EXIT_OK = 0
EXIT_BAD_CONFIG = 2
EXIT_FAILED = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="isthmus-edge", description="Run an isthmus edge node.")
    parser.add_argument("--config", required=True, help="path to the edge TOML configuration")
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit (0: valid)"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


async def serve(config: EdgeConfig) -> None:
    """Start a node, wait for SIGTERM/SIGINT, drain, stop."""
    from .node import EdgeNode

    node = EdgeNode(config)
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_on_sighup, node)  # config hot reload
    log.info("edge ready: QUIC on %s, HTTP on %s", node.quic_address, node.http_address)
    try:
        await stop.wait()
        log.info("draining")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await node.stop()
    log.info("stopped")


def _reload_on_sighup(node: object) -> None:
    """SIGHUP: re-read the config file and apply what can change live (a refusal is logged)."""
    from .reload import ReloadRefused

    try:
        node.reload(actor="sighup")  # type: ignore[attr-defined]
    except ReloadRefused:
        pass  # reload_node logged the field-named errors and audited the refusal


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = EdgeConfig.load(args.config)
    except (OSError, ValueError) as exc:
        print(f"invalid configuration {args.config}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.check_config:
        print(f"configuration {args.config} is valid")
        return EXIT_OK
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is in the edge extra; Windows lacks it
            asyncio.run(serve(config))
        else:
            uvloop.run(serve(config))
    except Exception:
        log.exception("edge failed")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
