// daemon_test.cc: the replica daemon (tools/replica_daemon.cc) and chains
// across processes over the soft NIC's TCP wire.
//
//   DaemonChainTest     three hyperloop-replica processes on 127.0.0.1, the
//                       client in this process: every primitive, two tenants
//                       at once, results read back from every replica.
//   DaemonCrashTest     a stream of gWRITE+gFLUSH; after K acknowledged pairs
//                       the middle daemon gets SIGKILL (or SIGTERM): the client
//                       sees errors within op_timeout + 1 s, never a hang; the
//                       daemon restarts on the same files and every
//                       acknowledged record is on every replica.
//   DaemonErrorsTest    bad configs, missing files, ports in use: exit codes
//                       and messages.
//   DaemonConnectTest   Group::connect errors: wrong tenant, no daemon,
//                       tenant already in use.
//   NetnsTest           (root only) each daemon in its own network namespace,
//                       joined by veth pairs to a bridge in this namespace
//                       (a documentation /24 no interface here uses; the
//                       bridge has no physical port: nothing leaves the
//                       machine): the same chain across namespaces, then a
//                       partition (a veth taken down) fails operations within
//                       a bound.
//   DaemonTxnTest       txn::Store::connect over three daemons: a bank of
//                       transfers (total unchanged, replicas identical); the
//                       middle daemon SIGKILLed mid-stream (errors within a
//                       bound, in doubt; restart, recover(): every
//                       acknowledged transfer there); a client gone with
//                       unapplied commits (the next one finds them all).
//   TwoNamespacesTest   Store::connect over two daemons on two devices and
//                       addresses (in two network namespaces in the VM),
//                       parametrized by the environment (see the test):
//                       transfers, SIGKILL of one, restart, recover().
//
// Device under test: DaemonChainTest and DaemonTxnTest have an OnDevice/...
// instantiation (kCpuForward): with HYPERLOOP_TEST_DEVICE=NAME its daemons
// get `device NAME` and the client opens NAME (Client::init); every daemon's
// log is checked to name the device it opened (Daemon::on_its_device).
// DaemonErrorsTest and DaemonConnectTest also cover the `device` directive.
//
// No sleeps: the daemons' ready lines say when they serve, acknowledgements
// say how far a stream got, pidfds say when a process exited. Every process
// started here is killed by the fixtures (and dies with the test process).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>

#include <array>
#include <deque>
#include <fstream>
#include <set>
#include <thread>

#include "daemon_test_util.h"
#include "small_fs.h"
#include "hyperloop/txn.h"

namespace hyperloop::daemon_test {
namespace {

using prim::ForwardMode;
using prim::Group;
using prim::Op;

constexpr ForwardMode kModes[] = {ForwardMode::kOffload, ForwardMode::kCpuForward};
std::string mode_name(const ::testing::TestParamInfo<ForwardMode>& p) {
  return p.param == ForwardMode::kOffload ? "Offload" : "CpuForward";
}
std::string where_name(const ::testing::TestParamInfo<device_test::Where>& p) { return device_test::where_name(p); }

// ---- a shadow of every replica's region ----------------------------------------------------------
class Model {
 public:
  Model(uint32_t replicas, size_t bytes) : r_(replicas, std::vector<std::byte>(bytes)) {}
  std::vector<std::byte>& replica(uint32_t i) { return r_[i]; }
  void write(uint64_t off, std::span<const std::byte> b) {
    for (auto& r : r_) std::memcpy(r.data() + off, b.data(), b.size());
  }
  void memcpy(uint64_t src, uint64_t dst, uint64_t len) {
    for (auto& r : r_) std::memmove(r.data() + dst, r.data() + src, len);
  }
  // Applies a gCAS; returns the old values the client must see.
  std::vector<uint64_t> cas(uint64_t off, uint64_t compare, uint64_t swap, uint32_t mask) {
    std::vector<uint64_t> old(r_.size(), 0);
    for (uint32_t i = 0; i < r_.size(); ++i) {
      if (!(mask & (1u << i))) continue;
      std::memcpy(&old[i], r_[i].data() + off, 8);
      if (old[i] == compare) std::memcpy(r_[i].data() + off, &swap, 8);
    }
    return old;
  }
  const std::vector<std::byte>& replica(uint32_t i) const { return r_[i]; }

 private:
  std::vector<std::vector<std::byte>> r_;
};

std::vector<std::byte> pattern(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = std::byte(x >> 24);
  }
  return v;
}

// Reads every replica's whole region over RDMA READ and compares with the model.
void expect_replicas_match(Group& g, const Model& m, const std::string& what) {
  std::vector<std::byte> got(g.region_size());
  for (uint32_t r = 0; r < g.replicas(); ++r) {
    Status s = g.read(r, 0, got);
    ASSERT_TRUE(s.is_ok()) << what << ": read of replica " << r << ": " << describe(s);
    const auto& want = m.replica(r);
    size_t bad = 0, first = SIZE_MAX;
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i] != want[i]) {
        ++bad;
        first = std::min(first, i);
      }
    EXPECT_EQ(bad, 0u) << what << ": replica " << r << " differs from the model in " << bad
                       << " bytes, first at offset " << first;
  }
}

// Operations must stay alive until done or until their Group is destroyed,
// also when an assertion returns early: tests take them from a pool that
// outlives every Group (a fixture member; Groups are locals of the test body).
using OpPool = std::deque<Op>;

// Every primitive over g, checked against a model: pipelined gWRITEs, gFLUSH,
// gMEMCPY, gCAS with partial masks (old values checked), then every replica
// read back. seed varies the bytes so two tenants' regions differ.
void exercise_all_primitives(Group& g, uint32_t seed, OpPool& pool) {
  const size_t R = g.region_size();
  ASSERT_GE(R, 256u * 1024);
  const uint32_t n = g.replicas();
  const uint64_t bound = kOpTimeoutNs + 1'000'000'000;
  // The model starts from what the replicas hold (an earlier group may have
  // left bytes there).
  Model m(n, R);
  for (uint32_t r = 0; r < n; ++r) {
    Status s = g.read(r, 0, m.replica(r));
    ASSERT_TRUE(s.is_ok()) << "initial read of replica " << r << ": " << describe(s);
  }

  // 1. A 4 KiB gWRITE and its gFLUSH.
  const auto a = pattern(4096, seed);
  Op &w = pool.emplace_back(), &f = pool.emplace_back();
  ASSERT_TRUE(g.write(w, 0, a).is_ok());
  ASSERT_TRUE(g.flush(f, 0, a.size()).is_ok());
  ASSERT_TRUE(g.wait(w, bound).is_ok()) << describe(w.status());
  ASSERT_TRUE(g.wait(f, bound).is_ok()) << describe(f.status());
  m.write(0, a);

  // 2. 64 pipelined gWRITEs of 256 bytes, then one gFLUSH over them: they
  // complete in issue order.
  std::vector<Op*> ws;
  for (int i = 0; i < 64; ++i) ws.push_back(&pool.emplace_back());
  std::vector<std::vector<std::byte>> chunks;
  for (size_t i = 0; i < ws.size(); ++i) {
    chunks.push_back(pattern(256, seed * 100 + uint32_t(i)));
    Status s = g.write(*ws[i], 8192 + i * 256, chunks.back());
    ASSERT_TRUE(s.is_ok()) << "pipelined gWRITE " << i << ": " << describe(s);
    m.write(8192 + i * 256, chunks.back());
  }
  Op& f2 = pool.emplace_back();
  ASSERT_TRUE(g.flush(f2, 8192, ws.size() * 256).is_ok());
  for (size_t i = 0; i < ws.size(); ++i) {
    ASSERT_TRUE(g.wait(*ws[i], bound).is_ok()) << "gWRITE " << i << ": " << describe(ws[i]->status());
    if (i) {
      EXPECT_LT(ws[i - 1]->sequence(), ws[i]->sequence());
    }
  }
  ASSERT_TRUE(g.wait(f2, bound).is_ok()) << describe(f2.status());

  // 3. gMEMCPY of the first 4 KiB to 64 KiB, made durable.
  Op &c = pool.emplace_back(), &f3 = pool.emplace_back();
  ASSERT_TRUE(g.memcpy(c, 0, 65536, 4096).is_ok());
  ASSERT_TRUE(g.flush(f3, 65536, 4096).is_ok());
  ASSERT_TRUE(g.wait(c, bound).is_ok()) << describe(c.status());
  ASSERT_TRUE(g.wait(f3, bound).is_ok()) << describe(f3.status());
  m.memcpy(0, 65536, 4096);

  // 4. gCAS, pipelined, with masks that make the replicas diverge, on a
  // word first zeroed by a gWRITE (the first gCAS is held back until it lands).
  const uint64_t off = 131072;
  const uint64_t zero = 0;
  Op& z = pool.emplace_back();
  ASSERT_TRUE(g.write(z, off, {reinterpret_cast<const std::byte*>(&zero), 8}).is_ok());
  m.write(off, {reinterpret_cast<const std::byte*>(&zero), 8});
  const uint64_t A = 0xA000 + seed, B = 0xB000 + seed, C = 0xC000 + seed;
  const uint32_t all = (1u << n) - 1, ends = n >= 3 ? 0b101u : all;
  struct Cas {
    uint64_t compare, swap;
    uint32_t mask;
  } cases[] = {{0, A, all}, {A, B, ends}, {B, C, all}, {A, C, all}};
  Op* cs[4];
  for (auto& op : cs) op = &pool.emplace_back();
  std::vector<std::vector<uint64_t>> expect_old;
  for (size_t i = 0; i < 4; ++i) {
    Status s = g.cas(*cs[i], off, cases[i].compare, cases[i].swap, cases[i].mask);
    ASSERT_TRUE(s.is_ok()) << "gCAS " << i << ": " << describe(s);
    expect_old.push_back(m.cas(off, cases[i].compare, cases[i].swap, cases[i].mask));
  }
  ASSERT_TRUE(g.wait(z, bound).is_ok()) << describe(z.status());
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(g.wait(*cs[i], bound).is_ok()) << "gCAS " << i << ": " << describe(cs[i]->status());
    std::vector<uint64_t> got(cs[i]->old_values().begin(), cs[i]->old_values().end());
    EXPECT_EQ(got, expect_old[i]) << "old values of gCAS " << i;
  }

  // 5. Everything durable, then every replica read back.
  Op& f4 = pool.emplace_back();
  ASSERT_TRUE(g.flush(f4, 0, R).is_ok());
  ASSERT_TRUE(g.wait(f4, bound).is_ok()) << describe(f4.status());
  expect_replicas_match(g, m, "after every primitive");
}

// ---- self-describing records (as in the manual smoke test) -----------------------------------------
constexpr uint64_t kRecordBytes = 64;
constexpr uint64_t kRecordMagic = 0x5245430000000000ull;  // "REC" in the top bytes
void make_record(uint64_t k, uint64_t rec[8]) {
  for (uint64_t i = 0; i < 8; ++i) rec[i] = kRecordMagic | (k << 8) | i;
}
std::span<const std::byte> as_bytes(const uint64_t rec[8]) { return {reinterpret_cast<const std::byte*>(rec), 64}; }

struct Pair {
  uint64_t k = 0;
  uint64_t rec[8];
  Op w, f;
  bool flush_issued = false;
};
// Pairs whose Ops may still be in flight: destroy the Group first.
using PairQueue = std::deque<std::unique_ptr<Pair>>;

struct StreamOutcome {
  uint64_t acked = 0;   // pairs whose gWRITE and gFLUSH both completed OK (records 0..acked-1)
  uint64_t issued = 0;  // pairs issued (the first gWRITE at least)
  Status error;         // the first failure seen after the fault
  double fault_to_error_s = -1;
};

// Streams gWRITE+gFLUSH pairs of records 0, 1, 2, ... (a few in flight),
// counting acknowledged pairs in order. After `fault_after` pairs are
// acknowledged it runs fault() and goes on until an operation fails.
void stream_until_failure(Group& g, PairQueue& q, uint64_t first_record, uint64_t fault_after,
                          const std::function<void()>& fault, StreamOutcome* out, size_t window = 4) {
  const uint64_t bound = kOpTimeoutNs + 1'000'000'000;
  const uint64_t capacity = g.region_size() / kRecordBytes;
  uint64_t next = first_record;
  bool faulted = false;
  Clock::time_point fault_at;
  auto fail = [&](Status s) {
    out->error = std::move(s);
    if (faulted) out->fault_to_error_s = seconds_since(fault_at);
  };
  for (;;) {
    while (q.size() < window) {
      ASSERT_LT(next, capacity) << "the region is full of records and still no error after the fault";
      auto p = std::make_unique<Pair>();
      p->k = next;
      make_record(p->k, p->rec);
      Pair& pr = *p;
      Status s = g.write(pr.w, pr.k * kRecordBytes, as_bytes(pr.rec));
      if (!s.is_ok()) return fail(s);
      q.push_back(std::move(p));
      ++next;
      out->issued = next - first_record;
      s = g.flush(pr.f, pr.k * kRecordBytes, kRecordBytes);
      if (!s.is_ok()) return fail(s);
      pr.flush_issued = true;
    }
    Pair& p = *q.front();
    Status s = g.wait(p.w, bound);
    if (s.is_ok()) s = g.wait(p.f, bound);
    if (!s.is_ok()) return fail(s);
    ASSERT_EQ(p.k, first_record + out->acked) << "acknowledgements out of order";
    ++out->acked;
    q.pop_front();
    if (!faulted && out->acked == fault_after) {
      fault();
      faulted = true;
      fault_at = Clock::now();
    }
  }
}

// Every record in [from, to) must be intact on every replica.
void expect_records(Group& g, uint64_t from, uint64_t to, const std::string& what) {
  if (to <= from) return;
  std::vector<uint64_t> buf((to - from) * 8);
  std::span<std::byte> bytes(reinterpret_cast<std::byte*>(buf.data()), buf.size() * 8);
  for (uint32_t r = 0; r < g.replicas(); ++r) {
    Status s = g.read(r, from * kRecordBytes, bytes);
    ASSERT_TRUE(s.is_ok()) << what << ": read of replica " << r << ": " << describe(s);
    uint64_t missing = 0, first = UINT64_MAX;
    for (uint64_t k = from; k < to; ++k) {
      uint64_t want[8];
      make_record(k, want);
      if (std::memcmp(want, &buf[(k - from) * 8], 64) != 0) {
        ++missing;
        first = std::min(first, k);
      }
    }
    EXPECT_EQ(missing, 0u) << what << ": replica " << r << " lacks " << missing << " of the acknowledged records ["
                           << from << ", " << to << "), first " << first;
  }
}

// Writes and flushes records [from, to) one pair at a time.
void write_records(Group& g, uint64_t from, uint64_t to, OpPool& pool) {
  for (uint64_t k = from; k < to; ++k) {
    uint64_t rec[8];
    make_record(k, rec);
    Op &w = pool.emplace_back(), &f = pool.emplace_back();
    ASSERT_TRUE(g.write(w, k * kRecordBytes, as_bytes(rec)).is_ok());
    ASSERT_TRUE(g.flush(f, k * kRecordBytes, kRecordBytes).is_ok());
    ASSERT_TRUE(g.wait(w, kOpTimeoutNs + 1'000'000'000).is_ok()) << describe(w.status());
    ASSERT_TRUE(g.wait(f, kOpTimeoutNs + 1'000'000'000).is_ok()) << describe(f.status());
  }
}

// ---- fixtures ---------------------------------------------------------------------------------------
class DaemonFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "cannot create a temporary directory under " << temp_base();
    watchdog_.on_hang([path = dir_.path()] {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    });
  }

  Daemon& add_daemon(DaemonSpec spec, std::vector<std::string> prefix = {}) {
    daemons_.push_back(std::make_unique<Daemon>("r" + std::to_string(daemons_.size()), dir_.path(), std::move(spec),
                                                std::move(prefix)));
    return *daemons_.back();
  }
  // n daemons on address hosting `tenants` (id, bytes), each with its own
  // files. fixed_ports[i] (if given and true): daemon i gets control and data
  // ports outside the ephemeral range, written into its config, so that it
  // can restart on them.
  void start_daemons(uint32_t n, std::vector<std::pair<uint32_t, size_t>> tenants,
                     const std::string& address = "127.0.0.1", std::vector<bool> fixed_ports = {}) {
    for (uint32_t i = 0; i < n; ++i) {
      DaemonSpec spec;
      spec.device = device_;
      spec.address = address;
      spec.extra_lines = daemon_extra_lines_;
      for (auto [id, bytes] : tenants)
        spec.tenants.push_back({id, bytes, dir_.file("r" + std::to_string(i) + "-t" + std::to_string(id) + ".pmem"), {}});
      Daemon& d = add_daemon(spec);
      watchdog_.phase("starting daemon " + d.name());
      if (i >= fixed_ports.size() || !fixed_ports[i]) {
        ASSERT_TRUE(d.start());
        continue;
      }
      // Another process may take a port between our probe and the daemon's
      // bind: then try other ones.
      for (int attempt = 0;; ++attempt) {
        d.spec().control_port = free_port_outside_ephemeral(address);
        ASSERT_NE(d.spec().control_port, 0) << "no free port outside the ephemeral range";
        if (soft_wire()) {  // another device has no data port
          d.spec().data_port = free_port_outside_ephemeral(address);
          ASSERT_NE(d.spec().data_port, 0) << "no free port outside the ephemeral range";
        }
        auto started = d.start();
        if (started) break;
        ASSERT_LT(attempt, 4) << started.message();
        ASSERT_NE(d.stderr_text().find("in use"), std::string::npos) << started.message();
      }
    }
  }
  std::vector<std::string> endpoints() const {
    std::vector<std::string> v;
    for (const auto& d : daemons_) v.push_back(d->endpoint());
    return v;
  }
  // Appends every daemon's stderr to a failure message.
  std::string daemon_logs() const {
    std::string s;
    for (const auto& d : daemons_) s += "\n--- " + d->name() + " stderr:\n" + d->stderr_text();
    return s;
  }
  // The device of the test's daemons and client: empty (soft NICs, the
  // default) unless an OnDevice test runs with HYPERLOOP_TEST_DEVICE set.
  void use_device_under_test(bool on_device) {
    device_ = on_device ? device_test::test_device_name() : std::string();
  }
  bool soft_wire() const { return device_.empty() || device_ == "soft"; }
  // The client: on the test's device (Client::init chooses), listening on
  // ipv4 when that is a soft NIC.
  Status init_client(const std::string& ipv4, uint64_t ack_timeout_ns = kAckTimeoutNs) {
    return client_.init(ipv4, ack_timeout_ns, device_);
  }
  Result<std::unique_ptr<Group>> connect(uint32_t tenant, size_t region, ForwardMode mode) {
    watchdog_.phase("Group::connect tenant " + std::to_string(tenant));
    auto eps = endpoints();
    return Group::connect(client_.nic(), eps, group_options(tenant, region, mode));
  }

  // Destroyed in reverse order: daemons (killed), operations, the client,
  // the files, the watchdog. Groups are locals of the test body: gone before.
  // 90 s, or HYPERLOOP_DAEMON_TEST_WATCHDOG_S (a slow machine: a TCG VM).
  static std::chrono::seconds watchdog_limit() {
    const char* e = std::getenv("HYPERLOOP_DAEMON_TEST_WATCHDOG_S");
    const long v = e ? std::atol(e) : 0;
    return std::chrono::seconds(v > 0 ? v : 90);
  }
  Watchdog watchdog_{watchdog_limit()};
  std::string device_;  // see use_device_under_test
  std::vector<std::string> daemon_extra_lines_;  // more config directives for start_daemons
  TempDir dir_;
  Client client_;
  OpPool ops_;
  std::vector<std::unique_ptr<Daemon>> daemons_;
};

// ---- 1. all primitives over three daemons --------------------------------------------------------------
// Modes/...: soft NICs in both modes; OnDevice/...: kCpuForward, daemons
// (`device NAME`) and client on HYPERLOOP_TEST_DEVICE when it is set.
class DaemonChainTest : public DaemonFixture, public ::testing::WithParamInterface<device_test::Where> {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    use_device_under_test(GetParam().on_device);
  }
};

TEST_P(DaemonChainTest, AllPrimitivesOnThreeDaemonsTwoTenants) {
  constexpr size_t kRegion = 256 * 1024;
  ASSERT_NO_FATAL_FAILURE(start_daemons(3, {{1, kRegion}, {2, kRegion}}));
  DAEMON_ASSERT_OK(init_client("127.0.0.1"));
  auto g1 = connect(1, kRegion, GetParam().mode);
  ASSERT_TRUE(g1.is_ok()) << describe(g1.status()) << daemon_logs();
  auto g2 = connect(2, kRegion, GetParam().mode);  // a second tenant on the same daemons, at the same time
  ASSERT_TRUE(g2.is_ok()) << describe(g2.status()) << daemon_logs();
  EXPECT_EQ((*g1)->replicas(), 3u);
  EXPECT_EQ((*g1)->mode(), GetParam().mode);

  watchdog_.phase("primitives on tenant 1");
  ASSERT_NO_FATAL_FAILURE(exercise_all_primitives(**g1, 1, ops_)) << daemon_logs();
  watchdog_.phase("primitives on tenant 2");
  ASSERT_NO_FATAL_FAILURE(exercise_all_primitives(**g2, 2, ops_)) << daemon_logs();
  // Tenant 2's operations did not touch tenant 1's regions (and vice versa):
  // each region still equals its own model (checked inside), and differs from the other.
  std::vector<std::byte> b1(4096), b2(4096);
  ASSERT_TRUE((*g1)->read(2, 0, b1).is_ok());
  ASSERT_TRUE((*g2)->read(2, 0, b2).is_ok());
  EXPECT_EQ(b1, pattern(4096, 1));
  EXPECT_EQ(b2, pattern(4096, 2));
  EXPECT_FALSE((*g1)->broken());
  EXPECT_FALSE((*g2)->broken());
}

INSTANTIATE_TEST_SUITE_P(Modes, DaemonChainTest, ::testing::ValuesIn(device_test::kSoftModes), where_name);
INSTANTIATE_TEST_SUITE_P(OnDevice, DaemonChainTest, ::testing::ValuesIn(device_test::kOnDevice), where_name);
INSTANTIATE_TEST_SUITE_P(OnDeviceOffload, DaemonChainTest, ::testing::ValuesIn(device_test::kOnDeviceOffload), where_name);

// ---- 1b. every replica process stopped (SIGSTOP) while operations complete ------------------------
// HyperLoop's claim with real processes: once a chain's slots are armed, the
// replicas' NICs apply, forward and acknowledge operations with no replica
// CPU. Each daemon is stopped with SIGSTOP (its agent, its control server,
// every thread) and the client still completes one operation per armed slot,
// of every kind; every replica's region, read by its NIC, equals the model;
// the daemons were stopped throughout. After SIGCONT they re-arm and the
// chain goes on past the slots armed before.
//
// Only where the NIC is not in the replica's process: a kernel or hardware
// RNIC, here the patched rdma_rxe (tests/vm/suites.sh runs it through
// tests/device-suites.sh rxe0 --offload). The software RNIC runs inside the
// daemon, so stopping the daemon stops its NIC; the in-process counterpart
// on soft is FrozenOffloadChain (prim_offload_test.cc). Elsewhere this suite
// has no instance (it is not skipped: it does not exist there).
std::vector<device_test::Where> nic_outside_the_replica_processes() {
  const std::string d = device_test::test_device_name();
  if (d.empty() || device_test::is_soft_name(d)) return {};
  return {{ForwardMode::kOffload, true}};
}

// The state letter of /proc/PID/stat ('T': stopped), or '?'.
char process_state(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return '?';
  const size_t p = line.rfind(')');
  return p != std::string::npos && p + 2 < line.size() ? line[p + 2] : '?';
}

class DaemonStoppedTest : public DaemonFixture, public ::testing::WithParamInterface<device_test::Where> {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    use_device_under_test(true);
  }
};
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(DaemonStoppedTest);

TEST_P(DaemonStoppedTest, ArmedSlotsCarryOperationsOfEveryKindWithEveryReplicaProcessStopped) {
  constexpr size_t kRegion = 64 * 1024;
  // A stopped daemon reads no heartbeats; when it runs again its timers
  // could fire before it reads the ones waiting in its socket.
  daemon_extra_lines_ = {"client_timeout_ms 600000"};
  ASSERT_NO_FATAL_FAILURE(start_daemons(3, {{1, kRegion}}));
  DAEMON_ASSERT_OK(init_client("127.0.0.1"));
  auto g = connect(1, kRegion, ForwardMode::kOffload);
  ASSERT_TRUE(g.is_ok()) << describe(g.status()) << daemon_logs();
  Group& grp = **g;
  ASSERT_EQ(grp.mode(), ForwardMode::kOffload);
  std::vector<std::byte> model(kRegion);
  ASSERT_TRUE(grp.read(0, 0, model).is_ok());  // what the pmem files hold
  const uint32_t slots = group_options(1, kRegion, ForwardMode::kOffload).slots;  // START armed them all

  watchdog_.phase("SIGSTOP to every daemon");
  for (auto& d : daemons_) d->process()->signal(SIGSTOP);
  for (auto& d : daemons_) {
    // SIGSTOP takes effect when the kernel next schedules the process: look until it has.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (process_state(d->process()->pid()) != 'T' && std::chrono::steady_clock::now() < until)
      std::this_thread::yield();
    ASSERT_EQ(process_state(d->process()->pid()), 'T') << d->name() << " did not stop";
  }

  watchdog_.phase("one operation per armed slot, every replica process stopped");
  std::deque<Op> ops(slots);
  std::vector<uint64_t> cas_expect(slots);
  auto word = [&](size_t off) {
    uint64_t v;
    std::memcpy(&v, model.data() + off, 8);
    return v;
  };
  for (uint32_t k = 0; k < slots; ++k) {
    const size_t j = k / 4;
    Status st;
    switch (k % 4) {
      case 0: {  // gWRITE of 64 bytes
        const auto bytes = pattern(64, 100 + k);
        st = grp.write(ops[k], j * 64, bytes);
        std::memcpy(model.data() + j * 64, bytes.data(), 64);
        break;
      }
      case 1: {  // gCAS that matches
        const size_t off = 4096 + 8 * j;
        cas_expect[k] = word(off);
        const uint64_t swap = 0xc0de0000ull + k;
        st = grp.cas(ops[k], off, cas_expect[k], swap, 0x7);
        std::memcpy(model.data() + off, &swap, 8);
        break;
      }
      case 2:  // gMEMCPY of what the gWRITE above wrote
        st = grp.memcpy(ops[k], j * 64, 8192 + j * 64, 64);
        std::memcpy(model.data() + 8192 + j * 64, model.data() + j * 64, 64);
        break;
      default:  // gFLUSH
        st = grp.flush(ops[k], 0, 16384);
        break;
    }
    ASSERT_TRUE(st.is_ok()) << "issuing operation " << k << ": " << describe(st);
  }
  for (uint32_t k = 0; k < slots; ++k) {
    ASSERT_TRUE(grp.wait(ops[k]).is_ok()) << "operation " << k << ": " << describe(ops[k].status()) << daemon_logs();
    if (k % 4 == 1) {
      ASSERT_EQ(ops[k].old_values().size(), 3u);
      for (uint32_t i = 0; i < 3; ++i) EXPECT_EQ(ops[k].old_values()[i], cas_expect[k]) << "gCAS " << k << ", replica " << i;
    }
  }
  for (uint32_t i = 0; i < 3; ++i) {
    std::vector<std::byte> got(kRegion);
    ASSERT_TRUE(grp.read(i, 0, got).is_ok()) << "reading replica " << i;
    EXPECT_TRUE(got == model) << "replica " << i << "'s region differs from the model";
  }
  for (auto& d : daemons_)
    EXPECT_EQ(process_state(d->process()->pid()), 'T') << d->name() << " ran while its NIC served the chain";

  watchdog_.phase("SIGCONT: the daemons re-arm and the chain goes on");
  for (auto& d : daemons_) d->process()->signal(SIGCONT);
  for (uint32_t k = 0; k < 3 * slots; ++k) {
    const size_t off = 16384 + (k % 256) * 64;
    const auto bytes = pattern(64, 5000 + k);
    Op op;
    ASSERT_TRUE(grp.write(op, off, bytes).is_ok() && grp.wait(op).is_ok())
        << "gWRITE " << k << " after SIGCONT: " << describe(op.status()) << daemon_logs();
    std::memcpy(model.data() + off, bytes.data(), 64);
  }
  for (uint32_t i = 0; i < 3; ++i) {
    std::vector<std::byte> got(kRegion);
    ASSERT_TRUE(grp.read(i, 0, got).is_ok());
    EXPECT_TRUE(got == model) << "replica " << i << " after SIGCONT";
  }
  EXPECT_FALSE(grp.broken());
}

INSTANTIATE_TEST_SUITE_P(OnDeviceOffload, DaemonStoppedTest, ::testing::ValuesIn(nic_outside_the_replica_processes()),
                         where_name);

// ---- 2. a daemon killed in the middle of a stream, restarted on the same files ------------------------
class DaemonCrashTest : public DaemonFixture, public ::testing::WithParamInterface<ForwardMode> {
 protected:
  static constexpr size_t kRegion = 1 << 20;  // 16384 records
  static constexpr uint64_t kAckedBeforeFault = 50;

  // sig: SIGKILL or SIGTERM for the middle daemon. It restarts on the same
  // config and files; same_control_port / same_data_port: on the ports it had
  // (written into its config), else on fresh ones read from its ready line.
  void crash_and_restart(int sig, bool same_control_port, bool same_data_port) {
    ASSERT_NO_FATAL_FAILURE(
        start_daemons(3, {{1, kRegion}}, "127.0.0.1", {false, same_control_port || same_data_port, false}));
    ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
    Daemon& middle = *daemons_[1];
    const uint16_t old_control = middle.control_port(), old_data = middle.data_port();
    const std::string old_endpoint = middle.endpoint();

    PairQueue q;  // declared before the group: the group goes first
    StreamOutcome out;
    {
      auto g = connect(1, kRegion, GetParam());
      ASSERT_TRUE(g.is_ok()) << describe(g.status()) << daemon_logs();
      watchdog_.phase("streaming gWRITE+gFLUSH, then signal " + std::to_string(sig) + " to the middle daemon");
      ASSERT_NO_FATAL_FAILURE(stream_until_failure(
          **g, q, 0, kAckedBeforeFault, [&] { middle.process()->signal(sig); }, &out))
          << daemon_logs();
      ASSERT_GE(out.acked, kAckedBeforeFault)
          << "the stream failed before the fault: " << describe(out.error) << daemon_logs();
      // The client saw an error, not a hang: within op_timeout (+1 s of slack).
      EXPECT_FALSE(out.error.is_ok());
      EXPECT_TRUE(out.error.code() == StatusCode::kUnavailable || out.error.code() == StatusCode::kDeadlineExceeded)
          << describe(out.error);
      EXPECT_GE(out.fault_to_error_s, 0);
      EXPECT_LT(out.fault_to_error_s, kOpTimeoutNs / 1e9 + 1.0)
          << "the first error came " << out.fault_to_error_s << " s after the signal: " << describe(out.error);
      std::printf("[          ] %s: %lu pairs acknowledged, %lu issued; first error %.3f s after the signal: %s\n",
                  sig == SIGKILL ? "SIGKILL" : "SIGTERM", (unsigned long)out.acked, (unsigned long)out.issued,
                  out.fault_to_error_s, describe(out.error).c_str());
      // And every later operation fails too, quickly.
      watchdog_.phase("operations on the broken group");
      const auto t = Clock::now();
      uint64_t rec[8];
      make_record(0, rec);
      Op& w = ops_.emplace_back();
      Status s = (*g)->write(w, 0, as_bytes(rec));
      if (s.is_ok()) s = (*g)->wait(w, kOpTimeoutNs + 1'000'000'000);
      EXPECT_FALSE(s.is_ok()) << "an operation succeeded on a chain whose middle daemon is down";
      EXPECT_LT(seconds_since(t), kOpTimeoutNs / 1e9 + 1.0) << describe(s);
      // (broken() is not asserted: some refusals, e.g. "no armed slot within
      // op_timeout", fail the operation without breaking the group.)

      watchdog_.phase("waiting for the signalled daemon to exit");
      ASSERT_TRUE(middle.stop(sig));
      if (sig == SIGKILL) {
        EXPECT_TRUE(WIFSIGNALED(middle.exit_status()) && WTERMSIG(middle.exit_status()) == SIGKILL)
            << middle.describe_exit();
      } else {
        EXPECT_TRUE(WIFEXITED(middle.exit_status()) && WEXITSTATUS(middle.exit_status()) == 0)
            << "SIGTERM must end the daemon with status 0, got " << middle.describe_exit()
            << "; stderr: " << middle.stderr_text();
      }
      watchdog_.phase("destroying the broken group");
      const auto td = Clock::now();
      g->reset();  // the remaining daemons drop the tenant's members
      EXPECT_LT(seconds_since(td), 5.0) << "destroying the broken group took long";
    }
    q.clear();

    // While the daemon is down a new group cannot be built: a clear error, at once.
    {
      const auto t = Clock::now();
      auto g = connect(1, kRegion, GetParam());
      ASSERT_FALSE(g.is_ok()) << "Group::connect succeeded with a daemon down";
      EXPECT_EQ(g.status().code(), StatusCode::kUnavailable) << describe(g.status());
      EXPECT_NE(g.status().message().find(old_endpoint), std::string::npos) << describe(g.status());
      EXPECT_LT(seconds_since(t), 5.0);
    }

    // Restart on the same files (the same config, ports fixed as asked;
    // otherwise 0: fresh ones, read from the ready line).
    middle.spec().control_port = same_control_port ? old_control : 0;
    middle.spec().data_port = same_data_port ? old_data : 0;
    watchdog_.phase("restarting the middle daemon");
    ASSERT_TRUE(middle.start()) << daemon_logs();
    if (same_control_port) {
      EXPECT_EQ(middle.control_port(), old_control);
    }
    if (same_data_port) {
      EXPECT_EQ(middle.data_port(), old_data);
    }

    auto g = connect(1, kRegion, GetParam());
    ASSERT_TRUE(g.is_ok()) << "a new chain after the restart: " << describe(g.status()) << daemon_logs();
    watchdog_.phase("verifying acknowledged records on every replica");
    ASSERT_NO_FATAL_FAILURE(expect_records(**g, 0, out.acked, "after the restart")) << daemon_logs();
    // The chain works again, the restarted replica included.
    watchdog_.phase("writing through the new chain");
    const uint64_t more_from = out.issued, more_to = out.issued + 20;
    ASSERT_NO_FATAL_FAILURE(write_records(**g, more_from, more_to, ops_)) << daemon_logs();
    ASSERT_NO_FATAL_FAILURE(expect_records(**g, more_from, more_to, "written after the restart"));
  }
};

TEST_P(DaemonCrashTest, SigkillMidStreamThenRestartKeepsEveryFlushedWrite) {
  crash_and_restart(SIGKILL, /*same_control_port=*/false, /*same_data_port=*/false);
}

TEST_P(DaemonCrashTest, SigtermMidStreamThenRestartOnTheSameControlPort) {
  crash_and_restart(SIGTERM, /*same_control_port=*/true, /*same_data_port=*/false);
}

// Disabled: a known soft-NIC bug. A fabric caches one outbound TCP connection
// per remote endpoint and reuses it while no send on it has failed; a QP's
// port keeps the connection it was connected with. A NIC that sent nothing to
// the old daemon after it died (here the client: its READ QP to the middle
// replica) still holds the dead connection when the daemon is back on the
// same data port, so the new chain's QPs to it lose every packet and fail
// with "transport retry counter exceeded" (rnic/soft/tcp.cc fabric_peer_port,
// engine.cc transmit). Enable when a dead connection is detected (peer EOF)
// or re-established.
TEST_P(DaemonCrashTest, SigkillThenRestartOnTheSameDataPort) {
  crash_and_restart(SIGKILL, /*same_control_port=*/true, /*same_data_port=*/true);
}

INSTANTIATE_TEST_SUITE_P(Modes, DaemonCrashTest, ::testing::ValuesIn(kModes), mode_name);

// ---- 3. daemon errors ----------------------------------------------------------------------------------
class DaemonErrorsTest : public DaemonFixture {
 protected:
  // Writes text as a config and runs the daemon on it to its exit.
  RunResult run_config(const std::string& name, const std::string& text) {
    const std::string path = dir_.file(name);
    write_file(path, text);
    return run_daemon_to_exit(dir_.path(), path);
  }
  std::string tenant_line(uint32_t id = 1) {
    return "tenant " + std::to_string(id) + " 65536 " + dir_.file("t" + std::to_string(id) + ".pmem") + sec(id) + "\n";
  }
  // The secret field of a tenant line (with its leading space).
  static std::string sec(uint32_t id = 1) { return " secret=" + to_hex(tenant_secret(id));
  }
};

#define EXPECT_DAEMON_FAILS(result, exit_code, ...)                                                         \
  do {                                                                                                      \
    const RunResult& r_ = (result);                                                                         \
    EXPECT_EQ(r_.code, exit_code) << "daemon: " << r_.describe << "; stderr: " << r_.err;                   \
    for (const std::string& needle_ : std::vector<std::string>{__VA_ARGS__})                                \
      EXPECT_NE(r_.err.find(needle_), std::string::npos) << "stderr lacks '" << needle_ << "': " << r_.err; \
  } while (0)

TEST_F(DaemonErrorsTest, BadConfigExitsWithStatus2NamingFileAndLine) {
  const std::string f = dir_.file("bad.cfg");
  // Unknown directive on line 3.
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "# comment\naddress 127.0.0.1\nbogus 1\n" + tenant_line()), 2,
                      f + ":3:", "unknown directive 'bogus'");
  // Bad ports.
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", tenant_line() + "control_port 70000\n"), 2, f + ":2:", "control_port",
                      "0..65535");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "data_port -1\n" + tenant_line()), 2, f + ":1:", "data_port");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "control_port seven\n" + tenant_line()), 2, f + ":1:", "control_port");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "control_port\n" + tenant_line()), 2, f + ":1:", "control_port");
  // Tenant lines missing fields, or with junk.
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "address 127.0.0.1\ntenant 1 4096\n"), 2, f + ":2:", "tenant needs");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "tenant 1\n"), 2, f + ":1:", "tenant needs");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "tenant one 4096 /x.pmem" + sec() + "\n"), 2, f + ":1:", "tenant id 'one' is not a number");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "tenant 1 0 /x.pmem" + sec() + "\n"), 2, f + ":1:", "positive multiple of 8");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "tenant 1 -8 /x.pmem" + sec() + "\n"), 2, f + ":1:", "positive multiple of 8");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "tenant 1 64 /x.pmem" + sec() + "\ntenant 1 64 /y.pmem" + sec() + "\n"), 2, f + ":2:", "listed twice");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "tenant 1 64 /x.pmem" + sec() + "\ntenant 2 64 /x.pmem" + sec(2) + "\n"), 2, f + ":2:", "share the file");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", tenant_line() + "address 127.0.0.1 extra\n"), 2,
                      f + ":2:", "unexpected 'extra'");
  // No tenants at all.
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", "address 127.0.0.1\ncontrol_port 0\n"), 2, f, "no tenant");
  EXPECT_DAEMON_FAILS(run_config("bad.cfg", ""), 2, f, "no tenant");
}

// `device NAME`: an unknown device is exit 1 before "ready", with
// open_device's message naming it (and the devices found); the soft wire's
// directives with a device other than soft are a bad config (exit 2) naming
// the line, wherever the device line is; `device soft:LABEL` (unreachable
// from other processes) and `device` without a name are bad configs.
TEST_F(DaemonErrorsTest, AnUnknownDeviceExitsWithStatus1NamingIt) {
  const std::string f = dir_.file("dev.cfg");
  // (open_device's message: "no RNIC named 'nosuchdev' (this machine has: soft, ...)"; on a
  // machine whose kernel has no RDMA support, libibverbs' own error instead.)
  const RunResult unknown = run_config("dev.cfg", "device nosuchdev\n" + tenant_line());
  EXPECT_DAEMON_FAILS(unknown, 1, "hyperloop-replica: device nosuchdev: ");
  if (unknown.err.find("NotFound") != std::string::npos) {
    EXPECT_NE(unknown.err.find("no RNIC named 'nosuchdev'"), std::string::npos) << unknown.err;
  }
  EXPECT_DAEMON_FAILS(run_config("dev.cfg", "device nosuchdev\ndata_port 7000\n" + tenant_line()), 2, f + ":2:",
                      "data_port", "nosuchdev", "remove the line");
  EXPECT_DAEMON_FAILS(run_config("dev.cfg", "data_inflight_packets 10\n" + tenant_line() + "device rxe9\n"), 2,
                      f + ":1:", "data_inflight_packets", "rxe9");
  EXPECT_DAEMON_FAILS(run_config("dev.cfg", "max_message_bytes 4096\ndevice rxe9\n" + tenant_line()), 2, f + ":1:",
                      "max_message_bytes");
  EXPECT_DAEMON_FAILS(run_config("dev.cfg", "device soft:x\n" + tenant_line()), 2, f + ":1:", "use device soft");
  EXPECT_DAEMON_FAILS(run_config("dev.cfg", "device\n" + tenant_line()), 2, f + ":1:", "device needs a name");
}

TEST_F(DaemonErrorsTest, MissingConfigFileAndUsage) {
  const std::string missing = dir_.file("does-not-exist.cfg");
  EXPECT_DAEMON_FAILS(run_daemon_to_exit(dir_.path(), missing), 2, missing, "cannot open");
  // No argument: usage, status 2.
  std::string error;
  const std::string err_path = dir_.file("usage.stderr");
  auto p = Process::spawn({HYPERLOOP_REPLICA_BIN}, err_path, &error);
  ASSERT_TRUE(p) << error;
  ASSERT_TRUE(p->wait_exit(kExitTimeoutMs)) << "hyperloop-replica without arguments did not exit";
  EXPECT_TRUE(WIFEXITED(p->wait_status()) && WEXITSTATUS(p->wait_status()) == 2) << p->describe_exit();
  EXPECT_NE(read_file(err_path).find("usage"), std::string::npos) << read_file(err_path);
}

TEST_F(DaemonErrorsTest, PmemFileInAMissingDirectoryExitsWithStatus1NamingThePath) {
  const std::string path = dir_.file("no-such-dir/t1.pmem");
  EXPECT_DAEMON_FAILS(run_config("pmem.cfg", "tenant 1 65536 " + path + sec() + "\n"), 1, path, "tenant 1");
  EXPECT_FALSE(std::filesystem::exists(dir_.file("no-such-dir")));
}

// ---- region files have one owner (hyperloop/pmem.h) ----
// Two tenants of one daemon on one file under two names: found by device and
// inode when the files are opened, exit 1 naming the file (the path-string
// check of the config only caught the same spelling).
TEST_F(DaemonErrorsTest, TwoTenantsOnOneFileThroughASymlinkOrAHardLinkExitWithStatus1) {
  const std::string file = dir_.file("shared.pmem");
  const std::string sym = dir_.file("shared-symlink.pmem"), hard = dir_.file("shared-hardlink.pmem");
  write_file(file, "");  // exists (empty: the daemon sizes it), so that it can be hard-linked
  ASSERT_EQ(::symlink(file.c_str(), sym.c_str()), 0) << std::strerror(errno);
  ASSERT_EQ(::link(file.c_str(), hard.c_str()), 0) << std::strerror(errno);
  for (const std::string& other : {sym, hard, dir_.path() + "/./shared.pmem"}) {
    SCOPED_TRACE(other);
    EXPECT_DAEMON_FAILS(run_config("share.cfg", "tenant 1 65536 " + file + sec(1) + "\ntenant 2 65536 " + other + sec(2) + "\n"),
                        1, "tenant 2", other, "in use by another", file);
  }
}

// Two daemons on one file: the second is refused by the first one's lock.
TEST_F(DaemonErrorsTest, ASecondDaemonOnTheSameFileExitsWithStatus1) {
  DaemonSpec spec;
  spec.tenants.push_back({1, 65536, dir_.file("one.pmem"), {}});
  Daemon& first = add_daemon(spec);
  ASSERT_TRUE(first.start());
  const std::string other_name = dir_.path() + "/./one.pmem";
  EXPECT_DAEMON_FAILS(run_config("second.cfg", "tenant 7 65536 " + other_name + sec(7) + "\n"), 1, "tenant 7",
                      other_name, "in use by another process");
  EXPECT_TRUE(first.running()) << "the first daemon died: " << first.describe_exit();
  // Once the first has stopped, the file is free.
  ASSERT_TRUE(first.stop(SIGTERM));
  const RunResult r = run_config("second.cfg", "tenant 7 65536 " + other_name + sec(7) + "\n");
  EXPECT_EQ(r.code, -2) << "the second daemon did not start on a free file: " << r.describe << "; " << r.err;
}

// A region larger than its file system: a 1 MiB tmpfs mounted for the test
// (the tests run as root). The daemon reserves the space at start: exit 1
// with the system's reason, where it used to die of SIGBUS.
TEST_F(DaemonErrorsTest, ARegionLargerThanItsFileSystemExitsWithStatus1AndTheReason) {
  test_fs::SmallFileSystem fs;
  ASSERT_TRUE(fs.ok()) << fs.why();
  const std::string path = fs.file("big.pmem");
  const RunResult r = run_config("big.cfg", "tenant 3 8388608 " + path + sec(3) + "\n");
  EXPECT_DAEMON_FAILS(r, 1, "tenant 3", path, std::strerror(ENOSPC));
}

TEST_F(DaemonErrorsTest, AConfigPathThatIsADirectoryIsABadConfigNamingIt) {
  const std::string d = dir_.file("config.d");
  ASSERT_EQ(::mkdir(d.c_str(), 0755), 0) << std::strerror(errno);
  EXPECT_DAEMON_FAILS(run_daemon_to_exit(dir_.path(), d), 2, d, "is a directory");
}

// A listening socket on 127.0.0.1:<any free port>; returns the port (0 on failure).
class PortHolder {
 public:
  PortHolder() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd_, 1) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len) != 0)
      return;
    port_ = ntohs(sa.sin_port);
  }
  ~PortHolder() {
    if (fd_ >= 0) ::close(fd_);
  }
  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

TEST_F(DaemonErrorsTest, ControlPortInUseExitsWithStatus1) {
  PortHolder busy;
  ASSERT_NE(busy.port(), 0) << "cannot bind a socket on 127.0.0.1";
  EXPECT_DAEMON_FAILS(run_config("port.cfg", "control_port " + std::to_string(busy.port()) + "\n" + tenant_line()), 1,
                      "in use", std::to_string(busy.port()), "control");
}

TEST_F(DaemonErrorsTest, DataPortInUseExitsWithStatus1) {
  PortHolder busy;
  ASSERT_NE(busy.port(), 0) << "cannot bind a socket on 127.0.0.1";
  EXPECT_DAEMON_FAILS(run_config("port.cfg", "data_port " + std::to_string(busy.port()) + "\n" + tenant_line()), 1,
                      "in use", std::to_string(busy.port()));
}

TEST_F(DaemonErrorsTest, ControlPortOfARunningDaemonIsInUse) {
  // The usual way to get a port in use: a second daemon on the first one's port.
  DaemonSpec spec;
  spec.tenants.push_back({1, 65536, dir_.file("a.pmem"), {}});
  Daemon& first = add_daemon(spec);
  ASSERT_TRUE(first.start());
  EXPECT_DAEMON_FAILS(run_config("second.cfg", "control_port " + std::to_string(first.control_port()) + "\n" +
                                                   "tenant 1 65536 " + dir_.file("b.pmem") + sec() + "\n"),
                      1, "in use", std::to_string(first.control_port()));
  EXPECT_TRUE(first.running()) << "the first daemon died: " << first.describe_exit();
}

TEST_F(DaemonErrorsTest, AddressNotOnThisMachineExitsWithStatus1) {
  // A documentation address no interface has (NetnsTest uses .1 and .11-.13).
  EXPECT_DAEMON_FAILS(run_config("addr.cfg", "address 198.51.100.254\n" + tenant_line()), 1, "198.51.100.254");
  EXPECT_DAEMON_FAILS(run_config("addr.cfg", "address 300.1.2.3\n" + tenant_line()), 1, "300.1.2.3");
}

TEST_F(DaemonErrorsTest, SigtermEndsAnIdleDaemonWithStatus0AndSigintToo) {
  for (int sig : {SIGTERM, SIGINT}) {
    DaemonSpec spec;
    spec.tenants.push_back({1, 65536, dir_.file("s" + std::to_string(sig) + ".pmem"), {}});
    Daemon& d = add_daemon(spec);
    ASSERT_TRUE(d.start());
    ASSERT_TRUE(d.stop(sig));
    EXPECT_TRUE(WIFEXITED(d.exit_status()) && WEXITSTATUS(d.exit_status()) == 0)
        << "signal " << sig << ": " << d.describe_exit() << "; stderr: " << d.stderr_text();
  }
}

// The daemon once waited with `while (!g_stop) pause();`: a SIGTERM handled
// between the check and pause() was lost and the daemon never exited (about 1
// start in 70 when signalled right after its ready line). It now blocks the
// stop signals before starting threads and sigwait()s for them.
TEST_F(DaemonErrorsTest, SigtermRightAfterTheReadyLineIsNeverLost) {
  DaemonSpec spec;
  spec.tenants.push_back({1, 65536, dir_.file("race.pmem"), {}});
  for (int i = 0; i < 200; ++i) {
    Daemon d("race" + std::to_string(i), dir_.path(), spec);
    ASSERT_TRUE(d.start());
    d.process()->signal(SIGTERM);
    ASSERT_TRUE(d.process()->wait_exit(5000)) << "start " << i << ": SIGTERM right after ready was lost";
    EXPECT_TRUE(WIFEXITED(d.exit_status()) && WEXITSTATUS(d.exit_status()) == 0) << d.describe_exit();
  }
}

// ---- Group::connect errors against daemons ------------------------------------------------------------
class DaemonConnectTest : public DaemonFixture {};

TEST_F(DaemonConnectTest, WrongTenantIsNotFoundNamingTheTenant) {
  ASSERT_NO_FATAL_FAILURE(start_daemons(3, {{1, 65536}}));
  ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
  auto g = connect(7, 65536, ForwardMode::kOffload);
  ASSERT_FALSE(g.is_ok()) << "a group for a tenant no daemon hosts";
  EXPECT_EQ(g.status().code(), StatusCode::kNotFound) << describe(g.status());
  EXPECT_NE(g.status().message().find("tenant 7"), std::string::npos) << describe(g.status());
  // The daemons are unharmed: the right tenant works.
  auto ok = connect(1, 65536, ForwardMode::kOffload);
  ASSERT_TRUE(ok.is_ok()) << describe(ok.status()) << daemon_logs();
  ASSERT_NO_FATAL_FAILURE(write_records(**ok, 0, 4, ops_));
  ASSERT_NO_FATAL_FAILURE(expect_records(**ok, 0, 4, "tenant 1"));
}

// `device soft` written out is the default: the soft wire on data_port
// (reported on the ready line, limits accepted), and a chain over it works.
TEST_F(DaemonConnectTest, DeviceSoftExplicitIsTheDefaultSoftWire) {
  for (int i = 0; i < 2; ++i) {
    DaemonSpec spec;
    spec.device = "soft";
    spec.extra_lines = {"data_inflight_packets 1024"};
    spec.tenants.push_back({1, 65536, dir_.file("soft" + std::to_string(i) + ".pmem"), {}});
    Daemon& d = add_daemon(spec);
    ASSERT_TRUE(d.start());  // checks data=<port> != 0 and the log's event=device backend=soft
    EXPECT_NE(d.data_port(), 0);
    EXPECT_NE(d.stderr_text().find("device=soft"), std::string::npos) << d.stderr_text();
  }
  ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
  for (ForwardMode mode : kModes) {
    auto g = connect(1, 65536, mode);
    ASSERT_TRUE(g.is_ok()) << describe(g.status()) << daemon_logs();
    ASSERT_NO_FATAL_FAILURE(write_records(**g, 0, 8, ops_));
    ASSERT_NO_FATAL_FAILURE(expect_records(**g, 0, 8, "over two daemons with device soft"));
  }
}

TEST_F(DaemonConnectTest, RegionSizeDifferentFromTheDaemonsIsRefused) {
  ASSERT_NO_FATAL_FAILURE(start_daemons(3, {{1, 65536}}));
  ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
  auto g = connect(1, 131072, ForwardMode::kCpuForward);
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument) << describe(g.status());
}

TEST_F(DaemonConnectTest, NoDaemonIsUnavailable) {
  ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
  uint16_t port;
  {
    PortHolder p;  // a port nobody listens on once it is closed
    port = p.port();
  }
  std::vector<std::string> eps = {"127.0.0.1:" + std::to_string(port)};
  auto g = Group::connect(client_.nic(), eps, group_options(1, 65536, ForwardMode::kOffload));
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().code(), StatusCode::kUnavailable) << describe(g.status());
  EXPECT_NE(g.status().message().find(eps[0]), std::string::npos) << describe(g.status());
  std::vector<std::string> bad = {"localhost:7400"};
  auto g2 = Group::connect(client_.nic(), bad, group_options(1, 65536, ForwardMode::kOffload));
  ASSERT_FALSE(g2.is_ok());
  EXPECT_EQ(g2.status().code(), StatusCode::kInvalidArgument) << describe(g2.status());
}

TEST_F(DaemonConnectTest, TenantInUseUntilTheGroupIsDestroyed) {
  ASSERT_NO_FATAL_FAILURE(start_daemons(2, {{1, 65536}}));
  ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
  auto g = connect(1, 65536, ForwardMode::kOffload);
  ASSERT_TRUE(g.is_ok()) << describe(g.status());
  auto second = connect(1, 65536, ForwardMode::kOffload);
  ASSERT_FALSE(second.is_ok()) << "two groups for one tenant on the same daemons";
  EXPECT_EQ(second.status().code(), StatusCode::kAlreadyExists) << describe(second.status());
  ASSERT_NO_FATAL_FAILURE(write_records(**g, 0, 8, ops_));
  g->reset();  // its members are dropped: the tenant is free again, its data kept
  auto third = connect(1, 65536, ForwardMode::kCpuForward);
  ASSERT_TRUE(third.is_ok()) << describe(third.status()) << daemon_logs();
  ASSERT_NO_FATAL_FAILURE(expect_records(**third, 0, 8, "after the group was rebuilt"));
}

// A client of a newer epoch takes the tenant over while its holder is
// connected: every daemon fences the holder's member; the holder's session
// stays open but nothing it issues afterwards is applied, its teardown
// leaves the new members alone, and an older epoch is refused.
TEST_F(DaemonConnectTest, ANewerEpochFencesTheHolderAndNothingItIssuesAfterwardsIsApplied) {
  ASSERT_NO_FATAL_FAILURE(start_daemons(3, {{1, 65536}}));
  ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
  auto eps = endpoints();
  auto at = [&](uint64_t epoch, ForwardMode mode) {
    prim::GroupOptions o = group_options(1, 65536, mode);
    o.epoch = epoch;
    return Group::connect(client_.nic(), eps, o);
  };
  auto holder = at(3, ForwardMode::kOffload);
  ASSERT_TRUE(holder.is_ok()) << describe(holder.status());
  ASSERT_NO_FATAL_FAILURE(write_records(**holder, 0, 8, ops_));
  auto taker = at(4, ForwardMode::kCpuForward);
  ASSERT_TRUE(taker.is_ok()) << describe(taker.status()) << daemon_logs();
  // The holder goes on writing records 100..131: none completes.
  uint64_t acknowledged = 0;
  for (uint64_t k = 100; k < 132; ++k) {
    uint64_t rec[8];
    make_record(k, rec);
    Op& w = ops_.emplace_back();
    if ((*holder)->write(w, k * kRecordBytes, as_bytes(rec)).is_ok() &&
        (*holder)->wait(w, kOpTimeoutNs + 1'000'000'000).is_ok())
      ++acknowledged;
  }
  EXPECT_EQ(acknowledged, 0u);
  holder->reset();  // its DROPs and its closing name a member that is gone
  ASSERT_NO_FATAL_FAILURE(expect_records(**taker, 0, 8, "after the takeover"));
  std::vector<std::byte> stale(32 * kRecordBytes);
  for (uint32_t r = 0; r < 3; ++r) {
    ASSERT_TRUE((*taker)->read(r, 100 * kRecordBytes, stale).is_ok());
    EXPECT_EQ(stale, std::vector<std::byte>(stale.size())) << "replica " << r << " holds a write of the fenced client";
  }
  ASSERT_NO_FATAL_FAILURE(write_records(**taker, 8, 16, ops_));
  auto older = at(3, ForwardMode::kOffload);
  ASSERT_FALSE(older.is_ok());
  EXPECT_EQ(older.status().code(), StatusCode::kPermissionDenied) << describe(older.status());
  for (const auto& d : daemons_) EXPECT_NE(d->stderr_text().find("member_fenced"), std::string::npos) << d->name();
  ASSERT_NO_FATAL_FAILURE(expect_records(**taker, 0, 16, "after the refused stale client"));
}

// ---- 4. daemons in network namespaces joined by veth pairs ----------------------------------------------
// Topology (names carry this process's id; all removed in TearDown):
//   root namespace: bridge hlbr<pid> N.1/24 (the client listens here)
//   hl<pid>n<i>:    veth hl<pid>p<i> N.1<i+1>/24, its peer hl<pid>h<i> on the bridge
// N is the first of the documentation ranges 198.51.100, 203.0.113, 192.0.2
// that no address or route of this namespace mentions: a machine may itself
// sit in one of them (this one's eth0 is 192.0.2.2/24, gateway 192.0.2.1), and
// a bridge address there would hijack its traffic.
class NetnsTest : public DaemonFixture {
 protected:
  static constexpr int kDaemons = 3;

  void SetUp() override {
    DaemonFixture::SetUp();
    if (HasFatalFailure()) return;
    if (::geteuid() != 0) GTEST_SKIP() << "network namespaces need root (euid " << ::geteuid() << ")";
    ip_ = find_executable("ip");
    if (ip_.empty())
      GTEST_SKIP() << "iproute2 is not installed (no 'ip' on PATH or in /sbin, /usr/sbin): install iproute2";
    if (auto v = run_command({ip_, "-V"}, dir_.path()); v.code != 0)
      GTEST_SKIP() << "'ip -V' fails (" << v.describe << "): " << v.err;
    // One namespace test at a time on this machine: they would pick the same
    // subnet in the root namespace.
    lock_fd_ = ::open("/tmp/hyperloop-daemon-test-netns.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(lock_fd_, 0) << "cannot open the namespace test lock file: " << std::strerror(errno);
    watchdog_.phase("waiting for the namespace test lock /tmp/hyperloop-daemon-test-netns.lock");
    ASSERT_EQ(::flock(lock_fd_, LOCK_EX), 0) << std::strerror(errno);
    remove_stale_topologies();
    if (!choose_subnet())
      GTEST_SKIP() << "every documentation range (198.51.100/24, 203.0.113/24, 192.0.2/24) is in use here";

    const std::string id = std::to_string(::getpid());
    bridge_ = "hlbr" + id;
    watchdog_.on_hang([this] { teardown_topology(); });
    watchdog_.phase("creating network namespaces");
    // The first namespace decides whether namespaces can be made here at all.
    const std::string ns0 = "hl" + id + "n0";
    if (auto r = ip({"netns", "add", ns0}); r.code != 0)
      GTEST_SKIP() << "cannot create a network namespace ('ip netns add' " << r.describe << "): " << r.err;
    namespaces_.push_back(ns0);
    std::string why;
    if (!build_topology(id, &why)) GTEST_SKIP() << "cannot build the veth/bridge topology: " << why;
  }

  void TearDown() override {
    for (auto& d : daemons_) d->kill();  // before their namespaces go
    teardown_topology();
    if (lock_fd_ >= 0) ::close(lock_fd_);
    lock_fd_ = -1;
  }

  RunResult ip(std::vector<std::string> args) {
    args.insert(args.begin(), ip_);
    return run_command(args, dir_.path());
  }

  bool build_topology(const std::string& id, std::string* why) {
    auto step = [&](std::vector<std::string> args) {
      auto r = ip(args);
      if (r.code != 0) *why = "'ip " + join(args) + "' " + r.describe + ": " + r.err;
      return r.code == 0;
    };
    if (!step({"link", "add", "name", bridge_, "type", "bridge"})) return false;
    bridge_made_ = true;
    if (!step({"addr", "add", client_address() + "/24", "dev", bridge_}) || !step({"link", "set", bridge_, "up"}))
      return false;
    for (int i = 0; i < kDaemons; ++i) {
      const std::string ns = "hl" + id + "n" + std::to_string(i);
      const std::string host_end = "hl" + id + "h" + std::to_string(i), ns_end = "hl" + id + "p" + std::to_string(i);
      if (i > 0) {
        if (!step({"netns", "add", ns})) return false;
        namespaces_.push_back(ns);
      }
      if (!step({"link", "add", host_end, "type", "veth", "peer", "name", ns_end})) return false;
      veths_.push_back(host_end);
      if (!step({"link", "set", ns_end, "netns", ns}) || !step({"link", "set", host_end, "master", bridge_}) ||
          !step({"link", "set", host_end, "up"}) ||
          !step({"-n", ns, "addr", "add", daemon_address(i) + "/24", "dev", ns_end}) ||
          !step({"-n", ns, "link", "set", ns_end, "up"}) || !step({"-n", ns, "link", "set", "lo", "up"}))
        return false;
    }
    return true;
  }

  void teardown_topology() {
    for (const auto& ns : namespaces_) (void)ip({"netns", "del", ns});  // takes the veth ends inside along
    for (const auto& v : veths_) (void)ip({"link", "del", v});          // already gone, normally
    if (bridge_made_) (void)ip({"link", "del", bridge_});
    namespaces_.clear();
    veths_.clear();
    bridge_made_ = false;
  }

  // Bridges, veths and namespaces left by a namespace test process that no
  // longer exists (killed before its teardown): a stale bridge would keep
  // its address and routes.
  void remove_stale_topologies() {
    std::set<std::string> dead;
    // marker: where our names start in a line ("" for the start of the line).
    auto collect = [&](const std::string& text, const std::string& marker) {
      std::istringstream ls(text);
      for (std::string line; std::getline(ls, line);) {
        const auto at = marker.empty() ? (line.rfind("hl", 0) == 0 ? 0 : std::string::npos) : line.find(marker);
        if (at == std::string::npos) continue;
        const auto from = at + (marker.empty() ? 2 : marker.size());
        const std::string pid = line.substr(from, line.find_first_not_of("0123456789", from) - from);
        if (!pid.empty() && pid.size() < 9 && ::kill(std::stoi(pid), 0) != 0 && errno == ESRCH) dead.insert(pid);
      }
    };
    const std::string links = ip({"-o", "link", "show"}).out;
    collect(links, ": hl");                  // "8: hl123h0@if9: ..."
    collect(links, ": hlbr");                // "7: hlbr123: ..."
    collect(ip({"netns", "list"}).out, "");  // "hl123n0 (id: 2)"
    for (const auto& pid : dead) {
      (void)ip({"link", "del", "hlbr" + pid});
      for (int i = 0; i < kDaemons; ++i) {
        (void)ip({"netns", "del", "hl" + pid + "n" + std::to_string(i)});
        (void)ip({"link", "del", "hl" + pid + "h" + std::to_string(i)});
      }
    }
  }

  // The first documentation /24 that no address or route here mentions.
  bool choose_subnet() {
    const std::string used = ip({"-4", "-o", "addr", "show"}).out + ip({"-4", "route", "show", "table", "all"}).out;
    for (const char* net : {"198.51.100.", "203.0.113.", "192.0.2."}) {
      if (used.find(net) == std::string::npos) {
        subnet_ = net;
        return true;
      }
    }
    return false;
  }
  std::string client_address() const { return subnet_ + "1"; }
  std::string daemon_address(int i) const { return subnet_ + std::to_string(11 + i); }

  void start_namespaced_daemons(size_t region) {
    for (int i = 0; i < kDaemons; ++i) {
      DaemonSpec spec;
      spec.address = daemon_address(i);
      spec.tenants.push_back({1, region, dir_.file("ns" + std::to_string(i) + ".pmem"), {}});
      Daemon& d = add_daemon(spec, {ip_, "netns", "exec", namespaces_[size_t(i)]});
      watchdog_.phase("starting daemon " + d.name() + " in " + namespaces_[size_t(i)]);
      ASSERT_TRUE(d.start());
    }
  }

  std::string ip_;
  std::string subnet_;  // "a.b.c."
  std::string bridge_;
  bool bridge_made_ = false;
  std::vector<std::string> namespaces_, veths_;
  int lock_fd_ = -1;
};

TEST_F(NetnsTest, ChainAcrossNamespacesThenAPartitionFailsWithinABound) {
  constexpr size_t kRegion = 256 * 1024;
  ASSERT_NO_FATAL_FAILURE(start_namespaced_daemons(kRegion));
  std::printf("[          ] namespaces %s, %s, %s on bridge %s, %s0/24\n", namespaces_[0].c_str(),
              namespaces_[1].c_str(), namespaces_[2].c_str(), bridge_.c_str(), subnet_.c_str());
  Status listening = client_.init(client_address());
  ASSERT_TRUE(listening.is_ok()) << "the client fabric cannot listen on the bridge address: " << describe(listening);

  // Both modes, one after the other, on the same daemons and tenant.
  for (ForwardMode mode : kModes) {
    auto g = connect(1, kRegion, mode);
    ASSERT_TRUE(g.is_ok()) << prim::forward_mode_name(mode) << ": " << describe(g.status()) << daemon_logs();
    watchdog_.phase(std::string("primitives across namespaces, ") + std::string(prim::forward_mode_name(mode)));
    ASSERT_NO_FATAL_FAILURE(exercise_all_primitives(**g, mode == ForwardMode::kOffload ? 11 : 12, ops_))
        << daemon_logs();
  }

  // A stream of records, then the middle replica's link goes down (its
  // process lives on: no connection is closed, packets just vanish).
  PairQueue q;
  StreamOutcome out;
  const uint64_t first = 1024;  // records from offset 64 KiB on
  {
    auto g = connect(1, kRegion, ForwardMode::kOffload);
    ASSERT_TRUE(g.is_ok()) << describe(g.status()) << daemon_logs();
    watchdog_.phase("streaming, then cutting the middle namespace's veth");
    // Heal before the group goes, also on a failed assertion: destroying it
    // asks each daemon (over its control connection) to drop the tenant's
    // members, and that call has no timeout: an unreachable daemon would
    // hang it (a reported bug).
    struct OnExit {
      std::function<void()> f;
      ~OnExit() { f(); }
    } heal{[this] { (void)ip({"link", "set", veths_[1], "up"}); }};
    std::string cut_error;
    ASSERT_NO_FATAL_FAILURE(stream_until_failure(
        **g, q, first, 20,
        [&] {
          if (auto r = ip({"link", "set", veths_[1], "down"}); r.code != 0) cut_error = r.err;
        },
        &out));
    ASSERT_TRUE(cut_error.empty()) << "cannot take " << veths_[1] << " down: " << cut_error;
    ASSERT_GE(out.acked, 20u) << describe(out.error) << daemon_logs();
    EXPECT_FALSE(out.error.is_ok());
    EXPECT_LT(out.fault_to_error_s, kOpTimeoutNs / 1e9 + 1.0) << describe(out.error);
    std::printf("[          ] partition: %lu pairs acknowledged; first error %.3f s after the cut: %s\n",
                (unsigned long)out.acked, out.fault_to_error_s, describe(out.error).c_str());
    watchdog_.phase("healing the partition");
    auto r = ip({"link", "set", veths_[1], "up"});
    ASSERT_EQ(r.code, 0) << r.err;
    watchdog_.phase("destroying the broken group");
    g->reset();
  }
  q.clear();
  auto g = connect(1, kRegion, ForwardMode::kCpuForward);
  ASSERT_TRUE(g.is_ok()) << "a new chain after the partition healed: " << describe(g.status()) << daemon_logs();
  watchdog_.phase("verifying records after the partition");
  ASSERT_NO_FATAL_FAILURE(expect_records(**g, first, first + out.acked, "acknowledged before the partition"));
}

// ---- 5. transactions over daemons -----------------------------------------------------------------------
// A bank on a txn::Store over three hyperloop-replica daemons: kAccounts
// accounts of kSlot bytes, one stripe each, holding {balance, transfers}
// where `transfers` counts the committed transfers that touched the account
// (as examples/txn_demo.cc does). A transfer reads two accounts, moves 1..50
// (at most the balance) from one to the other, counts itself on both and
// commits. A Ledger counts, per account, the transfers acknowledged (commit
// returned OK) and those in doubt (commit failed with the chain broken): after
// a recovery an account's count must be at least its acknowledged transfers
// and at most those plus its in-doubt ones, and the total never changes.
constexpr uint32_t kTxnTenant = 1;
constexpr uint64_t kAccounts = 16;
constexpr uint64_t kSlot = 64;
constexpr uint64_t kInitialBalance = 1000;
constexpr uint64_t kTxnAckTimeoutNs = 100'000'000;  // the client NIC's transport timer (see start_bank_daemons)
constexpr double kTransferRetrySeconds = 5.0;  // kAborted is retried this long (10 x lock_timeout_ns)

txn::StoreOptions bank_options(ForwardMode mode) {
  txn::StoreOptions so;
  so.tenant = kTxnTenant;
  so.data_size = kAccounts * kSlot;
  so.log_size = 64 << 10;
  so.stripe_bytes = kSlot;
  // A read of an account written by the previous transfer waits until that
  // transfer is applied on every replica (a round trip through three
  // processes): generous, for a loaded machine. kAborted past it is retried.
  so.lock_timeout_ns = 500'000'000;
  so.group = group_options(kTxnTenant, 0, mode);  // region_size is set by the store
  return so;
}

std::span<std::byte> words_in(uint64_t* w, size_t n) { return {reinterpret_cast<std::byte*>(w), 8 * n}; }
std::span<const std::byte> words_of(const uint64_t* w, size_t n) {
  return {reinterpret_cast<const std::byte*>(w), 8 * n};
}

struct Ledger {
  std::vector<uint64_t> acked = std::vector<uint64_t>(kAccounts, 0);     // acknowledged transfers per account
  std::vector<uint64_t> in_doubt = std::vector<uint64_t>(kAccounts, 0);  // in-doubt transfers per account
  uint64_t acked_total = 0, in_doubt_total = 0, retries = 0;
  void add(const Ledger& o) {
    for (uint64_t a = 0; a < kAccounts; ++a) acked[a] += o.acked[a], in_doubt[a] += o.in_doubt[a];
    acked_total += o.acked_total;
    in_doubt_total += o.in_doubt_total;
    retries += o.retries;
  }
};

// Every account {kInitialBalance, 0}, in one transaction.
Status fund(txn::Store& s) {
  txn::Transaction t = s.begin();
  for (uint64_t a = 0; a < kAccounts; ++a) {
    const uint64_t rec[2] = {kInitialBalance, 0};
    HL_RETURN_IF_ERROR(t.write(a * kSlot, words_of(rec, 2)));
  }
  return t.commit();
}

struct TransferResult {
  Status status;          // OK, or the error that ended it (kAborted only after kTransferRetrySeconds)
  bool in_doubt = false;  // the error came from commit(): the transfer may or may not be durable
};

// One transfer between two accounts drawn from rng. kAborted (a conflict,
// or a stripe still being applied past lock_timeout_ns: nothing was sent)
// runs the same transfer again, for at most kTransferRetrySeconds.
TransferResult transfer(txn::Store& s, std::mt19937_64& rng, Ledger& l) {
  const uint64_t a = rng() % kAccounts, b = (a + 1 + rng() % (kAccounts - 1)) % kAccounts, want = 1 + rng() % 50;
  const auto start = Clock::now();
  for (;;) {
    txn::Transaction t = s.begin();
    uint64_t ra[2], rb[2];
    bool committing = false;
    Status st = t.read(a * kSlot, words_in(ra, 2));
    if (st.is_ok()) st = t.read(b * kSlot, words_in(rb, 2));
    if (st.is_ok()) {
      const uint64_t amount = std::min(ra[0], want);
      ra[0] -= amount, ++ra[1];
      rb[0] += amount, ++rb[1];
      st = t.write(a * kSlot, words_of(ra, 2));
      if (st.is_ok()) st = t.write(b * kSlot, words_of(rb, 2));
      if (st.is_ok()) {
        committing = true;
        st = t.commit();
      }
    }
    if (st.code() == StatusCode::kAborted && seconds_since(start) < kTransferRetrySeconds) {
      ++l.retries;
      continue;
    }
    TransferResult r;
    r.status = st;
    if (st.code() == StatusCode::kAborted)
      r.status = Status(st.code(), "transfer " + std::to_string(a) + " -> " + std::to_string(b) +
                                       " still aborted after " + std::to_string(kTransferRetrySeconds) +
                                       " s of retries: " + st.message());
    if (st.is_ok()) {
      ++l.acked[a], ++l.acked[b], ++l.acked_total;
    } else if (committing && st.code() != StatusCode::kAborted) {
      r.in_doubt = true;
      ++l.in_doubt[a], ++l.in_doubt[b], ++l.in_doubt_total;
    }
    return r;
  }
}

// Reads every account through the store and checks the ledger: the total is
// unchanged; each account counts at least its acknowledged transfers and at
// most those plus its in-doubt ones; the in-doubt transfers that landed are
// whole (both accounts). Then settles the ledger: what landed counts as
// acknowledged, nothing is in doubt any more. *landed: in-doubt transfers found.
void expect_accounts(txn::Store& s, Ledger& l, const std::string& what, uint64_t* landed = nullptr) {
  std::vector<uint64_t> w(kAccounts * kSlot / 8);
  Status st = s.read(0, words_in(w.data(), w.size()));
  ASSERT_TRUE(st.is_ok()) << what << ": reading the accounts: " << describe(st);
  uint64_t total = 0, counted = 0;
  for (uint64_t a = 0; a < kAccounts; ++a) {
    const uint64_t balance = w[a * kSlot / 8], n = w[a * kSlot / 8 + 1];
    total += balance;
    counted += n;
    EXPECT_GE(n, l.acked[a]) << what << ": account " << a << " shows " << n << " transfers, " << l.acked[a]
                             << " were acknowledged";
    EXPECT_LE(n, l.acked[a] + l.in_doubt[a]) << what << ": account " << a << " shows " << n << " transfers, "
                                             << l.acked[a] << " acknowledged and " << l.in_doubt[a] << " in doubt";
    for (uint64_t k = 2; k < kSlot / 8; ++k) EXPECT_EQ(w[a * kSlot / 8 + k], 0u) << what << ": account " << a;
  }
  EXPECT_EQ(total, kAccounts * kInitialBalance) << what << ": money was created or destroyed";
  ASSERT_GE(counted, 2 * l.acked_total) << what;
  EXPECT_EQ(counted % 2, 0u) << what << ": a transfer counted on one account only";
  const uint64_t found = (counted - 2 * l.acked_total) / 2;
  EXPECT_LE(found, l.in_doubt_total) << what;
  if (landed) *landed = found;
  for (uint64_t a = 0; a < kAccounts; ++a) {
    l.acked[a] = w[a * kSlot / 8 + 1];
    l.in_doubt[a] = 0;
  }
  l.acked_total += found;
  l.in_doubt_total = 0;
}

// After drain(): every replica's lock table and data area, read over RDMA
// READ, are byte for byte the same.
void expect_replicas_identical(txn::Store& s, const txn::StoreOptions& so, const std::string& what) {
  Status d = s.drain();
  ASSERT_TRUE(d.is_ok()) << what << ": drain: " << describe(d);
  const size_t region = txn::Store::region_bytes(so);
  const size_t tail = so.data_size + 8 * (so.data_size / so.stripe_bytes);  // lock table + data area
  prim::Group& g = s.group();
  ASSERT_EQ(g.replicas(), s.replicas());
  std::vector<std::byte> first(tail), other(tail);
  for (uint32_t r = 0; r < g.replicas(); ++r) {
    Status st = g.read(r, region - tail, r ? other : first);
    ASSERT_TRUE(st.is_ok()) << what << ": read of replica " << r << ": " << describe(st);
    if (r == 0) continue;
    size_t bad = 0, at = SIZE_MAX;
    for (size_t i = 0; i < tail; ++i)
      if (first[i] != other[i]) ++bad, at = std::min(at, i);
    EXPECT_EQ(bad, 0u) << what << ": replica " << r << " differs from replica 0 in " << bad << " bytes, first in the "
                       << (at < tail - so.data_size ? "lock table" : "data area") << " at region offset "
                       << region - tail + at;
  }
}

// Transfers on `store`; after 40 acknowledged ones `victim` (a daemon of the
// store's chain, on a fixed control port) gets SIGKILL, and transfers go on
// until one fails: an error within op_timeout + 1 s, never a hang. recover()
// with the daemon down is kUnavailable naming it; the daemon restarts on its
// config and files; recover() then succeeds and every acknowledged transfer
// is there (in-doubt ones whole or absent), replicas identical; new transfers
// commit on the rebuilt chain.
// ledger: what the accounts hold so far (continued here).
void sigkill_and_recover(txn::Store& store, const txn::StoreOptions& so, Daemon& victim, Watchdog& wd,
                         const std::function<std::string()>& logs, Ledger& ledger) {
  const uint16_t control_port = victim.control_port();

  constexpr uint64_t kAckedBeforeKill = 40;
  std::mt19937_64 rng(7);
  const uint64_t acked_before = ledger.acked_total;
  TransferResult failed;
  bool killed = false;
  Clock::time_point killed_at;
  double kill_to_error = -1;
  uint64_t acked_after_kill = 0;
  wd.phase("transfers, then SIGKILL of the victim daemon");
  for (uint64_t k = 0;; ++k) {
    ASSERT_LT(k, 100'000u) << "no error after the kill";
    TransferResult r = transfer(store, rng, ledger);
    if (!r.status.is_ok()) {
      failed = r;
      if (killed) kill_to_error = seconds_since(killed_at);
      break;
    }
    if (killed) ++acked_after_kill;
    if (!killed && ledger.acked_total - acked_before == kAckedBeforeKill) {
      victim.process()->signal(SIGKILL);
      killed = true;
      killed_at = Clock::now();
    }
  }
  ASSERT_TRUE(killed) << "a transfer failed before the kill: " << describe(failed.status) << logs();
  // An error, not a hang, of the kinds that mean "the chain broke" (for
  // commit(): in doubt). The slowest path to it: a read waits
  // lock_timeout_ns on a stripe the chain never unlocks, then probes each
  // replica with a READ bounded by op_timeout: so within lock_timeout +
  // op_timeout (+1 s of slack; under the VM's TCG it took 3.02 s).
  EXPECT_TRUE(failed.status.code() == StatusCode::kUnavailable ||
              failed.status.code() == StatusCode::kDeadlineExceeded)
      << describe(failed.status);
  EXPECT_GE(kill_to_error, 0);
  EXPECT_LT(kill_to_error, double(kOpTimeoutNs + so.lock_timeout_ns) / 1e9 + 1.0)
      << "the first error came " << kill_to_error << " s after the kill: " << describe(failed.status);
  std::printf("[          ] %lu transfers acknowledged (%lu after the kill), first error %.3f s after the kill "
              "(%s): %s\n",
              (unsigned long)ledger.acked_total, (unsigned long)acked_after_kill, kill_to_error,
              failed.in_doubt ? "commit, in doubt" : "before commit", describe(failed.status).c_str());
  EXPECT_FALSE(store.healthy());
  {  // Later transfers are refused at once: the store needs recover().
    const auto t = Clock::now();
    TransferResult r = transfer(store, rng, ledger);
    EXPECT_EQ(r.status.code(), StatusCode::kUnavailable) << describe(r.status);
    EXPECT_LT(seconds_since(t), 1.0) << describe(r.status);
  }

  wd.phase("waiting for the killed daemon to exit");
  ASSERT_TRUE(victim.stop(SIGKILL));
  EXPECT_TRUE(WIFSIGNALED(victim.exit_status()) && WTERMSIG(victim.exit_status()) == SIGKILL)
      << victim.describe_exit();
  {  // recover() while the daemon is down: kUnavailable naming it, at once.
    wd.phase("recover() with the victim daemon down");
    const auto t = Clock::now();
    Status s = store.recover();
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << describe(s);
    EXPECT_NE(s.message().find(victim.endpoint()), std::string::npos) << describe(s);
    EXPECT_LT(seconds_since(t), 5.0) << describe(s);
    EXPECT_FALSE(store.healthy());
  }

  // Restart on the same config and files, on its control port (the store's
  // endpoint) and a fresh data port.
  victim.spec().control_port = control_port;
  victim.spec().data_port = 0;
  wd.phase("restarting the victim daemon");
  ASSERT_TRUE(victim.start()) << logs();
  ASSERT_EQ(victim.control_port(), control_port);
  // The daemon serves once its ready line is out; recover() is still retried
  // (bounded) on kUnavailable in case the chain is not up at once.
  wd.phase("recover() after the restart");
  const auto tr = Clock::now();
  Status rec;
  int attempts = 0;
  do {
    ++attempts;
    rec = store.recover();
  } while (rec.code() == StatusCode::kUnavailable && seconds_since(tr) < 10.0);
  ASSERT_TRUE(rec.is_ok()) << "recover() after " << attempts << " attempts: " << describe(rec) << logs();
  EXPECT_TRUE(store.healthy());
  const txn::StoreStats st = store.stats();
  uint64_t landed = 0;
  ASSERT_NO_FATAL_FAILURE(expect_accounts(store, ledger, "after recovery", &landed)) << logs();
  std::printf("[          ] recovered in %.3f s (%d attempt(s)): %lu records replayed, %lu bytes resynced; "
              "in-doubt transfers present: %lu\n",
              seconds_since(tr), attempts, (unsigned long)st.replayed_records, (unsigned long)st.resynced_bytes,
              (unsigned long)landed);
  ASSERT_NO_FATAL_FAILURE(expect_replicas_identical(store, so, "after recovery")) << logs();

  // New transfers commit on the rebuilt chain, the restarted replica included.
  wd.phase("transfers after recovery");
  for (int k = 0; k < 60; ++k) {
    TransferResult r = transfer(store, rng, ledger);
    ASSERT_TRUE(r.status.is_ok()) << "transfer " << k << " after recovery: " << describe(r.status) << logs();
  }
  ASSERT_NO_FATAL_FAILURE(expect_accounts(store, ledger, "after new transfers", &landed));
  EXPECT_EQ(landed, 0u);
  ASSERT_NO_FATAL_FAILURE(expect_replicas_identical(store, so, "after new transfers")) << logs();}

// Modes/...: soft NICs in both modes; OnDevice/...: kCpuForward, daemons
// (`device NAME`) and client on HYPERLOOP_TEST_DEVICE when it is set.
class DaemonTxnTest : public DaemonFixture, public ::testing::WithParamInterface<device_test::Where> {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    if (HasFatalFailure()) return;
    use_device_under_test(GetParam().on_device);
    so_ = bank_options(GetParam().mode);
    region_ = txn::Store::region_bytes(so_);
    ASSERT_GT(region_, 0u);
  }
  // Three daemons, each registering the tenant with region_bytes() and a
  // pmem file. The middle one has fixed ports: a store keeps the endpoints
  // it was connected with, so a restarted daemon must come back on its
  // control port.
  //
  // The client's transport timer is kTxnAckTimeoutNs, not kAckTimeoutNs:
  // a store READs far more than the stream tests (each transactional read is
  // three READs at the tail, recovery reads every replica's whole region),
  // and a daemon's NIC serves a READ only after making the region durable
  // (msync) on its polling thread. On this 2-CPU machine under load those
  // READs were seen to go unanswered for longer than 20 ms x the retries,
  // failing healthy chains ("READ failed: transport retry counter exceeded",
  // about one run in 30). Failures are still detected well within op_timeout.
  void start_bank_daemons() {
    // The daemons' NICs get the client's transport timer too: with the
    // default 20 ms (x 8 retries) a daemon's polling thread kept off the CPU
    // for 160 ms by the rest of a parallel test run broke a chain in CI (a
    // forwarding QP's "transport retry counter exceeded").
    if (soft_wire())
      daemon_extra_lines_.push_back("data_ack_timeout_ms " + std::to_string(kTxnAckTimeoutNs / 1'000'000));
    ASSERT_NO_FATAL_FAILURE(start_daemons(3, {{kTxnTenant, region_}}, "127.0.0.1", {false, true, false}));
    DAEMON_ASSERT_OK(init_client("127.0.0.1", kTxnAckTimeoutNs));
  }
  Result<std::unique_ptr<txn::Store>> connect_store() {
    watchdog_.phase("Store::connect");
    auto eps = endpoints();
    return txn::Store::connect(client_.nic(), eps, so_);
  }

  txn::StoreOptions so_;
  size_t region_ = 0;
};

// Transfers from `threads` threads at once (conflicts abort and run again),
// then the accounts and every replica checked.
// *out (if given): the threads' ledger, settled (for later checks).
void bank_transfers(txn::Store& store, const txn::StoreOptions& so, int threads, uint64_t per_thread,
                    const std::function<std::string()>& logs, Ledger* out = nullptr) {
  const auto t0 = Clock::now();
  std::vector<Ledger> ledgers(static_cast<size_t>(threads));
  std::vector<Status> errors(static_cast<size_t>(threads));
  std::vector<uint64_t> done(static_cast<size_t>(threads), 0);
  {
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
      workers.emplace_back([&, t] {
        std::mt19937_64 rng(1000 + uint64_t(t));
        for (uint64_t k = 0; k < per_thread; ++k, ++done[size_t(t)]) {
          TransferResult r = transfer(store, rng, ledgers[size_t(t)]);
          if (!r.status.is_ok()) {
            errors[size_t(t)] = r.status;
            return;
          }
        }
      });
    for (auto& w : workers) w.join();
  }
  const double secs = seconds_since(t0);
  for (int t = 0; t < threads; ++t)
    ASSERT_TRUE(errors[size_t(t)].is_ok()) << "thread " << t << ", transfer " << done[size_t(t)] << ": "
                                           << describe(errors[size_t(t)]) << logs();
  Ledger all;
  for (const auto& l : ledgers) all.add(l);
  EXPECT_EQ(all.acked_total, uint64_t(threads) * per_thread);
  ASSERT_NO_FATAL_FAILURE(expect_accounts(store, all, "after the transfers"));
  if (out) *out = all;
  ASSERT_NO_FATAL_FAILURE(expect_replicas_identical(store, so, "after the transfers")) << logs();
  EXPECT_TRUE(store.healthy());
  const txn::StoreStats st = store.stats();
  EXPECT_GE(st.commits, 1 + all.acked_total);
  std::printf("[          ] %lu transfers from %d thread(s) in %.2f s (%lu aborted and run again), %lu log "
              "truncations\n",
              (unsigned long)all.acked_total, threads, secs, (unsigned long)all.retries, (unsigned long)st.truncations);
}

TEST_P(DaemonTxnTest, TxnBankTransfersOnThreeDaemons) {
  ASSERT_NO_FATAL_FAILURE(start_bank_daemons());
  auto opened = connect_store();
  ASSERT_TRUE(opened.is_ok()) << describe(opened.status()) << daemon_logs();
  txn::Store& store = **opened;
  EXPECT_EQ(store.replicas(), 3u);
  EXPECT_EQ(store.group().mode(), GetParam().mode);
  EXPECT_EQ(store.data_size(), kAccounts * kSlot);
  ASSERT_TRUE(fund(store).is_ok()) << daemon_logs();
  watchdog_.phase("transfers");
  ASSERT_NO_FATAL_FAILURE(bank_transfers(store, so_, 1, 300, [this] { return daemon_logs(); }));
}

// Two threads at once: commits pipelined through the daemons, conflicts
// aborted and run again. (Applied commits were once reaped in the order the
// threads reached their commit points, not in LSN order: applied_lsn went
// backwards and reads of a stripe the later commit wrote aborted forever.)
TEST_P(DaemonTxnTest, TxnBankTransfersFromTwoThreads) {
  ASSERT_NO_FATAL_FAILURE(start_bank_daemons());
  auto opened = connect_store();
  ASSERT_TRUE(opened.is_ok()) << describe(opened.status()) << daemon_logs();
  txn::Store& store = **opened;
  ASSERT_TRUE(fund(store).is_ok()) << daemon_logs();
  watchdog_.phase("transfers from two threads");
  ASSERT_NO_FATAL_FAILURE(bank_transfers(store, so_, 2, 150, [this] { return daemon_logs(); }));
}

TEST_P(DaemonTxnTest, TxnSigkillOfTheMiddleDaemonThenRecoverKeepsEveryAcknowledgedTransfer) {
  ASSERT_NO_FATAL_FAILURE(start_bank_daemons());
  auto opened = connect_store();
  ASSERT_TRUE(opened.is_ok()) << describe(opened.status()) << daemon_logs();
  txn::Store& store = **opened;
  ASSERT_TRUE(fund(store).is_ok()) << daemon_logs();
  Daemon& middle = *daemons_[1];
  Ledger ledger;
  ASSERT_NO_FATAL_FAILURE(
      sigkill_and_recover(store, so_, middle, watchdog_, [this] { return daemon_logs(); }, ledger));
}

// A client process that dies leaves commits that are durable but maybe not
// applied (its Store never drained), and its members on the daemons (dropped
// when its control connections close). Modelled by destroying the Store
// right after its last commit returned: a new client's Store::connect finds
// every acknowledged transfer, exactly, on identical replicas. Three
// generations of clients, each continuing the previous one's ledger.
TEST_P(DaemonTxnTest, TxnClientGoneWithUnappliedCommitsNextClientFindsEveryTransfer) {
  ASSERT_NO_FATAL_FAILURE(start_bank_daemons());
  std::mt19937_64 rng(11);
  Ledger ledger;
  constexpr int kClients = 3;
  constexpr int kTransfersEach = 100;
  for (int c = 0; c <= kClients; ++c) {
    auto opened = connect_store();
    ASSERT_TRUE(opened.is_ok()) << "client " << c << ": " << describe(opened.status()) << daemon_logs();
    std::unique_ptr<txn::Store> store = std::move(opened).value();
    const std::string who = "client " + std::to_string(c);
    if (c == 0) {
      ASSERT_TRUE(fund(*store).is_ok()) << daemon_logs();
    } else {
      // The previous client's last commit was not applied when it went:
      // recovery replayed it (at least) from the log.
      const txn::StoreStats st = store->stats();
      EXPECT_GE(st.replayed_records, 1u) << who;
      uint64_t landed = 0;
      ASSERT_NO_FATAL_FAILURE(expect_accounts(*store, ledger, who + " after connect", &landed)) << daemon_logs();
      EXPECT_EQ(landed, 0u) << who;  // nothing was in doubt: every transfer was acknowledged
      ASSERT_NO_FATAL_FAILURE(expect_replicas_identical(*store, so_, who + " after connect")) << daemon_logs();
      std::printf("[          ] %s: %lu records replayed\n", who.c_str(), (unsigned long)st.replayed_records);
    }
    if (c == kClients) break;
    watchdog_.phase(who + ": transfers");
    for (int k = 0; k < kTransfersEach; ++k) {
      TransferResult r = transfer(*store, rng, ledger);
      ASSERT_TRUE(r.status.is_ok()) << who << ", transfer " << k << ": " << describe(r.status) << daemon_logs();
    }
    // The client goes: no drain(), no poll().
    watchdog_.phase(who + ": destroying the store");
    const auto t = Clock::now();
    store.reset();
    EXPECT_LT(seconds_since(t), 5.0) << who << ": destroying the store took long";
  }
  EXPECT_EQ(ledger.acked_total, uint64_t(kClients * kTransfersEach));
}

// recover() drops the old group before it builds the new one: when building
// fails (a daemon is down) the store has no group at all. It refuses work
// with kUnavailable (it once dereferenced the missing group in commit()).
TEST_P(DaemonTxnTest, TxnCommitAfterAFailedRecoverIsRefused) {
  ASSERT_NO_FATAL_FAILURE(start_bank_daemons());
  auto opened = connect_store();
  ASSERT_TRUE(opened.is_ok()) << describe(opened.status()) << daemon_logs();
  txn::Store& store = **opened;
  ASSERT_TRUE(fund(store).is_ok()) << daemon_logs();
  watchdog_.phase("stopping the middle daemon");
  ASSERT_TRUE(daemons_[1]->stop(SIGKILL));
  Status r = store.recover();
  ASSERT_EQ(r.code(), StatusCode::kUnavailable) << describe(r);
  EXPECT_FALSE(store.healthy());
  watchdog_.phase("commit on a store whose recover() failed");
  txn::Transaction t = store.begin();
  const uint64_t rec[2] = {1, 2};
  ASSERT_TRUE(t.write(0, words_of(rec, 2)).is_ok());
  Status c = t.commit();
  EXPECT_EQ(c.code(), StatusCode::kUnavailable) << describe(c);
  std::mt19937_64 rng(3);
  Ledger ledger;
  EXPECT_EQ(transfer(store, rng, ledger).status.code(), StatusCode::kUnavailable);
}

INSTANTIATE_TEST_SUITE_P(Modes, DaemonTxnTest, ::testing::ValuesIn(device_test::kSoftModes), where_name);
INSTANTIATE_TEST_SUITE_P(OnDevice, DaemonTxnTest, ::testing::ValuesIn(device_test::kOnDevice), where_name);
INSTANTIATE_TEST_SUITE_P(OnDeviceOffload, DaemonTxnTest, ::testing::ValuesIn(device_test::kOnDeviceOffload), where_name);

// ---- 6. two daemons on two devices, in two network namespaces ------------------------------------------
// Store::connect over two daemons, each on its own device and address (and,
// as root, in its own network namespace: control over TCP crosses it), and a
// client on the device under test: bank transfers from two threads, then a
// SIGKILL of the second daemon, its restart in the same namespace, recover().
// Parametrized by the environment (tests/device-suites.sh --netns sets it for
// the Soft-RoCE VM, where ns1/ns2 are joined by a veth pair and rxe1/rxe2 sit
// on its two ends):
//   HYPERLOOP_NETNS_DAEMONS  NETNS/ADDRESS/DEVICE,NETNS/ADDRESS/DEVICE: for
//                            each daemon its namespace ("-": this one), the
//                            IPv4 address it serves control on and its
//                            config's device; default
//                            -/127.0.0.11/soft,-/127.0.0.12/soft
//   HYPERLOOP_TEST_DEVICE    the client's device (checked); unset: a soft NIC
//                            of a private fabric
//   HYPERLOOP_NETNS_CLIENT_ADDRESS  where a soft client listens (its daemons
//                            must reach it); default 127.0.0.1
// With the defaults it runs on any machine, on loopback, on soft NICs.
struct NetnsDaemon {
  std::string netns, address, device;
};
std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}
Result<std::vector<NetnsDaemon>> netns_daemons() {
  const std::string spec = env_or("HYPERLOOP_NETNS_DAEMONS", "-/127.0.0.11/soft,-/127.0.0.12/soft");
  std::vector<NetnsDaemon> out;
  std::istringstream is(spec);
  for (std::string item; std::getline(is, item, ',');) {
    const auto a = item.find('/'), b = item.find('/', a == std::string::npos ? a : a + 1);
    if (a == std::string::npos || b == std::string::npos || item.find('/', b + 1) != std::string::npos)
      return invalid_argument("HYPERLOOP_NETNS_DAEMONS item '" + item + "' is not NETNS/ADDRESS/DEVICE");
    out.push_back({item.substr(0, a), item.substr(a + 1, b - a - 1), item.substr(b + 1)});
    if (out.back().address.empty() || out.back().device.empty())
      return invalid_argument("HYPERLOOP_NETNS_DAEMONS item '" + item + "' lacks an address or a device");
  }
  if (out.size() < 2) return invalid_argument("HYPERLOOP_NETNS_DAEMONS names " + std::to_string(out.size()) +
                                              " daemons ('" + spec + "'); the test needs at least two");
  return out;
}

class TwoNamespacesTest : public DaemonFixture {};

TEST_F(TwoNamespacesTest, StoreOverDaemonsOnTwoDevicesBankTransfersThenSigkillAndRecover) {
  auto spec = netns_daemons();
  ASSERT_TRUE(spec.is_ok()) << describe(spec.status());
  std::string ip;
  for (const NetnsDaemon& nd : *spec)
    if (nd.netns != "-" && ip.empty()) {
      ip = find_executable("ip");
      ASSERT_FALSE(ip.empty()) << "HYPERLOOP_NETNS_DAEMONS names a namespace, and there is no 'ip' (iproute2)";
    }
  const auto where = [&](const NetnsDaemon& nd) {
    return "device " + nd.device + " on " + nd.address + (nd.netns == "-" ? "" : " in netns " + nd.netns);
  };
  for (size_t i = 0; i < spec->size(); ++i) {
    const NetnsDaemon& nd = (*spec)[i];
    DaemonSpec ds;
    ds.device = nd.device;
    ds.address = nd.address;
    // Fixed control ports: the store keeps its endpoints, and a restarted
    // daemon must come back on its own.
    ds.control_port = free_port_outside_ephemeral(nd.netns == "-" ? nd.address : "0.0.0.0");
    ASSERT_NE(ds.control_port, 0) << "no free port outside the ephemeral range";
    ds.tenants.push_back({kTxnTenant, txn::Store::region_bytes(bank_options(ForwardMode::kCpuForward)),
                          dir_.file("ns-r" + std::to_string(i) + ".pmem"), {}});
    std::vector<std::string> prefix;
    if (nd.netns != "-") prefix = {ip, "netns", "exec", nd.netns};
    Daemon& d = add_daemon(ds, prefix);
    watchdog_.phase("starting daemon " + d.name() + ": " + where(nd));
    ASSERT_TRUE(d.start()) << where(nd);  // checks the daemon's log: it opened that device
    std::printf("[          ] daemon %s: %s, control port %u\n", d.name().c_str(), where(nd).c_str(),
                unsigned(d.control_port()));
  }
  device_ = device_test::test_device_name();
  const std::string client_address = env_or("HYPERLOOP_NETNS_CLIENT_ADDRESS", "127.0.0.1");
  DAEMON_ASSERT_OK(init_client(client_address, kTxnAckTimeoutNs));
  std::printf("[          ] client: %s\n",
              device_.empty() ? ("soft NIC of a private fabric on " + client_address).c_str()
                              : ("device " + device_).c_str());

  txn::StoreOptions so = bank_options(ForwardMode::kCpuForward);
  watchdog_.phase("Store::connect");
  auto eps = endpoints();
  auto opened = txn::Store::connect(client_.nic(), eps, so);
  ASSERT_TRUE(opened.is_ok()) << describe(opened.status()) << daemon_logs();
  txn::Store& store = **opened;
  EXPECT_EQ(store.replicas(), spec->size());
  ASSERT_TRUE(fund(store).is_ok()) << daemon_logs();
  watchdog_.phase("transfers from two threads");
  Ledger ledger;
  ASSERT_NO_FATAL_FAILURE(bank_transfers(store, so, 2, 100, [this] { return daemon_logs(); }, &ledger));
  ASSERT_NO_FATAL_FAILURE(
      sigkill_and_recover(store, so, *daemons_.back(), watchdog_, [this] { return daemon_logs(); }, ledger));
}

}  // namespace
}  // namespace hyperloop::daemon_test
