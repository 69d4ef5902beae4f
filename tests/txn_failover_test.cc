// txn_failover_test.cc: a store whose membership lives in a configuration
// store (StoreOptions::membership, in-process here: coord::in_memory_config_store)
// heals itself: a dead replica is dropped under a new epoch and the tenant
// commits again; a replacement joins at the tail; another client takes the
// tenant over, fencing the old one, whose later commits are applied nowhere;
// the outcome of an in-doubt commit is known from its transaction id.
// Deterministic (seeded ManualExecutor) except the join under load, which
// runs a committing thread against the join on real threads.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "hyperloop/coord.h"
#include "txn_test_util.h"

namespace hyperloop::txn_test {
namespace {

using coord::ReplicaState;
using txn::FailurePolicy;
using txn::TxnId;

class FailoverTest : public ::testing::TestWithParam<ForwardMode> {
 protected:
  RigOptions rig_options(uint64_t seed, Drive drive = Drive::kManual) {
    RigOptions o;
    o.mode = GetParam();
    o.drive = drive;
    o.seed = seed;
    o.op_timeout_ns = 5'000'000;
    o.open = false;
    return o;
  }
  StoreOptions with_membership(const Rig& rig, std::string owner, uint32_t min_replicas = 2) {
    StoreOptions so = rig.so();
    so.membership.config = config_.get();
    so.membership.owner = std::move(owner);
    so.membership.names = {"r0", "r1", "r2"};
    so.membership.on_failure = FailurePolicy::kReconfigure;
    so.membership.min_replicas = min_replicas;
    so.membership.probe_timeout_ns = 2'000'000;
    so.membership.heartbeat_interval_ns = 0;  // the manual clock: no monitor thread
    return so;
  }
  // Every host in `hosts`: its data area equals the model.
  static ::testing::AssertionResult data_equal(Rig& rig, std::vector<ReplicaHost*> hosts, const std::string& when) {
    for (size_t i = 0; i < hosts.size(); ++i) {
      std::vector<std::byte> d(rig.lay().data_size);
      if (!hosts[i]->peek(rig.tenant(), rig.lay().data_off, d).is_ok())
        return ::testing::AssertionFailure() << when << ": peek of host " << i;
      auto r = BytesEqual(d.data(), rig.model().data(), d.size());
      if (!r) return r << " (" << when << ": host " << i << " against the committed transactions)";
    }
    return ::testing::AssertionSuccess();
  }
  static size_t serving(const coord::TenantConfig& c) {
    size_t n = 0;
    for (const auto& e : c.chain) n += e.state == ReplicaState::kServing;
    return n;
  }
  // Commits one transaction of random ranges on `store`; the model follows
  // only if it committed, or (in doubt) if outcome() says it did, asked of
  // `judge` once it has recovered.
  static Status commit_on(Store& store, Rig& rig, const std::vector<Range>& ranges, TxnId* id = nullptr) {
    Transaction t = store.begin();
    for (const Range& r : ranges) HL_RETURN_IF_ERROR(t.write(r.off, r.bytes));
    Status s = t.commit();
    if (id) *id = t.id();
    if (s.is_ok())
      for (const Range& r : ranges) std::memcpy(rig.model().data() + r.off, r.bytes.data(), r.bytes.size());
    return s;
  }
  static void apply(Rig& rig, const std::vector<Range>& ranges) {
    for (const Range& r : ranges) std::memcpy(rig.model().data() + r.off, r.bytes.data(), r.bytes.size());
  }

  std::unique_ptr<coord::ConfigStore> config_ = coord::in_memory_config_store();
};

TEST_P(FailoverTest, ADeadReplicaIsDroppedUnderANewEpochAndTheTenantCommitsAgain) {
  Rig rig(rig_options(11));
  auto store = must(rig.try_open(with_membership(rig, "client-a")), "Store::open");
  EXPECT_EQ(store->epoch(), 1u);
  EXPECT_EQ(serving(store->membership()), 3u);
  EXPECT_EQ(store->membership().owner, "client-a");
  std::mt19937_64 rng(11);
  for (int k = 0; k < 20; ++k) HL_ASSERT_OK(commit_on(*store, rig, random_ranges(rng, rig.so().data_size, 3, 8, 512)));

  rig.c().nic(1).crash();
  const auto doubt = random_ranges(rng, rig.so().data_size, 2, 8, 512);
  TxnId id;
  const Status s = commit_on(*store, rig, doubt, &id);
  ASSERT_FALSE(s.is_ok());
  EXPECT_TRUE(s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded) << s.to_string();
  ASSERT_FALSE(id.is_zero());
  // The failing call reconfigured before it returned.
  EXPECT_TRUE(store->healthy());
  EXPECT_EQ(store->replicas(), 2u);
  const coord::TenantConfig c = store->membership();
  EXPECT_EQ(c.epoch, 2u);
  ASSERT_EQ(c.chain.size(), 3u);
  EXPECT_EQ(c.chain[1].state, ReplicaState::kOffline);
  EXPECT_EQ(serving(c), 2u);
  EXPECT_EQ(must(config_->read(rig.tenant()), "read").config, c);  // what the store reports is the record
  // The in-doubt commit is settled, one way or the other.
  auto committed = store->outcome(id);
  ASSERT_TRUE(committed.is_ok()) << committed.status().to_string();
  if (*committed) apply(rig, doubt);

  for (int k = 0; k < 20; ++k) HL_ASSERT_OK(commit_on(*store, rig, random_ranges(rng, rig.so().data_size, 3, 8, 512)));
  HL_ASSERT_OK(store->drain());
  EXPECT_TRUE(data_equal(rig, {&rig.host(0), &rig.host(2)}, "after the reconfiguration"));
  std::vector<std::byte> all(rig.so().data_size);
  HL_ASSERT_OK(store->read(0, all));
  EXPECT_TRUE(BytesEqual(all.data(), rig.model().data(), all.size()));
  const StoreStats st = store->stats();
  EXPECT_EQ(st.reconfigurations, 1u);
  EXPECT_EQ(st.replicas_removed, 1u);
  EXPECT_GT(st.last_reconfigure_ns, 0u);
}

TEST_P(FailoverTest, FewerLiveReplicasThanTheMinimumRefusesAndLeavesTheRecord) {
  Rig rig(rig_options(12));
  auto store = must(rig.try_open(with_membership(rig, "client-a", /*min_replicas=*/3)), "Store::open");
  HL_ASSERT_OK(commit_on(*store, rig, {Range{0, pattern(64, 1)}}));
  rig.c().nic(2).crash();
  EXPECT_FALSE(commit_on(*store, rig, {Range{64, pattern(64, 2)}}).is_ok());
  EXPECT_FALSE(store->healthy());
  const Status r = store->reconfigure();
  EXPECT_EQ(r.code(), StatusCode::kUnavailable) << r.to_string();
  EXPECT_NE(r.message().find("min_replicas 3"), std::string::npos) << r.to_string();
  EXPECT_EQ(must(config_->read(rig.tenant()), "read").config.epoch, 1u) << "the record changed";
  EXPECT_EQ(serving(store->membership()), 3u);
  EXPECT_EQ((commit_on(*store, rig, {Range{128, pattern(64, 3)}})).code(), StatusCode::kUnavailable);
  // The survivors still hold the acknowledged commit and nothing of the refused ones.
  std::vector<std::byte> d(rig.lay().data_size);
  ASSERT_TRUE(rig.host(0).peek(rig.tenant(), rig.lay().data_off, d).is_ok());
  EXPECT_TRUE(BytesEqual(d.data(), pattern(64, 1).data(), 64));
  EXPECT_TRUE(BytesEqual(d.data() + 128, std::vector<std::byte>(64).data(), 64));
}

TEST_P(FailoverTest, AReplacementJoinsAtTheTailAndBecomesAFullMember) {
  Rig rig(rig_options(13));
  auto store = must(rig.try_open(with_membership(rig, "client-a")), "Store::open");
  std::mt19937_64 rng(13);
  for (int k = 0; k < 30; ++k) HL_ASSERT_OK(commit_on(*store, rig, random_ranges(rng, rig.so().data_size, 3, 8, 512)));
  rig.c().nic(0).crash();  // the head
  TxnId id;
  const auto doubt = random_ranges(rng, rig.so().data_size, 2, 8, 512);
  EXPECT_FALSE(commit_on(*store, rig, doubt, &id).is_ok());
  if (must(store->outcome(id), "outcome")) apply(rig, doubt);
  ASSERT_EQ(store->replicas(), 2u);

  ReplicaHost& fresh = rig.replace_host(0);  // a blank host
  HL_ASSERT_OK(store->add_replica("r3", &fresh));
  EXPECT_EQ(store->replicas(), 3u);
  const coord::TenantConfig c = store->membership();
  ASSERT_EQ(c.chain.size(), 4u);
  EXPECT_EQ(c.chain.back().endpoint, "r3");
  EXPECT_EQ(c.chain.back().state, ReplicaState::kServing);
  EXPECT_EQ(c.epoch, 4u);  // 2: r0 offline; 3: r3 syncing; 4: r3 serving
  EXPECT_EQ(serving(c), 3u);
  // A duplicate join is refused.
  EXPECT_EQ((store->add_replica("r3", &fresh)).code(), StatusCode::kAlreadyExists);
  for (int k = 0; k < 30; ++k) HL_ASSERT_OK(commit_on(*store, rig, random_ranges(rng, rig.so().data_size, 3, 8, 512)));
  HL_ASSERT_OK(store->drain());
  EXPECT_TRUE(data_equal(rig, {&rig.c().host(1), &rig.c().host(2), &fresh}, "after the join"));
  EXPECT_EQ(store->stats().replicas_added, 1u);
  EXPECT_EQ(store->stats().transferred_bytes, rig.lay().region);
  // The new tail is a full member: with the old ones gone it alone holds the data.
  rig.c().nic(1).crash();
  rig.c().nic(2).crash();
  EXPECT_FALSE(commit_on(*store, rig, {Range{0, pattern(8, 9)}}).is_ok());
  EXPECT_FALSE(store->healthy()) << "min_replicas 2 with one live replica";
}

// The join on real threads: a committing thread runs throughout; every one
// of its commits succeeds (they wait out the catch-up pause), and after the
// join all three replicas hold exactly what it committed.
TEST_P(FailoverTest, AJoinWhileAnotherThreadCommitsLosesNothing) {
  RigOptions o = rig_options(15, Drive::kThreads);
  o.op_timeout_ns = 2'000'000'000;
  Rig rig(o);
  StoreOptions so = with_membership(rig, "client-a");
  so.membership.probe_timeout_ns = 200'000'000;
  so.membership.heartbeat_interval_ns = 10'000'000;  // real threads: the monitor runs
  so.membership.heartbeat_timeout_ns = 500'000'000;
  auto store = must(rig.try_open(so), "Store::open");
  HL_ASSERT_OK(store->reconfigure());  // all answer: the same chain, the same epoch
  EXPECT_EQ(store->epoch(), 1u);
  EXPECT_EQ(store->replicas(), 3u);
  // r2 leaves (an operator's decision here: its host is told nothing and keeps
  // running), and a fresh host joins in its place while commits go on.
  rig.c().nic(2).crash();
  HL_ASSERT_OK(store->reconfigure());
  ASSERT_EQ(store->replicas(), 2u);
  ReplicaHost& fresh = rig.replace_host(2);

  std::atomic<bool> stop{false}, joined{false};
  std::atomic<uint64_t> ok{0}, during{0};
  Status first_error;
  std::thread committer([&] {
    std::mt19937_64 rng(15);
    while (!stop.load()) {
      Status s = commit_on(*store, rig, random_ranges(rng, rig.so().data_size, 2, 8, 256));
      if (!s.is_ok()) {
        first_error = s;
        return;
      }
      ++ok;
      if (!joined.load()) ++during;
    }
  });
  while (ok.load() < 20 && first_error.is_ok()) std::this_thread::yield();
  const Status j = store->add_replica("r3", &fresh);
  joined = true;
  const uint64_t at_join = ok.load();
  while (ok.load() < at_join + 20 && first_error.is_ok()) std::this_thread::yield();
  stop = true;
  committer.join();
  HL_ASSERT_OK(j);
  HL_ASSERT_OK(first_error);
  RecordProperty("commits_before_the_join_returned", std::to_string(during.load()));
  RecordProperty("join_pause_ns", std::to_string(store->stats().last_join_pause_ns));
  HL_ASSERT_OK(store->drain());
  EXPECT_EQ(store->replicas(), 3u);
  EXPECT_EQ(serving(store->membership()), 3u);
  EXPECT_TRUE(data_equal(rig, {&rig.host(0), &rig.host(1), &fresh}, "after the join under load"));
}

TEST_P(FailoverTest, ATakeoverFencesTheOldClientAndNoneOfItsLaterCommitsIsApplied) {
  Rig rig(rig_options(14));
  auto a = must(rig.try_open(with_membership(rig, "client-a")), "Store::open a");
  std::mt19937_64 rng(14);
  std::vector<TxnId> a_ids;
  for (int k = 0; k < 10; ++k) {
    TxnId id;
    HL_ASSERT_OK(commit_on(*a, rig, random_ranges(rng, rig.so().data_size, 2, 8, 256), &id));
    a_ids.push_back(id);
  }
  // Client b, on its own NIC, takes the tenant over.
  auto b_nic = rig.c().new_device("client-b");
  StoreOptions sb = with_membership(rig, "client-b");
  auto b = must(Store::open(*b_nic, rig.hosts(), sb), "Store::open b");
  EXPECT_EQ(b->epoch(), 2u);
  EXPECT_EQ(b->membership().owner, "client-b");
  EXPECT_EQ(b->replicas(), 3u);
  // Every commit a acknowledged is there, and b can tell so from its ids.
  for (const TxnId& id : a_ids) EXPECT_TRUE(must(b->outcome(id), "outcome")) << id.lsn;
  std::vector<std::byte> all(rig.so().data_size);
  HL_ASSERT_OK(b->read(0, all));
  EXPECT_TRUE(BytesEqual(all.data(), rig.model().data(), all.size()));

  // a goes on committing a marker its commits alone write: none succeeds,
  // none is applied, and a learns it was fenced.
  const std::vector<std::byte> marker = pattern(64, 0x5A);
  uint64_t a_ok = 0;
  Status last;
  for (int k = 0; k < 16; ++k) {
    TxnId id;
    last = commit_on(*a, rig, {Range{uint64_t(k) * 64, marker}}, &id);
    if (last.is_ok()) ++a_ok;
    if (id.is_zero()) continue;
    auto o = b->outcome(id);
    EXPECT_TRUE(o.is_ok() && !*o) << "a's commit after the takeover: " << (o.is_ok() ? "committed" : o.status().to_string());
  }
  EXPECT_EQ(a_ok, 0u);
  EXPECT_EQ(last.code(), StatusCode::kPermissionDenied) << last.to_string();
  EXPECT_EQ(a->reconfigure().code(), StatusCode::kPermissionDenied);
  // b commits; then every replica holds b's view and not one marker.
  for (int k = 0; k < 10; ++k) HL_ASSERT_OK(commit_on(*b, rig, random_ranges(rng, rig.so().data_size, 2, 8, 256)));
  HL_ASSERT_OK(b->drain());
  EXPECT_TRUE(data_equal(rig, {&rig.host(0), &rig.host(1), &rig.host(2)}, "after the takeover"));
  a.reset();  // the fenced store's teardown leaves b's chain alone
  HL_ASSERT_OK(commit_on(*b, rig, {Range{0, pattern(64, 3)}}));
  HL_ASSERT_OK(b->drain());
  EXPECT_TRUE(data_equal(rig, {&rig.host(0), &rig.host(1), &rig.host(2)}, "after a's teardown"));
}

// A record store whose session this test can lose (the in-process store has none).
class LosableSession final : public coord::ConfigStore {
 public:
  explicit LosableSession(coord::ConfigStore& inner) : inner_(inner) {}
  Result<coord::Versioned> read(uint32_t t) override { return inner_.read(t); }
  Result<int64_t> create(uint32_t t, const coord::TenantConfig& c) override { return inner_.create(t, c); }
  Result<int64_t> compare_and_set(uint32_t t, const coord::Versioned& seen, const coord::TenantConfig& next) override {
    return inner_.compare_and_set(t, seen, next);
  }
  std::string describe() const override { return "losable " + inner_.describe(); }
  Status claim_owner(uint32_t t, const std::string& o) override { return inner_.claim_owner(t, o); }
  Result<std::string> live_owner(uint32_t t) override { return inner_.live_owner(t); }
  uint64_t sessions_lost() const override { return lost_; }
  void lose() { ++lost_; }

 private:
  coord::ConfigStore& inner_;
  uint64_t lost_ = 0;
};

TEST_P(FailoverTest, AStoreThatLostItsSessionFencesItselfAndAStandbySeesNoLiveOwner) {
  Rig rig(rig_options(16));
  LosableSession session(*config_);
  StoreOptions so = with_membership(rig, "client-a");
  so.membership.config = &session;
  auto a = must(rig.try_open(so), "Store::open");
  EXPECT_EQ(must(config_->live_owner(rig.tenant()), "live_owner"), "client-a");
  HL_ASSERT_OK(commit_on(*a, rig, {Range{0, pattern(64, 1)}}));
  session.lose();
  const Status r = a->reconfigure();
  EXPECT_EQ(r.code(), StatusCode::kPermissionDenied) << r.to_string();
  EXPECT_NE(r.message().find("lost its coordination session"), std::string::npos) << r.to_string();
  EXPECT_EQ(commit_on(*a, rig, {Range{64, pattern(64, 2)}}).code(), StatusCode::kPermissionDenied);
  // A standby takes over (here: the owner's claim replaced, as session expiry would delete it).
  auto b_nic = rig.c().new_device("client-b");
  auto b = must(Store::open(*b_nic, rig.hosts(), with_membership(rig, "client-b")), "Store::open b");
  EXPECT_EQ(must(config_->live_owner(rig.tenant()), "live_owner"), "client-b");
  std::vector<std::byte> got(128);
  HL_ASSERT_OK(b->read(0, got));
  EXPECT_TRUE(BytesEqual(got.data(), pattern(64, 1).data(), 64));
  EXPECT_TRUE(BytesEqual(got.data() + 64, std::vector<std::byte>(64).data(), 64)) << "the fenced commit is there";
}

INSTANTIATE_TEST_SUITE_P(Modes, FailoverTest, ::testing::ValuesIn(prim_test::kBothModes),
                         [](const auto& i) { return prim_test::mode_name(i.param); });

}  // namespace
}  // namespace hyperloop::txn_test
