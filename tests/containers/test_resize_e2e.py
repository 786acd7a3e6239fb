"""End to end on container hosts: resize a ready instance and keep its disk and its work.

Real parts only: moto over HTTP behind the strict front (which refuses a type change of an
instance that is not stopped, as EC2 does), a systemd-nspawn container per instance booting
systemd and cloud-init with the project's user-data, provisioning over SSH as ``admin`` (sudo)
with the ``pip`` environment from the harness's package index, the forward and the proxy. The
container's disk is kept across the stop and start of the resize, as an EBS volume is.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from jupyter_ec2.testing.containers import container_config
from jupyter_ec2.testing.demo import simulated_config

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1500)]

READY_TIMEOUT = 600


@pytest.fixture
def jp_server_config(jp_ec2_cloud, jp_ec2_hosts, tmp_path):
    """The extension on the simulated cloud with container hosts, authentication on."""
    base = simulated_config(
        jp_ec2_cloud,
        jp_ec2_hosts,
        tmp_path / "state",
        notebook_user="jupyter",
        profiles={"cpu": {"display_name": "CPU", "instance_type": "t3.medium"}},
    )
    config = container_config(base)
    config["ServerApp"]["allow_unauthenticated_access"] = False
    config["LaunchManager"] = {"poll_fast": 0.3, "poll_slow": 1.0, "idle_check_interval": 1.0}
    config["Provisioner"]["connect_timeout"] = 120
    return config


async def _json(jp_fetch, *parts, method="GET", body=None):
    """(status, JSON) of one API call; an error answer is returned, not raised."""
    from tornado.httpclient import HTTPClientError

    try:
        response = await jp_fetch(
            "jupyter-ec2", "api", *parts, method=method,
            body=None if body is None else json.dumps(body), allow_nonstandard_methods=True,
        )  # fmt: skip
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body)
    return response.code, json.loads(response.body)


async def _wait_phase(jp_fetch, instance_id, wanted, timeout=READY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        _, inst = await _json(jp_fetch, "instances", instance_id)
        if inst["phase"] in wanted:
            return inst
        if inst["phase"] == "failed":
            _, log = await _json(jp_fetch, "instances", instance_id, "log")
            pytest.fail(
                f"failed: {inst['error']}\n" + "\n".join(line["text"] for line in log["lines"])
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{instance_id} stuck in {inst['phase']} ({inst['message']})")
        await asyncio.sleep(0.5)


async def _remote_contents(jp_fetch, instance_id, name, method="GET", body=None):
    """The remote notebook's contents API, through the proxy."""
    response = await jp_fetch(
        "jupyter-ec2", "remote", instance_id, "api", "contents", name, method=method,
        body=None if body is None else json.dumps(body),
        params={"content": "1"} if method == "GET" else None,
    )  # fmt: skip
    return json.loads(response.body)


def _described(cloud, instance_id: str) -> dict:
    answer = cloud.client().describe_instances(InstanceIds=[instance_id])
    return answer["Reservations"][0]["Instances"][0]


def _root_volume(described: dict) -> str:
    return described["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]


async def test_resize_keeps_the_disk_and_refuses_before_stopping(
    jp_fetch, jp_ec2_cloud, jp_ec2_hosts
):
    # Given a ready t3.medium on a container host, and a file written in its remote notebook
    code, inst = await _json(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    assert code == 202, inst
    iid = inst["id"]
    await _wait_phase(jp_fetch, iid, {"ready"})
    await _remote_contents(
        jp_fetch, iid, "kept.txt", "PUT", {"type": "file", "format": "text", "content": "kept"}
    )
    before = _described(jp_ec2_cloud, iid)
    volume = _root_volume(before)
    host = jp_ec2_hosts.host_for(iid)
    boots = host.boots

    # When an arm64 type is asked / Then 400 naming the architecture, and it was NOT stopped
    code, answer = await _json(
        jp_fetch, "instances", iid, "resize", method="POST", body={"instance_type": "m7g.large"}
    )
    assert code == 400 and answer["field"] == "instance_type", answer
    assert "architecture" in answer["message"] and "arm64" in answer["message"]
    # When the quota of the new family is too small / Then 409 naming it, before any stop
    jp_ec2_cloud.set_service_quota("L-DB2E81BA", 2)
    code, answer = await _json(
        jp_fetch, "instances", iid, "resize", method="POST", body={"instance_type": "g5.xlarge"}
    )
    assert code == 409 and "L-DB2E81BA" in answer["message"], answer
    # When a type the availability zone does not offer is asked / Then 400 naming the zone
    zone = before["Placement"]["AvailabilityZone"]
    missing = _not_offered_in(jp_ec2_cloud, zone)
    code, answer = await _json(
        jp_fetch, "instances", iid, "resize", method="POST", body={"instance_type": missing}
    )
    assert code == 400 and zone in answer["message"] and "not offered" in answer["message"]
    # And after the three refusals the instance still runs on the same boot, ready
    assert _described(jp_ec2_cloud, iid)["State"]["Name"] == "running"
    assert jp_ec2_hosts.host_for(iid) is host and host.boots == boots
    _, inst = await _json(jp_fetch, "instances", iid)
    assert inst["phase"] == "ready" and inst["instance_type"] == "t3.medium"

    # When it is resized to m7i.large
    code, inst = await _json(
        jp_fetch, "instances", iid, "resize", method="POST", body={"instance_type": "m7i.large"}
    )
    assert code == 202 and inst["phase"] == "stopping", inst
    await _wait_phase(jp_fetch, iid, {"resizing", "booting", "connecting", "provisioning"}, 300)
    inst = await _wait_phase(jp_fetch, iid, {"ready"})
    # Then EC2 reports the new type on the same volume, the phase is ready again
    after = _described(jp_ec2_cloud, iid)
    assert after["InstanceType"] == "m7i.large"
    assert _root_volume(after) == volume
    assert inst["instance_type"] == "m7i.large"
    # And the container was stopped and booted again, and the file is still there
    assert jp_ec2_hosts.host_for(iid).boots > boots or jp_ec2_hosts.host_for(iid) is not host
    kept = await _remote_contents(jp_fetch, iid, "kept.txt")
    assert kept["content"] == "kept"
    # And the log tells the change and that the setup's steps were already done
    _, log = await _json(jp_fetch, "instances", iid, "log")
    texts = [line["text"] for line in log["lines"]]
    assert any("t3.medium → m7i.large" in t for t in texts), texts

    # When it is terminated / Then its container is gone
    await _json(jp_fetch, "instances", iid, method="DELETE")
    await _wait_phase(jp_fetch, iid, {"terminated"})


def _not_offered_in(cloud, zone: str) -> str:
    """An x86_64 type the region offers but ``zone`` does not."""
    ec2 = cloud.client()
    pages = ec2.get_paginator("describe_instance_type_offerings")

    def offered(**kw) -> set[str]:
        return {o["InstanceType"] for p in pages.paginate(**kw) for o in p["InstanceTypeOfferings"]}

    region = offered(LocationType="region")
    in_zone = offered(
        LocationType="availability-zone", Filters=[{"Name": "location", "Values": [zone]}]
    )
    for name in sorted(region - in_zone):
        info = ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"][0]
        if "x86_64" in info["ProcessorInfo"]["SupportedArchitectures"] and "mac" not in name:
            return name
    pytest.skip(f"every x86_64 type of the region is offered in {zone}")
