// Private to rnic/: what the two rdma-core backends share (rnic/verbs and
// rnic/mlx5): errno to Status, the GID choice, the QP address blob and the
// local MAC of a RoCE GID. Compiled into hyperloop_rnic_verbs; rnic_mlx5
// links it.
#pragma once

#include <infiniband/verbs.h>

#include <array>
#include <memory>
#include <cstdint>
#include <string>

#include "hyperloop/rnic.h"
#include "hyperloop/status.h"

namespace hyperloop::verbs::util {

std::string errno_text(int e);
// Maps an errno (positive or negative) of an rdma-core call to a status
// code, with `what` and the errno text as the message.
Status from_errno(int e, const std::string& what);
// The largest power of two <= v (at most 2^31); 0 for 0.
uint32_t floor_pow2(uint64_t v);
// A random 24-bit PSN.
uint32_t random_psn();

// The GID a RoCE v2 QP should use: IPv4-mapped RoCE v2 first, then any RoCE
// v2, then entry 0 (InfiniBand, or RoCE v1 only).
int choose_gid(ibv_context* ctx, uint8_t port, int table_len);
// The MAC of the netdev behind GID `index` (RoCE). Errors: kNotFound (no
// netdev for that GID), kUnavailable (the interface query failed).
Result<std::array<uint8_t, 6>> gid_mac(ibv_context* ctx, uint8_t port, int index);

// ---- the QP address blob --------------------------------------------------------
// "HLV1" | qpn be32 | psn be32 | lid be16 | mtu u8 | link layer u8 | gid[16]
// [| mac[6]]: 32 bytes, or 38 with the MAC of the GID's netdev (RoCE; what
// rnic/mlx5 needs to address its peer, as DevX modifies take the
// destination MAC itself). Both backends read both sizes.
struct PeerAddr {
  uint32_t qpn = 0, psn = 0;
  uint16_t lid = 0;
  uint8_t mtu = 0, link_layer = 0;
  ibv_gid gid{};
  bool has_mac = false;
  std::array<uint8_t, 6> mac{};
};
rnic::QpAddress encode_addr(const PeerAddr& a);
// Every field from the peer is checked before use: false for anything that
// is not a well-formed address of either size.
bool decode_addr(const rnic::QpAddress& in, PeerAddr* a);

// A memory region registered with ibv_reg_mr (both backends register the
// same way); deregistered by the destructor.
class VerbsMr final : public rnic::MemoryRegion {
 public:
  VerbsMr(ibv_mr* mr, uint32_t access) : mr_(mr), access_(access) {}
  ~VerbsMr() override;
  VerbsMr(const VerbsMr&) = delete;
  VerbsMr& operator=(const VerbsMr&) = delete;
  std::byte* addr() const override { return static_cast<std::byte*>(mr_->addr); }
  size_t length() const override { return mr_->length; }
  uint32_t lkey() const override { return mr_->lkey; }
  uint32_t rkey() const override { return mr_->rkey; }
  uint32_t access() const override { return access_; }

 private:
  ibv_mr* mr_;
  uint32_t access_;
};
// Checks the request against `caps`, then ibv_reg_mr (rnic::Access values
// are IBV_ACCESS_*); errors name caps.name.
Result<std::unique_ptr<rnic::MemoryRegion>> register_memory(ibv_pd* pd, void* addr, size_t length, uint32_t access,
                                                            const rnic::DeviceCaps& caps);

}  // namespace hyperloop::verbs::util
