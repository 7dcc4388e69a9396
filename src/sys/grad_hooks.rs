//! Post-accumulate-grad hooks (`Tensor.register_post_accumulate_grad_hook`): a callback that
//! autograd runs each time it has accumulated a parameter's gradient, as DDP's Reducer uses
//! them to start a bucket's all-reduce while backward still runs.

use super::{check, ffi};
use crate::error::{Error, Result};
use std::sync::Mutex;
use tch::Tensor;

type Callback = dyn Fn(usize) + Send + Sync;

struct Shared {
    callback: Box<Callback>,
    /// The first panic of `callback` not yet reported.
    panic: Mutex<Option<String>>,
}

/// Hooks on a list of parameters calling one callback with the parameter's index. They stay
/// installed while this value lives and are removed when it is dropped (as PyTorch's
/// `RemovableHandle`). A panic of the callback cannot unwind into autograd: it is kept and
/// returned by `check`.
pub struct GradHooks {
    params: Vec<Tensor>,
    shared: *mut Shared,
}

// SAFETY: `shared` is only read through shared references (its mutable part is behind a
// mutex), and the callback itself is Send + Sync.
unsafe impl Send for GradHooks {}

impl GradHooks {
    /// Installs a hook on each of `params` (replacing any hook of this kind they had):
    /// `callback(i)` runs once autograd has accumulated `params[i]`'s gradient, on whichever
    /// thread runs that part of backward.
    pub fn install(params: &[Tensor], callback: impl Fn(usize) + Send + Sync + 'static) -> Result<GradHooks> {
        let shared = Box::into_raw(Box::new(Shared { callback: Box::new(callback), panic: Mutex::new(None) }));
        let mut hooks = GradHooks { params: Vec::with_capacity(params.len()), shared };
        for (i, p) in params.iter().enumerate() {
            let mut handle = p.shallow_clone();
            // SAFETY: a live tensor; `shared` outlives the hook, which Drop removes before
            // freeing it. On error, the hooks installed so far are removed by Drop.
            check(unsafe { ffi::mb_register_grad_ready(handle.as_mut_ptr(), trampoline, shared.cast(), i) })?;
            hooks.params.push(handle);
        }
        Ok(hooks)
    }

    /// An error when the callback panicked since the last call.
    pub fn check(&self) -> Result<()> {
        // SAFETY: `shared` lives until Drop.
        let shared = unsafe { &*self.shared };
        match shared.panic.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(message) => Err(Error::Hook(message)),
            None => Ok(()),
        }
    }
}

impl Drop for GradHooks {
    fn drop(&mut self) {
        for p in &mut self.params {
            // SAFETY: a live tensor; clearing a hook never fails for a defined tensor, and a
            // failure leaves nothing to free here.
            let _ = check(unsafe { ffi::mb_clear_grad_ready(p.as_mut_ptr()) });
        }
        // SAFETY: created by Box::into_raw in `install`; no hook refers to it any more.
        drop(unsafe { Box::from_raw(self.shared) });
    }
}

unsafe extern "C" fn trampoline(ctx: *mut std::ffi::c_void, index: usize) {
    // SAFETY: ctx is the `Shared` of a live GradHooks (hooks are removed before it is freed).
    let shared = unsafe { &*(ctx as *const Shared) };
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (shared.callback)(index))) {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let mut slot = shared.panic.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(format!("gradient hook of parameter {index} panicked: {message}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tch::{Kind, Tensor};

    fn params() -> Vec<Tensor> {
        (0..3)
            .map(|i| Tensor::full([2], i as f64 + 1.0, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true))
            .collect()
    }

    fn backward(params: &[Tensor]) {
        params
            .iter()
            .map(|p| (p * p).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, tch::Device::Cpu)), |a, b| a + b)
            .backward();
    }

    #[test]
    fn each_parameter_reports_once_per_backward_until_the_hooks_are_dropped() {
        let params = params();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let hooks = GradHooks::install(&params, move |i| seen.lock().unwrap().push(i)).unwrap();
        backward(&params);
        let mut got = calls.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, [0, 1, 2]);
        hooks.check().unwrap();
        drop(hooks);
        backward(&params);
        assert_eq!(calls.lock().unwrap().len(), 3, "a dropped hook still ran");
    }

    #[test]
    fn a_panic_in_the_callback_is_returned_once_as_an_error() {
        let params = params();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let hooks = GradHooks::install(&params, move |i| {
            c.fetch_add(1, Ordering::SeqCst);
            assert!(i != 1, "parameter one is refused");
        })
        .unwrap();
        backward(&params);
        assert_eq!(count.load(Ordering::SeqCst), 3, "backward did not run to the end");
        let err = hooks.check().unwrap_err().to_string();
        assert!(err.contains("parameter 1") && err.contains("parameter one is refused"), "{err}");
        hooks.check().unwrap();
    }
}
