// prim_fence_test.cc: a group of a newer epoch fences the tenant's older group
// on every host (GroupOptions::epoch): nothing the old group issues afterwards
// is applied anywhere, a stale epoch is refused, and the old group's teardown
// leaves the new members alone. Deterministic (a seeded ManualExecutor).
#include <gtest/gtest.h>

#include <fstream>

#include "fault_test_util.h"
#include "prim_test_util.h"

namespace hyperloop::prim_test {
namespace {

class FenceTest : public ::testing::TestWithParam<ForwardMode> {
 protected:
  static ClusterOptions options() {
    ClusterOptions o;
    o.mode = GetParam();
    o.make_group = false;
    o.op_timeout_ns = 20'000'000;
    return o;
  }
  std::unique_ptr<Group> group_at(Cluster& c, uint64_t epoch) {
    GroupOptions g = c.group_options();
    g.epoch = epoch;
    return must(Group::create(c.client_device(), c.hosts(), g), "Group::create");
  }
  // Writes v at off and waits for it.
  static Status write_word(Group& g, uint64_t off, uint64_t v) {
    Op op;
    HL_RETURN_IF_ERROR(g.write(op, off, bytes_of(v)));
    return g.wait(op);
  }
};

// The marker the stale group writes: never written by anyone else.
constexpr uint64_t kStale = 0x57A1E00000000000ull;

TEST_P(FenceTest, NewerEpochFencesTheOldGroupAndNoneOfItsLaterOperationsIsApplied) {
  Cluster c(options());
  auto old_group = group_at(c, 1);
  ASSERT_TRUE(IsOk(write_word(*old_group, 0, 11)));
  auto fresh = group_at(c, 2);  // the takeover: every host fences epoch 1

  // The old client keeps issuing: every kind of operation, one after another.
  uint64_t completed_ok = 0, issued = 0;
  for (uint64_t k = 0; k < 64; ++k) {
    Op op;
    const uint64_t off = 8 * (k + 1);
    Status s;
    switch (k % 4) {
      case 0: s = old_group->write(op, off, bytes_of(kStale | k)); break;
      case 1: s = old_group->cas(op, off, 0, kStale | k, 0b111); break;
      case 2: s = old_group->memcpy(op, 0, off, 8); break;
      default: s = old_group->flush(op, 0, 64); break;
    }
    if (s.is_ok()) {
      ++issued;
      s = old_group->wait(op);
    }
    if (s.is_ok()) ++completed_ok;
  }
  EXPECT_EQ(completed_ok, 0u) << issued << " issued";
  EXPECT_TRUE(old_group->broken());

  // None of it is on any host: the region holds only what the new epoch and
  // the old one before the fence wrote.
  for (uint32_t i = 0; i < uint32_t(c.hosts().size()); ++i) {
    std::vector<std::byte> region(options().region_size);
    ASSERT_TRUE(IsOk(c.host(i).peek(kTenant, 0, region)));
    EXPECT_EQ(load_u64(region.data()), 11u) << "replica " << i;
    for (size_t off = 8; off < region.size(); off += 8)
      ASSERT_EQ(load_u64(region.data() + off), 0u) << "replica " << i << " offset " << off;
  }
  // The old group's teardown (its drop of "its" members) leaves the new ones.
  old_group.reset();
  for (uint64_t k = 0; k < 32; ++k) ASSERT_TRUE(IsOk(write_word(*fresh, 8 * k, 1000 + k)));
  std::vector<std::byte> back(8);
  for (uint32_t i = 0; i < uint32_t(c.hosts().size()); ++i) {
    ASSERT_TRUE(IsOk(fresh->read(i, 8 * 31, back)));
    EXPECT_EQ(load_u64(back.data()), 1031u);
  }
}

TEST_P(FenceTest, StaleEpochIsPermissionDeniedAndSameEpochAlreadyExists) {
  Cluster c(options());
  auto current = group_at(c, 5);
  GroupOptions g = c.group_options();
  g.epoch = 4;
  auto stale = Group::create(c.client_device(), c.hosts(), g);
  ASSERT_FALSE(stale.is_ok());
  EXPECT_EQ(stale.status().code(), StatusCode::kPermissionDenied) << stale.status().to_string();
  EXPECT_NE(stale.status().message().find("epoch 4 is fenced"), std::string::npos) << stale.status().to_string();
  g.epoch = 5;
  auto twin = Group::create(c.client_device(), c.hosts(), g);
  ASSERT_FALSE(twin.is_ok());
  EXPECT_EQ(twin.status().code(), StatusCode::kAlreadyExists) << twin.status().to_string();
  // Neither refusal touched the current group.
  ASSERT_TRUE(IsOk(write_word(*current, 64, 77)));
  EXPECT_FALSE(current->broken());
  // An unfenced client (epoch 0) cannot take a fenced tenant either.
  g.epoch = 0;
  auto legacy = Group::create(c.client_device(), c.hosts(), g);
  ASSERT_FALSE(legacy.is_ok());
  EXPECT_EQ(legacy.status().code(), StatusCode::kPermissionDenied);
}

TEST_P(FenceTest, ACreateThatFailsLeavesTheMemberItFoundServing) {
  Cluster c(options());
  auto current = group_at(c, 1);
  GroupOptions g = c.group_options();
  g.epoch = 2;
  g.region_size = options().region_size / 2;  // wrong size: refused before anything is fenced
  auto wrong = Group::create(c.client_device(), c.hosts(), g);
  ASSERT_FALSE(wrong.is_ok());
  EXPECT_EQ(wrong.status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(IsOk(write_word(*current, 0, 5)));
  // The refused CREATE did not raise the fence: epoch 2 is still free.
  auto next = group_at(c, 2);
  EXPECT_TRUE(next != nullptr);
}

// With its region in a file, a tenant's fence epoch is kept beside it
// (pmem_path + ".epoch"): hosts that restart still refuse the epochs they
// had fenced, so a client that was taken over cannot come back through a
// restarted host. The owner of the current epoch can. An epoch file that
// does not parse refuses the tenant (kDataLoss naming it) instead of
// forgetting the fence.
TEST_P(FenceTest, ARestartedHostStillRefusesTheEpochsItFenced) {
  fault_test::TempDir dir;
  constexpr uint32_t kDurable = 9;
  auto path = [&](uint32_t i) { return dir.file("r" + std::to_string(i) + ".pmem"); };
  auto register_all = [&](Cluster& c) -> Status {
    for (uint32_t i = 0; i < c.n(); ++i)
      HL_RETURN_IF_ERROR(c.host(i).register_tenant(kDurable, options().region_size, path(i)));
    return Status::ok();
  };
  auto create_at = [&](Cluster& c, uint64_t epoch) {
    GroupOptions g = c.group_options(kDurable);
    g.epoch = epoch;
    return Group::create(c.client_device(), c.hosts(), g);
  };
  {
    Cluster c(options());
    ASSERT_TRUE(IsOk(register_all(c)));
    auto first = create_at(c, 3);
    ASSERT_TRUE(first.is_ok()) << first.status().to_string();
    auto taken_over = create_at(c, 5);
    ASSERT_TRUE(taken_over.is_ok()) << taken_over.status().to_string();
    ASSERT_TRUE(IsOk(write_word(**taken_over, 0, 55)));
    Op flush;  // durable, so that the restarted hosts' regions show it
    ASSERT_TRUE(IsOk((*taken_over)->flush(flush, 0, 8)));
    ASSERT_TRUE(IsOk((*taken_over)->wait(flush)));
  }  // every host (and NIC) goes: a restart
  {
    Cluster c(options());
    ASSERT_TRUE(IsOk(register_all(c)));
    auto stale = create_at(c, 3);
    ASSERT_FALSE(stale.is_ok());
    EXPECT_EQ(stale.status().code(), StatusCode::kPermissionDenied) << stale.status().to_string();
    EXPECT_NE(stale.status().message().find("epoch 3 is fenced"), std::string::npos) << stale.status().to_string();
    auto owner = create_at(c, 5);
    ASSERT_TRUE(owner.is_ok()) << owner.status().to_string();
    std::vector<std::byte> back(8);
    for (uint32_t i = 0; i < c.n(); ++i) {
      ASSERT_TRUE(IsOk((*owner)->read(i, 0, back)));
      EXPECT_EQ(load_u64(back.data()), 55u) << "replica " << i;
    }
  }
  std::ofstream(path(1) + ".epoch", std::ios::trunc) << "hyperloop fence epoch 5x\n";
  {
    Cluster c(options());
    const Status s = c.host(1).register_tenant(kDurable, options().region_size, path(1));
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
    EXPECT_NE(s.message().find(path(1) + ".epoch"), std::string::npos) << s.to_string();
    // The other hosts' files are intact.
    EXPECT_TRUE(IsOk(c.host(0).register_tenant(kDurable, options().region_size, path(0))));
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, FenceTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& i) { return mode_name(i.param); });

}  // namespace
}  // namespace hyperloop::prim_test
