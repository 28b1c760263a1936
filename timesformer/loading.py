"""Reading and writing Hugging Face checkpoints (``config.json`` + safetensors or ``.bin`` weights)."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .configuration import CONFIG_NAME, TimesformerConfig, attn_backend, read_json_object

PREPROCESSOR_NAME = "preprocessor_config.json"
# Where transformers 5 saves a video processor (TimesformerVideoProcessor); its AutoVideoProcessor reads it first.
VIDEO_PREPROCESSOR_NAME = "video_preprocessor_config.json"
PREPROCESSOR_NAMES = (VIDEO_PREPROCESSOR_NAME, PREPROCESSOR_NAME)

if TYPE_CHECKING:
    from .modeling import TimesformerPreTrainedModel

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# Order of preference, as transformers.
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)


def weight_files(variant: str | None = None, use_safetensors: bool | None = None) -> list[tuple[str, bool]]:
    """The weight file names to look for, in order, each with whether it is a shard index: ``WEIGHT_FILES``
    with ``variant`` spelled in as transformers does (``model.fp16.safetensors``,
    ``model.safetensors.index.fp16.json``); safetensors only for ``use_safetensors=True``, pickles only for
    ``False``."""
    if variant is not None and (not isinstance(variant, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", variant)):
        raise ValueError(
            f"variant must be a name of letters, digits, '_' and '-' (e.g. 'fp16'), got {variant!r}"
        )
    names = []
    for name in WEIGHT_FILES:
        safe = name.startswith("model.")
        if use_safetensors is not None and safe != bool(use_safetensors):
            continue
        index = name.endswith(".index.json")
        if variant is not None:
            head, tail = name.rsplit(".", 1)
            name = f"{head}.{variant}.{tail}"
        names.append((name, index))
    return names


def _shard_pattern(variant: str | None) -> re.Pattern:
    """Numbered shard names of a save with ``variant`` (transformers': ``model.fp16-00001-of-00002.safetensors``)."""
    infix = "" if variant is None else re.escape("." + variant)
    return re.compile(rf"(model|pytorch_model){infix}-\d{{5}}-of-\d{{5}}\.(safetensors|bin)")


# The dtypes a model runs in (float8 and other storage formats have no kernels or matmuls to run with).
MODEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

PREFIX = "timesformer."
HEAD_PREFIX = "classifier."


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint that cannot be loaded exactly: missing, unexpected or misshaped keys, unreadable files."""


# --------------------------------------------------------------------------- locating files


# Where a hub snapshot comes from (huggingface_hub's snapshot_download keywords, as transformers' from_pretrained
# takes them); a local directory ignores them, as in transformers.
HUB_OPTIONS = {"revision": None, "cache_dir": None, "token": None, "force_download": False}


# What a hub snapshot fetches by default: the configs and every weight file.
MODEL_FILES = (CONFIG_NAME, *PREPROCESSOR_NAMES, "*.safetensors", "*.bin", "*.index.json", "*.index.*.json")


def hub_weight_files(variant: str | None, use_safetensors: bool | None) -> list[str]:
    """The config and the weight files (with their numbered shards) of one format and variant, as
    ``snapshot_download`` patterns: a variant or format asked for is all that is downloaded."""
    files = [CONFIG_NAME]
    for name, index in weight_files(variant, use_safetensors):
        files.append(name)
        if not index:
            stem, suffix = os.path.splitext(name)
            files.append(f"{stem}-*-of-*{suffix}")
    return files


def resolve_pretrained_dir(
    path: str | os.PathLike,
    subfolder: str = "",
    local_files_only: bool = False,
    files: Sequence[str] = MODEL_FILES,
    **hub: Any,
) -> str:
    """A local directory for ``path`` (and ``subfolder`` of it): itself when it is a directory, else a hub
    snapshot of ``files`` (names or patterns; from the local cache only with ``local_files_only``; ``hub``:
    ``HUB_OPTIONS``)."""
    unknown = sorted(set(hub) - set(HUB_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected hub option(s) {unknown}; expected some of {sorted(HUB_OPTIONS)}")
    if subfolder:
        if os.path.isabs(subfolder) or os.pardir in os.path.normpath(subfolder).split(os.sep):
            raise ValueError(f"subfolder must be a relative folder inside the model, got {subfolder!r}")
        prefix = os.path.normpath(subfolder).replace(os.sep, "/")
        inside = [f"{prefix}/{f}" for f in files]
        directory = resolve_pretrained_dir(path, local_files_only=local_files_only, files=inside, **hub)
        inner = os.path.join(directory, subfolder)
        if not os.path.isdir(inner):
            raise FileNotFoundError(f"no subfolder {subfolder!r} in {directory!r}")
        return inner
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    looks_like_hub_id = (
        path.count("/") == 1 and not path.startswith((".", "/", "~")) and not os.path.exists(path)
    )
    if not looks_like_hub_id:
        raise FileNotFoundError(
            f"{path!r} is not a directory; expected a directory holding {CONFIG_NAME} and one of {WEIGHT_FILES}"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{path!r} is not a local directory, and resolving it as a Hugging Face hub id needs the optional "
            "package huggingface_hub (pip install huggingface_hub); or pass a directory holding "
            f"{CONFIG_NAME} and one of {WEIGHT_FILES}"
        ) from None
    # Only what was asked for is passed: the hub's own defaults (and HF_HUB_OFFLINE, HF_TOKEN) apply otherwise.
    options = {k: v for k, v in hub.items() if v != HUB_OPTIONS[k]}
    if local_files_only:
        options["local_files_only"] = True
    try:
        return snapshot_download(
            repo_id=path,
            **options,
            allow_patterns=list(files),
        )
    except Exception as e:  # network, auth, offline cache miss: say what was looked for
        raise FileNotFoundError(
            f"could not resolve {path!r} as a local directory or a hub model id: {type(e).__name__}: {e}"
        ) from e


def _allowed_roots(directory: str) -> list[str]:
    """Where the weight files of ``directory`` may live once symlinks are resolved: the directory itself, and
    for a Hugging Face hub snapshot (``<repo>/snapshots/<revision>``, whose files link to ``<repo>/blobs``)
    the repository's blob store."""
    real = os.path.realpath(directory)
    roots = [real]
    # The snapshot may be an ancestor: a subfolder of a hub repository (``snapshots/<revision>/sub``).
    child, parent = real, os.path.dirname(real)
    while parent != child:
        if os.path.basename(parent) == "snapshots":
            roots.append(os.path.join(os.path.dirname(parent), "blobs"))
            break
        child, parent = parent, os.path.dirname(parent)
    return roots


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, root]) == root for root in roots)


def model_file(directory: str, name: str) -> str:
    """``directory/name``, refused when a symlink takes it outside the model directory (or its hub blob
    store), as the weight files are: a model folder from elsewhere must not read (and quote in its errors)
    files such as ``~/.aws/credentials``."""
    path = os.path.join(directory, name)
    if os.path.lexists(path) and not _inside(path, _allowed_roots(directory)):
        raise CheckpointError(f"{path} resolves (through a symlink) outside the model directory")
    return path


def preprocessor_file(directory: str) -> str | None:
    """The preprocessing config of a model directory, in ``transformers`` 5's order: a video processor's
    ``video_preprocessor_config.json``, else an image processor's ``preprocessor_config.json``; ``None``
    without either."""
    for name in PREPROCESSOR_NAMES:
        path = model_file(directory, name)
        if os.path.isfile(path):
            return path
        if os.path.lexists(path):  # not to be passed over for the default preprocessing, silently
            kind = "a folder" if os.path.isdir(path) else "a broken link" if os.path.islink(path) else None
            raise CheckpointError(
                f"{path}: expected a preprocessing config file, got {kind or 'not a regular file (a FIFO?)'}"
            )
    return None


def _shard_path(directory: str, roots: list[str], index: str, shard: str) -> str:
    """The file a shard index names, refused unless it is a plain file name inside ``directory``."""
    if not shard or "\0" in shard:
        raise CheckpointError(f"{index}: shard names must be non-empty strings, got {shard!r}")
    if os.path.isabs(shard) or os.path.normpath(shard).split(os.sep)[0] == os.pardir:
        raise CheckpointError(
            f"{index}: shard {shard!r} is outside the model directory; expected a file name in it"
        )
    path = os.path.join(directory, shard)
    if not _inside(path, roots):
        raise CheckpointError(
            f"{index}: shard {shard!r} resolves (through a symlink) outside the model directory"
        )
    return path


def _weight_map(directory: str, names: list[tuple[str, bool]]) -> tuple[str, dict[str, list[str]] | None]:
    """``(file, None)`` for the first of ``names`` there as a single weights file, or ``(index file, {shard
    path: [keys]})`` for a sharded one."""
    roots = _allowed_roots(directory)
    for name, index in names:
        candidate = os.path.join(directory, name)
        if not os.path.isfile(candidate):
            continue
        model_file(directory, name)  # not a symlink out of the directory
        if not index:
            return candidate, None
        try:
            weight_map = read_json_object(candidate, "shard index")["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{candidate}: not a valid shard index ({type(e).__name__}: {e})") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(
                f"{candidate}: weight_map must be a non-empty object of parameter name -> shard file name, "
                f"got {type(weight_map).__name__}"
            )
        by_name: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{candidate}: weight_map keys must be parameter names, got {key!r}")
            if not isinstance(shard, str):
                raise CheckpointError(f"{candidate}: shard names must be non-empty strings, got {shard!r}")
            by_name.setdefault(shard, []).append(key)
        # Each shard name checked once, however many keys it holds.
        return candidate, {
            _shard_path(directory, roots, candidate, name): keys for name, keys in by_name.items()
        }
    raise FileNotFoundError(f"no weights in {directory!r}: looked for {', '.join(n for n, _ in names)}")


def _torch_load(path: str):
    """A pickled state dict, memory-mapped (the zip format of torch >= 1.6): a tensor is read only when used,
    so a small file declaring huge tensors (sparse, or keys the model does not have) allocates nothing
    before the keys and shapes are checked. Older files are read whole."""
    import zipfile

    if not _utf8(path):  # torch takes only UTF-8 names: the open file instead, read whole
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    mmap = zipfile.is_zipfile(path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _utf8(path: str) -> bool:
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes of another encoding in a name, kept by Python as surrogate escapes
        return False
    return True


def load_safetensors(path: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, also for a path that is not UTF-8 (which safetensors refuses): opened
    here, and mapped through ``/proc/self/fd`` where there is one, else read whole."""
    from safetensors.torch import load, load_file

    if _utf8(path):
        return load_file(path)
    with open(path, "rb") as f:
        if os.path.isdir("/proc/self/fd"):
            return load_file(f"/proc/self/fd/{f.fileno()}")
        return load(f.read())


def save_safetensors(tensors: dict[str, torch.Tensor], path: str) -> None:
    """``safetensors.torch.save_file`` (metadata ``format: pt``, as ``transformers`` writes it), also to a path
    that is not UTF-8."""
    from safetensors.torch import save, save_file

    if _utf8(path):
        save_file(tensors, path, metadata={"format": "pt"})
    else:
        with open(path, "wb") as f:
            f.write(save(tensors, metadata={"format": "pt"}))


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file {path} is missing (named by the shard index)")
    try:
        if path.endswith(".safetensors"):
            return load_safetensors(path)
        state = _torch_load(path)
    except Exception as e:  # safetensors and pickle report corruption with many exception types
        raise CheckpointError(
            f"could not read weights file {path}: {type(e).__name__}: {e} (corrupt or truncated?)"
        ) from e
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"weights file {path} does not hold a state dict of tensors (names to tensors)")
    odd = [k for k, v in state.items() if v.layout != torch.strided or v.is_meta]
    if odd:  # (load_state_dict's own errors named neither the file nor what was wrong)
        raise CheckpointError(
            f"weights file {path}: {odd[:5]} are not dense tensors that hold their values (sparse, or meta)"
        )
    return dict(state)


def read_state_dict(
    directory: str, variant: str | None = None, use_safetensors: bool | None = None
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (``variant``, ``use_safetensors``: see ``weight_files``). For a sharded
    checkpoint, each key comes from the shard the index assigns it to (a key that shard lacks is an error;
    other keys a shard holds are not read into the result)."""
    file, by_shard = _weight_map(directory, weight_files(variant, use_safetensors))
    if by_shard is None:
        return _read_weights(file)
    state: dict[str, torch.Tensor] = {}
    for shard, keys in sorted(by_shard.items()):
        tensors = _read_weights(shard)
        missing = [k for k in keys if k not in tensors]
        if missing:
            raise CheckpointError(
                f"{file}: {len(missing)} key(s) assigned to {os.path.basename(shard)} are not in it: {missing[:5]}"
            )
        ignored = len(tensors) - len(keys)
        if ignored:
            logger.warning(
                "%s: %d tensor(s) the index does not assign to this shard are ignored", shard, ignored
            )
        state.update((k, tensors[k]) for k in keys)
    return state


# --------------------------------------------------------------------------- key mapping


# Parts of the keys PEFT's tuner layers add inside a wrapped module (LoRA, IA3, LoHa, ...; modules_to_save).
_PEFT_KEY_MARKERS = (
    ".base_layer.",
    ".lora_",
    ".modules_to_save.",
    ".original_module.",
    ".ia3_",
    ".hada_",
    ".lokr_",
)


def adapt_state_dict(
    model: TimesformerPreTrainedModel,
    state: Mapping[str, torch.Tensor],
    *,
    ignore_mismatched_sizes: bool = False,
    info: dict[str, set] | None = None,
) -> dict[str, torch.Tensor]:
    """Map a checkpoint of either class onto ``model``'s keys and check it loads exactly.

    A classification checkpoint loads into ``TimesformerModel`` (``timesformer.`` prefix stripped, head
    dropped with a log line), a base checkpoint into ``TimesformerForVideoClassification`` (prefix added;
    the head keeps its fresh initialization, with a warning, as in transformers). Anything else missing,
    unexpected or misshaped raises ``CheckpointError`` naming the keys. With ``ignore_mismatched_sizes``,
    misshaped weights are left out (re-initialized) instead.

    ``info``: ``transformers``' loading info, filled in: the head's keys in ``missing_keys`` (newly
    initialized) or ``unexpected_keys`` (dropped), and ``(key, checkpoint shape, model shape)`` of each
    re-initialized weight in ``mismatched_keys``.
    """
    info = (
        {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()} if info is None else info
    )
    expected = model.state_dict()
    has_prefix = any(k.startswith(PREFIX) for k in expected)
    state = dict(state)
    ckpt_prefixed = any(k.startswith(PREFIX) for k in state)
    if has_prefix and not ckpt_prefixed:
        state = {PREFIX + k: v for k, v in state.items()}
    elif not has_prefix and ckpt_prefixed:
        dropped = sorted(k for k in state if k.startswith(HEAD_PREFIX))
        if dropped:
            logger.info("not loading the classification head %s into a TimesformerModel", dropped)
            info["unexpected_keys"].update(dropped)
        state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}

    missing = [k for k in expected if k not in state]
    if has_prefix and not ckpt_prefixed:
        head = [k for k in missing if k.startswith(HEAD_PREFIX)]
        if head:
            logger.warning("classifier weights %s are newly initialized: train the model before use", head)
            info["missing_keys"].update(head)
            missing = [k for k in missing if not k.startswith(HEAD_PREFIX)]
    unexpected = [k for k in state if k not in expected]
    injected = [k for k in unexpected if any(m in k for m in _PEFT_KEY_MARKERS)]
    if injected:
        # What transformers' Trainer.save_model writes for a model that is not a transformers PreTrainedModel
        # after add_adapter: the whole state dict with the adapter's layers in place, no adapter_config.json.
        raise CheckpointError(
            f"the checkpoint holds a model with PEFT adapter layers injected (keys such as {injected[0]!r}), "
            "as Trainer.save_model writes for this package's models; its adapter settings are not in it. Save "
            "with model.save_pretrained(dir) after training (it writes the adapter in PEFT's format), or build "
            "the model, add the same adapter (model.add_adapter(config)) and load the file with "
            "model.load_state_dict(safetensors.torch.load_file(path))"
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        raise CheckpointError(
            f"checkpoint does not match {type(model).__name__} "
            f"(attention_type={model.config.attention_type!r}): " + "; ".join(parts)
        )
    out: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in state.items():
        want = expected[key].shape
        if not value.is_floating_point():
            raise CheckpointError(f"{key}: expected a floating-point tensor, got dtype {value.dtype}")
        if value.shape == want:
            out[key] = value
        elif ignore_mismatched_sizes:
            logger.warning(
                "%s: checkpoint shape %s, model shape %s: newly initialized",
                key,
                tuple(value.shape),
                tuple(want),
            )
            info["mismatched_keys"].add((key, value.shape, want))
        else:
            mismatched.append(
                f"{key}: checkpoint has shape {tuple(value.shape)}, the model expects {tuple(want)}"
            )
    if mismatched:
        raise CheckpointError(
            "; ".join(mismatched) + " (pass ignore_mismatched_sizes=True to re-initialize these weights)"
        )
    return out


# --------------------------------------------------------------------------- public entry points


def model_dtype(
    dtype: torch.dtype | str | None, config: TimesformerConfig, state: Mapping[str, torch.Tensor]
) -> torch.dtype:
    """The model dtype for ``dtype``; ``None`` and ``"auto"`` (transformers 5's default) take the checkpoint's
    ``dtype``/``torch_dtype`` from its config, else (as transformers) its first floating-point weight's dtype,
    float32 when it has none."""
    if dtype is None or dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if dtype is None:
            dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    value = (
        dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).replace("torch.", ""), None)
    )
    if value not in MODEL_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in MODEL_DTYPES)
        raise ValueError(f"dtype must be one of {names} (or its torch dtype), got {dtype!r}")
    return value


def _config_fields() -> set[str]:
    import inspect

    names = set(inspect.signature(TimesformerConfig.__init__).parameters) - {"self", "kwargs"}
    return names | {"model_type", "architectures", "dtype", "torch_dtype", "transformers_version"}


# transformers' from_pretrained keywords with nothing to do here, accepted at the value that asks for nothing
# (as user code often spells them out); any other value is refused, naming the keyword.
INERT_LOADING_OPTIONS = {
    "weights_only": True,  # pickled weights are always read with torch.load(weights_only=True)
    "quantization_config": None,
    "tp_plan": None,
    "tp_size": None,
    "device_mesh": None,
    "max_memory": None,  # the three options of splitting a model over devices
    "offload_folder": None,
    "offload_buffers": False,
    "gguf_file": None,
    "proxies": None,
    "key_mapping": None,
}


def _device_key(device: torch.device) -> tuple[str, int]:
    """``device`` with its index spelled out: ``"cuda"`` is the current GPU, as torch places tensors."""
    if device.index is not None:
        return device.type, device.index
    if device.type == "cuda" and torch.cuda.is_available():
        return device.type, torch.cuda.current_device()
    return device.type, 0


def _whole_model_dtype(name: str, value):
    if not isinstance(value, Mapping):
        return value
    if set(value) != {""}:
        raise ValueError(
            f"{name} per module ({sorted(value)}) is not supported: pass one dtype, or {{'': dtype}}"
        )
    return value[""]


def _map_device(value) -> torch.device:
    """A device_map entry: an index, a device name or a ``torch.device``; a place other than a device (``"disk"``,
    ``"meta"``, ``"auto"`` beside a device) is refused."""
    refused = ValueError(
        f"device_map must name a device (or map to one), got {value!r} (offloading is not supported)"
    )
    if (
        value in ("disk", "meta")
        or not isinstance(value, (int, str, torch.device))
        or isinstance(value, bool)
    ):
        raise refused
    try:
        return torch.device("cuda", value) if isinstance(value, int) else torch.device(value)
    except RuntimeError:
        raise refused from None


def loading_options(
    *,
    backend,
    dtype=None,
    device=None,
    torch_dtype=None,
    attn_implementation=None,
    device_map=None,
    config_overrides=(),
) -> dict:
    """``transformers``' ``from_pretrained`` keywords turned into this package's ``backend``, ``dtype``,
    ``device`` and config overrides, or refused with the reason."""
    config_overrides = dict(config_overrides)
    for name, default in INERT_LOADING_OPTIONS.items():
        if name in config_overrides and config_overrides.pop(name) != default:
            raise ValueError(f"from_pretrained: {name} is not supported here (only {name}={default!r})")
    # What transformers' Auto classes pass along: the path being loaded, which the model records anyway.
    config_overrides.pop("name_or_path", None)
    # No code is ever fetched: the classes are this package's, so trusting remote code changes nothing.
    trust = config_overrides.pop("trust_remote_code", None)
    if trust is not None and not isinstance(trust, bool):
        raise TypeError(f"trust_remote_code must be a bool, got {trust!r}")
    # transformers 5's per-module dtypes: one entry for the whole model ("") is that dtype.
    dtype, torch_dtype = _whole_model_dtype("dtype", dtype), _whole_model_dtype("torch_dtype", torch_dtype)
    if torch_dtype is not None:
        if dtype is not None and dtype != torch_dtype:
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one (dtype)")
        dtype = torch_dtype
    if attn_implementation is not None:
        mapped = attn_backend(attn_implementation)
        if backend not in (None, "auto") and attn_backend(backend, "backend") != mapped:
            raise ValueError(f"backend={backend!r} and attn_implementation={attn_implementation!r} disagree")
        backend = attn_implementation  # the model records the name asked for (config._attn_implementation)
    if device_map is not None:
        if isinstance(device_map, Mapping):
            # Entries that all name one place (as accelerate writes a map for a model that fits) are that place.
            values = list(device_map.values())
            same = bool(values) and all(v == values[0] for v in values)
            if not same and len({_device_key(_map_device(v)) for v in values}) != 1:
                raise ValueError(
                    f"device_map splits the model over devices ({len(device_map)} entries): not supported; pass "
                    "one device, e.g. device_map='cuda:0'"
                )
            device_map = values[0]
        if device_map in ("auto", "sequential"):
            # What accelerate does with a model that fits on the first device: a TimeSformer always does.
            device_map = "cuda:0" if torch.cuda.is_available() else "cpu"
        if device_map in ("balanced", "balanced_low_0"):
            raise ValueError(
                f"device_map={device_map!r} (splitting over devices) is not supported; pass one device"
            )
        target = _map_device(device_map)
        given = None if device is None else torch.device(device)
        if given is not None and _device_key(given) != _device_key(target):
            raise ValueError(f"device={device!r} and device_map={device_map!r} disagree")
        device = target
    unknown = sorted(set(config_overrides) - _config_fields())
    if unknown:
        raise TypeError(
            f"from_pretrained got unexpected keyword argument(s) {unknown}: neither a loading option nor a "
            "TimesformerConfig field"
        )
    return {"backend": backend, "dtype": dtype, "device": device, "config_overrides": config_overrides}


def load_pretrained(
    cls,
    path: str | os.PathLike | None,
    *,
    backend: str | None,
    dtype: torch.dtype | str | None,
    device: torch.device | str | None,
    config: TimesformerConfig | None,
    ignore_mismatched_sizes: bool,
    config_overrides: Mapping[str, Any],
    subfolder: str = "",
    local_files_only: bool = False,
    output_loading_info: bool = False,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    use_safetensors: bool | None = None,
    variant: str | None = None,
    hub: Mapping[str, Any] | None = None,
):
    if torch.empty(0).device.type == "meta":
        raise RuntimeError(
            "from_pretrained was called under torch.device('meta'): the checkpoint's weights would be dropped; "
            "load the model outside that context"
        )
    if path is None and (config is None or state_dict is None):
        raise ValueError(
            "from_pretrained(None, ...) builds the model from config= and state_dict=; got "
            f"config={'set' if config is not None else None}, state_dict={'set' if state_dict is not None else None}"
        )
    directory = None
    # From a hub repository only the format and variant asked for are downloaded; without a format asked
    # for, safetensors, else the pickles (transformers' preference).
    for fmt in [True, False] if use_safetensors is None else [use_safetensors]:
        files = hub_weight_files(variant, fmt)  # a bad variant is refused before any download
        if path is None:
            break
        directory = resolve_pretrained_dir(path, subfolder, local_files_only, files, **(hub or {}))
        if os.path.isdir(path) or any(
            os.path.isfile(os.path.join(directory, n)) for n, _ in weight_files(variant, fmt)
        ):
            break
    if config is None:
        config_path = model_file(directory, CONFIG_NAME)
        if not os.path.isfile(config_path):
            hint = ""
            if any(os.path.isfile(os.path.join(directory, n)) for n, _ in weight_files(None, None)):
                # What transformers' Trainer.save_model writes for a model that is not its PreTrainedModel.
                hint = (
                    ": weights without a config (as Trainer.save_model saves this package's models); pass "
                    "config= (e.g. the trained model's config), or save with model.save_pretrained"
                )
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory!r}{hint}")
        config = TimesformerConfig.from_json_file(config_path)
    else:
        config = copy.deepcopy(config)  # as transformers: the model's own, the caller's stays as it was
    if config_overrides:
        given = config
        config = TimesformerConfig.from_dict(config.to_dict(), **config_overrides)
        if config._attn_implementation is None:  # not a field (to_dict leaves it out): the given config's
            config._attn_implementation = given._attn_implementation
    if state_dict is None:
        state = read_state_dict(directory, variant, use_safetensors)
    elif isinstance(state_dict, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        state = dict(state_dict)
    else:
        raise TypeError(f"state_dict must map parameter names to tensors, got {type(state_dict).__name__}")
    torch_dtype = model_dtype(dtype, config, state)

    # The checkpoint's keys and shapes against a model without storage first: a config that does not fit
    # the weights (or asks for a huge model) fails here, before anything is allocated or initialized.
    with torch.device("meta"):
        skeleton = cls(config, backend=backend)
    info: dict[str, Any] = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}
    state = adapt_state_dict(skeleton, state, ignore_mismatched_sizes=ignore_mismatched_sizes, info=info)
    # Modules whose init this package does not know (a subclass's): built and initialized in full.
    model = _init_missing(skeleton, state) if _init_covers(skeleton) else cls(config, backend=backend)
    model.load_state_dict(state, strict=False)  # exactness was checked by adapt_state_dict
    _mark_loaded(model, state)
    model = model.to(dtype=torch_dtype, device=device)
    # Where the weights came from, on the model and its config, as transformers records it.
    model.name_or_path = model.config.name_or_path = "" if path is None else os.fspath(path)
    # As transformers: the config records the dtype the model was loaded in (written to config.json).
    model.config.dtype = torch_dtype
    model.eval()
    if output_loading_info:
        return model, {**info, "error_msgs": []}
    return model


def _init_covers(skeleton: torch.nn.Module) -> bool:
    """Whether ``_init_weights`` initializes every tensor of the model: each module holding parameters or
    buffers is of a type it handles (exactly: a subclass may add its own), and none has a buffer that the
    state dict leaves out (set in ``__init__``, which ``to_empty`` would leave uninitialized)."""
    covered = skeleton._init_weights_covers
    return all(
        not module._non_persistent_buffers_set
        and (type(module) in covered or not (module._parameters or module._buffers))
        for module in skeleton.modules()
    )


def _mark_loaded(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Flag the tensors ``state`` loads (``_is_hf_initialized``, as transformers 5 flags them): the model's
    init functions skip them."""
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in state:
            tensor._is_hf_initialized = True


def _init_missing(skeleton: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """``skeleton`` (built on "meta") on the CPU, for ``state``'s weights: the modules whose weights ``state``
    lacks (a new head, re-initialized mismatched weights) initialized, the others left for the load: as
    transformers, no time and no random draws spent on weights the checkpoint overwrites (a seeded run's new
    head gets the values transformers gives it)."""
    model = skeleton.to_empty(device="cpu")
    _mark_loaded(model, state)  # _init_weights leaves those alone, without a draw
    names = {id(module): name for name, module in model.named_modules()}
    order: list[torch.nn.Module] = []
    model.apply(order.append)  # children before their parent, as initialize_weights visits them
    for module in order:
        prefix = names[id(module)] and names[id(module)] + "."
        if any(prefix + name not in state for name, _ in module.named_parameters(recurse=False)):
            model._init_weights(module)
    for module in order:
        module._is_hf_initialized = True  # a module replaced later (post_init) is initialized alone
    return model


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes of ``max_shard_size``: an int, or a number with a unit as transformers spells them (``"5GB"``:
    decimal, ``"5GiB"``: binary)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str):
        text = size.strip().upper().replace(" ", "")
        unit = next((u for u in sorted(_SIZE_UNITS, key=len, reverse=True) if text.endswith(u)), None)
        try:
            value = int(float(text[: -len(unit)]) * _SIZE_UNITS[unit]) if unit else int(text)
        except ValueError:
            value = 0
    else:
        value = 0
    if value < 1:
        raise ValueError(f"max_shard_size must be a positive size such as 5000000 or '5GB', got {size!r}")
    return value


def _shards(state: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in order, a new shard when the next would pass ``limit`` bytes (a larger tensor alone)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def save_pretrained(
    model: TimesformerPreTrainedModel,
    directory: str | os.PathLike,
    *,
    safe_serialization: bool,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    max_shard_size: int | str = "50GB",
    variant: str | None = None,
) -> None:
    limit = parse_size(max_shard_size)
    names = [name for name, _ in weight_files(variant, safe_serialization)]  # [single file, index]
    os.makedirs(directory, exist_ok=True)
    # Clone: safetensors refuses views and shared storage.
    source = model.state_dict() if state_dict is None else state_dict
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in source.items()}
    stem, suffix = os.path.splitext(names[0])
    shards = _shards(state, limit)
    files: dict[str, Any] = {}  # name -> the tensors of a weight file, or the text of an index
    if len(shards) == 1:
        files[names[0]] = state
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"{stem}-{i:05d}-of-{len(shards):05d}{suffix}"
            files[name] = shard
            weight_map.update(dict.fromkeys(shard, name))
        index = {
            "metadata": {
                "total_parameters": sum(t.numel() for t in state.values()),  # as transformers 5 writes it
                "total_size": sum(t.numel() * t.element_size() for t in state.values()),
            },
            "weight_map": weight_map,
        }
        files[names[1]] = json.dumps(index, indent=2)
    # Every new file is written under a temporary name first: a failed save (full disk) leaves the weights of
    # an earlier one in place. Then what that earlier save left (single files, indexes, numbered shards) goes.
    written = []
    try:
        for name, content in files.items():
            tmp = os.path.join(directory, name + ".tmp")
            written.append(tmp)
            if isinstance(content, str):
                with open(tmp, "w") as f:
                    f.write(content + "\n")
            elif safe_serialization:
                save_safetensors(content, tmp)
            else:
                torch.save(content, tmp)
    except BaseException:
        for tmp in written:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    stale, shard_name = {name for name, _ in weight_files(variant)}, _shard_pattern(variant)
    for name in os.listdir(directory):
        if (name in stale or shard_name.fullmatch(name)) and name not in files:
            os.remove(os.path.join(directory, name))
    for name in files:
        os.replace(os.path.join(directory, name + ".tmp"), os.path.join(directory, name))
    config = model.config  # last: a save that failed above leaves the earlier config with its weights
    config.architectures = [type(model).__name__]  # on the live config too, as transformers sets it
    extra = dict(config._extra)
    config._extra.update(dtype=str(model.dtype).replace("torch.", ""))
    try:
        config.save_pretrained(directory)
    finally:
        config._extra = extra


def from_hf(hf_model: torch.nn.Module, *, backend: str = "auto") -> TimesformerPreTrainedModel:
    """Convert an in-memory ``transformers`` TimeSformer model (either class) to this package's class.

    The result has the same config, weights, dtype, device and train/eval mode.
    """
    from .modeling import TimesformerForVideoClassification, TimesformerModel, _our_config

    hf_config = getattr(hf_model, "config", None)
    if hf_config is None or getattr(hf_config, "model_type", None) != "timesformer":
        raise TypeError(f"expected a transformers TimeSformer model, got {type(hf_model).__name__}")
    config = _our_config(hf_config)
    name = type(hf_model).__name__
    if name == "TimesformerForVideoClassification":
        cls = TimesformerForVideoClassification
    elif name == "TimesformerModel":
        cls = TimesformerModel
    else:
        raise TypeError(f"expected TimesformerModel or TimesformerForVideoClassification, got {name}")
    param = next(hf_model.parameters())
    model = cls(config, backend=backend)
    model.load_state_dict(adapt_state_dict(model, hf_model.state_dict()), strict=False)
    model = model.to(dtype=param.dtype, device=param.device)
    return model.train(hf_model.training)
