"""End to end on container hosts: save a provisioned instance as an image, relaunch from it.

Real parts only: moto over HTTP through the strict front, systemd-nspawn containers booting
systemd and cloud-init with the project's real user-data, provisioning over SSH with the ``pip``
environment from the harness's package index. CreateImage copies the instance's disk (the
container's overlay upper directory) as EBS snapshots the root volume, with EC2's reboot around
it; a launch from the image starts from that copy (see jupyter_ec2.testing.saved_images).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from test_e2e import _json, _run_code, _wait_phase

from jupyter_ec2.testing.containers import container_config
from jupyter_ec2.testing.demo import simulated_config

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1800)]


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
    config["Provisioner"]["connect_timeout"] = 180
    return config


async def _wait_image(jp_fetch, image_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, listed = await _json(jp_fetch, "images")
        found = [i for i in listed["images"] if i["id"] == image_id]
        if found and found[0]["state"] != "pending":
            return found[0]
        assert time.monotonic() < deadline, f"image {image_id} still pending"
        await asyncio.sleep(1)


def _inside(hosts, instance_id: str, *command: str) -> str:
    host = hosts.host_for(instance_id)
    assert host is not None, f"{instance_id} has no running container"
    return host.exec(*command).stdout


async def test_save_a_provisioned_instance_and_launch_from_it(
    jp_fetch, jp_ws_fetch, jp_ec2_cloud, jp_ec2_hosts
):
    # Given a provisioned, ready instance with a file written in its notebook
    _, inst = await _json(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    source = inst["id"]
    await _wait_phase(jp_fetch, source, {"ready"})
    await _run_code(jp_fetch, jp_ws_fetch, source, "open('from-source.txt','w').write('saved')")

    # When it is saved as an image with EC2's reboot (a consistent image)
    code, image = await _json(
        jp_fetch, "instances", source, "image", method="POST", body={"name": "env", "reboot": True}
    )
    assert code == 202 and image["state"] == "pending", image
    # Then the image becomes available, of the instance's 30 GB disk
    image = await _wait_image(jp_fetch, image["id"])
    assert image["state"] == "available", image
    assert image["size_gb"] == 30 and image["source_instance"] == source
    # And the source comes back ready and runs code again (its notebook restarted)
    await _wait_phase(jp_fetch, source, {"ready"})
    deadline = time.monotonic() + 180
    while True:
        try:
            if (await _run_code(jp_fetch, jp_ws_fetch, source, "print(6*7)")).strip() == "42":
                break
        except Exception as error:  # the forward heals or the server restarts meanwhile
            print("not yet:", error)
        assert time.monotonic() < deadline, "the source did not come back after its image"
        await asyncio.sleep(1)

    # When an instance is launched from the image
    code, copy = await _json(
        jp_fetch, "instances", method="POST",
        body={"profile": "cpu", "overrides": {"ami": image["id"]}},
    )  # fmt: skip
    assert code == 202, copy
    await _wait_phase(jp_fetch, copy["id"], {"ready"})
    # Then the environment step was already done: nothing was installed
    _, log = await _json(jp_fetch, "instances", copy["id"], "log")
    texts = [line["text"] for line in log["lines"]]
    assert "Preparing the Python environment: already done" in texts, texts
    assert any("already on this disk" in t for t in texts), texts
    assert not any("installing the pip environment" in t for t in texts), texts
    # And the file written on the source is there, read in the new notebook
    out = await _run_code(
        jp_fetch, jp_ws_fetch, copy["id"], "print(open('from-source.txt').read())"
    )
    assert out.strip() == "saved"
    # And the source's services, copied with its disk, were retired on the new instance
    units = await asyncio.to_thread(
        _inside, jp_ec2_hosts, copy["id"], "systemctl", "list-units", "--all", "--plain",
        "--no-legend", "jupyter-ec2*",
    )  # fmt: skip
    lines = [line.split() for line in units.strip().splitlines()]
    retired = [words for words in lines if source in words[0]]
    assert retired and all(words[1] == "not-found" and words[2] == "inactive" for words in retired)
    assert any(copy["id"] in words[0] and words[2] == "active" for words in lines), units

    # When both are terminated and the image deleted / Then nothing is left in the cloud
    for instance_id in (source, copy["id"]):
        await _json(jp_fetch, "instances", instance_id, method="DELETE")
    code, deleted = await _json(jp_fetch, "images", image["id"], method="DELETE")
    assert code == 202 and deleted["snapshots_deleted"], deleted
    truth = jp_ec2_cloud.client()
    assert truth.describe_images(Owners=["self"])["Images"] == []
