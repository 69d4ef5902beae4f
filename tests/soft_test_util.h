// soft_test_util.h: fixtures for the software RNIC tests.
//
// The device-independent helpers (printers, Status assertions, byte
// patterns, guarded buffers, DeviceNode, posting) are rnic_test_util.h's. Here:
// a Node is one soft NIC on a Fabric, attached to an Executor, as a
// DeviceNode; poll_one() steps a ManualExecutor until one completion is
// polled: tests never sleep.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"
#include "rnic_test_util.h"

namespace hyperloop::soft_test {

using namespace ::hyperloop::rnic_test;  // NOLINT: the shared helpers are this namespace's too
namespace soft = ::hyperloop::soft;

inline constexpr uint64_t kDefaultMaxSteps = 2'000'000;

// ---- a NIC with its objects ------------------------------------------------------------
struct NodeOptions {
  soft::NicOptions nic;
  uint32_t cqe_count = 1024;
};

class Node : public DeviceNode {
 public:
  Node(soft::Fabric& fabric, soft::Executor& ex, NodeOptions o = {})
      : DeviceNode(attached_nic(fabric, ex, o.nic), o.cqe_count) {}

  soft::Nic& nic() const { return static_cast<soft::Nic&>(device()); }
  soft::NicStats stats() const { return nic().stats(); }

 private:
  static std::unique_ptr<rn::Device> attached_nic(soft::Fabric& fabric, soft::Executor& ex,
                                                  const soft::NicOptions& o) {
    auto nic = must(fabric.create_nic(o), "create_nic");
    ex.add(*nic);
    return nic;
  }
};

// ---- driving and polling --------------------------------------------------------------------
// Steps until one completion is polled from cq, or max_steps ran out.
inline std::optional<WorkCompletion> poll_one(CompletionQueue& cq, soft::ManualExecutor& ex,
                                              uint64_t max_steps = kDefaultMaxSteps) {
  return poll_one_driven(cq, [&](const std::function<bool()>& pred) { return ex.run_until(pred, max_steps); });
}
// n completions in order (fewer if steps ran out).
inline std::vector<WorkCompletion> poll_n(CompletionQueue& cq, soft::ManualExecutor& ex, size_t n,
                                          uint64_t max_steps = kDefaultMaxSteps) {
  std::vector<WorkCompletion> out;
  while (out.size() < n) {
    auto wc = poll_one(cq, ex, max_steps);
    if (!wc) break;
    out.push_back(*wc);
  }
  return out;
}
// Lets everything that can happen happen: steps until idle, bounded (a blocked
// WAIT, an unenabled managed queue or an RNR loop may keep a NIC busy).
inline void settle(soft::ManualExecutor& ex, uint64_t max_steps = 50'000) { (void)ex.run_until_idle(max_steps); }
inline void run_steps(soft::ManualExecutor& ex, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) ex.step();
}

// ---- fixtures ------------------------------------------------------------------------------

// Two NICs on one fabric, a ManualExecutor with `seed`, and one connected RC
// QP pair (qa on a, qb on b) using each node's default CQ.
struct TwoNodes {
  explicit TwoNodes(uint64_t seed, NodeOptions ao = {}, NodeOptions bo = {})
      : ex(seed), a(fabric, ex, std::move(ao)), b(fabric, ex, std::move(bo)) {
    const QpPair p = connect(a, b);
    qa = p.a;
    qb = p.b;
  }
  std::optional<WorkCompletion> poll_a() { return poll_one(a.cq(), ex); }
  std::optional<WorkCompletion> poll_b() { return poll_one(b.cq(), ex); }

  soft::Fabric fabric;
  soft::ManualExecutor ex;
  Node a;
  Node b;
  QueuePair* qa = nullptr;
  QueuePair* qb = nullptr;
};

class TwoNodeTest : public ::testing::Test, public TwoNodes {
 protected:
  static constexpr uint64_t kSeed = 0x5eed;
  TwoNodeTest() : TwoNodes(kSeed) {}
};

}  // namespace hyperloop::soft_test
