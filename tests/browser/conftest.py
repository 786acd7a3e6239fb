"""Fixtures of the browser tests: a real ``jupyter lab`` subprocess and Debian's Chromium.

The server is the venv's JupyterLab with jupyter-ec2 installed as a user would have it (the
server extension enabled by its config file, the prebuilt lab extension), but with its own
config, data and runtime directories, two launch profiles, no network beyond loopback and dummy
AWS credentials. Chromium is driven by Playwright; no browser is ever downloaded.

``jp_ec2_sim_lab`` runs the same server against the simulated cloud and instance hosts of
``jupyter_ec2.testing`` (the config of ``make demo``), so instances really come up on this
machine and their remote JupyterLab opens through the local server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from jupyter_ec2.testing import InstanceHosts, SimulatedCloud

CHROMIUM = "/usr/bin/chromium"
CLOSED_PORT_PROXY = "http://127.0.0.1:9"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # Anything but loopback goes to a closed local port, so a stray request fails at once.
    f"--proxy-server={CLOSED_PORT_PROXY}",
    "--proxy-bypass-list=127.0.0.1;localhost;[::1]",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
SERVER_START_TIMEOUT = 90.0

#: The launch profiles the test server offers (``c.EC2Launcher.profiles``).
PROFILES = {
    "cpu": {"display_name": "CPU small", "instance_type": "t3.medium", "volume_gb": 30},
    "gpu": {
        "display_name": "GPU box",
        "instance_type": "g5.xlarge",
        "volume_gb": 100,
        "spot": True,
    },
}


#: The servers running now, whose logs a failed test prints.
_RUNNING: list[LabServer] = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test item, so fixtures can tell whether it failed."""
    report = yield
    setattr(item, f"jp_ec2_report_{report.when}", report)
    return report


@dataclass(frozen=True)
class LabServer:
    """A running ``jupyter lab``: where it listens and how to log in."""

    base_url: str
    token: str
    root_dir: Path
    log_file: Path

    def url(self, path: str = "lab") -> str:
        """An absolute URL below the server's base URL, logged in with the token."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}{path}{sep}token={self.token}"

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call ``{base_url}jupyter-ec2/api/<path>`` with the token: (status, decoded JSON)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 (an http://127.0.0.1 URL we built)
            f"{self.base_url}jupyter-ec2/api/{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with opener.open(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")

    def set_user_settings(self, settings: dict) -> None:
        """Write jupyter-ec2's user settings, as the Settings Editor does (``{}``: defaults)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(  # noqa: S310 (an http://127.0.0.1 URL we built)
            f"{self.base_url}lab/api/settings/jupyter-ec2:plugin",
            data=json.dumps({"raw": json.dumps(settings)}).encode(),
            method="PUT",
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with opener.open(request, timeout=30) as response:
            assert response.status == 204, response.status

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's log, for failure messages."""
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(
    home: Path, dirs: dict[str, Path], *, aws_credentials: bool = True
) -> dict[str, str]:
    """The server's environment: isolated Jupyter dirs, loopback only, dummy AWS credentials
    (or none at all: then boto3 finds none, as on a machine where nobody ran aws configure)."""
    env = {
        key: value
        for key, value in os.environ.items()
        # Keep the venv's own share/ and etc/ (sys.prefix) as the only extra Jupyter paths.
        if key not in {"JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH"}
        and not key.startswith("AWS_")
    }
    env.update({key: str(path) for key, path in dirs.items()})
    env.update(
        {
            "HOME": str(home),
            "HTTP_PROXY": CLOSED_PORT_PROXY,
            "HTTPS_PROXY": CLOSED_PORT_PROXY,
            "http_proxy": CLOSED_PORT_PROXY,
            "https_proxy": CLOSED_PORT_PROXY,
            "NO_PROXY": "127.0.0.1,localhost,::1",
            "no_proxy": "127.0.0.1,localhost,::1",
            "AWS_DEFAULT_REGION": "us-east-1",
            # Never ask the instance metadata address (not loopback) for credentials.
            "AWS_EC2_METADATA_DISABLED": "true",
            # Only the isolated HOME's (absent) AWS files count.
            "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
        }
    )
    if aws_credentials:
        env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    return env


def _write_config(
    config_dir: Path,
    state_dir: Path,
    *,
    server_extension: bool,
    server_config: dict | None = None,
) -> None:
    """The server config (two profiles, unless given) and the lab page config (no announcements)."""
    if server_config is None:
        server_config = {
            "EC2Launcher": {
                "profiles": PROFILES,
                "default_profile": "cpu",
                "state_dir": str(state_dir),
            }
        }
    if not server_extension:
        # What `jupyter server extension disable --user jupyter_ec2` writes: the user config
        # dir outranks the enabling file installed in sys.prefix.
        server_config["ServerApp"] = {"jpserver_extensions": {"jupyter_ec2": False}}
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(server_config, indent=2))
    labconfig = config_dir / "labconfig"
    labconfig.mkdir()
    page_config = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
    (labconfig / "page_config.json").write_text(json.dumps(page_config, indent=2))


def _wait_for_status(server: LabServer, proc: subprocess.Popen, timeout: float) -> None:
    """Return once ``/api/status`` answers 200; fail with the server's log otherwise."""
    # Straight to loopback, whatever proxy the test process itself was given.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(  # noqa: S310 (an http://127.0.0.1 URL we built)
        f"{server.base_url}api/status", headers={"Authorization": f"token {server.token}"}
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with opener.open(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(f"jupyter lab did not answer /api/status in {timeout:.0f} s:\n{server.log_tail()}")


@contextmanager
def run_lab(
    base: Path,
    *,
    server_extension: bool = True,
    server_config: dict | None = None,
    extra_env: dict[str, str] | None = None,
    aws_credentials: bool = True,
) -> Iterator[LabServer]:
    """Run ``jupyter lab`` in the directory ``base`` until the block ends.

    ``server_config`` replaces the default jupyter_server config (two profiles, no cloud);
    ``extra_env`` is added to the server's environment (e.g. a simulated cloud's).
    """
    dirs = {
        "JUPYTER_CONFIG_DIR": base / "config",
        "JUPYTER_DATA_DIR": base / "data",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
    }
    home, root_dir, state_dir = base / "home", base / "notebooks", base / "ec2-state"
    for path in [*dirs.values(), home, root_dir]:
        path.mkdir()
    _write_config(
        dirs["JUPYTER_CONFIG_DIR"],
        state_dir,
        server_extension=server_extension,
        server_config=server_config,
    )
    env = _server_env(home, dirs, aws_credentials=aws_credentials)
    env.update(extra_env or {})

    port = _free_port()
    token = secrets.token_hex(24)
    server = LabServer(
        base_url=f"http://127.0.0.1:{port}/",
        token=token,
        root_dir=root_dir,
        log_file=base / "jupyter-lab.log",
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--allow-root",
    ]
    with server.log_file.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=root_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_status(server, proc, SERVER_START_TIMEOUT)
        _RUNNING.append(server)
        yield server
    finally:
        if server in _RUNNING:
            _RUNNING.remove(server)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="session")
def jp_ec2_lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """A real ``jupyter lab`` with jupyter-ec2 and two launch profiles, on 127.0.0.1."""
    with run_lab(tmp_path_factory.mktemp("jp_ec2_lab")) as server:
        yield server


@pytest.fixture(scope="session")
def jp_ec2_lab_server_without_api(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LabServer]:
    """The same ``jupyter lab``, with the lab extension but the server extension disabled."""
    with run_lab(tmp_path_factory.mktemp("jp_ec2_lab_no_api"), server_extension=False) as server:
        yield server


@pytest.fixture(scope="session")
def jp_ec2_lab_server_without_credentials(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LabServer]:
    """The same ``jupyter lab`` on a machine with no AWS credentials at all."""
    base = tmp_path_factory.mktemp("jp_ec2_lab_no_credentials")
    config = {
        "EC2Launcher": {
            "profiles": PROFILES,
            "default_profile": "cpu",
            "state_dir": str(base / "ec2-state"),
        },
        # A fixed CIDR, so that nothing asks the network for this machine's public address.
        "EC2Backend": {"ssh_cidrs": ["198.51.100.7/32"]},
    }
    with run_lab(base, server_config=config, aws_credentials=False) as server:
        yield server


@pytest.fixture
def jp_asyncio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """Overrides pytest_jupyter's autouse loop with a private one.

    Between two sync calls Playwright marks its own loop as the running one; pytest_jupyter's
    fixture would pick that loop up and close it after the first test.
    """
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def jp_server_cleanup() -> Iterator[None]:
    """Overrides pytest_jupyter's autouse cleanup: no in-process server runs here."""
    yield


@pytest.fixture(scope="module")
def jp_ec2_browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright's sync API.

    Module-scoped: while Playwright's sync API runs it leaves its loop marked as running in
    this thread, which would break every async test (pytest-jupyter) collected after it.
    """
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    sync_api.expect.set_options(timeout=20_000)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def jp_ec2_page(jp_ec2_browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context (own cookies) and page, 1280×800.

    When the test fails, the page's console errors and the servers' logs are printed.
    """
    context = jp_ec2_browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        yield page
    finally:
        context.close()
        report = getattr(request.node, "jp_ec2_report_call", None)
        if report is not None and report.failed:
            print("--- browser console ---", *console[-40:], sep="\n")  # noqa: T201
            for server in _RUNNING:
                print(f"--- {server.base_url} log ---", server.log_tail(), sep="\n")  # noqa: T201


@pytest.fixture(scope="session")
def jp_ec2_artifacts() -> Path:
    """Where browser tests leave screenshots (used as README pictures)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# -- the simulated cloud ----------------------------------------------------------------------

#: The notebook user provisioning creates on this machine for the browser tests (removed after):
#: a name of this session's own, so that a second test run on the machine (a developer's, beside
#: CI's) never removes the home of the user whose remote notebook this run has open.
SIM_NOTEBOOK_USER = "jec2br" + secrets.token_hex(4)
#: Seconds a simulated instance stays ``pending``, so a test can watch (and reload) a launch.
SIM_BOOT_DELAY = 4.0


@dataclass(frozen=True)
class SimLab:
    """A ``jupyter lab`` whose jupyter-ec2 launches into a simulated cloud with instance hosts."""

    server: LabServer
    cloud: SimulatedCloud
    hosts: InstanceHosts

    def cloud_instances(self) -> list[dict]:
        """Every instance the simulated cloud knows, whatever its state."""
        client = self.cloud.client("ec2")
        return [
            instance
            for page in client.get_paginator("describe_instances").paginate()
            for reservation in page["Reservations"]
            for instance in reservation["Instances"]
        ]


def _runs_as_nobody(python: str, code: str) -> bool:
    """Whether another user (as the notebook user will be) can run ``python -c code``."""
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", python, "-c", code],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return result.returncode == 0


def remote_lab_python() -> str:
    """The instances' image interpreter (``make sim-image``), with JupyterLab and ipykernel,
    checked to be runnable by another user, as the notebook user will be."""
    from jupyter_ec2.testing.demo import IMAGE_PYTHON

    if not Path(IMAGE_PYTHON).exists() or not _runs_as_nobody(
        IMAGE_PYTHON, "import jupyterlab, ipykernel"
    ):
        pytest.fail(f"{IMAGE_PYTHON} cannot import JupyterLab: run `make sim-image`.")
    return IMAGE_PYTHON


def _terminate_everything(server: LabServer, hosts: InstanceHosts, timeout: float = 60) -> bool:
    """Terminate every instance the server manages and wait for their hosts to go.

    A DELETE refused while another action on the instance runs (409, e.g. a keepalive) is
    sent again until ``timeout``. True when every instance is terminating or gone and so is
    its host.
    """
    status, body = server.api("GET", "instances")
    if status != 200 or not isinstance(body, dict):
        return False
    ids = [item["id"] for item in body.get("instances", []) if item["phase"] != "terminated"]
    deadline = time.monotonic() + timeout
    left = [
        item["id"]
        for item in body["instances"]
        if item["phase"] not in ("terminating", "terminated")
    ]
    while left and time.monotonic() < deadline:
        for instance_id in list(left):
            status, answer = server.api("DELETE", f"instances/{instance_id}")
            phase = answer.get("phase") if isinstance(answer, dict) else None
            if status in (200, 202, 404) or phase in ("terminating", "terminated"):
                left.remove(instance_id)
        if left:
            time.sleep(0.5)
    gone = not left
    for instance_id in ids:
        # Whatever is left then, hosts.close() ends.
        try:
            hosts.wait_for_no_host(instance_id, timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            gone = False
    return gone


SIM_LAB_FIXTURE = "jp_ec2_sim_lab"


def _uses_sim_lab(item: pytest.Item) -> bool:
    return SIM_LAB_FIXTURE in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Run this directory's modules on the simulated-cloud lab one after another.

    They then share one lab (see :func:`jp_ec2_sim_lab`); every other test keeps its place.
    """
    here = Path(__file__).resolve().parent
    modules: dict[Any, list[pytest.Item]] = {}
    for item in items:
        module = item.getparent(pytest.Module)
        if module is not None and here in Path(module.path).resolve().parents:
            modules.setdefault(module, []).append(item)
    sim_modules = [m for m, its in modules.items() if any(_uses_sim_lab(i) for i in its)]
    if len(sim_modules) < 2:
        return
    together = [item for module in sim_modules for item in modules[module]]
    moved = set(map(id, together))
    first = items.index(together[0])
    rest = [item for item in items if id(item) not in moved]
    insert_at = len([item for item in items[:first] if id(item) not in moved])
    items[:] = rest[:insert_at] + together + rest[insert_at:]


class _SimLabKeeper:
    """The running simulated-cloud lab, kept from one module to the next module that uses it."""

    def __init__(self) -> None:
        self.lab: SimLab | None = None
        self._stack = contextlib.ExitStack()

    def start(self, cloud: SimulatedCloud, base: Path) -> SimLab:
        """Start instance hosts and ``jupyter lab`` on ``cloud``, in the directory ``base``."""
        from jupyter_ec2.testing import InstanceHosts
        from jupyter_ec2.testing.demo import remove_user, simulated_config

        python = remote_lab_python()
        with contextlib.ExitStack() as stack:
            stack.callback(remove_user, SIM_NOTEBOOK_USER)
            hosts = InstanceHosts(cloud, base / "hosts", boot_delay=SIM_BOOT_DELAY)
            stack.callback(hosts.close)
            config = simulated_config(
                cloud,
                hosts,
                base / "ec2-state",
                notebook_user=SIM_NOTEBOOK_USER,
                profiles=PROFILES,
            )
            config["EC2Launcher"]["default_profile"] = "cpu"
            config["Provisioner"]["environment"] = {"kind": "existing", "python": python}
            server = stack.enter_context(run_lab(base, server_config=config, extra_env=cloud.env()))
            stack.callback(_terminate_everything, server, hosts)
            self.lab = SimLab(server=server, cloud=cloud, hosts=hosts)
            self._stack = stack.pop_all()
        return self.lab

    def close(self) -> None:
        """Terminate every instance, stop the lab and the hosts, remove the notebook user."""
        self.lab = None
        self._stack.close()


@pytest.fixture(scope="session")
def _jp_ec2_sim_lab_keeper() -> Iterator[_SimLabKeeper]:
    """Holds the simulated-cloud lab between modules; stops whatever still runs at the end."""
    keeper = _SimLabKeeper()
    try:
        yield keeper
    finally:
        keeper.close()


def _next_module_uses_sim_lab(request: pytest.FixtureRequest) -> bool:
    """Whether the test that runs after this module's last one uses the simulated-cloud lab."""
    items = request.session.items
    mine = [
        index for index, item in enumerate(items) if item.getparent(pytest.Module) is request.node
    ]
    after = mine[-1] + 1 if mine else len(items)
    return after < len(items) and _uses_sim_lab(items[after])


@pytest.fixture(scope="module")
def jp_ec2_sim_lab(
    jp_ec2_session_cloud: SimulatedCloud,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    _jp_ec2_sim_lab_keeper: _SimLabKeeper,
) -> Iterator[SimLab]:
    """``jupyter lab`` with jupyter-ec2 on the simulated cloud, the two test profiles, and
    instance hosts that boot in a few seconds; every instance is terminated after each module.

    Module-scoped, but the same lab serves the next module when that module uses it too (this
    directory's modules that use it run one after another, see
    :func:`pytest_collection_modifyitems`): starting it costs about ten seconds. It is stopped,
    with its instance hosts and notebook user, before any other module runs, so other modules
    may reset the shared simulated cloud.
    """
    if os.geteuid() != 0:
        pytest.skip("the instance hosts run sshd and create a notebook user: run as root")
    keeper = _jp_ec2_sim_lab_keeper
    lab = keeper.lab
    if lab is None:
        lab = keeper.start(jp_ec2_session_cloud, tmp_path_factory.mktemp("jp_ec2_sim_lab"))
    try:
        yield lab
    finally:
        # The next module starts as with a new lab: no instance, and no notebook user (whose
        # home would hand the remote JupyterLab's workspace and files to the next instance;
        # provisioning creates the user again). If that cannot be had, it gets a new lab.
        if _next_module_uses_sim_lab(request) and _terminate_everything(lab.server, lab.hosts):
            from jupyter_ec2.testing.demo import remove_user

            remove_user(SIM_NOTEBOOK_USER)
        else:
            keeper.close()
