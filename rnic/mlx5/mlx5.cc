// rnic/mlx5: rnic.h on a ConnectX through mlx5dv + DevX (see hyperloop/mlx5_rnic.h).
//
// Every queue is built from PRM commands (prm_cmd.h) over memory this
// process owns: the rings are AlignedBuffers registered as DevX umems, so
// the codec (hyperloop/mlx5/wqe.h) reads and writes exactly the bytes the
// NIC executes, and a ring can also be registered as a memory region for
// remote patching. Nothing here goes through the mlx5 provider's own QP or
// CQ code: its bookkeeping (cur_post, wrid, BlueFlame offset) never drifts
// from what the NIC sees, because it is not involved.
//
// Never run on ConnectX hardware (see docs/mlx5.md): every choice that only
// hardware can confirm is marked UNVERIFIED.
#include "hyperloop/mlx5_rnic.h"

#include <infiniband/mlx5dv.h>
#include <infiniband/verbs.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "hyperloop/log.h"
#include "hyperloop/mlx5/wqe.h"
#include "prm_cmd.h"
#include "verbs/verbs_util.h"
#include "wr_codec.h"

namespace hyperloop::mlx5dev {
namespace {

namespace prm = mlx5::prm;
using rnic::QpState;
using rnic::internal::AlignedBuffer;
using verbs::util::errno_text;
using verbs::util::from_errno;

// Stores to the rings and doorbell records are seen by the device before the
// doorbell that follows (rdma-core's udma_to_device_barrier / mmio_flush_writes).
inline void device_barrier() {
#if defined(__x86_64__)
  asm volatile("sfence" ::: "memory");
#elif defined(__aarch64__)
  asm volatile("dmb oshst" ::: "memory");
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

inline void store_be32(std::byte* p, uint32_t v) {
  const uint32_t be = mlx5::to_be32(v);
  __atomic_store_n(reinterpret_cast<uint32_t*>(p), be, __ATOMIC_RELEASE);
}

uint8_t log2_of(uint32_t pow2) { return uint8_t(__builtin_ctz(pow2)); }

// ---- owned DevX objects ---------------------------------------------------------
struct ObjDeleter {
  void operator()(mlx5dv_devx_obj* o) const {
    if (int rc = mlx5dv_devx_obj_destroy(o))
      log(LogLevel::kError, "mlx5", "devx_obj_destroy_failed", {{"error", errno_text(rc)}});
  }
};
using Obj = std::unique_ptr<mlx5dv_devx_obj, ObjDeleter>;
struct UmemDeleter {
  void operator()(mlx5dv_devx_umem* u) const {
    if (int rc = mlx5dv_devx_umem_dereg(u))
      log(LogLevel::kError, "mlx5", "umem_dereg_failed", {{"error", errno_text(rc)}});
  }
};
using Umem = std::unique_ptr<mlx5dv_devx_umem, UmemDeleter>;

// One PRM command through the general-command channel (queries).
Status general_cmd(ibv_context* ctx, const prm::Bytes& in, std::vector<std::byte>& out, const char* what) {
  if (int rc = mlx5dv_devx_general_cmd(ctx, in.data(), in.size(), out.data(), out.size())) {
    Status s = prm::check_cmd_out(out, what);
    return s.is_ok() ? from_errno(rc, what) : s;
  }
  return prm::check_cmd_out(out, what);
}

// The firmware's status and syndrome when a DevX call failed, else errno.
Status devx_failure(int err, const std::vector<std::byte>& out, const char* what) {
  Status s = prm::check_cmd_out(out, what);
  return s.is_ok() ? from_errno(err, what) : s;
}

Result<Umem> register_umem(ibv_context* ctx, void* addr, size_t bytes, const char* what) {
  mlx5dv_devx_umem* u = mlx5dv_devx_umem_reg(ctx, addr, bytes, IBV_ACCESS_LOCAL_WRITE);
  if (!u) return from_errno(errno, std::string("mlx5dv_devx_umem_reg(") + what + ")");
  return Umem(u);
}

// ---- the device context -----------------------------------------------------------
class Mlx5Qp;

struct Ctx {
  ibv_context* ctx = nullptr;
  std::string name;
  uint8_t port = 1;
  bool roce = true;
  int gid_index = 0;
  ibv_gid gid{};
  std::array<uint8_t, 6> mac{};
  uint16_t lid = 0;
  ibv_mtu mtu = IBV_MTU_1024;
  HcaCaps hca;
  rnic::DeviceCaps caps;
  uint32_t eqn = 0;
  mlx5dv_devx_uar* uar = nullptr;  // one NC UAR page for every doorbell of this context
  bool atomics_host_order = false;

  ~Ctx() {
    if (uar) mlx5dv_devx_free_uar(uar);
    if (ctx) ibv_close_device(ctx);
  }
};

// ---- CQs (memory regions: verbs::util::VerbsMr, ibv_reg_mr) ---------------------------
class Mlx5Cq final : public rnic::CompletionQueue {
 public:
  Ctx* d = nullptr;
  AlignedBuffer ring_buf, dbr_buf;
  Umem ring_umem, dbr_umem;
  Obj obj;
  mlx5::CqRingView ring;
  uint32_t number = 0;
  uint32_t ci = 0;  // free-running consumer index

  // QPs whose completions land here, for wr_ids (under mu; poll takes it
  // once per call).
  std::mutex mu;
  std::vector<Mlx5Qp*> users;

  uint32_t cqn() const override { return number; }
  uint32_t size() const override { return ring.cqe_count; }
  Result<size_t> poll(std::span<rnic::WorkCompletion> out) override;
  Result<mlx5::CqRingView> raw_ring() override { return ring; }
  uint32_t consumer_index() const override { return ci; }
  void set_consumer_index(uint32_t v) override {
    ci = v;
    store_be32(dbr_buf.data(), v & mlx5::kCqIndexMask);  // dbrec[MLX5_CQ_SET_CI]
  }
  void add_user(Mlx5Qp* q) {
    std::lock_guard<std::mutex> l(mu);
    users.push_back(q);
  }
  void remove_user(Mlx5Qp* q) {
    std::lock_guard<std::mutex> l(mu);
    std::erase(users, q);
  }
};

// ---- queue pairs ---------------------------------------------------------------------
class Mlx5Qp final : public rnic::QueuePair {
 public:
  Ctx* d = nullptr;
  rnic::QpAttr attr;
  Mlx5Cq* scq = nullptr;
  Mlx5Cq* rcq = nullptr;
  AlignedBuffer wq_buf, dbr_buf;  // wq_buf: the receive queue, then the send queue
  Umem wq_umem, dbr_umem;
  Obj obj;
  uint32_t number = 0;
  uint32_t psn = 0;
  mlx5::SendRingView sq;
  mlx5::RecvRingView rq;
  std::atomic<QpState> cached{QpState::kReset};

  // Data path (one thread at a time, rnic.h).
  uint32_t sq_post = 0;  // next free WQEBB counter
  uint32_t rq_post = 0;
  std::vector<uint64_t> sq_wrid, rq_wrid;
  std::vector<uint8_t> sq_bbs;  // WQEBBs of the WQE starting at each slot (structured posts)
  // What the polled CQEs have retired (the NIC's consumer as far as we know).
  std::atomic<uint32_t> sq_retired{0}, rq_retired{0};
  std::byte inline_scratch[mlx5::kMaxInlineBytes];

  ~Mlx5Qp() override {
    scq->remove_user(this);
    if (rcq != scq) rcq->remove_user(this);
    obj.reset();  // the QP before the umems it runs on
  }

  uint32_t qpn() const override { return number; }

  QpState state() const override {
    std::vector<std::byte> out(prm::kQueryQpOutBytes, std::byte{0});
    const prm::Bytes in = prm::query_qp_in(number);
    if (mlx5dv_devx_obj_query(obj.get(), in.data(), in.size(), out.data(), out.size()) != 0 ||
        !prm::check_cmd_out(out, "QUERY_QP").is_ok())
      return cached.load();
    switch (prm::queried_qp_state(out)) {
      case prm::kQpcRst: return QpState::kReset;
      case prm::kQpcInit: return QpState::kInit;
      case prm::kQpcRtr: return QpState::kRtr;
      case prm::kQpcRts: return QpState::kRts;
      default: return QpState::kError;  // SQER, SQD, ERR, ...: not a state the interface runs in
    }
  }

  rnic::QpAddress address() const override {
    verbs::util::PeerAddr a;
    a.qpn = number;
    a.psn = psn;
    a.lid = d->lid;
    a.mtu = uint8_t(d->mtu);
    a.link_layer = d->roce ? IBV_LINK_LAYER_ETHERNET : IBV_LINK_LAYER_INFINIBAND;
    a.gid = d->gid;
    a.has_mac = d->roce;
    a.mac = d->mac;
    return verbs::util::encode_addr(a);
  }

  Status modify(const prm::Bytes& in, QpState to, const char* what) {
    std::vector<std::byte> out(prm::kCmdOutBytes, std::byte{0});
    if (int rc = mlx5dv_devx_obj_modify(obj.get(), in.data(), in.size(), out.data(), out.size()))
      return devx_failure(rc, out, what);
    HL_RETURN_IF_ERROR(prm::check_cmd_out(out, what));
    cached.store(to);
    return Status::ok();
  }

  Status init(uint32_t access) override {
    if (access & ~rnic::kAccessAllRemote) return invalid_argument("init takes remote access flags only");
    if (cached.load() != QpState::kReset) return failed_precondition("init needs a QP in RESET");
    prm::Rst2InitParams p;
    p.qpn = number;
    p.port = d->port;
    p.rre = access & rnic::kAccessRemoteRead;
    p.rwe = access & rnic::kAccessRemoteWrite;
    // Remote atomics only where caps.atomics (host-order 8-byte CAS/FAA):
    // elsewhere the right is not granted, and an atomic aimed at this QP
    // fails at the responder (a requester here is refused at post_send).
    p.rae = (access & rnic::kAccessRemoteAtomic) && d->caps.atomics;
    p.atomic_mode = p.rae ? prm::kAtomicModeIbComp : 0;
    return modify(prm::rst2init_in(p), QpState::kInit, "RST2INIT_QP");
  }

  Status connect(const rnic::QpAddress& remote) override {
    verbs::util::PeerAddr peer;
    if (!verbs::util::decode_addr(remote, &peer)) return invalid_argument("not an rdma-core QP address");
    const bool peer_roce = peer.link_layer == IBV_LINK_LAYER_ETHERNET;
    if (peer_roce != d->roce)
      return invalid_argument("the peer's link layer differs from " + d->name + "'s (RoCE vs InfiniBand)");
    if (d->roce && !peer.has_mac)
      return invalid_argument("the peer's address carries no MAC (a DevX QP on RoCE addresses its peer by MAC)");
    if (cached.load() != QpState::kInit) return failed_precondition("connect needs a QP in INIT");
    prm::Init2RtrParams p;
    p.qpn = number;
    p.port = d->port;
    p.mtu = uint8_t(std::min<int>(peer.mtu, d->mtu));  // IBV_MTU_* = the PRM's encoding
    p.log_msg_max = d->hca.log_max_msg;
    p.remote_qpn = peer.qpn;
    p.next_rcv_psn = peer.psn;
    p.min_rnr_nak = 12;  // 0.64 ms, as rnic/verbs
    p.log_rra_max = uint8_t(std::min<uint32_t>(d->hca.log_max_ra_res_qp, 4));
    p.roce = d->roce;
    p.rlid = peer.lid;
    std::memcpy(p.rgid.data(), peer.gid.raw, 16);
    p.rmac = peer.mac;
    p.src_addr_index = uint8_t(d->gid_index);
    p.hop_limit = 64;
    // RoCE v2 source port in the range the kernel's mlx5_ib uses for flows
    // (0xc000..0xffff), spread by the QP pair.
    p.udp_sport = uint16_t(0xc000 | ((number ^ peer.qpn ^ (peer.qpn >> 14)) & 0x3fff));
    return modify(prm::init2rtr_in(p), QpState::kRtr, "INIT2RTR_QP");
  }

  Status ready_to_send() override {
    if (cached.load() != QpState::kRtr) return failed_precondition("ready_to_send needs a QP in RTR");
    prm::Rtr2RtsParams p;
    p.qpn = number;
    p.port = d->port;
    p.retry_count = attr.retry_count;
    p.rnr_retry = attr.rnr_retry;
    p.ack_timeout = attr.ack_timeout;
    p.next_send_psn = psn;
    p.log_sra_max = uint8_t(std::min<uint32_t>(d->hca.log_max_ra_req_qp, 4));
    return modify(prm::rtr2rts_in(p), QpState::kRts, "RTR2RTS_QP");
  }

  Status set_error() override { return modify(prm::qp_2err_in(number), QpState::kError, "2ERR_QP"); }

  Status reset() override {
    HL_RETURN_IF_ERROR(modify(prm::qp_2rst_in(number), QpState::kReset, "2RST_QP"));
    std::memset(wq_buf.data(), 0, wq_buf.size());
    std::memset(dbr_buf.data(), 0, 8);
    sq_post = rq_post = 0;
    sq_retired.store(0);
    rq_retired.store(0);
    std::fill(sq_wrid.begin(), sq_wrid.end(), rnic::kRawWrId);
    std::fill(rq_wrid.begin(), rq_wrid.end(), rnic::kRawWrId);
    psn = verbs::util::random_psn();
    return Status::ok();
  }

  // Publishes the send producer: the doorbell record, then (not for a
  // managed queue: only a SEND_EN may release it) the 64-bit doorbell with
  // the first 8 bytes of the last WQE's ctrl segment, as rdma-core's
  // post_send_db does.
  void send_doorbell(uint32_t last_wqe) {
    if (attr.managed_send) return;  // no DBR, no doorbell (MLNX libmlx5's NO_DOORBELL)
    device_barrier();
    store_be32(dbr_buf.data() + 4, sq_post & mlx5::kWqeIndexMask);  // dbrec[MLX5_SND_DBR]
    device_barrier();
    uint64_t ctrl8;
    std::memcpy(&ctrl8, sq.bb(last_wqe), 8);
    *static_cast<volatile uint64_t*>(d->uar->reg_addr) = ctrl8;
    device_barrier();
  }

  void recv_doorbell() {
    if (attr.managed_recv) return;  // released by RECV_EN only
    device_barrier();
    store_be32(dbr_buf.data(), rq_post & mlx5::kWqeIndexMask);  // dbrec[MLX5_RCV_DBR]
  }

  Status post_send(const rnic::SendWr& wr) override {
    const QpState s = cached.load(std::memory_order_relaxed);
    if (s != QpState::kRts && s != QpState::kError)
      return failed_precondition("post_send needs a QP in RTS (or ERROR, to flush)");
    rnic::internal::RingLimits lim{d->caps.max_sge, d->caps.max_inline_data, attr.cross_channel, d->caps.atomics};
    uint32_t wait_cqn = 0, enable_qpn = 0;
    if (wr.opcode == rnic::WrOpcode::kWait && wr.wait_cq) {
      if (!dynamic_cast<const Mlx5Cq*>(wr.wait_cq) || static_cast<const Mlx5Cq*>(wr.wait_cq)->d != d)
        return invalid_argument("WAIT on a CQ of another device");
      wait_cqn = wr.wait_cq->cqn();
    }
    if ((wr.opcode == rnic::WrOpcode::kSendEnable || wr.opcode == rnic::WrOpcode::kRecvEnable) && wr.enable_qp) {
      const auto* t = dynamic_cast<const Mlx5Qp*>(wr.enable_qp);
      if (!t || t->d != d) return invalid_argument("SEND_EN/RECV_EN of a QP of another device");
      if (wr.opcode == rnic::WrOpcode::kSendEnable && !t->attr.managed_send)
        return invalid_argument("SEND_EN of a QP that is not managed_send");
      if (wr.opcode == rnic::WrOpcode::kRecvEnable && !t->attr.managed_recv)
        return invalid_argument("RECV_EN of a QP that is not managed_recv");
      enable_qpn = t->number;
    }
    mlx5::SendWqe w;
    HL_RETURN_IF_ERROR(rnic::internal::build_send_wqe(wr, number, lim, wait_cqn, enable_qpn, inline_scratch, &w));
    const uint32_t bbs = mlx5::ds_to_wqebbs(mlx5::send_wqe_ds(w));
    if (const uint32_t used = sq_post - sq_retired.load(std::memory_order_acquire); used + bbs > sq.wqebb_count)
      return resource_exhausted("send queue full: " + std::to_string(used) + " of " + std::to_string(sq.wqebb_count) +
                                " WQEBBs in use, " + std::to_string(bbs) + " needed");
    const uint32_t at = sq_post;
    if (mlx5::encode_send_wqe(sq, at, w) != bbs) return internal_error("WQE encoding failed");
    sq_wrid[at & (sq.wqebb_count - 1)] = wr.wr_id;
    sq_bbs[at & (sq.wqebb_count - 1)] = uint8_t(bbs);
    sq_post += bbs;
    send_doorbell(at);
    return Status::ok();
  }

  Status post_recv(const rnic::RecvWr& wr) override {
    if (cached.load(std::memory_order_relaxed) == QpState::kReset)
      return failed_precondition("post_recv needs a QP out of RESET");
    if (wr.sg.size() > rq.max_sge()) return invalid_argument("too many SGEs for this receive queue");
    if (rq_post + 1 - rq_retired.load(std::memory_order_acquire) > rq.wqe_count)
      return resource_exhausted("receive queue full");
    if (!mlx5::encode_recv_wqe(rq, rq_post, wr.sg)) return invalid_argument("receive WQE does not fit");
    rq_wrid[rq_post & (rq.wqe_count - 1)] = wr.wr_id;
    ++rq_post;
    recv_doorbell();
    return Status::ok();
  }

  Result<mlx5::SendRingView> raw_send_ring() override { return sq; }
  uint32_t send_producer() const override { return sq_post; }

  // Raw posts: the caller wrote WQEs at [send_producer(), producer). They
  // are walked by their ctrl ds (which must tile the range exactly) to find
  // the last one, whose ctrl the doorbell carries.
  Status ring_send_doorbell(uint32_t producer) override {
    if (producer - sq_post > sq.wqebb_count) return out_of_range("doorbell beyond the free part of the send ring");
    uint32_t last = sq_post;
    for (uint32_t i = sq_post; i != producer;) {
      mlx5::CtrlSeg c;
      std::memcpy(&c, sq.bb(i), sizeof c);
      const uint32_t ds = mlx5::from_be32(c.qpn_ds) & 0x3f;
      const uint32_t n = std::max<uint32_t>(1, mlx5::ds_to_wqebbs(ds));
      if (ds == 0 || n > producer - i)
        return invalid_argument("the WQE at send counter " + std::to_string(i) + " (ds " + std::to_string(ds) +
                                ") does not end at or before the doorbell's producer " + std::to_string(producer));
      sq_wrid[i & (sq.wqebb_count - 1)] = rnic::kRawWrId;
      sq_bbs[i & (sq.wqebb_count - 1)] = uint8_t(n);
      last = i;
      i += n;
    }
    if (producer == sq_post) return Status::ok();
    sq_post = producer;
    send_doorbell(last);
    return Status::ok();
  }

  Result<mlx5::RecvRingView> raw_recv_ring() override { return rq; }
  uint32_t recv_producer() const override { return rq_post; }
  Status ring_recv_doorbell(uint32_t producer) override {
    if (producer - rq_post > rq.wqe_count || producer - rq_retired.load(std::memory_order_acquire) > rq.wqe_count)
      return out_of_range("doorbell beyond the free part of the receive ring");
    for (uint32_t i = rq_post; i != producer; ++i) rq_wrid[i & (rq.wqe_count - 1)] = rnic::kRawWrId;
    rq_post = producer;
    recv_doorbell();
    return Status::ok();
  }

  Result<rnic::WritePatchMap> write_patch_map(uint32_t index) override { return rnic::mlx5_write_patch_map(sq, index); }
  Result<rnic::PostedSendWqe> posted_send_wqe(uint32_t index) override {
    return rnic::mlx5_posted_send_wqe(sq, sq_post, index);
  }
};

Result<size_t> Mlx5Cq::poll(std::span<rnic::WorkCompletion> out) {
  size_t n = 0;
  mlx5::CqeFields c;
  std::lock_guard<std::mutex> l(mu);
  while (n < out.size() && mlx5::read_cqe(ring, ci, &c)) {
    uint64_t wr_id = rnic::kRawWrId;
    for (Mlx5Qp* q : users) {
      if (q->number != (c.qpn & mlx5::kQpnMask)) continue;
      if (rnic::internal::is_requester_cqe(c.opcode)) {
        const uint32_t slot = c.wqe_counter & (q->sq.wqebb_count - 1);
        wr_id = q->sq_wrid[slot];
        // Everything up to and including this WQE has left the ring. The
        // CQE's 16-bit counter is widened against what was retired before
        // (fewer than 2^16 WQEBBs are ever outstanding), so the poller never
        // reads the poster's counters.
        const uint32_t old = q->sq_retired.load(std::memory_order_relaxed);
        const uint32_t at = old + ((c.wqe_counter - old) & mlx5::kWqeIndexMask);
        q->sq_retired.store(at + std::max<uint32_t>(1, q->sq_bbs[slot]), std::memory_order_release);
      } else {
        wr_id = q->rq_wrid[c.wqe_counter & (q->rq.wqe_count - 1)];
        const uint32_t old = q->rq_retired.load(std::memory_order_relaxed);
        q->rq_retired.store(old + ((c.wqe_counter - old) & mlx5::kWqeIndexMask) + 1, std::memory_order_release);
      }
      break;
    }
    out[n++] = rnic::internal::to_work_completion(c, wr_id);
    ++ci;
  }
  if (n) store_be32(dbr_buf.data(), ci & mlx5::kCqIndexMask);
  return n;
}

Mlx5Cq* own_cq(Ctx* d, rnic::CompletionQueue* c) {
  auto* q = dynamic_cast<Mlx5Cq*>(c);
  return q && q->d == d ? q : nullptr;
}

// ---- protection domains, the device --------------------------------------------------
class Mlx5Pd final : public rnic::ProtectionDomain {
 public:
  Ctx* d = nullptr;
  ibv_pd* pd = nullptr;
  uint32_t pdn = 0;
  ~Mlx5Pd() override {
    if (pd) ibv_dealloc_pd(pd);
  }

  Result<std::unique_ptr<rnic::MemoryRegion>> register_memory(void* addr, size_t length, uint32_t access) override {
    return verbs::util::register_memory(pd, addr, length, access, d->caps);
  }

  Result<std::unique_ptr<rnic::QueuePair>> create_qp(const rnic::QpAttr& a) override {
    Mlx5Cq* scq = own_cq(d, a.send_cq);
    Mlx5Cq* rcq = own_cq(d, a.recv_cq);
    if (!scq || !rcq) return invalid_argument("QP's CQs must be CQs of the same mlx5 device");
    HL_RETURN_IF_ERROR(rnic::check_qp_sizes(a, d->caps));
    if ((a.cross_channel || a.managed_send || a.managed_recv) && !d->caps.cross_channel)
      return not_supported(d->name + " has no cross-channel (QUERY_HCA_CAP cd = 0): use kCpuForward");
    auto q = std::make_unique<Mlx5Qp>();
    q->d = d;
    q->attr = a;
    q->scq = scq;
    q->rcq = rcq;
    const uint32_t stride = rnic::internal::round_up_pow2(std::max<uint32_t>(a.max_recv_sge, 1)) * mlx5::kDsBytes;
    // The send queue starts right after the receive queue (the NIC computes
    // its offset from log_rq_size and log_rq_stride): keep that a multiple of
    // a WQEBB by holding at least 64 bytes of receive WQEs.
    const uint32_t recv_wqes = std::max<uint32_t>(a.recv_wqes, mlx5::kSendWqeBB / stride);
    const size_t rq_bytes = size_t(recv_wqes) * stride;
    const size_t sq_bytes = size_t(a.send_wqebbs) * mlx5::kSendWqeBB;
    q->wq_buf = AlignedBuffer(rq_bytes + sq_bytes);
    q->dbr_buf = AlignedBuffer(64);
    if (!q->wq_buf.data() || !q->dbr_buf.data()) return resource_exhausted("no memory for the QP's rings");
    q->rq = mlx5::RecvRingView{q->wq_buf.data(), recv_wqes, stride};
    q->sq = mlx5::SendRingView{q->wq_buf.data() + rq_bytes, a.send_wqebbs};
    q->sq_wrid.assign(a.send_wqebbs, rnic::kRawWrId);
    q->sq_bbs.assign(a.send_wqebbs, 1);
    q->rq_wrid.assign(recv_wqes, rnic::kRawWrId);
    HL_ASSIGN_OR_RETURN(q->wq_umem, register_umem(d->ctx, q->wq_buf.data(), q->wq_buf.size(), "QP rings"));
    HL_ASSIGN_OR_RETURN(q->dbr_umem, register_umem(d->ctx, q->dbr_buf.data(), 64, "QP doorbell record"));
    prm::QpParams p;
    p.pdn = pdn;
    p.uar_page = d->uar->page_id;
    p.cqn_snd = scq->number;
    p.cqn_rcv = rcq->number;
    p.log_sq_size = log2_of(a.send_wqebbs);
    p.log_rq_size = log2_of(recv_wqes);
    p.log_rq_stride = uint8_t(log2_of(stride) - 4);
    p.cd_master = a.cross_channel;
    p.cd_slave_send = a.managed_send;
    p.cd_slave_receive = a.managed_recv;
    p.wq_umem_id = q->wq_umem->umem_id;
    p.dbr_umem_id = q->dbr_umem->umem_id;
    const prm::Bytes in = prm::create_qp_in(p);
    std::vector<std::byte> out(prm::kCmdOutBytes, std::byte{0});
    mlx5dv_devx_obj* o = mlx5dv_devx_obj_create(d->ctx, in.data(), in.size(), out.data(), out.size());
    if (!o) return devx_failure(errno, out, "CREATE_QP");
    q->obj.reset(o);
    q->number = prm::created_id(out);
    q->psn = verbs::util::random_psn();
    scq->add_user(q.get());
    if (rcq != scq) rcq->add_user(q.get());
    return std::unique_ptr<rnic::QueuePair>(std::move(q));
  }
};

class Mlx5Device final : public rnic::Device {
 public:
  explicit Mlx5Device(std::unique_ptr<Ctx> c) : c_(std::move(c)) {}
  const rnic::DeviceCaps& caps() const override { return c_->caps; }
  const Ctx& ctx() const { return *c_; }

  Result<std::unique_ptr<rnic::ProtectionDomain>> alloc_pd() override {
    auto pd = std::make_unique<Mlx5Pd>();
    pd->d = c_.get();
    pd->pd = ibv_alloc_pd(c_->ctx);
    if (!pd->pd) return from_errno(errno, "ibv_alloc_pd(" + c_->name + ")");
    mlx5dv_pd dvpd{};
    mlx5dv_obj o{};
    o.pd.in = pd->pd;
    o.pd.out = &dvpd;
    if (int rc = mlx5dv_init_obj(&o, MLX5DV_OBJ_PD)) return from_errno(rc, "mlx5dv_init_obj(PD)");
    pd->pdn = dvpd.pdn;
    return std::unique_ptr<rnic::ProtectionDomain>(std::move(pd));
  }

  Result<std::unique_ptr<rnic::CompletionQueue>> create_cq(const rnic::CqAttr& attr) override {
    HL_RETURN_IF_ERROR(rnic::check_cq_attr(attr, c_->caps));
    if (attr.channel) return not_supported("completion channels are not supported by rnic/mlx5 (yet): poll");
    auto q = std::make_unique<Mlx5Cq>();
    q->d = c_.get();
    q->ring_buf = AlignedBuffer(size_t(attr.cqe_count) * mlx5::kCqeBytes);
    q->dbr_buf = AlignedBuffer(64);
    if (!q->ring_buf.data() || !q->dbr_buf.data()) return resource_exhausted("no memory for the CQ ring");
    q->ring = mlx5::CqRingView{q->ring_buf.data(), attr.cqe_count};
    mlx5::init_cq_ring(q->ring);
    HL_ASSIGN_OR_RETURN(q->ring_umem, register_umem(c_->ctx, q->ring_buf.data(), q->ring_buf.size(), "CQ ring"));
    HL_ASSIGN_OR_RETURN(q->dbr_umem, register_umem(c_->ctx, q->dbr_buf.data(), 64, "CQ doorbell record"));
    prm::CqParams p;
    p.log_cq_size = log2_of(attr.cqe_count);
    p.uar_page = c_->uar->page_id;
    p.eqn = c_->eqn;
    p.cq_umem_id = q->ring_umem->umem_id;
    p.dbr_umem_id = q->dbr_umem->umem_id;
    p.ignore_overrun = attr.ignore_overrun;
    const prm::Bytes in = prm::create_cq_in(p);
    std::vector<std::byte> out(prm::kCmdOutBytes, std::byte{0});
    mlx5dv_devx_obj* o = mlx5dv_devx_obj_create(c_->ctx, in.data(), in.size(), out.data(), out.size());
    if (!o) return devx_failure(errno, out, "CREATE_CQ");
    q->obj.reset(o);
    q->number = prm::created_id(out);
    return std::unique_ptr<rnic::CompletionQueue>(std::move(q));
  }

 private:
  std::unique_ptr<Ctx> c_;
};

Result<HcaCaps> query_caps(ibv_context* ctx) {
  std::vector<std::byte> g(prm::kQueryHcaCapOutBytes, std::byte{0}), a;
  HL_RETURN_IF_ERROR(general_cmd(ctx, prm::query_hca_cap_in(prm::kCapGeneral), g, "QUERY_HCA_CAP(general)"));
  if (prm::get(std::span<const std::byte>(g).subspan(prm::hca_cap::kCapability / 8), prm::hca_cap::kAtomic)) {
    a.assign(prm::kQueryHcaCapOutBytes, std::byte{0});
    HL_RETURN_IF_ERROR(general_cmd(ctx, prm::query_hca_cap_in(prm::kCapAtomic), a, "QUERY_HCA_CAP(atomic)"));
  }
  HcaCaps c;
  HL_RETURN_IF_ERROR(prm::parse_hca_caps(g, a, &c));
  return c;
}

}  // namespace

std::vector<std::string> device_names() {
  std::vector<std::string> out;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) return out;
  for (int i = 0; i < n; ++i)
    if (mlx5dv_is_supported(list[i])) out.emplace_back(ibv_get_device_name(list[i]));
  ibv_free_device_list(list);
  return out;
}

Result<std::unique_ptr<rnic::Device>> open(std::string_view name, const Options& options) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  ibv_device* dev = nullptr;
  std::string found;
  for (int i = 0; list && i < n; ++i) {
    if (!mlx5dv_is_supported(list[i])) continue;
    const std::string nm = ibv_get_device_name(list[i]);
    if (nm == name) dev = list[i];
    found += (found.empty() ? "" : ", ") + nm;
  }
  auto c = std::make_unique<Ctx>();
  c->name = std::string(name);
  c->port = options.port;
  if (dev) {
    mlx5dv_context_attr ca{};
    ca.flags = MLX5DV_CONTEXT_FLAGS_DEVX;
    c->ctx = mlx5dv_open_device(dev, &ca);
  }
  const int open_errno = errno;
  if (list) ibv_free_device_list(list);
  if (!dev)
    return not_found("no mlx5 device named '" + std::string(name) + "' (mlx5 devices here: " +
                     (found.empty() ? "none" : found) + ")");
  if (!c->ctx)
    return not_supported("mlx5dv_open_device(" + c->name + ", DEVX): " + errno_text(open_errno) +
                         " (the kernel or firmware refuses a DevX context)");

  HL_ASSIGN_OR_RETURN(c->hca, query_caps(c->ctx));
  ibv_device_attr_ex dx{};
  if (int rc = ibv_query_device_ex(c->ctx, nullptr, &dx)) return from_errno(rc, "ibv_query_device_ex(" + c->name + ")");
  if (options.port == 0 || options.port > dx.orig_attr.phys_port_cnt)
    return invalid_argument(c->name + " has no port " + std::to_string(options.port));
  ibv_port_attr pa{};
  if (int rc = ibv_query_port(c->ctx, options.port, &pa)) return from_errno(rc, "ibv_query_port(" + c->name + ")");
  c->roce = pa.link_layer != IBV_LINK_LAYER_INFINIBAND;
  c->lid = pa.lid;
  c->mtu = pa.active_mtu;
  if (pa.state != IBV_PORT_ACTIVE)
    log(LogLevel::kWarn, "mlx5", "port_not_active",
        {{"device", c->name}, {"port", uint64_t(options.port)}, {"state", ibv_port_state_str(pa.state)}});
  if (options.gid_index >= 0) {
    if (options.gid_index >= pa.gid_tbl_len)
      return invalid_argument(c->name + " has no GID index " + std::to_string(options.gid_index));
    c->gid_index = options.gid_index;
  } else {
    c->gid_index = verbs::util::choose_gid(c->ctx, options.port, pa.gid_tbl_len);
  }
  if (int rc = ibv_query_gid(c->ctx, options.port, c->gid_index, &c->gid))
    return from_errno(rc, "ibv_query_gid(" + c->name + ")");
  if (c->roce) {
    HL_ASSIGN_OR_RETURN(c->mac, verbs::util::gid_mac(c->ctx, options.port, c->gid_index));
  }

  c->uar = mlx5dv_devx_alloc_uar(c->ctx, MLX5DV_UAR_ALLOC_TYPE_NC);
  if (!c->uar) return from_errno(errno, "mlx5dv_devx_alloc_uar(" + c->name + ", NC)");
  if (int rc = mlx5dv_devx_query_eqn(c->ctx, 0, &c->eqn)) return from_errno(rc, "mlx5dv_devx_query_eqn(" + c->name + ")");

  const HcaCaps& h = c->hca;
  auto& k = c->caps;
  k.name = c->name;
  k.backend = "mlx5";
  k.cross_channel = k.managed_queues = h.cd;
  k.raw_send_ring = k.raw_recv_ring = k.raw_cq_ring = true;
  k.patchable_send_wqes = true;
  k.send_wqe_format = rnic::SendWqeFormat::kMlx5;
  k.nop = true;
  k.error_cqe_opcode = true;  // the error CQE's s_wqe_opcode
  k.cq_ignore_overrun = h.cq_oi;
  // hyperloop's CAS compares the responder's word as a host-order u64: only
  // the HOST_ENDIANNESS requester mode gives that (mlx5_core sets it where
  // supported); 8-byte CAS and FAA on RC QPs.
  k.atomics = h.atomic && h.atomic_endianness_mode == prm::atomic_cap::kHostEndianness &&
              (h.atomic_operations & (prm::atomic_cap::kOpCas | prm::atomic_cap::kOpFaa)) ==
                  (prm::atomic_cap::kOpCas | prm::atomic_cap::kOpFaa) &&
              (h.atomic_size_qp & prm::atomic_cap::kSize8Bytes);
  k.max_sge = std::min<uint32_t>(mlx5::kMaxSge, std::max<uint32_t>(1, h.max_wqe_sz_rq / mlx5::kDsBytes));
  k.max_inline_data = h.max_wqe_sz_sq >= mlx5::kMaxInlineBytes + 64 ? mlx5::kMaxInlineBytes : 0;
  k.max_send_wqebbs = std::min<uint32_t>(1u << std::min<uint8_t>(h.log_max_qp_sz, 15), 32768);
  k.max_recv_wqes = k.max_send_wqebbs;
  k.max_cqe = 1u << std::min<uint8_t>(h.log_max_cq_sz, 22);
  k.max_mr_size = dx.orig_attr.max_mr_size;
  k.max_msg_size = h.log_max_msg >= 31 ? 0x80000000u : (1u << h.log_max_msg);
  k.max_rd_atomic = 1u << std::min<uint8_t>(h.log_max_ra_req_qp, 4);
  log(LogLevel::kInfo, "mlx5", "device_open",
      {{"device", c->name}, {"cd", h.cd ? "yes" : "no"}, {"cq_oi", h.cq_oi ? "yes" : "no"},
       {"atomic_endianness_mode", uint64_t(h.atomic_endianness_mode)}, {"gid_index", uint64_t(c->gid_index)},
       {"link", c->roce ? "RoCE" : "InfiniBand"}});
  return std::unique_ptr<rnic::Device>(std::make_unique<Mlx5Device>(std::move(c)));
}

Result<HcaCaps> hca_caps(const rnic::Device& device) {
  const auto* d = dynamic_cast<const Mlx5Device*>(&device);
  if (!d) return invalid_argument("hca_caps: " + device.caps().name + " is not an rnic/mlx5 device");
  return d->ctx().hca;
}

}  // namespace hyperloop::mlx5dev
