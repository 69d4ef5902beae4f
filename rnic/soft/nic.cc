// rnic/soft: objects and the control path (creation, registration, QP state
// machine) and the application side of the data path (posting, polling).
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "nic_impl.h"

namespace hyperloop::soft {

using rnic::QpState;
using namespace hyperloop::rnic::internal;

// ---- Nic ------------------------------------------------------------------------
Nic::Impl::Impl() : clock(steady_now_ns) {}

Nic::Impl::~Impl() {
  while (!pool.empty()) {
    Packet* p = &pool.front();
    pool.pop_front();
    delete p;
  }
}

Nic::Nic(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Nic::~Nic() {
  if (executor_) executor_->remove(*this);
  impl_->port->alive.store(false);
}

const std::string& Nic::name() const { return impl_->name; }
uint64_t Nic::uid() const { return impl_->uid; }
size_t Nic::poll_once(size_t budget) { return impl_->poll_once(budget); }
bool Nic::idle() const { return impl_->idle(); }
void Nic::set_clock(Clock clock) {
  auto l = impl_->ctrl_lock();
  impl_->clock = clock ? std::move(clock) : Clock(steady_now_ns);
}
void Nic::crash() {
  auto l = impl_->ctrl_lock();
  impl_->crashed.store(true);
  impl_->port->alive.store(false);
}
bool Nic::crashed() const { return impl_->crashed.load(); }

NicStats Nic::stats() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  NicStats s = impl_->stats;
  s.app_calls = impl_->app_calls.load(std::memory_order_relaxed);
  return s;
}

const rnic::DeviceCaps& Nic::caps() const { return impl_->caps; }

Result<std::unique_ptr<rnic::ProtectionDomain>> Nic::alloc_pd() {
  auto l = impl_->ctrl_lock();
  auto pd = std::make_unique<SoftPd>();
  pd->nic = impl_.get();
  pd->pdn = impl_->next_pdn++;
  return std::unique_ptr<rnic::ProtectionDomain>(std::move(pd));
}

Result<std::unique_ptr<rnic::CompletionQueue>> Nic::create_cq(const rnic::CqAttr& attr) {
  HL_RETURN_IF_ERROR(rnic::check_cq_attr(attr, impl_->caps));
  std::shared_ptr<SoftChannelState> channel;
  if (attr.channel) {
    auto* ch = dynamic_cast<SoftChannel*>(attr.channel);
    if (!ch || ch->st->owner != impl_.get())
      return invalid_argument("a CQ's completion channel must belong to the same soft NIC");
    channel = ch->st;
  }
  auto l = impl_->ctrl_lock();
  uint32_t slot = 0;
  while (slot < impl_->cqs.size() && impl_->cqs[slot]) ++slot;
  if (slot >= impl_->opts.max_cq) return resource_exhausted("no free completion queue number");
  auto cq = std::make_unique<SoftCq>();
  cq->nic = impl_.get();
  cq->channel = std::move(channel);
  cq->number = slot + 1;
  cq->buf = AlignedBuffer(size_t(attr.cqe_count) * mlx5::kCqeBytes);
  cq->ring = mlx5::CqRingView{cq->buf.data(), attr.cqe_count};
  cq->ignore_overrun = attr.ignore_overrun;
  mlx5::init_cq_ring(cq->ring);
  if (slot == impl_->cqs.size()) impl_->cqs.push_back(nullptr);
  impl_->cqs[slot] = cq.get();
  return std::unique_ptr<rnic::CompletionQueue>(std::move(cq));
}

// ---- completion channels ------------------------------------------------------------
Result<std::unique_ptr<rnic::CompletionChannel>> Nic::create_completion_channel() {
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return resource_exhausted(std::string("eventfd: ") + std::strerror(errno));
  auto ch = std::make_unique<SoftChannel>();
  ch->st = std::make_shared<SoftChannelState>();
  ch->st->fd = fd;
  ch->st->owner = impl_.get();
  return std::unique_ptr<rnic::CompletionChannel>(std::move(ch));
}

namespace {
void drain_eventfd(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof v) < 0 && errno == EINTR) {
  }
}
}  // namespace

SoftChannelState::~SoftChannelState() {
  if (fd >= 0) ::close(fd);
}

void SoftChannelState::fire(SoftCq* cq) {
  if (closed || cq->queued) return;  // nobody waits any more, or coalesced
  cq->queued = true;
  fired.push_back(cq);
  if (fired.size() == 1) {
    const uint64_t one = 1;
    while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
}

void SoftChannelState::discard(SoftCq* cq) {
  if (!cq->queued) return;
  cq->queued = false;
  std::erase(fired, cq);
  if (fired.empty()) drain_eventfd(fd);
}

SoftChannel::~SoftChannel() {
  // Attached CQs keep the state (and the descriptor) until they go; they
  // fire nothing from now on and their arm() fails.
  std::lock_guard<std::mutex> g(st->mu);
  st->closed = true;
  for (SoftCq* cq : st->fired) cq->queued = false;
  st->fired.clear();
  drain_eventfd(st->fd);
}

Result<rnic::CompletionQueue*> SoftChannel::wait(int64_t timeout_ns) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  for (;;) {
    {
      std::lock_guard<std::mutex> g(st->mu);
      if (!st->fired.empty()) {
        SoftCq* cq = st->fired.front();
        st->fired.pop_front();
        cq->queued = false;
        if (st->fired.empty()) drain_eventfd(st->fd);
        return static_cast<rnic::CompletionQueue*>(cq);
      }
    }
    timespec ts{};
    const timespec* limit = nullptr;
    if (timeout_ns >= 0) {
      const int64_t left =
          timeout_ns - std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
      if (left <= 0) return Status(StatusCode::kDeadlineExceeded, "no completion event within the timeout");
      ts.tv_sec = time_t(left / 1'000'000'000);
      ts.tv_nsec = long(left % 1'000'000'000);
      limit = &ts;
    }
    pollfd p{st->fd, POLLIN, 0};
    // Readable or not, look again: another waiter may have taken the event,
    // or a destroyed CQ discarded it.
    if (::ppoll(&p, 1, limit, nullptr) < 0 && errno != EINTR)
      return internal_error(std::string("ppoll on a completion channel: ") + std::strerror(errno));
  }
}

// ---- memory regions ----------------------------------------------------------------
Result<std::unique_ptr<rnic::MemoryRegion>> SoftPd::register_memory(void* addr, size_t length,
                                                                     uint32_t access) {
  HL_RETURN_IF_ERROR(rnic::check_memory_registration(addr, length, access, nic->caps));
  auto l = nic->ctrl_lock();
  // Indices 0 and 1 stay unused: key 0 is never valid and no key can equal the
  // receive-list terminator (kInvalidLkey = 0x100).
  static_assert(mlx5::kInvalidLkey >> 8 == 1);
  uint32_t idx = 2;
  while (idx < nic->mrs.size() && nic->mrs[idx]) ++idx;
  if (idx >= nic->opts.max_mr) return resource_exhausted("memory region table full");
  while (idx >= nic->mrs.size()) nic->mrs.push_back(nullptr);
  auto mr = std::make_unique<SoftMr>();
  mr->nic = nic;
  mr->pd = this;
  mr->base = static_cast<std::byte*>(addr);
  mr->len = length;
  mr->acc = access;
  mr->index = idx;
  // The low byte changes on every registration so a stale key never matches.
  mr->pmem = PersistentMemory::containing(addr, length);
  mr->key = (idx << 8) | nic->key_tag;
  nic->key_tag = uint8_t(nic->key_tag * 5 + 3);
  nic->mrs[idx] = mr.get();
  return std::unique_ptr<rnic::MemoryRegion>(std::move(mr));
}

SoftMr::~SoftMr() {
  auto l = nic->ctrl_lock();
  // Whatever this NIC wrote stays in the view (undurable) if no READ came.
  if (pmem) std::erase(nic->dirty_pmems, pmem);
  if (index < nic->mrs.size() && nic->mrs[index] == this) nic->mrs[index] = nullptr;
}

// ---- completion queues ------------------------------------------------------------
SoftCq::~SoftCq() {
  auto l = nic->ctrl_lock();
  while (!waiters.empty()) {
    SoftQp& qp = waiters.front();
    waiters.pop_front();
    qp.wait_cq = nullptr;
  }
  if (channel) {
    std::lock_guard<std::mutex> g(channel->mu);
    channel->discard(this);  // wait() never returns a destroyed CQ
  }
  if (number >= 1 && number <= nic->cqs.size()) nic->cqs[number - 1] = nullptr;
}

Status SoftCq::arm(bool solicited_only) {
  nic->count_app_call();
  if (!channel) return failed_precondition("arm needs a CQ created with a completion channel");
  // Under the engine's lock: a CQE pushed before this is visible to the
  // caller's next poll(), one pushed after it sees the CQ armed.
  auto l = nic->ctrl_lock();
  {
    std::lock_guard<std::mutex> g(channel->mu);
    if (channel->closed) return failed_precondition("the CQ's completion channel was destroyed");
  }
  if (!armed) {
    armed = true;
    armed_solicited = solicited_only;
  } else if (!solicited_only) {
    armed_solicited = false;  // "next completion" supersedes "next solicited"
  }
  return Status::ok();
}

Result<size_t> SoftCq::poll(std::span<rnic::WorkCompletion> out) {
  nic->count_app_call();
  size_t n = 0;
  mlx5::CqeFields c;
  while (n < out.size() && mlx5::read_cqe(ring, app_ci, &c)) {
    uint64_t wr_id = rnic::kRawWrId;
    if (c.qpn >= 1 && c.qpn <= nic->opts.max_qp) {
      if (SoftQp* qp = nic->qp_lookup[c.qpn - 1].load(std::memory_order_acquire)) {
        wr_id = is_requester_cqe(c.opcode) ? qp->sq_wrid[c.wqe_counter & (qp->sq.wqebb_count - 1)]
                                           : qp->rq_wrid[c.wqe_counter & (qp->rq.wqe_count - 1)];
      }
    }
    out[n++] = to_work_completion(c, wr_id);
    ++app_ci;
  }
  if (n) ci.store(app_ci & mlx5::kCqIndexMask, std::memory_order_release);
  if (n == 0 && overrun.load(std::memory_order_acquire))
    return resource_exhausted("completion queue overran: completions were lost");
  return n;
}

Result<mlx5::CqRingView> SoftCq::raw_ring() {
  nic->count_app_call();
  return ring;
}

// ---- queue pairs ---------------------------------------------------------------------
Result<std::unique_ptr<rnic::QueuePair>> SoftPd::create_qp(const rnic::QpAttr& a) {
  const auto& caps = nic->caps;
  if (!a.send_cq || !a.recv_cq) return invalid_argument("QP needs a send CQ and a receive CQ");
  auto* scq = dynamic_cast<SoftCq*>(a.send_cq);
  auto* rcq = dynamic_cast<SoftCq*>(a.recv_cq);
  if (!scq || !rcq || scq->nic != nic || rcq->nic != nic)
    return invalid_argument("QP's CQs must belong to the same soft NIC");
  HL_RETURN_IF_ERROR(rnic::check_qp_sizes(a, caps));
  auto qp = std::make_unique<SoftQp>();
  qp->nic = nic;
  qp->pd = this;
  qp->scq = scq;
  qp->rcq = rcq;
  qp->attr = a;
  qp->sq_buf = AlignedBuffer(size_t(a.send_wqebbs) * mlx5::kSendWqeBB);
  qp->sq = mlx5::SendRingView{qp->sq_buf.data(), a.send_wqebbs};
  qp->sq_wrid.assign(a.send_wqebbs, rnic::kRawWrId);
  const uint32_t stride = round_up_pow2(a.max_recv_sge) * mlx5::kDsBytes;
  qp->rq_buf = AlignedBuffer(size_t(a.recv_wqes) * stride);
  qp->rq = mlx5::RecvRingView{qp->rq_buf.data(), a.recv_wqes, stride};
  qp->rq_wrid.assign(a.recv_wqes, rnic::kRawWrId);
  qp->out.resize(round_up_pow2(nic->opts.max_outstanding));
  qp->atomic_replies.assign(round_up_pow2(nic->opts.max_outstanding), {});
  qp->key = random_key();
  auto l = nic->ctrl_lock();
  uint32_t slot = 0;
  while (slot < nic->qps.size() && nic->qps[slot]) ++slot;
  if (slot >= nic->opts.max_qp) return resource_exhausted("no free queue pair number");
  if (slot == nic->qps.size()) nic->qps.push_back(nullptr);
  qp->number = slot + 1;
  nic->qps[slot] = qp.get();
  nic->qp_lookup[slot].store(qp.get(), std::memory_order_release);
  return std::unique_ptr<rnic::QueuePair>(std::move(qp));
}

SoftQp::~SoftQp() {
  auto l = nic->ctrl_lock();
  nic->unlink(this);
  {
    std::lock_guard<std::mutex> d(nic->doorbell_mu);
    std::erase(nic->doorbells, this);
  }
  nic->qps[number - 1] = nullptr;
  nic->qp_lookup[number - 1].store(nullptr, std::memory_order_release);
}

rnic::QpAddress SoftQp::address() const {
  PeerAddress a;
  fabric_identity(nic->fabric, &a.fabric_id, &a.ipv4, &a.port);
  a.nic_uid = nic->uid;
  a.qpn = number;
  a.key = key;
  a.psn = nic->opts.first_psn;
  return encode_address(a);
}

Status SoftQp::init(uint32_t access) {
  if (access & ~rnic::kAccessAllRemote) return invalid_argument("init takes remote access flags only");
  auto l = nic->ctrl_lock();
  if (state() != QpState::kReset) return failed_precondition("init needs a QP in RESET");
  remote_access = access;
  st.store(QpState::kInit, std::memory_order_release);
  return Status::ok();
}

Status SoftQp::connect(const rnic::QpAddress& remote) {
  PeerAddress peer;
  if (!decode_address(remote, &peer)) return invalid_argument("not a soft RNIC QP address");
  HL_ASSIGN_OR_RETURN(std::shared_ptr<Port> port, fabric_peer_port(nic->fabric, peer));
  auto l = nic->ctrl_lock();
  if (state() != QpState::kInit) return failed_precondition("connect needs a QP in INIT");
  peer_nic = peer.nic_uid;
  peer_qpn = peer.qpn;
  peer_key = peer.key;
  bound_conn.reset();
  peer_port = std::move(port);
  expected_psn = peer.psn;
  next_psn = nic->opts.first_psn;
  st.store(QpState::kRtr, std::memory_order_release);
  return Status::ok();
}

Status SoftQp::ready_to_send() {
  auto l = nic->ctrl_lock();
  if (state() != QpState::kRtr) return failed_precondition("ready_to_send needs a QP in RTR");
  retry_left = attr.retry_count;
  rnr_left = attr.rnr_retry;
  st.store(QpState::kRts, std::memory_order_release);
  nic->schedule(this);  // run anything posted meanwhile
  return Status::ok();
}

Status SoftQp::set_error() {
  auto l = nic->ctrl_lock();
  nic->enter_error(this);
  return Status::ok();
}

Status SoftQp::reset() {
  auto l = nic->ctrl_lock();
  nic->unlink(this);
  {
    std::lock_guard<std::mutex> d(nic->doorbell_mu);
    std::erase(nic->doorbells, this);
    doorbell_pending.store(false);
  }
  std::memset(sq_buf.data(), 0, sq_buf.size());
  std::memset(rq_buf.data(), 0, rq_buf.size());
  sq_post = rq_post = 0;
  sq_dbr.store(0);
  rq_dbr.store(0);
  sq_retired.store(0);
  rq_retired.store(0);
  sq_ci = sq_enable = rq_ci = rq_enable = 0;
  out_head = out_tail = out_rd_atomic = 0;
  response_retry = false;
  next_psn = expected_psn = 0;
  block = Block::kNone;
  error_pending = false;
  peer_port.reset();
  peer_key = 0;
  bound_conn.reset();
  std::fill(atomic_replies.begin(), atomic_replies.end(), AtomicReply{});
  st.store(QpState::kReset, std::memory_order_release);
  return Status::ok();
}

Status SoftQp::post_send(const rnic::SendWr& wr) {
  nic->count_app_call();
  const QpState s = state();
  if (s != QpState::kRts && s != QpState::kError)
    return failed_precondition("post_send needs a QP in RTS (or ERROR, to flush)");
  RingLimits lim{nic->caps.max_sge, nic->caps.max_inline_data, attr.cross_channel, nic->caps.atomics};
  uint32_t wait_cqn = 0, enable_qpn = 0;
  if (wr.opcode == rnic::WrOpcode::kWait && wr.wait_cq) wait_cqn = wr.wait_cq->cqn();
  if ((wr.opcode == rnic::WrOpcode::kSendEnable || wr.opcode == rnic::WrOpcode::kRecvEnable) && wr.enable_qp)
    enable_qpn = wr.enable_qp->qpn();
  mlx5::SendWqe w;
  HL_RETURN_IF_ERROR(build_send_wqe(wr, number, lim, wait_cqn, enable_qpn, inline_scratch, &w));
  const uint32_t bbs = mlx5::ds_to_wqebbs(mlx5::send_wqe_ds(w));
  if (const uint32_t used = sq_post - sq_retired.load(std::memory_order_acquire); used + bbs > sq.wqebb_count)
    return resource_exhausted("send queue full: " + std::to_string(used) + " of " + std::to_string(sq.wqebb_count) +
                              " WQEBBs in use, " + std::to_string(bbs) + " needed");
  if (mlx5::encode_send_wqe(sq, sq_post, w) != bbs) return internal_error("WQE encoding failed");
  sq_wrid[sq_post & (sq.wqebb_count - 1)] = wr.wr_id;
  sq_post += bbs;
  sq_dbr.store(sq_post & mlx5::kWqeIndexMask, std::memory_order_release);
  if (!attr.managed_send || s == QpState::kError) nic->doorbell(this);
  return Status::ok();
}

Status SoftQp::post_recv(const rnic::RecvWr& wr) {
  nic->count_app_call();
  const QpState s = state();
  if (s == QpState::kReset) return failed_precondition("post_recv needs a QP out of RESET");
  if (wr.sg.size() > rq.max_sge()) return invalid_argument("too many SGEs for this receive queue");
  if (rq_post + 1 - rq_retired.load(std::memory_order_acquire) > rq.wqe_count)
    return resource_exhausted("receive queue full");
  if (!mlx5::encode_recv_wqe(rq, rq_post, wr.sg)) return invalid_argument("receive WQE does not fit");
  rq_wrid[rq_post & (rq.wqe_count - 1)] = wr.wr_id;
  ++rq_post;
  rq_dbr.store(rq_post & mlx5::kWqeIndexMask, std::memory_order_release);
  if (s == QpState::kError) nic->doorbell(this);
  return Status::ok();
}

Result<mlx5::SendRingView> SoftQp::raw_send_ring() {
  nic->count_app_call();
  return sq;
}

namespace {
// A raw doorbell: checks that `producer` stays within the free part of a
// ring of `size` slots, marks the slots it covers as raw-posted (no wr_id)
// and publishes it in the doorbell record.
Status publish_raw_producer(uint32_t producer, uint32_t& post, const std::atomic<uint32_t>& retired, uint32_t size,
                            std::vector<uint64_t>& wrid, std::atomic<uint32_t>& dbr, const char* ring) {
  if (producer - post > size || producer - retired.load(std::memory_order_acquire) > size)
    return out_of_range(std::string("doorbell beyond the free part of the ") + ring + " ring");
  for (uint32_t i = post; i != producer; ++i) wrid[i & (size - 1)] = rnic::kRawWrId;
  post = producer;
  dbr.store(producer & mlx5::kWqeIndexMask, std::memory_order_release);
  return Status::ok();
}
}  // namespace

Status SoftQp::ring_send_doorbell(uint32_t producer) {
  nic->count_app_call();
  HL_RETURN_IF_ERROR(publish_raw_producer(producer, sq_post, sq_retired, sq.wqebb_count, sq_wrid, sq_dbr, "send"));
  if (!attr.managed_send || state() == QpState::kError) nic->doorbell(this);
  return Status::ok();
}

Result<mlx5::RecvRingView> SoftQp::raw_recv_ring() {
  nic->count_app_call();
  return rq;
}

Status SoftQp::ring_recv_doorbell(uint32_t producer) {
  nic->count_app_call();
  HL_RETURN_IF_ERROR(publish_raw_producer(producer, rq_post, rq_retired, rq.wqe_count, rq_wrid, rq_dbr, "receive"));
  if (state() == QpState::kError) nic->doorbell(this);
  return Status::ok();
}

}  // namespace hyperloop::soft
