"""The EC2 layer against the simulated cloud: hardened launches, bad inputs, retries, actions.

Every test reads the result back from the simulated cloud with its own client, never from the
backend's answer alone. The caller-IP service is a tiny HTTP server on 127.0.0.1 whose answer a
test sets; nothing leaves loopback.
"""

from __future__ import annotations

import base64
import http.server
import threading
import urllib.parse
from collections.abc import Iterator

import pytest
import yaml
from botocore.awsrequest import AWSResponse
from traitlets import TraitError

from jupyter_ec2 import aws
from jupyter_ec2.aws import EC2Backend
from jupyter_ec2.errors import CloudError, ConflictError, NotFoundError, ValidationError
from jupyter_ec2.models import Profile
from jupyter_ec2.store import StateStore
from jupyter_ec2.testing.cloud import ClosedPort
from jupyter_ec2.testing.images import newest_ubuntu

OWNER = "testowner0001"
FIRST_IP = "52.95.110.1"
SECOND_IP = "54.239.28.85"


class CallerIPService:
    """A caller-IP service on 127.0.0.1 that answers whatever the test sets."""

    def __init__(self) -> None:
        self.answer = FIRST_IP + "\n"
        self.requests = 0
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                service.requests += 1
                body = service.answer.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def caller_ip() -> Iterator[CallerIPService]:
    service = CallerIPService()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def store(tmp_path) -> StateStore:
    return StateStore(tmp_path / "state")


@pytest.fixture
def backend(jp_ec2_cloud, caller_ip, store) -> EC2Backend:
    return EC2Backend(
        endpoint_url=jp_ec2_cloud.endpoint_url,
        caller_ip_url=caller_ip.url,
        caller_ip_timeout=2,
        owner_id=OWNER,
        store=store,
    )


@pytest.fixture(scope="module")
def _module_ec2(jp_ec2_session_cloud):
    # One client for the module: building a boto3 client costs 0.1–0.5 s.
    return jp_ec2_session_cloud.client()


@pytest.fixture
def ec2(jp_ec2_cloud, _module_ec2):
    """The test's own view of the simulated cloud (emptied for the test)."""
    return _module_ec2


def profile(**fields) -> Profile:
    base = {
        "name": "cpu",
        "display_name": "CPU",
        "region": "us-east-1",
        "instance_type": "t3.medium",
    }
    return Profile(**{**base, **fields})


def instances(ec2) -> list[dict]:
    return [
        inst
        for page in ec2.get_paginator("describe_instances").paginate()
        for res in page["Reservations"]
        for inst in res["Instances"]
    ]


def managed_groups(ec2) -> list[dict]:
    return [
        g
        for g in ec2.describe_security_groups()["SecurityGroups"]
        if g["GroupName"].startswith("jupyter-ec2-")
    ]


def cloud_is_empty(ec2) -> bool:
    """No instance, key pair or managed security group exists."""
    return (
        instances(ec2) == []
        and ec2.describe_key_pairs()["KeyPairs"] == []
        and managed_groups(ec2) == []
    )


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: object):
        yield self.data


def error_response(request, status: int, code: str, message: str) -> AWSResponse:
    """An EC2 error answer, as botocore would have received it from the wire."""
    xml = (
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        f"</Errors><RequestID>test</RequestID></Response>"
    ).encode()
    return AWSResponse(request.url, status, {"Content-Type": "text/xml"}, _Body(xml))


# -- a default launch -----------------------------------------------------------------------------


def test_default_launch_is_hardened(backend, ec2, store):
    # Given a default profile and a caller whose public address is FIRST_IP
    # When it is launched
    result = backend.launch(profile(volume_gb=30, tags={"team": "data"}), label="my notebook")

    # Then exactly one instance exists, on the newest Canonical 24.04 x86_64 image
    [inst] = instances(ec2)
    assert inst["InstanceId"] == result.instance_id
    assert inst["ImageId"] == newest_ubuntu("24.04", "x86_64")["ami_id"] == result.image_id
    assert inst["InstanceType"] == "t3.medium"
    assert inst["ClientToken"] == result.launch_id

    # and its metadata service requires IMDSv2 tokens
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert inst["MetadataOptions"]["HttpEndpoint"] == "enabled"
    behaviour = ec2.describe_instance_attribute(
        InstanceId=result.instance_id, Attribute="instanceInitiatedShutdownBehavior"
    )
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "stop"

    # and its only volume is an encrypted gp3 root of 30 GB that goes with the instance
    [mapping] = inst["BlockDeviceMappings"]
    assert mapping["DeviceName"] == inst["RootDeviceName"]
    assert mapping["Ebs"]["DeleteOnTermination"] is True
    [volume] = ec2.describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [result.instance_id]}]
    )["Volumes"]
    assert (volume["Encrypted"], volume["VolumeType"], volume["Size"]) == (True, "gp3", 30)

    # and instance and volume carry the managed tags, the profile's tag and the name
    expected = {
        "jupyter-ec2:managed": "true",
        "jupyter-ec2:owner": OWNER,
        "jupyter-ec2:profile": "cpu",
        "jupyter-ec2:launch-id": result.launch_id,
        "Name": "my notebook",
        "team": "data",
    }
    assert {t["Key"]: t["Value"] for t in inst["Tags"]} == expected
    assert {t["Key"]: t["Value"] for t in volume["Tags"]} == expected

    # and its user-data installs the host key that is pinned locally
    raw = ec2.describe_instance_attribute(InstanceId=result.instance_id, Attribute="userData")
    doc = yaml.safe_load(base64.b64decode(raw["UserData"]["Value"]))
    public = " ".join(doc["ssh_keys"]["ed25519_public"].split()[:2])
    assert public == store.pinned_host_key(result.instance_id) == result.host_public_key
    assert "BEGIN OPENSSH PRIVATE KEY" in doc["ssh_keys"]["ed25519_private"]
    assert "ssh_genkeytypes" not in doc and doc["ssh_deletekeys"] is True

    # and it uses the managed key pair, whose public half is the local key's
    local = store.load_or_create_key_pair()
    assert inst["KeyName"] == result.key_name == aws.key_pair_name(OWNER, local.public_openssh)
    [pair] = ec2.describe_key_pairs(KeyNames=[result.key_name], IncludePublicKey=True)["KeyPairs"]
    assert pair["PublicKey"].split()[:2] == local.public_openssh.split()[:2]

    # and its only security group admits tcp/22 from the caller's /32, and nothing else
    [group_ref] = inst["SecurityGroups"]
    assert group_ref["GroupId"] == result.security_group_id
    [group] = ec2.describe_security_groups(GroupIds=[result.security_group_id])["SecurityGroups"]
    assert group["VpcId"] == inst["VpcId"]
    assert [
        (
            p["IpProtocol"],
            p["FromPort"],
            p["ToPort"],
            [r["CidrIp"] for r in p["IpRanges"]],
            p["Ipv6Ranges"],
        )
        for p in group["IpPermissions"]
    ] == [("tcp", 22, 22, [f"{FIRST_IP}/32"], [])]
    assert group["IpPermissions"][0]["IpRanges"][0]["Description"] == aws.AUTO_RULE_DESCRIPTION


def test_arm64_types_get_arm64_images(backend, ec2):
    # Given Graviton profiles for each Ubuntu alias
    # When they are launched
    noble = backend.launch(profile(name="arm", instance_type="t4g.medium"))
    jammy = backend.launch(profile(name="arm2", instance_type="m7g.large", ami="ubuntu-22.04"))

    # Then each runs the newest arm64 image of its release
    by_id = {i["InstanceId"]: i for i in instances(ec2)}
    assert by_id[noble.instance_id]["ImageId"] == newest_ubuntu("24.04", "arm64")["ami_id"]
    assert by_id[jammy.instance_id]["ImageId"] == newest_ubuntu("22.04", "arm64")["ami_id"]
    assert by_id[noble.instance_id]["Architecture"] == "arm64"
    assert noble.architecture == jammy.architecture == "arm64"


def test_explicit_image_is_used(backend, ec2):
    # Given a profile naming an existing image by id
    image = newest_ubuntu("22.04", "x86_64")["ami_id"]

    # When it is launched
    result = backend.launch(profile(ami=image))

    # Then that image runs
    assert [i["ImageId"] for i in instances(ec2)] == [image]
    assert result.image_id == image


def test_spot_launch(backend, ec2):
    # Given a spot profile
    # When it is launched, listed and terminated
    result = backend.launch(profile(spot=True))
    [listed] = backend.list_instances()
    backend.terminate([result.instance_id])

    # Then it was a spot instance, and it is gone
    assert listed.spot is True
    assert instances(ec2)[0]["InstanceLifecycle"] == "spot"
    assert instances(ec2)[0]["State"]["Name"] == "terminated"


# -- bad inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"region": "xx-nowhere-9"}, "region"),
        ({"region": "us-east-99"}, "region"),
        ({"region": "Mars"}, "region"),
        ({"instance_type": "zz9.huge"}, "instance_type"),
        ({"instance_type": "not a type"}, "instance_type"),
        ({"ami": "ami-xyz"}, "ami"),
        ({"ami": "ami-0123456789abcdef0"}, "ami"),
        ({"ami": newest_ubuntu("24.04", "arm64")["ami_id"]}, "ami"),  # arm64 image, x86 type
        ({"volume_gb": -1}, "volume_gb"),
        ({"volume_gb": 100_000}, "volume_gb"),
        ({"tags": {"jupyter-ec2:owner": "someone"}}, "tags"),
    ],
)
def test_bad_profile_fields_launch_nothing(backend, ec2, fields, field):
    # Given a profile with one bad field
    # When it is launched
    with pytest.raises(ValidationError) as err:
        backend.launch(profile(**fields))

    # Then the error names the field, and nothing was created in the cloud
    assert err.value.field == field
    assert err.value.status == 400
    assert cloud_is_empty(ec2)


def test_type_not_offered_in_the_region_launches_nothing(backend, jp_ec2_cloud):
    # Given a real instance type that us-west-1 does not offer (a1: first-generation Graviton)
    west = jp_ec2_cloud.client(region="us-west-1")

    # When it is launched there
    with pytest.raises(ValidationError) as err:
        backend.launch(profile(region="us-west-1", instance_type="a1.medium"))

    # Then the error names the field and the region, and nothing was created there
    assert err.value.field == "instance_type"
    assert "not offered in us-west-1" in err.value.message
    assert cloud_is_empty(west)


@pytest.mark.parametrize(
    "answer",
    ["0.0.0.0/0", "<html>captive portal</html>", "10.1.2.3", "192.168.1.20", "127.0.0.1"],
)
def test_bad_caller_ip_answers_launch_nothing(backend, ec2, caller_ip, answer):
    # Given a caller-IP service answering a wide-open CIDR, garbage or a private address
    caller_ip.answer = answer

    # When a launch asks for the caller's address
    with pytest.raises(ValidationError) as err:
        backend.launch(profile())

    # Then it is refused, naming ssh_cidrs, and nothing was created
    assert caller_ip.requests == 1
    assert err.value.field == "ssh_cidrs"
    assert cloud_is_empty(ec2)


def test_unreachable_caller_ip_service_launches_nothing(backend, ec2):
    # Given a caller-IP service that refuses connections
    closed = ClosedPort()
    backend.caller_ip_url = closed.url
    try:
        # When a launch asks it
        with pytest.raises(ValidationError) as err:
            backend.launch(profile())
    finally:
        closed.close()

    # Then the error names ssh_cidrs and says what to configure
    assert err.value.field == "ssh_cidrs"
    assert "c.EC2Backend.ssh_cidrs" in err.value.message
    assert cloud_is_empty(ec2)


def test_made_up_region_is_refused_before_any_client(jp_ec2_cloud, store, monkeypatch):
    # Given a backend, and boto3 made unable to build any session or client
    backend = EC2Backend(
        endpoint_url=jp_ec2_cloud.endpoint_url, store=store, ssh_cidrs=["52.95.110.1/32"]
    )

    def no_session(*args, **kwargs):
        raise AssertionError("a boto3 session was built")

    monkeypatch.setattr("boto3.session.Session", no_session)

    # When a well-formed but made-up region is used
    with pytest.raises(ValidationError) as err:
        backend.launch(profile(region="xx-nowhere-9"))
    with pytest.raises(ValidationError):
        backend.client("ap-atlantis-1")

    # Then it is refused by name, without touching boto3
    assert err.value.field == "region"

    # and the trait refuses it too
    with pytest.raises(TraitError):
        EC2Backend(region="xx-nowhere-9")


def test_configured_cidrs_are_validated_and_used(jp_ec2_cloud, store, ec2):
    # Given the whole internet as SSH source
    # Then the configuration is refused
    for bad in (["0.0.0.0/0"], ["::/0"], ["auto", "1.0.0.0/4"], []):
        with pytest.raises(TraitError):
            EC2Backend(ssh_cidrs=bad)

    # Given an office network as SSH source
    backend = EC2Backend(
        endpoint_url=jp_ec2_cloud.endpoint_url,
        store=store,
        owner_id=OWNER,
        ssh_cidrs=["52.95.110.0/24"],
    )

    # When an instance is launched
    result = backend.launch(profile())

    # Then the group admits exactly that network, marked as configured
    [group] = ec2.describe_security_groups(GroupIds=[result.security_group_id])["SecurityGroups"]
    [perm] = group["IpPermissions"]
    assert perm["IpRanges"] == [
        {"CidrIp": "52.95.110.0/24", "Description": aws.CONFIGURED_RULE_DESCRIPTION}
    ]


# -- retries and AWS errors -----------------------------------------------------------------------


def test_throttled_launch_makes_exactly_one_instance(backend, ec2):
    # Given EC2 that answers the first two RunInstances with RequestLimitExceeded
    tokens: list[str] = []

    def throttle(request, **kwargs):
        tokens.append(
            urllib.parse.parse_qs(
                request.body if isinstance(request.body, str) else request.body.decode()
            )["ClientToken"][0]
        )
        if len(tokens) <= 2:
            return error_response(request, 503, "RequestLimitExceeded", "Request limit exceeded.")
        return None  # the third attempt goes to the simulated cloud

    backend.client().meta.events.register("before-send.ec2.RunInstances", throttle)

    # When an instance is launched
    result = backend.launch(profile())

    # Then botocore retried with the same client token, and exactly one instance exists
    assert len(tokens) == 3
    assert set(tokens) == {result.launch_id}
    assert [i["InstanceId"] for i in instances(ec2)] == [result.instance_id]


def test_aws_errors_are_scrubbed(backend, ec2):
    # Given EC2 refusing RunInstances with a message naming the account and a role
    def refuse(request, **kwargs):
        return error_response(
            request,
            403,
            "UnauthorizedOperation",
            "You are not authorized to perform this operation. User: "
            "arn:aws:sts::123456789012:assumed-role/dev/alice is not authorized to perform: "
            "ec2:RunInstances in account 123456789012. "
            "Encoded authorization failure message: QUJDREVGR0g",
        )

    backend.client().meta.events.register("before-send.ec2.RunInstances", refuse)

    # When a launch is refused
    with pytest.raises(CloudError) as err:
        backend.launch(profile())

    # Then the error carries the code, a plain message and no account, ARN, blob or path
    assert err.value.status == 502
    assert err.value.code == "UnauthorizedOperation"
    text = err.value.message
    assert "UnauthorizedOperation" in text
    for secret in ("123456789012", "arn:", "QUJDREVGR0g", "/state"):
        assert secret not in text
    assert instances(ec2) == []


def test_instance_type_refused_at_launch_names_the_field(backend, ec2):
    # Given EC2 refusing the instance type only when the instance is run
    def refuse(request, **kwargs):
        return error_response(
            request, 400, "InvalidParameterValue", "Invalid value 't3.medium' for InstanceType."
        )

    backend.client().meta.events.register("before-send.ec2.RunInstances", refuse)

    # When a launch is refused
    with pytest.raises(ValidationError) as err:
        backend.launch(profile())

    # Then the error names instance_type
    assert err.value.field == "instance_type"
    assert instances(ec2) == []


def test_missing_credentials_are_explained(jp_ec2_cloud, store, monkeypatch):
    # Given no credentials anywhere (the harness already hides ~/.aws and the metadata service)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    backend = EC2Backend(endpoint_url=jp_ec2_cloud.endpoint_url, store=store, owner_id=OWNER)

    # When the instances are listed
    with pytest.raises(CloudError) as err:
        backend.list_instances()

    # Then the message says what to do
    assert err.value.message.startswith("AWS credentials are not configured:")
    assert err.value.code == "NoCredentials"


def test_unreachable_endpoint_is_a_cloud_error(jp_ec2_cloud, store):
    # Given an endpoint nobody listens on (and the harness's dummy credentials)
    closed = ClosedPort()
    try:
        backend = EC2Backend(endpoint_url=closed.url, store=store, owner_id=OWNER, max_attempts=1)

        # When the instances are listed
        with pytest.raises(CloudError) as err:
            backend.list_instances()
    finally:
        closed.close()

    # Then the error says the endpoint could not be reached
    assert err.value.code == "EndpointConnectionError"
    assert "Could not reach the EC2 endpoint" in err.value.message


# -- key pair and security group reuse ------------------------------------------------------------


def test_key_pair_is_reused_and_reimported(backend, ec2, store):
    # Given one launch
    first = backend.launch(profile())

    # When a second launch follows, then a third after the key pair was deleted in the console
    second = backend.launch(profile())
    ec2.delete_key_pair(KeyName=first.key_name)
    third = backend.launch(profile())

    # Then every launch used the one managed key pair, imported again when it was missing
    assert first.key_name == second.key_name == third.key_name
    [pair] = ec2.describe_key_pairs()["KeyPairs"]
    assert pair["KeyName"] == first.key_name
    # and one managed group serves every launch in the VPC
    assert first.security_group_id == second.security_group_id == third.security_group_id
    assert len(managed_groups(ec2)) == 1


def test_manual_rules_are_undone(backend, ec2):
    # Given a managed group someone opened to the world on a Jupyter port
    first = backend.launch(profile())
    ec2.authorize_security_group_ingress(
        GroupId=first.security_group_id,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 8888,
                "ToPort": 8888,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )

    # When the next launch prepares the group
    backend.launch(profile())

    # Then only tcp/22 from the caller is left
    [group] = ec2.describe_security_groups(GroupIds=[first.security_group_id])["SecurityGroups"]
    assert [
        (p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in group["IpPermissions"]
    ] == [(22, [f"{FIRST_IP}/32"])]


# -- discovery and actions ------------------------------------------------------------------------


def test_lifecycle_and_discovery_follow_the_callers_address(backend, ec2, caller_ip):
    # Given a launched instance
    result = backend.launch(profile(), label="box")
    [listed] = backend.list_instances()
    assert (listed.instance_id, listed.state, listed.profile, listed.launch_id, listed.name) == (
        result.instance_id,
        "running",
        "cpu",
        result.launch_id,
        "box",
    )
    assert backend.find_by_launch_id(result.launch_id).instance_id == result.instance_id

    # When it is stopped, the caller moves to another address, and it is started again
    stopped = backend.stop([result.instance_id])
    [after_stop] = backend.list_instances()
    caller_ip.answer = SECOND_IP
    started = backend.start([result.instance_id])

    # Then the state changes are reported, with the reason for the stop
    assert [(c.instance_id, c.previous_state) for c in stopped] == [(result.instance_id, "running")]
    assert after_stop.state == "stopped"
    assert after_stop.state_reason_code == "Client.UserInitiatedShutdown"
    assert "by a user" in after_stop.state_reason
    assert [c.previous_state for c in started] == ["stopped"]
    assert instances(ec2)[0]["State"]["Name"] in ("pending", "running")

    # and the group now admits only the new address
    [group] = ec2.describe_security_groups(GroupIds=[result.security_group_id])["SecurityGroups"]
    assert [[r["CidrIp"] for r in p["IpRanges"]] for p in group["IpPermissions"]] == [
        [f"{SECOND_IP}/32"]
    ]

    # When it is terminated
    backend.terminate([result.instance_id])

    # Then discovery still finds it as terminated, unless live instances only are asked for
    assert [i.state for i in backend.list_instances()] == ["terminated"]
    assert backend.list_instances(include_terminated=False) == []
    with pytest.raises(ConflictError):
        backend.start([result.instance_id])


def test_spot_interruption_is_surfaced(backend, jp_ec2_cloud):
    # Given a spot instance that AWS stopped to reclaim capacity
    from moto.ec2.models.instances import StateReason

    result = backend.launch(profile(spot=True))
    moto_instance = jp_ec2_cloud.ec2_backend().get_instance(result.instance_id)
    moto_instance.stop()
    moto_instance.state_reason = StateReason(
        "Server.SpotInstanceShutdown: Spot instance shutdown", "Server.SpotInstanceShutdown"
    )

    # When the instances are listed
    [listed] = backend.list_instances()

    # Then the reason is a plain message
    assert listed.state == "stopped"
    assert "spot interruption" in listed.state_reason


def test_actions_touch_only_managed_instances(backend, ec2, jp_ec2_cloud):
    # Given an instance of someone else (no tags) and one of another owner of this extension
    image = newest_ubuntu("24.04", "x86_64")["ami_id"]
    foreign = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    other_owner = ec2.run_instances(
        ImageId=image,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=aws.build_tag_specifications(
            aws.owner_tags("someoneelse01"), ["instance"]
        ),
    )
    ids = [foreign["Instances"][0]["InstanceId"], other_owner["Instances"][0]["InstanceId"]]

    # When this owner tries to stop, start or terminate them, or lists its instances
    for action in (backend.stop, backend.start, backend.terminate):
        for instance_id in ids:
            with pytest.raises(NotFoundError):
                action([instance_id])

    # Then they are untouched, and not listed
    assert {i["State"]["Name"] for i in instances(ec2)} == {"running"}
    assert backend.list_instances() == []


def test_ids_are_validated_and_empty_lists_make_no_call(backend):
    # Given a count of every EC2 call the backend makes
    calls: list[str] = []
    backend.client().meta.events.register(
        "before-call.ec2", lambda model, **kw: calls.append(model.name)
    )

    # When actions get no ids, or malformed ones
    assert backend.stop([]) == [] and backend.start([]) == [] and backend.terminate([]) == []
    for bad in (["i-123"], ["vol-0123456789abcdef0"], ["i-0123456789abcdef0; rm -rf /"]):
        with pytest.raises(ValidationError):
            backend.terminate(bad)

    # Then no call reached EC2
    assert calls == []


def test_repeated_launch_adopts_its_instance(backend, ec2, store):
    # Given a launch that went through, and a state directory that lost its pin (a crash)
    first = backend.launch(profile(), launch_id="launch-0001")
    store.forget(first.instance_id)

    # When the same launch is asked for again
    again = backend.launch(profile(), launch_id="launch-0001")

    # Then no second instance is made, and the host key it was launched with is pinned again
    assert [i["InstanceId"] for i in instances(ec2)] == [first.instance_id]
    assert again.instance_id == first.instance_id
    assert again.host_key_fingerprint == first.host_key_fingerprint
    assert store.pinned_host_key(first.instance_id) == first.host_public_key


def test_host_key_can_be_recovered_from_user_data(backend, store):
    # Given a launched instance whose pin was lost
    result = backend.launch(profile())
    pinned = store.pinned_host_key(result.instance_id)
    store.forget(result.instance_id)

    # When the host key is read back from EC2
    recovered = backend.host_key_from_user_data(result.instance_id)

    # Then it is the key the instance was launched with
    assert recovered == pinned
