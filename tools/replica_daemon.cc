// hyperloop-replica: a replica host as a process.
//
// Hosts persistent regions for many tenants on a software NIC reachable over
// TCP, serves the chain (the NIC forwards by itself in offload mode), re-arms
// in the background, and answers clients' set-up requests (Group::connect).
//
//   hyperloop-replica CONFIG
//
// CONFIG, one directive per line ('#' starts a comment):
//   address 127.0.0.1            IPv4 address for the data wire and control
//   data_port 0                  the soft fabric's TCP port (0: any free)
//   control_port 7400            where clients connect (0: any free)
//   tenant 1 1048576 /path/t1.pmem   tenant id, region bytes, its file
//
// On start it prints "ready control=<port> data=<port>" on stdout (tests wait
// for that line), then serves until SIGTERM/SIGINT. Files are created when
// missing and found again after a restart: what was made durable is there.
// Exit status: 0 after a signal, 2 for a bad config, 1 for any other error.
#include <pthread.h>
#include <signal.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "hyperloop/primitives.h"
#include "hyperloop/soft_rnic.h"

using namespace hyperloop;

namespace {

struct TenantConfig {
  uint32_t id;
  size_t size;
  std::string path;
};
struct Config {
  std::string address = "127.0.0.1";
  uint16_t data_port = 0;
  uint16_t control_port = 0;
  std::vector<TenantConfig> tenants;
};

Result<Config> parse_config(const std::string& file) {
  std::ifstream in(file);
  if (!in) return not_found("cannot open config file " + file);
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
    if (key == "address") {
      if (!(ls >> c.address)) return invalid_argument(where + "address needs an IPv4 address");
    } else if (key == "data_port") {
      HL_RETURN_IF_ERROR(port(&c.data_port));
    } else if (key == "control_port") {
      HL_RETURN_IF_ERROR(port(&c.control_port));
    } else if (key == "tenant") {
      TenantConfig t;
      std::string id, size;
      if (!(ls >> id >> size >> t.path)) return invalid_argument(where + "tenant needs: id bytes path");
      char* end = nullptr;
      const unsigned long long v = std::strtoull(id.c_str(), &end, 10);
      if (id.empty() || id[0] == '-' || *end || v > UINT32_MAX)
        return invalid_argument(where + "tenant id '" + id + "' is not a number 0..4294967295");
      t.id = uint32_t(v);
      t.size = std::strtoull(size.c_str(), &end, 10);
      if (size.empty() || size[0] == '-' || *end || t.size == 0 || t.size % 8)
        return invalid_argument(where + "tenant " + id + ": region size '" + size +
                                "' must be a positive multiple of 8 bytes");
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
  return c;
}

int fail(const char* what, const Status& s, int code = 1) {
  std::fprintf(stderr, "hyperloop-replica: %s: %s\n", what, s.to_string().c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: hyperloop-replica CONFIG\n");
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
  soft::Fabric fabric;
  auto data_port = fabric.listen(config->address, config->data_port);
  if (!data_port) return fail("data wire", data_port.status());
  auto nic = fabric.create_nic({.name = "replica"});
  if (!nic) return fail("NIC", nic.status());
  soft::SingleThreadExecutor executor;
  executor.add(**nic);
  auto host = prim::ReplicaHost::create(**nic);
  if (!host) return fail("replica host", host.status());
  for (const auto& t : config->tenants)
    if (auto s = (*host)->register_tenant(t.id, t.size, t.path); !s)
      return fail(("tenant " + std::to_string(t.id) + " (" + t.path + ")").c_str(), s);
  auto control_port = (*host)->serve_control(config->address, config->control_port);
  if (!control_port) return fail("control", control_port.status());
  std::printf("ready control=%u data=%u\n", unsigned(*control_port), unsigned(*data_port));
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);  // a signal sent at any time after the block is taken here
  return 0;
}
