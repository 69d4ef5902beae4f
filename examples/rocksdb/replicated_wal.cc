#include "replicated_wal.h"

#include <chrono>
#include <cstring>
#include <thread>

namespace hyperloop::rocks {
namespace {

constexpr uint32_t kStripeBytes = 64 << 10;
constexpr size_t kScanRead = 1 << 20;  // bytes per Store::read while scanning

std::span<const std::byte> word_bytes(const uint64_t& v) { return {reinterpret_cast<const std::byte*>(&v), 8}; }

uint64_t now_ns() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

// The live part of the ring [head, tail), copied through the chain once, so
// that a scan costs a few large reads instead of two per chunk.
struct RingImage {
  uint64_t head = 0;
  std::vector<std::byte> bytes;
  Status read(uint64_t ring_bytes, uint64_t data_off, std::span<std::byte> dst) const {
    // data_off is a data-area offset inside the ring; map it back to a position.
    const uint64_t phys = data_off - kRingHeaderBytes;
    const uint64_t rel = (phys + ring_bytes - head % ring_bytes) % ring_bytes;
    if (rel + dst.size() > bytes.size()) return not_found("past the tail");
    std::memcpy(dst.data(), bytes.data() + rel, dst.size());
    return Status::ok();
  }
};

Result<RingImage> copy_live(txn::Store& store, const RingHeader& h) {
  RingImage img;
  img.head = h.head;
  img.bytes.resize(h.tail - h.head);
  size_t done = 0;
  for (const Piece& p : ring_pieces(h.ring_bytes, h.head, h.tail - h.head)) {
    for (uint64_t at = 0; at < p.len; at += kScanRead) {
      const uint64_t n = std::min<uint64_t>(kScanRead, p.len - at);
      HL_RETURN_IF_ERROR(store.read(p.offset + at, std::span(img.bytes).subspan(done, n)));
      done += n;
    }
  }
  return img;
}

// Walks the chunks of an image from head to tail.
Status walk(const RingHeader& h, const RingImage& img, const std::function<Status(const Chunk&)>& fn) {
  RingReader reader(
      [&](uint64_t off, std::span<std::byte> dst) { return img.read(h.ring_bytes, off, dst); }, h.ring_bytes);
  for (uint64_t pos = h.head; pos < h.tail;) {
    Result<Chunk> c = reader.chunk(pos);
    if (!c.is_ok())
      return Status(StatusCode::kDataLoss, "WAL ring: no valid chunk at " + std::to_string(pos) + " below the tail " +
                                               std::to_string(h.tail) + " (" + c.status().message() + ")");
    HL_RETURN_IF_ERROR(fn(c.value()));
    pos += chunk_span(c.value().header.len);
  }
  return Status::ok();
}

}  // namespace

txn::StoreOptions ring_store_options(uint32_t tenant, const WalOptions& o) {
  txn::StoreOptions so;
  so.tenant = tenant;
  so.data_size = kRingHeaderBytes + o.ring_bytes;
  // Room for several of the largest records before truncation frees any.
  so.log_size = std::max<size_t>(4 << 20, 8 * (size_t{o.max_chunk} + 4096));
  so.stripe_bytes = kStripeBytes;
  so.group.staging_bytes = std::max<size_t>(so.group.staging_bytes, 4 * (size_t{o.max_chunk} + 4096));
  return so;
}

Result<std::unique_ptr<ReplicatedWal>> ReplicatedWal::open(txn::Store& store, const WalOptions& o) {
  if (o.ring_bytes < kMinRingBytes || o.ring_bytes > kMaxRingBytes || o.ring_bytes % 8 != 0)
    return invalid_argument("WalOptions::ring_bytes must be a multiple of 8 in [64 KiB, 1 TiB]");
  if (o.max_chunk == 0 || o.max_chunk > kMaxChunkPayload || chunk_span(o.max_chunk) > o.ring_bytes / 2)
    return invalid_argument("WalOptions::max_chunk must be in [1, 1 MiB] and its chunk at most half the ring");
  if (!o.appliers.empty() && o.progress == nullptr)
    return invalid_argument("WalOptions::appliers need WalOptions::progress (where they publish)");
  if (store.data_size() < kRingHeaderBytes + o.ring_bytes)
    return invalid_argument("the store's data area is smaller than the ring (use ring_store_options)");
  std::unique_ptr<ReplicatedWal> w(new ReplicatedWal(store, o));
  std::byte hb[40];
  HL_RETURN_IF_ERROR(store.read(0, hb));
  Result<RingHeader> h = decode_ring_header(hb, o.ring_bytes);
  if (h.status().code() == StatusCode::kNotFound) {
    txn::Transaction t = store.begin();
    HL_RETURN_IF_ERROR(t.write(0, encode_ring_header(o.ring_bytes)));
    HL_RETURN_IF_ERROR(t.commit());
    h = RingHeader{o.ring_bytes, 0, 0, 0};
  }
  if (!h.is_ok()) return h.status();
  w->head_ = h.value().head;
  w->tail_ = h.value().tail;
  HL_ASSIGN_OR_RETURN(RingImage img, copy_live(store, h.value()));
  HL_RETURN_IF_ERROR(walk(h.value(), img, [&](const Chunk& c) {
    auto key = std::make_pair(c.header.generation, c.header.log_number);
    auto [it, fresh] = w->files_.try_emplace(key, File{c.header.pos, 0, false});
    if (fresh && c.header.file_offset != 0)
      return Status(StatusCode::kDataLoss, "WAL ring: file " + std::to_string(c.header.log_number) +
                                               " starts at offset " + std::to_string(c.header.file_offset));
    it->second.next_offset = c.header.file_offset + c.header.len;
    return Status::ok();
  }));
  w->generation_ = h.value().generation + 1;
  HL_RETURN_IF_ERROR(w->write_word(kGenerationOffset, w->generation_));
  w->stats_.files_live = w->files_.size();
  return w;
}

Status ReplicatedWal::write_word(uint64_t offset, uint64_t value) {
  txn::Transaction t = store_.begin();
  HL_RETURN_IF_ERROR(t.write(offset, word_bytes(value)));
  return t.commit();
}

Status ReplicatedWal::append(uint64_t log_number, uint64_t file_offset, std::span<const std::byte> bytes) {
  std::lock_guard lk(mu_);
  if (resync_) {
    // The last commit failed after it was sent: the store has resolved it
    // (recovery), so the ring's tail says whether its chunk is in.
    std::byte hb[40];
    HL_RETURN_IF_ERROR(store_.read(0, hb));
    HL_ASSIGN_OR_RETURN(RingHeader h, decode_ring_header(hb, o_.ring_bytes));
    if (h.tail != tail_) {  // not in: forget it
      tail_ = h.tail;
      if (undo_.fresh)
        files_.erase(undo_.key);
      else
        files_[undo_.key].next_offset = undo_.next_offset;
    }
    resync_ = false;
  }
  const auto key = std::make_pair(generation_, log_number);
  auto it = files_.find(key);
  if (it == files_.end()) {
    if (file_offset != 0)
      return invalid_argument("WAL " + std::to_string(log_number) + ": its first bytes are at offset " +
                              std::to_string(file_offset) + ", not 0");
    if (!files_.empty() && files_.rbegin()->first > key)
      return invalid_argument("WAL " + std::to_string(log_number) + " is older than a file already in the ring");
  } else if (it->second.next_offset != file_offset) {
    return invalid_argument("WAL " + std::to_string(log_number) + ": bytes at offset " + std::to_string(file_offset) +
                            ", expected " + std::to_string(it->second.next_offset));
  } else if (have_current_ && current_ != key) {
    return invalid_argument("WAL " + std::to_string(log_number) + " was followed by a newer file");
  }
  for (size_t at = 0; at < bytes.size();) {
    const size_t n = std::min<size_t>(o_.max_chunk, bytes.size() - at);
    HL_RETURN_IF_ERROR(commit_chunk(log_number, file_offset + at, bytes.subspan(at, n)));
    at += n;
  }
  ++stats_.appends;
  return Status::ok();
}

Status ReplicatedWal::commit_chunk(uint64_t log_number, uint64_t file_offset, std::span<const std::byte> payload) {
  const uint64_t span = chunk_span(payload.size());
  HL_RETURN_IF_ERROR(make_room(span));
  const uint64_t pos = tail_;
  std::vector<std::byte> chunk = encode_chunk(
      {static_cast<uint32_t>(payload.size()), pos, generation_, log_number, file_offset}, payload);
  txn::Transaction t = store_.begin();
  size_t done = 0;
  for (const Piece& p : ring_pieces(o_.ring_bytes, pos, chunk.size())) {
    HL_RETURN_IF_ERROR(t.write(p.offset, std::span(chunk).subspan(done, p.len)));
    done += p.len;
  }
  const uint64_t new_tail = pos + span;
  HL_RETURN_IF_ERROR(t.write(kTailOffset, word_bytes(new_tail)));
  // The file's bookkeeping first: a commit in doubt may be in the ring, so its
  // space is the file's either way.
  const auto key = std::make_pair(generation_, log_number);
  auto [it, fresh] = files_.try_emplace(key, File{pos, 0, false});
  undo_ = {key, fresh, it->second.next_offset};
  it->second.next_offset = file_offset + payload.size();
  const bool had_current = have_current_;
  const auto old_current = current_;
  current_ = key;
  have_current_ = true;
  tail_ = new_tail;
  if (Status st = t.commit(); !st.is_ok()) {
    if (st.code() == StatusCode::kAborted) {  // nothing was sent
      tail_ = pos;
      if (fresh)
        files_.erase(key);
      else
        it->second.next_offset = file_offset;
      current_ = old_current;
      have_current_ = had_current;
    } else {
      resync_ = true;  // in doubt: settled at the next append
    }
    return st;
  }
  stats_.files_live = files_.size();
  ++stats_.chunks;
  stats_.bytes += payload.size();
  return Status::ok();
}

Status ReplicatedWal::make_room(uint64_t need) {
  if (tail_ + need - head_ <= o_.ring_bytes) return Status::ok();
  const uint64_t start = now_ns();
  bool waited = false;
  for (;;) {
    HL_ASSIGN_OR_RETURN(uint64_t head, reclaim_locked());
    (void)head;
    if (tail_ + need - head_ <= o_.ring_bytes) return Status::ok();
    if (!waited) ++stats_.full_waits;
    waited = true;
    if (now_ns() - start > o_.full_timeout_ns) {
      std::string who = "the primary has not deleted WAL files yet (RocksDB deletes one once its memtables are "
                        "flushed: lower max_total_wal_size)";
      if (o_.progress) {
        Result<std::vector<std::pair<std::string, uint64_t>>> marks = o_.progress->progress(o_.tenant);
        if (marks.is_ok()) {
          for (const std::string& a : o_.appliers) {
            uint64_t v = 0;
            for (auto& [k, val] : marks.value())
              if (k == a + ".pos") v = val;
            if (v <= head_) who += "; applier " + a + " has published position " + std::to_string(v);
          }
        }
      }
      return resource_exhausted("WAL ring full (head " + std::to_string(head_) + ", tail " + std::to_string(tail_) +
                                ", " + std::to_string(need) + " bytes needed) for " +
                                std::to_string(o_.full_timeout_ns / 1'000'000) + " ms: " + who);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // waiting on other processes' progress
  }
}

Result<uint64_t> ReplicatedWal::reclaim() {
  std::lock_guard lk(mu_);
  return reclaim_locked();
}

Result<uint64_t> ReplicatedWal::reclaim_locked() {
  // The primary's bound: the first chunk of its oldest file not yet deleted
  // (the tail when every file is).
  uint64_t bound = tail_;
  for (auto& [key, f] : files_) {
    if (!f.deleted) {
      bound = std::min(bound, f.first_pos);
      break;
    }
  }
  if (!o_.appliers.empty()) {
    HL_ASSIGN_OR_RETURN(auto marks, o_.progress->progress(o_.tenant));
    for (const std::string& a : o_.appliers) {
      uint64_t v = 0;
      for (auto& [k, val] : marks)
        if (k == a + ".pos") v = val;
      bound = std::min(bound, v);
    }
  }
  // Only to the first chunk of a file (where a parser can start).
  uint64_t new_head = head_;
  for (auto& [key, f] : files_) {
    if (f.first_pos <= bound) new_head = std::max(new_head, f.first_pos);
  }
  if (bound == tail_) new_head = std::max(new_head, tail_);
  if (new_head <= head_) return head_;
  HL_RETURN_IF_ERROR(write_word(kHeadOffset, new_head));
  head_ = new_head;
  ++stats_.head_moves;
  for (auto it = files_.begin(); it != files_.end();) {
    if (it->second.first_pos < head_ && it->second.deleted)
      it = files_.erase(it);
    else
      ++it;
  }
  stats_.files_live = files_.size();
  return head_;
}

void ReplicatedWal::log_deleted(uint64_t log_number) {
  std::lock_guard lk(mu_);
  auto it = files_.find({generation_, log_number});
  if (it != files_.end()) it->second.deleted = true;
}

void ReplicatedWal::earlier_generations_flushed() {
  std::lock_guard lk(mu_);
  for (auto& [key, f] : files_)
    if (key.first < generation_) f.deleted = true;
}

Status ReplicatedWal::settle() {
  std::lock_guard lk(mu_);
  HL_RETURN_IF_ERROR(store_.drain());
  return write_word(kTailOffset, tail_);
}

Status ReplicatedWal::replay(const std::function<Status(std::string_view rep)>& fn) {
  std::lock_guard lk(mu_);
  const RingHeader h{o_.ring_bytes, head_, tail_, generation_};
  HL_ASSIGN_OR_RETURN(RingImage img, copy_live(store_, h));
  WalParser parser([&](std::string_view rep) { return fn(rep); });
  return walk(h, img, [&](const Chunk& c) { return parser.feed(c.header, c.payload); });
}

uint64_t ReplicatedWal::head() const {
  std::lock_guard lk(mu_);
  return head_;
}
uint64_t ReplicatedWal::tail() const {
  std::lock_guard lk(mu_);
  return tail_;
}
WalStats ReplicatedWal::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

}  // namespace hyperloop::rocks
