"""Hourly prices: parsing Price List documents and spot history; unknown stays unknown."""

from __future__ import annotations

import datetime as dt
import json

from jupyter_ec2.pricing import (
    PriceCatalog,
    hourly_usd_from_price_list,
    latest_spot_price,
    on_demand_filters,
)


def _product(price: str, unit: str = "Hrs") -> str:
    # The shape of one get_products answer entry (a JSON string), trimmed to what is read.
    return json.dumps(
        {
            "product": {"attributes": {"instanceType": "t3.medium", "regionCode": "us-east-1"}},
            "terms": {
                "OnDemand": {
                    "ABC.JRTCKXETXF": {
                        "priceDimensions": {
                            "ABC.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": unit,
                                "pricePerUnit": {"USD": price},
                            },
                        }
                    }
                }
            },
        }
    )


def test_on_demand_price_is_read_from_price_list():
    # Given two matching products, one with a zero price (a reserved-capacity artefact)
    # When the hourly price is read / Then the non-zero hourly price is taken
    assert (
        hourly_usd_from_price_list([_product("0.0000000000"), _product("0.0416000000")]) == 0.0416
    )


def test_no_hourly_dimension_means_unknown():
    # Given a product priced per GB-month only / Then the price is unknown, not zero
    assert hourly_usd_from_price_list([_product("0.08", unit="GB-Mo")]) is None
    assert hourly_usd_from_price_list([]) is None


def test_latest_spot_price_is_the_newest_entry():
    # Given spot history out of order / Then the newest entry's price is taken
    now = dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc)
    history = [
        {"SpotPrice": "0.0200", "Timestamp": now - dt.timedelta(hours=2)},
        {"SpotPrice": "0.0150", "Timestamp": now},
        {"SpotPrice": "bad", "Timestamp": now + dt.timedelta(hours=1)},
    ]
    assert latest_spot_price(history) == 0.015


def test_filters_name_region_and_type():
    # Given a region and type / Then the filters pin both, Linux and shared tenancy
    filters = {f["Field"]: f["Value"] for f in on_demand_filters("eu-west-1", "m7g.large")}
    assert filters["regionCode"] == "eu-west-1"
    assert filters["instanceType"] == "m7g.large"
    assert filters["operatingSystem"] == "Linux"
    assert filters["tenancy"] == "Shared"


def test_a_failing_api_gives_unknown_then_is_retried_with_backoff():
    # Given a Price List API that fails twice, then answers, and a clock the test moves
    calls = []
    now = [1000.0]

    class Flaky:
        def get_products(self, **kwargs):
            calls.append(kwargs)
            if len(calls) <= 2:
                raise RuntimeError("throttled")
            return {"PriceList": [_product("0.0416000000")]}

    catalog = PriceCatalog(
        lambda service, region: Flaky(), retry_initial=30, retry_max=3600, clock=lambda: now[0]
    )
    # When the price is asked at once again / Then it is unknown, and AWS was asked once
    assert catalog.hourly_usd("us-east-1", "t3.medium") is None
    assert catalog.hourly_usd("us-east-1", "t3.medium") is None
    assert len(calls) == 1
    assert not catalog.due("us-east-1", "t3.medium")
    # When the first backoff (30 s) has passed / Then AWS is asked again, fails, waits 60 s
    now[0] += 30
    assert catalog.due("us-east-1", "t3.medium")
    assert catalog.hourly_usd("us-east-1", "t3.medium") is None
    assert len(calls) == 2
    now[0] += 59
    assert catalog.hourly_usd("us-east-1", "t3.medium") is None
    assert len(calls) == 2
    # When the second backoff has passed / Then the answer is used and kept
    now[0] += 1
    assert catalog.hourly_usd("us-east-1", "t3.medium") == 0.0416
    assert catalog.hourly_usd("us-east-1", "t3.medium") == 0.0416
    assert len(calls) == 3
    assert not catalog.due("us-east-1", "t3.medium")


def test_a_price_list_answer_is_used():
    # Given a Price List API answering with a product
    class Answering:
        def get_products(self, **kwargs):
            return {"PriceList": [_product("0.0832000000")]}

    catalog = PriceCatalog(lambda service, region: Answering())
    # Then that price is returned
    assert catalog.hourly_usd("us-east-1", "t3.large") == 0.0832
