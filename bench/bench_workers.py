"""Benchmark: "Add 2 workers" → both Dask workers registered with the scheduler, container hosts.

Usage (as root, after ``make container-root``)::

    .venv/bin/python bench/bench_workers.py [--workers 2]

Starts the simulated cloud, container instance hosts and a real ``jupyter server`` with
jupyter-ec2 configured for them (as ``bench_containers.py``), launches a notebook instance and
waits for it to be ready (not timed), then POSTs ``instances/{id}/workers {"count": n}`` and
prints the time until every worker is ``ready`` — a worker is ready once ``dask.sh`` saw the
scheduler accept it ("Registered to" in its log) — with the times at which each worker was first
seen booting, provisioning and ready. Everything is terminated at the end. Only figures are
printed; nothing is asserted. Every loop is bounded. Nothing connects anywhere but 127.0.0.1 and
the harness's own containers.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from jupyter_ec2.testing.cloud import SimulatedCloud, free_port
from jupyter_ec2.testing.containers import available, container_config, make_instance_hosts
from jupyter_ec2.testing.demo import simulated_config


def _call(opener, base: str, token: str, path: str, method: str = "GET", body=None) -> dict:
    request = urllib.request.Request(  # noqa: S310 - a loopback URL we built
        f"{base}jupyter-ec2/api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with opener.open(request, timeout=30) as response:
        return json.loads(response.read())


def _until(opener, base, token, instance_id, done, timeout: float, on_poll=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        inst = _call(opener, base, token, f"instances/{instance_id}")
        if on_poll is not None:
            on_poll(inst)
        if done(inst) or time.monotonic() > deadline:
            return inst
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    reason = available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="jupyter-ec2-bench-workers-"))
    cloud = SimulatedCloud().start()
    hosts, _ = make_instance_hosts(cloud, work / "hosts", kind="container")
    server = None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    instance_id = None
    try:
        config = container_config(simulated_config(cloud, hosts, work / "state"))
        config["LaunchManager"] = {"poll_fast": 0.3, "poll_slow": 2}
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
        deadline = time.monotonic() + 90
        while True:
            try:
                _call(opener, base, token, "instances")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        inst = _call(opener, base, token, "instances", "POST", {"profile": "cpu"})
        instance_id = inst["id"]
        inst = _until(opener, base, token, instance_id,
                      lambda i: i["phase"] in ("ready", "failed"), 900)  # fmt: skip
        if inst["phase"] != "ready":
            print(f"the notebook instance is {inst['phase']}: {inst['error']}")
            return 1
        first_seen: dict[tuple[str, str], float] = {}
        posted = time.monotonic()

        def note(current: dict) -> None:
            for worker in current["workers"]:
                first_seen.setdefault((worker["id"], worker["phase"]), time.monotonic() - posted)

        _call(opener, base, token, f"instances/{instance_id}/workers", "POST",
              {"count": args.workers})  # fmt: skip
        inst = _until(
            opener, base, token, instance_id,
            lambda i: len(i["workers"]) == args.workers
            and all(w["phase"] in ("ready", "failed") for w in i["workers"]),
            1200, note,
        )  # fmt: skip
        elapsed = time.monotonic() - posted
        phases = sorted({w["phase"] for w in inst["workers"]})
        print(f"Add {args.workers} workers → all registered with the scheduler: {elapsed:.1f} s "
              f"(phases now: {', '.join(phases)})")  # fmt: skip
        for worker in inst["workers"]:
            marks = [
                f"{phase} at {first_seen[(worker['id'], phase)]:.1f} s"
                for phase in ("launching", "booting", "provisioning", "ready", "failed")
                if (worker["id"], phase) in first_seen
            ]
            print(f"  {worker['id']}: " + ", ".join(marks))
    finally:
        if instance_id is not None and server is not None:
            try:
                _call(opener, base, token, f"instances/{instance_id}", "DELETE")
                time.sleep(5)
            except OSError:
                pass
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        hosts.close()
        cloud.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
