"""The setup script's ``gpu`` step: an NVIDIA device with no driver is found and dealt with.

There is no GPU on this machine. The detection reads sysfs, so it is tested against FAKE sysfs
trees built in a temporary directory (``c.Provisioner.sysfs_root`` points the real script at
one): PCI devices with their ``vendor`` and ``class`` files and, for a bound device, a ``driver``
symlink, laid out as the kernel lays out ``/sys/bus/pci/devices``. Everything else is real: the
setup script, run by bash; and for the failing step, sshd and a whole provisioning run whose apt
(under a temporary apt root, never this machine's) offers no NVIDIA driver.
"""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

import pytest

# The provisioning fixtures of test_provision (a private sshd, users cleaned up afterwards).
from test_provision import client_key, leftovers, make_provisioner, ssh_host, target  # noqa: F401

from jupyter_ec2.provision import SCRIPT_STEPS, ProvisionError
from jupyter_ec2.provision.params import build_params

SETUP = Path(str(resources.files("jupyter_ec2.provision") / "setup.sh"))


def fake_sysfs(root: Path, devices: dict[str, tuple[str, str, str | None]]) -> Path:
    """A FAKE sysfs: ``{address: (vendor, class, driver or None)}`` under bus/pci/devices."""
    pci = root / "bus" / "pci"
    (pci / "devices").mkdir(parents=True)
    for address, (vendor, klass, driver) in devices.items():
        dev = pci / "devices" / address
        dev.mkdir()
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "class").write_text(klass + "\n")
        if driver:
            (pci / "drivers" / driver).mkdir(parents=True, exist_ok=True)
            (dev / "driver").symlink_to(pci / "drivers" / driver)
    return root


def gpu_check(root: Path) -> str:
    """The script's own verdict on a sysfs tree."""
    run = subprocess.run(
        ["/bin/bash", str(SETUP), "--gpu-check", str(root)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip()


def test_no_nvidia_device_means_nothing_to_do(tmp_path):
    """FAKE sysfs (no GPU here): a CPU instance's devices, an Intel GPU and the ENA NIC."""
    # Given a host without an NVIDIA device / When the script checks / Then it finds none
    root = fake_sysfs(
        tmp_path,
        {
            "0000:00:02.0": ("0x8086", "0x030000", "i915"),
            "0000:00:05.0": ("0x1d0f", "0x020000", "ena"),
        },
    )
    assert gpu_check(root) == "none"


def test_an_nvidia_gpu_without_its_driver_is_found(tmp_path):
    """FAKE sysfs (no GPU here): a g5's A10G (vendor 0x10de, 3D controller) with no driver."""
    # Given an NVIDIA 3D controller with no driver bound, and its audio function
    root = fake_sysfs(
        tmp_path,
        {
            "0000:00:1e.0": ("0x10de", "0x030200", None),
            "0000:00:1e.1": ("0x10de", "0x040300", None),  # not a display controller
            "0000:00:05.0": ("0x1d0f", "0x020000", "ena"),
        },
    )
    # When the script checks / Then it names the device that lacks the driver
    assert gpu_check(root) == "missing 0000:00:1e.0"


def test_an_nvidia_gpu_with_the_nvidia_driver_is_fine_and_nouveau_is_not(tmp_path):
    """FAKE sysfs (no GPU here): one GPU bound to nvidia, then one to nouveau."""
    # Given a GPU the nvidia driver serves / Then it is loaded
    assert gpu_check(fake_sysfs(tmp_path / "a", {"0000:00:1e.0": ("0x10de", "0x030000", "nvidia")}))
    assert gpu_check(tmp_path / "a") == "loaded 0000:00:1e.0"
    # And one bound to nouveau (no CUDA) counts as missing
    nouveau = fake_sysfs(tmp_path / "b", {"0000:00:1e.0": ("0x10de", "0x030000", "nouveau")})
    assert gpu_check(nouveau) == "missing 0000:00:1e.0"


def test_the_gpu_step_is_in_order_and_its_root_is_a_validated_parameter():
    # Given the steps / Then gpu comes after the user and before the environment
    assert SCRIPT_STEPS.index("gpu") == SCRIPT_STEPS.index("user") + 1
    assert SCRIPT_STEPS.index("gpu") + 1 == SCRIPT_STEPS.index("environment")
    # And the sysfs root is a parameter, '/sys' unless told, a bad one refused naming it
    common = dict(
        instance_id="i-0123456789abcdef0",
        login_user="root",
        notebook_user="jupyter",
        authorized_keys=[
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcjnSs1tpHwpOhWRDA3DUd5pITRKGD1cTRKrrHpBuBn"
        ],
        base_url="/",
        token="t" * 43,
    )
    assert build_params(**common)["gpu"] == {"sysfs_root": "/sys"}
    from jupyter_ec2.errors import ValidationError

    with pytest.raises(ValidationError) as caught:
        build_params(**common, sysfs_root="../sys")
    assert caught.value.field == "sysfs_root"


@pytest.mark.slow
def test_without_a_driver_on_the_image_the_step_fails_naming_the_image_to_use(
    leftovers,  # noqa: F811
    target,  # noqa: F811
    tmp_path,
):
    """FAKE sysfs (no GPU here) with an NVIDIA device and no driver; real sshd and setup script;
    apt under an empty temporary apt root (never this machine's), so it offers no driver."""
    # Given a host whose sysfs shows an NVIDIA GPU without a driver, and an apt without one
    instance_id, user = leftovers.new()
    sysfs = fake_sysfs(tmp_path / "sys", {"0000:00:1e.0": ("0x10de", "0x030200", None)})
    apt_root = tmp_path / "apt-root"
    subdirs = ("var/lib/dpkg", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
               "etc/apt/sources.list.d", "etc/apt/apt.conf.d", "etc/apt/preferences.d")  # fmt: skip
    for sub in subdirs:
        (apt_root / sub).mkdir(parents=True, exist_ok=True)
    (apt_root / "var/lib/dpkg/status").write_text("")
    provisioner = make_provisioner(
        user,
        "touch /nonexistent-never-run",
        sysfs_root=str(sysfs),
        apt_root=str(apt_root),
        apt_timeout=10,
        idle_stop_minutes=0,
    )
    # When it is provisioned / Then the gpu step fails, telling plainly which image to use
    with pytest.raises(ProvisionError) as failed:
        provisioner.provision(target, instance_id, "/")
    error = failed.value
    assert error.step == "gpu"
    assert "NVIDIA GPU (0000:00:1e.0) but no NVIDIA driver" in str(error)
    assert "Deep Learning AMI" in str(error)
