// Proof that replica CPUs are off the critical path in offload mode.
//
// After setup every replica's application threads (its agent, the only one)
// are frozen. The slots armed at setup still carry as many operations as the
// rings hold, of every kind, to correct completion: no replica application
// thread makes a single data-path call on its NIC meanwhile. Only the next
// operation, which needs a re-armed slot, waits for the agents. CPU
// forwarding, the baseline, is the opposite: with its forwarders frozen not
// even one operation completes.
//
// Real threads (a SingleThreadExecutor for the NICs, agent threads), plus a
// deterministic variant on the ManualExecutor where agent turns never run.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <string>
#include <vector>

#include "prim_test_util.h"

namespace hyperloop::prim_test {
namespace {

constexpr uint32_t kSlots = 64;
constexpr uint64_t kRealTimeout = 20'000'000'000;  // op_timeout with real threads: generous under sanitizers

// How long the tests look at a frozen chain for an operation that must not
// complete. It only needs to be long enough for the NICs to have carried the
// operation if they could (microseconds); a slow machine can only make the
// check easier to pass, never fail it wrongly, because the operation cannot
// complete without a replica thread: it fails only if it DOES complete.
constexpr auto kFrozenLook = std::chrono::milliseconds(200);

struct Snapshot {
  std::vector<uint64_t> app_calls, rearmed, forwarded, cpu_ns;
};
Snapshot snapshot(const Cluster& c) {
  Snapshot s;
  for (uint32_t i = 0; i < c.n(); ++i) {
    s.app_calls.push_back(c.nic(i).stats().app_calls);
    s.rearmed.push_back(c.host(i).slots_rearmed());
    s.forwarded.push_back(c.host(i).ops_forwarded());
    s.cpu_ns.push_back(c.host(i).agent_cpu_ns());
  }
  return s;
}

ClusterOptions threaded(ForwardMode mode) {
  ClusterOptions o;
  o.mode = mode;
  o.replicas = 3;
  o.drive = Drive::kThreads;
  o.slots = kSlots;
  o.rearm_batch = 16;
  o.op_timeout_ns = kRealTimeout;
  return o;
}

// Polls `pred` (real time) for up to 10 s.
template <typename Pred>
bool eventually(Pred pred) {
  const uint64_t end = monotonic_ns() + 10'000'000'000;
  while (!pred()) {
    if (monotonic_ns() > end) return false;
    std::this_thread::yield();
  }
  return true;
}

// Sets up an offload chain, fills the memcpy source zone, lets the agents
// re-arm that operation's slot, then freezes every replica: exactly kSlots
// armed slots are free.
class FrozenOffloadChain : public ::testing::Test {
 protected:
  static ClusterOptions options() {
    ClusterOptions o = threaded(ForwardMode::kOffload);
    o.rearm_batch = 1;  // the agents re-arm the setup's one used slot at once
    return o;
  }
  FrozenOffloadChain() : c_(options()), m_(c_.n(), c_.options().region_size), w_(g(), m_, 7) {
    must(w_.prepare(), "prepare");
    for (uint32_t i = 0; i < c_.n(); ++i)
      if (!eventually([&] { return c_.host(i).slots_rearmed() == g().completed(); }))
        throw std::runtime_error("replica " + std::to_string(i) + " did not re-arm the setup's slot");
    for (uint32_t i = 0; i < c_.n(); ++i) c_.host(i).freeze();
    frozen_ = snapshot(c_);
  }
  ~FrozenOffloadChain() override {
    for (uint32_t i = 0; i < c_.n(); ++i) c_.host(i).thaw();
  }
  Group& g() { return c_.group(); }

  // Issues kSlots operations, a quarter of each kind, interleaved, and waits
  // for all of them; checks every completion and every replica's region.
  void run_the_armed_slots() {
    std::deque<Op> ops;
    std::vector<Workload::Expect> expect(kSlots);
    for (uint32_t k = 0; k < kSlots; ++k)
      ASSERT_TRUE(IsOk(w_.issue(ops.emplace_back(), Kind(k % 4), expect[k]))) << kind_name(Kind(k % 4)) << " " << k;
    for (uint32_t k = 0; k < kSlots; ++k) {
      ASSERT_TRUE(IsOk(g().wait(ops[k]))) << kind_name(expect[k].kind) << " " << k;
      EXPECT_TRUE(w_.completed_as_expected(ops[k], expect[k]));
    }
    EXPECT_TRUE(c_.regions_equal(m_));
    EXPECT_TRUE(Cluster::reads_equal(g(), m_));
  }

  Cluster c_;
  Model m_;
  Workload w_;
  Snapshot frozen_;
};

TEST_F(FrozenOffloadChain, ArmedSlotsCarryOperationsOfEveryKindWithEveryReplicaFrozen) {
  ASSERT_NO_FATAL_FAILURE(run_the_armed_slots());
  EXPECT_EQ(g().completed(), 1u + kSlots);
  const Snapshot after = snapshot(c_);
  for (uint32_t i = 0; i < c_.n(); ++i) {
    SCOPED_TRACE("replica " + std::to_string(i));
    // No replica application thread touched its NIC: the NICs did it all.
    EXPECT_EQ(after.app_calls[i], frozen_.app_calls[i]);
    EXPECT_EQ(after.rearmed[i], frozen_.rearmed[i]);
    EXPECT_EQ(after.forwarded[i], 0u);
    EXPECT_EQ(after.cpu_ns[i], frozen_.cpu_ns[i]);
  }
}

// The armed slots used up, one operation more waits (backpressure) until the
// agents re-arm. It is issued from a helper thread, since issuing is what
// blocks: the client never sends into a slot that is not armed.
TEST_F(FrozenOffloadChain, OneOperationBeyondTheArmedSlotsWaitsUntilTheReplicasThaw) {
  ASSERT_NO_FATAL_FAILURE(run_the_armed_slots());
  Op extra;
  const auto bytes = pattern(777, 99);
  auto issued = std::async(std::launch::async, [&] { return g().write(extra, 100, bytes); });
  ASSERT_EQ(issued.wait_for(kFrozenLook), std::future_status::timeout) << "issued with every replica frozen";
  // (Not issued yet: the Op is still the never-issued one, which reads as
  // done with kFailedPrecondition; its status is read only after write() returns.)
  const Snapshot still = snapshot(c_);
  for (uint32_t i = 0; i < c_.n(); ++i) EXPECT_EQ(still.app_calls[i], frozen_.app_calls[i]) << "replica " << i;

  for (uint32_t i = 0; i < c_.n(); ++i) c_.host(i).thaw();
  ASSERT_TRUE(IsOk(issued.get()));
  ASSERT_TRUE(IsOk(g().wait(extra)));
  m_.write(100, bytes);
  EXPECT_TRUE(c_.regions_equal(m_));
  EXPECT_TRUE(Cluster::reads_equal(g(), m_));
  for (uint32_t i = 0; i < c_.n(); ++i) {
    // The agents re-armed the used slots once thawed: that is all they do.
    EXPECT_GT(c_.host(i).slots_rearmed(), frozen_.rearmed[i]) << "replica " << i;
    EXPECT_EQ(c_.host(i).ops_forwarded(), 0u) << "replica " << i;
  }
}

// The baseline: with the forwarders frozen, one operation cannot complete;
// thawed, it does, and each replica's agent forwarded it.
TEST(FrozenCpuForwardChain, NoOperationCompletesUntilTheForwardersThaw) {
  Cluster c(threaded(ForwardMode::kCpuForward));
  Model m(c.n(), c.options().region_size);
  Op first;
  const auto a = pattern(512, 1);
  ASSERT_TRUE(IsOk(c.group().write(first, 0, a)));
  m.write(0, a);
  ASSERT_TRUE(IsOk(c.group().wait(first)));
  for (uint32_t i = 0; i < c.n(); ++i) EXPECT_EQ(c.host(i).ops_forwarded(), 1u) << "replica " << i;

  for (uint32_t i = 0; i < c.n(); ++i) c.host(i).freeze();
  Op op;
  const auto b = pattern(512, 2);
  ASSERT_TRUE(IsOk(c.group().write(op, 1024, b)));  // a slot is armed: it is sent
  m.write(1024, b);
  const uint64_t look_ns = std::chrono::nanoseconds(kFrozenLook).count();
  EXPECT_EQ(c.group().wait(op, look_ns).code(), StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(op.done());
  for (uint32_t i = 0; i < c.n(); ++i) EXPECT_EQ(c.host(i).ops_forwarded(), 1u) << "replica " << i;

  for (uint32_t i = 0; i < c.n(); ++i) c.host(i).thaw();
  ASSERT_TRUE(IsOk(c.group().wait(op)));
  for (uint32_t i = 0; i < c.n(); ++i) EXPECT_EQ(c.host(i).ops_forwarded(), 2u) << "replica " << i;
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

// The agents re-arm in the background while the NICs run: over a long run
// with few slots and small batches every slot is re-armed many times, each
// time racing the NIC that completes the slot, and the client never starves.
TEST(OffloadAgents, ReArmingKeepsUpWithALongRunOfOperations) {
  ClusterOptions o = threaded(ForwardMode::kOffload);
  o.slots = 16;
  o.rearm_batch = 2;
  o.op_timeout_ns = 5'000'000'000;
  Cluster c(o);
  Model m(c.n(), o.region_size);
  constexpr int kOps = 10000, kWindow = 12;
  std::deque<Op> ops(kWindow);
  std::vector<std::vector<std::byte>> sent(kWindow);
  for (int k = 0; k < kOps; ++k) {
    Op& op = ops[k % kWindow];
    if (k >= kWindow) {
      ASSERT_TRUE(IsOk(c.group().wait(op))) << "op " << k - kWindow;
    }
    sent[k % kWindow] = pattern(8 + k % 56, k);
    const uint64_t off = 64 * (k % 512);
    ASSERT_TRUE(IsOk(c.group().write(op, off, sent[k % kWindow]))) << "op " << k;
    m.write(off, sent[k % kWindow]);
  }
  for (Op& op : ops) ASSERT_TRUE(IsOk(c.group().wait(op)));
  EXPECT_EQ(c.group().completed(), uint64_t(kOps));
  EXPECT_FALSE(c.group().broken());
  EXPECT_TRUE(c.regions_equal(m));
  for (uint32_t i = 0; i < c.n(); ++i)
    EXPECT_GE(c.host(i).slots_rearmed(), uint64_t(kOps - o.slots)) << "replica " << i;
}

// ---- deterministic: agent turns never run ---------------------------------------------------
constexpr uint64_t kOpTimeoutNs = 5'000'000;  // virtual

ClusterOptions manual_without_agents(ForwardMode mode, uint64_t seed) {
  ClusterOptions o;
  o.mode = mode;
  o.replicas = 3;
  o.seed = seed;
  o.slots = 32;
  o.rearm_batch = 8;
  o.op_timeout_ns = kOpTimeoutNs;
  return o;
}

// The slots armed at setup carry exactly `slots` operations with no agent turn
// at all; the next issue is refused with kDeadlineExceeded after op_timeout
// (virtual) without breaking the group; with agent turns back it completes.
TEST(OffloadWithoutAgentTurns, ExactlyTheArmedSlotsCompleteThenIssueWaitsForReArming) {
  const ClusterOptions o = manual_without_agents(ForwardMode::kOffload, 0xa11);
  SCOPED_TRACE("seed=" + std::to_string(o.seed));
  Cluster c(o);
  c.set_agents_run(false);
  const Snapshot before = snapshot(c);
  Model m(c.n(), o.region_size);
  Workload w(c.group(), m, o.seed);
  ASSERT_TRUE(IsOk(w.prepare()));  // uses one armed slot
  std::deque<Op> ops;
  std::vector<Workload::Expect> expect(o.slots - 1);
  for (uint32_t k = 0; k + 1 < o.slots; ++k) ASSERT_TRUE(IsOk(w.issue(ops.emplace_back(), Kind(k % 4), expect[k])));
  for (uint32_t k = 0; k + 1 < o.slots; ++k) {
    ASSERT_TRUE(IsOk(c.group().wait(ops[k])));
    EXPECT_TRUE(w.completed_as_expected(ops[k], expect[k]));
  }
  EXPECT_TRUE(c.regions_equal(m));
  for (uint32_t i = 0; i < c.n(); ++i) {
    EXPECT_EQ(c.nic(i).stats().app_calls, before.app_calls[i]) << "replica " << i;
    EXPECT_EQ(c.host(i).slots_rearmed(), 0u) << "replica " << i;
  }

  Op extra;
  const auto bytes = pattern(64, 5);
  const uint64_t t0 = c.now_ns();
  EXPECT_EQ(c.group().write(extra, 0, bytes).code(), StatusCode::kDeadlineExceeded);
  EXPECT_GE(c.now_ns() - t0, kOpTimeoutNs);
  EXPECT_LE(c.now_ns() - t0, kOpTimeoutNs + 1'000'000);
  EXPECT_FALSE(c.group().broken());

  c.set_agents_run(true);
  ASSERT_TRUE(IsOk(c.group().write(extra, 0, bytes)));
  m.write(0, bytes);
  ASSERT_TRUE(IsOk(c.group().wait(extra)));
  EXPECT_TRUE(c.regions_equal(m));
  for (uint32_t i = 0; i < c.n(); ++i) EXPECT_GT(c.host(i).slots_rearmed(), 0u) << "replica " << i;
}

// CPU forwarding with no agent turn: the first operation fails within
// op_timeout (virtual) and the group is broken.
TEST(CpuForwardWithoutAgentTurns, TheFirstOperationFailsWithinOpTimeout) {
  const ClusterOptions o = manual_without_agents(ForwardMode::kCpuForward, 0xa12);
  SCOPED_TRACE("seed=" + std::to_string(o.seed));
  Cluster c(o);
  c.set_agents_run(false);
  Op op;
  const auto bytes = pattern(64, 5);
  const uint64_t t0 = c.now_ns();
  ASSERT_TRUE(IsOk(c.group().write(op, 0, bytes)));
  EXPECT_EQ(c.group().wait(op, 20 * kOpTimeoutNs).code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(op.done());
  EXPECT_LE(c.now_ns() - t0, kOpTimeoutNs + 1'000'000);
  EXPECT_TRUE(c.group().broken());
  for (uint32_t i = 0; i < c.n(); ++i) EXPECT_EQ(c.host(i).ops_forwarded(), 0u);
  std::vector<std::byte> got(64);
  ASSERT_TRUE(IsOk(c.host(1).peek(kTenant, 0, got)));
  EXPECT_TRUE(soft_test::AllBytesAre(got.data(), got.size(), 0)) << "replica 1 changed with no forwarder";
}

}  // namespace
}  // namespace hyperloop::prim_test
