// The software RNIC's mlx5 send ring: completions name the WQEBB counter of
// their WQE, structured posts take the WQEBBs the PRM layout needs, raw ring
// posting, and 16-bit WQE counters that wrap. (What every device does with
// each opcode is conformance_opcodes_test's.)
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

using Opcodes = TwoNodeTest;

// ---- completions ----------------------------------------------------------------------

TEST_F(Opcodes, CompletionReportsTheWqebbCounterOfItsWqe) {
  Region src = a.alloc_pattern(64, kLocalWrite, 2);
  Region dst = b.alloc(64, kAll);
  const uint32_t p0 = qa->send_producer();
  const Sge three[] = {src.sge(0, 8), src.sge(8, 8), src.sge(16, 8)};
  HL_ASSERT_OK(post_nop(*qa, kSig, 1));                                   // p0, 1 WQEBB
  HL_ASSERT_OK(post_write(*qa, three, dst.addr(), dst.rkey(), kSig, 2));  // p0+1, 2 WQEBBs
  HL_ASSERT_OK(post_nop(*qa, kSig, 3));                                   // p0+3
  const auto wcs = poll_n(a.cq(), ex, 3);
  ASSERT_EQ(wcs.size(), 3u);
  EXPECT_EQ(wcs[0].wqe_counter, uint16_t(p0));
  EXPECT_EQ(wcs[1].wqe_counter, uint16_t(p0 + 1));
  EXPECT_EQ(wcs[2].wqe_counter, uint16_t(p0 + 3));
  for (const auto& wc : wcs) EXPECT_EQ(wc.status, WcStatus::kSuccess) << describe(wc);
}

// ---- WQE sizes ----------------------------------------------------------------------------

// Structured posts take as many WQEBBs as the PRM layout needs:
// ceil(ds / 4) with ds = ctrl (+ raddr) + data segments or inline units.
TEST_F(Opcodes, WqebbCountFollowsPrmSegmentSizes) {
  ASSERT_GE(a.nic().caps().max_sge, 4u);
  ASSERT_GE(a.nic().caps().max_inline_data, 100u);
  Region src = a.alloc(256, kLocalWrite);
  Region dst = b.alloc(256, kAll);
  std::vector<std::byte> payload(128);
  auto bbs_of = [&](auto post_fn) -> uint32_t {
    const uint32_t p0 = qa->send_producer();
    const Status s = post_fn();
    EXPECT_TRUE(IsOk(s));
    return uint16_t(qa->send_producer() - p0);
  };
  const Sge sg4[] = {src.sge(0, 8), src.sge(8, 8), src.sge(16, 8), src.sge(24, 8)};
  auto write_n = [&](size_t n) { return post_write(*qa, std::span<const Sge>(sg4, n), dst.addr(), dst.rkey(), 0); };
  auto send_n = [&](size_t n) { return post_send_msg(*qa, std::span<const Sge>(sg4, n), 0); };
  auto write_inline = [&](uint32_t len) {
    return post_write(*qa, Sge{addr_of(payload.data()), len, 0}, dst.addr(), dst.rkey(), kInline);
  };
  auto send_inline = [&](uint32_t len) { return post_send_msg(*qa, Sge{addr_of(payload.data()), len, 0}, kInline); };

  EXPECT_EQ(bbs_of([&] { return post_nop(*qa, 0); }), 1u) << "NOP";
  EXPECT_EQ(bbs_of([&] { return write_n(1); }), 1u) << "WRITE 1 sge";
  EXPECT_EQ(bbs_of([&] { return write_n(2); }), 1u) << "WRITE 2 sges";
  EXPECT_EQ(bbs_of([&] { return write_n(3); }), 2u) << "WRITE 3 sges";
  EXPECT_EQ(bbs_of([&] { return send_n(3); }), 1u) << "SEND 3 sges";
  EXPECT_EQ(bbs_of([&] { return send_n(4); }), 2u) << "SEND 4 sges";
  EXPECT_EQ(bbs_of([&] { return write_inline(12); }), 1u) << "WRITE inline 12";
  EXPECT_EQ(bbs_of([&] { return write_inline(28); }), 1u) << "WRITE inline 28";
  EXPECT_EQ(bbs_of([&] { return write_inline(29); }), 2u) << "WRITE inline 29";
  EXPECT_EQ(bbs_of([&] { return write_inline(100); }), 3u) << "WRITE inline 100";
  EXPECT_EQ(bbs_of([&] { return send_inline(44); }), 1u) << "SEND inline 44";
  EXPECT_EQ(bbs_of([&] { return send_inline(45); }), 2u) << "SEND inline 45";
  EXPECT_EQ(bbs_of([&] { return post_read(*qa, src.sge(0, 8), dst.addr(), dst.rkey(), 0); }), 1u) << "READ";
  EXPECT_EQ(bbs_of([&] { return post_cas(*qa, src.sge(0, 8), dst.addr(), dst.rkey(), 0, 1, 0); }), 1u) << "CAS";
}

// ---- raw ring ---------------------------------------------------------------------------------

TEST_F(Opcodes, RawPostedNopCompletesWithRawWrId) {
  const uint32_t pi = raw_post(*qa, raw_wqe(mlx5::kOpNop, qa->qpn()));
  EXPECT_EQ(uint16_t(qa->send_producer()), uint16_t(pi + 1));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->wr_id, rn::kRawWrId);
  EXPECT_EQ(wc->opcode, WcOpcode::kNop);
  EXPECT_EQ(wc->wqe_counter, uint16_t(pi));
}

TEST_F(Opcodes, RawPostedWriteExecutes) {
  Region src = a.alloc_pattern(32, kLocalWrite, 28);
  Region dst = b.alloc(32, kAll, 0);
  mlx5::SendWqe w = raw_wqe(mlx5::kOpRdmaWrite, qa->qpn());
  w.raddr = dst.addr();
  w.rkey = dst.rkey();
  w.num_sge = 1;
  w.sge[0] = src.sge(0, 32);
  raw_post(*qa, w);
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->opcode, WcOpcode::kRdmaWrite);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 32));
}

TEST_F(Opcodes, UnsignaledRawWqeGivesNoCompletion) {
  raw_post(*qa, raw_wqe(mlx5::kOpNop, qa->qpn(), mlx5::kCtrlCeOnlyError));
  settle(ex);
  EXPECT_TRUE(drain(a.cq()).empty());
  EXPECT_EQ(qa->state(), QpState::kRts);
}

// ---- counter wrap-around -------------------------------------------------------------------

// >65536 WQEBBs through a 64-WQEBB ring: 16-bit wqe_counter wraps, WQEs that
// straddle the ring's end continue at slot 0, and every WRITE still lands.
TEST(OpcodeCounters, SendQueueWqeCounterWrapsPast65536) {
  soft::Fabric fabric;
  soft::ManualExecutor ex(0xC0FFEE);
  Node a(fabric, ex), b(fabric, ex);
  QpAttr attr = a.qp_attr();
  attr.send_wqebbs = 64;
  QueuePair& qa = *connect(a, attr, b, b.qp_attr()).a;
  Region src = a.alloc(64 * 8, kLocalWrite);
  Region dst = b.alloc(64 * 8, kAll);

  uint32_t pi = qa.send_producer();  // our own 32-bit count of WQEBBs posted
  const uint32_t end = pi + 65536 + 3 * 64;
  uint64_t seq = 0;
  int batches = 0;
  while (pi < end) {
    const int n = 8 + batches % 21;  // 8..28 WQEs, at most 56 WQEBBs in flight
    uint32_t last_pi = 0;
    std::vector<std::pair<uint32_t, uint64_t>> written;  // slot, value
    for (int i = 0; i < n; ++i, ++seq) {
      const bool last = i == n - 1;
      const uint32_t flags = last ? kSig : 0;
      const uint32_t slot = uint32_t(seq % 64);
      last_pi = pi;
      Status s;
      if (seq % 3 == 0) {
        s = post_nop(qa, flags, seq);
        pi += 1;
      } else if (seq % 17 == 1) {  // a 2-WQEBB WQE: three SGEs
        src.set_u64(slot * 8, seq);
        const Sge sg[] = {src.sge(slot * 8, 3), src.sge(slot * 8 + 3, 3), src.sge(slot * 8 + 6, 2)};
        s = post_write(qa, sg, dst.addr(slot * 8), dst.rkey(), flags, seq);
        pi += 2;
        written.emplace_back(slot, seq);
      } else {
        src.set_u64(slot * 8, seq);
        s = post_write(qa, src.sge(slot * 8, 8), dst.addr(slot * 8), dst.rkey(), flags, seq);
        pi += 1;
        written.emplace_back(slot, seq);
      }
      ASSERT_TRUE(IsOk(s)) << "seq " << seq;
      ASSERT_EQ(uint16_t(qa.send_producer()), uint16_t(pi)) << "seq " << seq;
    }
    auto wc = poll_one(a.cq(), ex);
    ASSERT_TRUE(wc) << "batch " << batches;
    ASSERT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
    ASSERT_EQ(wc->wr_id, seq - 1);
    ASSERT_EQ(wc->wqe_counter, uint16_t(last_pi)) << "batch " << batches;
    for (auto [slot, value] : written) ASSERT_EQ(dst.u64(slot * 8), value) << "seq " << value;
    ++batches;
  }
  settle(ex);
  EXPECT_TRUE(drain(a.cq()).empty());
  EXPECT_EQ(qa.state(), QpState::kRts);
}

TEST(OpcodeCounters, ReceiveQueueCounterWrapsPast65536) {
  soft::Fabric fabric;
  soft::ManualExecutor ex(0xBEEF);
  Node a(fabric, ex), b(fabric, ex);
  QpAttr battr = b.qp_attr();
  battr.recv_wqes = 16;
  QpPair p = connect(a, a.qp_attr(), b, battr);
  Region src = a.alloc(8 * 8, kLocalWrite);
  Region rbuf = b.alloc(8 * 8, kLocalWrite);
  uint32_t rq = 0;
  for (int batch = 0; rq < 65536 + 40; ++batch) {
    for (int i = 0; i < 8; ++i) HL_ASSERT_OK(post_recv(*p.b, rbuf.sge(8 * i, 8), rq + i));
    for (int i = 0; i < 8; ++i) {
      src.set_u64(8 * i, rq + i);
      HL_ASSERT_OK(post_send_msg(*p.a, src.sge(8 * i, 8), i == 7 ? kSig : 0));
    }
    const auto wcs = poll_n(b.cq(), ex, 8);
    ASSERT_EQ(wcs.size(), 8u) << "batch " << batch;
    for (int i = 0; i < 8; ++i) {
      ASSERT_EQ(wcs[i].status, WcStatus::kSuccess) << describe(wcs[i]);
      ASSERT_EQ(wcs[i].wr_id, uint64_t(rq + i));
      ASSERT_EQ(wcs[i].wqe_counter, uint16_t(rq + i)) << "receive WQE index";
      ASSERT_EQ(rbuf.u64(8 * i), uint64_t(rq + i));
    }
    auto swc = poll_one(a.cq(), ex);
    ASSERT_TRUE(swc);
    ASSERT_EQ(swc->status, WcStatus::kSuccess) << describe(*swc);
    rq += 8;
  }
}

}  // namespace
}  // namespace hyperloop::soft_test
