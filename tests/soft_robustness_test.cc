// Seeded fuzzing of the software RNIC's WQE execution. Random and mutated
// WQEs go through a QP's raw send ring, and random bytes are scattered by a
// RECV into a pre-posted WQE of a managed queue. Whatever the bytes, the NIC
// must not crash or hang, every completion must be a valid status, QPs end in
// RTS or ERROR, and no byte changes outside the memory regions that the
// executing QPs may legally write (checked against a shadow copy of every
// buffer, registered or not, including guard gaps around each region).
//
// Reproduce one iteration: HYPERLOOP_FUZZ_SEED=<seed printed on failure>
// HYPERLOOP_FUZZ_ITERATIONS=1. Also runs under ASan/UBSan in CI.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "soft_test_util.h"

namespace hyperloop::soft_test {
namespace {

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  uint64_t u64() { return g_(); }
  uint32_t u32() { return uint32_t(g_()); }
  uint64_t below(uint64_t n) { return n == 0 ? 0 : g_() % n; }
  bool chance(unsigned percent) { return below(100) < percent; }
  template <typename T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
  void fill(std::byte* p, size_t n) {
    for (size_t i = 0; i < n; ++i) p[i] = std::byte(uint8_t(g_()));
  }

 private:
  std::mt19937_64 g_;
};

// One node's memory: every byte the test owns, registered or not, with a
// shadow copy. Only the PD1 read-write region may differ from the shadow.
//   [gap][rw MR, PD1][gap][read-only MR, PD1][gap][MR in PD2][gap][unregistered][gap]
// The arena is mapped at a fixed address (when free) so that WQE fields built
// from its addresses, and mutations of them, are the same on every run: a
// seed reproduces an iteration exactly, whatever the process's ASLR layout.
class Arena {
 public:
  static constexpr size_t kGap = 512;
  static constexpr size_t kRegion = 4096;
  static constexpr size_t kBytes = 4 * kGap + 4 * kRegion + kGap;

  Arena(Node& node, ProtectionDomain& pd2, Rng& rng, int slot) {
    void* hint = reinterpret_cast<void*>(uintptr_t{0x4a0000000000} + uintptr_t(slot) * 0x100000);
    void* p = ::mmap(hint, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED || p != hint) {
      if (p != MAP_FAILED) ::munmap(p, kBytes);
      std::printf("[ fuzz     ] note: fixed arena address taken; runs may differ in the paths they reach\n");
      p = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    }
    mem_ = static_cast<std::byte*>(p);
    rng.fill(mem_, kBytes);
    rw = &node.register_memory(region(0), kRegion, kAll);
    ro = &node.register_memory(region(1), kRegion, rn::kAccessRemoteRead);
    foreign = &node.register_memory(region(2), kRegion, kAll, &pd2);
    shadow_.assign(mem_, mem_ + kBytes);
  }
  ~Arena() { ::munmap(mem_, kBytes); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  std::byte* region(int i) { return mem_ + kGap + size_t(i) * (kRegion + kGap); }
  uint64_t base() const { return addr_of(mem_); }
  size_t size() const { return kBytes; }

  // Bytes outside the PD1 read-write region must equal the shadow; then the
  // shadow takes the current contents.
  ::testing::AssertionResult check_and_accept(const char* who) {
    const size_t lo = kGap, hi = kGap + kRegion;
    for (size_t i = 0; i < kBytes; ++i) {
      if (i >= lo && i < hi) continue;
      if (mem_[i] != shadow_[i]) {
        std::ostringstream os;
        os << who << ": byte at arena offset " << i << " changed (0x" << std::hex << int(shadow_[i]) << " -> 0x"
           << int(mem_[i]) << std::dec << "), outside every writable region; layout: gaps of " << kGap
           << ", regions of " << kRegion << " (rw, read-only, other PD, unregistered)";
        return ::testing::AssertionFailure() << os.str();
      }
    }
    accept();
    return ::testing::AssertionSuccess();
  }
  // The test itself rewrote the rw region: accept it.
  void accept() { std::memcpy(shadow_.data(), mem_, kBytes); }

  MemoryRegion* rw = nullptr;
  MemoryRegion* ro = nullptr;
  MemoryRegion* foreign = nullptr;

 private:
  std::byte* mem_ = nullptr;
  std::vector<std::byte> shadow_;
};

// Values a random WQE field is drawn from: mostly plausible, sometimes wild.
struct Pools {
  struct Mr {
    uint64_t addr;
    uint64_t len;
    uint32_t key;
  };
  std::vector<uint32_t> keys;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [addr, len) of interesting memory
  std::vector<Mr> local_mrs;   // regions on the requester's node
  std::vector<Mr> remote_mrs;  // regions on the responder's node

  // Registers an arena's regions; the first (the PD1 read-write one) is
  // listed six times so that coherent picks are often fully valid.
  void add(const Arena& arena, std::initializer_list<const MemoryRegion*> regions, bool local) {
    bool first = true;
    for (const MemoryRegion* mr : regions) {
      keys.push_back(mr->lkey());
      keys.push_back(mr->rkey());
      ranges.emplace_back(mr->remote_addr(), mr->length());
      for (int i = 0; i < (first ? 6 : 1); ++i)
        (local ? local_mrs : remote_mrs).push_back({mr->remote_addr(), mr->length(), mr->rkey()});
      first = false;
    }
    ranges.emplace_back(arena.base(), arena.size());
  }
  // An SGE that lies inside one registered region, with that region's key:
  // valid unless the region's PD or access rights forbid the use.
  Sge coherent_sge(Rng& rng, uint32_t max_len = 512) const {
    const Mr& m = rng.pick(local_mrs);
    const uint64_t off = rng.below(m.len) & ~uint64_t{7};
    const uint32_t len = uint32_t(1 + rng.below(std::min<uint64_t>(m.len - off, max_len)));
    return Sge{m.addr + off, len, m.key};
  }
  // A remote address and key covering `len` bytes of one region (8-aligned).
  std::pair<uint64_t, uint32_t> coherent_remote(Rng& rng, uint32_t len) const {
    const Mr& m = rng.pick(remote_mrs);
    const uint64_t room = m.len >= len ? m.len - len : 0;
    return {m.addr + (rng.below(room + 1) & ~uint64_t{7}), m.key};
  }

  uint32_t key(Rng& rng) const {
    if (rng.chance(80)) return rng.pick(keys);
    switch (rng.below(3)) {
      case 0: return 0;
      case 1: return mlx5::kInvalidLkey;
      default: return rng.u32();
    }
  }
  uint64_t addr(Rng& rng) const {
    const auto& [base, len] = rng.pick(ranges);
    switch (rng.below(8)) {
      case 0: return rng.u64();
      case 1: return 0;
      case 2: return base + len - rng.below(16);  // straddles the end
      case 3: return base - 1 - rng.below(64);    // just before
      default: return base + (rng.below(len) & ~uint64_t{7});
    }
  }
  uint32_t length(Rng& rng) const {
    switch (rng.below(9)) {
      case 0: return 0;
      case 1: return 1;
      case 2: return 8;
      case 3: return uint32_t(rng.below(64));
      case 4: case 5: return uint32_t(rng.below(4096));
      case 6: return uint32_t(rng.below(20000));
      case 7: return rng.u32();
      default: return 0x80000000u | uint32_t(rng.below(64));
    }
  }
  Sge sge(Rng& rng) const { return Sge{addr(rng), length(rng), key(rng)}; }
};

bool valid_status(WcStatus s) { return uint8_t(s) <= uint8_t(WcStatus::kGeneralError); }

// How often each completion status was seen: printed so a run shows what the
// fuzzer reached (a fuzzer that only ever hits one error proves little).
struct StatusHistogram {
  uint64_t count[uint8_t(WcStatus::kGeneralError) + 1] = {};
  void print(const char* name) const {
    std::printf("[ fuzz     ] %s completions:", name);
    for (size_t i = 0; i < std::size(count); ++i)
      if (count[i]) std::printf(" %.*s=%llu", int(rn::wc_status_name(WcStatus(i)).size()),
                                rn::wc_status_name(WcStatus(i)).data(), (unsigned long long)count[i]);
    std::printf("\n");
  }
};

// Drains `cq`; every completion must be a known status, consistent with its
// syndrome, and belong to one of `qpns`.
::testing::AssertionResult completions_valid(CompletionQueue& cq, std::initializer_list<uint32_t> qpns,
                                             StatusHistogram& hist) {
  for (const WorkCompletion& wc : drain(cq)) {
    if (valid_status(wc.status)) ++hist.count[uint8_t(wc.status)];
    if (!valid_status(wc.status)) return ::testing::AssertionFailure() << "invalid status in " << describe(wc);
    if (wc.status != WcStatus::kSuccess && rn::wc_status_from_syndrome(wc.syndrome) != wc.status)
      return ::testing::AssertionFailure() << "syndrome does not match status in " << describe(wc);
    if (std::find(qpns.begin(), qpns.end(), wc.qpn) == qpns.end())
      return ::testing::AssertionFailure() << "completion of an unknown QP: " << describe(wc);
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult settled_state(const QueuePair& qp, const char* who) {
  if (qp.state() == QpState::kRts || qp.state() == QpState::kError) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << who << " ended in " << rn::qp_state_name(qp.state());
}

constexpr uint8_t kValidOpcodes[] = {mlx5::kOpNop,       mlx5::kOpRdmaWrite, mlx5::kOpRdmaWriteImm,
                                     mlx5::kOpSend,      mlx5::kOpSendImm,   mlx5::kOpRdmaRead,
                                     mlx5::kOpAtomicCs,  mlx5::kOpAtomicFa,  mlx5::kOpWait,
                                     mlx5::kOpSendEnable, mlx5::kOpRecvEnable};

// A random structured WQE (may be invalid in its keys, addresses, lengths).
// `chaos` (0..100) is how often fields are wild rather than coherent.
mlx5::SendWqe random_wqe(Rng& rng, const Pools& pools, uint32_t qpn, const std::vector<std::byte>& inline_src,
                         unsigned chaos) {
  mlx5::SendWqe w{};
  // Data-path opcodes mostly; the cross-channel ones (refused on this QP) rarely.
  w.ctrl.opcode = kValidOpcodes[rng.below(rng.chance(chaos / 5) ? std::size(kValidOpcodes) : 8)];
  w.ctrl.qpn = rng.chance(chaos / 10) ? (rng.u32() & mlx5::kQpnMask) : qpn;
  w.ctrl.fm_ce_se = rng.chance(50) ? uint8_t(mlx5::kCtrlCqUpdate) : rng.chance(50) ? 0 : uint8_t(rng.u32());
  w.ctrl.imm = rng.u32();
  const bool coherent = !rng.chance(chaos);
  w.raddr = pools.addr(rng);
  w.rkey = pools.key(rng);
  w.swap_add = rng.u64();
  w.compare = rng.chance(50) ? 0 : rng.u64();
  w.max_index = rng.u32();
  w.qpn_cqn = rng.u32() & mlx5::kQpnMask;
  const bool can_inline = w.ctrl.opcode != mlx5::kOpRdmaRead && w.ctrl.opcode != mlx5::kOpAtomicCs &&
                          w.ctrl.opcode != mlx5::kOpAtomicFa;
  if (can_inline && rng.chance(20)) {
    w.is_inline = true;
    w.inline_len = uint32_t(1 + rng.below(inline_src.size()));
    w.inline_data = inline_src.data();
  } else {
    w.num_sge = uint32_t(rng.below(5));
    for (uint32_t i = 0; i < w.num_sge; ++i) w.sge[i] = coherent ? pools.coherent_sge(rng) : pools.sge(rng);
    if (w.ctrl.opcode == mlx5::kOpAtomicCs || w.ctrl.opcode == mlx5::kOpAtomicFa) {
      w.num_sge = 1;
      if (coherent) w.sge[0] = pools.coherent_sge(rng, 8);
      w.sge[0].addr &= ~uint64_t{7};
      w.sge[0].length = 8;
    }
  }
  if (coherent) {
    uint32_t total = w.is_inline ? w.inline_len : 0;
    for (uint32_t i = 0; i < w.num_sge; ++i) total += w.sge[i].length;
    std::tie(w.raddr, w.rkey) = pools.coherent_remote(rng, total);
  }
  return w;
}

// Writes random WQEs into `qp`'s raw ring (at most `budget` WQEBBs) and
// returns the new producer. `chaos` (0..100) sets how many are garbage.
uint32_t write_random_wqes(Rng& rng, QueuePair& qp, const Pools& pools, uint32_t budget,
                           const std::vector<std::byte>& inline_src, unsigned chaos) {
  const mlx5::SendRingView ring = must(qp.raw_send_ring(), "raw_send_ring");
  uint32_t pi = qp.send_producer();
  const uint32_t end = pi + budget;
  while (pi < end) {
    const uint32_t room = end - pi;
    // 0: random bytes, 1: a structured WQE, 2: a mutated structured WQE.
    const unsigned mode = rng.chance(chaos / 2) ? 0 : rng.chance(chaos / 2) ? 2 : 1;
    if (mode != 0) {
      mlx5::SendWqe w = random_wqe(rng, pools, qp.qpn(), inline_src, chaos);
      const uint32_t ds = mlx5::send_wqe_ds(w);
      if (ds != 0 && mlx5::ds_to_wqebbs(ds) <= room) {
        const uint32_t n = mlx5::encode_send_wqe(ring, pi, w);
        if (n != 0) {
          if (mode == 2) {  // mutate a few bytes of the valid WQE
            const int flips = 1 + int(rng.below(4));
            for (int f = 0; f < flips; ++f) {
              const uint32_t off = uint32_t(rng.below(size_t(n) * mlx5::kSendWqeBB));
              ring.ds(pi, off / mlx5::kDsBytes)[off % mlx5::kDsBytes] = std::byte(uint8_t(rng.u32()));
            }
          }
          pi += n;
          continue;
        }
      }
    }
    // Random bytes, sometimes with a plausible ctrl header so decoding goes deeper.
    const uint32_t n = uint32_t(1 + rng.below(std::min<uint32_t>(room, 4)));
    for (uint32_t i = 0; i < n; ++i) rng.fill(ring.bb(pi + i), mlx5::kSendWqeBB);
    if (rng.chance(60)) {
      mlx5::CtrlFields c;
      c.opcode = rng.chance(70) ? kValidOpcodes[rng.below(std::size(kValidOpcodes))] : uint8_t(rng.u32());
      c.wqe_index = uint16_t(pi);
      c.qpn = qp.qpn();
      c.ds = uint8_t(rng.chance(70) ? 1 + rng.below(n * mlx5::kDsPerBB) : rng.below(64));
      c.fm_ce_se = uint8_t(rng.u32());
      const mlx5::CtrlSeg seg = mlx5::encode_ctrl(c);
      std::memcpy(ring.bb(pi), &seg, sizeof seg);
    }
    pi += n;
  }
  return pi;
}

struct FuzzConfig {
  uint64_t base_seed;
  uint64_t iterations;
};
FuzzConfig fuzz_config(uint64_t default_iterations) {
  const uint64_t seed = env_u64("HYPERLOOP_FUZZ_SEED", 0);
  return {seed, env_u64("HYPERLOOP_FUZZ_ITERATIONS", seed ? 1 : default_iterations)};
}
uint64_t iteration_seed(const FuzzConfig& cfg, uint64_t i, uint64_t salt) {
  return cfg.base_seed ? cfg.base_seed : (salt * 0x9E3779B97F4A7C15ull) ^ (i + 1) * 0xBF58476D1CE4E5B9ull;
}

NodeOptions fast_timeouts() {
  NodeOptions o;
  o.nic.ack_timeout_ns = 10'000;  // 100 steps: a dead peer is detected quickly
  o.nic.rnr_delay_ns = 1'000;
  o.cqe_count = 64;
  return o;
}

// ---- random WQEs in a raw send ring -----------------------------------------------------------

TEST(Robustness, RandomRawSendWqesNeverCorruptMemoryOrHang) {
  const FuzzConfig cfg = fuzz_config(2000);
  soft::Fabric fabric;
  soft::ManualExecutor ex(0xF022);
  Node a(fabric, ex, fast_timeouts()), b(fabric, ex, fast_timeouts());
  Rng setup_rng(1);
  Arena aa(a, a.new_pd(), setup_rng, 0);
  Arena ba(b, b.new_pd(), setup_rng, 1);
  Pools pools;
  pools.add(aa, {aa.rw, aa.ro, aa.foreign}, /*local=*/true);
  pools.add(ba, {ba.rw, ba.ro, ba.foreign}, /*local=*/false);
  std::vector<std::byte> inline_src(128);
  StatusHistogram hist;

  for (uint64_t i = 0; i < cfg.iterations && !::testing::Test::HasFailure(); ++i) {
    const uint64_t seed = iteration_seed(cfg, i, 1);
    SCOPED_TRACE("HYPERLOOP_FUZZ_SEED=" + std::to_string(seed));
    Rng rng(seed);
    rng.fill(inline_src.data(), inline_src.size());
    CompletionQueue& acq = a.new_cq(256);
    CompletionQueue& bcq = b.new_cq(256);
    QpAttr qa_attr;
    qa_attr.send_cq = qa_attr.recv_cq = &acq;
    qa_attr.send_wqebbs = 64;
    qa_attr.rnr_retry = uint8_t(rng.below(3));
    qa_attr.retry_count = 1;
    QpAttr qb_attr;
    qb_attr.send_cq = qb_attr.recv_cq = &bcq;
    qb_attr.recv_wqes = 16;
    const uint32_t rights = rng.chance(70) ? rn::kAccessAllRemote : uint32_t(rng.below(16)) & rn::kAccessAllRemote;
    QpPair p = connect(a, qa_attr, b, qb_attr, rights);

    const int recvs = int(rng.below(5));
    for (int r = 0; r < recvs; ++r) {
      std::vector<Sge> sg(rng.below(4));
      for (Sge& s : sg) s = rng.chance(70) ? Sge{ba.rw->remote_addr(rng.below(Arena::kRegion - 64)),
                                                uint32_t(rng.below(512)), ba.rw->lkey()}
                                           : pools.sge(rng);
      (void)post_recv(*p.b, sg, r);  // may be refused; never a crash
    }
    const unsigned chaos = std::array<unsigned, 4>{3, 15, 50, 100}[rng.below(4)];
    const uint32_t producer =
        write_random_wqes(rng, *p.a, pools, uint32_t(1 + rng.below(64)), inline_src, chaos);
    HL_EXPECT_OK(p.a->ring_send_doorbell(producer));

    EXPECT_TRUE(ex.run_until_idle(500'000)) << "the NICs did not become idle";
    EXPECT_TRUE(completions_valid(acq, {p.a->qpn()}, hist));
    EXPECT_TRUE(completions_valid(bcq, {p.b->qpn()}, hist));
    EXPECT_TRUE(settled_state(*p.a, "requester"));
    EXPECT_TRUE(settled_state(*p.b, "responder"));
    EXPECT_TRUE(aa.check_and_accept("requester memory"));
    EXPECT_TRUE(ba.check_and_accept("responder memory"));

    a.destroy_qp(p.a);
    b.destroy_qp(p.b);
    a.destroy_cq(&acq);
    b.destroy_cq(&bcq);
  }
  hist.print("raw ring");
}

// ---- random bytes scattered into a managed queue's pre-posted WQE -----------------------------------

TEST(Robustness, RandomPatchesOfAManagedWqeNeverCorruptMemoryOrHang) {
  const FuzzConfig cfg = fuzz_config(500);
  soft::Fabric fabric;
  soft::ManualExecutor ex(0xF023);
  Node a(fabric, ex, fast_timeouts()), b(fabric, ex, fast_timeouts()), c(fabric, ex, fast_timeouts());
  Rng setup_rng(2);
  Arena aa(a, a.new_pd(), setup_rng, 2);
  Arena ba(b, b.new_pd(), setup_rng, 3);
  Arena ca(c, c.new_pd(), setup_rng, 4);
  Pools pools;
  pools.add(aa, {aa.rw, aa.ro, aa.foreign}, /*local=*/false);
  pools.add(ba, {ba.rw, ba.ro, ba.foreign}, /*local=*/true);
  pools.add(ca, {ca.rw, ca.ro, ca.foreign}, /*local=*/false);
  StatusHistogram hist;

  for (uint64_t i = 0; i < cfg.iterations && !::testing::Test::HasFailure(); ++i) {
    const uint64_t seed = iteration_seed(cfg, i, 2);
    SCOPED_TRACE("HYPERLOOP_FUZZ_SEED=" + std::to_string(seed));
    Rng rng(seed);
    CompletionQueue& a_cq = a.new_cq(64);
    CompletionQueue& b_rcq = b.new_cq(64);
    CompletionQueue& b_fwd_cq = b.new_cq(64);
    CompletionQueue& b_master_cq = b.new_cq(64);
    CompletionQueue& c_cq = c.new_cq(64);
    auto attr = [](CompletionQueue& s, CompletionQueue& r) {
      QpAttr at;
      at.send_cq = &s;
      at.recv_cq = &r;
      at.retry_count = 1;
      at.rnr_retry = 1;
      return at;
    };
    QpAttr in_attr = attr(b_fwd_cq, b_rcq);
    QpPair in = connect(a, attr(a_cq, a_cq), b, in_attr);
    QpAttr fwd_attr = attr(b_fwd_cq, b_fwd_cq);
    fwd_attr.managed_send = true;
    fwd_attr.send_wqebbs = 64;
    QpPair fwd = connect(b, fwd_attr, c, attr(c_cq, c_cq));
    QpAttr master_attr = attr(b_master_cq, b_master_cq);
    master_attr.cross_channel = true;
    QpPair master = connect(b, master_attr, c, attr(c_cq, c_cq));

    const mlx5::SendRingView ring = must(fwd.a->raw_send_ring(), "raw_send_ring");
    MemoryRegion& ring_mr = b.register_memory(ring.base, ring.bytes(), kLocalWrite);

    // A valid pre-posted WQE on the managed queue, B -> C.
    const uint32_t pi = fwd.a->send_producer();
    const Sge b_sge{ba.rw->remote_addr(8 * rng.below(256)), uint32_t(8 + 8 * rng.below(32)), ba.rw->lkey()};
    const uint64_t c_addr = ca.rw->remote_addr(8 * rng.below(256));
    Status posted;
    switch (rng.below(5)) {
      case 0: posted = post_write(*fwd.a, b_sge, c_addr, ca.rw->rkey(), kSig, 1); break;
      case 1: posted = post_read(*fwd.a, b_sge, c_addr, ca.rw->rkey(), kSig, 1); break;
      case 2:
        (void)post_recv(*fwd.b, Sge{ca.rw->remote_addr(0), 1024, ca.rw->lkey()}, 9);
        posted = post_send_msg(*fwd.a, b_sge, kSig, 1);
        break;
      case 3: posted = post_cas(*fwd.a, Sge{b_sge.addr, 8, b_sge.lkey}, c_addr, ca.rw->rkey(), 0, 1, kSig, 1); break;
      default: posted = post_nop(*fwd.a, kSig, 1); break;
    }
    HL_ASSERT_OK(posted);
    const uint32_t wqe_bbs = uint16_t(fwd.a->send_producer() - pi);
    const uint64_t wqe = addr_of(ring.bb(pi));
    const uint32_t wqe_bytes = wqe_bbs * mlx5::kSendWqeBB;

    // The RECV: the canonical four fields, or random slices of the WQE.
    std::vector<Sge> sg;
    if (rng.chance(50)) {
      sg = {{wqe + mlx5::kRaddrOffset, 8, ring_mr.lkey()},
            {wqe + mlx5::kRkeyOffset, 4, ring_mr.lkey()},
            {wqe + mlx5::kSecondSegOffset + mlx5::kDataByteCountOffset, 4, ring_mr.lkey()},
            {wqe + mlx5::kSecondSegOffset + mlx5::kDataAddrOffset, 8, ring_mr.lkey()}};
    } else {
      const size_t n = 1 + rng.below(4);
      for (size_t s = 0; s < n; ++s) {
        const uint32_t off = uint32_t(rng.below(wqe_bytes));
        sg.push_back({wqe + off, uint32_t(1 + rng.below(wqe_bytes - off)), ring_mr.lkey()});
      }
    }
    uint32_t capacity = 0;
    for (const Sge& s : sg) capacity += s.length;
    HL_ASSERT_OK(post_recv(*in.b, sg, 7));

    // A's message: plausible field values for the canonical layout, else random bytes.
    std::byte* msg = aa.region(0);
    const uint32_t msg_len = rng.chance(85) ? std::min<uint32_t>(capacity, 256)
                                            : uint32_t(rng.below(capacity + 16));
    if (rng.chance(50)) {
      put_be64(msg, pools.addr(rng));
      put_be32(msg + 8, pools.key(rng));
      put_be32(msg + 12, pools.length(rng));
      put_be64(msg + 16, pools.addr(rng));
      rng.fill(msg + 24, 256 - 24);
      if (rng.chance(30)) msg[rng.below(24)] = std::byte(uint8_t(rng.u32()));
    } else {
      rng.fill(msg, 256);
    }
    aa.accept();

    // WAIT for the RECV's completion, then release the (patched) WQE.
    HL_ASSERT_OK(post_wait(*master.a, b_rcq, 0));
    HL_ASSERT_OK(post_send_enable(*master.a, *fwd.a, pi + wqe_bbs + (rng.chance(90) ? 0 : uint32_t(rng.below(3)))));
    HL_ASSERT_OK(post_send_msg(*in.a, Sge{addr_of(msg), msg_len, aa.rw->lkey()}, kSig, 3));

    EXPECT_TRUE(ex.run_until_idle(500'000)) << "the NICs did not become idle";
    EXPECT_TRUE(completions_valid(a_cq, {in.a->qpn()}, hist));
    EXPECT_TRUE(completions_valid(b_rcq, {in.b->qpn()}, hist));
    EXPECT_TRUE(completions_valid(b_fwd_cq, {fwd.a->qpn(), in.b->qpn()}, hist));
    EXPECT_TRUE(completions_valid(b_master_cq, {master.a->qpn()}, hist));
    EXPECT_TRUE(completions_valid(c_cq, {fwd.b->qpn(), master.b->qpn()}, hist));
    for (QueuePair* q : {in.a, in.b, fwd.a, fwd.b, master.a, master.b}) EXPECT_TRUE(settled_state(*q, "qp"));
    EXPECT_TRUE(aa.check_and_accept("A's memory"));
    EXPECT_TRUE(ba.check_and_accept("B's memory"));
    EXPECT_TRUE(ca.check_and_accept("C's memory"));

    for (QueuePair* q : {in.a, master.b, fwd.b}) (q == in.a ? a : c).destroy_qp(q);
    for (QueuePair* q : {in.b, fwd.a, master.a}) b.destroy_qp(q);
    b.destroy_mr(&ring_mr);
    a.destroy_cq(&a_cq);
    c.destroy_cq(&c_cq);
    for (CompletionQueue* q : {&b_rcq, &b_fwd_cq, &b_master_cq}) b.destroy_cq(q);
  }
  hist.print("managed patch");
}

}  // namespace
}  // namespace hyperloop::soft_test
