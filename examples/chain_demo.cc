// hyperloop-demo: a 3-replica chain on the software RNIC.
//
// Runs the four group primitives (gWRITE, gCAS, gMEMCPY, gFLUSH) in both
// forwarding modes, offload (replica NICs forward by themselves) and
// CPU-forwarding (replica threads poll and forward), checks every replica's
// region byte for byte, and prints latency percentiles and the replica
// application CPU spent per operation.
//
// Usage: hyperloop-demo [ops_per_primitive]   (default 2000)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <string>
#include <vector>

#include "hyperloop/primitives.h"
#include "hyperloop/soft_rnic.h"

using namespace hyperloop;

namespace {

constexpr uint32_t kTenant = 42;
constexpr size_t kRegion = 1 << 20;
constexpr uint32_t kReplicas = 3;

struct Percentiles {
  uint64_t p50, p99, p999;
};
Percentiles percentiles(std::vector<uint64_t> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, size_t(q * double(v.size())))]; };
  return {at(0.50), at(0.99), at(0.999)};
}

int fail(const char* what, const Status& s) {
  std::printf("FAILED: %s: %s\n", what, s.to_string().c_str());
  return 1;
}

int run_mode(prim::ForwardMode mode, int ops) {
  std::printf("\n=== %s mode: client -> R1 -> R2 -> R3 -> client ===\n", std::string(prim::forward_mode_name(mode)).c_str());
  soft::Fabric fabric;
  soft::SingleThreadExecutor executor;  // one thread drives every NIC (the "NIC core")
  auto client = fabric.create_nic({.name = "client"});
  if (!client) return fail("client NIC", client.status());
  executor.add(**client);
  std::vector<std::unique_ptr<soft::Nic>> nics;
  std::vector<std::unique_ptr<prim::ReplicaHost>> hosts;
  std::vector<prim::ReplicaHost*> chain;
  for (uint32_t i = 0; i < kReplicas; ++i) {
    auto nic = fabric.create_nic({.name = "replica" + std::to_string(i + 1)});
    if (!nic) return fail("replica NIC", nic.status());
    executor.add(**nic);
    auto host = prim::ReplicaHost::create(**nic);
    if (!host) return fail("replica host", host.status());
    if (auto s = (*host)->register_tenant(kTenant, kRegion); !s) return fail("register tenant", s);
    chain.push_back(host->get());
    nics.push_back(std::move(nic).value());
    hosts.push_back(std::move(host).value());
  }
  prim::GroupOptions opts;
  opts.tenant = kTenant;
  opts.region_size = kRegion;
  opts.mode = mode;
  opts.slots = 512;
  opts.rearm_batch = 64;
  auto group = prim::Group::create(**client, chain, opts);
  if (!group) return fail("group", group.status());
  prim::Group& g = **group;
  std::printf("chain built: %u replicas, %u armed slots each, tenant %u, %zu-byte region\n", kReplicas, opts.slots,
              kTenant, kRegion);

  // The client's model of the region, to check every replica against.
  std::vector<std::byte> model(kRegion, std::byte{0});
  std::vector<std::byte> payload(64);
  uint64_t cpu_before = 0;
  for (auto* h : chain) cpu_before += h->agent_cpu_ns();
  std::printf("%-8s %8s %10s %10s %10s\n", "op", "count", "p50 ns", "p99 ns", "p99.9 ns");
  const char* names[] = {"gWRITE", "gCAS", "gMEMCPY", "gFLUSH"};
  uint64_t total_ops = 0;
  for (int kind = 0; kind < 4; ++kind) {
    std::vector<uint64_t> lat;
    lat.reserve(ops);
    for (int i = 0; i < ops; ++i) {
      prim::Op op;
      const uint64_t t0 = monotonic_ns();
      Status s;
      switch (kind) {
        case 0: {
          const uint64_t off = 4096 + uint64_t(i % 64) * 64;
          for (size_t b = 0; b < payload.size(); ++b) payload[b] = std::byte(uint8_t(i + b));
          s = g.write(op, off, payload);
          std::memcpy(model.data() + off, payload.data(), payload.size());
          break;
        }
        case 1: {
          uint64_t expect;
          std::memcpy(&expect, model.data() + 8, 8);
          s = g.cas(op, 8, expect, expect + 1, 0b111);
          const uint64_t next = expect + 1;
          std::memcpy(model.data() + 8, &next, 8);
          break;
        }
        case 2: {
          const uint64_t src = 4096 + uint64_t(i % 64) * 64, dst = 65536 + uint64_t(i % 64) * 64;
          s = g.memcpy(op, src, dst, 64);
          std::memmove(model.data() + dst, model.data() + src, 64);
          break;
        }
        default:
          s = g.flush(op, 4096, 4096);
          break;
      }
      if (!s) return fail(names[kind], s);
      if (auto w = g.wait(op); !w) return fail(names[kind], w);
      if (kind == 1)
        for (uint32_t r = 0; r < kReplicas; ++r)
          if (op.old_values()[r] + 1 != *reinterpret_cast<const uint64_t*>(model.data() + 8)) {
            std::printf("FAILED: gCAS old value on replica %u is %lu\n", r, (unsigned long)op.old_values()[r]);
            return 1;
          }
      lat.push_back(monotonic_ns() - t0);
    }
    total_ops += lat.size();
    const auto p = percentiles(lat);
    std::printf("%-8s %8zu %10lu %10lu %10lu\n", names[kind], lat.size(), (unsigned long)p.p50, (unsigned long)p.p99,
                (unsigned long)p.p999);
  }
  uint64_t cpu_after = 0;
  for (auto* h : chain) cpu_after += h->agent_cpu_ns();
  std::printf("replica application CPU (agents%s): %.0f ns per operation, all replicas together\n",
              mode == prim::ForwardMode::kOffload ? ", re-arming only" : ", polling and forwarding",
              double(cpu_after - cpu_before) / double(total_ops));
  for (uint32_t r = 0; r < kReplicas; ++r) {
    std::vector<std::byte> got(kRegion);
    if (auto s = chain[r]->peek(kTenant, 0, got); !s) return fail("peek", s);
    if (got != model) {
      std::printf("FAILED: replica %u's region differs from the client's model\n", r + 1);
      return 1;
    }
    auto st = nics[r]->stats();
    std::printf("replica %u: region identical to the model; NIC executed %lu WQEs, agent re-armed %lu slots, forwarded %lu\n",
                r + 1, (unsigned long)st.wqes_executed, (unsigned long)chain[r]->slots_rearmed(),
                (unsigned long)chain[r]->ops_forwarded());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int ops = argc > 1 ? std::max(1, std::atoi(argv[1])) : 2000;
  std::printf("hyperloop-demo: group primitives over a 3-replica chain on the software RNIC\n");
  std::printf("(latencies include this machine's scheduling: the NIC thread, the client and the\n"
              " replica agents share %u cores)\n", std::thread::hardware_concurrency());
  if (int rc = run_mode(prim::ForwardMode::kOffload, ops)) return rc;
  if (int rc = run_mode(prim::ForwardMode::kCpuForward, std::min(ops, 500))) return rc;
  std::printf("\nOK: both modes replicated every operation identically on all replicas\n");
  return 0;
}
