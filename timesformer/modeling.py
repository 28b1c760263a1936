"""TimeSformer models with the module tree, ``state_dict`` keys and outputs of ``transformers``' classes.

The modules here hold parameters under the reference's names, and their ``forward`` methods are the
reference computation, op for op (the ``eager`` backend calls them). The fused backends
(``timesformer.backends``, chosen per model with ``backend=``) read the same weights directly instead of
calling the modules. A call runs the modules themselves where a feature needs it: ``output_attentions=True``,
or a model whose modules are not the plain ones the backends read (``_module_path_reason``: hooks, an
adapter such as PEFT's LoRA wrapping a ``Linear``, a patched ``forward``).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .activations import ACTIVATIONS, Activation
from .adapters import AdapterMixin
from .backends import Backend, get_backend, resolve_backend
from .backends.base import ForwardContext, drop_path
from .configuration import TimesformerConfig, attn_backend, no_push_to_hub, refuse_push_to_hub
from .outputs import BaseModelOutput, ImageClassifierOutput, output_types
from .weight_cache import assignments, clear_weight_cache

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- parameter holders
# Names and nesting follow transformers.models.timesformer.modeling_timesformer exactly, because they
# define the state_dict keys.


class TimesformerPatchEmbeddings(nn.Module):
    def __init__(self, config: TimesformerConfig) -> None:
        super().__init__()
        # As transformers' (read by code written for it; the forward takes the input's own size).
        self.image_size = config.image_hw
        self.num_patches = config.num_patches
        self.patch_size = config.patch_hw
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=self.patch_size, stride=self.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``pixel_values`` ``(batch, frames, channels, height, width)`` -> ``(patches, frames, grid width)``
        with ``patches`` of shape ``(batch * frames, gh * gw, hidden)``, as the reference."""
        batch, frames, channels, height, width = pixel_values.shape
        emb = self.projection(pixel_values.reshape(batch * frames, channels, height, width))
        return emb.flatten(2).transpose(1, 2), frames, emb.shape[-1]


class InputNormalization(NamedTuple):
    """How uint8 frames become the model's ``pixel_values``: ``(u * rescale_factor - mean[c]) / std[c]``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float


class TimesformerEmbeddings(nn.Module):
    def __init__(self, config: TimesformerConfig) -> None:
        super().__init__()
        self.attention_type = config.attention_type
        # Set by ``set_input_normalization`` (not a parameter or buffer: state_dict keys stay the reference's).
        self.input_normalization: InputNormalization | None = None
        # Set by ``enable_input_require_grads`` (a flag rather than transformers' hook: the model stays picklable
        # and its modules plain for the fused backends).
        self.input_requires_grad = False
        self.config_grid = config.grid_hw
        self.patch_embeddings = TimesformerPatchEmbeddings(config)
        self.num_patches = self.patch_embeddings.num_patches  # as transformers
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))
        self.pos_drop = nn.Dropout(p=config.hidden_dropout_prob)
        if config.attention_type != "space_only":
            self.time_embeddings = nn.Parameter(torch.zeros(1, config.num_frames, config.hidden_size))
            self.time_drop = nn.Dropout(p=config.hidden_dropout_prob)

    def position_embeddings_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """``(1, 1 + gh*gw, hidden)`` position embeddings for a patch grid, nearest-interpolated as the reference.

        Like the reference (and the original repository) this interpolates only when the number of
        patches differs from the config's; a grid with the same count is added as is.
        """
        pos = self.position_embeddings
        gh, gw = grid
        if gh * gw + 1 == pos.shape[1]:
            return pos
        cfg_h, cfg_w = self.config_grid
        other = pos[:, 1:].transpose(1, 2).reshape(1, pos.shape[2], cfg_h, cfg_w)
        other = F.interpolate(other, size=(gh, gw), mode="nearest")
        return torch.cat((pos[:, :1], other.flatten(2).transpose(1, 2)), dim=1)

    def time_embeddings_for(self, num_frames: int) -> torch.Tensor:
        """``(1, T, hidden)`` time embeddings, nearest-interpolated when ``T`` differs from the config's."""
        time = self.time_embeddings
        if num_frames == time.shape[1]:
            return time
        return F.interpolate(time.transpose(1, 2), size=num_frames, mode="nearest").transpose(1, 2)

    def frames_and_grid(self, pixel_values: torch.Tensor) -> tuple[int, tuple[int, int]]:
        """``(frames, (gh, gw))`` of a clip's tokens, for either layout ``forward`` takes."""
        if pixel_values.dtype == torch.uint8:
            _, frames, height, width, _ = pixel_values.shape
        else:
            _, frames, _, height, width = pixel_values.shape
        ph, pw = self.patch_embeddings.patch_size
        return frames, (height // ph, width // pw)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed a clip.

        Args:
            pixel_values: ``(batch, frames, channels, height, width)`` normalized pixels, or uint8 frames
                ``(batch, frames, height, width, channels)`` normalized here with ``input_normalization``.

        Returns:
            ``(batch, 1 + gh*gw*frames, hidden)``, rows in ``(n t)`` order (``(batch*frames, 1 + gh*gw,
            hidden)`` for ``space_only``); the tensor alone, as the reference's (hooks and attribution tools
            such as Captum's ``LayerIntegratedGradients`` see the same output).
        """
        if pixel_values.dtype == torch.uint8:
            from .torch_ops import normalize_frames

            norm = self.input_normalization
            pixel_values = normalize_frames(
                pixel_values, norm.mean, norm.std, norm.rescale_factor, dtype=self.cls_token.dtype
            )
        # The reference's op order, dropout included, so that training runs draw the same random numbers.
        batch = pixel_values.shape[0]
        emb, frames, grid_w = self.patch_embeddings(pixel_values)
        if getattr(self, "input_requires_grad", False) and torch.is_grad_enabled():  # (older pickles lack it)
            # enable_input_require_grads: gradients reach the layers even through a frozen embedding.
            emb.requires_grad_(True)
        grid = (emb.shape[1] // grid_w, grid_w)
        emb = torch.cat((self.cls_token.expand(emb.shape[0], -1, -1), emb), dim=1)
        emb = self.pos_drop(emb + self.position_embeddings_for(grid))
        if self.attention_type == "space_only":
            return emb

        # The reference takes CLS from the first `batch` rows (all equal to cls + pos[0] before dropout).
        cls_tokens = emb[:batch, 0].unsqueeze(1)
        n, hidden = emb.shape[1] - 1, emb.shape[2]
        patches = (
            emb[:, 1:]
            .reshape(batch, frames, n, hidden)
            .permute(0, 2, 1, 3)
            .reshape(batch * n, frames, hidden)
        )
        patches = self.time_drop(patches + self.time_embeddings_for(frames))
        patches = patches.reshape(batch, n * frames, hidden)
        return torch.cat((cls_tokens, patches), dim=1)


class TimesformerSelfAttention(nn.Module):
    def __init__(self, config: TimesformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.scale = config.head_dim**-0.5
        self.qkv = nn.Linear(config.hidden_size, config.hidden_size * 3, bias=config.qkv_bias)
        self.attn_drop = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """``hidden_states`` ``(batch, seqlen, hidden)`` -> ``(context,)``, or ``(context, probs)`` with the
        attention maps ``(batch, heads, seqlen, seqlen)``."""
        batch, seqlen, hidden = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, seqlen, 3, self.num_heads, hidden // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        probs = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        context = (probs @ v).transpose(1, 2).reshape(batch, seqlen, hidden)
        return (context, probs) if output_attentions else (context,)


class TimesformerSelfOutput(nn.Module):
    def __init__(self, config: TimesformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class TimeSformerAttention(nn.Module):
    def __init__(self, config: TimesformerConfig) -> None:
        super().__init__()
        self.attention = TimesformerSelfAttention(config)
        self.output = TimesformerSelfOutput(config)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Self-attention and its output projection: ``(out,)`` or ``(out, probs)``."""
        context, *probs = self.attention(hidden_states, output_attentions)
        return (self.output(context), *probs)


# transformers spells this one class "TimeSformerAttention", and tools find classes by that name (FSDP's
# transformer_layer_cls_to_wrap, accelerate's no_split_module_classes); the alias is this package's casing.
TimesformerAttention = TimeSformerAttention


class TimesformerIntermediate(nn.Module):
    def __init__(self, config: TimesformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.intermediate_act_fn = Activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.intermediate_act_fn(self.dense(hidden_states)))

    def __setstate__(self, state: dict) -> None:
        # Pickled before the activation was a module: the function itself was an attribute.
        fn = state.pop("intermediate_act_fn", None)
        super().__setstate__(state)
        if fn is not None:
            name = next((n for n, f in ACTIVATIONS.items() if f is fn), None)
            if name is None:
                raise TypeError(f"the pickled activation {fn!r} is none of {sorted(ACTIVATIONS)}")
            self.intermediate_act_fn = Activation(name)


class TimesformerOutput(nn.Module):
    def __init__(self, config: TimesformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class TimesformerDropPath(nn.Module):
    """Stochastic depth as the reference's ``TimesformerDropPath``: one draw per leading index, in training."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, (x.shape[0],) + (1,) * (x.dim() - 1), self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class TimesformerLayer(nn.Module):
    def __init__(self, config: TimesformerConfig, layer_index: int) -> None:
        super().__init__()
        self.config = config  # as transformers'
        self.attention_type = config.attention_type
        self.num_heads = config.num_attention_heads
        self.num_frames = config.num_frames
        # Stochastic depth decay rule of the reference; a module as there (nn.Identity at rate 0).
        rate = float(
            torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu")[layer_index]
        )
        self.drop_path = TimesformerDropPath(rate) if rate > 0 else nn.Identity()
        self.attention = TimeSformerAttention(config)
        self.intermediate = TimesformerIntermediate(config)
        self.output = TimesformerOutput(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if config.attention_type == "divided_space_time":
            self.temporal_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.temporal_attention = TimeSformerAttention(config)
            self.temporal_dense = nn.Linear(config.hidden_size, config.hidden_size)

    @property
    def drop_path_rate(self) -> float:
        """The rate the fused backends apply (the ``drop_path`` module's, 0 for ``nn.Identity``)."""
        return getattr(self.drop_path, "drop_prob", 0.0)

    def __setstate__(self, state: dict) -> None:
        # Pickled before drop path was a module: the rate was an attribute.
        rate = state.pop("drop_path_rate", None)
        state.pop("hidden_act", None)  # the activation's name is Activation.name now
        super().__setstate__(state)
        if "drop_path" not in self._modules:
            self.drop_path = TimesformerDropPath(rate) if rate else nn.Identity()

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, num_frames: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The reference layer, op for op (permute, repeat and cat included).

        Args:
            hidden_states: ``(batch, 1 + patches * frames, hidden)`` in ``(n t)`` row order, or
                ``(batch * frames, 1 + patches, hidden)`` for ``space_only``.
            output_attentions: also return the spatial attention maps.
            num_frames: the clip's frame count (default: the config's, as the reference).

        Returns:
            ``(hidden_states,)`` or ``(hidden_states, probs)``.
        """
        x = hidden_states
        if self.attention_type != "divided_space_time":
            a, *probs = self.attention(self.layernorm_before(x), output_attentions)
            x = x + self.drop_path(a)
            return (self._mlp(x), *probs)

        batch, rows, hidden = x.shape
        frames = self.num_frames if num_frames is None else num_frames
        if (rows - 1) % frames:
            raise ValueError(
                f"hidden_states has {rows} rows: expected 1 + patches * frames with {frames} frames"
            )
        n = (rows - 1) // frames

        # Temporal: rows of one patch are contiguous.
        xt = x[:, 1:, :].reshape(batch * n, frames, hidden)
        a = self.temporal_attention(self.temporal_layernorm(xt))[0]
        r = self.drop_path(a).reshape(batch, n * frames, hidden)
        xt = x[:, 1:, :] + self.temporal_dense(r)

        # Spatial: CLS repeated per frame, patches regrouped by frame.
        init_cls = x[:, 0, :].unsqueeze(1)
        cls = init_cls.repeat(1, frames, 1).reshape(batch * frames, 1, hidden)
        s = xt.reshape(batch, n, frames, hidden).permute(0, 2, 1, 3).reshape(batch * frames, n, hidden)
        s = torch.cat((cls, s), 1)
        a, *probs = self.attention(self.layernorm_before(s), output_attentions)
        r = self.drop_path(a)
        cls_r = r[:, 0, :].reshape(batch, frames, hidden).mean(1, keepdim=True)
        r = (
            r[:, 1:, :]
            .reshape(batch, frames, n, hidden)
            .permute(0, 2, 1, 3)
            .reshape(batch, n * frames, hidden)
        )
        x = torch.cat((init_cls, xt), 1) + torch.cat((cls_r, r), 1)
        return (self._mlp(x), *probs)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.output(self.intermediate(self.layernorm_after(x))))


class TimesformerEncoder(nn.Module):
    def __init__(self, config: TimesformerConfig) -> None:
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([TimesformerLayer(config, i) for i in range(config.num_hidden_layers)])
        # As transformers' encoder: when true (and training), every ``checkpoint_every``-th layer is recomputed
        # in the backward pass by ``checkpoint_function`` (set by ``activation_checkpointing_enable``).
        self.gradient_checkpointing = False
        self.checkpoint_function = None
        self.checkpoint_every = 1

    def run_layer(self, index: int, fn, *args):
        """``fn(*args)`` for layer ``index``, checkpointed when checkpointing is on and autograd records."""
        checkpointed = self.gradient_checkpointing and index % self.checkpoint_every == 0
        if not (checkpointed and self.training and torch.is_grad_enabled()):
            return fn(*args)
        if self.checkpoint_function is None:  # the flag set directly, as older transformers code does
            from torch.utils.checkpoint import checkpoint

            return checkpoint(fn, *args, use_reentrant=False)
        return self.checkpoint_function(fn, *args)

    def forward(
        self,
        hidden_states: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        *,
        fwd: ForwardContext | None = None,
        backend: Backend | None = None,
        cls_only: bool = False,
    ) -> BaseModelOutput | tuple:
        """Every layer: ``last_hidden_state`` before the final LayerNorm, ``hidden_states`` and ``attentions``
        when asked for (a ``BaseModelOutput``, as the reference's encoder returns).

        Called as ``transformers``' encoder (``model.get_encoder()(embeddings)``), the layers run the eager
        computation on the config's ``num_frames``. The model's forward passes its own:

        Args:
            hidden_states: the embeddings' output ``(batch, 1 + patches * frames, hidden)`` (``(batch * frames,
                1 + patches, hidden)`` for ``space_only``).
            fwd: the call's frames and patches, mode and path; backend: the backend that runs the layers.
            cls_only: the caller reads only ``x[:, 0]``, so the last layer may skip the patch rows' work and
                return ``x`` of shape ``(B, 1, D)``.
        """
        x = hidden_states
        if fwd is None or backend is None:
            fwd, backend = self._as_transformers_calls(x), get_backend("eager")
        out = self._layers(x, fwd, backend, output_attentions, output_hidden_states, cls_only)
        return out if return_dict else out.to_tuple()

    def _as_transformers_calls(self, x: torch.Tensor) -> ForwardContext:
        config = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != config.hidden_size:
            raise ValueError(
                f"hidden_states must be (batch, tokens, {config.hidden_size}), got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        frames = 1 if config.attention_type == "space_only" else config.num_frames
        if x.shape[1] < 2 or (x.shape[1] - 1) % frames:
            raise ValueError(
                f"hidden_states must hold 1 + patches x {frames} frame(s) tokens (config.num_frames), got "
                f"{x.shape[1]}"
            )
        return ForwardContext(config.num_frames, (x.shape[1] - 1) // frames, self.training, inference=False)

    def _layers(self, x, fwd, backend, output_attentions, output_hidden_states, cls_only) -> BaseModelOutput:
        hidden_states: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        for i, layer in enumerate(self.layer):
            if output_hidden_states:
                # In-place layers would overwrite what the caller keeps, so keep a snapshot.
                hidden_states.append(x.clone() if fwd.inference else x)
            last_cls_only = cls_only and not output_hidden_states and i == len(self.layer) - 1
            # With gradient checkpointing the layer runs again in the backward pass instead of keeping its
            # activations (its dropout masks are replayed from the saved RNG state).
            x, attn = self.run_layer(i, backend.layer, layer, x, fwd, output_attentions, last_cls_only)
            if output_attentions:
                attentions.append(attn)
        if output_hidden_states:
            hidden_states.append(x)
        return output_types()[0](
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


# --------------------------------------------------------------------------- the module path
# A process-wide token in the cache key: a model pickled with its cached answer (torch.save, spawned
# workers) meets counters that restarted in another process.
_PROCESS = os.urandom(8).hex()
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def intercepted(module: nn.Module) -> str | None:
    """What makes a call of ``module`` do more than its class's ``forward``: hooks (global ones do not
    count: they come from tools that observe whatever runs, such as the module tracker of torch's
    ``FlopCounterMode``) or a ``forward`` patched on the instance; ``None`` when nothing does."""
    if any(getattr(module, h) for h in _HOOKS):
        return "has hooks"
    if "forward" in module.__dict__:
        return "has a patched forward"
    return None


def _module_path_scan(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if module is model:
            continue  # the model's own hooks and forward run as usual
        if name == "classifier" or name.startswith("classifier."):
            # The head is called as a module on every path but the triton one for an exact nn.Linear, which
            # reads its weights: only that one's hooks count, and a custom head (nn.Sequential, an adapter)
            # runs as it is.
            why = intercepted(module) if name == "classifier" else None
            if why:
                return f"classifier {why}"
            continue
        kind, built = type(module), model._built_types.get(name)
        if kind is not built and not (kind in _DROP_PATHS and built in _DROP_PATHS):
            # Qualified: PEFT's LoRA layer is also called "Linear".
            return f"{name} is a {kind.__module__}.{kind.__qualname__}"
        why = intercepted(module)
        if why:
            return f"{name} {why}"
    return None


def _noise_rate(module: nn.Module) -> float | None:
    """The rate of a module that adds training noise (dropout, drop path), ``None`` for any other module."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p
    if isinstance(module, TimesformerDropPath):
        return module.drop_prob
    return None


def _watched_modules(model: nn.Module) -> list[tuple[str, nn.Module, float | None]]:
    """The modules whose state the fused backends follow on every call, since it changes without any counter
    seeing it: dropout and drop path (their mode), and self-attention (its ``scale``, with the one the fused
    backends use: ``head_dim ** -0.5``). For a model whose modules are the ones it builds."""
    watched = []
    for name, m in model.named_modules():
        if isinstance(m, TimesformerSelfAttention):
            watched.append((name, m, (m.qkv.in_features // m.num_heads) ** -0.5))
        elif _noise_rate(m) is not None:
            watched.append((name, m, None))
    return watched


def _state_reason(model: nn.Module, watched: list[tuple[str, nn.Module, float | None]]) -> str | None:
    for name, module, fused in watched:
        if fused is not None:
            # A scale set on the module (an attention temperature) is applied by its forward only. (Within
            # 1e-6: 1 / math.sqrt(d) is head_dim ** -0.5 to an ulp.)
            scale = module.__dict__.get("scale")
            if not (isinstance(scale, (int, float)) and abs(scale - fused) <= 1e-6 * fused):
                return f"{name}.scale is {scale!r}, not head_dim ** -0.5 = {fused!r}"
            continue
        # The fused backends apply dropout and drop path as the model's own mode says; the reference calls
        # each module, whose own mode counts: Monte-Carlo dropout (eval, then dropout modules back to train),
        # or training with some dropout off, must call the modules.
        if module.training != model.training and _noise_rate(module):
            mode = "training" if module.training else "eval"
            return f"{name} is in {mode} mode and the model is not"
    return None


def module_path_reason(model: nn.Module) -> str | None:
    """Why ``model``'s forward has to call its modules (the eager computation), or ``None`` when the fused
    backends may read its weights directly.

    Reasons: a submodule of another type than the model builds (an adapter wrapping a ``Linear``, a
    quantized subclass), hooks on a submodule, a ``forward`` patched on an instance; checked on every call: a
    dropout or drop-path module (nonzero rate) in another mode than the model, an attention ``scale`` changed.
    A ``None`` is cached per model until a hook is registered, a submodule assigned anywhere or a ``forward``
    patched (a scan of a base model's 300 modules costs about a batch-1 forward's launch overhead); not seen
    after a model's first call: a ``__class__`` changed, a module put through torch's ``_modules`` dict
    directly (``ModuleList.insert``). A reason is never cached, so removing the hooks brings the fused path
    back.
    """
    if torch.compiler.is_compiling():
        # Traced (the counters and the cache are Python state a compiled forward does not re-read): the
        # compiled forward takes the path of the module structure it traced, and recompiles with it.
        reason = _module_path_scan(model)
        return reason or _state_reason(model, _watched_modules(model))
    # Submodule assignments (PEFT's injection, ``model.encoder.layer[3] = ...``) and torch's hook-handle
    # counter tell when a cached answer may be stale.
    key = (_PROCESS, torch.utils.hooks.RemovableHandle.next_id, assignments())
    cached = model.__dict__.get("_plain_at")
    # A forward patched on an instance is seen by no counter: looked up in each module's __dict__ (about 7 us
    # for a base model's 300 modules).
    if (
        cached is not None
        and cached[0] == key
        and not any(map(dict.__contains__, cached[2], itertools.repeat("forward")))
    ):
        return _state_reason(model, cached[1])
    reason = _module_path_scan(model)
    if reason is not None:
        model.__dict__["_plain_at"] = None
        return reason
    watched = _watched_modules(model)
    scanned = [m.__dict__ for m in model.modules() if m is not model]
    model.__dict__["_plain_at"] = (key, watched, scanned)
    return _state_reason(model, watched)


# --------------------------------------------------------------------------- models


def _check_pixel_values(
    pixel_values: Any,
    config: TimesformerConfig,
    channels_expected: int,
    param: torch.Tensor,
    norm: InputNormalization | None,
) -> torch.Tensor:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.dim() != 5:
        raise ValueError(
            "pixel_values must have 5 dimensions (batch, frames, channels, height, width), "
            f"got shape {tuple(pixel_values.shape)}"
        )
    frames_u8 = pixel_values.dtype == torch.uint8
    if frames_u8:
        if norm is None:
            raise ValueError(
                "uint8 pixel_values are frames (batch, frames, height, width, channels) that the model "
                "normalizes itself: call model.set_input_normalization(image_mean, image_std) first (the "
                "values of the checkpoint's preprocessor_config.json), or pass normalized float pixels"
            )
        batch, frames, height, width, channels = pixel_values.shape
    elif not pixel_values.is_floating_point():
        raise ValueError(
            "pixel_values must be floating-point normalized pixels (batch, frames, channels, height, width) "
            f"or uint8 frames (batch, frames, height, width, channels), got dtype {pixel_values.dtype}"
        )
    else:
        batch, frames, channels, height, width = pixel_values.shape
    if batch == 0 or frames == 0:
        raise ValueError(
            f"pixel_values must hold at least one clip of at least one frame, got shape {tuple(pixel_values.shape)}"
        )
    if channels != channels_expected:
        layout = (
            "dimension 4 of uint8 (batch, frames, height, width, channels)"
            if frames_u8
            else ("dimension 2 of (batch, frames, channels, height, width)")
        )
        raise ValueError(
            f"pixel_values must have {channels_expected} channels ({layout}), got {channels} in shape "
            f"{tuple(pixel_values.shape)}"
        )
    ph, pw = config.patch_hw
    if height < ph or width < pw or height % ph or width % pw:
        raise ValueError(
            f"pixel_values height and width must be positive multiples of the patch size {ph}x{pw}, "
            f"got {height}x{width}"
        )
    # (Weights on "meta" are offloaded by accelerate, whose hooks bring them to the input's device per call.)
    if pixel_values.device != param.device and param.device.type != "meta":
        raise ValueError(
            f"pixel_values is on {pixel_values.device} but the model is on {param.device}; move one of them"
        )
    if pixel_values.dtype != param.dtype and not frames_u8:
        # A float clip of another precision is converted, as the processor output (float32) feeds
        # half-precision models in typical use.
        pixel_values = pixel_values.to(param.dtype)
    return pixel_values


# save_pretrained's keywords that transformers passes on to the upload (push_to_hub=True) and otherwise leaves.
_UPLOAD_KEYWORDS = (
    "repo_id",
    "commit_message",
    "commit_description",
    "private",
    "create_pr",
    "revision",
    "tags",
)


class TimesformerPreTrainedModel(AdapterMixin, nn.Module):
    """Shared construction, initialization, backend selection and checkpoint I/O; ``transformers``' adapter
    methods (``load_adapter``, ``add_adapter``, ...) come from ``AdapterMixin``."""

    config_class = TimesformerConfig
    base_model_prefix = "timesformer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)  # as transformers' (its pipelines print it)
    _auto_model = "AutoModel"  # the transformers auto class a model of this class registers with

    supports_gradient_checkpointing = True
    # What transformers' attention switch checks; flash_attention_2 maps to the fused kernels.
    _supports_sdpa = True
    _supports_flash_attn = True
    # As transformers' (accelerate's device maps and quantizers read them).
    _no_split_modules = ("TimesformerLayer",)
    _keep_in_fp32_modules = None
    _tied_weights_keys = None
    # Trainer reads it whenever a checkpoint it resumes from lacks a key (None: nothing left out on save).
    _keys_to_ignore_on_save = None

    def __init__(self, config: TimesformerConfig, *, backend: str | None = None) -> None:
        super().__init__()
        config = _our_config(config)
        config.validate()
        self.config = config
        # As transformers: the config's attention choice unless one is given, then recorded on the config.
        self._request_backend((config._attn_implementation or "auto") if backend is None else backend)
        # Where the weights came from (a directory or hub id), as transformers' ``name_or_path``.
        self.name_or_path = ""
        # With transformers imported, load its output classes now: a forward traced by torch.compile cannot
        # import them (it would return this package's classes where an eager call returns transformers').
        output_types()
        self._warned_module_path: str | None = None

    # ------------------------------------------------------------------ init
    # The module types _init_weights initializes in full: from_pretrained initializes only the modules whose
    # weights a checkpoint lacks when every module holding tensors is one of these.
    _init_weights_covers = (nn.Linear, nn.Conv2d, nn.LayerNorm, TimesformerEmbeddings)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Mirrors TimesformerPreTrainedModel._init_weights of transformers, random draws included: a seeded
        # model gets transformers' values, and leaves the generator as transformers does.
        # As transformers 5's init functions, a tensor a checkpoint loaded (``_is_hf_initialized``) is left
        # alone, and no random draw is spent on it: a mismatched position embedding re-initialized beside a
        # loaded class token gets transformers' values, and ``model.apply(model._init_weights)`` keeps loaded
        # weights.
        def init(fn, tensor, **kwargs) -> None:
            if not getattr(tensor, "_is_hf_initialized", False):
                fn(tensor, **kwargs)

        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            # transformers 5's PreTrainedModel._init_weights, which Timesformer's calls first, draws a normal
            # that the truncated normal then replaces.
            init(nn.init.normal_, module.weight, std=std or 0.02)
            init(nn.init.trunc_normal_, module.weight, std=std)
            if module.bias is not None:
                init(nn.init.zeros_, module.bias)
        elif isinstance(module, nn.LayerNorm):
            init(nn.init.ones_, module.weight)
            init(nn.init.zeros_, module.bias)
        elif isinstance(module, TimesformerEmbeddings):
            init(nn.init.trunc_normal_, module.cls_token, std=std)
            init(nn.init.trunc_normal_, module.position_embeddings, std=std)
            if hasattr(module, "time_embeddings"):
                init(nn.init.zeros_, module.time_embeddings)

    def _initialize_weights(self, module: nn.Module) -> None:
        # As transformers: a module is initialized once, so that post_init() after replacing a module (a new
        # head) initializes that one and keeps every other (pretrained) weight.
        if not module.__dict__.get("_is_hf_initialized", False):
            self._init_weights(module)
            module._is_hf_initialized = True

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Initialize the modules not initialized yet (new ones: a replaced head), as ``transformers``."""
        self.apply(self._initialize_weights)

    def init_weights(self) -> None:
        """``initialize_weights`` (skipped while building under ``torch.device("meta")``, as in ``transformers``,
        so that ``to_empty`` then ``init_weights`` initializes everything)."""
        if torch.empty(0).device.type != "meta":
            self.initialize_weights()
        self.tie_weights()

    def post_init(self) -> None:
        """Call after building or replacing modules: initializes the new ones (``init_weights``) and records the
        module types the fused backends read (``module_path_reason``)."""
        self.init_weights()
        self._record_built_types()

    def _record_built_types(self) -> None:
        # The type of every submodule as built. The fused backends read these modules' weights (and the
        # activation's name, the drop path's rate): a module of another type in one's place (PEFT's LoRA
        # wrapper, a quantized subclass, nn.Identity for a Linear) must be called instead (module_path_reason).
        # A later post_init() records only new names: a module replaced before it stays a replacement.
        built = self.__dict__.setdefault("_built_types", {})
        for name, module in self.named_modules():
            if module is not self:
                built.setdefault(name, type(module))

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "_built_types" not in self.__dict__:  # pickled by a version that did not record them
            with torch.device("meta"):
                self._built_types = type(self)(self.config)._built_types
        if "_is_hf_initialized" not in self.__dict__:  # pickled before post_init kept what is initialized
            for module in self.modules():
                module.__dict__.setdefault("_is_hf_initialized", True)

    # --------------------------------------------------------------- backend
    @staticmethod
    def _checked_backend(name: str, what: str) -> str:
        """The backend of ``name`` (``attn_backend``), refused where it cannot exist at all (not installed)."""
        backend = attn_backend(name, what)
        if backend != "auto":
            get_backend(backend)  # raises with the reason
        return backend

    def _request_backend(self, name: str) -> None:
        self._requested_backend = self._checked_backend(name, "backend")
        self.config._attn_implementation = name

    def set_backend(self, name: str) -> TimesformerPreTrainedModel:
        """Select ``"eager"``, ``"sdpa"``, ``"triton"`` or ``"auto"`` (or one of transformers' attention names,
        ``ATTN_IMPLEMENTATIONS``), recorded as ``config._attn_implementation``; returns ``self``."""
        self._request_backend(name)
        return self

    def get_correct_attn_implementation(
        self, requested_attention: str | None, is_init_check: bool = False
    ) -> str:
        """The attention a model asked for ``requested_attention`` records, as ``transformers``' check: the name
        itself (``None``: ``"auto"``, the default here, where transformers' is ``"sdpa"``); a name that is no
        attention, or a backend this installation cannot provide at all, raises (whether one runs on the
        model's device is resolved at its first forward, as ``backend`` says)."""
        name = "auto" if requested_attention is None else requested_attention
        self._checked_backend(name, "attn_implementation")
        return name

    @classmethod
    def register_for_auto_class(cls, auto_class: str | type = "AutoModel") -> None:
        """Not provided: it marks hub remote code, and this package is installed instead. Register the classes
        with ``transformers``' auto classes (``AutoModel.register``), as the README shows."""
        raise NotImplementedError(
            f"{cls.__name__}.register_for_auto_class is not provided (it is for hub remote code; this package is "
            "installed): call transformers.AutoConfig.register('timesformer', TimesformerConfig, exist_ok=True) "
            f"and transformers.{cls._auto_model}.register(TimesformerConfig, {cls.__name__}, exist_ok=True) "
            "instead"
        )

    def retrieve_modules_from_names(
        self, names: list[str], add_prefix: bool = False, remove_prefix: bool = False
    ) -> list[nn.Module]:
        """The modules that hold the parameters or buffers ``names`` (state-dict keys), in ``named_modules``
        order, as ``transformers``'; ``add_prefix`` / ``remove_prefix``: the module names are matched with the
        base model's prefix (``timesformer.``) added (removed), for a head model's keys on the base model (the
        base model's keys on a head model)."""
        owners = {key.rpartition(".")[0] for key in names}
        # (A ParameterList's entries: "owner.list.0" belongs to "owner", as transformers reads such keys.)
        owners |= {".".join(key.split(".")[:-2]) for key in names if key[-1:].isdigit()}
        found = []
        for name, module in self.named_modules():
            if remove_prefix:
                name = name.removeprefix(f"{self.base_model_prefix}.")
            elif add_prefix:
                name = f"{self.base_model_prefix}.{name}" if name else self.base_model_prefix
            if name in owners:
                found.append(module)
        return found

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """``transformers``' call for switching attention: ``"eager"`` -> ``eager``, ``"sdpa"`` -> ``sdpa``,
        ``"flash_attention_2"`` -> ``auto`` (the fused kernels where they run), as in ``from_pretrained``."""
        attn_backend(attn_implementation)  # the error names attn_implementation
        self.set_backend(attn_implementation)

    def _input_channels(self) -> int:
        """The channels of a clip: the patch projection's (one put in the conv's place, for 1-channel video,
        sets them, as in transformers), else the config's."""
        projection = self.base_model.embeddings.patch_embeddings.projection
        return projection.in_channels if isinstance(projection, nn.Conv2d) else self.config.num_channels

    def set_input_normalization(
        self,
        image_mean: Any,
        image_std: Any,
        rescale_factor: float = 1 / 255,
    ) -> TimesformerPreTrainedModel:
        """Let ``forward`` take uint8 frames ``(batch, frames, height, width, channels)``, as a video
        decoder returns them, normalizing ``(u * rescale_factor - mean[c]) / std[c]`` itself (inside the
        patch-embedding kernel with the ``triton`` backend). The frames must already have the model's
        input size (resize and crop are the processor's job). Returns ``self``.

        Args:
            image_mean, image_std: one value per channel (or one for all), e.g. a checkpoint's
                ``preprocessor_config.json`` values.
            rescale_factor: the processor's ``rescale_factor`` (1/255).
        """
        from .preprocess import check_normalization, per_channel

        channels = self._input_channels()
        std = per_channel("image_std", image_std, channels)
        if any(not v > 0 for v in std):
            raise ValueError(f"image_std must be positive, got {std}")
        if not (isinstance(rescale_factor, (int, float)) and 0 < rescale_factor < math.inf):
            raise ValueError(f"rescale_factor must be a positive finite number, got {rescale_factor!r}")
        norm = InputNormalization(per_channel("image_mean", image_mean, channels), std, float(rescale_factor))
        check_normalization(norm.mean, norm.std, norm.rescale_factor)
        for module in self.modules():
            if isinstance(module, TimesformerEmbeddings):
                module.input_normalization = norm
        return self

    def cuda_graphs(self, *, max_graphs: int = 8):
        """A ``CudaGraphRunner`` for this model: call it like the model; eval-mode, no-autograd CUDA calls
        replay a graph captured once per input shape and dtype (batch-1 latency is launch-bound), others
        run the model as usual. Weight changes re-capture; see ``timesformer.cuda_graphs``."""
        from .cuda_graphs import CudaGraphRunner

        return CudaGraphRunner(self, max_graphs=max_graphs)

    @property
    def backend(self) -> str:
        """Name of the backend a forward runs (without attention maps): ``eager`` while it has to call the
        modules (``module_path_reason``: hooks, as an offloading tool's, or adapters), else the one in force for
        the model's current device."""
        if self._requested_backend == "eager":
            return "eager"
        if module_path_reason(self) is None:
            return self._backend_impl().name
        # A classifier then calls its encoder model, which takes its own path (a hook on the head alone
        # leaves the encoder on the fused one).
        encoder = getattr(self, "timesformer", None)
        return encoder.backend if isinstance(encoder, TimesformerPreTrainedModel) else "eager"

    def _backend_impl(self) -> Backend:
        param = next(self.parameters())
        impl = resolve_backend(self._requested_backend, param.device, self.config.head_dim, param.dtype)
        if impl.has_autocast or not torch.is_autocast_enabled(param.device.type):
            return impl
        if torch.get_autocast_dtype(param.device.type) == param.dtype:
            return impl  # autocast to the parameters' own dtype changes nothing
        # The Triton kernels run in the parameters' dtype and are not autocast ops: under autocast to another
        # dtype the call runs on sdpa, whose torch ops autocast casts, as it casts transformers'.
        return get_backend("sdpa")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def clear_weight_cache(self) -> None:
        """Drop prepared weights (e.g. the folded temporal projection).

        Only needed after editing parameters through ``.data`` (or in place, for a model created or moved
        under ``torch.inference_mode``), which bypasses the version counters the caches watch;
        ``load_state_dict`` (the model's own), ``.to()``, optimizer steps and in-place edits are picked up
        automatically.
        """
        clear_weight_cache(self)

    def _apply(self, fn, *args, **kwargs):
        # .to() / .half() / .cuda() replace every parameter: drop prepared weights (and the old
        # tensors they keep alive) now rather than at the next forward.
        clear_weight_cache(self)
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        # Copies in place, which the version counters see, except on inference tensors (a model moved with
        # .to() under torch.inference_mode has only those): the caches are dropped whatever happens.
        try:
            return super().load_state_dict(*args, **kwargs)
        finally:
            clear_weight_cache(self)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count, as ``transformers``: ``only_trainable`` counts those that require grad,
        ``exclude_embeddings`` leaves out ``nn.Embedding`` weights (TimeSformer has none: its embeddings are a
        convolution and parameter tables, which transformers counts too)."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel()
            for p in self.parameters()
            if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    # ----------------------------------------------------- transformers' API used by users and PEFT
    @property
    def base_model(self) -> nn.Module:
        """The encoder (``TimesformerModel``): itself, or the classifier's ``timesformer``."""
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (``embeddings.patch_embeddings``), as in ``transformers``."""
        return self.base_model.embeddings.patch_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Not provided, as in ``transformers`` (whose TimeSformer raises the same): the patch embedding's weights
        are read by the fused kernels; load other weights into it instead."""
        raise NotImplementedError(
            f"{type(self).__name__}.set_input_embeddings is not provided (nor by transformers' TimeSformer): "
            "load weights into get_input_embeddings() instead"
        )

    def get_output_embeddings(self) -> None:
        return None

    def get_parameter_or_buffer(self, target: str) -> torch.Tensor:
        """The parameter or buffer named ``target`` (``AttributeError`` for neither), as ``transformers``' (which
        accelerate's loaders call)."""
        try:
            return self.get_parameter(target)
        except AttributeError:
            pass
        try:
            return self.get_buffer(target)
        except AttributeError:
            raise AttributeError(
                f"`{target}` is neither a parameter nor a buffer of {type(self).__name__}"
            ) from None

    def named_non_persistent_buffers(self, recurse: bool = True, remove_duplicate: bool = True):
        """``(name, buffer)`` of the buffers ``state_dict`` leaves out, as ``transformers``'."""
        for name, tensor in self.named_buffers(recurse=recurse, remove_duplicate=remove_duplicate):
            parent, _, own = name.rpartition(".")
            if own in self.get_submodule(parent)._non_persistent_buffers_set:
                yield name, tensor

    def get_encoder(self) -> nn.Module:
        """The ``TimesformerEncoder``, as ``transformers`` 5 returns it."""
        return self.base_model.encoder

    def get_decoder(self) -> nn.Module:
        """The ``TimesformerModel`` (``base_model``), as ``transformers`` 5 answers for a model without a
        decoder."""
        return self.base_model

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """A forward's inputs for tracing tools: ``{"pixel_values": (2, num_frames, num_channels, height,
        width)}`` random floats at the config's size (``transformers``' own is a text placeholder, ``input_ids``)."""
        c = self.config
        return {"pixel_values": torch.randn(2, c.num_frames, c.num_channels, *c.image_hw)}

    loss_type = "ForVideoClassification"

    @property
    def loss_function(self):
        """``loss_function(labels, logits, config)``: the loss ``forward`` computes for ``labels``, by
        ``config.problem_type`` (``transformers`` 5.24's own falls back to a causal-LM loss for TimeSformer)."""
        from .losses import video_classification_loss

        return video_classification_loss

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> None:
        no_push_to_hub(self)

    model_tags: list[str] | None = None

    def add_model_tags(self, tags: str | list[str]) -> None:
        """Tags for the model card (``transformers``' API; no card is written here)."""
        self.model_tags = list(self.model_tags or [])
        for tag in [tags] if isinstance(tags, str) else tags:
            if tag not in self.model_tags:
                self.model_tags.append(tag)

    def tie_weights(self) -> None:
        """Nothing to tie (no token embeddings); transformers' API."""

    @classmethod
    def can_generate(cls) -> bool:
        return False

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes of the parameters (and buffers), as transformers counts them."""
        tensors = [*self.parameters(), *(self.buffers() if return_buffers else ())]
        return sum(t.numel() * t.element_size() for t in tensors)

    def enable_input_require_grads(self) -> None:
        """Make the patch embedding's output require grad (for adapters and gradient checkpointing on a
        frozen embedding, as ``transformers``)."""
        self.base_model.embeddings.input_requires_grad = True

    def disable_input_require_grads(self) -> None:
        self.base_model.embeddings.input_requires_grad = False

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute layers' activations in the backward pass instead of keeping them (training only).

        Args:
            activation_checkpointing_kwargs: options of ``torch.utils.checkpoint.checkpoint`` (default
                ``{"use_reentrant": False}``, as ``transformers`` 5). A reentrant checkpoint also makes the
                patch embedding's output require grad (``enable_input_require_grads``), so that a frozen
                embedding still lets gradients reach the layers.
            every_n_layers: checkpoint layers 0, n, 2n, ...; the others keep their activations.
            offload: keep the activations saved for the recomputation in (pinned) host memory.
        """
        import functools

        from torch.utils.checkpoint import checkpoint

        if isinstance(every_n_layers, bool) or not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be a positive int, got {every_n_layers!r}")
        options = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        function = functools.partial(checkpoint, **options)
        if offload:
            pin = torch.cuda.is_available()

            def function(fn, *args, _checkpoint=function):
                with torch.autograd.graph.save_on_cpu(pin_memory=pin):
                    return _checkpoint(fn, *args)

        for module in self.modules():
            if isinstance(module, TimesformerEncoder):
                module.gradient_checkpointing = True
                module.checkpoint_function = function
                module.checkpoint_every = every_n_layers
        if options["use_reentrant"]:
            # Reentrant checkpoints need an input that requires grad to reach the parameters inside.
            self.enable_input_require_grads()

    def activation_checkpointing_disable(self) -> None:
        for module in self.modules():
            if isinstance(module, TimesformerEncoder):
                module.gradient_checkpointing = False
                module.checkpoint_function = None
                module.checkpoint_every = 1

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    # transformers' names before 5.x (still the ones most code calls).
    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None, **kwargs
    ) -> None:
        """``activation_checkpointing_enable`` under its older name."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    # ------------------------------------------------------------ checkpoints
    @classmethod
    def _from_config(
        cls,
        config: TimesformerConfig,
        *,
        backend: str | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
    ):
        """A new, initialized model of ``config`` in ``dtype`` (the config's when not given), as ``transformers``'
        ``_from_config``, which its Auto classes' ``from_config`` calls."""
        from .loading import loading_options, model_dtype

        options = loading_options(
            backend=backend, dtype=dtype, torch_dtype=torch_dtype, attn_implementation=attn_implementation
        )
        model = cls(config, backend=options["backend"])
        dtype = model_dtype(options["dtype"], model.config, {})
        model.config.dtype = dtype  # as transformers: the config records the weights' dtype
        return model.to(dtype)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
        *,
        backend: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        config: TimesformerConfig | None = None,
        ignore_mismatched_sizes: bool = False,
        torch_dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        device_map: Any = None,
        subfolder: str = "",
        local_files_only: bool = False,
        output_loading_info: bool = False,
        low_cpu_mem_usage: bool | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
        use_safetensors: bool | None = None,
        variant: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
        adapter_name: str | None = None,
        adapter_kwargs: Mapping[str, Any] | None = None,
        **config_overrides: Any,
    ):
        """Load a checkpoint written by ``transformers``' ``save_pretrained`` (or ours), or a PEFT adapter with
        its base model.

        Args:
            pretrained_model_name_or_path: a local directory with ``config.json`` and ``model.safetensors``
                (or ``pytorch_model.bin``, or a sharded index of either), or a hub id, resolved through
                ``huggingface_hub`` when installed (its offline cache works); ``None`` builds the model from
                ``config`` and ``state_dict``.
            backend: ``"auto"``, ``"eager"``, ``"sdpa"`` or ``"triton"``; by default the config's
                ``_attn_implementation`` (a ``config=`` may set it), else ``"auto"``.
            dtype: parameter dtype; the default ``"auto"`` (as transformers 5) takes the checkpoint's
                (its config's ``dtype``; else its first floating-point weight's).
            device: where to put the model.
            config: use this config instead of the checkpoint's ``config.json``: a config, or where to read one
                (a folder, a ``config.json`` file or a hub id).
            ignore_mismatched_sizes: re-initialize (with a warning) weights whose shapes differ, e.g. a
                classifier head for another number of labels.
            torch_dtype: ``transformers``' older name of ``dtype``.
            attn_implementation: ``transformers``' attention choice, mapped to a backend: ``"eager"`` ->
                ``eager``, ``"sdpa"`` -> ``sdpa``, ``"flash_attention_2"`` -> ``auto`` (the fused kernels
                where they run); others are refused. Recorded as ``config._attn_implementation``.
            device_map: one device (``"cuda:0"``, ``0``, ``torch.device``, or ``{"": device}``); splitting a
                model over devices (``"auto"``, several entries) is refused.
            subfolder: the checkpoint lies in this subfolder of the directory or hub repository.
            local_files_only: never download (a hub id must be in the local cache).
            output_loading_info: also return ``{"missing_keys", "unexpected_keys", "mismatched_keys",
                "error_msgs"}`` (the first two are always empty: such checkpoints raise ``CheckpointError``).
            low_cpu_mem_usage: accepted for compatibility; loading never holds more than the checkpoint and one
                model.
            state_dict: use these weights (``transformers``' key names or ours) instead of the checkpoint's files.
            use_safetensors: ``True``: only safetensors files; ``False``: only ``pytorch_model.bin`` files;
                ``None``: safetensors first.
            variant: the weights saved with ``save_pretrained(variant=...)`` (``model.fp16.safetensors``).
            revision, cache_dir, token, force_download: where a hub id's snapshot comes from (``huggingface_hub``'s
                ``snapshot_download``); no effect on a local directory.
            adapter_name, adapter_kwargs: for a folder (or hub repository) holding a PEFT adapter
                (``adapter_config.json``), as in ``transformers``: the base model its config names
                (``base_model_name_or_path``; or a local folder itself when it also holds ``config.json``) is
                loaded with the other arguments, then the adapter with ``load_adapter(folder, adapter_name,
                ...)``. ``adapter_kwargs``: ``load_adapter``'s options for the adapter alone, the download
                options (``subfolder``, ``revision``, ``token``, ...; the model's by default) and, beyond
                ``transformers``, ``is_trainable`` and ``use_safetensors``.
            **config_overrides: config fields to override (e.g. ``num_labels=10``). Of ``transformers``' other
                keywords, ``trust_remote_code`` has no effect (no code is fetched) and ``weights_only``,
                ``quantization_config``, ``max_memory``, ``offload_folder``, ``key_mapping``, ... are accepted at
                their defaults only; other names are refused.
        """
        from .adapters import adapter_options, find_adapter
        from .loading import load_pretrained, loading_options

        # Arguments are checked before anything is fetched.
        options = loading_options(
            backend=backend,
            dtype=dtype,
            device=device,
            torch_dtype=torch_dtype,
            attn_implementation=attn_implementation,
            device_map=device_map,
            config_overrides=config_overrides,
        )
        hub = {"revision": revision, "cache_dir": cache_dir, "token": token, "force_download": force_download}
        adapter_kwargs = dict(adapter_kwargs or {})
        # transformers' Auto classes find an adapter folder's base themselves: they load the base through here
        # and name the adapter folder this way.
        adapter_path = adapter_kwargs.pop("_adapter_model_path", None)
        for_adapter = adapter_options(cls, subfolder, local_files_only, hub, adapter_kwargs)
        base = None
        if pretrained_model_name_or_path is not None and adapter_path is None:
            base = find_adapter(pretrained_model_name_or_path, **for_adapter)
        if base is None and adapter_path is None and adapter_name is not None:
            # (adapter_kwargs alone are ignored then, as transformers does: its Auto classes always pass some.)
            raise ValueError(
                "from_pretrained: adapter_name applies to a folder holding a PEFT adapter; found no "
                f"adapter_config.json for {str(pretrained_model_name_or_path)!r}"
            )
        path, base_subfolder = (pretrained_model_name_or_path, subfolder) if base is None else base
        if isinstance(
            config, (str, os.PathLike)
        ):  # a folder, config.json or hub id, as transformers takes it
            config = TimesformerConfig.from_pretrained(config, local_files_only=local_files_only, **hub)
        try:
            loaded = load_pretrained(
                cls,
                path,
                config=None if config is None else _our_config(config),
                ignore_mismatched_sizes=ignore_mismatched_sizes,
                subfolder=base_subfolder,
                local_files_only=local_files_only,
                output_loading_info=output_loading_info,
                state_dict=state_dict,
                use_safetensors=use_safetensors,
                variant=variant,
                hub=hub,
                **options,
            )
        except FileNotFoundError as e:
            if base is None:
                raise
            raise FileNotFoundError(
                f"{str(pretrained_model_name_or_path)!r} holds a PEFT adapter whose base model {path!r} (its "
                "adapter_config.json's base_model_name_or_path; a relative path is taken from the current "
                f"directory) could not be loaded: {e}"
            ) from e
        if base is not None or adapter_path is not None:
            model = loaded[0] if output_loading_info else loaded
            source = pretrained_model_name_or_path if adapter_path is None else adapter_path
            model.load_adapter(source, adapter_name=adapter_name, **for_adapter)
        return loaded

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        push_to_hub: bool = False,
        max_shard_size: int | str = "50GB",
        *,
        safe_serialization: bool = True,
        variant: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``) as transformers does.

        Args:
            save_directory: created if missing; weight files of an earlier save there are replaced.
            is_main_process: ``False`` writes nothing (the other ranks of a distributed job).
            state_dict: the tensors to write instead of the model's own (e.g. gathered from shards).
            push_to_hub: only ``False``: this package never uploads (``huggingface_hub.upload_folder`` does).
            max_shard_size: bytes per weight file (an int, or ``"500MB"``, ``"2GiB"``, ...); a larger model
                is written as numbered shards and an index, as transformers does.
            safe_serialization: safetensors (default) or a ``torch.save`` pickle.
            variant: spelled into the file names as transformers does (``model.fp16.safetensors``); load with
                ``from_pretrained(dir, variant=...)``. Files of other variants stay.
            kwargs: transformers' ``token``, ``save_peft_format``, ``save_original_format`` and
                ``distributed_checkpoint`` are accepted at their defaults only; its upload options (``repo_id``,
                ``commit_message``, ``private``, ...) are not used, as there without ``push_to_hub``; ``save_function`` (which
                transformers' example scripts pass: ``accelerator.save``) is accepted and not used, as in
                ``transformers`` 5 (``is_main_process`` decides who writes).
        """
        from .loading import save_pretrained

        kwargs.pop("save_function", None)
        # First: with push_to_hub, transformers passes the other keywords (repo_id, commit_message, private,
        # ...) on to the upload, which is what is refused; without it they are unused, as there.
        refuse_push_to_hub(push_to_hub)
        for name in _UPLOAD_KEYWORDS:
            kwargs.pop(name, None)
        defaults = {
            "token": None,
            "save_peft_format": True,
            "save_original_format": True,
            "distributed_checkpoint": False,
        }
        for name, value in kwargs.items():
            if name not in defaults:
                raise TypeError(f"save_pretrained() got an unexpected keyword argument {name!r}")
            if value != defaults[name]:
                raise ValueError(
                    f"save_pretrained: {name}={value!r} is not supported (only {defaults[name]!r})"
                )
        if not is_main_process:
            return
        if self._hf_peft_config_loaded:  # as transformers: the active adapter alone, in PEFT's format
            if variant is not None:
                raise ValueError(
                    "save_pretrained: variant does not apply to adapters (PEFT's file names are fixed)"
                )
            self._save_adapters(os.fspath(save_directory), state_dict, safe_serialization)
            return
        save_pretrained(
            self,
            save_directory,
            safe_serialization=safe_serialization,
            state_dict=state_dict,
            max_shard_size=max_shard_size,
            variant=variant,
        )

    # ------------------------------------------------------------ encoder run
    def _calls_modules(self, output_attentions: bool) -> bool:
        """Whether this call runs the modules themselves (``eager``) rather than the backend's fused path."""
        if output_attentions or self._requested_backend == "eager":
            return True  # attention maps exist only in the eager computation
        reason = module_path_reason(self)
        if (
            reason is not None
            and getattr(self, "_warned_module_path", None) != reason
            and not torch.compiler.is_compiling()  # logging cannot be traced
        ):
            for model in self.modules():  # one warning: the encoder model inside a classifier says no more
                if isinstance(model, TimesformerPreTrainedModel):
                    model._warned_module_path = module_path_reason(model)
            logger.warning(
                "%s: %s, so forwards call every module (the eager computation) instead of the %s "
                "backend's fused path; for speed remove the hooks or patch, merge and unload the adapter "
                "(PEFT's merge_and_unload), put every module in the model's mode, or the attention scales back",
                type(self).__name__,
                reason,
                self._requested_backend,  # (the backend it would resolve to: unknown for offloaded weights)
            )
        return reason is not None

    def _encode(
        self,
        impl: Backend,
        model: TimesformerModel,
        pixel_values,
        output_attentions,
        output_hidden_states,
        cls_only=False,
    ):
        emb = model.embeddings
        pixel_values = _check_pixel_values(
            pixel_values, self.config, self._input_channels(), emb.cls_token, emb.input_normalization
        )
        return impl.encode(
            model,
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            cls_only=cls_only,
        )

    def _flags(self, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
        cfg = self.config
        return (
            cfg.output_attentions if output_attentions is None else bool(output_attentions),
            cfg.output_hidden_states if output_hidden_states is None else bool(output_hidden_states),
            cfg.return_dict if return_dict is None else bool(return_dict),
        )


def _our_config(config) -> TimesformerConfig:
    """``config``, or a ``transformers.TimesformerConfig`` converted (its public fields)."""
    if isinstance(config, TimesformerConfig):
        return config
    if getattr(config, "model_type", None) == "timesformer" and callable(getattr(config, "to_dict", None)):
        return TimesformerConfig.from_dict(
            {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
        )
    raise TypeError(
        f"config must be a TimesformerConfig (ours or transformers'), got {type(config).__name__}"
    )


def unused_forward_arguments(kwargs: dict[str, Any]) -> None:
    """Arguments of other models' ``forward`` (PEFT's sequence-classification wrapper passes ``input_ids``,
    ``attention_mask`` and ``inputs_embeds`` as ``None``) are accepted as ``None``; a value is refused rather
    than ignored (``transformers``' ``**kwargs`` drops e.g. ``interpolate_pos_encoding=True`` silently)."""
    given = sorted(name for name, value in kwargs.items() if value is not None)
    if given:
        raise TypeError(
            f"forward() got unexpected keyword argument(s) {given}: arguments this model does not take are "
            "accepted only as None"
        )


class TimesformerModel(TimesformerPreTrainedModel):
    """The TimeSformer encoder (``transformers.TimesformerModel``).

    Args:
        config: model configuration.
        backend: ``"auto"`` (``triton`` where it runs, else ``sdpa``), ``"eager"``, ``"sdpa"`` or ``"triton"``;
            by default ``config._attn_implementation``, else ``"auto"``.
    """

    def __init__(self, config: TimesformerConfig, *, backend: str | None = None) -> None:
        super().__init__(config, backend=backend)
        config = self.config  # converted from a transformers config by the base class
        self.embeddings = TimesformerEmbeddings(config)
        self.encoder = TimesformerEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput | tuple:
        """Encode clips.

        Args:
            pixel_values: ``(batch, frames, channels, height, width)`` normalized pixels, or uint8 frames
                ``(batch, frames, height, width, channels)`` that the model normalizes itself (after
                ``set_input_normalization``). Frame count and resolution may differ from the config's
                (embeddings are interpolated, and every layer uses the input's frames and patch grid); height
                and width must be multiples of the patch size.
            kwargs: arguments of other models that callers pass along (PEFT: ``input_ids=None``), accepted
                as ``None`` only; any other value is a ``TypeError`` (see ``unused_forward_arguments``).

        Returns:
            ``BaseModelOutput`` (or its tuple when ``return_dict=False``): ``last_hidden_state`` of shape
            ``(batch, 1 + patches * frames, hidden)``, or ``(batch * frames, 1 + patches, hidden)`` for
            ``space_only``.
        """
        unused_forward_arguments(kwargs)
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        impl = get_backend("eager") if self._calls_modules(output_attentions) else self._backend_impl()
        x, hidden_states, attentions, _ = self._encode(
            impl, self, pixel_values, output_attentions, output_hidden_states
        )
        if self.layernorm is not None:  # as transformers: a model may drop its final LayerNorm
            x = self.layernorm(x)
        out = output_types()[0](last_hidden_state=x, hidden_states=hidden_states, attentions=attentions)
        return out if return_dict else out.to_tuple()


# Either stands at a layer's drop_path (nn.Identity at rate 0, as transformers): the fused backends read the
# rate (``TimesformerLayer.drop_path_rate``), so one may replace the other.
_DROP_PATHS = (TimesformerDropPath, nn.Identity)


class TimesformerForVideoClassification(TimesformerPreTrainedModel):
    """TimeSformer with a linear head on the final CLS token (``transformers.TimesformerForVideoClassification``)."""

    # The Trainer passes num_items_in_batch and leaves the gradient-accumulation scaling to the loss.
    accepts_loss_kwargs = True
    _auto_model = "AutoModelForVideoClassification"

    def __init__(self, config: TimesformerConfig, *, backend: str | None = None) -> None:
        super().__init__(config, backend=backend)
        config = self.config  # converted from a transformers config by the base class
        self.num_labels = config.num_labels
        self.timesformer = TimesformerModel(config, backend=backend)
        self.classifier = (
            nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def set_backend(self, name: str) -> TimesformerForVideoClassification:
        super().set_backend(name)
        self.timesformer.set_backend(name)
        return self

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput | tuple:
        """Classify clips.

        Args:
            pixel_values: ``(batch, frames, channels, height, width)``, see ``TimesformerModel.forward``.
            labels: ``(batch,)`` class indices (single-label), ``(batch, num_labels)`` floats
                (multi-label) or ``(batch,)`` / ``(batch, 1)`` floats (regression, ``num_labels == 1``).
                For ``space_only`` there is one logits row per frame, so ``batch * frames`` labels.
            num_items_in_batch: what the ``Trainer`` passes under gradient accumulation (the labels of the
                step's batches): the loss is summed and divided by it (``classification_loss``).
            kwargs: as in ``TimesformerModel.forward``: ``None`` only.

        Returns:
            ``ImageClassifierOutput`` (or its tuple): ``logits`` ``(batch, num_labels)``, ``loss`` when
            labels were given.
        """
        unused_forward_arguments(kwargs)
        output_attentions, output_hidden_states, return_dict = self._flags(
            output_attentions, output_hidden_states, return_dict
        )
        if self._calls_modules(output_attentions):
            # The reference's calls, with its arguments, so that hooks on (and adapters in) the encoder and head
            # all run and see what they see in transformers.
            out = self.timesformer(
                pixel_values,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=return_dict,
            )
            if return_dict:
                sequence, hidden_states, attentions = out.last_hidden_state, out.hidden_states, out.attentions
            else:  # the tuple holds what the flags asked for, in BaseModelOutput's order
                sequence, *rest = out
                hidden_states = rest.pop(0) if output_hidden_states else None
                attentions = rest.pop(0) if output_attentions else None
            logits = self.classifier(sequence[:, 0])
        else:
            impl = self._backend_impl()
            x, hidden_states, attentions, fwd = self._encode(
                impl, self.timesformer, pixel_values, output_attentions, output_hidden_states, cls_only=True
            )
            # LayerNorm is per row and the head reads CLS only: normalize just the CLS rows.
            logits = impl.classify(self.timesformer.layernorm, self.classifier, x[:, :1], fwd)
        loss = None if labels is None else self._loss(logits, labels, num_items_in_batch)
        out = output_types()[1](loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)
        return out if return_dict else out.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        from .losses import classification_loss

        # The model's num_labels, as transformers reads it: a replaced head sets it without the config.
        return classification_loss(self.config, logits, labels, num_items_in_batch, self.num_labels)
