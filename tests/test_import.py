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


def test_import_and_inference_never_load_dynamo():
    """torch._dynamo creates the inductor cache folder as it is imported, and fails where none can be written
    (a read-only container): importing the package and running a model must not need it."""
    import os

    code = textwrap.dedent(
        """
        import sys
        import torch
        import timesformer
        from timesformer.preprocess import native_cuda_available

        cfg = timesformer.TimesformerConfig(image_size=16, patch_size=8, num_frames=2, hidden_size=8,
                                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
        model = timesformer.TimesformerForVideoClassification(cfg).eval()
        with torch.no_grad():
            print(model(torch.randn(1, 2, 3, 16, 16)).logits.shape, native_cuda_available())
        assert "torch._dynamo" not in sys.modules
        """
    )
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR="/proc/no-such-folder")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 2]) False" in result.stdout


def test_the_constant_result_mark_is_torchs():
    """timesformer._compile marks functions as torch.compiler.assume_constant_result does, without dynamo."""
    import torch

    from timesformer._compile import assume_constant_result

    def ours():
        return 1

    def torchs():
        return 1

    assert assume_constant_result(ours) is ours
    assert torch.compiler.assume_constant_result(torchs) is torchs
    assert vars(ours) == vars(torchs) != {}
