// ycsb.h: a C++ port of YCSB's core workloads (generators, workloads A-F, a
// multi-threaded runner and YCSB's report format) for a pluggable Db.
//
// YCSB itself is Java and cannot run on this project's machines. This library
// follows brianfrankcooper/YCSB core (site.ycsb.generator.*, CoreWorkload,
// Client, DBWrapper) closely enough that its numbers read like YCSB's; the
// differences are listed here:
//   - every generator draws from an explicit engine passed to next(), so a
//     seed fixes the sequence (YCSB uses thread-local java.util.Random);
//   - generators are not thread-safe: the runner gives each thread its own,
//     sharing only the insert counters (which are thread-safe, as in YCSB);
//   - latencies are stored exactly (every sample, in nanoseconds) and printed
//     in microseconds with three decimals, where YCSB prints HdrHistogram's
//     integer microseconds.
// No RocksDB dependency: a backend implements Db (ycsb_main.cc has RocksDB's).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hyperloop/status.h"

namespace hyperloop::ycsb {

// The engine every generator draws from.
using Engine = std::mt19937_64;

// YCSB's Utils.fnvhash64: FNV-1a over the 8 bytes of `value`, low byte first,
// then Java's Math.abs (so INT64_MIN stays INT64_MIN, as in Java).
int64_t fnvhash64(int64_t value);

// CoreWorkload.buildKeyName: "user" + (ordered ? keynum : fnvhash64(keynum)),
// the number left-padded with zeros to `zeropadding` digits.
std::string build_key_name(int64_t keynum, int zeropadding = 1, bool ordered_inserts = false);

// ---------------------------------------------------------------- generators
// None of these is safe for concurrent use except the two counters.

// UniformLongGenerator: uniform over [lb, ub].
class UniformGenerator {
 public:
  UniformGenerator(int64_t lb, int64_t ub) : dist_(lb, ub) {}
  int64_t next(Engine& rng) { return dist_(rng); }

 private:
  std::uniform_int_distribution<int64_t> dist_;
};

// ZipfianGenerator (Gray et al., SIGMOD 1994): item `min` is the most popular,
// min+1 the next and so on, over [min, max]. next(rng, itemcount) lets the
// item count grow; zeta is then extended incrementally. As in YCSB, a
// shrinking count keeps the old zeta, and eta keeps using the constructor's
// item count.
class ZipfianGenerator {
 public:
  static constexpr double kZipfianConstant = 0.99;

  ZipfianGenerator(int64_t min, int64_t max, double theta = kZipfianConstant);
  // With a precomputed zeta(max - min + 1, theta).
  ZipfianGenerator(int64_t min, int64_t max, double theta, double zetan);

  int64_t next(Engine& rng) { return next(rng, items_); }
  int64_t next(Engine& rng, int64_t itemcount);

  // sum_{i=st+1..n} 1/i^theta added to `initial`.
  static double zeta(int64_t st, int64_t n, double theta, double initial = 0.0);
  int64_t items() const { return items_; }
  double zetan() const { return zetan_; }

 private:
  int64_t items_;
  int64_t base_;
  double theta_, zeta2theta_, alpha_, zetan_, eta_;
  int64_t count_for_zeta_;
};

// ScrambledZipfianGenerator: a zipfian over a fixed item space of 10^10 items
// (zeta precomputed: ZETAN), each draw hashed with fnvhash64 into [min, max],
// so the popular keys are spread over the range.
class ScrambledZipfianGenerator {
 public:
  static constexpr double kZetan = 26.46902820178302;
  static constexpr int64_t kItemCount = 10'000'000'000LL;

  ScrambledZipfianGenerator(int64_t min, int64_t max);
  int64_t next(Engine& rng);

 private:
  ZipfianGenerator gen_;
  int64_t min_, itemcount_;
};

// CounterGenerator: 0, 1, 2 ... from `start`. Safe for concurrent use.
class CounterGenerator {
 public:
  explicit CounterGenerator(int64_t start) : counter_(start) {}
  int64_t next() { return counter_.fetch_add(1); }
  int64_t last_value() const { return counter_.load() - 1; }

 private:
  std::atomic<int64_t> counter_;
};

// AcknowledgedCounterGenerator: a counter whose last_value() is the highest
// value v such that every value in [start, v] has been acknowledged, so that
// readers never pick a key whose insert has not finished. Safe for concurrent
// use.
class AcknowledgedCounterGenerator {
 public:
  explicit AcknowledgedCounterGenerator(int64_t start) : counter_(start), limit_(start - 1) {}
  int64_t next() { return counter_.next(); }
  // REQUIRES: `value` came from next() and is acknowledged once.
  void acknowledge(int64_t value);
  int64_t last_value() const { return limit_.load(); }

 private:
  CounterGenerator counter_;
  std::atomic<int64_t> limit_;
  std::mutex mu_;
  std::vector<int64_t> pending_;  // a min-heap of acknowledged values > limit_ + 1
};

// SkewedLatestGenerator: zipfian over the most recent acknowledged inserts;
// returns basis.last_value() - zipfian(last_value), i.e. the newest keys are
// the most popular. `basis` must outlive the generator.
class SkewedLatestGenerator {
 public:
  explicit SkewedLatestGenerator(const AcknowledgedCounterGenerator& basis);
  int64_t next(Engine& rng);

 private:
  const AcknowledgedCounterGenerator& basis_;
  ZipfianGenerator zipfian_;
};

// ------------------------------------------------------------------ workload

enum class Distribution { kUniform, kZipfian, kLatest };
std::string_view distribution_name(Distribution d);

// CoreWorkload's properties. Defaults are CoreWorkload's and Client's, except
// those the workload files a-f set (core_workload()).
struct Workload {
  std::string name = "custom";
  double read_proportion = 0.95;
  double update_proportion = 0.05;
  double insert_proportion = 0;
  double scan_proportion = 0;
  double read_modify_write_proportion = 0;
  Distribution request_distribution = Distribution::kUniform;
  int64_t record_count = 1000;
  int64_t operation_count = 1000;
  int field_count = 10;
  int field_length = 100;  // fieldlengthdistribution=constant
  int min_scan_length = 1;
  int max_scan_length = 1000;  // scanlengthdistribution=uniform
  bool read_all_fields = true;
  bool write_all_fields = false;  // an update writes one random field
  bool ordered_inserts = false;   // insertorder=hashed
  int zero_padding = 1;
  int threads = 1;
  uint64_t seed = 1;
};

// Workloads "a".."f" (or "A".."F") as YCSB's workloads/workload{a..f} define
// them. Anything else: kInvalidArgument.
Result<Workload> core_workload(std::string_view letter);
// OK, or kInvalidArgument naming the first bad property.
Status validate(const Workload& w);
// "key=value" lines, one per property, for the top of a report.
std::string describe(const Workload& w);

// ------------------------------------------------------------------------ db

// A record: (field name, value) pairs, as YCSB's HashMap<String, ByteIterator>.
using Fields = std::vector<std::pair<std::string, std::string>>;

// The store under test. The runner calls it from `threads` threads at once:
// implementations must be safe for concurrent use. A non-OK Status is
// reported as Return=NOT_FOUND (kNotFound) or Return=ERROR (anything else);
// it never stops the run.
class Db {
 public:
  virtual ~Db() = default;
  virtual Status insert(const std::string& key, const Fields& values) = 0;
  // Every field of the record (readallfields=true) into *out, replacing it.
  virtual Status read(const std::string& key, Fields* out) = 0;
  // Overwrites the given fields of an existing record, keeps the others.
  virtual Status update(const std::string& key, const Fields& values) = 0;
  // Up to `count` records in key order from `start_key` (inclusive).
  virtual Status scan(const std::string& start_key, int count, std::vector<Fields>* out) = 0;
};

// -------------------------------------------------------------------- runner

// Nanoseconds from an arbitrary origin; called from every runner thread.
using Clock = std::function<int64_t()>;
int64_t steady_now_ns();

// One line group of the report: [READ], [UPDATE], ...
struct OpStats {
  std::string name;  // "READ", "UPDATE", "INSERT", "SCAN", "READ-MODIFY-WRITE"
  int64_t operations = 0;
  double average_us = 0, min_us = 0, max_us = 0;
  double p50_us = 0, p95_us = 0, p99_us = 0, p999_us = 0;
  std::map<std::string, int64_t> returns;  // "OK", "ERROR", "NOT_FOUND" -> count
};

// Exact statistics of `latencies_ns` (sorted in place). Percentiles use the
// nearest rank: the smallest sample with at least p% of samples <= it.
OpStats summarize(std::string name, std::vector<int64_t>& latencies_ns);

struct Report {
  std::string phase;       // "load" or "run"
  int64_t operations = 0;  // workload operations done (a read-modify-write is one)
  double runtime_ms = 0;
  double throughput = 0;   // operations per second
  std::vector<OpStats> ops;  // in the order INSERT, READ, UPDATE, SCAN, READ-MODIFY-WRITE; only those done
  // The group named `name`, or nullptr.
  const OpStats* find(std::string_view name) const;
};

// YCSB's text: "[OVERALL], RunTime(ms), N" ... "[READ], Return=OK, N".
std::string format_report(const Report& r);

// Load phase: inserts record_count records, keys 0..record_count-1 from a
// shared counter, over w.threads threads. Errors: validate(w)'s.
Result<Report> load(Db& db, const Workload& w, const Clock& clock = steady_now_ns);

// Run phase: operation_count operations over w.threads threads (thread i does
// operation_count / threads, plus one if i < operation_count % threads), as
// CoreWorkload.doTransaction chooses them. As YCSB's DBWrapper does, the read
// and the update inside a read-modify-write are also counted under [READ] and
// [UPDATE]. Inserts use keys from record_count up. With one thread the
// operation sequence is fixed by w.seed; with more, the interleaving of the
// shared insert counter is not.
Result<Report> run(Db& db, const Workload& w, const Clock& clock = steady_now_ns);

}  // namespace hyperloop::ycsb
