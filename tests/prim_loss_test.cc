// A group over lossy and slow links: a lost packet costs a retransmission,
// never a broken group. 1 % of the packets on every link of a 3-replica chain
// (and on the client's direct lines to the replicas) are lost, the group has
// only 8 slots, and 100,000 operations of all four kinds must all succeed,
// with every replica's region equal to the model at the end (and to each
// other's outside the gCAS words, which masked gCASes make differ). Manually driven
// (seeded ManualExecutor, seeded fabric): a run replays exactly.
#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "prim_test_util.h"

#ifndef HYPERLOOP_LOSS_OPS
#define HYPERLOOP_LOSS_OPS 100000
#endif

namespace hyperloop::prim_test {
namespace {

constexpr uint64_t kSeed = 0x10557e57;
constexpr uint64_t kAckTimeoutNs = 200'000;  // 2,000 steps of 100 ns: a loss found by the timer costs that
constexpr uint32_t kWindow = 16;             // Ops the test keeps in flight (the group has 8 slots)

class LossTest : public ::testing::TestWithParam<ForwardMode> {
 protected:
  ClusterOptions options() const {
    ClusterOptions o;
    o.mode = GetParam();
    o.replicas = 3;
    o.slots = 8;
    o.rearm_batch = 4;
    o.seed = kSeed + (GetParam() == ForwardMode::kOffload ? 0 : 1);
    o.nic.ack_timeout_ns = kAckTimeoutNs;
    o.op_timeout_ns = 200'000'000;  // virtual; far above a few retransmissions
    return o;
  }
  static std::string trace(const ClusterOptions& o) {
    return "seed=" + std::to_string(o.seed) + " mode=" + mode_name(o.mode);
  }
  // Every link a packet of the group crosses, both directions.
  static void every_link(Cluster& c, soft::Fabric::LinkFaults f) {
    for (uint32_t i = 0; i < c.n(); ++i) {
      c.fabric().set_link_faults(c.client(), c.nic(i), f);
      if (i + 1 < c.n()) c.fabric().set_link_faults(c.nic(i), c.nic(i + 1), f);
    }
  }
  // Issues `ops` operations of all four kinds (drawn from the workload's
  // seed), at most kWindow waited for at a time, checks each one's
  // completion, then every replica's region against the model.
  static void run(Cluster& c, uint64_t seed, uint64_t ops) {
    Model m(c.n(), c.options().region_size);
    Workload w(c.group(), m, seed);
    ASSERT_TRUE(IsOk(w.prepare()));
    std::array<Op, kWindow> window;
    std::array<Workload::Expect, kWindow> expect;
    for (uint64_t k = 0; k < ops + kWindow; ++k) {
      Op& op = window[k % kWindow];
      if (k >= kWindow) {
        ASSERT_TRUE(IsOk(c.group().wait(op))) << "op " << k - kWindow << " of " << ops;
        ASSERT_TRUE(w.completed_as_expected(op, expect[k % kWindow])) << "op " << k - kWindow;
      }
      if (k >= ops) continue;
      const Kind kind = Kind(w.below(4));
      ASSERT_TRUE(IsOk(w.issue(op, kind, expect[k % kWindow])))
          << kind_name(kind) << ", op " << k << " of " << ops << ", after " << c.group().completed()
          << " completed";
    }
    EXPECT_EQ(c.group().completed(), ops + 1);  // and prepare()'s
    EXPECT_FALSE(c.group().broken());
    EXPECT_TRUE(c.regions_equal(m));
    // Identical on every replica outside the gCAS words (the workload's gCAS
    // masks make replicas differ there on purpose; the model has each one's).
    const size_t shared = c.options().region_size / 8 * 7;
    std::vector<std::byte> first(shared), got(shared);
    ASSERT_TRUE(IsOk(c.host(0).peek(kTenant, 0, first)));
    for (uint32_t i = 1; i < c.n(); ++i) {
      ASSERT_TRUE(IsOk(c.host(i).peek(kTenant, 0, got)));
      EXPECT_TRUE(BytesEqual(got.data(), first.data(), shared)) << "replica " << i << " against replica 0";
    }
  }
};

TEST_P(LossTest, OnePercentLossOnEveryLinkWithEightSlotsCompletesEveryOperation) {
  const ClusterOptions o = options();
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  c.fabric().seed(o.seed);
  every_link(c, {.drop = 0.01});
  run(c, o.seed, HYPERLOOP_LOSS_OPS);
  uint64_t retransmits = c.client().stats().retransmits;
  for (uint32_t i = 0; i < c.n(); ++i) retransmits += c.nic(i).stats().retransmits;
  EXPECT_GT(retransmits, 0u);  // the loss did happen and was repaired
}

INSTANTIATE_TEST_SUITE_P(Modes, LossTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& info) { return mode_name(info.param); });

}  // namespace
}  // namespace hyperloop::prim_test
