"""The native preprocessing op (``csrc/``, ``torch.ops.timesformer_csrc.preprocess_frames``) against the
pure-torch reference ``preprocess_frames_torch``: sizes (down, up, identity, odd, 1-pixel, one axis only,
many taps), crop offsets, strided inputs, output dtypes, thread counts, errors, the Meta/fake kernel,
torch.compile, the public API's choice between the two and its fallback, and the CUDA kernel (GPU only).

The extension is required here: ``make test`` (and CI) builds it, so a missing build fails loudly.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import stable_seed
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import timesformer.preprocess as pp
from timesformer.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VideoProcessor,
    center_crop_box,
    native_available,
    preprocess_frames,
    preprocess_frames_torch,
    resize_output_size,
)

# float32: the op mirrors ATen's weights and summation order exactly; what remains is whether the
# compiler fused multiply-adds (ATen's AVX2 kernels do), a few float32 ulps of 0..255 values.
ATOL = 1e-5

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def op():
    assert native_available(), (
        "the native extension timesformer._C is not built or does not register "
        "torch.ops.timesformer_csrc.preprocess_frames; build it with `make install` "
        "(or pip install --no-build-isolation -e .)"
    )
    return torch.ops.timesformer_csrc.preprocess_frames


def random_frames(shape, seed) -> torch.Tensor:
    """uint8 frames, values 1..255 (never 0: a pixel read as zero by mistake would go unnoticed)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, shape, dtype=torch.uint8, generator=gen)


def reference(frames, size, top, left, crop, mean=MEAN, std=STD, rescale=1 / 255, dtype=torch.float32):
    """The torch path for any crop box: resize the whole frame, normalize, then slice."""
    full = preprocess_frames_torch(frames, size, size, mean, std, rescale, dtype)
    return full[:, :, top : top + crop[0], left : left + crop[1]].contiguous()


def run_op(op, frames, size, top, left, crop, mean=MEAN, std=STD, rescale=1 / 255, dtype=torch.float32):
    return op(frames, size[0], size[1], top, left, crop[0], crop[1], list(mean), list(std), rescale, dtype)


def assert_float_match(out, ref, crop):
    assert out.dtype == torch.float32
    assert out.shape == (ref.shape[0], 3, *crop) and out.is_contiguous()
    assert torch.isfinite(out).all()
    diff = float((out - ref).abs().max())
    assert diff <= ATOL, f"max abs difference {diff:.3g} > {ATOL}"


def assert_one_rounding_apart(out, ref):
    """Both are roundings of float32 results at most ATOL apart: elementwise at most ATOL plus one unit in
    the last place of the dtype (the ATOL matters only near zero, where that unit is tiny), and nearly all
    exactly equal."""
    assert out.dtype == ref.dtype and out.shape == ref.shape and out.is_contiguous()
    a, b = out.float(), ref.float()
    mant = {torch.bfloat16: 7, torch.float16: 10}[out.dtype]
    tiny = {torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}[out.dtype]  # the smallest subnormal
    _, exp = torch.frexp(torch.maximum(a.abs(), b.abs()))
    ulp = torch.ldexp(torch.ones_like(a), exp - 1 - mant).clamp_min(tiny)
    excess = ((a - b).abs() - ulp - ATOL).max()
    assert excess <= 0, (
        f"{out.dtype}: an element differs by more than one rounding ({float(excess):.3g} over)"
    )
    equal = float((a == b).float().mean())
    assert equal >= 0.99, f"{out.dtype}: only {equal:.2%} of the elements are identical"


# (frames shape (T, H, W, 3), resize (h, w), crop (h, w)); the crop is centered unless a test says.
SHAPES = {
    "downscale-landscape": ((2, 360, 640, 3), (224, 398), (224, 224)),
    "downscale-portrait": ((2, 640, 360, 3), (398, 224), (224, 224)),
    "downscale-many-taps": ((1, 1080, 1920, 3), (224, 398), (224, 224)),  # 5 and 11 taps: generic loops
    "downscale-extreme": ((2, 700, 90, 3), (3, 40), (3, 37)),  # hundreds of vertical taps
    "upscale": ((2, 37, 53, 3), (224, 320), (224, 224)),
    "identity": ((2, 64, 48, 3), (64, 48), (56, 40)),
    "odd-primes": ((3, 37, 53, 3), (29, 41), (23, 31)),
    "one-frame": ((1, 97, 131, 3), (50, 67), (45, 60)),
    "width-only": ((2, 48, 80, 3), (48, 40), (40, 32)),
    "height-only": ((2, 80, 48, 3), (33, 48), (31, 47)),
    "up-and-down": ((2, 50, 300, 3), (100, 150), (90, 140)),
    "one-pixel": ((2, 1, 1, 3), (5, 7), (3, 4)),
    "one-row": ((2, 1, 9, 3), (4, 3), (4, 3)),
    "one-column": ((2, 9, 1, 3), (3, 4), (2, 2)),
    "to-one-pixel": ((2, 5, 7, 3), (1, 1), (1, 1)),
    "shortest-edge": ((2, 240, 320, 3), resize_output_size(240, 320, 224), (224, 224)),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_matches_torch(op, name):
    shape, size, crop = SHAPES[name]
    frames = random_frames(shape, stable_seed(name))
    top, left = center_crop_box(*size, *crop)
    out = run_op(op, frames, size, top, left, crop)
    assert_float_match(out, preprocess_frames_torch(frames, size, crop, MEAN, STD), crop)


@pytest.mark.parametrize(
    "name,top,left",
    [
        ("downscale-landscape", 0, 0),
        ("downscale-landscape", 0, 174),
        ("up-and-down", 10, 9),
        ("odd-primes", 6, 1),
    ],
)
def test_crop_anywhere(op, name, top, left):
    shape, size, crop = SHAPES[name]
    frames = random_frames(shape, stable_seed(name, top, left))
    out = run_op(op, frames, size, top, left, crop)
    assert_float_match(out, reference(frames, size, top, left, crop), crop)


def test_normalization_arguments(op):
    frames = random_frames((2, 45, 61, 3), 5)
    mean, std, rescale = (0.1, -0.2, 0.3), (0.5, 2.0, -0.25), 1 / 127.5
    out = run_op(op, frames, (30, 40), 2, 3, (25, 33), mean, std, rescale)
    ref = reference(frames, (30, 40), 2, 3, (25, 33), mean, std, rescale)
    assert_float_match(out, ref, (25, 33))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["downscale-landscape", "upscale", "identity", "odd-primes"])
def test_half_dtypes(op, name, dtype):
    shape, size, crop = SHAPES[name]
    frames = random_frames(shape, stable_seed(name, dtype))
    top, left = center_crop_box(*size, *crop)
    out = run_op(op, frames, size, top, left, crop, dtype=dtype)
    assert_one_rounding_apart(out, preprocess_frames_torch(frames, size, crop, MEAN, STD, dtype=dtype))


def _strided_views():
    base = random_frames((5, 70, 90, 4), 11)
    return {
        "every-other-frame": base[::2, :, :, :3],  # frame stride, pixel stride 4 (RGBA -> RGB)
        "sub-window": base[:, 3:-5, 7:-2, 1:],  # row stride wider than the row, offset start
        "frame-stride-0": base[:1, :, :, :3].expand(3, -1, -1, -1),
        "channels-first-storage": random_frames((2, 3, 70, 90), 12).permute(0, 2, 3, 1),  # copied
        "transposed-hw": random_frames((2, 90, 70, 3), 13).transpose(1, 2),
    }


@pytest.mark.parametrize("name", list(_strided_views()))
def test_strided_input(op, name):
    frames = _strided_views()[name]
    assert not frames.is_contiguous()
    h, w = frames.shape[1:3]
    size, crop = (h * 2 // 3, w * 3 // 4), (h * 2 // 3 - 3, w * 3 // 4 - 4)
    top, left = center_crop_box(*size, *crop)
    out = run_op(op, frames, size, top, left, crop)
    assert_float_match(out, preprocess_frames_torch(frames.contiguous(), size, crop, MEAN, STD), crop)
    assert torch.equal(out, run_op(op, frames.contiguous(), size, top, left, crop))


def test_thread_count_does_not_change_results(op):
    # Threads split the output rows; each restarts its ring of resampled input rows at its first row.
    frames = random_frames((3, 121, 203, 3), 21)
    size, crop = (90, 150), (77, 141)
    top, left = center_crop_box(*size, *crop)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3, 7):
            torch.set_num_threads(n)
            results.append(run_op(op, frames, size, top, left, crop))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


def _bad(**kw):
    args = dict(
        frames=random_frames((2, 20, 30, 3), 0),
        size=(16, 24),
        top=0,
        left=0,
        crop=(16, 16),
        mean=MEAN,
        std=STD,
        dtype=torch.float32,
    )
    args.update(kw)
    return args


BAD = {
    "float frames": (
        _bad(frames=torch.ones(2, 20, 30, 3)),
        r"expected uint8 frames of shape \(T, H, W, 3\), got dtype torch.float32",
    ),
    "3-D": (_bad(frames=random_frames((20, 30, 3), 0)), r"got a 3-D tensor of shape \[20, 30, 3\]"),
    "5-D": (_bad(frames=random_frames((1, 2, 20, 30, 3), 0)), r"got a 5-D tensor"),
    "4 channels": (
        _bad(frames=random_frames((2, 20, 30, 4), 0)),
        r"expected 3 channels .* got shape \[2, 20, 30, 4\]",
    ),
    "no frames": (
        _bad(frames=random_frames((0, 20, 30, 3), 0)),
        r"at least one frame .* got shape \[0, 20, 30, 3\]",
    ),
    "crop larger": (
        _bad(crop=(16, 25)),
        r"expected the crop to lie inside the resized 16x24 frame, got a 16x25 crop at \(top, left\) = \(0, 0\)",
    ),
    "crop off the edge": (_bad(top=1), r"16x16 crop at \(top, left\) = \(1, 0\)"),
    "negative offset": (_bad(left=-1), r"crop at \(top, left\) = \(0, -1\)"),
    # top + crop_h overflowed int64 in the check (undefined behaviour): such a crop was accepted.
    "offset past int64": (
        _bad(top=2**63 - 1, crop=(2, 16)),
        r"2x16 crop at \(top, left\) = \(9223372036854775807, 0\)",
    ),
    "empty crop": (_bad(crop=(0, 16)), r"got a 0x16 crop"),
    "zero resize": (_bad(size=(0, 24)), r"expected a positive resize size, got 0x24"),
    "2 means": (_bad(mean=(0.5, 0.5)), r"expected 3 means and 3 stds \(RGB\), got 2 and 3"),
    "4 stds": (_bad(std=(0.5,) * 4), r"got 3 and 4"),
    "zero std": (_bad(std=(0.5, 0.0, 0.5)), r"expected finite stds, nonzero in float32"),
    # 0 as the kernels' float: every output was inf; NaN: every output NaN.
    "std 0 in float32": (_bad(std=(0.5, 1e-50, 0.5)), r"expected finite stds, nonzero in float32"),
    "NaN std": (_bad(std=(0.5, float("nan"), 0.5)), r"expected finite stds, nonzero in float32"),
    "std inf in float32": (_bad(std=(0.5, 1e300, 0.5)), r"expected finite stds, nonzero in float32"),
    "mean inf in float32": (_bad(mean=(0.5, -1e300, 0.5)), r"expected means finite in float32"),
    "float64 output": (
        _bad(dtype=torch.float64),
        r"expected dtype torch.float32, torch.bfloat16 or torch.float16, got torch.float64",
    ),
    "int output": (_bad(dtype=torch.int32), r"got torch.int32"),
}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name", list(BAD))
def test_errors(op, name, device):
    args, message = BAD[name]
    frames = args["frames"].to(device)
    with pytest.raises(RuntimeError, match=message):
        run_op(
            op,
            frames,
            args["size"],
            args["top"],
            args["left"],
            args["crop"],
            args["mean"],
            args["std"],
            dtype=args["dtype"],
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_meta_and_fake(op, dtype):
    on_meta = run_op(
        op,
        torch.empty(4, 360, 640, 3, dtype=torch.uint8, device="meta"),
        (224, 398),
        0,
        87,
        (224, 224),
        dtype=dtype,
    )
    assert on_meta.device.type == "meta" and on_meta.shape == (4, 3, 224, 224) and on_meta.dtype == dtype
    with FakeTensorMode():
        frames = torch.empty(3, 37, 53, 3, dtype=torch.uint8)
        fake = run_op(op, frames, (29, 41), 3, 5, (23, 31), dtype=dtype)
    assert isinstance(fake, FakeTensor)
    assert fake.shape == (3, 3, 23, 31) and fake.dtype == dtype and fake.is_contiguous()


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile(op, dynamic):
    def f(frames):
        return run_op(op, frames, (24, 39), 0, 7, (24, 24)) * 2 + 1

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for t in (2, 3):
        frames = random_frames((t, 36, 64, 3), t)
        assert torch.equal(compiled(frames), f(frames))


def test_public_api_compiles_to_one_graph():
    """The public function under torch.compile: the std check (through a float32 tensor) broke the graph,
    and the CUDA-kernel query could not be traced at all (fullgraph failed)."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()

    def f(frames):
        return preprocess_frames(frames, (36, 48), (32, 32), MEAN, STD) * 2

    frames = random_frames((2, 48, 64, 3), 44)
    torch.testing.assert_close(torch.compile(f, backend=counter, fullgraph=True)(frames), f(frames))
    assert counter.frame_count == 1
    with warnings.catch_warnings():  # stds as a tensor: checked without torch's warnings about copying it
        warnings.simplefilter("error")
        torch.testing.assert_close(
            preprocess_frames(frames, (36, 48), (32, 32), MEAN, torch.tensor(STD)), f(frames) / 2
        )


def test_the_checks_of_the_public_function(op):
    import numpy as np

    frames = random_frames((2, 8, 8, 3), 45)
    with pytest.raises(ValueError, match=r"expected uint8 frames of shape \(T, H, W, 3\), got ndarray"):
        preprocess_frames(frames.numpy(), (8, 8), (8, 8), MEAN, STD)
    for std in ((0.5, 1e-50, 0.5), (0.5, 1e300, 0.5), (0.5, float("nan"), 0.5)):
        with pytest.raises(ValueError, match="std must be finite and nonzero in float32"):
            preprocess_frames(frames, (8, 8), (8, 8), MEAN, std)
    with pytest.raises(ValueError, match="mean must be finite in float32"):
        preprocess_frames(frames, (8, 8), (8, 8), (0.5, 1e300, 0.5), STD)
    processor = VideoProcessor(shortest_edge=8, crop_size=8)
    flipped = np.ascontiguousarray(frames.numpy()[..., ::-1])[..., ::-1]  # a BGR to RGB view
    assert torch.equal(processor.preprocess(flipped), processor.preprocess(frames))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_public_api_native_and_torch_agree(op, dtype):
    frames = random_frames((3, 180, 320, 3), 31)
    size = resize_output_size(180, 320, 112)
    native = preprocess_frames(frames, size, (112, 112), MEAN, STD, dtype=dtype, native=True)
    plain = preprocess_frames(frames, size, (112, 112), MEAN, STD, dtype=dtype, native=False)
    default = preprocess_frames(frames, size, (112, 112), MEAN, STD, dtype=dtype)
    assert torch.equal(default, native)  # built: the default is the native op
    if dtype == torch.float32:
        assert_float_match(native, plain, (112, 112))
    else:
        assert_one_rounding_apart(native, plain)
    processor = VideoProcessor(shortest_edge=112, crop_size=(112, 112))
    batch = processor([frames, frames[:, :, :300]], native=True)
    assert batch.shape == (2, 3, 3, 112, 112)
    assert_float_match(batch[0], processor(frames, native=False)[0], (112, 112))


def test_falls_back_to_torch_without_extension(op, monkeypatch):
    # What an install with TIMESFORMER_NO_EXT=1 (or without a compiler) sees.
    def not_called(*args, **kwargs):
        raise AssertionError("the native op ran although the extension is reported missing")

    monkeypatch.setattr(pp, "native_available", lambda: False)
    monkeypatch.setattr(torch.ops.timesformer_csrc, "preprocess_frames", not_called)
    frames = random_frames((2, 48, 64, 3), 41)
    out = preprocess_frames(frames, (36, 48), (32, 32), MEAN, STD)
    assert torch.equal(out, preprocess_frames_torch(frames, (36, 48), (32, 32), MEAN, STD))
    with pytest.raises(RuntimeError, match="native preprocessing extension is not built"):
        preprocess_frames(frames, (36, 48), (32, 32), MEAN, STD, native=True)


def test_the_default_path_follows_the_frames_device(op, monkeypatch):
    """Frames on a device the extension has no kernel for (CUDA with a CPU-only build, MPS) went to the native
    op, which raised the dispatcher's "Could not run"; they take the torch path, which runs anywhere. On the
    meta device the checks run without data."""
    frames = random_frames((2, 48, 64, 3), 43)
    monkeypatch.setattr(pp, "preprocess_frames_torch", lambda *a, **k: "torch path")
    assert preprocess_frames(frames.to("meta"), (36, 48), (32, 32), MEAN, STD) == "torch path"
    assert preprocess_frames(frames, (36, 48), (32, 32), MEAN, STD).shape == (2, 3, 32, 32)  # native


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 builds: no FMA contraction")
def test_bit_identical_to_aten_without_fma(op):
    # ATen's baseline (non-AVX) kernels do not fuse multiply-adds, nor does the extension (x86-64 baseline
    # flags): same weights and same order must then give the very same bits, not just 1e-5.
    code = textwrap.dedent(
        """
        import torch
        from timesformer.preprocess import preprocess_frames, preprocess_frames_torch, resize_output_size

        gen = torch.Generator().manual_seed(0)
        for h, w, size in [(360, 640, 224), (37, 53, 100), (301, 97, 50), (1, 7, 3)]:
            frames = torch.randint(1, 256, (2, h, w, 3), dtype=torch.uint8, generator=gen)
            rh, rw = resize_output_size(h, w, size)
            args = (frames, (rh, rw), (min(rh, size), min(rw, size)), (0.45,) * 3, (0.225,) * 3)
            native, plain = preprocess_frames(*args, native=True), preprocess_frames_torch(*args)
            assert torch.equal(native, plain), (h, w, size, float((native - plain).abs().max()))
        print("identical")
        """
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "identical" in result.stdout


def test_import_without_extension():
    # A fresh interpreter in which timesformer._C cannot be imported, as after TIMESFORMER_NO_EXT=1.
    code = textwrap.dedent(
        """
        import logging, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "timesformer._C":
                    raise ImportError("blocked timesformer._C")
                return None

        sys.meta_path.insert(0, Block())
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        import torch
        from timesformer.preprocess import native_available, preprocess_frames, preprocess_frames_torch

        frames = torch.randint(1, 256, (2, 30, 40, 3), dtype=torch.uint8)
        out = preprocess_frames(frames, (24, 32), (20, 20), (0.5,) * 3, (0.25,) * 3)
        assert torch.equal(out, preprocess_frames_torch(frames, (24, 32), (20, 20), (0.5,) * 3, (0.25,) * 3))
        assert not native_available()
        assert not hasattr(torch.ops.timesformer_csrc, "preprocess_frames")
        print("fallback ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout
    assert "native preprocessing extension not built" in result.stderr  # said once, by logging


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "name",
    [
        "downscale-landscape",
        "downscale-many-taps",
        "upscale",
        "identity",
        "odd-primes",
        "one-pixel",
        "up-and-down",
    ],
)
def test_cuda_matches_torch(op, name, dtype):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("timesformer_csrc::preprocess_frames", "CUDA"), (
        "the extension was built without its CUDA kernel (a CPU torch, TIMESFORMER_CUDA=0, or no CUDA toolkit)"
    )
    shape, size, crop = SHAPES[name]
    cpu_frames = random_frames(shape, stable_seed(name, "cuda"))
    frames = cpu_frames.cuda()
    top, left = center_crop_box(*size, *crop)
    out = run_op(op, frames, size, top, left, crop, dtype=dtype)
    assert out.device == frames.device
    ref = preprocess_frames_torch(frames, size, crop, MEAN, STD, dtype=dtype)
    ref_cpu = run_op(op, cpu_frames, size, top, left, crop, dtype=dtype)
    if dtype == torch.float32:
        assert_float_match(out.cpu(), ref.cpu(), crop)
        assert_float_match(out.cpu(), ref_cpu, crop)
    else:
        assert_one_rounding_apart(out.cpu(), ref.cpu())
        assert_one_rounding_apart(out.cpu(), ref_cpu)
    strided = cpu_frames.permute(0, 3, 1, 2).contiguous().cuda().permute(0, 2, 3, 1)  # copied by the op
    view = torch.cat([frames, frames], dim=2)[:, :, : shape[2]]
    assert torch.equal(run_op(op, view, size, top, left, crop, dtype=dtype), out)
    assert torch.equal(run_op(op, strided, size, top, left, crop, dtype=dtype), out)


@pytest.mark.parametrize(
    "shape, size, crop, box",
    [
        ((2, 5, 7, 3), (5, 7), (8, 10), None),  # larger on both sides, odd differences: the odd pixel after
        ((2, 37, 53, 3), (20, 28), (24, 16), None),  # taller than the frame, narrower
        ((1, 30, 90, 3), (10, 30), (16, 16), (-3, 14)),  # the right view of three, padded above and below
        ((2, 9, 1, 3), (3, 1), (2, 4), (1, -2)),  # one column, padded on both sides unevenly
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_crop_larger_than_the_frame_is_padded_with_black(op, shape, size, crop, box, dtype):
    """As ``transformers``' video processors (torchvision's ``pad`` with 0, before rescale and normalize): the
    frame sits at ``(crop - size) // 2`` on a side it does not fill. It was an error here."""
    frames = random_frames(shape, stable_seed(*shape, *crop))
    native = preprocess_frames(frames, size, crop, MEAN, STD, dtype=dtype, box=box, native=True)
    plain = preprocess_frames(frames, size, crop, MEAN, STD, dtype=dtype, box=box, native=False)
    # Built by hand: the resized frame (the torch path's own, cropped to itself) pasted on a black canvas.
    (rh, rw), (ch, cw) = size, crop
    top, left = box if box is not None else (-((ch - rh) // 2) if ch > rh else (rh - ch) // 2,
                                             -((cw - rw) // 2) if cw > rw else (rw - cw) // 2)  # fmt: skip
    resized = preprocess_frames_torch(frames, size, size, (0.0,) * 3, (1.0,) * 3, rescale=1.0)
    canvas = torch.zeros(shape[0], 3, rh + 2 * ch, rw + 2 * cw)
    canvas[:, :, ch : ch + rh, cw : cw + rw] = resized
    window = canvas[:, :, ch + top : ch + top + ch, cw + left : cw + left + cw]
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = ((window / 255 - m) / s).to(dtype)
    assert native.shape == plain.shape == (shape[0], 3, *crop)
    if dtype == torch.float32:
        assert_float_match(plain, expected, crop)
        assert_float_match(native, expected, crop)
    else:
        assert_one_rounding_apart(plain, expected)
        assert_one_rounding_apart(native, expected)
    black = (-m / s).to(dtype).expand_as(expected)
    placed = torch.zeros(rh + 2 * ch, rw + 2 * cw, dtype=torch.bool)
    placed[ch : ch + rh, cw : cw + rw] = True
    outside = ~placed[ch + top : ch + top + ch, cw + left : cw + left + cw].expand_as(expected)
    assert outside.any()
    assert torch.equal(native[outside], black[outside]) and torch.equal(plain[outside], black[outside])


def test_a_box_outside_the_frame_is_refused():
    frames = random_frames((1, 10, 30, 3), 2)
    for box in ((-7, 0), (0, -1), (-3, 15), (1, 0)):  # a side that the crop neither fits in nor covers
        with pytest.raises(ValueError, match=r"does not fit in the resized frame 10x30"):
            preprocess_frames(frames, (10, 30), (16, 16), MEAN, STD, box=box)
