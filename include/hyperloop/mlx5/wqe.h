// hyperloop/mlx5/wqe.h: whole-WQE and CQE encoding and decoding over rings.
//
// One codec, used by everything that reads or writes mlx5 queue memory: the
// structured post path of every ring-based backend, the software RNIC's
// executor, and primitives/ when it pre-posts WQEs for remote patching.
//
// Rings: a send queue is an array of 64-byte basic blocks (WQEBBs), its size a
// power of two; a WQE starts at any WQEBB and continues at slot 0 when it runs
// past the end. A receive queue is an array of fixed-stride receive WQEs (lists
// of data segments ended by kInvalidLkey). A CQ is an array of 64-byte CQEs
// whose owner bit flips on every lap.
//
// Thread-safety: the codec functions are pure over the memory they are given;
// write_cqe/read_cqe publish and observe op_own with release/acquire so a
// device thread and a polling thread may share a CQ ring.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "hyperloop/mlx5/prm.h"

namespace hyperloop::mlx5 {

inline constexpr uint32_t kMaxSge = 16;          // per WQE, send or receive
inline constexpr uint32_t kMaxInlineBytes = 512;
inline constexpr uint64_t kZeroByteCountLength = 1ull << 31;  // byte_count 0 means 2 GiB

struct Sge {
  uint64_t addr = 0;
  uint32_t length = 0;
  uint32_t lkey = 0;
};

// A send queue ring. wqebb_count must be a power of two.
struct SendRingView {
  std::byte* base = nullptr;
  uint32_t wqebb_count = 0;

  // Address of 16-byte unit `ds_index` of the WQE that starts at WQEBB `bb`
  // (a free-running counter; wraps with the ring).
  std::byte* ds(uint32_t bb, uint32_t ds_index) const {
    const uint32_t slot = (bb + ds_index / kDsPerBB) & (wqebb_count - 1);
    return base + size_t(slot) * kSendWqeBB + (ds_index % kDsPerBB) * kDsBytes;
  }
  std::byte* bb(uint32_t index) const { return base + size_t(index & (wqebb_count - 1)) * kSendWqeBB; }
  size_t bytes() const { return size_t(wqebb_count) * kSendWqeBB; }
};

// A receive queue ring: wqe_count entries of `stride` bytes (both powers of two).
struct RecvRingView {
  std::byte* base = nullptr;
  uint32_t wqe_count = 0;
  uint32_t stride = 0;
  std::byte* wqe(uint32_t index) const { return base + size_t(index & (wqe_count - 1)) * stride; }
  uint32_t max_sge() const { return stride / kDsBytes; }
  size_t bytes() const { return size_t(wqe_count) * stride; }
};

// A send WQE in structured form. Which parts are present follows the opcode:
//   NOP                      ctrl (a decoded NOP may carry any ds: padding)
//   RDMA_WRITE(_IMM), READ   ctrl, raddr, data segments (WRITE: or inline)
//   SEND(_IMM)               ctrl, data segments or inline
//   ATOMIC_CS / ATOMIC_FA    ctrl, raddr, atomic, one 8-byte data segment
//   WAIT, SEND_EN, RECV_EN   ctrl, wait/enable segment
// ctrl.ds is computed by the encoder and checked by the decoder.
struct SendWqe {
  CtrlFields ctrl;
  uint64_t raddr = 0;
  uint32_t rkey = 0;
  uint64_t swap_add = 0;
  uint64_t compare = 0;
  uint32_t max_index = 0;  // WAIT / SEND_EN / RECV_EN
  uint32_t qpn_cqn = 0;
  uint32_t num_sge = 0;
  Sge sge[kMaxSge];
  // Inline payload. Encoding: `inline_data` points at the bytes. Decoding:
  // `inline_len` is set and the bytes are fetched with copy_inline().
  bool is_inline = false;
  uint32_t inline_len = 0;
  const std::byte* inline_data = nullptr;
};

// Why a WQE could not be decoded; the device turns any of these into a
// LOCAL_QP_OP error completion (malformed WQE), never a crash.
enum class WqeError : uint8_t {
  kOk = 0,
  kBadOpcode,
  kBadDs,         // ds zero, larger than the ring, or wrong for the opcode
  kTooManySge,
  kBadInline,     // inline length does not match ds, or exceeds the limit
  kBadAtomic,     // atomic data segment not 8 bytes
  kWrongQpn,      // ctrl QPN is not the executing queue's
  kWrongIndex,    // ctrl wqe_index is not the queue's consumer index
};
std::string_view wqe_error_name(WqeError e);

// Number of 16-byte units (ds) the WQE occupies, or 0 if it cannot be encoded.
uint32_t send_wqe_ds(const SendWqe& wqe);
inline uint32_t ds_to_wqebbs(uint32_t ds) { return (ds + kDsPerBB - 1) / kDsPerBB; }

// Encodes `wqe` at WQEBB counter `pi` (ctrl.wqe_index is set to pi & 0xffff,
// ctrl.ds computed). Unused bytes of the last WQEBB are zeroed. Returns the
// number of WQEBBs written, or 0 if the WQE is malformed (nothing written).
uint32_t encode_send_wqe(const SendRingView& ring, uint32_t pi, const SendWqe& wqe);

// Decodes and structurally validates the WQE at WQEBB counter `ci`. Checks
// opcode, ds, segment shapes; does not check keys or addresses (the device
// does, at execution). On success sets *wqebbs to the WQE's size.
WqeError decode_send_wqe(const SendRingView& ring, uint32_t ci, SendWqe* out, uint32_t* wqebbs);

// Copies the decoded inline payload of the WQE at `ci` into dst (wrap-aware).
void copy_inline(const SendRingView& ring, uint32_t ci, uint32_t len, std::byte* dst);

// Data-segment byte_count as a length: 0 encodes 2 GiB (hardware rule).
inline uint64_t data_seg_length(uint32_t byte_count) {
  return byte_count == 0 ? kZeroByteCountLength : byte_count;
}

// Receive WQEs. encode writes sges and a kInvalidLkey terminator when the list
// is shorter than the stride; returns false if sges exceed the stride.
bool encode_recv_wqe(const RecvRingView& ring, uint32_t index, std::span<const Sge> sges);
// Reads up to max_sge() segments, stopping at the terminator. Returns the count.
uint32_t decode_recv_wqe(const RecvRingView& ring, uint32_t index, Sge* out);

// ---- CQEs -------------------------------------------------------------------
struct CqeFields {
  uint8_t opcode = kCqeInvalid;  // CqeOpcode
  uint32_t qpn = 0;
  uint8_t send_opcode = 0;       // requester CQEs: opcode of the completed WQE
  uint16_t wqe_counter = 0;
  uint32_t byte_cnt = 0;
  uint32_t imm = 0;              // raw network-order immediate
  bool solicited = false;
  uint8_t syndrome = 0;          // error CQEs only
  uint8_t vendor_syndrome = 0;
};

// A CQ ring of cqe_count 64-byte CQEs (power of two).
struct CqRingView {
  std::byte* base = nullptr;
  uint32_t cqe_count = 0;
  std::byte* cqe(uint32_t index) const { return base + size_t(index & (cqe_count - 1)) * kCqeBytes; }
  size_t bytes() const { return size_t(cqe_count) * kCqeBytes; }
};

// Sets every CQE to INVALID, owner 0 (the state a fresh CQ starts in).
void init_cq_ring(const CqRingView& ring);
// Writes the CQE for producer index `pi` and publishes it (owner bit = lap parity).
void write_cqe(const CqRingView& ring, uint32_t pi, const CqeFields& f);
// If the CQE at consumer index `ci` belongs to software, decodes it and returns true.
bool read_cqe(const CqRingView& ring, uint32_t ci, CqeFields* out);

// Cyclic comparisons over counters of `bits` width (16 for WQEs, 24 for CQs).
inline bool cyclic_ge(uint32_t a, uint32_t b, unsigned bits) {
  const uint32_t shift = 32 - bits;
  return int32_t((a - b) << shift) >= 0;
}

}  // namespace hyperloop::mlx5
