//! Raw declarations of csrc/c10d_shim.h. Use the safe types in the parent module instead.

use std::os::raw::{c_char, c_int};

#[repr(C)]
pub struct MbStore {
    _private: [u8; 0],
}
#[repr(C)]
pub struct MbPg {
    _private: [u8; 0],
}
#[repr(C)]
pub struct MbWork {
    _private: [u8; 0],
}

pub use crate::sys::ffi::MbTensor;

pub const GLOO_DEFAULT: c_int = 0;
pub const GLOO_HOSTNAME: c_int = 1;
pub const GLOO_INTERFACE: c_int = 2;

extern "C" {
    pub fn mb_has_nccl() -> c_int;

    pub fn mb_store_tcp_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut MbStore,
    ) -> *mut c_char;
    pub fn mb_store_prefix_new(base: *mut MbStore, prefix: *const c_char, out: *mut *mut MbStore) -> *mut c_char;
    pub fn mb_store_port(store: *const MbStore) -> u16;
    pub fn mb_store_set(store: *mut MbStore, key: *const c_char, value: *const u8, len: usize) -> *mut c_char;
    pub fn mb_store_get(store: *mut MbStore, key: *const c_char, out: *mut *mut u8, out_len: *mut usize)
        -> *mut c_char;
    pub fn mb_store_add(store: *mut MbStore, key: *const c_char, delta: i64, out: *mut i64) -> *mut c_char;
    pub fn mb_store_check(store: *mut MbStore, key: *const c_char, out: *mut c_int) -> *mut c_char;
    pub fn mb_store_free(store: *mut MbStore);

    pub fn mb_pg_gloo_new(
        store: *mut MbStore,
        rank: c_int,
        size: c_int,
        device_kind: c_int,
        device_name: *const c_char,
        timeout_ms: i64,
        out: *mut *mut MbPg,
    ) -> *mut c_char;
    pub fn mb_pg_nccl_new(
        store: *mut MbStore,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut *mut MbPg,
    ) -> *mut c_char;
    pub fn mb_pg_free(pg: *mut MbPg);

    pub fn mb_pg_allreduce_sum(pg: *mut MbPg, tensors: *mut MbTensor, n: usize, out: *mut *mut MbWork) -> *mut c_char;
    pub fn mb_pg_broadcast(
        pg: *mut MbPg,
        tensors: *mut MbTensor,
        n: usize,
        root: c_int,
        out: *mut *mut MbWork,
    ) -> *mut c_char;
    pub fn mb_pg_barrier(pg: *mut MbPg, out: *mut *mut MbWork) -> *mut c_char;
    pub fn mb_work_wait(work: *mut MbWork) -> *mut c_char;
    pub fn mb_work_free(work: *mut MbWork);
}
