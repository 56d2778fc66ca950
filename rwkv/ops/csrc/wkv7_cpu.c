// RWKV-7 WKV on the CPU: the per-token recurrence of docs/model-spec.md §1.3 in fp32, forward and backward,
// with initial state, final state, state gradient and the per-document reset mask (rwkv.ops contract).
//
// Per (batch, head), state S [value i, key j] row-major, decay d_t = exp(λ_t):
//   sa_t = S_{t-1} a_t;   S_t = S_{t-1} diag(d_t) + sa_t b_tᵀ + v_t k_tᵀ;   y_t = S_t r_t.
// Why a sequential loop: a 64x64 state (16 KB) stays in L1 and every step is a few passes over it
// with unit-stride vector loads; the chunked PyTorch form (docs/model-spec.md §3.4) spends its time in small
// batched matmuls and elementwise temporaries instead (docs/benchmarks.md, "WKV kernels").
//
// Backward without back-stepping: the forward stores the state entering every `L`-token span
// ("snapshot"); the backward walks the spans in reverse, recomputes the span's L states forward
// from its snapshot into a small buffer (L+1 states, L2-resident), then runs the exact reverse step
// for each token. No division by the decay (unlike the official CUDA kernel, docs/model-spec.md §3.1), so a reset
// needs no special path: the recomputation applies it as the forward did.
//
// The span L is the caller's (rwkv/ops/v7/cpu.py SPAN, 32). Two implementations with one interface:
// portable C for any N (the compiler vectorises the `omp simd` loops), and AVX-512 intrinsics for N = 64 (every official RWKV-7 head) when the compiler targets
// it. The AVX-512 forward keeps the state transposed (key-major, vectors over the value index), so
// neither S a nor S r needs a horizontal sum; its backward works value-major like the portable one,
// where only ∂v and ∂sa are row sums. Measured single-threaded at B=4, T=512, H=8 (machine B of
// docs/benchmarks.md): forward 15–18 ms portable vs 6 ms AVX-512.
//
// Inputs are [B, T, H, N] contiguous fp32 with the decay d = exp(λ) itself (computed vectorised by
// the caller; ∂λ = ∂d · d is formed here). The (b, h) pairs are independent and split as in parts.h.
// Compiled by rwkv/ops/build.py (-O3 -march=native -fopenmp, falling back to fewer flags).

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parts.h"

static inline int64_t at(int64_t b, int64_t t, int64_t T, int64_t h, int64_t H, int64_t N) {
  return ((b * T + t) * H + h) * N;
}

static inline int is_reset(const uint8_t* reset, int64_t b, int64_t t, int64_t T) {
  return reset != NULL && reset[b * T + t];
}

// One forward step: S_prev -> S_next (may alias), optional y and sa outputs. `rst` treats S_prev as 0.
static inline void step_forward(int N, const float* S_prev, float* S_next, int rst, const float* r,
                                const float* d, const float* k, const float* v, const float* a,
                                const float* b, float* y, float* sa_out) {
  for (int i = 0; i < N; i++) {
    const float* p = S_prev + (int64_t)i * N;
    float* q = S_next + (int64_t)i * N;
    float sa = 0.f;
    if (!rst) {
      SIMD_SUM(sa)
      for (int j = 0; j < N; j++) sa += p[j] * a[j];
    }
    const float vi = v[i];
    float acc = 0.f;
    if (rst) {
      SIMD_SUM(acc)
      for (int j = 0; j < N; j++) {
        const float s = vi * k[j];
        q[j] = s;
        acc += s * r[j];
      }
    } else {
      SIMD_SUM(acc)
      for (int j = 0; j < N; j++) {
        const float s = p[j] * d[j] + sa * b[j] + vi * k[j];
        q[j] = s;
        acc += s * r[j];
      }
    }
    if (y) y[i] = acc;
    if (sa_out) sa_out[i] = sa;
  }
}

// Portable forward (snapshots value-major, see the entry points below).
static int forward_generic(int B, int T, int H, int N, int L, const float* r, const float* d, const float* k,
                 const float* v, const float* a, const float* b, const float* s0, const uint8_t* reset,
                 float* y, float* sT, float* snaps, int bh0, int bh1) {
  (void)B;  // the range [bh0, bh1) says which pairs to run
  const int64_t NN = (int64_t)N * N, n_snap = (T + L - 1) / L;
  float* S = malloc(sizeof(float) * NN);
  if (!S) return 1;
  for (int bh = bh0; bh < bh1; bh++) {
    const int bb = bh / H, hh = bh % H;
    memcpy(S, s0 + bh * NN, sizeof(float) * NN);
    for (int t = 0; t < T; t++) {
      if (snaps && t % L == 0) memcpy(snaps + (bh * n_snap + t / L) * NN, S, sizeof(float) * NN);
      const int64_t o = at(bb, t, T, hh, H, N);
      step_forward(N, S, S, is_reset(reset, bb, t, T), r + o, d + o, k + o, v + o, a + o, b + o, y + o, NULL);
    }
    memcpy(sT + bh * NN, S, sizeof(float) * NN);
  }
  free(S);
  return 0;
}

// Portable backward: gradients of every input; dS starts as dsT and ends as ds0; every output is written.
static int backward_generic(int B, int T, int H, int N, int L, const float* r, const float* d, const float* k,
                  const float* v, const float* a, const float* b, const uint8_t* reset, const float* snaps,
                  const float* dy, const float* dsT, float* dr, float* dw, float* dk, float* dv, float* da,
                  float* db, float* ds0, int bh0, int bh1) {
  (void)B;
  const int64_t NN = (int64_t)N * N, n_snap = (T + L - 1) / L;
  // states[u] = S before token t0+u of the span (u = 0..L), dS, sa[u] = sa at token t0+u, 5 vectors
  float* buf = malloc(sizeof(float) * ((L + 2) * NN + (int64_t)L * N + 5 * N));
  if (!buf) return 1;
  float* states = buf;
  float* dS = states + (L + 1) * NN;
  float* sa_buf = dS + NN;
  float *gr = sa_buf + (int64_t)L * N, *gk = gr + N, *gb = gk + N, *gd = gb + N, *ga = gd + N;
  for (int bh = bh0; bh < bh1; bh++) {
    const int bb = bh / H, hh = bh % H;
    memcpy(dS, dsT + bh * NN, sizeof(float) * NN);
    for (int c = (int)n_snap - 1; c >= 0; c--) {
      const int t0 = c * L, t1 = (t0 + L < T) ? t0 + L : T;
      memcpy(states, snaps + (bh * n_snap + c) * NN, sizeof(float) * NN);
      for (int t = t0; t < t1; t++) {  // recompute the span
        const int64_t o = at(bb, t, T, hh, H, N), u = t - t0;
        step_forward(N, states + u * NN, states + (u + 1) * NN, is_reset(reset, bb, t, T), r + o, d + o, k + o,
                     v + o, a + o, b + o, NULL, sa_buf + u * N);
      }
      for (int t = t1 - 1; t >= t0; t--) {  // exact reverse steps
        const int64_t o = at(bb, t, T, hh, H, N), u = t - t0;
        const int rst = is_reset(reset, bb, t, T);
        const float *St = states + (u + 1) * NN, *Sp = states + u * NN, *sa = sa_buf + u * N;
        const float *rt = r + o, *dt = d + o, *kt = k + o, *vt = v + o, *at_ = a + o, *bt = b + o, *dyt = dy + o;
        memset(gr, 0, sizeof(float) * 5 * N);  // gr, gk, gb, gd, ga are contiguous
        for (int i = 0; i < N; i++) {
          float* g = dS + (int64_t)i * N;
          const float *st = St + (int64_t)i * N, *sp = Sp + (int64_t)i * N;
          const float dyi = dyt[i], vi = vt[i], sai = sa[i];
          float dvi = 0.f, dsai = 0.f;
          // y_t = S_t r_t:  ∂r += S_tᵀ dy, ∂S_t += dy rᵀ; then S_t = S_{t-1} diag(d) + sa bᵀ + v kᵀ:
          // ∂v_i = Σ_j g_ij k_j, ∂sa_i = Σ_j g_ij b_j, ∂k_j += g_ij v_i, ∂b_j += g_ij sa_i, ∂d_j += g_ij S_{t-1,ij}
          SIMD_SUM2(dvi, dsai)
          for (int j = 0; j < N; j++) {
            const float gij = g[j] + dyi * rt[j];
            gr[j] += st[j] * dyi;
            dvi += gij * kt[j];
            dsai += gij * bt[j];
            gk[j] += gij * vi;
            gb[j] += gij * sai;
            gd[j] += gij * sp[j];
            g[j] = gij;
          }
          dv[o + i] = dvi;
          if (rst) {  // S_{t-1} was replaced by 0: no path to it, to λ_t or to a_t
            memset(g, 0, sizeof(float) * N);
          } else {  // sa = S_{t-1} a:  ∂a_j += ∂sa_i S_{t-1,ij};  ∂S_{t-1} = ∂S_t diag(d) + ∂sa aᵀ
            SIMD
            for (int j = 0; j < N; j++) {
              ga[j] += dsai * sp[j];
              g[j] = g[j] * dt[j] + dsai * at_[j];
            }
          }
        }
        for (int j = 0; j < N; j++) {
          dr[o + j] = gr[j];
          dk[o + j] = gk[j];
          db[o + j] = gb[j];
          dw[o + j] = rst ? 0.f : gd[j] * dt[j];  // ∂λ = ∂d · d
          da[o + j] = rst ? 0.f : ga[j];
        }
      }
    }
    memcpy(ds0 + bh * NN, dS, sizeof(float) * NN);
  }
  free(buf);
  return 0;
}

#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_AVX512_64 1

static inline float hsum(__m512 x) { return _mm512_reduce_add_ps(x); }

// 64x64 transpose through scalar moves (once per snapshot; the cost is a few % of a span's work)
static inline void transpose64(const float* src, float* dst) {
  for (int i = 0; i < 64; i++)
    for (int j = 0; j < 64; j++) dst[j * 64 + i] = src[i * 64 + j];
}

// Forward, N = 64. X = Sᵀ (X[j][i] = S[i][j]); snapshots are stored in this transposed layout.
static int forward_avx512_64(int T, int H, int L, const float* r, const float* d, const float* k,
                             const float* v, const float* a, const float* b, const float* s0,
                             const uint8_t* reset, float* y, float* sT, float* snaps, int bh0, int bh1) {
  const int64_t NN = 64 * 64, n_snap = (T + L - 1) / L;
  float* X = aligned_alloc(64, sizeof(float) * NN);
  if (!X) return 1;
  for (int bh = bh0; bh < bh1; bh++) {
    const int bb = bh / H, hh = bh % H;
    transpose64(s0 + bh * NN, X);
    for (int t = 0; t < T; t++) {
      if (snaps && t % L == 0) memcpy(snaps + (bh * n_snap + t / L) * NN, X, sizeof(float) * NN);
      const int64_t o = at(bb, t, T, hh, H, 64);
      const float *rt = r + o, *dt = d + o, *kt = k + o, *vt = v + o, *at_ = a + o, *bt = b + o;
      if (is_reset(reset, bb, t, T)) memset(X, 0, sizeof(float) * NN);
      // sa = S a = Σ_j a_j X[j]: two interleaved accumulator sets halve the FMA dependency chain
      __m512 s[4], u[4];
      for (int c = 0; c < 4; c++) s[c] = u[c] = _mm512_setzero_ps();
      for (int j = 0; j < 64; j += 2) {
        const float* x = X + j * 64;
        const __m512 a0 = _mm512_set1_ps(at_[j]), a1 = _mm512_set1_ps(at_[j + 1]);
        for (int c = 0; c < 4; c++) {
          s[c] = _mm512_fmadd_ps(_mm512_load_ps(x + 16 * c), a0, s[c]);
          u[c] = _mm512_fmadd_ps(_mm512_load_ps(x + 64 + 16 * c), a1, u[c]);
        }
      }
      __m512 vv[4], yy[4];
      for (int c = 0; c < 4; c++) {
        s[c] = _mm512_add_ps(s[c], u[c]);
        vv[c] = _mm512_loadu_ps(vt + 16 * c);
        yy[c] = _mm512_setzero_ps();
      }
      // X[j] = X[j] d_j + sa b_j + v k_j;  y += X[j] r_j
      for (int j = 0; j < 64; j++) {
        float* x = X + j * 64;
        const __m512 dj = _mm512_set1_ps(dt[j]), bj = _mm512_set1_ps(bt[j]), kj = _mm512_set1_ps(kt[j]),
                     rj = _mm512_set1_ps(rt[j]);
        for (int c = 0; c < 4; c++) {
          const __m512 q = _mm512_fmadd_ps(_mm512_load_ps(x + 16 * c), dj,
                                           _mm512_fmadd_ps(s[c], bj, _mm512_mul_ps(vv[c], kj)));
          _mm512_store_ps(x + 16 * c, q);
          yy[c] = _mm512_fmadd_ps(q, rj, yy[c]);
        }
      }
      for (int c = 0; c < 4; c++) _mm512_storeu_ps(y + o + 16 * c, yy[c]);
    }
    transpose64(X, sT + bh * NN);
  }
  free(X);
  return 0;
}

// Row-layout forward step for the backward's recomputation (S[i][j], vectors over j); saves sa.
static inline void step_row64(const float* P, float* Q, int rst, const float* dt, const float* kt,
                              const float* vt, const float* at_, const float* bt, float* sa_out) {
  __m512 dd[4], kk[4], aa[4], bb[4];
  for (int c = 0; c < 4; c++) {
    dd[c] = _mm512_loadu_ps(dt + 16 * c);
    kk[c] = _mm512_loadu_ps(kt + 16 * c);
    aa[c] = _mm512_loadu_ps(at_ + 16 * c);
    bb[c] = _mm512_loadu_ps(bt + 16 * c);
  }
  for (int i = 0; i < 64; i++) {
    const float* p = P + i * 64;
    float* q = Q + i * 64;
    const __m512 vi = _mm512_set1_ps(vt[i]);
    if (rst) {
      for (int c = 0; c < 4; c++) _mm512_store_ps(q + 16 * c, _mm512_mul_ps(vi, kk[c]));
      sa_out[i] = 0.f;
      continue;
    }
    __m512 acc = _mm512_mul_ps(_mm512_load_ps(p), aa[0]);
    for (int c = 1; c < 4; c++) acc = _mm512_fmadd_ps(_mm512_load_ps(p + 16 * c), aa[c], acc);
    const float sa = hsum(acc);
    sa_out[i] = sa;
    const __m512 sav = _mm512_set1_ps(sa);
    for (int c = 0; c < 4; c++)
      _mm512_store_ps(q + 16 * c, _mm512_fmadd_ps(_mm512_load_ps(p + 16 * c), dd[c],
                                                   _mm512_fmadd_ps(sav, bb[c], _mm512_mul_ps(vi, kk[c]))));
  }
}

static int backward_avx512_64(int T, int H, int L, const float* r, const float* d, const float* k,
                              const float* v, const float* a, const float* b, const uint8_t* reset,
                              const float* snaps, const float* dy, const float* dsT, float* dr, float* dw,
                              float* dk, float* dv, float* da, float* db, float* ds0, int bh0, int bh1) {
  const int64_t NN = 64 * 64, n_snap = (T + L - 1) / L;
  float* buf = aligned_alloc(64, sizeof(float) * ((L + 2) * NN + (int64_t)L * 64));
  if (!buf) return 1;
  float *states = buf, *dS = states + (L + 1) * NN, *sa_buf = dS + NN;
  for (int bh = bh0; bh < bh1; bh++) {
    const int bb = bh / H, hh = bh % H;
    memcpy(dS, dsT + bh * NN, sizeof(float) * NN);
    for (int c = (int)n_snap - 1; c >= 0; c--) {
      const int t0 = c * L, t1 = (t0 + L < T) ? t0 + L : T;
      transpose64(snaps + (bh * n_snap + c) * NN, states);  // stored key-major by the forward
      for (int t = t0; t < t1; t++) {
        const int64_t o = at(bb, t, T, hh, H, 64), u = t - t0;
        step_row64(states + u * NN, states + (u + 1) * NN, is_reset(reset, bb, t, T), d + o, k + o, v + o,
                   a + o, b + o, sa_buf + u * 64);
      }
      for (int t = t1 - 1; t >= t0; t--) {
        const int64_t o = at(bb, t, T, hh, H, 64), u = t - t0;
        const int rst = is_reset(reset, bb, t, T);
        const float *St = states + (u + 1) * NN, *Sp = states + u * NN, *sa = sa_buf + u * 64;
        const float *rt = r + o, *dt = d + o, *kt = k + o, *vt = v + o, *at_ = a + o, *bt = b + o,
                    *dyt = dy + o;
        __m512 gr[4], gk[4], gb[4], gd[4], ga[4];
        for (int c = 0; c < 4; c++) gr[c] = gk[c] = gb[c] = gd[c] = ga[c] = _mm512_setzero_ps();
        for (int i = 0; i < 64; i++) {
          float* G = dS + i * 64;
          const float *st = St + i * 64, *sp = Sp + i * 64;
          const __m512 dyi = _mm512_set1_ps(dyt[i]), vi = _mm512_set1_ps(vt[i]), sai = _mm512_set1_ps(sa[i]);
          __m512 g[4], pv = _mm512_setzero_ps(), ps = _mm512_setzero_ps();
          // the same identities as the portable backward above, 16 lanes of j at a time
          for (int cc = 0; cc < 4; cc++) {
            g[cc] = _mm512_fmadd_ps(dyi, _mm512_loadu_ps(rt + 16 * cc), _mm512_load_ps(G + 16 * cc));
            gr[cc] = _mm512_fmadd_ps(_mm512_load_ps(st + 16 * cc), dyi, gr[cc]);
            pv = _mm512_fmadd_ps(g[cc], _mm512_loadu_ps(kt + 16 * cc), pv);
            ps = _mm512_fmadd_ps(g[cc], _mm512_loadu_ps(bt + 16 * cc), ps);
            gk[cc] = _mm512_fmadd_ps(g[cc], vi, gk[cc]);
            gb[cc] = _mm512_fmadd_ps(g[cc], sai, gb[cc]);
            gd[cc] = _mm512_fmadd_ps(g[cc], _mm512_load_ps(sp + 16 * cc), gd[cc]);
          }
          dv[o + i] = hsum(pv);
          if (rst) {
            for (int cc = 0; cc < 4; cc++) _mm512_store_ps(G + 16 * cc, _mm512_setzero_ps());
          } else {
            const __m512 dsai = _mm512_set1_ps(hsum(ps));
            for (int cc = 0; cc < 4; cc++) {
              ga[cc] = _mm512_fmadd_ps(dsai, _mm512_load_ps(sp + 16 * cc), ga[cc]);
              _mm512_store_ps(G + 16 * cc, _mm512_fmadd_ps(g[cc], _mm512_loadu_ps(dt + 16 * cc),
                                                           _mm512_mul_ps(dsai, _mm512_loadu_ps(at_ + 16 * cc))));
            }
          }
        }
        const __m512 keep = rst ? _mm512_setzero_ps() : _mm512_set1_ps(1.f);
        for (int c = 0; c < 4; c++) {
          _mm512_storeu_ps(dr + o + 16 * c, gr[c]);
          _mm512_storeu_ps(dk + o + 16 * c, gk[c]);
          _mm512_storeu_ps(db + o + 16 * c, gb[c]);
          _mm512_storeu_ps(dw + o + 16 * c, _mm512_mul_ps(keep, _mm512_mul_ps(gd[c], _mm512_loadu_ps(dt + 16 * c))));
          _mm512_storeu_ps(da + o + 16 * c, _mm512_mul_ps(keep, ga[c]));
        }
      }
    }
    memcpy(ds0 + bh * NN, dS, sizeof(float) * NN);
  }
  free(buf);
  return 0;
}
#endif

// ------------------------------------------------------------------------------------ entry points
// snaps: [B*H, ceil(T/L), N, N] or NULL (no backward will follow); snapshot c = state entering token c*L
// (before that token's reset is applied), in the layout of the implementation that wrote it (both entry
// points choose by the same test, so a forward and its backward always agree).
static int forward_range(int B, int T, int H, int N, int L, const float* r, const float* d, const float* k,
                         const float* v, const float* a, const float* b, const float* s0, const uint8_t* reset,
                         float* y, float* sT, float* snaps, int bh0, int bh1) {
#ifdef HAVE_AVX512_64
  if (N == 64) return forward_avx512_64(T, H, L, r, d, k, v, a, b, s0, reset, y, sT, snaps, bh0, bh1);
#endif
  return forward_generic(B, T, H, N, L, r, d, k, v, a, b, s0, reset, y, sT, snaps, bh0, bh1);
}

static int backward_range(int B, int T, int H, int N, int L, const float* r, const float* d, const float* k,
                          const float* v, const float* a, const float* b, const uint8_t* reset,
                          const float* snaps, const float* dy, const float* dsT, float* dr, float* dw,
                          float* dk, float* dv, float* da, float* db, float* ds0, int bh0, int bh1) {
#ifdef HAVE_AVX512_64
  if (N == 64)
    return backward_avx512_64(T, H, L, r, d, k, v, a, b, reset, snaps, dy, dsT, dr, dw, dk, dv, da, db, ds0,
                              bh0, bh1);
#endif
  return backward_generic(B, T, H, N, L, r, d, k, v, a, b, reset, snaps, dy, dsT, dr, dw, dk, dv, da, db,
                          ds0, bh0, bh1);
}

int wkv7_forward(int B, int T, int H, int N, int L, const float* r, const float* d, const float* k,
                 const float* v, const float* a, const float* b, const float* s0, const uint8_t* reset,
                 float* y, float* sT, float* snaps, int nparts, int part) {
  const int64_t BH = (int64_t)B * H;
  RUN_PARTS(nparts, part,
            forward_range(B, T, H, N, L, r, d, k, v, a, b, s0, reset, y, sT, snaps,
                          (int)part_lo(BH, nparts, p), (int)part_lo(BH, nparts, p + 1)));
}

int wkv7_backward(int B, int T, int H, int N, int L, const float* r, const float* d, const float* k,
                  const float* v, const float* a, const float* b, const uint8_t* reset, const float* snaps,
                  const float* dy, const float* dsT, float* dr, float* dw, float* dk, float* dv, float* da,
                  float* db, float* ds0, int nparts, int part) {
  const int64_t BH = (int64_t)B * H;
  RUN_PARTS(nparts, part,
            backward_range(B, T, H, N, L, r, d, k, v, a, b, reset, snaps, dy, dsT, dr, dw, dk, dv, da, db, ds0,
                           (int)part_lo(BH, nparts, p), (int)part_lo(BH, nparts, p + 1)));
}

// 1 when this build runs `part < 0` calls on OpenMP threads, 0 when they would run in sequence.
int rwkv_cpu_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}
