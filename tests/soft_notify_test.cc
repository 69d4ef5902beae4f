// Completion notification on the software RNIC's executors: a waiter
// blocked in wait() is woken by the executor thread, the arm-poll-wait
// pattern against completions racing the arm, a ManualExecutor that must be
// stepped before waiting, one pending event per CQ, and the defaults of a
// device without channels. (The verbs semantics every device shares are
// conformance_notify_test's.)
//
// Determinism: no test sleeps. Timeouts are upper bounds only: a generous one
// where an event must come, and a short one where none may.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <thread>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

constexpr int64_t kGenerousNs = 30'000'000'000;  // an event that must come

// Two NICs on a SingleThreadExecutor; a's QP completes into `cq`, which is
// attached to `ch`.
class NotifyThreaded : public ::testing::Test {
 protected:
  NotifyThreaded()
      : a(fabric, ex),
        b(fabric, ex),
        ch(must(a.nic().create_completion_channel(), "create_completion_channel")),
        cq(a.new_cq(rn::CqAttr{.channel = ch.get()})),
        p(connect(a, attr_with(cq, cq), b, b.qp_attr())),
        src(a.alloc_pattern(256, kLocalWrite, 3)),
        dst(b.alloc(256, kAll, 0)) {}

  Status write(uint64_t wr_id) { return post_write(*p.a, src.sge(0, 64), dst.addr(0), dst.rkey(), kSig, wr_id); }

  soft::Fabric fabric;
  soft::SingleThreadExecutor ex;
  Node a, b;
  std::unique_ptr<rn::CompletionChannel> ch;
  CompletionQueue& cq;
  QpPair p;
  Region src, dst;
};

TEST_F(NotifyThreaded, ArmedCqWakesTheWaiterAndPollFindsTheCompletion) {
  EXPECT_TRUE(a.nic().caps().completion_channel);
  HL_ASSERT_OK(cq.arm());
  HL_ASSERT_OK(write(7));
  auto r = ch->wait(kGenerousNs);
  HL_ASSERT_OK(r);
  EXPECT_EQ(*r, &cq);
  // The event is sent after the CQE is written: it is there.
  auto got = drain(cq);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].wr_id, 7u);
  EXPECT_EQ(got[0].status, WcStatus::kSuccess) << describe(got[0]);
  EXPECT_EQ(got[0].opcode, WcOpcode::kRdmaWrite);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 64));
}

TEST_F(NotifyThreaded, AWaiterOnAnotherThreadSleepsUntilTheCompletion) {
  HL_ASSERT_OK(cq.arm());
  Result<CompletionQueue*> woke = internal_error("not run");
  std::thread waiter([&] { woke = ch->wait(kGenerousNs); });
  HL_ASSERT_OK(write(1));
  waiter.join();
  HL_ASSERT_OK(woke);
  EXPECT_EQ(*woke, &cq);
  EXPECT_EQ(drain(cq).size(), 1u);
}

TEST_F(NotifyThreaded, ArmPollWaitPatternNeverLosesACompletion) {
  // The documented loop, with completions racing the arm in every way the
  // executor thread makes them: each round's completion is found exactly once,
  // by the poll after arm or after a wait.
  constexpr int kRounds = 300;
  int found = 0, after_wait = 0, raced_arm = 0;
  for (int i = 0; i < kRounds; ++i) {
    SCOPED_TRACE("round " + std::to_string(i));
    HL_ASSERT_OK(write(uint64_t(i)));
    int got = 0;
    while (got == 0) {
      HL_ASSERT_OK(cq.arm());
      auto now = drain(cq);
      if (!now.empty()) {
        got += int(now.size());
        ++raced_arm;
        continue;  // the CQ stays armed: a later event may be stale, wait() tolerates it
      }
      auto r = ch->wait(kGenerousNs);
      HL_ASSERT_OK(r);
      ASSERT_EQ(*r, &cq);
      auto after = drain(cq);
      got += int(after.size());
      if (!after.empty()) ++after_wait;
    }
    ASSERT_EQ(got, 1);
    found += got;
  }
  EXPECT_EQ(found, kRounds);
  EXPECT_EQ(after_wait + raced_arm, kRounds);
}

// ---- ManualExecutor: deterministic, nothing runs unless stepped ------------------------------

class NotifyManual : public ::testing::Test {
 protected:
  NotifyManual()
      : ex(0x4e07),
        a(fabric, ex),
        b(fabric, ex),
        ch(must(a.nic().create_completion_channel(), "create_completion_channel")),
        cq(&a.new_cq(rn::CqAttr{.channel = ch.get()})),
        p(connect(a, attr_with(*cq, *cq), b, b.qp_attr())),
        src(a.alloc_pattern(256, kLocalWrite, 5)),
        dst(b.alloc(256, kAll, 0)) {}

  Status write(uint64_t wr_id, uint32_t flags = kSig) {
    return post_write(*p.a, src.sge(0, 64), dst.addr(0), dst.rkey(), flags, wr_id);
  }

  soft::Fabric fabric;
  soft::ManualExecutor ex;
  Node a, b;
  std::unique_ptr<rn::CompletionChannel> ch;
  CompletionQueue* cq;
  QpPair p;
  Region src, dst;
};

TEST_F(NotifyManual, WaitWithATimeoutDeliversAfterStepping) {
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1));
  // Nobody stepped the NICs: nothing happened, the wait times out.
  EXPECT_TRUE(NoEvent(*ch));
  EXPECT_TRUE(drain(*cq).empty());
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  ASSERT_TRUE(EventFor(*ch, cq));
  auto got = drain(*cq);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].wr_id, 1u);
}

// Software RNIC behaviour (rnic.h allows it; verbs may return the CQ twice):
// at most one pending event per CQ.
TEST_F(NotifyManual, EventsOfOneCqCoalesceAndArmingAnArmedCqChangesNothing) {
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  HL_ASSERT_OK(cq->arm());  // re-armed before the event was taken
  HL_ASSERT_OK(write(2));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  ASSERT_TRUE(EventFor(*ch, cq));
  EXPECT_TRUE(NoEvent(*ch));  // the second firing coalesced into the pending event
  EXPECT_EQ(drain(*cq).size(), 2u);
}

// ---- lifetimes (ASan) ------------------------------------------------------------------------

// A device without completion channels gets kNotSupported from the defaults.
TEST(NotifyErrors, DevicesWithoutChannelsReportNotSupported) {
  struct PlainCq final : rn::CompletionQueue {
    uint32_t cqn() const override { return 1; }
    uint32_t size() const override { return 1; }
    Result<size_t> poll(std::span<WorkCompletion>) override { return size_t{0}; }
    Result<mlx5::CqRingView> raw_ring() override { return not_supported("no"); }
    uint32_t consumer_index() const override { return 0; }
    void set_consumer_index(uint32_t) override {}
  };
  struct PlainDevice final : rn::Device {
    rn::DeviceCaps c;
    const rn::DeviceCaps& caps() const override { return c; }
    Result<std::unique_ptr<ProtectionDomain>> alloc_pd() override { return not_supported("no"); }
    Result<std::unique_ptr<CompletionQueue>> create_cq(const rn::CqAttr&) override {
      return std::unique_ptr<CompletionQueue>(std::make_unique<PlainCq>());
    }
  };
  PlainDevice d;
  EXPECT_FALSE(d.caps().completion_channel);
  auto ch = d.create_completion_channel();
  ASSERT_FALSE(ch.is_ok());
  EXPECT_EQ(ch.status().code(), StatusCode::kNotSupported);
  auto cq = must(d.create_cq({}), "create_cq");
  EXPECT_EQ(cq->arm().code(), StatusCode::kNotSupported);
}

}  // namespace
}  // namespace hyperloop::soft_test
