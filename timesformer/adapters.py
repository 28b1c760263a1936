"""``transformers``' adapter methods (its ``PeftAdapterMixin``) on this package's models, through PEFT's
functional API: ``load_adapter``, ``add_adapter``, ``set_adapter``, ``disable_adapters``, ``enable_adapters``,
``active_adapters``, ``get_adapter_state_dict``, ``delete_adapter``, and ``save_pretrained`` of a model with
adapters (the adapter alone, in PEFT's format).

The adapters are PEFT's own layers injected into the module tree (``peft.inject_adapter_in_model``), so the
forward takes the module path (``module_path_reason``) exactly as with ``peft.get_peft_model``; PEFT is imported
only when one of these methods is called."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# How PEFT's save_pretrained prefixes the keys of a model it wraps (PeftModel.base_model.model).
PEFT_PREFIX = "base_model.model."


def _peft():
    try:
        import peft
        import peft.functional  # (set_adapter, delete_adapter)
    except ImportError:
        raise ImportError("adapters need the optional package peft (pip install peft)") from None
    return peft


def _adapter_state(directory: str, use_safetensors: bool | None) -> dict[str, torch.Tensor]:
    from .loading import _read_weights, model_file

    names = ADAPTER_WEIGHTS if use_safetensors is not False else ADAPTER_WEIGHTS[::-1]
    if use_safetensors is True:
        names = names[:1]
    for name in names:
        path = model_file(directory, name)
        if os.path.isfile(path):
            return _read_weights(path)
    raise FileNotFoundError(f"no adapter weights in {directory!r}: looked for {', '.join(names)}")


def adapter_options(
    cls: type,
    subfolder: str,
    local_files_only: bool,
    hub: Mapping[str, Any],
    adapter_kwargs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The options ``from_pretrained`` finds and loads an adapter with: the model's download options, then
    ``adapter_kwargs`` (any keyword of ``load_adapter`` but the adapter itself and its name)."""
    import inspect

    options = {"subfolder": subfolder, "local_files_only": local_files_only, **hub}
    allowed = set(inspect.signature(cls.load_adapter).parameters) - {
        "self",
        "peft_model_id",
        "adapter_name",
        "peft_config",
        "adapter_state_dict",
        "adapter_kwargs",
    }
    unknown = sorted(set(adapter_kwargs or {}) - allowed)
    if unknown:
        raise TypeError(
            f"from_pretrained: adapter_kwargs takes {sorted(allowed)}, got {unknown}"
            + (" (pass adapter_name to from_pretrained itself)" if "adapter_name" in unknown else "")
        )
    return {**options, **(adapter_kwargs or {})}


def find_adapter(
    path: str | os.PathLike,
    subfolder: str = "",
    local_files_only: bool = False,
    is_trainable: bool = False,
    use_safetensors: bool | None = None,
    **hub: Any,
) -> tuple[str, str] | None:
    """For ``from_pretrained(path, subfolder=...)``, as ``transformers``: ``None`` when that folder holds no PEFT
    adapter (``adapter_config.json``; or a hub id cannot be resolved: the model loader then says why), else
    ``(the base model's path, its subfolder)``. The base is ``path`` itself when it is a local folder that also
    holds ``config.json`` (an adapter saved beside its model), else the model the adapter's config names
    (``base_model_name_or_path``; ``subfolder`` then belongs to the adapter). Of a hub repository, only those
    two JSON files are fetched here. Takes ``adapter_options``' dict (``is_trainable`` and ``use_safetensors``
    play no part here)."""
    from .configuration import CONFIG_NAME, read_json_object
    from .loading import model_file, resolve_pretrained_dir

    try:
        directory = resolve_pretrained_dir(
            path, subfolder, local_files_only, [ADAPTER_CONFIG, CONFIG_NAME], **hub
        )
    except (FileNotFoundError, ValueError):
        return None
    config_file = model_file(directory, ADAPTER_CONFIG)
    if not os.path.isfile(config_file):
        return None
    # Beside its model in a local folder; a hub repository's adapter takes the base it names, as transformers.
    if os.path.isdir(path) and os.path.isfile(model_file(directory, CONFIG_NAME)):
        return os.fspath(path), subfolder
    base = read_json_object(config_file, "adapter config").get("base_model_name_or_path")
    if not isinstance(base, str) or not base or os.path.realpath(base) == os.path.realpath(directory):
        raise ValueError(
            f"{config_file} does not name a base model to load (base_model_name_or_path is {base!r}): load the "
            "base model with from_pretrained, then model.load_adapter(directory)"
        )
    return base, ""


class AdapterMixin:
    """The adapter methods of ``transformers.PreTrainedModel`` (``PeftAdapterMixin``); ``peft_config`` maps each
    adapter's name to its PEFT config once one is loaded."""

    _hf_peft_config_loaded = False

    def _check_new_adapter(self, name: str, config) -> None:
        if self._hf_peft_config_loaded and name in self.peft_config:
            raise ValueError(f"an adapter named {name!r} is loaded already; pass another adapter_name")
        if getattr(config, "is_prompt_learning", False):
            raise ValueError(
                f"{type(config).__name__} is a prompt-learning method: it needs token embeddings, which a video "
                "model does not have; use LoRA, IA3, ... (the methods that wrap layers)"
            )

    def load_adapter(
        self,
        peft_model_id: str | os.PathLike | None = None,
        adapter_name: str | None = None,
        peft_config: Any = None,
        adapter_state_dict: Mapping[str, torch.Tensor] | None = None,
        low_cpu_mem_usage: bool = False,
        is_trainable: bool = False,
        hotswap: bool | str = "auto",
        local_files_only: bool = False,
        adapter_kwargs: Mapping[str, Any] | None = None,
        *,
        subfolder: str = "",
        use_safetensors: bool | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
    ) -> None:
        """Add an adapter saved by PEFT (``PeftModel.save_pretrained``, or this model's ``save_pretrained``
        with adapters) and make it the active one.

        Args:
            peft_model_id: a directory holding ``adapter_config.json`` and ``adapter_model.safetensors`` (or
                ``.bin``), or a hub id.
            adapter_name: its name (default ``"default"``).
            peft_config, adapter_state_dict: the config (a PEFT config or its dict) and weights in memory,
                instead of ``peft_model_id``'s files.
            low_cpu_mem_usage: accepted, as ``transformers`` takes it (an adapter is small: built directly).
            is_trainable: keep the adapter trainable; by default it is frozen and the model put in eval mode,
                as in ``transformers``.
            hotswap: ``"auto"`` or ``False``; ``True`` (replacing a loaded adapter's weights in place) is refused.
            subfolder, local_files_only, revision, cache_dir, token, force_download: as ``from_pretrained``.
            use_safetensors: ``True``: only ``adapter_model.safetensors``; ``False``: the ``.bin`` first.
            adapter_kwargs: any of these download options (and ``use_safetensors``) as a dict, as
                ``transformers`` passes them; they win over the keywords.

        Raises ``CheckpointError`` when the weights do not fit the adapter's layers (another model's adapter);
        the adapter is then removed again.
        """
        from .configuration import read_json_object
        from .loading import CheckpointError, model_file, resolve_pretrained_dir

        if hotswap not in ("auto", False):
            raise NotImplementedError(
                f"load_adapter: hotswap={hotswap!r} (replacing a loaded adapter's weights in place) is not "
                "supported; delete_adapter, then load_adapter"
            )
        options = dict(
            subfolder=subfolder,
            local_files_only=local_files_only,
            use_safetensors=use_safetensors,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
        )
        unknown = sorted(set(adapter_kwargs or {}) - set(options))
        if unknown:
            raise TypeError(f"load_adapter: adapter_kwargs takes {sorted(options)}, got {unknown}")
        options.update(adapter_kwargs or {})
        subfolder, local_files_only, use_safetensors = (
            options.pop(k) for k in ("subfolder", "local_files_only", "use_safetensors")
        )
        peft = _peft()
        name = "default" if adapter_name is None else adapter_name
        if peft_model_id is None and (peft_config is None or adapter_state_dict is None):
            raise ValueError("load_adapter needs peft_model_id, or both peft_config and adapter_state_dict")
        directory = None
        if peft_model_id is not None:
            hub = options  # revision, cache_dir, token, force_download
            weights = {None: ADAPTER_WEIGHTS, True: ADAPTER_WEIGHTS[:1], False: ADAPTER_WEIGHTS[1:]}
            files = [ADAPTER_CONFIG, *weights[use_safetensors]]
            try:
                directory = resolve_pretrained_dir(peft_model_id, subfolder, local_files_only, files, **hub)
            except FileNotFoundError as exc:
                raise FileNotFoundError(
                    f"adapter {os.fspath(peft_model_id)!r}: expected a directory (or hub id) holding {ADAPTER_CONFIG} "
                    f"and {' or '.join(weights[use_safetensors])} ({exc})"
                ) from None
        if peft_config is None:
            config_file = model_file(directory, ADAPTER_CONFIG)
            if not os.path.isfile(config_file):
                raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {directory!r}: not a PEFT adapter")
            read_json_object(config_file, "adapter config")  # size and syntax checked before PEFT reads it
            peft_config = peft.PeftConfig.from_pretrained(directory)
        elif isinstance(peft_config, Mapping):
            peft_config = peft.get_peft_config(dict(peft_config))
        self._check_new_adapter(name, peft_config)
        state = (
            adapter_state_dict
            if adapter_state_dict is not None
            else _adapter_state(directory, use_safetensors)
        )
        peft_config.inference_mode = not is_trainable
        with self._adding(name):
            peft.inject_adapter_in_model(peft_config, self, name)
            self._hf_peft_config_loaded = True
            try:
                result = peft.set_peft_model_state_dict(
                    self, {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}, adapter_name=name
                )
                # Parameters keyed "...lora_A.<name>.weight" (modules) or "...ia3_l.<name>" (ParameterDicts).
                missing = sorted(k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}"))
                unexpected = sorted(result.unexpected_keys)
                problem = (
                    f"unexpected keys {unexpected[:5]}, missing keys {missing[:5]}"
                    if unexpected or missing
                    else None
                )
            except RuntimeError as exc:  # shapes (load_state_dict lists every mismatch, one per line)
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                problem = lines[1] if len(lines) > 1 else lines[0]
            if problem:
                raise CheckpointError(
                    f"adapter {peft_model_id or '(state dict)'} does not fit {type(self).__name__}: {problem}"
                )
        if not is_trainable:  # as transformers: frozen, and the model in eval mode
            peft.functional.set_requires_grad(self, name, requires_grad=False)
            self.eval()

    @contextlib.contextmanager
    def _adding(self, name: str):
        """Take adapter ``name`` out again when adding it fails part way (PEFT may have wrapped some layers and
        recorded its config): nothing of it stays to be saved or set active."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self._remove(name)
            raise
        # PEFT initialized (or loaded) the adapter's layers: post_init() must not draw them again.
        for module in self.modules():
            module._is_hf_initialized = True

    def add_adapter(self, adapter_config, adapter_name: str | None = None) -> None:
        """Add a new, trainable adapter (a PEFT config: LoRA, IA3, ...) and make it the active one."""
        peft = _peft()
        name = "default" if adapter_name is None else adapter_name
        self._check_new_adapter(name, adapter_config)
        adapter_config.base_model_name_or_path = self.name_or_path
        with self._adding(name):
            peft.inject_adapter_in_model(adapter_config, self, name)
            self._hf_peft_config_loaded = True
            self.set_adapter(name)

    def _check_adapters(self, names: list[str]) -> None:
        if not self._hf_peft_config_loaded:
            raise ValueError("no adapter is loaded: call load_adapter or add_adapter first")
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"no adapter named {unknown}; loaded: {sorted(self.peft_config)}")

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make these adapter(s) the active ones (the others stay loaded, unused)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        self._check_adapters(names)
        _peft().functional.set_adapter(self, names if len(names) > 1 else names[0])

    def _enable(self, enabled: bool) -> None:
        self._check_adapters([])
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        for module in self.modules():
            if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
                module.enable_adapters(enabled)

    def disable_adapters(self) -> None:
        """Run the base model alone (the adapters stay loaded)."""
        self._enable(False)

    def enable_adapters(self) -> None:
        """Run the active adapters again."""
        self._enable(True)

    def active_adapters(self) -> list[str]:
        """The names of the active adapters."""
        self._check_adapters([])
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.modules():
            if isinstance(module, BaseTunerLayer):
                active = module.active_adapter
                return [active] if isinstance(active, str) else list(active)
        return []

    def get_adapter_state_dict(
        self, adapter_name: str | None = None, state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The weights of an adapter (default: the first active one), keyed as PEFT saves them without its
        ``base_model.model.`` prefix."""
        name = self.active_adapters()[0] if adapter_name is None else adapter_name
        self._check_adapters([name])
        return _peft().get_peft_model_state_dict(self, state_dict=state_dict, adapter_name=name)

    def delete_adapter(self, adapter_names: str | list[str]) -> None:
        """Remove adapter(s). With the last one, PEFT's layers leave the module tree too, so the backend's
        fused path is back (``transformers`` leaves them)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._check_adapters(names)
        for name in names:
            self._remove(name)

    def _remove(self, name: str) -> None:
        """Delete adapter ``name`` (wherever PEFT put it); with the last one, PEFT's layers go too."""
        config = getattr(self, "peft_config", {})
        try:
            if name in config:
                prefix = f"{config[name].peft_type.value.lower()}_"
                _peft().functional.delete_adapter(self, adapter_name=name, prefix=prefix)
        finally:
            config.pop(name, None)
            if not config:
                if hasattr(self, "peft_config"):
                    del self.peft_config
                self._hf_peft_config_loaded = False
                self._unwrap()

    def _unwrap(self) -> None:
        """Put back the layers PEFT wrapped (its LoRA layer's base layer, modules_to_save's original)."""
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        for name, module in list(self.named_modules()):
            if isinstance(module, BaseTunerLayer):
                base = module.get_base_layer()
            elif isinstance(module, AuxiliaryTrainingWrapper) and module.original_module is not None:
                base = module.original_module
            else:
                continue
            parent, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent), child, base)

    def _save_adapters(self, directory: str, state_dict, safe_serialization: bool) -> None:
        """``save_pretrained`` of a model with adapters, as ``transformers``: the active adapter alone, in PEFT's
        format (``adapter_config.json``, ``adapter_model.safetensors``; no ``config.json``), which
        ``load_adapter`` and ``PeftModel.from_pretrained`` read. The other format's file of an earlier save
        goes."""
        active = self.active_adapters()
        if len(active) != 1:
            raise ValueError(
                f"save_pretrained: {len(active)} adapters are active ({active}); saving several at once is not "
                "supported (as in transformers): set_adapter the one to save"
            )
        name = active[0]
        weights = {
            PEFT_PREFIX + k: v.detach().cpu().contiguous()
            for k, v in self.get_adapter_state_dict(name, state_dict).items()
        }
        os.makedirs(directory, exist_ok=True)
        self.peft_config[name].save_pretrained(directory)
        keep, stale = ADAPTER_WEIGHTS if safe_serialization else ADAPTER_WEIGHTS[::-1]
        if safe_serialization:
            from .loading import save_safetensors

            save_safetensors(weights, os.path.join(directory, keep))
        else:
            torch.save(weights, os.path.join(directory, keep))
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, stale))
