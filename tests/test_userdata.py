"""The pure builders of the EC2 layer: user-data, run_instances parameters, SSH rules, errors.

None of these tests needs AWS or the simulated cloud: every function here only turns values into
boto3 parameters (or AWS answers into domain values).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ProfileNotFound,
)
from hypothesis import given
from hypothesis import strategies as st

from jupyter_ec2 import aws, models
from jupyter_ec2.errors import CloudError, ConflictError, NotFoundError, ValidationError
from jupyter_ec2.keys import generate_ed25519, pkey_from_text
from jupyter_ec2.models import Profile

OWNER = "0123456789abcdef"


def _profile(**fields) -> Profile:
    base = {
        "name": "cpu",
        "display_name": "CPU",
        "region": "us-east-1",
        "instance_type": "t3.medium",
    }
    return Profile(**{**base, **fields})


def _params(**profile_fields) -> dict:
    return aws.build_run_instances_params(
        profile=_profile(**profile_fields),
        image=aws.ImageInfo("ami-0123456789abcdef0", "x86_64", "/dev/sda1"),
        key_name="jupyter-ec2-key",
        security_group_id="sg-0123456789abcdef0",
        user_data="#cloud-config\n{}\n",
        launch_id="6f1c2d9e-0000-4000-8000-000000000001",
        owner_id=OWNER,
        label="my box",
    )


# -- user-data ---------------------------------------------------------------------------------


def test_user_data_installs_only_the_given_host_key():
    # Given a freshly generated host key
    host_key = generate_ed25519(comment="jupyter-ec2-host")

    # When the cloud-config is built
    text = aws.build_user_data(host_key)

    # Then it is a cloud-config document that installs exactly that key pair…
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert doc["ssh_keys"] == {
        "ed25519_private": host_key.private_openssh,
        "ed25519_public": host_key.public_openssh,
    }
    # …whose private half really belongs to the public half…
    pkey = pkey_from_text(doc["ssh_keys"]["ed25519_private"])
    assert f"{pkey.get_name()} {pkey.get_base64()}" == " ".join(host_key.public_openssh.split()[:2])
    # …deletes the image's keys (given ssh_keys, cloud-init makes no other type), and keeps
    # root and passwords out
    assert doc["ssh_deletekeys"] is True
    assert "ssh_genkeytypes" not in doc  # dead with ssh_keys, and `[]` fails the schema
    assert doc["disable_root"] is True
    assert doc["ssh_pwauth"] is False


def test_user_data_holds_no_other_secret():
    # Given a host key
    host_key = generate_ed25519()

    # When the cloud-config is built
    text = aws.build_user_data(host_key)
    doc = yaml.safe_load(text)

    # Then the only private material is the host key, and nothing looks like a token
    assert text.count("PRIVATE KEY-----") == 2  # BEGIN and END of one key
    assert set(doc) == {
        "ssh_deletekeys",
        "ssh_keys",
        "disable_root",
        "ssh_pwauth",
    }
    assert "token" not in text.lower()
    assert "password" not in text.lower()


def test_host_key_is_read_back_from_user_data():
    # Given user-data built for a host key
    host_key = generate_ed25519(comment="some comment")
    text = aws.build_user_data(host_key)

    # When its public key is read back
    public = aws.host_public_key_from_user_data(text)

    # Then it is the key's type and blob, without the comment
    assert public == " ".join(host_key.public_openssh.split()[:2])
    assert aws.host_public_key_from_user_data("#cloud-config\n: [") is None
    assert aws.host_public_key_from_user_data("#cloud-config\nssh_pwauth: false\n") is None


# Debian's cloud-init, unpacked (not installed) by `make cloud-init-schema`.
CLOUD_INIT_ROOT = Path(__file__).resolve().parent.parent / ".cache" / "cloud-init" / "root"
CLOUD_INIT_CLI = CLOUD_INIT_ROOT / "usr" / "bin" / "cloud-init"


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess:
    """``cloud-init schema --config-file PATH`` of Debian's cloud-init package, unpacked."""
    if not CLOUD_INIT_CLI.exists():
        if os.environ.get("JEC2_REQUIRE_CLOUD_INIT"):
            pytest.fail(f"{CLOUD_INIT_CLI} is missing: `make cloud-init-schema` did not run")
        pytest.skip("cloud-init's validator is not unpacked: run `make cloud-init-schema`")
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(CLOUD_INIT_ROOT / "usr" / "lib" / "python3" / "dist-packages"),
    }
    return subprocess.run(
        ["/usr/bin/python3", str(CLOUD_INIT_CLI), "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _user_data_variants() -> list:
    """Every shape of user-data the builder makes: it varies only in the host key and its
    comment (the comment is the one free-text value that reaches the YAML)."""
    comments = ["jupyter-ec2-host", "", "with: colon # and hash", "quote ' and \" too", "ünï"]
    return [pytest.param(comment, id=f"comment-{i}") for i, comment in enumerate(comments)]


@pytest.mark.parametrize("comment", _user_data_variants())
def test_every_user_data_passes_cloud_inits_own_schema(comment, tmp_path):
    # Given the user-data of a launch (a fresh host key with this comment)
    host_key = generate_ed25519(comment=comment)
    path = tmp_path / "user-data"
    path.write_text(aws.build_user_data(host_key))

    # When cloud-init's own validator reads it
    checked = cloud_init_schema(path)

    # Then it is valid, with no deprecation either, and the key survives the YAML round trip
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    assert "Valid cloud-config" in output
    assert "deprecat" not in checked.stdout.lower().replace("schema deprecations: \n", "")
    doc = yaml.safe_load(path.read_text())
    assert doc["ssh_keys"]["ed25519_public"] == host_key.public_openssh


def test_cloud_init_schema_check_can_fail(tmp_path):
    # Given the user-data main used to send (ssh_genkeytypes: [], a dead key)
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\nssh_deletekeys: true\nssh_genkeytypes: []\n")

    # When cloud-init's validator reads it
    checked = cloud_init_schema(path)

    # Then it is refused, naming the key: the check above is not one that always passes
    assert checked.returncode != 0
    assert "ssh_genkeytypes" in checked.stdout + checked.stderr


# -- run_instances parameters ------------------------------------------------------------------


def test_run_instances_params_are_hardened():
    # Given a default profile
    # When the launch parameters are built
    params = _params(volume_gb=42)

    # Then IMDSv2 is required, with a hop limit of 1
    assert params["MetadataOptions"] == {
        "HttpTokens": "required",
        "HttpEndpoint": "enabled",
        "HttpPutResponseHopLimit": 1,
    }
    # and the root volume is encrypted gp3 of the profile's size, on the image's root device
    assert params["BlockDeviceMappings"] == [
        {
            "DeviceName": "/dev/sda1",
            "Ebs": {
                "VolumeSize": 42,
                "VolumeType": "gp3",
                "Encrypted": True,
                "DeleteOnTermination": True,
            },
        }
    ]
    # and a shutdown from inside stops rather than terminates; retries are idempotent
    assert params["InstanceInitiatedShutdownBehavior"] == "stop"
    assert params["ClientToken"] == "6f1c2d9e-0000-4000-8000-000000000001"
    assert (params["MinCount"], params["MaxCount"]) == (1, 1)
    assert params["SecurityGroupIds"] == ["sg-0123456789abcdef0"]
    assert params["KeyName"] == "jupyter-ec2-key"
    assert "InstanceMarketOptions" not in params
    assert "SubnetId" not in params


def test_run_instances_params_tag_instance_and_volume():
    # Given a profile with a user tag
    # When the launch parameters are built
    params = _params(tags={"team": "data"})

    # Then the instance and its volume carry the same tags, ours and the profile's
    specs = {
        s["ResourceType"]: {t["Key"]: t["Value"] for t in s["Tags"]}
        for s in params["TagSpecifications"]
    }
    assert set(specs) == {"instance", "volume"}
    expected = {
        "team": "data",
        "jupyter-ec2:managed": "true",
        "jupyter-ec2:owner": OWNER,
        "jupyter-ec2:profile": "cpu",
        "jupyter-ec2:launch-id": "6f1c2d9e-0000-4000-8000-000000000001",
        "Name": "my box",
    }
    assert specs["instance"] == expected
    assert specs["volume"] == expected


def test_managed_tags_win_over_user_tags():
    # Given user tags that try to take over managed keys (bypassing the profile validators)
    tags = aws.build_instance_tags(
        owner_id=OWNER,
        profile_name="cpu",
        launch_id="L1",
        label="box",
        user_tags={"jupyter-ec2:owner": "someone-else", "Name": "x"},
    )

    # Then ours are kept
    assert tags["jupyter-ec2:owner"] == OWNER
    assert tags["Name"] == "box"


def test_spot_uses_persistent_request_that_stops():
    # Given a spot profile
    # When the launch parameters are built
    params = _params(spot=True)

    # Then the instance is a spot instance that AWS stops (not loses) on interruption
    assert params["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"},
    }


def test_subnet_is_passed_only_when_configured():
    # Given a configured subnet
    params = aws.build_run_instances_params(
        profile=_profile(),
        image=aws.ImageInfo("ami-0123456789abcdef0", "arm64", "/dev/xvda"),
        key_name="k",
        security_group_id="sg-1",
        user_data="#cloud-config\n",
        launch_id="L1",
        owner_id=OWNER,
        label="box",
        subnet_id="subnet-0123456789abcdef0",
    )

    # Then it is used, and the root device follows the image
    assert params["SubnetId"] == "subnet-0123456789abcdef0"
    assert params["BlockDeviceMappings"][0]["DeviceName"] == "/dev/xvda"


def test_owner_filters():
    # Given an owner id
    # When the discovery filters are built, with and without terminated instances
    every = aws.owner_filters(OWNER)
    live = aws.owner_filters(OWNER, include_terminated=False)

    # Then both match our tags, and only the second excludes terminated instances
    assert {"Name": "tag:jupyter-ec2:managed", "Values": ["true"]} in every
    assert {"Name": "tag:jupyter-ec2:owner", "Values": [OWNER]} in every
    assert len(every) == 2
    states = next(f for f in live if f["Name"] == "instance-state-name")["Values"]
    assert "terminated" not in states
    assert {"running", "stopped", "pending", "stopping"} <= set(states)


def test_key_pair_name_follows_the_key():
    # Given two different keys of one owner
    one, two = generate_ed25519(), generate_ed25519()

    # Then they are imported under different names, each stable
    assert aws.key_pair_name(OWNER, one.public_openssh) == aws.key_pair_name(
        OWNER, one.public_openssh
    )
    assert aws.key_pair_name(OWNER, one.public_openssh) != aws.key_pair_name(
        OWNER, two.public_openssh
    )
    assert aws.key_pair_name(OWNER, one.public_openssh).startswith(f"jupyter-ec2-{OWNER}-")


def test_owner_id_is_stable_and_opaque():
    # When the default owner id is computed twice
    first, second = aws.default_owner_id(), aws.default_owner_id()

    # Then it is the same short hex hash
    assert first == second
    assert len(first) == 16 and int(first, 16) >= 0


def test_ids_and_labels_are_validated():
    # Then well-formed ids pass, in order and without duplicates, and others name the field
    assert aws.validate_instance_ids(
        ["i-0123456789abcdef0", "i-01234567", "i-0123456789abcdef0"]
    ) == [
        "i-0123456789abcdef0",
        "i-01234567",
    ]
    for bad in (["i-xyz"], ["i-0123456789ABCDEF0"], ["sg-01234567"], "i-01234567", [None]):
        with pytest.raises(ValidationError) as err:
            aws.validate_instance_ids(bad)
        assert err.value.field == "instance_id"
    with pytest.raises(ValidationError) as err:
        aws.validate_label("x" * 200)
    assert err.value.field == "name"
    with pytest.raises(ValidationError):
        aws.validate_launch_id("has space")


# -- images ------------------------------------------------------------------------------------


def test_every_alias_of_the_models_resolves():
    # Then each image alias a profile may name has a release to look up
    assert set(aws.UBUNTU_RELEASES) | set(aws.OTHER_IMAGES) == set(models.AMI_ALIASES)


def test_image_filters_pin_canonical_server_images():
    # When the filters for the arm64 24.04 image are built
    filters = {f["Name"]: f["Values"] for f in aws.image_filters("ubuntu-24.04", "arm64")}

    # Then they ask for available arm64 noble server images of any hvm-ssd volume kind
    assert filters["name"] == ["ubuntu/images/hvm-ssd*/ubuntu-noble-24.04-arm64-server-*"]
    assert filters["architecture"] == ["arm64"]
    assert filters["state"] == ["available"]
    assert aws.image_name_pattern("ubuntu-22.04", "x86_64") == (
        "ubuntu/images/hvm-ssd*/ubuntu-jammy-22.04-amd64-server-*"
    )


def test_newest_image_wins():
    # Given images of several dates
    images = [
        {"ImageId": "ami-1", "CreationDate": "2025-03-05T08:00:00.000Z", "Architecture": "x86_64"},
        {"ImageId": "ami-2", "CreationDate": "2025-10-01T08:00:00.000Z", "Architecture": "x86_64"},
        {"ImageId": "ami-3", "CreationDate": "2024-12-31T08:00:00.000Z", "Architecture": "x86_64"},
    ]

    # Then the newest is picked, and none is found in nothing
    assert aws.newest_image(images).image_id == "ami-2"
    assert aws.newest_image([]) is None


def test_architecture_for_instance_types():
    # Then x86 types get x86_64, Graviton types arm64, and others are refused
    assert aws.architecture_for(["i386", "x86_64"]) == "x86_64"
    assert aws.architecture_for(["arm64"]) == "arm64"
    with pytest.raises(ValidationError) as err:
        aws.architecture_for(["x86_64_mac"])
    assert err.value.field == "instance_type"


# -- SSH sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("52.95.110.1/32", "52.95.110.1/32"),
        ("52.95.110.1", "52.95.110.1/32"),
        ("10.20.0.0/16", "10.20.0.0/16"),
        ("2600:1f18:1234::/48", "2600:1f18:1234::/48"),
    ],
)
def test_configured_cidrs_are_normalised(value, expected):
    assert aws.validate_cidr(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "0.0.0.0/0",
        "::/0",
        "0.0.0.0/1",
        "128.0.0.0/7",
        "52.95.110.1/24",
        "127.0.0.1/32",
        "nonsense",
        "",
        5,
    ],
)
def test_open_or_bad_cidrs_are_refused(value):
    # When a CIDR that is too wide, malformed or useless is configured
    with pytest.raises(ValidationError) as err:
        aws.validate_cidr(value)

    # Then the error names ssh_cidrs
    assert err.value.field == "ssh_cidrs"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"52.95.110.1\n", "52.95.110.1/32"),
        ("  54.239.28.85 ", "54.239.28.85/32"),
        ("2600:1f18:4000::1", "2600:1f18:4000::1/128"),
    ],
)
def test_caller_ip_answers_become_host_cidrs(answer, expected):
    assert aws.caller_cidr_from_answer(answer) == expected


@pytest.mark.parametrize(
    "answer",
    [
        "0.0.0.0/0",
        "0.0.0.0",
        "<html><body>Welcome to the captive portal</body></html>",
        "10.1.2.3",
        "192.168.0.10",
        "127.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "203.0.113.7",  # documentation range
        "224.0.0.1",
        "52.95.110.1, 54.239.28.85",
        "",
    ],
)
def test_caller_ip_garbage_and_private_addresses_are_refused(answer):
    # When the caller-IP service answers something that is not one public address
    with pytest.raises(ValidationError) as err:
        aws.caller_cidr_from_answer(answer)

    # Then the error names ssh_cidrs and says what to configure instead
    assert err.value.field == "ssh_cidrs"
    assert "ssh_cidrs" in err.value.message


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=7))
def test_no_wide_ipv4_network_is_ever_accepted(address, prefix):
    # Given any IPv4 network wider than /8
    net = ipaddress.ip_network(f"{address}/{prefix}", strict=False)

    # Then it is refused
    with pytest.raises(ValidationError):
        aws.validate_cidr(str(net))


def test_plan_ingress_replaces_a_stale_auto_rule():
    # Given a group with the old auto address, a configured range and a stray Jupyter port
    current = [
        {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "IpRanges": [
                {"CidrIp": "52.95.110.1/32", "Description": aws.AUTO_RULE_DESCRIPTION},
                {"CidrIp": "10.20.0.0/16", "Description": aws.CONFIGURED_RULE_DESCRIPTION},
            ],
            "Ipv6Ranges": [],
            "UserIdGroupPairs": [],
            "PrefixListIds": [],
        },
        {
            "IpProtocol": "tcp",
            "FromPort": 8888,
            "ToPort": 8888,
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        },
    ]
    desired = {
        "54.239.28.85/32": aws.AUTO_RULE_DESCRIPTION,
        "10.20.0.0/16": aws.CONFIGURED_RULE_DESCRIPTION,
    }

    # When the changes are planned
    revoke, authorize = aws.plan_ingress(current, desired)

    # Then the old address and the stray port go, the new address comes, the range stays
    assert revoke == [
        {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "IpRanges": [{"CidrIp": "52.95.110.1/32"}],
        },
        {
            "IpProtocol": "tcp",
            "FromPort": 8888,
            "ToPort": 8888,
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        },
    ]
    assert authorize == {"54.239.28.85/32": aws.AUTO_RULE_DESCRIPTION}


def test_plan_ingress_keeps_a_group_that_is_right():
    # Given a group holding exactly the desired rule
    desired = {"54.239.28.85/32": aws.AUTO_RULE_DESCRIPTION}
    current = aws.build_ssh_permissions(desired)

    # Then nothing changes
    assert aws.plan_ingress(current, desired) == ([], {})


def test_ssh_permissions_are_port_22_only():
    # When permissions for an IPv4 and an IPv6 source are built
    perms = aws.build_ssh_permissions({"54.239.28.85/32": "a", "2600:1f18::/64": "b"})

    # Then they are one tcp/22 permission with both ranges
    assert perms == [
        {
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "IpRanges": [{"CidrIp": "54.239.28.85/32", "Description": "a"}],
            "Ipv6Ranges": [{"CidrIpv6": "2600:1f18::/64", "Description": "b"}],
        }
    ]


# -- discovery ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "code", "words"),
    [
        (
            {"State": {"Name": "stopped"}, "StateReason": {"Code": "Server.SpotInstanceShutdown"}},
            "Server.SpotInstanceShutdown",
            "spot interruption",
        ),
        (
            {
                "State": {"Name": "stopped"},
                "StateReason": {"Code": "Client.UserInitiatedShutdown", "Message": "x"},
            },
            "Client.UserInitiatedShutdown",
            "by a user",
        ),
        (
            {
                "State": {"Name": "stopped"},
                "StateReason": {"Code": "Client.InstanceInitiatedShutdown"},
            },
            "Client.InstanceInitiatedShutdown",
            "inside the instance",
        ),
        (
            {
                "State": {"Name": "stopped"},
                "StateReason": {"Code": "", "Message": ""},
                "StateTransitionReason": "User initiated (2025-01-01 10:00:00 GMT)",
            },
            None,
            "User initiated",
        ),
    ],
)
def test_state_reasons_are_plain_messages(description, code, words):
    got_code, message = aws.state_reason(description)
    assert got_code == code
    assert words in message
    assert "2025" not in message


def test_running_instance_has_no_reason():
    assert aws.state_reason({"State": {"Name": "running"}, "StateReason": {"Code": ""}}) == (
        None,
        None,
    )


def test_description_becomes_managed_instance():
    # Given a describe_instances entry of a managed spot instance
    desc = {
        "InstanceId": "i-0123456789abcdef0",
        "State": {"Name": "running"},
        "InstanceType": "t3.medium",
        "InstanceLifecycle": "spot",
        "PublicIpAddress": "54.1.2.3",
        "PrivateIpAddress": "10.0.0.5",
        "PublicDnsName": "ec2-54-1-2-3.compute-1.amazonaws.com",
        "PrivateDnsName": "",
        "Placement": {"AvailabilityZone": "us-east-1a"},
        "SecurityGroups": [{"GroupId": "sg-1", "GroupName": "g"}],
        "Tags": [
            {"Key": "jupyter-ec2:profile", "Value": "cpu"},
            {"Key": "jupyter-ec2:launch-id", "Value": "L1"},
            {"Key": "Name", "Value": "box"},
        ],
    }

    # When it is mapped
    inst = aws.managed_instance_from_description(desc, "us-east-1")

    # Then the fields the manager needs are there
    assert (inst.instance_id, inst.state, inst.profile, inst.launch_id, inst.name) == (
        "i-0123456789abcdef0",
        "running",
        "cpu",
        "L1",
        "box",
    )
    assert inst.spot is True
    assert inst.public_ip == "54.1.2.3" and inst.private_dns is None
    assert inst.security_group_ids == ("sg-1",)
    assert inst.availability_zone == "us-east-1a"


# -- errors ------------------------------------------------------------------------------------


def _client_error(code: str, message: str, op: str = "RunInstances") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


def test_messages_are_scrubbed():
    # Given an AWS message with an ARN, an account id, an access key id and a local path
    text = (
        "User: arn:aws:iam::123456789012:user/alice is not authorized; account 123456789012; "
        "key AKIAABCDEFGHIJKLMNOP; file /home/alice/.local/share/jupyter/jupyter_ec2/id_ed25519. "
        "Encoded authorization failure message: AbCdEf0123456789"
    )

    # When it is scrubbed
    clean = aws.scrub_message(text)

    # Then none of these remains
    for secret in ("arn:", "123456789012", "AKIA", "/home/alice", "id_ed25519", "AbCdEf0123"):
        assert secret not in clean
    assert "not authorized" in clean


@given(st.text())
def test_scrubbed_messages_never_hold_an_account_id(text):
    clean = aws.scrub_message(text + " 123456789012 arn:aws:iam::1:role/x")
    assert "123456789012" not in clean
    assert "arn:" not in clean


@pytest.mark.parametrize(
    ("code", "message", "kind", "field"),
    [
        (
            "InvalidInstanceType",
            "The instance type 'zz.huge' does not exist",
            ValidationError,
            "instance_type",
        ),
        (
            "InvalidParameterValue",
            "Invalid value 'zz.huge' for InstanceType.",
            ValidationError,
            "instance_type",
        ),
        ("InvalidAMIID.NotFound", "The image id '[ami-1]' does not exist", ValidationError, "ami"),
        ("InvalidAMIID.Malformed", "Invalid id: 'ami-x'", ValidationError, "ami"),
        (
            "InvalidSubnetID.NotFound",
            "The subnet ID 'subnet-1' does not exist",
            ValidationError,
            "subnet_id",
        ),
        (
            "IncorrectInstanceState",
            "The instance is not in a state from which it can be started.",
            ConflictError,
            None,
        ),
        ("InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist", NotFoundError, None),
        (
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient capacity",
            CloudError,
            None,
        ),
    ],
)
def test_client_errors_become_domain_errors(code, message, kind, field):
    # When an AWS error is translated
    err = aws.translate_error(_client_error(code, message), action="launch the instance")

    # Then it has the right kind and field, and keeps AWS's code in the message
    assert type(err) is kind
    assert err.field == field
    assert code in err.message or kind is NotFoundError


def test_auth_error_carries_code_without_account():
    # Given an authorization failure naming the account
    error = _client_error(
        "UnauthorizedOperation",
        "You are not authorized to perform this operation. User: arn:aws:sts::123456789012:"
        "assumed-role/dev/alice is not authorized. Encoded authorization failure message: QkFE",
    )

    # When it is translated
    err = aws.translate_error(error, action="launch the instance")

    # Then it is a cloud error with the code and no account, ARN or blob
    assert isinstance(err, CloudError) and err.status == 502
    assert err.code == "UnauthorizedOperation"
    assert "UnauthorizedOperation" in err.message
    assert (
        "123456789012" not in err.message
        and "arn:" not in err.message
        and "QkFE" not in err.message
    )


def test_missing_credentials_say_what_to_do():
    err = aws.translate_error(NoCredentialsError(), action="list instances")
    assert isinstance(err, CloudError)
    assert err.message.startswith("AWS credentials are not configured:")
    assert "aws configure" in err.message


def test_unreachable_endpoint_is_a_cloud_error():
    err = aws.translate_error(
        EndpointConnectionError(endpoint_url="https://ec2.us-east-1.amazonaws.com/"),
        action="list instances",
        region="us-east-1",
    )
    assert isinstance(err, CloudError)
    assert err.code == "EndpointConnectionError"
    assert "us-east-1" in err.message


def test_unknown_aws_profile_names_the_field():
    err = aws.translate_error(ProfileNotFound(profile="nope"), action="connect")
    assert isinstance(err, ValidationError)
    assert err.field == "aws_profile"
