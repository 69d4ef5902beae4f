// hyperloop/coord.h: each tenant's configuration record (its epoch, its
// chain, the client that owns it, each replica's state), kept in a
// coordination service and changed only by versioned compare-and-set.
//
// The record is off the data path: it is read when a client connects or
// reconfigures and written once per reconfiguration, never per operation
// (a ZooKeeper call costs 0.2-9 ms here, a chain operation microseconds).
// Safety against two writers (two clients racing to take a tenant over, a
// stale one coming back) comes from the store's linearizable
// compare-and-set, never from timeouts: of two writers that read the same
// version, exactly one succeeds; the other gets kAborted and must read again.
//
// Two stores behind one interface:
//   in_memory_config_store()  linearizable, in this process: unit tests and the
//                             deterministic simulation
//   zookeeper_config_store()  a ZooKeeper ensemble (Debian's zookeeper and
//                             libzookeeper-mt); one znode per tenant,
//                             <root>/tenants/<id>, its data the record's text
//                             (encode_config), its stat.version the version here
//
// Beside the record, each tenant has named progress markers (monotonic
// counters, e.g. how far each replica has made a log durable): on ZooKeeper
// <root>/tenants/<id>.progress/<name>, each marker's data its decimal value.
//
// Thread-safety: every ConfigStore is safe to call from several threads.
// Errors are values; nothing here throws.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hyperloop/status.h"

namespace hyperloop::coord {

// A replica's role in its tenant's chain (3FS's public target states, cut to
// what a chain needs).
enum class ReplicaState : uint8_t {
  kServing = 0,  // a full member: applies, forwards, counts for durability
  kSyncing = 1,  // joining at the tail: receives writes and a copy of the state, not yet counted
  kOffline = 2,  // out of the chain (dead or fenced); kept in the record for the operator
};
std::string_view replica_state_name(ReplicaState s);

struct ReplicaEntry {
  std::string endpoint;  // the daemon's control endpoint, host:port
  ReplicaState state = ReplicaState::kServing;
  bool operator==(const ReplicaEntry&) const = default;
};

struct TenantConfig {
  uint64_t epoch = 0;               // > 0; strictly increasing with every change
  std::string owner;                // the client that owns the tenant; empty: none
  std::vector<ReplicaEntry> chain;  // head first
  bool operator==(const TenantConfig&) const = default;
};

// Limits on a record: what encode refuses and decode never accepts.
inline constexpr size_t kMaxChainEntries = 16;
inline constexpr size_t kMaxNameBytes = 255;  // an endpoint or an owner
inline constexpr size_t kMaxRecordBytes = 8192;

// Checks a record: epoch > 0, at most kMaxChainEntries replicas, names of 1 to
// kMaxNameBytes printable non-space ASCII bytes (an owner may be empty), no
// endpoint twice. kInvalidArgument naming what is wrong.
Status check_config(const TenantConfig& c);

// Checks a progress marker's name: 1 to kMaxNameBytes printable non-space
// ASCII bytes (the record's name rule), no '/', and not "." or ".." (on
// ZooKeeper the name is a znode's). kInvalidArgument otherwise.
Status check_progress_name(std::string_view name);

// The record's text, one field per line, readable with zkCli's `get`:
//   hyperloop-tenant-config 1
//   epoch 7
//   owner client-a            ("owner -" when there is none)
//   replica 10.0.0.1:7000 serving
//   replica 10.0.0.2:7000 syncing
// decode_config accepts exactly what encode_config writes (the same order,
// one space, '\n' line ends, nothing else): every byte from the store is
// validated before it is trusted. Errors: kInvalidArgument.
Result<std::string> encode_config(const TenantConfig& c);
Result<TenantConfig> decode_config(std::string_view text);

// A record and the store's version of it (the compare-and-set token).
struct Versioned {
  TenantConfig config;
  int64_t version = -1;
};

class ConfigStore {
 public:
  virtual ~ConfigStore() = default;
  // The tenant's record. kNotFound if it has none; kUnavailable if the store
  // cannot be reached; kDataLoss if what it holds is not a valid record.
  virtual Result<Versioned> read(uint32_t tenant) = 0;
  // Creates the tenant's first record (check_config must pass). Returns its
  // version. kAlreadyExists if it has one.
  virtual Result<int64_t> create(uint32_t tenant, const TenantConfig& first) = 0;
  // Replaces the record `seen` (as read) with `next` if the store still holds
  // seen.version: the one linearizable step of a reconfiguration. `next`
  // must pass check_config and have next.epoch > seen.config.epoch.
  // Returns the new version. kAborted if the record changed since `seen`
  // (another writer won: read again); kNotFound if it is gone.
  virtual Result<int64_t> compare_and_set(uint32_t tenant, const Versioned& seen, const TenantConfig& next) = 0;
  // What the store is, for logs ("in-memory", "zookeeper 127.0.0.1:2181/hyperloop").
  virtual std::string describe() const = 0;

  // ---- the owner's liveness (what a standby client waits on) ----
  // Records `owner` as the tenant's live owner, bound to this client's
  // session: on ZooKeeper an ephemeral znode <root>/tenants/<id>.owner
  // holding the name, which the server deletes when the session ends (the
  // process died, or was cut off for the session timeout). A claim replaces
  // whatever claim is there. In memory (no sessions) it lasts until replaced.
  virtual Status claim_owner(uint32_t tenant, const std::string& owner) = 0;
  // The live owner's name, or "" when there is none (never claimed, or its
  // session ended: a standby may take the tenant over).
  virtual Result<std::string> live_owner(uint32_t tenant) = 0;
  // Sessions this client has lost so far (always 0 in memory). Counted once
  // the server expired one, or as soon as this client has been cut off from
  // every server for the negotiated session timeout (by then the server has
  // expired it, or will as it sees the time pass). A claim made while this
  // returned k is gone once it returns more: the owner must fence itself.
  virtual uint64_t sessions_lost() const { return 0; }

  // ---- progress markers (off the data path) ----
  // A tenant's named monotonic counters: e.g. each replica host's applier of
  // a replicated log publishes how far it has made the log durable in its own
  // store, and the log's writer reuses space only below the minimum.
  // publish_progress sets `name` to `value` unless it already holds a higher
  // value (a marker never goes back: a late or duplicated publish is ignored,
  // OK). Names follow check_progress_name; kInvalidArgument otherwise. On
  // ZooKeeper the check and the write are one versioned step, so the rule
  // holds under concurrent publishers (from any session); kUnavailable after
  // a connection loss leaves the publish's outcome unknown (publishing again
  // is harmless); kAborted if other publishers kept advancing the marker
  // through every retry.
  // (The defaults, kNotSupported, are for wrappers that keep no markers;
  // both stores here override all three.)
  virtual Status publish_progress(uint32_t tenant, const std::string& name, uint64_t value) {
    (void)tenant, (void)name, (void)value;
    return not_supported(describe() + " keeps no progress markers");
  }
  // Every marker of the tenant (empty if none), sorted by name. kDataLoss
  // naming the marker if the store holds one that is not a decimal uint64.
  virtual Result<std::vector<std::pair<std::string, uint64_t>>> progress(uint32_t tenant) {
    (void)tenant;
    return not_supported(describe() + " keeps no progress markers");
  }
  // Removes one marker (a replica that left for good). OK if absent.
  virtual Status remove_progress(uint32_t tenant, const std::string& name) {
    (void)tenant, (void)name;
    return not_supported(describe() + " keeps no progress markers");
  }
};

std::unique_ptr<ConfigStore> in_memory_config_store();

struct ZooKeeperOptions {
  std::string hosts;                         // "host:port[,host:port...]"
  std::string root = "/hyperloop";           // created if missing (persistent znodes)
  uint32_t session_timeout_ms = 4000;        // asked for; the server clamps it to [2, 20] x tickTime
  uint32_t connect_timeout_ms = 5000;        // bound on reaching ZOO_CONNECTED_STATE
};
// Connects to ZooKeeper (and creates <root>/tenants if missing).
// kUnavailable if no server answers within connect_timeout_ms;
// kNotSupported if this build has no ZooKeeper client (libzookeeper-mt-dev).
Result<std::unique_ptr<ConfigStore>> zookeeper_config_store(const ZooKeeperOptions& o);

}  // namespace hyperloop::coord
