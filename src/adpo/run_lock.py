"""Placeholder: filled by the locking work of issue 15 (output_lock(cfg, config_name) holds the output's lock)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from omegaconf import DictConfig


@contextlib.contextmanager
def output_lock(cfg: DictConfig, config_name: str) -> Iterator[None]:
    yield
