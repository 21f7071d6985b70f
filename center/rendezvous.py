"""torchrun whose rendezvous store listens on the address it is given, not on every interface.

torchrun's static rendezvous makes node rank 0's agent host a c10d ``TCPStore``; the store binds
``::`` (all interfaces, IPv4 too) whatever ``--master-addr`` says, so a center told to stay on
loopback still had its rendezvous reachable from the network. Here the listening socket is bound
by us to exactly ``ADDR:PORT`` and handed to the store (``master_listen_fd``).

``python -m isthmus.center.rendezvous [torchrun options] -m isthmus.center.main ...`` is torchrun
with one more rendezvous backend, ``isthmus-static``: the static rendezvous with that bound store.
It takes ``--rdzv-backend isthmus-static --rdzv-endpoint ADDR:PORT --rdzv-conf rank=NODE_RANK``
(the launch script passes them). With a loopback address it also keeps gloo's and NCCL's sockets
on the loopback interface (``GLOO_SOCKET_IFNAME=lo``, ``NCCL_SOCKET_IFNAME=lo`` unless set).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from isthmus.center.auth import is_loopback

BACKEND = "isthmus-static"
LISTEN_BACKLOG = 512  # pending connections on the store's socket (every rank of every node connects)


def bound_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on exactly ``host:port`` (raises OSError naming what failed)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        message = f"rendezvous store: cannot listen on {host}:{port}: {exc.strerror}"
        raise OSError(exc.errno, message) from None
    return sock


def bound_tcp_store(host: str, port: int, world_size: int, timeout: datetime.timedelta) -> Any:
    """A master ``TCPStore`` listening on ``host:port`` only (the store owns the socket)."""
    from torch.distributed import TCPStore

    sock = bound_listener(host, port)
    return TCPStore(host, port, world_size, True, timeout, multi_tenant=True, master_listen_fd=sock.detach())


def _create_handler(params: Any) -> Any:
    from torch.distributed import PrefixStore, TCPStore
    from torch.distributed.elastic.rendezvous import (
        RendezvousInfo,
        RendezvousStoreInfo,
        static_tcp_rendezvous,
    )

    class BoundStaticRendezvous(static_tcp_rendezvous.StaticTCPRendezvous):
        """The static rendezvous; node rank 0's store is a `bound_tcp_store`."""

        bound_store: Any = None

        def get_backend(self) -> str:
            return BACKEND

        def next_rendezvous(self) -> Any:
            # the parent's own check (`if not self._store`) reads an empty store as missing
            # (a Store's truth is its key count), so the store is kept and tested here instead
            if self.bound_store is None:
                addr, port, size = self.master_addr, self.master_port, self.world_size
                if self.rank == 0:
                    self.bound_store = bound_tcp_store(addr, port, size, self.timeout)
                else:
                    self.bound_store = TCPStore(addr, port, size, False, self.timeout, multi_tenant=True)
            store = PrefixStore(self.run_id, self.bound_store)
            bootstrap = RendezvousStoreInfo(self.master_addr, self.master_port)
            return RendezvousInfo(store, self.rank, self.world_size, bootstrap)

    plain: Any = static_tcp_rendezvous.create_rdzv_handler(params)  # parses and checks the parameters
    # --rdzv-conf rank=N arrives as the string "N"
    return BoundStaticRendezvous(plain.master_addr, plain.master_port, int(plain.rank), plain.world_size,
                                 plain.run_id, int(plain.timeout.total_seconds()))


def register() -> None:
    """Make ``--rdzv-backend isthmus-static`` known to torchrun in this process (idempotent)."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    rendezvous_handler_registry.register(BACKEND, _create_handler)


def _endpoint_host(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        for flag in ("--rdzv-endpoint", "--rdzv_endpoint"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1].rsplit(":", 1)[0]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1].rsplit(":", 1)[0]
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """torchrun's main with the ``isthmus-static`` backend registered."""
    args = list(sys.argv[1:] if argv is None else argv)
    host = _endpoint_host(args)
    if host is not None and is_loopback(host):  # the ranks' own sockets on loopback too
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    register()
    from torch.distributed.run import main as torchrun_main

    torchrun_main(args)


if __name__ == "__main__":
    main()
