"""Model outputs that behave like ``transformers``' ``ModelOutput``.

Fields are reachable as attributes (``out.logits``), by name (``out["logits"]``) and by integer position
(``out[0]``), where positions skip the fields that are ``None``, so ``out[0]`` is the loss when there is
one and the logits otherwise, exactly as in transformers. ``to_tuple()`` gives the ``return_dict=False``
form. As there, an output can be rebuilt from its items (``type(out)(dict(out))``, what accelerate's
conversions do), and every output class is a pytree node (``torch.export``, ``torch.utils._pytree``).

The models return ``transformers``' own classes instead whenever ``transformers`` is loaded in the process
(``output_types``): code built on transformers checks ``isinstance(out, transformers.utils.ModelOutput)``
(its pipelines keep only a plain dict of anything else). This package never imports ``transformers`` first.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils import _pytree


def _flatten(output: ModelOutput) -> tuple[list[Any], list[str]]:
    return list(output.values()), list(output.keys())


def _unflatten(values, context: list[str], output_type: type) -> ModelOutput:
    return output_type(**dict(zip(context, values, strict=True)))


class ModelOutput(OrderedDict):
    _fields: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _pytree.register_pytree_node(
            cls,
            _flatten,
            functools.partial(_unflatten, output_type=cls),
            serialized_type_name=f"{cls.__module__}.{cls.__name__}",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
            # Rebuilt from its items, as transformers' ModelOutput allows (no field holds a mapping).
            args, kwargs = (), dict(args[0])
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} positional fields")
        values = dict(zip(self._fields, args, strict=False))
        for name, value in kwargs.items():
            if name not in self._fields:
                raise TypeError(f"{type(self).__name__} has no field {name!r}; fields: {self._fields}")
            if name in values:
                raise TypeError(f"{type(self).__name__} got field {name!r} twice")
            values[name] = value
        for name in self._fields:
            self.__setattr__(name, values.get(name))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._fields:
            if value is None:
                super().pop(name, None)
            else:
                is_new = name not in self
                super().__setitem__(name, value)
                if is_new:  # keep field order, so positions stay those of the return_dict=False tuple
                    for field in self._fields:
                        if field in self:
                            self.move_to_end(field)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._fields:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        self.__setattr__(key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(OrderedDict.__getitem__(self, k) for k in self.keys())

    def __reduce__(self):  # keep pickling/deepcopy working with the attribute mirror
        return (type(self), (), None, None, iter(self.items()))


class BaseModelOutput(ModelOutput):
    """Output of ``TimesformerModel``.

    Attributes:
        last_hidden_state: ``(batch, 1 + num_patches * frames, hidden)`` after the final LayerNorm
            (``(batch * frames, 1 + num_patches, hidden)`` for ``space_only``).
        hidden_states: tuple of ``num_hidden_layers + 1`` tensors of that shape (embedding output, then
            each layer's output, before the final LayerNorm), when requested.
        attentions: tuple of per-layer spatial attention maps ``(batch * frames, heads, 1 + num_patches,
            1 + num_patches)`` (joint: ``(batch, heads, L, L)``), when requested.
    """

    _fields = ("last_hidden_state", "hidden_states", "attentions")
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None


class ImageClassifierOutput(ModelOutput):
    """Output of ``TimesformerForVideoClassification`` (same class name as the reference's).

    Attributes:
        loss: scalar, when ``labels`` were given.
        logits: ``(batch, num_labels)`` (``(batch * frames, num_labels)`` for ``space_only``).
        hidden_states, attentions: as in ``BaseModelOutput``.
    """

    _fields = ("loss", "logits", "hidden_states", "attentions")
    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None


def output_types() -> tuple[type, type]:
    """``(BaseModelOutput, ImageClassifierOutput)`` for the models to return: ``transformers``' classes of
    those names (same fields, same behaviour) when ``transformers`` is already imported in this process, else
    this module's."""
    if "transformers" in sys.modules:
        upstream = sys.modules.get("transformers.modeling_outputs")
        # (An import cannot be traced: the models import it when built, so that compiled calls see it.)
        if upstream is None and not torch.compiler.is_compiling():
            try:
                upstream = importlib.import_module("transformers.modeling_outputs")
            except Exception:  # a broken or partial transformers: this package's classes serve as well
                upstream = None
        if upstream is not None:
            return upstream.BaseModelOutput, upstream.ImageClassifierOutput
    return BaseModelOutput, ImageClassifierOutput
