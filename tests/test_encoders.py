"""PRO-SCALE, Lite-M2F and RT-M2F: parameter counts from layer shapes, structure, TRC, positional embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.encoders import ENCODERS
from models.encoders.lite_m2f import LiteEncoderLayer
from models.encoders.proscale import TRC
from models.encoders.rt_m2f import sincos_2d
from models.layers import MSDeformEncoderLayer
from tests.conftest import n_params
from tests.test_params import CHANNELS, C, conv, encoder_layer, linear, m2f_pixel_decoder, norm

SWIN_T = CHANNELS["swin_t"]


def feats(ch: dict[str, int], h: int, w: int, batch: int = 2) -> dict[str, torch.Tensor]:
    return {k: torch.randn(batch, c, h // s, w // s) for (k, c), s in zip(ch.items(), (4, 8, 16, 32), strict=True)}


def input_side(ch: dict[str, int]) -> int:
    """Input projections, level embedding and the res2 lateral + mask 1x1 shared with M2F."""
    return (sum(conv(ch[k], C, 1, True) + norm(C) for k in ("res3", "res4", "res5")) + 3 * C
            + conv(ch["res2"], C, 1, False) + norm(C) + conv(C, C, 1, True))


# ---------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_proscale_layer_params(levels):
    assert n_params(MSDeformEncoderLayer(C, 1024, 0.0, levels, 8, 4)) == encoder_layer(levels)
    assert encoder_layer(levels) == {1: 682_848, 2: 707_520, 3: 732_192}[levels]  # docs/models.md §5.4


@pytest.mark.parametrize("backbone,published", [("r50", 7.421), ("swin_t", 6.806)])
def test_proscale_333_params(backbone, published):
    ch = CHANNELS[backbone]
    dec = ENCODERS.get("proscale")(ch, layers=[3, 3, 3], lpe=True, trc="faithful")
    derived = (input_side(ch) + 3 * (encoder_layer(1) + encoder_layer(2) + encoder_layer(3))
               + linear(C, 1)     # one shared TRC gate
               + norm(C))         # LPE: max-pool (no parameters) + GN
    assert n_params(dec) == derived
    assert round(derived / 1e6, 3) == published


def test_lite_m2f_params():
    small_ffn = 2 * linear(C, C) + norm(C)
    query_proj = linear(C, C)  # instantiated by Lite-DETR's attention even without KDA
    derived = input_side(SWIN_T) + conv(C, C, 3, False) + norm(C) + 6 * (encoder_layer(3) + query_proj) + 3 * small_ffn
    assert n_params(ENCODERS.get("lite_m2f")(SWIN_T)) == derived
    kda = derived - 6 * linear(C, 8 * 3 * 4)  # KDA drops the attention-weights linear, uses query_proj
    assert n_params(ENCODERS.get("lite_m2f")(SWIN_T, kda=True)) == kda
    # R50, docs/models.md §3.4: 6.83 M with MSDA, 6.68 M with KDA
    r50 = [n_params(ENCODERS.get("lite_m2f")(CHANNELS["r50"], kda=k)) for k in (False, True)]
    assert [round(p / 1e6, 2) for p in r50] == [6.83, 6.68]


def test_rt_m2f_params():
    def conv_bn(i, o, k):
        return conv(i, o, k, False) + norm(o)

    repvgg = conv_bn(C, C, 3) + conv_bn(C, C, 1)
    csp = 2 * conv_bn(2 * C, C, 1) + 3 * repvgg  # expansion 1.0: conv3 is the identity
    aifi = 4 * C * C + 4 * C + linear(C, 1024) + linear(1024, C) + 2 * norm(C)
    hybrid = (sum(conv_bn(SWIN_T[k], C, 1) for k in ("res3", "res4", "res5")) + aifi
              + 2 * conv_bn(C, C, 1) + 2 * conv_bn(C, C, 3) + 4 * csp)
    mask_branch = conv_bn(SWIN_T["res2"], C, 1) + conv_bn(C, C, 3) + conv(C, C, 1, True)
    assert n_params(ENCODERS.get("rt_m2f")(SWIN_T)) == hybrid + mask_branch
    assert round(hybrid / 1e6, 2) == 11.38  # docs/models.md §4.3
    half = ENCODERS.get("rt_m2f")(SWIN_T, expansion=0.5)
    assert n_params(half) < n_params(ENCODERS.get("rt_m2f")(SWIN_T))


def test_m2f_reference_count_unchanged():
    assert n_params(ENCODERS.get("m2f")(SWIN_T)) == m2f_pixel_decoder(SWIN_T)


# ---------------------------------------------------------------- structure
@pytest.mark.slow
def test_proscale_006_equals_m2f():
    m2f = ENCODERS.get("m2f")(SWIN_T).eval()
    ps = ENCODERS.get("proscale")(SWIN_T, layers=[0, 0, 6], lpe=False, trc="off").eval()
    with torch.no_grad():
        for p in m2f.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # non-trivial offsets and attention weights
    ps.load_state_dict(m2f.state_dict(), strict=True)
    x = feats(SWIN_T, 128, 192)
    with torch.no_grad():
        a, b = m2f(x), ps(x)
    assert torch.equal(a.mask_features, b.mask_features)
    for u, v in zip(a.multi_scale_features, b.multi_scale_features, strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("trc", ["off", "faithful"])
def test_proscale_p1_never_reads_stride16_or_8(trc):
    dec = ENCODERS.get("proscale")(SWIN_T, layers=[2, 0, 0], lpe=False, trc=trc).eval()
    x = feats(SWIN_T, 128, 192)
    y = dict(x)
    y["res4"] = x["res4"] + torch.randn_like(x["res4"])
    if trc == "off":  # with TRC the stride-8 tokens guide the stride-32 gate, by design
        y["res3"] = x["res3"] + torch.randn_like(x["res3"])
    with torch.no_grad():
        a, b = dec(x).multi_scale_features, dec(y).multi_scale_features
    assert torch.equal(a[0], b[0])  # the stride-32 output only saw stride-32 tokens
    assert not torch.equal(a[1], b[1])


def test_proscale_p2_never_reads_stride8_without_trc():
    dec = ENCODERS.get("proscale")(SWIN_T, layers=[1, 2, 0], lpe=False, trc="off").eval()
    x = feats(SWIN_T, 128, 192)
    y = dict(x, res3=x["res3"] + torch.randn_like(x["res3"]))
    with torch.no_grad():
        a, b = dec(x).multi_scale_features, dec(y).multi_scale_features
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[2], b[2])
    assert [layer.self_attn.n_levels for layer in dec.transformer.layers] == [1, 2, 2]


def test_proscale_layers_are_independent_and_lpe_has_no_conv():
    dec = ENCODERS.get("proscale")(SWIN_T, layers=[3, 3, 3])
    assert len(dec.transformer.layers) == 9
    assert len({id(p) for layer in dec.transformer.layers for p in layer.parameters()}) == 9 * 16
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in dec.pixel_embedding.modules())


def test_lite_h_layer_updates_only_high_tokens():
    shapes = [(2, 3), (4, 6), (8, 12)]
    n_high = 6 + 24
    src = torch.randn(2, sum(h * w for h, w in shapes), C)
    pos = torch.randn_like(src)
    ref = torch.rand(2, src.shape[1], 3, 2)
    h_layer = LiteEncoderLayer(C, 1024, 0.0, 8, 4, kda=False, full_update=False, small_ffn=True,
                               msda_backend="pytorch").eval()
    f_layer = LiteEncoderLayer(C, 1024, 0.0, 8, 4, kda=False, full_update=True, small_ffn=True,
                               msda_backend="pytorch").eval()
    with torch.no_grad():
        out_h = h_layer.forward_lite(src, pos, ref, shapes, n_high)
        out_f = f_layer.forward_lite(src, pos, ref, shapes, n_high)
    assert torch.equal(out_h[:, n_high:], src[:, n_high:])
    assert not torch.isclose(out_h[:, :n_high], src[:, :n_high]).any()
    assert not torch.isclose(out_f[:, n_high:], src[:, n_high:]).all()
    dec = ENCODERS.get("lite_m2f")(SWIN_T, blocks=3, layers_per_block=2)
    assert [layer.full_update for layer in dec.transformer.layers] == [False, True] * 3


def test_lite_high_levels_one_uses_stride32_only():
    dec = ENCODERS.get("lite_m2f")(SWIN_T, high_levels=1, blocks=1, layers_per_block=1).eval()
    x = feats(SWIN_T, 128, 192)
    layer = dec.transformer.layers[0]
    orig, calls = layer.forward_lite, []

    def spy(src, pos, ref, shapes, n_high):
        calls.append(n_high)
        return orig(src, pos, ref, shapes, n_high)

    layer.forward_lite = spy
    with torch.no_grad():
        dec(x)
    assert calls == [(128 // 32) * (192 // 32)]


def test_rt_lateral_input_is_contiguous_as_rt_detr():
    """RT-DETR calls .contiguous() on AIFI's output map: the first lateral conv never gets a strided view."""
    dec = ENCODERS.get("rt_m2f")(SWIN_T).eval()
    seen = []
    dec.transformer.lateral_convs[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        dec(feats(SWIN_T, 128, 192))
    assert seen == [True]


def test_rt_aifi_sees_only_stride32_tokens():
    dec = ENCODERS.get("rt_m2f")(SWIN_T).eval()
    seen = []
    dec.transformer.aifi.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        dec(feats(SWIN_T, 128, 192))
    assert seen == [torch.Size([2, (128 // 32) * (192 // 32), C])]


# ---------------------------------------------------------------- TRC
def official_trc(tokens, target_hw, guide, guide_hw, linear_layer, temperature=0.1):
    """The official code's ops written out: .view without transpose, resize, .reshape without transpose."""
    b, _, c = guide.shape
    g = guide.contiguous().view(-1, c, *guide_hw)
    g = F.interpolate(g, size=target_hw, mode="bilinear", align_corners=False).reshape(b, -1, c)
    return tokens * torch.sigmoid(temperature * linear_layer(g))


def to_tokens(m: torch.Tensor) -> torch.Tensor:
    return m.flatten(2).transpose(1, 2)


def test_trc_faithful_matches_official_and_differs_from_fixed():
    guide_map, target_map = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 3, 5)  # non-square
    faithful, fixed = TRC(8, layout="faithful"), TRC(8, layout="fixed")
    fixed.load_state_dict(faithful.state_dict())
    with torch.no_grad():
        faithful.linear.weight.mul_(20)
        fixed.linear.weight.copy_(faithful.linear.weight)
        a = faithful(to_tokens(target_map), (3, 5), to_tokens(guide_map), (6, 10))
        ref = official_trc(to_tokens(target_map), (3, 5), to_tokens(guide_map), (6, 10), faithful.linear)
        b = fixed(to_tokens(target_map), (3, 5), to_tokens(guide_map), (6, 10))
    assert torch.equal(a, ref)
    assert not torch.allclose(a, b, atol=1e-4)


def test_trc_fixed_is_invariant_to_token_layout():
    """Fixed TRC = a gate computed on the true spatial map, whatever order the tokens come in."""
    guide_map, target_map = torch.randn(1, 8, 6, 10), torch.randn(1, 8, 3, 5)
    trc = TRC(8, layout="fixed")
    with torch.no_grad():
        trc.linear.weight.mul_(20)
        got = trc(to_tokens(target_map), (3, 5), to_tokens(guide_map), (6, 10))
        resized = F.interpolate(guide_map, size=(3, 5), mode="bilinear", align_corners=False)
        logit = torch.einsum("bchw,c->bhw", resized, trc.linear.weight[0]) + trc.linear.bias
        gate_map = torch.sigmoid(0.1 * logit)
        expect = to_tokens(target_map * gate_map[:, None])
        # column-major token order (a transposed layout) gives the transposed answer
        t_tokens = target_map.transpose(2, 3).flatten(2).transpose(1, 2)
        t_guide = guide_map.transpose(2, 3).flatten(2).transpose(1, 2)
        got_t = trc(t_tokens, (5, 3), t_guide, (10, 6))
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(got_t, (target_map * gate_map[:, None]).transpose(2, 3).flatten(2).transpose(1, 2))
    faithful = TRC(8, layout="faithful")
    faithful.load_state_dict(trc.state_dict())
    with torch.no_grad():
        assert not torch.allclose(faithful(to_tokens(target_map), (3, 5), to_tokens(guide_map), (6, 10)), expect,
                                  atol=1e-4)


# ---------------------------------------------------------------- RT-M2F positional embedding
def test_rt_pos_embed_faithful_vs_fixed():
    assert torch.equal(sincos_2d(5, 5, 16, layout="faithful"), sincos_2d(5, 5, 16, layout="fixed"))
    a, b = sincos_2d(3, 4, 16, layout="faithful"), sincos_2d(3, 4, 16, layout="fixed")
    assert a.shape == b.shape == (1, 12, 16) and not torch.equal(a, b)
    # fixed: token (row 1, col 0) = index 4 carries row 1 and column 0 (first quarter: sin(row * omega0) = sin 1)
    assert b[0, 4, 0] == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert b[0, 4, 8] == pytest.approx(0.0)
    # faithful: the meshgrid is w-major, so token 4 gets (4 // 3, 4 % 3) = (1, 1)
    assert a[0, 4, 8] == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        sincos_2d(3, 4, 16, layout="transposed")


# ---------------------------------------------------------------- every encoder, two sizes
ENCODER_CONFIGS = [["encoder=m2f"], ["encoder=proscale"], ["encoder=proscale_111_nolpe"], ["encoder=proscale_222"],
                   ["encoder=proscale", "encoder.trc=fixed"], ["encoder=proscale", "encoder.residual=true"],
                   ["encoder=lite_m2f"], ["encoder=lite_m2f", "encoder.kda=true", "encoder.high_levels=1"],
                   ["encoder=rt_m2f"], ["encoder=rt_m2f", "encoder.pos_embed=fixed", "encoder.expansion=0.5"]]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", ENCODER_CONFIGS, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("size", [(128, 128), (160, 96)])
def test_every_encoder_forward(overrides, size, small_cfg):
    model = build_model(small_cfg("backbone=swin_t", *overrides))
    x = feats(model.backbone.out_channels, *size)
    with torch.no_grad():
        out = model.pixel_decoder(x)
    h, w = size
    assert out.mask_features.shape == (2, 256, h // 4, w // 4)
    assert [tuple(m.shape) for m in out.multi_scale_features] == [(2, 256, h // s, w // s) for s in (32, 16, 8)]
    assert all(torch.isfinite(m).all() for m in (out.mask_features, *out.multi_scale_features))


@pytest.mark.parametrize("override,message", [
    ("encoder.layers=[1,-1,2]", r"three non-negative integers"),
    ("encoder.layers=[0,0,0]", r"at least one layer"),
    ("encoder.layers=[1,2]", r"three non-negative integers"),
    ("encoder.trc=maybe", r"encoder.trc='maybe' must be one of 'faithful', 'fixed', 'off'"),
])
def test_invalid_proscale_knobs(override, message, small_cfg):
    with pytest.raises(ValueError, match=message):
        build_model(small_cfg("encoder=proscale", override))


@pytest.mark.parametrize("encoder,override,message", [
    ("lite_m2f", "encoder.high_levels=3", r"high_levels must be 1 or 2"),
    ("lite_m2f", "encoder.blocks=0", r"encoder.blocks=0 must be >= 1"),
    ("rt_m2f", "encoder.expansion=0", r"expansion=0 must be > 0"),
    ("rt_m2f", "encoder.expansion=-0.5", r"expansion=-0.5 must be > 0"),
    ("rt_m2f", "encoder.pos_embed=sine", r"pos_embed='sine' must be one of 'faithful', 'fixed'"),
])
def test_invalid_lite_rt_knobs(encoder, override, message, small_cfg):
    with pytest.raises(ValueError, match=message):
        build_model(small_cfg(f"encoder={encoder}", override))


@pytest.mark.parametrize("encoder,override,message", [
    ("m2f", "encoder.num_layers=abc", r"encoder.num_layers='abc' must be int"),
    ("m2f", "encoder.ffn_dim=0", r"encoder.ffn_dim=0 must be >= 1"),
    ("m2f", "encoder.dropout=1.5", r"encoder.dropout=1.5 must be in \[0, 1\)"),
    ("rt_m2f", "encoder.expansion=abc", r"encoder.expansion='abc' must be float"),
    ("proscale", "encoder.lpe=maybe", r"encoder.lpe='maybe' must be bool"),
    ("proscale", "encoder.trc_temperature=0", r"encoder.trc_temperature=0 must be > 0"),
    ("m2f", "decoder.num_queries=0", r"decoder.num_queries=0 must be >= 1"),
    ("m2f", "decoder.hidden_dim=abc", r"decoder.hidden_dim='abc' must be int"),
])
def test_every_knob_is_typed_and_ranged_before_anything_is_built(encoder, override, message, small_cfg):
    """Type and range come from the builder's annotations and the shared range table, so a bad knob fails
    with its key named, before a single module is built."""
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        build_model(small_cfg(f"encoder={encoder}", override))


def test_proscale_residual_adds_the_encoders_input_tokens_as_the_official_code():
    """After a P2 layer the skip is [res5 | res4] of the encoder's input, so its res5 part is P1's input,
    not P1's output (adding the phase's input instead differs by up to 4.3 in max abs output)."""
    enc = ENCODERS.build("proscale", in_channels=CHANNELS["r50"], layers=[1, 1, 1], trc="off",
                         residual=True).transformer

    class Ones(torch.nn.Module):  # a layer that outputs ones, whatever it is given
        def forward(self, src, *args):
            return torch.ones_like(src)

    class Identity(torch.nn.Module):
        def forward(self, src, *args):
            return src

    enc.layers = torch.nn.ModuleList([Ones(), Ones(), Identity()])
    feats = {k: torch.randn(1, c, 64 // s, 64 // s) for (k, c), s in zip(CHANNELS["r50"].items(), (4, 8, 16, 32),
                                                                         strict=True)}
    with torch.no_grad():
        res5, res4, _ = enc(feats)
        srcs, _ = enc.embed(feats)
    # P1: ones + res5_in; P2: ones + [res5_in | res4_in] (the phase's input would give 2 + res5_in)
    torch.testing.assert_close(res5, 1 + srcs[0])
    torch.testing.assert_close(res4, 1 + srcs[1])
