"""Hourly prices of instance types, for the panel's $/h: AWS's Price List API, cached.

On-demand prices come from the Price List (``pricing``) API, which answers only in a few regions
(``us-east-1`` among them) whatever region is priced; spot prices from EC2's spot price history
in the instance's own region. Any failure gives ``None`` — "unknown" — never a guess: a price is
shown only when AWS said it. The parsing is a pure function tested on a Price List document.
"""

from __future__ import annotations

import json
import threading
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


def hourly_usd_from_price_list(documents: Iterable[str | dict[str, Any]]) -> float | None:
    """The on-demand USD price per hour in Price List product documents, or None.

    Each document is one product (a JSON string, as ``get_products`` returns it); its
    ``terms.OnDemand`` holds price dimensions with a ``unit`` of ``Hrs`` and a USD price.
    When several products match, the lowest non-zero hourly price is taken.
    """
    prices: list[float] = []
    for document in documents:
        product = json.loads(document) if isinstance(document, str) else document
        for term in (product.get("terms") or {}).get("OnDemand", {}).values():
            for dimension in (term.get("priceDimensions") or {}).values():
                if dimension.get("unit") not in ("Hrs", "Hours"):
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
    """Hourly prices by (region, instance type, spot), looked up once and cached."""

    def __init__(self, client_factory: Callable[[str, str], Any], log: Any = None):
        # client_factory(service, region) -> a boto3 client; EC2Backend provides one.
        self._client = client_factory
        self._log = log
        self._cache: dict[tuple[str, str, bool], float | None] = {}
        self._lock = threading.Lock()

    def hourly_usd(self, region: str, instance_type: str, spot: bool = False) -> float | None:
        """The price per hour in USD, or None when AWS does not say (call from a thread)."""
        key = (region, instance_type, spot)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        price = (
            self._spot(region, instance_type) if spot else self._on_demand(region, instance_type)
        )
        with self._lock:
            self._cache[key] = price
        return price

    def _on_demand(self, region: str, instance_type: str) -> float | None:
        try:
            client = self._client("pricing", PRICING_REGION)
            answer = client.get_products(
                ServiceCode="AmazonEC2",
                Filters=on_demand_filters(region, instance_type),
                MaxResults=20,
            )
            return hourly_usd_from_price_list(answer.get("PriceList") or [])
        except Exception as err:  # noqa: BLE001 - a price is optional; never fail a launch for it
            self._debug("on-demand price of %s in %s unknown: %s", instance_type, region, err)
            return None

    def _spot(self, region: str, instance_type: str) -> float | None:
        try:
            client = self._client("ec2", region)
            answer = client.describe_spot_price_history(
                InstanceTypes=[instance_type],
                ProductDescriptions=["Linux/UNIX"],
                MaxResults=20,
            )
            return latest_spot_price(answer.get("SpotPriceHistory") or [])
        except Exception as err:  # noqa: BLE001 - a price is optional
            self._debug("spot price of %s in %s unknown: %s", instance_type, region, err)
            return None

    def _debug(self, *args: Any) -> None:
        if self._log is not None:
            self._log.debug(*args)
