// Conformance: cross-channel work requests on every device that has them
// (caps.cross_channel: the software RNIC; rxe with
// driver-patches/linux-6.1-rxe-cross-channel): WAIT releases the WQEs behind
// it exactly when the watched CQ produces the awaited CQE, a managed send
// queue runs nothing a SEND_EN did not release, a managed receive queue
// hands out nothing a RECV_EN did not release, a blocked WAIT is flushed
// when its QP fails, and CQEs dropped by an ignore-overrun CQ still count.
// A device without cross-channel must refuse such QPs and CQs with
// kNotSupported (rnic.h); each test checks that there instead.
// (The mlx5 encoding of these WQEs and the remote patching of the ring are
// soft_cross_channel_test's and soft_hyperloop_trick_test's; here a peer
// patches a pre-posted WRITE through the device's patch map.)
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "conformance_util.h"

namespace hyperloop::conformance {
namespace {

class CrossChannel : public TwoNodeTest {
 protected:
  // A QP on `n` with `attr`, connected to a fresh plain QP on the other node.
  QueuePair& qp_on(Node& n, QpAttr attr) {
    Node& peer = &n == &a ? b : a;
    return *connect(n, attr, peer, peer.qp_attr()).a;
  }
  QpAttr attr_on(Node& n, CompletionQueue& send_cq) {
    QpAttr at = n.qp_attr();
    at.send_cq = &send_cq;
    return at;
  }
  QueuePair& managed_send_on(Node& n, CompletionQueue& cq) {
    QpAttr at = attr_on(n, cq);
    at.managed_send = true;
    return qp_on(n, at);
  }
  QueuePair& master_on(Node& n, CompletionQueue& cq) {
    QpAttr at = attr_on(n, cq);
    at.cross_channel = true;
    return qp_on(n, at);
  }
  // True where the device has cross-channel. Where it does not, checks that
  // it refuses a cross-channel QP, a managed one and an ignore-overrun CQ
  // with kNotSupported, and the test ends there.
  bool has_cross_channel() {
    if (caps().cross_channel) {
      EXPECT_TRUE(caps().managed_queues);
      return true;
    }
    for (int i = 0; i < 3; ++i) {
      QpAttr at = a.qp_attr();
      at.cross_channel = i == 0;
      at.managed_send = i == 1;
      at.managed_recv = i == 2;
      auto qp = a.pd().create_qp(at);
      EXPECT_FALSE(qp.is_ok());
      if (!qp.is_ok()) {
        EXPECT_EQ(qp.status().code(), StatusCode::kNotSupported) << qp.status().to_string();
      }
    }
    if (!caps().cq_ignore_overrun) {
      auto cq = a.device().create_cq(rnic::CqAttr{.cqe_count = 16, .ignore_overrun = true});
      EXPECT_FALSE(cq.is_ok());
      if (!cq.is_ok()) {
        EXPECT_EQ(cq.status().code(), StatusCode::kNotSupported) << cq.status().to_string();
      }
    }
    return false;
  }
};
HL_CONFORMANCE_SUITE(CrossChannel);

TEST_P(CrossChannel, WaitReleasesTheWqesBehindItWhenTheAwaitedCqeIsProduced) {
  if (!has_cross_channel()) return;
  CompletionQueue& watched = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& worker = qp_on(a, attr_on(a, watched));
  Region src = a.alloc_pattern(48, kLocalWrite, 11);
  Region dst = b.alloc(48, kAll, 0);
  HL_ASSERT_OK(post_wait(master, watched, 1));  // the second CQE of `watched`
  HL_ASSERT_OK(post_write(master, src.sge(0, 48), dst.addr(), dst.rkey(), kSig, 7));
  settle(h);
  EXPECT_TRUE(drain(mcq).empty()) << "the WRITE ran before the WAIT was satisfied";
  EXPECT_TRUE(AllBytesAre(dst.data(), 48, 0));

  HL_ASSERT_OK(filler(worker, kSig, 100));  // CQE 0 of `watched`: not yet
  auto w0 = poll_one(watched, h);
  ASSERT_TRUE(w0);
  EXPECT_EQ(w0->status, WcStatus::kSuccess) << describe(*w0);
  settle(h);
  EXPECT_TRUE(drain(mcq).empty()) << "the WAIT released at CQE 0, not 1";
  EXPECT_TRUE(AllBytesAre(dst.data(), 48, 0));

  HL_ASSERT_OK(filler(worker, kSig, 101));  // CQE 1: releases
  auto wc = poll_one(mcq, h);
  ASSERT_TRUE(wc) << "the WAIT never released";
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->wr_id, 7u);
  EXPECT_EQ(wc->opcode, WcOpcode::kRdmaWrite);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 48));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_P(CrossChannel, SignaledWaitCompletesWithTheWaitOpcode) {
  if (!has_cross_channel()) return;
  CompletionQueue& watched = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& worker = qp_on(a, attr_on(a, watched));
  HL_ASSERT_OK(filler(worker, kSig, 1));
  ASSERT_TRUE(poll_one(watched, h));
  HL_ASSERT_OK(post_wait(master, watched, 0, kSig, 55));  // already satisfied
  auto wc = poll_one(mcq, h);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->wr_id, 55u);
  EXPECT_EQ(wc->opcode, WcOpcode::kWait);
}

TEST_P(CrossChannel, ManagedSendQueueRunsOnlyWhatSendEnableReleased) {
  if (!has_cross_channel()) return;
  CompletionQueue& mcq = a.new_cq(64);
  CompletionQueue& scq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& managed = managed_send_on(a, scq);
  Region src = a.alloc_pattern(64, kLocalWrite, 12);
  Region dst = b.alloc(64, kAll, 0);
  const uint32_t start = managed.send_producer();
  HL_ASSERT_OK(post_write(managed, src.sge(0, 32), dst.addr(0), dst.rkey(), kSig, 1));
  const uint32_t after_first = managed.send_producer();
  HL_ASSERT_OK(post_write(managed, src.sge(32, 32), dst.addr(32), dst.rkey(), kSig, 2));
  const uint32_t after_second = managed.send_producer();
  ASSERT_NE(after_first, start);
  settle(h);
  EXPECT_TRUE(drain(scq).empty()) << "a managed queue ran WQEs nobody released";
  EXPECT_TRUE(AllBytesAre(dst.data(), 64, 0));

  HL_ASSERT_OK(post_send_enable(master, managed, after_first, kSig, 90));
  auto en = poll_one(mcq, h);
  ASSERT_TRUE(en);
  EXPECT_EQ(en->status, WcStatus::kSuccess) << describe(*en);
  EXPECT_EQ(en->opcode, WcOpcode::kSendEnable);
  auto w1 = poll_one(scq, h);
  ASSERT_TRUE(w1) << "SEND_EN did not release the first WRITE";
  EXPECT_EQ(w1->wr_id, 1u);
  EXPECT_EQ(w1->status, WcStatus::kSuccess) << describe(*w1);
  settle(h);
  EXPECT_TRUE(drain(scq).empty()) << "SEND_EN released more than up to its index";
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 32));
  EXPECT_TRUE(AllBytesAre(dst.data() + 32, 32, 0));

  HL_ASSERT_OK(post_send_enable(master, managed, after_second));
  auto w2 = poll_one(scq, h);
  ASSERT_TRUE(w2);
  EXPECT_EQ(w2->wr_id, 2u);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 64));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_P(CrossChannel, ManagedReceiveQueueTakesNoSendBeforeRecvEnable) {
  if (!has_cross_channel()) return;
  CompletionQueue& bcq = b.new_cq(64);
  CompletionQueue& bm = b.new_cq(64);
  QueuePair& master = master_on(b, bm);
  QpAttr bat = b.qp_attr();
  bat.send_cq = &bcq;
  bat.recv_cq = &bcq;
  bat.managed_recv = true;
  const QpPair p = connect(a, a.qp_attr(), b, bat);  // a's plain QP -> b's managed receive queue
  Region src = a.alloc_pattern(40, kLocalWrite, 13);
  Region dst = b.alloc(64, kLocalWrite, 0);
  HL_ASSERT_OK(post_recv(*p.b, dst.sge(0, 64), 5));
  const uint32_t enabled = p.b->recv_producer();
  HL_ASSERT_OK(post_send_msg(*p.a, src.sge(0, 40), kSig, 6));
  settle(h);
  EXPECT_TRUE(drain(bcq).empty()) << "a managed receive queue handed out an unreleased RECV";
  EXPECT_TRUE(AllBytesAre(dst.data(), 64, 0));

  HL_ASSERT_OK(post_recv_enable(master, *p.b, enabled));
  auto r = poll_one(bcq, h);
  ASSERT_TRUE(r) << "RECV_EN did not release the RECV";
  EXPECT_EQ(r->status, WcStatus::kSuccess) << describe(*r);
  EXPECT_EQ(r->opcode, WcOpcode::kRecv);
  EXPECT_EQ(r->wr_id, 5u);
  EXPECT_EQ(r->byte_len, 40u);
  auto s = poll_a();
  ASSERT_TRUE(s);
  EXPECT_EQ(s->wr_id, 6u);
  EXPECT_EQ(s->status, WcStatus::kSuccess) << describe(*s);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 40));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_P(CrossChannel, BlockedWaitAndWhatFollowsItAreFlushedWhenTheQpFails) {
  if (!has_cross_channel()) return;
  CompletionQueue& watched = a.new_cq(64);
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  (void)qp_on(a, attr_on(a, watched));  // the watched CQ's user (rxe names CQs through one)
  Region src = a.alloc_pattern(16, kLocalWrite, 14);
  Region dst = b.alloc(16, kAll, 0);
  HL_ASSERT_OK(post_wait(master, watched, 0, kSig, 1));
  HL_ASSERT_OK(post_write(master, src.sge(0, 16), dst.addr(), dst.rkey(), kSig, 2));
  settle(h);
  EXPECT_TRUE(drain(mcq).empty());
  HL_ASSERT_OK(master.set_error());
  const auto wcs = poll_n(mcq, h, 2);
  ASSERT_EQ(wcs.size(), 2u) << "a blocked WAIT hangs its QP in ERROR";
  EXPECT_EQ(wcs[0].wr_id, 1u);
  EXPECT_EQ(wcs[0].status, WcStatus::kFlushed) << describe(wcs[0]);
  EXPECT_EQ(wcs[1].wr_id, 2u);
  EXPECT_EQ(wcs[1].status, WcStatus::kFlushed) << describe(wcs[1]);
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
}

TEST_P(CrossChannel, CqesAnIgnoreOverrunCqCouldNotHoldStillCountForWait) {
  if (!has_cross_channel()) return;
  ASSERT_TRUE(caps().cq_ignore_overrun);
  CompletionQueue& watched = a.new_cq(rnic::CqAttr{.cqe_count = 16, .ignore_overrun = true});
  CompletionQueue& mcq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& worker = qp_on(a, attr_on(a, watched));
  const uint32_t n = watched.size() + 4;  // never polled: overruns by 4
  Region src = a.alloc_pattern(8, kLocalWrite, 15);
  Region dst = b.alloc(8, kAll, 0);
  HL_ASSERT_OK(post_wait(master, watched, n - 1));
  HL_ASSERT_OK(post_write(master, src.sge(0, 8), dst.addr(), dst.rkey(), kSig, 3));
  for (uint32_t i = 0; i + 1 < n; ++i) HL_ASSERT_OK(filler(worker, kSig, i));
  settle(h);  // one CQE short: the WAIT must hold
  EXPECT_TRUE(drain(mcq).empty()) << "the WAIT released one CQE early";
  HL_ASSERT_OK(filler(worker, kSig, n - 1));
  auto wc = poll_one(mcq, h);
  ASSERT_TRUE(wc) << "CQEs dropped by the ignore-overrun CQ did not count";
  EXPECT_EQ(wc->wr_id, 3u);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 8));
  EXPECT_NE(worker.state(), QpState::kError) << "an ignore-overrun CQ failed its producer";
}

// HyperLoop's trick on the device itself: a peer rewrites a pre-posted
// WRITE's target and length in the managed queue's ring (through its patch
// map, registered for remote writes); the WRITE that SEND_EN then releases
// goes where the patch says, with the patched length.
TEST_P(CrossChannel, APeersPatchOfAPrePostedWriteIsWhatRuns) {
  if (!has_cross_channel()) return;
  ASSERT_TRUE(caps().patchable_send_wqes);
  CompletionQueue& mcq = a.new_cq(64);
  CompletionQueue& scq = a.new_cq(64);
  QueuePair& master = master_on(a, mcq);
  QueuePair& managed = managed_send_on(a, scq);
  Region src = a.alloc_pattern(64, kLocalWrite, 16);
  Region decoy = b.alloc(64, kAll, 0);
  Region real = b.alloc(64, kAll, 0);
  const uint32_t index = managed.send_producer();
  HL_ASSERT_OK(post_write(managed, src.sge(0, 64), decoy.addr(), decoy.rkey(), kSig, 1));
  const uint32_t after = managed.send_producer();
  auto map = managed.write_patch_map(index);
  ASSERT_TRUE(IsOk(map));
  EXPECT_EQ(managed.write_patch_map(after).status().code(), StatusCode::kInvalidArgument)
      << "a map of a slot holding no WRITE";
  MemoryRegion& ring = a.register_memory(map->ring.data(), map->ring.size(), kLocalWrite | rnic::kAccessRemoteWrite);

  // The peer's patch: the new address, rkey and length, in the map's byte order.
  Region patch = b.alloc(16, kLocalWrite, 0);
  rnic::put_patch_field(patch.data(), real.addr(8), 8, map->big_endian);
  rnic::put_patch_field(patch.data() + 8, real.rkey(), 4, map->big_endian);
  rnic::put_patch_field(patch.data() + 12, 40, 4, map->big_endian);
  HL_ASSERT_OK(post_write(*qb, patch.sge(0, 8), ring.remote_addr(map->remote_addr), ring.rkey(), 0, 20));
  HL_ASSERT_OK(post_write(*qb, patch.sge(8, 4), ring.remote_addr(map->rkey), ring.rkey(), 0, 21));
  HL_ASSERT_OK(post_write(*qb, patch.sge(12, 4), ring.remote_addr(map->length), ring.rkey(), kSig, 22));
  auto pw = poll_b();
  ASSERT_TRUE(pw);
  ASSERT_EQ(pw->status, WcStatus::kSuccess) << describe(*pw);
  EXPECT_EQ(pw->wr_id, 22u);

  HL_ASSERT_OK(post_send_enable(master, managed, after));
  auto wc = poll_one(scq, h);
  ASSERT_TRUE(wc) << "the patched WRITE never ran";
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->wr_id, 1u);
  EXPECT_TRUE(AllBytesAre(decoy.data(), 64, 0)) << "the WRITE went to the address it was posted with";
  EXPECT_TRUE(AllBytesAre(real.data(), 8, 0));
  EXPECT_TRUE(BytesEqual(real.data() + 8, src.data(), 40));
  EXPECT_TRUE(AllBytesAre(real.data() + 48, 16, 0)) << "the WRITE kept its posted length";
  EXPECT_TRUE(real.guards_intact());
}

TEST_P(CrossChannel, OnlyACrossChannelQpMayPostCrossChannelRequests) {
  if (!has_cross_channel()) return;
  CompletionQueue& watched = a.new_cq(64);
  CompletionQueue& pcq = a.new_cq(64);
  QueuePair& plain = qp_on(a, attr_on(a, pcq));
  (void)qp_on(a, attr_on(a, watched));
  const Status posted = post_wait(plain, watched, 0, kSig, 9);
  if (!posted.is_ok()) {
    // Refused at the post: the QP goes on working.
    EXPECT_EQ(posted.code(), StatusCode::kNotSupported) << posted.to_string();
    HL_ASSERT_OK(filler(plain, kSig, 10));
    auto wc = poll_one(pcq, h);
    ASSERT_TRUE(wc) << "the QP hangs after a refused post";
    EXPECT_EQ(wc->wr_id, 10u);
    EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  } else {
    // Refused at execution (mlx5 semantics): LOCAL_QP_OP, QP to ERROR.
    auto wc = poll_one(pcq, h);
    ASSERT_TRUE(wc) << "the refused WAIT never completed";
    EXPECT_EQ(wc->status, WcStatus::kLocalQpOperationError) << describe(*wc);
    EXPECT_EQ(plain.state(), QpState::kError);
  }
}

}  // namespace
}  // namespace hyperloop::conformance
