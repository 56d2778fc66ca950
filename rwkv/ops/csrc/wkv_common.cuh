// Small device helpers shared by the WKV kernels (wkv7_state.cu, wkv6_state.cu).
// Only CUDA headers: these translation units compile with plain `nvcc -c` (no torch).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdint>

#ifndef _N_
#error "wkv kernels: compile with -D_N_=64 (the head size; every official RWKV model uses 64)"
#endif
#ifndef _SNAPSHOT_INTERVAL_
#error "wkv kernels: compile with -D_SNAPSHOT_INTERVAL_=16 (state snapshot interval, docs/model-spec.md §3.1)"
#endif
// One thread per channel and three register rows of N floats per thread in the v7 backward:
// 64 is what the official kernels use and the only size this code was compiled and checked for.
static_assert(_N_ == 64, "wkv kernels are written and checked for head size _N_ == 64 only");
static_assert(_SNAPSHOT_INTERVAL_ > 0, "_SNAPSHOT_INTERVAL_ must be positive");

namespace wkv {

constexpr int N = _N_;
constexpr int SNAPSHOT = _SNAPSHOT_INTERVAL_;

// All arithmetic is fp32; the storage type F is float or __nv_bfloat16.
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class F> __device__ __forceinline__ F from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Offset of element (b, t, h, n) in a contiguous [B, T, H, N] tensor (64-bit: long runs overflow int).
__device__ __forceinline__ int64_t btoff(int b, int t, int T, int h, int H, int n) {
  return ((static_cast<int64_t>(b) * T + t) * H + h) * N + n;
}

__device__ __forceinline__ bool is_reset(const uint8_t* reset, int b, int t, int T) {
  // The same value for every thread of a block, so branching on it keeps __syncthreads() legal.
  return reset != nullptr && reset[static_cast<int64_t>(b) * T + t] != 0;
}

}  // namespace wkv
