"""Real-GPU checks (marker ``gpu``; skipped where no CUDA device is present).

The interpreter tests run the same kernels on small shapes; these add the model's real shapes, compiled
code paths (tensor-core products, ``tl.dot`` precision modes, rounding) and capture into CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    KERNEL_DTYPES,
    assert_close,
    assert_kernel_accuracy,
    plain_torch_attention,
    poisoned,
    random_clip,
    randomize_,
    rel_err,
    stable_seed,
)

import timesformer
from timesformer import torch_ops

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


def _qkv(batch, rows, hidden, seed):
    gen = torch.Generator(device=CUDA).manual_seed(seed)
    return torch.randn(batch, rows, 3 * hidden, generator=gen, device=CUDA, dtype=torch.float64)


# (batch, patches, frames, heads, head_dim): base 8x224, TimeSformer-L (T = 96), TimeSformer-HR (N = 784).
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 196, 8, 12, 64), (1, 196, 96, 16, 64), (1, 784, 16, 12, 64)], ids=str)
def test_temporal_and_spatial_at_model_shapes(shape, dtype):
    from timesformer.kernels import attention as ka
    from timesformer.kernels import temporal_attention as kt

    batch, n, t, h, dh = shape
    d = h * dh
    qkv = _qkv(batch, 1 + n * t, d, seed=stable_seed(shape)).to(dtype)
    exact = torch_ops.temporal_attention(qkv.double()[:, 1:], t, h)
    with plain_torch_attention():
        plain = torch_ops.temporal_attention(qkv[:, 1:], t, h)
    out = kt.temporal_attention_fwd(*qkv[:, 1:].split(d, -1), poisoned(plain.shape, dtype, CUDA), t, h)
    assert_kernel_accuracy(out, exact, plain)

    exact_p, exact_c = torch_ops.spatial_attention(qkv.double(), t, h)
    with plain_torch_attention():
        plain_p, plain_c = torch_ops.spatial_attention(qkv, t, h)
    p, c = ka.spatial_attention_fwd(
        *qkv.split(d, -1), poisoned(plain_p.shape, dtype, CUDA), poisoned(plain_c.shape, dtype, CUDA), t, h
    )
    assert_kernel_accuracy(p, exact_p, plain_p)
    assert_kernel_accuracy(c, exact_c, plain_c)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("int64", [None, True])
def test_joint_at_base_length(dtype, int64):
    from timesformer.kernels import attention as ka

    d, h = 768, 12
    qkv = _qkv(2, 1 + 196 * 8, d, seed=3).to(dtype)
    exact = torch_ops.attention(qkv.double(), h)
    with plain_torch_attention():
        plain = torch_ops.attention(qkv, h)
    out = ka.attention_fwd(*qkv.split(d, -1), poisoned(plain.shape, dtype, CUDA), h, int64=int64)
    assert_kernel_accuracy(out, exact, plain)


def _base_model(attention_type, layers=2):
    cfg = timesformer.TimesformerConfig(
        num_hidden_layers=layers, attention_type=attention_type, num_labels=400
    )
    return randomize_(timesformer.TimesformerForVideoClassification(cfg, backend="eager"), 0).eval().to(CUDA)


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
def test_base_model_triton_against_eager(attention_type):
    model = _base_model(attention_type)
    x = torch.randn(2, 8, 3, 224, 224, device=CUDA)
    with torch.no_grad():
        exact = model.double()(x.double()).logits
        model.float()
        assert_close(model.set_backend("triton")(x).logits, exact, rel=1e-5, abs_=1e-4)
        model.to(torch.bfloat16)
        eager_err = rel_err(model.set_backend("eager")(x.bfloat16()).logits, exact)
        triton_err = rel_err(model.set_backend("triton")(x.bfloat16()).logits, exact)
    assert triton_err <= 2 * eager_err, (triton_err, eager_err)
    assert model.set_backend("auto").backend == "triton"


def test_cuda_graph_capture_of_the_triton_model():
    model = _base_model("divided_space_time").to(torch.bfloat16).set_backend("triton")
    static_x = torch.randn(2, 8, 3, 224, 224, device=CUDA, dtype=torch.bfloat16)
    with torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compiles the kernels and fills the folded-weight cache
                model(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_logits = model(static_x).logits
        new_x = random_clip(dict(num_frames=8, num_channels=3, image_size=224), seed=7).to(
            CUDA, torch.bfloat16
        )
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        expected = model(new_x).logits
    assert torch.equal(static_logits, expected)


def test_ops_compile_with_inductor():
    from timesformer.kernels import attention as joint
    from timesformer.kernels import temporal_attention as temporal

    def attention(qkv):
        q, k, v = qkv.split(768, dim=-1)  # strided views of the packed projection, as the backend passes
        patch, cls = joint.spatial_attention(q, k, v, 8, 12)
        return (
            patch + temporal.temporal_attention(q[:, 1:], k[:, 1:], v[:, 1:], 8, 12),
            cls.mean(1),
            joint.attention(q, k, v, 12),
        )

    qkv = torch.randn(2, 1 + 196 * 8, 3 * 768, device=CUDA, dtype=torch.bfloat16)
    compiled = torch.compile(attention, fullgraph=True)
    for a, b in zip(compiled(qkv), attention(qkv), strict=True):
        assert torch.equal(a, b)
