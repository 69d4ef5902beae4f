// Protection domains through the software RNIC's raw mlx5 ring: a WQE
// written directly into the ring is held to its QP's PD like a structured
// post. (PD isolation and access rights on every device are
// conformance_protection_test's.)
#include <gtest/gtest.h>

#include <cstdint>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

// Node a: tenant 1's QP (default PD). Node b: tenant 1's peer QP in the
// default PD, and tenant 2's memory in a second PD on the same NIC.
class Protection : public TwoNodeTest {
 protected:
  ProtectionDomain& a_pd2 = a.new_pd();
  ProtectionDomain& b_pd2 = b.new_pd();
};

TEST_F(Protection, RawWqeWithAnotherPdLkeyIsLocalProtectionError) {
  Region foreign = a.alloc_pattern(16, kLocalWrite, 9, &a_pd2);
  Region dst = b.alloc(16, kAll, 0);
  mlx5::SendWqe w = raw_wqe(mlx5::kOpRdmaWrite, qa->qpn());
  w.raddr = dst.addr();
  w.rkey = dst.rkey();
  w.num_sge = 1;
  w.sge[0] = foreign.sge(0, 16);
  raw_post(*qa, w);
  auto wc = poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kLocalProtectionError) << describe(*wc);
  EXPECT_TRUE(AllBytesAre(dst.data(), 16, 0));
}

}  // namespace
}  // namespace hyperloop::soft_test
