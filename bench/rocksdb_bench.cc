// rocksdb_bench: synced RocksDB writes on the replicated WAL (examples/rocksdb),
// side by side with the local WAL, in one run.
//
//   BM_SyncedPut/backend:  one thread, Put of 16 B keys (random) and 100 B
//     values, WriteOptions::sync = true, for --rocks_seconds (default 2 s):
//       0 local       RocksDB's own WAL, fsync'd on this machine's disk
//       1 nowal       disableWAL (the ceiling: no durability at all)
//       2 offload     the WAL on 3 replicas (EmbeddedChain), kOffload
//       3 cpu         the same, kCpuForward (replica agents forward)
//   BM_MultiTenant/mode/K: 4 tenants, each a RocksDB primary with its own ring,
//     all on the same 3 replica hosts; the hosts' agents share CPU 1 with
//     3*K busy tenant threads; the 4 writers and the NICs' thread are on CPU 0
//     (the writers yield while they wait on the chain).
//     Synced Puts; p99 over all tenants' writes.
// Each case reports p50/p99/p99.9 (us) and the foreign CPU (other processes,
// % of the machine) during it; the summary at the end prints every target
// with its measured value and met/missed.
//
// What "durable" means here: the replicas' regions are the software RNIC's
// DRAM in this process (EmbeddedChain), so a synced write is in the memory
// of 3 replica hosts, not on a medium that survives power loss (the daemons'
// region files are that: rocks_failover_test). The local WAL case fsyncs to
// this VM's virtio disk.
#include <benchmark/benchmark.h>
#include <rocksdb/db.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "bench_util.h"
#include "replicated_rocksdb.h"

using namespace hyperloop;
using Clk = std::chrono::steady_clock;

namespace {

double g_seconds = 2.0;

struct Summary {
  double mean_us = 0, p50 = 0, p99 = 0, p999 = 0, foreign = 0;
  uint64_t ops = 0;
};
bench::Results<Summary> g_results;

std::string fresh_dir(const std::string& name) {
  const auto p = std::filesystem::temp_directory_path() / ("hl-rocks-bench-" + std::to_string(getpid()) + "-" + name);
  std::filesystem::remove_all(p);
  return p.string();
}

std::string key_of(std::mt19937_64& rng) {
  char k[17];
  std::snprintf(k, sizeof k, "%016llx", static_cast<unsigned long long>(rng()));
  return std::string(k, 16);
}

// Synced puts on db for `seconds`; latencies in ns appended.
Status put_loop(rocksdb::DB* db, const rocksdb::WriteOptions& wo, double seconds, uint64_t seed,
                std::vector<uint64_t>* lat) {
  std::mt19937_64 rng(seed);
  const std::string value(100, 'v');
  const auto end = Clk::now() + std::chrono::duration<double>(seconds);
  while (Clk::now() < end && lat->size() < 5'000'000) {
    const std::string k = key_of(rng);
    const auto t0 = Clk::now();
    rocksdb::Status s = db->Put(wo, k, value);
    lat->push_back(uint64_t(std::chrono::nanoseconds(Clk::now() - t0).count()));
    if (!s.ok()) return Status(StatusCode::kInternal, s.ToString());
  }
  return Status::ok();
}

const char* backend_name(int64_t b) {
  static const char* names[] = {"local", "nowal", "offload", "cpu"};
  return names[b];
}

void summarize(benchmark::State& state, const std::string& key, std::vector<uint64_t>& lat, double wall_s,
               const bench::ForeignCpu& foreign) {
  Summary s;
  s.ops = lat.size();
  double sum = 0;
  for (uint64_t v : lat) sum += double(v);
  s.mean_us = lat.empty() ? 0 : sum / double(lat.size()) / 1e3;
  const auto l = bench::report_latencies(state, lat, bench::LatencyUnit::kUs);
  s.p50 = l.p50 / 1e3;
  s.p99 = l.p99 / 1e3;
  s.p999 = l.p999 / 1e3;
  s.foreign = foreign.percent();
  state.counters["mean_us"] = s.mean_us;
  state.counters["ops"] = double(s.ops);
  state.counters["ops_per_s"] = wall_s > 0 ? double(s.ops) / wall_s : 0;
  state.counters["foreign_cpu_pct"] = s.foreign;
  g_results.record(key, s);
}

void BM_SyncedPut(benchmark::State& state) {
  const int64_t b = state.range(0);
  state.SetLabel(backend_name(b));
  std::unique_ptr<rocks::EmbeddedChain> chain;
  std::shared_ptr<rocks::WalFileSystem> fs;
  std::unique_ptr<rocksdb::Env> env;
  rocksdb::Options o;
  o.create_if_missing = true;
  o.info_log_level = rocksdb::WARN_LEVEL;
  if (b >= 2) {
    rocks::EmbeddedOptions eo;
    eo.mode = b == 2 ? prim::ForwardMode::kOffload : prim::ForwardMode::kCpuForward;
    auto c = rocks::EmbeddedChain::create(eo);
    BENCH_CHECK_OK(state, c.status());
    chain = std::move(c).value();
    fs = std::make_shared<rocks::WalFileSystem>(rocksdb::FileSystem::Default(), chain->wal());
    env = rocksdb::NewCompositeEnv(fs);
    o.env = env.get();
    rocks::apply_required_options(o, eo.wal.ring_bytes);
  }
  const std::string dir = fresh_dir(backend_name(b));
  rocksdb::DB* raw = nullptr;
  if (rocksdb::Status s = rocksdb::DB::Open(o, dir, &raw); !s.ok()) {
    state.SkipWithError(s.ToString().c_str());
    return;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteOptions wo;
  wo.sync = b != 1;
  wo.disableWAL = b == 1;
  std::vector<uint64_t> lat;
  lat.reserve(1 << 20);
  bench::ForeignCpu foreign;
  double wall = 0;
  for (auto _ : state) {
    const auto t0 = Clk::now();
    BENCH_CHECK_OK(state, put_loop(db.get(), wo, g_seconds, 1, &lat));
    wall = std::chrono::duration<double>(Clk::now() - t0).count();
    state.SetIterationTime(lat.empty() ? wall : wall / double(lat.size()));
  }
  summarize(state, std::string("synced/") + backend_name(b), lat, wall, foreign);
  db.reset();
  std::filesystem::remove_all(dir);
}

constexpr int kNicCpu = 0, kAppCpu = 1;
constexpr uint32_t kTenants = 4;

void BM_MultiTenant(benchmark::State& state) {
  const int64_t mode = state.range(0), K = state.range(1);
  state.SetLabel(std::string(mode == 0 ? "offload" : "cpu") + " tenants=4 busy=" + std::to_string(3 * K));
  if (!bench::have_cpus_0_and_1()) {
    state.SkipWithError("the multi-tenant case needs CPUs 0 and 1 in the affinity mask");
    return;
  }
  bench::AffinityGuard restore;
  rocks::EmbeddedOptions eo;
  eo.mode = mode == 0 ? prim::ForwardMode::kOffload : prim::ForwardMode::kCpuForward;
  eo.tenants = kTenants;
  eo.wal.ring_bytes = 16 << 20;
  eo.agent_cpu = kAppCpu;
  eo.executor_cpu = kNicCpu;
  eo.yield_while_waiting = true;  // 4 writers share the NICs' core
  auto c = rocks::EmbeddedChain::create(eo);
  BENCH_CHECK_OK(state, c.status());
  auto chain = std::move(c).value();
  struct Tenant {
    std::shared_ptr<rocks::WalFileSystem> fs;
    std::unique_ptr<rocksdb::Env> env;
    std::unique_ptr<rocksdb::DB> db;
    std::string dir;
    std::vector<uint64_t> lat;
    Status st;
  };
  std::vector<Tenant> ts(kTenants);
  for (uint32_t t = 0; t < kTenants; ++t) {
    ts[t].fs = std::make_shared<rocks::WalFileSystem>(rocksdb::FileSystem::Default(), chain->wal(t));
    ts[t].env = rocksdb::NewCompositeEnv(ts[t].fs);
    rocksdb::Options o;
    o.create_if_missing = true;
    o.info_log_level = rocksdb::WARN_LEVEL;
    o.env = ts[t].env.get();
    rocks::apply_required_options(o, eo.wal.ring_bytes);
    ts[t].dir = fresh_dir("mt" + std::to_string(t));
    rocksdb::DB* raw = nullptr;
    if (rocksdb::Status s = rocksdb::DB::Open(o, ts[t].dir, &raw); !s.ok()) {
      state.SkipWithError(s.ToString().c_str());
      return;
    }
    ts[t].db.reset(raw);
  }
  std::vector<uint64_t> all;
  bench::ForeignCpu foreign;
  double wall = 0;
  for (auto _ : state) {
    bench::BusyTenants busy(kAppCpu, uint32_t(K) * 3);
    const auto t0 = Clk::now();
    std::vector<std::thread> writers;
    for (uint32_t t = 0; t < kTenants; ++t)
      writers.emplace_back([&, t] {
        bench::pin_self(kNicCpu);
        rocksdb::WriteOptions wo;
        wo.sync = true;
        ts[t].st = put_loop(ts[t].db.get(), wo, g_seconds, 100 + t, &ts[t].lat);
      });
    for (auto& w : writers) w.join();
    wall = std::chrono::duration<double>(Clk::now() - t0).count();
    busy.stop();
    for (auto& t : ts) {
      BENCH_CHECK_OK(state, t.st);
      all.insert(all.end(), t.lat.begin(), t.lat.end());
    }
    state.SetIterationTime(all.empty() ? wall : wall / double(all.size()));
  }
  summarize(state, std::string("mt/") + (mode == 0 ? "offload" : "cpu") + "/" + std::to_string(K), all, wall,
            foreign);
  for (auto& t : ts) {
    t.db.reset();
    std::filesystem::remove_all(t.dir);
  }
}

BENCHMARK(BM_SyncedPut)->ArgName("backend")->DenseRange(0, 3)->Iterations(1)->UseManualTime();
BENCHMARK(BM_MultiTenant)->ArgNames({"mode", "K"})->ArgsProduct({{0, 1}, {0, 8}})->Iterations(1)->UseManualTime();

void print_summary() {
  auto row = [](const char* name, const Summary* s) {
    if (!s) {
      std::printf("  %-22s (not run)\n", name);
      return;
    }
    std::printf("  %-22s mean %8.1f us  p50 %8.1f  p99 %9.1f  p99.9 %9.1f  ops %8llu  foreign cpu %4.1f %%\n", name,
                s->mean_us, s->p50, s->p99, s->p999, static_cast<unsigned long long>(s->ops), s->foreign);
  };
  std::printf("\n==== replicated RocksDB: synced 16 B / 100 B Puts, one thread ====\n");
  for (const char* b : {"local", "nowal", "offload", "cpu"}) row(b, g_results.find(std::string("synced/") + b));
  const Summary* local = g_results.find("synced/local");
  const Summary* nowal = g_results.find("synced/nowal");
  const Summary* off = g_results.find("synced/offload");
  if (local && nowal && off) {
    std::printf("  target: offload mean <= local/5: %.1f us vs %.1f us: %s\n", off->mean_us, local->mean_us / 5,
                off->mean_us <= local->mean_us / 5 ? "met" : "MISSED");
    std::printf("  target: offload mean <= 3 x nowal: %.1f us vs %.1f us: %s\n", off->mean_us, 3 * nowal->mean_us,
                off->mean_us <= 3 * nowal->mean_us ? "met" : "MISSED");
  }
  std::printf("==== multi-tenant: 4 tenants on 3 shared replica hosts, synced Puts ====\n");
  for (int K : {0, 8}) {
    const Summary* mo = g_results.find("mt/offload/" + std::to_string(K));
    const Summary* mc = g_results.find("mt/cpu/" + std::to_string(K));
    row(("offload K=" + std::to_string(K)).c_str(), mo);
    row(("cpu K=" + std::to_string(K)).c_str(), mc);
    if (mo && mc && K > 0)
      std::printf("  target: K=%d offload p99 >= 20x lower than cpu: %.1f us vs %.1f us (%.1fx): %s\n", K, mo->p99,
                  mc->p99, mo->p99 > 0 ? mc->p99 / mo->p99 : 0, mo->p99 * 20 <= mc->p99 ? "met" : "MISSED");
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rocks_seconds=", 16) == 0)
      g_seconds = std::atof(argv[i] + 16);
    else
      rest.push_back(argv[i]);
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_summary();
  return 0;
}
