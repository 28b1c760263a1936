"""Checkpoints: transformers <-> this package, both file formats, both classes, and every bad case."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import assert_close, make_pair, random_clip, randomize_, small_config_kwargs

import timesformer
from timesformer import CheckpointError, TimesformerForVideoClassification, TimesformerModel


def _save_hf(ref, path, fmt):
    ref.save_pretrained(path)
    if fmt == "bin":  # transformers 5 writes safetensors only; write the .bin layout of older versions
        os.remove(os.path.join(path, "model.safetensors"))
        torch.save(ref.state_dict(), os.path.join(path, "pytorch_model.bin"))
    return path


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only"])
def test_transformers_checkpoint_loads(hf, tmp_path, fmt, attention_type):
    ref, _, kwargs = make_pair(hf, attention_type, seed=1)
    _save_hf(ref, tmp_path, fmt)
    model = TimesformerForVideoClassification.from_pretrained(tmp_path, backend="sdpa")
    assert not model.training and model.backend == "sdpa"
    assert model.config.attention_type == attention_type and model.config.num_labels == kwargs["num_labels"]
    x = random_clip(kwargs)
    with torch.no_grad():
        assert_close(model(x).logits, ref(x).logits)


@pytest.mark.parametrize("safe", [True, False])
def test_our_checkpoint_loads_in_transformers(hf, tmp_path, safe):
    kwargs = small_config_kwargs("divided_space_time", seed=2)
    ours = randomize_(TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), 4).eval()
    ours.config.id2label = {i: f"class {i}" for i in range(kwargs["num_labels"])}
    ours.save_pretrained(tmp_path, safe_serialization=safe)
    assert os.path.exists(tmp_path / ("model.safetensors" if safe else "pytorch_model.bin"))
    ref = hf.TimesformerForVideoClassification.from_pretrained(tmp_path).eval()
    assert ref.config.id2label[1] == "class 1"
    x = random_clip(kwargs)
    with torch.no_grad():
        torch.testing.assert_close(ref(x).logits, ours(x).logits, rtol=0, atol=1e-5)
    again = TimesformerForVideoClassification.from_pretrained(tmp_path)
    loaded = again.config.to_dict()
    assert loaded.pop("dtype") == "float32"  # what the model was loaded in; the saved model's records none
    assert loaded["architectures"] == ["TimesformerForVideoClassification"]
    assert loaded.pop("_name_or_path") == str(tmp_path) == ref.config.to_dict()["_name_or_path"]
    assert loaded == {k: v for k, v in ours.config.to_dict().items() if k not in ("dtype", "_name_or_path")}
    for (k, a), (k2, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_classification_checkpoint_into_base_model_and_back(hf, tmp_path):
    ref, _, kwargs = make_pair(hf, "joint_space_time", seed=3)
    ref.save_pretrained(tmp_path / "cls")
    base = TimesformerModel.from_pretrained(tmp_path / "cls")
    x = random_clip(kwargs)
    with torch.no_grad():
        assert_close(base(x).last_hidden_state, ref.timesformer(x).last_hidden_state)
    base.save_pretrained(tmp_path / "base")
    with open(tmp_path / "base" / "config.json") as f:
        assert json.load(f)["architectures"] == ["TimesformerModel"]
    # A base checkpoint into the classifier: the head is new (as transformers), the rest loads.
    clf = TimesformerForVideoClassification.from_pretrained(tmp_path / "base", num_labels=7)
    assert clf.classifier.out_features == 7
    for k, v in base.state_dict().items():
        assert torch.equal(clf.state_dict()["timesformer." + k], v)


def test_state_dict_keys_and_strict_load_both_ways(hf):
    for attention_type in ("divided_space_time", "joint_space_time", "space_only"):
        ref, ours, _ = make_pair(hf, attention_type, seed=4)
        ref_sd, our_sd = ref.state_dict(), ours.state_dict()
        assert list(ref_sd) == list(our_sd)
        assert all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd)
        fresh = TimesformerForVideoClassification(ours.config)
        fresh.load_state_dict(ref_sd, strict=True)
        ref.load_state_dict(fresh.state_dict(), strict=True)


def test_sharded_checkpoint(hf, tmp_path):
    ref, _, kwargs = make_pair(hf, "divided_space_time", seed=6)
    ref.save_pretrained(tmp_path)
    state = ref.state_dict()
    os.remove(tmp_path / "model.safetensors")
    from safetensors.torch import save_file

    keys = list(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: state[k].contiguous() for k in ks}, tmp_path / name, metadata={"format": "pt"})
    with open(tmp_path / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}, f)
    model = TimesformerForVideoClassification.from_pretrained(tmp_path)
    x = random_clip(kwargs)
    with torch.no_grad():
        assert_close(model(x).logits, ref(x).logits)


def test_dtype_and_device_arguments(hf, tmp_path):
    ref, _, _ = make_pair(hf, "divided_space_time", seed=7)
    ref.save_pretrained(tmp_path)
    model = TimesformerForVideoClassification.from_pretrained(tmp_path, dtype=torch.float64, device="cpu")
    assert model.dtype == torch.float64 and model.device.type == "cpu"
    assert (
        TimesformerForVideoClassification.from_pretrained(tmp_path, dtype="bfloat16").dtype == torch.bfloat16
    )
    assert TimesformerForVideoClassification.from_pretrained(tmp_path, dtype="auto").dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        TimesformerForVideoClassification.from_pretrained(tmp_path, dtype="int8")


def test_ignore_mismatched_sizes(hf, tmp_path):
    ref, _, _ = make_pair(hf, "divided_space_time", seed=8, num_labels=3)
    ref.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"classifier.weight: checkpoint has shape \(3, "):
        TimesformerForVideoClassification.from_pretrained(tmp_path, num_labels=6)
    model = TimesformerForVideoClassification.from_pretrained(
        tmp_path, num_labels=6, ignore_mismatched_sizes=True
    )
    assert model.classifier.out_features == 6


def test_from_hf_keeps_mode_dtype_and_class(hf):
    ref, _, _ = make_pair(hf, "space_only", seed=9, classification=False)
    ref = ref.double().train()
    ours = timesformer.from_hf(ref, backend="eager")
    assert type(ours) is TimesformerModel and ours.training and ours.dtype == torch.float64
    with pytest.raises(TypeError, match="TimeSformer"):
        timesformer.from_hf(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------- bad checkpoints


@pytest.fixture
def saved(hf, tmp_path):
    ref, _, _ = make_pair(hf, "divided_space_time", seed=10)
    ref.save_pretrained(tmp_path)
    return tmp_path, ref.state_dict()


def _rewrite(path, state, fmt="safetensors"):
    from safetensors.torch import save_file

    os.remove(path / "model.safetensors")
    if fmt == "bin":
        torch.save(state, path / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")


def test_missing_key_is_named(saved):
    path, state = saved
    del state["timesformer.encoder.layer.0.temporal_dense.bias"]
    _rewrite(path, state)
    with pytest.raises(
        CheckpointError, match=r"missing keys \['timesformer.encoder.layer.0.temporal_dense.bias'\]"
    ):
        TimesformerForVideoClassification.from_pretrained(path)


def test_unexpected_key_is_named(saved):
    path, state = saved
    state["timesformer.encoder.layer.0.extra.weight"] = torch.randn(2)
    _rewrite(path, state, "bin")
    with pytest.raises(
        CheckpointError, match=r"unexpected keys \['timesformer.encoder.layer.0.extra.weight'\]"
    ):
        TimesformerForVideoClassification.from_pretrained(path)


def test_shape_mismatch_is_named(saved):
    path, state = saved
    key = "timesformer.encoder.layer.0.attention.attention.qkv.weight"
    state[key] = torch.randn(state[key].shape[0], state[key].shape[1] + 1)
    _rewrite(path, state)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.") + ": checkpoint has shape"):
        TimesformerForVideoClassification.from_pretrained(path)


def test_attention_type_mismatch(saved):
    path, _ = saved
    with pytest.raises(CheckpointError, match="attention_type='joint_space_time'.*unexpected keys"):
        TimesformerForVideoClassification.from_pretrained(path, attention_type="joint_space_time")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_file(saved, fmt, damage):
    path, state = saved
    _rewrite(path, state, fmt)
    name = path / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    data = name.read_bytes()
    name.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x07not a checkpoint" * 20)
    with pytest.raises(CheckpointError, match=f"could not read weights file .*{name.name}"):
        TimesformerForVideoClassification.from_pretrained(path)


def test_bin_with_code_is_refused(saved):
    path, _ = saved

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    os.remove(path / "model.safetensors")
    torch.save({"x": Evil()}, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        TimesformerForVideoClassification.from_pretrained(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        # An AttributeError ('int' object has no attribute 'startswith'), a TypeError for one such key.
        (lambda state: dict(enumerate(state.values())), "does not hold a state dict of tensors"),
        (lambda state: {**state, 7: torch.randn(2)}, "does not hold a state dict of tensors"),
        # torch's RuntimeError from load_state_dict, naming no file.
        (lambda state: {k: v.to("meta") for k, v in state.items()}, "are not dense tensors that hold"),
        (lambda state: {k: v.to_sparse() if v.dim() == 2 else v for k, v in state.items()}, "are not dense"),
    ],
    ids=["int keys", "one int key", "meta", "sparse"],
)
def test_a_bin_of_odd_keys_or_tensors_is_refused_naming_it(saved, edit, message):
    path, state = saved
    _rewrite(path, edit(state), "bin")
    with pytest.raises(CheckpointError, match=f"weights file .*pytorch_model.bin.*{message}"):
        TimesformerForVideoClassification.from_pretrained(path)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_declared_tensors_are_not_read_before_the_keys_are_checked(saved, fmt):
    """A checkpoint with a large tensor the model does not have is refused without reading it into memory
    (pickles are memory-mapped as safetensors are): a small sparse file could otherwise ask for any size."""
    import subprocess
    import sys

    path, state = saved
    _rewrite(path, {**state, "junk": torch.zeros(2**26)}, fmt)  # 256 MiB
    probe = (
        "import sys, torch\n"
        "from timesformer import CheckpointError, TimesformerForVideoClassification as M\n"
        "def peak():\n"
        "    text = open('/proc/self/status').read()\n"
        "    return int(text.split('VmHWM:')[1].split()[0]) // 1024\n"
        "before = peak()\n"
        "try:\n"
        "    M.from_pretrained(sys.argv[1])\n"
        "except CheckpointError as e:\n"
        "    assert \"unexpected keys ['junk']\" in str(e), e\n"
        "print(peak() - before)\n"
    )
    # A fresh process: its peak memory (VmHWM) is its own.
    grown = subprocess.run(
        [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True
    )
    assert int(grown.stdout) < 100, f"peak memory grew by {grown.stdout.strip()} MiB"


def test_missing_files_and_paths(saved, tmp_path_factory):
    path, _ = saved
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TimesformerForVideoClassification.from_pretrained(empty)
    os.remove(path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="looked for model.safetensors"):
        TimesformerForVideoClassification.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        TimesformerForVideoClassification.from_pretrained(str(path / "nope"))
    (empty / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON config"):
        TimesformerForVideoClassification.from_pretrained(empty)


def test_hub_id_without_huggingface_hub(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(FileNotFoundError, match="needs the optional package huggingface_hub"):
        TimesformerForVideoClassification.from_pretrained("facebook/timesformer-base-finetuned-k400")


def test_hub_id_offline_cache_miss(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path), raising=False)
    with pytest.raises(FileNotFoundError, match="facebook/timesformer-base-finetuned-k400"):
        TimesformerForVideoClassification.from_pretrained("facebook/timesformer-base-finetuned-k400")


def test_hub_id_resolves_through_offline_cache(hf, monkeypatch, tmp_path):
    """A hub id found in the local cache loads without network (snapshot layout written by hand)."""
    hub = pytest.importorskip("huggingface_hub")
    ref, _, kwargs = make_pair(hf, "divided_space_time", seed=12)
    snap = tmp_path / "models--someone--tiny-timesformer" / "snapshots" / ("0" * 40)
    ref.save_pretrained(snap)
    (tmp_path / "models--someone--tiny-timesformer" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-timesformer" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    real = hub.snapshot_download

    def snapshot_download(**kw):
        return real(cache_dir=str(tmp_path), local_files_only=True, **kw)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    model = TimesformerForVideoClassification.from_pretrained("someone/tiny-timesformer")
    x = random_clip(kwargs)
    with torch.no_grad():
        assert_close(model(x).logits, ref(x).logits)


@pytest.mark.parametrize("safe", [True, False])
def test_save_pretrained_shards_and_transformers_keywords(hf, tmp_path, safe):
    _, ours, kwargs = make_pair(hf, "divided_space_time", seed=7)
    total = sum(t.numel() * t.element_size() for t in ours.state_dict().values())
    ours.save_pretrained(tmp_path, max_shard_size=total // 4, safe_serialization=safe)
    suffix = ".safetensors" if safe else ".bin"
    shards = sorted(p.name for p in tmp_path.glob(f"*-of-*{suffix}"))
    assert len(shards) > 2 and not (tmp_path / f"{'model' if safe else 'pytorch_model'}{suffix}").exists()
    index = json.loads(next(tmp_path.glob("*.index.json")).read_text())
    # The metadata transformers 5 writes (total_parameters was missing).
    assert index["metadata"] == {"total_parameters": ours.num_parameters(), "total_size": total}
    x = random_clip(kwargs)
    for cls in (TimesformerForVideoClassification, hf.TimesformerForVideoClassification):  # ours and theirs
        with torch.no_grad():
            assert_close(cls.from_pretrained(tmp_path).eval()(x).logits, ours.eval()(x).logits)
    # Saving again unsharded leaves no shard or index of the earlier save behind.
    ours.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    # transformers' keywords: another state dict; only the main process writes.
    zeroed = {k: torch.zeros_like(v) for k, v in ours.state_dict().items()}
    ours.save_pretrained(tmp_path / "z", state_dict=zeroed, is_main_process=True)
    assert (
        TimesformerForVideoClassification.from_pretrained(tmp_path / "z").classifier.weight.abs().sum() == 0
    )
    ours.save_pretrained(tmp_path / "other_rank", is_main_process=False)
    assert not (tmp_path / "other_rank").exists()
    # The last line of transformers' *_no_trainer example scripts (save_function is not used, as in 5.x).
    ours.save_pretrained(tmp_path / "script", is_main_process=True, save_function=torch.save)
    ours.save_pretrained(tmp_path / "script", push_to_hub=False, repo_id="a/b", commit_message="unused")
    assert sorted(p.name for p in (tmp_path / "script").iterdir()) == ["config.json", "model.safetensors"]
    for bad, error, message in [
        (dict(push_to_hub=True), ValueError, "push_to_hub=True is not supported"),
        # (Its upload's keywords were a TypeError about them, not the refusal of the upload.)
        (
            dict(push_to_hub=True, repo_id="a/b", private=True),
            ValueError,
            "push_to_hub=True is not supported",
        ),
        (dict(max_shard_size="lots"), ValueError, "max_shard_size must be a positive size"),
        (dict(variant="../fp16"), ValueError, "variant must be a name"),
        (dict(colour="red"), TypeError, "unexpected keyword argument 'colour'"),
    ]:
        with pytest.raises(error, match=message):
            ours.save_pretrained(tmp_path / "bad", **bad)


def test_parse_size_units():
    from timesformer.loading import parse_size

    assert (
        parse_size("5GB") == 5 * 10**9
        and parse_size("2GiB") == 2 * 2**30
        and parse_size("500 MB") == 5 * 10**8
    )
    assert parse_size(123) == 123 and parse_size("1.5KB") == 1500
    for bad in (0, -1, True, "", "GB", "five"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_a_failed_save_keeps_the_earlier_weights(hf, tmp_path, monkeypatch):
    import safetensors.torch

    _, ours, _ = make_pair(hf, "joint_space_time", seed=8)
    ours.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        ours.save_pretrained(tmp_path, max_shard_size=1000)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("sharded", [False, True])
def test_variants_sit_beside_the_main_weights_as_in_transformers(hf, tmp_path, sharded):
    ref, ours, kwargs = make_pair(hf, "divided_space_time", seed=13)
    shard = {"max_shard_size": 2000} if sharded else {}
    ours.save_pretrained(tmp_path)
    other = randomize_(TimesformerForVideoClassification(ours.config), seed=99)
    other.save_pretrained(tmp_path, variant="ema", **shard)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names  # the main weights stay
    if sharded:
        assert "model.safetensors.index.ema.json" in names
        assert any(n.startswith("model.ema-00001-of-") for n in names)
    else:
        assert "model.ema.safetensors" in names
    x = random_clip(kwargs)
    with torch.no_grad():
        expected = {None: ours.eval()(x).logits, "ema": other.eval()(x).logits}
        for variant, logits in expected.items():
            for cls in (TimesformerForVideoClassification, hf.TimesformerForVideoClassification):
                assert_close(cls.from_pretrained(tmp_path, variant=variant).eval()(x).logits, logits)
    # transformers' own variant files load here.
    ref.save_pretrained(tmp_path / "theirs", variant="fp16")
    with torch.no_grad():
        got = TimesformerForVideoClassification.from_pretrained(tmp_path / "theirs", variant="fp16")(x).logits
        assert_close(got, ref.eval()(x).logits)
    with pytest.raises(FileNotFoundError, match="model.fp16.safetensors"):
        TimesformerForVideoClassification.from_pretrained(tmp_path, variant="fp16")
    # A later unsharded save of the variant removes that variant's shards only.
    other.save_pretrained(tmp_path, variant="ema")
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "model.safetensors",
        "model.ema.safetensors",
        "theirs",
    }


def test_use_safetensors_picks_the_format(hf, tmp_path):
    _, ours, kwargs = make_pair(hf, "space_only", seed=14)
    other = randomize_(TimesformerForVideoClassification(ours.config), seed=98)
    ours.save_pretrained(tmp_path)  # model.safetensors
    torch.save(other.state_dict(), tmp_path / "pytorch_model.bin")
    x = random_clip(kwargs)
    load = TimesformerForVideoClassification.from_pretrained
    with torch.no_grad():
        for use, model in [(None, ours), (True, ours), (False, other)]:
            assert_close(load(tmp_path, use_safetensors=use).eval()(x).logits, model.eval()(x).logits)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(
        FileNotFoundError, match="looked for model.safetensors, model.safetensors.index.json$"
    ):
        load(tmp_path, use_safetensors=True)


def test_hub_options_reach_snapshot_download(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    ours = TimesformerForVideoClassification(timesformer.TimesformerConfig(**small_config_kwargs(seed=15)))
    ours.save_pretrained(tmp_path)
    calls = []

    def snapshot_download(**kw):
        calls.append(kw)
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    TimesformerForVideoClassification.from_pretrained(
        "someone/model", revision="v2", cache_dir="/c", token="t", force_download=True
    )
    timesformer.TimesformerConfig.from_pretrained("someone/model", revision="v3")
    TimesformerForVideoClassification.from_pretrained("someone/model", local_files_only=True)
    picked = [{k: v for k, v in c.items() if k not in ("repo_id", "allow_patterns")} for c in calls]
    # Only what was asked for: the hub's own defaults (HF_TOKEN, HF_HUB_OFFLINE) apply to the rest. A model's
    # load looks for a PEFT adapter first (two small files), as transformers does, with the same options.
    first = {"revision": "v2", "cache_dir": "/c", "token": "t", "force_download": True}
    offline = {"local_files_only": True}
    assert picked == [first, first, {"revision": "v3"}, offline, offline]
    assert calls[0]["allow_patterns"] == ["adapter_config.json", "config.json"]
    # Bad arguments are refused before anything is fetched.
    calls.clear()
    for bad in ({"colour": "red"}, {"device_map": "balanced"}, {"attn_implementation": "flex"}):
        with pytest.raises((TypeError, ValueError)):
            TimesformerForVideoClassification.from_pretrained("someone/model", **bad)
    assert calls == []
    assert all(c["repo_id"] == "someone/model" for c in calls)


def test_hub_downloads_only_the_format_and_variant_asked_for(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    ours = TimesformerForVideoClassification(timesformer.TimesformerConfig(**small_config_kwargs(seed=16)))
    only_bin = tmp_path / "bin"
    ours.save_pretrained(only_bin, safe_serialization=False)
    patterns = []

    def snapshot_download(repo_id, allow_patterns, **kw):
        if allow_patterns != ["adapter_config.json", "config.json"]:  # not the look for an adapter
            patterns.append(allow_patterns)
        return str(only_bin)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    load = TimesformerForVideoClassification.from_pretrained
    load(
        "someone/model",
        variant="fp16",
        use_safetensors=True,
        config=ours.config,
        state_dict=ours.state_dict(),
    )
    assert patterns[-1] == [
        "config.json",
        "model.fp16.safetensors",
        "model.fp16-*-of-*.safetensors",
        "model.safetensors.index.fp16.json",
    ]
    # No format asked for: safetensors first; the pickles when the repository has none (as this one).
    patterns.clear()
    load("someone/model")
    assert [p[1] for p in patterns] == ["model.safetensors", "pytorch_model.bin"]
    patterns.clear()
    ours.config.save_pretrained(only_bin / "sub")
    timesformer.TimesformerConfig.from_pretrained("someone/model", subfolder="sub/")
    assert patterns == [["sub/config.json"]]  # a config alone fetches no weights


def test_a_hub_subfolder_loads_through_the_blob_store(tmp_path):
    """A snapshot's files are links into the repository's blob store, also in a subfolder (refused before)."""
    ours = randomize_(
        TimesformerForVideoClassification(timesformer.TimesformerConfig(**small_config_kwargs(seed=17))), 17
    )
    ours.save_pretrained(tmp_path / "plain")
    repo = tmp_path / "models--someone--model"
    (repo / "blobs").mkdir(parents=True)
    sub = repo / "snapshots" / ("0" * 40) / "sub"
    sub.mkdir(parents=True)
    for f in (tmp_path / "plain").iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        os.replace(f, blob)
        os.symlink(blob, sub / f.name)
    config = timesformer.TimesformerConfig.from_pretrained(sub.parent, subfolder="sub")
    loaded = TimesformerForVideoClassification.from_pretrained(sub.parent, subfolder="sub")
    assert (config.hidden_size, config.num_labels) == (ours.config.hidden_size, ours.config.num_labels)
    x = random_clip(small_config_kwargs(seed=17))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ours.eval()(x).logits)


def test_a_variant_named_index_is_a_variant(tmp_path):
    ours = TimesformerForVideoClassification(timesformer.TimesformerConfig(**small_config_kwargs(seed=18)))
    ours.save_pretrained(tmp_path, variant="index")
    assert (tmp_path / "model.index.safetensors").is_file()
    loaded = TimesformerForVideoClassification.from_pretrained(tmp_path, variant="index")
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), ours.state_dict().values(), strict=True)
    )


def test_weights_without_a_config_say_how_to_load_them(tmp_path):
    """What transformers' Trainer.save_model writes for a model that is not its PreTrainedModel."""
    from safetensors.torch import save_file

    ours = randomize_(
        TimesformerForVideoClassification(timesformer.TimesformerConfig(**small_config_kwargs(seed=18))), 18
    )
    save_file(ours.state_dict(), tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FileNotFoundError, match=r"weights without a config \(as Trainer.save_model saves"):
        TimesformerForVideoClassification.from_pretrained(tmp_path)
    loaded = TimesformerForVideoClassification.from_pretrained(tmp_path, config=ours.config)
    assert torch.equal(loaded.classifier.weight, ours.classifier.weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config.json in .*'$"):  # no weights either: no hint
        TimesformerForVideoClassification.from_pretrained(tmp_path / "empty")


class _WithBuffer(TimesformerForVideoClassification):
    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.register_buffer("class_weights", torch.linspace(0, 1, 3), persistent=False)


class _NormedHead(TimesformerForVideoClassification):
    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        hidden = config.hidden_size
        self.classifier = torch.nn.Sequential(torch.nn.BatchNorm1d(hidden), torch.nn.Linear(hidden, 3))
        self.post_init()


def test_subclasses_with_modules_or_buffers_of_their_own_load_initialized(tmp_path):
    """from_pretrained initializes only what a checkpoint lacks, on a model made with ``to_empty``: a
    subclass's BatchNorm head (a type ``_init_weights`` does not know) and a non-persistent buffer set in
    ``__init__`` came out as uninitialized memory."""
    config = timesformer.TimesformerConfig(**small_config_kwargs("divided_space_time", 18, num_labels=3))
    _WithBuffer(config).save_pretrained(tmp_path / "full")
    TimesformerModel(config).save_pretrained(tmp_path / "base")
    junk = [torch.full((4096,), float("nan")) for _ in range(64)]  # freed memory that to_empty may hand out
    del junk
    assert torch.equal(_WithBuffer.from_pretrained(tmp_path / "full").class_weights, torch.linspace(0, 1, 3))
    norm = _NormedHead.from_pretrained(tmp_path / "base").classifier[0]
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.equal(
        norm.bias, torch.zeros_like(norm.bias)
    )
    assert torch.equal(norm.running_var, torch.ones_like(norm.running_var)) and norm.num_batches_tracked == 0
