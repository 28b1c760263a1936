"""Parity with transformers' TimeSformer on random small configs, every attention type and backend."""

from __future__ import annotations

import pytest
import torch
from conftest import ATTENTION_TYPES, assert_close, make_pair, random_clip

BACKENDS = ("eager", "sdpa")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_model_outputs_match(hf, attention_type, backend):
    ref, _, kwargs = make_pair(hf, attention_type, seed=11, classification=False)
    import timesformer

    ours = timesformer.from_hf(ref, backend=backend)
    x = random_clip(kwargs, batch=2)
    with torch.no_grad():
        expected = ref(x, output_hidden_states=True)
        got = ours(x, output_hidden_states=True)
    assert_close(got.last_hidden_state, expected.last_hidden_state)
    assert len(got.hidden_states) == len(expected.hidden_states) == kwargs["num_hidden_layers"] + 1
    for g, e in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_close(g, e)
    assert got.attentions is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("return_dict", [True, False])
@pytest.mark.parametrize("output_attentions", [True, False])
def test_classification_all_outputs(hf, attention_type, backend, return_dict, output_attentions):
    ref, ours, kwargs = make_pair(hf, attention_type, seed=5)
    ours.set_backend(backend)
    x = random_clip(kwargs, batch=3, seed=2)
    rows = 3 * kwargs["num_frames"] if attention_type == "space_only" else 3
    labels = torch.randint(0, kwargs["num_labels"], (rows,))
    with torch.no_grad():
        kw = dict(
            labels=labels,
            output_hidden_states=True,
            output_attentions=output_attentions,
            return_dict=return_dict,
        )
        expected, got = ref(x, **kw), ours(x, **kw)
    if return_dict:
        assert list(got.keys()) == list(expected.keys())
        expected = expected.to_tuple()
        got_t = got.to_tuple()
    else:
        assert isinstance(got, tuple)
        got_t = got
    # loss, logits, hidden_states[, attentions]
    assert len(got_t) == len(expected) == (4 if output_attentions else 3)
    assert_close(got_t[0], expected[0])
    assert_close(got_t[1], expected[1])
    for entry in range(2, len(expected)):
        for g, e in zip(got_t[entry], expected[entry], strict=True):
            assert_close(g, e)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "num_labels,labels_fn,problem",
    [
        (1, lambda rows, k: torch.randn(rows), "regression"),
        (4, lambda rows, k: torch.randint(0, k, (rows,)), "single_label_classification"),
        (4, lambda rows, k: torch.rand(rows, k), "multi_label_classification"),
    ],
)
def test_loss_problem_types(hf, backend, num_labels, labels_fn, problem):
    ref, ours, kwargs = make_pair(hf, "divided_space_time", seed=3, num_labels=num_labels)
    ours.set_backend(backend)
    x = random_clip(kwargs, batch=3)
    labels = labels_fn(3, num_labels)
    with torch.no_grad():
        expected = ref(x, labels=labels)
        got = ours(x, labels=labels)
    assert ours.config.problem_type == ref.config.problem_type == problem
    assert_close(got.logits, expected.logits)
    assert_close(got.loss, expected.loss)
    assert got[0] is got.loss and got[1] is got.logits


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_gradients_match_reference(hf, attention_type):
    """Fine-tuning works through sdpa: parameter gradients equal the reference's."""
    ref, _, kwargs = make_pair(hf, attention_type, seed=8)
    import timesformer

    ours = timesformer.from_hf(ref, backend="sdpa")
    x = random_clip(kwargs, batch=2)
    rows = 2 * kwargs["num_frames"] if attention_type == "space_only" else 2
    labels = torch.randint(0, kwargs["num_labels"], (rows,))
    ref(x, labels=labels).loss.backward()
    ours(x, labels=labels).loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if attention_type != "divided_space_time" and "time_embeddings" in name:
            continue
        assert p.grad is not None, name
        assert_close(p.grad, ref_grads[name].grad, rel=1e-4)


def test_no_grad_and_grad_mode_agree():
    """The in-place inference path and the autograd path compute the same numbers."""
    from conftest import randomize_, small_config_kwargs

    import timesformer

    kwargs = small_config_kwargs("divided_space_time", seed=4)
    model = randomize_(
        timesformer.TimesformerModel(timesformer.TimesformerConfig(**kwargs), backend="sdpa")
    ).eval()
    x = random_clip(kwargs)
    with torch.no_grad():
        a = model(x, output_hidden_states=True)
    b = model(x, output_hidden_states=True)
    assert b.last_hidden_state.requires_grad
    assert_close(a.last_hidden_state, b.last_hidden_state.detach())
    for u, v in zip(a.hidden_states, b.hidden_states, strict=True):
        assert_close(u, v.detach())
