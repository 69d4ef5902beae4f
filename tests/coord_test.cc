// The tenants' configuration records (hyperloop/coord.h): the text form,
// refused strictly when malformed (fuzzed); and one ConfigStore contract run
// on the in-process store and on a real single-node ZooKeeper that each test
// starts itself (Debian's zookeeper: java ZooKeeperServerMain on 127.0.0.1,
// a free port, its data in a temporary folder) and stops at its end.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <random>
#include <thread>
#include <utility>

#include "daemon_test_util.h"
#include "zookeeper_test_util.h"
#include "hyperloop/coord.h"

namespace hyperloop::coord {
namespace {

using daemon_test::Process;
using daemon_test::TempDir;

TenantConfig sample(uint64_t epoch = 1) {
  TenantConfig c;
  c.epoch = epoch;
  c.owner = "client-a";
  c.chain = {{"10.0.0.1:7000", ReplicaState::kServing},
             {"10.0.0.2:7000", ReplicaState::kServing},
             {"10.0.0.3:7000", ReplicaState::kSyncing}};
  return c;
}

// ---- the record's text ---------------------------------------------------------------------------
TEST(ConfigRecord, RoundTripsAndReadsAsAnOperatorWouldWriteIt) {
  const TenantConfig c = sample(7);
  auto text = encode_config(c);
  ASSERT_TRUE(text.is_ok()) << text.status().to_string();
  EXPECT_EQ(*text,
            "hyperloop-tenant-config 1\nepoch 7\nowner client-a\n"
            "replica 10.0.0.1:7000 serving\nreplica 10.0.0.2:7000 serving\nreplica 10.0.0.3:7000 syncing\n");
  auto back = decode_config(*text);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(*back, c);
  TenantConfig none;  // no owner, no replica
  none.epoch = 1;
  auto t2 = encode_config(none);
  ASSERT_TRUE(t2.is_ok());
  EXPECT_EQ(*t2, "hyperloop-tenant-config 1\nepoch 1\nowner -\n");
  auto b2 = decode_config(*t2);
  ASSERT_TRUE(b2.is_ok());
  EXPECT_EQ(*b2, none);
}

TEST(ConfigRecord, InvalidRecordsAreRefusedByEncodeAndCheck) {
  std::vector<TenantConfig> bad(6, sample());
  bad[0].epoch = 0;
  bad[1].owner = "has space";
  bad[2].chain[1].endpoint = bad[2].chain[0].endpoint;  // twice
  bad[3].chain[0].endpoint = "";
  bad[4].chain.resize(kMaxChainEntries + 1, {"x", ReplicaState::kServing});
  for (size_t i = 0; i < bad[4].chain.size(); ++i) bad[4].chain[i].endpoint = "h" + std::to_string(i);
  bad[5].chain[0].state = ReplicaState(9);
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_EQ(check_config(bad[i]).code(), StatusCode::kInvalidArgument) << "record " << i;
    EXPECT_EQ(encode_config(bad[i]).status().code(), StatusCode::kInvalidArgument) << "record " << i;
  }
}

TEST(ConfigRecord, MalformedTextIsRefusedNeverMisread) {
  const std::string good = *encode_config(sample(3));
  const std::vector<std::string> bad = {
      "",
      "hyperloop-tenant-config 2\nepoch 3\nowner -\n",          // a version this code does not know
      "hyperloop-tenant-config 1\nepoch 0\nowner -\n",          // epoch 0
      "hyperloop-tenant-config 1\nepoch 03\nowner -\n",         // not canonical
      "hyperloop-tenant-config 1\nepoch 18446744073709551616\nowner -\n",  // overflows
      "hyperloop-tenant-config 1\nepoch  3\nowner -\n",         // two spaces
      "hyperloop-tenant-config 1\nowner -\nepoch 3\n",          // out of order
      "hyperloop-tenant-config 1\nepoch 3\nowner -",            // no final newline
      "hyperloop-tenant-config 1\nepoch 3\nowner -\nreplica a:1 dead\n",
      "hyperloop-tenant-config 1\nepoch 3\nowner -\nreplica a:1\n",
      "hyperloop-tenant-config 1\nepoch 3\nowner -\nreplica a:1 serving\nreplica a:1 serving\n",
      "hyperloop-tenant-config 1\r\nepoch 3\r\nowner -\r\n",
      good + "garbage\n",
      std::string(kMaxRecordBytes + 1, 'x'),
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    auto r = decode_config(bad[i]);
    EXPECT_FALSE(r.is_ok()) << "text " << i << " accepted";
    if (!r.is_ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << "text " << i;
    }
  }
  // Random mutations: anything accepted encodes back to exactly itself.
  std::mt19937_64 rng(0xc0f16);
  size_t accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string t = good;
    for (int m = 0, n = int(1 + rng() % 3); m < n; ++m) {
      const size_t at = rng() % (t.size() + 1);
      switch (rng() % 3) {
        case 0: if (at < t.size()) t[at] = char(rng()); break;
        case 1: t.insert(at, 1, char(rng())); break;
        default: if (at < t.size()) t.erase(at, 1); break;
      }
    }
    auto r = decode_config(t);
    if (!r.is_ok()) continue;
    ++accepted;
    auto again = encode_config(*r);
    ASSERT_TRUE(again.is_ok());
    EXPECT_EQ(*again, t) << "a mutation was accepted but reads as something else";
  }
  EXPECT_LT(accepted, 20000u);
}

// ---- a real ZooKeeper: tests/zookeeper_test_util.h --------------------------------------------
using daemon_test::ZooKeeperServer;

// ---- the ConfigStore contract, on both stores ----------------------------------------------------
enum class Kind { kInMemory, kZooKeeper };

class ConfigStoreContract : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    if (GetParam() == Kind::kInMemory) {
      store_ = in_memory_config_store();
      second_ = nullptr;
      return;
    }
    zk_ = std::make_unique<ZooKeeperServer>();
    ASSERT_TRUE(zk_->ok()) << "could not start ZooKeeper: " << zk_->why();
    auto s = zookeeper_config_store(zk_->options());
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    store_ = std::move(*s);
    auto t = zookeeper_config_store(zk_->options());  // another client's session
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    second_owned_ = std::move(*t);
    second_ = second_owned_.get();
  }
  // A second client of the same records: another session on ZooKeeper; the
  // same object in memory (it has no sessions).
  ConfigStore& other() { return second_ ? *second_ : *store_; }

  std::unique_ptr<ZooKeeperServer> zk_;
  std::unique_ptr<ConfigStore> store_, second_owned_;
  ConfigStore* second_ = nullptr;
};

TEST_P(ConfigStoreContract, CreateThenReadThenCompareAndSetAdvanceTheVersion) {
  EXPECT_EQ(store_->read(5).status().code(), StatusCode::kNotFound);
  auto v0 = store_->create(5, sample(1));
  ASSERT_TRUE(v0.is_ok()) << v0.status().to_string();
  EXPECT_EQ(store_->create(5, sample(1)).status().code(), StatusCode::kAlreadyExists);
  auto seen = other().read(5);
  ASSERT_TRUE(seen.is_ok()) << seen.status().to_string();
  EXPECT_EQ(seen->config, sample(1));
  EXPECT_EQ(seen->version, *v0);
  TenantConfig next = sample(2);
  next.chain.erase(next.chain.begin() + 1);  // the middle replica leaves
  next.chain.back().state = ReplicaState::kServing;
  auto v1 = other().compare_and_set(5, *seen, next);
  ASSERT_TRUE(v1.is_ok()) << v1.status().to_string();
  EXPECT_GT(*v1, *v0);
  auto now = store_->read(5);
  ASSERT_TRUE(now.is_ok());
  EXPECT_EQ(now->config, next);
  EXPECT_EQ(now->version, *v1);
  EXPECT_EQ(store_->read(6).status().code(), StatusCode::kNotFound) << "tenants are separate records";
  EXPECT_EQ(store_->compare_and_set(6, *now, sample(9)).status().code(), StatusCode::kNotFound);
}

TEST_P(ConfigStoreContract, AStaleWriterLosesAndTheRecordKeepsTheWinner) {
  ASSERT_TRUE(store_->create(1, sample(1)).is_ok());
  auto a = store_->read(1), b = other().read(1);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  TenantConfig mine = sample(2), theirs = sample(2);
  mine.owner = "client-a";
  theirs.owner = "client-b";
  ASSERT_TRUE(store_->compare_and_set(1, *a, mine).is_ok());
  auto lost = other().compare_and_set(1, *b, theirs);  // read the same version: must lose
  EXPECT_EQ(lost.status().code(), StatusCode::kAborted) << lost.status().to_string();
  auto now = other().read(1);
  ASSERT_TRUE(now.is_ok());
  EXPECT_EQ(now->config.owner, "client-a");
  // The epoch must grow, and a bad record is refused before the store sees it.
  EXPECT_EQ(store_->compare_and_set(1, *now, sample(2)).status().code(), StatusCode::kInvalidArgument);
  TenantConfig bad = sample(3);
  bad.chain[0].endpoint = "has space";
  EXPECT_EQ(store_->compare_and_set(1, *now, bad).status().code(), StatusCode::kInvalidArgument);
  auto still = store_->read(1);
  ASSERT_TRUE(still.is_ok());
  EXPECT_EQ(still->version, now->version);
}

// Two clients race to take a tenant over, 50 rounds: in each exactly one
// compare-and-set from the same version wins, and the epochs it leaves are
// 1, 2, 3, ... with no round lost or doubled.
TEST_P(ConfigStoreContract, RacingTakeoversHaveExactlyOneWinnerPerVersion) {
  ASSERT_TRUE(store_->create(2, sample(1)).is_ok());
  constexpr int kRounds = 50;
  ConfigStore* stores[2] = {store_.get(), &other()};
  for (int round = 0; round < kRounds; ++round) {
    auto seen = store_->read(2);
    ASSERT_TRUE(seen.is_ok()) << seen.status().to_string();
    ASSERT_EQ(seen->config.epoch, uint64_t(round + 1));
    Status result[2];
    std::thread racers[2];
    for (int k = 0; k < 2; ++k)
      racers[k] = std::thread([&, k] {
        TenantConfig next = seen->config;
        next.epoch += 1;
        next.owner = "client-" + std::to_string(k);
        result[k] = stores[k]->compare_and_set(2, *seen, next).status();
      });
    for (auto& t : racers) t.join();
    const int wins = int(result[0].is_ok()) + int(result[1].is_ok());
    ASSERT_EQ(wins, 1) << "round " << round << ": " << result[0].to_string() << " / " << result[1].to_string();
    for (const auto& r : result)
      if (!r.is_ok()) {
        EXPECT_EQ(r.code(), StatusCode::kAborted) << r.to_string();
      }
  }
  auto last = store_->read(2);
  ASSERT_TRUE(last.is_ok());
  EXPECT_EQ(last->config.epoch, uint64_t(kRounds + 1));
}

TEST_P(ConfigStoreContract, TheLatestClaimIsTheLiveOwner) {
  auto none = store_->live_owner(4);
  ASSERT_TRUE(none.is_ok()) << none.status().to_string();
  EXPECT_EQ(*none, "");
  ASSERT_TRUE(store_->claim_owner(4, "client-a").is_ok());
  EXPECT_EQ(other().live_owner(4).value(), "client-a");
  ASSERT_TRUE(other().claim_owner(4, "client-b").is_ok());  // a takeover replaces the claim
  EXPECT_EQ(store_->live_owner(4).value(), "client-b");
  EXPECT_EQ(store_->live_owner(5).value(), "") << "claims are per tenant";
  EXPECT_EQ(store_->claim_owner(4, "").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->sessions_lost(), 0u);
}

using Markers = std::vector<std::pair<std::string, uint64_t>>;

TEST_P(ConfigStoreContract, ProgressMarkersOnlyGoForwardAndArePerTenant) {
  auto none = store_->progress(3);
  ASSERT_TRUE(none.is_ok()) << none.status().to_string();
  EXPECT_TRUE(none->empty());
  ASSERT_TRUE(store_->publish_progress(3, "10.0.0.1:7000", 10).is_ok());
  EXPECT_EQ(other().progress(3).value(), (Markers{{"10.0.0.1:7000", 10}}));
  // A late or duplicated publish is ignored, and OK; a higher one moves it.
  ASSERT_TRUE(other().publish_progress(3, "10.0.0.1:7000", 7).is_ok());
  ASSERT_TRUE(store_->publish_progress(3, "10.0.0.1:7000", 10).is_ok());
  EXPECT_EQ(store_->progress(3).value(), (Markers{{"10.0.0.1:7000", 10}}));
  ASSERT_TRUE(other().publish_progress(3, "10.0.0.1:7000", 12).is_ok());
  // Several names, listed sorted; 0 and UINT64_MAX are values like any other.
  ASSERT_TRUE(store_->publish_progress(3, "10.0.0.3:7000", UINT64_MAX).is_ok());
  ASSERT_TRUE(store_->publish_progress(3, "10.0.0.2:7000", 0).is_ok());
  const std::string longest(kMaxNameBytes, 'n');
  ASSERT_TRUE(store_->publish_progress(3, longest, 5).is_ok());
  const Markers all = {{"10.0.0.1:7000", 12}, {"10.0.0.2:7000", 0}, {"10.0.0.3:7000", UINT64_MAX}, {longest, 5}};
  EXPECT_EQ(other().progress(3).value(), all);
  EXPECT_TRUE(store_->progress(4).value().empty()) << "markers are per tenant";
  ASSERT_TRUE(store_->publish_progress(4, "10.0.0.1:7000", 1).is_ok());
  EXPECT_EQ(store_->progress(3).value(), all);
  // Remove: gone; removing what is absent is OK.
  ASSERT_TRUE(other().remove_progress(3, "10.0.0.2:7000").is_ok());
  ASSERT_TRUE(store_->remove_progress(3, "10.0.0.2:7000").is_ok());
  ASSERT_TRUE(store_->remove_progress(9, "10.0.0.2:7000").is_ok());
  ASSERT_TRUE(store_->remove_progress(3, longest).is_ok());
  EXPECT_EQ(store_->progress(3).value(), (Markers{{"10.0.0.1:7000", 12}, {"10.0.0.3:7000", UINT64_MAX}}));
  // A removed marker starts again from whatever is published next.
  ASSERT_TRUE(store_->remove_progress(4, "10.0.0.1:7000").is_ok());
  EXPECT_TRUE(store_->progress(4).value().empty());
  ASSERT_TRUE(store_->publish_progress(4, "10.0.0.1:7000", 0).is_ok());
  EXPECT_EQ(other().progress(4).value(), (Markers{{"10.0.0.1:7000", 0}}));
  // Bad names are refused before the store sees them.
  const std::vector<std::string> bad = {"", "has space", "a/b", "/", ".", "..", "tab\t", std::string("nul\0x", 5),
                                        "del\x7f", "\xc3\xa9", std::string(kMaxNameBytes + 1, 'n')};
  for (const auto& name : bad) {
    EXPECT_EQ(store_->publish_progress(3, name, 99).code(), StatusCode::kInvalidArgument) << "'" << name << "'";
    EXPECT_EQ(store_->remove_progress(3, name).code(), StatusCode::kInvalidArgument) << "'" << name << "'";
    EXPECT_EQ(check_progress_name(name).code(), StatusCode::kInvalidArgument) << "'" << name << "'";
  }
  EXPECT_TRUE(check_progress_name("..a").is_ok());
  EXPECT_EQ(store_->progress(3).value(), (Markers{{"10.0.0.1:7000", 12}, {"10.0.0.3:7000", UINT64_MAX}}));
}

// Two publishers (two sessions on ZooKeeper) raise one marker, interleaving
// their values (one the even, one the odd): a stale read-then-write would put
// it back. Each sees it never below what it published or read before, and it
// ends at the maximum.
TEST_P(ConfigStoreContract, ConcurrentPublishersLeaveTheMaximum) {
  constexpr uint64_t kEach = 150;
  ConfigStore* stores[2] = {store_.get(), &other()};
  Status failed[2];
  std::thread publishers[2];
  for (int k = 0; k < 2; ++k)
    publishers[k] = std::thread([&, k] {
      uint64_t floor = 0;
      for (uint64_t i = 0; i < kEach; ++i) {
        const uint64_t v = 2 * i + uint64_t(k) + 1;
        if (Status s = stores[k]->publish_progress(8, "applier", v); !s.is_ok()) {
          failed[k] = s;
          return;
        }
        auto now = stores[k]->progress(8);
        if (!now.is_ok()) {
          failed[k] = now.status();
          return;
        }
        if (now->size() != 1 || (*now)[0].first != "applier" || (*now)[0].second < std::max(v, floor)) {
          failed[k] = internal_error("after publishing " + std::to_string(v) + " (having read " +
                                     std::to_string(floor) + ") the marker went back");
          return;
        }
        floor = (*now)[0].second;
      }
    });
  for (auto& t : publishers) t.join();
  for (const auto& f : failed) EXPECT_TRUE(f.is_ok()) << f.to_string();
  EXPECT_EQ(store_->progress(8).value(), (Markers{{"applier", 2 * kEach}}));
}

#ifdef HYPERLOOP_HAVE_ZOOKEEPER
INSTANTIATE_TEST_SUITE_P(Stores, ConfigStoreContract, ::testing::Values(Kind::kInMemory, Kind::kZooKeeper),
                         [](const auto& i) { return i.param == Kind::kInMemory ? "InMemory" : "ZooKeeper"; });
#else  // no ZooKeeper client in this build: the in-process store only
INSTANTIATE_TEST_SUITE_P(Stores, ConfigStoreContract, ::testing::Values(Kind::kInMemory),
                         [](const auto&) { return "InMemory"; });
#endif

// ---- ZooKeeper only ------------------------------------------------------------------------------
#ifdef HYPERLOOP_HAVE_ZOOKEEPER
// The owner's claim is bound to its session: gone when the session closes;
// and a client cut off from the server for its session timeout counts that
// session lost (what makes a store fence itself).
TEST(ZooKeeperStore, AClaimEndsWithItsSessionAndACutOffClientCountsItsSessionLost) {
  ZooKeeperServer zk;
  ASSERT_TRUE(zk.ok()) << zk.why();
  auto watcher = zookeeper_config_store(zk.options());
  ASSERT_TRUE(watcher.is_ok()) << watcher.status().to_string();
  {
    auto owner = zookeeper_config_store(zk.options());
    ASSERT_TRUE(owner.is_ok());
    ASSERT_TRUE((*owner)->claim_owner(9, "client-a").is_ok());
    EXPECT_EQ((*watcher)->live_owner(9).value(), "client-a");
  }  // its session closes: the server deletes the claim at once
  EXPECT_EQ((*watcher)->live_owner(9).value(), "");

  ZooKeeperOptions o = zk.options();
  o.session_timeout_ms = 800;  // 4 ticks of 200 ms
  auto cut = zookeeper_config_store(o);
  ASSERT_TRUE(cut.is_ok());
  ASSERT_TRUE((*cut)->claim_owner(9, "client-c").is_ok());
  EXPECT_EQ((*cut)->sessions_lost(), 0u);
  zk.process().signal(SIGSTOP);  // the server goes silent: every client is cut off
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((*cut)->sessions_lost() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  zk.process().signal(SIGCONT);
  EXPECT_EQ((*cut)->sessions_lost(), 1u) << "a client cut off past its session timeout must count the session lost";
  // Back in touch: calls fail (kUnavailable, never hang) until the client has
  // learnt its session expired, then run on a new one; the claim went with the old.
  auto again = (*cut)->live_owner(9);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!again.is_ok() && std::chrono::steady_clock::now() < until) {
    EXPECT_EQ(again.status().code(), StatusCode::kUnavailable) << again.status().to_string();
    again = (*cut)->live_owner(9);
  }
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  // The old session ends on the server either as the client closes it (it
  // gave it up) or, if the close could not reach the server, at the server's
  // expiry once it runs again: the claim is gone within that bound.
  while (again.is_ok() && *again == "client-c" && std::chrono::steady_clock::now() < until)
    again = (*cut)->live_owner(9);
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_EQ(*again, "");
  EXPECT_EQ((*cut)->sessions_lost(), 1u) << "one session lost, counted once";
}

TEST(ZooKeeperStore, WhatTheServerHoldsIsValidatedAndADeadServerIsUnavailable) {
  ZooKeeperServer zk;
  ASSERT_TRUE(zk.ok()) << zk.why();
  auto s = zookeeper_config_store(zk.options());
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  ConfigStore& store = **s;
  EXPECT_NE(store.describe().find("zookeeper 127.0.0.1:"), std::string::npos) << store.describe();
  ASSERT_TRUE(store.create(3, sample(4)).is_ok());
  auto r = store.read(3);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->config, sample(4));
  // Another root is another namespace of records.
  auto t = zookeeper_config_store(zk.options("/other"));
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ((*t)->read(3).status().code(), StatusCode::kNotFound);
  // Option errors are refused before any connection.
  ZooKeeperOptions bad = zk.options("relative");
  EXPECT_EQ(zookeeper_config_store(bad).status().code(), StatusCode::kInvalidArgument);
  bad = zk.options();
  bad.hosts.clear();
  EXPECT_EQ(zookeeper_config_store(bad).status().code(), StatusCode::kInvalidArgument);
  // The server is killed: calls fail with kUnavailable within the session's bounds, never hang.
  zk.process().kill_and_reap();
  auto gone = store.read(3);
  EXPECT_EQ(gone.status().code(), StatusCode::kUnavailable) << gone.status().to_string();
  EXPECT_EQ(store.publish_progress(3, "h", 1).code(), StatusCode::kUnavailable);
  EXPECT_EQ(store.progress(3).status().code(), StatusCode::kUnavailable);
  ZooKeeperOptions quick = zk.options();
  quick.connect_timeout_ms = 500;
  EXPECT_EQ(zookeeper_config_store(quick).status().code(), StatusCode::kUnavailable);
}

// A marker whose znode does not hold a decimal uint64 is kDataLoss naming it,
// never read as a value. This test has no raw ZooKeeper client to write
// garbage with; instead a store rooted at the tenant's progress folder
// creates <folder>/tenants with no data (ZooKeeperStore::start), which the
// tenant's store sees as a marker "tenants" with an empty value.
TEST(ZooKeeperStore, AMalformedProgressMarkerIsDataLoss) {
  ZooKeeperServer zk;
  ASSERT_TRUE(zk.ok()) << zk.why();
  auto s = zookeeper_config_store(zk.options());
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  ConfigStore& store = **s;
  ASSERT_TRUE(store.publish_progress(7, "10.0.0.1:7000", 5).is_ok());
  auto planter = zookeeper_config_store(zk.options("/hyperloop/tenants/7.progress"));
  ASSERT_TRUE(planter.is_ok()) << planter.status().to_string();
  auto p = store.progress(7);
  ASSERT_EQ(p.status().code(), StatusCode::kDataLoss) << p.status().to_string();
  EXPECT_NE(p.status().message().find("/hyperloop/tenants/7.progress/tenants"), std::string::npos)
      << p.status().to_string();
  EXPECT_EQ(store.publish_progress(7, "tenants", 1).code(), StatusCode::kDataLoss) << "never written over unread";
  ASSERT_TRUE(store.remove_progress(7, "tenants").is_ok()) << "the operator's way out";
  EXPECT_EQ(store.progress(7).value(), (Markers{{"10.0.0.1:7000", 5}}));
}
#endif

}  // namespace
}  // namespace hyperloop::coord
