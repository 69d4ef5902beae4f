// The PRM command encoder of rnic/mlx5 (prm_cmd.h), field by field, against
// offsets taken from independent sources and written here as facts:
//
//   RC44-IFC   rdma-core v44.0 providers/mlx5/mlx5_ifc.h (Debian 12's
//              rdma-core 44.0-2), offsets computed from its mlx5_ifc_*_bits
//              structs (create_qp_in, qpc, ads, rst2init_qp_in,
//              init2rtr_qp_in, rtr2rts_qp_in, create_qp_out,
//              query_hca_cap_in/out, cmd_hca_cap, atomic_caps) and its
//              MLX5_CMD_OP_* / MLX5_CMD_STAT_* enums
//   RC44-PY    rdma-core v44.0 tests/mlx5_prm_structs.py (CreateCqIn, SwCqc,
//              CreateCqOut: mlx5_ifc.h v44 has no create_cq_in)
//   DPDK       DPDK drivers/common/mlx5/mlx5_prm.h @38f72e50 (the same
//              values for every QP and CQ field below; the only source here
//              for qp_2err_in, wait_on_data and wait_on_time)
//   LINUX      the kernel's include/linux/mlx5/mlx5_ifc.h (wait_on_data,
//              wait_on_time after reserved_at_689[0x2]) and
//              include/linux/mlx5/device.h (enum mlx5_cap_type:
//              MLX5_CAP_GENERAL 0, MLX5_CAP_ATOMIC 3)
//
// The test reads every field back with its own extractor, written the way
// MLX5_GET is (a big-endian dword, shifted and masked), not with the
// encoder's bit loop, and checks that nothing outside the named fields is
// set: a field at a wrong offset fails twice.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "prm_cmd.h"

namespace hyperloop::mlx5::prm {
namespace {

struct Fact {
  const char* name;
  uint32_t bit;
  uint32_t width;
  const char* source;
};

// MLX5_GET-style reads: dword bit/32 (big-endian), shift 32 - bit%32 - width.
uint32_t dword_be(const std::vector<std::byte>& b, uint32_t dw) {
  uint32_t v;
  std::memcpy(&v, b.data() + 4 * dw, 4);
  return __builtin_bswap32(v);
}
uint64_t read_fact(const std::vector<std::byte>& b, uint32_t bit, uint32_t width) {
  if (width == 64) {
    EXPECT_EQ(bit % 32, 0u);
    return uint64_t(dword_be(b, bit / 32)) << 32 | dword_be(b, bit / 32 + 1);
  }
  EXPECT_LE(bit % 32 + width, 32u) << "a fact field must not cross a dword";
  const uint32_t shift = 32 - bit % 32 - width;
  const uint32_t mask = width == 32 ? ~0u : ((1u << width) - 1);
  return (dword_be(b, bit / 32) >> shift) & mask;
}
uint64_t read_fact(const std::vector<std::byte>& b, const Fact& f) { return read_fact(b, f.bit, f.width); }
// The MLX5_SET counterpart, to build synthetic outputs.
void write_fact(std::vector<std::byte>& b, const Fact& f, uint32_t v) {
  ASSERT_LE(f.bit % 32 + f.width, 32u);
  const uint32_t shift = 32 - f.bit % 32 - f.width;
  const uint32_t mask = (f.width == 32 ? ~0u : ((1u << f.width) - 1)) << shift;
  uint32_t w = dword_be(b, f.bit / 32);
  w = (w & ~mask) | ((v << shift) & mask);
  w = __builtin_bswap32(w);
  std::memcpy(b.data() + 4 * (f.bit / 32), &w, 4);
}

// Every bit of `b` outside the given fields is zero.
void expect_only(const std::vector<std::byte>& b, std::initializer_list<Fact> facts, const char* cmd) {
  std::vector<bool> named(b.size() * 8, false);
  for (const Fact& f : facts)
    for (uint32_t i = 0; i < f.width; ++i) named.at(f.bit + i) = true;
  for (size_t p = 0; p < named.size(); ++p)
    if (!named[p] && ((uint8_t(b[p / 8]) >> (7 - p % 8)) & 1))
      ADD_FAILURE() << cmd << ": bit 0x" << std::hex << p << " is set outside every named field";
}

// ---- facts --------------------------------------------------------------------
// Command headers. RC44-IFC create_qp_in / rst2init_qp_in / create_qp_out,
// query_hca_cap_in; RC44-PY CreateCqOut (cqn at byte 8, 24 bits).
constexpr Fact kOpcode{"opcode", 0x00, 16, "RC44-IFC"};
constexpr Fact kOpMod{"op_mod", 0x30, 16, "RC44-IFC query_hca_cap_in"};
constexpr Fact kOutStatus{"status", 0x00, 8, "RC44-IFC create_qp_out"};
constexpr Fact kOutSyndrome{"syndrome", 0x20, 32, "RC44-IFC create_qp_out"};
constexpr Fact kOutQpn{"qpn", 0x48, 24, "RC44-IFC create_qp_out"};
constexpr Fact kOutCqn{"cqn", 0x48, 24, "RC44-PY CreateCqOut"};
constexpr Fact kModQpn{"qpn", 0x48, 24, "RC44-IFC rst2init_qp_in"};

// CREATE_CQ (RC44-PY CreateCqIn: 16 header bytes, SwCqc, 8-byte umem offset,
// cq_umem_id, cq_umem_valid; absolute bit offsets in the command).
constexpr Fact kCqDbrUmemValid{"cqc.dbr_umem_valid", 0x86, 1, "RC44-PY SwCqc"};
constexpr Fact kCqCqeSz{"cqc.cqe_sz", 0x88, 3, "RC44-PY SwCqc"};
constexpr Fact kCqOi{"cqc.oi", 0x8e, 1, "RC44-PY SwCqc"};
constexpr Fact kCqDbrUmemId{"cqc.dbr_umem_id", 0xa0, 32, "RC44-PY SwCqc"};
constexpr Fact kCqLogCqSize{"cqc.log_cq_size", 0xe3, 5, "RC44-PY SwCqc"};
constexpr Fact kCqUarPage{"cqc.uar_page", 0xe8, 24, "RC44-PY SwCqc"};
constexpr Fact kCqCEqn{"cqc.c_eqn", 0x138, 8, "RC44-PY SwCqc"};
constexpr Fact kCqLogPageSize{"cqc.log_page_size", 0x143, 5, "RC44-PY SwCqc"};
constexpr Fact kCqUmemOffset{"cq_umem_offset", 0x280, 64, "RC44-PY CreateCqIn"};
constexpr Fact kCqUmemId{"cq_umem_id", 0x2c0, 32, "RC44-PY CreateCqIn"};
constexpr Fact kCqUmemValid{"cq_umem_valid", 0x2e0, 1, "RC44-PY CreateCqIn"};

// CREATE_QP and the modifies (RC44-IFC; the qpc at 0xc0 in all of them, so
// these absolute offsets hold for create_qp_in and every *2*_qp_in).
constexpr Fact kQpOptParamMask{"opt_param_mask", 0x80, 32, "RC44-IFC"};
constexpr Fact kQpSt{"qpc.st", 0xc8, 8, "RC44-IFC"};
constexpr Fact kQpPmState{"qpc.pm_state", 0xd3, 2, "RC44-IFC"};
constexpr Fact kQpPd{"qpc.pd", 0xe8, 24, "RC44-IFC"};
constexpr Fact kQpMtu{"qpc.mtu", 0x100, 3, "RC44-IFC"};
constexpr Fact kQpLogMsgMax{"qpc.log_msg_max", 0x103, 5, "RC44-IFC"};
constexpr Fact kQpLogRqSize{"qpc.log_rq_size", 0x109, 4, "RC44-IFC"};
constexpr Fact kQpLogRqStride{"qpc.log_rq_stride", 0x10d, 3, "RC44-IFC"};
constexpr Fact kQpLogSqSize{"qpc.log_sq_size", 0x111, 4, "RC44-IFC"};
constexpr Fact kQpTsFormat{"qpc.ts_format", 0x118, 2, "RC44-IFC"};
constexpr Fact kQpUarPage{"qpc.uar_page", 0x128, 24, "RC44-IFC"};
constexpr Fact kQpLogPageSize{"qpc.log_page_size", 0x163, 5, "RC44-IFC"};
constexpr Fact kQpRemoteQpn{"qpc.remote_qpn", 0x168, 24, "RC44-IFC"};
constexpr Fact kAdsGrh{"ads.grh", 0x1a8, 1, "RC44-IFC"};
constexpr Fact kAdsRlid{"ads.rlid", 0x1b0, 16, "RC44-IFC"};
constexpr Fact kAdsAckTimeout{"ads.ack_timeout", 0x1c0, 5, "RC44-IFC"};
constexpr Fact kAdsSrcAddrIndex{"ads.src_addr_index", 0x1c8, 8, "RC44-IFC"};
constexpr Fact kAdsHopLimit{"ads.hop_limit", 0x1d8, 8, "RC44-IFC"};
constexpr Fact kAdsRgid0{"ads.rgid_rip[0..3]", 0x200, 32, "RC44-IFC"};
constexpr Fact kAdsRgid1{"ads.rgid_rip[4..7]", 0x220, 32, "RC44-IFC"};
constexpr Fact kAdsRgid2{"ads.rgid_rip[8..11]", 0x240, 32, "RC44-IFC"};
constexpr Fact kAdsRgid3{"ads.rgid_rip[12..15]", 0x260, 32, "RC44-IFC"};
constexpr Fact kAdsUdpSport{"ads.udp_sport", 0x290, 16, "RC44-IFC"};
constexpr Fact kAdsVhcaPortNum{"ads.vhca_port_num", 0x2a8, 8, "RC44-IFC"};
constexpr Fact kAdsRmac47_32{"ads.rmac_47_32", 0x2b0, 16, "RC44-IFC"};
constexpr Fact kAdsRmac31_0{"ads.rmac_31_0", 0x2c0, 32, "RC44-IFC"};
constexpr Fact kQpLogSraMax{"qpc.log_sra_max", 0x448, 3, "RC44-IFC"};
constexpr Fact kQpRetryCount{"qpc.retry_count", 0x44d, 3, "RC44-IFC"};
constexpr Fact kQpRnrRetry{"qpc.rnr_retry", 0x450, 3, "RC44-IFC"};
constexpr Fact kQpNextSendPsn{"qpc.next_send_psn", 0x488, 24, "RC44-IFC"};
constexpr Fact kQpCqnSnd{"qpc.cqn_snd", 0x4a8, 24, "RC44-IFC"};
constexpr Fact kQpLogRraMax{"qpc.log_rra_max", 0x548, 3, "RC44-IFC"};
constexpr Fact kQpAtomicMode{"qpc.atomic_mode", 0x54c, 4, "RC44-IFC"};
constexpr Fact kQpRre{"qpc.rre", 0x550, 1, "RC44-IFC"};
constexpr Fact kQpRwe{"qpc.rwe", 0x551, 1, "RC44-IFC"};
constexpr Fact kQpRae{"qpc.rae", 0x552, 1, "RC44-IFC"};
constexpr Fact kQpCdSlaveReceive{"qpc.cd_slave_receive", 0x55d, 1, "RC44-IFC"};
constexpr Fact kQpCdSlaveSend{"qpc.cd_slave_send", 0x55e, 1, "RC44-IFC"};
constexpr Fact kQpCdMaster{"qpc.cd_master", 0x55f, 1, "RC44-IFC"};
constexpr Fact kQpMinRnrNak{"qpc.min_rnr_nak", 0x563, 5, "RC44-IFC"};
constexpr Fact kQpNextRcvPsn{"qpc.next_rcv_psn", 0x568, 24, "RC44-IFC"};
constexpr Fact kQpCqnRcv{"qpc.cqn_rcv", 0x5a8, 24, "RC44-IFC"};
constexpr Fact kQpDbrUmemValid{"qpc.dbr_umem_valid", 0x743, 1, "RC44-IFC"};
constexpr Fact kQpDbrUmemId{"qpc.dbr_umem_id", 0x7e0, 32, "RC44-IFC"};
constexpr Fact kQpWqUmemId{"wq_umem_id", 0x840, 32, "RC44-IFC"};
constexpr Fact kQpWqUmemValid{"wq_umem_valid", 0x860, 1, "RC44-IFC"};

// QUERY_HCA_CAP output (RC44-IFC query_hca_cap_out: the capability union at
// 0x80; these are absolute offsets in the output).
constexpr Fact kHcaLogMaxQpSz{"cmd_hca_cap.log_max_qp_sz", 0x108, 8, "RC44-IFC"};
constexpr Fact kHcaLogMaxCqSz{"cmd_hca_cap.log_max_cq_sz", 0x148, 8, "RC44-IFC"};
constexpr Fact kHcaLogMaxRaReqQp{"cmd_hca_cap.log_max_ra_req_qp", 0x1ca, 6, "RC44-IFC"};
constexpr Fact kHcaLogMaxRaResQp{"cmd_hca_cap.log_max_ra_res_qp", 0x1da, 6, "RC44-IFC"};
constexpr Fact kHcaPortType{"cmd_hca_cap.port_type", 0x236, 2, "RC44-IFC"};
constexpr Fact kHcaLogMaxMsg{"cmd_hca_cap.log_max_msg", 0x243, 5, "RC44-IFC"};
constexpr Fact kHcaCqeVersion{"cmd_hca_cap.cqe_version", 0x27c, 4, "RC44-IFC"};
constexpr Fact kHcaAtomic{"cmd_hca_cap.atomic", 0x29e, 1, "RC44-IFC"};
constexpr Fact kHcaCqOi{"cmd_hca_cap.cq_oi", 0x2a0, 1, "RC44-IFC"};
constexpr Fact kHcaCd{"cmd_hca_cap.cd", 0x2ac, 1, "RC44-IFC"};
constexpr Fact kHcaRc{"cmd_hca_cap.rc", 0x2bf, 1, "RC44-IFC"};
constexpr Fact kHcaMaxWqeSzSq{"cmd_hca_cap.max_wqe_sz_sq", 0x310, 16, "RC44-IFC"};
constexpr Fact kHcaMaxWqeSzRq{"cmd_hca_cap.max_wqe_sz_rq", 0x330, 16, "RC44-IFC"};
constexpr Fact kHcaWaitOnData{"cmd_hca_cap.wait_on_data", 0x80 + 0x68b, 1, "DPDK, LINUX"};
constexpr Fact kHcaWaitOnTime{"cmd_hca_cap.wait_on_time", 0x80 + 0x68c, 1, "DPDK, LINUX"};
constexpr Fact kAtEndianness{"atomic_caps.atomic_req_8B_endianness_mode", 0xc0, 2, "RC44-IFC, LINUX"};
constexpr Fact kAtOperations{"atomic_caps.atomic_operations", 0x110, 16, "RC44-IFC"};
constexpr Fact kAtSizeQp{"atomic_caps.atomic_size_qp", 0x130, 16, "RC44-IFC"};

// Opcodes: RC44-IFC enum (MLX5_CMD_OP_QUERY_HCA_CAP 0x100, CREATE_CQ 0x400,
// CREATE_QP 0x500, RST2INIT 0x502, INIT2RTR 0x503, RTR2RTS 0x504, 2ERR
// 0x507, 2RST 0x50a), the same in RC44-PY DevxOps and DPDK.
TEST(Mlx5Prm, OpcodesAndSizes) {
  EXPECT_EQ(kOpQueryHcaCap, 0x100);
  EXPECT_EQ(kOpCreateCq, 0x400);
  EXPECT_EQ(kOpCreateQp, 0x500);
  EXPECT_EQ(kOpRst2InitQp, 0x502);
  EXPECT_EQ(kOpInit2RtrQp, 0x503);
  EXPECT_EQ(kOpRtr2RtsQp, 0x504);
  EXPECT_EQ(kOp2ErrQp, 0x507);
  EXPECT_EQ(kOp2RstQp, 0x50a);
  // Sizes: RC44-IFC create_qp_in / *2*_qp_in end at bit 0x880, query_hca_cap_in
  // at 0x80, query_hca_cap_out = 0x80 + the 0x8000-bit union; RC44-PY
  // CreateCqIn is 16 + 64 + 8 + 4 + 4 + 176 bytes; DPDK qp_2err_in is 0x80 bits.
  EXPECT_EQ(kCreateQpInBytes, 0x880u / 8);
  EXPECT_EQ(kModifyQpInBytes, 0x880u / 8);
  EXPECT_EQ(kQueryHcaCapInBytes, 0x80u / 8);
  EXPECT_EQ(kQueryHcaCapOutBytes, (0x80u + 0x8000u) / 8);
  EXPECT_EQ(kCreateCqInBytes, 16u + 64 + 8 + 4 + 4 + 176);
  EXPECT_EQ(kQpStateInBytes, 0x80u / 8);
}

TEST(Mlx5Prm, QueryHcaCapInAsksForCurrentValues) {
  // op_mod = (type << 1) | HCA_CAP_OPMOD_GET_CUR (1) (RC44-IFC; types LINUX).
  const Bytes g = query_hca_cap_in(kCapGeneral);
  ASSERT_EQ(g.size(), kQueryHcaCapInBytes);
  EXPECT_EQ(read_fact(g, kOpcode), 0x100u);
  EXPECT_EQ(read_fact(g, kOpMod), 0x1u);
  expect_only(g, {kOpcode, kOpMod}, "QUERY_HCA_CAP(general)");
  const Bytes a = query_hca_cap_in(kCapAtomic);
  EXPECT_EQ(read_fact(a, kOpMod), (3u << 1) | 1u);
}

TEST(Mlx5Prm, CreateCqPlacesEveryField) {
  CqParams p;
  p.log_cq_size = 0x11;
  p.uar_page = 0xabcdef;
  p.eqn = 0x5a;
  p.cq_umem_id = 0x81234567;
  p.dbr_umem_id = 0x76543218;
  p.log_page_size = 0x13;
  p.ignore_overrun = true;
  const Bytes b = create_cq_in(p);
  ASSERT_EQ(b.size(), kCreateCqInBytes);
  EXPECT_EQ(read_fact(b, kOpcode), 0x400u);
  EXPECT_EQ(read_fact(b, kCqLogCqSize), 0x11u);
  EXPECT_EQ(read_fact(b, kCqUarPage), 0xabcdefu);
  EXPECT_EQ(read_fact(b, kCqCEqn), 0x5au);
  EXPECT_EQ(read_fact(b, kCqUmemId), 0x81234567u);
  EXPECT_EQ(read_fact(b, kCqUmemValid), 1u);
  EXPECT_EQ(read_fact(b, kCqDbrUmemId), 0x76543218u);
  EXPECT_EQ(read_fact(b, kCqDbrUmemValid), 1u);
  EXPECT_EQ(read_fact(b, kCqLogPageSize), 0x13u);
  EXPECT_EQ(read_fact(b, kCqOi), 1u);
  EXPECT_EQ(read_fact(b, kCqCqeSz), 0u);      // 64-byte CQEs
  EXPECT_EQ(read_fact(b, kCqUmemOffset), 0u);
  expect_only(b, {kOpcode, kCqLogCqSize, kCqUarPage, kCqCEqn, kCqUmemId, kCqUmemValid, kCqDbrUmemId,
                  kCqDbrUmemValid, kCqLogPageSize, kCqOi, kCqCqeSz, kCqUmemOffset},
              "CREATE_CQ");
  p.ignore_overrun = false;
  EXPECT_EQ(read_fact(create_cq_in(p), kCqOi), 0u);
}

TEST(Mlx5Prm, CreateQpPlacesEveryField) {
  QpParams p;
  p.pdn = 0x123456;
  p.uar_page = 0x654321;
  p.cqn_snd = 0xa1b2c3;
  p.cqn_rcv = 0x3c2b1a;
  p.log_sq_size = 0xd;
  p.log_rq_size = 0x9;
  p.log_rq_stride = 0x5;
  p.log_page_size = 0x7;
  p.ts_format = 0x1;
  p.cd_master = true;
  p.cd_slave_send = true;
  p.cd_slave_receive = true;
  p.wq_umem_id = 0x89abcdef;
  p.dbr_umem_id = 0x13579bdf;
  const Bytes b = create_qp_in(p);
  ASSERT_EQ(b.size(), kCreateQpInBytes);
  EXPECT_EQ(read_fact(b, kOpcode), 0x500u);
  EXPECT_EQ(read_fact(b, kQpSt), 0u);       // MLX5_QPC_ST_RC (RC44-IFC)
  EXPECT_EQ(read_fact(b, kQpPmState), 3u);  // MLX5_QPC_PM_STATE_MIGRATED (RC44-IFC)
  EXPECT_EQ(read_fact(b, kQpPd), 0x123456u);
  EXPECT_EQ(read_fact(b, kQpUarPage), 0x654321u);
  EXPECT_EQ(read_fact(b, kQpCqnSnd), 0xa1b2c3u);
  EXPECT_EQ(read_fact(b, kQpCqnRcv), 0x3c2b1au);
  EXPECT_EQ(read_fact(b, kQpLogSqSize), 0xdu);
  EXPECT_EQ(read_fact(b, kQpLogRqSize), 0x9u);
  EXPECT_EQ(read_fact(b, kQpLogRqStride), 0x5u);
  EXPECT_EQ(read_fact(b, kQpLogPageSize), 0x7u);
  EXPECT_EQ(read_fact(b, kQpTsFormat), 1u);
  EXPECT_EQ(read_fact(b, kQpCdMaster), 1u);
  EXPECT_EQ(read_fact(b, kQpCdSlaveSend), 1u);
  EXPECT_EQ(read_fact(b, kQpCdSlaveReceive), 1u);
  EXPECT_EQ(read_fact(b, kQpWqUmemId), 0x89abcdefu);
  EXPECT_EQ(read_fact(b, kQpWqUmemValid), 1u);
  EXPECT_EQ(read_fact(b, kQpDbrUmemId), 0x13579bdfu);
  EXPECT_EQ(read_fact(b, kQpDbrUmemValid), 1u);
  EXPECT_EQ(read_fact(b, kQpOptParamMask), 0u);
  expect_only(b, {kOpcode, kQpSt, kQpPmState, kQpPd, kQpUarPage, kQpCqnSnd, kQpCqnRcv, kQpLogSqSize, kQpLogRqSize,
                  kQpLogRqStride, kQpLogPageSize, kQpTsFormat, kQpCdMaster, kQpCdSlaveSend, kQpCdSlaveReceive,
                  kQpWqUmemId, kQpWqUmemValid, kQpDbrUmemId, kQpDbrUmemValid},
              "CREATE_QP");
}

TEST(Mlx5Prm, CreateQpCrossChannelBitsAreIndependent) {
  // Each QpAttr flag sets its own bit and only that one.
  for (int i = 0; i < 3; ++i) {
    QpParams p;
    p.cd_master = i == 0;
    p.cd_slave_send = i == 1;
    p.cd_slave_receive = i == 2;
    const Bytes b = create_qp_in(p);
    EXPECT_EQ(read_fact(b, kQpCdMaster), i == 0 ? 1u : 0u);
    EXPECT_EQ(read_fact(b, kQpCdSlaveSend), i == 1 ? 1u : 0u);
    EXPECT_EQ(read_fact(b, kQpCdSlaveReceive), i == 2 ? 1u : 0u);
  }
}

TEST(Mlx5Prm, Rst2InitPlacesEveryField) {
  const Bytes b = rst2init_in({.qpn = 0xfedcba, .port = 2, .rre = true, .rwe = true, .rae = true, .atomic_mode = 1});
  ASSERT_EQ(b.size(), kModifyQpInBytes);
  EXPECT_EQ(read_fact(b, kOpcode), 0x502u);
  EXPECT_EQ(read_fact(b, kModQpn), 0xfedcbau);
  EXPECT_EQ(read_fact(b, kAdsVhcaPortNum), 2u);
  EXPECT_EQ(read_fact(b, kQpRre), 1u);
  EXPECT_EQ(read_fact(b, kQpRwe), 1u);
  EXPECT_EQ(read_fact(b, kQpRae), 1u);
  EXPECT_EQ(read_fact(b, kQpAtomicMode), 1u);
  expect_only(b, {kOpcode, kModQpn, kAdsVhcaPortNum, kQpRre, kQpRwe, kQpRae, kQpAtomicMode}, "RST2INIT");
  const Bytes w = rst2init_in({.qpn = 1, .port = 1, .rre = false, .rwe = true, .rae = false, .atomic_mode = 0});
  EXPECT_EQ(read_fact(w, kQpRre), 0u);
  EXPECT_EQ(read_fact(w, kQpRwe), 1u);
  EXPECT_EQ(read_fact(w, kQpRae), 0u);
}

TEST(Mlx5Prm, Init2RtrRoCEPlacesEveryField) {
  Init2RtrParams p;
  p.qpn = 0x0a0b0c;
  p.port = 1;
  p.mtu = 5;
  p.log_msg_max = 0x1e;
  p.remote_qpn = 0x112233;
  p.next_rcv_psn = 0x445566;
  p.min_rnr_nak = 0x0c;
  p.log_rra_max = 4;
  p.roce = true;
  for (int i = 0; i < 16; ++i) p.rgid[i] = uint8_t(0xf0 + i);
  p.rmac = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
  p.src_addr_index = 3;
  p.hop_limit = 0x40;
  p.udp_sport = 0xdcba;
  const Bytes b = init2rtr_in(p);
  ASSERT_EQ(b.size(), kModifyQpInBytes);
  EXPECT_EQ(read_fact(b, kOpcode), 0x503u);
  EXPECT_EQ(read_fact(b, kModQpn), 0x0a0b0cu);
  EXPECT_EQ(read_fact(b, kAdsVhcaPortNum), 1u);
  EXPECT_EQ(read_fact(b, kQpMtu), 5u);
  EXPECT_EQ(read_fact(b, kQpLogMsgMax), 0x1eu);
  EXPECT_EQ(read_fact(b, kQpRemoteQpn), 0x112233u);
  EXPECT_EQ(read_fact(b, kQpNextRcvPsn), 0x445566u);
  EXPECT_EQ(read_fact(b, kQpMinRnrNak), 0x0cu);
  EXPECT_EQ(read_fact(b, kQpLogRraMax), 4u);
  EXPECT_EQ(read_fact(b, kAdsGrh), 1u);
  // rgid_rip is 16 bytes in network order: byte 0 is the dword's MSB.
  EXPECT_EQ(read_fact(b, kAdsRgid0), 0xf0f1f2f3u);
  EXPECT_EQ(read_fact(b, kAdsRgid1), 0xf4f5f6f7u);
  EXPECT_EQ(read_fact(b, kAdsRgid2), 0xf8f9fafbu);
  EXPECT_EQ(read_fact(b, kAdsRgid3), 0xfcfdfeffu);
  EXPECT_EQ(read_fact(b, kAdsRmac47_32), 0x0211u);
  EXPECT_EQ(read_fact(b, kAdsRmac31_0), 0x22334455u);
  EXPECT_EQ(read_fact(b, kAdsSrcAddrIndex), 3u);
  EXPECT_EQ(read_fact(b, kAdsHopLimit), 0x40u);
  EXPECT_EQ(read_fact(b, kAdsUdpSport), 0xdcbau);
  EXPECT_EQ(read_fact(b, kAdsRlid), 0u);
  expect_only(b, {kOpcode, kModQpn, kAdsVhcaPortNum, kQpMtu, kQpLogMsgMax, kQpRemoteQpn, kQpNextRcvPsn, kQpMinRnrNak,
                  kQpLogRraMax, kAdsGrh, kAdsRgid0, kAdsRgid1, kAdsRgid2, kAdsRgid3, kAdsRmac47_32, kAdsRmac31_0,
                  kAdsSrcAddrIndex, kAdsHopLimit, kAdsUdpSport},
              "INIT2RTR (RoCE)");
}

TEST(Mlx5Prm, Init2RtrInfiniBandUsesTheLidOnly) {
  Init2RtrParams p;
  p.qpn = 7;
  p.remote_qpn = 9;
  p.rlid = 0xbeef;
  p.rgid[0] = 0xff;  // ignored without RoCE
  p.udp_sport = 1;
  const Bytes b = init2rtr_in(p);
  EXPECT_EQ(read_fact(b, kAdsRlid), 0xbeefu);
  EXPECT_EQ(read_fact(b, kAdsGrh), 0u);
  EXPECT_EQ(read_fact(b, kAdsRgid0), 0u);
  EXPECT_EQ(read_fact(b, kAdsUdpSport), 0u);
  EXPECT_EQ(read_fact(b, kAdsRmac31_0), 0u);
}

TEST(Mlx5Prm, Rtr2RtsPlacesEveryField) {
  const Bytes b = rtr2rts_in({.qpn = 0x00c0de, .port = 1, .retry_count = 6, .rnr_retry = 5, .ack_timeout = 0x13,
                              .next_send_psn = 0xabcdef, .log_sra_max = 3});
  ASSERT_EQ(b.size(), kModifyQpInBytes);
  EXPECT_EQ(read_fact(b, kOpcode), 0x504u);
  EXPECT_EQ(read_fact(b, kModQpn), 0x00c0deu);
  EXPECT_EQ(read_fact(b, kAdsVhcaPortNum), 1u);
  EXPECT_EQ(read_fact(b, kQpRetryCount), 6u);
  EXPECT_EQ(read_fact(b, kQpRnrRetry), 5u);
  EXPECT_EQ(read_fact(b, kAdsAckTimeout), 0x13u);
  EXPECT_EQ(read_fact(b, kQpNextSendPsn), 0xabcdefu);
  EXPECT_EQ(read_fact(b, kQpLogSraMax), 3u);
  expect_only(b, {kOpcode, kModQpn, kAdsVhcaPortNum, kQpRetryCount, kQpRnrRetry, kAdsAckTimeout, kQpNextSendPsn,
                  kQpLogSraMax},
              "RTR2RTS");
}

TEST(Mlx5Prm, ErrorAndResetCommands) {
  // DPDK mlx5_ifc_qp_2err_in_bits / qp_2rst_in_bits: opcode, qpn at 0x48.
  const Bytes e = qp_2err_in(0x123abc);
  ASSERT_EQ(e.size(), kQpStateInBytes);
  EXPECT_EQ(read_fact(e, kOpcode), 0x507u);
  EXPECT_EQ(read_fact(e, kModQpn), 0x123abcu);
  expect_only(e, {kOpcode, kModQpn}, "2ERR");
  const Bytes r = qp_2rst_in(0xabc123);
  EXPECT_EQ(read_fact(r, kOpcode), 0x50au);
  EXPECT_EQ(read_fact(r, kModQpn), 0xabc123u);
  expect_only(r, {kOpcode, kModQpn}, "2RST");
  // RC44-IFC query_qp_in: opcode, qpn at 0x48; MLX5_CMD_OP_QUERY_QP 0x50b.
  const Bytes qq = query_qp_in(0x0c0ffe);
  ASSERT_EQ(qq.size(), 0x80u / 8);
  EXPECT_EQ(read_fact(qq, kOpcode), 0x50bu);
  EXPECT_EQ(read_fact(qq, kModQpn), 0x0c0ffeu);
  expect_only(qq, {kOpcode, kModQpn}, "QUERY_QP");
}

TEST(Mlx5Prm, QueriedQpState) {
  // RC44-IFC query_qp_out: the qpc at 0xc0, qpc.state its first 4 bits; the
  // output ends at 0x880 bits. LINUX enum mlx5_qp_state: RST 0 .. ERR 6.
  constexpr Fact kQueryState{"query_qp_out.qpc.state", 0xc0, 4, "RC44-IFC"};
  EXPECT_EQ(kQueryQpOutBytes, 0x880u / 8);
  std::vector<std::byte> out(kQueryQpOutBytes, std::byte{0xff});
  write_fact(out, kQueryState, 6);
  EXPECT_EQ(queried_qp_state(out), kQpcErr);
  EXPECT_EQ(kQpcErr, 6);
  EXPECT_EQ(kQpcRts, 3);
  EXPECT_EQ(kQpcRst, 0);
  write_fact(out, kQueryState, 3);
  EXPECT_EQ(queried_qp_state(out), kQpcRts);
  // LINUX include/linux/mlx5/driver.h: MLX5_ATOMIC_MODE_IB_COMP = 1 (<< 16
  // in the qpc dword that holds atomic_mode at qpc bit 0x48c).
  EXPECT_EQ(kAtomicModeIbComp, 1);
}

TEST(Mlx5Prm, CreatedIdsAndStatus) {
  std::vector<std::byte> out(kCmdOutBytes, std::byte{0});
  write_fact(out, kOutQpn, 0x0badc0);
  EXPECT_EQ(created_id(out), 0x0badc0u);
  EXPECT_EQ(kOutCqn.bit, kOutQpn.bit);  // the same place for CQs (RC44-PY)
  EXPECT_TRUE(check_cmd_out(out, "CREATE_QP").is_ok());
  write_fact(out, kOutStatus, 0x03);  // MLX5_CMD_STAT_BAD_PARAM_ERR (RC44-IFC)
  write_fact(out, kOutSyndrome, 0x1c2d3e4f);
  const Status s = check_cmd_out(out, "CREATE_QP");
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_NE(s.message().find("CREATE_QP"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("BAD_PARAM_ERR"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("0x1c2d3e4f"), std::string::npos) << s.message();
  // RC44-IFC MLX5_CMD_STAT_*.
  EXPECT_EQ(cmd_status_name(0x05), "BAD_RES_ERR");
  EXPECT_EQ(cmd_status_name(0x10), "BAD_QP_STATE_ERR");
  EXPECT_EQ(cmd_status_name(0x50), "BAD_INP_LEN_ERR");
  EXPECT_EQ(cmd_status_name(0x77), "unknown status");
  // A truncated output is an error, never a read past the end.
  EXPECT_EQ(check_cmd_out(std::span<const std::byte>(out.data(), 7), "X").code(), StatusCode::kInternal);
}

TEST(Mlx5Prm, ParsesHcaCaps) {
  std::vector<std::byte> g(kQueryHcaCapOutBytes, std::byte{0}), a(kQueryHcaCapOutBytes, std::byte{0});
  write_fact(g, kHcaLogMaxQpSz, 0x0f);
  write_fact(g, kHcaLogMaxCqSz, 0x16);
  write_fact(g, kHcaLogMaxRaReqQp, 0x04);
  write_fact(g, kHcaLogMaxRaResQp, 0x05);
  write_fact(g, kHcaPortType, 1);
  write_fact(g, kHcaLogMaxMsg, 0x1e);
  write_fact(g, kHcaCqeVersion, 1);
  write_fact(g, kHcaAtomic, 1);
  write_fact(g, kHcaCqOi, 1);
  write_fact(g, kHcaCd, 1);
  write_fact(g, kHcaRc, 1);
  write_fact(g, kHcaMaxWqeSzSq, 0x0400);
  write_fact(g, kHcaMaxWqeSzRq, 0x0200);
  write_fact(g, kHcaWaitOnData, 1);
  write_fact(g, kHcaWaitOnTime, 0);
  write_fact(a, kAtEndianness, 1);
  write_fact(a, kAtOperations, 0x3);
  write_fact(a, kAtSizeQp, 0x48);
  mlx5dev::HcaCaps c;
  ASSERT_TRUE(parse_hca_caps(g, a, &c).is_ok());
  EXPECT_EQ(c.log_max_qp_sz, 0x0f);
  EXPECT_EQ(c.log_max_cq_sz, 0x16);
  EXPECT_EQ(c.log_max_ra_req_qp, 4);
  EXPECT_EQ(c.log_max_ra_res_qp, 5);
  EXPECT_EQ(c.port_type, 1);
  EXPECT_EQ(c.log_max_msg, 0x1e);
  EXPECT_EQ(c.cqe_version, 1);
  EXPECT_TRUE(c.atomic);
  EXPECT_TRUE(c.cq_oi);
  EXPECT_TRUE(c.cd);
  EXPECT_TRUE(c.rc);
  EXPECT_EQ(c.max_wqe_sz_sq, 0x400);
  EXPECT_EQ(c.max_wqe_sz_rq, 0x200);
  EXPECT_TRUE(c.wait_on_data);
  EXPECT_FALSE(c.wait_on_time);
  EXPECT_EQ(c.atomic_endianness_mode, 1);
  EXPECT_EQ(c.atomic_operations, 0x3);
  EXPECT_EQ(c.atomic_size_qp, 0x48);

  // One bit at a time: each capability bit is read from its own place.
  for (const Fact* f : {&kHcaCd, &kHcaCqOi, &kHcaRc, &kHcaWaitOnTime}) {
    std::vector<std::byte> one(kQueryHcaCapOutBytes, std::byte{0});
    write_fact(one, *f, 1);
    mlx5dev::HcaCaps o;
    ASSERT_TRUE(parse_hca_caps(one, {}, &o).is_ok()) << f->name;
    EXPECT_EQ(o.cd, f == &kHcaCd) << f->name;
    EXPECT_EQ(o.cq_oi, f == &kHcaCqOi) << f->name;
    EXPECT_EQ(o.rc, f == &kHcaRc) << f->name;
    EXPECT_EQ(o.wait_on_time, f == &kHcaWaitOnTime) << f->name;
    EXPECT_FALSE(o.atomic) << f->name;
  }
  // Short outputs are refused; the atomic one is needed only with `atomic`.
  EXPECT_EQ(parse_hca_caps(std::span<const std::byte>(g.data(), 100), a, &c).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_hca_caps(g, {}, &c).code(), StatusCode::kInvalidArgument);
}

TEST(Mlx5Prm, EncoderFieldsEqualTheFacts) {
  // The encoder's own constants, against the facts (absolute offsets).
  auto q = [](Field f) { return Field{create_qp::kQpc + f.bit, f.width}; };
  struct Pair { Field enc; Fact fact; };
  const Pair pairs[] = {
      {q(qpc::kSt), kQpSt}, {q(qpc::kPmState), kQpPmState}, {q(qpc::kPd), kQpPd}, {q(qpc::kMtu), kQpMtu},
      {q(qpc::kLogMsgMax), kQpLogMsgMax}, {q(qpc::kLogRqSize), kQpLogRqSize}, {q(qpc::kLogRqStride), kQpLogRqStride},
      {q(qpc::kLogSqSize), kQpLogSqSize}, {q(qpc::kTsFormat), kQpTsFormat}, {q(qpc::kUarPage), kQpUarPage},
      {q(qpc::kLogPageSize), kQpLogPageSize}, {q(qpc::kRemoteQpn), kQpRemoteQpn}, {q(qpc::kAdsGrh), kAdsGrh},
      {q(qpc::kAdsRlid), kAdsRlid}, {q(qpc::kAdsAckTimeout), kAdsAckTimeout},
      {q(qpc::kAdsSrcAddrIndex), kAdsSrcAddrIndex}, {q(qpc::kAdsHopLimit), kAdsHopLimit},
      {q(qpc::kAdsUdpSport), kAdsUdpSport}, {q(qpc::kAdsVhcaPortNum), kAdsVhcaPortNum},
      {q(qpc::kAdsRmac47_32), kAdsRmac47_32}, {q(qpc::kAdsRmac31_0), kAdsRmac31_0},
      {q(qpc::kLogSraMax), kQpLogSraMax}, {q(qpc::kRetryCount), kQpRetryCount}, {q(qpc::kRnrRetry), kQpRnrRetry},
      {q(qpc::kNextSendPsn), kQpNextSendPsn}, {q(qpc::kCqnSnd), kQpCqnSnd}, {q(qpc::kLogRraMax), kQpLogRraMax},
      {q(qpc::kAtomicMode), kQpAtomicMode}, {q(qpc::kRre), kQpRre}, {q(qpc::kRwe), kQpRwe}, {q(qpc::kRae), kQpRae},
      {q(qpc::kCdSlaveReceive), kQpCdSlaveReceive}, {q(qpc::kCdSlaveSend), kQpCdSlaveSend},
      {q(qpc::kCdMaster), kQpCdMaster}, {q(qpc::kMinRnrNak), kQpMinRnrNak}, {q(qpc::kNextRcvPsn), kQpNextRcvPsn},
      {q(qpc::kCqnRcv), kQpCqnRcv}, {q(qpc::kDbrUmemValid), kQpDbrUmemValid}, {q(qpc::kDbrUmemId), kQpDbrUmemId},
      {create_qp::kWqUmemId, kQpWqUmemId}, {create_qp::kWqUmemValid, kQpWqUmemValid},
      {create_qp::kOptParamMask, kQpOptParamMask}, {modify_qp::kQpn, kModQpn},
      {create_cq::kDbrUmemValid, kCqDbrUmemValid}, {create_cq::kCqeSz, kCqCqeSz}, {create_cq::kOi, kCqOi},
      {create_cq::kDbrUmemId, kCqDbrUmemId}, {create_cq::kLogCqSize, kCqLogCqSize}, {create_cq::kUarPage, kCqUarPage},
      {create_cq::kCEqn, kCqCEqn}, {create_cq::kLogPageSize, kCqLogPageSize}, {create_cq::kCqUmemId, kCqUmemId},
      {create_cq::kCqUmemValid, kCqUmemValid}, {create_cq::kCqUmemOffset, kCqUmemOffset},
      {cmd::kOutObjId, kOutQpn}, {cmd::kOutStatus, kOutStatus}, {cmd::kOutSyndrome, kOutSyndrome},
      {cmd::kOpMod, kOpMod}, {cmd::kOpcode, kOpcode},
  };
  for (const Pair& p : pairs) {
    EXPECT_EQ(p.enc.bit, p.fact.bit) << p.fact.name << " (" << p.fact.source << ")";
    EXPECT_EQ(p.enc.width, p.fact.width) << p.fact.name << " (" << p.fact.source << ")";
  }
  EXPECT_EQ(q(qpc::kAdsRgid).bit, kAdsRgid0.bit);
  EXPECT_EQ(q(qpc::kAdsRgid).width, 128u);
}

TEST(Mlx5Prm, SetAndGetAgreeWithTheDwordLayout) {
  // The encoder's bit loop against MLX5_GET-style reads, over seeded random
  // fields that do not cross a dword, and 64-bit aligned ones.
  std::mt19937 rng(15);
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::byte> b(64, std::byte{0});
    const uint32_t width = 1 + rng() % 32;
    const uint32_t dw = rng() % 16;
    const uint32_t in = rng() % (33 - width);
    const Fact f{"random", dw * 32 + in, width, "MLX5_SET"};
    const uint64_t v = rng() & (width == 32 ? ~0u : ((1u << width) - 1));
    set(b, Field{f.bit, f.width}, v | (uint64_t{1} << 40));  // bits above the width are dropped
    ASSERT_EQ(read_fact(b, f), v) << "bit 0x" << std::hex << f.bit << " width " << std::dec << width;
    ASSERT_EQ(get(b, Field{f.bit, f.width}), v);
    expect_only(b, {f}, "random field");
  }
  std::vector<std::byte> b(16, std::byte{0});
  set(b, Field{0x40, 64}, 0x0123456789abcdefull);
  EXPECT_EQ(read_fact(b, 0x40, 64), 0x0123456789abcdefull);
  // Clearing works too: set never ORs into old contents.
  std::vector<std::byte> ones(8, std::byte{0xff});
  set(ones, Field{0x13, 5}, 0);
  EXPECT_EQ(read_fact(ones, 0x13, 5), 0u);
  EXPECT_EQ(read_fact(ones, 0x10, 3), 7u);
  EXPECT_EQ(read_fact(ones, 0x18, 8), 0xffu);
}

}  // namespace
}  // namespace hyperloop::mlx5::prm
