// hyperloop/internal/memory_limits.h: allocations whose size a caller
// chooses, checked before they are made and never throwing (no exception
// crosses the public API: impossible sizes are kResourceExhausted).
//
// Why a check before the allocation, and not only a catch of std::bad_alloc
// around it: under AddressSanitizer (allocator_may_return_null=0, the
// default) an allocation larger than the machine can give aborts the process
// instead of throwing. A size larger than this machine's physical memory can
// never be served as zero-filled memory we write, so it is refused up front;
// what remains is attempted and a bad_alloc becomes kResourceExhausted too.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "hyperloop/status.h"

namespace hyperloop::internal {

// This machine's physical memory in bytes (SIZE_MAX if unknown).
inline size_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return SIZE_MAX;
  const uint64_t bytes = uint64_t(pages) * uint64_t(page);
  return bytes > SIZE_MAX ? SIZE_MAX : size_t(bytes);
}

// kResourceExhausted naming `what` if `bytes` is more than this machine's memory.
inline Status check_fits_in_memory(size_t bytes, const std::string& what) {
  const size_t phys = physical_memory_bytes();
  if (bytes > phys)
    return Status(StatusCode::kResourceExhausted, what + ": " + std::to_string(bytes) +
                                                      " bytes is more than this machine's memory (" +
                                                      std::to_string(phys) + " bytes)");
  return Status::ok();
}

// v.assign(n, value), or kResourceExhausted (never an exception) when n
// elements do not fit in this machine's memory or cannot be allocated.
template <typename T>
Status assign_or_exhausted(std::vector<T>& v, size_t n, const T& value, const std::string& what) {
  if (n > SIZE_MAX / sizeof(T))
    return Status(StatusCode::kResourceExhausted, what + ": " + std::to_string(n) + " elements overflow a size");
  if (Status s = check_fits_in_memory(n * sizeof(T), what); !s.is_ok()) return s;
  try {
    v.assign(n, value);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kResourceExhausted, what + ": cannot allocate " + std::to_string(n * sizeof(T)) + " bytes");
  } catch (const std::length_error&) {
    return Status(StatusCode::kResourceExhausted, what + ": " + std::to_string(n) + " elements are too many");
  }
  return Status::ok();
}

}  // namespace hyperloop::internal
