"""A notebook environment with jupyter-collaboration for tests of ``before_stop``.

The simulated image's interpreter (``make sim-image``) has JupyterLab but not
jupyter-collaboration, and it is shared by every helper and test, so it is never changed. This
makes a small venv beside it instead: the image's site-packages are reached through a ``.pth``
file, and only jupyter-collaboration and what it adds are installed into the venv, from the
local wheel mirror (no index).

:func:`turn_autosave_off` then turns the collaboration server's own saving off on a provisioned
instance of the sshd-kind host (``YDocExtension.document_save_delay = None`` in the remote
server's config, the server restarted by its supervisor), so that an edit in the browser reaches
the disk only when something saves it: a test of ``before_stop`` then fails without it. (Only
the config file the server is started with is honoured for that setting: the same value in the
venv's ``etc/jupyter`` was measured to be ignored.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from ..provision.params import remote_paths
from .demo import IMAGE_PYTHON


def wheel_mirror() -> Path:
    """The local wheel mirror (``JUPYTER_EC2_SIM_DIR``/wheels, else /opt/jupyter-ec2-sim)."""
    return Path(os.environ.get("JUPYTER_EC2_SIM_DIR", "/opt/jupyter-ec2-sim")) / "wheels"


def has_collaboration_wheels() -> bool:
    """Whether the mirror holds jupyter-collaboration."""
    return any(wheel_mirror().glob("jupyter_collaboration-*.whl"))


def make_collab_env(base: Path) -> Path:
    """A venv at ``base`` (readable by every user) over the image's packages, with
    jupyter-collaboration; returns its interpreter."""
    image = Path(IMAGE_PYTHON)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # noqa: S103 - the notebook user runs this interpreter
    venv = base / "venv"
    # The image venv's own base interpreter, so the .pth below matches its Python version.
    subprocess.run(
        [str(image), "-c", "import venv, sys; venv.main(['--without-pip', sys.argv[1]])", venv],
        check=True,
        timeout=120,
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(image), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(own, "jec2-image.pth").write_text(purelib + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-index", "--find-links", str(wheel_mirror()), "--prefix", str(venv),
         "jupyter-collaboration"],
        check=True,
        timeout=600,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base)},
    )  # fmt: skip
    # The image's Jupyter data and config live under its own prefix: link them into this one,
    # so its JupyterLab (the app, its extensions, the server extension switches) is found.
    for part in ("etc/jupyter/jupyter_server_config.d", "share/jupyter/labextensions"):
        source, dest = image.parent.parent / part, venv / part
        dest.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            if not (dest / item.name).exists():
                (dest / item.name).symlink_to(item)
    for part in ("share/jupyter/lab", "share/jupyter/kernels", "share/jupyter/nbconvert"):
        source, dest = image.parent.parent / part, venv / part
        if source.exists() and not dest.exists():
            dest.symlink_to(source)
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return python


def turn_autosave_off(instance_id: str, timeout: float = 60) -> None:
    """Turn the collaboration server's autosave off on a provisioned sshd-kind instance: edit
    its config file, then end the server (by its PID) so its supervisor restarts it with it."""
    paths = remote_paths(instance_id)
    config_file = Path(paths.config_file)
    config = json.loads(config_file.read_text())
    config["YDocExtension"] = {"document_save_delay": None}
    info = config_file.stat()
    tmp = config_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
    os.chown(tmp, info.st_uid, info.st_gid)
    os.chmod(tmp, info.st_mode & 0o777)
    os.replace(tmp, config_file)
    pid_file = Path(paths.server_pid)
    old = pid_file.read_text().strip()
    os.kill(int(old), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    token = config["IdentityProvider"]["token"]
    url = "http://127.0.0.1:{}{}api/status".format(
        config["ServerApp"]["port"], config["ServerApp"]["base_url"]
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            new = pid_file.read_text().strip()
        except OSError:
            new = old
        if new and new != old:
            request = urllib.request.Request(  # noqa: S310 - http on loopback
                url, headers={"Authorization": "token " + token}
            )
            try:
                with opener.open(request, timeout=5):  # noqa: S310 - loopback only
                    return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server of {instance_id} did not come back in {timeout} s")
        time.sleep(0.2)


def remove_collab_env(base: Path) -> None:
    """Remove what :func:`make_collab_env` made."""
    shutil.rmtree(base, ignore_errors=True)


__all__ = [
    "has_collaboration_wheels",
    "make_collab_env",
    "remove_collab_env",
    "turn_autosave_off",
    "wheel_mirror",
]
