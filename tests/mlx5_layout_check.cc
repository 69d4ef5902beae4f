// Compile-time proof that hyperloop's mlx5 layouts and constants
// (hyperloop/mlx5/prm.h) are identical to rdma-core's <infiniband/mlx5dv.h>
// (rdma-core 44, Debian 12), plus one runtime check that our segment encoders
// produce the same bytes as rdma-core's inline mlx5dv_set_*_seg helpers.
//
// If any static_assert here fires, prm.h disagrees with the hardware ABI as
// rdma-core encodes it: fix prm.h, never this file.
//
// The mlx5dv_set_*_seg helpers are static inline in the header, so this needs
// only the header (libibverbs-dev), not libmlx5 at link time.
#include <infiniband/verbs.h>  // mlx5dv.h depends on it
#include <infiniband/mlx5dv.h>

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "hyperloop/mlx5/prm.h"
#include "hyperloop/mlx5/wqe.h"
#include "hyperloop/rnic.h"

namespace {

namespace m = hyperloop::mlx5;

// Same size, alignment and field offset/size. A macro so a failure names the field.
#define HL_SAME_FIELD(ours, theirs, field)                                         \
  static_assert(offsetof(ours, field) == offsetof(theirs, field),                  \
                #ours "::" #field " offset differs from rdma-core " #theirs);      \
  static_assert(sizeof(ours::field) == sizeof(theirs::field),                      \
                #ours "::" #field " size differs from rdma-core " #theirs)
// Same numeric value; the two sides are different enum types, so compare as integers.
#define HL_SAME_VALUE(ours, theirs)                                                \
  static_assert(static_cast<long long>(ours) == static_cast<long long>(theirs),    \
                #ours " differs from rdma-core " #theirs)
#define HL_SAME_STRUCT(ours, theirs)                                               \
  static_assert(sizeof(ours) == sizeof(theirs), #ours " size differs from " #theirs); \
  static_assert(alignof(ours) == alignof(theirs), #ours " alignment differs from " #theirs)

// ---- control segment ---------------------------------------------------------------
HL_SAME_STRUCT(m::CtrlSeg, mlx5_wqe_ctrl_seg);
HL_SAME_FIELD(m::CtrlSeg, mlx5_wqe_ctrl_seg, opmod_idx_opcode);
HL_SAME_FIELD(m::CtrlSeg, mlx5_wqe_ctrl_seg, qpn_ds);
HL_SAME_FIELD(m::CtrlSeg, mlx5_wqe_ctrl_seg, signature);
HL_SAME_FIELD(m::CtrlSeg, mlx5_wqe_ctrl_seg, dci_stream_channel_id);
HL_SAME_FIELD(m::CtrlSeg, mlx5_wqe_ctrl_seg, fm_ce_se);
HL_SAME_FIELD(m::CtrlSeg, mlx5_wqe_ctrl_seg, imm);
// Fact sheet §1.2 byte offsets, independently of rdma-core.
static_assert(offsetof(m::CtrlSeg, signature) == 8 && offsetof(m::CtrlSeg, fm_ce_se) == 11 &&
              offsetof(m::CtrlSeg, imm) == 12 && m::kCtrlImmOffset == 12);

// ---- remote address segment ----------------------------------------------------------
HL_SAME_STRUCT(m::RaddrSeg, mlx5_wqe_raddr_seg);
HL_SAME_FIELD(m::RaddrSeg, mlx5_wqe_raddr_seg, raddr);
HL_SAME_FIELD(m::RaddrSeg, mlx5_wqe_raddr_seg, rkey);
HL_SAME_FIELD(m::RaddrSeg, mlx5_wqe_raddr_seg, reserved);
// Patch offsets in a ctrl+raddr WQE.
static_assert(m::kRaddrOffset == sizeof(mlx5_wqe_ctrl_seg) + offsetof(mlx5_wqe_raddr_seg, raddr));
static_assert(m::kRkeyOffset == sizeof(mlx5_wqe_ctrl_seg) + offsetof(mlx5_wqe_raddr_seg, rkey));
static_assert(m::kSecondSegOffset == sizeof(mlx5_wqe_ctrl_seg) + sizeof(mlx5_wqe_raddr_seg));

// ---- data segment ----------------------------------------------------------------------
HL_SAME_STRUCT(m::DataSeg, mlx5_wqe_data_seg);
HL_SAME_FIELD(m::DataSeg, mlx5_wqe_data_seg, byte_count);
HL_SAME_FIELD(m::DataSeg, mlx5_wqe_data_seg, lkey);
HL_SAME_FIELD(m::DataSeg, mlx5_wqe_data_seg, addr);
static_assert(m::kDataByteCountOffset == offsetof(mlx5_wqe_data_seg, byte_count));
static_assert(m::kDataLkeyOffset == offsetof(mlx5_wqe_data_seg, lkey));
static_assert(m::kDataAddrOffset == offsetof(mlx5_wqe_data_seg, addr));

// ---- atomic segment ----------------------------------------------------------------------
HL_SAME_STRUCT(m::AtomicSeg, mlx5_wqe_atomic_seg);
HL_SAME_FIELD(m::AtomicSeg, mlx5_wqe_atomic_seg, swap_add);
HL_SAME_FIELD(m::AtomicSeg, mlx5_wqe_atomic_seg, compare);

// ---- inline data header ------------------------------------------------------------------
// rdma-core's inline segment is just the 4-byte byte_count | MLX5_INLINE_SEG header.
static_assert(sizeof(mlx5_wqe_inl_data_seg) == 4);

// ---- 64-byte CQE ---------------------------------------------------------------------------
HL_SAME_STRUCT(m::Cqe64, mlx5_cqe64);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, rsvd0);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, wqe_id);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, rsvd4);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, ml_path);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, rsvd20);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, slid);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, flags_rqpn);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, hds_ip_ext);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, l4_hdr_type_etc);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, vlan_info);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, srqn_uidx);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, imm_inval_pkey);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, app);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, app_op);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, app_info);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, byte_cnt);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, timestamp);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, sop_drop_qpn);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, wqe_counter);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, signature);
HL_SAME_FIELD(m::Cqe64, mlx5_cqe64, op_own);
// Fact sheet §1.10 offsets the codec tests rely on.
static_assert(offsetof(m::Cqe64, byte_cnt) == 44 && offsetof(m::Cqe64, sop_drop_qpn) == 56 &&
              offsetof(m::Cqe64, wqe_counter) == 60 && offsetof(m::Cqe64, op_own) == 63);

// ---- error CQE overlay -----------------------------------------------------------------------
HL_SAME_STRUCT(m::ErrCqe, mlx5_err_cqe);
HL_SAME_FIELD(m::ErrCqe, mlx5_err_cqe, rsvd0);
HL_SAME_FIELD(m::ErrCqe, mlx5_err_cqe, srqn);
HL_SAME_FIELD(m::ErrCqe, mlx5_err_cqe, rsvd1);
HL_SAME_FIELD(m::ErrCqe, mlx5_err_cqe, vendor_err_synd);
HL_SAME_FIELD(m::ErrCqe, mlx5_err_cqe, syndrome);
HL_SAME_FIELD(m::ErrCqe, mlx5_err_cqe, s_wqe_opcode_qpn);
HL_SAME_FIELD(m::ErrCqe, mlx5_err_cqe, wqe_counter);
HL_SAME_FIELD(m::ErrCqe, mlx5_err_cqe, signature);
HL_SAME_FIELD(m::ErrCqe, mlx5_err_cqe, op_own);
// Fact sheet §1.10 error CQE table: 54, 55, 56-59, 60-61, 63.
static_assert(offsetof(m::ErrCqe, vendor_err_synd) == 54 && offsetof(m::ErrCqe, syndrome) == 55 &&
              offsetof(m::ErrCqe, s_wqe_opcode_qpn) == 56 && offsetof(m::ErrCqe, wqe_counter) == 60 &&
              offsetof(m::ErrCqe, op_own) == 63);
// The overlay and the normal CQE must agree on the tail the poller reads first.
static_assert(offsetof(m::ErrCqe, op_own) == offsetof(m::Cqe64, op_own) &&
              offsetof(m::ErrCqe, wqe_counter) == offsetof(m::Cqe64, wqe_counter) &&
              offsetof(m::ErrCqe, s_wqe_opcode_qpn) == offsetof(m::Cqe64, sop_drop_qpn));

// ---- send opcodes ------------------------------------------------------------------------------
HL_SAME_VALUE(m::kOpNop, MLX5_OPCODE_NOP);
HL_SAME_VALUE(m::kOpSendInval, MLX5_OPCODE_SEND_INVAL);
HL_SAME_VALUE(m::kOpRdmaWrite, MLX5_OPCODE_RDMA_WRITE);
HL_SAME_VALUE(m::kOpRdmaWriteImm, MLX5_OPCODE_RDMA_WRITE_IMM);
HL_SAME_VALUE(m::kOpSend, MLX5_OPCODE_SEND);
HL_SAME_VALUE(m::kOpSendImm, MLX5_OPCODE_SEND_IMM);
HL_SAME_VALUE(m::kOpRdmaRead, MLX5_OPCODE_RDMA_READ);
HL_SAME_VALUE(m::kOpAtomicCs, MLX5_OPCODE_ATOMIC_CS);
HL_SAME_VALUE(m::kOpAtomicFa, MLX5_OPCODE_ATOMIC_FA);

// ---- CQE opcodes -----------------------------------------------------------------------------------
HL_SAME_VALUE(m::kCqeReq, MLX5_CQE_REQ);
HL_SAME_VALUE(m::kCqeRespWrImm, MLX5_CQE_RESP_WR_IMM);
HL_SAME_VALUE(m::kCqeRespSend, MLX5_CQE_RESP_SEND);
HL_SAME_VALUE(m::kCqeRespSendImm, MLX5_CQE_RESP_SEND_IMM);
HL_SAME_VALUE(m::kCqeRespSendInv, MLX5_CQE_RESP_SEND_INV);
HL_SAME_VALUE(m::kCqeResizeCq, MLX5_CQE_RESIZE_CQ);
HL_SAME_VALUE(m::kCqeNoPacket, MLX5_CQE_NO_PACKET);
HL_SAME_VALUE(m::kCqeSigErr, MLX5_CQE_SIG_ERR);
HL_SAME_VALUE(m::kCqeReqErr, MLX5_CQE_REQ_ERR);
HL_SAME_VALUE(m::kCqeRespErr, MLX5_CQE_RESP_ERR);
HL_SAME_VALUE(m::kCqeInvalid, MLX5_CQE_INVALID);
HL_SAME_VALUE(m::kCqeOwnerMask, MLX5_CQE_OWNER_MASK);

// ---- CQE error syndromes -----------------------------------------------------------------------------
HL_SAME_VALUE(m::kSyndromeLocalLength, MLX5_CQE_SYNDROME_LOCAL_LENGTH_ERR);
HL_SAME_VALUE(m::kSyndromeLocalQpOp, MLX5_CQE_SYNDROME_LOCAL_QP_OP_ERR);
HL_SAME_VALUE(m::kSyndromeLocalProt, MLX5_CQE_SYNDROME_LOCAL_PROT_ERR);
HL_SAME_VALUE(m::kSyndromeWrFlush, MLX5_CQE_SYNDROME_WR_FLUSH_ERR);
HL_SAME_VALUE(m::kSyndromeMwBind, MLX5_CQE_SYNDROME_MW_BIND_ERR);
HL_SAME_VALUE(m::kSyndromeBadResp, MLX5_CQE_SYNDROME_BAD_RESP_ERR);
HL_SAME_VALUE(m::kSyndromeLocalAccess, MLX5_CQE_SYNDROME_LOCAL_ACCESS_ERR);
HL_SAME_VALUE(m::kSyndromeRemoteInvalReq, MLX5_CQE_SYNDROME_REMOTE_INVAL_REQ_ERR);
HL_SAME_VALUE(m::kSyndromeRemoteAccess, MLX5_CQE_SYNDROME_REMOTE_ACCESS_ERR);
HL_SAME_VALUE(m::kSyndromeRemoteOp, MLX5_CQE_SYNDROME_REMOTE_OP_ERR);
HL_SAME_VALUE(m::kSyndromeTransportRetryExc, MLX5_CQE_SYNDROME_TRANSPORT_RETRY_EXC_ERR);
HL_SAME_VALUE(m::kSyndromeRnrRetryExc, MLX5_CQE_SYNDROME_RNR_RETRY_EXC_ERR);
HL_SAME_VALUE(m::kSyndromeRemoteAborted, MLX5_CQE_SYNDROME_REMOTE_ABORTED_ERR);

// ---- ctrl fm_ce_se flags ---------------------------------------------------------------------------------
HL_SAME_VALUE(m::kCtrlCqUpdate, MLX5_WQE_CTRL_CQ_UPDATE);
HL_SAME_VALUE(m::kCtrlSolicited, MLX5_WQE_CTRL_SOLICITED);
HL_SAME_VALUE(m::kCtrlFence, MLX5_WQE_CTRL_FENCE);
HL_SAME_VALUE(m::kCtrlFenceInitiatorSmall, MLX5_WQE_CTRL_INITIATOR_SMALL_FENCE);

// ---- units, inline, terminator, doorbell records -----------------------------------------------------------
HL_SAME_VALUE(m::kSendWqeBB, MLX5_SEND_WQE_BB);
HL_SAME_VALUE(m::kSendWqeShift, MLX5_SEND_WQE_SHIFT);
static_assert((1u << m::kSendWqeShift) == m::kSendWqeBB);
HL_SAME_VALUE(m::kInlineSeg, MLX5_INLINE_SEG);
HL_SAME_VALUE(m::kInvalidLkey, MLX5_INVALID_LKEY);
HL_SAME_VALUE(m::kRcvDbr, MLX5_RCV_DBR);
HL_SAME_VALUE(m::kSndDbr, MLX5_SND_DBR);

// ---- access flags ---------------------------------------------------------------------------------------------
// rnic.h promises the values equal IBV_ACCESS_*, so they can be passed through.
HL_SAME_VALUE(hyperloop::rnic::kAccessLocalWrite, IBV_ACCESS_LOCAL_WRITE);
HL_SAME_VALUE(hyperloop::rnic::kAccessRemoteWrite, IBV_ACCESS_REMOTE_WRITE);
HL_SAME_VALUE(hyperloop::rnic::kAccessRemoteRead, IBV_ACCESS_REMOTE_READ);
HL_SAME_VALUE(hyperloop::rnic::kAccessRemoteAtomic, IBV_ACCESS_REMOTE_ATOMIC);

// ---- cross-channel: not in rdma-core ---------------------------------------------------------------------------
// rdma-core (v44 and HEAD) defines none of these. The values come from
// shared/research/mlx5-prm-facts.md §1.7-1.8 (MLNX libmlx5 src/mlx5.h and
// src/wqe.h `mlx5_wqe_wait_en_seg`; DPDK mlx5_prm.h `mlx5_wqe_qseg`).
static_assert(m::kOpWait == 0x0f, "fact sheet §1.8: WAIT (MLX5_OPCODE_CQE_WAIT / MLX5_OPCODE_WAIT)");
static_assert(m::kOpRecvEnable == 0x16, "fact sheet §1.8: RECV_EN (MLX5_OPCODE_RECV_ENABLE)");
static_assert(m::kOpSendEnable == 0x17, "fact sheet §1.8: SEND_EN (MLX5_OPCODE_SEND_ENABLE)");
static_assert(m::kWaitCqPi == 0 && m::kWaitData == 1 && m::kWaitTime == 2, "fact sheet §1.8: WAIT opmods");
static_assert(sizeof(m::WaitEnSeg) == 16, "fact sheet §1.7: 16-byte segment");
static_assert(offsetof(m::WaitEnSeg, max_index) == 8 && sizeof(m::WaitEnSeg::max_index) == 4,
              "fact sheet §1.7: max_index / pi, BE32 at byte 8");
static_assert(offsetof(m::WaitEnSeg, qpn_cqn) == 12 && sizeof(m::WaitEnSeg::qpn_cqn) == 4,
              "fact sheet §1.7: qpn_cqn / obj_num, BE32 at byte 12");
static_assert(m::kWaitEnIndexOffset == sizeof(mlx5_wqe_ctrl_seg) + 8,
              "max_index of a ctrl+wait WQE sits at WQE byte 24");
// Fence modes the fact sheet lists from the kernel's MLX5_FENCE_MODE_* (§1.2).
static_assert(m::kCtrlFenceFence == 0x40 && m::kCtrlFenceStrongOrdering == 0x60);
// Counter widths (§1.7 and §1.1): 16-bit WQE index, 24-bit CQ index.
static_assert(m::kWqeIndexMask == 0xffff && m::kCqIndexMask == 0xffffff);

#undef HL_SAME_FIELD
#undef HL_SAME_STRUCT
#undef HL_SAME_VALUE

template <typename A, typename B>
::testing::AssertionResult same_bytes(const A& a, const B& b) {
  static_assert(sizeof(A) == sizeof(B));
  if (std::memcmp(&a, &b, sizeof(A)) == 0) return ::testing::AssertionSuccess();
  auto r = ::testing::AssertionFailure() << "bytes differ:\n  ours:     ";
  const auto* pa = reinterpret_cast<const unsigned char*>(&a);
  const auto* pb = reinterpret_cast<const unsigned char*>(&b);
  char buf[4];
  for (size_t i = 0; i < sizeof(A); ++i) { std::snprintf(buf, sizeof buf, "%02x ", pa[i]); r << buf; }
  r << "\n  rdma-core: ";
  for (size_t i = 0; i < sizeof(A); ++i) { std::snprintf(buf, sizeof buf, "%02x ", pb[i]); r << buf; }
  return r;
}

// encode_ctrl must write exactly what rdma-core's mlx5dv_set_ctrl_seg writes.
// Signature is left 0 (encode_ctrl has no signature field; WQE signatures are off).
TEST(Mlx5LayoutCheck, EncodeCtrlMatchesMlx5dvSetCtrlSeg) {
  struct Case { uint16_t pi; uint8_t opcode, opmod; uint32_t qpn; uint8_t fm_ce_se, ds; uint32_t imm; };
  const Case cases[] = {
      {0x1234, MLX5_OPCODE_RDMA_WRITE, 0, 0xabcdef, MLX5_WQE_CTRL_CQ_UPDATE, 3, 0},
      {0xffff, MLX5_OPCODE_RDMA_WRITE_IMM, 0, 0x000001,
       MLX5_WQE_CTRL_CQ_UPDATE | MLX5_WQE_CTRL_SOLICITED | MLX5_WQE_CTRL_FENCE, 63, 0xdeadbeef},
      {0x0001, MLX5_OPCODE_ATOMIC_CS, 0x08, 0x123456, MLX5_WQE_CTRL_INITIATOR_SMALL_FENCE, 4, 0x01020304},
      {0x8000, 0x0f /* WAIT */, 0 /* WAIT_CQ_PI */, 0xfedcba, 0, 2, 0},
  };
  for (const Case& c : cases) {
    mlx5_wqe_ctrl_seg theirs;
    std::memset(&theirs, 0xee, sizeof theirs);  // reserved bytes must be set by both
    mlx5dv_set_ctrl_seg(&theirs, c.pi, c.opcode, c.opmod, c.qpn, c.fm_ce_se, c.ds, /*signature=*/0, c.imm);
    theirs.dci_stream_channel_id = 0;  // set_ctrl_seg leaves it alone; encode_ctrl zeroes it

    m::CtrlFields f;
    f.wqe_index = c.pi;
    f.opcode = c.opcode;
    f.opmod = c.opmod;
    f.qpn = c.qpn;
    f.fm_ce_se = c.fm_ce_se;
    f.ds = c.ds;
    f.imm = c.imm;
    const m::CtrlSeg ours = m::encode_ctrl(f);
    EXPECT_TRUE(same_bytes(ours, theirs)) << "pi=" << c.pi << " opcode=" << int(c.opcode);

    // And decode_ctrl reads rdma-core's bytes back to the same fields.
    m::CtrlSeg from_theirs;
    std::memcpy(&from_theirs, &theirs, sizeof theirs);
    const m::CtrlFields back = m::decode_ctrl(from_theirs);
    EXPECT_EQ(back.wqe_index, c.pi);
    EXPECT_EQ(back.opcode, c.opcode);
    EXPECT_EQ(back.opmod, c.opmod);
    EXPECT_EQ(back.qpn, c.qpn);
    EXPECT_EQ(back.ds, c.ds);
    EXPECT_EQ(back.fm_ce_se, c.fm_ce_se);
    EXPECT_EQ(back.imm, c.imm);
  }
}

// encode_data must write exactly what rdma-core's mlx5dv_set_data_seg writes.
TEST(Mlx5LayoutCheck, EncodeDataMatchesMlx5dvSetDataSeg) {
  struct Case { uint64_t addr; uint32_t len, lkey; };
  const Case cases[] = {
      {0x0123456789abcdefull, 0x1000, 0x00c0ffee},
      {0xffffffff00000001ull, 0, MLX5_INVALID_LKEY},  // the RQ terminator shape
      {0x7, 0x7fffffff, 0xffffffff},
  };
  for (const Case& c : cases) {
    mlx5_wqe_data_seg theirs;
    mlx5dv_set_data_seg(&theirs, c.len, c.lkey, uintptr_t(c.addr));
    const m::DataSeg ours = m::encode_data(c.addr, c.len, c.lkey);
    EXPECT_TRUE(same_bytes(ours, theirs)) << "addr=" << c.addr;
  }
}

}  // namespace
