// Conformance: completion notification (rnic.h CompletionChannel,
// CompletionQueue::arm) with verbs semantics on every device that has it
// (caps.completion_channel; elsewhere both are kNotSupported): one-shot
// arming, nothing for completions that came before the arm or for
// unsignaled work, solicited-only arming, several CQs on one channel, a
// pollable level-triggered fd, and every destruction order. (Waking a
// blocked waiter from the software RNIC's executor thread, and its one
// pending event per CQ, are soft_notify_test's.)
//
// Nothing sleeps: the harness drives the device until an event is pending
// (fd readable) or a completion is polled; polling a CQ does not touch its
// events. NoEvent is a bounded wait for an event that must not come.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <set>

#include "conformance_util.h"

namespace hyperloop::conformance {
namespace {

// Two nodes; a's QP completes into `cq`, which is attached to `ch` (where
// the device has completion channels).
class Notify : public DeviceTest {
 protected:
  Notify()
      : a(h),
        b(h),
        ch(open_channel(a)),
        cq(&a.new_cq(rnic::CqAttr{.channel = ch.get()})),
        p(connect(a, attr_with(*cq, *cq), b, b.qp_attr())),
        src(a.alloc_pattern(256, kLocalWrite, 5)),
        dst(b.alloc(256, kAll, 0)) {}

  const rnic::DeviceCaps& caps() const { return a.caps(); }
  Status write(uint64_t wr_id, uint32_t flags = kSig) {
    return post_write(*p.a, src.sge(0, 64), dst.addr(0), dst.rkey(), flags, wr_id);
  }
  // Drives the device until the channel has an event pending.
  bool event_pending() {
    return h.run_until([&] { return fd_readable(ch->fd(), 0); });
  }
  std::unique_ptr<rnic::CompletionChannel> open_channel(Node& n) {
    auto r = n.device().create_completion_channel();
    if (r.is_ok()) return std::move(r).value();
    channel_status = r.status();
    return nullptr;
  }

  Node a, b;
  Status channel_status;
  std::unique_ptr<rnic::CompletionChannel> ch;
  CompletionQueue* cq;
  QpPair p;
  Region src, dst;
};
HL_CONFORMANCE_SUITE(Notify);

// Where the device has no completion channels, creating one and arming a CQ
// are kNotSupported, and the test ends there.
#define HL_CHANNELS_OR_NOT_SUPPORTED()                                         \
  do {                                                                         \
    if (!caps().completion_channel) {                                          \
      EXPECT_EQ(channel_status.code(), StatusCode::kNotSupported);             \
      EXPECT_EQ(cq->arm().code(), StatusCode::kNotSupported);                  \
      return;                                                                  \
    }                                                                          \
    ASSERT_TRUE(ch) << "completion_channel, yet: " << channel_status.to_string(); \
  } while (0)

TEST_P(Notify, NoEventWithoutArming) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  HL_ASSERT_OK(write(1));
  auto wc = poll_one(*cq, h);
  ASSERT_TRUE(wc);
  EXPECT_FALSE(fd_readable(ch->fd(), 0));
  EXPECT_TRUE(NoEvent(*ch));
}

TEST_P(Notify, ArmingIsOneShot) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(event_pending());
  ASSERT_TRUE(EventFor(*ch, cq));
  ASSERT_EQ(drain(*cq).size(), 1u);  // the event is sent after the CQE is written
  // Not re-armed: the second completion fires nothing.
  HL_ASSERT_OK(write(2));
  auto wc = poll_one(*cq, h);
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->wr_id, 2u);
  EXPECT_TRUE(NoEvent(*ch));
  // Re-armed: the third does.
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(3));
  ASSERT_TRUE(event_pending());
  ASSERT_TRUE(EventFor(*ch, cq));
  ASSERT_EQ(drain(*cq).size(), 1u);
}

TEST_P(Notify, TheFdIsPollableAndReadableOnlyWhileAnEventIsPending) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  EXPECT_GE(ch->fd(), 0);
  EXPECT_FALSE(fd_readable(ch->fd(), 0));
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(event_pending());
  EXPECT_TRUE(fd_readable(ch->fd(), 0));  // level-triggered: still readable until taken
  ASSERT_TRUE(EventFor(*ch, cq));
  EXPECT_FALSE(fd_readable(ch->fd(), 0));
  EXPECT_EQ(drain(*cq).size(), 1u);
}

TEST_P(Notify, EachCqOnOneChannelFiresOnce) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  CompletionQueue& c1 = a.new_cq(rnic::CqAttr{.channel = ch.get()});
  CompletionQueue& c2 = a.new_cq(rnic::CqAttr{.channel = ch.get()});
  QpPair p1 = connect(a, attr_with(c1, c1), b, b.qp_attr());
  QpPair p2 = connect(a, attr_with(c2, c2), b, b.qp_attr());
  HL_ASSERT_OK(c1.arm());
  HL_ASSERT_OK(c2.arm());
  // Two completions on each CQ: still one event each (one-shot).
  for (int i = 0; i < 2; ++i) {
    HL_ASSERT_OK(post_write(*p1.a, src.sge(0, 64), dst.addr(0), dst.rkey(), kSig, 10 + i));
    HL_ASSERT_OK(post_write(*p2.a, src.sge(0, 64), dst.addr(64), dst.rkey(), kSig, 20 + i));
  }
  std::set<CompletionQueue*> fired;
  bool twice = false;
  EXPECT_TRUE(h.run_until([&] {
    auto r = ch->wait(0);
    if (r.is_ok()) {
      if (!fired.insert(*r).second) twice = true;
      EXPECT_FALSE(twice) << "CQ " << (*r)->cqn() << " fired twice";
    }
    return fired.size() == 2 || twice;
  }));
  EXPECT_EQ(fired, (std::set<CompletionQueue*>{&c1, &c2}));
  for (CompletionQueue* c : {&c1, &c2}) {
    const auto wcs = poll_n(*c, h, 2);
    ASSERT_EQ(wcs.size(), 2u);
    for (const auto& wc : wcs) EXPECT_EQ(wc.status, WcStatus::kSuccess) << describe(wc);
  }
  EXPECT_TRUE(NoEvent(*ch));
}

TEST_P(Notify, ACompletionBeforeTheArmFiresNothingButTheNextPollFindsIt) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  HL_ASSERT_OK(write(1));
  settle(h);  // the CQE is in the CQ, unpolled
  HL_ASSERT_OK(cq->arm());
  EXPECT_TRUE(NoEvent(*ch));  // as in verbs: no event for what was already there
  auto got = drain(*cq);      // the pattern's poll after arm catches it
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].wr_id, 1u);
  // The CQ is still armed: the next completion fires.
  HL_ASSERT_OK(write(2));
  ASSERT_TRUE(event_pending());
  ASSERT_TRUE(EventFor(*ch, cq));
}

TEST_P(Notify, SolicitedOnlyFiresOnASolicitedReceiveOrAnError) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  // b sends to a; a's QP receives into cq.
  Region rbuf = a.alloc(256, kLocalWrite, 0);
  Region msg = b.alloc_pattern(64, kLocalWrite, 9);
  for (int i = 0; i < 3; ++i) HL_ASSERT_OK(post_recv(*p.a, rbuf.sge(64 * i, 64), 100 + i));
  HL_ASSERT_OK(cq->arm(/*solicited_only=*/true));
  HL_ASSERT_OK(post_send_msg(*p.b, msg.sge(0, 64), kSig, 1));
  auto recv = poll_one(*cq, h);
  ASSERT_TRUE(recv);
  EXPECT_EQ(recv->opcode, WcOpcode::kRecv) << describe(*recv);
  EXPECT_TRUE(NoEvent(*ch));  // not solicited
  HL_ASSERT_OK(write(2));     // a's own signaled WRITE: not solicited either
  auto own = poll_one(*cq, h);
  ASSERT_TRUE(own);
  EXPECT_EQ(own->wr_id, 2u);
  EXPECT_TRUE(NoEvent(*ch));
  HL_ASSERT_OK(post_send_msg(*p.b, msg.sge(0, 64), kSig | rnic::kSendSolicited, 3));
  ASSERT_TRUE(event_pending());
  ASSERT_TRUE(EventFor(*ch, cq));
  auto got = drain(*cq);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].opcode, WcOpcode::kRecv);
  EXPECT_EQ(got[0].wr_id, 101u);
  // An error completion fires a solicited-only arming too: a WRITE with a bad rkey.
  HL_ASSERT_OK(cq->arm(true));
  HL_ASSERT_OK(post_write(*p.a, src.sge(0, 8), dst.addr(0), dst.rkey() ^ 0x100, kSig, 4));
  ASSERT_TRUE(event_pending());
  ASSERT_TRUE(EventFor(*ch, cq));
  got = drain(*cq);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got[0].status, WcStatus::kRemoteAccessError) << describe(got[0]);
}

TEST_P(Notify, APlainArmWidensASolicitedOnlyArming) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  HL_ASSERT_OK(cq->arm(true));
  HL_ASSERT_OK(cq->arm(false));
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(event_pending());
  ASSERT_TRUE(EventFor(*ch, cq));
}

TEST_P(Notify, AnUnsignaledWriteFiresNothing) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1, 0));
  settle(h);
  EXPECT_TRUE(BytesEqual(dst.data(), src.data(), 64));
  EXPECT_TRUE(NoEvent(*ch));
}

// ---- lifetimes (ASan) ------------------------------------------------------------------------

TEST_P(Notify, DestroyingACqDiscardsItsPendingEvent) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(event_pending());
  a.destroy_qp(p.a);
  a.destroy_cq(cq);
  EXPECT_FALSE(fd_readable(ch->fd(), 0));
  EXPECT_TRUE(NoEvent(*ch));  // never a destroyed CQ
}

TEST_P(Notify, DestroyingOneCqKeepsTheOtherCqsEvent) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  CompletionQueue& c2 = a.new_cq(rnic::CqAttr{.channel = ch.get()});
  QpPair p2 = connect(a, attr_with(c2, c2), b, b.qp_attr());
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(c2.arm());
  HL_ASSERT_OK(write(1));
  HL_ASSERT_OK(post_write(*p2.a, src.sge(0, 64), dst.addr(64), dst.rkey(), kSig, 2));
  // Both completions written (polling leaves the events alone): both fired.
  ASSERT_TRUE(poll_one(*cq, h));
  ASSERT_TRUE(poll_one(c2, h));
  a.destroy_qp(p.a);
  a.destroy_cq(cq);
  ASSERT_TRUE(event_pending());
  ASSERT_TRUE(EventFor(*ch, &c2));
  EXPECT_TRUE(NoEvent(*ch));
}

TEST_P(Notify, DestroyingTheChannelFirstLeavesItsCqsUsable) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  HL_ASSERT_OK(cq->arm());
  ch.reset();  // CQ still attached and armed
  HL_ASSERT_OK(write(1));
  auto wc = poll_one(*cq, h);  // its event fires into nothing
  ASSERT_TRUE(wc);
  EXPECT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  settle(h);
  EXPECT_TRUE(drain(*cq).empty());
  auto s = cq->arm();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.to_string();
  a.destroy_qp(p.a);
  a.destroy_cq(cq);  // the last holder of the channel's state
}

TEST_P(Notify, DestroyingTheChannelWithAPendingEvent) {
  HL_CHANNELS_OR_NOT_SUPPORTED();
  HL_ASSERT_OK(cq->arm());
  HL_ASSERT_OK(write(1));
  ASSERT_TRUE(event_pending());
  ch.reset();
  EXPECT_EQ(drain(*cq).size(), 1u);
  a.destroy_qp(p.a);
  a.destroy_cq(cq);
}

// ---- misuse --------------------------------------------------------------------------------

class NotifyErrors : public DeviceTest {};
HL_CONFORMANCE_SUITE(NotifyErrors);

TEST_P(NotifyErrors, ArmWithoutAChannelOrWithAForeignChannel) {
  Node a(h), b(h);
  auto s = a.cq().arm();
  auto ch = b.device().create_completion_channel();
  if (!a.caps().completion_channel) {
    EXPECT_EQ(s.code(), StatusCode::kNotSupported) << s.to_string();
    EXPECT_EQ(ch.status().code(), StatusCode::kNotSupported);
    return;
  }
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.to_string();
  HL_ASSERT_OK(ch);
  auto r = a.device().create_cq(rnic::CqAttr{.channel = ch->get()});
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  auto w = (*ch)->wait(0);
  ASSERT_FALSE(w.is_ok());
  EXPECT_EQ(w.status().code(), StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace hyperloop::conformance
