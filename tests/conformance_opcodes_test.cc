// Conformance: every device executes the verbs send opcodes with RC
// semantics: RDMA WRITE(+IMM), SEND(+IMM), RDMA READ (also 0-byte), ATOMIC
// CAS/FAA, inline payloads, gather/scatter lists, fences and completion
// signaling; NOP where caps.nop. (The mlx5 ring itself, its WQEBB counts and
// counters, is soft_opcodes_test's.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "conformance_util.h"

namespace hyperloop::conformance {
namespace {

class Opcodes : public TwoNodeTest {};
HL_CONFORMANCE_SUITE(Opcodes);

// NOP is not a verbs opcode: a device without it refuses the post.
TEST_P(Opcodes, SignaledNopCompletesWithNopOpcode) {
  HL_POST_OR_NOT_SUPPORTED(caps().nop, post_nop(*qa, kSig, 7));
  auto wc = poll_a();
  ASSERT_TRUE(wc) << "no completion";
  EXPECT_EQ(wc->status, WcStatus::kSuccess);
  EXPECT_EQ(wc->opcode, WcOpcode::kNop);
  EXPECT_EQ(wc->wr_id, 7u);
  EXPECT_EQ(wc->qpn, qa->qpn());
}

TEST_P(Opcodes, UnsignaledSuccessfulWqesGiveNoCompletion) {
  Region src = a.alloc_pattern(64, kLocalWrite, 1);
  Region dst = b.alloc(64, kAll);
  HL_ASSERT_OK(filler(*qa, 0, 1));
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 64), dst.addr(), dst.rkey(), 0, 2));
  HL_ASSERT_OK(filler(*qa, kSig, 3));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->wr_id, 3u) << describe(*wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess);
  settle(h);
  EXPECT_TRUE(drain(a.cq()).empty());
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 64)) << "the unsignaled WRITE did not run";
}

TEST_P(Opcodes, RdmaWriteCopiesLocalBytesIntoRemoteRegion) {
  Region src = a.alloc_pattern(100, kLocalWrite, 3);
  Region dst = b.alloc(256, kAll, 0xEE);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 100), dst.addr(50), dst.rkey(), kSig, 9));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->opcode, WcOpcode::kRdmaWrite);
  EXPECT_EQ(wc->wr_id, 9u);
  EXPECT_TRUE(BytesEqual(dst.data() + 50, src.data(), 100));
  EXPECT_TRUE(AllBytesAre(dst.data(), 50, 0xEE));
  EXPECT_TRUE(AllBytesAre(dst.data() + 150, 106, 0xEE));
  EXPECT_TRUE(dst.guards_intact());
  EXPECT_TRUE(src.guards_intact());
}

TEST_P(Opcodes, ZeroLengthRdmaWriteSucceedsAndTouchesNothing) {
  Region dst = b.alloc(64, kAll, 0x5A);
  HL_ASSERT_OK(post_write(*qa, std::span<const Sge>{}, dst.addr(), dst.rkey(), kSig, 4));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(AllBytesAre(dst.data(), 64, 0x5A));
  EXPECT_TRUE(dst.guards_intact());
}

// (That these three SGEs take 2 WQEBBs of an mlx5 ring is soft_opcodes_test's
// WqebbCountFollowsPrmSegmentSizes.)
TEST_P(Opcodes, RdmaWriteGathersThreeSges) {
  Region s1 = a.alloc_pattern(10, kLocalWrite, 4);
  Region s2 = a.alloc_pattern(20, kLocalWrite, 5);
  Region s3 = a.alloc_pattern(7, kLocalWrite, 6);
  Region dst = b.alloc(64, kAll, 0);
  const Sge sg[] = {s1.sge(0, 10), s2.sge(0, 20), s3.sge(0, 7)};
  HL_ASSERT_OK(post_write(*qa, sg, dst.addr(), dst.rkey()));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(dst.data(), s1.data(), 10));
  EXPECT_TRUE(BytesEqual(dst.data() + 10, s2.data(), 20));
  EXPECT_TRUE(BytesEqual(dst.data() + 30, s3.data(), 7));
  EXPECT_TRUE(AllBytesAre(dst.data() + 37, 27, 0));
}

TEST_P(Opcodes, LargeRdmaWriteArrivesIntact) {
  const uint32_t len = std::min<uint32_t>(256 * 1024, caps().max_msg_size);
  Region src = a.alloc_pattern(len, kLocalWrite, 7);
  Region dst = b.alloc(len, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, len), dst.addr(), dst.rkey()));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), len));
  EXPECT_TRUE(dst.guards_intact());
}

TEST_P(Opcodes, RdmaWriteWithImmConsumesReceiveAndDeliversImmediate) {
  Region src = a.alloc_pattern(40, kLocalWrite, 8);
  Region dst = b.alloc(64, kAll, 0);
  Region rbuf = b.alloc(32, kLocalWrite, 0x11);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 32), 77));
  HL_ASSERT_OK(post_write_imm(*qa, src.sge(0, 40), dst.addr(8), dst.rkey(), 0xDEADBEEF, kSig, 5));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc) << "no receive completion";
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->opcode, WcOpcode::kRecvRdmaWithImm);
  EXPECT_TRUE(rwc->has_imm);
  EXPECT_EQ(rwc->imm, 0xDEADBEEFu) << "immediate must be reported in host order";
  EXPECT_EQ(rwc->byte_len, 40u);
  EXPECT_EQ(rwc->wr_id, 77u);
  EXPECT_EQ(rwc->qpn, qb->qpn());
  auto swc = poll_a();
  ASSERT_TRUE(swc);
  EXPECT_EQ(swc->status, WcStatus::kSuccess) << describe(*swc);
  EXPECT_EQ(swc->opcode, WcOpcode::kRdmaWrite);
  EXPECT_EQ(swc->wr_id, 5u);
  EXPECT_TRUE(BytesEqual(dst.data() + 8, src.data(), 40));
  EXPECT_TRUE(AllBytesAre(rbuf.data(), 32, 0x11)) << "WRITE_IMM data must not go to the receive buffer";
}

TEST_P(Opcodes, SendScattersIntoPostedReceive) {
  Region src = a.alloc_pattern(40, kLocalWrite, 9);
  Region rbuf = b.alloc(64, kLocalWrite, 0x22);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 64), 8));
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 40), kSig, 6));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->opcode, WcOpcode::kRecv);
  EXPECT_EQ(rwc->byte_len, 40u);
  EXPECT_EQ(rwc->wr_id, 8u);
  EXPECT_FALSE(rwc->has_imm);
  EXPECT_TRUE(BytesEqual(rbuf.data(), src.data(), 40));
  EXPECT_TRUE(AllBytesAre(rbuf.data() + 40, 24, 0x22));
  EXPECT_TRUE(rbuf.guards_intact());
  auto swc = poll_a();
  ASSERT_TRUE(swc);
  EXPECT_EQ(swc->status, WcStatus::kSuccess) << describe(*swc);
  EXPECT_EQ(swc->opcode, WcOpcode::kSend);
  EXPECT_EQ(swc->wr_id, 6u);
}

TEST_P(Opcodes, SendWithImmDeliversImmediateInHostOrder) {
  Region src = a.alloc_pattern(16, kLocalWrite, 10);
  Region rbuf = b.alloc(16, kLocalWrite);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 16), 1));
  HL_ASSERT_OK(post_send_imm(*qa, src.sge(0, 16), 0x01020304));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->opcode, WcOpcode::kRecv);
  EXPECT_TRUE(rwc->has_imm);
  EXPECT_EQ(rwc->imm, 0x01020304u);
  EXPECT_EQ(rwc->byte_len, 16u);
  EXPECT_TRUE(BytesEqual(rbuf.data(), src.data(), 16));
}

TEST_P(Opcodes, ZeroLengthSendCompletesReceiveWithZeroBytes) {
  Region rbuf = b.alloc(16, kLocalWrite, 0x77);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 16), 1));
  HL_ASSERT_OK(post_send_msg(*qa, std::span<const Sge>{}));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->byte_len, 0u);
  EXPECT_TRUE(AllBytesAre(rbuf.data(), 16, 0x77));
  auto swc = poll_a();
  ASSERT_TRUE(swc);
  EXPECT_EQ(swc->status, WcStatus::kSuccess) << describe(*swc);
}

TEST_P(Opcodes, ReceivesAreConsumedInPostingOrder) {
  Region rbuf = b.alloc(3 * 32, kLocalWrite, 0);
  Region src = a.alloc_pattern(3 * 32, kLocalWrite, 11);
  for (int i = 0; i < 3; ++i) HL_ASSERT_OK(post_recv(*qb, rbuf.sge(32 * i, 32), 10 + i));
  for (int i = 0; i < 3; ++i) HL_ASSERT_OK(post_send_msg(*qa, src.sge(32 * i, 10 + i), 0));
  const auto wcs = poll_n(b.cq(), h, 3);
  ASSERT_EQ(wcs.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(wcs[i].status, WcStatus::kSuccess) << describe(wcs[i]);
    EXPECT_EQ(wcs[i].wr_id, uint64_t(10 + i));
    EXPECT_EQ(wcs[i].byte_len, uint32_t(10 + i));
    EXPECT_TRUE(BytesEqual(rbuf.data() + 32 * i, src.data() + 32 * i, 10 + i));
  }
}

TEST_P(Opcodes, SendGathersMultipleSges) {
  Region s1 = a.alloc_pattern(10, kLocalWrite, 12);
  Region s2 = a.alloc_pattern(20, kLocalWrite, 13);
  Region s3 = a.alloc_pattern(7, kLocalWrite, 14);
  Region rbuf = b.alloc(64, kLocalWrite, 0);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 64)));
  const Sge sg[] = {s1.sge(0, 10), s2.sge(0, 20), s3.sge(0, 7)};
  HL_ASSERT_OK(post_send_msg(*qa, sg));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->byte_len, 37u);
  EXPECT_TRUE(BytesEqual(rbuf.data(), s1.data(), 10));
  EXPECT_TRUE(BytesEqual(rbuf.data() + 10, s2.data(), 20));
  EXPECT_TRUE(BytesEqual(rbuf.data() + 30, s3.data(), 7));
}

TEST_P(Opcodes, ReceiveScattersAcrossMultipleSges) {
  Region src = a.alloc_pattern(64, kLocalWrite, 15);
  Region rbuf = b.alloc(128, kLocalWrite, 0x33);
  const Sge sg[] = {rbuf.sge(0, 10), rbuf.sge(20, 20), rbuf.sge(60, 34)};
  HL_ASSERT_OK(post_recv(*qb, sg, 5));
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 64)));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->byte_len, 64u);
  EXPECT_TRUE(BytesEqual(rbuf.data(), src.data(), 10));
  EXPECT_TRUE(AllBytesAre(rbuf.data() + 10, 10, 0x33));
  EXPECT_TRUE(BytesEqual(rbuf.data() + 20, src.data() + 10, 20));
  EXPECT_TRUE(AllBytesAre(rbuf.data() + 40, 20, 0x33));
  EXPECT_TRUE(BytesEqual(rbuf.data() + 60, src.data() + 30, 34));
  EXPECT_TRUE(AllBytesAre(rbuf.data() + 94, 34, 0x33));
}

TEST_P(Opcodes, ShortSendFillsOnlyTheLeadingReceiveSges) {
  Region src = a.alloc_pattern(15, kLocalWrite, 16);
  Region rbuf = b.alloc(128, kLocalWrite, 0x33);
  const Sge sg[] = {rbuf.sge(0, 10), rbuf.sge(20, 20), rbuf.sge(60, 34)};
  HL_ASSERT_OK(post_recv(*qb, sg, 5));
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 15)));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->byte_len, 15u);
  EXPECT_TRUE(BytesEqual(rbuf.data(), src.data(), 10));
  EXPECT_TRUE(AllBytesAre(rbuf.data() + 10, 10, 0x33));
  EXPECT_TRUE(BytesEqual(rbuf.data() + 20, src.data() + 10, 5));
  EXPECT_TRUE(AllBytesAre(rbuf.data() + 25, 103, 0x33));
}

TEST_P(Opcodes, LargeSendArrivesIntact) {
  const uint32_t len = std::min<uint32_t>(64 * 1024, caps().max_msg_size);
  Region src = a.alloc_pattern(len, kLocalWrite, 17);
  Region rbuf = b.alloc(len, kLocalWrite, 0);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, len)));
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, len)));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->byte_len, len);
  EXPECT_TRUE(BytesEqual(rbuf.data(), src.data(), len));
}

TEST_P(Opcodes, RdmaReadFetchesRemoteBytes) {
  Region remote = b.alloc_pattern(128, kAll, 18);
  const auto remote_before = remote.copy();
  Region local = a.alloc(128, kLocalWrite, 0x44);
  HL_ASSERT_OK(post_read(*qa, local.sge(16, 64), remote.addr(32), remote.rkey(), kSig, 3));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->opcode, WcOpcode::kRdmaRead);
  EXPECT_EQ(wc->byte_len, 64u);
  EXPECT_EQ(wc->wr_id, 3u);
  EXPECT_TRUE(BytesEqual(local.data() + 16, remote.data() + 32, 64));
  EXPECT_TRUE(AllBytesAre(local.data(), 16, 0x44));
  EXPECT_TRUE(AllBytesAre(local.data() + 80, 48, 0x44));
  EXPECT_TRUE(local.guards_intact());
  EXPECT_TRUE(remote.unchanged_since(remote_before));
}

TEST_P(Opcodes, RdmaReadScattersIntoMultipleLocalSges) {
  Region remote = b.alloc_pattern(48, kAll, 19);
  Region l1 = a.alloc(16, kLocalWrite, 0);
  Region l2 = a.alloc(32, kLocalWrite, 0);
  const Sge sg[] = {l1.sge(0, 16), l2.sge(0, 32)};
  HL_ASSERT_OK(post_read(*qa, sg, remote.addr(), remote.rkey()));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(l1.data(), remote.data(), 16));
  EXPECT_TRUE(BytesEqual(l2.data(), remote.data() + 16, 32));
}

TEST_P(Opcodes, ZeroLengthRdmaReadCompletesAndTouchesNothing) {
  Region remote = b.alloc_pattern(64, kAll, 20);
  const auto remote_before = remote.copy();
  Region local = a.alloc(64, kLocalWrite, 0x55);
  HL_ASSERT_OK(post_read(*qa, std::span<const Sge>{}, remote.addr(), remote.rkey(), kSig, 4));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->opcode, WcOpcode::kRdmaRead);
  EXPECT_EQ(wc->byte_len, 0u);
  EXPECT_TRUE(AllBytesAre(local.data(), 64, 0x55));
  EXPECT_TRUE(local.guards_intact());
  EXPECT_TRUE(remote.unchanged_since(remote_before));
}

TEST_P(Opcodes, LargeRdmaReadArrivesIntact) {
  const uint32_t len = std::min<uint32_t>(256 * 1024, caps().max_msg_size);
  Region remote = b.alloc_pattern(len, kAll, 21);
  Region local = a.alloc(len, kLocalWrite, 0);
  HL_ASSERT_OK(post_read(*qa, local.sge(0, len), remote.addr(), remote.rkey()));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->byte_len, len);
  EXPECT_TRUE(BytesEqual(local.data(), remote.data(), len));
}

TEST_P(Opcodes, AtomicCasSwapsWhenEqualAndReturnsOldValue) {
  Region remote = b.alloc(64, kAll, 0);
  remote.set_u64(8, 0x0102030405060708ull);
  Region result = a.alloc(16, kLocalWrite, 0xFF);
  HL_POST_OR_NOT_SUPPORTED(caps().atomics, post_cas(*qa, result.sge(0, 8), remote.addr(8), remote.rkey(), 0x0102030405060708ull,
                        0x1122334455667788ull, kSig, 1));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->opcode, WcOpcode::kAtomicCas);
  EXPECT_EQ(result.u64(0), 0x0102030405060708ull) << "old value must be written as a host-endian u64";
  EXPECT_EQ(remote.u64(8), 0x1122334455667788ull);
  EXPECT_TRUE(AllBytesAre(result.data() + 8, 8, 0xFF));
  EXPECT_TRUE(AllBytesAre(remote.data(), 8, 0));
  EXPECT_TRUE(AllBytesAre(remote.data() + 16, 48, 0));
}

TEST_P(Opcodes, AtomicCasLeavesWordAloneWhenNotEqual) {
  Region remote = b.alloc(16, kAll, 0);
  remote.set_u64(0, 9);
  Region result = a.alloc(8, kLocalWrite, 0);
  HL_POST_OR_NOT_SUPPORTED(caps().atomics, post_cas(*qa, result.sge(0, 8), remote.addr(), remote.rkey(), 5, 1));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(result.u64(0), 9u);
  EXPECT_EQ(remote.u64(0), 9u);
}

TEST_P(Opcodes, AtomicFaaAddsAndReturnsOldValue) {
  Region remote = b.alloc(16, kAll, 0);
  remote.set_u64(8, 100);
  Region result = a.alloc(8, kLocalWrite, 0);
  HL_POST_OR_NOT_SUPPORTED(caps().atomics, post_faa(*qa, result.sge(0, 8), remote.addr(8), remote.rkey(), 23, kSig, 2));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(wc->opcode, WcOpcode::kAtomicFaa);
  EXPECT_EQ(result.u64(0), 100u);
  EXPECT_EQ(remote.u64(8), 123u);
  EXPECT_EQ(remote.u64(0), 0u);
}

TEST_P(Opcodes, AtomicFaaWrapsModulo64Bits) {
  Region remote = b.alloc(8, kAll, 0);
  remote.set_u64(0, ~uint64_t{0});
  Region result = a.alloc(8, kLocalWrite, 0);
  HL_POST_OR_NOT_SUPPORTED(caps().atomics, post_faa(*qa, result.sge(0, 8), remote.addr(), remote.rkey(), 2));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(result.u64(0), ~uint64_t{0});
  EXPECT_EQ(remote.u64(0), 1u);
}

TEST_P(Opcodes, AtomicsOnOneWordSerialize) {
  Region remote = b.alloc(8, kAll, 0);
  Region results = a.alloc(8 * 32, kLocalWrite, 0);
  for (int i = 0; i < 32; ++i)
    HL_POST_OR_NOT_SUPPORTED(caps().atomics, post_faa(*qa, results.sge(8 * i, 8), remote.addr(), remote.rkey(), 1,
                                                      i == 31 ? kSig : 0, i));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(remote.u64(0), 32u);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(results.u64(8 * i), uint64_t(i)) << i;
}

TEST_P(Opcodes, InlineSendDeliversUpToMaxInlineBytes) {
  const uint32_t max = caps().max_inline_data;
  ASSERT_GT(max, 0u);
  std::vector<std::byte> payload = pattern(max, 22);
  Region rbuf = b.alloc(max + 16, kLocalWrite, 0x66);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, max + 16)));
  // Inline payloads are not in any MR: their lkey is ignored.
  HL_ASSERT_OK(post_send_msg(*qa, Sge{addr_of(payload.data()), max, 0}, kSig | kInline));
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->byte_len, max);
  EXPECT_TRUE(BytesEqual(rbuf.data(), payload.data(), max));
  EXPECT_TRUE(AllBytesAre(rbuf.data() + max, 16, 0x66));
  auto swc = poll_a();
  ASSERT_TRUE(swc);
  EXPECT_EQ(swc->status, WcStatus::kSuccess) << describe(*swc);
}

TEST_P(Opcodes, InlineWriteDeliversPayload) {
  std::vector<std::byte> payload = pattern(20, 23);
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, Sge{addr_of(payload.data()), 20, 0}, dst.addr(4), dst.rkey(), kSig | kInline));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(dst.data() + 4, payload.data(), 20));
  EXPECT_TRUE(AllBytesAre(dst.data(), 4, 0));
  EXPECT_TRUE(AllBytesAre(dst.data() + 24, 8, 0));
}

TEST_P(Opcodes, InlinePayloadIsCopiedAtPostTime) {
  std::vector<std::byte> payload = pattern(24, 24);
  const std::vector<std::byte> original = payload;
  Region rbuf = b.alloc(24, kLocalWrite, 0);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 24)));
  const Sge sg[] = {Sge{addr_of(payload.data()), 10, 0}, Sge{addr_of(payload.data() + 10), 14, 0}};
  HL_ASSERT_OK(post_send_msg(*qa, sg, kSig | kInline));
  std::fill(payload.begin(), payload.end(), std::byte{0});
  auto rwc = poll_b();
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_EQ(rwc->byte_len, 24u);
  EXPECT_TRUE(BytesEqual(rbuf.data(), original.data(), 24));
}

TEST_P(Opcodes, InlineLargerThanMaxInlineIsRejected) {
  const uint32_t max = caps().max_inline_data;
  std::vector<std::byte> payload(max + 1);
  const Status s = post_send_msg(*qa, Sge{addr_of(payload.data()), max + 1, 0}, kSig | kInline);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
}

TEST_P(Opcodes, FencedWriteAfterReadSendsTheReadData) {
  // Several seeds: the fence must hold whatever order the NICs are stepped in
  // (on a device that runs by itself: eight runs).
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    TwoNodes t(GetParam(), seed);
    Region remote_src = t.b.alloc_pattern(512, kAll, 25);
    Region remote_dst = t.b.alloc(512, kAll, 0);
    Region local = t.a.alloc(512, kLocalWrite, 0);
    HL_ASSERT_OK(post_read(*t.qa, local.sge(0, 512), remote_src.addr(), remote_src.rkey(), 0, 1));
    HL_ASSERT_OK(post_write(*t.qa, local.sge(0, 512), remote_dst.addr(), remote_dst.rkey(), kSig | kFence, 2));
    auto wc = t.poll_a();
    ASSERT_TRUE(wc);
    EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
    EXPECT_EQ(wc->wr_id, 2u);
    EXPECT_TRUE(BytesEqual(remote_dst.data(), remote_src.data(), 512));
  }
}

TEST_P(Opcodes, WriteIsVisibleWhenALaterSendIsReceived) {
  Region src = a.alloc_pattern(4096, kLocalWrite, 26);
  Region dst = b.alloc(4096, kAll, 0);
  Region msg = a.alloc_pattern(8, kLocalWrite, 27);
  Region rbuf = b.alloc(8, kLocalWrite);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 8)));
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 4096), dst.addr(), dst.rkey(), 0));
  HL_ASSERT_OK(post_send_msg(*qa, msg.sge(0, 8), 0));
  auto rwc = poll_b();  // stops stepping as soon as the receive completes
  ASSERT_TRUE(rwc);
  EXPECT_EQ(rwc->status, WcStatus::kSuccess) << describe(*rwc);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 4096));
}

}  // namespace
}  // namespace hyperloop::conformance
