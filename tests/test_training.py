"""Training mode: dropout and drop-path act as in the reference, and gradients reach every parameter."""

from __future__ import annotations

import pytest
import torch
from conftest import ATTENTION_TYPES, random_clip, randomize_, small_config_kwargs

import timesformer

NOISY = dict(
    hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3, drop_path_rate=0.4, num_hidden_layers=3
)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_training_draws_the_reference_random_numbers(hf, attention_type, backend):
    """Same draws as the reference: with one seed, training outputs and gradients are identical (sdpa's
    divided layers drew the spatial output's dropout for the patches and CLS apart: logits 0.3 off)."""
    kwargs = small_config_kwargs(attention_type, seed=50, **NOISY)
    ref_config = hf.TimesformerConfig(**{**kwargs, "drop_path_rate": 0})
    # transformers 5 types drop_path_rate as int in its strict config; the layers accept a float.
    object.__setattr__(ref_config, "drop_path_rate", kwargs["drop_path_rate"])
    ref = randomize_(hf.TimesformerForVideoClassification(ref_config), 5).train()
    ours = timesformer.from_hf(ref, backend=backend)
    assert ours.training
    x = random_clip(kwargs, batch=3)
    rows = 3 * kwargs["num_frames"] if attention_type == "space_only" else 3
    labels = torch.randint(0, kwargs["num_labels"], (rows,))
    torch.manual_seed(123)
    expected = ref(x, labels=labels)
    expected.loss.backward()
    torch.manual_seed(123)
    got = ours(x, labels=labels)
    got.loss.backward()
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-6, atol=1e-6)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if p.grad is None:
            assert ref_params[name].grad is None, name
            continue
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_sdpa_training_is_stochastic_and_differentiable(attention_type):
    kwargs = small_config_kwargs(attention_type, seed=51, **NOISY)
    model = randomize_(
        timesformer.TimesformerForVideoClassification(
            timesformer.TimesformerConfig(**kwargs), backend="sdpa"
        ),
        6,
    )
    x = random_clip(kwargs, batch=4)
    model.train()
    a, b = model(x).logits, model(x).logits
    assert not torch.allclose(a, b), "dropout / drop-path did nothing in training mode"
    a.square().sum().backward()
    for name, p in model.named_parameters():
        if attention_type != "divided_space_time" and "time_embeddings" in name:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        c, d = model(x).logits, model(x).logits
    assert torch.equal(c, d)


def test_sdpa_drop_path_only_keeps_expected_value():
    """Drop-path alone is unbiased: the mean over many training passes approaches the eval output."""
    kwargs = small_config_kwargs("divided_space_time", seed=52, drop_path_rate=0.3, num_hidden_layers=2)
    model = randomize_(
        timesformer.TimesformerModel(timesformer.TimesformerConfig(**kwargs), backend="sdpa"), 7
    )
    # Residual branches scaled down so that the layers are close to linear and the mean is meaningful.
    with torch.no_grad():
        for layer in model.encoder.layer:
            for lin in (layer.temporal_dense, layer.attention.output.dense, layer.output.dense):
                lin.weight.mul_(0.05)
                lin.bias.mul_(0.05)
    x = random_clip(kwargs, batch=1)
    with torch.no_grad():
        model.eval()
        first, last = model(x, output_hidden_states=True).hidden_states[:: kwargs["num_hidden_layers"]]
        model.train()
        torch.manual_seed(0)
        mean = torch.stack([model(x, output_hidden_states=True).hidden_states[-1] for _ in range(400)]).mean(
            0
        )
    # Compare what the layers add (without the 1/keep rescaling it would be off by the drop rate).
    expected, got = last - first, mean - first
    assert float((got - expected).norm() / expected.norm()) < 0.05


def test_sdpa_drop_path_granularity_matches_reference(monkeypatch):
    """Drop-path masks are drawn per (clip, patch) in the temporal pass, per (clip, frame) in the spatial
    pass (CLS included) and per clip in the MLP, as the reference's [(B*N), T, D] / [(B*T), 1+N, D] /
    [B, L, D] tensors imply."""
    kwargs = small_config_kwargs("divided_space_time", seed=53, drop_path_rate=0.5, num_hidden_layers=2)
    model = timesformer.TimesformerModel(timesformer.TimesformerConfig(**kwargs), backend="sdpa").train()
    shapes = []
    real_rand = torch.rand

    def recording_rand(*size, **kw):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        shapes.append(shape)
        return real_rand(*size, **kw)

    monkeypatch.setattr(torch, "rand", recording_rand)
    b, t = 2, kwargs["num_frames"]
    n = (kwargs["image_size"] // 8) ** 2
    model(random_clip(kwargs, batch=b))
    # The first layer's rate is 0 (linear decay rule); the second draws three masks.
    assert shapes == [(b, n, 1, 1), (b, t), (b, 1, 1)]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_eval_mode_drops_nothing_while_autograd_records(backend):
    """With gradients on, a backend runs its training path (not the inference one); in eval mode that path
    must not drop paths or units, which only one eager module-mode test could tell."""
    kwargs = small_config_kwargs("divided_space_time", seed=41, num_hidden_layers=2)
    kwargs.update(drop_path_rate=0.6, hidden_dropout_prob=0.4, attention_probs_dropout_prob=0.4)
    model = randomize_(
        timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), 41
    )
    model.set_backend(backend).eval()
    x = random_clip(kwargs, batch=2, seed=41)
    first, second = model(x).logits, model(x).logits
    assert first.requires_grad and torch.equal(first, second)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, first, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_a_trainable_head_on_a_frozen_backbone_gets_its_gradient(backend):
    """Linear probing: the encoder is frozen (its inference path runs, as in eval mode without autograd) but
    the head trains, so the head must record autograd; the fused head's cached weights dropped its graph."""
    kwargs = small_config_kwargs("divided_space_time", seed=43, num_hidden_layers=1)
    model = randomize_(
        timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), 43
    ).eval()
    model.timesformer.requires_grad_(False)
    x, labels = random_clip(kwargs, batch=2, seed=43), torch.tensor([1, 0])
    grads = {}
    for name in ("eager", backend):
        model.set_backend(name).zero_grad()
        model(x, labels=labels).loss.backward()
        grads[name] = [p.grad.clone() for p in model.classifier.parameters()]
    torch.testing.assert_close(grads[backend], grads["eager"], rtol=1e-4, atol=1e-5)


def test_triton_never_drops_a_forward_mode_tangent():
    """A dual input (forward-mode AD), even under no_grad, takes the path sdpa takes: the kernels have no
    forward-AD rule, and returned the logits with the tangent silently gone."""
    import torch.autograd.forward_ad as fwAD

    kwargs = small_config_kwargs("divided_space_time", seed=44, num_hidden_layers=1)
    model = randomize_(
        timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), 44
    ).eval()
    x = random_clip(kwargs, batch=1, seed=44)
    tangent = torch.randn_like(x)

    def outcome(backend):
        model.set_backend(backend)
        try:
            with torch.no_grad(), fwAD.dual_level():
                return fwAD.unpack_dual(model(fwAD.make_dual(x, tangent)).logits).tangent
        except Exception as e:  # torch's fused attention may have no forward-AD rule: sdpa says so
            return type(e)

    expected, got = outcome("sdpa"), outcome("triton")
    assert got is not None
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    else:
        assert got is expected
