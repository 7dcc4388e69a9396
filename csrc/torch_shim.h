// C ABI over the parts of libtorch that tch does not expose and that have nothing to do with
// distribution: build and device facts, autocast's CUDA dtype, the fused multi-tensor
// kernels the optimizer step uses (torch.optim.AdamW(fused=True), clip_grad_norm_'s foreach
// path), and post-accumulate-grad hooks. Tensors arrive as `at::Tensor*` (tch's `Tensor::as_mut_ptr()`).
//
// Every fallible call returns NULL on success or a heap-allocated error message that the
// caller releases with mb_string_free; no C++ exception ever crosses this boundary.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void* mb_tensor; /* at::Tensor* */

void mb_string_free(char* s);
/* The libtorch version the shim was compiled against, e.g. "2.11.0". Static storage. */
const char* mb_torch_version(void);
/* torch.__config__.show(): build settings, and with a visible GPU the CUDA runtime and the
   architectures the kernels were compiled for. malloc'd, released with mb_string_free. */
char* mb_torch_config(void);
/* Enters CUDA autocast to bf16 (nonzero) or fp16 as torch.autocast("cuda", dtype) does, and
   returns the state to pass to mb_autocast_exit. */
int mb_autocast_enter(int bf16);
void mb_autocast_exit(int state);
/* A CUDA device's compute capability (CUDA driver API, loaded at run time, so every build
   reads it). Returns 0 and sets major/minor, or -1 when there is no driver or no such device. */
int mb_cuda_capability(int device, int* major, int* minor);

/* One torch.optim.AdamW(fused=True) update of `n` parameters: each step count (a float
   tensor on the parameter's device) is advanced by one first, as the optimizer does. */
char* mb_fused_adamw(mb_tensor* params, mb_tensor* grads, mb_tensor* exp_avgs, mb_tensor* exp_avg_sqs,
                     mb_tensor* steps, size_t n, double lr, double beta1, double beta2,
                     double weight_decay, double eps);
/* torch.nn.utils.clip_grad_norm_ over `n` gradients with the foreach kernels and without a
   host synchronisation: *total_norm receives the norm before clipping (a new 0-dim tensor). */
char* mb_clip_grad_norm(mb_tensor* grads, size_t n, double max_norm, mb_tensor* total_norm);
/* Sets each tensor's .grad to undefined (zero_grad(set_to_none=True)). */
char* mb_grads_reset(mb_tensor* params, size_t n);

/* Called after autograd accumulated the gradient of the parameter registered with `index`;
   it must not throw or unwind. */
typedef void (*mb_grad_ready_fn)(void* ctx, size_t index);
/* Installs (replacing any) the post-accumulate-grad hook of a leaf parameter; `ctx` must stay
   valid until mb_clear_grad_ready. */
char* mb_register_grad_ready(mb_tensor param, mb_grad_ready_fn fn, void* ctx, size_t index);
char* mb_clear_grad_ready(mb_tensor param);

#ifdef __cplusplus
}
#endif
