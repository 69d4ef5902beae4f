// Completion notification (rnic.h CompletionChannel, CompletionQueue::arm) on
// the software RNIC: verbs semantics (one-shot arming, nothing for
// completions that came before the arm, the arm-then-poll pattern), several
// CQs on one channel, a pollable fd, ManualExecutor, and every destruction
// order.
//
// Determinism: no test sleeps. Timeouts are upper bounds only: a generous one
// where an event must come, and a short one where none may; before a "no
// event" check the NIC's engine lock is taken once (engine_barrier), so a CQE
// already polled has also finished firing whatever it fires.
#include <gtest/gtest.h>
#include <poll.h>

#include <cstdint>
#include <memory>
#include <set>
#include <thread>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

constexpr int64_t kGenerousNs = 30'000'000'000;  // an event that must come
constexpr int64_t kShortNs = 1'000'000;          // an event that must not
constexpr int kGenerousMs = 30'000;

// Every CQE pushed before this returns has also done its notification: push_cqe
// runs under the NIC's engine lock, and stats() takes it.
void engine_barrier(Node& n) { (void)n.stats(); }

bool fd_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  const int r = ::poll(&p, 1, timeout_ms);
  return r == 1 && (p.revents & POLLIN);
}

::testing::AssertionResult NoEvent(rn::CompletionChannel& ch) {
  auto r = ch.wait(kShortNs);
  if (r.is_ok()) return ::testing::AssertionFailure() << "an event fired for CQ " << (*r)->cqn();
  if (r.status().code() != StatusCode::kDeadlineExceeded)
    return ::testing::AssertionFailure() << "wait failed: " << r.status().to_string();
  return ::testing::AssertionSuccess();
}

// An event is pending now (wait(0) does not block) and it names `cq`.
::testing::AssertionResult EventFor(rn::CompletionChannel& ch, const CompletionQueue* cq) {
  auto r = ch.wait(0);
  if (!r.is_ok()) return ::testing::AssertionFailure() << "no event: " << r.status().to_string();
  if (*r != cq) return ::testing::AssertionFailure() << "the event names CQ " << (*r)->cqn() << ", not " << cq->cqn();
  return ::testing::AssertionSuccess();
}

QpAttr attr_with(CompletionQueue& scq, CompletionQueue& rcq) {
  QpAttr a;
  a.send_cq = &scq;
  a.recv_cq = &rcq;
  return a;
}

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

TEST_F(NotifyThreaded, NoEventWithoutArming) {
  HL_ASSERT_OK(write(1));
  auto wc = spin_poll_one(cq);
  ASSERT_TRUE(wc);
  engine_barrier(a);
  EXPECT_FALSE(fd_readable(ch->fd(), 0));
  EXPECT_TRUE(NoEvent(*ch));
}

TEST_F(NotifyThreaded, ArmingIsOneShot) {
  HL_ASSERT_OK(cq.arm());
  HL_ASSERT_OK(write(1));
  auto r = ch->wait(kGenerousNs);
  HL_ASSERT_OK(r);
  EXPECT_EQ(*r, &cq);
  ASSERT_EQ(drain(cq).size(), 1u);
  // Not re-armed: the second completion fires nothing.
  HL_ASSERT_OK(write(2));
  auto wc = spin_poll_one(cq);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->wr_id, 2u);
  engine_barrier(a);
  EXPECT_TRUE(NoEvent(*ch));
  // Re-armed: the third does.
  HL_ASSERT_OK(cq.arm());
  HL_ASSERT_OK(write(3));
  r = ch->wait(kGenerousNs);
  HL_ASSERT_OK(r);
  EXPECT_EQ(*r, &cq);
  ASSERT_EQ(drain(cq).size(), 1u);
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

TEST_F(NotifyThreaded, TheFdIsPollableAndReadableOnlyWhileAnEventIsPending) {
  EXPECT_GE(ch->fd(), 0);
  EXPECT_FALSE(fd_readable(ch->fd(), 0));
  HL_ASSERT_OK(cq.arm());
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(fd_readable(ch->fd(), kGenerousMs));
  EXPECT_TRUE(fd_readable(ch->fd(), 0));  // level-triggered: still readable until taken
  ASSERT_TRUE(EventFor(*ch, &cq));
  EXPECT_FALSE(fd_readable(ch->fd(), 0));
  EXPECT_EQ(drain(cq).size(), 1u);
}

TEST(NotifyTwoCqs, EachCqOnOneChannelFiresOnce) {
  soft::Fabric fabric;
  soft::SingleThreadExecutor ex;
  Node a(fabric, ex), b(fabric, ex);
  auto ch = must(a.nic().create_completion_channel(), "create_completion_channel");
  CompletionQueue& c1 = a.new_cq(rn::CqAttr{.channel = ch.get()});
  CompletionQueue& c2 = a.new_cq(rn::CqAttr{.channel = ch.get()});
  QpPair p1 = connect(a, attr_with(c1, c1), b, b.qp_attr());
  QpPair p2 = connect(a, attr_with(c2, c2), b, b.qp_attr());
  Region src = a.alloc_pattern(64, kLocalWrite, 1);
  Region dst = b.alloc(128, kAll, 0);
  HL_ASSERT_OK(c1.arm());
  HL_ASSERT_OK(c2.arm());
  // Two completions on each CQ: still one event each (one-shot).
  for (int i = 0; i < 2; ++i) {
    HL_ASSERT_OK(post_write(*p1.a, src.sge(0, 64), dst.addr(0), dst.rkey(), kSig, 10 + i));
    HL_ASSERT_OK(post_write(*p2.a, src.sge(0, 64), dst.addr(64), dst.rkey(), kSig, 20 + i));
  }
  std::set<CompletionQueue*> fired;
  for (int i = 0; i < 2; ++i) {
    auto r = ch->wait(kGenerousNs);
    HL_ASSERT_OK(r);
    EXPECT_TRUE(fired.insert(*r).second) << "CQ " << (*r)->cqn() << " fired twice";
  }
  EXPECT_EQ(fired, (std::set<CompletionQueue*>{&c1, &c2}));
  for (CompletionQueue* c : {&c1, &c2}) {
    size_t n = drain(*c).size();
    while (n < 2) {
      auto wc = spin_poll_one(*c);
      ASSERT_TRUE(wc);
      ++n;
    }
    EXPECT_EQ(n, 2u);
  }
  engine_barrier(a);
  EXPECT_TRUE(NoEvent(*ch));
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

TEST_F(NotifyManual, ACompletionBeforeTheArmFiresNothingButTheNextPollFindsIt) {
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));  // the CQE is in the CQ, unpolled
  HL_ASSERT_OK(cq->arm());
  EXPECT_TRUE(NoEvent(*ch));  // as in verbs: no event for what was already there
  auto got = drain(*cq);      // the pattern's poll after arm catches it
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].wr_id, 1u);
  // The CQ is still armed: the next completion fires.
  HL_ASSERT_OK(write(2));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  ASSERT_TRUE(EventFor(*ch, cq));
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

TEST_F(NotifyManual, SolicitedOnlyFiresOnASolicitedReceiveOrAnError) {
  // b sends to a; a's QP receives into cq.
  Region rbuf = a.alloc(256, kLocalWrite, 0);
  Region msg = b.alloc_pattern(64, kLocalWrite, 9);
  for (int i = 0; i < 3; ++i) HL_ASSERT_OK(post_recv(*p.a, rbuf.sge(64 * i, 64), 100 + i));
  HL_ASSERT_OK(cq->arm(/*solicited_only=*/true));
  HL_ASSERT_OK(post_send_msg(*p.b, msg.sge(0, 64), kSig, 1));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  EXPECT_TRUE(NoEvent(*ch));  // not solicited
  HL_ASSERT_OK(write(2));     // a's own signaled WRITE: not solicited either
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  EXPECT_TRUE(NoEvent(*ch));
  EXPECT_EQ(drain(*cq).size(), 2u);
  HL_ASSERT_OK(post_send_msg(*p.b, msg.sge(0, 64), kSig | rn::kSendSolicited, 3));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  ASSERT_TRUE(EventFor(*ch, cq));
  auto got = drain(*cq);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].opcode, WcOpcode::kRecv);
  EXPECT_EQ(got[0].wr_id, 101u);
  // An error completion fires a solicited-only arming too: a WRITE with a bad rkey.
  HL_ASSERT_OK(cq->arm(true));
  HL_ASSERT_OK(post_write(*p.a, src.sge(0, 8), dst.addr(0), dst.rkey() ^ 0x100, kSig, 4));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  ASSERT_TRUE(EventFor(*ch, cq));
  got = drain(*cq);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got[0].status, WcStatus::kRemoteAccessError) << describe(got[0]);
}

TEST_F(NotifyManual, APlainArmWidensASolicitedOnlyArming) {
  HL_ASSERT_OK(cq->arm(true));
  HL_ASSERT_OK(cq->arm(false));
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  ASSERT_TRUE(EventFor(*ch, cq));
}

TEST_F(NotifyManual, AnUnsignaledWriteFiresNothing) {
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1, 0));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 64));
  EXPECT_TRUE(NoEvent(*ch));
}

// ---- lifetimes (ASan) ------------------------------------------------------------------------

TEST_F(NotifyManual, DestroyingACqDiscardsItsPendingEvent) {
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  ASSERT_TRUE(fd_readable(ch->fd(), 0));
  a.destroy_qp(p.a);
  a.destroy_cq(cq);
  EXPECT_FALSE(fd_readable(ch->fd(), 0));
  EXPECT_TRUE(NoEvent(*ch));  // never a destroyed CQ
}

TEST_F(NotifyManual, DestroyingOneCqKeepsTheOtherCqsEvent) {
  CompletionQueue& c2 = a.new_cq(rn::CqAttr{.channel = ch.get()});
  QpPair p2 = connect(a, attr_with(c2, c2), b, b.qp_attr());
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(c2.arm());
  HL_ASSERT_OK(write(1));
  HL_ASSERT_OK(post_write(*p2.a, src.sge(0, 64), dst.addr(64), dst.rkey(), kSig, 2));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  a.destroy_qp(p.a);
  a.destroy_cq(cq);
  ASSERT_TRUE(fd_readable(ch->fd(), 0));
  ASSERT_TRUE(EventFor(*ch, &c2));
  EXPECT_TRUE(NoEvent(*ch));
}

TEST_F(NotifyManual, DestroyingTheChannelFirstLeavesItsCqsUsable) {
  HL_ASSERT_OK(cq->arm());
  ch.reset();  // CQ still attached and armed
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));  // fires into nothing
  auto got = drain(*cq);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].status, WcStatus::kSuccess);
  auto s = cq->arm();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.to_string();
  a.destroy_qp(p.a);
  a.destroy_cq(cq);  // the last holder of the channel's state
}

TEST_F(NotifyManual, DestroyingTheChannelWithAPendingEvent) {
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(ex.run_until_idle(kDefaultMaxSteps));
  ch.reset();
  EXPECT_EQ(drain(*cq).size(), 1u);
  a.destroy_qp(p.a);
  a.destroy_cq(cq);
}

TEST(NotifyErrors, ArmWithoutAChannelOrWithAForeignChannel) {
  soft::Fabric fabric;
  soft::ManualExecutor ex(1);
  Node a(fabric, ex), b(fabric, ex);
  auto s = a.cq().arm();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.to_string();
  auto ch = must(b.nic().create_completion_channel(), "create_completion_channel");
  auto r = a.nic().create_cq(rn::CqAttr{.channel = ch.get()});
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  auto w = ch->wait(0);
  ASSERT_FALSE(w.is_ok());
  EXPECT_EQ(w.status().code(), StatusCode::kDeadlineExceeded);
}

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
