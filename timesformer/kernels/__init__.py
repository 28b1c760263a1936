"""Triton kernels: one module per kernel family, each with its kernel, launcher and ``torch.library`` op.

- ``temporal_attention``: attention over the ``T`` frames of each patch, rows in the model's ``(n t)`` order;
- ``attention``: spatial attention with CLS (rows gathered at stride ``T``) and joint / space-only attention,
  one online-softmax kernel.

Nothing here is imported at package import time (the ``triton`` backend imports these modules lazily), so
the package imports where Triton or a GPU is missing. Pure-torch references: ``timesformer.ops``.
"""
