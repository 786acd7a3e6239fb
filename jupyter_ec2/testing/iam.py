"""IAM enforcement for the simulated cloud: a test user holding exactly one policy.

Two layers check every request a restricted test user makes, as AWS would:

- **moto** authenticates the request (SigV4 signature against the user's access key) and checks
  the action itself, for every service. moto cannot evaluate resource ARNs or conditions (it
  passes ``*`` as the resource, and a statement with a ``Condition`` matches nothing), so it is
  given :func:`action_level_view` of the policy: the same actions, on ``*``, unconditioned.
- **the strict front** evaluates the real policy for EC2 requests (:class:`PolicyAuthorizer`):
  the resources a call touches (``instance/i-…``, ``security-group/sg-…``), the request's tags
  (``aws:RequestTag/…``), the tags those resources already carry in moto
  (``aws:ResourceTag/…``), and the permissions a call needs besides its own action —
  ``ec2:CreateTags`` with ``ec2:CreateAction`` for tags on create, and
  ``iam:CreateServiceLinkedRole`` for the first spot launch. A refusal is EC2's own:
  ``UnauthorizedOperation`` with an encoded authorization message that names nothing.

The evaluator knows the condition operators the project's policy uses (``StringEquals``,
``StringLike``, ``ForAllValues:``/``ForAnyValue:`` of these, ``Null``) and raises on any other,
so a policy can never pass here because a condition was skipped.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .strict import UNAUTHORIZED_MESSAGE

ACCOUNT_ID = "123456789012"
"""moto's default account, in every ARN the harness builds."""

SPOT_ROLE_NAME = "AWSServiceRoleForEC2Spot"
SPOT_SERVICE = "spot.amazonaws.com"


def action_level_view(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The policy as moto can check it: each statement's actions on ``*``, without conditions."""
    statements = policy.get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    view = []
    for statement in statements:
        entry = {"Effect": statement["Effect"], "Resource": "*"}
        for key in ("Action", "NotAction"):
            if key in statement:
                entry[key] = statement[key]
        if statement["Effect"] == "Deny" and "Condition" in statement:
            continue  # a conditional deny cannot be applied without its condition
        view.append(entry)
    if not view:
        # IAM refuses an empty statement list; this allows what AWS always allows anyway.
        view.append({"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": view}


# -- the evaluator --------------------------------------------------------------------------------


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    # IAM's wildcards are * and ?; fnmatch's [..] classes are escaped away.
    regex = fnmatch.translate(pattern.replace("[", "[[]"))
    return re.match(regex, value, re.DOTALL) is not None


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Any]) -> bool:
    wanted = [str(v) for v in _as_list(expected)]
    lowered = {k.lower(): v for k, v in context.items()}
    present = key.lower() in lowered
    actual = _as_list(lowered.get(key.lower())) if present else []
    if operator == "Null":
        return (not present) == (wanted[0].lower() == "true")
    qualifier, _, base = operator.rpartition(":")
    if base == "StringEquals":
        match = lambda a: any(a == w for w in wanted)  # noqa: E731
    elif base == "StringLike":
        match = lambda a: any(_wildcard(w, a) for w in wanted)  # noqa: E731
    else:
        raise ValueError(f"The harness cannot evaluate the condition operator {operator!r}.")
    if qualifier == "ForAllValues":
        return all(match(str(a)) for a in actual)
    if qualifier in ("ForAnyValue", ""):
        return present and any(match(str(a)) for a in actual)
    raise ValueError(f"The harness cannot evaluate the condition operator {operator!r}.")


def statement_applies(
    statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any]
) -> bool:
    """Whether a statement's action, resource and conditions all match one request."""
    if "Action" in statement:
        if not any(_wildcard(p, action, ignore_case=True) for p in _as_list(statement["Action"])):
            return False
    elif any(_wildcard(p, action, ignore_case=True) for p in _as_list(statement["NotAction"])):
        return False
    if not any(_wildcard(p, resource) for p in _as_list(statement.get("Resource", "*"))):
        return False
    for operator, keys in (statement.get("Condition") or {}).items():
        for key, expected in keys.items():
            if not _condition_holds(operator, key, expected, context):
                return False
    return True


def is_allowed(
    policy: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any]
) -> bool:
    """IAM's decision for one (action, resource, context): an explicit deny wins, else an allow."""
    statements = policy.get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    allowed = False
    for statement in statements:
        if statement_applies(statement, action, resource, context):
            if statement["Effect"] == "Deny":
                return False
            allowed = True
    return allowed


# -- what each EC2 call needs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """One permission a request needs: an action on a resource, in a condition context."""

    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)


_TAGGED_TYPES = {
    "RunInstances": ("instance", "volume", "spot-instances-request"),
    "CreateSecurityGroup": ("security-group",),
    "ImportKeyPair": ("key-pair",),
    "CreateSnapshot": ("snapshot",),
    "CreateImage": ("image", "snapshot"),
}
#: Resource types whose ARNs name no account (``arn:aws:ec2:region::image/ami-…``).
_ACCOUNTLESS = ("image", "snapshot")


def _indexed(params: Mapping[str, str], prefix: str) -> list[str]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)$")
    found = sorted((int(m.group(1)), v) for k, v in params.items() if (m := pattern.match(k)))
    return [v for _, v in found]


def request_tags(params: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Resource type → tags of a request's ``TagSpecification`` fields."""
    result: dict[str, dict[str, str]] = {}
    spec = re.compile(r"^TagSpecification\.(\d+)\.ResourceType$")
    for name, rtype in params.items():
        match = spec.match(name)
        if not match:
            continue
        n = match.group(1)
        tags = {}
        i = 1
        while f"TagSpecification.{n}.Tag.{i}.Key" in params:
            tags[params[f"TagSpecification.{n}.Tag.{i}.Key"]] = params.get(
                f"TagSpecification.{n}.Tag.{i}.Value", ""
            )
            i += 1
        result.setdefault(rtype, {}).update(tags)
    return result


def _tag_context(prefix: str, tags: Mapping[str, str]) -> dict[str, Any]:
    context: dict[str, Any] = {f"{prefix}/{k}": v for k, v in tags.items()}
    if prefix == "aws:RequestTag":
        context["aws:TagKeys"] = list(tags)
    return context


def needs_of(
    action: str,
    params: Mapping[str, str],
    region: str,
    resource_tags: Callable[[str], Mapping[str, str]],
    spot_role_exists: bool,
) -> list[Need]:
    """Every permission an EC2 request needs, as AWS authorizes it (pure but for the callback)."""
    arn = f"arn:aws:ec2:{region}:{ACCOUNT_ID}"
    tags = request_tags(params)
    ec2_action = f"ec2:{action}"

    def requested(rtype: str) -> dict[str, Any]:
        return _tag_context("aws:RequestTag", tags.get(rtype, {}))

    def arn_of(rtype: str, resource_id: str) -> str:
        if rtype in _ACCOUNTLESS:
            return f"arn:aws:ec2:{region}::{rtype}/{resource_id}"
        return f"{arn}:{rtype}/{resource_id}"

    def existing(rtype: str, resource_id: str) -> Need:
        context = _tag_context("aws:ResourceTag", resource_tags(resource_id))
        context.update({k.replace("aws:", "ec2:", 1): v for k, v in context.items()})
        return Need(ec2_action, arn_of(rtype, resource_id), context)

    needs: list[Need] = []
    if action == "RunInstances":
        spot = params.get("InstanceMarketOptions.MarketType") == "spot"
        needs += [
            Need(ec2_action, f"{arn}:instance/*", requested("instance")),
            Need(ec2_action, f"{arn}:volume/*", requested("volume")),
            Need(ec2_action, f"{arn}:network-interface/*"),
            Need(ec2_action, f"arn:aws:ec2:{region}::image/{params.get('ImageId', '')}"),
        ]
        for group in _indexed(params, "SecurityGroupId"):
            needs.append(Need(ec2_action, f"{arn}:security-group/{group}"))
        if params.get("KeyName"):
            needs.append(Need(ec2_action, f"{arn}:key-pair/{params['KeyName']}"))
        needs.append(Need(ec2_action, f"{arn}:subnet/{params.get('SubnetId', '*')}"))
        if spot:
            needs.append(
                Need(
                    ec2_action,
                    f"{arn}:spot-instances-request/*",
                    requested("spot-instances-request"),
                )
            )
            if not spot_role_exists:
                needs.append(
                    Need(
                        "iam:CreateServiceLinkedRole",
                        f"arn:aws:iam::{ACCOUNT_ID}:role/aws-service-role/{SPOT_SERVICE}/"
                        f"{SPOT_ROLE_NAME}",
                        {"iam:AWSServiceName": SPOT_SERVICE},
                    )
                )
    elif action in ("StartInstances", "StopInstances", "TerminateInstances"):
        needs += [existing("instance", i) for i in _indexed(params, "InstanceId")]
    elif action in ("DescribeInstanceAttribute", "ModifyInstanceAttribute"):
        # ModifyInstanceAttribute (resize) is authorized on the instance, like its describe.
        needs.append(existing("instance", params.get("InstanceId", "")))
    elif action == "CreateSecurityGroup":
        needs += [
            Need(ec2_action, f"{arn}:security-group/*", requested("security-group")),
            Need(ec2_action, f"{arn}:vpc/{params.get('VpcId', '*')}"),
        ]
    elif action in ("AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress"):
        needs.append(existing("security-group", params.get("GroupId", "")))
    # Dask workers (jupyter_ec2.workers): the notebook joins the cluster group, which goes later.
    elif action == "ModifyInstanceAttribute":
        needs.append(existing("instance", params.get("InstanceId", "")))
        needs += [existing("security-group", g) for g in _indexed(params, "GroupId")]
    elif action == "DeleteSecurityGroup":
        needs.append(existing("security-group", params.get("GroupId", "")))
    elif action == "ImportKeyPair":
        needs.append(
            Need(ec2_action, f"{arn}:key-pair/{params.get('KeyName', '')}", requested("key-pair"))
        )
    elif action == "CreateSnapshot":
        # The volume (its tags as they are) and the new snapshot (the request's tags); snapshot
        # ARNs have no account. https://docs.aws.amazon.com/service-authorization/latest/
        # reference/list_amazonec2.html (CreateSnapshot: snapshot*, volume*)
        needs += [
            existing("volume", params.get("VolumeId", "")),
            Need(ec2_action, f"arn:aws:ec2:{region}::snapshot/*", requested("snapshot")),
        ]
    elif action == "CreateImage":
        # The instance imaged, and the image and snapshots made (issue 15).
        needs += [
            existing("instance", params.get("InstanceId", "")),
            Need(ec2_action, arn_of("image", "*"), requested("image")),
            Need(ec2_action, arn_of("snapshot", "*"), requested("snapshot")),
        ]
    elif action == "DeregisterImage":
        needs.append(existing("image", params.get("ImageId", "")))
    elif action == "DeleteSnapshot":
        needs.append(existing("snapshot", params.get("SnapshotId", "")))
    elif action == "CreateTags":
        for resource_id in _indexed(params, "ResourceId"):
            needs.append(existing(_resource_type(resource_id), resource_id))
    else:
        needs.append(Need(ec2_action, "*"))
    for rtype, rtags in tags.items():
        if action in _TAGGED_TYPES:
            context = {"ec2:CreateAction": action, **_tag_context("aws:RequestTag", rtags)}
            needs.append(Need("ec2:CreateTags", arn_of(rtype, "*"), context))
    return needs


def _resource_type(resource_id: str) -> str:
    prefixes = {
        "i-": "instance",
        "vol-": "volume",
        "sg-": "security-group",
        "key-": "key-pair",
        "ami-": "image",
        "snap-": "snapshot",
    }
    for prefix, rtype in prefixes.items():
        if resource_id.startswith(prefix):
            return rtype
    return "*"


def unauthorized_message(need: Need) -> str:
    """EC2's refusal: a fixed sentence and an opaque blob (decoding it needs sts:Decode…)."""
    del need  # AWS names nothing in the clear; the caller must know what it asked for
    return UNAUTHORIZED_MESSAGE + base64.urlsafe_b64encode(secrets.token_bytes(120)).decode()


class PolicyAuthorizer:
    """The strict front's IAM check: the policy of each restricted user's access key."""

    def __init__(
        self,
        region_tags: Callable[[str, str], Mapping[str, str]],
        spot_role_exists: Callable[[], bool],
        create_spot_role: Callable[[], None],
    ):
        self._policies: dict[str, Mapping[str, Any]] = {}
        self._region_tags = region_tags
        self._spot_role_exists = spot_role_exists
        self._create_spot_role = create_spot_role
        self._lock = threading.Lock()
        self.denied: list[Need] = []

    def add(self, access_key_id: str, policy: Mapping[str, Any]) -> None:
        """Enforce ``policy`` for requests signed with ``access_key_id``."""
        with self._lock:
            self._policies[access_key_id] = policy

    def __call__(
        self, access_key_id: str, region: str, action: str, params: Mapping[str, str]
    ) -> tuple[str, str, int] | None:
        """None to let a request pass, or (code, message, status) to refuse it as EC2 does."""
        policy = self._policies.get(access_key_id)
        if policy is None:
            return None  # not a restricted user: moto authenticates it (or refuses it)
        region = region or "us-east-1"
        role_exists = self._spot_role_exists()
        for need in needs_of(
            action, params, region, lambda rid: self._region_tags(region, rid), role_exists
        ):
            if not is_allowed(policy, need.action, need.resource, need.context):
                with self._lock:
                    self.denied.append(need)
                if need.action == "iam:CreateServiceLinkedRole":
                    return (
                        "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
                        "The provided credentials do not have permission to create the "
                        "service-linked role for EC2 Spot Instances.",
                        403,
                    )
                return "UnauthorizedOperation", unauthorized_message(need), 403
        spot = params.get("InstanceMarketOptions.MarketType") == "spot"
        if action == "RunInstances" and spot and not role_exists:
            self._create_spot_role()
        return None


def every_action(policy: Mapping[str, Any]) -> set[str]:
    """The actions a policy's Allow statements name (lower-cased for comparison)."""
    statements = _as_list(policy.get("Statement") or [])
    return {
        a.lower()
        for s in statements
        if s.get("Effect") == "Allow"
        for a in _as_list(s.get("Action") or [])
    }


def without_statements(policy: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The policy without the statements whose Sid is in ``names``."""
    drop = set(names)
    return {
        **policy,
        "Statement": [s for s in _as_list(policy["Statement"]) if s.get("Sid") not in drop],
    }


def load_policy(text: str) -> dict[str, Any]:
    """A policy document from JSON text."""
    return json.loads(text)
