"""The package imports and runs where Triton and transformers are missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_without_triton_or_transformers():
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("triton", "transformers", "huggingface_hub"):
                    raise ImportError(f"blocked {name}")
                return None

        sys.meta_path.insert(0, Block())
        import torch
        import timesformer

        cfg = timesformer.TimesformerConfig(image_size=16, patch_size=8, num_frames=2, hidden_size=8,
                                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
        model = timesformer.TimesformerForVideoClassification(cfg).eval()
        with torch.no_grad():
            print(model(torch.randn(1, 2, 3, 16, 16)).logits.shape, model.backend)
        assert not any(m.split(".")[0] in ("triton", "transformers") for m in sys.modules)
        info = timesformer.available_backends("cpu")["triton"]
        assert not info.available and "Triton is not installed" in info.reason, info
        try:
            model.set_backend("triton")
        except timesformer.BackendUnavailableError as e:
            assert "needs Triton" in str(e)
        else:
            raise AssertionError("set_backend('triton') without Triton did not raise")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 2]) sdpa" in result.stdout
