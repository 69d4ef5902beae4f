#include "wal_ring.h"

#include <zlib.h>

#include <cstring>

namespace hyperloop::rocks {
namespace {

void put64(std::byte* p, uint64_t v) { std::memcpy(p, &v, 8); }
void put32(std::byte* p, uint32_t v) { std::memcpy(p, &v, 4); }
uint64_t get64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
uint32_t get32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

uint32_t crc_of(std::span<const std::byte> header, std::span<const std::byte> payload) {
  uLong c = crc32(0L, Z_NULL, 0);
  c = crc32(c, reinterpret_cast<const Bytef*>(header.data()), static_cast<uInt>(header.size()));
  c = crc32(c, reinterpret_cast<const Bytef*>(payload.data()), static_cast<uInt>(payload.size()));
  return static_cast<uint32_t>(c);
}

void encode_header(const ChunkHeader& h, uint32_t crc, std::byte* p) {
  put32(p, kChunkMagic);
  put32(p + 4, h.len);
  put64(p + 8, h.pos);
  put64(p + 16, h.generation);
  put64(p + 24, h.log_number);
  put64(p + 32, h.file_offset);
  put32(p + 40, crc);
  put32(p + 44, 0);
}

}  // namespace

std::vector<std::byte> encode_chunk(const ChunkHeader& h, std::span<const std::byte> payload) {
  std::vector<std::byte> out(chunk_span(payload.size()));
  ChunkHeader hh = h;
  hh.len = static_cast<uint32_t>(payload.size());
  encode_header(hh, 0, out.data());
  const uint32_t crc = crc_of({out.data(), kChunkHeaderBytes}, payload);
  put32(out.data() + 40, crc);
  if (!payload.empty()) std::memcpy(out.data() + kChunkHeaderBytes, payload.data(), payload.size());
  return out;
}

std::vector<std::byte> encode_ring_header(uint64_t ring_bytes) {
  std::vector<std::byte> out(40);
  put64(out.data(), kRingMagic);
  put64(out.data() + 8, ring_bytes);
  return out;
}

Result<RingHeader> decode_ring_header(std::span<const std::byte> b, uint64_t expected) {
  if (b.size() < 40) return invalid_argument("ring header: need 40 bytes");
  const uint64_t magic = get64(b.data());
  RingHeader h{get64(b.data() + 8), get64(b.data() + kHeadOffset), get64(b.data() + kTailOffset),
               get64(b.data() + kGenerationOffset)};
  if (magic == 0 && h.ring_bytes == 0 && h.head == 0 && h.tail == 0 && h.generation == 0)
    return not_found("ring header: the data area is not formatted");
  if (magic != kRingMagic) return Status(StatusCode::kDataLoss, "ring header: bad magic (not a WAL ring)");
  if (h.ring_bytes < kMinRingBytes || h.ring_bytes > kMaxRingBytes || h.ring_bytes % 8 != 0)
    return Status(StatusCode::kDataLoss, "ring header: ring_bytes " + std::to_string(h.ring_bytes) + " out of bounds");
  if (h.head > h.tail || h.tail - h.head > h.ring_bytes || h.head % 8 != 0 || h.tail % 8 != 0)
    return Status(StatusCode::kDataLoss, "ring header: head " + std::to_string(h.head) + " / tail " +
                                             std::to_string(h.tail) + " inconsistent");
  if (expected != 0 && h.ring_bytes != expected)
    return failed_precondition("ring header: the ring was formatted with " + std::to_string(h.ring_bytes) +
                               " bytes, not " + std::to_string(expected));
  return h;
}

std::vector<Piece> ring_pieces(uint64_t ring_bytes, uint64_t pos, uint64_t len) {
  std::vector<Piece> out;
  const uint64_t at = pos % ring_bytes;
  const uint64_t first = std::min(len, ring_bytes - at);
  out.push_back({kRingHeaderBytes + at, first});
  if (first < len) out.push_back({kRingHeaderBytes, len - first});
  return out;
}

Status RingReader::read_ring(uint64_t pos, std::span<std::byte> dst) {
  size_t done = 0;
  for (const Piece& p : ring_pieces(ring_bytes_, pos, dst.size())) {
    HL_RETURN_IF_ERROR(read_(p.offset, dst.subspan(done, p.len)));
    done += p.len;
  }
  return Status::ok();
}

Result<RingHeader> RingReader::header() {
  std::byte b[40];
  HL_RETURN_IF_ERROR(read_(0, b));
  return decode_ring_header(b, ring_bytes_);
}

Result<Chunk> RingReader::chunk(uint64_t pos) {
  std::byte hb[kChunkHeaderBytes];
  HL_RETURN_IF_ERROR(read_ring(pos, hb));
  Chunk c;
  c.header = {get32(hb + 4), get64(hb + 8), get64(hb + 16), get64(hb + 24), get64(hb + 32)};
  if (get32(hb) != kChunkMagic || get32(hb + 44) != 0) return not_found("no chunk at " + std::to_string(pos));
  if (c.header.pos != pos) return not_found("the chunk at " + std::to_string(pos) + " is of an earlier lap");
  if (c.header.len == 0 || c.header.len > kMaxChunkPayload || chunk_span(c.header.len) > ring_bytes_ / 2)
    return not_found("chunk at " + std::to_string(pos) + ": length out of bounds");
  c.payload.resize(c.header.len);
  HL_RETURN_IF_ERROR(read_ring(pos + kChunkHeaderBytes, c.payload));
  const uint32_t crc = get32(hb + 40);
  put32(hb + 40, 0);
  if (crc_of(hb, c.payload) != crc) return not_found("chunk at " + std::to_string(pos) + ": checksum mismatch");
  return c;
}

Status WalParser::feed(const ChunkHeader& h, std::span<const std::byte> payload) {
  const bool same = in_file_ && h.generation == gen_ && h.log_number == log_;
  if (same) {
    if (h.file_offset != next_offset_)
      return Status(StatusCode::kDataLoss, "WAL " + std::to_string(h.log_number) + ": chunk at file offset " +
                                               std::to_string(h.file_offset) + ", expected " +
                                               std::to_string(next_offset_));
  } else {
    if (h.file_offset != 0)
      return Status(StatusCode::kDataLoss, "WAL " + std::to_string(h.log_number) + " (generation " +
                                               std::to_string(h.generation) + ") begins at offset " +
                                               std::to_string(h.file_offset) + ", not 0");
    dropped_ += pending_.size() + record_.size();
    pending_.clear();
    record_.clear();
    in_record_ = false;
    in_file_ = true;
    gen_ = h.generation;
    log_ = h.log_number;
    first_pos_ = h.pos;
    next_offset_ = 0;
    parsed_ = 0;
  }
  pending_.insert(pending_.end(), payload.begin(), payload.end());
  next_offset_ += payload.size();
  return parse();
}

Status WalParser::parse() {
  size_t at = 0;
  Status st;
  auto corrupt = [&](const std::string& what) {
    return Status(StatusCode::kDataLoss, "WAL " + std::to_string(log_) + " at offset " +
                                             std::to_string(parsed_ + at) + ": " + what);
  };
  while (st.is_ok()) {
    const uint64_t off = parsed_ + at;
    const size_t left_in_block = kWalBlock - off % kWalBlock;
    const size_t have = pending_.size() - at;
    if (left_in_block < kWalHeader) {  // the block's trailer: zeros
      if (have < left_in_block) break;
      at += left_in_block;
      continue;
    }
    if (have < kWalHeader) break;
    const std::byte* p = pending_.data() + at;
    const size_t len = static_cast<size_t>(std::to_integer<uint8_t>(p[4])) |
                       (static_cast<size_t>(std::to_integer<uint8_t>(p[5])) << 8);
    const uint8_t type = std::to_integer<uint8_t>(p[6]);
    if (type == 0 && len == 0) {  // zeros to the block's end (preallocated space)
      if (have < left_in_block) break;
      at += left_in_block;
      continue;
    }
    if (kWalHeader + len > left_in_block) { st = corrupt("a record crosses its block"); break; }
    if (have < kWalHeader + len) break;
    const std::string_view data(reinterpret_cast<const char*>(p + kWalHeader), len);
    switch (type) {
      case 1:  // Full
        if (in_record_) dropped_ += record_.size();
        record_.clear();
        in_record_ = false;
        st = sink_(data);
        break;
      case 2:  // First
        if (in_record_) dropped_ += record_.size();
        record_.assign(data);
        in_record_ = true;
        break;
      case 3:  // Middle
        if (!in_record_) { st = corrupt("a Middle fragment without a First"); break; }
        record_.append(data);
        break;
      case 4:  // Last
        if (!in_record_) { st = corrupt("a Last fragment without a First"); break; }
        record_.append(data);
        in_record_ = false;
        st = sink_(record_);
        record_.clear();
        break;
      default:
        st = corrupt("record type " + std::to_string(type) +
                     " is not supported (recycled WAL files and WAL compression are not: set "
                     "recycle_log_file_num=0 and wal_compression=kNoCompression)");
        break;
    }
    if (!st.is_ok()) break;
    at += kWalHeader + len;
  }
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(at));
  parsed_ += at;
  return st;
}

Result<BatchHeader> batch_header(std::string_view rep) {
  if (rep.size() < 12) return Status(StatusCode::kDataLoss, "a WAL record of " + std::to_string(rep.size()) +
                                                                " bytes is not a WriteBatch (< 12)");
  BatchHeader h;
  std::memcpy(&h.sequence, rep.data(), 8);
  std::memcpy(&h.count, rep.data() + 8, 4);
  return h;
}

}  // namespace hyperloop::rocks
