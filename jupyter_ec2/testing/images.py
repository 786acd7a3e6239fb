"""The image list of the simulated cloud: Ubuntu LTS images under Canonical's owner id, Debian 12
images under Debian's.

moto ships only Ubuntu 14.04 and 16.04 images, so the harness loads its own list through
``MOTO_AMIS_PATH`` (moto's format: one dict per image, keys named like ``moto``'s ``Ami``
constructor arguments). The list holds, for jammy (22.04) and noble (24.04), amd64 (``x86_64``)
and arm64, several builds with different creation dates so that "the newest" is testable.

It also holds decoys that a careless image resolver would pick, each newer than the real ones:
a non-LTS release, ``minimal`` and ``pro`` variants, and an impostor with Canonical's naming
scheme under another owner id (AMI name squatting). A resolver that filters by owner, name
pattern and architecture, then takes the newest creation date, picks the ``newest_ubuntu()``
answer.

Debian 12 (``debian-12``) images follow Debian's naming (``debian-12-amd64-YYYYMMDD-HHMM``) under
Debian's owner id, with a ``backports`` variant and an impostor as decoys; ``newest_debian()`` is
what a correct resolver picks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CANONICAL_OWNER_ID = "099720109477"
"""The AWS account id Canonical publishes its Ubuntu images under."""

DEBIAN_OWNER_ID = "136693071363"
"""The AWS account id Debian publishes its official cloud images under (login user ``admin``)."""

IMPOSTOR_OWNER_ID = "111122223333"
"""An unrelated account publishing images with Canonical's naming scheme."""

SERIES = {"22.04": "jammy", "24.04": "noble"}
"""The Ubuntu LTS versions in the list, by version number."""

ARCHITECTURES = {"x86_64": "amd64", "arm64": "arm64"}
"""EC2 architecture name to Ubuntu architecture name."""

# (version, EC2 architecture, volume kind, build date): the genuine LTS server images.
_BUILDS = [
    ("22.04", "x86_64", "hvm-ssd", "20240207"),
    ("22.04", "x86_64", "hvm-ssd-gp3", "20250612"),
    ("22.04", "x86_64", "hvm-ssd-gp3", "20250925"),
    ("22.04", "arm64", "hvm-ssd", "20240207"),
    ("22.04", "arm64", "hvm-ssd-gp3", "20250612"),
    ("22.04", "arm64", "hvm-ssd-gp3", "20250925"),
    ("24.04", "x86_64", "hvm-ssd-gp3", "20250305"),
    ("24.04", "x86_64", "hvm-ssd-gp3", "20250610"),
    ("24.04", "x86_64", "hvm-ssd-gp3", "20251001"),
    ("24.04", "arm64", "hvm-ssd-gp3", "20250305"),
    ("24.04", "arm64", "hvm-ssd-gp3", "20250610"),
    ("24.04", "arm64", "hvm-ssd-gp3", "20251001"),
]


def _ami_id(name: str, owner: str) -> str:
    """A stable, AWS-shaped image id derived from the image's name and owner."""
    return "ami-" + hashlib.sha256(f"{owner}/{name}".encode()).hexdigest()[:17]


def _image(
    name: str,
    arch: str,
    date: str,
    description: str,
    owner: str = CANONICAL_OWNER_ID,
) -> dict:
    """One image definition in moto's ``MOTO_AMIS_PATH`` format."""
    return {
        "ami_id": _ami_id(name, owner),
        "name": name,
        "description": description,
        "owner_id": owner,
        "public": True,
        "state": "available",
        "architecture": arch,
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "root_device_type": "ebs",
        "root_device_name": "/dev/sda1",
        "image_type": "machine",
        "image_location": f"amazon/{name}",
        "sriov": "simple",
        "boot_mode": "uefi" if arch == "arm64" else "uefi-preferred",
        "creation_date": f"{date[:4]}-{date[4:6]}-{date[6:]}T08:00:00.000Z",
    }


def ubuntu_images() -> list[dict]:
    """Every image of the simulated cloud, genuine and decoys, in moto's format."""
    images = []
    for version, arch, volume, date in _BUILDS:
        series, uarch = SERIES[version], ARCHITECTURES[arch]
        name = f"ubuntu/images/{volume}/ubuntu-{series}-{version}-{uarch}-server-{date}"
        desc = f"Canonical, Ubuntu, {version} LTS, {uarch} {series} image"
        images.append(_image(name, arch, date, desc))
    for arch, uarch in ARCHITECTURES.items():
        # Decoys, each newer than every genuine LTS server image above.
        images.append(
            _image(
                f"ubuntu/images/hvm-ssd-gp3/ubuntu-plucky-25.04-{uarch}-server-20251010",
                arch,
                "20251010",
                f"Canonical, Ubuntu, 25.04, {uarch} plucky image",
            )
        )
        images.append(
            _image(
                f"ubuntu-minimal/images/hvm-ssd-gp3/ubuntu-noble-24.04-{uarch}-minimal-20251011",
                arch,
                "20251011",
                f"Canonical, Ubuntu Minimal, 24.04 LTS, {uarch} noble image",
            )
        )
        images.append(
            _image(
                f"ubuntu-pro-server/images/hvm-ssd-gp3/ubuntu-noble-24.04-{uarch}-pro-server-20251012",
                arch,
                "20251012",
                f"Canonical, Ubuntu Pro Server, 24.04 LTS, {uarch} noble image",
            )
        )
        images.append(
            _image(
                f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{uarch}-server-20251101",
                arch,
                "20251101",
                f"Canonical, Ubuntu, 24.04 LTS, {uarch} noble image",
                owner=IMPOSTOR_OWNER_ID,
            )
        )
    return images


# (EC2 architecture, build date and time): Debian 12 ("bookworm") official images.
_DEBIAN_BUILDS = [
    ("x86_64", "20250316-2053"),
    ("x86_64", "20250814-2204"),
    ("x86_64", "20251006-2257"),
    ("arm64", "20250316-2053"),
    ("arm64", "20250814-2204"),
    ("arm64", "20251006-2257"),
]


def debian_images() -> list[dict]:
    """Debian 12 images, genuine and decoys, in moto's format."""
    images = []
    for arch, stamp in _DEBIAN_BUILDS:
        uarch = ARCHITECTURES[arch]
        images.append(
            _image(f"debian-12-{uarch}-{stamp}", arch, stamp[:8], "Debian 12 (20251006-2257)",
                   owner=DEBIAN_OWNER_ID)
        )  # fmt: skip
    for arch, uarch in ARCHITECTURES.items():
        images.append(
            _image(f"debian-12-backports-{uarch}-20251101-1200", arch, "20251101",
                   "Debian 12 backports", owner=DEBIAN_OWNER_ID)
        )  # fmt: skip
        images.append(
            _image(f"debian-12-{uarch}-20251102-1200", arch, "20251102", "Debian 12",
                   owner=IMPOSTOR_OWNER_ID)
        )  # fmt: skip
    return images


def newest_debian(arch: str = "x86_64") -> dict:
    """The image a correct resolver picks for ``debian-12``: Debian's newest build for arch."""
    prefix = f"debian-12-{ARCHITECTURES[arch]}-"
    candidates = [
        image
        for image in debian_images()
        if image["owner_id"] == DEBIAN_OWNER_ID
        and image["name"].startswith(prefix)
        and image["architecture"] == arch
    ]
    return max(candidates, key=lambda image: image["creation_date"])


def newest_ubuntu(version: str = "24.04", arch: str = "x86_64") -> dict:
    """The image a correct resolver picks: newest genuine LTS server build for version/arch."""
    series, uarch = SERIES[version], ARCHITECTURES[arch]
    prefix = "ubuntu/images/"
    suffix = f"/ubuntu-{series}-{version}-{uarch}-server-"
    candidates = [
        image
        for image in ubuntu_images()
        if image["owner_id"] == CANONICAL_OWNER_ID
        and image["name"].startswith(prefix)
        and suffix in image["name"]
        and image["architecture"] == arch
    ]
    return max(candidates, key=lambda image: image["creation_date"])


def write_amis_file(path: str | Path) -> Path:
    """Write the image list where ``MOTO_AMIS_PATH`` can point (also for a ``moto_server``)."""
    path = Path(path)
    path.write_text(json.dumps(ubuntu_images() + debian_images(), indent=1))
    return path
