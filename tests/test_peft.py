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
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path).eval()
    merged = reloaded.merge_and_unload()
    assert type(merged) is timesformer.TimesformerForVideoClassification
    assert module_path_reason(merged) is None  # plain again: the backend's fused path
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, adapted, rtol=1e-5, atol=1e-5)


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
