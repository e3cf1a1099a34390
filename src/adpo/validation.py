"""Placeholder: filled by the validation work of issue 15 (validate_config(cfg, config_name) raises on bad settings)."""

from __future__ import annotations

from omegaconf import DictConfig


def validate_config(cfg: DictConfig, config_name: str) -> None:
    return None
