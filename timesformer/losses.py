"""Classification losses with ``transformers``' ``problem_type`` rules, and label validation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .configuration import TimesformerConfig

IGNORE_INDEX = -100  # CrossEntropyLoss's default, honoured as in the reference


def infer_problem_type(num_labels: int, labels: torch.Tensor) -> str:
    if num_labels == 1:
        return "regression"
    if num_labels > 1 and labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def _any_value(mask: torch.Tensor) -> bool:
    """``bool(mask.any())``; ``False`` for labels mapped by torch.func's vmap (per-sample gradients), where no
    branch on values can run (cross_entropy still refuses an index out of range)."""
    try:
        return bool(mask.any())
    except RuntimeError as exc:
        if "vmap" not in str(exc):
            raise
        return False


def classification_loss(
    config: TimesformerConfig,
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    num_labels: int | None = None,
) -> torch.Tensor:
    """Loss of ``logits`` ``(rows, num_labels)`` against ``labels``.

    As in transformers, a ``problem_type`` of ``None`` is inferred from the labels on the first call and
    stored in the config. Labels are checked first so that a shape or range error names what was
    expected instead of failing inside the loss (or broadcasting silently, as MSE would). Float labels of
    another precision than the logits promote the loss, as torch's losses do in transformers.

    Args:
        num_items_in_batch: the ``Trainer``'s count of labels over the batches of one optimizer step
            (gradient accumulation): the loss is summed and divided by it, so that the step averages over
            every label of them. ``None``: the mean over these labels.
        num_labels: the head's label count (the model's ``num_labels``, as transformers reads it); default
            ``config.num_labels``.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device} but the logits are on {logits.device}")
    rows = logits.shape[0]
    num_labels = config.num_labels if num_labels is None else num_labels
    if num_labels < 1:
        raise ValueError("labels were given but the model has num_labels=0 (no classification head)")
    if config.problem_type is None:
        config.problem_type = infer_problem_type(num_labels, labels)
    problem = config.problem_type
    reduction = "mean" if num_items_in_batch is None else "sum"

    def reduced(loss: torch.Tensor) -> torch.Tensor:
        if num_items_in_batch is None:
            return loss
        count = num_items_in_batch
        return loss / (count.to(loss.device) if isinstance(count, torch.Tensor) else count)

    def target(labels: torch.Tensor) -> torch.Tensor:
        # Integer targets are values in the logits' precision; float ones keep theirs (the loss promotes).
        return labels if labels.is_floating_point() else labels.to(logits.dtype)

    if problem == "regression":
        # Integer targets (ratings, counts) are values, as in transformers' MSELoss; bool and complex are not.
        if labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"regression labels must be real numbers, got dtype {labels.dtype}")
        if num_labels == 1:
            if labels.numel() != rows or labels.dim() > 2:
                raise ValueError(
                    f"regression labels must have shape ({rows},) or ({rows}, 1), got {tuple(labels.shape)}"
                )
            return reduced(F.mse_loss(logits.squeeze(), target(labels).squeeze(), reduction=reduction))
        if tuple(labels.shape) != (rows, num_labels):
            raise ValueError(
                f"regression labels must have shape ({rows}, {num_labels}), got {tuple(labels.shape)}"
            )
        return reduced(F.mse_loss(logits, target(labels), reduction=reduction))

    if problem == "single_label_classification":
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(
                f"single-label classification labels must be integer class indices, got {labels.dtype}"
            )
        if labels.numel() != rows:
            raise ValueError(
                f"single-label classification expects {rows} labels (one per logits row), got shape "
                f"{tuple(labels.shape)}"
            )
        flat = labels.reshape(-1).long()
        bad = ((flat < 0) | (flat >= num_labels)) & (flat != IGNORE_INDEX)
        expected = (
            f"single-label classification labels must be in [0, {num_labels}) (or {IGNORE_INDEX} to ignore)"
        )
        if torch.compiler.is_compiling():
            # A branch on the labels' values cannot be traced (fullgraph=True failed; otherwise a graph break):
            # the check becomes part of the graph.
            torch._assert_async(~bad.any(), expected)
        elif _any_value(bad):
            raise ValueError(f"{expected}, got {flat[bad][:5].tolist()}")
        return reduced(
            F.cross_entropy(logits.view(-1, num_labels), flat, ignore_index=IGNORE_INDEX, reduction=reduction)
        )

    # multi_label_classification
    if tuple(labels.shape) != (rows, num_labels):
        raise ValueError(
            f"multi-label classification labels must have shape ({rows}, {num_labels}), got {tuple(labels.shape)}"
        )
    if not labels.is_floating_point():
        raise ValueError(
            f"multi-label classification labels must be floating point, got dtype {labels.dtype}"
        )
    return reduced(F.binary_cross_entropy_with_logits(logits, labels, reduction=reduction))


def video_classification_loss(
    labels: torch.Tensor,
    pooled_logits: torch.Tensor,
    config: TimesformerConfig,
    num_items_in_batch: torch.Tensor | int | None = None,
    **kwargs,
) -> torch.Tensor:
    """The model's ``loss_function``: ``classification_loss`` with the arguments of ``transformers``'
    ``ForSequenceClassificationLoss`` (``loss_type`` ``"ForVideoClassification"`` maps to it there).

    Args:
        labels: as ``TimesformerForVideoClassification.forward`` takes them.
        pooled_logits: ``(rows, num_labels)``.
        config: its ``problem_type`` (inferred and stored when ``None``) and ``num_labels``.
        num_items_in_batch: see ``classification_loss``: every problem type's summed loss is divided by it
            (transformers divides only the single-label cross-entropy). Other keywords are ignored, as there.
    """
    if kwargs.get("ignore_index", IGNORE_INDEX) != IGNORE_INDEX:
        raise ValueError(
            f"ignore_index must be {IGNORE_INDEX} (the label the model ignores), got {kwargs['ignore_index']}"
        )
    return classification_loss(config, pooled_logits, labels, num_items_in_batch)
