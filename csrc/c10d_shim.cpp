// Implementation of c10d_shim.h. Each entry point catches every exception and returns it as
// a string, so a failed rendezvous or collective becomes a Rust error, never an abort.
#include "c10d_shim.h"
#include "shim_util.h"

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct mb_store {
  c10::intrusive_ptr<c10d::Store> store;
  uint16_t port;  // of the underlying TCPStore
};
struct mb_pg {
  c10::intrusive_ptr<c10d::Backend> backend;
};
struct mb_work {
  c10::intrusive_ptr<c10d::Work> work;
};

namespace {

using mb::collect;
using mb::dup;
using mb::guarded;

}  // namespace

extern "C" {

int mb_has_nccl(void) {
#ifdef USE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

char* mb_store_tcp_new(const char* host, uint16_t port, int is_server, int world_size,
                       int64_t timeout_ms, mb_store** out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    if (world_size > 0) {
      opts.numWorkers = static_cast<size_t>(world_size);
      opts.waitWorkers = true;
    } else {
      opts.waitWorkers = false;
    }
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    uint16_t bound = store->getPort();
    *out = new mb_store{std::move(store), bound};
  });
}

uint16_t mb_store_port(const mb_store* store) { return store->port; }

char* mb_store_prefix_new(mb_store* base, const char* prefix, mb_store** out) {
  return guarded([&] {
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), base->store);
    *out = new mb_store{std::move(store), base->port};
  });
}

char* mb_store_set(mb_store* store, const char* key, const uint8_t* value, size_t len) {
  return guarded([&] { store->store->set(key, std::vector<uint8_t>(value, value + len)); });
}

char* mb_store_get(mb_store* store, const char* key, uint8_t** out, size_t* out_len) {
  return guarded([&] {
    std::vector<uint8_t> value = store->store->get(key);
    auto* buf = static_cast<uint8_t*>(std::malloc(value.empty() ? 1 : value.size()));
    if (buf == nullptr) throw std::bad_alloc();
    std::memcpy(buf, value.data(), value.size());
    *out = buf;
    *out_len = value.size();
  });
}

char* mb_store_add(mb_store* store, const char* key, int64_t delta, int64_t* out) {
  return guarded([&] { *out = store->store->add(key, delta); });
}

char* mb_store_check(mb_store* store, const char* key, int* out) {
  return guarded([&] { *out = store->store->check({std::string(key)}) ? 1 : 0; });
}

void mb_store_free(mb_store* store) { delete store; }

char* mb_pg_gloo_new(mb_store* store, int rank, int size, int device_kind,
                     const char* device_name, int64_t timeout_ms, mb_pg** out) {
  return guarded([&] {
    using c10d::ProcessGroupGloo;
    auto opts = ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    switch (device_kind) {
      case MB_GLOO_HOSTNAME:
        opts->devices.push_back(ProcessGroupGloo::createDeviceForHostname(device_name));
        break;
      case MB_GLOO_INTERFACE:
        opts->devices.push_back(ProcessGroupGloo::createDeviceForInterface(device_name));
        break;
      default:
        opts->devices.push_back(ProcessGroupGloo::createDefaultDevice());
    }
    c10::intrusive_ptr<c10d::Store> base = store->store;
    auto pg = c10::make_intrusive<ProcessGroupGloo>(base, rank, size, opts);
    *out = new mb_pg{std::move(pg)};
  });
}

char* mb_pg_nccl_new(mb_store* store, int rank, int size, int64_t timeout_ms, mb_pg** out) {
#ifdef USE_C10D_NCCL
  return guarded([&] {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Store> base = store->store;
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(base, rank, size, opts);
    *out = new mb_pg{std::move(pg)};
  });
#else
  (void)store; (void)rank; (void)size; (void)timeout_ms; (void)out;
  return dup("this build has no NCCL support: `medbert doctor` says why");
#endif
}

void mb_pg_free(mb_pg* pg) { delete pg; }

char* mb_pg_allreduce_sum(mb_pg* pg, mb_tensor* tensors, size_t n, mb_work** out) {
  return guarded([&] {
    auto ts = collect(tensors, n);
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    *out = new mb_work{pg->backend->allreduce(ts, opts)};
  });
}

char* mb_pg_broadcast(mb_pg* pg, mb_tensor* tensors, size_t n, int root, mb_work** out) {
  return guarded([&] {
    auto ts = collect(tensors, n);
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    *out = new mb_work{pg->backend->broadcast(ts, opts)};
  });
}

char* mb_pg_barrier(mb_pg* pg, mb_work** out) {
  return guarded([&] { *out = new mb_work{pg->backend->barrier(c10d::BarrierOptions())}; });
}

char* mb_work_wait(mb_work* work) {
  return guarded([&] { work->work->wait(); });
}

void mb_work_free(mb_work* work) { delete work; }

}  // extern "C"
