"""Compose the project's Hydra config tree (``conf/``) outside a Hydra app (tests, scripts)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config for ``overrides`` (e.g. ``["backbone=r50", "input=cityscapes"]``).

    Unknown group options raise Hydra's error, which lists the available options.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
