"""Where the Hydra config tree lives, the decorator every stage's entry point uses, and compose() for code."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

# adpo.help also registers the ${adpo_help:...} resolver that every entry point's --help template uses.
from adpo.help import group_shorthand

VERSION_BASE = "1.3"

# "static:8" is a fine config value but an awkward directory name: ${slug:...} makes it "static8".
if not OmegaConf.has_resolver("slug"):
    OmegaConf.register_new_resolver("slug", lambda value: str(value).replace(":", "").replace("/", "_"))


def conf_dir() -> Path:
    """The `conf/` tree: $ADPO_CONF_DIR, else the repository's (the package is installed editable, from src/)."""
    env = os.environ.get("ADPO_CONF_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "config.yaml").exists():
        raise FileNotFoundError(f"Hydra config tree not found at {path}; set ADPO_CONF_DIR to the project's conf/")
    return path


def stage_main(config_name: str) -> Callable[[Callable[[DictConfig], object]], Callable[[], None]]:
    """Turn `run(cfg)` into a Hydra command-line app reading conf/<config_name>.yaml."""

    def wrap(run: Callable[[DictConfig], object]) -> Callable[[], None]:
        @functools.wraps(run)
        def main() -> None:
            sys.argv[1:] = group_shorthand(sys.argv[1:])  # sweep=NAME is +sweep=NAME (adpo.help)
            from adpo.stage_guard import guarded

            hydra.main(config_path=str(conf_dir()), config_name=config_name,
                       version_base=VERSION_BASE)(guarded(run, config_name))()

        return main

    return wrap


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config a stage would get from the command line with these overrides (no Hydra run directory)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=VERSION_BASE):
        cfg = hydra_compose(config_name=config_name, overrides=group_shorthand(overrides))
    return cfg


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
