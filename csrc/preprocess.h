// Shared by the CPU (preprocess.cpp) and CUDA (preprocess_cuda.cu) kernels of
// timesformer_csrc::preprocess_frames: argument checks and the resize weights. Host code only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace timesformer {

// torch's names for the dtypes a caller may pass (c10::toString says "Float", "Byte", ...).
inline const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kBool: return "torch.bool";
    default: return c10::toString(t);
  }
}

// Checks what every backend (Meta included) relies on. Sizes are read as SymInts so that the Meta
// kernel also works on tensors with symbolic shapes (torch.compile with dynamic shapes).
inline void check_preprocess_args(const at::Tensor& frames, int64_t resize_h, int64_t resize_w, int64_t top,
                                  int64_t left, int64_t crop_h, int64_t crop_w, c10::ArrayRef<double> mean,
                                  c10::ArrayRef<double> std, at::ScalarType dtype) {
  TORCH_CHECK(frames.scalar_type() == at::kByte,
              "preprocess_frames: expected uint8 frames of shape (T, H, W, 3), got dtype ",
              dtype_name(frames.scalar_type()));
  TORCH_CHECK(frames.dim() == 4, "preprocess_frames: expected uint8 frames of shape (T, H, W, 3), got a ",
              frames.dim(), "-D tensor of shape ", frames.sym_sizes());
  TORCH_CHECK(frames.sym_size(3) == 3,
              "preprocess_frames: expected 3 channels (RGB) in the last dimension, (T, H, W, 3), got shape ",
              frames.sym_sizes());
  TORCH_CHECK(frames.sym_size(0) > 0 && frames.sym_size(1) > 0 && frames.sym_size(2) > 0,
              "preprocess_frames: expected at least one frame of at least 1x1 pixels, got shape ",
              frames.sym_sizes());
  TORCH_CHECK(resize_h > 0 && resize_w > 0, "preprocess_frames: expected a positive resize size, got ",
              resize_h, "x", resize_w);
  // Compared without adding: top + crop_h could overflow int64 (undefined behaviour) for a huge top.
  TORCH_CHECK(crop_h > 0 && crop_w > 0 && crop_h <= resize_h && crop_w <= resize_w && top >= 0 && left >= 0 &&
                  top <= resize_h - crop_h && left <= resize_w - crop_w,
              "preprocess_frames: expected the crop to lie inside the resized ", resize_h, "x", resize_w,
              " frame, got a ", crop_h, "x", crop_w, " crop at (top, left) = (", top, ", ", left, ")");
  TORCH_CHECK(mean.size() == 3 && std.size() == 3,
              "preprocess_frames: expected 3 means and 3 stds (RGB), got ", mean.size(), " and ", std.size());
  for (double s : std) {
    // As the kernels use it: a float (1e-50 is 0 there, 1e300 out of its range). Range first: converting an
    // out-of-range double to float is undefined behaviour.
    TORCH_CHECK(std::abs(s) <= std::numeric_limits<float>::max() && static_cast<float>(s) != 0.0f,
                "preprocess_frames: expected finite stds, nonzero in float32, got ", std);
  }
  for (double m : mean) {
    TORCH_CHECK(std::abs(m) <= std::numeric_limits<float>::max(),
                "preprocess_frames: expected means finite in float32, got ", mean);
  }
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "preprocess_frames: expected dtype torch.float32, torch.bfloat16 or torch.float16, got ",
              dtype_name(dtype));
}

// The antialiased bilinear ("triangle") weights of one axis, for the output indices
// [first, first + count) only. Every output gets the same number of taps (`taps`, the most any of
// them needs): a shorter window is zero-padded and shifted left where it would run past the input.
// The extra taps add exact zeros, so the sums stay bit-identical to the unpadded ones while the
// kernels' inner loops get a fixed trip count.
struct AxisWeights {
  int64_t taps = 0;
  std::vector<int64_t> start;  // [count] first input index of each output's window
  std::vector<float> weight;   // [count, taps]
  int64_t lo = 0, hi = 0;      // the input indices [lo, hi) that any window touches
};

// Mirrors ATen's CPU antialias path (UpSampleKernel.cpp: area_pixel_compute_scale,
// _compute_index_ranges_weights, _compute_indices_min_size_weights_aa, HelperInterpLinear::aa_filter)
// for float inputs, term by term, mixed float/double promotions included: the F.interpolate(
// ..., antialias=True) reference then differs from us only by the rounding of the sums (FMA or not).
// As there, an axis whose size does not change is not resampled at all (a single tap of weight 1).
inline AxisWeights axis_weights(int64_t in_size, int64_t out_size, int64_t first, int64_t count) {
  AxisWeights a;
  a.start.resize(count);
  if (in_size == out_size) {
    a.taps = 1;
    a.weight.assign(count, 1.0f);
    for (int64_t i = 0; i < count; ++i) a.start[i] = first + i;
    a.lo = first;
    a.hi = first + count;
    return a;
  }
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const float support = (scale >= 1.0) ? (2 * 0.5) * scale : 2 * 0.5;  // interp_size 2 (bilinear)
  const int64_t max_taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  const float invscale = (scale >= 1.0) ? 1.0 / scale : 1.0;

  std::vector<int64_t> xmin(count), xsize(count);
  std::vector<float> w(count * max_taps, 0.0f);
  for (int64_t o = 0; o < count; ++o) {
    const int64_t i = first + o;
    const float center = scale * (i + 0.5);
    const int64_t lo = std::max(static_cast<int64_t>(center - support + 0.5), static_cast<int64_t>(0));
    int64_t size = std::min(static_cast<int64_t>(center + support + 0.5), in_size) - lo;
    size = std::clamp(size, static_cast<int64_t>(0), max_taps);
    float* wo = w.data() + o * max_taps;
    float total = 0.0f;
    for (int64_t j = 0; j < size; ++j) {
      float x = (j + lo - center + 0.5) * invscale;
      x = x < 0.0f ? -x : x;
      wo[j] = x < 1.0f ? 1.0f - x : 0.0f;
      total += wo[j];
    }
    if (total != 0.0f) {
      for (int64_t j = 0; j < size; ++j) wo[j] /= total;
    }
    xmin[o] = lo;
    xsize[o] = size;
    a.taps = std::max(a.taps, size);
  }
  a.taps = std::max<int64_t>(a.taps, 1);
  a.weight.assign(count * a.taps, 0.0f);
  for (int64_t o = 0; o < count; ++o) {
    // taps <= in_size always (each window lies inside the input), so the shifted start is >= 0.
    const int64_t s = std::min(xmin[o], in_size - a.taps);
    a.start[o] = s;
    for (int64_t j = 0; j < xsize[o]; ++j) {
      a.weight[o * a.taps + (xmin[o] - s) + j] = w[o * max_taps + j];
    }
  }
  a.lo = a.start[0];
  a.hi = a.start[count - 1] + a.taps;
  return a;
}

}  // namespace timesformer
