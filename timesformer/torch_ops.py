"""Pure-torch versions of the attention ops, in the model's own token layout.

These are the ops of the ``sdpa`` backend and the references the Triton kernels are tested against.
Every op takes the packed output of a ``qkv`` projection, ``[..., 3 * hidden]`` with the last dimension
ordered ``(3, heads, head_dim)`` as ``transformers`` packs it, and returns contexts ``[..., hidden]`` ordered
``(heads, head_dim)``, ready for the output projection.

Token layout (DESIGN.md section 1): row ``1 + n * T + t`` of the residual stream is patch ``n`` of frame
``t``; row 0 is CLS. Attention scaling is ``head_dim ** -0.5``, as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _split_heads(packed: torch.Tensor, num_heads: int, parts: int = 3) -> tuple[int, int]:
    """(hidden, head_dim) of a ``[..., parts * hidden]`` packed projection (``parts``: 3 for qkv, 2 for kv)."""
    width, name = packed.shape[-1], "qkv" if parts == 3 else "kv"
    if width % (parts * num_heads):
        raise ValueError(
            f"{name} last dimension must be {parts} * num_heads * head_dim with num_heads={num_heads}, got {width}"
        )
    hidden = width // parts
    return hidden, hidden // num_heads


def attention(qkv: torch.Tensor, num_heads: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Plain softmax attention over the whole sequence (joint space-time and space-only layers).

    Args:
        qkv: ``(batch, seqlen, 3 * hidden)`` packed projections.
        num_heads: attention heads; ``head_dim = hidden // num_heads``.
        dropout_p: dropout on the attention probabilities (training only).

    Returns:
        ``(batch, seqlen, hidden)`` contexts.
    """
    batch, seqlen, _ = qkv.shape
    hidden, head_dim = _split_heads(qkv, num_heads)
    # [3, B, H, L, dh] as strided views of the projection output: no copy before SDPA.
    q, k, v = qkv.view(batch, seqlen, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(batch, seqlen, hidden)


def _check_frames(num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")


def temporal_attention(
    qkv: torch.Tensor, num_frames: int, num_heads: int, dropout_p: float = 0.0
) -> torch.Tensor:
    """Attention over the ``T`` frames of each (clip, patch, head): the temporal pass of a divided layer.

    Args:
        qkv: ``(batch, num_patches * T, 3 * hidden)``, rows in the model's ``(n t)`` order, any strides
            with a unit last stride (e.g. the projection of ``x[:, 1:]``).
        num_frames: ``T``.
        num_heads: attention heads.
        dropout_p: dropout on the attention probabilities (training only).

    Returns:
        ``(batch, num_patches * T, hidden)`` contexts in the same row order.
    """
    batch, rows, _ = qkv.shape
    _check_frames(num_frames)
    if rows % num_frames:
        raise ValueError(f"qkv has {rows} rows, not a multiple of num_frames={num_frames}")
    hidden, head_dim = _split_heads(qkv, num_heads)
    n = rows // num_frames
    # Rows of one patch are contiguous, so (clip, patch) is one batch axis: [B*N, H, T, dh] views.
    q, k, v = qkv.reshape(batch * n, num_frames, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(batch, rows, hidden)


def spatial_attention(
    qkv: torch.Tensor, num_frames: int, num_heads: int, dropout_p: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over CLS plus the patches of each frame: the spatial pass of a divided layer.

    For each (clip, frame, head) the queries are CLS and the ``N`` patch rows of that frame (rows at
    stride ``T``); the keys and values are the same ``1 + N`` rows. CLS's q/k/v come from row 0, computed
    once per clip (LayerNorm and the projection are per row, so the reference's ``T`` copies of CLS give
    the same values).

    Args:
        qkv: ``(batch, 1 + num_patches * T, 3 * hidden)``: row 0 CLS, then rows in ``(n t)`` order.
        num_frames: ``T``.
        num_heads: attention heads.
        dropout_p: dropout on the attention probabilities (training only).

    Returns:
        ``(patch_ctx, cls_ctx)``: ``(batch, num_patches * T, hidden)`` contexts in ``(n t)`` row order,
        and ``(batch, T, hidden)``, the CLS context of each frame (the layer averages it over frames).
    """
    batch, rows, _ = qkv.shape
    _check_frames(num_frames)
    if (rows - 1) % num_frames or rows < 1:
        raise ValueError(
            f"qkv has {rows} rows, expected 1 + num_patches * num_frames (num_frames={num_frames})"
        )
    hidden, head_dim = _split_heads(qkv, num_heads)
    n = (rows - 1) // num_frames
    # SDPA needs each frame's keys as one sequence, so gather [CLS; patches of frame t] once into a
    # [3, B, T, H, 1+N, dh] buffer (the Triton kernel reads them in place instead).
    packed = qkv.new_empty(3, batch, num_frames, num_heads, 1 + n, head_dim)
    cls = qkv[:, 0].view(batch, 3, num_heads, head_dim).transpose(0, 1)  # [3, B, H, dh]
    packed[:, :, :, :, 0] = cls.unsqueeze(2)
    patches = qkv[:, 1:].view(batch, n, num_frames, 3, num_heads, head_dim)
    packed[:, :, :, :, 1:] = patches.permute(3, 0, 2, 4, 1, 5)
    q, k, v = packed.view(3, batch * num_frames, num_heads, 1 + n, head_dim).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    out = out.view(batch, num_frames, num_heads, 1 + n, head_dim)
    cls_ctx = out[:, :, :, 0].reshape(batch, num_frames, hidden)
    patch_ctx = out[:, :, :, 1:].permute(0, 3, 1, 2, 4).reshape(batch, n * num_frames, hidden)
    return patch_ctx, cls_ctx


def cls_attention(q: torch.Tensor, kv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Attention of the CLS query alone over a whole sequence (last joint / space-only layer of a classifier).

    Args:
        q: ``(batch, hidden)`` CLS queries.
        kv: ``(batch, seqlen, 2 * hidden)`` packed keys and values of every row, CLS included.
        num_heads: attention heads.

    Returns:
        ``(batch, hidden)`` CLS contexts.
    """
    batch, seqlen, _ = kv.shape
    hidden, head_dim = _split_heads(kv, num_heads, parts=2)
    k, v = kv.view(batch, seqlen, 2, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q.view(batch, num_heads, 1, head_dim), k, v)
    return out.reshape(batch, hidden)


def spatial_cls_attention(q: torch.Tensor, kv: torch.Tensor, num_frames: int, num_heads: int) -> torch.Tensor:
    """The CLS query of each frame of a divided layer, over CLS plus that frame's patches.

    Only the last layer of a classifier needs this alone: the patch rows it would update are never read.

    Args:
        q: ``(batch, hidden)`` CLS queries (the same for every frame).
        kv: ``(batch, 1 + num_patches * T, 2 * hidden)``: row 0 CLS, then rows in ``(n t)`` order.
        num_frames: ``T``.
        num_heads: attention heads.

    Returns:
        ``(batch, T, hidden)`` CLS contexts per frame.
    """
    batch, rows, _ = kv.shape
    hidden, head_dim = _split_heads(kv, num_heads, parts=2)
    n = (rows - 1) // num_frames
    q = q.view(batch, num_heads, head_dim) * head_dim**-0.5
    cls_k, cls_v = kv[:, 0].view(batch, 2, num_heads, head_dim).unbind(1)  # [B, H, dh]
    k, v = kv[:, 1:].view(batch, n, num_frames, 2, num_heads, head_dim).unbind(3)  # [B, N, T, H, dh]
    # One query per (clip, frame, head): scores are small, so plain products with an explicit softmax.
    scores = torch.cat(
        (
            (q * cls_k).sum(-1)[:, None, :, None].expand(batch, num_frames, num_heads, 1),
            torch.einsum("bhd,bnthd->bthn", q, k),
        ),
        dim=-1,
    )
    probs = scores.softmax(-1)  # [B, T, H, 1 + N]
    ctx = probs[..., :1] * cls_v[:, None] + torch.einsum("bthn,bnthd->bthd", probs[..., 1:], v)
    return ctx.reshape(batch, num_frames, hidden)


# ------------------------------------------------------------------------ projections (fusion refs)


def layer_norm_linear(
    x: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str = "linear",
) -> torch.Tensor:
    """``act(LayerNorm(x) @ W^T + b)``, unfused: the reference of ``kernels.linear.layer_norm_linear``.

    Args:
        x: ``(..., in_features)``; ln_weight, ln_bias: ``(in_features,)`` or ``None``.
        weight: ``(out_features, in_features)``; bias: ``(out_features,)`` or ``None``.
        activation: a ``hidden_act`` name.
    """
    from .activations import get_activation

    h = F.layer_norm(x, x.shape[-1:], ln_weight, ln_bias, eps)
    return get_activation(activation)(F.linear(h, weight, bias))


def linear_residual(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    mean_rows: bool = False,
) -> torch.Tensor:
    """``residual + x @ W^T + b`` (out of place): the reference of ``kernels.linear.linear_residual_``.

    Args:
        x: ``(batch, rows, in_features)``; with ``mean_rows`` its rows are averaged first (``keepdim``).
        residual: ``(batch, rows, out_features)``, or ``(batch, 1, out_features)`` with ``mean_rows``.
    """
    if mean_rows:
        x = x.mean(1, keepdim=True)
    return residual + F.linear(x, weight, None if bias is None else bias.to(x.dtype))


# ------------------------------------------------------------------------------------- embeddings


def patch_embed(
    pixel_values: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pos: torch.Tensor,
    time: torch.Tensor | None,
    cls: torch.Tensor,
    space_only: bool = False,
) -> torch.Tensor:
    """The embeddings ``TimesformerEmbeddings.forward`` computes in eval mode, given interpolated tables.

    The reference's op order: per-frame ``Conv2d`` (stride = patch size), flatten, prepend CLS, add the
    position table; then, unless ``space_only``, reorder the patches to ``(n t)`` and add the time table.

    Args:
        pixel_values: ``(B, T, C, H, W)``.
        weight: ``(D, C, ph, pw)`` conv weight; bias: ``(D,)``.
        pos: ``(1 + N, D)`` position table for the grid, ``N = (H / ph) * (W / pw)``.
        time: ``(T, D)`` time table (unused, may be ``None``, for ``space_only``).
        cls: ``(D,)``.
        space_only: return the space-only layout.

    Returns:
        ``(B, 1 + N * T, D)``, row 0 CLS and row ``1 + n * T + t`` patch ``n`` of frame ``t``; or
        ``(B * T, 1 + N, D)`` for ``space_only``.
    """
    batch, frames, channels, height, width = pixel_values.shape
    frames2d = pixel_values.reshape(batch * frames, channels, height, width)
    emb = F.conv2d(frames2d, weight, bias, stride=tuple(weight.shape[-2:]))
    emb = emb.flatten(2).transpose(1, 2)
    emb = torch.cat((cls.reshape(1, 1, -1).expand(emb.shape[0], -1, -1), emb), dim=1)
    emb = emb + pos
    if space_only:
        return emb
    cls_tokens = emb[:batch, 0].unsqueeze(1)
    n, hidden = emb.shape[1] - 1, emb.shape[2]
    patches = (
        emb[:, 1:].reshape(batch, frames, n, hidden).permute(0, 2, 1, 3).reshape(batch * n, frames, hidden)
    )
    patches = patches + time
    return torch.cat((cls_tokens, patches.reshape(batch, n * frames, hidden)), dim=1)


def normalize_frames(
    frames: torch.Tensor, mean, std, rescale: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """What an image processor does to decoded frames: ``(u * rescale - mean[c]) / std[c]``, channels first.

    Args:
        frames: uint8 ``(B, T, H, W, C)``.
        mean, std: ``C`` numbers each.
        rescale: e.g. ``1 / 255``.
        dtype: the result's dtype. Computed in float32 (float64 when ``dtype`` is float64) and cast once.

    Returns:
        ``(B, T, C, H, W)`` pixel values.
    """
    work = torch.promote_types(dtype, torch.float32)
    x = frames.permute(0, 1, 4, 2, 3).to(work)
    mean = _per_channel(mean, work, frames.device)
    std = _per_channel(std, work, frames.device)
    return ((x * rescale - mean) / std).to(dtype)


def _per_channel(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` (numbers, or a tensor) as a ``(C, 1, 1)`` tensor on ``device``, filled there: copying a
    Python list to a GPU synchronizes with the host, which a CUDA-graph capture refuses."""
    if isinstance(values, torch.Tensor) and values.device == device:
        return values.to(dtype).reshape(-1, 1, 1)
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1).tolist()
    out = torch.empty(len(values), 1, 1, dtype=dtype, device=device)
    for c, value in enumerate(values):
        out[c].fill_(value)
    return out
