"""The cost estimate: the pure ledger, the Price List parsing of EBS prices, and ``GET costs``.

The end-to-end tests run the real EC2 layer against the simulated cloud (moto over HTTP) with a
simulated clock. Two parts are FAKED, and why:
- moto has no Price List API, so prices are injected at the pricing layer's boundary: the
  backend, chosen through ``EC2Launcher.backend_class``, hands the price catalogue a ``pricing``
  client that answers ``get_products`` with Price List documents of AWS's own shape (so the
  parsing is exercised); EC2 calls still go to moto.
- The cost depends only on the EC2 states the manager sees, so the SSH layers are fakes (a
  provisioner that reports its steps, forwards that keep a state), chosen through
  ``provisioner_class`` and ``tunnel_class``; the real ones are covered in their own tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_ec2 import costs
from jupyter_ec2.aws import EC2Backend
from jupyter_ec2.costs import MONTH_SECONDS, CostLedger, month_start
from jupyter_ec2.manager import LaunchManager
from jupyter_ec2.pricing import ebs_filters, gb_month_usd_from_price_list
from jupyter_ec2.provision import Provisioner, ProvisionResult
from jupyter_ec2.store import StateStore
from jupyter_ec2.tunnel import TunnelManager, TunnelState

HOURLY = 0.0416  # t3.medium in us-east-1
GB_MONTH = 0.08  # gp3 in us-east-1
T0 = 1_780_000_000.0  # an instant in the middle of a month (2026-05-28)


def product(unit: str, usd: str, **attributes: str) -> str:
    """One Price List product document, as ``get_products`` returns it (a JSON string)."""
    return json.dumps(
        {
            "product": {"attributes": attributes},
            "terms": {
                "OnDemand": {
                    "T.1": {
                        "priceDimensions": {"T.1.D": {"unit": unit, "pricePerUnit": {"USD": usd}}}
                    }
                }
            },
        }
    )


# -- the pure ledger ---------------------------------------------------------------------------


def _ledger(volume_gb: int = 30, hourly: float | None = HOURLY, gb: float | None = GB_MONTH):
    ledger = CostLedger()
    ledger.entry("i-0123456789abcdef0", "us-east-1", "t3.medium", volume_gb=volume_gb, now=T0)
    ledger.set_hourly("i-0123456789abcdef0", hourly, T0)
    ledger.set_gb_month("us-east-1", gb)
    return ledger


def test_cost_grows_with_running_time_and_equals_the_hand_computation():
    # Given an instance that runs from T0
    ledger = _ledger()
    ledger.observe("i-0123456789abcdef0", "running", T0)
    # When 3 hours pass
    cost = ledger.instance_cost("i-0123456789abcdef0", T0 + 3 * 3600)["so_far_usd"]
    # Then it is 3 h of compute plus 3 h of a 30 GB gp3 disk, within 1 %
    hand = 3 * HOURLY + 30 * GB_MONTH * 3 * 3600 / (730 * 3600)
    assert cost == pytest.approx(hand, rel=0.01)
    assert ledger.instance_cost("i-0123456789abcdef0", T0 + 6 * 3600)["so_far_usd"] > cost


def test_a_stopped_instance_keeps_paying_for_its_disk_only():
    # Given an instance that ran 2 hours, then was stopped
    ledger = _ledger()
    ledger.observe("i-0123456789abcdef0", "running", T0)
    ledger.observe("i-0123456789abcdef0", "stopping", T0 + 7200)
    ledger.observe("i-0123456789abcdef0", "stopped", T0 + 7300)
    # When 10 days pass
    later = T0 + 7200 + 10 * 86400
    cost = ledger.instance_cost("i-0123456789abcdef0", later)
    # Then compute stays at 2 h and the disk part grew for the whole time
    disk = 30 * GB_MONTH * (later - T0) / MONTH_SECONDS
    assert cost["so_far_usd"] == pytest.approx(2 * HOURLY + disk, rel=0.01)
    assert cost["stopped_monthly_usd"] == pytest.approx(30 * GB_MONTH)
    summary = ledger.summary(later)
    assert summary["running_hourly_usd"] == 0
    assert summary["stopped_monthly_usd"] == pytest.approx(2.4)


def test_termination_ends_the_disk_cost():
    # Given an instance terminated after one hour
    ledger = _ledger()
    ledger.observe("i-0123456789abcdef0", "running", T0)
    ledger.observe("i-0123456789abcdef0", "terminated", T0 + 3600)
    # When a day passes / Then its cost no longer grows and it costs nothing while "stopped"
    first = ledger.instance_cost("i-0123456789abcdef0", T0 + 3600)["so_far_usd"]
    assert ledger.instance_cost("i-0123456789abcdef0", T0 + 86400)["so_far_usd"] == first
    assert ledger.instance_cost("i-0123456789abcdef0", T0 + 86400)["stopped_monthly_usd"] == 0


@pytest.mark.parametrize("hourly, gb", [(None, GB_MONTH), (HOURLY, None)])
def test_an_unknown_price_is_null_never_zero(hourly, gb):
    # Given an instance whose compute or disk price is unknown
    ledger = _ledger(hourly=hourly, gb=gb)
    ledger.observe("i-0123456789abcdef0", "running", T0)
    # When its cost is asked / Then it is null, in the instance and in the month's total
    assert ledger.instance_cost("i-0123456789abcdef0", T0 + 3600)["so_far_usd"] is None
    summary = ledger.summary(T0 + 3600)
    assert summary["month_to_date_usd"] is None
    assert summary["estimate"] is True
    # And the known part is still there for the budget guard
    assert summary["month_to_date_known_usd"] > 0


def test_a_price_learnt_later_prices_the_time_already_run():
    # Given an instance that ran an hour before its price was known
    ledger = _ledger(hourly=None)
    ledger.observe("i-0123456789abcdef0", "running", T0)
    # When the price arrives
    ledger.set_hourly("i-0123456789abcdef0", HOURLY, T0 + 3600)
    # Then the hour already run is priced too
    compute = ledger.entries["i-0123456789abcdef0"].compute_usd(T0, T0 + 3600)
    assert compute == pytest.approx(HOURLY)


def test_month_to_date_counts_only_this_month():
    # Given an instance running since 2 hours before the month began
    start = month_start(T0)
    ledger = CostLedger()
    ledger.entry("i-0123456789abcdef0", "us-east-1", "t3.medium", volume_gb=10, now=start - 7200)
    ledger.set_hourly("i-0123456789abcdef0", 1.0, start - 7200)
    ledger.set_gb_month("us-east-1", GB_MONTH)
    ledger.observe("i-0123456789abcdef0", "running", start - 7200)
    # When the month is one hour old
    summary = ledger.summary(start + 3600, budget_usd=1.2)
    # Then the month holds one hour, the instance's total three, and 80 % of the budget warns
    disk_hour = 10 * GB_MONTH * 3600 / MONTH_SECONDS
    assert summary["month_to_date_usd"] == pytest.approx(1.0 + disk_hour, rel=0.01)
    assert summary["instances"][0]["so_far_usd"] == pytest.approx(3 * (1.0 + disk_hour), rel=0.01)
    assert summary["budget_warning"] is True


def test_the_ledger_survives_a_round_trip_through_the_store(tmp_path):
    # Given a ledger with an open running interval, saved in the state store
    ledger = _ledger()
    ledger.observe("i-0123456789abcdef0", "running", T0)
    store = StateStore(tmp_path / "state")
    store.write_json_secret("costs", ledger.to_json(T0 + 60))
    # When a new process reads it back
    again = CostLedger.from_json(StateStore(tmp_path / "state").read_json("costs"))
    # Then the cost at any later time is the same
    now = T0 + 5 * 3600
    assert again.instance_cost("i-0123456789abcdef0", now) == ledger.instance_cost(
        "i-0123456789abcdef0", now
    )
    assert (tmp_path / "state" / "costs.json").stat().st_mode & 0o077 == 0


def test_budget_and_hourly_refusals_name_the_limit_and_the_excess():
    # Given spend over the budget / Then the refusal names the setting and the excess
    why = costs.budget_refusal(12.5, 10.0)
    assert "monthly_budget_usd" in why and "$10.00" in why and "$2.50 over" in why
    assert costs.budget_refusal(9.99, 10.0) is None
    assert costs.budget_refusal(1e6, None) is None
    # And a type above the hourly limit is refused by how much; an unknown price is refused too
    why = costs.hourly_refusal("g5.xlarge", 1.006, 0.5)
    assert "max_hourly_usd" in why and "$0.5060/h" in why
    assert costs.hourly_refusal("t3.small", 0.02, 0.5) is None
    assert "not known" in costs.hourly_refusal("t3.small", None, 0.5)


def test_gp3_price_is_parsed_from_a_price_list_document():
    # Given the Price List's storage product for gp3 / Then the GB-month price is read from it
    docs = [product("GB-Mo", "0.0800000000", volumeApiName="gp3")]
    assert gb_month_usd_from_price_list(docs) == pytest.approx(0.08)
    assert gb_month_usd_from_price_list([product("Hrs", "0.04")]) is None
    fields = {f["Field"]: f["Value"] for f in ebs_filters("eu-west-1")}
    assert fields == {"productFamily": "Storage", "volumeApiName": "gp3", "regionCode": "eu-west-1"}


# -- on the simulated cloud --------------------------------------------------------------------


class PriceList:
    """FAKE Price List client (moto has none): answers ``get_products`` like AWS does."""

    calls: list[dict[str, str]] = []

    def get_products(self, ServiceCode: str, Filters: list, MaxResults: int = 20) -> dict:
        fields = {f["Field"]: f["Value"] for f in Filters}
        PriceList.calls.append(fields)
        if fields.get("productFamily") == "Storage":
            return {"PriceList": [product("GB-Mo", str(GB_MONTH), volumeApiName="gp3")]}
        price = {"t3.medium": HOURLY, "g5.xlarge": 1.006}.get(fields.get("instanceType"))
        return {"PriceList": [] if price is None else [product("Hrs", str(price))]}


class PricedBackend(EC2Backend):
    """The real EC2 layer on the simulated cloud, with the FAKE Price List client injected."""

    def client(self, region=None, service="ec2"):
        if service == "pricing":
            return PriceList()
        return super().client(region, service=service)


class QuickProvisioner(Provisioner):
    """FAKE provisioning: reports its steps at once and returns a port and a token."""

    def provision(self, target, instance_id, base_url, on_progress=None, **kw):
        if on_progress:
            on_progress("service", 90, "service up")
        return ProvisionResult(8888, "t" * 43, base_url, None, ("service",), ("service",))

    def read_idle_status(self, target, instance_id, **kw):
        return None

    def run_before_stop(self, target, instance_id):
        return {"ok": True, "detail": "nothing to save (fake)"}


class StateOnlyForward:
    """FAKE forward: a port and a state, nothing listening."""

    local_port = 40001
    state = TunnelState.UP


class StateOnlyTunnels(TunnelManager):
    """FAKE forwards."""

    def open(self, instance_id, *args, **kw):
        return StateOnlyForward()

    def get(self, instance_id):
        return None

    def close(self, instance_id):
        pass

    def close_all(self):
        pass


class SimClock:
    """A simulated wall clock that tests move forward."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jp_server_config(jp_ec2_cloud, jp_ec2_config):
    """jupyter-ec2 on the simulated cloud, prices injected, SSH layers faked, fast polls."""
    return priced_config(jp_ec2_cloud, jp_ec2_config)


def priced_config(cloud, ec2_config: dict) -> dict:
    """The server config of these tests (other test modules reuse it)."""
    PriceList.calls = []
    jp_ec2_cloud, jp_ec2_config = cloud, ec2_config
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ec2": True},
            "allow_unauthenticated_access": False,
        },
        "EC2Launcher": {
            **jp_ec2_config,
            "backend_class": PricedBackend,
            "provisioner_class": QuickProvisioner,
            "tunnel_class": StateOnlyTunnels,
        },
        "EC2Backend": {
            "endpoint_url": jp_ec2_cloud.endpoint_url,
            "region": jp_ec2_cloud.region,
            "ssh_cidrs": ["203.0.113.10/32"],
        },
        "LaunchManager": {
            "poll_fast": 0.1,
            "poll_slow": 0.2,
            "poll_min_gap": 0.02,
            "connecting_min_seconds": 0.0,
        },
    }


@pytest.fixture
def manager(jp_serverapp) -> LaunchManager:
    """The running server's manager, its cost clock simulated."""
    found = jp_serverapp.web_app.settings["jupyter_ec2_manager"]
    found.clock = SimClock(T0)
    return found


async def api(jp_fetch, *parts, method="GET", body=None) -> tuple[int, Any]:
    """(status, JSON body) of one API call; errors are answers too."""
    try:
        response = await jp_fetch(
            "jupyter-ec2",
            "api",
            *parts,
            method=method,
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
        )
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body)
    return response.code, json.loads(response.body)


async def until(predicate, what: str, timeout: float = 20.0) -> None:
    """Wait for ``predicate()`` to hold (the manager works in the background)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_cost_so_far_on_the_simulated_cloud(jp_fetch, manager, jp_ec2_cloud):
    # Given a t3.medium with a 30 GB disk launched and ready at T0
    code, inst = await api(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    assert code == 202, inst
    iid = inst["id"]
    await until(lambda: manager.records[iid].phase.value == "ready", "never ready")
    await until(lambda: manager.costs.entries[iid].gb_month_usd is not None, "no gp3 price")
    await until(lambda: manager.costs.entries[iid].hourly_usd is not None, "no hourly price")
    # When 2 simulated hours pass
    manager.clock.now = T0 + 2 * 3600
    _, inst = await api(jp_fetch, "instances", iid)
    # Then the cost so far is 2 h of compute and disk, within 1 % of the hand computation
    disk_hour = 30 * GB_MONTH / 730
    assert inst["cost"]["so_far_usd"] == pytest.approx(2 * (HOURLY + disk_hour), rel=0.01)
    assert inst["cost"]["stopped_monthly_usd"] == pytest.approx(30 * GB_MONTH)
    code, summary = await api(jp_fetch, "costs")
    assert code == 200
    assert set(summary) >= {
        "currency", "month_to_date_usd", "running_hourly_usd", "stopped_monthly_usd",
        "budget_usd", "instances",
    }  # fmt: skip
    assert summary["currency"] == "USD" and summary["budget_usd"] is None
    assert summary["running_hourly_usd"] == pytest.approx(HOURLY)
    assert summary["instances"][0]["id"] == iid
    assert set(summary["instances"][0]) >= {"id", "so_far_usd", "hourly_usd", "stopped_monthly_usd"}
    # And the gp3 price was asked of the Price List for this region
    assert {"productFamily": "Storage", "volumeApiName": "gp3", "regionCode": "us-east-1"} in (
        PriceList.calls
    )

    # When it is stopped and 10 simulated days pass
    code, _ = await api(jp_fetch, "instances", iid, "stop", method="POST", body={})
    assert code == 202
    await until(lambda: manager.records[iid].ec2_state == "stopped", "never stopped")
    await until(lambda: not manager.costs.entries[iid].running, "ledger still running")
    stopped_at = manager.costs.entries[iid].intervals[-1][1]
    assert stopped_at == T0 + 2 * 3600
    manager.clock.now = T0 + 2 * 3600 + 10 * 86400
    _, inst = await api(jp_fetch, "instances", iid)
    # Then only the disk part grew
    disk = 30 * GB_MONTH * (manager.clock.now - T0) / MONTH_SECONDS
    assert inst["cost"]["so_far_usd"] == pytest.approx(2 * HOURLY + disk, rel=0.01)
    _, summary = await api(jp_fetch, "costs")
    assert summary["running_hourly_usd"] == 0
    assert summary["stopped_monthly_usd"] == pytest.approx(30 * GB_MONTH)

    # When the local server restarts (a new manager on the same state dir and cloud)
    await manager.stop()
    fresh = LaunchManager(
        parent=manager.parent,
        backend=manager.backend,
        provisioner=manager.provisioner,
        tunnels=manager.tunnels,
        store=manager.store,
        profiles=manager.profiles,
    )
    fresh.clock = manager.clock
    await fresh.start()
    try:
        # Then the history is kept: the same cost, before any price is looked up again
        assert fresh.cost_keeper.summary()["instances"][0]["so_far_usd"] == pytest.approx(
            inst["cost"]["so_far_usd"], rel=1e-6
        )
        assert fresh.to_json(fresh.records[iid])["cost"] == inst["cost"]
    finally:
        await fresh.stop()
