// hyperloop-probe: the first command to run on a machine with an RDMA NIC
// (docs/probe.md). It lists the devices, prints what each can do
// (rnic::DeviceCaps and, for ConnectX through rnic/mlx5, QUERY_HCA_CAP), and
// runs loopback self-tests of what hyperloop's offload mode is built from,
// one line per step:
//   PASS <step> <detail>
//   FAIL <step> <WcStatus name> syndrome 0x.. vendor_syndrome 0x.. <detail>
//   FAIL <step> <timeout|mismatch|not-held|error> <detail>
//   n/a  <step> <reason>      (the device's caps say it cannot do this)
// Steps: rc-write, atomic-cas, wait, send-enable, recv-patch, chain-offload.
// Every step opens its own contexts on the one device (two QPs of two
// contexts reach each other by loopback, as the conformance suite does on a
// real device) and is bounded by --timeout-ms: nothing waits without a limit.
//
//   hyperloop-probe                   every RDMA device of the machine ("soft"
//                                     excluded); exits 2 after saying "no mlx5
//                                     device found" when there is no ConnectX
//   hyperloop-probe --device NAME     that device only (any open_device name,
//                                     "soft" included)
//
// Exit status: 0 every step PASS or n/a; 1 any FAIL; 2 nothing to probe (no
// mlx5 device without --device, or a device that does not open); 64 usage
// (as sysexits' EX_USAGE; the usage goes to stderr).
//
// A hidden --inject-fault=STEP makes that step fail through the device (a
// request the device must reject), so that FAIL and its status can be seen.
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "hyperloop/clock.h"
#include "hyperloop/primitives.h"
#include "hyperloop/rnic.h"
#include "hyperloop/status.h"
#ifdef HYPERLOOP_HAVE_MLX5
#include "hyperloop/mlx5_rnic.h"
#endif

using namespace hyperloop;

namespace {

using rnic::CompletionQueue;
using rnic::MemoryRegion;
using rnic::QpAttr;
using rnic::QueuePair;
using rnic::Sge;
using rnic::WcOpcode;
using rnic::WcStatus;
using rnic::WorkCompletion;

constexpr int kExitOk = 0;
constexpr int kExitFail = 1;
constexpr int kExitNothing = 2;
constexpr int kExitUsage = 64;  // sysexits.h EX_USAGE

constexpr uint32_t kSig = rnic::kSendSignaled;
constexpr uint32_t kLocalWrite = rnic::kAccessLocalWrite;
constexpr uint32_t kAll = rnic::kAccessAll;

constexpr const char* kUsage =
    "usage: hyperloop-probe [--device NAME] [--timeout-ms N]\n"
    "  (no flags)          list this machine's RDMA devices, print their capabilities,\n"
    "                      run the self-tests on each; exit 2 if none is an mlx5 device\n"
    "  -d, --device NAME   only this device (any name open_device accepts: soft, rxe0,\n"
    "                      mlx5_0, ...)\n"
    "      --timeout-ms N  the bound on each step, 1..600000 (default 2000)\n"
    "  -h, --help          this text\n"
    "Steps: rc-write atomic-cas wait send-enable recv-patch chain-offload.\n"
    "Exit status: 0 every step PASS or n/a, 1 any FAIL, 2 nothing to probe (no mlx5\n"
    "device, or the device does not open), 64 bad flags.\n";

// ---- steps ---------------------------------------------------------------------------------
enum class StepId { kRcWrite, kAtomicCas, kWait, kSendEnable, kRecvPatch, kChainOffload };
struct StepInfo {
  StepId id;
  const char* name;
  const char* fault;  // what --inject-fault does (null: nothing to inject)
};
constexpr StepInfo kSteps[] = {
    {StepId::kRcWrite, "rc-write", "the WRITE carries a wrong rkey"},
    {StepId::kAtomicCas, "atomic-cas", "the target is registered without remote-atomic access"},
    {StepId::kWait, "wait", "the WRITE the WAIT holds carries a wrong rkey"},
    {StepId::kSendEnable, "send-enable", "the first WRITE the SEND_EN releases carries a wrong rkey"},
    {StepId::kRecvPatch, "recv-patch", "the patching message carries a wrong rkey"},
    {StepId::kChainOffload, "chain-offload", nullptr},
};

struct Options {
  std::string device;
  bool device_given = false;
  uint64_t timeout_ms = 2000;
  std::optional<StepId> inject;
  bool help = false;
};

// What the probe knows of a step while running it.
struct Env {
  std::string device;
  uint64_t timeout_ns = 0;
  uint64_t settle_ns = 0;  // how long "nothing happens" is watched for
  bool inject = false;
  const char* fault = nullptr;
};

// ---- outcomes ----------------------------------------------------------------------------------
struct Outcome {
  enum class Kind { kPass, kFail, kNa };
  Kind kind = Kind::kFail;
  std::string detail;
  std::optional<WorkCompletion> wc;  // FAIL by an error completion
  std::string reason;                // FAIL otherwise: timeout, mismatch, not-held, error
};

Outcome pass(std::string d) { return {Outcome::Kind::kPass, std::move(d), std::nullopt, {}}; }
Outcome na(std::string d) { return {Outcome::Kind::kNa, std::move(d), std::nullopt, {}}; }
Outcome fail(std::string reason, std::string d) {
  return {Outcome::Kind::kFail, std::move(d), std::nullopt, std::move(reason)};
}
Outcome fail_wc(const WorkCompletion& wc, std::string d) { return {Outcome::Kind::kFail, std::move(d), wc, {}}; }
// A call that returned an error (a deadline that ran out is a timeout).
Outcome refused(const std::string& what, const Status& s) {
  return fail(s.code() == StatusCode::kDeadlineExceeded ? "timeout" : "error", what + ": " + s.to_string());
}

// Binds the value of a Result or returns the step's FAIL (refused).
#define PROBE_ASSIGN(lhs, expr, what) PROBE_ASSIGN_IMPL_(HL_CONCAT_(probe_r_, __LINE__), lhs, expr, what)
#define PROBE_ASSIGN_IMPL_(tmp, lhs, expr, what) \
  auto tmp = (expr);                             \
  if (!tmp.is_ok()) return refused((what), tmp.status()); \
  lhs = std::move(tmp).value()
#define PROBE_CHECK(expr, what)                                    \
  do {                                                             \
    const ::hyperloop::Status probe_s_ = (expr);                   \
    if (!probe_s_.is_ok()) return refused((what), probe_s_);       \
  } while (0)
#define PROBE_RETURN_IF(opt)   \
  do {                         \
    if (auto probe_o_ = (opt)) \
      return *probe_o_;        \
  } while (0)

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}
std::string micros(uint64_t ns) { return std::to_string((ns + 500) / 1000) + " us"; }
std::string millis(uint64_t ns) { return std::to_string((ns + 500'000) / 1'000'000) + " ms"; }
std::string duration(uint64_t ns) { return ns < 10'000'000 ? micros(ns) : millis(ns); }


// ---- bounded waiting -------------------------------------------------------------------------
class Deadline {
 public:
  explicit Deadline(uint64_t ns) : end_(monotonic_ns() + ns), ns_(ns) {}
  uint64_t left() const {
    const uint64_t now = monotonic_ns();
    return now >= end_ ? 0 : end_ - now;
  }
  uint64_t total() const { return ns_; }

 private:
  uint64_t end_;
  uint64_t ns_;
};

// One completion from cq, busy-polled until the deadline (never a sleep; the
// core is yielded now and then so that a software device's thread runs).
Result<WorkCompletion> next_wc(CompletionQueue& cq, const Deadline& dl, const std::string& what) {
  WorkCompletion wc{};
  for (uint64_t i = 0;; ++i) {
    auto r = cq.poll(std::span<WorkCompletion>(&wc, 1));
    if (!r.is_ok()) return Status(r.status().code(), "polling for " + what + ": " + r.status().message());
    if (*r == 1) return wc;
    if ((i & 255) == 255) {
      if (dl.left() == 0)
        return Status(StatusCode::kDeadlineExceeded,
                      "no completion of " + what + " within " + millis(dl.total()) + " (--timeout-ms)");
      std::this_thread::yield();
    }
  }
}

// Watches cq for `ns` (at most what is left of the deadline): a completion
// that shows up meanwhile, or nullopt when it stayed quiet.
Result<std::optional<WorkCompletion>> quiet_window(CompletionQueue& cq, uint64_t ns, const Deadline& dl) {
  const uint64_t end = monotonic_ns() + std::min(ns, dl.left());
  WorkCompletion wc{};
  for (uint64_t i = 0;; ++i) {
    auto r = cq.poll(std::span<WorkCompletion>(&wc, 1));
    if (!r.is_ok()) return r.status();
    if (*r == 1) return std::optional<WorkCompletion>(wc);
    if ((i & 255) == 255) {
      if (monotonic_ns() >= end) return std::optional<WorkCompletion>();
      std::this_thread::yield();
    }
  }
}

// nullopt when wc is the successful completion of `op` with `wr_id`; else the FAIL.
std::optional<Outcome> not_success(const WorkCompletion& wc, WcOpcode op, uint64_t wr_id, const std::string& what) {
  if (wc.status != WcStatus::kSuccess) return fail_wc(wc, what + " completed with an error");
  if (wc.opcode != op || wc.wr_id != wr_id)
    return fail("mismatch", what + ": a completion of " + std::string(rnic::wc_opcode_name(wc.opcode)) + " wr_id " +
                                std::to_string(wc.wr_id) + ", expected " + std::string(rnic::wc_opcode_name(op)) + " wr_id " +
                                std::to_string(wr_id));
  return std::nullopt;
}

// ---- buffers and a device context ----------------------------------------------------------
void fill_pattern(std::byte* p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; ++i) p[i] = std::byte(uint8_t(seed * 131u + i * 31u + (i >> 8) * 7u));
}
uint64_t load_u64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
void store_u64(std::byte* p, uint64_t v) { std::memcpy(p, &v, 8); }

// A registered buffer with guard bytes on both sides that nothing may write.
struct Buf {
  static constexpr size_t kGuard = 64;
  std::byte* base = nullptr;  // guard | data | guard
  size_t size = 0;
  MemoryRegion* mr = nullptr;

  std::byte* data() const { return base + kGuard; }
  uint64_t addr(size_t off = 0) const { return reinterpret_cast<uint64_t>(data() + off); }
  Sge sge(size_t off, uint32_t len) const { return Sge{addr(off), len, mr->lkey()}; }
  bool guards_intact() const {
    for (size_t i = 0; i < kGuard; ++i)
      if (base[i] != std::byte(0xA5) || base[kGuard + size + i] != std::byte(0x5A)) return false;
    return true;
  }
};

// nullopt when [p, p+n) equals want (or is all `fill` when want is null).
std::optional<size_t> first_difference(const std::byte* p, const std::byte* want, size_t n, uint8_t fill = 0) {
  for (size_t i = 0; i < n; ++i)
    if (p[i] != (want ? want[i] : std::byte(fill))) return i;
  return std::nullopt;
}

// One context on the device with a PD, a default CQ and everything a step
// makes on it; destroyed in the order verbs requires (QPs, MRs, buffers,
// CQs, the PD, the device).
class Node {
 public:
  static Result<std::unique_ptr<Node>> open(const std::string& name) {
    auto n = std::unique_ptr<Node>(new Node());
    HL_ASSIGN_OR_RETURN(n->dev_, rnic::open_device(name));
    HL_ASSIGN_OR_RETURN(n->pd_, n->dev_->alloc_pd());
    HL_ASSIGN_OR_RETURN(n->cq_, n->dev_->create_cq(rnic::CqAttr{.cqe_count = 64}));
    return n;
  }
  const rnic::DeviceCaps& caps() const { return dev_->caps(); }
  CompletionQueue& cq() const { return *cq_; }

  Result<CompletionQueue*> new_cq(uint32_t n) {
    HL_ASSIGN_OR_RETURN(auto cq, dev_->create_cq(rnic::CqAttr{.cqe_count = n}));
    cqs_.push_back(std::move(cq));
    return cqs_.back().get();
  }
  Result<MemoryRegion*> register_memory(void* addr, size_t len, uint32_t access) {
    HL_ASSIGN_OR_RETURN(auto mr, pd_->register_memory(addr, len, access));
    mrs_.push_back(std::move(mr));
    return mrs_.back().get();
  }
  Result<Buf> alloc(size_t size, uint32_t access, uint8_t fill) {
    auto& v = bufs_.emplace_back(size + 2 * Buf::kGuard);
    Buf b{v.data(), size, nullptr};
    std::memset(b.base, 0xA5, Buf::kGuard);
    std::memset(b.data(), fill, size);
    std::memset(b.data() + size, 0x5A, Buf::kGuard);
    HL_ASSIGN_OR_RETURN(b.mr, register_memory(b.data(), size, access));
    return b;
  }
  QpAttr qp_attr() const {
    QpAttr a;
    a.send_cq = cq_.get();
    a.recv_cq = cq_.get();
    a.send_wqebbs = 64;
    a.recv_wqes = 64;
    return a;
  }
  Result<QueuePair*> new_qp(const QpAttr& attr) {
    HL_ASSIGN_OR_RETURN(auto qp, pd_->create_qp(attr));
    qps_.push_back(std::move(qp));
    return qps_.back().get();
  }

 private:
  Node() = default;
  std::unique_ptr<rnic::Device> dev_;
  std::unique_ptr<rnic::ProtectionDomain> pd_;
  std::unique_ptr<CompletionQueue> cq_;
  std::vector<std::unique_ptr<CompletionQueue>> cqs_;
  std::deque<std::vector<std::byte>> bufs_;
  std::vector<std::unique_ptr<MemoryRegion>> mrs_;
  std::vector<std::unique_ptr<QueuePair>> qps_;
};

struct QpPair {
  QueuePair* a = nullptr;
  QueuePair* b = nullptr;
};
// A QP on x and one on y, at RTS and connected to each other.
Result<QpPair> connect(Node& x, const QpAttr& xa, Node& y, const QpAttr& ya) {
  QpPair p;
  HL_ASSIGN_OR_RETURN(p.a, x.new_qp(xa));
  HL_ASSIGN_OR_RETURN(p.b, y.new_qp(ya));
  HL_RETURN_IF_ERROR(rnic::connect_pair(*p.a, *p.b, rnic::kAccessAllRemote));
  return p;
}

// ---- posting -------------------------------------------------------------------------------
Status post_write(QueuePair& qp, std::span<const Sge> sg, uint64_t raddr, uint32_t rkey, uint32_t flags,
                  uint64_t wr_id) {
  rnic::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rnic::WrOpcode::kRdmaWrite;
  wr.flags = flags;
  wr.sg = sg;
  wr.remote_addr = raddr;
  wr.rkey = rkey;
  return qp.post_send(wr);
}
Status post_send_msg(QueuePair& qp, const Sge& sg, uint32_t flags, uint64_t wr_id) {
  rnic::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rnic::WrOpcode::kSend;
  wr.flags = flags;
  wr.sg = std::span<const Sge>(&sg, 1);
  return qp.post_send(wr);
}
Status post_cas(QueuePair& qp, const Sge& result, uint64_t raddr, uint32_t rkey, uint64_t compare, uint64_t swap,
                uint64_t wr_id) {
  rnic::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rnic::WrOpcode::kAtomicCas;
  wr.flags = kSig;
  wr.sg = std::span<const Sge>(&result, 1);
  wr.remote_addr = raddr;
  wr.rkey = rkey;
  wr.compare_add = compare;
  wr.swap = swap;
  return qp.post_send(wr);
}
Status post_wait(QueuePair& qp, const CompletionQueue& cq, uint32_t index, uint32_t flags, uint64_t wr_id) {
  rnic::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rnic::WrOpcode::kWait;
  wr.flags = flags;
  wr.wait_cq = &cq;
  wr.index = index & mlx5::kCqIndexMask;
  return qp.post_send(wr);
}
Status post_send_enable(QueuePair& qp, const QueuePair& target, uint32_t index, uint32_t flags, uint64_t wr_id) {
  rnic::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rnic::WrOpcode::kSendEnable;
  wr.flags = flags;
  wr.enable_qp = &target;
  wr.index = index & mlx5::kWqeIndexMask;
  return qp.post_send(wr);
}
Status post_recv(QueuePair& qp, std::span<const Sge> sg, uint64_t wr_id) {
  rnic::RecvWr wr;
  wr.wr_id = wr_id;
  wr.sg = sg;
  return qp.post_recv(wr);
}
// A request that only has to complete: NOP where the device has it, else a
// 0-byte RDMA WRITE to `scratch` on the peer (verbs has no NOP).
Status post_filler(QueuePair& qp, const rnic::DeviceCaps& caps, const Buf& scratch, uint64_t wr_id) {
  if (caps.nop) {
    rnic::SendWr wr;
    wr.wr_id = wr_id;
    wr.opcode = rnic::WrOpcode::kNop;
    wr.flags = kSig;
    return qp.post_send(wr);
  }
  return post_write(qp, {}, scratch.addr(), scratch.mr->rkey(), kSig, wr_id);
}
WcOpcode filler_opcode(const rnic::DeviceCaps& caps) { return caps.nop ? WcOpcode::kNop : WcOpcode::kRdmaWrite; }

std::string injected(const Env& e) { return e.inject ? std::string(" (fault injected: ") + e.fault + ")" : ""; }

// Checks a destination: [0, off) and [off+n, size) still `fill`, [off, off+n)
// equal to want, guards intact. nullopt when so.
std::optional<Outcome> check_landing(const Buf& dst, size_t off, const std::byte* want, size_t n, uint8_t fill,
                                     const std::string& what) {
  if (auto d = first_difference(dst.data() + off, want, n))
    return fail("mismatch", what + ": byte " + std::to_string(*d) + " of " + std::to_string(n) +
                                " differs from what was sent");
  if (auto d = first_difference(dst.data(), nullptr, off, fill))
    return fail("mismatch", what + ": byte " + std::to_string(*d) + " before the target was written");
  if (auto d = first_difference(dst.data() + off + n, nullptr, dst.size - off - n, fill))
    return fail("mismatch", what + ": byte " + std::to_string(off + n + *d) + " after the target was written");
  if (!dst.guards_intact()) return fail("mismatch", what + ": memory outside the registered region was written");
  return std::nullopt;
}

// A quiet window on cq during which nothing may complete (a held request).
std::optional<Outcome> expect_held(CompletionQueue& cq, const Env& e, const Deadline& dl, const std::string& what) {
  auto q = quiet_window(cq, e.settle_ns, dl);
  if (!q.is_ok()) return refused("polling while " + what + " must be held", q.status());
  if (!q->has_value()) return std::nullopt;
  const WorkCompletion& wc = **q;
  if (wc.status != WcStatus::kSuccess) return fail_wc(wc, what + ": an error completion while it had to be held" + injected(e));
  return fail("not-held", what + " ran before it was released (" + std::string(rnic::wc_opcode_name(wc.opcode)) +
                              " wr_id " + std::to_string(wc.wr_id) + " completed)");
}

// ---- the steps -----------------------------------------------------------------------------
Outcome step_rc_write(const Env& e) {
  const Deadline dl(e.timeout_ns);
  PROBE_ASSIGN(auto a, Node::open(e.device), "open " + e.device);
  PROBE_ASSIGN(auto b, Node::open(e.device), "open " + e.device + " (second context)");
  PROBE_ASSIGN(const QpPair p, connect(*a, a->qp_attr(), *b, b->qp_attr()), "connect two RC QPs");
  constexpr uint32_t kLen = 4096;
  constexpr size_t kOff = 64;
  PROBE_ASSIGN(const Buf src, a->alloc(kLen, kLocalWrite, 0), "register the source");
  fill_pattern(src.data(), kLen, 1);
  PROBE_ASSIGN(const Buf dst, b->alloc(kLen + 2 * kOff, kAll, 0xEE), "register the target");
  const uint32_t rkey = e.inject ? ~dst.mr->rkey() : dst.mr->rkey();
  const Sge sg = src.sge(0, kLen);
  const uint64_t t0 = monotonic_ns();
  PROBE_CHECK(post_write(*p.a, std::span<const Sge>(&sg, 1), dst.addr(kOff), rkey, kSig, 1), "post the RDMA WRITE");
  PROBE_ASSIGN(const WorkCompletion wc, next_wc(a->cq(), dl, "the RDMA WRITE"), "the RDMA WRITE");
  const uint64_t t = monotonic_ns() - t0;
  PROBE_RETURN_IF(not_success(wc, WcOpcode::kRdmaWrite, 1,
                              "RDMA WRITE of " + std::to_string(kLen) + " bytes, rkey " + hex(rkey) + injected(e)));
  PROBE_RETURN_IF(check_landing(dst, kOff, src.data(), kLen, 0xEE, "the WRITE's target"));
  return pass(std::to_string(kLen) + " bytes by RDMA WRITE between two QPs, read back identical, nothing around them "
              "touched (completion after " + micros(t) + ")");
}

Outcome step_atomic_cas(const Env& e) {
  const Deadline dl(e.timeout_ns);
  PROBE_ASSIGN(auto a, Node::open(e.device), "open " + e.device);
  if (!a->caps().atomics) return na("the device has no atomics (caps.atomics false)");
  PROBE_ASSIGN(auto b, Node::open(e.device), "open " + e.device + " (second context)");
  PROBE_ASSIGN(const QpPair p, connect(*a, a->qp_attr(), *b, b->qp_attr()), "connect two RC QPs");
  const uint32_t access = e.inject ? kLocalWrite | rnic::kAccessRemoteWrite | rnic::kAccessRemoteRead : kAll;
  PROBE_ASSIGN(const Buf word, b->alloc(64, access, 0), "register the target word");
  PROBE_ASSIGN(const Buf result, a->alloc(16, kLocalWrite, 0xFF), "register the result buffer");
  constexpr uint64_t kOld = 0x0102030405060708ull, kNew = 0x1122334455667788ull, kOther = 0x5555aaaa5555aaaaull;
  store_u64(word.data() + 8, kOld);

  // 1. compare equal: swaps, returns the old value (host order).
  PROBE_CHECK(post_cas(*p.a, result.sge(0, 8), word.addr(8), word.mr->rkey(), kOld, kNew, 1), "post the first CAS");
  PROBE_ASSIGN(const WorkCompletion w1, next_wc(a->cq(), dl, "the first CAS"), "the first CAS");
  PROBE_RETURN_IF(not_success(w1, WcOpcode::kAtomicCas, 1, "CAS(compare " + hex(kOld) + ", swap " + hex(kNew) + ")" +
                                                                  injected(e)));
  if (load_u64(result.data()) != kOld)
    return fail("mismatch", "the first CAS returned " + hex(load_u64(result.data())) + ", not the old value " +
                                hex(kOld) + (load_u64(result.data()) == __builtin_bswap64(kOld)
                                                 ? " (byte-swapped: the device returns atomics big-endian)"
                                                 : ""));
  if (load_u64(word.data() + 8) != kNew)
    return fail("mismatch", "the first CAS left " + hex(load_u64(word.data() + 8)) + " in memory, not " + hex(kNew));

  // 2. compare not equal (the stale value): no swap, returns the current value.
  PROBE_CHECK(post_cas(*p.a, result.sge(8, 8), word.addr(8), word.mr->rkey(), kOld, kOther, 2), "post the second CAS");
  PROBE_ASSIGN(const WorkCompletion w2, next_wc(a->cq(), dl, "the second CAS"), "the second CAS");
  PROBE_RETURN_IF(not_success(w2, WcOpcode::kAtomicCas, 2, "CAS(compare " + hex(kOld) + ", swap " + hex(kOther) + ")"));
  if (load_u64(result.data() + 8) != kNew)
    return fail("mismatch", "the failing CAS returned " + hex(load_u64(result.data() + 8)) + ", not the current value " +
                                hex(kNew));
  if (load_u64(word.data() + 8) != kNew)
    return fail("mismatch", "a CAS whose compare did not match changed memory to " + hex(load_u64(word.data() + 8)));
  if (first_difference(word.data(), nullptr, 8) || first_difference(word.data() + 16, nullptr, 48) ||
      !word.guards_intact() || !result.guards_intact())
    return fail("mismatch", "a CAS wrote outside its 8-byte word");
  return pass("CAS with a matching compare swapped and returned the old value; with a stale compare it left the word "
              "alone and returned the current one");
}

Outcome step_wait(const Env& e) {
  const Deadline dl(e.timeout_ns);
  PROBE_ASSIGN(auto a, Node::open(e.device), "open " + e.device);
  if (!a->caps().cross_channel)
    return na("the device has no cross-channel (caps.cross_channel false): no WAIT work request");
  PROBE_ASSIGN(auto b, Node::open(e.device), "open " + e.device + " (second context)");
  PROBE_ASSIGN(CompletionQueue* const watched, a->new_cq(64), "create the watched CQ");
  PROBE_ASSIGN(CompletionQueue* const mcq, a->new_cq(64), "create the master's CQ");
  QpAttr mat = a->qp_attr();
  mat.send_cq = mcq;
  mat.cross_channel = true;
  PROBE_ASSIGN(const QpPair m, connect(*a, mat, *b, b->qp_attr()), "connect the cross-channel (master) QP");
  QpAttr wat = a->qp_attr();
  wat.send_cq = watched;
  PROBE_ASSIGN(const QpPair w, connect(*a, wat, *b, b->qp_attr()), "connect the QP the WAIT watches");
  constexpr uint32_t kLen = 48;
  PROBE_ASSIGN(const Buf src, a->alloc(kLen, kLocalWrite, 0), "register the source");
  fill_pattern(src.data(), kLen, 2);
  PROBE_ASSIGN(const Buf dst, b->alloc(kLen, kAll, 0), "register the target");
  PROBE_ASSIGN(const Buf scratch, b->alloc(64, kAll, 0), "register a scratch region");

  PROBE_CHECK(post_wait(*m.a, *watched, 0, 0, 1), "post WAIT(CQ, CQE 0)");
  const Sge sg = src.sge(0, kLen);
  const uint32_t rkey = e.inject ? ~dst.mr->rkey() : dst.mr->rkey();
  PROBE_CHECK(post_write(*m.a, std::span<const Sge>(&sg, 1), dst.addr(), rkey, kSig, 2),
              "post the WRITE behind the WAIT");
  const uint64_t t0 = monotonic_ns();
  PROBE_RETURN_IF(expect_held(*mcq, e, dl, "the WRITE behind the WAIT"));
  if (first_difference(dst.data(), nullptr, kLen))
    return fail("not-held", "the WRITE behind the WAIT wrote its target before the awaited CQE");
  const uint64_t held = monotonic_ns() - t0;

  PROBE_CHECK(post_filler(*w.a, a->caps(), scratch, 3), "post the request whose CQE the WAIT awaits");
  PROBE_ASSIGN(const WorkCompletion wc0, next_wc(*watched, dl, "the awaited request"), "the awaited request");
  PROBE_RETURN_IF(not_success(wc0, filler_opcode(a->caps()), 3, "the request whose CQE the WAIT awaits"));
  PROBE_ASSIGN(const WorkCompletion wc, next_wc(*mcq, dl, "the WRITE behind the WAIT"), "the WRITE behind the WAIT");
  PROBE_RETURN_IF(not_success(wc, WcOpcode::kRdmaWrite, 2, "the WRITE behind the WAIT, once released" + injected(e)));
  PROBE_RETURN_IF(check_landing(dst, 0, src.data(), kLen, 0, "the WRITE behind the WAIT"));
  return pass("a WRITE behind WAIT(CQ, CQE 0) was held for " + duration(held) +
              ", then ran once the awaited CQE was produced (" + std::to_string(kLen) + " bytes verified)");
}

Outcome step_send_enable(const Env& e) {
  const Deadline dl(e.timeout_ns);
  PROBE_ASSIGN(auto a, Node::open(e.device), "open " + e.device);
  if (!a->caps().cross_channel || !a->caps().managed_queues)
    return na(std::string("the device has no ") + (a->caps().cross_channel ? "managed queues (caps.managed_queues" :
                                                                            "cross-channel (caps.cross_channel") +
              " false): no SEND_EN work request");
  PROBE_ASSIGN(auto b, Node::open(e.device), "open " + e.device + " (second context)");
  PROBE_ASSIGN(CompletionQueue* const mcq, a->new_cq(64), "create the master's CQ");
  PROBE_ASSIGN(CompletionQueue* const scq, a->new_cq(64), "create the managed queue's CQ");
  QpAttr mat = a->qp_attr();
  mat.send_cq = mcq;
  mat.cross_channel = true;
  PROBE_ASSIGN(const QpPair m, connect(*a, mat, *b, b->qp_attr()), "connect the cross-channel (master) QP");
  QpAttr sat = a->qp_attr();
  sat.send_cq = scq;
  sat.managed_send = true;
  PROBE_ASSIGN(const QpPair s, connect(*a, sat, *b, b->qp_attr()), "connect the managed-send QP");
  constexpr uint32_t kLen = 64;
  PROBE_ASSIGN(const Buf src, a->alloc(kLen, kLocalWrite, 0), "register the source");
  fill_pattern(src.data(), kLen, 3);
  PROBE_ASSIGN(const Buf dst, b->alloc(kLen, kAll, 0), "register the target");

  const Sge sg1 = src.sge(0, kLen / 2), sg2 = src.sge(kLen / 2, kLen / 2);
  const uint32_t rkey = e.inject ? ~dst.mr->rkey() : dst.mr->rkey();
  PROBE_CHECK(post_write(*s.a, std::span<const Sge>(&sg1, 1), dst.addr(0), rkey, kSig, 1),
              "post the first WRITE on the managed queue");
  const uint32_t after_first = s.a->send_producer();
  PROBE_CHECK(post_write(*s.a, std::span<const Sge>(&sg2, 1), dst.addr(kLen / 2), dst.mr->rkey(), kSig, 2),
              "post the second WRITE on the managed queue");
  const uint32_t after_second = s.a->send_producer();
  PROBE_RETURN_IF(expect_held(*scq, e, dl, "the managed queue's WRITEs (nothing enabled)"));
  if (first_difference(dst.data(), nullptr, kLen))
    return fail("not-held", "a managed queue wrote before any SEND_EN released it");

  PROBE_CHECK(post_send_enable(*m.a, *s.a, after_first, kSig, 90), "post SEND_EN up to the first WRITE");
  PROBE_ASSIGN(const WorkCompletion en, next_wc(*mcq, dl, "the SEND_EN"), "the SEND_EN");
  PROBE_RETURN_IF(not_success(en, WcOpcode::kSendEnable, 90, "SEND_EN"));
  PROBE_ASSIGN(const WorkCompletion w1, next_wc(*scq, dl, "the first released WRITE"), "the first released WRITE");
  PROBE_RETURN_IF(not_success(w1, WcOpcode::kRdmaWrite, 1, "the first WRITE SEND_EN released" + injected(e)));
  PROBE_RETURN_IF(expect_held(*scq, e, dl, "the second WRITE (beyond the SEND_EN's index)"));
  if (first_difference(dst.data() + kLen / 2, nullptr, kLen / 2))
    return fail("not-held", "SEND_EN released more than up to its index");

  PROBE_CHECK(post_send_enable(*m.a, *s.a, after_second, 0, 91), "post SEND_EN up to the second WRITE");
  PROBE_ASSIGN(const WorkCompletion w2, next_wc(*scq, dl, "the second released WRITE"), "the second released WRITE");
  PROBE_RETURN_IF(not_success(w2, WcOpcode::kRdmaWrite, 2, "the second released WRITE"));
  PROBE_RETURN_IF(check_landing(dst, 0, src.data(), kLen, 0, "the released WRITEs"));
  return pass("a managed send queue ran nothing until SEND_EN, then exactly the WQEs up to its index (2 WRITEs, " +
              std::to_string(kLen) + " bytes verified)");
}

// HyperLoop's trick: B pre-posts, on a managed queue, a WRITE to A with
// placeholder fields (remote address 0, rkey 0, length 1), a RECV whose
// scatter list lands in that WQE's remote address, rkey and length (the
// device's write_patch_map), and WAIT(RECV CQ) + SEND_EN on a master queue.
// A's SEND patches the WQE, which then runs by itself.
Outcome step_recv_patch(const Env& e) {
  const Deadline dl(e.timeout_ns);
  PROBE_ASSIGN(auto a, Node::open(e.device), "open " + e.device);
  const rnic::DeviceCaps& caps = a->caps();
  if (!caps.cross_channel || !caps.managed_queues || !caps.patchable_send_wqes)
    return na(std::string("the device has no ") +
              (!caps.cross_channel    ? "cross-channel (caps.cross_channel"
               : !caps.managed_queues ? "managed queues (caps.managed_queues"
                                      : "patchable send WQEs (caps.patchable_send_wqes") +
              " false): a RECV cannot patch a pre-posted WQE");
  PROBE_ASSIGN(auto b, Node::open(e.device), "open " + e.device + " (second context)");
  PROBE_ASSIGN(CompletionQueue* const rcq, b->new_cq(64), "create B's receive CQ");
  PROBE_ASSIGN(CompletionQueue* const fcq, b->new_cq(64), "create B's managed queue's CQ");
  PROBE_ASSIGN(CompletionQueue* const mcq, b->new_cq(64), "create B's master CQ");
  QpAttr in_at = b->qp_attr();
  in_at.recv_cq = rcq;
  PROBE_ASSIGN(const QpPair in, connect(*a, a->qp_attr(), *b, in_at), "connect A -> B");
  QpAttr fwd_at = b->qp_attr();
  fwd_at.send_cq = fcq;
  fwd_at.managed_send = true;
  PROBE_ASSIGN(const QpPair fwd, connect(*b, fwd_at, *a, a->qp_attr()), "connect B's managed queue -> A");
  QpAttr m_at = b->qp_attr();
  m_at.send_cq = mcq;
  m_at.cross_channel = true;
  PROBE_ASSIGN(const QpPair m, connect(*b, m_at, *a, a->qp_attr()), "connect B's master queue");

  constexpr uint32_t kLen = 40;
  constexpr size_t kOff = 8;
  PROBE_ASSIGN(const Buf data, b->alloc(64, kLocalWrite, 0), "register B's data");
  fill_pattern(data.data(), 64, 4);
  PROBE_ASSIGN(const Buf target, a->alloc(128, kAll, 0), "register A's target");
  PROBE_ASSIGN(const Buf msg, a->alloc(16, kLocalWrite, 0), "register A's message");

  // The placeholder WRITE: if it ran unpatched it would fail (rkey 0).
  const uint32_t index = fwd.a->send_producer();
  const Sge ph = data.sge(0, 1);
  PROBE_CHECK(post_write(*fwd.a, std::span<const Sge>(&ph, 1), 0, 0, kSig, 10), "pre-post the placeholder WRITE");
  const uint32_t next = fwd.a->send_producer();
  PROBE_ASSIGN(const rnic::WritePatchMap map, fwd.a->write_patch_map(index), "the pre-posted WRITE's patch map");
  PROBE_ASSIGN(MemoryRegion* const ring, b->register_memory(map.ring.data(), map.ring.size(), kLocalWrite),
               "register the managed queue's send ring");
  const Sge scatter[] = {{ring->remote_addr(map.remote_addr), 8, ring->lkey()},
                         {ring->remote_addr(map.rkey), 4, ring->lkey()},
                         {ring->remote_addr(map.length), 4, ring->lkey()}};
  PROBE_CHECK(post_recv(*in.b, scatter, 20), "pre-post the RECV into the WRITE's fields");
  PROBE_CHECK(post_wait(*m.a, *rcq, 0, 0, 30), "pre-post WAIT(receive CQ, CQE 0)");
  PROBE_CHECK(post_send_enable(*m.a, *fwd.a, next, 0, 31), "pre-post SEND_EN of the WRITE");
  PROBE_RETURN_IF(expect_held(*fcq, e, dl, "the pre-posted WRITE (no message yet)"));
  if (first_difference(target.data(), nullptr, target.size))
    return fail("not-held", "the pre-posted WRITE wrote before the message arrived");

  // A's message: the new remote address, rkey and length, in the map's byte order.
  const uint32_t rkey = e.inject ? ~target.mr->rkey() : target.mr->rkey();
  rnic::put_patch_field(msg.data(), target.addr(kOff), 8, map.big_endian);
  rnic::put_patch_field(msg.data() + 8, rkey, 4, map.big_endian);
  rnic::put_patch_field(msg.data() + 12, kLen, 4, map.big_endian);
  PROBE_CHECK(post_send_msg(*in.a, msg.sge(0, 16), kSig, 40), "post A's patching SEND");
  PROBE_ASSIGN(const WorkCompletion sw, next_wc(a->cq(), dl, "A's SEND"), "A's SEND");
  PROBE_RETURN_IF(not_success(sw, WcOpcode::kSend, 40, "A's patching SEND"));
  PROBE_ASSIGN(const WorkCompletion fw, next_wc(*fcq, dl, "the patched WRITE"), "the patched WRITE");
  PROBE_RETURN_IF(not_success(fw, WcOpcode::kRdmaWrite, 10, "the patched WRITE" + injected(e)));
  PROBE_RETURN_IF(check_landing(target, kOff, data.data(), kLen, 0, "the patched WRITE"));
  PROBE_ASSIGN(const WorkCompletion rw, next_wc(*rcq, dl, "B's RECV"), "B's RECV");
  PROBE_RETURN_IF(not_success(rw, WcOpcode::kRecv, 20, "B's RECV"));
  if (rw.byte_len != 16) return fail("mismatch", "B's RECV took " + std::to_string(rw.byte_len) + " bytes, not 16");
  return pass("a RECV scattered a SEND into a pre-posted WRITE's remote address, rkey and length (posted as 0, 0, 1); "
              "WAIT + SEND_EN released it and it wrote " + std::to_string(kLen) + " bytes where the message said (" +
              (map.big_endian ? "big-endian mlx5 WQE" : "host-order WQE") + ")");
}

// A one-replica chain in offload mode on the device: a ReplicaHost on one
// context, the Group's client on another, a gWRITE, then the replica's region
// read by its CPU and by RDMA READ, and the replica CPU's forwarding count (0).
Outcome step_chain_offload(const Env& e) {
  const Deadline dl(e.timeout_ns);
  PROBE_ASSIGN(auto client, rnic::open_device(e.device), "open " + e.device + " (client)");
  const rnic::DeviceCaps& caps = client->caps();
  const bool mlx5_rings = caps.raw_send_ring && caps.send_wqe_format == rnic::SendWqeFormat::kMlx5;
  const bool rxe_ring = caps.patchable_send_wqes && caps.send_wqe_format == rnic::SendWqeFormat::kRxe;
  if (!(caps.cross_channel && caps.managed_queues && (mlx5_rings || rxe_ring)))
    return na("offload mode needs cross-channel, managed queues and patchable send WQEs (caps): the primitives run "
              "in kCpuForward on this device");
  PROBE_ASSIGN(auto replica, rnic::open_device(e.device), "open " + e.device + " (replica)");
  constexpr uint32_t kTenant = 1;
  constexpr size_t kRegion = 64 << 10;
  constexpr uint64_t kOffset = 4096;
  constexpr size_t kLen = 256;
  // Declaration order is destruction order reversed: the group (which
  // aborts an operation still pending), then the Op, the host, the devices.
  PROBE_ASSIGN(auto host, prim::ReplicaHost::create(*replica), "ReplicaHost::create");
  prim::Op op;
  std::unique_ptr<prim::Group> group;
  PROBE_CHECK(host->register_tenant(kTenant, kRegion), "register the tenant on the replica host");
  prim::GroupOptions go;
  go.tenant = kTenant;
  go.region_size = kRegion;
  go.mode = prim::ForwardMode::kOffload;
  go.slots = 16;
  go.rearm_batch = 4;
  go.staging_bytes = 64 << 10;
  go.op_timeout_ns = e.timeout_ns;
  prim::ReplicaHost* const hosts[] = {host.get()};
  PROBE_ASSIGN(group, prim::Group::create(*client, hosts, go), "Group::create (1 replica, offload)");
  std::vector<std::byte> bytes(kLen);
  fill_pattern(bytes.data(), kLen, 5);
  const uint64_t t0 = monotonic_ns();
  PROBE_CHECK(group->write(op, kOffset, bytes), "issue the gWRITE");
  PROBE_CHECK(group->wait(op, std::max<uint64_t>(dl.left(), 1)), "wait for the gWRITE");
  const uint64_t t = monotonic_ns() - t0;
  PROBE_CHECK(op.status(), "the gWRITE");
  std::vector<std::byte> got(kLen);
  PROBE_CHECK(host->peek(kTenant, kOffset, got), "read the replica's region (its CPU)");
  if (auto d = first_difference(got.data(), bytes.data(), kLen))
    return fail("mismatch", "the replica's region differs from the gWRITE at byte " + std::to_string(*d));
  std::vector<std::byte> zero(kOffset);
  PROBE_CHECK(host->peek(kTenant, 0, zero), "read the replica's region (its CPU)");
  if (auto d = first_difference(zero.data(), nullptr, kOffset))
    return fail("mismatch", "the gWRITE touched byte " + std::to_string(*d) + " before its offset");
  std::fill(got.begin(), got.end(), std::byte{0});
  PROBE_CHECK(group->read(0, kOffset, got), "read the replica's region (RDMA READ)");
  if (auto d = first_difference(got.data(), bytes.data(), kLen))
    return fail("mismatch", "an RDMA READ of the replica's region differs from the gWRITE at byte " + std::to_string(*d));
  if (host->ops_forwarded() != 0)
    return fail("mismatch", "the replica's CPU forwarded " + std::to_string(host->ops_forwarded()) +
                                " operation(s): the chain did not run offloaded");
  return pass("1-replica chain in offload mode: a " + std::to_string(kLen) + "-byte gWRITE acknowledged after " +
              micros(t) + ", the replica's region verified by its CPU and by RDMA READ, 0 operations forwarded by "
              "the replica's CPU");
}

Outcome run_step(StepId id, const Env& e) {
  switch (id) {
    case StepId::kRcWrite: return step_rc_write(e);
    case StepId::kAtomicCas: return step_atomic_cas(e);
    case StepId::kWait: return step_wait(e);
    case StepId::kSendEnable: return step_send_enable(e);
    case StepId::kRecvPatch: return step_recv_patch(e);
    case StepId::kChainOffload: return step_chain_offload(e);
  }
  return fail("error", "unknown step");
}

// ---- report ----------------------------------------------------------------------------------
struct Tally {
  int pass = 0, fail = 0, na = 0;
};

void print_outcome(const char* step, const Outcome& o, Tally* t) {
  switch (o.kind) {
    case Outcome::Kind::kPass:
      ++t->pass;
      std::printf("PASS %s %s\n", step, o.detail.c_str());
      break;
    case Outcome::Kind::kNa:
      ++t->na;
      std::printf("n/a %s %s\n", step, o.detail.c_str());
      break;
    case Outcome::Kind::kFail:
      ++t->fail;
      if (o.wc) {
        std::printf("FAIL %s %s syndrome 0x%02x vendor_syndrome 0x%02x %s (wr_id %llu, opcode %s, qpn 0x%x)\n", step,
                    std::string(rnic::wc_status_name(o.wc->status)).c_str(), unsigned(o.wc->syndrome),
                    unsigned(o.wc->vendor_syndrome), o.detail.c_str(), static_cast<unsigned long long>(o.wc->wr_id),
                    std::string(rnic::wc_opcode_name(o.wc->opcode)).c_str(), unsigned(o.wc->qpn));
      } else {
        std::printf("FAIL %s %s %s\n", step, o.reason.c_str(), o.detail.c_str());
      }
      break;
  }
  std::fflush(stdout);
}

const char* yes(bool b) { return b ? "yes" : "no"; }
const char* wqe_format_name(rnic::SendWqeFormat f) {
  switch (f) {
    case rnic::SendWqeFormat::kNone: return "none";
    case rnic::SendWqeFormat::kMlx5: return "mlx5";
    case rnic::SendWqeFormat::kRxe: return "rxe";
  }
  return "?";
}

void print_caps(const std::string& name, const rnic::DeviceCaps& c) {
  if (c.name == name)
    std::printf("device %s: backend %s\n", name.c_str(), c.backend.c_str());
  else
    std::printf("device %s (this context: %s): backend %s\n", name.c_str(), c.name.c_str(), c.backend.c_str());
  std::printf("  cross_channel        %-4s WAIT, SEND_EN, RECV_EN work requests\n", yes(c.cross_channel));
  std::printf("  managed_queues       %-4s queues that run only what was enabled\n", yes(c.managed_queues));
  std::printf("  raw_send_ring        %-4s send queue as an mlx5 WQE ring\n", yes(c.raw_send_ring));
  std::printf("  raw_recv_ring        %-4s receive queue as an mlx5 ring\n", yes(c.raw_recv_ring));
  std::printf("  raw_cq_ring          %-4s CQ as an mlx5 CQE ring\n", yes(c.raw_cq_ring));
  std::printf("  patchable_send_wqes  %-4s posted WRITEs patchable in the ring (format %s)\n",
              yes(c.patchable_send_wqes), wqe_format_name(c.send_wqe_format));
  std::printf("  atomics              %-4s ATOMIC_CS / ATOMIC_FA\n", yes(c.atomics));
  std::printf("  cq_ignore_overrun    %-4s CQs only WAITed on\n", yes(c.cq_ignore_overrun));
  std::printf("  completion_channel   %-4s sleeping on CQs\n", yes(c.completion_channel));
  std::printf("  persistent_memory    %-4s persistent memory regions\n", yes(c.persistent_memory));
  std::printf("  nop                  %-4s NOP work request\n", yes(c.nop));
  std::printf("  error_cqe_opcode     %-4s opcode reported on error completions\n", yes(c.error_cqe_opcode));
  std::printf("  limits               max_sge %u, max_inline_data %u, max_send_wqebbs %u, max_recv_wqes %u, "
              "max_cqe %u, max_mr_size %llu, max_msg_size %u, max_rd_atomic %u\n",
              c.max_sge, c.max_inline_data, c.max_send_wqebbs, c.max_recv_wqes, c.max_cqe,
              static_cast<unsigned long long>(c.max_mr_size), c.max_msg_size, c.max_rd_atomic);
  const bool mlx5_rings = c.raw_send_ring && c.send_wqe_format == rnic::SendWqeFormat::kMlx5;
  const bool rxe_ring = c.patchable_send_wqes && c.send_wqe_format == rnic::SendWqeFormat::kRxe;
  const bool offload = c.cross_channel && c.managed_queues && (mlx5_rings || rxe_ring);
  if (c.backend == "verbs")
    std::printf("  verbs                %s\n",
                c.send_wqe_format == rnic::SendWqeFormat::kRxe
                    ? "the patched rdma_rxe (driver-patches/linux-6.1-rxe-cross-channel): cross-channel through verbs"
                    : "standard verbs: no cross-channel (WAIT, SEND_EN and managed queues need rnic/mlx5 or the "
                      "patched rxe)");
  std::printf("  forwarding modes     %s\n", offload ? "offload and cpu-forward" : "cpu-forward only (offload needs "
                                                                                     "cross-channel, managed queues "
                                                                                     "and patchable send WQEs)");
  std::fflush(stdout);
}

// The HCA capabilities of an mlx5 device through DevX, and whether the
// device's caps() agree with them (the step "hca-caps": PASS, or FAIL when
// they could not be read or disagree).
bool print_hca_caps(const std::string& name, Tally* t) {
#ifdef HYPERLOOP_HAVE_MLX5
  auto dev = mlx5dev::open(name);
  if (!dev.is_ok()) {
    print_outcome("hca-caps", refused("open " + name + " through DevX (mlx5dv)", dev.status()), t);
    return false;
  }
  auto hc = mlx5dev::hca_caps(**dev);
  if (!hc.is_ok()) {
    print_outcome("hca-caps", refused("QUERY_HCA_CAP on " + name, hc.status()), t);
    return false;
  }
  const mlx5dev::HcaCaps& h = *hc;
  std::printf("  HCA caps (QUERY_HCA_CAP, current values, through DevX):\n");
  std::printf("    cd                     %-4s cross-channel (WAIT, SEND_EN, RECV_EN, cd_* QPs)%s\n", yes(h.cd),
              h.cd ? "" : ": offload is not possible, cpu-forward only");
  std::printf("    cq_oi                  %-4s CQs that ignore overrun\n", yes(h.cq_oi));
  std::printf("    wait_on_data           %-4s WAIT opmod WAIT_DATA (not used by hyperloop)\n", yes(h.wait_on_data));
  std::printf("    wait_on_time           %-4s WAIT opmod WAIT_TIME (not used by hyperloop)\n", yes(h.wait_on_time));
  std::printf("    rc                     %-4s\n", yes(h.rc));
  std::printf("    atomic                 %-4s\n", yes(h.atomic));
  if (h.atomic) {
    std::printf("    atomic_endianness_mode %u    %s\n", unsigned(h.atomic_endianness_mode),
                h.atomic_endianness_mode == 1 ? "host endianness (what hyperloop's CAS needs)"
                                              : "big-endian: CAS old values come back byte-swapped");
    std::printf("    atomic_operations      0x%04x (bit 0 CAS, bit 1 FAA)\n", unsigned(h.atomic_operations));
    std::printf("    atomic_size_qp         0x%04x\n", unsigned(h.atomic_size_qp));
  }
  std::printf("    port_type              %u    %s\n", unsigned(h.port_type),
              h.port_type == 1 ? "Ethernet (RoCE)" : h.port_type == 0 ? "InfiniBand" : "?");
  std::printf("    cqe_version            %u\n", unsigned(h.cqe_version));
  std::printf("    log_max_qp_sz %u, log_max_cq_sz %u, log_max_msg %u, log_max_ra_req_qp %u, log_max_ra_res_qp %u, "
              "max_wqe_sz_sq %u, max_wqe_sz_rq %u\n",
              unsigned(h.log_max_qp_sz), unsigned(h.log_max_cq_sz), unsigned(h.log_max_msg),
              unsigned(h.log_max_ra_req_qp), unsigned(h.log_max_ra_res_qp), unsigned(h.max_wqe_sz_sq),
              unsigned(h.max_wqe_sz_rq));
  // What rnic/mlx5 derived from them must agree (its caps() are what the
  // primitives decide offload by).
  const rnic::DeviceCaps& c = (*dev)->caps();
  std::string disagree;
  if (c.backend != "mlx5") disagree += " backend is '" + c.backend + "', not 'mlx5';";
  if (c.cross_channel != h.cd) disagree += " caps.cross_channel differs from cd;";
  if (c.cq_ignore_overrun != h.cq_oi) disagree += " caps.cq_ignore_overrun differs from cq_oi;";
  if (!c.raw_send_ring) disagree += " caps.raw_send_ring is false;";
  if (c.atomics && !h.atomic) disagree += " caps.atomics without the HCA's atomic;";
  print_outcome("hca-caps",
                disagree.empty() ? pass("rnic/mlx5's caps agree with QUERY_HCA_CAP (cd, cq_oi, atomic, raw send ring)")
                                 : fail("rnic/mlx5's caps disagree with QUERY_HCA_CAP:" + disagree, "caps of " + name),
                t);
  std::fflush(stdout);
  return disagree.empty();
#else
  (void)t;
  std::printf("  HCA caps: not read: this build has no rnic/mlx5 (rdma-core's mlx5dv was not found when it was "
              "built), so %s runs through standard verbs without cross-channel\n",
              name.c_str());
  std::fflush(stdout);
  return true;
#endif
}

// The names of this machine's mlx5 devices.
std::vector<std::string> mlx5_names(const std::vector<std::string>& all) {
#ifdef HYPERLOOP_HAVE_MLX5
  (void)all;
  return mlx5dev::device_names();
#else
  std::vector<std::string> out;
  for (const auto& n : all)
    if (n.rfind("mlx5", 0) == 0) out.push_back(n);
  return out;
#endif
}

// Caps and self-tests of one device. false: it does not open.
bool probe_device(const std::string& name, bool is_mlx5, const Options& o, Tally* t) {
  {
    auto dev = rnic::open_device(name);
    if (!dev.is_ok()) {
      std::fprintf(stderr, "hyperloop-probe: device '%s' does not open: %s\n", name.c_str(),
                   dev.status().to_string().c_str());
      std::printf("device %s: does not open: %s\n", name.c_str(), dev.status().to_string().c_str());
      std::fflush(stdout);
      return false;
    }
    print_caps(name, (*dev)->caps());
  }
  if (is_mlx5) print_hca_caps(name, t);
  std::printf("self-tests on %s (each bounded by %llu ms):\n", name.c_str(),
              static_cast<unsigned long long>(o.timeout_ms));
  std::fflush(stdout);
  for (const StepInfo& s : kSteps) {
    Env e;
    e.device = name;
    e.timeout_ns = o.timeout_ms * 1'000'000ull;
    e.settle_ns = std::min<uint64_t>(100'000'000ull, e.timeout_ns / 4);
    e.inject = o.inject && *o.inject == s.id;
    e.fault = s.fault;
    print_outcome(s.name, run_step(s.id, e), t);
  }
  return true;
}

// ---- flags ---------------------------------------------------------------------------------
// Empty: the options are valid; otherwise what is wrong.
std::string parse_args(int argc, char** argv, Options* o) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    std::optional<std::string> inline_value;
    if (flag.rfind("--", 0) == 0) {
      if (auto eq = flag.find('='); eq != std::string::npos) {
        inline_value = flag.substr(eq + 1);
        flag.resize(eq);
      }
    }
    auto value = [&](std::string* out) -> bool {
      if (inline_value) {
        *out = *inline_value;
        return true;
      }
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    std::string v;
    if (flag == "-h" || flag == "--help") {
      if (inline_value) return flag + " takes no value";
      o->help = true;
    } else if (flag == "-d" || flag == "--device") {
      if (!value(&v) || v.empty()) return flag + " needs a device name";
      o->device = v;
      o->device_given = true;
    } else if (flag == "--timeout-ms") {
      if (!value(&v)) return flag + " needs a value";
      char* end = nullptr;
      errno = 0;
      const unsigned long long x = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || v[0] == '-' || v[0] == '+' || *end || errno || x < 1 || x > 600000)
        return flag + " must be a number of milliseconds in [1, 600000], not '" + v + "'";
      o->timeout_ms = x;
    } else if (flag == "--inject-fault") {  // hidden: for tests of the FAIL path
      if (!value(&v)) return flag + " needs a step name";
      const StepInfo* found = nullptr;
      for (const StepInfo& s : kSteps)
        if (v == s.name) found = &s;
      if (!found) return flag + ": no step '" + v + "'";
      if (!found->fault) return flag + ": the step " + v + " has no fault to inject";
      o->inject = found->id;
    } else if (!flag.empty() && flag[0] == '-') {
      return "unknown flag '" + args[i] + "'";
    } else {
      return "unexpected argument '" + args[i] + "'";
    }
  }
  return "";
}

int finish(const Tally& t) {
  std::printf("summary: %d PASS, %d FAIL, %d n/a\n", t.pass, t.fail, t.na);
  std::fflush(stdout);
  return t.fail ? kExitFail : kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (const std::string why = parse_args(argc, argv, &o); !why.empty()) {
    std::fprintf(stderr, "hyperloop-probe: %s\n%s", why.c_str(), kUsage);
    return kExitUsage;
  }
  if (o.help) {
    std::fputs(kUsage, stdout);
    return kExitOk;
  }
  Tally t;
  const std::vector<std::string> all = rnic::list_devices();
  const std::vector<std::string> mlx5 = mlx5_names(all);
  auto is_mlx5 = [&](const std::string& n) { return std::find(mlx5.begin(), mlx5.end(), n) != mlx5.end(); };

  if (o.device_given) {
    if (!probe_device(o.device, is_mlx5(o.device), o, &t)) return kExitNothing;
    return finish(t);
  }

  std::vector<std::string> rdma;
  for (const auto& n : all)
    if (n != "soft" && n.rfind("soft:", 0) != 0) rdma.push_back(n);
  std::string listed;
  for (const auto& n : rdma) listed += (listed.empty() ? "" : ", ") + n + (is_mlx5(n) ? " (mlx5)" : "");
  std::printf("RDMA devices: %s\n", rdma.empty() ? "none (rdma-core lists no device)" : listed.c_str());
  std::fflush(stdout);
  bool opened_all = true;
  for (const auto& n : rdma) opened_all = probe_device(n, is_mlx5(n), o, &t) && opened_all;
  if (mlx5.empty()) {
    std::printf("no mlx5 device found: nothing to probe for offload on ConnectX%s (try --device soft for the "
                "software RNIC)\n",
                rdma.empty() ? "" : "; the devices above were probed through verbs");
  }
  const int rc = finish(t);
  if (rc != kExitOk) return rc;
  if (!opened_all || mlx5.empty()) return kExitNothing;
  return kExitOk;
}
