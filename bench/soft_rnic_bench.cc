// soft_rnic_bench: the software RNIC's data path, measured.
//
//   BM_WriteLatency/<executor>/<bytes>     one signaled RDMA WRITE, busy-poll its CQE
//   BM_WriteThroughput/<executor>/<bytes>  a window of WRITEs in flight (every 16th signaled)
//   BM_ChainLatency/<executor>             client SEND -> B's NIC: WAIT(recv CQ) ->
//                                          SEND_EN(managed QP) -> managed WRITE lands in A
//
// <executor> is SingleThread (soft::SingleThreadExecutor: one thread polls both
// NICs) or ThreadPerNic (soft::ThreadPerNicExecutor: one thread per NIC). No
// thread is pinned. Note: on a 2-core machine ThreadPerNic runs two NIC threads
// plus the benchmark thread, which busy-polls too, so three spinning threads
// share two cores and scheduler preemption shows up in the tail (and the
// median); that is expected, not a NIC defect.
//
// Each benchmark function call builds a fresh soft::Fabric with two NICs (A,
// B). Latency benchmarks time every iteration with std::chrono::steady_clock
// as well and report p50_ns / p99_ns / p999_ns / max_ns as user counters, so
// medians and percentiles come from the same run as Google Benchmark's mean.
// Any error status, error completion or timeout is reported through
// State::SkipWithError; no numbers are reported from a broken run.
//
// Run (CI smoke): soft_rnic_bench --benchmark_min_time=0.01
// Run (figures):  soft_rnic_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"
#include "hyperloop/status.h"

namespace {

using namespace hyperloop;  // NOLINT
using bench::cpu_relax;
using bench::report_latencies;
using rnic::CompletionQueue;
using rnic::MemoryRegion;
using rnic::QueuePair;
using rnic::WorkCompletion;
using Clk = std::chrono::steady_clock;

// A busy poll that sees nothing for this long is declared hung.
constexpr auto kPollTimeout = std::chrono::seconds(10);

enum class Exec { kSingleThread, kThreadPerNic };

// Page-aligned, zeroed memory to register.
class Buffer {
 public:
  explicit Buffer(size_t bytes) : size_((bytes + 4095) & ~size_t{4095}) {
    ptr_ = static_cast<std::byte*>(std::aligned_alloc(4096, size_));
    if (ptr_ != nullptr) std::memset(ptr_, 0, size_);
  }
  ~Buffer() { std::free(ptr_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  std::byte* data() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  size_t size_;
  std::byte* ptr_;
};

// Two NICs on a private fabric, each with a PD, attached to one executor.
// Declared first in every bed so it is destroyed last (after QPs, MRs, CQs).
struct Testbed {
  soft::Fabric fabric;
  std::unique_ptr<soft::Executor> exec;
  std::unique_ptr<soft::Nic> a, b;
  std::unique_ptr<rnic::ProtectionDomain> pa, pb;

  Status init(Exec kind) {
    if (kind == Exec::kSingleThread) {
      exec = std::make_unique<soft::SingleThreadExecutor>();
    } else {
      exec = std::make_unique<soft::ThreadPerNicExecutor>();
    }
    // The in-process wire never loses a packet, so a retransmission is only
    // ever spurious: a NIC thread starved by the scheduler (2 cores, other
    // load) for longer than the ACK timeout. A long timeout keeps such a run
    // from ending in kRetryExceeded (8 timeouts in a row); the "retransmits"
    // counter still shows any that happen.
    soft::NicOptions oa;
    oa.name = "benchA";
    oa.ack_timeout_ns = 1'000'000'000;
    soft::NicOptions ob = oa;
    ob.name = "benchB";
    HL_ASSIGN_OR_RETURN(a, fabric.create_nic(oa));
    HL_ASSIGN_OR_RETURN(b, fabric.create_nic(ob));
    exec->add(*a);
    exec->add(*b);
    HL_ASSIGN_OR_RETURN(pa, a->alloc_pd());
    HL_ASSIGN_OR_RETURN(pb, b->alloc_pd());
    return Status::ok();
  }

  uint64_t retransmits() const { return a->stats().retransmits + b->stats().retransmits; }
};

Result<std::unique_ptr<CompletionQueue>> make_cq(soft::Nic& nic, uint32_t entries) {
  rnic::CqAttr attr;
  attr.cqe_count = std::min(entries, nic.caps().max_cqe);
  return nic.create_cq(attr);
}

Status register_buf(rnic::ProtectionDomain& pd, const Buffer& buf, uint32_t access,
                    std::unique_ptr<MemoryRegion>* out) {
  if (buf.data() == nullptr) return resource_exhausted("aligned_alloc failed");
  HL_ASSIGN_OR_RETURN(*out, pd.register_memory(buf.data(), buf.size(), access));
  return Status::ok();
}

std::string wc_error(const char* what, const WorkCompletion& wc) {
  return std::string(what) + ": error completion " + std::string(rnic::wc_status_name(wc.status)) +
         " (wr_id " + std::to_string(wc.wr_id) + ", syndrome " + std::to_string(wc.syndrome) + ")";
}

// Busy-polls `cq` until exactly `n` completions are taken (n <= out.size()
// is not required: completions are consumed in chunks of up to 16). Every
// completion is checked for success. Returns an error message, or "".
std::string poll_n(CompletionQueue& cq, size_t n, const char* what,
                   std::vector<WorkCompletion>* taken = nullptr) {
  WorkCompletion wc[16];
  size_t got = 0;
  uint32_t spins = 0;
  auto deadline = Clk::now() + kPollTimeout;
  while (got < n) {
    auto r = cq.poll(std::span<WorkCompletion>(wc, std::min<size_t>(16, n - got)));
    if (!r.is_ok()) return std::string(what) + ": poll: " + r.status().to_string();
    for (size_t i = 0; i < *r; ++i) {
      if (wc[i].status != rnic::WcStatus::kSuccess) return wc_error(what, wc[i]);
      if (taken != nullptr) taken->push_back(wc[i]);
    }
    got += *r;
    if (*r == 0) {
      cpu_relax();
      if ((++spins & 1023) == 0 && Clk::now() > deadline)
        return std::string(what) + ": timed out waiting for completions (" + std::to_string(got) +
               "/" + std::to_string(n) + ")";
    }
  }
  return {};
}

// The benchmark now running, for error messages (benchmarks run one at a time).
std::string g_running;

// Reports the error on stderr as well as through SkipWithError: with
// --benchmark_repetitions, libbenchmark 1.7.1 (Debian 12) can crash in
// ComputeStats when some repetitions failed and others did not
// (google/benchmark#1406), before printing the error; this line survives.
void skip(benchmark::State& state, const std::string& msg) {
  std::fprintf(stderr, "soft_rnic_bench: %s: %s\n", g_running.c_str(), msg.c_str());
  state.SkipWithError(msg.c_str());
}

void set_running(const char* family, Exec kind, int64_t arg = -1) {
  g_running.assign(family);
  g_running.append(kind == Exec::kSingleThread ? "/SingleThread" : "/ThreadPerNic");
  if (arg >= 0) g_running.append("/").append(std::to_string(arg));
}

#define BENCH_CHECK_OK(state, expr)             \
  do {                                          \
    ::hyperloop::Status bench_st_ = (expr);     \
    if (!bench_st_.is_ok()) {                   \
      skip((state), bench_st_.to_string());     \
      return;                                   \
    }                                           \
  } while (0)

#define BENCH_CHECK_MSG(state, expr)            \
  do {                                          \
    std::string bench_msg_ = (expr);            \
    if (!bench_msg_.empty()) {                  \
      skip((state), bench_msg_);                \
      return;                                   \
    }                                           \
  } while (0)

// ---- RDMA WRITE: A writes into B's memory --------------------------------------------------
struct WriteBed {
  Testbed tb;
  std::unique_ptr<CompletionQueue> a_cq, b_cq;
  Buffer a_buf{64 * 1024}, b_buf{64 * 1024};
  std::unique_ptr<MemoryRegion> a_mr, b_mr;
  std::unique_ptr<QueuePair> a_qp, b_qp;

  Status init(Exec kind) {
    HL_RETURN_IF_ERROR(tb.init(kind));
    HL_ASSIGN_OR_RETURN(a_cq, make_cq(*tb.a, 1024));
    HL_ASSIGN_OR_RETURN(b_cq, make_cq(*tb.b, 1024));
    HL_RETURN_IF_ERROR(register_buf(*tb.pa, a_buf, rnic::kAccessLocalWrite, &a_mr));
    HL_RETURN_IF_ERROR(register_buf(*tb.pb, b_buf, rnic::kAccessLocalWrite | rnic::kAccessRemoteWrite,
                                    &b_mr));
    rnic::QpAttr qa;
    qa.send_cq = a_cq.get();
    qa.recv_cq = a_cq.get();
    qa.send_wqebbs = std::min<uint32_t>(1024, tb.a->caps().max_send_wqebbs);
    HL_ASSIGN_OR_RETURN(a_qp, tb.pa->create_qp(qa));
    rnic::QpAttr qb;
    qb.send_cq = b_cq.get();
    qb.recv_cq = b_cq.get();
    HL_ASSIGN_OR_RETURN(b_qp, tb.pb->create_qp(qb));
    HL_RETURN_IF_ERROR(rnic::connect_pair(*a_qp, *b_qp, rnic::kAccessRemoteWrite));
    for (std::byte* p = a_buf.data(); p < a_buf.data() + a_buf.size(); ++p)
      *p = static_cast<std::byte>(reinterpret_cast<uintptr_t>(p) * 131u);
    return Status::ok();
  }

  rnic::SendWr write_wr(const rnic::Sge& sge, uint64_t wr_id, bool signaled) const {
    rnic::SendWr wr;
    wr.wr_id = wr_id;
    wr.opcode = rnic::WrOpcode::kRdmaWrite;
    wr.flags = signaled ? uint32_t{rnic::kSendSignaled} : 0u;
    wr.sg = std::span<const rnic::Sge>(&sge, 1);
    wr.remote_addr = b_mr->remote_addr(0);
    wr.rkey = b_mr->rkey();
    return wr;
  }
};

void BM_WriteLatency(benchmark::State& state, Exec kind) {
  set_running("BM_WriteLatency", kind, state.range(0));
  const auto bytes = static_cast<uint32_t>(state.range(0));
  WriteBed bed;
  BENCH_CHECK_OK(state, bed.init(kind));
  const rnic::Sge sge = bed.a_mr->sge(0, bytes);

  std::vector<uint64_t> lat_ns;
  lat_ns.reserve(static_cast<size_t>(state.max_iterations));
  uint64_t n = 0;
  for (auto _ : state) {
    const auto t0 = Clk::now();
    BENCH_CHECK_OK(state, bed.a_qp->post_send(bed.write_wr(sge, n++, true)));
    BENCH_CHECK_MSG(state, poll_n(*bed.a_cq, 1, "WRITE"));
    const auto t1 = Clk::now();
    lat_ns.push_back(static_cast<uint64_t>(std::chrono::nanoseconds(t1 - t0).count()));
  }
  if (std::memcmp(bed.a_buf.data(), bed.b_buf.data(), bytes) != 0) {
    skip(state, "WRITE completed but the target memory does not hold the payload");
    return;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * bytes);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  report_latencies(state, lat_ns);
  state.counters["retransmits"] = static_cast<double>(bed.tb.retransmits());
}

// One iteration = kBatch WRITEs with at most kWindow in flight, every
// kSignalEvery-th signaled (the batch is drained before the iteration ends).
void BM_WriteThroughput(benchmark::State& state, Exec kind) {
  set_running("BM_WriteThroughput", kind, state.range(0));
  constexpr uint64_t kBatch = 512, kWindow = 64, kSignalEvery = 16;
  static_assert(kBatch % kSignalEvery == 0 && kWindow % kSignalEvery == 0);
  const auto bytes = static_cast<uint32_t>(state.range(0));
  WriteBed bed;
  BENCH_CHECK_OK(state, bed.init(kind));
  const rnic::Sge sge = bed.a_mr->sge(0, bytes);

  WorkCompletion wc[8];
  for (auto _ : state) {
    uint64_t posted = 0, done = 0;
    uint32_t spins = 0;
    auto deadline = Clk::now() + kPollTimeout;
    while (done < kBatch) {
      while (posted < kBatch && posted - done < kWindow) {
        ++posted;
        // wr_id = how many WRITEs of this batch are complete once this one is.
        BENCH_CHECK_OK(state, bed.a_qp->post_send(bed.write_wr(sge, posted, posted % kSignalEvery == 0)));
      }
      auto r = bed.a_cq->poll(wc);
      if (!r.is_ok()) {
        skip(state, "WRITE poll: " + r.status().to_string());
        return;
      }
      for (size_t i = 0; i < *r; ++i) {
        if (wc[i].status != rnic::WcStatus::kSuccess) {
          skip(state, wc_error("WRITE", wc[i]));
          return;
        }
        done = std::max(done, wc[i].wr_id);
      }
      if (*r == 0) {
        cpu_relax();
        if ((++spins & 1023) == 0 && Clk::now() > deadline) {
          skip(state, "WRITE throughput: timed out waiting for completions");
          return;
        }
      }
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBatch * bytes));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kBatch));
  state.counters["retransmits"] = static_cast<double>(bed.tb.retransmits());
}

// ---- WAIT -> SEND_EN chain ----------------------------------------------------------------
//
// A: a_cli --SEND--> B: b_in (recv CQ b_rcq, never touched by a B thread in the loop)
// B: b_master (cross_channel):  ... WAIT(b_rcq, n) ; SEND_EN(b_managed, limit after WRITE n) ...
// B: b_managed (managed_send):  ... WRITE n: 8 bytes (value n+1) -> A's flag word ...
// A: the benchmark thread spins on the flag word until it reads n+1.
//
// The rings are armed in batches of up to kArm iterations; re-arming (posting
// RECVs, managed WRITEs, WAIT/SEND_EN pairs and reaping B's CQs) happens with
// the timer paused, between batches, when every armed iteration has finished.
struct ChainBed {
  static constexpr uint32_t kRing = 4096;  // send WQEBBs, recv WQEs and CQEs, clamped to caps

  // One memory region per host. A: [0,64) the SEND payload, [64,72) the
  // flag word. B: [0,64) the receive slot, [64, 64 + 8*kRing) WRITE sources.
  static constexpr size_t kMsgOff = 0, kFlagOff = 64, kRecvOff = 0, kSrcOff = 64;

  Testbed tb;
  std::unique_ptr<CompletionQueue> a_scq, a_rcq, b_scq, b_rcq;
  Buffer a_buf{128}, b_buf{kSrcOff + 8 * kRing};
  std::unique_ptr<MemoryRegion> a_mr, b_mr;
  std::unique_ptr<QueuePair> a_cli, a_ret, a_peer, b_in, b_master, b_managed;
  uint32_t arm_batch = 0;  // iterations per batch

  Status init(Exec kind) {
    HL_RETURN_IF_ERROR(tb.init(kind));
    const rnic::DeviceCaps& cb = tb.b->caps();
    if (!cb.cross_channel || !cb.managed_queues)
      return not_supported("device lacks cross-channel WAIT/SEND_EN or managed queues");
    const uint32_t send_ring = std::min(kRing, cb.max_send_wqebbs);
    const uint32_t recv_ring = std::min(kRing, cb.max_recv_wqes);
    const uint32_t cqes = std::min(kRing, cb.max_cqe);
    // Master: 2 WQEBBs per iteration; managed: 1; RECV: 1; CQEs on b_rcq: 1.
    arm_batch = std::min({1024u, send_ring / 4, recv_ring / 2, cqes / 2});
    if (arm_batch == 0) return not_supported("device queues too small for the chain benchmark");

    HL_ASSIGN_OR_RETURN(a_scq, make_cq(*tb.a, cqes));
    HL_ASSIGN_OR_RETURN(a_rcq, make_cq(*tb.a, 256));
    HL_ASSIGN_OR_RETURN(b_scq, make_cq(*tb.b, 256));
    HL_ASSIGN_OR_RETURN(b_rcq, make_cq(*tb.b, cqes));
    HL_RETURN_IF_ERROR(register_buf(*tb.pa, a_buf, rnic::kAccessLocalWrite | rnic::kAccessRemoteWrite,
                                    &a_mr));
    HL_RETURN_IF_ERROR(register_buf(*tb.pb, b_buf, rnic::kAccessLocalWrite, &b_mr));

    rnic::QpAttr a_attr;
    a_attr.send_cq = a_scq.get();
    a_attr.recv_cq = a_rcq.get();
    a_attr.send_wqebbs = send_ring;
    HL_ASSIGN_OR_RETURN(a_cli, tb.pa->create_qp(a_attr));
    a_attr.send_wqebbs = 64;
    HL_ASSIGN_OR_RETURN(a_ret, tb.pa->create_qp(a_attr));
    HL_ASSIGN_OR_RETURN(a_peer, tb.pa->create_qp(a_attr));

    rnic::QpAttr in_attr;
    in_attr.send_cq = b_scq.get();
    in_attr.recv_cq = b_rcq.get();  // b_rcq holds b_in's receive CQEs and nothing else
    in_attr.send_wqebbs = 64;
    in_attr.recv_wqes = recv_ring;
    in_attr.max_recv_sge = 1;
    HL_ASSIGN_OR_RETURN(b_in, tb.pb->create_qp(in_attr));

    rnic::QpAttr m_attr;
    m_attr.send_cq = b_scq.get();
    m_attr.recv_cq = b_scq.get();
    m_attr.send_wqebbs = send_ring;
    m_attr.cross_channel = true;
    HL_ASSIGN_OR_RETURN(b_master, tb.pb->create_qp(m_attr));
    m_attr.cross_channel = false;
    m_attr.managed_send = true;
    HL_ASSIGN_OR_RETURN(b_managed, tb.pb->create_qp(m_attr));

    HL_RETURN_IF_ERROR(rnic::connect_pair(*a_cli, *b_in, rnic::kAccessRemoteWrite));
    HL_RETURN_IF_ERROR(rnic::connect_pair(*b_managed, *a_ret, rnic::kAccessRemoteWrite));
    HL_RETURN_IF_ERROR(rnic::connect_pair(*b_master, *a_peer, rnic::kAccessRemoteWrite));
    return Status::ok();
  }

  uint64_t* flag() const { return reinterpret_cast<uint64_t*>(a_buf.data() + kFlagOff); }
  size_t src_off(uint64_t n) const { return kSrcOff + 8 * (n % kRing); }
  uint64_t* src(uint64_t n) const { return reinterpret_cast<uint64_t*>(b_buf.data() + src_off(n)); }

  // Arms iterations [first, first + count). B's queues must be drained of the
  // previous batch (reap() did that).
  Status arm(uint64_t first, uint32_t count) {
    std::vector<uint32_t> limit(count);
    const rnic::Sge recv_sge = b_mr->sge(kRecvOff, 64);
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t n = first + i;
      *src(n) = n + 1;
      rnic::RecvWr rwr;
      rwr.wr_id = n;
      rwr.sg = std::span<const rnic::Sge>(&recv_sge, 1);
      HL_RETURN_IF_ERROR(b_in->post_recv(rwr));
    }
    std::vector<rnic::Sge> src_sge(count);
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t n = first + i;
      src_sge[i] = b_mr->sge(src_off(n), 8);
      rnic::SendWr wr;
      wr.wr_id = n;
      wr.opcode = rnic::WrOpcode::kRdmaWrite;
      wr.flags = (i + 1 == count) ? uint32_t{rnic::kSendSignaled} : 0u;
      wr.sg = std::span<const rnic::Sge>(&src_sge[i], 1);
      wr.remote_addr = a_mr->remote_addr(kFlagOff);
      wr.rkey = a_mr->rkey();
      HL_RETURN_IF_ERROR(b_managed->post_send(wr));
      limit[i] = b_managed->send_producer() & 0xffff;  // exclusive limit through WRITE n
    }
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t n = first + i;
      rnic::SendWr wait;
      wait.wr_id = n;
      wait.opcode = rnic::WrOpcode::kWait;
      wait.wait_cq = b_rcq.get();
      wait.index = static_cast<uint32_t>(n & 0xffffff);  // b_rcq's CQE n is RECV n
      HL_RETURN_IF_ERROR(b_master->post_send(wait));
      rnic::SendWr en;
      en.wr_id = n;
      en.opcode = rnic::WrOpcode::kSendEnable;
      en.flags = (i + 1 == count) ? uint32_t{rnic::kSendSignaled} : 0u;
      en.enable_qp = b_managed.get();
      en.index = limit[i];
      HL_RETURN_IF_ERROR(b_master->post_send(en));
    }
    return Status::ok();
  }

  // After a fully consumed batch of `count`: B's recv CQ holds `count` RECV
  // CQEs; B's send CQ holds the batch's last SEND_EN and last managed WRITE.
  std::string reap(uint32_t count) {
    std::vector<WorkCompletion> taken;
    taken.reserve(count);
    if (auto e = poll_n(*b_rcq, count, "B recv CQ", &taken); !e.empty()) return e;
    for (const auto& wc : taken)
      if (wc.opcode != rnic::WcOpcode::kRecv) return "B recv CQ: unexpected completion opcode";
    taken.clear();
    if (auto e = poll_n(*b_scq, 2, "B send CQ (SEND_EN, managed WRITE)", &taken); !e.empty()) return e;
    return {};
  }
};

void BM_ChainLatency(benchmark::State& state, Exec kind) {
  set_running("BM_ChainLatency", kind);
  ChainBed bed;
  BENCH_CHECK_OK(state, bed.init(kind));
  const uint64_t total = static_cast<uint64_t>(state.max_iterations);
  const rnic::Sge msg_sge = bed.a_mr->sge(ChainBed::kMsgOff, 8);

  uint64_t n = 0;          // next iteration
  uint64_t armed_end = 0;  // iterations [0, armed_end) are armed
  uint32_t last_batch = 0;
  uint64_t sends_done = 0;
  auto arm_next = [&]() -> Status {
    last_batch = static_cast<uint32_t>(std::min<uint64_t>(bed.arm_batch, total - armed_end));
    if (last_batch == 0) last_batch = 1;  // defensive: never arm nothing
    HL_RETURN_IF_ERROR(bed.arm(armed_end, last_batch));
    armed_end += last_batch;
    return Status::ok();
  };
  BENCH_CHECK_OK(state, arm_next());

  std::vector<uint64_t> lat_ns;
  lat_ns.reserve(static_cast<size_t>(total));
  WorkCompletion wc[16];
  auto reap_sends = [&]() -> std::string {
    auto r = bed.a_scq->poll(wc);
    if (!r.is_ok()) return "A send CQ: poll: " + r.status().to_string();
    for (size_t i = 0; i < *r; ++i)
      if (wc[i].status != rnic::WcStatus::kSuccess) return wc_error("client SEND", wc[i]);
    sends_done += *r;
    return {};
  };

  for (auto _ : state) {
    if (n == armed_end) {
      state.PauseTiming();
      BENCH_CHECK_MSG(state, poll_n(*bed.a_scq, n - sends_done, "client SEND"));
      sends_done = n;
      BENCH_CHECK_MSG(state, bed.reap(last_batch));
      BENCH_CHECK_OK(state, arm_next());
      state.ResumeTiming();
    }
    const uint64_t want = n + 1;
    rnic::SendWr wr;
    wr.wr_id = n;
    wr.opcode = rnic::WrOpcode::kSend;
    wr.flags = rnic::kSendSignaled;
    wr.sg = std::span<const rnic::Sge>(&msg_sge, 1);
    std::memcpy(bed.a_buf.data() + ChainBed::kMsgOff, &n, sizeof n);

    const auto t0 = Clk::now();
    BENCH_CHECK_OK(state, bed.a_cli->post_send(wr));
    uint32_t spins = 0;
    while (__atomic_load_n(bed.flag(), __ATOMIC_ACQUIRE) != want) {
      cpu_relax();
      if ((++spins & 255) == 0) {
        BENCH_CHECK_MSG(state, reap_sends());  // surfaces a failed SEND at once
        if ((spins & 65535) == 0 && Clk::now() - t0 > kPollTimeout) {
          skip(state, "chain: managed WRITE " + std::to_string(n) +
                          " never landed (WAIT/SEND_EN did not fire)");
          return;
        }
      }
    }
    const auto t1 = Clk::now();
    lat_ns.push_back(static_cast<uint64_t>(std::chrono::nanoseconds(t1 - t0).count()));
    BENCH_CHECK_MSG(state, reap_sends());
    ++n;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  report_latencies(state, lat_ns);
  state.counters["retransmits"] = static_cast<double>(bed.tb.retransmits());
}

}  // namespace

BENCHMARK_CAPTURE(BM_WriteLatency, SingleThread, Exec::kSingleThread)->Arg(64)->Arg(4096)->UseRealTime();
BENCHMARK_CAPTURE(BM_WriteLatency, ThreadPerNic, Exec::kThreadPerNic)->Arg(64)->Arg(4096)->UseRealTime();
BENCHMARK_CAPTURE(BM_WriteThroughput, SingleThread, Exec::kSingleThread)->Arg(64)->Arg(4096)->UseRealTime();
BENCHMARK_CAPTURE(BM_WriteThroughput, ThreadPerNic, Exec::kThreadPerNic)->Arg(64)->Arg(4096)->UseRealTime();
BENCHMARK_CAPTURE(BM_ChainLatency, SingleThread, Exec::kSingleThread)->UseRealTime();
BENCHMARK_CAPTURE(BM_ChainLatency, ThreadPerNic, Exec::kThreadPerNic)->UseRealTime();

BENCHMARK_MAIN();
