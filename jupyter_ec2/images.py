"""Saved images: an instance's disk kept as an AMI, listed with its cost, relaunched, deleted.

``POST instances/{id}/image``, ``GET images`` and ``DELETE images/{ami}`` (DESIGN.md §4) are
carried out by :class:`SavedImages`, which the manager owns (``manager.images``). Every boto3 call
is in :class:`~jupyter_ec2.aws.EC2Backend` and runs in a worker thread; this module decides and
remembers:

- **What an image is of.** A stopped instance is imaged as it is (consistent). A running one is
  imaged either with EC2's reboot (``reboot``: EC2 shuts it down around the snapshot, so the
  image is consistent, and the notebook restarts: the forward is closed and the bring-up runs
  again, as after a start) or without (no interruption; files being written may be inconsistent
  in the image).
- **EC2 is late.** A just-created image may be missing from ``DescribeImages`` for a while, and is
  ``pending`` until its snapshots are complete. An image created here is listed (``pending``)
  until EC2 reports it; one deleted here is not listed while EC2 still does. After a restart,
  images are found again by their managed tags.
- **What it costs.** ``monthly_usd`` is the size of its snapshots times the region's EBS snapshot
  price per GB-month from the Price List (``None`` when AWS does not say). EBS bills the blocks
  a snapshot holds, so the size of the disk makes this an upper bound.
- **Relaunching.** A saved image is named as a profile's or an override's ``ami``; the launch
  records the instance the image was saved from, so that provisioning finds the environment that
  instance installed on the disk and reports the step as already done.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from typing import Any

from . import lifecycle as lc
from .errors import ConflictError, EC2LauncherError, NotFoundError
from .models import Image, ImageRequest, Phase, validate_image_id

#: How long an image created here is listed while EC2 does not report it yet.
UNSEEN_GRACE_SECONDS = 3600.0

#: EC2 image states → the API's (``pending``, ``available``, ``failed``).
_STATES = {"available": "available", "pending": "pending", "transient": "pending"}


def api_state(ec2_state: str) -> str:
    """The API ``state`` of an EC2 image state (``failed`` for invalid, error, failed…)."""
    return _STATES.get(ec2_state, "failed")


def monthly_usd(size_gb: int | None, gb_month_usd: float | None) -> float | None:
    """What an image's snapshots cost a month at most, or None when a factor is unknown."""
    if size_gb is None or gb_month_usd is None:
        return None
    return round(size_gb * gb_month_usd, 4)


class SavedImages:
    """Saves, lists and deletes the images of managed instances (one per manager)."""

    def __init__(self, manager: Any):
        self.manager = manager
        self._created: dict[str, tuple[float, Image]] = {}  # made here, maybe not yet described
        self._deleted: dict[str, float] = {}  # deleted here, maybe still described
        self._known: dict[str, Image] = {}  # the last answer, by id
        self._sources: dict[str, str | None] = {}  # image id -> instance it was saved from

    # -- create ------------------------------------------------------------------------------

    async def create(self, instance_id: str, request: ImageRequest) -> dict[str, Any]:
        """Save an instance's disk as an image; answers the ``pending`` Image at once."""
        m = self.manager
        record = m.get(instance_id)
        lc.check_action(record.id, m.state_of(record), "image")
        profile = m._profile_of(record)
        running = record.phase != Phase.STOPPED
        reboot = request.reboot and running
        label = request.name or f"{record.name}"
        async with m._action(record):
            saved = await m._thread(
                functools.partial(
                    m.backend.create_image,
                    record.id,
                    record.region,
                    label=label,
                    environment=profile.environment,
                    profile_name=record.profile,
                    reboot=reboot,
                )
            )
            if reboot:
                how = "EC2 reboots the instance around the snapshot; the notebook restarts"
            elif running:
                how = "saved while it runs (files being written may be inconsistent)"
            else:
                how = "saved while stopped (consistent)"
            m._log(record, "image", f"Saving image {saved.image_id} ({label}): {how}.")
            if reboot:
                await self._after_reboot(record, profile)
        image = Image(
            id=saved.image_id,
            name=label,
            state="pending",
            source_instance=record.id,
            created_at=saved.created_at,
            region=saved.region,
            environment=saved.environment,
        )
        self._created[image.id] = (time.monotonic(), image)
        self._sources[image.id] = record.id
        return image.to_json()

    async def _after_reboot(self, record: Any, profile: Any) -> None:
        """EC2 reboots the instance: drop the forward and bring the notebook back up."""
        m = self.manager
        await m._cancel_task(record)
        await m._close_forward(record)
        m._set_phase(record, Phase.CONNECTING, "EC2 reboots the instance for the image.")
        m._run(record, m._bring_up(record, profile, fresh=False))

    # -- list --------------------------------------------------------------------------------

    async def list(self) -> list[dict[str, Any]]:
        """Every managed image of every region in use, newest first (``GET images``)."""
        m = self.manager
        found: dict[str, Image] = {}
        for region in m._regions():
            saved = await m._thread(m.backend.list_images, region)
            price = None
            if saved:
                price = await m._thread(m.prices.snapshot_gb_month_usd, region)
            for item in saved:
                self._sources[item.image_id] = item.source_instance
                found[item.image_id] = Image(
                    id=item.image_id,
                    name=item.label or item.name,
                    state=api_state(item.state),
                    source_instance=item.source_instance,
                    created_at=_iso(item.created_at),
                    size_gb=item.size_gb,
                    monthly_usd=monthly_usd(item.size_gb, price),
                    region=region,
                    environment=item.environment,
                )
        now = time.monotonic()
        for image_id, (created, image) in list(self._created.items()):
            if image_id in found or now - created > UNSEEN_GRACE_SECONDS:
                del self._created[image_id]
            else:
                found[image_id] = image  # EC2 does not report it yet: "not yet", not "gone"
        for image_id, deleted in list(self._deleted.items()):
            if image_id not in found and now - deleted > UNSEEN_GRACE_SECONDS:
                del self._deleted[image_id]
            found.pop(image_id, None)
        self._known = found
        images = sorted(found.values(), key=lambda i: (i.created_at, i.id), reverse=True)
        return [image.to_json() for image in images]

    # -- delete ------------------------------------------------------------------------------

    async def delete(self, image_id: str) -> dict[str, Any]:
        """Deregister a managed image and delete its snapshots (``DELETE images/{ami}``)."""
        m = self.manager
        image_id = validate_image_id(image_id)
        if image_id in self._deleted:
            raise NotFoundError(f"Image {image_id} was deleted.", code="InvalidAMIID.NotFound")
        region = self._region_of(image_id)
        try:
            saved = await m._thread(m.backend.delete_image, image_id, region)
        except NotFoundError:
            if image_id in self._created:
                raise ConflictError(
                    f"EC2 does not report image {image_id} yet; try again in a moment."
                ) from None
            raise
        self._deleted[image_id] = time.monotonic()
        self._created.pop(image_id, None)
        known = self._known.pop(image_id, None)
        image = Image(
            id=saved.image_id,
            name=saved.label or saved.name,
            state=api_state(saved.state),
            source_instance=saved.source_instance,
            created_at=_iso(saved.created_at),
            size_gb=saved.size_gb,
            monthly_usd=known.monthly_usd if known else None,
            region=saved.region,
            environment=saved.environment,
        )
        return {**image.to_json(), "deleted": True, "snapshots_deleted": list(saved.snapshot_ids)}

    def _region_of(self, image_id: str) -> str | None:
        known = self._known.get(image_id) or (self._created.get(image_id) or (0, None))[1]
        return known.region if known is not None and known.region else None

    # -- relaunching -------------------------------------------------------------------------

    async def note_launch(self, record: Any, asked: str, image_id: str) -> None:
        """A launch from an image id: remember which instance's disk it copies, if ours."""
        if asked.startswith("ami-"):
            record.image_source = await self.source_of(image_id, record.region)
            if record.image_source:
                self.manager._log(
                    record, "launch", f"From image {image_id}, saved from {record.image_source}."
                )

    async def source_of(self, image_id: str, region: str) -> str | None:
        """The instance a managed image was saved from (None for any other image)."""
        if image_id in self._sources:
            return self._sources[image_id]
        m = self.manager
        try:
            saved = await m._thread(m.backend.list_images, region)
        except EC2LauncherError as err:
            m.log.debug("jupyter-ec2: saved images of %s unknown: %s", region, err)
            return None
        for item in saved:
            self._sources[item.image_id] = item.source_instance
        return self._sources.get(image_id)


def _iso(value: Any) -> str:
    """An ISO 8601 time from what botocore or moto gives (a string or a datetime)."""
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds")
    return str(value or "")


__all__ = ["SavedImages", "api_state", "monthly_usd"]
