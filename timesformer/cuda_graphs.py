"""Inference under CUDA graphs: one captured graph per input shape, replayed without per-kernel launches.

At batch size 1 a forward pass is bound by kernel-launch overhead (hundreds of small launches from
Python). ``CudaGraphRunner`` captures the model's forward once per input shape into a CUDA graph and
replays it, so a call costs one graph launch plus a copy of the input and of the outputs::

    runner = CudaGraphRunner(model.eval().cuda())
    with torch.inference_mode():
        logits = runner(pixel_values).logits    # same result as model(pixel_values).logits

Calls that a graph cannot serve run ``model(...)`` eagerly instead (see ``CudaGraphRunner``). The first
call per input shape is slower: a few eager warm-up passes, then the capture.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .backends.base import needs_autograd
from .modeling import TimesformerForVideoClassification, TimesformerModel, intercepted, module_path_reason
from .outputs import ModelOutput, output_types
from .weight_cache import count_optimizer_steps, fingerprint, optimizer_steps, replacements
from .weight_cache import entries as cache_entries
from .weight_cache import entry as cache_entry

# Eager runs before each capture (PyTorch's CUDA-graph docs use 3): they compile the Triton kernels for
# the shape, fill the prepared-weight cache and let lazy initializations (cuBLAS handles, workspaces)
# happen outside the capture.
WARMUP_RUNS = 3

# Plain (non-tensor) module attributes that change what a forward computes through the public API.
_WATCHED_ATTRIBUTES = ("input_normalization",)  # set_input_normalization()


# --------------------------------------------------------------------------- capture and replay
class _CudaGraphs:
    """The real capture and replay: the runner's default ``_graph_factory``.

    A graph factory has three methods: ``supports(device)`` (whether models on ``device`` can be
    captured now), ``new_pool()`` (a memory pool for graphs that may share one) and
    ``capture(fn, device=, pool=)``, which captures ``fn()`` (returning a dict of output tensors) and
    returns ``(replay, outputs)``: a callable that reruns the captured work, writing into ``outputs``.
    Tests substitute a CPU implementation.
    """

    def supports(self, device: torch.device) -> bool:
        # Inside someone else's capture the eager ops are what that capture must record.
        return device.type == "cuda" and not torch.cuda.is_current_stream_capturing()

    def new_pool(self) -> Any:
        return torch.cuda.graph_pool_handle()

    def capture(
        self, fn: Callable[[], dict[str, torch.Tensor]], *, device: torch.device, pool: Any
    ) -> tuple[Callable[[], None], dict[str, torch.Tensor]]:
        with torch.cuda.device(device):
            # Warm-up on a side stream, as in the PyTorch docs.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(WARMUP_RUNS):
                    fn()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA work of other threads (data loading, another model) does not break it.
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                outputs = fn()

        def replay() -> None:
            with torch.cuda.device(device):
                graph.replay()

        return replay, outputs


# --------------------------------------------------------------------------- staleness
def _scan(modules: list[nn.Module]) -> tuple[bool, list]:
    """``(any module in training mode, fingerprint)`` of a module tree in one pass.

    The fingerprint holds, per module, its children (so that a replaced submodule counts as a change)
    and each parameter's and buffer's ``weight_cache.fingerprint``. (It reads torch's ``_modules``,
    ``_parameters`` and ``_buffers`` dicts directly: this runs before every replay, where the generator
    methods would cost more than a batch-1 replay.)
    """
    training = False
    state: list = []
    add = state.append
    for module in modules:
        training = training or module.training
        add(tuple(module._modules.values()))
        for tensors in (module._parameters, module._buffers):
            for t in tensors.values():
                if t is not None:
                    add(fingerprint(t))
    return training, state


class _Snapshot:
    """What the graphs baked in: the model's tensors (by address), its module tree, its prepared weights
    and input normalization."""

    def __init__(self, model: nn.Module, older: list | tuple = ()) -> None:
        self.modules = list(model.modules())
        _, self.state = _scan(self.modules)
        self.optimizer_steps = optimizer_steps()
        # A submodule replaced anywhere (PEFT's merge_and_unload, whose .data edits no fingerprint sees) stales
        # the prepared weights the graphs read, as it does the models' caches.
        self.replacements = replacements()
        # The graphs read prepared weights (e.g. the folded temporal projection) by address: keep them
        # alive, and recapture when the model drops or recomputes them (model.clear_weight_cache()).
        # ``older``: the entries of the graphs captured before, which still live; this capture's warm-up may
        # have evicted some from the cache (tables of another input size): kept alive and checked too, so
        # an older graph never reads freed memory, and the eviction is seen as a change.
        current = [
            (module, key, entry) for module in self.modules for key, entry in cache_entries(module).items()
        ]
        ids = {id(entry) for _, _, entry in current}
        self.prepared = current + [item for item in older if id(item[2]) not in ids]
        self.attributes = [
            (module.__dict__, name, module.__dict__[name])
            for module in self.modules
            for name in _WATCHED_ATTRIBUTES
            if name in module.__dict__
        ]
        # Keep the captured storages alive, so that a replacing tensor can never take an old address
        # and look unchanged (and a graph never reads freed memory).
        self.storages = [
            t.detach()
            for module in self.modules
            for tensors in (module._parameters, module._buffers)
            for t in tensors.values()
            if t is not None
        ]

    def check(self) -> tuple[bool, bool]:
        """``(unchanged, training)``; ``training`` is exact only when unchanged."""
        training, state = _scan(self.modules)
        unchanged = (
            optimizer_steps() == self.optimizer_steps
            and replacements() == self.replacements
            and state == self.state
            and all(cache_entry(m, key) is entry for m, key, entry in self.prepared)
            and all(d.get(name) == value for d, name, value in self.attributes)
        )
        return unchanged, training


@dataclass
class _Graph:
    static_input: torch.Tensor
    replay: Callable[[], None]
    outputs: dict[str, torch.Tensor]


# --------------------------------------------------------------------------- runner
class CudaGraphRunner:
    """Run a ``TimesformerModel`` / ``TimesformerForVideoClassification`` through captured CUDA graphs.

    ``runner(pixel_values, labels=None, output_attentions=None, output_hidden_states=None,
    return_dict=None)`` returns what ``model(...)`` returns (same output class, or its tuple with
    ``return_dict=False``), as fresh tensors that later calls never overwrite.

    A call replays a graph when the model is on a CUDA device and in eval mode (every module), no
    autograd is needed (grad disabled, e.g. under ``torch.inference_mode()``, or no parameter nor the
    input requires grad), ``output_attentions`` and ``output_hidden_states`` are false (after resolving
    ``None`` from the config), ``pixel_values`` is on the model's device and no module has hooks or is an
    adapter (``timesformer.modeling.module_path_reason``). Any other call runs
    ``model(...)`` eagerly (the fallback; e.g. on the CPU, in training, or with attention maps).
    ``labels`` are fine: the graph computes the logits and the loss is computed outside it.

    There is one graph per ``(pixel_values shape, pixel_values dtype, backend, parameter dtype,
    parameter device)``; a new shape or dtype captures another graph (each capture runs a few eager
    warm-up passes first). At most ``max_graphs`` are kept, the least recently used dropped first; the
    graphs share one memory pool. The input is copied into a static buffer, so its strides do not matter.

    Never stale: before each call the runner compares the model's parameters and buffers (address,
    version counter, dtype, device, shape), its module tree, its prepared weights, its input normalization
    and the global count of optimizer steps with those at capture, and drops every graph on any change:
    ``load_state_dict``, in-place edits (``p.add_()``), optimizer steps (fused ones included), ``.to()`` /
    ``.half()``, a replaced submodule, ``model.clear_weight_cache()``, ``model.set_input_normalization()``.
    Not detected, as in the model's own weight cache: edits through ``.data`` and in-place edits of
    tensors created under ``torch.inference_mode`` (no version counter); nor changes of non-tensor
    attributes (e.g. a LayerNorm's ``eps``) or of global settings (e.g. TF32) after capture. After those
    call ``model.clear_weight_cache()`` and ``runner.reset()``.

    The runner holds the captured parameters' storages and its graphs' memory until the next change or
    ``reset()``; it is not thread-safe.

    Args:
        model: the model to run (``TimesformerModel`` or ``TimesformerForVideoClassification``).
        max_graphs: how many captured graphs (input shapes) to keep.
    """

    def __init__(self, model: nn.Module, *, max_graphs: int = 8) -> None:
        if not isinstance(model, (TimesformerModel, TimesformerForVideoClassification)):
            raise TypeError(
                "CudaGraphRunner runs a timesformer.TimesformerModel or "
                f"timesformer.TimesformerForVideoClassification, got {type(model).__name__}"
            )
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be a positive int, got {max_graphs!r}")
        self.model = model
        self.max_graphs = max_graphs
        self._graph_factory: Any = _CudaGraphs()
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._snapshot: _Snapshot | None = None
        self._pool: Any = None
        # Count optimizer steps from now on (fused optimizers bypass version counters).
        count_optimizer_steps()

    @property
    def num_graphs(self) -> int:
        """How many graphs are captured now."""
        return len(self._graphs)

    def reset(self) -> None:
        """Drop every captured graph (the next call captures again)."""
        self._graphs.clear()
        self._snapshot = None
        self._pool = None

    def __call__(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple:
        """Run the model: a graph replay where possible, else ``model(...)``; see the class docstring."""
        model = self.model
        classifier = isinstance(model, TimesformerForVideoClassification)
        if labels is not None and not classifier:
            raise TypeError("labels are taken by TimesformerForVideoClassification, not TimesformerModel")
        attentions, hidden_states, as_dict = model._flags(
            output_attentions, output_hidden_states, return_dict
        )
        training = self._drop_stale_graphs()
        if attentions or hidden_states or training or not self._replayable(pixel_values):
            kwargs = dict(
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=return_dict,
            )
            if classifier:
                kwargs["labels"] = labels
            return model(pixel_values, **kwargs)

        param = next(model.parameters())
        # (The backend's name: _replayable has found the fused path, with no module-path reason.)
        key = (
            tuple(pixel_values.shape),
            pixel_values.dtype,
            model._backend_impl().name,
            param.dtype,
            param.device,
        )
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(key, pixel_values)
        else:
            self._graphs.move_to_end(key)
            graph.static_input.copy_(pixel_values)
        graph.replay()
        outputs = {name: t.clone() for name, t in graph.outputs.items()}
        base_output, classifier_output = output_types()
        if classifier:
            loss = None if labels is None else model._loss(outputs["logits"], labels)
            out: ModelOutput = classifier_output(loss=loss, **outputs)
        else:
            out = base_output(**outputs)
        return out if as_dict else out.to_tuple()

    # ------------------------------------------------------------------ internals
    def _drop_stale_graphs(self) -> bool:
        """Drop every graph if the model changed since capture; returns whether any module is training."""
        if self._graphs and self._snapshot is not None:
            unchanged, training = self._snapshot.check()
            if unchanged:
                return training
            self.reset()
        return any(m.training for m in self.model.modules())

    def _replayable(self, pixel_values: Any) -> bool:
        if not isinstance(pixel_values, torch.Tensor):
            return False  # the model raises its own error
        device = next(self.model.parameters()).device
        return (
            pixel_values.device == device
            and self._graph_factory.supports(device)
            and not needs_autograd(self.model, pixel_values)
            # Hooks and adapters run in the model's own calls; a replay would skip them (the model's own
            # ones included).
            and module_path_reason(self.model) is None
            and intercepted(self.model) is None
        )

    def _capture(self, key: tuple, pixel_values: torch.Tensor) -> _Graph:
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        if not self._graphs:
            # A pool whose graphs are all gone may be released: never capture into it again.
            self._pool = self._graph_factory.new_pool()
        model = self.model
        with torch.inference_mode(False):  # a normal tensor, writable in and out of inference mode
            static_input = torch.empty_like(pixel_values, memory_format=torch.contiguous_format)
        static_input.copy_(pixel_values)

        def forward() -> dict[str, torch.Tensor]:
            out = model(static_input, output_attentions=False, output_hidden_states=False, return_dict=True)
            return dict(out.items())

        with torch.no_grad():
            replay, outputs = self._graph_factory.capture(
                forward, device=static_input.device, pool=self._pool
            )
        graph = _Graph(static_input, replay, outputs)
        older = self._snapshot.prepared if self._graphs and self._snapshot is not None else ()
        self._graphs[key] = graph
        # Taken after the warm-up, which may have filled the prepared-weight cache.
        self._snapshot = _Snapshot(model, older)
        return graph
