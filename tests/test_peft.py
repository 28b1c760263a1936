"""The real PEFT and accelerate on this package's models, side by side with ``transformers``' models given the
same adapters: what users run to fine-tune and to load large checkpoints. (``test_hooks_and_adapters.py``
checks the mechanism with a miniature adapter; this file checks the libraries themselves.)"""

from __future__ import annotations

# Hard imports of accelerate and peft: test dependencies (pip install -e .[test]), never a reason to skip.
import accelerate
import peft
import pytest
import torch
import transformers
from conftest import random_clip, randomize_, small_config_kwargs
from safetensors.torch import load_file

import timesformer
from timesformer.modeling import module_path_reason

BACKENDS = ["eager", "sdpa", "triton"]
# PEFT's names for the linears of a TimeSformer layer: "qkv" and "dense" match in both attentions ("dense" is
# also both MLP linears), so 7 linears of a layer get adapters.
TARGETS = ["qkv", "temporal_dense", "dense"]
ADAPTED_PER_LAYER = 7


def _pair(backend: str, seed: int):
    kwargs = small_config_kwargs("divided_space_time", seed, num_hidden_layers=2)
    ours = randomize_(
        timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), seed
    ).set_backend(backend)
    ref = transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(**kwargs))
    ref.load_state_dict(ours.state_dict())
    return ours.eval(), ref.eval(), kwargs


def _adapted(model, config, seed: int):
    torch.manual_seed(seed)  # PEFT draws the adapter weights from the global generator
    return peft.get_peft_model(model, config)


LORA = dict(r=3, lora_alpha=6, target_modules=TARGETS, init_lora_weights=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "variant",
    [
        peft.LoraConfig(**LORA, modules_to_save=["classifier"]),
        peft.LoraConfig(**LORA, use_dora=True),
        peft.LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False),
        peft.IA3Config(
            target_modules=["qkv", "dense"], feedforward_modules=["dense"], init_ia3_weights=False
        ),
    ],
    ids=["lora+head", "dora", "all-linear", "ia3"],
)
def test_peft_adapters_match_transformers(backend, variant):
    ours, ref, kwargs = _pair(backend, seed=21)
    x = random_clip(kwargs)
    with torch.no_grad():
        plain = ours(x).logits
    ours, ref = _adapted(ours, variant, 1), _adapted(ref, variant, 1)
    with torch.no_grad():
        got, expected = ours(pixel_values=x).logits, ref(pixel_values=x).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the adapters change the result


@pytest.mark.parametrize("backend", BACKENDS)
def test_peft_training_with_checkpointing_reaches_every_adapter_weight(backend):
    ours, _, kwargs = _pair(backend, seed=22)
    # What PEFT's recipes call: enable_input_require_grads and gradient_checkpointing_enable on the base model.
    ours = peft.prepare_model_for_kbit_training(ours, use_gradient_checkpointing=True)
    model = _adapted(ours, peft.LoraConfig(**LORA, modules_to_save=["classifier"]), 2).train()
    labels = torch.arange(2) % kwargs["num_labels"]
    model(pixel_values=random_clip(kwargs), labels=labels).loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * ADAPTED_PER_LAYER * 2 + 2  # A and B of each adapted linear, the head's copy
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), [
        n for n, p in trainable if p.grad is None
    ]


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_saved_adapter_reloads_and_merging_brings_the_fused_path_back(backend, tmp_path):
    """The merge adds the adapters through ``.data`` (no version bump): a model that ran before taking the
    adapter kept serving weights prepared before the merge (0.06 off on logits of 0.08)."""
    ours, _, kwargs = _pair(backend, seed=23)
    base_state = {k: v.clone() for k, v in ours.state_dict().items()}
    x = random_clip(kwargs)
    model = _adapted(ours, peft.LoraConfig(**LORA), 3).eval()
    assert module_path_reason(model.base_model.model) is not None
    with torch.no_grad():
        adapted = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)

    fresh = timesformer.TimesformerForVideoClassification(ours.config).set_backend(backend)
    fresh.load_state_dict(base_state)
    with torch.no_grad():
        fresh.eval()(x)  # prepared weights (the folded temporal projection) from the weights before the merge
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path).eval()
    merged = reloaded.merge_and_unload()
    assert type(merged) is timesformer.TimesformerForVideoClassification
    assert module_path_reason(merged) is None  # plain again: the backend's fused path
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, adapted, rtol=1e-5, atol=1e-5)


def test_auto_peft_model_loads_an_adapter_with_the_import_allowlist(tmp_path):
    """As the README says: PEFT records ``timesformer.modeling`` as the base class's library and imports it
    only when allowed."""
    ours, _, kwargs = _pair("sdpa", seed=24)
    ours.save_pretrained(tmp_path / "base")
    base = timesformer.TimesformerForVideoClassification.from_pretrained(tmp_path / "base")
    model = _adapted(base, peft.LoraConfig(**LORA), 4).eval()
    model.save_pretrained(tmp_path / "adapter")
    x = random_clip(kwargs)
    with torch.no_grad():
        adapted = model(pixel_values=x).logits
    with pytest.raises(ValueError, match=r"import_allowlist=\['timesformer.modeling'\]"):
        peft.AutoPeftModel.from_pretrained(tmp_path / "adapter")
    loaded = peft.AutoPeftModel.from_pretrained(
        tmp_path / "adapter", import_allowlist=["timesformer.modeling"]
    )
    assert type(loaded.base_model.model) is timesformer.TimesformerForVideoClassification
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixel_values=x).logits, adapted, rtol=1e-5, atol=1e-5)


def test_accelerate_empty_init_and_dispatch_load_a_sharded_checkpoint(tmp_path):
    ours, _, kwargs = _pair("sdpa", seed=24)
    ours.save_pretrained(tmp_path, max_shard_size="10KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    with accelerate.init_empty_weights():
        empty = timesformer.TimesformerForVideoClassification(ours.config)
    assert empty.classifier.weight.is_meta
    loaded = accelerate.load_checkpoint_and_dispatch(empty, str(tmp_path), device_map={"": "cpu"}).eval()
    x = random_clip(kwargs)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ours(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
@pytest.mark.parametrize("how", ["cpu", "disk"])
def test_accelerate_whole_model_offload_gives_transformers_logits(tmp_path, backend, how):
    """``cpu_offload`` / ``disk_offload`` leave the weights on "meta" between calls (hooks bring them in):
    every forward failed with "pixel_values is on cpu but the model is on meta" (and triton's backend check
    failed on "meta")."""
    ours, ref, kwargs = _pair(backend, seed=25)
    x = random_clip(kwargs)
    if how == "cpu":
        accelerate.cpu_offload(ours, execution_device=torch.device("cpu"))
    else:
        accelerate.disk_offload(ours, str(tmp_path / "offload"), execution_device=torch.device("cpu"))
    assert ours.classifier.weight.is_meta
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, ref(x).logits, rtol=1e-5, atol=1e-6)
    # What the forward ran: the hooks make it call the modules. (Was the backend for "meta": "sdpa", and an
    # error for triton.)
    assert ours.backend == "eager"


def test_accelerator_trains_and_saves_a_loadable_model(tmp_path):
    ours, _, kwargs = _pair("sdpa", seed=25)
    ours.train()
    accelerator = accelerate.Accelerator(cpu=True)
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    prepared, optimizer = accelerator.prepare(ours, optimizer)
    before = ours.classifier.weight.detach().clone()
    loss = prepared(pixel_values=random_clip(kwargs), labels=torch.arange(2) % kwargs["num_labels"]).loss
    accelerator.backward(loss)
    optimizer.step()
    assert not torch.equal(ours.classifier.weight, before)
    accelerator.save_model(prepared, tmp_path)
    loaded = timesformer.TimesformerForVideoClassification.from_pretrained(tmp_path, config=ours.config)
    x = random_clip(kwargs)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, accelerator.unwrap_model(prepared).eval()(x).logits)


def test_trainer_fine_tunes_an_adapter_with_checkpointing_and_saves_it(tmp_path):
    """transformers' Trainer on a PEFT model of ours: gradient checkpointing through TrainingArguments, the
    adapter saved by save_model and reloaded with the trained weights."""
    ours, _, kwargs = _pair("sdpa", seed=26)
    base_state = {k: v.clone() for k, v in ours.state_dict().items()}
    model = _adapted(ours, peft.LoraConfig(**LORA, modules_to_save=["classifier"]), 4)
    data = [
        {"pixel_values": random_clip(kwargs, batch=1, seed=i)[0], "labels": i % kwargs["num_labels"]}
        for i in range(4)
    ]
    args = transformers.TrainingArguments(
        str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=2, learning_rate=0.1, report_to=[],
        use_cpu=True, save_strategy="no", gradient_checkpointing=True, remove_unused_columns=False,
    )  # fmt: skip
    before = [p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    after = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    trainer.save_model(str(tmp_path / "adapter"))
    fresh = timesformer.TimesformerForVideoClassification(ours.config).set_backend("sdpa")
    fresh.load_state_dict(base_state)
    reloaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    x = random_clip(kwargs)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, model.eval()(pixel_values=x).logits)


def test_trainer_save_model_after_add_adapter_is_refused_at_load_with_the_way_back(tmp_path):
    """Trainer.save_model of a model that is not a transformers PreTrainedModel writes its whole state dict,
    adapter layers in place, and no adapter settings: from_pretrained(dir, config=...), which the missing
    config.json's error suggests, raised "missing keys" about qkv. It now names the cause and the way back,
    which gives the trained logits."""
    ours, _, kwargs = _pair("sdpa", seed=27)
    ours.save_pretrained(tmp_path / "base")
    adapter = peft.LoraConfig(**LORA)
    ours.add_adapter(adapter)
    data = [
        {"pixel_values": random_clip(kwargs, batch=1, seed=i)[0], "labels": i % kwargs["num_labels"]}
        for i in range(2)
    ]
    args = transformers.TrainingArguments(
        str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=1, learning_rate=0.1, report_to=[],
        use_cpu=True, save_strategy="no", remove_unused_columns=False,
    )  # fmt: skip
    trainer = transformers.Trainer(model=ours, args=args, train_dataset=data)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    with pytest.raises(
        timesformer.CheckpointError, match=r"PEFT adapter layers injected .*\(model.add_adapter"
    ):
        timesformer.TimesformerForVideoClassification.from_pretrained(tmp_path / "saved", config=ours.config)
    back = timesformer.TimesformerForVideoClassification.from_pretrained(tmp_path / "base")
    back.add_adapter(adapter)
    back.load_state_dict(load_file(str(tmp_path / "saved" / "model.safetensors")))
    x = random_clip(kwargs)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x).logits, ours.eval()(x).logits)


# ---------------------------------------------------------------- transformers' adapter methods on the model


def _saved_adapter(tmp_path, seed: int, **config):
    """A PEFT model of ours trained to arbitrary adapter weights and saved by PEFT: (directory, its logits
    function, the base weights)."""
    ours, _, kwargs = _pair("sdpa", seed=seed)
    base_state = {k: v.clone() for k, v in ours.state_dict().items()}
    model = _adapted(ours, peft.LoraConfig(**{**LORA, **config}), seed).eval()
    model.save_pretrained(tmp_path)
    return tmp_path, model, base_state, kwargs


@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
def test_load_adapter_gives_the_peft_models_logits(tmp_path, backend):
    directory, peft_model, base_state, kwargs = _saved_adapter(tmp_path, 27, modules_to_save=["classifier"])
    x = random_clip(kwargs)
    with torch.no_grad():
        expected = peft_model(pixel_values=x).logits
    fresh = timesformer.TimesformerForVideoClassification(peft_model.base_model.model.config).set_backend(
        backend
    )
    fresh.load_state_dict(base_state)
    with torch.no_grad():
        plain = fresh(x).logits
    fresh.train()
    with pytest.raises(NotImplementedError, match="hotswap=True"):
        fresh.load_adapter(directory, hotswap=True)
    with pytest.raises(TypeError, match=r"adapter_kwargs takes .* got \['bogus'\]"):
        fresh.load_adapter(directory, adapter_kwargs={"bogus": 1})
    # transformers' keywords (low_cpu_mem_usage, hotswap and the download options as adapter_kwargs) were refused
    fresh.load_adapter(
        directory.parent, low_cpu_mem_usage=True, hotswap="auto", adapter_kwargs={"subfolder": directory.name}
    )
    assert not fresh.training  # inference by default, as transformers
    assert fresh.active_adapters() == ["default"] and set(fresh.peft_config) == {"default"}
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if "lora_" in n)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, expected, rtol=1e-5, atol=1e-5)
        fresh.disable_adapters()
        torch.testing.assert_close(fresh(x).logits, plain, rtol=1e-5, atol=1e-5)
        fresh.enable_adapters()
        torch.testing.assert_close(fresh(x).logits, expected, rtol=1e-5, atol=1e-5)


def test_add_set_save_and_delete_adapters(tmp_path):
    ours, _, kwargs = _pair("sdpa", seed=28)
    base_state = {k: v.clone() for k, v in ours.state_dict().items()}
    x = random_clip(kwargs)
    with torch.no_grad():
        plain = ours(x).logits
    torch.manual_seed(5)
    ours.add_adapter(peft.LoraConfig(**LORA), adapter_name="a")
    torch.manual_seed(6)
    ours.add_adapter(peft.LoraConfig(**LORA), adapter_name="b")
    assert ours.active_adapters() == ["b"]
    with torch.no_grad():
        with_b = ours(x).logits
        ours.set_adapter("a")
        with_a = ours(x).logits
    assert (with_a - with_b).abs().max() > 1e-3 and (with_a - plain).abs().max() > 1e-3
    # save_pretrained of a model with adapters writes the active one in PEFT's format (no config.json), as
    # transformers does; PEFT and load_adapter read it. A save in the other format replaces the file.
    ours.save_pretrained(tmp_path / "a", safe_serialization=False)
    ours.save_pretrained(tmp_path / "a")
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert files == {"adapter_config.json", "adapter_model.safetensors"}
    saved = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert {k.removeprefix("base_model.model.") for k in saved} == set(ours.get_adapter_state_dict("a"))
    for load in (
        lambda m: peft.PeftModel.from_pretrained(m, tmp_path / "a"),
        lambda m: m.load_adapter(tmp_path / "a") or m,
    ):
        fresh = timesformer.TimesformerForVideoClassification(ours.config).set_backend("sdpa")
        fresh.load_state_dict(base_state)
        with torch.no_grad():
            torch.testing.assert_close(
                load(fresh).eval()(pixel_values=x).logits, with_a, rtol=1e-5, atol=1e-5
            )
    # This model was built from a config, so its adapter names no base model to load.
    with pytest.raises(ValueError, match="does not name a base model to load .* then model.load_adapter"):
        timesformer.TimesformerForVideoClassification.from_pretrained(tmp_path / "a")
    ours.set_adapter(["a", "b"])
    with pytest.raises(ValueError, match=r"2 adapters are active \(\['a', 'b'\]\); saving several at once"):
        ours.save_pretrained(tmp_path / "both")
    ours.delete_adapter(["a", "b"])
    assert not hasattr(ours, "peft_config") and module_path_reason(ours) is None  # the fused path is back
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no adapter is loaded"):
        ours.set_adapter("a")


def test_adapters_that_do_not_fit_are_refused_and_removed(tmp_path):
    directory, _, _, kwargs = _saved_adapter(tmp_path, 29)
    wider = small_config_kwargs(
        "divided_space_time", 29, num_hidden_layers=2, hidden_size=kwargs["hidden_size"] * 2,
        num_attention_heads=kwargs["num_attention_heads"],
    )  # fmt: skip
    model = timesformer.TimesformerForVideoClassification(timesformer.TimesformerConfig(**wider))
    with pytest.raises(timesformer.CheckpointError, match="does not fit TimesformerForVideoClassification"):
        model.load_adapter(directory)
    assert not model._hf_peft_config_loaded and module_path_reason(model) is None  # nothing of it is left
    with pytest.raises(ValueError, match="prompt-learning method"):
        model.add_adapter(peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2))
    # An adapter whose injection fails part way leaves nothing behind (config, wrapped layers).
    model.add_adapter(peft.LoraConfig(**LORA), adapter_name="first")
    with pytest.raises(ValueError):
        model.add_adapter(peft.LoraConfig(r=2, target_modules=["no_such_module"]), adapter_name="second")
    assert set(model.peft_config) == {"first"}
    model.delete_adapter("first")
    assert module_path_reason(model) is None


def test_an_ia3_adapter_of_a_shallower_model_is_refused(tmp_path):
    """IA3 keeps its weights in ParameterDicts ("...ia3_l.default"): a layer without weights in the file was
    not counted as missing, and kept its initial values silently."""
    ours, _, kwargs = _pair("sdpa", seed=30)
    shallow = timesformer.TimesformerForVideoClassification(
        timesformer.TimesformerConfig(**{**kwargs, "num_hidden_layers": 1})
    )
    ia3 = dict(target_modules=["qkv", "dense"], feedforward_modules=["dense"], init_ia3_weights=False)
    _adapted(shallow, peft.IA3Config(**ia3), 7).save_pretrained(tmp_path)
    with pytest.raises(timesformer.CheckpointError, match=r"missing keys \['timesformer.encoder.layer.1"):
        ours.load_adapter(tmp_path)
    assert not ours._hf_peft_config_loaded and module_path_reason(ours) is None


def test_load_adapter_from_a_subfolder_or_hub_fetches_only_what_it_reads(tmp_path, monkeypatch):
    import huggingface_hub

    _, peft_model, base_state, kwargs = _saved_adapter(tmp_path / "repo" / "adapters", 31)
    fetched = []

    def snapshot_download(repo_id, allow_patterns, **kw):
        fetched.append(allow_patterns)
        return str(tmp_path / "repo")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = timesformer.TimesformerForVideoClassification(peft_model.base_model.model.config).set_backend(
        "sdpa"
    )
    model.load_state_dict(base_state)
    model.load_adapter("someone/adapters", subfolder="adapters", use_safetensors=True)
    assert fetched == [["adapters/adapter_config.json", "adapters/adapter_model.safetensors"]]
    x = random_clip(kwargs)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, peft_model(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(
        FileNotFoundError,
        match=r"adapter '.*nowhere': expected a directory \(or hub id\) holding adapter_config.json",
    ):
        model.load_adapter(tmp_path / "nowhere", adapter_name="other")


@pytest.mark.parametrize("backend", BACKENDS)
def test_from_pretrained_of_an_adapter_folder_loads_its_base_then_the_adapter(tmp_path, backend):
    """As transformers: ``from_pretrained(adapter folder)`` loads the base model the adapter's config names,
    then the adapter; an adapter saved beside its model (``config.json`` there too) takes that model."""
    ours, _, kwargs = _pair("sdpa", seed=33)
    ours.save_pretrained(tmp_path / "base")
    base = timesformer.TimesformerForVideoClassification.from_pretrained(tmp_path / "base", backend="sdpa")
    peft_model = _adapted(base, peft.LoraConfig(**LORA, modules_to_save=["classifier"]), 33).eval()
    peft_model.save_pretrained(tmp_path / "repo" / "adapter")  # records base_model_name_or_path
    x = random_clip(kwargs)
    with torch.no_grad():
        expected = peft_model(pixel_values=x).logits
    cls = timesformer.TimesformerForVideoClassification
    loaded = cls.from_pretrained(tmp_path / "repo" / "adapter", backend=backend)
    assert loaded.active_adapters() == ["default"] and not loaded.training
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if "lora_" in n)
    ref = transformers.TimesformerForVideoClassification.from_pretrained(tmp_path / "repo" / "adapter")
    with torch.no_grad():
        got = loaded(x).logits
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, ref(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
    # A subfolder belongs to the adapter; adapter_name and adapter_kwargs go to load_adapter.
    loaded = cls.from_pretrained(
        tmp_path / "repo",
        subfolder="adapter",
        backend=backend,
        adapter_name="mine",
        adapter_kwargs={"is_trainable": True},
    )
    assert loaded.active_adapters() == ["mine"]
    assert all(p.requires_grad for n, p in loaded.named_parameters() if "lora_" in n)
    # The new-head recipe keeps the adapter's weights (post_init drew them again).
    lora = {n: p.clone() for n, p in loaded.named_parameters() if "lora_" in n}
    loaded.post_init()
    assert all(torch.equal(p, lora[n]) for n, p in loaded.named_parameters() if "lora_" in n)
    # adapter_kwargs: the adapter's own download options (transformers' meaning) and load_adapter's others.
    loaded = cls.from_pretrained(tmp_path / "repo", adapter_kwargs={"subfolder": "adapter"}, backend=backend)
    assert loaded.active_adapters() == ["default"]
    with pytest.raises(TypeError, match="pass adapter_name to from_pretrained itself"):
        cls.from_pretrained(tmp_path / "repo" / "adapter", adapter_kwargs={"adapter_name": "x"})
    # Beside its model: the folder's own weights are the base (the named base is not read).
    embedded = tmp_path / "embedded"
    ours.save_pretrained(embedded)
    peft_model.save_pretrained(embedded)
    (tmp_path / "base" / "model.safetensors").unlink()
    with torch.no_grad():
        torch.testing.assert_close(cls.from_pretrained(embedded, backend=backend)(x).logits, expected)
    # A base named by a relative path that does not resolve from here: the error says whose base it is.
    config_file = tmp_path / "repo" / "adapter" / "adapter_config.json"
    config_file.write_text(config_file.read_text().replace(str(tmp_path / "base"), "base"))
    with pytest.raises(FileNotFoundError, match=r"holds a PEFT adapter whose base model 'base' \(its"):
        cls.from_pretrained(tmp_path / "repo" / "adapter")
    with pytest.raises(ValueError, match="adapter_name applies to a folder holding a PEFT adapter"):
        cls.from_pretrained(tmp_path / "base", adapter_name="x", state_dict=ours.state_dict())


def test_from_pretrained_of_a_hub_adapter_fetches_the_adapter_and_its_base(tmp_path, monkeypatch):
    """Hub ids for both: the fake hub hands out only the files the patterns ask for, as the real one."""
    import fnmatch
    import itertools
    import shutil

    import huggingface_hub

    hub_root, counter = tmp_path / "hub", itertools.count()

    def snapshot_download(repo_id, allow_patterns, **kw):
        snapshot = tmp_path / "snapshots" / str(next(counter))
        for file in (hub_root / repo_id).rglob("*"):
            name = file.relative_to(hub_root / repo_id).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, snapshot / name)
        snapshot.mkdir(parents=True, exist_ok=True)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    ours, _, kwargs = _pair("sdpa", seed=34)
    ours.save_pretrained(hub_root / "org" / "base")
    base = timesformer.TimesformerForVideoClassification.from_pretrained("org/base", backend="sdpa")
    peft_model = _adapted(base, peft.LoraConfig(**LORA), 34).eval()
    peft_model.save_pretrained(hub_root / "org" / "adapter")
    assert peft_model.peft_config["default"].base_model_name_or_path == "org/base"
    loaded = timesformer.TimesformerForVideoClassification.from_pretrained("org/adapter", backend="sdpa")
    x = random_clip(kwargs)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, peft_model(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


def test_classify_and_evaluate_load_an_adapter_with_its_base_models_preprocessing(tmp_path):
    """``timesformer classify --model ADAPTER``: the adapter's folder has no preprocessor_config.json; the
    base model's is used (the defaults, another mean and std, were used silently)."""
    from timesformer.classify import load_model
    from timesformer.preprocess import VideoProcessor

    ours, _, kwargs = _pair("sdpa", seed=35)
    ours.save_pretrained(tmp_path / "base")
    crop = (kwargs["image_size"],) * 2
    VideoProcessor(shortest_edge=kwargs["image_size"], crop_size=crop, image_mean=[0.1] * 3).save_pretrained(
        tmp_path / "base"
    )
    base = timesformer.TimesformerForVideoClassification.from_pretrained(tmp_path / "base", backend="sdpa")
    _adapted(base, peft.LoraConfig(**LORA), 35).save_pretrained(tmp_path / "adapter")
    model, processor = load_model(tmp_path / "adapter", backend="sdpa")
    assert model.active_adapters() == ["default"] and list(processor.image_mean) == [0.1] * 3


@pytest.mark.parametrize("head", [True, False])
def test_classify_takes_an_adapter_on_a_headless_base_only_if_it_carries_the_head(tmp_path, head):
    """A base checkpoint without a head is refused by classify (its fresh head is noise), unless the adapter
    brings a trained one; an adapter without it was accepted, printing the noise."""
    from timesformer.classify import load_model

    ours = _pair("sdpa", seed=36)[0]
    ours.timesformer.save_pretrained(tmp_path / "base")  # a headless checkpoint, its config naming 3+ classes
    base = timesformer.TimesformerForVideoClassification.from_pretrained(tmp_path / "base", backend="sdpa")
    config = peft.LoraConfig(**LORA, modules_to_save=["classifier"] if head else None)
    _adapted(base, config, 36).save_pretrained(tmp_path / "adapter")
    if head:
        model, _ = load_model(tmp_path / "adapter", backend="sdpa")
        assert model.active_adapters() == ["default"]
    else:
        with pytest.raises(
            ValueError, match=r"without classifier weights .* \(its adapter does not carry them"
        ):
            load_model(tmp_path / "adapter", backend="sdpa")
