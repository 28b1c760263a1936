"""Analytic FLOP count of a TimeSformer forward pass, for any config.

Counts the matrix work, 2 FLOPs per multiply-add: every linear map (``2 * rows * in * out``), the patch
embedding's convolution as the product it is, and attention's two products per head (``q k^T`` and
``p v``: ``4 * q_len * k_len * head_dim``). LayerNorm, softmax, GELU and the adds are left out: they are
a fraction of a percent of the total and cost memory traffic, not matrix throughput.

Two ways of counting (DESIGN.md section 4):

- ``algebra=False``: the ``transformers`` layer stack as written: the temporal ``output.dense`` and
  ``temporal_dense`` as two products, CLS repeated over the ``T`` frames of the spatial pass;
- ``algebra=True`` (default): after the algebra of DESIGN.md section 2, the work this package's kernels
  do: one folded temporal out-projection, CLS's spatial projection once per clip and its out-projection
  on the frame-mean of its context.

Benchmarks divide the ``algebra=True`` count by every implementation's time, so TFLOP/s compares like with
like (a path that does more products than needed is not credited for them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Parts in the order a layer runs them; "dense_t" is zero after the algebra (folded into "out_t").
LAYER_PARTS = ("qkv_t", "attn_t", "out_t", "dense_t", "qkv_s", "attn_s", "out_s", "fc1", "fc2")


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass.

    Attributes:
        total: all parts, embeddings and head included.
        per_layer: one encoder layer's parts (``attn_*`` are the attention products; for joint and
            space-only layers the ``*_s`` keys hold the single attention and ``*_t`` are zero).
        last_layer: the last layer's parts: ``per_layer`` unless counted with ``last_layer_cls_only``.
        embeddings: the patch-embedding product.
        head: the classifier head (zero for the bare model).
        num_layers: encoder layers counted.
    """

    total: float
    per_layer: dict[str, float] = field(default_factory=dict)
    last_layer: dict[str, float] = field(default_factory=dict)
    embeddings: float = 0.0
    head: float = 0.0
    num_layers: int = 0

    @property
    def layer_total(self) -> float:
        return sum(self.per_layer.values())


def _get(config: Any, name: str) -> Any:
    value = getattr(config, name, None)
    if value is None and isinstance(config, dict):
        value = config.get(name)
    if value is None:
        raise ValueError(f"count_flops: config has no {name!r}")
    return value


def count_flops(
    config: Any,
    batch_size: int = 1,
    *,
    num_frames: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    algebra: bool = True,
    classifier: bool = True,
    last_layer_cls_only: bool = False,
) -> FlopCount:
    """FLOPs of a forward pass of ``batch_size`` clips.

    Args:
        config: a ``TimesformerConfig`` (ours or ``transformers'``) or a dict with its fields.
        batch_size: clips per forward.
        num_frames: ``T`` of the input (default: the config's).
        image_size: input height and width, or one int for both (default: the config's).
        algebra: count the work after DESIGN.md section 2's algebra (this package's kernels) instead of
            the ``transformers`` layer stack as written.
        classifier: include the classification head (on the CLS row of each clip, or of each frame for
            ``space_only``, as the reference's logits are).
        last_layer_cls_only: the last layer computes only what CLS needs (keys and values of every row,
            the query, out-projection and MLP of the CLS rows), as this package's classifier does when no
            hidden states are asked for. Implies ``algebra``.

    Returns:
        A ``FlopCount``; ``.total`` is in FLOPs (divide by 1e9 for GFLOP).
    """
    if last_layer_cls_only and not algebra:
        raise ValueError("count_flops: last_layer_cls_only counts this package's algebra; pass algebra=True")
    if batch_size < 1:
        raise ValueError(f"count_flops: batch_size must be >= 1, got {batch_size}")
    d = _get(config, "hidden_size")
    heads = _get(config, "num_attention_heads")
    mlp = _get(config, "intermediate_size")
    layers = _get(config, "num_hidden_layers")
    p = _get(config, "patch_size")
    c = _get(config, "num_channels")
    kind = _get(config, "attention_type")
    t = _get(config, "num_frames") if num_frames is None else num_frames
    size = _get(config, "image_size") if image_size is None else image_size
    h, w = (size, size) if isinstance(size, int) else size
    n = (h // p) * (w // p)
    dh = d // heads
    labels = len(getattr(config, "id2label", None) or {}) or getattr(config, "num_labels", 2)

    def linear(rows: int, k: int, m: int) -> float:
        return 2.0 * batch_size * rows * k * m

    def attention(num_seq: int, q_len: int, k_len: int) -> float:
        return 4.0 * batch_size * num_seq * heads * q_len * k_len * dh

    part = dict.fromkeys(LAYER_PARTS, 0.0)
    if kind == "divided_space_time":
        part["qkv_t"] = linear(n * t, d, 3 * d)
        part["attn_t"] = attention(n, t, t)
        part["out_t"] = linear(n * t, d, d)
        part["dense_t"] = 0.0 if algebra else linear(n * t, d, d)
        spatial_rows = 1 + n * t if algebra else t * (1 + n)
        part["qkv_s"] = linear(spatial_rows, d, 3 * d)
        part["attn_s"] = attention(t, 1 + n, 1 + n)
        part["out_s"] = linear(spatial_rows, d, d)
        mlp_rows = 1 + n * t
    elif kind == "joint_space_time":
        part["qkv_s"] = linear(1 + n * t, d, 3 * d)
        part["attn_s"] = attention(1, 1 + n * t, 1 + n * t)
        part["out_s"] = linear(1 + n * t, d, d)
        mlp_rows = 1 + n * t
    elif kind == "space_only":
        part["qkv_s"] = linear(t * (1 + n), d, 3 * d)
        part["attn_s"] = attention(t, 1 + n, 1 + n)
        part["out_s"] = linear(t * (1 + n), d, d)
        mlp_rows = t * (1 + n)
    else:
        raise ValueError(
            "count_flops: attention_type must be 'divided_space_time', 'joint_space_time' or "
            f"'space_only', got {kind!r}"
        )
    part["fc1"] = linear(mlp_rows, d, mlp)
    part["fc2"] = linear(mlp_rows, mlp, d)

    last = dict(part)
    if last_layer_cls_only:
        # Keys/values from every row, everything else on the CLS rows (one per clip; per frame when
        # each frame is its own sequence).
        cls_rows, key_rows = (t, t * (1 + n)) if kind == "space_only" else (1, 1 + n * t)
        last["qkv_s"] = linear(key_rows, d, 2 * d) + linear(cls_rows, d, d)
        if kind == "divided_space_time":
            last["attn_s"] = attention(t, 1, 1 + n)
        elif kind == "joint_space_time":
            last["attn_s"] = attention(1, 1, 1 + n * t)
        else:
            last["attn_s"] = attention(t, 1, 1 + n)
        last["out_s"] = linear(cls_rows, d, d)
        last["fc1"] = linear(cls_rows, d, mlp)
        last["fc2"] = linear(cls_rows, mlp, d)

    embeddings = linear(t * n, c * p * p, d)
    head = 0.0
    if classifier:
        head = linear(t if kind == "space_only" else 1, d, labels)
    total = embeddings + (layers - 1) * sum(part.values()) + sum(last.values()) + head
    return FlopCount(
        total=total, per_layer=part, last_layer=last, embeddings=embeddings, head=head, num_layers=layers
    )
