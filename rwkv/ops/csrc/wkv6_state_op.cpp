// torch binding of the RWKV-6 state kernels (wkv6_state.cu). Built lazily by
// rwkv/ops/build.py with torch.utils.cpp_extension.load; needs a CUDA build of torch.
// The Python wrapper converts dtypes and makes tensors contiguous; this file re-checks everything.

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "wkv6_state.h"

namespace {

int kernel_dtype(const at::Tensor& x) {
  if (x.scalar_type() == at::kFloat) return WKV6_FP32;
  if (x.scalar_type() == at::kBFloat16) return WKV6_BF16;
  TORCH_CHECK(false, "wkv6_state: r, k, v must be float32 or bfloat16, got ", x.scalar_type());
  return -1;
}

void check(const at::Tensor& x, const char* name, at::IntArrayRef shape, const at::Tensor& ref,
           at::ScalarType dtype) {
  TORCH_CHECK(x.is_cuda() && x.device() == ref.device(), "wkv6_state: ", name, " must be on ",
              ref.device());
  TORCH_CHECK(x.is_contiguous(), "wkv6_state: ", name, " must be contiguous");
  TORCH_CHECK(x.scalar_type() == dtype, "wkv6_state: ", name, " has dtype ", x.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(x.sizes() == shape, "wkv6_state: ", name, " has shape ", x.sizes(), ", expected ", shape);
}

std::vector<int64_t> dims(const at::Tensor& r) {
  TORCH_CHECK(r.dim() == 4, "wkv6_state: inputs must be [B, T, H, N], got ", r.sizes());
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  TORCH_CHECK(N == wkv6_state_head_size(), "wkv6_state: head size ", N,
              " is not supported; the kernel is compiled for head size ", wkv6_state_head_size(),
              " (-D_N_). Use backend='chunked' for other head sizes.");
  TORCH_CHECK(T > 0 && B > 0 && B <= 65535, "wkv6_state: bad shape ", r.sizes());
  return {B, T, H, N};
}

const uint8_t* reset_ptr(const c10::optional<at::Tensor>& reset, const at::Tensor& ref, int64_t B,
                         int64_t T) {
  if (!reset.has_value()) return nullptr;
  check(*reset, "reset", {B, T}, ref, at::kBool);
  return reinterpret_cast<const uint8_t*>(reset->data_ptr<bool>());
}

void check_launch(int code, const char* what) {
  TORCH_CHECK(code == 0, "wkv6_state ", what, " failed: ", wkv6_state_error_string(code));
}

// Returns {y, sT}.
std::vector<at::Tensor> forward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor u,
                                at::Tensor s0, c10::optional<at::Tensor> reset) {
  const auto d = dims(r);
  const int64_t B = d[0], T = d[1], H = d[2], N = d[3];
  TORCH_CHECK(r.is_cuda(), "wkv6_state: r must be a CUDA tensor");
  check(r, "r", r.sizes(), r, r.scalar_type());
  check(k, "k", r.sizes(), r, r.scalar_type());
  check(v, "v", r.sizes(), r, r.scalar_type());
  check(w, "w", r.sizes(), r, at::kFloat);
  check(u, "u", {H, N}, r, at::kFloat);
  check(s0, "s0", {B, H, N, N}, r, at::kFloat);
  const uint8_t* rs = reset_ptr(reset, r, B, T);
  const int dt = kernel_dtype(r);

  const at::cuda::CUDAGuard guard(r.device());
  at::Tensor y = at::empty_like(r);
  at::Tensor sT = at::empty({B, H, N, N}, r.options().dtype(at::kFloat));
  check_launch(wkv6_state_forward(dt, B, T, H, r.data_ptr(), w.data_ptr<float>(), k.data_ptr(),
                                  v.data_ptr(), u.data_ptr<float>(), s0.data_ptr<float>(), rs,
                                  y.data_ptr(), sT.data_ptr<float>(),
                                  at::cuda::getCurrentCUDAStream().stream()),
               "forward");
  return {y, sT};
}

// Returns {dr, dw, dk, dv, du [B,H,N] (sum over B in the caller), ds0}.
std::vector<at::Tensor> backward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v, at::Tensor u,
                                 at::Tensor dy, at::Tensor s0, c10::optional<at::Tensor> reset,
                                 at::Tensor dsT) {
  const auto d = dims(r);
  const int64_t B = d[0], T = d[1], H = d[2], N = d[3];
  TORCH_CHECK(r.is_cuda(), "wkv6_state: r must be a CUDA tensor");
  check(r, "r", r.sizes(), r, r.scalar_type());
  check(k, "k", r.sizes(), r, r.scalar_type());
  check(v, "v", r.sizes(), r, r.scalar_type());
  check(dy, "dy", r.sizes(), r, r.scalar_type());
  check(w, "w", r.sizes(), r, at::kFloat);
  check(u, "u", {H, N}, r, at::kFloat);
  check(s0, "s0", {B, H, N, N}, r, at::kFloat);
  check(dsT, "dsT", {B, H, N, N}, r, at::kFloat);
  const uint8_t* rs = reset_ptr(reset, r, B, T);
  const int dt = kernel_dtype(r);

  const at::cuda::CUDAGuard guard(r.device());
  const auto f32 = r.options().dtype(at::kFloat);
  at::Tensor q = at::empty({B, T, H, N}, f32);
  at::Tensor dr = at::empty_like(r), dk = at::empty_like(r), dv = at::empty_like(r);
  at::Tensor dw = at::empty({B, T, H, N}, f32);
  at::Tensor du = at::empty({B, H, N}, f32);
  at::Tensor ds0 = at::empty({B, H, N, N}, f32);
  check_launch(wkv6_state_backward(dt, B, T, H, r.data_ptr(), w.data_ptr<float>(), k.data_ptr(),
                                   v.data_ptr(), u.data_ptr<float>(), dy.data_ptr(),
                                   s0.data_ptr<float>(), rs, dsT.data_ptr<float>(),
                                   q.data_ptr<float>(), dr.data_ptr(), dw.data_ptr<float>(),
                                   dk.data_ptr(), dv.data_ptr(), du.data_ptr<float>(),
                                   ds0.data_ptr<float>(), at::cuda::getCurrentCUDAStream().stream()),
               "backward");
  return {dr, dw, dk, dv, du, ds0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "RWKV-6 WKV training kernels with initial/final state (rwkv infctx trainer, rwkv/ops/csrc/)";
  m.def("forward", &forward, "wkv6_state forward -> [y, sT]");
  m.def("backward", &backward, "wkv6_state backward -> [dr, dw, dk, dv, du, ds0]");
  m.def("head_size", &wkv6_state_head_size);
}
