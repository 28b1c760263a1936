"""The fused linear kernels (``timesformer.kernels.linear``) against float64 references, in the interpreter.

LayerNorm -> projection (-> activation) and projection + bias + in-place residual add (with the CLS
frame-mean), on strided row views of a residual stream, awkward sizes, every dtype.
"""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    DEVICE,
    KERNEL_DTYPES,
    assert_kernel_accuracy,
    assert_tf32_accuracy,
    poisoned,
    rel_err,
    round_tf32,
    tf32_allowed,
)

from timesformer import torch_ops
from timesformer.activations import ACTIVATIONS
from timesformer.kernels import linear as lin


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ln_linear_params(k: int, n: int, seed: int, bias: bool = True):
    g = _gen(seed)
    ln_w = 1.0 + 0.3 * torch.randn(k, generator=g, dtype=torch.float64)
    ln_b = 0.3 * torch.randn(k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) / k**0.5
    b = 0.3 * torch.randn(n, generator=g, dtype=torch.float64) if bias else None
    return ln_w, ln_b, w, b


def _stream(batch: int, rows: int, k: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    """A float64 residual stream with a per-row offset (LayerNorm must remove it)."""
    g = _gen(seed)
    x = torch.randn(batch, rows, k, generator=g, dtype=torch.float64)
    return x + offset * torch.randn(batch, rows, 1, generator=g, dtype=torch.float64)


def _cast(dtype, *tensors):
    return [None if t is None else t.to(DEVICE, dtype) for t in tensors]


def _exact(x, ln_w, ln_b, w, b, eps, activation="linear"):
    """The float64 reference for kernel inputs (already rounded to the kernel's dtype)."""
    d = [None if t is None else t.double() for t in (x, ln_w, ln_b, w, b)]
    return torch_ops.layer_norm_linear(d[0], d[1], d[2], eps, d[3], d[4], activation)


def _run_ln_linear(x, ln_w, ln_b, w, b, eps, activation):
    """(kernel out, plain torch in x's dtype) for x and parameters already in the kernel's dtype."""
    folded, colsum, shift = lin.prepare_layer_norm_linear(ln_w, ln_b, w, b)
    out = poisoned((*x.shape[:2], w.shape[0]), x.dtype)
    lin.layer_norm_linear_fwd(x, folded, colsum, shift, out, eps=eps, activation=activation)
    plain = torch_ops.layer_norm_linear(x, ln_w, ln_b, eps, w, b, activation)
    return out, plain


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize(
    "batch,rows,k,n",
    [(1, 1, 16, 48), (2, 7, 24, 72), (1, 37, 40, 120), (3, 5, 96, 37), (1, 130, 64, 33), (2, 20, 200, 48)],
)
def test_layer_norm_linear(dtype, batch, rows, k, n):
    seed = batch * 1000 + rows * 10 + k + n
    eps = 1e-5 if rows % 2 else 1e-6
    x64 = _stream(batch, rows, k, seed, offset=2.0)
    params64 = _ln_linear_params(k, n, seed + 1, bias=bool(n % 2))
    x, *params = _cast(dtype, x64, *params64)
    out, plain = _run_ln_linear(x, *params, eps, "linear")
    exact = _exact(x, *params, eps)
    assert_kernel_accuracy(out, exact, plain)


@pytest.mark.parametrize("offset", [0.0, 2.0, 1000.0, "step"])
def test_layer_norm_linear_tf32(offset):
    batch, rows, k, n, eps = 2, 37, 96, 72, 1e-5
    if offset == "step":  # the first K tile (32 wide for fp32) 100 above the rest
        x = _stream(batch, rows, k, 7)
        x[..., :32] += 100.0
        x = x.float().to(DEVICE)
    else:
        x = _stream(batch, rows, k, 7, offset=offset).float().to(DEVICE)
    ln_w, ln_b, w, b = _cast(torch.float32, *_ln_linear_params(k, n, 8))
    folded, colsum, shift = lin.prepare_layer_norm_linear(ln_w, ln_b, w, b)
    out = poisoned((batch, rows, n), torch.float32)
    with tf32_allowed():
        lin.layer_norm_linear_fwd(x, folded, colsum, shift, out, eps=eps)
    # Plain torch with TF32 products: the normalized rows and the weight rounded to TF32.
    h = F.layer_norm(x, (k,), ln_w, ln_b, eps)
    plain = round_tf32(h) @ round_tf32(w).T + b
    exact = _exact(x, ln_w, ln_b, w, b, eps)
    if offset == "step":
        # Most of the spread is the step, which the centered tiles take out before rounding to TF32: the
        # kernel is far more accurate than torch's TF32 here, so the check that TF32 was used does not apply.
        (err, max_err), (plain_err, plain_max) = _errors(out, exact), _errors(plain, exact)
        assert err <= 2 * plain_err and max_err <= 2 * plain_max, (err, plain_err, max_err, plain_max)
    else:
        assert_tf32_accuracy(out, exact, plain)


def test_linear_residual_tf32():
    batch, rows, k, n = 2, 29, 80, 48
    g = _gen(11)
    x = torch.randn(batch, rows, k, generator=g).to(DEVICE)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(DEVICE)
    b = torch.randn(n, generator=g).to(DEVICE)
    res = torch.randn(batch, rows, n, generator=g).to(DEVICE)
    exact = res.double() + x.double() @ w.double().T + b.double()
    plain = res + round_tf32(x) @ round_tf32(w).T + b
    out = res.clone()
    with tf32_allowed():
        lin.linear_residual_(x, w, b, out)
    assert_tf32_accuracy(out, exact, plain)


@pytest.mark.parametrize("activation", sorted(lin.ACTIVATIONS_IN_KERNEL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_linear_activations(activation, dtype):
    x64 = _stream(2, 9, 32, 5, offset=0.5)
    params64 = _ln_linear_params(32, 80, 6)
    x, *params = _cast(dtype, x64, *params64)
    out, plain = _run_ln_linear(x, *params, 1e-5, activation)
    exact = _exact(x, *params, 1e-5, activation)
    assert_kernel_accuracy(out, exact, plain)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_layer_norm_linear_reads_rows_in_place(dtype):
    """The temporal pass's input is x[:, 1:] of the residual stream (skip CLS by addressing) and the
    classifier's is x[:, :1]: strided views, read where they lie."""
    stream64 = _stream(2, 1 + 6 * 3, 48, 11, offset=1.0)
    params64 = _ln_linear_params(48, 3 * 48, 12)
    stream, *params = _cast(dtype, stream64, *params64)
    for view in (stream[:, 1:], stream[:, :1], stream[:, 1::3]):
        out, plain = _run_ln_linear(view, *params, 1e-6, "linear")
        exact = _exact(view, *params, 1e-6)
        assert_kernel_accuracy(out, exact, plain)


def test_layer_norm_without_affine_and_without_layer_norm():
    x64 = _stream(1, 10, 24, 3)
    _, _, w64, b64 = _ln_linear_params(24, 40, 4)
    x, w, b = _cast(torch.float32, x64, w64, b64)
    folded, colsum, shift = lin.prepare_layer_norm_linear(None, None, w, b)
    out = lin.layer_norm_linear(x, folded, colsum, shift, 1e-5)
    assert_kernel_accuracy(
        out, torch_ops.layer_norm_linear(x.double(), None, None, 1e-5, w.double(), b.double())
    )
    # colsum=None: a plain projection with its bias and activation in the epilogue.
    out = lin.layer_norm_linear(x, w, None, b.float(), activation="gelu")
    assert_kernel_accuracy(out, F.gelu(F.linear(x.double(), w.double(), b.double())))


def _errors(out, exact):
    return rel_err(out, exact), float((out.double() - exact).abs().max())


# fp32 rows are centered per tile (CENTER): offsets of 1000x the spread and constant rows keep its accuracy.
# 16-bit rows go in raw, exact, with a margin of ~2^13 (fp16) in the fold's fp32 cancellation: offsets to
# 100x (the kernel's documented limit is ~1000x for fp16). "step": the first K tile far from the rest.
FAR_FROM_ZERO = [(torch.float32, o) for o in (10.0, 100.0, 1000.0, "constant", "step")] + [
    (dtype, o) for dtype in KERNEL_DTYPES if dtype != torch.float32 for o in (10.0, 100.0, "step")
]


@pytest.mark.parametrize("dtype, offset", FAR_FROM_ZERO)
def test_layer_norm_linear_is_accurate_for_rows_far_from_zero(dtype, offset):
    """Rows whose mean is 10-1000x their spread, rows of one value (LayerNorm leaves the bias), and rows whose
    first K tile is far from the rest: at most twice plain torch's error, by norm and max (and fp32's 1e-5
    where torch keeps it). fp32 rows multiplied raw left ``mean * c1`` to cancel in the epilogue: 2-4x torch's
    error at 10-1000x, and 6000x on constant rows; with the tiles' means merged at the rows' offset rather than
    relative to the first tile's, 2-4x at the base model's width (768, 24 tiles of fp32). With the first tile's
    mean as the fixed reference of the accumulator, a first tile 100x apart ("step") cost 3x torch's error
    (its distance entered every later tile's term and the final mean * c1); relative to the running mean,
    1.4x (1.5x by the largest error)."""
    k, n = 768, 24
    if offset == "constant":
        x64 = torch.full((2, 6, k), 3.7, dtype=torch.float64)
        x64[1] = -113.25
    elif offset == "step":
        x64 = _stream(2, 6, k, 23)
        x64[..., :64] += 10.0
        x64[1, :, :64] += 90.0
    else:
        x64 = _stream(2, 6, k, 21) + offset * (
            1 + torch.rand(2, 6, 1, generator=_gen(3), dtype=torch.float64)
        )
    params64 = _ln_linear_params(k, n, 22)
    x, *params = _cast(dtype, x64, *params64)
    out, plain = _run_ln_linear(x, *params, 1e-6, "linear")
    exact = _exact(x, *params, 1e-6)
    assert torch.isfinite(out).all()
    (err, max_err), (plain_err, plain_max) = _errors(out, exact), _errors(plain, exact)
    assert err <= 2 * plain_err and max_err <= 2 * plain_max, (err, plain_err, max_err, plain_max)
    if dtype == torch.float32 and plain_err < 5e-6:
        assert err <= 1e-5


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_a_huge_first_tile_leaves_the_row_finite(dtype):
    """A row whose first K tile has a mean past 1.8e19 (finite in bfloat16 and float32): its squared distance
    from the empty running mean overflowed, and times that merge's zero count made the row NaN."""
    k, n = 24, 8
    x64 = _stream(1, 3, k, 31)
    x64[0, 1, 3] = 1e30 if dtype != torch.float16 else 6e4
    x, *params = _cast(dtype, x64, *_ln_linear_params(k, n, 32))
    out, plain = _run_ln_linear(x, *params, 1e-6, "linear")
    assert torch.isfinite(plain).all()
    assert torch.isfinite(out).all()


# NaN bit patterns: Python's, the one a GPU's arithmetic produces, a small payload, a negative one.
NAN_BITS = [0x7FC00000, 0x7FFFFFFF, 0x7F800001, -1]


@pytest.mark.parametrize("bits", NAN_BITS, ids=lambda bits: f"{bits & 0xFFFFFFFF:#010x}")
def test_tf32_products_keep_every_nan(bits):
    """Rounding an operand to TF32 adds a carry at bit 13: a NaN whose payload has bits 13-22 set (0x7FFFFFFF)
    came out as -0.0 and one with a small payload as inf, so a NaN row of a TF32 product was finite."""
    nan = torch.tensor([bits], dtype=torch.int32).view(torch.float32)
    x64 = _stream(1, 4, 40, 8)
    params64 = _ln_linear_params(40, 16, 9)
    x, ln_w, ln_b, w, b = _cast(torch.float32, x64, *params64)
    x[0, 2, 5] = nan
    folded, colsum, shift = lin.prepare_layer_norm_linear(ln_w, ln_b, w, b)
    res = torch.randn(1, 4, 16, generator=_gen(10)).to(DEVICE)
    with tf32_allowed():
        outs = [
            lin.layer_norm_linear(x, folded, colsum, shift, 1e-5),
            lin.layer_norm_linear(x, w, None, b),
            lin.linear_residual_(x, w, b, res.clone()),
        ]
    for out in outs:
        assert out[0, 2].isnan().all() and not out[0, [0, 1, 3]].isnan().any()


def test_relu_epilogue_keeps_nan():
    """``tl.maximum`` returns the other operand for NaN by default: a NaN row came out of the ReLU as 0."""
    x64 = _stream(1, 3, 32, 4)
    params64 = _ln_linear_params(32, 16, 5)
    x, *params = _cast(torch.float32, x64, *params64)
    x[0, 1, 7] = float("nan")
    folded, colsum, shift = lin.prepare_layer_norm_linear(*params)
    out = lin.layer_norm_linear(x, folded, colsum, shift, 1e-5, activation="relu")
    assert out[0, 1].isnan().all() and not out[0, [0, 2]].isnan().any()
    plain = lin.layer_norm_linear(x, params[2], None, params[3], activation="relu")  # no LayerNorm
    assert plain[0, 1].isnan().all()


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("batch,rows,k,n", [(1, 1, 16, 16), (2, 13, 40, 24), (3, 70, 37, 96)])
def test_linear_residual_in_place(dtype, batch, rows, k, n):
    seed = batch + rows + k + n
    g = _gen(seed)
    stream64 = torch.randn(batch, 1 + rows, n, generator=g, dtype=torch.float64)
    x64 = torch.randn(batch, rows, k, generator=g, dtype=torch.float64)
    w64 = torch.randn(n, k, generator=g, dtype=torch.float64) / k**0.5
    b64 = torch.randn(n, generator=g, dtype=torch.float64)
    stream, x, w = _cast(dtype, stream64, x64, w64)
    before = stream.clone()
    residual = stream[:, 1:]
    lin.linear_residual_(x, w, b64.float().to(DEVICE), residual)
    exact = torch_ops.linear_residual(
        x.double(), w.double(), b64.float().double().to(DEVICE), before[:, 1:].double()
    )
    plain = torch_ops.linear_residual(x, w, b64.to(DEVICE, dtype), before[:, 1:])
    assert_kernel_accuracy(stream[:, 1:], exact, plain)
    assert torch.equal(stream[:, 0], before[:, 0]), "the CLS row was written"


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("frames", [1, 3, 8])
def test_linear_residual_of_the_frame_mean(dtype, frames):
    """The spatial out-projection's CLS row: residual[b, 0] += mean_t(ctx[b, t]) W^T + b."""
    g = _gen(frames)
    batch, k, n = 2, 24, 40
    stream64 = torch.randn(batch, 5, n, generator=g, dtype=torch.float64)
    ctx64 = torch.randn(batch, frames, k, generator=g, dtype=torch.float64)
    w64 = torch.randn(n, k, generator=g, dtype=torch.float64) / k**0.5
    b64 = torch.randn(n, generator=g, dtype=torch.float64)
    stream, ctx, w = _cast(dtype, stream64, ctx64, w64)
    before = stream.clone()
    lin.linear_residual_(ctx, w, b64.float().to(DEVICE), stream[:, :1], mean_rows=True)
    exact = torch_ops.linear_residual(
        ctx.double(), w.double(), b64.float().double().to(DEVICE), before[:, :1].double(), True
    )
    plain = torch_ops.linear_residual(ctx, w, b64.to(DEVICE, dtype), before[:, :1], True)
    assert_kernel_accuracy(stream[:, :1], exact, plain)
    assert torch.equal(stream[:, 1:], before[:, 1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forced_int64_offsets_give_the_same_result(dtype):
    x, w = _cast(dtype, _stream(2, 9, 32, 2), torch.randn(24, 32, dtype=torch.float64, generator=_gen(3)))
    colsum = torch.randn(24, generator=_gen(4)).to(DEVICE)
    bias = torch.randn(24, generator=_gen(5)).to(DEVICE)
    a = lin.layer_norm_linear_fwd(x, w, colsum, bias, poisoned((2, 9, 24), dtype), int64=False)
    b = lin.layer_norm_linear_fwd(x, w, colsum, bias, poisoned((2, 9, 24), dtype), int64=True)
    assert torch.equal(a, b)


def test_ops_pass_opcheck_and_compile():
    x = _stream(2, 5, 16, 8).float().to(DEVICE)
    folded, colsum, shift = lin.prepare_layer_norm_linear(
        *_cast(torch.float32, *_ln_linear_params(16, 24, 9))
    )
    torch.library.opcheck(torch.ops.timesformer.layer_norm_linear, (x, folded, colsum, shift, 1e-5, "gelu"))
    residual = torch.randn(2, 5, 24, device=DEVICE)
    w = torch.randn(24, 16, device=DEVICE)
    torch.library.opcheck(torch.ops.timesformer.linear_residual_, (x, w, shift, residual, False, None))

    def f(x, residual):
        h = lin.layer_norm_linear(x, folded, colsum, shift, 1e-5, "gelu")
        return lin.linear_residual_(h[..., :16], w, shift, residual)

    expected = f(x, residual.clone())
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x, residual.clone())
    assert torch.equal(got, expected)


def test_every_config_activation_has_a_torch_formula_and_kernel_names_are_config_names():
    assert set(lin.ACTIVATIONS_IN_KERNEL) <= set(ACTIVATIONS)


def test_bad_input_is_refused_with_the_numbers():
    x = torch.randn(2, 3, 16, device=DEVICE)
    w = torch.randn(8, 16, device=DEVICE)
    vec = torch.randn(8, device=DEVICE)
    with pytest.raises(ValueError, match="3 dimensions"):
        lin.layer_norm_linear(x[0], w, vec, vec)
    with pytest.raises(ValueError, match="12 features but weight"):
        lin.layer_norm_linear(x[..., :12], w, vec, vec)
    with pytest.raises(ValueError, match="weight must be torch.float32"):
        lin.layer_norm_linear(x, w.double(), vec, vec)
    with pytest.raises(ValueError, match=r"colsum must be a float32 \(8,\)"):
        lin.layer_norm_linear(x, w, vec[:4], vec)
    with pytest.raises(ValueError, match="activation must be one of"):
        lin.layer_norm_linear(x, w, vec, vec, activation="mish")
    with pytest.raises(ValueError, match="contiguous along its last"):
        lin.layer_norm_linear(torch.randn(2, 16, 3, device=DEVICE).transpose(1, 2), w, vec, vec)
    with pytest.raises(ValueError, match=r"residual must be torch.float32 \(2, 3, 8\)"):
        lin.linear_residual_(x, w, vec, torch.randn(2, 4, 8, device=DEVICE))
    with pytest.raises(ValueError, match=r"residual must be torch.float32 \(2, 1, 8\)"):
        lin.linear_residual_(x, w, vec, torch.randn(2, 3, 8, device=DEVICE), mean_rows=True)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        lin.layer_norm_linear(x.double(), w.double(), vec, vec)
    with pytest.raises(ValueError, match=r"mean_rows averages the rows of x, and x \(2, 0, 16\) has none"):
        lin.linear_residual_(x[:, :0], w, vec, torch.randn(2, 1, 8, device=DEVICE), mean_rows=True)
    with pytest.raises(ValueError, match="bias must be contiguous, got stride 2"):
        lin.linear_residual_(x, w, torch.randn(16, device=DEVICE)[::2], torch.randn(2, 3, 8, device=DEVICE))
    # No backward: the sum carried no gradient to x, and a leaf changed under autograd, without an error.
    leaf = torch.randn(2, 3, 8, device=DEVICE, requires_grad=True)
    for args in (
        (x.detach().requires_grad_(), w, vec, torch.randn(2, 3, 8, device=DEVICE)),
        (x, w, vec, leaf),
    ):
        with pytest.raises(
            ValueError, match="linear_residual_: the op has no backward, and an input requires"
        ):
            lin.linear_residual_(*args)
    with torch.no_grad():
        lin.linear_residual_(x, w, vec, leaf)
    # A LayerNorm over no features: its statistics were 0 / 0, and every output NaN. Without one, the bias.
    with pytest.raises(ValueError, match=r"the LayerNorm needs at least one feature, got x \(2, 3, 0\)"):
        lin.layer_norm_linear(x[..., :0], w[:, :0], vec, vec)
    torch.testing.assert_close(lin.layer_norm_linear(x[..., :0], w[:, :0], None, vec), vec.expand(2, 3, 8))


def test_writes_that_would_race_on_a_gpu_are_refused():
    """Programs run concurrently on a GPU (one after another in the interpreter, which hides the race)."""
    x = torch.randn(2, 3, 16, device=DEVICE)
    w = torch.randn(16, 16, device=DEVICE)
    vec = torch.randn(16, device=DEVICE)
    with pytest.raises(ValueError, match="residual overlaps x in memory"):
        lin.linear_residual_(x, w, vec, x)  # a column block would read x already updated by another
    with pytest.raises(ValueError, match="residual has elements that share memory"):
        lin.linear_residual_(x, w, vec, torch.randn(2, 1, 16, device=DEVICE).expand(2, 3, 16))
    with pytest.raises(ValueError, match="out overlaps x in memory"):
        lin.layer_norm_linear_fwd(x, w, vec, vec, x)
    # The epilogue's vectors are read by every program too.
    buffer = torch.randn(8 + 2 * 3 * 16, device=DEVICE)
    bias, out = buffer[:16], buffer[8:].view(2, 3, 16)  # the bias's last 8 values are out's first
    with pytest.raises(ValueError, match="out overlaps bias in memory"):
        lin.layer_norm_linear_fwd(x, w, vec, bias, out)
    with pytest.raises(ValueError, match="residual overlaps bias in memory"):
        lin.linear_residual_(x, w, bias, out)
    weights = torch.randn(16 * 16, device=DEVICE)
    with pytest.raises(ValueError, match="residual overlaps weight in memory"):
        lin.linear_residual_(x, weights.view(16, 16), vec, weights[:96].view(2, 3, 16))
    # A residual that is a view into a larger buffer (the residual stream) is fine when x is elsewhere.
    stream = torch.randn(2, 7, 16, device=DEVICE)
    lin.linear_residual_(stream[:, :3].clone(), w, vec, stream[:, 4:])


# ------------------------------------------------- launch-configuration candidates: TMA, persistent grid

# The TMA came with sm_90; the interpreter (CPU tensors) runs the descriptor path as well.
HAS_TMA = DEVICE.type != "cuda" or torch.cuda.get_device_capability(DEVICE)[0] >= 9

# bench/tune.py's GEMM candidates that change the kernel's code, not only its tiles.
VARIANTS = {
    "tma": {"TMA": True},
    "persistent": {"PERSISTENT": True, "FLATTEN": True},
    "persistent-tma": {"TMA": True, "PERSISTENT": True, "FLATTEN": True},
}


@pytest.fixture(params=list(VARIANTS))
def variant(request, monkeypatch) -> SimpleNamespace:
    """Launches with a candidate's configuration; records per launch whether A and W went through
    descriptors (``used``) and the grid's programs against the output tiles (``grids``)."""
    overrides = VARIANTS[request.param]
    default, descriptors, grid = lin._launch_config, lin._descriptors, lin._grid
    rec = SimpleNamespace(
        tma=overrides.get("TMA", False), persistent=overrides.get("PERSISTENT", False), used=[], grids=[]
    )

    def spy_descriptors(*args):
        x_desc, w_desc = descriptors(*args)
        rec.used.append((x_desc is not None, w_desc is not None))
        return x_desc, w_desc

    def spy_grid(m, n, cfg, x):
        programs = grid(m, n, cfg, x)
        rec.grids.append((programs[0], grid(m, n, {**cfg, "PERSISTENT": False}, x)[0]))
        return programs

    monkeypatch.setattr(lin, "_launch_config", lambda *args: {**default(*args), **overrides})
    # A few programs: each walks several tiles, on a GPU too (one per SM would be more than the tiles).
    monkeypatch.setattr(lin, "_PERSISTENT_PROGRAMS", 3)
    monkeypatch.setattr(lin, "_descriptors", spy_descriptors)
    monkeypatch.setattr(lin, "_grid", spy_grid)
    return rec


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize(
    "batch,rows,k,n", [(1, 1, 16, 48), (2, 37, 40, 120), (3, 5, 96, 37), (1, 130, 64, 33), (1, 300, 48, 300)]
)
def test_layer_norm_linear_candidates(variant, dtype, batch, rows, k, n):
    """Out-of-bounds rows and columns of a descriptor tile are zeros, as the pointer loads' masks give; a
    persistent program writes every tile it walks (outputs poisoned)."""
    seed = batch * 1000 + rows * 10 + k + n
    x, *params = _cast(dtype, _stream(batch, rows, k, seed, offset=2.0), *_ln_linear_params(k, n, seed + 1))
    out, plain = _run_ln_linear(x, *params, 1e-5, "gelu")
    assert_kernel_accuracy(out, _exact(x, *params, 1e-5, "gelu"), plain)
    # fp32 without TF32 keeps its pointer loads (FMA products from registers).
    assert variant.used == [(HAS_TMA and variant.tma and dtype != torch.float32,) * 2]
    programs, tiles = variant.grids[0]
    assert programs == (min(tiles, 3) if variant.persistent else tiles)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_residual_candidates(variant, dtype):
    """A strided residual stream (``x[:, 1:]``) and the CLS row from the frame-mean (``mean_rows``, pointer
    loads of A) whichever way the operands come."""
    g = _gen(17)
    batch, rows, k, n = 2, 21, 48, 40
    stream64 = torch.randn(batch, 1 + rows, n, generator=g, dtype=torch.float64)
    x64 = torch.randn(batch, rows, k, generator=g, dtype=torch.float64)
    w64 = torch.randn(n, k, generator=g, dtype=torch.float64) / k**0.5
    bias = torch.randn(n, generator=g).to(DEVICE)
    stream, x, w = _cast(dtype, stream64, x64, w64)
    before = stream.clone()
    lin.linear_residual_(x, w, bias, stream[:, 1:])
    lin.linear_residual_(x, w, bias, stream[:, :1], mean_rows=True)
    exact = torch_ops.linear_residual(x.double(), w.double(), bias.double(), before[:, 1:].double())
    plain = torch_ops.linear_residual(x, w, bias.to(dtype), before[:, 1:])
    assert_kernel_accuracy(stream[:, 1:], exact, plain)
    exact = torch_ops.linear_residual(x.double(), w.double(), bias.double(), before[:, :1].double(), True)
    plain = torch_ops.linear_residual(x, w, bias.to(dtype), before[:, :1], True)
    assert_kernel_accuracy(stream[:, :1], exact, plain)
    tma = HAS_TMA and variant.tma and dtype != torch.float32
    assert variant.used == [(tma, tma), (False, tma)]
    (programs, tiles), (cls_programs, cls_tiles) = variant.grids
    assert programs == (min(tiles, 3) if variant.persistent else tiles)
    assert cls_programs == cls_tiles, "the CLS rows' product is never persistent"


def test_descriptors_only_where_the_tma_can_read_the_operand():
    """A by descriptor needs its rows at one stride, not averaged, and 16-byte aligned rows; W likewise."""
    stream = torch.randn(2, 9, 64, dtype=torch.bfloat16)
    w = torch.randn(24, 64, dtype=torch.bfloat16)

    def used(x, out_rows, mean_rows=0, weight=w, tma=True):
        cfg = {**lin._launch_config(x.shape[0] * out_rows, x.dtype), "TMA": tma}
        descriptors = lin._descriptors(x, weight, out_rows, mean_rows, lin.dot_precision(x.dtype), cfg)
        return tuple(d is not None for d in descriptors)

    assert used(stream, 9) == (True, True)
    assert used(stream, 9, tma=False) == (False, False)
    assert used(stream[:, 1:], 8) == (False, True), "two clips' x[:, 1:] is not one row stride"
    assert used(stream[:1, 1:], 8) == (True, True), "one clip's x[:, 1:] is"
    assert used(stream[:, :1], 1) == (True, True), "CLS rows: one row per clip, at the clip stride"
    assert used(stream, 1, mean_rows=9) == (False, True), "averaged rows"
    odd = torch.randn(2, 9, 37, dtype=torch.bfloat16)
    assert used(odd, 9, weight=torch.randn(24, 37, dtype=torch.bfloat16)) == (False, False), "74-byte rows"
    assert used(stream.flatten()[1:65].view(1, 1, 64), 1) == (False, True), "unaligned base"
    assert used(stream[:1, :1].expand(2, 1, 64), 1) == (False, True), "one row for every clip (stride 0)"
    assert used(stream[:1, :1].expand(1, 5, 64), 5) == (False, True), "one row repeated (stride 0)"
    assert used(stream.float(), 9, weight=w.float()) == (False, False), "fp32 products in full precision"
    with tf32_allowed():
        assert used(stream.float(), 9, weight=w.float()) == (True, True), "fp32 products in TF32"
    empty = torch.empty(2, 9, 0, dtype=torch.bfloat16)
    assert used(empty, 9, weight=torch.empty(24, 0, dtype=torch.bfloat16)) == (False, False), "no features"
    # An sm_80 GPU has no TMA: pointer loads whatever the configuration says.
    ampere = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    with mock.patch.object(torch.cuda, "get_device_capability", return_value=(8, 0)):
        assert lin._descriptors(ampere, w, 9, 0, "tf32", {"TMA": True}) == (None, None)
