"""torch.compile-cleanliness: no graph breaks in any model forward (dynamo.explain, no compilation)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from bench.config import compose
from models import build_model

pytestmark = pytest.mark.slow  # fresh processes and model-sized traces


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


def test_job_counts_only_its_own_graph_breaks():
    """dynamo's graph-break counter is process-wide and survives ``dynamo.reset()``: the row takes the delta."""
    from torch._dynamo.utils import counters

    from bench.measures.latency import latency_columns
    from bench.runners import dynamo_graph_breaks
    from bench.timing import TimingConfig

    def with_break(x):
        x = x + 1
        torch._dynamo.graph_break()
        return x * 2

    dynamo.reset()
    counters["graph_break"]["an earlier job's break"] += 5  # what an earlier compile in this process left
    before = dynamo_graph_breaks()
    x = torch.ones(3)
    fn = torch.compile(with_break, backend="eager")

    def runner(postprocess: bool, mode: str):
        return (lambda: fn(x)), {"compile_seconds": 0.0}

    cfg = TimingConfig(min_iters=2, min_seconds=0, warmup_min_seconds=0, warmup_window=1, warmup_tolerance=1.0,
                       e2e=False, pixel_decoder_alone=False, bootstrap=10)
    row = latency_columns(None, x[None], {"timing": cfg, "device": torch.device("cpu"), "mode": "compile"}, runner)
    assert dynamo_graph_breaks() - before == 1
    assert row["graph_breaks"] == 1 and row["recompiles"] == 0
