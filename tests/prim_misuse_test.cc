// Misuse of the group primitives' public API, as a careless user would try it
// (issue 10): waiting on an Op whose issue was refused, or that was never
// issued, or that is in flight on another group, returns at once with a
// clear error instead of spinning; destroying a ReplicaHost while a Group
// still uses it aborts with a message instead of a use-after-free later.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "prim_test_util.h"

namespace hyperloop::prim_test {
namespace {

ClusterOptions options(ForwardMode mode) {
  ClusterOptions o;
  o.mode = mode;
  o.seed = 0x715e;
  o.region_size = 4096;
  o.slots = 8;
  o.rearm_batch = 4;
  return o;
}

class MisuseTest : public ::testing::TestWithParam<ForwardMode> {};

// Before: wait() on a refused Op polled until its (absent) completion, for
// ever without a timeout. Now the refusal is recorded in the Op.
TEST_P(MisuseTest, WaitOnARefusedOpReturnsTheRefusalAtOnce) {
  Cluster c(options(GetParam()));
  Op op;
  const std::vector<std::byte> bytes(16, std::byte{1});
  const Status refused = c.group().write(op, 4096 - 8, bytes);
  ASSERT_EQ(refused.code(), StatusCode::kOutOfRange) << refused.to_string();
  EXPECT_TRUE(op.done());
  // A generous timeout: without the fix this returns kDeadlineExceeded.
  const Status w = c.group().wait(op, 1'000'000'000);
  EXPECT_EQ(w.code(), StatusCode::kOutOfRange) << w.to_string();
  EXPECT_EQ(w.message(), refused.message());
  // Every issue call does it.
  Op cas, cpy, fl;
  EXPECT_EQ(c.group().cas(cas, 3, 0, 1, 0b111).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.group().wait(cas, 1'000'000'000).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.group().memcpy(cpy, 0, 8, 16).code(), StatusCode::kInvalidArgument);  // overlapping
  EXPECT_EQ(c.group().wait(cpy, 1'000'000'000).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.group().flush(fl, 0, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.group().wait(fl, 1'000'000'000).code(), StatusCode::kInvalidArgument);
  // The same Op works for the next operation, and the group is intact.
  HL_ASSERT_OK(c.group().write(op, 0, bytes));
  HL_EXPECT_OK(c.group().wait(op));
  EXPECT_FALSE(c.group().broken());
}

TEST_P(MisuseTest, WaitOnANeverIssuedOpIsFailedPrecondition) {
  Cluster c(options(GetParam()));
  Op op;
  EXPECT_TRUE(op.done());
  EXPECT_EQ(op.status().code(), StatusCode::kFailedPrecondition);
  const Status w = c.group().wait(op, 1'000'000'000);
  EXPECT_EQ(w.code(), StatusCode::kFailedPrecondition) << w.to_string();
}

// An Op still in flight is refused for a second issue without being touched,
// and another group will not wait on it.
TEST_P(MisuseTest, AnOpInFlightIsNeitherReissuedNorWaitedOnByAnotherGroup) {
  ClusterOptions o = options(GetParam());
  o.agents_run = false;  // nothing completes until the agents run again
  Cluster a(o);
  o.seed += 1;
  Cluster b(o);
  Op op;
  const std::vector<std::byte> bytes(8, std::byte{2});
  HL_ASSERT_OK(a.group().write(op, 0, bytes));
  EXPECT_EQ(a.group().write(op, 64, bytes).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(op.done());
  EXPECT_EQ(b.group().wait(op, 1'000'000).code(), StatusCode::kInvalidArgument);
  a.set_agents_run(true);
  HL_EXPECT_OK(a.group().wait(op));
  std::vector<std::byte> got(8);
  HL_ASSERT_OK(a.group().read(2, 0, got));
  EXPECT_EQ(got, bytes);
}

INSTANTIATE_TEST_SUITE_P(Modes, MisuseTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& i) { return mode_name(i.param); });

// Before: the Group kept a reference to the destroyed host and used it when
// it was destroyed itself (ASan: heap-use-after-free). Now the host refuses
// to go while a Group holds it.
TEST(MisuseDeathTest, DestroyingAReplicaHostBeforeItsGroupAbortsWithAMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto body = [] {
    soft::Fabric fabric;
    auto client = fabric.create_nic({.name = "client"}).value();
    auto nic = fabric.create_nic({.name = "r0"}).value();
    auto host = ReplicaHost::create(*nic, {.agent_thread = false}).value();
    if (!host->register_tenant(1, 4096).is_ok()) return;
    GroupOptions g;
    g.tenant = 1;
    g.region_size = 4096;
    g.mode = ForwardMode::kCpuForward;
    g.slots = 8;
    g.rearm_batch = 8;
    ReplicaHost* hosts[] = {host.get()};
    auto group = Group::create(*client, hosts, g);
    if (!group.is_ok()) return;
    host.reset();  // the misuse
  };
  EXPECT_DEATH(body(), "ReplicaHost is destroyed while 1 Group");
}

}  // namespace
}  // namespace hyperloop::prim_test