// Private to rnic/mlx5: the one encoder of the PRM commands that the DevX
// backend sends to a ConnectX's firmware (mlx5dv_devx_obj_create,
// mlx5dv_devx_obj_modify, mlx5dv_devx_general_cmd), and the parsers of their
// outputs.
//
// A command is a big-endian bit string; the PRM (and rdma-core's
// mlx5_ifc.h, DPDK's mlx5_prm.h, the kernel's mlx5_ifc.h that encode it)
// numbers its bits from the most significant bit of byte 0: a field at bit
// offset `bit` of width `width` lives in dword bit/32 at bits
// [32 - bit%32 - width, 32 - bit%32) counted from the dword's LSB, exactly
// as MLX5_SET does. Every field this backend writes or reads is named below
// at its PRM offset, once; tests/mlx5_prm_test.cc checks each one against
// the offsets of rdma-core 44's mlx5_ifc.h / mlx5_prm_structs.py and DPDK's
// mlx5_prm.h, written there as facts with their source.
//
// This file depends on nothing from rdma-core: the encoder builds and is
// tested on machines without libmlx5.
//
// Thread-safety: pure functions over caller-owned buffers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "hyperloop/mlx5_rnic.h"
#include "hyperloop/status.h"

namespace hyperloop::mlx5::prm {

// A field of a PRM layout: bit offset from the start of the command (MSB
// first) and width in bits.
struct Field {
  uint32_t bit;
  uint32_t width;
};

// Writes the low `f.width` bits of v (width 1..64) into `buf` at `f`.
// REQUIRES: the field lies inside buf.
void set(std::span<std::byte> buf, Field f, uint64_t v);
// Reads a field of width 1..64. REQUIRES: the field lies inside buf.
uint64_t get(std::span<const std::byte> buf, Field f);
// A byte-aligned field of whole bytes (a GID): copied as is.
void set_bytes(std::span<std::byte> buf, Field f, std::span<const uint8_t> bytes);

// ---- opcodes (mlx5_ifc.h MLX5_CMD_OP_*) ---------------------------------------
inline constexpr uint16_t kOpQueryHcaCap = 0x100;
inline constexpr uint16_t kOpCreateCq = 0x400;
inline constexpr uint16_t kOpCreateQp = 0x500;
inline constexpr uint16_t kOpRst2InitQp = 0x502;
inline constexpr uint16_t kOpInit2RtrQp = 0x503;
inline constexpr uint16_t kOpRtr2RtsQp = 0x504;
inline constexpr uint16_t kOp2ErrQp = 0x507;
inline constexpr uint16_t kOp2RstQp = 0x50a;
inline constexpr uint16_t kOpQueryQp = 0x50b;

// QUERY_HCA_CAP op_mod = (capability type << 1) | current-values bit.
inline constexpr uint16_t kCapGeneral = 0x0;
inline constexpr uint16_t kCapAtomic = 0x3;
inline constexpr uint16_t kCapCurrent = 0x1;

// ---- sizes in bytes --------------------------------------------------------------
inline constexpr size_t kCmdOutBytes = 0x10;          // create/modify outputs
inline constexpr size_t kQueryHcaCapInBytes = 0x10;
inline constexpr size_t kHcaCapBytes = 0x1000;        // the capability union
inline constexpr size_t kQueryHcaCapOutBytes = 0x10 + kHcaCapBytes;
inline constexpr size_t kCreateCqInBytes = 0x110;     // without pas[]
inline constexpr size_t kCreateQpInBytes = 0x110;     // without pas[]
inline constexpr size_t kModifyQpInBytes = 0x110;     // RST2INIT, INIT2RTR, RTR2RTS
inline constexpr size_t kQpStateInBytes = 0x10;       // 2ERR, 2RST, QUERY_QP
inline constexpr size_t kQueryQpOutBytes = 0x110;     // without pas[]

// ---- field offsets ---------------------------------------------------------------
// Every command's input header and output header.
namespace cmd {
inline constexpr Field kOpcode{0x00, 16};
inline constexpr Field kOpMod{0x30, 16};
inline constexpr Field kOutStatus{0x00, 8};
inline constexpr Field kOutSyndrome{0x20, 32};
inline constexpr Field kOutObjId{0x48, 24};  // create_cq_out.cqn, create_qp_out.qpn
}  // namespace cmd

// CREATE_CQ input; the CQ context (cqc) starts at bit 0x80.
namespace create_cq {
inline constexpr uint32_t kCqc = 0x80;
inline constexpr Field kDbrUmemValid{kCqc + 0x06, 1};
inline constexpr Field kCqeSz{kCqc + 0x08, 3};     // 0: 64-byte CQEs
inline constexpr Field kOi{kCqc + 0x0e, 1};        // ignore overrun
inline constexpr Field kDbrUmemId{kCqc + 0x20, 32};
inline constexpr Field kLogCqSize{kCqc + 0x63, 5};
inline constexpr Field kUarPage{kCqc + 0x68, 24};
inline constexpr Field kCEqn{kCqc + 0xb8, 8};
inline constexpr Field kLogPageSize{kCqc + 0xc3, 5};  // log2(page) - 12
inline constexpr Field kCqUmemOffset{0x280, 64};
inline constexpr Field kCqUmemId{0x2c0, 32};
inline constexpr Field kCqUmemValid{0x2e0, 1};
}  // namespace create_cq

// The QP context, relative to its start (bit 0xc0 of CREATE_QP and of the
// modify commands), and its primary address path (ads) at qpc bit 0xc0.
namespace qpc {
inline constexpr Field kState{0x00, 4};          // QUERY_QP: mlx5_qp_state (below)
inline constexpr Field kSt{0x08, 8};             // 0: RC
inline constexpr Field kPmState{0x13, 2};        // 3: migrated
inline constexpr Field kPd{0x28, 24};
inline constexpr Field kMtu{0x40, 3};            // IB encoding: 1 256 .. 5 4096
inline constexpr Field kLogMsgMax{0x43, 5};
inline constexpr Field kLogRqSize{0x49, 4};
inline constexpr Field kLogRqStride{0x4d, 3};    // receive WQE = 16 << stride bytes
inline constexpr Field kNoSq{0x50, 1};
inline constexpr Field kLogSqSize{0x51, 4};      // in WQEBBs
inline constexpr Field kTsFormat{0x58, 2};
inline constexpr Field kUarPage{0x68, 24};
inline constexpr Field kLogPageSize{0xa3, 5};
inline constexpr Field kRemoteQpn{0xa8, 24};
inline constexpr uint32_t kAds = 0xc0;
inline constexpr Field kAdsGrh{kAds + 0x28, 1};
inline constexpr Field kAdsRlid{kAds + 0x30, 16};
inline constexpr Field kAdsAckTimeout{kAds + 0x40, 5};
inline constexpr Field kAdsSrcAddrIndex{kAds + 0x48, 8};
inline constexpr Field kAdsHopLimit{kAds + 0x58, 8};
inline constexpr Field kAdsRgid{kAds + 0x80, 128};
inline constexpr Field kAdsUdpSport{kAds + 0x110, 16};
inline constexpr Field kAdsVhcaPortNum{kAds + 0x128, 8};
inline constexpr Field kAdsRmac47_32{kAds + 0x130, 16};
inline constexpr Field kAdsRmac31_0{kAds + 0x140, 32};
inline constexpr Field kLogSraMax{0x388, 3};     // outstanding READs/atomics as requester
inline constexpr Field kRetryCount{0x38d, 3};
inline constexpr Field kRnrRetry{0x390, 3};
inline constexpr Field kNextSendPsn{0x3c8, 24};
inline constexpr Field kCqnSnd{0x3e8, 24};
inline constexpr Field kLogRraMax{0x488, 3};     // as responder
inline constexpr Field kAtomicMode{0x48c, 4};
inline constexpr Field kRre{0x490, 1};
inline constexpr Field kRwe{0x491, 1};
inline constexpr Field kRae{0x492, 1};
inline constexpr Field kCdSlaveReceive{0x49d, 1};
inline constexpr Field kCdSlaveSend{0x49e, 1};
inline constexpr Field kCdMaster{0x49f, 1};
inline constexpr Field kMinRnrNak{0x4a3, 5};
inline constexpr Field kNextRcvPsn{0x4a8, 24};
inline constexpr Field kCqnRcv{0x4e8, 24};
inline constexpr Field kDbrUmemValid{0x683, 1};
inline constexpr Field kDbrUmemId{0x720, 32};
}  // namespace qpc

// qpc.state values (the kernel's enum mlx5_qp_state).
enum QpcState : uint8_t {
  kQpcRst = 0, kQpcInit = 1, kQpcRtr = 2, kQpcRts = 3, kQpcSqer = 4, kQpcSqd = 5, kQpcErr = 6,
  kQpcSqDraining = 7, kQpcSuspended = 9,
};
// The qpc.atomic_mode of a responder QP that allows 8-byte IB atomics
// (MLX5_ATOMIC_MODE_IB_COMP).
inline constexpr uint8_t kAtomicModeIbComp = 1;

// CREATE_QP input around the qpc.
namespace create_qp {
inline constexpr Field kOptParamMask{0x80, 32};
inline constexpr uint32_t kQpc = 0xc0;
inline constexpr Field kWqUmemId{0x840, 32};
inline constexpr Field kWqUmemValid{0x860, 1};
}  // namespace create_qp

// RST2INIT / INIT2RTR / RTR2RTS / 2ERR / 2RST inputs.
namespace modify_qp {
inline constexpr Field kQpn{0x48, 24};
inline constexpr Field kOptParamMask{0x80, 32};
inline constexpr uint32_t kQpc = 0xc0;
}  // namespace modify_qp

// QUERY_QP output: the qpc at bit 0xc0, as in the modify inputs.
namespace query_qp {
inline constexpr uint32_t kQpc = 0xc0;
}  // namespace query_qp

// The general device capabilities (cmd_hca_cap), relative to the capability
// union (bit 0x80 of QUERY_HCA_CAP's output).
namespace hca_cap {
inline constexpr uint32_t kCapability = 0x80;  // in query_hca_cap_out
inline constexpr Field kLogMaxQpSz{0x88, 8};
inline constexpr Field kLogMaxCqSz{0xc8, 8};
inline constexpr Field kLogMaxRaReqQp{0x14a, 6};
inline constexpr Field kLogMaxRaResQp{0x15a, 6};
inline constexpr Field kPortType{0x1b6, 2};
inline constexpr Field kLogMaxMsg{0x1c3, 5};
inline constexpr Field kCqeVersion{0x1fc, 4};
inline constexpr Field kAtomic{0x21e, 1};
inline constexpr Field kCqOi{0x220, 1};
inline constexpr Field kCd{0x22c, 1};
inline constexpr Field kRc{0x23f, 1};
inline constexpr Field kMaxWqeSzSq{0x290, 16};
inline constexpr Field kMaxWqeSzRq{0x2b0, 16};
inline constexpr Field kWaitOnData{0x68b, 1};
inline constexpr Field kWaitOnTime{0x68c, 1};
}  // namespace hca_cap

// The atomic capabilities (atomic_caps), relative to the capability union.
namespace atomic_cap {
inline constexpr Field kReq8BEndiannessMode{0x40, 2};  // 1: host endianness
inline constexpr Field kOperations{0x90, 16};          // bit 0 CAS, bit 1 FAA
inline constexpr Field kSizeQp{0xb0, 16};              // bit n: 2^n-byte atomics
inline constexpr uint16_t kOpCas = 1u << 0;
inline constexpr uint16_t kOpFaa = 1u << 1;
inline constexpr uint16_t kSize8Bytes = 1u << 3;
inline constexpr uint8_t kHostEndianness = 1;
}  // namespace atomic_cap

// ---- builders --------------------------------------------------------------------
using Bytes = std::vector<std::byte>;

Bytes query_hca_cap_in(uint16_t cap_type);

struct CqParams {
  uint8_t log_cq_size = 0;   // log2 of the CQE count
  uint32_t uar_page = 0;
  uint32_t eqn = 0;
  uint32_t cq_umem_id = 0;   // the CQE ring
  uint32_t dbr_umem_id = 0;  // the 8-byte doorbell record
  uint8_t log_page_size = 0; // log2(umem page size) - 12
  bool ignore_overrun = false;
};
Bytes create_cq_in(const CqParams& p);

struct QpParams {
  uint32_t pdn = 0;
  uint32_t uar_page = 0;
  uint32_t cqn_snd = 0;
  uint32_t cqn_rcv = 0;
  uint8_t log_sq_size = 0;    // log2 of the send queue's WQEBBs
  uint8_t log_rq_size = 0;    // log2 of the receive queue's WQEs
  uint8_t log_rq_stride = 0;  // log2(receive WQE bytes) - 4
  uint8_t log_page_size = 0;
  uint8_t ts_format = 1;      // MLX5_QPC_TIMESTAMP_FORMAT_DEFAULT
  bool cd_master = false;
  bool cd_slave_send = false;
  bool cd_slave_receive = false;
  uint32_t wq_umem_id = 0;    // receive queue first, then the send queue
  uint32_t dbr_umem_id = 0;
};
Bytes create_qp_in(const QpParams& p);

struct Rst2InitParams {
  uint32_t qpn = 0;
  uint8_t port = 1;
  bool rre = false, rwe = false, rae = false;
  uint8_t atomic_mode = 0;
};
Bytes rst2init_in(const Rst2InitParams& p);

struct Init2RtrParams {
  uint32_t qpn = 0;
  uint8_t port = 1;
  uint8_t mtu = 3;             // IB encoding
  uint8_t log_msg_max = 30;
  uint32_t remote_qpn = 0;
  uint32_t next_rcv_psn = 0;
  uint8_t min_rnr_nak = 12;
  uint8_t log_rra_max = 0;
  bool roce = false;           // Ethernet port: GRH, rgid, rmac, udp_sport
  uint16_t rlid = 0;           // InfiniBand
  std::array<uint8_t, 16> rgid{};
  std::array<uint8_t, 6> rmac{};
  uint8_t src_addr_index = 0;  // the local GID index
  uint8_t hop_limit = 64;
  uint16_t udp_sport = 0;
};
Bytes init2rtr_in(const Init2RtrParams& p);

struct Rtr2RtsParams {
  uint32_t qpn = 0;
  uint8_t port = 1;
  uint8_t retry_count = 7;
  uint8_t rnr_retry = 7;
  uint8_t ack_timeout = 14;
  uint32_t next_send_psn = 0;
  uint8_t log_sra_max = 0;
};
Bytes rtr2rts_in(const Rtr2RtsParams& p);

Bytes qp_2err_in(uint32_t qpn);
Bytes qp_2rst_in(uint32_t qpn);
Bytes query_qp_in(uint32_t qpn);

// ---- parsers ---------------------------------------------------------------------
// The PRM name of a command status (mlx5_ifc.h MLX5_CMD_STAT_*).
std::string cmd_status_name(uint8_t status);
// OK when the output's status is 0; otherwise kUnavailable naming `what`,
// the status and the syndrome (what a firmware engineer asks for first).
// kInternal when `out` is too short to hold a header.
Status check_cmd_out(std::span<const std::byte> out, const char* what);
// The cqn / qpn of a CREATE_CQ / CREATE_QP output.
uint32_t created_id(std::span<const std::byte> out);
// qpc.state of a QUERY_QP output (REQUIRES: kQueryQpOutBytes long).
uint8_t queried_qp_state(std::span<const std::byte> out);
// Fills the HcaCaps fields from the two QUERY_HCA_CAP outputs (general,
// atomic; the atomic one may be empty when `general` has no atomic bit).
// kInvalidArgument when an output is shorter than kQueryHcaCapOutBytes.
Status parse_hca_caps(std::span<const std::byte> general_out, std::span<const std::byte> atomic_out,
                      mlx5dev::HcaCaps* caps);

}  // namespace hyperloop::mlx5::prm
