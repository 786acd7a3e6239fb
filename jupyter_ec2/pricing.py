"""Prices for the panel's $/h and the cost estimate: AWS's Price List API, cached.

Hourly prices of instance types, and the region's gp3 EBS price per GB-month (what a root volume
costs, also while its instance is stopped).

On-demand prices come from the Price List (``pricing``) API, which answers only in a few regions
(``us-east-1`` among them) whatever region is priced; spot prices from EC2's spot price history
in the instance's own region. Any failure gives ``None`` — "unknown" — never a guess: a price is
shown only when AWS said it. The parsing is a pure function tested on a Price List document.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

#: The region whose endpoint serves the Price List API.
PRICING_REGION = "us-east-1"


def on_demand_filters(region: str, instance_type: str) -> list[dict[str, str]]:
    """Price List filters for a shared-tenancy Linux instance with no pre-installed software."""
    fields = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def ebs_filters(region: str, volume_api_name: str = "gp3") -> list[dict[str, str]]:
    """Price List filters for the storage of an EBS volume type in a region."""
    fields = {
        "productFamily": "Storage",
        "volumeApiName": volume_api_name,
        "regionCode": region,
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def snapshot_filters(region: str) -> list[dict[str, str]]:
    """Price List filters for EBS snapshot storage in a region (standard and archive tiers)."""
    fields = {"productFamily": "Storage Snapshot", "regionCode": region}
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()]


def snapshot_gb_month_from_price_list(documents: Iterable[str | dict[str, Any]]) -> float | None:
    """The standard-tier EBS snapshot USD price per GB-month in Price List documents, or None.

    Only products whose ``usagetype`` ends in ``EBS:SnapshotUsage`` count: the archive tier
    (``EBS:SnapshotArchiveStorage``) is cheaper, and a new snapshot is never archived.
    """
    standard = []
    for document in documents:
        product = json.loads(document) if isinstance(document, str) else document
        usage = ((product.get("product") or {}).get("attributes") or {}).get("usagetype", "")
        if str(usage).endswith("EBS:SnapshotUsage"):
            standard.append(product)
    return gb_month_usd_from_price_list(standard)


def hourly_usd_from_price_list(documents: Iterable[str | dict[str, Any]]) -> float | None:
    """The on-demand USD price per hour in Price List product documents, or None.

    Each document is one product (a JSON string, as ``get_products`` returns it); its
    ``terms.OnDemand`` holds price dimensions with a ``unit`` of ``Hrs`` and a USD price.
    When several products match, the lowest non-zero hourly price is taken.
    """
    return usd_per_unit_from_price_list(documents, ("Hrs", "Hours"))


def gb_month_usd_from_price_list(documents: Iterable[str | dict[str, Any]]) -> float | None:
    """The on-demand USD price per GB-month of storage in Price List documents, or None."""
    return usd_per_unit_from_price_list(documents, ("GB-Mo", "GB-month"))


def usd_per_unit_from_price_list(
    documents: Iterable[str | dict[str, Any]], units: tuple[str, ...]
) -> float | None:
    """The lowest non-zero on-demand USD price whose dimension's ``unit`` is one of ``units``."""
    prices: list[float] = []
    for document in documents:
        product = json.loads(document) if isinstance(document, str) else document
        for term in (product.get("terms") or {}).get("OnDemand", {}).values():
            for dimension in (term.get("priceDimensions") or {}).values():
                if dimension.get("unit") not in units:
                    continue
                try:
                    price = float((dimension.get("pricePerUnit") or {}).get("USD", "nan"))
                except (TypeError, ValueError):
                    continue
                if price > 0:
                    prices.append(price)
    return min(prices) if prices else None


def latest_spot_price(history: Iterable[dict[str, Any]]) -> float | None:
    """The newest price in a ``describe_spot_price_history`` answer, or None."""
    newest = None
    for entry in history:
        try:
            price = float(entry["SpotPrice"])
        except (KeyError, TypeError, ValueError):
            continue
        stamp = entry.get("Timestamp")
        if newest is None or (stamp is not None and newest[0] is not None and stamp > newest[0]):
            newest = (stamp, price)
    return None if newest is None else newest[1]


class PriceCatalog:
    """Hourly prices by (region, instance type, spot), cached; a failed lookup is retried.

    An answer of AWS (a price, or no price for that type) is kept for the life of the server. A
    lookup that failed (throttled, no network, no permission) is retried after ``retry_initial``
    seconds, doubling up to ``retry_max``, so one bad moment does not hide a price for good.
    """

    def __init__(
        self,
        client_factory: Callable[[str, str], Any],
        log: Any = None,
        *,
        retry_initial: float = 30.0,
        retry_max: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        # client_factory(service, region) -> a boto3 client; EC2Backend provides one.
        self._client = client_factory
        self._log = log
        self._cache: dict[tuple[str, str, bool], float | None] = {}
        # key -> (failures in a row, when the next try is due)
        self._failed: dict[tuple[str, str, bool], tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._clock = clock

    def due(self, region: str, instance_type: str, spot: bool = False) -> bool:
        """Whether a lookup would ask AWS now (nothing cached and no failure still backing off)."""
        return self._due((region, instance_type, spot))

    def gb_month_due(self, region: str, volume_type: str = "gp3") -> bool:
        """Whether :meth:`gb_month_usd` would ask AWS now."""
        return self._due((region, f"ebs:{volume_type}", False))

    def _due(self, key: tuple[str, str, bool]) -> bool:
        with self._lock:
            if key in self._cache:
                return False
            failed = self._failed.get(key)
            return failed is None or self._clock() >= failed[1]

    def hourly_usd(self, region: str, instance_type: str, spot: bool = False) -> float | None:
        """The price per hour in USD, or None when AWS does not say (call from a thread)."""
        if spot:
            return self._cached((region, instance_type, True), self._spot)
        return self._cached((region, instance_type, False), self._on_demand)

    def gb_month_usd(self, region: str, volume_type: str = "gp3") -> float | None:
        """The EBS price per GB-month in USD of a volume type in a region, or None (a thread)."""
        return self._cached(
            (region, f"ebs:{volume_type}", False), lambda r, _k: self._storage(r, volume_type)
        )

    def _cached(
        self, key: tuple[str, str, bool], look_up: Callable[[str, str], float | None]
    ) -> float | None:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            failed = self._failed.get(key)
            if failed is not None and self._clock() < failed[1]:
                return None
        region, what, _spot = key
        try:
            price = look_up(region, what)
        except Exception as err:  # noqa: BLE001 - a price is optional; never fail a launch for it
            self._debug("price of %s in %s unknown for now: %s", what, region, err)
            with self._lock:
                count = (self._failed.get(key) or (0, 0.0))[0] + 1
                wait = min(self._retry_max, self._retry_initial * 2 ** (count - 1))
                self._failed[key] = (count, self._clock() + wait)
            return None
        with self._lock:
            self._cache[key] = price
            self._failed.pop(key, None)
        return price

    def snapshot_gb_month_usd(self, region: str) -> float | None:
        """The EBS snapshot price per GB-month in USD in a region, or None (call from a thread)."""
        return self._cached((region, "ebs:snapshot", False), lambda r, _k: self._snapshots(r))

    def _snapshots(self, region: str) -> float | None:
        client = self._client("pricing", PRICING_REGION)
        answer = client.get_products(
            ServiceCode="AmazonEC2", Filters=snapshot_filters(region), MaxResults=50
        )
        return snapshot_gb_month_from_price_list(answer.get("PriceList") or [])

    def _storage(self, region: str, volume_type: str) -> float | None:
        client = self._client("pricing", PRICING_REGION)
        answer = client.get_products(
            ServiceCode="AmazonEC2", Filters=ebs_filters(region, volume_type), MaxResults=20
        )
        return gb_month_usd_from_price_list(answer.get("PriceList") or [])

    def _on_demand(self, region: str, instance_type: str) -> float | None:
        client = self._client("pricing", PRICING_REGION)
        answer = client.get_products(
            ServiceCode="AmazonEC2",
            Filters=on_demand_filters(region, instance_type),
            MaxResults=20,
        )
        return hourly_usd_from_price_list(answer.get("PriceList") or [])

    def _spot(self, region: str, instance_type: str) -> float | None:
        client = self._client("ec2", region)
        answer = client.describe_spot_price_history(
            InstanceTypes=[instance_type],
            ProductDescriptions=["Linux/UNIX"],
            MaxResults=20,
        )
        return latest_spot_price(answer.get("SpotPriceHistory") or [])

    def _debug(self, *args: Any) -> None:
        if self._log is not None:
            self._log.debug(*args)
