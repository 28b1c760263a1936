"""CudaGraphRunner: graph caching, keying, LRU, cloned outputs, staleness and fallbacks.

The CPU tests swap the CUDA graphs for ``FakeGraphs``, which keeps their contract on the CPU: "capture"
runs the forward once into static outputs and "replay" reruns it into the same tensors, computing with
the parameter values, input normalization and prepared weights of capture time, so a graph the runner failed to drop gives
the old model's outputs, as a stale CUDA graph would. The ``gpu`` tests run the real CUDA graphs.
"""

from __future__ import annotations

import contextlib
import copy
from unittest import mock

import pytest
import torch
from conftest import random_clip, randomize_, small_config_kwargs
from torch import nn

import timesformer
from timesformer import TimesformerConfig, TimesformerForVideoClassification, TimesformerModel
from timesformer import cuda_graphs as cg
from timesformer.cuda_graphs import CudaGraphRunner


# --------------------------------------------------------------------------- helpers
def _embeddings(model: nn.Module) -> nn.Module:
    return model.timesformer.embeddings if hasattr(model, "timesformer") else model.embeddings


def _capture_time_state(model: nn.Module) -> tuple:
    tensors = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    return tensors, _embeddings(model).input_normalization


@contextlib.contextmanager
def _as_at_capture(model: nn.Module, state: tuple):
    """Run with the parameter/buffer values (set through ``.data``: no version bump), input normalization
    and prepared weights of capture time, then put back the current ones."""
    frozen, frozen_norm = state
    tensors = [*model.parameters(), *model.buffers()]
    live = [t.detach().clone() for t in tensors]
    caches = [
        (m.__dict__, m.__dict__["_weight_cache"].copy() if "_weight_cache" in m.__dict__ else None)
        for m in model.modules()
    ]
    embeddings = _embeddings(model)
    norm = embeddings.input_normalization
    with torch.no_grad():
        for t, value in zip(tensors, frozen, strict=False):
            t.data.copy_(value)
        embeddings.input_normalization = frozen_norm
        try:
            yield
        finally:
            embeddings.input_normalization = norm
            for t, value in zip(tensors, live, strict=True):
                t.data.copy_(value)
            for d, cache in caches:
                if cache is None:
                    d.pop("_weight_cache", None)
                else:
                    d["_weight_cache"] = cache


class FakeGraphs:
    """The graph-factory contract of ``timesformer.cuda_graphs._CudaGraphs``, on the CPU."""

    def __init__(self, model: nn.Module, supported: bool = True) -> None:
        self.model = model
        self.supported = supported
        self.captures = 0
        self.replays = 0
        self.pools = 0

    def supports(self, device: torch.device) -> bool:
        return self.supported

    def new_pool(self):
        self.pools += 1
        return ("pool", self.pools)

    def capture(self, fn, *, device, pool):
        assert pool == ("pool", self.pools), "captured into a pool other than the newest"
        assert not torch.is_grad_enabled()
        state = _capture_time_state(self.model)
        outputs = fn()
        self.captures += 1

        def replay():
            self.replays += 1
            with _as_at_capture(self.model, state):
                fresh = fn()
            assert fresh.keys() == outputs.keys()
            for name, t in outputs.items():
                # A CUDA graph writes memory: no inference-mode rule applies to its static outputs.
                with torch.inference_mode(t.is_inference()):
                    t.copy_(fresh[name])

        return replay, outputs


def _model(cls=TimesformerForVideoClassification, attention_type="divided_space_time", seed=0, **overrides):
    kwargs = small_config_kwargs(attention_type, seed, **overrides)
    model = cls(TimesformerConfig(**kwargs), backend="sdpa")
    return randomize_(model, seed).eval(), kwargs


def _runner(model, **kwargs) -> tuple[CudaGraphRunner, FakeGraphs]:
    runner = CudaGraphRunner(model, **kwargs)
    fake = FakeGraphs(model)
    runner._graph_factory = fake
    return runner, fake


def _frames_u8(kwargs: dict, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Decoded frames ``(batch, frames, height, width, channels)``."""
    gen = torch.Generator().manual_seed(seed)
    size = kwargs["image_size"]
    shape = (batch, kwargs["num_frames"], size, size, kwargs["num_channels"])
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


def _assert_same(got, expected) -> None:
    assert type(got) is type(expected)
    if isinstance(expected, tuple):
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            _assert_same(a, b)
    elif isinstance(expected, torch.Tensor):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert torch.equal(got, expected), float((got.double() - expected.double()).abs().max())
    else:  # a ModelOutput
        assert list(got.keys()) == list(expected.keys())
        for key in expected:
            _assert_same(got[key], expected[key])


# --------------------------------------------------------------------------- CPU: caching and keying
@pytest.mark.parametrize("cls", [TimesformerForVideoClassification, TimesformerModel])
@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_outputs_equal_the_models(cls, attention_type):
    model, kwargs = _model(cls, attention_type, seed=1)
    runner, fake = _runner(model)
    with torch.no_grad():
        for seed in range(3):
            x = random_clip(kwargs, batch=2, seed=seed)
            _assert_same(runner(x), model(x))
            _assert_same(runner(x, return_dict=False), model(x, return_dict=False))
    assert (fake.captures, runner.num_graphs) == (1, 1)
    assert fake.replays == 6


def test_a_new_shape_or_dtype_captures_another_graph():
    model, kwargs = _model(seed=2)
    runner, fake = _runner(model)
    inputs = [
        random_clip(kwargs, batch=1),
        random_clip(kwargs, batch=2),
        random_clip(kwargs, batch=1, frames=kwargs["num_frames"] + 1),
        random_clip(kwargs, batch=1, hw=(kwargs["image_size"] + 8, kwargs["image_size"])),
        random_clip(kwargs, batch=1).double(),  # converted to float32 inside the graph
        _frames_u8(kwargs, batch=1),  # normalized inside the graph
    ]
    model.set_input_normalization([0.45, 0.4, 0.5][: kwargs["num_channels"]], [0.2])
    with torch.inference_mode():
        for i, x in enumerate(inputs):
            _assert_same(runner(x), model(x))
            assert (fake.captures, runner.num_graphs) == (i + 1, i + 1)
        for x in inputs:  # every shape replays its own graph
            _assert_same(runner(x), model(x))
    assert fake.captures == len(inputs)
    assert fake.pools == 1  # one shared pool


def test_backend_is_part_of_the_key():
    model, kwargs = _model(seed=3)
    runner, fake = _runner(model)
    x = random_clip(kwargs)
    with torch.no_grad():
        runner(x)
        model.set_backend("eager")
        _assert_same(runner(x), model(x))
    assert fake.captures == 2


def test_least_recently_used_graph_is_dropped():
    model, kwargs = _model(seed=4)
    runner, fake = _runner(model, max_graphs=2)
    a, b, c = (random_clip(kwargs, batch=n) for n in (1, 2, 3))
    with torch.no_grad():
        for x, captures in [(a, 1), (b, 2), (a, 2), (c, 3), (a, 3), (b, 4), (c, 5)]:
            _assert_same(runner(x), model(x))
            assert fake.captures == captures
            assert runner.num_graphs == min(captures, 2)


def test_a_new_pool_when_no_graph_is_left():
    model, kwargs = _model(seed=4)
    runner, fake = _runner(model, max_graphs=1)
    with torch.no_grad():
        runner(random_clip(kwargs, batch=1))
        runner(random_clip(kwargs, batch=2))  # evicts the only graph, whose pool may be released
        runner.reset()
        runner(random_clip(kwargs, batch=1))
    assert (fake.captures, fake.pools) == (3, 3)


def test_returned_tensors_are_never_overwritten():
    model, kwargs = _model(seed=5)
    runner, _ = _runner(model)
    x1, x2 = random_clip(kwargs, seed=1), random_clip(kwargs, seed=2)
    with torch.no_grad():
        first = runner(x1).logits
        kept = first.clone()
        second = runner(x2).logits
    assert torch.equal(first, kept)
    assert not torch.equal(first, second)
    assert first.data_ptr() != second.data_ptr()


def test_input_strides_do_not_matter():
    model, kwargs = _model(seed=6)
    runner, fake = _runner(model)
    x = random_clip(kwargs, batch=2)
    strided = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not strided.is_contiguous()
    with torch.no_grad():
        _assert_same(runner(x), model(x))
        _assert_same(runner(strided), model(x))
    assert fake.captures == 1


def test_inference_mode_and_no_grad_share_graphs():
    model, kwargs = _model(seed=7)
    runner, fake = _runner(model)
    x = random_clip(kwargs)
    with torch.inference_mode():
        _assert_same(runner(x), model(x))
    with torch.no_grad():
        out = runner(x)
        _assert_same(out, model(x))
    assert not out.logits.is_inference()
    model.requires_grad_(False)  # grad enabled, but nothing needs it
    _assert_same(runner(x), model(x))
    assert fake.captures == 1


def test_reset():
    model, kwargs = _model(seed=8)
    runner, fake = _runner(model)
    x = random_clip(kwargs)
    with torch.no_grad():
        runner(x)
        runner.reset()
        assert runner.num_graphs == 0
        _assert_same(runner(x), model(x))
    assert (fake.captures, runner.num_graphs) == (2, 1)


# --------------------------------------------------------------------------- CPU: staleness
def _load_other_weights(model, x):
    model.load_state_dict(randomize_(copy.deepcopy(model), seed=99).state_dict())


def _add_in_place(model, x):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))


def _step(optimizer_cls, **options):
    def step(model, x):
        optimizer = optimizer_cls(model.parameters(), **options)
        with torch.enable_grad():
            model(x).logits.square().mean().backward()
        optimizer.step()

    return step


def _replace_head(model, x):
    model.classifier = randomize_(nn.Linear(model.config.hidden_size, model.config.num_labels), seed=3).eval()


def _data_edit_then_clear_weight_cache(model, x):
    with torch.no_grad():
        for p in model.parameters():
            p.data.mul_(1.5)  # no version bump: only the cleared cache tells
    model.clear_weight_cache()


def _peft_merge_and_unload(model, x):
    """PEFT merges through ``.data`` (no version bump, same storage) and then puts the base layers back."""
    import peft

    lora = peft.LoraConfig(target_modules=["temporal_dense", "qkv", "dense"], r=2, init_lora_weights=False)
    assert peft.get_peft_model(model, lora).merge_and_unload() is model


def _other_input_normalization(model, x):
    model.set_input_normalization([0.3], [0.2])


CHANGES = {
    "load_state_dict": _load_other_weights,
    "add_": _add_in_place,
    "sgd_step": _step(torch.optim.SGD, lr=0.5),
    "fused_adam_step": _step(torch.optim.Adam, lr=0.1, fused=True),  # bumps no version counter
    "replaced_submodule": _replace_head,
    "clear_weight_cache": _data_edit_then_clear_weight_cache,
    "peft_merge_and_unload": _peft_merge_and_unload,
    "set_input_normalization": _other_input_normalization,
}


# (change, uint8 frames?); the input normalization applies to uint8 frames only.
CHANGE_CASES = [
    pytest.param(change, frames_u8, id=f"{change}-{'uint8' if frames_u8 else 'float'}")
    for change in CHANGES
    for frames_u8 in (False, True)
    if frames_u8 or change != "set_input_normalization"
]


def _changing(change: str, frames_u8: bool):
    model, kwargs = _model(seed=10)
    model.set_input_normalization([0.45], [0.225])
    x = _frames_u8(kwargs) if frames_u8 else random_clip(kwargs)
    return model, x


@pytest.mark.parametrize(("change", "frames_u8"), CHANGE_CASES)
def test_outputs_follow_changed_weights(change, frames_u8):
    model, x = _changing(change, frames_u8)
    runner, fake = _runner(model)
    with torch.no_grad():
        before = runner(x).logits
    CHANGES[change](model, x)
    with torch.no_grad():
        got = runner(x)  # before the model's own forward refreshes its prepared weights
        expected = model(x)
        assert not torch.equal(expected.logits, before)
        _assert_same(got, expected)
        assert (fake.captures, runner.num_graphs) == (2, 1)
        _assert_same(runner(x), expected)
    assert fake.captures == 2


@pytest.mark.parametrize(("change", "frames_u8"), CHANGE_CASES)
def test_the_fake_goes_stale_without_the_check(change, frames_u8):
    """Teeth of the test above: with the staleness check disabled, the old graph's outputs come back."""
    model, x = _changing(change, frames_u8)
    runner, fake = _runner(model)
    with torch.no_grad():
        before = runner(x).logits
    CHANGES[change](model, x)
    with mock.patch.object(cg._Snapshot, "check", return_value=(True, False)), torch.no_grad():
        assert torch.equal(runner(x).logits, before)
    assert fake.captures == 1


def test_to_another_dtype_drops_the_old_graphs():
    model, kwargs = _model(seed=11)
    runner, fake = _runner(model)
    x = random_clip(kwargs)
    with torch.no_grad():
        runner(x)
        runner(random_clip(kwargs, batch=3))
        model.double()
        _assert_same(runner(x), model(x))
    assert (fake.captures, runner.num_graphs) == (3, 1)


def _triton_runner(seed: int):
    """A small triton-backend model (the interpreter on the CPU) and its runner on ``FakeGraphs``."""
    if not timesformer.available_backends("cpu")["triton"].available:
        pytest.skip("triton does not run on the CPU here")
    model, kwargs = _model(seed=seed)
    model.set_backend("triton")
    runner, fake = _runner(model)
    return model, kwargs, runner, fake


def test_triton_backend_in_the_interpreter():
    """The triton backend's prepared weights (LayerNorm folded into projections, tables per shape)."""
    model, kwargs, runner, fake = _triton_runner(seed=1)
    x = random_clip(kwargs)
    with torch.no_grad():
        _assert_same(runner(x), model(x))
        model.timesformer.encoder.layer[-1].layernorm_after.weight.mul_(-1.0)
        got = runner(x)
        _assert_same(got, model(x))
    assert (fake.captures, runner.num_graphs) == (2, 1)


def test_tables_an_older_graph_reads_stay_alive_and_their_eviction_recaptures(monkeypatch):
    """A capture's warm-up can evict prepared weights an older graph reads by address (tables of another
    input size, past the cache's size): they stay alive, and their eviction is a change that recaptures."""
    from timesformer import weight_cache

    model, kwargs, runner, fake = _triton_runner(seed=3)
    embeddings = _embeddings(model)
    a = random_clip(kwargs)
    b = random_clip(kwargs, frames=kwargs["num_frames"] + 1)  # its own time table
    with torch.no_grad():
        runner(a)
        read_by_a = list(weight_cache.entries(embeddings).values())
        monkeypatch.setattr(weight_cache, "MAX_ENTRIES_PER_MODULE", len(read_by_a))
        runner(b)
        assert runner.num_graphs == 2 and fake.captures == 2
        live = weight_cache.entries(embeddings).values()
        assert any(all(e is not other for other in live) for e in read_by_a), "nothing was evicted"
        kept = [entry for _, _, entry in runner._snapshot.prepared]
        assert all(any(e is k for k in kept) for e in read_by_a)
        assert not runner._snapshot.check()[0]
        _assert_same(runner(a), model(a))
    assert fake.captures == 3 and runner.num_graphs == 1


# --------------------------------------------------------------------------- CPU: fallbacks
def _fallbacks(model, x):
    def train(call):
        model.train()
        try:
            return call()
        finally:
            model.eval()

    def one_module_training(call):
        model.timesformer.encoder.layer[0].train()
        try:
            return call()
        finally:
            model.eval()

    def input_requires_grad(call):
        model.requires_grad_(False)
        try:
            return call(x.clone().requires_grad_())
        finally:
            model.requires_grad_(True)

    def config_hidden_states(call):
        model.config.output_hidden_states = True
        try:
            return call()
        finally:
            model.config.output_hidden_states = False

    return {
        "train": train,
        "one_module_training": one_module_training,
        "params_require_grad": lambda call: call(),  # grad enabled, parameters require grad
        "input_requires_grad": input_requires_grad,
        "output_hidden_states": lambda call: call(output_hidden_states=True),
        "output_attentions": lambda call: call(output_attentions=True),
        "config_output_hidden_states": config_hidden_states,
    }


@pytest.mark.parametrize("case", list(_fallbacks(None, None)))
def test_fallbacks_run_the_model(case):
    model, kwargs = _model(seed=12)  # no dropout: training-mode outputs are deterministic
    runner, fake = _runner(model)
    x = random_clip(kwargs)
    labels = torch.arange(2) % kwargs["num_labels"]
    with torch.no_grad():
        runner(x)  # a graph exists, and stays
    how = _fallbacks(model, x)[case]
    autograd = case in ("params_require_grad", "input_requires_grad")

    def call_both(pixel_values=x, **kw):
        return runner(pixel_values, labels=labels, **kw), model(pixel_values, labels=labels, **kw)

    with torch.set_grad_enabled(autograd):
        got, expected = how(call_both)
    _assert_same(got, expected)
    assert got.loss.requires_grad == autograd
    assert (fake.captures, fake.replays, runner.num_graphs) == (1, 1, 1)


def test_a_training_model_captures_nothing():
    model, kwargs = _model(seed=12)
    runner, fake = _runner(model)
    x = random_clip(kwargs)
    model.train()
    with torch.no_grad():
        _assert_same(runner(x), model(x))
    assert (fake.captures, runner.num_graphs) == (0, 0)


def test_no_cuda_no_graph():
    model, kwargs = _model(seed=13)
    runner = CudaGraphRunner(model)  # the real factory: the CPU model runs eagerly
    x = random_clip(kwargs)
    with torch.no_grad():
        _assert_same(runner(x), model(x))
    assert runner.num_graphs == 0
    runner._graph_factory = FakeGraphs(model, supported=False)
    with torch.no_grad():
        _assert_same(runner(x), model(x))
    assert runner.num_graphs == 0


# --------------------------------------------------------------------------- CPU: labels, tuples, errors
@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only"])
def test_labels_give_the_models_loss(attention_type):
    model, kwargs = _model(attention_type=attention_type, seed=14)
    runner, fake = _runner(model)
    x = random_clip(kwargs, batch=3)
    rows = 3 * kwargs["num_frames"] if attention_type == "space_only" else 3
    labels = torch.arange(rows) % kwargs["num_labels"]
    with torch.no_grad():
        out = runner(x, labels=labels)
        _assert_same(out, model(x, labels=labels))
        assert out.loss is not None
        _assert_same(runner(x, labels=labels, return_dict=False), model(x, labels=labels, return_dict=False))
        _assert_same(runner(x), model(x))
    assert fake.captures == 1


def test_config_return_dict_false_gives_tuples():
    model, kwargs = _model(TimesformerModel, seed=15, return_dict=False)
    runner, _ = _runner(model)
    x = random_clip(kwargs)
    with torch.no_grad():
        out = runner(x)
        assert isinstance(out, tuple) and len(out) == 1
        _assert_same(out, model(x))
        _assert_same(runner(x, return_dict=True), model(x, return_dict=True))


def test_errors():
    model, kwargs = _model(seed=16)
    with pytest.raises(TypeError, match="TimesformerModel or"):
        CudaGraphRunner(nn.Linear(2, 2))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_graphs"):
            CudaGraphRunner(model, max_graphs=bad)
    encoder, _ = _model(TimesformerModel, seed=16)
    with pytest.raises(TypeError, match="labels"):
        CudaGraphRunner(encoder)(random_clip(kwargs), labels=torch.tensor([0, 1]))

    runner, fake = _runner(model)
    wrong_channels = torch.randn(1, kwargs["num_frames"], kwargs["num_channels"] + 1, 16, 16)
    with torch.no_grad(), pytest.raises(ValueError, match="channels"):
        runner(wrong_channels)
    with torch.no_grad(), pytest.raises(TypeError, match="pixel_values must be a torch.Tensor"):
        runner([1.0])
    assert (fake.captures, runner.num_graphs) == (0, 0)
    with torch.no_grad():
        x = random_clip(kwargs)
        _assert_same(runner(x), model(x))
    assert (fake.captures, runner.num_graphs) == (1, 1)


def test_the_cuda_factory_with_cuda_mocked():
    """The CUDA-only code's control flow: warm-up on a side stream, capture into the pool, replay."""
    events = []

    class Stream:
        def wait_stream(self, other):
            events.append("wait")

    class CUDAGraph:
        def replay(self):
            events.append("replay")

    @contextlib.contextmanager
    def graph(cuda_graph, pool=None, stream=None, capture_error_mode="global"):
        assert isinstance(cuda_graph, CUDAGraph) and stream is None
        events.append(("capture", pool, capture_error_mode))
        yield

    def fn():
        events.append("fn")
        return {"logits": torch.zeros(1)}

    cuda = dict(
        device=lambda device: contextlib.nullcontext(),
        Stream=Stream,
        stream=lambda s: contextlib.nullcontext(),
        current_stream=Stream,
        CUDAGraph=CUDAGraph,
        graph=graph,
    )
    factory = cg._CudaGraphs()
    assert not factory.supports(torch.device("cpu"))
    with mock.patch.multiple(torch.cuda, **cuda):
        replay, outputs = factory.capture(fn, device=torch.device("cpu"), pool="the pool")
        replay()
    assert set(outputs) == {"logits"}
    assert events == [
        "wait",
        *["fn"] * cg.WARMUP_RUNS,
        "wait",
        ("capture", "the pool", "thread_local"),
        "fn",
        "replay",
    ]


# --------------------------------------------------------------------------- GPU: the real graphs
CUDA = torch.device("cuda")
GPU_DTYPES = [torch.bfloat16, torch.float32]


class _Counting:
    """The real factory, counting captures."""

    def __init__(self) -> None:
        self.inner = cg._CudaGraphs()
        self.captures = 0

    def supports(self, device):
        return self.inner.supports(device)

    def new_pool(self):
        return self.inner.new_pool()

    def capture(self, fn, **kwargs):
        out = self.inner.capture(fn, **kwargs)
        self.captures += 1
        return out


def _gpu_model(backend, dtype, cls=TimesformerForVideoClassification, seed=20):
    kwargs = small_config_kwargs("divided_space_time", seed, num_frames=3, image_size=32, num_channels=3)
    config = TimesformerConfig(**kwargs)
    if backend == "triton":
        info = timesformer.available_backends(CUDA, config.head_dim, dtype)["triton"]
        if not info.available:
            pytest.skip(f"triton: {info.reason}")
    model = randomize_(cls(config, backend=backend), seed).eval().to(CUDA, dtype)
    model.set_input_normalization([0.45, 0.45, 0.45], [0.225, 0.225, 0.225])
    runner = CudaGraphRunner(model)
    runner._graph_factory = _Counting()
    return model, runner, kwargs


def _gpu_clip(kwargs, dtype, **kw):
    return random_clip(kwargs, **kw).to(CUDA, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_gpu_replay_equals_eager(backend, dtype):
    model, runner, kwargs = _gpu_model(backend, dtype)
    counting = runner._graph_factory
    held = []
    with torch.inference_mode():
        for seed in range(4):  # repeated calls replay one graph
            x = _gpu_clip(kwargs, dtype, batch=1, seed=seed)
            got, expected = runner(x).logits, model(x).logits
            assert torch.equal(got, expected)
            held.append((got, expected))
        assert counting.captures == 1
        for got, expected in held:  # later replays overwrote nothing a caller holds
            assert torch.equal(got, expected)

        inputs = [
            _gpu_clip(kwargs, dtype, batch=2, frames=kwargs["num_frames"] + 1, seed=9),  # another shape
            _frames_u8(kwargs, batch=1).to(CUDA),  # uint8 frames, normalized inside the graph
        ]
        if dtype != torch.float32:
            inputs.append(random_clip(kwargs, batch=1, seed=3).to(CUDA))  # float32, cast inside the graph
        for i, x in enumerate(inputs):
            assert torch.equal(runner(x).logits, model(x).logits)
            assert (counting.captures, runner.num_graphs) == (2 + i, 2 + i)
        x = _gpu_clip(kwargs, dtype, batch=1, seed=0)
        assert torch.equal(runner(x).logits, model(x).logits)  # the first graph is still there

        labels = torch.tensor([1], device=CUDA)
        out, ref = runner(x, labels=labels), model(x, labels=labels)
        assert torch.equal(out.loss, ref.loss) and torch.equal(out.logits, ref.logits)
    with torch.no_grad():  # no_grad and inference_mode share the graphs
        assert torch.equal(runner(x).logits, model(x).logits)
    assert counting.captures == 1 + len(inputs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_gpu_weight_changes_recapture(backend, dtype):
    model, runner, kwargs = _gpu_model(backend, dtype)
    counting = runner._graph_factory
    x = _gpu_clip(kwargs, dtype, batch=1)
    with torch.inference_mode():
        before = runner(x).logits
    model.load_state_dict(randomize_(copy.deepcopy(model), seed=7).state_dict())
    with torch.inference_mode():
        after = runner(x).logits
        assert torch.equal(after, model(x).logits) and not torch.equal(after, before)
    assert counting.captures == 2
    with torch.no_grad():
        model.timesformer.encoder.layer[0].temporal_dense.weight.mul_(-1.0)  # feeds a folded weight
        flipped = runner(x).logits
        assert torch.equal(flipped, model(x).logits) and not torch.equal(flipped, after)
    assert counting.captures == 3
    u8 = _frames_u8(kwargs, batch=1).to(CUDA)
    with torch.inference_mode():
        runner(u8)
        model.set_input_normalization([0.5], [0.25])
        assert torch.equal(runner(u8).logits, model(u8).logits)
    assert counting.captures == 5


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_gpu_encoder_outputs(backend):
    model, runner, kwargs = _gpu_model(backend, torch.bfloat16, cls=TimesformerModel)
    with torch.no_grad():
        for seed in range(2):
            x = _gpu_clip(kwargs, torch.bfloat16, batch=1, seed=seed)
            got = runner(x, return_dict=False)
            assert isinstance(got, tuple) and len(got) == 1
            assert torch.equal(got[0], model(x).last_hidden_state)
    assert runner._graph_factory.captures == 1


def test_model_method_returns_a_runner_that_falls_back_on_the_cpu():
    kwargs = small_config_kwargs("divided_space_time", seed=7)
    model = randomize_(
        TimesformerForVideoClassification(TimesformerConfig(**kwargs), backend="sdpa"), 7
    ).eval()
    runner = model.cuda_graphs(max_graphs=2)
    assert isinstance(runner, timesformer.CudaGraphRunner)
    x = random_clip(kwargs, seed=8)
    with torch.no_grad():
        assert torch.equal(runner(x).logits, model(x).logits)
    assert runner.num_graphs == 0
