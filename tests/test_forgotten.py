"""Forgotten stopped instances: snapshotted, then terminated, on a simulated clock.

The pure rules are tested alone. The end-to-end tests run the real EC2 layer against the
simulated cloud (moto over HTTP, behind the strict front, which keeps each new snapshot
``pending`` before ``completed`` as EBS does, or makes it end in ``error`` when asked) with a
simulated clock (no sleeping: days pass by setting it). As in ``test_costs.py``, two parts are
FAKED: the Price List (moto has none; prices are injected at the pricing client, in AWS's
document shape) and the SSH layers (a provisioner that reports its steps, forwards that keep a
state), because the rule depends only on the EC2 states the manager sees.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from test_costs import (
    T0,
    PricedBackend,
    PriceList,
    SimClock,
    api,
    priced_config,
    product,
    until,
)

from jupyter_ec2 import aws
from jupyter_ec2.aws import EC2Backend, SnapshotInfo
from jupyter_ec2.errors import PermissionDeniedError
from jupyter_ec2.forgotten import (
    DAY,
    iso,
    next_step,
    observe_stop,
    snapshots_verdict,
    terminates_at,
)
from jupyter_ec2.models import Profile
from jupyter_ec2.pricing import snapshot_gb_month_from_price_list
from jupyter_ec2.store import StateStore
from jupyter_ec2.testing.iam import without_statements

SNAPSHOT_GB_MONTH = 0.05  # standard snapshots in us-east-1
DAYS = 3


# -- the rules ---------------------------------------------------------------------------------


def test_the_countdown_starts_at_the_earliest_known_stop():
    # Given an instance seen stopped at T0 for the first time
    since = observe_stop(None, "stopped", T0)
    # Then it is due the limit later, and the rule off means never
    assert since == T0
    assert terminates_at(since, DAYS) == T0 + DAYS * DAY
    assert terminates_at(since, 0) is None and terminates_at(None, DAYS) is None
    # When it is seen again later (a poll, a restart), the start does not move
    assert observe_stop(since, "stopped", T0 + 5000) == T0
    # When EC2 says it stopped earlier (while this server was not running), that counts
    assert observe_stop(since, "stopped", T0 + 5000, ec2_stopped_at=T0 - DAY) == T0 - DAY
    # But never a time in the future
    assert observe_stop(None, "stopped", T0, ec2_stopped_at=T0 + DAY) == T0
    # And a start ends the countdown
    assert observe_stop(since, "running", T0 + 10) is None
    assert observe_stop(since, "pending", T0 + 10) is None


def test_next_step_snapshots_first_then_checks_and_retries_after_a_failure():
    due = T0 + DAYS * DAY
    assert next_step(due, due - 1, None) == "wait"
    assert next_step(None, due + 1, None) == "wait"
    assert next_step(due, due, None) == "snapshot"
    assert next_step(due, due + 1, {"snapshots": ["snap-1"]}) == "check"
    failed = {"error": "x", "retry_at": due + 3600}
    assert next_step(due, due + 10, failed) == "retry-later"
    assert next_step(due, due + 3600, failed) == "snapshot"


def _snap(sid: str, state: str) -> SnapshotInfo:
    return SnapshotInfo(sid, "us-east-1", "vol-1", state, "", 30, "i-1", None)


def test_terminate_only_when_every_snapshot_is_completed():
    wanted = ["snap-a", "snap-b"]
    assert snapshots_verdict([_snap("snap-a", "completed"), _snap("snap-b", "pending")],
                             wanted) == "pending"  # fmt: skip
    assert snapshots_verdict([_snap("snap-a", "completed"), _snap("snap-b", "completed")],
                             wanted) == "completed"  # fmt: skip
    assert snapshots_verdict([_snap("snap-a", "completed"), _snap("snap-b", "error")],
                             wanted) == "error"  # fmt: skip
    # A snapshot that vanished is a failure, never a success
    assert snapshots_verdict([_snap("snap-a", "completed")], wanted) == "error"


def test_ec2s_own_stop_time_is_read_from_the_transition_reason():
    # Given describe entries as EC2 writes them
    stopped = {"State": {"Name": "stopped"},
               "StateTransitionReason": "User initiated (2026-05-01 10:00:00 GMT)"}  # fmt: skip
    # Then the time is read, in UTC; none where EC2 gives none
    assert aws.transition_time(stopped) == dt.datetime(2026, 5, 1, 10, tzinfo=dt.timezone.utc)
    assert aws.transition_time({"StateTransitionReason": ""}) is None
    inst = aws.managed_instance_from_description(
        {"InstanceId": "i-0123456789abcdef0", **stopped,
         "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeId": "vol-1"}}]},
        "us-east-1",
    )  # fmt: skip
    assert inst.stopped_at == dt.datetime(2026, 5, 1, 10, tzinfo=dt.timezone.utc)
    assert inst.volume_ids == ("vol-1",)


def test_the_standard_snapshot_price_is_parsed_not_the_archive_one():
    documents = [
        product("GB-Mo", "0.0125", usagetype="EBS:SnapshotArchiveStorage"),
        product("GB-Mo", str(SNAPSHOT_GB_MONTH), usagetype="EBS:SnapshotUsage"),
    ]
    assert snapshot_gb_month_from_price_list(documents) == SNAPSHOT_GB_MONTH
    assert snapshot_gb_month_from_price_list(documents[:1]) is None


# -- on the simulated cloud --------------------------------------------------------------------


class SnapshotPriceList(PriceList):
    """The FAKE Price List of test_costs.py, also answering for EBS snapshots."""

    def get_products(self, ServiceCode, Filters, **kw):  # noqa: N803 - boto3's names
        fields = {f["Field"]: f["Value"] for f in Filters}
        if fields.get("productFamily") == "Storage Snapshot":
            usage = product("GB-Mo", str(SNAPSHOT_GB_MONTH), usagetype="EBS:SnapshotUsage")
            return {"PriceList": [usage]}
        return super().get_products(ServiceCode=ServiceCode, Filters=Filters, **kw)


class SnapshotPricedBackend(PricedBackend):
    """The real EC2 layer on the simulated cloud, with the FAKE Price List client."""

    def client(self, region=None, service="ec2"):
        if service == "pricing":
            return SnapshotPriceList()
        return super().client(region, service=service)


@pytest.fixture
def jp_server_config(jp_ec2_cloud, jp_ec2_config):
    """jupyter-ec2 on the simulated cloud, terminate_stopped_after_days = 3."""
    config = priced_config(jp_ec2_cloud, jp_ec2_config)
    config["EC2Launcher"]["backend_class"] = SnapshotPricedBackend
    config["EC2Launcher"]["terminate_stopped_after_days"] = DAYS
    return config


@pytest.fixture
def manager(jp_serverapp):
    """The running server's manager, its clock simulated."""
    found = jp_serverapp.web_app.settings["jupyter_ec2_manager"]
    found.clock = SimClock(T0)
    return found


async def _stopped_instance(jp_fetch, manager) -> str:
    code, inst = await api(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    assert code == 202, inst
    iid = inst["id"]
    await until(lambda: manager.records[iid].phase.value == "ready", "never ready")
    code, _ = await api(jp_fetch, "instances", iid, "stop", method="POST", body={})
    assert code == 202
    await until(lambda: manager.records[iid].phase.value == "stopped", "never stopped")
    await until(lambda: iid in manager.forgotten.stopped_since, "stop not noted")
    return iid


def _moto_snapshots(cloud) -> list:
    """The managed snapshots as moto holds them (in-process: not through the front, so no
    lateness; moto's own snapshots of its built-in images left out)."""
    return [
        snap
        for snap in cloud.ec2_backend().snapshots.values()
        if {t["key"]: t["value"] for t in snap.get_tags()}.get("jupyter-ec2:managed") == "true"
    ]


def _moto_state(cloud, iid: str) -> str:
    return cloud.ec2_backend().get_instance(iid).state


def _log(manager, iid: str) -> list[str]:
    return [line.text for line in manager.records[iid].log if line.step == "forgotten"]


async def test_a_forgotten_instance_is_snapshotted_then_terminated(jp_fetch, manager,
                                                                   jp_ec2_cloud):  # fmt: skip
    # Given an instance stopped at T0, and snapshots that stay pending for 8 describes
    jp_ec2_cloud.front.snapshot_describes = 8
    iid = await _stopped_instance(jp_fetch, manager)
    since = manager.forgotten.stopped_since[iid]
    assert since == T0
    # When a day passes
    manager.clock.now = T0 + DAY
    _, inst = await api(jp_fetch, "instances", iid)
    # Then the instance says when it will be terminated (JupyterLab warns a day before)
    assert inst["terminates_at"] == iso(T0 + DAYS * DAY)
    assert inst["termination"] is None
    assert _moto_snapshots(jp_ec2_cloud) == []
    # When the limit has passed
    manager.clock.now = T0 + DAYS * DAY + 60
    await until(lambda: iid in manager.forgotten.jobs, "no snapshot made")
    # Then its disk is snapshotted first, tagged as managed with its source instance …
    (snap,) = _moto_snapshots(jp_ec2_cloud)
    tags = {t["key"]: t["value"] for t in snap.get_tags()}
    assert tags["jupyter-ec2:managed"] == "true"
    assert tags["jupyter-ec2:source-instance"] == iid
    # … and while the snapshot is pending the instance is not terminated
    _, inst = await api(jp_fetch, "instances", iid)
    assert inst["termination"] == {"state": "snapshotting", "snapshots": [snap.id],
                                   "error": None}  # fmt: skip
    assert _moto_state(jp_ec2_cloud, iid) == "stopped"
    # When the snapshot completes (after its pending describes), then it is terminated
    await until(lambda: manager.records[iid].phase.value == "terminated", "never terminated")
    assert _moto_state(jp_ec2_cloud, iid) in ("terminated", "shutting-down")
    log = _log(manager, iid)
    assert log[0].startswith("Stopped for 3 days or more")
    assert log[1] == f"Snapshot {snap.id} begun."
    assert log[-1] == f"Snapshot {snap.id} completed: terminating."
    # And the snapshot is listed with its $/month
    code, body = await api(jp_fetch, "snapshots")
    assert code == 200
    (listed,) = body["snapshots"]
    assert listed["id"] == snap.id and listed["source_instance"] == iid
    assert listed["state"] == "completed"
    assert listed["monthly_usd"] == pytest.approx(listed["size_gb"] * SNAPSHOT_GB_MONTH)


async def test_a_failed_snapshot_leaves_the_instance_not_terminated(jp_fetch, manager,
                                                                    jp_ec2_cloud):  # fmt: skip
    # Given a forgotten instance whose snapshot will fail (after being pending)
    jp_ec2_cloud.front.fail_snapshots(1)
    iid = await _stopped_instance(jp_fetch, manager)
    # When the limit has passed
    manager.clock.now = T0 + DAYS * DAY + 60
    try:
        await until(lambda: (manager.forgotten.jobs.get(iid) or {}).get("error"), "no failure")
    except AssertionError:
        raise AssertionError(f"{manager.forgotten.jobs} {_log(manager, iid)}") from None
    # Then it is NOT terminated, and the error is reported on the instance and in its log
    assert _moto_state(jp_ec2_cloud, iid) == "stopped"
    assert manager.records[iid].phase.value == "stopped"
    _, inst = await api(jp_fetch, "instances", iid)
    (snap,) = _moto_snapshots(jp_ec2_cloud)
    assert inst["termination"]["state"] == "failed"
    assert f"{snap.id} error" in inst["termination"]["error"]
    assert "NOT terminated" in inst["termination"]["error"]
    assert "NOT terminated" in _log(manager, iid)[-1]
    # And it is tried again an hour later (a new snapshot), not before
    manager.clock.now += 1800
    for _ in range(3):
        await manager.forgotten.sweep()
    assert len(_moto_snapshots(jp_ec2_cloud)) == 1
    manager.clock.now += 1800
    await until(lambda: manager.records[iid].phase.value == "terminated", "no retry")
    assert len(_moto_snapshots(jp_ec2_cloud)) == 2


async def test_a_start_ends_the_countdown_and_history_survives_a_restart(jp_fetch, manager):
    # Given a forgotten-to-be instance stopped at T0
    iid = await _stopped_instance(jp_fetch, manager)
    # Then the stop time is persisted in the state store
    await until(lambda: manager.store.read_json("forgotten"), "nothing persisted")
    assert manager.store.read_json("forgotten")["stopped_since"][iid] == T0
    # When it is started again
    manager.clock.now = T0 + DAY
    code, _ = await api(jp_fetch, "instances", iid, "start", method="POST", body={})
    assert code == 202
    await until(lambda: manager.records[iid].phase.value == "ready", "never ready")
    # Then it has no termination time any more
    _, inst = await api(jp_fetch, "instances", iid)
    assert inst["terminates_at"] is None
    assert iid not in manager.forgotten.stopped_since


# -- IAM -------------------------------------------------------------------------------------------

POLICY = json.loads(
    (
        __import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "iam-policy.json"
    ).read_text()
)


@pytest.mark.parametrize(
    "without, action",
    [(None, None), ("SnapshotManagedVolume", "ec2:CreateSnapshot"),
     ("CreateManagedSnapshot", "ec2:CreateSnapshot"), ("ListSnapshots", "ec2:DescribeSnapshots")],
)  # fmt: skip
def test_snapshots_need_exactly_their_statements(jp_ec2_cloud, monkeypatch, tmp_path, without,
                                                 action):  # fmt: skip
    # Given a managed instance, stopped, and a user holding the policy (less one statement)
    def backend_for(policy):
        for name, value in jp_ec2_cloud.iam_user(policy).items():
            monkeypatch.setenv(name, value)
        return EC2Backend(endpoint_url=jp_ec2_cloud.endpoint_url, ssh_cidrs=["52.95.110.1/32"],
                          owner_id="iamtestowner01", store=StateStore(tmp_path / "s"),
                          max_attempts=1)  # fmt: skip

    policy = POLICY if without is None else without_statements(POLICY, [without])
    backend = backend_for(policy)
    launched = backend.launch(Profile(name="cpu", display_name="CPU", region="us-east-1",
                                      instance_type="t3.medium"))  # fmt: skip
    backend.stop([launched.instance_id])
    if without is None:
        # When its disk is snapshotted and listed / Then both work with exactly the policy
        made = backend.snapshot_volumes(launched.instance_id)
        assert [s.source_instance for s in made] == [launched.instance_id]
        listed = backend.list_snapshots()
        assert [s.id for s in listed] == [s.id for s in made]
        return
    # When the statement is missing / Then the step fails naming the IAM action
    with pytest.raises(PermissionDeniedError) as caught:
        if action == "ec2:DescribeSnapshots":
            backend.list_snapshots()
        else:
            backend.snapshot_volumes(launched.instance_id)
    assert action in caught.value.message
    assert caught.value.status == 502


def test_the_strict_front_makes_snapshots_late_and_can_fail_them(jp_ec2_cloud):
    # Given a volume, and the strict front (moto alone completes a snapshot at once)
    ec2 = jp_ec2_cloud.client(strict=True)
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    jp_ec2_cloud.front.snapshot_describes = 2
    # When a snapshot is made / Then it is pending, for two describes, then completed
    made = ec2.create_snapshot(VolumeId=volume)
    assert made["State"] == "pending"
    states = [
        ec2.describe_snapshots(SnapshotIds=[made["SnapshotId"]])["Snapshots"][0]["State"]
        for _ in range(3)
    ]
    assert states == ["pending", "pending", "completed"]
    # When the next snapshot is set to fail / Then it ends in error, with a message
    jp_ec2_cloud.front.fail_snapshots(1)
    failing = ec2.create_snapshot(VolumeId=volume)
    answers = [ec2.describe_snapshots(SnapshotIds=[failing["SnapshotId"]])["Snapshots"][0]
               for _ in range(3)]  # fmt: skip
    assert [a["State"] for a in answers] == ["pending", "pending", "error"]
    assert answers[-1]["StateMessage"].startswith("Snapshot creation failed")
