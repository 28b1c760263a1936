"""TimeSformer configuration, compatible with Hugging Face ``config.json`` files.

``TimesformerConfig`` has the fields and defaults of ``transformers.TimesformerConfig`` plus the generic
classification fields (``id2label``, ``label2id``, ``num_labels``, ``problem_type``) and output flags
(``output_attentions``, ``output_hidden_states``, ``return_dict``). Keys of a ``config.json`` that this
package does not use are kept and written back unchanged.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import torch

from .activations import ACTIVATIONS

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"

ATTENTION_TYPES = ("divided_space_time", "space_only", "joint_space_time")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

SUPPORTED_ACTIVATIONS = tuple(ACTIVATIONS)

# The model's own fields, in the order transformers writes them (their defaults: ``__init__``'s).
MODEL_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "num_frames",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "qkv_bias",
    "attention_type",
    "drop_path_rate",
)

# The largest JSON file read (config.json, preprocessor_config.json, a shard index, adapter_config.json): far
# above any real one (an index of a 100B-parameter model is a few MB), so that a hostile or corrupt file is
# refused by its size instead of being read into memory.
MAX_JSON_BYTES = 64 * 2**20


def refuse_push_to_hub(push_to_hub: bool) -> None:
    """``save_pretrained``'s ``push_to_hub``: only ``False`` (this package never uploads)."""
    if push_to_hub:
        raise ValueError(
            "save_pretrained: push_to_hub=True is not supported: save, then upload the folder with "
            "huggingface_hub.upload_folder"
        )


def no_push_to_hub(owner: object) -> None:
    """``push_to_hub`` of a config or model: refused, naming the two calls that do it."""
    raise NotImplementedError(
        f"{type(owner).__name__}.push_to_hub is not provided (this package never uploads): call "
        "save_pretrained(folder), then huggingface_hub.upload_folder(repo_id=..., folder_path=folder)"
    )


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in ``path``; any other content (syntax, not UTF-8, deep nesting, a 5000-digit number,
    over ``MAX_JSON_BYTES``, not an object) is a ``ValueError`` naming the file as a ``what``."""
    size = os.path.getsize(path)
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {size:,} bytes, over the {MAX_JSON_BYTES:,} a {what} may have")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a valid {what} ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# What transformers' PretrainedConfig answers for fields this config does not store (read by tools).
_TRANSFORMERS_DEFAULTS: dict[str, Any] = {
    "_commit_hash": None,  # (transformers 5.17's pipeline reads it)
    "architectures": None,
    "chunk_size_feed_forward": 0,  # (transformers' apply_chunking_to_forward reads it; 0: no chunking)
    "dtype": None,
    "is_encoder_decoder": False,
}


def _is_default(name: str, value: Any) -> bool:
    """Whether ``value`` is transformers' default of the generic key ``name`` (``0`` is not ``False``)."""
    default = _TRANSFORMERS_DEFAULTS[name]
    return type(value) is type(default) and value == default


# Keys set through properties of their own.
_LABEL_AND_DTYPE_KEYS = ("id2label", "label2id", "num_labels", "dtype", "torch_dtype")

# Generic fields of transformers' PreTrainedConfig that change what the models compute or return.
GENERIC_FIELDS: dict[str, Any] = {
    "problem_type": None,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
}


def _field_names(extra_keys) -> set[str]:
    """Names an override may set: fields, not any attribute (a property such as ``head_dim`` or a method such
    as ``to_dict`` is not a config key), and the config's own extra keys."""
    return {
        *MODEL_FIELDS,
        *GENERIC_FIELDS,
        *extra_keys,
        *_LABEL_AND_DTYPE_KEYS,
        *(k for k in _TRANSFORMERS_DEFAULTS if not k.startswith("_")),
        "attn_implementation",
    }


# transformers' attention names -> this package's backends (flash_attention_2: the fused kernels where they run).
ATTN_IMPLEMENTATIONS = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "auto"}


def attn_backend(name: Any, what: str = "attn_implementation") -> str:
    """The backend of ``name``: one of transformers' attention names (``ATTN_IMPLEMENTATIONS``) or of this
    package's backends (``"triton"``, ``"auto"``, ...); ``what`` names the setting in the error."""
    from .backends import BACKEND_CHOICES

    if isinstance(name, str) and name in ATTN_IMPLEMENTATIONS:
        return ATTN_IMPLEMENTATIONS[name]
    if isinstance(name, str) and name in BACKEND_CHOICES:
        return name
    choices = sorted({*ATTN_IMPLEMENTATIONS, *BACKEND_CHOICES})
    raise ValueError(f"{what} must be one of {choices}, got {name!r}")


# Instance attributes of the config itself (everything else set on it is an extra key).
_OWN_ATTRIBUTES = frozenset({*MODEL_FIELDS, *GENERIC_FIELDS, "name_or_path", "label2id"})


# Upper bounds checked before anything is allocated: far above every published TimeSformer (base 768 wide,
# L 96 frames, HR 448 px), low enough that a typo or a hostile config.json fails with the field's name
# instead of a long initialization or an allocator error.
LIMITS = {
    "num_channels": 64,
    "num_frames": 4096,
    "hidden_size": 16384,
    "num_hidden_layers": 512,
    "num_attention_heads": 1024,
    "intermediate_size": 131072,
    "image_size": 8192,
}
MAX_LABELS = 1_000_000


class Preset(NamedTuple):
    title: str
    fields: dict[str, Any]  # TimesformerConfig keyword arguments on top of the defaults (TimeSformer-base)


# Model shapes by name: the published TimeSformer checkpoints' (K400 heads, 400 labels) and small ones for
# quick looks and tests. Used by ``timesformer demo --preset``, the benchmarks and the compile sweep.
PRESETS: dict[str, Preset] = {
    "base": Preset("TimeSformer-base 8x224^2", dict(num_frames=8, image_size=224)),
    "hr": Preset("TimeSformer-HR 16x448^2", dict(num_frames=16, image_size=448)),
    "large": Preset("TimeSformer-L 96x224^2", dict(num_frames=96, image_size=224)),
    # The token layout of base at a fraction of the work: a quick look on a CPU.
    "small": Preset(
        "small 8x112^2",
        dict(
            hidden_size=192, num_attention_heads=3, intermediate_size=768, num_hidden_layers=4, image_size=112
        ),
    ),
    # Seconds on a CPU: tests and smoke runs.
    "tiny": Preset(
        "tiny 4x32^2 (smoke)",
        dict(
            num_frames=4,
            image_size=32,
            patch_size=8,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=3,
            intermediate_size=96,
        ),
    ),
    # The bundled model's shape (timesformer/assets/synthetic-motion, scripts/train_synthetic_model.py).
    "synthetic-motion": Preset(
        "synthetic-motion 8x32^2",
        dict(
            num_frames=8,
            image_size=32,
            patch_size=8,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=256,
        ),
    ),
}


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return value, value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _label2id(value: Any) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in dict(value).items()}
    except (TypeError, ValueError):
        raise ValueError(f"label2id must map class names to class indices, got {value!r:.200}") from None


class TimesformerConfig:
    """Configuration of a TimeSformer model (same fields and defaults as ``transformers.TimesformerConfig``).

    Args:
        image_size: input resolution the position embeddings were trained for (int or (height, width)).
        patch_size: patch size of the patch embedding (int or (height, width)).
        num_channels: input channels.
        num_frames: frames the time embedding was trained for.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: transformer sizes.
        hidden_act: MLP activation, one of ``SUPPORTED_ACTIVATIONS``.
        hidden_dropout_prob, attention_probs_dropout_prob, drop_path_rate: training regularization.
        initializer_range: std of the truncated normal used to initialize weights.
        layer_norm_eps: epsilon of every LayerNorm.
        qkv_bias: whether the qkv projections have a bias.
        attention_type: ``"divided_space_time"``, ``"space_only"`` or ``"joint_space_time"``.
        id2label / label2id / num_labels: classification labels (``num_labels`` defaults to 2).
        problem_type: ``None`` (inferred from the labels on the first call, as in transformers),
            ``"regression"``, ``"single_label_classification"`` or ``"multi_label_classification"``.
        **kwargs: any other key is kept as an attribute and written back by ``to_dict``.

    Raises:
        ValueError: naming the field and the value, for values the model cannot run with.
    """

    model_type = "timesformer"
    # As transformers' (its Auto classes read it): no nested configs.
    sub_configs: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        num_channels: int = 3,
        num_frames: int = 8,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        attention_type: str = "divided_space_time",
        drop_path_rate: float = 0,
        *,
        id2label: Mapping[Any, str] | None = None,
        label2id: Mapping[str, Any] | None = None,
        num_labels: int | None = None,
        problem_type: str | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> None:
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.num_frames = num_frames
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.attention_type = attention_type
        self.drop_path_rate = drop_path_rate
        self.problem_type = problem_type
        self.output_attentions = output_attentions
        self.output_hidden_states = output_hidden_states
        self.return_dict = return_dict

        kwargs.pop("model_type", None)
        # As transformers': the attention a model built from this config uses, not written to config.json.
        attn_implementation = kwargs.pop("attn_implementation", None)
        if attn_implementation is not None:
            self._attn_implementation = attn_implementation
        if "torch_dtype" in kwargs:  # transformers' older name of the field (dtype wins when both are given)
            torch_dtype = kwargs.pop("torch_dtype")
            if kwargs.get("dtype") is None:  # (to_dict's "dtype": None, rebuilt with a torch_dtype override)
                kwargs["dtype"] = torch_dtype
        # Where the config was read from, as transformers' (not written to config.json).
        self.name_or_path = str(kwargs.pop("name_or_path", kwargs.pop("_name_or_path", "")))
        # Keys this package does not interpret ("architectures", "dtype", "transformers_version", ...).
        self._extra: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in _TRANSFORMERS_DEFAULTS and _is_default(key, value):
                continue  # (to_dict's own "architectures": None read back: not a key of this config's)
            self._extra[key] = value
        if "dtype" in self._extra:
            self.dtype = self._extra["dtype"]

        if id2label is not None:
            self.id2label = id2label
            if num_labels is not None and num_labels != len(self.id2label):
                logger.warning(
                    "num_labels=%r differs from the %d entries of id2label; using generic labels",
                    num_labels,
                    len(self.id2label),
                )
                self.num_labels = num_labels
        else:
            self.num_labels = 2 if num_labels is None else num_labels
        if label2id is not None and id2label is not None and len(self.id2label) == len(id2label):
            self.label2id = _label2id(label2id)
        self.validate()

    # ------------------------------------------------------------------ labels
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LABELS:
            raise ValueError(f"num_labels must be an int from 0 to {MAX_LABELS:,}, got {value!r}")
        if getattr(self, "id2label", None) is None or len(self.id2label) != value:
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def id2label(self) -> dict[int, str]:
        return self._id2label

    @id2label.setter
    def id2label(self, value: Mapping[Any, str]) -> None:
        if not isinstance(value, Mapping):
            raise ValueError(f"id2label must be a mapping of class index -> name, got {type(value).__name__}")
        if len(value) > MAX_LABELS:
            raise ValueError(
                f"id2label has {len(value):,} entries; at most {MAX_LABELS:,} classes are supported"
            )
        labels = {}
        for k, v in value.items():
            try:
                index = int(k)
            except (TypeError, ValueError):
                raise ValueError(f"id2label keys must be class indices 0..n-1, got {k!r}") from None
            if isinstance(k, float) or str(index) != str(k).strip():
                raise ValueError(f"id2label keys must be class indices 0..n-1, got {k!r}")
            # A name read from JSON: a string, or a number (written for a class named by its code); None, a
            # list or a dict is a broken file whose str() would be the "name" classify prints.
            # (NumPy's integers too: names taken from an array of class codes.)
            if isinstance(v, bool) or not isinstance(v, (str, numbers.Integral)):
                raise ValueError(f"id2label names must be strings, got {v!r} for class {index}")
            labels[index] = str(v) if isinstance(v, str) else str(int(v))
        if sorted(labels) != list(range(len(labels))):
            bad = sorted(set(labels) - set(range(len(labels))))[:5]
            raise ValueError(
                f"id2label keys must be 0..{len(labels) - 1} (one per class), got {bad} among them"
            )
        self._id2label = labels
        self.label2id = {v: k for k, v in self._id2label.items()}

    # ------------------------------------------------------------- geometry
    @property
    def image_hw(self) -> tuple[int, int]:
        """``image_size`` as (height, width)."""
        return _pair(self.image_size, "image_size")

    @property
    def patch_hw(self) -> tuple[int, int]:
        """``patch_size`` as (height, width)."""
        return _pair(self.patch_size, "patch_size")

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Patch grid (rows, columns) the position embeddings were trained for."""
        (ih, iw), (ph, pw) = self.image_hw, self.patch_hw
        return ih // ph, iw // pw

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_hw
        return gh * gw

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    # ----------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value the model cannot run with."""

        def positive_int(name: str) -> None:
            value, limit = getattr(self, name), LIMITS[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
                raise ValueError(f"{name} must be an int from 1 to {limit:,}, got {value!r}")

        for name in (n for n in LIMITS if n != "image_size"):  # (image_size: a pair, checked below)
            positive_int(name)
        (ih, iw), (ph, pw) = self.image_hw, self.patch_hw
        if min(ih, iw, ph, pw) <= 0 or max(ih, iw) > LIMITS["image_size"]:
            raise ValueError(
                f"image_size and patch_size must be positive and image_size at most {LIMITS['image_size']:,}, "
                f"got image_size={self.image_size!r}, patch_size={self.patch_size!r}"
            )
        if ih % ph or iw % pw:
            raise ValueError(
                f"image_size must be divisible by patch_size, got image_size={self.image_size!r} "
                f"and patch_size={self.patch_size!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size must be divisible by num_attention_heads, got hidden_size={self.hidden_size} "
                f"and num_attention_heads={self.num_attention_heads}"
            )
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {self.attention_type!r}")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {SUPPORTED_ACTIVATIONS}, got {self.hidden_act!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
        if (
            isinstance(self.layer_norm_eps, bool)
            or not isinstance(self.layer_norm_eps, (int, float))
            or not (0 < self.layer_norm_eps < math.inf)
        ):
            raise ValueError(f"layer_norm_eps must be a positive finite number, got {self.layer_norm_eps!r}")
        value = self.initializer_range
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"initializer_range must be a positive finite number, got {value!r}")
        for name in ("qkv_bias", "output_attentions", "output_hidden_states", "return_dict"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"problem_type must be None or one of {PROBLEM_TYPES}, got {self.problem_type!r}"
            )

    # ------------------------------------------------------------ (de)serialization
    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not found normally: expose kept extra keys like transformers does, and
        # its defaults for the generic ones code reads without checking.
        extra = self.__dict__.get("_extra")
        if extra is not None and name in extra:
            return extra[name]
        if name in _TRANSFORMERS_DEFAULTS:
            return _TRANSFORMERS_DEFAULTS[name]
        if name == "transformers_version":  # (a config.json of transformers' has it, kept as an extra key)
            return None
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # A name that is no field of this class (architectures, a setting of the user's own) is kept as an
        # extra key, so that to_dict and save_pretrained write it, as transformers writes such attributes.
        extra = self.__dict__.get("_extra")
        own = name.startswith("_") or name in _OWN_ATTRIBUTES or hasattr(type(self), name)
        if extra is not None and not own:
            extra[name] = value
            return
        super().__setattr__(name, value)

    def __copy__(self) -> TimesformerConfig:
        # The extra keys are this config's own: a copy that sets one must not change the original (as
        # transformers' configs, whose attributes are each their own).
        copied = type(self).__new__(type(self))
        copied.__dict__.update(self.__dict__)
        copied.__dict__["_extra"] = dict(self._extra)
        copied.__dict__["label2id"] = dict(self.label2id)
        return copied

    @property
    def _name_or_path(self) -> str:
        return self.name_or_path

    @_name_or_path.setter
    def _name_or_path(self, value: str | os.PathLike) -> None:
        self.name_or_path = str(value)

    @property
    def _attn_implementation(self) -> str | None:
        """The attention a model of this config was asked for (transformers' field): ``None`` until a model is
        built or it is set; then transformers' name where there is one (``"eager"``, ``"sdpa"``,
        ``"flash_attention_2"``), else this package's backend (``"auto"``, ``"triton"``). A model built from the
        config uses it; ``set_backend`` and ``set_attn_implementation`` update it."""
        return self.__dict__.get("_attn_implementation_internal")

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | None) -> None:
        if value is not None:
            attn_backend(value)
        self.__dict__["_attn_implementation_internal"] = value

    @property
    def dtype(self) -> Any:
        """The weights' dtype the checkpoint records (``None`` when it records none): a ``torch.dtype``, written
        to ``config.json`` as its name, as in transformers."""
        return self._extra.get("dtype")

    @dtype.setter
    def dtype(self, value: Any) -> None:
        name = value.removeprefix("torch.") if isinstance(value, str) else None
        if name and isinstance(getattr(torch, name, None), torch.dtype):
            value = getattr(torch, name)
        self._extra["dtype"] = value

    @property
    def torch_dtype(self) -> Any:
        """``dtype`` under transformers' older name."""
        return self.dtype

    @torch_dtype.setter
    def torch_dtype(self, value: Any) -> None:
        self.dtype = value

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> TimesformerConfig:
        """The config itself, as for every model that is not made of several (transformers' API)."""
        return self

    def to_diff_dict(self) -> dict[str, Any]:
        """``to_dict`` less the generic fields at their defaults and ``_name_or_path`` (what transformers writes
        for a model config)."""
        out = self._stored()
        for name, default in GENERIC_FIELDS.items():
            if out.get(name) == default:
                del out[name]
        return out

    def _stored(self) -> dict[str, Any]:
        """``to_dict`` less ``_name_or_path`` (where it was read from) and transformers' generic keys this config
        does not set: what ``config.json`` holds."""
        out = self.to_dict()
        del out["_name_or_path"]
        for name in _TRANSFORMERS_DEFAULTS:  # (written where set: "architectures")
            if name in out and _is_default(name, out[name]):
                del out[name]
        return out

    def update(self, values: Mapping[str, Any]) -> None:
        """Set fields from ``values`` (unknown keys are kept as extra keys). All or nothing: values that make
        an invalid config raise and leave this one as it was."""
        values = dict(values)
        name = str(values.pop("name_or_path", self.name_or_path))
        base = self.to_dict()
        if "id2label" in values or values.get("num_labels", self.num_labels) != self.num_labels:
            # As setting num_labels or id2label: the maps not given are made anew (generic ones for another
            # count, label2id from id2label); the old ones would outvote the new count or names.
            for key in ("id2label", "label2id"):
                if key not in values:
                    base.pop(key, None)
        updated = type(self).from_dict({**base, **values})  # checks the result
        if "label2id" in values and "id2label" not in values:
            updated.label2id = _label2id(values["label2id"])  # set after the count, as transformers sets it
        self.__dict__.update(updated.__dict__)
        self.name_or_path = name

    def update_from_string(self, text: str) -> None:
        """``"num_frames=4,qkv_bias=false"``: each value parsed as the type of the field's current value."""
        values: dict[str, Any] = {}
        for item in text.split(","):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or key not in {*MODEL_FIELDS, *GENERIC_FIELDS, *self._extra}:
                raise ValueError(f"update_from_string: expected 'field=value' of known fields, got {item!r}")
            old = getattr(self, key)
            if isinstance(old, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"update_from_string: {key} takes true or false, got {raw!r}")
                values[key] = raw.lower() in ("true", "1")
            elif isinstance(old, int):
                values[key] = int(raw)
            elif isinstance(old, float):
                values[key] = float(raw)
            else:
                values[key] = raw
        self.update(values)

    def to_dict(self) -> dict[str, Any]:
        """All fields (including kept unknown keys) as a JSON-serializable dict, transformers' key names."""
        out: dict[str, Any] = dict(copy.deepcopy(self._extra))
        for key in ("dtype", "torch_dtype"):
            if key in out and not isinstance(out[key], (str, type(None))):
                out[key] = str(out[key]).removeprefix("torch.")  # a torch.dtype, written as transformers does
        for name in MODEL_FIELDS:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        out["id2label"] = dict(self.id2label)  # int keys, as transformers (JSON writes them as strings)
        out["label2id"] = dict(self.label2id)
        for name in GENERIC_FIELDS:
            out[name] = getattr(self, name)
        for name, default in _TRANSFORMERS_DEFAULTS.items():  # transformers' generic keys (code reads them)
            if not name.startswith("_"):
                out.setdefault(name, default)
        out["_name_or_path"] = self.name_or_path
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))

    def to_json_string(self, use_diff: bool = True) -> str:
        """The config as JSON: ``to_diff_dict`` (``use_diff``, as ``transformers``) or every field."""
        return (
            json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"
        )

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string(use_diff=use_diff))

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], **overrides: Any
    ) -> TimesformerConfig | tuple[TimesformerConfig, dict[str, Any]]:
        """The config of ``data`` (a ``config.json``'s keys; unknown ones are kept) with ``overrides``. With
        ``return_unused_kwargs=True``, as ``transformers``: overrides that are not fields of the config are not
        set and come back as ``(config, unused)``."""
        data = dict(data)
        model_type = data.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(f"config has model_type={model_type!r}, expected {cls.model_type!r}")
        unused: dict[str, Any] | None = None
        if overrides.pop("return_unused_kwargs", False):
            fields = _field_names(data)
            unused = {k: v for k, v in overrides.items() if k not in fields}
            overrides = {k: v for k, v in overrides.items() if k not in unused}
        data.update(overrides)
        if "num_labels" in overrides and "id2label" not in overrides:
            data.pop("id2label", None)
            data.pop("label2id", None)
        config = cls(**data)
        return config if unused is None else (config, unused)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> TimesformerConfig:
        return cls.from_dict(read_json_object(path, "JSON config file"))

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        subfolder: str = "",
        local_files_only: bool = False,
        return_unused_kwargs: bool = False,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
        trust_remote_code: bool | None = None,
        **overrides: Any,
    ) -> TimesformerConfig | tuple[TimesformerConfig, dict[str, Any]]:
        """Read ``config.json`` from a local directory (or a config file path, or a hub id; ``subfolder``,
        ``local_files_only``, ``revision``, ``cache_dir``, ``token`` and ``force_download`` as in
        ``from_pretrained`` of the models; ``trust_remote_code`` has no effect), with ``overrides`` of its fields.

        Overrides that are not attributes of the config are not set, as in transformers: with
        ``return_unused_kwargs`` they come back as ``(config, unused)``, without it a warning names them
        (transformers drops them silently)."""
        from .loading import model_file, resolve_pretrained_dir

        if os.path.isfile(path) and not subfolder:
            config = cls.from_json_file(path)
        else:
            hub = {
                "revision": revision,
                "cache_dir": cache_dir,
                "token": token,
                "force_download": force_download,
            }
            directory = resolve_pretrained_dir(path, subfolder, local_files_only, [CONFIG_NAME], **hub)
            config = cls.from_json_file(model_file(directory, CONFIG_NAME))
        fields = _field_names(config._extra)
        unused = {k: v for k, v in overrides.items() if k not in fields}
        overrides = {k: v for k, v in overrides.items() if k not in unused}
        if unused and not return_unused_kwargs:
            logger.warning(
                "%s.from_pretrained: ignored %s: not fields of the config",
                cls.__name__,
                ", ".join(sorted(unused)),
            )
        if overrides:
            config = cls.from_dict(config.to_dict(), **overrides)
        return (config, unused) if return_unused_kwargs else config

    def save_pretrained(
        self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any
    ) -> None:
        """Write ``save_directory/config.json`` with every field but ``_name_or_path`` and transformers' generic
        keys this config does not set (``transformers`` leaves out generic fields at their defaults; both load
        the same). ``push_to_hub`` only ``False`` (this package never uploads);
        ``kwargs`` are ``transformers``' upload options, unused without it."""
        refuse_push_to_hub(push_to_hub)
        if isinstance(self.drop_path_rate, float):  # 0.0 too: the check is of the JSON type
            logger.warning(
                "drop_path_rate=%r: transformers 5 declares drop_path_rate an int and refuses to load this "
                "config.json (this package loads it); drop path does nothing at inference, so set "
                "config.drop_path_rate = 0 (an int) before saving a model for transformers",
                self.drop_path_rate,
            )
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            f.write(json.dumps(self._stored(), indent=2, sort_keys=True) + "\n")

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> None:
        no_push_to_hub(self)

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoConfig") -> None:
        """Not provided: it marks hub remote code, and this package is installed instead."""
        raise NotImplementedError(
            f"{cls.__name__}.register_for_auto_class is not provided (it is for hub remote code; this package is "
            f"installed): call transformers.AutoConfig.register('timesformer', {cls.__name__}, exist_ok=True)"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TimesformerConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
