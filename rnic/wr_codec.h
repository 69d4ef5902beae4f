// Private to rnic/: the work-request codec every backend with mlx5 rings
// shares (rnic/soft now, rnic/mlx5 later): a structured SendWr becomes an
// mlx5 WQE (build_send_wqe) and a CQE becomes a WorkCompletion
// (to_work_completion), plus ring sizing helpers and page-aligned ring memory.
// The byte layouts themselves are wqe_codec.cc (hyperloop/mlx5/wqe.h).
#pragma once

#include <cstdint>
#include <vector>

#include "hyperloop/mlx5/wqe.h"
#include "hyperloop/rnic.h"

namespace hyperloop::rnic::internal {

struct RingLimits {
  uint32_t max_sge = mlx5::kMaxSge;
  uint32_t max_inline = mlx5::kMaxInlineBytes;
  bool cross_channel = false;  // the posting QP may issue WAIT / SEND_EN / RECV_EN
  bool atomics = true;
};

// Translates a structured send request into a WQE for QP `qpn`. Zero-length
// SGEs are dropped, as rdma-core does. The cross-channel fields need the CQN or
// QPN of the referenced objects, resolved by the caller-supplied numbers.
// Inline requests copy the SGEs' bytes (CPU reads, as rdma-core does) into
// `inline_scratch` (mlx5::kMaxInlineBytes), which must outlive the encode.
Status build_send_wqe(const SendWr& wr, uint32_t qpn, const RingLimits& limits,
                      uint32_t wait_cqn, uint32_t enable_qpn, std::byte* inline_scratch,
                      mlx5::SendWqe* out);

// Maps a CQE to a work completion (wr_id supplied by the caller's tables).
WorkCompletion to_work_completion(const mlx5::CqeFields& cqe, uint64_t wr_id);

inline bool is_requester_cqe(uint8_t cqe_opcode) {
  return cqe_opcode == mlx5::kCqeReq || cqe_opcode == mlx5::kCqeReqErr;
}

// Power-of-two helpers for ring sizing.
inline bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }
inline uint32_t round_up_pow2(uint32_t v) {
  uint32_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Page-aligned, zeroed memory for rings (so rings can be registered as MRs).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept;
  std::byte* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  std::byte* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace hyperloop::rnic::internal
