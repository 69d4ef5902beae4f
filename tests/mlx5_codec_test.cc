// Specs for the mlx5 WQE/CQE codec (rnic/wqe_codec.cc, hyperloop/mlx5/wqe.h).
//
// Expected bytes are written out by hand from the tables in
// shared/research/mlx5-prm-facts.md (§1.2 ctrl, §1.3 raddr, §1.4 atomic,
// §1.5 data, §1.6 inline, §1.7 WAIT/SEND_EN/RECV_EN, §1.10 CQE), never computed
// with the codec's own helpers, so a wrong layout fails here.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "hyperloop/mlx5/prm.h"
#include "hyperloop/mlx5/wqe.h"

namespace {

namespace m = hyperloop::mlx5;
using Bytes = std::vector<uint8_t>;

constexpr uint8_t kFill = 0xaa;  // ring memory the codec has not written

// Concatenates byte lists: cat({ctrl...}, {raddr...}, ...).
Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}
Bytes zeros(size_t n) { return Bytes(n, 0); }

// A send ring over plain memory, pre-filled with kFill.
struct SendRing {
  explicit SendRing(uint32_t wqebbs) : mem(size_t(wqebbs) * 64, std::byte{kFill}) {
    view.base = mem.data();
    view.wqebb_count = wqebbs;
  }
  // `n` bytes of the ring starting at absolute byte offset `off` (no wrap).
  Bytes at(size_t off, size_t n) const {
    Bytes b(n);
    if (n) std::memcpy(b.data(), mem.data() + off, n);
    return b;
  }
  Bytes slot(uint32_t s) const { return at(size_t(s) * 64, 64); }
  void poke(size_t off, uint8_t v) { mem[off] = std::byte{v}; }
  void poke_be32(size_t off, uint32_t v) {
    for (int i = 0; i < 4; ++i) poke(off + i, uint8_t(v >> (24 - 8 * i)));
  }
  std::vector<std::byte> mem;
  m::SendRingView view;
};

m::SendWqe make(uint8_t opcode, uint32_t qpn = 0x123456, uint8_t fm_ce_se = m::kCtrlCqUpdate) {
  m::SendWqe w;
  w.ctrl.opcode = opcode;
  w.ctrl.qpn = qpn;
  w.ctrl.fm_ce_se = fm_ce_se;
  return w;
}

m::SendWqe rdma_write_one_sge() {
  m::SendWqe w = make(m::kOpRdmaWrite);
  w.raddr = 0x1122334455667788ull;
  w.rkey = 0xa1b2c3d4;
  w.num_sge = 1;
  w.sge[0] = {0x0102030405060708ull, 0x100, 0xdeadbeef};
  return w;
}

m::SendWqe atomic_cs() {
  m::SendWqe w = make(m::kOpAtomicCs);
  w.raddr = 0x0000700000001000ull;
  w.rkey = 0x00000042;
  w.swap_add = 0x0102030405060708ull;
  w.compare = 0x1112131415161718ull;
  w.num_sge = 1;
  w.sge[0] = {0x2000, 8, 0x55};
  return w;
}

m::SendWqe wait_wqe(uint32_t index, uint32_t cqn) {
  m::SendWqe w = make(m::kOpWait);
  w.ctrl.opmod = m::kWaitCqPi;
  w.max_index = index;
  w.qpn_cqn = cqn;
  return w;
}

m::SendWqe send_with_sges(uint32_t n) {
  m::SendWqe w = make(m::kOpSend);
  w.num_sge = n;
  for (uint32_t i = 0; i < n; ++i) w.sge[i] = {0x10000ull * (i + 1), 64 * (i + 1), 0x700 + i};
  return w;
}

// Decodes at `ci` into a fresh SendWqe.
struct Decoded {
  m::WqeError err;
  m::SendWqe wqe;
  uint32_t wqebbs = 0;
};
Decoded decode(const SendRing& r, uint32_t ci) {
  Decoded d;
  d.err = m::decode_send_wqe(r.view, ci, &d.wqe, &d.wqebbs);
  return d;
}

// Encodes a valid WQE at pi 0, then lets the test corrupt it.
Decoded decode_after_patch(SendRing& r, const m::SendWqe& w, void (*patch)(SendRing&)) {
  EXPECT_GT(m::encode_send_wqe(r.view, 0, w), 0u);
  patch(r);
  return decode(r, 0);
}

// ============================================================================
// Encoding: byte-exact against the fact-sheet tables.
// ============================================================================

// RDMA_WRITE, one SGE: ctrl 0-15, raddr at 16, data at 32, ds = 3, one WQEBB,
// the tail of the WQEBB zeroed.
TEST(Mlx5Encode, RdmaWriteWithOneSgeIsByteExact) {
  SendRing r(8);
  ASSERT_EQ(m::encode_send_wqe(r.view, 5, rdma_write_one_sge()), 1u);
  const Bytes want = cat({
      // ctrl: opmod 00 | wqe_index 0005 | opcode 08 ; qpn 123456 | ds 03 ;
      //       signature 00, dci 0000, fm_ce_se 08 (CQ_UPDATE) ; imm 0
      {0x00, 0x00, 0x05, 0x08, 0x12, 0x34, 0x56, 0x03, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 0},
      // raddr BE64, rkey BE32, reserved
      {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0xa1, 0xb2, 0xc3, 0xd4, 0, 0, 0, 0},
      // data: byte_count BE32, lkey BE32, addr BE64
      {0x00, 0x00, 0x01, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08},
      zeros(16),
  });
  EXPECT_EQ(r.slot(5), want);
  EXPECT_EQ(r.slot(4), Bytes(64, kFill)) << "neighbouring slots untouched";
  EXPECT_EQ(r.slot(6), Bytes(64, kFill));
}

// The immediate is copied as-is into bytes 12-15 (the caller passes network order).
TEST(Mlx5Encode, RdmaWriteImmCopiesImmRawIntoBytes12To15) {
  SendRing r(4);
  m::SendWqe w = rdma_write_one_sge();
  w.ctrl.opcode = m::kOpRdmaWriteImm;
  const uint8_t imm_bytes[4] = {0xca, 0xfe, 0xba, 0xbe};
  std::memcpy(&w.ctrl.imm, imm_bytes, 4);
  ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), 1u);
  EXPECT_EQ(r.at(0, 16), Bytes({0x00, 0x00, 0x00, 0x09, 0x12, 0x34, 0x56, 0x03, 0x00, 0x00, 0x00, 0x08,
                                0xca, 0xfe, 0xba, 0xbe}));
}

// fm_ce_se lands in byte 11 and opmod in byte 0, untouched.
TEST(Mlx5Encode, CopiesOpmodToByte0AndFlagsToByte11) {
  SendRing r(4);
  m::SendWqe w = make(m::kOpNop, 0x000001, m::kCtrlFence | m::kCtrlCqUpdate | m::kCtrlSolicited);
  w.ctrl.opmod = 0x5a;
  ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), 1u);
  EXPECT_EQ(r.at(0, 12), Bytes({0x5a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x8a}));
}

// The QPN field is 24 bits: higher bits of the caller's qpn must not leak into it.
TEST(Mlx5Encode, TruncatesQpnTo24Bits) {
  SendRing r(4);
  ASSERT_EQ(m::encode_send_wqe(r.view, 0, make(m::kOpNop, 0xff123456)), 1u);
  EXPECT_EQ(r.at(4, 4), Bytes({0x12, 0x34, 0x56, 0x01}));
}

// NOP: ctrl only, ds = 1, the rest of the WQEBB zero.
TEST(Mlx5Encode, NopIsCtrlOnlyWithDs1) {
  SendRing r(4);
  ASSERT_EQ(m::encode_send_wqe(r.view, 2, make(m::kOpNop)), 1u);
  EXPECT_EQ(r.slot(2), cat({{0x00, 0x00, 0x02, 0x00, 0x12, 0x34, 0x56, 0x01, 0, 0, 0, 0x08, 0, 0, 0, 0},
                            zeros(48)}));
}

// The encoder computes ds and wqe_index itself, ignoring whatever the caller left.
TEST(Mlx5Encode, IgnoresCallerDsAndWqeIndex) {
  SendRing r(4);
  m::SendWqe w = rdma_write_one_sge();
  w.ctrl.ds = 60;
  w.ctrl.wqe_index = 0x7777;
  ASSERT_EQ(m::encode_send_wqe(r.view, 1, w), 1u);
  EXPECT_EQ(r.at(64 + 1, 2), Bytes({0x00, 0x01}));
  EXPECT_EQ(r.at(64 + 7, 1), Bytes({0x03}));
}

// ATOMIC_CS: ctrl, raddr, atomic {swap BE64, compare BE64}, one 8-byte data seg; ds = 4.
TEST(Mlx5Encode, AtomicCsIsByteExactWithDs4) {
  SendRing r(4);
  ASSERT_EQ(m::encode_send_wqe(r.view, 0, atomic_cs()), 1u);
  const Bytes want = cat({
      {0x00, 0x00, 0x00, 0x11, 0x12, 0x34, 0x56, 0x04, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 0},
      {0x00, 0x00, 0x70, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x42, 0, 0, 0, 0},
      {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18},
      {0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x55, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00},
  });
  EXPECT_EQ(r.slot(0), want);
}

// The atomic result segment always says 8 bytes, whatever length the SGE carries.
TEST(Mlx5Encode, AtomicResultSegmentIsAlways8Bytes) {
  SendRing r(4);
  m::SendWqe w = atomic_cs();
  w.sge[0].length = 4096;
  ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), 1u);
  EXPECT_EQ(r.at(48, 4), Bytes({0x00, 0x00, 0x00, 0x08}));
}

// ATOMIC_FA: opcode 0x12, the addend in swap_add (bytes 32-39).
TEST(Mlx5Encode, AtomicFaPutsAddendInSwapAdd) {
  SendRing r(4);
  m::SendWqe w = atomic_cs();
  w.ctrl.opcode = m::kOpAtomicFa;
  w.swap_add = 0x00000000000000ffull;
  w.compare = 0;
  ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), 1u);
  EXPECT_EQ(r.at(3, 1), Bytes({0x12}));
  EXPECT_EQ(r.at(7, 1), Bytes({0x04}));
  EXPECT_EQ(r.at(32, 16), cat({{0, 0, 0, 0, 0, 0, 0, 0xff}, zeros(8)}));
}

// WAIT: ds = 2; segment bytes 16-23 reserved, BE32 max_index at 24, BE32 cqn at 28.
TEST(Mlx5Encode, WaitIsByteExactWithDs2) {
  SendRing r(4);
  ASSERT_EQ(m::encode_send_wqe(r.view, 3, wait_wqe(0x00abcdef, 0x000321)), 1u);
  const Bytes want = cat({
      {0x00, 0x00, 0x03, 0x0f, 0x12, 0x34, 0x56, 0x02, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 0},
      {0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xab, 0xcd, 0xef, 0x00, 0x00, 0x03, 0x21},
      zeros(32),
  });
  EXPECT_EQ(r.slot(3), want);
  EXPECT_EQ(m::kWaitEnIndexOffset, 24u);
}

// SEND_EN (0x17) and RECV_EN (0x16): same segment, target QPN at 28.
TEST(Mlx5Encode, SendEnableAndRecvEnableShareTheWaitLayout) {
  for (uint8_t op : {uint8_t(m::kOpSendEnable), uint8_t(m::kOpRecvEnable)}) {
    SCOPED_TRACE(int(op));
    SendRing r(4);
    m::SendWqe w = make(op, 0x000010, m::kCtrlFenceInitiatorSmall);
    w.max_index = 0x1234;
    w.qpn_cqn = 0x00beef;
    ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), 1u);
    EXPECT_EQ(r.at(0, 32),
              cat({{0x00, 0x00, 0x00, op, 0x00, 0x00, 0x10, 0x02, 0x00, 0x00, 0x00, 0x20, 0, 0, 0, 0},
                   {0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x12, 0x34, 0x00, 0x00, 0xbe, 0xef}}));
  }
}

// SEND has no raddr: data segments start at byte 16; ds = 1 + num_sge.
TEST(Mlx5Encode, SendDataSegmentsFollowCtrlDirectly) {
  SendRing r(4);
  m::SendWqe w = make(m::kOpSend);
  w.num_sge = 2;
  w.sge[0] = {0xaabbccdd00112233ull, 0x40, 0x01020304};
  w.sge[1] = {0x0000000000000010ull, 0x7fffffff, 0x05060708};
  ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), 1u);
  EXPECT_EQ(r.slot(0),
            cat({{0x00, 0x00, 0x00, 0x0a, 0x12, 0x34, 0x56, 0x03, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 0},
                 {0x00, 0x00, 0x00, 0x40, 0x01, 0x02, 0x03, 0x04, 0xaa, 0xbb, 0xcc, 0xdd, 0x00, 0x11, 0x22, 0x33},
                 {0x7f, 0xff, 0xff, 0xff, 0x05, 0x06, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0x10},
                 zeros(16)}));
}

// A 0-byte READ (a flush) has no data segment at all: ds = 2 (fact sheet §1.5).
TEST(Mlx5Encode, ZeroLengthReadHasNoDataSegment) {
  SendRing r(4);
  m::SendWqe w = make(m::kOpRdmaRead);
  w.raddr = 0x1000;
  w.rkey = 7;
  ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), 1u);
  EXPECT_EQ(r.at(0, 8), Bytes({0x00, 0x00, 0x00, 0x10, 0x12, 0x34, 0x56, 0x02}));
  EXPECT_EQ(r.at(32, 32), zeros(32));
}

// 16 SGEs on an RDMA WRITE: ds = 18, 5 WQEBBs, the last data seg at byte 17*16.
TEST(Mlx5Encode, SixteenSgesSpanFiveWqebbs) {
  SendRing r(8);
  m::SendWqe w = rdma_write_one_sge();
  w.num_sge = 16;
  for (uint32_t i = 0; i < 16; ++i) w.sge[i] = {0x100ull * i, i + 1, 0x900 + i};
  ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), 5u);
  EXPECT_EQ(r.at(7, 1), Bytes({18}));
  EXPECT_EQ(r.at(17 * 16, 16), Bytes({0, 0, 0, 16, 0, 0, 0x09, 0x0f, 0, 0, 0, 0, 0, 0, 0x0f, 0x00}));
  EXPECT_EQ(r.at(18 * 16, 32), zeros(32)) << "tail of the 5th WQEBB zeroed";
  EXPECT_EQ(r.slot(5), Bytes(64, kFill));
}

// The ctrl wqe_index is pi & 0xffff, also for counters beyond 65535.
TEST(Mlx5Encode, WqeIndexIsLow16BitsOfPi) {
  SendRing r(8);
  ASSERT_EQ(m::encode_send_wqe(r.view, 0x12345, make(m::kOpNop)), 1u);
  EXPECT_EQ(r.at(5 * 64 + 1, 2), Bytes({0x23, 0x45}));  // slot 0x12345 & 7 = 5
  const Decoded d = decode(r, 0x12345);
  ASSERT_EQ(d.err, m::WqeError::kOk);
  EXPECT_EQ(d.wqe.ctrl.wqe_index, 0x2345);
}

// ---- inline data --------------------------------------------------------------

struct InlineCase {
  uint32_t len;
  uint32_t write_ds;  // hand-computed: 2 + ceil((len + 4) / 16)
};

class Mlx5InlineEncode : public ::testing::TestWithParam<InlineCase> {};

// Header BE32 (0x80000000 | len) right after the fixed segments, payload after
// it, zero padding to the end of the last WQEBB, ds as computed by hand.
TEST_P(Mlx5InlineEncode, WriteAndSendLayOutHeaderPayloadAndDs) {
  const InlineCase c = GetParam();
  std::vector<std::byte> payload(c.len);
  for (uint32_t i = 0; i < c.len; ++i) payload[i] = std::byte(uint8_t(i * 7 + 1));
  const Bytes hdr = {0x80, 0x00, uint8_t(c.len >> 8), uint8_t(c.len)};

  for (uint8_t op : {uint8_t(m::kOpRdmaWrite), uint8_t(m::kOpSend)}) {
    SCOPED_TRACE(op == m::kOpSend ? "SEND" : "RDMA_WRITE");
    const uint32_t fixed = op == m::kOpSend ? 16 : 32;
    const uint32_t ds = op == m::kOpSend ? c.write_ds - 1 : c.write_ds;
    const uint32_t bbs = (ds + 3) / 4;
    SendRing r(16);
    m::SendWqe w = make(op);
    w.raddr = 0x5000;
    w.rkey = 9;
    w.is_inline = true;
    w.inline_len = c.len;
    w.inline_data = payload.data();
    ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), bbs);
    EXPECT_EQ(r.at(7, 1), Bytes({uint8_t(ds)}));
    EXPECT_EQ(r.at(fixed, 4), hdr);
    Bytes want_payload(c.len);
    std::memcpy(want_payload.data(), payload.data(), c.len);
    EXPECT_EQ(r.at(fixed + 4, c.len), want_payload);
    const size_t end = fixed + 4 + c.len;
    EXPECT_EQ(r.at(end, bbs * 64 - end), zeros(bbs * 64 - end)) << "padding zeroed";
    if (bbs < 16) {
      EXPECT_EQ(r.slot(bbs), Bytes(64, kFill));
    }

    const Decoded d = decode(r, 0);
    ASSERT_EQ(d.err, m::WqeError::kOk);
    EXPECT_TRUE(d.wqe.is_inline);
    EXPECT_EQ(d.wqe.inline_len, c.len);
    EXPECT_EQ(d.wqebbs, bbs);
    std::vector<std::byte> back(c.len);
    m::copy_inline(r.view, 0, c.len, back.data());
    EXPECT_EQ(back, payload);
  }
}

INSTANTIATE_TEST_SUITE_P(Lengths, Mlx5InlineEncode,
                         ::testing::Values(InlineCase{1, 3}, InlineCase{12, 3}, InlineCase{13, 4},
                                           InlineCase{28, 4}, InlineCase{29, 5}, InlineCase{512, 35}),
                         [](const auto& info) { return "len" + std::to_string(info.param.len); });

// ---- encode refuses malformed requests, writing nothing ---------------------

TEST(Mlx5Encode, RefusesInlineRead) {
  SendRing r(4);
  const std::byte data[8] = {};
  m::SendWqe w = make(m::kOpRdmaRead);
  w.is_inline = true;
  w.inline_len = 8;
  w.inline_data = data;
  EXPECT_EQ(m::encode_send_wqe(r.view, 0, w), 0u);
  EXPECT_EQ(r.slot(0), Bytes(64, kFill));
}

TEST(Mlx5Encode, RefusesInlineBeyond512Bytes) {
  SendRing r(16);
  std::vector<std::byte> data(513);
  m::SendWqe w = make(m::kOpSend);
  w.is_inline = true;
  w.inline_len = 513;
  w.inline_data = data.data();
  EXPECT_EQ(m::encode_send_wqe(r.view, 0, w), 0u);
  EXPECT_EQ(r.slot(0), Bytes(64, kFill));
}

TEST(Mlx5Encode, RefusesMoreThan16Sges) {
  SendRing r(8);
  m::SendWqe w = send_with_sges(16);
  w.num_sge = 17;
  EXPECT_EQ(m::encode_send_wqe(r.view, 0, w), 0u);
  EXPECT_EQ(r.slot(0), Bytes(64, kFill));
}

TEST(Mlx5Encode, RefusesUnknownOpcode) {
  SendRing r(4);
  EXPECT_EQ(m::encode_send_wqe(r.view, 0, make(0x13)), 0u);
  EXPECT_EQ(r.slot(0), Bytes(64, kFill));
}

// A WQE longer than the whole ring cannot be placed.
TEST(Mlx5Encode, RefusesWqeLargerThanRing) {
  SendRing r(2);
  EXPECT_EQ(m::encode_send_wqe(r.view, 0, send_with_sges(16)), 0u);  // ds 17 = 5 WQEBBs
  EXPECT_EQ(r.slot(0), Bytes(64, kFill));
  EXPECT_EQ(r.slot(1), Bytes(64, kFill));
}

// ============================================================================
// Round trips.
// ============================================================================

void expect_round_trip(const m::SendWqe& w, uint32_t pi, uint32_t want_ds) {
  SendRing r(16);
  const uint32_t bbs = m::encode_send_wqe(r.view, pi, w);
  ASSERT_EQ(bbs, (want_ds + 3) / 4);
  const Decoded d = decode(r, pi);
  ASSERT_EQ(d.err, m::WqeError::kOk) << m::wqe_error_name(d.err);
  EXPECT_EQ(d.wqebbs, bbs);
  EXPECT_EQ(d.wqe.ctrl.opcode, w.ctrl.opcode);
  EXPECT_EQ(d.wqe.ctrl.opmod, w.ctrl.opmod);
  EXPECT_EQ(d.wqe.ctrl.qpn, w.ctrl.qpn);
  EXPECT_EQ(d.wqe.ctrl.fm_ce_se, w.ctrl.fm_ce_se);
  EXPECT_EQ(d.wqe.ctrl.imm, w.ctrl.imm);
  EXPECT_EQ(d.wqe.ctrl.ds, want_ds);
  EXPECT_EQ(d.wqe.ctrl.wqe_index, uint16_t(pi));
  const uint8_t op = w.ctrl.opcode;
  if (op == m::kOpWait || op == m::kOpSendEnable || op == m::kOpRecvEnable) {
    EXPECT_EQ(d.wqe.max_index, w.max_index);
    EXPECT_EQ(d.wqe.qpn_cqn, w.qpn_cqn);
  }
  if (op == m::kOpRdmaWrite || op == m::kOpRdmaWriteImm || op == m::kOpRdmaRead || op == m::kOpAtomicCs ||
      op == m::kOpAtomicFa) {
    EXPECT_EQ(d.wqe.raddr, w.raddr);
    EXPECT_EQ(d.wqe.rkey, w.rkey);
  }
  if (op == m::kOpAtomicCs || op == m::kOpAtomicFa) {
    EXPECT_EQ(d.wqe.swap_add, w.swap_add);
    EXPECT_EQ(d.wqe.compare, w.compare);
  }
  EXPECT_EQ(d.wqe.is_inline, w.is_inline);
  if (w.is_inline) {
    EXPECT_EQ(d.wqe.inline_len, w.inline_len);
  } else if (op != m::kOpNop && op != m::kOpWait && op != m::kOpSendEnable && op != m::kOpRecvEnable) {
    ASSERT_EQ(d.wqe.num_sge, w.num_sge);
    for (uint32_t i = 0; i < w.num_sge; ++i) {
      EXPECT_EQ(d.wqe.sge[i].addr, w.sge[i].addr) << i;
      EXPECT_EQ(d.wqe.sge[i].length, w.sge[i].length) << i;
      EXPECT_EQ(d.wqe.sge[i].lkey, w.sge[i].lkey) << i;
    }
  }
}

TEST(Mlx5RoundTrip, Nop) { expect_round_trip(make(m::kOpNop, 0xabcdef, 0), 3, 1); }

TEST(Mlx5RoundTrip, RdmaWriteWithSges) {
  m::SendWqe w = rdma_write_one_sge();
  w.num_sge = 3;
  w.sge[1] = {0xffffffffffff0000ull, 1, 2};
  w.sge[2] = {0x42, 0, 0xffffffff};  // byte_count 0 survives as 0 (it means 2 GiB)
  expect_round_trip(w, 9, 5);
}

TEST(Mlx5RoundTrip, RdmaWriteImm) {
  m::SendWqe w = rdma_write_one_sge();
  w.ctrl.opcode = m::kOpRdmaWriteImm;
  w.ctrl.imm = 0x78563412;
  expect_round_trip(w, 0, 3);
}

TEST(Mlx5RoundTrip, RdmaReadWithAndWithoutSge) {
  m::SendWqe w = rdma_write_one_sge();
  w.ctrl.opcode = m::kOpRdmaRead;
  expect_round_trip(w, 1, 3);
  w.num_sge = 0;
  expect_round_trip(w, 1, 2);
}

TEST(Mlx5RoundTrip, SendAndSendImmWith16Sges) {
  m::SendWqe w = send_with_sges(16);
  expect_round_trip(w, 12, 17);
  w.ctrl.opcode = m::kOpSendImm;
  w.ctrl.imm = 0x01000000;
  expect_round_trip(w, 12, 17);
}

TEST(Mlx5RoundTrip, AtomicCsAndFa) {
  m::SendWqe w = atomic_cs();
  expect_round_trip(w, 4, 4);
  w.ctrl.opcode = m::kOpAtomicFa;
  w.compare = 0;
  expect_round_trip(w, 4, 4);
}

TEST(Mlx5RoundTrip, WaitSendEnableRecvEnable) {
  expect_round_trip(wait_wqe(0xffffff, 0x000abc), 7, 2);
  m::SendWqe en = make(m::kOpSendEnable);
  en.max_index = 0xffff;
  en.qpn_cqn = 0xfedcba;
  expect_round_trip(en, 7, 2);
  en.ctrl.opcode = m::kOpRecvEnable;
  expect_round_trip(en, 7, 2);
}

TEST(Mlx5RoundTrip, InlineWriteAndSend) {
  const std::byte data[29] = {std::byte{1}, std::byte{2}};
  m::SendWqe w = make(m::kOpRdmaWrite);
  w.raddr = 0xabc;
  w.rkey = 0xdef;
  w.is_inline = true;
  w.inline_len = 29;
  w.inline_data = data;
  expect_round_trip(w, 2, 5);
  w.ctrl.opcode = m::kOpSendImm;
  expect_round_trip(w, 2, 4);
}

// ============================================================================
// Decode rejects malformed WQEs with the matching error.
// ============================================================================

TEST(Mlx5Decode, RejectsUnknownOpcode) {
  for (uint8_t op : {uint8_t(0x13), uint8_t(0x0e) /* TSO: not modelled */, uint8_t(0xff)}) {
    SendRing r(4);
    m::encode_send_wqe(r.view, 0, rdma_write_one_sge());
    r.poke(3, op);
    EXPECT_EQ(decode(r, 0).err, m::WqeError::kBadOpcode) << int(op);
  }
}

TEST(Mlx5Decode, RejectsDsZero) {
  SendRing r(4);
  const Decoded d = decode_after_patch(r, rdma_write_one_sge(), [](SendRing& s) { s.poke(7, 0); });
  EXPECT_EQ(d.err, m::WqeError::kBadDs);
}

// ds is a 6-bit field (kernel MLX5_WQE_CTRL_DS_MASK 0x3f): the top two bits of
// byte 7 are not part of it, so a value above 64 cannot even be expressed.
TEST(Mlx5Decode, DsIsTheLowSixBitsOfByte7) {
  SendRing r(4);
  const Decoded d = decode_after_patch(r, rdma_write_one_sge(), [](SendRing& s) { s.poke(7, 0xc3); });
  ASSERT_EQ(d.err, m::WqeError::kOk);
  EXPECT_EQ(d.wqe.ctrl.ds, 3);
  EXPECT_EQ(d.wqe.num_sge, 1u);
}

// The largest expressible ds (63 = 16 WQEBBs) on a smaller ring is rejected.
TEST(Mlx5Decode, RejectsDsLargerThanTheRing) {
  SendRing r(4);
  const Decoded d = decode_after_patch(r, send_with_sges(1), [](SendRing& s) { s.poke(7, 63); });
  EXPECT_EQ(d.err, m::WqeError::kBadDs);
  SendRing r2(4);
  const Decoded d2 = decode_after_patch(r2, send_with_sges(1), [](SendRing& s) { s.poke(7, 17); });
  EXPECT_EQ(d2.err, m::WqeError::kBadDs) << "17 DS = 5 WQEBBs > 4";
}

// A NOP may span several WQEBBs (hardware NOP padding); its size still counts.
TEST(Mlx5Decode, AcceptsNopPaddingOfAnyDsThatFitsTheRing) {
  SendRing r(4);
  const Decoded d = decode_after_patch(r, make(m::kOpNop), [](SendRing& s) { s.poke(7, 9); });
  EXPECT_EQ(d.err, m::WqeError::kOk);
  EXPECT_EQ(d.wqebbs, 3u);
  SendRing r2(4);
  EXPECT_EQ(decode_after_patch(r2, make(m::kOpNop), [](SendRing& s) { s.poke(7, 17); }).err,
            m::WqeError::kBadDs);
}

TEST(Mlx5Decode, RejectsWaitAndEnableWithDsOtherThan2) {
  for (uint8_t op : {uint8_t(m::kOpWait), uint8_t(m::kOpSendEnable), uint8_t(m::kOpRecvEnable)}) {
    for (uint8_t ds : {uint8_t(1), uint8_t(3), uint8_t(4)}) {
      SendRing r(4);
      m::SendWqe w = wait_wqe(1, 2);
      w.ctrl.opcode = op;
      ASSERT_EQ(m::encode_send_wqe(r.view, 0, w), 1u);
      r.poke(7, ds);
      EXPECT_EQ(decode(r, 0).err, m::WqeError::kBadDs) << "op " << int(op) << " ds " << int(ds);
    }
  }
}

TEST(Mlx5Decode, RejectsAtomicWithDsOtherThan4) {
  for (uint8_t ds : {uint8_t(1), uint8_t(2), uint8_t(3), uint8_t(5), uint8_t(8)}) {
    SendRing r(4);
    ASSERT_EQ(m::encode_send_wqe(r.view, 0, atomic_cs()), 1u);
    r.poke(7, ds);
    EXPECT_EQ(decode(r, 0).err, m::WqeError::kBadDs) << int(ds);
  }
}

// RDMA opcodes need at least ctrl + raddr.
TEST(Mlx5Decode, RejectsRdmaWithoutRaddrSegment) {
  SendRing r(4);
  EXPECT_EQ(decode_after_patch(r, rdma_write_one_sge(), [](SendRing& s) { s.poke(7, 1); }).err,
            m::WqeError::kBadDs);
}

// 17 data segments (ds 18 on SEND, 19 on WRITE) exceed kMaxSge.
TEST(Mlx5Decode, RejectsMoreThan16DataSegments) {
  {
    SendRing r(8);
    const Decoded d = decode_after_patch(r, send_with_sges(16), [](SendRing& s) {
      s.poke(7, 18);
      for (int i = 0; i < 16; ++i) s.poke(17 * 16 + i, 0);  // a 17th ordinary data segment
      s.poke_be32(17 * 16, 64);
    });
    EXPECT_EQ(d.err, m::WqeError::kTooManySge);
  }
  {
    m::SendWqe w = rdma_write_one_sge();
    w.num_sge = 16;
    for (uint32_t i = 1; i < 16; ++i) w.sge[i] = w.sge[0];
    SendRing r(8);
    const Decoded d = decode_after_patch(r, w, [](SendRing& s) {
      s.poke(7, 19);
      for (int i = 0; i < 16; ++i) s.poke(18 * 16 + i, 0);
    });
    EXPECT_EQ(d.err, m::WqeError::kTooManySge);
  }
}

m::SendWqe inline_write(uint32_t len) {
  static std::byte data[600];
  m::SendWqe w = make(m::kOpRdmaWrite);
  w.raddr = 0x1000;
  w.rkey = 1;
  w.is_inline = true;
  w.inline_len = len;
  w.inline_data = data;
  return w;
}

// The inline length in the header must need exactly the remaining DS.
TEST(Mlx5Decode, RejectsInlineLengthThatDoesNotMatchDs) {
  SendRing r(4);  // len 13: ds 4
  EXPECT_EQ(decode_after_patch(r, inline_write(13), [](SendRing& s) { s.poke(7, 5); }).err,
            m::WqeError::kBadInline);
  SendRing r2(4);  // header says 12 (1 DS) where 2 DS follow
  EXPECT_EQ(decode_after_patch(r2, inline_write(13), [](SendRing& s) { s.poke_be32(32, 0x80000000u | 12); }).err,
            m::WqeError::kBadInline);
  SendRing r3(4);  // header says 29 (3 DS) where 2 DS follow
  EXPECT_EQ(decode_after_patch(r3, inline_write(13), [](SendRing& s) { s.poke_be32(32, 0x80000000u | 29); }).err,
            m::WqeError::kBadInline);
}

TEST(Mlx5Decode, RejectsZeroLengthInlineHeader) {
  SendRing r(4);
  EXPECT_EQ(decode_after_patch(r, inline_write(8), [](SendRing& s) { s.poke_be32(32, 0x80000000u); }).err,
            m::WqeError::kBadInline);
}

// 600 bytes with a ds that matches (2 + 38) is still over the 512-byte limit.
TEST(Mlx5Decode, RejectsInlineBeyond512Bytes) {
  SendRing r(16);
  const Decoded d = decode_after_patch(r, inline_write(512), [](SendRing& s) {
    s.poke(7, 40);
    s.poke_be32(32, 0x80000000u | 600);
  });
  EXPECT_EQ(d.err, m::WqeError::kBadInline);
}

// READ cannot carry inline data (there is nothing to send).
TEST(Mlx5Decode, RejectsInlineOnRead) {
  SendRing r(4);
  EXPECT_EQ(decode_after_patch(r, inline_write(8), [](SendRing& s) { s.poke(3, m::kOpRdmaRead); }).err,
            m::WqeError::kBadInline);
}

TEST(Mlx5Decode, RejectsAtomicResultSegmentNot8Bytes) {
  for (uint32_t bc : {0u, 4u, 16u}) {
    SendRing r(4);
    ASSERT_EQ(m::encode_send_wqe(r.view, 0, atomic_cs()), 1u);
    r.poke_be32(48, bc);
    EXPECT_EQ(decode(r, 0).err, m::WqeError::kBadAtomic) << bc;
  }
}

// Every WqeError has its own name (error messages stay distinguishable).
TEST(Mlx5Decode, ErrorNamesAreDistinct) {
  const m::WqeError all[] = {m::WqeError::kOk,        m::WqeError::kBadOpcode, m::WqeError::kBadDs,
                             m::WqeError::kTooManySge, m::WqeError::kBadInline, m::WqeError::kBadAtomic,
                             m::WqeError::kWrongQpn,  m::WqeError::kWrongIndex};
  for (auto a : all)
    for (auto b : all)
      if (a != b) {
        EXPECT_NE(m::wqe_error_name(a), m::wqe_error_name(b));
      }
  EXPECT_EQ(m::wqe_error_name(m::WqeError::kOk), "ok");
}

// ============================================================================
// Ring wrap.
// ============================================================================

// A 2-WQEBB WQE at pi = wqebb_count - 1: its second half is at slot 0, and it
// decodes the same as anywhere else.
TEST(Mlx5Wrap, TwoWqebbWqeAtLastSlotContinuesAtSlot0) {
  SendRing r(8);
  m::SendWqe w = rdma_write_one_sge();
  w.num_sge = 3;  // ds 5
  w.sge[1] = {0x1111, 0x22, 0x33};
  w.sge[2] = {0xa0a0a0a0b0b0b0b0ull, 0x44, 0x55};
  ASSERT_EQ(m::encode_send_wqe(r.view, 7, w), 2u);
  EXPECT_EQ(r.at(7 * 64, 8), Bytes({0x00, 0x00, 0x07, 0x08, 0x12, 0x34, 0x56, 0x05}));
  EXPECT_EQ(r.slot(0), cat({{0, 0, 0, 0x44, 0, 0, 0, 0x55, 0xa0, 0xa0, 0xa0, 0xa0, 0xb0, 0xb0, 0xb0, 0xb0},
                            zeros(48)}));
  for (uint32_t s = 1; s < 7; ++s) EXPECT_EQ(r.slot(s), Bytes(64, kFill)) << s;

  const Decoded d = decode(r, 7);
  ASSERT_EQ(d.err, m::WqeError::kOk);
  EXPECT_EQ(d.wqebbs, 2u);
  ASSERT_EQ(d.wqe.num_sge, 3u);
  EXPECT_EQ(d.wqe.sge[2].addr, 0xa0a0a0a0b0b0b0b0ull);
  EXPECT_EQ(d.wqe.sge[2].length, 0x44u);
  EXPECT_EQ(d.wqe.sge[2].lkey, 0x55u);

  // Same WQE in the middle of a fresh ring: identical decode.
  SendRing flat(8);
  ASSERT_EQ(m::encode_send_wqe(flat.view, 2, w), 2u);
  const Decoded f = decode(flat, 2);
  ASSERT_EQ(f.err, m::WqeError::kOk);
  for (uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(f.wqe.sge[i].addr, d.wqe.sge[i].addr);
    EXPECT_EQ(f.wqe.sge[i].length, d.wqe.sge[i].length);
    EXPECT_EQ(f.wqe.sge[i].lkey, d.wqe.sge[i].lkey);
  }
  EXPECT_EQ(f.wqe.raddr, d.wqe.raddr);
  EXPECT_EQ(f.wqe.rkey, d.wqe.rkey);
}

// A free-running pi on a later lap lands in the same slot and decodes at that ci.
TEST(Mlx5Wrap, FreeRunningCounterOnLaterLap) {
  SendRing r(8);
  m::SendWqe w = send_with_sges(5);  // ds 6, 2 WQEBBs
  ASSERT_EQ(m::encode_send_wqe(r.view, 8 * 3 + 7, w), 2u);
  const Decoded d = decode(r, 8 * 3 + 7);
  ASSERT_EQ(d.err, m::WqeError::kOk);
  EXPECT_EQ(d.wqe.ctrl.wqe_index, 31);
  EXPECT_EQ(d.wqe.num_sge, 5u);
  EXPECT_EQ(d.wqe.sge[4].lkey, 0x704u);
  EXPECT_EQ(r.at(0, 4), Bytes({0x00, 0x00, 0x01, 0x00}));  // sge[3].length = 256, first DS of slot 0
}

// Inline payload split across the ring end: encode and copy_inline both wrap.
TEST(Mlx5Wrap, InlinePayloadAcrossRingEnd) {
  SendRing r(4);
  std::vector<std::byte> payload(100);
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = std::byte(uint8_t(0x30 + i));
  m::SendWqe w = inline_write(100);
  w.inline_data = payload.data();
  ASSERT_EQ(m::encode_send_wqe(r.view, 3, w), 3u);  // ds 2 + 7 = 9 -> slots 3, 0, 1
  EXPECT_EQ(r.at(3 * 64 + 32, 4), Bytes({0x80, 0x00, 0x00, 100}));
  EXPECT_EQ(r.at(3 * 64 + 36, 1), Bytes({0x30}));
  EXPECT_EQ(r.at(0, 1), Bytes({0x30 + 28})) << "slot 0 continues after 28 payload bytes";
  EXPECT_EQ(r.at(64 + 8, 56), zeros(56)) << "padding after byte 100 of the payload";
  EXPECT_EQ(r.slot(2), Bytes(64, kFill));

  const Decoded d = decode(r, 3);
  ASSERT_EQ(d.err, m::WqeError::kOk);
  ASSERT_TRUE(d.wqe.is_inline);
  ASSERT_EQ(d.wqe.inline_len, 100u);
  std::vector<std::byte> back(100);
  m::copy_inline(r.view, 3, 100, back.data());
  EXPECT_EQ(back, payload);
}

// ============================================================================
// Receive WQEs.
// ============================================================================

struct RecvRing {
  RecvRing(uint32_t count, uint32_t stride) : mem(size_t(count) * stride, std::byte{kFill}) {
    view.base = mem.data();
    view.wqe_count = count;
    view.stride = stride;
  }
  Bytes at(size_t off, size_t n) const {
    Bytes b(n);
    if (n) std::memcpy(b.data(), mem.data() + off, n);
    return b;
  }
  std::vector<std::byte> mem;
  m::RecvRingView view;
};

// Shorter than the stride: data segments, then a kInvalidLkey terminator.
TEST(Mlx5Recv, ShortListIsTerminatedWithInvalidLkey) {
  RecvRing r(4, 64);  // 4 segments per WQE
  const m::Sge sges[2] = {{0x0102030405060708ull, 0x10, 0xaabbccdd}, {0x20, 0x30, 0x40}};
  ASSERT_TRUE(m::encode_recv_wqe(r.view, 1, sges));
  EXPECT_EQ(r.at(64, 48),
            cat({{0, 0, 0, 0x10, 0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4, 5, 6, 7, 8},
                 {0, 0, 0, 0x30, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x20},
                 {0, 0, 0, 0, 0x00, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0}}));
  m::Sge out[16];
  ASSERT_EQ(m::decode_recv_wqe(r.view, 1, out), 2u);
  EXPECT_EQ(out[0].addr, 0x0102030405060708ull);
  EXPECT_EQ(out[0].length, 0x10u);
  EXPECT_EQ(out[0].lkey, 0xaabbccddu);
  EXPECT_EQ(out[1].addr, 0x20u);
}

// An empty list is just the terminator.
TEST(Mlx5Recv, EmptyListIsOnlyTheTerminator) {
  RecvRing r(2, 32);
  ASSERT_TRUE(m::encode_recv_wqe(r.view, 0, {}));
  EXPECT_EQ(r.at(4, 4), Bytes({0x00, 0x00, 0x01, 0x00}));
  m::Sge out[16];
  EXPECT_EQ(m::decode_recv_wqe(r.view, 0, out), 0u);
}

// Exactly filling the stride: no terminator, all segments decode.
TEST(Mlx5Recv, FullStrideHasNoTerminator) {
  RecvRing r(2, 32);  // 2 segments per WQE
  const m::Sge sges[2] = {{0x1000, 1, 5}, {0x2000, 2, 6}};
  ASSERT_TRUE(m::encode_recv_wqe(r.view, 1, sges));
  EXPECT_EQ(r.at(32, 32), cat({{0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0x10, 0},
                               {0, 0, 0, 2, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0x20, 0}}));
  m::Sge out[16];
  ASSERT_EQ(m::decode_recv_wqe(r.view, 1, out), 2u);
  EXPECT_EQ(out[1].addr, 0x2000u);
  EXPECT_EQ(out[1].lkey, 6u);
}

TEST(Mlx5Recv, RejectsMoreSgesThanTheStrideHolds) {
  RecvRing r(2, 32);
  const m::Sge sges[3] = {{1, 1, 1}, {2, 2, 2}, {3, 3, 3}};
  EXPECT_FALSE(m::encode_recv_wqe(r.view, 0, sges));
  EXPECT_EQ(r.at(0, 64), Bytes(64, kFill)) << "nothing written";
}

// The receive index is a free-running counter masked by the ring size.
TEST(Mlx5Recv, IndexWrapsWithTheRing) {
  RecvRing r(4, 32);
  const m::Sge sge[1] = {{0xabc, 7, 9}};
  ASSERT_TRUE(m::encode_recv_wqe(r.view, 4 * 5 + 2, sge));
  EXPECT_EQ(r.at(2 * 32 + 4, 4), Bytes({0, 0, 0, 9}));
  m::Sge out[16];
  ASSERT_EQ(m::decode_recv_wqe(r.view, 2, out), 1u);
  EXPECT_EQ(out[0].addr, 0xabcu);
}

// ============================================================================
// CQEs.
// ============================================================================

struct CqRing {
  explicit CqRing(uint32_t count) : mem(size_t(count) * 64, std::byte{kFill}) {
    view.base = mem.data();
    view.cqe_count = count;
    m::init_cq_ring(view);
  }
  Bytes at(size_t off, size_t n) const {
    Bytes b(n);
    if (n) std::memcpy(b.data(), mem.data() + off, n);
    return b;
  }
  uint8_t op_own(uint32_t slot) const { return uint8_t(mem[size_t(slot) * 64 + 63]); }
  std::vector<std::byte> mem;
  m::CqRingView view;
};

m::CqeFields req_cqe() {
  m::CqeFields f;
  f.opcode = m::kCqeReq;
  f.qpn = 0xabcdef;
  f.send_opcode = m::kOpRdmaRead;
  f.wqe_counter = 0x1234;
  f.byte_cnt = 0x00010203;
  return f;
}

// A fresh CQ: every entry INVALID (0xf0 in op_own), owner 0, nothing readable
// on either lap.
TEST(Mlx5Cq, InitGivesInvalidEntriesNotOwnedBySoftware) {
  CqRing cq(8);
  for (uint32_t i = 0; i < 8; ++i) {
    EXPECT_EQ(cq.op_own(i), 0xf0) << i;
    EXPECT_EQ(cq.at(i * 64, 63), zeros(63)) << i;
  }
  m::CqeFields f;
  for (uint32_t ci = 0; ci < 16; ++ci) EXPECT_FALSE(m::read_cqe(cq.view, ci, &f)) << ci;
}

// Written at pi, read back at ci == pi with every field.
TEST(Mlx5Cq, WriteThenReadAtSameIndex) {
  CqRing cq(8);
  m::write_cqe(cq.view, 3, req_cqe());
  m::CqeFields got;
  ASSERT_TRUE(m::read_cqe(cq.view, 3, &got));
  EXPECT_EQ(got.opcode, m::kCqeReq);
  EXPECT_EQ(got.qpn, 0xabcdefu);
  EXPECT_EQ(got.send_opcode, m::kOpRdmaRead);
  EXPECT_EQ(got.wqe_counter, 0x1234);
  EXPECT_EQ(got.byte_cnt, 0x00010203u);
  EXPECT_FALSE(got.solicited);
  EXPECT_EQ(got.syndrome, 0);
  m::CqeFields none;
  EXPECT_FALSE(m::read_cqe(cq.view, 2, &none)) << "neighbour still invalid";
  EXPECT_FALSE(m::read_cqe(cq.view, 4, &none));
}

// Requester CQE bytes: byte_cnt BE at 44, opcode|qpn at 56, wqe_counter at 60,
// op_own at 63 (opcode 0 << 4, owner 0 on lap 0).
TEST(Mlx5Cq, RequesterCqeBytesMatchFactSheetOffsets) {
  CqRing cq(8);
  m::write_cqe(cq.view, 3, req_cqe());
  EXPECT_EQ(cq.at(3 * 64 + 44, 4), Bytes({0x00, 0x01, 0x02, 0x03}));
  EXPECT_EQ(cq.at(3 * 64 + 56, 8), Bytes({0x10, 0xab, 0xcd, 0xef, 0x12, 0x34, 0x00, 0x00}));
}

// Responder CQE: immediate raw at 36-39, opcode in op_own high nibble, SE bit 1.
TEST(Mlx5Cq, ResponderCqeCarriesImmAndSolicited) {
  CqRing cq(4);
  m::CqeFields f;
  f.opcode = m::kCqeRespSendImm;
  f.qpn = 0x000077;
  f.byte_cnt = 12;
  const uint8_t imm_bytes[4] = {0x01, 0x02, 0x03, 0x04};
  std::memcpy(&f.imm, imm_bytes, 4);
  f.solicited = true;
  m::write_cqe(cq.view, 0, f);
  EXPECT_EQ(cq.at(36, 4), Bytes({0x01, 0x02, 0x03, 0x04}));
  EXPECT_EQ(cq.at(44, 4), Bytes({0, 0, 0, 12}));
  EXPECT_EQ(cq.op_own(0), 0x32);
  m::CqeFields got;
  ASSERT_TRUE(m::read_cqe(cq.view, 0, &got));
  EXPECT_EQ(got.opcode, m::kCqeRespSendImm);
  EXPECT_EQ(got.imm, f.imm);
  EXPECT_TRUE(got.solicited);
  EXPECT_EQ(got.byte_cnt, 12u);
  EXPECT_EQ(got.qpn, 0x77u);
}

// The owner bit is the lap parity: a CQE written on lap 1 (pi = count + k) has
// owner 1, is visible at ci = count + k, and not at ci = k (lap 0) nor at
// ci = 2*count + k (lap 2).
TEST(Mlx5Cq, OwnerBitFlipsOnEachLap) {
  constexpr uint32_t kCount = 8, k = 5;
  CqRing cq(kCount);
  m::write_cqe(cq.view, kCount + k, req_cqe());
  EXPECT_EQ(cq.op_own(k) & 1, 1);
  m::CqeFields got;
  EXPECT_FALSE(m::read_cqe(cq.view, k, &got));
  EXPECT_TRUE(m::read_cqe(cq.view, kCount + k, &got));
  EXPECT_FALSE(m::read_cqe(cq.view, 2 * kCount + k, &got));

  m::write_cqe(cq.view, 2 * kCount + k, req_cqe());  // lap 2: owner back to 0
  EXPECT_EQ(cq.op_own(k) & 1, 0);
  EXPECT_TRUE(m::read_cqe(cq.view, 2 * kCount + k, &got));
  EXPECT_FALSE(m::read_cqe(cq.view, kCount + k, &got));
}

// A consumer one lap ahead must not mistake last lap's CQE for a new one.
TEST(Mlx5Cq, StaleCqeFromPreviousLapIsNotRead) {
  CqRing cq(4);
  for (uint32_t pi = 0; pi < 4; ++pi) m::write_cqe(cq.view, pi, req_cqe());
  m::CqeFields got;
  for (uint32_t ci = 4; ci < 8; ++ci) EXPECT_FALSE(m::read_cqe(cq.view, ci, &got)) << ci;
}

// Error CQE: vendor syndrome 54, syndrome 55, opcode|qpn 56-59, wqe_counter
// 60-61, op_own 63 = REQ_ERR (13) << 4 | owner.
TEST(Mlx5Cq, ErrorCqeFieldsAtFactSheetOffsets) {
  CqRing cq(4);
  m::CqeFields f;
  f.opcode = m::kCqeReqErr;
  f.syndrome = m::kSyndromeRemoteAccess;
  f.vendor_syndrome = 0x88;
  f.wqe_counter = 0xbeef;
  f.qpn = 0x123456;
  f.send_opcode = m::kOpAtomicCs;
  m::write_cqe(cq.view, 4 + 2, f);  // lap 1: owner 1
  EXPECT_EQ(cq.at(2 * 64 + 54, 10), Bytes({0x88, 0x13, 0x11, 0x12, 0x34, 0x56, 0xbe, 0xef, 0x00, 0xd1}));

  m::CqeFields got;
  ASSERT_TRUE(m::read_cqe(cq.view, 6, &got));
  EXPECT_EQ(got.opcode, m::kCqeReqErr);
  EXPECT_EQ(got.syndrome, m::kSyndromeRemoteAccess);
  EXPECT_EQ(got.vendor_syndrome, 0x88);
  EXPECT_EQ(got.wqe_counter, 0xbeef);
  EXPECT_EQ(got.qpn, 0x123456u);
  EXPECT_EQ(got.send_opcode, m::kOpAtomicCs);
}

TEST(Mlx5Cq, ResponderErrorCqeUsesOpcode14) {
  CqRing cq(4);
  m::CqeFields f;
  f.opcode = m::kCqeRespErr;
  f.syndrome = m::kSyndromeLocalLength;
  f.qpn = 0x42;
  m::write_cqe(cq.view, 1, f);
  EXPECT_EQ(cq.op_own(1), 0xe0);
  EXPECT_EQ(cq.at(64 + 55, 1), Bytes({0x01}));
  m::CqeFields got;
  ASSERT_TRUE(m::read_cqe(cq.view, 1, &got));
  EXPECT_EQ(got.opcode, m::kCqeRespErr);
  EXPECT_EQ(got.syndrome, m::kSyndromeLocalLength);
  EXPECT_EQ(got.qpn, 0x42u);
}

// ============================================================================
// Counters and lengths.
// ============================================================================

TEST(Mlx5Cyclic, GreaterOrEqualAcross16BitWrap) {
  EXPECT_TRUE(m::cyclic_ge(5, 5, 16));
  EXPECT_TRUE(m::cyclic_ge(0x0000, 0xffff, 16));
  EXPECT_FALSE(m::cyclic_ge(0xffff, 0x0000, 16));
  EXPECT_TRUE(m::cyclic_ge(0x0003, 0xfffe, 16));
  EXPECT_FALSE(m::cyclic_ge(0xfffe, 0x0003, 16));
  EXPECT_TRUE(m::cyclic_ge(0x7fff, 0, 16)) << "just under half the range is ahead";
  EXPECT_FALSE(m::cyclic_ge(0x8000, 0, 16)) << "half the range counts as behind";
  EXPECT_TRUE(m::cyclic_ge(0x10003, 0xfffe, 16)) << "bits above 16 are ignored";
  EXPECT_TRUE(m::cyclic_ge(0x0001, 0x30000, 16));
}

TEST(Mlx5Cyclic, GreaterOrEqualAcross24BitWrap) {
  EXPECT_TRUE(m::cyclic_ge(0x000000, 0xffffff, 24));
  EXPECT_FALSE(m::cyclic_ge(0xffffff, 0x000000, 24));
  EXPECT_TRUE(m::cyclic_ge(0x000010, 0xfffff0, 24));
  EXPECT_TRUE(m::cyclic_ge(0x7fffff, 0, 24));
  EXPECT_FALSE(m::cyclic_ge(0x800000, 0, 24));
  EXPECT_TRUE(m::cyclic_ge(0x01000002, 0xffffff, 24)) << "bits above 24 are ignored";
  // 0x8000 is ahead of 0 in 24 bits but half a lap (behind) in 16: the width matters.
  EXPECT_TRUE(m::cyclic_ge(0x8000, 0, 24));
  EXPECT_FALSE(m::cyclic_ge(0x8000, 0, 16));
}

// byte_count 0 in a data segment means 2 GiB (fact sheet §1.5).
TEST(Mlx5DataSeg, ZeroByteCountMeansTwoGiB) {
  EXPECT_EQ(m::data_seg_length(0), uint64_t{1} << 31);
  EXPECT_EQ(m::data_seg_length(1), 1u);
  EXPECT_EQ(m::data_seg_length(0x7fffffff), 0x7fffffffu);
}

}  // namespace
