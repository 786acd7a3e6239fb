"""Resize: change an instance's type on the same disk (``POST instances/{id}/resize``).

Two halves:

- **The checks**, all made before anything stops, each refusal naming its reason and leaving the
  instance as it was: the body (400 naming the field), the phase (409, from the lifecycle
  table), a spot instance (409: a one-time spot instance cannot be stopped, and a persistent
  one is restarted by EC2 with its own launch specification, i.e. its type), the type itself
  (``DescribeInstanceTypes``: it exists; ``DescribeInstanceTypeOfferings`` with
  ``LocationType=availability-zone``: it is offered in the instance's availability zone, which
  its disk never leaves), the architecture of the image (x86_64 vs arm64), ENA and NVMe (a
  Nitro type that requires them needs an instance whose ENA support is on), the boot mode and
  the virtualization type, the vCPU quota of the new family (Service Quotas, counting the
  account's other running instances), and ``EC2Launcher.max_hourly_usd``. The rules are pure
  functions (:func:`type_refusal`), tested without AWS; :class:`Resizer` gathers the facts in a
  worker thread.
- **The sequence**, run as the instance's task: a running instance is stopped (EC2
  StopInstances, then the poller's answer is awaited), the phase goes ``stopped`` →
  ``resizing`` while ``ModifyInstanceAttribute`` changes the type (EC2 accepts it only from a
  stopped instance), then it is started and brought up again with the idempotent setup (its
  fast path), and re-attached: ``booting`` … ``ready``, same EBS volume. While it runs, the
  lifecycle's decisions on the EC2 states it causes are "nothing" (``State.resizing``), so the
  poller neither cancels it nor starts a second bring-up.

Sources (AWS documentation): changing the type needs a stopped, EBS-backed instance
(``ec2-instance-resize.html``); compatibility is architecture, virtualization type, ENA and
NVMe drivers, boot mode (``resize-limitations.html``); a Spot Instance can be stopped only from
a persistent request and EC2 restarts it with the same instance type (``stop-spot-instances``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConflictError, EC2LauncherError, ValidationError, permission_denied
from .models import Phase, validate_instance_type
from .preflight import quota_code, quota_family

if TYPE_CHECKING:  # pragma: no cover - types only
    from .aws import EC2Backend, ResizeFacts
    from .manager import LaunchManager
    from .reconcile import InstanceRecord

#: Types the resize dialog offers besides the profiles' own (CPU sizes, GPU, and arm64 ones,
#: which are listed as excluded for an x86_64 image so the user sees why).
SUGGESTED_TYPES = (
    "t3.medium",
    "t3.large",
    "t3.xlarge",
    "m7i.large",
    "m7i.xlarge",
    "m7i.2xlarge",
    "c7i.xlarge",
    "c7i.2xlarge",
    "r7i.large",
    "r7i.xlarge",
    "g4dn.xlarge",
    "g5.xlarge",
    "g6.xlarge",
    "t4g.medium",
    "m7g.large",
    "c7g.xlarge",
)

#: Where the rules come from (docs/resize.md repeats them).
SOURCES = {
    "stopped": "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-resize.html",
    "compatibility": "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/resize-limitations.html",
    "spot": "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/stop-spot-instances.html",
}


def validate_resize(body: Any) -> str:
    """The body of ``POST instances/{id}/resize``: ``{"instance_type": t}``."""
    if not isinstance(body, dict):
        raise ValidationError(
            "body", 'The body must be a JSON object like {"instance_type": "m7i.large"}.'
        )
    unknown = sorted(set(body) - {"instance_type"})
    if unknown:
        raise ValidationError(str(unknown[0])[:40], f"Unknown field {unknown[0]!r:.40}.")
    if "instance_type" not in body:
        raise ValidationError("instance_type", "instance_type is required (e.g. 'm7i.large').")
    return validate_instance_type(body["instance_type"])


# -- the rules (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeInfo:
    """What the rules read of one DescribeInstanceTypes entry."""

    name: str
    architectures: tuple[str, ...]
    vcpus: int | None
    memory_mib: int | None
    ena: str  # "unsupported" | "supported" | "required"
    nvme: str  # the same words, for EBS over NVMe
    boot_modes: tuple[str, ...]
    virtualization: tuple[str, ...]
    gpus: tuple[str, ...]  # "NVIDIA A10G" …

    @classmethod
    def from_description(cls, info: Mapping[str, Any]) -> TypeInfo:
        """Read one ``DescribeInstanceTypes`` entry (pure)."""
        gpus = []
        for gpu in (info.get("GpuInfo") or {}).get("Gpus") or []:
            words = f"{gpu.get('Manufacturer', '')} {gpu.get('Name', '')}".strip()
            gpus += [words] * int(gpu.get("Count") or 1)
        vcpus = (info.get("VCpuInfo") or {}).get("DefaultVCpus")
        memory = (info.get("MemoryInfo") or {}).get("SizeInMiB")
        return cls(
            name=info["InstanceType"],
            architectures=tuple(
                (info.get("ProcessorInfo") or {}).get("SupportedArchitectures") or ()
            ),
            vcpus=int(vcpus) if vcpus is not None else None,
            memory_mib=int(memory) if memory is not None else None,
            ena=str((info.get("NetworkInfo") or {}).get("EnaSupport") or "unsupported"),
            nvme=str((info.get("EbsInfo") or {}).get("NvmeSupport") or "unsupported"),
            boot_modes=tuple(info.get("SupportedBootModes") or ()),
            virtualization=tuple(info.get("SupportedVirtualizationTypes") or ()),
            gpus=tuple(gpus),
        )

    def to_json(self) -> dict[str, Any]:
        """The facts the dialog shows."""
        return {
            "instance_type": self.name,
            "vcpus": self.vcpus,
            "memory_gib": round(self.memory_mib / 1024, 1) if self.memory_mib else None,
            "architecture": "arm64" if "arm64" in self.architectures else "x86_64",
            "gpus": list(self.gpus),
        }


@dataclass(frozen=True)
class Refusal:
    """Why a type is refused: a short ``reason`` code for programs, a sentence for people."""

    reason: str  # "same_type", "unknown_type", "not_offered", "architecture", "ena_nvme", …
    message: str
    status: int = 400

    def error(self) -> EC2LauncherError:
        """The domain error the API answers with (400 naming instance_type, or 409)."""
        if self.status == 400:
            return ValidationError("instance_type", self.message)
        return ConflictError(self.message, code=self.reason)


def spot_refusal(facts: ResizeFacts) -> Refusal | None:
    """A spot instance cannot change its type (one-time: cannot stop; persistent: EC2 restarts
    it with its own launch specification)."""
    if not facts.spot:
        return None
    if facts.spot_request_type == "one-time":
        why = "a one-time spot instance cannot be stopped, so its type cannot change"
    else:
        why = (
            "EC2 restarts a stopped spot instance of a persistent request with the instance "
            "type of its request, so its type cannot change"
        )
    return Refusal(
        "spot",
        f"{facts.instance_id} is a spot instance: {why}. Save it as an image and launch the "
        "new type from it, or launch an on-demand instance.",
        status=409,
    )


def type_refusal(facts: ResizeFacts, target: TypeInfo | None, wanted: str) -> Refusal | None:
    """Why ``wanted`` cannot replace the instance's type (None: compatible). Pure.

    ``target`` is the type's DescribeInstanceTypes entry, None when EC2 does not know it.
    """
    if wanted == facts.instance_type:
        return Refusal("same_type", f"{facts.instance_id} already is a {wanted}.")
    if target is None:
        return Refusal(
            "unknown_type",
            f"Instance type {wanted} does not exist in {facts.region} (DescribeInstanceTypes "
            "does not know it); check the name.",
        )
    arch = facts.architecture
    if arch and target.architectures and arch not in target.architectures:
        theirs = "/".join(target.architectures)
        return Refusal(
            "architecture",
            f"{wanted} is {theirs} but the instance's image is {arch}: the architecture must "
            f"stay {arch}. Pick a {arch} type, or launch a new {theirs} instance.",
        )
    virt = facts.virtualization_type
    if virt and target.virtualization and virt not in target.virtualization:
        return Refusal(
            "virtualization",
            f"{wanted} runs only {'/'.join(target.virtualization)} images but the instance's "
            f"image is {virt}.",
        )
    ena = facts.ena_support if facts.ena_support is not None else facts.image_ena_support
    if ena is False and ("required" in (target.ena, target.nvme)):
        return Refusal(
            "ena_nvme",
            f"{wanted} is a Nitro type that requires ENA networking and NVMe disks, but the "
            "instance's ENA support is off (its image has no ENA driver flag): it would not "
            "boot or not reach the network. Pick a Xen type such as t2 or m4, or use an image "
            "with ENA and NVMe drivers (current Ubuntu and Debian images have both).",
        )
    boot = facts.boot_mode or facts.image_boot_mode
    if boot in ("legacy-bios", "uefi") and target.boot_modes and boot not in target.boot_modes:
        return Refusal(
            "boot_mode",
            f"{wanted} boots only {'/'.join(target.boot_modes)} but the instance boots {boot}.",
        )
    return None


def quota_refusal(
    wanted: TypeInfo, region: str, quota: float | None, in_use: int, code: str, words: str
) -> Refusal | None:
    """Whether the new type's vCPUs fit the family's on-demand quota beside the others. Pure."""
    if quota is None or wanted.vcpus is None:
        return None
    if in_use + wanted.vcpus <= quota:
        return None
    return Refusal(
        "quota",
        f'{wanted.name} needs {wanted.vcpus} vCPUs, but the vCPU quota "{words}" ({code}) in '
        f"{region} is {quota:g} and {in_use} are used by other running instances. Request a "
        f"quota increase (Service Quotas → Amazon EC2 → {code}) or pick a smaller type.",
        status=409,
    )


# -- facts from AWS (in a worker thread) ---------------------------------------------------------


class Resizer:
    """Gathers the facts of a resize and runs the checks; owned by the manager."""

    def __init__(self, backend: EC2Backend, prices: Any):
        self.backend = backend
        self.prices = prices
        #: Instances whose resize task is between its stop and its bring-up.
        self.active: set[str] = set()

    def check(self, instance_id: str, region: str, wanted: str) -> tuple[ResizeFacts, TypeInfo]:
        """Every refusal that needs AWS, in order (raises the first); blocking."""
        facts = self.backend.resize_facts(instance_id, region)
        refused = spot_refusal(facts)
        if refused is not None:
            raise refused.error()
        described = self.backend.describe_instance_types([wanted, facts.instance_type], region)
        target = TypeInfo.from_description(described[wanted]) if wanted in described else None
        refused = type_refusal(facts, target, wanted)
        if refused is not None:
            raise refused.error()
        assert target is not None
        zone = facts.availability_zone
        if zone and wanted not in self.backend.offered_in_zone([wanted], zone, region):
            raise Refusal(
                "not_offered",
                f"{wanted} is not offered in {zone}, the availability zone of the instance and "
                "of its disk (DescribeInstanceTypeOfferings); pick another type.",
            ).error()
        refused = self._quota(facts, target, region)
        if refused is not None:
            raise refused.error()
        return facts, target

    def _quota(self, facts: ResizeFacts, target: TypeInfo, region: str) -> Refusal | None:
        from .aws_preflight import DENIED_CODES, AccountProbe

        found = quota_code(target.name, False)
        if found is None:
            return None
        code, words = found
        quota = AccountProbe(self.backend).service_quota(region, code)
        if quota.value is None:
            if quota.error_code in DENIED_CODES:
                raise permission_denied(
                    "GetServiceQuota",
                    "servicequotas",
                    quota.error,
                    action="read the vCPU quota of the new type",
                    code=quota.error_code or "AccessDenied",
                )
            return None  # a quota AWS does not know for this family: nothing to check
        family = quota_family(target.name)
        others = {
            i: t
            for i, t in self.backend.running_types(region).items()
            if i != facts.instance_id and quota_family(t) == family
        }
        vcpus = self.backend.describe_instance_types(set(others.values()), region)
        in_use = sum(
            int((vcpus.get(t) or {}).get("VCpuInfo", {}).get("DefaultVCpus") or 0)
            for t in others.values()
        )
        return quota_refusal(target, region, quota.value, in_use, code, words)

    def options(self, instance_id: str, region: str, candidates: Iterable[str]) -> dict[str, Any]:
        """The answer of ``GET instances/{id}/resize-options``: every candidate, compatible or
        not, with its $/h and, when excluded, why (blocking)."""
        facts = self.backend.resize_facts(instance_id, region)
        names = sorted(set(candidates) | {facts.instance_type})
        described = self.backend.describe_instance_types(names, region)
        zone = facts.availability_zone
        offered = self.backend.offered_in_zone(names, zone, region) if zone else set(names)
        spot = spot_refusal(facts)
        types = []
        for name in names:
            if name == facts.instance_type:
                continue
            info = TypeInfo.from_description(described[name]) if name in described else None
            refused = spot or type_refusal(facts, info, name)
            if refused is None and name not in offered:
                refused = Refusal("not_offered", f"{name} is not offered in {zone}.")
            entry = info.to_json() if info else {"instance_type": name}
            entry["hourly_usd"] = self._hourly(region, name, facts.spot)
            entry["compatible"] = refused is None
            entry["reason"] = None if refused is None else refused.reason
            entry["message"] = None if refused is None else refused.message
            types.append(entry)
        types.sort(
            key=lambda e: (not e["compatible"], e.get("hourly_usd") or 1e9, e["instance_type"])
        )
        current = described.get(facts.instance_type)
        return {
            "instance_id": instance_id,
            "current": {
                **(TypeInfo.from_description(current).to_json() if current else {}),
                "instance_type": facts.instance_type,
                "hourly_usd": self._hourly(region, facts.instance_type, facts.spot),
            },
            "availability_zone": zone,
            "architecture": facts.architecture,
            "types": types,
        }

    def _hourly(self, region: str, instance_type: str, spot: bool) -> float | None:
        try:
            return self.prices.hourly_usd(region, instance_type, spot)
        except EC2LauncherError:
            return None


# -- the sequence (the instance's task) ----------------------------------------------------------


async def start_resize(manager: LaunchManager, record: InstanceRecord, wanted: str) -> None:
    """Check everything, then enter the first phase and run the sequence as the task.

    Raises the refusal before anything changed; returns once the task is started.
    """
    resizer: Resizer = manager.resizer
    await manager._thread(resizer.check, record.id, record.region, wanted)
    if manager.max_hourly_usd is not None:
        await manager.cost_keeper.check_hourly_limit(record.region, wanted, record.spot)
    was_running = record.ec2_state in ("pending", "running")
    resizer.active.add(record.id)
    if was_running:
        await manager._cancel_task(record)
        manager._set_phase(record, Phase.STOPPING, f"Stopping to change the type to {wanted}.")
        await manager._close_forward(record)
    else:
        manager._set_phase(record, Phase.RESIZING, f"Changing the type to {wanted}.")
    manager._log(record, "resize", f"Resize {record.instance_type} → {wanted}: every check passed.")
    manager._run(record, _sequence(manager, record, wanted, was_running))


async def _sequence(
    manager: LaunchManager, record: InstanceRecord, wanted: str, was_running: bool
) -> None:
    resizer: Resizer = manager.resizer
    old = record.instance_type
    step = "resize"
    try:
        if was_running:
            step = "stop"
            await manager._thread(manager.backend.stop, [record.id], record.region)
            await _wait_stopped(manager, record)
            manager._set_phase(record, Phase.STOPPED, "Stopped for the resize.")
            manager._set_phase(record, Phase.RESIZING, f"Changing the type to {wanted}.")
        step = "resize"
        try:
            await manager._thread(
                manager.backend.modify_instance_type, record.id, wanted, record.region
            )
        except EC2LauncherError as err:
            raise EC2LauncherError(
                f"{err.message} The instance is stopped with its old type {old}; Start brings "
                "it back as it was."
            ) from err
        record.instance_type = wanted
        manager._log(record, "resize", f"EC2 changed the type {old} → {wanted}.")
        await _reprice(manager, record)
        manager._save(record)
        step = "boot"
        try:
            await manager._thread(manager.backend.start, [record.id], record.region)
        except EC2LauncherError as err:
            raise EC2LauncherError(
                f"The type is now {wanted}, but the instance did not start: {err.message} "
                f"Start it later, or resize it back to {old}."
            ) from err
        record.error = None
        record.ec2_state = "pending"
        record.started_at = time.monotonic()
        manager._set_phase(record, Phase.BOOTING, f"Starting as {wanted}.")
        resizer.active.discard(record.id)
        await manager._bring_up(record, manager._profile_of(record), fresh=not record.provisioned)
    except asyncio.CancelledError:
        raise
    except EC2LauncherError as err:
        resizer.active.discard(record.id)
        manager._fail(record, step, err.message)
    except Exception as err:  # noqa: BLE001 - a bug must not leave the instance unseen
        resizer.active.discard(record.id)
        manager.log.exception("jupyter-ec2: resizing %s failed", record.id)
        manager._fail(record, step, f"Unexpected error: {err}")
    finally:
        resizer.active.discard(record.id)


async def _wait_stopped(manager: LaunchManager, record: InstanceRecord) -> None:
    """Wait for the poller to see the instance stopped (the resize's own wait, bounded)."""
    deadline = time.monotonic() + manager.boot_timeout
    delay = manager.poll_min_gap
    while record.ec2_state != "stopped":
        if record.ec2_state in ("terminated", "shutting-down"):
            raise EC2LauncherError(f"The instance is {record.ec2_state}; the resize stopped.")
        if time.monotonic() > deadline:
            raise EC2LauncherError(
                f"The instance did not stop in {manager.boot_timeout:.0f} s; its type is "
                "unchanged. Try again once it is stopped."
            )
        record.state_changed.clear()
        manager._changed.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(record.state_changed.wait(), timeout=delay)
        delay = min(delay * 2, manager.poll_fast)


async def _reprice(manager: LaunchManager, record: InstanceRecord) -> None:
    """The new type's $/h for the record and the cost ledger (unknown: null, never 0)."""
    try:
        hourly = await manager._thread(
            manager.prices.hourly_usd, record.region, record.instance_type, record.spot
        )
    except EC2LauncherError:
        hourly = None
    record.hourly_usd = hourly
    now = manager.clock()
    if not manager.costs.set_hourly(record.id, hourly, now, instance_type=record.instance_type):
        entry = manager.costs.entries.get(record.id)
        if entry is not None and entry.instance_type != record.instance_type:
            entry.instance_type, entry.hourly_usd = record.instance_type, hourly
    manager.cost_keeper.save()


__all__ = [
    "SOURCES",
    "SUGGESTED_TYPES",
    "Refusal",
    "Resizer",
    "TypeInfo",
    "quota_refusal",
    "spot_refusal",
    "start_resize",
    "type_refusal",
    "validate_resize",
]
