// rnic/verbs: rnic.h over libibverbs (see hyperloop/verbs_rnic.h).
#include "hyperloop/verbs_rnic.h"

#include <endian.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_set>

#include <rdma/rdma_user_rxe.h>

#include <cstddef>

#include "hyperloop/clock.h"
#include "hyperloop/internal/rxe_wqe.h"
#include "hyperloop/log.h"
#include "verbs_util.h"

namespace hyperloop::verbs {
namespace {

using rnic::QpState;
using rnic::WcOpcode;
using rnic::WcStatus;
using rnic::WrOpcode;
using util::PeerAddr;
using util::decode_addr;
using util::encode_addr;
using util::errno_text;
using util::floor_pow2;
using util::from_errno;
using util::random_psn;
using util::choose_gid;

WcStatus map_status(ibv_wc_status s) {
  switch (s) {
    case IBV_WC_SUCCESS: return WcStatus::kSuccess;
    case IBV_WC_LOC_LEN_ERR: return WcStatus::kLocalLengthError;
    case IBV_WC_LOC_QP_OP_ERR:
    case IBV_WC_LOC_EEC_OP_ERR: return WcStatus::kLocalQpOperationError;
    case IBV_WC_LOC_PROT_ERR:
    case IBV_WC_MW_BIND_ERR:
    case IBV_WC_LOC_RDD_VIOL_ERR: return WcStatus::kLocalProtectionError;
    case IBV_WC_WR_FLUSH_ERR: return WcStatus::kFlushed;
    case IBV_WC_BAD_RESP_ERR: return WcStatus::kBadResponse;
    case IBV_WC_LOC_ACCESS_ERR: return WcStatus::kLocalAccessError;
    case IBV_WC_REM_INV_REQ_ERR:
    case IBV_WC_REM_INV_RD_REQ_ERR: return WcStatus::kRemoteInvalidRequest;
    case IBV_WC_REM_ACCESS_ERR: return WcStatus::kRemoteAccessError;
    case IBV_WC_REM_OP_ERR:
    case IBV_WC_REM_ABORT_ERR: return WcStatus::kRemoteOperationError;
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RESP_TIMEOUT_ERR: return WcStatus::kRetryExceeded;
    case IBV_WC_RNR_RETRY_EXC_ERR: return WcStatus::kRnrRetryExceeded;
    default: return WcStatus::kGeneralError;  // INV_EECN, INV_EEC_STATE, FATAL, GENERAL, TM_*
  }
}

WcOpcode map_opcode(ibv_wc_opcode o) {
  switch (o) {
    case IBV_WC_SEND: return WcOpcode::kSend;
    case IBV_WC_RDMA_WRITE: return WcOpcode::kRdmaWrite;
    case IBV_WC_RDMA_READ: return WcOpcode::kRdmaRead;
    case IBV_WC_COMP_SWAP: return WcOpcode::kAtomicCas;
    case IBV_WC_FETCH_ADD: return WcOpcode::kAtomicFaa;
    case IBV_WC_RECV: return WcOpcode::kRecv;
    case IBV_WC_RECV_RDMA_WITH_IMM: return WcOpcode::kRecvRdmaWithImm;
    default: break;
  }
  switch (int(o)) {  // the patched rxe's CQE opcode of its cross-channel WQEs is the WR opcode
    case 0xf0: return WcOpcode::kWait;
    case 0xf1: return WcOpcode::kSendEnable;
    case 0xf2: return WcOpcode::kRecvEnable;
    default: return WcOpcode::kUnknown;
  }
}

// ---- the cross-channel ABI of the patched rxe --------------------------------------------
// driver-patches/linux-6.1-rxe-cross-channel/README.md defines it; stock
// librxe posts all of it through ibv_post_send. Never used unless the
// module's marker says it is there (a stock rxe indexes its opcode table
// with the opcode unchecked).
namespace rxe_cc {
constexpr uint32_t kVendorId = 0xFFFFFF;  // rxe's
constexpr uint32_t kMagic = 0x43434c48;   // "HLCC"
constexpr uint32_t kAbi = 1;
constexpr uint32_t kKindSq = 1;
// Words of struct rxe_queue_buf's pad_1, from byte 8 of each mapped ring.
constexpr size_t kHdrMagic = 0, kHdrAbi = 1, kHdrKind = 2, kHdrId = 3, kHdrRequest = 4, kHdrFlags = 5;
constexpr int kWrWait = 0xf0, kWrSendEn = 0xf1, kWrRecvEn = 0xf2;
constexpr uint32_t kWaitRecvCq = 1u << 31;
constexpr uint32_t kCrossChannel = 1u << 2, kManagedSend = 1u << 3, kManagedRecv = 1u << 4;  // IB_QP_CREATE_*
constexpr const char* kMarker = "/sys/module/rdma_rxe/parameters/cross_channel_abi";

bool module_has_it() {
  std::ifstream f(kMarker);
  uint32_t v = 0;
  return f && (f >> v) && v == kAbi;
}

// The header words of the send ring rxe mapped for QP `qpn` through
// `dev_path` (/dev/infiniband/uverbsN), found among this process's mappings
// of that device (rxe maps only its rings there) by the tag the patched
// module writes into each ring's header. nullptr if none.
uint32_t* find_send_ring(const std::string& dev_path, uint32_t qpn) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode, path;
    if (!(in >> range >> perms >> offset >> dev >> inode >> path) || path != dev_path) continue;
    if (perms.size() < 2 || perms[0] != 'r' || perms[1] != 'w') continue;
    const uint64_t start = std::stoull(range.substr(0, range.find('-')), nullptr, 16);
    auto* w = reinterpret_cast<uint32_t*>(start + 8);
    if (__atomic_load_n(&w[kHdrMagic], __ATOMIC_ACQUIRE) == kMagic && w[kHdrAbi] == kAbi && w[kHdrKind] == kKindSq &&
        w[kHdrId] == qpn)
      return w;
  }
  return nullptr;
}
}  // namespace rxe_cc

QpState map_state(ibv_qp_state s) {
  switch (s) {
    case IBV_QPS_RESET: return QpState::kReset;
    case IBV_QPS_INIT: return QpState::kInit;
    case IBV_QPS_RTR: return QpState::kRtr;
    case IBV_QPS_RTS:
    case IBV_QPS_SQD: return QpState::kRts;
    default: return QpState::kError;  // SQE, ERR, UNKNOWN
  }
}

class VerbsCq;

// ---- what every object of one device shares -----------------------------------------
struct Ctx {
  ibv_context* ctx = nullptr;
  std::string name;
  uint8_t port = 1;
  int gid_index = 0;
  ibv_gid gid{};
  bool has_mac = false;  // RoCE: the GID's netdev MAC, carried in QP addresses
  std::array<uint8_t, 6> mac{};
  uint16_t lid = 0;
  uint8_t link_layer = IBV_LINK_LAYER_ETHERNET;
  ibv_mtu mtu = IBV_MTU_1024;
  rnic::DeviceCaps caps;
  uint32_t max_send_sge = 1;
  bool cq_ex = true;  // ibv_create_cq_ex works (else plain ibv_create_cq)
  bool rxe_cc = false;      // the patched rxe: cross-channel through rxe_cc
  std::string uverbs_path;  // /dev/infiniband/uverbsN
  std::atomic<uint32_t> next_cqn{1};

  // CQs the async thread may mark (IBV_EVENT_CQ_ERR).
  std::mutex mu;
  std::unordered_set<VerbsCq*> cqs;
  int wake_fd = -1;
  std::thread async;

  void run_async();
  ~Ctx();
};

class VerbsCq;

// A completion channel's state, shared with the CQs attached to it: verbs
// refuses to destroy a channel with CQs (EBUSY), the interface allows it, so
// the ibv_comp_channel goes with the last of them.
struct ChanState {
  Ctx* d = nullptr;
  ibv_comp_channel* ch = nullptr;
  std::atomic<bool> closed{false};
  std::mutex mu;
  std::unordered_set<const VerbsCq*> live;
  ~ChanState() {
    if (ch) ibv_destroy_comp_channel(ch);
  }
};

class VerbsCq final : public rnic::CompletionQueue {
 public:
  Ctx* d = nullptr;
  ibv_cq_ex* cqx = nullptr;
  ibv_cq* cq = nullptr;
  uint32_t cqn_ = 0;
  uint32_t size_ = 0;
  std::shared_ptr<ChanState> chan;
  std::atomic<bool> overrun{false};
  // QPs using this CQ, {qpn, as its recv CQ}: the patched rxe's WAIT names
  // the CQ it watches through one of them.
  std::mutex users_mu;
  std::vector<std::pair<uint32_t, bool>> users;
  void add_user(uint32_t qpn, bool recv) {
    std::lock_guard<std::mutex> l(users_mu);
    users.emplace_back(qpn, recv);
  }
  void remove_user(uint32_t qpn, bool recv) {
    std::lock_guard<std::mutex> l(users_mu);
    auto it = std::find(users.begin(), users.end(), std::make_pair(qpn, recv));
    if (it != users.end()) users.erase(it);
  }
  bool any_user(std::pair<uint32_t, bool>* out) const {
    std::lock_guard<std::mutex> l(const_cast<std::mutex&>(users_mu));
    if (users.empty()) return false;
    *out = users.front();
    return true;
  }

  ~VerbsCq() override {
    {
      std::lock_guard<std::mutex> l(d->mu);
      d->cqs.erase(this);
    }
    if (chan) {
      std::lock_guard<std::mutex> l(chan->mu);
      chan->live.erase(this);
    }
    if (cq) {
      if (int rc = ibv_destroy_cq(cq))
        log(LogLevel::kError, "verbs", "destroy_cq_failed", {{"device", d->name}, {"error", errno_text(rc)}});
    }
    // chan (and with the last CQ the ibv_comp_channel) goes after the CQ.
  }
  uint32_t cqn() const override { return cqn_; }
  uint32_t size() const override { return size_; }

  Result<size_t> poll(std::span<rnic::WorkCompletion> out) override {
    if (overrun.load(std::memory_order_acquire))
      return resource_exhausted("the CQ overran (IBV_EVENT_CQ_ERR): completions were lost");
    if (out.empty()) return size_t{0};
    return cqx ? poll_ex(out) : poll_plain(out);
  }

  Status arm(bool solicited_only) override {
    if (!chan) return failed_precondition("arm needs a CQ created with a completion channel");
    if (chan->closed.load()) return failed_precondition("the CQ's completion channel was destroyed");
    if (int rc = ibv_req_notify_cq(cq, solicited_only ? 1 : 0)) return from_errno(rc, "ibv_req_notify_cq");
    return Status::ok();
  }

  Result<mlx5::CqRingView> raw_ring() override {
    return not_supported("raw CQ rings need the mlx5 backend; verbs CQs are polled with poll()");
  }
  uint32_t consumer_index() const override { return 0; }
  void set_consumer_index(uint32_t) override {}

 private:
  // One CQE per start/end batch. ibv_next_poll's ENOENT is where providers
  // differ (rdma-core 44's rxe stores the consumer index and unlocks in it,
  // so a following ibv_end_poll consumes a CQE that was never written:
  // stale completions came back on rxe0), so it is never called.
  Result<size_t> poll_ex(std::span<rnic::WorkCompletion> out) {
    size_t n = 0;
    while (n < out.size()) {
      ibv_poll_cq_attr attr{};
      const int rc = ibv_start_poll(cqx, &attr);
      if (rc == ENOENT) break;
      if (rc) return from_errno(rc, "ibv_start_poll");
      rnic::WorkCompletion& w = out[n++];
      w = rnic::WorkCompletion{};
      w.wr_id = cqx->wr_id;
      const auto st = ibv_wc_status(cqx->status);
      w.status = map_status(st);
      w.qpn = ibv_wc_read_qp_num(cqx);
      w.vendor_syndrome = uint8_t(ibv_wc_read_vendor_err(cqx));
      if (st == IBV_WC_SUCCESS) {
        const ibv_wc_opcode op = ibv_wc_read_opcode(cqx);
        w.opcode = map_opcode(op);
        const unsigned flags = ibv_wc_read_wc_flags(cqx);
        if (op & IBV_WC_RECV || op == IBV_WC_RDMA_READ) w.byte_len = ibv_wc_read_byte_len(cqx);
        if (flags & IBV_WC_WITH_IMM) {
          w.has_imm = true;
          w.imm = be32toh(ibv_wc_read_imm_data(cqx));
        }
      }
      ibv_end_poll(cqx);
    }
    return n;
  }

  Result<size_t> poll_plain(std::span<rnic::WorkCompletion> out) {
    ibv_wc wc[16];
    const int want = int(std::min<size_t>(out.size(), std::size(wc)));
    const int got = ibv_poll_cq(cq, want, wc);
    if (got < 0) return internal_error("ibv_poll_cq failed");
    for (int i = 0; i < got; ++i) {
      rnic::WorkCompletion& w = out[i];
      w = rnic::WorkCompletion{};
      w.wr_id = wc[i].wr_id;
      w.status = map_status(wc[i].status);
      w.qpn = wc[i].qp_num;
      w.vendor_syndrome = uint8_t(wc[i].vendor_err);
      if (wc[i].status == IBV_WC_SUCCESS) {
        w.opcode = map_opcode(wc[i].opcode);
        if (wc[i].opcode & IBV_WC_RECV || wc[i].opcode == IBV_WC_RDMA_READ) w.byte_len = wc[i].byte_len;
        if (wc[i].wc_flags & IBV_WC_WITH_IMM) {
          w.has_imm = true;
          w.imm = be32toh(wc[i].imm_data);
        }
      }
    }
    return size_t(got);
  }
};

// ---- the async-event thread ------------------------------------------------------------
void Ctx::run_async() {
  pollfd fds[2] = {{ctx->async_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
  for (;;) {
    const int r = ::poll(fds, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || (fds[1].revents & POLLIN)) return;
    for (;;) {
      ibv_async_event ev;
      if (ibv_get_async_event(ctx, &ev) != 0) break;  // EAGAIN: the fd is non-blocking
      switch (ev.event_type) {
        case IBV_EVENT_CQ_ERR: {
          std::lock_guard<std::mutex> l(mu);
          for (VerbsCq* c : cqs)
            if (c->cq == ev.element.cq) c->overrun.store(true, std::memory_order_release);
          log(LogLevel::kWarn, "verbs", "cq_overrun", {{"device", name}});
          break;
        }
        case IBV_EVENT_QP_FATAL:
        case IBV_EVENT_QP_REQ_ERR:
        case IBV_EVENT_QP_ACCESS_ERR:
          log(LogLevel::kInfo, "verbs", "qp_error_event",
              {{"device", name}, {"qpn", ev.element.qp->qp_num}, {"event", ibv_event_type_str(ev.event_type)}});
          break;
        default:
          log(LogLevel::kInfo, "verbs", "async_event", {{"device", name}, {"event", ibv_event_type_str(ev.event_type)}});
          break;
      }
      ibv_ack_async_event(&ev);
    }
  }
}

Ctx::~Ctx() {
  if (async.joinable()) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t w = write(wake_fd, &one, sizeof one);
    async.join();
  }
  if (wake_fd >= 0) close(wake_fd);
  if (ctx) ibv_close_device(ctx);
}

// ---- completion channels ------------------------------------------------------------------
class VerbsChannel final : public rnic::CompletionChannel {
 public:
  explicit VerbsChannel(std::shared_ptr<ChanState> s) : s_(std::move(s)) {}
  ~VerbsChannel() override { s_->closed.store(true); }
  int fd() const override { return s_->ch->fd; }
  const std::shared_ptr<ChanState>& state() const { return s_; }

  Result<rnic::CompletionQueue*> wait(int64_t timeout_ns) override {
    const uint64_t start = monotonic_ns();
    for (;;) {
      ibv_cq* cq = nullptr;
      void* cq_ctx = nullptr;
      if (ibv_get_cq_event(s_->ch, &cq, &cq_ctx) == 0) {
        ibv_ack_cq_events(cq, 1);
        auto* v = static_cast<VerbsCq*>(cq_ctx);
        std::lock_guard<std::mutex> l(s_->mu);
        if (s_->live.count(v)) return static_cast<rnic::CompletionQueue*>(v);
        continue;  // its CQ was destroyed meanwhile: the event is gone with it
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK) return internal_error("ibv_get_cq_event: " + errno_text(errno));
      if (timeout_ns == 0) return Status(StatusCode::kDeadlineExceeded, "no completion event");
      timespec ts, *tsp = nullptr;
      if (timeout_ns > 0) {
        const uint64_t spent = monotonic_ns() - start;
        if (spent >= uint64_t(timeout_ns)) return Status(StatusCode::kDeadlineExceeded, "no completion event in time");
        const uint64_t left = uint64_t(timeout_ns) - spent;
        ts.tv_sec = time_t(left / 1'000'000'000);
        ts.tv_nsec = long(left % 1'000'000'000);
        tsp = &ts;
      }
      pollfd p{s_->ch->fd, POLLIN, 0};
      const int r = ppoll(&p, 1, tsp, nullptr);
      if (r < 0 && errno != EINTR) return internal_error("ppoll: " + errno_text(errno));
    }
  }

 private:
  std::shared_ptr<ChanState> s_;
};

// ---- memory regions and protection domains ----------------------------------------------
class VerbsQp final : public rnic::QueuePair {
 public:
  Ctx* d = nullptr;
  ibv_qp* qp = nullptr;
  rnic::QpAttr attr;
  uint32_t psn = 0;
  uint32_t max_inline = 0;
  uint32_t posted = 0;  // send WRs posted (send_producer)
  uint32_t recv_posted = 0;
  std::atomic<QpState> cached{QpState::kReset};  // the last state we moved it to
  VerbsCq* scq = nullptr;
  VerbsCq* rcq = nullptr;
  uint32_t cc_request = 0;     // rxe_cc flags asked for in the send ring's header
  uint32_t* cc_hdr = nullptr;  // that header (rxe_cc only)

  ~VerbsQp() override {
    if (qp) {
      scq->remove_user(qp->qp_num, false);
      rcq->remove_user(qp->qp_num, true);
      if (int rc = ibv_destroy_qp(qp))
        log(LogLevel::kError, "verbs", "destroy_qp_failed", {{"device", d->name}, {"error", errno_text(rc)}});
    }
  }
  uint32_t qpn() const override { return qp->qp_num; }
  QpState state() const override {
    ibv_qp_attr a{};
    ibv_qp_init_attr ia{};
    if (ibv_query_qp(qp, &a, IBV_QP_STATE, &ia) != 0) return cached.load();
    return map_state(a.qp_state);
  }
  rnic::QpAddress address() const override {
    PeerAddr a{qp->qp_num, psn, d->lid, uint8_t(d->mtu), d->link_layer, d->gid};
    a.has_mac = d->has_mac;  // lets an rnic/mlx5 (DevX) QP address this one
    a.mac = d->mac;
    return encode_addr(a);
  }

  Status modify(ibv_qp_attr& a, int mask, QpState to, const char* what) {
    if (int rc = ibv_modify_qp(qp, &a, mask)) return from_errno(rc, std::string("ibv_modify_qp to ") + what);
    cached.store(to);
    return Status::ok();
  }

  Status init(uint32_t access) override {
    if (access & ~rnic::kAccessAllRemote) return invalid_argument("init takes remote access flags only");
    if (cached.load() != QpState::kReset) return failed_precondition("init needs a QP in RESET");
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = d->port;
    a.qp_access_flags = access;  // rnic::Access values are IBV_ACCESS_*
    HL_RETURN_IF_ERROR(
        modify(a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS, QpState::kInit, "INIT"));
    // RESET -> INIT latched the cross-channel flags: check the module took them.
    if (cc_hdr && __atomic_load_n(&cc_hdr[rxe_cc::kHdrFlags], __ATOMIC_ACQUIRE) != cc_request)
      return internal_error("the patched rxe did not take the cross-channel flags of QP " +
                            std::to_string(qp->qp_num));
    return Status::ok();
  }

  Status connect(const rnic::QpAddress& remote) override {
    PeerAddr p;
    if (!decode_addr(remote, &p)) return invalid_argument("not a verbs QP address");
    if (p.link_layer != d->link_layer)
      return invalid_argument("the peer's link layer differs from " + d->name + "'s (RoCE vs InfiniBand)");
    if (cached.load() != QpState::kInit) return failed_precondition("connect needs a QP in INIT");
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = ibv_mtu(std::min<int>(p.mtu, d->mtu));
    a.dest_qp_num = p.qpn;
    a.rq_psn = p.psn;
    a.max_dest_rd_atomic = uint8_t(std::max<uint32_t>(1, std::min<uint32_t>(d->caps.max_rd_atomic, 16)));
    a.min_rnr_timer = 12;  // 0.64 ms
    a.ah_attr.port_num = d->port;
    a.ah_attr.dlid = p.lid;
    if (d->link_layer == IBV_LINK_LAYER_ETHERNET || p.gid.global.interface_id || p.gid.global.subnet_prefix) {
      a.ah_attr.is_global = 1;
      a.ah_attr.grh.dgid = p.gid;
      a.ah_attr.grh.sgid_index = uint8_t(d->gid_index);
      a.ah_attr.grh.hop_limit = 64;
    }
    return modify(a,
                  IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                      IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER,
                  QpState::kRtr, "RTR");
  }

  Status ready_to_send() override {
    if (cached.load() != QpState::kRtr) return failed_precondition("ready_to_send needs a QP in RTR");
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTS;
    a.timeout = attr.ack_timeout;
    a.retry_cnt = attr.retry_count;
    a.rnr_retry = attr.rnr_retry;
    a.sq_psn = psn;
    a.max_rd_atomic = uint8_t(std::max<uint32_t>(1, std::min<uint32_t>(d->caps.max_rd_atomic, 16)));
    return modify(a,
                  IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                      IBV_QP_MAX_QP_RD_ATOMIC,
                  QpState::kRts, "RTS");
  }

  Status set_error() override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_ERR;
    return modify(a, IBV_QP_STATE, QpState::kError, "ERROR");
  }
  Status reset() override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RESET;
    HL_RETURN_IF_ERROR(modify(a, IBV_QP_STATE, QpState::kReset, "RESET"));
    posted = recv_posted = 0;
    psn = random_psn();
    return Status::ok();
  }

  Status post_send(const rnic::SendWr& wr) override {
    const QpState s = cached.load(std::memory_order_relaxed);
    if (s != QpState::kRts && s != QpState::kError)
      return failed_precondition("post_send needs a QP in RTS (or ERROR, to flush)");
    ibv_send_wr w{};
    switch (wr.opcode) {
      case WrOpcode::kRdmaWrite: w.opcode = IBV_WR_RDMA_WRITE; break;
      case WrOpcode::kRdmaWriteImm: w.opcode = IBV_WR_RDMA_WRITE_WITH_IMM; break;
      case WrOpcode::kSend: w.opcode = IBV_WR_SEND; break;
      case WrOpcode::kSendImm: w.opcode = IBV_WR_SEND_WITH_IMM; break;
      case WrOpcode::kRdmaRead: w.opcode = IBV_WR_RDMA_READ; break;
      case WrOpcode::kAtomicCas: w.opcode = IBV_WR_ATOMIC_CMP_AND_SWP; break;
      case WrOpcode::kAtomicFaa: w.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD; break;
      case WrOpcode::kNop: return not_supported("NOP is not a verbs work request (caps().nop is false)");
      case WrOpcode::kWait:
      case WrOpcode::kSendEnable:
      case WrOpcode::kRecvEnable: return post_cross_channel(wr);
      default: return invalid_argument("unknown work request opcode");
    }
    if (wr.flags & ~uint32_t(rnic::kSendSignaled | rnic::kSendFence | rnic::kSendInline | rnic::kSendSolicited))
      return invalid_argument("unknown send flags");
    const bool atomic = wr.opcode == WrOpcode::kAtomicCas || wr.opcode == WrOpcode::kAtomicFaa;
    if (atomic && !d->caps.atomics) return not_supported(d->name + " has no atomics");
    if (atomic && (wr.sg.size() != 1 || wr.sg[0].length != 8))
      return invalid_argument("atomics need exactly one 8-byte local SGE for the old value");
    if (wr.sg.size() > d->max_send_sge) return invalid_argument("too many SGEs for this QP");
    uint64_t total = 0;
    ibv_sge sge[mlx5::kMaxSge];
    for (size_t i = 0; i < wr.sg.size(); ++i) {
      sge[i].addr = wr.sg[i].addr;
      sge[i].length = wr.sg[i].length;
      sge[i].lkey = wr.sg[i].lkey;
      total += wr.sg[i].length;
    }
    if (wr.flags & rnic::kSendInline) {
      if (wr.opcode == WrOpcode::kRdmaRead || atomic) return invalid_argument("RDMA READ and atomics cannot be inline");
      if (total > max_inline) return invalid_argument("inline payload larger than max_inline_data");
      w.send_flags |= IBV_SEND_INLINE;
    }
    if (wr.flags & rnic::kSendSignaled) w.send_flags |= IBV_SEND_SIGNALED;
    if (wr.flags & rnic::kSendFence) w.send_flags |= IBV_SEND_FENCE;
    if (wr.flags & rnic::kSendSolicited) w.send_flags |= IBV_SEND_SOLICITED;
    w.wr_id = wr.wr_id;
    w.sg_list = wr.sg.empty() ? nullptr : sge;
    w.num_sge = int(wr.sg.size());
    if (wr.opcode == WrOpcode::kRdmaWriteImm || wr.opcode == WrOpcode::kSendImm) w.imm_data = htobe32(wr.imm);
    if (atomic) {
      w.wr.atomic.remote_addr = wr.remote_addr;
      w.wr.atomic.rkey = wr.rkey;
      w.wr.atomic.compare_add = wr.compare_add;
      w.wr.atomic.swap = wr.swap;
    } else {
      w.wr.rdma.remote_addr = wr.remote_addr;
      w.wr.rdma.rkey = wr.rkey;
    }
    return submit(w);
  }

  // Posts one prepared work request and counts it (send_producer).
  Status submit(ibv_send_wr& w) {
    ibv_send_wr* bad = nullptr;
    if (int rc = ibv_post_send(qp, &w, &bad)) {
      rc = rc < 0 ? -rc : rc;
      if (rc == ENOMEM) return resource_exhausted("send queue full");
      return from_errno(rc, "ibv_post_send");
    }
    ++posted;
    return Status::ok();
  }

  // WAIT / SEND_EN / RECV_EN on the patched rxe (rxe_cc): no SGEs; imm_data
  // carries the QPN as a host-order u32, remote_addr the index.
  Status post_cross_channel(const rnic::SendWr& wr) {
    if (!d->rxe_cc) return not_supported("WAIT/SEND_EN/RECV_EN need cross-channel, which standard verbs lack");
    if (!attr.cross_channel) return not_supported("cross-channel work requests need a QP created with cross_channel");
    if (!wr.sg.empty()) return invalid_argument("WAIT/SEND_EN/RECV_EN take no SGEs");
    if (wr.flags & ~uint32_t(rnic::kSendSignaled | rnic::kSendFence))
      return invalid_argument("WAIT/SEND_EN/RECV_EN take only the signaled and fence flags");
    ibv_send_wr w{};
    uint32_t imm = 0;
    if (wr.opcode == WrOpcode::kWait) {
      auto* cq = dynamic_cast<const VerbsCq*>(wr.wait_cq);
      if (!cq || cq->d != d) return invalid_argument("WAIT needs a CQ of this device");
      std::pair<uint32_t, bool> user;
      if (!cq->any_user(&user))
        return invalid_argument("on rxe a WAIT names its CQ through a QP that uses it; this CQ has none");
      imm = user.first | (user.second ? rxe_cc::kWaitRecvCq : 0);
      w.opcode = ibv_wr_opcode(rxe_cc::kWrWait);
      w.wr.rdma.remote_addr = wr.index & 0xffffff;
    } else {
      auto* t = dynamic_cast<const VerbsQp*>(wr.enable_qp);
      if (!t || t->d != d) return invalid_argument("SEND_EN/RECV_EN need a QP of this device");
      imm = t->qp->qp_num;
      w.opcode = ibv_wr_opcode(wr.opcode == WrOpcode::kSendEnable ? rxe_cc::kWrSendEn : rxe_cc::kWrRecvEn);
      w.wr.rdma.remote_addr = wr.index & 0xffff;
    }
    w.imm_data = imm;  // raw: the module reads the u32 as is
    w.wr_id = wr.wr_id;
    if (wr.flags & rnic::kSendSignaled) w.send_flags |= IBV_SEND_SIGNALED;
    if (wr.flags & rnic::kSendFence) w.send_flags |= IBV_SEND_FENCE;
    return submit(w);
  }

  Status post_recv(const rnic::RecvWr& wr) override {
    if (cached.load(std::memory_order_relaxed) == QpState::kReset)
      return failed_precondition("post_recv needs a QP out of RESET");
    if (wr.sg.size() > attr.max_recv_sge) return invalid_argument("too many SGEs for this receive queue");
    ibv_sge sge[mlx5::kMaxSge];
    for (size_t i = 0; i < wr.sg.size(); ++i) sge[i] = ibv_sge{wr.sg[i].addr, wr.sg[i].length, wr.sg[i].lkey};
    ibv_recv_wr w{};
    w.wr_id = wr.wr_id;
    w.sg_list = wr.sg.empty() ? nullptr : sge;
    w.num_sge = int(wr.sg.size());
    ibv_recv_wr* bad = nullptr;
    if (int rc = ibv_post_recv(qp, &w, &bad)) {
      rc = rc < 0 ? -rc : rc;
      if (rc == ENOMEM) return resource_exhausted("receive queue full");
      return from_errno(rc, "ibv_post_recv");
    }
    ++recv_posted;
    return Status::ok();
  }

  Result<mlx5::SendRingView> raw_send_ring() override {
    return not_supported("raw send rings need the mlx5 backend (standard verbs hide the WQE ring)");
  }
  uint32_t send_producer() const override { return posted; }
  Status ring_send_doorbell(uint32_t) override {
    return not_supported("raw doorbells need the mlx5 backend (standard verbs ring them in post_send)");
  }
  Result<mlx5::RecvRingView> raw_recv_ring() override {
    return not_supported("raw receive rings need the mlx5 backend (standard verbs hide the WQE ring)");
  }
  uint32_t recv_producer() const override { return recv_posted; }
  Status ring_recv_doorbell(uint32_t) override {
    return not_supported("raw doorbells need the mlx5 backend (standard verbs ring them in post_recv)");
  }

  // The patched rxe's send ring (struct rxe_queue_buf: a 384-byte header,
  // then slots of 2^log2_elem_size bytes; a struct rxe_send_wqe in each, host
  // order; hyperloop/internal/rxe_wqe.h).
  Result<rnic::PostedSendWqe> posted_send_wqe(uint32_t index) override {
    if (!cc_hdr) return not_supported("on rxe only a QP created with cross-channel flags exposes its send ring");
    auto* base = reinterpret_cast<std::byte*>(cc_hdr) - 8;
    uint32_t log2_elem = 0, mask = 0;
    std::memcpy(&log2_elem, base + 0, 4);
    std::memcpy(&mask, base + 4, 4);
    if (log2_elem < 8 || log2_elem > 16 || mask == 0 || (mask & (mask + 1)) != 0)
      return internal_error("the rxe send ring's header is not what the module writes");
    if (posted - index - 1 > mask)
      return invalid_argument("send counter " + std::to_string(index) + " is not in the posted window (" +
                              std::to_string(posted) + " posted)");
    rnic::PostedSendWqe w;
    w.ring = std::span<std::byte>(base, rxe_wqe::kRingData + (size_t(mask) + 1) * (size_t(1) << log2_elem));
    w.offset = rxe_wqe::kRingData + (size_t(index & mask) << log2_elem);
    w.bytes = size_t(1) << log2_elem;
    return w;
  }
  Result<rnic::WritePatchMap> write_patch_map(uint32_t index) override {
    HL_ASSIGN_OR_RETURN(const rnic::PostedSendWqe w, posted_send_wqe(index));
    uint32_t opcode = 0, num_sge = 0, flags = 0;
    std::memcpy(&opcode, w.data() + rxe_wqe::kOpcode, 4);
    std::memcpy(&flags, w.data() + rxe_wqe::kSendFlags, 4);
    std::memcpy(&num_sge, w.data() + rxe_wqe::kNumSge, 4);
    if (opcode != rxe_wqe::kWrRdmaWrite || (flags & rxe_wqe::kSendInline) || num_sge < 1)
      return invalid_argument("no RDMA WRITE with a gather SGE at send counter " + std::to_string(index));
    rnic::WritePatchMap m;
    m.ring = w.ring;
    m.remote_addr = w.offset + rxe_wqe::kRemoteAddr;
    m.rkey = w.offset + rxe_wqe::kRdmaRkey;
    m.length = w.offset + rxe_wqe::kSge0Length;
    m.big_endian = false;
    return m;
  }
};

// hyperloop/internal/rxe_wqe.h against the kernel's own header.
static_assert(rxe_wqe::kRingData == offsetof(rxe_queue_buf, data));
static_assert(rxe_wqe::kOpcode == offsetof(rxe_send_wqe, wr.opcode));
static_assert(rxe_wqe::kSendFlags == offsetof(rxe_send_wqe, wr.send_flags));
static_assert(rxe_wqe::kImm == offsetof(rxe_send_wqe, wr.ex));
static_assert(rxe_wqe::kRemoteAddr == offsetof(rxe_send_wqe, wr.wr.rdma.remote_addr));
static_assert(rxe_wqe::kRemoteAddr == offsetof(rxe_send_wqe, wr.wr.atomic.remote_addr));
static_assert(rxe_wqe::kRdmaRkey == offsetof(rxe_send_wqe, wr.wr.rdma.rkey));
static_assert(rxe_wqe::kAtomicCompare == offsetof(rxe_send_wqe, wr.wr.atomic.compare_add));
static_assert(rxe_wqe::kAtomicSwap == offsetof(rxe_send_wqe, wr.wr.atomic.swap));
static_assert(rxe_wqe::kAtomicRkey == offsetof(rxe_send_wqe, wr.wr.atomic.rkey));
static_assert(rxe_wqe::kNumSge == offsetof(rxe_send_wqe, dma.num_sge));
// dma.sge[] follows dma.reserved at offset 24, 8-aligned, in the kernel's C
// layout. (In C++ the header's __DECLARE_FLEX_ARRAY puts a 1-byte empty
// struct first, so offsetof(rxe_dma_info, sge) is 32 here, not the ABI's.)
static_assert(rxe_wqe::kSge0 == offsetof(rxe_send_wqe, dma) + offsetof(rxe_dma_info, reserved) + 4 &&
              rxe_wqe::kSge0 % 8 == 0);
static_assert(rxe_wqe::kSge0Length - rxe_wqe::kSge0 == offsetof(rxe_sge, length));
static_assert(rxe_wqe::kSge0Lkey - rxe_wqe::kSge0 == offsetof(rxe_sge, lkey));
static_assert(rxe_wqe::kWrRdmaWrite == IBV_WR_RDMA_WRITE && rxe_wqe::kWrRdmaRead == IBV_WR_RDMA_READ &&
              rxe_wqe::kWrAtomicCmpSwp == IBV_WR_ATOMIC_CMP_AND_SWP);
static_assert(rxe_wqe::kSendSignaled == IBV_SEND_SIGNALED && rxe_wqe::kSendInline == IBV_SEND_INLINE);

VerbsCq* own_cq(Ctx* d, rnic::CompletionQueue* c) {
  auto* v = dynamic_cast<VerbsCq*>(c);
  return v && v->d == d ? v : nullptr;
}

class VerbsPd final : public rnic::ProtectionDomain {
 public:
  Ctx* d = nullptr;
  ibv_pd* pd = nullptr;
  ~VerbsPd() override {
    if (pd) {
      if (int rc = ibv_dealloc_pd(pd))
        log(LogLevel::kError, "verbs", "dealloc_pd_failed", {{"device", d->name}, {"error", errno_text(rc)}});
    }
  }

  Result<std::unique_ptr<rnic::MemoryRegion>> register_memory(void* addr, size_t length, uint32_t access) override {
    return util::register_memory(pd, addr, length, access, d->caps);
  }

  Result<std::unique_ptr<rnic::QueuePair>> create_qp(const rnic::QpAttr& a) override {
    const auto& caps = d->caps;
    const bool cc = a.cross_channel || a.managed_send || a.managed_recv;
    if (cc && !d->rxe_cc)
      return not_supported("cross-channel and managed queues are not in standard verbs (" + d->name + ")");
    VerbsCq* scq = own_cq(d, a.send_cq);
    VerbsCq* rcq = own_cq(d, a.recv_cq);
    if (!scq || !rcq) return invalid_argument("send_cq and recv_cq must be CQs of this device");
    HL_RETURN_IF_ERROR(rnic::check_qp_sizes(a, caps));
    if (a.rnr_retry > 7 || a.retry_count > 7) return invalid_argument("rnr_retry and retry_count are 3-bit (0..7)");
    if (a.ack_timeout > 31) return invalid_argument("ack_timeout is 5-bit (0..31)");
    ibv_qp_init_attr ia{};
    ia.send_cq = scq->cq;
    ia.recv_cq = rcq->cq;
    ia.cap.max_send_wr = a.send_wqebbs;
    ia.cap.max_recv_wr = a.recv_wqes;
    ia.cap.max_send_sge = d->max_send_sge;
    ia.cap.max_recv_sge = a.max_recv_sge;
    ia.cap.max_inline_data = caps.max_inline_data;
    ia.qp_type = IBV_QPT_RC;
    ia.sq_sig_all = 0;
    ibv_qp* qp = ibv_create_qp(pd, &ia);
    if (!qp) return from_errno(errno, "ibv_create_qp on " + d->name);
    auto q = std::make_unique<VerbsQp>();
    q->d = d;
    q->qp = qp;
    q->attr = a;
    q->scq = scq;
    q->rcq = rcq;
    scq->add_user(qp->qp_num, false);
    rcq->add_user(qp->qp_num, true);
    if (cc) {
      // Ask through the send ring's header; RESET -> INIT (init()) latches it.
      q->cc_hdr = rxe_cc::find_send_ring(d->uverbs_path, qp->qp_num);
      if (!q->cc_hdr)
        return internal_error("the patched rxe's send ring of QP " + std::to_string(qp->qp_num) +
                              " is not among this process's mappings of " + d->uverbs_path);
      q->cc_request = (a.cross_channel ? rxe_cc::kCrossChannel : 0) | (a.managed_send ? rxe_cc::kManagedSend : 0) |
                      (a.managed_recv ? rxe_cc::kManagedRecv : 0);
      __atomic_store_n(&q->cc_hdr[rxe_cc::kHdrRequest], q->cc_request, __ATOMIC_RELEASE);
    }
    q->psn = random_psn();
    q->max_inline = std::min<uint32_t>(ia.cap.max_inline_data, caps.max_inline_data);
    return std::unique_ptr<rnic::QueuePair>(std::move(q));
  }
};

// ---- the device ------------------------------------------------------------------------------
class VerbsDevice final : public rnic::Device {
 public:
  explicit VerbsDevice(std::unique_ptr<Ctx> c) : c_(std::move(c)) {}
  const rnic::DeviceCaps& caps() const override { return c_->caps; }

  Result<std::unique_ptr<rnic::ProtectionDomain>> alloc_pd() override {
    ibv_pd* pd = ibv_alloc_pd(c_->ctx);
    if (!pd) return from_errno(errno, "ibv_alloc_pd on " + c_->name);
    auto p = std::make_unique<VerbsPd>();
    p->d = c_.get();
    p->pd = pd;
    return std::unique_ptr<rnic::ProtectionDomain>(std::move(p));
  }

  Result<std::unique_ptr<rnic::CompletionQueue>> create_cq(const rnic::CqAttr& attr) override {
    HL_RETURN_IF_ERROR(rnic::check_cq_attr(attr, c_->caps));
    if (attr.ignore_overrun && !c_->rxe_cc)
      return not_supported("CQs that ignore overrun are not in standard verbs (" + c_->name + ")");
    if (attr.ignore_overrun && !c_->cq_ex)
      return not_supported("ignore-overrun CQs need ibv_create_cq_ex, which " + c_->name + " lacks");
    std::shared_ptr<ChanState> chan;
    if (attr.channel) {
      auto* vc = dynamic_cast<VerbsChannel*>(attr.channel);
      if (!vc || vc->state()->d != c_.get()) return invalid_argument("the completion channel is not one of this device");
      if (vc->state()->closed.load()) return invalid_argument("the completion channel was destroyed");
      chan = vc->state();
    }
    auto q = std::make_unique<VerbsCq>();
    q->d = c_.get();
    q->size_ = attr.cqe_count;
    q->cqn_ = c_->next_cqn.fetch_add(1);
    q->chan = chan;
    if (c_->cq_ex) {
      ibv_cq_init_attr_ex ea{};
      ea.cqe = attr.cqe_count;
      ea.cq_context = q.get();
      ea.channel = chan ? chan->ch : nullptr;
      ea.comp_vector = 0;
      ea.wc_flags = IBV_WC_EX_WITH_BYTE_LEN | IBV_WC_EX_WITH_IMM | IBV_WC_EX_WITH_QP_NUM;
      if (attr.ignore_overrun) {
        ea.comp_mask |= IBV_CQ_INIT_ATTR_MASK_FLAGS;
        ea.flags = IBV_CREATE_CQ_ATTR_IGNORE_OVERRUN;
      }
      q->cqx = ibv_create_cq_ex(c_->ctx, &ea);
      if (q->cqx) {
        q->cq = ibv_cq_ex_to_cq(q->cqx);
      } else if (errno == EOPNOTSUPP || errno == ENOSYS) {
        c_->cq_ex = false;  // this provider has only the plain call
      } else {
        return from_errno(errno, "ibv_create_cq_ex on " + c_->name);
      }
    }
    if (!q->cq) {
      q->cq = ibv_create_cq(c_->ctx, int(attr.cqe_count), q.get(), chan ? chan->ch : nullptr, 0);
      if (!q->cq) return from_errno(errno, "ibv_create_cq on " + c_->name);
    }
    // Its capacity: what the provider made of cqe_count (rxe rounds
    // cqe_count + 1 up to a power of two: 16 gives 31), so that callers and
    // tests see when it can overrun.
    if (q->cq->cqe > 0) q->size_ = uint32_t(q->cq->cqe);
    {
      std::lock_guard<std::mutex> l(c_->mu);
      c_->cqs.insert(q.get());
    }
    if (chan) {
      std::lock_guard<std::mutex> l(chan->mu);
      chan->live.insert(q.get());
    }
    return std::unique_ptr<rnic::CompletionQueue>(std::move(q));
  }

  Result<std::unique_ptr<rnic::CompletionChannel>> create_completion_channel() override {
    ibv_comp_channel* ch = ibv_create_comp_channel(c_->ctx);
    if (!ch) return from_errno(errno, "ibv_create_comp_channel on " + c_->name);
    auto s = std::make_shared<ChanState>();
    s->d = c_.get();
    s->ch = ch;
    const int fl = fcntl(ch->fd, F_GETFL);
    if (fl < 0 || fcntl(ch->fd, F_SETFL, fl | O_NONBLOCK) < 0)
      return internal_error("fcntl O_NONBLOCK on a completion channel: " + errno_text(errno));
    return std::unique_ptr<rnic::CompletionChannel>(std::make_unique<VerbsChannel>(std::move(s)));
  }

 private:
  std::unique_ptr<Ctx> c_;
};

// Largest inline payload a QP of this device accepts (verbs has no query
// for it: ask for less until a QP can be created).
uint32_t probe_inline(ibv_context* ctx, ibv_pd* pd, ibv_cq* cq, uint32_t max_sge) {
  for (uint32_t want : {512u, 256u, 128u, 64u, 32u}) {
    ibv_qp_init_attr ia{};
    ia.send_cq = cq;
    ia.recv_cq = cq;
    ia.cap.max_send_wr = 2;
    ia.cap.max_recv_wr = 2;
    ia.cap.max_send_sge = max_sge;
    ia.cap.max_recv_sge = 1;
    ia.cap.max_inline_data = want;
    ia.qp_type = IBV_QPT_RC;
    if (ibv_qp* qp = ibv_create_qp(pd, &ia)) {
      const uint32_t got = std::min<uint32_t>(ia.cap.max_inline_data, mlx5::kMaxInlineBytes);
      ibv_destroy_qp(qp);
      return std::max(got, want);
    }
  }
  return 0;
}

}  // namespace

std::vector<std::string> device_names() {
  std::vector<std::string> out;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list) return out;
  for (int i = 0; i < n; ++i) out.emplace_back(ibv_get_device_name(list[i]));
  ibv_free_device_list(list);
  return out;
}

Result<std::unique_ptr<rnic::Device>> open(std::string_view name, const Options& options) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list)  // ENOSYS: the kernel has no RDMA stack (as on our hosts): no devices
    return not_found("no verbs device named '" + std::string(name) + "' (found: none; ibv_get_device_list: " +
                     errno_text(errno) + ")");
  ibv_device* dev = nullptr;
  std::string found;
  for (int i = 0; i < n; ++i) {
    const std::string nm = ibv_get_device_name(list[i]);
    if (nm == name) dev = list[i];
    found += (found.empty() ? "" : ", ") + nm;
  }
  if (!dev) {
    ibv_free_device_list(list);
    return not_found("no verbs device named '" + std::string(name) + "' (found: " + (found.empty() ? "none" : found) +
                     ")");
  }
  auto c = std::make_unique<Ctx>();
  c->name = std::string(name);
  c->port = options.port;
  c->ctx = ibv_open_device(dev);
  ibv_free_device_list(list);
  if (!c->ctx) return unavailable("ibv_open_device(" + c->name + "): " + errno_text(errno));

  ibv_device_attr_ex dx{};
  if (int rc = ibv_query_device_ex(c->ctx, nullptr, &dx)) return from_errno(rc, "ibv_query_device_ex(" + c->name + ")");
  const ibv_device_attr& da = dx.orig_attr;
  if (options.port == 0 || options.port > da.phys_port_cnt)
    return invalid_argument(c->name + " has no port " + std::to_string(options.port));
  ibv_port_attr pa{};
  if (int rc = ibv_query_port(c->ctx, options.port, &pa)) return from_errno(rc, "ibv_query_port(" + c->name + ")");
  c->lid = pa.lid;
  c->link_layer = pa.link_layer == IBV_LINK_LAYER_INFINIBAND ? IBV_LINK_LAYER_INFINIBAND : IBV_LINK_LAYER_ETHERNET;
  c->mtu = pa.active_mtu;
  if (pa.state != IBV_PORT_ACTIVE)
    log(LogLevel::kWarn, "verbs", "port_not_active",
        {{"device", c->name}, {"port", uint64_t(options.port)}, {"state", ibv_port_state_str(pa.state)}});
  if (options.gid_index >= 0) {
    if (options.gid_index >= pa.gid_tbl_len)
      return invalid_argument(c->name + " has no GID index " + std::to_string(options.gid_index));
    c->gid_index = options.gid_index;
  } else {
    c->gid_index = choose_gid(c->ctx, options.port, pa.gid_tbl_len);
  }
  if (int rc = ibv_query_gid(c->ctx, options.port, c->gid_index, &c->gid))
    return from_errno(rc, "ibv_query_gid(" + c->name + ")");
  if (c->link_layer == IBV_LINK_LAYER_ETHERNET) {
    if (auto mac = util::gid_mac(c->ctx, options.port, c->gid_index); mac.is_ok()) {
      c->has_mac = true;
      c->mac = *mac;
    }
  }

  auto& k = c->caps;
  k.name = c->name;
  k.backend = "verbs";
  k.atomics = da.atomic_cap != IBV_ATOMIC_NONE;
  k.completion_channel = true;
  k.max_sge = std::min<uint32_t>(uint32_t(std::max(da.max_sge, 1)), mlx5::kMaxSge);
  c->max_send_sge = k.max_sge;
  k.max_send_wqebbs = std::min<uint32_t>(floor_pow2(uint64_t(da.max_qp_wr)), 32768);
  k.max_recv_wqes = k.max_send_wqebbs;
  k.max_cqe = floor_pow2(uint64_t(da.max_cqe));
  k.max_mr_size = da.max_mr_size;
  k.max_msg_size = pa.max_msg_sz;
  k.max_rd_atomic = uint32_t(std::max(da.max_qp_rd_atom, 1));
  // The patched rxe (driver-patches/linux-6.1-rxe-cross-channel): its
  // module's marker, on an rxe device.
  c->uverbs_path = std::string("/dev/infiniband/") + c->ctx->device->dev_name;
  if (da.vendor_id == rxe_cc::kVendorId && rxe_cc::module_has_it()) {
    c->rxe_cc = true;
    k.cross_channel = k.managed_queues = k.cq_ignore_overrun = k.patchable_send_wqes = true;
    k.send_wqe_format = rnic::SendWqeFormat::kRxe;
  }

  // Inline size: probe with a throwaway PD, CQ and QP.
  if (ibv_pd* pd = ibv_alloc_pd(c->ctx)) {
    if (ibv_cq* cq = ibv_create_cq(c->ctx, 4, nullptr, nullptr, 0)) {
      k.max_inline_data = probe_inline(c->ctx, pd, cq, c->max_send_sge);
      ibv_destroy_cq(cq);
    }
    ibv_dealloc_pd(pd);
  }

  // Asynchronous events (CQ overrun, QP errors) on a thread of their own.
  const int fl = fcntl(c->ctx->async_fd, F_GETFL);
  if (fl < 0 || fcntl(c->ctx->async_fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return internal_error("fcntl O_NONBLOCK on the async fd: " + errno_text(errno));
  c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->wake_fd < 0) return resource_exhausted("eventfd: " + errno_text(errno));
  Ctx* raw = c.get();
  c->async = std::thread([raw] { raw->run_async(); });
  log(LogLevel::kDebug, "verbs", "device_open",
      {{"device", c->name}, {"gid_index", uint64_t(c->gid_index)}, {"mtu", uint64_t(128u << c->mtu)},
       {"max_inline", uint64_t(k.max_inline_data)}, {"atomics", k.atomics ? "yes" : "no"}});
  return std::unique_ptr<rnic::Device>(std::make_unique<VerbsDevice>(std::move(c)));
}

}  // namespace hyperloop::verbs
