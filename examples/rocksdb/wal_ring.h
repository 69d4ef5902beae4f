// examples/rocksdb/wal_ring.h: the replicated write-ahead-log ring that a
// RocksDB primary writes through hyperloop, and what reads it back.
//
// The ring lives in the data area of one txn::Store (one tenant): every
// byte of it is identical on every replica of the chain. Nothing here needs
// RocksDB: the format, the reader and the WAL-framing parser are plain bytes,
// so they are fuzzed and tested without it.
//
// ---- The data area ----------------------------------------------------------
//   [0, 4096)          the ring header (little-endian words):
//                        [0]  magic "HLWALRG1"
//                        [8]  ring_bytes (the ring's size; fixed at format)
//                        [16] head: the first position still needed; space
//                             below it may be reused
//                        [24] tail: the position the next chunk goes to
//                        [32] generation: bumped by every writer that opens
//                             the ring (a new primary), carried by its chunks
//   [4096, +ring_bytes) the ring. Positions are absolute byte counts since
//                      format (they never wrap); position p is at data-area
//                      offset 4096 + p % ring_bytes.
//
// ---- A chunk: one commit of WAL bytes ------------------------------------
//   header (48 B) {magic u32 "HLWC", len u32, pos u64, generation u64,
//   log_number u64, file_offset u64, crc u32, 0 u32}, then len payload bytes,
//   padded with zeros to a multiple of 8. crc is zlib's crc32 of the header
//   (crc field 0) and the payload. The payload is the bytes RocksDB appended
//   to WAL file {generation, log_number} at file_offset. A chunk is valid only
//   at the position it names, with its crc intact and len within bounds: a
//   chunk of an earlier lap, one being applied, or forged bytes are never
//   taken for data.
//
// ---- Rules the writer keeps (ReplicatedWal) ------------------------------
//   One writer per generation. Chunks of one file are in file order and
//   contiguous; a file's chunks all come before the next file's first chunk
//   (file_offset 0). The head only moves forward, to the first position of a
//   file, and only past files that the primary deleted (flushed into its
//   SSTs) and that every applier has published as durable in its own store.
//
// Thread-safety: RingReader and WalParser are used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hyperloop/status.h"

namespace hyperloop::rocks {

inline constexpr uint64_t kRingMagic = 0x3147524c41574c48ull;  // "HLWALRG1"
inline constexpr uint32_t kChunkMagic = 0x43574c48u;           // "HLWC"
inline constexpr size_t kRingHeaderBytes = 4096;
inline constexpr size_t kChunkHeaderBytes = 48;
inline constexpr size_t kHeadOffset = 16, kTailOffset = 24, kGenerationOffset = 32;
// Limits the reader enforces on bytes it did not write.
inline constexpr uint64_t kMinRingBytes = 64 << 10;
inline constexpr uint64_t kMaxRingBytes = 1ull << 40;
inline constexpr uint32_t kMaxChunkPayload = 1u << 20;

// Reads `dst.size()` bytes at `offset` of the store's data area: a replica
// host's own copy (ReplicaHost::peek, a mapping of the daemon's region file)
// or a consistent read through the chain (txn::Store::read).
using ReadFn = std::function<Status(uint64_t offset, std::span<std::byte> dst)>;

struct RingHeader {
  uint64_t ring_bytes = 0, head = 0, tail = 0, generation = 0;
};

struct ChunkHeader {
  uint32_t len = 0;
  uint64_t pos = 0, generation = 0, log_number = 0, file_offset = 0;
};

// Bytes a chunk of `len` payload bytes takes in the ring.
inline uint64_t chunk_span(uint64_t len) { return kChunkHeaderBytes + ((len + 7) & ~uint64_t{7}); }

// Data-area offset of ring position `pos`.
inline uint64_t ring_offset(uint64_t ring_bytes, uint64_t pos) { return kRingHeaderBytes + pos % ring_bytes; }

// The header and padded payload of a chunk, ready to be written at h.pos.
std::vector<std::byte> encode_chunk(const ChunkHeader& h, std::span<const std::byte> payload);

// The bytes of the ring header at format (magic, ring_bytes, head = tail = 0, generation 0).
std::vector<std::byte> encode_ring_header(uint64_t ring_bytes);

// Validates the first 40 bytes of the data area. kNotFound: not formatted
// (all zero); kDataLoss: anything else that is not a valid header (the
// message says what); kFailedPrecondition: a ring of another size than
// `expected_ring_bytes` (0: any).
Result<RingHeader> decode_ring_header(std::span<const std::byte> bytes, uint64_t expected_ring_bytes);

// Splits a write of `len` bytes at ring position `pos` into at most two
// data-area ranges {offset, length} (two when it wraps).
struct Piece {
  uint64_t offset;
  uint64_t len;
};
std::vector<Piece> ring_pieces(uint64_t ring_bytes, uint64_t pos, uint64_t len);

struct Chunk {
  ChunkHeader header;
  std::vector<std::byte> payload;
};

// Reads chunks through a ReadFn.
class RingReader {
 public:
  RingReader(ReadFn read, uint64_t ring_bytes) : read_(std::move(read)), ring_bytes_(ring_bytes) {}
  Result<RingHeader> header();
  // The chunk at `pos`. kNotFound: no valid chunk is there (nothing written
  // yet, a chunk still being applied on this replica, a chunk of an earlier
  // lap, or bytes that fail the checks); errors of the ReadFn as they are.
  Result<Chunk> chunk(uint64_t pos);

 private:
  Status read_ring(uint64_t pos, std::span<std::byte> dst);
  ReadFn read_;
  uint64_t ring_bytes_;
};

// ---- RocksDB's WAL framing (db/log_format.h of RocksDB 7.8) --------------
// 32 KiB blocks; each physical record a 7-byte header {masked crc32c u32,
// length u16, type u8} and its payload; types Full 1, First 2, Middle 3,
// Last 4; a block's last < 7 bytes are zero padding. The recyclable types
// (5-8, recycle_log_file_num > 0) and the compression record (9,
// wal_compression) are refused: the FileSystem's options say so.
// The physical records' crc32c is not checked here: the chunk's crc already
// covers every byte the ring carries.
inline constexpr size_t kWalBlock = 32768;
inline constexpr size_t kWalHeader = 7;

// Turns the stream of chunks into WriteBatch representations.
class WalParser {
 public:
  // Called with each complete logical record (a WriteBatch's bytes).
  using Sink = std::function<Status(std::string_view record)>;
  explicit WalParser(Sink sink) : sink_(std::move(sink)) {}

  // Feeds one chunk. A chunk of the file being parsed must continue it at
  // the next offset; a chunk of another file must start it (file_offset 0):
  // whatever is left of the previous file then (a record torn by a writer
  // that died: never acknowledged) is dropped and counted. Errors:
  // kDataLoss (a gap, a file that does not start at 0, a record crossing
  // its block, a type this parser refuses), the sink's errors.
  Status feed(const ChunkHeader& h, std::span<const std::byte> payload);

  // The file being parsed and the ring position of its first chunk.
  uint64_t file_generation() const { return gen_; }
  uint64_t file_log_number() const { return log_; }
  uint64_t file_first_pos() const { return first_pos_; }
  bool in_file() const { return in_file_; }
  uint64_t dropped_tail_bytes() const { return dropped_; }

 private:
  Status parse();
  Sink sink_;
  bool in_file_ = false;
  uint64_t gen_ = 0, log_ = 0, first_pos_ = 0;
  uint64_t next_offset_ = 0;  // file offset after the last byte fed
  uint64_t parsed_ = 0;       // file offset of pending_[0]
  std::vector<std::byte> pending_;
  std::string record_;        // a logical record being assembled (First/Middle)
  bool in_record_ = false;
  uint64_t dropped_ = 0;
};

// The sequence number and count of a WriteBatch representation
// ({sequence fixed64, count fixed32, records}); kDataLoss if shorter than 12.
struct BatchHeader {
  uint64_t sequence = 0;
  uint32_t count = 0;
};
Result<BatchHeader> batch_header(std::string_view rep);

}  // namespace hyperloop::rocks
