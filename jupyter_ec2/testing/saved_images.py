"""What AWS's CreateImage does that moto's (5.x) does not, closed inside moto for the harness.

Three gaps matter to saved images (issue 15), each closed in moto's backend so clients still see
the result only through the real APIs over HTTP:

- **Tags on the snapshots.** AWS's ``CreateImage`` takes ``TagSpecifications`` for ``image``
  and ``snapshot``; moto raises ``NotImplementedError`` for ``snapshot``. Here the snapshot tags
  land on the image's snapshot.
- **The size of the disk.** AWS's image of an instance maps its root device to a snapshot of the
  instance's root volume, of that volume's size; moto reports a 15 GB ``standard`` volume for
  every image. Here an image of an instance reports its root volume's device, size and type,
  and the images loaded from the image list report 8 GB, what Canonical's and Debian's have.
- **The disk itself.** The harness's instance hosts keep real disks (the container kind): a
  listener registered with :func:`on_create_image` is called with ``(region, image, instance,
  reboot)`` as the image is created, so that it can copy the source's disk; while a listener
  says the copy is under way (:func:`set_image_state`), the image reads ``pending``, as on EC2
  until its snapshots are complete.

:func:`install` and :func:`uninstall` are called by
:class:`~jupyter_ec2.testing.cloud.SimulatedCloud`; moto has one state per process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: The size moto's images loaded from the image list report (Canonical's and Debian's are 8 GB).
STOCK_IMAGE_GB = 8

_saved: dict[str, Any] = {}
_listeners: list[Callable[[str, Any, Any, bool], None]] = []
_lock = threading.Lock()
_request = threading.local()  # NoReboot of the CreateImage request this thread serves


def on_create_image(listener: Callable[[str, Any, Any, bool], None]) -> Callable[[], None]:
    """Call ``listener(region, ami, instance, reboot)`` on every CreateImage; returns an undo."""
    with _lock:
        _listeners.append(listener)

    def remove() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove


def set_image_state(ami: Any, state: str) -> None:
    """Set a moto image's state (``pending`` while its disk is copied, then ``available``)."""
    ami.state = state


def _root_volume(backend: Any, instance: Any) -> tuple[str, int, str] | None:
    """(device, size in GiB, volume type) of an instance's root volume in moto."""
    for device, block in instance.get_block_device_mapping:
        if device == instance.root_device_name or len(instance.block_device_mapping) == 1:
            try:
                volume = backend.get_volume(block.volume_id)
            except Exception:  # noqa: BLE001 - detached meanwhile: report nothing
                return None
            return device, int(volume.size), getattr(volume, "volume_type", "gp3") or "gp3"
    return None


def install() -> None:
    """Patch moto's CreateImage (snapshot tags, disk size, listeners) and images' mappings."""
    if _saved:
        return
    from moto.ec2.models.amis import Ami, AmiBackend
    from moto.ec2.responses.amis import AmisResponse

    original_create = AmiBackend.create_image
    original_response = AmisResponse.create_image
    original_mappings = Ami.block_device_mappings

    def create_image(
        self: Any,
        instance_id: str,
        name: str,
        description: str,
        tag_specifications: list[dict[str, Any]],
    ) -> Any:
        snapshot_tags: dict[str, str] = {}
        image_specs = []
        for spec in tag_specifications or []:
            if spec.get("ResourceType") == "snapshot":
                snapshot_tags.update({t["Key"]: t["Value"] for t in spec.get("Tags") or []})
            else:
                image_specs.append(spec)
        ami = original_create(self, instance_id, name, description, image_specs)
        instance = self.get_instance(instance_id)
        root = _root_volume(self, instance)
        if root is not None:
            ami.root_device_name, ami._jupyter_ec2_root_gb, ami._jupyter_ec2_type = root
        ami.root_device_type = "ebs"
        if snapshot_tags:
            self.create_tags([ami.ebs_snapshot.id], snapshot_tags)
        with _lock:
            listeners = list(_listeners)
        for listener in listeners:
            try:
                listener(self.region_name, ami, instance, getattr(_request, "reboot", False))
            except Exception:  # noqa: BLE001 - a harness listener's bug must not fail the call
                log.exception("A CreateImage listener failed for %s", ami.id)
        return ami

    def create_image_response(self: Any) -> Any:
        # The backend method has no NoReboot parameter: read it here and pass it on.
        _request.reboot = str(self._get_param("NoReboot", "false")).lower() != "true"
        try:
            return original_response(self)
        finally:
            _request.reboot = False

    def block_device_mappings(ami: Any) -> list[dict[str, Any]]:
        mappings = original_mappings.fget(ami)
        size = getattr(ami, "_jupyter_ec2_root_gb", STOCK_IMAGE_GB)
        for mapping in mappings:
            ebs = mapping.get("Ebs") or {}
            ebs["VolumeSize"] = size
            if hasattr(ami, "_jupyter_ec2_type"):
                ebs["VolumeType"] = ami._jupyter_ec2_type
                ebs["DeleteOnTermination"] = True
        return mappings

    _saved.update(create=original_create, response=original_response, mappings=original_mappings)
    AmiBackend.create_image = create_image  # type: ignore[method-assign]
    AmisResponse.create_image = create_image_response  # type: ignore[method-assign]
    Ami.block_device_mappings = property(block_device_mappings)  # type: ignore[method-assign,assignment]


def uninstall() -> None:
    """Undo :func:`install`."""
    if not _saved:
        return
    from moto.ec2.models.amis import Ami, AmiBackend
    from moto.ec2.responses.amis import AmisResponse

    AmiBackend.create_image = _saved.pop("create")  # type: ignore[method-assign]
    AmisResponse.create_image = _saved.pop("response")  # type: ignore[method-assign]
    Ami.block_device_mappings = _saved.pop("mappings")  # type: ignore[method-assign]


class DiskImages:
    """Saved disks of container-kind instance hosts: what an EBS snapshot of the root holds.

    On CreateImage of an instance whose host has a disk (``host_of(instance_id)`` gives one with
    ``disk``, ``is_running``, ``stop()`` and ``start()``), the disk is copied into ``directory``
    under the image id, and the image reads ``pending`` until the copy is complete. With EC2's
    reboot the host is shut down first (the copy is then consistent) and booted again after;
    without, the disk is copied while in use, as EBS snapshots a live volume. A host launched
    from a saved image starts from a copy of it (:meth:`restore`).
    """

    def __init__(self, directory: Any, host_of: Callable[[str], Any]):
        from pathlib import Path

        self.directory = Path(directory)
        self._host_of = host_of
        self._threads: list[threading.Thread] = []
        self._remove = on_create_image(self._on_create_image)

    def _on_create_image(self, region: str, ami: Any, instance: Any, reboot: bool) -> None:
        host = self._host_of(instance.id)
        if host is None or not host.disk.exists():
            return
        set_image_state(ami, "pending")
        rebooted = reboot and host.is_running
        if rebooted:
            host.stop()  # EC2 shuts the instance down before it snapshots the volume
        thread = threading.Thread(
            target=self._copy, args=(ami, host, rebooted), name=f"image-{ami.id}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _copy(self, ami: Any, host: Any, rebooted: bool) -> None:
        import subprocess

        target = self.directory / ami.id
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # cp -a keeps owners, modes, xattrs and the overlay's whiteouts (device nodes).
        done = subprocess.run(
            ["cp", "-a", "--", str(host.disk), str(target)], capture_output=True, text=True
        )
        if done.returncode != 0:
            log.warning("Copying the disk of %s failed: %s", ami.id, done.stderr.strip())
            set_image_state(ami, "failed")
        else:
            set_image_state(ami, "available")
        if rebooted:
            try:
                host.start()
            except Exception:  # noqa: BLE001 - the harness logs; the instance stays down
                log.exception("Could not boot %s again after its image", host.instance_id)

    def restore(self, image_id: str | None, disk: Any) -> bool:
        """Make ``disk`` (not yet existing) a copy of a saved image's; False if none is saved."""
        import subprocess

        source = self.directory / str(image_id)
        if not image_id or not source.is_dir():
            return False
        disk.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--", str(source), str(disk)], check=True, capture_output=True)
        log.info("Disk %s starts as a copy of image %s", disk, image_id)
        return True

    def close(self) -> None:
        """Stop listening (the copies are deleted with the harness's work directory)."""
        self._remove()
        for thread in self._threads:
            thread.join(timeout=120)
