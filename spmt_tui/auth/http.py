"""HTTP client that MSAL uses for every request to the identity provider.

MSAL accepts any object with ``get`` and ``post`` methods shaped like ``requests.Session``'s
(``http_client=``). This one adds the traffic decoration that SharePoint Online requests and
passes the tenant profile's CA bundle on each request, because ``requests`` lets the
``REQUESTS_CA_BUNDLE`` environment variable override ``Session.verify`` when the session reads
the environment, which it must do to honour ``HTTPS_PROXY``.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from spmt_tui import __version__
from spmt_tui.proxy import proxy_for_url

logger = logging.getLogger("spmt.auth")

USER_AGENT = f"NONISV|spmt-tui|spmt-tui/{__version__}"
DEFAULT_TIMEOUT = 30.0  # seconds, for connect and for each read


def is_loopback_url(url: str) -> bool:
    """Return True when the URL's host is ``localhost`` or a loopback IP address."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthHttpClient:
    """``requests``-based HTTP client for MSAL's ``http_client=`` parameter.

    Every request carries ``User-Agent: NONISV|spmt-tui|spmt-tui/<version>`` and
    ``verify=<ca_bundle>`` (or ``verify=True`` without a bundle). Requests go through a session
    that reads the environment, so ``HTTPS_PROXY`` and ``NO_PROXY`` apply, except requests to a
    loopback host (the sandbox tenant) when the proxy is on another machine: those use a second
    session that ignores the environment, so sandbox traffic never leaves this machine. The
    rule is ``spmt_tui.proxy.proxy_for_url``, which REST and storage requests follow too.
    """

    def __init__(
        self,
        ca_bundle: str | Path | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = USER_AGENT,
    ) -> None:
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise FileNotFoundError(
                f"CA bundle {ca_bundle} not found: check 'ca_bundle' in the tenant profile"
            )
        self.verify: str | bool = str(ca_bundle) if ca_bundle is not None else True
        self.timeout = timeout
        self.user_agent = user_agent
        self._session = requests.Session()
        self._loopback_session = requests.Session()
        self._loopback_session.trust_env = False
        for session in (self._session, self._loopback_session):
            session.headers["User-Agent"] = user_agent

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        headers["User-Agent"] = self.user_agent
        kwargs.setdefault("timeout", self.timeout)
        # A caller's own verify= would bypass the profile's CA bundle, so it is replaced.
        kwargs["verify"] = self.verify
        direct = is_loopback_url(url) and proxy_for_url(url) is None
        session = self._loopback_session if direct else self._session
        response = session.request(method, url, headers=headers, **kwargs)
        logger.debug("%s %s -> %d", method, urlsplit(url)._replace(query="").geturl(),
                     response.status_code)
        return response

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> requests.Response:
        return self._request("GET", url, params=params, headers=headers, **kwargs)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> requests.Response:
        return self._request("POST", url, params=params, data=data, headers=headers, **kwargs)

    def close(self) -> None:
        self._session.close()
        self._loopback_session.close()
