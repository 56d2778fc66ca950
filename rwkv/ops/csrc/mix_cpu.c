// Token-shift mixes on the CPU (docs/model-spec.md §1.3): out_k = x + (z_{t−1} − x) ⊙ m_k for k = 0..K−1, with
// z_{−1} = the carried x_prev and z_{t−1} = 0 where a document starts (reset). RWKV-7's time-mix takes
// K = 6 of them (x_r, x_w, x_k, x_v, x_a, x_g) from one x, its channel-mix K = 1.
//
// Why in C: in PyTorch each mix is a mul and an add over [B, T, C] plus the shift's cat and sub, and
// the backward as many again; at L6-D512, B=4, T=512 these ~40 passes per layer are memory-bound on
// the 2-core VMs (~1 ms each, docs/benchmarks.md "Training step"). Here the forward reads x once and
// writes the K outputs; the backward reads the K output gradients once and writes ∂x, ∂x_prev and ∂m.
//
// Rows are (b, t) pairs, row = b*T + t, each of C contiguous floats, split as in parts.h; in the
// backward each part writes its own ∂m partial sums (gm + part·K·C) that the caller adds up in order.

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parts.h"

static inline int starts_doc(const uint8_t* reset, int64_t row) { return reset != NULL && reset[row]; }

// z_{t−1} for row (b, t): the previous row, x_prev[b] at t = 0, or NULL for zero (a reset)
static inline const float* prev_row(const float* x, const float* x_prev, const uint8_t* reset, int64_t row,
                                    int T, int C) {
  if (starts_doc(reset, row)) return NULL;
  return (row % T == 0) ? x_prev + (row / T) * C : x + (row - 1) * C;
}

static inline void delta(const float* xr, const float* pr, float* xx, int C) {
  if (pr) {
    SIMD
    for (int c = 0; c < C; c++) xx[c] = pr[c] - xr[c];
  } else {
    SIMD
    for (int c = 0; c < C; c++) xx[c] = -xr[c];
  }
}

static int forward_rows(int B, int T, int C, int K, const float* x, const float* x_prev, const uint8_t* reset,
                        const float* m, float* const* out, int64_t r0, int64_t r1) {
  (void)B;
  float* xx = malloc(sizeof(float) * C);
  if (!xx) return 1;
  for (int64_t row = r0; row < r1; row++) {
    const float* xr = x + row * C;
    delta(xr, prev_row(x, x_prev, reset, row, T, C), xx, C);
    for (int k = 0; k < K; k++) {
      const float* mk = m + (int64_t)k * C;
      float* o = out[k] + row * C;
      SIMD
      for (int c = 0; c < C; c++) o[c] = xr[c] + xx[c] * mk[c];
    }
  }
  free(xx);
  return 0;
}

// gxx = Σ_k g_k[row] ⊙ m_k: the gradient reaching z_{t−1} − x at this row. NULL g_k are zero gradients.
static inline void grad_delta(const float* const* g, const float* m, int K, int C, int64_t row, float* gxx) {
  memset(gxx, 0, sizeof(float) * C);
  for (int k = 0; k < K; k++) {
    if (!g[k]) continue;
    const float *gk = g[k] + row * C, *mk = m + (int64_t)k * C;
    SIMD
    for (int c = 0; c < C; c++) gxx[c] += gk[c] * mk[c];
  }
}

// Rows walk backwards so that row t can add the shift's gradient from row t+1 (z_t feeds row t+1).
static int backward_rows(int B, int T, int C, int K, const float* x, const float* x_prev,
                         const uint8_t* reset, const float* m, const float* const* g, float* gx, float* gx_prev,
                         float* gm, int64_t r0, int64_t r1) {
  float* buf = malloc(sizeof(float) * 4 * C);
  if (!buf) return 1;
  float *xx = buf, *gsum = buf + C, *gxx = buf + 2 * C, *nxt = buf + 3 * C;
  memset(gm, 0, sizeof(float) * K * C);
  // the gradient from the row after this range (another thread's), if that row reads this range's last
  if (r1 < (int64_t)B * T && r1 % T != 0 && !starts_doc(reset, r1))
    grad_delta(g, m, K, C, r1, nxt);
  else
    memset(nxt, 0, sizeof(float) * C);
  for (int64_t row = r1 - 1; row >= r0; row--) {
    const float* xr = x + row * C;
    const float* pr = prev_row(x, x_prev, reset, row, T, C);
    delta(xr, pr, xx, C);
    memset(gsum, 0, sizeof(float) * C);
    memset(gxx, 0, sizeof(float) * C);
    for (int k = 0; k < K; k++) {
      if (!g[k]) continue;
      const float *gk = g[k] + row * C, *mk = m + (int64_t)k * C;
      float* gmk = gm + (int64_t)k * C;
      SIMD
      for (int c = 0; c < C; c++) {
        gsum[c] += gk[c];
        gxx[c] += gk[c] * mk[c];
        gmk[c] += gk[c] * xx[c];
      }
    }
    // out_k = x + (z − x) m_k:  ∂x = Σ_k g_k − gxx, plus gxx of row t+1 when this x is its z_{t−1}
    float* o = gx + row * C;
    SIMD
    for (int c = 0; c < C; c++) o[c] = gsum[c] - gxx[c] + nxt[c];
    if (row % T == 0) {  // z_{−1} is x_prev[b]; the next row processed belongs to batch b−1
      if (gx_prev) {
        float* gp = gx_prev + (row / T) * C;
        if (pr) memcpy(gp, gxx, sizeof(float) * C);
        else memset(gp, 0, sizeof(float) * C);
      }
      memset(nxt, 0, sizeof(float) * C);
    } else if (pr) {
      memcpy(nxt, gxx, sizeof(float) * C);
    } else {
      memset(nxt, 0, sizeof(float) * C);
    }
  }
  free(buf);
  return 0;
}

int mix_forward(int B, int T, int C, int K, const float* x, const float* x_prev, const uint8_t* reset,
                const float* m, float* const* out, int nparts, int part) {
  const int64_t R = (int64_t)B * T;
  RUN_PARTS(nparts, part,
            forward_rows(B, T, C, K, x, x_prev, reset, m, out, part_lo(R, nparts, p), part_lo(R, nparts, p + 1)));
}

int mix_backward(int B, int T, int C, int K, const float* x, const float* x_prev, const uint8_t* reset,
                 const float* m, const float* const* g, float* gx, float* gx_prev, float* gm, int nparts,
                 int part) {
  const int64_t R = (int64_t)B * T;
  RUN_PARTS(nparts, part,
            backward_rows(B, T, C, K, x, x_prev, reset, m, g, gx, gx_prev, gm + (int64_t)p * K * C,
                          part_lo(R, nparts, p), part_lo(R, nparts, p + 1)));
}
