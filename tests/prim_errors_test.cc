// Refusals and faults of the group primitives, in both forwarding modes.
//
// Refusals: out-of-range offsets and lengths, zero lengths, overflowing
// lengths, misaligned gCAS, bad execute masks, overlapping gMEMCPY, a wrong
// tenant or mismatched regions at creation. Each is refused with its code
// before anything is sent: no NIC sends a packet, no replica changes, and the
// group works afterwards. Tenants sharing hosts never see each other's data.
//
// Faults: a crashed replica NIC or a cut link fails pending operations with
// kUnavailable or kDeadlineExceeded within op_timeout (virtual time, bounded
// in steps), the group stays broken, and nothing hangs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "prim_test_util.h"

namespace hyperloop::prim_test {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kSeed = 0xe7707;

std::string trace(const ClusterOptions& o) {
  return "seed=" + std::to_string(o.seed) + " mode=" + mode_name(o.mode) + " replicas=" + std::to_string(o.replicas);
}

::testing::AssertionResult HasCode(const Status& s, StatusCode code) {
  if (s.code() == code && !s.message().empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << s.to_string() << ", want " << status_code_name(code)
                                       << " with a message";
}
template <typename T>
::testing::AssertionResult HasCode(const Result<T>& r, StatusCode code) {
  if (r.is_ok()) return ::testing::AssertionFailure() << "succeeded, want " << status_code_name(code);
  return HasCode(r.status(), code);
}

// ---- refusals ---------------------------------------------------------------------------------
class RefusalTest : public ::testing::TestWithParam<ForwardMode> {
 protected:
  RefusalTest() : o_(make_options(GetParam())), c_(o_), m_(c_.n(), o_.region_size) {
    // Some content to keep unchanged, and the chain known to work.
    const auto fill = pattern(o_.region_size, 3);
    Op w;
    must(g().write(w, 0, fill), "fill");
    m_.write(0, fill);
    must(g().wait(w), "fill wait");
    c_.turns(2000);
    packets_ = c_.packets_sent();
    completed_ = g().completed();
  }
  static ClusterOptions make_options(ForwardMode mode) {
    ClusterOptions o;
    o.mode = mode;
    o.replicas = 3;
    o.seed = kSeed + (mode == ForwardMode::kOffload ? 0 : 1);
    return o;
  }
  Group& g() { return c_.group(); }
  uint64_t r() const { return o_.region_size; }

  // What a refusal must leave behind: after letting the cluster run, no NIC
  // sent a packet, nothing is in flight or completed, no replica changed.
  ::testing::AssertionResult nothing_sent() {
    c_.turns(5000);
    if (c_.packets_sent() != packets_)
      return ::testing::AssertionFailure() << c_.packets_sent() - packets_ << " packets were sent";
    if (g().in_flight() != 0) return ::testing::AssertionFailure() << g().in_flight() << " ops in flight";
    if (g().completed() != completed_)
      return ::testing::AssertionFailure() << g().completed() - completed_ << " ops completed";
    return c_.regions_equal(m_);
  }
  // And the group still serves operations afterwards.
  ::testing::AssertionResult still_works() {
    Op w, cas;
    const auto bytes = pattern(100, 77);
    Status s = g().write(w, 40, bytes);
    if (s.is_ok()) s = g().cas(cas, 200, m_.word(0, 200), 12345, 0b111);
    if (s.is_ok()) s = g().wait(w);
    if (s.is_ok()) s = g().wait(cas);
    if (!s.is_ok()) return ::testing::AssertionFailure() << "after the refusal: " << s.to_string();
    m_.write(40, bytes);
    m_.cas(200, m_.word(0, 200), 12345, 0b111);
    return c_.regions_equal(m_);
  }

  ClusterOptions o_;
  Cluster c_;
  Model m_;
  uint64_t packets_ = 0;
  uint64_t completed_ = 0;
};

TEST_P(RefusalTest, WriteOutsideTheRegionIsRefusedWithOutOfRange) {
  SCOPED_TRACE(trace(o_));
  const auto two = pattern(2, 1), one = pattern(1, 1), all = pattern(r() + 1, 1);
  Op op;
  EXPECT_TRUE(HasCode(g().write(op, r() - 1, two), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().write(op, r(), one), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().write(op, r() + 4096, one), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().write(op, 0, all), StatusCode::kOutOfRange));
  // The refusal is the Op's outcome (Group::wait returns it at once).
  EXPECT_TRUE(op.done());
  EXPECT_TRUE(HasCode(op.status(), StatusCode::kOutOfRange));
  EXPECT_TRUE(nothing_sent());
  EXPECT_TRUE(still_works());
}

TEST_P(RefusalTest, CasMemcpyAndFlushOutsideTheRegionAreRefusedWithOutOfRange) {
  SCOPED_TRACE(trace(o_));
  Op op;
  EXPECT_TRUE(HasCode(g().cas(op, r(), 0, 1, 0b111), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().cas(op, r() + 8, 0, 1, 0b111), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().memcpy(op, r() - 8, 0, 9), StatusCode::kOutOfRange));   // source
  EXPECT_TRUE(HasCode(g().memcpy(op, 0, r() - 8, 9), StatusCode::kOutOfRange));   // destination
  EXPECT_TRUE(HasCode(g().memcpy(op, 0, r(), 1), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().flush(op, r() - 1, 2), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().flush(op, 0, r() + 1), StatusCode::kOutOfRange));
  EXPECT_TRUE(nothing_sent());
  EXPECT_TRUE(still_works());
}

TEST_P(RefusalTest, ZeroLengthOperationsAreRefusedWithInvalidArgument) {
  SCOPED_TRACE(trace(o_));
  Op op;
  EXPECT_TRUE(HasCode(g().write(op, 0, {}), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(g().memcpy(op, 0, 64, 0), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(g().flush(op, 0, 0), StatusCode::kInvalidArgument));
  EXPECT_TRUE(nothing_sent());
  EXPECT_TRUE(still_works());
}

// offset + length wraps around 2^64: must not pass as "inside the region".
TEST_P(RefusalTest, LengthsThatOverflowAreRefusedWithOutOfRange) {
  SCOPED_TRACE(trace(o_));
  const auto eight = pattern(8, 1);
  Op op;
  EXPECT_TRUE(HasCode(g().write(op, UINT64_MAX - 3, eight), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().write(op, UINT64_MAX, eight), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().cas(op, UINT64_MAX - 7, 0, 1, 0b111), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().memcpy(op, UINT64_MAX - 7, 0, 16), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().memcpy(op, 0, UINT64_MAX - 7, 16), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().memcpy(op, 0, 64, UINT64_MAX), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().flush(op, 8, UINT64_MAX - 7), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().flush(op, UINT64_MAX, 2), StatusCode::kOutOfRange));
  std::vector<std::byte> buf(16);
  EXPECT_TRUE(HasCode(g().read(0, UINT64_MAX - 7, buf), StatusCode::kOutOfRange));
  EXPECT_TRUE(nothing_sent());
  EXPECT_TRUE(still_works());
}

TEST_P(RefusalTest, MisalignedCasIsRefusedWithInvalidArgument) {
  SCOPED_TRACE(trace(o_));
  Op op;
  for (uint64_t off : {1, 2, 3, 4, 5, 6, 7, 12, 4097})
    EXPECT_TRUE(HasCode(g().cas(op, off, m_.word(0, off), 1, 0b111), StatusCode::kInvalidArgument)) << off;
  EXPECT_TRUE(nothing_sent());
  EXPECT_TRUE(still_works());
}

TEST_P(RefusalTest, CasMaskNamingNoReplicaOrOneOutsideTheChainIsRefusedWithInvalidArgument) {
  SCOPED_TRACE(trace(o_));
  Op op;
  for (uint32_t mask : {0u, 0b1000u, 0b1111u, 0x80000001u, ~0u})
    EXPECT_TRUE(HasCode(g().cas(op, 0, m_.word(0, 0), 1, mask), StatusCode::kInvalidArgument)) << mask;
  EXPECT_TRUE(nothing_sent());
  EXPECT_TRUE(still_works());
}

TEST_P(RefusalTest, OverlappingMemcpyIsRefusedWithInvalidArgument) {
  SCOPED_TRACE(trace(o_));
  Op op;
  EXPECT_TRUE(HasCode(g().memcpy(op, 100, 100, 8), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(g().memcpy(op, 100, 107, 8), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(g().memcpy(op, 107, 100, 8), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(g().memcpy(op, 0, 1, r() - 1), StatusCode::kInvalidArgument));
  EXPECT_TRUE(nothing_sent());
  EXPECT_TRUE(still_works());
}

TEST_P(RefusalTest, WriteLargerThanTheStagingBufferIsRefusedWithInvalidArgument) {
  ClusterOptions o = o_;
  o.staging_bytes = 4096;
  o.seed += 10;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  const auto big = pattern(4097, 1), fits = pattern(4096, 2);
  Op op;
  EXPECT_TRUE(HasCode(c.group().write(op, 0, big), StatusCode::kInvalidArgument));
  c.turns(5000);
  EXPECT_EQ(c.packets_sent(), 0u);
  Model m(c.n(), o.region_size);
  EXPECT_TRUE(c.regions_equal(m));
  ASSERT_TRUE(IsOk(c.group().write(op, 0, fits)));
  m.write(0, fits);
  ASSERT_TRUE(IsOk(c.group().wait(op)));
  EXPECT_TRUE(c.regions_equal(m));
}

TEST_P(RefusalTest, ReadOfAReplicaOutsideTheChainOrOutsideTheRegionIsRefusedWithOutOfRange) {
  SCOPED_TRACE(trace(o_));
  std::vector<std::byte> buf(16);
  EXPECT_TRUE(HasCode(g().read(3, 0, buf), StatusCode::kOutOfRange));
  EXPECT_TRUE(HasCode(g().read(0, r() - 8, buf), StatusCode::kOutOfRange));
  EXPECT_TRUE(nothing_sent());
  EXPECT_TRUE(still_works());
}

// An Op must stay untouched until done: starting another operation with it
// while it is in flight is refused, and the first operation still completes.
TEST_P(RefusalTest, AnOpStillInFlightIsRefusedForAnotherOperation) {
  SCOPED_TRACE(trace(o_));
  Op op;
  const auto bytes = pattern(64, 9);
  ASSERT_TRUE(IsOk(g().write(op, 128, bytes)));
  m_.write(128, bytes);
  ASSERT_FALSE(op.done());
  EXPECT_TRUE(HasCode(g().flush(op, 0, 8), StatusCode::kInvalidArgument));
  ASSERT_TRUE(IsOk(g().wait(op)));
  EXPECT_EQ(g().completed(), completed_ + 1);
  EXPECT_TRUE(c_.regions_equal(m_));
}

INSTANTIATE_TEST_SUITE_P(Modes, RefusalTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& info) { return mode_name(info.param); });

// ---- creating groups ------------------------------------------------------------------------------
class CreateTest : public ::testing::TestWithParam<ForwardMode> {
 protected:
  // Hosts without a group; the tests make their own.
  static ClusterOptions options(ForwardMode mode, uint32_t replicas = 3) {
    ClusterOptions o;
    o.mode = mode;
    o.replicas = replicas;
    o.seed = kSeed ^ 0xc4ea7e;
    o.make_group = false;
    return o;
  }
};

TEST_P(CreateTest, ATenantMissingOnOneReplicaIsRefusedWithNotFoundAndLeavesNothingBehind) {
  const ClusterOptions o = options(GetParam());
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  constexpr uint32_t kOther = 9;
  ASSERT_TRUE(IsOk(c.host(0).register_tenant(kOther, o.region_size)));
  ASSERT_TRUE(IsOk(c.host(1).register_tenant(kOther, o.region_size)));
  auto g = Group::create(c.client(), c.hosts(), c.group_options(kOther));
  ASSERT_TRUE(HasCode(g, StatusCode::kNotFound));
  EXPECT_THAT(g.status().message(), HasSubstr("tenant"));
  // Replicas 0 and 1 kept no member: once replica 2 hosts the tenant, the
  // group builds (a leftover would make this kAlreadyExists).
  ASSERT_TRUE(IsOk(c.host(2).register_tenant(kOther, o.region_size)));
  auto again = Group::create(c.client(), c.hosts(), c.group_options(kOther));
  ASSERT_TRUE(IsOk(again));
  Model m(3, o.region_size);
  const auto bytes = pattern(4096, 5);
  Op op;
  ASSERT_TRUE(IsOk((*again)->write(op, 100, bytes)));
  m.write(100, bytes);
  ASSERT_TRUE(IsOk((*again)->wait(op)));
  EXPECT_TRUE(c.regions_equal(m, kOther));
}

TEST_P(CreateTest, RegionSizesThatDifferAreRefusedWithInvalidArgument) {
  const ClusterOptions o = options(GetParam());
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  constexpr uint32_t kOther = 9;
  ASSERT_TRUE(IsOk(c.host(0).register_tenant(kOther, o.region_size)));
  ASSERT_TRUE(IsOk(c.host(1).register_tenant(kOther, o.region_size * 2)));
  ASSERT_TRUE(IsOk(c.host(2).register_tenant(kOther, o.region_size)));
  EXPECT_TRUE(HasCode(Group::create(c.client(), c.hosts(), c.group_options(kOther)), StatusCode::kInvalidArgument));
  // Asking for the size replica 1 has fails on the others.
  GroupOptions go = c.group_options(kOther);
  go.region_size = o.region_size * 2;
  EXPECT_TRUE(HasCode(Group::create(c.client(), c.hosts(), go), StatusCode::kInvalidArgument));
  // Nothing was left behind on replicas 0 and 2: a chain over them builds.
  ReplicaHost* const two[] = {&c.host(0), &c.host(2)};
  EXPECT_TRUE(IsOk(Group::create(c.client(), two, c.group_options(kOther))));
}

TEST_P(CreateTest, ASecondGroupForATenantIsRefusedWithAlreadyExistsUntilTheFirstIsGone) {
  const ClusterOptions o = options(GetParam());
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  auto first = Group::create(c.client(), c.hosts(), c.group_options());
  ASSERT_TRUE(IsOk(first));
  EXPECT_TRUE(HasCode(Group::create(c.client(), c.hosts(), c.group_options()), StatusCode::kAlreadyExists));
  ReplicaHost* const one[] = {&c.host(2)};  // overlapping in one replica is enough
  EXPECT_TRUE(HasCode(Group::create(c.client(), one, c.group_options()), StatusCode::kAlreadyExists));
  // The refused attempts did not disturb the first group.
  Model m(3, o.region_size);
  const auto bytes = pattern(300, 8);
  Op op;
  ASSERT_TRUE(IsOk((*first)->write(op, 0, bytes)));
  m.write(0, bytes);
  ASSERT_TRUE(IsOk((*first)->wait(op)));
  EXPECT_TRUE(c.regions_equal(m));
  first->reset();  // the first group goes
  auto second = Group::create(c.client(), c.hosts(), c.group_options());
  ASSERT_TRUE(IsOk(second));
  ASSERT_TRUE(IsOk((*second)->cas(op, 0, m.word(0, 0), 1, 0b111)));
  ASSERT_TRUE(IsOk((*second)->wait(op)));
}

TEST_P(CreateTest, ChainsOfNoReplicaOrMoreThanSevenAreRefusedWithInvalidArgument) {
  const ClusterOptions o = options(GetParam(), 8);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  EXPECT_TRUE(HasCode(Group::create(c.client(), {}, c.group_options()), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(Group::create(c.client(), c.hosts(), c.group_options()), StatusCode::kInvalidArgument));
  // Nothing was created on the eight hosts: seven of them make a chain.
  EXPECT_TRUE(IsOk(Group::create(c.client(), c.hosts().first(7), c.group_options())));
}

TEST_P(CreateTest, InvalidGroupOptionsAreRefusedWithInvalidArgument) {
  const ClusterOptions o = options(GetParam());
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  auto refused = [&](auto mutate, const char* what) {
    GroupOptions go = c.group_options();
    mutate(go);
    EXPECT_TRUE(HasCode(Group::create(c.client(), c.hosts(), go), StatusCode::kInvalidArgument)) << what;
  };
  refused([](GroupOptions& g) { g.slots = 0; }, "slots 0");
  refused([](GroupOptions& g) { g.slots = 48; }, "slots not a power of two");
  refused([](GroupOptions& g) { g.rearm_batch = 0; }, "rearm_batch 0");
  refused([](GroupOptions& g) { g.rearm_batch = g.slots + 1; }, "rearm_batch above slots");
  refused([](GroupOptions& g) { g.staging_bytes = 0; }, "no staging");
  refused([](GroupOptions& g) { g.region_size = 0; }, "region 0");
  EXPECT_TRUE(IsOk(Group::create(c.client(), c.hosts(), c.group_options())));
}

TEST(ReplicaHostTest, RegisteringATenantTwiceOrWithABadSizeIsRefused) {
  soft::Fabric fabric;
  soft::ManualExecutor ex(1);
  auto nic = must(fabric.create_nic(), "create_nic");
  ex.add(*nic);
  auto host = must(ReplicaHost::create(*nic, {.agent_thread = false}), "ReplicaHost::create");
  ASSERT_TRUE(IsOk(host->register_tenant(1, 4096)));
  EXPECT_TRUE(HasCode(host->register_tenant(1, 4096), StatusCode::kAlreadyExists));
  EXPECT_TRUE(HasCode(host->register_tenant(2, 0), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(host->register_tenant(3, 4095), StatusCode::kInvalidArgument));
  std::vector<std::byte> buf(8);
  EXPECT_FALSE(host->peek(2, 0, buf).is_ok());
  EXPECT_FALSE(host->peek(1, 4090, buf).is_ok());
  ASSERT_TRUE(IsOk(host->peek(1, 4088, buf)));
  EXPECT_TRUE(soft_test::AllBytesAre(buf.data(), buf.size(), 0));  // regions start zeroed
}

INSTANTIATE_TEST_SUITE_P(Modes, CreateTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& info) { return mode_name(info.param); });

// ---- impossible sizes: an error, never an exception ------------------------------------------
// Sizes no machine here can give are refused before anything is allocated
// (include/hyperloop/internal/memory_limits.h): they used to throw
// std::bad_alloc out of the public API (and under ASan to abort the process).
constexpr size_t kTiB = size_t{1} << 40;

TEST_P(CreateTest, ATebibyteOfStagingIsResourceExhaustedAndNothingThrows) {
  const ClusterOptions o = options(GetParam());
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  for (size_t staging : {kTiB, size_t{1} << 50, ~size_t{0} - 63}) {
    GroupOptions go = c.group_options();
    go.staging_bytes = staging;
    Result<std::unique_ptr<Group>> g = invalid_argument("not run");
    EXPECT_NO_THROW(g = Group::create(c.client(), c.hosts(), go)) << staging;
    EXPECT_TRUE(HasCode(g, StatusCode::kResourceExhausted)) << staging;
    EXPECT_THAT(g.status().message(), HasSubstr("staging_bytes"));
    const std::string endpoints[] = {"127.0.0.1:1"};
    EXPECT_NO_THROW(g = Group::connect(c.client(), endpoints, go)) << staging;
    EXPECT_TRUE(HasCode(g, StatusCode::kResourceExhausted)) << "connect, " << staging;
  }
  // Refused before any replica was touched: a group with sane options builds.
  EXPECT_TRUE(IsOk(Group::create(c.client(), c.hosts(), c.group_options())));
}

TEST(ReplicaHostTest, ImpossibleRegionSizesAreErrorsAndNothingThrows) {
  soft::Fabric fabric;
  auto nic = must(fabric.create_nic(), "create_nic");
  auto host = must(ReplicaHost::create(*nic, {.agent_thread = false}), "ReplicaHost::create");
  Status s;
  EXPECT_NO_THROW(s = host->register_tenant(1, kTiB));  // more than this machine's memory
  EXPECT_TRUE(HasCode(s, StatusCode::kResourceExhausted));
  EXPECT_THAT(s.message(), HasSubstr("memory"));
  for (size_t size : {size_t{1} << 48, ~size_t{0} - 7}) {  // over the documented limit (2^47)
    EXPECT_NO_THROW(s = host->register_tenant(2, size)) << size;
    EXPECT_TRUE(HasCode(s, StatusCode::kInvalidArgument)) << size;
  }
  // Nothing was registered by the refusals; a possible size works.
  EXPECT_TRUE(IsOk(host->register_tenant(1, 4096)));
  EXPECT_TRUE(IsOk(host->register_tenant(2, 4096)));
}

TEST(SoftNicLimitsTest, ImpossibleTableAndRegionSizesAreErrorsAndNothingThrows) {
  soft::Fabric fabric;
  Result<std::unique_ptr<soft::Nic>> nic = invalid_argument("not run");
  EXPECT_NO_THROW(nic = fabric.create_nic({.max_qp = UINT32_MAX}));
  EXPECT_TRUE(HasCode(nic, StatusCode::kInvalidArgument));
  EXPECT_NO_THROW(nic = fabric.create_nic({.max_qp = (1u << 24) + 1}));
  EXPECT_TRUE(HasCode(nic, StatusCode::kInvalidArgument));
  nic = fabric.create_nic();
  ASSERT_TRUE(IsOk(nic));
  auto pd = must((*nic)->alloc_pd(), "alloc_pd");
  std::vector<std::byte> buf(64);
  Result<std::unique_ptr<rnic::MemoryRegion>> mr = invalid_argument("not run");
  EXPECT_NO_THROW(mr = pd->register_memory(buf.data(), size_t{1} << 41, rnic::kAccessLocalWrite));
  EXPECT_TRUE(HasCode(mr, StatusCode::kInvalidArgument));
}

// ---- tenant isolation ---------------------------------------------------------------------------
class IsolationTest : public ::testing::TestWithParam<ForwardMode> {};

// Two tenants' chains over the same three hosts, the same offsets, pipelined
// operations of every kind interleaved between them: each tenant's regions
// hold exactly its own operations' effects.
TEST_P(IsolationTest, TwoTenantsOnTheSameHostsNeverChangeEachOthersRegions) {
  ClusterOptions o;
  o.mode = GetParam();
  o.seed = kSeed ^ 0x150;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  constexpr uint32_t kB = kTenant + 1;
  for (uint32_t i = 0; i < 3; ++i) ASSERT_TRUE(IsOk(c.host(i).register_tenant(kB, o.region_size)));
  auto gb = must(Group::create(c.client(), c.hosts(), c.group_options(kB)), "group B");
  Model ma(3, o.region_size), mb(3, o.region_size);
  Workload wa(c.group(), ma, o.seed), wb(*gb, mb, o.seed + 1);
  ASSERT_TRUE(IsOk(wa.prepare()));
  EXPECT_TRUE(c.regions_equal(mb, kB));  // B still all zero
  ASSERT_TRUE(IsOk(wb.prepare()));
  std::deque<Op> ops;
  std::vector<Workload::Expect> ea(60), eb(60);
  std::vector<Op*> a_ops, b_ops;
  for (int k = 0; k < 60; ++k) {
    a_ops.push_back(&ops.emplace_back());
    ASSERT_TRUE(IsOk(wa.issue(*a_ops.back(), Kind(k % 4), ea[k])));
    b_ops.push_back(&ops.emplace_back());
    ASSERT_TRUE(IsOk(wb.issue(*b_ops.back(), Kind((k + 1) % 4), eb[k])));
  }
  for (int k = 0; k < 60; ++k) {
    ASSERT_TRUE(IsOk(c.group().wait(*a_ops[k])));
    ASSERT_TRUE(IsOk(gb->wait(*b_ops[k])));
    EXPECT_TRUE(wa.completed_as_expected(*a_ops[k], ea[k]));
    EXPECT_TRUE(wb.completed_as_expected(*b_ops[k], eb[k]));
  }
  EXPECT_TRUE(c.regions_equal(ma, kTenant));
  EXPECT_TRUE(c.regions_equal(mb, kB));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), ma));
  EXPECT_TRUE(Cluster::reads_equal(*gb, mb));
  // A whole-region write of A leaves B as it was.
  const auto all = pattern(o.region_size, 0xA);
  Op op;
  ASSERT_TRUE(IsOk(c.group().write(op, 0, all)));
  ma.write(0, all);
  ASSERT_TRUE(IsOk(c.group().wait(op)));
  EXPECT_TRUE(c.regions_equal(ma, kTenant));
  EXPECT_TRUE(c.regions_equal(mb, kB));
  gb.reset();
}

INSTANTIATE_TEST_SUITE_P(Modes, IsolationTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& info) { return mode_name(info.param); });

// ---- faults -----------------------------------------------------------------------------------------
enum class Fault { kCrashHead, kCrashMiddle, kCrashTail, kCutClientToHead, kCutHeadToMiddle, kCutTailToClient };
const char* fault_name(Fault f) {
  switch (f) {
    case Fault::kCrashHead: return "CrashHead";
    case Fault::kCrashMiddle: return "CrashMiddle";
    case Fault::kCrashTail: return "CrashTail";
    case Fault::kCutClientToHead: return "CutClientToHead";
    case Fault::kCutHeadToMiddle: return "CutHeadToMiddle";
    case Fault::kCutTailToClient: return "CutTailToClient";
  }
  return "?";
}

constexpr uint64_t kAckTimeoutNs = 200'000;   // 2,000 steps of 100 ns
constexpr uint64_t kOpTimeoutNs = 5'000'000;  // 50,000 steps
// A failure must be reported by the time the oldest pending operation's
// op_timeout ran out, plus a little for the waiting loop's last turns.
constexpr uint64_t kDetectSlackNs = 100'000;

class FaultTest : public ::testing::TestWithParam<std::tuple<ForwardMode, Fault>> {
 protected:
  ForwardMode mode() const { return std::get<0>(GetParam()); }
  Fault fault() const { return std::get<1>(GetParam()); }
  ClusterOptions options() const {
    ClusterOptions o;
    o.mode = mode();
    o.replicas = 3;
    o.seed = kSeed * 31 + uint64_t(fault()) * 2 + (mode() == ForwardMode::kOffload ? 0 : 1);
    o.nic.ack_timeout_ns = kAckTimeoutNs;
    o.op_timeout_ns = kOpTimeoutNs;
    return o;
  }
  static void inject(Cluster& c, Fault f) {
    switch (f) {
      case Fault::kCrashHead: c.nic(0).crash(); break;
      case Fault::kCrashMiddle: c.nic(1).crash(); break;
      case Fault::kCrashTail: c.nic(2).crash(); break;
      case Fault::kCutClientToHead: c.fabric().set_link(c.client(), c.nic(0), false); break;
      case Fault::kCutHeadToMiddle: c.fabric().set_link(c.nic(0), c.nic(1), false); break;
      case Fault::kCutTailToClient: c.fabric().set_link(c.nic(2), c.client(), false); break;
    }
  }
};

::testing::AssertionResult IsChainFailure(const Status& s) {
  if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << s.to_string() << ", want Unavailable or DeadlineExceeded";
}

// Operations in flight when the fault hits fail within op_timeout; none hangs.
TEST_P(FaultTest, PendingOperationsFailWithinOpTimeout) {
  const ClusterOptions o = options();
  SCOPED_TRACE(trace(o) + " fault=" + fault_name(fault()));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  Workload w(c.group(), m, o.seed);
  ASSERT_TRUE(IsOk(w.prepare()));  // the chain works before the fault
  std::deque<Op> ops;
  Workload::Expect e;
  for (int k = 0; k < 24; ++k) ASSERT_TRUE(IsOk(w.issue(ops.emplace_back(), Kind(k % 4), e)));
  c.turns(60);  // some messages are on their way down the chain, some not sent yet
  inject(c, fault());
  const uint64_t t0 = c.now_ns();
  int failed = 0;
  for (Op& op : ops) {
    // Bounded even if the library hung: the wait gives up long after op_timeout.
    const Status s = c.group().wait(op, 20 * kOpTimeoutNs);
    ASSERT_TRUE(op.done()) << "op #" << op.sequence() << " still pending: " << s.to_string();
    if (!s.is_ok()) {
      ++failed;
      EXPECT_TRUE(IsChainFailure(s)) << "op #" << op.sequence();
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_LE(c.now_ns() - t0, kOpTimeoutNs + kDetectSlackNs) << "failures reported after " << c.now_ns() - t0 << " ns";
  EXPECT_TRUE(c.group().broken());
  EXPECT_EQ(c.group().in_flight(), 0u);
}

// Once broken, the group refuses new operations at once (documented as
// kUnavailable), however the chain broke; nothing blocks.
TEST_P(FaultTest, OperationsAfterTheBreakAreRefusedWithUnavailable) {
  const ClusterOptions o = options();
  SCOPED_TRACE(trace(o) + " fault=" + fault_name(fault()));
  Cluster c(o);
  inject(c, fault());
  Op op;
  const auto bytes = pattern(64, 1);
  ASSERT_TRUE(IsOk(c.group().write(op, 0, bytes)));  // accepted: the client cannot know yet
  EXPECT_TRUE(IsChainFailure(c.group().wait(op, 20 * kOpTimeoutNs)));
  ASSERT_TRUE(c.group().broken());
  const uint64_t t0 = c.now_ns();
  Op next;
  EXPECT_TRUE(HasCode(c.group().write(next, 0, bytes), StatusCode::kUnavailable));
  EXPECT_TRUE(HasCode(c.group().cas(next, 0, 0, 1, 0b111), StatusCode::kUnavailable));
  EXPECT_TRUE(HasCode(c.group().memcpy(next, 0, 64, 8), StatusCode::kUnavailable));
  EXPECT_TRUE(HasCode(c.group().flush(next, 0, 8), StatusCode::kUnavailable));
  EXPECT_EQ(c.now_ns(), t0) << "a refusal waited";
  EXPECT_TRUE(next.done());
  EXPECT_TRUE(HasCode(next.status(), StatusCode::kUnavailable));
}

// More operations than armed slots while the chain is dead: issuing blocks
// for credit at most op_timeout per call, then fails; nothing hangs.
TEST_P(FaultTest, IssuingBeyondTheArmedSlotsAfterAFaultFailsWithinOpTimeout) {
  ClusterOptions o = options();
  o.slots = 8;
  o.rearm_batch = 4;
  SCOPED_TRACE(trace(o) + " fault=" + fault_name(fault()));
  Cluster c(o);
  inject(c, fault());
  std::deque<Op> ops;
  const auto bytes = pattern(16, 1);
  Status s;
  int accepted = 0;
  const uint64_t t0 = c.now_ns();
  for (int k = 0; k < 20 && s.is_ok(); ++k) {
    s = c.group().write(ops.emplace_back(), 16 * k, bytes);
    if (s.is_ok()) ++accepted;
  }
  EXPECT_TRUE(IsChainFailure(s));
  EXPECT_LE(accepted, 8);
  EXPECT_LE(c.now_ns() - t0, kOpTimeoutNs + kDetectSlackNs);
  for (int k = 0; k < accepted; ++k) EXPECT_TRUE(IsChainFailure(c.group().wait(ops[k], 20 * kOpTimeoutNs)));
}

INSTANTIATE_TEST_SUITE_P(
    Faults, FaultTest,
    ::testing::Combine(::testing::ValuesIn(kBothModes),
                       ::testing::Values(Fault::kCrashHead, Fault::kCrashMiddle, Fault::kCrashTail,
                                         Fault::kCutClientToHead, Fault::kCutHeadToMiddle, Fault::kCutTailToClient)),
    [](const auto& info) { return mode_name(std::get<0>(info.param)) + "_" + fault_name(std::get<1>(info.param)); });

// The same in real time, with the executor and agents on threads: a crashed
// middle replica fails pending operations within op_timeout (plus scheduling
// slack on a loaded machine), the waiting client never hangs.
class RealTimeFaultTest : public ::testing::TestWithParam<ForwardMode> {};

TEST_P(RealTimeFaultTest, CrashedReplicaNicFailsPendingOperationsWithinOpTimeout) {
  ClusterOptions o;
  o.mode = GetParam();
  o.drive = Drive::kThreads;
  o.nic.ack_timeout_ns = 2'000'000;
  o.op_timeout_ns = 300'000'000;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Op first;
  const auto bytes = pattern(256, 1);
  ASSERT_TRUE(IsOk(c.group().write(first, 0, bytes)));
  ASSERT_TRUE(IsOk(c.group().wait(first)));
  c.nic(1).crash();
  const uint64_t t0 = monotonic_ns();
  std::deque<Op> ops;
  for (int k = 0; k < 8; ++k) ASSERT_TRUE(IsOk(c.group().write(ops.emplace_back(), 256 * k, bytes)));
  for (Op& op : ops) EXPECT_TRUE(IsChainFailure(c.group().wait(op, 30'000'000'000)));
  const uint64_t elapsed = monotonic_ns() - t0;
  EXPECT_LE(elapsed, o.op_timeout_ns + 5'000'000'000) << elapsed << " ns";
  EXPECT_TRUE(c.group().broken());
}

INSTANTIATE_TEST_SUITE_P(Modes, RealTimeFaultTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& info) { return mode_name(info.param); });


// ---- a READ that times out breaks the group ---------------------------------------------------
// Group::read of a replica behind a cut link gives up after op_timeout while
// its READ is still posted (the transport keeps retrying). Once the link
// heals that READ completes late; had the group stayed usable, the next
// read would have taken that completion, and stale bytes, for its own.
class ReadTimeoutTest : public ::testing::TestWithParam<ForwardMode> {};

TEST_P(ReadTimeoutTest, AnUnansweredReadBreaksTheGroupSoALateCompletionIsNeverTakenForAnother) {
  ClusterOptions o;
  o.mode = GetParam();
  o.seed = kSeed ^ 0x7ead;
  o.nic.ack_timeout_ns = 50'000'000;  // the transport retries long after op_timeout
  o.op_timeout_ns = 1'000'000;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  const auto a = pattern(64, 0xA);
  Op op;
  ASSERT_TRUE(IsOk(c.group().write(op, 0, a)));
  ASSERT_TRUE(IsOk(c.group().wait(op)));
  std::vector<std::byte> got(64);
  c.fabric().set_link(c.client(), c.nic(2), false);
  const Status s = c.group().read(2, 0, got);
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.to_string();
  EXPECT_TRUE(c.group().broken());
  c.fabric().set_link(c.client(), c.nic(2), true);
  c.turns(200'000);  // the late READ completes
  const Status again = c.group().read(1, 0, got);
  EXPECT_EQ(again.code(), StatusCode::kUnavailable) << again.to_string();
  Op refused;
  EXPECT_EQ(c.group().write(refused, 0, a).code(), StatusCode::kUnavailable);
}

// A READ that waits for a replica that does not answer holds the group's
// direct lines, not its data path: while it waits, another thread issues a
// gWRITE at once. (Deterministic: the reader's progress hook holds the
// reader in its wait until the writer's issue returned, bounded; were the
// two serialized on one lock, the writer could not get in until the READ
// timed out and broke the group, and its issue would be refused.)
TEST_P(ReadTimeoutTest, AReadWaitingForASilentReplicaDoesNotHoldUpIssuing) {
  ClusterOptions o;
  o.mode = GetParam();
  o.seed = kSeed ^ 0x7eae;
  o.nic.ack_timeout_ns = 50'000'000;
  o.op_timeout_ns = 1'000'000;
  o.make_group = false;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  std::mutex turn_mu;
  std::atomic<bool> reader_waiting{false}, issued{false};
  static thread_local bool is_reader = false;
  GroupOptions g = c.group_options();
  g.progress = [&] {
    if (is_reader && !reader_waiting.load()) {  // the reader's first turn in its wait: held once
      reader_waiting = true;
      for (uint64_t k = 0; k < 5'000'000 && !issued.load(); ++k) std::this_thread::yield();
    }
    std::lock_guard<std::mutex> l(turn_mu);
    c.turn();
  };
  auto group = must(Group::create(c.client_device(), c.hosts(), g), "Group::create");
  c.fabric().set_link(c.client(), c.nic(2), false);
  Status read_status;
  std::thread reader([&] {
    is_reader = true;
    std::vector<std::byte> got(64);
    read_status = group->read(2, 0, got);
  });
  for (uint64_t k = 0; k < 100'000'000 && !reader_waiting.load(); ++k) std::this_thread::yield();
  ASSERT_TRUE(reader_waiting.load()) << "the reader never waited";
  Op op;
  const Status w = group->write(op, 0, pattern(64, 0xB));
  issued = true;
  reader.join();
  EXPECT_TRUE(IsOk(w)) << "the gWRITE's issue waited for the READ";
  EXPECT_EQ(read_status.code(), StatusCode::kDeadlineExceeded) << read_status.to_string();
  EXPECT_TRUE(group->broken());
  EXPECT_TRUE(op.done() || IsChainFailure(group->wait(op)));
  group.reset();
}

INSTANTIATE_TEST_SUITE_P(Modes, ReadTimeoutTest, ::testing::ValuesIn(kBothModes),
                         [](const auto& i) { return mode_name(i.param); });

}  // namespace
}  // namespace hyperloop::prim_test
