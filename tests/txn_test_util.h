// txn_test_util.h: a transactional store over a test chain (txn_test.cc).
//
//   Rig   a prim_test::Cluster (DRAM regions) or a fault_test::PmemChain
//         (regions are files: building a second Rig over the same directory
//         and tag is a restart) with a txn::Store opened over it, a model of
//         the data area (what every committed transaction wrote), and checks
//         that read every replica's region with its CPU (peek): data area
//         equal to the model, lock words unlocked, regions byte-identical.
//         Drive::kManual (deterministic: the store's clock is the executor's
//         virtual time, its progress hook steps the executor and runs every
//         host's agent turn, replacement hosts included) or Drive::kThreads.
//         RigOptions::on_device (kThreads, DRAM regions): on the device under
//         test when HYPERLOOP_TEST_DEVICE is set (prim_test_util.h's Cluster,
//         device_test_util.h); the client, replacement clients and hosts
//         then get devices opened by that name.
//   Layout the region layout of hyperloop/txn.h, computed from the options:
//         superblock [0, 4 KiB), log [4 KiB, +log_size), lock table right
//         after the log (8 bytes per stripe), data area = last data_size bytes.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "fault_test_util.h"
#include "hyperloop/primitives.h"
#include "hyperloop/soft_rnic.h"
#include "hyperloop/txn.h"
#include "prim_test_util.h"
#include "soft_test_util.h"

namespace hyperloop::txn_test {

using prim::ForwardMode;
using prim::ReplicaHost;
using prim_test::Cluster;
using prim_test::ClusterOptions;
using prim_test::Drive;
using soft_test::BytesEqual;
using soft_test::IsOk;
using soft_test::must;
using soft_test::pattern;
using txn::Store;
using txn::StoreOptions;
using txn::StoreStats;
using txn::Transaction;
namespace soft = ::hyperloop::soft;

inline constexpr uint64_t kLockedBit = 1ull << 63;
inline constexpr size_t kSuperBytes = 4096;

inline std::vector<std::byte> u64_bytes(uint64_t v) {
  std::vector<std::byte> b(8);
  std::memcpy(b.data(), &v, 8);
  return b;
}
inline uint64_t u64_at(std::span<const std::byte> b, size_t off = 0) {
  uint64_t v;
  std::memcpy(&v, b.data() + off, 8);
  return v;
}

// The layout of hyperloop/txn.h for a set of options.
struct Layout {
  Layout() = default;
  explicit Layout(const StoreOptions& o)
      : region(Store::region_bytes(o)),
        log_off(kSuperBytes),
        log_size(o.log_size),
        stripe(o.stripe_bytes),
        stripes((o.data_size + o.stripe_bytes - 1) / o.stripe_bytes),
        lock_off(kSuperBytes + o.log_size),
        data_size(o.data_size),
        data_off(region - o.data_size) {}
  size_t region = 0, log_off = 0, log_size = 0, stripe = 0, stripes = 0, lock_off = 0, data_size = 0, data_off = 0;
};

// One range of a transaction's write set.
struct Range {
  uint64_t off = 0;
  std::vector<std::byte> bytes;
};

// `count` ranges of [min_len, max_len] bytes at random places of a data area
// of `data_size` bytes (they may overlap: the later one wins).
inline std::vector<Range> random_ranges(std::mt19937_64& rng, size_t data_size, size_t count, size_t min_len,
                                        size_t max_len) {
  std::vector<Range> out;
  for (size_t k = 0; k < count; ++k) {
    const size_t len = min_len + rng() % (max_len - min_len + 1);
    const uint64_t off = rng() % (data_size - len + 1);
    out.push_back({off, pattern(len, uint32_t(rng()))});
  }
  return out;
}

struct RigOptions {
  ForwardMode mode = ForwardMode::kOffload;
  Drive drive = Drive::kManual;
  uint64_t seed = 1;
  StoreOptions store = default_store();
  uint32_t slots = 64;
  size_t staging_bytes = 256 << 10;
  uint64_t op_timeout_ns = 50'000'000;
  const fault_test::TempDir* pmem = nullptr;  // regions are files in this directory
  std::string tag;                            // file name prefix
  bool open = true;                           // open the store in the constructor
  bool on_device = false;                     // kThreads: the device under test (see the header comment)

  static StoreOptions default_store() {
    StoreOptions s;
    s.data_size = 64 << 10;
    s.log_size = 128 << 10;
    s.stripe_bytes = 256;
    return s;
  }
};

class Rig {
 public:
  explicit Rig(RigOptions o) : o_(std::move(o)) {
    ClusterOptions co;
    co.replicas = 3;
    co.mode = o_.mode;
    co.drive = o_.drive;
    co.seed = o_.seed;
    co.region_size = Store::region_bytes(o_.store);
    if (co.region_size == 0) throw std::runtime_error("Rig: invalid StoreOptions");
    co.slots = o_.slots;
    co.rearm_batch = std::min<uint32_t>(16, o_.slots);
    co.staging_bytes = o_.staging_bytes;
    co.op_timeout_ns = o_.op_timeout_ns;
    co.make_group = false;
    co.on_device = o_.on_device;
    if (o_.on_device && o_.pmem) throw std::runtime_error("Rig: on_device with pmem regions is not supported");
    if (o_.pmem) {
      chain_ = std::make_unique<fault_test::PmemChain>(co, *o_.pmem, o_.tag, false);
      c_ = &chain_->cluster();
      tenant_ = fault_test::kPmemTenant;
    } else {
      own_ = std::make_unique<Cluster>(co);
      c_ = own_.get();
      tenant_ = prim_test::kTenant;
    }
    for (uint32_t i = 0; i < c_->n(); ++i) hosts_.push_back(&c_->host(i));
    so_ = o_.store;
    so_.tenant = tenant_;
    so_.group = c_->group_options(tenant_);
    if (o_.drive == Drive::kManual)
      so_.group.progress = [this] {
        c_->turn();
        if (!extra_hosts_.empty() && ++turns_ % 2 == 0)
          for (auto& h : extra_hosts_) h->agent_poll();
      };
    lay_ = Layout(so_);
    model_.assign(so_.data_size, std::byte{0});
    if (o_.open) store_ = must(Store::open(c_->client_device(), hosts_, so_), "Store::open");
  }
  ~Rig() {
    store_.reset();  // its group first, then the hosts and NICs it used
    extra_hosts_.clear();
    extra_nics_.clear();
  }
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  Cluster& c() { return *c_; }
  Store& store() { return *store_; }
  std::unique_ptr<Store>& store_ptr() { return store_; }
  const StoreOptions& so() const { return so_; }
  const Layout& lay() const { return lay_; }
  uint32_t tenant() const { return tenant_; }
  std::vector<std::byte>& model() { return model_; }
  std::span<ReplicaHost* const> hosts() const { return hosts_; }
  ReplicaHost& host(uint32_t i) const { return *hosts_[i]; }
  uint32_t n() const { return uint32_t(hosts_.size()); }
  fault_test::PmemChain& chain() { return *chain_; }
  bool manual() const { return o_.drive == Drive::kManual; }
  void set_compare_log(bool on) { compare_log_ = on; }

  Result<std::unique_ptr<Store>> try_open(const StoreOptions& so) {
    return Store::open(c_->client_device(), hosts_, so);
  }
  // A fresh client NIC (the old one crashed) and the store opened on it.
  Status reopen_on_new_client() {
    store_.reset();
    extra_nics_.push_back(c_->new_device("client" + std::to_string(extra_nics_.size() + 2)));
    auto r = Store::open(*extra_nics_.back(), hosts_, so_);
    if (!r.is_ok()) return r.status();
    store_ = std::move(r).value();
    return Status::ok();
  }
  // A new, blank (DRAM) replica host in chain position i (the old one died).
  ReplicaHost& replace_host(uint32_t i) {
    extra_nics_.push_back(c_->new_device("r" + std::to_string(i) + "-new" + std::to_string(extra_nics_.size())));
    extra_hosts_.push_back(must(ReplicaHost::create(*extra_nics_.back(), {.agent_thread = !manual()}),
                                "ReplicaHost::create"));
    must(extra_hosts_.back()->register_tenant(tenant_, lay_.region), "register_tenant");
    hosts_[i] = extra_hosts_.back().get();
    return *hosts_[i];
  }

  // ---- transactions ------------------------------------------------------------------
  // One transaction writing `ranges` in order; the model follows if it commits.
  Status commit(const std::vector<Range>& ranges) {
    Transaction t = store_->begin();
    for (const Range& r : ranges) HL_RETURN_IF_ERROR(t.write(r.off, r.bytes));
    Status s = t.commit();
    if (s.is_ok())
      for (const Range& r : ranges) std::memcpy(model_.data() + r.off, r.bytes.data(), r.bytes.size());
    return s;
  }
  Status put(uint64_t off, std::span<const std::byte> bytes) {
    return commit({Range{off, std::vector<std::byte>(bytes.begin(), bytes.end())}});
  }
  Status put_u64(uint64_t off, uint64_t v) { return put(off, u64_bytes(v)); }
  uint64_t read_u64(uint64_t off) {
    std::vector<std::byte> b(8);
    must(store_->read(off, b), "Store::read");
    return u64_at(b);
  }

  // ---- replica state (read by each replica's CPU) --------------------------------------
  std::vector<std::byte> region(uint32_t i) const {
    std::vector<std::byte> b(lay_.region);
    must(hosts_[i]->peek(tenant_, 0, b), "peek");
    return b;
  }
  std::vector<std::byte> data(uint32_t i) const {
    std::vector<std::byte> b(lay_.data_size);
    must(hosts_[i]->peek(tenant_, lay_.data_off, b), "peek");
    return b;
  }
  std::vector<uint64_t> locks(uint32_t i) const {
    std::vector<uint64_t> w(lay_.stripes);
    must(hosts_[i]->peek(tenant_, lay_.lock_off, {reinterpret_cast<std::byte*>(w.data()), 8 * w.size()}), "peek");
    return w;
  }
  std::vector<std::vector<std::byte>> snapshot() const {
    std::vector<std::vector<std::byte>> s;
    for (uint32_t i = 0; i < n(); ++i) s.push_back(region(i));
    return s;
  }
  // Every replica's region from `from` on is what `snap` holds (the
  // superblock's head slots may move with truncation: from = kSuperBytes
  // leaves them out).
  ::testing::AssertionResult unchanged_since(const std::vector<std::vector<std::byte>>& snap, size_t from,
                                             const std::string& what) const {
    for (uint32_t i = 0; i < n(); ++i) {
      const auto now = region(i);
      auto r = BytesEqual(now.data() + from, snap[i].data() + from, lay_.region - from);
      if (!r) return r << " (replica " << i << " changed by " << what << "; region offset = " << from << " + index)";
    }
    return ::testing::AssertionSuccess();
  }

  // Lets operations the store left in flight (applies, a log-head write) finish.
  void settle() {
    for (int k = 0; k < 2'000'000; ++k) {
      store_->poll();
      if (store_->group().in_flight() == 0) return;
      if (manual())
        c_->turn();
      else
        std::this_thread::yield();
    }
    ADD_FAILURE() << "operations stayed in flight";
  }

  // drain() succeeds, and then every replica's data area equals the model,
  // every lock word is unlocked, every replica's region is byte-identical
  // (the log too, unless set_compare_log(false): recovery leaves the log
  // bytes past the head as each replica had them) and Store::read returns
  // the model.
  ::testing::AssertionResult consistent(const std::string& when) {
    const Status d = store_->drain();
    if (!d.is_ok()) return ::testing::AssertionFailure() << when << ": drain: " << d.to_string();
    settle();
    const auto first = region(0);
    for (uint32_t i = 0; i < n(); ++i) {
      const auto reg = region(i);
      auto r = BytesEqual(reg.data() + lay_.data_off, model_.data(), lay_.data_size);
      if (!r) return r << " (" << when << ": replica " << i << "'s data area against the committed transactions)";
      const auto w = locks(i);
      for (size_t s = 0; s < w.size(); ++s)
        if (w[s] & kLockedBit)
          return ::testing::AssertionFailure() << when << ": replica " << i << ": stripe " << s << " still locked (0x"
                                               << std::hex << w[s] << ")";
      if (compare_log_) {
        r = BytesEqual(reg.data(), first.data(), lay_.region);
      } else {
        r = BytesEqual(reg.data(), first.data(), lay_.log_off);
        if (r) r = BytesEqual(reg.data() + lay_.lock_off, first.data() + lay_.lock_off, lay_.region - lay_.lock_off);
      }
      if (!r) return r << " (" << when << ": replica " << i << "'s region against replica 0's)";
    }
    std::vector<std::byte> got(lay_.data_size);
    const Status s = store_->read(0, got);
    if (!s.is_ok()) return ::testing::AssertionFailure() << when << ": Store::read: " << s.to_string();
    auto r = BytesEqual(got.data(), model_.data(), got.size());
    if (!r) return r << " (" << when << ": Store::read of the whole data area)";
    return ::testing::AssertionSuccess();
  }

 private:
  RigOptions o_;
  std::unique_ptr<fault_test::PmemChain> chain_;
  std::unique_ptr<Cluster> own_;
  Cluster* c_ = nullptr;
  std::vector<std::unique_ptr<rnic::Device>> extra_nics_;
  std::vector<std::unique_ptr<ReplicaHost>> extra_hosts_;
  std::vector<ReplicaHost*> hosts_;
  uint32_t tenant_ = 0;
  StoreOptions so_;
  Layout lay_;
  std::vector<std::byte> model_;
  uint64_t turns_ = 0;
  bool compare_log_ = true;
  std::unique_ptr<Store> store_;
};

}  // namespace hyperloop::txn_test
