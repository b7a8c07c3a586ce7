"""Configuration helpers for both sides (measuring and reporting): compose the project's Hydra config
tree (``conf/``) outside a Hydra app, and turn a config into a plain dict."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class ConfigError(ValueError):
    """Overrides that do not compose; the message names the key and the valid choices."""


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config for ``overrides`` (e.g. ``["backbone=r50", "input=cityscapes"]``).

    Bad overrides raise ``ConfigError``: an unknown group option lists the available options, an
    unknown key lists the valid keys of its group.
    """
    from hydra.errors import HydraException

    try:
        return _compose(overrides, config_name)
    except HydraException as err:
        raise ConfigError(explain(err, list(overrides), config_name)) from None


def _compose(overrides: Sequence[str], config_name: str) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def explain(err: Exception, overrides: list[str], config_name: str = "config") -> str:
    """Hydra's message, without its search-path listing; for an unknown key, the valid keys beside it."""
    text = str(err).split("\nConfig search path:")[0].strip()
    found = re.match(r"Could not override '([^']+)'", text)
    if not found:
        return text
    key = found.group(1)
    parent, _, leaf = key.rpartition(".")
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        base = OmegaConf.select(_compose(rest, config_name), parent) if parent else _compose(rest, config_name)
    except Exception:  # noqa: BLE001 - the listing is a courtesy; Hydra's message stands alone
        base = None
    if not isinstance(base, DictConfig):
        return f"unknown key {key!r}"
    valid = ", ".join(sorted(str(k) for k in base if k != "hydra"))
    where = f"of {parent}" + (f" ({base.get('name')})" if "name" in base else "") if parent else "at the top level"
    return f"unknown key {key!r}; valid keys {where}: {valid} (a new key is added with +{key}=...)"


def to_dict(cfg: Any) -> dict:
    """A plain, resolved dict from an OmegaConf config or a mapping; an interpolation that does not resolve
    (``input.num_classes=${nosuch}``, a key it refers to removed) is a ``ConfigError`` naming both keys."""
    from omegaconf.errors import InterpolationResolutionError

    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
        except InterpolationResolutionError as err:
            raise ConfigError(f"{err.full_key}: {err.msg.splitlines()[0]}") from None
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"expected a config mapping, got {type(cfg).__name__}")
