"""The strict, late front of the simulated cloud: AWS's documented rules and EC2's lag, over moto.

moto accepts what AWS refuses and is never late. :class:`StrictFront` is a small HTTP server on
127.0.0.1 that sits between every client and the in-process moto server (``endpoint_url`` and
``AWS_ENDPOINT_URL`` point at it). For each EC2 request it:

- checks the parameters against :data:`RULES`, the limits AWS documents for the calls the
  project makes (one row per rule, each with the AWS documentation page it comes from), and
  refuses a request that breaks one with AWS's own error code and message, in EC2's XML error
  format, before moto sees it;
- in *lag* mode (:meth:`StrictFront.set_lag`) hides an instance for a while after
  ``RunInstances`` or ``StartInstances``: ``DescribeInstances`` leaves it out, and a describe by
  id answers ``InvalidInstanceID.NotFound``, as EC2's eventual consistency does; and a new image
  (``CreateImage``) is missing from ``DescribeImages`` for as long, then ``pending`` for as long
  again, as EC2 answers while it takes the snapshots;
- makes EBS snapshots late, always: moto completes a snapshot at once, EBS does not (see
  "Snapshots are late" below);
- checks image requests against the cloud's state (:func:`check_image_request`: the instance's
  state, the image name, the image and snapshot to delete), each rule sourced in its block.

Everything else passes through unchanged (moto's own answers, every other service). The rule
table is data: a rule names the actions it applies to, the query parameters it reads (a regular
expression over the names of EC2's query protocol, such as ``TagSpecification.1.Tag.2.Key``), a
predicate on the value, and the error to answer.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET  # noqa: S405 - parses moto's own answers only
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

# -- the rules ------------------------------------------------------------------------------------

#: The characters AWS allows in security-group names, descriptions and rule descriptions.
_SG_TEXT = re.compile(r"^[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]*$")

_DOC = "https://docs.aws.amazon.com/AWSEC2/latest/APIReference"
_RULE_DESCRIPTION_ACTIONS = frozenset(
    {
        "AuthorizeSecurityGroupIngress",
        "AuthorizeSecurityGroupEgress",
        "UpdateSecurityGroupRuleDescriptionsIngress",
        "UpdateSecurityGroupRuleDescriptionsEgress",
    }
)
_EVERY_ACTION = frozenset({"*"})


def _sg_text(value: str) -> bool:
    return len(value) <= 255 and bool(_SG_TEXT.match(value))


def _user_data_size(value: str) -> bool:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) <= 16 * 1024


@dataclass(frozen=True)
class Rule:
    """One documented AWS limit: where it applies, what it allows and what AWS answers."""

    name: str
    actions: frozenset[str]
    param: re.Pattern[str]
    allowed: Callable[[str], bool]
    code: str
    message: str  # formatted with {value} and {param}
    source: str


RULES: tuple[Rule, ...] = (
    Rule(
        "security group rule description",
        _RULE_DESCRIPTION_ACTIONS,
        re.compile(
            r"^IpPermissions\.\d+\.(IpRanges|Ipv6Ranges|UserIdGroupPairs|Groups|PrefixListIds)"
            r"\.\d+\.Description$"
        ),
        _sg_text,
        "InvalidParameterValue",
        "Invalid rule description. Valid descriptions are strings less than 256 characters from "
        "the following set:  a-zA-Z0-9. _-:/()#,@[]+=&;{{}}!$*",
        f"{_DOC}/API_IpRange.html",
    ),
    Rule(
        "security group description",
        frozenset({"CreateSecurityGroup"}),
        re.compile(r"^GroupDescription$"),
        _sg_text,
        "InvalidParameterValue",
        "Value ({value}) for parameter GroupDescription is invalid. Valid descriptions are "
        "strings less than 256 characters from the following set:  a-zA-Z0-9. "
        "_-:/()#,@[]+=&;{{}}!$*",
        f"{_DOC}/API_CreateSecurityGroup.html",
    ),
    Rule(
        "security group name",
        frozenset({"CreateSecurityGroup"}),
        re.compile(r"^GroupName$"),
        lambda v: _sg_text(v) and len(v) > 0 and not v.lower().startswith("sg-"),
        "InvalidParameterValue",
        "Value ({value}) for parameter GroupName is invalid. Group names may not be empty, may "
        "not start with sg-, and are up to 255 characters from a-zA-Z0-9. _-:/()#,@[]+=&;{{}}!$*",
        f"{_DOC}/API_CreateSecurityGroup.html",
    ),
    Rule(
        "tag key length",
        _EVERY_ACTION,
        re.compile(r"^(TagSpecification\.\d+\.)?Tag\.\d+\.Key$"),
        lambda v: 1 <= len(v) <= 127,
        "InvalidParameterValue",
        "Tag key exceeds the maximum length of 127 characters",
        f"{_DOC}/API_Tag.html",
    ),
    Rule(
        "tag key prefix aws:",
        _EVERY_ACTION,
        re.compile(r"^(TagSpecification\.\d+\.)?Tag\.\d+\.Key$"),
        lambda v: not v.lower().startswith("aws:"),
        "InvalidParameterValue",
        "Value ( {value} ) for parameter key is invalid. Tag keys starting with 'aws:' are "
        "reserved for internal use",
        f"{_DOC}/API_Tag.html",
    ),
    Rule(
        # The API reference says 256, the EC2 user guide 255: the stricter one is checked.
        "tag value length",
        _EVERY_ACTION,
        re.compile(r"^(TagSpecification\.\d+\.)?Tag\.\d+\.Value$"),
        lambda v: len(v) <= 255,
        "InvalidParameterValue",
        "Tag value exceeds the maximum length of 255 characters",
        "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions",
    ),
    Rule(
        "client token",
        _EVERY_ACTION,
        re.compile(r"^ClientToken$"),
        lambda v: 0 < len(v) <= 64 and v.isascii(),
        "InvalidParameterValue",
        "Value ({value}) for parameter clientToken is invalid. The client token must be at most "
        "64 ASCII characters.",
        "https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html",
    ),
    Rule(
        "user data size",
        frozenset({"RunInstances"}),
        re.compile(r"^UserData$"),
        _user_data_size,
        "InvalidParameterValue",
        "User data is limited to 16384 bytes",
        f"{_DOC}/API_RunInstances.html",
    ),
    Rule(
        "key pair name",
        frozenset({"ImportKeyPair", "CreateKeyPair"}),
        re.compile(r"^KeyName$"),
        lambda v: 0 < len(v) <= 255 and v.isascii(),
        "InvalidParameterValue",
        "Value ({value}) for parameter KeyName is invalid. Key pair names are up to 255 ASCII "
        "characters.",
        f"{_DOC}/API_ImportKeyPair.html",
    ),
)

# -- Dask workers (jupyter_ec2.workers): rules over several parameters of one request ----------
#
# moto accepts each of these; AWS refuses them. Each check reads the whole request.
# - RunInstances: MinCount and MaxCount are each at least 1, and MinCount <= MaxCount
#   (API_RunInstances.html: "Constraints: Between 1 and the quota ..."; EC2 launches at least
#   MinCount or nothing, so a MinCount above MaxCount cannot be met).
# - AuthorizeSecurityGroupIngress in a VPC: a source group is named by its id, never its name
#   ("For security groups in a nondefault VPC, you must specify the security group ID"), and a
#   tcp or udp rule names its ports ("If the protocol is TCP or UDP, you must also specify a
#   port or port range"; protocol -1, all traffic, takes none).
# - ModifyInstanceAttribute with security groups: at least one, each by its id ("You must
#   specify the security group ID, not the security group name").


def _count(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def _run_instances_counts(action: str, params: Mapping[str, str]) -> Refusal | None:
    if action != "RunInstances":
        return None
    low, high = _count(params, "MinCount"), _count(params, "MaxCount")
    if low is None or high is None:
        return None  # both are required: botocore refuses a request without them
    if low < 1 or high < 1 or low > high:
        return Refusal(
            action,
            "instance counts",
            "InvalidParameterValue",
            f"MinCount ({low}) and MaxCount ({high}) must each be at least 1, "
            "and MinCount no more than MaxCount.",
            "MinCount",
        )
    return None


def _ingress_sources(action: str, params: Mapping[str, str]) -> Refusal | None:
    if action not in ("AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress"):
        return None
    for name, value in params.items():
        pair = re.match(r"^(IpPermissions\.\d+)\.Groups\.(\d+)\.GroupName$", name)
        if pair and not params.get(f"{pair.group(1)}.Groups.{pair.group(2)}.GroupId"):
            return Refusal(
                action,
                "source group by id",
                "InvalidParameterValue",
                f"Value ({value}) for parameter groupName is invalid: in a VPC a source "
                "security group is named by its id (GroupId).",
                name,
            )
        perm = re.match(r"^(IpPermissions\.\d+)\.IpProtocol$", name)
        if perm and value.lower() in ("tcp", "udp", "6", "17"):
            prefix = perm.group(1)
            if f"{prefix}.FromPort" not in params or f"{prefix}.ToPort" not in params:
                return Refusal(
                    action,
                    "tcp and udp ports",
                    "InvalidParameterValue",
                    "Invalid value 'Must specify both from and to ports with TCP/UDP.' for "
                    "portRange",
                    f"{prefix}.FromPort",
                )
    return None


def _modify_groups(action: str, params: Mapping[str, str]) -> Refusal | None:
    if action != "ModifyInstanceAttribute":
        return None
    groups = [v for k, v in params.items() if re.match(r"^GroupId\.\d+$", k)]
    names_groups = any(k.startswith("GroupId.") for k in params)
    if (names_groups or params.get("Attribute") == "groupSet") and (
        not groups or not all(re.fullmatch(r"sg-[0-9a-f]{8,17}", g) for g in groups)
    ):
        return Refusal(
            action,
            "instance groups by id",
            "InvalidParameterValue",
            "You must specify at least one security group, each by its id (sg-...).",
            "GroupId",
        )
    return None


#: Request-level checks (several parameters at once), tried after the per-parameter rules.
REQUEST_CHECKS: tuple[Callable[[str, Mapping[str, str]], Refusal | None], ...] = (
    _run_instances_counts,
    _ingress_sources,
    _modify_groups,
)


#: Tags one request may put on one resource type (user tags; ``aws:`` ones do not count).
MAX_TAGS_PER_RESOURCE = 50
TAG_LIMIT_SOURCE = (
    "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions"
)


@dataclass(frozen=True)
class Refusal:
    """A request the front refused: the rule, AWS's code and message, the parameter."""

    action: str
    rule: str
    code: str
    message: str
    param: str


def check_request(action: str, params: Mapping[str, str]) -> Refusal | None:
    """The first rule an EC2 request breaks, or None (pure; ``params`` are the query fields)."""
    for name, value in params.items():
        for rule in RULES:
            if "*" not in rule.actions and action not in rule.actions:
                continue
            if rule.param.match(name) and not rule.allowed(value):
                shown = value if len(value) <= 80 else value[:77] + "..."
                return Refusal(
                    action, rule.name, rule.code, rule.message.format(value=shown, param=name), name
                )
    for check in REQUEST_CHECKS:
        refusal = check(action, params)
        if refusal is not None:
            return refusal
    counts: dict[str, int] = {}
    for name in params:
        match = re.match(r"^(TagSpecification\.\d+\.)?Tag\.\d+\.Key$", name)
        if match:
            counts[match.group(1) or ""] = counts.get(match.group(1) or "", 0) + 1
    for prefix, count in counts.items():
        if count > MAX_TAGS_PER_RESOURCE:
            return Refusal(
                action,
                "tags per resource",
                "TagLimitExceeded",
                f"The maximum number of tags per resource is {MAX_TAGS_PER_RESOURCE}.",
                f"{prefix}Tag",
            )
    return None


# -- stateful rules (issue 15, resize) -----------------------------------------------------------
# moto changes the type of a running instance; EC2 refuses it. These rules need the instance's
# state, which the front reads from moto's in-process backend (the harness's view, never lagged).

#: ModifyInstanceAttribute InstanceType: "To change the instance type, the instance must be
#: stopped" — EC2 answers IncorrectInstanceState otherwise.
RESIZE_STATE_SOURCE = (
    "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-resize.html; "
    f"{_DOC}/API_ModifyInstanceAttribute.html"
)


def _moto_instance_state(region: str, instance_id: str) -> str | None:
    """The state moto holds for an instance, or None when it has none."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    try:
        return ec2_backends[DEFAULT_ACCOUNT_ID][region].get_instance(instance_id).state
    except Exception:  # noqa: BLE001 - unknown id or region: moto answers it itself
        return None


def check_stateful(
    action: str, params: Mapping[str, str], region: str, state_of: Callable[[str, str], Any]
) -> Refusal | None:
    """A request that breaks a rule depending on the instance's state, or None."""
    if action != "ModifyInstanceAttribute":
        return None
    changes_type = "InstanceType.Value" in params or (
        params.get("Attribute") == "instanceType" and "Value" in params
    )
    instance_id = params.get("InstanceId", "")
    if not changes_type or not instance_id:
        return None
    state = state_of(region, instance_id)
    if state is None or state == "stopped":
        return None
    return Refusal(
        action,
        "instance type change needs a stopped instance",
        "IncorrectInstanceState",
        f"The instance '{instance_id}' is not in the 'stopped' state.",
        "InstanceType.Value",
    )


def ec2_error_xml(code: str, message: str) -> bytes:
    """An error answer in EC2's XML format (what botocore's EC2 parser reads)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


def _no_authorizer(key: str, region: str, action: str, params: Mapping[str, str]) -> None:
    return None


def _credential_of(headers: Mapping[str, str]) -> tuple[str, str]:
    """(access key id, region) of a SigV4-signed request."""
    auth = headers.get("Authorization") or ""
    match = re.search(r"Credential=([^/]+)/[^/]+/([^/]+)/", auth)
    return (match.group(1), match.group(2)) if match else ("", "")


UNAUTHORIZED_MESSAGE = (
    "You are not authorized to perform this operation. Encoded authorization failure message: "
)


def _opaque() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes * 8).decode()


def _service_of(headers: Mapping[str, str]) -> str:
    """The service a SigV4-signed request is for (``ec2``, ``iam``, ``pricing``…), or ''."""
    auth = headers.get("Authorization") or ""
    match = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request", auth)
    return match.group(1) if match else ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in node if _local(child.tag) == name]


def _instance_ids_in_run_answer(body: bytes) -> list[str]:
    try:
        root = ET.fromstring(body)  # noqa: S314 - moto's answer on loopback
    except ET.ParseError:
        return []
    return [node.text or "" for node in root.iter() if _local(node.tag) == "instanceId"]


def _without_instances(body: bytes, hidden: set[str]) -> bytes:
    """A DescribeInstances answer with the hidden instances (and emptied reservations) removed."""
    root = ET.fromstring(body)  # noqa: S314 - moto's answer on loopback
    for reservation_set in _children(root, "reservationSet"):
        for reservation in list(reservation_set):
            for instances in _children(reservation, "instancesSet"):
                for item in list(instances):
                    ids = [c.text for c in item if _local(c.tag) == "instanceId"]
                    if ids and ids[0] in hidden:
                        instances.remove(item)
                if len(instances) == 0:
                    reservation_set.remove(reservation)
                    break
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# -- Snapshots are late (where moto is lenient) ---------------------------------------------------
#
# "Snapshot creation is asynchronous. The snapshot is created immediately, but it remains in the
# pending state until all of data has been transferred to Amazon S3. This can take several hours"
# (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-creating-snapshot.html); a snapshot's
# State is pending | completed | error | recoverable | recovering
# (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Snapshot.html). moto answers
# ``completed`` at once. The front rewrites CreateSnapshot's answer to ``pending`` and keeps a new
# snapshot ``pending`` (progress below 100%) for its first :attr:`StrictFront.snapshot_describes`
# DescribeSnapshots answers (a count, not a time, so tests need no sleeping); a test may ask for
# the next snapshots to end in ``error`` (:meth:`StrictFront.fail_snapshots`), as EBS's do.

#: What a failed snapshot says (EBS gives a StateMessage with the error).
SNAPSHOT_ERROR_MESSAGE = "Snapshot creation failed: an internal error occurred"


def _snapshot_items(root: ET.Element) -> list[ET.Element]:
    return [
        n for n in root.iter() if _local(n.tag) == "item" and _child(n, "snapshotId") is not None
    ]


def _child(node: ET.Element, name: str) -> ET.Element | None:
    for child in node:
        if _local(child.tag) == name:
            return child
    return None


def _set_child(node: ET.Element, name: str, text: str) -> None:
    child = _child(node, name)
    if child is None:
        namespace = node.tag[: node.tag.index("}") + 1] if node.tag.startswith("{") else ""
        child = ET.SubElement(node, namespace + name)
    child.text = text


def _late_snapshots(body: bytes, states: Mapping[str, tuple[str, str]]) -> bytes:
    """A snapshot answer with the states the front decided (id → (status, progress))."""
    root = ET.fromstring(body)  # noqa: S314 - moto's answer on loopback
    items = _snapshot_items(root) or ([root] if _child(root, "snapshotId") is not None else [])
    for item in items:
        snapshot_id = (_child(item, "snapshotId").text or "").strip()  # type: ignore[union-attr]
        if snapshot_id in states:
            status, progress = states[snapshot_id]
            _set_child(item, "status", status)
            _set_child(item, "progress", progress)
            if status == "error":
                _set_child(item, "statusMessage", SNAPSHOT_ERROR_MESSAGE)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _created_snapshot_id(body: bytes) -> str | None:
    try:
        root = ET.fromstring(body)  # noqa: S314 - moto's answer on loopback
    except ET.ParseError:
        return None
    node = _child(root, "snapshotId")
    return (node.text or "").strip() if node is not None else None


# -- saved images (issue 15): rules that need the cloud's state, and EC2's lag for images ---------
#
# Each rule below is sourced from AWS's documentation; they read moto's state (the front's
# ``backend_of``, set by the simulated cloud), so they are functions rather than rows of RULES.
# - CreateImage: "Creates an Amazon EBS-backed AMI from an Amazon EBS-backed instance that is
#   either running or stopped" (API_CreateImage); any other state is IncorrectInstanceState
#   ("The instance is in an incorrect state", errors-overview).
# - CreateImage Name: "3-128 alphanumeric characters, parentheses (()), square brackets ([]),
#   spaces ( ), periods (.), slashes (/), dashes (-), single quotes ('), at-signs (@), or
#   underscores(_)" (API_CreateImage), else InvalidAMIName.Malformed; a name already used by an
#   image of the account in the region is InvalidAMIName.Duplicate (errors-overview).
# - DeregisterImage / DescribeImages by id of an image that does not exist: InvalidAMIID.NotFound
#   (errors-overview); moto answers the same for deregister, the front also while an image lags.
# - DeleteSnapshot of a snapshot a registered image uses: InvalidSnapshot.InUse ("DeregisterImage
#   does not delete snapshots"; a snapshot of a registered AMI cannot be deleted, EBS user guide).

IMAGE_SOURCES = {
    "create": f"{_DOC}/API_CreateImage.html",
    "errors": "https://docs.aws.amazon.com/ec2/latest/devguide/errors-overview.html",
    "deregister": f"{_DOC}/API_DeregisterImage.html",
}
_AMI_NAME = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")


def check_image_request(action: str, params: Mapping[str, str], backend: Any) -> Refusal | None:
    """The first image rule an EC2 request breaks against moto's ``backend``, or None."""
    if action == "CreateImage":
        name = params.get("Name", "")
        if not _AMI_NAME.match(name):
            return Refusal(
                action, "image name", "InvalidAMIName.Malformed",
                f"AMI names must be between 3 and 128 characters long, and may contain letters, "
                f"numbers, '(', ')', '.', '-', '/', '@', '_', ' ', '[', ']' and \"'\": {name[:80]}",
                "Name",
            )  # fmt: skip
        for ami in list(backend.amis.values()):
            if ami.name == name and ami.owner_id == backend.account_id:
                return Refusal(
                    action, "image name unique", "InvalidAMIName.Duplicate",
                    f"AMI name {name} is already in use by AMI {ami.id}", "Name",
                )  # fmt: skip
        instance_id = params.get("InstanceId", "")
        try:
            state = backend.get_instance(instance_id)._state.name
        except Exception:  # noqa: BLE001 - moto answers the unknown id itself
            return None
        if state not in ("running", "stopped"):
            return Refusal(
                action, "image of a running or stopped instance", "IncorrectInstanceState",
                f"The instance '{instance_id}' is not in a state from which it can be imaged "
                f"(it is {state}).",
                "InstanceId",
            )  # fmt: skip
    elif action == "DeregisterImage":
        image_id = params.get("ImageId", "")
        if image_id not in backend.amis:
            return Refusal(
                action, "deregister an existing image", "InvalidAMIID.NotFound",
                f"The image id '[{image_id}]' does not exist", "ImageId",
            )  # fmt: skip
    elif action == "DeleteSnapshot":
        snapshot_id = params.get("SnapshotId", "")
        for ami in list(backend.amis.values()):
            snapshot = getattr(ami, "ebs_snapshot", None)
            if snapshot is not None and snapshot.id == snapshot_id:
                return Refusal(
                    action, "snapshot of a registered image", "InvalidSnapshot.InUse",
                    f"The snapshot {snapshot_id} is currently in use by {ami.id}", "SnapshotId",
                )  # fmt: skip
    return None


def _image_ids_in_create_answer(body: bytes) -> list[str]:
    try:
        root = ET.fromstring(body)  # noqa: S314 - moto's answer on loopback
    except ET.ParseError:
        return []
    return [node.text or "" for node in root.iter() if _local(node.tag) == "imageId"]


def _late_images(body: bytes, hidden: set[str], pending: set[str]) -> bytes:
    """A DescribeImages answer without the hidden images, the pending ones marked pending."""
    root = ET.fromstring(body)  # noqa: S314 - moto's answer on loopback
    for parent in list(root.iter()):
        for item in list(parent):
            if _local(item.tag) != "item":
                continue
            ids = [c.text for c in item if _local(c.tag) == "imageId"]
            if not ids:
                continue
            if ids[0] in hidden:
                parent.remove(item)
            elif ids[0] in pending:
                for child in item:
                    if _local(child.tag) == "imageState":
                        child.text = "pending"
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# -- the front ------------------------------------------------------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class StrictFront:
    """An HTTP front on 127.0.0.1 that checks EC2 requests and plays EC2's lag, over moto."""

    def __init__(self, upstream_port: int):
        self._upstream_port = upstream_port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._lag = 0.0
        self._hidden_until: dict[str, float] = {}
        self._images_created: dict[str, float] = {}  # image id -> when CreateImage answered
        self._refusals: list[Refusal] = []
        #: How many DescribeSnapshots answers a new snapshot stays ``pending`` in (≥ 1).
        self.snapshot_describes = 1
        self._snapshots: dict[str, list[Any]] = {}  # id → [describes left, final status]
        self._failing_snapshots = 0
        #: moto's EC2 backend of a region, for the image rules (set by the simulated cloud).
        self.backend_of: Callable[[str], Any] | None = None
        #: Called with (access key id, region, action, params) before an EC2 request passes; may
        #: answer an error (code, message, HTTP status) instead. The harness's IAM checks use it.
        self.authorizer: Callable[[str, str, str, Mapping[str, str]], tuple[str, str, int] | None]
        self.authorizer = _no_authorizer
        #: (region, instance id) → the instance's state, for the stateful rules (resize).
        self.instance_state: Callable[[str, str], str | None] = _moto_instance_state

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> StrictFront:
        """Listen on a free 127.0.0.1 port (returns at once; requests are served in threads)."""
        front = self

        class Handler(_FrontHandler):
            owner = front

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="jupyter-ec2-strict-front", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def port(self) -> int:
        """The port clients talk to."""
        if self._server is None:
            raise RuntimeError("The strict front is not running.")
        return self._server.server_address[1]

    # -- what tests change -------------------------------------------------------------------

    def set_lag(self, seconds: float) -> None:
        """Hide instances from describes for ``seconds`` after a run or start (0: no lag).

        Instances already hidden stay hidden until their own deadline; setting 0 shows them.
        """
        if seconds < 0:
            raise ValueError("The lag is a number of seconds ≥ 0.")
        with self._lock:
            self._lag = float(seconds)
            if not seconds:
                self._hidden_until.clear()
                self._images_created.clear()

    @property
    def lag(self) -> float:
        """The current lag in seconds."""
        return self._lag

    def fail_snapshots(self, count: int = 1) -> None:
        """Make the next ``count`` snapshots end in ``error`` (after being pending)."""
        with self._lock:
            self._failing_snapshots = int(count)

    def reset(self) -> None:
        """No lag, nothing hidden, no refusals recorded, no authorizer, snapshots late by one."""
        with self._lock:
            self._lag = 0.0
            self._hidden_until.clear()
            self._images_created.clear()
            self._refusals.clear()
            self.snapshot_describes = 1
            self._snapshots.clear()
            self._failing_snapshots = 0
        self.authorizer = _no_authorizer

    @property
    def refusals(self) -> list[Refusal]:
        """Every request refused by a rule since the last reset, oldest first."""
        with self._lock:
            return list(self._refusals)

    # -- what the handler calls --------------------------------------------------------------

    def _record(self, refusal: Refusal) -> None:
        with self._lock:
            self._refusals.append(refusal)
        log.info("Strict front refused %s (%s): %s", refusal.action, refusal.rule, refusal.message)

    def _hide(self, instance_ids: list[str]) -> None:
        with self._lock:
            if self._lag <= 0:
                return
            until = time.monotonic() + self._lag
            for instance_id in instance_ids:
                self._hidden_until[instance_id] = until

    def _snapshot_created(self, snapshot_id: str) -> None:
        with self._lock:
            final = "completed"
            if self._failing_snapshots > 0:
                self._failing_snapshots -= 1
                final = "error"
            self._snapshots[snapshot_id] = [max(1, self.snapshot_describes), final]

    def _snapshot_states(self, described: bool) -> dict[str, tuple[str, str]]:
        """id → (status, progress) to answer; a describe counts one down for each."""
        with self._lock:
            states = {}
            for snapshot_id, entry in self._snapshots.items():
                left, final = entry
                if left > 0:
                    states[snapshot_id] = ("pending", "0%")
                    if described:
                        entry[0] -= 1
                else:
                    states[snapshot_id] = (final, "100%" if final == "completed" else "0%")
            return states

    def _image_created(self, image_ids: list[str]) -> None:
        with self._lock:
            if self._lag > 0:
                for image_id in image_ids:
                    self._images_created[image_id] = time.monotonic()

    def _late_images(self) -> tuple[set[str], set[str]]:
        """(hidden, pending) images: missing for ``lag`` s after CreateImage, then pending for
        as long again, as EC2 answers while it takes the snapshots."""
        now = time.monotonic()
        hidden, pending = set(), set()
        with self._lock:
            for image_id, created in list(self._images_created.items()):
                age = now - created
                if age < self._lag:
                    hidden.add(image_id)
                elif age < 2 * self._lag:
                    pending.add(image_id)
                else:
                    del self._images_created[image_id]
        return hidden, pending

    def _hidden(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            for instance_id in [i for i, t in self._hidden_until.items() if t <= now]:
                del self._hidden_until[instance_id]
            return set(self._hidden_until)


class _FrontHandler(BaseHTTPRequestHandler):
    """One connection to the front; each request is checked, then passed on or refused."""

    owner: StrictFront
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        log.debug("strict front: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        front = self.owner
        action = ""
        params: dict[str, str] = {}
        if _service_of(headers) == "ec2" and self.command == "POST":
            params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            action = params.get("Action", "")
        if action:
            refusal = check_request(action, params)
            if refusal is None:  # the stateful rules (resize), after the stateless ones
                refusal = check_stateful(
                    action, params, _credential_of(headers)[1], front.instance_state
                )
            if refusal is not None:
                front._record(refusal)
                self._answer(400, ec2_error_xml(refusal.code, refusal.message))
                return
            key, region = _credential_of(headers)
            if front.backend_of is not None and action in (
                "CreateImage",
                "DeregisterImage",
                "DeleteSnapshot",
            ):
                refusal = check_image_request(action, params, front.backend_of(region or None))
                if refusal is not None:
                    front._record(refusal)
                    self._answer(400, ec2_error_xml(refusal.code, refusal.message))
                    return
            denied = front.authorizer(key, region, action, params)
            if denied is not None:
                code, message, status = denied
                self._answer(status, ec2_error_xml(code, message))
                return
            if action == "DescribeImages":
                hidden_images = front._late_images()[0]
                asked = [v for k, v in params.items() if re.match(r"^ImageId\.\d+$", k)]
                missing = [i for i in asked if i in hidden_images]
                if missing:
                    message = f"The image id '[{', '.join(missing)}]' does not exist"
                    self._answer(400, ec2_error_xml("InvalidAMIID.NotFound", message))
                    return
            if action == "DescribeInstances":
                hidden = front._hidden()
                asked = [v for k, v in params.items() if re.match(r"^InstanceId\.\d+$", k)]
                missing = [i for i in asked if i in hidden]
                if missing:
                    self._answer(
                        400, ec2_error_xml("InvalidInstanceID.NotFound", _not_found(missing))
                    )
                    return
        status, reply_headers, reply = self._forward(body, headers)
        if action and status == 403 and b"AccessDenied" in reply:
            # moto's refusal of an IAM user, in the words EC2 uses (it names no action).
            reply = ec2_error_xml("UnauthorizedOperation", UNAUTHORIZED_MESSAGE + _opaque())
            reply_headers = []
        if action and status == 200:
            if action == "RunInstances":
                front._hide(_instance_ids_in_run_answer(reply))
            elif action == "StartInstances":
                front._hide([v for k, v in params.items() if re.match(r"^InstanceId\.\d+$", k)])
            elif action == "DescribeInstances":
                hidden = front._hidden()
                if hidden:
                    reply = _without_instances(reply, hidden)
            elif action == "CreateSnapshot":
                snapshot_id = _created_snapshot_id(reply)
                if snapshot_id:
                    front._snapshot_created(snapshot_id)
                    reply = _late_snapshots(reply, front._snapshot_states(False))
            elif action == "DescribeSnapshots":
                reply = _late_snapshots(reply, front._snapshot_states(True))
            elif action == "CreateImage":
                front._image_created(_image_ids_in_create_answer(reply))
            elif action == "DescribeImages":
                hidden_images, pending_images = front._late_images()
                if hidden_images or pending_images:
                    reply = _late_images(reply, hidden_images, pending_images)
        self._answer(status, reply, reply_headers)

    def _forward(self, body: bytes, headers: dict[str, str]) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.owner._upstream_port, timeout=120)
        try:
            # The Host header is passed as signed: moto checks signatures when IAM is enforced.
            send = {k: v for k, v in headers.items() if k.lower() not in ("connection",)}
            conn.request(self.command, self.path, body=body or None, headers=send)
            response = conn.getresponse()
            reply = response.read()
            return response.status, response.getheaders(), reply
        finally:
            conn.close()

    def _answer(self, status: int, body: bytes, headers: list | None = None) -> None:
        self.send_response(status)
        has_type = False
        for name, value in headers or []:
            if name.lower() in _HOP_BY_HOP:
                continue
            has_type = has_type or name.lower() == "content-type"
            self.send_header(name, value)
        if not has_type:
            self.send_header("Content-Type", "text/xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _not_found(ids: list[str]) -> str:
    if len(ids) == 1:
        return f"The instance ID '{ids[0]}' does not exist"
    return f"The instance IDs '{', '.join(ids)}' do not exist"
