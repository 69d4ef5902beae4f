// hyperloop/rnic.h: the one device interface (an Env for RDMA NICs).
//
// Modelled on the hardware, not on a convenience API: remote patching writes
// into work-queue memory, so the mlx5 WQE ring format is part of the contract
// (see hyperloop/mlx5/wqe.h). Backends:
//   "soft", "soft:<name>"  rnic/soft, the software RNIC (embedded default)
//   mlx5 names (mlx5_0)    rnic/mlx5 (hyperloop/mlx5_rnic.h): ConnectX through
//                          mlx5dv + DevX: raw rings, cross-channel where the
//                          HCA has `cd` (never run on hardware: docs/mlx5.md)
//   other rdma-core names  rnic/verbs (hyperloop/verbs_rnic.h): rxe0, ...
//                          through standard verbs; cross-channel only on rxe
//                          with driver-patches/linux-6.1-rxe-cross-channel;
//                          "verbs:mlx5_0" forces verbs on an mlx5 device
//
// Capabilities are explicit (DeviceCaps); an operation the device cannot do
// returns StatusCode::kNotSupported, never undefined behaviour.
//
// Object lifetime follows verbs: destroy QPs before their CQs and PD, MRs
// before their PD, everything before the Device (completion channels: see
// CompletionChannel). Destroying an object stops the device from touching it
// before the destructor returns.
//
// Thread-safety: control-path calls (create/register/modify/destroy) are safe
// from any thread. Data-path calls on one QP (post_send, post_recv, raw ring
// access, doorbells) must come from one thread at a time; poll() on one CQ
// likewise. Distinct QPs and CQs may be used from distinct threads.
// CompletionQueue::arm and CompletionChannel::wait are safe from any thread
// (see CompletionChannel).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hyperloop/mlx5/wqe.h"
#include "hyperloop/status.h"

namespace hyperloop::rnic {

// ---- capabilities -------------------------------------------------------------
// The layout of a posted send WQE in the device's own ring, where
// DeviceCaps::patchable_send_wqes: what a peer must write where to turn one
// into another operation (primitives/chain_format.h builds on this).
//   kMlx5: mlx5 WQEBBs, big-endian segments (hyperloop/mlx5/wqe.h): the
//          software RNIC (and ConnectX through rnic/mlx5)
//   kRxe:  struct rxe_send_wqe of the patched rdma_rxe, host order
//          (hyperloop/internal/rxe_wqe.h)
enum class SendWqeFormat : uint8_t { kNone = 0, kMlx5 = 1, kRxe = 2 };

struct DeviceCaps {
  std::string name;
  std::string backend;             // "soft", "mlx5", "verbs"
  bool cross_channel = false;      // WAIT, SEND_EN, RECV_EN work requests
  bool managed_queues = false;     // queues that run only what was enabled
  bool raw_send_ring = false;      // send queue exposed as an mlx5 WQE ring
  bool raw_recv_ring = false;      // receive queue exposed as an mlx5 ring
  bool raw_cq_ring = false;        // CQ exposed as an mlx5 CQE ring
  bool atomics = false;            // ATOMIC_CS / ATOMIC_FA
  bool persistent_memory = false;  // persistent memory regions
  bool completion_channel = false; // create_completion_channel, CompletionQueue::arm
  bool cq_ignore_overrun = false;  // CqAttr::ignore_overrun (not in standard verbs)
  bool nop = false;                // WrOpcode::kNop (not a verbs opcode: kNotSupported there)
  // QueuePair::write_patch_map: a posted RDMA WRITE's target and length can be
  // rewritten in the send ring (by a peer's WRITE into it) before it runs.
  bool patchable_send_wqes = false;
  SendWqeFormat send_wqe_format = SendWqeFormat::kNone;  // kNone unless patchable_send_wqes
  // WorkCompletion::opcode is meaningful on error completions too. Verbs
  // defines ibv_wc::opcode only for successful ones: kUnknown there.
  bool error_cqe_opcode = false;
  uint32_t max_sge = 0;
  uint32_t max_inline_data = 0;
  uint32_t max_send_wqebbs = 0;    // per send queue, power of two
  uint32_t max_recv_wqes = 0;      // per receive queue, power of two
  uint32_t max_cqe = 0;            // per CQ, power of two
  uint64_t max_mr_size = 0;
  uint32_t max_msg_size = 0;
  uint32_t max_rd_atomic = 0;      // outstanding READs/atomics per QP
};

// Memory access rights; the values equal IBV_ACCESS_*.
enum Access : uint32_t {
  kAccessLocalWrite = 1u << 0,
  kAccessRemoteWrite = 1u << 1,
  kAccessRemoteRead = 1u << 2,
  kAccessRemoteAtomic = 1u << 3,
};
inline constexpr uint32_t kAccessAllRemote = kAccessRemoteWrite | kAccessRemoteRead | kAccessRemoteAtomic;
inline constexpr uint32_t kAccessAll = kAccessLocalWrite | kAccessAllRemote;

using Sge = mlx5::Sge;

// ---- work requests -------------------------------------------------------------
enum class WrOpcode : uint8_t {
  kNop,
  kRdmaWrite,
  kRdmaWriteImm,
  kSend,
  kSendImm,
  kRdmaRead,      // zero-length allowed (no SGE)
  kAtomicCas,     // 8-byte aligned remote word; old value to sg[0] (8 bytes)
  kAtomicFaa,
  kWait,          // block this send queue until `wait.cq` has produced CQE `wait.index`
  kSendEnable,    // release managed send queue `enable.qp` up to `enable.index`
  kRecvEnable,    // release managed receive queue `enable.qp` up to `enable.index`
};

enum SendFlags : uint32_t {
  kSendSignaled = 1u << 0,   // write a CQE on success (errors always do)
  kSendFence = 1u << 1,      // wait for earlier READs/atomics to complete
  kSendInline = 1u << 2,     // copy payload into the WQE
  kSendSolicited = 1u << 3,
};

class CompletionQueue;
class QueuePair;

struct SendWr {
  uint64_t wr_id = 0;
  WrOpcode opcode = WrOpcode::kNop;
  uint32_t flags = 0;            // SendFlags
  std::span<const Sge> sg;       // local buffers
  uint32_t imm = 0;              // host order; for *_IMM
  uint64_t remote_addr = 0;      // RDMA and atomics
  uint32_t rkey = 0;
  uint64_t compare_add = 0;      // CAS compare, or FAA addend
  uint64_t swap = 0;             // CAS swap
  // WAIT: the 0-based index (24-bit, wraps) of the CQE to wait for.
  const CompletionQueue* wait_cq = nullptr;
  // SEND_EN/RECV_EN: the new exclusive producer limit (16-bit, wraps) of the
  // managed queue, in WQEBBs for send queues and WQEs for receive queues.
  const QueuePair* enable_qp = nullptr;
  uint32_t index = 0;
};

struct RecvWr {
  uint64_t wr_id = 0;
  std::span<const Sge> sg;
};

// ---- completions -------------------------------------------------------------
enum class WcStatus : uint8_t {
  kSuccess,
  kLocalLengthError,
  kLocalQpOperationError,  // malformed WQE or invalid cross-channel target
  kLocalProtectionError,   // bad lkey, out of bounds, wrong PD or access
  kFlushed,                // the QP went to ERROR before this ran
  kBadResponse,
  kLocalAccessError,
  kRemoteInvalidRequest,
  kRemoteAccessError,      // bad rkey, out of bounds, wrong access at the peer
  kRemoteOperationError,
  kRetryExceeded,          // transport: the peer did not answer
  kRnrRetryExceeded,       // no receive WQE at the peer, retries ran out
  kGeneralError,
};
std::string_view wc_status_name(WcStatus s);
WcStatus wc_status_from_syndrome(uint8_t syndrome);

enum class WcOpcode : uint8_t {
  kSend, kRdmaWrite, kRdmaRead, kAtomicCas, kAtomicFaa, kNop, kWait, kSendEnable, kRecvEnable,
  kRecv,             // an inbound SEND consumed a receive WQE
  kRecvRdmaWithImm,  // an inbound WRITE_IMM consumed a receive WQE
  kUnknown,
};

// "SEND", "RDMA_WRITE", ... (for logs and tools).
std::string_view wc_opcode_name(WcOpcode o);

struct WorkCompletion {
  uint64_t wr_id = 0;       // structured posts; for raw-posted WQEs: ~0
  WcStatus status = WcStatus::kSuccess;
  WcOpcode opcode = WcOpcode::kUnknown;
  uint32_t qpn = 0;
  uint32_t byte_len = 0;    // receives and READs
  uint32_t imm = 0;         // host order, when has_imm
  bool has_imm = false;
  uint16_t wqe_counter = 0; // send: WQEBB index of the WQE; recv: RQ index
  uint8_t syndrome = 0;     // mlx5 syndrome for errors
  uint8_t vendor_syndrome = 0;
};
inline constexpr uint64_t kRawWrId = ~uint64_t{0};

// ---- objects -------------------------------------------------------------------
class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;
  virtual std::byte* addr() const = 0;
  virtual size_t length() const = 0;
  virtual uint32_t lkey() const = 0;
  virtual uint32_t rkey() const = 0;
  virtual uint32_t access() const = 0;
  // An SGE covering [addr()+offset, +len).
  Sge sge(size_t offset, uint32_t len) const {
    return Sge{reinterpret_cast<uint64_t>(addr()) + offset, len, lkey()};
  }
  uint64_t remote_addr(size_t offset = 0) const { return reinterpret_cast<uint64_t>(addr()) + offset; }
};

// ---- completion notification ----------------------------------------------------
// Sleeping until a CQ has a completion, with the semantics of verbs
// (ibv_req_notify_cq + ibv_comp_channel); a verbs backend maps it 1:1:
//   Device::create_completion_channel  ibv_create_comp_channel
//   CompletionChannel::fd              ibv_comp_channel::fd
//   CompletionChannel::wait            poll(2) on fd + ibv_get_cq_event (+ ibv_ack_cq_events)
//   CqAttr::channel                    ibv_create_cq's channel argument
//   CompletionQueue::arm               ibv_req_notify_cq
//
// Semantics:
// - A CQ created with CqAttr::channel is attached to that channel for its
//   whole life. Several CQs (of the channel's device) may share one channel,
//   so one thread can sleep on all of them; to sleep on CQs of several
//   devices, poll(2) the channels' fds together.
// - arm() is one-shot: the next completion written to the CQ after arm()
//   fires one event on the channel and disarms the CQ. Completions already in
//   the CQ when arm() is called fire nothing, and neither does anything while
//   the CQ is not armed. Arming an armed CQ changes nothing (a later plain
//   arm() widens a solicited-only arming to every completion).
//   solicited_only: fire only on a receive completion of a request sent with
//   kSendSolicited, or on an error completion (as in IB).
// - The race-free pattern (as in verbs): drain with poll(); arm(); poll() once
//   more, and handle what it finds (it raced the arm: no event is coming for
//   it, re-arm after handling); only when that poll found nothing, wait().
//   After wait() returns a CQ: poll it dry, then arm again.
// - An overrun is not a completion: it fires no event (verbs reports it as an
//   asynchronous IBV_EVENT_CQ_ERR). Arm a CQ only after draining it.
// - wait() returns each event once; nothing needs acknowledging (a verbs
//   backend acks what it took). An event may be stale (its completion was
//   already polled after the arm): poll finds nothing, re-arm and go on.
//   Events of one CQ not yet taken by wait() may coalesce: the software RNIC
//   keeps at most one pending event per attached CQ; verbs may return the CQ
//   once per firing.
//
// Thread-safety: arm() may be called from any thread, concurrently with the
// device writing completions and with poll() on the same CQ. wait() may be
// called from several threads at once; each event goes to one of them.
//
// Lifetimes: the channel belongs to its device; destroy it before the
// device. Destroying a CQ discards its pending event (wait() never returns a
// destroyed CQ). A channel may be destroyed while CQs are still attached: its
// fd is no longer valid for the caller, those CQs stay usable for poll() and
// arm() returns kFailedPrecondition. Destroying a channel while a thread is
// inside its wait() is undefined, as for every object in use.
class CompletionChannel {
 public:
  virtual ~CompletionChannel() = default;
  // Readable (POLLIN) while an event is pending: for poll(2)/epoll with other
  // descriptors. Do not read, write or close it; call wait(0) when it is readable.
  virtual int fd() const = 0;
  // Takes one pending event and returns its CQ, blocking for up to
  // timeout_ns (negative: no limit; 0: do not block). Errors:
  // kDeadlineExceeded (no event within timeout_ns), kInternal (the OS wait failed).
  // On the software RNIC completions are written only by its executor: under a
  // ManualExecutor nothing happens unless the caller steps it, so step first
  // and wait with a timeout (a wait without one would never return).
  virtual Result<CompletionQueue*> wait(int64_t timeout_ns) = 0;
};

struct CqAttr {
  uint32_t cqe_count = 1024;     // power of two, at most caps.max_cqe
  // Keep writing CQEs when nobody consumes them (a CQ only WAITed on). Without
  // it a full CQ is an overrun: the producing QP goes to ERROR. Needs
  // caps.cq_ignore_overrun (otherwise kNotSupported).
  bool ignore_overrun = false;
  // Where arm()ed completions fire (see CompletionChannel); null: arm() is
  // kFailedPrecondition. Must be a channel of the same device (kInvalidArgument).
  CompletionChannel* channel = nullptr;
};

class CompletionQueue {
 public:
  virtual ~CompletionQueue() = default;
  virtual uint32_t cqn() const = 0;
  // Completions it holds before it overruns: CqAttr::cqe_count on the
  // software RNIC, at least that on verbs (providers round up; rxe makes 16
  // into 31).
  virtual uint32_t size() const = 0;
  // Takes up to out.size() completions. Returns how many, or
  // kResourceExhausted once the CQ overran (completions were lost; the
  // producing QPs went to ERROR).
  virtual Result<size_t> poll(std::span<WorkCompletion> out) = 0;
  // Requests one event on the CQ's channel for the next completion (see
  // CompletionChannel for the semantics and the safe pattern). Errors:
  // kFailedPrecondition (no channel, or the channel was destroyed),
  // kNotSupported (the device has no completion channels).
  virtual Status arm(bool solicited_only = false) {
    (void)solicited_only;
    return not_supported("completion notification is not supported by this device");
  }
  // The CQE ring and its doorbell record, where caps.raw_cq_ring.
  // Consuming raw CQEs: read with mlx5::read_cqe, then set_consumer_index.
  virtual Result<mlx5::CqRingView> raw_ring() = 0;
  virtual uint32_t consumer_index() const = 0;
  virtual void set_consumer_index(uint32_t ci) = 0;
};

enum class QpState : uint8_t { kReset, kInit, kRtr, kRts, kError };
std::string_view qp_state_name(QpState s);

// The opaque blob that identifies a QP to its peer (exchanged out of band).
struct QpAddress {
  std::array<std::byte, 64> bytes{};
  uint32_t size = 0;
};

struct QpAttr {
  CompletionQueue* send_cq = nullptr;
  CompletionQueue* recv_cq = nullptr;
  uint32_t send_wqebbs = 256;    // power of two
  uint32_t recv_wqes = 256;      // power of two
  uint32_t max_recv_sge = 4;     // receive WQE stride = 16 * pow2(max_recv_sge)
  bool cross_channel = false;    // may post WAIT / SEND_EN / RECV_EN (cd_master)
  bool managed_send = false;     // executes only what a SEND_EN enabled (cd_slave_send)
  bool managed_recv = false;     // consumes only what a RECV_EN enabled
  uint8_t rnr_retry = 7;         // 7 = retry forever, as in IB
  uint8_t retry_count = 7;       // transport retries before kRetryExceeded
  // Local ACK timeout as IB encodes it: 4.096 us * 2^ack_timeout (14: 67 ms;
  // 0: wait forever). Verbs devices take it as is; the software RNIC uses
  // its NicOptions::ack_timeout_ns instead.
  uint8_t ack_timeout = 14;
};

// A posted send WQE in the device's own ring (QueuePair::posted_send_wqe):
// its bytes are ring[offset, offset + bytes); the whole ring is given so that
// it can be registered as one memory region (a RECV's scatter or a peer's
// WRITE then lands in WQEs).
struct PostedSendWqe {
  std::span<std::byte> ring;
  size_t offset = 0;
  size_t bytes = 0;
  std::byte* data() const { return ring.data() + offset; }
};

// Where the fields of one posted RDMA WRITE live in the device's own send
// ring (HyperLoop's remote patching: a peer rewrites them before the WQE
// runs, e.g. on a managed queue before its SEND_EN). Offsets are into
// `ring`, which may be registered (kAccessLocalWrite | kAccessRemoteWrite)
// so that peers can write there. Each device reads these fields when the
// WQE executes.
//   mlx5 format (software RNIC): big-endian, in the raddr and first data segment
//   rxe (patched module): host order, wr.rdma.remote_addr, rkey, sge[0].length
struct WritePatchMap {
  std::span<std::byte> ring;
  size_t remote_addr = 0;  // 8 bytes
  size_t rkey = 0;         // 4 bytes
  size_t length = 0;       // 4 bytes: the first SGE's length (the WRITE's, with one SGE)
  bool big_endian = false;
};
// Writes v into the patch map's field at `off`, in its byte order (for a
// local patch, or to build the bytes a peer WRITEs there).
void put_patch_field(std::byte* dst, uint64_t v, size_t bytes, bool big_endian);

// The mlx5-format map of the WRITE at WQEBB counter `index` of `ring`
// (shared by the backends whose send ring is an mlx5 ring). Errors:
// kInvalidArgument (no non-inline RDMA WRITE with an SGE there).
Result<WritePatchMap> mlx5_write_patch_map(const mlx5::SendRingView& ring, uint32_t index);
// The mlx5-format PostedSendWqe at WQEBB counter `index` of `ring`, whose
// producer is `producer` (its ds says how many WQEBBs it spans). Errors:
// kInvalidArgument (not in the ring's posted window).
Result<PostedSendWqe> mlx5_posted_send_wqe(const mlx5::SendRingView& ring, uint32_t producer, uint32_t index);

class QueuePair {
 public:
  virtual ~QueuePair() = default;
  virtual uint32_t qpn() const = 0;
  virtual QpState state() const = 0;
  virtual QpAddress address() const = 0;

  // State machine: RESET -> INIT -> RTR -> RTS; any -> ERROR; any -> RESET.
  // `remote_access` (kAccessRemote*) is what inbound requests may do on this QP.
  virtual Status init(uint32_t remote_access) = 0;
  virtual Status connect(const QpAddress& remote) = 0;  // INIT -> RTR
  virtual Status ready_to_send() = 0;                   // RTR -> RTS
  virtual Status set_error() = 0;
  virtual Status reset() = 0;

  // Structured posting: encodes an mlx5 WQE into the ring and rings the
  // doorbell (a managed queue records it; only SEND_EN releases it).
  // Errors: kFailedPrecondition (QP state), kResourceExhausted (ring full),
  // kInvalidArgument (malformed request), kNotSupported (capability).
  virtual Status post_send(const SendWr& wr) = 0;
  virtual Status post_recv(const RecvWr& wr) = 0;

  // Raw ring access, where caps.raw_send_ring. Write WQEs with mlx5 codec at
  // counter send_producer(), then ring_send_doorbell(new producer). The ring's
  // memory may be registered as a memory region for remote patching.
  virtual Result<mlx5::SendRingView> raw_send_ring() = 0;
  virtual uint32_t send_producer() const = 0;          // next free WQEBB counter
  virtual Status ring_send_doorbell(uint32_t producer) = 0;
  virtual Result<mlx5::RecvRingView> raw_recv_ring() = 0;
  virtual uint32_t recv_producer() const = 0;
  virtual Status ring_recv_doorbell(uint32_t producer) = 0;

  // Where caps.patchable_send_wqes: the patch map of the RDMA WRITE posted
  // (post_send, one SGE, not inline) at send counter `index` (the
  // send_producer() before that post_send). Valid until the WQE completes.
  // Errors: kNotSupported (the device, or on rxe a QP created without
  // cross-channel flags), kInvalidArgument (no such WRITE at `index`).
  virtual Result<WritePatchMap> write_patch_map(uint32_t index) {
    (void)index;
    return not_supported("this device does not expose its send WQEs for patching");
  }
  // Where caps.patchable_send_wqes: the WQE posted (of any opcode) at send
  // counter `index`, laid out as caps.send_wqe_format says. Valid while the
  // QP lives; its contents are the device's until the WQE completes, and a
  // later post at the same ring position overwrites it. Errors as
  // write_patch_map's (kInvalidArgument: `index` is not posted and not yet
  // reused, i.e. not in [send_producer() - ring size, send_producer())).
  virtual Result<PostedSendWqe> posted_send_wqe(uint32_t index) {
    (void)index;
    return not_supported("this device does not expose its send WQEs for patching");
  }
};

class ProtectionDomain {
 public:
  virtual ~ProtectionDomain() = default;
  // Registers [addr, addr+length). Remote write or atomic access requires
  // local write. Errors: kInvalidArgument, kResourceExhausted.
  virtual Result<std::unique_ptr<MemoryRegion>> register_memory(void* addr, size_t length,
                                                                uint32_t access) = 0;
  virtual Result<std::unique_ptr<QueuePair>> create_qp(const QpAttr& attr) = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual const DeviceCaps& caps() const = 0;
  virtual Result<std::unique_ptr<ProtectionDomain>> alloc_pd() = 0;
  virtual Result<std::unique_ptr<CompletionQueue>> create_cq(const CqAttr& attr) = 0;
  // A completion channel for CQs of this device (where caps.completion_channel;
  // otherwise kNotSupported). Errors: kResourceExhausted (no descriptor).
  virtual Result<std::unique_ptr<CompletionChannel>> create_completion_channel() {
    return not_supported("completion channels are not supported by this device");
  }
};

// Opens a device by name (see the list at the top). "soft" makes a new
// software NIC on the process's default in-process fabric, driven by the
// process-wide default executor (one thread for all NICs). open_device and
// list_devices are in the library hyperloop::devices (rnic/devices.cc), which
// links every backend of the build; hyperloop::rnic itself has no backend.
Result<std::unique_ptr<Device>> open_device(std::string_view name);
// Names open_device accepts on this machine, "soft" first.
std::vector<std::string> list_devices();

// The attribute checks every backend makes before it creates an object, in
// one place so that devices refuse alike. Each returns kInvalidArgument
// naming what is wrong, or OK.
Status check_cq_attr(const CqAttr& attr, const DeviceCaps& caps);
Status check_qp_sizes(const QpAttr& attr, const DeviceCaps& caps);  // queue sizes and SGEs
Status check_memory_registration(const void* addr, size_t length, uint32_t access, const DeviceCaps& caps);

// Brings two fresh QPs to RTS connected to each other, with the given
// remote-access rights on both.
Status connect_pair(QueuePair& a, QueuePair& b, uint32_t remote_access = kAccessAllRemote);

}  // namespace hyperloop::rnic
