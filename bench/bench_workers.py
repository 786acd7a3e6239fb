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
import sys
import time

from _containerlab import container_lab

from jupyter_ec2.testing.containers import available


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    reason = available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    with container_lab("workers", poll_slow=2) as lab:
        inst = lab.api("instances", {"profile": "cpu"})
        instance_id = inst["id"]
        try:
            inst = lab.until(instance_id, lambda i: i["phase"] in ("ready", "failed"))
            if inst["phase"] != "ready":
                print(f"the notebook instance is {inst['phase']}: {inst['error']}")
                return 1
            first_seen: dict[tuple[str, str], float] = {}
            posted = time.monotonic()

            def note(current: dict) -> None:
                for worker in current["workers"]:
                    key = (worker["id"], worker["phase"])
                    first_seen.setdefault(key, time.monotonic() - posted)

            lab.api(f"instances/{instance_id}/workers", {"count": args.workers})
            inst = lab.until(
                instance_id,
                lambda i: len(i["workers"]) == args.workers
                and all(w["phase"] in ("ready", "failed") for w in i["workers"]),
                1200, note,
            )  # fmt: skip
            elapsed = time.monotonic() - posted
            phases = sorted({w["phase"] for w in inst["workers"]})
            print(f"Add {args.workers} workers → all registered with the scheduler: "
                  f"{elapsed:.1f} s (phases now: {', '.join(phases)})")  # fmt: skip
            for worker in inst["workers"]:
                marks = [
                    f"{phase} at {first_seen[(worker['id'], phase)]:.1f} s"
                    for phase in ("launching", "booting", "provisioning", "ready", "failed")
                    if (worker["id"], phase) in first_seen
                ]
                print(f"  {worker['id']}: " + ", ".join(marks))
        finally:
            try:
                lab.api(f"instances/{instance_id}", method="DELETE")
                time.sleep(5)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
