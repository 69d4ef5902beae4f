// The group primitives on the device under test: OnDevice/PrimOnDevice.*, in
// kCpuForward (the one mode of a device without cross-channel), in real time
// (agent threads, the device's own progress), so on any rnic::Device:
//
//   HYPERLOOP_TEST_DEVICE=rxe0 build/tests/primitives_test --gtest_filter='OnDevice/*'
//
// (tests/device-suites.sh runs it.) Unset, the same tests run on soft NICs of
// a private fabric. Each test checks every replica's region byte for byte
// against a shadow model, read by the replica's CPU (peek) and by the client
// over RDMA READ (Group::read). The devices are checked to be the named one
// (device_test_util.h); nothing here uses soft-only machinery.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "prim_test_util.h"

namespace hyperloop::prim_test {
namespace {

using device_test::Where;

class PrimOnDevice : public ::testing::TestWithParam<Where> {
 protected:
  ClusterOptions options(uint32_t replicas, uint64_t seed) const {
    ClusterOptions o;
    o.replicas = replicas;
    o.mode = GetParam().mode;
    o.drive = Drive::kThreads;
    o.on_device = GetParam().on_device;
    o.seed = seed;
    o.op_timeout_ns = 5'000'000'000;  // real time; generous for sanitizer builds and TCG VMs
    return o;
  }
  static std::string trace(const ClusterOptions& o) {
    return "seed=" + std::to_string(o.seed) + " mode=" + mode_name(o.mode) +
           " replicas=" + std::to_string(o.replicas) +
           " device=" + (o.on_device && device_test::device_mode() ? device_test::test_device_name() : "soft fabric");
  }
};

// The devices are what HYPERLOOP_TEST_DEVICE names (the cluster checked each
// one when it opened it; checked again here, on every device of the chain).
TEST_P(PrimOnDevice, TheChainRunsOnTheNamedDevice) {
  const ClusterOptions o = options(3, 1);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  ASSERT_EQ(c.on_device(), GetParam().on_device && device_test::device_mode());
  if (c.on_device()) {
    const std::string name = device_test::test_device_name();
    HL_EXPECT_OK(device_test::check_device(c.client_device(), name));
    for (uint32_t i = 0; i < c.n(); ++i) HL_EXPECT_OK(device_test::check_device(c.device(i), name)) << "replica " << i;
    EXPECT_THROW(c.client(), std::logic_error) << "a soft-only accessor on the device under test";
  } else {
    EXPECT_EQ(c.client_device().caps().backend, "soft");
  }
  EXPECT_EQ(c.group().mode(), o.mode);
  EXPECT_EQ(c.group().replicas(), 3u);
}

// gWRITE of 1, 7, 8, 63, 64, 4096 and 65536 bytes and of the whole region,
// at the start, at odd offsets and flush with the end, on chains of 1 and 3.
TEST_P(PrimOnDevice, WritesOfEverySizeLandOnEveryReplica) {
  for (uint32_t n : {1u, 3u}) {
    ClusterOptions o = options(n, 11 + n);
    o.region_size = 256 << 10;
    o.staging_bytes = 256 << 10;
    SCOPED_TRACE(trace(o));
    Cluster c(o);
    Model m(c.n(), o.region_size);
    const size_t r = o.region_size;
    uint32_t seed = 1;
    for (size_t len : {r, size_t{1}, size_t{7}, size_t{8}, size_t{63}, size_t{64}, size_t{4096}, size_t{65536}}) {
      for (uint64_t off : {uint64_t{0}, uint64_t{13}, uint64_t(r - len)}) {
        if (off + len > r) continue;
        const auto bytes = pattern(len, seed++);
        Op op;
        ASSERT_TRUE(IsOk(c.group().write(op, off, bytes))) << "len=" << len << " off=" << off;
        m.write(off, bytes);
        ASSERT_TRUE(IsOk(c.group().wait(op))) << "len=" << len << " off=" << off;
      }
    }
    EXPECT_TRUE(c.regions_equal(m));
    EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
  }
}

// gCAS: matching and other compare values, execute masks (0 for replicas
// outside), replicas made to diverge, the region's first and last words.
TEST_P(PrimOnDevice, CasSwapsWhereItMatchesAndReturnsEveryReplicasOldValue) {
  const ClusterOptions o = options(3, 21);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  const uint64_t last = o.region_size - 8;
  struct Case {
    uint64_t off, compare, swap;
    uint32_t mask;
  } cases[] = {
      {0, 0, 0x1111, 0b111},      // all match
      {0, 0x1111, 0x2222, 0b101}, // ends only: the middle keeps 0x1111
      {0, 0x2222, 0x3333, 0b111}, // the middle differs: it keeps its word
      {0, 0x1111, 0x4444, 0b010}, // the middle alone
      {0, 0x9999, 0x5555, 0b111}, // nobody matches
      {last, 0, 0xAAAA, 0b111},   // the last word
      {last, 0xAAAA, 0xBBBB, 0b001},
  };
  for (const Case& k : cases) {
    Op op;
    ASSERT_TRUE(IsOk(c.group().cas(op, k.off, k.compare, k.swap, k.mask)));
    const auto want = m.cas(k.off, k.compare, k.swap, k.mask);
    ASSERT_TRUE(IsOk(c.group().wait(op)));
    EXPECT_TRUE(OldValuesAre(op, want, c.n())) << "cas off=" << k.off << " compare=" << k.compare;
  }
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

// gMEMCPY of every size inside the region, issued right after the gWRITE of
// its source, and gFLUSH of ranges anywhere (it changes nothing).
TEST_P(PrimOnDevice, MemcpyCopiesOnEveryReplicaAndFlushChangesNothing) {
  ClusterOptions o = options(3, 31);
  o.region_size = 256 << 10;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  uint32_t seed = 100;
  for (uint64_t len : {uint64_t{1}, uint64_t{8}, uint64_t{63}, uint64_t{4096}, uint64_t{65536}}) {
    const auto src = pattern(len, seed++);
    Op w, cp, fl;
    ASSERT_TRUE(IsOk(c.group().write(w, 0, src)));
    m.write(0, src);
    ASSERT_TRUE(IsOk(c.group().memcpy(cp, 0, 128 << 10, len))) << "len=" << len;
    m.memcpy(0, 128 << 10, len);
    ASSERT_TRUE(IsOk(c.group().flush(fl, 128 << 10, len)));
    for (Op* op : {&w, &cp, &fl}) ASSERT_TRUE(IsOk(c.group().wait(*op))) << "len=" << len;
  }
  Op fl;
  ASSERT_TRUE(IsOk(c.group().flush(fl, 0, o.region_size)));
  ASSERT_TRUE(IsOk(c.group().wait(fl)));
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

// Operations of all four kinds with seeded random parameters, up to 32 in
// flight: each completes in issue order with what the model says (gCAS old
// values), and every replica ends equal to the model.
TEST_P(PrimOnDevice, PipelinedOpsOfAllKindsMatchTheModel) {
  ClusterOptions o = options(3, 41);
  o.region_size = 128 << 10;
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  Model m(c.n(), o.region_size);
  Workload w(c.group(), m, o.seed);
  ASSERT_TRUE(IsOk(w.prepare()));
  constexpr int kOps = 600;
  constexpr size_t kWindow = 32;
  std::deque<Op> ops;
  std::deque<Workload::Expect> expect;
  uint64_t last_seq = 0;
  auto reap_front = [&] {
    ASSERT_TRUE(IsOk(c.group().wait(ops.front())));
    EXPECT_TRUE(w.completed_as_expected(ops.front(), expect.front()));
    EXPECT_GT(ops.front().sequence(), last_seq);
    last_seq = ops.front().sequence();
    ops.pop_front();
    expect.pop_front();
  };
  for (int k = 0; k < kOps; ++k) {
    if (ops.size() == kWindow) {
      ASSERT_NO_FATAL_FAILURE(reap_front());
    }
    const Kind kind = Kind(w.below(4));
    ops.emplace_back();
    expect.emplace_back();
    ASSERT_TRUE(IsOk(w.issue(ops.back(), kind, expect.back()))) << kind_name(kind) << " #" << k;
  }
  while (!ops.empty()) {
    ASSERT_NO_FATAL_FAILURE(reap_front());
  }
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

// Several client threads share one Group (prim_ops_test.cc's
// ClientThreadsSharingOneGroupEachSeeTheirOwnResults, on the device).
TEST_P(PrimOnDevice, ClientThreadsSharingOneGroupEachSeeTheirOwnResults) {
  const ClusterOptions o = options(3, 51);
  SCOPED_TRACE(trace(o));
  Cluster c(o);
  constexpr uint32_t kThreads = 4, kBatches = 8;
  Model m(c.n(), o.region_size);
  ASSERT_NO_FATAL_FAILURE(client_threads_workload(c, m, kThreads, kBatches));
  EXPECT_EQ(c.group().completed(), uint64_t(kThreads) * kBatches * 4);
  EXPECT_TRUE(c.regions_equal(m));
  EXPECT_TRUE(Cluster::reads_equal(c.group(), m));
}

INSTANTIATE_TEST_SUITE_P(OnDevice, PrimOnDevice, ::testing::ValuesIn(device_test::kOnDevice),
                         device_test::where_name<::testing::TestParamInfo<Where>>);
INSTANTIATE_TEST_SUITE_P(OnDeviceOffload, PrimOnDevice, ::testing::ValuesIn(device_test::kOnDeviceOffload),
                         device_test::where_name<::testing::TestParamInfo<Where>>);

}  // namespace
}  // namespace hyperloop::prim_test
