"""Resize: ``POST instances/{id}/resize`` and ``GET instances/{id}/resize-options``.

The rules are tested pure (:mod:`jupyter_ec2.resize`); the strict front's sourced rule (EC2
changes the type only of a stopped instance, where moto would change it at any time) against
the simulated cloud; and the API with the real EC2 layer on the simulated cloud through the
strict front. Two parts are FAKED there, as in ``test_costs.py``, and why: moto has no Price
List API, so a fake Price List answers prices in AWS's document shape; and the SSH layers
(provisioning, forwards) are fakes that report their steps, since these tests are about what
EC2 is asked and in which order. The real provisioning and forward after a resize are proven
in ``tests/containers/test_resize_e2e.py``.
"""

from __future__ import annotations

import pytest

from jupyter_ec2 import lifecycle as lc
from jupyter_ec2.aws import ResizeFacts
from jupyter_ec2.errors import ValidationError
from jupyter_ec2.models import Phase
from jupyter_ec2.resize import (
    TypeInfo,
    quota_refusal,
    spot_refusal,
    type_refusal,
    validate_resize,
)

HOURLY = {"t3.medium": 0.0416, "t3.large": 0.0832, "m7i.large": 0.1008, "g5.xlarge": 1.006}


def facts(**fields) -> ResizeFacts:
    """The facts of a t3.medium on an x86_64 ENA image (AWS's shape), changed by ``fields``."""
    base = dict(
        instance_id="i-0123456789abcdef0",
        region="us-east-1",
        state="running",
        instance_type="t3.medium",
        availability_zone="us-east-1a",
        architecture="x86_64",
        ena_support=True,
        boot_mode=None,
        virtualization_type="hvm",
        image_id="ami-0123456789abcdef0",
        spot_request_id=None,
        spot=False,
        root_volume_id="vol-0123456789abcdef0",
    )
    return ResizeFacts(**{**base, **fields})


def type_info(name: str, arch: str = "x86_64", ena: str = "required", **extra) -> TypeInfo:
    """A TypeInfo read from a DescribeInstanceTypes entry of AWS's shape."""
    entry = {
        "InstanceType": name,
        "ProcessorInfo": {"SupportedArchitectures": [arch]},
        "VCpuInfo": {"DefaultVCpus": extra.get("vcpus", 2)},
        "MemoryInfo": {"SizeInMiB": 8192},
        "NetworkInfo": {"EnaSupport": ena},
        "EbsInfo": {"NvmeSupport": ena},
        "SupportedBootModes": extra.get("boot", ["legacy-bios", "uefi"]),
        "SupportedVirtualizationTypes": ["hvm"],
    }
    if "gpus" in extra:
        entry["GpuInfo"] = {"Gpus": [{"Name": "A10G", "Manufacturer": "NVIDIA", "Count": 1}]}
    return TypeInfo.from_description(entry)


# -- the rules, pure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "instance_type"),
        ({"instance_type": 3}, "instance_type"),
        ({"instance_type": "m7i large"}, "instance_type"),
        ({"instance_type": "m7i.large", "size": 1}, "size"),
        (["m7i.large"], "body"),
    ],
)
def test_a_bad_body_names_the_field(body, field):
    # Given a bad body / When it is validated / Then the error names the field
    with pytest.raises(ValidationError) as caught:
        validate_resize(body)
    assert caught.value.field == field and caught.value.status == 400
    # And a good one gives the type
    assert validate_resize({"instance_type": "m7i.large"}) == "m7i.large"


def test_an_arm64_type_is_refused_for_an_x86_64_image_naming_the_architecture():
    # Given an x86_64 instance / When m7g.large (arm64) is asked
    why = type_refusal(facts(), type_info("m7g.large", "arm64"), "m7g.large")
    # Then it is refused, naming the architecture
    assert why is not None and why.reason == "architecture" and why.status == 400
    assert "arm64" in why.message and "x86_64" in why.message and "architecture" in why.message
    # And an x86_64 type is compatible
    assert type_refusal(facts(), type_info("m7i.large"), "m7i.large") is None


def test_ena_nvme_types_need_an_ena_instance_and_xen_types_do_not():
    # Given an instance whose ENA support is off (an image without the ENA flag)
    old = facts(instance_type="t2.medium", ena_support=False)
    # When a Nitro type that requires ENA/NVMe is asked / Then it is refused naming ENA and NVMe
    why = type_refusal(old, type_info("m7i.large"), "m7i.large")
    assert why is not None and why.reason == "ena_nvme"
    assert "ENA" in why.message and "NVMe" in why.message
    # And a Xen type without ENA stays possible
    assert type_refusal(old, type_info("t2.large", ena="unsupported"), "t2.large") is None
    # And when EC2 does not report the instance's flag, the image's flag decides
    unknown = facts(ena_support=None, image_ena_support=False)
    assert type_refusal(unknown, type_info("m7i.large"), "m7i.large").reason == "ena_nvme"


def test_unknown_same_and_boot_mode_refusals():
    # Given a t3.medium / Then an unknown type, the same type and a UEFI-only type for a BIOS
    # instance are refused, each with its reason
    assert type_refusal(facts(), None, "m7x.huge").reason == "unknown_type"
    assert type_refusal(facts(), type_info("t3.medium"), "t3.medium").reason == "same_type"
    bios = facts(boot_mode="legacy-bios")
    uefi_only = type_info("m7i.large", boot=["uefi"])
    assert type_refusal(bios, uefi_only, "m7i.large").reason == "boot_mode"


def test_spot_instances_cannot_change_type():
    # Given a one-time and a persistent spot instance / Then both are refused (409), each saying why
    one_time = spot_refusal(facts(spot=True, spot_request_type="one-time"))
    assert one_time.status == 409 and "one-time" in one_time.message
    persistent = spot_refusal(facts(spot=True, spot_request_type="persistent"))
    assert persistent.status == 409 and "persistent" in persistent.message
    assert spot_refusal(facts()) is None


def test_the_quota_counts_the_other_running_instances():
    # Given a G quota of 8 vCPUs with 6 in use by other instances
    g5 = type_info("g5.xlarge", vcpus=4, gpus=True)
    why = quota_refusal(g5, "us-east-1", 8.0, 6, "L-DB2E81BA", "Running On-Demand G and VT")
    # Then a 4-vCPU type is refused (409) naming the quota code and the numbers
    assert why.status == 409 and "L-DB2E81BA" in why.message and "8" in why.message
    # And with 4 in use it fits; an unknown quota is not a refusal
    assert quota_refusal(g5, "us-east-1", 8.0, 4, "L-DB2E81BA", "G") is None
    assert quota_refusal(g5, "us-east-1", None, 99, "L-DB2E81BA", "G") is None
    assert g5.to_json()["gpus"] == ["NVIDIA A10G"]


def test_while_resizing_the_lifecycle_leaves_the_ec2_states_to_the_resize():
    # Given an instance being resized / When EC2 reports it stopping, stopped, then running
    state = lc.State(Phase.STOPPING, "running", resizing=True)
    # Then nothing is decided (the resize task waits for these), but a termination still counts
    for ec2 in ("stopping", "stopped", "pending", "running"):
        assert lc.on_ec2_state(state, ec2).do is lc.Do.NOTHING
    assert lc.on_ec2_state(state, "terminated").do is lc.Do.TERMINATED
    # And without the flag, a stop is a stop
    plain = lc.State(Phase.STOPPING, "stopping")
    assert lc.on_ec2_state(plain, "stopped").do is lc.Do.STOPPED


# -- the strict front: a type changes only while stopped (AWS's rule, not moto's) ---------------


def test_the_strict_front_refuses_a_type_change_of_a_running_instance(jp_ec2_cloud):
    # Given a running instance in the simulated cloud, seen through the strict front
    from botocore.exceptions import ClientError

    ec2 = jp_ec2_cloud.client(strict=True)
    image = jp_ec2_cloud.images()[0]["ami_id"]
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.medium")[
        "Instances"
    ][0]["InstanceId"]
    # When its type is changed while it runs / Then EC2's IncorrectInstanceState comes back
    with pytest.raises(ClientError) as caught:
        ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "m7i.large"})
    assert caught.value.response["Error"]["Code"] == "IncorrectInstanceState"
    assert jp_ec2_cloud.front.refusals[-1].rule.startswith("instance type change")
    truth = jp_ec2_cloud.client()
    assert _described(truth, iid)["InstanceType"] == "t3.medium"
    # And once stopped the change goes through
    ec2.stop_instances(InstanceIds=[iid])
    assert _described(truth, iid)["State"]["Name"] == "stopped"
    ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "m7i.large"})
    assert _described(truth, iid)["InstanceType"] == "m7i.large"


def _described(ec2, iid: str) -> dict:
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]


# -- the API on the simulated cloud (fake prices and SSH layers, see the docstring) -------------


class ResizePriceList:
    """FAKE Price List client (moto has none): AWS's document shape, a few known prices."""

    def get_products(self, ServiceCode: str, Filters: list, MaxResults: int = 20) -> dict:
        from test_costs import GB_MONTH, product

        fields = {f["Field"]: f["Value"] for f in Filters}
        if fields.get("productFamily") == "Storage":
            return {"PriceList": [product("GB-Mo", str(GB_MONTH), volumeApiName="gp3")]}
        price = HOURLY.get(fields.get("instanceType"))
        return {"PriceList": [] if price is None else [product("Hrs", str(price))]}


def _backend_class():
    from jupyter_ec2.aws import EC2Backend

    class ResizePricedBackend(EC2Backend):
        """The real EC2 layer on the simulated cloud, with the FAKE Price List injected."""

        def client(self, region=None, service="ec2"):
            if service == "pricing":
                return ResizePriceList()
            return super().client(region, service=service)

    return ResizePricedBackend


@pytest.fixture
def jp_server_config(jp_ec2_cloud, jp_ec2_config):
    """The fast configuration of the cost tests, with prices for the types resized to."""
    from test_costs import priced_config

    config = priced_config(jp_ec2_cloud, jp_ec2_config)
    config["EC2Launcher"]["backend_class"] = _backend_class()
    return config


@pytest.fixture
def manager(jp_serverapp):
    """The running server's manager."""
    return jp_serverapp.web_app.settings["jupyter_ec2_manager"]


async def _ready(jp_fetch, manager, profile: str = "cpu") -> str:
    from test_costs import api, until

    code, inst = await api(jp_fetch, "instances", method="POST", body={"profile": profile})
    assert code == 202, inst
    iid = inst["id"]
    await until(lambda: manager.records[iid].phase == Phase.READY, "never ready")
    return iid


def _ec2_calls(manager) -> list[str]:
    """Every phase the manager entered, in order (subscribed, never patched)."""
    seen: list[str] = []
    manager.subscribe(lambda e: e.kind == "phase" and seen.append(e.phase.value))
    return seen


async def test_resize_a_ready_instance_keeps_its_disk_and_comes_back_ready(
    jp_fetch, manager, jp_ec2_cloud
):
    from test_costs import api, until

    # Given a ready t3.medium, and its root volume in EC2
    iid = await _ready(jp_fetch, manager)
    truth = jp_ec2_cloud.client()
    volume = _described(truth, iid)["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    phases = _ec2_calls(manager)
    # When the options are asked
    code, options = await api(jp_fetch, "instances", iid, "resize-options")
    # Then m7i.large is compatible with its $/h and arm64 types are excluded, saying why
    assert code == 200, options
    assert options["current"]["instance_type"] == "t3.medium"
    by_type = {t["instance_type"]: t for t in options["types"]}
    assert by_type["m7i.large"]["compatible"] is True
    assert by_type["m7i.large"]["hourly_usd"] == pytest.approx(HOURLY["m7i.large"])
    assert by_type["m7g.large"]["compatible"] is False
    assert by_type["m7g.large"]["reason"] == "architecture"
    assert "arm64" in by_type["m7g.large"]["message"]
    assert "t3.medium" not in by_type
    # When it is resized to m7i.large
    code, inst = await api(
        jp_fetch, "instances", iid, "resize", method="POST", body={"instance_type": "m7i.large"}
    )
    # Then 202 in phase stopping, and it comes back ready as an m7i.large on the same volume
    assert code == 202, inst
    assert inst["phase"] == "stopping"
    await until(
        lambda: manager.records[iid].phase == Phase.READY and "ready" in phases, "not ready again"
    )
    described = _described(truth, iid)
    assert described["InstanceType"] == "m7i.large"
    assert described["State"]["Name"] == "running"
    assert described["BlockDeviceMappings"][0]["Ebs"]["VolumeId"] == volume
    assert phases[:4] == ["stopping", "stopped", "resizing", "booting"]
    assert phases[-1] == "ready"
    assert manager.refused_transitions == 0
    # And the API shows the new type and its price, and the log tells the change
    _, inst = await api(jp_fetch, "instances", iid)
    assert inst["instance_type"] == "m7i.large"
    assert inst["hourly_usd"] == pytest.approx(HOURLY["m7i.large"])
    assert "resize" in inst["actions"]
    _, log = await api(jp_fetch, "instances", iid, "log")
    assert any("t3.medium → m7i.large" in line["text"] for line in log["lines"])


async def test_a_stopped_instance_is_resized_and_started(jp_fetch, manager, jp_ec2_cloud):
    from test_costs import api, until

    # Given a stopped t3.medium
    iid = await _ready(jp_fetch, manager)
    await api(jp_fetch, "instances", iid, "stop", method="POST", body={})
    await until(lambda: manager.records[iid].phase == Phase.STOPPED, "never stopped")
    # When it is resized to t3.large
    code, inst = await api(
        jp_fetch, "instances", iid, "resize", method="POST", body={"instance_type": "t3.large"}
    )
    # Then it answers in phase resizing, and comes back ready as a t3.large
    assert code == 202, inst
    assert inst["phase"] == "resizing"
    await until(lambda: manager.records[iid].phase == Phase.READY, "not ready again")
    assert _described(jp_ec2_cloud.client(), iid)["InstanceType"] == "t3.large"


async def _refused(jp_fetch, manager, jp_ec2_cloud, iid: str, body: dict) -> tuple[int, dict]:
    """Ask for a resize that must be refused; check nothing changed in the cloud."""
    from test_costs import api

    before = _described(jp_ec2_cloud.client(), iid)
    code, answer = await api(jp_fetch, "instances", iid, "resize", method="POST", body=body)
    after = _described(jp_ec2_cloud.client(), iid)
    # Nothing stopped, nothing changed
    assert after["State"]["Name"] == before["State"]["Name"] == "running"
    assert after["InstanceType"] == before["InstanceType"]
    assert manager.records[iid].phase == Phase.READY
    return code, answer


async def test_refusals_come_before_anything_stops(jp_fetch, manager, jp_ec2_cloud):
    # Given a ready t3.medium
    iid = await _ready(jp_fetch, manager)
    # When an arm64 type is asked / Then 400 naming the architecture, and it was not stopped
    code, answer = await _refused(
        jp_fetch, manager, jp_ec2_cloud, iid, {"instance_type": "m7g.large"}
    )
    assert code == 400 and answer["field"] == "instance_type"
    assert "architecture" in answer["message"] and "arm64" in answer["message"]
    # When a type that does not exist is asked / Then 400 naming it
    code, answer = await _refused(
        jp_fetch, manager, jp_ec2_cloud, iid, {"instance_type": "m7x.large"}
    )
    assert code == 400 and "m7x.large" in answer["message"] and "not exist" in answer["message"]
    # When the G quota is 2 vCPUs and g5.xlarge (4) is asked / Then 409 naming the quota
    jp_ec2_cloud.set_service_quota("L-DB2E81BA", 2)
    code, answer = await _refused(
        jp_fetch, manager, jp_ec2_cloud, iid, {"instance_type": "g5.xlarge"}
    )
    assert code == 409 and "L-DB2E81BA" in answer["message"] and "quota" in answer["message"]
    # When a type the region offers but the instance's availability zone does not is asked
    missing = _offered_in_region_not_in_zone(jp_ec2_cloud, iid)
    code, answer = await _refused(jp_fetch, manager, jp_ec2_cloud, iid, {"instance_type": missing})
    # Then 400 naming the zone
    zone = _described(jp_ec2_cloud.client(), iid)["Placement"]["AvailabilityZone"]
    assert code == 400 and "not offered" in answer["message"] and zone in answer["message"]
    # When the hourly limit is below the new type's price / Then 409 naming the limit
    manager.max_hourly_usd = 0.05
    code, answer = await _refused(
        jp_fetch, manager, jp_ec2_cloud, iid, {"instance_type": "m7i.large"}
    )
    assert code == 409 and "max_hourly_usd" in answer["message"]
    manager.max_hourly_usd = None
    # When the instance's ENA support is off (an image without ENA) / Then 400 naming ENA
    jp_ec2_cloud.ec2_backend().get_instance(iid).ena_support = False
    code, answer = await _refused(
        jp_fetch, manager, jp_ec2_cloud, iid, {"instance_type": "m7i.large"}
    )
    assert code == 400 and "ENA" in answer["message"]
    # When the body is bad / Then 400 naming the field
    code, answer = await _refused(jp_fetch, manager, jp_ec2_cloud, iid, {"type": "m7i.large"})
    assert code == 400 and answer["field"] == "type"


def _offered_in_region_not_in_zone(cloud, iid: str) -> str:
    """An x86_64 type the region offers but the instance's availability zone does not."""
    ec2 = cloud.client()
    zone = _described(ec2, iid)["Placement"]["AvailabilityZone"]
    pages = ec2.get_paginator("describe_instance_type_offerings")

    def offered(**kw) -> set[str]:
        return {o["InstanceType"] for p in pages.paginate(**kw) for o in p["InstanceTypeOfferings"]}

    region = offered(LocationType="region")
    in_zone = offered(
        LocationType="availability-zone", Filters=[{"Name": "location", "Values": [zone]}]
    )
    for name in sorted(region - in_zone):
        info = ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"][0]
        archs = info["ProcessorInfo"]["SupportedArchitectures"]
        if "x86_64" in archs and not name.startswith("mac"):
            return name
    pytest.skip(f"every x86_64 type of the region is offered in {zone}")


async def test_spot_and_phase_refusals(jp_fetch, manager, jp_ec2_cloud):
    from test_costs import api

    # Given a ready spot instance (the gpu profile)
    iid = await _ready(jp_fetch, manager, "gpu")
    # When it is resized / Then 409 saying a spot instance cannot change type, and it still runs
    code, answer = await _refused(
        jp_fetch, manager, jp_ec2_cloud, iid, {"instance_type": "g4dn.xlarge"}
    )
    assert code == 409 and "spot" in answer["message"]
    # And the options say why for every type
    code, options = await api(jp_fetch, "instances", iid, "resize-options")
    assert code == 200 and options["types"]
    assert all(t["reason"] == "spot" for t in options["types"])
    # When an unknown instance is resized / Then 404
    code, _ = await api(
        jp_fetch,
        "instances",
        "i-0123456789abcdef0",
        "resize",
        method="POST",
        body={"instance_type": "t3.large"},
    )
    assert code == 404
