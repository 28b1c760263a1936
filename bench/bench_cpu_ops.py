"""CPU microbenchmarks (pytest-benchmark): the ops the ``sdpa`` backend runs against the reference's path.

Each group times this package's op and the path ``transformers`` (or its image processor) takes for the
same result, on the same input, after checking that the two agree:

- temporal / spatial / joint attention: ``timesformer.torch_ops`` (views of the model's row order, SDPA) against
  the reference's permute / repeat / cat / contiguous then SDPA (``bench.bench_attention``'s reference paths);
- frame normalization: ``torch_ops.normalize_frames`` (uint8 ``[B, T, H, W, C]`` to normalized float
  ``[B, T, C, H, W]``) against the image processor's numpy rescale, normalize and transpose.

Shapes are TimeSformer-base's (8 x 224^2, D = 768, 12 heads) in float32; ``TIMESFORMER_BENCH_SHAPE=tiny``
shrinks them for smoke runs. Run through the suite (``python -m bench``), or alone:

    pytest bench/bench_cpu_ops.py --benchmark-json out.json
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bench.bench_attention import reference_joint, reference_spatial, reference_temporal
from timesformer import torch_ops

SHAPES = {
    "base": dict(patches=196, frames=8, heads=12, head_dim=64, side=224),
    "tiny": dict(patches=9, frames=3, heads=2, head_dim=8, side=24),
}
SHAPE = SHAPES[os.environ.get("TIMESFORMER_BENCH_SHAPE", "base")]
N, T, H = SHAPE["patches"], SHAPE["frames"], SHAPE["heads"]
D = H * SHAPE["head_dim"]
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def _qkv(rows: int, seed: int) -> torch.Tensor:
    return torch.randn(1, rows, 3 * D, generator=torch.Generator().manual_seed(seed))


def _agree(a, b) -> None:
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


CASES = {
    "temporal attention": (
        lambda: _qkv(N * T, 0),
        lambda x: torch_ops.temporal_attention(x, T, H),
        lambda x: reference_temporal(x, T, H),
    ),
    "spatial attention": (
        lambda: _qkv(1 + N * T, 1),
        lambda x: (lambda p, c: (p, c.mean(1)))(*torch_ops.spatial_attention(x, T, H)),
        lambda x: reference_spatial(x, T, H),
    ),
    "joint attention": (
        lambda: _qkv(1 + N * T, 2),
        lambda x: torch_ops.attention(x, H),
        lambda x: reference_joint(x, H),
    ),
}


@pytest.mark.parametrize("impl", ["ours", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_op(benchmark, case, impl):
    make, ours, reference = CASES[case]
    x = make()
    with torch.inference_mode():
        _agree(ours(x), reference(x))
        benchmark.group = case
        benchmark.extra_info["role"] = impl
        benchmark(ours if impl == "ours" else reference, x)


def _processor_normalize(frames: np.ndarray) -> np.ndarray:
    """The image processor's steps on decoded frames: rescale, normalize, channels first (numpy, float32)."""
    x = frames.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))


@pytest.mark.parametrize("impl", ["ours", "reference"])
def test_normalize_frames(benchmark, impl):
    side = SHAPE["side"]
    gen = torch.Generator().manual_seed(3)
    frames = torch.randint(0, 256, (1, T, side, side, 3), dtype=torch.uint8, generator=gen)
    _agree(
        torch_ops.normalize_frames(frames, MEAN, STD, 1 / 255),
        torch.from_numpy(_processor_normalize(frames.numpy())),
    )
    benchmark.group = "frame normalization"
    benchmark.extra_info["role"] = impl
    if impl == "ours":
        benchmark(torch_ops.normalize_frames, frames, MEAN, STD, 1 / 255)
    else:
        benchmark(_processor_normalize, frames.numpy())
