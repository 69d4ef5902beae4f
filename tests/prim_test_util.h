// prim_test_util.h: fixtures and helpers for the primitives (group operation) tests.
//
// A Cluster is one client NIC and n replica NICs on one fabric, a ReplicaHost
// per replica NIC with the test tenant registered, and (usually) a Group over
// them. Two ways to drive it:
//   kManual   a seeded soft::ManualExecutor over every NIC, hosts without agent
//             threads; the Group's clock is the executor's virtual time and its
//             progress hook steps the executor and runs every host's agent
//             turn: deterministic, a seed reproduces a run.
//   kThreads  a soft::SingleThreadExecutor and one agent thread per host (real
//             time): for freezing agents and for several client threads.
// With ClusterOptions::on_device (kThreads only) and HYPERLOOP_TEST_DEVICE
// set, the client and every replica host get a device of their own opened by
// name (device_test_util.h: checked to be that device) instead of soft NICs of
// the private fabric; the soft-only accessors (client(), nic(i), fabric(),
// packets_sent()) then throw, failing the test that calls them. Use
// client_device() and device(i), which work in every mode.
// A Model is the shadow of every replica's region: tests apply each operation
// to it at issue time (operations take effect in issue order) and compare
// every replica byte for byte, read both by the replica's CPU (peek) and by
// the client over RDMA READ (Group::read).
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hyperloop/primitives.h"
#include "device_test_util.h"
#include "hyperloop/soft_rnic.h"
#include "soft_test_util.h"

namespace hyperloop::prim {
inline void PrintTo(ForwardMode m, std::ostream* os) { *os << forward_mode_name(m); }
}  // namespace hyperloop::prim

namespace hyperloop::prim_test {

using prim::ForwardMode;
using prim::Group;
using prim::GroupOptions;
using prim::Op;
using prim::ReplicaHost;
using prim::ReplicaHostOptions;
using soft_test::BytesEqual;
using soft_test::IsOk;
using soft_test::must;
using soft_test::pattern;
namespace soft = ::hyperloop::soft;

inline constexpr uint32_t kTenant = 42;
inline constexpr ForwardMode kBothModes[] = {ForwardMode::kOffload, ForwardMode::kCpuForward};

inline std::string mode_name(ForwardMode m) {
  return m == ForwardMode::kOffload ? "Offload" : "CpuForward";
}

inline uint64_t load_u64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline std::span<const std::byte> bytes_of(const uint64_t& v) { return {reinterpret_cast<const std::byte*>(&v), 8}; }

// ---- the shadow of every replica's region -------------------------------------------
class Model {
 public:
  Model(uint32_t replicas, size_t region_size) : r_(replicas, std::vector<std::byte>(region_size)) {}

  uint32_t replicas() const { return uint32_t(r_.size()); }
  size_t region_size() const { return r_[0].size(); }
  const std::vector<std::byte>& replica(uint32_t i) const { return r_[i]; }
  uint64_t word(uint32_t i, uint64_t off) const { return load_u64(r_[i].data() + off); }

  void write(uint64_t off, std::span<const std::byte> b) {
    for (auto& r : r_) std::memcpy(r.data() + off, b.data(), b.size());
  }
  // Writes on the replicas in mask only (a way to make replicas diverge).
  void write_word(uint32_t i, uint64_t off, uint64_t v) { std::memcpy(r_[i].data() + off, &v, 8); }
  void memcpy(uint64_t src, uint64_t dst, uint64_t len) {
    for (auto& r : r_) std::memmove(r.data() + dst, r.data() + src, len);
  }
  // Applies a gCAS; returns the old values the client must see (0 outside mask).
  std::array<uint64_t, prim::kMaxReplicas> cas(uint64_t off, uint64_t compare, uint64_t swap, uint32_t mask) {
    std::array<uint64_t, prim::kMaxReplicas> old{};
    for (uint32_t i = 0; i < replicas(); ++i) {
      if (!(mask & (1u << i))) continue;
      old[i] = word(i, off);
      if (old[i] == compare) write_word(i, off, swap);
    }
    return old;
  }

 private:
  std::vector<std::vector<std::byte>> r_;
};

inline ::testing::AssertionResult OldValuesAre(const Op& op, const std::array<uint64_t, prim::kMaxReplicas>& want,
                                               uint32_t n) {
  if (op.old_values().size() != n)
    return ::testing::AssertionFailure() << "old_values() has " << op.old_values().size() << " entries, want " << n;
  for (uint32_t i = 0; i < n; ++i)
    if (op.old_values()[i] != want[i])
      return ::testing::AssertionFailure() << "replica " << i << ": old value " << op.old_values()[i] << ", want "
                                           << want[i];
  return ::testing::AssertionSuccess();
}

// ---- the cluster ----------------------------------------------------------------------
enum class Drive { kManual, kThreads };

struct ClusterOptions {
  uint32_t replicas = 3;
  ForwardMode mode = ForwardMode::kOffload;
  Drive drive = Drive::kManual;
  uint64_t seed = 1;
  size_t region_size = 64 << 10;
  uint32_t slots = 64;
  uint32_t rearm_batch = 16;
  size_t staging_bytes = 256 << 10;
  uint64_t op_timeout_ns = 500'000'000;
  soft::NicOptions nic;         // every NIC, client included
  uint32_t agent_every = 2;     // kManual: executor steps per agent turn
  bool agents_run = true;       // kManual: false = the hook never runs agent turns
  bool make_group = true;       // create the Group for kTenant in the constructor
  // kThreads: the devices are the device under test's when
  // HYPERLOOP_TEST_DEVICE is set (device_test_util.h); else soft NICs as usual.
  bool on_device = false;
  // kThreads: how the hosts' agents wait while they forward (kCpuForward).
  ReplicaHostOptions::CpuWait cpu_wait = ReplicaHostOptions::CpuWait::kEvents;
};

class Cluster {
 public:
  explicit Cluster(const ClusterOptions& o) : o_(o), on_device_(o.on_device && device_test::device_mode()) {
    if (on_device_ && o.drive != Drive::kThreads)
      throw std::logic_error("ClusterOptions::on_device needs Drive::kThreads (a device runs in real time)");
    if (o.drive == Drive::kManual) {
      manual_ = std::make_unique<soft::ManualExecutor>(o.seed);
      ex_ = manual_.get();
    } else {
      threads_ = std::make_unique<soft::SingleThreadExecutor>();
      ex_ = threads_.get();
    }
    client_dev_ = new_device("client");
    if (!on_device_) client_ = static_cast<soft::Nic*>(client_dev_.get());
    for (uint32_t i = 0; i < o.replicas; ++i) {
      devs_.push_back(new_device("r" + std::to_string(i)));
      if (!on_device_) nics_.push_back(static_cast<soft::Nic*>(devs_.back().get()));
      hosts_.push_back(must(ReplicaHost::create(*devs_.back(),
                                                {.agent_thread = o.drive == Drive::kThreads, .cpu_wait = o.cpu_wait}),
                            "ReplicaHost::create"));
      host_ptrs_.push_back(hosts_.back().get());
      must(hosts_.back()->register_tenant(kTenant, o.region_size), "register_tenant");
    }
    if (o.make_group) group_ = must(Group::create(*client_dev_, host_ptrs_, group_options()), "Group::create");
  }
  ~Cluster() {
    group_.reset();
    hosts_.clear();  // agents stop before their NICs go
  }
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Options for a group of `tenant` over this cluster: its sizes, mode and,
  // when manually driven, its clock and progress hook.
  GroupOptions group_options(uint32_t tenant = kTenant) {
    GroupOptions g;
    g.tenant = tenant;
    g.region_size = o_.region_size;
    g.mode = o_.mode;
    g.slots = o_.slots;
    g.rearm_batch = o_.rearm_batch;
    g.staging_bytes = o_.staging_bytes;
    g.op_timeout_ns = o_.op_timeout_ns;
    if (manual_) {
      g.clock = [ex = manual_.get()] { return ex->now_ns(); };
      g.progress = [this] { turn(); };
    }
    return g;
  }

  // kManual: one executor step, and every agent_every steps one agent turn on
  // every host (what the hosts' agent threads would do).
  void turn() {
    manual_->step();
    if (agents_run_ && ++turns_ % o_.agent_every == 0)
      for (auto& h : hosts_) h->agent_poll();
  }
  void turns(uint64_t n) {
    for (uint64_t i = 0; i < n; ++i) turn();
  }
  // kManual: stops / resumes the agent turns of the progress hook.
  void set_agents_run(bool run) { agents_run_ = run; }

  const ClusterOptions& options() const { return o_; }
  uint32_t n() const { return o_.replicas; }
  Group& group() const { return *group_; }
  std::unique_ptr<Group>& group_ptr() { return group_; }
  soft::ManualExecutor& ex() const { return *manual_; }
  // Soft-only (they throw on the device under test): the soft NICs and their fabric.
  soft::Fabric& fabric() {
    soft_only("fabric()");
    return fabric_;
  }
  soft::Nic& client() const {
    soft_only("client()");
    return *client_;
  }
  soft::Nic& nic(uint32_t i) const {
    soft_only("nic(i)");
    return *nics_[i];
  }
  // The client's and replica i's device, in every mode.
  rnic::Device& client_device() const { return *client_dev_; }
  rnic::Device& device(uint32_t i) const { return *devs_[i]; }
  // The devices are the device under test's (HYPERLOOP_TEST_DEVICE).
  bool on_device() const { return on_device_; }
  ReplicaHost& host(uint32_t i) const { return *hosts_[i]; }
  std::span<ReplicaHost* const> hosts() const { return host_ptrs_; }
  uint64_t now_ns() const { return manual_ ? manual_->now_ns() : monotonic_ns(); }
  // A new soft NIC on the cluster's fabric and executor (soft-only).
  std::unique_ptr<soft::Nic> new_nic(const std::string& name) {
    soft_only("new_nic()");
    soft::NicOptions no = o_.nic;
    no.name = name;
    auto nic = must(fabric_.create_nic(no), "create_nic");
    ex_->add(*nic);
    return nic;
  }

  // Every replica's copy of `tenant`'s region, read by the replica's CPU,
  // equals the model byte for byte.
  ::testing::AssertionResult regions_equal(const Model& m, uint32_t tenant = kTenant) const {
    std::vector<std::byte> got(m.region_size());
    for (uint32_t i = 0; i < m.replicas(); ++i) {
      const Status s = hosts_[i]->peek(tenant, 0, got);
      if (!s.is_ok()) return ::testing::AssertionFailure() << "peek on replica " << i << ": " << s.to_string();
      auto r = BytesEqual(got.data(), m.replica(i).data(), got.size());
      if (!r) return r << " (replica " << i << ", tenant " << tenant << ", read by its CPU)";
    }
    return ::testing::AssertionSuccess();
  }
  // Every replica holds the same bytes as replica 0 (whatever they are): the
  // chain applied one history everywhere.
  ::testing::AssertionResult replicas_identical(uint32_t tenant = kTenant) const {
    std::vector<std::byte> first(o_.region_size), got(o_.region_size);
    if (!hosts_[0]->peek(tenant, 0, first).is_ok()) return ::testing::AssertionFailure() << "peek on replica 0";
    for (uint32_t i = 1; i < hosts_.size(); ++i) {
      if (!hosts_[i]->peek(tenant, 0, got).is_ok()) return ::testing::AssertionFailure() << "peek on replica " << i;
      auto r = BytesEqual(got.data(), first.data(), got.size());
      if (!r) return r << " (replica " << i << " against replica 0)";
    }
    return ::testing::AssertionSuccess();
  }
  // Same, read by the client over the group's RDMA READ path.
  static ::testing::AssertionResult reads_equal(Group& g, const Model& m) {
    std::vector<std::byte> got(m.region_size());
    for (uint32_t i = 0; i < m.replicas(); ++i) {
      const Status s = g.read(i, 0, got);
      if (!s.is_ok()) return ::testing::AssertionFailure() << "Group::read of replica " << i << ": " << s.to_string();
      auto r = BytesEqual(got.data(), m.replica(i).data(), got.size());
      if (!r) return r << " (replica " << i << ", read over RDMA)";
    }
    return ::testing::AssertionSuccess();
  }

  // Total packets the client NIC and the replica NICs have sent: unchanged
  // across a call means nothing went on the wire.
  uint64_t packets_sent() const {
    soft_only("packets_sent()");
    uint64_t p = client_->stats().packets_sent;
    for (auto* nic : nics_) p += nic->stats().packets_sent;
    return p;
  }

  // A new device: the device under test's when on_device(), else a soft NIC
  // on the cluster's fabric and executor (what new_nic gives).
  std::unique_ptr<rnic::Device> new_device(const std::string& name) {
    if (on_device_) return must(device_test::open_device_under_test(), "the device under test");
    soft::NicOptions no = o_.nic;
    no.name = name;
    auto nic = must(fabric_.create_nic(no), "create_nic");
    ex_->add(*nic);
    return nic;
  }

 private:
  ClusterOptions o_;
  // Declaration order is destruction order reversed: the group, the hosts
  // (agents joined, members and tenants gone), then the NICs and executor.
  soft::Fabric fabric_;
  std::unique_ptr<soft::ManualExecutor> manual_;
  std::unique_ptr<soft::SingleThreadExecutor> threads_;
  soft::Executor* ex_ = nullptr;
  bool on_device_ = false;
  std::unique_ptr<rnic::Device> client_dev_;
  std::vector<std::unique_ptr<rnic::Device>> devs_;
  soft::Nic* client_ = nullptr;   // the same devices as soft NICs (null on the device under test)
  std::vector<soft::Nic*> nics_;
  std::vector<std::unique_ptr<ReplicaHost>> hosts_;
  std::vector<ReplicaHost*> host_ptrs_;
  std::unique_ptr<Group> group_;
  bool agents_run_ = true;
  uint64_t turns_ = 0;

  void soft_only(const char* what) const {
    if (on_device_)
      throw std::logic_error(std::string("Cluster::") + what + " is soft-only, and this cluster runs on the device "
                             "under test (" + device_test::test_device_name() + ")");
  }
};

// ---- a mixed workload of all four kinds ----------------------------------------------------
// Operations of all kinds, pipelined, on disjoint zones of the region so that
// the outcome does not depend on how the NICs interleave them:
//   [0, R/2)        gWRITE targets (writes are ordered among themselves)
//   [R/2, 5R/8)     memcpy sources, written once in prepare() and then only read
//   [5R/8, 7R/8)    memcpy destinations (and sources): only memcpy touches them
//   [7R/8, R)       gCAS words
// gFLUSH ranges fall anywhere. (A local operation and a later gWRITE payload on
// the same bytes travel on different queues of a replica; the header promises
// completion order, not an order between those effects, so the workload keeps
// them apart.)
enum class Kind { kWrite, kCas, kMemcpy, kFlush };
inline const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kWrite: return "gWRITE";
    case Kind::kCas: return "gCAS";
    case Kind::kMemcpy: return "gMEMCPY";
    case Kind::kFlush: return "gFLUSH";
  }
  return "?";
}

class Workload {
 public:
  struct Expect {
    Kind kind = Kind::kWrite;
    std::array<uint64_t, prim::kMaxReplicas> old{};
  };

  Workload(Group& g, Model& m, uint64_t seed) : g_(g), m_(m), rng_(seed) {
    const size_t r = m.region_size();
    write_end_ = r / 2;
    src_begin_ = r / 2;
    dst_begin_ = r / 8 * 5;
    cas_begin_ = r / 8 * 7;
  }

  // Fills the memcpy source zone (one gWRITE, waited for).
  Status prepare() {
    const auto bytes = pattern(dst_begin_ - src_begin_, 0xC0DE);
    Op op;
    HL_RETURN_IF_ERROR(g_.write(op, src_begin_, bytes));
    m_.write(src_begin_, bytes);
    return g_.wait(op);
  }

  // Issues one operation of `kind` with random parameters, applies it to the
  // model and records what its completion must show.
  Status issue(Op& op, Kind kind, Expect& e) {
    e.kind = kind;
    e.old = {};
    const size_t r = m_.region_size();
    switch (kind) {
      case Kind::kWrite: {
        const uint64_t len = pick_len(write_end_);
        const uint64_t off = below(write_end_ - len + 1);
        const auto bytes = pattern(len, uint32_t(rng_()));
        HL_RETURN_IF_ERROR(g_.write(op, off, bytes));
        m_.write(off, bytes);
        return Status::ok();
      }
      case Kind::kCas: {
        const uint64_t off = cas_begin_ + 8 * below((r - cas_begin_) / 8);
        const uint32_t n = m_.replicas();
        uint32_t mask = uint32_t(below((1u << n) - 1)) + 1;  // a non-empty subset
        if (below(2)) mask = (1u << n) - 1;
        // Mostly the current value of a replica in the mask (some succeed,
        // diverged replicas fail), sometimes anything.
        uint64_t compare = rng_() % 4;
        for (uint32_t i = 0; i < n; ++i)
          if ((mask & (1u << i)) && below(4) != 0) {
            compare = m_.word(i, off);
            break;
          }
        const uint64_t swap = rng_();
        HL_RETURN_IF_ERROR(g_.cas(op, off, compare, swap, mask));
        e.old = m_.cas(off, compare, swap, mask);
        return Status::ok();
      }
      case Kind::kMemcpy: {
        const uint64_t len = pick_len((r / 8 * 7 - dst_begin_) / 2);
        uint64_t src, dst;
        do {
          src = src_begin_ + below(cas_begin_ - src_begin_ - len + 1);
          dst = dst_begin_ + below(cas_begin_ - dst_begin_ - len + 1);
        } while (src < dst + len && dst < src + len);
        HL_RETURN_IF_ERROR(g_.memcpy(op, src, dst, len));
        m_.memcpy(src, dst, len);
        return Status::ok();
      }
      case Kind::kFlush: {
        const uint64_t len = pick_len(r);
        const uint64_t off = below(r - len + 1);
        return g_.flush(op, off, len);
      }
    }
    return Status::ok();
  }

  // Checks a completed operation against its expectation.
  ::testing::AssertionResult completed_as_expected(const Op& op, const Expect& e) const {
    if (!op.done()) return ::testing::AssertionFailure() << kind_name(e.kind) << " #" << op.sequence() << " not done";
    if (!op.status().is_ok())
      return ::testing::AssertionFailure() << kind_name(e.kind) << " #" << op.sequence() << ": "
                                           << op.status().to_string();
    if (e.kind != Kind::kCas) {
      if (!op.old_values().empty())
        return ::testing::AssertionFailure() << kind_name(e.kind) << " has old values";
      return ::testing::AssertionSuccess();
    }
    auto r = OldValuesAre(op, e.old, m_.replicas());
    if (!r) return r << " (gCAS #" << op.sequence() << ")";
    return r;
  }

  uint64_t below(uint64_t n) { return n ? rng_() % n : 0; }

 private:
  // Lengths from 1 byte up to `max`, most small, some large.
  uint64_t pick_len(uint64_t max) {
    switch (below(8)) {
      case 0: return 1;
      case 1: return std::min<uint64_t>(max, 8 * (1 + below(8)));
      case 2: return std::min<uint64_t>(max, 1 + below(max));
      default: return std::min<uint64_t>(max, 1 + below(512));
    }
  }

  Group& g_;
  Model& m_;
  std::mt19937_64 rng_;
  size_t write_end_, src_begin_, dst_begin_, cas_begin_;
};

// ---- several client threads on one group ----------------------------------------------------
// `threads` client threads share c's Group (kThreads: real threads, agent
// threads on the hosts; at most 3 replicas' worth of counter mask is used,
// and 8 threads). Each owns a zone: it writes a record, copies it, flushes it
// and bumps its own counter with gCAS, one batch at a time, pipelined inside
// the batch. Every CAS must see the value the thread left. Afterwards m holds
// what the threads did (applied in each thread's order): compare with it.
inline void client_threads_workload(Cluster& c, Model& m, uint32_t threads, uint32_t batches) {
  constexpr uint64_t kZone = 4096, kRecord = 1024;
  const uint32_t all = (1u << c.n()) - 1;
  ASSERT_LE(threads, 8u);
  ASSERT_GE(c.options().region_size, 8192 * (threads + 1));
  std::atomic<int> failures{0};
  std::vector<std::thread> workers;
  for (uint32_t t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      const uint64_t zone = 8192 * (t + 1), counter = 8 * t;
      uint64_t value = 0;
      for (uint32_t b = 0; b < batches && failures == 0; ++b) {
        const auto rec = pattern(1 + (b * 131 + t) % kRecord, t * 1000 + b);
        Op w, cp, fl, cas;
        Status s = c.group().write(w, zone, rec);
        if (s.is_ok()) s = c.group().memcpy(cp, zone, zone + kZone - kRecord, rec.size());
        if (s.is_ok()) s = c.group().flush(fl, zone, rec.size());
        if (s.is_ok()) s = c.group().cas(cas, counter, value, value + 1, all);
        for (Op* op : {&w, &cp, &fl, &cas})
          if (s.is_ok()) s = c.group().wait(*op);
        bool cas_ok = s.is_ok();
        for (uint32_t i = 0; cas_ok && i < c.n(); ++i) cas_ok = cas.old_values()[i] == value;
        if (!cas_ok) {
          ADD_FAILURE() << "thread " << t << " batch " << b << ": " << s.to_string();
          ++failures;
        }
        ++value;
      }
    });
  }
  for (auto& th : workers) th.join();
  ASSERT_EQ(failures, 0);
  for (uint32_t t = 0; t < threads; ++t) {
    const uint64_t zone = 8192 * (t + 1);
    for (uint32_t b = 0; b < batches; ++b) {
      const auto rec = pattern(1 + (b * 131 + t) % kRecord, t * 1000 + b);
      m.write(zone, rec);
      m.memcpy(zone, zone + kZone - kRecord, rec.size());
    }
    m.cas(8 * t, 0, batches, all);  // the counter ends at `batches`
  }
}

}  // namespace hyperloop::prim_test
