"""Webhooks go to public addresses only (no SSRF into our own network).

An endpoint whose host is, or resolves to, a loopback, private (RFC 1918, CGNAT),
link-local (the cloud metadata service 169.254.169.254 included), unique-local, multicast,
unspecified, reserved or otherwise not globally routable address is refused when it is
registered (:func:`check_destination`), and again at every attempt: the delivery worker's
connections go through :class:`PublicOnlyBackend`, which resolves the host itself, refuses
the connection if any of its addresses is not public, and connects to the address it checked
(so a DNS answer that changes between the check and the connection cannot get past it).
``RF_NOTIFIER_WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` turns both checks off (local development).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import httpcore
import httpx

from contracts.errors import WebhookUrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Longest wait for a DNS answer when an endpoint is registered.
RESOLVE_SECONDS = 5.0
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


def refusal(ip: IPAddress) -> str | None:
    """Why webhooks may not go to ``ip`` (``loopback``, ``private``, ...), or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unique-local", isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (a literal: itself)."""
    found = literal(host)
    if found is not None:
        return [found]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(ipaddress.ip_address(i[4][0]) for i in infos))


def first_refused(addresses: Iterable[IPAddress]) -> tuple[IPAddress, str] | None:
    for ip in addresses:
        why = refusal(ip)
        if why is not None:
            return ip, why
    return None


async def check_destination(url: str) -> None:
    """:class:`WebhookUrlNotAllowed` if the URL's host is or resolves to an address that is
    not public. A name that does not resolve now is accepted: every attempt checks again."""
    parts = httpx.URL(url)
    host, port = parts.host, parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(RESOLVE_SECONDS):
            addresses = await resolve(host, port)
    except (OSError, TimeoutError):
        return
    refused = first_refused(addresses)
    if refused is not None:
        ip, why = refused
        raise WebhookUrlNotAllowed(
            f"{url!r}: {host} is {why} ({ip}): webhooks go to public addresses only",
            url=url,
            address=str(ip),
            reason=why,
        )


class AddressNotAllowed(Exception):
    """A connection the worker refused to make: the host resolves to an address that is not
    public. Not retried: the delivery is dead-lettered (the user fixes DNS, then replays)."""

    def __init__(self, host: str, ip: IPAddress, why: str) -> None:
        super().__init__(
            f"refused to connect: {host} resolves to {ip} ({why});"
            " webhooks go to public addresses only"
        )


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address, then connects to a checked one."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve(host, port)
        except TimeoutError as e:
            raise httpcore.ConnectTimeout(f"no DNS answer for {host}") from e
        except OSError as e:
            raise httpcore.ConnectError(f"{host} does not resolve: {e}") from e
        refused = first_refused(addresses)
        if refused is not None:
            raise AddressNotAllowed(host, *refused)
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks do not go to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PublicOnlyTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over :class:`PublicOnlyBackend` (TLS still checks the host name:
    httpcore verifies the certificate against the URL's host, not the address)."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        # httpx 0.28 (pinned) builds its pool here; the same one, over our backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PublicOnlyBackend(),
        )
