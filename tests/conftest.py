"""Shared helpers: random small configs, fully randomized weights, error metrics, kernel-test tools."""

from __future__ import annotations

import contextlib
import os
import random
import zlib
from unittest import mock

import pytest
import torch

# Where no GPU is present the Triton kernels run in the interpreter (numpy on the CPU). It must be set
# before a kernel module is imported: triton.jit decides interpreted vs compiled when it decorates.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import timesformer
from bench._common import rel_err  # one definition for the benchmarks and the tests

if os.environ.get("TRITON_INTERPRET") == "1":
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        # triton.jit picks interpreted or compiled when a kernel module is imported: import them all now,
        # so a test that unsets TRITON_INTERPRET for a while cannot make a later first import compile.
        import timesformer.kernels.attention
        import timesformer.kernels.linear
        import timesformer.kernels.patch_embed
        import timesformer.kernels.temporal_attention

# The device the kernel tests run on: a real GPU when present, else the interpreter on the CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cuda":
    # float32 references are full precision: cuDNN convolutions (eager's patch embedding) default to TF32.
    # Tests of the TF32 switches set them themselves.
    torch.backends.cudnn.allow_tf32 = False

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")

# float32 parity bounds of the foundation issue.
REL_TOL = 1e-5
ABS_TOL = 1e-4


def small_config_kwargs(attention_type: str = "divided_space_time", seed: int = 0, **overrides) -> dict:
    """A random small config: awkward sizes (odd heads count, non-power-of-two dims) on purpose."""
    rng = random.Random(seed)
    heads = rng.choice([1, 2, 3])
    head_dim = rng.choice([4, 8, 12])
    kwargs = dict(
        image_size=rng.choice([16, 24]),
        patch_size=8,
        num_channels=rng.choice([1, 3]),
        num_frames=rng.choice([1, 2, 3]),
        hidden_size=heads * head_dim,
        num_hidden_layers=rng.choice([1, 2]),
        num_attention_heads=heads,
        intermediate_size=rng.choice([20, 37]),
        layer_norm_eps=rng.choice([1e-6, 1e-5]),
        qkv_bias=rng.choice([True, False]),
        attention_type=attention_type,
        num_labels=rng.choice([3, 5]),
    )
    kwargs.update(overrides)
    return kwargs


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter, including those initialized to 0 or 1 (LayerNorms, time embedding)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias") or "embeddings" in name or "cls_token" in name:
                p.copy_(0.3 * noise)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(noise / fan_in**0.5)
    return model


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rel: float = REL_TOL, abs_: float = ABS_TOL
) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(expected).all()
    r = rel_err(actual, expected)
    m = float((actual.double() - expected.double()).abs().max())
    assert r <= rel and m <= abs_, (
        f"relative error {r:.3g} (bound {rel}), max abs error {m:.3g} (bound {abs_})"
    )


@pytest.fixture
def hf():
    # A hard import: the reference is a test dependency (pip install -e .[test]), never a reason to skip.
    import transformers

    return transformers


def make_pair(hf, attention_type: str, seed: int = 0, classification: bool = True, **overrides):
    """(reference model, our eager model, config kwargs) with identical random weights, eval mode."""
    kwargs = small_config_kwargs(attention_type, seed, **overrides)
    cls = hf.TimesformerForVideoClassification if classification else hf.TimesformerModel
    ref = randomize_(cls(hf.TimesformerConfig(**kwargs)), seed).eval()
    ours = timesformer.from_hf(ref, backend="eager").eval()
    return ref, ours, kwargs


def random_clip(
    kwargs: dict, batch: int = 2, frames: int | None = None, hw: tuple[int, int] | None = None, seed: int = 1
):
    gen = torch.Generator().manual_seed(seed)
    frames = kwargs["num_frames"] if frames is None else frames
    h, w = (kwargs["image_size"],) * 2 if hw is None else hw
    return torch.randn(batch, frames, kwargs["num_channels"], h, w, generator=gen)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA GPU (marker gpu); the interpreter tests cover correctness here"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------------------- kernel-test tools

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The head sizes the issue names; the kernels take 1 to 128 (others appear in the shape lists).
KERNEL_HEAD_DIMS = (32, 64, 80, 96, 128)


def poisoned(shape, dtype, device=DEVICE) -> torch.Tensor:
    """An output buffer full of NaN: any element a kernel fails to write fails the comparison."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def eager_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """The reference's attention math, op by op in the inputs' dtype (scores and probabilities rounded)."""
    assert attn_mask is None and dropout_p == 0.0 and not is_causal
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return ((q @ k.transpose(-1, -2)) * scale).softmax(-1) @ v


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded to TF32 (10 mantissa bits, to nearest even): a tensor core's product input."""
    bits = x.float().view(torch.int32)
    bits = (bits + (0xFFF + ((bits >> 13) & 1))) & ~0x1FFF
    return bits.view(torch.float32)


def eager_sdpa_tf32(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """``eager_sdpa`` with TF32 products: each product's inputs rounded to TF32, fp32 accumulation."""
    assert attn_mask is None and dropout_p == 0.0 and not is_causal
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = ((round_tf32(q) @ round_tf32(k).transpose(-1, -2)) * scale).softmax(-1)
    return round_tf32(p) @ round_tf32(v)


@contextlib.contextmanager
def plain_torch_attention(tf32: bool = False):
    """Run ``timesformer.torch_ops`` (the layouts) with the reference's eager math instead of SDPA kernels
    (``tf32``: with TF32 products, as torch computes them on a GPU with TF32 allowed)."""
    math = eager_sdpa_tf32 if tf32 else eager_sdpa
    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", math):
        yield


def errors_in_threads(work, count: int) -> list[str]:
    """Run ``work(k)`` in ``count`` threads at once, switching between them as often as the interpreter can
    (so that races show), and return the exceptions they raised, as reprs."""
    import sys
    import threading

    errors = []

    def run(k):
        try:
            work(k)
        except Exception as e:  # reported to the caller, with every thread's
            errors.append(repr(e))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    return errors


def fail_batches_of_several(monkeypatch) -> None:
    """Make ``timesformer.classify.score_views`` (classify's and evaluate's forward) fail (as out of memory) on
    a batch of more than one video."""
    from timesformer import classify

    real = classify.score_views

    def only_one(model, views, device):
        if len(views) > 1:
            raise RuntimeError("out of memory")
        return real(model, views, device)

    monkeypatch.setattr(classify, "score_views", only_one)


@contextlib.contextmanager
def tf32_allowed():
    """TF32 allowed for float32 products (``torch.set_float32_matmul_precision("high")``) in the block."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def assert_tf32_accuracy(out: torch.Tensor, exact: torch.Tensor, plain: torch.Tensor) -> None:
    """The TF32 rule: a float32 kernel run with TF32 allowed has at most twice the error (by norm and by max
    abs error) of the plain torch computation with TF32 products (``round_tf32`` inputs, fp32
    accumulation), against float64 on the same inputs. And it did use TF32: an error above fp32's 1e-5
    shows that the products' inputs were rounded (a full-precision kernel would pass the rule silently)."""
    assert out.dtype == torch.float32 and plain.dtype == torch.float32
    assert torch.isfinite(out).all(), "non-finite output: an element was not written, or the math overflowed"
    err, plain_err = rel_err(out, exact), rel_err(plain, exact)
    assert 1e-5 < err <= 2 * plain_err, f"TF32: relative error {err:.3g}, plain torch TF32 {plain_err:.3g}"
    max_err = float((out.double() - exact).abs().max())
    plain_max = float((plain.double() - exact).abs().max())
    assert max_err <= 2 * plain_max, f"TF32: max abs error {max_err:.3g} > 2 x plain torch {plain_max:.3g}"


def assert_kernel_accuracy(out: torch.Tensor, exact: torch.Tensor, plain: torch.Tensor | None = None) -> None:
    """The accuracy rule: fp32 within 1e-5 of float64 (relative, by norm); fp16/bf16 at most twice the
    error of the plain torch computation at the same dtype, by norm and by max abs error.

    ``exact`` must be the float64 computation on the inputs *as the kernel received them* (already
    rounded to its dtype): measured from the unrounded data, both errors are dominated by the shared input
    rounding, and on a few dozen elements even the correctly rounded answer then fails the max-abs test
    about once in 300 draws (plain torch's own errors can cancel the input's).
    """
    assert out.shape == exact.shape, (out.shape, exact.shape)
    assert torch.isfinite(out).all(), "non-finite output: an element was not written, or the math overflowed"
    err = rel_err(out, exact)
    if out.dtype == torch.float32:
        assert err <= 1e-5, f"fp32 relative error {err:.3g} > 1e-5"
        return
    assert plain is not None and plain.dtype == out.dtype
    plain_err = rel_err(plain, exact)
    assert err <= 2 * plain_err, f"{out.dtype}: relative error {err:.3g} > 2 x plain torch {plain_err:.3g}"
    max_err = float((out.double() - exact).abs().max())
    plain_max = float((plain.double() - exact).abs().max())
    assert max_err <= 2 * plain_max, (
        f"{out.dtype}: max abs error {max_err:.3g} > 2 x plain torch {plain_max:.3g}"
    )


def stable_seed(*key) -> int:
    """A seed derived from a test's parameters, the same in every process (``hash`` of a str is not)."""
    return zlib.crc32(repr(tuple(map(str, key))).encode()) % 2**31


def random_qkv(batch: int, rows: int, hidden: int, seed: int, device=DEVICE) -> torch.Tensor:
    """A packed float64 ``(batch, rows, 3 * hidden)`` projection, fresh random numbers per test."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, rows, 3 * hidden, generator=gen, dtype=torch.float64).to(device)
