// hyperloop-txn-demo: bank transfers as chain-replicated ACID transactions.
//
// Three replica hosts on the software RNIC keep the tenant's store in
// persistent-memory files. For each forwarding mode the demo
//   1. opens the store (formats it) and funds 64 accounts in one transaction,
//   2. runs transfers: read two balances, write both, commit (durable on
//      every replica when commit() returns), and prints commit latency,
//   3. cuts power to every host mid-stream (unapplied commits in the log,
//      locks held), restarts the hosts on the same files and recovers,
//   4. checks that the total is unchanged, that every acknowledged transfer
//      is there, and that the replicas hold identical data.
//
// Usage: hyperloop-txn-demo [transfers]   (default 2000)
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "hyperloop/soft_rnic.h"
#include "hyperloop/txn.h"

using namespace hyperloop;

namespace {

constexpr uint32_t kTenant = 7;
constexpr uint32_t kReplicas = 3;
constexpr uint64_t kAccounts = 64;
constexpr uint64_t kInitial = 1000;
constexpr uint64_t kSlot = 64;  // one account per stripe: {balance, transfers applied}

int fail(const std::string& what, const Status& s) {
  std::printf("FAILED: %s: %s\n", what.c_str(), s.to_string().c_str());
  return 1;
}

uint64_t word(const std::vector<std::byte>& b, size_t at) {
  uint64_t v;
  std::memcpy(&v, b.data() + at, 8);
  return v;
}

// The replica side of one "boot": NICs and hosts over the region files.
struct Hosts {
  std::vector<std::unique_ptr<soft::Nic>> nics;
  std::vector<std::unique_ptr<prim::ReplicaHost>> hosts;
  std::vector<prim::ReplicaHost*> chain;

  Status boot(soft::Fabric& fabric, soft::Executor& ex, const std::string& dir, size_t region) {
    for (uint32_t i = 0; i < kReplicas; ++i) {
      HL_ASSIGN_OR_RETURN(auto nic, fabric.create_nic({.name = "replica" + std::to_string(i + 1)}));
      ex.add(*nic);
      HL_ASSIGN_OR_RETURN(auto host, prim::ReplicaHost::create(*nic));
      HL_RETURN_IF_ERROR(host->register_tenant(kTenant, region, dir + "/r" + std::to_string(i) + ".pmem"));
      chain.push_back(host.get());
      nics.push_back(std::move(nic));
      hosts.push_back(std::move(host));
    }
    return Status::ok();
  }
  void power_fail() {
    for (uint32_t i = 0; i < kReplicas; ++i) {
      hosts[i]->power_fail();
      nics[i]->crash();
    }
  }
  void shutdown(soft::Executor& ex) {
    chain.clear();
    hosts.clear();
    for (auto& n : nics) ex.remove(*n);
    nics.clear();
  }
};

int run_mode(prim::ForwardMode mode, int transfers, const std::string& dir) {
  std::printf("\n=== %s mode: 3 replicas, persistent regions in %s ===\n",
              std::string(prim::forward_mode_name(mode)).c_str(), dir.c_str());
  soft::Fabric fabric;
  soft::SingleThreadExecutor executor;
  auto client = fabric.create_nic({.name = "client"});
  if (!client) return fail("client NIC", client.status());
  executor.add(**client);

  txn::StoreOptions so;
  so.tenant = kTenant;
  so.data_size = kAccounts * kSlot;
  so.log_size = 64 << 10;
  so.stripe_bytes = kSlot;
  so.group.mode = mode;
  so.group.slots = 128;
  so.group.staging_bytes = 256 << 10;
  const size_t region = txn::Store::region_bytes(so);

  auto hosts = std::make_unique<Hosts>();
  if (auto s = hosts->boot(fabric, executor, dir, region); !s) return fail("boot replicas", s);
  auto opened = txn::Store::open(**client, hosts->chain, so);
  if (!opened) return fail("open", opened.status());
  std::unique_ptr<txn::Store> store = std::move(opened).value();

  {  // Fund every account in one transaction (64 ranges).
    txn::Transaction t = store->begin();
    for (uint64_t a = 0; a < kAccounts; ++a) {
      const uint64_t rec[2] = {kInitial, 0};
      if (auto s = t.write(a * kSlot, {reinterpret_cast<const std::byte*>(rec), 16}); !s) return fail("fund", s);
    }
    if (auto s = t.commit(); !s) return fail("fund commit", s);
  }

  std::mt19937_64 rng(2026);
  std::vector<uint64_t> applied(kAccounts, 0);  // acknowledged transfers touching each account
  std::vector<uint64_t> lat;
  uint64_t aborted = 0;
  for (int k = 0; k < transfers; ++k) {
    const uint64_t a = rng() % kAccounts, b = (a + 1 + rng() % (kAccounts - 1)) % kAccounts;
    const uint64_t t0 = monotonic_ns();
    txn::Transaction t = store->begin();
    uint64_t ra[2], rb[2];
    Status s = t.read(a * kSlot, {reinterpret_cast<std::byte*>(ra), 16});
    if (s) s = t.read(b * kSlot, {reinterpret_cast<std::byte*>(rb), 16});
    const uint64_t amount = ra[0] ? 1 + rng() % std::min<uint64_t>(ra[0], 50) : 0;
    ra[0] -= amount, ++ra[1];
    rb[0] += amount, ++rb[1];
    if (s) s = t.write(a * kSlot, {reinterpret_cast<const std::byte*>(ra), 16});
    if (s) s = t.write(b * kSlot, {reinterpret_cast<const std::byte*>(rb), 16});
    if (s) s = t.commit();
    if (s.code() == StatusCode::kAborted) {
      ++aborted;
      continue;
    }
    if (!s) return fail("transfer " + std::to_string(k), s);
    lat.push_back(monotonic_ns() - t0);
    ++applied[a], ++applied[b];
  }
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double q) { return double(lat[std::min(lat.size() - 1, size_t(q * double(lat.size())))]) / 1e3; };
  const txn::StoreStats st = store->stats();
  std::printf("transfers: %zu committed, %lu aborted; read+write+commit latency p50 %.1f us, p99 %.1f us\n",
              lat.size(), static_cast<unsigned long>(aborted), pct(0.5), pct(0.99));
  std::printf("log: %lu truncations (head writes)\n", static_cast<unsigned long>(st.truncations));

  // Power failure of every host with commits still being applied.
  std::printf("power failure of all 3 hosts, restart on the same files, recovery ...\n");
  hosts->power_fail();
  store.reset();  // the client goes too
  hosts->shutdown(executor);
  hosts = std::make_unique<Hosts>();
  if (auto s = hosts->boot(fabric, executor, dir, region); !s) return fail("reboot replicas", s);
  opened = txn::Store::open(**client, hosts->chain, so);
  if (!opened) return fail("recover", opened.status());
  store = std::move(opened).value();
  const txn::StoreStats rs = store->stats();
  std::printf("recovery: %lu log records replayed, %lu replica bytes resynced\n",
              static_cast<unsigned long>(rs.replayed_records), static_cast<unsigned long>(rs.resynced_bytes));

  std::vector<std::byte> all(kAccounts * kSlot);
  if (auto s = store->read(0, all); !s) return fail("read after recovery", s);
  uint64_t total = 0;
  for (uint64_t a = 0; a < kAccounts; ++a) {
    total += word(all, a * kSlot);
    if (word(all, a * kSlot + 8) != applied[a]) {
      std::printf("FAILED: account %lu shows %lu transfers, %lu were acknowledged\n", static_cast<unsigned long>(a),
                  static_cast<unsigned long>(word(all, a * kSlot + 8)), static_cast<unsigned long>(applied[a]));
      return 1;
    }
  }
  if (total != kAccounts * kInitial) {
    std::printf("FAILED: total %lu, want %lu\n", static_cast<unsigned long>(total),
                static_cast<unsigned long>(kAccounts * kInitial));
    return 1;
  }
  if (auto s = store->drain(); !s) return fail("drain", s);
  std::vector<std::byte> first(so.data_size), other(so.data_size);
  for (uint32_t i = 0; i < kReplicas; ++i) {
    if (auto s = hosts->hosts[i]->peek(kTenant, region - so.data_size, i ? other : first); !s)
      return fail("peek", s);
    if (i && std::memcmp(first.data(), other.data(), so.data_size) != 0) {
      std::printf("FAILED: replica %u's data differs from replica 1's\n", i + 1);
      return 1;
    }
  }
  std::printf("OK: total %lu unchanged, every acknowledged transfer present, replicas identical\n",
              static_cast<unsigned long>(total));
  store.reset();
  hosts->shutdown(executor);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int transfers = argc > 1 ? std::atoi(argv[1]) : 2000;
  if (transfers <= 0) {
    std::fprintf(stderr, "usage: %s [transfers > 0]\n", argv[0]);
    return 2;
  }
  const std::filesystem::path base = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
  int rc = 0;
  for (prim::ForwardMode mode : {prim::ForwardMode::kOffload, prim::ForwardMode::kCpuForward}) {
    const std::filesystem::path dir = base / ("hyperloop-txn-demo-" + std::to_string(::getpid()) + "-" +
                                              std::string(prim::forward_mode_name(mode)));
    std::filesystem::create_directories(dir);
    rc |= run_mode(mode, transfers, dir.string());
    std::filesystem::remove_all(dir);
  }
  std::printf(rc ? "\nhyperloop-txn-demo: FAILED\n" : "\nhyperloop-txn-demo: all checks passed\n");
  return rc;
}
