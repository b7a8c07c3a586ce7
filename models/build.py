"""``build_model(cfg)``: one creation API from a config (Hydra/OmegaConf or a plain dict).

The config has groups ``backbone``, ``encoder``, ``decoder`` (each with a ``name`` registered in
its registry plus that builder's keyword options), ``input`` (sizes and dataset metadata) and a
top-level ``msda_backend``. Unknown names and options fail with the valid choices.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from models.backbones import BACKBONES
from models.decoders import DECODERS
from models.encoders import ENCODERS
from models.postprocess import PostProcessor
from models.registry import Registry
from models.segmentor import Segmentor

POSTPROCESS_KEYS = ("tasks", "thing_ids", "object_mask_threshold", "overlap_threshold", "topk_per_image")


def _plain(cfg: Any) -> dict:
    """A plain dict from an OmegaConf config (as Hydra apps pass it) or a mapping."""
    if hasattr(cfg, "_metadata"):  # an OmegaConf container, without importing omegaconf here
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def group_options(group: str, cfg: Mapping[str, Any], registry: Registry, reserved: tuple[str, ...] = (),
                  ignore: tuple[str, ...] = ()) -> tuple[Callable, dict]:
    """The builder for ``cfg['name']`` and its options, checked against the builder's signature."""
    if "name" not in cfg:
        raise ValueError(f"config group {group!r} needs a 'name'; valid choices: {', '.join(registry.names())}")
    builder = registry.get(cfg["name"])
    options = {k: v for k, v in cfg.items() if k != "name" and k not in ignore}
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = [k for k in params if k not in reserved]
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {group} {cfg['name']!r}; valid options: {valid}")
    return builder, options


def check_input(inp: Mapping[str, Any]) -> None:
    """Input sizes and batch must be positive integers."""
    for key in ("height", "width", "batch"):
        val = inp.get(key)
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"input.{key} must be a positive integer, got {val!r}")


def build_model(cfg: Any) -> Segmentor:
    """Build the segmentor described by ``cfg`` in eval mode (random weights)."""
    cfg = _plain(cfg)
    for group in ("backbone", "encoder", "decoder", "input"):
        if group not in cfg:
            raise ValueError(f"config needs a {group!r} group")
    inp = cfg["input"]
    check_input(inp)
    # backbone.decoder_queries is read by the decoder group (200 queries for Swin-L)
    builder, bb_opts = group_options("backbone", cfg["backbone"], BACKBONES, ignore=("decoder_queries",))
    backbone = builder(**bb_opts)
    builder, enc_opts = group_options("encoder", cfg["encoder"], ENCODERS, reserved=("in_channels",))
    enc_opts.setdefault("msda_backend", cfg.get("msda_backend", "pytorch"))
    pixel_decoder = builder(in_channels=backbone.out_channels, **enc_opts)
    builder, dec_opts = group_options("decoder", cfg["decoder"], DECODERS)
    dec_opts.setdefault("num_classes", inp["num_classes"])
    decoder = builder(**dec_opts)
    post = PostProcessor(inp["num_classes"], **{k: inp[k] for k in POSTPROCESS_KEYS if k in inp})
    return Segmentor(backbone, pixel_decoder, decoder, post).eval()
