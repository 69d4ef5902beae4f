// fault_test_util.h: helpers for the persistence and fault-injection tests
// (pmem_test.cc, durability_test.cc, fault_plan_test.cc).
//
//   TempDir        a per-test directory (under ::testing::TempDir(), or /dev/shm
//                  when TEST_TMPDIR is unset), removed at the end;
//                  PersistentMemory files live there.
//   seeds_to_run   the seeds a randomized test runs: HYPERLOOP_SEED=<s> runs
//                  only s (replay), HYPERLOOP_SEEDS=<n> runs n seeds.
//   RecordHistory  the tearing detector. The region is an array of 8-byte
//                  records; every gWRITE covers whole records and writes each
//                  one as {write id, checksum(seed, write id, record index)},
//                  so a record that mixes the bytes of two versions (or sits
//                  at the wrong place) fails its checksum. The history knows,
//                  per record, every version issued to it in issue order and
//                  a "floor": the oldest version that must still be there (the
//                  last write covered by an acknowledged gFLUSH, or by an
//                  acknowledgement when no power was lost). Allowed after a
//                  fault: the floor version or any version issued after it;
//                  all zeros (never written) only while the floor is "none".
//   PmemChain      a prim_test::Cluster whose tenant regions are files.
//   RecordWorkload pipelined record gWRITEs and gFLUSHes over a Group, with
//                  the two histories (acknowledged / flushed) kept for them.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "prim_test_util.h"

namespace hyperloop::fault_test {

// ---- a per-test temp directory -----------------------------------------------------------
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = "hyperloop_";
    if (info) name += std::string(info->test_suite_name()) + "_" + info->name();
    for (char& ch : name)
      if (ch == '/' || ch == ' ') ch = '_';
    name += "_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++);
    path_ = std::filesystem::path(base()) / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  // ::testing::TempDir(), except that without TEST_TMPDIR a tmpfs (/dev/shm)
  // is preferred: on a disk file PMDK's persist is msync(), which under I/O
  // load costs the tests tens of seconds; semantics are the same (the durable
  // image is the file, found again when reopened). HYPERLOOP_PMEM_DIR overrides.
  static std::string base() {
    if (const char* d = std::getenv("HYPERLOOP_PMEM_DIR"); d && *d) return d;
    const char* t = std::getenv("TEST_TMPDIR");
    std::error_code ec;
    if ((!t || !*t) && std::filesystem::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0)
      return "/dev/shm";
    return ::testing::TempDir();
  }
  static int& counter() {
    static int c = 0;
    return c;
  }
  std::filesystem::path path_;
};

// ---- seeds ---------------------------------------------------------------------------------
inline uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  return std::strtoull(v, nullptr, 0);
}
// HYPERLOOP_SEED=<s>: only s. Otherwise HYPERLOOP_SEEDS (default `count`)
// seeds derived from `base`.
inline std::vector<uint64_t> seeds_to_run(uint64_t base, uint64_t count) {
  if (const char* v = std::getenv("HYPERLOOP_SEED"); v && *v) return {std::strtoull(v, nullptr, 0)};
  count = env_u64("HYPERLOOP_SEEDS", count);
  std::vector<uint64_t> s;
  for (uint64_t k = 0; k < count; ++k) s.push_back(base + k);
  return s;
}
inline std::string replay_hint(uint64_t seed) {
  return "seed " + std::to_string(seed) + " (replay alone: HYPERLOOP_SEED=" + std::to_string(seed) + ")";
}

// splitmix64: the checksum and seed mixing.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// ---- self-checking records -------------------------------------------------------------------
inline constexpr size_t kRecord = 8;

inline uint32_t record_check(uint64_t seed, uint32_t id, uint64_t index) {
  return uint32_t(mix64(seed ^ mix64((uint64_t(id) << 32) ^ index)) | 1);  // never 0
}
inline void put_record(std::byte* p, uint64_t seed, uint32_t id, uint64_t index) {
  const uint32_t c = record_check(seed, id, index);
  std::memcpy(p, &id, 4);
  std::memcpy(p + 4, &c, 4);
}
// The payload of write `id` over records [first, first + count).
inline std::vector<std::byte> make_records(uint64_t seed, uint32_t id, uint64_t first, uint64_t count) {
  std::vector<std::byte> v(count * kRecord);
  for (uint64_t k = 0; k < count; ++k) put_record(v.data() + k * kRecord, seed, id, first + k);
  return v;
}

class RecordHistory {
 public:
  RecordHistory(uint64_t seed, size_t records) : seed_(seed), hist_(records), floor_(records, -1) {}

  size_t records() const { return hist_.size(); }
  uint64_t seed() const { return seed_; }
  // Issue order: record that write `id` covers [first, first + count).
  void issued(uint32_t id, uint64_t first, uint64_t count) {
    for (uint64_t r = first; r < first + count; ++r) hist_[r].push_back(id);
  }
  // How many versions each record in [first, first + count) has now (a
  // gFLUSH snapshots this at issue; its acknowledgement covers those).
  std::vector<uint32_t> versions(uint64_t first, uint64_t count) const {
    std::vector<uint32_t> v;
    for (uint64_t r = first; r < first + count; ++r) v.push_back(uint32_t(hist_[r].size()));
    return v;
  }
  // The first `n[k]` versions of record first + k are covered (durable or
  // acknowledged): the floor rises to the last of them.
  void cover(uint64_t first, const std::vector<uint32_t>& n) {
    for (size_t k = 0; k < n.size(); ++k) {
      const int64_t last = int64_t(std::min<size_t>(n[k], hist_[first + k].size())) - 1;
      floor_[first + k] = std::max(floor_[first + k], last);
    }
  }
  // The floor version of record r (0: none).
  uint32_t floor_id(uint64_t r) const { return floor_[r] < 0 ? 0 : hist_[r][size_t(floor_[r])]; }

  // Every record of `region` is intact and holds an allowed version.
  ::testing::AssertionResult check(const std::byte* region, size_t bytes, const std::string& who) const {
    const size_t n = std::min(records(), bytes / kRecord);
    for (size_t r = 0; r < n; ++r) {
      const std::byte* p = region + r * kRecord;
      uint32_t id, c;
      std::memcpy(&id, p, 4);
      std::memcpy(&c, p + 4, 4);
      const auto& h = hist_[r];
      const int64_t f = floor_[r];
      if (id == 0 && c == 0) {
        if (f < 0) continue;  // never durably written: the previous content (zeros) is fine
        return fail(who, r, id, c) << ": lost (all zeros), but version " << h[size_t(f)] << " was acknowledged";
      }
      if (c != record_check(seed_, id, r)) return fail(who, r, id, c) << ": torn or misplaced (bad checksum)";
      bool ok = false;
      for (size_t k = size_t(std::max<int64_t>(f, 0)); k < h.size() && !ok; ++k) ok = h[k] == id;
      if (!ok) {
        bool ever = false;
        for (uint32_t x : h) ever |= x == id;
        auto res = fail(who, r, id, c);
        if (!ever) return res << ": version " << id << " was never written to this record";
        return res << ": older than the acknowledged version " << h[size_t(f)];
      }
    }
    return ::testing::AssertionSuccess();
  }

 private:
  ::testing::AssertionResult fail(const std::string& who, size_t r, uint32_t id, uint32_t c) const {
    std::ostringstream os;
    os << who << ", record " << r << " (byte " << r * kRecord << "): holds id " << id << " check 0x" << std::hex << c
       << std::dec << "; versions issued:";
    const auto& h = hist_[r];
    for (size_t k = 0; k < h.size() && k < 16; ++k) os << " " << h[k];
    if (h.size() > 16) os << " ...(" << h.size() << ")";
    os << "; floor " << floor_id(r);
    return ::testing::AssertionFailure() << os.str();
  }

  uint64_t seed_;
  std::vector<std::vector<uint32_t>> hist_;
  std::vector<int64_t> floor_;
};

}  // namespace hyperloop::fault_test

// ---- a chain whose tenant regions are PersistentMemory files ---------------------------------

namespace hyperloop::fault_test {

inline constexpr uint32_t kPmemTenant = 7;

// A prim_test::Cluster (no group of its own) whose hosts register kPmemTenant
// over files <dir>/<tag>r<i>.pmem, and a Group over that tenant. Building a
// second PmemChain over the same directory and tag is a restart: the hosts
// find their regions in the files.
class PmemChain {
 public:
  static prim_test::ClusterOptions without_group(prim_test::ClusterOptions o) {
    o.make_group = false;
    return o;
  }
  PmemChain(const prim_test::ClusterOptions& o, const TempDir& dir, const std::string& tag = "",
            bool make_group = true)
      : c_(without_group(o)) {
    for (uint32_t i = 0; i < c_.n(); ++i) {
      paths_.push_back(dir.file(tag + "r" + std::to_string(i) + ".pmem"));
      soft_test::must(c_.host(i).register_tenant(kPmemTenant, o.region_size, paths_.back()),
                      "register_tenant with pmem_path");
    }
    if (make_group)
      c_.group_ptr() = soft_test::must(prim::Group::create(c_.client(), c_.hosts(), c_.group_options(kPmemTenant)),
                                       "Group::create");
  }

  prim_test::Cluster& cluster() { return c_; }
  prim::Group& group() { return c_.group(); }
  const std::vector<std::string>& paths() const { return paths_; }
  uint32_t n() const { return c_.n(); }

  // Every host loses power and its NIC dies with it.
  void power_fail_all() {
    for (uint32_t i = 0; i < c_.n(); ++i) {
      c_.host(i).power_fail();
      c_.nic(i).crash();
    }
  }
  // Replica i's region as its CPU sees it.
  std::vector<std::byte> peek(uint32_t i) const {
    std::vector<std::byte> b(c_.options().region_size);
    soft_test::must(c_.host(i).peek(kPmemTenant, 0, b), "peek");
    return b;
  }

 private:
  prim_test::Cluster c_;
  std::vector<std::string> paths_;
};

// ---- a workload of self-checking records over a Group -------------------------------------
// Pipelined gWRITEs of whole records and gFLUSHes of record ranges. Two
// histories follow the same writes with different floors:
//   acked    an acknowledged gWRITE covers its records (what a replica that
//            kept its memory must still show: nothing acknowledged is lost);
//   durable  an acknowledged gFLUSH covers every record version issued before
//            it in its range (what a replica that lost power must still show).
class RecordWorkload {
 public:
  struct Pending {
    prim::Op op;
    bool flush = false;
    uint64_t first = 0;
    std::vector<uint32_t> covered;  // versions per record the op covers once acknowledged
    uint64_t issued_ns = 0;
  };

  RecordWorkload(prim::Group& g, uint64_t seed, size_t records)
      : g_(g), seed_(seed), records_(records), acked_(seed, records), durable_(seed, records), rng_(mix64(seed)) {}

  const RecordHistory& acked() const { return acked_; }
  const RecordHistory& durable() const { return durable_; }
  std::deque<Pending>& pending() { return ops_; }
  uint64_t acked_writes() const { return acked_writes_; }
  uint64_t acked_flushes() const { return acked_flushes_; }
  uint64_t issued() const { return issued_; }
  uint64_t below(uint64_t n) { return n ? rng_() % n : 0; }

  Status write(uint64_t first, uint64_t count, uint64_t now_ns = 0) {
    Pending& p = ops_.emplace_back();
    const uint32_t id = next_id_;
    const Status s = g_.write(p.op, first * kRecord, make_records(seed_, id, first, count));
    if (!s.is_ok()) {
      ops_.pop_back();
      return s;
    }
    ++next_id_;
    ++issued_;
    acked_.issued(id, first, count);
    durable_.issued(id, first, count);
    p.first = first;
    p.covered = acked_.versions(first, count);
    p.issued_ns = now_ns;
    return s;
  }
  Status flush(uint64_t first, uint64_t count, uint64_t now_ns = 0) {
    Pending& p = ops_.emplace_back();
    p.flush = true;
    p.first = first;
    p.covered = durable_.versions(first, count);
    p.issued_ns = now_ns;
    const Status s = g_.flush(p.op, first * kRecord, count * kRecord);
    if (!s.is_ok()) {
      ops_.pop_back();
      return s;
    }
    ++issued_;
    return s;
  }
  // A gFLUSH every 1 to 5 operations (half of them over the whole region),
  // otherwise a gWRITE of 1-32 records, or now and then up to 512.
  Status random(uint64_t now_ns = 0) {
    if (--until_flush_ == 0) {
      until_flush_ = 1 + below(5);
      if (below(2)) return flush(0, records_, now_ns);
      const uint64_t count = 1 + below(records_);
      return flush(below(records_ - count + 1), count, now_ns);
    }
    const uint64_t count = std::min<uint64_t>(records_, below(4) ? 1 + below(32) : 1 + below(512));
    return write(below(records_ - count + 1), count, now_ns);
  }
  // Takes completed operations off the front (they complete in order).
  void retire() {
    while (!ops_.empty() && ops_.front().op.done()) {
      Pending& p = ops_.front();
      if (p.op.status().is_ok()) {
        if (p.flush) {
          durable_.cover(p.first, p.covered);
          ++acked_flushes_;
        } else {
          acked_.cover(p.first, p.covered);
          ++acked_writes_;
        }
      }
      ops_.pop_front();
    }
  }

 private:
  prim::Group& g_;
  uint64_t seed_;
  size_t records_;
  RecordHistory acked_, durable_;
  std::mt19937_64 rng_;
  std::deque<Pending> ops_;
  uint32_t next_id_ = 1;
  uint64_t until_flush_ = 1;
  uint64_t issued_ = 0, acked_writes_ = 0, acked_flushes_ = 0;
};


}  // namespace hyperloop::fault_test
