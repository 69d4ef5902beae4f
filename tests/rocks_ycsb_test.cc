// rocks_ycsb_test: the C++ YCSB driver (examples/rocksdb/ycsb/ycsb.h), against
// an in-memory Db. Links hyperloop_ycsb. Deterministic: fixed seeds, a fake
// clock where latencies matter, no sleeps.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "ycsb.h"

namespace hyperloop::ycsb {
namespace {

// FNV-1a 64 as YCSB's Utils.fnvhash64 has it, written independently: the
// 8 bytes of the value low byte first, then Java's Math.abs.
int64_t reference_fnv(int64_t v) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(static_cast<uint64_t>(v) >> (8 * i));
  uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char b : bytes) h = (h ^ b) * 1099511628211ULL;
  const auto s = static_cast<int64_t>(h);
  return s < 0 ? -s : s;
}

double zeta(int64_t n, double theta) {
  double sum = 0;
  for (int64_t i = 1; i <= n; ++i) sum += 1 / std::pow(static_cast<double>(i), theta);
  return sum;
}

// A std::map under a mutex; optionally advances a fake clock by a known
// latency on each read.
class MemDb : public Db {
 public:
  std::atomic<int64_t>* clock = nullptr;
  int64_t next_read_latency_ns = 0;  // the k-th read (k from 1) lasts k * 1000 ns, cycling at 1000

  Status insert(const std::string& key, const Fields& values) override {
    std::lock_guard<std::mutex> l(mu_);
    rows_[key] = values;
    log_.push_back("I" + key);
    return Status::ok();
  }
  Status read(const std::string& key, Fields* out) override {
    std::lock_guard<std::mutex> l(mu_);
    if (clock != nullptr) {
      next_read_latency_ns = next_read_latency_ns % 1'000'000 + 1000;
      clock->fetch_add(next_read_latency_ns);
    }
    log_.push_back("R" + key);
    auto it = rows_.find(key);
    if (it == rows_.end()) return not_found(key);
    *out = it->second;
    return Status::ok();
  }
  Status update(const std::string& key, const Fields& values) override {
    std::lock_guard<std::mutex> l(mu_);
    log_.push_back("U" + key);
    auto it = rows_.find(key);
    if (it == rows_.end()) return not_found(key);
    for (const auto& [name, value] : values) {
      auto f = std::find_if(it->second.begin(), it->second.end(), [&](const auto& p) { return p.first == name; });
      if (f == it->second.end()) return internal_error("update of an unknown field " + name);
      f->second = value;
    }
    return Status::ok();
  }
  Status scan(const std::string& start, int count, std::vector<Fields>* out) override {
    std::lock_guard<std::mutex> l(mu_);
    log_.push_back("S" + start);
    max_scan_ = std::max(max_scan_, count);
    out->clear();
    for (auto it = rows_.lower_bound(start); it != rows_.end() && static_cast<int>(out->size()) < count; ++it)
      out->push_back(it->second);
    return Status::ok();
  }

  size_t size() {
    std::lock_guard<std::mutex> l(mu_);
    return rows_.size();
  }
  std::map<std::string, Fields> rows() {
    std::lock_guard<std::mutex> l(mu_);
    return rows_;
  }
  std::vector<std::string> log() {
    std::lock_guard<std::mutex> l(mu_);
    return log_;
  }
  int max_scan() {
    std::lock_guard<std::mutex> l(mu_);
    return max_scan_;
  }

 private:
  std::mutex mu_;
  std::map<std::string, Fields> rows_;
  std::vector<std::string> log_;
  int max_scan_ = 0;
};

// Fails every call.
class FailingDb : public Db {
 public:
  Status insert(const std::string&, const Fields&) override { return unavailable("down"); }
  Status read(const std::string&, Fields*) override { return unavailable("down"); }
  Status update(const std::string&, const Fields&) override { return unavailable("down"); }
  Status scan(const std::string&, int, std::vector<Fields>*) override { return unavailable("down"); }
};

Workload small(const char* letter, int64_t records = 1000, int64_t ops = 20000) {
  Workload w = core_workload(letter).value();
  w.record_count = records;
  w.operation_count = ops;
  return w;
}

int64_t ops_of(const Report& r, const char* name) {
  const OpStats* s = r.find(name);
  return s == nullptr ? 0 : s->operations;
}
int64_t returns_of(const Report& r, const char* name, const char* ret) {
  const OpStats* s = r.find(name);
  if (s == nullptr) return 0;
  auto it = s->returns.find(ret);
  return it == s->returns.end() ? 0 : it->second;
}

// ------------------------------------------------------------------ keys

TEST(YcsbKeys, FnvHashMatchesTheReferenceAndYcsbsKnownValues) {
  for (int64_t v : {0LL, 1LL, 255LL, 256LL, 12345LL, 999LL, 1LL << 40, -7LL}) EXPECT_EQ(fnvhash64(v), reference_fnv(v)) << v;
  // Values of YCSB's Utils.fnvhash64 (also computed in Python).
  EXPECT_EQ(fnvhash64(0), 6284781860667377211LL);
  EXPECT_EQ(fnvhash64(1), 8517097267634966620LL);
  EXPECT_EQ(fnvhash64(12345), 1792800413050876852LL);
}

TEST(YcsbKeys, KeyNamesAreUserPlusHashUnlessOrdered) {
  EXPECT_EQ(build_key_name(0), "user6284781860667377211");  // YCSB's familiar first key
  EXPECT_EQ(build_key_name(999), "user2071219101098386137");
  EXPECT_EQ(build_key_name(7, 1, true), "user7");
  EXPECT_EQ(build_key_name(7, 4, true), "user0007");
}

// ------------------------------------------------------------ generators

TEST(YcsbGenerators, ZipfianHeadMatchesTheTheory) {
  constexpr int64_t kN = 1000, kDraws = 200000;
  ZipfianGenerator gen(0, kN - 1);
  Engine rng(42);
  std::vector<int64_t> count(kN);
  for (int64_t i = 0; i < kDraws; ++i) {
    const int64_t v = gen.next(rng);
    ASSERT_GE(v, 0);
    ASSERT_LT(v, kN);
    ++count[v];
  }
  const double z = zeta(kN, 0.99);
  EXPECT_NEAR(static_cast<double>(count[0]) / kDraws, 1 / z, 0.005);
  EXPECT_NEAR(static_cast<double>(count[1]) / kDraws, std::pow(0.5, 0.99) / z, 0.005);
  for (int i = 0; i + 1 < 10; ++i) EXPECT_GT(count[i], count[i + 1]) << "rank " << i;
}

TEST(YcsbGenerators, ZipfianExtendsZetaIncrementallyWhenItemsGrow) {
  ZipfianGenerator gen(0, 99);
  Engine rng(1);
  EXPECT_NEAR(gen.zetan(), zeta(100, 0.99), 1e-9);
  for (int i = 0; i < 1000; ++i) ASSERT_LT(gen.next(rng, 1000), 1000);
  EXPECT_NEAR(gen.zetan(), zeta(1000, 0.99), 1e-9);
}

TEST(YcsbGenerators, ScrambledZipfianStaysInRangeAndSpreadsTheHotKeys) {
  constexpr int64_t kN = 1000;
  ScrambledZipfianGenerator gen(0, kN - 1);
  Engine rng(7);
  std::vector<int64_t> count(kN);
  for (int i = 0; i < 100000; ++i) {
    const int64_t v = gen.next(rng);
    ASSERT_GE(v, 0);
    ASSERT_LT(v, kN);
    ++count[v];
  }
  std::vector<int64_t> keys(kN);
  for (int64_t i = 0; i < kN; ++i) keys[i] = i;
  std::sort(keys.begin(), keys.end(), [&](int64_t a, int64_t b) { return count[a] > count[b]; });
  // The zipfian's item 0 lands on fnvhash64(0) mod n.
  EXPECT_EQ(keys[0], fnvhash64(0) % kN);
  const std::vector<int64_t> hottest(keys.begin(), keys.begin() + 10);
  EXPECT_GT(*std::max_element(hottest.begin(), hottest.end()), 100) << "hot keys clustered at the start";
  EXPECT_GT(count[keys[0]], 100000 / kN * 5) << "no skew left";
}

TEST(YcsbGenerators, SkewedLatestFavoursTheNewestAcknowledgedInserts) {
  AcknowledgedCounterGenerator acked(1000);
  ASSERT_EQ(acked.last_value(), 999);
  SkewedLatestGenerator gen(acked);
  Engine rng(3);
  std::map<int64_t, int64_t> count;
  constexpr int kDraws = 100000;
  for (int i = 0; i < kDraws; ++i) {
    const int64_t v = gen.next(rng);
    ASSERT_GE(v, 0);
    ASSERT_LE(v, 999);
    ++count[v];
  }
  int64_t newest10 = 0;
  for (int64_t k = 990; k <= 999; ++k) newest10 += count[k];
  EXPECT_GT(static_cast<double>(newest10) / kDraws, 0.35);
  EXPECT_EQ(std::max_element(count.begin(), count.end(), [](auto& a, auto& b) { return a.second < b.second; })->first,
            999);
  // A new acknowledged insert becomes the newest key.
  acked.acknowledge(acked.next());
  int64_t hits = 0;
  for (int i = 0; i < 1000; ++i) hits += gen.next(rng) == 1000;
  EXPECT_GT(hits, 100);
}

TEST(YcsbGenerators, AcknowledgedCounterWaitsForEveryEarlierValue) {
  AcknowledgedCounterGenerator c(10);
  const int64_t a = c.next(), b = c.next(), d = c.next();
  EXPECT_EQ(a, 10);
  c.acknowledge(d);
  c.acknowledge(b);
  EXPECT_EQ(c.last_value(), 9);
  c.acknowledge(a);
  EXPECT_EQ(c.last_value(), 12);
}

TEST(YcsbGenerators, UniformCoversItsRangeOnly) {
  UniformGenerator gen(5, 14);
  Engine rng(11);
  std::set<int64_t> seen;
  for (int i = 0; i < 10000; ++i) seen.insert(gen.next(rng));
  EXPECT_EQ(seen.size(), 10u);
  EXPECT_EQ(*seen.begin(), 5);
  EXPECT_EQ(*seen.rbegin(), 14);
}

// -------------------------------------------------------------- workloads

TEST(YcsbWorkloads, CoreWorkloadsHaveYcsbsProperties) {
  EXPECT_EQ(core_workload("d")->request_distribution, Distribution::kLatest);
  EXPECT_EQ(core_workload("A")->request_distribution, Distribution::kZipfian);
  EXPECT_EQ(core_workload("e")->max_scan_length, 100);
  EXPECT_EQ(core_workload("a")->field_count, 10);
  EXPECT_EQ(core_workload("a")->field_length, 100);
  EXPECT_FALSE(core_workload("a")->write_all_fields);
  EXPECT_EQ(core_workload("g").status().code(), StatusCode::kInvalidArgument);
  Workload w = small("a");
  w.threads = 0;
  EXPECT_EQ(validate(w).code(), StatusCode::kInvalidArgument);
  MemDb db;
  EXPECT_FALSE(run(db, w).is_ok());
}

TEST(YcsbRunner, LoadInsertsEveryRecordOnce) {
  MemDb db;
  Workload w = small("a", 1000, 0);
  w.threads = 2;
  Report r = load(db, w).value();
  EXPECT_EQ(r.operations, 1000);
  EXPECT_EQ(ops_of(r, "INSERT"), 1000);
  EXPECT_EQ(returns_of(r, "INSERT", "OK"), 1000);
  const auto rows = db.rows();
  ASSERT_EQ(rows.size(), 1000u);
  for (int64_t i = 0; i < 1000; ++i) {
    auto it = rows.find(build_key_name(i));
    ASSERT_NE(it, rows.end()) << i;
    ASSERT_EQ(it->second.size(), 10u);
    EXPECT_EQ(it->second[3].first, "field3");
    EXPECT_EQ(it->second[3].second.size(), 100u);
  }
}

struct Mix {
  const char* letter;
  double read, update, insert, scan, rmw;
};

TEST(YcsbRunner, EachWorkloadRunsItsOperationMix) {
  // Under [READ] and [UPDATE] F also counts its read-modify-writes' halves, as YCSB does.
  const Mix mixes[] = {{"a", 0.5, 0.5, 0, 0, 0},  {"b", 0.95, 0.05, 0, 0, 0}, {"c", 1, 0, 0, 0, 0},
                       {"d", 0.95, 0, 0.05, 0, 0}, {"e", 0, 0, 0.05, 0.95, 0}, {"f", 1.0, 0.5, 0, 0, 0.5}};
  for (const Mix& m : mixes) {
    SCOPED_TRACE(m.letter);
    MemDb db;
    Workload w = small(m.letter);
    w.threads = 2;
    ASSERT_TRUE(load(db, w).is_ok());
    Report r = run(db, w).value();
    EXPECT_EQ(r.operations, 20000);
    const double n = 20000;
    EXPECT_NEAR(ops_of(r, "READ") / n, m.read, 0.02);
    EXPECT_NEAR(ops_of(r, "UPDATE") / n, m.update, 0.02);
    EXPECT_NEAR(ops_of(r, "INSERT") / n, m.insert, 0.02);
    EXPECT_NEAR(ops_of(r, "SCAN") / n, m.scan, 0.02);
    EXPECT_NEAR(ops_of(r, "READ-MODIFY-WRITE") / n, m.rmw, 0.02);
    EXPECT_EQ(ops_of(r, "INSERT") + ops_of(r, "SCAN") + ops_of(r, "READ-MODIFY-WRITE") +
                  (m.rmw > 0 ? ops_of(r, "READ") - ops_of(r, "READ-MODIFY-WRITE")
                             : ops_of(r, "READ") + ops_of(r, "UPDATE")),
              20000);
    // Every key chosen was inserted (and acknowledged) before.
    for (const OpStats& s : r.ops) EXPECT_EQ(s.returns.at("OK"), s.operations) << s.name;
    EXPECT_EQ(db.size(), static_cast<size_t>(1000 + ops_of(r, "INSERT")));
    if (m.scan > 0) {
      EXPECT_LE(db.max_scan(), 100);
    }
  }
}

TEST(YcsbRunner, OneThreadRunsAreFixedByTheSeed) {
  auto trace = [](uint64_t seed) {
    MemDb db;
    Workload w = small("d", 200, 2000);
    w.seed = seed;
    EXPECT_TRUE(load(db, w).is_ok());
    EXPECT_TRUE(run(db, w).is_ok());
    return db.log();
  };
  EXPECT_EQ(trace(5), trace(5));
  EXPECT_NE(trace(5), trace(6));
}

TEST(YcsbRunner, ReportsExactPercentilesOfKnownLatencies) {
  std::atomic<int64_t> now{0};
  MemDb db;
  Workload w = small("c", 100, 1000);
  ASSERT_TRUE(load(db, w).is_ok());
  db.clock = &now;  // reads i = 1..1000 last i microseconds
  Report r = run(db, w, [&] { return now.load(); }).value();
  const OpStats* s = r.find("READ");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->operations, 1000);
  EXPECT_DOUBLE_EQ(s->min_us, 1);
  EXPECT_DOUBLE_EQ(s->max_us, 1000);
  EXPECT_DOUBLE_EQ(s->average_us, 500.5);
  EXPECT_DOUBLE_EQ(s->p50_us, 500);
  EXPECT_DOUBLE_EQ(s->p95_us, 950);
  EXPECT_DOUBLE_EQ(s->p99_us, 990);
  EXPECT_DOUBLE_EQ(s->p999_us, 999);
  EXPECT_DOUBLE_EQ(r.runtime_ms, 500.5);
  const std::string text = format_report(r);
  for (const char* line : {"[OVERALL], RunTime(ms), 501\n", "[OVERALL], Throughput(ops/sec), 1998.002\n",
                           "[READ], Operations, 1000\n", "[READ], AverageLatency(us), 500.500\n",
                           "[READ], MinLatency(us), 1.000\n", "[READ], MaxLatency(us), 1000.000\n",
                           "[READ], 50thPercentileLatency(us), 500.000\n",
                           "[READ], 95thPercentileLatency(us), 950.000\n",
                           "[READ], 99thPercentileLatency(us), 990.000\n",
                           "[READ], 99.9PercentileLatency(us), 999.000\n", "[READ], Return=OK, 1000\n"})
    EXPECT_NE(text.find(line), std::string::npos) << line << "\nin:\n" << text;
}

TEST(YcsbRunner, SummarizeUsesTheNearestRank) {
  std::vector<int64_t> v = {5000, 1000, 3000, 2000, 4000};
  OpStats s = summarize("X", v);
  EXPECT_EQ(s.operations, 5);
  EXPECT_DOUBLE_EQ(s.p50_us, 3);
  EXPECT_DOUBLE_EQ(s.p95_us, 5);
  EXPECT_DOUBLE_EQ(s.average_us, 3);
  std::vector<int64_t> none;
  EXPECT_EQ(summarize("Y", none).operations, 0);
}

TEST(YcsbRunner, FailingDbIsCountedAsErrorsNotACrash) {
  FailingDb db;
  Workload w = small("a", 100, 1000);
  w.threads = 2;
  Report loaded = load(db, w).value();
  EXPECT_EQ(returns_of(loaded, "INSERT", "ERROR"), 100);
  Report r = run(db, w).value();
  EXPECT_EQ(returns_of(r, "READ", "ERROR") + returns_of(r, "UPDATE", "ERROR"), 1000);
  EXPECT_EQ(returns_of(r, "READ", "OK"), 0);
  EXPECT_NE(format_report(r).find("[UPDATE], Return=ERROR, "), std::string::npos);
  // F: a failed read skips the update; the read-modify-write fails as a whole.
  Report f = run(db, small("f", 100, 1000)).value();
  EXPECT_EQ(returns_of(f, "READ-MODIFY-WRITE", "ERROR"), ops_of(f, "READ-MODIFY-WRITE"));
  EXPECT_EQ(f.find("UPDATE"), nullptr);
  EXPECT_EQ(returns_of(f, "READ", "ERROR"), 1000);
}

TEST(YcsbRunner, MissingRecordsAreReportedAsNotFound) {
  MemDb db;  // never loaded
  Report r = run(db, small("c", 100, 500)).value();
  EXPECT_EQ(returns_of(r, "READ", "NOT_FOUND"), 500);
}

}  // namespace
}  // namespace hyperloop::ycsb
