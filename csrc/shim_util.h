// Helpers shared by the shim's C++ files (not part of the C ABI).
#pragma once
#include "torch_shim.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace mb {

// A malloc'd copy that the Rust side releases with mb_string_free.
inline char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// Runs `f`, turning any exception into an error string (NULL means success).
template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup(e.what());
  } catch (...) {
    return dup("unknown C++ exception in libtorch");
  }
}

// The tensors behind `n` at::Tensor pointers (refcounted copies of the handles).
inline std::vector<at::Tensor> collect(mb_tensor* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*static_cast<at::Tensor*>(tensors[i]));
  return out;
}

}  // namespace mb
