//! What libtorch offers beyond tch, through csrc/torch_shim: build and device facts, autocast's
//! CUDA dtype, the fused multi-tensor kernels of the optimizer step, and gradient hooks. The
//! distributed half of the shim is `crate::dist`.

pub(crate) mod ffi;
mod grad_hooks;

pub use grad_hooks::GradHooks;

use crate::error::{Error, Result};
use std::ffi::CStr;
use std::os::raw::c_char;
use tch::Tensor;

/// Takes an owned message returned by the shim (NULL means success).
pub(crate) fn take_error(err: *mut c_char) -> Option<String> {
    if err.is_null() {
        return None;
    }
    // SAFETY: non-NULL results are malloc'd NUL-terminated strings that we now own.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { ffi::mb_string_free(err) };
    Some(message)
}

fn check(err: *mut c_char) -> Result<()> {
    match take_error(err) {
        None => Ok(()),
        Some(message) => Err(Error::Torch(tch::TchError::Torch(message))),
    }
}

/// The libtorch version whose headers the shim was compiled against.
pub fn torch_version() -> String {
    // SAFETY: the shim returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::mb_torch_version()) }.to_string_lossy().into_owned()
}

/// torch.__config__.show(): build settings and, with a visible GPU, the CUDA runtime and the
/// GPU architectures the kernels were compiled for.
pub fn torch_config() -> String {
    // SAFETY: the shim returns an owned string (never NULL unless out of memory).
    let raw = unsafe { ffi::mb_torch_config() };
    take_error(raw).unwrap_or_default()
}

/// Runs `f` under CUDA autocast to bf16 (else fp16), as `with torch.autocast("cuda", dtype)`;
/// the previous autocast state comes back afterwards, also when `f` panics.
pub fn cuda_autocast<T>(bf16: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(std::os::raw::c_int);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the thread-local state that mb_autocast_enter returned.
            unsafe { ffi::mb_autocast_exit(self.0) }
        }
    }
    // SAFETY: sets thread-local autocast settings in libtorch.
    let _restore = Restore(unsafe { ffi::mb_autocast_enter(bf16.into()) });
    f()
}

/// The compute capability (major, minor) of CUDA device `n`, read from the driver; None
/// without a driver or such a device.
pub fn cuda_capability(n: usize) -> Option<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the shim writes two ints and reports failure by its return value.
    let status = unsafe { ffi::mb_cuda_capability(n as i32, &mut major, &mut minor) };
    (status == 0).then_some((major, minor))
}

fn raw(tensors: &[&Tensor]) -> Vec<ffi::MbTensor> {
    tensors.iter().map(|t| t.as_ptr() as ffi::MbTensor).collect()
}

/// One AdamW step per torch.optim.AdamW(fused=True) over parameters with their gradients,
/// moments and step counts (float tensors on the parameters' device, advanced by one here).
pub struct AdamWGroup<'a> {
    pub params: Vec<&'a Tensor>,
    pub grads: Vec<&'a Tensor>,
    pub exp_avgs: Vec<&'a Tensor>,
    pub exp_avg_sqs: Vec<&'a Tensor>,
    pub steps: Vec<&'a Tensor>,
}

/// AdamW's hyper-parameters for one update.
#[derive(Clone, Copy, Debug)]
pub struct AdamWHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

pub fn fused_adamw(group: &AdamWGroup, h: AdamWHyper) -> Result<()> {
    let n = group.params.len();
    let lists = [&group.grads, &group.exp_avgs, &group.exp_avg_sqs, &group.steps];
    if lists.iter().any(|l| l.len() != n) {
        return Err(Error::Torch(tch::TchError::Shape(
            "fused AdamW: parameter, gradient, moment and step lists differ in length".into(),
        )));
    }
    let (mut p, mut g, mut m, mut v, mut s) =
        (raw(&group.params), raw(&group.grads), raw(&group.exp_avgs), raw(&group.exp_avg_sqs), raw(&group.steps));
    // SAFETY: every pointer is a live at::Tensor borrowed for the duration of the call.
    check(unsafe {
        ffi::mb_fused_adamw(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            s.as_mut_ptr(),
            n,
            h.lr,
            h.beta1,
            h.beta2,
            h.weight_decay,
            h.eps,
        )
    })
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm`, as
/// torch.nn.utils.clip_grad_norm_; returns the norm before clipping as a 0-dim tensor on the
/// gradients' device, without waiting for it.
pub fn clip_grad_norm(grads: &[&Tensor], max_norm: f64) -> Result<Tensor> {
    let mut g = raw(grads);
    let mut total: ffi::MbTensor = std::ptr::null_mut();
    // SAFETY: live tensors in; on success `total` is a new at::Tensor* that we own.
    check(unsafe { ffi::mb_clip_grad_norm(g.as_mut_ptr(), g.len(), max_norm, &mut total) })?;
    // SAFETY: ownership of the heap at::Tensor passes to tch, which frees it on drop.
    Ok(unsafe { Tensor::from_ptr(total) })
}

/// Drops the gradients of `params` (zero_grad(set_to_none=True)): the next backward writes
/// fresh ones instead of adding into zeroed buffers.
pub fn reset_grads(params: &[&Tensor]) -> Result<()> {
    let mut p = raw(params);
    // SAFETY: live tensors; resetting `.grad` of a leaf is always valid.
    check(unsafe { ffi::mb_grads_reset(p.as_mut_ptr(), p.len()) })
}
