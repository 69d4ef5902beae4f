// The store's on-region format and the recovery plan (txn/format.h), on
// synthetic replica images: no group, no NIC. Records that are torn, carry
// the wrong LSN or lack the commit marker are never replayed; the plan takes
// each record from whichever replica holds it, stops at the first LSN no
// replica holds, clears locks and resyncs a lagging replica.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "format.h"

namespace hyperloop::txn::internal {
namespace {

StoreOptions small() {
  StoreOptions o;
  o.data_size = 4096;
  o.log_size = 2048;
  o.stripe_bytes = 64;
  return o;
}

std::vector<std::byte> bytes(size_t n, int v) { return std::vector<std::byte>(n, std::byte(v)); }

constexpr StoreId kIdA{0xA1, 0xA2}, kIdB{0xB1, 0xB2};

struct Images {
  Layout lay;
  std::vector<std::vector<std::byte>> img;
  uint64_t next_lsn = 1, pos = 0, epoch = 1;

  explicit Images(uint32_t n, StoreId id = kIdA) : lay(layout_of(small()).value()) {
    // Formatted as a fresh store would be: the blank plan's target.
    Result<Plan> p =
        plan_recovery(lay, std::vector<std::vector<std::byte>>(n, std::vector<std::byte>(lay.region)), {.fresh_id = id});
    img.assign(n, p.value().target);
    epoch = p.value().epoch;
  }
  // What a recovery with this plan leaves on every replica: the target's
  // superblock, lock table and data area; each replica's own log.
  void apply(const Plan& p) {
    for (auto& im : img) {
      std::memcpy(im.data(), p.target.data(), kSuperBytes);
      std::memcpy(im.data() + lay.lock_off, p.target.data() + lay.lock_off, lay.region - lay.lock_off);
    }
    next_lsn = p.head_lsn;
    pos = p.head_pos;
    epoch = p.epoch;
  }
  // Appends a record to the replicas in `mask`; returns its ring position.
  uint64_t append(const std::vector<Extent>& ranges, uint32_t mask) {
    Record r = build_record(lay, 1 << 20, ranges).value();
    uint64_t at = pos;
    if (at % lay.log_size + r.bytes.size() > lay.log_size) at += lay.log_size - at % lay.log_size;
    seal_record(r, next_lsn++, 99, epoch);
    for (uint32_t i = 0; i < img.size(); ++i)
      if (mask & (1u << i)) std::memcpy(img[i].data() + lay.log_off + at % lay.log_size, r.bytes.data(), r.bytes.size());
    pos = at + r.bytes.size();
    return at;
  }
  std::byte data(const std::vector<std::byte>& image, uint64_t off) const { return image[lay.data_off + off]; }
  uint64_t lock(const std::vector<std::byte>& image, uint64_t s) const {
    uint64_t w;
    std::memcpy(&w, image.data() + lay.lock_off + 8 * s, 8);
    return w;
  }
};

TEST(TxnFormat, LayoutRejectsBadOptions) {
  StoreOptions o = small();
  o.stripe_bytes = 48;
  EXPECT_EQ(layout_of(o).status().code(), StatusCode::kInvalidArgument);
  o = small();
  o.log_size = 1000;
  EXPECT_EQ(layout_of(o).status().code(), StatusCode::kInvalidArgument);
  o = small();
  o.data_size = 0;
  EXPECT_EQ(layout_of(o).status().code(), StatusCode::kInvalidArgument);
  const Layout l = layout_of(small()).value();
  EXPECT_EQ(l.stripes, 64u);
  EXPECT_EQ(l.data_off % 64, 0u);
  EXPECT_EQ(l.region, l.data_off + 4096);
  EXPECT_EQ(Store::region_bytes(small()), l.region);
}

TEST(TxnFormat, CoalesceLaterWriteWinsAndRangesMerge) {
  const auto a = bytes(8, 1), b = bytes(4, 2), c = bytes(2, 3);
  std::vector<std::pair<uint64_t, std::span<const std::byte>>> w = {{100, a}, {104, b}, {300, c}, {106, c}};
  const auto out = coalesce(w);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].offset, 100u);
  ASSERT_EQ(out[0].bytes.size(), 8u);
  const std::vector<std::byte> want = {std::byte(1), std::byte(1), std::byte(1), std::byte(1),
                                       std::byte(2), std::byte(2), std::byte(3), std::byte(3)};
  EXPECT_EQ(out[0].bytes, want);
  EXPECT_EQ(out[1].offset, 300u);
}

TEST(TxnFormat, RecordTooLargeIsResourceExhausted) {
  const Layout l = layout_of(small()).value();
  EXPECT_EQ(build_record(l, 1 << 20, {{0, bytes(1024, 1)}}).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(build_record(l, 128, {{0, bytes(200, 1)}}).status().code(), StatusCode::kResourceExhausted);
}

// Every single-byte change of a sealed record (a torn or corrupted line)
// makes it invalid; so does asking for another LSN.
TEST(TxnFormat, AnyFlippedByteInvalidatesARecord) {
  Images im(1);
  const uint64_t at = im.append({{8, bytes(40, 7)}, {200, bytes(3, 9)}}, 1);
  const size_t n = valid_record(im.lay, im.img[0], at, 1, 1);
  ASSERT_GT(n, 0u);
  EXPECT_EQ(valid_record(im.lay, im.img[0], at, 2, 1), 0u);
  EXPECT_EQ(valid_record(im.lay, im.img[0], at, 1, 2), 0u);  // another epoch's
  for (size_t k = 0; k < n; ++k) {
    auto copy = im.img[0];
    copy[im.lay.log_off + at + k] ^= std::byte{0x10};
    EXPECT_EQ(valid_record(im.lay, copy, at, 1, 1), 0u) << "byte " << k;
  }
  // A record whose commit marker never landed (the tail line lost).
  auto copy = im.img[0];
  std::memset(copy.data() + im.lay.log_off + at + n - 64, 0, 64);
  EXPECT_EQ(valid_record(im.lay, copy, at, 1, 1), 0u);
}

TEST(TxnFormat, BlankReplicasAreFormatted) {
  Images im(3);
  Plan p = plan_recovery(im.lay, im.img, {}).value();
  EXPECT_GE(p.reference, 0);
  EXPECT_EQ(p.head_lsn, 1u);
  EXPECT_EQ(p.replayed, 0u);
}

TEST(TxnFormat, OtherLayoutIsDataLoss) {
  Images im(2);
  StoreOptions o = small();
  o.stripe_bytes = 128;
  const Layout other = layout_of(o).value();
  std::vector<std::vector<std::byte>> imgs = {std::vector<std::byte>(other.region), std::vector<std::byte>(other.region)};
  std::memcpy(imgs[0].data(), im.img[0].data(), kSuperBytes);
  EXPECT_EQ(plan_recovery(other, imgs, {}).status().code(), StatusCode::kDataLoss);
}

// Each record from whichever replica holds it; the scan stops at the first
// LSN held by none, even if later ones exist somewhere.
TEST(TxnFormat, ReplayTakesTheUnionAndStopsAtTheFirstGap) {
  Images im(3);
  im.append({{0, bytes(64, 1)}}, 0b001);    // lsn 1: head replica only
  im.append({{64, bytes(64, 2)}}, 0b100);   // lsn 2: tail only
  im.append({{128, bytes(64, 3)}}, 0b000);  // lsn 3: nowhere (never durable)
  im.append({{192, bytes(64, 4)}}, 0b111);  // lsn 4: after the gap, must not be replayed
  Plan p = plan_recovery(im.lay, im.img, {}).value();
  EXPECT_EQ(p.replayed, 2u);
  EXPECT_EQ(p.head_lsn, 3u);
  EXPECT_EQ(im.data(p.target, 0), std::byte(1));
  EXPECT_EQ(im.data(p.target, 64), std::byte(2));
  EXPECT_EQ(im.data(p.target, 128), std::byte(0));
  EXPECT_EQ(im.data(p.target, 192), std::byte(0));
  // Replayed stripes get a new version; the others are untouched.
  EXPECT_EQ(im.lock(p.target, 0), 1u);
  EXPECT_EQ(im.lock(p.target, 1), 1u);
  EXPECT_EQ(im.lock(p.target, 2), 0u);
}

// Records that skip the ring's end are found at the ring's start.
TEST(TxnFormat, ReplayFollowsTheRingWrap) {
  // Records of 192 bytes: ten fit the 2 KiB ring, the 11th skips its end
  // and overwrites the 1st. The head is at the 9th.
  Images w(2);
  uint64_t head_pos = 0, head_lsn = 0;
  for (int k = 1; k <= 14; ++k) {
    const uint64_t at = w.append({{uint64_t(k) * 64, bytes(60, k)}}, 0b11);
    if (k == 9) head_pos = at, head_lsn = 9;
  }
  for (auto& img : w.img) {
    const Head h = make_head(head_lsn, head_pos, 1);
    std::memcpy(img.data() + head_slot_offset(1), &h, sizeof h);
  }
  Plan p = plan_recovery(w.lay, w.img, {}).value();
  EXPECT_EQ(p.replayed, 6u);  // lsn 9..14, across the wrap
  EXPECT_EQ(p.head_lsn, 15u);
  EXPECT_EQ(w.data(p.target, 14 * 64), std::byte(14));
  EXPECT_EQ(w.data(p.target, 8 * 64), std::byte(0));  // before the head: not replayed
  EXPECT_EQ(p.head_slot, 0u);                          // the other slot than the newest head's
}

// A replica with an older head (restored from an old copy) is not the
// reference; stale lock words anywhere are cleared with a version bump.
TEST(TxnFormat, LaggingReplicaAndStaleLocks) {
  Images im(3);
  auto old_copy = im.img[1];
  im.append({{0, bytes(64, 5)}}, 0b111);
  // Applied and truncated on replicas 0 and 2: data written, head moved.
  for (uint32_t i : {0u, 2u}) {
    std::memset(im.img[i].data() + im.lay.data_off, 5, 64);
    const Head h = make_head(2, im.pos, 1);
    std::memcpy(im.img[i].data() + head_slot_offset(1), &h, sizeof h);
  }
  im.img[1] = old_copy;  // replica 1 lost all of it
  const uint64_t stale = kLocked | (uint64_t(7) << kTagShift) | 3;
  std::memcpy(im.img[2].data() + im.lay.lock_off + 8 * 5, &stale, 8);
  Plan p = plan_recovery(im.lay, im.img, {}).value();
  EXPECT_EQ(p.reference, 0);
  EXPECT_EQ(p.replayed, 0u);
  EXPECT_EQ(im.data(p.target, 0), std::byte(5));
  EXPECT_EQ(im.lock(p.target, 5), 4u);  // unlocked, above every replica's version
}

// A region of another store (same sizes, another id) is never taken as a
// lagging replica: kDataLoss naming it, unless it is re-seeded explicitly.
TEST(TxnFormat, ARegionOfAnotherStoreIsRefusedUnlessReseeded) {
  Images a(3), b(3, kIdB);
  a.append({{0, bytes(64, 1)}}, 0b111);
  b.append({{0, bytes(64, 2)}}, 0b111);
  auto imgs = a.img;
  imgs[2] = b.img[2];
  // A first open (no id known): the replicas disagree.
  Result<Plan> p = plan_recovery(a.lay, imgs, {});
  ASSERT_EQ(p.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(p.status().message().find("replica 2 holds store " + kIdB.to_string()), std::string::npos)
      << p.status().message();
  // A client that knows its store: the stranger is named, even at position 0.
  imgs = a.img;
  imgs[0] = b.img[0];
  p = plan_recovery(a.lay, imgs, {.expect = kIdA});
  ASSERT_EQ(p.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(p.status().message().find("replica 0"), std::string::npos) << p.status().message();
  // Re-seeded on purpose: overwritten with store A's state, A's record replayed.
  p = plan_recovery(a.lay, imgs, {.expect = kIdA, .reseed_mask = 0b001});
  ASSERT_TRUE(p.is_ok()) << p.status().to_string();
  EXPECT_TRUE(p.value().id == kIdA);
  EXPECT_EQ(a.data(p.value().target, 0), std::byte(1));
  StoreId id;
  uint32_t replicas = 0;
  ASSERT_TRUE(read_identity(p.value().target, &id, &replicas));
  EXPECT_TRUE(id == kIdA);
  EXPECT_EQ(replicas, 3u);
}

// A store formatted for 3 replicas is not recovered on 2 without being told.
TEST(TxnFormat, AnotherReplicaCountIsRefusedUnlessAllowed) {
  Images im(3);
  std::vector<std::vector<std::byte>> two = {im.img[0], im.img[1]};
  Result<Plan> p = plan_recovery(im.lay, two, {.expect = kIdA});
  ASSERT_EQ(p.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(p.status().message().find("3 replicas"), std::string::npos) << p.status().message();
  p = plan_recovery(im.lay, two, {.expect = kIdA, .allow_resize = true});
  ASSERT_TRUE(p.is_ok()) << p.status().to_string();
  StoreId id;
  uint32_t replicas = 0;
  ASSERT_TRUE(read_identity(p.value().target, &id, &replicas));
  EXPECT_EQ(replicas, 2u);
}

// Every recovery starts a new epoch, and records count only in the head's
// epoch: a record left past the end of one recovery's replay (never
// acknowledged) cannot come back in the next one, even when a newer record
// of the same size puts it exactly where the scan looks next.
TEST(TxnFormat, AStaleRecordPastAnEarlierReplayNeverComesBack) {
  Images im(2);
  im.append({{0, bytes(64, 1)}}, 0b11);     // lsn 1: everywhere
  im.append({{64, bytes(64, 2)}}, 0b00);    // lsn 2: nowhere (torn)
  im.append({{128, bytes(64, 3)}}, 0b01);   // lsn 3: on replica 0 only, never acknowledged
  Plan p1 = plan_recovery(im.lay, im.img, {.expect = kIdA}).value();
  EXPECT_EQ(p1.replayed, 1u);
  EXPECT_EQ(p1.head_lsn, 2u);
  EXPECT_GT(p1.epoch, 1u);
  im.apply(p1);
  // The next client writes lsn 2 (same size as the lost one) in the new epoch.
  im.append({{192, bytes(64, 4)}}, 0b11);
  Plan p2 = plan_recovery(im.lay, im.img, {.expect = kIdA}).value();
  EXPECT_EQ(p2.replayed, 1u);
  EXPECT_EQ(p2.head_lsn, 3u);
  EXPECT_EQ(im.data(p2.target, 192), std::byte(4));
  EXPECT_EQ(im.data(p2.target, 128), std::byte(0)) << "the stale lsn 3 was replayed";
  EXPECT_GT(p2.epoch, p1.epoch);
}

}  // namespace
}  // namespace hyperloop::txn::internal
