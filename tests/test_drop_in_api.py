"""The parts of the ``transformers`` model API that users and PEFT call (issue 16), in depth: activation
(gradient) checkpointing, embeddings accessors, input require-grads, ``base_model``, ``num_parameters``,
``name_or_path``, ``transformers`` config objects, ``from_pretrained``'s keywords (``dtype``, ``state_dict``,
...), loading under ``torch.device("meta")``, the error classes and config round trips.
``test_transformers_api.py`` runs the same API through transformers' own checks, on both implementations."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from conftest import random_clip, randomize_, small_config_kwargs

from timesformer import (
    CheckpointError,
    TimesformerConfig,
    TimesformerForVideoClassification,
    TimesformerModel,
)


def _model(attention="divided_space_time", backend="sdpa", seed=0, **overrides):
    kwargs = small_config_kwargs(attention, seed, num_hidden_layers=3, **overrides)
    model = TimesformerForVideoClassification(TimesformerConfig(**kwargs), backend=backend)
    return randomize_(model, seed), kwargs


def _grads(model, x, labels):
    model.zero_grad(set_to_none=True)
    model(x, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_tensor_bytes(model, x, labels) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, labels=labels).loss
    loss.backward()
    return total


@pytest.mark.parametrize("attention", ["divided_space_time", "joint_space_time", "space_only"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients_and_keeps_less(attention, backend, reentrant):
    model, kwargs = _model(attention, backend, seed=4)
    model.train()
    x = random_clip(kwargs, batch=2)
    labels = torch.tensor([0, 1])
    if attention == "space_only":
        labels = labels.repeat_interleave(x.shape[1])
    assert model.supports_gradient_checkpointing and not model.is_gradient_checkpointing
    reference = _grads(model, x, labels)
    plain_bytes = _saved_tensor_bytes(model, x, labels)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert model.is_gradient_checkpointing and model.timesformer.is_gradient_checkpointing
    checkpointed = _grads(model, x, labels)
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)
    assert _saved_tensor_bytes(model, x, labels) < 0.7 * plain_bytes
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    # Evaluation never checkpoints.
    model.gradient_checkpointing_enable()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model.eval()(x).logits)


def test_embeddings_accessors_base_model_and_parameter_counts():
    model, _ = _model()
    assert model.get_input_embeddings() is model.timesformer.embeddings.patch_embeddings
    assert model.timesformer.get_input_embeddings() is model.get_input_embeddings()
    assert model.get_output_embeddings() is None
    assert model.base_model is model.timesformer and model.timesformer.base_model is model.timesformer
    total = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == total == model.num_parameters(exclude_embeddings=True)
    model.classifier.requires_grad_(False)
    head = sum(p.numel() for p in model.classifier.parameters())
    assert model.num_parameters(only_trainable=True) == total - head


def test_input_require_grads_on_a_frozen_embedding():
    model, kwargs = _model()
    model.train()
    model.timesformer.embeddings.requires_grad_(False)
    x = random_clip(kwargs, batch=1)
    seen = []
    first_layer = model.timesformer.encoder.layer[0]

    def forward_and_look():
        # What the layers get from the frozen embedding.
        handle = first_layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].requires_grad))
        model(x)
        handle.remove()

    forward_and_look()
    model.enable_input_require_grads()
    forward_and_look()
    model.disable_input_require_grads()
    forward_and_look()
    assert seen == [False, True, False]


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_input_require_grads_on_a_frozen_model_in_eval_mode(backend):
    """Every weight frozen, ``enable_input_require_grads`` and eval mode (a frozen base under adapters, or
    saliency): ``sdpa`` took its inference path and crashed at backward (in-place updates on a recorded
    graph), ``triton`` returned logits without a graph. (No hook here: a hook makes the model call its
    modules, which worked.)"""
    logits = {}
    for name in ("eager", backend):
        model, kwargs = _model(backend=name, seed=3)
        model.requires_grad_(False).eval().enable_input_require_grads()
        logits[name] = model(random_clip(kwargs, batch=2)).logits
        assert logits[name].requires_grad
        logits[name].square().sum().backward()
    torch.testing.assert_close(logits[backend], logits["eager"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_vmap_over_clips_gives_the_unbatched_logits(backend):
    """``torch.func.vmap`` of a frozen eval model (per-sample saliency, ensembles): on ``triton`` the inference
    path's in-place custom ops have no batching rule and failed."""
    model, kwargs = _model(backend=backend, seed=4)
    model.eval().requires_grad_(False)
    x = random_clip(kwargs, batch=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on ops it batches by a loop
        mapped = torch.func.vmap(lambda clip: model(clip[None]).logits[0])(x)
    torch.testing.assert_close(mapped, model(x).logits, rtol=1e-4, atol=1e-5)


def test_per_sample_gradients_with_labels_under_vmap():
    """``vmap(grad(...))`` of the model's own loss (per-sample gradients: DP-SGD, influence functions) failed on
    the label range check, a branch on the labels' values."""
    model, kwargs = _model(seed=5)
    x, labels = random_clip(kwargs, batch=3), torch.arange(3) % kwargs["num_labels"]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, clip, label):
        return torch.func.functional_call(model, p, (clip[None],), {"labels": label[None]}).loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on ops it batches by a loop
        grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, labels)
    for i in (0, 2):
        model.zero_grad()
        model(x[i : i + 1], labels=labels[i : i + 1]).loss.backward()
        torch.testing.assert_close(grads["classifier.weight"][i], model.classifier.weight.grad)
    # Under grad alone the labels are plain tensors: still checked (on a GPU, cross_entropy's own check is a
    # device-side assert that ends the process's CUDA context).
    with pytest.raises(ValueError, match=r"labels must be in \[0, "):
        torch.func.grad(loss)(params, x[0], torch.tensor(kwargs["num_labels"]))


def test_name_or_path_and_transformers_configs(hf, tmp_path):
    model, kwargs = _model()
    assert model.name_or_path == ""
    model.save_pretrained(tmp_path)
    loaded = TimesformerForVideoClassification.from_pretrained(tmp_path)
    assert loaded.name_or_path == str(tmp_path)
    ours = TimesformerModel(hf.TimesformerConfig(**kwargs))
    assert ours.config.hidden_size == kwargs["hidden_size"] and isinstance(ours.config, TimesformerConfig)
    with pytest.raises(TypeError, match="config must be a TimesformerConfig"):
        TimesformerModel(hf.BertConfig())


def test_loading_under_the_meta_device_is_refused(tmp_path):
    model, _ = _model()
    model.save_pretrained(tmp_path)
    with torch.device("meta"), pytest.raises(RuntimeError, match=r"under torch.device\('meta'\)"):
        TimesformerForVideoClassification.from_pretrained(tmp_path)


def test_checkpoint_errors_are_runtime_errors_too(tmp_path):
    model, _ = _model()
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError) as info:  # what code written for transformers catches
        TimesformerForVideoClassification.from_pretrained(tmp_path, num_labels=7)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, ValueError)


# ------------------------------------------------------------------- from_pretrained's keywords


@pytest.fixture
def saved(tmp_path):
    model, kwargs = _model(seed=9)
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", model, kwargs


def test_torch_dtype_is_honoured_and_round_trips(saved, tmp_path):
    path, _, _ = saved
    model = TimesformerForVideoClassification.from_pretrained(path, torch_dtype=torch.float16)
    assert model.dtype == torch.float16
    model.save_pretrained(tmp_path / "again")  # no torch.dtype left in the config to fail JSON
    assert (
        TimesformerForVideoClassification.from_pretrained(tmp_path / "again", dtype="auto").dtype
        == torch.float16
    )
    with pytest.raises(ValueError, match="disagree"):
        TimesformerForVideoClassification.from_pretrained(
            path, dtype=torch.float32, torch_dtype=torch.float16
        )


def test_attn_implementation_maps_to_a_backend(saved):
    path, _, _ = saved
    load = TimesformerForVideoClassification.from_pretrained
    assert load(path, attn_implementation="eager").backend == "eager"
    assert load(path, attn_implementation="sdpa").backend == "sdpa"
    assert load(path, attn_implementation="flash_attention_2")._requested_backend == "auto"
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        load(path, attn_implementation="flex_attention")
    with pytest.raises(ValueError, match="disagree"):
        load(path, backend="eager", attn_implementation="sdpa")
    # transformers' call to switch afterwards.
    model = load(path, backend="eager")
    model.set_attn_implementation("sdpa")
    assert model.backend == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        model.set_attn_implementation("flex_attention")


def test_config_attn_implementation_is_the_models_choice(saved, tmp_path):
    """transformers' ``config._attn_implementation``: set by the config's ``attn_implementation=`` or by the
    model, read by a model built from the config, never written to config.json."""
    path, _, kwargs = saved
    config = TimesformerConfig(**kwargs)
    assert config._attn_implementation is None  # as transformers', until a model records its choice
    model = TimesformerForVideoClassification(config)
    assert config._attn_implementation == "auto" and model._requested_backend == "auto"
    model.set_attn_implementation("eager")
    assert config._attn_implementation == "eager" and model.timesformer._requested_backend == "eager"
    model.set_backend("sdpa")
    assert model.config._attn_implementation == "sdpa"

    config = TimesformerConfig(**kwargs, attn_implementation="eager")
    assert config._attn_implementation == "eager"
    for key in ("attn_implementation", "_attn_implementation", "_attn_implementation_internal"):
        assert key not in config.to_dict()
    assert TimesformerConfig(**kwargs) == config  # not a field: configs that differ only here are equal
    built = TimesformerForVideoClassification(config)
    assert built.backend == "eager" and built.timesformer.backend == "eager"
    # A model given a backend records it; one built from a config that was set later follows it.
    assert TimesformerModel(config, backend="sdpa").config._attn_implementation == "sdpa"
    config._attn_implementation = "eager"
    assert TimesformerModel(config).backend == "eager"
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        TimesformerConfig(**kwargs, attn_implementation="flash_attention_3")

    load = TimesformerForVideoClassification.from_pretrained
    loaded = load(path, attn_implementation="flash_attention_2")
    assert loaded.config._attn_implementation == "flash_attention_2"
    assert loaded._requested_backend == "auto"
    assert load(path, config=config).backend == "eager"  # the config= given decides, as in transformers
    assert load(path, config=config, output_hidden_states=True).backend == "eager"  # with overrides too
    assert load(path, backend="auto", attn_implementation="eager").backend == "eager"  # "auto": no choice
    assert load(path, config=config, backend="sdpa").backend == "sdpa"
    loaded.save_pretrained(tmp_path / "again")
    assert "attn_implementation" not in (tmp_path / "again" / "config.json").read_text()
    assert load(tmp_path / "again").config._attn_implementation == "auto"
    assert TimesformerConfig.from_pretrained(path, attn_implementation="sdpa")._attn_implementation == "sdpa"


def test_device_map_takes_one_device_only(saved):
    path, _, _ = saved
    load = TimesformerForVideoClassification.from_pretrained
    assert load(path, device_map="cpu").device.type == "cpu"
    assert load(path, device_map={"": "cpu"}).device.type == "cpu"
    # "auto" as accelerate places a model that fits on the first device: the GPU when there is one.
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load(path, device_map="auto").device.type == expected
    # A map whose entries all name one device (transformers loads it) is that device.
    assert load(path, device_map={"timesformer": "cpu", "classifier": "cpu"}).device.type == "cpu"
    assert load(path, device_map={"": "auto"}).device.type == expected
    for bad in ("balanced", {"timesformer": "cpu", "classifier": "cuda:0"}, {}):
        with pytest.raises(ValueError, match="not supported; pass one device"):
            load(path, device_map=bad)
    with pytest.raises(ValueError, match=r"device_map must name a device \(or map to one\), got .disk."):
        load(path, device_map={"timesformer": "cpu", "classifier": "disk"})
    # transformers 5's per-module dtypes: one for the whole model is that dtype.
    assert load(path, dtype={"": "float16"}).dtype == torch.float16
    with pytest.raises(ValueError, match=r"dtype per module \(\['', 'classifier'\]\) is not supported"):
        load(path, dtype={"": "float16", "classifier": "float32"})


def test_device_and_device_map_must_name_one_device(monkeypatch):
    """``"cuda"`` is the current GPU (``torch.cuda.set_device``), not always the first."""
    from timesformer.loading import loading_options

    def options(device, device_map):
        return loading_options(
            backend="auto",
            dtype=None,
            device=device,
            torch_dtype=None,
            attn_implementation=None,
            device_map=device_map,
            config_overrides={},
        )

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert options("cuda", "cuda:1")["device"] == torch.device("cuda:1")
    assert options("cuda:1", 1)["device"] == torch.device("cuda:1")
    assert options("cpu", "cpu")["device"] == torch.device("cpu")
    for device, device_map in (("cuda", "cuda:0"), ("cuda:0", "cuda"), ("cpu", "cuda:1")):
        with pytest.raises(ValueError, match="disagree"):
            options(device, device_map)


def test_subfolder_local_files_only_loading_info_and_low_cpu_mem_usage(saved, tmp_path):
    path, model, kwargs = saved
    outer = tmp_path / "repo"
    outer.mkdir()
    os.replace(path, outer / "sub")
    loaded, info = TimesformerForVideoClassification.from_pretrained(
        outer, subfolder="sub", local_files_only=True, output_loading_info=True, low_cpu_mem_usage=True
    )
    assert info == {
        "missing_keys": set(),
        "unexpected_keys": set(),
        "mismatched_keys": set(),
        "error_msgs": [],
    }
    x = random_clip(kwargs, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).logits, model.eval()(x).logits)
    _, info = TimesformerForVideoClassification.from_pretrained(
        outer, subfolder="sub", num_labels=9, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {k for k, *_ in info["mismatched_keys"]} == {"classifier.weight", "classifier.bias"}
    with pytest.raises(ValueError, match="subfolder must be a relative folder"):
        TimesformerForVideoClassification.from_pretrained(outer, subfolder="../x")


def test_unknown_keywords_are_refused(saved):
    path, _, _ = saved
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['colour'\]"):
        TimesformerForVideoClassification.from_pretrained(path, colour="red")
    assert (
        TimesformerForVideoClassification.from_pretrained(
            path, hidden_dropout_prob=0.1
        ).config.hidden_dropout_prob
        == 0.1
    )


def test_from_pretrained_with_a_state_dict_and_no_directory(saved):
    path, model, kwargs = saved
    x = random_clip(kwargs, batch=1)
    with torch.no_grad():
        expected = model.eval()(x).logits
    # transformers' way of building a model from weights in memory, with its key names or ours.
    for state in (
        model.state_dict(),
        {
            "timesformer." + k if not k.startswith(("timesformer.", "classifier.")) else k: v
            for k, v in model.state_dict().items()
        },
    ):
        loaded = TimesformerForVideoClassification.from_pretrained(
            None, config=model.config, state_dict=state
        )
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, expected)
        assert loaded.name_or_path == ""
    # state_dict replaces the directory's weights.
    other = randomize_(TimesformerForVideoClassification(model.config), 10)
    loaded = TimesformerForVideoClassification.from_pretrained(path, state_dict=other.state_dict())
    torch.testing.assert_close(loaded.classifier.weight, other.classifier.weight)
    with pytest.raises(ValueError, match=r"needs config= and state_dict=|builds the model from config="):
        TimesformerForVideoClassification.from_pretrained(None, config=model.config)
    with pytest.raises(TypeError, match="state_dict must map parameter names to tensors"):
        TimesformerForVideoClassification.from_pretrained(None, config=model.config, state_dict={"a": 1})
    with pytest.raises(CheckpointError, match="missing"):
        TimesformerForVideoClassification.from_pretrained(
            None, config=model.config, state_dict=dict(list(model.state_dict().items())[1:])
        )


def test_dtype_defaults_to_the_checkpoints_and_is_written_as_a_string(saved, tmp_path):
    import json

    _, model, _ = saved
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    # transformers 5 loads a checkpoint in its own dtype unless told otherwise.
    loaded = TimesformerForVideoClassification.from_pretrained(tmp_path / "bf16")
    # The config's dtype is a torch.dtype (transformers' too), written as its name.
    assert loaded.dtype == torch.bfloat16 and loaded.config.dtype == torch.bfloat16
    assert loaded.config.torch_dtype == torch.bfloat16  # the older name
    loaded = TimesformerForVideoClassification.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    assert loaded.dtype == torch.float32 and loaded.config.dtype == torch.float32
    loaded.config.dtype = torch.float16
    assert loaded.config.to_dict()["dtype"] == "float16"  # set afterwards, it is written too
    # A torch.dtype given to the config is written as transformers writes it.
    config = TimesformerConfig(**{**model.config.to_dict(), "dtype": torch.float16})
    assert json.loads(config.to_json_string())["dtype"] == "float16"


def test_label_maps_and_dtype_survive_a_save_and_load(tmp_path):
    names = ["walk", "run", "jump", "swim", "ride"]
    model, _ = _model(
        num_labels=5, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    model.to(torch.float16).save_pretrained(tmp_path / "m")
    loaded = TimesformerForVideoClassification.from_pretrained(tmp_path / "m")
    assert loaded.config.label2id == {n: i for i, n in enumerate(names)}
    assert loaded.config.id2label == dict(enumerate(names))
    assert loaded.config.to_dict()["dtype"] == "float16" and loaded.dtype == torch.float16
    loaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "config.json").read_text() == (tmp_path / "m" / "config.json").read_text()


def test_every_n_layers_and_offload():
    model, kwargs = _model(seed=11)
    model.train()
    x, labels = random_clip(kwargs, batch=2), torch.tensor([0, 1])
    reference = _grads(model, x, labels)
    plain = _saved_tensor_bytes(model, x, labels)
    model.activation_checkpointing_enable(every_n_layers=3)  # of 3 layers: layer 0 only
    assert [m.checkpoint_every for m in model.modules() if hasattr(m, "checkpoint_every")] == [3]
    every_third = _saved_tensor_bytes(model, x, labels)
    model.activation_checkpointing_enable()
    every_layer = _saved_tensor_bytes(model, x, labels)
    assert every_layer < every_third < plain
    for options in ({"every_n_layers": 2}, {"offload": True}):
        model.activation_checkpointing_enable(**options)
        grads = _grads(model, x, labels)
        for name in reference:
            torch.testing.assert_close(grads[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="every_n_layers must be a positive int"):
        model.activation_checkpointing_enable(every_n_layers=0)


def test_transformers_keywords_without_effect_here(saved):
    """What user code spells out for transformers: accepted where it asks for nothing this package would do
    otherwise, refused with its name where it asks for something else."""
    path, model, kwargs = saved
    load = TimesformerForVideoClassification.from_pretrained
    quiet = dict(
        trust_remote_code=True,  # no code is fetched: the classes are this package's
        weights_only=True,
        quantization_config=None,
        max_memory=None,
        offload_folder=None,
        key_mapping=None,
        revision="main",  # hub options: no effect on a local directory, as in transformers
        cache_dir="/nonexistent",
        token=False,
        force_download=True,
    )
    loaded = load(path, **quiet)
    assert "trust_remote_code" not in loaded.config.to_dict() and "revision" not in loaded.config.to_dict()
    x = random_clip(kwargs, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model.eval()(x).logits)
    for name, value in [
        ("weights_only", False),
        ("quantization_config", {"load_in_8bit": True}),
        ("max_memory", {0: "1GB"}),
        ("key_mapping", {"^vit": "timesformer"}),
    ]:
        with pytest.raises(ValueError, match=f"{name} is not supported here"):
            load(path, **{name: value})
    with pytest.raises(TypeError, match="trust_remote_code must be a bool"):
        load(path, trust_remote_code="yes")
    config = TimesformerConfig.from_pretrained(path, revision="main", trust_remote_code=True)
    assert config == TimesformerConfig.from_pretrained(path)  # not stored as extra config keys


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
def test_transformers_video_classification_pipeline(hf, tmp_path, backend):
    """``transformers.pipeline("video-classification", model=ours)`` gives transformers' labels and scores
    for the same checkpoint. (The pipeline keeps only a plain dict of an output that is not transformers'
    ``ModelOutput``: ours returned one and failed with ``'dict' object has no attribute 'logits'``.)"""
    from _videos import write_indexed_video

    from timesformer.preprocess import VideoProcessor

    kwargs = small_config_kwargs(
        "divided_space_time", 8, num_hidden_layers=2, image_size=32, num_frames=4, num_channels=3
    )
    labels = [f"class {i}" for i in range(kwargs["num_labels"])]
    config = TimesformerConfig(**kwargs, id2label=dict(enumerate(labels)))
    randomize_(TimesformerForVideoClassification(config), 8).save_pretrained(tmp_path)
    VideoProcessor(shortest_edge=36, crop_size=(32, 32), image_mean=[0.4, 0.5, 0.6]).save_pretrained(tmp_path)
    write_indexed_video(tmp_path / "clip.mp4", 30, 48, 64)
    # The PIL processor: the Auto classes and video processors need torchvision (transformers 5.17: all of them).
    pil = getattr(hf, "VideoMAEImageProcessorPil", None) or hf.VideoMAEImageProcessor
    processor = pil.from_pretrained(tmp_path)
    results = []
    for model in (
        hf.TimesformerForVideoClassification.from_pretrained(tmp_path),
        TimesformerForVideoClassification.from_pretrained(tmp_path, backend=backend),
    ):
        classify = hf.pipeline("video-classification", model=model, image_processor=processor)
        results.append(classify(str(tmp_path / "clip.mp4"), top_k=3))
    ref, ours = results
    assert [r["label"] for r in ours] == [r["label"] for r in ref] and ref[0]["label"] in labels
    assert [r["score"] for r in ours] == pytest.approx([r["score"] for r in ref], rel=1e-5, abs=1e-6)


def test_outputs_are_transformers_classes_when_transformers_is_loaded():
    """With ``transformers`` imported, the models return its output classes (code built on it checks
    ``isinstance(out, ModelOutput)``); without, this package's equivalents, and it never imports it."""
    import subprocess
    import sys

    script = """
import sys, torch, timesformer
config = timesformer.TimesformerConfig(image_size=16, patch_size=8, num_frames=2, hidden_size=8,
    num_hidden_layers=1, num_attention_heads=2, intermediate_size=12, num_labels=3)
model = timesformer.TimesformerForVideoClassification(config).eval()
x = torch.randn(1, 2, 3, 16, 16)
out, base = model(x), model.timesformer(x)
print(type(out).__module__, type(base).__module__, "transformers" in sys.modules)
import transformers
out, base = model(x), model.timesformer(x)
assert isinstance(out, transformers.utils.ModelOutput), type(out)
print(type(out).__module__, type(base).__module__)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == [
        "timesformer.outputs timesformer.outputs False",
        "transformers.modeling_outputs transformers.modeling_outputs",
    ]
    # A compiled forward cannot import the classes: the model loads them when built.
    compiled = """
import sys, torch, transformers, timesformer
assert "transformers.modeling_outputs" not in sys.modules  # transformers imports lazily
config = timesformer.TimesformerConfig(image_size=16, patch_size=8, num_frames=2, hidden_size=8,
    num_hidden_layers=1, num_attention_heads=2, intermediate_size=12, num_labels=3)
model = timesformer.TimesformerForVideoClassification(config).eval()
out = torch.compile(model, backend="eager", fullgraph=True)(torch.randn(1, 2, 3, 16, 16))
print(type(out).__module__)
"""
    run = subprocess.run([sys.executable, "-c", compiled], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "transformers.modeling_outputs"


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("grad", [False, True])
def test_jit_trace_records_the_weights_not_a_cached_copy(backend, grad):
    """``torch.jit.trace`` (what the legacy ONNX export runs) takes the path with autograd's ops, not the
    inference path (whose in-place updates of residual slices the ONNX exporter mistranslated: logits 0.5 off)
    and not prepared weights from the cache (recorded as constants: a trace ignored later weight edits, and
    its check failed with "Graphs differed across invocations")."""
    model, kwargs = _model("divided_space_time", backend, seed=12)
    model.eval().config.return_dict = False
    x, other = random_clip(kwargs, batch=2), random_clip(kwargs, batch=2, seed=13)  # a trace is of one shape
    with torch.set_grad_enabled(grad):
        model(x)  # fills the weight cache
        traced = torch.jit.trace(model, (x,))  # its check runs the trace again and compares
    weight = model.timesformer.encoder.layer[0].temporal_attention.attention.qkv.weight
    with torch.no_grad():
        weight.mul_(1.5)
        torch.testing.assert_close(traced(other)[0], model(other)[0])


def test_post_init_after_replacing_a_module_initializes_only_that_one(hf):
    """As transformers: the usual new-head recipe keeps the pretrained weights. (post_init re-initialized every
    weight, silently.) A replaced encoder module stays a replacement for the backends (module path)."""
    from timesformer.modeling import module_path_reason

    model, kwargs = _model(seed=14)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.classifier = torch.nn.Linear(kwargs["hidden_size"], 7)
    new_head = model.classifier.weight.clone()
    dense = model.timesformer.encoder.layer[0].output.dense
    model.timesformer.encoder.layer[0].output.dense = torch.nn.Sequential(dense)
    model.post_init()
    after = model.state_dict()
    for key, value in before.items():
        if not key.startswith(("classifier.", "timesformer.encoder.layer.0.output.dense.")):
            assert torch.equal(after[key], value), key
    assert not torch.equal(model.classifier.weight, new_head)  # initialized as the model's own (trunc normal)
    assert model.classifier.weight.std() < 3 * model.config.initializer_range
    assert (
        module_path_reason(model)
        == "timesformer.encoder.layer.0.output.dense is a torch.nn.modules.container.Sequential"
    )
    assert model(random_clip(kwargs)).logits.shape[-1] == 7
    # The same recipe on transformers' model (its behaviour, which this mirrors).
    ref = hf.TimesformerForVideoClassification(hf.TimesformerConfig(**kwargs))
    kept = ref.timesformer.encoder.layer[0].output.dense.weight.clone()
    ref.classifier = torch.nn.Linear(kwargs["hidden_size"], 7)
    ref.post_init()
    assert torch.equal(ref.timesformer.encoder.layer[0].output.dense.weight, kept)
    # init_weights / initialize_weights exist, and initialize nothing that is initialized already.
    model.init_weights()
    model.initialize_weights()
    assert torch.equal(model.timesformer.layernorm.weight, before["timesformer.layernorm.weight"])
