"""Benchmark: POST → ready on a container instance host, pip environment from the local index.

Usage (as root, after ``make container-root``)::

    .venv/bin/python bench/bench_containers.py [--runs 1]

Starts the simulated cloud, container instance hosts (jupyter_ec2.testing.containers) and a real
``jupyter server`` with jupyter-ec2 configured for them (``debian-12``, login user ``admin``,
``pip`` environment), launches one instance per run and prints the time from the POST to
``ready``, split by the instance log's steps (launch and boot, SSH, each setup step, the server
start). The setup uses ``uv`` only when the image has it; the root has none, so only ``pip`` is
measured (printed as such). Only figures are printed; nothing is asserted. Every loop is bounded.
Nothing connects anywhere but 127.0.0.1 and the harness's own containers.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from jupyter_ec2.testing.cloud import SimulatedCloud, free_port
from jupyter_ec2.testing.containers import available, container_config, make_instance_hosts
from jupyter_ec2.testing.demo import simulated_config


def _api(opener, base: str, token: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(  # noqa: S310 - a loopback URL we built
        f"{base}jupyter-ec2/api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with opener.open(request, timeout=30) as response:
        return json.loads(response.read())


def _wait_server(opener, base: str, token: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _api(opener, base, token, "instances")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _breakdown(posted: float, lines: list[dict], ready: float) -> list[tuple[str, float]]:
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    reason = available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="jupyter-ec2-bench-containers-"))
    cloud = SimulatedCloud().start()
    hosts, _ = make_instance_hosts(cloud, work / "hosts", kind="container")
    server = None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        config = container_config(simulated_config(cloud, hosts, work / "state"))
        config["LaunchManager"] = {"poll_fast": 0.3, "poll_slow": 5}
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
        base = f"http://127.0.0.1:{port}/"
        _wait_server(opener, base, token)
        for run in range(args.runs):
            posted = time.time()
            inst = _api(opener, base, token, "instances", {"profile": "cpu"})
            deadline = time.monotonic() + 900
            while True:
                inst = _api(opener, base, token, f"instances/{inst['id']}")
                if inst["phase"] in ("ready", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            ready = time.time()
            lines = _api(opener, base, token, f"instances/{inst['id']}/log")["lines"]
            print(f"run {run + 1}, environment pip (uv is not in the image): "
                  f"POST → {inst['phase']} {ready - posted:.1f} s")  # fmt: skip
            for step, seconds in _breakdown(posted, lines, ready):
                print(f"  {step:<28} {seconds:6.1f} s")
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        hosts.close()
        cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
