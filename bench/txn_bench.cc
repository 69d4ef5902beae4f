// txn_bench: chain-replicated transactions (hyperloop::txn::Store) over 3
// replicas, offload and CPU forwarding side by side in the same run.
//
//   BM_CommitLatency/mode:M/ranges:R/bytes:B   one client thread: begin, R writes
//                                              of B bytes, commit; one at a time
//   BM_CommitThroughput/mode:M/threads:T       T client threads commit 1-range 64 B
//                                              transactions on disjoint keys, on
//                                              one Store, for a fixed time
//   BM_GroupCommit/depth:D/threads:T           as BM_CommitThroughput (offload) with
//                                              StoreOptions::log_writes_in_flight = D
//                                              (0: group commit off)
//   BM_MultiTenant/<placement>/mode:M/K:K      1-range 64 B commits while K busy
//                                              tenant threads per replica host spin
//
// mode 0 = offload (replica NICs forward by themselves), mode 1 = CPU
// forwarding (replica agent threads poll, forward and re-post: the baseline).
// Consecutive rows differ only in the mode.
//
// The fixture (built before and torn down after every case): one soft::Fabric;
// a client NIC and 3 replica NICs, all driven by ONE soft::SingleThreadExecutor
// (the "one-thread executor"); a prim::ReplicaHost (one agent thread) per
// replica NIC with the tenant registered at Store::region_bytes(options); one
// txn::Store opened over them (a blank region: open() formats it). Store
// options: data 1 MiB, log 2 MiB, stripes of 256 B (the default), lock timeout
// 20 ms (the default), group slots 4096 (re-armed 64 at a time), staging 8 MiB.
//
// What a transaction writes: range r of transaction i goes to
// slot(i) * 32 KiB + r * 4 KiB with slot(i) = i % 16, so consecutive
// transactions never touch the same stripes (a stripe written by the
// previous commit may still be locked until its post-commit unlock is reaped;
// rewriting one hot key would measure that wait, reported as lock_waits).
// Throughput thread t writes 64 B at stripe (t * 16 + j % 16). The first 8
// bytes of every range carry the transaction's number; after the loop the
// store is drained and the last transaction of every slot is checked through
// Store::read and on every replica (Group::read at the data area's offset in
// the documented layout).
//
// Commit is synchronous (there is no batched or asynchronous commit in the
// API), so concurrency means client threads. A commit that returns kAborted is
// counted (aborts) and run again; any other error ends the case through
// State::SkipWithError: no numbers are reported from a broken run.
//
// How the client waits: the Store waits in the group's polling loops; the
// benchmark installs GroupOptions::progress (called on every fruitless turn of
// those loops) to busy-poll for 64 turns per commit and then yield the core on
// every further turn, as primitives_bench's clients do (pure spinning starves
// the CPU-forwarding baseline's threads on 2 cores). A client that shares its
// core with runnable threads (multi-tenant) yields on every turn.
//
// Counters (from the same run as Google Benchmark's time column):
//   p50_us, p99_us, p999_us, max_us  commit latency percentiles (begin to commit
//                                    returning OK, steady_clock), microseconds
//   commits_per_s                    throughput rows: commits / wall time
//   aborts, lock_waits               StoreStats over the measured interval
//   group_ops_per_commit             group operations completed per commit
//   records_per_log_write            group commit: commits' records per log
//                                    write (gWRITE + gFLUSH) issued
//   agent_cpu_ns_per_commit          replica agents' CPU (sum over the 3 hosts,
//                                    naps and idle polls included) per commit
//   agent_cores                      the same CPU time per wall time
//   foreign_cpu_pct                  CPU used by OTHER processes during the
//                                    measurement, in percent of the machine:
//                                    figures from a run with a high value are
//                                    contaminated by a noisy neighbour
//   target_p50_le_5us                BM_CommitLatency mode:0/ranges:1/bytes:64: 1 if met
//   target_ge_200k_per_s             throughput rows: 1 if commits_per_s >= 200,000
//
// Multi-tenant experiment (needs CPUs 0 and 1): the executor thread (the
// "NIC") is pinned to CPU 0; the replica agents and K busy tenant threads per
// replica host to CPU 1; the client to CPU 1 (client_on_app_core) or CPU 0
// next to the NIC thread (client_on_nic_core: only the replicas' CPU is
// contended; in HyperLoop the client is another machine). Each case commits
// for a bounded time (--mt_seconds=S; default 4x --benchmark_min_time,
// clamped to [0.05, 2] s); the time column is the mean commit latency.
// Throughput cases run for --tput_seconds=S (default 2x min_time, clamped to
// [0.05, 1] s).
//
// The targets are measured, not asserted: a summary (the targets, the
// offload/CPU-forwarding comparison and the multi-tenant table) is printed to
// stderr at the end.
//
// Run (CI smoke):  txn_bench --benchmark_min_time=0.01
// Run (figures):   txn_bench                       (about 50 s on the 2-core VM)
// One family:      txn_bench --benchmark_filter=BM_CommitLatency
//                  txn_bench --benchmark_filter='BM_CommitLatency/mode:./ranges:1/bytes:64$'
//                  txn_bench --benchmark_filter=BM_CommitThroughput
//                  txn_bench --benchmark_filter=BM_MultiTenant --mt_seconds=1
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <random>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "hyperloop/primitives.h"
#include "hyperloop/soft_rnic.h"
#include "hyperloop/status.h"
#include "hyperloop/txn.h"

namespace {

using namespace hyperloop;  // NOLINT
using bench::AffinityGuard;
using bench::BusyTenants;
using bench::cpu_relax;
using bench::ForeignCpu;
using bench::have_cpus_0_and_1;
using bench::LatencyUnit;
using bench::pin_self;
using prim::ForwardMode;
using prim::ReplicaHost;
using txn::Store;
using txn::StoreOptions;
using txn::StoreStats;
using txn::Transaction;
using Clk = std::chrono::steady_clock;

constexpr uint32_t kTenant = 11;
constexpr uint32_t kReplicas = 3;
constexpr size_t kDataSize = 1 << 20;
constexpr size_t kLogSize = 2 << 20;
constexpr uint32_t kStripe = 256;
constexpr uint64_t kRangeStride = 4096;              // ranges of one transaction, >= the largest range
constexpr uint32_t kMaxRanges = 8;
constexpr uint64_t kSlotBytes = kMaxRanges * kRangeStride;  // one transaction's footprint
constexpr uint32_t kKeySlots = 16;                   // transaction i uses slot i % kKeySlots
constexpr uint32_t kMaxThreads = 8;
static_assert(kKeySlots * kSlotBytes <= kDataSize);
static_assert(kMaxThreads * kKeySlots * kStripe <= kDataSize);
// The group's op_timeout. Slowness is measured, not failed: a CPU-forwarding
// commit under 24 busy tenants took 0.3-0.5 s (6 operations through starved
// forwarders), and with other processes loading the machine on top a 3 s
// timeout (primitives_bench's) was exceeded. A chain that really stalls still
// fails within seconds.
constexpr uint64_t kOpTimeoutNs = 10'000'000'000ull;
constexpr uint32_t kWarmup = 32;  // commits before any measurement
constexpr uint32_t kMaxAbortRetries = 1000;
constexpr double kTargetP50Us = 5.0;
constexpr double kTargetCommitsPerS = 200'000;

double g_mt_seconds = 2.0;    // multi-tenant sampling budget per case
double g_tput_seconds = 1.0;  // throughput measuring time per case

// The `mode` argument: 0 offload; 1 CPU forwarding with event-driven
// forwarders (the default); 2 CPU forwarding with spinning forwarders.
ForwardMode mode_of(int64_t m) { return m == 0 ? ForwardMode::kOffload : ForwardMode::kCpuForward; }
prim::ReplicaHostOptions::CpuWait cpu_wait_of(int64_t m) {
  return m == 2 ? prim::ReplicaHostOptions::CpuWait::kSpin : prim::ReplicaHostOptions::CpuWait::kEvents;
}
std::string mode_label(int64_t m) {
  return m == 0 ? "offload" : m == 1 ? "cpu-forward(events)" : "cpu-forward(spin)";
}

// ---- how a client waits ----------------------------------------------------------------
// GroupOptions::progress runs on every fruitless turn of the group's waiting
// loops, on the waiting thread. It busy-polls `spin` turns per commit, then
// yields on every turn. begin_wait() restarts the count before each commit.
thread_local uint32_t t_turns = 0;
thread_local uint32_t t_spin = 64;
void begin_wait(uint32_t spin) {
  t_turns = 0;
  t_spin = spin;
}
void client_progress() {
  if (++t_turns > t_spin) {
    std::this_thread::yield();
  } else {
    cpu_relax();
  }
}
constexpr uint32_t kSpinPolls = 64;

// ---- watchdog: a hung store ends the run with a message instead of hanging it ---------------
// Every finished commit (or abort) bumps g_beat; if a case is running and no
// beat came for kHangSeconds, the process exits.
std::atomic<uint64_t> g_beat{0};
std::atomic<bool> g_case_running{false};
std::mutex g_case_mu;
std::string g_case;
constexpr int kHangSeconds = 60;

void start_watchdog() {
  std::thread([] {
    uint64_t last = 0;
    int quiet = 0;
    for (;;) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      const uint64_t b = g_beat.load(std::memory_order_relaxed);
      if (!g_case_running.load() || b != last) {
        last = b;
        quiet = 0;
        continue;
      }
      if (++quiet >= kHangSeconds) {
        std::lock_guard<std::mutex> l(g_case_mu);
        std::fprintf(stderr, "txn_bench: %s: no commit finished for %d s: the store hangs; exiting\n",
                     g_case.c_str(), kHangSeconds);
        std::fflush(stderr);
        std::_Exit(3);
      }
    }
  }).detach();
}

class CaseScope {
 public:
  CaseScope(const benchmark::State& state, const std::string& family, int args) {
    std::lock_guard<std::mutex> l(g_case_mu);
    g_case = family;
    for (int i = 0; i < args; ++i) g_case.append("/").append(std::to_string(state.range(i)));
    g_case_running = true;
  }
  ~CaseScope() { g_case_running = false; }
  CaseScope(const CaseScope&) = delete;
  CaseScope& operator=(const CaseScope&) = delete;
};

// ---- results kept for the summary -------------------------------------------------------
struct Summary {
  double p50 = 0, p99 = 0, p999 = 0;  // ns
  double commits_per_s = 0, cpu_per_commit = 0, foreign_pct = 0, records_per_log_write = 0;
  uint64_t commits = 0, aborts = 0;
};
bench::Results<Summary> g_sum;
void record(const std::string& key, const Summary& s) { g_sum.record(key, s); }
std::string lat_key(int64_t mode, int64_t ranges, int64_t bytes) {
  return "lat/" + std::to_string(mode) + "/" + std::to_string(ranges) + "/" + std::to_string(bytes);
}
std::string tput_key(int64_t mode, int64_t threads) {
  return "tput/" + std::to_string(mode) + "/" + std::to_string(threads);
}
std::string gc_key(int64_t depth, int64_t threads) {
  return "gc/" + std::to_string(depth) + "/" + std::to_string(threads);
}
std::string mt_key(bool nic, int64_t mode, int64_t k) {
  return std::string("mt/") + (nic ? "nic" : "app") + "/" + std::to_string(mode) + "/" + std::to_string(k);
}

// ---- the fixture ------------------------------------------------------------------------
struct BedConfig {
  ForwardMode mode = ForwardMode::kOffload;
  prim::ReplicaHostOptions::CpuWait cpu_wait = prim::ReplicaHostOptions::CpuWait::kEvents;
  int executor_cpu = -1;  // pin the one-thread executor
  int agent_cpu = -1;     // pin every replica agent
  uint32_t log_writes_in_flight = StoreOptions{}.log_writes_in_flight;  // group commit
};

struct Bed {
  soft::Fabric fabric;  // first: destroyed last
  std::unique_ptr<soft::Nic> client;
  std::vector<std::unique_ptr<soft::Nic>> nics;
  std::unique_ptr<soft::SingleThreadExecutor> exec;
  std::vector<std::unique_ptr<ReplicaHost>> hosts;
  std::unique_ptr<Store> store;
  StoreOptions opts;

  ~Bed() {
    store.reset();  // drops the group and its members on the hosts
    hosts.clear();  // joins the agents
    exec.reset();   // stops the NIC thread
    nics.clear();
    client.reset();
  }

  Status init(const BedConfig& c) {
    opts.tenant = kTenant;
    opts.data_size = kDataSize;
    opts.log_size = kLogSize;
    opts.stripe_bytes = kStripe;
    opts.log_writes_in_flight = c.log_writes_in_flight;
    opts.group.mode = c.mode;
    opts.group.slots = 4096;
    opts.group.rearm_batch = 64;
    opts.group.staging_bytes = 8 << 20;
    opts.group.op_timeout_ns = kOpTimeoutNs;
    opts.group.progress = client_progress;
    const size_t region = Store::region_bytes(opts);
    if (region == 0) return invalid_argument("Store::region_bytes: the benchmark's store options are invalid");

    exec = std::make_unique<soft::SingleThreadExecutor>(c.executor_cpu);
    soft::NicOptions co;
    co.name = "client";
    HL_ASSIGN_OR_RETURN(client, fabric.create_nic(co));
    exec->add(*client);
    std::vector<ReplicaHost*> raw;
    for (uint32_t i = 0; i < kReplicas; ++i) {
      soft::NicOptions o;
      o.name = "replica" + std::to_string(i);
      HL_ASSIGN_OR_RETURN(auto nic, fabric.create_nic(o));
      exec->add(*nic);
      prim::ReplicaHostOptions ho;
      ho.agent_cpu = c.agent_cpu;
      ho.cpu_wait = c.cpu_wait;
      HL_ASSIGN_OR_RETURN(auto host, ReplicaHost::create(*nic, ho));
      HL_RETURN_IF_ERROR(host->register_tenant(kTenant, region));
      raw.push_back(host.get());
      nics.push_back(std::move(nic));
      hosts.push_back(std::move(host));
    }
    begin_wait(kSpinPolls);
    HL_ASSIGN_OR_RETURN(store, Store::open(*client, std::span<ReplicaHost* const>(raw), opts));
    return Status::ok();
  }

  uint64_t agent_cpu_ns() const {
    uint64_t s = 0;
    for (const auto& h : hosts) s += h->agent_cpu_ns();
    return s;
  }
  // The data area's offset in the region, per the layout in hyperloop/txn.h:
  // superblock (4 KiB), log, one 8-byte lock word per stripe, data (which
  // starts on a 64-byte line; with the benchmark's options it is anyway).
  uint64_t data_offset() const {
    const uint64_t stripes = (opts.data_size + opts.stripe_bytes - 1) / opts.stripe_bytes;
    return (4096 + opts.log_size + 8 * stripes + 63) & ~uint64_t{63};
  }
};

// ---- transactions -----------------------------------------------------------------------
// What one client writes: `ranges` ranges of `bytes` bytes, range r at
// base + r * kRangeStride; every range carries the transaction number in its
// first 8 bytes.
struct Writer {
  uint32_t ranges;
  uint64_t bytes;
  std::vector<std::byte> payload;
  uint64_t aborts = 0;

  Writer(uint32_t r, uint64_t b) : ranges(r), bytes(b), payload(b) {
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = std::byte(uint8_t(i * 131 + 17));
  }
  std::vector<std::byte> expected(uint64_t number) const {
    std::vector<std::byte> want(payload);
    std::memcpy(want.data(), &number, std::min<uint64_t>(8, bytes));
    return want;
  }

  // One transaction, run again while it aborts (each abort counted).
  Status commit(Store& store, uint64_t base, uint64_t number, uint32_t spin) {
    std::memcpy(payload.data(), &number, std::min<uint64_t>(8, bytes));
    const std::span<const std::byte> data(payload.data(), bytes);
    for (uint32_t attempt = 0;; ++attempt) {
      begin_wait(spin);
      Transaction t = store.begin();
      for (uint32_t r = 0; r < ranges; ++r) HL_RETURN_IF_ERROR(t.write(base + r * kRangeStride, data));
      Status st = t.commit();
      g_beat.fetch_add(1, std::memory_order_relaxed);
      if (st.code() != StatusCode::kAborted || attempt >= kMaxAbortRetries) return st;
      ++aborts;
    }
  }

  // After store.drain(): transaction `number` is what base holds, through the
  // store and on every replica.
  Status verify(Bed& bed, uint64_t base, uint64_t number) const {
    const std::vector<std::byte> want = expected(number);
    std::vector<std::byte> got(bytes);
    const uint64_t data_off = bed.data_offset();
    for (uint32_t r = 0; r < ranges; ++r) {
      const uint64_t off = base + r * kRangeStride;
      HL_RETURN_IF_ERROR(bed.store->read(off, got));
      if (got != want)
        return internal_error("Store::read at " + std::to_string(off) + " does not return transaction " +
                              std::to_string(number));
      for (uint32_t rep = 0; rep < bed.store->replicas(); ++rep) {
        HL_RETURN_IF_ERROR(bed.store->group().read(rep, data_off + off, got));
        if (got != want)
          return internal_error("replica " + std::to_string(rep) + ": data offset " + std::to_string(off) +
                                " (region offset " + std::to_string(data_off + off) +
                                ") does not hold transaction " + std::to_string(number));
      }
    }
    return Status::ok();
  }
};

uint64_t slot_base(uint64_t i) { return (i % kKeySlots) * kSlotBytes; }

// Counters every case reports, over its measured interval.
struct Interval {
  StoreStats s0;
  uint64_t ops0 = 0, cpu0 = 0;
  Clk::time_point w0;
  ForeignCpu foreign;
  explicit Interval(Bed& bed)
      : s0(bed.store->stats()), ops0(bed.store->group().completed()), cpu0(bed.agent_cpu_ns()), w0(Clk::now()) {}

  // Sets the common counters; returns the wall time in seconds.
  double finish(benchmark::State& state, Bed& bed, uint64_t commits, Summary* sum) {
    const double wall = std::chrono::duration<double>(Clk::now() - w0).count();
    const StoreStats s1 = bed.store->stats();
    const uint64_t ops = bed.store->group().completed() - ops0;
    const uint64_t cpu = bed.agent_cpu_ns() - cpu0;
    const double c = commits ? double(commits) : 1.0;
    state.counters["aborts"] = double(s1.aborts - s0.aborts);
    state.counters["lock_waits"] = double(s1.lock_waits - s0.lock_waits);
    state.counters["group_ops_per_commit"] = double(ops) / c;
    const uint64_t writes = s1.log_writes - s0.log_writes;
    sum->records_per_log_write = writes ? double(s1.log_write_records - s0.log_write_records) / double(writes) : 0;
    state.counters["records_per_log_write"] = sum->records_per_log_write;
    state.counters["agent_cpu_ns_per_commit"] = double(cpu) / c;
    state.counters["agent_cores"] = wall > 0 ? double(cpu) / 1e9 / wall : 0.0;
    sum->foreign_pct = foreign.percent();
    state.counters["foreign_cpu_pct"] = sum->foreign_pct;
    sum->cpu_per_commit = double(cpu) / c;
    sum->commits = commits;
    sum->aborts = s1.aborts - s0.aborts;
    return wall;
  }
};

void set_latency(Summary* sum, const bench::LatencySummary& l) {
  sum->p50 = l.p50;
  sum->p99 = l.p99;
  sum->p999 = l.p999;
}

// Runs `threads` client threads for g_tput_seconds per benchmark iteration
// (manual time: the measured wall time). Thread t calls unit(t) again and
// again: one unit of work (a commit, with whatever retries it makes),
// returning its status; the first error stops every thread and is kept in
// errors[t]. lat[t] gets the latency of each unit that returned OK. Returns
// the units done in the last iteration; sets *wall to its wall time.
template <class Unit>
uint64_t run_clients(benchmark::State& state, Bed& bed, int threads, Unit unit,
                     std::vector<std::vector<uint64_t>>& lat, std::vector<Status>& errors, Summary* sum,
                     double* wall) {
  lat.assign(size_t(threads), {});
  errors.assign(size_t(threads), Status::ok());
  uint64_t units = 0;
  for (auto _ : state) {
    std::atomic<bool> go{false}, stop{false};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        std::vector<uint64_t>& mine = lat[size_t(t)];
        mine.reserve(1 << 18);
        while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
        while (!stop.load(std::memory_order_relaxed)) {
          const auto t0 = Clk::now();
          Status st = unit(t);
          if (!st.is_ok()) {
            errors[size_t(t)] = std::move(st);
            stop = true;
            return;
          }
          mine.push_back(uint64_t(std::chrono::nanoseconds(Clk::now() - t0).count()));
        }
      });
    Interval iv(bed);
    go.store(true, std::memory_order_release);
    const auto end = Clk::now() + std::chrono::duration<double>(g_tput_seconds);
    while (!stop.load() && Clk::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    stop = true;
    for (auto& th : pool) th.join();
    units = 0;
    for (auto& l : lat) units += l.size();
    *wall = iv.finish(state, bed, units, sum);
    state.SetIterationTime(*wall);
  }
  return units;
}

// ---- commit latency -----------------------------------------------------------------------
// Args: mode, ranges, bytes.
void BM_CommitLatency(benchmark::State& state) {
  CaseScope scope(state, "BM_CommitLatency", 3);
  const int64_t mode = state.range(0), ranges = state.range(1), bytes = state.range(2);
  state.SetLabel(mode_label(mode));
  BedConfig cfg;
  cfg.mode = mode_of(mode);
  cfg.cpu_wait = cpu_wait_of(mode);
  Bed bed;
  BENCH_CHECK_OK(state, bed.init(cfg));
  Store& store = *bed.store;
  Writer w{uint32_t(ranges), uint64_t(bytes)};

  uint64_t i = 0;
  for (; i < kWarmup; ++i) BENCH_CHECK_OK(state, w.commit(store, slot_base(i), i, kSpinPolls));
  std::vector<uint64_t> lat;
  lat.reserve(1 << 16);
  Interval iv(bed);
  for (auto _ : state) {
    const auto t0 = Clk::now();
    BENCH_CHECK_OK(state, w.commit(store, slot_base(i), i, kSpinPolls));
    lat.push_back(uint64_t(std::chrono::nanoseconds(Clk::now() - t0).count()));
    ++i;
  }
  Summary sum;
  iv.finish(state, bed, lat.size(), &sum);
  BENCH_CHECK_OK(state, store.drain());
  for (uint64_t k = (i > kKeySlots ? i - kKeySlots : 0); k < i; ++k)
    BENCH_CHECK_OK(state, w.verify(bed, slot_base(k), k));
  state.SetItemsProcessed(int64_t(state.iterations()));
  state.SetBytesProcessed(int64_t(state.iterations()) * ranges * bytes);
  set_latency(&sum, bench::report_latencies(state, lat, LatencyUnit::kUs));
  if (mode == 0 && ranges == 1 && bytes == 64)
    state.counters["target_p50_le_5us"] = sum.p50 <= kTargetP50Us * 1000 ? 1 : 0;
  record(lat_key(mode, ranges, bytes), sum);
}

// ---- throughput ---------------------------------------------------------------------------
// Args: mode, threads. Each client thread t commits 1-range 64 B transactions
// at stripes t * kKeySlots + (j % kKeySlots) for g_tput_seconds. One
// benchmark iteration (manual time: the measured wall time).
// The body of BM_CommitThroughput and BM_GroupCommit; kept in the summary under `key`.
void commit_throughput(benchmark::State& state, int64_t mode, int64_t threads, uint32_t log_writes_in_flight,
                       const std::string& key) {
  constexpr uint64_t kBytes = 64;
  state.SetLabel(mode_label(mode) + " 1x64B");
  BedConfig cfg;
  cfg.mode = mode_of(mode);
  cfg.cpu_wait = cpu_wait_of(mode);
  cfg.log_writes_in_flight = log_writes_in_flight;
  Bed bed;
  BENCH_CHECK_OK(state, bed.init(cfg));
  Store& store = *bed.store;
  auto base_of = [](int64_t t, uint64_t j) { return (uint64_t(t) * kKeySlots + j % kKeySlots) * kStripe; };

  struct Client {
    Writer w{1, kBytes};
    uint64_t next = 0;  // transactions committed (numbers 0 .. next-1)
  };
  std::vector<Client> clients(static_cast<size_t>(threads));
  // Warm-up from this thread: every client's keys once, then some more.
  for (int64_t t = 0; t < threads; ++t)
    for (uint32_t k = 0; k < kWarmup; ++k, ++clients[size_t(t)].next)
      BENCH_CHECK_OK(state, clients[size_t(t)].w.commit(store, base_of(t, k), k, kSpinPolls));

  Summary sum;
  double wall = 0;
  std::vector<std::vector<uint64_t>> lats;
  std::vector<Status> errors;
  const uint64_t commits = run_clients(
      state, bed, int(threads),
      [&](int t) {
        Client& c = clients[size_t(t)];
        Status st = c.w.commit(store, base_of(t, c.next), c.next, kSpinPolls);
        if (st.is_ok()) ++c.next;
        return st;
      },
      lats, errors, &sum, &wall);
  for (auto& e : errors) BENCH_CHECK_OK(state, e);
  BENCH_CHECK_OK(state, store.drain());
  for (int64_t t = 0; t < threads; ++t) {
    const Client& c = clients[size_t(t)];
    for (uint64_t k = (c.next > kKeySlots ? c.next - kKeySlots : 0); k < c.next; ++k)
      BENCH_CHECK_OK(state, c.w.verify(bed, base_of(t, k), k));
  }
  std::vector<uint64_t> lat;
  uint64_t aborts = 0;
  for (auto& l : lats) lat.insert(lat.end(), l.begin(), l.end());
  for (auto& c : clients) aborts += c.w.aborts;
  sum.commits_per_s = wall > 0 ? double(commits) / wall : 0;
  state.counters["commits"] = double(commits);
  state.counters["commits_per_s"] = sum.commits_per_s;
  state.counters["aborts_retried"] = double(aborts);
  state.counters["target_ge_200k_per_s"] = sum.commits_per_s >= kTargetCommitsPerS ? 1 : 0;
  state.SetItemsProcessed(int64_t(commits));
  set_latency(&sum, bench::report_latencies(state, lat, LatencyUnit::kUs));
  record(key, sum);
}

void BM_CommitThroughput(benchmark::State& state) {
  CaseScope scope(state, "BM_CommitThroughput", 2);
  commit_throughput(state, state.range(0), state.range(1), StoreOptions{}.log_writes_in_flight,
                    tput_key(state.range(0), state.range(1)));
}

// ---- group commit -----------------------------------------------------------------------------
// Args: depth (StoreOptions::log_writes_in_flight; 0: no group commit, every
// commit writes its own record at once), threads. Offload, as
// BM_CommitThroughput: what group commit buys at 8 threads, and what it
// costs a lone committer (threads:1).
void BM_GroupCommit(benchmark::State& state) {
  CaseScope scope(state, "BM_GroupCommit", 2);
  commit_throughput(state, 0, state.range(1), uint32_t(state.range(0)), gc_key(state.range(0), state.range(1)));
}

// ---- contended transfers ---------------------------------------------------------------------
// Args: mode. 6 client threads move money among 64 accounts (8 bytes each,
// one stripe apart) for g_tput_seconds: read two accounts, write both, commit,
// retry on kAborted. The sum of all balances is checked afterwards. What a
// user of CPU-forwarding mode meets on these 2 cores (issue 16 measured 17 to
// 78 commits/s with spinning forwarders).
constexpr uint32_t kAccounts = 64;
constexpr int kTransferThreads = 6;
constexpr uint64_t kOpening = 1'000'000;

uint64_t account_at(uint32_t a) { return uint64_t(a) * kStripe; }

void BM_ContendedTransfers(benchmark::State& state) {
  CaseScope scope(state, "BM_ContendedTransfers", 1);
  const int64_t mode = state.range(0);
  state.SetLabel(mode_label(mode) + " 6 threads, 64 accounts");
  BedConfig cfg;
  cfg.mode = mode_of(mode);
  cfg.cpu_wait = cpu_wait_of(mode);
  Bed bed;
  BENCH_CHECK_OK(state, bed.init(cfg));
  Store& store = *bed.store;
  {
    Transaction t = store.begin();
    for (uint32_t a = 0; a < kAccounts; ++a)
      BENCH_CHECK_OK(state, t.write(account_at(a), std::as_bytes(std::span<const uint64_t>(&kOpening, 1))));
    begin_wait(kSpinPolls);
    BENCH_CHECK_OK(state, t.commit());
  }
  std::vector<std::mt19937> rngs;
  for (int t = 0; t < kTransferThreads; ++t) rngs.emplace_back(uint32_t(16 + t));  // seeded: the same pairs every run
  std::vector<uint64_t> retried(kTransferThreads, 0);
  Summary sum;
  double wall = 0;
  std::vector<std::vector<uint64_t>> lats;
  std::vector<Status> errors;
  const uint64_t commits = run_clients(
      state, bed, kTransferThreads,
      [&](int t) {
        std::mt19937& rng = rngs[size_t(t)];
        const uint32_t a = rng() % kAccounts, b = (a + 1 + rng() % (kAccounts - 1)) % kAccounts;
        for (uint32_t attempt = 0;; ++attempt) {
          begin_wait(kSpinPolls);
          Transaction x = store.begin();
          uint64_t va = 0, vb = 0;
          Status st = x.read(account_at(a), std::as_writable_bytes(std::span<uint64_t>(&va, 1)));
          if (st.is_ok()) st = x.read(account_at(b), std::as_writable_bytes(std::span<uint64_t>(&vb, 1)));
          --va, ++vb;
          if (st.is_ok()) st = x.write(account_at(a), std::as_bytes(std::span<const uint64_t>(&va, 1)));
          if (st.is_ok()) st = x.write(account_at(b), std::as_bytes(std::span<const uint64_t>(&vb, 1)));
          if (st.is_ok()) st = x.commit();
          g_beat.fetch_add(1, std::memory_order_relaxed);
          if (st.is_ok() || st.code() != StatusCode::kAborted || attempt >= kMaxAbortRetries) return st;
          ++retried[size_t(t)];
        }
      },
      lats, errors, &sum, &wall);
  for (auto& e : errors) BENCH_CHECK_OK(state, e);
  BENCH_CHECK_OK(state, store.drain());
  // Money is neither made nor lost: the balances still sum to the opening total.
  {
    begin_wait(kSpinPolls);
    Transaction t = store.begin();
    uint64_t total = 0;
    for (uint32_t a = 0; a < kAccounts; ++a) {
      uint64_t v = 0;
      BENCH_CHECK_OK(state, t.read(account_at(a), std::as_writable_bytes(std::span<uint64_t>(&v, 1))));
      total += v;
    }
    t.abort();
    if (total != kOpening * kAccounts) {
      state.SkipWithError("the balances do not sum to the opening total: a transfer was lost or torn");
      return;
    }
  }
  std::vector<uint64_t> lat;
  uint64_t aborts = 0;
  for (auto& l : lats) lat.insert(lat.end(), l.begin(), l.end());
  for (uint64_t r : retried) aborts += r;
  sum.commits_per_s = wall > 0 ? double(commits) / wall : 0;
  state.counters["commits"] = double(commits);
  state.counters["commits_per_s"] = sum.commits_per_s;
  state.counters["aborts_retried"] = double(aborts);
  state.SetItemsProcessed(int64_t(commits));
  if (!lat.empty()) set_latency(&sum, bench::report_latencies(state, lat, LatencyUnit::kUs));
  record("contended/" + std::to_string(mode), sum);
}

// ---- multi-tenant ----------------------------------------------------------------------------
constexpr int kNicCpu = 0, kAppCpu = 1;

// Args: mode, K. 1-range 64 B commits over 3 replicas while K busy tenant
// threads per replica host spin on the application core.
void BM_MultiTenant(benchmark::State& state, bool client_on_nic_core) {
  CaseScope scope(state, client_on_nic_core ? "BM_MultiTenant/client_on_nic_core" : "BM_MultiTenant/client_on_app_core",
                  2);
  const int64_t mode = state.range(0), K = state.range(1);
  state.SetLabel(mode_label(mode) + (client_on_nic_core ? " client@cpu0(nic)" : " client@cpu1(app)") +
                 " busy=" + std::to_string(K * kReplicas));
  if (!have_cpus_0_and_1()) {
    state.SkipWithError("multi-tenant experiment needs CPUs 0 and 1 in the affinity mask");
    return;
  }
  AffinityGuard restore;
  if (!pin_self(client_on_nic_core ? kNicCpu : kAppCpu)) {
    state.SkipWithError("cannot pin the client thread");
    return;
  }
  BedConfig cfg;
  cfg.mode = mode_of(mode);
  cfg.cpu_wait = cpu_wait_of(mode);
  cfg.executor_cpu = kNicCpu;
  cfg.agent_cpu = kAppCpu;
  Bed bed;
  BENCH_CHECK_OK(state, bed.init(cfg));
  Store& store = *bed.store;
  Writer w{1, 64};
  constexpr uint32_t kYield = 0;  // the client always shares its core here

  std::vector<uint64_t> lat;
  lat.reserve(1 << 20);
  uint64_t i = 0;
  double measured_s = 0;
  Summary sum;
  for (auto _ : state) {
    BusyTenants busy(kAppCpu, uint32_t(K) * kReplicas);
    // Warm-up: a few commits, bounded in time, with the tenants already busy.
    const auto warm_end = Clk::now() + std::chrono::duration<double>(g_mt_seconds * 0.1);
    for (; i < kWarmup && Clk::now() < warm_end; ++i) BENCH_CHECK_OK(state, w.commit(store, slot_base(i), i, kYield));
    Interval iv(bed);
    const auto end = iv.w0 + std::chrono::duration<double>(g_mt_seconds);
    for (;;) {
      const auto t0 = Clk::now();
      if (t0 >= end || lat.size() >= 2'000'000) break;
      BENCH_CHECK_OK(state, w.commit(store, slot_base(i), i, kYield));
      lat.push_back(uint64_t(std::chrono::nanoseconds(Clk::now() - t0).count()));
      ++i;
    }
    measured_s = iv.finish(state, bed, lat.size(), &sum);
    busy.stop();
    state.SetIterationTime(lat.empty() ? measured_s : measured_s / double(lat.size()));  // mean per commit
  }
  BENCH_CHECK_OK(state, store.drain());
  for (uint64_t k = (i > kKeySlots ? i - kKeySlots : 0); k < i; ++k)
    BENCH_CHECK_OK(state, w.verify(bed, slot_base(k), k));
  if (lat.empty()) {
    state.SkipWithError("no commit finished within the budget");
    return;
  }
  sum.commits_per_s = double(lat.size()) / measured_s;
  state.counters["commits"] = double(lat.size());
  state.counters["commits_per_s"] = sum.commits_per_s;
  set_latency(&sum, bench::report_latencies(state, lat, LatencyUnit::kUs));
  record(mt_key(client_on_nic_core, mode, K), sum);
}

// ---- registration -----------------------------------------------------------------------------
const std::vector<int64_t> kModes = {0, 1, 2};

// ArgsProduct varies the first argument fastest: offload and CPU forwarding
// of the same case end up on consecutive rows.
BENCHMARK(BM_CommitLatency)
    ->ArgNames({"mode", "ranges", "bytes"})
    ->ArgsProduct({kModes, {1, 8}, {64, 512, 4096}})
    ->UseRealTime();
BENCHMARK(BM_CommitThroughput)
    ->ArgNames({"mode", "threads"})
    ->ArgsProduct({kModes, {1, 2, 4, 8}})
    ->Iterations(1)
    ->UseManualTime();
BENCHMARK(BM_GroupCommit)
    ->ArgNames({"depth", "threads"})
    ->ArgsProduct({{0, 1, 2, 4}, {1, 8}})
    ->Iterations(1)
    ->UseManualTime();
BENCHMARK(BM_ContendedTransfers)
    ->ArgNames({"mode"})
    ->ArgsProduct({kModes})
    ->Iterations(1)
    ->UseManualTime();
BENCHMARK_CAPTURE(BM_MultiTenant, client_on_nic_core, true)
    ->ArgNames({"mode", "K"})
    ->ArgsProduct({kModes, {0, 8}})
    ->Iterations(1)
    ->UseManualTime();
BENCHMARK_CAPTURE(BM_MultiTenant, client_on_app_core, false)
    ->ArgNames({"mode", "K"})
    ->ArgsProduct({kModes, {0, 8}})
    ->Iterations(1)
    ->UseManualTime();

// ---- summary -----------------------------------------------------------------------------------
void print_summary() {
  if (g_sum.all().empty()) return;
  auto find = [&](const std::string& k) { return g_sum.find(k); };
  auto us = [](const Summary* s, double Summary::*f) { return s ? s->*f / 1000.0 : -1.0; };
  std::fprintf(stderr, "\n== summary (measured, not asserted; -1: not run) ==\n");

  bool any_lat = false;
  for (const auto& [k, s] : g_sum.all()) any_lat |= k.rfind("lat/", 0) == 0;
  if (any_lat) {
    std::fprintf(stderr, "commit latency, 3 replicas, one-thread executor (us):\n");
    std::fprintf(stderr, "  %6s %5s | %8s %8s %8s | %8s %8s %8s | %s\n", "ranges", "bytes", "off p50", "off p99",
                 "off p999", "cpu p50", "cpu p99", "cpu p999", "foreign cpu % (off/cpu)");
    for (int r : {1, 8})
      for (int b : {64, 512, 4096}) {
        const Summary* o = find(lat_key(0, r, b));
        const Summary* c = find(lat_key(1, r, b));
        if (!o && !c) continue;
        std::fprintf(stderr, "  %6d %5d | %8.2f %8.2f %8.2f | %8.2f %8.2f %8.2f | %.1f / %.1f\n", r, b,
                     us(o, &Summary::p50), us(o, &Summary::p99), us(o, &Summary::p999), us(c, &Summary::p50),
                     us(c, &Summary::p99), us(c, &Summary::p999), o ? o->foreign_pct : -1, c ? c->foreign_pct : -1);
      }
  }
  bool any_tput = false;
  for (const auto& [k, s] : g_sum.all()) any_tput |= k.rfind("tput/", 0) == 0;
  if (any_tput) {
    std::fprintf(stderr, "commit throughput, 1 range of 64 B, disjoint keys (commits/s):\n");
    std::fprintf(stderr, "  %7s | %10s %8s %8s | %10s %8s %8s | %s\n", "threads", "offload", "p50 us", "p99 us",
                 "cpu-fwd", "p50 us", "p99 us", "foreign cpu % (off/cpu)");
    for (int t : {1, 2, 4, 8}) {
      const Summary* o = find(tput_key(0, t));
      const Summary* c = find(tput_key(1, t));
      if (!o && !c) continue;
      std::fprintf(stderr, "  %7d | %10.0f %8.2f %8.2f | %10.0f %8.2f %8.2f | %.1f / %.1f\n", t,
                   o ? o->commits_per_s : -1, us(o, &Summary::p50), us(o, &Summary::p99), c ? c->commits_per_s : -1,
                   us(c, &Summary::p50), us(c, &Summary::p99), o ? o->foreign_pct : -1, c ? c->foreign_pct : -1);
    }
  }
  bool any_gc = false;
  for (const auto& [k, s] : g_sum.all()) any_gc |= k.rfind("gc/", 0) == 0;
  if (any_gc) {
    std::fprintf(stderr, "group commit, offload, 1 range of 64 B (log_writes_in_flight; 0: off):\n");
    std::fprintf(stderr, "  %5s %7s | %10s %8s %8s %12s | %s\n", "depth", "threads", "commits/s", "p50 us", "p99 us",
                 "records/write", "foreign cpu %");
    for (int d : {0, 1, 2, 4})
      for (int t : {1, 8})
        if (const Summary* g = find(gc_key(d, t)))
          std::fprintf(stderr, "  %5d %7d | %10.0f %8.2f %8.2f %12.2f | %.1f\n", d, t, g->commits_per_s,
                       us(g, &Summary::p50), us(g, &Summary::p99), g->records_per_log_write, g->foreign_pct);
    const Summary* off1 = find(gc_key(0, 1));
    const Summary* on1 = find(gc_key(1, 1));
    if (off1 && on1)
      std::fprintf(stderr, "  a lone committer with group commit (depth 1) / without (0): p50 %.2f / %.2f us -> %s\n",
                   on1->p50 / 1000, off1->p50 / 1000, on1->p50 <= 1.1 * off1->p50 ? "not slower (within 10 %)" : "SLOWER");
    const Summary* off8 = find(gc_key(0, 8));
    const Summary* on8 = find(gc_key(1, 8));
    if (off8 && on8)
      std::fprintf(stderr, "  8 threads with group commit (depth 1) / without: %.0f / %.0f commits/s, %.2f records per "
                   "log write (StoreOptions default: depth %u)\n",
                   on8->commits_per_s, off8->commits_per_s, on8->records_per_log_write,
                   StoreOptions{}.log_writes_in_flight);
  }
  for (const char* place : {"nic", "app"}) {
    const bool nic = std::strcmp(place, "nic") == 0;
    bool any = false;
    for (int K : {0, 8}) any |= find(mt_key(nic, 0, K)) || find(mt_key(nic, 1, K));
    if (!any) continue;
    std::fprintf(stderr, "multi-tenant, 1 range of 64 B, client on %s core (us):\n",
                 nic ? "the NIC (cpu0)" : "the application (cpu1)");
    std::fprintf(stderr, "  %3s | %8s %8s %8s | %8s %8s %8s | %s\n", "K", "off p50", "off p99", "off p999", "cpu p50",
                 "cpu p99", "cpu p999", "cpu p99 / off p99");
    for (int K : {0, 8}) {
      const Summary* o = find(mt_key(nic, 0, K));
      const Summary* c = find(mt_key(nic, 1, K));
      std::fprintf(stderr, "  %3d | %8.2f %8.2f %8.2f | %8.2f %8.2f %8.2f | %.1fx\n", K, us(o, &Summary::p50),
                   us(o, &Summary::p99), us(o, &Summary::p999), us(c, &Summary::p50), us(c, &Summary::p99),
                   us(c, &Summary::p999), (o && c && o->p99 > 0) ? c->p99 / o->p99 : 0.0);
    }
    const Summary* o0 = find(mt_key(nic, 0, 0));
    const Summary* o8 = find(mt_key(nic, 0, 8));
    if (o0 && o8 && o0->p99 > 0)
      std::fprintf(stderr, "  offload p99 at K=8 / K=0: %.2fx\n", o8->p99 / o0->p99);
  }
  if (const Summary* s = find(lat_key(0, 1, 64))) {
    std::fprintf(stderr, "target: 1-range 64 B commit, 3 replicas, one-thread executor, p50 <= 5 us (offload): %.2f us -> %s"
                 " (foreign cpu %.1f %%)\n",
                 s->p50 / 1000, s->p50 <= kTargetP50Us * 1000 ? "met" : "MISSED", s->foreign_pct);
    if (const Summary* c = find(lat_key(1, 1, 64)))
      std::fprintf(stderr, "        (CPU forwarding, same case: p50 %.2f us)\n", c->p50 / 1000);
  }
  if (const Summary* o = find("contended/0")) {
    std::fprintf(stderr, "contended transfers, 6 threads, 64 accounts, 3 replicas (commits/s): offload %.0f", o->commits_per_s);
    for (int m : {1, 2})
      if (const Summary* c = find("contended/" + std::to_string(m)))
        std::fprintf(stderr, ", %s %.0f (%.2f of offload)", mode_label(m).c_str(), c->commits_per_s,
                     o->commits_per_s > 0 ? c->commits_per_s / o->commits_per_s : 0.0);
    std::fprintf(stderr, "\n");
    if (const Summary* e = find("contended/1"))
      std::fprintf(stderr, "target: contended transfers, CPU forwarding (event-driven) >= 1/3 of offload's commits/s: "
                   "%.2f -> %s (foreign cpu %.1f / %.1f %%)\n",
                   o->commits_per_s > 0 ? e->commits_per_s / o->commits_per_s : 0.0,
                   3 * e->commits_per_s >= o->commits_per_s ? "met" : "MISSED", o->foreign_pct, e->foreign_pct);
  }
  for (int m : {0, 1, 2}) {
    const Summary* best = nullptr;
    int best_t = 0;
    for (int t : {1, 2, 4, 8})
      if (const Summary* s = find(tput_key(m, t)); s && (!best || s->commits_per_s > best->commits_per_s))
        best = s, best_t = t;
    // The target names 8 client threads: BM_GroupCommit's rows count too (offload).
    if (m == 0)
      for (int d : {1, 2, 4})
        if (const Summary* s = find(gc_key(d, 8)); s && (!best || s->commits_per_s > best->commits_per_s))
          best = s, best_t = 8;
    if (best)
      std::fprintf(stderr, "target: >= 200,000 commits/s with concurrency (%s): best %.0f/s at %d threads -> %s"
                   " (foreign cpu %.1f %%)\n",
                   mode_label(m).c_str(), best->commits_per_s, best_t,
                   best->commits_per_s >= kTargetCommitsPerS ? "met" : "MISSED", best->foreign_pct);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // --mt_seconds=S / --tput_seconds=S override the multi-tenant and the
  // throughput budgets; otherwise they follow --benchmark_min_time.
  std::vector<char*> args;
  double mt = -1, tput = -1, min_time = 0.5;
  for (int a = 0; a < argc; ++a) {
    const std::string s = argv[a];
    if (s.rfind("--mt_seconds=", 0) == 0) {
      mt = std::strtod(s.c_str() + 13, nullptr);
      continue;
    }
    if (s.rfind("--tput_seconds=", 0) == 0) {
      tput = std::strtod(s.c_str() + 15, nullptr);
      continue;
    }
    if (s.rfind("--benchmark_min_time=", 0) == 0) min_time = std::strtod(s.c_str() + 21, nullptr);
    args.push_back(argv[a]);
  }
  g_mt_seconds = mt > 0 ? mt : std::clamp(4 * min_time, 0.05, 2.0);
  g_tput_seconds = tput > 0 ? tput : std::clamp(2 * min_time, 0.05, 1.0);
  int n = int(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  start_watchdog();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_summary();
  return 0;
}
