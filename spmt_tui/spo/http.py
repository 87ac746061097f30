"""HTTP plumbing for SharePoint calls: TLS, User-Agent, throttling and retries.

SharePoint Online throttles with 429 and 503 plus ``Retry-After`` (seconds), and may send
``RateLimit-Reset``; when both are present the larger wins. Other transient failures (dropped
connections, 502, 504) back off exponentially with full jitter. Throttling is counted and
reported through a callback, never as an item failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

from spmt_tui import __version__
from spmt_tui.logs import redact
from spmt_tui.proxy import proxy_for_url

log = logging.getLogger("spmt.spo.http")

USER_AGENT = f"NONISV|spmt-tui|spmt-tui/{__version__}"
RETRY_STATUSES = {429, 503}
TRANSIENT_STATUSES = {502, 504}


def ssl_context(ca_bundle: str | Path | None) -> ssl.SSLContext:
    """Return a verifying TLS context that trusts ``ca_bundle`` (or the system store if None)."""
    if ca_bundle:
        return ssl.create_default_context(cafile=str(ca_bundle))
    return ssl.create_default_context()


def new_session(ca_bundle: str | Path | None, *, limit: int = 64) -> aiohttp.ClientSession:
    """Create an aiohttp session with TLS verification and the UA.

    The session does not read proxies from the environment: ``SharePointHttp`` passes each
    request's proxy from ``proxy_for_url``, which keeps loopback traffic off a remote proxy.
    """
    connector = aiohttp.TCPConnector(ssl=ssl_context(ca_bundle), limit=limit)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=300, sock_connect=30),
    )


class HttpError(Exception):
    """A SharePoint call failed with a status that retrying will not fix."""

    def __init__(self, method: str, url: str, status: int, code: str, message: str) -> None:
        self.method = method
        self.url = redact(url)
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{method} {self.url} failed: HTTP {status} {code}: {message}")


@dataclass
class RetryPolicy:
    """How often and how long to retry a call; ``max_attempts`` counts the first try."""

    max_attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 120.0
    max_throttle_wait: float = 3600.0   # give up on one call after this much Retry-After in total
    random: random.Random = field(default_factory=random.Random)

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the given attempt number (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return self.random.uniform(0, ceiling)


def throttle_delay(headers: Any, fallback: float) -> float:
    """Seconds to wait after a 429 or 503: the larger of Retry-After and RateLimit-Reset."""
    delays = []
    for name in ("Retry-After", "RateLimit-Reset"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delays.append(max(0.0, float(value)))
        except ValueError:
            continue  # An HTTP date in Retry-After is not used by SharePoint; ignore it.
    return max(delays) if delays else fallback


ThrottleCallback = Callable[[float, int], None]
TokenSource = Callable[[], Awaitable[str]]


@dataclass
class JsonResponse:
    status: int
    data: Any
    headers: Any


class SharePointHttp:
    """Authenticated JSON calls to one SharePoint host with retries and throttling."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_source: TokenSource,
        *,
        policy: RetryPolicy | None = None,
        on_throttle: ThrottleCallback | None = None,
    ) -> None:
        self.session = session
        self.token_source = token_source
        self.policy = policy or RetryPolicy()
        self.on_throttle = on_throttle
        self.throttled = 0
        self.throttled_seconds = 0.0

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        retry_500: bool = True,
        expect_json: bool = True,
        headers: dict[str, str] | None = None,
    ) -> JsonResponse:
        """Send one call, retrying throttling and transient failures per the policy.

        ``headers`` are added to each attempt, for example ``IF-MATCH`` and ``X-HTTP-Method``.
        """
        extra_headers = dict(headers or {})
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            token = await self.token_source()
            headers = {
                **extra_headers,
                "Authorization": f"Bearer {token}",
                "Accept": "application/json;odata=verbose",
            }
            if json_body is not None:
                headers["Content-Type"] = "application/json;odata=verbose"
            try:
                async with self.session.request(method, url, json=json_body, headers=headers,
                                                proxy=proxy_for_url(url)) as response:
                    if response.status in RETRY_STATUSES:
                        delay = throttle_delay(response.headers, self.policy.backoff(attempt))
                        self._count_throttle(delay, response.status)
                        waited += delay
                        if waited > self.policy.max_throttle_wait:
                            raise HttpError(method, url, response.status, "throttled",
                                            f"still throttled after {waited:.0f} s of Retry-After")
                        log.info("%s %s throttled (%s), retrying in %.1f s", method,
                                 redact(url), response.status, delay)
                        await asyncio.sleep(delay)
                        attempt -= 1  # Throttling does not use up the transient-error attempts.
                        continue
                    if response.status in TRANSIENT_STATUSES or (response.status == 500 and retry_500):
                        if attempt < self.policy.max_attempts:
                            delay = self.policy.backoff(attempt)
                            log.warning("%s %s returned %s, retry %d in %.1f s", method,
                                        redact(url), response.status, attempt, delay)
                            await asyncio.sleep(delay)
                            continue
                    if response.status >= 400:
                        code, message = await _error_details(response)
                        raise HttpError(method, url, response.status, code, message)
                    if not expect_json:
                        return JsonResponse(response.status, await response.read(), response.headers)
                    text = await response.text()
                    data = _parse_json(text) if text else None
                    return JsonResponse(response.status, data, response.headers)
            except (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError, asyncio.TimeoutError,
                    ConnectionResetError) as error:
                if attempt >= self.policy.max_attempts:
                    raise HttpError(method, url, 0, "connection",
                                    f"{type(error).__name__}: {error} after {attempt} attempts") from error
                delay = self.policy.backoff(attempt)
                log.warning("%s %s: %s, retry %d in %.1f s", method, redact(url),
                            type(error).__name__, attempt, delay)
                await asyncio.sleep(delay)

    def _count_throttle(self, delay: float, status: int) -> None:
        self.throttled += 1
        self.throttled_seconds += delay
        if self.on_throttle is not None:
            self.on_throttle(delay, status)


def _parse_json(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return {"raw": text[:500]}


async def _error_details(response: aiohttp.ClientResponse) -> tuple[str, str]:
    text = await response.text()
    data = _parse_json(text) if text else {}
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, dict):
            message = message.get("value")
        return str(error.get("code", "")), str(message or text[:300])
    if isinstance(data, dict) and "error_description" in data:
        return str(data.get("error", "")), str(data["error_description"])
    return "", text[:300] or response.reason or ""


def monotonic() -> float:
    return time.monotonic()
