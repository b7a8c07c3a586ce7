"""Configuration helpers for both sides (measuring and reporting): compose the project's Hydra config
tree (``conf/``) outside a Hydra app, and turn a config into a plain dict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config for ``overrides`` (e.g. ``["backbone=r50", "input=cityscapes"]``).

    Unknown group options raise Hydra's error, which lists the available options.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def to_dict(cfg: Any) -> dict:
    """A plain, resolved dict from an OmegaConf config or a mapping."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"expected a config mapping, got {type(cfg).__name__}")
