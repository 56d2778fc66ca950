// Host interface of the RWKV-6 training kernels with initial/final state (rwkv/ops/csrc/wkv6_state.cu).
//
// Free of torch and CUDA headers (see wkv7_state.h for why). Layouts, all contiguous:
//   r, k, v, y, dy, dr, dk, dv: [B, T, H, N] in the kernel dtype (fp32 or bf16);
//   w, dw: [B, T, H, N] fp32, the LOG-decay λ = −exp(ω) ≤ 0 (unbounded below; kept in fp32 always);
//   u: [H, N] fp32 (time_faaaa); du: [B, H, N] fp32 (the caller sums over B);
//   s0, sT, dsT, ds0: [B, H, N, N] fp32, [key j, value i] layout (the rwkv pip layout for v5/v6);
//   q: [B, T, H, N] fp32 scratch for the backward;
//   reset: [B, T] bytes (torch.bool) or nullptr; reset[b,t] != 0 zeroes the state before step t.
// Any T ≥ 1 (no chunking). Returns 0 or a cudaError_t code (wkv6_state_error_string).
#pragma once

#include <cstdint>

enum Wkv6Dtype { WKV6_FP32 = 0, WKV6_BF16 = 1 };

int wkv6_state_forward(int dtype, int B, int T, int H, const void* r, const float* w, const void* k,
                       const void* v, const float* u, const float* s0, const uint8_t* reset,
                       void* y, float* sT, void* stream);

int wkv6_state_backward(int dtype, int B, int T, int H, const void* r, const float* w,
                        const void* k, const void* v, const float* u, const void* dy,
                        const float* s0, const uint8_t* reset, const float* dsT, float* q,
                        void* dr, float* dw, void* dk, void* dv, float* du, float* ds0,
                        void* stream);

const char* wkv6_state_error_string(int code);
int wkv6_state_head_size();
