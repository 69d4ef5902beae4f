// hyperloop/internal/rxe_wqe.h: the parts of rdma_rxe's user ABI that a
// remote patch of a posted send WQE touches (Linux 6.1's
// include/uapi/rdma/rdma_user_rxe.h, host byte order). The send queue of an
// rxe QP is a ring mmapped from the kernel: a struct rxe_queue_buf header,
// then one struct rxe_send_wqe per slot. rnic/verbs checks every offset here
// against that header with offsetof at compile time.
//
// Only the patched module (driver-patches/linux-6.1-rxe-cross-channel)
// re-reads a WQE's address and length before its first packet; the stock
// one uses what librxe computed at post time.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hyperloop::rxe_wqe {

inline constexpr size_t kRingData = 384;  // sizeof(struct rxe_queue_buf)

// struct rxe_send_wqe (wr first: struct rxe_send_wr).
inline constexpr size_t kOpcode = 12;           // wr.opcode (u32, IB_WR_*)
inline constexpr size_t kSendFlags = 16;        // wr.send_flags (u32, IB_SEND_*)
inline constexpr size_t kImm = 20;              // wr.ex (u32)
inline constexpr size_t kRemoteAddr = 24;       // wr.wr.rdma.remote_addr = wr.wr.atomic.remote_addr (u64)
inline constexpr size_t kRdmaRkey = 32;         // wr.wr.rdma.rkey (u32)
inline constexpr size_t kAtomicCompare = 32;    // wr.wr.atomic.compare_add (u64)
inline constexpr size_t kAtomicSwap = 40;       // wr.wr.atomic.swap (u64)
inline constexpr size_t kAtomicRkey = 48;       // wr.wr.atomic.rkey (u32)
inline constexpr size_t kNumSge = 184 + 12;     // dma.num_sge (u32)
inline constexpr size_t kSge0 = 184 + 24;       // dma.sge[0]: addr (u64), length (u32), lkey (u32)
inline constexpr size_t kSge0Length = kSge0 + 8;
inline constexpr size_t kSge0Lkey = kSge0 + 12;

// Values of those fields (IB_WR_* and IB_SEND_*, equal to IBV_WR_* / IBV_SEND_*).
inline constexpr uint32_t kWrRdmaWrite = 0;
inline constexpr uint32_t kWrRdmaRead = 4;
inline constexpr uint32_t kWrAtomicCmpSwp = 5;
inline constexpr uint32_t kSendSignaled = 1u << 1;
inline constexpr uint32_t kSendInline = 1u << 3;

}  // namespace hyperloop::rxe_wqe
