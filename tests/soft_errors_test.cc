// The software RNIC's own error paths: malformed WQEs in the raw mlx5 ring
// are LOCAL_QP_OP error completions (never a crash) and flush what follows;
// a full send ring refuses posts; a CQ with ignore_overrun keeps its
// producer running; RNR NAKs are counted; a crashed peer is a transport
// retry error. (The device-independent RC errors are conformance_errors_test's.)
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

// ---- ring and CQ capacity ---------------------------------------------------------------------------

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

// The software RNIC's counters: a SEND the peer has no receive for is
// RNR-NAKed (and retried) while it waits. (That it completes once a receive
// is posted is conformance_errors_test's.)
TEST_F(Errors, ASendWithoutReceiveIsRnrNakedWhileItWaits) {
  Region src = a.alloc_pattern(16, kLocalWrite, 21);
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 16), kSig, 1));  // rnr_retry = 7: forever
  run_steps(ex, 20'000);
  EXPECT_TRUE(drain(a.cq()).empty()) << "the SEND must still be pending";
  EXPECT_GT(a.stats().rnr_naks + b.stats().rnr_naks, 0u);
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
