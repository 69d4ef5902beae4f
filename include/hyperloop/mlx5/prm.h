// hyperloop/mlx5/prm.h: the mlx5 work-queue and completion formats.
//
// The byte layouts and constants of ConnectX (mlx5) send WQEs, receive WQEs,
// 64-byte CQEs and doorbell records, as documented in
// shared/research/mlx5-prm-facts.md. Every multi-byte field is big-endian in
// memory. These structs are the contract between software that builds or
// patches WQEs (primitives/, remote peers) and the device that executes them
// (rnic/soft, real ConnectX through rnic/mlx5): one definition serves both.
//
// Where rdma-core's <infiniband/mlx5dv.h> defines the same struct or constant,
// tests/mlx5_layout_check.cc proves at compile time that ours are identical.
// The cross-channel pieces (WAIT, SEND_EN, RECV_EN) are not in rdma-core; they
// follow the fact sheet (MLNX libmlx5, DPDK).
//
// Thread-safety: pure functions and POD types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace hyperloop::mlx5 {

// ---- byte order -----------------------------------------------------------
inline constexpr uint16_t bswap16(uint16_t v) { return __builtin_bswap16(v); }
inline constexpr uint32_t bswap32(uint32_t v) { return __builtin_bswap32(v); }
inline constexpr uint64_t bswap64(uint64_t v) { return __builtin_bswap64(v); }
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "hyperloop assumes a little-endian host");
inline constexpr uint16_t to_be16(uint16_t v) { return bswap16(v); }
inline constexpr uint32_t to_be32(uint32_t v) { return bswap32(v); }
inline constexpr uint64_t to_be64(uint64_t v) { return bswap64(v); }
inline constexpr uint16_t from_be16(uint16_t v) { return bswap16(v); }
inline constexpr uint32_t from_be32(uint32_t v) { return bswap32(v); }
inline constexpr uint64_t from_be64(uint64_t v) { return bswap64(v); }

// ---- units ----------------------------------------------------------------
inline constexpr uint32_t kSendWqeBB = 64;        // one WQE basic block
inline constexpr uint32_t kSendWqeShift = 6;
inline constexpr uint32_t kDsBytes = 16;          // WQE size unit ("octoword")
inline constexpr uint32_t kDsPerBB = kSendWqeBB / kDsBytes;
inline constexpr uint32_t kMaxWqeBBs = 16;        // a WQE spans at most 1 KiB
inline constexpr uint32_t kMaxWqeDs = 63;  // the ctrl ds field has 6 bits
inline constexpr uint32_t kCqeBytes = 64;
inline constexpr uint32_t kWqeIndexMask = 0xffff;   // 16-bit WQE counters
inline constexpr uint32_t kCqIndexMask = 0xffffff;  // 24-bit CQ indices
inline constexpr uint32_t kQpnMask = 0xffffff;

// ---- send opcodes (ctrl byte 3) -------------------------------------------
enum Opcode : uint8_t {
  kOpNop = 0x00,
  kOpSendInval = 0x01,
  kOpRdmaWrite = 0x08,
  kOpRdmaWriteImm = 0x09,
  kOpSend = 0x0a,
  kOpSendImm = 0x0b,
  kOpWait = 0x0f,         // cross-channel: block this SQ until a CQ index
  kOpRdmaRead = 0x10,
  kOpAtomicCs = 0x11,
  kOpAtomicFa = 0x12,
  kOpRecvEnable = 0x16,   // cross-channel: release a managed receive queue
  kOpSendEnable = 0x17,   // cross-channel: release a managed send queue
};

// WAIT opcode modifiers (ctrl byte 0). Only WAIT_CQ_PI is modelled.
enum WaitOpmod : uint8_t { kWaitCqPi = 0, kWaitData = 1, kWaitTime = 2 };

// ---- ctrl fm_ce_se byte (ctrl byte 11) --------------------------------------
enum CtrlFlags : uint8_t {
  kCtrlSolicited = 1u << 1,
  kCtrlCeOnlyError = 0u << 2,
  kCtrlCqUpdate = 2u << 2,             // completion always (signaled)
  kCtrlCeMask = 3u << 2,
  kCtrlFenceInitiatorSmall = 1u << 5,  // FM = 1
  kCtrlFenceFence = 2u << 5,           // FM = 2
  kCtrlFenceStrongOrdering = 3u << 5,  // FM = 3
  kCtrlFence = 4u << 5,                // FM = 4, SMALL_AND_FENCE (rdma-core's FENCE)
  kCtrlFmMask = 7u << 5,
};

// ---- CQE opcodes (op_own bits 7:4) and error syndromes ----------------------
enum CqeOpcode : uint8_t {
  kCqeReq = 0,
  kCqeRespWrImm = 1,
  kCqeRespSend = 2,
  kCqeRespSendImm = 3,
  kCqeRespSendInv = 4,
  kCqeResizeCq = 5,
  kCqeNoPacket = 6,
  kCqeSigErr = 12,
  kCqeReqErr = 13,
  kCqeRespErr = 14,
  kCqeInvalid = 15,
};

enum CqeSyndrome : uint8_t {
  kSyndromeLocalLength = 0x01,
  kSyndromeLocalQpOp = 0x02,
  kSyndromeLocalProt = 0x04,
  kSyndromeWrFlush = 0x05,
  kSyndromeMwBind = 0x06,
  kSyndromeBadResp = 0x10,
  kSyndromeLocalAccess = 0x11,
  kSyndromeRemoteInvalReq = 0x12,
  kSyndromeRemoteAccess = 0x13,
  kSyndromeRemoteOp = 0x14,
  kSyndromeTransportRetryExc = 0x15,
  kSyndromeRnrRetryExc = 0x16,
  kSyndromeRemoteAborted = 0x22,
};

inline constexpr uint8_t kCqeOwnerMask = 1;
inline constexpr uint32_t kInvalidLkey = 0x100;      // receive-WQE list terminator
inline constexpr uint32_t kInlineSeg = 0x80000000u;  // inline byte_count flag
inline constexpr uint32_t kInlineByteCountMask = 0x3ff;

// Doorbell records: QP = { RQ counter, SQ counter }; CQ = { consumer index, arm }.
enum QpDbrIndex : int { kRcvDbr = 0, kSndDbr = 1 };
enum CqDbrIndex : int { kCqSetCi = 0, kCqArmDb = 1 };

// ---- segment layouts --------------------------------------------------------
// Fields hold big-endian values, as in rdma-core.
struct __attribute__((packed, aligned(4))) CtrlSeg {
  uint32_t opmod_idx_opcode;  // opmod:8 | wqe_index:16 | opcode:8
  uint32_t qpn_ds;            // qpn:24 | ds:8 (low 6 bits used)
  uint8_t signature;
  uint16_t dci_stream_channel_id;
  uint8_t fm_ce_se;
  uint32_t imm;               // passed as-is (already network order)
};

struct RaddrSeg {
  uint64_t raddr;
  uint32_t rkey;
  uint32_t reserved;
};

struct DataSeg {
  uint32_t byte_count;
  uint32_t lkey;
  uint64_t addr;
};

struct AtomicSeg {
  uint64_t swap_add;
  uint64_t compare;
};

// WAIT / SEND_EN / RECV_EN segment (a.k.a. mlx5_wqe_wait_en_seg, mlx5_wqe_qseg).
struct WaitEnSeg {
  uint32_t reserved0;
  uint32_t reserved1;
  uint32_t max_index;  // WAIT: CQ index to wait for; *_EN: new producer limit
  uint32_t qpn_cqn;    // WAIT: CQ number; *_EN: target QP number
};

struct Cqe64 {
  uint8_t rsvd0[2];
  uint16_t wqe_id;
  uint8_t rsvd4[13];
  uint8_t ml_path;
  uint8_t rsvd20[4];
  uint16_t slid;
  uint32_t flags_rqpn;
  uint8_t hds_ip_ext;
  uint8_t l4_hdr_type_etc;
  uint16_t vlan_info;
  uint32_t srqn_uidx;
  uint32_t imm_inval_pkey;
  uint8_t app;
  uint8_t app_op;
  uint16_t app_info;
  uint32_t byte_cnt;
  uint64_t timestamp;
  uint32_t sop_drop_qpn;  // requester: opcode:8 | qpn:24
  uint16_t wqe_counter;
  uint8_t signature;
  uint8_t op_own;  // opcode:4 | format:2 | se:1 | owner:1
};

// Error CQE overlay: same 64 bytes, syndromes at 54/55.
struct ErrCqe {
  uint8_t rsvd0[32];
  uint32_t srqn;
  uint8_t rsvd1[18];
  uint8_t vendor_err_synd;
  uint8_t syndrome;
  uint32_t s_wqe_opcode_qpn;
  uint16_t wqe_counter;
  uint8_t signature;
  uint8_t op_own;
};

static_assert(sizeof(CtrlSeg) == 16 && sizeof(RaddrSeg) == 16 && sizeof(DataSeg) == 16);
static_assert(sizeof(AtomicSeg) == 16 && sizeof(WaitEnSeg) == 16);
static_assert(sizeof(Cqe64) == 64 && sizeof(ErrCqe) == 64);

// ---- field codecs -------------------------------------------------------------
struct CtrlFields {
  uint8_t opmod = 0;
  uint16_t wqe_index = 0;
  uint8_t opcode = kOpNop;
  uint32_t qpn = 0;       // 24 bits
  uint8_t ds = 0;         // 6 bits: WQE size in 16-byte units
  uint8_t fm_ce_se = 0;
  uint32_t imm = 0;       // raw (network order), as rdma-core passes it
};

inline CtrlSeg encode_ctrl(const CtrlFields& f) {
  CtrlSeg s{};
  s.opmod_idx_opcode = to_be32((uint32_t(f.opmod) << 24) | (uint32_t(f.wqe_index) << 8) | f.opcode);
  s.qpn_ds = to_be32(((f.qpn & kQpnMask) << 8) | (f.ds & 0x3f));
  s.fm_ce_se = f.fm_ce_se;
  s.imm = f.imm;
  return s;
}

inline CtrlFields decode_ctrl(const CtrlSeg& s) {
  CtrlFields f;
  const uint32_t w0 = from_be32(s.opmod_idx_opcode);
  const uint32_t w1 = from_be32(s.qpn_ds);
  f.opmod = uint8_t(w0 >> 24);
  f.wqe_index = uint16_t(w0 >> 8);
  f.opcode = uint8_t(w0);
  f.qpn = w1 >> 8;
  f.ds = uint8_t(w1 & 0x3f);
  f.fm_ce_se = s.fm_ce_se;
  f.imm = s.imm;
  return f;
}

inline RaddrSeg encode_raddr(uint64_t raddr, uint32_t rkey) {
  return RaddrSeg{to_be64(raddr), to_be32(rkey), 0};
}
inline DataSeg encode_data(uint64_t addr, uint32_t length, uint32_t lkey) {
  return DataSeg{to_be32(length), to_be32(lkey), to_be64(addr)};
}
inline AtomicSeg encode_atomic(uint64_t swap_add, uint64_t compare) {
  return AtomicSeg{to_be64(swap_add), to_be64(compare)};
}
inline WaitEnSeg encode_wait_en(uint32_t max_index, uint32_t qpn_cqn) {
  return WaitEnSeg{0, 0, to_be32(max_index), to_be32(qpn_cqn)};
}

// Byte offsets of patchable fields, for RECV scatter lists and remote WRITEs
// that rewrite a pre-posted WQE (the HyperLoop trick). Offsets are from the
// start of the WQE; segments are laid out ctrl, raddr, then atomic or data.
inline constexpr uint32_t kCtrlImmOffset = 12;
inline constexpr uint32_t kRaddrOffset = 16;            // RaddrSeg.raddr (BE64)
inline constexpr uint32_t kRkeyOffset = 24;             // RaddrSeg.rkey (BE32)
inline constexpr uint32_t kSecondSegOffset = 32;        // first seg after raddr
inline constexpr uint32_t kDataByteCountOffset = 0;     // within a DataSeg
inline constexpr uint32_t kDataLkeyOffset = 4;
inline constexpr uint32_t kDataAddrOffset = 8;
inline constexpr uint32_t kWaitEnIndexOffset = 16 + 8;  // WaitEnSeg.max_index in a ctrl+seg WQE

}  // namespace hyperloop::mlx5
