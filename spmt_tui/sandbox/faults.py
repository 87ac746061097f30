"""Fault injection for the sandbox tenant.

A fault schedule is a set of ``kind=rate`` pairs, each rate a probability from 0 to 1, given on
the command line (``--faults 429=0.1,503=0.05,drop=0.02``) or changed at run time through the
admin endpoint. HTTP kinds apply to SharePoint REST calls, and job kinds to the import timer job.
Storage kinds apply to the client's blob and queue requests, through the proxy in
``storage_proxy.py``. That proxy runs only when the start-up schedule names a storage kind (a rate
of 0 is enough), so the admin endpoint can change storage rates only in such a sandbox.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("spmt.sandbox.faults")

FAULT_KINDS: dict[str, str] = {
    "429": "answer a REST call with 429 Too Many Requests and Retry-After",
    "503": "answer a REST call with 503 Server Too Busy and Retry-After",
    "drop": "close the connection of a REST call without an answer",
    "slow": "delay a REST call by --slow-seconds (default 2) before answering",
    "sas_expired": "provision containers whose SAS has already expired",
    "fatal": "end an import job with JobFatalError",
    "postpone": "post JobPostponed before a job starts",
    "lost_queue": "drop an event from the job's Azure queue (GetMigrationJobProgress still has it)",
    "storage_503": "answer a blob or queue request with 503 ServerBusy (Azure's XML error)",
    "storage_500": "answer a blob or queue request with 500 OperationTimedOut (Azure's XML error)",
    "storage_drop": "close the connection of a blob or queue request halfway through a body",
}

HTTP_KINDS = ("429", "503", "drop", "slow")
STORAGE_KINDS = ("storage_503", "storage_500", "storage_drop")


def wants_storage_proxy(rates: dict[str, float]) -> bool:
    """Return True when a fault schedule names a storage kind, at any rate."""
    return any(kind in rates for kind in STORAGE_KINDS)


class FaultSpecError(ValueError):
    pass


def parse_fault_spec(spec: str) -> dict[str, float]:
    """Parse ``kind=rate,kind=rate`` into a mapping, rejecting unknown kinds and bad rates."""
    rates: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in spec.split(","))):
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if not sep:
            raise FaultSpecError(f"invalid fault {part!r}: expected kind=rate, e.g. 429=0.1")
        if kind not in FAULT_KINDS:
            known = ", ".join(FAULT_KINDS)
            raise FaultSpecError(f"unknown fault kind {kind!r}: use one of {known}")
        try:
            rate = float(value)
        except ValueError:
            raise FaultSpecError(f"invalid rate {value!r} for {kind}: use a number from 0 to 1") from None
        if not 0.0 <= rate <= 1.0:
            raise FaultSpecError(f"invalid rate {rate} for {kind}: use a number from 0 to 1")
        rates[kind] = rate
    return rates


@dataclass
class FaultCounters:
    injected: dict[str, int]


class Faults:
    """Current fault rates, a seeded random source, and counts of what was injected."""

    def __init__(
        self,
        rates: dict[str, float] | None = None,
        *,
        seed: int | None = None,
        retry_after: int = 1,
        slow_seconds: float = 2.0,
    ) -> None:
        self._lock = threading.Lock()
        self.rates: dict[str, float] = dict(rates or {})
        self.random = random.Random(seed)
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.injected: dict[str, int] = {kind: 0 for kind in FAULT_KINDS}
        # Requests seen where faults may be injected, by name (e.g. blob_requests).
        self.observed: dict[str, int] = {}

    def set_rates(self, rates: dict[str, float]) -> None:
        with self._lock:
            self.rates = dict(rates)
        log.info("fault rates set to %s", rates or "none")

    def roll(self, kind: str) -> bool:
        """Return True (and count it) when a fault of ``kind`` should happen now."""
        with self._lock:
            rate = self.rates.get(kind, 0.0)
            if rate <= 0.0 or self.random.random() >= rate:
                return False
            self.injected[kind] += 1
        log.info("injecting fault %s", kind)
        return True

    def observe(self, name: str) -> None:
        """Count one request seen by an injection point, so tests can tell a rate from a count."""
        with self._lock:
            self.observed[name] = self.observed.get(name, 0) + 1

    async def before_rest_call(self, request: web.Request) -> web.StreamResponse | None:
        """Return a fault response for this REST call, or None to let it through."""
        if self.roll("drop"):
            transport = request.transport
            if transport is not None:
                transport.close()
            raise ConnectionResetError("sandbox fault: connection dropped")
        if self.roll("slow"):
            await asyncio.sleep(self.slow_seconds)
        for status, reason in (("429", "Too Many Requests"), ("503", "Server Too Busy")):
            if self.roll(status):
                return web.json_response(
                    {"error": {"code": "-2147024860, Microsoft.SharePoint.SPQueryThrottledException",
                               "message": {"lang": "en-US", "value": f"{reason} (sandbox fault)"}}},
                    status=int(status),
                    reason=reason,
                    headers={"Retry-After": str(self.retry_after)},
                )
        return None

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"rates": dict(self.rates), "injected": dict(self.injected),
                    "observed": dict(self.observed)}
