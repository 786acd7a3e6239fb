"""``jupyter ec2``: the command line of jupyter-ec2 (``jupyter ec2 doctor`` checks your AWS setup).

``jupyter`` runs ``jupyter-ec2`` for ``jupyter ec2 …``. The doctor reads the same Jupyter config
files as the server (``jupyter_server_config.py``/``.json``: ``c.EC2Launcher.profiles``,
``c.EC2Backend``, ``c.TunnelManager.engine``…), builds the same backend, runs the checks of
``GET preflight`` once and prints them; it exits 0 when every check passed and 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from jupyter_core.application import JupyterApp
from traitlets import Bool

from ._version import __version__

_MARK = {"ok": "ok  ", "fail": "FAIL", "skip": "skip"}


def format_report(body: dict[str, Any], width: int = 100) -> str:
    """The checks of a ``GET preflight`` body as lines for a terminal (pure)."""
    import textwrap

    lines = []
    name_width = max((len(c["name"]) for c in body["checks"]), default=10) + 2
    indent = " " * (6 + name_width)
    for check in body["checks"]:
        status = check.get("status") or ("ok" if check["ok"] else "fail")
        head = f"{_MARK.get(status, status)}  {check['name']:<{name_width}}"
        wrapped = textwrap.wrap(check["message"], width - len(indent), break_on_hyphens=False) or [
            ""
        ]
        lines.append(head + wrapped[0])
        lines += [indent + more for more in wrapped[1:]]
        if check.get("fix") and status != "ok":
            fix = textwrap.wrap("fix: " + check["fix"], width - len(indent), break_on_hyphens=False)
            lines += [indent + part for part in fix]
    failed = [c["name"] for c in body["checks"] if not c["ok"]]
    if failed:
        lines.append(f"\n{len(failed)} check(s) did not pass: {', '.join(failed)}.")
    else:
        lines.append("\nAll checks passed: jupyter-ec2 can launch your profiles.")
    return "\n".join(lines)


class DoctorApp(JupyterApp):
    """``jupyter ec2 doctor``: check credentials, permissions, quotas, network, images and ssh."""

    name = "jupyter-ec2-doctor"
    version = __version__
    description = "Check the AWS setup jupyter-ec2 needs and say what to fix (exit 1 on a failure)."
    # The server's own config files: the doctor checks what the server will use.
    config_file_name = "jupyter_server_config"

    as_json = Bool(False, help="Print the GET preflight JSON instead of text.").tag(config=True)

    flags = {
        **JupyterApp.flags,
        "json": ({"DoctorApp": {"as_json": True}}, "Print the checks as JSON."),
    }

    def start(self) -> None:
        """Run the checks once and exit with their verdict."""
        from .app import EC2Launcher
        from .preflight import Preflight

        launcher = EC2Launcher(config=self.config)
        backend = launcher.backend_class(parent=launcher)
        provisioner = launcher.provisioner_class(parent=launcher)
        tunnels = launcher.tunnel_class(parent=launcher)
        profile_set = launcher.load_profile_set(backend, provisioner)
        preflight = Preflight(
            backend,
            lambda: list(profile_set.profiles.values()),
            ssh_engine=lambda: str(getattr(tunnels, "engine", "auto")),
        )
        report = preflight.run()
        body = report.to_json()
        if self.as_json:
            print(json.dumps(body, indent=2))  # noqa: T201 - the command's output
        else:
            print(  # noqa: T201
                f"jupyter-ec2 {__version__}: checking the AWS setup for region {backend.region} "
                f"and {len(profile_set.profiles)} profile(s) "
                f"({', '.join(profile_set.profiles) or 'none'})\n"
            )
            print(format_report(body))  # noqa: T201
        self.exit(0 if report.ok else 1)


class EC2App(JupyterApp):
    """``jupyter ec2``: the jupyter-ec2 command line."""

    name = "jupyter-ec2"
    version = __version__
    description = "The jupyter-ec2 command line. Subcommands: doctor."
    subcommands = {
        "doctor": (DoctorApp, DoctorApp.description),
    }

    def start(self) -> None:
        """Run the subcommand, or say which exist."""
        if self.subapp is None:
            print("Usage: jupyter ec2 doctor [--json]\n")  # noqa: T201
            print("  doctor  " + DoctorApp.description)  # noqa: T201
            self.exit(2)
        self.subapp.start()


def main(argv: list[str] | None = None) -> None:
    """The ``jupyter-ec2`` console script."""
    EC2App.launch_instance(argv=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
