"""TimesformerConfig: transformers' fields and defaults, config.json round trips, clear errors."""

from __future__ import annotations

import json

import pytest

from timesformer import TimesformerConfig
from timesformer.configuration import MODEL_FIELDS


def test_defaults_match_transformers(hf):
    ref, ours = hf.TimesformerConfig(), TimesformerConfig()
    for name in MODEL_FIELDS:
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.num_labels == ref.num_labels == 2
    assert ours.id2label == ref.id2label and ours.label2id == ref.label2id
    assert ours.problem_type is ref.problem_type is None


def test_reads_transformers_config_json_and_keeps_unknown_keys(hf, tmp_path):
    ref = hf.TimesformerConfig(
        num_frames=16, image_size=448, id2label={0: "a", 1: "b", 2: "c"}, attention_type="joint_space_time"
    )
    ref.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["some_future_key"] = {"nested": [1, 2]}
    (tmp_path / "config.json").write_text(json.dumps(data))
    ours = TimesformerConfig.from_pretrained(tmp_path)
    assert ours.num_frames == 16 and ours.image_size == 448 and ours.attention_type == "joint_space_time"
    assert ours.id2label == {0: "a", 1: "b", 2: "c"} and ours.label2id == {"a": 0, "b": 1, "c": 2}
    assert ours.some_future_key == {"nested": [1, 2]}
    ours.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["some_future_key"] == {"nested": [1, 2]}
    assert written["transformers_version"] == data["transformers_version"]
    back = hf.TimesformerConfig.from_pretrained(tmp_path / "out")
    for name in MODEL_FIELDS:
        assert getattr(back, name) == getattr(ref, name), name
    assert back.id2label == ref.id2label


def test_num_labels_and_overrides():
    cfg = TimesformerConfig(num_labels=4)
    assert cfg.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2", 3: "LABEL_3"}
    cfg.num_labels = 2
    assert list(cfg.id2label) == [0, 1]
    again = TimesformerConfig.from_dict(TimesformerConfig(id2label={0: "x", 1: "y"}).to_dict(), num_labels=3)
    assert again.num_labels == 3
    assert TimesformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="model_type"):
        TimesformerConfig.from_dict({"model_type": "vit"})


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("attention_type", "divided", "attention_type must be one of .* got 'divided'"),
        (
            "hidden_size",
            100,
            "hidden_size must be divisible by num_attention_heads, got hidden_size=100 and num_attention_heads=12",
        ),
        (
            "image_size",
            225,
            "image_size must be divisible by patch_size, got image_size=225 and patch_size=16",
        ),
        ("hidden_act", "gelu_magic", "hidden_act must be one of .* got 'gelu_magic'"),
        ("num_frames", 0, "num_frames must be an int from 1 to 4,096, got 0"),
        # Upper bounds, checked before anything is allocated (issue 15, item 7).
        ("intermediate_size", 2_000_000, "intermediate_size must be an int from 1 to 131,072, got 2000000"),
        ("hidden_size", 10**9, "hidden_size must be an int from 1 to 16,384, got 1000000000"),
        ("num_labels", 10**7, "num_labels must be an int from 0 to 1,000,000, got 10000000"),
        ("image_size", 10**6, "image_size at most 8,192"),
        # Accepted before, meaningless (item 10) or named no field (item 13).
        ("layer_norm_eps", float("inf"), "layer_norm_eps must be a positive finite number, got inf"),
        ("layer_norm_eps", float("nan"), "layer_norm_eps must be a positive finite number, got nan"),
        ("output_attentions", "yes", "output_attentions must be a bool, got 'yes'"),
        ("return_dict", 1, "return_dict must be a bool, got 1"),
        ("id2label", {"0": "a", "2": "b"}, r"id2label keys must be 0..1 \(one per class\), got \[2\]"),
        ("id2label", {"zero": "a"}, "id2label keys must be class indices 0..n-1, got 'zero'"),
        ("id2label", {0.5: "a"}, "id2label keys must be class indices 0..n-1, got 0.5"),
        ("id2label", ["a"], "id2label must be a mapping of class index -> name, got list"),
        # Written as the "names" classify printed ("None", "['x']").
        ("id2label", {"0": "a", "1": None}, "id2label names must be strings, got None for class 1"),
        ("id2label", {"0": ["x"]}, r"id2label names must be strings, got \['x'\] for class 0"),
        ("id2label", {"0": True}, "id2label names must be strings, got True for class 0"),
        ("hidden_dropout_prob", 1.5, r"hidden_dropout_prob must be a number in \[0, 1\), got 1.5"),
        ("hidden_dropout_prob", 1, r"hidden_dropout_prob must be a number in \[0, 1\), got 1"),
        (
            "drop_path_rate",
            1.0,
            r"drop_path_rate must be a number in \[0, 1\), got 1.0",
        ),  # (every layer dropped)
        ("patch_size", 0, "image_size and patch_size must be positive"),  # (not a ZeroDivisionError)
        ("image_size", 0, "image_size and patch_size must be positive"),
        ("problem_type", "ranking", "problem_type must be None or one of"),
        ("layer_norm_eps", -1.0, "layer_norm_eps must be a positive finite number"),
        # 0 divided by zero when a head was newly initialized; NaN or -1 gave a head of std about 0.9.
        ("initializer_range", 0, "initializer_range must be a positive finite number, got 0"),
        ("initializer_range", float("nan"), "initializer_range must be a positive finite number, got nan"),
        ("initializer_range", "0.02", "initializer_range must be a positive finite number, got '0.02'"),
        ("patch_size", (16, 16, 1), "patch_size must be an int or a pair"),
    ],
)
def test_invalid_values_name_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        TimesformerConfig(**{field: value})


def test_each_limit_itself_is_accepted():
    from timesformer.configuration import LIMITS, MAX_LABELS

    divisible = {"hidden_size": dict(num_attention_heads=16), "num_attention_heads": dict(hidden_size=1024)}
    for name, limit in LIMITS.items():
        assert getattr(TimesformerConfig(**{name: limit}, **divisible.get(name, {})), name) == limit
    assert TimesformerConfig(num_labels=MAX_LABELS).num_labels == MAX_LABELS


def test_id2label_names_may_be_numpy_integers_and_strings():
    """Names taken from an array of class codes (NumPy integers, NumPy strings) were refused or kept as
    NumPy objects."""
    import numpy as np

    config = TimesformerConfig(id2label={np.int64(0): np.int64(7), 1: np.str_("b"), "2": 30})
    assert config.id2label == {0: "7", 1: "b", 2: "30"} and all(
        type(v) is str for v in config.id2label.values()
    )
    assert config.label2id == {"7": 0, "b": 1, "30": 2}
    with pytest.raises(
        ValueError, match=r"id2label names must be strings, got np.float64\(1.5\) for class 0"
    ):
        TimesformerConfig(id2label={0: np.float64(1.5)})


def test_invalid_value_set_after_construction_is_caught_by_model():
    import timesformer

    cfg = TimesformerConfig(
        hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=8, image_size=16
    )
    cfg.attention_type = "bogus"
    with pytest.raises(ValueError, match="attention_type"):
        timesformer.TimesformerModel(cfg)


def test_non_square_image_size_pair():
    cfg = TimesformerConfig(image_size=(32, 48), patch_size=16)
    assert cfg.grid_hw == (2, 3) and cfg.num_patches == 6
    assert json.loads(cfg.to_json_string())["image_size"] == [32, 48]


def test_update_is_all_or_nothing_and_update_from_string_takes_fields_only():
    from timesformer import TimesformerConfig

    config = TimesformerConfig(num_labels=3)
    with pytest.raises(ValueError, match="hidden_size must be divisible by num_attention_heads"):
        config.update({"num_frames": 4, "hidden_size": 100})
    assert (config.hidden_size, config.num_frames, config.num_labels) == (768, 8, 3)
    with pytest.raises(ValueError, match="expected 'field=value' of known fields, got 'to_dict=1'"):
        config.update_from_string("to_dict=1")
    with pytest.raises(ValueError, match="qkv_bias takes true or false"):
        config.update_from_string("qkv_bias=maybe")


def test_from_pretrained_names_the_overrides_it_ignores(tmp_path, caplog):
    TimesformerConfig(num_frames=3).save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="timesformer.configuration"):
        config = TimesformerConfig.from_pretrained(tmp_path, num_frame=5, num_labels=4, head_dim=4)
    assert config.num_frames == 3 and config.num_labels == 4 and not hasattr(config, "num_frame")
    # A property is not a field either: it was written to config.json while reading its own value.
    assert config.head_dim == 64 and "head_dim" not in config.to_dict()
    assert "ignored head_dim, num_frame: not fields of the config" in caplog.text


def test_dtype_reads_as_a_torch_dtype_under_either_spelling():
    import torch

    assert TimesformerConfig(dtype="torch.float16").dtype == torch.float16
    both = TimesformerConfig(dtype="float16", torch_dtype="bfloat16")  # dtype wins, one value kept
    assert both.dtype == both.torch_dtype == torch.float16 and "torch_dtype" not in both.to_dict()
    assert TimesformerConfig(dtype="not a dtype").dtype == "not a dtype"  # kept as given, refused at load
    # A rebuild from to_dict() (its "dtype": None) with the older name: the override was dropped.
    assert (
        TimesformerConfig.from_dict(TimesformerConfig().to_dict(), torch_dtype="bfloat16").dtype
        == torch.bfloat16
    )
    config = TimesformerConfig()
    config.update({"torch_dtype": "float16"})
    assert config.dtype == torch.float16


def test_to_dict_has_transformers_keys_and_values(hf):
    """``to_dict`` lacked transformers' generic keys (``_name_or_path``, ``is_encoder_decoder``,
    ``chunk_size_feed_forward``, ``architectures``, ``dtype``): code that indexes them raised KeyError."""
    kwargs = dict(num_frames=3, hidden_size=40, num_attention_heads=5, problem_type="regression")
    ref, ours = hf.TimesformerConfig(**kwargs).to_dict(), TimesformerConfig(**kwargs).to_dict()
    ref.pop("transformers_version")  # (this package's configs are not transformers')
    assert ours == ref
    assert TimesformerConfig().transformers_version is None
    assert TimesformerConfig(transformers_version="4.40.0").transformers_version == "4.40.0"
    named = TimesformerConfig(name_or_path="some/where", architectures=["TimesformerModel"])
    assert named.to_dict()["_name_or_path"] == "some/where"
    assert named.to_diff_dict()["architectures"] == ["TimesformerModel"]
    assert "_name_or_path" not in named.to_diff_dict()
    # Read back (update, from_dict(to_dict())), the generic keys at their defaults stay out of config.json.
    again = TimesformerConfig.from_dict(TimesformerConfig(**kwargs).to_dict())
    assert again.to_diff_dict() == TimesformerConfig(**kwargs).to_diff_dict()


def test_serialization_methods_take_transformers_arguments(hf, tmp_path):
    """``to_json_string(use_diff=...)``, ``to_json_file(json_file_path=...)``, ``save_pretrained(save_directory=,
    push_to_hub=False)``: transformers' keywords raised TypeError here."""
    ours = TimesformerConfig(
        num_frames=5, hidden_size=96, num_attention_heads=3, qkv_bias=False, num_labels=3
    )
    full, diff = json.loads(ours.to_json_string(use_diff=False)), json.loads(ours.to_json_string())
    assert full == json.loads(json.dumps(ours.to_dict()))
    assert set(MODEL_FIELDS) <= set(diff) < set(full) and diff["model_type"] == "timesformer"
    assert TimesformerConfig.from_dict(diff) == ours
    ref = hf.TimesformerConfig.from_dict(diff)
    for name in MODEL_FIELDS:
        assert getattr(ref, name) == getattr(ours, name), name
    ours.to_json_file(json_file_path=tmp_path / "c.json", use_diff=False)
    assert TimesformerConfig.from_json_file(tmp_path / "c.json") == ours
    ours.save_pretrained(save_directory=tmp_path / "saved", push_to_hub=False, commit_message="unused")
    assert TimesformerConfig.from_pretrained(tmp_path / "saved") == ours
    # Every field, but where it was read from and transformers' generic keys left at their defaults.
    generic = {"_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "is_encoder_decoder"}
    assert generic <= set(full) and not generic & set(diff)
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved == {k: v for k, v in full.items() if k not in generic}
    with pytest.raises(ValueError, match="push_to_hub=True is not supported"):
        ours.save_pretrained(tmp_path / "hub", push_to_hub=True)
    assert not (tmp_path / "hub").exists()
