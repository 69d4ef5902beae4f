// txn_membership_sim_test.cc: deterministic simulation of a tenant whose chain
// changes under it (hyperloop/txn.h, "Membership"), over many seeds, with a
// history checker.
//
// ---- The harness (one per seed) ----------------------------------------------------------
// One soft::Fabric and one soft::ManualExecutor(seed) stepping every NIC; a
// pool of six replica hosts (DRAM regions, no agent threads: the progress
// hook runs an agent turn on every host every second step) named r0..r5; the
// tenant's record in coord::in_memory_config_store(), created by the
// "operator" with the chain r0, r1, r2. Clients are stores opened with
// membership (FailurePolicy::kReconfigure, min_replicas 2) on NICs of their
// own, each under a new owner name: opening one takes the tenant over. All
// from this thread: HYPERLOOP_SEED=<s> replays seed s alone (and prints its
// event log), HYPERLOOP_SEEDS=<n> sets how many run.
//
// ---- The workload and the events ----------------------------------------------------------
// 16 accounts of 64-byte self-checking records {balance, writer txn, key,
// check}; every transfer reads two accounts and moves an amount, so the total
// never changes. About 60 actions per seed, among which events drawn from the
// seed:
//   replica-crash   a serving replica's NIC dies for good (now, or a few
//                   hundred steps into the next commit: in doubt)
//   replace         a blank host of the pool (or a live one the chain dropped)
//                   joins at the tail (Store::add_replica)
//   client-crash    the client's NIC dies (now, or inside a commit); a new
//                   client takes the tenant over and settles the dead one's
//                   in-doubt commit with Store::outcome(its TxnId)
//   partition       the client is cut off from one or all replicas; a new
//                   client takes over; the links heal; the old client keeps
//                   committing: every one of those commits must fail, the old
//                   store must end kPermissionDenied (fenced), and none of
//                   them may be visible anywhere
//   race            two new clients open back to back; the first is fenced
//                   by the second before it commits anything
//
// ---- The history checker ---------------------------------------------------------------------
// The committed history is sequential (one live client at a time, one call
// at a time), so it is known exactly: the transactions acknowledged, in
// order, plus the in-doubt ones outcome() says committed. Checked:
//   * every read inside a transaction returns the committed record of that
//     moment (no read of a value never committed, nothing torn);
//   * an in-doubt transaction is all or nothing: after its outcome is known,
//     both of its accounts hold its records, or neither does;
//   * after every membership change and at the end: every account, read
//     through the store, holds the record of the last committed writer; the
//     total is unchanged; no account holds a record of a fenced client's
//     commit; and every serving replica's data area (read by its CPU) is the
//     committed state byte for byte;
//   * the record in the configuration store is what the store reports, its
//     epoch grew with every change, and the chain has no dead replica.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "fault_test_util.h"
#include "hyperloop/coord.h"
#include "hyperloop/primitives.h"
#include "hyperloop/soft_rnic.h"
#include "hyperloop/txn.h"
#include "soft_test_util.h"

#ifndef HYPERLOOP_MEMBERSHIP_SIM_SEEDS
#define HYPERLOOP_MEMBERSHIP_SIM_SEEDS 1000
#endif

namespace hyperloop::membership_sim {
namespace {

using fault_test::mix64;
using fault_test::replay_hint;
using fault_test::seeds_to_run;
using prim::ForwardMode;
using prim::ReplicaHost;
using soft_test::must;
using txn::Store;
using txn::StoreOptions;
using txn::Transaction;
using txn::TxnId;

constexpr uint32_t kTenant = 9;
constexpr int kPool = 6;
constexpr int kAccounts = 16;
constexpr size_t kDataSize = kAccounts * 64;
constexpr uint64_t kInitial = 1000;
constexpr uint64_t kTotal = kAccounts * kInitial;
constexpr uint64_t kAckTimeoutNs = 200'000;
constexpr uint64_t kOpTimeoutNs = 2'000'000;
constexpr uint64_t kProbeTimeoutNs = 1'000'000;
constexpr int kActions = 60;
constexpr uint64_t kMaxStepsPerSeed = 40'000'000;

struct Rec {
  uint64_t bal = 0, txn = 0;
  bool operator==(const Rec&) const = default;
};
uint64_t check_of(int k, const Rec& r) { return mix64(r.bal * 0x9E37ull ^ mix64(r.txn) ^ (uint64_t(k) << 40)); }
void encode(int k, const Rec& r, std::byte* p) {
  std::memset(p, 0, 64);
  const uint64_t w[4] = {r.bal, r.txn, uint64_t(k) + 1, check_of(k, r)};
  std::memcpy(p, w, sizeof w);
}
// A record, or nullopt if the bytes are torn or someone else's (all zeros: never written).
std::optional<Rec> decode(int k, const std::byte* p) {
  uint64_t w[4];
  std::memcpy(w, p, sizeof w);
  if (w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == 0) return Rec{};
  Rec r{w[0], w[1]};
  if (w[2] != uint64_t(k) + 1 || w[3] != check_of(k, r)) return std::nullopt;
  return r;
}

struct Totals {
  uint64_t seeds = 0, commits = 0, in_doubt = 0, in_doubt_present = 0, in_doubt_absent = 0;
  uint64_t replica_crashes = 0, replacements = 0, client_crashes = 0, partitions = 0, races = 0;
  uint64_t reconfigurations = 0, stale_attempts = 0, stale_applied = 0, fenced_stores = 0;
  uint64_t steps = 0;
};

struct SimFailure : std::exception {};

struct Client {
  std::string owner;
  std::unique_ptr<soft::Nic> nic;
  std::unique_ptr<Store> store;
};

class Sim {
 public:
  Sim(uint64_t seed, Totals& tot) : seed_(seed), tot_(tot), ex_(seed), rng_(mix64(seed ^ 0x3E3B3E3Bull)) {
    fabric_.seed(seed);
    mode_ = (seed & 1) ? ForwardMode::kCpuForward : ForwardMode::kOffload;
    opts_.tenant = kTenant;
    opts_.data_size = kDataSize;
    opts_.log_size = 8192;
    opts_.stripe_bytes = 64;
    opts_.lock_timeout_ns = 1'000'000;
    opts_.group.mode = mode_;
    opts_.group.slots = 16;
    opts_.group.rearm_batch = 4;
    opts_.group.staging_bytes = 16 << 10;
    opts_.group.op_timeout_ns = kOpTimeoutNs;
    opts_.group.clock = [ex = &ex_] { return ex->now_ns(); };
    opts_.group.progress = [this] { turn(); };
    opts_.membership.config = config_.get();
    opts_.membership.on_failure = txn::FailurePolicy::kReconfigure;
    opts_.membership.min_replicas = 2;
    opts_.membership.probe_timeout_ns = kProbeTimeoutNs;
    opts_.membership.heartbeat_interval_ns = 0;  // the manual clock: no monitor thread
    region_ = Store::region_bytes(opts_);
    data_off_ = region_ - kDataSize;
  }
  ~Sim() {
    clients_.clear();
    graveyard_.clear();
    for (auto& h : host_) h.reset();
    for (auto& n : nic_) n.reset();
    tot_.steps += ex_.steps();
  }

  bool run() {
    try {
      run_seed();
      return true;
    } catch (const SimFailure&) {
      return false;
    } catch (const std::exception& e) {
      failure_ = std::string("exception: ") + e.what();
      return false;
    }
  }
  std::string describe() const {
    return replay_hint(seed_) + ", mode " + std::string(prim::forward_mode_name(mode_));
  }
  const std::string& failure() const { return failure_; }
  const std::string& log() const { return log_; }

 private:
  [[noreturn]] void fail(const std::string& what) {
    if (failure_.empty()) failure_ = what;
    throw SimFailure();
  }
  void note(const std::string& what) { log_ += "  step " + std::to_string(ex_.steps()) + ": " + what + "\n"; }
  static std::string name(int i) { return "r" + std::to_string(i); }

  std::unique_ptr<soft::Nic> new_nic(const std::string& n) {
    soft::NicOptions no;
    no.name = n + "." + std::to_string(generation_++);
    no.ack_timeout_ns = kAckTimeoutNs;
    auto nic = must(fabric_.create_nic(no), "create_nic");
    ex_.add(*nic);
    return nic;
  }
  void turn() {
    ex_.step();
    if (++turns_ % 2 == 0)
      for (auto& h : host_)
        if (h) h->agent_poll();
    if (ex_.steps() > kMaxStepsPerSeed) {
      std::fprintf(stderr, "txn_membership_sim: %s: no end after %llu steps (a hang?)\nlog:\n%s\n",
                   describe().c_str(), (unsigned long long)ex_.steps(), log_.c_str());
      std::abort();
    }
  }

  Client& current() { return *clients_.back(); }
  // A client's store goes (its teardown must leave the tenant's chain alone);
  // its NIC stays until the end, for a fault that may still name it.
  void drop_client(std::vector<std::unique_ptr<Client>>::iterator it) {
    (*it)->store.reset();
    graveyard_.push_back(std::move((*it)->nic));
    clients_.erase(it);
  }
  Store& store() { return *current().store; }

  // A new client takes the tenant over (Store::open with a new owner).
  Client& new_client() {
    auto c = std::make_unique<Client>();
    c->owner = "client-" + std::to_string(owners_++);
    c->nic = new_nic(c->owner);
    StoreOptions o = opts_;
    o.membership.owner = c->owner;
    std::vector<ReplicaHost*> hosts;
    for (int i = 0; i < kPool; ++i) {
      hosts.push_back(host_[i].get());
      o.membership.names.push_back(name(i));
    }
    auto s = Store::open(*c->nic, hosts, o);
    if (!s.is_ok()) fail(c->owner + ": Store::open (takeover): " + s.status().to_string());
    c->store = std::move(s).value();
    note(c->owner + " took the tenant over at epoch " + std::to_string(c->store->epoch()));
    check_record("after " + c->owner + "'s takeover");
    clients_.push_back(std::move(c));
    return *clients_.back();
  }

  // ---- the history -------------------------------------------------------------------------
  // A commit is known committed: its records become the state.
  void apply(uint64_t id, int a, const Rec& ra, int b, const Rec& rb) {
    model_[a] = ra;
    model_[b] = rb;
    committed_.insert(id);
    uint64_t sum = 0;
    for (const Rec& r : model_) sum += r.bal;
    if (sum != kTotal) fail("txn " + std::to_string(id) + " changed the total to " + std::to_string(sum));
  }
  struct Doubt {
    uint64_t id;
    TxnId tid;
    int a;
    Rec ra;
    int b;
    Rec rb;
  };
  // The in-doubt commit's outcome, from `judge` (which recovered since).
  void settle(Store& judge, const std::string& when) {
    if (!doubt_) return;
    const Doubt d = *doubt_;
    doubt_.reset();
    if (d.tid.is_zero()) {  // refused before its record was issued
      ++tot_.in_doubt_absent;
      return;
    }
    auto o = judge.outcome(d.tid);
    if (!o.is_ok()) fail("outcome of in-doubt txn " + std::to_string(d.id) + " " + when + ": " + o.status().to_string());
    note("in-doubt txn " + std::to_string(d.id) + (*o ? ": committed" : ": not committed"));
    if (*o) {
      apply(d.id, d.a, d.ra, d.b, d.rb);
      ++tot_.in_doubt_present;
    } else {
      ++tot_.in_doubt_absent;
    }
  }

  // Reads every account through `s` and compares with the history; then,
  // after a drain, every serving replica's bytes.
  void check_state(Store& s, const std::string& when) {
    std::vector<std::byte> area(kDataSize);
    Status st = s.read(0, area);
    if (!st.is_ok()) fail("reading every account " + when + ": " + st.to_string());
    uint64_t sum = 0;
    for (int k = 0; k < kAccounts; ++k) {
      auto r = decode(k, area.data() + 64 * k);
      if (!r) fail("account " + std::to_string(k) + " holds a torn or foreign record " + when);
      if (stale_.count(r->txn)) fail("account " + std::to_string(k) + " holds a write of a fenced client " + when);
      if (r->txn != 0 && !committed_.count(r->txn))
        fail("account " + std::to_string(k) + " holds txn " + std::to_string(r->txn) + ", never committed, " + when);
      if (!(*r == model_[k]))
        fail("account " + std::to_string(k) + " holds txn " + std::to_string(r->txn) + " balance " +
             std::to_string(r->bal) + " " + when + "; the last committed writer is txn " +
             std::to_string(model_[k].txn) + " balance " + std::to_string(model_[k].bal));
      sum += r->bal;
    }
    if (initialized_ && sum != kTotal) fail("the total is " + std::to_string(sum) + " " + when);
    st = s.drain();
    if (!st.is_ok()) fail("drain " + when + ": " + st.to_string());
    std::vector<std::byte> want(kDataSize), got(kDataSize);
    for (int k = 0; k < kAccounts; ++k)
      if (model_[k].txn || model_[k].bal) encode(k, model_[k], want.data() + 64 * k);
    for (const auto& e : s.membership().chain) {
      if (e.state != coord::ReplicaState::kServing) continue;
      const int i = e.endpoint[1] - '0';
      if (dead_[i]) fail("the chain " + when + " has dead replica " + e.endpoint + " serving");
      must(host_[i]->peek(kTenant, data_off_, got), "peek");
      if (got != want) fail("serving replica " + e.endpoint + "'s data area differs from the history " + when);
    }
  }
  // The record is what the current store reports; epochs only grow.
  void check_record(const std::string& when) {
    auto v = config_->read(kTenant);
    if (!v.is_ok()) fail("reading the record " + when + ": " + v.status().to_string());
    if (v->config.epoch <= last_epoch_) fail("the record's epoch did not grow " + when);
    last_epoch_ = v->config.epoch;
  }

  // ---- the workload -------------------------------------------------------------------------
  // One transfer on `c`. Returns its status; the history follows.
  Status transfer(Client& c, bool stale) {
    const int a = int(rng_() % kAccounts);
    int b = int(rng_() % (kAccounts - 1));
    if (b >= a) ++b;
    const uint64_t id = next_id_++;
    Transaction t = c.store->begin();
    std::byte buf[64];
    Rec ra, rb;
    for (int k : {a, b}) {
      Status s = t.read(uint64_t(k) * 64, buf);
      if (!s.is_ok()) return s;
      auto r = decode(k, buf);
      if (!r) fail("txn " + std::to_string(id) + " read a torn record of account " + std::to_string(k));
      if (!stale && !(*r == model_[k]))
        fail("txn " + std::to_string(id) + " read account " + std::to_string(k) + " as txn " + std::to_string(r->txn) +
             ", the committed writer is txn " + std::to_string(model_[k].txn));
      (k == a ? ra : rb) = *r;
    }
    const uint64_t amount = ra.bal ? rng_() % (ra.bal + 1) : 0;
    ra = {ra.bal - amount, id};
    rb = {rb.bal + amount, id};
    encode(a, ra, buf);
    (void)t.write(uint64_t(a) * 64, buf);
    encode(b, rb, buf);
    (void)t.write(uint64_t(b) * 64, buf);
    if (stale) stale_.insert(id);
    const Status s = t.commit();
    if (stale) return s;
    if (s.is_ok()) {
      apply(id, a, ra, b, rb);
      ++tot_.commits;
    } else if (s.code() != StatusCode::kAborted) {
      if (doubt_) fail("a second commit in doubt before the first was settled");
      doubt_ = Doubt{id, t.id(), a, ra, b, rb};
      ++tot_.in_doubt;
      note("txn " + std::to_string(id) + " in doubt: " + s.to_string());
    }
    return s;
  }
  void initialize() {
    Transaction t = store().begin();
    std::byte buf[64];
    const uint64_t id = next_id_++;
    for (int k = 0; k < kAccounts; ++k) {
      encode(k, {kInitial, id}, buf);
      (void)t.write(uint64_t(k) * 64, buf);
    }
    const Status s = t.commit();
    if (!s.is_ok()) fail("the first transaction: " + s.to_string());
    for (auto& r : model_) r = {kInitial, id};
    committed_.insert(id);
    initialized_ = true;
  }
  // Commits until one succeeds (the store reconfigures after a failure);
  // settles an in-doubt one on the way.
  void commit_one(const std::string& why) {
    for (int attempt = 0; attempt < 6; ++attempt) {
      const Status s = transfer(current(), false);
      if (doubt_ && store().healthy()) settle(store(), "after " + why);
      if (s.is_ok()) return;
      if (s.code() == StatusCode::kAborted) continue;
      if (!store().healthy()) fail("the store did not heal after " + why + ": " + s.to_string());
    }
    fail("no commit succeeded after " + why);
  }

  int serving_count() {
    int n = 0;
    for (const auto& e : store().membership().chain) n += e.state == coord::ReplicaState::kServing;
    return n;
  }
  std::vector<int> serving() {
    std::vector<int> v;
    for (const auto& e : store().membership().chain)
      if (e.state == coord::ReplicaState::kServing) v.push_back(e.endpoint[1] - '0');
    return v;
  }

  bool is_serving(int i) {
    const auto s = serving();
    return std::find(s.begin(), s.end(), i) != s.end();
  }

  // ---- the events ---------------------------------------------------------------------------
  void crash_replica() {
    auto s = serving();
    if (s.size() < 3) return;  // min_replicas 2: keep one to spare
    const int i = s[rng_() % s.size()];
    ++tot_.replica_crashes;
    bool fired = false;
    if (rng_() % 2) {
      note("replica " + name(i) + " crashes inside the next commit");
      ex_.at_step(ex_.steps() + 50 + rng_() % 600, [this, i, &fired] {
        nic_[i]->crash();
        fired = true;
      });
      commit_one("the crash of " + name(i));
      while (!fired) turn();  // the commit may have finished first
    } else {
      note("replica " + name(i) + " crashes");
      nic_[i]->crash();
    }
    dead_[i] = true;
    // Commits fail (one in doubt) until the store has dropped the replica.
    while (is_serving(i) || !store().healthy())
      commit_one("the crash of " + name(i));
    commit_one("the crash of " + name(i));
    check_record("after dropping " + name(i));
    check_state(store(), "after the crash of " + name(i));
  }
  void replace() {
    if (serving_count() >= 3) return;
    std::vector<int> candidates;
    auto s = serving();
    for (int i = 0; i < kPool; ++i)
      if (!dead_[i] && std::find(s.begin(), s.end(), i) == s.end()) candidates.push_back(i);
    if (candidates.empty()) return;
    const int i = candidates[rng_() % candidates.size()];
    note(name(i) + " joins at the tail");
    const Status j = store().add_replica(name(i), host_[i].get());
    if (!j.is_ok()) fail("add_replica(" + name(i) + "): " + j.to_string());
    ++tot_.replacements;
    check_state(store(), "after " + name(i) + " joined");
  }
  void crash_client() {
    ++tot_.client_crashes;
    Client& old = current();
    if (rng_() % 2) {
      note(old.owner + " crashes inside a commit");
      ex_.at_step(ex_.steps() + 20 + rng_() % 400, [n = old.nic.get()] { n->crash(); });
      (void)transfer(old, false);
    } else {
      note(old.owner + " crashes");
    }
    old.nic->crash();
    old.store.reset();
    Client& next = new_client();
    settle(*next.store, "after " + old.owner + "'s crash");
    check_state(*next.store, "after the takeover from " + old.owner);
  }
  // The old client is cut off; a new one takes over; the links heal; the old
  // one keeps committing and must be refused everywhere.
  void partition() {
    ++tot_.partitions;
    Client& old = current();
    auto s = serving();
    std::vector<int> cut;
    if (rng_() % 2)
      cut = s;
    else
      cut = {s[rng_() % s.size()]};
    for (int i : cut) fabric_.set_link(*old.nic, *nic_[i], false);
    note(old.owner + " cut off from " + std::to_string(cut.size()) + " replicas");
    if (rng_() % 2) {
      // It commits first: a client cut off from every replica fails (in
      // doubt) and cannot reconfigure; one cut off from a middle replica
      // only (a link the chain's data path does not use) may well succeed;
      // otherwise its reconfiguration drops the replicas it cannot reach.
      const Status st = transfer(old, false);
      if (st.is_ok() && cut.size() == s.size()) fail("a commit of a client cut off from every replica succeeded");
    }
    old.store->poll();
    Client& next = new_client();
    settle(*next.store, "after the takeover from the cut-off " + old.owner);
    for (int i : cut) fabric_.set_link(*old.nic, *nic_[i], true);
    note("links healed");
    for (int k = 0; k < 4; ++k) {
      ++tot_.stale_attempts;
      const Status st = transfer(old, true);
      if (st.is_ok()) {
        ++tot_.stale_applied;
        fail("a commit of the fenced " + old.owner + " succeeded");
      }
    }
    const Status last = transfer(old, true);
    ++tot_.stale_attempts;
    if (last.code() != StatusCode::kPermissionDenied)
      fail("the fenced " + old.owner + " is not told so: " + last.to_string());
    ++tot_.fenced_stores;
    check_state(*next.store, "after the fenced client's attempts");
    // The fenced store goes (its teardown must leave the new chain alone).
    for (auto it = clients_.begin(); it != clients_.end(); ++it)
      if (it->get() == &old) {
        drop_client(it);
        break;
      }
    check_state(store(), "after the fenced store's teardown");
  }
  void race() {
    ++tot_.races;
    Client& first = new_client();
    Client& second = new_client();
    const Status s = transfer(first, true);
    ++tot_.stale_attempts;
    if (s.is_ok()) fail("the client that lost the race committed");
    if (first.store->reconfigure().code() != StatusCode::kPermissionDenied)
      fail("the client that lost the race is not fenced");
    ++tot_.fenced_stores;
    settle(*second.store, "after the race");
    check_state(*second.store, "after the race");
  }

  void run_seed() {
    for (int i = 0; i < kPool; ++i) {
      nic_[i] = new_nic(name(i));
      host_[i] = must(ReplicaHost::create(*nic_[i], {.agent_thread = false}), "ReplicaHost::create");
      must(host_[i]->register_tenant(kTenant, region_), "register_tenant");
    }
    coord::TenantConfig first;
    first.epoch = 1;
    for (int i = 0; i < 3; ++i) first.chain.push_back({name(i), coord::ReplicaState::kServing});
    must(config_->create(kTenant, first), "create the record");
    last_epoch_ = 1;
    new_client();
    initialize();
    for (int action = 0; action < kActions; ++action) {
      const uint64_t r = rng_() % 100;
      if (r < 6)
        crash_replica();
      else if (r < 12)
        replace();
      else if (r < 16)
        crash_client();
      else if (r < 19)
        partition();
      else if (r < 21)
        race();
      else {
        const Status s = transfer(current(), false);
        if (!s.is_ok() && s.code() != StatusCode::kAborted) fail("a commit with no fault: " + s.to_string());
      }
      if (rng_() % 4 == 0)
        for (uint64_t k = rng_() % 64; k > 0; --k) turn();
      // Clients fenced by a race are dropped now and then.
      while (clients_.size() > 1 && rng_() % 2) drop_client(clients_.begin());
    }
    if (doubt_) settle(store(), "at the end");
    check_state(store(), "at the end");
    tot_.reconfigurations += store().stats().reconfigurations;
    ++tot_.seeds;
  }

  uint64_t seed_;
  Totals& tot_;
  soft::Fabric fabric_;
  soft::ManualExecutor ex_;
  std::mt19937_64 rng_;
  ForwardMode mode_;
  std::unique_ptr<coord::ConfigStore> config_ = coord::in_memory_config_store();
  StoreOptions opts_;
  size_t region_ = 0;
  uint64_t data_off_ = 0;
  uint64_t turns_ = 0, generation_ = 0;
  std::array<std::unique_ptr<soft::Nic>, kPool> nic_;
  std::array<std::unique_ptr<ReplicaHost>, kPool> host_;
  std::array<bool, kPool> dead_{};
  std::vector<std::unique_ptr<Client>> clients_;  // the current one last
  std::vector<std::unique_ptr<soft::Nic>> graveyard_;  // NICs of dropped clients: faults may still name them
  int owners_ = 0;

  std::array<Rec, kAccounts> model_{};
  std::set<uint64_t> committed_, stale_;
  std::optional<Doubt> doubt_;
  bool initialized_ = false;
  uint64_t next_id_ = 1;
  uint64_t last_epoch_ = 0;
  std::string failure_, log_;
};

TEST(TxnMembershipSimTest, ReplicaAndClientFailuresTakeoversAndPartitionsKeepTheHistorySerializable) {
  const bool replay = std::getenv("HYPERLOOP_SEED") != nullptr;
  Totals tot;
  int failures = 0;
  const auto start = std::chrono::steady_clock::now();
  for (uint64_t seed : seeds_to_run(0x3E3B000, HYPERLOOP_MEMBERSHIP_SIM_SEEDS)) {
    bool ok;
    std::string failure, log, desc;
    {
      Sim sim(seed, tot);
      ok = sim.run();
      failure = sim.failure();
      log = sim.log();
      desc = sim.describe();
    }
    if (!ok) {
      ADD_FAILURE() << "membership simulation failed: " << failure << "\n  " << desc << "\n  log:\n" << log;
      if (++failures == 10) break;
    } else if (replay) {
      std::printf("%s\nlog:\n%s", desc.c_str(), log.c_str());
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "txn_membership_sim: %llu seeds in %.1f s, %llu steps; %llu commits, %llu in doubt (%llu committed, %llu not); "
      "%llu replica crashes, %llu replacements, %llu client crashes, %llu partitions, %llu races, "
      "%llu reconfigurations; fenced clients: %llu stores, %llu commits attempted, %llu applied\n",
      (unsigned long long)tot.seeds, secs, (unsigned long long)tot.steps, (unsigned long long)tot.commits,
      (unsigned long long)tot.in_doubt, (unsigned long long)tot.in_doubt_present,
      (unsigned long long)tot.in_doubt_absent, (unsigned long long)tot.replica_crashes,
      (unsigned long long)tot.replacements, (unsigned long long)tot.client_crashes, (unsigned long long)tot.partitions,
      (unsigned long long)tot.races, (unsigned long long)tot.reconfigurations, (unsigned long long)tot.fenced_stores,
      (unsigned long long)tot.stale_attempts, (unsigned long long)tot.stale_applied);
  std::fflush(stdout);
  EXPECT_EQ(tot.stale_applied, 0u);
  if (!replay && failures == 0 && tot.seeds >= 100) {
    EXPECT_GT(tot.replica_crashes, 0u);
    EXPECT_GT(tot.replacements, 0u);
    EXPECT_GT(tot.client_crashes, 0u);
    EXPECT_GT(tot.partitions, 0u);
    EXPECT_GT(tot.races, 0u);
    EXPECT_GT(tot.in_doubt_present, 0u) << "no in-doubt commit ever turned out committed";
    EXPECT_GT(tot.in_doubt_absent, 0u) << "no in-doubt commit ever turned out not committed";
    EXPECT_GT(tot.stale_attempts, 0u);
  }
}

}  // namespace
}  // namespace hyperloop::membership_sim
