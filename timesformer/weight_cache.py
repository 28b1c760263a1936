"""Prepared weights (folded, transposed, cast) that follow the parameters they come from."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import torch
from torch import nn

# Entries per module, least recently used evicted first. Some keys depend on the input (the position and
# time tables per frame grid and frame count), so an unbounded cache would grow with every new clip size.
# Room for a CudaGraphRunner's default 8 graphs of different clip sizes (2 tables each) and the fixed
# entries: evicting a table a live graph reads makes the runner capture again.
MAX_ENTRIES_PER_MODULE = 32

# Bumped after every optimizer step anywhere: fused optimizers (e.g. Adam(fused=True)) update
# parameters without bumping their version counters, so versions alone would miss their steps.
_optimizer_steps = 0
_hook_registered = False


def _count_step(*_args) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def count_optimizer_steps() -> None:
    """Start counting optimizer steps (``optimizer_steps``); idempotent."""
    global _hook_registered
    if not _hook_registered:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_count_step)
        _hook_registered = True


def optimizer_steps() -> int:
    """Optimizer steps taken in this process since ``count_optimizer_steps`` was first called."""
    return _optimizer_steps


# Bumped by a global module-registration hook: ``_assignments`` whenever any module gets a submodule
# assigned (the module path's cache watches the structure), ``_replacements`` when that takes the place of
# another one. PEFT's ``merge_and_unload`` adds the adapters into the base weights through ``.data`` (no
# version bump, same address) and then puts the base layers back in place of its wrappers: these replacements
# are all that tells a prepared weight it is stale. (Modules built anywhere, a container per batch, register
# submodules where none were: those leave the prepared weights alone.)
_assignments = 0
_replacements = 0
_assignment_hook = None


def _count_assignment(module, name, submodule) -> None:
    global _assignments, _replacements
    _assignments += 1
    # The hook runs before the assignment: what the name holds is still the one being replaced.
    held = module.__dict__.get("_modules", {}).get(name)
    if held is not None and held is not submodule:
        _replacements += 1


def _count() -> None:
    global _assignment_hook
    if _assignment_hook is None:
        _assignment_hook = torch.nn.modules.module.register_module_module_registration_hook(_count_assignment)


def assignments() -> int:
    """Submodule assignments anywhere in this process since the first call of this or ``replacements``."""
    _count()
    return _assignments


def replacements() -> int:
    """Submodules put in another's place anywhere in this process since the first call of this or
    ``assignments``."""
    _count()
    return _replacements


def fingerprint(t: torch.Tensor) -> tuple:
    """What identifies ``t``'s current values without reading them: address, version counter (bumped by
    in-place edits), dtype, device, shape and strides (a weight set to its own transpose keeps the rest).
    Inference tensors (``torch.inference_mode``) carry no version counter."""
    version = None if t.is_inference() else t._version
    return (t.data_ptr(), version, t.dtype, t.device, tuple(t.shape), t.stride())


_EMPTY: Mapping = MappingProxyType({})


class _Entries(OrderedDict):
    """A module's cache. A copy of the module (``copy.deepcopy``, pickling, ``torch.save`` of a whole model)
    gets an empty one: the entries name the original's tensors by address, which the copy's may come to
    reuse, and they would have grown a saved model by up to its size again."""

    def __reduce__(self):
        return (type(self), ())


# Held while a cache is read or changed (not while weights are prepared): threads serving one model share its
# caches, and one thread's eviction could otherwise remove the entry another had just found.
_lock = threading.Lock()


def entries(module: nn.Module) -> Mapping[str, object]:
    """A snapshot of ``module``'s cache entries by key (an entry is replaced, never mutated, when its weights
    are prepared again), taken under the lock: another thread may change the cache meanwhile."""
    with _lock:
        cache = module.__dict__.get("_weight_cache")
        return _EMPTY if cache is None else MappingProxyType(dict(cache))


def entry(module: nn.Module, key: str) -> object | None:
    """``module``'s entry under ``key``, or ``None``: one dict lookup, atomic without the lock and without
    ``entries``' copy (a CUDA-graph runner checks its entries on every call)."""
    cache = module.__dict__.get("_weight_cache")
    return None if cache is None else cache.get(key)


def cached_weights(
    module: nn.Module,
    key: str,
    sources: Sequence[torch.Tensor],
    prepare: Callable[..., tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, ...]:
    """``prepare(*sources)``, recomputed only when a source may have changed.

    A source counts as changed when it is edited in place (``load_state_dict``, ``p.add_()`` bump its
    version counter), replaced (new storage), or after any optimizer step (fused optimizers bypass
    version counters). The entry keeps the old sources alive so that a new tensor can never reuse
    their address and look unchanged; the models drop all entries on ``.to()``/``.half()``/...
    A submodule put in another's place anywhere (PEFT's ``merge_and_unload``, whose ``.data`` edits are
    otherwise invisible) counts as a change too. Not detected: other edits through ``.data`` and in-place edits of
    tensors created under ``torch.inference_mode``; call ``model.clear_weight_cache()`` after those.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        # Under torch.compile (and torch.jit.trace, which the legacy ONNX export runs) the preparation is
        # traced into the graph (recomputed per call, never stale): the cache's pointer and version checks
        # cannot be traced (graph breaks), and a cached tensor would be recorded as a constant.
        return prepare(*(s.detach() for s in sources))
    count_optimizer_steps()
    stamp = (_optimizer_steps, replacements(), *(fingerprint(s) for s in sources))
    with _lock:
        cache = module.__dict__.setdefault("_weight_cache", _Entries())
        hit = cache.get(key)
        if hit is not None and hit[0] == stamp:
            cache.move_to_end(key)
            return hit[2]
    with torch.no_grad():
        prepared = prepare(*(s.detach() for s in sources))
    with _lock:
        cache[key] = (stamp, tuple(s.detach() for s in sources), prepared)
        cache.move_to_end(key)
        while len(cache) > MAX_ENTRIES_PER_MODULE:
            cache.popitem(last=False)  # the least recently used: e.g. tables for an input size seen once
    return prepared


def clear_weight_cache(root: nn.Module) -> None:
    with _lock:
        for module in root.modules():
            module.__dict__.pop("_weight_cache", None)
