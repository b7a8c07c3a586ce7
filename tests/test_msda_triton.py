"""The triton MSDA backend on CPU through Triton's interpreter: index/weight arithmetic against the
independent loop, the registry and ``auto``, the custom op (fake tensor, compile, FLOP formulas)."""

from __future__ import annotations

import pytest
import torch

from bench.flops import count_fvcore, flop_formulas
from models.encoders import ENCODERS
from models.layers import MSDeformAttn
from models.ops import MSDA_BACKENDS, msda_core, msda_triton, resolve_msda_backend
from tests.test_msda import naive_msda

triton = pytest.importorskip("triton")
interpreter = pytest.mark.skipif(not msda_triton.available(torch.device("cpu")),
                                 reason="needs TRITON_INTERPRET=1 on CPU")


def inputs(shapes, n=2, lq=21, m=2, d=4, p=3, dtype=torch.float32):
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d).to(dtype)
    locations = torch.rand(n, lq, m, len(shapes), p, 2) * 1.6 - 0.3  # many points partly or wholly outside
    weights = torch.rand(n, lq, m, len(shapes), p)
    return value, locations, weights


@interpreter
@pytest.mark.parametrize("shapes", [[(4, 4)], [(2, 7), (5, 3)], [(3, 5), (2, 3), (1, 2)],
                                    [(6, 9), (3, 5), (2, 3), (1, 2)]])
def test_kernel_matches_naive_loop(shapes):
    value, locations, weights = inputs(shapes)
    got = msda_core(value, shapes, locations, weights, backend="triton")
    ref = naive_msda(value, shapes, locations, weights)
    assert got.dtype == value.dtype and got.shape == ref.shape
    assert ((locations < 0) | (locations > 1)).any(), "the test must exercise points outside the maps"
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


@interpreter
def test_kernel_far_outside_points_extreme_values_and_non_power_of_two_channels():
    shapes = [(3, 5), (2, 2)]
    value, locations, weights = inputs(shapes, n=1, lq=7, m=3, d=5, p=2)
    locations[0, :3] = torch.tensor([1e9, -1e9])  # must not wrap around when converted to integers
    got = msda_core(value, shapes, locations, weights, backend="triton")
    assert got[0, :3].abs().max() == 0
    torch.testing.assert_close(got.double(), naive_msda(value, shapes, locations, weights), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_half_inputs_accumulate_in_fp32(dtype):
    shapes = [(5, 7), (3, 4), (2, 2)]
    value, locations, weights = inputs(shapes, m=2, d=8, p=4)
    # as the model passes them under autocast (only value low), and everything low; the reference sees the
    # same rounded inputs, so what is left is the output's rounding (accumulation is fp32)
    for loc, w in ((locations, weights), (locations.to(dtype), weights.to(dtype))):
        ref = naive_msda(value.to(dtype).float(), shapes, loc.float(), w.float()).float()
        got = msda_core(value.to(dtype), shapes, loc, w, backend="triton")
        assert got.dtype == dtype
        assert ((got.float() - ref).norm() / ref.norm()).item() <= (4e-3 if dtype == torch.bfloat16 else 5e-4)


@interpreter
def test_kernel_rejects_too_many_levels_and_handles_empty_queries():
    shapes = [(2, 2)] * 5
    value, locations, weights = inputs(shapes)
    with pytest.raises(ValueError, match="up to 4 levels"):
        msda_core(value, shapes, locations, weights, backend="triton")
    value, locations, weights = inputs([(2, 2)], lq=0)
    assert msda_core(value, [(2, 2)], locations, weights, backend="triton").shape == (2, 0, 8)


def test_registry_auto_prefers_triton_on_cuda_only(monkeypatch):
    assert {"pytorch", "triton"} <= set(MSDA_BACKENDS.names())
    assert resolve_msda_backend("auto", "cpu") == "pytorch"  # also under the interpreter
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_msda_backend("auto", "cuda") == "triton"
    monkeypatch.setattr(msda_triton, "TRITON_INSTALLED", False)
    assert resolve_msda_backend("auto", "cuda") == "pytorch"
    with pytest.raises(RuntimeError, match="'triton' is not available on device 'cuda'.*available there: pytorch"):
        resolve_msda_backend("triton", "cuda")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1.*available there: pytorch, auto"):
        resolve_msda_backend("triton", "cpu")


@pytest.mark.slow
def test_job_records_the_backend_that_ran(small_cfg, tmp_path, monkeypatch):
    from bench.job import run_job

    row = run_job(small_cfg("msda_backend=auto", "device=cpu"), tmp_path / "a")
    assert row["status"] == "ok" and row["msda_backend"] == "pytorch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    row = run_job(small_cfg("msda_backend=triton", "device=cpu"), tmp_path / "b")
    assert row["status"] == "invalid" and "TRITON_INTERPRET" in row["error"]
    row = run_job(small_cfg("msda_backend=cuda_kernel", "device=cpu"), tmp_path / "c")
    assert row["status"] == "invalid" and "valid choices: pytorch, triton" in row["error"]


def _attn_inputs(levels=3):
    shapes = [(8, 10), (4, 5), (2, 3)][:levels]
    s = sum(h * w for h, w in shapes)
    attn = MSDeformAttn(32, levels, 2, 4, backend="triton").eval()
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)  # spread the points (the init puts them on a ring)
    query = torch.randn(2, s, 32)
    return attn, (query, torch.rand(2, s, levels, 2), query, shapes)


@pytest.mark.slow
@interpreter
def test_custom_op_fake_tensor_and_compile_without_graph_breaks():
    value, locations, weights = inputs([(3, 5), (2, 3)])
    torch.library.opcheck(torch.ops.encbench.msda.default, (value, [3, 5, 2, 3], locations, weights),
                          test_utils=("test_schema", "test_faketensor"))
    attn, args = _attn_inputs()
    with torch.no_grad():
        eager = attn(*args)
        explained = torch._dynamo.explain(attn)(*args)
        compiled = torch.compile(attn, fullgraph=True)(*args)
    assert explained.graph_break_count == 0
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


class Bound(torch.nn.Module):
    """The attention with its spatial shapes bound (fvcore traces tensors only)."""

    def __init__(self, attn: MSDeformAttn, shapes) -> None:
        super().__init__()
        self.attn, self.shapes = attn, shapes

    def forward(self, *tensors):
        return self.attn(*tensors, self.shapes)


@pytest.mark.slow
@interpreter
def test_flop_counts_equal_the_pytorch_backend():
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for backend in ("pytorch", "triton"):
        attn, args = _attn_inputs()
        attn.backend = backend
        fcm = FlopCounterMode(display=False, custom_mapping=flop_formulas())
        with torch.no_grad(), fcm:
            attn(*args)
        fv = count_fvcore(Bound(attn, args[3]), args[:3], {})
        counts[backend] = (fcm.get_total_flops(), fv["total"], fv["coverage"])
    assert counts["triton"] == counts["pytorch"]
    assert counts["triton"][0] > 2 * counts["triton"][1] * 0.99  # grid_sample/msda FLOPs are in both


@pytest.mark.slow
@interpreter
@pytest.mark.parametrize("encoder", [("m2f", {}), ("proscale", {"layers": (1, 1, 1)}), ("lite_m2f", {})])
def test_encoders_equal_across_backends(encoder):
    """PRO-SCALE's phases use 1, 2 and 3 levels; Lite-M2F attends with a query subset."""
    name, opts = encoder
    feats = {k: torch.randn(1, c, 64 // s, 96 // s) for k, c, s in
             (("res2", 96, 4), ("res3", 192, 8), ("res4", 384, 16), ("res5", 768, 32))}
    channels = {k: v.shape[1] for k, v in feats.items()}
    outs = {}
    for backend in ("pytorch", "triton"):
        torch.manual_seed(0)
        model = ENCODERS.get(name)(in_channels=channels, msda_backend=backend, **opts).eval()
        with torch.no_grad():
            outs[backend] = model(feats)
    torch.testing.assert_close(outs["triton"].mask_features, outs["pytorch"].mask_features, atol=1e-4, rtol=1e-4)
    for a, b in zip(outs["triton"].multi_scale_features, outs["pytorch"].multi_scale_features, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@interpreter
def test_gpu_fast_path_script_smoke_run_on_cpu(tmp_path):
    """The fast-path GPU command's code path at tiny shapes (the interpreter stands in for the GPU)."""
    from scripts.gpu_fast_path import main

    summary = main(["--smoke", "--encoders", "m2f", "--out", str(tmp_path)])
    import pandas as pd

    core = pd.read_csv(tmp_path / "core.csv")
    assert set(core["backend"]) == {"pytorch", "triton"} and set(core["dtype"]) == {"fp32", "bf16", "fp16"}
    assert core[core["dtype"] == "fp32"]["max_abs_err"].max() < 1e-5  # triton fp32 equals the pytorch core
    assert core[core["dtype"] == "bf16"]["rel_err"].max() < 1e-2  # against the same rounded value
    assert (core["rel_err_vs_fp32"] >= core["rel_err"] - 1e-6).all()
    pdr = pd.read_csv(tmp_path / "pixel_decoder.csv")
    assert (pdr["status"] == "ok").all() and len(pdr) == 2 * 2  # backends x precisions (eager only)
    assert pdr[pdr["precision"] == "fp32"]["err_vs_fp32_pytorch"].max() < 1e-5  # triton pixel decoder = pytorch
    assert summary["fastest_bf16_vs_floor_m2f"]["floor_ms"] > 0
    assert summary["m2f_fastest_fp32_vs_transformers"]["hf_ms"] > 0


def test_gpu_fast_path_summary_targets():
    from scripts.gpu_fast_path import summarize

    rows = [{"encoder": e, "backend": b, "mode": m, "precision": p, "gmacs_pixel_decoder": macs, "ms": ms,
             "status": "ok"}
            for e, macs in (("m2f", 100.0), ("ps333", 50.0)) for b in ("pytorch", "triton")
            for m in ("eager", "cudagraph") for p in ("fp32", "bf16")
            for ms in [macs / (10 if b == "triton" and m == "cudagraph" else 1) + (0 if b == "triton" else 20)]]
    core = [{"shapes": "cityscapes", "dtype": "fp32", "backend": "triton", "ms": 0.36, "cuda_kernel_ms_fp32": 0.72}]
    s = summarize(core, rows, hf_ms=40.0, floors={"m2f": {"floor_ms": 1.0}, "ps333": {"floor_ms": 5.0}})
    assert s["core_triton_vs_cuda_kernel_cityscapes"] == pytest.approx(2.0)
    fastest = s["ps333_conversion_fastest_fp32"]
    assert (fastest["backend"], fastest["mode"]) == ("triton", "cudagraph") and fastest["conversion"] == 1.0
    assert s["m2f_fastest_fp32_vs_transformers"]["speedup"] == pytest.approx(4.0)  # 40 ms vs 10 ms
    # each encoder against its own floor: M2F's fastest bf16 is 100/10 = 10 ms, PRO-SCALE's 50/10 = 5 ms
    assert s["fastest_bf16_vs_floor_m2f"]["times_floor"] == pytest.approx(10.0)
    assert s["fastest_bf16_vs_floor_ps333"]["times_floor"] == pytest.approx(1.0)


def test_gpu_fast_path_interleaves_encoders_and_writes_rows_at_once(tmp_path, monkeypatch):
    """A budget that runs out mid-way leaves every encoder with the same configurations, already on disk."""
    import scripts.gpu_fast_path as fp

    monkeypatch.setattr(fp, "build_model", lambda cfg: torch.nn.Linear(1, 1))
    monkeypatch.setattr(fp, "pixel_decoder_runner", lambda *a, **k: (lambda: None, {}))
    monkeypatch.setattr("models.encoders.analytic.pixel_decoder_macs", lambda *a: {"pixel_decoder": 1e9})
    monkeypatch.setattr(torch.nn.Linear, "backbone", type("B", (), {"out_channels": [1]}), raising=False)
    clock = {"t": 0.0}

    def fake_median(*a, **k):
        clock["t"] += 1.0
        return 1.0

    monkeypatch.setattr(fp, "median_ms", fake_median)
    monkeypatch.setattr(fp.time, "time", lambda: clock["t"])
    writer = fp.RowWriter(tmp_path / "pd.csv")
    rows, skipped = fp.pixel_decoder_rows(torch.device("cpu"), ["m2f", "ps333"], (8, 8), ["eager", "cudagraph"],
                                          iters=1, budget=3.5, t0=0.0, writer=writer)
    done = [(r["encoder"], r["precision"], r["backend"], r["mode"]) for r in rows]
    assert done == [("m2f", "fp32", "pytorch", "eager"), ("ps333", "fp32", "pytorch", "eager"),
                    ("m2f", "bf16", "triton", "cudagraph"), ("ps333", "bf16", "triton", "cudagraph")]
    assert skipped[0] == "m2f triton eager fp32"
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "pd.csv")) == 4


def test_fixed_block_configuration_from_the_environment(monkeypatch):
    monkeypatch.delenv(msda_triton.CONFIG_ENV, raising=False)
    assert msda_triton.fixed_config() is None
    monkeypatch.setenv(msda_triton.CONFIG_ENV, "autotune")
    assert msda_triton.fixed_config() is None
    monkeypatch.setenv(msda_triton.CONFIG_ENV, "64x8")
    assert msda_triton.fixed_config() == (64, 8)
    for bad in ("64", "48x4", "64x3", "ax4"):
        monkeypatch.setenv(msda_triton.CONFIG_ENV, bad)
        with pytest.raises(ValueError, match="ENCBENCH_MSDA_TRITON_CONFIG"):
            msda_triton.fixed_config()
    launched = {}

    class Plain:  # records the launch instead of running it
        def __getitem__(self, grid):
            return lambda *args, **meta: launched.update(grid=grid, **meta)

    fake = {"plain": Plain(), "tuned": None, "cdiv": lambda a, b: -(-a // b), "next_pow2": lambda d: d}
    monkeypatch.setattr(msda_triton, "kernels", lambda: fake)
    monkeypatch.setenv(msda_triton.CONFIG_ENV, "32x2")
    msda_triton.launch(*inputs([(4, 4)], n=1, lq=70)[:1], [4, 4], *inputs([(4, 4)], n=1, lq=70)[1:])
    assert (launched["BLOCK_Q"], launched["num_warps"], launched["grid"]) == (32, 2, (3, 2))


@pytest.mark.slow
def test_sizes_are_not_specialised_and_autotuning_is_pruned():
    """Every new size would otherwise recompile every configuration (Triton specialises ints == 1 or % 16)."""
    import subprocess
    import sys

    assert (128, 4) not in msda_triton.AUTOTUNE_CONFIGS and len(msda_triton.AUTOTUNE_CONFIGS) <= 3
    code = ("from models.ops.msda_triton import kernels, SIZE_ARGS; k = kernels()['plain']; "
            "names = {k.arg_names[i] if isinstance(i, int) else i for i in k.do_not_specialize}; "
            "print(sorted(set(SIZE_ARGS) - names), sorted(set(SIZE_ARGS) & set(k.arg_names)) == sorted(SIZE_ARGS))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}  # a real JIT function
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["[]", "True"], out.stderr[-500:]
