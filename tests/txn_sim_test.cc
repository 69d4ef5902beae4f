// txn_sim_test.cc: deterministic simulation of the transactional store
// (hyperloop/txn.h) over many seeds, with random transactions and random faults.
//
// ---- The harness (one per seed) ----------------------------------------------------------
// One soft::Fabric, one soft::ManualExecutor(seed) stepping every NIC, a client
// NIC and three replica NICs, a prim::ReplicaHost per replica NIC without an
// agent thread, the tenant registered over a pmem file (fault_test::TempDir, a
// tmpfs) with Store::region_bytes(options) bytes. The store's clock is the
// executor's virtual time; its progress hook takes one executor step and, every
// second step, one agent turn on every host that has power (what
// prim_test::Cluster::turn does). Everything is driven from this thread, so a
// seed replays exactly: HYPERLOOP_SEED=<s> runs seed s alone, HYPERLOOP_SEEDS=<n>
// sets how many run (default HYPERLOOP_TXN_SIM_SEEDS from tests/CMakeLists.txt).
// Per seed: forwarding mode by parity (even: offload, odd: CPU forwarding), a
// log of 4, 8, 12 or 16 KiB (small, so the ring wraps, fills and is truncated
// many times within a seed), reads from the tail or from another chain
// position, and 1 to 3 transactions open at once. About 240 workload actions
// (some 60 commits) per seed; ~30 ms of CPU per seed in a RelWithDebInfo build.
//
// ---- The data -------------------------------------------------------------------------------
// A 4 KiB data area in 64-byte stripes: 16 accounts of 64 bytes at [0, 1 KiB),
// nothing at [1 KiB, 2 KiB) (must stay zero), 4 blobs of 512 bytes (8 stripes
// each) at [2 KiB, 4 KiB). Every key holds a self-checking record: {balance,
// seq, txn, key|magic, filler derived from them, checksum}, so a torn or
// misplaced record is recognized; a key never written is all zeros. Every
// write of a key sets seq = (seq read) + 1 and txn = the writer's id. The
// first transaction gives every account 1000; from then on the money (sum of
// the account balances) must never change.
//
// ---- The workload ---------------------------------------------------------------------------
// Transactions of five kinds: transfers (read two accounts, move an amount),
// multi-account redistributions (3-4 accounts, sometimes a blob too), blob
// rewrites (8 stripes, sometimes with an account), big ones (2-3 blobs and 1-2
// accounts: records of up to 1.8 KiB, so the log fills up), and scans (read
// every account, in chunks of 1 to 16 stripes per read call; then drop the
// transaction, commit it read-only, or "touch" one account and commit; a
// commit validates the whole read set). Half of the accounts picked are four
// "hot" ones, so open transactions collide. Up to three are
// open at once and advanced in random order one read or one commit at a time
// (begin T1, read, begin T2, read, commit T2, commit T1 ...), so conflicting
// interleavings happen. Writes are sometimes split in two calls or preceded by
// a bogus version of the same record (the later write must win), sometimes
// read back in the same transaction (read-your-writes); some transactions are
// aborted or simply dropped. In between: Store::read of a key, poll(), drain()
// with a byte-for-byte check of every replica, bursts of big transactions
// back to back, and idle executor steps.
//
// ---- The model and the checks ---------------------------------------------------------------
// The store is synchronous per call, so the test knows the committed state at
// every moment: per key the record of the last acknowledged (or resolved
// in-doubt) writer, a version counter, and the history seq -> txn of
// acknowledged writes (the per-key history).
//   * Every read returns exactly the committed record at the time of the read
//     (or the transaction's own write): never torn, never uncommitted, never
//     stale. A scan that no commit overlapped sums to the constant total.
//   * A commit that returns OK must not conflict (no key it read changed since
//     it read it: serializability in commit order); it is then applied to the
//     model, where a seq acknowledged twice for a key is a lost update and
//     the total must be unchanged.
//   * A commit that conflicts must return kAborted; one that does not must
//     commit (kAborted then needs a fault or a recovery since the reads). A
//     re-read of a changed key must abort, of an unchanged one return the
//     same record.
//   * kUnavailable / kDeadlineExceeded / kDataLoss are allowed only after a
//     fault fired; from commit() they make the transaction IN DOUBT.
//   * After every recovery (Store::recover, or Store::open for a new client)
//     every key is read through a transaction (the whole data area, zero gap
//     included): the in-doubt transaction, if any, must be entirely present
//     (each of its keys holds its record) or entirely absent (each key holds
//     the committed record); a conflicting one must be absent. Then every key
//     must equal the model exactly: every acknowledged transaction present
//     (final seq = the last acknowledged one), nothing else (the final
//     (seq, txn) is an acknowledged or in-doubt writer's), all-or-nothing
//     across keys; the total must hold, and every replica's data area (read by its
//     CPU: ReplicaHost::peek) must equal the model's bytes, with every lock
//     word unlocked and the lock tables identical.
//   * At the end of a seed: faults healed and recovered, drain(), the same
//     checks; and in some seeds a power failure of every host after the drain
//     and a cold restart (new client, Store::open) with the same checks.
//
// ---- The faults -------------------------------------------------------------------------------
// 1 or 2 per seed (none in about 1 seed of 20), each at a random executor step
// within 1,500 steps after a random point of the workload, or within 1,200
// steps after the start of the first commit after such a point (the commit
// point, the apply and the truncation are narrow windows), or, for a second
// fault, within 1,000 steps after the start of the next recovery (the first
// open for a first fault):
//   power-one     one replica loses power (ReplicaHost::power_fail + NIC crash);
//                 restarted as a new NIC and host over the same file
//   power-all     every replica loses power; all restarted from their files
//   nic-crash     one replica's NIC dies, the host keeps its memory; the new
//                 host starts from that memory (copied into the file)
//   replica-kill  one replica's NIC dies and its process restarts from the
//                 file alone (unflushed bytes lost, no power failure)
//   link-cut      a link the chain uses (client-R0, R0-R1, R1-R2, R2-client,
//                 client-R1) is cut; healed before the recovery
//   lossy-link    a chain link drops packets (RC retransmission) for a while
//   client-crash  the client NIC dies: its transactions and the Store are
//                 dropped, a new client NIC opens the store again
// Fault callbacks inside the executor only crash, cut or power-fail; the test
// loop notices the error, restarts what died (old hosts and NICs are kept until
// the recovery succeeded), heals links and recovers. A fault during recovery
// makes that recovery fail (it must not fail otherwise) and it is run again.
//
// On a failure the seed, its replay hint, its parameters and the log of faults
// and recoveries are printed (HYPERLOOP_SEED=<s> prints the log even when the
// seed passes). A seed taking absurdly many executor steps (a hang) aborts the
// process with the same information; a crash (signal) prints the seed first.
// At the end one line sums up seeds, commits, aborts, in-doubt outcomes,
// faults by kind, recoveries and the store's counters; over many seeds the
// test also requires that every fault kind fired, that conflicts aborted, that
// in-doubt commits turned out both present and absent, and that recoveries
// replayed records and resynchronized replicas (or the run proved little).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "fault_test_util.h"
#include "hyperloop/pmem.h"
#include "hyperloop/primitives.h"
#include "hyperloop/soft_rnic.h"
#include "hyperloop/txn.h"
#include "soft_test_util.h"

#ifndef HYPERLOOP_TXN_SIM_SEEDS
#define HYPERLOOP_TXN_SIM_SEEDS 1000
#endif

namespace hyperloop::txn_sim {
namespace {

using fault_test::mix64;
using fault_test::replay_hint;
using fault_test::seeds_to_run;
using fault_test::TempDir;
using prim::ForwardMode;
using prim::ReplicaHost;
using soft_test::must;
using txn::Store;
using txn::StoreOptions;
using txn::Transaction;

// ---- sizes and timing -------------------------------------------------------------------------
constexpr uint32_t kTenant = 7;
constexpr uint32_t kReplicas = 3;
constexpr size_t kDataSize = 4096;
constexpr uint32_t kStripe = 64;
constexpr size_t kStripes = kDataSize / kStripe;
constexpr int kAccounts = 16;
constexpr int kBlobs = 4;
constexpr int kKeys = kAccounts + kBlobs;
constexpr uint64_t kAccountBytes = 64;
constexpr uint64_t kBlobBytes = 512;
constexpr uint64_t kGapBegin = kAccounts * kAccountBytes;  // [1 KiB, 2 KiB): never written
constexpr uint64_t kBlobBase = 2048;
constexpr uint64_t kInitialBalance = 1000;
constexpr uint64_t kTotal = kAccounts * kInitialBalance;
constexpr uint64_t kRecMagic = 0x7853494dull;  // "MISx"

constexpr uint64_t kAckTimeoutNs = 200'000;    // NIC transport retry timer: 2,000 steps
constexpr uint64_t kOpTimeoutNs = 2'000'000;   // a group operation fails after 20,000 steps
constexpr uint64_t kLockTimeoutNs = 1'000'000;
constexpr int kActions = 240;                  // workload actions per seed
constexpr uint64_t kFaultSpanSteps = 1500;     // a fault lands within this many steps of its point
constexpr uint64_t kRecoverySpanSteps = 1000;  // ... or of a recovery's start (one takes ~300-600)
constexpr uint64_t kCommitSpanSteps = 1200;     // ... or of a commit's start (and its apply)
constexpr uint64_t kMaxStepsPerSeed = 40'000'000;  // beyond this a seed is hung

uint64_t key_off(int k) {
  return k < kAccounts ? uint64_t(k) * kAccountBytes : kBlobBase + uint64_t(k - kAccounts) * kBlobBytes;
}
uint64_t key_len(int k) { return k < kAccounts ? kAccountBytes : kBlobBytes; }
bool is_account(int k) { return k < kAccounts; }

// ---- self-checking records ----------------------------------------------------------------------
struct Rec {
  uint64_t bal = 0, seq = 0, txn = 0;
  bool operator==(const Rec&) const = default;
};
std::string show(const Rec& r) {
  return "{bal " + std::to_string(r.bal) + ", seq " + std::to_string(r.seq) + ", txn " + std::to_string(r.txn) + "}";
}

void encode(int k, const Rec& r, std::byte* out) {
  const size_t n = key_len(k) / 8;
  if (r == Rec{}) {
    std::memset(out, 0, n * 8);
    return;
  }
  uint64_t w[kBlobBytes / 8];
  w[0] = r.bal;
  w[1] = r.seq;
  w[2] = r.txn;
  w[3] = (kRecMagic << 32) | uint64_t(k);
  for (size_t i = 4; i + 1 < n; ++i) w[i] = mix64((r.txn << 24) ^ (r.seq << 8) ^ (uint64_t(k) << 52) ^ i);
  uint64_t c = 0xC4EC5;
  for (size_t i = 0; i + 1 < n; ++i) c = mix64(c ^ w[i]);
  w[n - 1] = c;
  std::memcpy(out, w, n * 8);
}
std::vector<std::byte> encoded(int k, const Rec& r) {
  std::vector<std::byte> b(key_len(k));
  encode(k, r, b.data());
  return b;
}
// False if the bytes are not exactly a record of key k (torn, misplaced, garbage).
bool decode(int k, const std::byte* p, Rec& r) {
  uint64_t w[3];
  std::memcpy(w, p, sizeof w);
  r = {w[0], w[1], w[2]};
  std::byte buf[kBlobBytes];
  encode(k, r, buf);
  return std::memcmp(buf, p, key_len(k)) == 0;
}

// ---- faults --------------------------------------------------------------------------------------
enum class FaultKind : int {
  kPowerOne, kPowerAll, kNicCrash, kReplicaKill, kLinkCut, kLossyLink, kClientCrash, kSlowLink, kCount
};
constexpr int kFaultKinds = int(FaultKind::kCount);
const char* fault_name(FaultKind f) {
  switch (f) {
    case FaultKind::kPowerOne: return "power-one";
    case FaultKind::kPowerAll: return "power-all";
    case FaultKind::kNicCrash: return "nic-crash";
    case FaultKind::kReplicaKill: return "replica-kill";
    case FaultKind::kLinkCut: return "link-cut";
    case FaultKind::kLossyLink: return "lossy-link";
    case FaultKind::kClientCrash: return "client-crash";
    case FaultKind::kSlowLink: return "slow-link";
    case FaultKind::kCount: break;
  }
  return "?";
}

struct PlannedFault {
  FaultKind kind = FaultKind::kPowerOne;
  int action = 0;              // armed just before this workload action ...
  bool in_recovery = false;    // ... or when the next recovery starts
  bool at_commit = false;      // ... or when the first commit after `action` starts
  uint64_t delay = 0;          // steps after arming
  int replica = 0;             // target replica (one-replica kinds)
  int link = 0;                // link-cut / lossy-link: which link (see Sim::link_ends)
  double drop = 0;             // lossy-link
  uint64_t delay_ns = 0;       // slow-link: every packet takes this long
  bool armed = false, fired = false;
};

// ---- totals over all seeds ---------------------------------------------------------------------------
struct Totals {
  uint64_t seeds = 0, commits = 0, aborts = 0, conflict_aborts = 0, stale_aborts = 0, fault_aborts = 0;
  uint64_t in_doubt = 0, in_doubt_applied = 0, in_doubt_absent = 0;
  uint64_t reads = 0, scans = 0, readonly_commits = 0, consistent_scans = 0, rereads = 0, own_reads = 0;
  uint64_t recoveries = 0, failed_recoveries = 0, faults_in_recovery = 0, cold_restarts = 0, checkpoints = 0;
  uint64_t faults_fired[kFaultKinds] = {};
  uint64_t truncations = 0, replayed = 0, resynced = 0, lock_waits = 0, read_retries = 0;
  uint64_t steps = 0, commit_steps = 0;
  uint64_t offload_seeds = 0, cpu_seeds = 0;
  uint64_t torn_words = 0;  // unflushed words power failures kept (tearing)
};

struct SimFailure : std::exception {};

// ---- naming the seed when the process dies ------------------------------------------------------
// A crash inside the store (a segfault, an assertion) cannot be reported by
// the test loop: a handler prints the seed that was running, then lets the
// previous handler (the default, or a sanitizer's) do its work.
char g_crash_note[160];
struct sigaction g_previous[65];
void on_fatal_signal(int sig) {
  if (g_crash_note[0]) {
    ssize_t ignored = ::write(2, g_crash_note, std::strlen(g_crash_note));
    (void)ignored;
  }
  ::sigaction(sig, &g_previous[sig], nullptr);
  if (sig == SIGABRT) ::raise(sig);  // else the faulting instruction runs again under the previous handler
}
void install_crash_note() {
  static bool installed = false;
  if (installed) return;
  installed = true;
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) {
    struct sigaction sa {};
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(sig, &sa, &g_previous[sig]);
  }
}
void set_crash_note(uint64_t seed) {
  std::snprintf(g_crash_note, sizeof g_crash_note,
                "\ntxn_sim_test: died during seed %llu (replay alone: HYPERLOOP_SEED=%llu)\n",
                (unsigned long long)seed, (unsigned long long)seed);
}

// ---- kinds of transactions -----------------------------------------------------------------------------
enum class Kind { kInit, kTransfer, kMulti, kBlob, kBig, kScan };
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kInit: return "init";
    case Kind::kTransfer: return "transfer";
    case Kind::kMulti: return "multi";
    case Kind::kBlob: return "blob";
    case Kind::kBig: return "big";
    case Kind::kScan: return "scan";
  }
  return "?";
}

// One logical transaction of the workload.
struct LTxn {
  uint64_t id = 0;
  Kind kind = Kind::kTransfer;
  std::vector<int> keys;       // read in this order, then (some) written
  size_t next = 0;             // keys[0, next) are read
  std::vector<Rec> got;        // what each read returned
  std::vector<uint64_t> ver;   // the model version of each key when read
  uint64_t epoch = 0;          // recoveries so far when it began
  Transaction t;
};

struct InDoubt {
  uint64_t id = 0;
  bool conflict = false;
  std::vector<std::pair<int, Rec>> writes;
};

// ================================================================================================
// One seed.
// ================================================================================================
class Sim {
 public:
  Sim(uint64_t seed, Totals& totals)
      : seed_(seed), tot_(totals), ex_(seed), rng_(mix64(seed)), frng_(mix64(seed ^ 0xFA17FA17ull)) {
    fabric_.seed(seed);
    mode_ = (seed & 1) ? ForwardMode::kCpuForward : ForwardMode::kOffload;
    static constexpr size_t kLogSizes[] = {4096, 8192, 8192, 12288, 16384};
    opts_.tenant = kTenant;
    opts_.data_size = kDataSize;
    opts_.log_size = kLogSizes[rng_() % 5];
    opts_.stripe_bytes = kStripe;
    opts_.lock_timeout_ns = kLockTimeoutNs;
    opts_.read_replica = rng_() % 10 < 7 ? -1 : int(rng_() % kReplicas);
    opts_.group.mode = mode_;
    opts_.group.slots = 32;
    opts_.group.rearm_batch = 8;
    opts_.group.staging_bytes = 64 << 10;
    opts_.group.op_timeout_ns = kOpTimeoutNs;
    opts_.group.clock = [ex = &ex_] { return ex->now_ns(); };
    opts_.group.progress = [this] { turn(); };
    max_open_ = 1 + int(rng_() % 3);
    cold_restart_ = rng_() % 4 == 0;
    region_ = Store::region_bytes(opts_);
    data_off_ = region_ - kDataSize;  // the layout of hyperloop/txn.h
    lock_off_ = 4096 + opts_.log_size;
    for (int k = 0; k < kKeys; ++k) model_[k] = {};
    (mode_ == ForwardMode::kOffload ? tot_.offload_seeds : tot_.cpu_seeds)++;
  }

  ~Sim() {
    open_.clear();
    harvest_stats();
    store_.reset();
    for (auto& h : host_) h.reset();
    graveyard_hosts_.clear();
    for (auto& n : nic_) n.reset();
    graveyard_nics_.clear();
    client_.reset();
    tot_.steps += ex_.steps();
  }

  std::string describe() const {
    std::string s = replay_hint(seed_) + ", mode " + std::string(prim::forward_mode_name(mode_)) + ", log_size " +
                    std::to_string(opts_.log_size) + ", read_replica " + std::to_string(opts_.read_replica) +
                    ", open " + std::to_string(max_open_) + (cold_restart_ ? ", cold restart" : "");
    return s;
  }
  const std::string& failure() const { return failure_; }
  const std::string& log() const { return log_; }

  // Runs the seed; false (failure() says why) if a check failed.
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

 private:
  // ---- the cluster -----------------------------------------------------------------------------
  std::unique_ptr<soft::Nic> new_nic(const std::string& name) {
    soft::NicOptions no;
    no.name = name + "." + std::to_string(generation_++);
    no.ack_timeout_ns = kAckTimeoutNs;
    auto nic = must(fabric_.create_nic(no), "create_nic");
    ex_.add(*nic);
    return nic;
  }
  void make_replica(int i) {
    nic_[i] = new_nic("r" + std::to_string(i));
    host_[i] = must(ReplicaHost::create(*nic_[i], {.agent_thread = false}), "ReplicaHost::create");
    must(host_[i]->register_tenant(kTenant, region_, path_[i]), "register_tenant");
    power_lost_[i] = nic_dead_[i] = keep_memory_[i] = false;
  }
  std::vector<ReplicaHost*> hosts() const {
    std::vector<ReplicaHost*> v;
    for (auto& h : host_) v.push_back(h.get());
    return v;
  }

  // The progress hook: one executor step; every second one an agent turn on
  // every host that has power.
  void turn() {
    ex_.step();
    if (++turns_ % 2 == 0)
      for (uint32_t i = 0; i < kReplicas; ++i)
        if (host_[i] && !power_lost_[i]) host_[i]->agent_poll();
    if (ex_.steps() > kMaxStepsPerSeed) {
      std::fprintf(stderr,
                   "txn_sim_test: %s: no end after %llu executor steps (a hang?)\nfault log:\n%s\n"
                   "(the test process aborts)\n",
                   describe().c_str(), (unsigned long long)ex_.steps(), log_.c_str());
      std::fflush(stderr);
      std::abort();
    }
  }
  void turns(uint64_t n) {
    for (uint64_t i = 0; i < n; ++i) turn();
  }

  // ---- failures and the log ----------------------------------------------------------------------
  [[noreturn]] void fail(const std::string& what) {
    if (failure_.empty()) failure_ = what;
    throw SimFailure();
  }
  void note(const std::string& what) {
    log_ += "  step " + std::to_string(ex_.steps()) + " (action " + std::to_string(action_) + "): " + what + "\n";
  }
  static bool chain_error(StatusCode c) {
    return c == StatusCode::kUnavailable || c == StatusCode::kDeadlineExceeded || c == StatusCode::kDataLoss;
  }

  // ---- faults ----------------------------------------------------------------------------------------
  // The links a chain client -> R0 -> R1 -> R2 -> client uses (plus the
  // client's control link to the middle replica).
  std::pair<soft::Nic*, soft::Nic*> link_ends(int link) {
    switch (link) {
      case 0: return {client_.get(), nic_[0].get()};
      case 1: return {nic_[0].get(), nic_[1].get()};
      case 2: return {nic_[1].get(), nic_[2].get()};
      case 3: return {nic_[2].get(), client_.get()};
      default: return {client_.get(), nic_[1].get()};
    }
  }
  static std::string link_name(int link) {
    static const char* names[] = {"client-r0", "r0-r1", "r1-r2", "r2-client", "client-r1"};
    return names[link];
  }

  void plan_faults() {
    const uint64_t r = frng_() % 20;
    const int n = r == 0 ? 0 : (r < 11 ? 1 : 2);
    for (int j = 0; j < n; ++j) {
      PlannedFault f;
      // Weights: power-one 16, power-all 12, nic-crash 13, replica-kill 10,
      // link-cut 16, lossy-link 8, client-crash 15, slow-link 10.
      static constexpr int kWeights[kFaultKinds] = {16, 12, 13, 10, 16, 8, 15, 10};
      int w = int(frng_() % 100);
      int kind = 0;
      while (w >= kWeights[kind]) w -= kWeights[kind++];
      f.kind = FaultKind(kind);
      f.action = 1 + int(frng_() % (kActions - 1));
      // A first fault in a recovery hits the first open (the format) or
      // what follows it; a second one the recovery after the first fault.
      f.in_recovery = frng_() % (j == 0 ? 8 : 3) == 0;
      f.at_commit = !f.in_recovery && frng_() % 2 == 0;
      f.delay = frng_() % (f.in_recovery ? kRecoverySpanSteps : f.at_commit ? kCommitSpanSteps : kFaultSpanSteps);
      f.replica = int(frng_() % kReplicas);
      f.link = int(frng_() % 5);
      f.drop = 0.01 + 0.01 * double(frng_() % 10);
      // From a quarter of the NIC's retry timer to one and a half operation
      // timeouts: retransmissions, late duplicates, timed-out operations
      // and recoveries whose packets are still on the wire.
      f.delay_ns = kAckTimeoutNs / 4 + frng_() % (kOpTimeoutNs + kOpTimeoutNs / 2);
      faults_.push_back(f);
    }
  }
  void arm(size_t j) {
    PlannedFault& f = faults_[j];
    f.armed = true;
    ex_.at_step(ex_.steps() + f.delay, [this, j] { fire(j); });
  }
  void arm_due(int action) {
    for (size_t j = 0; j < faults_.size(); ++j)
      if (!faults_[j].armed && !faults_[j].in_recovery && !faults_[j].at_commit && faults_[j].action == action)
        arm(j);
  }
  // Faults planned for "the first commit after action N": within its steps.
  void arm_at_commit() {
    for (size_t j = 0; j < faults_.size(); ++j)
      if (!faults_[j].armed && faults_[j].at_commit && faults_[j].action <= action_) arm(j);
  }
  void arm_for_recovery() {
    for (size_t j = 0; j < faults_.size(); ++j)
      if (!faults_[j].armed && faults_[j].in_recovery) arm(j);
  }
  // Every power fault tears (pmem.h): each unflushed line of each region is
  // lost, kept whole or kept in part (some 8-byte words), drawn from the seed,
  // the fault and the replica. The old model (every unflushed line lost) is
  // one outcome of this one, so nothing it tested is lost.
  PowerFailOptions tear(size_t j, uint32_t replica) const {
    return {.tear = true, .seed = mix64(seed_ ^ (uint64_t(j + 1) << 32) ^ replica)};
  }
  // A replica's process died (no power failure): its file is released, as
  // the system does for a dead process, so that the restart can open it (one
  // owner per file, pmem.h); the old host stays for the pointers others hold.
  void release_file(uint32_t replica) {
    auto a = host_[replica]->tenant_access(kTenant);
    if (!a.is_ok()) return;
    if (auto* pm = PersistentMemory::containing(reinterpret_cast<const void*>(uintptr_t(a->addr)), a->size))
      pm->release();
  }
  // Runs inside an executor step: only crashes, cuts and power failures.
  void fire(size_t j) {
    PlannedFault& f = faults_[j];
    f.fired = true;
    fired_ = true;
    ++tot_.faults_fired[int(f.kind)];
    if (in_recovery_) ++tot_.faults_in_recovery;
    const std::string r = "r" + std::to_string(f.replica);
    switch (f.kind) {
      case FaultKind::kPowerOne:
        note("FAULT power failure of " + r + " (torn)");
        tot_.torn_words += host_[f.replica]->power_fail(tear(j, f.replica));
        nic_[f.replica]->crash();
        power_lost_[f.replica] = nic_dead_[f.replica] = true;
        break;
      case FaultKind::kPowerAll:
        note("FAULT power failure of every replica (torn)");
        for (uint32_t i = 0; i < kReplicas; ++i) {
          tot_.torn_words += host_[i]->power_fail(tear(j, i));
          nic_[i]->crash();
          power_lost_[i] = nic_dead_[i] = true;
        }
        break;
      case FaultKind::kNicCrash:
        note("FAULT NIC crash of " + r + " (host keeps its memory)");
        nic_[f.replica]->crash();
        release_file(f.replica);  // its memory is copied into the file at the restart
        if (!nic_dead_[f.replica]) keep_memory_[f.replica] = true;
        nic_dead_[f.replica] = true;
        break;
      case FaultKind::kReplicaKill:
        note("FAULT replica " + r + " killed (NIC dead, restarts from its file)");
        nic_[f.replica]->crash();
        release_file(f.replica);
        nic_dead_[f.replica] = true;
        keep_memory_[f.replica] = false;
        break;
      case FaultKind::kLinkCut: {
        note("FAULT link " + link_name(f.link) + " cut");
        auto [a, b] = link_ends(f.link);
        fabric_.set_link(*a, *b, false);
        cuts_.emplace_back(a, b);
        break;
      }
      case FaultKind::kLossyLink: {
        note("FAULT link " + link_name(f.link) + " drops " + std::to_string(int(f.drop * 100)) + "% of packets");
        auto [a, b] = link_ends(f.link);
        fabric_.set_link_faults(*a, *b, {.drop = f.drop, .delay_ns = 0});
        lossy_.emplace_back(a, b);
        break;
      }
      case FaultKind::kSlowLink: {
        note("FAULT link " + link_name(f.link) + " delays every packet by " + std::to_string(f.delay_ns / 1000) +
             " us");
        auto [a, b] = link_ends(f.link);
        fabric_.set_link_faults(*a, *b, {.drop = 0, .delay_ns = f.delay_ns});
        slow_.emplace_back(a, b);
        break;
      }
      case FaultKind::kClientCrash:
        note("FAULT client NIC crash");
        client_->crash();
        client_dead_ = true;
        break;
      case FaultKind::kCount: break;
    }
  }
  bool anything_broken() const {
    if (client_dead_ || !cuts_.empty() || !lossy_.empty() || !slow_.empty()) return true;
    for (uint32_t i = 0; i < kReplicas; ++i)
      if (nic_dead_[i] || power_lost_[i]) return true;
    return false;
  }

  // Heals links and brings up a new NIC + host for every dead replica, over the
  // same file (old ones are kept until a recovery succeeds).
  void restart_dead(int attempt) {
    if (attempt >= 2) heal_slow_links();
    for (auto [a, b] : cuts_) fabric_.set_link(*a, *b, true);
    for (auto [a, b] : lossy_) fabric_.set_link_faults(*a, *b, {});
    if (!cuts_.empty() || !lossy_.empty()) note("links healed");
    cuts_.clear();
    lossy_.clear();
    for (uint32_t i = 0; i < kReplicas; ++i) {
      if (!nic_dead_[i] && !power_lost_[i]) continue;
      const bool keep = !power_lost_[i] && keep_memory_[i];
      std::vector<std::byte> mem;
      if (keep) {
        mem.resize(region_);
        must(host_[i]->peek(kTenant, 0, mem), "peek of a crashed replica");
      }
      graveyard_hosts_.push_back(std::move(host_[i]));
      graveyard_nics_.push_back(std::move(nic_[i]));
      if (keep) {
        auto pm = must(PersistentMemory::open(path_[i], region_, false), "reopen pmem file");
        std::memcpy(pm->data(), mem.data(), region_);
        pm->persist(0, region_);
      }
      make_replica(int(i));
      replaced_ = true;
      note("r" + std::to_string(i) + " restarted" + (keep ? " with its memory" : " from its file"));
    }
  }
  // Heals the slow links, then lets the packets still on them arrive (they
  // would hold back everything queued behind them): the executor runs, with
  // the agents, for longer than the slowest delay. Whatever of an old group
  // or a failed recovery was on those links lands now, with the current group
  // in place: the checks that follow see its effect.
  void heal_slow_links() {
    if (slow_.empty()) return;
    for (auto [a, b] : slow_) fabric_.set_link_faults(*a, *b, {});
    slow_.clear();
    note("slow links healed");
    const uint64_t until = ex_.now_ns() + kOpTimeoutNs + kOpTimeoutNs / 2 + kAckTimeoutNs;
    while (ex_.now_ns() < until) turn();
  }
  void bury() {
    graveyard_hosts_.clear();
    graveyard_nics_.clear();
  }
  void harvest_stats() {
    if (!store_) return;
    const txn::StoreStats s = store_->stats();
    tot_.truncations += s.truncations;
    tot_.replayed += s.replayed_records;
    tot_.resynced += s.resynced_bytes;
    tot_.lock_waits += s.lock_waits;
    tot_.read_retries += s.read_retries;
  }

  // ---- the model ----------------------------------------------------------------------------------
  struct KeyModel {
    Rec cur;
    uint64_t version = 0;
    std::map<uint64_t, uint64_t> acked;  // seq -> txn
  };

  bool initialized() const { return model_[0].cur.seq > 0; }
  uint64_t model_total() const {
    uint64_t s = 0;
    for (int k = 0; k < kAccounts; ++k) s += model_[k].cur.bal;
    return s;
  }
  // A transaction's writes become the committed state.
  void apply(uint64_t id, const std::vector<std::pair<int, Rec>>& writes) {
    for (const auto& [k, r] : writes) {
      KeyModel& m = model_[k];
      if (auto it = m.acked.find(r.seq); it != m.acked.end())
        fail("lost update: key " + std::to_string(k) + " seq " + std::to_string(r.seq) +
             " acknowledged for txn " + std::to_string(it->second) + " and again for txn " + std::to_string(id));
      if (r.seq != m.cur.seq + 1)
        fail("txn " + std::to_string(id) + " wrote seq " + std::to_string(r.seq) + " over key " + std::to_string(k) +
             " whose committed seq is " + std::to_string(m.cur.seq));
      m.acked[r.seq] = id;
      m.cur = r;
      ++m.version;
    }
    if (initialized() && model_total() != kTotal)
      fail("txn " + std::to_string(id) + " changed the total to " + std::to_string(model_total()));
  }
  std::vector<std::byte> model_bytes() const {
    std::vector<std::byte> b(kDataSize);
    for (int k = 0; k < kKeys; ++k) encode(k, model_[k].cur, b.data() + key_off(k));
    return b;
  }
  bool conflicts(const LTxn& x, int* which = nullptr) const {
    for (size_t i = 0; i < x.next; ++i)
      if (model_[x.keys[i]].version != x.ver[i]) {
        if (which) *which = x.keys[i];
        return true;
      }
    return false;
  }

  // ---- checks of the whole state ---------------------------------------------------------------
  enum class Check { kOk, kFaulted };

  // Every replica's data area equals the model, byte for byte; every lock
  // word is unlocked and the lock tables are identical.
  void check_replicas(const std::string& when) {
    const auto want = model_bytes();
    std::vector<std::byte> got(kDataSize), locks0(8 * kStripes), locks(8 * kStripes);
    for (uint32_t i = 0; i < kReplicas; ++i) {
      must(host_[i]->peek(kTenant, data_off_, got), "peek");
      if (got != want) {
        size_t at = 0;
        while (got[at] == want[at]) ++at;
        std::string what = "replica r" + std::to_string(i) + " data area differs from the committed state " + when +
                           " at byte " + std::to_string(at);
        for (int k = 0; k < kKeys; ++k)
          if (at >= key_off(k) && at < key_off(k) + key_len(k)) {
            Rec r;
            const bool ok = decode(k, got.data() + key_off(k), r);
            what += " (key " + std::to_string(k) + ": holds " + (ok ? show(r) : std::string("a torn record")) +
                    ", committed " + show(model_[k].cur) + ")";
          }
        fail(what);
      }
      must(host_[i]->peek(kTenant, lock_off_, i == 0 ? locks0 : locks), "peek");
      const auto& l = i == 0 ? locks0 : locks;
      for (size_t s = 0; s < kStripes; ++s) {
        uint64_t w;
        std::memcpy(&w, l.data() + 8 * s, 8);
        if (w >> 63)
          fail("replica r" + std::to_string(i) + " stripe " + std::to_string(s) + " still locked " + when +
               " (word 0x" + to_hex(w) + ")");
      }
      if (i > 0 && locks != locks0) fail("replica r" + std::to_string(i) + " lock table differs from r0's " + when);
    }
  }
  // Right after a recovery returned OK, whatever fired meanwhile: every
  // replica holds the same superblock, lock table and data area (what the
  // recovery wrote was acknowledged by all of them and flushed), and none of
  // an old group's or a failed recovery's operations changed one since.
  // Replicas whose power failed since are skipped (their memory is gone).
  void check_identical(const std::string& when) {
    std::vector<std::byte> ref, got;
    int first = -1;
    auto image = [&](uint32_t i, std::vector<std::byte>& out) {
      std::vector<std::byte> super(4096), rest(region_ - lock_off_);
      must(host_[i]->peek(kTenant, 0, super), "peek");
      must(host_[i]->peek(kTenant, lock_off_, rest), "peek");
      out = std::move(super);
      out.insert(out.end(), rest.begin(), rest.end());
    };
    for (uint32_t i = 0; i < kReplicas; ++i) {
      if (power_lost_[i]) continue;
      if (first < 0) {
        image(i, ref);
        first = int(i);
        continue;
      }
      image(i, got);
      if (got == ref) continue;
      size_t at = 0;
      while (got[at] == ref[at]) ++at;
      const std::string where = at < 4096 ? "superblock byte " + std::to_string(at)
                                           : "region byte " + std::to_string(lock_off_ + at - 4096);
      uint64_t a = 0, b = 0;
      const size_t w = at & ~size_t{7};
      std::memcpy(&a, ref.data() + w, 8);
      std::memcpy(&b, got.data() + w, 8);
      fail("replicas r" + std::to_string(first) + " and r" + std::to_string(i) + " differ " + when + " at " + where +
           " (words 0x" + to_hex(a) + " and 0x" + to_hex(b) + ")");
    }
  }
  static std::string to_hex(uint64_t v) {
    char b[20];
    std::snprintf(b, sizeof b, "%llx", (unsigned long long)v);
    return b;
  }

  // Reads the whole data area through the store (a transaction, or Store::read),
  // resolves the in-doubt transaction, compares with the model and, unless a
  // fault fired meanwhile, every replica's bytes.
  Check check_state(const std::string& when) {
    std::vector<std::byte> area(kDataSize);
    Status s;
    if (rng_() % 3 == 0) {
      for (uint64_t off = 0; off < kDataSize && s.is_ok(); off += 1024)
        s = store_->read(off, std::span<std::byte>(area).subspan(off, 1024));
    } else {
      Transaction t = store_->begin();
      if (rng_() % 2) {
        s = t.read(0, area);
      } else {
        for (int k = 0; k < kKeys && s.is_ok(); ++k)
          s = t.read(key_off(k), std::span<std::byte>(area).subspan(key_off(k), key_len(k)));
        if (s.is_ok()) s = t.read(kGapBegin, std::span<std::byte>(area).subspan(kGapBegin, kBlobBase - kGapBegin));
      }
      t.abort();
    }
    if (!s.is_ok()) {
      if (fired_ && chain_error(s.code())) {
        note("check read " + when + " failed: " + s.to_string());
        return Check::kFaulted;
      }
      fail("reading every key " + when + ": " + s.to_string());
    }
    Rec got[kKeys];
    for (int k = 0; k < kKeys; ++k)
      if (!decode(k, area.data() + key_off(k), got[k]))
        fail("key " + std::to_string(k) + " holds a torn or foreign record " + when);
    for (uint64_t b = kGapBegin; b < kBlobBase; ++b)
      if (area[b] != std::byte{0}) fail("byte " + std::to_string(b) + " of the never-written gap changed " + when);
    if (in_doubt_) {
      const InDoubt d = std::move(*in_doubt_);
      in_doubt_.reset();
      size_t present = 0;
      std::string detail;
      for (const auto& [k, r] : d.writes) {
        detail += " key " + std::to_string(k) + ": holds " + show(got[k]) + ", txn wrote " + show(r) +
                  ", committed " + show(model_[k].cur) + ";";
        if (got[k] == r)
          ++present;
        else if (!(got[k] == model_[k].cur))
          fail("in-doubt txn " + std::to_string(d.id) + ": a key holds neither its write nor the committed record " +
               when + ":" + detail);
      }
      if (present != 0 && present != d.writes.size())
        fail("in-doubt txn " + std::to_string(d.id) + " is partly present (" + std::to_string(present) + " of " +
             std::to_string(d.writes.size()) + " keys) " + when + ":" + detail);
      if (present) {
        if (d.conflict)
          fail("in-doubt txn " + std::to_string(d.id) + " conflicted (a key it read had changed) yet is present " +
               when);
        apply(d.id, d.writes);
        ++tot_.in_doubt_applied;
        note("in-doubt txn " + std::to_string(d.id) + ": present");
      } else {
        ++tot_.in_doubt_absent;
        note("in-doubt txn " + std::to_string(d.id) + ": absent");
      }
    }
    for (int k = 0; k < kKeys; ++k)
      if (!(got[k] == model_[k].cur)) {
        const auto& h = model_[k].acked;
        fail("key " + std::to_string(k) + " holds " + show(got[k]) + " " + when + ", but the committed state is " +
             show(model_[k].cur) + (got[k].seq < model_[k].cur.seq ? " (an acknowledged transaction is lost)" : "") +
             (h.count(got[k].seq) && h.at(got[k].seq) != got[k].txn ? " (seq belongs to another txn)" : ""));
      }
    if (initialized()) {
      uint64_t sum = 0;
      for (int k = 0; k < kAccounts; ++k) sum += got[k].bal;
      if (sum != kTotal) fail("the total is " + std::to_string(sum) + " " + when);
    }
    if (fired_) return Check::kFaulted;
    check_replicas(when);
    return Check::kOk;
  }

  // Restarts what died, heals links and recovers (Store::recover, or
  // Store::open with a new client), until a recovery and the check after it
  // ran without a fault.
  void recover_all(const std::string& why) {
    note("recovery (" + why + ")");
    in_recovery_ = true;
    for (int attempt = 0;; ++attempt) {
      if (attempt == 12) fail("no recovery succeeded in 12 attempts");
      fired_ = false;
      arm_for_recovery();
      restart_dead(attempt);
      Status s;
      if (client_dead_ || !store_) {
        open_.clear();  // the client's transactions die with it
        harvest_stats();
        store_.reset();
        if (client_dead_) {
          graveyard_nics_.push_back(std::move(client_));
          client_ = new_nic("client");
          client_dead_ = false;
          note("client restarted");
        }
        auto r = Store::open(*client_, hosts(), opts_);
        if (r.is_ok())
          store_ = std::move(r).value();
        else
          s = r.status();
      } else {
        // The same hosts may be named by an empty list; replaced ones must be passed.
        const auto h = hosts();
        s = store_->recover(replaced_ || rng_() % 2 ? std::span<ReplicaHost* const>(h)
                                                    : std::span<ReplicaHost* const>());
      }
      if (!s.is_ok()) {
        ++tot_.failed_recoveries;
        note("recovery attempt failed: " + s.to_string());
        if (!fired_ && !anything_broken()) fail("recovery failed with no fault: " + s.to_string());
        continue;
      }
      if (!store_->healthy() && !fired_) fail("recovery returned OK but the store is not healthy");
      // A recovery that succeeded over a slow link: the link heals now and
      // what was still on it arrives (and must change nothing).
      heal_slow_links();
      check_identical("after a successful recovery (" + why + ")");
      replaced_ = false;
      ++epoch_;
      ++tot_.recoveries;
      note("recovered");
      if (!fired_) bury();
      if (check_state("after recovery (" + why + ")") == Check::kOk) break;
      note("a fault fired during or after the recovery: again");
    }
    in_recovery_ = false;
  }

  // Notices an error of a store call: a chain error after a fault means
  // recovery; anything else fails the seed.
  void on_error(const Status& s, const std::string& what) {
    if (chain_error(s.code())) {
      if (!fired_) fail(what + " failed although no fault fired: " + s.to_string());
      recover_all(what + ": " + s.to_string());
      return;
    }
    fail(what + ": unexpected " + s.to_string());
  }

  // drain(), then every replica equals the model.
  void checkpoint(const std::string& when) {
    const Status s = store_->drain();
    if (!s.is_ok()) return on_error(s, "drain");
    if (fired_ || in_doubt_) return;
    ++tot_.checkpoints;
    check_replicas(when);
  }

  // ---- the workload ------------------------------------------------------------------------------
  int random_account() {
    // Half of the picks go to four hot accounts, so open transactions collide.
    return rng_() % 2 ? int(rng_() % 4) : int(rng_() % kAccounts);
  }
  std::vector<int> distinct_accounts(size_t n) {
    std::vector<int> v;
    while (v.size() < n) {
      const int k = random_account();
      if (std::find(v.begin(), v.end(), k) == v.end()) v.push_back(k);
    }
    return v;
  }

  std::unique_ptr<LTxn> make_txn(Kind kind) {
    auto x = std::make_unique<LTxn>();
    x->id = next_id_++;
    x->kind = kind;
    switch (kind) {
      case Kind::kInit:  // the accounts (blobs are written first by blob transactions)
        for (int k = 0; k < kAccounts; ++k) x->keys.push_back(k);
        break;
      case Kind::kTransfer: x->keys = distinct_accounts(2); break;
      case Kind::kMulti:
        x->keys = distinct_accounts(3 + rng_() % 2);
        if (rng_() % 3 == 0) x->keys.push_back(kAccounts + int(rng_() % kBlobs));
        break;
      case Kind::kBlob:
        x->keys.push_back(kAccounts + int(rng_() % kBlobs));
        if (rng_() % 2) x->keys.push_back(random_account());
        break;
      case Kind::kBig: {  // 2-3 blobs and 1-2 accounts: records of 1.2-1.8 KiB fill the log
        std::vector<int> blobs = {kAccounts, kAccounts + 1, kAccounts + 2, kAccounts + 3};
        std::shuffle(blobs.begin(), blobs.end(), rng_);
        x->keys.assign(blobs.begin(), blobs.begin() + 2 + std::ptrdiff_t(rng_() % 2));
        for (int k : distinct_accounts(1 + rng_() % 2)) x->keys.push_back(k);
        break;
      }
      case Kind::kScan:
        for (int k = 0; k < kAccounts; ++k) x->keys.push_back(k);
        break;
    }
    if (kind != Kind::kScan && kind != Kind::kInit) std::shuffle(x->keys.begin(), x->keys.end(), rng_);
    x->t = store_->begin();
    x->epoch = epoch_;
    return x;
  }

  void begin_txn() {
    const uint64_t r = rng_() % 100;
    const Kind kind = r < 40   ? Kind::kTransfer
                      : r < 62 ? Kind::kMulti
                      : r < 72 ? Kind::kBlob
                      : r < 82 ? Kind::kBig
                               : Kind::kScan;
    open_.push_back(make_txn(kind));
  }
  void drop(size_t i) { open_.erase(open_.begin() + std::ptrdiff_t(i)); }

  // The outcome of a read that returned kAborted: allowed when a key the
  // transaction read changed (`changed`), after a recovery or after a fault.
  void read_aborted(LTxn& x, bool changed, const std::string& what) {
    ++tot_.aborts;
    if (changed)
      ++tot_.conflict_aborts;
    else if (x.epoch != epoch_)
      ++tot_.stale_aborts;
    else if (fired_)
      ++tot_.fault_aborts;
    else
      fail(what + " of txn " + std::to_string(x.id) + " aborted although nothing it read changed and no fault fired");
  }

  // Reads the next chunk of x's keys. Returns false if x is finished (dropped).
  bool read_next(size_t idx) {
    LTxn& x = *open_[idx];
    // Scans read up to 16 consecutive accounts in one call; others one key.
    size_t n = 1;
    if (x.kind == Kind::kScan || x.kind == Kind::kInit) {
      static constexpr size_t kChunks[] = {1, 2, 4, 8, 16};
      n = std::min(kChunks[rng_() % 5], x.keys.size() - x.next);
      while (n > 1 && key_off(x.keys[x.next + n - 1]) != key_off(x.keys[x.next]) + (n - 1) * kAccountBytes) --n;
    }
    const int k0 = x.keys[x.next];
    const uint64_t off = key_off(k0);
    const uint64_t len = key_off(x.keys[x.next + n - 1]) + key_len(x.keys[x.next + n - 1]) - off;
    std::vector<std::byte> buf(len);
    const Status s = x.t.read(off, buf);
    ++tot_.reads;
    if (!s.is_ok()) {
      const std::string what = "read of key " + std::to_string(k0) + " (" + std::to_string(n) + " keys)";
      if (s.code() == StatusCode::kAborted) {
        read_aborted(x, conflicts(x), what);
        drop(idx);
        return false;
      }
      drop(idx);
      on_error(s, what);
      return false;
    }
    for (size_t j = 0; j < n; ++j) {
      const int k = x.keys[x.next];
      Rec r;
      if (!decode(k, buf.data() + (key_off(k) - off), r))
        fail("txn " + std::to_string(x.id) + " read a torn or foreign record at key " + std::to_string(k) +
             " (committed " + show(model_[k].cur) + ")");
      if (!(r == model_[k].cur))
        fail("txn " + std::to_string(x.id) + " read key " + std::to_string(k) + " as " + show(r) +
             ", but the committed state is " + show(model_[k].cur) + (r.seq > model_[k].cur.seq ? " (uncommitted data)" : " (stale data)"));
      x.got.push_back(r);
      x.ver.push_back(model_[k].version);
      ++x.next;
    }
    return true;
  }

  // Reads again a key x read before: the same record if it did not change,
  // kAborted if it did.
  bool reread(size_t idx) {
    LTxn& x = *open_[idx];
    const size_t i = rng_() % x.next;
    const int k = x.keys[i];
    std::vector<std::byte> buf(key_len(k));
    const Status s = x.t.read(key_off(k), buf);
    ++tot_.rereads;
    const bool changed = model_[k].version != x.ver[i];
    if (s.is_ok()) {
      Rec r;
      if (!decode(k, buf.data(), r)) fail("re-read of key " + std::to_string(k) + " returned a torn record");
      if (changed)
        fail("re-read of key " + std::to_string(k) + " by txn " + std::to_string(x.id) +
             " succeeded although the key changed since its first read (now " + show(model_[k].cur) + ", returned " +
             show(r) + ")");
      if (!(r == x.got[i]))
        fail("re-read of key " + std::to_string(k) + " by txn " + std::to_string(x.id) + " returned " + show(r) +
             ", first read " + show(x.got[i]));
      return true;
    }
    if (s.code() == StatusCode::kAborted) {
      read_aborted(x, changed, "re-read");
      drop(idx);
      return false;
    }
    drop(idx);
    on_error(s, "re-read");
    return false;
  }

  // What x writes, from what it read.
  std::vector<std::pair<int, Rec>> plan_writes(LTxn& x) {
    std::vector<std::pair<int, Rec>> w;
    auto next = [&](size_t i, uint64_t bal) { return Rec{bal, x.got[i].seq + 1, x.id}; };
    switch (x.kind) {
      case Kind::kInit:
        for (size_t i = 0; i < x.keys.size(); ++i) w.emplace_back(x.keys[i], next(i, kInitialBalance));
        break;
      case Kind::kTransfer: {
        const uint64_t a = x.got[0].bal, amt = rng_() % (a + 1);
        w.emplace_back(x.keys[0], next(0, a - amt));
        w.emplace_back(x.keys[1], next(1, x.got[1].bal + amt));
        break;
      }
      case Kind::kMulti: {
        std::vector<size_t> acc;
        uint64_t sum = 0;
        for (size_t i = 0; i < x.keys.size(); ++i)
          if (is_account(x.keys[i])) {
            acc.push_back(i);
            sum += x.got[i].bal;
          }
        std::vector<uint64_t> cut;
        for (size_t j = 0; j + 1 < acc.size(); ++j) cut.push_back(sum ? rng_() % (sum + 1) : 0);
        cut.push_back(0);
        cut.push_back(sum);
        std::sort(cut.begin(), cut.end());
        for (size_t j = 0; j < acc.size(); ++j) w.emplace_back(x.keys[acc[j]], next(acc[j], cut[j + 1] - cut[j]));
        for (size_t i = 0; i < x.keys.size(); ++i)
          if (!is_account(x.keys[i])) w.emplace_back(x.keys[i], next(i, 0));
        break;
      }
      case Kind::kBlob:
      case Kind::kBig:
        for (size_t i = 0; i < x.keys.size(); ++i) w.emplace_back(x.keys[i], next(i, x.got[i].bal));
        break;
      case Kind::kScan: {
        const size_t i = rng_() % x.keys.size();  // the touch: same balance, new seq
        w.emplace_back(x.keys[i], next(i, x.got[i].bal));
        break;
      }
    }
    return w;
  }

  // Buffers the writes in one of several ways: whole, split in two calls (in
  // either order), or after a bogus version of the same record.
  Status buffer_writes(LTxn& x, const std::vector<std::pair<int, Rec>>& writes) {
    for (const auto& [k, r] : writes) {
      const auto bytes = encoded(k, r);
      const std::span<const std::byte> b(bytes);
      const uint64_t off = key_off(k), len = key_len(k);
      const uint64_t how = rng_() % 10;
      if (how < 7) {
        HL_RETURN_IF_ERROR(x.t.write(off, b));
      } else if (how < 9) {
        const uint64_t cut = 8 * (1 + rng_() % (len / 8 - 1));
        if (how == 7) {
          HL_RETURN_IF_ERROR(x.t.write(off, b.first(cut)));
          HL_RETURN_IF_ERROR(x.t.write(off + cut, b.subspan(cut)));
        } else {
          HL_RETURN_IF_ERROR(x.t.write(off + cut, b.subspan(cut)));
          HL_RETURN_IF_ERROR(x.t.write(off, b.first(cut)));
        }
      } else {
        const auto bogus = encoded(k, Rec{r.bal ^ 0xBAD, r.seq + 1000, r.txn | (1ull << 62)});
        HL_RETURN_IF_ERROR(x.t.write(off, bogus));
        HL_RETURN_IF_ERROR(x.t.write(off, b));
      }
    }
    return Status::ok();
  }

  // Writes and commits x (or aborts / drops it), and checks the outcome.
  void finish(size_t idx) {
    LTxn& x = *open_[idx];
    int changed_key = -1;
    const bool conflict = conflicts(x, &changed_key);
    if (x.kind == Kind::kScan) {
      ++tot_.scans;
      uint64_t sum = 0;
      for (const Rec& r : x.got) sum += r.bal;
      if (!conflict) {
        ++tot_.consistent_scans;
        if (initialized() && sum != kTotal)
          fail("scan txn " + std::to_string(x.id) + " saw a total of " + std::to_string(sum) +
               " though no transaction overlapped it");
      }
      const uint64_t how = rng_() % 3;
      if (how == 0) {  // read-only: drop it (abort() or the destructor)
        if (rng_() % 2) x.t.abort();
        drop(idx);
        return;
      }
      if (how == 1) {  // read-only commit: validates the read set
        const Status s = x.t.commit();
        ++tot_.readonly_commits;
        if (s.is_ok()) {
          if (conflict)
            fail("serializability: read-only scan txn " + std::to_string(x.id) + " committed although key " +
                 std::to_string(changed_key) + " changed since it read it");
        } else if (s.code() == StatusCode::kAborted) {
          read_aborted(x, conflict, "read-only commit of scan");
        } else if (s.code() != StatusCode::kInvalidArgument) {  // txn.h: "empty write set"
          drop(idx);
          return on_error(s, "read-only commit of scan txn");
        }
        drop(idx);
        return;
      }
    } else if (x.kind != Kind::kInit && rng_() % 25 == 0) {
      x.t.abort();
      if (x.t.active()) fail("Transaction::abort left the transaction active");
      drop(idx);
      return;
    }
    const auto writes = plan_writes(x);
    if (const Status s = buffer_writes(x, writes); !s.is_ok()) fail("buffering writes: " + s.to_string());
    // Read-your-writes now and then: the transaction's own record, over the
    // committed data (kAborted if the key changed since it was read).
    if (rng_() % 8 == 0) {
      const auto& [k, r] = writes[rng_() % writes.size()];
      std::vector<std::byte> buf(key_len(k));
      const Status s = x.t.read(key_off(k), buf);
      ++tot_.own_reads;
      if (s.is_ok()) {
        Rec got;
        if (!decode(k, buf.data(), got) || !(got == r))
          fail("txn " + std::to_string(x.id) + " read its own write of key " + std::to_string(k) + " as " +
               (decode(k, buf.data(), got) ? show(got) : std::string("a torn record")) + ", wrote " + show(r));
      } else if (s.code() == StatusCode::kAborted) {
        read_aborted(x, conflict, "read of its own write");
        drop(idx);
        return;
      } else {
        drop(idx);
        return on_error(s, "read of its own write");
      }
    }
    arm_at_commit();
    const uint64_t commit_start = ex_.steps();
    const Status s = x.t.commit();
    if (s.is_ok()) tot_.commit_steps += ex_.steps() - commit_start;
    if (x.t.active()) fail("a transaction is still active after commit()");
    const std::string who = std::string(kind_name(x.kind)) + " txn " + std::to_string(x.id);
    if (s.is_ok()) {
      if (conflict)
        fail("serializability: " + who + " committed although key " + std::to_string(changed_key) +
             " changed since it read it (now " + show(model_[changed_key].cur) + ")");
      ++tot_.commits;
      apply(x.id, writes);
      drop(idx);
      return;
    }
    if (s.code() == StatusCode::kAborted) {
      read_aborted(x, conflict, "commit of " + who);
      drop(idx);
      return;
    }
    if (chain_error(s.code())) {
      if (!fired_) fail("commit of " + who + " failed although no fault fired: " + s.to_string());
      ++tot_.in_doubt;
      in_doubt_ = InDoubt{x.id, conflict, writes};
      note(who + " in doubt: " + s.to_string());
      drop(idx);
      recover_all("commit of " + who + ": " + s.to_string());
      return;
    }
    fail("commit of " + who + ": unexpected " + s.to_string());
  }

  void advance(size_t idx) {
    LTxn& x = *open_[idx];
    if (x.next < x.keys.size()) {
      if (x.next > 0 && rng_() % 16 == 0 && !reread(idx)) return;
      read_next(idx);
      return;
    }
    finish(idx);
  }

  // A read outside any transaction: the committed record.
  void store_read() {
    const int k = rng_() % 3 ? random_account() : kAccounts + int(rng_() % kBlobs);
    std::vector<std::byte> buf(key_len(k));
    const Status s = store_->read(key_off(k), buf);
    ++tot_.reads;
    if (!s.is_ok()) {
      if (s.code() == StatusCode::kAborted && fired_) return;
      return on_error(s, "Store::read of key " + std::to_string(k));
    }
    Rec r;
    if (!decode(k, buf.data(), r)) fail("Store::read of key " + std::to_string(k) + " returned a torn record");
    if (!(r == model_[k].cur))
      fail("Store::read of key " + std::to_string(k) + " returned " + show(r) + ", committed " + show(model_[k].cur));
  }

  void act() {
    const uint64_t r = rng_() % 100;
    if (r < 3) return store_read();
    if (r < 5) return store_->poll();
    if (r < 6) return checkpoint("at a checkpoint");
    if (r < 8) {  // a burst of big commits back to back: the log fills faster than it is truncated
      for (uint64_t n = 3 + rng_() % 4; n > 0 && store_; --n) run_alone(rng_() % 3 ? Kind::kBig : Kind::kBlob);
      return;
    }
    if (open_.empty() || (int(open_.size()) < max_open_ && rng_() % 3 == 0)) begin_txn();
    advance(rng_() % open_.size());
  }

  // Runs one transaction alone to its end (the first one: every key).
  void run_alone(Kind kind) {
    open_.push_back(make_txn(kind));
    const uint64_t id = open_.back()->id;
    while (!open_.empty() && open_.back()->id == id) advance(open_.size() - 1);
  }

  void run_seed() {
    for (uint32_t i = 0; i < kReplicas; ++i) path_[i] = dir_.file("r" + std::to_string(i) + ".pmem");
    if (region_ == 0) fail("Store::region_bytes returned 0 for valid options");
    if (lock_off_ + 8 * kStripes > data_off_) fail("the region is too small for the layout of txn.h");
    client_ = new_nic("client");
    for (uint32_t i = 0; i < kReplicas; ++i) make_replica(int(i));
    plan_faults();
    arm_for_recovery();  // a fault planned for a recovery may hit the first open (the format) or the first commit
    in_recovery_ = true;
    auto opened = Store::open(*client_, hosts(), opts_);
    in_recovery_ = false;
    if (opened.is_ok()) {
      store_ = std::move(opened).value();
      if (store_->data_size() != kDataSize) fail("data_size() is " + std::to_string(store_->data_size()));
      if (store_->replicas() != kReplicas) fail("replicas() is " + std::to_string(store_->replicas()));
      if (!store_->healthy() && !fired_) fail("a new store is not healthy");
    } else {
      if (!fired_) fail("Store::open of a blank store: " + opened.status().to_string());
      ++tot_.failed_recoveries;
      note("the first Store::open failed: " + opened.status().to_string());
    }
    if (!store_ || check_state("after the first open") != Check::kOk) recover_all("the first open");
    for (int attempt = 0; !initialized(); ++attempt) {
      if (attempt == 4) fail("the first transaction never committed");
      run_alone(Kind::kInit);
    }

    for (action_ = 0; action_ < kActions; ++action_) {
      arm_due(action_);
      act();
      if (rng_() % 4 == 0) turns(rng_() % 48);
    }
    open_.clear();
    // Faults still to come fire now.
    for (size_t j = 0; j < faults_.size(); ++j)
      if (!faults_[j].armed) arm(j);
    for (int k = 0; k < 100000 && !all_fired(); ++k) turn();
    if (!all_fired()) fail("a planned fault never fired");
    if (fired_ || anything_broken() || in_doubt_) recover_all("end of the workload");
    // The end: everything applied, every replica equal to the model.
    for (int attempt = 0;; ++attempt) {
      if (attempt == 4) fail("no fault-free end");
      const Status s = store_->drain();
      if (!s.is_ok()) {
        on_error(s, "final drain");
        continue;
      }
      if (check_state("at the end") == Check::kOk) break;
      recover_all("fault during the final check");
    }
    if (cold_restart_) cold_restart();
  }
  bool all_fired() const {
    for (const auto& f : faults_)
      if (!f.fired) return false;
    return true;
  }

  // Every host loses power after the drain; new hosts, a new client, and
  // Store::open must find the same state.
  void cold_restart() {
    ++tot_.cold_restarts;
    note("cold restart: power failure of every host, new client");
    for (uint32_t i = 0; i < kReplicas; ++i) {
      tot_.torn_words += host_[i]->power_fail(tear(1000 + tot_.cold_restarts, i));  // after a drain: little to tear
      nic_[i]->crash();
      power_lost_[i] = nic_dead_[i] = true;
    }
    client_->crash();
    client_dead_ = true;
    fired_ = true;
    recover_all("cold restart");
  }

  // ---- state -------------------------------------------------------------------------------------
  uint64_t seed_;
  Totals& tot_;
  ForwardMode mode_;
  StoreOptions opts_;
  size_t region_ = 0;
  uint64_t data_off_ = 0, lock_off_ = 0;
  int max_open_ = 1;
  bool cold_restart_ = false;

  TempDir dir_;  // the pmem files: outlive every host
  soft::Fabric fabric_;
  soft::ManualExecutor ex_;
  std::mt19937_64 rng_;   // the workload
  std::mt19937_64 frng_;  // the fault plan
  uint64_t turns_ = 0;
  uint64_t generation_ = 0;

  std::array<std::string, kReplicas> path_;
  std::unique_ptr<soft::Nic> client_;
  std::array<std::unique_ptr<soft::Nic>, kReplicas> nic_;
  std::array<std::unique_ptr<ReplicaHost>, kReplicas> host_;
  std::vector<std::unique_ptr<ReplicaHost>> graveyard_hosts_;  // before the NICs they sit on
  std::vector<std::unique_ptr<soft::Nic>> graveyard_nics_;
  std::unique_ptr<Store> store_;
  std::vector<std::unique_ptr<LTxn>> open_;

  std::vector<PlannedFault> faults_;
  bool fired_ = false;  // a fault fired since the last recovery attempt began
  bool client_dead_ = false;
  std::array<bool, kReplicas> power_lost_{}, nic_dead_{}, keep_memory_{};
  std::vector<std::pair<soft::Nic*, soft::Nic*>> cuts_, lossy_;
  // Slow links stay slow for the first two recovery attempts (which may then
  // fail with their packets still in flight), and are healed before the third.
  std::vector<std::pair<soft::Nic*, soft::Nic*>> slow_;
  bool in_recovery_ = false;
  bool replaced_ = false;  // hosts replaced since the store last recovered

  KeyModel model_[kKeys];
  std::optional<InDoubt> in_doubt_;
  uint64_t next_id_ = 1;
  uint64_t epoch_ = 0;  // successful recoveries
  int action_ = -1;

  std::string failure_;
  std::string log_;
};

TEST(TxnSimTest, RandomTransactionsWithRandomFaultsKeepEveryInvariant) {
  const bool replay = std::getenv("HYPERLOOP_SEED") != nullptr;
  Totals tot;
  int failures = 0;
  const auto start = std::chrono::steady_clock::now();
  install_crash_note();
  for (uint64_t seed : seeds_to_run(0x7A5000, HYPERLOOP_TXN_SIM_SEEDS)) {
    set_crash_note(seed);
    bool ok;
    std::string failure, log, desc;
    {
      Sim sim(seed, tot);
      ok = sim.run();
      failure = sim.failure();
      log = sim.log();
      desc = sim.describe();
    }
    ++tot.seeds;
    if (!ok) {
      ADD_FAILURE() << "txn simulation failed: " << failure << "\n  " << desc << "\n  fault log:\n" << log;
      std::printf("FAILED %s\n", replay_hint(seed).c_str());
      if (++failures == 10) break;
    } else if (replay) {
      std::printf("%s\nlog:\n%s", desc.c_str(), log.c_str());
    }
  }
  g_crash_note[0] = 0;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::string faults;
  uint64_t fired = 0;
  for (int k = 0; k < kFaultKinds; ++k) {
    faults += std::string(k ? ", " : "") + fault_name(FaultKind(k)) + " " + std::to_string(tot.faults_fired[k]);
    fired += tot.faults_fired[k];
  }
  std::printf(
      "txn_sim: %llu seeds (%llu offload, %llu cpu-forward) in %.1f s, %llu steps; %llu commits, %llu aborts "
      "(%llu conflicts, %llu after recovery, %llu after faults), %llu in doubt (%llu present, %llu absent); "
      "%llu reads, %llu scans (%llu unoverlapped); faults fired %llu: %s (%llu during a recovery); %llu recoveries "
      "(%llu attempts failed), "
      "%llu cold restarts, %llu checkpoints; store: %llu truncations, %llu records replayed, %llu bytes resynced, "
      "%llu lock waits, %llu read retries; %.0f steps per commit\n",
      (unsigned long long)tot.seeds, (unsigned long long)tot.offload_seeds, (unsigned long long)tot.cpu_seeds, secs,
      (unsigned long long)tot.steps, (unsigned long long)tot.commits, (unsigned long long)tot.aborts,
      (unsigned long long)tot.conflict_aborts, (unsigned long long)tot.stale_aborts,
      (unsigned long long)tot.fault_aborts, (unsigned long long)tot.in_doubt,
      (unsigned long long)tot.in_doubt_applied, (unsigned long long)tot.in_doubt_absent,
      (unsigned long long)tot.reads, (unsigned long long)tot.scans, (unsigned long long)tot.consistent_scans,
      (unsigned long long)fired, faults.c_str(), (unsigned long long)tot.faults_in_recovery,
      (unsigned long long)tot.recoveries,
      (unsigned long long)tot.failed_recoveries, (unsigned long long)tot.cold_restarts,
      (unsigned long long)tot.checkpoints, (unsigned long long)tot.truncations, (unsigned long long)tot.replayed,
      (unsigned long long)tot.resynced, (unsigned long long)tot.lock_waits, (unsigned long long)tot.read_retries,
      tot.commits ? double(tot.commit_steps) / double(tot.commits) : 0.0);
  std::printf("txn_sim: power failures tore: %llu unflushed words kept\n", (unsigned long long)tot.torn_words);
  std::fflush(stdout);
  // The runs exercised what they claim to (only meaningful over many seeds).
  if (!replay && failures == 0 && tot.seeds >= 100) {
    EXPECT_GT(tot.commits, 20 * tot.seeds) << "too few commits per seed";
    EXPECT_GT(tot.conflict_aborts, 0u) << "no conflicting interleaving ever aborted";
    EXPECT_GT(tot.in_doubt, 0u) << "no commit was ever in doubt";
    EXPECT_GT(tot.in_doubt_applied, 0u) << "no in-doubt transaction ever turned out present";
    EXPECT_GT(tot.in_doubt_absent, 0u) << "no in-doubt transaction ever turned out absent";
    EXPECT_GT(tot.truncations, tot.seeds) << "the log was hardly ever truncated";
    EXPECT_GT(tot.replayed, 0u) << "no recovery ever replayed a record";
    EXPECT_GT(tot.resynced, 0u) << "no recovery ever resynchronized a replica";
    EXPECT_GT(tot.torn_words, 0u) << "no power failure ever kept an unflushed word";
    for (int k = 0; k < kFaultKinds; ++k) EXPECT_GT(tot.faults_fired[k], 0u) << fault_name(FaultKind(k));
  }
}

}  // namespace
}  // namespace hyperloop::txn_sim
