// Conformance: strict RC errors on every device. Every failure is an error
// completion with its WcStatus (and, where the device has mlx5 CQEs, its
// syndrome; where it reports one, the failed request's opcode), the QP goes
// to ERROR, later work is flushed, memory outside what a request may
// legally touch is never written; the QP state machine refuses posts before
// RTS; a CQ overrun is reported by poll; RNR and transport retries run out.
// (Malformed WQEs in the raw mlx5 ring are soft_errors_test's.)
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "conformance_util.h"
#include "device_differences.h"

namespace hyperloop::conformance {
namespace {

using device_differences::Case;
using device_differences::expected_status;
using device_differences::misaligned_atomic_refused_at_post;
using device_differences::overrun_stops_the_producer;

class Errors : public TwoNodeTest {};
HL_CONFORMANCE_SUITE(Errors);

// The responder QP's own rights (QueuePair::init) gate inbound requests too.
class QpRights : public DeviceTest {
 protected:
  QpPair connect_with(uint32_t access) { return connect(a, a.qp_attr(), b, b.qp_attr(), access); }
  const rnic::DeviceCaps& caps() const { return a.caps(); }
  Node a{h};
  Node b{h};
};
HL_CONFORMANCE_SUITE(QpRights);

// ---- remote access -------------------------------------------------------------------------

TEST_P(Errors, WriteWithBadRkeyFailsWithRemoteAccessError) {
  Region src = a.alloc_pattern(32, kLocalWrite, 1);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), kSig, 1));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess, WcOpcode::kRdmaWrite);
  EXPECT_EQ(wc->wr_id, 1u);
  EXPECT_EQ(wc->qpn, qa->qpn());
  EXPECT_EQ(qa->state(), QpState::kError);
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_P(Errors, ResponderQpGoesToErrorOnRemoteAccessError) {
  Region src = a.alloc_pattern(32, kLocalWrite, 2);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), kSig, 1));
  ASSERT_TRUE(poll_a());
  EXPECT_TRUE(h.run_until([&] { return qb->state() == QpState::kError; })) << qp_state_name(qb->state());
}

TEST_P(Errors, WqesAfterAnErrorAreFlushed) {
  Region src = a.alloc_pattern(32, kLocalWrite, 3);
  Region dst = b.alloc(32, kAll, 0);
  Region other = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), kSig, 1));
  HL_ASSERT_OK(filler(*qa, kSig, 2));
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), other.addr(), other.rkey(), kSig, 3));
  const auto wcs = poll_n(a.cq(), h, 3);
  ASSERT_EQ(wcs.size(), 3u);
  EXPECT_EQ(wcs[0].status, WcStatus::kRemoteAccessError) << describe(wcs[0]);
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(wcs[i].wr_id, uint64_t(i + 1));
    EXPECT_EQ(wcs[i].status, WcStatus::kFlushed) << describe(wcs[i]);
    EXPECT_TRUE(Mlx5FieldsAre(caps(), wcs[i], mlx5::kSyndromeWrFlush));
  }
  EXPECT_TRUE(ErrorOpcodeIs(caps(), wcs[1], filler_opcode(caps())));
  EXPECT_TRUE(ErrorOpcodeIs(caps(), wcs[2], WcOpcode::kRdmaWrite));
  EXPECT_TRUE(AllBytesAre(other.data(), 32, 0)) << "a flushed WRITE must not execute";
}

TEST_P(Errors, UnsignaledFailingWqeStillCompletes) {
  Region src = a.alloc_pattern(32, kLocalWrite, 4);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), /*flags=*/0, 1));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess, WcOpcode::kRdmaWrite);
  EXPECT_EQ(wc->wr_id, 1u);
}

TEST_P(Errors, UnsignaledWqesAfterAnErrorAreFlushedWithCompletions) {
  Region src = a.alloc_pattern(32, kLocalWrite, 5);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), ~dst.rkey(), kSig, 1));
  HL_ASSERT_OK(filler(*qa, 0, 2));
  HL_ASSERT_OK(filler(*qa, 0, 3));
  const auto wcs = poll_n(a.cq(), h, 3);
  ASSERT_EQ(wcs.size(), 3u);
  EXPECT_EQ(wcs[1].status, WcStatus::kFlushed) << describe(wcs[1]);
  EXPECT_EQ(wcs[1].wr_id, 2u);
  EXPECT_EQ(wcs[2].status, WcStatus::kFlushed) << describe(wcs[2]);
  EXPECT_EQ(wcs[2].wr_id, 3u);
}

TEST_P(Errors, WriteBeyondRegionEndFailsAndLeavesGuardsIntact) {
  Region src = a.alloc_pattern(32, kLocalWrite, 6);
  Region dst = b.alloc(64, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(48), dst.rkey()));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess, WcOpcode::kRdmaWrite);
  EXPECT_TRUE(AllBytesAre(dst.data(), 48, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_P(Errors, WriteStartingBeforeRegionFailsAndLeavesGuardsIntact) {
  Region src = a.alloc_pattern(16, kLocalWrite, 7);
  Region dst = b.alloc(64, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 16), dst.addr() - 8, dst.rkey()));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess, WcOpcode::kRdmaWrite);
  EXPECT_TRUE(AllBytesAre(dst.data() + 8, 56, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_P(Errors, RemoteAddressOverflowIsRemoteAccessError) {
  Region src = a.alloc_pattern(64, kLocalWrite, 8);
  Region dst = b.alloc(64, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 64), ~uint64_t{0} - 8, dst.rkey()));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess, WcOpcode::kRdmaWrite);
  EXPECT_TRUE(AllBytesAre(dst.data(), 64, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_P(Errors, WriteToRegionWithoutRemoteWriteFails) {
  Region src = a.alloc_pattern(32, kLocalWrite, 9);
  Region dst = b.alloc(32, kLocalWrite | rn::kAccessRemoteRead | rn::kAccessRemoteAtomic, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), dst.addr(), dst.rkey()));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess, WcOpcode::kRdmaWrite);
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_P(Errors, ReadFromRegionWithoutRemoteReadFails) {
  Region remote = b.alloc_pattern(32, kLocalWrite | rn::kAccessRemoteWrite | rn::kAccessRemoteAtomic, 10);
  Region local = a.alloc(32, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_read(*qa, local.sge(0, 32), remote.addr(), remote.rkey()));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess, WcOpcode::kRdmaRead);
  EXPECT_TRUE(AllBytesAre(local.data(), 32, 0x11));
  EXPECT_TRUE(local.guards_intact());
}

TEST_P(Errors, AtomicOnRegionWithoutRemoteAtomicFails) {
  Region remote = b.alloc(8, kLocalWrite | rn::kAccessRemoteWrite | rn::kAccessRemoteRead, 0);
  remote.set_u64(0, 5);
  Region result = a.alloc(8, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_cas(*qa, result.sge(0, 8), remote.addr(), remote.rkey(), 5, 6));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRemoteAccessError, mlx5::kSyndromeRemoteAccess, WcOpcode::kAtomicCas);
  EXPECT_EQ(remote.u64(0), 5u);
  EXPECT_TRUE(AllBytesAre(result.data(), 8, 0x11));
}

TEST_P(QpRights, WriteThroughQpWithoutRemoteWriteRightFails) {
  QpPair p = connect_with(rn::kAccessRemoteRead | rn::kAccessRemoteAtomic);
  Region src = a.alloc_pattern(32, kLocalWrite, 12);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*p.a, src.sge(0, 32), dst.addr(), dst.rkey()));
  auto wc = poll_one(a.cq(), h);
  HL_EXPECT_WC_ERROR(caps(), wc, expected_status(caps(), Case::kQpLacksRemoteRight), mlx5::kSyndromeRemoteAccess,
                     WcOpcode::kRdmaWrite);
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
}

TEST_P(QpRights, ReadThroughQpWithoutRemoteReadRightFails) {
  QpPair p = connect_with(rn::kAccessRemoteWrite | rn::kAccessRemoteAtomic);
  Region remote = b.alloc_pattern(32, kAll, 13);
  Region local = a.alloc(32, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_read(*p.a, local.sge(0, 32), remote.addr(), remote.rkey()));
  auto wc = poll_one(a.cq(), h);
  HL_EXPECT_WC_ERROR(caps(), wc, expected_status(caps(), Case::kQpLacksRemoteRight), mlx5::kSyndromeRemoteAccess,
                     WcOpcode::kRdmaRead);
  EXPECT_TRUE(AllBytesAre(local.data(), 32, 0x11));
}

TEST_P(QpRights, AtomicThroughQpWithoutRemoteAtomicRightFails) {
  QpPair p = connect_with(rn::kAccessRemoteWrite | rn::kAccessRemoteRead);
  Region remote = b.alloc(8, kAll, 0);
  remote.set_u64(0, 1);
  Region result = a.alloc(8, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_faa(*p.a, result.sge(0, 8), remote.addr(), remote.rkey(), 1));
  auto wc = poll_one(a.cq(), h);
  HL_EXPECT_WC_ERROR(caps(), wc, expected_status(caps(), Case::kQpLacksRemoteRight), mlx5::kSyndromeRemoteAccess,
                     WcOpcode::kAtomicFaa);
  EXPECT_EQ(remote.u64(0), 1u);
  EXPECT_TRUE(AllBytesAre(result.data(), 8, 0x11));
}

// ---- local protection -------------------------------------------------------------------------

TEST_P(Errors, BadLkeyFailsWithLocalProtectionError) {
  Region src = a.alloc_pattern(32, kLocalWrite, 14);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, Sge{src.addr(), 32, ~src.lkey()}, dst.addr(), dst.rkey(), kSig, 1));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, expected_status(caps(), Case::kGatherSgeUnusable), mlx5::kSyndromeLocalProt,
                     WcOpcode::kRdmaWrite);
  EXPECT_EQ(wc->wr_id, 1u);
  EXPECT_EQ(qa->state(), QpState::kError);
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
}

TEST_P(Errors, LocalSgeBeyondRegionEndFailsWithLocalProtectionError) {
  Region src = a.alloc_pattern(32, kLocalWrite, 15);
  Region dst = b.alloc(64, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(16, 32), dst.addr(), dst.rkey()));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kLocalProtectionError, mlx5::kSyndromeLocalProt, WcOpcode::kRdmaWrite);
  EXPECT_TRUE(AllBytesAre(dst.data(), 64, 0));
}

TEST_P(Errors, ReadIntoRegionWithoutLocalWriteFailsWithLocalProtectionError) {
  Region remote = b.alloc_pattern(32, kAll, 16);
  Region local = a.alloc(32, rn::kAccessRemoteRead, 0x11);
  HL_ASSERT_OK(post_read(*qa, local.sge(0, 32), remote.addr(), remote.rkey()));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kLocalProtectionError, mlx5::kSyndromeLocalProt, WcOpcode::kRdmaRead);
  EXPECT_TRUE(AllBytesAre(local.data(), 32, 0x11));
  EXPECT_TRUE(local.guards_intact());
}

TEST_P(Errors, AtomicResultIntoRegionWithoutLocalWriteFailsWithLocalProtectionError) {
  Region remote = b.alloc(8, kAll, 0);
  Region result = a.alloc(8, rn::kAccessRemoteRead, 0x11);
  HL_ASSERT_OK(post_faa(*qa, result.sge(0, 8), remote.addr(), remote.rkey(), 1));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kLocalProtectionError, mlx5::kSyndromeLocalProt, WcOpcode::kAtomicFaa);
  EXPECT_TRUE(AllBytesAre(result.data(), 8, 0x11));
}

TEST_P(Errors, ReceiveIntoRegionWithoutLocalWriteFailsAtTheReceiver) {
  Region src = a.alloc_pattern(16, kLocalWrite, 17);
  Region rbuf = b.alloc(16, rn::kAccessRemoteRead, 0x11);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 16), 9));
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 16)));
  auto rwc = poll_b();
  HL_EXPECT_WC_ERROR(caps(), rwc, expected_status(caps(), Case::kReceiveScatterUnusable), mlx5::kSyndromeLocalProt,
                     WcOpcode::kRecv);
  EXPECT_EQ(rwc->wr_id, 9u);
  EXPECT_TRUE(AllBytesAre(rbuf.data(), 16, 0x11));
  auto swc = poll_a();
  ASSERT_TRUE(swc);
  EXPECT_NE(swc->status, WcStatus::kSuccess) << describe(*swc);
}

// ---- length and alignment ----------------------------------------------------------------------

TEST_P(Errors, SendLargerThanReceiveFailsOnBothSides) {
  Region src = a.alloc_pattern(32, kLocalWrite, 18);
  Region rbuf = b.alloc(16, kLocalWrite, 0);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 16), 4));
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 32), kSig, 5));
  auto rwc = poll_b();
  HL_EXPECT_WC_ERROR(caps(), rwc, expected_status(caps(), Case::kReceiveTooSmallAtReceiver), mlx5::kSyndromeLocalLength,
                     WcOpcode::kRecv);
  EXPECT_EQ(rwc->wr_id, 4u);
  auto swc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), swc, expected_status(caps(), Case::kReceiveTooSmallAtSender),
                     mlx5::kSyndromeRemoteInvalReq, WcOpcode::kSend);
  EXPECT_EQ(swc->wr_id, 5u);
  EXPECT_TRUE(rbuf.guards_intact());
}

TEST_P(Errors, MisalignedAtomicFailsWithRemoteInvalidRequest) {
  Region remote = b.alloc(16, kAll, 0);
  Region result = a.alloc(8, kLocalWrite, 0x11);
  const Status posted = post_cas(*qa, result.sge(0, 8), remote.addr(4), remote.rkey(), 0, 0xFFFFFFFFFFFFFFFFull);
  if (misaligned_atomic_refused_at_post(caps())) {  // device_differences.h
    EXPECT_EQ(posted.code(), StatusCode::kInvalidArgument) << posted.to_string();
    settle(h);
    EXPECT_TRUE(drain(a.cq()).empty()) << "a refused post must send nothing";
    EXPECT_EQ(qa->state(), QpState::kRts);
  } else {
    HL_ASSERT_OK(posted);
    auto wc = poll_a();
    HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRemoteInvalidRequest, mlx5::kSyndromeRemoteInvalReq,
                       WcOpcode::kAtomicCas);
  }
  EXPECT_TRUE(AllBytesAre(remote.data(), 16, 0));
  EXPECT_TRUE(AllBytesAre(result.data(), 8, 0x11));
}

// ---- QP state and flushing ---------------------------------------------------------------------------

TEST_P(Errors, SetErrorFlushesPostedReceives) {
  Region rbuf = b.alloc(3 * 16, kLocalWrite, 0x11);
  for (int i = 0; i < 3; ++i) HL_ASSERT_OK(post_recv(*qb, rbuf.sge(16 * i, 16), 100 + i));
  HL_ASSERT_OK(qb->set_error());
  EXPECT_EQ(qb->state(), QpState::kError);
  const auto wcs = poll_n(b.cq(), h, 3);
  ASSERT_EQ(wcs.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(wcs[i].status, WcStatus::kFlushed) << describe(wcs[i]);
    EXPECT_EQ(wcs[i].wr_id, uint64_t(100 + i));
  }
  EXPECT_TRUE(AllBytesAre(rbuf.data(), 48, 0x11));
}

TEST_P(Errors, SetErrorFlushesPostedSends) {
  Region src = a.alloc_pattern(16, kLocalWrite, 20);
  Region dst = b.alloc(16, kAll, 0);
  // On soft nothing was stepped before set_error. A device that runs by
  // itself may have started: the SEND first finds no receive at the peer
  // (RNR, retried forever), and RC order keeps the WRITE behind it from
  // executing there.
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 16), kSig, 1));
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 16), dst.addr(), dst.rkey(), kSig, 2));
  HL_ASSERT_OK(filler(*qa, kSig, 3));
  HL_ASSERT_OK(qa->set_error());
  const auto wcs = poll_n(a.cq(), h, 3);
  ASSERT_EQ(wcs.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(wcs[i].status, WcStatus::kFlushed) << describe(wcs[i]);
    EXPECT_EQ(wcs[i].wr_id, uint64_t(i + 1));
  }
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
}

TEST_P(Errors, PostSendOnQpNotYetInRtsIsFailedPrecondition) {
  QueuePair& q = a.new_qp(a.qp_attr());
  QueuePair& peer = b.new_qp(b.qp_attr());
  EXPECT_EQ(q.state(), QpState::kReset);
  EXPECT_EQ(filler(q).code(), StatusCode::kFailedPrecondition) << "RESET";
  HL_ASSERT_OK(q.init(rn::kAccessAllRemote));
  EXPECT_EQ(q.state(), QpState::kInit);
  EXPECT_EQ(filler(q).code(), StatusCode::kFailedPrecondition) << "INIT";
  HL_ASSERT_OK(peer.init(rn::kAccessAllRemote));
  HL_ASSERT_OK(q.connect(peer.address()));
  EXPECT_EQ(q.state(), QpState::kRtr);
  EXPECT_EQ(filler(q).code(), StatusCode::kFailedPrecondition) << "RTR";
}

// Verbs allow posting to a QP in ERROR (the request is flushed); the device
// may instead refuse it. Either way nothing executes.
TEST_P(Errors, PostSendOnQpInErrorIsRefusedOrFlushed) {
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
  settle(h);
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
}

// ---- CQ overrun ---------------------------------------------------------------------------------------

TEST_P(Errors, CqOverrunIsReportedByPollAndStopsTheQp) {
  CompletionQueue& small = a.new_cq(16);
  QpAttr attr = a.qp_attr();
  attr.send_cq = &small;
  QpPair p = connect(a, attr, b, b.qp_attr());
  // size() is what the device made of the 16 asked for (rxe: 31).
  const uint32_t capacity = small.size();
  ASSERT_GE(capacity, 16u);
  for (uint32_t i = 0; i < capacity + 8; ++i) HL_ASSERT_OK(filler(*p.a, kSig, i));
  settle(h);  // nothing polled until all of them could have been written
  // The CQEs that fit may still be returned; then poll reports the overrun
  // (a verbs device learns of it from an asynchronous event, which may come
  // a little after the completions).
  StatusCode code = StatusCode::kOk;
  size_t returned = 0;
  EXPECT_TRUE(h.run_until([&] {
    WorkCompletion wcs[8];
    auto r = small.poll(wcs);
    if (r.is_ok()) {
      returned += *r;
      return false;
    }
    code = r.status().code();
    return true;
  })) << "no overrun reported; " << returned << " completions polled";
  EXPECT_EQ(code, StatusCode::kResourceExhausted);
  EXPECT_LE(returned, capacity);
  // The producer: to ERROR on mlx5 and the software RNIC; rxe reports the
  // overrun and leaves it in RTS (device_differences.h).
  EXPECT_EQ(p.a->state(), overrun_stops_the_producer(caps()) ? QpState::kError : QpState::kRts);
}

// ---- RNR and transport -------------------------------------------------------------------------------

TEST_P(Errors, SendWithoutReceiveIsRetriedUntilAReceiveIsPosted) {
  Region src = a.alloc_pattern(16, kLocalWrite, 21);
  Region rbuf = b.alloc(16, kLocalWrite, 0);
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 16), kSig, 1));  // rnr_retry = 7: forever
  settle(h);  // (that the responder RNR-NAKs meanwhile is soft_errors_test's)
  EXPECT_TRUE(drain(a.cq()).empty()) << "the SEND must still be pending";
  EXPECT_TRUE(drain(b.cq()).empty());
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

TEST_P(Errors, RnrRetriesRunOutWithRnrRetryExceeded) {
  QpAttr attr = a.qp_attr();
  attr.rnr_retry = 1;
  QpPair p = connect(a, attr, b, b.qp_attr());
  Region src = a.alloc_pattern(16, kLocalWrite, 22);
  HL_ASSERT_OK(post_send_msg(*p.a, src.sge(0, 16), kSig, 1));
  auto wc = poll_a();
  HL_EXPECT_WC_ERROR(caps(), wc, WcStatus::kRnrRetryExceeded, mlx5::kSyndromeRnrRetryExc, WcOpcode::kSend);
  EXPECT_EQ(p.a->state(), QpState::kError);
}

// A peer that stops answering: its QP is destroyed after the connection was
// made, so nothing acknowledges the WRITE and the transport retries run out.
// Few retries and a short ACK timeout keep a real device's wall time bounded
// (3 x 4.2 ms); the software RNIC's timer is a NIC option.
class Transport : public ::testing::TestWithParam<std::string> {};
HL_CONFORMANCE_SUITE(Transport);

TEST_P(Transport, WriteToADestroyedPeerQpFailsWithRetryExceeded) {
  Harness h(GetParam(), 23);
  NodeOptions fast;
  fast.soft.ack_timeout_ns = 10'000;  // 100 steps
  Node a(h, fast), b(h);
  QpAttr attr = a.qp_attr();
  attr.retry_count = 2;
  attr.ack_timeout = 10;  // 4.096 us * 2^10
  QpPair p = connect(a, attr, b, b.qp_attr());
  Region src = a.alloc_pattern(16, kLocalWrite, 24);
  Region dst = b.alloc(16, kAll, 0);
  b.destroy_qp(p.b);
  HL_ASSERT_OK(post_write(*p.a, src.sge(0, 16), dst.addr(), dst.rkey(), kSig, 5));
  auto wc = poll_one(a.cq(), h);
  HL_EXPECT_WC_ERROR(a.caps(), wc, WcStatus::kRetryExceeded, mlx5::kSyndromeTransportRetryExc, WcOpcode::kRdmaWrite);
  EXPECT_EQ(wc->wr_id, 5u);
  EXPECT_EQ(p.a->state(), QpState::kError);
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
  EXPECT_TRUE(dst.guards_intact());
}

}  // namespace
}  // namespace hyperloop::conformance
