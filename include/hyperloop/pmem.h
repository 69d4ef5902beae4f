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
//   * a power failure may also *tear*: power_fail({.tear = true, .seed = s})
//     first writes back a seeded, arbitrary subset of what was not made
//     durable, as real persistent memory does (a CPU cache or the NIC's DDIO
//     may write any line back at any time, and only aligned 8-byte stores
//     are failure-atomic). "Not made durable" is every 64-byte line
//     (kLineBytes) whose view differs from the durable image, whether marked
//     dirty or not; each such line is, by the seed, lost, kept whole, or kept
//     in part: a subset of its 8-byte words (kWordBytes). A word is never
//     torn: after the failure it holds its durable (old) value or its view's
//     (newest) value, whole. Persisted bytes survive exactly as without
//     tearing. Without tearing (the default) every such line is lost.
//
// A process that restarts opens the same file and finds exactly what was made
// durable.
//
// One owner per file. A file is identified by its device and inode (not by
// the path naming it: "./x", a symlink and a hard link are the same file).
//   * In one process, a file is open in at most one PersistentMemory: open()
//     of a file already open here (under any name) is kAlreadyExists, naming
//     both paths. Two tenants of one ReplicaHost, or of two hosts in one
//     process, cannot share a file.
//   * Across processes, open() takes an exclusive lock on the file
//     (flock(LOCK_EX | LOCK_NB)), held until the object is destroyed (or
//     release() is called); a file locked by another process (another
//     replica daemon) is kUnavailable "in use by another process". The
//     descriptor is close-on-exec, so programs this process starts do not
//     hold the lock.
//   * Space is reserved up front: open() allocates every block of the file
//     (posix_fallocate), so a file system too small for the region is
//     kResourceExhausted with the system's reason ("No space left on device",
//     "File too large") at open, never a SIGBUS at a later access.
//
// Thread-safety: mark_dirty/persist/persist_dirty/power_fail/release are safe
// to call concurrently; writes into data() are the caller's to order.
//
// Lifetime: data() is valid until the object is destroyed; every memory
// registration over it (rnic::MemoryRegion) and every ReplicaHost tenant
// using it must go first (ReplicaHost owns the ones register_tenant opens).
// release() gives up the file, not the view: data() stays readable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "hyperloop/status.h"

namespace hyperloop {

// How a power failure treats what was not made durable (see above).
struct PowerFailOptions {
  bool tear = false;  // keep a seeded subset of the unflushed lines / words
  uint64_t seed = 0;  // which subset: the same seed and image tear the same way
};

class PersistentMemory {
 public:
  static constexpr size_t kLineBytes = 64;  // the unit a power failure keeps or loses
  static constexpr size_t kWordBytes = 8;   // the failure-atomic unit
  // The largest region: 2^47 bytes, the user address space of a 48-bit
  // virtual address machine (no mapping can be larger).
  static constexpr size_t kMaxSize = size_t{1} << 47;

  // Opens `path`, a file of exactly `size` bytes (created zero-filled when
  // missing and create is true), reserving its blocks and locking it (the
  // one-owner rules above). Errors: kNotFound (missing, !create),
  // kInvalidArgument (size 0 or over kMaxSize, a file of another size, not a
  // regular file), kAlreadyExists (the file is open in this process, under
  // this or another name), kUnavailable (locked by another process; I/O or
  // mapping failure: the message has the system's reason), kResourceExhausted
  // (the file system has no room for `size` bytes, or no memory for the
  // view). Nothing throws.
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
  // Fault: a power failure as `options` say; with tear, a seeded subset of
  // the unflushed lines (whole or some of their 8-byte words) is first
  // written to the durable image, then the view reverts to it. Returns the
  // unflushed words so kept (0 without tear).
  size_t power_fail(const PowerFailOptions& options);
  // The process that owned this object is gone (a test keeps a crashed
  // host's objects alive for the pointers others still hold): gives the file
  // up (unlocks it, leaves this process's registry) so that it can be opened
  // again; from now on nothing reaches the file (persist, persist_dirty and
  // power_fail leave it alone). The view stays valid until destruction.
  void release();

  // The registered PersistentMemory whose view holds [addr, addr+len), if
  // any (devices ask at memory registration).
  static PersistentMemory* containing(const void* addr, size_t len);

  struct Impl;

 private:
  explicit PersistentMemory(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hyperloop
