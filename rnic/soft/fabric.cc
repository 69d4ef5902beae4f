// rnic/soft: the in-process wire (Fabric) and NIC creation.
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <unordered_map>

#include "fabric_impl.h"

namespace hyperloop::soft {

namespace {
std::pair<uint64_t, uint64_t> link_key(uint64_t a, uint64_t b) { return {std::min(a, b), std::max(a, b)}; }
}  // namespace

bool fabric_admit(Fabric::Impl* f, uint64_t a, uint64_t b, uint64_t now, uint64_t* deliver_at) {
  *deliver_at = 0;
  if (f->fault_count.load(std::memory_order_acquire) == 0) return true;
  std::lock_guard<std::mutex> l(f->mu);
  const auto key = link_key(a, b);
  if (f->cut.count(key)) return false;
  auto it = f->lossy.find(key);
  if (it == f->lossy.end()) return true;
  if (it->second.drop > 0 && std::uniform_real_distribution<double>(0, 1)(f->rng) < it->second.drop) return false;
  if (it->second.delay_ns) *deliver_at = now + it->second.delay_ns;
  return true;
}

void Fabric::set_link(const Nic& a, const Nic& b, bool up) {
  std::lock_guard<std::mutex> l(impl_->mu);
  if (up) impl_->cut.erase(link_key(a.uid(), b.uid()));
  else impl_->cut.insert(link_key(a.uid(), b.uid()));
  impl_->recount();
}

void Fabric::set_link_faults(const Nic& a, const Nic& b, LinkFaults faults) {
  std::lock_guard<std::mutex> l(impl_->mu);
  if (faults.drop <= 0 && faults.delay_ns == 0) impl_->lossy.erase(link_key(a.uid(), b.uid()));
  else impl_->lossy[link_key(a.uid(), b.uid())] = faults;
  impl_->recount();
}

void Fabric::seed(uint64_t seed) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->rng.seed(seed);
}

namespace {
// NIC uids are unique across processes too (they travel in QP addresses):
// a random per-process prefix and a counter.
uint64_t next_uid() {
  static const uint64_t prefix = (uint64_t(std::random_device{}()) << 32);
  static std::atomic<uint64_t> counter{1};
  return prefix | counter.fetch_add(1);
}
}

Port::~Port() {
  while (!inbox.empty()) {
    Packet* p = &inbox.front();
    inbox.pop_front();
    p->release_credit();
    delete p;
  }
}

Fabric::Fabric() : Fabric(FabricOptions{}) {}

Fabric::Fabric(FabricOptions o) : impl_(std::make_unique<Impl>()) {
  impl_->id = (uint64_t(std::random_device{}()) << 32) | std::random_device{}();
  // Clamp to what the wire can honour (documented in FabricOptions).
  o.max_message_bytes = std::clamp<uint32_t>(o.max_message_bytes, 1, 1u << 31);
  o.max_inbound_connections = std::max<uint32_t>(o.max_inbound_connections, 1);
  o.max_inflight_packets_per_connection = std::max<uint32_t>(o.max_inflight_packets_per_connection, 1);
  o.max_inflight_bytes_per_connection = std::max<uint64_t>(o.max_inflight_bytes_per_connection, o.max_message_bytes);
  o.max_send_queue_bytes = std::max<uint64_t>(o.max_send_queue_bytes, uint64_t(o.max_message_bytes) + 4096);
  impl_->opts = o;
}

const FabricOptions& Fabric::options() const { return impl_->opts; }
Fabric::~Fabric() { tcp_shutdown(impl_.get()); }

Result<std::unique_ptr<Nic>> Fabric::create_nic(NicOptions options) {
  if (options.max_qp == 0 || options.max_cq == 0 || options.max_mr < 2)
    return invalid_argument("NicOptions: max_qp, max_cq must be > 0 and max_mr >= 2");
  // The QP table is allocated here: at most as many QPs as 24-bit QP numbers.
  if (options.max_qp > (1u << 24)) return invalid_argument("NicOptions: max_qp must be at most 2^24 (24-bit QP numbers)");
  if (options.max_outstanding == 0 || options.max_outstanding > 4096)
    return invalid_argument("NicOptions: max_outstanding must be in [1, 4096]");
  if (options.first_psn > kPsnMask) return invalid_argument("NicOptions: first_psn must fit in 24 bits");
  auto impl = std::make_unique<Nic::Impl>();
  impl->fabric = impl_.get();
  impl->opts = options;
  impl->uid = next_uid();
  impl->name = options.name.empty() ? "soft" + std::to_string(impl->uid & 0xffffffff) : options.name;
  auto& c = impl->caps;
  c.name = impl->name;
  c.backend = "soft";
  c.cross_channel = true;
  c.managed_queues = true;
  c.raw_send_ring = true;
  c.patchable_send_wqes = true;
  c.send_wqe_format = rnic::SendWqeFormat::kMlx5;
  c.raw_recv_ring = true;
  c.raw_cq_ring = true;
  c.atomics = true;
  c.persistent_memory = true;  // MRs inside a PersistentMemory (hyperloop/pmem.h)
  c.completion_channel = true;
  c.cq_ignore_overrun = true;
  c.nop = true;
  c.error_cqe_opcode = true;  // the engine names the failed WQE's opcode
  c.max_sge = mlx5::kMaxSge;
  c.max_inline_data = mlx5::kMaxInlineBytes;
  c.max_send_wqebbs = 32768;  // half the 16-bit counter space: full and empty stay distinct
  c.max_recv_wqes = 32768;
  c.max_cqe = 1u << 22;
  c.max_mr_size = 1ull << 40;
  c.max_msg_size = impl_->opts.max_message_bytes;  // what the wire accepts
  c.max_rd_atomic = options.max_outstanding;
  impl->qp_lookup.reset(new std::atomic<SoftQp*>[options.max_qp]());
  impl->port = std::make_shared<Port>();
  impl->port->uid = impl->uid;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->ports[impl->uid] = impl->port;
  }
  return std::unique_ptr<Nic>(new Nic(std::move(impl)));
}

Fabric& default_fabric() {
  static Fabric fabric;
  return fabric;
}

}  // namespace hyperloop::soft
