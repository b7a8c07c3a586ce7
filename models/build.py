"""``build_model(cfg)``: one creation API from a config (Hydra/OmegaConf or a plain dict).

The config has groups ``backbone``, ``encoder``, ``decoder`` (each with a ``name`` registered in
its registry plus that builder's keyword options), ``input`` (sizes and dataset metadata) and a
top-level ``msda_backend``. Unknown names and options fail with the valid choices.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from models.backbones import BACKBONES
from models.decoders import DECODERS
from models.encoders import ENCODERS
from models.postprocess import PostProcessor
from models.registry import Registry
from models.segmentor import Segmentor

POSTPROCESS_KEYS = ("tasks", "thing_ids", "object_mask_threshold", "overlap_threshold", "topk_per_image")
# ranges of knobs shared by the builders (checked with their types before anything is built)
AT_LEAST_ONE = {"d_model", "mask_dim", "conv_dim", "ffn_dim", "n_heads", "n_points", "num_layers", "num_blocks",
                "blocks", "layers_per_block", "hidden_dim", "nheads", "dim_feedforward", "dec_layers", "num_queries",
                "num_classes", "high_levels"}
POSITIVE = {"expansion", "trc_temperature", "pe_temperature"}
UNIT_INTERVAL = {"dropout"}


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
    check_options(group, builder, options)
    return builder, options


def _hints(builder: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the builder checks its own arguments
        return {}


def _conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from a config: no tuples, ints for floats) is an instance of ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is None:
        return True
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_conforms(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        inner = args[0] if args and args[0] is not Ellipsis else Any
        return isinstance(value, list | tuple) and all(_conforms(v, inner) for v in value)
    return True  # a type a config cannot spell (a module, a mapping): left to the builder


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (list, tuple, Sequence, typing.Sequence) and args and args[0] is not Ellipsis:
        return f"a list of {_describe(args[0])}, e.g. [3,3,3]" if args[0] is int else f"a list of {_describe(args[0])}"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_options(group: str, builder: Callable, options: Mapping[str, Any]) -> None:
    """Every option's type (from the builder's annotations) and range; the error names the key."""
    hints = _hints(builder)
    for key, value in options.items():
        hint = hints.get(key)
        if hint is not None and not _conforms(value, hint):
            raise ValueError(f"{group}.{key}={value!r} must be {_describe(hint)}")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key in AT_LEAST_ONE and number and value < 1:
            raise ValueError(f"{group}.{key}={value!r} must be >= 1")
        if key in POSITIVE and number and value <= 0:
            raise ValueError(f"{group}.{key}={value!r} must be > 0")
        if key in UNIT_INTERVAL and number and not 0 <= value < 1:
            raise ValueError(f"{group}.{key}={value!r} must be in [0, 1)")


def check_input(inp: Mapping[str, Any]) -> None:
    """Input sizes and batch must be positive integers."""
    for key in ("height", "width", "batch"):
        val = inp.get(key)
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"input.{key} must be a positive integer, got {val!r}")


def check_postprocess(inp: Mapping[str, Any]) -> None:
    """Post-processing settings: types and ranges, each error naming its key."""
    topk = inp.get("topk_per_image", 100)
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise ValueError(f"input.topk_per_image={topk!r} must be an integer >= 1")
    ids = inp.get("thing_ids", [])
    if not isinstance(ids, list | tuple) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"input.thing_ids={ids!r} must be a list of integer class ids, e.g. [0,1,2]")
    for key in ("object_mask_threshold", "overlap_threshold"):
        val = inp.get(key, 0.8)
        if not isinstance(val, int | float) or isinstance(val, bool) or not 0 <= val <= 1:
            raise ValueError(f"input.{key}={val!r} must be a number in [0, 1]")


def build_model(cfg: Any) -> Segmentor:
    """Build the segmentor described by ``cfg`` in eval mode (random weights)."""
    cfg = _plain(cfg)
    for group in ("backbone", "encoder", "decoder", "input"):
        if group not in cfg:
            raise ValueError(f"config needs a {group!r} group")
    inp = cfg["input"]
    check_input(inp)
    check_postprocess(inp)
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
