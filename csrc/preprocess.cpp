// timesformer_csrc::preprocess_frames: the schema, the CPU and Meta kernels, and the module
// initializer that lets Python load this library as timesformer._C.
//
//   preprocess_frames(frames, resize_h, resize_w, top, left, crop_h, crop_w, mean, std, rescale, dtype)
//     frames: uint8 [T, H, W, 3] (any strides; copied only when the channel stride is not 1)
//     returns: dtype [T, 3, crop_h, crop_w], contiguous, with
//       out[t, c, y, x] = (resized[t, top + y, left + x, c] * rescale - mean[c]) / std[c]
//     where `resized` is the antialiased bilinear resize of the frames to resize_h x resize_w, as
//     F.interpolate(mode="bilinear", antialias=True, align_corners=False) computes it in float32
//     (never rounded to uint8). dtype: float32, bfloat16 or float16, rounded once at the end.
//
// Only the crop is computed: the separable filter runs horizontally over the input rows the crop's
// vertical windows need and the crop's columns only, then vertically, fused with the normalization
// and the HWC -> CHW change.
#include <Python.h>  // first, as Python asks; only for PyInit__C

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <array>
#include <cstring>

#include "preprocess.h"

namespace timesformer {
namespace {

// The horizontal pass accumulates the 3 channels of a pixel in one 4-lane vector (the 4th lane
// carries the next pixel's red and is dropped): a tap is then one multiply-add for all channels.
#if defined(__GNUC__) || defined(__clang__)
#define TIMESFORMER_VEC4 1
typedef float v4f __attribute__((vector_size(16)));

inline v4f load4(const float* p) {
  v4f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
#endif

struct Params {
  const uint8_t* src;
  int64_t stride_t, stride_h, stride_w;  // in bytes; the channel stride is 1
  int64_t crop_h, crop_w;
  AxisWeights wy, wx;
  std::array<float, 3> mean, std;
  float rescale;
};

// Input row `r` of frame `t` -> the crop's columns, channel planes [3][crop_w] at `dst`.
// `span` is scratch for the row's touched pixels as float, (wx.hi - wx.lo) * 3 + 1 floats: the
// conversion is done once per row rather than once per tap.
template <int K>
void horizontal(const Params& p, int64_t t, int64_t r, float* span, float* dst) {
  const AxisWeights& wx = p.wx;
  const int64_t taps = K > 0 ? K : wx.taps;
  const uint8_t* row = p.src + t * p.stride_t + r * p.stride_h;
  const int64_t n = wx.hi - wx.lo;
  if (p.stride_w == 3) {
    const uint8_t* in = row + wx.lo * 3;
    for (int64_t i = 0; i < n * 3; ++i) span[i] = in[i];
  } else {
    for (int64_t x = 0; x < n; ++x) {
      const uint8_t* in = row + (wx.lo + x) * p.stride_w;
      span[3 * x] = in[0];
      span[3 * x + 1] = in[1];
      span[3 * x + 2] = in[2];
    }
  }
  span[n * 3] = 0.0f;  // read by the 4th lane of the last pixel
  const int64_t cw = p.crop_w;
  float* d0 = dst;
  float* d1 = dst + cw;
  float* d2 = dst + 2 * cw;
  const float* w = wx.weight.data();
  const int64_t* start = wx.start.data();
  for (int64_t o = 0; o < cw; ++o, w += taps) {
    const float* s = span + (start[o] - wx.lo) * 3;
#ifdef TIMESFORMER_VEC4
    // Same order as ATen: first tap times its weight, then += the others in turn.
    v4f acc = load4(s) * w[0];
    for (int64_t j = 1; j < taps; ++j) acc += load4(s + 3 * j) * w[j];
    d0[o] = acc[0];
    d1[o] = acc[1];
    d2[o] = acc[2];
#else
    float a0 = s[0] * w[0], a1 = s[1] * w[0], a2 = s[2] * w[0];
    for (int64_t j = 1; j < taps; ++j) {
      a0 += s[3 * j] * w[j];
      a1 += s[3 * j + 1] * w[j];
      a2 += s[3 * j + 2] * w[j];
    }
    d0[o] = a0;
    d1[o] = a1;
    d2[o] = a2;
#endif
  }
}

// Vertical pass for one output row and one channel, fused with rescale/normalize and the cast:
// rows[j] are the horizontally resampled input rows of the window (that channel's plane).
template <int K, typename out_t>
void vertical(const float* const* rows, const float* w, int64_t taps_rt, int64_t n, float rescale, float mean,
              float std, out_t* out) {
  const int64_t taps = K > 0 ? K : taps_rt;
  for (int64_t i = 0; i < n; ++i) {
    float s = rows[0][i] * w[0];
    for (int64_t j = 1; j < taps; ++j) s += rows[j][i] * w[j];
    // As the reference: (x * rescale - mean) / std, each op rounded to float.
    out[i] = static_cast<out_t>((s * rescale - mean) / std);
  }
}

using HorizontalFn = void (*)(const Params&, int64_t, int64_t, float*, float*);
template <typename out_t>
using VerticalFn = void (*)(const float* const*, const float*, int64_t, int64_t, float, float, float, out_t*);

// Fixed tap counts for the common cases (unrolled, vectorized inner loops); any other count runs the
// same code with a runtime trip count. Picked per pass, not per pair, to keep the build short.
HorizontalFn pick_horizontal(int64_t taps) {
  switch (taps) {
    case 1: return horizontal<1>;
    case 2: return horizontal<2>;
    case 3: return horizontal<3>;
    case 4: return horizontal<4>;
    case 5: return horizontal<5>;
    default: return horizontal<0>;
  }
}

template <typename out_t>
VerticalFn<out_t> pick_vertical(int64_t taps) {
  switch (taps) {
    case 1: return vertical<1, out_t>;
    case 2: return vertical<2, out_t>;
    case 3: return vertical<3, out_t>;
    case 4: return vertical<4, out_t>;
    case 5: return vertical<5, out_t>;
    default: return vertical<0, out_t>;
  }
}

template <typename out_t>
void run(const Params& p, int64_t frames, out_t* out) {
  const HorizontalFn horizontal_row = pick_horizontal(p.wx.taps);
  const VerticalFn<out_t> vertical_row = pick_vertical<out_t>(p.wy.taps);
  const int64_t ch = p.crop_h, cw = p.crop_w;
  const int64_t ring = p.wy.taps;  // slots: the rows of one vertical window
  const int64_t plane = ch * cw;
  // A task is one output row; a thread walks its rows in order, so consecutive rows share their
  // horizontally resampled input rows through the ring instead of recomputing them.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cw * (p.wx.taps + p.wy.taps)));
  at::parallel_for(0, frames * ch, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> span((p.wx.hi - p.wx.lo) * 3 + 4);
    std::vector<float> slots(ring * 3 * cw);
    std::vector<const float*> rows(ring);
    int64_t frame = -1, next = 0;  // `next`: the first input row not yet in the ring
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / ch, y = task % ch;
      const int64_t y0 = p.wy.start[y];
      if (t != frame) {
        frame = t;
        next = y0;
      }
      // Windows only move down (start is nondecreasing), so the row leaving slot r % ring is
      // above this window.
      for (int64_t r = std::max(next, y0); r < y0 + ring; ++r) {
        horizontal_row(p, t, r, span.data(), slots.data() + (r % ring) * 3 * cw);
      }
      next = std::max(next, y0 + ring);
      const float* w = p.wy.weight.data() + y * ring;
      for (int64_t c = 0; c < 3; ++c) {
        for (int64_t j = 0; j < ring; ++j) rows[j] = slots.data() + ((y0 + j) % ring) * 3 * cw + c * cw;
        out_t* dst = out + t * 3 * plane + c * plane + y * cw;
        vertical_row(rows.data(), w, ring, cw, p.rescale, p.mean[c], p.std[c], dst);
      }
    }
  });
}

at::Tensor preprocess_frames_cpu(const at::Tensor& frames_in, int64_t resize_h, int64_t resize_w, int64_t top,
                                 int64_t left, int64_t crop_h, int64_t crop_w, c10::ArrayRef<double> mean,
                                 c10::ArrayRef<double> std, double rescale, at::ScalarType dtype) {
  check_preprocess_args(frames_in, resize_h, resize_w, top, left, crop_h, crop_w, mean, std, dtype);
  // Frame, row and pixel strides are free; the 3 channels must be adjacent for the vector loads.
  const at::Tensor frames = frames_in.stride(3) == 1 ? frames_in : frames_in.contiguous();
  const int64_t T = frames.size(0), H = frames.size(1), W = frames.size(2);

  Params p;
  p.src = frames.const_data_ptr<uint8_t>();
  p.stride_t = frames.stride(0);
  p.stride_h = frames.stride(1);
  p.stride_w = frames.stride(2);
  p.crop_h = crop_h;
  p.crop_w = crop_w;
  p.wy = axis_weights(H, resize_h, top, crop_h);
  p.wx = axis_weights(W, resize_w, left, crop_w);
  for (int c = 0; c < 3; ++c) {
    p.mean[c] = static_cast<float>(mean[c]);
    p.std[c] = static_cast<float>(std[c]);
  }
  p.rescale = static_cast<float>(rescale);

  at::Tensor out = at::empty({T, 3, crop_h, crop_w}, frames.options().dtype(dtype));
  switch (dtype) {
    case at::kFloat: run(p, T, out.mutable_data_ptr<float>()); break;
    case at::kBFloat16: run(p, T, out.mutable_data_ptr<c10::BFloat16>()); break;
    default: run(p, T, out.mutable_data_ptr<c10::Half>()); break;
  }
  return out;
}

// Shape and dtype only: what FakeTensor / torch.compile trace through.
at::Tensor preprocess_frames_meta(const at::Tensor& frames, int64_t resize_h, int64_t resize_w, int64_t top,
                                  int64_t left, int64_t crop_h, int64_t crop_w, c10::ArrayRef<double> mean,
                                  c10::ArrayRef<double> std, double rescale, at::ScalarType dtype) {
  (void)rescale;
  check_preprocess_args(frames, resize_h, resize_w, top, left, crop_h, crop_w, mean, std, dtype);
  const std::vector<c10::SymInt> shape{frames.sym_size(0), c10::SymInt(3), c10::SymInt(crop_h),
                                      c10::SymInt(crop_w)};
  return at::empty_symint(shape, frames.options().dtype(dtype));
}

}  // namespace
}  // namespace timesformer

TORCH_LIBRARY(timesformer_csrc, m) {
  m.def(
      "preprocess_frames(Tensor frames, int resize_h, int resize_w, int top, int left, int crop_h, "
      "int crop_w, float[] mean, float[] std, float rescale, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(timesformer_csrc, CPU, m) {
  m.impl("preprocess_frames", &timesformer::preprocess_frames_cpu);
}

TORCH_LIBRARY_IMPL(timesformer_csrc, Meta, m) {
  m.impl("preprocess_frames", &timesformer::preprocess_frames_meta);
}

// Importing timesformer._C only has to load this library (the registrations above are static
// initializers); the module itself is empty, so no pybind11.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr,
                               nullptr};
  return PyModule_Create(&module);
}
