// hyperloop/soft_rnic.h: the software RNIC (rnic/soft), its wire and executors.
//
// A faithful device model: it executes the mlx5 send-queue ring (NOP, RDMA
// WRITE[_IMM], SEND[_IMM], RDMA READ incl. 0-byte, ATOMIC_CS/FA, WAIT,
// SEND_EN, RECV_EN), keeps RC semantics (in-order execution, acknowledgements,
// go-back-N retransmission, RNR retry) and strict errors (error CQE with the
// mlx5 syndrome, QP to ERROR, the rest flushed). WQE contents are read when a
// WQE executes, so patches made before its release are seen.
//
// The NIC is a pure step machine: poll_once() makes bounded progress and
// returns. Nothing runs unless an executor drives it:
//   SingleThreadExecutor   one thread polls every NIC of the process
//   ThreadPerNicExecutor   one thread per NIC (optional CPU pinning)
//   ManualExecutor         the caller steps NICs in a seeded random order
//                          (deterministic simulation; virtual time)
// All NIC work happens on executor threads: application threads of a host are
// never needed for an operation to proceed.
//
// Thread-safety: Fabric, Nic control calls and executors are thread-safe.
// A Nic may be attached to one executor at a time.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "hyperloop/clock.h"
#include "hyperloop/rnic.h"

namespace hyperloop::soft {

class Nic;
class Executor;

using hyperloop::Clock;
inline uint64_t steady_now_ns() { return monotonic_ns(); }

struct NicOptions {
  std::string name;                    // default: "soft<uid>"
  uint32_t max_qp = 4096;              // at most 2^24 (QP numbers are 24 bits)
  uint32_t max_cq = 4096;
  uint32_t max_mr = 65536;
  uint64_t ack_timeout_ns = 20'000'000;   // transport retry timer (20 ms)
  uint64_t rnr_delay_ns = 10'000;         // wait before retrying after RNR NAK
  uint32_t max_outstanding = 128;         // requests in flight per QP
  // The PSN every QP of this NIC sends first (24 bits), carried in its
  // address to the peer. IB lets each QP choose it; tests start near 2^24 to
  // cross the PSN wrap-around.
  uint32_t first_psn = 0;
};

// Counters for tests and benchmarks. Read with Nic::stats().
struct NicStats {
  uint64_t polls = 0;
  uint64_t wqes_executed = 0;
  uint64_t packets_sent = 0;
  uint64_t packets_received = 0;
  uint64_t packets_dropped = 0;       // to a dead port, unknown QP, bad state, bad key
  uint64_t packets_dropped_bad_key = 0;  // inbound, key not the QP's peer's (also counted above)
  uint64_t retransmits = 0;
  uint64_t rnr_naks = 0;
  uint64_t error_cqes = 0;
  uint64_t app_calls = 0;             // data-path calls made by application threads
};

// Limits of a fabric's TCP wire (Fabric::listen and links to other fabrics).
// Every resource an unauthenticated peer can make the fabric spend is bounded
// by one of these. Out-of-range values are clamped (see each field).
struct FabricOptions {
  // Inbound connections open at once; one more is accepted, logged and
  // closed at once (connections_refused).
  uint32_t max_inbound_connections = 256;
  // Per inbound connection: packets (and their payload bytes) handed to NIC
  // inboxes and not yet consumed by the NIC. Over either bound the fabric
  // stops reading that connection until the NICs catch up (TCP backpressure
  // instead of memory growth). Clamped to >= 1 and >= max_message_bytes.
  uint32_t max_inflight_packets_per_connection = 4096;
  uint64_t max_inflight_bytes_per_connection = 64ull << 20;
  // Per outbound link: bytes queued and not yet taken by the kernel. A packet
  // that does not fit is dropped and counted (send_queue_full); RC
  // retransmission recovers it. Clamped to >= max_message_bytes + a header.
  uint64_t max_send_queue_bytes = 64ull << 20;
  // An outbound link still connecting after this long is dead (its packets
  // are lost and the QPs using it fail after their retry timeouts).
  uint64_t connect_timeout_ns = 2'000'000'000;
  // An outbound link whose queue makes no progress for this long (the peer
  // stopped reading) is cut (links_cut).
  uint64_t send_stall_timeout_ns = 2'000'000'000;
  // The largest message (payload of one packet) a NIC of this fabric sends
  // or accepts from the wire; NICs report it as caps().max_msg_size. Frames
  // announcing more are rejected before anything is allocated. At most 2^31.
  uint32_t max_message_bytes = 64u << 20;
};

// Counters of a fabric's TCP wire (Fabric::wire_stats()), monotonic except
// connections_open and links_open.
struct WireStats {
  uint64_t connections_accepted = 0;   // inbound connections taken
  uint64_t connections_refused = 0;    // over max_inbound_connections
  uint64_t connections_open = 0;       // inbound connections open now
  uint64_t connections_closed = 0;     // inbound: EOF, error, bad frame, shutdown
  uint64_t frames_rejected = 0;        // malformed frames (the connection is closed)
  uint64_t packets_dropped_bad_key = 0;       // key is not the QP's peer's (forged)
  uint64_t packets_dropped_wrong_connection = 0;  // authentic key, but not the QP's bound connection
  uint64_t packets_dropped_queue_full = 0;    // an outbound send queue was full
  uint64_t packets_dropped_dead_link = 0;     // sent over a link that is connecting-failed or cut
  uint64_t links_opened = 0;           // outbound links connected
  uint64_t links_open = 0;             // outbound links connecting or open now
  uint64_t connect_failures = 0;       // outbound connects refused or timed out
  uint64_t links_cut = 0;              // outbound links cut: send stall, peer closed, error
  uint64_t backpressure_pauses = 0;    // times an inbound connection stopped being read
};

// The in-process wire: NICs of one Fabric reach each other by address blob.
class Fabric {
 public:
  Fabric();
  explicit Fabric(FabricOptions options);
  ~Fabric();
  Fabric(const Fabric&) = delete;
  Fabric& operator=(const Fabric&) = delete;

  // Creates a software NIC on this fabric. It does nothing until attached to
  // an executor. The Fabric must outlive its NICs.
  Result<std::unique_ptr<Nic>> create_nic(NicOptions options = {});

  // Fault: cuts (or restores) the link between two NICs, both directions.
  // Packets sent over a cut link are lost; RC retransmission then gives up
  // after retry_count timeouts and the QPs go to ERROR.
  void set_link(const Nic& a, const Nic& b, bool up);

  // Fault: a lossy or slow link between two NICs, both directions. Each
  // packet is dropped with probability `drop` (drawn from the fabric's seeded
  // generator, so a deterministic run drops the same packets) and otherwise
  // delivered `delay_ns` after it was sent (sender's clock). Delayed packets
  // keep their order; a NIC takes inbound packets in arrival order, so a
  // delayed packet also holds back those queued behind it. {0, 0} restores.
  struct LinkFaults {
    double drop = 0;
    uint64_t delay_ns = 0;
  };
  void set_link_faults(const Nic& a, const Nic& b, LinkFaults faults);
  // Seeds the generator behind packet drops.
  void seed(uint64_t seed);

  // The TCP wire: makes this fabric's NICs reachable from other fabrics (other
  // processes or hosts) at ipv4:port (port 0: any free port; returns the
  // port). QP addresses then carry the endpoint, and a QP of another fabric
  // connects to them as to a local one. A dead peer process looks like a cut
  // link: its QPs' peers fail after their retry timeouts. IPv4 only.
  // Errors: kInvalidArgument (not a concrete IPv4 address), kUnavailable
  // (port in use, no such local address), kAlreadyExists (already listening).
  //
  // All TCP I/O of a fabric runs on one event-loop thread of its own (started
  // by listen(), or by the first connect to another fabric's QP): NIC threads
  // only queue packets, and connect() never waits for the network.
  //
  // Threat model. Trusted: each host's kernel and root, and the replica
  // daemons. Untrusted: other local processes and tenants, who can open TCP
  // connections to any port and send any bytes. Every frame is validated
  // before anything is allocated for it (a bad one closes its connection and
  // is logged), and every QP has a random 64-bit key carried in its address:
  // packets a QP accepts must carry its connected peer's key and arrive on
  // the connection that delivered the peer's first authentic packet (until
  // that connection closes). Out of scope: an attacker who can read or
  // inject traffic on the network path: keys travel in clear, as RoCE's
  // QPNs, PSNs and rkeys do.
  Result<uint16_t> listen(const std::string& ipv4, uint16_t port = 0);

  const FabricOptions& options() const;
  // A snapshot of the TCP wire's counters. Thread-safe.
  WireStats wire_stats() const;

  // Opaque: defined and used only inside rnic/soft (declared here, not
  // private, because the engine's own free functions name it).
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The process-wide fabric used by rnic::open_device("soft").
Fabric& default_fabric();
// The process-wide executor (one thread) used by rnic::open_device("soft").
Executor& default_executor();

class Nic : public rnic::Device {
 public:
  ~Nic() override;

  const std::string& name() const;
  uint64_t uid() const;

  // Makes bounded progress: at most `budget` inbound packets and `budget`
  // WQEs. Returns the units of work done (0 = nothing to do). Called by
  // executors only.
  size_t poll_once(size_t budget = 64);
  // True when no work is pending or in flight anywhere on this NIC.
  bool idle() const;
  NicStats stats() const;

  // Fault: the NIC stops processing and answering; peers see timeouts.
  void crash();
  bool crashed() const;

  // Set by executors: where this NIC's time comes from.
  void set_clock(Clock clock);

  // rnic::Device
  const rnic::DeviceCaps& caps() const override;
  Result<std::unique_ptr<rnic::ProtectionDomain>> alloc_pd() override;
  Result<std::unique_ptr<rnic::CompletionQueue>> create_cq(const rnic::CqAttr& attr) override;
  // An eventfd-backed channel. Its events are written by whichever executor
  // runs this NIC (see rnic::CompletionChannel::wait about ManualExecutor).
  Result<std::unique_ptr<rnic::CompletionChannel>> create_completion_channel() override;

  // Opaque, as Fabric::Impl.
  struct Impl;

 private:
  friend class Fabric;
  friend class Executor;
  explicit Nic(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  Executor* executor_ = nullptr;
};

// Base of all executors. A NIC detaches itself when destroyed.
class Executor {
 public:
  virtual ~Executor() = default;
  virtual void add(Nic& nic) = 0;
  virtual void remove(Nic& nic) = 0;

 protected:
  static void set_executor(Nic& nic, Executor* e) { nic.executor_ = e; }
  static Executor* executor_of(Nic& nic) { return nic.executor_; }
};

// One thread polls all attached NICs in turn (best on 2 cores).
class SingleThreadExecutor final : public Executor {
 public:
  explicit SingleThreadExecutor(int cpu = -1);  // cpu >= 0: pin the thread
  ~SingleThreadExecutor() override;
  void add(Nic& nic) override;
  void remove(Nic& nic) override;

 private:
  void run();
  int cpu_;
  std::mutex mu_;
  std::vector<Nic*> nics_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// One thread per NIC; cpus[i % cpus.size()] pins the i-th NIC's thread.
class ThreadPerNicExecutor final : public Executor {
 public:
  explicit ThreadPerNicExecutor(std::vector<int> cpus = {});
  ~ThreadPerNicExecutor() override;
  void add(Nic& nic) override;
  void remove(Nic& nic) override;

 private:
  struct Worker;
  std::vector<int> cpus_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Worker>> workers_;
  size_t next_cpu_ = 0;
};

// Deterministic stepping: each step polls one NIC chosen by a seeded PRNG
// with budget 1, after advancing virtual time by `ns_per_step`. With the same
// seed, NICs and inputs, every run takes the same steps. step(), run_until()
// and advance_time() are called by one thread at a time (callers that step
// from several threads serialize them); now_ns() may be read from any thread
// meanwhile (a clock that waiting threads look at).
class ManualExecutor final : public Executor {
 public:
  explicit ManualExecutor(uint64_t seed, uint64_t ns_per_step = 100);
  ~ManualExecutor() override;
  void add(Nic& nic) override;
  void remove(Nic& nic) override;

  uint64_t seed() const { return seed_; }
  uint64_t now_ns() const { return now_.load(std::memory_order_relaxed); }
  uint64_t steps() const { return steps_; }
  // One step. Returns the work done by the polled NIC.
  size_t step();
  // Steps until pred() is true or max_steps ran out. Returns pred()'s last value.
  bool run_until(const std::function<bool()>& pred, uint64_t max_steps = 10'000'000);
  // Steps until every NIC is idle (or max_steps). Returns true if idle.
  bool run_until_idle(uint64_t max_steps = 10'000'000);
  // Advances virtual time without stepping (e.g. to let a timer fire).
  void advance_time(uint64_t ns) { now_.store(now_ns() + ns, std::memory_order_relaxed); }
  // Runs `action` just before step number `step` (0-based; actions for a
  // step already taken run before the next step). Fault plans use this.
  void at_step(uint64_t step, std::function<void()> action);

 private:
  void run_due_actions();
  std::multimap<uint64_t, std::function<void()>> actions_;
  uint64_t seed_;
  uint64_t ns_per_step_;
  std::mt19937_64 rng_;
  std::atomic<uint64_t> now_{1};
  uint64_t steps_ = 0;
  std::vector<Nic*> nics_;
};

// A seeded fault plan over a ManualExecutor: faults at chosen steps, or a
// random plan drawn from a seed, so a failing run is replayed by its seed
// alone. Every fault is logged (describe()) as it is planned. The plan, the
// fabric and the NICs must outlive the executor's pending actions.
class FaultPlan {
 public:
  FaultPlan(Fabric& fabric, ManualExecutor& executor) : fabric_(fabric), ex_(executor) {}

  void crash(uint64_t step, Nic& nic);
  void cut(uint64_t step, Nic& a, Nic& b);
  void heal(uint64_t step, Nic& a, Nic& b);
  void link_faults(uint64_t step, Nic& a, Nic& b, Fabric::LinkFaults faults);
  // Any action: e.g. power-failing a host's persistent regions.
  void custom(uint64_t step, std::string what, std::function<void()> action);

  // Draws `count` faults over steps [first, last) from `seed`: lossy or slow
  // links, cuts (healed a while later) and NIC crashes among `nics`, at most
  // `max_crashes` crashes. power_fail (optional) is called with a NIC index to
  // power-fail that host; it is drawn like a crash.
  void random(uint64_t seed, uint64_t first, uint64_t last, size_t count, std::vector<Nic*> nics,
              size_t max_crashes = 1, std::function<void(size_t)> power_fail = {});

  const std::string& describe() const { return log_; }

 private:
  void note(uint64_t step, const std::string& what);
  Fabric& fabric_;
  ManualExecutor& ex_;
  std::string log_;
};

}  // namespace hyperloop::soft
