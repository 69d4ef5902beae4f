// primitives/: the replica side. Members (one tenant's chain position), the
// slot arming that makes the NIC forward by itself, and the host's agent
// thread: in offload mode it only re-arms used slots, in batches; in CPU
// forwarding mode it polls, forwards and re-posts (the baseline).
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string_view>
#include <thread>

#include "control.h"
#include "host_access.h"
#include "hyperloop/clock.h"
#include "hyperloop/internal/memory_limits.h"
#include "hyperloop/log.h"

namespace hyperloop::prim {

using namespace internal;
using rnic::Access;
using rnic::SendWr;
using rnic::WrOpcode;

std::string_view forward_mode_name(ForwardMode m) {
  return m == ForwardMode::kOffload ? "offload" : "cpu-forward";
}

struct ReplicaHost::Impl {
  rnic::Device* device = nullptr;
  std::unique_ptr<ControlServer> control;  // destroyed first (see ~ReplicaHost)
  ReplicaHostOptions opts;
  mutable std::mutex mu;  // tenants and members
  std::map<uint32_t, std::unique_ptr<Tenant>> tenants;
  uint64_t next_member_id = 0;  // guarded by mu

  std::thread agent;
  std::atomic<bool> stop{false};
  std::mutex freeze_mu;
  std::condition_variable freeze_cv;
  bool freeze_requested = false;
  bool parked = false;
  std::atomic<uint64_t> cpu_ns{0};
  std::atomic<uint64_t> rearmed{0};
  std::atomic<uint64_t> forwarded{0};
  std::atomic<uint64_t> event_sleeps{0}, event_wakeups{0};
  std::atomic<uint64_t> broken_total{0};
  std::atomic<int64_t> holds{0};  // HostHolds on this host
  // ReplicaHostOptions::CpuWait::kEvents: the channel every CPU-forwarding
  // member's CQs are attached to, and an eventfd that wakes the agent for
  // stop, freeze and new members. Null / -1 when the agent spins.
  std::unique_ptr<rnic::CompletionChannel> channel;
  int wake_fd = -1;

  ~Impl() {
    if (wake_fd >= 0) close(wake_fd);
  }
  void wake() {
    if (wake_fd < 0) return;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_fd, &one, sizeof one);
  }
  bool arm_members();
  void wait_for_events(uint32_t timeout_us);
  void run_agent(ReplicaHost* host);
  size_t serve(Member& m);
  size_t serve_offload(Member& m);
  size_t serve_cpu(Member& m);
};

namespace {

uint64_t thread_cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

std::byte* wqe_at(const mlx5::SendRingView& r, uint64_t bb) { return r.bb(uint32_t(bb)); }

// Sets the 16-bit wqe_index of the WQE at `bb` (ctrl bytes 1-2, big-endian).
void set_wqe_index(const mlx5::SendRingView& r, uint64_t bb) {
  std::byte* p = wqe_at(r, bb);
  const uint16_t be = mlx5::to_be16(uint16_t(bb));
  std::memcpy(p + 1, &be, 2);
}

// Sets a WAIT / SEND_EN WQE's wqe_index and max_index in place.
void set_wait_en(const mlx5::SendRingView& r, uint64_t bb, uint32_t max_index) {
  set_wqe_index(r, bb);
  const uint32_t be = mlx5::to_be32(max_index);
  std::memcpy(wqe_at(r, bb) + mlx5::kWaitEnIndexOffset, &be, 4);
}

// The reason a failed completion broke a member, for its log line.
std::string wc_reason(const char* queue, const rnic::WorkCompletion& wc) {
  return std::string(queue) + "'s completion " + std::string(rnic::wc_status_name(wc.status)) +
         " (wr_id " + std::to_string(wc.wr_id) + ", vendor syndrome " + std::to_string(wc.vendor_syndrome) + ")";
}

// Slot `seq`'s positions. Every WQE is one WQEBB, so positions are counters:
// loop: seq; out: 2 seq (forward WRITE), 2 seq + 1 (SEND); master: 4 seq .. 4 seq + 3.
constexpr uint64_t kMasterPerSlot = 4;
constexpr uint64_t kOutPerSlot = 2;

}  // namespace

// ---- member creation and connection ---------------------------------------------
namespace {
// Stops a member before it is destroyed, downstream first: its forwarding
// queues (out, loop) go to ERROR before its receive queue does, so the
// flush completions of the slot RECVs cannot release a pre-posted WQE that
// still carries an earlier message's parameters; then the master and the
// client's direct line. Nothing of the member runs after this returns.
void fence_queues(Member& m) {
  for (rnic::QueuePair* q : {m.out.get(), m.loop.get(), m.master.get(), m.in.get(), m.ctrl_qp.get()})
    if (q) (void)q->set_error();
  m.fail("fenced by a newer epoch");
}
}  // namespace

// ---- the durable fence epoch (pmem tenants) ---------------------------------------
namespace {
// One line, "hyperloop fence epoch N\n", replaced atomically: written to
// path.tmp, fsync'd, renamed over path, and the directory fsync'd; a crash
// leaves the old file or the new one, never a torn one.
constexpr std::string_view kEpochFilePrefix = "hyperloop fence epoch ";

Status errno_status(const std::string& what) {
  return Status(StatusCode::kUnavailable, what + ": " + std::strerror(errno));
}

Status write_fence_epoch(const std::string& path, uint64_t epoch) {
  const std::string text = std::string(kEpochFilePrefix) + std::to_string(epoch) + "\n";
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return errno_status("fence epoch: open " + tmp);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      Status st = errno_status("fence epoch: write " + tmp);
      ::close(fd);
      return st;
    }
    done += size_t(w);
  }
  if (::fsync(fd) != 0) {
    Status st = errno_status("fence epoch: fsync " + tmp);
    ::close(fd);
    return st;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return errno_status("fence epoch: rename " + tmp + " to " + path);
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno_status("fence epoch: open directory " + dir);
  const int r = ::fsync(dfd);
  ::close(dfd);
  if (r != 0) return errno_status("fence epoch: fsync directory " + dir);
  return Status::ok();
}

// 0 if the file does not exist; kDataLoss if it holds anything but one line
// of the format above.
Result<uint64_t> read_fence_epoch(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return uint64_t{0};
    return errno_status("fence epoch: open " + path);
  }
  char buf[64];
  size_t got = 0;
  for (;;) {
    const ssize_t r = ::read(fd, buf + got, sizeof buf - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      Status st = errno_status("fence epoch: read " + path);
      ::close(fd);
      return st;
    }
    if (r == 0 || (got += size_t(r)) == sizeof buf) break;
  }
  ::close(fd);
  const std::string_view t(buf, got);
  uint64_t epoch = 0;
  const auto corrupt = [&] {
    return Status(StatusCode::kDataLoss, "fence epoch file " + path + " is not one line '" +
                                             std::string(kEpochFilePrefix) + "N': the epochs this host fenced are "
                                             "unknown; restore it, or remove it only if no older client can reach "
                                             "this host");
  };
  if (got == sizeof buf || t.substr(0, kEpochFilePrefix.size()) != kEpochFilePrefix || t.back() != '\n')
    return corrupt();
  const std::string_view digits = t.substr(kEpochFilePrefix.size(), t.size() - kEpochFilePrefix.size() - 1);
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), epoch);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) return corrupt();
  return epoch;
}
}  // namespace

Result<CreatedMember> internal::create_member(ReplicaHost& host, uint32_t tenant_id, uint32_t pos, uint32_t n,
                                              const GroupOptions& o) {
  auto* h = HostAccess::impl(host);
  std::unique_ptr<Member> fenced;  // destroyed after the lock is released
  std::lock_guard<std::mutex> l(h->mu);
  auto it = h->tenants.find(tenant_id);
  if (it == h->tenants.end())
    return not_found("tenant " + std::to_string(tenant_id) + " is not registered on this replica host");
  Tenant& t = *it->second;
  if (t.region_size != o.region_size)
    return invalid_argument("tenant " + std::to_string(tenant_id) + " has a region of " +
                            std::to_string(t.region_size) + " bytes here, not " + std::to_string(o.region_size));
  if (o.epoch < t.fence_epoch)
    return permission_denied("epoch " + std::to_string(o.epoch) + " is fenced: tenant " + std::to_string(tenant_id) +
                             " runs at epoch " + std::to_string(t.fence_epoch) + " on this replica");
  if (t.member && t.member->epoch >= o.epoch)
    return Status(StatusCode::kAlreadyExists, "tenant already has a group on this replica (epoch " +
                                                  std::to_string(t.member->epoch) + ")");
  const auto& caps = h->device->caps();
  const bool offload = o.mode == ForwardMode::kOffload;
  // Offload needs WAIT/SEND_EN and managed queues, and send WQEs that a
  // RECV's scatter can patch: raw mlx5 rings (re-armed in place) or the
  // patched rxe's ring (each use of a slot posted anew).
  const bool mlx5_rings = caps.raw_send_ring && caps.send_wqe_format == rnic::SendWqeFormat::kMlx5;
  const bool rxe_ring = caps.patchable_send_wqes && caps.send_wqe_format == rnic::SendWqeFormat::kRxe;
  if (offload && !(caps.cross_channel && caps.managed_queues && (mlx5_rings || rxe_ring)))
    return not_supported("offload mode needs cross-channel, managed queues and patchable send WQEs; " + caps.name +
                         " has not all of them (use kCpuForward)");

  auto m = std::make_unique<Member>();
  m->tenant = &t;
  m->id = ++h->next_member_id;
  m->epoch = o.epoch;
  m->pos = pos;
  m->n = n;
  m->opts = o;
  m->stride = slot_stride(n);
  m->format = offload ? caps.send_wqe_format : EntryFormat::kMlx5;
  m->rearm_in_place = !offload || mlx5_rings;
  if (offload) {
    const uint32_t most = std::min<uint32_t>(o.rearm_batch, std::max<uint32_t>(1, o.slots / 8));
    m->signal_every = 1;
    while (m->signal_every * 2 <= most) m->signal_every *= 2;
    // Staggered along the chain, so that the replicas' agents do not all
    // wake for the same operation.
    m->signal_offset = uint32_t(uint64_t(pos) * m->signal_every / n) % m->signal_every;
  }
  m->ctrl_mem_storage.assign(kSlotsOffset + m->stride * o.slots + 64, std::byte{0});
  m->ctrl_mem = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(m->ctrl_mem_storage.data()) + 63) & ~uintptr_t{63});
  HL_ASSIGN_OR_RETURN(m->ctrl_mr, t.pd->register_memory(m->ctrl_mem, kSlotsOffset + m->stride * o.slots,
                                                        rnic::kAccessLocalWrite | rnic::kAccessRemoteRead));
  auto& dev = *h->device;
  const uint32_t S = o.slots;
  // A CPU forwarder sleeps on these three (ReplicaHostOptions::CpuWait::kEvents),
  // an offload agent on out's (ReplicaHostOptions::offload_events).
  rnic::CompletionChannel* ch = (offload ? h->opts.offload_events : h->opts.cpu_wait == ReplicaHostOptions::CpuWait::kEvents)
                                    ? h->channel.get()
                                    : nullptr;
  HL_ASSIGN_OR_RETURN(m->in_rcq, dev.create_cq({.cqe_count = std::max<uint32_t>(S, 64) * 2,
                                                .ignore_overrun = offload, .channel = offload ? nullptr : ch}));
  HL_ASSIGN_OR_RETURN(m->loop_scq, dev.create_cq({.cqe_count = std::max<uint32_t>(S, 64) * 2,
                                                  .ignore_overrun = offload, .channel = offload ? nullptr : ch}));
  HL_ASSIGN_OR_RETURN(m->out_scq, dev.create_cq({.cqe_count = std::max<uint32_t>(S, 64) * 4, .channel = ch}));
  // What nobody polls: error and flush completions of the QPs that post
  // nothing of their own (in's send side, out's and loop's receive sides,
  // loop_peer, ctrl_qp) and, in offload mode, the master's WAITs/SEND_ENs.
  // Only the latter can fill it, so only offload (which needs cross-channel
  // devices, all of which ignore overrun) asks to ignore overrun.
  HL_ASSIGN_OR_RETURN(m->misc_cq, dev.create_cq({.cqe_count = 1024, .ignore_overrun = offload}));

  rnic::QpAttr a;
  a.max_recv_sge = 8;
  a.send_cq = m->misc_cq.get();
  a.recv_cq = m->in_rcq.get();
  a.send_wqebbs = 64;
  a.recv_wqes = S;
  HL_ASSIGN_OR_RETURN(m->in, t.pd->create_qp(a));
  a.recv_cq = m->misc_cq.get();
  a.recv_wqes = 16;
  a.send_cq = m->out_scq.get();
  a.send_wqebbs = S * kOutPerSlot;
  a.managed_send = offload;
  HL_ASSIGN_OR_RETURN(m->out, t.pd->create_qp(a));
  a.send_cq = m->loop_scq.get();
  a.send_wqebbs = std::max<uint32_t>(S, 2);
  HL_ASSIGN_OR_RETURN(m->loop, t.pd->create_qp(a));
  a.managed_send = false;
  a.send_cq = m->misc_cq.get();
  a.send_wqebbs = 64;
  HL_ASSIGN_OR_RETURN(m->loop_peer, t.pd->create_qp(a));
  HL_ASSIGN_OR_RETURN(m->ctrl_qp, t.pd->create_qp(a));
  if (offload) {
    a.cross_channel = true;
    // Reposted slots (rxe) need the master's WQEs of a slot retired before
    // the slot is posted again; its last SEND_EN retires while out's SEND
    // of the same slot is still on the wire, so twice the ring is ample.
    a.send_wqebbs = S * kMasterPerSlot * (m->rearm_in_place ? 1 : 2);
    HL_ASSIGN_OR_RETURN(m->master, t.pd->create_qp(a));
    if (m->rearm_in_place) {
      HL_ASSIGN_OR_RETURN(m->loop_ring, m->loop->raw_send_ring());
      HL_ASSIGN_OR_RETURN(m->out_ring, m->out->raw_send_ring());
      HL_ASSIGN_OR_RETURN(m->master_ring, m->master->raw_send_ring());
    }
    // The RECV of each slot scatters the operation's parameters into the
    // loop's and out's rings: registered whole, once. Their spans come from
    // a placeholder's position (nothing is posted yet: ask after the first
    // post, in arm_slot).
    // The master only issues local WAIT/SEND_EN; it is connected to itself.
    HL_RETURN_IF_ERROR(m->master->init(0));
    HL_RETURN_IF_ERROR(m->master->connect(m->master->address()));
    HL_RETURN_IF_ERROR(m->master->ready_to_send());
  }
  HL_RETURN_IF_ERROR(rnic::connect_pair(*m->loop, *m->loop_peer, rnic::kAccessAllRemote));

  MemberInfo info;
  info.region_addr = reinterpret_cast<uint64_t>(t.region);
  info.region_lkey = t.region_mr->lkey();
  info.region_rkey = t.region_mr->rkey();
  info.ctrl_addr = reinterpret_cast<uint64_t>(m->ctrl_mem);
  info.ctrl_lkey = m->ctrl_mr->lkey();
  info.ctrl_rkey = m->ctrl_mr->rkey();
  info.in_addr = m->in->address();
  info.out_addr = m->out->address();
  info.ctrl_addr_qp = m->ctrl_qp->address();
  info.entry_format = m->format;
  CreatedMember created{info, m->id, 0};
  // Everything the new member needs exists: only now is the old one fenced
  // (a CREATE that fails leaves the member it found serving). A newer epoch
  // is made durable first, where the tenant is.
  if (o.epoch > t.fence_epoch && !t.epoch_path.empty())
    HL_RETURN_IF_ERROR(write_fence_epoch(t.epoch_path, o.epoch));
  if (t.member) {
    created.fenced_id = t.member->id;
    fence_queues(*t.member);
    fenced = std::move(t.member);
  }
  t.fence_epoch = o.epoch;
  t.member = std::move(m);
  return created;
}

namespace {
// The tenant's member if it is `member_id`; else kPermissionDenied (a newer
// epoch fenced it) or kNotFound. REQUIRES: the host's mu held.
Result<Member*> named_member(std::map<uint32_t, std::unique_ptr<Tenant>>& tenants, uint32_t tenant,
                             uint64_t member_id) {
  auto it = tenants.find(tenant);
  if (it == tenants.end()) return not_found("tenant " + std::to_string(tenant) + " is not registered");
  Tenant& t = *it->second;
  if (t.member && t.member->id == member_id) return t.member.get();
  if (t.fence_epoch > 0)
    return permission_denied("this member was fenced: tenant " + std::to_string(tenant) + " runs at epoch " +
                             std::to_string(t.fence_epoch) + " on this replica");
  return not_found("no member for tenant");
}
}  // namespace

Status internal::connect_member(ReplicaHost& host, uint32_t tenant, uint64_t member_id, const rnic::QpAddress& prev,
                                const rnic::QpAddress& next, const rnic::QpAddress& client_ctrl) {
  auto* h = HostAccess::impl(host);
  std::lock_guard<std::mutex> l(h->mu);
  HL_ASSIGN_OR_RETURN(Member * mp, named_member(h->tenants, tenant, member_id));
  Member& m = *mp;
  // The predecessor writes payloads into the region; the client reads the
  // region and the control area (credits) over its direct line.
  HL_RETURN_IF_ERROR(m.in->init(rnic::kAccessRemoteWrite));
  HL_RETURN_IF_ERROR(m.in->connect(prev));
  HL_RETURN_IF_ERROR(m.in->ready_to_send());
  HL_RETURN_IF_ERROR(m.out->init(0));
  HL_RETURN_IF_ERROR(m.out->connect(next));
  HL_RETURN_IF_ERROR(m.out->ready_to_send());
  HL_RETURN_IF_ERROR(m.ctrl_qp->init(rnic::kAccessRemoteRead));
  HL_RETURN_IF_ERROR(m.ctrl_qp->connect(client_ctrl));
  return m.ctrl_qp->ready_to_send();
}

// ---- arming ----------------------------------------------------------------------------
namespace {

// The WQE posted at `index` on `qp`, its ring registered as `mr` the first
// time (kAccessLocalWrite: the slot RECVs scatter into it).
Result<std::byte*> patchable_wqe(Member& m, rnic::QueuePair& qp, uint32_t index,
                                 std::unique_ptr<rnic::MemoryRegion>& mr) {
  HL_ASSIGN_OR_RETURN(const rnic::PostedSendWqe w, qp.posted_send_wqe(index));
  if (!mr) {
    HL_ASSIGN_OR_RETURN(mr, m.tenant->pd->register_memory(w.ring.data(), w.ring.size(), rnic::kAccessLocalWrite));
  } else if (w.ring.data() != mr->addr()) {
    return internal_error("a send ring moved");
  }
  return w.data();
}

// Offload: posts slot `seq` through the structured API: its first arming,
// and every re-arming where the device's ring is not re-armed in place.
Status arm_slot(Member& m, uint64_t seq) {
  const uint32_t n = m.n, i = m.pos;
  Tenant& t = *m.tenant;
  std::byte* buf = m.slot_buf(seq);
  std::byte* fwd_buf = buf + kEntryBytes;
  const uint64_t region = reinterpret_cast<uint64_t>(t.region);
  // Local op placeholder: a signaled CAS whose SGE points the old value at
  // this replica's result in the forward buffer. In kMlx5 the patch leaves
  // that SGE (the 4th segment) as it is; in kRxe the entry carries it.
  rnic::Sge result{m.addr_of(fwd_buf + result_offset(n, i)), 8, m.ctrl_mr->lkey()};
  SendWr cas;
  cas.opcode = WrOpcode::kAtomicCas;
  cas.flags = rnic::kSendSignaled;
  cas.sg = {&result, 1};
  cas.remote_addr = region;
  cas.rkey = t.region_mr->rkey();
  const uint32_t loop_at = m.loop->send_producer();
  HL_RETURN_IF_ERROR(m.loop->post_send(cas));
  // Forward WRITE placeholder and the SEND of the forward buffer.
  rnic::Sge one{region, 1, t.region_mr->lkey()};
  SendWr fwd;
  fwd.opcode = WrOpcode::kRdmaWrite;
  fwd.sg = {&one, 1};
  fwd.remote_addr = 0;
  const uint32_t out_at = m.out->send_producer();
  HL_RETURN_IF_ERROR(m.out->post_send(fwd));
  rnic::Sge fb{m.addr_of(fwd_buf), uint32_t(forward_bytes(n, i)), m.ctrl_mr->lkey()};
  SendWr send;
  send.opcode = WrOpcode::kSend;
  send.flags = m.signaled_slot(seq) ? rnic::kSendSignaled : 0;  // see Member::signal_every
  send.sg = {&fb, 1};
  HL_RETURN_IF_ERROR(m.out->post_send(send));
  if (loop_at != uint32_t(seq) || out_at != uint32_t(kOutPerSlot * seq))
    return internal_error("slot " + std::to_string(seq) + " is not where its SEND_ENs expect it");
  // Master: WAIT for this slot's RECV, release the local op, WAIT for it,
  // release the forward WRITE and SEND.
  SendWr w;
  w.opcode = WrOpcode::kWait;
  w.wait_cq = m.in_rcq.get();
  w.index = uint32_t(seq);
  HL_RETURN_IF_ERROR(m.master->post_send(w));
  SendWr en;
  en.opcode = WrOpcode::kSendEnable;
  en.enable_qp = m.loop.get();
  en.index = uint32_t(seq + 1);
  HL_RETURN_IF_ERROR(m.master->post_send(en));
  w.wait_cq = m.loop_scq.get();
  HL_RETURN_IF_ERROR(m.master->post_send(w));
  en.enable_qp = m.out.get();
  en.index = uint32_t(kOutPerSlot * (seq + 1));
  HL_RETURN_IF_ERROR(m.master->post_send(en));
  // The RECV whose scatter list is the patch (chain_format.h), then the
  // forward buffer.
  HL_ASSIGN_OR_RETURN(std::byte* const lw, patchable_wqe(m, *m.loop, loop_at, m.loop_ring_mr));
  HL_ASSIGN_OR_RETURN(std::byte* const fw, patchable_wqe(m, *m.out, out_at, m.out_ring_mr));
  const uint32_t lk = m.loop_ring_mr->lkey(), ok = m.out_ring_mr->lkey(), ck = m.ctrl_mr->lkey();
  rnic::Sge sg[8];
  size_t k = 0;
  for (const PatchPiece& p : patch_pieces(m.format)) {
    if (p.where == PatchPiece::kLocal) sg[k++] = {m.addr_of(lw + p.off), p.len, lk};
    if (p.where == PatchPiece::kForward) sg[k++] = {m.addr_of(fw + p.off), p.len, ok};
    if (p.where == PatchPiece::kPad) sg[k++] = {m.addr_of(buf + p.off), p.len, ck};
  }
  sg[k++] = {m.addr_of(fwd_buf), uint32_t(forward_bytes(n, i)), ck};
  return m.in->post_recv({.wr_id = seq, .sg = {sg, k}});
}

// Offload: re-arms slot `seq` in place. Slot seq - slots left every WQE and
// the RECV where slot seq needs them; only the counters change. Doorbells are
// rung by the caller once per batch.
void rearm_slot(Member& m, uint64_t seq) {
  set_wqe_index(m.loop_ring, seq);
  set_wqe_index(m.out_ring, kOutPerSlot * seq);
  set_wqe_index(m.out_ring, kOutPerSlot * seq + 1);
  const uint64_t b = kMasterPerSlot * seq;
  set_wait_en(m.master_ring, b, uint32_t(seq) & mlx5::kCqIndexMask);
  set_wait_en(m.master_ring, b + 1, uint32_t(seq + 1) & mlx5::kWqeIndexMask);
  set_wait_en(m.master_ring, b + 2, uint32_t(seq) & mlx5::kCqIndexMask);
  set_wait_en(m.master_ring, b + 3, uint32_t(kOutPerSlot * (seq + 1)) & mlx5::kWqeIndexMask);
}

Status ring_rearmed(Member& m, uint64_t upto) {
  // Managed queues first (their doorbells only record), the master next, and
  // the RECVs last: nothing can fire before its WQEs are in place.
  HL_RETURN_IF_ERROR(m.loop->ring_send_doorbell(uint32_t(upto)));
  HL_RETURN_IF_ERROR(m.out->ring_send_doorbell(uint32_t(kOutPerSlot * upto)));
  HL_RETURN_IF_ERROR(m.master->ring_send_doorbell(uint32_t(kMasterPerSlot * upto)));
  return m.in->ring_recv_doorbell(uint32_t(upto));
}

// CPU mode: a RECV of the whole message into the slot buffer.
Status post_cpu_recv(Member& m, uint64_t seq) {
  std::byte* buf = m.slot_buf(seq);
  rnic::Sge sg{m.addr_of(buf), uint32_t(message_bytes(m.n, m.pos)), m.ctrl_mr->lkey()};
  return m.in->post_recv({.wr_id = seq, .sg = {&sg, 1}});
}

}  // namespace

Status internal::start_member(ReplicaHost& host, uint32_t tenant, uint64_t member_id) {
  auto* h = HostAccess::impl(host);
  std::lock_guard<std::mutex> l(h->mu);
  HL_ASSIGN_OR_RETURN(Member * mp, named_member(h->tenants, tenant, member_id));
  Member& m = *mp;
  for (uint64_t s = 0; s < m.opts.slots; ++s)
    HL_RETURN_IF_ERROR(m.opts.mode == ForwardMode::kOffload ? arm_slot(m, s) : post_cpu_recv(m, s));
  m.armed_seq = m.opts.slots;
  m.publish_armed();
  m.started = true;
  h->wake();  // an agent asleep on events serves the new member now
  return Status::ok();
}

void internal::drop_member(ReplicaHost& host, uint32_t tenant, uint64_t member_id) {
  auto* h = HostAccess::impl(host);
  std::unique_ptr<Member> gone;
  {
    std::lock_guard<std::mutex> l(h->mu);
    auto it = h->tenants.find(tenant);
    if (it == h->tenants.end() || !it->second->member || it->second->member->id != member_id) return;
    gone = std::move(it->second->member);
  }
  // Destroyed outside the lock; the agent only touches members under it.
}

// ---- the agent ----------------------------------------------------------------------------
size_t ReplicaHost::Impl::serve_offload(Member& m) {
  rnic::WorkCompletion wc[32];
  size_t work = 0;
  // Drain: every completed slot counts before deciding what to re-arm.
  size_t taken = 0;
  for (;;) {
    auto r = m.out_scq->poll(wc);
    if (!r.is_ok()) {
      m.fail("polling out's CQ: " + r.status().to_string());
      return 0;
    }
    for (size_t k = 0; k < *r; ++k) {
      if (wc[k].status != rnic::WcStatus::kSuccess) m.fail(wc_reason("out", wc[k]));
      // A signaled SEND completes its slot and the unsignaled ones before it.
      if (wc[k].opcode == rnic::WcOpcode::kSend) m.done_seq = m.next_signaled(m.done_seq) + 1;
    }
    taken += *r;
    if (*r < std::size(wc)) break;
  }
  // Taking completions is not work that keeps the agent awake: only
  // re-arming is. Completions wait in the CQ (sized for every slot) meanwhile.
  if (m.broken) return work;
  // Re-arm in batches of rearm_batch; a partial batch only when the armed
  // slots ahead of the chain run low (fewer than a batch) or the chain has
  // gone quiet (no completion for two turns), so the client never starves,
  // an idle chain is fully armed, and under load the work is amortised.
  m.quiet_turns = taken ? 0 : m.quiet_turns + 1;
  const uint64_t free_slots = m.done_seq + m.opts.slots - m.armed_seq;
  const uint64_t ahead = m.armed_seq - m.done_seq;
  if (free_slots >= m.opts.rearm_batch ||
      (free_slots > 0 && (ahead < m.opts.rearm_batch || m.quiet_turns >= 2))) {
    const uint64_t upto = m.armed_seq + free_slots;
    Status st = Status::ok();
    if (m.rearm_in_place) {
      for (uint64_t s = m.armed_seq; s < upto; ++s) rearm_slot(m, s);
      st = ring_rearmed(m, upto);
    } else {
      for (uint64_t s = m.armed_seq; s < upto && st.is_ok(); ++s) st = arm_slot(m, s);
    }
    if (!st.is_ok()) {
      m.fail("re-arming: " + st.to_string());
      return work;
    }
    rearmed.fetch_add(free_slots, std::memory_order_relaxed);
    m.armed_seq = upto;
    m.publish_armed();
    work += free_slots;
  }
  return work;
}

namespace {

// CPU mode: the local operation of message `seq`, rebuilt from its entry
// through the same codec the NIC uses. Returns false if there is none (NOP).
bool cpu_local_wr(Member& m, uint64_t seq, mlx5::SendWqe& w, SendWr& wr, bool& ok) {
  std::byte* buf = m.slot_buf(seq);
  ok = true;
  if (buf[kEntryLocalOpcode] == std::byte{mlx5::kOpNop}) return false;
  alignas(64) std::byte img[64];
  const mlx5::SendRingView one{img, 1};
  mlx5::SendWqe tmpl;
  tmpl.ctrl.opcode = mlx5::kOpAtomicCs;
  tmpl.num_sge = 1;
  tmpl.sge[0] = {m.addr_of(buf + kEntryBytes + result_offset(m.n, m.pos)), 8, m.ctrl_mr->lkey()};
  mlx5::encode_send_wqe(one, 0, tmpl);
  apply_local(buf, img);
  uint32_t bbs;
  if (mlx5::decode_send_wqe(one, 0, &w, &bbs) != mlx5::WqeError::kOk) return ok = false;
  wr = SendWr{};
  wr.flags = rnic::kSendSignaled;
  wr.remote_addr = w.raddr;
  wr.rkey = w.rkey;
  wr.sg = {w.sge, w.num_sge};
  switch (w.ctrl.opcode) {
    case mlx5::kOpRdmaWrite: wr.opcode = WrOpcode::kRdmaWrite; return true;
    case mlx5::kOpRdmaRead: wr.opcode = WrOpcode::kRdmaRead; return true;
    case mlx5::kOpAtomicCs:
      wr.opcode = WrOpcode::kAtomicCas;
      wr.compare_add = w.compare;
      wr.swap = w.swap_add;
      return true;
    default: return ok = false;
  }
}

// CPU mode: forwards message `seq` (after its local operation). The slot is
// re-armed once that SEND completed (serve_cpu): its buffer is the SEND's source.
Status cpu_forward(Member& m, uint64_t seq) {
  std::byte* buf = m.slot_buf(seq);
  std::byte* fwd_buf = buf + kEntryBytes;
  if (buf[kEntryFwdOpcode] == std::byte{mlx5::kOpRdmaWrite}) {
    alignas(64) std::byte img[64];
    const mlx5::SendRingView one{img, 1};
    mlx5::SendWqe tmpl, w;
    tmpl.ctrl.opcode = mlx5::kOpRdmaWrite;
    tmpl.num_sge = 1;
    mlx5::encode_send_wqe(one, 0, tmpl);
    apply_forward(buf, img);
    uint32_t bbs;
    if (mlx5::decode_send_wqe(one, 0, &w, &bbs) != mlx5::WqeError::kOk || w.num_sge != 1)
      return invalid_argument("malformed forward entry");
    SendWr wr;
    wr.opcode = WrOpcode::kRdmaWrite;
    wr.remote_addr = w.raddr;
    wr.rkey = w.rkey;
    wr.sg = {w.sge, 1};
    HL_RETURN_IF_ERROR(m.out->post_send(wr));
  }
  rnic::Sge fb{m.addr_of(fwd_buf), uint32_t(forward_bytes(m.n, m.pos)), m.ctrl_mr->lkey()};
  SendWr send;
  send.opcode = WrOpcode::kSend;
  send.flags = rnic::kSendSignaled;
  send.sg = {&fb, 1};
  return m.out->post_send(send);
}

}  // namespace

// CPU forwarding, as a state machine that never blocks (so it also runs under
// a manually stepped simulation): take a message, run its local operation,
// and forward once that completed.
size_t ReplicaHost::Impl::serve_cpu(Member& m) {
  rnic::WorkCompletion wc[16];
  size_t work = 0;
  // A forwarded SEND completed: its slot's buffer is free, re-arm the slot
  // (as the offload agent does), so credit never runs ahead of the queues.
  for (;;) {
    auto r = m.out_scq->poll(wc);
    if (!r.is_ok()) {
      m.fail("polling out's CQ: " + r.status().to_string());
      break;
    }
    for (size_t k = 0; k < *r && !m.broken; ++k) {
      if (wc[k].status != rnic::WcStatus::kSuccess) {
        m.fail(wc_reason("out", wc[k]));
      } else if (wc[k].opcode == rnic::WcOpcode::kSend) {
        if (Status st = post_cpu_recv(m, m.done_seq + m.opts.slots); !st.is_ok())
          m.fail("posting a receive on in: " + st.to_string());
        ++m.done_seq;
        m.armed_seq = m.done_seq + m.opts.slots;
        ++work;
      }
    }
    if (*r < std::size(wc)) break;
  }
  while (!m.broken && work < 16) {
    if (m.local_pending) {
      auto p = m.loop_scq->poll({wc, 1});
      if (!p.is_ok()) m.fail("polling loop's CQ: " + p.status().to_string());
      else if (*p && wc[0].status != rnic::WcStatus::kSuccess) m.fail(wc_reason("loop", wc[0]));
      if (m.broken || *p == 0) break;
      m.local_pending = false;
    } else {
      auto r = m.in_rcq->poll({wc, 1});
      if (!r.is_ok()) m.fail("polling in's CQ: " + r.status().to_string());
      else if (*r && wc[0].status != rnic::WcStatus::kSuccess) m.fail(wc_reason("in", wc[0]));
      if (m.broken || *r == 0) break;
      ++m.recv_seq;
      mlx5::SendWqe w;
      SendWr wr;
      bool ok;
      if (cpu_local_wr(m, m.recv_seq - 1, w, wr, ok)) {
        if (Status st = m.loop->post_send(wr); !st.is_ok()) m.fail("posting the local operation: " + st.to_string());
        m.local_pending = true;
        continue;
      }
      if (!ok) m.fail("malformed local-operation entry in message " + std::to_string(m.recv_seq - 1));
      if (m.broken) break;
    }
    if (Status st = cpu_forward(m, m.recv_seq - 1); !st.is_ok()) {
      m.fail("forwarding: " + st.to_string());
      break;
    }
    forwarded.fetch_add(1, std::memory_order_relaxed);
    ++work;
  }
  m.publish_armed();
  return work;
}

size_t ReplicaHost::Impl::serve(Member& m) {
  if (!m.started || m.broken) return 0;
  m.beat();
  const size_t work = m.opts.mode == ForwardMode::kOffload ? serve_offload(m) : serve_cpu(m);
  if (m.broken) {
    broken_total.fetch_add(1, std::memory_order_relaxed);
    log(LogLevel::kWarn, "member", "member_broken",
        {{"tenant", m.tenant->id}, {"pos", m.pos}, {"n", m.n}, {"mode", forward_mode_name(m.opts.mode)},
         {"done_seq", m.done_seq}, {"reason", m.why.empty() ? std::string("a queue of the member failed") : m.why}});
  }
  return work;
}

size_t ReplicaHost::agent_poll() {
  size_t work = 0;
  std::lock_guard<std::mutex> l(impl_->mu);
  for (auto& [id, t] : impl_->tenants)
    if (t->member) work += impl_->serve(*t->member);
  return work;
}

// Arms, on the channel, the CQs whose completions the agent must wake for:
// a CPU-forwarding member's in, loop and out CQs, an offload member's out
// CQ. False if an arm failed (the agent then does not sleep this turn).
bool ReplicaHost::Impl::arm_members() {
  std::lock_guard<std::mutex> l(mu);
  for (auto& [id, t] : tenants) {
    Member* m = t->member.get();
    if (!m || !m->started || m->broken) continue;
    if (m->opts.mode == ForwardMode::kOffload) {
      // Without offload_events its CQ has no channel: it is served when the
      // agent wakes for something else, at least every max_idle_us.
      if (opts.offload_events && !m->out_scq->arm().is_ok()) return false;
      continue;
    }
    for (rnic::CompletionQueue* cq : {m->in_rcq.get(), m->loop_scq.get(), m->out_scq.get()})
      if (!cq->arm().is_ok()) return false;
  }
  return true;
}

// Sleeps until a completion event, a wake(), or timeout_us; takes every
// pending event (the CQs are polled dry by the next agent_poll anyway).
void ReplicaHost::Impl::wait_for_events(uint32_t timeout_us) {
  pollfd fds[2] = {{channel->fd(), POLLIN, 0}, {wake_fd, POLLIN, 0}};
  const timespec ts{time_t(timeout_us / 1'000'000), long(timeout_us % 1'000'000) * 1000};
  event_sleeps.fetch_add(1, std::memory_order_relaxed);
  if (ppoll(fds, 2, &ts, nullptr) <= 0) return;
  if (fds[0].revents & POLLIN) {
    bool any = false;
    while (channel->wait(0).is_ok()) any = true;
    if (any) event_wakeups.fetch_add(1, std::memory_order_relaxed);
  }
  if (fds[1].revents & POLLIN) {
    uint64_t v;
    [[maybe_unused]] ssize_t n = read(wake_fd, &v, sizeof v);
  }
}

void ReplicaHost::Impl::run_agent(ReplicaHost* host) {
  if (opts.agent_cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(opts.agent_cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  }
  const uint64_t start = thread_cpu_ns();
  uint32_t nap_us = opts.idle_sleep_us;
  uint64_t last_work_ns = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    {
      std::unique_lock<std::mutex> fl(freeze_mu);
      if (freeze_requested) {
        parked = true;
        freeze_cv.notify_all();
        freeze_cv.wait(fl, [&] { return !freeze_requested || stop.load(); });
        parked = false;
      }
    }
    const size_t work = host->agent_poll();
    bool cpu_members = false, offload_members = false;
    {
      std::lock_guard<std::mutex> l(mu);
      for (auto& [id, t] : tenants) {
        cpu_members |= t->member && t->member->opts.mode == ForwardMode::kCpuForward;
        offload_members |= t->member && t->member->opts.mode == ForwardMode::kOffload;
      }
    }
    const bool cpu_events = cpu_members && channel && opts.cpu_wait == ReplicaHostOptions::CpuWait::kEvents;
    // Sleep on events only if nothing here must spin.
    const bool sleep_on_events = channel && (cpu_members ? cpu_events : offload_members && opts.offload_events);
    // Everything this thread burns counts, polling and sleeping included.
    cpu_ns.store(thread_cpu_ns() - start, std::memory_order_relaxed);
    // The offload agent is background work: it naps when idle. A forwarder
    // is on the critical path: it sleeps on its CQs' completion events
    // (CpuWait::kEvents), or keeps polling and yields the core (kSpin).
    // Naps grow while idle (up to 10x idle_sleep_us) and shrink at once on work.
    if (work) {
      nap_us = opts.idle_sleep_us;
      last_work_ns = monotonic_ns();
    } else if (cpu_events && monotonic_ns() - last_work_ns < uint64_t(opts.event_spin_us) * 1000) {
      std::this_thread::yield();  // adaptive polling: the next message is likely close
    } else if (sleep_on_events) {
      // rnic.h's race-free pattern: arm, poll once more, and sleep only if
      // that found nothing (a message that raced the arm is served now).
      if (!arm_members()) {
        std::this_thread::yield();
      } else if (host->agent_poll() == 0) {
        wait_for_events(opts.max_idle_us);
      }
    } else if (cpu_members) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(nap_us));
      nap_us = std::min(nap_us * 2, opts.idle_sleep_us * 10);
    }
  }
}

// ---- ReplicaHost ------------------------------------------------------------------------
ReplicaHost::ReplicaHost(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<ReplicaHost>> ReplicaHost::create(rnic::Device& device, const ReplicaHostOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->device = &device;
  impl->opts = options;
  // Event-driven agents: one completion channel for the host's members
  // (CpuWait::kEvents, offload_events) and a wake-up descriptor (a thread of
  // our own only).
  if (options.agent_thread && (options.cpu_wait == ReplicaHostOptions::CpuWait::kEvents || options.offload_events) &&
      device.caps().completion_channel) {
    auto ch = device.create_completion_channel();
    const int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ch.is_ok() && fd >= 0) {
      impl->channel = std::move(ch).value();
      impl->wake_fd = fd;
    } else {
      if (fd >= 0) close(fd);
      log(LogLevel::kWarn, "replica_host", "cpu_wait_events_unavailable",
          {{"device", device.caps().name},
           {"error", ch.is_ok() ? std::string("eventfd failed") : ch.status().to_string()},
           {"fallback", "spin"}});
    }
  }
  auto host = std::unique_ptr<ReplicaHost>(new ReplicaHost(std::move(impl)));
  if (options.agent_thread) {
    ReplicaHost* h = host.get();
    h->impl_->agent = std::thread([h] { h->impl_->run_agent(h); });
  }
  return host;
}

HostHold::HostHold(ReplicaHost& host) : host_(&host) {
  HostAccess::impl(host)->holds.fetch_add(1, std::memory_order_relaxed);
}
HostHold& HostHold::operator=(HostHold&& o) noexcept {
  if (this != &o) {
    HostHold gone(std::move(*this));
    host_ = o.host_;
    o.host_ = nullptr;
  }
  return *this;
}
HostHold::~HostHold() {
  if (host_) HostAccess::impl(*host_)->holds.fetch_sub(1, std::memory_order_acq_rel);
}

ReplicaHost::~ReplicaHost() {
  if (const int64_t held = impl_->holds.load(std::memory_order_acquire); held > 0) {
    std::fprintf(stderr,
                 "hyperloop: a ReplicaHost is destroyed while %lld Group(s)/Store(s) built on it still hold it; "
                 "destroy every Group and txn::Store built on a host before the host (hyperloop/primitives.h, "
                 "ReplicaHost lifetime). Aborting.\n",
                 static_cast<long long>(held));
    std::abort();
  }
  impl_->control.reset();  // no control session may touch members from here on
  {
    std::lock_guard<std::mutex> fl(impl_->freeze_mu);
    impl_->stop.store(true);
    impl_->freeze_requested = false;
  }
  impl_->freeze_cv.notify_all();
  impl_->wake();
  if (impl_->agent.joinable()) impl_->agent.join();
}

rnic::Device& ReplicaHost::device() { return *impl_->device; }

Status ReplicaHost::register_tenant(uint32_t tenant, size_t region_size, const std::string& pmem_path,
                                    std::string_view secret) {
  if (region_size == 0 || region_size % 8) return invalid_argument("region_size must be a positive multiple of 8");
  // Impossible sizes are refused before anything is allocated (nothing throws).
  if (region_size > PersistentMemory::kMaxSize)
    return invalid_argument("region_size " + std::to_string(region_size) + " is over the limit of " +
                            std::to_string(PersistentMemory::kMaxSize) + " bytes");
  if (pmem_path.empty())
    HL_RETURN_IF_ERROR(::hyperloop::internal::check_fits_in_memory(region_size + 64, "the region of tenant " +
                                                                                        std::to_string(tenant)));
  std::lock_guard<std::mutex> l(impl_->mu);
  if (impl_->tenants.count(tenant))
    return Status(StatusCode::kAlreadyExists, "tenant " + std::to_string(tenant) + " is already registered");
  auto t = std::make_unique<Tenant>();
  t->id = tenant;
  t->region_size = region_size;
  t->secret = std::string(secret);
  HL_ASSIGN_OR_RETURN(t->pd, impl_->device->alloc_pd());
  if (!pmem_path.empty()) {
    t->epoch_path = pmem_path + ".epoch";
    HL_ASSIGN_OR_RETURN(t->fence_epoch, read_fence_epoch(t->epoch_path));
    HL_ASSIGN_OR_RETURN(t->pmem, PersistentMemory::open(pmem_path, region_size));
    t->region = t->pmem->data();
  } else {
    HL_RETURN_IF_ERROR(::hyperloop::internal::assign_or_exhausted(t->region_storage, region_size + 64, std::byte{0},
                                                                  "the region of tenant " + std::to_string(tenant)));
    t->region = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(t->region_storage.data()) + 63) & ~uintptr_t{63});
  }
  HL_ASSIGN_OR_RETURN(t->region_mr, t->pd->register_memory(t->region, region_size, rnic::kAccessAll));
  impl_->tenants[tenant] = std::move(t);
  return Status::ok();
}

Result<uint16_t> ReplicaHost::serve_control(const std::string& ipv4, uint16_t port, const ControlOptions& options) {
  if (impl_->control) return Status(StatusCode::kAlreadyExists, "this host already serves control requests");
  HL_ASSIGN_OR_RETURN(impl_->control, ControlServer::start(*this, ipv4, port, options));
  return impl_->control->port();
}

ControlStats ReplicaHost::control_stats() const { return impl_->control ? impl_->control->stats() : ControlStats{}; }

std::string ReplicaHost::metrics_text() const { return host_metrics_text(*this, control_stats()); }

void internal::append_metric(std::string* out, std::string_view name, std::string_view type, std::string_view help,
                             uint64_t value) {
  *out += "# HELP ";
  *out += name;
  *out += ' ';
  *out += help;
  *out += "\n# TYPE ";
  *out += name;
  *out += ' ';
  *out += type;
  *out += '\n';
  *out += name;
  *out += ' ';
  *out += std::to_string(value);
  *out += '\n';
}

std::string internal::host_metrics_text(const ReplicaHost& host, const ControlStats& c) {
  auto* impl_ = HostAccess::impl(host);
  size_t tenants = 0, members = 0, broken = 0;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    tenants = impl_->tenants.size();
    for (auto& [id, t] : impl_->tenants)
      if (t->member) {
        ++members;
        broken += t->member->broken.load() ? 1 : 0;
      }
  }
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, uint64_t v) {
    append_metric(&out, name, type, help, v);
  };
  metric("hyperloop_tenants", "gauge", "Tenants registered on this host.", tenants);
  metric("hyperloop_members", "gauge", "Chain members (one per tenant in use).", members);
  metric("hyperloop_members_broken", "gauge", "Members whose chain broke (awaiting DROP).", broken);
  metric("hyperloop_members_broken_total", "counter", "Members that broke.", impl_->broken_total.load());
  metric("hyperloop_slots_rearmed_total", "counter", "Offload slots re-armed by the agent.", impl_->rearmed.load());
  metric("hyperloop_ops_forwarded_total", "counter", "Messages forwarded by the CPU agent.", impl_->forwarded.load());
  metric("hyperloop_control_connections_accepted_total", "counter", "Control connections accepted.", c.connections_accepted);
  metric("hyperloop_control_connections_refused_total", "counter", "Control connections refused at a limit.", c.connections_refused);
  metric("hyperloop_control_connections_open", "gauge", "Control connections open.", c.connections_open);
  metric("hyperloop_control_auth_ok_total", "counter", "Successful authentications.", c.auth_ok);
  metric("hyperloop_control_auth_failed_total", "counter", "Failed authentications.", c.auth_failed);
  metric("hyperloop_control_auth_timeouts_total", "counter", "Connections closed for not authenticating in time.", c.auth_timeouts);
  metric("hyperloop_control_client_timeouts_total", "counter", "Silent clients whose members were dropped.", c.client_timeouts);
  metric("hyperloop_control_frames_rejected_total", "counter", "Malformed control frames.", c.frames_rejected);
  metric("hyperloop_control_requests_refused_total", "counter", "Requests answered with an error.", c.requests_refused);
  metric("hyperloop_control_members_created_total", "counter", "Members created over control.", c.members_created);
  metric("hyperloop_control_members_dropped_total", "counter", "Members dropped (DROP, close, timeout).", c.members_dropped);
  metric("hyperloop_control_members_fenced_total", "counter", "Members fenced by a CREATE of a newer epoch.",
         c.members_fenced);
  return out;
}

Result<std::string> internal::tenant_secret(ReplicaHost& host, uint32_t tenant) {
  auto* h = HostAccess::impl(host);
  std::lock_guard<std::mutex> l(h->mu);
  auto it = h->tenants.find(tenant);
  if (it == h->tenants.end())
    return not_found("tenant " + std::to_string(tenant) + " is not registered on this replica host");
  if (it->second->secret.empty())
    return permission_denied("tenant " + std::to_string(tenant) + " has no secret configured: no remote client may use it");
  return it->second->secret;
}

void ReplicaHost::power_fail() { (void)power_fail(PowerFailOptions{}); }

size_t ReplicaHost::power_fail(const PowerFailOptions& options) {
  std::lock_guard<std::mutex> l(impl_->mu);
  size_t kept = 0;
  for (auto& [id, t] : impl_->tenants)
    if (t->pmem) {
      PowerFailOptions o = options;
      o.seed ^= (uint64_t(id) + 1) * 0x9E3779B97F4A7C15ull;  // tenants tear differently
      kept += t->pmem->power_fail(o);
      t->pmem->release();  // the host is down: a restart may open the file
    }
  return kept;
}

void ReplicaHost::freeze() {
  if (!impl_->agent.joinable()) return;  // no thread: nothing runs unless called
  std::unique_lock<std::mutex> fl(impl_->freeze_mu);
  impl_->freeze_requested = true;
  impl_->wake();
  impl_->freeze_cv.wait(fl, [&] { return impl_->parked; });
}

void ReplicaHost::thaw() {
  {
    std::lock_guard<std::mutex> fl(impl_->freeze_mu);
    impl_->freeze_requested = false;
  }
  impl_->freeze_cv.notify_all();
}

uint64_t ReplicaHost::agent_cpu_ns() const { return impl_->cpu_ns.load(); }
uint64_t ReplicaHost::slots_rearmed() const { return impl_->rearmed.load(); }
uint64_t ReplicaHost::ops_forwarded() const { return impl_->forwarded.load(); }
uint64_t ReplicaHost::event_sleeps() const { return impl_->event_sleeps.load(); }
uint64_t ReplicaHost::event_wakeups() const { return impl_->event_wakeups.load(); }

Status ReplicaHost::peek(uint32_t tenant, uint64_t offset, std::span<std::byte> dst) const {
  std::lock_guard<std::mutex> l(impl_->mu);
  auto it = impl_->tenants.find(tenant);
  if (it == impl_->tenants.end()) return not_found("tenant not registered");
  const Tenant& t = *it->second;
  if (offset > t.region_size || dst.size() > t.region_size - offset) return out_of_range("peek outside the region");
  std::memcpy(dst.data(), t.region + offset, dst.size());
  return Status::ok();
}

Result<ReplicaHost::TenantAccess> ReplicaHost::tenant_access(uint32_t tenant) const {
  std::lock_guard<std::mutex> l(impl_->mu);
  auto it = impl_->tenants.find(tenant);
  if (it == impl_->tenants.end()) return not_found("tenant not registered");
  const Tenant& t = *it->second;
  return TenantAccess{t.pd.get(), uint64_t(reinterpret_cast<uintptr_t>(t.region)), t.region_mr->rkey(), t.region_size};
}

}  // namespace hyperloop::prim
