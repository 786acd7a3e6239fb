"""The docs stay true to the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_configuration_reference_is_current():
    # Given the generator that reads every configurable's traits
    spec = importlib.util.spec_from_file_location("make_ref", DOCS / "make_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # When it renders / Then the committed reference is identical (run the script to update it)
    assert (DOCS / "configuration.md").read_text() == module.render(), (
        "docs/configuration.md is stale: run `.venv/bin/python docs/make_config_reference.py`"
    )
