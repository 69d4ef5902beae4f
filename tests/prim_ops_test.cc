// Correctness of the four group operations: gWRITE, gCAS, gMEMCPY, gFLUSH, in
// both forwarding modes, for chains of 1 to 7 replicas, from 1 byte to the
// whole region, many operations in flight. Every replica's region is compared
// byte for byte with a shadow model, read by the replica's CPU and over the
// client's RDMA READ path.
//
// Manually driven tests are deterministic: the seed is in each test's trace.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "prim_test_util.h"

namespace hyperloop::prim_test {
namespace {

constexpr uint64_t kSeed = 0x9e3779b97f4a7c15;

std::string trace(const ClusterOptions& o) {
  return "seed=" + std::to_string(o.seed) + " mode=" + mode_name(o.mode) + " replicas=" + std::to_string(o.replicas);
}

// Waits for every op in order; fails the test on the first that does not complete OK.
void wait_all(Group& g, std::deque<Op>& ops) {
  for (Op& op : ops) ASSERT_TRUE(IsOk(g.wait(op))) << "op #" << op.sequence();
}

// ---- parameterized by mode and chain length ----------------------------------------------------
class ChainTest : public ::testing::TestWithParam<std::tuple<ForwardMode, uint32_t>> {
 protected:
  ForwardMode mode() const { return std::get<0>(GetParam()); }
  uint32_t replicas() const { return std::get<1>(GetParam()); }
  ClusterOptions options() const {
    ClusterOptions o;
    o.mode = mode();
    o.replicas = replicas();
    o.seed = kSeed + replicas() * 2 + (mode() == ForwardMode::kOffload ? 0 : 1);
    return o;
  }
};

// gWRITE of 1, 7, 8, 63, 64, 4096 and 65536 bytes and of the whole region, at
// the start, at odd offsets and flush with the end of the region.
TEST_P(ChainTest, WriteOfEverySizeLandsOnEveryReplica) {
  ClusterOptions o = options();
  o.region_size = 256 << 10;
  o.staging_bytes = 256 << 10;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const size_t r = o.region_size;
  uint32_t seed = 1;
  for (size_t len : {r, size_t{1}, size_t{7}, size_t{8}, size_t{63}, size_t{64}, size_t{4096}, size_t{65536}}) {
    SCOPED_TRACE("length " + std::to_string(len));
    std::deque<Op> ops;
    for (uint64_t off : {uint64_t{0}, uint64_t(len * 37 + 5) % (r - len + 1), uint64_t(r - len)}) {
      const auto bytes = pattern(len, seed++);
      ASSERT_TRUE(IsOk(c.group().write(ops.emplace_back(), off, bytes))) << "offset " << off;
      m.write(off, bytes);
    }
    wait_all(c.group(), ops);
    ASSERT_TRUE(c.regions_equal(m));
  }
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
  EXPECT_EQ(c.group().completed(), 24u);
  EXPECT_EQ(c.group().in_flight(), 0u);
}

// 200 operations of all four kinds issued back to back over 64 slots: the
// client runs out of armed slots and waits for re-arming (credit) many times.
TEST_P(ChainTest, PipelinedOpsOfAllKindsMatchTheModelOnEveryReplica) {
  ClusterOptions o = options();
  o.slots = 64;
  o.rearm_batch = 16;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  Workload w(c.group(), m, o.seed);
  ASSERT_TRUE(IsOk(w.prepare()));

  constexpr int kOps = 200;
  std::deque<Op> ops;
  std::vector<Workload::Expect> expect(kOps);
  for (int k = 0; k < kOps; ++k) {
    const Kind kind = Kind(w.below(4));
    ASSERT_TRUE(IsOk(w.issue(ops.emplace_back(), kind, expect[k]))) << kind_name(kind) << " #" << k;
  }
  EXPECT_GT(c.group().in_flight(), 0u);
  wait_all(c.group(), ops);
  for (int k = 0; k < kOps; ++k) ASSERT_TRUE(w.completed_as_expected(ops[k], expect[k])) << "op " << k;
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
  EXPECT_EQ(c.group().completed(), uint64_t(kOps) + 1);
  for (uint32_t i = 0; i < c.n(); ++i) {
    if (mode() == ForwardMode::kOffload) {
      // More operations than slots: every replica re-armed used slots.
      EXPECT_GE(c.host(i).slots_rearmed(), uint64_t(kOps + 1 - o.slots)) << "replica " << i;
      EXPECT_EQ(c.host(i).ops_forwarded(), 0u) << "replica " << i;
    } else {
      EXPECT_EQ(c.host(i).ops_forwarded(), uint64_t(kOps) + 1) << "replica " << i;
      EXPECT_EQ(c.host(i).slots_rearmed(), 0u) << "replica " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Chains, ChainTest,
                         ::testing::Combine(::testing::ValuesIn(kBothModes), ::testing::Range(1u, 8u)),
                         [](const auto& info) {
                           return mode_name(std::get<0>(info.param)) + "_" + std::to_string(std::get<1>(info.param)) +
                                  "replicas";
                         });

// ---- parameterized by mode ---------------------------------------------------------------------
class ModeTest : public ::testing::TestWithParam<ForwardMode> {
 protected:
  ClusterOptions options(uint32_t replicas) const {
    ClusterOptions o;
    o.mode = GetParam();
    o.replicas = replicas;
    o.seed = kSeed ^ (replicas * 1000 + (GetParam() == ForwardMode::kOffload ? 0 : 1));
    return o;
  }
  static uint32_t all(uint32_t n) { return (1u << n) - 1; }
};

TEST_P(ModeTest, CasWithMatchingCompareSwapsOnEveryReplicaAndReturnsOldValues) {
  const ClusterOptions o = options(3);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const uint64_t v = 0x1122334455667788;
  Op w;
  ASSERT_TRUE(IsOk(c.group().write(w, 64, bytes_of(v))));
  m.write(64, bytes_of(v));
  Op op;
  ASSERT_TRUE(IsOk(c.group().cas(op, 64, v, 77, all(3))));
  ASSERT_TRUE(IsOk(c.group().wait(op)));
  EXPECT_TRUE(OldValuesAre(op, m.cas(64, v, 77, all(3)), 3));
  EXPECT_EQ(m.word(2, 64), 77u);
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

TEST_P(ModeTest, CasWithOtherCompareChangesNothingAndReturnsOldValues) {
  const ClusterOptions o = options(3);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const uint64_t v = 5;
  Op w;
  ASSERT_TRUE(IsOk(c.group().write(w, 8, bytes_of(v))));
  m.write(8, bytes_of(v));
  Op op;
  ASSERT_TRUE(IsOk(c.group().cas(op, 8, /*compare=*/6, /*swap=*/99, all(3))));
  ASSERT_TRUE(IsOk(c.group().wait(op)));
  EXPECT_TRUE(OldValuesAre(op, {5, 5, 5}, 3));
  EXPECT_TRUE(c.regions_equal(m));
}

// Every non-empty subset of a 4-replica chain, each on its own word.
TEST_P(ModeTest, CasExecuteMaskSwapsOnlyOnSelectedReplicasAndReportsZeroForOthers) {
  const ClusterOptions o = options(4);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  std::vector<uint64_t> fives(16, 5);
  const auto five_bytes = std::span(reinterpret_cast<const std::byte*>(fives.data()), fives.size() * 8);
  Op w;
  ASSERT_TRUE(IsOk(c.group().write(w, 1024, five_bytes)));
  m.write(1024, five_bytes);
  std::deque<Op> ops;
  std::vector<std::array<uint64_t, prim::kMaxReplicas>> want;
  for (uint32_t mask = 1; mask <= all(4); ++mask) {
    ASSERT_TRUE(IsOk(c.group().cas(ops.emplace_back(), 1024 + 8 * mask, 5, 100 + mask, mask)));
    want.push_back(m.cas(1024 + 8 * mask, 5, 100 + mask, mask));
  }
  wait_all(c.group(), ops);
  for (uint32_t mask = 1; mask <= all(4); ++mask) {
    SCOPED_TRACE("mask " + std::to_string(mask));
    EXPECT_TRUE(OldValuesAre(ops[mask - 1], want[mask - 1], 4));
    for (uint32_t i = 0; i < 4; ++i)
      EXPECT_EQ(ops[mask - 1].old_values()[i], (mask >> i) & 1 ? 5u : 0u) << "replica " << i;
  }
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

// Replicas made to diverge on purpose (one masked gCAS each), then one gCAS
// over all: each replica reports its own old value and only the one whose
// value matched swaps.
TEST_P(ModeTest, CasOnDivergedReplicasReturnsEachReplicasOwnOldValue) {
  const ClusterOptions o = options(7);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const uint64_t off = o.region_size - 8;  // the last word
  std::deque<Op> ops;
  for (uint32_t i = 0; i < 7; ++i) {
    ASSERT_TRUE(IsOk(c.group().cas(ops.emplace_back(), off, 0, 100 + i, 1u << i)));
    m.cas(off, 0, 100 + i, 1u << i);
  }
  Op& all_op = ops.emplace_back();
  ASSERT_TRUE(IsOk(c.group().cas(all_op, off, 103, 999, all(7))));
  const auto want = m.cas(off, 103, 999, all(7));
  wait_all(c.group(), ops);
  EXPECT_TRUE(OldValuesAre(all_op, {100, 101, 102, 103, 104, 105, 106}, 7));
  EXPECT_TRUE(OldValuesAre(all_op, want, 7));
  for (uint32_t i = 0; i < 7; ++i) EXPECT_EQ(m.word(i, off), i == 3 ? 999u : 100u + i);
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

TEST_P(ModeTest, CasOnTheFirstAndLastWordOfTheRegionWorks) {
  const ClusterOptions o = options(2);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  Op a, b;
  ASSERT_TRUE(IsOk(c.group().cas(a, 0, 0, ~uint64_t{0}, all(2))));
  ASSERT_TRUE(IsOk(c.group().cas(b, o.region_size - 8, 0, 0x8000000000000001, all(2))));
  m.cas(0, 0, ~uint64_t{0}, all(2));
  m.cas(o.region_size - 8, 0, 0x8000000000000001, all(2));
  ASSERT_TRUE(IsOk(c.group().wait(a)));
  ASSERT_TRUE(IsOk(c.group().wait(b)));
  EXPECT_TRUE(OldValuesAre(a, {0, 0}, 2));
  EXPECT_TRUE(c.regions_equal(m));
}

// gMEMCPY of 1 byte up to half the region, forwards and backwards, adjacent
// ranges included, on a 3-replica chain.
TEST_P(ModeTest, MemcpyOfEverySizeCopiesWithinTheRegionOnEveryReplica) {
  ClusterOptions o = options(3);
  o.region_size = 256 << 10;
  o.staging_bytes = 256 << 10;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const size_t r = o.region_size;
  const auto fill = pattern(r, 77);
  Op w;
  ASSERT_TRUE(IsOk(c.group().write(w, 0, fill)));
  m.write(0, fill);
  ASSERT_TRUE(IsOk(c.group().wait(w)));
  for (uint64_t len : {uint64_t{1}, uint64_t{7}, uint64_t{8}, uint64_t{63}, uint64_t{64}, uint64_t{4096},
                       uint64_t{65536}, uint64_t(r / 2)}) {
    SCOPED_TRACE("length " + std::to_string(len));
    struct Copy { uint64_t src, dst; };
    const Copy copies[] = {
        {0, r - len},                              // forwards, far
        {r - len, 0},                              // backwards, far
        {(len * 3 + 1) % (r - 2 * len + 1), 0},    // an odd source
    };
    std::deque<Op> ops;
    for (const Copy& cp : copies) {
      uint64_t src = cp.src, dst = cp.dst;
      if (src < dst + len && dst < src + len) dst = src + len;  // adjacent instead of overlapping
      ASSERT_TRUE(IsOk(c.group().memcpy(ops.emplace_back(), src, dst, len))) << src << " -> " << dst;
      m.memcpy(src, dst, len);
    }
    wait_all(c.group(), ops);
    for (const Op& op : ops) EXPECT_TRUE(op.old_values().empty());
    ASSERT_TRUE(c.regions_equal(m));
  }
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

// The transaction layer's pattern: a gWRITE to the log area, then, without
// waiting, a gMEMCPY from it to the data area, then a gFLUSH of the data:
// the copy sees the bytes just written on every replica.
TEST_P(ModeTest, MemcpyIssuedRightAfterAWriteCopiesTheNewBytes) {
  const ClusterOptions o = options(5);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  std::deque<Op> ops;
  for (uint32_t k = 0; k < 40; ++k) {
    const uint64_t log = 512 * k, data = 32768 + 512 * k, len = 1 + 37 * k % 512;
    const auto rec = pattern(len, 1000 + k);
    ASSERT_TRUE(IsOk(c.group().write(ops.emplace_back(), log, rec)));
    m.write(log, rec);
    ASSERT_TRUE(IsOk(c.group().memcpy(ops.emplace_back(), log, data, len)));
    m.memcpy(log, data, len);
    ASSERT_TRUE(IsOk(c.group().flush(ops.emplace_back(), data, len)));
  }
  wait_all(c.group(), ops);
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

TEST_P(ModeTest, FlushCompletesAndChangesNothing) {
  const ClusterOptions o = options(3);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const auto fill = pattern(o.region_size, 5);
  Op w;
  ASSERT_TRUE(IsOk(c.group().write(w, 0, fill)));
  m.write(0, fill);
  std::deque<Op> ops;
  const uint64_t r = o.region_size;
  for (auto [off, len] : {std::pair<uint64_t, uint64_t>{0, 1}, {r - 1, 1}, {0, r}, {4093, 7}, {8, 4096}}) {
    ASSERT_TRUE(IsOk(c.group().flush(ops.emplace_back(), off, len))) << off << "+" << len;
  }
  wait_all(c.group(), ops);
  for (const Op& op : ops) EXPECT_TRUE(op.old_values().empty());
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

// Group::read of ranges at odd offsets and lengths, one longer than the
// client's bounce buffer, agrees with each replica's own region.
TEST_P(ModeTest, ReadReturnsAnyRangeOfAnyReplica) {
  ClusterOptions o = options(3);
  o.region_size = 256 << 10;
  o.staging_bytes = 256 << 10;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const auto fill = pattern(o.region_size, 9);
  Op w;
  ASSERT_TRUE(IsOk(c.group().write(w, 0, fill)));
  m.write(0, fill);
  // Make the replicas differ, so a read of the wrong replica shows.
  for (uint32_t i = 0; i < 3; ++i) {
    Op cas;
    const uint64_t old = m.word(i, 4096);
    ASSERT_TRUE(IsOk(c.group().cas(cas, 4096, old, 1000 + i, 1u << i)));
    m.cas(4096, old, 1000 + i, 1u << i);
    ASSERT_TRUE(IsOk(c.group().wait(cas)));
  }
  const uint64_t r = o.region_size;
  for (uint32_t i = 0; i < 3; ++i) {
    for (auto [off, len] : {std::pair<uint64_t, uint64_t>{0, 1}, {r - 1, 1}, {4093, 11}, {1, r - 2}, {0, r}}) {
      std::vector<std::byte> got(len);
      ASSERT_TRUE(IsOk(c.group().read(i, off, got))) << "replica " << i << " " << off << "+" << len;
      EXPECT_TRUE(BytesEqual(got.data(), m.replica(i).data() + off, len)) << "replica " << i << " " << off << "+" << len;
    }
  }
}

// Completions arrive in issue order: whatever the interleaving, the set of
// done operations is always a prefix, and sequence numbers count up.
TEST_P(ModeTest, OperationsCompleteInIssueOrder) {
  const ClusterOptions o = options(4);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  Workload w(c.group(), m, o.seed);
  std::deque<Op> ops;
  std::vector<Workload::Expect> expect(48);
  for (int k = 0; k < 48; ++k) ASSERT_TRUE(IsOk(w.issue(ops.emplace_back(), Kind(k % 4), expect[k])));
  for (int k = 1; k < 48; ++k) EXPECT_EQ(ops[k].sequence(), ops[k - 1].sequence() + 1);
  uint64_t turns = 0;
  while (!ops.back().done() && turns++ < 5'000'000) {
    c.group().poll();
    size_t prefix = 0;
    while (prefix < ops.size() && ops[prefix].done()) ++prefix;
    for (size_t k = prefix; k < ops.size(); ++k) ASSERT_FALSE(ops[k].done()) << "op " << k << " before op " << prefix;
    ASSERT_EQ(c.group().completed(), prefix);
    c.turn();
  }
  ASSERT_TRUE(ops.back().done());
  for (int k = 0; k < 48; ++k) EXPECT_TRUE(w.completed_as_expected(ops[k], expect[k]));
  EXPECT_TRUE(c.regions_equal(m));
}

// Chain replication applies one order on every replica. The next three pin
// that order between a local operation (gCAS, gMEMCPY, run by each replica's
// NIC on its own region) and a gWRITE of the same bytes issued right before
// or right after it, without waiting in between (the waiting-free pattern a
// lock word or a reused log slot leads to). Twenty independent pairs each.
TEST_P(ModeTest, CasIssuedRightAfterAWriteOfItsWordSeesTheWrittenValueOnEveryReplica) {
  const ClusterOptions o = options(3);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  std::deque<Op> ops;
  std::vector<std::array<uint64_t, prim::kMaxReplicas>> want;
  for (uint64_t k = 0; k < 20; ++k) {
    const uint64_t v = 5 + k;
    ASSERT_TRUE(IsOk(c.group().write(ops.emplace_back(), 8 * k, bytes_of(v))));
    m.write(8 * k, bytes_of(v));
    ASSERT_TRUE(IsOk(c.group().cas(ops.emplace_back(), 8 * k, v, 1000 + k, all(3))));
    want.push_back(m.cas(8 * k, v, 1000 + k, all(3)));
  }
  wait_all(c.group(), ops);
  for (uint64_t k = 0; k < 20; ++k) EXPECT_TRUE(OldValuesAre(ops[2 * k + 1], want[k], 3)) << "pair " << k;
  EXPECT_TRUE(c.regions_equal(m));
}

TEST_P(ModeTest, WriteIssuedRightAfterACasOfTheSameWordTakesEffectAfterTheCas) {
  const ClusterOptions o = options(3);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  std::deque<Op> ops;
  std::vector<std::array<uint64_t, prim::kMaxReplicas>> want;
  for (uint64_t k = 0; k < 20; ++k) {
    ASSERT_TRUE(IsOk(c.group().cas(ops.emplace_back(), 8 * k, 0, 1, all(3))));
    want.push_back(m.cas(8 * k, 0, 1, all(3)));
    const uint64_t v = 2;
    ASSERT_TRUE(IsOk(c.group().write(ops.emplace_back(), 8 * k, bytes_of(v))));
    m.write(8 * k, bytes_of(v));
  }
  wait_all(c.group(), ops);
  for (uint64_t k = 0; k < 20; ++k) EXPECT_TRUE(OldValuesAre(ops[2 * k], want[k], 3)) << "pair " << k;
  EXPECT_TRUE(c.regions_equal(m));
}

TEST_P(ModeTest, WriteIssuedRightAfterAMemcpyFromItsSourceDoesNotChangeTheCopy) {
  const ClusterOptions o = options(3);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const auto first = pattern(20 * 64, 1);
  Op w;
  ASSERT_TRUE(IsOk(c.group().write(w, 0, first)));
  m.write(0, first);
  ASSERT_TRUE(IsOk(c.group().wait(w)));
  std::deque<Op> ops;
  for (uint64_t k = 0; k < 20; ++k) {
    ASSERT_TRUE(IsOk(c.group().memcpy(ops.emplace_back(), 64 * k, 16384 + 64 * k, 64)));
    m.memcpy(64 * k, 16384 + 64 * k, 64);
    const auto second = pattern(64, 100 + k);
    ASSERT_TRUE(IsOk(c.group().write(ops.emplace_back(), 64 * k, second)));
    m.write(64 * k, second);
  }
  wait_all(c.group(), ops);
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(c.replicas_identical());
}

// A completed Op is reused for the next operation of another kind.
TEST_P(ModeTest, AnOpIsReusableOnceDone) {
  const ClusterOptions o = options(2);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  Op op;
  const auto bytes = pattern(100, 3);
  ASSERT_TRUE(IsOk(c.group().write(op, 16, bytes)));
  m.write(16, bytes);
  ASSERT_TRUE(IsOk(c.group().wait(op)));
  EXPECT_TRUE(op.old_values().empty());
  const uint64_t old = m.word(0, 16);
  ASSERT_TRUE(IsOk(c.group().cas(op, 16, old, 1, 3)));
  EXPECT_FALSE(op.done());
  ASSERT_TRUE(IsOk(c.group().wait(op)));
  EXPECT_TRUE(OldValuesAre(op, m.cas(16, old, 1, 3), 2));
  ASSERT_TRUE(IsOk(c.group().memcpy(op, 16, 1000, 100)));
  m.memcpy(16, 1000, 100);
  ASSERT_TRUE(IsOk(c.group().wait(op)));
  EXPECT_TRUE(op.old_values().empty());
  EXPECT_TRUE(c.regions_equal(m));
}

// Several client threads share one Group (real threads, agent threads on the
// hosts): client_threads_workload (prim_test_util.h).
TEST_P(ModeTest, ClientThreadsSharingOneGroupEachSeeTheirOwnResults) {
  ClusterOptions o = options(3);
  o.drive = Drive::kThreads;
  o.op_timeout_ns = 5'000'000'000;  // real time; generous for sanitizer builds
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  constexpr uint32_t kThreads = 4;
  const uint32_t batches = GetParam() == ForwardMode::kOffload ? 24 : 6;
  Model m(c.n(), o.region_size);
  ASSERT_NO_FATAL_FAILURE(client_threads_workload(c, m, kThreads, batches));
  EXPECT_EQ(c.group().completed(), uint64_t(kThreads) * batches * 4);
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

INSTANTIATE_TEST_SUITE_P(Modes, ModeTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& info) { return mode_name(info.param); });

}  // namespace
}  // namespace hyperloop::prim_test
