// txn/format.cc: layout, records, heads and the recovery plan (txn/format.h).
#include "format.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace hyperloop::txn::internal {

namespace {

constexpr uint64_t kFormatMagic = 0x3230'4e58'544c'4848ull;  // "HHLTXN02"
constexpr uint64_t kRecordMagic = 0x4443'4552'4c48'0002ull;
constexpr uint64_t kHeadMagic = 0x4441'4548'4c48'0002ull;
constexpr size_t kChecksumWord = 4;  // the record header's checksum is word 4

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
uint64_t load(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
void store(std::byte* p, uint64_t v) { std::memcpy(p, &v, 8); }
size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// A 64-bit checksum of `bytes` (a multiple of 8) with word `skip` taken as 0.
uint64_t checksum(const std::byte* p, size_t bytes, size_t skip) {
  uint64_t h = 0x5ca1ab1e'0ddba11ull ^ bytes;
  for (size_t w = 0; w < bytes / 8; ++w) {
    const uint64_t v = w == skip ? 0 : load(p + 8 * w);
    h = (h ^ v) * 0x9e3779b97f4a7c15ull;
    h ^= h >> 29;
  }
  return mix64(h);
}

// The format block: the layout, the store's identity (a random 128-bit id
// chosen when it was formatted) and the replica count it runs on.
struct Format {
  uint64_t magic, data_size, log_size, stripe, stripes, region;
  uint64_t id_hi, id_lo, replicas;
  uint64_t reserved[6];
  uint64_t check;
};
static_assert(sizeof(Format) == kFormatBytes);
constexpr size_t kFormatCheckWord = 15;

Format make_format(const Layout& lay, const StoreId& id, uint32_t replicas) {
  Format f{};
  f.magic = kFormatMagic;
  f.data_size = lay.data_size;
  f.log_size = lay.log_size;
  f.stripe = lay.stripe;
  f.stripes = lay.stripes;
  f.region = lay.region;
  f.id_hi = id.hi;
  f.id_lo = id.lo;
  f.replicas = replicas;
  f.check = checksum(reinterpret_cast<const std::byte*>(&f), sizeof f, kFormatCheckWord);
  return f;
}

enum class FormatState { kBlank, kValid, kOther, kTorn };
FormatState read_format(const Layout& lay, std::span<const std::byte> image, Format* out) {
  Format f;
  std::memcpy(&f, image.data(), sizeof f);
  if (f.magic != kFormatMagic) {
    for (size_t i = 0; i < sizeof f; ++i)
      if (image[i] != std::byte{0}) return FormatState::kTorn;
    return FormatState::kBlank;
  }
  if (f.check != checksum(image.data(), sizeof f, kFormatCheckWord)) return FormatState::kTorn;
  *out = f;
  const bool same = f.data_size == lay.data_size && f.log_size == lay.log_size && f.stripe == lay.stripe &&
                    f.stripes == lay.stripes && f.region == lay.region;
  return same ? FormatState::kValid : FormatState::kOther;
}

bool read_head(std::span<const std::byte> image, uint32_t slot, Head& h) {
  std::memcpy(&h, image.data() + head_slot_offset(slot), sizeof h);
  return h.lsn != 0 && h.epoch != 0 && h.check == make_head(h.lsn, h.pos, h.epoch).check;
}
// Heads are ordered by LSN, then by epoch (a recovery that replayed nothing
// writes the LSN of the head before it, under a new epoch).
bool newer(const Head& a, const Head& b) { return a.lsn != b.lsn ? a.lsn > b.lsn : a.epoch > b.epoch; }

std::string id_text(const StoreId& id) { return id.to_string(); }

}  // namespace

Result<Layout> layout_of(const StoreOptions& o) {
  if (o.data_size == 0) return invalid_argument("StoreOptions: data_size must be > 0");
  if (o.stripe_bytes < 8 || (o.stripe_bytes & (o.stripe_bytes - 1)))
    return invalid_argument("StoreOptions: stripe_bytes must be a power of two >= 8");
  if (o.log_size < 1024 || o.log_size % kAlign)
    return invalid_argument("StoreOptions: log_size must be a multiple of 64 and >= 1024");
  if (o.data_size > (size_t(1) << 40) || o.log_size > (size_t(1) << 32))
    return invalid_argument("StoreOptions: data_size or log_size too large");
  if (o.read_replica < -1) return invalid_argument("StoreOptions: read_replica must be -1 or a chain position");
  Layout l;
  l.stripe = o.stripe_bytes;
  l.log_off = kSuperBytes;
  l.log_size = o.log_size;
  l.lock_off = l.log_off + l.log_size;
  l.stripes = (o.data_size + o.stripe_bytes - 1) / o.stripe_bytes;
  l.data_off = align_up(l.lock_off + 8 * l.stripes, kAlign);
  l.data_size = o.data_size;
  l.region = l.data_off + l.data_size;
  return l;
}

Status check_data_range(const Layout& lay, uint64_t offset, uint64_t len, const char* what) {
  if (len == 0) return invalid_argument(std::string(what) + ": length 0");
  if (offset > lay.data_size || len > lay.data_size - offset)
    return out_of_range(std::string(what) + ": [" + std::to_string(offset) + ", +" + std::to_string(len) +
                        ") is outside the data area of " + std::to_string(lay.data_size) + " bytes");
  return Status::ok();
}

namespace {
uint64_t epoch_entry_check(uint64_t epoch, uint64_t end) { return mix64(0xE70C7AB1Eull ^ mix64(epoch) ^ (end * 0x9E3779B97F4A7C15ull)); }
}  // namespace

std::vector<std::pair<uint64_t, uint64_t>> ended_epochs(std::span<const std::byte> image) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  if (image.size() < kEpochTableOff + kEpochTableEntries * kEpochEntryBytes) return out;
  for (size_t i = 0; i < kEpochTableEntries; ++i) {
    const std::byte* p = image.data() + kEpochTableOff + i * kEpochEntryBytes;
    const uint64_t e = load(p), end = load(p + 8), check = load(p + 16);
    if (e != 0 && e % kEpochTableEntries == i && check == epoch_entry_check(e, end)) out.emplace_back(e, end);
  }
  return out;
}

void record_ended_epoch(std::span<std::byte> image, uint64_t epoch, uint64_t end_lsn) {
  std::byte* p = image.data() + kEpochTableOff + (epoch % kEpochTableEntries) * kEpochEntryBytes;
  store(p, epoch);
  store(p + 8, end_lsn);
  store(p + 16, epoch_entry_check(epoch, end_lsn));
  store(p + 24, 0);
}

Head make_head(uint64_t lsn, uint64_t pos, uint64_t epoch) {
  return {lsn, pos, epoch, mix64(kHeadMagic ^ mix64(lsn) ^ (pos * 31) ^ mix64(epoch ^ 0xE90C4ull))};
}

bool read_identity(std::span<const std::byte> image, StoreId* id, uint32_t* replicas) {
  if (image.size() < kFormatBytes) return false;
  Format f;
  std::memcpy(&f, image.data(), sizeof f);
  if (f.magic != kFormatMagic || f.check != checksum(image.data(), sizeof f, kFormatCheckWord)) return false;
  *id = {f.id_hi, f.id_lo};
  *replicas = uint32_t(f.replicas);
  return true;
}

std::vector<Extent> coalesce(std::span<const std::pair<uint64_t, std::span<const std::byte>>> writes) {
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [off, b] : writes) spans.emplace_back(off, off + b.size());
  std::sort(spans.begin(), spans.end());
  std::vector<Extent> out;
  uint64_t lo = 0, hi = 0;
  auto close = [&] {
    if (hi > lo) out.push_back({lo, std::vector<std::byte>(hi - lo)});
  };
  for (const auto& [a, b] : spans) {
    if (hi > lo && a <= hi) {
      hi = std::max(hi, b);
      continue;
    }
    close();
    lo = a;
    hi = b;
  }
  close();
  for (const auto& [off, b] : writes) {  // in order: the later write wins
    auto it = std::upper_bound(out.begin(), out.end(), off, [](uint64_t v, const Extent& e) { return v < e.offset; });
    Extent& e = *(it - 1);
    std::memcpy(e.bytes.data() + (off - e.offset), b.data(), b.size());
  }
  return out;
}

Result<Record> build_record(const Layout& lay, size_t staging_bytes, const std::vector<Extent>& ranges) {
  if (ranges.size() > kMaxRanges)
    return invalid_argument("commit: " + std::to_string(ranges.size()) + " ranges, at most " +
                            std::to_string(kMaxRanges) + " per transaction");
  size_t payload = 0;
  for (const auto& e : ranges) payload += e.bytes.size();
  Record r;
  r.payload_off = kRecordHeader + kRangeEntry * ranges.size();
  const size_t bytes = align_up(r.payload_off + payload + 8, kAlign);
  if (bytes > lay.log_size / 2)
    return resource_exhausted("commit: the redo record (" + std::to_string(bytes) +
                              " bytes) is larger than half the log (log_size " + std::to_string(lay.log_size) + ")");
  if (bytes > staging_bytes)
    return resource_exhausted("commit: the redo record (" + std::to_string(bytes) +
                              " bytes) is larger than the group's staging_bytes (" + std::to_string(staging_bytes) +
                              ")");
  r.bytes.assign(bytes, std::byte{0});
  std::byte* p = r.bytes.data();
  store(p, kRecordMagic);
  const uint64_t sizes = uint64_t(bytes) | (uint64_t(ranges.size()) << 32);
  store(p + 24, sizes);
  size_t at = r.payload_off;
  for (size_t k = 0; k < ranges.size(); ++k) {
    store(p + kRecordHeader + kRangeEntry * k, ranges[k].offset);
    store(p + kRecordHeader + kRangeEntry * k + 8, ranges[k].bytes.size());
    std::memcpy(p + at, ranges[k].bytes.data(), ranges[k].bytes.size());
    at += ranges[k].bytes.size();
  }
  return r;
}

void seal_record(Record& rec, uint64_t lsn, uint64_t txn, uint64_t epoch) {
  std::byte* p = rec.bytes.data();
  store(p + 8, lsn);
  store(p + 16, txn);
  store(p + 40, epoch);
  store(p + rec.bytes.size() - 8, lsn ^ kCommitMagic);
  store(p + 8 * kChecksumWord, checksum(p, rec.bytes.size(), kChecksumWord));
}

size_t valid_record(const Layout& lay, std::span<const std::byte> image, uint64_t pos, uint64_t lsn,
                    uint64_t epoch) {
  const size_t phys = pos % lay.log_size;
  if (phys + kRecordHeader + 8 > lay.log_size) return 0;
  const std::byte* p = image.data() + lay.log_off + phys;
  if (load(p) != kRecordMagic || load(p + 8) != lsn || load(p + 40) != epoch) return 0;
  const uint64_t sizes = load(p + 24);
  const size_t bytes = uint32_t(sizes), n = sizes >> 32;
  if (bytes % kAlign || bytes < kRecordHeader + 8 || phys + bytes > lay.log_size || n == 0 || n > kMaxRanges)
    return 0;
  if (kRecordHeader + kRangeEntry * n + 8 > bytes) return 0;
  size_t payload = 0;
  for (size_t k = 0; k < n; ++k) {
    const uint64_t off = load(p + kRecordHeader + kRangeEntry * k), len = load(p + kRecordHeader + kRangeEntry * k + 8);
    if (len == 0 || off > lay.data_size || len > lay.data_size - off) return 0;
    payload += len;
    if (payload > bytes) return 0;
  }
  if (kRecordHeader + kRangeEntry * n + payload + 8 > bytes) return 0;
  if (load(p + bytes - 8) != (lsn ^ kCommitMagic)) return 0;
  if (load(p + 8 * kChecksumWord) != checksum(p, bytes, kChecksumWord)) return 0;
  return bytes;
}

Result<Plan> plan_recovery(const Layout& lay, const std::vector<std::vector<std::byte>>& images,
                           const PlanInput& in) {
  Plan plan;
  const size_t n = images.size();
  // Identity first: which replicas belong to this store. A replica in
  // reseed_mask counts as blank, whatever it holds.
  std::vector<bool> member(n, false);
  std::vector<Format> fmt(n);
  StoreId id = in.expect;
  for (size_t i = 0; i < n; ++i) {
    if (in.reseed_mask & (1u << i)) continue;
    const FormatState f = read_format(lay, images[i], &fmt[i]);
    if (f == FormatState::kOther)
      return Status(StatusCode::kDataLoss, "replica " + std::to_string(i) +
                                               " holds a store formatted with other sizes (data_size, log_size, "
                                               "stripe_bytes) than these options (re-seed it explicitly to "
                                               "overwrite it)");
    if (f != FormatState::kValid) continue;
    const StoreId its{fmt[i].id_hi, fmt[i].id_lo};
    if (id.is_zero()) id = its;
    if (its != id) {
      std::string who;
      for (size_t j = 0; j < i; ++j)
        if (member[j]) who += (who.empty() ? "" : ", ") + std::to_string(j);
      return Status(StatusCode::kDataLoss,
                    "replica " + std::to_string(i) + " holds store " + id_text(its) + ", not store " + id_text(id) +
                        (in.expect.is_zero() ? " (held by replica " + who + ")" : " (the one this client recovered)") +
                        ": a region of another store is never taken as a lagging replica (re-seed it explicitly "
                        "to overwrite it)");
    }
    member[i] = true;
  }
  // The reference: the member with the newest durable head.
  Head best{};
  uint32_t best_slot = 0;
  uint64_t max_epoch = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!member[i]) continue;
    for (uint32_t slot = 0; slot < 2; ++slot) {
      Head h;
      if (!read_head(images[i], slot, h)) continue;
      max_epoch = std::max(max_epoch, h.epoch);
      if (plan.reference < 0 || newer(h, best)) {
        best = h;
        best_slot = slot;
        plan.reference = int(i);
      }
    }
  }
  if (plan.reference < 0) {  // a blank store (or a format that never became durable)
    plan.id = id.is_zero() ? in.fresh_id : id;
    plan.formatted = true;
    plan.target.assign(lay.region, std::byte{0});
    const Format f = make_format(lay, plan.id, uint32_t(n));
    std::memcpy(plan.target.data(), &f, sizeof f);
    const Head h = make_head(1, 0, 1);
    std::memcpy(plan.target.data() + head_slot_offset(0), &h, sizeof h);
    plan.head_lsn = 1;
    plan.head_pos = 0;
    plan.head_slot = 0;
    plan.epoch = 1;
    return plan;
  }
  const Format& ref = fmt[size_t(plan.reference)];
  if (ref.replicas != n && !in.allow_resize)
    return failed_precondition("store " + id_text(id) + " runs on " + std::to_string(ref.replicas) +
                               " replicas; recovering it on " + std::to_string(n) +
                               " would change its chain (allow it explicitly: RecoveryOptions::allow_resize)");
  plan.id = id;
  plan.target = images[size_t(plan.reference)];
  {
    const Format f = make_format(lay, id, uint32_t(n));
    std::memcpy(plan.target.data(), &f, sizeof f);
  }

  // Replay: the next LSN from whichever replica holds it intact.
  std::vector<bool> touched(lay.stripes, false);
  uint64_t lsn = best.lsn, pos = best.pos;
  for (;;) {
    size_t bytes = 0;
    const std::vector<std::byte>* from = nullptr;
    uint64_t at = pos;
    for (int pass = 0; pass < 2 && !bytes; ++pass) {
      if (pass == 1) {
        if (pos % lay.log_size == 0) break;
        at = pos + (lay.log_size - pos % lay.log_size);  // the record skipped the ring's end
      }
      for (size_t i = 0; i < n && !bytes; ++i)
        if (member[i] && (bytes = valid_record(lay, images[i], at, lsn, best.epoch))) from = &images[i];
    }
    if (!bytes || at + bytes - best.pos > lay.log_size) break;
    const std::byte* p = from->data() + lay.log_off + at % lay.log_size;
    const uint64_t ranges = load(p + 24) >> 32;
    size_t payload = kRecordHeader + kRangeEntry * ranges;
    for (size_t k = 0; k < ranges; ++k) {
      const uint64_t off = load(p + kRecordHeader + kRangeEntry * k), len = load(p + kRecordHeader + kRangeEntry * k + 8);
      std::memcpy(plan.target.data() + lay.data_off + off, p + payload, len);
      payload += len;
      for (uint64_t s = off / lay.stripe; s <= (off + len - 1) / lay.stripe; ++s) touched[s] = true;
    }
    ++plan.replayed;
    ++lsn;
    pos = at + bytes;
  }

  // Locks: all cleared; a stripe that was locked, replayed or differs between
  // replicas gets a version above every replica's.
  for (size_t s = 0; s < lay.stripes; ++s) {
    uint64_t max_v = 0;
    bool changed = touched[s];
    const uint64_t first = load(images[0].data() + lay.lock_off + 8 * s);
    for (size_t i = 0; i < n; ++i) {
      const uint64_t w = load(images[i].data() + lay.lock_off + 8 * s);
      max_v = std::max(max_v, w & kVersionMask);
      if ((w & ~kVersionMask) || w != first) changed = true;
    }
    store(plan.target.data() + lay.lock_off + 8 * s, changed ? ((max_v + 1) & kVersionMask) : first);
  }
  plan.head_lsn = lsn;
  plan.head_pos = pos;
  plan.head_slot = best_slot ^ 1;
  plan.epoch = max_epoch + 1;
  plan.ended_epoch = best.epoch;
  record_ended_epoch(plan.target, plan.ended_epoch, plan.head_lsn);
  const Head h = make_head(lsn, pos, plan.epoch);
  std::memcpy(plan.target.data() + head_slot_offset(plan.head_slot), &h, sizeof h);
  return plan;
}

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%016llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace hyperloop::txn::internal
