// perf_tool_test: hyperloop-perf as a program (tools/perf.cc, docs/perf.md).
// Runs the built binary: all in one process on the software RNIC in both
// forwarding modes, every operation, the JSON output, its refusals (bad flags:
// exit 2; an unknown device: exit 1 naming the devices found), and the server
// and client roles in two processes over the soft TCP wire. Nothing sleeps:
// the server's readiness is its "ready" line, exits are awaited with bounds
// (daemon_test_util.h's Process).
#include <gtest/gtest.h>

#include <cctype>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include "daemon_test_util.h"

#ifndef HYPERLOOP_PERF_BIN
#error "HYPERLOOP_PERF_BIN must name the hyperloop-perf executable"
#endif

namespace hyperloop::daemon_test {
namespace {

// A whole run, under the sanitizers too (the tool prints everything at the end).
constexpr int kRunTimeoutMs = 120'000;
const std::string kSecret = "00112233445566778899aabbccddeeff0123";

RunResult run_perf(const std::vector<std::string>& args, const TempDir& dir) {
  std::vector<std::string> argv = {HYPERLOOP_PERF_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, dir.path(), kRunTimeoutMs);
}

std::string describe(const RunResult& r) {
  return r.describe + "\n--- stdout:\n" + r.out + "--- stderr:\n" + r.err;
}

// ---- the table ------------------------------------------------------------------------------
struct Row {
  std::string test;
  double depth = 0, iters = 0, t_min = 0, t_typical = 0, t_avg = 0, p50 = 0, p99 = 0, p999 = 0, t_max = 0, ops = 0,
         mbs = 0;
};

// The rows of the table (lines after the "test depth iters ..." header).
std::vector<Row> table_rows(const std::string& out, std::string* why) {
  std::vector<Row> rows;
  std::istringstream in(out);
  bool in_table = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("test ", 0) == 0) {
      in_table = true;
      continue;
    }
    if (!in_table) continue;
    std::istringstream ls(line);
    Row r;
    if (!(ls >> r.test >> r.depth >> r.iters >> r.t_min >> r.t_typical >> r.t_avg >> r.p50 >> r.p99 >> r.p999 >>
          r.t_max >> r.ops >> r.mbs)) {
      *why = "a table row does not parse: '" + line + "'";
      return {};
    }
    std::string extra;
    if (ls >> extra) {
      *why = "a table row has more columns than the header: '" + line + "'";
      return {};
    }
    rows.push_back(r);
  }
  if (!in_table) *why = "no table header";
  return rows;
}

::testing::AssertionResult ordered(const Row& r) {
  if (!(r.t_min > 0 && r.t_min <= r.p50 && r.p50 <= r.p99 && r.p99 <= r.p999 && r.p999 <= r.t_max &&
        r.t_min <= r.t_typical && r.t_typical <= r.t_max && r.t_min <= r.t_avg && r.t_avg <= r.t_max && r.ops > 0))
    return ::testing::AssertionFailure() << r.test << ": t_min " << r.t_min << " t_typical " << r.t_typical << " t_avg "
                                         << r.t_avg << " p50 " << r.p50 << " p99 " << r.p99 << " p99.9 " << r.p999
                                         << " t_max " << r.t_max << " ops/s " << r.ops << " are not ordered";
  return ::testing::AssertionSuccess();
}

// The table of a successful run: a "lat" row (depth 1) and a "bw" row
// (depth `depth`), each of `iters` operations, with ordered figures.
void expect_table(const RunResult& r, double iters, double depth) {
  std::string why;
  const auto rows = table_rows(r.out, &why);
  ASSERT_TRUE(why.empty()) << why << "\n" << describe(r);
  ASSERT_EQ(rows.size(), 2u) << describe(r);
  EXPECT_EQ(rows[0].test, "lat");
  EXPECT_EQ(rows[0].depth, 1);
  EXPECT_EQ(rows[1].test, "bw");
  EXPECT_EQ(rows[1].depth, depth);
  for (const auto& row : rows) {
    EXPECT_EQ(row.iters, iters) << row.test;
    EXPECT_TRUE(ordered(row)) << describe(r);
  }
}

// ---- a small JSON reader (values the tool prints: objects, arrays, strings
// without escapes beyond \" \\ \uXXXX, numbers, true/false/null) --------------------------------
struct Json;
using JsonObject = std::map<std::string, Json>;
using JsonArray = std::vector<Json>;
struct Json {
  std::variant<std::nullptr_t, bool, double, std::string, JsonArray, JsonObject> v;
  const JsonObject* object() const { return std::get_if<JsonObject>(&v); }
  const JsonArray* array() const { return std::get_if<JsonArray>(&v); }
  const double* number() const { return std::get_if<double>(&v); }
  const std::string* string() const { return std::get_if<std::string>(&v); }
};

class JsonReader {
 public:
  explicit JsonReader(std::string_view text) : s_(text) {}
  bool parse(Json* out, std::string* why) {
    if (!value(out) || (skip(), pos_ != s_.size())) {
      *why = "JSON does not parse at byte " + std::to_string(pos_) + " of '" + std::string(s_) + "'";
      return false;
    }
    return true;
  }

 private:
  void skip() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool eat(char c) {
    skip();
    if (pos_ < s_.size() && s_[pos_] == c) return ++pos_, true;
    return false;
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  bool string(std::string* out) {
    if (!eat('"')) return false;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c == '\\') {
        if (pos_ >= s_.size()) return false;
        c = s_[pos_++];
        if (c == 'u') {
          if (pos_ + 4 > s_.size()) return false;
          c = char(std::stoi(std::string(s_.substr(pos_, 4)), nullptr, 16));
          pos_ += 4;
        } else if (c != '"' && c != '\\') {
          return false;
        }
      }
      out->push_back(c);
    }
    return eat('"');
  }
  bool value(Json* out) {
    skip();
    if (pos_ >= s_.size()) return false;
    const char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      JsonObject obj;
      if (!eat('}')) {
        do {
          std::string key;
          Json v;
          if (!string(&key) || !eat(':') || !value(&v)) return false;
          obj.emplace(std::move(key), std::move(v));
        } while (eat(','));
        if (!eat('}')) return false;
      }
      out->v = std::move(obj);
      return true;
    }
    if (c == '[') {
      ++pos_;
      JsonArray arr;
      if (!eat(']')) {
        do {
          Json v;
          if (!value(&v)) return false;
          arr.push_back(std::move(v));
        } while (eat(','));
        if (!eat(']')) return false;
      }
      out->v = std::move(arr);
      return true;
    }
    if (c == '"') {
      std::string str;
      if (!string(&str)) return false;
      out->v = std::move(str);
      return true;
    }
    if (literal("true")) return out->v = true, true;
    if (literal("false")) return out->v = false, true;
    if (literal("null")) return out->v = nullptr, true;
    const std::string rest(s_.substr(pos_));
    size_t used = 0;
    try {
      out->v = std::stod(rest, &used);
    } catch (...) {
      return false;
    }
    pos_ += used;
    return true;
  }
  std::string_view s_;
  size_t pos_ = 0;
};

// ---- all in one process ------------------------------------------------------------------------
class PerfToolTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  TempDir dir_;
};

TEST_F(PerfToolTest, AllInOneOffloadOnSoftPrintsAnOrderedTable) {
  const auto r = run_perf({"-d", "soft", "-n", "200", "-r", "3", "--mode", "offload"}, dir_);
  ASSERT_EQ(r.code, 0) << describe(r);
  expect_table(r, 200, 16);
  // The set-up the figures belong to.
  for (const char* want : {" device      : soft", " mode        : offload", " replicas    : 3",
                           " size        : 64 bytes", " iterations  : 200", " host cpus   : "})
    EXPECT_NE(r.out.find(want), std::string::npos) << "missing '" << want << "'\n" << describe(r);
}

TEST_F(PerfToolTest, AllInOneCpuForwardOnSoftPrintsAnOrderedTable) {
  const auto r = run_perf({"-n", "200", "-r", "3", "--mode", "cpu-forward", "-q", "8"}, dir_);
  ASSERT_EQ(r.code, 0) << describe(r);
  expect_table(r, 200, 8);
  EXPECT_NE(r.out.find(" mode        : cpu-forward"), std::string::npos) << describe(r);
}

TEST_F(PerfToolTest, EveryOperationRunsAndVerifies) {
  for (const char* op : {"write", "cas", "memcpy", "flush", "write+flush"}) {
    SCOPED_TRACE(op);
    const auto r = run_perf({"--op", op, "-s", "4K", "-n", "50", "-w", "10", "-r", "2"}, dir_);
    ASSERT_EQ(r.code, 0) << describe(r);
    expect_table(r, 50, 16);
  }
}

TEST_F(PerfToolTest, JsonIsOneObjectWithTheSetUpAndOrderedResults) {
  const auto r = run_perf({"--json", "-n", "100", "-r", "3", "--op", "cas", "--test", "lat"}, dir_);
  ASSERT_EQ(r.code, 0) << describe(r);
  Json j;
  std::string why;
  ASSERT_TRUE(JsonReader(r.out).parse(&j, &why)) << why;
  const JsonObject* o = j.object();
  ASSERT_NE(o, nullptr) << r.out;
  for (const char* key : {"tool", "device", "backend", "mode", "role", "op", "replicas", "size", "iterations",
                          "warmup", "depth", "slots", "host_cpus", "host_cpus_usable", "cpu_model", "emulated", "note",
                          "results"})
    EXPECT_TRUE(o->count(key)) << "no key '" << key << "' in " << r.out;
  ASSERT_TRUE(o->count("results") && o->count("device") && o->count("replicas") && o->count("op"));
  EXPECT_EQ(*o->at("device").string(), "soft");
  EXPECT_EQ(*o->at("op").string(), "cas");
  EXPECT_EQ(*o->at("replicas").number(), 3);
  const JsonArray* results = o->at("results").array();
  ASSERT_NE(results, nullptr);
  ASSERT_EQ(results->size(), 1u) << "--test lat: one result";
  const JsonObject* lat = (*results)[0].object();
  ASSERT_NE(lat, nullptr);
  Row row;
  const std::pair<const char*, double*> fields[] = {
      {"depth", &row.depth},   {"iters", &row.iters},   {"t_min_us", &row.t_min},   {"t_typical_us", &row.t_typical},
      {"t_avg_us", &row.t_avg}, {"p50_us", &row.p50},    {"p99_us", &row.p99},       {"p99_9_us", &row.p999},
      {"t_max_us", &row.t_max}, {"ops_per_s", &row.ops}, {"mb_per_s", &row.mbs}};
  for (const auto& [key, dst] : fields) {
    ASSERT_TRUE(lat->count(key) && lat->at(key).number()) << "no number '" << key << "' in " << r.out;
    *dst = *lat->at(key).number();
  }
  EXPECT_EQ(*lat->at("test").string(), "lat");
  EXPECT_EQ(row.depth, 1);
  EXPECT_EQ(row.iters, 100);
  row.test = "lat";
  EXPECT_TRUE(ordered(row)) << r.out;
}

// ---- refusals ---------------------------------------------------------------------------------
TEST_F(PerfToolTest, BadFlagsExit2WithUsage) {
  const std::vector<std::vector<std::string>> cases = {
      {"--bogus"},           {"-n"},          {"-n", "0"},          {"-r", "8"},
      {"--mode", "fast"},    {"--op", "xor"}, {"-s", "12x"},        {"--role", "client"},
      {"--role", "server"},  {"--secret", "abc"}, {"--role", "client", "--connect", "127.0.0.1:1"},
      {"--slots", "48"},     {"--slots", "8", "-q", "16"},
      {"-s", "1M", "-q", "16"}};  // 16 MiB of gWRITEs in flight: more than the region
  for (const auto& args : cases) {
    SCOPED_TRACE(join(args));
    const auto r = run_perf(args, dir_);
    EXPECT_EQ(r.code, 2) << describe(r);
    EXPECT_NE(r.err.find("usage: hyperloop-perf"), std::string::npos) << describe(r);
    EXPECT_TRUE(r.out.empty()) << describe(r);
  }
}

TEST_F(PerfToolTest, UnknownDeviceExits1NamingTheDevicesFound) {
  const auto r = run_perf({"-d", "no_such_rnic0", "-n", "10"}, dir_);
  EXPECT_EQ(r.code, 1) << describe(r);
  EXPECT_NE(r.err.find("no_such_rnic0"), std::string::npos) << describe(r);
  EXPECT_NE(r.err.find("has: soft"), std::string::npos) << describe(r);  // open_device's list
  EXPECT_TRUE(r.out.empty()) << describe(r);
}

// ---- server and client roles ------------------------------------------------------------------
// The server role in a child process: its ready line names the endpoints.
class Server {
 public:
  ::testing::AssertionResult start(const TempDir& dir, uint32_t replicas) {
    stderr_path_ = dir.file("server.stderr");
    std::string error;
    proc_ = Process::spawn({HYPERLOOP_PERF_BIN, "--role", "server", "-r", std::to_string(replicas), "--secret",
                            kSecret},
                           stderr_path_, &error);
    if (!proc_) return ::testing::AssertionFailure() << "cannot start the server: " << error;
    std::string line, why;
    if (!proc_->read_line(&line, kReadyTimeoutMs, &why))
      return ::testing::AssertionFailure() << "server not ready: " << why << "; stderr: " << read_file(stderr_path_);
    const std::string prefix = "ready endpoints=";
    if (line.rfind(prefix, 0) != 0) return ::testing::AssertionFailure() << "unexpected first line '" << line << "'";
    endpoints_ = line.substr(prefix.size());
    size_t n = 1;
    for (char c : endpoints_) n += c == ',';
    if (n != replicas) return ::testing::AssertionFailure() << "expected " << replicas << " endpoints: " << line;
    return ::testing::AssertionSuccess();
  }
  const std::string& endpoints() const { return endpoints_; }
  Process& process() { return *proc_; }
  std::string stderr_text() const { return read_file(stderr_path_); }

 private:
  std::unique_ptr<Process> proc_;
  std::string stderr_path_, endpoints_;
};

TEST_F(PerfToolTest, ServerAndClientRolesAcrossProcessesOnSoft) {
  Server server;
  ASSERT_TRUE(server.start(dir_, 3));
  for (const char* mode : {"offload", "cpu-forward"}) {
    SCOPED_TRACE(mode);
    const auto r = run_perf({"--role", "client", "--connect", server.endpoints(), "--secret", kSecret, "--mode", mode,
                             "-n", "200", "-q", "8"},
                            dir_);
    ASSERT_EQ(r.code, 0) << describe(r) << "\n--- server stderr:\n" << server.stderr_text();
    expect_table(r, 200, 8);
    EXPECT_NE(r.out.find(" role        : client"), std::string::npos) << describe(r);
    EXPECT_NE(r.out.find(" replicas    : 3"), std::string::npos) << describe(r);
  }
  // The secret must match the server's.
  const auto wrong = run_perf({"--role", "client", "--connect", server.endpoints(), "--secret",
                               "ffeeddccbbaa99887766554433221100", "-n", "10"},
                              dir_);
  EXPECT_EQ(wrong.code, 1) << describe(wrong);
  EXPECT_NE(wrong.err.find("PermissionDenied"), std::string::npos) << describe(wrong);
  // SIGTERM stops the server: exit 0.
  server.process().signal(SIGTERM);
  ASSERT_TRUE(server.process().wait_exit(kExitTimeoutMs)) << server.stderr_text();
  EXPECT_EQ(server.process().describe_exit(), "exit code 0") << server.stderr_text();
}

}  // namespace
}  // namespace hyperloop::daemon_test
