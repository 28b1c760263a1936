"""Triton kernels (one module per kernel family: kernel, launcher, ``torch.library`` op).

Nothing here imports Triton at package import time; the ``triton`` backend imports these modules lazily.
The kernels arrive with the Triton attention and fusion issues; their pure-torch references are in
``timesformer.ops``.
"""
