"""Dask workers through the REST API: validation, the cluster's security group, following the
notebook instance, a failed worker, re-discovery after a restart, and cost.

The real EC2 layer runs against the simulated cloud (moto over HTTP behind the strict front, so
AWS's documented rules for the calls made here are enforced). The SSH layers are FAKES, chosen
through ``provisioner_class`` and ``tunnel_class``: a provisioner that records what it was asked
to set up (``setup.sh`` and ``dask.sh`` runs) and can fail for a chosen worker, and forwards that
only keep a state. Real provisioning, Dask and the dashboard through the proxy are covered on
container hosts by ``tests/containers/test_workers_e2e.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from test_costs import PricedBackend, api  # noqa: F401 - shared fakes and helper

from jupyter_ec2.aws import TAG_WORKER_OF, cluster_group_name
from jupyter_ec2.errors import SSHError
from jupyter_ec2.manager import LaunchManager
from jupyter_ec2.models import Phase
from jupyter_ec2.provision import Provisioner, ProvisionResult
from jupyter_ec2.provision.dask import DaskResult
from jupyter_ec2.tunnel import TunnelManager, TunnelState

CALLER = "203.0.113.10/32"


class DaskFakeProvisioner(Provisioner):
    """FAKE provisioning: records each setup.sh and dask.sh run; fails for chosen instances."""

    runs: list[tuple[str, str, Any]] = []
    fail: set[str] = set()

    def provision(self, target, instance_id, base_url, on_progress=None, **kw):
        DaskFakeProvisioner.runs.append((instance_id, "setup", kw.get("idle_stop_minutes")))
        if instance_id in DaskFakeProvisioner.fail:
            raise SSHError(f"SSH to {instance_id} was refused (fake).")
        if on_progress:
            on_progress("service", 90, "service up")
        return ProvisionResult(8888, "t" * 43, base_url, None, ("service",), ("service",))

    def setup_dask(self, target, params, on_progress=None):
        DaskFakeProvisioner.runs.append((params["instance_id"], params["role"], params))
        if params["role"] == "scheduler":
            return DaskResult(f"tcp://{params['host']}:{params['scheduler_port']}", ())
        return DaskResult(None, ())

    def read_idle_status(self, target, instance_id, **kw):
        return None


class Forward:
    """FAKE forward: a port and a state."""

    def __init__(self, port: int):
        self.local_port = port
        self.state = TunnelState.UP


class KeyedTunnels(TunnelManager):
    """FAKE forwards, kept by key (the notebook's and its dashboard's)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.open_forwards: dict[str, Forward] = {}

    def open(self, key, target, remote_port, local_port=None, **kw):
        forward = self.open_forwards[key] = Forward(41000 + len(self.open_forwards))
        return forward

    def get(self, key):
        return self.open_forwards.get(key)

    def close(self, key):
        self.open_forwards.pop(key, None)

    def close_all(self):
        self.open_forwards.clear()


@pytest.fixture(autouse=True)
def _reset():
    DaskFakeProvisioner.runs = []
    DaskFakeProvisioner.fail = set()


@pytest.fixture
def jp_ec2_profiles() -> dict:
    """A plain profile and one that starts two workers with the instance."""
    return {
        "cpu": {"display_name": "CPU", "instance_type": "t3.medium", "volume_gb": 20},
        "cluster": {
            "display_name": "CPU + 2 workers",
            "instance_type": "t3.medium",
            "workers": {"count": 2, "instance_type": "t3.large"},
        },
    }


@pytest.fixture
def jp_server_config(jp_ec2_cloud, jp_ec2_config):
    """The real EC2 layer on the strict simulated cloud; SSH layers faked; fast polls."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ec2": True},
            "allow_unauthenticated_access": False,
        },
        "EC2Launcher": {
            **jp_ec2_config,
            "backend_class": PricedBackend,
            "provisioner_class": DaskFakeProvisioner,
            "tunnel_class": KeyedTunnels,
        },
        "EC2Backend": {
            "endpoint_url": jp_ec2_cloud.endpoint_url,
            "region": jp_ec2_cloud.region,
            "ssh_cidrs": [CALLER],
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
    """The running server's manager."""
    return jp_serverapp.web_app.settings["jupyter_ec2_manager"]


async def until(predicate, what: str, timeout: float = 20.0) -> None:
    """Wait for ``predicate()`` to hold (the manager works in the background)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def ready_instance(jp_fetch, manager, profile: str = "cpu") -> str:
    code, inst = await api(jp_fetch, "instances", method="POST", body={"profile": profile})
    assert code == 202, inst
    await until(lambda: manager.records[inst["id"]].phase == Phase.READY, "never ready")
    return inst["id"]


async def workers_of(jp_fetch, instance_id: str) -> list[dict]:
    _, inst = await api(jp_fetch, "instances", instance_id)
    return inst["workers"]


async def until_workers(jp_fetch, instance_id, phases: set[str], count: int, timeout=20.0):
    """Wait until ``count`` workers are listed, each in one of ``phases``; return the Instance."""
    deadline = time.monotonic() + timeout
    while True:
        _, inst = await api(jp_fetch, "instances", instance_id)
        workers = inst["workers"]
        if len(workers) == count and all(w["phase"] in phases for w in workers):
            return inst
        assert time.monotonic() < deadline, f"workers stuck: {workers}"
        await asyncio.sleep(0.05)


def cloud_instances(cloud, **filters) -> dict[str, dict]:
    """Every instance of the simulated cloud (id → description)."""
    found = cloud.client().describe_instances()
    return {i["InstanceId"]: i for r in found["Reservations"] for i in r["Instances"]}


def ec2_states(cloud, ids) -> dict[str, str]:
    every = cloud_instances(cloud)
    return {i: every[i]["State"]["Name"] for i in ids}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 21}, "count"),
        ({"count": 2.5}, "count"),
        ({}, "count"),
        ({"count": 2, "instance_type": "huge"}, "instance_type"),
        ({"count": 2, "instance_type": 3}, "instance_type"),
        ({"count": 2, "colour": "red"}, "colour"),
        ([2], "body"),
    ],
)
async def test_a_bad_request_is_a_400_naming_the_field_and_launches_nothing(
    jp_fetch, manager, jp_ec2_cloud, body, field
):
    # Given a ready notebook instance
    instance_id = await ready_instance(jp_fetch, manager)
    # When workers are asked for with a bad body
    code, answer = await api(
        jp_fetch, "instances", instance_id, "workers", method="POST", body=body
    )
    # Then a 400 names the field, and nothing but the notebook instance exists
    assert code == 400, answer
    assert answer["field"] == field
    assert list(cloud_instances(jp_ec2_cloud)) == [instance_id]


async def test_an_instance_type_the_region_does_not_offer_is_refused(
    jp_fetch, manager, jp_ec2_cloud
):
    # Given a ready notebook instance / When workers of a type that does not exist are asked for
    instance_id = await ready_instance(jp_fetch, manager)
    body = {"count": 1, "instance_type": "zz9.plural"}
    code, answer = await api(
        jp_fetch, "instances", instance_id, "workers", method="POST", body=body
    )
    # Then a 400 names instance_type and nothing is launched
    assert code == 400, answer
    assert answer["field"] == "instance_type"
    assert list(cloud_instances(jp_ec2_cloud)) == [instance_id]


async def test_workers_of_an_instance_that_is_not_ready_are_a_409(jp_fetch, manager, jp_ec2_cloud):
    # Given a stopped notebook instance
    instance_id = await ready_instance(jp_fetch, manager)
    await api(jp_fetch, "instances", instance_id, "stop", method="POST", body={})
    await until(lambda: manager.records[instance_id].phase == Phase.STOPPED, "never stopped")
    # When workers are asked for / Then 409, and nothing launched
    body = {"count": 1}
    code, answer = await api(
        jp_fetch, "instances", instance_id, "workers", method="POST", body=body
    )
    assert code == 409, answer
    assert list(cloud_instances(jp_ec2_cloud)) == [instance_id]


async def test_two_workers_come_up_hardened_in_a_group_open_only_to_itself_and_ssh(
    jp_fetch, jp_base_url, manager, jp_ec2_cloud
):
    # Given a ready notebook instance, which offers the workers action
    instance_id = await ready_instance(jp_fetch, manager)
    _, inst = await api(jp_fetch, "instances", instance_id)
    assert "workers" in inst["actions"] and inst["workers"] == [] and inst["dask"] is None
    # When two workers are added
    code, inst = await api(
        jp_fetch, "instances", instance_id, "workers", method="POST", body={"count": 2}
    )
    # Then the answer is a 202 with two launching workers
    assert code == 202, inst
    assert [w["phase"] for w in inst["workers"]] == ["launching", "launching"]
    inst = await until_workers(jp_fetch, instance_id, {"ready"}, 2)
    worker_ids = [w["id"] for w in inst["workers"]]
    assert all(w["instance_type"] == "t3.medium" for w in inst["workers"])
    # And the Instance names the scheduler on the notebook's private address, and the dashboard
    every = cloud_instances(jp_ec2_cloud)
    notebook = every[instance_id]
    assert inst["dask"] == {
        "scheduler": f"tcp://{notebook['PrivateIpAddress']}:8786",
        "dashboard_url": f"{jp_base_url}jupyter-ec2/remote/{instance_id}/dask/status",
    }
    # And each worker is launched like the notebook: same image, subnet, key; encrypted disk
    for worker_id in worker_ids:
        worker = every[worker_id]
        assert worker["ImageId"] == notebook["ImageId"]
        assert worker["SubnetId"] == notebook["SubnetId"]
        assert worker["KeyName"] == notebook["KeyName"]
        assert worker["MetadataOptions"]["HttpTokens"] == "required"
        tags = {t["Key"]: t["Value"] for t in worker["Tags"]}
        assert tags[TAG_WORKER_OF] == instance_id and tags["jupyter-ec2:managed"] == "true"
        volume_id = worker["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        volume = jp_ec2_cloud.client().describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        assert volume["Encrypted"] is True
    # And the cluster group holds exactly tcp/22 from the caller and all traffic from itself
    ec2 = jp_ec2_cloud.client()
    name = cluster_group_name(manager.backend.owner_id, instance_id)
    group = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])[
        "SecurityGroups"
    ][0]
    rules = []
    for perm in group["IpPermissions"]:
        for rng in perm.get("IpRanges", []):
            rules.append(
                (perm["IpProtocol"], perm.get("FromPort"), perm.get("ToPort"), rng["CidrIp"])
            )
        for pair in perm.get("UserIdGroupPairs", []):
            rules.append(
                (perm["IpProtocol"], perm.get("FromPort"), perm.get("ToPort"), pair["GroupId"])
            )
        assert not perm.get("Ipv6Ranges") and not perm.get("PrefixListIds")
    assert sorted(rules, key=str) == sorted(
        [("tcp", 22, 22, CALLER), ("-1", None, None, group["GroupId"])], key=str
    )
    # And no group of this account opens the scheduler or dashboard ports to any address range
    for any_group in ec2.describe_security_groups()["SecurityGroups"]:
        for perm in any_group["IpPermissions"]:
            if perm.get("IpRanges") or perm.get("Ipv6Ranges"):
                ports = range(perm.get("FromPort", 0), perm.get("ToPort", 65535) + 1)
                assert perm["IpProtocol"] != "-1" and 8786 not in ports and 8787 not in ports
    # And the workers are in the cluster group only, the notebook instance joined it
    assert all(
        [g["GroupId"] for g in every[w]["SecurityGroups"]] == [group["GroupId"]] for w in worker_ids
    )
    assert group["GroupId"] in [g["GroupId"] for g in notebook["SecurityGroups"]]
    # And each worker was set up with the notebook's environment, idle auto-stop off, and a
    # dask worker pointed at the scheduler; the notebook instance got the scheduler once
    setups = [r for r in DaskFakeProvisioner.runs if r[1] == "setup" and r[0] in worker_ids]
    assert sorted(r[0] for r in setups) == sorted(worker_ids) and {r[2] for r in setups} == {0}
    dask_workers = [r[2] for r in DaskFakeProvisioner.runs if r[1] == "worker"]
    assert {p["scheduler_address"] for p in dask_workers} == {inst["dask"]["scheduler"]}
    assert {p["host"] for p in dask_workers} == {every[w]["PrivateIpAddress"] for w in worker_ids}
    schedulers = [r[2] for r in DaskFakeProvisioner.runs if r[1] == "scheduler"]
    assert (
        schedulers[0]["dashboard_prefix"] == f"{jp_base_url}jupyter-ec2/remote/{instance_id}/dask"
    )
    # And the dashboard has its own forward, which the proxy's lookup finds
    lookup = manager.parent.settings["jupyter_ec2_remote_lookup"]
    assert lookup(f"{instance_id}/dask") is not None
    # And the workers count in the costs
    _, costs = await api(jp_fetch, "costs")
    assert set(worker_ids) <= {row["id"] for row in costs["instances"]}


async def test_workers_stop_start_and_terminate_with_their_notebook_instance(
    jp_fetch, manager, jp_ec2_cloud
):
    # Given a notebook instance with two ready workers
    instance_id = await ready_instance(jp_fetch, manager)
    await api(jp_fetch, "instances", instance_id, "workers", method="POST", body={"count": 2})
    inst = await until_workers(jp_fetch, instance_id, {"ready"}, 2)
    worker_ids = [w["id"] for w in inst["workers"]]
    # When the notebook instance is stopped / Then its workers are stopped in EC2 too
    await api(jp_fetch, "instances", instance_id, "stop", method="POST", body={})
    await until_workers(jp_fetch, instance_id, {"stopped"}, 2)
    assert set(ec2_states(jp_ec2_cloud, worker_ids).values()) == {"stopped"}
    _, inst = await api(jp_fetch, "instances", instance_id)
    assert inst["dask"] is not None or inst["workers"]  # still listed while stopped
    assert manager.tunnels.get(f"{instance_id}-dask") is None
    # When it is started / Then the workers run again and are set up again (fast path)
    before = len([r for r in DaskFakeProvisioner.runs if r[1] == "worker"])
    await api(jp_fetch, "instances", instance_id, "start", method="POST", body={})
    await until_workers(jp_fetch, instance_id, {"ready"}, 2)
    assert set(ec2_states(jp_ec2_cloud, worker_ids).values()) == {"running"}
    assert len([r for r in DaskFakeProvisioner.runs if r[1] == "worker"]) == before + 2
    # When it is terminated / Then no worker is left running
    await api(jp_fetch, "instances", instance_id, method="DELETE")
    await until(
        lambda: set(ec2_states(jp_ec2_cloud, worker_ids).values()) == {"terminated"},
        "workers not terminated",
    )


async def test_an_idle_stop_on_the_instance_stops_the_workers(jp_fetch, manager, jp_ec2_cloud):
    # Given a notebook instance with one ready worker
    instance_id = await ready_instance(jp_fetch, manager)
    await api(jp_fetch, "instances", instance_id, "workers", method="POST", body={"count": 1})
    inst = await until_workers(jp_fetch, instance_id, {"ready"}, 1)
    worker_id = inst["workers"][0]["id"]
    # When the instance stops itself (its idle watchdog; EC2 reports it stopped)
    jp_ec2_cloud.client().stop_instances(InstanceIds=[instance_id])
    # Then the manager notices and stops the worker
    await until_workers(jp_fetch, instance_id, {"stopped"}, 1)
    assert ec2_states(jp_ec2_cloud, [worker_id]) == {worker_id: "stopped"}
    assert manager.records[instance_id].phase == Phase.STOPPED


async def test_a_failed_worker_is_reported_terminated_and_the_notebook_stays_ready(
    jp_fetch, manager, jp_ec2_cloud
):
    # Given a ready notebook instance, and a provisioner that fails for the first new worker
    instance_id = await ready_instance(jp_fetch, manager)
    real = manager.backend.launch_workers

    def launch_and_break_one(*args, **kwargs):
        launched = real(*args, **kwargs)
        DaskFakeProvisioner.fail.add(launched.worker_ids[0])
        return launched

    manager.backend.launch_workers = launch_and_break_one
    # When two workers are added
    await api(jp_fetch, "instances", instance_id, "workers", method="POST", body={"count": 2})
    inst = await until_workers(jp_fetch, instance_id, {"ready", "failed"}, 2)
    # Then the broken one is failed with the reason, the other ready, and the notebook ready
    by_phase = {w["phase"]: w for w in inst["workers"]}
    assert set(by_phase) == {"ready", "failed"}
    assert "refused" in by_phase["failed"]["error"]
    assert inst["phase"] == "ready" and inst["error"] is None
    # And the failed worker is not left running
    failed_id = by_phase["failed"]["id"]
    await until(
        lambda: ec2_states(jp_ec2_cloud, [failed_id])[failed_id] in ("terminated", "shutting-down"),
        "failed worker left running",
    )
    # When all workers are removed / Then every one is terminated and the list empties
    code, _ = await api(jp_fetch, "instances", instance_id, "workers", method="DELETE")
    assert code == 202
    await until(
        lambda: (
            set(ec2_states(jp_ec2_cloud, [w["id"] for w in inst["workers"]]).values())
            == {"terminated"}
        ),
        "workers not terminated",
    )
    await until(lambda: manager.to_json(manager.records[instance_id])["workers"] == [], "listed")
    assert manager.to_json(manager.records[instance_id])["dask"] is None


async def test_a_profile_starts_its_workers_and_a_restart_finds_them_by_tags(
    jp_fetch, manager, jp_ec2_cloud
):
    # Given a launch of a profile with two t3.large workers
    instance_id = await ready_instance(jp_fetch, manager, profile="cluster")
    # Then its workers come up with it
    inst = await until_workers(jp_fetch, instance_id, {"ready"}, 2)
    assert {w["instance_type"] for w in inst["workers"]} == {"t3.large"}
    worker_ids = sorted(w["id"] for w in inst["workers"])
    # When the server restarts (a fresh manager on the same state and cloud)
    fresh = LaunchManager(
        parent=manager.parent,
        backend=manager.backend,
        provisioner=manager.provisioner,
        tunnels=manager.tunnels,
        store=manager.store,
        profiles=manager.profiles,
    )
    await fresh.start()
    try:
        # Then it finds the same workers by their tags, ready, and launches no others
        await until(lambda: instance_id in fresh.records, "notebook not adopted")
        await until(
            lambda: (
                sorted(w["id"] for w in fresh.to_json(fresh.records[instance_id])["workers"])
                == worker_ids
            ),
            "workers not re-discovered",
        )
        await until(
            lambda: (
                {w["phase"] for w in fresh.to_json(fresh.records[instance_id])["workers"]}
                == {"ready"}
            ),
            "re-discovered workers not ready",
        )
        workers = [i for i, d in cloud_instances(jp_ec2_cloud).items() if i != instance_id]
        assert sorted(workers) == worker_ids
        assert instance_id not in [w for w in worker_ids]
        assert set(fresh.records) == {instance_id}  # workers are not notebook instances
    finally:
        await fresh.stop()


# -- IAM: the Workers statement of docs/iam-policy.json ------------------------------------------


def _workers_lifecycle(backend) -> list[str]:
    """Launch a notebook instance, add two workers, terminate all, delete the cluster group."""
    from test_iam import _profile

    done = []

    def step(name, call, *args, **kwargs):
        try:
            result = call(*args, **kwargs)
        except Exception as err:
            err.step = name  # type: ignore[attr-defined]
            raise
        done.append(name)
        return result

    notebook = step("launch", backend.launch, _profile())
    launched = step(
        "workers", backend.launch_workers, notebook.instance_id, 2, launch_id="iam-workers-1"
    )
    step("terminate", backend.terminate, [notebook.instance_id, *launched.worker_ids])
    step("delete group", backend.delete_cluster_group, notebook.instance_id)
    return done


def test_workers_pass_with_exactly_the_policy_and_fail_without_the_workers_statement(
    jp_ec2_cloud, monkeypatch, tmp_path
):
    from test_iam import OWNER, POLICY

    from jupyter_ec2.aws import EC2Backend
    from jupyter_ec2.errors import PermissionDeniedError
    from jupyter_ec2.store import StateStore
    from jupyter_ec2.testing.iam import without_statements

    def backend_for(policy, name):
        for key, value in jp_ec2_cloud.iam_user(policy).items():
            monkeypatch.setenv(key, value)
        return EC2Backend(
            endpoint_url=jp_ec2_cloud.endpoint_url,
            ssh_cidrs=[CALLER],
            owner_id=OWNER,
            store=StateStore(tmp_path / name),
            max_attempts=1,
        )

    # Given a user holding exactly the policy / When workers are added and removed / Then it passes
    done = _workers_lifecycle(backend_for(POLICY, "whole"))
    assert done == ["launch", "workers", "terminate", "delete group"]
    # Given the policy without the statement that lets a managed instance change its groups
    # (shared with resize) / When workers are added
    less = without_statements(POLICY, ["ModifyManagedInstance"])
    with pytest.raises(PermissionDeniedError) as caught:
        _workers_lifecycle(backend_for(less, "less"))
    # Then adding them fails with a 502 naming the missing IAM action
    assert caught.value.step == "workers"  # type: ignore[attr-defined]
    assert caught.value.status == 502
    assert "ec2:ModifyInstanceAttribute" in caught.value.message
    # Given the policy without its Workers statement / When the cluster is removed
    with pytest.raises(PermissionDeniedError) as caught:
        _workers_lifecycle(backend_for(without_statements(POLICY, ["Workers"]), "nogroup"))
    # Then deleting the cluster's group fails naming the missing IAM action
    assert caught.value.step == "delete group"  # type: ignore[attr-defined]
    assert "ec2:DeleteSecurityGroup" in caught.value.message


# -- the strict front's rules for the calls workers make (moto accepts these, AWS does not) ------


@pytest.mark.parametrize(
    ("action", "params", "rule"),
    [
        ("RunInstances", {"MinCount": "3", "MaxCount": "2"}, "instance counts"),
        ("RunInstances", {"MinCount": "0", "MaxCount": "2"}, "instance counts"),
        (
            "AuthorizeSecurityGroupIngress",
            {"IpPermissions.1.IpProtocol": "-1", "IpPermissions.1.Groups.1.GroupName": "mine"},
            "source group by id",
        ),
        (
            "AuthorizeSecurityGroupIngress",
            {
                "IpPermissions.1.IpProtocol": "tcp",
                "IpPermissions.1.Groups.1.GroupId": "sg-1234abcd",
            },
            "tcp and udp ports",
        ),
        (
            "AuthorizeSecurityGroupIngress",
            {
                "IpPermissions.1.IpProtocol": "-1",
                "IpPermissions.1.Groups.1.GroupId": "sg-1234abcd",
                "IpPermissions.1.Groups.1.Description": "it's mine",
            },
            "security group rule description",
        ),
        (
            "ModifyInstanceAttribute",
            {"InstanceId": "i-1234abcd", "GroupId.1": "web"},
            "instance groups by id",
        ),
    ],
)
def test_the_strict_front_refuses_what_aws_refuses_for_workers(action, params, rule):
    # Given a request AWS refuses and moto accepts / When the front checks it
    from jupyter_ec2.testing.strict import check_request

    refusal = check_request(action, params)
    # Then it is refused by the named rule with AWS's error code
    assert refusal is not None and refusal.rule == rule
    assert refusal.code == "InvalidParameterValue"


def test_the_strict_front_accepts_the_requests_workers_make():
    # Given what the EC2 layer sends for workers / Then the front lets each through
    from jupyter_ec2.testing.strict import check_request

    assert check_request("RunInstances", {"MinCount": "2", "MaxCount": "2"}) is None
    self_rule = {
        "GroupId": "sg-1234abcd",
        "IpPermissions.1.IpProtocol": "-1",
        "IpPermissions.1.Groups.1.GroupId": "sg-1234abcd",
        "IpPermissions.1.Groups.1.Description": "jupyter-ec2 cluster: members of this group only",
        "IpPermissions.2.IpProtocol": "tcp",
        "IpPermissions.2.FromPort": "22",
        "IpPermissions.2.ToPort": "22",
        "IpPermissions.2.IpRanges.1.CidrIp": CALLER,
    }
    assert check_request("AuthorizeSecurityGroupIngress", self_rule) is None
    groups = {"InstanceId": "i-1234abcd", "GroupId.1": "sg-1234abcd", "GroupId.2": "sg-5678abcd"}
    assert check_request("ModifyInstanceAttribute", groups) is None


def test_the_dashboard_forward_trusts_the_notebook_instances_pinned_key(tmp_path):
    # Given a pinned host key for a notebook instance
    from jupyter_ec2.keys import generate_ed25519
    from jupyter_ec2.provision.ssh import SSHTarget
    from jupyter_ec2.store import StateStore
    from jupyter_ec2.workers import dashboard_key

    store = StateStore(tmp_path / "state")
    pinned = generate_ed25519().public_openssh
    store.pin_host_key("i-0123456789abcdef0", pinned)
    stale = SSHTarget(
        host="198.51.100.7",
        host_public_key=generate_ed25519().public_openssh,
        client_key=store.load_or_create_key_pair(),
    )
    # When the dashboard's forward (keyed "<id>-dask") asks whom to trust
    target = TunnelManager(store=store).current_target(dashboard_key("i-0123456789abcdef0"), stale)
    # Then it is the instance's own pinned key
    assert target.host_public_key.split()[:2] == pinned.split()[:2]


async def test_the_proxy_sends_the_dashboard_path_to_the_dashboard_forward(
    jp_fetch, jp_base_url, manager
):
    # Given a notebook instance with a worker, its dashboard forward ending at a local HTTP
    # server that stands in for the scheduler's dashboard (the real one: test_workers_e2e.py)
    import http.server
    import threading

    seen: list[str] = []

    class Dashboard(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            seen.append(self.path)
            body = b"<html>dask dashboard</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        instance_id = await ready_instance(jp_fetch, manager)
        await api(jp_fetch, "instances", instance_id, "workers", method="POST", body={"count": 1})
        inst = await until_workers(jp_fetch, instance_id, {"ready"}, 1)
        manager.tunnels.open_forwards[f"{instance_id}-dask"].local_port = server.server_port
        # When the dashboard URL of the Instance is fetched through the proxy
        path = inst["dask"]["dashboard_url"][len(jp_base_url) :]
        response = await jp_fetch(*path.split("/"))
        # Then the dashboard's forward answered, with the whole path (nothing rewritten)
        assert response.code == 200 and b"dask dashboard" in response.body
        assert seen == [inst["dask"]["dashboard_url"]]
        # And a path outside dask/ still goes to the notebook's own forward, not the dashboard
        from tornado.httpclient import HTTPClientError

        with pytest.raises(HTTPClientError) as caught:  # the fake notebook forward has no server
            await jp_fetch("jupyter-ec2", "remote", instance_id, "api", "status")
        assert caught.value.code in (502, 503, 504)
        assert len(seen) == 1
    finally:
        server.shutdown()
        server.server_close()
