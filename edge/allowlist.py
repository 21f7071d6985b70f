"""Which source addresses a listener serves: a list of CIDRs (sans-IO).

An empty list serves everyone (the default); otherwise an address is served only when one of the
networks contains it. IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack socket
reports) are checked as the IPv4 address they carry, and an IPv6 zone (``fe80::1%eth0``) is
ignored. Anything that is not an address is refused. The QUIC listener checks it when a
connection's handshake completes, before the connection is admitted (`quic_server.py`); the HTTP
listener in a middleware that runs before every handler (`http.py`). Neither reaches the model.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str], field: str = "allow") -> list[Network]:
    """The networks in `cidrs`; a bad one raises ValueError naming ``field[i]``."""
    networks: list[Network] = []
    for i, cidr in enumerate(cidrs):
        try:
            networks.append(ipaddress.ip_network(str(cidr).strip(), strict=False))
        except ValueError:
            raise ValueError(f'{field}[{i}]: expected a CIDR such as "10.0.0.0/8", got {cidr!r}') from None
    return networks


class Allowlist:
    """CIDRs a listener serves; empty: every address."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks = parse_networks(cidrs)
        self.num_refused = 0  # addresses refused so far

    @property
    def is_open(self) -> bool:
        return not self.networks

    def allows(self, address: str) -> bool:
        """True when `address` may be served (counts a refusal otherwise)."""
        if not self.networks:
            return True
        try:
            addr = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            self.num_refused += 1
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in net for net in self.networks):
            return True
        self.num_refused += 1
        return False
