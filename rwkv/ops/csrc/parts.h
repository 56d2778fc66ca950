// Shared by the C kernels: the vector-loop pragmas, and work splitting: an op's independent units (the (b, h) pairs of WKV-7, the
// (b, t) rows of the mixes) are cut into `nparts` contiguous ranges, part p = [total·p/n, total·(p+1)/n).
// Every exported kernel takes (nparts, part): part ≥ 0 runs that one range on the calling thread (the
// Python thread-pool fallback), part < 0 runs all of them, in parallel when built with OpenMP.
// Why OpenMP: torch's own libgomp.so.1 is already loaded when this library is, so the team is torch's
// intra-op pool. A separate pool (Python threads) competes with torch's workers, which spin for a while
// after each op: measured +3.5 ms on a 5 ms WKV-7 forward right after a torch op (machine B).
// The ranges depend only on (total, nparts), never on timing, so results are reproducible.
#ifndef RWKV_PARTS_H
#define RWKV_PARTS_H

#include <stdint.h>

#define PRAGMA(x) _Pragma(#x)
// vector loops and reductions (-fopenmp-simd; no OpenMP runtime needed for these)
#define SIMD PRAGMA(omp simd)
#define SIMD_SUM(x) PRAGMA(omp simd reduction(+ : x))
#define SIMD_SUM2(x, y) PRAGMA(omp simd reduction(+ : x, y))

static inline int64_t part_lo(int64_t total, int nparts, int p) { return total * p / nparts; }

#define RUN_PARTS(nparts, part, CALL)                                                        \
  do {                                                                                       \
    if ((part) >= 0) {                                                                       \
      const int p = (part);                                                                  \
      return (CALL);                                                                         \
    }                                                                                        \
    int err = 0;                                                                             \
    PRAGMA(omp parallel for num_threads(nparts) schedule(static, 1) reduction(| : err))     \
    for (int p = 0; p < (nparts); p++) err |= (CALL);                                        \
    return err;                                                                              \
  } while (0)

#endif
