// hyperloop/txn.h: chain-replicated, durable ACID transactions over a group.
//
// A Store is one tenant's replicated byte store: a data area of
// StoreOptions::data_size bytes, identical on every replica of a chain, read
// and written in transactions. It is built from the group primitives
// (hyperloop/primitives.h) alone; in offload mode no replica CPU runs on the
// commit path.
//
// ---- Layout of the tenant's region (identical on every replica) ------------
//   [0, 4 KiB)             superblock: the format block (magic, sizes, the
//                          store's id, its replica count, checksum), two
//                          log-head slots {lsn, pos, epoch, check}, written
//                          alternately so a torn head write is never used,
//                          and the epoch table: for each of the last 64
//                          ended epochs {epoch, end LSN, check}, written by
//                          the recovery that ended it (Store::outcome)
//   [4 KiB, +log_size)     the redo log, a ring of 64-byte-aligned records
//   [.., +8 * stripes)     the lock table: one 8-byte word per stripe of
//                          stripe_bytes bytes of the data area
//   [.., +data_size)       the data area (offsets in this API are into it)
// Store::region_bytes(options) is the size to register_tenant() with.
//
// ---- A redo record --------------------------------------------------------
//   header {magic, lsn, txn, bytes|ranges, checksum, epoch}, a range table
//   {offset, len} per range, the new bytes of every range, and last a commit
//   marker (lsn ^ kCommitMagic). The checksum covers everything but itself;
//   a record counts only if its checksum holds, its marker is present and it
//   carries the LSN the log expects at that position and the epoch of the
//   head the scan started from. (Every recovery starts a new epoch, one
//   above any head's; so a record left past the end of one recovery's
//   replay, never acknowledged, cannot come back in a later one behind
//   records written since, even where the ring lines them up.)
//
// ---- A lock word ------------------------------------------------------------
//   bit 63 locked, bits 48..62 the owner's tag, bits 0..47 the stripe's version
//   (bumped by every commit that writes the stripe).
//
// ---- Commit (Transaction::commit) -------------------------------------------
//   1. On the client: the write set's stripes are locked in the client's lock
//      table (all or none; a stripe held by another transaction of this store
//      is waited for with backoff, up to lock_timeout_ns, then kAborted) and
//      the read set is validated (every stripe read still has the version it
//      had: else kAborted). Conflicts are settled here, before anything is
//      sent.
//   2. Pipelined, in this order on every replica: gCAS lock of every stripe of
//      the write set (compare: the unlocked word the client knows), gWRITE of
//      the redo record into the log, gFLUSH of the record. The commit point is
//      the gFLUSH's acknowledgement: the record is durable on every replica
//      and every gCAS returned the expected old value on every replica.
//      commit() returns OK there.
//      Group commit: the gWRITE and gFLUSH are shared. Concurrent commits'
//      records, adjacent in the ring, go out in one log write (one gWRITE +
//      one gFLUSH) when StoreOptions::log_writes_in_flight are already in
//      flight; each record is still whole on its own (recovery is unchanged),
//      and each commit's locks precede the log write in the chain.
//   3. After the commit point, pipelined: gMEMCPY of each range from the log
//      to the data area, gCAS unlock of every stripe (version + 1). Later
//      operations of the store reap these. Once a quarter of the log is
//      applied everywhere its space is released (truncation): a gFLUSH makes
//      the applied data durable and, once it is acknowledged (not pipelined
//      behind it: a gWRITE's bytes may land before earlier slots run), the
//      new head is written to the superblock with gWRITE + gFLUSH; only then
//      is the space reused.
//      (The data needs no flush per commit: until the head moves past its
//      record, recovery replays it from the log.)
//   The order differs from "log, then lock" on purpose: with the locks decided
//   in the client's table first, the record can carry its own commit marker
//   and a commit costs one round trip through the chain instead of two.
//   A gCAS that finds an unexpected word means the replicas do not hold what
//   the client's table says (they were changed behind the store's back): the
//   commit fails with kDataLoss, its outcome in doubt, and the store needs
//   recover().
//
// ---- Isolation: serializable ------------------------------------------------
//   Optimistic concurrency with strict write locks: reads record each stripe's
//   version; commit locks the write set, validates the read set and installs
//   the writes atomically. Committed transactions are equivalent to running
//   them one at a time in commit (LSN) order. A reader never sees data of an
//   uncommitted or partly applied transaction: a stripe is read from a replica
//   with RDMA READs of its lock word, its bytes and its lock word again, and
//   used only if the word was unlocked, unchanged and at the version the
//   client's table holds (else it is read again).
//
// ---- Recovery (Store::open and Store::recover) ------------------------------
//   The previous group goes first (Store::recover). Every replica's
//   superblock, lock table and log is read. Identity: every formatted replica
//   must hold the same store (the id of the client's last recovery, or on a
//   first open the one id the replicas agree on) with the same sizes, else
//   kDataLoss naming the replica (RecoveryOptions::reseed_mask overrides it:
//   that replica is then overwritten like a blank one); and the replica
//   count must be the one in the format block (RecoveryOptions::allow_resize
//   overrides it). A blank store is formatted with a fresh id. The replica with
//   the newest durable log head is the reference; any other replica whose data
//   area or lock table differs from it (a lagging or replaced replica) is
//   overwritten with the reference's bytes. Then the log is scanned from the
//   head: the next record is taken from whichever replica holds it intact, and
//   the scan stops at the first LSN no replica holds; every record found is
//   replayed (gWRITE of its ranges) on every replica and flushed. Records past
//   that point (torn, never committed) are discarded. Every lock is cleared;
//   a stripe that was locked, replayed or different between replicas gets a
//   version above every replica's. The head moves past the replayed records.
//   So: a commit that returned OK is never lost (its record was durable on all
//   replicas), and a transaction is all-or-nothing on every replica.
//
// ---- Membership, reconfiguration and fencing (StoreOptions::membership) -------
//   Without a ConfigStore the chain is the list of replicas given to
//   open/connect, and a failure stops the store until recover(). With one,
//   the tenant's record there (hyperloop/coord.h) is the truth: its epoch,
//   its chain, the client that owns it.
//   open/connect: the record is created from the given replicas (epoch 1) or,
//     if it exists, taken over: compare-and-set to {epoch + 1, owner = this
//     client}. The chain is then the record's serving replicas (replicas
//     given to open() are only where to find them, by MembershipOptions::
//     names; connect() names replicas by endpoint). Every group the store
//     builds carries the record's epoch (prim::GroupOptions::epoch), so each
//     replica fences the previous owner's members before this client reads
//     or writes anything; recovery then resolves the previous owner's
//     in-doubt transactions, all or nothing (outcome() tells which).
//   A failure (a replica or link dies, a commit finds the chain broken):
//     kFailFast: as without membership, kUnavailable until reconfigure().
//     kReconfigure: the call that met the failure returns its error (a
//     commit's outcome in doubt, as always) and, before it returns, the
//     store runs reconfigure(): every replica of the chain is asked, within
//     probe_timeout_ns, whether it is alive (an RDMA READ of the heartbeat
//     word its agent bumps); those that do not answer are marked offline in
//     the record under a new epoch; the chain is rebuilt over the rest and
//     recovered. Calls made meanwhile wait for it. The next call runs on the
//     new chain. Fewer live replicas than min_replicas: the record is left
//     alone and the store refuses work (kUnavailable naming the count)
//     until reconfigure() finds enough: durability is never silently
//     weaker than min_replicas copies.
//   add_replica: a replacement joins at the tail. It is marked syncing in the
//     record (new epoch) and gets a copy of the reference replica's region
//     while the chain keeps committing (transfer); then the store pauses
//     (calls wait), rebuilds the chain with it at the tail and runs recovery,
//     which brings over whatever changed during the transfer (catch-up); it
//     is then marked serving (another epoch).
//   Liveness: an opened store claims the tenant in the record store
//     (ConfigStore::claim_owner: on ZooKeeper an ephemeral znode bound to
//     its session); a standby client waits until live_owner() is empty (the
//     owner's session ended: it died or was cut off) and then opens, taking
//     over. A store whose session was lost (ConfigStore::sessions_lost grew
//     since its claim) fences itself: the monitor checks every
//     heartbeat_interval_ns, and reconfigure() before anything else.
//   Fenced: a store that finds the record owned by another client, or a
//     replica refusing its epoch, or its own session lost, has been (or may
//     be) taken over. It fences itself:
//     every call returns kPermissionDenied from then on, and nothing it
//     issued after the takeover is applied on any replica (the replicas
//     destroyed its queue pairs).
//
// ---- Errors a caller can see ------------------------------------------------
//   kInvalidArgument   bad options, too many ranges in a write set, a read
//                      or write of length 0, a finished transaction
//                      (a commit with no writes is a read-only commit: it
//                      validates the read set, OK or kAborted)
//   kOutOfRange        offset/length outside the data area
//   kAborted           a serialization conflict (read set changed) or a lock
//                      not free within lock_timeout_ns: nothing was sent,
//                      nothing changed; the caller may run the transaction
//                      again
//   kResourceExhausted the record does not fit the log or the staging buffer
//   kUnavailable       the chain broke (a replica or link died, a timeout):
//                      for commit() the outcome is IN DOUBT (the transaction
//                      may or may not be durable); the store refuses new work
//                      until recover() succeeds. Also what a read or commit
//                      gets, within lock_timeout_ns, when it waits for this
//                      store's own operations and the chain completes none of
//                      them in that time (a dead replica or link: not a
//                      conflict, so not kAborted; the store then needs recover())
//   kDataLoss          replicas hold lock words the client did not put there
//                      (outcome in doubt, recover() needed), or recovery found
//                      a superblock that does not match the options or a
//                      replica of another store (the message names it)
//   kFailedPrecondition recovery on another replica count than the store's
//                      (RecoveryOptions::allow_resize)
//   kDeadlineExceeded  as kUnavailable (an operation timed out)
//   kPermissionDenied  the tenant was taken over by another client (membership):
//                      final for this store
//   plus the errors of Group::create / Group::connect from open/recover.
//
// ---- Thread-safety ---------------------------------------------------------
//   A Store is thread-safe: many threads may run transactions at once (each
//   its own Transaction). A Transaction is used by one thread at a time.
//   recover() waits until no other call is inside the store.
//
// ---- Lifetime ----------------------------------------------------------------
//   The client device and every ReplicaHost a Store was opened or recovered
//   with outlive it (it holds each host: prim::HostHold; destroying a held
//   host aborts with a message). Every unfinished Transaction is finished
//   (committed, aborted or dropped) before its Store is destroyed; a Store
//   destroyed with unfinished ones aborts with a message instead of leaving
//   them a dangling pointer. A Store holds no pointer into the caller's
//   buffers after a call returns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "hyperloop/clock.h"
#include "hyperloop/coord.h"
#include "hyperloop/primitives.h"
#include "hyperloop/status.h"

namespace hyperloop::txn {

// A store's identity: 128 random bits drawn (getrandom) when it is formatted,
// kept in the format block of every replica's superblock. Recovery takes a
// replica into the chain only if it holds this store (or nothing at all).
struct StoreId {
  uint64_t hi = 0, lo = 0;
  bool is_zero() const { return hi == 0 && lo == 0; }
  bool operator==(const StoreId&) const = default;
  std::string to_string() const;  // 32 hex digits
};

// What a recovery may do beyond the safe default. Each is an explicit
// decision of the caller; without it recovery refuses and says why.
struct RecoveryOptions {
  // Chain positions (bit i: replica i) whose region is overwritten with the
  // store's state whatever it holds now: a region of another store (a
  // different StoreId) or of other sizes. Without the bit such a region is
  // kDataLoss naming the replica, and nothing is written anywhere.
  uint32_t reseed_mask = 0;
  // Run on a different number of replicas than the store was formatted or
  // last recovered with. Without it that is kFailedPrecondition.
  bool allow_resize = false;
};

// What a store does when its chain breaks (see "Membership" above).
enum class FailurePolicy : uint8_t {
  kFailFast,     // refuse work (kUnavailable) until recover() or reconfigure()
  kReconfigure,  // rebuild the chain without the replicas that do not answer
};

struct MembershipOptions {
  // Where the tenant's record lives; null: no membership (epoch 0, the
  // chain is the replicas given, failures stop the store). Not owned: it
  // must outlive the store.
  coord::ConfigStore* config = nullptr;
  // This client's name in the record (coord::check_config's rules).
  std::string owner;
  // Store::open only: the record's name of each host given to open, in the
  // same order (Store::connect names each replica by its endpoint).
  std::vector<std::string> names;
  FailurePolicy on_failure = FailurePolicy::kFailFast;
  // Serving replicas below which the store refuses to commit (>= 1).
  uint32_t min_replicas = 1;
  // Bound on asking one replica whether it is alive.
  uint64_t probe_timeout_ns = 20'000'000;
  // The fast failure signal: a thread of the store reads every replica's
  // heartbeat counter (prim::Group::heartbeat: RDMA READ, no replica CPU)
  // every heartbeat_interval_ns. A READ not answered within
  // heartbeat_timeout_ns, or a counter that has not moved for
  // heartbeat_timeout_ns (the host's agent stopped), breaks the chain, and
  // the thread runs the failure policy (kReconfigure: reconfigure() at once,
  // with no caller waiting on the dead replica). 0: no thread; failures are
  // then found by the operations themselves (op_timeout_ns) or probes.
  // Needs real time: leave 0 with a manual clock (GroupOptions::clock).
  uint64_t heartbeat_interval_ns = 10'000'000;
  uint64_t heartbeat_timeout_ns = 50'000'000;
};

// A transaction's id: the store epoch it committed in (the recovery epoch
// carried by its record) and its log sequence number. Given by
// Transaction::commit (Transaction::id) whenever the record was issued,
// whatever commit returned, so that an in-doubt commit can be settled later.
struct TxnId {
  uint64_t epoch = 0, lsn = 0;
  bool is_zero() const { return lsn == 0; }
  bool operator==(const TxnId&) const = default;
};

struct StoreOptions {
  uint32_t tenant = 0;
  size_t data_size = 256 << 10;   // bytes of the data area
  size_t log_size = 256 << 10;    // bytes of the redo-log ring (multiple of 64)
  uint32_t stripe_bytes = 256;    // bytes one lock word covers (power of two, >= 8)
  uint64_t lock_timeout_ns = 20'000'000;  // waiting for a stripe held by another transaction
  // Read stripes from this replica (chain position); -1: the tail, the
  // replica that acknowledges last. A position outside the chain is
  // kInvalidArgument at open/connect/recover (never silently the tail).
  int read_replica = -1;
  // Group commit: at most this many log writes in flight. A log write is one
  // gWRITE + gFLUSH of the records of one or more commits, adjacent in the
  // ring; a commit that finds this many in flight joins the next one, which
  // the first committer to see room issues. A lone committer finds room and
  // goes at once. 0: no limit (each commit writes its own record at once).
  // Off by default: on the software RNIC on 2 cores it cut the group
  // operations per commit by a quarter but cost commits/s (bench/txn_bench's
  // BM_GroupCommit, in the README's figures); where the chain's operations are
  // the bottleneck, 1 or 2.
  uint32_t log_writes_in_flight = 0;
  // For the recovery that Store::open / Store::connect run.
  RecoveryOptions recovery;
  // The tenant's record in a coordination service: reconfiguration,
  // takeover and fencing (see "Membership" above).
  MembershipOptions membership;
  // The group underneath (mode, slots, staging, op_timeout, clock, progress).
  // group.tenant and group.region_size are set by the store.
  prim::GroupOptions group;
};

class Store;

// One transaction. Obtained from Store::begin(); movable, not copyable; used
// by one thread at a time. Dropping an unfinished transaction aborts it.
class Transaction {
 public:
  Transaction() = default;
  Transaction(Transaction&&) noexcept;
  Transaction& operator=(Transaction&&) noexcept;
  ~Transaction();

  // Reads [offset, offset + dst.size()) of the data area as of this
  // transaction: its own writes, over committed data. Errors: kOutOfRange,
  // kInvalidArgument, kAborted (a stripe stayed locked past lock_timeout_ns,
  // or changed since this transaction read it: the transaction is then
  // finished, as after abort()), kUnavailable.
  Status read(uint64_t offset, std::span<std::byte> dst);
  // Buffers a write of bytes at offset (nothing is sent before commit).
  // Errors: kOutOfRange, kInvalidArgument.
  Status write(uint64_t offset, std::span<const std::byte> bytes);
  // Commits: OK only once durable on every replica (see the header comment).
  // The transaction is finished afterwards, whatever the result.
  Status commit();
  // Drops the transaction's buffered writes; nothing was sent.
  void abort();

  bool active() const { return store_ != nullptr; }
  // After commit(): the id of its record if one was issued (zero for a
  // read-only commit or one refused before anything was sent). Pass it to
  // Store::outcome to learn whether an in-doubt commit took effect.
  TxnId id() const { return id_; }
  // Distinct stripes read / bytes buffered for writing so far.
  size_t read_set_size() const { return reads_.size(); }
  size_t write_bytes() const;

 private:
  friend class Store;
  struct Write {
    uint64_t offset;
    std::vector<std::byte> bytes;
  };
  struct Read {
    uint64_t stripe;
    uint64_t version;
  };
  Store* store_ = nullptr;
  TxnId id_;
  std::vector<Write> writes_;
  std::vector<Read> reads_;
};

// Counters for benchmarks and tests.
struct StoreStats {
  uint64_t commits = 0;           // returned OK
  uint64_t aborts = 0;            // kAborted from commit() or read()
  uint64_t lock_waits = 0;        // commits that waited for a stripe
  uint64_t read_retries = 0;      // stripe reads taken again (locked/changed)
  uint64_t truncations = 0;       // log heads written
  uint64_t log_writes = 0;        // log writes issued (group commit: each carries >= 1 record)
  uint64_t log_write_records = 0;  // records they carried
  uint64_t log_waits = 0;         // commits whose record waited for a log write in flight
  uint64_t recoveries = 0;
  uint64_t replayed_records = 0;  // by recoveries
  uint64_t resynced_bytes = 0;    // replica bytes overwritten by recoveries
  uint64_t reconfigurations = 0;  // reconfigure() runs that rebuilt the chain
  uint64_t replicas_removed = 0;  // marked offline by them
  uint64_t replicas_added = 0;    // joins (add_replica) completed
  uint64_t transferred_bytes = 0;  // copied to joining replicas while the chain committed
  uint64_t last_reconfigure_ns = 0;  // the last reconfigure(): from its start to serving again
  uint64_t last_join_pause_ns = 0;   // the last join's catch-up, while calls waited
  uint64_t heartbeat_failures = 0;   // chains the heartbeat monitor broke
};

class Store {
 public:
  // Builds the group over replica hosts in this process (Group::create) and
  // recovers the store: formats a blank region, or replays and cleans up
  // what a previous client left. Every host must have options.tenant
  // registered with region_bytes(options) bytes.
  static Result<std::unique_ptr<Store>> open(rnic::Device& client, std::span<prim::ReplicaHost* const> replicas,
                                             const StoreOptions& options);
  // The same over hyperloop-replica daemons ("ipv4:port" control endpoints).
  // With membership, `replicas` may be empty: the tenant's record names the
  // chain (the list is used only to create a record that does not exist).
  static Result<std::unique_ptr<Store>> connect(rnic::Device& client, std::span<const std::string> replicas,
                                                const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // The region size a tenant needs for these options (0 if they are invalid).
  static size_t region_bytes(const StoreOptions& options);
  // Where the data area starts in the tenant's region (0 if the options are
  // invalid): for a reader on a replica host that reads its own copy of the
  // region (ReplicaHost::peek, a mapping of the daemon's region file).
  static size_t data_offset(const StoreOptions& options);

  Transaction begin();
  // A consistent read of one range outside any transaction (a read-only
  // transaction, run again until it validates or lock_timeout_ns passes).
  Status read(uint64_t offset, std::span<std::byte> dst);

  // Rebuilds the chain (a new group: after a replica or link failure, or with
  // `replicas` replaced by restarted hosts, same order) and runs recovery as
  // open() does. Waits for calls in other threads to leave the store.
  // Before recovery reads or writes anything, the previous group is gone:
  // its members are dropped on every replica it could reach (QPs destroyed,
  // slots disarmed) and a member that could not be dropped blocks a new
  // member for the tenant on its host, so no operation of an old group (or
  // of a failed recovery) takes effect after a recovery succeeded. A count
  // of hosts other than the store's replica count is kFailedPrecondition
  // unless how.allow_resize; a region of another store is kDataLoss unless
  // its position is in how.reseed_mask.
  Status recover(std::span<prim::ReplicaHost* const> replicas = {}, const RecoveryOptions& how = {});

  // Takes completions of applied transactions (releasing their log space).
  // Every call into the store does this; call it when otherwise idle.
  void poll();
  // Waits until every committed transaction is applied on every replica.
  Status drain();

  // Rebuilds the chain from the tenant's record without the replicas that do
  // not answer within probe_timeout_ns (marked offline under a new epoch),
  // and recovers. What kReconfigure runs by itself. Errors: kFailedPrecondition
  // (no membership), kPermissionDenied (taken over: the store is fenced),
  // kUnavailable (fewer than min_replicas answer; the record is unchanged),
  // the record store's errors, recovery's errors.
  Status reconfigure();
  // A replacement replica joins at the tail (see "Membership" above): `name`
  // as the record will call it; `host` the in-process host for a store made
  // by open(), null for connect() (name is then the daemon's endpoint). The
  // host must have the tenant registered with region_bytes(). Its region is
  // overwritten. Errors: kFailedPrecondition (no membership), kAlreadyExists
  // (already serving), kInvalidArgument, kResourceExhausted (kMaxReplicas),
  // kPermissionDenied (fenced), and those of reconfigure().
  Status add_replica(const std::string& name, prim::ReplicaHost* host = nullptr);

  // Whether the transaction `id` committed: true if its record is durable,
  // false if it was discarded. Known for every transaction of an epoch that
  // a recovery has ended (any client's: the store keeps the last 64 ended
  // epochs' end LSNs in its superblock), which covers every in-doubt commit
  // of a previous owner once this store has opened; and for this store's
  // own commits of the running epoch that have been applied (true).
  // kNotFound otherwise (an in-doubt commit of the running epoch: ask after
  // the next recovery or reconfigure()); kInvalidArgument for a zero id.
  Result<bool> outcome(const TxnId& id) const;

  // The membership as this store last wrote or read it (epoch 0 and an
  // empty chain without membership): its epoch, owner, chain and states.
  coord::TenantConfig membership() const;
  uint64_t epoch() const;

  bool healthy() const;
  // The store's identity (zero until a recovery succeeded).
  StoreId id() const;
  size_t data_size() const;
  uint32_t replicas() const;
  StoreStats stats() const;
  // The group underneath (for checks: Group::read of replicas; do not issue
  // operations on it while the store is in use). REQUIRES: a recovery has
  // succeeded since the last one that failed (a failed recover() leaves no
  // group; every other call then returns kUnavailable).
  prim::Group& group();

  struct Impl;

 private:
  friend class Transaction;
  explicit Store(std::unique_ptr<Impl> impl);
  static Result<std::unique_ptr<Store>> start(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hyperloop::txn
