// hyperloop/primitives.h: group operations over a replica chain.
//
//   client --> R1 --> R2 --> ... --> Rn --> ack to client
//
// A Group is the client's handle on one tenant's chain; a ReplicaHost is one
// replica machine (a device plus one background agent thread) hosting chain
// members for many tenants, each in its own protection domain. Every member
// registers one region with an identical layout; operations name offsets in it:
//   write(offset, bytes)                  bytes land at offset on every replica
//   cas(offset, compare, swap, mask)      8-byte CAS on each replica in mask;
//                                         the client gets every old value
//   memcpy(src, dst, len)                 each replica's NIC copies in-region
//   flush(offset, len)                    the range is durable on every replica
//
// Two forwarding modes, same API, same wire format:
//   kOffload     (devices with cross-channel and raw rings) each replica
//                pre-posts, per operation slot, a RECV whose scatter list lands
//                in the fields of the slot's pre-posted WQEs, a WAIT/SEND_EN
//                chain on a master queue, and the slot's local op, forwarded
//                WRITE and SEND on managed queues. The replica's CPU is off the
//                path: its agent only re-arms used slots, in batches.
//   kCpuForward  (any device) the agent thread polls, forwards and re-posts:
//                the baseline HyperLoop is measured against.
//
// Operations are asynchronous and pipelined: start one with an Op the caller
// owns (no allocation per operation), then poll() or wait(). Operations
// complete in issue order and take effect on every replica in issue order.
// (A gWRITE's bytes travel outside the slot order: they land on a replica
// before its slot runs and are forwarded by reading them after. So the client
// holds back an operation whose bytes overlap an in-flight one when exactly
// one of the two is a gWRITE, until that one completes; everything else is
// ordered by the slots themselves and stays pipelined.) When every armed slot is in use the client waits
// for the agents to re-arm (backpressure); it never overwrites a slot in use.
// If the chain breaks (a replica NIC dies, a link is cut) pending operations
// fail with kUnavailable or kDeadlineExceeded within op_timeout, and the group
// stays broken (rebuilding it is the transaction layer's job).
//
// Thread-safety: a Group may be used from several threads (calls serialize on
// an internal lock; Group::read and Group::heartbeat take a second one, for
// the direct lines, so a READ that waits for a slow or dead replica does not
// hold up issuing and polling). ReplicaHost is thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hyperloop/clock.h"
#include "hyperloop/pmem.h"
#include "hyperloop/rnic.h"
#include "hyperloop/status.h"

namespace hyperloop::prim {

enum class ForwardMode : uint8_t { kOffload, kCpuForward };
std::string_view forward_mode_name(ForwardMode m);

inline constexpr uint32_t kMaxReplicas = 7;

struct GroupOptions {
  uint32_t tenant = 0;             // a label; isolation comes from per-member PDs
  size_t region_size = 1 << 20;    // bytes, identical on every replica
  ForwardMode mode = ForwardMode::kOffload;
  uint32_t slots = 256;            // armed operation slots per replica (power of two)
  uint32_t rearm_batch = 32;       // slots the agent re-arms at a time
  size_t staging_bytes = 4 << 20;  // client buffer for gWRITE payloads in flight
  uint64_t op_timeout_ns = 500'000'000;  // a pending operation fails after this
  // Group::connect only: the tenant's secret as configured on every daemon
  // (the client proves it by HMAC-SHA256 challenge-response, and checks that
  // each daemon knows it too), and the bound on every control step (TCP
  // connect, each request and its answer). Not used by Group::create.
  std::string secret;
  uint64_t control_timeout_ns = 5'000'000'000;
  // Deterministic simulation: the time source for timeouts, and a hook called
  // on every turn of the client's waiting loops (step a ManualExecutor and the
  // replicas' agent_poll() there). Empty: real time, no hook.
  Clock clock;
  std::function<void()> progress;
  // The configuration epoch this group runs under (coord.h: TenantConfig::
  // epoch; 0: none). Each host gives the tenant's chain position to the
  // highest epoch it has seen: a group of a higher epoch than the member a
  // host holds fences that member (its forwarding queues stopped before its
  // receive queue, then destroyed: the old group's operations fail, and
  // none of them is applied there afterwards); a group of a lower epoch
  // than the host has seen is kPermissionDenied; the same epoch while a
  // member exists is kAlreadyExists. The epoch a host has seen lives as
  // long as the host object (a restarted daemon starts from 0 again).
  uint64_t epoch = 0;
};

struct ReplicaHostOptions {
  int agent_cpu = -1;              // pin the agent thread (-1: no pinning)
  // Agent nap when it found nothing to do, doubling while idle up to 10x.
  // The offload agent is background work; the CPU-forwarding agent is on the
  // critical path and never naps while it has members in kCpuForward mode.
  uint32_t idle_sleep_us = 20;
  // false: no agent thread; the caller runs agent_poll() (deterministic simulation).
  bool agent_thread = true;
  // How an idle agent with members in kCpuForward mode waits for the next
  // message:
  //   kEvents  it sleeps on a completion channel attached to those members'
  //            CQs (rnic.h's arm/wait pattern) and is woken per message, as a
  //            tuned production forwarder blocks on completion events. Needs
  //            caps.completion_channel; elsewhere it spins. The sleep is
  //            bounded by max_idle_us so that heartbeats keep beating.
  //   kSpin    it keeps polling, yielding the core when idle: the lowest
  //            latency when it has a core of its own, and starvation when it
  //            has not.
  // kEvents polls on for event_spin_us after its last work before it
  // sleeps (adaptive polling, as tuned event-driven servers do): a message
  // that follows closely costs no wake-up, an idle forwarder burns at most
  // that much per burst.
  enum class CpuWait : uint8_t { kEvents, kSpin };
  CpuWait cpu_wait = CpuWait::kEvents;
  uint32_t event_spin_us = 50;
  // How an idle agent with members in kOffload mode waits: on completion
  // events of its members' out CQs (true; where the device has completion
  // channels), which the chain signals once per min(rearm_batch, slots/8)
  // operations (rounded down to a power of two), so the agent wakes about
  // once per batch to re-arm it; or (false) in naps of idle_sleep_us
  // doubling to 10x, whatever the load.
  bool offload_events = true;
  uint32_t max_idle_us = 1000;  // events: the longest sleep (keep it well under heartbeat timeouts)
};

namespace internal {
class OpQueue;
}

// Completion state of one operation. The caller owns it.
// Lifetime: from a successful issue (write/cas/memcpy/flush returned OK) until
// done(), the Op must stay alive and unmoved, or the Group must be destroyed
// first (its destructor completes every pending Op with kAborted). An Op is
// then reused for the next operation.
// States: never issued: done() and status() kFailedPrecondition; refused
// (the issue returned an error): done() and status() that error; pending:
// !done(); complete: done() and the outcome. Group::wait returns at once for
// anything but a pending Op. (The in-flight queue is intrusive: two words
// here instead of an allocation per operation.)
class Op {
 public:
  Op() = default;
  Op(const Op&) = delete;
  Op& operator=(const Op&) = delete;

  bool done() const { return done_.load(std::memory_order_acquire); }
  const Status& status() const { return status_; }
  // gCAS: the old value of the word on each replica (index = chain position);
  // 0 for replicas outside the execute mask. Empty for other operations.
  std::span<const uint64_t> old_values() const { return {old_, is_cas_ ? replicas_ : 0u}; }
  uint64_t sequence() const { return seq_; }

 private:
  friend class Group;
  friend class internal::OpQueue;
  Op* next_ = nullptr;           // the group's in-flight queue
  const void* group_ = nullptr;  // the group it was last issued on (null: never)
  bool linked_ = false;          // in that queue
  std::atomic<bool> done_{true};
  Status status_ = Status(StatusCode::kFailedPrecondition, "this Op was never issued");
  bool is_cas_ = false;
  uint8_t ranges_ = 0;       // byte ranges that order later operations
  bool write_ranges_ = false;  // the ranges are a gWRITE's
  uint64_t lo_[2] = {}, hi_[2] = {};
  uint32_t replicas_ = 0;
  uint64_t seq_ = 0;
  uint64_t deadline_ns_ = 0;
  size_t staging_end_ = 0;  // staging ring position freed when this completes
  uint64_t old_[kMaxReplicas] = {};
};

// Limits of a replica host's control service (serve_control). Everything a
// peer can make the host hold is bounded by one of these.
struct ControlOptions {
  uint32_t max_connections = 256;      // open control connections; more are closed at accept
  uint32_t max_unauthenticated = 32;   // of those, not yet authenticated
  uint64_t auth_timeout_ns = 2'000'000'000;  // to send HELLO and AUTH after connecting
  // An authenticated client that sends nothing (no request, no heartbeat) for
  // this long is taken for dead: its connection is closed and its member
  // dropped. Clients send heartbeats at a quarter of it.
  uint64_t client_timeout_ns = 1'500'000'000;
  uint32_t max_slots = 4096;           // per member (CREATE)
  uint64_t max_staging_bytes = 1ull << 30;
  uint32_t max_output_bytes = 64 << 10;  // answers a client has not read yet; more: it is cut
  // Appended to the STATS answer (Prometheus text), e.g. the daemon's wire counters.
  std::function<std::string()> extra_metrics;
};

// Counters of a host's control service, for metrics.
struct ControlStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_refused = 0;   // over a limit at accept (or out of file descriptors)
  uint64_t connections_open = 0;
  uint64_t auth_ok = 0;
  uint64_t auth_failed = 0;           // wrong proof, unknown tenant, tenant without a secret
  uint64_t auth_timeouts = 0;
  uint64_t client_timeouts = 0;       // authenticated clients gone silent
  uint64_t frames_rejected = 0;       // bad magic, version, type, length, body
  uint64_t requests_refused = 0;      // requests answered with an error
  uint64_t pings = 0;                 // heartbeats received
  uint64_t members_created = 0;
  uint64_t members_dropped = 0;
  uint64_t members_fenced = 0;        // replaced by a CREATE of a newer epoch
};

class ReplicaHost;
namespace internal {
struct HostAccess;  // primitives/host_access.h: the library's own way in
}  // namespace internal

// A hold on a ReplicaHost, taken by everything that keeps a pointer to it
// (a Group built with create() holds each of its hosts; a txn::Store each
// host it was opened or recovered with). Destroying a host while a hold on
// it exists is a lifetime error: the destructor prints which and aborts,
// instead of leaving a dangling pointer behind (a use-after-free later).
// Movable; thread-safe.
class HostHold {
 public:
  HostHold() = default;
  explicit HostHold(ReplicaHost& host);
  HostHold(HostHold&& o) noexcept : host_(o.host_) { o.host_ = nullptr; }
  HostHold& operator=(HostHold&& o) noexcept;
  HostHold(const HostHold&) = delete;
  HostHold& operator=(const HostHold&) = delete;
  ~HostHold();
  ReplicaHost* host() const { return host_; }

 private:
  ReplicaHost* host_ = nullptr;
};

class Group {
 public:
  // Lifetime: a Group must be destroyed before the replica hosts (create) and
  // the client device it was built on.
  // Builds the chain client -> replicas[0] -> ... -> replicas[n-1] -> client
  // for options.tenant (1 <= n <= 7): on each replica a member is created in
  // the tenant's protection domain, QPs are connected, every slot armed.
  // Errors: kNotFound (a replica does not host the tenant: wrong tenant),
  // kInvalidArgument (options, or region sizes that differ), kAlreadyExists
  // (the tenant already has a group on a replica), kNotSupported (offload on
  // a device without cross-channel), device errors.
  static Result<std::unique_ptr<Group>> create(rnic::Device& client_device,
                                               std::span<ReplicaHost* const> replicas,
                                               const GroupOptions& options);
  // The same chain over replica hosts in other processes or hosts: each
  // replica is a hyperloop-replica daemon's control endpoint "ipv4:port"
  // (tools/replica_daemon.cc). client_device must be a soft NIC whose
  // fabric listens (soft::Fabric::listen) so the chain's QPs reach it.
  // options.secret authenticates the client for options.tenant on each daemon;
  // each step of the set-up is bounded by options.control_timeout_ns. While the
  // Group lives its control connections send heartbeats; when it is destroyed
  // (or its process dies) each daemon drops its member.
  // Errors: as create, plus kUnavailable (a daemon cannot be reached or closed
  // the connection), kDeadlineExceeded (a daemon did not answer in time),
  // kPermissionDenied (wrong secret, or the daemon failed to prove it knows it),
  // kNotFound (the daemon does not host the tenant).
  static Result<std::unique_ptr<Group>> connect(rnic::Device& client_device, std::span<const std::string> replicas,
                                                const GroupOptions& options);
  ~Group();

  // Each returns once the operation is issued (or refused: nothing is sent and
  // no replica changes). Refusals: kOutOfRange (offset/length outside the
  // region), kInvalidArgument (misaligned CAS, zero length, overlapping
  // memcpy, mask naming no replica, payload larger than staging_bytes),
  // kUnavailable (group broken). Blocks while no slot is armed (backpressure),
  // at most op_timeout, then kDeadlineExceeded.
  Status write(Op& op, uint64_t offset, std::span<const std::byte> bytes);
  Status cas(Op& op, uint64_t offset, uint64_t compare, uint64_t swap, uint32_t execute_mask);
  Status memcpy(Op& op, uint64_t src_offset, uint64_t dst_offset, uint64_t len);
  Status flush(Op& op, uint64_t offset, uint64_t len);

  // Reads [offset, offset+dst.size()) of one replica's region with RDMA READ
  // (synchronous; for checks and for readers that go straight to a replica).
  // A READ not answered within op_timeout gives kDeadlineExceeded and breaks
  // the group (its late completion could be taken for a later READ's).
  Status read(uint32_t replica, uint64_t offset, std::span<std::byte> dst);

  // The heartbeat counter of one replica's member, which its host's agent
  // bumps on every turn, read with RDMA READ over the direct line (no
  // replica CPU): a liveness probe. Two reads that return the same value a
  // few agent turns apart mean the host's agent is not running (a crash, a
  // stopped process); a READ that is not answered within
  // min(timeout_ns, op_timeout) is kDeadlineExceeded and breaks the group
  // (as read does). Errors: kOutOfRange, kUnavailable (group broken).
  Result<uint64_t> heartbeat(uint32_t replica, uint64_t timeout_ns = UINT64_MAX);

  // Progress: takes acknowledgements, completes operations in order, fails
  // them when the chain broke or op_timeout passed. Returns ops completed.
  size_t poll();
  // Polls until op is done or timeout_ns passes (then kDeadlineExceeded; the
  // operation itself is still pending).
  Status wait(Op& op, uint64_t timeout_ns = UINT64_MAX);

  // Breaks the group: every pending operation completes with `why` (an OK
  // status becomes kUnavailable) and every later call is refused with it.
  // For failure detectors (a replica whose heartbeat stopped). Thread-safe.
  void fail(Status why);

  uint32_t replicas() const;
  size_t region_size() const;
  ForwardMode mode() const;
  size_t in_flight() const;
  bool broken() const;
  uint64_t completed() const;

  struct Impl;

 private:
  explicit Group(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class ReplicaHost {
 public:
  // A replica machine on `device` (which must outlive it).
  // Lifetime: every Group and txn::Store built on a host must be destroyed
  // before it (they hold a HostHold; destroying a held host aborts with a
  // message). Remote clients (Group::connect) need nothing of the kind: the
  // host drops their members when it goes.
  static Result<std::unique_ptr<ReplicaHost>> create(rnic::Device& device,
                                                     const ReplicaHostOptions& options = {});
  ~ReplicaHost();

  rnic::Device& device();

  // Registers a tenant: a protection domain and a region of region_size bytes
  // on this host. A Group for the tenant needs it registered, with the same
  // size, on every replica of its chain. With pmem_path the region is a
  // PersistentMemory over that file (created zero-filled if missing, found
  // again after a restart; durability as in hyperloop/pmem.h); without it,
  // zeroed DRAM. With pmem_path the tenant's fence epoch (the highest
  // GroupOptions::epoch a group creation carried) is kept durably too, in
  // pmem_path + ".epoch", written (temporary file, fsync, rename, fsync of
  // the directory) before a newer epoch fences anything: a restarted host
  // still refuses the epochs it had fenced. secret: what remote clients of
  // this tenant must prove they know (Group::connect); a tenant without one
  // accepts no remote client. Errors: kAlreadyExists, kInvalidArgument,
  // kDataLoss (an epoch file that does not parse: the message names it),
  // PersistentMemory's errors, device errors.
  Status register_tenant(uint32_t tenant, size_t region_size, const std::string& pmem_path = {},
                         std::string_view secret = {});

  // Serves the control protocol on ipv4:port (0: any free port) so clients in
  // other processes can build chains over this host with Group::connect; the
  // device must be a soft NIC on a fabric that listens. Returns the port.
  // One thread serves every connection (epoll); limits and timeouts are in
  // options. Errors: kInvalidArgument, kUnavailable (port in use ...),
  // kAlreadyExists.
  Result<uint16_t> serve_control(const std::string& ipv4, uint16_t port = 0, const ControlOptions& options = {});
  // Counters of the control service (all zero if it is not served).
  ControlStats control_stats() const;
  // The control service's counters and the host's in Prometheus text format
  // (what a STATS request answers).
  std::string metrics_text() const;

  // Fault: this host loses power. Every persistent region drops what was not
  // made durable (pair it with soft::Nic::crash() of the host's NIC); with
  // options.tear, each region first keeps a seeded subset of its unflushed
  // lines and words (pmem.h; the seed is mixed with the tenant id). The host
  // is down from then on: its files are released (PersistentMemory::release)
  // so that a new host, the restart, can open them; this object only stays
  // for the pointers others still hold.
  // Returns the unflushed words the tearing kept, over every region.
  void power_fail();
  size_t power_fail(const PowerFailOptions& options);

  // Stops / restarts the host's application threads (the agent): for tests
  // that prove the NICs alone carry operations. freeze() returns once the
  // agent is parked.
  void freeze();
  void thaw();
  // One turn of the agent over every member: what the agent thread loops on.
  // Call it yourself when created with agent_thread = false. Returns work done.
  size_t agent_poll();
  // CPU time the agent thread has consumed (CLOCK_THREAD_CPUTIME_ID).
  uint64_t agent_cpu_ns() const;
  // Slots re-armed / messages forwarded by the agent so far.
  uint64_t slots_rearmed() const;
  uint64_t ops_forwarded() const;
  // CpuWait::kEvents: how often the agent slept on its completion channel,
  // and how often a completion event (not the max_idle_us bound or a
  // wake-up of its own) ended the sleep. Both 0 with kSpin.
  uint64_t event_sleeps() const;
  uint64_t event_wakeups() const;
  // A copy of the tenant's region bytes at offset, read by this host's CPU
  // (for checks; not synchronized with in-flight operations).
  Status peek(uint32_t tenant, uint64_t offset, std::span<std::byte> dst) const;

  // What a chain client of `tenant` learns at connect anyway: the tenant's
  // protection domain on this host and its region's address, rkey and size.
  // For isolation tests and tools (a QP created in `pd` is what that tenant's
  // client can drive); keys are not secrets, protection domains are the
  // boundary. Errors: kNotFound.
  struct TenantAccess {
    rnic::ProtectionDomain* pd = nullptr;
    uint64_t addr = 0;
    uint32_t rkey = 0;
    size_t size = 0;
  };
  Result<TenantAccess> tenant_access(uint32_t tenant) const;


 private:
  friend struct internal::HostAccess;
  struct Impl;
  explicit ReplicaHost(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hyperloop::prim
