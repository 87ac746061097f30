"""Which HTTP proxy a request uses: one rule for MSAL (requests), REST (aiohttp) and Azure Storage.

The proxy comes from the environment as Python's ``urllib`` reads it. ``https_proxy`` or
``HTTPS_PROXY`` applies to https URLs, ``http_proxy`` to http and ``all_proxy`` to both, and the
lower-case name wins. Hosts that ``no_proxy`` or ``NO_PROXY`` lists connect directly.

On top of that, a loopback target (``localhost``, 127.0.0.0/8, ::1, such as the sandbox tenant)
bypasses a proxy on another machine, which could not reach it, but uses a proxy on loopback.
Python's urllib, requests 2.x and aiohttp 3.x do not exempt loopback addresses by themselves
(their bypass list is ``no_proxy`` only), so a proxy setting meant for the internet would
otherwise send sandbox traffic to another machine.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from urllib.parse import urlsplit


def is_loopback_host(host: str | None) -> bool:
    """Return True for ``localhost`` and loopback IP addresses."""
    name = (host or "").strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def proxy_for_url(url: str) -> str | None:
    """Return the proxy URL a request to ``url`` goes through, or None to connect directly."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy:
        return None
    if parts.hostname and urllib.request.proxy_bypass_environment(parts.hostname, proxies):
        return None
    if is_loopback_host(parts.hostname) and not is_loopback_host(urlsplit(proxy).hostname):
        return None
    return proxy
