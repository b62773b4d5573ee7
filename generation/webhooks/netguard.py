"""SSRF guard for webhook URLs: which addresses a delivery may reach, and an HTTP POST pinned to a checked address.

A URL's host is resolved and every address must be public (not loopback, private, link-local, shared, multicast,
reserved or a cloud metadata address) unless it lies in settings.TURBO_WEBHOOK_ALLOWED_NETWORKS. The delivery
connects to the address that was checked (no second lookup that DNS rebinding could answer differently), keeps
the URL's host name for the Host header and the TLS certificate check, and never follows a redirect.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

MAX_URL_CHARS = 2000
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The URL is malformed or its host resolves to an address deliveries may not reach (message for a person)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line


@lru_cache(maxsize=8)
def _networks(spec: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in spec)


def allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return _networks(tuple(settings.TURBO_WEBHOOK_ALLOWED_NETWORKS))


def address_allowed(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in network for network in allowed_networks()):
        return True
    # is_global is False for loopback, RFC 1918, link-local (169.254.169.254, the metadata address), 100.64/10
    # (shared, also Alibaba's metadata), unique-local IPv6 (fd00:ec2::254), reserved and unspecified addresses.
    return address.is_global and not address.is_multicast


def parse(url: str) -> Target:
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise AddressRefused(f"webhook_url must be a URL of at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise AddressRefused("webhook_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused("webhook_url must be an http:// or https:// URL with a host name")
    if parts.username or parts.password:
        raise AddressRefused("webhook_url must not carry a user name or password; authenticate with the signature")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def resolve(target: Target) -> IPAddress:
    """The first address of the host, after checking that every address it resolves to is allowed."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise AddressRefused(f"the webhook host {target.host!r} cannot be resolved") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    refused = [str(a) for a in addresses if not address_allowed(a)]
    if not addresses or refused:
        raise AddressRefused(
            f"the webhook host {target.host!r} resolves to an address that is not public ({', '.join(refused)}); "
            "loopback, private, link-local and metadata addresses are refused")
    return addresses[0]


def check_url(url: str) -> Target:
    """Parse and resolve `url` now (at job creation): raises AddressRefused with a message for the caller."""
    target = parse(url)
    resolve(target)
    return target


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: IPAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((str(self._address), self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: IPAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((str(self._address), self.port), self.timeout)
        # Certificate and host name are checked against the URL's host, not the address connected to.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: bytes, headers: dict[str, str], *, timeout: float) -> int:
    """POST `body` to `url` on a checked address; returns the status code (a redirect is just its 3xx code).
    Raises AddressRefused, OSError (connection, timeout, TLS) or http.client.HTTPException."""
    target = parse(url)
    address = resolve(target)
    connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(target.host, target.port, address, timeout)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(4096)  # a little of the answer, so a well-behaved receiver sees a clean close
        return response.status
    finally:
        connection.close()
