"""Backend selection, the weight cache of the sdpa backend, and attention maps on request."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_close, errors_in_threads, random_clip, randomize_, small_config_kwargs

import timesformer
from timesformer import BackendUnavailableError, TimesformerForVideoClassification, TimesformerModel

KWARGS = small_config_kwargs("divided_space_time", seed=40, num_frames=3)


def _model(backend="auto", cls=TimesformerModel, **overrides):
    cfg = timesformer.TimesformerConfig(**{**KWARGS, **overrides})
    return randomize_(cls(cfg, backend=backend), 1).eval()


def test_available_backends_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    info = timesformer.available_backends("cpu")
    assert list(info) == ["eager", "sdpa", "triton"]
    assert info["eager"].available and info["sdpa"].available
    assert not info["triton"].available and "TRITON_INTERPRET=1" in info["triton"].reason
    assert timesformer.available_backends() == info


def test_auto_resolves_to_sdpa_and_reports_it():
    model = _model("auto")
    assert model.backend == "sdpa"
    assert _model("eager").backend == "eager"
    assert model.set_backend("eager") is model and model.backend == "eager"


def test_backend_names_the_eager_computation_while_forwards_call_the_modules():
    """``backend`` said "sdpa" while a hook made every forward call the modules."""
    model = _model("auto")
    handle = model.encoder.layer[0].register_forward_hook(lambda *_: None)
    assert model.backend == "eager"
    handle.remove()
    assert model.backend == "sdpa"
    # A hook on a classifier's head alone: the classifier calls its encoder model, which stays fused.
    classifier = _model("auto", cls=TimesformerForVideoClassification)
    classifier.classifier.register_forward_hook(lambda *_: None)
    assert classifier.backend == "sdpa"


def test_triton_without_interpreter_and_unknown_backends_are_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    # Selecting it is allowed (the model may move to a GPU next); running it on the CPU is not.
    model = _model("triton")
    with pytest.raises(
        BackendUnavailableError, match="backend 'triton' cannot run on cpu: .*TRITON_INTERPRET=1"
    ):
        model(random_clip(KWARGS))
    with pytest.raises(BackendUnavailableError, match="triton"):
        _model().set_backend("triton").backend  # noqa: B018
    with pytest.raises(
        ValueError,
        match=r"backend must be one of \['auto', 'eager', 'flash_attention_2', 'sdpa', 'triton'\], got 'flash'",
    ):
        _model("flash")


def test_classifier_set_backend_reaches_the_encoder():
    model = _model("eager", cls=TimesformerForVideoClassification)
    model.set_backend("sdpa")
    assert model.backend == model.timesformer.backend == "sdpa"


def test_output_attentions_runs_eager_with_sdpa_backend():
    model = _model("sdpa")
    x = random_clip(KWARGS)
    with torch.no_grad():
        got = model(x, output_attentions=True)
        model.set_backend("eager")
        expected = model(x, output_attentions=True)
    assert len(got.attentions) == KWARGS["num_hidden_layers"]
    n = (KWARGS["image_size"] // 8) ** 2
    assert got.attentions[0].shape == (2 * 3, KWARGS["num_attention_heads"], 1 + n, 1 + n)
    for a, b in zip(got.attentions, expected.attentions, strict=True):
        assert torch.equal(a, b)


def test_config_output_flags_are_defaults():
    model = _model("sdpa", output_hidden_states=True, return_dict=False)
    out = model(random_clip(KWARGS))
    assert isinstance(out, tuple) and len(out) == 2 and len(out[1]) == KWARGS["num_hidden_layers"] + 1


def _eager_reference(model, x):
    with torch.no_grad():
        backend = model.backend
        out = model.set_backend("eager")(x).last_hidden_state
        model.set_backend(backend)
    return out


def test_folded_weights_follow_load_state_dict_inplace_edits_and_to():
    model = _model("sdpa")
    x = random_clip(KWARGS)
    with torch.no_grad():
        model(x)  # fills the fold cache
        other = randomize_(TimesformerModel(model.config), seed=99).state_dict()
        model.load_state_dict(other)
        assert_close(model(x).last_hidden_state, _eager_reference(model, x))

        dense = model.encoder.layer[0].temporal_dense
        dense.weight.mul_(1.5)
        dense.bias.add_(0.25)
        model.encoder.layer[0].temporal_attention.output.dense.weight.add_(0.1)
        assert_close(model(x).last_hidden_state, _eager_reference(model, x))

        model.double()
        xd = x.double()
        out = model(xd).last_hidden_state
        assert out.dtype == torch.float64
        assert_close(out, _eager_reference(model, xd), rel=1e-12, abs_=1e-12)


def test_folded_weights_follow_load_state_dict_after_moving_under_inference_mode():
    """``.to()`` under ``torch.inference_mode`` makes every parameter an inference tensor, which has no version
    counter: load_state_dict's in-place copies then left the old folded weights in use."""
    model = _model("sdpa")
    x = random_clip(KWARGS)
    other = randomize_(TimesformerModel(model.config), seed=98).state_dict()
    with torch.inference_mode():
        model.double().float()  # as `model.to("cuda")` in a server's start-up
        model(x)
        model.load_state_dict(other)
        got = model(x).last_hidden_state
        assert_close(got, _eager_reference(model, x))


def test_a_weight_set_to_its_own_transpose_is_prepared_again():
    """Same storage, address, shape and version counter as before: only the strides tell."""
    model = _model("sdpa").requires_grad_(False)
    x = random_clip(KWARGS)
    with torch.no_grad():
        model(x)
        dense = model.encoder.layer[0].temporal_dense
        dense.weight = torch.nn.Parameter(dense.weight.t(), requires_grad=False)
        assert_close(model(x).last_hidden_state, _eager_reference(model, x))


def test_the_weight_cache_is_safe_across_threads(monkeypatch):
    """Threads serving one model share its caches; with more input sizes than entries, one thread's eviction
    removed the entry another had just found (KeyError)."""
    from timesformer import weight_cache

    monkeypatch.setattr(weight_cache, "MAX_ENTRIES_PER_MODULE", 4)
    module = torch.nn.Linear(3, 3)

    def work(offset):
        for i in range(3000):
            key = f"table_{(offset + i) % 7}"
            assert (
                weight_cache.cached_weights(module, key, (module.weight,), lambda w: (w + 1,))[0] is not None
            )

    assert errors_in_threads(work, 4) == []


def test_a_copied_model_starts_without_prepared_weights():
    """deepcopy, pickle and torch.save of a whole model carried the caches: the entries name the original's
    tensors by address, and a saved triton model grew by 1.6x."""
    import io
    import pickle

    model = _model("sdpa")
    x = random_clip(KWARGS)
    with torch.no_grad():
        expected = model(x).last_hidden_state
        assert any("_weight_cache" in m.__dict__ and m.__dict__["_weight_cache"] for m in model.modules())
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        for copied in (
            copy.deepcopy(model),
            pickle.loads(pickle.dumps(model)),
            torch.load(buffer, weights_only=False),
        ):
            assert not any(m.__dict__.get("_weight_cache") for m in copied.modules())
            assert torch.equal(copied(x).last_hidden_state, expected)


def test_data_edits_need_clear_weight_cache():
    model = _model("sdpa")
    x = random_clip(KWARGS)
    with torch.no_grad():
        model(x)
        model.encoder.layer[0].temporal_dense.weight.data.mul_(2.0)  # bypasses version counters
        model.clear_weight_cache()
        assert_close(model(x).last_hidden_state, _eager_reference(model, x))


def test_prepared_weights_stay_while_other_modules_are_built():
    """The cache watches submodules put in another's place (PEFT's merge); counting every registration made
    a container built per batch, a sliced ModuleList or a deepcopy re-prepare every weight on every forward."""
    model = _model("sdpa")
    x = random_clip(KWARGS)
    with torch.no_grad():
        model(x)
        held = {id(m): dict(m.__dict__.get("_weight_cache", {})) for m in model.modules()}
        assert any(held.values())
        for _ in range(2):
            pre = torch.nn.Sequential(torch.nn.Identity(), torch.nn.ModuleList([torch.nn.ReLU()])[:1])
            copy.deepcopy(pre)
            model(pre[0](x))
        for m in model.modules():
            now = m.__dict__.get("_weight_cache", {})
            assert all(now.get(k) is v for k, v in held[id(m)].items())  # the same entries: nothing prepared


def test_hidden_states_are_snapshots_not_aliases():
    model = _model("sdpa")
    x = random_clip(KWARGS)
    with torch.no_grad():
        fast = model(x, output_hidden_states=True).hidden_states
        model.set_backend("eager")
        slow = model(x, output_hidden_states=True).hidden_states
    for a, b in zip(fast, slow, strict=True):
        assert_close(a, b)


def test_folded_weights_follow_fused_optimizer_steps():
    """Fused optimizers do not bump version counters; the cache must still see their steps."""
    model = _model("sdpa")
    x = random_clip(KWARGS)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
    with torch.no_grad():
        model(x)  # fills the cache
    model.train()
    model(x).last_hidden_state.square().mean().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        assert_close(model(x).last_hidden_state, _eager_reference(model, x))


def test_model_built_under_inference_mode():
    with torch.inference_mode():
        model = _model("sdpa")
        x = random_clip(KWARGS)
        out = model(x).last_hidden_state
    with torch.no_grad():
        out_no_grad = model(x).last_hidden_state
        assert_close(out, _eager_reference(model, x))
        assert_close(out_no_grad, out)


def test_to_drops_prepared_weights():
    model = _model("sdpa")
    with torch.no_grad():
        model(random_clip(KWARGS))
    assert any("_weight_cache" in m.__dict__ for m in model.modules())
    model.double()
    assert not any("_weight_cache" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_half_precision_error_within_twice_eager(dtype, attention_type):
    """Low precision on CPU: sdpa's error against float64 is at most 2x that of eager at the same dtype."""
    kwargs = small_config_kwargs(attention_type, seed=41, num_frames=3, hidden_size=48, num_attention_heads=3)
    cfg = timesformer.TimesformerConfig(**kwargs)
    model = randomize_(TimesformerForVideoClassification(cfg, backend="eager"), 2).eval()
    x = random_clip(kwargs)
    with torch.no_grad():
        exact = model.double()(x.double()).logits
        model.to(dtype)
        eager_err = (model(x.to(dtype)).logits.double() - exact).norm() / exact.norm()
        sdpa_err = (model.set_backend("sdpa")(x.to(dtype)).logits.double() - exact).norm() / exact.norm()
    assert sdpa_err <= 2 * eager_err, (float(sdpa_err), float(eager_err))


@pytest.mark.parametrize("backend", ["sdpa", "auto", "eager"])
def test_a_forward_traces_as_one_graph_under_torch_compile(backend):
    """torch.compile evaluates the backend choice while tracing instead of tracing into it (torch 2.11's
    dynamo refuses importlib's find_spec, which the availability checks call): one graph, the same logits,
    also when the first call of all is the compiled one."""
    kwargs = small_config_kwargs("divided_space_time", seed=41)
    model = randomize_(TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), 41).eval()
    model.set_backend(backend)
    x = random_clip(kwargs, seed=42)
    with torch.no_grad():
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(x).logits
        expected = model(x).logits
    assert torch.equal(got, expected)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_a_training_step_with_labels_traces_as_one_graph(backend):
    """The labels' range check is part of the graph under torch.compile (a Python branch on their values
    failed with fullgraph=True): same loss and gradients, and a bad label still fails."""
    kwargs = small_config_kwargs("divided_space_time", seed=43)
    model = randomize_(TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), 43).train()
    model.set_backend(backend)  # (no dropout: the config's default rates are 0)
    x, labels = random_clip(kwargs, seed=44), torch.tensor([1, 0])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    grads = []
    for run in (compiled, model):
        model.zero_grad(set_to_none=True)
        loss = run(x, labels=labels).loss
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(RuntimeError, match=r"labels must be in \[0, "):
        compiled(x, labels=torch.tensor([1, kwargs["num_labels"]]))
