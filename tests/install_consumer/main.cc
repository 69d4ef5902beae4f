// Install check: opens the software RNIC through the installed package's
// public interface, creates a protection domain and a completion queue,
// prints the device capabilities, links the transaction layer, and exits 0
// (1 on any error).
#include <cstdio>
#include <memory>
#include <span>

#include "hyperloop/rnic.h"
#include "hyperloop/txn.h"

namespace rnic = hyperloop::rnic;

int main() {
  auto dev = rnic::open_device("soft");
  if (!dev.is_ok()) {
    std::fprintf(stderr, "open_device(\"soft\"): %s\n", dev.status().to_string().c_str());
    return 1;
  }
  // The transaction layer links: a store's region size for default options.
  const size_t region = hyperloop::txn::Store::region_bytes(hyperloop::txn::StoreOptions{});
  if (region == 0) {
    std::fprintf(stderr, "txn::Store::region_bytes: 0 for default options\n");
    return 1;
  }
  std::printf("txn store region for default options: %zu bytes\n", region);
  const rnic::DeviceCaps& c = (*dev)->caps();
  std::printf("device %s (backend %s)\n", c.name.c_str(), c.backend.c_str());
  std::printf("  cross_channel=%d managed_queues=%d raw_send_ring=%d raw_recv_ring=%d raw_cq_ring=%d\n",
              c.cross_channel, c.managed_queues, c.raw_send_ring, c.raw_recv_ring, c.raw_cq_ring);
  std::printf("  atomics=%d persistent_memory=%d max_sge=%u max_inline_data=%u\n", c.atomics,
              c.persistent_memory, c.max_sge, c.max_inline_data);
  std::printf("  max_send_wqebbs=%u max_recv_wqes=%u max_cqe=%u max_mr_size=%llu max_msg_size=%u max_rd_atomic=%u\n",
              c.max_send_wqebbs, c.max_recv_wqes, c.max_cqe,
              static_cast<unsigned long long>(c.max_mr_size), c.max_msg_size, c.max_rd_atomic);

  {
    auto pd = (*dev)->alloc_pd();
    if (!pd.is_ok()) {
      std::fprintf(stderr, "alloc_pd: %s\n", pd.status().to_string().c_str());
      return 1;
    }
    rnic::CqAttr cq_attr;
    cq_attr.cqe_count = 64;
    auto cq = (*dev)->create_cq(cq_attr);
    if (!cq.is_ok()) {
      std::fprintf(stderr, "create_cq: %s\n", cq.status().to_string().c_str());
      return 1;
    }
    rnic::WorkCompletion wc[4];
    auto n = (*cq)->poll(std::span<rnic::WorkCompletion>(wc));
    if (!n.is_ok() || *n != 0) {
      std::fprintf(stderr, "poll on a fresh CQ: expected 0 completions\n");
      return 1;
    }
    std::printf("protection domain and CQ %u (%u entries) created; install check OK\n", (*cq)->cqn(),
                (*cq)->size());
    // The CQ and PD are destroyed here, before the device (verbs lifetime rules).
  }
  return 0;
}
