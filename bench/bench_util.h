// bench_util.h: what the benchmark programs share (header-only, bench/ only).
//
//   percentile / report_latencies   latency samples -> p50/p99/p99.9/max user
//                                   counters (one definition of a percentile)
//   ForeignCpu                      CPU used by other processes during a measurement
//   pin_self, have_cpus_0_and_1,    CPU placement for the multi-tenant experiments
//   AffinityGuard
//   BusyTenants                     threads that spin on arithmetic on one core
//   cpu_relax                       the pause instruction of a busy poll
//   Results<S>                      per-case results kept for the end-of-run summary
//   BENCH_CHECK_OK                  skip the case with the error of a failed Status
#pragma once

#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hyperloop/status.h"

namespace hyperloop::bench {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// ---- latency percentiles ---------------------------------------------------------------
// The q-quantile of ascending samples: the smallest sample with at least
// q * size samples at or below it (nearest rank); 0 for no samples.
inline uint64_t percentile(const std::vector<uint64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t idx = static_cast<size_t>(q * static_cast<double>(sorted.size()) + 0.999999);
  idx = std::clamp<size_t>(idx, 1, sorted.size()) - 1;
  return sorted[idx];
}

struct LatencySummary {  // nanoseconds
  double p50 = 0, p99 = 0, p999 = 0, max = 0;
  // The quantiles a CDF is drawn through (bench/plots.py): q[i] is the
  // kCdfQuantiles[i] quantile.
  static constexpr double kCdfQuantiles[] = {0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 0.999};
  double q[std::size(kCdfQuantiles)] = {};
  uint64_t count = 0;
};

enum class LatencyUnit { kNs, kUs };

// Sorts the samples (nanoseconds) and sets the counters p50_<u>, p99_<u>,
// p999_<u> and max_<u> (u = ns or us, scaled accordingly), and cdf_q<N>_<u>
// for each of LatencySummary::kCdfQuantiles (N in per mille: q10 = p1, ...,
// q999 = p99.9), what bench/plots.py draws CDFs through. No samples: no
// counters, an all-zero summary.
inline LatencySummary report_latencies(benchmark::State& state, std::vector<uint64_t>& lat_ns,
                                       LatencyUnit unit = LatencyUnit::kNs) {
  LatencySummary s;
  if (lat_ns.empty()) return s;
  std::sort(lat_ns.begin(), lat_ns.end());
  s.p50 = static_cast<double>(percentile(lat_ns, 0.50));
  s.p99 = static_cast<double>(percentile(lat_ns, 0.99));
  s.p999 = static_cast<double>(percentile(lat_ns, 0.999));
  s.max = static_cast<double>(lat_ns.back());
  s.count = lat_ns.size();
  const bool us = unit == LatencyUnit::kUs;
  const double scale = us ? 1e-3 : 1.0;
  const std::string suffix = us ? "_us" : "_ns";
  state.counters["p50" + suffix] = s.p50 * scale;
  state.counters["p99" + suffix] = s.p99 * scale;
  state.counters["p999" + suffix] = s.p999 * scale;
  state.counters["max" + suffix] = s.max * scale;
  for (size_t i = 0; i < std::size(LatencySummary::kCdfQuantiles); ++i) {
    const double qv = LatencySummary::kCdfQuantiles[i];
    s.q[i] = static_cast<double>(percentile(lat_ns, qv));
    state.counters["cdf_q" + std::to_string(int(qv * 1000 + 0.5)) + suffix] = s.q[i] * scale;
  }
  return s;
}

// ---- interference: CPU used by other processes during a measurement -------------------
// The figures are only meaningful on an otherwise idle machine; this makes a
// noisy neighbour visible instead of silently inflating the tail.
class ForeignCpu {
 public:
  ForeignCpu() { sample(&busy0_, &self0_, &total0_); }
  // Percent of the machine's CPU capacity used by other processes since construction.
  double percent() const {
    uint64_t busy, self, total;
    sample(&busy, &self, &total);
    const double d_total = double(total - total0_);
    if (d_total <= 0) return 0;
    const double foreign = double(busy - busy0_) - double(self - self0_);
    return std::max(0.0, 100.0 * foreign / d_total);
  }

 private:
  static void sample(uint64_t* busy, uint64_t* self, uint64_t* total) {
    *busy = *self = *total = 0;
    if (FILE* f = std::fopen("/proc/stat", "r")) {
      unsigned long long v[8] = {};
      if (std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                      &v[6], &v[7]) == 8) {
        for (int i = 0; i < 8; ++i) *total += v[i];
        *busy = *total - v[3] - v[4];  // minus idle and iowait
      }
      std::fclose(f);
    }
    if (FILE* f = std::fopen("/proc/self/stat", "r")) {
      char buf[1024];
      const size_t len = std::fread(buf, 1, sizeof buf - 1, f);
      buf[len] = 0;
      std::fclose(f);
      // Fields after the command name (which may hold spaces): state is field 3,
      // utime and stime are fields 14 and 15.
      if (const char* p = std::strrchr(buf, ')')) {
        unsigned long long ut = 0, st = 0;
        if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2) *self = ut + st;
      }
    }
  }
  uint64_t busy0_, self0_, total0_;
};

// ---- CPU placement ----------------------------------------------------------------------
inline bool pin_self(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

inline bool have_cpus_0_and_1() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return false;
  return CPU_ISSET(0, &set) && CPU_ISSET(1, &set);
}

// Restores the calling thread's affinity when it goes out of scope.
class AffinityGuard {
 public:
  AffinityGuard() { ok_ = pthread_getaffinity_np(pthread_self(), sizeof(saved_), &saved_) == 0; }
  ~AffinityGuard() {
    if (ok_) pthread_setaffinity_np(pthread_self(), sizeof(saved_), &saved_);
  }
  AffinityGuard(const AffinityGuard&) = delete;
  AffinityGuard& operator=(const AffinityGuard&) = delete;

 private:
  cpu_set_t saved_;
  bool ok_ = false;
};

// ---- multi-tenant load ------------------------------------------------------------------
// `count` busy tenant threads pinned to `cpu`, spinning on arithmetic until
// told to stop.
class BusyTenants {
 public:
  BusyTenants(int cpu, uint32_t count) {
    for (uint32_t t = 0; t < count; ++t)
      threads_.emplace_back([this, cpu, t] {
        pin_self(cpu);
        uint64_t x = 0x9e3779b97f4a7c15ull + t;
        while (!stop_.load(std::memory_order_relaxed))
          for (int k = 0; k < 1024; ++k) x = x * 6364136223846793005ull + 1442695040888963407ull;
        sink_.fetch_add(x, std::memory_order_relaxed);
      });
  }
  ~BusyTenants() { stop(); }
  BusyTenants(const BusyTenants&) = delete;
  BusyTenants& operator=(const BusyTenants&) = delete;
  void stop() {
    stop_.store(true, std::memory_order_relaxed);
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> sink_{0};
  std::vector<std::thread> threads_;
};

// Per-case results, keyed by case, for the summary printed after the run.
// record() is thread-safe; find() and all() are for after the run.
template <typename S>
class Results {
 public:
  void record(const std::string& key, const S& s) {
    std::lock_guard<std::mutex> l(mu_);
    map_[key] = s;
  }
  const S* find(const std::string& key) const {
    auto it = map_.find(key);
    return it == map_.end() ? nullptr : &it->second;
  }
  const std::map<std::string, S>& all() const { return map_; }

 private:
  std::mutex mu_;
  std::map<std::string, S> map_;
};

}  // namespace hyperloop::bench

// Skips the benchmark case with the error text when expr is not OK.
#define BENCH_CHECK_OK(state, expr)                         \
  do {                                                      \
    ::hyperloop::Status bench_st_ = (expr);                 \
    if (!bench_st_.is_ok()) {                               \
      (state).SkipWithError(bench_st_.to_string().c_str()); \
      return;                                               \
    }                                                       \
  } while (0)
