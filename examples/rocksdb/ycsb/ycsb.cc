// ycsb.cc: YCSB's generators, core workloads and runner (see ycsb.h).
#include "ycsb.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <thread>
#include <variant>

namespace hyperloop::ycsb {

int64_t fnvhash64(int64_t value) {
  constexpr uint64_t kOffsetBasis = 0xCBF29CE484222325ULL;
  constexpr uint64_t kPrime = 1099511628211ULL;
  uint64_t hash = kOffsetBasis;
  uint64_t v = static_cast<uint64_t>(value);
  for (int i = 0; i < 8; ++i) {
    hash ^= v & 0xff;
    hash *= kPrime;
    v >>= 8;
  }
  const int64_t s = static_cast<int64_t>(hash);
  // Java's Math.abs: the minimum value is its own absolute value.
  return (s < 0 && s != std::numeric_limits<int64_t>::min()) ? -s : s;
}

std::string build_key_name(int64_t keynum, int zeropadding, bool ordered_inserts) {
  const std::string value = std::to_string(ordered_inserts ? keynum : fnvhash64(keynum));
  std::string key = "user";
  if (zeropadding > static_cast<int>(value.size())) key.append(zeropadding - value.size(), '0');
  return key + value;
}

namespace {

// java.util.Random.nextDouble's contract: 53 random bits scaled into [0, 1).
double next_double(Engine& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

// ------------------------------------------------------------------ zipfian

double ZipfianGenerator::zeta(int64_t st, int64_t n, double theta, double initial) {
  double sum = initial;
  for (int64_t i = st; i < n; ++i) sum += 1.0 / std::pow(static_cast<double>(i + 1), theta);
  return sum;
}

ZipfianGenerator::ZipfianGenerator(int64_t min, int64_t max, double theta)
    : ZipfianGenerator(min, max, theta, zeta(0, max - min + 1, theta)) {}

ZipfianGenerator::ZipfianGenerator(int64_t min, int64_t max, double theta, double zetan)
    : items_(max - min + 1),
      base_(min),
      theta_(theta),
      zeta2theta_(zeta(0, 2, theta)),
      alpha_(1.0 / (1.0 - theta)),
      zetan_(zetan),
      eta_((1 - std::pow(2.0 / static_cast<double>(items_), 1 - theta)) / (1 - zeta2theta_ / zetan)),
      count_for_zeta_(items_) {}

int64_t ZipfianGenerator::next(Engine& rng, int64_t itemcount) {
  if (itemcount > count_for_zeta_) {
    // More items: extend zeta incrementally. (YCSB keeps `items` in eta.)
    zetan_ = zeta(count_for_zeta_, itemcount, theta_, zetan_);
    count_for_zeta_ = itemcount;
    eta_ = (1 - std::pow(2.0 / static_cast<double>(items_), 1 - theta_)) / (1 - zeta2theta_ / zetan_);
  }
  const double u = next_double(rng);
  const double uz = u * zetan_;
  if (uz < 1.0) return base_;
  if (uz < 1.0 + std::pow(0.5, theta_)) return base_ + 1;
  return base_ + static_cast<int64_t>(static_cast<double>(itemcount) * std::pow(eta_ * u - eta_ + 1, alpha_));
}

ScrambledZipfianGenerator::ScrambledZipfianGenerator(int64_t min, int64_t max)
    : gen_(0, kItemCount, ZipfianGenerator::kZipfianConstant, kZetan), min_(min), itemcount_(max - min + 1) {}

int64_t ScrambledZipfianGenerator::next(Engine& rng) { return min_ + fnvhash64(gen_.next(rng)) % itemcount_; }

// ----------------------------------------------------------------- counters

void AcknowledgedCounterGenerator::acknowledge(int64_t value) {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t limit = limit_.load();
  if (value != limit + 1) {
    pending_.push_back(value);
    std::push_heap(pending_.begin(), pending_.end(), std::greater<>());
    return;
  }
  ++limit;
  while (!pending_.empty() && pending_.front() == limit + 1) {
    std::pop_heap(pending_.begin(), pending_.end(), std::greater<>());
    pending_.pop_back();
    ++limit;
  }
  limit_.store(limit);
}

SkewedLatestGenerator::SkewedLatestGenerator(const AcknowledgedCounterGenerator& basis)
    : basis_(basis), zipfian_(0, basis.last_value() - 1) {}

int64_t SkewedLatestGenerator::next(Engine& rng) {
  const int64_t max = basis_.last_value();
  return max - zipfian_.next(rng, max);
}

// ----------------------------------------------------------------- workload

std::string_view distribution_name(Distribution d) {
  switch (d) {
    case Distribution::kUniform: return "uniform";
    case Distribution::kZipfian: return "zipfian";
    case Distribution::kLatest: return "latest";
  }
  return "?";
}

Result<Workload> core_workload(std::string_view letter) {
  Workload w;
  w.record_count = 1000;
  w.operation_count = 1000;
  w.request_distribution = Distribution::kZipfian;
  w.read_proportion = w.update_proportion = w.insert_proportion = w.scan_proportion = 0;
  w.read_modify_write_proportion = 0;
  const char c = letter.size() == 1 ? static_cast<char>(letter[0] | 0x20) : '?';
  switch (c) {
    case 'a': w.read_proportion = 0.5; w.update_proportion = 0.5; break;
    case 'b': w.read_proportion = 0.95; w.update_proportion = 0.05; break;
    case 'c': w.read_proportion = 1; break;
    case 'd':
      w.read_proportion = 0.95;
      w.insert_proportion = 0.05;
      w.request_distribution = Distribution::kLatest;
      break;
    case 'e':
      w.scan_proportion = 0.95;
      w.insert_proportion = 0.05;
      w.max_scan_length = 100;
      break;
    case 'f': w.read_proportion = 0.5; w.read_modify_write_proportion = 0.5; break;
    default: return invalid_argument("unknown workload '" + std::string(letter) + "' (want a..f)");
  }
  w.name = std::string(1, c);
  return w;
}

Status validate(const Workload& w) {
  if (w.record_count < 1) return invalid_argument("recordcount must be >= 1");
  if (w.operation_count < 0) return invalid_argument("operationcount must be >= 0");
  if (w.threads < 1 || w.threads > 4096) return invalid_argument("threads must be in [1, 4096]");
  if (w.field_count < 1) return invalid_argument("fieldcount must be >= 1");
  if (w.field_length < 0) return invalid_argument("fieldlength must be >= 0");
  if (w.zero_padding < 0 || w.zero_padding > 64) return invalid_argument("zeropadding must be in [0, 64]");
  if (w.request_distribution == Distribution::kLatest && w.record_count < 2)
    return invalid_argument("requestdistribution=latest needs recordcount >= 2");
  if (w.min_scan_length < 1 || w.max_scan_length < w.min_scan_length)
    return invalid_argument("need 1 <= minscanlength <= maxscanlength");
  const double p[] = {w.read_proportion, w.update_proportion, w.insert_proportion, w.scan_proportion,
                      w.read_modify_write_proportion};
  double sum = 0;
  for (double x : p) {
    if (!(x >= 0)) return invalid_argument("operation proportions must be >= 0");
    sum += x;
  }
  if (!(sum > 0)) return invalid_argument("operation proportions sum to 0");
  return Status::ok();
}

std::string describe(const Workload& w) {
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "workload=%s\nrecordcount=%lld\noperationcount=%lld\nthreads=%d\nseed=%llu\n"
                "readproportion=%g\nupdateproportion=%g\ninsertproportion=%g\nscanproportion=%g\n"
                "readmodifywriteproportion=%g\nrequestdistribution=%s\nfieldcount=%d\nfieldlength=%d\n"
                "minscanlength=%d\nmaxscanlength=%d\nscanlengthdistribution=uniform\nreadallfields=%s\n"
                "writeallfields=%s\ninsertorder=%s\nzeropadding=%d\n",
                w.name.c_str(), static_cast<long long>(w.record_count), static_cast<long long>(w.operation_count),
                w.threads, static_cast<unsigned long long>(w.seed), w.read_proportion, w.update_proportion,
                w.insert_proportion, w.scan_proportion, w.read_modify_write_proportion,
                std::string(distribution_name(w.request_distribution)).c_str(), w.field_count, w.field_length,
                w.min_scan_length, w.max_scan_length, w.read_all_fields ? "true" : "false",
                w.write_all_fields ? "true" : "false", w.ordered_inserts ? "ordered" : "hashed", w.zero_padding);
  return buf;
}

// ------------------------------------------------------------------- runner

int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

OpStats summarize(std::string name, std::vector<int64_t>& latencies_ns) {
  OpStats s;
  s.name = std::move(name);
  s.operations = static_cast<int64_t>(latencies_ns.size());
  if (latencies_ns.empty()) return s;
  std::sort(latencies_ns.begin(), latencies_ns.end());
  const auto n = static_cast<int64_t>(latencies_ns.size());
  double total = 0;
  for (int64_t x : latencies_ns) total += static_cast<double>(x);
  // Nearest rank in integer per-mille, so 99.9 % of 1000 samples is rank 999 exactly.
  auto at = [&](int64_t permille) {
    const int64_t rank = std::max<int64_t>(1, (permille * n + 999) / 1000);
    return static_cast<double>(latencies_ns[rank - 1]) / 1000.0;
  };
  s.average_us = total / static_cast<double>(n) / 1000.0;
  s.min_us = static_cast<double>(latencies_ns.front()) / 1000.0;
  s.max_us = static_cast<double>(latencies_ns.back()) / 1000.0;
  s.p50_us = at(500);
  s.p95_us = at(950);
  s.p99_us = at(990);
  s.p999_us = at(999);
  return s;
}

const OpStats* Report::find(std::string_view name) const {
  for (const OpStats& s : ops)
    if (s.name == name) return &s;
  return nullptr;
}

std::string format_report(const Report& r) {
  std::string out;
  char buf[256];
  auto line = [&](const char* group, const char* metric, const char* fmt, auto value) {
    int n = std::snprintf(buf, sizeof buf, "[%s], %s, ", group, metric);
    n += std::snprintf(buf + n, sizeof buf - n, fmt, value);
    out.append(buf, n).push_back('\n');
  };
  line("OVERALL", "RunTime(ms)", "%lld", static_cast<long long>(std::llround(r.runtime_ms)));
  line("OVERALL", "Throughput(ops/sec)", "%.3f", r.throughput);
  for (const OpStats& s : r.ops) {
    const char* g = s.name.c_str();
    line(g, "Operations", "%lld", static_cast<long long>(s.operations));
    line(g, "AverageLatency(us)", "%.3f", s.average_us);
    line(g, "MinLatency(us)", "%.3f", s.min_us);
    line(g, "MaxLatency(us)", "%.3f", s.max_us);
    line(g, "50thPercentileLatency(us)", "%.3f", s.p50_us);
    line(g, "95thPercentileLatency(us)", "%.3f", s.p95_us);
    line(g, "99thPercentileLatency(us)", "%.3f", s.p99_us);
    line(g, "99.9PercentileLatency(us)", "%.3f", s.p999_us);
    for (const auto& [ret, count] : s.returns)
      line(g, ("Return=" + ret).c_str(), "%lld", static_cast<long long>(count));
  }
  return out;
}

namespace {

enum Op { kInsert, kRead, kUpdate, kScan, kReadModifyWrite, kNumOps };
constexpr std::array<const char*, kNumOps> kOpNames = {"INSERT", "READ", "UPDATE", "SCAN", "READ-MODIFY-WRITE"};

const char* return_name(const Status& s) {
  if (s.is_ok()) return "OK";
  return s.code() == StatusCode::kNotFound ? "NOT_FOUND" : "ERROR";
}

// What all the threads of one phase share: the workload and the insert counters.
struct Shared {
  const Workload& w;
  const Clock& clock;
  CounterGenerator load_keys{0};
  AcknowledgedCounterGenerator insert_keys;
  Shared(const Workload& wl, const Clock& c) : w(wl), clock(c), insert_keys(wl.record_count) {}
};

// One thread's generators and measurements (CoreWorkload's per-call state).
class Client {
 public:
  Client(Shared& shared, uint64_t phase, int thread)
      : sh_(shared),
        w_(shared.w),
        rng_(seed_for(shared.w.seed, phase, thread)),
        field_chooser_(0, w_.field_count - 1),
        scan_length_(w_.min_scan_length, w_.max_scan_length) {
    const double weights[kNumOps] = {w_.insert_proportion, w_.read_proportion, w_.update_proportion,
                                     w_.scan_proportion, w_.read_modify_write_proportion};
    // DiscreteGenerator, in CoreWorkload's order of addValue.
    for (Op op : {kRead, kUpdate, kInsert, kScan, kReadModifyWrite})
      if (weights[op] > 0) choices_.push_back({weights[op], op});
    double sum = 0;
    for (const auto& c : choices_) sum += c.first;
    for (auto& c : choices_) c.first /= sum;
  }

  void do_insert(Db& db) {
    const std::string key = build_key_name(sh_.load_keys.next(), w_.zero_padding, w_.ordered_inserts);
    const Fields values = build_values();
    const int64_t st = sh_.clock();
    Status s = db.insert(key, values);
    measure(kInsert, st, s);
  }

  void do_transaction(Db& db) {
    switch (choose_operation()) {
      case kRead: {
        Fields cells;
        const std::string key = next_key();
        const int64_t st = sh_.clock();
        Status s = db.read(key, &cells);
        measure(kRead, st, s);
        break;
      }
      case kUpdate: {
        const std::string key = next_key();
        const Fields values = w_.write_all_fields ? build_values() : build_single_value();
        const int64_t st = sh_.clock();
        Status s = db.update(key, values);
        measure(kUpdate, st, s);
        break;
      }
      case kInsert: {
        const int64_t keynum = sh_.insert_keys.next();
        const std::string key = build_key_name(keynum, w_.zero_padding, w_.ordered_inserts);
        const Fields values = build_values();
        const int64_t st = sh_.clock();
        Status s = db.insert(key, values);
        measure(kInsert, st, s);
        sh_.insert_keys.acknowledge(keynum);
        break;
      }
      case kScan: {
        const std::string key = next_key();
        const int len = static_cast<int>(scan_length_.next(rng_));
        std::vector<Fields> rows;
        const int64_t st = sh_.clock();
        Status s = db.scan(key, len, &rows);
        measure(kScan, st, s);
        break;
      }
      case kReadModifyWrite: {
        const std::string key = next_key();
        const Fields values = w_.write_all_fields ? build_values() : build_single_value();
        Fields cells;
        const int64_t st = sh_.clock();
        Status s = db.read(key, &cells);
        measure(kRead, st, s);
        if (s.is_ok()) {
          const int64_t ust = sh_.clock();
          s = db.update(key, values);
          measure(kUpdate, ust, s);
        }
        measure(kReadModifyWrite, st, s);
        break;
      }
      case kNumOps: break;
    }
  }

  std::array<std::vector<int64_t>, kNumOps>& latencies() { return latencies_; }
  std::array<std::map<std::string, int64_t>, kNumOps>& returns() { return returns_; }

 private:
  using KeyChooser = std::variant<UniformGenerator, ScrambledZipfianGenerator, SkewedLatestGenerator>;

  static std::seed_seq::result_type low(uint64_t x) { return static_cast<std::seed_seq::result_type>(x); }
  static Engine seed_for(uint64_t seed, uint64_t phase, int thread) {
    std::seed_seq seq{low(seed), low(seed >> 32), low(phase), low(static_cast<uint64_t>(thread))};
    return Engine(seq);
  }

  KeyChooser& key_chooser() {
    // Built on first use: a load never needs one, and "latest" computes zeta.
    if (!key_chooser_) {
      switch (w_.request_distribution) {
        case Distribution::kUniform: key_chooser_.emplace(UniformGenerator(0, w_.record_count - 1)); break;
        case Distribution::kZipfian: {
          // Room for the expected inserts, so the hot keys stay put as keys are added.
          const auto expected_new_keys =
              static_cast<int64_t>(static_cast<double>(w_.operation_count) * w_.insert_proportion * 2.0);
          key_chooser_.emplace(ScrambledZipfianGenerator(0, w_.record_count + expected_new_keys));
          break;
        }
        case Distribution::kLatest: key_chooser_.emplace(SkewedLatestGenerator(sh_.insert_keys)); break;
      }
    }
    return *key_chooser_;
  }

  // CoreWorkload.nextKeynum: redraw keys not inserted (acknowledged) yet.
  std::string next_key() {
    int64_t keynum;
    do {
      keynum = std::visit([this](auto& g) { return g.next(rng_); }, key_chooser());
    } while (keynum > sh_.insert_keys.last_value());
    return build_key_name(keynum, w_.zero_padding, w_.ordered_inserts);
  }

  Op choose_operation() {
    double val = next_double(rng_);
    for (const auto& [weight, op] : choices_) {
      if (val < weight) return op;
      val -= weight;
    }
    return choices_.back().second;  // rounding left val >= the last weight
  }

  std::string random_value() {
    std::string v(static_cast<size_t>(w_.field_length), ' ');
    uint64_t bits = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      if (i % 8 == 0) bits = rng_();
      v[i] = static_cast<char>(' ' + (bits & 0xff) % 95);  // printable ASCII, as RandomByteIterator
      bits >>= 8;
    }
    return v;
  }
  Fields build_values() {
    Fields f;
    f.reserve(static_cast<size_t>(w_.field_count));
    for (int i = 0; i < w_.field_count; ++i) f.emplace_back("field" + std::to_string(i), random_value());
    return f;
  }
  Fields build_single_value() {
    const int64_t field = field_chooser_.next(rng_);
    return {{"field" + std::to_string(field), random_value()}};
  }

  void measure(Op op, int64_t start_ns, const Status& s) {
    latencies_[op].push_back(sh_.clock() - start_ns);
    ++returns_[op][return_name(s)];
  }

  Shared& sh_;
  const Workload& w_;
  Engine rng_;
  UniformGenerator field_chooser_;
  UniformGenerator scan_length_;
  std::optional<KeyChooser> key_chooser_;
  std::vector<std::pair<double, Op>> choices_;
  std::array<std::vector<int64_t>, kNumOps> latencies_;
  std::array<std::map<std::string, int64_t>, kNumOps> returns_;
};

// Runs `total` workload operations over w.threads threads, YCSB Client's split.
template <typename Body>
Result<Report> run_phase(const char* phase, uint64_t phase_id, Db& db, const Workload& w, const Clock& clock,
                         int64_t total, Body body) {
  HL_RETURN_IF_ERROR(validate(w));
  Shared shared(w, clock);
  std::vector<std::unique_ptr<Client>> clients;
  for (int t = 0; t < w.threads; ++t) clients.push_back(std::make_unique<Client>(shared, phase_id, t));

  const int64_t start = clock();
  std::vector<std::thread> threads;
  for (int t = 0; t < w.threads; ++t) {
    const int64_t ops = total / w.threads + (t < total % w.threads ? 1 : 0);
    threads.emplace_back([&, t, ops] {
      for (int64_t i = 0; i < ops; ++i) body(*clients[t], db);
    });
  }
  for (std::thread& th : threads) th.join();
  const int64_t end = clock();

  Report r;
  r.phase = phase;
  r.operations = total;
  r.runtime_ms = static_cast<double>(end - start) / 1e6;
  r.throughput = r.runtime_ms > 0 ? static_cast<double>(total) * 1000.0 / r.runtime_ms : 0;
  for (int op = 0; op < kNumOps; ++op) {
    std::vector<int64_t> all;
    std::map<std::string, int64_t> returns;
    for (auto& c : clients) {
      auto& mine = c->latencies()[op];
      all.insert(all.end(), mine.begin(), mine.end());
      for (const auto& [name, count] : c->returns()[op]) returns[name] += count;
    }
    if (all.empty()) continue;
    OpStats s = summarize(kOpNames[op], all);
    s.returns = std::move(returns);
    r.ops.push_back(std::move(s));
  }
  return r;
}

}  // namespace

Result<Report> load(Db& db, const Workload& w, const Clock& clock) {
  return run_phase("load", 0, db, w, clock, w.record_count, [](Client& c, Db& d) { c.do_insert(d); });
}

Result<Report> run(Db& db, const Workload& w, const Clock& clock) {
  return run_phase("run", 1, db, w, clock, w.operation_count, [](Client& c, Db& d) { c.do_transaction(d); });
}

}  // namespace hyperloop::ycsb
