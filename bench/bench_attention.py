"""Attention kernel benchmark: the Triton kernels against the reference's path and against SDPA alone.

TimeSformer-base shapes (8 x 224^2: N = 196 patches, T = 8, 12 heads of 64), bf16, batch 1, 8 and 32. Every
variant starts from the packed ``qkv`` projection in the model's own row order and ends with contexts in that
order, which is what a layer has and needs:

- ``triton``: this package's kernel (reads q, k, v in place, writes contexts in place);
- ``reference path``: what ``transformers`` does around attention: permute rows into sequences (temporal:
  ``[(B N), T]``; spatial: repeat CLS ``T`` times, regroup patches by frame and cat; joint: split heads),
  contiguous q/k/v, SDPA, and the inverse permutes (spatial: CLS averaged over frames);
- ``sdpa``: ``scaled_dot_product_attention`` alone on inputs already arranged ``[batch, heads, seq, dim]``.

Outputs are checked against a float32 computation before anything is timed. Times are medians of CUDA-event
timings (``triton.testing.do_bench``), rotating among input sets larger than twice the L2 cache. The
temporal kernel is memory-bound: it is reported in GB/s (q, k, v read once, contexts written once) next to
the device-to-device copy rate measured in the same run; spatial and joint in TFLOP/s (4 * seq^2 * dim per
sequence and head).

    python -m bench.bench_attention [--batches 1 8 32] [--json bench/results/<device>/attention_bf16.json]

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

BASE = dict(patches=196, frames=8, heads=12, head_dim=64)
SMOKE = dict(patches=5, frames=3, heads=2, head_dim=16)


# ------------------------------------------------------------------------------ the reference paths


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:  # [S, L, D] -> [S, H, L, dh], contiguous
    return x.unflatten(-1, (heads, -1)).transpose(1, 2).contiguous()


def reference_temporal(qkv, frames, heads):
    batch, rows, width = qkv.shape
    d = width // 3
    seqs = qkv.reshape(batch * rows // frames, frames, width)  # [(B N), T, 3D]
    q, k, v = (_heads(t, heads) for t in seqs.split(d, -1))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, rows, d)


def reference_spatial(qkv, frames, heads):
    batch, rows, width = qkv.shape
    d, n = width // 3, (rows - 1) // frames
    cls = qkv[:, :1].repeat(1, frames, 1).reshape(batch * frames, 1, width)
    patches = qkv[:, 1:].reshape(batch, n, frames, width).transpose(1, 2).reshape(batch * frames, n, width)
    seqs = torch.cat((cls, patches), 1)  # [(B T), 1 + N, 3D]
    q, k, v = (_heads(t, heads) for t in seqs.split(d, -1))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, frames, 1 + n, d)
    patch_ctx = out[:, :, 1:].transpose(1, 2).reshape(batch, n * frames, d)
    return patch_ctx, out[:, :, 0].mean(1)


def reference_joint(qkv, heads):
    batch, rows, width = qkv.shape
    d = width // 3
    q, k, v = (_heads(t, heads) for t in qkv.split(d, -1))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, rows, d)


def _thirds(qkv):
    """q, k, v as strided views of the packed projection, as the triton backend passes them."""
    return qkv.split(qkv.shape[-1] // 3, dim=-1)


def _mean_cls(outputs):
    patch_ctx, cls_ctx = outputs
    return patch_ctx, cls_ctx.mean(1)


# ------------------------------------------------------------------------------------------ main


def cases(shape: dict, batch: int, dtype, device, gen) -> dict:
    """name -> dict(rows, make, ours, ref, seq): ``make(i)`` builds one packed ``(batch, rows, 3 D)`` input,
    ``ours``/``ref`` map it to the contexts, ``seq`` is ``(sequences, length)`` for the FLOP count."""
    from timesformer.kernels.attention import attention, spatial_attention
    from timesformer.kernels.temporal_attention import temporal_attention

    n, t, h = shape["patches"], shape["frames"], shape["heads"]
    d = h * shape["head_dim"]

    def make(rows):
        return lambda i: torch.randn(batch, rows, 3 * d, generator=gen, device=device, dtype=dtype)

    return {
        "temporal": dict(
            rows=n * t,
            make=make(n * t),
            ours=lambda x: temporal_attention(*_thirds(x), t, h),
            ref=lambda x: reference_temporal(x, t, h),
            seq=(batch * n, t),
        ),
        "spatial": dict(
            rows=1 + n * t,
            make=make(1 + n * t),
            # Both paths end with the CLS context averaged over frames, as the layer needs it.
            ours=lambda x: _mean_cls(spatial_attention(*_thirds(x), t, h)),
            ref=lambda x: reference_spatial(x, t, h),
            seq=(batch * t, 1 + n),
        ),
        "joint": dict(
            rows=1 + n * t,
            make=make(1 + n * t),
            ours=lambda x: attention(*_thirds(x), h),
            ref=lambda x: reference_joint(x, h),
            seq=(batch, 1 + n * t),
        ),
    }


def errors(name: str, got, ref, exact) -> tuple[float, float]:
    """Relative errors of ours and of the reference path against ``exact`` (spatial: the worse of its two
    outputs)."""
    if name == "spatial":
        return max(rel_err(got[0], exact[0]), rel_err(got[1], exact[1])), max(
            rel_err(ref[0], exact[0]), rel_err(ref[1], exact[1])
        )
    return rel_err(got, exact), rel_err(ref, exact)


def _measure(name: str, case: dict, batch: int, shape: dict, dtype, device, gen, timer, copy: float) -> dict:
    """One kernel at one batch size: checked against float32 math, then timed (not when wrong)."""
    h, dh = shape["heads"], shape["head_dim"]
    elt = torch.tensor([], dtype=dtype).element_size()
    nbytes = batch * case["rows"] * 3 * h * dh * elt
    inputs = timer.sets(case["make"], nbytes)
    x = inputs[0]
    with no_tf32():
        exact = case["ref"](x.float())
    err, ref_err = errors(name, case["ours"](x), case["ref"](x), exact)
    out = {
        "status": wrong_answer(err, ref_err, "reference path") or "ok",
        "relative_error_vs_fp32": err,
        "reference_path_relative_error_vs_fp32": ref_err,
        "accuracy_rule_met": err <= 2 * ref_err,
    }
    if out["status"] != "ok":
        return out
    num_seq, seqlen = case["seq"]

    def arrange(i):
        return tuple(
            torch.randn(num_seq, h, seqlen, dh, generator=gen, device=device, dtype=dtype) for _ in range(3)
        )

    ms = {
        "triton": timer.median_ms(case["ours"], inputs),
        "reference path": timer.median_ms(case["ref"], inputs),
        "sdpa (pre-arranged)": timer.median_ms(
            lambda a: F.scaled_dot_product_attention(*a), timer.sets(arrange, nbytes)
        ),
    }
    flops = 4.0 * num_seq * h * seqlen * seqlen * dh
    moved = batch * case["rows"] * 4 * h * dh * elt  # q, k, v read, contexts written
    return dict(
        out,
        ms=ms,
        speedup_vs_reference_path=ms["reference path"] / ms["triton"],
        speedup_vs_sdpa=ms["sdpa (pre-arranged)"] / ms["triton"],
        tflops={k: flops / v / 1e9 for k, v in ms.items()},
        gbps=moved / ms["triton"] / 1e6,
        fraction_of_copy_rate=moved / ms["triton"] / 1e6 / copy,
    )


def _describe(row: dict) -> str:
    ms = row["ms"]
    speed = (
        f"{row['gbps']:.0f} GB/s = {100 * row['fraction_of_copy_rate']:.0f}% of copy"
        if row["kernel"] == "temporal"
        else f"{row['tflops']['triton']:.1f} TFLOP/s"
    )
    return (
        f"triton {ms['triton']:8.3f} ms | reference path {ms['reference path']:8.3f} ms "
        f"({row['speedup_vs_reference_path']:.2f}x) | sdpa {ms['sdpa (pre-arranged)']:8.3f} ms "
        f"({row['speedup_vs_sdpa']:.2f}x) | {speed}"
    )


def run(batches, shape, dtype, device, timer, out_rows: list, deadline=None, on_row=None) -> float:
    """Time every kernel at every batch size, appending result rows (and passing each to ``on_row``); returns
    the copy rate in GB/s. A wrong answer, or an error, gives a row with a ``failed`` status, not timed; past
    ``deadline`` (``time.monotonic()``) no further row starts."""
    copy = timer.copy_gbps()
    print(f"device-to-device copy: {copy:.0f} GB/s")
    for batch in batches:
        gen = torch.Generator(device=device).manual_seed(batch)
        for name, case in cases(shape, batch, dtype, device, gen).items():
            label = f"{name:8s} B={batch:<3d}"
            if out_of_time(deadline):
                print(f"{label} skipped: out of time (the run's time budget)")
                continue
            measure = functools.partial(_measure, name, case, batch, shape, dtype, device, gen, timer, copy)
            measured_row(label, {"kernel": name, "batch": batch}, measure, _describe, out_rows, on_row)
    return copy


def main(argv: list[str] | None = None) -> int:
    setup = kernel_bench_setup(__doc__.splitlines()[0], argv, BASE, SMOKE)
    if setup is None:
        return 1
    args, device, shape, batches = setup
    rows: list = []
    copy = run(batches, shape, getattr(torch, args.dtype), device, Timer(device, args.smoke), rows)
    write_json(
        args.json,
        {**kernel_bench_record("attention", args, device, shape), "copy_gbps": copy, "results": rows},
    )
    return int(any(r["status"] != "ok" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
