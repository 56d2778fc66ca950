// RWKV-6 (and, with a broadcast decay, RWKV-5) WKV training kernels with initial state, final state
// and state gradient (TBPTT).
//
// Maths (docs/model-spec.md §2.1), per (batch, head), state S [key j, value i], decay d_t = exp(λ_t):
//   y_t = r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ);   S_t = diag(d_t) S_{t-1} + k_t v_tᵀ.
// λ = −exp(ω) is unbounded below, so d can underflow to 0 and the RWKV-7 back-stepping (divide by d)
// is impossible. Instead, the rows (and the columns) of S evolve independently (the decay is
// diagonal on the key side), which gives a backward without any division:
//   sweep 1 (t = 0..T-1, thread i = key row i): recompute S_{t-1}[i,:] from s0, emit
//            ∂r_t[i] = Σ_v S_{t-1}[i,v] dy_t[v] + u_i k_t[i] (v_t·dy_t), and q_t[i] = r_t[i] Σ_v S_{t-1}[i,v] dy_t[v];
//   sweep 2 (t = T-1..0, thread i = key row i and value column i of G_t = ∂L/∂S_t, G_{T-1} = dsT):
//            ∂k_t[i] = Σ_v G_t[i,v] v_t[v] + u_i r_t[i] (v_t·dy_t),
//            ∂v_t[i] = Σ_j G_t[j,i] k_t[j] + dy_t[i] Σ_j r_t[j] u_j k_t[j],
//            ∂u[i]  += r_t[i] k_t[i] (v_t·dy_t),
//            G_{t-1} = diag(d_t) G_t + r_t dy_tᵀ  (0 if the state was reset before step t),
//            ∂s0 = G_{-1}.
//   ∂λ_t[i] = d_t[i] Σ_v G_t[i,v] S_{t-1}[i,v] needs S_{t-1} and G_t together; with κ_s[i] = k_s[i] Σ_v G_s[i,v] v_s[v]
//   and F[i] = Σ_v dsT[i,v] S_{T-1}[i,v], expanding both over (key s, query τ) pairs gives
//            ∂λ_t = Σ_{τ>t} q_τ + F − Σ_{s≥t} κ_s,
//   accumulated in fp64 during sweep 2. A reset at p separates the pairs, so the sums restart there
//   (which also keeps the cancellation local to one document).
// Storage type F is float or __nv_bfloat16 for r, k, v, y and their gradients; λ, u, the state and
// every buffer are fp32.

#include "wkv6_state.h"
#include "wkv_common.cuh"

namespace wkv {

template <class F>
__global__ void __launch_bounds__(N)
wkv6_forward_kernel(int T, int H, const F* __restrict__ r_, const float* __restrict__ w_,
                    const F* __restrict__ k_, const F* __restrict__ v_, const float* __restrict__ u_,
                    const float* __restrict__ s0_, const uint8_t* __restrict__ reset_,
                    F* __restrict__ y_, float* __restrict__ sT_) {
  const int hh = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;  // i: value column owned by this thread
  const int64_t bh = static_cast<int64_t>(bb) * H + hh;
  __shared__ float r[N], dec[N], k[N], uk[N];

  float state[N];  // S[:, i]
  const float* s0 = s0_ + bh * N * N;
#pragma unroll
  for (int j = 0; j < N; j++) state[j] = s0[j * N + i];
  const float ui = u_[hh * N + i];

  for (int t = 0; t < T; t++) {
    const int64_t ind = btoff(bb, t, T, hh, H, i);
    __syncthreads();
    r[i] = to_f(r_[ind]);
    dec[i] = __expf(w_[ind]);
    const float ki = to_f(k_[ind]);
    k[i] = ki;
    uk[i] = ui * ki;
    __syncthreads();

    if (is_reset(reset_, bb, t, T)) {
#pragma unroll
      for (int j = 0; j < N; j++) state[j] = 0.f;
    }
    const float vi = to_f(v_[ind]);
    float y = 0.f;
#pragma unroll
    for (int j = 0; j < N; j++) {
      y += r[j] * (state[j] + uk[j] * vi);  // reads S_{t-1} plus the bonus
      state[j] = dec[j] * state[j] + k[j] * vi;
    }
    y_[ind] = from_f<F>(y);
  }

  float* sT = sT_ + bh * N * N;
#pragma unroll
  for (int j = 0; j < N; j++) sT[j * N + i] = state[j];
}

template <class F>
__global__ void __launch_bounds__(N)
wkv6_backward_kernel(int T, int H, const F* __restrict__ r_, const float* __restrict__ w_,
                     const F* __restrict__ k_, const F* __restrict__ v_, const float* __restrict__ u_,
                     const F* __restrict__ dy_, const float* __restrict__ s0_,
                     const uint8_t* __restrict__ reset_, const float* __restrict__ dsT_,
                     float* __restrict__ q_, F* __restrict__ dr_, float* __restrict__ dw_,
                     F* __restrict__ dk_, F* __restrict__ dv_, float* __restrict__ du_,
                     float* __restrict__ ds0_) {
  const int hh = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;
  const int64_t bh = static_cast<int64_t>(bb) * H + hh;
  __shared__ float r[N], dec[N], k[N], v[N], dy[N], ruk[N];
  const float ui = u_[hh * N + i];
  const float* dsT = dsT_ + bh * N * N;

  // ---- sweep 1: forward recompute, thread i = key row i of S
  float F_i = 0.f;
  {
    float srow[N];  // S[i, :]
    const float* s0 = s0_ + (bh * N + i) * N;
#pragma unroll
    for (int j = 0; j < N; j++) srow[j] = s0[j];
    for (int t = 0; t < T; t++) {
      const int64_t ind = btoff(bb, t, T, hh, H, i);
      __syncthreads();
      v[i] = to_f(v_[ind]);
      dy[i] = to_f(dy_[ind]);
      __syncthreads();
      if (is_reset(reset_, bb, t, T)) {
#pragma unroll
        for (int j = 0; j < N; j++) srow[j] = 0.f;
      }
      const float ri = to_f(r_[ind]), ki = to_f(k_[ind]), di = __expf(w_[ind]);
      float sdy = 0.f, vdy = 0.f;
#pragma unroll
      for (int j = 0; j < N; j++) {
        sdy += srow[j] * dy[j];
        vdy += v[j] * dy[j];
        srow[j] = di * srow[j] + ki * v[j];
      }
      dr_[ind] = from_f<F>(sdy + ui * ki * vdy);
      q_[ind] = ri * sdy;
    }
#pragma unroll
    for (int j = 0; j < N; j++) F_i += dsT[i * N + j] * srow[j];
  }

  // ---- sweep 2: reverse, thread i = key row i and value column i of G_t
  float grow[N], gcol[N];  // G[i, :] and G[:, i]
#pragma unroll
  for (int j = 0; j < N; j++) {
    grow[j] = dsT[i * N + j];
    gcol[j] = dsT[j * N + i];
  }
  double qacc = 0.0, kacc = 0.0, facc = F_i;  // Σ_{τ>t} q_τ, Σ_{s≥t} κ_s, F (within one document)
  float du = 0.f;
  for (int t = T - 1; t >= 0; t--) {
    const int64_t ind = btoff(bb, t, T, hh, H, i);
    __syncthreads();
    const float ri = to_f(r_[ind]), ki = to_f(k_[ind]);
    r[i] = ri;
    dec[i] = __expf(w_[ind]);
    k[i] = ki;
    v[i] = to_f(v_[ind]);
    dy[i] = to_f(dy_[ind]);
    ruk[i] = ri * u_[hh * N + i] * ki;
    __syncthreads();

    const float di = dec[i], dyi = dy[i];
    const bool rst = is_reset(reset_, bb, t, T);  // uniform across the block
    // G_{t-1} = diag(d) G_t + r dy_tᵀ, or 0 when the state was reset before step t (S_{t-1} was
    // replaced by 0, so nothing before t reaches anything from t on). Fused with the sums over G_t.
    const float keep = rst ? 0.f : 1.f;
    float gv = 0.f, gk = 0.f, vdy = 0.f, sruk = 0.f;
#pragma unroll
    for (int j = 0; j < N; j++) {
      const float g_r = grow[j], g_c = gcol[j];
      gv += g_r * v[j];
      gk += g_c * k[j];
      vdy += v[j] * dy[j];
      sruk += ruk[j];
      grow[j] = keep * (di * g_r + ri * dy[j]);
      gcol[j] = keep * (dec[j] * g_c + r[j] * dyi);
    }
    dk_[ind] = from_f<F>(gv + ui * ri * vdy);
    dv_[ind] = from_f<F>(gk + dyi * sruk);
    du += ri * ki * vdy;

    kacc += static_cast<double>(ki * gv);
    dw_[ind] = rst ? 0.f : static_cast<float>(qacc + facc - kacc);
    qacc += static_cast<double>(q_[ind]);
    if (rst) qacc = kacc = facc = 0.0;  // pairs never straddle a reset: restart the sums
  }

  float* ds0 = ds0_ + (bh * N + i) * N;
#pragma unroll
  for (int j = 0; j < N; j++) ds0[j] = grow[j];
  du_[bh * N + i] = du;
}

template <class F>
int launch_forward6(int B, int T, int H, const void* r, const float* w, const void* k, const void* v,
                    const float* u, const float* s0, const uint8_t* reset, void* y, float* sT,
                    cudaStream_t stream) {
  if (B <= 0 || H <= 0 || T <= 0 || B > 65535) return cudaErrorInvalidValue;
  wkv6_forward_kernel<F><<<dim3(H, B), N, 0, stream>>>(
      T, H, static_cast<const F*>(r), w, static_cast<const F*>(k), static_cast<const F*>(v), u, s0,
      reset, static_cast<F*>(y), sT);
  return static_cast<int>(cudaGetLastError());
}

template <class F>
int launch_backward6(int B, int T, int H, const void* r, const float* w, const void* k,
                     const void* v, const float* u, const void* dy, const float* s0,
                     const uint8_t* reset, const float* dsT, float* q, void* dr, float* dw, void* dk,
                     void* dv, float* du, float* ds0, cudaStream_t stream) {
  if (B <= 0 || H <= 0 || T <= 0 || B > 65535) return cudaErrorInvalidValue;
  wkv6_backward_kernel<F><<<dim3(H, B), N, 0, stream>>>(
      T, H, static_cast<const F*>(r), w, static_cast<const F*>(k), static_cast<const F*>(v), u,
      static_cast<const F*>(dy), s0, reset, dsT, q, static_cast<F*>(dr), dw, static_cast<F*>(dk),
      static_cast<F*>(dv), du, ds0);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace wkv

int wkv6_state_forward(int dtype, int B, int T, int H, const void* r, const float* w, const void* k,
                       const void* v, const float* u, const float* s0, const uint8_t* reset,
                       void* y, float* sT, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (dtype == WKV6_FP32)
    return wkv::launch_forward6<float>(B, T, H, r, w, k, v, u, s0, reset, y, sT, st);
  if (dtype == WKV6_BF16)
    return wkv::launch_forward6<__nv_bfloat16>(B, T, H, r, w, k, v, u, s0, reset, y, sT, st);
  return cudaErrorInvalidValue;
}

int wkv6_state_backward(int dtype, int B, int T, int H, const void* r, const float* w,
                        const void* k, const void* v, const float* u, const void* dy,
                        const float* s0, const uint8_t* reset, const float* dsT, float* q,
                        void* dr, float* dw, void* dk, void* dv, float* du, float* ds0,
                        void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (dtype == WKV6_FP32)
    return wkv::launch_backward6<float>(B, T, H, r, w, k, v, u, dy, s0, reset, dsT, q, dr, dw, dk,
                                        dv, du, ds0, st);
  if (dtype == WKV6_BF16)
    return wkv::launch_backward6<__nv_bfloat16>(B, T, H, r, w, k, v, u, dy, s0, reset, dsT, q, dr,
                                                dw, dk, dv, du, ds0, st);
  return cudaErrorInvalidValue;
}

const char* wkv6_state_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

int wkv6_state_head_size() { return wkv::N; }
