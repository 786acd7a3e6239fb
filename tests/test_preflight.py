"""Check my AWS setup: the preflight checks on the simulated cloud, the REST route, the CLI.

The checks run on real components: moto over HTTP on loopback (with the EC2 vCPU quotas and the
default VPC's internet gateway that :mod:`jupyter_ec2.testing.account` gives the simulated
account), botocore's own credential chain (an expired SSO token is a real cached token file
in a temporary AWS config, read by botocore's SSO provider) and the local OpenSSH client.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_ec2.aws import EC2Backend
from jupyter_ec2.aws_preflight import (
    ActionProbe,
    dry_run_verdict,
    simulation_source_arn,
    subnet_has_internet_route,
)
from jupyter_ec2.errors import CloudError, ValidationError
from jupyter_ec2.models import load_profiles
from jupyter_ec2.preflight import (
    CHECK_NAMES,
    Preflight,
    check_for_error,
    point_to_check,
    quota_code,
    quota_family,
)

FIXED_CIDR = "198.51.100.7/32"
#: Offered by EC2 in other regions but not in us-east-1 (moto's offerings data), x86_64, 2 vCPUs.
NOT_OFFERED_IN_US_EAST_1 = "x8aedz.large"
PROFILE_DEFAULTS = {
    "region": "us-east-1",
    "environment": {"kind": "pip", "packages": []},
    "idle_stop_minutes": 60,
}
#: A CPU profile and an on-demand GPU (G family) profile.
PROFILES = {
    "cpu": {"display_name": "CPU small", "instance_type": "t3.medium", "volume_gb": 30},
    "gpu": {"display_name": "GPU box", "instance_type": "g5.xlarge", "volume_gb": 100},
}


# -- helpers --------------------------------------------------------------------------------------


def make_preflight(cloud, profiles=None, **backend_traits) -> Preflight:
    """A Preflight on an EC2Backend pointed at the simulated cloud (as the extension builds it)."""
    backend = EC2Backend(
        endpoint_url=cloud.endpoint_url, ssh_cidrs=[FIXED_CIDR], max_attempts=2, **backend_traits
    )
    profile_set = load_profiles(profiles or PROFILES, "cpu", PROFILE_DEFAULTS)
    assert not profile_set.problems, profile_set.problems
    return Preflight(backend, lambda: list(profile_set.profiles.values()))


def statuses(report) -> dict[str, str]:
    """check name → ok / fail / skip."""
    return {c.name: c.status for c in report.checks}


def failing(report) -> list[str]:
    """The names of the checks that failed."""
    return [c.name for c in report.checks if c.status == "fail"]


def cloud_inventory(cloud) -> dict[str, list[str]]:
    """Everything a launch could create, as the simulated cloud lists it."""
    ec2 = cloud.client("ec2")
    return {
        "instances": sorted(
            i["InstanceId"]
            for r in ec2.describe_instances()["Reservations"]
            for i in r["Instances"]
        ),
        "security_groups": sorted(
            g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]
        ),
        "key_pairs": sorted(k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]),
        "volumes": sorted(v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]),
        "tags": sorted(f"{t['ResourceId']}:{t['Key']}" for t in ec2.describe_tags()["Tags"]),
        "spot_requests": sorted(
            s["SpotInstanceRequestId"]
            for s in ec2.describe_spot_instance_requests()["SpotInstanceRequests"]
        ),
    }


def delete_default_vpc(cloud) -> None:
    """Delete the default VPC as a user would (`aws ec2 delete-vpc` needs it emptied first)."""
    ec2 = cloud.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    vpc_id = vpc["VpcId"]
    for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    for igw in ec2.describe_internet_gateways(
        Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}]
    )["InternetGateways"]:
        ec2.detach_internet_gateway(InternetGatewayId=igw["InternetGatewayId"], VpcId=vpc_id)
        ec2.delete_internet_gateway(InternetGatewayId=igw["InternetGatewayId"])
    ec2.delete_vpc(VpcId=vpc_id)


def write_expired_sso_profile(home: Path, profile: str = "dev") -> Path:
    """An AWS config with an SSO profile whose cached token expired an hour ago (under ``home``)."""
    start_url = "https://example-start.awsapps.com/start"
    aws = home / ".aws"
    (aws / "sso" / "cache").mkdir(parents=True)
    config = aws / "config"
    config.write_text(
        f"[profile {profile}]\n"
        f"sso_start_url = {start_url}\n"
        "sso_region = us-east-1\n"
        "sso_account_id = 123456789012\n"
        "sso_role_name = JupyterUser\n"
        "region = us-east-1\n"
    )
    expired = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    token = {
        "startUrl": start_url,
        "region": "us-east-1",
        "accessToken": "expired-token",
        "expiresAt": expired.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    # botocore's legacy SSO token cache: ~/.aws/sso/cache/<sha1 of the start URL>.json
    name = hashlib.sha1(start_url.encode()).hexdigest()  # noqa: S324 - botocore's cache key
    (aws / "sso" / "cache" / f"{name}.json").write_text(json.dumps(token))
    return config


# -- pure parts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance_type", "family"),
    [
        ("t3.medium", "standard"),
        ("m7i.large", "standard"),
        ("c7gn.xlarge", "standard"),
        ("im4gn.large", "standard"),
        ("g5.xlarge", "g"),
        ("g4dn.xlarge", "g"),
        ("vt1.3xlarge", "g"),
        ("p4d.24xlarge", "p"),
        ("x2idn.16xlarge", "x"),
        ("inf2.xlarge", "inf"),
        ("trn1.2xlarge", "trn"),
        ("dl1.24xlarge", "dl"),
        ("hpc7g.16xlarge", "hpc"),
        ("u-6tb1.metal", "high-memory"),
        ("mac2.metal", None),
    ],
)
def test_quota_family_of_an_instance_type(instance_type, family):
    # Given an instance type / When its quota bucket is looked up / Then it is EC2's bucket
    assert quota_family(instance_type) == family


def test_quota_codes_on_demand_and_spot():
    # Given a G-family type / When on-demand and spot codes are asked / Then they are EC2's codes
    assert quota_code("g5.xlarge", spot=False)[0] == "L-DB2E81BA"
    assert quota_code("g5.xlarge", spot=True)[0] == "L-3819A6DF"
    assert quota_code("t3.medium", spot=False)[0] == "L-1216C47A"
    assert quota_code("p5.48xlarge", spot=False)[0] == "L-417A185B"
    # And a family with no spot market has no spot code
    assert quota_code("u-6tb1.metal", spot=True) is None


def test_dry_run_verdicts():
    # Given EC2's answers to dry runs
    from botocore.exceptions import ClientError

    def answer(code):
        return ClientError({"Error": {"Code": code, "Message": "x"}}, "RunInstances")

    # Then DryRunOperation is allowed, UnauthorizedOperation/AccessDenied denied, others unknown
    assert dry_run_verdict("ec2:RunInstances", answer("DryRunOperation")).verdict == "allowed"
    assert dry_run_verdict("ec2:RunInstances", answer("UnauthorizedOperation")).verdict == "denied"
    assert dry_run_verdict("ec2:RunInstances", answer("AccessDenied")).verdict == "denied"
    unknown = dry_run_verdict("ec2:StopInstances", answer("InvalidInstanceID.NotFound"))
    assert (unknown.verdict, unknown.code) == ("unknown", "InvalidInstanceID.NotFound")
    # And a read that simply succeeds is allowed
    assert dry_run_verdict("ec2:DescribeVpcs", None) == ActionProbe(
        "ec2:DescribeVpcs", "allowed", "call"
    )


def test_internet_route_uses_the_explicit_table_then_the_main_one():
    # Given a VPC whose main table routes to an IGW and a subnet with its own table routing to NAT
    main = {
        "Associations": [{"Main": True}],
        "Routes": [{"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1", "State": "active"}],
    }
    private = {
        "Associations": [{"SubnetId": "subnet-private"}],
        "Routes": [{"DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": "nat-1"}],
    }
    # Then only the subnet using the main table reaches the internet through a gateway
    assert subnet_has_internet_route([main, private], "subnet-public")
    assert not subnet_has_internet_route([main, private], "subnet-private")
    blackhole = {**main, "Routes": [{**main["Routes"][0], "State": "blackhole"}]}
    assert not subnet_has_internet_route([blackhole], "subnet-public")


def test_simulator_source_of_users_and_assumed_roles():
    # Given the ARNs STS reports / Then users pass as they are, assumed roles go by role name
    user = "arn:aws:iam::123456789012:user/alice"
    assert simulation_source_arn(user) == user
    sso = "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Dev_abc/alice@example.com"
    assert simulation_source_arn(sso) == "role-name:AWSReservedSSO_Dev_abc"
    assert simulation_source_arn("arn:aws:sts::123456789012:federated-user/bob") is None


@pytest.mark.parametrize(
    ("error", "check"),
    [
        (CloudError("x (UnauthorizedOperation)", code="UnauthorizedOperation"), "permissions"),
        (CloudError("x", code="NoCredentials"), "credentials"),
        (CloudError("x", code="VcpuLimitExceeded"), "quota"),
        (ValidationError("subnet_id", "us-east-1 has no default VPC; set …"), "network"),
        (ValidationError("ami", "No ubuntu-24.04 image"), "images"),
        (ValidationError("overrides.instance_type", "t9 is not offered in us-east-1"), "region"),
        (ValidationError("volume_gb", "too big"), None),
    ],
)
def test_a_launch_error_points_to_its_check(error, check):
    # Given an error a launch ended with / When it is explained / Then the right check is named
    assert check_for_error(error) == check
    before = error.message
    point_to_check(error)
    if check is None:
        assert error.message == before
    else:
        assert f"'{check}' check" in error.message and "jupyter ec2 doctor" in error.message


# -- against the simulated cloud ------------------------------------------------------------------


def test_complete_setup_passes_every_check_and_changes_nothing(jp_ec2_cloud):
    # Given a complete setup: credentials, a default VPC with its gateway, quotas, images, ssh
    preflight = make_preflight(jp_ec2_cloud)
    before = cloud_inventory(jp_ec2_cloud)
    # When the checks run
    report = preflight.report()
    # Then every named check is there, in order, and passes
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert report.ok, json.dumps(report.to_json(), indent=1)
    body = report.to_json()
    assert body["ok"] is True and body["blocked_profiles"] == {}
    for check in body["checks"]:
        assert set(check) >= {"name", "ok", "message", "fix"} and check["fix"] is None
    # And the permissions were really probed with DryRun, RunInstances among them
    permissions = report.check("permissions")
    assert "ec2:RunInstances: allowed (dry-run)" in permissions.details
    assert "ec2:CreateSecurityGroup: allowed (dry-run)" in permissions.details
    # And the quota check compared the profiles' vCPUs with the quotas
    assert "4 vCPUs" in report.check("quota").profiles["gpu"].message
    # And nothing was created: no instance, group, key pair, volume, tag or spot request
    assert cloud_inventory(jp_ec2_cloud) == before


def test_report_is_kept_briefly_and_refreshed_on_demand(jp_ec2_cloud):
    # Given a first report
    preflight = make_preflight(jp_ec2_cloud)
    first = preflight.report()
    # When asked again / Then the same report is served; with refresh a new one is made
    assert preflight.report() is first
    assert preflight.report(refresh=True) is not first
    # And an expired report is made again
    preflight.max_age = 0
    assert preflight.report() is not first


def test_no_credentials_fails_only_the_credentials_check(jp_ec2_cloud, monkeypatch):
    # Given no credentials anywhere (no variables, empty AWS files)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    # When the checks run
    report = make_preflight(jp_ec2_cloud).report()
    # Then credentials fails with a fix naming aws configure; the AWS checks are skipped
    assert failing(report) == ["credentials"]
    assert "aws configure" in report.check("credentials").fix
    assert [statuses(report)[n] for n in CHECK_NAMES[1:7]] == ["skip"] * 6
    assert report.check("ssh_client").ok and not report.ok


def test_expired_sso_token_names_aws_sso_login(jp_ec2_cloud, monkeypatch, tmp_path):
    # Given an SSO profile whose cached token has expired (botocore's real SSO provider reads it)
    config = write_expired_sso_profile(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    # When the checks run with that profile
    report = make_preflight(jp_ec2_cloud, aws_profile="dev").report()
    # Then only credentials fails, and its fix is `aws sso login --profile dev`
    assert failing(report) == ["credentials"]
    check = report.check("credentials")
    assert "expired" in check.message
    assert "aws sso login --profile dev" in check.fix


def test_gpu_quota_of_zero_fails_the_quota_check_for_that_profile(jp_ec2_cloud):
    # Given an account whose G and VT on-demand quota is 0 vCPUs (as on a new account)
    jp_ec2_cloud.set_service_quota("L-DB2E81BA", 0)
    # When the checks run
    report = make_preflight(jp_ec2_cloud).report()
    # Then only quota fails, naming the GPU profile, its 4 vCPUs and the quota to raise
    assert failing(report) == ["quota"]
    check = report.check("quota")
    assert "'gpu'" in check.message and "4 vCPUs" in check.message and "is 0" in check.message
    assert "quota increase" in check.fix and "L-DB2E81BA" in check.fix
    assert check.profiles["cpu"].ok and not check.profiles["gpu"].ok
    # And the GPU profile is the one launches are blocked for, with the quota's reason
    assert report.to_json()["blocked_profiles"] == {
        "gpu": {"check": "quota", "message": check.profiles["gpu"].message}
    }


def test_spot_profile_is_checked_against_the_spot_quota(jp_ec2_cloud):
    # Given a spot GPU profile, and a G spot quota of 0 while on-demand stays
    jp_ec2_cloud.set_service_quota("L-3819A6DF", 0)
    profiles = {**PROFILES, "gpu": {**PROFILES["gpu"], "spot": True}}
    # When the checks run / Then the spot quota is the one that fails
    report = make_preflight(jp_ec2_cloud, profiles).report()
    assert failing(report) == ["quota"]
    assert "L-3819A6DF" in report.check("quota").fix


def test_no_default_vpc_fails_the_network_check(jp_ec2_cloud):
    # Given a region whose default VPC was deleted
    delete_default_vpc(jp_ec2_cloud)
    before = cloud_inventory(jp_ec2_cloud)
    # When the checks run
    report = make_preflight(jp_ec2_cloud).report()
    # Then only network fails, and the fix says how to get a default VPC back (or a subnet)
    assert failing(report) == ["network"]
    check = report.check("network")
    assert "no default VPC" in check.message
    assert "aws ec2 create-default-vpc" in check.fix and "subnet_id" in check.fix
    assert cloud_inventory(jp_ec2_cloud) == before


def test_subnet_without_internet_route_fails_the_network_check(jp_ec2_cloud):
    # Given a configured subnet in a new VPC with no internet gateway
    ec2 = jp_ec2_cloud.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    # When the checks run for it
    report = make_preflight(jp_ec2_cloud, subnet_id=subnet).report()
    # Then network fails: no route to an internet gateway
    assert failing(report) == ["network"]
    assert "internet gateway" in report.check("network").message


def test_instance_type_not_offered_fails_the_region_check(jp_ec2_cloud):
    # Given a profile whose instance type us-east-1 does not offer
    profiles = {
        **PROFILES,
        "odd": {"display_name": "Odd", "instance_type": NOT_OFFERED_IN_US_EAST_1},
    }
    # When the checks run
    report = make_preflight(jp_ec2_cloud, profiles).report()
    # Then only region fails, naming the type and the profile, and that profile is blocked
    assert failing(report) == ["region"]
    check = report.check("region")
    assert NOT_OFFERED_IN_US_EAST_1 in check.message and "'odd'" in check.fix
    assert report.to_json()["blocked_profiles"]["odd"]["check"] == "region"


def test_unknown_image_fails_the_images_check(jp_ec2_cloud):
    # Given a profile naming an image id that does not exist
    profiles = {
        **PROFILES,
        "custom": {
            "display_name": "Custom",
            "instance_type": "t3.small",
            "ami": "ami-0123456789abcdef0",
        },
    }
    # When the checks run / Then only images fails, and that profile is blocked
    report = make_preflight(jp_ec2_cloud, profiles).report()
    assert failing(report) == ["images"]
    assert "ami-0123456789abcdef0" in report.check("images").message
    assert report.to_json()["blocked_profiles"]["custom"]["check"] == "images"


def test_no_ssh_on_path_fails_the_ssh_client_check(jp_ec2_cloud, monkeypatch, tmp_path):
    # Given a PATH on which there is no OpenSSH client
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    # When the checks run
    report = make_preflight(jp_ec2_cloud).report()
    # Then only ssh_client fails, with a fix naming how to install it (or the paramiko engine)
    assert failing(report) == ["ssh_client"]
    fix = report.check("ssh_client").fix
    assert "openssh-client" in fix and "engine = 'paramiko'" in fix


def test_permissions_without_run_instances_fail_the_permissions_check(jp_ec2_cloud, monkeypatch):
    """IAM enforcement in the simulated cloud comes from branch i11a (``iam_user``)."""
    if not hasattr(jp_ec2_cloud, "iam_user"):
        pytest.skip("pending: the simulated cloud's IAM enforcement (jp_ec2_cloud.iam_user, i11a)")
    # Given an IAM user holding the documented policy minus ec2:RunInstances
    policy = json.loads((Path(__file__).parent.parent / "docs" / "iam-policy.json").read_text())
    statements = []
    for statement in policy["Statement"]:
        actions = statement.get("Action")
        actions = [actions] if isinstance(actions, str) else list(actions or [])
        kept = [a for a in actions if a != "ec2:RunInstances"]
        if kept:
            statements.append({**statement, "Action": kept})
    policy["Statement"] = statements
    for name, value in jp_ec2_cloud.iam_user(policy).items():
        monkeypatch.setenv(name, value)
    before = cloud_inventory(jp_ec2_cloud)
    # When the checks run as that user
    report = make_preflight(jp_ec2_cloud).report()
    # Then only permissions fails, naming ec2:RunInstances and the policy to add it to
    assert failing(report) == ["permissions"], json.dumps(report.to_json(), indent=1)
    check = report.check("permissions")
    assert "ec2:RunInstances" in check.message and "ec2:RunInstances" in check.fix
    assert "docs/iam-policy.json" in check.fix
    assert cloud_inventory(jp_ec2_cloud) == before


# -- the REST route -------------------------------------------------------------------------------


@pytest.fixture
def jp_server_config(jp_ec2_config, jp_ec2_cloud) -> dict:
    """The test server on the simulated cloud (a fixed SSH CIDR: no caller-IP lookup)."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ec2": True},
            "allow_unauthenticated_access": False,
        },
        "EC2Launcher": jp_ec2_config,
        "EC2Backend": {"endpoint_url": jp_ec2_cloud.endpoint_url, "ssh_cidrs": [FIXED_CIDR]},
    }


async def test_get_preflight_answers_the_checks_in_order(jp_fetch, jp_serverapp, jp_ec2_cloud):
    # Given the server on the simulated cloud with a G spot quota of 0 (the gpu profile is spot)
    jp_ec2_cloud.set_service_quota("L-3819A6DF", 0)
    # When GET preflight is asked
    response = await jp_fetch("jupyter-ec2", "api", "preflight")
    body = json.loads(response.body)
    # Then the checks come in order, quota failing with the gpu profile blocked
    assert [c["name"] for c in body["checks"]] == list(CHECK_NAMES)
    assert body["ok"] is False
    assert [c["name"] for c in body["checks"] if not c["ok"]] == ["quota"]
    assert body["blocked_profiles"]["gpu"]["check"] == "quota"
    # And a second GET is served from the cache; refresh=1 runs the checks again
    manager = jp_serverapp.web_app.settings["jupyter_ec2_manager"]
    kept = manager.preflight_checks.cached()
    await jp_fetch("jupyter-ec2", "api", "preflight")
    assert manager.preflight_checks.cached() is kept
    await jp_fetch("jupyter-ec2", "api", "preflight", params={"refresh": "1"})
    assert manager.preflight_checks.cached() is not kept


async def test_get_preflight_refuses_a_bad_refresh_value(jp_fetch):
    # Given a refresh value that is not a boolean / When asked / Then 400 naming the field
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("jupyter-ec2", "api", "preflight", params={"refresh": "maybe"})
    assert caught.value.code == 400
    assert json.loads(caught.value.response.body)["field"] == "refresh"


async def test_a_launch_refused_for_a_checked_reason_points_to_the_check(jp_fetch, jp_ec2_cloud):
    # Given a launch asking for an instance type the region does not offer
    body = {"profile": "cpu", "overrides": {"instance_type": NOT_OFFERED_IN_US_EAST_1}}
    # When it is posted
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("jupyter-ec2", "api", "instances", method="POST", body=json.dumps(body))
    # Then it is refused naming the field, pointing to the region check, and nothing launched
    answer = json.loads(caught.value.response.body)
    assert caught.value.code == 400 and answer["field"] == "overrides.instance_type"
    assert "'region' check" in answer["message"] and "Check setup" in answer["message"]
    assert cloud_inventory(jp_ec2_cloud)["instances"] == []


# -- the command line -----------------------------------------------------------------------------


def _doctor(tmp_path: Path, cloud, path: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``jupyter ec2 doctor`` as a user would, with a Jupyter config on the simulated cloud."""
    config_dir = tmp_path / "jupyter-config"
    config_dir.mkdir(exist_ok=True)
    config = {
        "EC2Launcher": {"profiles": PROFILES, "default_profile": "cpu"},
        "EC2Backend": {"endpoint_url": cloud.endpoint_url, "ssh_cidrs": [FIXED_CIDR]},
    }
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(config))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir), "PATH": path}
    jupyter = str(Path(sys.executable).parent / "jupyter")
    return subprocess.run(
        [jupyter, "ec2", "doctor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_jupyter_ec2_doctor_exits_zero_when_all_is_well_and_non_zero_on_a_failure(
    jp_ec2_cloud, tmp_path
):
    # Given the venv's bin directory (where `jupyter` finds `jupyter-ec2`) and /usr/bin (ssh)
    venv_bin = str(Path(sys.executable).parent)
    # When `jupyter ec2 doctor` runs on a complete setup
    done = _doctor(tmp_path, jp_ec2_cloud, f"{venv_bin}:/usr/bin:/bin")
    # Then it prints every check as ok and exits 0
    assert done.returncode == 0, done.stdout + done.stderr
    for name in CHECK_NAMES:
        assert f"ok    {name}" in done.stdout
    # When it runs again with no ssh on PATH and asked for JSON
    done = _doctor(tmp_path, jp_ec2_cloud, venv_bin, "--json")
    # Then it exits 1 and the JSON says ssh_client failed, with its fix
    assert done.returncode == 1, done.stdout + done.stderr
    body = json.loads(done.stdout)
    failed = [c for c in body["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["ssh_client"] and "openssh" in failed[0]["fix"].lower()


def test_simulator_answers_what_a_dry_run_could_not_tell(jp_ec2_cloud):
    """moto has no IAM policy simulator, so this test gives the probe one (a fake, in-process)
    that denies StopInstances, and makes EC2's dry run of StopInstances inconclusive as real
    AWS may on a placeholder id; everything else is the simulated cloud's real answer."""
    from jupyter_ec2.aws_preflight import AccountProbe

    class SimulatingProbe(AccountProbe):
        asked: list[str] = []

        def identity(self, region):
            real = super().identity(region)
            return type(real)(account=real.account, arn="arn:aws:iam::123456789012:user/alice")

        def dry_runs(self, ctx):
            answers = super().dry_runs(ctx)
            return [
                ActionProbe(a.action, "unknown", "dry-run", code="InvalidInstanceID.NotFound")
                if a.action == "ec2:StopInstances"
                else a
                for a in answers
            ]

        def simulate(self, region, principal_arn, actions):
            self.asked = list(actions)
            return {a: "denied" if a == "ec2:StopInstances" else "allowed" for a in actions}, None

    # Given a preflight whose simulator denies ec2:StopInstances
    preflight = make_preflight(jp_ec2_cloud)
    preflight.probe = SimulatingProbe(preflight.backend)
    # When the checks run
    report = preflight.report()
    # Then the simulator was asked only what the dry runs could not tell, and its denial fails
    assert "ec2:StopInstances" in preflight.probe.asked
    assert "ec2:RunInstances" not in preflight.probe.asked
    assert failing(report) == ["permissions"]
    check = report.check("permissions")
    assert "ec2:StopInstances" in check.fix
    assert "ec2:StopInstances: denied (simulator)" in check.details
