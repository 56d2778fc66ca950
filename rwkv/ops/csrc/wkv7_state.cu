// RWKV-7 WKV training kernels with initial state, final state and state gradient (TBPTT).
//
// Maths (docs/model-spec.md §1.3), per (batch, head), state S [value i, key j], decay d_t = exp(λ_t):
//   sa_t = S_{t-1} a_t;   S_t = S_{t-1} diag(d_t) + sa_t b_tᵀ + v_t k_tᵀ;   y_t = S_t r_t.
// Structure follows the official trainer kernel (docs/model-spec.md §3.1): one block per (head, batch),
// one thread per value row i, the state row S[i, :] in registers, the state saved after every
// _SNAPSHOT_INTERVAL_ steps, and a "back-stepping" backward that walks t = T-1 .. 0 and reconstructs
// S_{t-1} = (S_t − v_t k_tᵀ − sa_t b_tᵀ) ⊘ d_t, restarting from the saved state at each snapshot.
// The division is safe because RWKV-7's clamp gives λ ≥ −e^{−1/2} ≈ −0.6066, so 1/d ≤ 1.83, and
// errors can grow for at most _SNAPSHOT_INTERVAL_ − 1 steps before the next restart.
//
// Differences from the official kernel (the "four small changes" of docs/model-spec.md §3.1, plus two):
//   1. the register row starts from s0[b,h,i,:] instead of 0;
//   2. the final state is written to sT;
//   3. the backward accumulators start from dsT (row i and column i) instead of 0;
//   4. after t = 0 the row accumulator is ∂L/∂S_{-1}, written to ds0;
//   5. w is the log-decay λ (our op's contract), so d = exp(λ) and ∂L/∂λ_j = d_j Σ_i ∂S_t[i,j]·S_{t-1}[i,j];
//   6. an optional reset mask zeroes the state before step t. Back-stepping cannot cross a reset
//      (the pre-reset state is not a function of S_t), so at a reset the backward recomputes
//      S_{t-1} forward from the state saved at the start of its snapshot interval with the saved sa values.
// Storage type F is float or __nv_bfloat16; all arithmetic and every state/sa buffer are fp32.

#include "wkv7_state.h"
#include "wkv_common.cuh"

namespace wkv {

template <class F>
__global__ void __launch_bounds__(N)
wkv7_forward_kernel(int T, int H, const F* __restrict__ r_, const F* __restrict__ w_,
                    const F* __restrict__ k_, const F* __restrict__ v_, const F* __restrict__ a_,
                    const F* __restrict__ b_, const float* __restrict__ s0_,
                    const uint8_t* __restrict__ reset_, F* __restrict__ y_,
                    float* __restrict__ snaps_, float* __restrict__ sa_, float* __restrict__ sT_) {
  const int hh = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;  // i: value row owned by this thread
  const int64_t bh = static_cast<int64_t>(bb) * H + hh;
  const int n_snaps = T / SNAPSHOT;

  __shared__ float r[N], dec[N], k[N], a[N], b[N];

  float state[N];  // S[i, :]
  const float* s0 = s0_ + (bh * N + i) * N;
#pragma unroll
  for (int j = 0; j < N; j++) state[j] = s0[j];

  for (int t = 0; t < T; t++) {
    const int64_t ind = btoff(bb, t, T, hh, H, i);
    __syncthreads();  // the previous step's readers are done with the shared vectors
    r[i] = to_f(r_[ind]);
    dec[i] = __expf(to_f(w_[ind]));
    k[i] = to_f(k_[ind]);
    a[i] = to_f(a_[ind]);
    b[i] = to_f(b_[ind]);
    __syncthreads();

    if (is_reset(reset_, bb, t, T)) {
#pragma unroll
      for (int j = 0; j < N; j++) state[j] = 0.f;
    }
    float sa = 0.f;
#pragma unroll
    for (int j = 0; j < N; j++) sa += a[j] * state[j];
    sa_[ind] = sa;

    const float vi = to_f(v_[ind]);
    float y = 0.f;
#pragma unroll
    for (int j = 0; j < N; j++) {
      const float s = state[j] * dec[j] + sa * b[j] + vi * k[j];
      state[j] = s;
      y += s * r[j];
    }
    y_[ind] = from_f<F>(y);

    if ((t + 1) % SNAPSHOT == 0) {  // snapshot S_t at the end of every snapshot interval (the last one is S_T)
      float* snap = snaps_ + ((bh * n_snaps + t / SNAPSHOT) * N + i) * N;
#pragma unroll
      for (int j = 0; j < N; j++) snap[j] = state[j];
    }
  }

  float* sT = sT_ + (bh * N + i) * N;  // change 2: the final state
#pragma unroll
  for (int j = 0; j < N; j++) sT[j] = state[j];
}

template <class F>
__global__ void __launch_bounds__(N)
wkv7_backward_kernel(int T, int H, const F* __restrict__ r_, const F* __restrict__ w_,
                     const F* __restrict__ k_, const F* __restrict__ v_, const F* __restrict__ a_,
                     const F* __restrict__ b_, const F* __restrict__ dy_,
                     const float* __restrict__ s0_, const uint8_t* __restrict__ reset_,
                     const float* __restrict__ snaps_, const float* __restrict__ sa_,
                     const float* __restrict__ dsT_, F* __restrict__ dr_, F* __restrict__ dw_,
                     F* __restrict__ dk_, F* __restrict__ dv_, F* __restrict__ da_,
                     F* __restrict__ db_, float* __restrict__ ds0_) {
  // Thread i owns value row i of the state gradient and key column i of the state and its gradient.
  const int hh = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;
  const int64_t bh = static_cast<int64_t>(bb) * H + hh;
  const int n_snaps = T / SNAPSHOT;

  __shared__ float r[N], dec[N], k[N], v[N], a[N], b[N], sa[N], dy[N], dsa[N];

  // Column i of S_t lives in shared memory but is touched only by thread i (no barriers needed;
  // address j*N + i is bank-conflict free). With all three N-float rows in registers, ptxas 13.0
  // (sm_80) spilled about 1 KB per thread; this way it reports under 100 bytes.
  __shared__ float stT_sh[N * N];
  float* const stT = stT_sh + i;  // stT[j * N] = S_t[j, i]
  float dS[N];   // row i of ∂L/∂S_t:      dS[j]  = ∂S_t[i, j]
  float dST[N];  // column i of ∂L/∂S_t:   dST[j] = ∂S_t[j, i]
  const float* dsT = dsT_ + bh * N * N;  // change 3: start from the incoming final-state gradient
#pragma unroll
  for (int j = 0; j < N; j++) {
    dS[j] = dsT[i * N + j];
    dST[j] = dsT[j * N + i];
  }

  for (int t = T - 1; t >= 0; t--) {
    const int64_t ind = btoff(bb, t, T, hh, H, i);
    __syncthreads();
    r[i] = to_f(r_[ind]);
    dec[i] = __expf(to_f(w_[ind]));
    k[i] = to_f(k_[ind]);
    v[i] = to_f(v_[ind]);
    a[i] = to_f(a_[ind]);
    b[i] = to_f(b_[ind]);
    sa[i] = sa_[ind];
    dy[i] = to_f(dy_[ind]);
    __syncthreads();

    if ((t + 1) % SNAPSHOT == 0) {  // restart from the saved S_t (stored [value, key]: read column i)
      const float* snap = snaps_ + (bh * n_snaps + t / SNAPSHOT) * N * N;
#pragma unroll
      for (int j = 0; j < N; j++) stT[j * N] = snap[j * N + i];
    }
    const float ri = r[i], deci = dec[i], ki = k[i], ai = a[i], bi = b[i], dyi = dy[i];

    // One fused pass over j, so that few values are live at once:
    //   y_t = S_t r_t   ->  ∂r[i] = Σ_j S_t[j,i] dy[j];  ∂S_t += dy_t r_tᵀ
    //   S_t = S_{t-1} diag(d) + sa bᵀ + v kᵀ  ->  ∂v[i] = Σ_j ∂S_t[i,j] k[j],  ∂sa[i] = Σ_j ∂S_t[i,j] b[j],
    //                                            ∂k[i] = Σ_j ∂S_t[j,i] v[j],  ∂b[i] = Σ_j ∂S_t[j,i] sa[j]
    //   back-step:  S_{t-1}[j,i] = (S_t[j,i] − v[j] k[i] − sa[j] b[i]) / d[i]
    //   ∂λ[i] = d[i] Σ_j ∂S_t[j,i] S_{t-1}[j,i]
    const float inv = 1.f / deci;
    float dr = 0.f, dv = 0.f, dsai = 0.f, dk = 0.f, db = 0.f, dw = 0.f;
#pragma unroll
    for (int j = 0; j < N; j++) {
      const float s_t = stT[j * N];
      dr += s_t * dy[j];
      const float gr = dS[j] + dyi * r[j];
      const float gc = dST[j] + dy[j] * ri;
      dS[j] = gr;
      dST[j] = gc;
      dv += gr * k[j];
      dsai += gr * b[j];
      dk += gc * v[j];
      db += gc * sa[j];
      const float s_prev = (s_t - v[j] * ki - sa[j] * bi) * inv;
      stT[j * N] = s_prev;
      dw += gc * s_prev;
    }
    dw *= deci;

    const bool rst = is_reset(reset_, bb, t, T);  // uniform across the block
    if (rst) {
      // The state before step t was replaced by 0, so S_t says nothing about the pre-reset S_{t-1}
      // (the back-step above produced the zero state). Recompute S_{t-1} forward from the state
      // entering this snapshot interval with the saved sa (column form); ∂λ is 0 since S_{t-1} was not used.
      dw = 0.f;
      const int c = t / SNAPSHOT;
      const float* start = (c == 0) ? s0_ + bh * N * N : snaps_ + (bh * n_snaps + c - 1) * N * N;
#pragma unroll
      for (int j = 0; j < N; j++) stT[j * N] = start[j * N + i];
      for (int u = c * SNAPSHOT; u < t; u++) {
        if (is_reset(reset_, bb, u, T)) {
#pragma unroll
          for (int j = 0; j < N; j++) stT[j * N] = 0.f;
        }
        const int64_t own = btoff(bb, u, T, hh, H, i);
        const int64_t row0 = btoff(bb, u, T, hh, H, 0);
        const float du = __expf(to_f(w_[own])), ku = to_f(k_[own]), bu = to_f(b_[own]);
#pragma unroll
        for (int j = 0; j < N; j++)  // every thread reads the same v[j], sa[j]: broadcast loads
          stT[j * N] = stT[j * N] * du + sa_[row0 + j] * bu + to_f(v_[row0 + j]) * ku;
      }
    }

    dsa[i] = dsai;  // the previous reader of dsa finished before this step's first barrier
    __syncthreads();

    // sa = S_{t-1} a: ∂a[i] = Σ_j ∂sa[j] S_{t-1}[j,i]; ∂S_{t-1} = ∂S_t diag(d) + ∂sa aᵀ.
    float da = 0.f;
    if (!rst) {
#pragma unroll
      for (int j = 0; j < N; j++) {
        da += dsa[j] * stT[j * N];
        dS[j] = dS[j] * dec[j] + dsai * a[j];
        dST[j] = dST[j] * deci + dsa[j] * ai;
      }
    } else {  // the zeroed state cuts the gradient path to everything before t
#pragma unroll
      for (int j = 0; j < N; j++) {
        dS[j] = 0.f;
        dST[j] = 0.f;
      }
    }

    dr_[ind] = from_f<F>(dr);
    dw_[ind] = from_f<F>(dw);
    dk_[ind] = from_f<F>(dk);
    dv_[ind] = from_f<F>(dv);
    da_[ind] = from_f<F>(da);
    db_[ind] = from_f<F>(db);
  }

  float* ds0 = ds0_ + (bh * N + i) * N;  // change 4: ∂L/∂S_{-1}
#pragma unroll
  for (int j = 0; j < N; j++) ds0[j] = dS[j];
}

template <class F>
int launch_forward(int B, int T, int H, const void* r, const void* w, const void* k, const void* v,
                   const void* a, const void* b, const float* s0, const uint8_t* reset, void* y,
                   float* snaps, float* sa, float* sT, cudaStream_t stream) {
  if (B <= 0 || H <= 0 || T <= 0 || T % SNAPSHOT != 0 || B > 65535) return cudaErrorInvalidValue;
  const dim3 grid(H, B);
  wkv7_forward_kernel<F><<<grid, N, 0, stream>>>(
      T, H, static_cast<const F*>(r), static_cast<const F*>(w), static_cast<const F*>(k),
      static_cast<const F*>(v), static_cast<const F*>(a), static_cast<const F*>(b), s0, reset,
      static_cast<F*>(y), snaps, sa, sT);
  return static_cast<int>(cudaGetLastError());
}

template <class F>
int launch_backward(int B, int T, int H, const void* r, const void* w, const void* k, const void* v,
                    const void* a, const void* b, const void* dy, const float* s0,
                    const uint8_t* reset, const float* snaps, const float* sa, const float* dsT,
                    void* dr, void* dw, void* dk, void* dv, void* da, void* db, float* ds0,
                    cudaStream_t stream) {
  if (B <= 0 || H <= 0 || T <= 0 || T % SNAPSHOT != 0 || B > 65535) return cudaErrorInvalidValue;
  const dim3 grid(H, B);
  wkv7_backward_kernel<F><<<grid, N, 0, stream>>>(
      T, H, static_cast<const F*>(r), static_cast<const F*>(w), static_cast<const F*>(k),
      static_cast<const F*>(v), static_cast<const F*>(a), static_cast<const F*>(b),
      static_cast<const F*>(dy), s0, reset, snaps, sa, dsT, static_cast<F*>(dr),
      static_cast<F*>(dw), static_cast<F*>(dk), static_cast<F*>(dv), static_cast<F*>(da),
      static_cast<F*>(db), ds0);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wkv

int wkv7_state_forward(int dtype, int B, int T, int H, const void* r, const void* w, const void* k,
                       const void* v, const void* a, const void* b, const float* s0,
                       const uint8_t* reset, void* y, float* snaps, float* sa, float* sT,
                       void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (dtype == WKV7_FP32)
    return wkv::launch_forward<float>(B, T, H, r, w, k, v, a, b, s0, reset, y, snaps, sa, sT, st);
  if (dtype == WKV7_BF16)
    return wkv::launch_forward<__nv_bfloat16>(B, T, H, r, w, k, v, a, b, s0, reset, y, snaps, sa,
                                              sT, st);
  return cudaErrorInvalidValue;
}

int wkv7_state_backward(int dtype, int B, int T, int H, const void* r, const void* w, const void* k,
                        const void* v, const void* a, const void* b, const void* dy,
                        const float* s0, const uint8_t* reset, const float* snaps, const float* sa,
                        const float* dsT, void* dr, void* dw, void* dk, void* dv, void* da,
                        void* db, float* ds0, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (dtype == WKV7_FP32)
    return wkv::launch_backward<float>(B, T, H, r, w, k, v, a, b, dy, s0, reset, snaps, sa, dsT, dr,
                                       dw, dk, dv, da, db, ds0, st);
  if (dtype == WKV7_BF16)
    return wkv::launch_backward<__nv_bfloat16>(B, T, H, r, w, k, v, a, b, dy, s0, reset, snaps, sa,
                                               dsT, dr, dw, dk, dv, da, db, ds0, st);
  return cudaErrorInvalidValue;
}

const char* wkv7_state_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

int wkv7_state_head_size() { return wkv::N; }
int wkv7_state_snapshot_interval() { return wkv::SNAPSHOT; }
