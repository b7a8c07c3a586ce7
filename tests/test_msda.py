"""The pytorch MSDA core against an independent per-query, per-point bilinear loop; the backend registry."""

from __future__ import annotations

import math

import pytest
import torch

from models.layers import MSDeformAttn
from models.ops import MSDA_BACKENDS, msda_core, resolve_msda_backend
from models.registry import UnknownNameError


def naive_msda(value, shapes, locations, weights):
    """Deformable-DETR's CUDA semantics written out: h = y*H - 0.5, w = x*W - 0.5, zero outside."""
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    out = torch.zeros(n, lq, m, d, dtype=torch.float64)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    v = value.double()
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (H, W) in enumerate(shapes):
                    for p in range(n_points):
                        x, y = locations[b, q, head, lvl, p].tolist()
                        hh, ww = y * H - 0.5, x * W - 0.5
                        if not (-1 < hh < H and -1 < ww < W):
                            continue
                        h0, w0 = math.floor(hh), math.floor(ww)
                        lh, lw = hh - h0, ww - w0
                        acc = torch.zeros(d, dtype=torch.float64)
                        for dy, dx, cw in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw),
                                           (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
                            yy, xx = h0 + dy, w0 + dx
                            if 0 <= yy < H and 0 <= xx < W:
                                acc += cw * v[b, starts[lvl] + yy * W + xx, head]
                        out[b, q, head] += float(weights[b, q, head, lvl, p]) * acc
    return out.view(n, lq, m * d)


@pytest.mark.parametrize("shapes", [[(3, 5), (2, 3), (1, 2)], [(4, 4)], [(2, 7), (5, 3)]])
def test_pytorch_core_matches_naive_loop(shapes):
    n, m, d, p, lq = 2, 2, 3, 3, 5
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d)
    # locations spread over [-0.3, 1.3]: many points fall partly or wholly outside the maps
    locations = torch.rand(n, lq, m, len(shapes), p, 2) * 1.6 - 0.3
    weights = torch.rand(n, lq, m, len(shapes), p)
    got = msda_core(value, shapes, locations, weights, backend="pytorch")
    ref = naive_msda(value, shapes, locations, weights)
    assert got.shape == (n, lq, m * d)
    outside = ((locations < 0) | (locations > 1)).any(-1).sum().item()
    assert outside > 0, "the test must exercise points outside the map"
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_pytorch_core_zero_outside_and_exact_at_pixel_centres():
    value = torch.arange(6, dtype=torch.float32).view(1, 6, 1, 1)  # one 2x3 level
    # centre of pixel (row 1, col 2) -> value 5; far outside -> 0
    loc = torch.tensor([[[[[[2.5 / 3, 1.5 / 2]]]], [[[[5.0, 5.0]]]]]]).view(1, 2, 1, 1, 1, 2)
    out = msda_core(value, [(2, 3)], loc, torch.ones(1, 2, 1, 1, 1))
    assert out.flatten().tolist() == pytest.approx([5.0, 0.0])


def test_backend_registry_and_auto():
    assert "pytorch" in MSDA_BACKENDS.names()
    assert resolve_msda_backend("auto", "cpu") == "pytorch"
    with pytest.raises(UnknownNameError, match="valid choices: .*pytorch"):
        MSDA_BACKENDS.get("cuda_kernel")
    with pytest.raises(UnknownNameError, match="pytorch"):
        MSDeformAttn(backend="nope")


def test_module_checks_shapes_and_heads():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=250, n_heads=8)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    q = torch.randn(1, 5, 16)
    ref = torch.rand(1, 5, 2, 2)
    with pytest.raises(ValueError, match="do not add up"):
        attn(q, ref, torch.randn(1, 7, 16), [(2, 2), (1, 2)])
    with pytest.raises(ValueError, match="expected 2 levels"):
        attn(q, ref, torch.randn(1, 4, 16), [(2, 2)])
    assert attn(q, ref, torch.randn(1, 6, 16), [(2, 2), (1, 2)]).shape == (1, 5, 16)


def test_module_init_matches_upstream():
    attn = MSDeformAttn(d_model=256, n_levels=3, n_heads=8, n_points=4)
    assert attn.sampling_offsets.weight.abs().sum() == 0
    assert attn.attention_weights.weight.abs().sum() == 0
    bias = attn.sampling_offsets.bias.detach().view(8, 3, 4, 2)
    # head 0 points along +x, head 2 along +y; point k has length k+1; same on every level
    assert bias[0, :, :, 0].tolist() == [[1.0, 2.0, 3.0, 4.0]] * 3
    torch.testing.assert_close(bias[2, 1, :, 1], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert bias[1].abs().max(-1).values.min() == pytest.approx(1.0)


def test_offset_normalizer_is_cached_per_shapes():
    from models.layers.ms_deform_attn import offset_normalizer

    a = offset_normalizer(((2, 3), (4, 5)), torch.device("cpu"), torch.float32)
    assert a.tolist() == [[3.0, 2.0], [5.0, 4.0]]  # (W, H) per level
    assert offset_normalizer(((2, 3), (4, 5)), torch.device("cpu"), torch.float32) is a  # no new tensor per call


def test_cached_normalizer_created_in_inference_mode_works_with_autograd():
    attn = MSDeformAttn(d_model=16, n_levels=1, n_heads=2, n_points=2)
    q, ref, v = torch.randn(1, 3, 16), torch.rand(1, 3, 1, 2), torch.randn(1, 6, 16)
    with torch.inference_mode():
        attn(q, ref, v, [(2, 3)])  # first call caches the normalizer
    attn(q.requires_grad_(), ref, v, [(2, 3)]).sum().backward()  # must not hit an inference tensor
    assert q.grad is not None
