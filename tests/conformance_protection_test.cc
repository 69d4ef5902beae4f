// Conformance: protection domains are the tenant isolation boundary on
// every device: a QP only touches memory regions of its own PD, locally or
// as a responder, whatever key it presents. Memory-region access rights are
// checked at registration and at every access, and a destroyed region is
// unreachable. (A raw mlx5 WQE with a foreign lkey is soft_protection_test's.)
#include <gtest/gtest.h>

#include <cstdint>

#include "conformance_util.h"
#include "device_differences.h"

namespace hyperloop::conformance {
namespace {

using device_differences::Case;
using device_differences::expected_status;

// Node a: tenant 1's QP (default PD). Node b: tenant 1's peer QP in the
// default PD, and tenant 2's memory in a second PD on the same device.
class Protection : public TwoNodeTest {
 protected:
  ProtectionDomain& a_pd2 = a.new_pd();
  ProtectionDomain& b_pd2 = b.new_pd();
};
HL_CONFORMANCE_SUITE(Protection);

TEST_P(Protection, LocalSgeFromAnotherPdIsLocalProtectionError) {
  Region foreign = a.alloc_pattern(32, kLocalWrite, 1, &a_pd2);
  const auto foreign_before = foreign.copy();
  Region dst = b.alloc(32, kAll, 0);
  HL_ASSERT_OK(post_write(*qa, foreign.sge(0, 32), dst.addr(), dst.rkey()));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, expected_status(caps(), Case::kGatherSgeUnusable)) << describe(*wc);
  EXPECT_TRUE(Mlx5FieldsAre(caps(), *wc, mlx5::kSyndromeLocalProt));
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0)) << "another tenant's bytes left the NIC";
  EXPECT_TRUE(foreign.unchanged_since(foreign_before));
}

TEST_P(Protection, ReadIntoAnotherPdRegionIsLocalProtectionError) {
  Region remote = b.alloc_pattern(32, kAll, 2);
  Region foreign = a.alloc(32, kAll, 0x11, &a_pd2);
  HL_ASSERT_OK(post_read(*qa, foreign.sge(0, 32), remote.addr(), remote.rkey()));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kLocalProtectionError) << describe(*wc);
  EXPECT_TRUE(AllBytesAre(foreign.data(), 32, 0x11));
  EXPECT_TRUE(foreign.guards_intact());
}

TEST_P(Protection, RemoteWriteIntoAnotherPdRegionIsRemoteAccessError) {
  Region src = a.alloc_pattern(32, kLocalWrite, 3);
  Region victim = b.alloc(32, kAll, 0x22, &b_pd2);  // right rkey, wrong PD
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 32), victim.addr(), victim.rkey()));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kRemoteAccessError) << describe(*wc);
  EXPECT_TRUE(Mlx5FieldsAre(caps(), *wc, mlx5::kSyndromeRemoteAccess));
  EXPECT_TRUE(AllBytesAre(victim.data(), 32, 0x22));
  EXPECT_TRUE(victim.guards_intact());
}

TEST_P(Protection, RemoteReadFromAnotherPdRegionIsRemoteAccessError) {
  Region secret = b.alloc_pattern(32, kAll, 4, &b_pd2);
  Region local = a.alloc(32, kLocalWrite, 0x33);
  HL_ASSERT_OK(post_read(*qa, local.sge(0, 32), secret.addr(), secret.rkey()));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kRemoteAccessError) << describe(*wc);
  EXPECT_TRUE(AllBytesAre(local.data(), 32, 0x33)) << "another tenant's bytes were read";
}

TEST_P(Protection, RemoteAtomicOnAnotherPdRegionIsRemoteAccessError) {
  Region victim = b.alloc(8, kAll, 0, &b_pd2);
  victim.set_u64(0, 41);
  Region result = a.alloc(8, kLocalWrite, 0x44);
  HL_ASSERT_OK(post_cas(*qa, result.sge(0, 8), victim.addr(), victim.rkey(), 41, 42));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kRemoteAccessError) << describe(*wc);
  EXPECT_EQ(victim.u64(0), 41u);
  EXPECT_TRUE(AllBytesAre(result.data(), 8, 0x44));
}

TEST_P(Protection, ReceiveIntoAnotherPdRegionIsRefused) {
  Region src = a.alloc_pattern(16, kLocalWrite, 5);
  Region foreign = b.alloc(16, kAll, 0x55, &b_pd2);
  const Status posted = post_recv(*qb, foreign.sge(0, 16), 7);
  if (posted.is_ok()) {
    HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 16)));
    auto rwc = poll_b();
    ASSERT_TRUE(rwc);
    EXPECT_EQ(rwc->status, expected_status(caps(), Case::kReceiveScatterUnusable)) << describe(*rwc);
  }
  settle(h);
  EXPECT_TRUE(AllBytesAre(foreign.data(), 16, 0x55));
  EXPECT_TRUE(foreign.guards_intact());
}

TEST_P(Protection, TwoTenantsOnOneNicReachOnlyTheirOwnMemory) {
  // Tenant 2 gets its own QP pair; each tenant writes with the other's rkey.
  QpPair t2 = connect(a, a.qp_attr(), b, b.qp_attr(), rn::kAccessAllRemote, &a_pd2, &b_pd2);
  Region src2 = a.alloc_pattern(16, kLocalWrite, 7, &a_pd2);
  Region mem1 = b.alloc(16, kAll, 0);
  Region mem2 = b.alloc(16, kAll, 0, &b_pd2);
  HL_ASSERT_OK(post_write(*t2.a, src2.sge(0, 16), mem2.addr(), mem2.rkey(), kSig, 1));
  auto ok = poll_a();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, WcStatus::kSuccess) << describe(*ok);
  EXPECT_TRUE(BytesEqual(mem2.data(), src2.data(), 16));
  HL_ASSERT_OK(post_write(*t2.a, src2.sge(0, 16), mem1.addr(), mem1.rkey(), kSig, 2));
  auto bad = poll_a();
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, WcStatus::kRemoteAccessError) << describe(*bad);
  EXPECT_TRUE(AllBytesAre(mem1.data(), 16, 0)) << "tenant 2 wrote tenant 1's memory";
}

TEST_P(Protection, RegisteringRemoteWriteWithoutLocalWriteIsRejected) {
  GuardedBuffer& buf = b.buffer(64);
  auto r = b.pd().register_memory(buf.data(), buf.size(), rn::kAccessRemoteWrite);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
}

TEST_P(Protection, RegisteringRemoteAtomicWithoutLocalWriteIsRejected) {
  GuardedBuffer& buf = b.buffer(64);
  auto r = b.pd().register_memory(buf.data(), buf.size(), rn::kAccessRemoteAtomic | rn::kAccessRemoteRead);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
}

TEST_P(Protection, DestroyedRegionIsNoLongerReachable) {
  Region src = a.alloc_pattern(16, kLocalWrite, 8);
  Region dst = b.alloc(16, kAll, 0);
  const uint32_t rkey = dst.rkey();
  const uint64_t addr = dst.addr();
  b.destroy_mr(dst.mr);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 16), addr, rkey));
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kRemoteAccessError) << describe(*wc);
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
}

TEST_P(Protection, RegionsGetDistinctKeys) {
  Region r1 = b.alloc(16, kAll);
  Region r2 = b.alloc(16, kAll);
  Region r3 = b.alloc(16, kAll, 0, &b_pd2);
  EXPECT_NE(r1.rkey(), r2.rkey());
  EXPECT_NE(r1.rkey(), r3.rkey());
  EXPECT_NE(r2.rkey(), r3.rkey());
  EXPECT_NE(r1.lkey(), r2.lkey());
}

}  // namespace
}  // namespace hyperloop::conformance
