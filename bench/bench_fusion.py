"""Fusion kernel benchmark: each fused op against the unfused torch sequence and the bare matrix product.

TimeSformer-base shapes (8 x 224^2: N = 196 patches, T = 8, D = 768, MLP 3072), bf16, batch 1, 8 and 32.
For each of a divided layer's products (DESIGN.md section 3) and the patch embedding:

- ``fused``: this package's kernel (``kernels.linear``, ``kernels.patch_embed``), reading rows in place;
- ``unfused``: the torch sequence the ``sdpa`` backend runs (``F.layer_norm``, ``F.linear``, ``F.gelu``,
  ``add_``; for the patch embedding the reference's conv + reshape + permute + cat + embedding adds);
- ``bare``: the matrix product alone through torch (cuBLAS), on contiguous operands of the same shape.

The issue's targets at batch 32 on an H100/H200: each fused product within 10% of ``bare`` and >= 1.2x
``unfused``; the patch embedding >= 2x the reference path. Outputs are checked against float32 math before
anything is timed; times are medians of CUDA-event timings (``triton.testing.do_bench``) rotating among
input sets larger than twice the L2 cache.

    python -m bench.bench_fusion [--batches 1 8 32] [--json bench/results/<device>/fusion_bf16.json]

``--smoke`` runs tiny shapes on the CPU under TRITON_INTERPRET=1 with wall-clock timing: it checks that the
script works and says nothing about speed.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

from bench._common import (
    Timer,
    kernel_bench_record,
    kernel_bench_setup,
    measured_row,
    no_tf32,
    out_of_time,
    rel_err,
    write_json,
    wrong_answer,
)

BASE = dict(patches=196, frames=8, hidden=768, mlp=3072, patch=16, channels=3)
SMOKE = dict(patches=4, frames=3, hidden=32, mlp=64, patch=4, channels=3)


def cases(shape, batch, dtype, device, gen):
    """name -> dict(make, fused, unfused, exact, bare_make, bare, flops): ``make(i)`` builds one input set
    (a tensor, or a tuple for the in-place residual ops), which ``fused``, ``unfused`` and ``exact`` (float32
    math) map to the output; ``bare`` times the matrix product alone on ``bare_make(i)``'s operands."""
    from timesformer import torch_ops
    from timesformer.kernels import linear as lin
    from timesformer.kernels import patch_embed as pe

    n, t, d, f = shape["patches"], shape["frames"], shape["hidden"], shape["mlp"]
    p, c = shape["patch"], shape["channels"]
    rows = 1 + n * t

    def randn(*size, scale=1.0):
        return torch.randn(*size, generator=gen, device=device, dtype=torch.float32).mul_(scale).to(dtype)

    def ln_params(k, m):
        return dict(
            g=(1 + 0.1 * torch.randn(k, generator=gen, device=device)).to(dtype),
            beta=randn(k, scale=0.1),
            w=randn(m, k, scale=k**-0.5),
            b=randn(m, scale=0.1),
        )

    out = {}

    def ln_case(name, k, m, x_rows, act):
        prm = ln_params(k, m)
        folded, colsum, shift = lin.prepare_layer_norm_linear(prm["g"], prm["beta"], prm["w"], prm["b"])

        def rows_of(x):
            return x[:, 1:] if x_rows == "patches" else x

        def unfused(x, prm=prm):
            h = F.linear(F.layer_norm(rows_of(x), (k,), prm["g"], prm["beta"], 1e-6), prm["w"], prm["b"])
            return F.gelu(h) if act == "gelu" else h

        m_rows = batch * (n * t if x_rows == "patches" else rows)
        out[name] = dict(
            make=lambda i: randn(batch, rows, k),
            fused=lambda x: lin.layer_norm_linear(rows_of(x), folded, colsum, shift, 1e-6, act),
            unfused=unfused,
            bare_make=lambda i: (randn(m_rows, k), prm["w"]),
            bare=lambda ab: torch.mm(ab[0], ab[1].t()),
            exact=lambda x: unfused(x.float(), {k_: v.float() for k_, v in prm.items()}),
            flops=2.0 * m_rows * k * m,
        )

    ln_case("LN_t -> qkv_t", d, 3 * d, "patches", "linear")
    ln_case("LN_1 -> qkv_s", d, 3 * d, "all", "linear")
    ln_case("LN_2 -> fc1 + GELU", d, f, "all", "gelu")

    def residual_case(name, k, x_rows):
        w, b = randn(d, k, scale=k**-0.5), randn(d, scale=0.1)
        b32 = b.float()
        m_rows = batch * (n * t if x_rows == "patches" else rows)
        a_rows = n * t if x_rows == "patches" else rows

        def res_of(stream):
            return stream[:, 1:] if x_rows == "patches" else stream

        out[name] = dict(
            make=lambda i: (randn(batch, a_rows, k), randn(batch, rows, d)),
            fused=lambda io: lin.linear_residual_(io[0], w, b32, res_of(io[1])),
            unfused=lambda io: res_of(io[1]).add_(F.linear(io[0], w, b)),
            bare_make=lambda i: (randn(m_rows, k), w),
            bare=lambda ab: torch.mm(ab[0], ab[1].t()),
            exact=lambda io: res_of(io[1]).float() + F.linear(io[0].float(), w.float(), b32),
            flops=2.0 * m_rows * k * d,
            inplace=True,
        )

    residual_case("out_t (folded) + residual", d, "patches")
    residual_case("out_s + residual", d, "patches")
    residual_case("fc2 + residual", f, "all")

    # Patch embedding: float pixels [B, T, C, H, W] -> residual stream in (n t) order.
    side = round(n**0.5) * p
    w, b = randn(d, c, p, p, scale=(c * p * p) ** -0.5), randn(d, scale=0.1)
    pos, time_, cls = randn(1 + n, d, scale=0.1), randn(t, d, scale=0.1), randn(d, scale=0.1)
    m_rows = batch * t * n

    def embed_ref(x, w=w, b=b, pos=pos, time_=time_, cls=cls):
        return torch_ops.patch_embed(x, w, b, pos, time_, cls)

    out["patch embedding"] = dict(
        make=lambda i: randn(batch, t, c, side, side),
        fused=lambda x: pe.patch_embed(x, w, b, pos, time_, cls),
        unfused=embed_ref,
        bare_make=lambda i: randn(batch * t, c, side, side),
        bare=lambda x: F.conv2d(x, w, stride=p),
        exact=lambda x: embed_ref(x.float(), w.float(), b.float(), pos.float(), time_.float(), cls.float()),
        flops=2.0 * m_rows * c * p * p * d,
    )
    return out


def clone(x):
    return tuple(t.clone() for t in x) if isinstance(x, tuple) else x.clone()


def _measure(case: dict, timer) -> dict:
    """One op at one batch size: checked against float32 math (in-place ops on copies), then timed (not when
    wrong)."""
    first = case["make"](0)
    nbytes = sum(t.numel() * t.element_size() for t in (first if isinstance(first, tuple) else (first,)))
    inputs = [first, *timer.sets(case["make"], nbytes)[1:]]
    with no_tf32():
        exact = case["exact"](first)
    err = rel_err(case["fused"](clone(first)), exact)
    ref_err = rel_err(case["unfused"](clone(first)), exact)
    out = {
        "status": wrong_answer(err, ref_err, "unfused torch") or "ok",
        "relative_error_vs_fp32": err,
        "unfused_relative_error_vs_fp32": ref_err,
    }
    if out["status"] != "ok":
        return out
    ms = {
        "fused": timer.median_ms(case["fused"], inputs),
        "unfused torch": timer.median_ms(case["unfused"], inputs),
        "bare product": timer.median_ms(case["bare"], timer.sets(case["bare_make"], nbytes)),
    }
    return dict(
        out,
        ms=ms,
        speedup_vs_unfused=ms["unfused torch"] / ms["fused"],
        fraction_of_bare_product_speed=ms["bare product"] / ms["fused"],
        tflops={k: case["flops"] / v / 1e9 for k, v in ms.items()},
    )


def _describe(row: dict) -> str:
    ms = row["ms"]
    return (
        f"fused {ms['fused']:8.3f} ms | unfused {ms['unfused torch']:8.3f} ms ({row['speedup_vs_unfused']:.2f}x) | "
        f"bare {ms['bare product']:8.3f} ms ({100 * row['fraction_of_bare_product_speed']:.0f}% of its speed) | "
        f"{row['tflops']['fused']:.1f} TFLOP/s"
    )


def run(batches, shape, dtype, device, timer, out_rows: list, deadline=None, on_row=None) -> None:
    """Time every op at every batch size, appending result rows (and passing each to ``on_row``). A wrong
    answer, or an error, gives a row with a ``failed`` status, not timed; past ``deadline``
    (``time.monotonic()``) no further row starts."""
    for batch in batches:
        gen = torch.Generator(device=device).manual_seed(batch)
        for name, case in cases(shape, batch, dtype, device, gen).items():
            label = f"{name:26s} B={batch:<3d}"
            if out_of_time(deadline):
                print(f"{label} skipped: out of time (the run's time budget)")
                continue
            measure = functools.partial(_measure, case, timer)
            measured_row(label, {"op": name, "batch": batch}, measure, _describe, out_rows, on_row)


def main(argv: list[str] | None = None) -> int:
    setup = kernel_bench_setup(__doc__.splitlines()[0], argv, BASE, SMOKE)
    if setup is None:
        return 1
    args, device, shape, batches = setup
    rows: list = []
    run(batches, shape, getattr(torch, args.dtype), device, Timer(device, args.smoke), rows)
    write_json(args.json, {**kernel_bench_record("fusion", args, device, shape), "results": rows})
    return int(any(r["status"] != "ok" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
