// Private to primitives/: the operation message that travels down a chain.
//
// The client sends replica 0 one message per operation:
//
//   [entry 0][entry 1]...[entry n-1][result 0]...[result n-1]
//
// Each replica i consumes the first entry and forwards the rest (its "forward
// buffer") to replica i+1; the tail forwards just the results to the client.
// A gCAS's old value on replica i lands in result i of i's forward buffer.
//
// An entry holds exactly the bytes that replica i's pre-posted WQEs need
// patched, in the order of the scatter list of the slot's RECV (offload
// mode). Its layout is replica i's entry format (MemberInfo::entry_format):
// the layout of its device's send WQEs (rnic::SendWqeFormat). Every format's
// entry is kEntryBytes long, so the message's layout does not depend on which
// devices the chain has; a shorter one is padded (the padding lands in the
// slot buffer's unused head).
//
// kMlx5 (the software RNIC; ConnectX; and CPU forwarding, always):
//   off  len  lands in (offload)          meaning
//   0    1    local WQE byte 3            opcode: NOP, RDMA_WRITE (memcpy), ATOMIC_CS, RDMA_READ (flush)
//   1    1    local WQE byte 7            ds: 4 for NOP/CAS, 3 for WRITE/READ
//   2    32   local WQE bytes 16..47      raddr segment, then data or atomic segment
//   34   1    forward WQE byte 3          opcode: RDMA_WRITE (gWRITE) or NOP
//   35   32   forward WQE bytes 16..47    raddr segment, then data segment
//   67   17   padding
//
// kRxe (the patched rdma_rxe; struct rxe_send_wqe, host order,
// hyperloop/internal/rxe_wqe.h). rxe has no NOP: a zero-length RDMA WRITE
// (which needs no rkey, IBA C9-88) stands in for one.
//   0    40   local WQE bytes 12..51      opcode, send_flags (SIGNALED), imm, remote_addr, then
//                                         rkey (WRITE/READ) or compare, swap, rkey (CAS)
//   40   16   local WQE's sge[0]          addr, length, lkey (for a CAS: this replica's result)
//   56   12   forward WQE bytes 24..35    remote_addr, rkey
//   68   16   forward WQE's sge[0]        addr, length (0: nothing forwarded), lkey
//
// The CPU forwarder reads the kMlx5 bytes and rebuilds the same WQEs through
// the mlx5 codec (apply_entry + decode), so both modes execute identical work.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "hyperloop/internal/rxe_wqe.h"
#include "hyperloop/mlx5/wqe.h"
#include "hyperloop/rnic.h"

namespace hyperloop::prim::internal {

using EntryFormat = rnic::SendWqeFormat;  // kMlx5 or kRxe; never kNone in an entry
inline constexpr uint32_t kEntryBytes = 84;
inline constexpr uint32_t kEntryLocalOpcode = 0;
inline constexpr uint32_t kEntryLocalDs = 1;
inline constexpr uint32_t kEntryLocalSegs = 2;
inline constexpr uint32_t kEntryFwdOpcode = 34;
inline constexpr uint32_t kEntryFwdSegs = 35;
inline constexpr uint32_t kSegsBytes = 32;
inline constexpr uint32_t kWqeOpcodeByte = 3;
inline constexpr uint32_t kWqeDsByte = 7;
inline constexpr uint32_t kWqeSegsOffset = 16;

inline constexpr size_t message_bytes(uint32_t n, uint32_t i) { return size_t(n - i) * kEntryBytes + 8 * n; }
inline constexpr size_t forward_bytes(uint32_t n, uint32_t i) { return message_bytes(n, i) - kEntryBytes; }
// Where replica i's result sits in its forward buffer.
inline constexpr size_t result_offset(uint32_t n, uint32_t i) { return size_t(n - i - 1) * kEntryBytes + 8 * i; }
// Per-slot message buffer on a replica, 64-byte aligned. The forward buffer
// starts kEntryBytes into it, so offload and CPU modes share one layout.
inline constexpr size_t slot_stride(uint32_t n) { return (message_bytes(n, 0) + 63) & ~size_t{63}; }

// Segment images, big-endian as on the wire and in the ring.
inline void put_raddr(std::byte* p, uint64_t raddr, uint32_t rkey) {
  const auto s = mlx5::encode_raddr(raddr, rkey);
  std::memcpy(p, &s, 16);
}
inline void put_data(std::byte* p, uint64_t addr, uint32_t len, uint32_t lkey) {
  const auto s = mlx5::encode_data(addr, len, lkey);
  std::memcpy(p, &s, 16);
}
inline void put_atomic(std::byte* p, uint64_t swap, uint64_t compare) {
  const auto s = mlx5::encode_atomic(swap, compare);
  std::memcpy(p, &s, 16);
}

// One piece of a slot RECV's scatter list: `len` entry bytes land at `off`
// in the local WQE, the forward WQE, or (padding) the slot buffer's head.
struct PatchPiece {
  enum Where : uint8_t { kLocal, kForward, kPad } where;
  uint16_t off;
  uint16_t len;
};
inline constexpr PatchPiece kMlx5Pieces[] = {
    {PatchPiece::kLocal, kWqeOpcodeByte, 1},   {PatchPiece::kLocal, kWqeDsByte, 1},
    {PatchPiece::kLocal, kWqeSegsOffset, kSegsBytes}, {PatchPiece::kForward, kWqeOpcodeByte, 1},
    {PatchPiece::kForward, kWqeSegsOffset, kSegsBytes}, {PatchPiece::kPad, 67, kEntryBytes - 67},
};
inline constexpr uint32_t kRxeLocalSge = 40, kRxeFwd = 56, kRxeFwdSge = 68;
inline constexpr PatchPiece kRxePieces[] = {
    {PatchPiece::kLocal, rxe_wqe::kOpcode, kRxeLocalSge},
    {PatchPiece::kLocal, rxe_wqe::kSge0, 16},
    {PatchPiece::kForward, rxe_wqe::kRemoteAddr, 12},
    {PatchPiece::kForward, rxe_wqe::kSge0, 16},
};
template <size_t N>
constexpr uint32_t pieces_bytes(const PatchPiece (&p)[N]) {
  uint32_t sum = 0;
  for (const auto& x : p) sum += x.len;
  return sum;
}
static_assert(pieces_bytes(kMlx5Pieces) == kEntryBytes && pieces_bytes(kRxePieces) == kEntryBytes);
static_assert(rxe_wqe::kOpcode + kRxeLocalSge == rxe_wqe::kAtomicRkey + 4, "the local piece ends after the atomic rkey");
// The pieces of `f`, in entry order; they cover [0, kEntryBytes) exactly.
inline std::span<const PatchPiece> patch_pieces(EntryFormat f) {
  if (f == EntryFormat::kRxe) return kRxePieces;
  return kMlx5Pieces;
}

namespace rxe_entry {
inline void put32(std::byte* p, uint32_t v) { std::memcpy(p, &v, 4); }  // host order, as rxe reads it
inline void put64(std::byte* p, uint64_t v) { std::memcpy(p, &v, 8); }
// Entry offsets of the fields of the local WQE's bytes 12..51.
inline constexpr size_t at(size_t wqe_off) { return wqe_off - rxe_wqe::kOpcode; }
inline void local(std::byte* e, uint32_t opcode, uint64_t raddr) {
  std::memset(e, 0, kRxeFwd);
  put32(e + at(rxe_wqe::kOpcode), opcode);
  put32(e + at(rxe_wqe::kSendFlags), rxe_wqe::kSendSignaled);
  put64(e + at(rxe_wqe::kRemoteAddr), raddr);
}
inline void sge(std::byte* p, uint64_t addr, uint32_t len, uint32_t lkey) {
  put64(p, addr);
  put32(p + 8, len);
  put32(p + 12, lkey);
}
}  // namespace rxe_entry

// Entry builders (client side). Each sets the local or the forward part of
// an entry; entry_clear makes both do nothing (a NOP and no forward).
inline void entry_clear(EntryFormat f, std::byte* e) {
  std::memset(e, 0, kEntryBytes);
  if (f == EntryFormat::kRxe) {
    rxe_entry::local(e, rxe_wqe::kWrRdmaWrite, 0);  // zero-length: sge[0] stays {0, 0, 0}
    return;
  }
  e[kEntryLocalOpcode] = std::byte{mlx5::kOpNop};
  e[kEntryLocalDs] = std::byte{4};
  e[kEntryFwdOpcode] = std::byte{mlx5::kOpNop};
}
// Local RDMA WRITE over the loopback QP: copies len bytes laddr -> raddr.
inline void entry_local_write(EntryFormat f, std::byte* e, uint64_t laddr, uint32_t lkey, uint64_t raddr,
                              uint32_t rkey, uint32_t len) {
  if (f == EntryFormat::kRxe) {
    rxe_entry::local(e, rxe_wqe::kWrRdmaWrite, raddr);
    rxe_entry::put32(e + rxe_entry::at(rxe_wqe::kRdmaRkey), rkey);
    rxe_entry::sge(e + kRxeLocalSge, laddr, len, lkey);
    return;
  }
  e[kEntryLocalOpcode] = std::byte{mlx5::kOpRdmaWrite};
  e[kEntryLocalDs] = std::byte{3};
  put_raddr(e + kEntryLocalSegs, raddr, rkey);
  put_data(e + kEntryLocalSegs + 16, laddr, len, lkey);
}
// Local RDMA READ (the flush): len bytes raddr -> laddr, served by this NIC.
inline void entry_local_read(EntryFormat f, std::byte* e, uint64_t laddr, uint32_t lkey, uint64_t raddr,
                             uint32_t rkey, uint32_t len) {
  entry_local_write(f, e, laddr, lkey, raddr, rkey, len);
  if (f == EntryFormat::kRxe)
    rxe_entry::put32(e + rxe_entry::at(rxe_wqe::kOpcode), rxe_wqe::kWrRdmaRead);
  else
    e[kEntryLocalOpcode] = std::byte{mlx5::kOpRdmaRead};
}
// Local CAS; its old value lands at result_addr (this replica's result in
// its forward buffer, slot_result_addr). kMlx5 keeps that in the WQE's
// unpatched 4th segment; kRxe's one SGE is patched, so the entry carries it.
inline void entry_local_cas(EntryFormat f, std::byte* e, uint64_t raddr, uint32_t rkey, uint64_t compare,
                            uint64_t swap, uint64_t result_addr, uint32_t result_lkey) {
  if (f == EntryFormat::kRxe) {
    rxe_entry::local(e, rxe_wqe::kWrAtomicCmpSwp, raddr);
    rxe_entry::put64(e + rxe_entry::at(rxe_wqe::kAtomicCompare), compare);
    rxe_entry::put64(e + rxe_entry::at(rxe_wqe::kAtomicSwap), swap);
    rxe_entry::put32(e + rxe_entry::at(rxe_wqe::kAtomicRkey), rkey);
    rxe_entry::sge(e + kRxeLocalSge, result_addr, 8, result_lkey);
    return;
  }
  e[kEntryLocalOpcode] = std::byte{mlx5::kOpAtomicCs};
  e[kEntryLocalDs] = std::byte{4};
  put_raddr(e + kEntryLocalSegs, raddr, rkey);
  put_atomic(e + kEntryLocalSegs + 16, swap, compare);
}
inline void entry_forward_write(EntryFormat f, std::byte* e, uint64_t laddr, uint32_t lkey, uint64_t raddr,
                                uint32_t rkey, uint32_t len) {
  if (f == EntryFormat::kRxe) {
    rxe_entry::put64(e + kRxeFwd, raddr);
    rxe_entry::put32(e + kRxeFwd + 8, rkey);
    rxe_entry::sge(e + kRxeFwdSge, laddr, len, lkey);
    return;
  }
  e[kEntryFwdOpcode] = std::byte{mlx5::kOpRdmaWrite};
  put_raddr(e + kEntryFwdSegs, raddr, rkey);
  put_data(e + kEntryFwdSegs + 16, laddr, len, lkey);
}

// Applies a kMlx5 entry to WQE images exactly as the offload RECV scatter
// does (the CPU forwarder's entries are always kMlx5).
inline void apply_local(const std::byte* e, std::byte* wqe) {
  wqe[kWqeOpcodeByte] = e[kEntryLocalOpcode];
  wqe[kWqeDsByte] = e[kEntryLocalDs];
  std::memcpy(wqe + kWqeSegsOffset, e + kEntryLocalSegs, kSegsBytes);
}
inline void apply_forward(const std::byte* e, std::byte* wqe) {
  wqe[kWqeOpcodeByte] = e[kEntryFwdOpcode];
  std::memcpy(wqe + kWqeSegsOffset, e + kEntryFwdSegs, kSegsBytes);
}

}  // namespace hyperloop::prim::internal
