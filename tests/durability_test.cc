// Durability of persistent memory regions, the hardware rule (DESIGN.md §4,
// hyperloop/pmem.h): an inbound RDMA WRITE (or SEND scatter, or ATOMIC) into a
// persistent region is visible at once but durable only once the NIC serves a
// later RDMA READ; the READ's response leaves only after those writes are
// persisted. A power failure drops everything not made durable.
//
// Two levels:
//   * the soft NIC alone: two or three NICs, one MR over a PersistentMemory;
//   * the primitives: a 3-replica chain whose tenant regions are files, gWRITE
//     + gFLUSH, power failure of every host (and its NIC), then a restart from
//     the files. What an acknowledged gFLUSH covered survives everywhere; what
//     it did not may vanish but is never torn (8-byte self-checking records,
//     fault_test_util.h). A seeded randomized run injects the power failure at
//     a random step with operations in flight; HYPERLOOP_SEED=<s> replays one
//     seed, HYPERLOOP_SEEDS=<n> sets how many run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "fault_test_util.h"
#include "hyperloop/pmem.h"
#include "prim_test_util.h"
#include "soft_test_util.h"

namespace hyperloop::fault_test {
namespace {

using namespace ::hyperloop::soft_test;
using prim_test::ClusterOptions;
using prim_test::ForwardMode;
using prim_test::kBothModes;
using prim_test::mode_name;
using prim_test::Op;

// =============================================================================================
// The soft NIC level
// =============================================================================================

constexpr size_t kPmSize = 16 << 10;

// NICs a, b and c on one fabric, stepped by a ManualExecutor. b has a memory
// region over a PersistentMemory (pmr) and an ordinary DRAM region (dram);
// a and c each have a QP connected to b (qab/qba, qcb/qbc).
class PersistentNicTest : public ::testing::Test {
 protected:
  PersistentNicTest()
      : pm_(must(PersistentMemory::open(dir_.file("b.pmem"), kPmSize), "PersistentMemory::open")),
        ex_(0xD0AB1E),
        a_(fabric_, ex_),
        b_(fabric_, ex_),
        c_(fabric_, ex_) {
    pmr_ = &b_.register_memory(pm_->data(), kPmSize, kAll);
    dram_ = b_.alloc(4096, kAll, 0x11);
    auto ab = connect(a_, b_);
    qab_ = ab.a;
    qba_ = ab.b;
    auto cb = connect(c_, b_);
    qcb_ = cb.a;
    src_ = a_.alloc_pattern(4096, kLocalWrite, 0xA1);
    sink_a_ = a_.alloc(4096, kLocalWrite);
    sink_c_ = c_.alloc(4096, kLocalWrite);
  }

  uint64_t pm_addr(size_t off) const { return addr_of(pm_->data() + off); }

  // An RDMA WRITE of src_[src_off, +len) into the persistent region at off,
  // waited for.
  void write_pm(size_t off, size_t src_off, uint32_t len) {
    must(post_write(*qab_, src_.sge(src_off, len), pm_addr(off), pmr_->rkey(), kSig, 1), "post_write");
    auto wc = poll_one(a_.cq(), ex_);
    ASSERT_TRUE(wc) << "no WRITE completion";
    ASSERT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  }
  // An RDMA READ of len bytes at raddr/rkey over qp, waited for on cq.
  void read(QueuePair& qp, CompletionQueue& cq, const Region& into, uint64_t raddr, uint32_t rkey, uint32_t len) {
    if (len)
      must(post_read(qp, into.sge(0, len), raddr, rkey, kSig, 2), "post_read");
    else
      must(post_read(qp, std::span<const Sge>{}, raddr, rkey, kSig, 2), "post_read");
    auto wc = poll_one(cq, ex_);
    ASSERT_TRUE(wc) << "no READ completion";
    ASSERT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
    ASSERT_EQ(wc->opcode, WcOpcode::kRdmaRead);
  }
  // What the file holds now (the durable image), read through the file
  // system: a second PersistentMemory of an open file is refused (pmem.h).
  std::vector<std::byte> durable_image() const {
    std::ifstream in(pm_->path(), std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(c.size(), kPmSize) << "the file's size";
    std::vector<std::byte> b(kPmSize);
    std::memcpy(b.data(), c.data(), std::min(c.size(), kPmSize));
    return b;
  }

  TempDir dir_;
  std::unique_ptr<PersistentMemory> pm_;
  soft::Fabric fabric_;
  soft::ManualExecutor ex_;
  Node a_, b_, c_;
  MemoryRegion* pmr_ = nullptr;
  Region dram_, src_, sink_a_, sink_c_;
  QueuePair *qab_ = nullptr, *qba_ = nullptr, *qcb_ = nullptr;
};

TEST_F(PersistentNicTest, RemoteWriteIsVisibleAtOnceButLostOnPowerFail) {
  ASSERT_NO_FATAL_FAILURE(write_pm(1000, 0, 256));
  EXPECT_TRUE(BytesEqual(pm_->data() + 1000, src_.data(), 256)) << "the WRITE is not visible";
  EXPECT_EQ(pm_->dirty_bytes(), 256u) << "the NIC did not mark what it wrote";
  EXPECT_TRUE(AllBytesAre(durable_image().data(), kPmSize, 0)) << "durable without a READ";
  pm_->power_fail();
  EXPECT_TRUE(AllBytesAre(pm_->data(), kPmSize, 0));
}

TEST_F(PersistentNicTest, WriteThenOneByteReadFromTheSameRequesterIsDurable) {
  // Posted back to back: the READ's completion is the durability point.
  must(post_write(*qab_, src_.sge(0, 512), pm_addr(2048), pmr_->rkey(), 0, 1), "post_write");
  // The READ targets a byte the WRITE did not touch: any READ flushes.
  ASSERT_NO_FATAL_FAILURE(read(*qab_, a_.cq(), sink_a_, pm_addr(0), pmr_->rkey(), 1));
  EXPECT_EQ(pm_->dirty_bytes(), 0u);
  EXPECT_TRUE(BytesEqual(durable_image().data() + 2048, src_.data(), 512)) << "not in the file";
  pm_->power_fail();
  EXPECT_TRUE(BytesEqual(pm_->data() + 2048, src_.data(), 512));
  EXPECT_TRUE(AllBytesAre(pm_->data(), 2048, 0));
}

TEST_F(PersistentNicTest, WriteThenZeroByteReadFromTheSameRequesterIsDurable) {
  ASSERT_NO_FATAL_FAILURE(write_pm(100, 7, 64));
  ASSERT_NO_FATAL_FAILURE(read(*qab_, a_.cq(), sink_a_, pm_addr(100), pmr_->rkey(), 0));
  pm_->power_fail();
  EXPECT_TRUE(BytesEqual(pm_->data() + 100, src_.data() + 7, 64));
  EXPECT_TRUE(BytesEqual(durable_image().data() + 100, src_.data() + 7, 64));
}

// The rule is NIC-wide, as pmem.h states it ("persists everything it wrote
// before it sends any READ response"): b's NIC persists every write it took,
// whichever QP or requester the READ it serves belongs to. Here c, a requester
// that never wrote anything, reads the persistent region.
TEST_F(PersistentNicTest, AReadServedToAnotherRequesterAlsoMakesTheWriteDurable) {
  ASSERT_NO_FATAL_FAILURE(write_pm(4000, 100, 300));
  ASSERT_NO_FATAL_FAILURE(read(*qcb_, c_.cq(), sink_c_, pm_addr(0), pmr_->rkey(), 8));
  pm_->power_fail();
  EXPECT_TRUE(BytesEqual(pm_->data() + 4000, src_.data() + 100, 300));
}

// Same rule: a READ of an ordinary DRAM region on the same NIC also flushes
// what that NIC wrote into the persistent one.
TEST_F(PersistentNicTest, AReadOfAnotherRegionOnTheSameNicAlsoMakesTheWriteDurable) {
  ASSERT_NO_FATAL_FAILURE(write_pm(64, 0, 128));
  ASSERT_NO_FATAL_FAILURE(read(*qab_, a_.cq(), sink_a_, dram_.addr(0), dram_.rkey(), 16));
  pm_->power_fail();
  EXPECT_TRUE(BytesEqual(pm_->data() + 64, src_.data(), 128));
}

// A READ served by some other NIC flushes nothing on b.
TEST_F(PersistentNicTest, AReadServedByAnotherNicDoesNotMakeTheWriteDurable) {
  ASSERT_NO_FATAL_FAILURE(write_pm(64, 0, 128));
  // b reads from a: a's NIC serves it.
  Region remote = a_.alloc_pattern(64, kAll, 3);
  Region into = b_.alloc(64, kLocalWrite);
  ASSERT_NO_FATAL_FAILURE(read(*qba_, b_.cq(), into, remote.addr(0), remote.rkey(), 8));
  pm_->power_fail();
  EXPECT_TRUE(AllBytesAre(pm_->data(), kPmSize, 0));
}

// SEND: the receive buffers (two SGEs) lie in the persistent region.
void post_pm_recv(QueuePair& qb, MemoryRegion& pmr, const PersistentMemory& pm) {
  const Sge sg[2] = {{addr_of(pm.data() + 512), 40, pmr.lkey()}, {addr_of(pm.data() + 8192), 200, pmr.lkey()}};
  must(post_recv(qb, sg, 9), "post_recv");
}

TEST_F(PersistentNicTest, SendScatteredIntoAPersistentRegionIsLostOnPowerFailWithoutARead) {
  post_pm_recv(*qba_, *pmr_, *pm_);
  must(post_send_msg(*qab_, src_.sge(0, 100)), "post_send");
  auto r = poll_one(b_.cq(), ex_);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, WcStatus::kSuccess) << describe(*r);
  ASSERT_TRUE(poll_one(a_.cq(), ex_));
  EXPECT_TRUE(BytesEqual(pm_->data() + 512, src_.data(), 40)) << "the SEND is not visible";
  EXPECT_TRUE(BytesEqual(pm_->data() + 8192, src_.data() + 40, 60));
  pm_->power_fail();
  EXPECT_TRUE(AllBytesAre(pm_->data(), kPmSize, 0));
}

TEST_F(PersistentNicTest, SendScatteredIntoAPersistentRegionIsDurableAfterARead) {
  post_pm_recv(*qba_, *pmr_, *pm_);
  must(post_send_msg(*qab_, src_.sge(0, 100), 0), "post_send");
  ASSERT_NO_FATAL_FAILURE(read(*qab_, a_.cq(), sink_a_, pm_addr(0), pmr_->rkey(), 1));
  pm_->power_fail();
  EXPECT_TRUE(BytesEqual(pm_->data() + 512, src_.data(), 40));
  EXPECT_TRUE(BytesEqual(pm_->data() + 8192, src_.data() + 40, 60));
  EXPECT_TRUE(AllBytesAre(pm_->data() + 8192 + 60, 140, 0));
}

// CAS on one word, FETCH_ADD on another.
void post_pm_atomics(QueuePair& q, const Region& result, uint64_t base, uint32_t rkey) {
  must(post_cas(q, result.sge(0, 8), base + 64, rkey, 0, 0x1122334455667788ull, 0, 1), "post_cas");
  must(post_faa(q, result.sge(8, 8), base + 72, rkey, 5, kSig, 2), "post_faa");
}

TEST_F(PersistentNicTest, AtomicsOnAPersistentRegionAreLostOnPowerFailWithoutARead) {
  post_pm_atomics(*qab_, sink_a_, pm_addr(0), pmr_->rkey());
  auto wc = poll_one(a_.cq(), ex_);
  ASSERT_TRUE(wc);
  ASSERT_EQ(wc->status, WcStatus::kSuccess) << describe(*wc);
  EXPECT_EQ(load_u64(pm_->data() + 64), 0x1122334455667788ull) << "the CAS is not visible";
  EXPECT_EQ(load_u64(pm_->data() + 72), 5u);
  pm_->power_fail();
  EXPECT_EQ(load_u64(pm_->data() + 64), 0u);
  EXPECT_EQ(load_u64(pm_->data() + 72), 0u);
}

TEST_F(PersistentNicTest, AtomicsOnAPersistentRegionAreDurableAfterARead) {
  post_pm_atomics(*qab_, sink_a_, pm_addr(0), pmr_->rkey());
  ASSERT_TRUE(poll_one(a_.cq(), ex_));
  ASSERT_NO_FATAL_FAILURE(read(*qab_, a_.cq(), sink_a_, pm_addr(1024), pmr_->rkey(), 0));
  pm_->power_fail();
  EXPECT_EQ(load_u64(pm_->data() + 64), 0x1122334455667788ull);
  EXPECT_EQ(load_u64(pm_->data() + 72), 5u);
}

TEST_F(PersistentNicTest, AWriteAfterTheReadIsNotDurable) {
  ASSERT_NO_FATAL_FAILURE(write_pm(0, 0, 64));  // durable by the READ below
  ASSERT_NO_FATAL_FAILURE(read(*qab_, a_.cq(), sink_a_, pm_addr(0), pmr_->rkey(), 1));
  ASSERT_NO_FATAL_FAILURE(write_pm(32, 1000, 64));   // overlaps the durable bytes
  ASSERT_NO_FATAL_FAILURE(write_pm(2000, 2000, 64));  // elsewhere
  EXPECT_TRUE(BytesEqual(pm_->data() + 32, src_.data() + 1000, 64));
  pm_->power_fail();
  EXPECT_TRUE(BytesEqual(pm_->data(), src_.data(), 64)) << "the first WRITE, made durable, changed";
  EXPECT_TRUE(AllBytesAre(pm_->data() + 64, kPmSize - 64, 0)) << "a WRITE after the READ survived";
}

// =============================================================================================
// The primitives level: a chain of 3 replicas whose tenant regions are files
// =============================================================================================

constexpr uint64_t kAckTimeoutNs = 200'000;   // 2,000 steps of 100 ns
constexpr uint64_t kOpTimeoutNs = 2'000'000;  // 20,000 steps

ClusterOptions chain_options(ForwardMode mode, uint64_t seed, size_t region = 16 << 10) {
  ClusterOptions o;
  o.mode = mode;
  o.replicas = 3;
  o.seed = seed;
  o.region_size = region;
  o.slots = 32;
  o.rearm_batch = 8;
  o.staging_bytes = 64 << 10;
  o.op_timeout_ns = kOpTimeoutNs;
  o.nic.ack_timeout_ns = kAckTimeoutNs;
  return o;
}

class ChainDurabilityTest : public ::testing::TestWithParam<ForwardMode> {
 protected:
  ForwardMode mode() const { return GetParam(); }
  TempDir dir_;
};

// Every replica's region, read by its CPU, equals `want`.
::testing::AssertionResult ReplicasHold(PmemChain& ch, const std::vector<std::byte>& want, const std::string& when) {
  for (uint32_t i = 0; i < ch.n(); ++i) {
    const auto got = ch.peek(i);
    auto r = BytesEqual(got.data(), want.data(), want.size());
    if (!r) return r << " (replica " << i << ", " << when << ")";
  }
  return ::testing::AssertionSuccess();
}

TEST_P(ChainDurabilityTest, FlushedWritesSurvivePowerFailureOnEveryReplicaAndARestart) {
  const ClusterOptions o = chain_options(mode(), 0xF1A5 + uint64_t(mode()));
  std::vector<std::byte> want(o.region_size);
  {
    PmemChain ch(o, dir_);
    struct W {
      uint64_t off;
      size_t len;
    };
    const W writes[] = {{0, 1}, {8, 4096}, {5000, 333}, {4000, 2000}, {o.region_size - 100, 100}};
    std::deque<Op> ops;
    uint32_t k = 0;
    for (const W& w : writes) {
      const auto bytes = pattern(w.len, 0x100 + k++);
      HL_ASSERT_OK(ch.group().write(ops.emplace_back(), w.off, bytes));
      std::memcpy(want.data() + w.off, bytes.data(), w.len);
    }
    Op flush;
    HL_ASSERT_OK(ch.group().flush(flush, 0, o.region_size));
    HL_ASSERT_OK(ch.group().wait(flush));
    for (Op& op : ops) HL_ASSERT_OK(op.status());
    ch.power_fail_all();
    EXPECT_TRUE(ReplicasHold(ch, want, "after the power failure"));
  }
  // Restart: new NICs and hosts, the same files.
  ClusterOptions again = o;
  again.seed = o.seed + 1;
  PmemChain restarted(again, dir_);
  EXPECT_TRUE(ReplicasHold(restarted, want, "after the restart"));
  // And the new chain serves them over RDMA.
  std::vector<std::byte> got(o.region_size);
  for (uint32_t i = 0; i < restarted.n(); ++i) {
    HL_ASSERT_OK(restarted.group().read(i, 0, got));
    EXPECT_TRUE(BytesEqual(got.data(), want.data(), got.size())) << "replica " << i << " read over RDMA";
  }
}

TEST_P(ChainDurabilityTest, AFlushCoversOnlyWritesIssuedBeforeIt) {
  // W1, F (acknowledged), W2, W3 (acknowledged, never flushed): after the power
  // failure every record holds W1's version or a later one, never a mix, and
  // the never-flushed records hold their new content or zeros.
  const uint64_t seed = 0xAF7E + uint64_t(mode());
  const ClusterOptions o = chain_options(mode(), seed);
  const size_t records = o.region_size / kRecord;
  RecordHistory hist(seed, records);
  auto issue = [&](PmemChain& ch, Op& op, uint32_t id, uint64_t first, uint64_t count) {
    HL_ASSERT_OK(ch.group().write(op, first * kRecord, make_records(seed, id, first, count)));
    hist.issued(id, first, count);
  };
  {
    PmemChain ch(o, dir_);
    Op w1, f, w2, w3;
    ASSERT_NO_FATAL_FAILURE(issue(ch, w1, 1, 0, 64));
    const auto covered = hist.versions(0, records);
    HL_ASSERT_OK(ch.group().flush(f, 0, o.region_size));
    ASSERT_NO_FATAL_FAILURE(issue(ch, w2, 2, 32, 64));   // half over W1, half new
    ASSERT_NO_FATAL_FAILURE(issue(ch, w3, 3, 500, 200));  // new
    HL_ASSERT_OK(ch.group().wait(w3));
    HL_ASSERT_OK(w1.status());
    HL_ASSERT_OK(f.status());
    HL_ASSERT_OK(w2.status());
    hist.cover(0, covered);
    ch.power_fail_all();
    for (uint32_t i = 0; i < ch.n(); ++i) {
      const auto got = ch.peek(i);
      EXPECT_TRUE(hist.check(got.data(), got.size(), "replica " + std::to_string(i) + " after the power failure"));
      // W1's records are exactly W1 where W2 did not go.
      EXPECT_TRUE(BytesEqual(got.data(), make_records(seed, 1, 0, 32).data(), 32 * kRecord)) << "replica " << i;
    }
  }
  for (uint32_t i = 0; i < o.replicas; ++i) {
    const std::string path = dir_.file("r" + std::to_string(i) + ".pmem");
    auto pm = must(PersistentMemory::open(path, o.region_size, false), "reopen");
    EXPECT_TRUE(hist.check(pm->data(), pm->size(), path + " after the restart"));
  }
}

// The tearing detector itself (fault_test_util.h): it must see a torn record,
// a lost acknowledged version, a stale one and a misplaced one, or the tests
// above could not fail.
TEST(RecordHistoryTest, DetectsTornLostStaleAndMisplacedRecords) {
  constexpr uint64_t seed = 77;
  RecordHistory h(seed, 8);
  std::vector<std::byte> region(8 * kRecord);
  h.issued(1, 0, 4);
  h.issued(2, 2, 4);
  EXPECT_TRUE(h.check(region.data(), region.size(), "zeros, nothing covered"));
  const auto v1 = make_records(seed, 1, 0, 4), v2 = make_records(seed, 2, 2, 4);
  std::memcpy(region.data(), v1.data(), v1.size());
  EXPECT_TRUE(h.check(region.data(), region.size(), "version 1"));
  std::memcpy(region.data() + 2 * kRecord, v2.data(), v2.size());
  EXPECT_TRUE(h.check(region.data(), region.size(), "version 2 over 1"));
  h.cover(0, {1, 1, 2, 2, 1, 1});  // versions covered: records 0-1: v1; 2-5: v2
  EXPECT_TRUE(h.check(region.data(), region.size(), "covered"));
  auto torn = region;  // first half of record 3 from v1, second from v2
  std::memcpy(torn.data() + 3 * kRecord, v1.data() + 3 * kRecord, 4);
  EXPECT_FALSE(h.check(torn.data(), torn.size(), "torn"));
  auto stale = region;  // record 2 back to v1 although v2 was covered
  std::memcpy(stale.data() + 2 * kRecord, v1.data() + 2 * kRecord, kRecord);
  EXPECT_FALSE(h.check(stale.data(), stale.size(), "stale"));
  auto lost = region;  // record 5 back to zeros although v2 was covered
  std::memset(lost.data() + 5 * kRecord, 0, kRecord);
  EXPECT_FALSE(h.check(lost.data(), lost.size(), "lost"));
  auto misplaced = region;  // record 1's bytes at record 6
  std::memcpy(misplaced.data() + 6 * kRecord, v1.data() + kRecord, kRecord);
  EXPECT_FALSE(h.check(misplaced.data(), misplaced.size(), "misplaced"));
}

// ---- the seeded randomized run --------------------------------------------------------------

struct SeedOutcome {
  uint64_t acked_writes = 0;
  uint64_t acked_flushes = 0;
  bool lost_something = false;  // the power failure dropped some visible bytes
};

// One seed: a pipelined workload of gWRITEs of random sizes and offsets with
// a gFLUSH every few (RecordWorkload), a power failure of every host (and its
// NIC) at a random step, then the checks on every replica, after the failure
// and after a restart from the files.
void run_power_failure_seed(ForwardMode mode, uint64_t seed, SeedOutcome& out) {
  SCOPED_TRACE(replay_hint(seed) + ", mode " + mode_name(mode));
  constexpr size_t kRegion = 16 << 10;
  constexpr size_t kRecords = kRegion / kRecord;
  constexpr int kOps = 120;
  constexpr uint64_t kWindowSteps = 3600;  // about how long kOps take without a fault
  TempDir dir;
  std::mt19937_64 rng(mix64(seed ^ 0xFA11));
  const ClusterOptions o = chain_options(mode, seed, kRegion);
  // The workload's Ops must outlive the chain's Group (destroyed first).
  std::unique_ptr<RecordWorkload> workload;
  auto ch = std::make_unique<PmemChain>(o, dir);
  auto& c = ch->cluster();
  c.fabric().seed(seed);
  workload = std::make_unique<RecordWorkload>(ch->group(), seed, kRecords);
  RecordWorkload& w = *workload;

  bool failed = false;
  std::vector<std::vector<std::byte>> before(ch->n());
  const uint64_t fail_step = c.ex().steps() + 1 + rng() % kWindowSteps;
  c.ex().at_step(fail_step, [&] {
    for (uint32_t i = 0; i < ch->n(); ++i) before[i] = ch->peek(i);
    ch->power_fail_all();
    failed = true;
  });

  for (int k = 0; k < kOps && !failed; ++k) {
    const Status s = w.random();
    if (!s.is_ok()) {
      ASSERT_TRUE(failed) << "refused before any fault: " << s.to_string();
      break;
    }
    c.turns(rng() % 64);
    ch->group().poll();
    w.retire();
  }
  // The workload ended before the failure: keep the chain going until it hits.
  for (uint64_t k = 0; !failed && k < 2 * kWindowSteps; ++k) {
    c.turn();
    if ((k & 15) == 0) {
      ch->group().poll();
      w.retire();
    }
  }
  ASSERT_TRUE(failed) << "the power failure never happened";
  // Whatever was acknowledged in time completes; the rest fails within op_timeout.
  for (auto& p : w.pending()) {
    (void)ch->group().wait(p.op, 4 * kOpTimeoutNs);
    ASSERT_TRUE(p.op.done()) << "op #" << p.op.sequence() << " neither acknowledged nor failed";
    if (!p.op.status().is_ok()) {
      const auto code = p.op.status().code();
      EXPECT_TRUE(code == StatusCode::kUnavailable || code == StatusCode::kDeadlineExceeded)
          << p.op.status().to_string();
    }
  }
  w.retire();
  out.acked_writes += w.acked_writes();
  out.acked_flushes += w.acked_flushes();

  std::vector<std::vector<std::byte>> after(ch->n());
  for (uint32_t i = 0; i < ch->n(); ++i) {
    after[i] = ch->peek(i);
    EXPECT_TRUE(
        w.durable().check(after[i].data(), kRegion, "replica " + std::to_string(i) + " after the power failure"));
    if (before[i] != after[i]) out.lost_something = true;
  }
  const auto paths = ch->paths();
  ch.reset();  // the hosts go; the files stay
  for (uint32_t i = 0; i < paths.size(); ++i) {
    auto pm = must(PersistentMemory::open(paths[i], kRegion, false), "reopen after restart");
    EXPECT_TRUE(BytesEqual(pm->data(), after[i].data(), kRegion))
        << "replica " << i << ": the file differs from what the host saw after the power failure";
    EXPECT_TRUE(w.durable().check(pm->data(), kRegion, "replica " + std::to_string(i) + " after the restart"));
  }
}

TEST_P(ChainDurabilityTest, RandomPowerFailureKeepsEveryFlushedRangeAndTearsNothing) {
  const bool replay = std::getenv("HYPERLOOP_SEED") != nullptr;
  SeedOutcome total;
  uint64_t runs = 0;
  for (uint64_t seed : seeds_to_run(0x9000 + 0x100 * uint64_t(mode()), 50)) {
    SeedOutcome one;
    run_power_failure_seed(mode(), seed, one);
    ++runs;
    total.acked_writes += one.acked_writes;
    total.acked_flushes += one.acked_flushes;
    total.lost_something |= one.lost_something;
    if (HasFailure()) {
      ADD_FAILURE() << "first failing " << replay_hint(seed);
      break;
    }
  }
  if (!replay && !HasFailure()) {
    // The runs exercised what they claim to: flushes were acknowledged and
    // power failures dropped unflushed bytes.
    EXPECT_GT(total.acked_flushes, runs) << "too few acknowledged gFLUSHes to mean anything";
    EXPECT_GT(total.acked_writes, 4 * runs);
    EXPECT_TRUE(total.lost_something) << "no power failure ever dropped anything";
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, ChainDurabilityTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& info) { return mode_name(info.param); });

}  // namespace
}  // namespace hyperloop::fault_test
