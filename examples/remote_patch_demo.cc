// hyperloop-demo: the HyperLoop core trick on the software RNIC.
//
// Three NICs on one in-process fabric, all driven by one executor thread:
//
//   A (client) --SEND 24 B--> B (replica) --RDMA WRITE--> C (next in chain)
//
// Node B's application thread sets everything up and then stops making calls.
// Its NIC does the rest on its own:
//   1. b_fwd is a *managed* send queue holding a pre-posted RDMA WRITE whose
//      remote address, rkey, length and source address are placeholders.
//   2. b_fwd's send ring is registered as a memory region, and a RECV on b_in
//      scatters an inbound message straight into those WQE fields.
//   3. b_master (a cross-channel queue) holds WAIT(b_in's recv CQ, CQE 0)
//      followed by SEND_EN(b_fwd): when A's message lands, B's NIC releases
//      the patched WRITE, which reads the WQE only now and writes to C.
//
// Exit status: 0 when C's buffer holds B's data, 1 on any failure or timeout.
#include <array>
#include <chrono>
#include <cinttypes>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "hyperloop/mlx5/wqe.h"
#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"

namespace {

namespace rnic = hyperloop::rnic;
namespace soft = hyperloop::soft;
namespace mlx5 = hyperloop::mlx5;
using hyperloop::Status;
using Clock = std::chrono::steady_clock;

constexpr auto kTimeout = std::chrono::seconds(10);

// Errors are values; the demo reports the first one and exits 1.
#define DEMO_CONCAT_INNER(a, b) a##b
#define DEMO_CONCAT(a, b) DEMO_CONCAT_INNER(a, b)
#define CHECK_OK(expr)                                                                   \
  do {                                                                                   \
    const Status demo_status_ = (expr);                                                  \
    if (!demo_status_.is_ok()) {                                                         \
      std::printf("FAILED: %s: %s\n", #expr, demo_status_.to_string().c_str());          \
      return 1;                                                                          \
    }                                                                                    \
  } while (0)
#define ASSIGN_OR_FAIL(lhs, expr) ASSIGN_OR_FAIL_IMPL(DEMO_CONCAT(demo_result_, __LINE__), lhs, expr)
#define ASSIGN_OR_FAIL_IMPL(tmp, lhs, expr)                                              \
  auto tmp = (expr);                                                                     \
  if (!tmp.is_ok()) {                                                                    \
    std::printf("FAILED: %s: %s\n", #expr, tmp.status().to_string().c_str());            \
    return 1;                                                                            \
  }                                                                                      \
  lhs = std::move(tmp).value()

void step(int n, const char* text) { std::printf("\n[step %d] %s\n", n, text); }

uint64_t addr_of(const void* p) { return reinterpret_cast<uint64_t>(p); }

// Big-endian stores into the message A sends (the wire format of WQE fields).
void put_be64(std::byte* p, uint64_t v) {
  const uint64_t be = mlx5::to_be64(v);
  std::memcpy(p, &be, 8);
}
void put_be32(std::byte* p, uint32_t v) {
  const uint32_t be = mlx5::to_be32(v);
  std::memcpy(p, &be, 4);
}

void print_write_wqe(const char* label, const mlx5::SendRingView& ring, uint32_t pi) {
  mlx5::SendWqe w;
  uint32_t bbs = 0;
  const mlx5::WqeError e = mlx5::decode_send_wqe(ring, pi, &w, &bbs);
  if (e != mlx5::WqeError::kOk) {
    std::printf("    %s: WQE at WQEBB %u does not decode: %.*s\n", label, pi,
                int(mlx5::wqe_error_name(e).size()), mlx5::wqe_error_name(e).data());
    return;
  }
  const uint64_t len = w.num_sge > 0 ? w.sge[0].length : 0;
  std::printf("    %s: opcode=0x%02x wqe_index=%u ds=%u raddr=0x%016" PRIx64 " rkey=0x%08x",
              label, w.ctrl.opcode, w.ctrl.wqe_index, w.ctrl.ds, w.raddr, w.rkey);
  if (w.num_sge > 0) {
    std::printf(" sge={addr=0x%016" PRIx64 " byte_count=%" PRIu64 "%s lkey=0x%08x}", w.sge[0].addr, len,
                len == 0 ? " (= 2 GiB on hardware)" : "", w.sge[0].lkey);
  }
  std::printf("\n");
}

void print_stats(const char* who, const soft::Nic& nic) {
  const soft::NicStats s = nic.stats();
  std::printf("    NIC %-2s wqes_executed=%-3" PRIu64 " packets_sent=%-3" PRIu64 " packets_received=%-3" PRIu64
              " retransmits=%" PRIu64 " rnr_naks=%" PRIu64 " error_cqes=%" PRIu64 " app_calls=%" PRIu64 "\n",
              who, s.wqes_executed, s.packets_sent, s.packets_received, s.retransmits, s.rnr_naks,
              s.error_cqes, s.app_calls);
}

void print_wc(const char* cq_name, const rnic::WorkCompletion& wc) {
  const std::string_view st = rnic::wc_status_name(wc.status);
  std::printf("    %s: qpn=%u wr_id=%" PRIu64 " opcode=%d status=%.*s syndrome=0x%02x byte_len=%u wqe_counter=%u\n",
              cq_name, wc.qpn, wc.wr_id, int(wc.opcode), int(st.size()), st.data(), wc.syndrome,
              wc.byte_len, wc.wqe_counter);
}

// Polls `cq` for one completion until the deadline. Returns false on timeout.
bool poll_one(rnic::CompletionQueue& cq, rnic::WorkCompletion* out, Clock::time_point deadline) {
  while (Clock::now() < deadline) {
    auto n = cq.poll(std::span<rnic::WorkCompletion>(out, 1));
    if (!n.is_ok()) {
      std::printf("    poll failed: %s\n", n.status().to_string().c_str());
      return false;
    }
    if (*n == 1) return true;
    std::this_thread::yield();
  }
  return false;
}

// Compares C's buffer with the expected bytes, word by word, with acquire
// loads: C's NIC thread writes it concurrently.
bool buffer_equals(const std::byte* buf, const std::byte* expected, size_t len) {
  for (size_t i = 0; i < len; i += 8) {
    const uint64_t got = __atomic_load_n(reinterpret_cast<const uint64_t*>(buf + i), __ATOMIC_ACQUIRE);
    uint64_t want;
    std::memcpy(&want, expected + i, 8);
    if (got != want) return false;
  }
  return true;
}

int run() {
  std::printf("hyperloop-demo: a replica forwards a write with no work from its CPU\n");
  std::printf("(software RNIC, mlx5 WQE rings, in-process fabric, one executor thread)\n");

  // Memory first: it must outlive the memory regions registered over it.
  constexpr std::string_view kPayload = "replicated by B's NIC: B's CPU did nothing";
  constexpr size_t kBufBytes = 64;
  static_assert(kPayload.size() <= kBufBytes);
  constexpr uint32_t kMsgBytes = 24;  // raddr 8 + rkey 4 + byte_count 4 + addr 8
  alignas(64) std::array<std::byte, 64> a_msg{};
  alignas(64) std::array<std::byte, kBufBytes> b_src{};
  alignas(64) std::array<std::byte, kBufBytes> c_dst{};
  alignas(64) std::array<std::byte, kBufBytes> expected{};
  std::memcpy(b_src.data(), kPayload.data(), kPayload.size());
  std::memcpy(expected.data(), kPayload.data(), kPayload.size());

  // ---------------------------------------------------------------------------
  step(1, "fabric, three software NICs A, B, C on one SingleThreadExecutor");
  soft::Fabric fabric;
  soft::SingleThreadExecutor executor;
  soft::NicOptions oa, ob, oc;
  oa.name = "A";
  ob.name = "B";
  oc.name = "C";
  ASSIGN_OR_FAIL(std::unique_ptr<soft::Nic> nic_a, fabric.create_nic(oa));
  ASSIGN_OR_FAIL(std::unique_ptr<soft::Nic> nic_b, fabric.create_nic(ob));
  ASSIGN_OR_FAIL(std::unique_ptr<soft::Nic> nic_c, fabric.create_nic(oc));
  executor.add(*nic_a);
  executor.add(*nic_b);
  executor.add(*nic_c);
  {
    const rnic::DeviceCaps& caps = nic_b->caps();
    std::printf("    NICs %s, %s, %s; B caps: cross_channel=%d managed_queues=%d raw_send_ring=%d max_sge=%u\n",
                nic_a->name().c_str(), nic_b->name().c_str(), nic_c->name().c_str(), caps.cross_channel,
                caps.managed_queues, caps.raw_send_ring, caps.max_sge);
    if (!caps.cross_channel || !caps.managed_queues || !caps.raw_send_ring) {
      std::printf("FAILED: the software RNIC should offer cross-channel, managed queues and raw rings\n");
      return 1;
    }
  }

  // Protection domains and completion queues (before the QPs that use them).
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::ProtectionDomain> pd_a, nic_a->alloc_pd());
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::ProtectionDomain> pd_b, nic_b->alloc_pd());
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::ProtectionDomain> pd_c, nic_c->alloc_pd());
  rnic::CqAttr small;
  small.cqe_count = 64;
  rnic::CqAttr waited_on = small;
  waited_on.ignore_overrun = true;  // only WAITed on, never polled by B's CPU
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::CompletionQueue> cq_a, nic_a->create_cq(small));
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::CompletionQueue> cq_b_in_recv, nic_b->create_cq(waited_on));
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::CompletionQueue> cq_b_fwd, nic_b->create_cq(small));
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::CompletionQueue> cq_b_ctl, nic_b->create_cq(small));
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::CompletionQueue> cq_c, nic_c->create_cq(small));

  // ---------------------------------------------------------------------------
  step(2, "queue pairs: A.a_out <-> B.b_in, B.b_fwd (managed) <-> C.c_in, B.b_master <-> B.b_loop");
  rnic::QpAttr qa;
  qa.send_cq = cq_a.get();
  qa.recv_cq = cq_a.get();
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::QueuePair> a_out, pd_a->create_qp(qa));

  rnic::QpAttr qb_in;
  qb_in.send_cq = cq_b_ctl.get();
  qb_in.recv_cq = cq_b_in_recv.get();
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::QueuePair> b_in, pd_b->create_qp(qb_in));

  rnic::QpAttr qb_fwd;
  qb_fwd.send_cq = cq_b_fwd.get();
  qb_fwd.recv_cq = cq_b_ctl.get();
  qb_fwd.managed_send = true;  // runs only what a SEND_EN released
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::QueuePair> b_fwd, pd_b->create_qp(qb_fwd));

  rnic::QpAttr qb_master;
  qb_master.send_cq = cq_b_ctl.get();
  qb_master.recv_cq = cq_b_ctl.get();
  qb_master.cross_channel = true;  // may post WAIT / SEND_EN
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::QueuePair> b_master, pd_b->create_qp(qb_master));
  rnic::QpAttr qb_loop;
  qb_loop.send_cq = cq_b_ctl.get();
  qb_loop.recv_cq = cq_b_ctl.get();
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::QueuePair> b_loop, pd_b->create_qp(qb_loop));

  rnic::QpAttr qc;
  qc.send_cq = cq_c.get();
  qc.recv_cq = cq_c.get();
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::QueuePair> c_in, pd_c->create_qp(qc));

  CHECK_OK(rnic::connect_pair(*a_out, *b_in));
  CHECK_OK(rnic::connect_pair(*b_fwd, *c_in));
  CHECK_OK(rnic::connect_pair(*b_master, *b_loop));
  std::printf("    a_out=%u b_in=%u b_fwd=%u c_in=%u b_master=%u b_loop=%u, all %.*s\n", a_out->qpn(),
              b_in->qpn(), b_fwd->qpn(), c_in->qpn(), b_master->qpn(), b_loop->qpn(),
              int(rnic::qp_state_name(b_fwd->state()).size()), rnic::qp_state_name(b_fwd->state()).data());

  // Memory regions over the application buffers.
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::MemoryRegion> a_msg_mr,
                 pd_a->register_memory(a_msg.data(), a_msg.size(), rnic::kAccessLocalWrite));
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::MemoryRegion> b_src_mr,
                 pd_b->register_memory(b_src.data(), b_src.size(), rnic::kAccessLocalWrite));
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::MemoryRegion> c_dst_mr,
                 pd_c->register_memory(c_dst.data(), c_dst.size(),
                                       rnic::kAccessLocalWrite | rnic::kAccessRemoteWrite));

  // ---------------------------------------------------------------------------
  step(3, "B pre-posts an RDMA WRITE with placeholder fields on managed b_fwd (it does not run)");
  ASSIGN_OR_FAIL(const mlx5::SendRingView fwd_ring, b_fwd->raw_send_ring());
  const uint32_t wqe_pi = b_fwd->send_producer();
  {
    // Only the lkey is real: B's source buffer is B's own memory. The remote
    // address, rkey, length and source address are patched by A's message.
    // The placeholder length must not be 0: a zero-length SGE is left out of
    // the WQE (as rdma-core's mlx5 provider does), leaving no data segment to
    // patch. Source address 0 lies in no memory region, so the WRITE would
    // fail with a protection error if it ever ran unpatched.
    const rnic::Sge placeholder{0, 1, b_src_mr->lkey()};
    rnic::SendWr wr;
    wr.wr_id = 1;
    wr.opcode = rnic::WrOpcode::kRdmaWrite;
    wr.flags = rnic::kSendSignaled;
    wr.sg = std::span<const rnic::Sge>(&placeholder, 1);
    wr.remote_addr = 0;
    wr.rkey = 0;
    CHECK_OK(b_fwd->post_send(wr));
  }
  const uint32_t fwd_limit = b_fwd->send_producer();
  std::printf("    WRITE at WQEBB %u..%u of b_fwd's %u-WQEBB ring (%p)\n", wqe_pi, fwd_limit - 1,
              fwd_ring.wqebb_count, static_cast<void*>(fwd_ring.base));
  print_write_wqe("pre-posted", fwd_ring, wqe_pi);

  // ---------------------------------------------------------------------------
  step(4, "B registers b_fwd's send ring as a memory region (local write)");
  ASSIGN_OR_FAIL(std::unique_ptr<rnic::MemoryRegion> ring_mr,
                 pd_b->register_memory(fwd_ring.base, fwd_ring.bytes(), rnic::kAccessLocalWrite));
  std::printf("    ring MR: addr=%p length=%zu lkey=0x%08x\n", static_cast<void*>(ring_mr->addr()),
              ring_mr->length(), ring_mr->lkey());

  // ---------------------------------------------------------------------------
  step(5, "B pre-posts a RECV on b_in whose scatter list points into the WRITE WQE's fields");
  auto field = [&](uint32_t offset) {
    return addr_of(fwd_ring.ds(wqe_pi, offset / mlx5::kDsBytes) + offset % mlx5::kDsBytes);
  };
  const uint32_t ring_lkey = ring_mr->lkey();
  const std::array<rnic::Sge, 4> scatter = {{
      {field(mlx5::kRaddrOffset), 8, ring_lkey},                                     // raddr, BE64
      {field(mlx5::kRkeyOffset), 4, ring_lkey},                                      // rkey, BE32
      {field(mlx5::kSecondSegOffset + mlx5::kDataByteCountOffset), 4, ring_lkey},    // byte_count, BE32
      {field(mlx5::kSecondSegOffset + mlx5::kDataAddrOffset), 8, ring_lkey},         // addr, BE64
  }};
  {
    rnic::RecvWr rwr;
    rwr.wr_id = 2;
    rwr.sg = scatter;
    CHECK_OK(b_in->post_recv(rwr));
  }
  std::printf("    scatter: WQE+%u (raddr, 8 B), WQE+%u (rkey, 4 B), WQE+%u (byte_count, 4 B), WQE+%u (addr, 8 B)\n",
              mlx5::kRaddrOffset, mlx5::kRkeyOffset, mlx5::kSecondSegOffset + mlx5::kDataByteCountOffset,
              mlx5::kSecondSegOffset + mlx5::kDataAddrOffset);

  // ---------------------------------------------------------------------------
  step(6, "B posts on b_master: WAIT(b_in's recv CQ, CQE 0), then SEND_EN(b_fwd, up to its producer)");
  {
    rnic::SendWr wait;
    wait.wr_id = 3;
    wait.opcode = rnic::WrOpcode::kWait;
    wait.wait_cq = cq_b_in_recv.get();
    wait.index = 0;
    CHECK_OK(b_master->post_send(wait));
    rnic::SendWr enable;
    enable.wr_id = 4;
    enable.opcode = rnic::WrOpcode::kSendEnable;
    enable.enable_qp = b_fwd.get();
    enable.index = fwd_limit;
    CHECK_OK(b_master->post_send(enable));
  }
  std::printf("    WAIT cqn=%u index=0; SEND_EN qpn=%u index=%u\n", cq_b_in_recv->cqn(), b_fwd->qpn(), fwd_limit);

  // Let the NICs settle: the WRITE must still be held by the managed queue.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!buffer_equals(c_dst.data(), std::array<std::byte, kBufBytes>{}.data(), kBufBytes) ||
      b_fwd->state() != rnic::QpState::kRts || nic_b->stats().error_cqes != 0) {
    std::printf("FAILED: the managed queue ran before A sent anything (b_fwd %.*s, B error CQEs %" PRIu64 ")\n",
                int(rnic::qp_state_name(b_fwd->state()).size()), rnic::qp_state_name(b_fwd->state()).data(),
                nic_b->stats().error_cqes);
    return 1;
  }
  const uint64_t b_app_calls_at_done = nic_b->stats().app_calls;
  std::printf("\n[B] application thread done: from here on B's CPU makes no call "
              "(B app_calls so far: %" PRIu64 "; C's buffer still empty)\n",
              b_app_calls_at_done);

  // ---------------------------------------------------------------------------
  step(7, "A SENDs a 24-byte message: C's address, C's rkey, the length, B's source address (big-endian)");
  put_be64(a_msg.data() + 0, c_dst_mr->remote_addr(0));
  put_be32(a_msg.data() + 8, c_dst_mr->rkey());
  put_be32(a_msg.data() + 12, uint32_t(kPayload.size()));
  put_be64(a_msg.data() + 16, b_src_mr->remote_addr(0));
  std::printf("    raddr=0x%016" PRIx64 " rkey=0x%08x length=%zu addr=0x%016" PRIx64 "\n",
              c_dst_mr->remote_addr(0), c_dst_mr->rkey(), kPayload.size(), b_src_mr->remote_addr(0));
  const auto t_send = Clock::now();
  const auto deadline = t_send + kTimeout;
  {
    const rnic::Sge sge = a_msg_mr->sge(0, kMsgBytes);
    rnic::SendWr send;
    send.wr_id = 5;
    send.opcode = rnic::WrOpcode::kSend;
    send.flags = rnic::kSendSignaled;
    send.sg = std::span<const rnic::Sge>(&sge, 1);
    CHECK_OK(a_out->post_send(send));
  }

  // ---------------------------------------------------------------------------
  step(8, "waiting (A polls its CQ; the observer polls C's memory)");
  auto fail = [&](const char* why) {
    std::printf("FAILED: %s\n", why);
    std::printf("    QP states: a_out=%.*s b_in=%.*s b_fwd=%.*s b_master=%.*s c_in=%.*s\n",
                int(rnic::qp_state_name(a_out->state()).size()), rnic::qp_state_name(a_out->state()).data(),
                int(rnic::qp_state_name(b_in->state()).size()), rnic::qp_state_name(b_in->state()).data(),
                int(rnic::qp_state_name(b_fwd->state()).size()), rnic::qp_state_name(b_fwd->state()).data(),
                int(rnic::qp_state_name(b_master->state()).size()), rnic::qp_state_name(b_master->state()).data(),
                int(rnic::qp_state_name(c_in->state()).size()), rnic::qp_state_name(c_in->state()).data());
    const std::pair<const char*, rnic::CompletionQueue*> cqs[] = {
        {"cq_a", cq_a.get()}, {"cq_b_in_recv", cq_b_in_recv.get()}, {"cq_b_fwd", cq_b_fwd.get()},
        {"cq_b_ctl", cq_b_ctl.get()}, {"cq_c", cq_c.get()}};
    for (const auto& [name, cq] : cqs) {
      rnic::WorkCompletion wcs[16];
      auto n = cq->poll(std::span<rnic::WorkCompletion>(wcs));
      if (!n.is_ok()) {
        std::printf("    %s: %s\n", name, n.status().to_string().c_str());
        continue;
      }
      for (size_t i = 0; i < *n; ++i) print_wc(name, wcs[i]);
    }
    print_write_wqe("WQE now", fwd_ring, wqe_pi);
    print_stats("A", *nic_a);
    print_stats("B", *nic_b);
    print_stats("C", *nic_c);
    return 1;
  };

  rnic::WorkCompletion wc;
  if (!poll_one(*cq_a, &wc, deadline)) return fail("A's SEND did not complete in time");
  const auto t_acked = Clock::now();
  if (wc.status != rnic::WcStatus::kSuccess) {
    print_wc("cq_a", wc);
    return fail("A's SEND completed with an error");
  }
  std::printf("    A: SEND completed (B's NIC acknowledged it) after %lld us\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::microseconds>(t_acked - t_send).count()));

  while (!buffer_equals(c_dst.data(), expected.data(), kBufBytes)) {
    if (Clock::now() >= deadline) return fail("C's buffer did not receive B's data in time");
    std::this_thread::yield();
  }
  const auto t_landed = Clock::now();
  std::printf("    C: buffer holds B's data after %lld us: \"%.*s\"\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::microseconds>(t_landed - t_send).count()),
              int(kPayload.size()), reinterpret_cast<const char*>(c_dst.data()));

  // ---------------------------------------------------------------------------
  step(9, "what happened on B (inspected after the fact)");
  const uint64_t b_app_calls_after = nic_b->stats().app_calls;
  std::printf("    B app_calls since its application thread was done: %" PRIu64 "\n",
              b_app_calls_after - b_app_calls_at_done);
  if (b_app_calls_after != b_app_calls_at_done) return fail("B's application made calls after it was done");
  std::printf("    the RECV patched the pre-posted WQE in b_fwd's ring; WAIT saw CQE 0 on b_in's recv CQ;\n"
              "    SEND_EN released b_fwd; the WRITE read the patched WQE and wrote to C\n");
  print_write_wqe("patched", fwd_ring, wqe_pi);
  if (!poll_one(*cq_b_fwd, &wc, deadline)) return fail("the forwarded WRITE's completion did not appear");
  print_wc("cq_b_fwd", wc);
  if (wc.status != rnic::WcStatus::kSuccess) return fail("the forwarded WRITE completed with an error");

  // Let the last acknowledgements settle so the counters are final.
  while (!(nic_a->idle() && nic_b->idle() && nic_c->idle()) && Clock::now() < deadline) {
    std::this_thread::yield();
  }
  std::printf("\nNIC statistics:\n");
  print_stats("A", *nic_a);
  print_stats("B", *nic_b);
  print_stats("C", *nic_c);

  std::printf("\nOK: C received B's data; B's NIC forwarded it with no call from B's CPU\n");
  return 0;
}

}  // namespace

int main() { return run(); }
