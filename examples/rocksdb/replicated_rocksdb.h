// examples/rocksdb/replicated_rocksdb.h: RocksDB whose write-ahead log is
// made durable on every replica of a hyperloop chain.
//
//   primary                              replica hosts (each)
//   RocksDB ── WAL appends ──▶ WalFileSystem          region (the ring)
//                Sync ─▶ ReplicatedWal::append ══NICs══▶ ... ──▶ Applier ─▶ its own RocksDB
//                                                                (WAL off)  publishes "<name>.pos/.seq"
//
// What is replicated: RocksDB's own WAL stream, as RocksDB writes it (so any
// RocksDB program, stock db_bench included, runs on it unchanged). A WAL
// Sync returns only when the bytes appended since the last one are durable
// on every replica (ReplicatedWal::append, a txn commit). SST files, the
// MANIFEST, OPTIONS and the rest stay on the primary's local file system:
// they are rebuilt on each replica by its applier from the log, and a
// promoted replica serves from its own. The primary still writes its WAL
// file locally, never synced: a debugging copy; the ring is the log.
//
// Required RocksDB options (check_options says which is wrong):
// recycle_log_file_num = 0, wal_compression = kNoCompression,
// manual_wal_flush = false, allow_2pc = false, two_write_queues = false,
// unordered_write = false; and max_total_wal_size and write_buffer_size
// well below the ring (WAL files are released from the ring as RocksDB
// deletes them).
//
// Thread-safety: the FileSystem is used by RocksDB from any thread. An
// Applier is driven by one thread at a time (poll, or ApplierThread).
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/file_system.h>
#include <rocksdb/options.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "hyperloop/coord.h"
#include "hyperloop/primitives.h"
#include "hyperloop/soft_rnic.h"
#include "hyperloop/txn.h"
#include "replicated_wal.h"
#include "wal_ring.h"

namespace hyperloop::rocks {

// kInvalidArgument naming the first option the replicated WAL cannot serve
// (write_buffer_size above a quarter of the ring included: RocksDB starts a
// new WAL file when a memtable fills, and the ring releases only whole files).
Status check_options(const rocksdb::Options& o, uint64_t ring_bytes);
// Sets the options above: max_total_wal_size to a quarter of the ring and
// write_buffer_size to at most that. Call it after any other tuning.
void apply_required_options(rocksdb::Options& o, uint64_t ring_bytes);

// True for a RocksDB WAL file name: digits then ".log" (the last component).
bool is_wal_name(const std::string& path, uint64_t* number = nullptr);

class WalFile;

// The FileSystem: everything goes to `base` except that WAL files' bytes are
// also replicated (see above). Bytes are replicated at Sync/Fsync, at Close,
// when a newer WAL file is created (so the ring holds files in order), and at
// Flush once flush_bytes are buffered (writes without sync are then
// replicated too, in batches; they are durable everywhere only after a Sync).
class WalFileSystem : public rocksdb::FileSystemWrapper {
 public:
  WalFileSystem(std::shared_ptr<rocksdb::FileSystem> base, std::shared_ptr<ReplicatedWal> wal,
                size_t flush_bytes = 64 << 10);
  ~WalFileSystem() override;
  static const char* kClassName() { return "HyperloopWalFileSystem"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old, const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& s, const std::string& t, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) override;

  ReplicatedWal& wal() { return *wal_; }
  // Sync calls that found bytes to replicate, and the errors returned.
  uint64_t syncs() const { return syncs_.load(); }
  uint64_t errors() const { return errors_.load(); }

 private:
  friend class WalFile;
  std::shared_ptr<ReplicatedWal> wal_;
  const size_t flush_bytes_;
  std::mutex mu_;
  std::set<WalFile*> open_;
  std::atomic<uint64_t> syncs_{0}, errors_{0};
};

// ---- the replica side ------------------------------------------------------

struct ApplierOptions {
  std::string name;                 // publishes "<name>.pos" and "<name>.seq"
  uint64_t ring_bytes = 16 << 20;   // as the writer's WalOptions::ring_bytes
  coord::ConfigStore* progress = nullptr;  // null: publish nowhere (tests)
  uint32_t tenant = 0;
  // Besides at every new WAL file, flush and publish after this many ring
  // bytes applied since the last publish.
  uint64_t publish_bytes = 8 << 20;
};

struct ApplierStats {
  uint64_t batches_applied = 0, batches_skipped = 0, chunks = 0, ring_bytes = 0;
  uint64_t publishes = 0, published_pos = 0, published_seq = 0;
  uint64_t dropped_tail_bytes = 0;
};

// Applies the ring, as this host's copy holds it, to this host's RocksDB.
// The db is written with its WAL disabled: what it has made durable is what
// it has flushed (after a crash it reopens at its last flush, and the
// applier takes the ring again from there: batches at or below the db's
// sequence number are skipped, the next must follow it exactly).
// A batch is applied only once it is complete in the ring; chunks being
// written, of an earlier lap or failing their checks are waited for, never
// used. Errors are final for the applier: kDataLoss (a gap in sequence
// numbers, a malformed batch, the head passed this applier: its log space
// was reused, it must be seeded again), the ReadFn's errors.
class Applier {
 public:
  static Result<std::unique_ptr<Applier>> create(ReadFn read, rocksdb::DB* db, const ApplierOptions& o);
  // Applies every complete record the ring holds now; returns how many
  // batches it applied. Publishes when a new WAL file begins.
  Result<size_t> poll();
  // Flushes the db's memtables and publishes how far the ring is durable here.
  Status publish();
  uint64_t applied_sequence() const { return last_seq_; }
  uint64_t position() const { return pos_; }
  ApplierStats stats() const { return stats_; }

 private:
  Applier(ReadFn read, rocksdb::DB* db, const ApplierOptions& o);
  Status apply(std::string_view rep);
  RingReader reader_;
  rocksdb::DB* db_;
  ApplierOptions o_;
  WalParser parser_;
  uint64_t pos_ = 0, last_seq_ = 0, since_publish_ = 0;
  Status failed_;
  ApplierStats stats_;
};

// Runs an Applier's poll() on a background thread (SCHED_IDLE: it runs only
// when nothing else wants the CPU), napping `idle_us` when there is nothing
// new. The first error stops it (error() says which).
class ApplierThread {
 public:
  ApplierThread(Applier& a, uint32_t idle_us = 200);
  ~ApplierThread();  // stops and joins
  void stop();
  Status error() const;

 private:
  Applier& a_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  Status error_;
  std::thread t_;
};

// ReadFns over a replica host's own copy of the store's data area.
ReadFn host_reader(const prim::ReplicaHost& host, uint32_t tenant, uint64_t data_offset);
// A read-only shared mapping of a daemon's region file (the daemon keeps
// writing it; the mapping sees its bytes as they land).
class MappedRegion {
 public:
  static Result<std::unique_ptr<MappedRegion>> open(const std::string& path, size_t region_bytes);
  ~MappedRegion();
  ReadFn reader(uint64_t data_offset) const;

 private:
  MappedRegion() = default;
  const std::byte* base_ = nullptr;
  size_t size_ = 0;
};

// ---- opening a primary ---------------------------------------------------------

// A primary's db and what it runs on (the db is destroyed first).
struct PrimaryDb {
  std::shared_ptr<WalFileSystem> fs;
  std::unique_ptr<rocksdb::Env> env;
  std::unique_ptr<rocksdb::DB> db;
  uint64_t replayed = 0;  // batches applied from the ring at open
};

// Opens `dir` as the primary over `wal`: deletes the directory's local WAL
// files (the ring is the log; they are an unsynced copy), opens the db with
// `options` (check_options must pass) on a WalFileSystem over the default
// file system, applies every batch of the ring above the db's sequence
// number (a promoted replica's catch-up, or a restarted primary's), flushes,
// and releases the earlier generations' files from the ring.
Result<std::unique_ptr<PrimaryDb>> open_primary(const std::string& dir, rocksdb::Options options,
                                              std::shared_ptr<ReplicatedWal> wal);

// ---- a whole chain in this process (the software RNIC) ----------------------

struct EmbeddedOptions {
  uint32_t replicas = 3;
  prim::ForwardMode mode = prim::ForwardMode::kOffload;
  WalOptions wal;
  // With appliers: each replica host gets its own RocksDB under
  // applier_dir/replica-<i> and an ApplierThread; they publish to an
  // in-memory ConfigStore and hold back ring reuse.
  bool appliers = false;
  std::string applier_dir;
  // Tenants sharing the replica hosts (each its own client NIC, store and
  // ring: tenant ids 1..tenants). Appliers serve tenant 1 only.
  uint32_t tenants = 1;
  int agent_cpu = -1;     // pin every replica host's agent thread
  int executor_cpu = -1;  // pin the one thread that runs every soft NIC
  // Clients waiting on the chain yield the CPU on every turn (GroupOptions::
  // progress): for several clients pinned to the NICs' core.
  bool yield_while_waiting = false;
};

// Soft fabric, `replicas` replica hosts (agent threads) and per tenant a
// client NIC, a txn::Store (tenants 1, 2, ...) and its ReplicatedWal: what the db_bench plugin and
// the benchmarks run on. Destroy the db before the chain.
class EmbeddedChain {
 public:
  static Result<std::unique_ptr<EmbeddedChain>> create(const EmbeddedOptions& o);
  ~EmbeddedChain();
  std::shared_ptr<ReplicatedWal> wal(uint32_t tenant_index = 0) { return wals_[tenant_index]; }
  txn::Store& store(uint32_t tenant_index = 0) { return *stores_[tenant_index]; }
  uint32_t tenants() const { return static_cast<uint32_t>(stores_.size()); }
  prim::ReplicaHost& host(uint32_t i) { return *hosts_[i]; }
  uint32_t replicas() const { return static_cast<uint32_t>(hosts_.size()); }
  // Replica i's applier (null without appliers); its db.
  Applier* applier(uint32_t i) { return i < appliers_.size() ? appliers_[i].get() : nullptr; }
  rocksdb::DB* applier_db(uint32_t i) { return i < applier_dbs_.size() ? applier_dbs_[i].get() : nullptr; }
  // Stops the applier threads (their dbs stay open).
  void stop_appliers();
  uint64_t agent_cpu_ns() const;
  static constexpr uint32_t kTenant = 1;

 private:
  EmbeddedChain() = default;
  EmbeddedOptions o_;
  soft::Fabric fabric_;
  std::vector<std::unique_ptr<soft::Nic>> clients_;
  std::vector<std::unique_ptr<soft::Nic>> nics_;
  std::unique_ptr<soft::SingleThreadExecutor> exec_;
  std::vector<std::unique_ptr<prim::ReplicaHost>> hosts_;
  std::unique_ptr<coord::ConfigStore> config_;
  std::vector<std::unique_ptr<txn::Store>> stores_;
  std::vector<std::shared_ptr<ReplicatedWal>> wals_;
  std::vector<std::unique_ptr<rocksdb::DB>> applier_dbs_;
  std::vector<std::unique_ptr<Applier>> appliers_;
  std::vector<std::unique_ptr<ApplierThread>> threads_;
};

// Parses "key=value,key=value" (the db_bench plugin's HYPERLOOP_WALFS) into
// EmbeddedOptions: replicas=1..7, mode=offload|cpu, ring_mb=N, chunk_kb=N,
// appliers=0|1, applier_dir=PATH. "" is the defaults. kInvalidArgument
// naming a bad key or value.
Result<EmbeddedOptions> parse_embedded_options(const std::string& spec);

}  // namespace hyperloop::rocks
