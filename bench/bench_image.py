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
import logging
import sys
import time

from _containerlab import Lab, breakdown, container_lab

from jupyter_ec2.testing.containers import available


def _launch(lab: Lab, ami: str | None) -> tuple[dict, float, list, list]:
    """POST a launch (from ``ami`` when given), wait for ready; (instance, s, steps, log)."""
    body: dict = {"profile": "cpu"}
    if ami:
        body["overrides"] = {"ami": ami}
    inst, posted, ready = lab.launch(body)
    lines = lab.api(f"instances/{inst['id']}/log")["lines"]
    return inst, ready - posted, breakdown(posted, lines, ready), lines


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
    # moto has no Price List: each price lookup is a logged werkzeug error, noise for figures.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    with container_lab("image") as lab:
        for run in range(args.runs):
            stock, stock_s, stock_steps, stock_lines = _launch(lab, None)
            print(f"run {run + 1}: stock image  POST → {stock['phase']} {stock_s:6.1f} s")
            print(f"  {_environment_text(stock_lines)}")
            if stock["phase"] != "ready":
                break
            t0 = time.time()
            image = lab.api(f"instances/{stock['id']}/image", {"name": "bench"})
            deadline = time.monotonic() + 900
            while image["state"] == "pending" and time.monotonic() < deadline:
                time.sleep(0.5)
                found = [i for i in lab.api("images")["images"] if i["id"] == image["id"]]
                image = found[0] if found else image
            print(f"  image {image['id']} {image['state']} after {time.time() - t0:.1f} s "
                  f"({image['size_gb']} GB)")  # fmt: skip
            saved, saved_s, saved_steps, saved_lines = _launch(lab, image["id"])
            print(f"run {run + 1}: saved image  POST → {saved['phase']} {saved_s:6.1f} s")
            print(f"  {_environment_text(saved_lines)}")
            print(f"  saved / stock = {saved_s / stock_s:.2f}")
            for title, steps in (("stock", stock_steps), ("saved", saved_steps)):
                print(f"  steps ({title}):")
                for step, seconds in steps:
                    print(f"    {step:<28} {seconds:6.1f} s")
            for instance in (stock, saved):
                lab.api(f"instances/{instance['id']}", method="DELETE")
            try:
                lab.api(f"images/{image['id']}", method="DELETE")
            except OSError as error:
                print(f"  image not deleted: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
