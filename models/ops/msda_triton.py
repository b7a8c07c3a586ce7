"""Backend ``triton``: one fused Triton kernel for the MSDA core (forward, inference).

One program computes ``BLOCK_Q`` queries x one head x all D channels: for every level and point
it reads the sampling location and attention weight, computes the four bilinear taps
(``grid_sample(align_corners=False, padding_mode="zeros")`` semantics, as Deformable-DETR's CUDA
kernel: x = loc_x * W - 0.5, taps outside the map read zero) and accumulates in fp32, reading
``value`` in its (N, S, M, D) layout: no per-level split, transpose, stack or intermediate
(N*M, D, Lq, L*P) sample tensor. fp32, bf16 and fp16 inputs; the output has ``value``'s dtype.

The kernel is wrapped as the custom op ``torch.ops.encbench.msda`` (with a fake implementation), so
``torch.compile`` keeps it in the graph without a break and CUDA graphs capture it. On CUDA it is
autotuned over three block configurations; ``ENCBENCH_MSDA_TRITON_CONFIG=64x4`` (``BLOCK_Q`` x
``num_warps``) fixes one instead, so a short validation run compiles one variant per dtype and level
count. Sizes are not specialised (``do_not_specialize``): a new input size reuses the compiled
kernels instead of compiling every configuration again. On CPU it runs only under Triton's
interpreter (``TRITON_INTERPRET=1``, slow: for checking the index and weight arithmetic, not for
timing).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch

from models.ops.msda import SpatialShapes, register_backend

MAX_LEVELS = 4  # level shapes travel as scalar kernel arguments (Deformable-DETR uses 4, Mask2Former 3)
# Integer arguments Triton would otherwise specialise on (== 1, divisible by 16): one compile serves all sizes.
SIZE_ARGS = ("n_rows", "n_queries", "n_values", "h0", "w0", "h1", "w1", "h2", "w2", "h3", "w3")
# (BLOCK_Q, num_warps) autotuned on CUDA. BLOCK_Q=128 spills registers at 3 levels in fp32 and is left out.
AUTOTUNE_CONFIGS = ((32, 4), (64, 4), (64, 8))
CONFIG_ENV = "ENCBENCH_MSDA_TRITON_CONFIG"


def fixed_config() -> tuple[int, int] | None:
    """``(BLOCK_Q, num_warps)`` from ``ENCBENCH_MSDA_TRITON_CONFIG=QxW``; None (autotune) when unset."""
    raw = os.environ.get(CONFIG_ENV, "").strip().lower()
    if raw in ("", "autotune"):
        return None
    try:
        block_q, warps = (int(x) for x in raw.split("x"))
    except ValueError:
        raise ValueError(f"{CONFIG_ENV}={raw!r}: expected BLOCK_QxNUM_WARPS such as 64x4, or 'autotune'") from None
    if block_q < 1 or block_q & (block_q - 1) or warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"{CONFIG_ENV}={raw!r}: BLOCK_Q must be a power of two, num_warps one of 1, 2, 4, 8, 16")
    return block_q, warps


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # found without importing it


def available(device: torch.device) -> bool:
    """CUDA with Triton installed, or CPU under Triton's interpreter."""
    if not TRITON_INSTALLED:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and interpreting()


def auto_eligible(device: torch.device) -> bool:
    """``auto`` picks the kernel on CUDA only (the interpreter is a checking tool)."""
    return device.type == "cuda" and available(device)


@functools.cache
def kernels() -> dict[str, Any]:
    """Define the kernel on first use (so the interpreter switch is read then, and triton stays optional)."""
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=SIZE_ARGS)
    def msda_fwd(value_ptr, loc_ptr, weight_ptr, out_ptr, n_rows, n_queries, n_values,
                 h0, w0, h1, w1, h2, w2, h3, w3,
                 M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
                 BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # flattened (n, q)
        head = tl.program_id(1)
        row_ok = rows < n_rows
        rows64 = rows.to(tl.int64)
        chan = tl.arange(0, BLOCK_D)
        chan_ok = chan < D
        value_base = (rows64 // n_queries) * n_values * (M * D) + head * D  # value[n, 0, head, 0]
        sample_base = (rows64 * M + head) * (L * P)  # weights[n, q, head, 0, 0]
        acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
        start = 0
        for lvl in tl.static_range(L):
            height, width = h0, w0
            if lvl == 1:
                height, width = h1, w1
            if lvl == 2:
                height, width = h2, w2
            if lvl == 3:
                height, width = h3, w3
            for pt in tl.static_range(P):
                idx = sample_base + lvl * P + pt
                attn = tl.load(weight_ptr + idx, mask=row_ok, other=0.0).to(tl.float32)
                x = tl.load(loc_ptr + 2 * idx, mask=row_ok, other=0.0).to(tl.float32) * width - 0.5
                y = tl.load(loc_ptr + 2 * idx + 1, mask=row_ok, other=0.0).to(tl.float32) * height - 0.5
                # clamping keeps the int conversion defined; every tap of a clamped point is outside
                x = tl.minimum(tl.maximum(x, -2.0), width + 1.0)
                y = tl.minimum(tl.maximum(y, -2.0), height + 1.0)
                xf, yf = tl.floor(x), tl.floor(y)
                fx, fy = x - xf, y - yf
                x0, y0 = xf.to(tl.int32), yf.to(tl.int32)
                for tap in tl.static_range(4):
                    dx, dy = tap % 2, tap // 2
                    xi, yi = x0 + dx, y0 + dy
                    ok = row_ok & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
                    wx = fx if dx == 1 else 1.0 - fx
                    wy = fy if dy == 1 else 1.0 - fy
                    token = (start + yi * width + xi).to(tl.int64)
                    ptrs = value_ptr + (value_base + token * (M * D))[:, None] + chan[None, :]
                    v = tl.load(ptrs, mask=ok[:, None] & chan_ok[None, :], other=0.0).to(tl.float32)
                    acc += (attn * wx * wy)[:, None] * v
            start += height * width
        out_ptrs = out_ptr + (rows64 * (M * D) + head * D)[:, None] + chan[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & chan_ok[None, :])

    configs = [triton.Config({"BLOCK_Q": bq}, num_warps=nw) for bq, nw in AUTOTUNE_CONFIGS]
    tuned = triton.autotune(configs, key=["n_rows", "n_values", "M", "D", "L", "P"])(msda_fwd)
    return {"plain": msda_fwd, "tuned": tuned, "next_pow2": triton.next_power_of_2, "cdiv": triton.cdiv}


def launch(value: torch.Tensor, shapes: list[int], locations: torch.Tensor, weights: torch.Tensor,
           config: tuple[int, int] | None = None) -> torch.Tensor:
    """Run the kernel. ``config`` = (BLOCK_Q, num_warps) fixes the block configuration (default: the
    ``ENCBENCH_MSDA_TRITON_CONFIG`` setting, else autotuning; the interpreter uses 128 x 4)."""
    n, s, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    if n_levels > MAX_LEVELS:
        raise ValueError(f"the triton MSDA backend supports up to {MAX_LEVELS} levels, got {n_levels}")
    value, locations, weights = value.contiguous(), locations.contiguous(), weights.contiguous()
    out = value.new_empty(n, lq, m * d)
    if out.numel() == 0:
        return out
    k = kernels()
    hw = list(shapes) + [1] * (2 * MAX_LEVELS - len(shapes))
    args = (value, locations, weights, out, n * lq, lq, s, *hw)
    meta = {"M": m, "D": d, "L": n_levels, "P": n_points, "BLOCK_D": k["next_pow2"](d)}
    config = config or fixed_config() or ((128, 4) if interpreting() else None)
    if config is not None:
        block_q, warps = config
        k["plain"][(k["cdiv"](n * lq, block_q), m)](*args, **meta, BLOCK_Q=block_q, num_warps=warps)
    else:
        k["tuned"][lambda cfg: (k["cdiv"](n * lq, cfg["BLOCK_Q"]), m)](*args, **meta)
    return out


@torch.library.custom_op("encbench::msda", mutates_args=())
def msda_op(value: torch.Tensor, spatial_shapes: list[int], sampling_locations: torch.Tensor,
            attention_weights: torch.Tensor) -> torch.Tensor:
    """value (N, S, M, D), flattened level shapes [H0, W0, H1, W1, ...], locations (N, Lq, M, L, P, 2),
    weights (N, Lq, M, L, P) -> (N, Lq, M*D)."""
    return launch(value, spatial_shapes, sampling_locations, attention_weights)


@msda_op.register_fake
def _(value, spatial_shapes, sampling_locations, attention_weights):
    n, _, m, d = value.shape
    return value.new_empty(n, sampling_locations.shape[1], m * d)


@register_backend("triton", available=available, priority=10, auto=auto_eligible)
def msda_core_triton(value: torch.Tensor, spatial_shapes: SpatialShapes, sampling_locations: torch.Tensor,
                     attention_weights: torch.Tensor) -> torch.Tensor:
    """The fused kernel through ``torch.ops.encbench.msda``."""
    flat = [int(x) for hw in spatial_shapes for x in hw]
    return msda_op(value, flat, sampling_locations, attention_weights)


TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def compile_for_target(arch: int, levels: int, value_dtype: torch.dtype, sample_dtype: torch.dtype,
                       config: tuple[int, int], heads: int = 8, channels: int = 32, points: int = 4) -> Any:
    """Compile the kernel ahead of time for CUDA ``sm_<arch>`` (no GPU needed; Triton ships ptxas).

    One call is one compilation of a real run: what a cold GPU run pays per (levels, dtypes,
    configuration). Needs a process without the interpreter (``TRITON_INTERPRET`` unset)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreting():
        raise RuntimeError("compile_for_target needs TRITON_INTERPRET unset (the interpreter compiles nothing)")
    fn = kernels()["plain"]
    value_t, sample_t = TRITON_DTYPES[value_dtype], TRITON_DTYPES[sample_dtype]
    signature = {"value_ptr": f"*{value_t}", "loc_ptr": f"*{sample_t}", "weight_ptr": f"*{sample_t}",
                 "out_ptr": f"*{value_t}", **dict.fromkeys(SIZE_ARGS, "i32")}
    constants = {"M": heads, "D": channels, "L": levels, "P": points, "BLOCK_Q": config[0],
                 "BLOCK_D": triton.next_power_of_2(channels)}
    signature.update(dict.fromkeys(constants, "constexpr"))
    src = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": config[1]})
