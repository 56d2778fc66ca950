// torch binding of the RWKV-7 state kernels (wkv7_state.cu). Built lazily by
// rwkv/ops/build.py with torch.utils.cpp_extension.load; needs a CUDA build of torch.
// The Python wrapper pads T, converts dtypes and makes tensors contiguous; this file re-checks
// everything so that a wrong call fails with a message instead of reading out of bounds.

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "wkv7_state.h"

namespace {

int kernel_dtype(const at::Tensor& x) {
  if (x.scalar_type() == at::kFloat) return WKV7_FP32;
  if (x.scalar_type() == at::kBFloat16) return WKV7_BF16;
  TORCH_CHECK(false, "wkv7_state: inputs must be float32 or bfloat16, got ", x.scalar_type());
  return -1;
}

void check_btHN(const at::Tensor& x, const char* name, const at::Tensor& ref) {
  TORCH_CHECK(x.is_cuda(), "wkv7_state: ", name, " must be a CUDA tensor");
  TORCH_CHECK(x.device() == ref.device(), "wkv7_state: ", name, " is on ", x.device(), ", expected ",
              ref.device());
  TORCH_CHECK(x.is_contiguous(), "wkv7_state: ", name, " must be contiguous");
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), "wkv7_state: ", name, " has dtype ",
              x.scalar_type(), ", expected ", ref.scalar_type());
  TORCH_CHECK(x.sizes() == ref.sizes(), "wkv7_state: ", name, " has shape ", x.sizes(),
              ", expected ", ref.sizes());
}

void check_f32(const at::Tensor& x, const char* name, at::IntArrayRef shape, const at::Tensor& ref) {
  TORCH_CHECK(x.is_cuda() && x.device() == ref.device(), "wkv7_state: ", name, " must be on ",
              ref.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "wkv7_state: ", name, " must be float32");
  TORCH_CHECK(x.is_contiguous(), "wkv7_state: ", name, " must be contiguous");
  TORCH_CHECK(x.sizes() == shape, "wkv7_state: ", name, " has shape ", x.sizes(), ", expected ", shape);
}

// Returns B, T, H after checking r's shape against the compiled head size and snapshot interval.
std::vector<int64_t> dims(const at::Tensor& r) {
  TORCH_CHECK(r.dim() == 4, "wkv7_state: inputs must be [B, T, H, N], got ", r.sizes());
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  TORCH_CHECK(N == wkv7_state_head_size(), "wkv7_state: head size ", N,
              " is not supported; the kernel is compiled for head size ", wkv7_state_head_size(),
              " (-D_N_). Use backend='chunked' for other head sizes.");
  TORCH_CHECK(T > 0 && T % wkv7_state_snapshot_interval() == 0, "wkv7_state: T = ", T,
              " must be a positive multiple of ", wkv7_state_snapshot_interval(), " (pad in Python)");
  TORCH_CHECK(B <= 65535, "wkv7_state: batch ", B, " exceeds the grid limit 65535");
  return {B, T, H, N};
}

const uint8_t* reset_ptr(const c10::optional<at::Tensor>& reset, const at::Tensor& ref, int64_t B,
                         int64_t T) {
  if (!reset.has_value()) return nullptr;
  const at::Tensor& m = *reset;
  TORCH_CHECK(m.is_cuda() && m.device() == ref.device(), "wkv7_state: reset must be on ", ref.device());
  TORCH_CHECK(m.scalar_type() == at::kBool && m.is_contiguous(),
              "wkv7_state: reset must be a contiguous bool tensor");
  TORCH_CHECK(m.dim() == 2 && m.size(0) == B && m.size(1) == T, "wkv7_state: reset has shape ",
              m.sizes(), ", expected [", B, ", ", T, "]");
  return reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());
}

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "wkv7_state ", what, " failed: ", wkv7_state_error_string(code));
}

// Returns {y, sT, snaps, sa}; snaps and sa are saved for backward.
std::vector<at::Tensor> forward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                at::Tensor b, at::Tensor s0, c10::optional<at::Tensor> reset) {
  const auto d = dims(r);
  const int64_t B = d[0], T = d[1], H = d[2], N = d[3];
  check_btHN(r, "r", r);
  check_btHN(w, "w", r);
  check_btHN(k, "k", r);
  check_btHN(v, "v", r);
  check_btHN(a, "a", r);
  check_btHN(b, "b", r);
  check_f32(s0, "s0", {B, H, N, N}, r);
  const uint8_t* rs = reset_ptr(reset, r, B, T);
  const int dt = kernel_dtype(r);

  const at::cuda::CUDAGuard guard(r.device());
  const auto f32 = r.options().dtype(at::kFloat);
  at::Tensor y = at::empty_like(r);
  at::Tensor snaps = at::empty({B, H, T / wkv7_state_snapshot_interval(), N, N}, f32);
  at::Tensor sa = at::empty({B, T, H, N}, f32);
  at::Tensor sT = at::empty({B, H, N, N}, f32);
  check_launch(wkv7_state_forward(dt, B, T, H, r.data_ptr(), w.data_ptr(), k.data_ptr(),
                                  v.data_ptr(), a.data_ptr(), b.data_ptr(), s0.data_ptr<float>(), rs,
                                  y.data_ptr(), snaps.data_ptr<float>(), sa.data_ptr<float>(),
                                  sT.data_ptr<float>(), at::cuda::getCurrentCUDAStream().stream()),
               "forward");
  return {y, sT, snaps, sa};
}

// Returns {dr, dw, dk, dv, da, db, ds0}; dw is the gradient with respect to the log-decay.
std::vector<at::Tensor> backward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor a,
                                 at::Tensor b, at::Tensor dy, at::Tensor s0,
                                 c10::optional<at::Tensor> reset, at::Tensor snaps, at::Tensor sa,
                                 at::Tensor dsT) {
  const auto d = dims(r);
  const int64_t B = d[0], T = d[1], H = d[2], N = d[3];
  check_btHN(r, "r", r);
  check_btHN(w, "w", r);
  check_btHN(k, "k", r);
  check_btHN(v, "v", r);
  check_btHN(a, "a", r);
  check_btHN(b, "b", r);
  check_btHN(dy, "dy", r);
  check_f32(s0, "s0", {B, H, N, N}, r);
  check_f32(snaps, "snaps", {B, H, T / wkv7_state_snapshot_interval(), N, N}, r);
  check_f32(sa, "sa", {B, T, H, N}, r);
  check_f32(dsT, "dsT", {B, H, N, N}, r);
  const uint8_t* rs = reset_ptr(reset, r, B, T);
  const int dt = kernel_dtype(r);

  const at::cuda::CUDAGuard guard(r.device());
  at::Tensor dr = at::empty_like(r), dw = at::empty_like(r), dk = at::empty_like(r);
  at::Tensor dv = at::empty_like(r), da = at::empty_like(r), db = at::empty_like(r);
  at::Tensor ds0 = at::empty({B, H, N, N}, r.options().dtype(at::kFloat));
  check_launch(wkv7_state_backward(dt, B, T, H, r.data_ptr(), w.data_ptr(), k.data_ptr(),
                                   v.data_ptr(), a.data_ptr(), b.data_ptr(), dy.data_ptr(),
                                   s0.data_ptr<float>(), rs, snaps.data_ptr<float>(),
                                   sa.data_ptr<float>(), dsT.data_ptr<float>(), dr.data_ptr(),
                                   dw.data_ptr(), dk.data_ptr(), dv.data_ptr(), da.data_ptr(),
                                   db.data_ptr(), ds0.data_ptr<float>(),
                                   at::cuda::getCurrentCUDAStream().stream()),
               "backward");
  return {dr, dw, dk, dv, da, db, ds0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "RWKV-7 WKV training kernels with initial/final state (rwkv infctx trainer, rwkv/ops/csrc/)";
  m.def("forward", &forward, "wkv7_state forward -> [y, sT, snaps, sa]");
  m.def("backward", &backward, "wkv7_state backward -> [dr, dw, dk, dv, da, db, ds0]");
  m.def("head_size", &wkv7_state_head_size);
  m.def("snapshot_interval", &wkv7_state_snapshot_interval);
}
