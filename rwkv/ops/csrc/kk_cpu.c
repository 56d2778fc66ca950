// RWKV-7's key preparation before the WKV kernel (docs/model-spec.md §1.3), per token and head of N channels:
//   kk = normalize(k ⊙ k_k)  (L2 over the head, eps 1e-12 as F.normalize),  k' = k ⊙ (1 + (a − 1) ⊙ k_a),
//   and the kernel's in-context-learning inputs  a_in = −kk,  b_in = kk ⊙ a.
// Why in C: in PyTorch these are ~10 passes over [B, T, C] forward and ~20 backward (mul, norm, clamp,
// div, neg, sub, add and their gradients), memory-bound on the 2-core VMs; here one pass each way.
// The backward recomputes kk from k (cheaper than saving it). Rows are (b, t) pairs of C = H·N floats,
// split as in parts.h; each part writes its own ∂k_k and ∂k_a partial sums (+ part·C).

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parts.h"

static const float NORM_EPS = 1e-12f;

// kk for one head: u = k ⊙ k_k, kk = u / max(‖u‖, eps); returns the clamped norm
static inline float head_kk(const float* k, const float* kkp, float* kk, int N) {
  float ss = 0.f;
  SIMD_SUM(ss)
  for (int j = 0; j < N; j++) {
    const float u = k[j] * kkp[j];
    kk[j] = u;
    ss += u * u;
  }
  const float n = sqrtf(ss), inv = 1.f / (n > NORM_EPS ? n : NORM_EPS);
  SIMD
  for (int j = 0; j < N; j++) kk[j] *= inv;
  return n;
}

static int forward_rows(int H, int N, const float* k, const float* a, const float* kkp, const float* kap,
                        float* k_out, float* a_out, float* b_out, int64_t r0, int64_t r1) {
  const int64_t C = (int64_t)H * N;
  float* kk = malloc(sizeof(float) * N);
  if (!kk) return 1;
  for (int64_t row = r0; row < r1; row++) {
    for (int h = 0; h < H; h++) {
      const int64_t o = row * C + (int64_t)h * N;
      const float *kr = k + o, *ar = a + o, *kkh = kkp + (int64_t)h * N, *kah = kap + (int64_t)h * N;
      head_kk(kr, kkh, kk, N);
      SIMD
      for (int j = 0; j < N; j++) {
        a_out[o + j] = -kk[j];
        b_out[o + j] = kk[j] * ar[j];
        k_out[o + j] = kr[j] * (1.f + (ar[j] - 1.f) * kah[j]);
      }
    }
  }
  free(kk);
  return 0;
}

// g_k_out, g_a_out, g_b_out may be NULL (that output does not reach the loss).
static int backward_rows(int H, int N, const float* k, const float* a, const float* kkp, const float* kap,
                         const float* g_kout, const float* g_aout, const float* g_bout, float* gk, float* ga,
                         float* g_kkp, float* g_kap, int64_t r0, int64_t r1) {
  const int64_t C = (int64_t)H * N;
  float* buf = malloc(sizeof(float) * 2 * N);
  if (!buf) return 1;
  float *kk = buf, *gkk = buf + N;
  memset(g_kkp, 0, sizeof(float) * C);
  memset(g_kap, 0, sizeof(float) * C);
  for (int64_t row = r0; row < r1; row++) {
    for (int h = 0; h < H; h++) {
      const int64_t o = row * C + (int64_t)h * N, p = (int64_t)h * N;
      const float *kr = k + o, *ar = a + o;
      const float n = head_kk(kr, kkp + p, kk, N);
      // ∂kk from a_in = −kk and b_in = kk ⊙ a; ∂a from b_in and k'; ∂k and ∂k_a from k'
      float dot = 0.f;
      SIMD_SUM(dot)
      for (int j = 0; j < N; j++) {
        const float gb = g_bout ? g_bout[o + j] : 0.f, gkn = g_kout ? g_kout[o + j] : 0.f;
        const float g = (g_aout ? -g_aout[o + j] : 0.f) + gb * ar[j];
        gkk[j] = g;
        dot += g * kk[j];
        ga[o + j] = gb * kk[j] + gkn * kr[j] * kap[p + j];
        gk[o + j] = gkn * (1.f + (ar[j] - 1.f) * kap[p + j]);
        g_kap[p + j] += gkn * kr[j] * (ar[j] - 1.f);
      }
      // kk = u / max(‖u‖, eps):  ∂u = (∂kk − kk (kk·∂kk)) / ‖u‖, or ∂kk / eps where the clamp is active
      const int clamped = !(n > NORM_EPS);
      const float inv = 1.f / (clamped ? NORM_EPS : n);
      SIMD
      for (int j = 0; j < N; j++) {
        const float gu = (clamped ? gkk[j] : gkk[j] - kk[j] * dot) * inv;
        gk[o + j] += gu * kkp[p + j];
        g_kkp[p + j] += gu * kr[j];
      }
    }
  }
  free(buf);
  return 0;
}

int kk_forward(int B, int T, int H, int N, const float* k, const float* a, const float* kkp, const float* kap,
               float* k_out, float* a_out, float* b_out, int nparts, int part) {
  const int64_t R = (int64_t)B * T;
  RUN_PARTS(nparts, part,
            forward_rows(H, N, k, a, kkp, kap, k_out, a_out, b_out, part_lo(R, nparts, p),
                         part_lo(R, nparts, p + 1)));
}

int kk_backward(int B, int T, int H, int N, const float* k, const float* a, const float* kkp, const float* kap,
                const float* g_kout, const float* g_aout, const float* g_bout, float* gk, float* ga,
                float* g_kkp, float* g_kap, int nparts, int part) {
  const int64_t R = (int64_t)B * T, C = (int64_t)H * N;
  RUN_PARTS(nparts, part,
            backward_rows(H, N, k, a, kkp, kap, g_kout, g_aout, g_bout, gk, ga, g_kkp + (int64_t)p * C,
                          g_kap + (int64_t)p * C, part_lo(R, nparts, p), part_lo(R, nparts, p + 1)));
}
