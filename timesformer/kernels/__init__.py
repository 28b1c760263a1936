"""Triton kernels: one module per kernel family, each with its kernel, launcher and ``torch.library`` op.

- ``temporal_attention``: attention over the ``T`` frames of each patch, rows in the model's ``(n t)`` order;
- ``attention``: spatial attention with CLS (rows gathered at stride ``T``) and joint / space-only attention,
  one online-softmax kernel;
- ``linear``: one GEMM with the LayerNorm folded in (``LN -> qkv``, ``LN -> fc1``, final LN -> head) and
  epilogues for bias, activation, in-place residual add and the CLS frame-mean;
- ``patch_embed``: im2col GEMM from float pixels or uint8 frames (mean and std folded into the weights by
  ``fold_normalization``, the frames less their integer mean colour, the rescale applied to the fp32 product) with
  bias, position and time embeddings and the CLS row, written in the model's row order.

Each module is ordered bottom-up (what a function calls comes before it), the same way: the
``@triton.jit`` kernel (arguments grouped: pointers, strides, sizes, feature flags, tile sizes), argument
checks, launch configuration, the launchers (``*_fwd(..., out)``: validate, then launch), the
``torch.library.custom_op`` with its fake, the public function; weight preparation (pure torch) last.
``attention`` and ``linear`` have one kernel for two ops: the shared parts come first, then one section per
op in that order. Every op validates its arguments once per call, with the ``check_*`` helpers of
``_common`` (see its docstring).

Launch configurations are fixed per dtype, head size and frame count, not autotuned: an autotuner would
benchmark inside CUDA-graph capture and under the interpreter, and a tuned choice could spill on another
Triton version. ``make gpu-compile`` (``tools/gpu_compile.py``) compiles every launch the ``triton`` backend
makes for sm_80 and sm_90 and fails on a spill, so each configuration here is checked for zero spills with
Triton 3.6 and the current release. (Each ``_launch_config`` refers here.)

Nothing here is imported at package import time (the ``triton`` backend imports these modules lazily), so
the package imports where Triton or a GPU is missing. Pure-torch references: ``timesformer.torch_ops``.
"""
