// Fault injection for the deterministic executor (soft_rnic.h: ManualExecutor,
// FaultPlan, Fabric::set_link / set_link_faults / seed): seeded and
// reproducible; lossy, slow and cut links, NIC crashes and power failures at
// chosen or random steps. The project rule: nothing acknowledged is lost and
// nothing torn is ever visible. A failing seed is printed; HYPERLOOP_SEED=<s>
// replays it alone, HYPERLOOP_SEEDS=<n> sets how many seeds run.
#include <gtest/gtest.h>

#include <cstdlib>
#include <deque>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "fault_test_util.h"
#include "prim_test_util.h"
#include "soft_test_util.h"

namespace hyperloop::fault_test {
namespace {

using namespace ::hyperloop::soft_test;
using prim_test::Cluster;
using prim_test::ClusterOptions;
using prim_test::ForwardMode;
using prim_test::kBothModes;
using prim_test::Kind;
using prim_test::Model;
using prim_test::mode_name;
using prim_test::Op;
using prim_test::Workload;

constexpr uint64_t kAckTimeoutNs = 200'000;  // 2,000 steps of 100 ns
constexpr uint32_t kRetryCount = 7;          // QpAttr default
constexpr uint64_t kStepNs = 100;            // ManualExecutor default

::testing::AssertionResult IsChainFailure(const Status& s) {
  if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << s.to_string() << ", want Unavailable or DeadlineExceeded";
}

ClusterOptions fault_options(ForwardMode mode, uint64_t seed, uint64_t op_timeout_ns) {
  ClusterOptions o;
  o.mode = mode;
  o.replicas = 3;
  o.seed = seed;
  o.region_size = 16 << 10;
  o.slots = 32;
  o.rearm_batch = 8;
  o.staging_bytes = 64 << 10;
  o.op_timeout_ns = op_timeout_ns;
  o.nic.ack_timeout_ns = kAckTimeoutNs;
  return o;
}

uint64_t total_retransmits(const Cluster& c) {
  uint64_t r = c.client().stats().retransmits;
  for (uint32_t i = 0; i < c.n(); ++i) r += c.nic(i).stats().retransmits;
  return r;
}

// Every pair of the chain's NICs (client included) gets `f`.
void all_links(Cluster& c, soft::Fabric::LinkFaults f) {
  std::vector<soft::Nic*> nics{&c.client()};
  for (uint32_t i = 0; i < c.n(); ++i) nics.push_back(&c.nic(i));
  for (size_t a = 0; a < nics.size(); ++a)
    for (size_t b = a + 1; b < nics.size(); ++b) c.fabric().set_link_faults(*nics[a], *nics[b], f);
}

// Runs `count` operations of all kinds (prim_test::Workload), `window` in
// flight at a time, and checks each completion and every replica against
// the model m (what the regions held before, updated).
void run_mixed_workload(Cluster& c, Model& m, uint64_t seed, int count, int window) {
  Workload w(c.group(), m, seed);
  ASSERT_TRUE(IsOk(w.prepare()));
  std::mt19937_64 rng(seed);
  std::deque<Op> ops;
  std::deque<Workload::Expect> expects;
  auto settle_front = [&] {
    const Status st = c.group().wait(ops.front());
    ASSERT_TRUE(IsOk(st)) << "op #" << ops.front().sequence();
    EXPECT_TRUE(w.completed_as_expected(ops.front(), expects.front()));
    ops.pop_front();
    expects.pop_front();
  };
  for (int k = 0; k < count; ++k) {
    if (int(ops.size()) >= window) {
      ASSERT_NO_FATAL_FAILURE(settle_front());
    }
    ASSERT_TRUE(IsOk(w.issue(ops.emplace_back(), Kind(rng() % 4), expects.emplace_back())));
  }
  while (!ops.empty()) ASSERT_NO_FATAL_FAILURE(settle_front());
  EXPECT_FALSE(c.group().broken());
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

// =============================================================================================
// ManualExecutor::at_step
// =============================================================================================

TEST(ManualExecutorTest, AtStepRunsActionsExactlyBeforeTheGivenStep) {
  soft::ManualExecutor ex(1, kStepNs);
  std::vector<std::pair<std::string, uint64_t>> ran;  // (name, steps() when it ran)
  uint64_t now_at_5 = 0;
  ex.at_step(5, [&] {
    ran.emplace_back("a", ex.steps());
    now_at_5 = ex.now_ns();
  });
  ex.at_step(5, [&] { ran.emplace_back("b", ex.steps()); });  // same step: in the order added
  ex.at_step(3, [&] { ran.emplace_back("c", ex.steps()); });
  const uint64_t t0 = ex.now_ns();
  for (int k = 0; k < 5; ++k) ex.step();  // steps 0..4
  ASSERT_EQ(ran.size(), 1u) << "an action for step 5 ran early";
  EXPECT_EQ(ran[0], std::make_pair(std::string("c"), uint64_t(3)));
  ex.step();  // step 5: a and b first
  ASSERT_EQ(ran.size(), 3u);
  EXPECT_EQ(ran[1], std::make_pair(std::string("a"), uint64_t(5)));
  EXPECT_EQ(ran[2], std::make_pair(std::string("b"), uint64_t(5)));
  EXPECT_EQ(now_at_5, t0 + 5 * kStepNs) << "the action did not run before step 5 advanced the time";
  EXPECT_EQ(ex.steps(), 6u);
  // A step already taken: the action runs before the next step.
  ex.at_step(2, [&] { ran.emplace_back("late", ex.steps()); });
  EXPECT_EQ(ran.size(), 3u) << "at_step ran the action at once";
  ex.step();
  ASSERT_EQ(ran.size(), 4u);
  EXPECT_EQ(ran[3], std::make_pair(std::string("late"), uint64_t(6)));
}

// An action that crashes a NIC before step k: the NIC polled at step k and
// later does nothing, while the steps before ran normally.
TEST(ManualExecutorTest, ACrashPlannedAtAStepStopsTheNicFromThatStepOn) {
  TwoNodes t(3);
  Region src = t.a.alloc_pattern(64, kLocalWrite, 1);
  Region dst = t.b.alloc(64, kAll);
  HL_ASSERT_OK(post_write(*t.qa, src.sge(0, 64), dst.addr(), dst.rkey()));
  ASSERT_TRUE(t.poll_a());  // works before the crash
  const uint64_t at = t.ex.steps() + 10;
  soft::FaultPlan plan(t.fabric, t.ex);
  plan.crash(at, t.b.nic());
  for (uint64_t k = t.ex.steps(); k < at; ++k) {
    t.ex.step();
    EXPECT_FALSE(t.b.nic().crashed()) << "crashed before step " << at;
  }
  t.ex.step();
  EXPECT_TRUE(t.b.nic().crashed());
  const uint64_t received = t.b.nic().stats().packets_received;
  Region src2 = t.a.alloc_pattern(64, kLocalWrite, 2);
  HL_ASSERT_OK(post_write(*t.qa, src2.sge(0, 64), dst.addr(), dst.rkey()));
  run_steps(t.ex, 5000);
  EXPECT_EQ(t.b.nic().stats().packets_received, received) << "a crashed NIC took packets";
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 64)) << "a crashed NIC wrote memory";
}

// =============================================================================================
// Fault plans: seeded and reproducible
// =============================================================================================

// Four NICs on a fabric, on a ManualExecutor: enough to draw plans.
struct PlanBench {
  PlanBench() : ex(1) {
    for (int i = 0; i < 4; ++i) {
      soft::NicOptions o;
      o.name = "n" + std::to_string(i);
      nics.push_back(must(fabric.create_nic(o), "create_nic"));
      ptrs.push_back(nics.back().get());
      ex.add(*nics.back());
    }
  }
  std::string draw(uint64_t seed, size_t count = 6, size_t max_crashes = 1) {
    soft::FaultPlan plan(fabric, ex);
    plan.random(seed, 1000, 50'000, count, ptrs, max_crashes, [](size_t) {});
    return plan.describe();
  }
  soft::Fabric fabric;
  soft::ManualExecutor ex;
  std::vector<std::unique_ptr<soft::Nic>> nics;
  std::vector<soft::Nic*> ptrs;
};

TEST(FaultPlanTest, TheSameSeedDrawsTheSameLog) {
  PlanBench a, b;
  for (uint64_t seed : {1ull, 2ull, 0xdeadbeefull}) {
    const std::string log = a.draw(seed);
    EXPECT_FALSE(log.empty());
    EXPECT_EQ(log, a.draw(seed)) << "seed " << seed;
    EXPECT_EQ(log, b.draw(seed)) << "seed " << seed << " on another fabric with the same NIC names";
  }
}

TEST(FaultPlanTest, DifferentSeedsDrawDifferentPlans) {
  PlanBench bench;
  std::set<std::string> logs;
  for (uint64_t seed = 1; seed <= 20; ++seed) logs.insert(bench.draw(seed));
  EXPECT_EQ(logs.size(), 20u) << "two seeds drew the same plan";
}

TEST(FaultPlanTest, ARandomPlanCrashesAtMostMaxCrashesNicsAndSometimesPowerFails) {
  PlanBench bench;
  bool power_failures = false, crashes = false;
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    for (size_t max : {size_t(0), size_t(1), size_t(2)}) {
      const std::string log = bench.draw(seed, 12, max);
      size_t n = 0;
      for (size_t p = 0; (p = log.find(": crash ", p)) != std::string::npos; ++p) ++n, crashes = true;
      for (size_t p = 0; (p = log.find(": power failure", p)) != std::string::npos; ++p) ++n, power_failures = true;
      EXPECT_LE(n, max) << "seed " << seed << ":\n" << log;
    }
  }
  EXPECT_TRUE(crashes);
  EXPECT_TRUE(power_failures) << "the power_fail callback is never drawn";
}

// ---- a whole run under a random plan ----------------------------------------------------------

// What a run under a random plan did, for comparing two runs.
struct RunOutcome {
  std::string plan;
  uint64_t steps = 0;
  uint64_t now_ns = 0;
  std::vector<int> codes;  // per issued operation
  std::vector<std::vector<std::byte>> regions;
  uint64_t retransmits = 0;
  uint64_t acked = 0;
  int power_failed = 0;  // replicas that lost power
  bool broken = false;
  bool operator==(const RunOutcome&) const = default;
};

// One seed: a chain of 3 replicas over files, a random plan of link faults,
// cuts, crashes and power failures (FaultPlan::random over the client and
// the replica NICs), and a pipelined record workload with gFLUSHes. After the
// run, a replica that kept power holds every acknowledged gWRITE (or a later
// version); one that lost it holds every range an acknowledged gFLUSH
// covered; none holds a torn record.
void run_random_plan(ForwardMode mode, uint64_t seed, RunOutcome& out) {
  constexpr size_t kRegion = 16 << 10;
  constexpr size_t kRecords = kRegion / kRecord;
  constexpr int kOps = 100;
  constexpr uint64_t kFaultWindowSteps = 3500;  // about how long kOps take without a fault
  constexpr uint64_t kOpTimeoutNs = 2'000'000;
  TempDir dir;
  std::mt19937_64 rng(mix64(seed ^ 0x91A));
  std::unique_ptr<RecordWorkload> workload;  // its Ops outlive the Group
  auto ch = std::make_unique<PmemChain>(fault_options(mode, seed, kOpTimeoutNs), dir);
  Cluster& c = ch->cluster();
  c.fabric().seed(seed);
  workload = std::make_unique<RecordWorkload>(ch->group(), seed, kRecords);
  RecordWorkload& w = *workload;

  std::vector<bool> powered_off(c.n(), false);
  soft::FaultPlan plan(c.fabric(), c.ex());
  std::vector<soft::Nic*> nics{&c.client()};
  for (uint32_t i = 0; i < c.n(); ++i) nics.push_back(&c.nic(i));
  const uint64_t first = c.ex().steps();
  plan.random(seed, first, first + kFaultWindowSteps, 1 + rng() % 4, nics, 1, [&](size_t i) {
    if (i == 0) return c.client().crash();  // the client has no persistent memory
    c.host(uint32_t(i - 1)).power_fail();
    c.nic(uint32_t(i - 1)).crash();
    powered_off[i - 1] = true;
  });
  out.plan = plan.describe();
  SCOPED_TRACE(replay_hint(seed) + ", mode " + mode_name(mode) + ", plan:\n" + out.plan);

  for (int k = 0; k < kOps; ++k) {
    const Status s = w.random(c.now_ns());
    out.codes.push_back(int(s.code()));
    if (!s.is_ok()) {
      EXPECT_TRUE(IsChainFailure(s)) << "refused: " << s.to_string();
      break;
    }
    c.turns(rng() % 64);
    ch->group().poll();
    w.retire();
  }
  for (auto& p : w.pending()) {
    (void)ch->group().wait(p.op, 4 * kOpTimeoutNs);
    ASSERT_TRUE(p.op.done()) << "op #" << p.op.sequence() << " neither acknowledged nor failed";
    out.codes.push_back(int(p.op.status().code()));
    if (!p.op.status().is_ok()) {
      EXPECT_TRUE(IsChainFailure(p.op.status())) << "op #" << p.op.sequence();
    }
  }
  w.retire();
  // Let every planned fault (and heal) happen, so they all took effect.
  c.turns(60'000);
  for (uint32_t i = 0; i < c.n(); ++i) {
    out.regions.push_back(ch->peek(i));
    const std::string who = "replica " + std::to_string(i) + (powered_off[i] ? " (lost power)" : " (kept power)");
    const RecordHistory& h = powered_off[i] ? w.durable() : w.acked();
    EXPECT_TRUE(h.check(out.regions.back().data(), kRegion, who));
  }
  out.steps = c.ex().steps();
  out.now_ns = c.ex().now_ns();
  out.retransmits = total_retransmits(c);
  out.acked = w.acked_writes() + w.acked_flushes();
  for (bool off : powered_off) out.power_failed += off;
  out.broken = ch->group().broken();
}

class RandomPlanTest : public ::testing::TestWithParam<ForwardMode> {};

TEST_P(RandomPlanTest, TheSameSeedReplaysTheSameRun) {
  for (uint64_t seed : {11ull, 12ull, 13ull}) {
    RunOutcome a, b;
    ASSERT_NO_FATAL_FAILURE(run_random_plan(GetParam(), seed, a));
    ASSERT_NO_FATAL_FAILURE(run_random_plan(GetParam(), seed, b));
    EXPECT_EQ(a.plan, b.plan) << replay_hint(seed);
    EXPECT_EQ(a.steps, b.steps) << replay_hint(seed);
    EXPECT_EQ(a.now_ns, b.now_ns) << replay_hint(seed);
    EXPECT_EQ(a.codes, b.codes) << replay_hint(seed);
    EXPECT_EQ(a.retransmits, b.retransmits) << replay_hint(seed);
    EXPECT_EQ(a.acked, b.acked) << replay_hint(seed);
    EXPECT_EQ(a.power_failed, b.power_failed) << replay_hint(seed);
    EXPECT_EQ(a.broken, b.broken) << replay_hint(seed);
    EXPECT_TRUE(a.regions == b.regions) << replay_hint(seed) << ": replica contents differ";
  }
}

TEST_P(RandomPlanTest, RandomFaultsNeverLoseAcknowledgedDataNorTearAny) {
  const bool replay = std::getenv("HYPERLOOP_SEED") != nullptr;
  uint64_t acked = 0, runs = 0, power_failures = 0, broken = 0;
  std::set<std::string> plans;
  for (uint64_t seed : seeds_to_run(0x7000 + 0x100 * uint64_t(GetParam()), 30)) {
    RunOutcome out;
    run_random_plan(GetParam(), seed, out);
    ++runs;
    acked += out.acked;
    power_failures += out.power_failed > 0;
    broken += out.broken;
    plans.insert(out.plan);
    if (HasFailure()) {
      ADD_FAILURE() << "first failing " << replay_hint(seed);
      break;
    }
  }
  if (!replay && !HasFailure()) {
    EXPECT_GT(acked, 10 * runs) << "too little was acknowledged to mean anything";
    EXPECT_EQ(plans.size(), runs) << "seeds drew the same plans";
    // The plans hit: some runs lost a replica's power, some broke the chain.
    EXPECT_GT(power_failures, 0u);
    EXPECT_GT(broken, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, RandomPlanTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& info) { return mode_name(info.param); });

// =============================================================================================
// Link faults between chain members
// =============================================================================================

class LinkFaultTest : public ::testing::TestWithParam<ForwardMode> {
 protected:
  ForwardMode mode() const { return GetParam(); }
  uint64_t seed(uint64_t base) const { return base + (mode() == ForwardMode::kOffload ? 0 : 1); }
};

// Every packet between any two chain NICs is dropped with probability 0.2;
// RC retransmission delivers everything, in order, exactly once.
TEST_P(LinkFaultTest, LossyLinksStillCompleteEveryOperationWithCorrectDataOnEveryReplica) {
  const ClusterOptions o = fault_options(mode(), seed(0x1055), 20'000'000);
  SCOPED_TRACE("seed " + std::to_string(o.seed));
  Cluster c(o);
  c.fabric().seed(o.seed);
  all_links(c, {.drop = 0.2, .delay_ns = 0});
  Model m(c.n(), o.region_size);
  ASSERT_NO_FATAL_FAILURE(run_mixed_workload(c, m, o.seed, 120, 16));
  EXPECT_GT(total_retransmits(c), 0u) << "nothing was dropped: the test proves nothing";
  uint64_t dropped = 0;
  for (uint32_t i = 0; i < c.n(); ++i) dropped += c.nic(i).stats().packets_dropped;
  dropped += c.client().stats().packets_dropped;
  EXPECT_GT(dropped, 0u);
}

// Every link delays packets by 30 us: operations are slower but complete in
// issue order with the right data; overlapping gWRITEs end with the last one.
TEST_P(LinkFaultTest, DelayedLinksKeepOrder) {
  constexpr uint64_t kDelayNs = 30'000;
  const ClusterOptions o = fault_options(mode(), seed(0xDE1A), 20'000'000);
  SCOPED_TRACE("seed " + std::to_string(o.seed));
  Cluster c(o);
  all_links(c, {.drop = 0, .delay_ns = kDelayNs});
  // One operation crosses 4 links: client -> r0 -> r1 -> r2 -> client.
  const uint64_t t0 = c.now_ns();
  Op first;
  HL_ASSERT_OK(c.group().write(first, 0, pattern(8, 1)));
  HL_ASSERT_OK(c.group().wait(first));
  EXPECT_GE(c.now_ns() - t0, 4 * kDelayNs) << "the links were not slow";
  // 24 overlapping gWRITEs in flight at once: each completes after the one before.
  std::deque<Op> ops;
  std::vector<std::byte> last;
  for (uint32_t k = 0; k < 24; ++k) {
    last = pattern(256 + 8 * k, 100 + k);
    HL_ASSERT_OK(c.group().write(ops.emplace_back(), 64 + 4 * k, last));
  }
  Model m(c.n(), o.region_size);
  m.write(0, pattern(8, 1));
  for (uint32_t k = 0; k < 24; ++k) m.write(64 + 4 * k, pattern(256 + 8 * k, 100 + k));
  uint64_t completed_before = c.group().completed();
  for (Op& op : ops) {
    HL_ASSERT_OK(c.group().wait(op));
    EXPECT_GT(c.group().completed(), completed_before);
    completed_before = c.group().completed();
  }
  for (size_t k = 1; k < ops.size(); ++k) EXPECT_LT(ops[k - 1].sequence(), ops[k].sequence());
  EXPECT_TRUE(c.regions_equal(m));
  ASSERT_NO_FATAL_FAILURE(run_mixed_workload(c, m, o.seed, 60, 16));
}

// The link between r0 and r1 is cut at a chosen step and healed well before
// ack_timeout * retry_count: retransmission resumes and every operation
// completes, none fails, the data is right everywhere.
TEST_P(LinkFaultTest, ACutLinkHealedBeforeRetriesRunOutLetsOperationsComplete) {
  const ClusterOptions o = fault_options(mode(), seed(0xC07), 20'000'000);
  SCOPED_TRACE("seed " + std::to_string(o.seed));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const uint64_t cut_steps = kAckTimeoutNs * kRetryCount / kStepNs / 3;  // a third of the retry budget
  soft::FaultPlan plan(c.fabric(), c.ex());
  const uint64_t cut_at = c.ex().steps() + 50;
  plan.cut(cut_at, c.nic(0), c.nic(1));
  plan.heal(cut_at + cut_steps, c.nic(0), c.nic(1));
  std::deque<Op> ops;
  for (uint32_t k = 0; k < 20; ++k) {
    const auto bytes = pattern(128, 7 + k);
    HL_ASSERT_OK(c.group().write(ops.emplace_back(), 96 * k, bytes));
    m.write(96 * k, bytes);
  }
  for (Op& op : ops) HL_ASSERT_OK(c.group().wait(op)) << "op #" << op.sequence() << "\n" << plan.describe();
  EXPECT_GT(c.ex().steps(), cut_at + cut_steps) << "the operations did not wait for the heal";
  EXPECT_GT(c.nic(0).stats().retransmits, 0u);
  EXPECT_FALSE(c.group().broken());
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(c.replicas_identical());
}

INSTANTIATE_TEST_SUITE_P(Modes, LinkFaultTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& info) { return mode_name(info.param); });

// A delayed link between two NICs, no chain: 32 WRITEs to one word complete
// in order and the word ends with the last value.
TEST(SoftLinkFaultTest, ADelayedLinkDeliversPacketsInOrder) {
  TwoNodes t(9);
  constexpr uint64_t kDelayNs = 10'000;
  t.fabric.set_link_faults(t.a.nic(), t.b.nic(), {.drop = 0, .delay_ns = kDelayNs});
  Region src = t.a.alloc(32 * 8, kLocalWrite);
  Region dst = t.b.alloc(8, kAll);
  for (uint32_t k = 0; k < 32; ++k) src.set_u64(8 * k, 1000 + k);
  const uint64_t t0 = t.ex.now_ns();
  for (uint32_t k = 0; k < 32; ++k) HL_ASSERT_OK(post_write(*t.qa, src.sge(8 * k, 8), dst.addr(), dst.rkey(), kSig, k));
  const auto wcs = poll_n(t.a.cq(), t.ex, 32);
  ASSERT_EQ(wcs.size(), 32u);
  for (uint32_t k = 0; k < 32; ++k) {
    EXPECT_EQ(wcs[k].wr_id, k);
    EXPECT_EQ(wcs[k].status, WcStatus::kSuccess) << describe(wcs[k]);
  }
  EXPECT_GE(t.ex.now_ns() - t0, 2 * kDelayNs) << "the link was not slow";
  EXPECT_EQ(dst.u64(0), 1031u);
}

// =============================================================================================
// A crash at a chosen step
// =============================================================================================

enum class Victim { kHead, kMiddle, kTail };
const char* victim_name(Victim v) {
  switch (v) {
    case Victim::kHead: return "Head";
    case Victim::kMiddle: return "Middle";
    case Victim::kTail: return "Tail";
  }
  return "?";
}

class CrashTest : public ::testing::TestWithParam<std::tuple<ForwardMode, Victim>> {};

// A replica NIC crashes at a chosen step while gWRITEs are in flight. Every
// pending operation fails with kUnavailable or kDeadlineExceeded by its
// op_timeout (virtual time), and every replica still holds every acknowledged
// gWRITE (or a later version of those records), with no torn record.
TEST_P(CrashTest, PendingOperationsFailWithinOpTimeoutAndNothingAcknowledgedIsLost) {
  const auto [mode, victim] = GetParam();
  constexpr uint64_t kOpTimeoutNs = 3'000'000;
  constexpr uint64_t kSlackNs = 100'000;
  constexpr size_t kRecords = (16 << 10) / kRecord;
  const uint64_t seed = 0xC4A5 + 2 * uint64_t(victim) + (mode == ForwardMode::kOffload ? 0 : 1);
  SCOPED_TRACE(std::string("seed ") + std::to_string(seed) + ", crash of the " + victim_name(victim));
  std::unique_ptr<RecordWorkload> workload;  // its Ops outlive the Group
  Cluster c(fault_options(mode, seed, kOpTimeoutNs));
  workload = std::make_unique<RecordWorkload>(c.group(), seed, kRecords);
  RecordWorkload& w = *workload;
  soft::Nic& nic = c.nic(uint32_t(victim));  // head = r0, middle = r1, tail = r2

  bool crashed = false;
  soft::FaultPlan plan(c.fabric(), c.ex());
  const uint64_t crash_at = c.ex().steps() + 700;
  plan.crash(crash_at, nic);
  plan.custom(crash_at, "note the crash", [&] { crashed = true; });
  std::mt19937_64 rng(seed);
  uint64_t acked_before_crash = 0;
  while (!crashed) {
    const uint64_t count = 1 + rng() % 40;
    const Status s = w.write(rng() % (kRecords - count + 1), count, c.now_ns());
    if (!s.is_ok()) {
      ASSERT_TRUE(crashed) << "refused before the crash: " << s.to_string();
      EXPECT_TRUE(IsChainFailure(s));
      break;
    }
    c.turns(rng() % 40);
    c.group().poll();
    w.retire();
    if (!crashed) acked_before_crash = w.acked_writes();
  }
  ASSERT_GT(acked_before_crash, 3u) << "the crash came before anything was acknowledged";
  ASSERT_FALSE(w.pending().empty()) << "nothing was in flight at the crash";
  int failed = 0;
  for (auto& p : w.pending()) {
    const Status s = c.group().wait(p.op, 20 * kOpTimeoutNs);
    ASSERT_TRUE(p.op.done()) << "op #" << p.op.sequence() << " still pending: " << s.to_string();
    if (!s.is_ok()) {
      ++failed;
      EXPECT_TRUE(IsChainFailure(s)) << "op #" << p.op.sequence();
      EXPECT_LE(c.now_ns(), p.issued_ns + kOpTimeoutNs + kSlackNs)
          << "op #" << p.op.sequence() << " failed " << c.now_ns() - p.issued_ns << " ns after it was issued";
    }
  }
  EXPECT_GT(failed, 0);
  w.retire();
  EXPECT_TRUE(c.group().broken());
  for (uint32_t i = 0; i < c.n(); ++i) {
    std::vector<std::byte> got(c.options().region_size);
    HL_ASSERT_OK(c.host(i).peek(prim_test::kTenant, 0, got));
    const std::string who = "replica " + std::to_string(i) + (&c.nic(i) == &nic ? " (crashed NIC)" : " (survivor)");
    EXPECT_TRUE(w.acked().check(got.data(), got.size(), who));
  }
}

INSTANTIATE_TEST_SUITE_P(Faults, CrashTest,
                         ::testing::Combine(::testing::ValuesIn(kBothModes),
                                            ::testing::Values(Victim::kHead, Victim::kMiddle, Victim::kTail)),
                         [](const auto& info) {
                           return mode_name(std::get<0>(info.param)) + "_" + victim_name(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace hyperloop::fault_test
