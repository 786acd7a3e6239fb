"""jupyter-ec2: launch, provision and open Jupyter on your own EC2 instances from JupyterLab."""

from ._version import __version__

__all__ = ["__version__"]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the prebuilt frontend."""
    return [{"src": "labextension", "dest": "jupyter-ec2"}]


def _jupyter_server_extension_points() -> list[dict]:
    """The server extension's entry point for jupyter_server."""
    from .app import EC2Launcher

    return [{"module": "jupyter_ec2", "app": EC2Launcher}]
