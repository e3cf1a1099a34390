"""What every entry point does around its work: the config checked before anything runs, the output claimed.

`adpo.config.stage_main` wraps each stage's (and the pipeline's) `run(cfg)` with `guarded`: the composed config is
validated (adpo.validation: types and ranges, messages that name the key), then the run holds the lock on its output
(adpo.run_lock: one run per output directory, the pipeline's on its root) for as long as it works. A stage
configured for wandb online first checks that it can be (adpo.wandb_check), rather than failing minutes in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from omegaconf import DictConfig


def guarded(run: Callable[[DictConfig], object], config_name: str) -> Callable[[DictConfig], object]:
    @functools.wraps(run)
    def wrapped(cfg: DictConfig) -> object:
        from adpo.run_lock import output_lock
        from adpo.validation import validate_config

        validate_config(cfg, config_name)
        if config_name != "pipeline":  # the pipeline's run() checks once for all its stages (adpo.wandb_check)
            from adpo.wandb_check import preflight

            preflight(cfg)
        with output_lock(cfg, config_name):
            return run(cfg)

    return wrapped
