// conformance_util.h: the device under test for the conformance suite.
//
// Every conformance test is a TEST_P over device names (env
// HYPERLOOP_CONFORMANCE_DEVICES, comma-separated, default "soft"). A Harness
// stands for one device in one test: it makes the devices of the test's
// Nodes and drives progress with run_until(pred).
//   "soft"    a private soft::Fabric and a seeded soft::ManualExecutor:
//             deterministic, virtual time; run_until steps the NICs.
//   any other each Node is its own rnic::open_device(name) (two contexts on
//             one verbs device reach each other by loopback); the device runs
//             by itself and run_until busy-polls pred until a wall-clock
//             deadline (HYPERLOOP_CONFORMANCE_TIMEOUT_S, default 30 s). It
//             never sleeps.
// What differs between devices is asked of DeviceCaps, and a test asserts
// the documented alternative where a device lacks something (docs/conformance.md).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"
#include "rnic_test_util.h"

namespace hyperloop::conformance {

using namespace ::hyperloop::rnic_test;  // NOLINT: the shared helpers are this namespace's too
namespace soft = ::hyperloop::soft;

// HYPERLOOP_CONFORMANCE_DEVICES split at commas; {"soft"} when unset or empty.
std::vector<std::string> devices_under_test();
// The device name as a gtest parameter name ([A-Za-z0-9_]).
std::string param_name(const ::testing::TestParamInfo<std::string>& info);

struct NodeOptions {
  uint32_t cqe_count = 1024;
  // The software RNIC's own knobs (its ACK timeout is a NIC option, not
  // QpAttr::ack_timeout); other devices ignore them.
  soft::NicOptions soft;
};

class Harness {
 public:
  Harness(std::string device, uint64_t seed);
  ~Harness();
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  const std::string& device_name() const { return device_; }
  bool is_soft() const { return ex_ != nullptr; }
  // A new device for one Node (on soft: a NIC on the private fabric,
  // attached to the executor).
  std::unique_ptr<rnic::Device> open(const NodeOptions& o);

  // Drives the device until pred() is true; returns pred()'s last value
  // (false: the soft step budget or the wall-clock deadline ran out).
  bool run_until(const std::function<bool()>& pred);
  // Lets whatever can still happen happen, for checks that nothing more does
  // (no further completion, nothing written): on soft, steps until every NIC
  // is idle (bounded: an RNR loop keeps one busy); elsewhere a quiet window
  // of HYPERLOOP_CONFORMANCE_SETTLE_MS (default 200) of busy-polling.
  void settle();

 private:
  std::string device_;
  std::unique_ptr<soft::Fabric> fabric_;  // soft only
  std::unique_ptr<soft::ManualExecutor> ex_;
  uint64_t timeout_ns_;
  uint64_t settle_ns_;
};

// A device with its PD, default CQ and everything a test makes on it.
class Node : public DeviceNode {
 public:
  explicit Node(Harness& h, NodeOptions o = {}) : DeviceNode(h.open(o), o.cqe_count) {}

  // A 64-byte region open to every remote access, made on first use: the
  // target of filler WRITEs (see post_filler).
  Region scratch() {
    if (!scratch_) scratch_ = alloc(64, kAll, 0);
    return *scratch_;
  }

 private:
  std::optional<Region> scratch_;
};

// ---- driving and polling -----------------------------------------------------------------
// Drives until one completion is polled from cq (nullopt: none in time).
std::optional<WorkCompletion> poll_one(CompletionQueue& cq, Harness& h);
// n completions in order (fewer if time ran out).
std::vector<WorkCompletion> poll_n(CompletionQueue& cq, Harness& h, size_t n);
inline void settle(Harness& h) { h.settle(); }

// ---- capabilities ----------------------------------------------------------------------------
// A work request that only has to complete, on the default PDs' QP from a
// node to `peer`: NOP where caps.nop, else a 0-byte RDMA WRITE to
// peer.scratch() (verbs has no NOP). filler_opcode() is its WcOpcode.
Status post_filler(QueuePair& qp, Node& peer, const rnic::DeviceCaps& caps, uint32_t flags = kSig,
                   uint64_t wr_id = 0);
inline WcOpcode filler_opcode(const rnic::DeviceCaps& caps) {
  return caps.nop ? WcOpcode::kNop : WcOpcode::kRdmaWrite;
}

// The mlx5 CQE fields of a completion: where caps.raw_cq_ring, the syndrome
// is `syndrome`; elsewhere (verbs) syndrome and wqe_counter are 0.
::testing::AssertionResult Mlx5FieldsAre(const rnic::DeviceCaps& caps, const WorkCompletion& wc,
                                         uint8_t syndrome);
// The opcode of an error completion: `op` where caps.error_cqe_opcode,
// else kUnknown (verbs defines ibv_wc::opcode only on success).
::testing::AssertionResult ErrorOpcodeIs(const rnic::DeviceCaps& caps, const WorkCompletion& wc, WcOpcode op);

// One error completion: its status, and where the device reports them, its
// syndrome and opcode (see Mlx5FieldsAre, ErrorOpcodeIs).
#define HL_EXPECT_WC_ERROR(caps, wc, st, synd, op)                              \
  do {                                                                          \
    ASSERT_TRUE(wc) << "no completion";                                         \
    EXPECT_EQ((wc)->status, (st)) << describe(*(wc));                           \
    EXPECT_TRUE(::hyperloop::conformance::Mlx5FieldsAre((caps), *(wc), (synd))); \
    EXPECT_TRUE(::hyperloop::conformance::ErrorOpcodeIs((caps), *(wc), (op)));   \
  } while (0)

// Posts `expr` (a Status) where the device has `cap`; where it lacks it, the
// post must be refused with kNotSupported (rnic.h), and the test ends there.
#define HL_POST_OR_NOT_SUPPORTED(cap, expr)                                          \
  do {                                                                               \
    const ::hyperloop::Status hl_posted_ = (expr);                                   \
    if (!(cap)) {                                                                    \
      EXPECT_EQ(hl_posted_.code(), ::hyperloop::StatusCode::kNotSupported) << #cap;  \
      return;                                                                        \
    }                                                                                \
    HL_ASSERT_OK(hl_posted_);                                                        \
  } while (0)

// ---- fixtures ------------------------------------------------------------------------------
inline constexpr uint64_t kSeed = 0x5eed;

// A harness, two Nodes and one connected RC QP pair (qa on a, qb on b) using
// each node's default CQ.
struct TwoNodes {
  TwoNodes(const std::string& device, uint64_t seed, NodeOptions ao = {}, NodeOptions bo = {})
      : h(device, seed), a(h, std::move(ao)), b(h, std::move(bo)) {
    const QpPair p = connect(a, b);
    qa = p.a;
    qb = p.b;
  }
  std::optional<WorkCompletion> poll_a() { return poll_one(a.cq(), h); }
  std::optional<WorkCompletion> poll_b() { return poll_one(b.cq(), h); }
  const rnic::DeviceCaps& caps() const { return a.caps(); }
  // A filler on qa (to b) or on any QP of a's default PD connected to b.
  Status filler(QueuePair& qp, uint32_t flags = kSig, uint64_t wr_id = 0) {
    return post_filler(qp, b, caps(), flags, wr_id);
  }

  Harness h;
  Node a;
  Node b;
  QueuePair* qa = nullptr;
  QueuePair* qb = nullptr;
};

// A test with a harness for its device and nothing else.
class DeviceTest : public ::testing::TestWithParam<std::string> {
 protected:
  DeviceTest() : h(GetParam(), kSeed) {}
  Harness h;
};

class TwoNodeTest : public ::testing::TestWithParam<std::string>, public TwoNodes {
 protected:
  TwoNodeTest() : TwoNodes(GetParam(), kSeed) {}
};

// Instantiates `suite` (a TEST_P fixture) for every device under test.
#define HL_CONFORMANCE_SUITE(suite)                                                            \
  INSTANTIATE_TEST_SUITE_P(Devices, suite,                                                     \
                           ::testing::ValuesIn(::hyperloop::conformance::devices_under_test()), \
                           ::hyperloop::conformance::param_name)

}  // namespace hyperloop::conformance
