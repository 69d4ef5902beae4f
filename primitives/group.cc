// primitives/: the client side of a chain. Builds each operation's message
// (chain_format.h), sends it down the chain, completes operations in order as
// the tail's acknowledgements arrive, and keeps credit so it never sends into
// a slot that is not armed.
#include <cstring>
#include <mutex>

#include "control.h"
#include "hyperloop/internal/memory_limits.h"

namespace hyperloop::prim {

using namespace internal;
using rnic::SendWr;
using rnic::WrOpcode;

namespace internal {
// The in-flight operations, oldest first, linked through the Ops themselves
// (no allocation per operation). Operations complete in issue order, so a
// singly linked FIFO is all it takes.
class OpQueue {
 public:
  bool empty() const { return head_ == nullptr; }
  size_t size() const { return size_; }
  Op& front() const { return *head_; }
  Op& back() const { return *tail_; }
  void push_back(Op& op);
  void pop_front();
  template <typename F>
  bool any(F f) const;

 private:
  Op* head_ = nullptr;
  Op* tail_ = nullptr;
  size_t size_ = 0;
};
}  // namespace internal

namespace {
// nullptr if the memory cannot be had (nothing throws).
std::byte* aligned64(std::vector<std::byte>& v, size_t bytes) {
  if (!::hyperloop::internal::assign_or_exhausted(v, bytes + 64, std::byte{0}, "").is_ok()) return nullptr;
  return reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t{63});
}
}  // namespace

struct Group::Impl {
  rnic::Device* dev = nullptr;
  std::vector<std::unique_ptr<MemberControl>> hosts;
  GroupOptions o;
  uint32_t n = 0;
  std::vector<MemberInfo> members;
  std::vector<bool> member_created;

  std::unique_ptr<rnic::ProtectionDomain> pd;
  std::unique_ptr<rnic::CompletionQueue> data_cq, ack_cq, ctrl_cq;
  std::unique_ptr<rnic::QueuePair> data, ack;
  std::vector<std::unique_ptr<rnic::QueuePair>> ctrl;
  std::vector<std::byte> msg_store, ack_store, staging_store, small_store;
  std::byte *msg = nullptr, *acks = nullptr, *staging = nullptr, *small = nullptr;
  // small: [0, kCreditBytes) credit reads (8 bytes per replica), the rest
  // the bounce buffer of Group::read. Apart, so that a credit READ that timed
  // out and lands late cannot overwrite a read's bytes.
  static constexpr size_t kCreditBytes = 64;
  static_assert(8 * kMaxReplicas <= kCreditBytes);
  // The direct lines (ctrl QPs, ctrl_cq, small, read_seq) have their own
  // lock, so a READ waiting for a slow or dead replica (Group::read,
  // heartbeat) does not hold up the data path. Lock order: mu, then ctrl_mu
  // (a credit refresh, under mu, reads over the direct lines); read and
  // heartbeat take ctrl_mu alone. A READ of theirs that timed out may still
  // land in the bounce buffer: ctrl_poisoned (under ctrl_mu) then refuses
  // every later one, and the group is failed under mu.
  std::mutex ctrl_mu;
  bool ctrl_poisoned = false;
  uint64_t read_seq = 0;  // wr_id of the last synchronous READ
  std::unique_ptr<rnic::MemoryRegion> msg_mr, ack_mr, staging_mr, small_mr;
  size_t msg_stride = 0, ack_stride = 0;
  static constexpr size_t kSmallBytes = 64 * 1024;  // credits + read bounce

  mutable std::mutex mu;
  uint64_t next_seq = 0;
  uint64_t completed = 0;
  uint64_t credit = 0;  // min over replicas of their armed slot counter
  OpQueue inflight;
  size_t stage_head = 0, stage_tail = 0;  // free-running byte positions
  bool broken = false;
  Status broken_status;
  uint64_t polls = 0, idle_polls = 0;

  ~Impl();
  uint64_t now() const { return now_ns(o.clock); }
  void progress() const {
    if (o.progress) o.progress();
  }
  // What a call on a broken group returns: kUnavailable, with the cause.
  Status refused() const {
    return Status(StatusCode::kUnavailable, "group is broken (" + broken_status.to_string() + ")");
  }
  Status build();
  void fail_all(Status s);
  size_t poll_locked();
  Status refresh_credit(uint64_t deadline);
  Status acquire(Op& op, uint64_t deadline);
  Status read_sync(rnic::QueuePair& qp, uint64_t raddr, uint32_t rkey, std::byte* dst, uint32_t len,
                   uint64_t deadline);
  Status direct_read(std::unique_lock<std::mutex>& c, uint32_t replica, uint64_t raddr, uint32_t rkey, std::byte* dst,
                     uint32_t len, uint64_t deadline, const char* what);
  bool is_broken() const;
  enum class Kind { kWrite, kCas, kMemcpy, kFlush };
  // offset: gWRITE/gCAS target; for gMEMCPY the destination (memcpy_len bytes).
  template <typename FillEntry>
  Status issue(Op& op, Kind kind, std::span<const std::byte> payload, uint64_t offset, FillEntry fill,
               uint64_t memcpy_len = 0);
  bool conflicts(uint64_t lo, uint64_t hi, bool is_write) const;
  // What an issue call returns; a refusal is also recorded in the Op (unless
  // it is still in flight from an earlier issue), so wait() returns it at once.
  Status settle(Op& op, Status s) {
    if (s.is_ok()) return s;
    std::lock_guard<std::mutex> l(mu);
    if (!op.linked_) {
      op.status_ = s;
      op.group_ = this;
      op.done_.store(true, std::memory_order_release);
    }
    return s;
  }
  Status wait_conflicts(uint64_t lo, uint64_t hi, bool is_write, uint64_t deadline);
  size_t ranged_inflight = 0;  // in-flight ops with ranges
};

void OpQueue::push_back(Op& op) {
  op.next_ = nullptr;
  op.linked_ = true;
  if (tail_)
    tail_->next_ = &op;
  else
    head_ = &op;
  tail_ = &op;
  ++size_;
}

void OpQueue::pop_front() {
  Op* op = head_;
  head_ = op->next_;
  if (!head_) tail_ = nullptr;
  op->next_ = nullptr;
  op->linked_ = false;
  --size_;
}

template <typename F>
bool OpQueue::any(F f) const {
  for (const Op* op = head_; op; op = op->next_)
    if (f(*op)) return true;
  return false;
}

// True if an operation on [lo, hi) could take effect out of order with an
// in-flight one: their bytes overlap and exactly one of them is a gWRITE
// (a gWRITE's payload lands before its slot runs and is forwarded from the
// region after it). REQUIRES: mu held.
bool Group::Impl::conflicts(uint64_t lo, uint64_t hi, bool is_write) const {
  if (ranged_inflight == 0) return false;
  return inflight.any([&](const Op& op) {
    if (op.write_ranges_ == is_write) return false;
    for (uint8_t r = 0; r < op.ranges_; ++r)
      if (lo < op.hi_[r] && op.lo_[r] < hi) return true;
    return false;
  });
}

// Polls until nothing in flight conflicts with [lo, hi). REQUIRES: mu held.
Status Group::Impl::wait_conflicts(uint64_t lo, uint64_t hi, bool is_write, uint64_t deadline) {
  while (!broken && conflicts(lo, hi, is_write)) {
    poll_locked();
    if (now() > deadline)
      return Status(StatusCode::kDeadlineExceeded, "an earlier operation on these bytes did not complete");
    progress();
  }
  return broken ? refused() : Status::ok();
}

Group::Impl::~Impl() {
  fail_all(Status(StatusCode::kAborted, "group destroyed"));
  for (uint32_t i = 0; i < members.size(); ++i)
    if (member_created[i]) hosts[i]->drop(o.tenant);
}

void Group::Impl::fail_all(Status s) {
  if (!broken) {
    broken = true;
    broken_status = s;
  }
  ranged_inflight = 0;
  while (!inflight.empty()) {
    Op& op = inflight.front();
    inflight.pop_front();
    op.status_ = s;
    op.done_.store(true, std::memory_order_release);
  }
}

Status Group::Impl::build() {
  members.resize(n);
  member_created.assign(n, false);
  for (uint32_t i = 0; i < n; ++i) {
    auto info = hosts[i]->create(o.tenant, i, n, o);
    if (!info.is_ok()) return info.status();
    members[i] = *info;
    member_created[i] = true;
  }
  HL_ASSIGN_OR_RETURN(pd, dev->alloc_pd());
  const uint32_t S = o.slots;
  HL_ASSIGN_OR_RETURN(data_cq, dev->create_cq({.cqe_count = std::max<uint32_t>(S * 4, 256)}));
  HL_ASSIGN_OR_RETURN(ack_cq, dev->create_cq({.cqe_count = std::max<uint32_t>(S * 2, 256)}));
  HL_ASSIGN_OR_RETURN(ctrl_cq, dev->create_cq({.cqe_count = 256}));
  rnic::QpAttr a;
  a.send_cq = data_cq.get();
  a.recv_cq = data_cq.get();
  a.send_wqebbs = S * 4;
  a.recv_wqes = 16;
  HL_ASSIGN_OR_RETURN(data, pd->create_qp(a));
  a.send_cq = ack_cq.get();
  a.recv_cq = ack_cq.get();
  a.send_wqebbs = 16;
  a.recv_wqes = S;
  HL_ASSIGN_OR_RETURN(ack, pd->create_qp(a));
  a.send_cq = ctrl_cq.get();
  a.recv_cq = ctrl_cq.get();
  a.send_wqebbs = 64;
  a.recv_wqes = 16;
  for (uint32_t i = 0; i < n; ++i) {
    HL_ASSIGN_OR_RETURN(auto q, pd->create_qp(a));
    ctrl.push_back(std::move(q));
  }
  msg_stride = slot_stride(n);
  ack_stride = 64;
  msg = aligned64(msg_store, msg_stride * S);
  acks = aligned64(ack_store, ack_stride * S);
  staging = aligned64(staging_store, o.staging_bytes);
  small = aligned64(small_store, kSmallBytes);
  if (!msg || !acks || !staging || !small)
    return Status(StatusCode::kResourceExhausted,
                  "no memory for the group's buffers (staging_bytes " + std::to_string(o.staging_bytes) + ")");
  HL_ASSIGN_OR_RETURN(msg_mr, pd->register_memory(msg, msg_stride * S, 0));
  HL_ASSIGN_OR_RETURN(ack_mr, pd->register_memory(acks, ack_stride * S, rnic::kAccessLocalWrite));
  HL_ASSIGN_OR_RETURN(staging_mr, pd->register_memory(staging, o.staging_bytes, 0));
  HL_ASSIGN_OR_RETURN(small_mr, pd->register_memory(small, kSmallBytes, rnic::kAccessLocalWrite));

  // Wire the chain: client.data -> R0.in, Ri.out -> Ri+1.in, Rn-1.out -> client.ack.
  for (uint32_t i = 0; i < n; ++i) {
    const rnic::QpAddress prev = i == 0 ? data->address() : members[i - 1].out_addr;
    const rnic::QpAddress next = i + 1 < n ? members[i + 1].in_addr : ack->address();
    HL_RETURN_IF_ERROR(hosts[i]->connect(o.tenant, prev, next, ctrl[i]->address()));
  }
  HL_RETURN_IF_ERROR(data->init(0));
  HL_RETURN_IF_ERROR(data->connect(members[0].in_addr));
  HL_RETURN_IF_ERROR(data->ready_to_send());
  // A kRxe tail forwards nothing as a zero-length RDMA WRITE (rxe has no
  // NOP), which the ack QP must accept. It needs no rkey (IBA C9-88) and no
  // client MR allows remote writes, so nothing can land here that way.
  const bool zero_length_writes = members[n - 1].entry_format == EntryFormat::kRxe;
  HL_RETURN_IF_ERROR(ack->init(zero_length_writes ? rnic::kAccessRemoteWrite : 0));
  HL_RETURN_IF_ERROR(ack->connect(members[n - 1].out_addr));
  HL_RETURN_IF_ERROR(ack->ready_to_send());
  for (uint32_t i = 0; i < n; ++i) {
    HL_RETURN_IF_ERROR(ctrl[i]->init(0));
    HL_RETURN_IF_ERROR(ctrl[i]->connect(members[i].ctrl_addr_qp));
    HL_RETURN_IF_ERROR(ctrl[i]->ready_to_send());
  }
  for (uint32_t i = 0; i < n; ++i) HL_RETURN_IF_ERROR(hosts[i]->start(o.tenant));
  credit = S;
  return Status::ok();
}

size_t Group::Impl::poll_locked() {
  if (broken) return 0;
  rnic::WorkCompletion wc[32];
  size_t done = 0;
  // The client's own sends: errors, and the success of every (slots/2)-th
  // SEND, the one signaled so that hardware (mlx5) can reclaim the send
  // queue's unsignaled WQEs. Checked every 16th poll.
  if ((++polls & 15) == 0) {
    auto r = data_cq->poll(wc);
    if (!r.is_ok()) {
      fail_all(Status(StatusCode::kUnavailable, r.status().message()));
      return 0;
    }
    for (size_t k = 0; k < *r; ++k) {
      if (wc[k].status != rnic::WcStatus::kSuccess) {
        fail_all(Status(StatusCode::kUnavailable,
                        "chain head unreachable: " + std::string(rnic::wc_status_name(wc[k].status))));
        return 0;
      }
    }
  }
  auto r = ack_cq->poll(wc);
  if (!r.is_ok()) {
    fail_all(Status(StatusCode::kUnavailable, r.status().message()));
    return 0;
  }
  for (size_t k = 0; k < *r; ++k) {
    if (wc[k].status != rnic::WcStatus::kSuccess || inflight.empty() || wc[k].wr_id != inflight.front().seq_) {
      fail_all(Status(StatusCode::kUnavailable,
                      "chain broke: acknowledgement " + std::string(rnic::wc_status_name(wc[k].status))));
      return done;
    }
    Op& op = inflight.front();
    inflight.pop_front();
    if (op.ranges_) --ranged_inflight;
    if (op.is_cas_) {
      const std::byte* res = acks + (op.seq_ & (o.slots - 1)) * ack_stride;
      for (uint32_t i = 0; i < n; ++i) std::memcpy(&op.old_[i], res + 8 * i, 8);
    }
    stage_tail = op.staging_end_;
    ++completed;
    op.status_ = Status::ok();
    op.done_.store(true, std::memory_order_release);
    ++done;
  }
  // The deadline is coarse: look at the clock every 64th empty poll only.
  if (!done && !inflight.empty() && (++idle_polls & 63) == 0 && now() > inflight.front().deadline_ns_)
    fail_all(Status(StatusCode::kDeadlineExceeded, "no acknowledgement from the chain within op_timeout"));
  return done;
}

// REQUIRES: ctrl_mu held.
Status Group::Impl::read_sync(rnic::QueuePair& qp, uint64_t raddr, uint32_t rkey, std::byte* dst, uint32_t len,
                              uint64_t deadline) {
  rnic::Sge sg{reinterpret_cast<uint64_t>(dst), len, small_mr->lkey()};
  SendWr wr;
  wr.opcode = WrOpcode::kRdmaRead;
  wr.flags = rnic::kSendSignaled;
  wr.sg = {&sg, 1};
  wr.remote_addr = raddr;
  wr.rkey = rkey;
  wr.wr_id = ++read_seq;
  HL_RETURN_IF_ERROR(qp.post_send(wr));
  rnic::WorkCompletion wc;
  for (;;) {
    auto r = ctrl_cq->poll({&wc, 1});
    if (!r.is_ok()) return r.status();
    // A completion of an earlier READ that timed out is not ours: skip it.
    if (*r && wc.wr_id == wr.wr_id) break;
    if (*r) continue;
    if (now() > deadline) return Status(StatusCode::kDeadlineExceeded, "replica did not answer a READ");
    progress();
  }
  if (wc.status != rnic::WcStatus::kSuccess)
    return Status(StatusCode::kUnavailable, "READ failed: " + std::string(rnic::wc_status_name(wc.status)));
  return Status::ok();
}

Status Group::Impl::refresh_credit(uint64_t deadline) {
  // A credit READ that timed out and lands late lands in the credit words
  // only, with a value older than any read since: at worst a smaller credit.
  std::lock_guard<std::mutex> c_lock(ctrl_mu);
  uint64_t c = UINT64_MAX;
  for (uint32_t i = 0; i < n; ++i) {
    HL_RETURN_IF_ERROR(read_sync(*ctrl[i], members[i].ctrl_addr + kArmedSeqOffset, members[i].ctrl_rkey, small + 8 * i,
                                 8, deadline));
    uint64_t v;
    std::memcpy(&v, small + 8 * i, 8);
    c = std::min(c, v);
  }
  credit = std::max(credit, c);
  return Status::ok();
}

// Waits (polling) for a free, armed slot. REQUIRES: mu held.
Status Group::Impl::acquire(Op& op, uint64_t deadline) {
  if (op.linked_) return invalid_argument("this Op is still in flight");
  while (!broken) {
    if (next_seq - completed < o.slots) {
      if (next_seq < credit) return Status::ok();
      if (Status s = refresh_credit(deadline); !s.is_ok()) {
        if (s.code() == StatusCode::kDeadlineExceeded)
          return Status(StatusCode::kDeadlineExceeded, "no armed slot within op_timeout (replicas not re-arming)");
        // The direct line to a replica failed: the chain cannot be trusted.
        fail_all(Status(StatusCode::kUnavailable, "credit read failed: " + s.message()));
        return refused();
      }
      if (next_seq < credit) return Status::ok();
    }
    poll_locked();
    if (now() > deadline)
      return Status(StatusCode::kDeadlineExceeded, "no armed slot within op_timeout (replicas not re-arming)");
    progress();
  }
  return refused();
}

template <typename FillEntry>
Status Group::Impl::issue(Op& op, Kind kind, std::span<const std::byte> payload, uint64_t offset, FillEntry fill,
                          uint64_t memcpy_len) {
  const uint64_t deadline = now() + o.op_timeout_ns;
  HL_RETURN_IF_ERROR(acquire(op, deadline));
  if (kind == Kind::kWrite) HL_RETURN_IF_ERROR(wait_conflicts(offset, offset + payload.size(), true, deadline));
  if (kind == Kind::kCas) HL_RETURN_IF_ERROR(wait_conflicts(offset, offset + 8, false, deadline));
  if (kind == Kind::kMemcpy) HL_RETURN_IF_ERROR(wait_conflicts(offset, offset + memcpy_len, false, deadline));
  size_t stage_at = stage_head;
  if (!payload.empty()) {
    // Staging is a ring in completion order; a payload never wraps.
    for (;;) {
      size_t pos = stage_head % o.staging_bytes;
      size_t skip = pos + payload.size() > o.staging_bytes ? o.staging_bytes - pos : 0;
      if (stage_head + skip + payload.size() - stage_tail <= o.staging_bytes) {
        stage_at = stage_head + skip;
        break;
      }
      if (inflight.empty()) return internal_error("staging accounting");
      poll_locked();
      if (broken) return refused();
      if (now() > deadline) return Status(StatusCode::kDeadlineExceeded, "staging buffer full");
      progress();
    }
  }
  const uint64_t seq = next_seq;
  const size_t slot = seq & (o.slots - 1);
  std::byte* m = msg + slot * msg_stride;
  for (uint32_t i = 0; i < n; ++i) {
    std::byte* e = m + size_t(i) * kEntryBytes;
    entry_clear(members[i].entry_format, e);
    fill(e, i);
  }
  std::memset(m + size_t(n) * kEntryBytes, 0, 8 * n);

  rnic::Sge ack_sg{reinterpret_cast<uint64_t>(acks + slot * ack_stride), 8 * n, ack_mr->lkey()};
  Status s = ack->post_recv({.wr_id = seq, .sg = {&ack_sg, 1}});
  if (s.is_ok() && !payload.empty()) {
    std::byte* dst = staging + (stage_at % o.staging_bytes);
    std::memcpy(dst, payload.data(), payload.size());
    rnic::Sge sg{reinterpret_cast<uint64_t>(dst), uint32_t(payload.size()), staging_mr->lkey()};
    SendWr wr;
    wr.opcode = WrOpcode::kRdmaWrite;
    wr.sg = {&sg, 1};
    wr.remote_addr = members[0].region_addr + offset;
    wr.rkey = members[0].region_rkey;
    s = data->post_send(wr);
  }
  if (s.is_ok()) {
    rnic::Sge sg{reinterpret_cast<uint64_t>(m), uint32_t(message_bytes(n, 0)), msg_mr->lkey()};
    SendWr wr;
    wr.opcode = WrOpcode::kSend;
    wr.sg = {&sg, 1};
    const uint64_t every = std::max<uint32_t>(o.slots / 2, 1);
    if (seq % every == every - 1) wr.flags = rnic::kSendSignaled;
    s = data->post_send(wr);
  }
  if (!s.is_ok()) {
    fail_all(Status(StatusCode::kUnavailable, "posting to the chain failed: " + s.to_string()));
    return broken_status;
  }
  op.done_.store(false, std::memory_order_relaxed);
  op.status_ = Status::ok();
  op.group_ = this;
  op.is_cas_ = kind == Kind::kCas;
  op.replicas_ = n;
  op.seq_ = seq;
  op.deadline_ns_ = deadline;
  op.staging_end_ = payload.empty() ? stage_tail : stage_at + payload.size();
  std::memset(op.old_, 0, sizeof op.old_);
  // A payload-less op frees nothing; keep the ring's tail monotonic.
  if (payload.empty() && !inflight.empty()) op.staging_end_ = inflight.back().staging_end_;
  if (!payload.empty()) stage_head = stage_at + payload.size();
  op.ranges_ = 0;
  op.write_ranges_ = kind == Kind::kWrite;
  if (kind == Kind::kWrite) {
    op.ranges_ = 1;
    op.lo_[0] = offset;
    op.hi_[0] = offset + payload.size();
    ++ranged_inflight;
  }
  inflight.push_back(op);
  ++next_seq;
  return Status::ok();
}

// ---- Group ----------------------------------------------------------------------------
Group::Group(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Group::~Group() = default;

namespace {
Status check_options(const GroupOptions& o, size_t replicas) {
  if (replicas == 0 || replicas > kMaxReplicas) return invalid_argument("a chain has 1 to 7 replicas");
  if (o.slots < 2 || o.slots > 8192 || (o.slots & (o.slots - 1)))
    return invalid_argument("slots must be a power of two in [2, 8192]");
  if (o.rearm_batch == 0 || o.rearm_batch > o.slots) return invalid_argument("rearm_batch must be in [1, slots]");
  if (o.region_size == 0 || o.region_size % 8) return invalid_argument("region_size must be a positive multiple of 8");
  if (o.staging_bytes == 0) return invalid_argument("staging_bytes must be positive");
  // Before anything is allocated: more staging than this machine has.
  HL_RETURN_IF_ERROR(::hyperloop::internal::check_fits_in_memory(o.staging_bytes, "GroupOptions::staging_bytes"));
  return Status::ok();
}
}  // namespace

Result<std::unique_ptr<Group>> Group::create(rnic::Device& client_device, std::span<ReplicaHost* const> replicas,
                                             const GroupOptions& o) {
  for (auto* r : replicas)
    if (!r) return invalid_argument("null replica host");
  HL_RETURN_IF_ERROR(check_options(o, replicas.size()));
  auto impl = std::make_unique<Impl>();
  impl->dev = &client_device;
  impl->o = o;
  impl->n = uint32_t(replicas.size());
  for (auto* r : replicas) impl->hosts.push_back(local_control(*r));
  HL_RETURN_IF_ERROR(impl->build());
  return std::unique_ptr<Group>(new Group(std::move(impl)));
}

Result<std::unique_ptr<Group>> Group::connect(rnic::Device& client_device, std::span<const std::string> replicas,
                                              const GroupOptions& o) {
  HL_RETURN_IF_ERROR(check_options(o, replicas.size()));
  auto impl = std::make_unique<Impl>();
  impl->dev = &client_device;
  impl->o = o;
  impl->n = uint32_t(replicas.size());
  for (const auto& endpoint : replicas) {
    HL_ASSIGN_OR_RETURN(auto control, remote_control(endpoint, o.tenant, o.secret, o.control_timeout_ns));
    impl->hosts.push_back(std::move(control));
  }
  HL_RETURN_IF_ERROR(impl->build());
  return std::unique_ptr<Group>(new Group(std::move(impl)));
}

namespace {
Status check_range(const Group& g, uint64_t offset, uint64_t len, const char* what) {
  if (len == 0) return invalid_argument(std::string(what) + ": zero length");
  if (offset > g.region_size() || len > g.region_size() - offset)
    return out_of_range(std::string(what) + ": [" + std::to_string(offset) + ", +" + std::to_string(len) +
                        ") is outside the " + std::to_string(g.region_size()) + "-byte region");
  if (len > (1ull << 31)) return invalid_argument(std::string(what) + ": longer than 2 GiB");
  return Status::ok();
}
}  // namespace

Status Group::write(Op& op, uint64_t offset, std::span<const std::byte> bytes) {
  return impl_->settle(op, [&]() -> Status {
    HL_RETURN_IF_ERROR(check_range(*this, offset, bytes.size(), "gWRITE"));
    if (bytes.size() > impl_->o.staging_bytes) return invalid_argument("gWRITE: payload larger than staging_bytes");
    std::lock_guard<std::mutex> l(impl_->mu);
    auto& g = *impl_;
    const uint32_t len = uint32_t(bytes.size());
    return g.issue(op, Impl::Kind::kWrite, bytes, offset, [&](std::byte* e, uint32_t i) {
      if (i + 1 < g.n)
        entry_forward_write(g.members[i].entry_format, e, g.members[i].region_addr + offset, g.members[i].region_lkey,
                            g.members[i + 1].region_addr + offset, g.members[i + 1].region_rkey, len);
    });
  }());
}

Status Group::cas(Op& op, uint64_t offset, uint64_t compare, uint64_t swap, uint32_t mask) {
  return impl_->settle(op, [&]() -> Status {
    HL_RETURN_IF_ERROR(check_range(*this, offset, 8, "gCAS"));
    if (offset % 8) return invalid_argument("gCAS: offset must be 8-byte aligned");
    if ((mask & ((1u << impl_->n) - 1)) == 0 || (mask >> impl_->n))
      return invalid_argument("gCAS: execute_mask must name replicas 0.." + std::to_string(impl_->n - 1));
    std::lock_guard<std::mutex> l(impl_->mu);
    auto& g = *impl_;
    // issue() fills the entries of slot next_seq.
    HL_RETURN_IF_ERROR(g.issue(op, Impl::Kind::kCas, {}, offset, [&](std::byte* e, uint32_t i) {
      const auto& m = g.members[i];
      if (mask & (1u << i))
        entry_local_cas(m.entry_format, e, m.region_addr + offset, m.region_rkey, compare, swap,
                        slot_result_addr(m.ctrl_addr, g.o.slots, g.n, i, g.next_seq), m.ctrl_lkey);
    }));
    op.ranges_ = 1;
    op.lo_[0] = offset;
    op.hi_[0] = offset + 8;
    ++g.ranged_inflight;
    return Status::ok();
  }());
}

Status Group::memcpy(Op& op, uint64_t src, uint64_t dst, uint64_t len) {
  return impl_->settle(op, [&]() -> Status {
    HL_RETURN_IF_ERROR(check_range(*this, src, len, "gMEMCPY source"));
    HL_RETURN_IF_ERROR(check_range(*this, dst, len, "gMEMCPY destination"));
    if (src < dst + len && dst < src + len) return invalid_argument("gMEMCPY: source and destination overlap");
    std::lock_guard<std::mutex> l(impl_->mu);
    auto& g = *impl_;
    HL_RETURN_IF_ERROR(g.issue(
        op, Impl::Kind::kMemcpy, {}, dst,
        [&](std::byte* e, uint32_t i) {
          const auto& m = g.members[i];
          entry_local_write(m.entry_format, e, m.region_addr + src, m.region_lkey, m.region_addr + dst, m.region_rkey,
                            uint32_t(len));
        },
        len));
    op.ranges_ = 2;
    op.lo_[0] = src;
    op.hi_[0] = src + len;
    op.lo_[1] = dst;
    op.hi_[1] = dst + len;
    ++g.ranged_inflight;
    return Status::ok();
  }());
}

Status Group::flush(Op& op, uint64_t offset, uint64_t len) {
  return impl_->settle(op, [&]() -> Status {
    HL_RETURN_IF_ERROR(check_range(*this, offset, len, "gFLUSH"));
    std::lock_guard<std::mutex> l(impl_->mu);
    auto& g = *impl_;
    // A 1-byte READ served by each replica's NIC: the hardware-safe flush.
    return g.issue(op, Impl::Kind::kFlush, {}, 0, [&](std::byte* e, uint32_t i) {
      const auto& m = g.members[i];
      entry_local_read(m.entry_format, e, m.ctrl_addr + kScratchOffset, m.ctrl_lkey, m.region_addr + offset,
                       m.region_rkey, 1);
    });
  }());
}

// Group::read and Group::heartbeat hold ctrl_mu only (see Impl::ctrl_mu).
// REQUIRES: ctrl_mu held. Checks that the group and the direct lines can
// still be used; after a READ that timed out, poisons the lines and (after
// letting go of ctrl_mu: lock order) fails the group.
Status Group::Impl::direct_read(std::unique_lock<std::mutex>& c, uint32_t replica, uint64_t raddr, uint32_t rkey,
                                std::byte* dst, uint32_t len, uint64_t deadline, const char* what) {
  if (ctrl_poisoned) return Status(StatusCode::kUnavailable, "an earlier READ over the direct line timed out");
  const Status st = read_sync(*ctrl[replica], raddr, rkey, dst, len, deadline);
  if (st.code() == StatusCode::kDeadlineExceeded) {
    // The READ is still posted and may land in the bounce buffer later:
    // nothing read over this group could be trusted again.
    ctrl_poisoned = true;
    c.unlock();
    std::lock_guard<std::mutex> l(mu);
    fail_all(Status(StatusCode::kUnavailable, std::string("a replica did not answer ") + what + " in time"));
    c.lock();
  }
  return st;
}

bool Group::Impl::is_broken() const {
  std::lock_guard<std::mutex> l(mu);
  return broken;
}

Status Group::read(uint32_t replica, uint64_t offset, std::span<std::byte> dst) {
  HL_RETURN_IF_ERROR(check_range(*this, offset, dst.size(), "read"));
  auto& g = *impl_;
  if (replica >= g.n) return out_of_range("read: no replica " + std::to_string(replica));
  if (g.is_broken()) {
    std::lock_guard<std::mutex> l(g.mu);
    return g.refused();
  }
  std::unique_lock<std::mutex> c(g.ctrl_mu);
  const uint64_t deadline = g.now() + g.o.op_timeout_ns;
  for (size_t done = 0; done < dst.size();) {
    const uint32_t chunk = uint32_t(std::min<size_t>(dst.size() - done, Impl::kSmallBytes - Impl::kCreditBytes));
    std::byte* bounce = g.small + Impl::kCreditBytes;
    HL_RETURN_IF_ERROR(g.direct_read(c, replica, g.members[replica].region_addr + offset + done,
                                     g.members[replica].region_rkey, bounce, chunk, deadline, "a READ"));
    std::memcpy(dst.data() + done, bounce, chunk);
    done += chunk;
  }
  return Status::ok();
}

Result<uint64_t> Group::heartbeat(uint32_t replica, uint64_t timeout_ns) {
  auto& g = *impl_;
  if (replica >= g.n) return out_of_range("heartbeat: no replica " + std::to_string(replica));
  if (g.is_broken()) {
    std::lock_guard<std::mutex> l(g.mu);
    return g.refused();
  }
  std::unique_lock<std::mutex> c(g.ctrl_mu);
  std::byte* bounce = g.small + Impl::kCreditBytes;
  HL_RETURN_IF_ERROR(g.direct_read(c, replica, g.members[replica].ctrl_addr + kHeartbeatOffset,
                                   g.members[replica].ctrl_rkey, bounce, 8,
                                   g.now() + std::min(timeout_ns, g.o.op_timeout_ns), "a heartbeat READ"));
  uint64_t v;
  std::memcpy(&v, bounce, 8);
  return v;
}

size_t Group::poll() {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->poll_locked();
}

Status Group::wait(Op& op, uint64_t timeout_ns) {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    if (op.linked_ && op.group_ != impl_.get()) return invalid_argument("wait: the Op is in flight on another group");
  }
  const uint64_t start = timeout_ns == UINT64_MAX ? 0 : impl_->now();
  for (uint64_t turn = 1; !op.done(); ++turn) {
    poll();
    if (op.done()) break;
    if (timeout_ns != UINT64_MAX && (turn & 63) == 0 && impl_->now() - start > timeout_ns)
      return Status(StatusCode::kDeadlineExceeded, "wait timed out");
    impl_->progress();
  }
  return op.status();
}

uint32_t Group::replicas() const { return impl_->n; }
size_t Group::region_size() const { return impl_->o.region_size; }
ForwardMode Group::mode() const { return impl_->o.mode; }
size_t Group::in_flight() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->inflight.size();
}
void Group::fail(Status why) {
  if (why.is_ok()) why = unavailable("Group::fail");
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->fail_all(std::move(why));
}

bool Group::broken() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->broken;
}
uint64_t Group::completed() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->completed;
}

}  // namespace hyperloop::prim
