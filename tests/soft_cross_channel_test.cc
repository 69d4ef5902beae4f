// Cross-channel (CORE-Direct) work requests: WAIT blocks a send queue until a
// CQ has produced a given CQE; SEND_EN / RECV_EN release a managed queue up to
// an index; a managed queue runs nothing else, and reads each WQE only when it
// executes, so patches made before the release are what runs.
// The device-independent part of this specification (the signaled WAIT's
// opcode, a non-cross-channel QP refused, a peer's patch of a pre-posted
// WRITE, ...) is conformance_cross_channel_test.cc, run on soft and on the
// patched rxe; what stays here is the software RNIC's own detail (mlx5 ring
// images, CQ laps, index wrap, RNR counters).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

class CrossChannel : public ::testing::Test {
 protected:
  Node& other(Node& n) { return &n == &a ? b : a; }
  // A QP on `n` connected to a fresh QP on the other node.
  QueuePair& qp_on(Node& n, QpAttr attr) { return *connect(n, attr, other(n), other(n).qp_attr()).a; }
  QueuePair& plain_on(Node& n, CompletionQueue& cq) {
    QpAttr attr = n.qp_attr();
    attr.send_cq = &cq;
    return qp_on(n, attr);
  }
  QueuePair& master_on(Node& n, CompletionQueue& cq) {
    QpAttr attr = n.qp_attr();
    attr.send_cq = &cq;
    attr.cross_channel = true;
    return qp_on(n, attr);
  }
  QueuePair& managed_on(Node& n, CompletionQueue& cq, uint32_t wqebbs = 256) {
    QpAttr attr = n.qp_attr();
    attr.send_cq = &cq;
    attr.managed_send = true;
    attr.send_wqebbs = wqebbs;
    return qp_on(n, attr);
  }
  static uint16_t producer(const QueuePair& qp) { return uint16_t(qp.send_producer()); }

  // A cross-channel request the device refuses: post_send returns one of
  // `codes`, or the WQE completes with LOCAL_QP_OP and the QP goes to ERROR.
  // Either way the queue must not hang.
  void expect_refused(QueuePair& qp, CompletionQueue& cq, const Status& posted,
                      std::initializer_list<StatusCode> codes) {
    if (!posted.is_ok()) {
      EXPECT_NE(std::find(codes.begin(), codes.end(), posted.code()), codes.end()) << posted.to_string();
      HL_ASSERT_OK(post_nop(qp, kSig, 0xAB));
      auto wc = poll_one(cq, ex);
      ASSERT_TRUE(wc) << "the QP hangs after a rejected post";
      EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
      EXPECT_EQ(wc->wr_id, 0xABu);
    } else {
      auto wc = poll_one(cq, ex);
      ASSERT_TRUE(wc) << "the refused WQE never completed";
      EXPECT_EQ(wc->status, WcStatus::kLocalQpOperationError) << describe(*wc);
      EXPECT_EQ(int(wc->syndrome), int(mlx5::kSyndromeLocalQpOp));
      EXPECT_EQ(qp.state(), QpState::kError);
    }
  }

  soft::Fabric fabric;
  soft::ManualExecutor ex{0xCC};
  Node a{fabric, ex};
  Node b{fabric, ex};
};

// ---- WAIT -------------------------------------------------------------------------------------

TEST_F(CrossChannel, WaitBlocksLaterWqesUntilTheCqeIsProduced) {
  CompletionQueue& watched = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& worker = plain_on(a, watched);
  Region src = a.alloc_pattern(32, kLocalWrite, 1);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_wait(master, watched, 0));
  HL_ASSERT_OK(post_write(master, src.sge(0, 32), dst.addr(), dst.rkey(), kSig, 7));
  run_steps(ex, 5000);
  EXPECT_TRUE(drain(mcq).empty()) << "the WRITE behind the WAIT ran early";
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
  HL_ASSERT_OK(post_nop(worker, kSig, 1));  // CQE 0 of `watched`; never polled
  auto wc = poll_one(mcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->wr_id, 7u);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 32));
}

TEST_F(CrossChannel, WaitIndexIsTheZeroBasedIndexOfTheAwaitedCqe) {
  CompletionQueue& watched = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& worker = plain_on(a, watched);
  HL_ASSERT_OK(post_wait(master, watched, 2));
  HL_ASSERT_OK(post_nop(master, kSig, 9));
  for (int i = 0; i < 2; ++i) {
    HL_ASSERT_OK(post_nop(worker, kSig, i));
    ASSERT_TRUE(poll_one(watched, ex));
  }
  run_steps(ex, 5000);
  EXPECT_TRUE(drain(mcq).empty()) << "released after 2 CQEs; index 2 is the third";
  HL_ASSERT_OK(post_nop(worker, kSig, 2));
  auto wc = poll_one(mcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->wr_id, 9u);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
}

TEST_F(CrossChannel, WaitForAnAlreadyProducedCqeDoesNotBlock) {
  CompletionQueue& watched = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& worker = plain_on(a, watched);
  for (int i = 0; i < 3; ++i) HL_ASSERT_OK(post_nop(worker, kSig, i));
  ASSERT_EQ(poll_n(watched, ex, 3).size(), 3u);
  HL_ASSERT_OK(post_wait(master, watched, 1));
  HL_ASSERT_OK(post_nop(master, kSig, 5));
  auto wc = poll_one(mcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->wr_id, 5u);
}

TEST_F(CrossChannel, WaitIsReleasedByAReceiveCompletion) {
  CompletionQueue& rcq = b.new_cq(64, /*ignore_overrun=*/true);
  QpAttr battr = b.qp_attr();
  battr.recv_cq = &rcq;
  QpPair p = connect(a, a.qp_attr(), b, battr);
  CompletionQueue& mcq = b.new_cq(64);
  QueuePair& master = master_on(b, mcq);
  Region src = a.alloc_pattern(8, kLocalWrite, 2);
  Region rbuf = b.alloc(8, kLocalWrite);
  HL_ASSERT_OK(post_recv(*p.b, rbuf.sge(0, 8)));
  HL_ASSERT_OK(post_wait(master, rcq, 0));
  HL_ASSERT_OK(post_nop(master, kSig, 3));
  run_steps(ex, 5000);
  EXPECT_TRUE(drain(mcq).empty());
  HL_ASSERT_OK(post_send_msg(*p.a, src.sge(0, 8), 0));
  auto wc = poll_one(mcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->wr_id, 3u);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
}

TEST_F(CrossChannel, WaitBlocksOnlyItsOwnSendQueue) {
  CompletionQueue& watched = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  CompletionQueue& ocq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& other_qp = plain_on(a, ocq);
  Region src = a.alloc_pattern(16, kLocalWrite, 3);
  Region dst = b.alloc(16, kAll, 0);
  HL_ASSERT_OK(post_wait(master, watched, 0));  // never satisfied
  HL_ASSERT_OK(post_nop(master, kSig, 1));
  HL_ASSERT_OK(post_write(other_qp, src.sge(0, 16), dst.addr(), dst.rkey(), kSig, 2));
  auto wc = poll_one(ocq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 16));
  EXPECT_TRUE(drain(mcq).empty());
}

// A 16-entry CQ wraps ~19 laps; the WAIT index keeps counting CQEs, not slots.
TEST_F(CrossChannel, WaitIndexKeepsCountingAcrossManyCqLaps) {
  CompletionQueue& watched = a.new_cq(16);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& worker = plain_on(a, watched);
  for (uint32_t k = 0; k < 300; ++k) {
    SCOPED_TRACE("CQE index " + std::to_string(k));
    HL_ASSERT_OK(post_wait(master, watched, k));
    HL_ASSERT_OK(post_nop(master, kSig, k));
    run_steps(ex, 200);
    ASSERT_TRUE(drain(mcq).empty()) << "released before CQE " << k;
    HL_ASSERT_OK(post_nop(worker, kSig, k));
    auto w = poll_one(watched, ex);
    ASSERT_TRUE(w);
    ASSERT_EQ(w->status, WcStatus::kSuccess) << describe(*w);
    auto m = poll_one(mcq, ex);
    ASSERT_TRUE(m);
    ASSERT_EQ(m->status, WcStatus::kSuccess) << describe(*m);
    ASSERT_EQ(m->wr_id, k);
  }
}

// ---- SEND_EN and managed send queues -------------------------------------------------------------

TEST_F(CrossChannel, ManagedSendQueueExecutesNothingUntilEnabled) {
  CompletionQueue& fcq = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq);
  QueuePair& master = master_on(a, mcq);
  Region src = a.alloc_pattern(32, kLocalWrite, 4);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(fwd, src.sge(0, 32), dst.addr(), dst.rkey(), kSig, 1));
  run_steps(ex, 5000);
  EXPECT_TRUE(drain(fcq).empty());
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0)) << "a managed queue ran a WQE nobody enabled";
  HL_ASSERT_OK(post_send_enable(master, fwd, producer(fwd)));
  auto wc = poll_one(fcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 32));
}

TEST_F(CrossChannel, ManagedSendQueueIgnoresItsDoorbell) {
  CompletionQueue& fcq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq);
  Region src = a.alloc_pattern(32, kLocalWrite, 5);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(fwd, src.sge(0, 32), dst.addr(), dst.rkey(), kSig, 1));
  (void)fwd.ring_send_doorbell(fwd.send_producer());  // may be accepted; must not execute
  run_steps(ex, 5000);
  EXPECT_TRUE(drain(fcq).empty());
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
}

TEST_F(CrossChannel, SendEnableReleasesExactlyUpToItsIndex) {
  CompletionQueue& fcq = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq);
  QueuePair& master = master_on(a, mcq);
  Region src = a.alloc_pattern(3 * 8, kLocalWrite, 6);
  Region dst = b.alloc(3 * 8, kAll, 0);
  const uint32_t p0 = fwd.send_producer();
  for (int i = 0; i < 3; ++i)
    HL_ASSERT_OK(post_write(fwd, src.sge(8 * i, 8), dst.addr(8 * i), dst.rkey(), kSig, i));
  HL_ASSERT_OK(post_send_enable(master, fwd, p0 + 2));  // exclusive limit: WQEs 0 and 1
  const auto first = poll_n(fcq, ex, 2);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].wr_id, 0u);
  EXPECT_EQ(first[1].wr_id, 1u);
  run_steps(ex, 5000);
  EXPECT_TRUE(drain(fcq).empty()) << "the third WQE ran past the enable limit";
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 16));
  EXPECT_TRUE(AllBytesAre(dst.data() + 16, 8, 0));
  HL_ASSERT_OK(post_send_enable(master, fwd, p0 + 3));
  auto wc = poll_one(fcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->wr_id, 2u);
  EXPECT_TRUE(BytesEqual(dst.data() + 16, src.data() + 16, 8));
}

TEST_F(CrossChannel, SignaledSendEnableCompletesWithSendEnableOpcode) {
  CompletionQueue& fcq = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq);
  QueuePair& master = master_on(a, mcq);
  HL_ASSERT_OK(post_nop(fwd, kSig, 1));
  HL_ASSERT_OK(post_send_enable(master, fwd, producer(fwd), kSig, 2));
  auto wc = poll_one(mcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->opcode, WcOpcode::kSendEnable);
  EXPECT_EQ(wc->wr_id, 2u);
  auto fwc = poll_one(fcq, ex);
  ASSERT_TRUE(fwc);
  EXPECT_EQ(fwc->wr_id, 1u);
}

TEST_F(CrossChannel, WaitThenSendEnableReleasesTheManagedQueueWhenTheCqeArrives) {
  CompletionQueue& watched = a.new_cq(64);
  CompletionQueue& fcq = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq);
  QueuePair& master = master_on(a, mcq);
  QueuePair& worker = plain_on(a, watched);
  Region src = a.alloc_pattern(16, kLocalWrite, 7);
  Region dst = b.alloc(16, kAll, 0);
  HL_ASSERT_OK(post_write(fwd, src.sge(0, 16), dst.addr(), dst.rkey(), kSig, 1));
  HL_ASSERT_OK(post_wait(master, watched, 0));
  HL_ASSERT_OK(post_send_enable(master, fwd, producer(fwd)));
  run_steps(ex, 5000);
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
  HL_ASSERT_OK(post_nop(worker, kSig));
  auto wc = poll_one(fcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 16));
}

TEST_F(CrossChannel, SendEnableTargetingAnUnmanagedQpIsLocalQpOperationError) {
  CompletionQueue& pcq = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& plain = plain_on(a, pcq);
  QueuePair& master = master_on(a, mcq);
  HL_ASSERT_OK(post_send_enable(master, plain, producer(plain) + 1, kSig, 1));
  auto wc = poll_one(mcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kLocalQpOperationError) << describe(*wc);
  EXPECT_EQ(int(wc->syndrome), int(mlx5::kSyndromeLocalQpOp));
  EXPECT_EQ(master.state(), QpState::kError);
  EXPECT_EQ(plain.state(), QpState::kRts);
}

TEST_F(CrossChannel, SendEnableTargetingAnUnknownQpnIsLocalQpOperationError) {
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  mlx5::SendWqe w = raw_wqe(mlx5::kOpSendEnable, master.qpn());
  w.max_index = 1;
  w.qpn_cqn = 0xFFFFFE;
  raw_post(master, w);
  auto wc = poll_one(mcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kLocalQpOperationError) << describe(*wc);
  EXPECT_EQ(int(wc->syndrome), int(mlx5::kSyndromeLocalQpOp));
}

TEST_F(CrossChannel, SendEnableTargetingAQpOnAnotherNicIsRefused) {
  CompletionQueue& fcq = b.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& remote_managed = managed_on(b, fcq);
  QueuePair& master = master_on(a, mcq);
  HL_ASSERT_OK(post_nop(remote_managed, kSig, 1));
  const Status s = post_send_enable(master, remote_managed, producer(remote_managed), kSig, 2);
  expect_refused(master, mcq, s,
                 {StatusCode::kInvalidArgument, StatusCode::kNotFound, StatusCode::kNotSupported,
                  StatusCode::kPermissionDenied});
  run_steps(ex, 2000);
  EXPECT_TRUE(drain(fcq).empty()) << "another NIC's master released a managed queue";
}

TEST_F(CrossChannel, SendEnableWithoutCrossChannelIsRefusedWithoutHanging) {
  CompletionQueue& fcq = a.new_cq(64);
  CompletionQueue& cq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq);
  QueuePair& qp = plain_on(a, cq);
  HL_ASSERT_OK(post_nop(fwd, kSig, 1));
  const Status s = post_send_enable(qp, fwd, producer(fwd), kSig, 2);
  expect_refused(qp, cq, s, {StatusCode::kNotSupported});
  run_steps(ex, 2000);
  EXPECT_TRUE(drain(fcq).empty());
}

// ---- patching before the release -----------------------------------------------------------------

TEST_F(CrossChannel, CpuPatchOfAManagedWqeBeforeEnableIsWhatRuns) {
  CompletionQueue& fcq = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq);
  QueuePair& master = master_on(a, mcq);
  Region src = a.alloc_pattern(32, kLocalWrite, 8);
  Region old_dst = b.alloc(32, kAll, 0);
  Region new_dst = b.alloc(32, kAll, 0);
  auto ring = must(fwd.raw_send_ring(), "raw_send_ring");
  const uint32_t pi = fwd.send_producer();
  HL_ASSERT_OK(post_write(fwd, src.sge(0, 8), old_dst.addr(), old_dst.rkey(), kSig, 1));
  std::byte* wqe = ring.bb(pi);
  put_be64(wqe + mlx5::kRaddrOffset, new_dst.addr());
  put_be32(wqe + mlx5::kRkeyOffset, new_dst.rkey());
  put_be32(wqe + mlx5::kSecondSegOffset + mlx5::kDataByteCountOffset, 32);
  HL_ASSERT_OK(post_send_enable(master, fwd, pi + 1));
  auto wc = poll_one(fcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(new_dst.data(), src.data(), 32));
  EXPECT_TRUE(AllBytesAre(old_dst.data(), 32, 0));
}

TEST_F(CrossChannel, RemoteWriteIntoAManagedRingPatchesTheWqe) {
  CompletionQueue& fcq = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq);
  QueuePair& master = master_on(a, mcq);
  QpPair patcher = connect(b, b.qp_attr(), a, a.qp_attr());  // b -> a
  Region src = a.alloc_pattern(24, kLocalWrite, 9);
  Region dst = b.alloc(64, kAll, 0);
  auto ring = must(fwd.raw_send_ring(), "raw_send_ring");
  MemoryRegion& ring_mr = a.register_memory(ring.base, ring.bytes(), kLocalWrite | rn::kAccessRemoteWrite);
  const uint32_t pi = fwd.send_producer();
  HL_ASSERT_OK(post_write(fwd, src.sge(0, 1), /*raddr=*/0, /*rkey=*/0, kSig, 1));  // placeholders
  const uint64_t wqe = addr_of(ring.bb(pi));
  Region patch = b.alloc(16, kLocalWrite);
  put_be64(patch.data(), dst.addr(16));
  put_be32(patch.data() + 8, dst.rkey());
  put_be32(patch.data() + 12, 24);
  HL_ASSERT_OK(post_write(*patcher.a, patch.sge(0, 12), wqe + mlx5::kRaddrOffset, ring_mr.rkey(), 0));
  HL_ASSERT_OK(post_write(*patcher.a, patch.sge(12, 4),
                          wqe + mlx5::kSecondSegOffset + mlx5::kDataByteCountOffset, ring_mr.rkey(), kSig, 2));
  auto pwc = poll_one(b.cq(), ex);
  ASSERT_TRUE(pwc);
  ASSERT_EQ(pwc->status, WcStatus::kSuccess) << describe(*pwc);
  HL_ASSERT_OK(post_send_enable(master, fwd, pi + 1));
  auto wc = poll_one(fcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
  EXPECT_TRUE(BytesEqual(dst.data() + 16, src.data(), 24));
  EXPECT_TRUE(AllBytesAre(dst.data() + 40, 24, 0));
}

TEST_F(CrossChannel, ReceiveScatterIntoAManagedRingPatchesTheWqe) {
  CompletionQueue& fcq = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq);
  QueuePair& master = master_on(a, mcq);
  QpPair in = connect(b, b.qp_attr(), a, a.qp_attr());  // in.b on a receives
  Region src = a.alloc_pattern(32, kLocalWrite, 10);
  Region dst = b.alloc(64, kAll, 0);
  auto ring = must(fwd.raw_send_ring(), "raw_send_ring");
  MemoryRegion& ring_mr = a.register_memory(ring.base, ring.bytes(), kLocalWrite);
  const uint32_t pi = fwd.send_producer();
  HL_ASSERT_OK(post_write(fwd, src.sge(0, 1), 0, 0, kSig, 1));
  const uint64_t wqe = addr_of(ring.bb(pi));
  const Sge sg[] = {{wqe + mlx5::kRaddrOffset, 8, ring_mr.lkey()},
                    {wqe + mlx5::kRkeyOffset, 4, ring_mr.lkey()},
                    {wqe + mlx5::kSecondSegOffset + mlx5::kDataByteCountOffset, 4, ring_mr.lkey()}};
  HL_ASSERT_OK(post_recv(*in.b, sg, 3));
  Region msg = b.alloc(16, kLocalWrite);
  put_be64(msg.data(), dst.addr(8));
  put_be32(msg.data() + 8, dst.rkey());
  put_be32(msg.data() + 12, 32);
  HL_ASSERT_OK(post_send_msg(*in.a, msg.sge(0, 16), 0));
  auto rwc = poll_one(a.cq(), ex);
  ASSERT_TRUE(rwc);
  ASSERT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  ASSERT_EQ(rwc->wr_id, 3u);
  HL_ASSERT_OK(post_send_enable(master, fwd, pi + 1));
  auto wc = poll_one(fcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(AllBytesAre(dst.data(), 8, 0));
  EXPECT_TRUE(BytesEqual(dst.data() + 8, src.data(), 32));
  EXPECT_TRUE(AllBytesAre(dst.data() + 40, 24, 0));
}

// ---- index wrap-around --------------------------------------------------------------------------

// >65536 WQEBBs through a 64-WQEBB managed ring, released in two steps per
// batch, so SEND_EN limits cross 0xffff -> 0 at varying points.
TEST_F(CrossChannel, SendEnableIndicesWrapPast65536) {
  CompletionQueue& fcq = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& fwd = managed_on(a, fcq, 64);
  QueuePair& master = master_on(a, mcq);
  uint32_t pi = fwd.send_producer();  // our own 32-bit count
  const uint32_t end = pi + 65536 + 3 * 64;
  for (int batch = 0; pi < end; ++batch) {
    SCOPED_TRACE("batch " + std::to_string(batch) + " pi " + std::to_string(pi));
    const uint32_t n = 5 + batch % 27;  // 5..31 NOPs
    const uint32_t first = pi;
    for (uint32_t i = 0; i < n; ++i) HL_ASSERT_OK(post_nop(fwd, i + 1 == n ? kSig : 0, pi + i));
    pi += n;
    ASSERT_EQ(producer(fwd), uint16_t(pi));
    HL_ASSERT_OK(post_send_enable(master, fwd, first + n / 2, kSig, 1));
    auto m1 = poll_one(mcq, ex);
    ASSERT_TRUE(m1);
    ASSERT_EQ(m1->status, WcStatus::kSuccess) << describe(*m1);
    run_steps(ex, 100);
    ASSERT_TRUE(drain(fcq).empty()) << "the last WQE ran before it was enabled";
    HL_ASSERT_OK(post_send_enable(master, fwd, pi, kSig, 2));
    auto m2 = poll_one(mcq, ex);
    ASSERT_TRUE(m2);
    ASSERT_EQ(m2->status, WcStatus::kSuccess) << describe(*m2);
    auto wc = poll_one(fcq, ex);
    ASSERT_TRUE(wc);
    ASSERT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
    ASSERT_EQ(wc->wr_id, uint64_t(pi - 1));
    ASSERT_EQ(wc->wqe_counter, uint16_t(pi - 1));
  }
}

// ---- RECV_EN and managed receive queues ------------------------------------------------------------

TEST_F(CrossChannel, InboundSendWaitsForRecvEnable) {
  CompletionQueue& rcq = b.new_cq(64);
  CompletionQueue& mcq = b.new_cq(64);
  QpAttr battr = b.qp_attr();
  battr.recv_cq = &rcq;
  battr.managed_recv = true;
  QpPair p = connect(a, a.qp_attr(), b, battr);  // rnr_retry 7: retried forever
  QueuePair& master = master_on(b, mcq);
  Region src = a.alloc_pattern(16, kLocalWrite, 11);
  Region rbuf = b.alloc(16, kLocalWrite, 0);
  HL_ASSERT_OK(post_recv(*p.b, rbuf.sge(0, 16), 5));
  HL_ASSERT_OK(post_send_msg(*p.a, src.sge(0, 16), kSig, 6));
  run_steps(ex, 20'000);
  EXPECT_TRUE(drain(rcq).empty()) << "a receive WQE nobody enabled was consumed";
  EXPECT_TRUE(drain(a.cq()).empty());
  EXPECT_TRUE(AllBytesAre(rbuf.data(), 16, 0));
  EXPECT_GT(a.stats().rnr_naks + b.stats().rnr_naks, 0u);
  HL_ASSERT_OK(post_recv_enable(master, *p.b, p.b->recv_producer()));
  auto rwc = poll_one(rcq, ex);
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->wr_id, 5u);
  EXPECT_TRUE(BytesEqual(rbuf.data(), src.data(), 16));
  auto swc = poll_one(a.cq(), ex);
  ASSERT_TRUE(swc);
  EXPECT_EQ(swc->status, WcStatus::kSuccess) << describe(*swc);
}

TEST_F(CrossChannel, RecvEnableReleasesExactlyUpToItsIndex) {
  CompletionQueue& rcq = b.new_cq(64);
  CompletionQueue& mcq = b.new_cq(64);
  QpAttr battr = b.qp_attr();
  battr.recv_cq = &rcq;
  battr.managed_recv = true;
  QpPair p = connect(a, a.qp_attr(), b, battr);
  QueuePair& master = master_on(b, mcq);
  Region src = a.alloc_pattern(16, kLocalWrite, 12);
  Region rbuf = b.alloc(2 * 16, kLocalWrite, 0);
  const uint32_t r0 = p.b->recv_producer();
  HL_ASSERT_OK(post_recv(*p.b, rbuf.sge(0, 16), 1));
  HL_ASSERT_OK(post_recv(*p.b, rbuf.sge(16, 16), 2));
  HL_ASSERT_OK(post_recv_enable(master, *p.b, r0 + 1));
  HL_ASSERT_OK(post_send_msg(*p.a, src.sge(0, 8), 0));
  HL_ASSERT_OK(post_send_msg(*p.a, src.sge(8, 8), 0));
  auto first = poll_one(rcq, ex);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->wr_id, 1u);
  run_steps(ex, 20'000);
  EXPECT_TRUE(drain(rcq).empty()) << "the second receive was consumed before RECV_EN";
  HL_ASSERT_OK(post_recv_enable(master, *p.b, r0 + 2));
  auto second = poll_one(rcq, ex);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->wr_id, 2u);
  EXPECT_TRUE(BytesEqual(rbuf.data() + 16, src.data() + 8, 8));
}

TEST_F(CrossChannel, RecvEnableTargetingAnUnmanagedQpIsLocalQpOperationError) {
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  HL_ASSERT_OK(post_recv_enable(master, *connect(a, b).a, 1, kSig, 1));
  auto wc = poll_one(mcq, ex);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kLocalQpOperationError) << describe(*wc);
}

}  // namespace
}  // namespace hyperloop::soft_test
