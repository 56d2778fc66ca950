// Host interface of the RWKV-7 training kernel with initial/final state (rwkv/ops/csrc/wkv7_state.cu).
//
// Kept free of torch and CUDA headers so that the kernels compile with plain `nvcc -c` (the test
// suite does that on machines without a GPU) and the torch binding (wkv7_state_op.cpp) needs no
// CUDA types. Layouts, all contiguous, b = batch, t = time, h = head, n/i/j = channel (N = _N_):
//   r, w, k, v, a, b, y, dy and their gradients: [B, T, H, N] in the kernel dtype (fp32 or bf16);
//       w is the LOG-decay λ ≤ 0 (decay = exp(λ)), not the raw ω of the official kernel;
//   s0, sT, dsT, ds0: [B, H, N, N] fp32, [value i, key j] layout (the rwkv pip layout);
//   snaps: [B, H, T/_SNAPSHOT_INTERVAL_, N, N] fp32, the state after each snapshot interval, [value, key] layout;
//   sa: [B, T, H, N] fp32, sa_t = S_{t-1} a_t (after a reset: 0);
//   reset: [B, T] bytes (torch.bool) or nullptr; reset[b,t] != 0 zeroes the state before step t.
// T must be a multiple of _SNAPSHOT_INTERVAL_ (the Python wrapper pads). Return value: 0 on success,
// otherwise a cudaError_t code (see wkv7_state_error_string).
#pragma once

#include <cstdint>

enum Wkv7Dtype { WKV7_FP32 = 0, WKV7_BF16 = 1 };

int wkv7_state_forward(int dtype, int B, int T, int H,
                       const void* r, const void* w, const void* k, const void* v,
                       const void* a, const void* b, const float* s0, const uint8_t* reset,
                       void* y, float* snaps, float* sa, float* sT, void* stream);

int wkv7_state_backward(int dtype, int B, int T, int H,
                        const void* r, const void* w, const void* k, const void* v,
                        const void* a, const void* b, const void* dy, const float* s0,
                        const uint8_t* reset, const float* snaps, const float* sa, const float* dsT,
                        void* dr, void* dw, void* dk, void* dv, void* da, void* db, float* ds0,
                        void* stream);

const char* wkv7_state_error_string(int code);

// Compile-time constants, exported so the binding can check tensor shapes against the build.
int wkv7_state_head_size();
int wkv7_state_snapshot_interval();
