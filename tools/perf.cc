// hyperloop-perf: latency and throughput of the group primitives on any
// device, in the manner of perftest's ib_write_lat / ib_write_bw.
//
//   hyperloop-perf [flags]                          all in one process: client
//                                                   and -r replica hosts
//   hyperloop-perf --role server -r 3 --secret HEX  -r replica hosts serving the
//                                                   control protocol; prints
//                                                   "ready endpoints=IP:P,..."
//                                                   and serves until SIGTERM/SIGINT
//   hyperloop-perf --role client --connect IP:P,... --secret HEX
//                                                   the client against them
//
// Two tests, as perftest has: "lat" keeps one operation in flight; "bw" keeps
// -q of them in flight. Each runs -w warm-up operations, then -n measured
// ones, each timed from just before its issue to the moment the client sees
// it complete (CLOCK_MONOTONIC via steady_clock). Output: the set-up (device,
// mode, replicas, size, iterations, host CPUs, an emulation note) and one row
// per test: t_min, t_typical (perftest's: the median), t_avg, p50, p99, p99.9,
// t_max in microseconds, ops/s and MB/s (10^6 bytes); --json prints the same
// as one JSON object instead. docs/perf.md has the details.
//
// Exit status: 0 success, 2 bad flags (usage on stderr), 1 any runtime
// failure (the Status is printed), e.g. offload on a device without
// cross-channel (verbs): kNotSupported from Group::create.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tool_util.h"
#include "hyperloop/primitives.h"
#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"
#include "hyperloop/status.h"

using namespace hyperloop;

namespace {
using hyperloop::tools::parse_hex;

using prim::ForwardMode;
using prim::Group;
using prim::Op;
using prim::ReplicaHost;
using Clk = std::chrono::steady_clock;

// ---- flags ------------------------------------------------------------------------------
constexpr const char* kUsage =
    "usage: hyperloop-perf [flags]\n"
    "  -d, --device NAME      device to run on (default soft; --list shows them)\n"
    "  -s, --size BYTES       payload of each operation (default 64; K and M suffixes)\n"
    "  -n, --iters N          measured operations per test (default 1000)\n"
    "  -w, --warmup N         operations before measuring (default 100)\n"
    "  -q, --depth N          operations in flight in the bw test (default 16)\n"
    "  -r, --replicas N       replicas in the chain, 1..7 (default 3)\n"
    "      --mode M           offload | cpu-forward (default offload)\n"
    "      --op OP            write | cas | memcpy | flush | write+flush (default write)\n"
    "      --test T           lat | bw | all (default all)\n"
    "      --role R           all | server | client (default all: one process)\n"
    "      --address IPV4     server: where to serve; client: its own address for\n"
    "                         the data wire (soft device); default 127.0.0.1\n"
    "      --port P           server: first control port, replica i on P+i (default 0: any)\n"
    "      --connect EP,...   client: the server's endpoints IP:PORT, in chain order\n"
    "      --secret HEX       server and client: the tenant's secret (>= 16 bytes as hex)\n"
    "      --tenant ID        tenant id (default 1)\n"
    "      --region BYTES     replica region size, same on server and client (default 8M)\n"
    "      --slots N          armed operation slots per replica, a power of two\n"
    "                         (default 256, raised to twice -q; given: at least -q)\n"
    "      --timeout-ms N     an operation not acknowledged by then fails (default 5000)\n"
    "      --json             print one JSON object instead of the table\n"
    "      --list             print the devices found and exit\n"
    "  -h, --help             this text\n";

enum class OpKind { kWrite, kCas, kMemcpy, kFlush, kWriteFlush };
enum class Role { kAll, kServer, kClient };

struct Options {
  std::string device = "soft";
  uint64_t size = 64;
  uint64_t iters = 1000;
  uint64_t warmup = 100;
  uint32_t depth = 16;
  uint32_t replicas = 3;
  bool replicas_given = false;
  ForwardMode mode = ForwardMode::kOffload;
  OpKind op = OpKind::kWrite;
  bool run_lat = true, run_bw = true;
  Role role = Role::kAll;
  std::string address = "127.0.0.1";
  uint16_t port = 0;
  std::vector<std::string> connect;
  std::string secret;  // raw bytes
  uint32_t tenant = 1;
  uint64_t region = 8 << 20;
  uint64_t timeout_ms = 5000;
  uint32_t slots = 256;
  bool slots_given = false;
  bool json = false;
  bool list = false;
  bool help = false;
};

constexpr uint64_t kMaxSize = 64 << 20;  // the soft wire's default max_message_bytes
constexpr size_t kMinSecretBytes = 16;   // as hyperloop-replica requires

const char* op_name(OpKind k) {
  switch (k) {
    case OpKind::kWrite: return "write";
    case OpKind::kCas: return "cas";
    case OpKind::kMemcpy: return "memcpy";
    case OpKind::kFlush: return "flush";
    case OpKind::kWriteFlush: return "write+flush";
  }
  return "?";
}

// A number with an optional K/M/G suffix (powers of 1024).
bool parse_number(std::string_view text, uint64_t* out) {
  if (text.empty() || text[0] == '-' || text[0] == '+') return false;
  std::string s(text);
  uint64_t mult = 1;
  switch (s.back()) {
    case 'k': case 'K': mult = 1ull << 10; s.pop_back(); break;
    case 'm': case 'M': mult = 1ull << 20; s.pop_back(); break;
    case 'g': case 'G': mult = 1ull << 30; s.pop_back(); break;
    default: break;
  }
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (*end || errno || v > UINT64_MAX / mult) return false;
  *out = v * mult;
  return true;
}


std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    const size_t end = s.find(sep, start);
    parts.emplace_back(s.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

// The stride between the targets of gWRITEs in flight (64-byte aligned), so
// that the -q operations of the bw test never overlap (the client holds back
// a gWRITE overlapping an in-flight operation: that would measure the rule,
// not the pipeline).
uint64_t write_stride(uint64_t size) { return (std::max<uint64_t>(size, 64) + 63) & ~uint64_t{63}; }

// Empty string: the options are valid; otherwise what is wrong.
std::string parse_args(int argc, char** argv, Options* o) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    std::optional<std::string> inline_value;
    if (flag.rfind("--", 0) == 0) {
      if (auto eq = flag.find('='); eq != std::string::npos) {
        inline_value = flag.substr(eq + 1);
        flag.resize(eq);
      }
    }
    auto value = [&](std::string* out) -> bool {
      if (inline_value) {
        *out = *inline_value;
        return true;
      }
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    auto no_value = [&]() { return !inline_value; };
    std::string v;
    uint64_t x = 0;
    auto number = [&](uint64_t lo, uint64_t hi) -> std::string {
      if (!value(&v)) return flag + " needs a value";
      if (!parse_number(v, &x) || x < lo || x > hi)
        return flag + " must be a number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], not '" + v + "'";
      return "";
    };
    std::string err;
    if (flag == "-h" || flag == "--help") {
      o->help = true;
    } else if (flag == "--list") {
      o->list = true;
    } else if (flag == "--json") {
      if (!no_value()) return "--json takes no value";
      o->json = true;
    } else if (flag == "-d" || flag == "--device") {
      if (!value(&o->device) || o->device.empty()) return flag + " needs a device name";
    } else if (flag == "-s" || flag == "--size") {
      if (!(err = number(1, kMaxSize)).empty()) return err;
      o->size = x;
    } else if (flag == "-n" || flag == "--iters") {
      if (!(err = number(1, 100'000'000)).empty()) return err;
      o->iters = x;
    } else if (flag == "-w" || flag == "--warmup") {
      if (!(err = number(0, 100'000'000)).empty()) return err;
      o->warmup = x;
    } else if (flag == "-q" || flag == "--depth") {
      if (!(err = number(1, 4096)).empty()) return err;
      o->depth = uint32_t(x);
    } else if (flag == "-r" || flag == "--replicas") {
      if (!(err = number(1, prim::kMaxReplicas)).empty()) return err;
      o->replicas = uint32_t(x);
      o->replicas_given = true;
    } else if (flag == "--mode") {
      if (!value(&v)) return "--mode needs offload or cpu-forward";
      if (v == "offload") o->mode = ForwardMode::kOffload;
      else if (v == "cpu-forward") o->mode = ForwardMode::kCpuForward;
      else return "--mode must be offload or cpu-forward, not '" + v + "'";
    } else if (flag == "--op") {
      if (!value(&v)) return "--op needs a value";
      if (v == "write") o->op = OpKind::kWrite;
      else if (v == "cas") o->op = OpKind::kCas;
      else if (v == "memcpy") o->op = OpKind::kMemcpy;
      else if (v == "flush") o->op = OpKind::kFlush;
      else if (v == "write+flush") o->op = OpKind::kWriteFlush;
      else return "--op must be write, cas, memcpy, flush or write+flush, not '" + v + "'";
    } else if (flag == "--test") {
      if (!value(&v)) return "--test needs lat, bw or all";
      if (v == "lat") o->run_lat = true, o->run_bw = false;
      else if (v == "bw") o->run_lat = false, o->run_bw = true;
      else if (v == "all") o->run_lat = o->run_bw = true;
      else return "--test must be lat, bw or all, not '" + v + "'";
    } else if (flag == "--role") {
      if (!value(&v)) return "--role needs all, server or client";
      if (v == "all") o->role = Role::kAll;
      else if (v == "server") o->role = Role::kServer;
      else if (v == "client") o->role = Role::kClient;
      else return "--role must be all, server or client, not '" + v + "'";
    } else if (flag == "--address") {
      if (!value(&o->address) || o->address.empty()) return "--address needs an IPv4 address";
    } else if (flag == "--port") {
      if (!(err = number(0, 65535)).empty()) return err;
      o->port = uint16_t(x);
    } else if (flag == "--connect") {
      if (!value(&v) || v.empty()) return "--connect needs IP:PORT[,IP:PORT...]";
      o->connect = split(v, ',');
      for (const auto& ep : o->connect)
        if (ep.find(':') == std::string::npos) return "--connect: '" + ep + "' is not IP:PORT";
    } else if (flag == "--secret") {
      if (!value(&v)) return "--secret needs hex";
      if (!parse_hex(v, &o->secret)) return "--secret must be an even number of hex digits";
      if (o->secret.size() < kMinSecretBytes)
        return "--secret has " + std::to_string(o->secret.size()) + " bytes; at least " +
               std::to_string(kMinSecretBytes) + " are required";
    } else if (flag == "--tenant") {
      if (!(err = number(0, UINT32_MAX)).empty()) return err;
      o->tenant = uint32_t(x);
    } else if (flag == "--region") {
      if (!(err = number(64, 1ull << 36)).empty()) return err;
      if (x % 8) return "--region must be a multiple of 8 bytes";
      o->region = x;
    } else if (flag == "--slots") {
      if (!(err = number(2, 4096)).empty()) return err;
      if (x & (x - 1)) return "--slots must be a power of two";
      o->slots = uint32_t(x);
      o->slots_given = true;
    } else if (flag == "--timeout-ms") {
      if (!(err = number(1, 3'600'000)).empty()) return err;
      o->timeout_ms = x;
    } else {
      return "unknown flag '" + args[i] + "'";
    }
  }
  if (o->help || o->list) return "";
  // What the roles need and refuse.
  if (o->role == Role::kClient) {
    if (o->connect.empty()) return "--role client needs --connect IP:PORT,...";
    if (o->connect.size() > prim::kMaxReplicas)
      return "--connect names " + std::to_string(o->connect.size()) + " endpoints; at most " +
             std::to_string(prim::kMaxReplicas) + " replicas";
    if (o->replicas_given && o->replicas != o->connect.size())
      return "-r " + std::to_string(o->replicas) + " but --connect names " + std::to_string(o->connect.size()) +
             " endpoints";
    o->replicas = uint32_t(o->connect.size());
  } else if (!o->connect.empty()) {
    return "--connect is for --role client";
  }
  if (o->role != Role::kAll && o->secret.empty()) return "--role server and client need --secret HEX";
  if (o->role == Role::kAll && !o->secret.empty()) return "--secret is for --role server and client";
  if (o->role == Role::kServer && o->port && uint32_t(o->port) + o->replicas - 1 > 65535)
    return "--port " + std::to_string(o->port) + " leaves no room for " + std::to_string(o->replicas) + " ports";
  if (o->slots_given && o->run_bw && o->slots < o->depth)
    return "--slots " + std::to_string(o->slots) + " is less than -q " + std::to_string(o->depth);
  // The region must hold what the operations touch (the server's region is
  // what the client must match; it is checked there by Group::connect).
  if (o->role != Role::kServer) {
    const uint32_t depth = o->run_bw ? o->depth : 1;
    uint64_t need = 0;
    switch (o->op) {
      case OpKind::kWrite:
      case OpKind::kWriteFlush: need = write_stride(o->size) * depth; break;
      case OpKind::kCas: need = 8; break;
      case OpKind::kMemcpy: need = 2 * o->size; break;
      case OpKind::kFlush: need = o->size; break;
    }
    if (need > o->region)
      return std::string("--op ") + op_name(o->op) + " -s " + std::to_string(o->size) + (o->run_bw ? " -q " + std::to_string(o->depth) : "") +
             " needs a region of " + std::to_string(need) + " bytes; --region is " + std::to_string(o->region);
  }
  return "";
}

// ---- the host ---------------------------------------------------------------------------
// What the output says about the machine, so a reader can judge the figures.
struct HostFacts {
  long cpus = 0;             // online CPUs
  long cpus_usable = 0;      // in this process's affinity mask
  std::string cpu_model;
  bool hypervisor = false;   // the CPU flag: a virtual machine
  bool emulated = false;     // QEMU's TCG (no hardware virtualization): not performance
};

std::string read_small_file(const char* path) {
  std::ifstream in(path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

HostFacts host_facts() {
  HostFacts h;
  h.cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t set;
  CPU_ZERO(&set);
  h.cpus_usable = ::sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : h.cpus;
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (h.cpu_model.empty() && line.rfind("model name", 0) == 0) {
      if (auto colon = line.find(':'); colon != std::string::npos)
        h.cpu_model = line.substr(std::min(colon + 2, line.size()));
    }
    if (line.rfind("flags", 0) == 0 && line.find(" hypervisor") != std::string::npos) h.hypervisor = true;
  }
  // QEMU names its TCG CPUs "QEMU TCG CPU" / "QEMU Virtual CPU". A VM whose
  // vendor is QEMU but that offers no kvm-clock is TCG with a named CPU model.
  const std::string vendor = read_small_file("/sys/class/dmi/id/sys_vendor");
  const std::string clocks = read_small_file("/sys/devices/system/clocksource/clocksource0/available_clocksource");
  h.emulated = h.cpu_model.find("QEMU") != std::string::npos ||
               (h.hypervisor && vendor.find("QEMU") != std::string::npos && clocks.find("kvm-clock") == std::string::npos);
  return h;
}

std::string host_note(const HostFacts& h) {
  if (h.emulated) return "QEMU TCG emulation: these timings are not performance";
  if (h.hypervisor) return "virtual machine: timings include the hypervisor's";
  return "";
}

// ---- devices ----------------------------------------------------------------------------
// The one device-specific step: between processes the software RNIC's fabric
// must listen on TCP so QPs of other processes reach this process's NICs
// (every device open_device("soft...") makes is on the default fabric). A
// kernel RDMA device needs nothing of the kind.
bool is_soft(const std::string& device) { return device == "soft" || device.rfind("soft:", 0) == 0; }

Status prepare_wire(const std::string& device, const std::string& address) {
  if (!is_soft(device)) return Status::ok();
  auto port = soft::default_fabric().listen(address);
  if (!port) return Status(port.status().code(), "soft fabric listen on " + address + ": " + port.status().message());
  return Status::ok();
}

std::string device_list() {
  std::string s;
  for (const auto& d : rnic::list_devices()) s += (s.empty() ? "" : ", ") + d;
  return s.empty() ? "none" : s;
}

Result<std::unique_ptr<rnic::Device>> open_named(const std::string& name) {
  auto dev = rnic::open_device(name);
  // open_device names the devices this machine has when it finds none by that name.
  if (!dev) return Status(dev.status().code(), "device '" + name + "': " + dev.status().message());
  return dev;
}

// ---- the workload -----------------------------------------------------------------------
// One measured unit: an operation, or for write+flush a gWRITE and the gFLUSH
// of its bytes issued back to back (the unit is done when the flush is:
// operations complete in issue order).
struct Unit {
  Op first, second;
  bool two = false;
  Clk::time_point issued{};
  bool done() const { return two ? second.done() : first.done(); }
  Status status() const {
    if (!first.status().is_ok()) return first.status();
    return two ? second.status() : Status::ok();
  }
};

class Workload {
 public:
  Workload(OpKind kind, uint64_t size, uint32_t window, size_t region)
      : kind_(kind), size_(size), window_(window), region_(region), payload_(std::max<uint64_t>(size, 8)) {
    for (size_t i = 0; i < payload_.size(); ++i) payload_[i] = std::byte(uint8_t(i * 131 + 17));
  }

  // Before the first operation: gMEMCPY copies bytes that must be there.
  // (u outlives the group, as every Op the group may still hold must.)
  Status prepare(Group& g, Unit& u, uint64_t timeout_ns) {
    if (kind_ != OpKind::kMemcpy) return Status::ok();
    HL_RETURN_IF_ERROR(g.write(u.first, 0, bytes()));
    HL_RETURN_IF_ERROR(g.wait(u.first, timeout_ns));
    return u.first.status();
  }

  // Issues unit number i (0, 1, 2, ... in order).
  Status issue(Group& g, Unit& u, uint64_t i) {
    u.two = kind_ == OpKind::kWriteFlush;
    switch (kind_) {
      case OpKind::kWrite:
      case OpKind::kWriteFlush: {
        std::memcpy(payload_.data(), &i, std::min<uint64_t>(8, size_));  // the stamp verify() reads back
        last_write_ = i;
        const uint64_t off = (i % window_) * write_stride(size_);
        HL_RETURN_IF_ERROR(g.write(u.first, off, bytes()));
        return u.two ? g.flush(u.second, off, size_) : Status::ok();
      }
      case OpKind::kCas: return g.cas(u.first, 0, i, i + 1, (1u << g.replicas()) - 1);
      case OpKind::kMemcpy: return g.memcpy(u.first, 0, region_ / 2, size_);
      case OpKind::kFlush: return g.flush(u.first, 0, size_);
    }
    return internal_error("unknown operation");
  }

  // After unit i completed: gCAS number i finds the word at i on every
  // replica (operations take effect in issue order).
  Status check(const Unit& u, uint64_t i) const {
    if (kind_ != OpKind::kCas) return Status::ok();
    auto old = u.first.old_values();
    for (size_t r = 0; r < old.size(); ++r)
      if (old[r] != i)
        return internal_error("gCAS " + std::to_string(i) + ": replica " + std::to_string(r) + " returned " +
                              std::to_string(old[r]));
    return Status::ok();
  }

  // After everything completed: every replica holds the last gWRITE's bytes
  // (or the gMEMCPY's copy). Reads each replica with RDMA READ.
  Status verify(Group& g) {
    if (kind_ != OpKind::kWrite && kind_ != OpKind::kWriteFlush && kind_ != OpKind::kMemcpy) return Status::ok();
    if (last_write_ == UINT64_MAX && kind_ != OpKind::kMemcpy) return Status::ok();
    const uint64_t off = kind_ == OpKind::kMemcpy ? region_ / 2 : (last_write_ % window_) * write_stride(size_);
    std::vector<std::byte> got(size_);
    for (uint32_t r = 0; r < g.replicas(); ++r) {
      HL_RETURN_IF_ERROR(g.read(r, off, got));
      if (!std::equal(got.begin(), got.end(), payload_.begin()))
        return internal_error(std::string(op_name(kind_)) + ": replica " + std::to_string(r) +
                              " does not hold the bytes written");
    }
    return Status::ok();
  }

  // Payload bytes one unit moves to each replica (for MB/s).
  uint64_t bytes_per_unit() const {
    switch (kind_) {
      case OpKind::kCas: return 8;
      case OpKind::kFlush: return 0;
      default: return size_;
    }
  }

 private:
  std::span<const std::byte> bytes() const { return {payload_.data(), size_}; }
  OpKind kind_;
  uint64_t size_;
  uint32_t window_;
  size_t region_;
  std::vector<std::byte> payload_;
  uint64_t last_write_ = UINT64_MAX;
};

// ---- measuring --------------------------------------------------------------------------
struct Sample {
  std::vector<uint64_t> lat_ns;  // per unit, issue to observed completion
  double wall_s = 0;             // the measured units, first issue to last completion
};

// Runs `count` units with up to `depth` in flight, numbered from *next on,
// in units[0, depth), which must outlive the group: on an error return some
// may still be pending, and the group completes them (kAborted) when it goes.
// The client busy-polls, yielding the core after 64 fruitless polls (on a
// small machine its spinning would starve the NIC and agent threads it waits
// for). A unit not done after the group's op_timeout plus a second fails the
// run (the group fails it first when the chain broke).
Status run_units(Group& g, Workload& w, Unit* units, uint32_t depth, uint64_t count, uint64_t timeout_ns,
                 uint64_t* next, Sample* sample) {
  const uint64_t base = *next;
  uint64_t issued = 0, retired = 0;
  if (sample) sample->lat_ns.reserve(count);
  const auto bound = std::chrono::nanoseconds(timeout_ns) + std::chrono::seconds(1);
  uint32_t idle_polls = 0;
  auto last_progress = Clk::now();
  const auto start = last_progress;
  while (retired < count) {
    // Retire in order what completed.
    bool progressed = false;
    while (retired < issued && units[retired % depth].done()) {
      Unit& u = units[retired % depth];
      const auto now = Clk::now();
      HL_RETURN_IF_ERROR(u.status());
      HL_RETURN_IF_ERROR(w.check(u, base + retired));
      if (sample) sample->lat_ns.push_back(uint64_t(std::chrono::nanoseconds(now - u.issued).count()));
      ++retired;
      progressed = true;
    }
    if (issued < count && issued - retired < depth) {
      Unit& u = units[issued % depth];
      u.issued = Clk::now();
      HL_RETURN_IF_ERROR(w.issue(g, u, base + issued));
      ++issued;
      progressed = true;
    }
    if (progressed) {
      idle_polls = 0;
      last_progress = Clk::now();
      continue;
    }
    if (g.poll() > 0) continue;
    if (++idle_polls >= 64) std::this_thread::yield();
    if ((idle_polls & 255) == 0 && Clk::now() - last_progress > bound)
      return Status(StatusCode::kDeadlineExceeded, "hyperloop-perf: operation " + std::to_string(base + retired) +
                                                       " not acknowledged within " +
                                                       std::to_string(timeout_ns / 1'000'000 + 1000) +
                                                       " ms");
  }
  if (sample) sample->wall_s = std::chrono::duration<double>(Clk::now() - start).count();
  *next = base + count;
  return Status::ok();
}

// Nearest rank, as bench/bench_util.h: the smallest sample with at least q of
// all samples at or below it.
uint64_t percentile(const std::vector<uint64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t idx = size_t(std::ceil(q * double(sorted.size()) - 1e-9));
  idx = std::clamp<size_t>(idx, 1, sorted.size()) - 1;
  return sorted[idx];
}

struct Row {
  std::string test;
  uint32_t depth = 1;
  uint64_t iters = 0;
  double t_min = 0, t_typical = 0, t_avg = 0, p50 = 0, p99 = 0, p999 = 0, t_max = 0;  // microseconds
  double ops_per_s = 0, mb_per_s = 0;
};

Row summarize(std::string test, uint32_t depth, Sample& s, uint64_t bytes_per_unit) {
  Row r;
  r.test = std::move(test);
  r.depth = depth;
  auto& v = s.lat_ns;
  std::sort(v.begin(), v.end());
  r.iters = v.size();
  if (v.empty()) return r;
  auto us = [](uint64_t ns) { return double(ns) / 1000.0; };
  double sum = 0;
  for (uint64_t x : v) sum += double(x);
  r.t_min = us(v.front());
  r.t_typical = us(v[v.size() / 2]);  // perftest's t_typical: the median
  r.t_avg = sum / double(v.size()) / 1000.0;
  r.p50 = us(percentile(v, 0.50));
  r.p99 = us(percentile(v, 0.99));
  r.p999 = us(percentile(v, 0.999));
  r.t_max = us(v.back());
  r.ops_per_s = s.wall_s > 0 ? double(v.size()) / s.wall_s : 0;
  r.mb_per_s = r.ops_per_s * double(bytes_per_unit) / 1e6;
  return r;
}

// ---- output -----------------------------------------------------------------------------
struct Report {
  std::string device, backend, mode, op, role;
  uint32_t replicas = 0;
  uint64_t size = 0, iters = 0, warmup = 0;
  uint32_t depth = 0;
  uint32_t slots = 0;
  HostFacts host;
  std::vector<Row> rows;
};

void print_table(const Report& r) {
  std::printf("hyperloop-perf: %s of %llu bytes over %u replicas\n", r.op.c_str(),
              static_cast<unsigned long long>(r.size), r.replicas);
  std::printf(" device      : %s (backend %s)\n", r.device.c_str(), r.backend.c_str());
  std::printf(" mode        : %s\n", r.mode.c_str());
  std::printf(" role        : %s\n", r.role.c_str());
  std::printf(" replicas    : %u\n", r.replicas);
  std::printf(" size        : %llu bytes\n", static_cast<unsigned long long>(r.size));
  std::printf(" iterations  : %llu (warm-up %llu)\n", static_cast<unsigned long long>(r.iters),
              static_cast<unsigned long long>(r.warmup));
  std::printf(" bw depth    : %u operations in flight\n", r.depth);
  std::printf(" slots       : %u per replica\n", r.slots);
  std::printf(" host cpus   : %ld online, %ld usable (%s)\n", r.host.cpus, r.host.cpus_usable,
              r.host.cpu_model.empty() ? "unknown model" : r.host.cpu_model.c_str());
  if (const std::string note = host_note(r.host); !note.empty()) std::printf(" note        : %s\n", note.c_str());
  std::printf("%-4s %5s %9s %10s %14s %10s %10s %10s %10s %10s %12s %10s\n", "test", "depth", "iters", "t_min[us]",
              "t_typical[us]", "t_avg[us]", "p50[us]", "p99[us]", "p99.9[us]", "t_max[us]", "ops/s", "MB/s");
  for (const auto& row : r.rows)
    std::printf("%-4s %5u %9llu %10.2f %14.2f %10.2f %10.2f %10.2f %10.2f %10.2f %12.0f %10.2f\n", row.test.c_str(),
                row.depth, static_cast<unsigned long long>(row.iters), row.t_min, row.t_typical, row.t_avg, row.p50,
                row.p99, row.p999, row.t_max, row.ops_per_s, row.mb_per_s);
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out + "\"";
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

void print_json(const Report& r) {
  std::string j = "{";
  auto key = [&](const char* k) { j += (j.size() > 1 ? "," : "") + json_string(k) + ":"; };
  key("tool"), j += json_string("hyperloop-perf");
  key("device"), j += json_string(r.device);
  key("backend"), j += json_string(r.backend);
  key("mode"), j += json_string(r.mode);
  key("role"), j += json_string(r.role);
  key("op"), j += json_string(r.op);
  key("replicas"), j += std::to_string(r.replicas);
  key("size"), j += std::to_string(r.size);
  key("iterations"), j += std::to_string(r.iters);
  key("warmup"), j += std::to_string(r.warmup);
  key("depth"), j += std::to_string(r.depth);
  key("slots"), j += std::to_string(r.slots);
  key("host_cpus"), j += std::to_string(r.host.cpus);
  key("host_cpus_usable"), j += std::to_string(r.host.cpus_usable);
  key("cpu_model"), j += json_string(r.host.cpu_model);
  key("emulated"), j += r.host.emulated ? "true" : "false";
  key("note"), j += json_string(host_note(r.host));
  key("results");
  j += "[";
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const Row& row = r.rows[i];
    j += i ? ",{" : "{";
    j += "\"test\":" + json_string(row.test) + ",\"depth\":" + std::to_string(row.depth) +
         ",\"iters\":" + std::to_string(row.iters) + ",\"t_min_us\":" + json_number(row.t_min) +
         ",\"t_typical_us\":" + json_number(row.t_typical) + ",\"t_avg_us\":" + json_number(row.t_avg) +
         ",\"p50_us\":" + json_number(row.p50) + ",\"p99_us\":" + json_number(row.p99) +
         ",\"p99_9_us\":" + json_number(row.p999) + ",\"t_max_us\":" + json_number(row.t_max) +
         ",\"ops_per_s\":" + json_number(row.ops_per_s) + ",\"mb_per_s\":" + json_number(row.mb_per_s) + "}";
  }
  j += "]}";
  std::printf("%s\n", j.c_str());
}

int fail(const std::string& what, const Status& s) {
  std::fprintf(stderr, "hyperloop-perf: %s: %s\n", what.c_str(), s.to_string().c_str());
  return 1;
}

// ---- roles ------------------------------------------------------------------------------
// Replica hosts, each on a device of its own. Destroyed hosts first, then
// their devices (a host must not outlive its device).
struct Replicas {
  std::vector<std::unique_ptr<rnic::Device>> devices;
  std::vector<std::unique_ptr<ReplicaHost>> hosts;
  ~Replicas() { hosts.clear(); }

  Status start(const Options& o) {
    for (uint32_t i = 0; i < o.replicas; ++i) {
      HL_ASSIGN_OR_RETURN(auto dev, open_named(o.device));
      HL_ASSIGN_OR_RETURN(auto host, ReplicaHost::create(*dev));
      if (auto s = host->register_tenant(o.tenant, o.region, {}, o.secret); !s)
        return Status(s.code(), "replica " + std::to_string(i) + ": tenant " + std::to_string(o.tenant) + ": " +
                                    s.message());
      devices.push_back(std::move(dev));
      hosts.push_back(std::move(host));
    }
    return Status::ok();
  }
};

int serve(const Options& o) {
  // SIGTERM/SIGINT end the server (taken with sigwait); blocked before any
  // thread starts so that none of them takes the signal.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  if (auto s = prepare_wire(o.device, o.address); !s) return fail("data wire", s);
  Replicas replicas;
  if (auto s = replicas.start(o); !s) return fail("replicas", s);
  std::string endpoints;
  for (uint32_t i = 0; i < o.replicas; ++i) {
    const uint16_t want = o.port ? uint16_t(o.port + i) : 0;
    auto port = replicas.hosts[i]->serve_control(o.address, want);
    if (!port) return fail("replica " + std::to_string(i) + " control on " + o.address + ":" + std::to_string(want),
                           port.status());
    endpoints += (endpoints.empty() ? "" : ",") + o.address + ":" + std::to_string(*port);
  }
  std::printf("ready endpoints=%s\n", endpoints.c_str());
  std::fflush(stdout);
  std::fprintf(stderr,
               "hyperloop-perf: serving tenant %u (region %llu bytes) on %u replicas of device %s; run the client "
               "with: --role client -d DEVICE --connect %s --secret HEX --region %llu; SIGTERM or SIGINT stops\n",
               o.tenant, static_cast<unsigned long long>(o.region), o.replicas, o.device.c_str(), endpoints.c_str(),
               static_cast<unsigned long long>(o.region));
  int sig = 0;
  sigwait(&stop, &sig);
  return 0;
}

int run_client(const Options& o, const HostFacts& host) {
  const uint64_t timeout_ns = o.timeout_ms * 1'000'000;
  if (o.role == Role::kClient)
    if (auto s = prepare_wire(o.device, o.address); !s) return fail("data wire", s);
  // Destroyed in reverse: the group, the replica hosts and their devices, the
  // client device (a group must go before its hosts and its device).
  // (The client device is opened first: a bad device name fails there.)
  auto client_dev = open_named(o.device);
  if (!client_dev) return fail("client", client_dev.status());
  Replicas replicas;
  if (o.role == Role::kAll)
    if (auto s = replicas.start(o); !s) return fail("replicas", s);
  const uint32_t depth = o.run_bw ? o.depth : 1;
  // The operations' state, declared before the group so that it outlives it.
  auto units = std::make_unique<Unit[]>(depth);

  prim::GroupOptions go;
  go.tenant = o.tenant;
  go.region_size = o.region;
  go.mode = o.mode;
  go.slots = o.slots;
  while (!o.slots_given && go.slots < 2 * depth) go.slots *= 2;
  go.rearm_batch = std::min<uint32_t>(32, go.slots / 4);
  go.staging_bytes = std::max<size_t>(4 << 20, size_t(write_stride(o.size)) * (depth + 1));
  go.op_timeout_ns = timeout_ns;
  go.secret = o.secret;
  go.progress = [] { std::this_thread::yield(); };  // the client's own waits (backpressure, READ)
  Result<std::unique_ptr<Group>> group = Status(StatusCode::kInternal, "no group");
  if (o.role == Role::kAll) {
    std::vector<ReplicaHost*> raw;
    for (auto& h : replicas.hosts) raw.push_back(h.get());
    group = Group::create(**client_dev, raw, go);
  } else {
    group = Group::connect(**client_dev, o.connect, go);
  }
  if (!group) {
    std::string what = std::string("group (") + std::string(prim::forward_mode_name(o.mode)) + " on " + o.device + ")";
    if (group.status().code() == StatusCode::kNotSupported && o.mode == ForwardMode::kOffload)
      what += " [this device cannot offload; try --mode cpu-forward]";
    return fail(what, group.status());
  }
  Group& g = **group;

  Report report;
  report.device = o.device;
  report.backend = (*client_dev)->caps().backend;
  report.mode = std::string(prim::forward_mode_name(o.mode));
  report.op = op_name(o.op);
  report.role = o.role == Role::kAll ? "all-in-one" : "client";
  report.replicas = o.replicas;
  report.size = o.size;
  report.iters = o.iters;
  report.warmup = o.warmup;
  report.depth = o.depth;
  report.slots = go.slots;
  report.host = host;

  Workload w(o.op, o.size, depth, o.region);
  if (auto s = w.prepare(g, units[0], timeout_ns); !s) return fail("prepare", s);
  uint64_t next = 0;
  struct Test {
    const char* name;
    uint32_t depth;
    bool on;
  };
  for (const Test& t : {Test{"lat", 1, o.run_lat}, Test{"bw", o.depth, o.run_bw}}) {
    if (!t.on) continue;
    if (auto s = run_units(g, w, units.get(), t.depth, o.warmup, timeout_ns, &next, nullptr); !s)
      return fail(std::string(t.name) + " warm-up", s);
    Sample sample;
    if (auto s = run_units(g, w, units.get(), t.depth, o.iters, timeout_ns, &next, &sample); !s)
      return fail(t.name, s);
    report.rows.push_back(summarize(t.name, t.depth, sample, w.bytes_per_unit()));
  }
  if (auto s = w.verify(g); !s) return fail("verify", s);
  if (o.json) print_json(report);
  else print_table(report);
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (const std::string err = parse_args(argc, argv, &o); !err.empty()) {
    std::fprintf(stderr, "hyperloop-perf: %s\n%s", err.c_str(), kUsage);
    return 2;
  }
  if (o.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (o.list) {
    for (const auto& d : rnic::list_devices()) std::printf("%s\n", d.c_str());
    return 0;
  }
  if (o.role == Role::kServer) return serve(o);
  return run_client(o, host_facts());
}
