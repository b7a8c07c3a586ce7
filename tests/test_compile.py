"""torch.compile-cleanliness: no graph breaks in any model forward (dynamo.explain, no compilation)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from models import build_model
from models.config import compose


def explain(model, x, postprocess: bool):
    dynamo.reset()
    with torch.no_grad():
        return dynamo.explain(lambda im: model(im, postprocess=postprocess))(x)


@pytest.mark.parametrize("encoder", ["m2f", "proscale", "lite_m2f", "rt_m2f"])
def test_forward_has_no_graph_breaks(encoder):
    model = build_model(compose(["backbone=r50", "input=ade20k", "input.height=64", "input.width=64",
                                 f"encoder={encoder}"]))
    ex = explain(model, torch.rand(1, 3, 64, 64) * 255, postprocess=False)
    assert ex.graph_break_count == 0, [str(b.reason) for b in ex.break_reasons]
    assert ex.graph_count == 1


def test_swin_backbone_and_semantic_postprocess_have_no_graph_breaks():
    model = build_model(compose(["backbone=swin_t", "input=ade20k", "input.height=64", "input.width=96"]))
    ex = explain(model, torch.rand(1, 3, 64, 96) * 255, postprocess=True)
    assert ex.graph_break_count == 0, [str(b.reason) for b in ex.break_reasons]


def test_panoptic_postprocess_breaks_only_on_data_dependent_ops():
    """Upstream's panoptic merge loops over kept queries (.item(), boolean masks): the one known source."""
    model = build_model(compose(["backbone=r50", "input=coco", "input.height=64", "input.width=64"]))
    ex = explain(model, torch.rand(1, 3, 64, 64) * 255, postprocess=True)
    reasons = {str(b.reason).splitlines()[0] for b in ex.break_reasons}
    assert ex.graph_break_count > 0
    assert all(r.startswith(("Data dependent", "Dynamic shape")) for r in reasons), reasons
