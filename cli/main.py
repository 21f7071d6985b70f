"""The `isthmus` command: `model make-tiny`, `center`, `center swap`, `edge`, `up`, `chat`, `demo`, `weights`.

Every bad argument is refused before anything starts, naming the flag and what to give instead
(exit status 2). Long steps (writing models, waiting for the center's health) print progress.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .defaults import DEFAULT_CACHE_DIR, read_state

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="isthmus", description="isthmus: an edge-and-center inference network.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    model_parser = sub.add_parser("model", help="model utilities")
    model = model_parser.add_subparsers(dest="model_command", metavar="ACTION")
    model.required = True
    tiny = model.add_parser("make-tiny", help="write a tiny random-weight checkpoint (for tests and demos)")
    tiny.add_argument("path", type=Path, help="folder to write")
    tiny.add_argument("--arch", default="llama", choices=["llama", "qwen2"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--num-layers", type=int, default=2)
    tiny.add_argument("--num-heads", type=int, default=4)
    tiny.add_argument("--num-kv-heads", type=int, default=2)
    tiny.add_argument("--intermediate-size", type=int, default=128)
    tiny.add_argument("--vocab-size", type=int, default=1024)
    tiny.add_argument("--sharded", action="store_true", help="split the weights into shards with an index")

    center = sub.add_parser(
        "center", help="run one center process (arguments of isthmus.center.main)", add_help=False
    )
    center.add_argument("args", nargs=argparse.REMAINDER)
    edge = sub.add_parser("edge", help="run one edge node from its config", add_help=False)
    edge.add_argument("args", nargs=argparse.REMAINDER)
    router = sub.add_parser("router", help="eval, train or explain the escalation router", add_help=False)
    router.add_argument("args", nargs=argparse.REMAINDER)
    weights = sub.add_parser("weights", help="write a checkpoint's manifest, or sync one", add_help=False)
    weights.add_argument("args", nargs=argparse.REMAINDER)
    rollout = sub.add_parser("rollout", help="canary rollout of an edge's A/B candidate pool", add_help=False)
    rollout.add_argument("args", nargs=argparse.REMAINDER)

    up = sub.add_parser("up", help="start a whole network (center TP=2 + edge) on this machine")
    _network_args(up)
    up.add_argument("--port", type=int, default=4433, help="edge QUIC port (0: any free one; default 4433)")
    up.add_argument("--http-port", type=int, default=9090, help="edge HTTP port (default 9090)")
    up.add_argument("--center-port", type=int, default=50051, help="center gRPC port (default 50051)")
    up.add_argument("--tp", type=int, default=2, help="center tensor-parallel size (default 2)")

    demo = sub.add_parser("demo", help="up, a handful of prompts, a summary table, down")
    _network_args(demo)

    chat = sub.add_parser("chat", help="stream an answer from an edge (interactive without a prompt)")
    chat.add_argument("prompt", nargs="?", help="the prompt; leave out for an interactive chat")
    chat.add_argument("--edge", help="edge QUIC address host:port (default: the running `isthmus up`)")
    chat.add_argument("--ca", help="CA certificate (PEM) of the edge (default: the running `isthmus up`'s)")
    chat.add_argument("--api-key", help="API key, when the edge requires one")
    chat.add_argument("--tier", default="auto", choices=["auto", "edge", "center"])
    chat.add_argument("--max-tokens", type=int, default=64)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help=argparse.SUPPRESS)
    return p


def _network_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--edge-model", type=Path, help="edge checkpoint folder (default: a tiny one, nf4)")
    p.add_argument("--center-model", type=Path, help="center checkpoint folder (default: a tiny one)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help=f"where default models, certificates and state live (default {DEFAULT_CACHE_DIR})",
    )


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Value checks argparse cannot do; each error names the flag."""
    if a.command == "model":
        sizes = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size")
        for flag in sizes:
            if getattr(a, flag) < 1:
                p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(a, flag)}")
        if a.hidden_size % a.num_heads:
            p.error(f"--hidden-size {a.hidden_size} must be a multiple of --num-heads {a.num_heads}")
        if a.num_heads % a.num_kv_heads:
            p.error(f"--num-heads {a.num_heads} must be a multiple of --num-kv-heads {a.num_kv_heads}")
        if a.vocab_size < 300:
            p.error(f"--vocab-size must be >= 300 (bytes plus special tokens), got {a.vocab_size}")
    if a.command == "up":
        ports = (("--port", a.port), ("--http-port", a.http_port), ("--center-port", a.center_port))
        for flag, value in ports:
            if not 0 <= value <= 65535:
                p.error(f"{flag} must be a port number 0..65535 (0: any free one), got {value}")
        if a.tp < 1:
            p.error(f"--tp must be >= 1, got {a.tp}")
    if a.command in ("up", "demo"):
        for flag, value in (("--edge-model", a.edge_model), ("--center-model", a.center_model)):
            if value is not None and not (value.expanduser() / "config.json").is_file():
                p.error(
                    f"{flag}: {value} is not a checkpoint folder (no config.json); "
                    "give a Hugging Face model folder or leave the flag out for the default"
                )
    if a.command == "chat":
        if a.max_tokens < 1:
            p.error(f"--max-tokens must be >= 1, got {a.max_tokens}")
        if not 0.0 <= a.temperature <= 100.0:
            p.error(f"--temperature must be between 0 and 100, got {a.temperature}")
        if a.ca is not None and not Path(a.ca).is_file():
            p.error(f"--ca: no such file {a.ca}")
        if a.prompt is not None and not a.prompt.strip():
            p.error("PROMPT is empty: give some text, or leave it out for an interactive chat")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # the tiers parse their own arguments (argparse's REMAINDER drops leading flags)
    if args[:2] == ["center", "swap"]:
        from .swap import main as swap_main

        return swap_main(args[2:])
    if args and args[0] == "center":
        from isthmus.center.main import main as center_main

        return int(center_main(args[1:]) or 0)
    if args and args[0] == "edge":
        from isthmus.edge.main import main as edge_main

        return int(edge_main(args[1:]) or 0)
    if args and args[0] == "router":
        from .router import main as router_main

        return router_main(args[1:])
    if args and args[0] == "weights":
        from .weights import main as weights_main

        return weights_main(args[1:])
    if args and args[0] == "rollout":
        from .rollout import main as rollout_main

        return rollout_main(args[1:])
    parser = build_parser()
    a = parser.parse_args(args)
    check_args(parser, a)
    if a.command == "model":
        return _make_tiny(a)
    if a.command == "chat":
        return _chat(parser, a)
    return _run_network(a)


def _make_tiny(a: argparse.Namespace) -> int:
    from isthmus.models.tiny_checkpoint import make_tiny_checkpoint

    print(f"isthmus: writing a tiny {a.arch} checkpoint to {a.path} ...", flush=True)
    shard = 64 * 1024 if a.sharded else None  # bytes per shard: several shards even for tiny models
    try:
        path = make_tiny_checkpoint(
            a.path,
            a.arch,
            seed=a.seed,
            hidden_size=a.hidden_size,
            num_layers=a.num_layers,
            num_heads=a.num_heads,
            num_kv_heads=a.num_kv_heads,
            intermediate_size=a.intermediate_size,
            vocab_size=a.vocab_size,
            max_shard_size=shard,
        )
    except (OSError, ValueError) as exc:
        print(f"isthmus model make-tiny: error: {exc}", file=sys.stderr)
        return 1
    print(f"isthmus: wrote {path} (random weights)")
    return 0


def _chat(parser: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    from .chat import run_chat

    address, ca = a.edge, a.ca
    if address is None:
        state = read_state(a.cache_dir)
        if state is None:
            parser.error(
                f"--edge not given and no running `isthmus up` found ({a.cache_dir}/up.json); "
                "start one with `isthmus up` or pass --edge HOST:PORT --ca CERT"
            )
        address = str(state["edge"])
        ca = ca or state.get("ca")
    sampling = {"tier": a.tier, "max_tokens": a.max_tokens, "temperature": a.temperature}
    try:
        return asyncio.run(run_chat(address, ca, a.api_key, a.prompt, sampling))
    except KeyboardInterrupt:
        return 130


def _run_network(a: argparse.Namespace) -> int:
    from .network import LocalNetwork, NetworkError, NetworkSettings

    settings = NetworkSettings(
        cache_dir=a.cache_dir.expanduser(), edge_model=a.edge_model, center_model=a.center_model
    )
    if a.command == "up":
        settings.port, settings.http_port, settings.center_port, settings.tp = (
            a.port,
            a.http_port,
            a.center_port,
            a.tp,
        )
    else:  # the demo takes whatever ports are free
        settings.port = settings.http_port = settings.center_port = 0
    net = LocalNetwork(settings)
    try:
        return asyncio.run(_up(net) if a.command == "up" else _demo(net))
    except NetworkError as exc:
        print(f"isthmus {a.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C during the demo: the network was stopped on the way out
        return 130


async def _demo(net: object) -> int:
    from .demo import run_demo

    return await run_demo(net)  # type: ignore[arg-type]


async def _up(net: object) -> int:
    from .network import LocalNetwork

    assert isinstance(net, LocalNetwork)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = loop.create_task(net.start())
        stopping = loop.create_task(stop.wait())
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 0
        starting.result()
        state = net.write_state()
        node = net.node
        print(
            f"""
isthmus is up (Ctrl-C stops it):
  edge QUIC    {node.quic_address}   (TLS; CA certificate {net.ca_path})
  edge HTTP    http://{node.http_address}   (/metrics, /healthz, /readyz, OpenAI API under /v1)
  center gRPC  {net.center_address}   (TP={net.settings.tp}, log {net.log_path})
  state        {state}
talk to it:
  isthmus chat "Hello there"
  isthmus chat "Write a Python function that sorts a list" --tier center
  isthmus chat                      # interactive
""",
            flush=True,
        )
        await stopping
        print("isthmus: stopping ...", flush=True)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await net.stop()


if __name__ == "__main__":
    sys.exit(main())
