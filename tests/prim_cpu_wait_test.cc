// CPU forwarding with both kinds of forwarder (ReplicaHostOptions::CpuWait):
// event-driven ones that sleep on their CQs' completion events, and
// spinning ones. Both must forward everything, in order, across long idle
// gaps (where the event-driven one is asleep), keep their heartbeats
// beating while asleep, and let their host go promptly.
#include <gtest/gtest.h>

#include <cstdint>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "prim_test_util.h"

namespace hyperloop::prim_test {
namespace {

using CpuWait = ReplicaHostOptions::CpuWait;

class CpuWaitTest : public ::testing::TestWithParam<CpuWait> {
 protected:
  ClusterOptions options() const {
    ClusterOptions o;
    o.mode = ForwardMode::kCpuForward;
    o.drive = Drive::kThreads;
    o.cpu_wait = GetParam();
    o.op_timeout_ns = 10'000'000'000ull;  // slowness is not under test here
    return o;
  }
};

// Bursts of pipelined gWRITEs separated by idle gaps: each gap is long
// enough (a heartbeat read loop that waits for the counter to move several
// times, i.e. many agent turns) for an event-driven forwarder to fall asleep,
// and the next burst must wake it through its completion channel.
TEST_P(CpuWaitTest, BurstsAfterIdleGapsAreAllForwardedAndLand) {
  Cluster c(options());
  Group& g = c.group();
  std::mt19937_64 rng(0xc0ffee);
  Model model(c.n(), c.options().region_size);
  for (int burst = 0; burst < 6; ++burst) {
    std::deque<Op> ops;
    std::vector<std::vector<std::byte>> data;
    for (int i = 0; i < 40; ++i) {
      const uint64_t len = 8 + rng() % 256;
      const uint64_t off = (rng() % (model.region_size() - len)) & ~uint64_t{7};
      data.push_back(pattern(len, uint32_t(rng())));
      model.write(off, data.back());
      ops.emplace_back();
      ASSERT_TRUE(IsOk(g.write(ops.back(), off, data.back()))) << "burst " << burst << " op " << i;
    }
    for (Op& op : ops) ASSERT_TRUE(IsOk(g.wait(op))) << "burst " << burst << " op #" << op.sequence();
    // The gap: every replica's heartbeat moves three times (the agents run,
    // then find nothing to do and, with kEvents, sleep between beats).
    for (uint32_t r = 0; r < c.options().replicas; ++r) {
      auto first = g.heartbeat(r, 2'000'000'000ull);
      ASSERT_TRUE(first.is_ok()) << first.status().to_string();
      uint64_t last = *first;
      for (int moved = 0; moved < 3;) {
        auto hb = g.heartbeat(r, 2'000'000'000ull);
        ASSERT_TRUE(hb.is_ok()) << hb.status().to_string();
        if (*hb != last) ++moved, last = *hb;
      }
    }
  }
  EXPECT_TRUE(c.regions_equal(model));
  // The forwarders really slept between bursts and completion events woke
  // them (event-driven), or never slept (spinning).
  uint64_t sleeps = 0, wakeups = 0;
  for (uint32_t r = 0; r < c.n(); ++r) sleeps += c.host(r).event_sleeps(), wakeups += c.host(r).event_wakeups();
  if (GetParam() == CpuWait::kEvents) {
    EXPECT_GT(sleeps, 0u);
    EXPECT_GT(wakeups, 0u) << "no sleep was ended by a completion event: the bursts were only picked up by timeouts";
  } else {
    EXPECT_EQ(sleeps, 0u);
    EXPECT_EQ(wakeups, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Forwarders, CpuWaitTest, ::testing::Values(CpuWait::kEvents, CpuWait::kSpin),
                         [](const auto& info) { return info.param == CpuWait::kEvents ? "Events" : "Spin"; });

}  // namespace
}  // namespace hyperloop::prim_test
