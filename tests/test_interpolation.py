"""Clips whose frame count or resolution differ from the config's.

The reference reshapes with the config's frame count and image size there and returns wrong numbers
(DESIGN.md section 1), so these cases are checked against an independent slow implementation written
from DESIGN.md section 1: tokens indexed by (frame, patch) rather than by row, explicit loops over the
sequences each attention sees, float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_close, randomize_, small_config_kwargs

import timesformer


def _ln(x, sd, name, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _self_attention(seq, sd, prefix, heads):
    """Multi-head attention of one sequence ``[L, D]`` followed by the output projection."""
    length, d = seq.shape
    qkv = seq @ sd[prefix + ".attention.qkv.weight"].T
    if prefix + ".attention.qkv.bias" in sd:
        qkv = qkv + sd[prefix + ".attention.qkv.bias"]
    dh = d // heads
    out = torch.empty(length, d, dtype=seq.dtype)
    for h in range(heads):
        q = qkv[:, h * dh : (h + 1) * dh]
        k = qkv[:, d + h * dh : d + (h + 1) * dh]
        v = qkv[:, 2 * d + h * dh : 2 * d + (h + 1) * dh]
        scores = (q @ k.T) / math.sqrt(dh)
        weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
        out[:, h * dh : (h + 1) * dh] = (weights / weights.sum(-1, keepdim=True)) @ v
    return out @ sd[prefix + ".output.dense.weight"].T + sd[prefix + ".output.dense.bias"]


def _nearest(dst: int, src: int) -> list[int]:
    return [min(math.floor(i * src / dst), src - 1) for i in range(dst)]


def slow_timesformer(sd: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """``last_hidden_state`` for ``x`` ``[B, T, C, H, W]`` from a TimesformerModel state dict (float64)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    b_, t_, _, h_, w_ = x.shape
    p, d, heads, eps = (
        cfg["patch_size"],
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        cfg["layer_norm_eps"],
    )
    gh, gw = h_ // p, w_ // p
    n_ = gh * gw
    cg = cfg["image_size"] // p

    conv_w = sd["embeddings.patch_embeddings.projection.weight"].reshape(d, -1)
    tokens = torch.empty(b_, t_, n_, d, dtype=torch.float64)  # [clip, frame, patch]
    for i in range(gh):
        for j in range(gw):
            pix = x[:, :, :, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(b_, t_, -1)
            tokens[:, :, i * gw + j] = pix @ conv_w.T + sd["embeddings.patch_embeddings.projection.bias"]
    pos = sd["embeddings.position_embeddings"][0]
    if n_ == cg * cg:  # same patch count: added as is (reference and original repository)
        tokens += pos[1:]
    else:
        rows, cols = _nearest(gh, cg), _nearest(gw, cg)
        tokens += torch.stack([pos[1 + r * cg + c] for r in rows for c in cols])
    cls = (sd["embeddings.cls_token"][0, 0] + pos[0]).expand(b_, d).clone()
    space_only = cfg["attention_type"] == "space_only"
    if not space_only:
        time = sd["embeddings.time_embeddings"][0]
        tokens += time[_nearest(t_, time.shape[0])][None, :, None]
    else:
        cls = cls[:, None].expand(b_, t_, d).clone()  # each frame is its own sequence

    act = torch.nn.functional.gelu
    for layer in range(cfg["num_hidden_layers"]):
        pre = f"encoder.layer.{layer}"
        if cfg["attention_type"] == "divided_space_time":
            new = tokens.clone()
            for b in range(b_):
                for n in range(n_):
                    seq = _ln(tokens[b, :, n], sd, pre + ".temporal_layernorm", eps)
                    a = _self_attention(seq, sd, pre + ".temporal_attention", heads)
                    new[b, :, n] += (
                        a @ sd[pre + ".temporal_dense.weight"].T + sd[pre + ".temporal_dense.bias"]
                    )
            tokens = new
            new, cls_update = tokens.clone(), torch.zeros(b_, t_, d, dtype=torch.float64)
            for b in range(b_):
                for t in range(t_):
                    seq = _ln(torch.cat([cls[b][None], tokens[b, t]]), sd, pre + ".layernorm_before", eps)
                    a = _self_attention(seq, sd, pre + ".attention", heads)
                    cls_update[b, t] = a[0]
                    new[b, t] += a[1:]
            tokens, cls = new, cls + cls_update.mean(1)
        elif cfg["attention_type"] == "joint_space_time":
            for b in range(b_):
                seq = torch.cat([cls[b][None], tokens[b].reshape(t_ * n_, d)])
                a = _self_attention(
                    _ln(seq, sd, pre + ".layernorm_before", eps), sd, pre + ".attention", heads
                )
                cls[b] += a[0]
                tokens[b] += a[1:].reshape(t_, n_, d)
        else:
            for b in range(b_):
                for t in range(t_):
                    seq = torch.cat([cls[b, t][None], tokens[b, t]])
                    a = _self_attention(
                        _ln(seq, sd, pre + ".layernorm_before", eps), sd, pre + ".attention", heads
                    )
                    cls[b, t] += a[0]
                    tokens[b, t] += a[1:]

        def mlp(v, pre=pre):
            h = act(
                _ln(v, sd, pre + ".layernorm_after", eps) @ sd[pre + ".intermediate.dense.weight"].T
                + sd[pre + ".intermediate.dense.bias"]
            )
            return v + h @ sd[pre + ".output.dense.weight"].T + sd[pre + ".output.dense.bias"]

        tokens, cls = mlp(tokens), mlp(cls)

    if space_only:
        out = torch.cat([cls.reshape(b_ * t_, 1, d), tokens.reshape(b_ * t_, n_, d)], 1)
    else:  # rows 1 + n*T + t
        out = torch.cat([cls[:, None], tokens.permute(0, 2, 1, 3).reshape(b_, n_ * t_, d)], 1)
    return _ln(out, sd, "layernorm", eps)


CASES = [
    # (attention_type, frames, height, width) with a 2-frame 16x16 config (grid 2x2)
    ("divided_space_time", 5, 16, 16),  # more frames
    ("divided_space_time", 1, 16, 16),  # one frame
    ("divided_space_time", 2, 24, 24),  # larger grid
    ("divided_space_time", 3, 8, 24),  # non-square, other count
    ("divided_space_time", 2, 8, 32),  # non-square, same patch count as the config: added as is
    ("joint_space_time", 3, 24, 16),
    ("space_only", 3, 24, 8),
]


@pytest.mark.parametrize("attention_type,frames,height,width", CASES)
def test_other_frames_and_resolution(attention_type, frames, height, width):
    kwargs = small_config_kwargs(attention_type, seed=21, image_size=16, num_frames=2, hidden_act="gelu")
    config = timesformer.TimesformerConfig(**kwargs)
    model = randomize_(timesformer.TimesformerModel(config, backend="eager"), seed=3).eval()
    x = torch.randn(2, frames, kwargs["num_channels"], height, width)
    expected = slow_timesformer(model.state_dict(), kwargs, x)
    with torch.no_grad():
        eager = model(x).last_hidden_state
        sdpa = model.set_backend("sdpa")(x).last_hidden_state
    assert_close(eager, expected.float())
    assert_close(sdpa, expected.float())


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_slow_reference_agrees_with_transformers_on_config_shapes(hf, attention_type):
    """The slow implementation itself is checked where the reference is right."""
    kwargs = small_config_kwargs(attention_type, seed=22, image_size=16, num_frames=3, hidden_act="gelu")
    ref = randomize_(hf.TimesformerModel(hf.TimesformerConfig(**kwargs)), seed=9).eval()
    x = torch.randn(2, 3, kwargs["num_channels"], 16, 16)
    with torch.no_grad():
        expected = ref(x).last_hidden_state
    assert_close(slow_timesformer(ref.state_dict(), kwargs, x).float(), expected)


@pytest.mark.parametrize("attention_type,frames,height,width", CASES)
def test_classifier_on_other_shapes(attention_type, frames, height, width):
    """The classifier's CLS-only last layer with the input's frames and grid: logits from the slow reference."""
    kwargs = small_config_kwargs(attention_type, seed=23, image_size=16, num_frames=2, hidden_act="gelu")
    model = randomize_(
        timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), 4
    )
    model.eval()
    x = torch.randn(2, frames, kwargs["num_channels"], height, width)
    sd = {k[len("timesformer.") :]: v for k, v in model.state_dict().items() if k.startswith("timesformer.")}
    cls = slow_timesformer(sd, kwargs, x)[:, 0]
    expected = cls @ model.classifier.weight.double().T + model.classifier.bias.double()
    with torch.no_grad():
        assert model.backend == "sdpa"
        assert_close(model(x).logits, expected.float())
