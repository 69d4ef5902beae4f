// Strict RC errors: every failure is an error completion with the mlx5
// syndrome, the QP goes to ERROR, later work is flushed, and memory outside
// what a request may legally touch is never written.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

using Errors = TwoNodeTest;

// Expects one completion with `status` and `syndrome`; returns it.
#define EXPECT_WC_ERROR(wc, st, synd)                                 \
  do {                                                                \
    ASSERT_TRUE(wc) << "no completion";                               \
    EXPECT_EQ((wc)->status, (st)) << describe(*(wc));                 \
    EXPECT_EQ(int((wc)->syndrome), int(synd)) << describe(*(wc));     \
  } while (0)

// ---- remote access -------------------------------------------------------------------------

TEST_F(Errors, WriteWithBadRkeyFailsWithRemoteAccessError) {
  Region src = a.alloc_pattern(32, kLocalWrite, 1);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), kSig, 1));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_EQ(wc->wr_id, 1u);
  EXPECT_EQ(wc->qpn, qa->qpn());
  EXPECT_EQ(qa->state(), QpState::kError);
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_F(Errors, ResponderQpGoesToErrorOnRemoteAccessError) {
  Region src = a.alloc_pattern(32, kLocalWrite, 2);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), kSig, 1));
  ASSERT_TRUE(poll_a());
  settle(ex);
  EXPECT_EQ(qb->state(), QpState::kError);
}

TEST_F(Errors, WqesAfterAnErrorAreFlushed) {
  Region src = a.alloc_pattern(32, kLocalWrite, 3);
  Region dst = b.alloc(32, kAll, 0);
  Region other = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), kSig, 1));
  HL_ASSERT_OK(post_nop(*qa, kSig, 2));
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), other.addr(), other.rkey(), kSig, 3));
  const auto wcs = poll_n(a.cq(), ex, 3);
  ASSERT_EQ(wcs.size(), 3u);
  EXPECT_EQ(wcs[0].status, WcStatus::kRemoteAccessError) << describe(wcs[0]);
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(wcs[i].wr_id, uint64_t(i + 1));
    EXPECT_EQ(wcs[i].status, WcStatus::kFlushed) << describe(wcs[i]);
    EXPECT_EQ(int(wcs[i].syndrome), int(mlx5::kSyndromeWrFlush)) << describe(wcs[i]);
  }
  EXPECT_TRUE(AllBytesAre(other.data(), 32, 0)) << "a flushed WRITE must not execute";
}

TEST_F(Errors, UnsignaledFailingWqeStillCompletes) {
  Region src = a.alloc_pattern(32, kLocalWrite, 4);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), /*flags=*/0, 1));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_EQ(wc->wr_id, 1u);
}

TEST_F(Errors, UnsignaledWqesAfterAnErrorAreFlushedWithCompletions) {
  Region src = a.alloc_pattern(32, kLocalWrite, 5);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), kSig, 1));
  HL_ASSERT_OK(post_nop(*qa, 0, 2));
  HL_ASSERT_OK(post_nop(*qa, 0, 3));
  const auto wcs = poll_n(a.cq(), ex, 3);
  ASSERT_EQ(wcs.size(), 3u);
  EXPECT_EQ(wcs[1].status, WcStatus::kFlushed) << describe(wcs[1]);
  EXPECT_EQ(wcs[1].wr_id, 2u);
  EXPECT_EQ(wcs[2].status, WcStatus::kFlushed) << describe(wcs[2]);
  EXPECT_EQ(wcs[2].wr_id, 3u);
}

TEST_F(Errors, WriteBeyondRegionEndFailsAndLeavesGuardsIntact) {
  Region src = a.alloc_pattern(32, kLocalWrite, 6);
  Region dst = b.alloc(64, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(48), dst.rkey()));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_TRUE(AllBytesAre(dst.data(), 48, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_F(Errors, WriteStartingBeforeRegionFailsAndLeavesGuardsIntact) {
  Region src = a.alloc_pattern(16, kLocalWrite, 7);
  Region dst = b.alloc(64, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 16), dst.addr() - 8, dst.rkey()));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_TRUE(AllBytesAre(dst.data() + 8, 56, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_F(Errors, RemoteAddressOverflowIsRemoteAccessError) {
  Region src = a.alloc_pattern(64, kLocalWrite, 8);
  Region dst = b.alloc(64, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 64), ~uint64_t{0} - 8, dst.rkey()));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_TRUE(AllBytesAre(dst.data(), 64, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_F(Errors, WriteToRegionWithoutRemoteWriteFails) {
  Region src = a.alloc_pattern(32, kLocalWrite, 9);
  Region dst = b.alloc(32, kLocalWrite | rn::kAccessRemoteRead | rn::kAccessRemoteAtomic, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), dst.rkey()));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_F(Errors, ReadFromRegionWithoutRemoteReadFails) {
  Region remote = b.alloc_pattern(32, kLocalWrite | rn::kAccessRemoteWrite | rn::kAccessRemoteAtomic, 10);
  Region local = a.alloc(32, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_read(*qa, local.sge(0, 32), remote.addr(), remote.rkey()));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_TRUE(AllBytesAre(local.data(), 32, 0x11));
  EXPECT_TRUE(local.guards_intact());
}

TEST_F(Errors, AtomicOnRegionWithoutRemoteAtomicFails) {
  Region remote = b.alloc(8, kLocalWrite | rn::kAccessRemoteWrite | rn::kAccessRemoteRead, 0);
  remote.set_u64(0, 5);
  Region result = a.alloc(8, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_cas(*qa, result.sge(0, 8), remote.addr(), remote.rkey(), 5, 6));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_EQ(remote.u64(0), 5u);
  EXPECT_TRUE(AllBytesAre(result.data(), 8, 0x11));
}

// The responder QP's own rights (QueuePair::init) gate inbound requests too.
class QpRights : public ::testing::Test {
 protected:
  QpPair connect_with(uint32_t access) { return connect(a, a.qp_attr(), b, b.qp_attr(), access); }
  soft::Fabric fabric;
  soft::ManualExecutor ex{11};
  Node a{fabric, ex};
  Node b{fabric, ex};
};

TEST_F(QpRights, WriteThroughQpWithoutRemoteWriteRightFails) {
  QpPair p = connect_with(rn::kAccessRemoteRead | rn::kAccessRemoteAtomic);
  Region src = a.alloc_pattern(32, kLocalWrite, 12);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*p.a, src.sge(0, 32), dst.addr(), dst.rkey()));
  auto wc = poll_one(a.cq(), ex);
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
}

TEST_F(QpRights, ReadThroughQpWithoutRemoteReadRightFails) {
  QpPair p = connect_with(rn::kAccessRemoteWrite | rn::kAccessRemoteAtomic);
  Region remote = b.alloc_pattern(32, kAll, 13);
  Region local = a.alloc(32, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_read(*p.a, local.sge(0, 32), remote.addr(), remote.rkey()));
  auto wc = poll_one(a.cq(), ex);
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_TRUE(AllBytesAre(local.data(), 32, 0x11));
}

TEST_F(QpRights, AtomicThroughQpWithoutRemoteAtomicRightFails) {
  QpPair p = connect_with(rn::kAccessRemoteWrite | rn::kAccessRemoteRead);
  Region remote = b.alloc(8, kAll, 0);
  remote.set_u64(0, 1);
  Region result = a.alloc(8, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_faa(*p.a, result.sge(0, 8), remote.addr(), remote.rkey(), 1));
  auto wc = poll_one(a.cq(), ex);
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess);
  EXPECT_EQ(remote.u64(0), 1u);
  EXPECT_TRUE(AllBytesAre(result.data(), 8, 0x11));
}

// ---- local protection -------------------------------------------------------------------------

TEST_F(Errors, BadLkeyFailsWithLocalProtectionError) {
  Region src = a.alloc_pattern(32, kLocalWrite, 14);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, Sge{src.addr(), 32, ~src.lkey()}, dst.addr(), dst.rkey(), kSig, 1));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kLocalProtectionError, mlx5::kSyndromeLocalProt);
  EXPECT_EQ(wc->wr_id, 1u);
  EXPECT_EQ(qa->state(), QpState::kError);
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
}

TEST_F(Errors, LocalSgeBeyondRegionEndFailsWithLocalProtectionError) {
  Region src = a.alloc_pattern(32, kLocalWrite, 15);
  Region dst = b.alloc(64, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(16, 32), dst.addr(), dst.rkey()));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kLocalProtectionError, mlx5::kSyndromeLocalProt);
  EXPECT_TRUE(AllBytesAre(dst.data(), 64, 0));
}

TEST_F(Errors, ReadIntoRegionWithoutLocalWriteFailsWithLocalProtectionError) {
  Region remote = b.alloc_pattern(32, kAll, 16);
  Region local = a.alloc(32, rn::kAccessRemoteRead, 0x11);
  HL_ASSERT_OK(post_read(*qa, local.sge(0, 32), remote.addr(), remote.rkey()));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kLocalProtectionError, mlx5::kSyndromeLocalProt);
  EXPECT_TRUE(AllBytesAre(local.data(), 32, 0x11));
  EXPECT_TRUE(local.guards_intact());
}

TEST_F(Errors, AtomicResultIntoRegionWithoutLocalWriteFailsWithLocalProtectionError) {
  Region remote = b.alloc(8, kAll, 0);
  Region result = a.alloc(8, rn::kAccessRemoteRead, 0x11);
  HL_ASSERT_OK(post_faa(*qa, result.sge(0, 8), remote.addr(), remote.rkey(), 1));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kLocalProtectionError, mlx5::kSyndromeLocalProt);
  EXPECT_TRUE(AllBytesAre(result.data(), 8, 0x11));
}

TEST_F(Errors, ReceiveIntoRegionWithoutLocalWriteFailsAtTheReceiver) {
  Region src = a.alloc_pattern(16, kLocalWrite, 17);
  Region rbuf = b.alloc(16, rn::kAccessRemoteRead, 0x11);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 16), 9));
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 16)));
  auto rwc = poll_b();
  EXPECT_WC_ERROR(rwc, WcStatus::kLocalProtectionError, mlx5::kSyndromeLocalProt);
  EXPECT_EQ(rwc->wr_id, 9u);
  EXPECT_TRUE(AllBytesAre(rbuf.data(), 16, 0x11));
  auto swc = poll_a();
  ASSERT_TRUE(swc);
  EXPECT_NE(swc->status, WcStatus::kSuccess) << describe(*swc);
}

// ---- length and alignment ----------------------------------------------------------------------

TEST_F(Errors, SendLargerThanReceiveFailsOnBothSides) {
  Region src = a.alloc_pattern(32, kLocalWrite, 18);
  Region rbuf = b.alloc(16, kLocalWrite, 0);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 16), 4));
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 32), kSig, 5));
  auto rwc = poll_b();
  EXPECT_WC_ERROR(rwc, WcStatus::kLocalLengthError, mlx5::kSyndromeLocalLength);
  EXPECT_EQ(rwc->wr_id, 4u);
  auto swc = poll_a();
  EXPECT_WC_ERROR(swc, WcStatus::kRemoteInvalidRequest, mlx5::kSyndromeRemoteInvalReq);
  EXPECT_EQ(swc->wr_id, 5u);
  EXPECT_TRUE(rbuf.guards_intact());
}

TEST_F(Errors, MisalignedAtomicFailsWithRemoteInvalidRequest) {
  Region remote = b.alloc(16, kAll, 0);
  Region result = a.alloc(8, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_cas(*qa, result.sge(0, 8), remote.addr(4), remote.rkey(), 0, 0xFFFFFFFFFFFFFFFFull));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRemoteInvalidRequest, mlx5::kSyndromeRemoteInvalReq);
  EXPECT_TRUE(AllBytesAre(remote.data(), 16, 0));
  EXPECT_TRUE(AllBytesAre(result.data(), 8, 0x11));
}

// ---- malformed WQEs (raw ring) ---------------------------------------------------------------------

class MalformedWqe : public TwoNodeTest {
 protected:
  using Mutation = std::function<void(std::byte* wqe, uint32_t pi)>;
  // Posts `w` through the raw ring, corrupted by `mutate`, and returns its completion.
  std::optional<WorkCompletion> run(const mlx5::SendWqe& w, const Mutation& mutate) {
    pi = raw_post(*qa, w, [&](const mlx5::SendRingView& ring, uint32_t p) { mutate(ring.bb(p), p); });
    return poll_a();
  }
  // Same, for a signaled NOP.
  std::optional<WorkCompletion> run(const Mutation& mutate) { return run(raw_wqe(mlx5::kOpNop, qa->qpn()), mutate); }
  static void set_be16(std::byte* p, uint16_t v) { const uint16_t be = mlx5::to_be16(v); std::memcpy(p, &be, 2); }
  uint32_t pi = 0;
};

TEST_F(MalformedWqe, UnknownOpcodeIsLocalQpOperationError) {
  auto wc = run([](std::byte* w, uint32_t) { w[3] = std::byte{0x03}; });
  EXPECT_WC_ERROR(wc, WcStatus::kLocalQpOperationError, mlx5::kSyndromeLocalQpOp);
  EXPECT_EQ(wc->wr_id, rn::kRawWrId);
  EXPECT_EQ(wc->wqe_counter, uint16_t(pi));
  EXPECT_EQ(qa->state(), QpState::kError);
}

TEST_F(MalformedWqe, ZeroDsIsLocalQpOperationError) {
  auto wc = run([](std::byte* w, uint32_t) { w[7] = std::byte{0}; });
  EXPECT_WC_ERROR(wc, WcStatus::kLocalQpOperationError, mlx5::kSyndromeLocalQpOp);
}

TEST_F(MalformedWqe, DsTooSmallForOpcodeIsLocalQpOperationError) {
  Region dst = b.alloc(8, kAll, 0);
  mlx5::SendWqe w = raw_wqe(mlx5::kOpRdmaWrite, qa->qpn());
  w.raddr = dst.addr();
  w.rkey = dst.rkey();
  auto wc = run(w, [](std::byte* p, uint32_t) { p[7] = std::byte{1}; });  // ctrl only, no raddr
  EXPECT_WC_ERROR(wc, WcStatus::kLocalQpOperationError, mlx5::kSyndromeLocalQpOp);
}

TEST_F(MalformedWqe, WrongCtrlQpnIsLocalQpOperationError) {
  auto wc = run(raw_wqe(mlx5::kOpNop, qa->qpn() ^ 0x800001), [](std::byte*, uint32_t) {});
  EXPECT_WC_ERROR(wc, WcStatus::kLocalQpOperationError, mlx5::kSyndromeLocalQpOp);
}

TEST_F(MalformedWqe, WrongWqeIndexIsLocalQpOperationError) {
  auto wc = run([](std::byte* w, uint32_t p) { set_be16(w + 1, uint16_t(p + 5)); });
  EXPECT_WC_ERROR(wc, WcStatus::kLocalQpOperationError, mlx5::kSyndromeLocalQpOp);
}

TEST_F(MalformedWqe, InlineLengthBeyondDsIsLocalQpOperationError) {
  Region dst = b.alloc(64, kAll, 0);
  std::vector<std::byte> payload = pattern(8, 19);
  mlx5::SendWqe w = raw_wqe(mlx5::kOpRdmaWrite, qa->qpn());
  w.raddr = dst.addr();
  w.rkey = dst.rkey();
  w.is_inline = true;
  w.inline_len = 8;
  w.inline_data = payload.data();
  // The inline header claims 200 bytes; ds still says 3 (one inline unit).
  auto wc = run(w, [](std::byte* p, uint32_t) { put_be32(p + 32, 200u | mlx5::kInlineSeg); });
  EXPECT_WC_ERROR(wc, WcStatus::kLocalQpOperationError, mlx5::kSyndromeLocalQpOp);
  EXPECT_TRUE(AllBytesAre(dst.data(), 64, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_F(MalformedWqe, AtomicResultSegmentNotEightBytesIsLocalQpOperationError) {
  Region remote = b.alloc(16, kAll, 0);
  Region result = a.alloc(16, kLocalWrite, 0x11);
  mlx5::SendWqe w = raw_wqe(mlx5::kOpAtomicFa, qa->qpn());
  w.raddr = remote.addr();
  w.rkey = remote.rkey();
  w.swap_add = 1;
  w.num_sge = 1;
  w.sge[0] = result.sge(0, 8);
  auto wc = run(w, [](std::byte* p, uint32_t) { put_be32(p + 48, 16); });
  EXPECT_WC_ERROR(wc, WcStatus::kLocalQpOperationError, mlx5::kSyndromeLocalQpOp);
  EXPECT_TRUE(AllBytesAre(remote.data(), 16, 0));
  EXPECT_TRUE(AllBytesAre(result.data(), 16, 0x11));
}

TEST_F(MalformedWqe, WqesAfterAMalformedWqeAreFlushed) {
  raw_post(*qa, raw_wqe(mlx5::kOpNop, qa->qpn()), [](const mlx5::SendRingView& r, uint32_t p) {
    r.bb(p)[3] = std::byte{0x7f};
  });
  HL_ASSERT_OK(post_nop(*qa, kSig, 42));
  const auto wcs = poll_n(a.cq(), ex, 2);
  ASSERT_EQ(wcs.size(), 2u);
  EXPECT_EQ(wcs[0].status, WcStatus::kLocalQpOperationError) << describe(wcs[0]);
  EXPECT_EQ(wcs[1].status, WcStatus::kFlushed) << describe(wcs[1]);
  EXPECT_EQ(wcs[1].wr_id, 42u);
}

// ---- QP state and flushing ---------------------------------------------------------------------------

TEST_F(Errors, SetErrorFlushesPostedReceives) {
  Region rbuf = b.alloc(3 * 16, kLocalWrite, 0x11);
  for (int i = 0; i < 3; ++i) HL_ASSERT_OK(post_recv(*qb, rbuf.sge(16 * i, 16), 100 + i));
  HL_ASSERT_OK(qb->set_error());
  EXPECT_EQ(qb->state(), QpState::kError);
  const auto wcs = poll_n(b.cq(), ex, 3);
  ASSERT_EQ(wcs.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(wcs[i].status, WcStatus::kFlushed) << describe(wcs[i]);
    EXPECT_EQ(wcs[i].wr_id, uint64_t(100 + i));
  }
  EXPECT_TRUE(AllBytesAre(rbuf.data(), 48, 0x11));
}

TEST_F(Errors, SetErrorFlushesPostedSends) {
  Region src = a.alloc_pattern(16, kLocalWrite, 20);
  Region dst = b.alloc(16, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 16), dst.addr(), dst.rkey(), kSig, 1));
  HL_ASSERT_OK(post_nop(*qa, kSig, 2));
  HL_ASSERT_OK(qa->set_error());  // nothing was stepped: neither WQE ran
  const auto wcs = poll_n(a.cq(), ex, 2);
  ASSERT_EQ(wcs.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(wcs[i].status, WcStatus::kFlushed) << describe(wcs[i]);
    EXPECT_EQ(wcs[i].wr_id, uint64_t(i + 1));
  }
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
}

TEST_F(Errors, PostSendOnQpNotYetInRtsIsFailedPrecondition) {
  QueuePair& q = a.new_qp(a.qp_attr());
  QueuePair& peer = b.new_qp(b.qp_attr());
  EXPECT_EQ(q.state(), QpState::kReset);
  EXPECT_EQ(post_nop(q).code(), StatusCode::kFailedPrecondition) << "RESET";
  HL_ASSERT_OK(q.init(rn::kAccessAllRemote));
  EXPECT_EQ(q.state(), QpState::kInit);
  EXPECT_EQ(post_nop(q).code(), StatusCode::kFailedPrecondition) << "INIT";
  HL_ASSERT_OK(peer.init(rn::kAccessAllRemote));
  HL_ASSERT_OK(q.connect(peer.address()));
  EXPECT_EQ(q.state(), QpState::kRtr);
  EXPECT_EQ(post_nop(q).code(), StatusCode::kFailedPrecondition) << "RTR";
}

// Verbs allow posting to a QP in ERROR (the request is flushed); the device
// may instead refuse it. Either way nothing executes.
TEST_F(Errors, PostSendOnQpInErrorIsRefusedOrFlushed) {
  Region src = a.alloc_pattern(16, kLocalWrite, 25);
  Region dst = b.alloc(16, kAll, 0);
  HL_ASSERT_OK(qa->set_error());
  const Status s = post_write(*qa, src.sge(0, 16), dst.addr(), dst.rkey(), kSig, 7);
  if (s.is_ok()) {
    auto wc = poll_a();
    ASSERT_TRUE(wc) << "a WQE posted in ERROR never completed";
    EXPECT_EQ(wc->status, WcStatus::kFlushed) << describe(*wc);
    EXPECT_EQ(wc->wr_id, 7u);
  } else {
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.to_string();
  }
  settle(ex);
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
}

TEST_F(Errors, PostSendOnFullRingIsResourceExhausted) {
  QpAttr attr = a.qp_attr();
  attr.send_wqebbs = 64;
  QpPair p = connect(a, attr, b, b.qp_attr());
  const uint32_t slots = must(p.a->raw_send_ring(), "raw_send_ring").wqebb_count;
  ASSERT_GE(slots, 64u);
  for (uint32_t i = 0; i < slots; ++i) HL_ASSERT_OK(post_nop(*p.a, i + 1 == slots ? kSig : 0, i));
  EXPECT_EQ(post_nop(*p.a).code(), StatusCode::kResourceExhausted);
  // Once the NIC consumed the ring (and the last completion is polled) posting works again.
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->wr_id, slots - 1);
  HL_EXPECT_OK(post_nop(*p.a, kSig, 1000));
  auto wc2 = poll_a();
  ASSERT_TRUE(wc2);
  EXPECT_EQ(wc2->status, WcStatus::kSuccess) << describe(*wc2);
}

TEST_F(Errors, CqOverrunIsReportedByPollAndStopsTheQp) {
  CompletionQueue& small = a.new_cq(16);
  QpAttr attr = a.qp_attr();
  attr.send_cq = &small;
  QpPair p = connect(a, attr, b, b.qp_attr());
  for (int i = 0; i < 24; ++i) HL_ASSERT_OK(post_nop(*p.a, kSig, i));
  settle(ex);
  // The CQEs that fit may still be returned; then poll reports the overrun.
  StatusCode code = StatusCode::kOk;
  size_t returned = 0;
  for (int i = 0; i < 8 && code == StatusCode::kOk; ++i) {
    WorkCompletion wcs[8];
    auto r = small.poll(wcs);
    if (r.is_ok()) returned += *r; else code = r.status().code();
  }
  EXPECT_EQ(code, StatusCode::kResourceExhausted);
  EXPECT_LE(returned, 16u);
  EXPECT_EQ(p.a->state(), QpState::kError);
}

TEST_F(Errors, IgnoreOverrunCqKeepsTheProducerRunning) {
  CompletionQueue& small = a.new_cq(16, /*ignore_overrun=*/true);
  QpAttr attr = a.qp_attr();
  attr.send_cq = &small;
  QpPair p = connect(a, attr, b, b.qp_attr());
  for (int i = 0; i < 40; ++i) HL_ASSERT_OK(post_nop(*p.a, kSig, i));
  settle(ex);
  EXPECT_EQ(p.a->state(), QpState::kRts);
  HL_ASSERT_OK(post_nop(*p.a, 0, 99));
}

// ---- RNR and transport -------------------------------------------------------------------------------

TEST_F(Errors, SendWithoutReceiveIsRetriedUntilAReceiveIsPosted) {
  Region src = a.alloc_pattern(16, kLocalWrite, 21);
  Region rbuf = b.alloc(16, kLocalWrite, 0);
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 16), kSig, 1));  // rnr_retry = 7: forever
  run_steps(ex, 20'000);
  EXPECT_TRUE(drain(a.cq()).empty()) << "the SEND must still be pending";
  EXPECT_TRUE(drain(b.cq()).empty());
  EXPECT_GT(a.stats().rnr_naks + b.stats().rnr_naks, 0u);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 16), 2));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_TRUE(BytesEqual(rbuf.data(), src.data(), 16));
  auto swc = poll_a();
  ASSERT_TRUE(swc);
  EXPECT_EQ(swc->status, WcStatus::kSuccess) << describe(*swc);
  EXPECT_EQ(qa->state(), QpState::kRts);
}

TEST_F(Errors, RnrRetriesRunOutWithRnrRetryExceeded) {
  QpAttr attr = a.qp_attr();
  attr.rnr_retry = 1;
  QpPair p = connect(a, attr, b, b.qp_attr());
  Region src = a.alloc_pattern(16, kLocalWrite, 22);
  HL_ASSERT_OK(post_send_msg(*p.a, src.sge(0, 16), kSig, 1));
  auto wc = poll_a();
  EXPECT_WC_ERROR(wc, WcStatus::kRnrRetryExceeded, mlx5::kSyndromeRnrRetryExc);
  EXPECT_EQ(p.a->state(), QpState::kError);
}

TEST(Transport, WriteToCrashedPeerFailsWithRetryExceeded) {
  soft::Fabric fabric;
  soft::ManualExecutor ex(23);
  NodeOptions fast;
  fast.nic.ack_timeout_ns = 10'000;  // 100 steps
  Node a(fabric, ex, fast), b(fabric, ex);
  QpAttr attr = a.qp_attr();
  attr.retry_count = 2;
  QpPair p = connect(a, attr, b, b.qp_attr());
  Region src = a.alloc_pattern(16, kLocalWrite, 24);
  Region dst = b.alloc(16, kAll, 0);
  b.nic().crash();
  EXPECT_TRUE(b.nic().crashed());
  HL_ASSERT_OK(post_write(*p.a, src.sge(0, 16), dst.addr(), dst.rkey()));
  auto wc = poll_one(a.cq(), ex);
  EXPECT_WC_ERROR(wc, WcStatus::kRetryExceeded, mlx5::kSyndromeTransportRetryExc);
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
  EXPECT_GT(a.stats().retransmits, 0u);
}

}  // namespace
}  // namespace hyperloop::soft_test
