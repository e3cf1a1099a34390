"""The console scripts (adpo-<stage>, adpo-pipeline, adpo-sweep) come from the one registry of stages,
src/adpo/registry.py; everything else about the package is in pyproject.toml."""

import importlib.util
import sys
from pathlib import Path

from setuptools import setup

_path = Path(__file__).resolve().parent / "src" / "adpo" / "registry.py"
_spec = importlib.util.spec_from_file_location("_adpo_registry", _path)
registry = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = registry  # dataclasses look their module up while the file executes
_spec.loader.exec_module(registry)

setup(entry_points={"console_scripts": [f"{name} = {target}" for name, target in registry.console_scripts().items()]})
