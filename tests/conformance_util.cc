// conformance_util.cc: the Harness (see conformance_util.h).
#include "conformance_util.h"

#include <cctype>
#include <cstdlib>
#include <string_view>
#include <thread>

#include "hyperloop/clock.h"

namespace hyperloop::conformance {
namespace {

constexpr uint64_t kSoftMaxSteps = 2'000'000;   // 200 ms of virtual time
constexpr uint64_t kSoftSettleSteps = 50'000;

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v, &end, 10);
  return (end != nullptr && *end == '\0') ? uint64_t(n) : fallback;
}

}  // namespace

std::vector<std::string> devices_under_test() {
  std::vector<std::string> out;
  const char* v = std::getenv("HYPERLOOP_CONFORMANCE_DEVICES");
  std::string_view s = v ? v : "";
  while (!s.empty()) {
    const size_t comma = s.find(',');
    std::string_view name = s.substr(0, comma);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.front()))) name.remove_prefix(1);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.remove_suffix(1);
    if (!name.empty()) out.emplace_back(name);
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
  if (out.empty()) out.emplace_back("soft");
  return out;
}

std::string param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = info.param;
  for (char& c : n)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return n;
}

Harness::Harness(std::string device, uint64_t seed)
    : device_(std::move(device)),
      timeout_ns_(env_u64("HYPERLOOP_CONFORMANCE_TIMEOUT_S", 30) * 1'000'000'000ull),
      settle_ns_(env_u64("HYPERLOOP_CONFORMANCE_SETTLE_MS", 200) * 1'000'000ull) {
  if (device_ == "soft") {
    fabric_ = std::make_unique<soft::Fabric>();
    ex_ = std::make_unique<soft::ManualExecutor>(seed);
  }
}

Harness::~Harness() = default;

std::unique_ptr<rnic::Device> Harness::open(const NodeOptions& o) {
  if (is_soft()) {
    auto nic = must(fabric_->create_nic(o.soft), "create_nic");
    ex_->add(*nic);
    return nic;
  }
  return must(rnic::open_device(device_), "open_device(" + device_ + ")");
}

bool Harness::run_until(const std::function<bool()>& pred) {
  if (is_soft()) return ex_->run_until(pred, kSoftMaxSteps);
  const uint64_t deadline = monotonic_ns() + timeout_ns_;
  for (uint64_t i = 0;; ++i) {
    if (pred()) return true;
    if (monotonic_ns() >= deadline) return pred();
    // Not a sleep: on a loaded machine the device's own threads get the CPU.
    if ((i & 1023) == 1023) std::this_thread::yield();
  }
}

void Harness::settle() {
  if (is_soft()) {
    (void)ex_->run_until_idle(kSoftSettleSteps);
    return;
  }
  const uint64_t end = monotonic_ns() + settle_ns_;
  for (uint64_t i = 0; monotonic_ns() < end; ++i)
    if ((i & 1023) == 1023) std::this_thread::yield();
}

std::optional<WorkCompletion> poll_one(CompletionQueue& cq, Harness& h) {
  return poll_one_driven(cq, [&](const std::function<bool()>& pred) { return h.run_until(pred); });
}

std::vector<WorkCompletion> poll_n(CompletionQueue& cq, Harness& h, size_t n) {
  std::vector<WorkCompletion> out;
  while (out.size() < n) {
    auto wc = poll_one(cq, h);
    if (!wc) break;
    out.push_back(*wc);
  }
  return out;
}

Status post_filler(QueuePair& qp, Node& peer, const rnic::DeviceCaps& caps, uint32_t flags, uint64_t wr_id) {
  if (caps.nop) return post_nop(qp, flags, wr_id);
  const Region dst = peer.scratch();
  return post_write(qp, std::span<const Sge>{}, dst.addr(), dst.rkey(), flags, wr_id);
}

::testing::AssertionResult Mlx5FieldsAre(const rnic::DeviceCaps& caps, const WorkCompletion& wc, uint8_t syndrome) {
  if (caps.raw_cq_ring) {
    if (wc.syndrome == syndrome) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "syndrome 0x" << std::hex << int(wc.syndrome) << ", want 0x"
                                         << int(syndrome) << " in " << describe(wc);
  }
  if (wc.syndrome == 0 && wc.wqe_counter == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "no mlx5 CQE on this device: syndrome and wqe_counter must be 0 in "
                                       << describe(wc);
}

::testing::AssertionResult ErrorOpcodeIs(const rnic::DeviceCaps& caps, const WorkCompletion& wc, WcOpcode op) {
  const WcOpcode want = caps.error_cqe_opcode ? op : WcOpcode::kUnknown;
  if (wc.opcode == want) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "opcode " << rnic::wc_opcode_name(wc.opcode) << ", want "
                                       << rnic::wc_opcode_name(want) << " (error_cqe_opcode "
                                       << caps.error_cqe_opcode << ") in " << describe(wc);
}

}  // namespace hyperloop::conformance
