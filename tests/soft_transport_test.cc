// RC acknowledgements are cumulative: a lost response costs at most a
// retransmission, never a wait for the retransmission timer when a later
// response arrives. These tests drive two NICs by hand (poll_once, one side at
// a time) with time frozen (the executor is never stepped), so a completion
// that needed the retry timer would never come; each is run with PSNs that
// start at 0 and just before the 24-bit wrap-around.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

constexpr uint32_t kPsnMax = 0xffffff;

// Exactly `count` completions, wr_ids first, first + 1, ..., each a success.
::testing::AssertionResult InOrderAndSuccessful(const std::vector<WorkCompletion>& wcs, uint64_t first, size_t count) {
  if (wcs.size() != count)
    return ::testing::AssertionFailure() << wcs.size() << " completions, want " << count;
  for (size_t k = 0; k < count; ++k)
    if (wcs[k].wr_id != first + k || wcs[k].status != WcStatus::kSuccess)
      return ::testing::AssertionFailure() << "completion " << k << ": " << describe(wcs[k]) << ", want wr_id "
                                           << first + k << " and success";
  return ::testing::AssertionSuccess();
}

class CumulativeAck : public ::testing::TestWithParam<uint32_t> {
 protected:
  static NodeOptions options() {
    NodeOptions o;
    o.nic.first_psn = GetParam();
    return o;
  }
  // Packets between a and b are all lost (or none).
  void lossy(bool on) { fabric.set_link_faults(a.nic(), b.nic(), {.drop = on ? 1.0 : 0.0}); }
  // Both NICs poll in turn until nothing moves (time stays frozen: no timer fires).
  void pump() {
    for (int i = 0; i < 64; ++i) {
      a.nic().poll_once();
      b.nic().poll_once();
    }
  }
  std::vector<WorkCompletion> completions() { return drain(a.cq()); }

  soft::Fabric fabric;
  soft::ManualExecutor ex{7};  // never stepped: its virtual time stays put
  Node a{fabric, ex, options()};
  Node b{fabric, ex, options()};
  QpPair p = connect(a, b);
};

// WRITE #1's acknowledgement is lost; WRITE #2's acknowledges both.
TEST_P(CumulativeAck, ALostAckIsCoveredByTheNextAck) {
  Region src = a.alloc_pattern(64, kLocalWrite, 1);
  Region dst = b.alloc(64, kAll, 0);
  HL_ASSERT_OK(post_write(*p.a, src.sge(0, 32), dst.addr(0), dst.rkey(), kSig, 1));
  a.nic().poll_once();  // WRITE #1 leaves
  lossy(true);
  b.nic().poll_once();  // applied; its ACK is lost
  lossy(false);
  EXPECT_TRUE(completions().empty());
  HL_ASSERT_OK(post_write(*p.a, src.sge(32, 32), dst.addr(32), dst.rkey(), kSig, 2));
  pump();
  const auto wcs = completions();
  ASSERT_TRUE(InOrderAndSuccessful(wcs, 1, 2));
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 64));
  EXPECT_EQ(a.stats().retransmits, 0u);
}

// Many lost ACKs in a row: one later ACK frees them all, and the send ring
// is free again at once (the failure this fixes: the ring filled up).
TEST_P(CumulativeAck, OneAckFreesEveryEarlierUnacknowledgedWrite) {
  constexpr int kWrites = 40;
  Region src = a.alloc_pattern(8 * kWrites, kLocalWrite, 2);
  Region dst = b.alloc(8 * kWrites, kAll, 0);
  for (int k = 0; k < kWrites - 1; ++k) {
    HL_ASSERT_OK(post_write(*p.a, src.sge(8 * k, 8), dst.addr(8 * k), dst.rkey(), 0, k));
    a.nic().poll_once();
    lossy(true);
    b.nic().poll_once();
    lossy(false);
  }
  HL_ASSERT_OK(post_write(*p.a, src.sge(8 * (kWrites - 1), 8), dst.addr(8 * (kWrites - 1)), dst.rkey(), kSig, 99));
  pump();
  const auto wcs = completions();
  ASSERT_TRUE(InOrderAndSuccessful(wcs, 99, 1));
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 8 * kWrites));
  EXPECT_EQ(a.stats().retransmits, 0u);
  // Every WQEBB was retired: a full ring's worth posts without kResourceExhausted.
  for (uint32_t k = 0; k < QpAttr{}.send_wqebbs; ++k)
    HL_ASSERT_OK(post_write(*p.a, src.sge(0, 8), dst.addr(0), dst.rkey(), 0, 1000 + k)) << "WQE " << k;
}

// A READ's response is lost; the ACKs of the WRITEs after it show that, and
// the READ (and what follows it) is sent again once, at once, and its data
// arrive. The first transmission's later ACKs, still arriving after the
// retransmission started, must not start another one.
TEST_P(CumulativeAck, ALostReadResponseIsRetransmittedWhenALaterAckArrives) {
  Region remote = b.alloc_pattern(256, kAll, 3);
  Region sink = b.alloc(3 * 16, kAll, 0);
  Region local = a.alloc(256, kLocalWrite, 0);
  Region src = a.alloc_pattern(3 * 16, kLocalWrite, 4);
  HL_ASSERT_OK(post_read(*p.a, local.sge(0, 256), remote.addr(), remote.rkey(), kSig, 1));
  for (int k = 0; k < 3; ++k)
    HL_ASSERT_OK(post_write(*p.a, src.sge(16 * k, 16), sink.addr(16 * k), sink.rkey(), kSig, 2 + k));
  a.nic().poll_once();  // READ and the three WRITEs leave
  lossy(true);
  b.nic().poll_once(1);  // the READ is served; its response is lost
  lossy(false);
  b.nic().poll_once();  // the WRITEs are applied and acknowledged
  // One response at a time: the first ACK starts the retransmission (the READ
  // goes again), the next two arrive while it is under way.
  for (int i = 0; i < 3; ++i) a.nic().poll_once(1);
  EXPECT_EQ(a.stats().retransmits, 1u);
  pump();
  const auto wcs = completions();
  ASSERT_TRUE(InOrderAndSuccessful(wcs, 1, 4));
  EXPECT_EQ(wcs[0].opcode, WcOpcode::kRdmaRead);
  EXPECT_EQ(wcs[0].byte_len, 256u);
  EXPECT_TRUE(BytesEqual(local.data(), remote.data(), 256));
  EXPECT_TRUE(BytesEqual(sink.data(), src.data(), 3 * 16));
  EXPECT_EQ(a.stats().retransmits, 1u);
}

// An atomic's response is lost and a later ACK shows it: the atomic is sent
// again and answered from the responder's record, so it takes effect once.
TEST_P(CumulativeAck, ALostAtomicResponseIsRetransmittedAndAppliedOnce) {
  Region word = b.alloc(8, kAll, 0);
  word.set_u64(0, 40);
  Region sink = b.alloc(16, kAll, 0);
  Region result = a.alloc(8, kLocalWrite, 0);
  Region src = a.alloc_pattern(16, kLocalWrite, 5);
  HL_ASSERT_OK(post_faa(*p.a, result.sge(0, 8), word.addr(), word.rkey(), 2, kSig, 1));
  HL_ASSERT_OK(post_write(*p.a, src.sge(0, 16), sink.addr(), sink.rkey(), kSig, 2));
  a.nic().poll_once();
  lossy(true);
  b.nic().poll_once(1);  // the add is applied; its response is lost
  lossy(false);
  pump();
  const auto wcs = completions();
  ASSERT_TRUE(InOrderAndSuccessful(wcs, 1, 2));
  EXPECT_EQ(result.u64(0), 40u);  // the value before the (one) add
  EXPECT_EQ(word.u64(0), 42u);
  EXPECT_EQ(a.stats().retransmits, 1u);
}

// The same with 40 atomics in flight: the responder remembers the answer of
// every request the requester may have outstanding (it kept only 16, so the
// retransmitted first add found no answer and was never completed).
TEST_P(CumulativeAck, ALostAtomicResponseBehindManyLaterAtomicsIsStillAnsweredOnce) {
  constexpr int kAtomics = 40;
  Region word = b.alloc(8, kAll, 0);
  word.set_u64(0, 1000);
  Region results = a.alloc(8 * kAtomics, kLocalWrite, 0);
  for (int k = 0; k < kAtomics; ++k)
    HL_ASSERT_OK(post_faa(*p.a, results.sge(8 * k, 8), word.addr(), word.rkey(), 1, kSig, uint64_t(k + 1)));
  a.nic().poll_once();
  lossy(true);
  b.nic().poll_once(1);  // the first add is applied; its response is lost
  lossy(false);
  pump();
  const auto wcs = completions();
  ASSERT_TRUE(InOrderAndSuccessful(wcs, 1, kAtomics));
  for (int k = 0; k < kAtomics; ++k) EXPECT_EQ(results.u64(8 * k), 1000u + k) << "add " << k;
  EXPECT_EQ(word.u64(0), 1000u + kAtomics);  // each add applied once
}

// Without a later response the loss is found by the timer, as before.
TEST_P(CumulativeAck, ALostAckWithNothingAfterItIsRecoveredByTheTimer) {
  Region src = a.alloc_pattern(16, kLocalWrite, 6);
  Region dst = b.alloc(16, kAll, 0);
  HL_ASSERT_OK(post_write(*p.a, src.sge(0, 16), dst.addr(), dst.rkey(), kSig, 1));
  a.nic().poll_once();
  lossy(true);
  b.nic().poll_once();
  lossy(false);
  pump();
  EXPECT_TRUE(completions().empty());
  ex.advance_time(soft::NicOptions{}.ack_timeout_ns + 1);
  pump();
  const auto wcs = completions();
  ASSERT_EQ(wcs.size(), 1u);
  EXPECT_EQ(wcs[0].status, WcStatus::kSuccess) << describe(wcs[0]);
  EXPECT_EQ(a.stats().retransmits, 1u);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 16));
}

INSTANTIATE_TEST_SUITE_P(FirstPsn, CumulativeAck, ::testing::Values(0u, kPsnMax - 1, kPsnMax),
                         [](const auto& info) { return "psn_" + std::to_string(info.param); });

TEST(FirstPsn, MoreThan24BitsIsRefused) {
  soft::Fabric fabric;
  soft::NicOptions o;
  o.first_psn = kPsnMax + 1;
  auto nic = fabric.create_nic(o);
  ASSERT_FALSE(nic.is_ok());
  EXPECT_EQ(nic.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace hyperloop::soft_test
