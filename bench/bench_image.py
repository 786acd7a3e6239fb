"""Benchmark: POST → ready from a saved image against a stock image, in the same run.

Usage (as root, after ``make container-root``)::

    .venv/bin/python bench/bench_image.py [--runs 1]

Starts the simulated cloud, container instance hosts (jupyter_ec2.testing.containers) and a real
``jupyter server`` with jupyter-ec2 configured for them (``debian-12``, login user ``admin``,
``pip`` environment from the harness's index). It launches an instance from the stock image and
times POST → ready, saves it as an image (no reboot) and waits for the image to be available,
then launches from the saved image and times POST → ready again, per run. It prints both times,
their ratio and the environment step of each launch. Only figures are printed; nothing is
asserted. Every loop is bounded. Nothing connects anywhere but 127.0.0.1 and the harness's own
containers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_containers import _api, _breakdown, _wait_server

from jupyter_ec2.testing.cloud import SimulatedCloud, free_port
from jupyter_ec2.testing.containers import available, container_config, make_instance_hosts
from jupyter_ec2.testing.demo import simulated_config


def _delete(opener, base: str, token: str, path: str) -> dict:
    request = urllib.request.Request(  # noqa: S310 - a loopback URL we built
        f"{base}jupyter-ec2/api/{path}",
        method="DELETE",
        headers={"Authorization": f"token {token}"},
    )
    with opener.open(request, timeout=60) as response:
        return json.loads(response.read())


def _launch(opener, base: str, token: str, ami: str | None) -> tuple[dict, float, list, list]:
    """POST a launch (from ``ami`` when given), wait for ready; (instance, s, steps, log)."""
    body: dict = {"profile": "cpu"}
    if ami:
        body["overrides"] = {"ami": ami}
    posted = time.time()
    inst = _api(opener, base, token, "instances", body)
    deadline = time.monotonic() + 900
    while True:
        inst = _api(opener, base, token, f"instances/{inst['id']}")
        if inst["phase"] in ("ready", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    ready = time.time()
    lines = _api(opener, base, token, f"instances/{inst['id']}/log")["lines"]
    return inst, ready - posted, _breakdown(posted, lines, ready), lines


def _environment_text(lines: list[dict]) -> str:
    done = [line["text"] for line in lines if line["text"].startswith("Preparing the Python")]
    return done[-1] if done else "(no environment step)"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    reason = available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="jupyter-ec2-bench-image-"))
    # moto has no Price List: each price lookup is a logged werkzeug error, noise for figures.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
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
            stock, stock_s, stock_steps, stock_lines = _launch(opener, base, token, None)
            print(f"run {run + 1}: stock image  POST → {stock['phase']} {stock_s:6.1f} s")
            print(f"  {_environment_text(stock_lines)}")
            if stock["phase"] != "ready":
                break
            t0 = time.time()
            image = _api(opener, base, token, f"instances/{stock['id']}/image", {"name": "bench"})
            deadline = time.monotonic() + 900
            while image["state"] == "pending" and time.monotonic() < deadline:
                time.sleep(0.5)
                found = [
                    i for i in _api(opener, base, token, "images")["images"]
                    if i["id"] == image["id"]
                ]  # fmt: skip
                image = found[0] if found else image
            print(f"  image {image['id']} {image['state']} after {time.time() - t0:.1f} s "
                  f"({image['size_gb']} GB)")  # fmt: skip
            saved, saved_s, saved_steps, saved_lines = _launch(opener, base, token, image["id"])
            print(f"run {run + 1}: saved image  POST → {saved['phase']} {saved_s:6.1f} s")
            print(f"  {_environment_text(saved_lines)}")
            print(f"  saved / stock = {saved_s / stock_s:.2f}")
            for title, steps in (("stock", stock_steps), ("saved", saved_steps)):
                print(f"  steps ({title}):")
                for step, seconds in steps:
                    print(f"    {step:<28} {seconds:6.1f} s")
            for instance in (stock, saved):
                _delete(opener, base, token, f"instances/{instance['id']}")
            try:
                _delete(opener, base, token, f"images/{image['id']}")
            except OSError as error:
                print(f"  image not deleted: {error}")
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
