"""End to end on container hosts: two Dask workers next to a notebook instance.

Real parts only: moto over HTTP behind the strict front, a booted systemd-nspawn container per
instance (the notebook instance and each worker, on the harness's bridge with their private
addresses, so they reach each other as in a VPC), provisioning over SSH, Dask's own
``dask scheduler`` and ``dask worker`` services from the harness's package index, the remote
kernel reached through the proxy, and the dashboard through its forward and the proxy.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from test_e2e import _json, _run_code, _wait_phase, jp_server_config  # noqa: F401 - shared

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(2400)]

READY_TIMEOUT = 900

CLUSTER_CODE = """
import json, socket
from dask.distributed import Client
client = Client(timeout=60)
client.wait_for_workers({count}, timeout=120)
info = client.scheduler_info()
workers = info["workers"]
def part(lo, hi):
    return socket.gethostname(), sum(i * i for i in range(lo, hi))
# One half of the sum on each worker, pinned there: the computation is spread over both.
futures = [
    client.submit(part, k * 500, (k + 1) * 500, workers=[address], pure=False)
    for k, address in enumerate(sorted(workers))
]
parts = client.gather(futures)
print(json.dumps({{
    "hosts": sorted(w["host"] for w in workers.values()),
    "names": sorted(str(w["name"]) for w in workers.values()),
    "ran_on": sorted(p[0] for p in parts),
    "total": sum(p[1] for p in parts),
    "hostnames": sorted(client.run(socket.gethostname).values()),
}}))
client.close()
"""


async def _wait_workers(jp_fetch, instance_id, phases, count, timeout=READY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        _, inst = await _json(jp_fetch, "instances", instance_id)
        workers = inst["workers"]
        if len(workers) == count and all(w["phase"] in phases for w in workers):
            return inst
        failed = [w for w in workers if w["phase"] == "failed"]
        if failed and "failed" not in phases:
            _, log = await _json(jp_fetch, "instances", instance_id, "log")
            pytest.fail(f"{failed}\n" + "\n".join(line["text"] for line in log["lines"][-80:]))
        if time.monotonic() > deadline:
            pytest.fail(f"workers stuck: {workers}")
        await asyncio.sleep(1)


def _private_ips(cloud, ids) -> dict[str, str]:
    found = cloud.client().describe_instances(InstanceIds=list(ids))
    return {
        i["InstanceId"]: i["PrivateIpAddress"]
        for r in found["Reservations"]
        for i in r["Instances"]
    }


def _states(cloud, ids) -> dict[str, str]:
    found = cloud.client().describe_instances(InstanceIds=list(ids))
    return {
        i["InstanceId"]: i["State"]["Name"] for r in found["Reservations"] for i in r["Instances"]
    }


async def _cluster(jp_fetch, jp_ws_fetch, instance_id, count=2) -> dict:
    out = await _run_code(jp_fetch, jp_ws_fetch, instance_id, CLUSTER_CODE.format(count=count))
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no answer from the remote kernel: {out}"
    return json.loads(lines[-1])


async def test_two_workers_compute_show_the_dashboard_and_follow_the_notebook(
    jp_fetch, jp_ws_fetch, jp_base_url, jp_ec2_cloud, jp_ec2_hosts
):
    # Given a ready notebook instance on a container host
    code, inst = await _json(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    assert code == 202
    instance_id = inst["id"]
    await _wait_phase(jp_fetch, instance_id, {"ready"}, timeout=READY_TIMEOUT)
    # When two workers are added
    code, inst = await _json(
        jp_fetch, "instances", instance_id, "workers", method="POST", body={"count": 2}
    )
    assert code == 202, inst
    # Then both reach ready, each registered with the scheduler
    inst = await _wait_workers(jp_fetch, instance_id, {"ready"}, 2)
    worker_ids = sorted(w["id"] for w in inst["workers"])
    addresses = _private_ips(jp_ec2_cloud, [instance_id, *worker_ids])
    assert inst["dask"]["scheduler"] == f"tcp://{addresses[instance_id]}:8786"
    # And in the remote kernel Client() finds the scheduler by itself and lists both workers,
    # whose addresses and names are the worker instances'
    cluster = await _cluster(jp_fetch, jp_ws_fetch, instance_id)
    assert cluster["hosts"] == sorted(addresses[w] for w in worker_ids)
    assert cluster["names"] == worker_ids
    # And a computation spread over both gives the right result, half on each worker host
    assert cluster["total"] == sum(i * i for i in range(1000))
    assert cluster["ran_on"] == cluster["hostnames"] and len(set(cluster["ran_on"])) == 2
    # And the dashboard answers through the proxy
    dashboard = inst["dask"]["dashboard_url"]
    assert dashboard.startswith(jp_base_url)
    response = await jp_fetch(*dashboard[len(jp_base_url) :].split("/"))
    assert response.code == 200
    assert b"bokeh" in response.body.lower() or b"dask" in response.body.lower()

    # When the notebook instance is stopped
    await _json(jp_fetch, "instances", instance_id, "stop", method="POST", body={})
    await _wait_phase(jp_fetch, instance_id, {"stopped"})
    # Then its workers are stopped too
    await _wait_workers(jp_fetch, instance_id, {"stopped"}, 2, timeout=300)
    assert set(_states(jp_ec2_cloud, worker_ids).values()) == {"stopped"}
    for worker_id in worker_ids:
        await asyncio.to_thread(jp_ec2_hosts.wait_for_no_host, worker_id, 120)

    # When it is started / Then the cluster comes back with both workers
    await _json(jp_fetch, "instances", instance_id, "start", method="POST", body={})
    await _wait_phase(jp_fetch, instance_id, {"ready"}, timeout=READY_TIMEOUT)
    await _wait_workers(jp_fetch, instance_id, {"ready"}, 2)
    cluster = await _cluster(jp_fetch, jp_ws_fetch, instance_id)
    assert cluster["names"] == worker_ids
    assert cluster["total"] == sum(i * i for i in range(1000))

    # When it is terminated / Then nothing is left running
    await _json(jp_fetch, "instances", instance_id, method="DELETE")
    await _wait_phase(jp_fetch, instance_id, {"terminated"})
    deadline = time.monotonic() + 300
    while set(_states(jp_ec2_cloud, worker_ids).values()) != {"terminated"}:
        assert time.monotonic() < deadline, _states(jp_ec2_cloud, worker_ids)
        await asyncio.sleep(1)
    await asyncio.to_thread(jp_ec2_hosts.sync)
    for iid in (instance_id, *worker_ids):
        assert jp_ec2_hosts.host_kind.host(iid) is None
