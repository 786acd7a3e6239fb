"""``make demo``: JupyterLab with jupyter-ec2 on the embedded default, a simulated cloud.

Starts the simulated cloud (moto on 127.0.0.1) and the instance hosts (one private sshd per
running instance), writes a Jupyter config that points jupyter-ec2 at them, and runs JupyterLab
on a free loopback port until Ctrl-C. Nothing leaves this machine and no AWS account is used.
``--sim-only DIR`` runs only the cloud and the hosts and writes the config (``DIR/jupyter_server_
config.json``) and the environment (``DIR/env.sh``) for a JupyterLab started elsewhere: that is
what ``binder/start`` does.

Two modes, chosen by who runs it:

- **root**: the "instances" are this machine; provisioning creates the notebook user
  :data:`DEMO_USER` here (removed on exit), the image is ``/opt/jupyter-ec2-sim``.
- **user** (anyone else, e.g. Binder's ``jovyan``): sshd runs as this user, who is both the
  login and the notebook user; provisioning runs without root (state in ``~/.local/state``), the
  image is under ``$XDG_CACHE_HOME/jupyter-ec2-sim``; nothing is written outside the home and
  the temporary directory.

The image interpreter (``make sim-image``) stands in for an AMI with Python preinstalled; the
idle auto-stop command is harmless (``/bin/true``: it never shuts this machine down).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .cloud import SimulatedCloud, free_port
from .hosts import InstanceHosts, current_user


def running_as_root() -> bool:
    """Whether the demo runs in root mode (else user mode)."""
    return os.geteuid() == 0


def default_sim_dir() -> Path:
    """Where the simulated image lives: /opt for root, the user's cache directory otherwise."""
    if os.environ.get("JUPYTER_EC2_SIM_DIR"):
        return Path(os.environ["JUPYTER_EC2_SIM_DIR"])
    if running_as_root():
        return Path("/opt/jupyter-ec2-sim")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "jupyter-ec2-sim"


def image_python() -> str:
    """The simulated image's interpreter (``make sim-image``)."""
    return os.environ.get("JUPYTER_EC2_IMAGE_PYTHON") or str(
        default_sim_dir() / "image-python" / "bin" / "python"
    )


#: The simulated image's interpreter when the module was imported (see :func:`image_python`).
IMAGE_PYTHON = image_python()
#: The notebook user provisioning creates on this machine in the root demo.
DEMO_USER = "jec2demo"
#: A documentation address (RFC 5737) standing for "your public IP": only written into the
#: simulated security group, never connected to.
DEMO_CALLER_CIDR = "198.51.100.7/32"


def simulated_config(
    cloud: SimulatedCloud,
    hosts: InstanceHosts,
    state_dir: Path,
    *,
    notebook_user: str | None = None,
    idle_stop_command: str = "/bin/true",
    idle_stop_minutes: float = 30,
    profiles: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A jupyter_server config that runs jupyter-ec2 against a simulated cloud and its hosts.

    The notebook user defaults to :data:`DEMO_USER` as root, to the hosts' login user (this
    user) otherwise: a non-root sshd lets only its own user log in.
    """
    if notebook_user is None:
        notebook_user = DEMO_USER if running_as_root() else hosts.login_user
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
            "login_user": hosts.login_user,
            "notebook_user": notebook_user,
            "environment": {"kind": "existing", "python": image_python()},
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


def mode_line() -> str:
    """One sentence saying which mode the demo runs in."""
    if running_as_root():
        return (
            f"root mode: instance hosts are sshd daemons on this machine; provisioning creates "
            f"the notebook user {DEMO_USER} here (removed on exit)."
        )
    user = current_user()
    return (
        f"user mode: sshd runs as {user}, who is the login and notebook user; nothing is "
        f"written outside {Path.home()} and {tempfile.gettempdir()}."
    )


def start_simulation(
    work: Path, boot_delay: float = 3.0
) -> tuple[SimulatedCloud, InstanceHosts, Path, dict[str, str]]:
    """Start the cloud and the hosts; write ``work/jupyter_server_config.json``.

    Returns the cloud, the hosts, the config path and the environment a JupyterLab process
    needs (dummy credentials, the endpoint, the closed proxy).
    """
    from .containers import container_config, make_instance_hosts

    cloud = SimulatedCloud().start()
    try:
        hosts, host_kind = make_instance_hosts(cloud, work / "hosts", boot_delay=boot_delay)
    except BaseException:
        cloud.stop()
        raise
    print(f"Instance hosts: {host_kind} kind", flush=True)
    config = simulated_config(cloud, hosts, work / "state")
    if host_kind == "container":
        config = container_config(config)
    config_path = work / "jupyter_server_config.json"
    config_path.write_text(json.dumps(config, indent=1))
    return cloud, hosts, config_path, cloud.env()


def _stop_simulation(cloud: SimulatedCloud, hosts: InstanceHosts) -> None:
    hosts.close()
    cloud.stop()
    if running_as_root():
        remove_user(DEMO_USER)


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_sim_only(work: Path, boot_delay: float) -> int:
    """Run the cloud and hosts until SIGTERM; write ``env.sh`` and then ``ready`` into ``work``.

    ``env.sh`` holds ``export`` lines (shell-quoted) for the JupyterLab that uses the config:
    the dummy credentials and the config path (``JUPYTER_EC2_DEMO_CONFIG``).
    """
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    (work / "ready").unlink(missing_ok=True)
    cloud, hosts, config_path, env = start_simulation(work, boot_delay)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        env = {**env, "JUPYTER_EC2_DEMO_CONFIG": str(config_path)}
        lines = [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
        (work / "env.sh").write_text("\n".join(lines) + "\n")
        (work / "ready").write_text(f"{os.getpid()}\n")
        print(f"jupyter-ec2 simulated cloud on {cloud.endpoint_url}; {mode_line()}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        (work / "ready").unlink(missing_ok=True)
        _stop_simulation(cloud, hosts)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="JupyterLab's port (0: a free one)")
    parser.add_argument("--boot-delay", type=float, default=3.0, help="simulated boot seconds")
    parser.add_argument(
        "--sim-only",
        metavar="DIR",
        help="run only the cloud and the hosts; write the config, env.sh and ready into DIR",
    )
    args = parser.parse_args(argv)
    if not Path(image_python()).exists():
        print(
            f"{image_python()} is missing: run `make sim-image` first "
            f"(SIM_DIR={default_sim_dir()}).",
            file=sys.stderr,
        )
        return 1
    if args.sim_only:
        return run_sim_only(Path(args.sim_only), args.boot_delay)

    work = Path(tempfile.mkdtemp(prefix="jupyter-ec2-demo-"))
    cloud, hosts, config_path, cloud_env = start_simulation(work, args.boot_delay)
    lab = None
    try:
        port = args.port or free_port()
        token = secrets.token_hex(24)
        env = {**os.environ, **cloud_env, "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
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
                *(["--allow-root"] if running_as_root() else []),
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                f"--ServerApp.root_dir={work}",
            ],
            env=env,
        )
        _wait_for(f"http://127.0.0.1:{port}/api/status", token, timeout=60)
        print(
            "\n  jupyter-ec2 demo on a simulated cloud (moto) with instance hosts on this machine."
            f"\n  Mode: {mode_line()}"
            f"\n  Open: http://127.0.0.1:{port}/lab?token={token}"
            "\n  Click an EC2 tile in the launcher. Ctrl-C stops everything.\n",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _raise_interrupt)
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
        _stop_simulation(cloud, hosts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
