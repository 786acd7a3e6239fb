"""The strict, late front of the simulated cloud: AWS's documented rules and EC2's lag.

Each rule of :data:`jupyter_ec2.testing.strict.RULES` is shown to refuse a request that breaks
it, over real HTTP through the front, with AWS's error code; moto alone (the harness's direct
view) accepts the same request, so the test would fail if the front went permissive. The lag
tests launch real instances in moto and watch them hidden, then shown.
"""

from __future__ import annotations

import base64
import time

import pytest
from botocore.exceptions import ClientError

from jupyter_ec2.testing.strict import RULES, check_request

PUBLIC_KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB6Qq9bQ8M6sfs5c7QdUOHZt9W7n8ICTbNp0CNrmlGdn"
AMI_FILTER = [{"Name": "name", "Values": ["ubuntu/images/*noble*amd64*"]}]


@pytest.fixture
def strict(jp_ec2_cloud):
    """An EC2 client that goes through the strict front, as the extension's clients do."""
    return jp_ec2_cloud.client(strict=True)


@pytest.fixture
def direct(jp_ec2_cloud):
    """The harness's own client: moto directly, no checks and no lag."""
    return jp_ec2_cloud.client()


def _error(excinfo) -> tuple[str, str]:
    info = excinfo.value.response["Error"]
    return info["Code"], info["Message"]


def _image_id(direct) -> str:
    return direct.describe_images(Owners=["099720109477"], Filters=AMI_FILTER)["Images"][0][
        "ImageId"
    ]


def _ssh_rule(description: str) -> list[dict]:
    return [
        {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "IpRanges": [{"CidrIp": "52.95.110.1/32", "Description": description}],
        }
    ]


def _group(client, name: str = "strict-test") -> str:
    vpc = client.describe_vpcs()["Vpcs"][0]["VpcId"]
    return client.create_security_group(GroupName=name, Description="test", VpcId=vpc)["GroupId"]


def test_the_apostrophe_in_a_rule_description_is_refused_as_aws_does(jp_ec2_cloud, strict, direct):
    """The front can never silently go permissive: AWS refuses this, and so must the front."""
    # Given a security group
    group_id = _group(direct)
    # When a rule whose description holds an apostrophe is authorized through the front
    with pytest.raises(ClientError) as excinfo:
        strict.authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=_ssh_rule("this machine's address")
        )
    # Then AWS's code and message come back and nothing was added in the cloud
    code, message = _error(excinfo)
    assert code == "InvalidParameterValue"
    assert message.startswith("Invalid rule description.")
    group = direct.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    assert group["IpPermissions"] == []
    assert jp_ec2_cloud.front.refusals[-1].rule == "security group rule description"
    # And moto alone would have stored it (why the front exists)
    direct.authorize_security_group_ingress(
        GroupId=group_id, IpPermissions=_ssh_rule("this machine's address")
    )


def test_an_allowed_description_passes_the_front(strict, direct):
    # Given a security group
    group_id = _group(direct)
    # When a rule with every allowed punctuation character is authorized through the front
    text = "ok a-zA-Z0-9. _-:/()#,@[]+=&;{}!$*"
    strict.authorize_security_group_ingress(GroupId=group_id, IpPermissions=_ssh_rule(text))
    # Then moto has it
    group = direct.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    assert group["IpPermissions"][0]["IpRanges"][0]["Description"] == text


def _tags(key: str = "k", value: str = "v", count: int = 1) -> list[dict]:
    if count == 1:
        return [{"ResourceType": "security-group", "Tags": [{"Key": key, "Value": value}]}]
    return [
        {
            "ResourceType": "security-group",
            "Tags": [{"Key": f"k{i}", "Value": value} for i in range(count)],
        }
    ]


# Each case: the rule's name, and a call through the front that breaks exactly that rule.
BROKEN = {
    "security group rule description": lambda c, d: c.authorize_security_group_ingress(
        GroupId=_group(d), IpPermissions=_ssh_rule("x" * 256)
    ),
    "security group description": lambda c, d: c.create_security_group(
        GroupName="g1", Description="it's mine", VpcId=d.describe_vpcs()["Vpcs"][0]["VpcId"]
    ),
    "security group name": lambda c, d: c.create_security_group(
        GroupName="sg-mine", Description="d", VpcId=d.describe_vpcs()["Vpcs"][0]["VpcId"]
    ),
    "tag key length": lambda c, d: c.create_tags(
        Resources=[_group(d)], Tags=[{"Key": "k" * 128, "Value": "v"}]
    ),
    "tag key prefix aws:": lambda c, d: c.create_security_group(
        GroupName="g2",
        Description="d",
        VpcId=d.describe_vpcs()["Vpcs"][0]["VpcId"],
        TagSpecifications=_tags(key="AWS:mine"),
    ),
    "tag value length": lambda c, d: c.create_security_group(
        GroupName="g3",
        Description="d",
        VpcId=d.describe_vpcs()["Vpcs"][0]["VpcId"],
        TagSpecifications=_tags(value="v" * 256),
    ),
    "tags per resource": lambda c, d: c.create_security_group(
        GroupName="g4",
        Description="d",
        VpcId=d.describe_vpcs()["Vpcs"][0]["VpcId"],
        TagSpecifications=_tags(count=51),
    ),
    "client token": lambda c, d: c.run_instances(
        ImageId=_image_id(d), InstanceType="t3.micro", MinCount=1, MaxCount=1, ClientToken="t" * 65
    ),
    "user data size": lambda c, d: c.run_instances(
        ImageId=_image_id(d),
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        UserData="#cloud-config\n" + "#" * 16 * 1024,
    ),
    "key pair name": lambda c, d: c.import_key_pair(
        KeyName="k" * 256,
        PublicKeyMaterial=PUBLIC_KEY,
    ),
}


def test_every_rule_has_a_test_and_a_source():
    # Given the rule table / Then each rule is tested here and cites an AWS documentation page
    assert {rule.name for rule in RULES} | {"tags per resource"} == set(BROKEN)
    for rule in RULES:
        assert rule.source.startswith("https://docs.aws.amazon.com/"), rule.name


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_refuses_what_aws_refuses(jp_ec2_cloud, strict, direct, rule):
    # Given the strict front / When a call breaks one rule
    with pytest.raises(ClientError) as excinfo:
        BROKEN[rule](strict, direct)
    # Then AWS's error code comes back, and it was that rule that refused it
    code, _ = _error(excinfo)
    assert code in ("InvalidParameterValue", "TagLimitExceeded")
    assert [r.rule for r in jp_ec2_cloud.front.refusals] == [rule]
    # And nothing was launched
    reservations = direct.describe_instances()["Reservations"]
    assert reservations == []


def test_check_request_is_pure_and_reads_the_query_names():
    # Given the query fields of a RunInstances with a long tag key and a 64-character token
    fields = {"ClientToken": "t" * 64, "TagSpecification.1.Tag.1.Key": "k" * 127}
    # Then it passes; one more character in either is refused
    assert check_request("RunInstances", fields) is None
    assert check_request("RunInstances", {**fields, "ClientToken": "t" * 65}).rule == "client token"
    too_long = {**fields, "TagSpecification.1.Tag.1.Key": "k" * 128}
    assert check_request("RunInstances", too_long).rule == "tag key length"
    user_data = base64.b64encode(b"x" * 16384).decode()
    assert check_request("RunInstances", {"UserData": user_data}) is None


def _launch(client, direct) -> str:
    answer = client.run_instances(
        ImageId=_image_id(direct), InstanceType="t3.micro", MinCount=1, MaxCount=1
    )
    return answer["Instances"][0]["InstanceId"]


def _listed(client) -> list[str]:
    return [
        i["InstanceId"] for r in client.describe_instances()["Reservations"] for i in r["Instances"]
    ]


def test_lag_hides_a_new_instance_then_shows_it(jp_ec2_cloud, strict, direct):
    # Given a lag of 1.5 s
    jp_ec2_cloud.set_lag(1.5)
    # When an instance is launched through the front
    instance_id = _launch(strict, direct)
    # Then describes through the front miss it, and a describe by id is NotFound
    assert instance_id not in _listed(strict)
    with pytest.raises(ClientError) as excinfo:
        strict.describe_instances(InstanceIds=[instance_id])
    assert _error(excinfo)[0] == "InvalidInstanceID.NotFound"
    assert instance_id in _error(excinfo)[1]
    # And the harness's direct view sees it at once
    assert instance_id in _listed(direct)
    # When the lag has passed / Then the front shows it too
    deadline = time.monotonic() + 30
    while instance_id not in _listed(strict):
        assert time.monotonic() < deadline, "the instance never showed up"
        time.sleep(0.1)
    assert strict.describe_instances(InstanceIds=[instance_id])["Reservations"]


def test_lag_hides_a_just_started_instance(jp_ec2_cloud, strict, direct):
    # Given a stopped instance, launched without lag
    instance_id = _launch(strict, direct)
    strict.stop_instances(InstanceIds=[instance_id])
    assert instance_id in _listed(strict)
    # When it is started with a lag on
    jp_ec2_cloud.set_lag(60)
    strict.start_instances(InstanceIds=[instance_id])
    # Then it is hidden; setting the lag back to 0 shows it at once
    assert instance_id not in _listed(strict)
    jp_ec2_cloud.set_lag(0)
    assert instance_id in _listed(strict)


def test_the_fixture_resets_the_lag(jp_ec2_cloud):
    # Given a fresh test / Then no lag is left over from any other test
    assert jp_ec2_cloud.front.lag == 0
    assert jp_ec2_cloud.front.refusals == []
