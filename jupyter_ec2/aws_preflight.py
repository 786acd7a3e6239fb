"""The AWS side of "Check my AWS setup": read-only and dry-run probes of an account.

:class:`AccountProbe` asks AWS the questions :mod:`jupyter_ec2.preflight` turns into checks —
where the credentials come from and whether they still work, who they belong to, whether a
region is enabled and offers an instance type, what an instance type needs, what a vCPU quota
allows, whether a network reaches the internet, whether an image resolves, and whether each
API action the lifecycle needs is allowed. It uses the session and clients of an
:class:`~jupyter_ec2.aws.EC2Backend` (same profile, region, endpoint and retries) and never
builds its own.

Nothing here changes the account. Permissions are probed with ``DryRun=True``, which EC2
answers ``DryRunOperation`` when the caller is allowed and ``UnauthorizedOperation`` when not,
without doing anything; where an action has no dry run, or the dry run cannot tell (a
placeholder instance id that does not exist), the IAM policy simulator
(``iam:SimulatePrincipalPolicy``) is asked instead, if the caller may use it. Every method
blocks; the manager runs the checks in a worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .aws import (
    EC2Backend,
    ImageInfo,
    build_ssh_permissions,
    build_tag_specifications,
    owner_tags,
    scrub_message,
    translate_error,
)
from .errors import EC2LauncherError

#: A syntactically valid instance id that no account has: dry runs of actions on an instance.
PLACEHOLDER_INSTANCE_ID = "i-00000000000000000"
#: The same for a spot request and a security group.
PLACEHOLDER_SPOT_REQUEST_ID = "sir-00000000"
PLACEHOLDER_GROUP_ID = "sg-00000000000000000"
#: A documentation address (RFC 5737): a dry-run rule names it, so no real address is involved.
PLACEHOLDER_CIDR = "203.0.113.7/32"
PROBE_NAME = "jupyter-ec2-preflight"

#: Error codes meaning "the caller may not do this".
DENIED_CODES = frozenset(
    {
        "UnauthorizedOperation",
        "AccessDenied",
        "AccessDeniedException",
        "Client.UnauthorizedOperation",
    }
)
#: Error codes meaning "these credentials do not work at all".
CREDENTIAL_CODES = frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
    }
)


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CredentialFacts:
    """Where the credentials come from, or why there are none (``problem``)."""

    found: bool
    method: str | None = None
    profile: str | None = None
    expires_at: str | None = None
    #: None, or one of "none", "sso_expired", "sso", "profile_missing", "load_failed".
    problem: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class IdentityFacts:
    """The answer of ``sts:GetCallerIdentity``, or the error code that came instead."""

    account: str | None = None
    arn: str | None = None
    error_code: str | None = None
    error: str = ""


@dataclass(frozen=True)
class TypeFacts:
    """What an instance type is: its vCPUs and architectures (None: EC2 does not know it)."""

    instance_type: str
    vcpus: int | None
    architectures: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkFacts:
    """The network a launch would use, and whether it reaches the internet."""

    vpc_id: str | None
    subnet_id: str | None
    internet_route: bool
    #: None, or one of "no_default_vpc", "subnet_missing", "no_subnet", "no_route", "error".
    problem: str | None = None
    detail: str = ""
    subnet_public_ip: bool | None = None


@dataclass(frozen=True)
class ActionProbe:
    """How one IAM action was probed and what the answer was."""

    action: str
    #: "allowed", "denied" or "unknown".
    verdict: str
    how: str  # "dry-run", "call", "simulator", "none"
    code: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class QuotaFacts:
    """A Service Quotas value (None when it could not be read, with the reason)."""

    code: str
    value: float | None
    error_code: str | None = None
    error: str = ""


@dataclass
class DryRunContext:
    """What the dry runs of one region refer to (found once, shared by every probe)."""

    region: str
    vpc_id: str | None = None
    subnet_id: str | None = None
    group_id: str = PLACEHOLDER_GROUP_ID
    image: ImageInfo | None = None
    instance_type: str = "t3.micro"
    public_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def error_code(err: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` ('' for anything else)."""
    info = (getattr(err, "response", None) or {}).get("Error") or {}
    return str(info.get("Code") or "")


def error_text(err: BaseException) -> str:
    """The AWS error message, scrubbed of ARNs, account ids and paths."""
    info = (getattr(err, "response", None) or {}).get("Error") or {}
    return scrub_message(info.get("Message") or str(err) or type(err).__name__, 200)


# -- dry-run parameters (pure) --------------------------------------------------------------------


def dry_run_requests(ctx: DryRunContext) -> list[tuple[str, str, dict[str, Any]]]:
    """(IAM action, client method, parameters) of every dry run, in the lifecycle's order.

    Each request is the one the lifecycle would make, as far as a dry run allows: a launch of
    the first profile's type and image with the same tags, a group in the same VPC, a rule for
    tcp/22, a key import. Actions on an instance name a placeholder id.
    """
    tags = owner_tags("preflight0")
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("ec2:DescribeInstances", "describe_instances", {"MaxResults": 5}),
        ("ec2:DescribeInstanceTypes", "describe_instance_types", {"MaxResults": 5}),
        (
            "ec2:DescribeInstanceTypeOfferings",
            "describe_instance_type_offerings",
            {"MaxResults": 5},
        ),
        ("ec2:DescribeImages", "describe_images", {"Owners": ["self"]}),
        ("ec2:DescribeVpcs", "describe_vpcs", {}),
        ("ec2:DescribeSubnets", "describe_subnets", {}),
        ("ec2:DescribeSecurityGroups", "describe_security_groups", {}),
        ("ec2:DescribeKeyPairs", "describe_key_pairs", {}),
    ]
    if ctx.public_key:
        requests.append(
            (
                "ec2:ImportKeyPair",
                "import_key_pair",
                {
                    "KeyName": PROBE_NAME,
                    "PublicKeyMaterial": ctx.public_key.encode(),
                    "TagSpecifications": build_tag_specifications(tags, ("key-pair",)),
                },
            )
        )
    group: dict[str, Any] = {
        "GroupName": PROBE_NAME,
        "Description": "jupyter-ec2 preflight",
        "TagSpecifications": build_tag_specifications(tags, ("security-group",)),
    }
    if ctx.vpc_id:
        group["VpcId"] = ctx.vpc_id
    requests.append(("ec2:CreateSecurityGroup", "create_security_group", group))
    rule = build_ssh_permissions({PLACEHOLDER_CIDR: "jupyter-ec2 preflight"})
    requests += [
        (
            "ec2:AuthorizeSecurityGroupIngress",
            "authorize_security_group_ingress",
            {"GroupId": ctx.group_id, "IpPermissions": rule},
        ),
        (
            "ec2:RevokeSecurityGroupIngress",
            "revoke_security_group_ingress",
            {"GroupId": ctx.group_id, "IpPermissions": rule},
        ),
    ]
    if ctx.image is not None:
        launch: dict[str, Any] = {
            "ImageId": ctx.image.image_id,
            "InstanceType": ctx.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "TagSpecifications": build_tag_specifications(tags),
        }
        if ctx.subnet_id:
            launch["SubnetId"] = ctx.subnet_id
        requests.append(("ec2:RunInstances", "run_instances", launch))
    requests += [
        (
            "ec2:DescribeInstanceAttribute",
            "describe_instance_attribute",
            {"InstanceId": PLACEHOLDER_INSTANCE_ID, "Attribute": "userData"},
        ),
        ("ec2:StartInstances", "start_instances", {"InstanceIds": [PLACEHOLDER_INSTANCE_ID]}),
        ("ec2:StopInstances", "stop_instances", {"InstanceIds": [PLACEHOLDER_INSTANCE_ID]}),
        (
            "ec2:TerminateInstances",
            "terminate_instances",
            {"InstanceIds": [PLACEHOLDER_INSTANCE_ID]},
        ),
        ("ec2:DescribeSpotInstanceRequests", "describe_spot_instance_requests", {}),
        (
            "ec2:CancelSpotInstanceRequests",
            "cancel_spot_instance_requests",
            {"SpotInstanceRequestIds": [PLACEHOLDER_SPOT_REQUEST_ID]},
        ),
    ]
    return requests


#: Actions probed on a placeholder or on the VPC's default group: a policy scoped to the managed
#: tag (docs/iam-policy.json) rightly refuses them there, so a refusal cannot tell.
PLACEHOLDER_ACTIONS = frozenset(
    {
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupIngress",
        "ec2:DescribeInstanceAttribute",
        "ec2:StartInstances",
        "ec2:StopInstances",
        "ec2:TerminateInstances",
        "ec2:CancelSpotInstanceRequests",
    }
)

#: Dry runs whose plain success is harmless (reads); a write that succeeds ignored ``DryRun``.
READ_ACTIONS = frozenset(
    {
        "ec2:DescribeInstances",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeInstanceTypeOfferings",
        "ec2:DescribeImages",
        "ec2:DescribeVpcs",
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeKeyPairs",
        "ec2:DescribeInstanceAttribute",
        "ec2:DescribeSpotInstanceRequests",
    }
)


def dry_run_verdict(action: str, err: BaseException | None) -> ActionProbe:
    """What one dry run's answer says about ``action`` (pure)."""
    if err is None:
        if action in READ_ACTIONS:
            return ActionProbe(action, "allowed", "call")
        return ActionProbe(
            action,
            "allowed",
            "dry-run",
            detail="the endpoint carried out a dry run (it ignores DryRun)",
        )
    code = error_code(err)
    if code == "DryRunOperation":
        return ActionProbe(action, "allowed", "dry-run", code=code)
    if code in DENIED_CODES:
        if action in PLACEHOLDER_ACTIONS:
            # Maybe allowed on managed (tagged) resources only: the simulator may tell.
            return ActionProbe(action, "unknown", "dry-run", code=f"{code} on a placeholder")
        return ActionProbe(action, "denied", "dry-run", code=code, detail=error_text(err))
    # InvalidInstanceID.NotFound and the like: EC2 looked at the placeholder before the policy.
    return ActionProbe(action, "unknown", "dry-run", code=code or type(err).__name__)


# -- the probe ------------------------------------------------------------------------------------


class AccountProbe:
    """Side-effect-free questions about an AWS account, asked on an EC2Backend's clients."""

    def __init__(self, backend: EC2Backend):
        self.backend = backend

    def _client(self, region: str, service: str = "ec2") -> Any:
        return self.backend.client(region, service=service)

    # -- credentials and identity -----------------------------------------------------------------

    def credentials(self) -> CredentialFacts:
        """Where the session's credentials come from; SSO tokens are loaded, so expiry shows."""
        from botocore import exceptions as bx

        profile = self.backend.aws_profile
        try:
            session = self.backend.session()
            profile = session.profile_name if session.profile_name != "default" else profile
            creds = session.get_credentials()
            if creds is None:
                return CredentialFacts(found=False, profile=profile, problem="none")
            method = getattr(creds, "method", None)
            # Refreshable credentials (SSO, assume-role, process) load here: an expired SSO
            # token fails now, exactly as the first real call would.
            creds.get_frozen_credentials()
        except EC2LauncherError as err:  # the backend translated a ProfileNotFound
            return CredentialFacts(
                found=False, profile=profile, problem="profile_missing", detail=err.message
            )
        except bx.ProfileNotFound as err:
            return CredentialFacts(
                found=False, profile=profile, problem="profile_missing", detail=str(err)
            )
        except (bx.UnauthorizedSSOTokenError, bx.SSOTokenLoadError, bx.TokenRetrievalError) as err:
            return CredentialFacts(
                found=True,
                method="sso",
                profile=profile,
                problem="sso_expired",
                detail=scrub_message(str(err), 200),
            )
        except bx.SSOError as err:
            return CredentialFacts(
                found=True, method="sso", profile=profile, problem="sso", detail=str(err)
            )
        except (bx.NoCredentialsError, bx.PartialCredentialsError) as err:
            return CredentialFacts(
                found=False, profile=profile, problem="none", detail=scrub_message(str(err), 200)
            )
        except (bx.CredentialRetrievalError, bx.BotoCoreError, bx.ClientError) as err:
            return CredentialFacts(
                found=False,
                profile=profile,
                problem="load_failed",
                detail=scrub_message(str(err), 200),
            )
        expiry = getattr(creds, "_expiry_time", None)
        return CredentialFacts(
            found=True,
            method=method,
            profile=profile,
            expires_at=expiry.isoformat(timespec="seconds") if expiry is not None else None,
        )

    def identity(self, region: str) -> IdentityFacts:
        """``sts:GetCallerIdentity``: who the credentials belong to (every principal may ask)."""
        from botocore import exceptions as bx

        try:
            answer = self._client(region, "sts").get_caller_identity()
        except bx.ClientError as err:
            return IdentityFacts(error_code=error_code(err), error=error_text(err))
        except (bx.BotoCoreError, EC2LauncherError) as err:
            text = err.message if isinstance(err, EC2LauncherError) else str(err)
            return IdentityFacts(error_code=type(err).__name__, error=scrub_message(text, 200))
        return IdentityFacts(account=answer.get("Account"), arn=answer.get("Arn"))

    # -- regions and instance types ------------------------------------------------------------

    def region_opt_in(self, region: str) -> str | None:
        """The region's ``OptInStatus`` (None: EC2 did not list it; "unknown": may not ask)."""
        from botocore import exceptions as bx

        ec2 = self._client(region)
        try:
            regions = ec2.describe_regions(AllRegions=True, RegionNames=[region]).get("Regions", [])
        except bx.ClientError as err:
            if error_code(err) in DENIED_CODES:
                return "unknown"
            raise translate_error(err, action="list the regions", region=region) from err
        for item in regions:
            if item.get("RegionName") == region:
                return item.get("OptInStatus") or "opt-in-not-required"
        return None

    def offered_types(self, region: str, instance_types: Iterable[str]) -> set[str]:
        """Which of the instance types the region offers."""
        wanted = sorted(set(instance_types))
        if not wanted:
            return set()
        ec2 = self._client(region)
        found: set[str] = set()
        with self.backend._aws("check the instance types", region):
            paginator = ec2.get_paginator("describe_instance_type_offerings")
            for page in paginator.paginate(
                LocationType="region", Filters=[{"Name": "instance-type", "Values": wanted}]
            ):
                for offer in page.get("InstanceTypeOfferings", []):
                    found.add(offer.get("InstanceType", ""))
        return found & set(wanted)

    def type_facts(self, region: str, instance_types: Iterable[str]) -> dict[str, TypeFacts]:
        """vCPUs and architectures of each instance type (types EC2 does not know: vcpus None)."""
        from botocore import exceptions as bx

        ec2 = self._client(region)
        result: dict[str, TypeFacts] = {}
        for itype in sorted(set(instance_types)):
            try:
                with self.backend._aws("describe the instance type", region):
                    types = ec2.describe_instance_types(InstanceTypes=[itype]).get(
                        "InstanceTypes", []
                    )
            except EC2LauncherError as err:
                if isinstance(err.__cause__, bx.ClientError) and error_code(err.__cause__) in (
                    "InvalidInstanceType",
                    "InvalidParameterValue",
                ):
                    types = []
                else:
                    raise
            if not types:
                result[itype] = TypeFacts(itype, None)
                continue
            info = types[0]
            vcpus = (info.get("VCpuInfo") or {}).get("DefaultVCpus")
            archs = tuple((info.get("ProcessorInfo") or {}).get("SupportedArchitectures") or ())
            result[itype] = TypeFacts(itype, int(vcpus) if vcpus is not None else None, archs)
        return result

    # -- quotas ---------------------------------------------------------------------------------

    def service_quota(self, region: str, code: str, service: str = "ec2") -> QuotaFacts:
        """A Service Quotas value (applied value; the AWS default where none is applied)."""
        from botocore import exceptions as bx

        client = self._client(region, "service-quotas")
        try:
            answer = client.get_service_quota(ServiceCode=service, QuotaCode=code)
        except bx.ClientError as err:
            if error_code(err) == "NoSuchResourceException":
                try:
                    answer = client.get_aws_default_service_quota(
                        ServiceCode=service, QuotaCode=code
                    )
                except bx.ClientError as err2:
                    return QuotaFacts(code, None, error_code(err2), error_text(err2))
                except bx.BotoCoreError as err2:
                    return QuotaFacts(code, None, type(err2).__name__, str(err2)[:200])
            else:
                return QuotaFacts(code, None, error_code(err), error_text(err))
        except bx.BotoCoreError as err:
            return QuotaFacts(code, None, type(err).__name__, scrub_message(str(err), 200))
        value = (answer.get("Quota") or {}).get("Value")
        return QuotaFacts(code, float(value) if value is not None else None)

    # -- network --------------------------------------------------------------------------------

    def network(self, region: str, subnet_id: str | None) -> NetworkFacts:
        """The configured subnet (or the default VPC) and whether it reaches the internet."""
        from botocore import exceptions as bx

        ec2 = self._client(region)
        try:
            if subnet_id:
                subnets = ec2.describe_subnets(SubnetIds=[subnet_id]).get("Subnets", [])
                if not subnets:
                    return NetworkFacts(None, subnet_id, False, "subnet_missing")
                vpc_id = subnets[0]["VpcId"]
                public_ip = bool(subnets[0].get("MapPublicIpOnLaunch"))
                subnet_ids = [subnet_id]
            else:
                vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}]).get(
                    "Vpcs", []
                )
                if not vpcs:
                    return NetworkFacts(None, None, False, "no_default_vpc")
                vpc_id = vpcs[0]["VpcId"]
                subnets = ec2.describe_subnets(
                    Filters=[
                        {"Name": "vpc-id", "Values": [vpc_id]},
                        {"Name": "default-for-az", "Values": ["true"]},
                    ]
                ).get("Subnets", [])
                if not subnets:
                    return NetworkFacts(vpc_id, None, False, "no_subnet")
                subnet_ids = [s["SubnetId"] for s in subnets]
                public_ip = any(s.get("MapPublicIpOnLaunch") for s in subnets)
            try:
                tables = ec2.describe_route_tables(
                    Filters=[{"Name": "vpc-id", "Values": [vpc_id]}]
                ).get("RouteTables", [])
            except bx.ClientError as err:
                if error_code(err) not in DENIED_CODES:
                    raise
                return NetworkFacts(
                    vpc_id, subnet_id or subnet_ids[0], False, "route_unknown", error_code(err)
                )
        except bx.ClientError as err:
            code = error_code(err)
            if code.startswith("InvalidSubnetID"):
                return NetworkFacts(None, subnet_id, False, "subnet_missing")
            return NetworkFacts(None, subnet_id, False, "error", f"{code}: {error_text(err)}")
        except bx.BotoCoreError as err:
            return NetworkFacts(None, subnet_id, False, "error", scrub_message(str(err), 200))
        routed = any(subnet_has_internet_route(tables, s) for s in subnet_ids)
        return NetworkFacts(
            vpc_id,
            subnet_id if subnet_id else (subnet_ids[0] if subnet_ids else None),
            routed,
            None if routed else "no_route",
            subnet_public_ip=public_ip,
        )

    # -- images ---------------------------------------------------------------------------------

    def resolve_image(self, ami: str, architecture: str, region: str) -> ImageInfo:
        """The image a launch would use (the backend's own resolution)."""
        return self.backend.resolve_image(ami, architecture, region)

    # -- permissions ----------------------------------------------------------------------------

    def default_group_id(self, region: str, vpc_id: str | None) -> str:
        """The VPC's ``default`` security group, which always exists (dry runs name it)."""
        from botocore import exceptions as bx

        if not vpc_id:
            return PLACEHOLDER_GROUP_ID
        try:
            groups = (
                self._client(region)
                .describe_security_groups(
                    Filters=[
                        {"Name": "vpc-id", "Values": [vpc_id]},
                        {"Name": "group-name", "Values": ["default"]},
                    ]
                )
                .get("SecurityGroups", [])
            )
        except (bx.ClientError, bx.BotoCoreError):
            return PLACEHOLDER_GROUP_ID
        return groups[0]["GroupId"] if groups else PLACEHOLDER_GROUP_ID

    def dry_runs(self, ctx: DryRunContext) -> list[ActionProbe]:
        """Every dry run of :func:`dry_run_requests`, each answered by EC2 without effect."""
        from botocore import exceptions as bx

        ec2 = self._client(ctx.region)
        results = []
        for action, method, params in dry_run_requests(ctx):
            try:
                getattr(ec2, method)(DryRun=True, **params)
            except bx.ClientError as err:
                results.append(dry_run_verdict(action, err))
                continue
            except bx.BotoCoreError as err:
                results.append(ActionProbe(action, "unknown", "dry-run", code=type(err).__name__))
                continue
            results.append(dry_run_verdict(action, None))
        return results

    def simulate(
        self, region: str, principal_arn: str, actions: Sequence[str]
    ) -> tuple[dict[str, str], str | None]:
        """``iam:SimulatePrincipalPolicy`` for the actions: ({action: "allowed"/"denied"}, why not).

        Returns an empty mapping and the reason when the simulator cannot be used (the caller
        may not call it, the endpoint does not offer it, the principal is not simulable).
        """
        from botocore import exceptions as bx

        if not actions:
            return {}, None
        policy_source = simulation_source_arn(principal_arn)
        if policy_source is None:
            return {}, "the caller is not an IAM user or role the simulator can evaluate"
        iam = self._client(region, "iam")
        if policy_source.startswith("role-name:"):
            try:
                role = iam.get_role(RoleName=policy_source.split(":", 1)[1])["Role"]
                policy_source = role["Arn"]
            except (bx.ClientError, bx.BotoCoreError) as err:
                code = error_code(err) or type(err).__name__
                return {}, f"iam:GetRole, needed to name the role to the simulator, failed ({code})"
        verdicts: dict[str, str] = {}
        try:
            paginator = iam.get_paginator("simulate_principal_policy")
            for page in paginator.paginate(
                PolicySourceArn=policy_source, ActionNames=list(actions)
            ):
                for result in page.get("EvaluationResults", []):
                    decision = result.get("EvalDecision", "")
                    verdicts[result.get("EvalActionName", "")] = (
                        "allowed" if decision == "allowed" else "denied"
                    )
        except (bx.ClientError, bx.BotoCoreError) as err:
            code = error_code(err) or type(err).__name__
            return {}, f"iam:SimulatePrincipalPolicy is not available to this caller ({code})"
        return verdicts, None


_ASSUMED_ROLE = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/")
_IAM_PRINCIPAL = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(user|role)/")


def simulation_source_arn(arn: str) -> str | None:
    """The ARN the simulator evaluates for a caller, ``role-name:N`` for an assumed role (pure).

    An assumed-role ARN (SSO and assume-role sessions) does not carry the role's path, which
    the simulator needs, so the role is looked up by name first.
    """
    if _IAM_PRINCIPAL.match(arn):
        return arn
    match = _ASSUMED_ROLE.match(arn)
    if match:
        return f"role-name:{match.group(3)}"
    return None


def subnet_has_internet_route(tables: Iterable[Mapping[str, Any]], subnet_id: str) -> bool:
    """Whether a subnet's route table sends 0.0.0.0/0 (or ::/0) to an internet gateway (pure).

    A subnet uses the table explicitly associated with it, else its VPC's main table. A NAT
    gateway is not enough: SSH from this machine needs the instance reachable from outside.
    """
    tables = list(tables)
    explicit = [
        t
        for t in tables
        if any(a.get("SubnetId") == subnet_id for a in t.get("Associations") or [])
    ]
    chosen = explicit or [
        t for t in tables if any(a.get("Main") for a in t.get("Associations") or [])
    ]
    for table in chosen:
        for route in table.get("Routes") or []:
            default = route.get("DestinationCidrBlock") == "0.0.0.0/0" or (
                route.get("DestinationIpv6CidrBlock") == "::/0"
            )
            if (
                default
                and str(route.get("GatewayId") or "").startswith("igw-")
                and route.get("State", "active") == "active"
            ):
                return True
    return False


__all__ = [
    "AccountProbe",
    "ActionProbe",
    "CredentialFacts",
    "DryRunContext",
    "IdentityFacts",
    "NetworkFacts",
    "QuotaFacts",
    "TypeFacts",
    "dry_run_requests",
    "dry_run_verdict",
    "simulation_source_arn",
    "subnet_has_internet_route",
]
