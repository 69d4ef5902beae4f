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
// patched, in the order of the scatter list of the slot's RECV (offload mode):
//
//   off  len  lands in (offload)          meaning
//   0    1    local WQE byte 3            opcode: NOP, RDMA_WRITE (memcpy), ATOMIC_CS, RDMA_READ (flush)
//   1    1    local WQE byte 7            ds: 4 for NOP/CAS, 3 for WRITE/READ
//   2    32   local WQE bytes 16..47      raddr segment, then data or atomic segment
//   34   1    forward WQE byte 3          opcode: RDMA_WRITE (gWRITE) or NOP
//   35   32   forward WQE bytes 16..47    raddr segment, then data segment
//
// The CPU forwarder reads the same bytes and rebuilds the same WQEs through
// the mlx5 codec (apply_entry + decode), so both modes execute identical work.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "hyperloop/mlx5/wqe.h"

namespace hyperloop::prim::internal {

inline constexpr uint32_t kEntryBytes = 67;
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

// Entry builders (client side).
inline void entry_clear(std::byte* e) {
  std::memset(e, 0, kEntryBytes);
  e[kEntryLocalOpcode] = std::byte{mlx5::kOpNop};
  e[kEntryLocalDs] = std::byte{4};
  e[kEntryFwdOpcode] = std::byte{mlx5::kOpNop};
}
// Local RDMA WRITE over the loopback QP: copies len bytes laddr -> raddr.
inline void entry_local_write(std::byte* e, uint64_t laddr, uint32_t lkey, uint64_t raddr, uint32_t rkey,
                              uint32_t len) {
  e[kEntryLocalOpcode] = std::byte{mlx5::kOpRdmaWrite};
  e[kEntryLocalDs] = std::byte{3};
  put_raddr(e + kEntryLocalSegs, raddr, rkey);
  put_data(e + kEntryLocalSegs + 16, laddr, len, lkey);
}
// Local RDMA READ (the flush): len bytes raddr -> laddr, served by this NIC.
inline void entry_local_read(std::byte* e, uint64_t laddr, uint32_t lkey, uint64_t raddr, uint32_t rkey,
                             uint32_t len) {
  entry_local_write(e, laddr, lkey, raddr, rkey, len);
  e[kEntryLocalOpcode] = std::byte{mlx5::kOpRdmaRead};
}
inline void entry_local_cas(std::byte* e, uint64_t raddr, uint32_t rkey, uint64_t compare, uint64_t swap) {
  e[kEntryLocalOpcode] = std::byte{mlx5::kOpAtomicCs};
  e[kEntryLocalDs] = std::byte{4};
  put_raddr(e + kEntryLocalSegs, raddr, rkey);
  put_atomic(e + kEntryLocalSegs + 16, swap, compare);
}
inline void entry_forward_write(std::byte* e, uint64_t laddr, uint32_t lkey, uint64_t raddr, uint32_t rkey,
                                uint32_t len) {
  e[kEntryFwdOpcode] = std::byte{mlx5::kOpRdmaWrite};
  put_raddr(e + kEntryFwdSegs, raddr, rkey);
  put_data(e + kEntryFwdSegs + 16, laddr, len, lkey);
}

// Applies an entry to WQE images exactly as the offload RECV scatter does.
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
