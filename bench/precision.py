"""``measure=error``: the accuracy cost of a reduced precision, as output error against fp32.

The same model (same random weights) and input run twice in eager mode: at fp32 with TF32 off
(the reference) and at the job's precision with the encoder's ``force_fp32`` setting. Compared:
the pixel decoder's ``mask_features`` and the decoder's final ``pred_logits`` / ``pred_masks``
(relative L2 error, ``||x - ref|| / ||ref||``), and the binary masks the two runs predict (fraction
of query-mask pixels whose logit has the same sign). Random weights make this a proxy for a trained
model's error, but the same proxy for every encoder and precision. (A semantic argmax agreement
was tried and dropped: with random weights one class wins every pixel, so it is always 1.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.row import ACCURACY as ERROR_COLUMNS


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref||_2 / ||ref||_2 in float64."""
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def _forward(model: nn.Module, images: torch.Tensor, amp: Any) -> tuple[dict, torch.Tensor]:
    """Decoder outputs and the pixel decoder's mask_features of one eager forward."""
    captured: dict[str, torch.Tensor] = {}
    hook = model.pixel_decoder.register_forward_hook(
        lambda mod, args, out: captured.__setitem__("mask_features", out.mask_features.detach().clone()))
    try:
        with torch.inference_mode(), amp:
            out = model(images, postprocess=False)
    finally:
        hook.remove()
    return out, captured["mask_features"]


def output_error(model: nn.Module, images: torch.Tensor, precision: str,
                 context: Callable[[str, torch.device], Any]) -> dict[str, float]:
    """Error of ``precision`` against the fp32 reference; NaN columns for fp32 itself (nothing to compare)."""
    if precision == "fp32":
        return dict.fromkeys(ERROR_COLUMNS, math.nan)
    ref, ref_mf = _forward(model, images, context("fp32", images.device))
    out, mf = _forward(model, images, context(precision, images.device))
    context(precision, images.device)  # leave the TF32 flags as the job's precision sets them
    agree = (out["pred_masks"] > 0) == (ref["pred_masks"] > 0)
    return {"err_mask_features_rel": relative_error(mf, ref_mf),
            "err_pred_logits_rel": relative_error(out["pred_logits"], ref["pred_logits"]),
            "err_pred_masks_rel": relative_error(out["pred_masks"], ref["pred_masks"]),
            "mask_agreement": float(agree.double().mean())}
