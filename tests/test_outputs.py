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
