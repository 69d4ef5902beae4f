// Executors drive the NIC step machine: SingleThreadExecutor and
// ThreadPerNicExecutor run real threads, ManualExecutor steps NICs in a
// seeded order (same seed, same steps, same results). NicStats count the
// NIC's work and, separately, the data-path calls made by application threads.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <set>
#include <tuple>
#include <vector>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

// ---- the same traffic on every executor -------------------------------------------------------

using PollFn = std::function<std::optional<WorkCompletion>(CompletionQueue&)>;

// 50 rounds of WRITE, READ and CAS from a to b, every one signaled.
void expect_write_read_cas(Node& a, Node& b, const PollFn& poll) {
  QpPair p = connect(a, b);
  Region src = a.alloc_pattern(4096, kLocalWrite, 1);
  Region dst = b.alloc(4096, kAll, 0);
  Region remote = b.alloc_pattern(4096, kAll, 2);
  Region local = a.alloc(4096, kLocalWrite, 0);
  Region word = b.alloc(8, kAll, 0);
  word.set_u64(0, 10);
  Region result = a.alloc(8, kLocalWrite, 0);
  constexpr int kRounds = 50;
  for (int r = 0; r < kRounds; ++r) {
    SCOPED_TRACE("round " + std::to_string(r));
    const uint32_t off = uint32_t(r * 64) % 4096;
    HL_ASSERT_OK(post_write(*p.a, src.sge(off, 64), dst.addr(off), dst.rkey(), kSig, 3 * r));
    HL_ASSERT_OK(post_read(*p.a, local.sge(off, 64), remote.addr(off), remote.rkey(), kSig, 3 * r + 1));
    HL_ASSERT_OK(post_cas(*p.a, result.sge(0, 8), word.addr(), word.rkey(), 10 + r, 11 + r, kSig, 3 * r + 2));
    for (int i = 0; i < 3; ++i) {
      auto wc = poll(a.cq());
      ASSERT_TRUE(wc) << "timed out";
      ASSERT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
      ASSERT_EQ(wc->wr_id, uint64_t(3 * r + i));
    }
    ASSERT_EQ(result.u64(0), uint64_t(10 + r));
  }
  const uint32_t covered = std::min<uint32_t>(kRounds * 64, 4096);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), covered));
  EXPECT_TRUE(BytesEqual(local.data(), remote.data(), covered));
  EXPECT_EQ(word.u64(0), uint64_t(10 + kRounds));
}

TEST(Executors, SingleThreadExecutorRunsWriteReadCasToCompletion) {
  soft::Fabric fabric;
  soft::SingleThreadExecutor ex;
  Node a(fabric, ex), b(fabric, ex);
  expect_write_read_cas(a, b, [](CompletionQueue& cq) { return spin_poll_one(cq); });
}

TEST(Executors, ThreadPerNicExecutorRunsWriteReadCasToCompletion) {
  soft::Fabric fabric;
  soft::ThreadPerNicExecutor ex;
  Node a(fabric, ex), b(fabric, ex);
  expect_write_read_cas(a, b, [](CompletionQueue& cq) { return spin_poll_one(cq); });
}

TEST(Executors, ManualExecutorRunsWriteReadCasToCompletion) {
  soft::Fabric fabric;
  soft::ManualExecutor ex(7);
  Node a(fabric, ex), b(fabric, ex);
  expect_write_read_cas(a, b, [&](CompletionQueue& cq) { return poll_one(cq, ex); });
}

TEST(Executors, OpenDeviceSoftRunsOnTheDefaultExecutor) {
  auto da = must(rn::open_device("soft"), "open_device");
  auto db = must(rn::open_device("soft"), "open_device");
  auto pa = must(da->alloc_pd(), "alloc_pd");
  auto pb = must(db->alloc_pd(), "alloc_pd");
  auto ca = must(da->create_cq({}), "create_cq");
  auto cb = must(db->create_cq({}), "create_cq");
  GuardedBuffer src(64), dst(64);
  fill_pattern(src.data(), 64, 3);
  auto msrc = must(pa->register_memory(src.data(), 64, kLocalWrite), "register");
  auto mdst = must(pb->register_memory(dst.data(), 64, kAll), "register");
  QpAttr aa;
  aa.send_cq = aa.recv_cq = ca.get();
  QpAttr ba;
  ba.send_cq = ba.recv_cq = cb.get();
  auto qa = must(pa->create_qp(aa), "create_qp");
  auto qb = must(pb->create_qp(ba), "create_qp");
  HL_ASSERT_OK(rn::connect_pair(*qa, *qb));
  HL_ASSERT_OK(post_write(*qa, msrc->sge(0, 64), mdst->remote_addr(), mdst->rkey()));
  auto wc = spin_poll_one(*ca);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 64));
  EXPECT_TRUE(dst.guards_intact());
}

TEST(Executors, SoftDeviceAdvertisesItsCapabilities) {
  EXPECT_EQ(rn::list_devices().at(0), "soft");
  soft::Fabric fabric;
  soft::ManualExecutor ex(1);
  Node a(fabric, ex);
  const rn::DeviceCaps& caps = a.nic().caps();
  EXPECT_EQ(caps.backend, "soft");
  EXPECT_TRUE(caps.cross_channel);
  EXPECT_TRUE(caps.managed_queues);
  EXPECT_TRUE(caps.raw_send_ring);
  EXPECT_TRUE(caps.atomics);
  EXPECT_GE(caps.max_sge, 4u);
  EXPECT_GT(caps.max_inline_data, 12u);
  EXPECT_GE(caps.max_send_wqebbs, 64u);
  EXPECT_EQ(caps.max_send_wqebbs & (caps.max_send_wqebbs - 1), 0u);
}

// ---- ManualExecutor: determinism -----------------------------------------------------------------

struct Outcome {
  uint64_t steps = 0;
  std::vector<std::tuple<uint64_t, uint64_t, int>> events;  // (step, wr_id, status)
  std::vector<std::byte> written, read, received;
  uint64_t word = 0;
  bool operator==(const Outcome&) const = default;
};

// Mixed traffic in both directions; records at which step each completion was polled.
Outcome run_mixed_traffic(uint64_t seed) {
  Outcome out;
  soft::Fabric fabric;
  soft::ManualExecutor ex(seed);
  Node a(fabric, ex), b(fabric, ex);
  QpPair p = connect(a, b);
  Region src = a.alloc_pattern(1024, kLocalWrite, 11);
  Region dst = b.alloc(1024, kAll, 0);
  Region remote = b.alloc_pattern(1024, kAll, 12);
  Region local = a.alloc(1024, kLocalWrite, 0);
  Region word = b.alloc(8, kAll, 0);
  Region result = a.alloc(8, kLocalWrite, 0);
  Region bsrc = b.alloc_pattern(256, kLocalWrite, 13);
  Region rbuf = a.alloc(256, kLocalWrite, 0);
  size_t expected = 0;
  for (int i = 0; i < 8; ++i) {
    must(post_write(*p.a, src.sge(128 * i, 128), dst.addr(128 * i), dst.rkey(), kSig, 100 + i), "write");
    must(post_read(*p.a, local.sge(128 * i, 128), remote.addr(128 * i), remote.rkey(), i % 2 ? kSig : 0, 200 + i),
         "read");
    must(post_faa(*p.a, result.sge(0, 8), word.addr(), word.rkey(), 1, kSig, 300 + i), "faa");
    must(post_recv(*p.a, rbuf.sge(32 * i, 32), 400 + i), "recv");
    must(post_send_msg(*p.b, bsrc.sge(32 * i, 32), kSig, 500 + i), "send");
    expected += 1 + (i % 2) + 1 + 1 + 1;
  }
  size_t got = 0;
  while (got < expected && ex.steps() < kDefaultMaxSteps) {
    ex.step();
    for (CompletionQueue* cq : {&a.cq(), &b.cq()}) {
      for (const auto& wc : drain(*cq)) {
        out.events.emplace_back(ex.steps(), wc.wr_id, int(wc.status));
        ++got;
      }
    }
  }
  EXPECT_TRUE(ex.run_until_idle());
  out.steps = ex.steps();
  out.written = dst.copy();
  out.read = local.copy();
  out.received = rbuf.copy();
  out.word = word.u64(0);
  // Correctness, whatever the schedule.
  EXPECT_EQ(got, expected) << "seed " << seed;
  for (const auto& [step, wr_id, status] : out.events)
    EXPECT_EQ(status, int(WcStatus::kSuccess)) << "seed " << seed << " wr_id " << wr_id;
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 1024)) << "seed " << seed;
  EXPECT_TRUE(BytesEqual(local.data(), remote.data(), 1024)) << "seed " << seed;
  EXPECT_TRUE(BytesEqual(rbuf.data(), bsrc.data(), 256)) << "seed " << seed;
  EXPECT_EQ(out.word, 8u) << "seed " << seed;
  return out;
}

TEST(ManualExecutor, SameSeedTakesTheSameStepsWithTheSameResults) {
  const Outcome first = run_mixed_traffic(42);
  const Outcome second = run_mixed_traffic(42);
  EXPECT_EQ(first.steps, second.steps);
  EXPECT_EQ(first.events, second.events);
  EXPECT_TRUE(first == second);
}

TEST(ManualExecutor, EverySeedGivesCorrectResults) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    run_mixed_traffic(seed);
  }
}

TEST(ManualExecutor, DifferentSeedsExploreDifferentSchedules) {
  std::set<std::vector<std::tuple<uint64_t, uint64_t, int>>> schedules;
  for (uint64_t seed = 1; seed <= 10; ++seed) schedules.insert(run_mixed_traffic(seed).events);
  EXPECT_GT(schedules.size(), 1u);
}

TEST(ManualExecutor, EachStepAdvancesVirtualTime) {
  soft::Fabric fabric;
  soft::ManualExecutor ex(3, /*ns_per_step=*/250);
  Node a(fabric, ex), b(fabric, ex);
  const uint64_t t0 = ex.now_ns();
  const uint64_t s0 = ex.steps();
  run_steps(ex, 100);
  EXPECT_EQ(ex.steps() - s0, 100u);
  EXPECT_EQ(ex.now_ns() - t0, 100u * 250u);
  ex.advance_time(1000);
  EXPECT_EQ(ex.now_ns() - t0, 100u * 250u + 1000u);
  EXPECT_EQ(ex.seed(), 3u);
}

TEST(ManualExecutor, RunUntilStopsAtMaxStepsWhenThePredicateStaysFalse) {
  soft::Fabric fabric;
  soft::ManualExecutor ex(4);
  Node a(fabric, ex);
  const uint64_t s0 = ex.steps();
  EXPECT_FALSE(ex.run_until([] { return false; }, 10));
  EXPECT_LE(ex.steps() - s0, 10u);
  EXPECT_TRUE(ex.run_until([] { return true; }, 10));
}

TEST(ManualExecutor, RunUntilIdleLeavesEveryNicIdle) {
  TwoNodes t(5);
  Region src = t.a.alloc_pattern(256, kLocalWrite, 1);
  Region dst = t.b.alloc(256, kAll);
  for (int i = 0; i < 4; ++i) HL_ASSERT_OK(post_write(*t.qa, src.sge(64 * i, 64), dst.addr(64 * i), dst.rkey(), 0));
  EXPECT_TRUE(t.ex.run_until_idle());
  EXPECT_TRUE(t.a.nic().idle());
  EXPECT_TRUE(t.b.nic().idle());
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 256));
}

TEST(ManualExecutor, RemovedNicMakesNoProgressUntilAddedBack) {
  TwoNodes t(6);
  Region src = t.a.alloc_pattern(32, kLocalWrite, 1);
  Region dst = t.b.alloc(32, kAll, 0);
  t.ex.remove(t.b.nic());
  HL_ASSERT_OK(post_write(*t.qa, src.sge(0, 32), dst.addr(), dst.rkey()));
  run_steps(t.ex, 2000);
  EXPECT_TRUE(AllBytesAre(dst.data(), 32, 0));
  EXPECT_TRUE(drain(t.a.cq()).empty());
  t.ex.add(t.b.nic());
  auto wc = t.poll_a();
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 32));
}

// ---- stats ----------------------------------------------------------------------------------------

using Stats = TwoNodeTest;

TEST_F(Stats, AppCallsCountEveryDataPathCall) {
  Region buf = a.alloc(64, kLocalWrite);
  auto calls = [&] { return a.stats().app_calls; };
  uint64_t before = calls();
  HL_ASSERT_OK(post_nop(*qa, 0));
  EXPECT_GT(calls(), before) << "post_send";
  before = calls();
  HL_ASSERT_OK(post_recv(*qa, buf.sge(0, 64)));
  EXPECT_GT(calls(), before) << "post_recv";
  before = calls();
  (void)drain(a.cq());
  EXPECT_GT(calls(), before) << "poll";
  before = calls();
  auto ring = must(qa->raw_send_ring(), "raw_send_ring");
  EXPECT_GT(calls(), before) << "raw_send_ring";
  const uint32_t pi = qa->send_producer();
  ASSERT_NE(mlx5::encode_send_wqe(ring, pi, raw_wqe(mlx5::kOpNop, qa->qpn(), 0)), 0u);
  before = calls();
  HL_ASSERT_OK(qa->ring_send_doorbell(pi + 1));
  EXPECT_GT(calls(), before) << "ring_send_doorbell";
}

TEST_F(Stats, NicWorkIsNotCountedAsAppCalls) {
  Region src = a.alloc_pattern(64, kLocalWrite, 1);
  Region dst = b.alloc(64, kAll);
  Region rbuf = b.alloc(64, kLocalWrite);
  HL_ASSERT_OK(post_recv(*qb, rbuf.sge(0, 64)));
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 64), dst.addr(), dst.rkey(), 0));
  HL_ASSERT_OK(post_send_msg(*qa, src.sge(0, 64), 0));
  const uint64_t a0 = a.stats().app_calls;
  const uint64_t b0 = b.stats().app_calls;
  EXPECT_TRUE(ex.run_until_idle());
  EXPECT_TRUE(BytesEqual(rbuf.data(), src.data(), 64));
  EXPECT_EQ(a.stats().app_calls, a0);
  EXPECT_EQ(b.stats().app_calls, b0);
}

TEST_F(Stats, CountersTrackExecutedWqesPacketsAndErrors) {
  const soft::NicStats s0 = a.stats();
  for (int i = 0; i < 5; ++i) HL_ASSERT_OK(post_nop(*qa, 0));
  Region src = a.alloc_pattern(64, kLocalWrite, 1);
  Region dst = b.alloc(64, kAll);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 64), dst.addr(), dst.rkey(), 0));
  EXPECT_TRUE(ex.run_until_idle());
  const soft::NicStats s1 = a.stats();
  EXPECT_EQ(s1.wqes_executed - s0.wqes_executed, 6u);
  EXPECT_GT(s1.packets_sent, s0.packets_sent);
  EXPECT_GT(s1.polls, s0.polls);
  EXPECT_GT(b.stats().packets_received, 0u);
  EXPECT_EQ(s1.error_cqes, s0.error_cqes);
  HL_ASSERT_OK(post_write(*qa, src.sge(0, 64), dst.addr(), ~dst.rkey(), 0));
  ASSERT_TRUE(poll_a());
  EXPECT_EQ(a.stats().error_cqes - s0.error_cqes, 1u);
}

}  // namespace
}  // namespace hyperloop::soft_test
