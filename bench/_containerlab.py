"""What the container benches share: a real ``jupyter server`` with jupyter-ec2 on container hosts.

:func:`container_lab` starts the simulated cloud, container instance hosts
(jupyter_ec2.testing.containers) and a ``jupyter server`` configured for them (``debian-12``,
login user ``admin``, ``pip`` environment from the harness's index), and yields a
:class:`Lab` that calls the REST API with the server's token. Everything is stopped and removed
when the block ends. Nothing connects anywhere but 127.0.0.1 and the harness's own containers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_ec2.testing.cloud import SimulatedCloud, free_port
from jupyter_ec2.testing.containers import container_config, make_instance_hosts
from jupyter_ec2.testing.demo import simulated_config


@dataclass
class Lab:
    """A running jupyter-ec2 server on container hosts, and its REST API."""

    base: str
    token: str
    work: Path
    opener: urllib.request.OpenerDirector

    def api(self, path: str, body: Any = None, method: str | None = None, timeout: float = 60):
        """One REST call (GET without a body, POST with one, unless ``method`` says)."""
        request = urllib.request.Request(  # noqa: S310 - a loopback URL we built
            f"{self.base}jupyter-ec2/api/{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method or ("GET" if body is None else "POST"),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with self.opener.open(request, timeout=timeout) as response:
            return json.loads(response.read())

    def until(
        self,
        instance_id: str,
        done: Callable[[dict], bool],
        timeout: float = 900,
        on_poll: Callable[[dict], None] | None = None,
    ) -> dict:
        """Poll an instance until ``done`` says so or ``timeout`` passes; its last answer."""
        deadline = time.monotonic() + timeout
        while True:
            inst = self.api(f"instances/{instance_id}")
            if on_poll is not None:
                on_poll(inst)
            if done(inst) or time.monotonic() > deadline:
                return inst
            time.sleep(0.3)

    def launch(self, body: dict) -> tuple[dict, float, float]:
        """POST a launch and wait for ready or failed: (instance, posted, ready) wall times."""
        posted = time.time()
        inst = self.api("instances", body)
        inst = self.until(inst["id"], lambda i: i["phase"] in ("ready", "failed"))
        return inst, posted, time.time()


def breakdown(posted: float, lines: list[dict], ready: float) -> list[tuple[str, float]]:
    """Seconds per step: from the first line of a step to the first line of the next."""
    starts: list[tuple[str, float]] = []
    for line in lines:
        at = datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
        if not starts or starts[-1][0] != line["step"]:
            starts.append((line["step"], at))
    out = []
    for i, (step, at) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else ready
        out.append((step, end - at))
    if starts:
        out.insert(0, ("(POST to first log line)", starts[0][1] - posted))
    return out


@contextlib.contextmanager
def container_lab(name: str, poll_slow: float = 5) -> Iterator[Lab]:
    """The simulated cloud, container hosts and a jupyter-ec2 server, for one bench."""
    work = Path(tempfile.mkdtemp(prefix=f"jupyter-ec2-bench-{name}-"))
    cloud = SimulatedCloud().start()
    hosts, _ = make_instance_hosts(cloud, work / "hosts", kind="container")
    server = None
    try:
        config = container_config(simulated_config(cloud, hosts, work / "state"))
        config["LaunchManager"] = {"poll_fast": 0.3, "poll_slow": poll_slow}
        config_path = work / "config.json"
        config_path.write_text(json.dumps(config))
        port, token = free_port(), secrets.token_hex(16)
        env = {**os.environ, **cloud.env(), "JUPYTER_RUNTIME_DIR": str(work / "runtime")}
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", f"--config={config_path}",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--no-browser",
             f"--IdentityProvider.token={token}", "--allow-root",
             f"--ServerApp.root_dir={work}"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        lab = Lab(f"http://127.0.0.1:{port}/", token, work, opener)
        deadline = time.monotonic() + 90
        while True:
            try:
                lab.api("instances")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield lab
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        hosts.close()
        cloud.stop()
        shutil.rmtree(work, ignore_errors=True)
