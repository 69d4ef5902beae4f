// examples/rocksdb/replicated_wal.h: the writer of the WAL ring (wal_ring.h)
// on a txn::Store, and the replay a new primary runs.
//
// append() is the durability point of the replicated RocksDB: the bytes go
// into the ring as one transaction per chunk (the chunk and the ring's tail
// word, written together), and append() returns OK only once every chunk's
// commit returned OK: durable on every replica of the chain. In offload mode
// no replica CPU runs on that path (txn.h, "Commit").
//
// Why a transaction and not a bare gWRITE + gFLUSH: the commit brings what a
// failing primary needs for free: the chunk and the tail move together or not
// at all, recovery (Store::open/recover) resolves a commit that was in flight
// when the primary died all or nothing on every replica, and the store's
// epoch fences a primary that was replaced (txn.h, "Membership"). A chunk
// commit is blind (no reads), so it never aborts on a conflict. The price is
// the lock gCAS of the stripes written: with 64 KiB stripes, two or three per
// commit.
//
// Space: the head moves past a file (every chunk of one WAL file) once the
// primary deleted that file (RocksDB does after the memtables it covers are
// in SSTs: log_deleted) and every applier named in WalOptions::appliers has
// published a durable position beyond the file's first chunk (coord.h,
// publish_progress: "<name>.pos"). A full ring makes append() wait for that,
// up to full_timeout_ns, then kResourceExhausted naming who holds it back.
//
// Thread-safety: every method may be called from any thread; appends are
// serialized (the WAL has one writer at a time anyway).
// Lifetime: the store (and the ConfigStore, if given) outlive the object.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "hyperloop/coord.h"
#include "hyperloop/txn.h"
#include "wal_ring.h"

namespace hyperloop::rocks {

struct WalOptions {
  uint64_t ring_bytes = 16 << 20;  // the ring (multiple of 8, >= kMinRingBytes)
  uint32_t max_chunk = 256 << 10;  // payload bytes per commit (<= kMaxChunkPayload)
  // Appliers whose published positions hold back reuse of ring space (the
  // names they publish under). Empty: only the primary's deletions count.
  std::vector<std::string> appliers;
  coord::ConfigStore* progress = nullptr;  // where appliers publish (needed with appliers)
  uint32_t tenant = 0;                     // the tenant their markers belong to
  uint64_t full_timeout_ns = 10'000'000'000;
};

// The txn::Store options a ring of these options needs (data_size, log_size,
// stripe_bytes; the caller sets the group, membership and the like).
txn::StoreOptions ring_store_options(uint32_t tenant, const WalOptions& o);

struct WalStats {
  uint64_t appends = 0, chunks = 0, bytes = 0;
  uint64_t head_moves = 0, full_waits = 0;
  uint64_t files_live = 0;
};

class ReplicatedWal {
 public:
  // Opens the ring in `store`: formats a blank data area, or validates the
  // header and scans the chunks from head to tail (to learn its files), and
  // then starts a new generation (this writer's). Errors: kDataLoss (a data
  // area that is not a ring, a chunk missing below the tail),
  // kFailedPrecondition (another ring size), the store's errors.
  static Result<std::unique_ptr<ReplicatedWal>> open(txn::Store& store, const WalOptions& o);

  // Makes `bytes`, appended to WAL file `log_number` at `file_offset`,
  // durable on every replica. The file's chunks must be contiguous
  // (kInvalidArgument otherwise), and a new file (offset 0) ends the
  // previous ones: no chunk of theirs may follow. Errors: the store's
  // (kUnavailable: in doubt, as a commit), kResourceExhausted (ring full).
  Status append(uint64_t log_number, uint64_t file_offset, std::span<const std::byte> bytes);
  // RocksDB deleted WAL file `log_number` of this generation: its records
  // are in the primary's SSTs.
  void log_deleted(uint64_t log_number);
  // Every file of the earlier generations (a replaced primary's) is in this
  // primary's SSTs (after its replay and a flush).
  void earlier_generations_flushed();
  // Moves the head as far as the rules allow (append does when it needs
  // room). Returns the head.
  Result<uint64_t> reclaim();

  // Waits until the chain has applied every chunk (Store::drain) and then
  // commits once more (the tail word again): that commit's flush makes what
  // was applied before it durable on every replica, so a reader of a
  // replica's durable image (the daemon's region file) sees all of it. A
  // clean shutdown of the primary calls it.
  Status settle();

  // Calls fn with every complete WriteBatch the ring holds from the head to
  // the tail, in order (a new primary's replay: it applies those above its
  // own sequence number).
  Status replay(const std::function<Status(std::string_view rep)>& fn);

  uint64_t generation() const { return generation_; }
  uint64_t ring_bytes() const { return o_.ring_bytes; }
  uint64_t head() const;
  uint64_t tail() const;
  WalStats stats() const;

 private:
  struct File {
    uint64_t first_pos;
    uint64_t next_offset;
    bool deleted;
  };
  ReplicatedWal(txn::Store& s, const WalOptions& o) : store_(s), o_(o) {}
  Status commit_chunk(uint64_t log_number, uint64_t file_offset, std::span<const std::byte> payload);
  Status make_room(uint64_t need);
  Result<uint64_t> reclaim_locked();
  Status write_word(uint64_t offset, uint64_t value);

  txn::Store& store_;
  const WalOptions o_;
  mutable std::mutex mu_;
  uint64_t generation_ = 0, head_ = 0, tail_ = 0;
  // Files by {generation, log_number}, in ring order of their first chunk.
  std::map<std::pair<uint64_t, uint64_t>, File> files_;
  std::pair<uint64_t, uint64_t> current_{0, 0};
  bool have_current_ = false;
  // The bookkeeping a commit in doubt changed, for when it turns out absent.
  struct Undo {
    std::pair<uint64_t, uint64_t> key;
    bool fresh = false;
    uint64_t next_offset = 0;
  };
  Undo undo_;
  bool resync_ = false;
  WalStats stats_;
};

}  // namespace hyperloop::rocks
