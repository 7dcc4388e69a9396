// Implementation of torch_shim.h.
#include "torch_shim.h"
#include "shim_util.h"

#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/version.h>

#include <dlfcn.h>
#include <cstdlib>

using mb::collect;
using mb::dup;
using mb::guarded;

namespace {

// Calls back into Rust once autograd has accumulated a parameter's gradient, as PyTorch's
// Reducer learns that a DDP bucket is ready.
struct GradReadyHook : torch::autograd::PostAccumulateGradHook {
  mb_grad_ready_fn fn;
  void* ctx;
  size_t index;
  GradReadyHook(mb_grad_ready_fn f, void* c, size_t i) : fn(f), ctx(c), index(i) {}
  void operator()(const torch::autograd::Variable&) override { fn(ctx, index); }
};

}  // namespace

extern "C" {

void mb_string_free(char* s) { std::free(s); }

const char* mb_torch_version(void) { return TORCH_VERSION; }

char* mb_torch_config(void) {
  try {
    return dup(at::show_config());
  } catch (...) {
    return dup("");
  }
}

// The state packs whether autocast was on and its previous dtype (bf16 or not).
int mb_autocast_enter(int bf16) {
  int state = (at::autocast::is_autocast_enabled(at::kCUDA) ? 1 : 0) |
              (at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16 ? 2 : 0);
  at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::increment_nesting();
  return state;
}

void mb_autocast_exit(int state) {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(at::kCUDA, (state & 1) != 0);
  at::autocast::set_autocast_dtype(at::kCUDA, (state & 2) != 0 ? at::kBFloat16 : at::kHalf);
}

int mb_cuda_capability(int device, int* major, int* minor) {
  // CUDA driver API (cuda.h): cuInit, cuDeviceGet, cuDeviceGetAttribute; the attributes
  // COMPUTE_CAPABILITY_MAJOR = 75 and _MINOR = 76.
  using init_fn = int (*)(unsigned);
  using get_fn = int (*)(int*, int);
  using attr_fn = int (*)(int*, int, int);
  static void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return -1;
  auto init = reinterpret_cast<init_fn>(dlsym(lib, "cuInit"));
  auto get = reinterpret_cast<get_fn>(dlsym(lib, "cuDeviceGet"));
  auto attr = reinterpret_cast<attr_fn>(dlsym(lib, "cuDeviceGetAttribute"));
  int handle = 0;
  if (init == nullptr || get == nullptr || attr == nullptr || init(0) != 0 || get(&handle, device) != 0) return -1;
  if (attr(major, 75, handle) != 0 || attr(minor, 76, handle) != 0) return -1;
  return 0;
}

char* mb_fused_adamw(mb_tensor* params, mb_tensor* grads, mb_tensor* exp_avgs, mb_tensor* exp_avg_sqs,
                     mb_tensor* steps, size_t n, double lr, double beta1, double beta2,
                     double weight_decay, double eps) {
  return guarded([&] {
    if (n == 0) return;
    auto step_counts = collect(steps, n);
    at::_foreach_add_(step_counts, 1);
    at::_fused_adamw_(collect(params, n), collect(grads, n), collect(exp_avgs, n), collect(exp_avg_sqs, n), {},
                      step_counts, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
  });
}

char* mb_clip_grad_norm(mb_tensor* grads, size_t n, double max_norm, mb_tensor* total_norm) {
  return guarded([&] {
    auto list = collect(grads, n);
    at::Tensor total = n == 0 ? at::zeros({}) : at::linalg_vector_norm(at::stack(at::_foreach_norm(list, 2)), 2);
    if (n > 0) {
      at::Tensor coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
      at::_foreach_mul_(list, coef);
    }
    *total_norm = new at::Tensor(std::move(total));
  });
}

char* mb_grads_reset(mb_tensor* params, size_t n) {
  return guarded([&] {
    for (size_t i = 0; i < n; ++i) static_cast<at::Tensor*>(params[i])->mutable_grad().reset();
  });
}

char* mb_register_grad_ready(mb_tensor param, mb_grad_ready_fn fn, void* ctx, size_t index) {
  return guarded([&] {
    const at::Tensor& t = *static_cast<at::Tensor*>(param);
    torch::autograd::impl::set_post_acc_grad_hooks(t, std::make_unique<GradReadyHook>(fn, ctx, index));
  });
}

char* mb_clear_grad_ready(mb_tensor param) {
  return guarded([&] {
    const at::Tensor& t = *static_cast<at::Tensor*>(param);
    torch::autograd::impl::set_post_acc_grad_hooks(t, nullptr);
  });
}

}  // extern "C"
