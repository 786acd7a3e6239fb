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
import sys

from _containerlab import breakdown, container_lab

from jupyter_ec2.testing.containers import available


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    reason = available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    with container_lab("containers") as lab:
        for run in range(args.runs):
            inst, posted, ready = lab.launch({"profile": "cpu"})
            lines = lab.api(f"instances/{inst['id']}/log")["lines"]
            print(f"run {run + 1}, environment pip (uv is not in the image): "
                  f"POST → {inst['phase']} {ready - posted:.1f} s")  # fmt: skip
            for step, seconds in breakdown(posted, lines, ready):
                print(f"  {step:<28} {seconds:6.1f} s")
            lab.api(f"instances/{inst['id']}", method="DELETE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
