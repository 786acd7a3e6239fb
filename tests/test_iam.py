"""The least-privilege IAM policy of docs/iam-policy.json, proven by enforcement.

The simulated cloud enforces IAM for a test user holding exactly the policy (moto checks the
signature and the actions; the strict front evaluates resources and conditions, tag-on-create
and spot's service-linked role, see :mod:`jupyter_ec2.testing.iam`). The whole EC2 lifecycle
passes with the policy; without any one of its statements a named step fails, and the error
names the missing IAM action in plain words.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from jupyter_ec2.aws import EC2Backend, translate_client_error
from jupyter_ec2.errors import PermissionDeniedError
from jupyter_ec2.models import Profile
from jupyter_ec2.store import StateStore
from jupyter_ec2.testing.iam import (
    action_level_view,
    every_action,
    is_allowed,
    without_statements,
)

POLICY_PATH = Path(__file__).resolve().parents[1] / "docs" / "iam-policy.json"
POLICY = json.loads(POLICY_PATH.read_text())
OWNER = "iamtestowner01"


def _profile(**fields) -> Profile:
    base = {
        "name": "cpu",
        "display_name": "CPU",
        "region": "us-east-1",
        "instance_type": "t3.medium",
    }
    return Profile(**{**base, **fields})


@pytest.fixture
def as_user(jp_ec2_cloud, monkeypatch, tmp_path):
    """Build an EC2Backend whose credentials are a fresh IAM user holding a given policy."""

    def build(policy: dict) -> EC2Backend:
        for name, value in jp_ec2_cloud.iam_user(policy).items():
            monkeypatch.setenv(name, value)
        return EC2Backend(
            endpoint_url=jp_ec2_cloud.endpoint_url,
            ssh_cidrs=["52.95.110.1/32"],
            owner_id=OWNER,
            store=StateStore(tmp_path / "state"),
            max_attempts=1,
        )

    return build


def run_lifecycle(backend: EC2Backend) -> list[str]:
    """Launch, list, stop, image, start, terminate an instance, then a spot one.

    The image steps save the stopped instance, list the saved images and delete the image with
    its snapshots (issue 15).

    Returns the steps done; the first refusal propagates, with the step in ``err.step``.
    """
    done: list[str] = []

    def step(name, call, *args, **kwargs):
        try:
            result = call(*args, **kwargs)
        except Exception as err:
            err.step = name  # type: ignore[attr-defined]
            raise
        done.append(name)
        return result

    launched = step("launch", backend.launch, _profile())
    step("list", backend.list_instances)
    step("stop", backend.stop, [launched.instance_id])
    step("resize", backend.modify_instance_type, launched.instance_id, "t3.large")
    image = step("image", backend.create_image, launched.instance_id, label="iam test")
    step("list images", backend.list_images)
    step("delete image", backend.delete_image, image.image_id)
    step("start", backend.start, [launched.instance_id])
    step("terminate", backend.terminate, [launched.instance_id])
    spot = step("launch spot", backend.launch, _profile(spot=True))
    step("terminate spot", backend.terminate, [spot.instance_id])
    return done


def test_the_whole_lifecycle_passes_with_exactly_the_policy(as_user, jp_ec2_cloud):
    # Given a user holding exactly docs/iam-policy.json
    backend = as_user(POLICY)
    # When the whole lifecycle runs / Then every step passes and nothing was refused
    done = run_lifecycle(backend)
    assert done[-1] == "terminate spot"
    assert jp_ec2_cloud.iam_denials == []
    # And the instances really are terminated in the cloud
    states = {
        i["State"]["Name"]
        for r in jp_ec2_cloud.client().describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert states == {"terminated"}


def test_enforcement_is_real_a_user_without_policy_launches_nothing(as_user, jp_ec2_cloud):
    # Given a user with an empty policy
    backend = as_user({"Version": "2012-10-17", "Statement": []})
    # When it launches / Then AWS refuses in EC2's words and nothing exists
    with pytest.raises(PermissionDeniedError) as caught:
        backend.launch(_profile())
    assert caught.value.code == "UnauthorizedOperation"
    assert caught.value.status == 502
    assert jp_ec2_cloud.client().describe_instances()["Reservations"] == []


def test_dummy_credentials_are_refused_while_enforced(jp_ec2_cloud):
    # Given enforcement on (a user exists)
    jp_ec2_cloud.iam_user(POLICY)
    # When a client signs with keys IAM does not know / Then it is refused
    with pytest.raises(ClientError) as caught:
        jp_ec2_cloud.client(strict=True).describe_vpcs()
    assert caught.value.response["Error"]["Code"] in ("AuthFailure", "InvalidClientTokenId")


def test_the_harness_keeps_its_view_while_enforced(jp_ec2_cloud):
    # Given enforcement on / When the harness's own client asks / Then it is answered
    jp_ec2_cloud.iam_user({"Version": "2012-10-17", "Statement": []})
    assert jp_ec2_cloud.client().describe_vpcs()["Vpcs"]


# What fails without each statement: (the step, the IAM action the message must name).
# None: nothing fails (prices are optional: a price AWS does not give is shown as unknown).
WITHOUT = {
    "Read": ("launch", "ec2:DescribeInstanceTypeOfferings"),
    "Prices": None,
    "ImportManagedKeyPair": ("launch", "ec2:ImportKeyPair"),
    "CreateManagedSecurityGroup": ("launch", "ec2:CreateSecurityGroup"),
    "CreateSecurityGroupInVpc": ("launch", "ec2:CreateSecurityGroup"),
    "EditManagedSecurityGroup": ("launch", "ec2:AuthorizeSecurityGroupIngress"),
    "LaunchManagedInstance": ("launch", "ec2:RunInstances"),
    "LaunchWithResources": ("launch", "ec2:RunInstances"),
    "TagOnCreate": ("launch", "ec2:CreateTags"),
    "ManageManagedInstance": ("stop", "ec2:StopInstances"),
    # moto makes no spot request for a spot RunInstances, so the cancel is never called here:
    # that case is proven on the policy itself (test_spot_requests_need_the_cancel_statement).
    "CancelSpotRequest": None,
    "SpotServiceLinkedRole": ("launch spot", "iam:CreateServiceLinkedRole"),
    # Read-only, used by "Check my AWS setup" only: without it those checks say "not checked".
    "Preflight": None,
    # Forgotten stopped instances only (not in this lifecycle): proven in test_forgotten.py
    # (test_snapshots_need_exactly_their_statements).
    "SnapshotManagedVolume": None,
    "CreateManagedSnapshot": None,
    "ListSnapshots": None,
    # A type change (resize) and a notebook instance joining its Dask cluster's group.
    "ModifyManagedInstance": ("resize", "ec2:ModifyInstanceAttribute"),
    "Images": ("image", "ec2:CreateImage"),
    "ImagesTagOnCreate": ("image", "ec2:CreateTags"),
    "ImagesDeleteManaged": ("delete image", "ec2:DeregisterImage"),
    # Used by Dask workers only: proven in test_workers.py (test_workers_need_the_workers_...).
    "Workers": None,
}


def test_every_statement_has_a_case():
    # Given the policy / Then each statement has a Sid and a case in WITHOUT
    assert [s["Sid"] for s in POLICY["Statement"]] == list(WITHOUT)


@pytest.mark.parametrize("sid", list(WITHOUT))
def test_without_one_statement_a_named_step_fails_naming_the_action(as_user, jp_ec2_cloud, sid):
    # Given a user holding the policy less one statement
    backend = as_user(without_statements(POLICY, [sid]))
    expected = WITHOUT[sid]
    if expected is None:
        # When the lifecycle runs / Then it passes (what the statement allows is optional)
        assert run_lifecycle(backend)[-1] == "terminate spot"
        return
    step, action = expected
    # When the lifecycle runs / Then the named step fails with a 502 naming the action
    with pytest.raises(PermissionDeniedError) as caught:
        run_lifecycle(backend)
    err = caught.value
    assert err.step == step  # type: ignore[attr-defined]
    assert err.status == 502
    assert action in err.message
    assert action in err.actions
    # And in plain words: no traceback, no encoded blob, no ARN
    assert "Traceback" not in err.message and "Encoded" not in err.message
    assert "arn:" not in err.message
    assert len(err.message) < 400


def test_spot_requests_need_the_cancel_statement():
    # Given the policy with and without CancelSpotRequest
    arn = "arn:aws:ec2:us-east-1:123456789012:spot-instances-request/sir-12345678"
    without = without_statements(POLICY, ["CancelSpotRequest"])
    # Then only the whole policy allows cancelling the request of a spot instance
    assert is_allowed(POLICY, "ec2:CancelSpotInstanceRequests", arn, {})
    assert not is_allowed(without, "ec2:CancelSpotInstanceRequests", arn, {})


def test_every_call_of_the_aws_layer_is_in_the_policy():
    # Given every boto3 operation the AWS layer and the price catalog call
    root = Path(__file__).resolve().parents[1] / "jupyter_ec2"
    source = (root / "aws.py").read_text() + (root / "pricing.py").read_text()
    calls = set(re.findall(r"\b(?:ec2|client)\.([a-z][a-z0-9_]+)\(", source))
    calls |= set(re.findall(r'get_paginator\("([a-z_]+)"\)', source))
    session = boto3.session.Session(region_name="us-east-1")
    actions = set()
    for service, prefix in (("ec2", "ec2"), ("pricing", "pricing")):
        model = session._session.get_service_model(service)
        by_snake = {_snake(name): name for name in model.operation_names}
        actions |= {f"{prefix}:{by_snake[c]}".lower() for c in calls if c in by_snake}
    # Then each is allowed by some statement of the policy
    assert actions, "no AWS calls found: the scan is broken"
    assert actions - every_action(POLICY) == set()


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def test_mutating_statements_are_scoped_by_the_managed_tag():
    # Given the statements that change or end an existing resource
    for statement in POLICY["Statement"]:
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        if any(re.match(r"ec2:(Stop|Start|Terminate|Authorize|Revoke|Modify)", a) for a in actions):
            # Then each holds only if the resource carries the managed tag
            condition = statement["Condition"]["StringEquals"]
            assert condition == {"aws:ResourceTag/jupyter-ec2:managed": "true"}, statement["Sid"]
    # And an instance without the tag may not be stopped, one with it may
    arn = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"
    assert not is_allowed(POLICY, "ec2:StopInstances", arn, {})
    tagged = {"aws:ResourceTag/jupyter-ec2:managed": "true"}
    assert is_allowed(POLICY, "ec2:StopInstances", arn, tagged)


def test_moto_sees_the_same_actions_unconditioned():
    # Given the policy / When moto's view is built / Then it names the same actions on *
    view = action_level_view(POLICY)
    assert every_action(view) == every_action(POLICY)
    assert all(s["Resource"] == "*" and "Condition" not in s for s in view["Statement"])


@pytest.mark.parametrize(
    ("operation", "code", "message", "first"),
    [
        (
            "StopInstances",
            "UnauthorizedOperation",
            "You are not authorized to perform this "
            "operation. Encoded authorization failure message: QUJD",
            "ec2:StopInstances",
        ),
        (
            "RunInstances",
            "UnauthorizedOperation",
            "You are not authorized to perform this "
            "operation. User: arn:aws:iam::123456789012:user/x is not authorized to perform: "
            "ec2:CreateTags on resource: arn:aws:ec2:us-east-1:123456789012:volume/*",
            "ec2:CreateTags",
        ),
        (
            "RunInstances",
            "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
            "The provided "
            "credentials do not have permission to create the service-linked role for EC2 Spot "
            "Instances.",
            "iam:CreateServiceLinkedRole",
        ),
    ],
)
def test_permission_errors_name_the_action(operation, code, message, first):
    # Given AWS's refusal of one call
    err = ClientError({"Error": {"Code": code, "Message": message}}, operation)
    # When it is translated
    result = translate_client_error(err, action="launch the instance")
    # Then the action is named first, in plain words, with no ARN or blob
    assert isinstance(result, PermissionDeniedError)
    assert result.actions[0] == first
    assert f"does not allow {first}" in result.message
    assert "arn:" not in result.message and "QUJD" not in result.message


# -- end to end, through the REST API -------------------------------------------------------------


@pytest.fixture
def jp_ec2_iam_policy() -> dict:
    """The policy the REST tests' IAM user holds (override per test)."""
    return POLICY


@pytest.fixture
def jp_ec2_iam_env(jp_ec2_cloud, monkeypatch, jp_ec2_iam_policy) -> dict:
    """The extension's credentials: a fresh IAM user holding ``jp_ec2_iam_policy``."""
    env = jp_ec2_cloud.iam_user(jp_ec2_iam_policy)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def jp_server_config(jp_ec2_iam_env, jp_ec2_cloud, jp_ec2_hosts, tmp_path, jp_ec2_profiles):
    """The extension on the simulated cloud, as the IAM user, with fast polling."""
    import secrets

    from jupyter_ec2.testing.demo import simulated_config

    config = simulated_config(
        jp_ec2_cloud,
        jp_ec2_hosts,
        tmp_path / "state",
        notebook_user=f"jec2i{secrets.token_hex(3)}",
        idle_stop_command=f"touch {tmp_path / 'idle-stop-ran'}",
        profiles=jp_ec2_profiles,
    )
    config["ServerApp"]["allow_unauthenticated_access"] = False
    config["LaunchManager"] = {"poll_fast": 0.2, "poll_slow": 1.0}
    config["Provisioner"]["wheel_dir"] = str(tmp_path / "empty-wheels")
    (tmp_path / "empty-wheels").mkdir()
    return config


@pytest.fixture
def _remove_notebook_user(jp_server_config):
    yield
    from jupyter_ec2.testing.demo import remove_user

    remove_user(jp_server_config["Provisioner"]["notebook_user"])


async def _api(jp_fetch, *parts, method="GET", body=None):
    response = await jp_fetch(
        "jupyter-ec2",
        "api",
        *parts,
        method=method,
        body=None if body is None else json.dumps(body),
        allow_nonstandard_methods=True,
    )
    return response.code, json.loads(response.body)


async def _until(jp_fetch, instance_id, phases, timeout=120):
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        _, inst = await _api(jp_fetch, "instances", instance_id)
        if inst["phase"] in phases:
            return inst
        if inst["phase"] == "failed":
            pytest.fail(f"failed: {inst['error']}")
        assert time.monotonic() < deadline, f"stuck in {inst['phase']}: {inst['message']}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
@pytest.mark.usefixtures("_remove_notebook_user")
async def test_rest_lifecycle_as_a_user_holding_exactly_the_policy(jp_fetch, jp_ec2_cloud):
    # Given the extension running as a user that holds exactly docs/iam-policy.json
    # When an instance is launched, stopped, started and terminated through the REST API
    code, inst = await _api(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    assert code == 202
    instance_id = inst["id"]
    await _until(jp_fetch, instance_id, {"ready"})
    await _api(jp_fetch, "instances", instance_id, "stop", method="POST", body={})
    await _until(jp_fetch, instance_id, {"stopped"})
    await _api(jp_fetch, "instances", instance_id, "start", method="POST", body={})
    await _until(jp_fetch, instance_id, {"ready"})
    await _api(jp_fetch, "instances", instance_id, method="DELETE")
    await _until(jp_fetch, instance_id, {"terminated"})
    # Then every step passed under enforcement, with nothing refused
    assert jp_ec2_cloud.iam_denials == []


@pytest.mark.slow
@pytest.mark.usefixtures("_remove_notebook_user")
@pytest.mark.parametrize(
    "jp_ec2_iam_policy", [without_statements(POLICY, ["LaunchManagedInstance"])]
)
async def test_rest_launch_without_run_instances_names_the_action(jp_fetch, jp_ec2_cloud):
    # Given a user whose policy lacks the statement that lets it launch instances
    from tornado.httpclient import HTTPClientError

    # When a launch is asked through the REST API
    with pytest.raises(HTTPClientError) as caught:
        await _api(jp_fetch, "instances", method="POST", body={"profile": "cpu"})
    # Then it is a 502 naming ec2:RunInstances in plain words, and nothing runs
    assert caught.value.code == 502
    message = json.loads(caught.value.response.body)["message"]
    assert "does not allow ec2:RunInstances" in message
    assert "Encoded" not in message and "arn:" not in message
    assert jp_ec2_cloud.client().describe_instances()["Reservations"] == []
