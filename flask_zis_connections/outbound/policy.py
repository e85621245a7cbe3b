"""The rules an outbound call follows, and which addresses count as public.

:class:`OutboundPolicy` carries the per-deployment limits (total timeout, body cap,
which internal destinations are allowed); :func:`is_public_address` is the
server-side request forgery check run on every address a host name resolves to.
Neither touches the network, so both can be read and tested on their own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "IPAddress",
    "IPNetwork",
    "OutboundPolicy",
    "is_public_address",
]

#: Default for ``ZIS_MAX_PROVIDER_RESPONSE_BYTES``.
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
#: How often a call's waits (watchdog, connect, name lookup) re-read a caller-supplied
#: deadline, which may move earlier.
DEADLINE_POLL_SECONDS = 0.05

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ranges the standard library's ``is_global`` lets through on Python 3.11 but that are
#: not reachable public destinations.
_EXTRA_NON_PUBLIC: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("100.64.0.0/10"),  # CGNAT shared address space (RFC 6598)
    ipaddress.IPv4Network("192.0.0.0/24"),  # IETF protocol assignments (RFC 6890)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.IPv6Network("fec0::/10"),  # deprecated site-local
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)


@dataclass(frozen=True)
class OutboundPolicy:
    """The rules every outbound call follows.

    ``allowed_private_hosts`` holds host names (matched case-insensitively, without a
    trailing dot) whose addresses are accepted even when non-public, and IP addresses
    or CIDR networks (``"10.0.0.0/8"``) whose members are accepted whatever name led to
    them.  Any iterable of strings is accepted and normalized to a lower-case frozenset.
    """

    #: Total seconds per call: resolution, connect, TLS, headers and body (``ZIS_HTTP_TIMEOUT``).
    timeout: float
    #: Largest (decoded) body accepted (``ZIS_MAX_PROVIDER_RESPONSE_BYTES``).
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    #: Loopback and private destinations allowed (``ZIS_ALLOW_INSECURE_HTTP``, development only).
    allow_private: bool = False
    #: Internal hosts, addresses or networks allowed anyway (``ZIS_ALLOWED_PRIVATE_HOSTS``).
    allowed_private_hosts: frozenset[str] = frozenset()
    _allowed_names: frozenset[str] = field(init=False, repr=False, compare=False)
    _allowed_networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("OutboundPolicy.timeout must be positive.")
        if self.max_response_bytes < 0:
            raise ValueError("OutboundPolicy.max_response_bytes must not be negative.")
        entries = frozenset(_normalize_host(str(h)) for h in self.allowed_private_hosts if str(h).strip())
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry)
        object.__setattr__(self, "allowed_private_hosts", entries)
        object.__setattr__(self, "_allowed_names", frozenset(names))
        object.__setattr__(self, "_allowed_networks", tuple(networks))

    def permits(self, host: str, addresses: Iterable[IPAddress]) -> IPAddress | None:
        """The first of ``addresses`` (what ``host`` resolved to) this policy refuses, or None."""
        if self.allow_private or _normalize_host(host) in self._allowed_names:
            return None
        for address in addresses:
            if is_public_address(address):
                continue
            plain = _unmapped(address)
            if any(plain in network for network in self._allowed_networks):
                continue
            return address
        return None


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address an outbound call may connect to.

    Refused: loopback, private (RFC 1918, unique-local ``fc00::/7``), link-local
    (``169.254.0.0/16``, ``fe80::/10``), CGNAT ``100.64.0.0/10``, multicast, reserved,
    unspecified (``0.0.0.0``, ``::``), documentation and benchmarking ranges; an IPv6
    address embedding an IPv4 one (IPv4-mapped, NAT64, 6to4) is judged by that IPv4
    address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and not is_public_address(address.sixtofour):
            return False
        if address.teredo is not None or address.is_site_local:
            return False
    if any(address in network for network in _EXTRA_NON_PUBLIC if network.version == address.version):
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )
