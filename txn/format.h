// txn/format.h: the on-region format of a transactional store (layout,
// superblock, log-head slots, redo records, lock words) and the recovery plan
// computed from every replica's image. Pure functions over bytes: no group,
// no device, so the rules are testable on their own. See hyperloop/txn.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "hyperloop/status.h"
#include "hyperloop/txn.h"

namespace hyperloop::txn::internal {

inline constexpr size_t kSuperBytes = 4096;  // superblock: format block + head slots
inline constexpr size_t kFormatBytes = 128;  // the format block at [0, 128)
inline constexpr size_t kHeadOff = 128;      // head slot k at kHeadOff + 64 * k (k = 0, 1)
// The epoch table at [1024, 3072): which LSNs each ended epoch committed.
// Entry (epoch mod 64) is {epoch, end LSN, check}: the epoch's records below
// end LSN are committed, the rest never (Store::outcome). Written by the
// recovery that ends the epoch, with its new head.
inline constexpr size_t kEpochTableOff = 1024;
inline constexpr size_t kEpochTableEntries = 64;
inline constexpr size_t kEpochEntryBytes = 32;
inline constexpr size_t kAlign = 64;         // records start and end on 64-byte lines
inline constexpr size_t kChunk = 4096;       // recovery compares and rewrites this much at a time
inline constexpr uint64_t kLocked = 1ull << 63;
inline constexpr uint32_t kTagShift = 48;
inline constexpr uint32_t kMaxTag = 0x7fff;
inline constexpr uint64_t kVersionMask = (1ull << kTagShift) - 1;
inline constexpr uint64_t kCommitMagic = 0xC0331177ED5EA1EDull;
inline constexpr size_t kRecordHeader = 48;
inline constexpr size_t kRangeEntry = 16;
inline constexpr uint32_t kMaxRanges = 1024;

struct Layout {
  size_t log_off = kSuperBytes, log_size = 0;
  size_t lock_off = 0, stripes = 0;
  size_t data_off = 0, data_size = 0;
  size_t region = 0;
  uint32_t stripe = 0;
};
// Errors: kInvalidArgument naming the bad option.
Result<Layout> layout_of(const StoreOptions& o);

// kInvalidArgument for length 0, kOutOfRange outside the data area.
Status check_data_range(const Layout& lay, uint64_t offset, uint64_t len, const char* what);

// A log head: the first record not yet truncated is `lsn`, at ring position
// `pos`; records from there on count only if they carry the head's `epoch`
// (the recovery that wrote it or the one the truncating client ran under):
// a record left past the end of an earlier recovery's replay (never
// acknowledged, resolved absent) can never come back behind newer records.
struct Head {
  uint64_t lsn = 0;
  uint64_t pos = 0;
  uint64_t epoch = 0;
  uint64_t check = 0;
};
Head make_head(uint64_t lsn, uint64_t pos, uint64_t epoch);
// The epoch table of a region image (its first kSuperBytes at least): the
// valid entries as (epoch, end LSN), in no particular order.
std::vector<std::pair<uint64_t, uint64_t>> ended_epochs(std::span<const std::byte> image);
void record_ended_epoch(std::span<std::byte> image, uint64_t epoch, uint64_t end_lsn);
inline uint64_t head_slot_offset(uint32_t slot) { return kHeadOff + 64 * slot; }
template <typename T>
std::span<const std::byte> as_bytes(const T& v) {
  return {reinterpret_cast<const std::byte*>(&v), sizeof v};
}

// One range of a write set: data-area offset and its new bytes.
struct Extent {
  uint64_t offset = 0;
  std::vector<std::byte> bytes;
};
// Sorted, disjoint extents covering every write; where writes overlap the
// later one wins.
std::vector<Extent> coalesce(std::span<const std::pair<uint64_t, std::span<const std::byte>>> writes);

// A redo record: header {magic, lsn, txn, bytes, ranges, checksum, 0}, the
// range table {offset, len}..., the payloads, padding, the commit marker.
struct Record {
  std::vector<std::byte> bytes;
  size_t payload_off = 0;
  uint64_t pos = 0;  // ring position, chosen at commit
};
// Errors: kInvalidArgument (too many ranges), kResourceExhausted (larger than
// half the log or than the group's staging buffer).
Result<Record> build_record(const Layout& lay, size_t staging_bytes, const std::vector<Extent>& ranges);
// Fills in the LSN, the transaction id, the epoch, the commit marker and the checksum.
void seal_record(Record& rec, uint64_t lsn, uint64_t txn, uint64_t epoch);
// The record at ring position `pos` of a region image, if it is intact,
// committed and carries `lsn` and `epoch`: its size in bytes, else 0.
size_t valid_record(const Layout& lay, std::span<const std::byte> image, uint64_t pos, uint64_t lsn,
                    uint64_t epoch);

// What recovery is told: the store it expects (the id of its last recovery;
// zero on a client's first open: then the replicas' own), the chain
// positions it may overwrite whatever they hold, whether the replica count
// may differ from the format's, and the id a blank store is formatted with.
struct PlanInput {
  StoreId expect{};
  uint32_t reseed_mask = 0;
  bool allow_resize = false;
  StoreId fresh_id{};
};
// What recovery writes: `target` is the region every replica must hold
// (format block, head slots, lock table and data area; the log is left as
// it is), the head that follows the replayed records, its slot and epoch.
struct Plan {
  std::vector<std::byte> target;
  uint64_t head_lsn = 1, head_pos = 0, epoch = 1;
  // The epoch whose records the scan took (the reference head's), 0 for a
  // blank store: its records below head_lsn are committed, the rest never.
  uint64_t ended_epoch = 0;
  uint32_t head_slot = 0;
  uint64_t replayed = 0;
  int reference = -1;  // the replica whose image the target started from (-1: blank)
  StoreId id{};
  bool formatted = false;  // a blank store, formatted now
};
// Errors: kDataLoss naming the replica (formatted with another layout, or
// holding another store, unless in reseed_mask), kFailedPrecondition (the
// store was formatted for another replica count and !allow_resize).
Result<Plan> plan_recovery(const Layout& lay, const std::vector<std::vector<std::byte>>& images,
                           const PlanInput& in);
// The format block's fields (for tests): its store id and replica count;
// false if the image holds no valid format block.
bool read_identity(std::span<const std::byte> image, StoreId* id, uint32_t* replicas);

std::string hex(uint64_t v);

}  // namespace hyperloop::txn::internal
