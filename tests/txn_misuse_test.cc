// The transactional store tried as a careless user and an unlucky operator
// would (issue 10): a replica region of another store is never adopted, a
// recovery never changes the chain silently, a read_replica outside the chain
// is an error, reads while a replica is dead are kUnavailable (not a
// "conflict" to retry), and destroying a host under a store aborts with a
// message instead of a use-after-free.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "txn_test_util.h"

namespace hyperloop::txn_test {
namespace {

using prim_test::kBothModes;
using prim_test::mode_name;
using txn::RecoveryOptions;
using txn::StoreId;

std::string param_name(const ::testing::TestParamInfo<ForwardMode>& i) { return mode_name(i.param); }

::testing::AssertionResult Is(const Status& s, StatusCode want, const std::string& needle = "") {
  if (s.code() != want)
    return ::testing::AssertionFailure() << "got " << s.to_string() << ", want " << status_code_name(want);
  if (!needle.empty() && s.message().find(needle) == std::string::npos)
    return ::testing::AssertionFailure() << "the message of " << s.to_string() << " does not name \"" << needle << "\"";
  return ::testing::AssertionSuccess();
}

class TxnMisuse : public ::testing::TestWithParam<ForwardMode> {
 protected:
  RigOptions options(uint64_t seed) {
    RigOptions o;
    o.mode = GetParam();
    o.seed = seed;
    o.store.data_size = 8 << 10;
    o.store.log_size = 16 << 10;
    return o;
  }
};

// Before: the region of another store (same tenant id, same sizes) in chain
// position 2 was taken as a lagging replica: overwritten without a word (or,
// were its head newer, taken as the reference). Now: kDataLoss naming it,
// nothing written anywhere; re-seeding it is an explicit decision.
TEST_P(TxnMisuse, ARegionOfAnotherStoreIsRefusedUnlessReseeded) {
  Rig rig(options(101));
  HL_ASSERT_OK(rig.put(0, pattern(64, 1)));
  const StoreId mine = rig.store().id();
  ASSERT_FALSE(mine.is_zero());

  // Another store of the same tenant and sizes on a host of its own.
  ReplicaHost& stranger = rig.replace_host(2);
  {
    ReplicaHost* one[] = {&stranger};
    auto other = Store::open(rig.c().client(), one, rig.so());
    ASSERT_TRUE(other.is_ok()) << other.status().to_string();
    EXPECT_FALSE(other.value()->id() == mine);
    Transaction t = other.value()->begin();
    HL_ASSERT_OK(t.write(0, pattern(64, 9)));
    HL_ASSERT_OK(t.commit());
    HL_ASSERT_OK(other.value()->drain());
  }
  const auto theirs = rig.region(2);
  const auto ours0 = rig.region(0);
  EXPECT_TRUE(Is(rig.store().recover(rig.hosts()), StatusCode::kDataLoss, "replica 2 holds store"));
  EXPECT_TRUE(BytesEqual(rig.region(2).data(), theirs.data(), theirs.size())) << "the stranger was written";
  EXPECT_TRUE(BytesEqual(rig.region(0).data() + kSuperBytes, ours0.data() + kSuperBytes,
                         ours0.size() - kSuperBytes));

  // Told to: replica 2 becomes a copy of this store.
  HL_ASSERT_OK(rig.store().recover(rig.hosts(), RecoveryOptions{.reseed_mask = 0b100}));
  EXPECT_TRUE(rig.store().id() == mine);
  rig.set_compare_log(false);  // replica 2 keeps the other store's log bytes past the head
  EXPECT_TRUE(rig.consistent("after re-seeding replica 2"));
}

// Before: recover() with 2 hosts quietly shrank a 3-replica store. Now the
// count is checked against the call and against the format block.
TEST_P(TxnMisuse, ARecoveryThatWouldChangeTheReplicaCountIsRefusedUnlessAllowed) {
  Rig rig(options(102));
  HL_ASSERT_OK(rig.put(64, pattern(64, 2)));
  ReplicaHost* two[] = {&rig.host(0), &rig.host(1)};
  EXPECT_TRUE(Is(rig.store().recover(two), StatusCode::kFailedPrecondition, "allow_resize"));
  EXPECT_EQ(rig.store().replicas(), 3u);
  HL_ASSERT_OK(rig.put(128, pattern(64, 3)));  // refused before anything changed: still serving
  HL_ASSERT_OK(rig.store().drain());

  // A new client opening 2 of the 3 replicas: the format block says 3.
  rig.store_ptr().reset();
  auto opened = Store::open(rig.c().client(), two, rig.so());
  EXPECT_TRUE(Is(opened.status(), StatusCode::kFailedPrecondition, "3 replicas"));
  StoreOptions so = rig.so();
  so.recovery.allow_resize = true;
  opened = Store::open(rig.c().client(), two, so);
  ASSERT_TRUE(opened.is_ok()) << opened.status().to_string();
  rig.store_ptr() = std::move(opened).value();
  EXPECT_EQ(rig.store().replicas(), 2u);
  std::vector<std::byte> got(64);
  HL_ASSERT_OK(rig.store().read(128, got));
  EXPECT_EQ(got, pattern(64, 3));
}

// Before: read_replica = 5 on 3 replicas silently read the tail.
TEST_P(TxnMisuse, AReadReplicaOutsideTheChainIsInvalidArgument) {
  Rig rig(options(103));
  rig.store_ptr().reset();  // one client per tenant at a time
  StoreOptions so = rig.so();
  so.read_replica = 5;
  EXPECT_TRUE(Is(rig.try_open(so).status(), StatusCode::kInvalidArgument, "read_replica 5"));
  so.read_replica = 3;
  EXPECT_TRUE(Is(rig.try_open(so).status(), StatusCode::kInvalidArgument, "read_replica 3"));
  so.read_replica = 2;
  HL_EXPECT_OK(rig.try_open(so).status());
}

// Before: while a replica's NIC was dead, a read of a stripe that a commit in
// flight holds returned kAborted ("conflict": run it again) after
// lock_timeout_ns, until op_timeout_ns broke the store. Now it asks the
// replicas and reports kUnavailable while the commit is still pending.
TEST_P(TxnMisuse, ReadsWhileAReplicaIsDeadAreUnavailableNotAborted) {
  RigOptions o = options(104);
  o.drive = Drive::kThreads;
  o.op_timeout_ns = 1'000'000'000;
  o.store.lock_timeout_ns = 20'000'000;
  Rig rig(o);
  HL_ASSERT_OK(rig.put(0, pattern(64, 4)));
  // The put's apply and unlock finish first: completing them during the read's
  // wait would count as progress (contention: kAborted) and make this race.
  HL_ASSERT_OK(rig.store().drain());
  rig.c().nic(1).crash();
  std::atomic<bool> first_done{false};
  Status first = internal_error("not run");
  std::thread t1([&] {
    Transaction t = rig.store().begin();
    first = t.write(0, pattern(8, 5));
    if (first.is_ok()) first = t.commit();
    first_done = true;
  });
  while (rig.store().group().in_flight() == 0 && !first_done) std::this_thread::yield();
  std::vector<std::byte> v(8);
  const Status r = rig.store().read(0, v);
  const bool pending = !first_done.load();
  t1.join();
  EXPECT_TRUE(Is(r, StatusCode::kUnavailable, "replica 1"));
  EXPECT_TRUE(pending) << "the read returned only after the commit failed at op_timeout: " << r.to_string();
  EXPECT_NE(first.code(), StatusCode::kOk);
  EXPECT_FALSE(rig.store().healthy());
}

INSTANTIATE_TEST_SUITE_P(Modes, TxnMisuse, ::testing::ValuesIn(kBothModes), param_name);

// Before: the store kept a pointer to the destroyed host and its group used it
// (ASan: heap-use-after-free). Now the host refuses to go while held.
TEST(TxnMisuseDeathTest, DestroyingAReplicaHostBeforeItsStoreAbortsWithAMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto body = [] {
    soft::Fabric fabric;
    soft::ManualExecutor ex(7);
    auto client = fabric.create_nic({.name = "client"}).value();
    auto nic = fabric.create_nic({.name = "r0"}).value();
    ex.add(*client);
    ex.add(*nic);
    auto host = ReplicaHost::create(*nic, {.agent_thread = false}).value();
    StoreOptions so;
    so.tenant = 3;
    so.data_size = 4096;
    so.log_size = 4096;
    so.group.mode = ForwardMode::kCpuForward;
    so.group.slots = 8;
    so.group.rearm_batch = 8;
    so.group.staging_bytes = 64 << 10;
    so.group.clock = [&ex] { return ex.now_ns(); };
    so.group.progress = [&] {
      ex.step();
      host->agent_poll();
    };
    if (!host->register_tenant(3, Store::region_bytes(so)).is_ok()) return;
    ReplicaHost* hosts[] = {host.get()};
    auto store = Store::open(*client, hosts, so);
    if (!store.is_ok()) return;
    host.reset();  // the misuse
  };
  EXPECT_DEATH(body(), "ReplicaHost is destroyed while 2 Group\\(s\\)/Store\\(s\\)");  // its group and itself
}

// Before: a Transaction kept a dangling Store pointer (a later commit or its
// destructor was a use-after-free). Now the Store refuses to go first.
TEST(TxnMisuseDeathTest, DestroyingAStoreWithAnUnfinishedTransactionAbortsWithAMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto body = [] {
    RigOptions o;
    o.seed = 105;
    Rig rig(o);
    Transaction t = rig.store().begin();
    if (!t.write(0, pattern(8, 1)).is_ok()) return;
    rig.store_ptr().reset();  // the misuse
  };
  EXPECT_DEATH(body(), "Store is destroyed while 1 of its Transactions are unfinished");
  // Finished ones (committed, aborted, dropped, moved from) are fine.
  RigOptions o;
  o.seed = 106;
  Rig rig(o);
  Transaction a = rig.store().begin(), b = rig.store().begin(), c = rig.store().begin();
  HL_ASSERT_OK(a.write(0, pattern(8, 2)));
  HL_ASSERT_OK(a.commit());
  b.abort();
  Transaction moved = std::move(c);
  moved.abort();
  rig.store_ptr().reset();
}

}  // namespace
}  // namespace hyperloop::txn_test