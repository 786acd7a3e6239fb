"""``make demo``: JupyterLab with jupyter-ec2 on the embedded default, a simulated cloud.

Starts the simulated cloud (moto on 127.0.0.1) and the instance hosts (one private sshd per
running instance), writes a Jupyter config that points jupyter-ec2 at them, and runs JupyterLab
on a free loopback port until Ctrl-C. Nothing leaves this machine and no AWS account is used.

The "instances" are this machine: provisioning creates the notebook user :data:`DEMO_USER`
here, and the demo removes it on exit. The image interpreter (``make sim-image``) stands in for
an AMI with Python preinstalled; the idle auto-stop command is harmless (it only logs).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .cloud import SimulatedCloud, free_port
from .hosts import InstanceHosts

#: The simulated image's interpreter (``make sim-image``), runnable by any user.
IMAGE_PYTHON = os.environ.get(
    "JUPYTER_EC2_IMAGE_PYTHON", "/opt/jupyter-ec2-sim/image-python/bin/python"
)
#: The notebook user provisioning creates on this machine in the demo.
DEMO_USER = "jec2demo"
#: A documentation address (RFC 5737) standing for "your public IP": only written into the
#: simulated security group, never connected to.
DEMO_CALLER_CIDR = "198.51.100.7/32"


def simulated_config(
    cloud: SimulatedCloud,
    hosts: InstanceHosts,
    state_dir: Path,
    *,
    notebook_user: str = DEMO_USER,
    idle_stop_command: str = "/bin/true",
    idle_stop_minutes: float = 30,
    profiles: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A jupyter_server config that runs jupyter-ec2 against a simulated cloud and its hosts."""
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_ec2": True}},
        "EC2Launcher": {
            "state_dir": str(state_dir),
            "profiles": profiles
            or {
                "cpu": {"display_name": "CPU (t3.medium)", "instance_type": "t3.medium"},
                "arm": {
                    "display_name": "Graviton (m7g.large)",
                    "instance_type": "m7g.large",
                    "volume_gb": 50,
                },
                "gpu": {
                    "display_name": "GPU (g5.xlarge, spot)",
                    "instance_type": "g5.xlarge",
                    "volume_gb": 100,
                    "spot": True,
                },
            },
        },
        "EC2Backend": {
            "endpoint_url": cloud.endpoint_url,
            "region": cloud.region,
            "ssh_cidrs": [DEMO_CALLER_CIDR],
        },
        "Provisioner": {
            "ssh_config_file": str(hosts.ssh_config_path),
            "login_user": "root",
            "notebook_user": notebook_user,
            "environment": {"kind": "existing", "python": IMAGE_PYTHON},
            "idle_stop_minutes": idle_stop_minutes,
            "idle_stop_command": idle_stop_command,
            "connect_timeout": 60,
            # Each simulated instance's sshd keeps its host key and pid file in its own
            # directory (jupyter_ec2.testing.hosts): host key rotation works there as on EC2.
            "sshd_host_key_file": str(
                hosts.workdir / "hosts" / "{instance_id}" / "ssh_host_ed25519_key"
            ),
            "sshd_pid_file": str(hosts.workdir / "hosts" / "{instance_id}" / "sshd.pid"),
        },
        "LaunchManager": {"poll_fast": 0.5, "poll_slow": 10},
    }


def remove_user(name: str) -> None:
    """Remove a notebook user provisioning created on this machine (and its home)."""
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["userdel", "-r", "-f", name], check=False, capture_output=True)


def _wait_for(url: str, token: str, timeout: float) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})  # noqa: S310 - a loopback http URL we built
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(request, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    """Run the demo until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="JupyterLab's port (0: a free one)")
    parser.add_argument("--boot-delay", type=float, default=3.0, help="simulated boot seconds")
    args = parser.parse_args(argv)
    if not Path(IMAGE_PYTHON).exists():
        print(f"{IMAGE_PYTHON} is missing: run `make sim-image` first.", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print(
            "The demo plays the instance host with sshd and a notebook user: run it as root.",
            file=sys.stderr,
        )
        return 1

    work = Path(tempfile.mkdtemp(prefix="jupyter-ec2-demo-"))
    cloud = SimulatedCloud().start()
    from .containers import container_config, make_instance_hosts

    hosts, host_kind = make_instance_hosts(cloud, work / "hosts", boot_delay=args.boot_delay)
    print(f"Instance hosts: {host_kind} kind", flush=True)
    lab = None
    try:
        config_path = work / "jupyter_server_config.json"
        config = simulated_config(cloud, hosts, work / "state")
        if host_kind == "container":
            config = container_config(config)
        config_path.write_text(json.dumps(config, indent=1))
        port = args.port or free_port()
        token = secrets.token_hex(24)
        env = {**os.environ, **cloud.env(), "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
        lab = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                f"--config={config_path}",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--no-browser",
                f"--IdentityProvider.token={token}",
                "--allow-root",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                f"--ServerApp.root_dir={work}",
            ],
            env=env,
        )
        _wait_for(f"http://127.0.0.1:{port}/api/status", token, timeout=60)
        print(
            "\n  jupyter-ec2 demo on a simulated cloud (moto) with instance hosts on this machine."
            f"\n  Open: http://127.0.0.1:{port}/lab?token={token}"
            "\n  Click an EC2 tile in the launcher. Ctrl-C stops everything.\n",
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        lab.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if lab is not None and lab.poll() is None:
            lab.terminate()  # SIGTERM: jupyter shuts down without asking
            try:
                lab.wait(timeout=10)
            except subprocess.TimeoutExpired:
                lab.kill()
        hosts.close()
        cloud.stop()
        remove_user(DEMO_USER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
