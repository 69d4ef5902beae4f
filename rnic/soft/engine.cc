// rnic/soft: the engine. Runs only inside poll_once (executor threads) or in
// control calls, always with Nic::Impl::mu held.
//
// Requester: executes send WQEs in ring order, reading each WQE when it runs;
// remote operations become packets and stay outstanding until answered;
// completions are written in order (retire). Responder: validates and applies
// inbound requests in PSN order and answers each. Errors follow the mlx5
// model: error CQE with a syndrome, QP to ERROR, everything after flushed.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "nic_impl.h"

namespace hyperloop::soft {

using rnic::QpState;
using namespace hyperloop::mlx5;

namespace {

bool is_read_or_atomic(uint8_t op) { return op == kOpRdmaRead || op == kOpAtomicCs || op == kOpAtomicFa; }
bool psn_before(uint32_t a, uint32_t b) { return a != b && !cyclic_ge(a, b, 24); }

bool wait_satisfied(const SoftCq* cq, uint32_t index) {
  if (cq->pi == 0) return false;
  return cyclic_ge((cq->pi - 1) & kCqIndexMask, index & kCqIndexMask, 24);
}

uint8_t nak_syndrome(NakCode c) {
  switch (c) {
    case NakCode::kRnr: return kSyndromeRnrRetryExc;
    case NakCode::kRemoteAccess: return kSyndromeRemoteAccess;
    case NakCode::kInvalidRequest: return kSyndromeRemoteInvalReq;
    case NakCode::kRemoteOp: return kSyndromeRemoteOp;
  }
  return kSyndromeRemoteOp;
}

// ---- DMA ---------------------------------------------------------------------------
// The NIC's accesses to host memory (gather for SEND/WRITE, serving READs,
// applying inbound WRITEs/SENDs, scattering READ/atomic responses) are
// relaxed atomic accesses per aligned 8-byte word (single bytes at unaligned
// ends), never a plain memcpy. That is the device model: a real NIC's DMA is
// single-copy atomic per aligned word and unordered with respect to the CPU,
// and some memory is shared with it by design while CPUs run, e.g. a replica
// agent publishes its armed counter with an atomic store while a client's
// READ fetches it. Ordering still comes only from doorbells and CQEs; a CPU
// that touches DMA'd memory concurrently must itself use atomic accesses
// (plain ones are still data races, and ThreadSanitizer still reports them).
void dma_from_host(std::byte* dst, uint64_t src, size_t n) {
  for (; n && (src & 7); --n, ++src, ++dst)
    *dst = std::atomic_ref<std::byte>(*reinterpret_cast<std::byte*>(src)).load(std::memory_order_relaxed);
  for (; n >= 8; n -= 8, src += 8, dst += 8) {
    const uint64_t w = std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(src)).load(std::memory_order_relaxed);
    std::memcpy(dst, &w, 8);
  }
  for (; n; --n, ++src, ++dst)
    *dst = std::atomic_ref<std::byte>(*reinterpret_cast<std::byte*>(src)).load(std::memory_order_relaxed);
}

void dma_to_host(uint64_t dst, const std::byte* src, size_t n) {
  for (; n && (dst & 7); --n, ++src, ++dst)
    std::atomic_ref<std::byte>(*reinterpret_cast<std::byte*>(dst)).store(*src, std::memory_order_relaxed);
  for (; n >= 8; n -= 8, src += 8, dst += 8) {
    uint64_t w;
    std::memcpy(&w, src, 8);
    std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(dst)).store(w, std::memory_order_relaxed);
  }
  for (; n; --n, ++src, ++dst)
    std::atomic_ref<std::byte>(*reinterpret_cast<std::byte*>(dst)).store(*src, std::memory_order_relaxed);
}

}  // namespace

// ---- scheduling -------------------------------------------------------------------
void Nic::Impl::schedule(SoftQp* qp) {
  busy_hint.store(true, std::memory_order_relaxed);
  if (!qp->in_ready) {
    ready.push_back(*qp);
    qp->in_ready = true;
  }
}

void Nic::Impl::arm_timer(SoftQp* qp) {
  busy_hint.store(true, std::memory_order_relaxed);
  if (!qp->in_timer) {
    timers.push_back(*qp);
    qp->in_timer = true;
  }
}

// Application side: a doorbell rang. Lock-free unless the QP is not queued yet.
void Nic::Impl::doorbell(SoftQp* qp) {
  if (qp->doorbell_pending.exchange(true, std::memory_order_acq_rel)) return;
  std::lock_guard<std::mutex> l(doorbell_mu);
  doorbells.push_back(qp);
  doorbell_flag.store(true, std::memory_order_release);
}

void Nic::Impl::drain_doorbells() {
  if (!doorbell_flag.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> l(doorbell_mu);
  doorbell_flag.store(false, std::memory_order_relaxed);
  for (SoftQp* qp : doorbells) {
    qp->doorbell_pending.store(false, std::memory_order_release);
    schedule(qp);
  }
  doorbells.clear();
}

void Nic::Impl::unlink(SoftQp* qp) {
  if (qp->in_ready) ready.erase(ready.iterator_to(*qp));
  if (qp->in_timer) timers.erase(timers.iterator_to(*qp));
  if (qp->wait_hook.is_linked() && qp->wait_cq) qp->wait_cq->waiters.erase(qp->wait_cq->waiters.iterator_to(*qp));
  qp->in_ready = qp->in_timer = false;
  qp->wait_cq = nullptr;
  qp->block = Block::kNone;
}

bool Nic::Impl::idle() const {
  std::lock_guard<std::mutex> l(mu);
  if (crashed.load()) return true;
  std::lock_guard<std::mutex> d(const_cast<std::mutex&>(doorbell_mu));
  return ready.empty() && timers.empty() && doorbells.empty() &&
         port->queued.load(std::memory_order_acquire) == 0;
}

// ---- packets ------------------------------------------------------------------------
Packet* Nic::Impl::alloc_packet() {
  if (pool.empty()) return new Packet();
  Packet* p = &pool.front();
  pool.pop_front();
  --pool_size;
  return p;
}

// Packets from TCP are allocated by the wire and end here, so the pool is
// capped: beyond it (or with a large buffer) packets are freed, and memory
// stays flat however many arrive.
void Nic::Impl::free_packet(Packet* p) {
  p->release_credit();
  if (pool_size >= kMaxPooledPackets) {
    delete p;
    return;
  }
  p->payload.trim(kMaxPooledPayload);
  pool.push_front(*p);
  ++pool_size;
}

void Nic::Impl::transmit(SoftQp* qp, Packet* p) {
  p->release_credit();  // a reply reuses its request: the inbound connection's credit ends here
  p->src_nic = uid;
  p->src_qpn = qp->number;
  p->dst_qpn = qp->peer_qpn;
  p->key = qp->key;
  ++stats.packets_sent;
  Port* dst = qp->peer_port.get();
  if (!dst || !dst->alive.load(std::memory_order_acquire) ||
      !fabric_admit(fabric, uid, qp->peer_nic, time(), &p->deliver_at)) {
    ++stats.packets_dropped;
    free_packet(p);
    return;
  }
  if (dst->link) {  // a NIC of another fabric: over TCP (a dead link loses it)
    if (!tcp_send(*dst->link, *p, dst->uid)) ++stats.packets_dropped;
    free_packet(p);
    return;
  }
  std::lock_guard<std::mutex> l(dst->mu);
  dst->inbox.push_back(*p);
  dst->queued.fetch_add(1, std::memory_order_release);
}

// ---- completions ----------------------------------------------------------------------
bool Nic::Impl::push_cqe(SoftCq* cq, const CqeFields& f, SoftQp* producer) {
  if (cq->overrun.load(std::memory_order_relaxed)) return false;
  if (!cq->ignore_overrun) {
    const uint32_t used = (cq->pi - cq->ci.load(std::memory_order_acquire)) & kCqIndexMask;
    if (used >= cq->ring.cqe_count) {
      cq->overrun.store(true, std::memory_order_release);
      overrun_victims.push_back(producer);
      return false;
    }
  }
  if (f.opcode == kCqeReqErr || f.opcode == kCqeRespErr) ++stats.error_cqes;
  write_cqe(cq->ring, cq->pi, f);
  ++cq->pi;
  if (cq->armed &&
      (!cq->armed_solicited || f.solicited || f.opcode == kCqeReqErr || f.opcode == kCqeRespErr)) {
    cq->armed = false;  // one-shot
    std::lock_guard<std::mutex> g(cq->channel->mu);
    cq->channel->fire(cq);
  }
  for (auto it = cq->waiters.begin(); it != cq->waiters.end();) {
    SoftQp& w = *it;
    if (wait_satisfied(cq, w.wait_index)) {
      it = cq->waiters.erase(it);
      w.block = Block::kNone;
      w.wait_cq = nullptr;
      schedule(&w);
    } else {
      ++it;
    }
  }
  return true;
}

void Nic::Impl::complete_send(SoftQp* qp, const Outstanding& o) {
  CqeFields f;
  f.opcode = o.syndrome ? kCqeReqErr : kCqeReq;
  f.qpn = qp->number;
  f.send_opcode = o.opcode;
  f.wqe_counter = o.wqe_ci;
  f.byte_cnt = o.byte_len;
  f.syndrome = o.syndrome;
  push_cqe(qp->scq, f, qp);
}

// Retires finished entries in order: CQEs for signaled ones and every error.
void Nic::Impl::retire(SoftQp* qp) {
  bool progress = false;
  while (qp->out_size()) {
    Outstanding& o = qp->out_at(qp->out_head);
    if (!o.done) break;
    if (o.syndrome) {
      // The error entry completes with its syndrome; enter_error flushes the rest.
      enter_error(qp);
      return;
    }
    // Free the ring space before the CQE is visible: whoever sees the
    // completion may reuse the WQE's slots at once.
    qp->sq_retired.fetch_add(o.wqebbs, std::memory_order_release);
    if (o.signaled) complete_send(qp, o);
    if (is_read_or_atomic(o.opcode)) --qp->out_rd_atomic;
    ++qp->out_head;
    progress = true;
  }
  if (progress) {
    qp->retry_left = qp->attr.retry_count;
    qp->response_retry = false;
    if (qp->block == Block::kNone) schedule(qp);
  }
}

void Nic::Impl::fail_entry(SoftQp* qp, Outstanding& o, uint8_t syndrome) {
  o.done = true;
  o.syndrome = syndrome;
  qp->error_pending = true;
}

void Nic::Impl::flush_send(SoftQp* qp) {
  while (qp->out_size()) {
    Outstanding& o = qp->out_at(qp->out_head);
    if (!o.syndrome) o.syndrome = kSyndromeWrFlush;
    qp->sq_retired.fetch_add(o.wqebbs, std::memory_order_release);
    complete_send(qp, o);
    ++qp->out_head;
  }
  qp->out_rd_atomic = 0;
  qp->error_pending = false;
  // Everything posted but never executed (managed queues: posted, enabled or not).
  const uint16_t posted = uint16_t(qp->sq_dbr.load(std::memory_order_acquire));
  while (qp->sq_ci != posted) {
    SendWqe& w = scratch_wqe;
    uint32_t bbs = 1;
    if (decode_send_wqe(qp->sq, qp->sq_ci, &w, &bbs) != WqeError::kOk) bbs = 1;
    bbs = std::min<uint32_t>(bbs, uint16_t(posted - qp->sq_ci));
    Outstanding o;
    o.wqe_ci = qp->sq_ci;
    o.opcode = w.ctrl.opcode;
    o.syndrome = kSyndromeWrFlush;
    qp->sq_ci = uint16_t(qp->sq_ci + bbs);
    qp->sq_retired.fetch_add(bbs, std::memory_order_release);
    complete_send(qp, o);
  }
}

void Nic::Impl::flush_recv(SoftQp* qp) {
  const uint16_t posted = uint16_t(qp->rq_dbr.load(std::memory_order_acquire));
  while (qp->rq_ci != posted) {
    CqeFields f;
    f.opcode = kCqeRespErr;
    f.qpn = qp->number;
    f.wqe_counter = qp->rq_ci;
    f.syndrome = kSyndromeWrFlush;
    ++qp->rq_ci;
    qp->rq_retired.fetch_add(1, std::memory_order_release);
    push_cqe(qp->rcq, f, qp);
  }
}

void Nic::Impl::enter_error(SoftQp* qp) {
  qp->st.store(QpState::kError, std::memory_order_release);
  if (qp->in_timer) {
    timers.erase(timers.iterator_to(*qp));
    qp->in_timer = false;
  }
  if (qp->wait_hook.is_linked() && qp->wait_cq) qp->wait_cq->waiters.erase(qp->wait_cq->waiters.iterator_to(*qp));
  qp->wait_cq = nullptr;
  qp->block = Block::kNone;
  flush_send(qp);
  flush_recv(qp);
}

// Go-back-N: forget everything from the oldest unanswered entry on and
// re-execute from its WQE (re-reading the ring, as hardware refetches).
void Nic::Impl::rewind(SoftQp* qp) {
  if (!qp->out_size()) return;
  const Outstanding& first = qp->out_at(qp->out_head);
  for (uint32_t i = qp->out_head; i != qp->out_tail; ++i)
    if (is_read_or_atomic(qp->out_at(i).opcode)) --qp->out_rd_atomic;
  qp->sq_ci = first.wqe_ci;
  qp->next_psn = first.psn;
  qp->out_tail = qp->out_head;
  qp->error_pending = false;
  if (qp->wait_hook.is_linked() && qp->wait_cq) qp->wait_cq->waiters.erase(qp->wait_cq->waiters.iterator_to(*qp));
  qp->wait_cq = nullptr;
  if (qp->block == Block::kWait) qp->block = Block::kNone;
}

// ---- requester ----------------------------------------------------------------------
// Executes the WQE at sq_ci. Returns false if it must wait (WAIT, fence).
bool Nic::Impl::execute_wqe(SoftQp* qp) {
  SendWqe& w = scratch_wqe;
  uint32_t bbs = 1;
  WqeError e = decode_send_wqe(qp->sq, qp->sq_ci, &w, &bbs);
  if (e == WqeError::kOk && w.ctrl.qpn != qp->number) e = WqeError::kWrongQpn;
  if (e == WqeError::kOk && w.ctrl.wqe_index != qp->sq_ci) e = WqeError::kWrongIndex;
  if (e == WqeError::kOk && bbs > uint16_t(qp->send_limit() - qp->sq_ci)) e = WqeError::kBadDs;
  if (e != WqeError::kOk) bbs = 1;

  const bool fenced = (w.ctrl.fm_ce_se & kCtrlFmMask) != 0;
  if (e == WqeError::kOk && fenced && qp->out_rd_atomic > 0) return false;

  // Field by field: the SGE array is filled only for READs/atomics.
  Outstanding& o = qp->out_at(qp->out_tail);
  o.remote = o.done = false;
  o.syndrome = 0;
  o.psn = o.byte_len = o.num_sge = 0;
  o.wqe_ci = qp->sq_ci;
  o.wqebbs = uint16_t(bbs);
  o.opcode = w.ctrl.opcode;
  o.signaled = (w.ctrl.fm_ce_se & kCtrlCeMask) >= kCtrlCqUpdate;
  o.sent_at = 0;  // stamped when a packet leaves (remote ops only)

  auto consume = [&] {
    ++qp->out_tail;
    qp->sq_ci = uint16_t(qp->sq_ci + bbs);
  };
  auto fail = [&](uint8_t syndrome) {
    fail_entry(qp, o, syndrome);
    consume();
    retire(qp);
    return true;
  };

  if (e != WqeError::kOk) return fail(kSyndromeLocalQpOp);

  switch (w.ctrl.opcode) {
    case kOpNop:
      o.done = true;
      consume();
      retire(qp);
      return true;

    case kOpWait: {
      if (!qp->attr.cross_channel || w.ctrl.opmod != kWaitCqPi) return fail(kSyndromeLocalQpOp);
      SoftCq* cq = cq_by_number(w.qpn_cqn);
      if (!cq) return fail(kSyndromeLocalQpOp);
      if (!wait_satisfied(cq, w.max_index)) {
        qp->block = Block::kWait;
        qp->wait_cq = cq;
        qp->wait_index = w.max_index;
        cq->waiters.push_back(*qp);
        return false;
      }
      o.done = true;
      consume();
      retire(qp);
      return true;
    }

    case kOpSendEnable:
    case kOpRecvEnable: {
      SoftQp* t = qp_by_number(w.qpn_cqn);
      const bool send = w.ctrl.opcode == kOpSendEnable;
      // A queue can only be released by a master of its own protection domain.
      if (!qp->attr.cross_channel || !t || t->pd != qp->pd ||
          (send ? !t->attr.managed_send : !t->attr.managed_recv))
        return fail(kSyndromeLocalQpOp);
      if (send) {
        t->sq_enable = uint16_t(w.max_index);
        if (t->block == Block::kNone) schedule(t);
      } else {
        t->rq_enable = uint16_t(w.max_index);
      }
      o.done = true;
      consume();
      retire(qp);
      return true;
    }

    case kOpRdmaWrite:
    case kOpRdmaWriteImm:
    case kOpSend:
    case kOpSendImm: {
      uint64_t total = w.is_inline ? w.inline_len : 0;
      for (uint32_t i = 0; i < w.num_sge; ++i) {
        const uint64_t len = data_seg_length(w.sge[i].length);
        SoftMr* mr = mr_for(w.sge[i].lkey, qp->pd);
        if (!mr || !mr->covers(w.sge[i].addr, len)) return fail(kSyndromeLocalProt);
        total += len;
      }
      if (total > caps.max_msg_size) return fail(kSyndromeLocalLength);
      Packet* p = alloc_packet();
      p->payload.resize(total);
      if (w.is_inline) {
        copy_inline(qp->sq, o.wqe_ci, w.inline_len, p->payload.data());
      } else {
        size_t off = 0;
        for (uint32_t i = 0; i < w.num_sge; ++i) {
          dma_from_host(p->payload.data() + off, w.sge[i].addr, w.sge[i].length);
          off += w.sge[i].length;
        }
      }
      const bool rdma = w.ctrl.opcode == kOpRdmaWrite || w.ctrl.opcode == kOpRdmaWriteImm;
      p->type = rdma ? PacketType::kWrite : PacketType::kSend;
      p->opcode = w.ctrl.opcode;
      p->raddr = w.raddr;
      p->rkey = w.rkey;
      p->imm = w.ctrl.imm;
      p->solicited = w.ctrl.fm_ce_se & kCtrlSolicited;
      o.remote = true;
      o.sent_at = time();
      o.psn = qp->next_psn;
      p->psn = o.psn;
      qp->next_psn = (qp->next_psn + 1) & kPsnMask;
      consume();
      transmit(qp, p);
      arm_timer(qp);
      return true;
    }

    case kOpRdmaRead:
    case kOpAtomicCs:
    case kOpAtomicFa: {
      const bool read = w.ctrl.opcode == kOpRdmaRead;
      uint64_t total = 0;
      for (uint32_t i = 0; i < w.num_sge; ++i) {
        const uint64_t len = data_seg_length(w.sge[i].length);
        SoftMr* mr = mr_for(w.sge[i].lkey, qp->pd);
        if (!mr || !(mr->acc & rnic::kAccessLocalWrite) || !mr->covers(w.sge[i].addr, len))
          return fail(kSyndromeLocalProt);
        total += len;
        o.sge[i] = w.sge[i];
      }
      if (total > caps.max_msg_size) return fail(kSyndromeLocalLength);
      o.num_sge = w.num_sge;
      Packet* p = alloc_packet();
      p->type = read ? PacketType::kRead : PacketType::kAtomic;
      p->opcode = w.ctrl.opcode;
      p->raddr = w.raddr;
      p->rkey = w.rkey;
      p->length = uint32_t(total);
      p->swap_add = w.swap_add;
      p->compare = w.compare;
      o.remote = true;
      o.sent_at = time();
      o.psn = qp->next_psn;
      p->psn = o.psn;
      qp->next_psn = (qp->next_psn + 1) & kPsnMask;
      ++qp->out_rd_atomic;
      consume();
      transmit(qp, p);
      arm_timer(qp);
      return true;
    }
  }
  return fail(kSyndromeLocalQpOp);
}

size_t Nic::Impl::run_send_queue(SoftQp* qp, size_t budget) {
  const QpState s = qp->state();
  if (s == QpState::kError) {
    // Anything posted to a QP in ERROR completes as flushed.
    flush_send(qp);
    flush_recv(qp);
    return 0;
  }
  if (s != QpState::kRts || qp->block != Block::kNone) return 0;
  size_t n = 0;
  while (n < budget) {
    if (qp->error_pending || qp->block != Block::kNone || qp->state() != QpState::kRts) return n;
    if (uint16_t(qp->send_limit() - qp->sq_ci) == 0) return n;
    if (qp->out_size() >= qp->out.size()) return n;  // window full: retire reschedules
    if (!execute_wqe(qp)) return n;
    ++n;
    ++stats.wqes_executed;
  }
  schedule(qp);  // budget ran out with work left
  return n;
}

// ---- responder ----------------------------------------------------------------------
void Nic::Impl::reply(SoftQp* qp, Packet* p, PacketType type) {
  p->type = type;
  if (type != PacketType::kReadResp) p->payload.clear();
  transmit(qp, p);
}

void Nic::Impl::responder_error(SoftQp* qp, Packet* p, NakCode code) {
  p->nak = code;
  reply(qp, p, PacketType::kNak);
  if (code != NakCode::kRnr) enter_error(qp);
}

bool Nic::Impl::take_recv_wqe(SoftQp* qp, uint16_t* index) {
  if (uint16_t(qp->recv_limit() - qp->rq_ci) == 0) return false;
  *index = qp->rq_ci++;
  qp->rq_retired.fetch_add(1, std::memory_order_release);
  return true;
}

void Nic::Impl::handle_request(SoftQp* qp, Packet* p) {
  const QpState s = qp->state();
  if (s != QpState::kRtr && s != QpState::kRts) {
    ++stats.packets_dropped;
    free_packet(p);
    return;
  }
  auto remote_mr = [&](uint32_t need, uint64_t len) -> SoftMr* {
    SoftMr* mr = mr_for(p->rkey, qp->pd);
    if (!mr || !(mr->acc & need) || !(qp->remote_access & need) || !mr->covers(p->raddr, len)) return nullptr;
    return mr;
  };
  // Serving a READ is the durability point: what this NIC wrote before is
  // persisted before the response leaves (the read-after-write flush).
  auto read_into_payload = [&]() -> bool {
    if (p->length && !remote_mr(rnic::kAccessRemoteRead, p->length)) return false;
    persist_written();
    p->payload.resize(p->length);
    dma_from_host(p->payload.data(), p->raddr, p->length);
    return true;
  };

  if (p->psn != qp->expected_psn) {
    if (psn_before(p->psn, qp->expected_psn)) {
      // A retransmitted request we already executed: answer again, do not redo.
      switch (p->type) {
        case PacketType::kWrite:
        case PacketType::kSend:
          reply(qp, p, PacketType::kAck);
          return;
        case PacketType::kRead:
          if (read_into_payload()) {
            reply(qp, p, PacketType::kReadResp);
            return;
          }
          break;
        case PacketType::kAtomic:
          if (const auto& r = qp->atomic_replies[p->psn % qp->atomic_replies.size()]; r.valid && r.psn == p->psn) {
            p->result = r.value;
            reply(qp, p, PacketType::kAtomicResp);
            return;
          }
          break;
        default:
          break;
      }
    }
    ++stats.packets_dropped;  // out of sequence (after a NAK) or unanswerable
    free_packet(p);
    return;
  }

  switch (p->type) {
    case PacketType::kWrite: {
      const uint64_t len = p->payload.size();
      const bool imm = p->opcode == kOpRdmaWriteImm;
      if (imm && uint16_t(qp->recv_limit() - qp->rq_ci) == 0) {
        ++stats.rnr_naks;
        return responder_error(qp, p, NakCode::kRnr);
      }
      SoftMr* mr = len ? remote_mr(rnic::kAccessRemoteWrite, len) : nullptr;
      if (len && !mr) return responder_error(qp, p, NakCode::kRemoteAccess);
      if (len) {
        dma_to_host(p->raddr, p->payload.data(), len);
        wrote(mr, p->raddr, len);
      }
      if (imm) {
        uint16_t idx;
        take_recv_wqe(qp, &idx);
        CqeFields f;
        f.opcode = kCqeRespWrImm;
        f.qpn = qp->number;
        f.wqe_counter = idx;
        f.byte_cnt = uint32_t(len);
        f.imm = p->imm;
        f.solicited = p->solicited;
        push_cqe(qp->rcq, f, qp);
      }
      qp->expected_psn = (qp->expected_psn + 1) & kPsnMask;
      reply(qp, p, PacketType::kAck);
      return;
    }
    case PacketType::kSend: {
      uint16_t idx;
      if (uint16_t(qp->recv_limit() - qp->rq_ci) == 0) {
        ++stats.rnr_naks;
        return responder_error(qp, p, NakCode::kRnr);
      }
      take_recv_wqe(qp, &idx);
      Sge sges[kMaxSge];
      const uint32_t n = decode_recv_wqe(qp->rq, idx, sges);
      CqeFields f;
      f.qpn = qp->number;
      f.wqe_counter = idx;
      uint64_t capacity = 0;
      bool prot = false;
      SoftMr* mrs[kMaxSge];
      for (uint32_t i = 0; i < n; ++i) {
        const uint64_t len = data_seg_length(sges[i].length);
        SoftMr* mr = mrs[i] = mr_for(sges[i].lkey, qp->pd);
        if (!mr || !(mr->acc & rnic::kAccessLocalWrite) || !mr->covers(sges[i].addr, len)) prot = true;
        capacity += len;
      }
      const uint64_t len = p->payload.size();
      if (prot || len > capacity) {
        f.opcode = kCqeRespErr;
        f.syndrome = prot ? kSyndromeLocalProt : kSyndromeLocalLength;
        push_cqe(qp->rcq, f, qp);
        return responder_error(qp, p, prot ? NakCode::kRemoteOp : NakCode::kInvalidRequest);
      }
      uint64_t off = 0;
      for (uint32_t i = 0; i < n && off < len; ++i) {
        const uint64_t chunk = std::min<uint64_t>(data_seg_length(sges[i].length), len - off);
        dma_to_host(sges[i].addr, p->payload.data() + off, chunk);
        wrote(mrs[i], sges[i].addr, chunk);
        off += chunk;
      }
      f.opcode = p->opcode == kOpSendImm ? kCqeRespSendImm : kCqeRespSend;
      f.byte_cnt = uint32_t(len);
      f.imm = p->imm;
      f.solicited = p->solicited;
      push_cqe(qp->rcq, f, qp);
      qp->expected_psn = (qp->expected_psn + 1) & kPsnMask;
      reply(qp, p, PacketType::kAck);
      return;
    }
    case PacketType::kRead: {
      if (!read_into_payload()) return responder_error(qp, p, NakCode::kRemoteAccess);
      qp->expected_psn = (qp->expected_psn + 1) & kPsnMask;
      reply(qp, p, PacketType::kReadResp);
      return;
    }
    case PacketType::kAtomic: {
      if (p->raddr % 8) return responder_error(qp, p, NakCode::kInvalidRequest);
      SoftMr* amr = remote_mr(rnic::kAccessRemoteAtomic, 8);
      if (!amr) return responder_error(qp, p, NakCode::kRemoteAccess);
      std::atomic_ref<uint64_t> word(*reinterpret_cast<uint64_t*>(p->raddr));
      uint64_t old;
      if (p->opcode == kOpAtomicCs) {
        old = p->compare;
        word.compare_exchange_strong(old, p->swap_add, std::memory_order_acq_rel);
      } else {
        old = word.fetch_add(p->swap_add, std::memory_order_acq_rel);
      }
      wrote(amr, p->raddr, 8);
      auto& slot = qp->atomic_replies[p->psn % qp->atomic_replies.size()];
      slot = {p->psn, old, true};
      p->result = old;
      qp->expected_psn = (qp->expected_psn + 1) & kPsnMask;
      reply(qp, p, PacketType::kAtomicResp);
      return;
    }
    default:
      break;
  }
  ++stats.packets_dropped;
  free_packet(p);
}

void Nic::Impl::handle_response(SoftQp* qp, Packet* p) {
  if (qp->state() != QpState::kRts || !qp->out_size()) {
    ++stats.packets_dropped;
    free_packet(p);
    return;
  }
  // Acknowledgements are cumulative, as in InfiniBand RC (coalesced ACKs;
  // Linux rxe's completer, rxe_comp.c): responses come back in PSN order,
  // so a response for PSN p also answers every SEND/WRITE before p, and a
  // READ/atomic before p that has had no response has lost it. Walk the
  // unanswered entries up to p.
  bool lost_response = false;
  bool matched = false;
  bool acked = false;
  for (uint32_t i = qp->out_head; i != qp->out_tail; ++i) {
    Outstanding& e = qp->out_at(i);
    if (!e.remote || e.done) continue;  // local entries, or answered already
    if (e.psn == p->psn) {
      matched = true;
      break;
    }
    if (psn_before(p->psn, e.psn)) break;  // before every unanswered entry: a stale duplicate
    if (is_read_or_atomic(e.opcode)) {
      lost_response = true;
      break;
    }
    e.done = true;  // a SEND/WRITE before p: implicitly acknowledged
    acked = true;
  }
  // Complete what the response acknowledged; the head is then the entry it
  // answers (or the READ/atomic whose response was lost).
  if (acked) retire(qp);
  if (lost_response && qp->state() == QpState::kRts) {
    // Retransmit from the READ/atomic at the head (go-back-N), once per loss:
    // the responses of the first transmission that are still on their way
    // also point past it and must not restart the retry (rxe's started_retry).
    if (!qp->response_retry) {
      Outstanding& h = qp->out_at(qp->out_head);
      if (qp->retry_left == 0) {
        fail_entry(qp, h, kSyndromeTransportRetryExc);
        free_packet(p);
        retire(qp);
        return;
      }
      --qp->retry_left;
      ++stats.retransmits;
      rewind(qp);
      qp->response_retry = true;
      schedule(qp);
    }
    free_packet(p);
    return;
  }
  if (!matched || qp->state() != QpState::kRts || !qp->out_size()) {
    if (!acked) ++stats.packets_dropped;  // stale duplicate (or beyond what is outstanding)
    free_packet(p);
    return;
  }
  Outstanding& o = qp->out_at(qp->out_head);
  // Writes a response into the entry's local buffers, re-checking them (the
  // MR may have been deregistered while the request was in flight).
  auto scatter = [&](const std::byte* src, uint64_t len) -> bool {
    uint64_t off = 0;
    for (uint32_t i = 0; i < o.num_sge && off < len; ++i) {
      const uint64_t n = std::min<uint64_t>(data_seg_length(o.sge[i].length), len - off);
      SoftMr* mr = mr_for(o.sge[i].lkey, qp->pd);
      if (!mr || !(mr->acc & rnic::kAccessLocalWrite) || !mr->covers(o.sge[i].addr, n)) return false;
      dma_to_host(o.sge[i].addr, src + off, n);
      wrote(mr, o.sge[i].addr, n);
      off += n;
    }
    return true;
  };
  switch (p->type) {
    case PacketType::kAck:
      if (o.opcode == kOpRdmaRead || o.opcode == kOpAtomicCs || o.opcode == kOpAtomicFa) {
        fail_entry(qp, o, kSyndromeBadResp);
      } else {
        o.done = true;
      }
      break;
    case PacketType::kReadResp:
      if (o.opcode != kOpRdmaRead) {
        fail_entry(qp, o, kSyndromeBadResp);
      } else if (!scatter(p->payload.data(), p->payload.size())) {
        fail_entry(qp, o, kSyndromeLocalProt);
      } else {
        o.byte_len = uint32_t(p->payload.size());
        o.done = true;
      }
      break;
    case PacketType::kAtomicResp: {
      if (o.opcode != kOpAtomicCs && o.opcode != kOpAtomicFa) {
        fail_entry(qp, o, kSyndromeBadResp);
        break;
      }
      std::byte v[8];
      std::memcpy(v, &p->result, 8);  // host order, as HOST_ENDIANNESS mode returns it
      if (!scatter(v, 8)) {
        fail_entry(qp, o, kSyndromeLocalProt);
      } else {
        o.byte_len = 8;
        o.done = true;
      }
      break;
    }
    case PacketType::kNak:
      if (p->nak == NakCode::kRnr) {
        ++stats.rnr_naks;
        if (qp->rnr_left == 0) {
          fail_entry(qp, o, kSyndromeRnrRetryExc);
          break;
        }
        if (qp->attr.rnr_retry != 7) --qp->rnr_left;
        rewind(qp);
        qp->block = Block::kRnr;
        qp->rnr_until = time() + opts.rnr_delay_ns;
        arm_timer(qp);
        free_packet(p);
        return;
      }
      fail_entry(qp, o, nak_syndrome(p->nak));
      break;
    default:
      fail_entry(qp, o, kSyndromeBadResp);
      break;
  }
  free_packet(p);
  retire(qp);
}

size_t Nic::Impl::process_inbox(size_t budget) {
  if (port->queued.load(std::memory_order_acquire) == 0) return 0;
  PacketList batch;
  size_t n = 0;
  {
    std::lock_guard<std::mutex> l(port->mu);
    while (n < budget && !port->inbox.empty()) {
      Packet& p = port->inbox.front();
      if (p.deliver_at && p.deliver_at > time()) break;  // a delayed link: not yet
      port->inbox.pop_front();
      batch.push_back(p);
      ++n;
    }
    port->queued.fetch_sub(uint32_t(n), std::memory_order_release);
  }
  while (!batch.empty()) {
    Packet* p = &batch.front();
    batch.pop_front();
    ++stats.packets_received;
    SoftQp* qp = qp_by_number(p->dst_qpn);
    // Only the connected peer may talk to a QP.
    if (!qp || qp->peer_nic != p->src_nic || qp->peer_qpn != p->src_qpn) {
      ++stats.packets_dropped;
      free_packet(p);
      continue;
    }
    // The numbers are guessable; the peer's key is not (see SoftQp::key).
    if (p->key != qp->peer_key) {
      ++stats.packets_dropped;
      ++stats.packets_dropped_bad_key;
      wire_note_drop(fabric, WireDrop::kBadKey, *p);
      free_packet(p);
      continue;
    }
    // Bound to the connection of the first authentic packet while it is open.
    if (p->conn.get() != qp->bound_conn.get()) {
      if (!qp->bound_conn || !qp->bound_conn->open.load(std::memory_order_acquire)) {
        qp->bound_conn = p->conn;
      } else {
        ++stats.packets_dropped;
        wire_note_drop(fabric, WireDrop::kWrongConnection, *p);
        free_packet(p);
        continue;
      }
    }
    switch (p->type) {
      case PacketType::kWrite:
      case PacketType::kSend:
      case PacketType::kRead:
      case PacketType::kAtomic:
        handle_request(qp, p);
        break;
      default:
        handle_response(qp, p);
        break;
    }
  }
  return n;
}

void Nic::Impl::scan_timers() {
  for (auto it = timers.begin(); it != timers.end();) {
    SoftQp* qp = &*it;
    ++it;  // qp may leave the list below
    if (qp->block == Block::kRnr && time() >= qp->rnr_until) {
      qp->block = Block::kNone;
      schedule(qp);
    }
    if (qp->out_size()) {
      Outstanding& o = qp->out_at(qp->out_head);
      if (o.remote && !o.done && time() - o.sent_at >= opts.ack_timeout_ns) {
        if (qp->retry_left == 0) {
          fail_entry(qp, o, kSyndromeTransportRetryExc);
          retire(qp);
          continue;
        }
        --qp->retry_left;
        ++stats.retransmits;
        rewind(qp);
        qp->response_retry = false;
        schedule(qp);
      }
    }
    bool waiting_remote = false;
    for (uint32_t i = qp->out_head; i != qp->out_tail && !waiting_remote; ++i)
      waiting_remote = qp->out_at(i).remote && !qp->out_at(i).done;
    if (!waiting_remote && qp->block != Block::kRnr && qp->in_timer) {
      timers.erase(timers.iterator_to(*qp));
      qp->in_timer = false;
    }
  }
}

size_t Nic::Impl::poll_once(size_t budget) {
  if (crashed.load(std::memory_order_relaxed)) return 0;
  // Idle fast path, without the lock: no packet, no doorbell, and the engine
  // had nothing ready or timed when it last ran (busy_hint is raised under
  // the lock whenever a QP is scheduled or a timer armed).
  if (!busy_hint.load(std::memory_order_acquire) && port->queued.load(std::memory_order_acquire) == 0 &&
      !doorbell_flag.load(std::memory_order_acquire)) {
    return 0;
  }
  size_t work = 0;
  {
    std::lock_guard<std::mutex> l(mu);
    if (crashed.load(std::memory_order_relaxed)) return 0;
    now_valid = false;  // the clock is read at most once per poll, and only if needed
    ++stats.polls;
    drain_doorbells();
    work += process_inbox(budget);
    // Timers are coarse (rnr_delay/2 at least): look at them every 16th poll.
    if (!timers.empty() && (stats.polls & 15) == 0 && time() >= next_timer_scan) {
      scan_timers();
      next_timer_scan = time() + std::max<uint64_t>(1000, std::min(opts.rnr_delay_ns, opts.ack_timeout_ns) / 2);
    }
    // QPs woken during this poll (a WAIT satisfied, a SEND_EN) run in it too,
    // so a replica forwards within one poll. Visits are bounded in case a QP
    // keeps re-queueing itself without work.
    size_t wqes = 0;
    size_t visits = ready.size() + 4 * budget;
    while (wqes < budget && visits-- && !ready.empty()) {
      SoftQp* qp = &ready.front();
      ready.pop_front();
      qp->in_ready = false;
      wqes += run_send_queue(qp, budget - wqes);
    }
    work += wqes;
    for (SoftQp* v : overrun_victims) enter_error(v);
    overrun_victims.clear();
    busy_hint.store(!ready.empty() || !timers.empty(), std::memory_order_release);
  }
  if (ctrl_waiting.load(std::memory_order_relaxed) > 0) std::this_thread::yield();
  return work;
}

}  // namespace hyperloop::soft
