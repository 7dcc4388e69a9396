// C ABI over PyTorch's c10d: a TCPStore, a process group (Gloo, optionally NCCL) and its
// collectives. Tensors arrive as `at::Tensor*` (tch's `Tensor::as_mut_ptr()`).
//
// Every fallible call returns NULL on success or a heap-allocated error message that the
// caller releases with mb_string_free; no C++ exception ever crosses this boundary.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "torch_shim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mb_store mb_store;
typedef struct mb_pg mb_pg;
typedef struct mb_work mb_work;

/* How Gloo picks its network device. */
enum mb_gloo_device { MB_GLOO_DEFAULT = 0, MB_GLOO_HOSTNAME = 1, MB_GLOO_INTERFACE = 2 };

/* Error strings are released with mb_string_free (torch_shim.h). */
int mb_has_nccl(void);

/* world_size > 0: the server waits for that many members; 0: no waiting (an agent's store). */
char* mb_store_tcp_new(const char* host, uint16_t port, int is_server, int world_size,
                       int64_t timeout_ms, mb_store** out);
uint16_t mb_store_port(const mb_store* store);
/* A view of `base` whose keys all carry `prefix` (c10d::PrefixStore); base stays usable. */
char* mb_store_prefix_new(mb_store* base, const char* prefix, mb_store** out);
char* mb_store_set(mb_store* store, const char* key, const uint8_t* value, size_t len);
/* Waits for the key (store timeout); *out is malloc'd, released with mb_string_free. */
char* mb_store_get(mb_store* store, const char* key, uint8_t** out, size_t* out_len);
/* Adds delta to the integer at key (0 when absent) and returns the sum. */
char* mb_store_add(mb_store* store, const char* key, int64_t delta, int64_t* out);
/* *out = 1 when key exists, without waiting. */
char* mb_store_check(mb_store* store, const char* key, int* out);
void mb_store_free(mb_store* store);

char* mb_pg_gloo_new(mb_store* store, int rank, int size, int device_kind,
                     const char* device_name, int64_t timeout_ms, mb_pg** out);
char* mb_pg_nccl_new(mb_store* store, int rank, int size, int64_t timeout_ms, mb_pg** out);
void mb_pg_free(mb_pg* pg);

/* Starts a sum all-reduce in place over `n` tensors; wait on the returned work. */
char* mb_pg_allreduce_sum(mb_pg* pg, mb_tensor* tensors, size_t n, mb_work** out);
char* mb_pg_broadcast(mb_pg* pg, mb_tensor* tensors, size_t n, int root, mb_work** out);
char* mb_pg_barrier(mb_pg* pg, mb_work** out);
char* mb_work_wait(mb_work* work);

void mb_work_free(mb_work* work);

#ifdef __cplusplus
}
#endif
