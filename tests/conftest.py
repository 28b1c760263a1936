"""Shared helpers: random small configs, fully randomized weights, error metrics."""

from __future__ import annotations

import random

import pytest
import torch

import timesformer

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


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


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
