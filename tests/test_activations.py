"""Every activation a config may name computes what transformers' ACT2FN computes."""

from __future__ import annotations

import pytest
import torch

from timesformer.activations import ACTIVATIONS


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_transformers(hf, name):
    from transformers.activations import ACT2FN

    x = torch.randn(257, dtype=torch.float64) * 4
    torch.testing.assert_close(ACTIVATIONS[name](x), ACT2FN[name](x), rtol=1e-12, atol=1e-12)
