"""Write docs/configuration.md from the configurables' own traits and help texts.

Run ``python docs/make_config_reference.py`` after changing a trait; ``tests/test_docs.py``
fails while the committed file differs from what this prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from traitlets import Type

HEADER = """# Configuration reference

Every option of jupyter-ec2, generated from the code by `docs/make_config_reference.py`.
Set them in `jupyter_server_config.py` (`c.Section.name = value`) or on the command line
(`--Section.name=value`). `jupyter server --help-all` shows the same texts.
"""


def configurables() -> list[type]:
    """The classes whose traits users configure, in the order a user meets them."""
    from jupyter_ec2.app import EC2Launcher
    from jupyter_ec2.aws import EC2Backend
    from jupyter_ec2.manager import LaunchManager
    from jupyter_ec2.provision import Provisioner
    from jupyter_ec2.tunnel import TunnelManager

    return [EC2Launcher, EC2Backend, Provisioner, LaunchManager, TunnelManager]


def _default(trait) -> str:
    if trait.name in ("state_dir", "owner_id"):
        return "computed for this user and machine"
    if trait.name == "region":
        return "from the AWS environment, else `'us-east-1'`"
    if isinstance(trait, Type):
        value = trait.default_value
        return f"`{value if isinstance(value, str) else value.__module__ + '.' + value.__name__}`"
    return f"`{trait.default()!r}`"


def render() -> str:
    """The whole reference as Markdown."""
    out = [HEADER]
    for cls in configurables():
        out.append(f"\n## {cls.__name__}\n")
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out.append(f"{doc}\n")
        traits = cls.class_traits(config=True)
        for name in sorted(traits):
            if not traits[name].this_class.__module__.startswith("jupyter_ec2"):
                continue  # inherited from jupyter_server's ExtensionApp
            trait = traits[name]
            help_text = " ".join((trait.help or "").split())
            out.append(f"\n### `c.{cls.__name__}.{name}`\n")
            out.append(f"{type(trait).__name__}, default {_default(trait)}.\n")
            if help_text:
                out.append(f"\n{help_text}\n")
    return "".join(out)


if __name__ == "__main__":
    target = Path(__file__).with_name("configuration.md")
    target.write_text(render())
    sys.stdout.write(f"wrote {target}\n")
