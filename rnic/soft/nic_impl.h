// Private to rnic/soft: the software RNIC's objects and engine state.
//
// Threading: everything below is owned by the NIC's engine and touched only
// with Nic::Impl::mu held (executor threads in poll_once, application threads
// in control calls), except the fields marked "app" (the posting thread's own
// counters), "atomic" (doorbells, retire counters, CQ consumer index) and the
// CQ ring itself (published CQE by CQE through op_own).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/intrusive/list.hpp>
#include <boost/intrusive/slist.hpp>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "hyperloop/pmem.h"
#include "hyperloop/soft_rnic.h"
#include "wr_codec.h"

namespace hyperloop::soft {

namespace bi = boost::intrusive;
using rnic::internal::AlignedBuffer;

struct SoftQp;
struct SoftCq;
struct SoftPd;
struct SoftMr;

// ---- the wire -------------------------------------------------------------------
enum class PacketType : uint8_t { kWrite, kSend, kRead, kAtomic, kAck, kNak, kReadResp, kAtomicResp };
enum class NakCode : uint8_t { kRnr, kRemoteAccess, kInvalidRequest, kRemoteOp };

// A packet's payload: capacity kept across reuse, no zero-fill on resize
// (every byte is written before it is read).
class Payload {
 public:
  std::byte* data() { return buf_.get(); }
  const std::byte* data() const { return buf_.get(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  void clear() { size_ = 0; }
  size_t capacity() const { return cap_; }
  // Frees the buffer if it is larger than `keep` (a pooled packet must not
  // pin a huge buffer).
  void trim(size_t keep) {
    size_ = 0;
    if (cap_ > keep) {
      buf_.reset();
      cap_ = 0;
    }
  }
  void resize(size_t n) {
    if (n > cap_) {
      buf_.reset(new std::byte[n]);
      cap_ = n;
    }
    size_ = n;
  }

 private:
  std::unique_ptr<std::byte[]> buf_;
  size_t size_ = 0, cap_ = 0;
};

// One inbound TCP connection as NICs see it (tcp.cc owns the connection):
// packets from it hold credit until the NIC frees them (the connection is
// not read while too much is held), and QPs bind to it (see SoftQp).
struct ConnToken {
  uint64_t id = 0;                       // unique per fabric, for logs
  std::atomic<bool> open{true};          // false once the connection closed
  std::atomic<uint32_t> packets{0};      // held by NICs now
  std::atomic<uint64_t> bytes{0};
  std::atomic<bool> paused{false};       // the loop stopped reading it
  uint32_t resume_packets = 0;           // low-water marks: wake the loop below these
  uint64_t resume_bytes = 0;
  int wake_fd = -1;                      // the loop's eventfd (outlives every token: see tcp.cc)
};
// Gives back a packet's credit (tcp.cc). Any thread, any lock.
void conn_release(ConnToken& c, uint64_t bytes);

struct Packet : bi::slist_base_hook<> {
  PacketType type = PacketType::kAck;
  NakCode nak = NakCode::kRnr;
  uint8_t opcode = 0;        // requests: the mlx5 opcode that made it
  bool solicited = false;
  uint32_t dst_qpn = 0;
  uint32_t src_qpn = 0;
  uint32_t psn = 0;          // 24 bits
  uint64_t src_nic = 0;
  uint64_t raddr = 0;
  uint32_t rkey = 0;
  uint32_t length = 0;       // READ request length
  uint64_t swap_add = 0;
  uint64_t compare = 0;
  uint64_t result = 0;       // atomic response
  uint32_t imm = 0;          // raw (network order)
  uint64_t deliver_at = 0;   // link delay: not before this time
  uint64_t key = 0;          // the sending QP's key (SoftQp::key)
  std::shared_ptr<ConnToken> conn;  // inbound TCP packets: where it came from
  uint64_t credit_bytes = 0;        // what it holds of conn's credit
  Payload payload;
  // Returns the packet's credit to its connection (at once when the NIC is
  // done with it: freed, or turned into a reply).
  void release_credit() {
    if (!conn) return;
    conn_release(*conn, credit_bytes);
    credit_bytes = 0;
    conn.reset();
  }
};
using PacketList = bi::slist<Packet, bi::cache_last<true>, bi::constant_time_size<false>>;

struct TcpLink;

// Where packets for one NIC go. A local port is that NIC's inbox; a remote
// port (link set) stands for a NIC of another fabric, reached over TCP.
struct Port {
  std::mutex mu;
  PacketList inbox;
  std::atomic<uint32_t> queued{0};
  std::atomic<bool> alive{true};
  uint64_t uid = 0;
  std::shared_ptr<TcpLink> link;  // remote ports only
  ~Port();
};

// Queues a packet to a NIC of another fabric (tcp.cc). Never blocks (called
// with the NIC's mutex held). False if it was dropped: the link is dead or
// its send queue is full.
bool tcp_send(TcpLink& link, const Packet& p, uint64_t dst_uid);
bool tcp_alive(const TcpLink& link);

// An inbound packet a QP refused (counted in the fabric's WireStats, logged
// rate-limited by the wire's loop). Any thread.
enum class WireDrop : uint8_t { kBadKey, kWrongConnection };
void wire_note_drop(Fabric::Impl* fabric, WireDrop why, const Packet& p);
// A random non-zero 64-bit key from the kernel's CSPRNG (getrandom(2)).
uint64_t random_key();

// Pool bounds: a NIC keeps at most this many free packets, and none whose
// payload buffer is larger than kMaxPooledPayload.
inline constexpr size_t kMaxPooledPackets = 1024;
inline constexpr size_t kMaxPooledPayload = 64 * 1024;

inline constexpr uint32_t kPsnMask = 0xffffff;

// Where a QP address points: a NIC of this fabric, or one of another fabric
// at a TCP endpoint.
struct PeerAddress {
  uint64_t fabric_id = 0;
  uint64_t nic_uid = 0;
  uint32_t qpn = 0;
  uint64_t key = 0;    // that QP's key: its packets carry it
  uint32_t ipv4 = 0;   // network order; 0 if that fabric does not listen
  uint16_t port = 0;   // host order
  uint32_t psn = 0;    // the first PSN that QP sends (24 bits): its peer expects it
};
rnic::QpAddress encode_address(const PeerAddress& a);
bool decode_address(const rnic::QpAddress& blob, PeerAddress* out);
// This fabric's id and listening endpoint (ipv4 0 if not listening).
void fabric_identity(Fabric::Impl* fabric, uint64_t* id, uint32_t* ipv4, uint16_t* port);
// The port for a peer: local, or a remote port over a (new or reused) TCP
// link. Errors: kNotFound (no such local NIC), kUnavailable (cannot connect).
Result<std::shared_ptr<Port>> fabric_peer_port(Fabric::Impl* fabric, const PeerAddress& peer);
// The port of the local NIC with this uid, or null.
std::shared_ptr<Port> fabric_port(Fabric::Impl* fabric, uint64_t uid);
// Link faults between NICs a and b: false if the packet is lost; otherwise
// *deliver_at is when it may be taken (0: at once).
bool fabric_admit(Fabric::Impl* fabric, uint64_t a, uint64_t b, uint64_t now, uint64_t* deliver_at);

// ---- objects ------------------------------------------------------------------
struct SoftMr final : rnic::MemoryRegion {
  Nic::Impl* nic = nullptr;
  SoftPd* pd = nullptr;
  std::byte* base = nullptr;
  size_t len = 0;
  uint32_t key = 0;  // lkey == rkey
  uint32_t acc = 0;
  uint32_t index = 0;
  PersistentMemory* pmem = nullptr;  // the persistent region this MR lies in, if any
  ~SoftMr() override;
  std::byte* addr() const override { return base; }
  size_t length() const override { return len; }
  uint32_t lkey() const override { return key; }
  uint32_t rkey() const override { return key; }
  uint32_t access() const override { return acc; }
  // [addr, addr+n) inside this region? (overflow-safe)
  bool covers(uint64_t addr, uint64_t n) const {
    const uint64_t b = reinterpret_cast<uint64_t>(base);
    return addr >= b && n <= len && addr - b <= len - n;
  }
};

struct SoftPd final : rnic::ProtectionDomain {
  Nic::Impl* nic = nullptr;
  uint32_t pdn = 0;
  Result<std::unique_ptr<rnic::MemoryRegion>> register_memory(void* addr, size_t length,
                                                              uint32_t access) override;
  Result<std::unique_ptr<rnic::QueuePair>> create_qp(const rnic::QpAttr& attr) override;
};

using WaitHook = bi::list_member_hook<>;

// One issued, not yet retired, send WQE.
struct Outstanding {
  uint16_t wqe_ci = 0;       // first WQEBB
  uint16_t wqebbs = 1;
  uint8_t opcode = 0;
  bool signaled = false;
  bool remote = false;       // waits for a response from the peer
  bool done = false;
  uint8_t syndrome = 0;      // non-zero: completes with this error
  uint32_t psn = 0;
  uint32_t byte_len = 0;
  uint64_t sent_at = 0;
  uint32_t num_sge = 0;      // READ / atomic: where the response lands
  mlx5::Sge sge[mlx5::kMaxSge];
};

enum class Block : uint8_t { kNone, kWait, kRnr };

struct SoftQp final : rnic::QueuePair {
  Nic::Impl* nic = nullptr;
  SoftPd* pd = nullptr;
  SoftCq* scq = nullptr;
  SoftCq* rcq = nullptr;
  rnic::QpAttr attr;
  uint32_t number = 0;
  std::atomic<rnic::QpState> st{rnic::QpState::kReset};
  uint32_t remote_access = 0;
  // Authentication. key: random (getrandom), in this QP's address, carried
  // by every packet it sends. peer_key: the connected peer's key; inbound
  // packets without it are forged and dropped. bound_conn: the inbound TCP
  // connection that delivered the first authentic packet; while it is open,
  // packets arriving on any other connection are dropped.
  uint64_t key = 0;
  uint64_t peer_key = 0;
  std::shared_ptr<ConnToken> bound_conn;
  // Peer (set by connect).
  uint64_t peer_nic = 0;
  uint32_t peer_qpn = 0;
  std::shared_ptr<Port> peer_port;
  // Send queue.
  AlignedBuffer sq_buf;
  mlx5::SendRingView sq;
  std::vector<uint64_t> sq_wrid;
  uint32_t sq_post = 0;                  // app: next WQEBB counter
  std::atomic<uint32_t> sq_dbr{0};       // atomic: doorbell record (16 bits used)
  std::atomic<uint32_t> sq_retired{0};   // atomic: WQEBBs retired (free running)
  uint16_t sq_ci = 0;                    // engine: next WQEBB to execute
  uint16_t sq_enable = 0;                // engine: managed limit set by SEND_EN
  // Outstanding ring.
  std::vector<Outstanding> out;
  uint32_t out_head = 0, out_tail = 0;   // free running
  uint32_t out_rd_atomic = 0;            // outstanding READs/atomics
  uint32_t next_psn = 0;
  uint8_t retry_left = 7;
  uint8_t rnr_left = 7;
  Block block = Block::kNone;
  uint64_t rnr_until = 0;
  uint32_t wait_index = 0;
  SoftCq* wait_cq = nullptr;
  bool error_pending = false;            // an error entry is queued; stop issuing
  bool response_retry = false;           // rewound for a lost READ/atomic response; until progress or a timeout
  // Receive queue.
  AlignedBuffer rq_buf;
  mlx5::RecvRingView rq;
  std::vector<uint64_t> rq_wrid;
  uint32_t rq_post = 0;                  // app
  std::atomic<uint32_t> rq_dbr{0};       // atomic (16 bits used)
  std::atomic<uint32_t> rq_retired{0};   // atomic
  uint16_t rq_ci = 0;                    // engine
  uint16_t rq_enable = 0;                // engine: managed limit set by RECV_EN
  // Responder.
  uint32_t expected_psn = 0;
  struct AtomicReply { uint32_t psn; uint64_t value; bool valid; };
  // One per request a peer may have outstanding (this NIC's max_outstanding:
  // NICs of a fabric are configured alike), indexed by PSN: a retransmitted
  // atomic is answered from here, never executed twice, however many
  // atomics came after it (a table of 16 forgot those beyond 16).
  std::vector<AtomicReply> atomic_replies;
  std::byte inline_scratch[mlx5::kMaxInlineBytes];
  // Scheduling.
  bi::list_member_hook<> ready_hook;
  bi::list_member_hook<> timer_hook;
  WaitHook wait_hook;
  bool in_ready = false;
  bool in_timer = false;
  std::atomic<bool> doorbell_pending{false};

  ~SoftQp() override;
  uint32_t qpn() const override { return number; }
  rnic::QpState state() const override { return st.load(std::memory_order_acquire); }
  rnic::QpAddress address() const override;
  Status init(uint32_t remote_access) override;
  Status connect(const rnic::QpAddress& remote) override;
  Status ready_to_send() override;
  Status set_error() override;
  Status reset() override;
  Status post_send(const rnic::SendWr& wr) override;
  Status post_recv(const rnic::RecvWr& wr) override;
  Result<mlx5::SendRingView> raw_send_ring() override;
  Result<rnic::WritePatchMap> write_patch_map(uint32_t index) override { return rnic::mlx5_write_patch_map(sq, index); }
  Result<rnic::PostedSendWqe> posted_send_wqe(uint32_t index) override {
    return rnic::mlx5_posted_send_wqe(sq, sq_post, index);
  }
  uint32_t send_producer() const override { return sq_post; }
  Status ring_send_doorbell(uint32_t producer) override;
  Result<mlx5::RecvRingView> raw_recv_ring() override;
  uint32_t recv_producer() const override { return rq_post; }
  Status ring_recv_doorbell(uint32_t producer) override;

  uint32_t out_size() const { return out_tail - out_head; }
  Outstanding& out_at(uint32_t i) { return out[i & (out.size() - 1)]; }
  uint16_t send_limit() const {
    return attr.managed_send ? sq_enable : uint16_t(sq_dbr.load(std::memory_order_acquire));
  }
  uint16_t recv_limit() const {
    return attr.managed_recv ? rq_enable : uint16_t(rq_dbr.load(std::memory_order_acquire));
  }
};

using ReadyList = bi::list<SoftQp, bi::member_hook<SoftQp, bi::list_member_hook<>, &SoftQp::ready_hook>>;
using TimerList = bi::list<SoftQp, bi::member_hook<SoftQp, bi::list_member_hook<>, &SoftQp::timer_hook>>;
using WaitList = bi::list<SoftQp, bi::member_hook<SoftQp, WaitHook, &SoftQp::wait_hook>>;

// A completion channel's shared state: the channel object and every CQ
// attached to it hold it, so neither may dangle whichever goes first. `fd` is
// an eventfd that is readable exactly while `fired` is non-empty; `fired`,
// `closed` and the attached CQs' `queued` flags are guarded by `mu`. Lock
// order: Nic::Impl::mu before mu.
struct SoftChannelState {
  std::mutex mu;
  int fd = -1;                           // eventfd (non-blocking); closed with the state
  const Nic::Impl* owner = nullptr;      // identity only: CQs must be of this NIC
  bool closed = false;                   // the channel object was destroyed
  std::deque<SoftCq*> fired;             // at most one entry per attached CQ
  ~SoftChannelState();
  // With mu held: queue cq's event (coalesced) and make fd readable.
  void fire(SoftCq* cq);
  // With mu held: drop cq's pending event, if any.
  void discard(SoftCq* cq);
};

struct SoftChannel final : rnic::CompletionChannel {
  std::shared_ptr<SoftChannelState> st;
  ~SoftChannel() override;
  int fd() const override { return st->fd; }
  Result<rnic::CompletionQueue*> wait(int64_t timeout_ns) override;
};

struct SoftCq final : rnic::CompletionQueue {
  Nic::Impl* nic = nullptr;
  std::shared_ptr<SoftChannelState> channel;  // immutable after creation; may be null
  bool armed = false;                    // engine (mu): the next matching CQE fires
  bool armed_solicited = false;          // engine (mu): only solicited or error CQEs match
  bool queued = false;                   // channel->mu: an event is in channel->fired
  uint32_t number = 0;
  AlignedBuffer buf;
  mlx5::CqRingView ring;
  bool ignore_overrun = false;
  uint32_t pi = 0;                       // engine: CQEs produced (free running)
  std::atomic<uint32_t> ci{0};           // atomic: consumer index (the CQ doorbell record)
  std::atomic<bool> overrun{false};
  uint32_t app_ci = 0;                   // app: poll()'s cursor
  WaitList waiters;                      // engine: QPs whose WAIT is blocked here
  ~SoftCq() override;
  uint32_t cqn() const override { return number; }
  uint32_t size() const override { return ring.cqe_count; }
  Result<size_t> poll(std::span<rnic::WorkCompletion> out) override;
  Status arm(bool solicited_only = false) override;
  Result<mlx5::CqRingView> raw_ring() override;
  uint32_t consumer_index() const override { return ci.load(std::memory_order_acquire); }
  void set_consumer_index(uint32_t v) override { ci.store(v, std::memory_order_release); }
};


// ---- the NIC --------------------------------------------------------------------
struct Nic::Impl {
  Fabric::Impl* fabric = nullptr;
  NicOptions opts;
  uint64_t uid = 0;
  std::string name;
  rnic::DeviceCaps caps;
  std::shared_ptr<Port> port;
  Clock clock;

  mutable std::mutex mu;                   // engine + tables
  std::atomic<int> ctrl_waiting{0};        // control calls waiting for mu
  std::atomic<bool> crashed{false};
  alignas(64) std::atomic<uint64_t> app_calls{0};  // own cache line: bumped by app threads
  alignas(64) char app_calls_pad_[1] = {};

  std::vector<SoftQp*> qps;                // index = qpn - 1
  std::unique_ptr<std::atomic<SoftQp*>[]> qp_lookup;  // index = qpn - 1; lock-free read for CQ poll
  std::vector<SoftCq*> cqs;                // index = cqn - 1
  std::vector<SoftMr*> mrs;                // index = key >> 8
  uint32_t next_pdn = 1;
  uint8_t key_tag = 1;

  ReadyList ready;
  TimerList timers;
  std::mutex doorbell_mu;
  std::vector<SoftQp*> doorbells;          // guarded by doorbell_mu
  std::atomic<bool> doorbell_flag{false};  // doorbells is non-empty
  std::atomic<bool> busy_hint{true};       // ready or timers may be non-empty
  std::vector<SoftQp*> overrun_victims;    // QPs whose CQ overran this poll
  std::vector<PersistentMemory*> dirty_pmems;  // written by this NIC since its last READ served

  PacketList pool;
  size_t pool_size = 0;  // capped (kMaxPooledPackets): packets from TCP arrive new and end here
  mlx5::SendWqe scratch_wqe;  // decode target, reused (it holds 16 SGEs)
  NicStats stats;
  uint64_t now = 0;
  bool now_valid = false;
  uint64_t time() {
    if (!now_valid) {
      now = clock();
      now_valid = true;
    }
    return now;
  }
  uint64_t next_timer_scan = 0;

  Impl();
  ~Impl();

  // Control-path lock: makes the executor back off so control calls get in.
  std::unique_lock<std::mutex> ctrl_lock() {
    ctrl_waiting.fetch_add(1, std::memory_order_relaxed);
    std::unique_lock<std::mutex> l(mu);
    ctrl_waiting.fetch_sub(1, std::memory_order_relaxed);
    return l;
  }
  void count_app_call() { app_calls.fetch_add(1, std::memory_order_relaxed); }

  SoftQp* qp_by_number(uint32_t qpn) const {
    return (qpn >= 1 && qpn <= qps.size()) ? qps[qpn - 1] : nullptr;
  }
  SoftCq* cq_by_number(uint32_t cqn) const {
    return (cqn >= 1 && cqn <= cqs.size()) ? cqs[cqn - 1] : nullptr;
  }
  // The MR named by `key`, if it belongs to `pd` (protection-domain check).
  SoftMr* mr_for(uint32_t key, const SoftPd* pd) const {
    const uint32_t idx = key >> 8;
    if (idx >= mrs.size()) return nullptr;
    SoftMr* mr = mrs[idx];
    return (mr && mr->key == key && mr->pd == pd) ? mr : nullptr;
  }

  // The NIC wrote [addr, addr+len) of mr: not durable until a READ is served.
  void wrote(const SoftMr* mr, uint64_t addr, uint64_t len) {
    if (!mr->pmem || len == 0) return;
    mr->pmem->mark_dirty(addr - reinterpret_cast<uint64_t>(mr->pmem->data()), len);
    if (std::find(dirty_pmems.begin(), dirty_pmems.end(), mr->pmem) == dirty_pmems.end())
      dirty_pmems.push_back(mr->pmem);
  }
  // Before a READ response leaves: everything this NIC wrote becomes durable.
  void persist_written() {
    for (PersistentMemory* pm : dirty_pmems) pm->persist_dirty();
    dirty_pmems.clear();
  }

  // engine.cc
  size_t poll_once(size_t budget);
  bool idle() const;
  void schedule(SoftQp* qp);
  void doorbell(SoftQp* qp);
  void unlink(SoftQp* qp);
  void enter_error(SoftQp* qp);
  void flush_recv(SoftQp* qp);

  Packet* alloc_packet();
  void free_packet(Packet* p);
  void transmit(SoftQp* qp, Packet* p);

 private:
  void drain_doorbells();
  size_t process_inbox(size_t budget);
  size_t run_send_queue(SoftQp* qp, size_t budget);
  void scan_timers();
  bool execute_wqe(SoftQp* qp);
  void retire(SoftQp* qp);
  void rewind(SoftQp* qp);
  bool push_cqe(SoftCq* cq, const mlx5::CqeFields& f, SoftQp* producer);
  void complete_send(SoftQp* qp, const Outstanding& o);
  void fail_entry(SoftQp* qp, Outstanding& o, uint8_t syndrome);
  void flush_send(SoftQp* qp);
  void handle_request(SoftQp* qp, Packet* p);
  void handle_response(SoftQp* qp, Packet* p);
  void responder_error(SoftQp* qp, Packet* req, NakCode code);
  void reply(SoftQp* qp, Packet* req, PacketType type);
  bool take_recv_wqe(SoftQp* qp, uint16_t* index);
  void arm_timer(SoftQp* qp);
};

}  // namespace hyperloop::soft
