"""Pixel decoders ("transformer encoders"), one file each, registered by name in ``ENCODERS``."""

import inspect

from models.registry import Registry

ENCODERS: Registry = Registry("encoder")

from models.encoders import lite_m2f, m2f, proscale, rt_m2f  # noqa: E402,F401  (register themselves)
from models.encoders.base import PixelDecoder, PixelDecoderOutput  # noqa: E402


def variant_name(encoder: dict) -> str:
    """Short human label of an encoder config: ``m2f``, ``proscale(3,3,3)+lpe+trc``, ``lite_m2f(h2,3x2)``,
    ``rt_m2f(e1.0)``; each encoder's ``variant_label`` decides, the registered name otherwise."""
    name = encoder["name"]
    if name not in ENCODERS:
        return name
    cls = ENCODERS.get(name)
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}
    try:  # the builder's defaults fill what the config leaves out: one source of defaults
        label = cls.variant_label({**defaults, **{k: v for k, v in encoder.items() if k != "name"}})
    except (KeyError, TypeError, ValueError):  # an invalid knob: the model's build names it
        label = None
    return label or name


__all__ = ["ENCODERS", "PixelDecoder", "PixelDecoderOutput", "variant_name"]
