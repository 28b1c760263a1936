"""Output objects index like transformers' ModelOutput."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import make_pair, random_clip

from timesformer import BaseModelOutput, ImageClassifierOutput


def test_indexing_matches_transformers(hf):
    ref, ours, kwargs = make_pair(hf, "divided_space_time", seed=60)
    x = random_clip(kwargs)
    labels = torch.tensor([0, 1])
    for call in (dict(), dict(labels=labels), dict(labels=labels, output_hidden_states=True)):
        with torch.no_grad():
            a, b = ref(x, **call), ours(x, **call)
        assert list(a.keys()) == list(b.keys())
        assert len(a.to_tuple()) == len(b.to_tuple())
        for i in range(len(a.to_tuple())):
            assert type(a[i]) is type(b[i])
        assert b[0] is b.to_tuple()[0]
        assert b["logits"] is b.logits


def test_model_output_behaviour():
    t = torch.ones(1)
    out = ImageClassifierOutput(logits=t)
    assert out.loss is None and out[0] is t and list(out.keys()) == ["logits"]
    out.loss = t * 2
    assert out[0] is out.loss and out[1] is t
    with pytest.raises(KeyError):
        out["nope"] = t
    with pytest.raises(TypeError, match="no field"):
        BaseModelOutput(logits=t)
    again = pickle.loads(pickle.dumps(out))
    assert torch.equal(again.loss, out.loss) and again.hidden_states is None
    assert list(copy.deepcopy(out).keys()) == ["loss", "logits"]


def test_rebuilt_from_items_and_a_pytree_node_as_in_transformers(hf):
    ref, ours, kwargs = make_pair(hf, "divided_space_time", seed=61)
    x = random_clip(kwargs)
    with torch.no_grad():
        theirs, out = ref(x, labels=torch.tensor([0, 1])), ours(x, labels=torch.tensor([0, 1]))
    # transformers is loaded here, so the model returns its class: this package's class is checked beside it.
    assert type(out) is type(theirs)
    own = ImageClassifierOutput(**out)
    # accelerate's conversions rebuild outputs this way.
    for o in (theirs, out, own):
        again = type(o)({k: v for k, v in o.items()})
        assert list(again.keys()) == ["loss", "logits"] and again.logits is o.logits
    from torch.utils import _pytree

    for o in (out, own):
        leaves, spec = _pytree.tree_flatten(o)
        assert len(leaves) == 2 and leaves[1] is o.logits
        rebuilt = _pytree.tree_unflatten([t * 2 for t in leaves], spec)
        assert type(rebuilt) is type(o) and torch.equal(rebuilt.logits, o.logits * 2)


def test_torch_export_gives_the_output_class(hf):
    _, ours, kwargs = make_pair(hf, "joint_space_time", seed=62)
    ours.set_backend("sdpa").eval()
    x = random_clip(kwargs, batch=1)
    exported = torch.export.export(ours, (x,)).module()
    with torch.no_grad():
        got, expected = exported(x), ours(x)
    assert type(got) is type(expected) and type(got).__name__ == "ImageClassifierOutput"
    torch.testing.assert_close(got.logits, expected.logits)


def test_integer_regression_targets_are_values_as_in_transformers(hf):
    kwargs_over = dict(num_labels=1)
    ref, ours, kwargs = make_pair(hf, "space_only", seed=63, **kwargs_over)
    x = random_clip(kwargs)
    frames = kwargs["num_frames"]
    labels = torch.arange(2 * frames)  # space_only: one row per frame
    with torch.no_grad():
        torch.testing.assert_close(ours(x, labels=labels).loss, ref(x, labels=labels).loss)
    with pytest.raises(ValueError, match="regression labels must be real numbers, got dtype torch.bool"):
        ours(x, labels=labels > 0)
