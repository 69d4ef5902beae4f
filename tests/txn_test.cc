// Transactions over a replica chain (hyperloop/txn.h): the API, every error of
// the contract, log truncation, client threads, recovery from power failures,
// client crashes, lagging replicas, stale locks and torn records, and 100
// tenants sharing three hosts (with forged RDMA access across tenants).
//
// Everything but the thread tests runs on the deterministic Drive::kManual
// chain: a seed replays a run. Every check reads every replica's region with
// its CPU (ReplicaHost::peek) besides the store's own reads.
//
// OnDevice/TxnThreads.* (kCpuForward) run on the device under test when
// HYPERLOOP_TEST_DEVICE is set (device_test_util.h, tests/device-suites.sh):
//   HYPERLOOP_TEST_DEVICE=rxe0 build/tests/txn_test --gtest_filter='OnDevice/*'
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "txn_test_util.h"

namespace hyperloop::txn_test {
namespace {

namespace rn = ::hyperloop::rnic;
using prim_test::kBothModes;
using prim_test::mode_name;
using soft_test::AllBytesAre;

std::string param_name(const ::testing::TestParamInfo<ForwardMode>& i) { return mode_name(i.param); }

RigOptions rig_options(ForwardMode mode, uint64_t seed) {
  RigOptions o;
  o.mode = mode;
  o.seed = seed;
  return o;
}

#define EXPECT_CODE(expr, want)                                                       \
  do {                                                                                \
    const ::hyperloop::Status st_ = (expr);                                           \
    EXPECT_EQ(st_.code(), (want)) << #expr << " returned " << st_.to_string();         \
  } while (0)

// =====================================================================================
// Options and layout
// =====================================================================================

TEST(TxnOptions, RegionBytesIsSuperblockLogLockTableAndData) {
  struct Case {
    size_t data, log;
    uint32_t stripe;
  };
  for (const Case& k : {Case{64 << 10, 128 << 10, 256}, Case{4096, 8192, 256}, Case{1 << 20, 4096, 64},
                        Case{8192, 1024, 8}}) {
    StoreOptions o;
    o.data_size = k.data;
    o.log_size = k.log;
    o.stripe_bytes = k.stripe;
    const size_t stripes = k.data / k.stripe;
    EXPECT_EQ(Store::region_bytes(o), kSuperBytes + k.log + 8 * stripes + k.data)
        << "data " << k.data << " log " << k.log << " stripe " << k.stripe;
  }
}

TEST(TxnOptions, BadOptionsAreInvalidArgumentAndTouchNothing) {
  RigOptions ro;
  ro.open = false;
  Rig rig(ro);
  struct Bad {
    const char* what;
    size_t data, log;
    uint32_t stripe;
  };
  const Bad bad[] = {
      {"stripe_bytes 0", 64 << 10, 128 << 10, 0},     {"stripe_bytes 3", 64 << 10, 128 << 10, 3},
      {"stripe_bytes 100", 64 << 10, 128 << 10, 100}, {"stripe_bytes 257", 64 << 10, 128 << 10, 257},
      {"stripe_bytes 4 (< 8)", 64 << 10, 128 << 10, 4}, {"log_size 0", 64 << 10, 0, 256},
      {"log_size 64 (too small)", 64 << 10, 64, 256},    {"log_size 1000 (not a multiple of 64)", 64 << 10, 1000, 256},
      {"log_size 128 KiB + 32", 64 << 10, (128 << 10) + 32, 256}, {"data_size 0", 0, 128 << 10, 256},
  };
  for (const Bad& b : bad) {
    StoreOptions o = rig.so();
    o.data_size = b.data;
    o.log_size = b.log;
    o.stripe_bytes = b.stripe;
    EXPECT_EQ(Store::region_bytes(o), 0u) << b.what;
    auto r = rig.try_open(o);
    ASSERT_FALSE(r.is_ok()) << b.what << ": Store::open accepted it";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << b.what << ": " << r.status().to_string();
  }
  for (uint32_t i = 0; i < rig.n(); ++i) {
    const auto reg = rig.region(i);
    EXPECT_TRUE(AllBytesAre(reg.data(), reg.size(), 0)) << "replica " << i << " changed by a refused open";
  }
  // Valid options, but the hosts do not hold a region of that size, or not the tenant at all.
  StoreOptions bigger = rig.so();
  bigger.data_size *= 2;
  EXPECT_FALSE(rig.try_open(bigger).is_ok()) << "opened over regions of the wrong size";
  StoreOptions other = rig.so();
  other.tenant = 4242;
  other.group.tenant = 4242;
  auto r = rig.try_open(other);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound) << r.status().to_string();
  // And the valid options still open it.
  HL_EXPECT_OK(rig.try_open(rig.so()));
}

// Impossible sizes are errors, never exceptions: a tebibyte of the group's
// staging used to throw std::bad_alloc out of Store::open (ASan aborted).
TEST(TxnOptions, ImpossibleSizesAreErrorsAndNothingThrows) {
  RigOptions ro;
  ro.open = false;
  Rig rig(ro);
  Result<std::unique_ptr<Store>> r = invalid_argument("not run");
  StoreOptions staging = rig.so();
  staging.group.staging_bytes = size_t{1} << 40;
  EXPECT_NO_THROW(r = rig.try_open(staging));
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().to_string();
  StoreOptions huge = rig.so();
  huge.data_size = size_t{1} << 41;  // over the documented 2^40
  EXPECT_NO_THROW(r = rig.try_open(huge));
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  huge.data_size = size_t{1} << 40;  // allowed, but no replica holds such a region
  huge.log_size = size_t{1} << 32;
  EXPECT_NO_THROW(r = rig.try_open(huge));
  ASSERT_FALSE(r.is_ok());
  for (uint32_t i = 0; i < rig.n(); ++i) {
    const auto reg = rig.region(i);
    EXPECT_TRUE(AllBytesAre(reg.data(), reg.size(), 0)) << "replica " << i << " changed by a refused open";
  }
  HL_EXPECT_OK(rig.try_open(rig.so()));
}

// A region formatted with other options (same size) is kDataLoss, and the
// refused open leaves it as it was.
TEST(TxnOptions, SuperblockOfOtherOptionsIsDataLoss) {
  Rig rig(rig_options(ForwardMode::kOffload, 11));
  const auto bytes = pattern(3000, 5);
  HL_ASSERT_OK(rig.put(1000, bytes));
  ASSERT_TRUE(rig.consistent("before"));
  StoreOptions other = rig.so();
  other.stripe_bytes = 512;                // half the stripes: 1 KiB less lock table
  other.log_size = rig.so().log_size + 1024;  // one KiB more log
  ASSERT_EQ(Store::region_bytes(other), rig.lay().region);
  rig.store_ptr().reset();
  const auto before = rig.snapshot();
  auto r = rig.try_open(other);
  ASSERT_FALSE(r.is_ok()) << "opened a region formatted with other options";
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().to_string();
  EXPECT_TRUE(rig.unchanged_since(before, 0, "the refused open"));
  rig.store_ptr() = must(rig.try_open(rig.so()), "reopen with the right options");
  EXPECT_TRUE(rig.consistent("reopened with the right options"));
}

// =====================================================================================
// API basics
// =====================================================================================

class TxnBasics : public ::testing::TestWithParam<ForwardMode> {
 protected:
  ForwardMode mode() const { return GetParam(); }
};

TEST_P(TxnBasics, OpenFormatsABlankRegion) {
  Rig rig(rig_options(mode(), 21));
  Store& s = rig.store();
  EXPECT_TRUE(s.healthy());
  EXPECT_EQ(s.data_size(), rig.so().data_size);
  EXPECT_EQ(s.replicas(), 3u);
  EXPECT_EQ(s.stats().recoveries, 1u);
  EXPECT_EQ(s.stats().replayed_records, 0u);
  EXPECT_EQ(s.stats().commits, 0u);
  rig.settle();
  const auto r0 = rig.region(0);
  EXPECT_FALSE(AllBytesAre(r0.data(), 64, 0)) << "no format block was written";
  EXPECT_TRUE(rig.consistent("after formatting"));  // data zero, unlocked, identical
  // Opening it again keeps what was committed (it is not formatted again).
  const auto bytes = pattern(5000, 77);
  HL_ASSERT_OK(rig.put(12345, bytes));
  ASSERT_TRUE(rig.consistent("after a commit"));
  rig.store_ptr().reset();
  rig.store_ptr() = must(rig.try_open(rig.so()), "reopen");
  EXPECT_TRUE(rig.consistent("after reopening"));
}

TEST_P(TxnBasics, SingleRangeCommitsAreVisibleEverywhere) {
  Rig rig(rig_options(mode(), 22));
  const size_t d = rig.so().data_size;
  struct W {
    uint64_t off;
    size_t len;
  };
  const W writes[] = {{0, 1},       {7, 9},          {250, 12},  // straddles a stripe boundary
                      {4096, 4096}, {d - 64, 64},    {d - 1, 1},
                      {300, 1000},  {1000, 64},      {20000, 2048}};
  uint32_t seed = 100;
  for (const W& w : writes) {
    const auto bytes = pattern(w.len, seed++);
    HL_ASSERT_OK(rig.put(w.off, bytes)) << "offset " << w.off << " len " << w.len;
    std::vector<std::byte> got(w.len);
    HL_ASSERT_OK(rig.store().read(w.off, got));
    EXPECT_TRUE(BytesEqual(got.data(), bytes.data(), w.len)) << "Store::read at " << w.off;
    Transaction t = rig.store().begin();
    std::vector<std::byte> got2(w.len);
    HL_ASSERT_OK(t.read(w.off, got2));
    EXPECT_TRUE(BytesEqual(got2.data(), bytes.data(), w.len)) << "Transaction::read at " << w.off;
    HL_EXPECT_OK(t.commit());  // read-only
  }
  EXPECT_TRUE(rig.consistent("after single-range commits"));
  EXPECT_GE(rig.store().stats().commits, std::size(writes));
}

TEST_P(TxnBasics, MultiRangeCommitsAreVisibleAndIdenticalOnEveryReplica) {
  Rig rig(rig_options(mode(), 23));
  std::mt19937_64 rng(0x3417 + uint64_t(mode()));
  for (int k = 0; k < 24; ++k) {
    const size_t count = 1 + rng() % 8;
    const auto ranges = random_ranges(rng, rig.so().data_size, count, 64, 4096);
    HL_ASSERT_OK(rig.commit(ranges)) << "transaction " << k << " with " << count << " ranges";
    // Visible at once to a new transaction, range by range.
    Transaction t = rig.store().begin();
    for (const Range& r : ranges) {
      std::vector<std::byte> got(r.bytes.size());
      HL_ASSERT_OK(t.read(r.off, got));
      EXPECT_TRUE(BytesEqual(got.data(), rig.model().data() + r.off, got.size()))
          << "transaction " << k << ", range at " << r.off;
    }
    HL_EXPECT_OK(t.commit());
    if (k % 8 == 7) {
      ASSERT_TRUE(rig.consistent("after transaction " + std::to_string(k)));
    }
  }
  EXPECT_TRUE(rig.consistent("after every transaction"));
}

TEST_P(TxnBasics, ATransactionReadsItsOwnWrites) {
  Rig rig(rig_options(mode(), 24));
  const auto base = pattern(1024, 1);
  HL_ASSERT_OK(rig.put(0, base));
  Transaction t = rig.store().begin();
  const auto x = pattern(100, 2), y = pattern(100, 3), z = pattern(40, 4);
  HL_ASSERT_OK(t.write(100, x));
  std::vector<std::byte> want(base.begin(), base.begin() + 300);
  std::memcpy(want.data() + 100, x.data(), 100);
  std::vector<std::byte> got(300);
  HL_ASSERT_OK(t.read(0, got));
  EXPECT_TRUE(BytesEqual(got.data(), want.data(), 300)) << "after one write";
  HL_ASSERT_OK(t.write(150, y));  // over half of x
  std::memcpy(want.data() + 150, y.data(), 100);
  HL_ASSERT_OK(t.read(0, got));
  EXPECT_TRUE(BytesEqual(got.data(), want.data(), 300)) << "after an overlapping write";
  // A write into a stripe never read, then a read of exactly it.
  HL_ASSERT_OK(t.write(40000, z));
  std::vector<std::byte> got_z(40);
  HL_ASSERT_OK(t.read(40000, got_z));
  EXPECT_TRUE(BytesEqual(got_z.data(), z.data(), 40));
  // A read partly over the write, partly over never-written (zero) bytes.
  std::vector<std::byte> edge(80);
  HL_ASSERT_OK(t.read(40000 - 20, edge));
  EXPECT_TRUE(AllBytesAre(edge.data(), 20, 0));
  EXPECT_TRUE(BytesEqual(edge.data() + 20, z.data(), 40));
  EXPECT_TRUE(AllBytesAre(edge.data() + 60, 20, 0));
  EXPECT_EQ(t.write_bytes(), 240u);
  // Nobody else sees them before the commit.
  std::vector<std::byte> outside(300);
  HL_ASSERT_OK(rig.store().read(0, outside));
  EXPECT_TRUE(BytesEqual(outside.data(), base.data(), 300)) << "uncommitted writes are visible";
  Transaction other = rig.store().begin();
  HL_ASSERT_OK(other.read(40000, got_z));
  EXPECT_TRUE(AllBytesAre(got_z.data(), 40, 0)) << "uncommitted writes are visible to another transaction";
  other.abort();
  HL_ASSERT_OK(t.commit());
  std::memcpy(rig.model().data(), want.data(), 300);
  std::memcpy(rig.model().data() + 40000, z.data(), 40);
  EXPECT_TRUE(rig.consistent("after the commit"));
}

TEST_P(TxnBasics, AbortLeavesNothing) {
  Rig rig(rig_options(mode(), 25));
  HL_ASSERT_OK(rig.put(0, pattern(512, 9)));
  ASSERT_TRUE(rig.consistent("before"));
  const auto before = rig.snapshot();
  const uint64_t commits = rig.store().stats().commits;
  const uint64_t packets = rig.c().packets_sent();
  {
    Transaction t = rig.store().begin();
    EXPECT_TRUE(t.active());
    HL_ASSERT_OK(t.write(0, pattern(100, 10)));
    HL_ASSERT_OK(t.write(5000, pattern(3000, 11)));
    EXPECT_EQ(t.write_bytes(), 3100u);
    EXPECT_EQ(rig.c().packets_sent(), packets) << "a buffered write went on the wire";
    t.abort();
    EXPECT_FALSE(t.active());
    EXPECT_EQ(t.write_bytes(), 0u);
    EXPECT_CODE(t.commit(), StatusCode::kInvalidArgument);
  }
  {
    Transaction dropped = rig.store().begin();
    HL_ASSERT_OK(dropped.write(60000, pattern(1000, 12)));
  }  // dropped unfinished: aborted
  {
    Transaction t = rig.store().begin();
    HL_ASSERT_OK(t.write(100, pattern(50, 13)));
    Transaction moved = std::move(t);
    EXPECT_FALSE(t.active());  // NOLINT(bugprone-use-after-move): the contract of a moved-from transaction
    EXPECT_TRUE(moved.active());
    moved = Transaction();  // move-assigning over an active transaction aborts it
    EXPECT_FALSE(moved.active());
  }
  rig.settle();
  EXPECT_TRUE(rig.unchanged_since(before, kSuperBytes, "aborted transactions"));
  EXPECT_EQ(rig.store().stats().commits, commits);
  EXPECT_TRUE(rig.consistent("after aborts"));
}

TEST_P(TxnBasics, OverlappingWritesInOneTransactionLaterWins) {
  Rig rig(rig_options(mode(), 26));
  const auto a = pattern(100, 1), b = pattern(100, 2), c = pattern(10, 3), d = pattern(10, 4), e = pattern(300, 5),
             f = pattern(300, 6);
  const std::vector<Range> ranges = {{0, a}, {50, b}, {60, c}, {0, d}, {1000, e}, {1000, f}, {1290, a}};
  HL_ASSERT_OK(rig.commit(ranges));  // the model applies them in order: later wins
  std::vector<std::byte> got(150);
  HL_ASSERT_OK(rig.store().read(0, got));
  EXPECT_TRUE(BytesEqual(got.data(), d.data(), 10));
  EXPECT_TRUE(BytesEqual(got.data() + 10, a.data() + 10, 40));
  EXPECT_TRUE(BytesEqual(got.data() + 50, b.data(), 10));
  EXPECT_TRUE(BytesEqual(got.data() + 60, c.data(), 10));
  EXPECT_TRUE(BytesEqual(got.data() + 70, b.data() + 20, 80));
  EXPECT_TRUE(rig.consistent("after overlapping writes"));
}

TEST_P(TxnBasics, ReadsFromTheHeadReplicaToo) {
  RigOptions o = rig_options(mode(), 27);
  o.store.read_replica = 0;
  Rig rig(o);
  std::mt19937_64 rng(27);
  for (int k = 0; k < 6; ++k) {
    const auto ranges = random_ranges(rng, rig.so().data_size, 3, 64, 2048);
    HL_ASSERT_OK(rig.commit(ranges));
    for (const Range& r : ranges) {
      std::vector<std::byte> got(r.bytes.size());
      HL_ASSERT_OK(rig.store().read(r.off, got));
      EXPECT_TRUE(BytesEqual(got.data(), rig.model().data() + r.off, got.size()));
    }
  }
  EXPECT_TRUE(rig.consistent("reading from replica 0"));
}

INSTANTIATE_TEST_SUITE_P(Modes, TxnBasics, ::testing::ValuesIn(kBothModes), param_name);

struct Attacker {
  // A QP of tenant A on host `h` (in A's protection domain), connected to a
  // QP on the client NIC: what tenant A's client can drive.
  Attacker(Cluster& c, uint32_t h, rn::ProtectionDomain* victim_pd) : c_(c) {
    host_cq = must(c.nic(h).create_cq({}), "create_cq");
    rn::QpAttr ha;
    ha.send_cq = host_cq.get();
    ha.recv_cq = host_cq.get();
    host_qp = must(victim_pd->create_qp(ha), "create_qp in the tenant's PD");
    pd = must(c.client().alloc_pd(), "alloc_pd");
    cq = must(c.client().create_cq({}), "create_cq");
    rn::QpAttr qa;
    qa.send_cq = cq.get();
    qa.recv_cq = cq.get();
    qp = must(pd->create_qp(qa), "create_qp");
    buf.assign(8192, std::byte{0x5A});
    mr = must(pd->register_memory(buf.data(), buf.size(), rn::kAccessAll), "register_memory");
    must(rn::connect_pair(*qp, *host_qp, rn::kAccessAllRemote), "connect_pair");
  }
  ~Attacker() {
    qp.reset();
    host_qp.reset();
    mr.reset();
  }
  // Posts one request; returns its completion status (or nullopt if refused).
  std::optional<rn::WcStatus> post(rn::WrOpcode op, uint64_t raddr, uint32_t rkey, uint32_t len) {
    rn::Sge sg = mr->sge(0, len);
    rn::SendWr wr;
    wr.wr_id = 1;
    wr.opcode = op;
    wr.flags = rn::kSendSignaled;
    wr.sg = {&sg, 1};
    wr.remote_addr = raddr;
    wr.rkey = rkey;
    wr.compare_add = 0;
    wr.swap = 0xDEADBEEFDEADBEEFull;
    if (!qp->post_send(wr).is_ok()) return std::nullopt;
    auto wc = soft_test::poll_one(*cq, c_.ex());
    if (!wc) {
      ADD_FAILURE() << "no completion";
      return rn::WcStatus::kGeneralError;
    }
    return wc->status;
  }
  Cluster& c_;
  std::unique_ptr<rn::CompletionQueue> host_cq;
  std::unique_ptr<rn::QueuePair> host_qp;
  std::unique_ptr<rn::ProtectionDomain> pd;
  std::unique_ptr<rn::CompletionQueue> cq;
  std::unique_ptr<rn::QueuePair> qp;
  std::vector<std::byte> buf;
  std::unique_ptr<rn::MemoryRegion> mr;
};

// =====================================================================================
// Errors of the contract; every refusal changes no replica
// =====================================================================================

class TxnErrors : public ::testing::TestWithParam<ForwardMode> {
 protected:
  ForwardMode mode() const { return GetParam(); }
};

TEST_P(TxnErrors, OutsideTheDataAreaIsOutOfRange) {
  Rig rig(rig_options(mode(), 31));
  HL_ASSERT_OK(rig.put(0, pattern(256, 1)));
  ASSERT_TRUE(rig.consistent("before"));
  const auto before = rig.snapshot();
  const uint64_t d = rig.so().data_size;
  struct R {
    uint64_t off;
    size_t len;
  };
  const R bad[] = {{d, 1},          {d, 8},           {d - 1, 2},  {d - 10, 20}, {d + 4096, 16}, {0, size_t(d) + 1},
                   {UINT64_MAX, 1}, {UINT64_MAX - 7, 16},  // offset + len wraps to 8
                   {UINT64_MAX - d + 1, size_t(d)},         // offset + len wraps to exactly 0
                   {uint64_t(1) << 63, 8}};
  std::vector<std::byte> buf(d + 8);
  Transaction t = rig.store().begin();
  for (const R& r : bad) {
    const std::span<std::byte> span(buf.data(), r.len);
    EXPECT_CODE(t.write(r.off, span), StatusCode::kOutOfRange);
    EXPECT_CODE(t.read(r.off, span), StatusCode::kOutOfRange);
    EXPECT_CODE(rig.store().read(r.off, span), StatusCode::kOutOfRange);
  }
  EXPECT_EQ(t.write_bytes(), 0u) << "a refused write was buffered";
  // The edges themselves are fine.
  HL_EXPECT_OK(t.write(d - 1, pattern(1, 2)));
  HL_EXPECT_OK(t.read(0, std::span<std::byte>(buf.data(), d)));
  t.abort();
  rig.settle();
  EXPECT_TRUE(rig.unchanged_since(before, kSuperBytes, "out-of-range calls"));
  EXPECT_TRUE(rig.store().healthy());
  EXPECT_TRUE(rig.consistent("after out-of-range calls"));
}

TEST_P(TxnErrors, ZeroLengthAndFinishedTransactionsAreInvalidArgument) {
  Rig rig(rig_options(mode(), 32));
  HL_ASSERT_OK(rig.put(64, pattern(64, 1)));
  ASSERT_TRUE(rig.consistent("before"));
  const auto before = rig.snapshot();
  std::vector<std::byte> buf(16);
  {
    Transaction t = rig.store().begin();
    EXPECT_CODE(t.write(0, std::span<const std::byte>()), StatusCode::kInvalidArgument);
    EXPECT_CODE(t.write(1000, std::span<const std::byte>()), StatusCode::kInvalidArgument);
    EXPECT_CODE(t.read(0, std::span<std::byte>()), StatusCode::kInvalidArgument);
    EXPECT_CODE(rig.store().read(1000, std::span<std::byte>()), StatusCode::kInvalidArgument);
    EXPECT_EQ(t.write_bytes(), 0u);
  }
  // Default-constructed, aborted, moved-from: finished.
  Transaction none;
  EXPECT_FALSE(none.active());
  EXPECT_CODE(none.write(0, buf), StatusCode::kInvalidArgument);
  EXPECT_CODE(none.read(0, buf), StatusCode::kInvalidArgument);
  EXPECT_CODE(none.commit(), StatusCode::kInvalidArgument);
  Transaction aborted = rig.store().begin();
  aborted.abort();
  EXPECT_CODE(aborted.write(0, buf), StatusCode::kInvalidArgument);
  EXPECT_CODE(aborted.read(0, buf), StatusCode::kInvalidArgument);
  EXPECT_CODE(aborted.commit(), StatusCode::kInvalidArgument);
  Transaction src = rig.store().begin();
  Transaction dst = std::move(src);
  EXPECT_CODE(src.write(0, buf), StatusCode::kInvalidArgument);  // NOLINT(bugprone-use-after-move)
  dst.abort();
  rig.settle();
  EXPECT_TRUE(rig.unchanged_since(before, kSuperBytes, "refused calls"));
  // Committed (successfully): finished too; its later writes go nowhere.
  const uint64_t commits = rig.store().stats().commits;
  Transaction done = rig.store().begin();
  HL_ASSERT_OK(done.write(0, pattern(16, 2)));
  HL_ASSERT_OK(done.commit());
  std::memcpy(rig.model().data(), pattern(16, 2).data(), 16);
  EXPECT_FALSE(done.active());
  EXPECT_CODE(done.write(100, pattern(16, 3)), StatusCode::kInvalidArgument);
  EXPECT_CODE(done.read(0, buf), StatusCode::kInvalidArgument);
  EXPECT_CODE(done.commit(), StatusCode::kInvalidArgument);
  EXPECT_EQ(rig.store().stats().commits, commits + 1);
  EXPECT_TRUE(rig.consistent("after a finished transaction was used"));
}

TEST_P(TxnErrors, RecordLargerThanTheLogOrStagingIsResourceExhausted) {
  {
    RigOptions o = rig_options(mode(), 33);
    o.store.log_size = 8 << 10;
    Rig rig(o);
    HL_ASSERT_OK(rig.put(0, pattern(1000, 1)));
    ASSERT_TRUE(rig.consistent("before"));
    const auto before = rig.snapshot();
    const uint64_t commits = rig.store().stats().commits;
    Transaction t = rig.store().begin();
    HL_ASSERT_OK(t.write(4096, pattern(8 << 10, 2)));  // the payload alone fills the log
    EXPECT_CODE(t.commit(), StatusCode::kResourceExhausted);
    EXPECT_FALSE(t.active());
    Transaction t2 = rig.store().begin();  // two ranges that together do not fit
    HL_ASSERT_OK(t2.write(0, pattern(5000, 3)));
    HL_ASSERT_OK(t2.write(20000, pattern(5000, 4)));
    EXPECT_CODE(t2.commit(), StatusCode::kResourceExhausted);
    rig.settle();
    EXPECT_TRUE(rig.unchanged_since(before, kSuperBytes, "a record larger than the log"));
    EXPECT_EQ(rig.store().stats().commits, commits);
    EXPECT_TRUE(rig.store().healthy());
    HL_EXPECT_OK(rig.put(3000, pattern(1024, 5)));  // the store still works
    EXPECT_TRUE(rig.consistent("after the refusals"));
  }
  {
    RigOptions o = rig_options(mode(), 34);
    o.staging_bytes = 8 << 10;  // the log (128 KiB) is large; the staging buffer is not
    Rig rig(o);
    HL_ASSERT_OK(rig.put(0, pattern(2048, 1)));
    ASSERT_TRUE(rig.consistent("before"));
    const auto before = rig.snapshot();
    Transaction t = rig.store().begin();
    HL_ASSERT_OK(t.write(4096, pattern(12 << 10, 2)));
    EXPECT_CODE(t.commit(), StatusCode::kResourceExhausted);
    rig.settle();
    EXPECT_TRUE(rig.unchanged_since(before, kSuperBytes, "a record larger than the staging buffer"));
    EXPECT_TRUE(rig.store().healthy());
    HL_EXPECT_OK(rig.put(3000, pattern(2048, 5)));
    EXPECT_TRUE(rig.consistent("after the refusal"));
  }
}

// T1 reads X; T2 writes X and commits; T1 writes Y and commits: kAborted, Y unchanged.
TEST_P(TxnErrors, ReadSetConflictIsAbortedAndChangesNothing) {
  Rig rig(rig_options(mode(), 35));
  const uint64_t X = 0, Y = 1024, Z = 4096;  // stripes 0, 4, 16
  HL_ASSERT_OK(rig.commit({{X, u64_bytes(1)}, {Y, u64_bytes(1)}, {Z, u64_bytes(1)}}));
  std::vector<std::byte> v(8);

  Transaction t1 = rig.store().begin();
  HL_ASSERT_OK(t1.read(X, v));
  EXPECT_EQ(u64_at(v), 1u);
  EXPECT_EQ(t1.read_set_size(), 1u);
  HL_ASSERT_OK(rig.put_u64(X, 2));  // T2
  ASSERT_TRUE(rig.consistent("after T2"));
  const auto before = rig.snapshot();
  const StoreStats s0 = rig.store().stats();
  HL_ASSERT_OK(t1.write(Y, u64_bytes(3)));
  EXPECT_CODE(t1.commit(), StatusCode::kAborted);
  EXPECT_FALSE(t1.active());
  rig.settle();
  EXPECT_TRUE(rig.unchanged_since(before, kSuperBytes, "the aborted commit"));
  EXPECT_EQ(rig.store().stats().aborts, s0.aborts + 1);
  EXPECT_EQ(rig.store().stats().commits, s0.commits);
  EXPECT_EQ(rig.read_u64(Y), 1u);

  // Same stripe, other bytes (stripes are the unit): still a conflict.
  Transaction t3 = rig.store().begin();
  HL_ASSERT_OK(t3.read(X, v));
  HL_ASSERT_OK(rig.put_u64(X + 8, 7));
  HL_ASSERT_OK(t3.write(Y, u64_bytes(3)));
  EXPECT_CODE(t3.commit(), StatusCode::kAborted);

  // Reading the changed stripe again inside the transaction is kAborted at once.
  Transaction t4 = rig.store().begin();
  HL_ASSERT_OK(t4.read(X, v));
  HL_ASSERT_OK(rig.put_u64(X, 4));
  EXPECT_CODE(t4.read(X, v), StatusCode::kAborted);
  t4.abort();

  // No conflict when the other transaction wrote another stripe.
  Transaction t5 = rig.store().begin();
  HL_ASSERT_OK(t5.read(X, v));
  HL_ASSERT_OK(rig.put_u64(Z, 5));
  HL_ASSERT_OK(t5.write(Y, u64_bytes(u64_at(v) + 10)));
  HL_ASSERT_OK(t5.commit());
  std::memcpy(rig.model().data() + Y, u64_bytes(14).data(), 8);
  EXPECT_EQ(rig.read_u64(Y), 14u);
  EXPECT_TRUE(rig.consistent("after the conflicts"));
}

TEST_P(TxnErrors, WriteWriteOnOneStripeFromInterleavedTransactions) {
  Rig rig(rig_options(mode(), 36));
  std::vector<std::byte> v(8);
  // Read-modify-write of one counter by two interleaved transactions: the
  // second to commit is aborted (no lost update).
  HL_ASSERT_OK(rig.put_u64(0, 100));
  Transaction a = rig.store().begin(), b = rig.store().begin();
  HL_ASSERT_OK(a.read(0, v));
  const uint64_t va = u64_at(v);
  HL_ASSERT_OK(b.read(0, v));
  const uint64_t vb = u64_at(v);
  HL_ASSERT_OK(a.write(0, u64_bytes(va + 1)));
  HL_ASSERT_OK(b.write(0, u64_bytes(vb + 1)));
  HL_ASSERT_OK(a.commit());
  std::memcpy(rig.model().data(), u64_bytes(va + 1).data(), 8);
  ASSERT_TRUE(rig.consistent("after the first"));
  const auto before = rig.snapshot();
  EXPECT_CODE(b.commit(), StatusCode::kAborted);
  rig.settle();
  EXPECT_TRUE(rig.unchanged_since(before, kSuperBytes, "the aborted read-modify-write"));
  EXPECT_EQ(rig.read_u64(0), 101u);

  // Blind writes to the same stripe: both commit, in commit order; the
  // stripe's neighbours written by the other are kept.
  Transaction c = rig.store().begin(), d = rig.store().begin();
  HL_ASSERT_OK(c.write(16, u64_bytes(0xC)));
  HL_ASSERT_OK(c.write(40, u64_bytes(0xCC)));
  HL_ASSERT_OK(d.write(24, u64_bytes(0xD)));
  HL_ASSERT_OK(d.write(40, u64_bytes(0xDD)));
  HL_ASSERT_OK(d.commit());
  HL_ASSERT_OK(c.commit());  // later: wins at 40
  for (auto [off, val] : {std::pair<uint64_t, uint64_t>{24, 0xD}, {40, 0xDD}, {16, 0xC}, {40, 0xCC}})
    std::memcpy(rig.model().data() + off, u64_bytes(val).data(), 8);
  EXPECT_EQ(rig.read_u64(16), 0xCu);
  EXPECT_EQ(rig.read_u64(24), 0xDu);
  EXPECT_EQ(rig.read_u64(40), 0xCCu);
  // Every commit that wrote the stripe bumped its version.
  const auto w = rig.locks(0);
  EXPECT_FALSE(w[0] & kLockedBit);
  EXPECT_TRUE(rig.consistent("after blind writes"));
  const auto w2 = rig.locks(0);
  EXPECT_GE(w2[0] & ((1ull << 48) - 1), 4u) << "stripe 0 was written by 4 commits";
}

// A lock word changed behind the store's back (by the tenant's own QP on one
// replica): the next commit on that stripe is kDataLoss, the store refuses
// work until recover(), and recover() leaves the transaction all or nothing.
TEST_P(TxnErrors, LockWordChangedBehindTheStoresBackIsDataLoss) {
  Rig rig(rig_options(mode(), 38));
  HL_ASSERT_OK(rig.put(0, pattern(4096, 1)));
  ASSERT_TRUE(rig.consistent("before"));
  const std::vector<std::byte> committed = rig.model();
  const uint64_t stripe = 5;
  {
    const auto ta = must(rig.host(1).tenant_access(rig.tenant()), "tenant_access");
    Attacker own(rig.c(), 1, ta.pd);
    const uint64_t forged = 0x777;  // unlocked, a version the store never wrote
    std::memcpy(own.buf.data(), &forged, 8);
    auto wc = own.post(rn::WrOpcode::kRdmaWrite, ta.addr + rig.lay().lock_off + 8 * stripe, ta.rkey, 8);
    ASSERT_TRUE(wc && *wc == rn::WcStatus::kSuccess);
    ASSERT_EQ(rig.locks(1)[stripe], forged);
  }
  const auto next = pattern(64, 2);
  const Status s = rig.put(stripe * rig.lay().stripe, next);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
  EXPECT_FALSE(rig.store().healthy());
  EXPECT_CODE(rig.put(0, pattern(8, 3)), StatusCode::kUnavailable);
  std::vector<std::byte> v(8);
  EXPECT_CODE(rig.store().read(0, v), StatusCode::kUnavailable);
  HL_ASSERT_OK(rig.store().recover());
  EXPECT_TRUE(rig.store().healthy());
  rig.settle();
  std::vector<std::byte> after = committed;
  std::memcpy(after.data() + stripe * rig.lay().stripe, next.data(), next.size());
  const auto d0 = rig.data(0);
  const bool took = std::memcmp(d0.data(), after.data(), d0.size()) == 0;
  rig.model() = took ? after : committed;
  EXPECT_TRUE(rig.consistent(std::string("after recover (the transaction ") + (took ? "took" : "did not take") +
                             " effect)"));
  HL_EXPECT_OK(rig.put(stripe * rig.lay().stripe + 8, pattern(8, 4)));
  EXPECT_TRUE(rig.consistent("after a new commit on the stripe"));
}

// A replica NIC dies: the commit is kUnavailable (in doubt), every later call
// is refused without touching the survivors, recover() over the dead chain
// fails, and recover() with a new replica in its place resynchronises it.
TEST_P(TxnErrors, ReplicaCrashIsUnavailableUntilRecover) {
  RigOptions o = rig_options(mode(), 37);
  o.op_timeout_ns = 5'000'000;
  Rig rig(o);
  std::mt19937_64 rng(37);
  for (int k = 0; k < 5; ++k) HL_ASSERT_OK(rig.commit(random_ranges(rng, rig.so().data_size, 3, 64, 2048)));
  ASSERT_TRUE(rig.consistent("before the crash"));
  const std::vector<std::byte> committed = rig.model();

  rig.c().nic(1).crash();
  const auto doubt = random_ranges(rng, rig.so().data_size, 4, 64, 2048);
  std::vector<std::byte> if_committed = committed;
  for (const Range& r : doubt) std::memcpy(if_committed.data() + r.off, r.bytes.data(), r.bytes.size());
  const Status s = rig.commit(doubt);
  EXPECT_TRUE(s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded) << s.to_string();
  EXPECT_FALSE(rig.store().healthy());
  rig.model() = committed;

  // Refusals: nothing reaches the survivors.
  rig.c().turns(20000);  // whatever the broken chain still had in flight
  std::vector<std::vector<std::byte>> survivors = {rig.region(0), rig.region(2)};
  std::vector<std::byte> buf(64);
  EXPECT_CODE(rig.put(0, pattern(64, 1)), StatusCode::kUnavailable);
  Transaction t = rig.store().begin();
  EXPECT_CODE(t.read(0, buf), StatusCode::kUnavailable);
  EXPECT_CODE(rig.store().read(0, buf), StatusCode::kUnavailable);
  EXPECT_CODE(rig.store().drain(), StatusCode::kUnavailable);
  rig.c().turns(20000);
  EXPECT_TRUE(BytesEqual(rig.region(0).data(), survivors[0].data(), rig.lay().region)) << "replica 0";
  EXPECT_TRUE(BytesEqual(rig.region(2).data(), survivors[1].data(), rig.lay().region)) << "replica 2";
  EXPECT_FALSE(rig.store().healthy());

  // recover() over the same (dead) chain cannot succeed.
  const Status dead = rig.store().recover();
  EXPECT_FALSE(dead.is_ok());
  EXPECT_FALSE(rig.store().healthy());
  // Still refused, whatever group (if any) the failed recovery left behind.
  EXPECT_CODE(rig.put(0, pattern(64, 1)), StatusCode::kUnavailable);

  // A new replica in position 1: recovered, resynchronised, serving.
  rig.replace_host(1);
  HL_ASSERT_OK(rig.store().recover(rig.hosts()));
  rig.set_compare_log(false);  // the new replica's log is blank
  EXPECT_TRUE(rig.store().healthy());
  EXPECT_GT(rig.store().stats().resynced_bytes, 0u);
  // The in-doubt transaction is all or nothing.
  rig.settle();
  const auto d0 = rig.data(0);
  const bool took = std::memcmp(d0.data(), if_committed.data(), d0.size()) == 0;
  if (took) rig.model() = if_committed;
  EXPECT_TRUE(rig.consistent(std::string("after recover (the in-doubt commit ") + (took ? "took" : "did not take") +
                             " effect)"));
  for (int k = 0; k < 3; ++k) HL_ASSERT_OK(rig.commit(random_ranges(rng, rig.so().data_size, 2, 64, 1024)));
  EXPECT_TRUE(rig.consistent("after new commits on the rebuilt chain"));
}

INSTANTIATE_TEST_SUITE_P(Modes, TxnErrors, ::testing::ValuesIn(kBothModes), param_name);

// =====================================================================================
// Log truncation
// =====================================================================================

class TxnLog : public ::testing::TestWithParam<ForwardMode> {
 protected:
  ForwardMode mode() const { return GetParam(); }
};

TEST_P(TxnLog, ManyMoreCommitsThanTheLogHoldsAllSucceed) {
  RigOptions o = rig_options(mode(), 41);
  o.store.log_size = 8 << 10;
  o.store.data_size = 32 << 10;
  Rig rig(o);
  std::mt19937_64 rng(0x1065 + uint64_t(mode()));
  size_t payload = 0;
  uint64_t reads = 0;
  constexpr int kCommits = 300;
  for (int k = 0; k < kCommits; ++k) {
    // Mostly small records, now and then one of almost half the log.
    const auto ranges = k % 37 == 36 ? random_ranges(rng, o.store.data_size, 1, 3000, 3500)
                                     : random_ranges(rng, o.store.data_size, 1 + rng() % 3, 16, 600);
    for (const Range& r : ranges) payload += r.bytes.size();
    HL_ASSERT_OK(rig.commit(ranges)) << "commit " << k;
    if (k % 50 == 0) {
      for (const Range& r : ranges) {
        std::vector<std::byte> got(r.bytes.size());
        HL_ASSERT_OK(rig.store().read(r.off, got));
        ++reads;  // a read-only transaction: counted as a commit
        EXPECT_TRUE(BytesEqual(got.data(), rig.model().data() + r.off, got.size())) << "commit " << k;
      }
    }
  }
  EXPECT_GT(payload, 10 * o.store.log_size) << "the test did not go round the log";
  const StoreStats st = rig.store().stats();
  EXPECT_EQ(st.commits, uint64_t(kCommits) + reads);
  EXPECT_GT(st.truncations, 0u);
  EXPECT_EQ(st.aborts, 0u);
  EXPECT_TRUE(rig.consistent("after going round the log many times"));
  // And a reopen finds the same (the log head is where it should be).
  rig.store_ptr().reset();
  rig.store_ptr() = must(rig.try_open(rig.so()), "reopen");
  EXPECT_TRUE(rig.consistent("after reopening"));
}

INSTANTIATE_TEST_SUITE_P(Modes, TxnLog, ::testing::ValuesIn(kBothModes), param_name);

// =====================================================================================
// Group commit (StoreOptions::log_writes_in_flight), deterministic
// =====================================================================================

// Round after round, commit A goes first and its log write is held in
// flight (no thread steps the chain: the progress hook of every waiting
// thread returns without a turn until the round's gate opens); B and C then
// commit and, finding no room, both join the next log write. Opened, the
// chain completes A's write and B's and C's records go out together: two log
// writes per round, three records, exactly. The log is small, so the rounds
// wrap the ring (a write group that reaches its end goes on at its start,
// where the rounds meet it there)
// and reuse it after truncation. Then the client crashes with the last
// round's applies still in flight, and recovery replays the group-written
// records: every acknowledged commit is there, on every replica.
class TxnGroupCommit : public ::testing::TestWithParam<ForwardMode> {};

TEST_P(TxnGroupCommit, WaitingCommitsShareOneLogWriteAndSurviveACrash) {
  RigOptions o = rig_options(GetParam(), 61);
  o.open = false;
  o.store.log_size = 16 << 10;
  o.store.log_writes_in_flight = 1;
  // Slots enough that no issue in the test waits for credit (a credit READ
  // needs the chain to move, and a held round does not let it).
  o.slots = 4096;
  Rig rig(o);
  std::mutex turn_mu;
  std::atomic<bool> gate_open{true};
  StoreOptions so = rig.so();
  so.group.progress = [&] {
    if (!gate_open.load()) {
      std::this_thread::yield();
      return;
    }
    std::lock_guard<std::mutex> g(turn_mu);
    rig.c().turn();
  };
  rig.store_ptr() = must(rig.try_open(so), "Store::open");
  Store& store = rig.store();
  const uint64_t stripe = rig.lay().stripe;
  // A, B, C write 64 bytes each on their own stripe.
  auto commit_one = [&](uint32_t who, uint32_t round, Status* out) {
    std::vector<std::byte> v = pattern(64, round * 3 + who);
    Transaction t = store.begin();
    Status s = t.write(who * stripe, v);
    if (s.is_ok()) s = t.commit();
    *out = s;
  };
  constexpr uint32_t kRounds = 60;  // 180 records of 192 bytes: the 16 KiB ring wraps twice
  const StoreStats before = store.stats();
  for (uint32_t r = 0; r < kRounds; ++r) {
    Status sa, sb, sc;
    gate_open = false;
    const uint64_t writes0 = store.stats().log_writes, waits0 = store.stats().log_waits;
    // Bounded waits for the other threads' progress (never a sleep): on
    // failure the gate opens, so the threads finish and join.
    auto until = [&](auto pred, const char* what) {
      for (uint64_t k = 0; k < 200'000'000; ++k)
        if (pred()) return true;
        else std::this_thread::yield();
      ADD_FAILURE() << "round " << r << ": " << what << " never happened";
      return false;
    };
    std::thread a([&] { commit_one(0, r, &sa); });
    bool held = until([&] { return store.stats().log_writes > writes0; }, "A's log write issued");
    std::thread b([&] { commit_one(1, r, &sb); });
    std::thread c([&] { commit_one(2, r, &sc); });
    held = held && until([&] { return store.stats().log_waits >= waits0 + 2; }, "B and C waiting for room");
    gate_open = true;
    a.join();
    b.join();
    c.join();
    HL_ASSERT_OK(sa);
    HL_ASSERT_OK(sb);
    HL_ASSERT_OK(sc);
    ASSERT_TRUE(held);
    for (uint32_t who = 0; who < 3; ++who) {
      const std::vector<std::byte> v = pattern(64, r * 3 + who);
      std::memcpy(rig.model().data() + who * stripe, v.data(), v.size());
    }
  }
  const StoreStats after = store.stats();
  EXPECT_EQ(after.log_writes - before.log_writes, 2u * kRounds) << "A's, then B's and C's together, every round";
  EXPECT_EQ(after.log_write_records - before.log_write_records, 3u * kRounds);
  EXPECT_EQ(after.log_waits - before.log_waits, 2u * kRounds);
  EXPECT_EQ(after.commits - before.commits, 3u * kRounds);
  EXPECT_GT(after.truncations, before.truncations) << "the rounds did not reuse the ring";
  // The last round's applies are in flight: the client crashes now.
  HL_ASSERT_OK(rig.reopen_on_new_client());
  EXPECT_GE(rig.store().stats().replayed_records, 3u) << "recovery replayed none of the last round's records";
  EXPECT_TRUE(rig.consistent("after the crash and recovery"));
}

INSTANTIATE_TEST_SUITE_P(Modes, TxnGroupCommit, ::testing::ValuesIn(kBothModes), param_name);

// =====================================================================================
// Client threads (real time: SingleThreadExecutor, agent threads)
// =====================================================================================

// Modes/TxnThreads.*: soft NICs, both modes. OnDevice/TxnThreads.*: kCpuForward
// on the device under test (HYPERLOOP_TEST_DEVICE; soft NICs when unset).
class TxnThreads : public ::testing::TestWithParam<device_test::Where> {
 protected:
  ForwardMode mode() const { return GetParam().mode; }
  RigOptions threads_options(uint64_t seed) const {
    RigOptions o = rig_options(mode(), seed);
    o.drive = Drive::kThreads;
    o.on_device = GetParam().on_device;
    return o;
  }
};

TEST_P(TxnThreads, ConcurrentBankTransfersKeepTheTotal) {
  RigOptions o = threads_options(51);
  o.op_timeout_ns = 30'000'000'000ull;  // only a stuck chain waits this long
  o.store.log_writes_in_flight = 1;     // group commit on (ConcurrentCommitsOnDisjointStripes: off)
  o.store.data_size = 16 << 10;
  o.store.log_size = 64 << 10;
  Rig rig(o);
  // 16 accounts, four per stripe; three writers and a reader. (Every client
  // thread spins while it waits, as do the CPU-forwarding agents: on a small,
  // loaded machine more threads only add scheduling delay.)
  constexpr uint32_t kAccounts = 16, kSpacing = 64;
  constexpr uint32_t kWriters = 3;
  const uint32_t kTransfers = mode() == ForwardMode::kOffload ? 60 : 20;
  constexpr uint32_t kReaderAttempts = 100;
  constexpr int64_t kInitial = 1000;
  std::vector<std::byte> init(kAccounts * kSpacing);
  for (uint32_t a = 0; a < kAccounts; ++a) std::memcpy(init.data() + a * kSpacing, &kInitial, 8);
  HL_ASSERT_OK(rig.put(0, init));
  Store& store = rig.store();

  std::atomic<uint64_t> commits{0}, aborts{0}, snapshots{0};
  std::atomic<bool> writers_done{false};
  std::mutex err_mu;
  std::string first_error;
  auto fail = [&](const std::string& e) {
    std::lock_guard<std::mutex> l(err_mu);
    if (first_error.empty()) first_error = e;
  };
  auto sum_of = [&](const std::vector<std::byte>& b) {
    int64_t total = 0;
    for (uint32_t a = 0; a < kAccounts; ++a) {
      int64_t v;
      std::memcpy(&v, b.data() + a * kSpacing, 8);
      total += v;
    }
    return total;
  };
  std::vector<std::thread> threads;
  for (uint32_t w = 0; w < kWriters; ++w)
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(1000 + w);
      for (uint32_t k = 0; k < kTransfers; ++k) {
        const uint32_t from = rng() % kAccounts;
        const uint32_t to = (from + 1 + rng() % (kAccounts - 1)) % kAccounts;
        const int64_t amount = 1 + int64_t(rng() % 50);
        const uint64_t give_up = monotonic_ns() + 20'000'000'000ull;
        std::string last;
        for (int attempt = 0;; ++attempt) {
          if (monotonic_ns() > give_up) {
            std::string words;
            for (uint32_t i = 0; i < rig.n(); ++i) {
              words += " replica " + std::to_string(i) + ":";
              for (uint64_t w : rig.locks(i)) {
                char h[24];
                std::snprintf(h, sizeof h, " %llx", static_cast<unsigned long long>(w));
                words += h;
              }
            }
            return fail("a transfer did not commit in 20 s (" + std::to_string(attempt) + " attempts; last: " + last +
                        "); lock words:" + words);
          }
          Transaction t = store.begin();
          int64_t a, b;
          Status s = t.read(from * kSpacing, {reinterpret_cast<std::byte*>(&a), 8});
          if (s.is_ok()) s = t.read(to * kSpacing, {reinterpret_cast<std::byte*>(&b), 8});
          if (s.is_ok()) {
            a -= amount;
            b += amount;
            s = t.write(from * kSpacing, {reinterpret_cast<const std::byte*>(&a), 8});
            if (s.is_ok()) s = t.write(to * kSpacing, {reinterpret_cast<const std::byte*>(&b), 8});
            if (s.is_ok()) s = t.commit();
          }
          if (s.is_ok()) {
            ++commits;
            break;
          }
          if (s.code() != StatusCode::kAborted) return fail("writer: " + s.to_string());
          last = s.to_string();
          ++aborts;
        }
      }
    });
  // A reader: read-only transactions over every account; each one that
  // commits saw the invariant.
  threads.emplace_back([&] {
    std::vector<std::byte> all(kAccounts * kSpacing);
    for (uint32_t k = 0; k < kReaderAttempts && !writers_done.load(); ++k) {
      Transaction t = store.begin();
      Status s = t.read(0, all);
      if (s.is_ok()) s = t.commit();
      if (s.is_ok()) {
        ++commits;
        ++snapshots;
        if (sum_of(all) != int64_t(kAccounts) * kInitial)
          return fail("a committed snapshot's total is " + std::to_string(sum_of(all)));
      } else if (s.code() == StatusCode::kAborted) {
        ++aborts;
      } else {
        return fail("reader: " + s.to_string());
      }
    }
  });
  for (uint32_t w = 0; w < kWriters; ++w) threads[w].join();
  writers_done = true;
  threads.back().join();
  EXPECT_EQ(first_error, "");
  const StoreStats st = store.stats();
  EXPECT_EQ(st.commits, 1 + commits.load()) << "commits (the initial one, the writers', the reader's)";
  EXPECT_EQ(st.aborts, aborts.load());
  EXPECT_EQ(commits.load() - snapshots.load(), uint64_t(kWriters) * kTransfers);
  // Every commit returned; their applies may still be on the way (on a slow
  // device, e.g. rxe under TCG, for longer than lock_timeout_ns).
  HL_ASSERT_OK(store.drain());
  std::vector<std::byte> all(kAccounts * kSpacing);
  HL_ASSERT_OK(store.read(0, all));
  EXPECT_EQ(sum_of(all), int64_t(kAccounts) * kInitial);
  std::memcpy(rig.model().data(), all.data(), all.size());
  EXPECT_TRUE(rig.consistent("after the transfers"));
}

// Commits from several threads at once, each on its own stripe, round after
// round: once every thread's commit returned (and the store drained), each
// stripe reads back its new value at once. (Commits are applied and reaped
// in LSN order whichever thread gets back first.)
TEST_P(TxnThreads, ConcurrentCommitsOnDisjointStripesStayReadable) {
  RigOptions o = threads_options(53);
  o.op_timeout_ns = 30'000'000'000ull;  // only a stuck chain waits this long
  o.store.data_size = 16 << 10;
  o.store.log_size = 64 << 10;
  Rig rig(o);
  Store& store = rig.store();
  constexpr uint32_t kThreads = 3;
  const uint32_t kRounds = mode() == ForwardMode::kOffload ? 60 : 15;
  const uint64_t stripe = rig.lay().stripe;
  std::barrier sync(kThreads + 1);
  std::atomic<uint32_t> failures{0};
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (uint32_t r = 1; r <= kRounds; ++r) {
        sync.arrive_and_wait();  // start together
        Transaction tx = store.begin();
        const uint64_t v = uint64_t(r) << 8 | t;
        if (!tx.write(t * stripe, {reinterpret_cast<const std::byte*>(&v), 8}).is_ok() || !tx.commit().is_ok())
          ++failures;
        sync.arrive_and_wait();  // done
      }
    });
  uint32_t stuck = 0;
  std::string first;
  for (uint32_t r = 1; r <= kRounds; ++r) {
    sync.arrive_and_wait();
    sync.arrive_and_wait();
    if (const Status d = store.drain(); !d.is_ok()) {
      ADD_FAILURE() << "round " << r << ": drain: " << d.to_string();
      continue;  // keep the threads' rounds going: they are joined below
    }
    for (uint32_t t = 0; t < kThreads; ++t) {
      std::vector<std::byte> got(8);
      const Status s = store.read(t * stripe, got);
      if (!s.is_ok()) {
        if (first.empty()) first = "round " + std::to_string(r) + ", stripe " + std::to_string(t) + ": " + s.to_string();
        ++stuck;
      } else if (u64_at(got) != (uint64_t(r) << 8 | t)) {
        ADD_FAILURE() << "round " << r << ", stripe " << t << ": read " << u64_at(got);
      }
    }
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_EQ(stuck, 0u) << "reads of a quiet, committed stripe failed; first: " << first;
  for (uint32_t t = 0; t < kThreads; ++t) {
    const uint64_t v = uint64_t(kRounds) << 8 | t;
    std::memcpy(rig.model().data() + t * stripe, &v, 8);
  }
  EXPECT_TRUE(rig.consistent("after the rounds"));
}

INSTANTIATE_TEST_SUITE_P(Modes, TxnThreads, ::testing::ValuesIn(device_test::kSoftModes),
                         device_test::where_name<::testing::TestParamInfo<device_test::Where>>);
INSTANTIATE_TEST_SUITE_P(OnDevice, TxnThreads, ::testing::ValuesIn(device_test::kOnDevice),
                         device_test::where_name<::testing::TestParamInfo<device_test::Where>>);
INSTANTIATE_TEST_SUITE_P(OnDeviceOffload, TxnThreads, ::testing::ValuesIn(device_test::kOnDeviceOffload),
                         device_test::where_name<::testing::TestParamInfo<device_test::Where>>);

// A stripe held by a commit in flight (its forwarders frozen) is waited for
// up to lock_timeout_ns, then the other transaction is kAborted; the first
// commits once the forwarders thaw.
TEST(TxnLockWait, AStripeHeldByACommitInFlightTimesOutAsAborted) {
  RigOptions o = rig_options(ForwardMode::kCpuForward, 52);
  o.drive = Drive::kThreads;
  o.op_timeout_ns = 20'000'000'000ull;
  o.store.lock_timeout_ns = 20'000'000;
  Rig rig(o);
  HL_ASSERT_OK(rig.put(0, pattern(64, 1)));
  ASSERT_TRUE(rig.consistent("before"));
  for (uint32_t i = 0; i < rig.n(); ++i) rig.host(i).freeze();
  Status first = internal_error("not run");
  std::atomic<bool> first_done{false};
  const auto b = pattern(8, 2);
  std::thread t1([&] {
    Transaction t = rig.store().begin();
    first = t.write(0, b);
    if (first.is_ok()) first = t.commit();
    first_done = true;
  });
  const uint64_t deadline = monotonic_ns() + 10'000'000'000ull;
  while (rig.store().group().in_flight() == 0 && !first_done && monotonic_ns() < deadline) std::this_thread::yield();
  if (rig.store().group().in_flight() == 0) {
    for (uint32_t i = 0; i < rig.n(); ++i) rig.host(i).thaw();
    t1.join();
    FAIL() << "the first commit was not issued (" << first.to_string() << ")";
  }
  const StoreStats s0 = rig.store().stats();
  Transaction t2 = rig.store().begin();
  HL_ASSERT_OK(t2.write(8, pattern(8, 3)));  // same stripe, other bytes
  EXPECT_CODE(t2.commit(), StatusCode::kAborted);
  std::vector<std::byte> v(8);
  EXPECT_CODE(rig.store().read(0, v), StatusCode::kAborted);  // the stripe stays locked
  EXPECT_FALSE(first_done.load()) << "the frozen chain acknowledged a commit";
  const StoreStats s1 = rig.store().stats();
  EXPECT_GE(s1.lock_waits, s0.lock_waits + 1);
  EXPECT_GE(s1.aborts, s0.aborts + 2);
  for (uint32_t i = 0; i < rig.n(); ++i) rig.host(i).thaw();
  t1.join();
  HL_EXPECT_OK(first);
  std::memcpy(rig.model().data(), b.data(), 8);
  EXPECT_TRUE(rig.consistent("after the thaw"));
}

// =====================================================================================
// Recovery
// =====================================================================================

class TxnRecovery : public ::testing::TestWithParam<ForwardMode> {
 protected:
  ForwardMode mode() const { return GetParam(); }
  RigOptions pmem_options(uint64_t seed, const std::string& tag = "") {
    RigOptions o = rig_options(mode(), seed);
    o.pmem = &dir_;
    o.tag = tag;
    o.store.data_size = 32 << 10;
    o.store.log_size = 32 << 10;
    o.op_timeout_ns = 5'000'000;
    return o;
  }
  static std::vector<std::byte> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    std::memcpy(b.data(), c.data(), c.size());
    return b;
  }
  static void flip_byte(const std::string& path, size_t off) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    ASSERT_TRUE(f.good()) << path;
    f.seekg(std::streamoff(off));
    char ch = 0;
    f.read(&ch, 1);
    ch = char(ch ^ 0x5A);
    f.seekp(std::streamoff(off));
    f.write(&ch, 1);
    ASSERT_TRUE(f.good()) << path;
  }
  fault_test::TempDir dir_;
};

// (a) Committed, then every host loses power; restarted on the same files,
// open finds every committed transaction.
TEST_P(TxnRecovery, CommittedTransactionsSurvivePowerFailureOfEveryHost) {
  RigOptions o = pmem_options(61);
  std::vector<std::byte> model;
  {
    Rig rig(o);
    std::mt19937_64 rng(61);
    for (int k = 0; k < 20; ++k) HL_ASSERT_OK(rig.commit(random_ranges(rng, o.store.data_size, 1 + k % 4, 16, 3000)));
    HL_ASSERT_OK(rig.store().drain());
    for (int k = 0; k < 6; ++k) HL_ASSERT_OK(rig.commit(random_ranges(rng, o.store.data_size, 2, 16, 2000)));
    model = rig.model();
    rig.chain().power_fail_all();
  }
  o.seed += 100;
  Rig rig(o);
  rig.model() = model;
  EXPECT_EQ(rig.store().stats().recoveries, 1u);
  EXPECT_TRUE(rig.consistent("after the power failure and restart"));
  HL_EXPECT_OK(rig.put(100, pattern(100, 1)));
  EXPECT_TRUE(rig.consistent("after a new commit"));
}

// (b) A record durable on every replica but never applied (power lost right
// after commit() returned) is replayed by open.
TEST_P(TxnRecovery, DurableButUnappliedRecordIsReplayedOnOpen) {
  RigOptions o = pmem_options(62);
  std::vector<std::byte> model, old_data;
  std::vector<Range> last;
  {
    Rig rig(o);
    const auto fill = pattern(o.store.data_size, 1);
    for (size_t at = 0; at < fill.size(); at += 4096) HL_ASSERT_OK(rig.put(at, {fill.data() + at, 4096}));
    ASSERT_TRUE(rig.consistent("before"));
    // Everything before applied and its slots re-armed: the last commit is
    // issued, stripe locks to unlocks, without waiting for credit (a wait
    // would step the chain and could apply it before the power failure).
    HL_ASSERT_OK(rig.store().drain());
    last = {{100, pattern(700, 2)}, {9000, pattern(64, 3)}, {20000, pattern(3000, 4)}};
    HL_ASSERT_OK(rig.commit(last));
    rig.chain().power_fail_all();  // before any step could apply it
    model = rig.model();
    // What the replicas hold durably: the record, not yet its effect.
    for (uint32_t i = 0; i < rig.n(); ++i) {
      const auto d = rig.data(i);
      EXPECT_TRUE(BytesEqual(d.data() + 100, pattern(o.store.data_size, 1).data() + 100, 700))
          << "replica " << i << ": the commit was applied before the power failure (the test misses its scenario)";
    }
  }
  o.seed += 100;
  Rig rig(o);
  rig.model() = model;
  EXPECT_GE(rig.store().stats().replayed_records, 1u);
  EXPECT_TRUE(rig.consistent("after replay"));
}

// (c) A lagging replica (its file replaced by an older copy while the hosts
// are down) is overwritten from the others; every commit is there.
TEST_P(TxnRecovery, LaggingReplicaIsResynchronised) {
  for (uint32_t lag : {2u, 0u}) {
    SCOPED_TRACE("lagging replica " + std::to_string(lag));
    const std::string tag = "lag" + std::to_string(lag) + "_";
    RigOptions o = pmem_options(63 + lag, tag);
    std::mt19937_64 rng(63 + lag);
    std::vector<std::byte> model;
    {
      Rig rig(o);
      for (int k = 0; k < 10; ++k) HL_ASSERT_OK(rig.commit(random_ranges(rng, o.store.data_size, 2, 64, 2000)));
      ASSERT_TRUE(rig.consistent("phase 1"));
      model = rig.model();
    }
    const std::string path = dir_.file(tag + "r" + std::to_string(lag) + ".pmem");
    const std::string old_copy = path + ".old";
    std::filesystem::copy_file(path, old_copy, std::filesystem::copy_options::overwrite_existing);
    {
      o.seed += 1;
      Rig rig(o);
      rig.model() = model;
      // Far more than the log holds: the heads move on.
      for (int k = 0; k < 60; ++k) HL_ASSERT_OK(rig.commit(random_ranges(rng, o.store.data_size, 2, 64, 1500)));
      ASSERT_TRUE(rig.consistent("phase 2"));
      EXPECT_GT(rig.store().stats().truncations, 0u);
      model = rig.model();
    }
    std::filesystem::copy_file(old_copy, path, std::filesystem::copy_options::overwrite_existing);
    o.seed += 1;
    Rig rig(o);
    rig.model() = model;
    rig.set_compare_log(false);
    EXPECT_GT(rig.store().stats().resynced_bytes, 0u);
    EXPECT_TRUE(rig.consistent("after open over the lagging replica"));
    HL_EXPECT_OK(rig.commit(random_ranges(rng, o.store.data_size, 3, 64, 1000)));
    EXPECT_TRUE(rig.consistent("after a new commit"));
  }
}

// (d) A client that crashes between commits leaves lock words locked on the
// replicas; open clears every one (version bumped), replays what committed,
// and new transactions on those stripes commit.
TEST_P(TxnRecovery, StaleLocksOfACrashedClientAreCleared) {
  RigOptions o = rig_options(mode(), 64);
  o.op_timeout_ns = 5'000'000;
  Rig rig(o);
  const uint64_t stripe = rig.lay().stripe;
  HL_ASSERT_OK(rig.commit({{0, pattern(3 * stripe, 1)}}));
  ASSERT_TRUE(rig.consistent("before"));
  std::vector<uint64_t> touched;
  for (uint64_t s : {10u, 11u, 40u, 41u, 42u, 100u}) touched.push_back(s);
  HL_ASSERT_OK(rig.commit({{10 * stripe + 17, pattern(stripe + 10, 2)}}));
  HL_ASSERT_OK(rig.commit({{40 * stripe, pattern(3 * stripe, 3)}, {100 * stripe + 5, pattern(9, 4)}}));
  rig.c().client().crash();  // right after the commit point: its apply and unlock never run
  std::vector<std::vector<uint64_t>> locked_before;
  size_t stale = 0;
  for (uint32_t i = 0; i < rig.n(); ++i) {
    locked_before.push_back(rig.locks(i));
    for (uint64_t w : locked_before.back()) stale += (w & kLockedBit) != 0;
  }
  ASSERT_GT(stale, 0u) << "no lock word was left locked (the test misses its scenario)";

  HL_ASSERT_OK(rig.reopen_on_new_client());
  EXPECT_GE(rig.store().stats().replayed_records, 1u);
  rig.settle();
  for (uint32_t i = 0; i < rig.n(); ++i) {
    const auto w = rig.locks(i);
    for (size_t s = 0; s < w.size(); ++s) {
      EXPECT_FALSE(w[s] & kLockedBit) << "replica " << i << " stripe " << s;
      if (locked_before[i][s] & kLockedBit) {
        EXPECT_GT(w[s] & ((1ull << 48) - 1), locked_before[i][s] & ((1ull << 48) - 1))
            << "replica " << i << " stripe " << s << ": version not bumped";
      }
    }
  }
  EXPECT_TRUE(rig.consistent("after open on a new client"));
  for (uint64_t s : touched) {
    HL_EXPECT_OK(rig.put(s * stripe + 3, pattern(20, uint32_t(s)))) << "stripe " << s;
  }
  EXPECT_TRUE(rig.consistent("after new transactions on the formerly locked stripes"));
}

// (e) The last record is torn on every replica (a byte of it corrupted in
// every file while the hosts are down): it is not replayed and the data
// keeps the previous value.
TEST_P(TxnRecovery, TornLastRecordIsDiscarded) {
  RigOptions o = pmem_options(65);
  std::vector<std::byte> model;
  size_t lo = 0, hi = 0;
  {
    Rig rig(o);
    HL_ASSERT_OK(rig.commit({{1000, pattern(500, 1)}, {20000, pattern(100, 2)}}));
    ASSERT_TRUE(rig.consistent("after the first"));
    model = rig.model();
    const auto log_before = rig.region(0);
    HL_ASSERT_OK(rig.commit({{1000, pattern(500, 3)}, {20000, pattern(100, 4)}, {30000, pattern(64, 5)}}));
    rig.chain().power_fail_all();
    // The record's bytes: where the durable log changed.
    const auto log_after = rig.region(0);
    const Layout& l = rig.lay();
    for (size_t at = l.log_off; at < l.log_off + l.log_size; ++at)
      if (log_after[at] != log_before[at]) {
        if (lo == 0) lo = at;
        hi = at + 1;
      }
    ASSERT_GT(hi, lo) << "no durable record found";
    for (uint32_t i = 1; i < rig.n(); ++i) {
      const auto r = rig.region(i);
      EXPECT_TRUE(BytesEqual(r.data() + lo, log_after.data() + lo, hi - lo)) << "replica " << i << "'s record";
    }
  }
  for (uint32_t i = 0; i < 3; ++i) flip_byte(dir_.file("r" + std::to_string(i) + ".pmem"), lo + (hi - lo) / 2);
  o.seed += 100;
  Rig rig(o);
  rig.model() = model;
  EXPECT_LE(rig.store().stats().replayed_records, 1u) << "the torn record was replayed";
  EXPECT_TRUE(rig.consistent("after open over the torn record"));
  HL_EXPECT_OK(rig.put(1000, pattern(500, 6)));
  EXPECT_TRUE(rig.consistent("after a new commit"));
}

// A record corrupted on one replica only is taken from the others.
TEST_P(TxnRecovery, RecordTornOnOneReplicaIsTakenFromTheOthers) {
  RigOptions o = pmem_options(66);
  std::vector<std::byte> model;
  size_t lo = 0, hi = 0;
  {
    Rig rig(o);
    HL_ASSERT_OK(rig.put(0, pattern(2000, 1)));
    ASSERT_TRUE(rig.consistent("before"));
    const auto log_before = rig.region(0);
    HL_ASSERT_OK(rig.commit({{0, pattern(1000, 2)}, {8000, pattern(100, 3)}}));
    rig.chain().power_fail_all();
    model = rig.model();
    const auto log_after = rig.region(0);
    for (size_t at = rig.lay().log_off; at < rig.lay().log_off + rig.lay().log_size; ++at)
      if (log_after[at] != log_before[at]) {
        if (lo == 0) lo = at;
        hi = at + 1;
      }
    ASSERT_GT(hi, lo);
  }
  flip_byte(dir_.file("r1.pmem"), lo + (hi - lo) / 2);
  o.seed += 100;
  Rig rig(o);
  rig.model() = model;
  rig.set_compare_log(false);  // replica 1 keeps its torn copy of the (now dead) record
  EXPECT_GE(rig.store().stats().replayed_records, 1u);
  EXPECT_TRUE(rig.consistent("after open"));
}

// The client crashes at a step somewhere inside one commit: whatever the
// outcome, after open on a new client the transaction is all or nothing on
// every replica, and it is there if commit() returned OK.
TEST_P(TxnRecovery, CommitInterruptedByAClientCrashIsAllOrNothing) {
  const uint64_t seed = 67;
  RigOptions o = rig_options(mode(), seed);
  o.op_timeout_ns = 3'000'000;
  o.store.data_size = 16 << 10;
  o.store.log_size = 16 << 10;
  const std::vector<Range> base = {{0, pattern(300, 1)}, {5000, pattern(600, 2)}, {12000, pattern(64, 3)}};
  const std::vector<Range> next = {{0, pattern(300, 4)}, {5000, pattern(600, 5)}, {12000, pattern(64, 6)}};
  // How many executor steps the commit takes when nothing fails.
  uint64_t commit_steps = 0;
  {
    Rig rig(o);
    HL_ASSERT_OK(rig.commit(base));
    ASSERT_TRUE(rig.consistent("reference"));
    const uint64_t s0 = rig.c().ex().steps();
    HL_ASSERT_OK(rig.commit(next));
    commit_steps = rig.c().ex().steps() - s0;
  }
  ASSERT_GT(commit_steps, 0u);
  int old_seen = 0, new_seen = 0;
  for (uint64_t j = 0; j <= 10; ++j) {
    const uint64_t at = commit_steps * j / 9;  // the last ones: after commit() returned
    SCOPED_TRACE("client crash " + std::to_string(at) + " steps into a commit of " + std::to_string(commit_steps));
    Rig rig(o);
    HL_ASSERT_OK(rig.commit(base));
    ASSERT_TRUE(rig.consistent("before"));
    const std::vector<std::byte> before = rig.model();
    soft::Nic& client = rig.c().client();
    rig.c().ex().at_step(rig.c().ex().steps() + at, [&client] {
      if (!client.crashed()) client.crash();
    });
    const Status s = rig.commit(next);
    if (!s.is_ok()) {
      EXPECT_TRUE(s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded)
          << s.to_string();
    }
    if (!client.crashed()) client.crash();
    const std::vector<std::byte> after = [&] {
      std::vector<std::byte> m = before;
      for (const Range& r : next) std::memcpy(m.data() + r.off, r.bytes.data(), r.bytes.size());
      return m;
    }();
    HL_ASSERT_OK(rig.reopen_on_new_client());
    rig.set_compare_log(false);  // the record may have reached some replicas' logs only
    rig.settle();
    const auto d = rig.data(0);
    const bool took = std::memcmp(d.data(), after.data(), d.size()) == 0;
    if (s.is_ok()) {
      EXPECT_TRUE(took) << "commit() returned OK but the transaction is gone";
    }
    rig.model() = took ? after : before;
    (took ? new_seen : old_seen)++;
    EXPECT_TRUE(rig.consistent(std::string(took ? "took effect" : "did not take effect") + ", commit returned " +
                               s.to_string()));
    HL_EXPECT_OK(rig.commit(base));
    EXPECT_TRUE(rig.consistent("after a new commit"));
  }
  EXPECT_GT(old_seen, 0) << "no crash point lost the transaction (the sweep misses its scenario)";
  EXPECT_GT(new_seen, 0);
}

// Every host loses power at a step somewhere inside one commit: after the
// restart the transaction is all or nothing on every replica, and it is
// there if commit() returned OK.
TEST_P(TxnRecovery, CommitInterruptedByPowerFailureIsAllOrNothing) {
  RigOptions o = pmem_options(68, "ref_");
  o.op_timeout_ns = 3'000'000;
  const std::vector<Range> base = {{0, pattern(300, 1)}, {9000, pattern(2000, 2)}, {30000, pattern(64, 3)}};
  const std::vector<Range> next = {{0, pattern(300, 4)}, {9000, pattern(2000, 5)}, {30000, pattern(64, 6)}};
  uint64_t commit_steps = 0;
  {
    Rig rig(o);
    HL_ASSERT_OK(rig.commit(base));
    ASSERT_TRUE(rig.consistent("reference"));
    const uint64_t s0 = rig.c().ex().steps();
    HL_ASSERT_OK(rig.commit(next));
    commit_steps = rig.c().ex().steps() - s0;
  }
  int old_seen = 0, new_seen = 0;
  for (uint64_t j = 0; j <= 10; ++j) {
    const uint64_t at = commit_steps * j / 9;
    SCOPED_TRACE("power failure " + std::to_string(at) + " steps into a commit of " + std::to_string(commit_steps));
    o.tag = "p" + std::to_string(j) + "_";
    o.seed = 680 + j;
    std::vector<std::byte> before, after;
    Status s;
    {
      Rig rig(o);
      HL_ASSERT_OK(rig.commit(base));
      ASSERT_TRUE(rig.consistent("before"));
      before = rig.model();
      after = before;
      for (const Range& r : next) std::memcpy(after.data() + r.off, r.bytes.data(), r.bytes.size());
      bool off = false;
      rig.c().ex().at_step(rig.c().ex().steps() + at, [&] {
        if (!off) rig.chain().power_fail_all();
        off = true;
      });
      s = rig.commit(next);
      if (!off) rig.chain().power_fail_all();
      off = true;
      if (!s.is_ok()) {
        EXPECT_TRUE(s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded)
            << s.to_string();
      }
    }
    o.seed += 100;
    Rig rig(o);
    rig.set_compare_log(false);
    rig.settle();
    const auto d = rig.data(0);
    const bool took = std::memcmp(d.data(), after.data(), d.size()) == 0;
    if (s.is_ok()) {
      EXPECT_TRUE(took) << "commit() returned OK but the transaction is gone";
    }
    rig.model() = took ? after : before;
    (took ? new_seen : old_seen)++;
    EXPECT_TRUE(rig.consistent(std::string(took ? "took effect" : "did not take effect") + ", commit returned " +
                               s.to_string()));
  }
  EXPECT_GT(old_seen, 0) << "no power failure point lost the transaction (the sweep misses its scenario)";
  EXPECT_GT(new_seen, 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, TxnRecovery, ::testing::ValuesIn(kBothModes), param_name);

// =====================================================================================
// Multi-tenancy: 100 tenants on the same three hosts
// =====================================================================================

class TxnTenants : public ::testing::TestWithParam<ForwardMode> {
 protected:
  ForwardMode mode() const { return GetParam(); }
};

TEST_P(TxnTenants, HundredTenantsOnThreeHostsSeeOnlyTheirOwnData) {
  constexpr uint32_t kTenants = 100, kFirst = 1000;
  StoreOptions so;
  so.data_size = 4096;
  so.log_size = 8192;
  so.stripe_bytes = 256;
  const size_t region = Store::region_bytes(so);
  ASSERT_GT(region, 0u);
  const Layout lay(so);
  ClusterOptions co;
  co.mode = mode();
  co.seed = 71;
  co.region_size = 4096;  // the fixture's own tenant, unused
  co.slots = 16;
  co.rearm_batch = 8;
  co.staging_bytes = 8192;
  co.make_group = false;
  co.agent_every = 4;
  Cluster c(co);
  for (uint32_t h = 0; h < c.n(); ++h)
    for (uint32_t t = 0; t < kTenants; ++t)
      must(c.host(h).register_tenant(kFirst + t, region), "register_tenant " + std::to_string(kFirst + t));
  std::vector<std::vector<std::byte>> models(kTenants, std::vector<std::byte>(so.data_size));
  std::vector<std::unique_ptr<Store>> stores;
  for (uint32_t t = 0; t < kTenants; ++t) {
    StoreOptions o = so;
    o.tenant = kFirst + t;
    o.group = c.group_options(kFirst + t);
    stores.push_back(must(Store::open(c.client(), c.hosts(), o), "Store::open tenant " + std::to_string(o.tenant)));
  }
  auto commit = [&](uint32_t t, const std::vector<Range>& ranges) {
    Transaction tx = stores[t]->begin();
    for (const Range& r : ranges) HL_ASSERT_OK(tx.write(r.off, r.bytes));
    HL_ASSERT_OK(tx.commit()) << "tenant " << t;
    for (const Range& r : ranges) std::memcpy(models[t].data() + r.off, r.bytes.data(), r.bytes.size());
  };
  // Each tenant its own pattern over its whole data area, in two halves,
  // interleaved across tenants; then a multi-range overwrite.
  for (uint32_t half = 0; half < 2; ++half)
    for (uint32_t t = 0; t < kTenants; ++t)
      ASSERT_NO_FATAL_FAILURE(commit(t, {{half * 2048u, pattern(2048, 0x10000 * (half + 1) + t)}}));
  for (uint32_t t = 0; t < kTenants; ++t)
    ASSERT_NO_FATAL_FAILURE(commit(t, {{t % 4000, pattern(64, 0x30000 + t)}, {3000, pattern(300, 0x40000 + t)}}));
  for (auto& s : stores) HL_ASSERT_OK(s->drain());

  auto regions_of = [&](uint32_t t) {
    std::vector<std::vector<std::byte>> r;
    for (uint32_t h = 0; h < c.n(); ++h) {
      r.emplace_back(region);
      must(c.host(h).peek(kFirst + t, 0, r.back()), "peek");
    }
    return r;
  };
  auto check_all = [&](const std::string& when) {
    for (uint32_t t = 0; t < kTenants; ++t) {
      const auto r = regions_of(t);
      for (uint32_t h = 0; h < c.n(); ++h) {
        ASSERT_TRUE(BytesEqual(r[h].data() + lay.data_off, models[t].data(), so.data_size))
            << when << ": tenant " << t << " on host " << h;
        ASSERT_TRUE(BytesEqual(r[h].data() + lay.lock_off, r[0].data() + lay.lock_off, region - lay.lock_off))
            << when << ": tenant " << t << " host " << h << " against host 0";
      }
      std::vector<std::byte> got(so.data_size);
      HL_ASSERT_OK(stores[t]->read(0, got));
      ASSERT_TRUE(BytesEqual(got.data(), models[t].data(), got.size())) << when << ": tenant " << t << " Store::read";
    }
  };
  ASSERT_NO_FATAL_FAILURE(check_all("after every tenant committed"));
  std::vector<std::vector<std::vector<std::byte>>> before;
  for (uint32_t t = 0; t < kTenants; ++t) before.push_back(regions_of(t));

  // Forged access: tenant A's QP on each host against tenant B's region.
  const uint32_t A = kFirst + 3, B = kFirst + 4;
  uint32_t attempts = 0, refused = 0;
  for (uint32_t h = 0; h < c.n(); ++h) {
    const auto ta = must(c.host(h).tenant_access(A), "tenant_access A");
    const auto tb = must(c.host(h).tenant_access(B), "tenant_access B");
    ASSERT_EQ(ta.size, region);
    ASSERT_NE(ta.pd, tb.pd) << "two tenants share a protection domain";
    {  // The setup works: A reads its own region.
      Attacker at(c, h, ta.pd);
      auto wc = at.post(rn::WrOpcode::kRdmaRead, ta.addr + lay.data_off, ta.rkey, 256);
      ASSERT_TRUE(wc && *wc == rn::WcStatus::kSuccess) << "host " << h << ": tenant A cannot read its own region";
      EXPECT_TRUE(BytesEqual(at.buf.data(), before[3][h].data() + lay.data_off, 256));
    }
    struct Try {
      std::string what;
      uint64_t addr;
      uint32_t rkey;
      uint32_t len;
    };
    std::vector<Try> tries = {
        {"B's address, B's rkey", tb.addr + lay.data_off, tb.rkey, 64},
        {"B's superblock, B's rkey", tb.addr, tb.rkey, 64},
        {"B's lock table, B's rkey", tb.addr + lay.lock_off, tb.rkey, 8},
        {"B's address, A's rkey", tb.addr + lay.data_off, ta.rkey, 64},
        {"A's rkey, past A's region", ta.addr + region, ta.rkey, 8},
        {"A's rkey, straddling A's end", ta.addr + region - 8, ta.rkey, 16},
        {"A's rkey, far past A's region", ta.addr + region + 4096 * 16, ta.rkey, 8},
        {"A's rkey, before A's region", ta.addr - 64, ta.rkey, 8},
        {"B's address, rkey 0", tb.addr + lay.data_off, 0, 8},
        {"B's address, rkey ~0", tb.addr + lay.data_off, ~0u, 8},
    };
    for (uint32_t d = 1; d <= 6; ++d) {
      tries.push_back({"B's address, B's rkey + " + std::to_string(d), tb.addr + lay.data_off, tb.rkey + d, 8});
      tries.push_back({"B's address, B's rkey - " + std::to_string(d), tb.addr + lay.data_off, tb.rkey - d, 8});
      tries.push_back({"B's address, A's rkey + " + std::to_string(d), tb.addr + lay.data_off, ta.rkey + d, 8});
    }
    for (const Try& tr : tries) {
      for (rn::WrOpcode op : {rn::WrOpcode::kRdmaWrite, rn::WrOpcode::kRdmaRead, rn::WrOpcode::kAtomicCas}) {
        // (A CAS is 8 bytes: where that lands inside A's own region it is no forgery.)
        const bool inside_a = tr.addr >= ta.addr && tr.addr + 8 <= ta.addr + region;
        if (op == rn::WrOpcode::kAtomicCas && ((tr.addr % 8) != 0 || inside_a)) continue;
        Attacker at(c, h, ta.pd);
        const uint32_t len = op == rn::WrOpcode::kAtomicCas ? 8 : tr.len;
        auto wc = at.post(op, tr.addr, tr.rkey, len);
        ++attempts;
        if (!wc) {
          ++refused;
          continue;
        }
        EXPECT_EQ(*wc, rn::WcStatus::kRemoteAccessError)
            << "host " << h << ", " << tr.what << ", opcode " << int(op) << ": " << rn::wc_status_name(*wc);
        if (op != rn::WrOpcode::kRdmaWrite) {
          EXPECT_TRUE(AllBytesAre(at.buf.data(), len, 0x5A)) << "host " << h << ", " << tr.what << ": bytes leaked";
        }
      }
    }
  }
  EXPECT_GT(attempts, 100u);
  EXPECT_LT(refused, attempts) << "every forged request was refused at posting; none reached a NIC";
  soft_test::settle(c.ex());

  // Through the store API: outside the data area is kOutOfRange.
  for (uint32_t t : {0u, 3u, 99u}) {
    Transaction tx = stores[t]->begin();
    EXPECT_CODE(tx.write(so.data_size, pattern(8, 1)), StatusCode::kOutOfRange);
    EXPECT_CODE(tx.write(so.data_size - 4, pattern(8, 1)), StatusCode::kOutOfRange);
    EXPECT_CODE(tx.write(uint64_t(region), pattern(8, 1)), StatusCode::kOutOfRange);
    EXPECT_CODE(tx.write(UINT64_MAX - 3, pattern(8, 1)), StatusCode::kOutOfRange);
    EXPECT_CODE(tx.write(uint64_t(0) - lay.data_off, pattern(64, 1)), StatusCode::kOutOfRange);  // "-data_off"
    HL_EXPECT_OK(tx.commit());  // nothing buffered: an empty transaction
  }
  for (uint32_t t = 0; t < kTenants; ++t) {
    const auto now = regions_of(t);
    for (uint32_t h = 0; h < c.n(); ++h)
      ASSERT_TRUE(BytesEqual(now[h].data() + kSuperBytes, before[t][h].data() + kSuperBytes, region - kSuperBytes))
          << "tenant " << t << " on host " << h << " changed by forged access";
  }
  ASSERT_NO_FATAL_FAILURE(check_all("after the forged accesses"));
  stores.clear();
}

INSTANTIATE_TEST_SUITE_P(Modes, TxnTenants, ::testing::ValuesIn(kBothModes), param_name);

}  // namespace
}  // namespace hyperloop::txn_test
