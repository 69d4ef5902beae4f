// hyperloop/pmem.h: persistent memory regions over files (PMDK libpmem2).
//
// A PersistentMemory has two parts: the *view*, the bytes CPUs and NICs read
// and write (data()), and the *durable image*, the file mapped with libpmem2.
// Bytes reach the durable image only through persist(), which copies them
// from the view and makes them durable with PMDK's persist function for the
// mapping. This is the model of real RDMA-to-PMEM hardware:
//
//   * an inbound RDMA WRITE is visible at once, but durable only once the NIC
//     serves a later RDMA READ: the software RNIC marks what it writes into a
//     persistent region dirty, and persists everything it wrote before it
//     sends any READ response (the read-after-write flush, gFLUSH's basis);
//   * a power failure loses whatever was not made durable: power_fail()
//     reverts the view to the durable image (as LevelDB's fault-injection Env
//     drops unsynced file data). A persisted range is never torn: persist()
//     of a range is atomic with respect to power_fail().
//
// A process that restarts opens the same file and finds exactly what was made
// durable.
//
// Thread-safety: mark_dirty/persist/persist_dirty/power_fail are safe to call
// concurrently; writes into data() are the caller's to order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "hyperloop/status.h"

namespace hyperloop {

class PersistentMemory {
 public:
  // Opens `path`, a file of exactly `size` bytes (created zero-filled when
  // missing and create is true). Errors: kNotFound (missing, !create),
  // kInvalidArgument (size 0 or a file of another size), kUnavailable (I/O or
  // mapping failure; the message has the system's reason).
  static Result<std::unique_ptr<PersistentMemory>> open(const std::string& path, size_t size, bool create = true);
  ~PersistentMemory();
  PersistentMemory(const PersistentMemory&) = delete;
  PersistentMemory& operator=(const PersistentMemory&) = delete;

  std::byte* data() const;
  size_t size() const;
  const std::string& path() const;

  // Records that [offset, offset+len) of the view changed (not yet durable).
  void mark_dirty(size_t offset, size_t len);
  // Makes [offset, offset+len) durable now (for CPU writes).
  void persist(size_t offset, size_t len);
  // Makes every dirty byte durable. Returns the bytes persisted.
  size_t persist_dirty();
  // Bytes marked dirty and not yet persisted.
  size_t dirty_bytes() const;
  // Fault: the view loses every byte that was not made durable.
  void power_fail();

  // The registered PersistentMemory whose view holds [addr, addr+len), if
  // any (devices ask at memory registration).
  static PersistentMemory* containing(const void* addr, size_t len);

  struct Impl;

 private:
  explicit PersistentMemory(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hyperloop
