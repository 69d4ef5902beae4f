// failover_test.cc: fail-over across processes. A real ZooKeeper (started
// here), six hyperloop-replica daemons (a chain of three and three spares)
// and hyperloop-bank client processes committing a stream of transfers:
//   1. three times, a serving replica is SIGKILLed mid-stream: the client
//      drops it under a new epoch, commits again, and a spare joins at the
//      tail;
//   2. the client is SIGKILLed mid-stream: a standby client process, waiting
//      on the owner's ZooKeeper session, takes the tenant over once the
//      session expires, and commits;
//   3. that client (writing blind, from its own copy of the accounts) is
//      SIGSTOPped; a third takes over; the stopped one is resumed and keeps
//      issuing: it is told it was fenced and none of its later commits is
//      acknowledged or applied;
//   4. a checker process reads every account: the total is unchanged, every
//      account's last writer is an acknowledged commit (or the in-doubt one
//      a killed client left, all or nothing), none is the fenced client's.
// Each time from a kill to the first commit after it is measured (CLOCK_
// MONOTONIC, shared by every process here) and printed with p50 and max.
#include <gtest/gtest.h>
#include <signal.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "daemon_test_util.h"
#include "zookeeper_test_util.h"

namespace hyperloop::daemon_test {
namespace {

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

// key=value fields of a hyperloop-bank line after its first word.
std::map<std::string, std::string> fields(const std::string& line) {
  std::map<std::string, std::string> f;
  std::istringstream in(line);
  std::string w;
  in >> w;
  f["event"] = w;
  while (in >> w) {
    const size_t eq = w.find('=');
    if (eq != std::string::npos) f[w.substr(0, eq)] = w.substr(eq + 1);
  }
  return f;
}

// One hyperloop-bank process and what it printed.
struct Bank {
  std::unique_ptr<Process> proc;
  std::string name;
  uint64_t tag = 0;
  std::vector<std::string> lines;
  std::set<uint64_t> acked;       // writer ids of acknowledged commits
  struct Issued {
    uint32_t a = 0, b = 0;
    bool init = false;
  };
  std::map<uint64_t, Issued> issued;  // n -> accounts
  uint64_t last_issued = 0;
  std::vector<uint64_t> commit_t;      // each commit's t
  std::vector<uint64_t> failed_t;      // each "indoubt" line's t: when the client noticed a failure
  uint64_t refused = 0;                // --after-fence: transfers refused after the fence
  uint64_t ready_t = 0;
  bool fenced = false;

  uint64_t writer(uint64_t n) const { return (tag << 40) | n; }
  // Reads one line (false on timeout or exit) and records it.
  bool step(int timeout_ms, std::string* why) {
    std::string line;
    if (!proc->read_line(&line, timeout_ms, why)) return false;
    lines.push_back(line);
    auto f = fields(line);
    const std::string& e = f["event"];
    if (e == "ready") ready_t = std::stoull(f["t"]);
    if (e == "issue") {
      last_issued = std::stoull(f["n"]);
      Issued is;
      is.init = line.find(" init") != std::string::npos;
      if (!is.init) {
        is.a = uint32_t(std::stoul(f["a"]));
        is.b = uint32_t(std::stoul(f["b"]));
      }
      issued[last_issued] = is;
    }
    if (e == "commit") {
      acked.insert(writer(std::stoull(f["n"])));
      commit_t.push_back(std::stoull(f["t"]));
    }
    if (e == "outcome" && line.find("committed") != std::string::npos) acked.insert(writer(last_issued));
    if (e == "fenced") fenced = true;
    if (e == "indoubt") failed_t.push_back(std::stoull(f["t"]));
    if (e == "refused") ++refused;
    return true;
  }
  std::string tail() const {
    std::string s;
    for (size_t i = lines.size() > 30 ? lines.size() - 30 : 0; i < lines.size(); ++i) s += "    " + lines[i] + "\n";
    return s;
  }
};

std::string ms(uint64_t ns) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f ms", double(ns) / 1e6);
  return b;
}
std::string summary(std::vector<uint64_t> v) {
  std::sort(v.begin(), v.end());
  std::string s;
  for (uint64_t x : v) s += (s.empty() ? "" : ", ") + ms(x);
  return s + " (p50 " + ms(v[v.size() / 2]) + ", max " + ms(v.back()) + ")";
}

class FailoverProcessTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kTenant = 1;
  static constexpr int kDaemons = 6;

  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    watchdog_.on_hang([path = dir_.path()] {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    });
    watchdog_.phase("starting ZooKeeper");
    zk_ = std::make_unique<ZooKeeperServer>();
    ASSERT_TRUE(zk_->ok()) << "could not start ZooKeeper: " << zk_->why();
    std::string err;
    auto p = Process::spawn({HYPERLOOP_BANK_BIN, "--print-region"}, dir_.file("region.err"), &err);
    ASSERT_TRUE(p) << err;
    std::string line, why;
    ASSERT_TRUE(p->read_line(&line, 10'000, &why)) << why;
    region_ = std::stoull(line);
    for (int i = 0; i < kDaemons; ++i) {
      DaemonSpec spec;
      spec.tenants.push_back({kTenant, region_, dir_.file("d" + std::to_string(i) + ".pmem"), {}});
      daemons_.push_back(std::make_unique<Daemon>("d" + std::to_string(i), dir_.path(), spec));
      watchdog_.phase("starting daemon d" + std::to_string(i));
      ASSERT_TRUE(daemons_.back()->start());
    }
  }

  std::unique_ptr<Bank> start_bank(const std::string& owner, uint64_t tag, std::vector<std::string> extra = {}) {
    auto b = std::make_unique<Bank>();
    b->name = owner;
    b->tag = tag;
    std::vector<std::string> argv = {HYPERLOOP_BANK_BIN, "--zk", zk_->hosts(), "--owner", owner, "--tag",
                                     std::to_string(tag), "--secret", to_hex(tenant_secret(kTenant)),
                                     "--tenant", std::to_string(kTenant), "--op-timeout-ms", "100",
                                     "--probe-timeout-ms", "200", "--zk-session-ms", "1000"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::string err;
    b->proc = Process::spawn(argv, dir_.file(owner + ".stderr"), &err);
    EXPECT_TRUE(b->proc) << err;
    return b;
  }
  std::string endpoints(int from, int to) const {
    std::string s;
    for (int i = from; i < to; ++i) s += (s.empty() ? "" : ",") + daemons_[size_t(i)]->endpoint();
    return s;
  }
  // Reads lines until `until` holds (true) or 30 s pass / the bank exits (false).
  template <typename F>
  bool read_until(Bank& b, F until, std::string* why) {
    const uint64_t deadline = now_ns() + 30'000'000'000ull;
    while (!until()) {
      if (now_ns() > deadline) {
        *why = "30 s passed";
        return false;
      }
      if (!b.step(30'000, why)) return false;
    }
    return true;
  }
  std::string stderr_of(const std::string& owner) const { return read_file(dir_.file(owner + ".stderr")); }

  Watchdog watchdog_{std::chrono::seconds(240)};
  TempDir dir_;
  std::unique_ptr<ZooKeeperServer> zk_;
  size_t region_ = 0;
  std::vector<std::unique_ptr<Daemon>> daemons_;
};

TEST_F(FailoverProcessTest, SigkillOfReplicasAndOfTheClientMidStreamThenServingAgainAndAStaleClientIsFenced) {
  std::string why;
  watchdog_.phase("client a: the first 100 commits");
  auto a = start_bank("client-a", 1, {"--chain", endpoints(0, 3), "--spares", endpoints(3, 6)});
  ASSERT_TRUE(read_until(*a, [&] { return a->acked.size() >= 100; }, &why))
      << why << "\n" << a->tail() << stderr_of("client-a");

  // 1. Replicas die mid-stream: d1 (middle), then d0 (head), then d2.
  std::vector<uint64_t> replica_gap, detection, healing;
  for (int victim : {1, 0, 2}) {
    watchdog_.phase("SIGKILL of replica d" + std::to_string(victim));
    const size_t before = a->commit_t.size();
    const uint64_t killed = now_ns();
    daemons_[size_t(victim)]->process()->signal(SIGKILL);
    ASSERT_TRUE(read_until(*a, [&] {
      return a->commit_t.size() > before && a->commit_t.back() > killed &&
             std::count_if(a->lines.begin(), a->lines.end(),
                           [](const std::string& l) { return l.rfind("joined", 0) == 0; }) >= (victim == 1 ? 1 : victim == 0 ? 2 : 3);
    }, &why)) << why << "\n" << a->tail() << stderr_of("client-a");
    uint64_t first_after = 0;
    for (uint64_t t : a->commit_t)
      if (t > killed) {
        first_after = t;
        break;
      }
    replica_gap.push_back(first_after - killed);
    uint64_t noticed = 0;
    for (uint64_t t : a->failed_t)
      if (t > killed) {
        noticed = t;
        break;
      }
    ASSERT_NE(noticed, 0u) << "no failure was noticed after the kill\n" << a->tail();
    detection.push_back(noticed - killed);
    healing.push_back(first_after - noticed);
    const size_t n = a->acked.size();
    ASSERT_TRUE(read_until(*a, [&] { return a->acked.size() >= n + 50; }, &why)) << why << "\n" << a->tail();
  }

  // 2. The client dies mid-stream; a standby process, waiting on the owner's
  // ZooKeeper session, takes over once the session expires.
  watchdog_.phase("client b on standby");
  std::vector<uint64_t> client_gap;
  // b writes blind (from its own copy of the accounts) and, once fenced,
  // issues 20 more transfers as a client that ignores the error would.
  auto b = start_bank("client-b", 2, {"--standby", "--cached", "--after-fence", "20"});
  ASSERT_TRUE(read_until(*b, [&] { return !b->lines.empty(); }, &why)) << why << stderr_of("client-b");
  ASSERT_EQ(b->lines[0].rfind("standby owner=client-a", 0), 0u) << b->lines[0];
  watchdog_.phase("SIGKILL of client a, takeover by the standby b");
  const uint64_t a_killed = now_ns();
  a->proc->signal(SIGKILL);
  a->proc->wait_exit(10'000);
  while (a->step(1000, &why)) {  // what it printed before it died
  }
  ASSERT_TRUE(read_until(*b, [&] { return !b->commit_t.empty(); }, &why)) << why << "\n" << b->tail() << stderr_of("client-b");
  client_gap.push_back(b->commit_t.front() - a_killed);
  ASSERT_TRUE(read_until(*b, [&] { return b->acked.size() >= 100; }, &why)) << why << "\n" << b->tail();

  // 3. b stops (SIGSTOP: alive, silent); c takes over; b resumes and issues on.
  watchdog_.phase("SIGSTOP of client b, takeover by client c");
  b->proc->signal(SIGSTOP);
  // What b printed before it stopped is in the pipe: read it all.
  while (b->step(300, &why)) {
  }
  const size_t b_acked_before = b->acked.size();
  const uint64_t b_last_before = b->last_issued;  // in b's hands when it stopped: may be in doubt
  const uint64_t c_started = now_ns();  // b is stopped: from here c takes over
  auto c = start_bank("client-c", 3);
  ASSERT_TRUE(read_until(*c, [&] { return c->acked.size() >= 50; }, &why)) << why << "\n" << c->tail() << stderr_of("client-c");
  const uint64_t takeover_of_stopped = c->commit_t.front() - c_started;
  b->proc->signal(SIGCONT);
  watchdog_.phase("the fenced client b after SIGCONT");
  while (b->step(30'000, &why)) {
  }
  ASSERT_TRUE(b->fenced) << why << "\n" << b->tail() << stderr_of("client-b");
  EXPECT_EQ(b->refused, 20u) << b->tail();
  ASSERT_TRUE(b->proc->wait_exit(10'000));
  EXPECT_EQ(b->proc->wait_status() >> 8, 3) << b->proc->describe_exit();
  // Nothing b issued after it resumed was acknowledged (the one in its hands
  // when it stopped may have been, before c existed: it prints its commit
  // line only after it resumes).
  uint64_t b_stale_acks = 0;
  for (uint64_t n = b_last_before + 1; n <= b->last_issued; ++n) b_stale_acks += b->acked.count(b->writer(n));
  EXPECT_EQ(b_stale_acks, 0u) << b->tail();
  EXPECT_LE(b->acked.size(), b_acked_before + 1);
  EXPECT_GE(b->last_issued, b_last_before + 20) << "b issued too little after it resumed";
  ASSERT_TRUE(read_until(*c, [&] { return c->acked.size() >= 100; }, &why)) << why << "\n" << c->tail();
  c->proc->signal(SIGKILL);
  c->proc->wait_exit(10'000);
  while (c->step(1000, &why)) {  // what it printed before it died
  }

  // 4. The checker: every account, against what the clients acknowledged.
  watchdog_.phase("the checker");
  auto d = start_bank("checker", 4, {"--check"});
  ASSERT_TRUE(read_until(*d, [&] { return !d->lines.empty() && d->lines.back().rfind("total", 0) == 0; }, &why))
      << why << "\n" << d->tail() << stderr_of("checker");
  ASSERT_TRUE(d->proc->wait_exit(10'000));
  EXPECT_EQ(d->proc->wait_status() >> 8, 0) << d->tail();
  std::set<uint64_t> acked;
  for (Bank* x : {a.get(), b.get(), c.get()}) acked.insert(x->acked.begin(), x->acked.end());
  // Writers that may be present though never acknowledged: each client's last
  // issued transfer (in doubt when it was killed, stopped or fenced).
  std::map<uint64_t, Bank::Issued> doubt;
  for (auto [x, last] : {std::pair{a.get(), a->last_issued}, {b.get(), b_last_before}, {c.get(), c->last_issued}})
    if (last && !x->acked.count(x->writer(last))) doubt[x->writer(last)] = x->issued[last];
  std::map<uint32_t, uint64_t> writer_of;
  uint64_t total = 0;
  for (const std::string& l : d->lines) {
    unsigned k;
    unsigned long long bal, w;
    if (std::sscanf(l.c_str(), "account %u %llu %llu", &k, &bal, &w) != 3) continue;
    writer_of[k] = w;
    total += bal;
    EXPECT_TRUE(acked.count(w) || doubt.count(w)) << "account " << k << " holds writer " << (w >> 40) << ":"
                                                   << (w & ((1ull << 40) - 1)) << ", never acknowledged";
    if ((w >> 40) == 2) {  // b's: never one it issued after it resumed, fenced
      EXPECT_LE(w & ((1ull << 40) - 1), b_last_before) << "account " << k << " holds a write of the fenced client b";
    }
  }
  EXPECT_EQ(writer_of.size(), 16u);
  EXPECT_EQ(total, 16u * 1000);
  for (const auto& [w, is] : doubt)  // all or nothing
    if (!is.init && (writer_of[is.a] == w) != (writer_of[is.b] == w))
      ADD_FAILURE() << "the in-doubt transfer " << (w >> 40) << ":" << (w & ((1ull << 40) - 1)) << " is half there";

  std::printf("[ measured ] kill of a replica -> the client commits again: %s\n", summary(replica_gap).c_str());
  std::printf("[ measured ]   of which kill -> the client notices: %s\n", summary(detection).c_str());
  std::printf("[ measured ]   and notices -> commits again (probe, new epoch, recovery): %s\n", summary(healing).c_str());
  std::printf("[ measured ] kill of client a -> the standby b commits (ZooKeeper session expiry, %s): %s\n",
              "session timeout 1000 ms", ms(client_gap[0]).c_str());
  std::printf("[ measured ] start of client c (b stopped, alive) -> c commits: %s\n", ms(takeover_of_stopped).c_str());
  RecordProperty("replica_gap", summary(replica_gap));
  RecordProperty("replica_detection", summary(detection));
  RecordProperty("replica_healing", summary(healing));
  RecordProperty("client_gap", ms(client_gap[0]));
  RecordProperty("takeover_of_stopped", ms(takeover_of_stopped));
}

}  // namespace
}  // namespace hyperloop::daemon_test
