"""``VideoProcessor`` called the way ``transformers``' video processors are (issue 16, item 5): the input
forms they take, ``return_tensors``, per-call settings, their defaults, and the pixel values of
``transformers``' PIL processor with the same settings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import random_clip, randomize_, small_config_kwargs

from timesformer import TimesformerConfig, TimesformerForVideoClassification
from timesformer.preprocess import BatchFeature, VideoProcessor

PIL = pytest.importorskip("PIL.Image")
transformers = pytest.importorskip("transformers")


def _frames(t=3, h=37, w=53, seed=0) -> torch.Tensor:
    return torch.randint(
        0, 256, (t, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_defaults_are_transformers_timesformer_video_processor():
    # The class attributes are read from the module: instantiating it needs torchvision.
    from transformers.models.timesformer.video_processing_timesformer import TimesformerVideoProcessor as Ref

    ours = VideoProcessor()
    assert list(ours.image_mean) == pytest.approx(Ref.image_mean)
    assert list(ours.image_std) == pytest.approx(Ref.image_std)
    assert ours.shortest_edge == Ref.size["shortest_edge"]
    assert ours.crop_size == (Ref.crop_size["height"], Ref.crop_size["width"])
    assert ours.rescale_factor == pytest.approx(Ref.rescale_factor)
    assert (ours.do_resize, ours.do_center_crop, ours.do_rescale, ours.do_normalize) == (
        Ref.do_resize, Ref.do_center_crop, Ref.do_rescale, Ref.do_normalize,
    )  # fmt: skip


@pytest.mark.parametrize(
    "size,crop,hw", [(24, (16, 24), (37, 53)), (17, (17, 11), (64, 29)), (31, (31, 31), (31, 40))]
)
def test_pixel_values_match_transformers_pil_processor(size, crop, hw):
    gen = torch.Generator().manual_seed(size)
    mean = (torch.rand(3, generator=gen) * 0.6 + 0.2).tolist()
    std = (torch.rand(3, generator=gen) * 0.3 + 0.15).tolist()
    frames = _frames(4, *hw, seed=size)
    settings = dict(image_mean=mean, image_std=std, rescale_factor=1 / 255)
    reference = transformers.VideoMAEImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": crop[0], "width": crop[1]}, **settings
    )
    ours = VideoProcessor(shortest_edge=size, crop_size=crop, **settings)
    pil_frames = [PIL.fromarray(f.numpy()) for f in frames]
    expected = reference(pil_frames, return_tensors="pt")["pixel_values"]
    got = ours(pil_frames, return_tensors="pt")["pixel_values"]
    assert got.shape == expected.shape == (1, 4, 3, *crop)
    # PIL rounds the resized frame to 8 bits (and uses fixed-point weights); we round nowhere: at most one
    # 8-bit level apart, and far less on average.
    level = torch.tensor([1 / 255 / s for s in std]).view(1, 1, 3, 1, 1)
    diff = (got - expected).abs()
    assert (diff <= 1.01 * level).all(), (diff / level).max()
    assert (diff / level).mean() < 0.3


def test_every_input_form_gives_the_same_pixel_values():
    processor = VideoProcessor(shortest_edge=24, crop_size=16)
    video = _frames()
    expected = processor(video)
    assert expected.shape == (1, 3, 3, 16, 16)
    arrays = video.numpy()
    forms = {
        "tensor THWC": video,
        "tensor TCHW": video.permute(0, 3, 1, 2),
        "array THWC": arrays,
        "array TCHW": arrays.transpose(0, 3, 1, 2),
        "list of PIL images": [PIL.fromarray(f) for f in arrays],
        "list of HWC arrays": list(arrays),
        "list of CHW tensors": [f.permute(2, 0, 1) for f in video],
        "RGBA PIL images": [PIL.fromarray(f).convert("RGBA") for f in arrays],
        # Negative strides (OpenCV's BGR to RGB, frames[..., ::-1]): torch cannot share them.
        "BGR array flipped": np.ascontiguousarray(arrays[..., ::-1])[..., ::-1],
        "list of flipped BGR arrays": [np.ascontiguousarray(f[..., ::-1])[..., ::-1] for f in arrays],
    }
    for name, form in forms.items():
        torch.testing.assert_close(processor(form), expected, rtol=0, atol=0, msg=name)
    other = _frames(seed=1)
    batch = processor(torch.stack([video, other]))
    assert batch.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(batch[0], expected[0], rtol=0, atol=0)
    for videos in ([video, other], [[PIL.fromarray(f) for f in v.numpy()] for v in (video, other)]):
        torch.testing.assert_close(processor(videos), batch, rtol=0, atol=0)


def test_return_tensors_feeds_the_model():
    kwargs = small_config_kwargs("divided_space_time", 3)
    config = TimesformerConfig(**kwargs)
    model = randomize_(TimesformerForVideoClassification(config, backend="sdpa"), 3).eval()
    side = config.image_size
    processor = VideoProcessor(shortest_edge=side, crop_size=side)
    video = [PIL.fromarray(f) for f in _frames(config.num_frames, side + 5, side + 9).numpy()]
    features = processor(video, return_tensors="pt")
    assert isinstance(features, BatchFeature) and set(features) == {"pixel_values"}
    assert features.pixel_values is features["pixel_values"]
    with torch.no_grad():
        logits = model(**features).logits
        torch.testing.assert_close(logits, model(processor(video)).logits)
    assert features.to(torch.float64).pixel_values.dtype == torch.float64
    as_numpy = processor(video, return_tensors="np")["pixel_values"]
    assert isinstance(as_numpy, np.ndarray)
    np.testing.assert_array_equal(as_numpy, features.pixel_values.numpy())
    assert random_clip(kwargs).shape[2:] == features.pixel_values.shape[2:]


def test_settings_per_call_and_transformers_spellings():
    video = _frames(2, 40, 60)
    base = VideoProcessor(shortest_edge=32, crop_size=(32, 32))
    per_call = base(video, crop_size={"height": 16, "width": 24}, do_normalize=False)
    assert per_call.shape == (1, 2, 3, 16, 24) and per_call.min() >= 0 and per_call.max() <= 1
    torch.testing.assert_close(
        per_call, VideoProcessor(shortest_edge=32, crop_size=[16, 24], do_normalize=False)(video)
    )
    assert base.crop_size == (32, 32)  # the call did not change the processor
    scalar = VideoProcessor(shortest_edge=32, crop_size=32, image_mean=0.5, image_std=0.25)
    assert scalar.image_mean == (0.5,) * 3 and scalar.image_std == (0.25,) * 3
    assert VideoProcessor(crop_size=[20]).crop_size == (20, 20)
    # size as (height, width), per call and in a config, as transformers' get_size_dict reads it
    exact = VideoProcessor.from_dict({"size": {"height": 24, "width": 30}, "crop_size": 24})(video)
    torch.testing.assert_close(base(video, size=(24, 30), crop_size=24), exact, rtol=0, atol=0)
    torch.testing.assert_close(VideoProcessor.from_dict({"size": [24, 30], "crop_size": 24})(video), exact)
    # resample per call: bilinear is what runs; another filter is named, not ignored silently
    torch.testing.assert_close(base(video, resample=2), base(video), rtol=0, atol=0)
    with pytest.warns(UserWarning, match=r"resample=3 \(bicubic\) is not implemented"):
        base(video, resample=3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda p, v: p(v, return_tensors="tf"), "return_tensors must be None, 'pt' or 'np'"),
        (lambda p, v: p(v, return_tensors="np", dtype=torch.bfloat16), "'np' cannot hold bfloat16"),
        (lambda p, v: p(v.float() / 255), "expected uint8 frames"),
        (lambda p, v: p(v, do_sample_frames=True), r"unknown processor setting\(s\) \['do_sample_frames'\]"),
        (lambda p, v: p([]), "got an empty list"),
        (lambda p, v: p(v[0, :, :, 0]), r"got shape \(37, 53\)"),
        (lambda p, v: p([v[0, :, :, :2]]), r"expected a frame .* got shape \(37, 53, 2\)"),
        (lambda p, v: p("video.mp4"), "got str"),
        (lambda p, v: p([v, v[:, :20]], do_center_crop=False), "must give the same shape"),
        (lambda p, v: p([v[0], v[1, :20]]), r"frames of one video must share a size, got sizes \(H, W\)"),
    ],
)
def test_bad_input_is_refused_with_what_was_expected(call, match):
    processor = VideoProcessor(shortest_edge=16, crop_size=16)
    with pytest.raises((ValueError, TypeError), match=match):
        call(processor, _frames())


@pytest.mark.parametrize("resample, name", [(3, "bicubic"), (0, "nearest")])
def test_a_filter_other_than_bilinear_is_named_not_ignored(resample, name):
    with pytest.warns(
        UserWarning, match=rf"resample={resample} \({name}\) is not implemented; frames are resized"
    ):
        VideoProcessor.from_dict({"resample": resample})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VideoProcessor.from_dict({"resample": 2})
        VideoProcessor.from_dict({})


def test_an_extreme_aspect_ratio_is_refused_before_anything_is_allocated():
    """A 16x65520 strip (a few KB of video, under max_frame_pixels) resized to 224 on its short side would
    be 224x917280: tens of GB of float32 on the torch paths. Refused, naming the sizes."""
    strip = torch.randint(0, 256, (1, 16, 1, 3), dtype=torch.uint8).expand(8, 16, 65520, 3)
    processor = VideoProcessor()
    for call in (
        lambda: processor.resize_crops(strip, [None]),
        lambda: processor.preprocess(strip, native=False),
        lambda: processor.preprocess(strip),
    ):
        with pytest.raises(
            ValueError, match=r"16x65520 would be resized to 224x917280 .*over 4,194,304 pixels"
        ):
            call()
    # A wide but sane video (an 1:80 panorama) still works, and so do 4K frames kept at their size, and 16:9
    # frames at the largest shortest edge allowed.
    wide = torch.randint(0, 256, (2, 8, 640, 3), dtype=torch.uint8)
    assert processor.preprocess(wide).shape == (2, 3, 224, 224)
    uhd = torch.randint(0, 256, (1, 1, 1, 3), dtype=torch.uint8).expand(1, 2160, 3840, 3)
    assert VideoProcessor(do_resize=False).output_size(2160, 3840) == ((2160, 3840), (224, 224))
    assert VideoProcessor(do_resize=False).resize_crops(uhd, [None])[0].shape == (1, 224, 224, 3)
    for h, w in ((1080, 1920), (480, 854), (404, 720)):
        VideoProcessor(shortest_edge=1526).output_size(h, w)


def _close_to(got: torch.Tensor, expected: torch.Tensor, std) -> None:
    """At most one 8-bit level apart (PIL rounds the resized frame, we do not), far less on average."""
    assert got.shape == expected.shape
    level = torch.tensor([1 / 255 / s for s in std]).view(1, 1, 3, 1, 1)
    diff = (got - expected).abs()
    assert (diff <= 1.01 * level).all(), (diff / level).max()
    assert (diff / level).mean() < 0.3


@pytest.mark.parametrize("hw", [(36, 64), (64, 36), (40, 44)])
def test_longest_edge_caps_the_resize_as_transformers(hw):
    """``size: {shortest_edge, longest_edge}`` lost its longest_edge: a wide frame was resized past it."""
    size = {"shortest_edge": 24, "longest_edge": 30}
    settings = dict(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3], rescale_factor=1 / 255)
    frames = [PIL.fromarray(f.numpy()) for f in _frames(2, *hw, seed=hw[0])]
    for crop in (False, True):
        reference = transformers.VideoMAEImageProcessorPil(
            size=size, do_center_crop=crop, crop_size={"height": 12, "width": 14}, **settings
        )
        ours = VideoProcessor.from_dict(
            {"size": size, "do_center_crop": crop, "crop_size": {"height": 12, "width": 14}, **settings}
        )
        expected = reference(frames, return_tensors="pt")["pixel_values"]
        _close_to(ours(frames, return_tensors="pt")["pixel_values"], expected, settings["image_std"])
    assert ours.to_dict()["size"] == size  # kept when saved


def test_missing_mean_and_std_are_those_of_the_class_the_file_names(tmp_path):
    """transformers' VideoMAE processors (what AutoImageProcessor loads for TimeSformer) default to 0.5 / 0.5,
    its TimesformerVideoProcessor to ImageNet's; a file naming VideoMAEImageProcessor without mean and std was
    normalized with ImageNet's."""
    import json

    from timesformer.preprocess import IMAGENET_MEAN, STANDARD_MEAN

    assert list(transformers.VideoMAEImageProcessorPil().image_mean) == list(STANDARD_MEAN)
    base = {"size": {"shortest_edge": 24}, "crop_size": 24}
    cases = [
        ("preprocessor_config.json", {"image_processor_type": "VideoMAEImageProcessor"}, STANDARD_MEAN),
        ("preprocessor_config.json", {}, STANDARD_MEAN),  # AutoImageProcessor: VideoMAEImageProcessor
        (
            "video_preprocessor_config.json",
            {},
            IMAGENET_MEAN,
        ),  # AutoVideoProcessor: TimesformerVideoProcessor
        ("preprocessor_config.json", {"video_processor_type": "TimesformerVideoProcessor"}, IMAGENET_MEAN),
    ]
    for i, (name, extra, mean) in enumerate(cases):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / name).write_text(json.dumps({**base, **extra}))
        assert VideoProcessor.from_pretrained(folder).image_mean == pytest.approx(mean), (name, extra)


def test_a_video_processor_saved_by_transformers_5_is_read(tmp_path):
    """transformers 5 saves a video processor as video_preprocessor_config.json (and its AutoVideoProcessor
    reads that first): classify used the default preprocessing instead, without a word."""
    import json
    import shutil

    from timesformer.classify import bundled_model_dir, load_model

    folder = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), folder)
    image = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").unlink()
    video = {**image, "video_processor_type": "TimesformerVideoProcessor", "image_mean": [0.3, 0.4, 0.5]}
    video.pop("image_processor_type", None)
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video))
    _, processor = load_model(folder, backend="sdpa", device="cpu")
    assert processor.image_mean == pytest.approx((0.3, 0.4, 0.5))
    assert VideoProcessor.from_pretrained(folder).image_mean == pytest.approx((0.3, 0.4, 0.5))
    (folder / "video_preprocessor_config.json").unlink()
    with pytest.raises(
        FileNotFoundError, match="no video_preprocessor_config.json or preprocessor_config.json"
    ):
        VideoProcessor.from_pretrained(folder)


@pytest.mark.parametrize("kind", ["a folder", "a broken link", "a FIFO"])
def test_a_preprocessor_config_that_is_not_a_file_is_refused(tmp_path, kind):
    """A folder (or a FIFO) named preprocessor_config.json was taken for no config: the 224x224 defaults
    for a 32x32 model, without a word."""
    import os
    import re
    import shutil

    from timesformer.classify import bundled_model_dir, load_model
    from timesformer.loading import CheckpointError

    folder = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), folder)
    path = folder / "preprocessor_config.json"
    path.unlink()
    {
        "a folder": path.mkdir,
        "a broken link": lambda: path.symlink_to("gone.json"),
        "a FIFO": lambda: os.mkfifo(path),
    }[kind]()
    expected = "not a regular file (a FIFO?)" if kind == "a FIFO" else kind
    with pytest.raises(
        CheckpointError,
        match=re.escape(f"preprocessor_config.json: expected a preprocessing config file, got {expected}"),
    ):
        load_model(folder, backend="sdpa", device="cpu")
    with pytest.raises(CheckpointError, match="expected a preprocessing config file"):
        VideoProcessor.from_pretrained(folder)


def test_transparent_frames_are_composited_onto_white():
    """RGBA frames lost their alpha channel (the colors under transparent pixels showed), where transformers'
    convert_to_rgb composites them onto white."""
    from transformers.image_transforms import convert_to_rgb

    rng = np.random.default_rng(3)
    rgba = [PIL.fromarray(rng.integers(0, 256, (20, 28, 4), dtype=np.uint8), mode="RGBA") for _ in range(2)]
    ours = VideoProcessor(shortest_edge=20, crop_size=(20, 28), image_mean=0.0, image_std=1.0)
    got = ours(rgba, return_tensors="pt")["pixel_values"][0]
    expected = [np.asarray(convert_to_rgb(f, return_numpy=True), np.float32) / 255 for f in rgba]
    expected = torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # An opaque frame is what convert("RGB") gives.
    opaque = PIL.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).convert("RGBA")
    got = ours([opaque], return_tensors="pt")["pixel_values"][0, 0]
    torch.testing.assert_close(
        got, torch.from_numpy(np.asarray(opaque.convert("RGB"), np.float32) / 255).permute(2, 0, 1)
    )


def test_a_saved_processor_loads_back_whichever_file_is_read_first(tmp_path):
    """from_pretrained reads video_preprocessor_config.json first: a processor saved over a folder that had one
    (as transformers 5 writes) came back with the old settings. Both files are written, with the same settings."""
    import json

    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3]}))
    saved = VideoProcessor(
        shortest_edge=40, longest_edge=60, crop_size=(32, 32), image_mean=[0.45, 0.4, 0.35]
    )
    saved.save_pretrained(tmp_path)
    assert VideoProcessor.from_pretrained(tmp_path).to_dict() == saved.to_dict()
    image = VideoProcessor.from_pretrained(tmp_path / "preprocessor_config.json")
    assert image.to_dict() == saved.to_dict()
    video = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert (
        video["video_processor_type"] == "TimesformerVideoProcessor" and "image_processor_type" not in video
    )


@pytest.mark.parametrize(
    "size, hw",
    [
        ({"shortest_edge": 32, "longest_edge": 60}, (40, 100)),  # the cap leaves the short side at 24
        ({"shortest_edge": 20}, (30, 45)),  # a crop larger than the resize on both sides
        ({"height": 22, "width": 36}, (30, 44)),
    ],
)
def test_a_crop_larger_than_the_resized_frame_is_padded_as_transformers(size, hw):
    """``transformers`` pads the resized frame with black (0, before normalization) where the crop is larger;
    such settings were refused at load, and each video failed. (The differences here are even: transformers'
    PIL processor puts an odd pixel before the frame, its torchvision ones after it, as this package does.)"""
    settings = dict(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3], rescale_factor=1 / 255)
    fields = dict(size=size, crop_size={"height": 32, "width": 32}, **settings)
    frames = [PIL.fromarray(f.numpy()) for f in _frames(2, *hw, seed=hw[1])]
    expected = transformers.VideoMAEImageProcessorPil(**fields)(frames, return_tensors="pt")["pixel_values"]
    ours = VideoProcessor.from_dict(fields)
    ours.check_model(TimesformerConfig(patch_size=8), "the config")
    for native in (False, True):
        _close_to(
            ours(frames, return_tensors="pt", native=native)["pixel_values"], expected, settings["image_std"]
        )
    uint8 = ours.resize_crops(torch.from_numpy(np.stack([np.asarray(f) for f in frames])), [None])[0]
    black = uint8.sum(-1) == 0
    assert uint8.shape == (2, 32, 32, 3) and black[:, :4].all() and black[:, -4:].all()


def test_a_setting_of_none_in_a_call_is_the_processors_own():
    frames = _frames(2, 40, 52)
    ours = VideoProcessor(shortest_edge=32, crop_size=(32, 32))
    torch.testing.assert_close(ours(frames, size=None, image_mean=None, do_resize=None), ours(frames))


def test_size_as_height_and_width_resizes_exactly_as_transformers():
    """``size: {height, width}`` (an exact resize, the aspect ratio not kept) was refused."""
    settings = dict(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3], rescale_factor=1 / 255)
    frames = [PIL.fromarray(f.numpy()) for f in _frames(2, 36, 64, seed=5)]
    for crop in (False, True):
        fields = dict(
            size={"height": 30, "width": 28}, do_center_crop=crop, crop_size={"height": 24, "width": 16}
        )
        reference = transformers.VideoMAEImageProcessorPil(**fields, **settings)
        ours = VideoProcessor.from_dict({**fields, **settings})
        expected = reference(frames, return_tensors="pt")["pixel_values"]
        # Within one 8-bit level of PIL, which rounds its resized frame (this shrink's rounding alone averages
        # about 0.3 level: the uint8 path, rounded the same way, is compared with PIL's frames below).
        level = torch.tensor([1 / 255 / s for s in settings["image_std"]]).view(1, 1, 3, 1, 1)
        got = ours(frames, return_tensors="pt")["pixel_values"]
        assert got.shape == expected.shape and ((got - expected).abs() <= 1.01 * level).all()
    uncropped = VideoProcessor.from_dict({**fields, "do_center_crop": False})
    resized = uncropped.resize_crops(torch.from_numpy(np.stack([np.asarray(f) for f in frames])), [None])[0]
    pil = np.stack([np.asarray(f.resize((28, 30), PIL.BILINEAR)) for f in frames])
    diff = (resized.int() - torch.from_numpy(pil).int()).abs()
    assert resized.shape == (2, 30, 28, 3) and diff.max() <= 1 and diff.float().mean() < 0.3
    assert VideoProcessor.from_dict(ours.to_dict()).to_dict() == ours.to_dict()
    assert ours.to_dict()["size"] == {"height": 30, "width": 28}
    ours.check_model(TimesformerConfig(patch_size=8), "the config")


@pytest.mark.parametrize("hw, crop", [((36, 64), (16, 16)), ((64, 36), (24, 16)), ((30, 30), (24, 24))])
def test_size_as_max_height_and_width_fits_frames_as_transformers(hw, crop):
    """``size: {max_height, max_width}`` (the largest size within both, the aspect ratio kept) was refused."""
    settings = dict(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3], rescale_factor=1 / 255)
    fields = dict(size={"max_height": 30, "max_width": 40}, crop_size={"height": crop[0], "width": crop[1]})
    frames = [PIL.fromarray(f.numpy()) for f in _frames(2, *hw, seed=hw[0])]
    expected = transformers.VideoMAEImageProcessorPil(**fields, **settings)(frames, return_tensors="pt")
    ours = VideoProcessor.from_dict({**fields, **settings})
    _close_to(
        ours(frames, return_tensors="pt")["pixel_values"], expected["pixel_values"], settings["image_std"]
    )
    assert ours.to_dict()["size"] == fields["size"]
    assert VideoProcessor.from_dict(ours.to_dict()).to_dict() == ours.to_dict()
    ours.check_model(TimesformerConfig(patch_size=8), "the config")
    with pytest.raises(ValueError, match=r"fit in 30x40 .* as 0x40 pixels: an aspect ratio this extreme"):
        ours(torch.zeros(1, 2, 200, 3, dtype=torch.uint8))


def test_shortest_edge_within_longest_edge_refuses_a_side_of_no_pixels():
    """``{shortest_edge, longest_edge}`` on a 2x1000 strip rounded the short side to 0: a bare RuntimeError from
    the resize op."""
    ours = VideoProcessor.from_dict(
        {"size": {"shortest_edge": 30, "longest_edge": 40}, "crop_size": {"height": 16, "width": 16}}
    )
    with pytest.raises(
        ValueError, match=r"2x1000 resized to .* a side of 0 pixels: an aspect ratio this extreme"
    ):
        ours(torch.full((1, 2, 1000, 3), 7, dtype=torch.uint8))
    assert ours(torch.full((1, 20, 30, 3), 7, dtype=torch.uint8), return_tensors=None).shape[-2:] == (16, 16)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_check_model_bounds_the_patches_attention_runs_over(attention_type):
    """A 36 KB model folder (patch_size 1, a 2048 crop; or joint attention over 4096 frames) asked for hours
    per video: attention costs the square of its patches."""
    crop = {"height": 40, "width": 40}  # 25 patches of 8x8 a frame
    ours = VideoProcessor(shortest_edge=40, crop_size=crop)
    config = dict(attention_type=attention_type, patch_size=8, image_size=40)
    ours.check_model(TimesformerConfig(**config, num_frames=2621))  # 65,525 patches a clip
    if attention_type == "joint_space_time":
        with pytest.raises(
            ValueError, match=r"40x40 and num_frames 2622 are 65,550 patches per clip in joint"
        ):
            ours.check_model(TimesformerConfig(**config, num_frames=2622))
    else:
        ours.check_model(TimesformerConfig(**config, num_frames=4096))
    wide = VideoProcessor(shortest_edge=40, crop_size=1032)  # (1 M pixels, under the pixel bound)
    with pytest.raises(ValueError, match=r"129x129 patches of 8x8 per frame; at most 16,384 are supported"):
        wide.check_model(TimesformerConfig(**config))


def test_without_rescale_pixels_are_normalized_on_the_0_255_scale_as_transformers():
    """``do_rescale: false`` (a mean and std given in 0..255 units) was checked only by its range bound."""
    settings = dict(image_mean=[110.0, 120.0, 100.0], image_std=[60.0, 58.0, 62.0], do_rescale=False)
    fields = dict(size={"shortest_edge": 24}, crop_size={"height": 16, "width": 16})
    frames = [PIL.fromarray(f.numpy()) for f in _frames(2, 30, 40, seed=9)]
    expected = transformers.VideoMAEImageProcessorPil(**fields, **settings)(frames, return_tensors="pt")
    got = VideoProcessor.from_dict({**fields, **settings})(frames, return_tensors="pt")["pixel_values"]
    _close_to(got, expected["pixel_values"], [s / 255 for s in settings["image_std"]])  # a level is 1 / std
    assert got.abs().max() > 1.5  # (rescaled, they would all lie within 0.04 of -2)
