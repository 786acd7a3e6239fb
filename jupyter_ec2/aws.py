"""The EC2 layer: every boto3 call of jupyter-ec2, behind one synchronous class.

:class:`EC2Backend` does what a user would otherwise do in the EC2 console — pick an Ubuntu
image for the instance type's architecture, import a key pair, open SSH to this machine only,
launch, list, stop, start and terminate — with safer defaults than the console: IMDSv2 only,
an encrypted gp3 root volume, no port but 22 and only from the caller's address, and a host key
generated locally and handed over in the user-data so the first SSH connection already verifies it.

Every method blocks; the manager calls them in worker threads. Every boto3 parameter dict is
built by a pure module-level function (``build_*``), tested without AWS. Every AWS failure
leaves this module as a domain error of :mod:`jupyter_ec2.errors` carrying the AWS error code and
a plain message with no account id, ARN, key path or traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import hashlib
import ipaddress
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from traitlets import Float, Instance, Integer, List, Unicode, default, observe, validate
from traitlets.config import LoggingConfigurable
from traitlets.traitlets import TraitError

from ._version import __version__
from .errors import (
    PERMISSION_CODES,
    CloudError,
    ConflictError,
    EC2LauncherError,
    NotFoundError,
    ValidationError,
    permission_denied,
)
from .keys import KeyMaterial, fingerprint_sha256, generate_ed25519, public_key_blob
from .models import (
    Profile,
    validate_profile_fields,
    validate_profile_name,
    validate_region,
)
from .store import StateStore, validate_instance_id

# -- names and constants --------------------------------------------------------------------------

#: Canonical's AWS account: the owner of the official Ubuntu images.
CANONICAL_OWNER_ID = "099720109477"

TAG_MANAGED = "jupyter-ec2:managed"
TAG_OWNER = "jupyter-ec2:owner"
TAG_PROFILE = "jupyter-ec2:profile"
TAG_LAUNCH_ID = "jupyter-ec2:launch-id"
TAG_NAME = "Name"
#: On a snapshot jupyter-ec2 made: the instance whose disk it holds.
TAG_SOURCE_INSTANCE = "jupyter-ec2:source-instance"

SSH_PORT = 22
#: Rule descriptions mark which ingress rules the extension made, and why.
#: AWS allows only a-zA-Z0-9, space and ._-:/()#,@[]+=&;{}!$* here (no apostrophe).
AUTO_RULE_DESCRIPTION = "jupyter-ec2 auto: the public address of this machine"
CONFIGURED_RULE_DESCRIPTION = "jupyter-ec2 configured: ssh_cidrs"
SECURITY_GROUP_DESCRIPTION = "jupyter-ec2: SSH from this machine only (managed; edits are undone)"

#: Ubuntu aliases → (code name, version) as they appear in Canonical's image names.
UBUNTU_RELEASES = {"ubuntu-24.04": ("noble", "24.04"), "ubuntu-22.04": ("jammy", "22.04")}
#: Other image aliases → (owner id, name pattern; ``{arch}`` is amd64 or arm64, login user).
OTHER_IMAGES = {"debian-12": ("136693071363", "debian-12-{arch}-*", "admin")}
#: EC2 architecture → the word Canonical's image names use.
_IMAGE_NAME_ARCH = {"x86_64": "amd64", "arm64": "arm64"}

#: How long a resolved image id is reused before asking again (Canonical publishes often).
IMAGE_CACHE_SECONDS = 6 * 3600

#: EC2 instance states other than ``terminated`` (for the "live instances only" filter).
LIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")

_LAUNCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_OWNER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{3,63}$")
_SUBNET_ID = re.compile(r"^subnet-(?:[0-9a-f]{8}|[0-9a-f]{17})$")


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """An image a launch may use: its id, architecture and root device name."""

    image_id: str
    architecture: str
    root_device_name: str
    name: str = ""
    creation_date: str = ""
    #: The size of the image's root snapshot in GiB (a launch needs at least this), if known.
    root_volume_gb: int | None = None


@dataclass(frozen=True)
class LaunchResult:
    """What :meth:`EC2Backend.launch` created."""

    instance_id: str
    launch_id: str
    region: str
    instance_type: str
    image_id: str
    architecture: str
    key_name: str
    security_group_id: str
    host_key_fingerprint: str
    host_public_key: str
    state: str = "pending"


@dataclass(frozen=True)
class ManagedInstance:
    """One instance this owner manages, as ``describe_instances`` reports it."""

    instance_id: str
    region: str
    state: str
    instance_type: str
    profile: str | None
    launch_id: str | None
    name: str | None
    spot: bool
    launch_time: dt.datetime | None
    public_ip: str | None = None
    private_ip: str | None = None
    public_dns: str | None = None
    private_dns: str | None = None
    image_id: str | None = None
    architecture: str | None = None
    key_name: str | None = None
    vpc_id: str | None = None
    subnet_id: str | None = None
    availability_zone: str | None = None
    security_group_ids: tuple[str, ...] = ()
    state_reason: str | None = None
    state_reason_code: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    #: The EBS volumes attached (BlockDeviceMappings), and when EC2 says it stopped (if known).
    volume_ids: tuple[str, ...] = ()
    stopped_at: dt.datetime | None = None


@dataclass(frozen=True)
class SnapshotInfo:
    """One EBS snapshot jupyter-ec2 made, as EC2 reports it."""

    id: str
    region: str
    volume_id: str
    state: str  # pending | completed | error (| recoverable | recovering)
    progress: str
    size_gb: int | None
    source_instance: str | None
    created_at: str | None
    message: str | None = None


def snapshot_from_description(desc: Mapping[str, Any], region: str) -> SnapshotInfo:
    """A :class:`SnapshotInfo` from a CreateSnapshot answer or a DescribeSnapshots entry."""
    tags = {t["Key"]: t["Value"] for t in desc.get("Tags") or []}
    started = desc.get("StartTime")
    return SnapshotInfo(
        id=desc["SnapshotId"],
        region=region,
        volume_id=desc.get("VolumeId", ""),
        state=desc.get("State", "pending"),
        progress=desc.get("Progress") or "",
        size_gb=desc.get("VolumeSize"),
        source_instance=tags.get(TAG_SOURCE_INSTANCE),
        created_at=started.isoformat() if isinstance(started, dt.datetime) else started,
        message=scrub_message(desc["StateMessage"]) if desc.get("StateMessage") else None,
    )


@dataclass(frozen=True)
class StateChange:
    """The answer of a stop, start or terminate for one instance."""

    instance_id: str
    previous_state: str
    current_state: str


# -- pure helpers: identity, tags and filters -----------------------------------------------------


def default_owner_id() -> str:
    """A stable, non-identifying id of this user on this machine (16 hex digits).

    It is a hash of the login name and the machine id (``/etc/machine-id``; the host name where
    there is none), so two users or two machines never manage each other's instances and the
    tag does not reveal who or where they are.
    """
    try:
        user = getpass.getuser()
    except Exception:  # no login name (containers without a passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    machine = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError), open(path, encoding="ascii", errors="replace") as fh:
            machine = fh.read().strip()
        if machine:
            break
    if not machine:
        machine = socket.gethostname() or f"{uuid.getnode():x}"
    return hashlib.sha256(f"jupyter-ec2\0{user}\0{machine}".encode()).hexdigest()[:16]


def key_pair_name(owner_id: str, public_openssh: str) -> str:
    """The managed key pair's name: owner id plus a short hash of the key.

    The hash makes a new local key (a new state directory) import under a new name instead of
    colliding with, or silently trusting, an older key pair of the same owner.
    """
    _, blob = public_key_blob(public_openssh)
    return f"jupyter-ec2-{owner_id}-{hashlib.sha256(blob).hexdigest()[:8]}"


def security_group_name(owner_id: str) -> str:
    """The managed security group's name (one such group per VPC)."""
    return f"jupyter-ec2-ssh-{owner_id}"


def owner_tags(owner_id: str) -> dict[str, str]:
    """The tags that mark a resource as managed by this owner."""
    return {TAG_MANAGED: "true", TAG_OWNER: owner_id}


def build_instance_tags(
    *,
    owner_id: str,
    profile_name: str,
    launch_id: str,
    label: str,
    user_tags: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every tag of a launched instance and its volume: the profile's own, then ours."""
    tags = dict(user_tags or {})
    tags.update(owner_tags(owner_id))
    tags[TAG_PROFILE] = profile_name
    tags[TAG_LAUNCH_ID] = launch_id
    tags[TAG_NAME] = label
    return tags


def build_tag_specifications(
    tags: Mapping[str, str], resource_types: Sequence[str] = ("instance", "volume")
) -> list[dict[str, Any]]:
    """``TagSpecifications`` putting the same tags on each resource type."""
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    return [{"ResourceType": rt, "Tags": list(tag_list)} for rt in resource_types]


def owner_filters(owner_id: str, *, include_terminated: bool = True) -> list[dict[str, Any]]:
    """``describe_instances`` filters for every instance this owner manages."""
    filters = [
        {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
        {"Name": f"tag:{TAG_OWNER}", "Values": [owner_id]},
    ]
    if not include_terminated:
        filters.append({"Name": "instance-state-name", "Values": list(LIVE_STATES)})
    return filters


def launch_id_filters(owner_id: str, launch_id: str) -> list[dict[str, Any]]:
    """Filters for the instance of one launch."""
    return [*owner_filters(owner_id), {"Name": f"tag:{TAG_LAUNCH_ID}", "Values": [launch_id]}]


def validate_launch_id(value: Any) -> str:
    """A launch id: it is also the ``ClientToken``, so at most 64 ASCII letters, digits, '-'."""
    if not isinstance(value, str) or not _LAUNCH_ID.match(value):
        raise ValidationError("launch_id", "A launch id is 1–64 letters, digits or '-'.")
    return value


def validate_label(value: Any) -> str:
    """The instance's ``Name`` tag: 1–128 printable characters."""
    if not isinstance(value, str):
        raise ValidationError("name", "The instance name must be a string.")
    value = value.strip()
    if not value or len(value) > 128 or not value.isprintable():
        raise ValidationError("name", "The instance name must be 1–128 printable characters.")
    return value


def validate_instance_ids(ids: Any) -> list[str]:
    """A list of instance ids, each validated, duplicates dropped (order kept)."""
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        raise ValidationError("instance_id", "Expected a list of instance ids.")
    seen: dict[str, None] = {}
    for value in ids:
        seen[validate_instance_id(value)] = None
    return list(seen)


# -- pure helpers: images -------------------------------------------------------------------------


def architecture_for(supported: Sequence[str]) -> str:
    """The architecture to launch for an instance type's ``SupportedArchitectures``."""
    if "x86_64" in supported:
        return "x86_64"
    if "arm64" in supported:
        return "arm64"
    raise ValidationError(
        "instance_type",
        f"The instance type's architecture ({', '.join(supported) or 'unknown'}) has no Ubuntu "
        "image; pick an x86_64 or arm64 type.",
    )


def image_name_pattern(alias: str, architecture: str) -> str:
    """The ``describe_images`` name pattern of Canonical's server images for an alias."""
    arch = _IMAGE_NAME_ARCH[architecture]
    if alias in OTHER_IMAGES:
        return OTHER_IMAGES[alias][1].format(arch=arch)
    codename, version = UBUNTU_RELEASES[alias]
    return f"ubuntu/images/hvm-ssd*/ubuntu-{codename}-{version}-{arch}-server-*"


def image_filters(alias: str, architecture: str) -> list[dict[str, Any]]:
    """``describe_images`` filters for the available images of an alias and architecture."""
    return [
        {"Name": "name", "Values": [image_name_pattern(alias, architecture)]},
        {"Name": "state", "Values": ["available"]},
        {"Name": "architecture", "Values": [architecture]},
        {"Name": "root-device-type", "Values": ["ebs"]},
    ]


def newest_image(images: Iterable[Mapping[str, Any]]) -> ImageInfo | None:
    """The newest image by ``CreationDate`` (ties broken by name), or None."""
    best = max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")), default=None)
    return None if best is None else image_info(best)


def image_info(image: Mapping[str, Any]) -> ImageInfo:
    """An :class:`ImageInfo` from one ``describe_images`` entry."""
    root = image.get("RootDeviceName") or "/dev/sda1"
    return ImageInfo(
        image_id=image["ImageId"],
        architecture=image.get("Architecture", "x86_64"),
        root_device_name=root,
        name=image.get("Name", ""),
        creation_date=image.get("CreationDate", ""),
        root_volume_gb=root_volume_gb(image),
    )


def root_volume_gb(image: Mapping[str, Any]) -> int | None:
    """The size in GiB of an image's root EBS snapshot, from its block device mappings."""
    root = image.get("RootDeviceName") or "/dev/sda1"
    for mapping in image.get("BlockDeviceMappings") or []:
        size = (mapping.get("Ebs") or {}).get("VolumeSize")
        if mapping.get("DeviceName") == root and isinstance(size, int):
            return size
    return None


# -- pure helpers: user-data and run_instances ----------------------------------------------------


class _CloudConfigDumper(yaml.SafeDumper):
    """A YAML dumper writing multi-line strings (the PEM key) as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_CloudConfigDumper.add_representer(str, _str_representer)


def build_user_data(host_key: KeyMaterial) -> str:
    """The instance's cloud-config: install our host key and nothing else secret.

    cloud-init deletes the image's host keys (``ssh_deletekeys``) and installs the one generated
    locally for this launch (``ssh_keys``); given ``ssh_keys`` it generates no key of its own, so
    sshd answers only with the pinned ed25519 key (the client asks for that type alone). Root
    login and password SSH stay off. Every key here is valid for cloud-init's schema (``cloud-init
    schema``, tests/test_userdata.py): an invalid one marks the boot degraded.

    User-data is readable by every process on the instance through the metadata service, so the
    Jupyter token never goes here, and the host key handed over here is replaced by one made on
    the instance right after the first verified connection (``c.Provisioner.rotate_host_key``).
    """
    doc = {
        "ssh_deletekeys": True,
        "ssh_keys": {
            "ed25519_private": host_key.private_openssh,
            "ed25519_public": host_key.public_openssh,
        },
        "disable_root": True,
        "ssh_pwauth": False,
    }
    body = yaml.dump(
        doc, Dumper=_CloudConfigDumper, sort_keys=False, default_flow_style=False, width=4096
    )
    return "#cloud-config\n" + body


def host_public_key_from_user_data(user_data: str) -> str | None:
    """The ed25519 public host key (``ssh-ed25519 AAAA…``, no comment) in a cloud-config."""
    try:
        doc = yaml.safe_load(user_data)
    except yaml.YAMLError:
        return None
    keys = doc.get("ssh_keys") if isinstance(doc, dict) else None
    public = keys.get("ed25519_public") if isinstance(keys, dict) else None
    if not isinstance(public, str) or len(public.split()) < 2:
        return None
    return " ".join(public.split()[:2])  # type and key, as the store pins them


def build_block_device_mappings(root_device_name: str, volume_gb: int) -> list[dict[str, Any]]:
    """An encrypted gp3 root volume of ``volume_gb`` that goes away with the instance."""
    return [
        {
            "DeviceName": root_device_name,
            "Ebs": {
                "VolumeSize": volume_gb,
                "VolumeType": "gp3",
                "Encrypted": True,
                "DeleteOnTermination": True,
            },
        }
    ]


def build_market_options(spot: bool) -> dict[str, Any] | None:
    """Spot market options, or None for on-demand.

    A *persistent* request whose interruption behaviour is *stop*: a spot instance that AWS
    reclaims is stopped, not lost, and it can be stopped and started like any other (a one-time
    request can do neither). :meth:`EC2Backend.terminate` cancels the request first, or AWS
    would launch a replacement.
    """
    if not spot:
        return None
    return {
        "MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"},
    }


def build_run_instances_params(
    *,
    profile: Profile,
    image: ImageInfo,
    key_name: str,
    security_group_id: str,
    user_data: str,
    launch_id: str,
    owner_id: str,
    label: str,
    subnet_id: str | None = None,
) -> dict[str, Any]:
    """The ``run_instances`` parameters of one hardened launch (pure, no AWS)."""
    tags = build_instance_tags(
        owner_id=owner_id,
        profile_name=profile.name,
        launch_id=launch_id,
        label=label,
        user_tags=profile.tags,
    )
    params: dict[str, Any] = {
        "ImageId": image.image_id,
        "InstanceType": profile.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": key_name,
        "SecurityGroupIds": [security_group_id],
        "UserData": user_data,
        # The same token on every retry makes EC2 launch at most one instance per launch.
        "ClientToken": launch_id,
        "InstanceInitiatedShutdownBehavior": "stop",
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 1,
        },
        "BlockDeviceMappings": build_block_device_mappings(
            image.root_device_name, profile.volume_gb
        ),
        "TagSpecifications": build_tag_specifications(tags),
    }
    if subnet_id:
        params["SubnetId"] = subnet_id
    market = build_market_options(profile.spot)
    if market:
        params["InstanceMarketOptions"] = market
    return params


# -- pure helpers: SSH access ---------------------------------------------------------------------


def validate_cidr(value: Any, *, field: str = "ssh_cidrs") -> str:
    """A configured CIDR for SSH access, normalised (``203.0.113.7`` → ``203.0.113.7/32``).

    Refused: anything that is not an address or network, host bits set, loopback and
    unspecified addresses, and networks wider than /8 (IPv4) or /32 (IPv6) — above all
    ``0.0.0.0/0`` and ``::/0``, which would open SSH to the whole internet.
    """
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ValidationError(field, f"{str(value)[:40]!r} is not a CIDR such as 203.0.113.7/32.")
    text = value.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ValidationError(
            field, f"{text[:40]!r} is not a CIDR such as 203.0.113.7/32 (or has host bits set)."
        ) from None
    widest = 8 if net.version == 4 else 32
    if net.prefixlen < widest:
        raise ValidationError(
            field,
            f"{net} would open SSH to too much of the internet; list your own address or "
            f"network (at most /{widest} wide).",
        )
    if net.is_loopback or net.is_unspecified or net.is_multicast or net.is_link_local:
        raise ValidationError(
            field, f"{net} cannot reach an EC2 instance; list a routable address."
        )
    return str(net)


def caller_cidr_from_answer(text: Any, *, source: str = "the caller-IP service") -> str:
    """The /32 (or /128) of a caller-IP service's answer, which must be one public address.

    Garbage, private, loopback, link-local, reserved, shared (CGNAT) and documentation
    addresses are refused: a service answering one of these is broken or lying, and a rule for
    it would either not work or open SSH to someone else.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    answer = str(text).strip()
    hint = "set c.EC2Backend.ssh_cidrs to your public address, e.g. ['203.0.113.7/32']"
    try:
        addr = ipaddress.ip_address(answer)
    except ValueError:
        raise ValidationError(
            "ssh_cidrs",
            f"{source} did not answer with an IP address ({answer[:40]!r}); {hint}.",
        ) from None
    if not addr.is_global or addr.is_multicast:
        raise ValidationError(
            "ssh_cidrs",
            f"{source} answered {addr}, which is not a public address; refusing to open SSH "
            f"to it; {hint}.",
        )
    return f"{addr}/{addr.max_prefixlen}"


def build_ssh_permissions(cidrs: Mapping[str, str]) -> list[dict[str, Any]]:
    """``IpPermissions`` for tcp/22 from each CIDR (CIDR → rule description)."""
    v4 = [{"CidrIp": c, "Description": d} for c, d in cidrs.items() if ":" not in c]
    v6 = [{"CidrIpv6": c, "Description": d} for c, d in cidrs.items() if ":" in c]
    if not v4 and not v6:
        return []
    perm: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT}
    if v4:
        perm["IpRanges"] = v4
    if v6:
        perm["Ipv6Ranges"] = v6
    return [perm]


def plan_ingress(
    current: Iterable[Mapping[str, Any]], desired: Mapping[str, str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """What to revoke and what to authorize so a group holds exactly the desired SSH rules.

    ``current`` is a group's ``IpPermissions``; ``desired`` maps CIDR → description. Returns
    (permissions to revoke, CIDRs to authorize). Anything that is not tcp/22 from a desired
    CIDR with its description — another port, another source, a stale auto rule — is revoked.
    """
    keep: set[str] = set()
    revoke: list[dict[str, Any]] = []
    for perm in current:
        is_ssh = (
            perm.get("IpProtocol") == "tcp"
            and perm.get("FromPort") == SSH_PORT
            and perm.get("ToPort") == SSH_PORT
        )
        unwanted: dict[str, Any] = {}
        for key, cidr_key in (("IpRanges", "CidrIp"), ("Ipv6Ranges", "CidrIpv6")):
            gone = []
            for rng in perm.get(key) or []:
                cidr = rng.get(cidr_key)
                if is_ssh and cidr in desired and rng.get("Description") == desired[cidr]:
                    keep.add(cidr)
                else:
                    gone.append({cidr_key: cidr})
            if gone:
                unwanted[key] = gone
        pairs = [
            {k: v for k, v in pair.items() if k in ("GroupId", "UserId")}
            for pair in perm.get("UserIdGroupPairs") or []
        ]
        if pairs:
            unwanted["UserIdGroupPairs"] = pairs
        prefixes = [{"PrefixListId": p["PrefixListId"]} for p in perm.get("PrefixListIds") or []]
        if prefixes:
            unwanted["PrefixListIds"] = prefixes
        if unwanted:
            base = {"IpProtocol": perm.get("IpProtocol")}
            if perm.get("FromPort") is not None:
                base["FromPort"] = perm["FromPort"]
            if perm.get("ToPort") is not None:
                base["ToPort"] = perm["ToPort"]
            revoke.append({**base, **unwanted})
    authorize = {c: d for c, d in desired.items() if c not in keep}
    return revoke, authorize


# -- pure helpers: discovery ----------------------------------------------------------------------

_STATE_REASONS = {
    "Server.SpotInstanceShutdown": "AWS stopped this spot instance to reclaim capacity "
    "(spot interruption).",
    "Server.SpotInstanceTermination": "AWS terminated this spot instance to reclaim capacity "
    "(spot interruption).",
    "Client.UserInitiatedShutdown": "Stopped or terminated by a user (API or console).",
    "Client.UserInitiatedHibernate": "Hibernated by a user.",
    "Client.InstanceInitiatedShutdown": "Shut down from inside the instance "
    "(for example the idle auto-stop).",
    "Server.ScheduledStop": "Stopped by AWS for scheduled retirement or maintenance.",
    "Server.InsufficientInstanceCapacity": "AWS did not have enough capacity for this "
    "instance type.",
    "Server.InternalError": "An internal AWS error stopped the instance.",
    "Client.InternalError": "The instance could not start (often an EBS encryption key it "
    "may not use).",
    "Client.VolumeLimitExceeded": "The account's EBS volume limit was reached.",
    "Client.InvalidSnapshot.NotFound": "The image's disk snapshot no longer exists.",
}


def state_reason(description: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(code, plain message) of why an instance is in its state, or (None, None)."""
    reason = description.get("StateReason") or {}
    code = (reason.get("Code") or "").strip() or None
    if code:
        text = _STATE_REASONS.get(code)
        if text is None:
            text = scrub_message(reason.get("Message") or code)
            text = re.sub(r"^[A-Za-z.]+:\s*", "", text) or code
        return code, text
    state = (description.get("State") or {}).get("Name")
    transition = (description.get("StateTransitionReason") or "").strip()
    if transition and state not in ("pending", "running"):
        # "User initiated (2024-05-01 10:00:00 GMT)" → "User initiated"
        return None, scrub_message(re.sub(r"\s*\(\d{4}-[^)]*\)\s*$", "", transition))
    return None, None


def managed_instance_from_description(
    description: Mapping[str, Any], region: str
) -> ManagedInstance:
    """A :class:`ManagedInstance` from one ``describe_instances`` entry (pure)."""
    tags = {t["Key"]: t["Value"] for t in description.get("Tags") or []}
    code, reason = state_reason(description)
    return ManagedInstance(
        instance_id=description["InstanceId"],
        region=region,
        state=(description.get("State") or {}).get("Name", "unknown"),
        instance_type=description.get("InstanceType", ""),
        profile=tags.get(TAG_PROFILE),
        launch_id=tags.get(TAG_LAUNCH_ID),
        name=tags.get(TAG_NAME),
        spot=description.get("InstanceLifecycle") == "spot",
        launch_time=description.get("LaunchTime"),
        public_ip=description.get("PublicIpAddress") or None,
        private_ip=description.get("PrivateIpAddress") or None,
        public_dns=description.get("PublicDnsName") or None,
        private_dns=description.get("PrivateDnsName") or None,
        image_id=description.get("ImageId"),
        architecture=description.get("Architecture"),
        key_name=description.get("KeyName"),
        vpc_id=description.get("VpcId"),
        subnet_id=description.get("SubnetId"),
        availability_zone=(description.get("Placement") or {}).get("AvailabilityZone"),
        security_group_ids=tuple(g["GroupId"] for g in description.get("SecurityGroups") or []),
        state_reason=reason,
        state_reason_code=code,
        tags=tags,
        volume_ids=tuple(
            m["Ebs"]["VolumeId"]
            for m in description.get("BlockDeviceMappings") or []
            if (m.get("Ebs") or {}).get("VolumeId")
        ),
        stopped_at=transition_time(description)
        if (description.get("State") or {}).get("Name") == "stopped"
        else None,
    )


def transition_time(description: Mapping[str, Any]) -> dt.datetime | None:
    """When the last state transition happened, from ``StateTransitionReason`` ("User initiated
    (2024-05-01 10:00:00 GMT)"), or None when EC2 gives no time there."""
    text = description.get("StateTransitionReason") or ""
    match = re.search(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) GMT\)", text)
    if not match:
        return None
    moment = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
    return moment.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class ResizeFacts:
    """What a type change of one instance depends on (from its describe entry, pure)."""

    instance_id: str
    region: str
    state: str
    instance_type: str
    availability_zone: str | None
    architecture: str | None
    ena_support: bool | None  # None: EC2 did not say
    boot_mode: str | None
    virtualization_type: str | None
    image_id: str | None
    spot_request_id: str | None
    spot: bool
    root_volume_id: str | None
    spot_request_type: str | None = None
    image_ena_support: bool | None = None
    image_boot_mode: str | None = None


def resize_facts_from_description(description: Mapping[str, Any], region: str) -> ResizeFacts:
    """The :class:`ResizeFacts` of one ``describe_instances`` entry (pure)."""
    root = description.get("RootDeviceName")
    volume = None
    for mapping in description.get("BlockDeviceMappings") or []:
        if mapping.get("DeviceName") == root or volume is None:
            volume = (mapping.get("Ebs") or {}).get("VolumeId") or volume
    ena = description.get("EnaSupport")
    return ResizeFacts(
        instance_id=description["InstanceId"],
        region=region,
        state=(description.get("State") or {}).get("Name", "unknown"),
        instance_type=description.get("InstanceType", ""),
        availability_zone=(description.get("Placement") or {}).get("AvailabilityZone"),
        architecture=description.get("Architecture"),
        ena_support=ena if isinstance(ena, bool) else None,
        boot_mode=description.get("CurrentInstanceBootMode") or description.get("BootMode"),
        virtualization_type=description.get("VirtualizationType"),
        image_id=description.get("ImageId"),
        spot_request_id=description.get("SpotInstanceRequestId"),
        spot=description.get("InstanceLifecycle") == "spot",
        root_volume_id=volume,
    )


# -- pure helpers: saved images (issue 15) --------------------------------------------------------

TAG_SOURCE_INSTANCE = "jupyter-ec2:source-instance"
TAG_ENVIRONMENT = "jupyter-ec2:environment"
#: The characters AWS allows in an image name (3–128 of them; the CreateImage API reference).
_IMAGE_NAME = re.compile(r"[A-Za-z0-9()\[\] ./\-'@_]{3,128}", re.ASCII)
_IMAGE_NAME_BAD = re.compile(r"[^A-Za-z0-9()\[\] ./\-'@_]", re.ASCII)


@dataclass(frozen=True)
class SavedImage:
    """An image this owner saved from a managed instance, as ``describe_images`` reports it."""

    image_id: str
    region: str
    name: str
    state: str
    source_instance: str | None
    created_at: str
    size_gb: int | None
    snapshot_ids: tuple[str, ...]
    environment: str | None = None
    architecture: str | None = None
    label: str | None = None


def describe_environment(environment: Mapping[str, Any] | None) -> str:
    """A tag value (≤ 255 characters) saying which environment an image holds."""
    env = dict(environment or {})
    kind = str(env.get("kind", "unknown"))
    if kind == "existing":
        text = f"existing {env.get('python', '')}".strip()
    else:
        packages = [str(p) for p in env.get("packages") or []]
        text = f"{kind}: {', '.join(packages) or 'no extra packages'}"
    text = " ".join(text.split())
    return text if len(text) <= 255 else text[:254] + "…"


def image_name_for(label: str, instance_id: str, when: dt.datetime) -> str:
    """The AMI ``Name``: AWS allows 3–128 of ``A-Za-z0-9()[] ./-'@_`` and wants it unique.

    The user's label is kept where AWS allows its characters (others become ``-``); the time
    stamp makes two images of one instance differ.
    """
    cleaned = _IMAGE_NAME_BAD.sub("-", label).strip() or "image"
    stamp = when.strftime("%Y%m%d-%H%M%S")
    suffix = f" {instance_id} {stamp}"
    return (cleaned[: 128 - len(suffix)] + suffix).strip()


def build_image_tags(
    *,
    owner_id: str,
    instance_id: str,
    label: str,
    environment: Mapping[str, Any] | None,
    profile_name: str | None = None,
) -> dict[str, str]:
    """The tags of a saved image and its snapshots: managed, with source and environment."""
    tags = owner_tags(owner_id)
    tags[TAG_SOURCE_INSTANCE] = instance_id
    tags[TAG_ENVIRONMENT] = describe_environment(environment)
    if profile_name:
        tags[TAG_PROFILE] = profile_name
    tags[TAG_NAME] = label[:255]
    return tags


def build_create_image_params(
    *, instance_id: str, name: str, tags: Mapping[str, str], reboot: bool = False
) -> dict[str, Any]:
    """``create_image`` parameters, with the tags on the image and on its snapshots.

    ``reboot`` lets EC2 shut the running instance down and boot it again around the snapshot
    (a consistent image; the notebook restarts); without it EC2 snapshots the disk while it is
    in use, and files being written may be inconsistent in the image.
    """
    if not _IMAGE_NAME.fullmatch(name):
        raise ValidationError("name", f"{name!r:.60} is not a valid image name for AWS.")
    return {
        "InstanceId": instance_id,
        "Name": name,
        "Description": "Saved by jupyter-ec2 from " + instance_id,
        "NoReboot": not reboot,
        "TagSpecifications": build_tag_specifications(tags, ("image", "snapshot")),
    }


def owner_image_filters(owner_id: str) -> list[dict[str, Any]]:
    """``describe_images`` filters for every image this owner saved."""
    return [
        {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
        {"Name": f"tag:{TAG_OWNER}", "Values": [owner_id]},
    ]


def saved_image_from_description(image: Mapping[str, Any], region: str) -> SavedImage:
    """A :class:`SavedImage` from one ``describe_images`` entry (pure)."""
    tags = {t["Key"]: t["Value"] for t in image.get("Tags") or []}
    snapshots = tuple(
        (m.get("Ebs") or {}).get("SnapshotId")
        for m in image.get("BlockDeviceMappings") or []
        if (m.get("Ebs") or {}).get("SnapshotId")
    )
    sizes = [
        (m.get("Ebs") or {}).get("VolumeSize")
        for m in image.get("BlockDeviceMappings") or []
        if isinstance((m.get("Ebs") or {}).get("VolumeSize"), int)
    ]
    created = image.get("CreationDate") or ""
    return SavedImage(
        image_id=image["ImageId"],
        region=region,
        name=image.get("Name") or "",
        state=str(image.get("State") or "pending"),
        source_instance=tags.get(TAG_SOURCE_INSTANCE),
        created_at=str(created),
        size_gb=sum(sizes) if sizes else None,
        snapshot_ids=snapshots,
        environment=tags.get(TAG_ENVIRONMENT),
        architecture=image.get("Architecture"),
        label=tags.get(TAG_NAME),
    )


def check_volume_fits(image: ImageInfo, volume_gb: int) -> None:
    """Refuse (400 naming ``volume_gb``) a root volume smaller than the image's snapshot."""
    if image.root_volume_gb is not None and volume_gb < image.root_volume_gb:
        raise ValidationError(
            "volume_gb",
            f"Image {image.image_id} holds a {image.root_volume_gb} GB disk: volume_gb must be "
            f"at least {image.root_volume_gb}, not {volume_gb}.",
        )


# -- pure helpers: errors -------------------------------------------------------------------------

_ARN = re.compile(r"arn:[A-Za-z0-9-]+:[^\s'\"<>,;)]*")
_ACCOUNT = re.compile(r"(?<!\d)\d{12}(?!\d)")
_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,20}\b")
_PATH = re.compile(r"(?:~|(?<![\w.:/-]))(?:/[\w.@+-]+){2,}/?")
_ENCODED_AUTH = re.compile(r"\s*Encoded authorization failure message:.*", re.DOTALL)


def scrub_message(text: str, limit: int = 300) -> str:
    """A message safe to show: no ARN, account id, access key id, file path, or long blob."""
    text = _ENCODED_AUTH.sub("", str(text))
    text = _ARN.sub("<arn>", text)
    text = _ACCESS_KEY.sub("<access-key>", text)
    text = _ACCOUNT.sub("<account>", text)
    text = _PATH.sub("<path>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_CREDENTIALS_HELP = (
    "AWS credentials are not configured: run `aws configure` (or `aws sso login`), or set "
    "c.EC2Backend.aws_profile / AWS_PROFILE, or export AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, then try again."
)
_AUTH_CODES = {
    "AuthFailure",
    "InvalidClientTokenId",
    "ExpiredToken",
    "RequestExpired",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
}
_NOT_FOUND_CODES = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}


def translate_client_error(err: Any, *, action: str, service: str = "ec2") -> EC2LauncherError:
    """A domain error for a botocore ``ClientError`` (pure: it only reads ``err.response``)."""
    info = (getattr(err, "response", None) or {}).get("Error") or {}
    code = str(info.get("Code") or "Unknown")
    message = scrub_message(info.get("Message") or "")
    lowered = message.lower()
    if code == "InvalidInstanceType" or (
        code in ("InvalidParameterValue", "Unsupported", "InvalidParameterCombination")
        and ("instance type" in lowered or "instancetype" in lowered)
    ):
        return ValidationError(
            "instance_type", f"The instance type was refused ({code}): {message}"
        )
    if code.startswith("InvalidAMIID"):
        return ValidationError("ami", f"The image was refused ({code}): {message}")
    if code.startswith("InvalidSubnetID") or code.startswith("InvalidSubnet"):
        return ValidationError("subnet_id", f"The subnet was refused ({code}): {message}")
    if code == "InvalidBlockDeviceMapping" or (
        code == "InvalidParameterValue" and "volume" in lowered and "size" in lowered
    ):
        return ValidationError("volume_gb", f"The volume was refused ({code}): {message}")
    if code in _NOT_FOUND_CODES:
        return NotFoundError(f"No such instance ({code}): {message}", code=code)
    if code == "IncorrectInstanceState":
        return ConflictError(
            f"Could not {action} in its current state ({code}): {message}", code=code
        )
    if code in PERMISSION_CODES:
        return permission_denied(
            str(getattr(err, "operation_name", "") or ""),
            service,
            str(info.get("Message") or ""),
            action=action,
            code=code,
        )
    if code in _AUTH_CODES:
        return CloudError(
            f"AWS refused the credentials; could not {action} ({code}): "
            f"{message or 'not authorized'}. Check the AWS profile and its permissions.",
            code=code,
        )
    if code == "OptInRequired":
        return CloudError(
            f"Could not {action} ({code}): the account has not enabled this region or image. "
            f"{message}".strip(),
            code=code,
        )
    return CloudError(f"Could not {action} ({code}): {message or 'no details'}", code=code)


def translate_error(
    err: BaseException, *, action: str, region: str | None = None
) -> EC2LauncherError:
    """A domain error for any boto3/botocore failure (credentials, network, AWS answers)."""
    from botocore import exceptions as bx

    if isinstance(err, EC2LauncherError):
        return err
    if isinstance(err, bx.ClientError):
        return translate_client_error(err, action=action)
    sso_errors = tuple(
        getattr(bx, name)
        for name in ("SSOTokenLoadError", "TokenRetrievalError", "UnauthorizedSSOTokenError")
        if hasattr(bx, name)
    )
    if isinstance(err, bx.NoCredentialsError | bx.PartialCredentialsError) or (
        sso_errors and isinstance(err, sso_errors)
    ):
        return CloudError(_CREDENTIALS_HELP, code="NoCredentials")
    if isinstance(err, bx.CredentialRetrievalError):
        return CloudError(
            "AWS credentials could not be loaded (the credential process or SSO login failed): "
            + _CREDENTIALS_HELP.split(": ", 1)[1],
            code="NoCredentials",
        )
    if isinstance(err, bx.ProfileNotFound):
        return ValidationError(
            "aws_profile",
            "The AWS profile in c.EC2Backend.aws_profile (or AWS_PROFILE) is not in the AWS "
            "config; run `aws configure --profile NAME` or fix the name.",
        )
    if isinstance(
        err,
        bx.ConnectionError | bx.HTTPClientError,
    ):
        where = f" for region {region}" if region else ""
        return CloudError(
            f"Could not reach the EC2 endpoint{where} ({type(err).__name__}): check the network "
            "connection or c.EC2Backend.endpoint_url, then try again.",
            code="EndpointConnectionError",
        )
    if isinstance(err, bx.BotoCoreError):
        return CloudError(
            f"Could not {action} ({type(err).__name__}): {scrub_message(str(err))}",
            code=type(err).__name__,
        )
    raise TypeError(f"not an AWS error: {type(err).__name__}")


_LOADER_LOCK = threading.Lock()
_LOADER: Any = None


def _new_botocore_session() -> Any:
    """A new botocore session that shares one model loader with every other backend.

    Loading EC2's service model costs 0.1–0.5 s per session; the loaded models are read-only,
    so every backend in the process (one per test, in the test suite) can share them.
    """
    import botocore.loaders
    import botocore.session

    global _LOADER
    session = botocore.session.Session()
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader(session.get_config_variable("data_path"))
        session.register_component("data_loader", _LOADER)
    return session


# -- the backend ----------------------------------------------------------------------------------


class EC2Backend(LoggingConfigurable):
    """Every EC2 call of jupyter-ec2: images, key pair, security group, launch and actions.

    Methods block (the manager runs them in worker threads) and are safe to call from several
    threads at once. A ``store`` (:class:`~jupyter_ec2.store.StateStore`) must be given for
    :meth:`launch`, which keeps the key pair and pins host keys there.
    """

    region = Unicode(
        help="""The AWS region profiles launch in unless they name their own; it must be a real EC2
        region of the commercial AWS partition such as 'us-east-1' or 'eu-central-1'. Default:
        AWS_REGION, else AWS_DEFAULT_REGION, else the region of the AWS profile, else
        'us-east-1'.""",
    ).tag(config=True)

    aws_profile = Unicode(
        None,
        allow_none=True,
        help="""A named profile of ~/.aws/config to take credentials from. None: the standard
        boto3 chain (environment, AWS_PROFILE, ~/.aws, SSO, instance role).""",
    ).tag(config=True)

    endpoint_url = Unicode(
        None,
        allow_none=True,
        help="Another EC2-compatible endpoint (the moto simulated cloud, LocalStack). None: AWS.",
    ).tag(config=True)

    subnet_id = Unicode(
        None,
        allow_none=True,
        help="""A subnet (subnet-…) of EC2Backend.region to launch into, with internet access
        and public IPs. None: the default VPC's default subnet. Launches in other regions always
        use that region's default VPC.""",
    ).tag(config=True)

    ssh_cidrs = List(
        Unicode(),
        default_value=["auto"],
        help="""Where SSH (tcp/22, the only port ever opened) is allowed from. 'auto': this
        machine's public /32 as seen by EC2Backend.caller_ip_url, refreshed at every launch and
        start; or CIDRs such as '203.0.113.7/32' (at most /8 wide; 0.0.0.0/0 is refused).""",
    ).tag(config=True)

    caller_ip_url = Unicode(
        "https://checkip.amazonaws.com",
        help="""An http(s) service answering with the caller's public IP address in plain text,
        used by ssh_cidrs 'auto'.""",
    ).tag(config=True)

    caller_ip_timeout = Float(
        5.0, min=0.1, max=60.0, help="Seconds to wait for the caller-IP service."
    ).tag(config=True)

    max_attempts = Integer(
        5,
        min=1,
        max=20,
        help="""Total attempts of each AWS call (the first one included), with botocore's
        standard retry mode: throttling and transient errors are retried with backoff.""",
    ).tag(config=True)

    owner_id = Unicode(
        help="""The id tagged on every resource this user on this machine creates
        (jupyter-ec2:owner); only instances carrying it are listed, stopped or terminated.
        Default: a hash of the login name and the machine id.""",
    ).tag(config=True)

    store = Instance(
        StateStore,
        allow_none=True,
        help="The state directory (key pair, pinned host keys); given by the extension app.",
    )

    def __init__(self, **kwargs: Any):
        # Set before super().__init__: trait observers fire while it applies the kwargs.
        self._lock = threading.RLock()
        self._session: Any = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._group_lock = threading.Lock()
        self._images: dict[tuple[str, str, str], tuple[float, ImageInfo]] = {}
        self._type_arch: dict[tuple[str, str], str] = {}
        super().__init__(**kwargs)

    # -- trait defaults and checks ------------------------------------------------------------

    @default("region")
    def _default_region(self) -> str:
        """AWS_REGION, AWS_DEFAULT_REGION, the AWS profile's own region, then us-east-1."""
        candidates = [
            ("AWS_REGION", os.environ.get("AWS_REGION")),
            ("AWS_DEFAULT_REGION", os.environ.get("AWS_DEFAULT_REGION")),
            ("the AWS profile's region", self._profile_region()),
        ]
        for source, value in candidates:
            if not value:
                continue
            try:
                return validate_region(value.strip())
            except ValidationError as err:
                self.log.warning("Ignoring %s: %s", source, err.message)
        return "us-east-1"

    def _profile_region(self) -> str | None:
        """The ``region`` of the AWS profile (aws_profile, AWS_PROFILE or default) in ~/.aws."""
        import botocore.session
        from botocore.exceptions import BotoCoreError

        try:
            session = botocore.session.Session(profile=self.aws_profile or None)
            value = session.get_scoped_config().get("region")
        except (BotoCoreError, OSError, ValueError):
            return None
        return value if isinstance(value, str) else None

    @default("owner_id")
    def _default_owner_id(self) -> str:
        return default_owner_id()

    @validate("owner_id")
    def _check_owner_id(self, proposal: Any) -> str:
        value = proposal["value"]
        if not _OWNER_ID.match(value):
            raise TraitError("owner_id must be 4–64 lower-case letters, digits or '-'.")
        return value

    @validate("region")
    def _check_region(self, proposal: Any) -> str:
        try:
            return validate_region(proposal["value"])
        except ValidationError as err:
            raise TraitError(err.message) from None

    @validate("subnet_id")
    def _check_subnet(self, proposal: Any) -> str | None:
        value = proposal["value"]
        if value is not None and not _SUBNET_ID.match(value):
            raise TraitError(f"subnet_id {value!r:.40} is not a subnet id (subnet-…).")
        return value

    @validate("ssh_cidrs")
    def _check_ssh_cidrs(self, proposal: Any) -> list[str]:
        values = list(proposal["value"])
        if not values:
            raise TraitError("ssh_cidrs must list 'auto' or at least one CIDR.")
        try:
            return [v if v == "auto" else validate_cidr(v) for v in values]
        except ValidationError as err:
            raise TraitError(err.message) from None

    @validate("caller_ip_url")
    def _check_caller_ip_url(self, proposal: Any) -> str:
        value = proposal["value"]
        if not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
            raise TraitError("caller_ip_url must be an http:// or https:// URL.")
        return value

    @observe("aws_profile", "endpoint_url", "max_attempts")
    def _drop_clients(self, change: Any) -> None:
        with self._lock:
            self._session = None
            self._clients.clear()

    # -- clients ----------------------------------------------------------------------------------

    def client(self, region: str | None = None, service: str = "ec2") -> Any:
        """The (cached, thread-safe) client of a region (EC2, or ``pricing`` for $/h).

        The region is checked first; ``endpoint_url`` applies to every service, as an
        EC2-compatible endpoint (moto, LocalStack) serves them all on one URL.
        """
        region = validate_region(region or self.region)
        with self._lock:
            cached = self._clients.get((service, region))
            if cached is not None:
                return cached
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                if self._session is None:
                    self._session = boto3.session.Session(
                        botocore_session=_new_botocore_session(),
                        profile_name=self.aws_profile or None,
                    )
                config = Config(
                    region_name=region,
                    retries={"mode": "standard", "total_max_attempts": self.max_attempts},
                    connect_timeout=10,
                    read_timeout=60,
                    user_agent_extra=f"jupyter-ec2/{__version__}",
                )
                client = self._session.client(
                    service,
                    region_name=region,
                    endpoint_url=self.endpoint_url or None,
                    config=config,
                )
            except (ClientError, BotoCoreError) as err:
                raise translate_error(err, action="connect", region=region) from err
            self._clients[(service, region)] = client
            return client

    def session(self) -> Any:
        """The boto3 session every client is made from (built on first use), e.g. to read
        where its credentials come from."""
        self.client(self.region, service="sts")
        with self._lock:
            return self._session

    @contextlib.contextmanager
    def _aws(self, action: str, region: str | None = None) -> Iterator[None]:
        """Turn every boto3 failure inside the block into a domain error."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError) as err:
            raise translate_error(err, action=action, region=region) from err

    # -- instance types and images --------------------------------------------------------------

    def instance_type_architecture(self, instance_type: str, region: str | None = None) -> str:
        """The architecture of an instance type offered in the region (ValidationError if not)."""
        region = validate_region(region or self.region)
        key = (region, instance_type)
        with self._lock:
            if key in self._type_arch:
                return self._type_arch[key]
        ec2 = self.client(region)
        with self._aws("check the instance type", region):
            offered = ec2.describe_instance_type_offerings(
                LocationType="region",
                Filters=[{"Name": "instance-type", "Values": [instance_type]}],
            ).get("InstanceTypeOfferings", [])
            if not any(o.get("InstanceType") == instance_type for o in offered):
                raise ValidationError(
                    "instance_type",
                    f"Instance type {instance_type} is not offered in {region}; pick another type "
                    "or region.",
                )
            types = ec2.describe_instance_types(InstanceTypes=[instance_type]).get(
                "InstanceTypes", []
            )
        if not types:
            raise ValidationError("instance_type", f"Instance type {instance_type} is unknown.")
        supported = (types[0].get("ProcessorInfo") or {}).get("SupportedArchitectures") or []
        arch = architecture_for(supported)
        with self._lock:
            self._type_arch[key] = arch
        return arch

    def resolve_image(self, ami: str, architecture: str, region: str | None = None) -> ImageInfo:
        """The image for an alias (newest Canonical image) or an explicit, existing ``ami-…`` id."""
        region = validate_region(region or self.region)
        ec2 = self.client(region)
        if ami in UBUNTU_RELEASES or ami in OTHER_IMAGES:
            key = (region, architecture, ami)
            with self._lock:
                hit = self._images.get(key)
                if hit and time.monotonic() - hit[0] < IMAGE_CACHE_SECONDS:
                    return hit[1]
            with self._aws("find the Ubuntu image", region):
                # Canonical publishes many images a month: the answer may come in pages.
                pages = ec2.get_paginator("describe_images").paginate(
                    Owners=[OTHER_IMAGES[ami][0] if ami in OTHER_IMAGES else CANONICAL_OWNER_ID],
                    Filters=image_filters(ami, architecture),
                )
                images = [image for page in pages for image in page.get("Images", [])]
            image = newest_image(images)
            if image is None:
                raise ValidationError(
                    "ami",
                    f"No {ami} {architecture} image from Canonical was found in {region}; "
                    "pick another image or region.",
                )
            with self._lock:
                self._images[key] = (time.monotonic(), image)
            return image
        with self._aws("check the image", region):
            try:
                images = ec2.describe_images(ImageIds=[ami]).get("Images", [])
            except Exception as err:
                code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code", "")
                if str(code).startswith("InvalidAMIID"):
                    images = []
                else:
                    raise
        if not images or images[0].get("State", "available") != "available":
            raise ValidationError(
                "ami", f"Image {ami} does not exist in {region} (or is not available)."
            )
        image = image_info(images[0])
        if image.architecture != architecture:
            raise ValidationError(
                "ami",
                f"Image {ami} is {image.architecture} but the instance type is {architecture}.",
            )
        return image

    # -- key pair --------------------------------------------------------------------------------

    def _require_store(self) -> StateStore:
        if self.store is None:
            raise RuntimeError("EC2Backend needs a StateStore (EC2Backend(store=...)) to launch.")
        return self.store

    def ensure_key_pair(self, region: str | None = None) -> str:
        """Import the managed key pair's public half into the region (once) and return its name."""
        region = validate_region(region or self.region)
        material = self._require_store().load_or_create_key_pair()
        name = key_pair_name(self.owner_id, material.public_openssh)
        _, local_blob = public_key_blob(material.public_openssh)
        ec2 = self.client(region)
        with self._aws("import the key pair", region):
            try:
                found = ec2.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)["KeyPairs"]
            except Exception as err:
                code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code", "")
                if code != "InvalidKeyPair.NotFound":
                    raise
                found = []
            if found:
                remote = found[0].get("PublicKey")
                if remote and public_key_blob(remote)[1] != local_blob:
                    raise CloudError(
                        f"A key pair named {name} exists in {region} with another key; delete it "
                        "in the EC2 console so it can be imported again.",
                        code="KeyPairMismatch",
                    )
                return name
            try:
                ec2.import_key_pair(
                    KeyName=name,
                    PublicKeyMaterial=material.public_openssh.encode(),
                    TagSpecifications=[
                        {
                            "ResourceType": "key-pair",
                            "Tags": [
                                {"Key": k, "Value": v} for k, v in owner_tags(self.owner_id).items()
                            ],
                        }
                    ],
                )
            except Exception as err:
                code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code", "")
                if code != "InvalidKeyPair.Duplicate":  # another thread imported it meanwhile
                    raise
        self.log.info("Imported the jupyter-ec2 key pair %s into %s", name, region)
        return name

    # -- SSH access ------------------------------------------------------------------------------

    def fetch_caller_ip(self) -> str:
        """This machine's public /32 (or /128) according to ``caller_ip_url``."""
        url = self.caller_ip_url
        hint = "set c.EC2Backend.ssh_cidrs to your public address, e.g. ['203.0.113.7/32']"
        # The trait admits http(s) URLs only, so urllib's file: and ftp: handlers cannot be hit.
        headers = {"User-Agent": f"jupyter-ec2/{__version__}"}
        request = urllib.request.Request(url, headers=headers)  # noqa: S310
        try:
            # Never through a proxy (HTTP(S)_PROXY): the service would see the proxy's address,
            # and port 22 would open to the proxy instead of this machine.
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(request, timeout=self.caller_ip_timeout) as resp:
                body = resp.read(100)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or type(err).__name__
            raise ValidationError(
                "ssh_cidrs",
                f"Could not ask the caller-IP service for this machine's public address "
                f"({scrub_message(str(reason), 80)}); {hint}.",
            ) from None
        return caller_cidr_from_answer(body, source="The caller-IP service")

    def ssh_access_cidrs(self) -> dict[str, str]:
        """CIDR → rule description of every source SSH is to be allowed from, resolved now."""
        cidrs: dict[str, str] = {}
        for entry in self.ssh_cidrs:
            if entry == "auto":
                cidrs.setdefault(self.fetch_caller_ip(), AUTO_RULE_DESCRIPTION)
            else:
                cidrs[validate_cidr(entry)] = CONFIGURED_RULE_DESCRIPTION
        if not cidrs:
            raise ValidationError("ssh_cidrs", "ssh_cidrs must list 'auto' or at least one CIDR.")
        return cidrs

    def _network(self, region: str) -> tuple[str, str | None]:
        """(VPC id, subnet id or None) a launch in ``region`` goes to."""
        ec2 = self.client(region)
        with self._aws("find the network", region):
            if self.subnet_id and region == self.region:
                subnets = ec2.describe_subnets(SubnetIds=[self.subnet_id]).get("Subnets", [])
                if not subnets:
                    raise ValidationError("subnet_id", f"Subnet {self.subnet_id} does not exist.")
                return subnets[0]["VpcId"], self.subnet_id
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}]).get(
                "Vpcs", []
            )
        if not vpcs:
            raise ValidationError(
                "subnet_id",
                f"{region} has no default VPC; set c.EC2Backend.subnet_id to a subnet with "
                "internet access (or launch in another region).",
            )
        return vpcs[0]["VpcId"], None

    def ensure_security_group(
        self, vpc_id: str, region: str | None = None, cidrs: Mapping[str, str] | None = None
    ) -> str:
        """The managed group of a VPC, created if needed, holding exactly tcp/22 from ``cidrs``."""
        region = validate_region(region or self.region)
        cidrs = self.ssh_access_cidrs() if cidrs is None else cidrs
        ec2 = self.client(region)
        name = security_group_name(self.owner_id)
        # Launches run in worker threads: one at a time may create or change the group.
        with self._group_lock, self._aws("set up the security group", region):
            group = self._find_group(ec2, vpc_id, name)
            if group is None:
                try:
                    group_id = ec2.create_security_group(
                        GroupName=name,
                        Description=SECURITY_GROUP_DESCRIPTION,
                        VpcId=vpc_id,
                        TagSpecifications=[
                            {
                                "ResourceType": "security-group",
                                "Tags": [
                                    {"Key": k, "Value": v}
                                    for k, v in {
                                        **owner_tags(self.owner_id),
                                        TAG_NAME: name,
                                    }.items()
                                ],
                            }
                        ],
                    )["GroupId"]
                    self.log.info("Created security group %s in %s", group_id, vpc_id)
                except Exception as err:
                    code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code", "")
                    if code != "InvalidGroup.Duplicate":
                        raise
                    group = self._find_group(ec2, vpc_id, name)
                    if group is None:
                        raise
                    group_id = group["GroupId"]
                else:
                    group = {"GroupId": group_id, "IpPermissions": []}
            self._reconcile_ingress(ec2, group, cidrs)
        return group["GroupId"]

    @staticmethod
    def _find_group(ec2: Any, vpc_id: str, name: str) -> dict[str, Any] | None:
        groups = ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "group-name", "Values": [name]},
            ]
        ).get("SecurityGroups", [])
        return groups[0] if groups else None

    def _reconcile_ingress(
        self, ec2: Any, group: Mapping[str, Any], cidrs: Mapping[str, str]
    ) -> None:
        revoke, authorize = plan_ingress(group.get("IpPermissions") or [], cidrs)
        group_id = group["GroupId"]
        if revoke:
            ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=revoke)
            self.log.info("Revoked stale ingress rules of %s", group_id)
        if authorize:
            try:
                ec2.authorize_security_group_ingress(
                    GroupId=group_id, IpPermissions=build_ssh_permissions(authorize)
                )
            except Exception as err:
                code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code", "")
                if code != "InvalidPermission.Duplicate":
                    raise
                # Another process (a second Jupyter server of this user) added it first.
            self.log.info("Allowed SSH to %s from %s", group_id, ", ".join(authorize))

    def refresh_ssh_access(
        self, region: str | None = None, *, group_ids: Iterable[str] | None = None
    ) -> list[str]:
        """Bring every managed group of this owner in a region (or the given ones) up to date.

        Called when the caller's address may have changed (a start, a reconnect): the old auto
        rule is revoked and the new /32 allowed. Returns the group ids it checked.
        """
        region = validate_region(region or self.region)
        wanted = set(group_ids) if group_ids is not None else None
        if wanted is not None and not wanted:
            return []
        cidrs = self.ssh_access_cidrs()
        ec2 = self.client(region)
        filters = [{"Name": "group-name", "Values": [security_group_name(self.owner_id)]}]
        with self._aws("update the security group", region):
            groups = ec2.describe_security_groups(Filters=filters).get("SecurityGroups", [])
            checked = []
            for group in groups:
                if wanted is not None and group["GroupId"] not in wanted:
                    continue
                self._reconcile_ingress(ec2, group, cidrs)
                checked.append(group["GroupId"])
        return checked

    # -- launch ------------------------------------------------------------------------------------

    def launch(
        self, profile: Profile, *, label: str | None = None, launch_id: str | None = None
    ) -> LaunchResult:
        """Launch one hardened instance for ``profile`` and pin its host key.

        Every input is checked before anything is created in the cloud: the profile's fields,
        the region, the instance type against the region's offerings, the image, the SSH
        sources. A launch is idempotent per ``launch_id``: botocore's retries reuse it as the
        ``ClientToken``, and a repeated call (say, after a restart) adopts the instance the
        first call made instead of launching another.
        """
        fields = validate_profile_fields(
            {
                k: getattr(profile, k)
                for k in ("region", "instance_type", "ami", "volume_gb", "spot", "tags")
            }
        )
        validate_profile_name(profile.name)
        region = fields["region"]
        label = validate_label(label if label is not None else f"jupyter-ec2 {profile.name}")
        given_id = launch_id is not None
        launch_id = validate_launch_id(launch_id if given_id else str(uuid.uuid4()))
        store = self._require_store()
        cidrs = self.ssh_access_cidrs()
        ec2 = self.client(region)
        if given_id:
            existing = self.find_by_launch_id(launch_id, region)
            if existing is not None and existing.state != "terminated":
                return self._adopt(existing, launch_id)

        architecture = self.instance_type_architecture(profile.instance_type, region)
        image = self.resolve_image(profile.ami, architecture, region)
        check_volume_fits(image, profile.volume_gb)
        key_name = self.ensure_key_pair(region)
        vpc_id, subnet_id = self._network(region)
        group_id = self.ensure_security_group(vpc_id, region, cidrs)

        host_key = generate_ed25519(comment="jupyter-ec2-host")
        params = build_run_instances_params(
            profile=profile,
            image=image,
            key_name=key_name,
            security_group_id=group_id,
            user_data=build_user_data(host_key),
            launch_id=launch_id,
            owner_id=self.owner_id,
            label=label,
            subnet_id=subnet_id,
        )
        instance_id = self._run_instance(ec2, params, region, launch_id)
        store.pin_host_key(instance_id, host_key.public_openssh)
        self.log.info(
            "Launched %s (%s, %s) in %s", instance_id, profile.instance_type, image.image_id, region
        )
        return LaunchResult(
            instance_id=instance_id,
            launch_id=launch_id,
            region=region,
            instance_type=profile.instance_type,
            image_id=image.image_id,
            architecture=architecture,
            key_name=key_name,
            security_group_id=group_id,
            host_key_fingerprint=host_key.fingerprint,
            host_public_key=" ".join(host_key.public_openssh.split()[:2]),
        )

    def _adopt(self, inst: ManagedInstance, launch_id: str) -> LaunchResult:
        """The result of a launch whose instance already exists; its host key is pinned."""
        store = self._require_store()
        public = store.pinned_host_key(inst.instance_id) or self._user_data_host_key(
            inst.instance_id, inst.region
        )
        if public is None:
            raise CloudError(
                f"Instance {inst.instance_id} of this launch exists but carries no host key; "
                "terminate it and launch again.",
                code="HostKeyUnknown",
            )
        store.pin_host_key(inst.instance_id, public)
        self.log.info("Launch %s already made %s; adopting it", launch_id, inst.instance_id)
        return LaunchResult(
            instance_id=inst.instance_id,
            launch_id=launch_id,
            region=inst.region,
            instance_type=inst.instance_type,
            image_id=inst.image_id or "",
            architecture=inst.architecture or "",
            key_name=inst.key_name or "",
            security_group_id=inst.security_group_ids[0] if inst.security_group_ids else "",
            host_key_fingerprint=fingerprint_sha256(public),
            host_public_key=public,
            state=inst.state,
        )

    def _run_instance(self, ec2: Any, params: dict[str, Any], region: str, launch_id: str) -> str:
        from botocore import exceptions as bx

        try:
            response = ec2.run_instances(**params)
        except (bx.ConnectionError, bx.HTTPClientError) as err:
            # The request may have reached EC2 before the connection failed: adopt the
            # instance of this launch if it exists rather than report a failure.
            with contextlib.suppress(EC2LauncherError):
                found = self.find_by_launch_id(launch_id, region)
                if found is not None:
                    return found.instance_id
            raise translate_error(err, action="launch the instance", region=region) from err
        except (bx.ClientError, bx.BotoCoreError) as err:
            raise translate_error(err, action="launch the instance", region=region) from err
        return response["Instances"][0]["InstanceId"]

    # -- discovery -------------------------------------------------------------------------------

    def list_instances(
        self, region: str | None = None, *, include_terminated: bool = True
    ) -> list[ManagedInstance]:
        """Every instance of this owner in a region, in one (paginated) ``describe_instances``."""
        return self._describe(
            region, owner_filters(self.owner_id, include_terminated=include_terminated)
        )

    def find_by_launch_id(
        self, launch_id: str, region: str | None = None
    ) -> ManagedInstance | None:
        """The instance a launch created, or None (e.g. to re-attach after a restart)."""
        validate_launch_id(launch_id)
        found = self._describe(region, launch_id_filters(self.owner_id, launch_id))
        return found[0] if found else None

    def _describe(self, region: str | None, filters: list[dict[str, Any]]) -> list[ManagedInstance]:
        region = validate_region(region or self.region)
        ec2 = self.client(region)
        result = []
        with self._aws("list instances", region):
            for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    for desc in reservation.get("Instances", []):
                        result.append(managed_instance_from_description(desc, region))
        result.sort(
            key=lambda i: (
                i.launch_time or dt.datetime.min.replace(tzinfo=dt.timezone.utc),
                i.instance_id,
            )
        )
        return result

    def owned(self, ids: Iterable[str], region: str | None = None) -> list[ManagedInstance]:
        """The given instances, each checked to be managed by this owner (NotFoundError if not)."""
        ids = validate_instance_ids(ids)
        if not ids:
            return []
        filters = [*owner_filters(self.owner_id), {"Name": "instance-id", "Values": ids}]
        found = {i.instance_id: i for i in self._describe(region, filters)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFoundError(
                f"No instance {', '.join(missing)} is managed by jupyter-ec2 here.",
                code="InvalidInstanceID.NotFound",
            )
        return [found[i] for i in ids]

    def host_key_from_user_data(self, instance_id: str, region: str | None = None) -> str | None:
        """The public host key an instance was launched with, read back from its user-data.

        A recovery path for a launch whose pin was lost: the value comes from the EC2 API over
        an authenticated channel, never from the network path to the instance.
        """
        self.owned([instance_id], region)
        return self._user_data_host_key(instance_id, region)

    def _user_data_host_key(self, instance_id: str, region: str | None) -> str | None:
        import base64

        region = validate_region(region or self.region)
        ec2 = self.client(region)
        with self._aws("read the user-data", region):
            value = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        encoded = (value.get("UserData") or {}).get("Value")
        if not encoded:
            return None
        return host_public_key_from_user_data(base64.b64decode(encoded).decode(errors="replace"))

    # -- actions -----------------------------------------------------------------------------------

    def stop(self, ids: Iterable[str], region: str | None = None) -> list[StateChange]:
        """Stop managed instances (a no-op for an empty list)."""
        instances = self.owned(ids, region)
        if not instances:
            return []
        self._refuse_states(instances, {"terminated", "shutting-down"}, "stop")
        ec2 = self.client(region)
        with self._aws("stop the instance", region):
            answer = ec2.stop_instances(InstanceIds=[i.instance_id for i in instances])
        return _state_changes(answer.get("StoppingInstances", []))

    def start(self, ids: Iterable[str], region: str | None = None) -> list[StateChange]:
        """Start managed instances, first allowing SSH from the caller's current address."""
        instances = self.owned(ids, region)
        if not instances:
            return []
        self._refuse_states(instances, {"terminated", "shutting-down"}, "start")
        groups = {g for i in instances for g in i.security_group_ids}
        self.refresh_ssh_access(region, group_ids=groups)
        ec2 = self.client(region)
        with self._aws("start the instance", region):
            answer = ec2.start_instances(InstanceIds=[i.instance_id for i in instances])
        return _state_changes(answer.get("StartingInstances", []))

    def terminate(self, ids: Iterable[str], region: str | None = None) -> list[StateChange]:
        """Terminate managed instances; persistent spot requests are cancelled first."""
        instances = self.owned(ids, region)
        if not instances:
            return []
        ec2 = self.client(region)
        with self._aws("terminate the instance", region):
            requests = self._spot_request_ids(ec2, [i.instance_id for i in instances if i.spot])
            if requests:
                ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=requests)
            answer = ec2.terminate_instances(InstanceIds=[i.instance_id for i in instances])
        return _state_changes(answer.get("TerminatingInstances", []))

    @staticmethod
    def _spot_request_ids(ec2: Any, instance_ids: list[str]) -> list[str]:
        if not instance_ids:
            return []
        answer = ec2.describe_spot_instance_requests(
            Filters=[{"Name": "instance-id", "Values": instance_ids}]
        )
        return [
            r["SpotInstanceRequestId"]
            for r in answer.get("SpotInstanceRequests", [])
            if r.get("State") in ("open", "active", "disabled")
        ]

    @staticmethod
    def _refuse_states(instances: Sequence[ManagedInstance], states: set[str], action: str) -> None:
        for inst in instances:
            if inst.state in states:
                raise ConflictError(
                    f"Instance {inst.instance_id} is {inst.state} and cannot {action}.",
                    code="IncorrectInstanceState",
                )

    # -- snapshots of forgotten stopped instances (jupyter_ec2.forgotten) ---------------------

    def snapshot_volumes(self, instance_id: str, region: str | None = None) -> list[SnapshotInfo]:
        """Snapshot every EBS volume of a managed instance, each snapshot tagged as managed with
        its source instance; returns them as CreateSnapshot answered (usually ``pending``)."""
        inst = self.owned([instance_id], region)[0]
        if not inst.volume_ids:
            raise ConflictError(f"Instance {instance_id} has no EBS volume to snapshot.")
        region = validate_region(region or self.region)
        ec2 = self.client(region)
        tags = {
            TAG_MANAGED: "true",
            TAG_OWNER: self.owner_id,
            TAG_SOURCE_INSTANCE: instance_id,
            TAG_NAME: f"jupyter-ec2 {inst.name or instance_id}"[:255],
        }
        made = []
        with self._aws("snapshot the instance's disk", region):
            for volume_id in inst.volume_ids:
                answer = ec2.create_snapshot(
                    VolumeId=volume_id,
                    Description=f"jupyter-ec2: disk of {instance_id}, stopped too long",
                    TagSpecifications=build_tag_specifications(tags, ("snapshot",)),
                )
                made.append(snapshot_from_description(answer, region))
        return made

    def list_snapshots(
        self, region: str | None = None, ids: Iterable[str] | None = None
    ) -> list[SnapshotInfo]:
        """The managed snapshots of this owner in a region (or just ``ids``)."""
        region = validate_region(region or self.region)
        ec2 = self.client(region)
        filters = [
            {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
            {"Name": f"tag:{TAG_OWNER}", "Values": [self.owner_id]},
        ]
        kwargs: dict[str, Any] = {"OwnerIds": ["self"], "Filters": filters}
        if ids is not None:
            kwargs["SnapshotIds"] = list(ids)
        found = []
        with self._aws("list snapshots", region):
            for page in ec2.get_paginator("describe_snapshots").paginate(**kwargs):
                found += [snapshot_from_description(s, region) for s in page.get("Snapshots", [])]
        return sorted(found, key=lambda s: (s.created_at or "", s.id))

    # -- resize (issue 15): the facts a type change is checked against, and the change ----------

    def resize_facts(self, instance_id: str, region: str | None = None) -> ResizeFacts:
        """What a type change depends on, for one managed instance (its raw describe entry)."""
        self.owned([instance_id], region)  # managed by this owner, else NotFoundError
        region = validate_region(region or self.region)
        ec2 = self.client(region)
        with self._aws("describe the instance", region):
            answer = ec2.describe_instances(InstanceIds=[instance_id])
        entries = [i for r in answer.get("Reservations", []) for i in r.get("Instances", [])]
        if not entries:
            raise NotFoundError(f"No instance {instance_id}.", code="InvalidInstanceID.NotFound")
        facts = resize_facts_from_description(entries[0], region)
        spot_type = None
        if facts.spot_request_id:
            with self._aws("describe the spot request", region):
                requests = ec2.describe_spot_instance_requests(
                    SpotInstanceRequestIds=[facts.spot_request_id]
                ).get("SpotInstanceRequests", [])
            spot_type = requests[0].get("Type") if requests else None
        image = None
        if facts.image_id:
            with self._aws("describe the image", region):
                try:
                    images = ec2.describe_images(ImageIds=[facts.image_id]).get("Images", [])
                except Exception as err:  # a deregistered image: its facts are unknown
                    code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code", "")
                    if not str(code).startswith("InvalidAMIID"):
                        raise
                    images = []
            image = images[0] if images else None
        return dataclasses.replace(
            facts,
            spot_request_type=spot_type,
            image_ena_support=image.get("EnaSupport") if image else None,
            image_boot_mode=image.get("BootMode") if image else None,
        )

    def describe_instance_types(
        self, instance_types: Iterable[str], region: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """DescribeInstanceTypes entries by name; a type EC2 does not know is left out."""
        region = validate_region(region or self.region)
        wanted = sorted(set(instance_types))
        ec2 = self.client(region)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), 100):  # at most 100 names per request
            batch = wanted[start : start + 100]
            with self._aws("describe the instance types", region):
                try:
                    types = ec2.describe_instance_types(InstanceTypes=batch).get(
                        "InstanceTypes", []
                    )
                except Exception as err:
                    code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code")
                    if code not in ("InvalidInstanceType", "InvalidParameterValue"):
                        raise
                    types = []
                    for name in batch:  # one unknown name fails the batch: ask one by one
                        with contextlib.suppress(Exception):
                            types += ec2.describe_instance_types(InstanceTypes=[name]).get(
                                "InstanceTypes", []
                            )
            for info in types:
                found[info["InstanceType"]] = info
        return found

    def offered_in_zone(
        self, instance_types: Iterable[str], zone: str, region: str | None = None
    ) -> set[str]:
        """Which of the types the availability zone offers (an instance never leaves its AZ)."""
        region = validate_region(region or self.region)
        wanted = sorted(set(instance_types))
        if not wanted:
            return set()
        ec2 = self.client(region)
        found: set[str] = set()
        with self._aws("check the instance type offerings", region):
            pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
                LocationType="availability-zone",
                Filters=[
                    {"Name": "location", "Values": [zone]},
                    {"Name": "instance-type", "Values": wanted},
                ],
            )
            for page in pages:
                found.update(o.get("InstanceType", "") for o in page["InstanceTypeOfferings"])
        return found & set(wanted)

    def running_types(self, region: str | None = None) -> dict[str, str]:
        """Every pending or running instance of the account in the region → its type.

        The vCPU quotas count every running instance of the account, managed or not.
        """
        region = validate_region(region or self.region)
        ec2 = self.client(region)
        result: dict[str, str] = {}
        with self._aws("list running instances", region):
            pages = ec2.get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
            )
            for page in pages:
                for reservation in page.get("Reservations", []):
                    for desc in reservation.get("Instances", []):
                        result[desc["InstanceId"]] = desc.get("InstanceType", "")
        return result

    def modify_instance_type(
        self, instance_id: str, instance_type: str, region: str | None = None
    ) -> None:
        """Change a stopped managed instance's type (EC2 refuses it unless stopped)."""
        (inst,) = self.owned([instance_id], region)
        if inst.state != "stopped":
            raise ConflictError(
                f"Instance {instance_id} is {inst.state}; its type can change only while it "
                "is stopped.",
                code="IncorrectInstanceState",
            )
        ec2 = self.client(region)
        with self._aws("change the instance type", region):
            ec2.modify_instance_attribute(
                InstanceId=instance_id, InstanceType={"Value": instance_type}
            )

    # -- saved images (issue 15) -------------------------------------------------------------------

    def create_image(
        self,
        instance_id: str,
        region: str | None = None,
        *,
        label: str,
        environment: Mapping[str, Any] | None = None,
        profile_name: str | None = None,
        reboot: bool = False,
    ) -> SavedImage:
        """Save a managed instance's disk as an image tagged as managed; EC2 makes it later.

        The answer is ``pending``: EC2 copies the disk into snapshots in the background, and a
        describe right after may not know the image yet (eventual consistency).
        """
        region = validate_region(region or self.region)
        inst = self.owned([instance_id], region)[0]
        if inst.state not in ("running", "stopped"):
            raise ConflictError(
                f"Instance {instance_id} is {inst.state}: an image needs it running or stopped.",
                code="IncorrectInstanceState",
            )
        label = validate_label(label)
        now = dt.datetime.now(dt.timezone.utc)
        tags = build_image_tags(
            owner_id=self.owner_id,
            instance_id=instance_id,
            label=label,
            environment=environment,
            profile_name=profile_name,
        )
        params = build_create_image_params(
            instance_id=instance_id,
            name=image_name_for(label, instance_id, now),
            tags=tags,
            reboot=reboot and inst.state == "running",
        )
        ec2 = self.client(region)
        with self._aws("save the image", region):
            answer = ec2.create_image(**params)
        return SavedImage(
            image_id=answer["ImageId"],
            region=region,
            name=params["Name"],
            state="pending",
            source_instance=instance_id,
            created_at=now.isoformat(timespec="seconds"),
            size_gb=None,
            snapshot_ids=(),
            environment=tags[TAG_ENVIRONMENT],
            architecture=inst.architecture,
            label=label,
        )

    def list_images(self, region: str | None = None) -> list[SavedImage]:
        """Every image this owner saved in a region (found by its tags), newest first."""
        region = validate_region(region or self.region)
        ec2 = self.client(region)
        with self._aws("list the saved images", region):
            answer = ec2.describe_images(
                Owners=["self"], Filters=owner_image_filters(self.owner_id)
            )
        images = [saved_image_from_description(i, region) for i in answer.get("Images", [])]
        return sorted(images, key=lambda i: (i.created_at, i.image_id), reverse=True)

    def delete_image(self, image_id: str, region: str | None = None) -> SavedImage:
        """Deregister a managed image, then delete each of its snapshots (EC2 keeps them).

        NotFoundError when the image is not one this owner saved.
        """
        region = validate_region(region or self.region)
        image = self._owned_image(image_id, region)
        ec2 = self.client(region)
        with self._aws("delete the image", region):
            ec2.deregister_image(ImageId=image.image_id)
            for snapshot_id in image.snapshot_ids:
                ec2.delete_snapshot(SnapshotId=snapshot_id)
        self.log.info("Deleted image %s and snapshots %s", image_id, ", ".join(image.snapshot_ids))
        return image

    def _owned_image(self, image_id: str, region: str) -> SavedImage:
        ec2 = self.client(region)
        with self._aws("look up the image", region):
            try:
                found = ec2.describe_images(ImageIds=[image_id]).get("Images", [])
            except Exception as err:
                code = (getattr(err, "response", None) or {}).get("Error", {}).get("Code", "")
                if not str(code).startswith("InvalidAMIID"):
                    raise
                found = []
        for desc in found:
            tags = {t["Key"]: t["Value"] for t in desc.get("Tags") or []}
            if tags.get(TAG_MANAGED) == "true" and tags.get(TAG_OWNER) == self.owner_id:
                return saved_image_from_description(desc, region)
        raise NotFoundError(
            f"No image {image_id} saved by jupyter-ec2 here (only managed images may be deleted).",
            code="InvalidAMIID.NotFound",
        )

    # -- Dask workers (jupyter_ec2.workers): the cluster group, launching and listing workers ----

    def cluster_group(self, notebook_id: str, region: str | None = None) -> str | None:
        """The id of a notebook instance's cluster group, or None when it has none."""
        region = validate_region(region or self.region)
        ec2 = self.client(region)
        name = cluster_group_name(self.owner_id, notebook_id)
        with self._aws("find the cluster security group", region):
            groups = ec2.describe_security_groups(
                Filters=[{"Name": "group-name", "Values": [name]}]
            ).get("SecurityGroups", [])
        return groups[0]["GroupId"] if groups else None

    def ensure_cluster_group(self, notebook_id: str, region: str | None = None) -> str:
        """The cluster group of a notebook instance, created if needed, its rules made exact.

        Exactly two kinds of ingress: tcp/22 from the SSH sources (``ssh_cidrs``) and all
        traffic from members of the group itself. The scheduler's and dashboard's ports are
        never opened to any address range. The notebook instance joins the group.
        """
        region = validate_region(region or self.region)
        notebook = self.owned([notebook_id], region)[0]
        if not notebook.vpc_id:
            raise CloudError(f"Instance {notebook_id} is in no VPC.", code="NoVpc")
        cidrs = self.ssh_access_cidrs()
        ec2 = self.client(region)
        owner = self.owner_id
        name = cluster_group_name(owner, notebook_id)
        tags = {**owner_tags(owner), TAG_NAME: name, TAG_WORKER_OF: notebook_id}
        with self._group_lock, self._aws("set up the cluster security group", region):
            group = self._find_group(ec2, notebook.vpc_id, name)
            if group is None:
                group_id = ec2.create_security_group(
                    GroupName=name,
                    Description=CLUSTER_GROUP_DESCRIPTION,
                    VpcId=notebook.vpc_id,
                    TagSpecifications=[
                        {
                            "ResourceType": "security-group",
                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                        }
                    ],
                )["GroupId"]
                group = {"GroupId": group_id, "IpPermissions": []}
            group_id = group["GroupId"]
            revoke, grant = plan_cluster_ingress(group.get("IpPermissions") or [], group_id, cidrs)
            if revoke:
                ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=revoke)
            if grant:
                ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=grant)
            if group_id not in notebook.security_group_ids:
                ec2.modify_instance_attribute(
                    InstanceId=notebook_id, Groups=[*notebook.security_group_ids, group_id]
                )
        return group_id

    def launch_workers(
        self,
        notebook_id: str,
        count: int,
        instance_type: str | None = None,
        *,
        launch_id: str,
        volume_gb: int = 30,
        region: str | None = None,
    ) -> WorkerLaunch:
        """Launch ``count`` workers next to a notebook instance: same image, subnet and key.

        All or none (one ``RunInstances``, ``MinCount`` = ``MaxCount``), idempotent per
        ``launch_id`` (the ``ClientToken``). The handed-over host key is shared by the workers
        of one call and replaced on each worker at its first verified connection
        (``Provisioner.rotate_host_key``); each worker's id is pinned to it.
        """
        region = validate_region(region or self.region)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 20:
            raise ValidationError("count", "count must be a whole number from 1 to 20.")
        launch_id = validate_launch_id(launch_id)
        store = self._require_store()
        notebook = self.owned([notebook_id], region)[0]
        instance_type = instance_type or notebook.instance_type
        architecture = self.instance_type_architecture(instance_type, region)
        if notebook.architecture and architecture != notebook.architecture:
            raise ValidationError(
                "instance_type",
                f"{instance_type} is {architecture} but the notebook instance's image is "
                f"{notebook.architecture}: pick a {notebook.architecture} instance type.",
            )
        if not notebook.image_id or not notebook.key_name:
            raise CloudError(
                f"Instance {notebook_id} reports no image or key pair to launch workers with.",
                code="IncompleteInstance",
            )
        ec2 = self.client(region)
        with self._aws("find the notebook instance's image", region):
            images = ec2.describe_images(ImageIds=[notebook.image_id]).get("Images", [])
        if not images:
            raise CloudError(
                f"The image {notebook.image_id} of {notebook_id} no longer exists.",
                code="InvalidAMIID.NotFound",
            )
        group_id = self.ensure_cluster_group(notebook_id, region)
        host_key = generate_ed25519(comment="jupyter-ec2-worker-host")
        params = build_worker_run_params(
            notebook_id=notebook_id,
            image=image_info(images[0]),
            instance_type=instance_type,
            count=count,
            key_name=notebook.key_name,
            group_id=group_id,
            subnet_id=notebook.subnet_id,
            user_data=build_user_data(host_key),
            launch_id=launch_id,
            owner_id=self.owner_id,
            label=validate_label(f"{(notebook.name or notebook_id)[:100]} worker"),
            volume_gb=volume_gb,
        )
        with self._aws("launch the Dask workers", region):
            answer = ec2.run_instances(**params)
        ids = tuple(i["InstanceId"] for i in answer.get("Instances", []))
        for worker_id in ids:
            store.pin_host_key(worker_id, host_key.public_openssh)
        self.log.info("Launched %d worker(s) of %s: %s", len(ids), notebook_id, ", ".join(ids))
        return WorkerLaunch(ids, group_id, instance_type, notebook.image_id)

    def list_workers(self, notebook_id: str, region: str | None = None) -> list[ManagedInstance]:
        """The live worker instances of a notebook instance, found by their tags."""
        filters = [
            *owner_filters(self.owner_id, include_terminated=False),
            {"Name": f"tag:{TAG_WORKER_OF}", "Values": [validate_instance_id(notebook_id)]},
        ]
        return self._describe(region, filters)

    def delete_cluster_group(self, notebook_id: str, region: str | None = None) -> bool:
        """Delete a notebook instance's cluster group; False while an instance still uses it."""
        group_id = self.cluster_group(notebook_id, region)
        if group_id is None:
            return True
        region = validate_region(region or self.region)
        ec2 = self.client(region)
        try:
            with self._aws("delete the cluster security group", region):
                ec2.delete_security_group(GroupId=group_id)
        except CloudError as err:
            if err.code in ("DependencyViolation", "InvalidGroup.InUse"):
                return False
            if err.code == "InvalidGroup.NotFound":
                return True
            raise
        return True


def _state_changes(items: Iterable[Mapping[str, Any]]) -> list[StateChange]:
    return [
        StateChange(
            instance_id=item["InstanceId"],
            previous_state=(item.get("PreviousState") or {}).get("Name", "unknown"),
            current_state=(item.get("CurrentState") or {}).get("Name", "unknown"),
        )
        for item in items
    ]


# -- Dask workers: pure builders ------------------------------------------------------------------

#: The tag that marks a worker instance and names its notebook instance (re-discovery by tags).
TAG_WORKER_OF = "jupyter-ec2:worker-of"
CLUSTER_GROUP_DESCRIPTION = (
    "jupyter-ec2 Dask cluster: all traffic between members, SSH from this machine only"
)
CLUSTER_SELF_RULE_DESCRIPTION = "jupyter-ec2 cluster: members of this group only"


def cluster_group_name(owner_id: str, notebook_id: str) -> str:
    """The security group of one notebook instance's Dask cluster."""
    return f"jupyter-ec2-{owner_id}-cluster-{validate_instance_id(notebook_id)}"


def worker_of(inst: ManagedInstance) -> str | None:
    """The notebook instance a worker instance belongs to, or None for a notebook instance."""
    value = inst.tags.get(TAG_WORKER_OF)
    return value or None


def build_self_permission(group_id: str) -> dict[str, Any]:
    """All traffic (every protocol and port) from members of ``group_id`` itself."""
    return {
        "IpProtocol": "-1",
        "UserIdGroupPairs": [{"GroupId": group_id, "Description": CLUSTER_SELF_RULE_DESCRIPTION}],
    }


def plan_cluster_ingress(
    current: Iterable[Mapping[str, Any]], group_id: str, cidrs: Mapping[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(revoke, authorize) so a cluster group holds exactly tcp/22 from ``cidrs`` + itself.

    The self rule is all traffic from the group's own id; anything else that names a group,
    any other port or any other source is revoked, as :func:`plan_ingress` does for SSH.
    """
    has_self = False
    rest: list[dict[str, Any]] = []
    for perm in current:
        pairs = perm.get("UserIdGroupPairs") or []
        mine = [p for p in pairs if p.get("GroupId") == group_id]
        if perm.get("IpProtocol") == "-1" and mine:
            has_self = True
            perm = {**perm, "UserIdGroupPairs": [p for p in pairs if p.get("GroupId") != group_id]}
        rest.append(dict(perm))
    revoke, authorize = plan_ingress(rest, cidrs)
    grant = build_ssh_permissions(authorize)
    if not has_self:
        grant.append(build_self_permission(group_id))
    return revoke, grant


def build_worker_run_params(
    *,
    notebook_id: str,
    image: ImageInfo,
    instance_type: str,
    count: int,
    key_name: str,
    group_id: str,
    subnet_id: str | None,
    user_data: str,
    launch_id: str,
    owner_id: str,
    label: str,
    volume_gb: int,
    user_tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``run_instances`` parameters of ``count`` hardened workers in one call (pure, no AWS).

    ``MinCount`` equals ``MaxCount``: EC2 launches all of them or none, so a capacity shortage
    never leaves part of a cluster running. The hardening is the notebook instance's: IMDSv2
    only, an encrypted gp3 root volume, the host key handed over in the user-data.
    """
    tags = build_instance_tags(
        owner_id=owner_id,
        profile_name="worker",
        launch_id=launch_id,
        label=label,
        user_tags=user_tags,
    )
    tags[TAG_WORKER_OF] = notebook_id
    params: dict[str, Any] = {
        "ImageId": image.image_id,
        "InstanceType": instance_type,
        "MinCount": count,
        "MaxCount": count,
        "KeyName": key_name,
        "SecurityGroupIds": [group_id],
        "UserData": user_data,
        "ClientToken": launch_id,
        "InstanceInitiatedShutdownBehavior": "stop",
        "MetadataOptions": {
            "HttpTokens": "required",
            "HttpEndpoint": "enabled",
            "HttpPutResponseHopLimit": 1,
        },
        "BlockDeviceMappings": build_block_device_mappings(image.root_device_name, volume_gb),
        "TagSpecifications": build_tag_specifications(tags),
    }
    if subnet_id:
        params["SubnetId"] = subnet_id
    return params


@dataclass(frozen=True)
class WorkerLaunch:
    """What :meth:`EC2Backend.launch_workers` created: the worker ids and the cluster group."""

    worker_ids: tuple[str, ...]
    group_id: str
    instance_type: str
    image_id: str
