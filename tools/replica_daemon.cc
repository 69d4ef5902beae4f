// hyperloop-replica: a replica host as a process.
//
// Hosts persistent regions for many tenants on an RNIC (by default a software
// NIC reachable over TCP; `device NAME` opens any device of the build, e.g. a
// verbs device such as rxe0), serves the chain (the NIC forwards by itself in
// offload mode; the agent forwards in CPU-forwarding mode), re-arms in the
// background, and answers clients' set-up requests (Group::connect) over TCP.
//
//   hyperloop-replica CONFIG          serve
//   hyperloop-replica --stats IP:PORT print a running daemon's metrics
//                                     (Prometheus text format) and exit
//
// CONFIG, one directive per line ('#' starts a comment):
//   device soft                  the RNIC (default soft: a software NIC on a
//                                fabric listening on address:data_port). Any
//                                other name is rnic::open_device(NAME) (e.g.
//                                rxe0, mlx5_0): its data path is that device;
//                                the data_* directives (the soft TCP wire's)
//                                are then a config error (exit 2), and an
//                                unknown name is exit 1 with open_device's
//                                message (it lists the devices found)
//   address 127.0.0.1            IPv4 address for control (and the soft wire)
//   data_port 0                  the soft fabric's TCP port (0: any free)
//   control_port 7400            where clients connect (0: any free)
//   tenant 1 1048576 /path/t1.pmem secret=HEX
//   tenant 2 1048576 /path/t2.pmem secret_file=/etc/hyperloop/t2.secret
//                                tenant id, region bytes, its file, and the
//                                secret its clients must prove (at least 16
//                                bytes as hex; a secret file holds the hex and
//                                must not be readable by group or others)
// Limits (defaults and meaning in docs/daemon.md):
//   control:  max_connections N  max_unauthenticated N  auth_timeout_ms N
//             client_timeout_ms N  max_slots N  max_region_bytes N
//   data wire (device soft only): data_max_connections N  data_inflight_packets N
//             data_inflight_bytes N  data_send_queue_bytes N  data_connect_timeout_ms N
//             data_send_stall_timeout_ms N  data_ack_timeout_ms N  max_message_bytes N
//   log_level debug|info|warn|error
//
// On start it prints "ready control=<port> data=<port>" on stdout (tests wait
// for that line; data=0 on a device other than soft, which has no TCP data
// port), then serves until SIGTERM/SIGINT; it logs to stderr in
// logfmt. Files are created when missing and found again after a restart:
// what was made durable is there.
// Region files have one owner (hyperloop/pmem.h): two tenants on one file
// (under any names: identified by device and inode), a file another process
// (another daemon) holds locked, or a file system without room for a region
// (space is reserved at start) are exit 1 with the reason, before "ready".
// Exit status: 0 after a signal, 2 for a bad config, 1 for any other error.
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "control.h"
#include "tool_util.h"
#include "hyperloop/log.h"
#include "hyperloop/primitives.h"
#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"

using namespace hyperloop;

namespace {
using hyperloop::tools::parse_hex;

struct TenantConfig {
  uint32_t id;
  size_t size;
  std::string path;
  std::string secret;  // raw bytes
};
struct Config {
  std::string device = "soft";
  std::string address = "127.0.0.1";
  uint16_t data_port = 0;
  uint16_t control_port = 0;
  std::vector<TenantConfig> tenants;
  prim::ControlOptions control;
  uint64_t max_region_bytes = 64ull << 30;
  LogLevel log_level = LogLevel::kInfo;
  soft::FabricOptions wire;
  uint64_t ack_timeout_ns = soft::NicOptions{}.ack_timeout_ns;  // the soft NIC's transport retry timer
  std::string first_wire_line;  // "file:line: key" of the first data_* (or max_message_bytes) directive
};

constexpr size_t kMinSecretBytes = 16;


// secret=HEX or secret_file=PATH (the file holds hex; mode must deny group/other).
Status parse_secret(const std::string& spec, const std::string& where, const std::string& id, std::string* out) {
  std::string hex;
  if (spec.rfind("secret=", 0) == 0) {
    hex = spec.substr(7);
  } else if (spec.rfind("secret_file=", 0) == 0) {
    const std::string path = spec.substr(12);
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0)
      return invalid_argument(where + "tenant " + id + ": cannot read secret file " + path + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return invalid_argument(where + "tenant " + id + ": secret file " + path + " is not a regular file");
    if (st.st_mode & 077)
      return invalid_argument(where + "tenant " + id + ": secret file " + path +
                              " is readable or writable by group or others (chmod 600 it)");
    std::ifstream f(path);
    if (!(f >> hex)) return invalid_argument(where + "tenant " + id + ": secret file " + path + " is empty");
  } else {
    return invalid_argument(where + "tenant " + id + ": expected secret=HEX or secret_file=PATH, not '" + spec + "'");
  }
  if (!parse_hex(hex, out)) return invalid_argument(where + "tenant " + id + ": the secret is not hex");
  if (out->size() < kMinSecretBytes)
    return invalid_argument(where + "tenant " + id + ": the secret has " + std::to_string(out->size()) +
                            " bytes; at least " + std::to_string(kMinSecretBytes) + " are required");
  return Status::ok();
}

Result<Config> parse_config(const std::string& file) {
  // A directory opens as a stream that reads nothing: say what it is.
  struct stat st{};
  if (::stat(file.c_str(), &st) != 0)
    return not_found("cannot open config file " + file + ": " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return invalid_argument("config file " + file + " is a directory");
  if (!S_ISREG(st.st_mode)) return invalid_argument("config file " + file + " is not a regular file");
  std::ifstream in(file);
  if (!in) return not_found("cannot open config file " + file + ": " + std::strerror(errno));
  Config c;
  std::string line;
  for (int no = 1; std::getline(in, line); ++no) {
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream ls(line);
    std::string key;
    if (!(ls >> key)) continue;
    const std::string where = file + ":" + std::to_string(no) + ": ";
    auto port = [&](uint16_t* out) -> Status {
      long v;
      if (!(ls >> v) || v < 0 || v > 65535) return invalid_argument(where + key + " needs a port 0..65535");
      *out = uint16_t(v);
      return Status::ok();
    };
    auto number = [&](uint64_t lo, uint64_t hi, uint64_t* out) -> Status {
      std::string v;
      char* end = nullptr;
      if (!(ls >> v) || v[0] == '-') return invalid_argument(where + key + " needs a number");
      errno = 0;
      const unsigned long long x = std::strtoull(v.c_str(), &end, 10);
      if (*end || errno || x < lo || x > hi)
        return invalid_argument(where + key + " must be a number in [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "], not '" + v + "'");
      *out = x;
      return Status::ok();
    };
    uint64_t x = 0;
    const bool wire_directive = key.rfind("data_", 0) == 0 || key == "max_message_bytes";
    if (wire_directive && c.first_wire_line.empty()) c.first_wire_line = where + key;
    if (key == "device") {
      if (!(ls >> c.device)) return invalid_argument(where + "device needs a name (soft, or a device such as rxe0)");
      if (c.device.rfind("soft:", 0) == 0)
        return invalid_argument(where + "device " + c.device +
                                " is an in-process soft NIC no other process can reach; use device soft");
    } else if (key == "max_connections") {
      HL_RETURN_IF_ERROR(number(1, 65536, &x));
      c.control.max_connections = uint32_t(x);
    } else if (key == "max_unauthenticated") {
      HL_RETURN_IF_ERROR(number(1, 65536, &x));
      c.control.max_unauthenticated = uint32_t(x);
    } else if (key == "auth_timeout_ms") {
      HL_RETURN_IF_ERROR(number(10, 600'000, &x));
      c.control.auth_timeout_ns = x * 1'000'000;
    } else if (key == "client_timeout_ms") {
      HL_RETURN_IF_ERROR(number(10, 600'000, &x));
      c.control.client_timeout_ns = x * 1'000'000;
    } else if (key == "max_slots") {
      HL_RETURN_IF_ERROR(number(2, 1 << 16, &x));
      if (x & (x - 1)) return invalid_argument(where + "max_slots must be a power of two");
      c.control.max_slots = uint32_t(x);
    } else if (key == "max_region_bytes") {
      HL_RETURN_IF_ERROR(number(8, 1ull << 50, &x));
      c.max_region_bytes = x;
    } else if (key == "data_max_connections") {
      HL_RETURN_IF_ERROR(number(1, 65536, &x));
      c.wire.max_inbound_connections = uint32_t(x);
    } else if (key == "data_inflight_packets") {
      HL_RETURN_IF_ERROR(number(1, 1 << 24, &x));
      c.wire.max_inflight_packets_per_connection = uint32_t(x);
    } else if (key == "data_inflight_bytes") {
      HL_RETURN_IF_ERROR(number(4096, 1ull << 40, &x));
      c.wire.max_inflight_bytes_per_connection = x;
    } else if (key == "data_send_queue_bytes") {
      HL_RETURN_IF_ERROR(number(4096, 1ull << 40, &x));
      c.wire.max_send_queue_bytes = x;
    } else if (key == "data_connect_timeout_ms") {
      HL_RETURN_IF_ERROR(number(10, 600'000, &x));
      c.wire.connect_timeout_ns = x * 1'000'000;
    } else if (key == "data_send_stall_timeout_ms") {
      HL_RETURN_IF_ERROR(number(10, 600'000, &x));
      c.wire.send_stall_timeout_ns = x * 1'000'000;
    } else if (key == "data_ack_timeout_ms") {
      HL_RETURN_IF_ERROR(number(1, 60'000, &x));
      c.ack_timeout_ns = x * 1'000'000;
    } else if (key == "max_message_bytes") {
      HL_RETURN_IF_ERROR(number(64, 1ull << 31, &x));
      c.wire.max_message_bytes = uint32_t(x);
    } else if (key == "log_level") {
      std::string v;
      ls >> v;
      if (v == "debug") c.log_level = LogLevel::kDebug;
      else if (v == "info") c.log_level = LogLevel::kInfo;
      else if (v == "warn") c.log_level = LogLevel::kWarn;
      else if (v == "error") c.log_level = LogLevel::kError;
      else return invalid_argument(where + "log_level must be debug, info, warn or error");
    } else if (key == "address") {
      if (!(ls >> c.address)) return invalid_argument(where + "address needs an IPv4 address");
    } else if (key == "data_port") {
      HL_RETURN_IF_ERROR(port(&c.data_port));
    } else if (key == "control_port") {
      HL_RETURN_IF_ERROR(port(&c.control_port));
    } else if (key == "tenant") {
      TenantConfig t;
      std::string id, size;
      std::string secret_spec;
      if (!(ls >> id >> size >> t.path >> secret_spec))
        return invalid_argument(where + "tenant needs: id bytes path secret=HEX|secret_file=PATH");
      char* end = nullptr;
      const unsigned long long v = std::strtoull(id.c_str(), &end, 10);
      if (id.empty() || id[0] == '-' || *end || v > UINT32_MAX)
        return invalid_argument(where + "tenant id '" + id + "' is not a number 0..4294967295");
      t.id = uint32_t(v);
      t.size = std::strtoull(size.c_str(), &end, 10);
      if (size.empty() || size[0] == '-' || *end || t.size == 0 || t.size % 8)
        return invalid_argument(where + "tenant " + id + ": region size '" + size +
                                "' must be a positive multiple of 8 bytes");
      if (t.size > c.max_region_bytes)
        return invalid_argument(where + "tenant " + id + ": region of " + size + " bytes is over max_region_bytes " +
                                std::to_string(c.max_region_bytes) + " (set max_region_bytes before the tenant lines)");
      HL_RETURN_IF_ERROR(parse_secret(secret_spec, where, id, &t.secret));
      // The same path twice is a config error; the same file under two names
      // (./, a symlink, a hard link) is found by device and inode when the
      // files are opened (exit 1, PersistentMemory's one-owner rule).
      for (const auto& o : c.tenants) {
        if (o.id == t.id) return invalid_argument(where + "tenant " + id + " is listed twice");
        if (o.path == t.path) return invalid_argument(where + "tenants " + std::to_string(o.id) + " and " + id +
                                                      " share the file " + t.path);
      }
      c.tenants.push_back(t);
    } else {
      return invalid_argument(where + "unknown directive '" + key + "'");
    }
    std::string extra;
    if (ls >> extra) return invalid_argument(where + "unexpected '" + extra + "'");
  }
  if (c.tenants.empty()) return invalid_argument(file + ": no tenant lines");
  // The data_* directives configure the soft NIC's TCP wire; another device
  // carries data itself. Refused rather than ignored, so that a limit an
  // operator set is never silently not in force.
  if (c.device != "soft" && !c.first_wire_line.empty())
    return invalid_argument(c.first_wire_line + " configures the soft device's TCP wire, but the device is " +
                            c.device + ", which carries data itself: remove the line");
  return c;
}

// The data wire's counters in Prometheus text format (appended to STATS).
std::string wire_metrics(const soft::WireStats& w) {
  using prim::internal::append_metric;
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, uint64_t v) {
    append_metric(&out, name, type, help, v);
  };
  metric("hyperloop_wire_connections_accepted_total", "counter", "Inbound data connections accepted.", w.connections_accepted);
  metric("hyperloop_wire_connections_refused_total", "counter", "Inbound data connections over the limit.", w.connections_refused);
  metric("hyperloop_wire_connections_open", "gauge", "Inbound data connections open.", w.connections_open);
  metric("hyperloop_wire_frames_rejected_total", "counter", "Malformed data frames (connection closed).", w.frames_rejected);
  metric("hyperloop_wire_packets_dropped_bad_key_total", "counter", "Packets with a key not the QP peer's (forged).", w.packets_dropped_bad_key);
  metric("hyperloop_wire_packets_dropped_wrong_connection_total", "counter", "Packets on a connection the QP is not bound to.", w.packets_dropped_wrong_connection);
  metric("hyperloop_wire_packets_dropped_queue_full_total", "counter", "Packets dropped at a full send queue.", w.packets_dropped_queue_full);
  metric("hyperloop_wire_packets_dropped_dead_link_total", "counter", "Packets sent over a dead link.", w.packets_dropped_dead_link);
  metric("hyperloop_wire_links_open", "gauge", "Outbound data links connecting or open.", w.links_open);
  metric("hyperloop_wire_connect_failures_total", "counter", "Outbound connects refused or timed out.", w.connect_failures);
  metric("hyperloop_wire_links_cut_total", "counter", "Outbound links cut (stall, peer closed, error).", w.links_cut);
  metric("hyperloop_wire_backpressure_pauses_total", "counter", "Times an inbound connection stopped being read.", w.backpressure_pauses);
  return out;
}

int fail(const char* what, const Status& s, int code = 1) {
  std::fprintf(stderr, "hyperloop-replica: %s: %s\n", what, s.to_string().c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--stats") {
    auto text = prim::internal::remote_stats(argv[2], 5'000'000'000ull);
    if (!text) return fail("stats", text.status());
    std::fwrite(text->data(), 1, text->size(), stdout);
    return 0;
  }
  if (argc != 2) {
    std::fprintf(stderr, "usage: hyperloop-replica CONFIG | hyperloop-replica --stats IP:PORT\n");
    return 2;
  }
  // SIGTERM/SIGINT are taken with sigwait below; block them before any thread
  // starts so none of them can take the signal (or lose it).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto config = parse_config(argv[1]);
  if (!config) return fail("config", config.status(), 2);
  set_log_sink(stderr_log_sink(), config->log_level);
  // The device: a soft NIC on a listening fabric of its own (device soft), or
  // a device opened by name. Destroyed after the host (declared before it).
  std::unique_ptr<soft::Fabric> fabric;
  std::optional<soft::SingleThreadExecutor> executor;
  std::unique_ptr<rnic::Device> device;
  uint16_t data_port = 0;  // 0: the device has no TCP data port
  if (config->device == "soft") {
    fabric = std::make_unique<soft::Fabric>(config->wire);
    auto port = fabric->listen(config->address, config->data_port);
    if (!port) return fail("data wire", port.status());
    data_port = *port;
    auto nic = fabric->create_nic({.name = "replica", .ack_timeout_ns = config->ack_timeout_ns});
    if (!nic) return fail("NIC", nic.status());
    executor.emplace();
    executor->add(**nic);
    device = std::move(*nic);
  } else {
    auto d = rnic::open_device(config->device);
    if (!d) return fail(("device " + config->device).c_str(), d.status());
    device = std::move(*d);
  }
  log(LogLevel::kInfo, "daemon", "device",
      {{"device", config->device}, {"name", device->caps().name}, {"backend", device->caps().backend},
       {"data", config->device == "soft" ? "soft TCP wire" : "the device (no TCP data port)"}});
  auto host = prim::ReplicaHost::create(*device);
  if (!host) return fail("replica host", host.status());
  for (const auto& t : config->tenants)
    if (auto s = (*host)->register_tenant(t.id, t.size, t.path, t.secret); !s)
      return fail(("tenant " + std::to_string(t.id) + " (" + t.path + ")").c_str(), s);
  if (fabric) config->control.extra_metrics = [f = fabric.get()] { return wire_metrics(f->wire_stats()); };
  auto control_port = (*host)->serve_control(config->address, config->control_port, config->control);
  if (!control_port) return fail("control", control_port.status());
  log(LogLevel::kInfo, "daemon", "ready",
      {{"address", config->address}, {"device", config->device}, {"control_port", *control_port},
       {"data_port", data_port},
       {"tenants", config->tenants.size()}, {"max_connections", config->control.max_connections},
       {"client_timeout_ms", config->control.client_timeout_ns / 1'000'000}});
  std::printf("ready control=%u data=%u\n", unsigned(*control_port), unsigned(data_port));
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);  // a signal sent at any time after the block is taken here
  log(LogLevel::kInfo, "daemon", "stopping", {{"signal", sig}});
  return 0;
}
