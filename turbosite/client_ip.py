"""The address of the real client, for login lockouts (django-axes calls `client_ip`).

Behind a reverse proxy every request's REMOTE_ADDR is the proxy's, so lockouts keyed on it would lock out everyone
at once. X-Forwarded-For is believed only when the request comes from a proxy listed in settings.TRUSTED_PROXIES
(addresses or CIDR networks): walking the header from the right, the first address that is not a trusted proxy is
the client. Anyone else's X-Forwarded-For is ignored, since a client can write whatever it likes there.
"""

from __future__ import annotations

import functools
import ipaddress

from django.conf import settings
from django.http import HttpRequest

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[_Network, ...]) -> bool:
    return any(address in network for network in networks)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address; None when the request has none (a login made by code, not over HTTP)."""
    remote = _address(request.META.get("REMOTE_ADDR", "") if request is not None else "")
    if remote is None:
        return None
    networks = _networks(tuple(getattr(settings, "TRUSTED_PROXIES", ())))
    if not networks or not _trusted(remote, networks):
        return str(remote)
    hops = [hop for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break  # a garbled entry: nothing to its left can be trusted
        if not _trusted(address, networks):
            return str(address)
    return str(remote)
