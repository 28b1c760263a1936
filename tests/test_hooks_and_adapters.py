"""Hooks and adapters: what PEFT, Grad-CAM and feature extractors attach to the module tree must count on
every backend, as it does in ``transformers``; where the fused backends cannot honour them (they read the
weights instead of calling the modules) the forward calls the modules (``module_path_reason``)."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch
from conftest import random_clip, randomize_, small_config_kwargs
from torch import nn

import timesformer
from timesformer.cuda_graphs import CudaGraphRunner
from timesformer.modeling import module_path_reason

transformers = pytest.importorskip("transformers")

BACKENDS = ["eager", "sdpa", "triton"]


class LoraLinear(nn.Module):
    """PEFT's LoRA layer in miniature: the base ``Linear`` plus a trainable low-rank update; like PEFT's,
    it passes ``weight`` and ``bias`` through to the base layer (which is what a weight-reading backend would
    see without the module path)."""

    def __init__(self, base: nn.Linear, rank: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.base_layer = base
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / base.in_features**0.5)
        self.lora_B = nn.Parameter(torch.randn(base.out_features, rank, generator=gen) / rank**0.5)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + (x @ self.lora_A.T) @ self.lora_B.T


# Where PEFT's usual target_modules put adapters: qkv, the temporal projection, the MLP.
ADAPTED = ("attention.attention.qkv", "temporal_dense", "intermediate.dense", "output.dense")


def _add_adapters(model: nn.Module) -> list[nn.Parameter]:
    """Wrap the ``ADAPTED`` linears of every layer (ours or transformers'; the same adapter weights)."""
    for i, layer in enumerate(model.timesformer.encoder.layer):
        for j, path in enumerate(ADAPTED):
            *parents, name = path.split(".")
            parent = layer
            for p in parents:
                parent = getattr(parent, p)
            setattr(parent, name, LoraLinear(getattr(parent, name), rank=3, seed=10 * i + j))
    return [p for n, p in model.named_parameters() if "lora_" in n]


def _pair(backend: str, seed: int):
    kwargs = small_config_kwargs("divided_space_time", seed, num_hidden_layers=2)
    ours = randomize_(
        timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), seed
    )
    ours.set_backend(backend)
    ref = transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(**kwargs))
    ref.load_state_dict(ours.state_dict())
    return ours.eval(), ref.eval(), kwargs


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_adapter_counts_as_in_transformers(backend):
    ours, ref, kwargs = _pair(backend, seed=3)
    x = random_clip(kwargs)
    with torch.no_grad():
        plain = ours(x).logits
    _add_adapters(ours)
    _add_adapters(ref)
    assert module_path_reason(ours) is not None
    with torch.no_grad():
        got, expected = ours(x).logits, ref(x).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the adapters change the result


@pytest.mark.parametrize("backend", BACKENDS)
def test_adapter_training_reaches_every_adapter_weight(backend):
    ours, _, kwargs = _pair(backend, seed=4)
    ours.requires_grad_(False)
    adapters = _add_adapters(ours)
    ours.train()
    labels = torch.arange(2) % kwargs["num_labels"]
    ours(random_clip(kwargs), labels=labels).loss.backward()
    assert len(adapters) == 2 * len(ADAPTED) * 2
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_hooks_fire_where_transformers_fire_them(backend):
    ours, ref, kwargs = _pair(backend, seed=5)
    x = random_clip(kwargs)
    names = {n for n, _ in ours.named_modules()}
    assert names == {n for n, _ in ref.named_modules()}  # the activation and drop-path modules included

    def fired(model):
        seen, handles = [], []
        for name, module in model.named_modules():
            if name in names:
                handles.append(module.register_forward_hook(lambda m, a, o, name=name: seen.append(name)))
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()
        return set(seen)

    expected = fired(ref)
    assert {
        "timesformer.encoder.layer.0",
        "timesformer.encoder.layer.1.temporal_attention",
        "timesformer.encoder.layer.1.intermediate.intermediate_act_fn",
        "timesformer.encoder.layer.1.drop_path",
    } <= expected
    assert fired(ours) == expected
    assert module_path_reason(ours) is None  # hooks gone: the fused path is back


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_a_layer_hook_sees_the_layer_output_and_the_logits_stay(backend):
    ours, ref, kwargs = _pair(backend, seed=6)
    x = random_clip(kwargs)
    got = {}
    for model, key in ((ours, "ours"), (ref, "ref")):
        model.timesformer.encoder.layer[0].register_forward_hook(
            lambda m, a, o, key=key: got.__setitem__(key, o[0].clone())
        )
    with torch.no_grad():
        logits, expected = ours(x).logits, ref(x).logits
    torch.testing.assert_close(got["ours"], got["ref"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_plain_models_keep_the_fused_path(tmp_path):
    kwargs = small_config_kwargs("divided_space_time", 7)
    model = timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs))
    assert module_path_reason(model) is None
    model.gradient_checkpointing_enable({"use_reentrant": True})  # enable_input_require_grads: no hook
    model.save_pretrained(tmp_path)
    for m in (model, timesformer.TimesformerForVideoClassification.from_pretrained(tmp_path)):
        assert module_path_reason(m) is None
        assert module_path_reason(m.timesformer) is None
    pickle.loads(pickle.dumps(model))  # nothing unpicklable (transformers' hook is a local function)


def test_the_reason_names_the_module_and_is_logged_once(caplog):
    ours, _, kwargs = _pair("sdpa", seed=8)
    ours.timesformer.encoder.layer[1].output.dense.register_forward_pre_hook(lambda m, a: None)
    assert module_path_reason(ours) == "timesformer.encoder.layer.1.output.dense has hooks"
    with caplog.at_level(logging.WARNING, logger="timesformer"), torch.no_grad():
        ours(random_clip(kwargs))
        ours(random_clip(kwargs))
    assert [r.getMessage().count("has hooks") for r in caplog.records] == [1]
    layer = ours.timesformer.encoder.layer[0]
    layer.forward = layer.forward  # a forward patched on the instance (modules are scanned in order)
    assert module_path_reason(ours.timesformer) == "encoder.layer.0 has a patched forward"


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_a_forward_patched_after_the_first_call_counts(backend):
    """The answer cached at the first call was kept: a forward patched on the first layer afterwards (attention
    rollout, a debugging wrapper) was skipped, and the logits were the unpatched model's."""
    ours, ref, kwargs = _pair(backend, seed=16)
    x = random_clip(kwargs)
    with torch.no_grad():
        plain = ours(x).logits
    for model in (ours, ref):
        layer = model.timesformer.encoder.layer[0]
        layer.forward = lambda *args, _forward=layer.forward, **kw: (_forward(*args, **kw)[0] * 0.5,)
    assert module_path_reason(ours) == "timesformer.encoder.layer.0 has a patched forward"
    with torch.no_grad():
        got = ours(x).logits
    torch.testing.assert_close(got, ref(x).logits, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3
    del ours.timesformer.encoder.layer[0].forward
    assert module_path_reason(ours) is None


def test_global_hooks_observe_what_runs():
    """Global module hooks belong to tools that observe whatever runs (FlopCounterMode's module tracker,
    profilers): they keep the fused path, and fire on the modules it calls."""
    ours, _, kwargs = _pair("sdpa", seed=9)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, a, o: seen.append(type(m).__name__)
    )
    try:
        assert module_path_reason(ours) is None
        with torch.no_grad():
            ours(random_clip(kwargs))
    finally:
        handle.remove()
    assert "TimesformerForVideoClassification" in seen and "TimesformerLayer" not in seen


def test_cuda_graph_runner_runs_a_hooked_model_itself():
    from test_cuda_graphs import FakeGraphs

    ours, _, kwargs = _pair("sdpa", seed=10)
    runner = CudaGraphRunner(ours)
    fake = runner._graph_factory = FakeGraphs(ours)
    x = random_clip(kwargs)
    seen = []
    handle = ours.timesformer.encoder.layer[0].register_forward_hook(lambda m, a, o: seen.append(1))
    with torch.no_grad():
        runner(x)
        runner(x)
    assert (len(seen), fake.captures) == (2, 0)
    handle.remove()
    with torch.no_grad():
        runner(x)
        runner(x)
    assert (len(seen), fake.captures, fake.replays) == (2, 1, 2)


def test_a_custom_head_keeps_the_fused_path_and_its_hooks_fire():
    ours, _, kwargs = _pair("sdpa", seed=11)
    x = random_clip(kwargs)
    linear = ours.classifier
    ours.classifier = nn.Sequential(nn.Dropout(0.0), linear)
    assert module_path_reason(ours) is None  # the head is called as a module on every path
    seen = []
    linear.register_forward_hook(lambda m, a, o: seen.append(1))
    assert module_path_reason(ours) is None
    with torch.no_grad():
        ours(x)
    assert seen == [1]
    ours.classifier = linear  # an exact Linear with a hook: the triton head would read its weights
    assert module_path_reason(ours) == "classifier has hooks"


def test_a_cached_answer_does_not_survive_into_another_process(monkeypatch):
    """The cache key holds a per-process token: a pickled model meets restarted counters elsewhere."""
    import timesformer.modeling as modeling

    ours, _, _ = _pair("sdpa", seed=12)
    assert module_path_reason(ours) is None and ours.__dict__["_plain_at"][0][0] == modeling._PROCESS
    # A hook the counters cannot see (as if registered in another process whose counters matched).
    ours.timesformer.encoder.layer[0]._forward_hooks[10**9] = lambda m, a, o: None
    assert module_path_reason(ours) is None  # stale in this process, by design of the cache
    monkeypatch.setattr(modeling, "_PROCESS", "another process")
    assert module_path_reason(ours) == "timesformer.encoder.layer.0 has hooks"


def test_compiling_a_model_with_an_adapter_in_one_graph():
    ours, _, kwargs = _pair("sdpa", seed=13)
    _add_adapters(ours)
    x = random_clip(kwargs)
    compiled = torch.compile(ours, backend="eager", fullgraph=True)  # the first call traces the warning path
    with torch.no_grad():
        torch.testing.assert_close(compiled(x).logits, ours(x).logits)


def test_cuda_graph_runner_honours_hooks_on_the_model_itself():
    from test_cuda_graphs import FakeGraphs

    ours, _, kwargs = _pair("sdpa", seed=14)
    runner = CudaGraphRunner(ours)
    fake = runner._graph_factory = FakeGraphs(ours)
    seen = []
    ours.register_forward_hook(lambda m, a, o: seen.append(1))
    with torch.no_grad():
        runner(random_clip(kwargs))
        runner(random_clip(kwargs))
    assert (len(seen), fake.captures) == (2, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only"])
def test_embedding_and_encoder_hooks_see_transformers_outputs(backend, attention_type):
    """Feature extractors and attribution tools (Captum's ``LayerIntegratedGradients`` on the embeddings)
    read these outputs: the embeddings' tensor and the encoder's ``BaseModelOutput``."""
    kwargs = small_config_kwargs(attention_type, 11, num_hidden_layers=2)
    ours = randomize_(
        timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), 11
    ).set_backend(backend)
    ref = transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(**kwargs))
    ref.load_state_dict(ours.state_dict())
    x = random_clip(kwargs)
    seen = {}
    for model, key in ((ours.eval(), "ours"), (ref.eval(), "ref")):
        base = model.timesformer
        base.embeddings.register_forward_hook(lambda m, a, o, key=key: seen.__setitem__((key, "emb"), o))
        base.encoder.register_forward_hook(lambda m, a, o, key=key: seen.__setitem__((key, "enc"), o))
        # A hook that replaces the embeddings' output counts, as in transformers.
        base.embeddings.register_forward_hook(lambda m, a, o: o * 0.5)
    with torch.no_grad():
        got, expected = ours(x).logits, ref(x).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert isinstance(seen["ours", "emb"], torch.Tensor)
    torch.testing.assert_close(seen["ours", "emb"], seen["ref", "emb"], rtol=1e-6, atol=1e-6)
    enc = seen["ours", "enc"]
    assert type(enc).__name__ == "BaseModelOutput" and enc.hidden_states is None
    torch.testing.assert_close(
        enc.last_hidden_state, seen["ref", "enc"].last_hidden_state, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_a_swapped_activation_module_counts(backend):
    """The activation is a module as in transformers: one put in its place is called, not the config's."""
    ours, ref, kwargs = _pair(backend, seed=12)
    x = random_clip(kwargs)
    with torch.no_grad():
        plain = ours(x).logits
    for model in (ours, ref):
        model.timesformer.encoder.layer[0].intermediate.intermediate_act_fn = nn.SiLU()
    assert module_path_reason(ours) == (
        "timesformer.encoder.layer.0.intermediate.intermediate_act_fn is a torch.nn.modules.activation.SiLU"
    )
    with torch.no_grad():
        got = ours(x).logits
    torch.testing.assert_close(got, ref(x).logits, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_a_changed_attention_scale_counts(backend):
    """transformers' attention multiplies scores by the module's ``scale``; the fused backends ignored one set
    on the module (an attention temperature) and scaled by head_dim ** -0.5."""
    ours, ref, kwargs = _pair(backend, seed=14)
    x = random_clip(kwargs)
    with torch.no_grad():
        plain = ours(x).logits  # the fused path ran, and its answer is cached
    for model in (ours, ref):
        model.timesformer.encoder.layer[1].temporal_attention.attention.scale = 0.9
    reason = module_path_reason(ours)
    assert reason is not None and reason.startswith(
        "timesformer.encoder.layer.1.temporal_attention.attention.scale is 0.9, not head_dim ** -0.5"
    )
    with torch.no_grad():
        got = ours(x).logits
    torch.testing.assert_close(got, ref(x).logits, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3
    scale = ours.timesformer.encoder.layer[1].attention.attention.scale
    ours.timesformer.encoder.layer[1].temporal_attention.attention.scale = scale
    assert module_path_reason(ours) is None


@pytest.mark.parametrize("flags", [{}, {"output_hidden_states": True}, {"output_attentions": True}])
@pytest.mark.parametrize("return_dict", [True, False])
def test_a_hook_on_the_encoder_model_sees_transformers_call(return_dict, flags):
    """The classifier called its encoder model with the flags positional and ``return_dict=True``: a hook
    with kwargs saw three positional arguments, and a ``BaseModelOutput`` where transformers gives a tuple."""
    ours, ref, kwargs = _pair("sdpa", seed=15)
    x = random_clip(kwargs)
    seen, outs = {}, {}
    for name, model in (("ours", ours), ("ref", ref)):

        def hook(module, args, kw, out, name=name):
            seen[name] = (len(args), sorted(kw), isinstance(out, tuple))

        model.timesformer.register_forward_hook(hook, with_kwargs=True)
        with torch.no_grad():
            outs[name] = model(x, return_dict=return_dict, **flags)
    assert seen["ours"] == seen["ref"] and seen["ours"][2] != return_dict
    if return_dict:
        outs = {name: tuple(out.values()) for name, out in outs.items()}
    torch.testing.assert_close(outs["ours"], outs["ref"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_projection_for_other_channels_sets_the_input_channels(backend):
    """A pretrained model adapted to 1-channel video by a new patch projection (depth, grayscale): the input
    check read the config's 3 channels and refused the clips transformers runs."""
    ours, ref, kwargs = _pair(backend, seed=17)
    gen = torch.Generator().manual_seed(17)
    conv = nn.Conv2d(1, kwargs["hidden_size"], kwargs["patch_size"], kwargs["patch_size"])
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    for model in (ours, ref):
        model.timesformer.embeddings.patch_embeddings.projection = conv
    x = random_clip({**kwargs, "num_channels": 1})
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, ref(x).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"pixel_values must have 1 channels \(dimension 2 of"):
        ours(random_clip(kwargs))
    # uint8 frames, normalized by the model: one channel's mean and std.
    ours.set_input_normalization([0.4], [0.3])
    size = kwargs["image_size"]
    frames = torch.randint(0, 256, (2, kwargs["num_frames"], size, size, 1), dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        expected = ref((frames.permute(0, 1, 4, 2, 3) / 255 - 0.4) / 0.3).logits
        torch.testing.assert_close(ours(frames).logits, expected, rtol=1e-4, atol=1e-5)


def test_a_plain_module_in_another_slot_counts():
    """Any module of another type than the model built at that name is called: nn.Dropout in a drop-path
    slot was "plain", so sdpa ignored it in training."""
    ours, _, _ = _pair("sdpa", seed=13)
    ours.timesformer.encoder.layer[1].drop_path = nn.Dropout(0.9)
    assert (
        module_path_reason(ours)
        == "timesformer.encoder.layer.1.drop_path is a torch.nn.modules.dropout.Dropout"
    )
    # A drop path for nn.Identity (or back) keeps the fused path: the backends read its rate.
    ours.timesformer.encoder.layer[1].drop_path = timesformer.modeling.TimesformerDropPath(0.2)
    # Built in training mode, it would act in this eval-mode model, as in the reference.
    assert (
        module_path_reason(ours)
        == "timesformer.encoder.layer.1.drop_path is in training mode and the model is not"
    )
    ours.eval()
    assert module_path_reason(ours) is None and ours.timesformer.encoder.layer[1].drop_path_rate == 0.2


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_another_activation_module_of_the_same_type_counts(backend):
    """The fused backends take the activation from the module (triton fused the config's GELU)."""
    ours, ref, kwargs = _pair(backend, seed=14)
    x = random_clip(kwargs)
    for layer in ours.timesformer.encoder.layer:
        layer.intermediate.intermediate_act_fn = timesformer.activations.Activation("relu")
    for layer in ref.timesformer.encoder.layer:
        layer.intermediate.intermediate_act_fn = nn.ReLU()
    assert module_path_reason(ours) is None  # still the fused path
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, ref(x).logits, rtol=1e-5, atol=1e-5)


def test_models_pickled_before_drop_path_and_activation_were_modules_still_run():
    ours, _, kwargs = _pair("sdpa", seed=15)
    x = random_clip(kwargs)
    with torch.no_grad():
        expected = ours(x).logits
    # The layout of those versions: the rate and the function as plain attributes.
    for layer in ours.timesformer.encoder.layer:
        rate = layer.drop_path_rate
        del layer._modules["drop_path"]
        layer.__dict__.update(drop_path_rate=rate, hidden_act="gelu")
        fn = layer.intermediate._modules.pop("intermediate_act_fn").fn
        layer.intermediate.__dict__["intermediate_act_fn"] = fn
    for model in (ours, ours.timesformer):
        del model.__dict__["_built_types"]
    for module in ours.modules():  # nor which modules are initialized
        del module.__dict__["_is_hf_initialized"]
    for backend in ("eager", "sdpa"):
        loaded = pickle.loads(pickle.dumps(ours)).set_backend(backend)
        assert module_path_reason(loaded) is None
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, expected, rtol=1e-6, atol=1e-6)
    # The new-head recipe keeps the pickled weights.
    kept = loaded.timesformer.encoder.layer[0].output.dense.weight.clone()
    loaded.classifier = torch.nn.Linear(kwargs["hidden_size"], 2)
    loaded.post_init()
    assert torch.equal(loaded.timesformer.encoder.layer[0].output.dense.weight, kept)


def _noisy_pair(backend: str, seed: int):
    kwargs = small_config_kwargs(
        "divided_space_time",
        seed,
        num_hidden_layers=2,
        hidden_dropout_prob=0.3,
        attention_probs_dropout_prob=0.2,
        drop_path_rate=0.4,
    )
    ours = randomize_(
        timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), seed
    ).set_backend(backend)
    ref_config = transformers.TimesformerConfig(**{**kwargs, "drop_path_rate": 0})
    # transformers 5 types drop_path_rate as int in its strict config; the layers accept a float.
    object.__setattr__(ref_config, "drop_path_rate", kwargs["drop_path_rate"])
    ref = transformers.TimesformerForVideoClassification(ref_config)
    ref.load_state_dict(ours.state_dict())
    return ours, ref, random_clip(kwargs)


def _same_draws(ours, ref, x, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        torch.manual_seed(seed)
        got = ours(x).logits
        torch.manual_seed(seed)
        return got, ref(x).logits


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_dropout_module_counts_in_its_own_mode(backend):
    """The reference calls each dropout and drop-path module, whose own mode counts; the fused backends
    applied the model's mode to all of them. Monte-Carlo dropout (eval, then the dropout modules back to
    train) ran without any dropout, and training with dropout turned off kept it on."""
    ours, ref, x = _noisy_pair(backend, seed=21)
    for model in (ours, ref):  # Monte-Carlo dropout
        model.eval()
        for module in model.timesformer.encoder.modules():
            if isinstance(module, nn.Dropout):
                module.train()
    assert module_path_reason(ours) is not None
    got, expected = _same_draws(ours, ref, x, seed=5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    again, _ = _same_draws(ours, ref, x, seed=6)
    assert (again - got).abs().max() > 1e-3  # dropout acts: the draws differ

    for model in (ours, ref):  # training with the dropout modules off (drop path still on)
        model.train()
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
    got, expected = _same_draws(ours, ref, x, seed=7)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    for model in (ours, ref):  # one mode again: the fused path is back, and gives the reference's values
        model.eval()
    assert module_path_reason(ours) is None
    got, expected = _same_draws(ours, ref, x, seed=8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
