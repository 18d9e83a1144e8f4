"""Storage metering: bytes stored per org and byte-hours accrued, priced per GB-month.

Stored bytes of an org are the distinct blobs linked to any of its repositories (a layer shared
by several repositories or builds counts once) plus its distinct manifests. Byte-hours accrue
in rounds (:meth:`Metering.accrue`, run periodically by :meth:`Metering.run` in the origin's
root nursery): each round adds, per org, the bytes stored at the previous round times the hours
since, split by UTC month. Where accrual stands is stored per org, so a crash or a restart loses
nothing and concurrent rounds (several origins) never count an interval twice. Bytes stored
are measured by the registry domain (:meth:`origin.registry.registry.Registry.stored_bytes`);
accrual is kept in the build store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from origin.auth.store import TenancyStore
from origin.builds.records import month_of, storage_cost
from origin.builds.store import BuildStore
from origin.registry.registry import Registry

log = logging.getLogger("depot.metering")

DEFAULT_PRICE_PER_GB_MONTH = 0.20


@dataclass(frozen=True, slots=True)
class Usage:
    org_slug: str
    stored_bytes: int  # now
    month: str  # YYYY-MM (UTC): byte_hours and cost are month to date
    byte_hours: float
    accrued_at: float | None
    price_per_gb_month: float

    @property
    def cost_usd(self) -> float:
        return storage_cost(self.byte_hours, self.price_per_gb_month)

    def document(self) -> dict[str, object]:
        return {
            "org": self.org_slug,
            "stored_bytes": self.stored_bytes,
            "month": self.month,
            "byte_hours": self.byte_hours,
            "accrued_at": self.accrued_at,
            "price_per_gb_month_usd": self.price_per_gb_month,
            "month_to_date_cost_usd": round(self.cost_usd, 6),
        }


class Metering:
    def __init__(
        self,
        store: BuildStore,
        tenancy: TenancyStore,
        registry: Registry,
        clock: Callable[[], float] = time.time,
        *,
        price_per_gb_month: float = DEFAULT_PRICE_PER_GB_MONTH,
    ) -> None:
        self._store = store
        self._tenancy = tenancy
        self._registry = registry
        self._clock = clock
        self.price_per_gb_month = price_per_gb_month

    async def stored_bytes(self, org_slug: str) -> int:
        return await self._registry.stored_bytes(org_slug)

    async def accrue(self) -> float:
        """One round over every org; the byte-hours added in total."""
        added = 0.0
        for org in await self._tenancy.list_orgs():
            stored = await self.stored_bytes(org.slug)
            added += await self._store.accrue(org.slug, stored, self._clock())
        return added

    async def usage(self, org_slug: str) -> Usage:
        now = self._clock()
        stored = await self.stored_bytes(org_slug)
        record = await self._store.usage(org_slug, month_of(now))
        return Usage(
            org_slug,
            stored,
            record.month,
            record.byte_hours,
            record.accrued_at,
            self.price_per_gb_month,
        )

    async def run(self, interval_seconds: float) -> None:
        """Accrue now and then every ``interval_seconds`` (real time), until cancelled."""
        while True:
            try:
                await self.accrue()
            except Exception:  # keep metering; the next round covers the gap
                log.exception("metering round failed")
            await trio.sleep(interval_seconds)
