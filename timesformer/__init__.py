"""Fast TimeSformer inference: a drop-in replacement for the ``transformers`` TimeSformer classes.

    from timesformer import TimesformerForVideoClassification   # instead of transformers'
    model = TimesformerForVideoClassification.from_pretrained(path)          # backend="auto"

Importing this package needs torch, not Triton and not transformers.

The map (README, "Layout"): ``modeling`` (the models, transformers' module names) -> ``backends`` (the one
name -> code table; ``eager``, ``sdpa`` on ``torch_ops``, ``triton`` on ``kernels``) -> ``kernels`` (one file
per Triton kernel family: kernel, checks, launcher, custom op, wrapper; each kernel's pure-torch reference is
in ``torch_ops``, its test in ``tests/test_<kernel>.py``, its benchmark in ``bench/``).
"""

from .backends import BackendInfo, BackendUnavailableError, available_backends
from .configuration import TimesformerConfig
from .cuda_graphs import CudaGraphRunner
from .loading import CheckpointError, from_hf
from .modeling import TimesformerForVideoClassification, TimesformerModel, TimesformerPreTrainedModel
from .outputs import BaseModelOutput, ImageClassifierOutput

__version__ = "0.1.0"

__all__ = [
    "BackendInfo",
    "BackendUnavailableError",
    "BaseModelOutput",
    "CheckpointError",
    "CudaGraphRunner",
    "ImageClassifierOutput",
    "TimesformerConfig",
    "TimesformerForVideoClassification",
    "TimesformerModel",
    "TimesformerPreTrainedModel",
    "__version__",
    "available_backends",
    "from_hf",
]
