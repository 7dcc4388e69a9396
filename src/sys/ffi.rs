//! Raw declarations of csrc/torch_shim.h. Use the safe functions in the parent module instead.

use std::os::raw::{c_char, c_int};

pub type MbTensor = *mut torch_sys::C_tensor;

pub type MbGradReadyFn = unsafe extern "C" fn(ctx: *mut std::ffi::c_void, index: usize);

extern "C" {
    pub fn mb_string_free(s: *mut c_char);
    pub fn mb_torch_version() -> *const c_char;
    pub fn mb_torch_config() -> *mut c_char;
    pub fn mb_autocast_enter(bf16: c_int) -> c_int;
    pub fn mb_autocast_exit(state: c_int);
    pub fn mb_cuda_capability(device: c_int, major: *mut c_int, minor: *mut c_int) -> c_int;
    pub fn mb_fused_adamw(
        params: *mut MbTensor,
        grads: *mut MbTensor,
        exp_avgs: *mut MbTensor,
        exp_avg_sqs: *mut MbTensor,
        steps: *mut MbTensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> *mut c_char;
    pub fn mb_clip_grad_norm(grads: *mut MbTensor, n: usize, max_norm: f64, total_norm: *mut MbTensor) -> *mut c_char;
    pub fn mb_grads_reset(params: *mut MbTensor, n: usize) -> *mut c_char;
    pub fn mb_register_grad_ready(
        param: MbTensor,
        f: MbGradReadyFn,
        ctx: *mut std::ffi::c_void,
        index: usize,
    ) -> *mut c_char;
    pub fn mb_clear_grad_ready(param: MbTensor) -> *mut c_char;
}
