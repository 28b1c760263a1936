// The CUDA kernel of timesformer_csrc::preprocess_frames (schema and shapes: preprocess.cpp).
// Built only when torch is a CUDA build and the toolkit is found (setup.py, TIMESFORMER_CUDA).
//
// One thread per output pixel (all 3 channels): the separable sum over the pixel's window, rows
// resampled horizontally first and then combined vertically, in the CPU kernel's (and ATen's) order.
// The windows are small (2 to 5 taps per axis at usual video sizes), so recomputing the horizontal
// sums per output row costs less than staging them, and the weights come precomputed from the host
// (the same axis_weights as the CPU kernel), so both devices use identical weights.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstring>

#include "preprocess.h"

namespace timesformer {
namespace {

struct Norm {
  float rescale;
  float mean[3];
  float std[3];
};

template <typename out_t>
__global__ void preprocess_frames_kernel(const uint8_t* __restrict__ src, int64_t stride_t, int64_t stride_h,
                                         int64_t stride_w, const int64_t* __restrict__ ystart,
                                         const float* __restrict__ wy, int ky,
                                         const int64_t* __restrict__ xstart, const float* __restrict__ wx,
                                         int kx, int64_t frames, int64_t crop_h, int64_t crop_w, Norm norm,
                                         out_t* __restrict__ out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t plane = crop_h * crop_w;
  if (idx >= frames * plane) return;
  const int64_t t = idx / plane;
  const int64_t y = (idx / crop_w) % crop_h;
  const int64_t x = idx % crop_w;

  const uint8_t* first = src + t * stride_t + ystart[y] * stride_h + xstart[x] * stride_w;
  const float* wyr = wy + y * ky;
  const float* wxr = wx + x * kx;
  float acc[3];
  for (int i = 0; i < ky; ++i) {
    const uint8_t* px = first + i * stride_h;
    float h[3];
    for (int c = 0; c < 3; ++c) h[c] = static_cast<float>(px[c]) * wxr[0];
    for (int j = 1; j < kx; ++j) {
      px += stride_w;
      for (int c = 0; c < 3; ++c) h[c] += static_cast<float>(px[c]) * wxr[j];
    }
    for (int c = 0; c < 3; ++c) acc[c] = i == 0 ? h[c] * wyr[0] : acc[c] + h[c] * wyr[i];
  }
  out_t* o = out + t * 3 * plane + y * crop_w + x;
  for (int c = 0; c < 3; ++c) {
    o[c * plane] = static_cast<out_t>((acc[c] * norm.rescale - norm.mean[c]) / norm.std[c]);
  }
}

at::Tensor preprocess_frames_cuda(const at::Tensor& frames_in, int64_t resize_h, int64_t resize_w,
                                  int64_t top, int64_t left, int64_t crop_h, int64_t crop_w,
                                  c10::ArrayRef<double> mean, c10::ArrayRef<double> std, double rescale,
                                  at::ScalarType dtype) {
  check_preprocess_args(frames_in, resize_h, resize_w, top, left, crop_h, crop_w, mean, std, dtype);
  const c10::cuda::CUDAGuard guard(frames_in.device());
  // As on the CPU: any frame/row/pixel strides, but the 3 channels adjacent.
  const at::Tensor frames = frames_in.stride(3) == 1 ? frames_in : frames_in.contiguous();
  const int64_t T = frames.size(0), H = frames.size(1), W = frames.size(2);

  const AxisWeights wy = axis_weights(H, resize_h, top, crop_h);
  const AxisWeights wx = axis_weights(W, resize_w, left, crop_w);
  // One host buffer per type, one copy each: [ystart | xstart] and [wy | wx].
  at::Tensor starts = at::empty({crop_h + crop_w}, frames.options().device(at::kCPU).dtype(at::kLong));
  at::Tensor weights = at::empty({static_cast<int64_t>(wy.weight.size() + wx.weight.size())},
                                 frames.options().device(at::kCPU).dtype(at::kFloat));
  std::memcpy(starts.mutable_data_ptr<int64_t>(), wy.start.data(), crop_h * sizeof(int64_t));
  std::memcpy(starts.mutable_data_ptr<int64_t>() + crop_h, wx.start.data(), crop_w * sizeof(int64_t));
  std::memcpy(weights.mutable_data_ptr<float>(), wy.weight.data(), wy.weight.size() * sizeof(float));
  std::memcpy(weights.mutable_data_ptr<float>() + wy.weight.size(), wx.weight.data(),
              wx.weight.size() * sizeof(float));
  starts = starts.to(frames.device());
  weights = weights.to(frames.device());
  const int64_t* ystart = starts.const_data_ptr<int64_t>();
  const float* wyp = weights.const_data_ptr<float>();

  Norm norm;
  norm.rescale = static_cast<float>(rescale);
  for (int c = 0; c < 3; ++c) {
    norm.mean[c] = static_cast<float>(mean[c]);
    norm.std[c] = static_cast<float>(std[c]);
  }

  at::Tensor out = at::empty({T, 3, crop_h, crop_w}, frames.options().dtype(dtype));
  const int64_t total = T * crop_h * crop_w;
  constexpr int threads = 256;
  const unsigned blocks = static_cast<unsigned>((total + threads - 1) / threads);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const uint8_t* src = frames.const_data_ptr<uint8_t>();
  const int ky = static_cast<int>(wy.taps), kx = static_cast<int>(wx.taps);
  const int64_t st = frames.stride(0), sh = frames.stride(1), sw = frames.stride(2);
#define TIMESFORMER_LAUNCH(out_t)                                                                    \
  preprocess_frames_kernel<out_t><<<blocks, threads, 0, stream>>>(                                   \
      src, st, sh, sw, ystart, wyp, ky, ystart + crop_h, wyp + wy.weight.size(), kx, T, crop_h, crop_w, \
      norm, out.mutable_data_ptr<out_t>())
  switch (dtype) {
    case at::kFloat: TIMESFORMER_LAUNCH(float); break;
    case at::kBFloat16: TIMESFORMER_LAUNCH(c10::BFloat16); break;
    default: TIMESFORMER_LAUNCH(c10::Half); break;
  }
#undef TIMESFORMER_LAUNCH
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace timesformer

TORCH_LIBRARY_IMPL(timesformer_csrc, CUDA, m) {
  m.impl("preprocess_frames", &timesformer::preprocess_frames_cuda);
}
