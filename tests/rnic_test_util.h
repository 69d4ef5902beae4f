// rnic_test_util.h: device-independent helpers for tests over rnic::Device.
//
// What every RNIC test needs whatever device runs it: gtest printers for the
// interface's enums and completions, Status assertions, byte patterns and
// comparisons, buffers with guard bytes, a DeviceNode (one device with a PD
// and a default CQ, plus everything a test registers or creates on it,
// destroyed in the order verbs requires: QPs, MRs, buffers, CQs, PDs, the
// device), connecting QP pairs, and posting helpers that build a
// SendWr/RecvWr around one call so the SGE spans never dangle.
//
// How progress is driven is not here: soft_test_util.h steps a
// ManualExecutor (software RNIC tests), conformance_util.h drives whatever
// device is under test.
#pragma once

#include <gtest/gtest.h>
#include <poll.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <deque>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "hyperloop/mlx5/prm.h"
#include "hyperloop/mlx5/wqe.h"
#include "hyperloop/rnic.h"
#include "hyperloop/status.h"

// ---- gtest printers (found by ADL) ---------------------------------------------
namespace hyperloop {
inline void PrintTo(StatusCode c, std::ostream* os) { *os << status_code_name(c); }
}  // namespace hyperloop

namespace hyperloop::rnic {
inline void PrintTo(WcStatus s, std::ostream* os) { *os << wc_status_name(s); }
inline void PrintTo(WcOpcode o, std::ostream* os) { *os << wc_opcode_name(o); }
inline void PrintTo(QpState s, std::ostream* os) { *os << qp_state_name(s); }
inline std::string describe(const WorkCompletion& wc) {
  std::ostringstream os;
  os << "{wr_id=" << wc.wr_id << " status=" << wc_status_name(wc.status) << " opcode=" << wc_opcode_name(wc.opcode)
     << " qpn=" << wc.qpn << " byte_len=" << wc.byte_len << " imm=" << wc.imm << " has_imm=" << wc.has_imm
     << " wqe_counter=" << wc.wqe_counter << " syndrome=0x" << std::hex << int(wc.syndrome) << "}";
  return os.str();
}
inline void PrintTo(const WorkCompletion& wc, std::ostream* os) { *os << describe(wc); }
}  // namespace hyperloop::rnic

namespace hyperloop::rnic_test {

namespace rn = ::hyperloop::rnic;
namespace mlx5 = ::hyperloop::mlx5;


using rn::CompletionQueue;
using rn::MemoryRegion;
using rn::ProtectionDomain;
using rn::QpAttr;
using rn::QpState;
using rn::QueuePair;
using rn::Sge;
using rn::WcOpcode;
using rn::WcStatus;
using rn::WorkCompletion;

// ---- status helpers -------------------------------------------------------------
inline ::testing::AssertionResult IsOk(const Status& s) {
  if (s.is_ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << s.to_string();
}
template <typename T>
::testing::AssertionResult IsOk(const Result<T>& r) {
  return IsOk(r.is_ok() ? Status::ok() : r.status());
}
#define HL_ASSERT_OK(expr) ASSERT_TRUE(::hyperloop::rnic_test::IsOk(expr))
#define HL_EXPECT_OK(expr) EXPECT_TRUE(::hyperloop::rnic_test::IsOk(expr))

// Setup steps that must work: a failure throws, and gtest reports it as a
// failed test (no null dereference afterwards).
inline void must(const Status& s, std::string_view what) {
  if (!s.is_ok()) throw std::runtime_error(std::string(what) + ": " + s.to_string());
}
template <typename T>
T must(Result<T> r, std::string_view what) {
  if (!r.is_ok()) throw std::runtime_error(std::string(what) + ": " + r.status().to_string());
  return std::move(r).value();
}

// ---- byte helpers ----------------------------------------------------------------
inline uint64_t addr_of(const void* p) { return reinterpret_cast<uint64_t>(p); }
inline void put_be64(std::byte* p, uint64_t v) { const uint64_t be = mlx5::to_be64(v); std::memcpy(p, &be, 8); }
inline void put_be32(std::byte* p, uint32_t v) { const uint32_t be = mlx5::to_be32(v); std::memcpy(p, &be, 4); }
inline uint64_t get_be64(const std::byte* p) { uint64_t v; std::memcpy(&v, p, 8); return mlx5::from_be64(v); }
inline uint32_t get_be32(const std::byte* p) { uint32_t v; std::memcpy(&v, p, 4); return mlx5::from_be32(v); }
inline uint64_t load_u64(const std::byte* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
inline void store_u64(std::byte* p, uint64_t v) { std::memcpy(p, &v, 8); }

// A deterministic byte pattern: pattern_byte(seed, i).
inline std::byte pattern_byte(uint32_t seed, size_t i) {
  return std::byte(uint8_t((seed * 131u + i * 31u + (i >> 8) * 7u) ^ (seed >> 8)));
}
inline void fill_pattern(std::byte* p, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; ++i) p[i] = pattern_byte(seed, i);
}
inline std::vector<std::byte> pattern(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  fill_pattern(v.data(), n, seed);
  return v;
}

// Compares n bytes; on mismatch names the first differing offset.
inline ::testing::AssertionResult BytesEqual(const std::byte* got, const std::byte* want, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (got[i] != want[i]) {
      std::ostringstream os;
      os << "first difference at byte " << i << " of " << n << ": got 0x" << std::hex << int(got[i]) << ", want 0x"
         << int(want[i]);
      return ::testing::AssertionFailure() << os.str();
    }
  }
  return ::testing::AssertionSuccess();
}
inline ::testing::AssertionResult AllBytesAre(const std::byte* p, size_t n, uint8_t v) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != std::byte(v)) {
      std::ostringstream os;
      os << "byte " << i << " of " << n << " is 0x" << std::hex << int(p[i]) << ", want 0x" << int(v);
      return ::testing::AssertionFailure() << os.str();
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- memory with guard bytes --------------------------------------------------------
// [guard | data | guard]; data is 16-byte aligned. The guards hold a pattern
// that no test writes, so any stray write next to a buffer is detected.
class GuardedBuffer {
 public:
  static constexpr size_t kGuard = 256;
  explicit GuardedBuffer(size_t size, uint8_t fill = 0) : size_(size), storage_(size + 2 * kGuard) {
    for (size_t i = 0; i < kGuard; ++i) {
      storage_[i] = guard_byte(i);
      storage_[kGuard + size_ + i] = guard_byte(i + 1);
    }
    std::memset(data(), fill, size_);
  }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;

  std::byte* data() { return storage_.data() + kGuard; }
  const std::byte* data() const { return storage_.data() + kGuard; }
  size_t size() const { return size_; }
  uint64_t addr(size_t off = 0) const { return addr_of(data() + off); }
  std::vector<std::byte> copy() const { return {data(), data() + size_}; }

  ::testing::AssertionResult guards_intact() const {
    for (size_t i = 0; i < kGuard; ++i) {
      if (storage_[i] != guard_byte(i))
        return ::testing::AssertionFailure() << "guard byte " << (kGuard - i) << " before the buffer was overwritten";
      if (storage_[kGuard + size_ + i] != guard_byte(i + 1))
        return ::testing::AssertionFailure() << "guard byte " << i << " after the buffer was overwritten";
    }
    return ::testing::AssertionSuccess();
  }

 private:
  static std::byte guard_byte(size_t i) { return std::byte(uint8_t(0xA5 ^ (i * 13))); }
  size_t size_;
  std::vector<std::byte> storage_;
};

// A registered guarded buffer.
struct Region {
  GuardedBuffer* buf = nullptr;
  MemoryRegion* mr = nullptr;

  std::byte* data() const { return buf->data(); }
  size_t size() const { return buf->size(); }
  uint64_t addr(size_t off = 0) const { return buf->addr(off); }
  uint32_t lkey() const { return mr->lkey(); }
  uint32_t rkey() const { return mr->rkey(); }
  Sge sge(size_t off, uint32_t len) const { return Sge{addr(off), len, lkey()}; }
  uint64_t u64(size_t off) const { return load_u64(data() + off); }
  void set_u64(size_t off, uint64_t v) const { store_u64(data() + off, v); }
  std::vector<std::byte> copy() const { return buf->copy(); }
  ::testing::AssertionResult guards_intact() const { return buf->guards_intact(); }
  ::testing::AssertionResult unchanged_since(const std::vector<std::byte>& before) const {
    if (before.size() != size()) return ::testing::AssertionFailure() << "snapshot size mismatch";
    auto r = BytesEqual(data(), before.data(), size());
    if (!r) return r;
    return guards_intact();
  }
};

// ---- a device with its objects ------------------------------------------------------------
class DeviceNode {
 public:
  DeviceNode(std::unique_ptr<rn::Device> device, uint32_t cqe_count) : dev_(std::move(device)) {
    pd_ = must(dev_->alloc_pd(), "alloc_pd");
    cq_ = must(dev_->create_cq(rn::CqAttr{.cqe_count = cqe_count}), "create_cq");
  }
  DeviceNode(const DeviceNode&) = delete;
  DeviceNode& operator=(const DeviceNode&) = delete;

  rn::Device& device() const { return *dev_; }
  const rn::DeviceCaps& caps() const { return dev_->caps(); }
  ProtectionDomain& pd() const { return *pd_; }
  CompletionQueue& cq() const { return *cq_; }

  GuardedBuffer& buffer(size_t size, uint8_t fill = 0) { return buffers_.emplace_back(size, fill); }

  MemoryRegion& register_memory(void* addr, size_t len, uint32_t access, ProtectionDomain* pd = nullptr) {
    mrs_.push_back(must((pd ? *pd : *pd_).register_memory(addr, len, access), "register_memory"));
    return *mrs_.back();
  }
  // A guarded buffer of `size` bytes filled with `fill`, registered in `pd`.
  Region alloc(size_t size, uint32_t access, uint8_t fill = 0, ProtectionDomain* pd = nullptr) {
    GuardedBuffer& b = buffer(size, fill);
    return Region{&b, &register_memory(b.data(), size, access, pd)};
  }
  // Same, filled with pattern(size, seed).
  Region alloc_pattern(size_t size, uint32_t access, uint32_t seed, ProtectionDomain* pd = nullptr) {
    Region r = alloc(size, access, 0, pd);
    fill_pattern(r.data(), size, seed);
    return r;
  }
  void destroy_mr(MemoryRegion* mr) {
    std::erase_if(mrs_, [&](const std::unique_ptr<MemoryRegion>& p) { return p.get() == mr; });
  }

  ProtectionDomain& new_pd() {
    pds_.push_back(must(dev_->alloc_pd(), "alloc_pd"));
    return *pds_.back();
  }
  CompletionQueue& new_cq(uint32_t cqe_count = 1024, bool ignore_overrun = false) {
    cqs_.push_back(must(dev_->create_cq(rn::CqAttr{.cqe_count = cqe_count, .ignore_overrun = ignore_overrun}),
                        "create_cq"));
    return *cqs_.back();
  }
  CompletionQueue& new_cq(const rn::CqAttr& attr) {
    cqs_.push_back(must(dev_->create_cq(attr), "create_cq"));
    return *cqs_.back();
  }

  void destroy_cq(CompletionQueue* cq) {
    std::erase_if(cqs_, [&](const std::unique_ptr<CompletionQueue>& p) { return p.get() == cq; });
  }

  // Attributes with both CQs set to the node's default CQ.
  QpAttr qp_attr() const {
    QpAttr a;
    a.send_cq = cq_.get();
    a.recv_cq = cq_.get();
    return a;
  }
  QueuePair& new_qp(const QpAttr& attr, ProtectionDomain* pd = nullptr) {
    qps_.push_back(must((pd ? *pd : *pd_).create_qp(attr), "create_qp"));
    return *qps_.back();
  }
  void destroy_qp(QueuePair* qp) {
    std::erase_if(qps_, [&](const std::unique_ptr<QueuePair>& p) { return p.get() == qp; });
  }

 private:
  // Declaration order is destruction order reversed: QPs go first, the device last.
  std::unique_ptr<rn::Device> dev_;
  std::unique_ptr<ProtectionDomain> pd_;
  std::vector<std::unique_ptr<ProtectionDomain>> pds_;
  std::unique_ptr<CompletionQueue> cq_;
  std::vector<std::unique_ptr<CompletionQueue>> cqs_;
  std::deque<GuardedBuffer> buffers_;
  std::vector<std::unique_ptr<MemoryRegion>> mrs_;
  std::vector<std::unique_ptr<QueuePair>> qps_;
};


struct QpPair {
  QueuePair* a = nullptr;  // on the first node
  QueuePair* b = nullptr;  // on the second node
};

// Creates a QP on each node (in each node's default PD unless given) and
// brings both to RTS connected to each other.
inline QpPair connect(DeviceNode& x, const QpAttr& xa, DeviceNode& y, const QpAttr& ya,
                      uint32_t remote_access = rn::kAccessAllRemote, ProtectionDomain* xpd = nullptr,
                      ProtectionDomain* ypd = nullptr) {
  QpPair p{&x.new_qp(xa, xpd), &y.new_qp(ya, ypd)};
  must(rn::connect_pair(*p.a, *p.b, remote_access), "connect_pair");
  return p;
}
inline QpPair connect(DeviceNode& x, DeviceNode& y, uint32_t remote_access = rn::kAccessAllRemote) {
  return connect(x, x.qp_attr(), y, y.qp_attr(), remote_access);
}

// ---- posting helpers ----------------------------------------------------------------------
inline Status post(QueuePair& qp, rn::WrOpcode op, std::span<const Sge> sg, uint32_t flags, uint64_t wr_id,
                   uint64_t raddr = 0, uint32_t rkey = 0) {
  rn::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = op;
  wr.flags = flags;
  wr.sg = sg;
  wr.remote_addr = raddr;
  wr.rkey = rkey;
  return qp.post_send(wr);
}
inline Status post_nop(QueuePair& qp, uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  return post(qp, rn::WrOpcode::kNop, {}, flags, wr_id);
}
inline Status post_write(QueuePair& qp, std::span<const Sge> sg, uint64_t raddr, uint32_t rkey,
                         uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  return post(qp, rn::WrOpcode::kRdmaWrite, sg, flags, wr_id, raddr, rkey);
}
inline Status post_write(QueuePair& qp, const Sge& sg, uint64_t raddr, uint32_t rkey,
                         uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  return post_write(qp, std::span<const Sge>(&sg, 1), raddr, rkey, flags, wr_id);
}
inline Status post_write_imm(QueuePair& qp, std::span<const Sge> sg, uint64_t raddr, uint32_t rkey, uint32_t imm,
                             uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  rn::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rn::WrOpcode::kRdmaWriteImm;
  wr.flags = flags;
  wr.sg = sg;
  wr.remote_addr = raddr;
  wr.rkey = rkey;
  wr.imm = imm;
  return qp.post_send(wr);
}
inline Status post_write_imm(QueuePair& qp, const Sge& sg, uint64_t raddr, uint32_t rkey, uint32_t imm,
                             uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  return post_write_imm(qp, std::span<const Sge>(&sg, 1), raddr, rkey, imm, flags, wr_id);
}
inline Status post_read(QueuePair& qp, std::span<const Sge> sg, uint64_t raddr, uint32_t rkey,
                        uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  return post(qp, rn::WrOpcode::kRdmaRead, sg, flags, wr_id, raddr, rkey);
}
inline Status post_read(QueuePair& qp, const Sge& sg, uint64_t raddr, uint32_t rkey,
                        uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  return post_read(qp, std::span<const Sge>(&sg, 1), raddr, rkey, flags, wr_id);
}
inline Status post_send_msg(QueuePair& qp, std::span<const Sge> sg, uint32_t flags = rn::kSendSignaled,
                            uint64_t wr_id = 0) {
  return post(qp, rn::WrOpcode::kSend, sg, flags, wr_id);
}
inline Status post_send_msg(QueuePair& qp, const Sge& sg, uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  return post_send_msg(qp, std::span<const Sge>(&sg, 1), flags, wr_id);
}
inline Status post_send_imm(QueuePair& qp, std::span<const Sge> sg, uint32_t imm, uint32_t flags = rn::kSendSignaled,
                            uint64_t wr_id = 0) {
  rn::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rn::WrOpcode::kSendImm;
  wr.flags = flags;
  wr.sg = sg;
  wr.imm = imm;
  return qp.post_send(wr);
}
inline Status post_send_imm(QueuePair& qp, const Sge& sg, uint32_t imm, uint32_t flags = rn::kSendSignaled,
                            uint64_t wr_id = 0) {
  return post_send_imm(qp, std::span<const Sge>(&sg, 1), imm, flags, wr_id);
}
inline Status post_atomic(QueuePair& qp, rn::WrOpcode op, const Sge& result, uint64_t raddr, uint32_t rkey,
                          uint64_t compare_add, uint64_t swap, uint32_t flags, uint64_t wr_id) {
  rn::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = op;
  wr.flags = flags;
  wr.sg = std::span<const Sge>(&result, 1);
  wr.remote_addr = raddr;
  wr.rkey = rkey;
  wr.compare_add = compare_add;
  wr.swap = swap;
  return qp.post_send(wr);
}
inline Status post_cas(QueuePair& qp, const Sge& result, uint64_t raddr, uint32_t rkey, uint64_t compare,
                       uint64_t swap, uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  return post_atomic(qp, rn::WrOpcode::kAtomicCas, result, raddr, rkey, compare, swap, flags, wr_id);
}
inline Status post_faa(QueuePair& qp, const Sge& result, uint64_t raddr, uint32_t rkey, uint64_t add,
                       uint32_t flags = rn::kSendSignaled, uint64_t wr_id = 0) {
  return post_atomic(qp, rn::WrOpcode::kAtomicFaa, result, raddr, rkey, add, 0, flags, wr_id);
}
inline Status post_wait(QueuePair& qp, const CompletionQueue& cq, uint32_t index, uint32_t flags = 0,
                        uint64_t wr_id = 0) {
  rn::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rn::WrOpcode::kWait;
  wr.flags = flags;
  wr.wait_cq = &cq;
  wr.index = index & mlx5::kCqIndexMask;
  return qp.post_send(wr);
}
inline Status post_send_enable(QueuePair& qp, const QueuePair& target, uint32_t index, uint32_t flags = 0,
                               uint64_t wr_id = 0) {
  rn::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rn::WrOpcode::kSendEnable;
  wr.flags = flags;
  wr.enable_qp = &target;
  wr.index = index & mlx5::kWqeIndexMask;
  return qp.post_send(wr);
}
inline Status post_recv_enable(QueuePair& qp, const QueuePair& target, uint32_t index, uint32_t flags = 0,
                               uint64_t wr_id = 0) {
  rn::SendWr wr;
  wr.wr_id = wr_id;
  wr.opcode = rn::WrOpcode::kRecvEnable;
  wr.flags = flags;
  wr.enable_qp = &target;
  wr.index = index & mlx5::kWqeIndexMask;
  return qp.post_send(wr);
}
inline Status post_recv(QueuePair& qp, std::span<const Sge> sg, uint64_t wr_id = 0) {
  rn::RecvWr wr;
  wr.wr_id = wr_id;
  wr.sg = sg;
  return qp.post_recv(wr);
}
inline Status post_recv(QueuePair& qp, const Sge& sg, uint64_t wr_id = 0) {
  return post_recv(qp, std::span<const Sge>(&sg, 1), wr_id);
}

// Encodes `w` into the QP's raw send ring at send_producer(), lets `mutate`
// corrupt it (mutate(ring, pi)), rings the doorbell past it and returns pi.
template <typename Mutate>
uint32_t raw_post(QueuePair& qp, mlx5::SendWqe w, Mutate&& mutate, bool ring_doorbell = true) {
  auto ring = must(qp.raw_send_ring(), "raw_send_ring");
  const uint32_t pi = qp.send_producer();
  const uint32_t n = mlx5::encode_send_wqe(ring, pi, w);
  if (n == 0) throw std::runtime_error("raw_post: WQE does not encode");
  mutate(ring, pi);
  if (ring_doorbell) must(qp.ring_send_doorbell(pi + n), "ring_send_doorbell");
  return pi;
}
inline uint32_t raw_post(QueuePair& qp, const mlx5::SendWqe& w) {
  return raw_post(qp, w, [](const mlx5::SendRingView&, uint32_t) {});
}
inline mlx5::SendWqe raw_wqe(uint8_t opcode, uint32_t qpn, uint8_t fm_ce_se = mlx5::kCtrlCqUpdate) {
  mlx5::SendWqe w{};
  w.ctrl.opcode = opcode;
  w.ctrl.qpn = qpn;
  w.ctrl.fm_ce_se = fm_ce_se;
  return w;
}

// ---- polling ----------------------------------------------------------------------------
// Whatever the CQ holds now, without driving the device.
inline std::vector<WorkCompletion> drain(CompletionQueue& cq) {
  std::vector<WorkCompletion> out;
  WorkCompletion buf[16];
  for (;;) {
    auto r = cq.poll(std::span<WorkCompletion>(buf, 16));
    if (!r.is_ok() || *r == 0) break;
    out.insert(out.end(), buf, buf + *r);
  }
  return out;
}
// One completion from cq, taken while `run_until(pred)` drives the device
// (a ManualExecutor's run_until, a conformance Harness's); nullopt when it
// gave up first. A failed poll is a test failure.
template <typename RunUntil>
std::optional<WorkCompletion> poll_one_driven(CompletionQueue& cq, RunUntil&& run_until) {
  WorkCompletion wc{};
  bool got = false;
  run_until([&] {
    auto r = cq.poll(std::span<WorkCompletion>(&wc, 1));
    if (!r.is_ok()) {
      ADD_FAILURE() << "poll failed: " << r.status().to_string();
      return true;
    }
    got = *r == 1;
    return got;
  });
  if (!got) return std::nullopt;
  return wc;
}
// Polls with a bounded spin: for threaded executors.
inline std::optional<WorkCompletion> spin_poll_one(CompletionQueue& cq, uint64_t max_iterations = 200'000'000) {
  WorkCompletion wc{};
  for (uint64_t i = 0; i < max_iterations; ++i) {
    auto r = cq.poll(std::span<WorkCompletion>(&wc, 1));
    if (!r.is_ok()) {
      ADD_FAILURE() << "poll failed: " << r.status().to_string();
      return std::nullopt;
    }
    if (*r == 1) return wc;
    if ((i & 63) == 63) std::this_thread::yield();
  }
  return std::nullopt;
}

// ---- completion channels ------------------------------------------------------------------
// How long NoEvent waits for an event that must not come (an upper bound, not a sleep).
inline constexpr int64_t kNoEventWaitNs = 1'000'000;

inline bool fd_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  const int r = ::poll(&p, 1, timeout_ms);
  return r == 1 && (p.revents & POLLIN);
}

inline ::testing::AssertionResult NoEvent(rn::CompletionChannel& ch) {
  auto r = ch.wait(kNoEventWaitNs);
  if (r.is_ok()) return ::testing::AssertionFailure() << "an event fired for CQ " << (*r)->cqn();
  if (r.status().code() != StatusCode::kDeadlineExceeded)
    return ::testing::AssertionFailure() << "wait failed: " << r.status().to_string();
  return ::testing::AssertionSuccess();
}

// An event is pending now (wait(0) does not block) and it names `cq`.
inline ::testing::AssertionResult EventFor(rn::CompletionChannel& ch, const CompletionQueue* cq) {
  auto r = ch.wait(0);
  if (!r.is_ok()) return ::testing::AssertionFailure() << "no event: " << r.status().to_string();
  if (*r != cq) return ::testing::AssertionFailure() << "the event names CQ " << (*r)->cqn() << ", not " << cq->cqn();
  return ::testing::AssertionSuccess();
}

// Attributes with the given send and receive CQs.
inline QpAttr attr_with(CompletionQueue& scq, CompletionQueue& rcq) {
  QpAttr a;
  a.send_cq = &scq;
  a.recv_cq = &rcq;
  return a;
}

// ---- flags ----------------------------------------------------------------------------------
inline constexpr uint32_t kSig = rn::kSendSignaled;
inline constexpr uint32_t kFence = rn::kSendFence;
inline constexpr uint32_t kInline = rn::kSendInline;
inline constexpr uint32_t kLocalWrite = rn::kAccessLocalWrite;
inline constexpr uint32_t kAll = rn::kAccessAll;

}  // namespace hyperloop::rnic_test
