"""Saved images: ``POST instances/{id}/image``, ``GET images``, ``DELETE images/{ami}`` (issue 15).

The pure parts (names, tags, parameters, states, prices) are tested without AWS. The REST tests
run the real EC2 layer against the simulated cloud through the strict front (its image rules and,
where a test asks, its lag), with the FAKE provisioning, forwards and Price List client of
``test_costs.py`` (moto has no Price List, and no SSH is needed to image a disk). They check what
the simulated cloud holds afterwards with the harness's own client (moto's truth).
"""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.exceptions import ClientError
from test_costs import PricedBackend, PriceList, api, priced_config, product, until
from tornado.httpclient import HTTPClientError

from jupyter_ec2 import aws
from jupyter_ec2.images import api_state, monthly_usd
from jupyter_ec2.models import ImageRequest, Phase, validate_image_id
from jupyter_ec2.pricing import snapshot_filters, snapshot_gb_month_from_price_list
from jupyter_ec2.testing.saved_images import on_create_image
from jupyter_ec2.testing.strict import check_image_request

SNAPSHOT_GB_MONTH = 0.05  # standard EBS snapshots in us-east-1
OWNER = "imagestestowner1"

# -- pure ------------------------------------------------------------------------------------


def test_the_image_name_keeps_what_aws_allows_and_is_unique_per_second():
    # Given a label with characters AWS refuses in an image name
    when = dt.datetime(2026, 12, 2, 1, 2, 3, tzinfo=dt.timezone.utc)
    name = aws.image_name_for("my box: ümlaut & co", "i-0123456789abcdef0", when)
    # Then they became '-', the instance and the time are in it, and AWS's pattern holds
    assert name == "my box- -mlaut - co i-0123456789abcdef0 20261202-010203"
    assert aws._IMAGE_NAME.fullmatch(name)
    # And a very long label is cut so the name stays within 128 characters
    assert len(aws.image_name_for("x" * 300, "i-0123456789abcdef0", when)) == 128


def test_the_create_parameters_tag_image_and_snapshots_and_choose_the_reboot():
    # Given the tags of an image of a pip environment
    tags = aws.build_image_tags(
        owner_id=OWNER,
        instance_id="i-0123456789abcdef0",
        label="mine",
        environment={"kind": "pip", "packages": ["jupyterlab", "numpy>=2"]},
        profile_name="cpu",
    )
    # Then they mark it managed, with its source and the environment it holds
    assert tags[aws.TAG_MANAGED] == "true" and tags[aws.TAG_OWNER] == OWNER
    assert tags[aws.TAG_SOURCE_INSTANCE] == "i-0123456789abcdef0"
    assert tags[aws.TAG_ENVIRONMENT] == "pip: jupyterlab, numpy>=2"
    # When the parameters are built without and with a reboot
    quiet = aws.build_create_image_params(instance_id="i-0123456789abcdef0", name="abc", tags=tags)
    reboot = aws.build_create_image_params(
        instance_id="i-0123456789abcdef0", name="abc", tags=tags, reboot=True
    )
    # Then both the image and its snapshots are tagged, and NoReboot follows the choice
    assert [s["ResourceType"] for s in quiet["TagSpecifications"]] == ["image", "snapshot"]
    assert quiet["NoReboot"] is True and reboot["NoReboot"] is False
    # And a name AWS would refuse is refused here first, naming the field
    with pytest.raises(aws.ValidationError) as caught:
        aws.build_create_image_params(instance_id="i-0123456789abcdef0", name="a:b", tags=tags)
    assert caught.value.field == "name"


def test_a_long_environment_fits_a_tag_value():
    # Given many packages / Then the tag value stays within AWS's 255 characters
    text = aws.describe_environment({"kind": "pip", "packages": [f"pkg{i}" for i in range(200)]})
    assert len(text) <= 255 and text.startswith("pip: pkg0")
    assert aws.describe_environment({"kind": "existing", "python": "/opt/py/bin/python"}) == (
        "existing /opt/py/bin/python"
    )


def test_states_sizes_and_prices():
    # Given EC2's image states / Then the API says pending, available or failed
    assert [api_state(s) for s in ("pending", "transient", "available", "invalid", "error")] == [
        "pending",
        "pending",
        "available",
        "failed",
        "failed",
    ]
    # And $/month is the size times the snapshot price, unknown when either is
    assert monthly_usd(30, 0.05) == 1.5
    assert monthly_usd(None, 0.05) is None and monthly_usd(30, None) is None
    # And the standard snapshot tier is priced, not the cheaper archive tier
    docs = [
        product("GB-Mo", "0.0125", usagetype="EBS:SnapshotArchiveStorage"),
        product("GB-Mo", "0.05", usagetype="EBS:SnapshotUsage"),
    ]
    assert snapshot_gb_month_from_price_list(docs) == pytest.approx(0.05)
    assert snapshot_gb_month_from_price_list(docs[:1]) is None
    fields = {f["Field"]: f["Value"] for f in snapshot_filters("eu-west-1")}
    assert fields == {"productFamily": "Storage Snapshot", "regionCode": "eu-west-1"}


def test_a_volume_smaller_than_the_image_is_refused_before_launch():
    # Given an image of a 30 GB disk / When a launch asks for 20 GB / Then 400 naming volume_gb
    image = aws.ImageInfo("ami-0123456789abcdef0", "x86_64", "/dev/sda1", root_volume_gb=30)
    with pytest.raises(aws.ValidationError) as caught:
        aws.check_volume_fits(image, 20)
    assert caught.value.field == "volume_gb" and "at least 30" in caught.value.message
    aws.check_volume_fits(image, 30)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"reboot": "yes"}, "reboot"),
        ({"reboot": 1}, "reboot"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": 5}, "name"),
        ({"name": "ok", "ami": "ami-0123456789abcdef0"}, "ami"),
    ],
)
def test_bad_image_requests_name_the_field(body, field):
    # Given a bad body / Then validation names the field
    with pytest.raises(aws.ValidationError) as caught:
        ImageRequest.from_json(body)
    assert caught.value.field == field


def test_image_requests_and_ids():
    # Given good bodies / Then they are read as given; no body means no reboot
    assert ImageRequest.from_json({}) == ImageRequest(None, False)
    assert ImageRequest.from_json({"name": " box ", "reboot": True}) == ImageRequest("box", True)
    assert validate_image_id("ami-0123456789abcdef0") == "ami-0123456789abcdef0"
    with pytest.raises(aws.ValidationError):
        validate_image_id("ami-XYZ")


# -- the strict front's image rules ------------------------------------------------------------


def test_the_front_refuses_what_aws_refuses_for_images(jp_ec2_cloud):
    # Given an instance that is pending in moto, and a client through the strict front
    ec2 = jp_ec2_cloud.client(strict=True)
    image_id = jp_ec2_cloud.images()[0]["ami_id"]
    instance = ec2.run_instances(ImageId=image_id, InstanceType="t3.medium", MinCount=1, MaxCount=1)
    instance_id = instance["Instances"][0]["InstanceId"]
    backend = jp_ec2_cloud.ec2_backend()
    backend.get_instance(instance_id)._state.name = "pending"
    # When an image of it is asked / Then IncorrectInstanceState, as AWS answers
    with pytest.raises(ClientError) as caught:
        ec2.create_image(InstanceId=instance_id, Name="not yet")
    assert caught.value.response["Error"]["Code"] == "IncorrectInstanceState"
    # And a name AWS does not allow is InvalidAMIName.Malformed
    backend.get_instance(instance_id)._state.name = "running"
    with pytest.raises(ClientError) as caught:
        ec2.create_image(InstanceId=instance_id, Name="no: colons")
    assert caught.value.response["Error"]["Code"] == "InvalidAMIName.Malformed"
    # And a second image of the same name is InvalidAMIName.Duplicate
    made = ec2.create_image(InstanceId=instance_id, Name="twice", NoReboot=True)["ImageId"]
    with pytest.raises(ClientError) as caught:
        ec2.create_image(InstanceId=instance_id, Name="twice", NoReboot=True)
    assert caught.value.response["Error"]["Code"] == "InvalidAMIName.Duplicate"
    # And a snapshot of a registered image cannot be deleted; an unknown image not deregistered
    snapshot = ec2.describe_images(ImageIds=[made])["Images"][0]["BlockDeviceMappings"][0]
    with pytest.raises(ClientError) as caught:
        ec2.delete_snapshot(SnapshotId=snapshot["Ebs"]["SnapshotId"])
    assert caught.value.response["Error"]["Code"] == "InvalidSnapshot.InUse"
    with pytest.raises(ClientError) as caught:
        ec2.deregister_image(ImageId="ami-0123456789abcdef0")
    assert caught.value.response["Error"]["Code"] == "InvalidAMIID.NotFound"
    # And the pure check says the same without a request
    assert check_image_request("DeregisterImage", {"ImageId": "ami-00000000"}, backend).code == (
        "InvalidAMIID.NotFound"
    )


def test_the_image_is_the_size_of_the_instance_disk_with_tagged_snapshots(jp_ec2_cloud):
    # Given an instance with a 30 GB gp3 root volume
    ec2 = jp_ec2_cloud.client(strict=True)
    image_id = jp_ec2_cloud.images()[0]["ami_id"]
    instance_id = ec2.run_instances(
        ImageId=image_id,
        InstanceType="t3.medium",
        MinCount=1,
        MaxCount=1,
        BlockDeviceMappings=[
            {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 30, "VolumeType": "gp3"}}
        ],
    )["Instances"][0]["InstanceId"]
    # When it is imaged with tags for the image and its snapshot
    spec = [
        {"ResourceType": rt, "Tags": [{"Key": "k", "Value": rt}]} for rt in ("image", "snapshot")
    ]
    made = ec2.create_image(InstanceId=instance_id, Name="sized", TagSpecifications=spec)
    image = ec2.describe_images(ImageIds=[made["ImageId"]])["Images"][0]
    # Then the image maps a 30 GB gp3 snapshot, and the snapshot carries its tags
    ebs = image["BlockDeviceMappings"][0]["Ebs"]
    assert (ebs["VolumeSize"], ebs["VolumeType"]) == (30, "gp3")
    snap = ec2.describe_snapshots(SnapshotIds=[ebs["SnapshotId"]])["Snapshots"][0]
    assert {t["Key"]: t["Value"] for t in snap["Tags"]} == {"k": "snapshot"}
    assert {t["Key"]: t["Value"] for t in image["Tags"]} == {"k": "image"}


# -- REST on the simulated cloud ---------------------------------------------------------------


class SnapshotPriceList(PriceList):
    """FAKE Price List client (moto has none): the test_costs prices plus EBS snapshots."""

    def get_products(self, ServiceCode: str, Filters: list, MaxResults: int = 20) -> dict:
        fields = {f["Field"]: f["Value"] for f in Filters}
        if fields.get("productFamily") == "Storage Snapshot":
            return {
                "PriceList": [
                    product("GB-Mo", str(SNAPSHOT_GB_MONTH), usagetype="EBS:SnapshotUsage"),
                    product("GB-Mo", "0.0125", usagetype="EBS:SnapshotArchiveStorage"),
                ]
            }
        return super().get_products(ServiceCode, Filters, MaxResults)


class ImagePricedBackend(PricedBackend):
    """The real EC2 layer on the simulated cloud, with the FAKE Price List client injected."""

    def client(self, region=None, service="ec2"):
        if service == "pricing":
            return SnapshotPriceList()
        return super().client(region, service=service)


@pytest.fixture
def jp_server_config(jp_ec2_cloud, jp_ec2_config):
    """jupyter-ec2 on the simulated cloud, SSH layers faked, snapshot prices injected."""
    config = priced_config(jp_ec2_cloud, jp_ec2_config)
    config["EC2Launcher"]["backend_class"] = ImagePricedBackend
    config["EC2Backend"]["owner_id"] = OWNER
    return config


async def _ready_instance(jp_fetch, manager_of) -> str:
    status, body = await api(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    assert status == 202, body
    manager = manager_of()
    await until(lambda: manager.records[body["id"]].phase == Phase.READY, "ready")
    return body["id"]


@pytest.fixture
def manager_of(jp_serverapp):
    """The running server's manager."""
    return lambda: jp_serverapp.web_app.settings["jupyter_ec2_manager"]


async def _stopped_instance(jp_fetch, manager_of) -> str:
    instance_id = await _ready_instance(jp_fetch, manager_of)
    status, body = await api(jp_fetch, "instances", instance_id, "stop", method="POST")
    assert status == 202, body
    manager = manager_of()
    await until(lambda: manager.records[instance_id].phase == Phase.STOPPED, "stopped")
    return instance_id


async def test_an_image_of_a_stopped_instance_goes_pending_then_available(
    jp_fetch, jp_ec2_cloud, manager_of
):
    # Given a stopped instance, and EC2 late with new images (missing, then pending)
    instance_id = await _stopped_instance(jp_fetch, manager_of)
    jp_ec2_cloud.set_lag(1.0)
    # When an image of it is asked
    status, image = await api(
        jp_fetch, "instances", instance_id, "image", method="POST", body={"name": "my env"}
    )
    # Then 202 with a pending Image of the DESIGN shape
    assert status == 202, image
    assert image["state"] == "pending" and image["id"].startswith("ami-")
    assert image["source_instance"] == instance_id and image["name"] == "my env"
    assert {"id", "name", "state", "source_instance", "created_at", "size_gb", "monthly_usd"} <= (
        set(image)
    )
    # And while EC2 does not report it yet, it is listed pending ("not yet", not "gone")
    status, listed = await api(jp_fetch, "images")
    assert status == 200
    assert [(i["id"], i["state"]) for i in listed["images"]] == [(image["id"], "pending")]
    # And once EC2 reports it, it is pending, then available, with its size and $/month
    seen = []

    async def state() -> str:
        found = (await api(jp_fetch, "images"))[1]["images"]
        seen.append(found[0]["state"])
        return found[0]

    deadline = dt.datetime.now() + dt.timedelta(seconds=20)
    while (found := await state())["state"] != "available":
        assert dt.datetime.now() < deadline, seen
    assert "pending" in seen
    assert found["size_gb"] == 30
    assert found["monthly_usd"] == pytest.approx(30 * SNAPSHOT_GB_MONTH)
    # And the image and its snapshot carry the managed tags, the source and the environment
    truth = jp_ec2_cloud.client()
    described = truth.describe_images(ImageIds=[image["id"]])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in described["Tags"]}
    assert tags[aws.TAG_MANAGED] == "true" and tags[aws.TAG_OWNER] == OWNER
    assert tags[aws.TAG_SOURCE_INSTANCE] == instance_id
    assert tags[aws.TAG_ENVIRONMENT].startswith("pip")
    snapshot_id = described["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snapshot = truth.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert {t["Key"]: t["Value"] for t in snapshot["Tags"]}[aws.TAG_SOURCE_INSTANCE] == instance_id
    # And the instance was not interrupted: still stopped
    assert manager_of().records[instance_id].phase == Phase.STOPPED


async def test_delete_leaves_no_image_and_no_snapshot(jp_fetch, jp_ec2_cloud, manager_of):
    # Given an available image of a stopped instance
    instance_id = await _stopped_instance(jp_fetch, manager_of)
    status, image = await api(jp_fetch, "instances", instance_id, "image", method="POST", body={})
    assert status == 202, image
    truth = jp_ec2_cloud.client()
    described = truth.describe_images(ImageIds=[image["id"]])["Images"][0]
    snapshot_id = described["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    # When it is deleted
    status, deleted = await api(jp_fetch, "images", image["id"], method="DELETE")
    # Then 202 with the Image, its snapshots named as deleted
    assert status == 202, deleted
    assert deleted["id"] == image["id"] and deleted["snapshots_deleted"] == [snapshot_id]
    # And the simulated cloud holds neither the image nor its snapshot
    assert truth.describe_images(Owners=["self"])["Images"] == []
    ours = [s["SnapshotId"] for s in truth.describe_snapshots(OwnerIds=["self"])["Snapshots"]]
    assert snapshot_id not in ours
    # And the listing no longer shows it; a second delete is a 404
    assert (await api(jp_fetch, "images"))[1]["images"] == []
    status, body = await api(jp_fetch, "images", image["id"], method="DELETE")
    assert status == 404, body


@pytest.fixture
def reboots():
    """(image id, reboot asked) of every CreateImage moto serves, from the harness's hook."""
    seen: list[tuple[str, bool]] = []
    undo = on_create_image(lambda region, ami, instance, reboot: seen.append((ami.id, reboot)))
    yield seen
    undo()


async def test_an_image_of_a_running_instance_without_reboot_keeps_it_ready(
    jp_fetch, manager_of, reboots
):
    # Given a ready instance
    instance_id = await _ready_instance(jp_fetch, manager_of)
    assert "image" in (await api(jp_fetch, "instances", instance_id))[1]["actions"]
    # When it is imaged without a reboot
    status, image = await api(
        jp_fetch, "instances", instance_id, "image", method="POST", body={"reboot": False}
    )
    # Then the image is made while it runs, and it stays ready
    assert status == 202, image
    assert manager_of().records[instance_id].phase == Phase.READY
    log = (await api(jp_fetch, "instances", instance_id, "log"))[1]["lines"]
    assert any("may be inconsistent" in line["text"] for line in log)
    # And EC2 was asked not to reboot it
    assert reboots == [(image["id"], False)]


async def test_an_image_with_reboot_brings_the_notebook_back(jp_fetch, manager_of, reboots):
    # Given a ready instance
    instance_id = await _ready_instance(jp_fetch, manager_of)
    manager = manager_of()
    phases = []
    manager.subscribe(lambda e: e.kind == "phase" and e.instance_id == instance_id and (
        phases.append(e.phase)))  # fmt: skip
    # When it is imaged with EC2's reboot
    status, image = await api(
        jp_fetch, "instances", instance_id, "image", method="POST", body={"reboot": True}
    )
    # Then the forward is dropped and the bring-up runs again, back to ready
    assert status == 202, image
    await until(lambda: manager.records[instance_id].phase == Phase.READY and phases, "ready")
    assert phases[0] == Phase.CONNECTING and phases[-1] == Phase.READY
    # And EC2 was asked to reboot it around the snapshot
    assert reboots == [(image["id"], True)]


async def test_launch_from_a_saved_image_names_its_source(jp_fetch, jp_ec2_cloud, manager_of):
    # Given an available image of a stopped instance
    instance_id = await _stopped_instance(jp_fetch, manager_of)
    status, image = await api(jp_fetch, "instances", instance_id, "image", method="POST", body={})
    assert status == 202, image
    # When a launch names it as the ami override
    status, launched = await api(
        jp_fetch,
        "instances",
        method="POST",
        body={"profile": "cpu", "overrides": {"ami": image["id"]}},
    )
    # Then EC2 launched that image, and the record knows whose disk it copies
    assert status == 202, launched
    described = jp_ec2_cloud.client().describe_instances(InstanceIds=[launched["id"]])
    assert described["Reservations"][0]["Instances"][0]["ImageId"] == image["id"]
    assert manager_of().records[launched["id"]].image_source == instance_id
    # And a launch asking a smaller disk than the image is a 400 naming the override
    status, body = await api(
        jp_fetch,
        "instances",
        method="POST",
        body={"profile": "cpu", "overrides": {"ami": image["id"], "volume_gb": 10}},
    )
    assert status == 400 and body["field"] == "overrides.volume_gb", body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reboot": "yes"}, "reboot"),
        ({"name": ""}, "name"),
        ({"label": "x"}, "label"),
        ([1], "body"),
    ],
)
async def test_bad_bodies_are_a_400_naming_the_field_and_nothing_is_made(
    jp_fetch, jp_ec2_cloud, manager_of, body, field
):
    # Given a stopped instance
    instance_id = await _stopped_instance(jp_fetch, manager_of)
    # When the image body is bad / Then 400 naming the field, and no image exists
    status, answer = await api(
        jp_fetch, "instances", instance_id, "image", method="POST", body=body
    )
    assert status == 400 and answer["field"] == field, answer
    assert jp_ec2_cloud.client().describe_images(Owners=["self"])["Images"] == []


async def test_unknown_instances_and_images_are_404_and_foreign_images_cannot_be_deleted(
    jp_fetch, jp_ec2_cloud
):
    # Given no managed instance / When an image of an unknown one is asked / Then 404
    status, body = await api(
        jp_fetch, "instances", "i-0123456789abcdef0", "image", method="POST", body={}
    )
    assert status == 404, body
    # And deleting an unknown image is a 404
    status, body = await api(jp_fetch, "images", "ami-0123456789abcdef0", method="DELETE")
    assert status == 404, body
    # And an image jupyter-ec2 did not make (Canonical's) is a 404 too, and is left alone
    stock = jp_ec2_cloud.images()[0]["ami_id"]
    status, body = await api(jp_fetch, "images", stock, method="DELETE")
    assert status == 404, body
    assert jp_ec2_cloud.client().describe_images(ImageIds=[stock])["Images"]
    # And a malformed id never reaches a handler (no route matches it)
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("jupyter-ec2", "api", "images", "ami-nothex", method="DELETE")
    assert caught.value.code == 404


async def test_an_image_of_a_terminating_instance_is_a_409(jp_fetch, jp_ec2_cloud, manager_of):
    # Given an instance being terminated
    instance_id = await _ready_instance(jp_fetch, manager_of)
    status, body = await api(jp_fetch, "instances", instance_id, method="DELETE")
    assert status == 202 and "image" not in body["actions"], body
    # When an image is asked / Then 409 saying why, and no image exists
    status, answer = await api(jp_fetch, "instances", instance_id, "image", method="POST", body={})
    assert status == 409 and "Cannot image" in answer["message"], answer
    assert jp_ec2_cloud.client().describe_images(Owners=["self"])["Images"] == []
