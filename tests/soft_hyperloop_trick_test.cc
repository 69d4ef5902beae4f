// The HyperLoop core trick, end to end on three NICs: B pre-posts a WRITE to C
// with placeholder fields on a managed queue, a RECV whose scatter list points
// into those WQE fields, and WAIT(recv CQ) + SEND_EN on a master queue. When
// A's SEND lands, B's NIC patches the WQE, releases it and forwards B's data
// to C, with no data-path call from any application thread of B.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

// Parameters A sends for one slot: the WQE fields, big-endian, in the order
// of B's receive scatter list.
constexpr uint32_t kParamBytes = 24;  // raddr 8 | rkey 4 | byte_count 4 | addr 8
constexpr uint32_t kSlotBytes = 64;   // per-slot stride in B's data and C's buffer
constexpr int kMaxSlots = 16;

class HyperloopTrick : public ::testing::Test {
 protected:
  HyperloopTrick() {
    // A -> B: the inbound QP whose receive CQ the master WAITs on.
    QpAttr in_attr = b.qp_attr();
    in_attr.recv_cq = &b_in_rcq;
    QpPair in = connect(a, a.qp_attr(), b, in_attr);
    a_out = in.a;
    b_in = in.b;
    // B -> C: the managed queue holding the pre-posted WRITEs.
    QpAttr fwd_attr = b.qp_attr();
    fwd_attr.send_cq = &b_fwd_cq;
    fwd_attr.managed_send = true;
    b_fwd = connect(b, fwd_attr, c, c.qp_attr()).a;
    // B's master queue (its peer on C only exists to reach RTS).
    QpAttr master_attr = b.qp_attr();
    master_attr.send_cq = &b_master_cq;
    master_attr.cross_channel = true;
    b_master = connect(b, master_attr, c, c.qp_attr()).a;

    ring = must(b_fwd->raw_send_ring(), "raw_send_ring");
    ring_mr = &b.register_memory(ring.base, ring.bytes(), kLocalWrite);
  }

  // Pre-posts slot k on B: placeholder WRITE, RECV into its fields, WAIT + SEND_EN.
  void arm_slot(int k) {
    const uint32_t pi = b_fwd->send_producer();
    // Placeholders: if these ever ran unpatched, the WRITE would fail (rkey 0).
    must(post_write(*b_fwd, b_data.sge(0, 1), /*raddr=*/0, /*rkey=*/0, /*flags=*/0, 1000 + k), "pre-post WRITE");
    const uint32_t next = b_fwd->send_producer();
    if (uint16_t(next - pi) != 1) throw std::runtime_error("pre-posted WRITE is not 1 WQEBB");
    const uint64_t wqe = addr_of(ring.bb(pi));
    const uint32_t lk = ring_mr->lkey();
    const Sge sg[] = {{wqe + mlx5::kRaddrOffset, 8, lk},
                      {wqe + mlx5::kRkeyOffset, 4, lk},
                      {wqe + mlx5::kSecondSegOffset + mlx5::kDataByteCountOffset, 4, lk},
                      {wqe + mlx5::kSecondSegOffset + mlx5::kDataAddrOffset, 8, lk}};
    must(post_recv(*b_in, sg, 2000 + k), "pre-post RECV");
    must(post_wait(*b_master, b_in_rcq, uint32_t(k)), "WAIT");
    must(post_send_enable(*b_master, *b_fwd, next), "SEND_EN");
  }

  // A's message for slot k: forward `len` bytes of B's slot k to C's slot k.
  void send_params(int k, uint32_t len) {
    std::byte* m = a_msg.data() + k * kParamBytes;
    put_be64(m, c_buf.addr(k * kSlotBytes));
    put_be32(m + 8, c_buf.rkey());
    put_be32(m + 12, len);
    put_be64(m + 16, b_data.addr(k * kSlotBytes));
    must(post_send_msg(*a_out, a_msg.sge(k * kParamBytes, kParamBytes), 0, k), "A's SEND");
  }

  ::testing::AssertionResult slot_forwarded(int k, uint32_t len) {
    auto r = BytesEqual(c_buf.data() + k * kSlotBytes, b_data.data() + k * kSlotBytes, len);
    if (!r) return r << " (slot " << k << ")";
    return AllBytesAre(c_buf.data() + k * kSlotBytes + len, kSlotBytes - len, 0) << " (slot " << k << " tail)";
  }
  ::testing::AssertionResult slot_untouched(int k) {
    return AllBytesAre(c_buf.data() + k * kSlotBytes, kSlotBytes, 0) << " (slot " << k << ")";
  }

  soft::Fabric fabric;
  soft::ManualExecutor ex{0x10091009};
  Node a{fabric, ex};
  Node b{fabric, ex};
  Node c{fabric, ex};
  CompletionQueue& b_in_rcq = b.new_cq(64, /*ignore_overrun=*/true);
  CompletionQueue& b_fwd_cq = b.new_cq(64);
  CompletionQueue& b_master_cq = b.new_cq(64);
  Region a_msg = a.alloc(kMaxSlots * kParamBytes, kLocalWrite);
  Region b_data = b.alloc_pattern(kMaxSlots * kSlotBytes, kLocalWrite, 0xB);
  Region c_buf = c.alloc(kMaxSlots * kSlotBytes, kAll, 0);
  QueuePair* a_out = nullptr;
  QueuePair* b_in = nullptr;
  QueuePair* b_fwd = nullptr;
  QueuePair* b_master = nullptr;
  mlx5::SendRingView ring;
  MemoryRegion* ring_mr = nullptr;
};

TEST_F(HyperloopTrick, NothingFiresBeforeTheTriggeringSend) {
  arm_slot(0);
  settle(ex);
  EXPECT_TRUE(slot_untouched(0));
  EXPECT_TRUE(c_buf.guards_intact());
  EXPECT_EQ(b_fwd->state(), QpState::kRts);
  EXPECT_EQ(b_master->state(), QpState::kRts);
}

TEST_F(HyperloopTrick, ReplicaNicForwardsThePatchedWriteWithoutItsCpu) {
  arm_slot(0);
  settle(ex);
  ASSERT_TRUE(slot_untouched(0));
  const uint64_t b_calls = b.stats().app_calls;
  const uint64_t c_calls = c.stats().app_calls;
  send_params(0, 40);
  EXPECT_TRUE(ex.run_until([&] { return bool(slot_forwarded(0, 40)); }, kDefaultMaxSteps));
  settle(ex);
  EXPECT_TRUE(slot_forwarded(0, 40));
  EXPECT_TRUE(c_buf.guards_intact());
  EXPECT_EQ(b.stats().app_calls, b_calls) << "an application thread of B made a data-path call";
  EXPECT_EQ(c.stats().app_calls, c_calls);
  // Diagnostics only after the app_calls check (polling is an app call).
  EXPECT_TRUE(drain(b_fwd_cq).empty()) << "the forwarded WRITE reported an error";
  EXPECT_EQ(b_fwd->state(), QpState::kRts);
}

TEST_F(HyperloopTrick, ForwardedWqeReadsEveryPatchedField) {
  // Two slots armed; the parameters of slot 1 point at slot 1's data and
  // region and carry a different length: all four fields must take effect.
  arm_slot(0);
  arm_slot(1);
  send_params(0, 8);
  send_params(1, 64);
  EXPECT_TRUE(ex.run_until([&] { return slot_forwarded(0, 8) && slot_forwarded(1, 64); }, kDefaultMaxSteps));
  EXPECT_TRUE(slot_forwarded(0, 8));
  EXPECT_TRUE(slot_forwarded(1, 64));
}

TEST_F(HyperloopTrick, ChainOfSlotsFiresOneSlotPerMessage) {
  constexpr int kSlots = 8;
  for (int k = 0; k < kSlots; ++k) arm_slot(k);
  settle(ex);
  const uint64_t b_calls = b.stats().app_calls;
  for (int k = 0; k < 3; ++k) send_params(k, 16 + k);
  EXPECT_TRUE(ex.run_until([&] { return bool(slot_forwarded(2, 18)); }, kDefaultMaxSteps));
  settle(ex);
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(slot_forwarded(k, 16 + k));
  for (int k = 3; k < kSlots; ++k) EXPECT_TRUE(slot_untouched(k)) << "slot fired without its message";
  for (int k = 3; k < kSlots; ++k) send_params(k, 16 + k);
  EXPECT_TRUE(ex.run_until([&] { return bool(slot_forwarded(kSlots - 1, 16 + kSlots - 1)); }, kDefaultMaxSteps));
  settle(ex);
  for (int k = 0; k < kSlots; ++k) EXPECT_TRUE(slot_forwarded(k, 16 + k));
  EXPECT_TRUE(c_buf.guards_intact());
  EXPECT_EQ(b.stats().app_calls, b_calls);
}

TEST_F(HyperloopTrick, BackToBackMessagesPipelineThroughAllSlots) {
  for (int k = 0; k < kMaxSlots; ++k) arm_slot(k);
  const uint64_t b_calls = b.stats().app_calls;
  for (int k = 0; k < kMaxSlots; ++k) send_params(k, kSlotBytes - k);
  EXPECT_TRUE(ex.run_until([&] {
    for (int k = 0; k < kMaxSlots; ++k)
      if (!slot_forwarded(k, kSlotBytes - k)) return false;
    return true;
  }, kDefaultMaxSteps));
  for (int k = 0; k < kMaxSlots; ++k) EXPECT_TRUE(slot_forwarded(k, kSlotBytes - k));
  EXPECT_EQ(b.stats().app_calls, b_calls);
  EXPECT_TRUE(c_buf.guards_intact());
}

}  // namespace
}  // namespace hyperloop::soft_test
