"""The budget guard: ``monthly_budget_usd`` and ``max_hourly_usd`` refuse launches (409).

Runs on the simulated cloud with the same two FAKES as ``test_costs.py`` (prices injected at the
pricing layer's boundary, because moto has no Price List API; SSH layers that only report
steps, because the guard depends on EC2 states and prices only) and a simulated clock.
"""

from __future__ import annotations

import pytest
from test_costs import (  # noqa: F401 - fixtures shared with the cost tests
    HOURLY,
    T0,
    api,
    jp_server_config,
    manager,
    until,
)


@pytest.fixture
def jp_ec2_config(jp_ec2_profiles, tmp_path) -> dict:
    """A budget of $0.50 a month and at most $0.50/h per instance."""
    return {
        "profiles": jp_ec2_profiles,
        "default_profile": "cpu",
        "state_dir": str(tmp_path / "ec2-state"),
        "monthly_budget_usd": 0.5,
        "max_hourly_usd": 0.5,
    }


def _instances(cloud) -> list[str]:
    found = cloud.client().describe_instances()
    return [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]


async def test_a_reached_budget_refuses_a_launch_and_launches_nothing(
    jp_fetch,
    manager,  # noqa: F811 - the fixture shared with test_costs
    jp_ec2_cloud,
):
    # Given one instance that has run long enough to spend 80 %, then all of the budget
    code, inst = await api(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    assert code == 202, inst
    iid = inst["id"]
    await until(lambda: manager.records[iid].phase.value == "ready", "never ready")
    await until(lambda: manager.costs.entries[iid].gb_month_usd is not None, "no gp3 price")
    await until(lambda: manager.costs.entries[iid].hourly_usd is not None, "no hourly price")
    manager.clock.now = T0 + 0.85 * 0.5 / HOURLY * 3600
    _, summary = await api(jp_fetch, "costs")
    assert summary["budget_usd"] == 0.5 and summary["budget_warning"] is True
    manager.clock.now = T0 + 12 * 3600  # 12 h × $0.0416 ≈ $0.50 plus the disk
    # When another launch is asked for
    code, body = await api(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    # Then it is refused with a 409 naming the budget and by how much, and nothing launched
    assert code == 409
    assert "monthly_budget_usd" in body["message"] and "over" in body["message"]
    assert "$0.50" in body["message"]
    assert _instances(jp_ec2_cloud) == [iid]


async def test_a_type_above_the_hourly_limit_is_refused_and_nothing_launched(
    jp_fetch,
    manager,  # noqa: F811 - the fixture shared with test_costs
    jp_ec2_cloud,
):
    # Given max_hourly_usd = 0.5 and a g5.xlarge at $1.006/h on demand
    # When it is asked for
    code, body = await api(
        jp_fetch,
        "instances",
        method="POST",
        body={"profile": "gpu", "overrides": {"spot": False}},
    )
    # Then it is refused with a 409 naming the limit and the excess, and nothing launched
    assert code == 409
    assert "max_hourly_usd" in body["message"] and "$0.5060/h" in body["message"]
    assert _instances(jp_ec2_cloud) == []
    # And a type under the limit still launches
    code, inst = await api(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    assert code == 202
    assert _instances(jp_ec2_cloud) == [inst["id"]]
