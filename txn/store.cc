// txn/store.cc: the transaction layer over a group (see hyperloop/txn.h for
// the layout, the protocol and the recovery rule).
#include "hyperloop/txn.h"

#include <sys/random.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <chrono>
#include <condition_variable>
#include <utility>
#include <vector>

#include "format.h"
#include "hyperloop/internal/memory_limits.h"
#include "hyperloop/log.h"

namespace hyperloop::txn {

using namespace internal;

// ---- in-flight commits ---------------------------------------------------------------------
struct InFlight;
// One log write (group commit): the records of one or more commits, adjacent
// in the ring, written with one gWRITE and made durable with one gFLUSH
// (two of each when the group reaches the ring's end and goes on at its
// start). Every InFlight of the group shares it; the group's gFLUSH
// acknowledged is the commit point of each of them. Its Ops outlive the
// group's use of them as the InFlights' do (see below).
struct LogWrite {
  struct Segment {
    uint64_t pos = 0;  // ring position of its first byte
    std::vector<std::byte> bytes;
  };
  Segment seg[2];
  uint32_t segments = 0;
  uint32_t records = 0;
  const InFlight* leader = nullptr;  // the commit that opened it: it polls for all
  bool issued = false;
  prim::Op ops[4];  // per segment: gWRITE, then gFLUSH
  uint32_t ops_issued = 0;
  size_t bytes() const { return seg[0].bytes.size() + seg[1].bytes.size(); }
  prim::Op& commit_point() { return ops[ops_issued - 1]; }
  bool done() const { return issued && (ops_issued == 0 || ops[ops_issued - 1].done()); }
};

// The Ops of one commit: [0, stripes) lock gCAS; after the commit point the
// gMEMCPYs and the unlock gCAS. Its record goes out in a LogWrite. Every
// InFlight enters Impl::applying when its LSN is taken, so that queue is in
// LSN order: a record is reaped (applied everywhere) only after every record
// before it, whatever order the committing threads reach their commit points
// in. The Ops must outlive the group's use of them: an InFlight leaves the
// queue only when reaped or, after a failure, when recovery has destroyed the
// group.
struct InFlight {
  explicit InFlight(size_t count) : ops(new prim::Op[count]) {}
  std::unique_ptr<prim::Op[]> ops;
  size_t issued = 0;
  bool apply_issued = false;  // past the commit point, apply and unlock all issued
  uint64_t lsn = 0;
  uint64_t end_pos = 0;
  std::shared_ptr<LogWrite> log;  // the log write carrying its record
  prim::Op& last() { return ops[issued - 1]; }
};

struct Store::Impl {
  StoreOptions o;
  Layout lay;
  rnic::Device* device = nullptr;
  std::vector<prim::ReplicaHost*> hosts;  // open(): local hosts
  std::vector<prim::HostHold> holds;      // on each of them (lifetime rule)
  std::atomic<int64_t> active_txns{0};    // begun, not finished (lifetime rule)
  std::vector<std::string> endpoints;     // connect(): daemons

  // Membership (o.membership.config set). The chain above (hosts or
  // endpoints) is then derived from the record's serving replicas.
  std::map<std::string, prim::ReplicaHost*> directory;  // open(): every host by its record name
  coord::Versioned record;  // as last read or written: changed with life exclusive, read under mu

  // life: shared by every call, exclusive for recover() (which replaces the group).
  std::shared_mutex life;
  std::unique_ptr<prim::Group> group;

  // Everything below is guarded by mu.
  std::mutex mu;
  bool healthy = false;
  std::string broken_reason;
  std::vector<uint64_t> word;    // each stripe's lock word as the replicas hold it (after issued ops)
  std::vector<uint32_t> holder;  // the local transaction holding each stripe (0: none)
  std::vector<uint64_t> writer;  // LSN of the last commit that wrote each stripe
  uint32_t next_tag = 1;
  uint64_t next_txn = 1;
  uint64_t next_lsn = 1;
  uint64_t tail_pos = 0;          // where the next record goes
  uint64_t durable_head_pos = 0;  // the head recovery would start from: space before it is free
  uint64_t applied_lsn = 1;       // records below it are applied on every replica
  uint64_t applied_pos = 0;
  uint32_t head_slot_next = 0;
  StoreId id;          // of the last successful recovery
  uint64_t epoch = 0;  // carried by every record and head written since it
  bool fenced = false;  // taken over (membership): final
  uint64_t claimed_sessions = 0;  // ConfigStore::sessions_lost() when this store claimed the tenant
  std::string fenced_reason;
  std::vector<std::pair<uint64_t, uint64_t>> ended;  // (store epoch, end LSN) our recoveries ended
  std::deque<std::unique_ptr<InFlight>> applying;  // in LSN order
  // Group commit: the log write that commits join until it is issued, and
  // those issued whose gFLUSH is not yet seen acknowledged (at most
  // o.log_writes_in_flight of them, unless 0).
  std::shared_ptr<LogWrite> forming;
  std::vector<std::shared_ptr<LogWrite>> log_open;
  std::condition_variable log_cv;  // a log write reached its commit point, or the store broke
  // How long a commit sleeps on its log write's leader before it gives up
  // (a safety net: the leader's wait ends within op_timeout_ns).
  std::chrono::nanoseconds follower_cap() const {
    return std::chrono::nanoseconds(std::max<uint64_t>(10'000'000'000ull, 10 * o.group.op_timeout_ns));
  }
  std::unique_ptr<prim::Op[]> head_ops;  // [0] gFLUSH of applied data, [1] gWRITE of the head, [2] its gFLUSH
  // Truncation in progress: the data flush, then the head write and its flush.
  enum class HeadStage { kNone, kDataFlush, kHead };
  HeadStage head_stage = HeadStage::kNone;
  uint64_t head_pending_lsn = 0, head_pending_pos = 0;
  StoreStats stats;

  uint64_t now() const { return now_ns(o.group.clock); }
  void turn() const {
    if (o.group.progress)
      o.group.progress();
    else
      std::this_thread::yield();
  }

  Status make_group();
  Status recover_locked(const RecoveryOptions& how);
  bool has_membership() const { return o.membership.config != nullptr; }
  Status take_membership();
  Status use_chain(const coord::TenantConfig& c, const std::string& joining = {});
  Status reconfigure_locked();
  Status probe(const std::string& name);
  Status fence_locked(std::string why);
  Status heal_after(Status failed);
  Status add_replica(const std::string& name, prim::ReplicaHost* host);
  Status drain();

  // The heartbeat monitor (MembershipOptions::heartbeat_interval_ns > 0).
  std::thread monitor;
  std::mutex monitor_mu;
  std::condition_variable monitor_cv;
  bool monitor_stop = false;  // guarded by monitor_mu
  void run_monitor();
  void stop_monitor() {
    if (!monitor.joinable()) return;
    {
      std::lock_guard<std::mutex> l(monitor_mu);
      monitor_stop = true;
    }
    monitor_cv.notify_all();
    monitor.join();
  }
  Status recover_steps(const RecoveryOptions& how, std::deque<prim::Op>& ops);
  // A wait for stripes that outlived lock_timeout_ns. Stripes are only ever
  // held by this store's own operations in the chain, so: if the chain
  // completed some since the wait began (completed0), the stripes were taken
  // again and again: contention, kAborted (returned as such). If it
  // completed none, every replica is asked for 8 bytes over its direct line
  // (bounded by the NIC's retry timer and op_timeout_ns): a replica that
  // does not answer is kUnavailable (never "conflict" while a replica is
  // dead: the transaction could not succeed if run again); if all answer,
  // the chain is alive but slow (its forwarders busy or frozen): kAborted.
  // REQUIRES: mu not held.
  Status waited_too_long(const char* what, uint64_t completed0) {
    if (group->completed() != completed0 || group->in_flight() == 0)
      return Status(StatusCode::kAborted, "contention");
    std::byte probe[8];
    for (uint32_t r = 0; r < group->replicas(); ++r)
      if (Status st = group->read(r, 0, probe); !st.is_ok()) {
        std::lock_guard<std::mutex> l(mu);
        break_locked(std::string(what) + ": replica " + std::to_string(r) + " did not answer: " + st.to_string());
        return unavailable(std::string(what) + ": waited lock_timeout_ns for the chain, which completed nothing, "
                           "and replica " + std::to_string(r) + " does not answer (" + st.to_string() +
                           "); the store needs recover()");
      }
    return Status(StatusCode::kAborted, "a slow chain");
  }
  Status commit(std::vector<Transaction::Write>& writes, std::vector<Transaction::Read>& reads, TxnId* id);
  // Group commit. join_log_locked: the sealed record `rec` (at rec.pos)
  // joins the forming log write, which is issued at once if fewer than
  // log_writes_in_flight are open. issue_log_locked: issues the forming one
  // if there is room (force: whatever the count). REQUIRES: mu.
  std::shared_ptr<LogWrite> join_log_locked(const Record& rec, const InFlight* fl);
  Status issue_log_locked(bool force);
  bool log_room_locked();
  // Forgets everything in flight: after the group that used it is gone.
  void forget_in_flight() {
    applying.clear();
    forming.reset();
    log_open.clear();
    head_stage = HeadStage::kNone;
  }
  Status read(uint64_t offset, std::span<std::byte> dst, std::vector<Transaction::Read>& reads);
  Status validate_locked(const std::vector<Transaction::Read>& reads) const;
  void reap_locked();
  void truncate_locked(bool force);
  Status refuse_locked() const {
    if (fenced) return permission_denied("this store was fenced: " + fenced_reason);
    return unavailable("store needs recover(): " + (broken_reason.empty() ? "not recovered" : broken_reason));
  }
  void break_locked(std::string why) {
    if (healthy) broken_reason = std::move(why);
    healthy = false;
    log_cv.notify_all();  // commits sleeping on a log write's leader (group commit)
  }
  // Checked against the chain at every recovery (never a silent fallback).
  uint32_t read_replica() const { return o.read_replica < 0 ? group->replicas() - 1 : uint32_t(o.read_replica); }
};

// ---- Transaction ----------------------------------------------------------------------------
Transaction::Transaction(Transaction&& t) noexcept
    : store_(std::exchange(t.store_, nullptr)), writes_(std::move(t.writes_)), reads_(std::move(t.reads_)) {}
Transaction& Transaction::operator=(Transaction&& t) noexcept {
  if (this != &t) {
    abort();
    store_ = std::exchange(t.store_, nullptr);
    writes_ = std::move(t.writes_);
    reads_ = std::move(t.reads_);
  }
  return *this;
}
Transaction::~Transaction() { abort(); }

void Transaction::abort() {
  if (Store* s = std::exchange(store_, nullptr)) s->impl_->active_txns.fetch_sub(1, std::memory_order_acq_rel);
  writes_.clear();
  reads_.clear();
}

size_t Transaction::write_bytes() const {
  size_t b = 0;
  for (const auto& w : writes_) b += w.bytes.size();
  return b;
}

Status Transaction::read(uint64_t offset, std::span<std::byte> dst) {
  if (!store_) return invalid_argument("read: the transaction is finished");
  HL_RETURN_IF_ERROR(check_data_range(store_->impl_->lay, offset, dst.size(), "read"));
  Status s = store_->impl_->heal_after(store_->impl_->read(offset, dst, reads_));
  if (!s.is_ok()) {
    if (s.code() == StatusCode::kAborted) abort();
    return s;
  }
  // Its own writes, in order, over what was read.
  for (const auto& w : writes_) {
    const uint64_t lo = std::max<uint64_t>(offset, w.offset);
    const uint64_t hi = std::min<uint64_t>(offset + dst.size(), w.offset + w.bytes.size());
    if (lo < hi) std::memcpy(dst.data() + (lo - offset), w.bytes.data() + (lo - w.offset), hi - lo);
  }
  return Status::ok();
}

Status Transaction::write(uint64_t offset, std::span<const std::byte> bytes) {
  if (!store_) return invalid_argument("write: the transaction is finished");
  HL_RETURN_IF_ERROR(check_data_range(store_->impl_->lay, offset, bytes.size(), "write"));
  writes_.push_back({offset, std::vector<std::byte>(bytes.begin(), bytes.end())});
  return Status::ok();
}

Status Transaction::commit() {
  if (!store_) return invalid_argument("commit: the transaction is finished");
  Store* s = std::exchange(store_, nullptr);
  auto writes = std::move(writes_);
  auto reads = std::move(reads_);
  writes_.clear();
  reads_.clear();
  id_ = {};
  Status st = s->impl_->heal_after(s->impl_->commit(writes, reads, &id_));
  s->impl_->active_txns.fetch_sub(1, std::memory_order_acq_rel);
  return st;
}

// ---- reads -------------------------------------------------------------------------------------
// A stripe is used only if its lock word, read before and after its bytes,
// is unlocked and at the version the client's table holds.
Status Store::Impl::read(uint64_t offset, std::span<std::byte> dst, std::vector<Transaction::Read>& reads) {
  std::shared_lock<std::shared_mutex> life_lock(life);
  if (!group) {
    std::lock_guard<std::mutex> l(mu);
    return refuse_locked();
  }
  const uint64_t s0 = offset / lay.stripe, s1 = (offset + dst.size() - 1) / lay.stripe;
  const size_t count = s1 - s0 + 1;
  std::vector<uint64_t> want(count), before(count), after(count);
  const uint64_t deadline = now() + o.lock_timeout_ns;
  const uint64_t completed0 = group->completed();
  uint64_t wait_lsn = 0;
  std::string last_seen = "nothing read";
  for (bool first = true;; first = false) {
    if (!first) {
      if (now() > deadline) {
        const Status w = waited_too_long("read", completed0);
        if (w.code() != StatusCode::kAborted) return w;
        std::lock_guard<std::mutex> l(mu);
        ++stats.aborts;
        return Status(StatusCode::kAborted, "read: stripes " + std::to_string(s0) + ".." + std::to_string(s1) +
                                                " stayed locked or changing for lock_timeout_ns (last seen: " +
                                                last_seen + ")");
      }
      group->poll();
      turn();
    }
    bool busy = false;
    {
      std::lock_guard<std::mutex> l(mu);
      if (!healthy) return refuse_locked();
      reap_locked();
      // After a mismatch: no new READs until what was in flight then is applied.
      if (applied_lsn < wait_lsn) continue;
      for (size_t k = 0; k < count; ++k) {
        // Held, or written by a commit not yet applied everywhere: wait.
        if (holder[s0 + k] != 0 || (word[s0 + k] & kLocked) || writer[s0 + k] >= applied_lsn) busy = true;
        want[k] = word[s0 + k];
      }
      wait_lsn = next_lsn;
    }
    if (busy) {
      last_seen = "held or not yet applied on the client";
      continue;
    }
    const uint32_t r = read_replica();
    auto words = [&](std::vector<uint64_t>& w) {
      return group->read(r, lay.lock_off + 8 * s0, {reinterpret_cast<std::byte*>(w.data()), 8 * count});
    };
    Status st = words(before);
    if (st.is_ok()) st = group->read(r, lay.data_off + offset, dst);
    if (st.is_ok()) st = words(after);
    if (!st.is_ok()) {
      std::lock_guard<std::mutex> l(mu);
      break_locked("read from replica " + std::to_string(r) + ": " + st.to_string());
      return unavailable("read: " + st.to_string());
    }
    if (before != want || after != want) {
      for (size_t k = 0; k < count; ++k)
        if (before[k] != want[k] || after[k] != want[k]) {
          last_seen = "stripe " + std::to_string(s0 + k) + " on replica " + std::to_string(r) + ": " + hex(before[k]) +
                      " then " + hex(after[k]) + ", the client's table says " + hex(want[k]);
          break;
        }
      std::lock_guard<std::mutex> l(mu);
      ++stats.read_retries;
      continue;
    }
    break;
  }
  for (size_t k = 0; k < count; ++k) {
    auto it = std::find_if(reads.begin(), reads.end(), [&](const auto& x) { return x.stripe == s0 + k; });
    if (it == reads.end()) {
      reads.push_back({s0 + k, want[k]});
    } else if (it->version != want[k]) {
      std::lock_guard<std::mutex> l(mu);
      ++stats.aborts;
      return Status(StatusCode::kAborted, "read: stripe " + std::to_string(s0 + k) +
                                              " changed since this transaction first read it");
    }
  }
  return Status::ok();
}

// Every stripe read is still at the version read and held by no one. REQUIRES: mu.
Status Store::Impl::validate_locked(const std::vector<Transaction::Read>& reads) const {
  for (const auto& r : reads)
    if (holder[r.stripe] != 0 || word[r.stripe] != r.version)
      return Status(StatusCode::kAborted, "serialization conflict: stripe " + std::to_string(r.stripe) +
                                              " changed since the transaction read it");
  return Status::ok();
}

// ---- commit ------------------------------------------------------------------------------------
Status Store::Impl::commit(std::vector<Transaction::Write>& writes, std::vector<Transaction::Read>& reads,
                           TxnId* id) {
  std::shared_lock<std::shared_mutex> life_lock(life);
  if (!group) {  // a recovery failed: no chain at all
    std::lock_guard<std::mutex> l(mu);
    return refuse_locked();
  }
  if (writes.empty()) {  // read-only: validation is the whole commit
    std::lock_guard<std::mutex> l(mu);
    if (!healthy) return refuse_locked();
    reap_locked();
    Status s = validate_locked(reads);
    if (s.is_ok())
      ++stats.commits;
    else
      ++stats.aborts;
    return s;
  }

  // The record, built outside the lock (LSN, marker and checksum come later).
  std::vector<std::pair<uint64_t, std::span<const std::byte>>> spans;
  spans.reserve(writes.size());
  for (const auto& w : writes) spans.emplace_back(w.offset, w.bytes);
  const std::vector<Extent> ranges = coalesce(spans);
  Result<Record> rec_or = build_record(lay, o.group.staging_bytes, ranges);
  if (!rec_or.is_ok()) return rec_or.status();
  Record rec = std::move(rec_or).value();
  std::vector<uint64_t> stripes;
  for (const auto& e : ranges)
    for (uint64_t s = e.offset / lay.stripe; s <= (e.offset + e.bytes.size() - 1) / lay.stripe; ++s)
      if (stripes.empty() || stripes.back() != s) stripes.push_back(s);
  std::sort(stripes.begin(), stripes.end());
  stripes.erase(std::unique(stripes.begin(), stripes.end()), stripes.end());

  auto owned = std::make_unique<InFlight>(2 * stripes.size() + ranges.size());
  InFlight* fl = owned.get();
  const uint32_t all = (1u << group->replicas()) - 1;
  std::vector<uint64_t> locked_word(stripes.size());
  uint64_t record_at = 0;  // region offset of the record

  const uint64_t lock_deadline = now() + o.lock_timeout_ns;
  const uint64_t space_deadline = now() + o.group.op_timeout_ns;
  const uint64_t completed0 = group->completed();
  bool waited = false;
  std::unique_lock<std::mutex> l(mu);
  for (;;) {
    if (!healthy) return refuse_locked();
    reap_locked();
    bool conflict = false;
    for (uint64_t s : stripes)
      if (holder[s] != 0) conflict = true;
    if (!conflict) {
      if (Status s = validate_locked(reads); !s.is_ok()) {
        ++stats.aborts;
        return s;
      }
      // Log space: a record never wraps; it may skip the ring's end.
      uint64_t pos = tail_pos;
      const uint64_t phys = pos % lay.log_size;
      if (phys + rec.bytes.size() > lay.log_size) pos += lay.log_size - phys;
      if (pos + rec.bytes.size() - durable_head_pos <= lay.log_size) {
        rec.pos = pos;
        break;
      }
      truncate_locked(true);
      if (now() > space_deadline) {
        break_locked("the log stayed full for op_timeout_ns");
        return refuse_locked();
      }
    } else {
      if (!waited) ++stats.lock_waits;
      waited = true;
      if (now() > lock_deadline) {
        l.unlock();
        const Status w = waited_too_long("commit", completed0);
        l.lock();
        if (w.code() != StatusCode::kAborted) return w;
        ++stats.aborts;
        return Status(StatusCode::kAborted, "commit: a stripe of the write set stayed locked by another "
                                            "transaction for lock_timeout_ns");
      }
    }
    l.unlock();
    group->poll();
    turn();
    l.lock();
  }

  // Take the stripes and the LSN, issue the locks, and hand the record to a
  // log write (group commit): issued now, or by whoever finds room for it.
  const uint32_t tag = next_tag;
  next_tag = next_tag % kMaxTag + 1;
  const uint64_t txn_id = next_txn++;
  fl->lsn = next_lsn++;
  *id = {epoch, fl->lsn};
  applying.push_back(std::move(owned));
  fl->end_pos = rec.pos + rec.bytes.size();
  tail_pos = fl->end_pos;
  seal_record(rec, fl->lsn, txn_id, epoch);
  record_at = lay.log_off + rec.pos % lay.log_size;
  Status st;
  for (size_t k = 0; k < stripes.size() && st.is_ok(); ++k) {
    const uint64_t s = stripes[k];
    holder[s] = tag;
    locked_word[k] = kLocked | (uint64_t(tag) << kTagShift) | (word[s] & kVersionMask);
    st = group->cas(fl->ops[fl->issued], lay.lock_off + 8 * s, word[s], locked_word[k], all);
    if (st.is_ok()) ++fl->issued;
  }
  if (st.is_ok()) {
    fl->log = join_log_locked(rec, fl);
    st = issue_log_locked(false);
  }
  if (!st.is_ok()) {
    break_locked("commit could not issue: " + st.to_string());
    const bool nothing_sent = fl->issued == 0;
    if (nothing_sent && st.code() != StatusCode::kUnavailable) return st;
    return unavailable("commit in doubt (the chain broke while it was issued): " + st.to_string());
  }
  const std::shared_ptr<LogWrite> log = fl->log;
  if (!log->issued) ++stats.log_waits;

  // The commit point: the log write's gFLUSH acknowledged by the tail. The
  // write's leader (the commit that opened it) waits for room, issues it if
  // no one else did, polls the chain until the commit point and wakes the
  // others, which sleep meanwhile: one polling thread per log write, however
  // many commits it carries (on a busy client the pollers would otherwise
  // take the CPU the commits wait for).
  if (log->leader != fl) {
    const auto cap = std::chrono::steady_clock::now() + follower_cap();
    while (healthy && !log->done())
      if (log_cv.wait_until(l, cap) == std::cv_status::timeout && healthy && !log->done()) {
        break_locked("commit: the leader of its log write did not reach the commit point within " +
                     std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(follower_cap()).count()) +
                     " ms");
        break;
      }
    if (!log->done())
      return unavailable("commit in doubt (the chain broke before the record was acknowledged): " + broken_reason);
    if (log->ops_issued != 2 * log->segments)
      return unavailable("commit in doubt (the chain broke while its record was sent): " + broken_reason);
  } else {
    const uint64_t issue_deadline = now() + o.group.op_timeout_ns;
    while (!log->issued) {
      if (!healthy)
        return unavailable("commit in doubt (the chain broke before its record was sent): " + broken_reason);
      if (Status is = issue_log_locked(false); !is.is_ok()) {
        break_locked("commit could not issue: " + is.to_string());
        return unavailable("commit in doubt (the chain broke while it was issued): " + is.to_string());
      }
      if (log->issued) break;
      if (now() > issue_deadline) {
        break_locked("commit: the log writes ahead of this one did not complete within op_timeout_ns");
        return unavailable("commit in doubt: " + broken_reason);
      }
      l.unlock();
      group->poll();
      turn();
      l.lock();
    }
    if (log->ops_issued != 2 * log->segments) {  // its issue failed (and broke the store)
      break_locked("commit: its log write could not be issued");
      return unavailable("commit in doubt (the chain broke while its record was sent): " + broken_reason);
    }
    prim::Op& flush_op = log->commit_point();
    l.unlock();
    Status waited_st = group->wait(flush_op);
    l.lock();
    if (!waited_st.is_ok() || !flush_op.done()) {
      break_locked("commit: " + waited_st.to_string());
      return unavailable("commit in doubt (the chain broke before the record was acknowledged): " +
                         waited_st.to_string());
    }
    // Hand the next log write on at once (this thread is the first to know),
    // and wake the commits this one carried.
    if (forming)
      if (Status is = issue_log_locked(false); !is.is_ok()) break_locked("commit could not issue: " + is.to_string());
    log_cv.notify_all();
  }
  for (uint32_t k = 0; k < log->ops_issued; ++k)
    if (!log->ops[k].status().is_ok()) {
      const std::string why = log->ops[k].status().to_string();
      break_locked("commit: " + why);
      return unavailable("commit in doubt: " + why);
    }
  for (size_t k = 0; k < fl->issued; ++k)
    if (!fl->ops[k].status().is_ok()) {
      const std::string why = fl->ops[k].status().to_string();
      break_locked("commit: " + why);
      return unavailable("commit in doubt: " + why);
    }
  for (size_t k = 0; k < stripes.size(); ++k) {
    for (uint64_t old : fl->ops[k].old_values())
      if (old != word[stripes[k]]) {
        const std::string why = "replica lock word of stripe " + std::to_string(stripes[k]) + " was " +
                                hex(old) + ", the client's table says " + hex(word[stripes[k]]);
        break_locked(why);
        return Status(StatusCode::kDataLoss, "commit in doubt: " + why);
      }
  }
  // Committed. Apply and unlock; reaped later (in LSN order).
  for (size_t k = 0; k < stripes.size(); ++k) {
    word[stripes[k]] = locked_word[k];
    writer[stripes[k]] = fl->lsn;
  }
  ++stats.commits;
  size_t payload = rec.payload_off;
  for (const auto& e : ranges) {
    if (st.is_ok()) st = group->memcpy(fl->ops[fl->issued], record_at + payload, lay.data_off + e.offset, e.bytes.size());
    if (st.is_ok()) ++fl->issued;
    payload += e.bytes.size();
  }
  for (size_t k = 0; k < stripes.size() && st.is_ok(); ++k) {
    const uint64_t s = stripes[k];
    const uint64_t unlocked = ((word[s] & kVersionMask) + 1) & kVersionMask;
    st = group->cas(fl->ops[fl->issued], lay.lock_off + 8 * s, word[s], unlocked, all);
    if (st.is_ok()) {
      ++fl->issued;
      word[s] = unlocked;
      holder[s] = 0;
    }
  }
  if (!st.is_ok()) {
    // Durable and acknowledged by every replica: recovery replays it.
    break_locked("apply could not issue: " + st.to_string());
    return Status::ok();
  }
  fl->apply_issued = true;
  return Status::ok();
}

// ---- group commit ---------------------------------------------------------------------------
// A log write takes records while it forms; it is sealed by its issue. A
// record that does not follow the forming write's last byte in the ring (it
// skipped the ring's end) opens its second segment; one that would make the
// write larger than a quarter of the staging buffer, or need a third
// segment, has the forming write issued first, whatever the count in flight.
std::shared_ptr<LogWrite> Store::Impl::join_log_locked(const Record& rec, const InFlight* fl) {
  const size_t cap = std::max<size_t>(o.group.staging_bytes / 4, rec.bytes.size());
  if (forming) {
    LogWrite& f = *forming;
    const LogWrite::Segment& last = f.seg[f.segments - 1];
    const bool adjacent = last.pos + last.bytes.size() == rec.pos;
    if (f.bytes() + rec.bytes.size() > cap || (!adjacent && f.segments == 2)) {
      if (Status s = issue_log_locked(true); !s.is_ok()) break_locked("commit could not issue: " + s.to_string());
    }
  }
  if (!forming) {
    forming = std::make_shared<LogWrite>();
    forming->leader = fl;
  }
  LogWrite& f = *forming;
  if (f.segments == 0 || f.seg[f.segments - 1].pos + f.seg[f.segments - 1].bytes.size() != rec.pos) {
    f.seg[f.segments].pos = rec.pos;
    ++f.segments;
  }
  std::vector<std::byte>& b = f.seg[f.segments - 1].bytes;
  b.insert(b.end(), rec.bytes.begin(), rec.bytes.end());
  ++f.records;
  return forming;
}

bool Store::Impl::log_room_locked() {
  std::erase_if(log_open, [](const std::shared_ptr<LogWrite>& w) { return w->done(); });
  return o.log_writes_in_flight == 0 || log_open.size() < o.log_writes_in_flight;
}

Status Store::Impl::issue_log_locked(bool force) {
  if (!forming || (!force && !log_room_locked())) return Status::ok();
  std::shared_ptr<LogWrite> w = std::move(forming);
  w->issued = true;  // whatever happens below: its members stop waiting for it
  Status st;
  for (uint32_t k = 0; k < w->segments && st.is_ok(); ++k) {
    const LogWrite::Segment& g = w->seg[k];
    const uint64_t at = lay.log_off + g.pos % lay.log_size;
    st = group->write(w->ops[w->ops_issued], at, g.bytes);
    if (st.is_ok()) ++w->ops_issued;
    if (st.is_ok()) st = group->flush(w->ops[w->ops_issued], at, g.bytes.size());
    if (st.is_ok()) ++w->ops_issued;
  }
  if (!st.is_ok()) return st;
  ++stats.log_writes;
  stats.log_write_records += w->records;
  log_open.push_back(std::move(w));
  return Status::ok();
}

// Takes applied transactions in LSN order and moves the log head. REQUIRES: mu.
void Store::Impl::reap_locked() {
  while (!applying.empty() && applying.front()->apply_issued && applying.front()->last().done()) {
    InFlight& f = *applying.front();
    for (size_t k = 0; k < f.issued; ++k)
      if (!f.ops[k].status().is_ok()) {
        break_locked("apply: " + f.ops[k].status().to_string());
        return;
      }
    applied_lsn = f.lsn + 1;
    applied_pos = f.end_pos;
    applying.pop_front();
  }
  truncate_locked(false);
}

// Truncation: once the data the skipped records wrote is durable on every
// replica (a gFLUSH of the data area, acknowledged), the head {applied_lsn,
// applied_pos} goes into the next head slot and is flushed; the space before
// it is reused only once that flush is acknowledged. Two round trips, not one
// pipelined three-op burst: a gWRITE's bytes land on a replica before its
// slot runs there (primitives.h), so a head issued right behind the data
// flush could reach replica 0's memory before that flush ran on it, and a
// power failure that keeps the (unflushed) head line but not the unflushed
// data would lose acknowledged commits. `force`: even for a little space.
// REQUIRES: mu.
void Store::Impl::truncate_locked(bool force) {
  if (head_stage == HeadStage::kDataFlush) {
    if (!head_ops[0].done()) return;
    if (!head_ops[0].status().is_ok()) {
      break_locked("log head write: " + head_ops[0].status().to_string());
      return;
    }
    const Head h = make_head(head_pending_lsn, head_pending_pos, epoch);
    const uint64_t at = head_slot_offset(head_slot_next);
    Status s = group->write(head_ops[1], at, as_bytes(h));
    if (s.is_ok()) s = group->flush(head_ops[2], at, sizeof h);
    if (!s.is_ok()) {
      break_locked("log head write: " + s.to_string());
      return;
    }
    head_slot_next ^= 1;
    head_stage = HeadStage::kHead;
    return;
  }
  if (head_stage == HeadStage::kHead) {
    if (!head_ops[2].done()) return;
    for (int k = 1; k < 3; ++k)
      if (!head_ops[k].status().is_ok()) {
        break_locked("log head write: " + head_ops[k].status().to_string());
        return;
      }
    head_stage = HeadStage::kNone;
    durable_head_pos = head_pending_pos;
    ++stats.truncations;
  }
  if (!healthy || applied_pos == durable_head_pos) return;
  if (!force && applied_pos - durable_head_pos < lay.log_size / 4) return;
  if (Status s = group->flush(head_ops[0], lay.data_off, lay.data_size); !s.is_ok()) {
    break_locked("log head write: " + s.to_string());
    return;
  }
  head_pending_lsn = applied_lsn;
  head_pending_pos = applied_pos;
  head_stage = HeadStage::kDataFlush;
}

// ---- the group and recovery --------------------------------------------------------------
Status Store::Impl::make_group() {
  prim::GroupOptions g = o.group;
  g.tenant = o.tenant;
  g.region_size = lay.region;
  g.epoch = record.config.epoch;  // 0 without membership
  Result<std::unique_ptr<prim::Group>> r =
      hosts.empty() ? prim::Group::connect(*device, endpoints, g) : prim::Group::create(*device, hosts, g);
  if (!r.is_ok()) return r.status();
  group = std::move(r).value();
  return Status::ok();
}

// REQUIRES: life held exclusively (no other call inside), mu not held.
namespace {
// A fresh store id from the kernel's CSPRNG.
Result<StoreId> fresh_store_id() {
  uint64_t w[2] = {0, 0};
  for (size_t got = 0; got < sizeof w;) {
    const ssize_t r = ::getrandom(reinterpret_cast<char*>(w) + got, sizeof w - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return unavailable(std::string("getrandom: ") + std::strerror(errno));
    }
    got += size_t(r);
  }
  if (w[0] == 0 && w[1] == 0) w[1] = 1;  // zero means "no id"
  return StoreId{w[0], w[1]};
}
}  // namespace

// REQUIRES: life held exclusively (no other call inside), mu not held.
Status Store::Impl::recover_locked(const RecoveryOptions& how) {
  {
    std::lock_guard<std::mutex> l(mu);
    break_locked("recovery did not finish");
  }
  // The old group goes first (the Ops it may still use go after it): its
  // members are dropped on every replica before anything is read.
  group.reset();
  forget_in_flight();
  const size_t count = hosts.empty() ? endpoints.size() : hosts.size();
  if (o.read_replica >= 0 && size_t(o.read_replica) >= count)
    return invalid_argument("StoreOptions::read_replica " + std::to_string(o.read_replica) + " is not a position of a " +
                            std::to_string(count) + "-replica chain");
  // The recovery's own operations live here; on any failure the group that
  // may still use them goes before them.
  std::deque<prim::Op> ops;
  Status s = recover_steps(how, ops);
  if (!s.is_ok()) group.reset();
  return s;
}

Status Store::Impl::recover_steps(const RecoveryOptions& how, std::deque<prim::Op>& ops) {
  HL_RETURN_IF_ERROR(make_group());
  const uint32_t n = group->replicas();

  // Every replica's region is read: refused (nothing throws) if n of them do not fit.
  std::vector<std::vector<std::byte>> image(n);
  if (lay.region > SIZE_MAX / n) return Status(StatusCode::kResourceExhausted, "recovery: regions too large");
  HL_RETURN_IF_ERROR(::hyperloop::internal::check_fits_in_memory(n * lay.region, "recovery: the replicas' regions"));
  for (auto& im : image)
    HL_RETURN_IF_ERROR(::hyperloop::internal::assign_or_exhausted(im, lay.region, std::byte{0}, "recovery"));
  for (uint32_t i = 0; i < n; ++i) HL_RETURN_IF_ERROR(group->read(i, 0, image[i]));
  PlanInput in;
  in.expect = id;
  in.reseed_mask = how.reseed_mask;
  in.allow_resize = how.allow_resize;
  if (id.is_zero()) {
    HL_ASSIGN_OR_RETURN(in.fresh_id, fresh_store_id());
  }
  Result<Plan> plan_or = plan_recovery(lay, image, in);
  if (!plan_or.is_ok()) return plan_or.status();
  const Plan& plan = plan_or.value();
  // Data, lock table and format first, flushed; then the head that skips the
  // replayed records. A crash in between replays them again (idempotent).
  uint64_t resynced = 0;
  const size_t chunk = std::min(kChunk, o.group.staging_bytes);
  auto sync = [&](uint64_t lo, uint64_t hi) -> Status {
    for (uint64_t at = lo; at < hi; at += chunk) {
      const size_t len = std::min<uint64_t>(chunk, hi - at);
      uint32_t differ = 0;
      for (uint32_t i = 0; i < n; ++i)
        if (std::memcmp(image[i].data() + at, plan.target.data() + at, len) != 0) ++differ;
      if (differ == 0) continue;
      resynced += uint64_t(differ) * len;
      HL_RETURN_IF_ERROR(group->write(ops.emplace_back(), at, {plan.target.data() + at, len}));
    }
    return Status::ok();
  };
  HL_RETURN_IF_ERROR(sync(lay.lock_off, lay.region));
  HL_RETURN_IF_ERROR(sync(0, kHeadOff));
  HL_RETURN_IF_ERROR(group->flush(ops.emplace_back(), 0, lay.region));
  for (auto& op : ops) HL_RETURN_IF_ERROR(group->wait(op));
  ops.clear();
  const uint64_t resynced_replicas = resynced;  // the head's move below is routine, not a resync
  HL_RETURN_IF_ERROR(sync(kHeadOff, kSuperBytes));
  HL_RETURN_IF_ERROR(group->flush(ops.emplace_back(), 0, kSuperBytes));
  for (auto& op : ops) HL_RETURN_IF_ERROR(group->wait(op));

  std::lock_guard<std::mutex> l(mu);
  word.assign(lay.stripes, 0);
  std::memcpy(word.data(), plan.target.data() + lay.lock_off, 8 * lay.stripes);
  holder.assign(lay.stripes, 0);
  writer.assign(lay.stripes, 0);
  next_lsn = plan.head_lsn;
  applied_lsn = plan.head_lsn;
  tail_pos = durable_head_pos = applied_pos = plan.head_pos;
  head_slot_next = plan.head_slot ^ 1;
  id = plan.id;
  epoch = plan.epoch;
  ended = ended_epochs(plan.target);  // the store's own table: every client's recoveries
  ++stats.recoveries;
  stats.replayed_records += plan.replayed;
  if (plan.reference >= 0) stats.resynced_bytes += resynced_replicas;
  healthy = true;
  broken_reason.clear();
  return Status::ok();
}

// ---- Store --------------------------------------------------------------------------------------
Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() {
  if (const int64_t active = impl_ ? impl_->active_txns.load(std::memory_order_acquire) : 0; active > 0) {
    std::fprintf(stderr,
                 "hyperloop: a txn::Store is destroyed while %lld of its Transactions are unfinished; commit, abort "
                 "or drop every Transaction before its Store (hyperloop/txn.h, Lifetime). Aborting.\n",
                 static_cast<long long>(active));
    std::abort();
  }
  // The monitor first (it uses the group), then the group: it may still use
  // the Ops of in-flight commits.
  if (impl_) impl_->stop_monitor();
  if (impl_) impl_->group.reset();
}

size_t Store::region_bytes(const StoreOptions& options) {
  Result<Layout> l = layout_of(options);
  return l.is_ok() ? l.value().region : 0;
}

size_t Store::data_offset(const StoreOptions& options) {
  Result<Layout> l = layout_of(options);
  return l.is_ok() ? l.value().data_off : 0;
}

namespace {
Result<std::unique_ptr<Store::Impl>> new_impl(rnic::Device& client, const StoreOptions& options) {
  Result<Layout> lay = layout_of(options);
  if (!lay.is_ok()) return lay.status();
  auto impl = std::make_unique<Store::Impl>();
  impl->o = options;
  impl->lay = lay.value();
  impl->device = &client;
  impl->head_ops.reset(new prim::Op[3]);
  return impl;
}
}  // namespace

Result<std::unique_ptr<Store>> Store::open(rnic::Device& client, std::span<prim::ReplicaHost* const> replicas,
                                           const StoreOptions& options) {
  if (replicas.empty()) return invalid_argument("Store::open: no replicas");
  HL_ASSIGN_OR_RETURN(auto impl, new_impl(client, options));
  for (auto* h : replicas)
    if (!h) return invalid_argument("Store::open: null replica host");
  impl->hosts.assign(replicas.begin(), replicas.end());
  for (auto* h : replicas) impl->holds.emplace_back(*h);
  if (impl->has_membership()) {
    const auto& names = options.membership.names;
    if (names.size() != replicas.size())
      return invalid_argument("Store::open: MembershipOptions::names has " + std::to_string(names.size()) +
                              " names for " + std::to_string(replicas.size()) + " hosts");
    for (size_t i = 0; i < names.size(); ++i)
      if (!impl->directory.emplace(names[i], replicas[i]).second)
        return invalid_argument("Store::open: the name " + names[i] + " is given twice");
  }
  return start(std::move(impl));
}

Result<std::unique_ptr<Store>> Store::connect(rnic::Device& client, std::span<const std::string> replicas,
                                              const StoreOptions& options) {
  // With membership the record names the chain: replicas are only for a
  // tenant that has no record yet.
  if (replicas.empty() && !options.membership.config) return invalid_argument("Store::connect: no replicas");
  HL_ASSIGN_OR_RETURN(auto impl, new_impl(client, options));
  impl->endpoints.assign(replicas.begin(), replicas.end());
  return start(std::move(impl));
}

// The store over its first group, recovered (or formatted).
Result<std::unique_ptr<Store>> Store::start(std::unique_ptr<Impl> impl) {
  std::unique_ptr<Store> s(new Store(std::move(impl)));
  RecoveryOptions how = s->impl_->o.recovery;
  if (s->impl_->has_membership()) {
    HL_RETURN_IF_ERROR(s->impl_->take_membership());
    how.allow_resize = true;  // the record decides the chain
    // This client's liveness, bound to its coordination session: a standby
    // waits for it to end (ConfigStore::live_owner).
    s->impl_->claimed_sessions = s->impl_->o.membership.config->sessions_lost();
    HL_RETURN_IF_ERROR(s->impl_->o.membership.config->claim_owner(s->impl_->o.tenant, s->impl_->o.membership.owner));
  }
  HL_RETURN_IF_ERROR(s->impl_->recover_locked(how));
  if (s->impl_->has_membership() && s->impl_->o.membership.heartbeat_interval_ns > 0)
    s->impl_->monitor = std::thread([im = s->impl_.get()] { im->run_monitor(); });
  return s;
}

Transaction Store::begin() {
  Transaction t;
  t.store_ = this;
  impl_->active_txns.fetch_add(1, std::memory_order_relaxed);
  return t;
}

Status Store::read(uint64_t offset, std::span<std::byte> dst) {
  HL_RETURN_IF_ERROR(check_data_range(impl_->lay, offset, dst.size(), "read"));
  const uint64_t deadline = impl_->now() + impl_->o.lock_timeout_ns;
  for (;;) {
    Transaction t = begin();
    Status s = t.read(offset, dst);
    if (s.is_ok()) s = t.commit();
    if (s.code() != StatusCode::kAborted || impl_->now() > deadline) return s;
  }
}

Status Store::recover(std::span<prim::ReplicaHost* const> replicas, const RecoveryOptions& how) {
  std::unique_lock<std::shared_mutex> life_lock(impl_->life);
  if (impl_->has_membership()) {
    if (!replicas.empty())
      return failed_precondition("recover: with membership the record decides the chain (reconfigure, add_replica)");
    if (impl_->fenced) return permission_denied("this store was fenced: " + impl_->fenced_reason);
    RecoveryOptions h = how;
    h.allow_resize = true;
    return impl_->recover_locked(h);
  }
  if (!replicas.empty()) {
    if (impl_->hosts.empty()) return invalid_argument("recover: this store was connected to daemons");
    for (auto* h : replicas)
      if (!h) return invalid_argument("recover: null replica host");
    if (replicas.size() != impl_->hosts.size() && !how.allow_resize)
      return failed_precondition("recover: " + std::to_string(replicas.size()) + " hosts for a store on " +
                                 std::to_string(impl_->hosts.size()) +
                                 " replicas would change its chain (allow it explicitly: "
                                 "RecoveryOptions::allow_resize)");
    // The old group (which holds the old hosts) goes before the holds do.
    impl_->group.reset();
    impl_->hosts.assign(replicas.begin(), replicas.end());
    impl_->holds.clear();
    for (auto* h : replicas) impl_->holds.emplace_back(*h);
  }
  return impl_->recover_locked(how);
}

void Store::poll() {
  std::shared_lock<std::shared_mutex> life_lock(impl_->life);
  if (!impl_->group) return;
  impl_->group->poll();
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->reap_locked();
}

Status Store::drain() { return impl_->heal_after(impl_->drain()); }

Status Store::Impl::drain() {
  std::shared_lock<std::shared_mutex> life_lock(life);
  if (!group) {
    std::lock_guard<std::mutex> l(mu);
    return refuse_locked();
  }
  // Polls (no pointers into the apply queue: another thread may reap it).
  // Every operation completes or fails within op_timeout_ns.
  for (;;) {
    {
      std::lock_guard<std::mutex> l(mu);
      if (!healthy) return refuse_locked();
      reap_locked();
      if (applying.empty() && head_stage == HeadStage::kNone) return Status::ok();
    }
    group->poll();
    turn();
  }
}

StoreId Store::id() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->id;
}

std::string StoreId::to_string() const {
  char b[40];
  std::snprintf(b, sizeof b, "%016llx%016llx", static_cast<unsigned long long>(hi), static_cast<unsigned long long>(lo));
  return b;
}

bool Store::healthy() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->healthy;
}
size_t Store::data_size() const { return impl_->lay.data_size; }
uint32_t Store::replicas() const { return impl_->group ? impl_->group->replicas() : 0; }
StoreStats Store::stats() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->stats;
}
prim::Group& Store::group() { return *impl_->group; }


// ---- membership: the record, reconfiguration, joins, fencing -------------------------------------
namespace {
bool chain_failure(const Status& s) {
  return s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded ||
         s.code() == StatusCode::kDataLoss;
}
std::string tenant_text(uint32_t t) { return "tenant " + std::to_string(t); }
}  // namespace

// The first record (the given replicas, epoch 1) or a takeover of the one
// there (epoch + 1, owner = us; a replica left syncing never finished its
// join and is marked offline). REQUIRES: life exclusive (or not shared yet).
Status Store::Impl::take_membership() {
  const MembershipOptions& m = o.membership;
  coord::ConfigStore& cs = *m.config;
  if (m.min_replicas < 1) return invalid_argument("MembershipOptions::min_replicas must be at least 1");
  for (int attempt = 0; attempt < 16; ++attempt) {
    Result<coord::Versioned> now = cs.read(o.tenant);
    if (now.status().code() == StatusCode::kNotFound) {
      coord::TenantConfig first;
      first.epoch = 1;
      first.owner = m.owner;
      for (const auto& name : hosts.empty() ? endpoints : o.membership.names)
        first.chain.push_back({name, coord::ReplicaState::kServing});
      HL_RETURN_IF_ERROR(coord::check_config(first));
      Result<int64_t> v = cs.create(o.tenant, first);
      if (v.status().code() == StatusCode::kAlreadyExists) continue;  // another client was first: take it over
      HL_RETURN_IF_ERROR(v.status());
      record = {first, *v};
      return use_chain(first);
    }
    HL_RETURN_IF_ERROR(now.status());
    coord::TenantConfig next = now->config;
    next.epoch = now->config.epoch + 1;
    next.owner = m.owner;
    for (auto& e : next.chain)
      if (e.state == coord::ReplicaState::kSyncing) e.state = coord::ReplicaState::kOffline;
    HL_RETURN_IF_ERROR(coord::check_config(next));
    Result<int64_t> v = cs.compare_and_set(o.tenant, *now, next);
    if (v.status().code() == StatusCode::kAborted) continue;  // another writer won: read again
    HL_RETURN_IF_ERROR(v.status());
    record = {next, *v};
    log(LogLevel::kInfo, "txn", "tenant_taken_over",
        {{"tenant", o.tenant}, {"epoch", next.epoch}, {"owner", m.owner}, {"previous_owner", now->config.owner}});
    return use_chain(next);
  }
  return Status(StatusCode::kAborted, tenant_text(o.tenant) + ": the record kept changing over 16 attempts to take it over");
}

// The chain the next group is built on: the record's serving replicas in
// order, then `joining` (a replica being added at the tail).
Status Store::Impl::use_chain(const coord::TenantConfig& c, const std::string& joining) {
  std::vector<std::string> names;
  for (const auto& e : c.chain)
    if (e.state == coord::ReplicaState::kServing) names.push_back(e.endpoint);
  if (!joining.empty()) names.push_back(joining);
  if (names.empty()) return unavailable(tenant_text(o.tenant) + ": its record has no serving replica");
  if (names.size() > prim::kMaxReplicas)
    return Status(StatusCode::kResourceExhausted, "a chain has at most " + std::to_string(prim::kMaxReplicas) + " replicas");
  if (directory.empty()) {
    endpoints = std::move(names);
    return Status::ok();
  }
  std::vector<prim::ReplicaHost*> chain;
  for (const auto& n : names) {
    auto it = directory.find(n);
    if (it == directory.end())
      return failed_precondition(tenant_text(o.tenant) + ": its record names replica " + n +
                                 ", which is not among the hosts this store was given (MembershipOptions::names)");
    chain.push_back(it->second);
  }
  hosts = std::move(chain);
  return Status::ok();
}

// REQUIRES: life exclusive.
Status Store::Impl::fence_locked(std::string why) {
  group.reset();
  std::lock_guard<std::mutex> l(mu);
  if (!fenced) {
    fenced = true;
    fenced_reason = std::move(why);
    log(LogLevel::kWarn, "txn", "store_fenced", {{"tenant", o.tenant}, {"reason", fenced_reason}});
  }
  healthy = false;
  broken_reason = fenced_reason;
  return refuse_locked();
}

// Whether replica `name` answers: a one-replica group at the record's epoch
// and an RDMA READ of its heartbeat word, each bounded by probe_timeout_ns.
// REQUIRES: life exclusive, no group of ours on it (dropped before).
Status Store::Impl::probe(const std::string& name) {
  prim::GroupOptions g = o.group;
  g.tenant = o.tenant;
  g.region_size = lay.region;
  g.epoch = record.config.epoch;
  g.slots = 2;
  g.rearm_batch = 1;
  g.staging_bytes = 4096;
  g.op_timeout_ns = std::max<uint64_t>(o.membership.probe_timeout_ns, 1'000'000);
  g.control_timeout_ns = std::max<uint64_t>(o.membership.probe_timeout_ns, 1'000'000'000);  // TCP + auth on a busy host
  Result<std::unique_ptr<prim::Group>> one = unavailable("probe: no group");
  if (directory.empty()) {
    const std::string ep[1] = {name};
    one = prim::Group::connect(*device, ep, g);
  } else {
    prim::ReplicaHost* h[1] = {directory.at(name)};
    one = prim::Group::create(*device, h, g);
  }
  HL_RETURN_IF_ERROR(one.status());
  return (*one)->heartbeat(0, o.membership.probe_timeout_ns).status();
}

// REQUIRES: life exclusive.
Status Store::Impl::reconfigure_locked() {
  if (!has_membership()) return failed_precondition("reconfigure: the store has no membership (StoreOptions::membership)");
  if (fenced) {
    std::lock_guard<std::mutex> l(mu);
    return refuse_locked();
  }
  const uint64_t t0 = now();
  {
    std::lock_guard<std::mutex> l(mu);
    break_locked("reconfiguring");
  }
  group.reset();  // our members are dropped wherever they can be
  forget_in_flight();
  coord::ConfigStore& cs = *o.membership.config;
  if (cs.sessions_lost() != claimed_sessions)
    return fence_locked(tenant_text(o.tenant) + ": this client lost its coordination session (" + cs.describe() +
                        "), so a standby may own the tenant now");
  Result<coord::Versioned> now_rec = cs.read(o.tenant);
  HL_RETURN_IF_ERROR(now_rec.status());
  if (now_rec->version != record.version || now_rec->config.owner != o.membership.owner)
    return fence_locked(tenant_text(o.tenant) + " was taken over: its record is at epoch " +
                        std::to_string(now_rec->config.epoch) + ", owned by " +
                        (now_rec->config.owner.empty() ? std::string("nobody") : now_rec->config.owner));
  // Ask every serving replica.
  coord::TenantConfig next = record.config;
  uint32_t alive = 0, serving = 0;
  std::string dead_list;
  for (auto& e : next.chain) {
    if (e.state != coord::ReplicaState::kServing) continue;
    ++serving;
    const Status p = probe(e.endpoint);
    if (p.code() == StatusCode::kPermissionDenied)
      return fence_locked(tenant_text(o.tenant) + ": replica " + e.endpoint + " refuses epoch " +
                          std::to_string(record.config.epoch) + ": " + p.to_string());
    if (p.is_ok()) {
      ++alive;
      continue;
    }
    e.state = coord::ReplicaState::kOffline;
    dead_list += (dead_list.empty() ? "" : ", ") + e.endpoint + " (" + p.to_string() + ")";
  }
  if (alive < o.membership.min_replicas) {
    std::lock_guard<std::mutex> l(mu);
    broken_reason = "only " + std::to_string(alive) + " of " + std::to_string(serving) +
                    " replicas answer, fewer than min_replicas " + std::to_string(o.membership.min_replicas) +
                    (dead_list.empty() ? "" : ": " + dead_list);
    return unavailable(broken_reason);
  }
  if (alive < serving) {
    next.epoch = record.config.epoch + 1;
    Result<int64_t> v = cs.compare_and_set(o.tenant, record, next);
    if (v.status().code() == StatusCode::kAborted)
      return fence_locked(tenant_text(o.tenant) + "'s record changed under this store's reconfiguration");
    HL_RETURN_IF_ERROR(v.status());
    {
      std::lock_guard<std::mutex> l(mu);
      record = {next, *v};
      stats.replicas_removed += serving - alive;
    }
    log(LogLevel::kWarn, "txn", "replicas_removed",
        {{"tenant", o.tenant}, {"epoch", next.epoch}, {"removed", dead_list}, {"serving", alive}});
  }
  HL_RETURN_IF_ERROR(use_chain(record.config));
  RecoveryOptions how;
  how.allow_resize = true;
  HL_RETURN_IF_ERROR(recover_locked(how));
  std::lock_guard<std::mutex> l(mu);
  ++stats.reconfigurations;
  stats.last_reconfigure_ns = now() - t0;
  return Status::ok();
}

// What kReconfigure does after a call met a broken chain: reconfigures once
// (unless another thread already did) and returns the call's own error.
Status Store::Impl::heal_after(Status failed) {
  if (failed.is_ok() || !chain_failure(failed) || !has_membership() ||
      o.membership.on_failure != FailurePolicy::kReconfigure)
    return failed;
  std::unique_lock<std::shared_mutex> life_lock(life);
  {
    std::lock_guard<std::mutex> l(mu);
    if (healthy || fenced) return failed;
  }
  const Status r = reconfigure_locked();
  if (!r.is_ok())
    log(LogLevel::kWarn, "txn", "reconfigure_failed", {{"tenant", o.tenant}, {"reason", r.to_string()}});
  return failed;
}

Status Store::Impl::add_replica(const std::string& name, prim::ReplicaHost* host) {
  if (!has_membership()) return failed_precondition("add_replica: the store has no membership (StoreOptions::membership)");
  coord::ConfigStore& cs = *o.membership.config;
  coord::TenantConfig joined;
  uint32_t position = 0;
  {  // 1. The record: the replica joins as syncing, at the tail, under a new epoch.
    std::unique_lock<std::shared_mutex> life_lock(life);
    {
      std::lock_guard<std::mutex> l(mu);
      if (fenced || !healthy || !group) return refuse_locked();
    }
    if (directory.empty() != (host == nullptr))
      return invalid_argument(directory.empty() ? "add_replica: a store over daemons names a replica by endpoint, with no host"
                                                : "add_replica: a store over in-process hosts needs the replica's host");
    coord::TenantConfig next = record.config;
    uint32_t serving = 0;
    for (const auto& e : next.chain) {
      if (e.state == coord::ReplicaState::kServing) ++serving;
      if (e.endpoint == name && e.state == coord::ReplicaState::kServing)
        return Status(StatusCode::kAlreadyExists, "add_replica: " + name + " already serves " + tenant_text(o.tenant));
    }
    if (serving + 1 > prim::kMaxReplicas)
      return Status(StatusCode::kResourceExhausted, "add_replica: a chain has at most " +
                                                        std::to_string(prim::kMaxReplicas) + " replicas");
    std::erase_if(next.chain, [&](const coord::ReplicaEntry& e) { return e.endpoint == name; });
    next.chain.push_back({name, coord::ReplicaState::kSyncing});
    next.epoch = record.config.epoch + 1;
    HL_RETURN_IF_ERROR(coord::check_config(next));
    if (host) {
      auto [it, fresh] = directory.emplace(name, host);
      if (!fresh && it->second != host)
        return invalid_argument("add_replica: the name " + name + " belongs to another host of this store");
      if (fresh) holds.emplace_back(*host);
    }
    Result<int64_t> v = cs.compare_and_set(o.tenant, record, next);
    if (v.status().code() == StatusCode::kAborted)
      return fence_locked(tenant_text(o.tenant) + "'s record changed: another client took the tenant over");
    HL_RETURN_IF_ERROR(v.status());
    std::lock_guard<std::mutex> l(mu);
    record = {next, *v};
    joined = next;
    position = serving;
  }
  // 2. Transfer, while the chain commits: the tail's region, chunk by chunk,
  // into the new replica over a group of its own (at the new epoch).
  {
    std::shared_lock<std::shared_mutex> life_lock(life);
    if (!group) {
      std::lock_guard<std::mutex> l(mu);
      return refuse_locked();
    }
    prim::GroupOptions g = o.group;
    g.tenant = o.tenant;
    g.region_size = lay.region;
    g.epoch = joined.epoch;
    Result<std::unique_ptr<prim::Group>> copy = unavailable("add_replica: no group");
    if (host) {
      prim::ReplicaHost* h[1] = {host};
      copy = prim::Group::create(*device, h, g);
    } else {
      const std::string ep[1] = {name};
      copy = prim::Group::connect(*device, ep, g);
    }
    HL_RETURN_IF_ERROR(copy.status());
    const size_t chunk = std::min<size_t>(kChunk, o.group.staging_bytes);
    std::vector<std::byte> buf(chunk);
    std::deque<prim::Op> ops;
    const uint32_t ref = group->replicas() - 1;
    for (uint64_t at = 0; at < lay.region; at += chunk) {
      const size_t len = std::min<uint64_t>(chunk, lay.region - at);
      HL_RETURN_IF_ERROR(group->read(ref, at, {buf.data(), len}));
      HL_RETURN_IF_ERROR((*copy)->write(ops.emplace_back(), at, {buf.data(), len}));
      if (ops.size() >= 8) {
        HL_RETURN_IF_ERROR((*copy)->wait(ops.front()));
        ops.pop_front();
      }
    }
    HL_RETURN_IF_ERROR((*copy)->flush(ops.emplace_back(), 0, lay.region));
    for (auto& op : ops) HL_RETURN_IF_ERROR((*copy)->wait(op));
    std::lock_guard<std::mutex> l(mu);
    stats.transferred_bytes += lay.region;
  }
  // 3. Catch-up: the chain is rebuilt with the replica at its tail and
  // recovered (what changed during the transfer is resynchronised); then the
  // record marks it serving.
  std::unique_lock<std::shared_mutex> life_lock(life);
  const uint64_t t0 = now();
  {
    std::lock_guard<std::mutex> l(mu);
    if (fenced) return refuse_locked();
  }
  HL_RETURN_IF_ERROR(use_chain(record.config, name));
  RecoveryOptions how;
  how.allow_resize = true;
  how.reseed_mask = 1u << position;
  HL_RETURN_IF_ERROR(recover_locked(how));
  coord::TenantConfig next = record.config;
  for (auto& e : next.chain)
    if (e.endpoint == name) e.state = coord::ReplicaState::kServing;
  next.epoch = record.config.epoch + 1;
  Result<int64_t> v = cs.compare_and_set(o.tenant, record, next);
  if (v.status().code() == StatusCode::kAborted)
    return fence_locked(tenant_text(o.tenant) + "'s record changed: another client took the tenant over");
  HL_RETURN_IF_ERROR(v.status());
  std::lock_guard<std::mutex> l(mu);
  record = {next, *v};
  ++stats.replicas_added;
  stats.last_join_pause_ns = now() - t0;
  log(LogLevel::kInfo, "txn", "replica_added", {{"tenant", o.tenant}, {"epoch", next.epoch}, {"replica", name}});
  return Status::ok();
}

// The fast failure signal: every interval, each replica's heartbeat counter
// by RDMA READ. A READ unanswered or a counter still for heartbeat_timeout_ns
// breaks the chain; the policy then runs here, with no caller waiting.
void Store::Impl::run_monitor() {
  const auto interval = std::chrono::nanoseconds(o.membership.heartbeat_interval_ns);
  const uint64_t timeout = std::max<uint64_t>(o.membership.heartbeat_timeout_ns, 1'000'000);
  auto mono = [] {
    return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now().time_since_epoch()).count());
  };
  std::vector<uint64_t> last, since;
  const prim::Group* seen = nullptr;
  uint64_t idle = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> l(monitor_mu);
      if (monitor_cv.wait_for(l, interval, [&] { return monitor_stop; })) return;
    }
    Status failed;
    {
      std::shared_lock<std::shared_mutex> life_lock(life, std::try_to_lock);
      if (!life_lock.owns_lock()) continue;  // a reconfiguration is running
      bool broken;
      {
        std::lock_guard<std::mutex> l(mu);
        if (fenced) return;
        broken = !healthy;
      }
      if (o.membership.config->sessions_lost() != claimed_sessions) {
        // Its session is gone: a standby may take over; stop first.
        life_lock.unlock();
        std::unique_lock<std::shared_mutex> excl(life);
        (void)fence_locked(tenant_text(o.tenant) + ": this client lost its coordination session (" +
                           o.membership.config->describe() + "), so a standby may own the tenant now");
        return;
      }
      if (broken || !group) {
        // Broken and nobody calling: heal now and then (each try probes every replica).
        if (o.membership.on_failure == FailurePolicy::kReconfigure && ++idle % 10 == 0)
          failed = unavailable("the chain is broken");
      } else {
        idle = 0;
        const uint32_t n = group->replicas();
        if (group.get() != seen) {
          seen = group.get();
          last.assign(n, UINT64_MAX);
          since.assign(n, mono());
        }
        for (uint32_t i = 0; i < n && failed.is_ok(); ++i) {
          Result<uint64_t> hb = group->heartbeat(i, timeout);
          const uint64_t t = mono();
          if (!hb.is_ok()) {
            failed = unavailable("replica " + std::to_string(i) + " did not answer a heartbeat READ: " +
                                 hb.status().to_string());
          } else if (*hb != last[i]) {
            last[i] = *hb;
            since[i] = t;
          } else if (t - since[i] > timeout) {
            failed = unavailable("the heartbeat of replica " + std::to_string(i) + " has not moved for " +
                                 std::to_string((t - since[i]) / 1'000'000) + " ms");
          }
        }
        if (!failed.is_ok()) {
          group->fail(failed);
          std::lock_guard<std::mutex> l(mu);
          break_locked(failed.message());
          ++stats.heartbeat_failures;
          log(LogLevel::kWarn, "txn", "heartbeat_failed", {{"tenant", o.tenant}, {"reason", failed.message()}});
        }
      }
    }
    if (!failed.is_ok()) (void)heal_after(failed);
  }
}

Status Store::reconfigure() {
  std::unique_lock<std::shared_mutex> life_lock(impl_->life);
  return impl_->reconfigure_locked();
}

Status Store::add_replica(const std::string& name, prim::ReplicaHost* host) { return impl_->add_replica(name, host); }

Result<bool> Store::outcome(const TxnId& t) const {
  if (t.is_zero()) return invalid_argument("outcome: a zero transaction id");
  std::lock_guard<std::mutex> l(impl_->mu);
  for (const auto& [e, end] : impl_->ended)
    if (e == t.epoch) return t.lsn < end;
  if (t.epoch == impl_->epoch && impl_->healthy && t.lsn < impl_->applied_lsn) return true;
  return not_found("outcome: transaction " + std::to_string(t.epoch) + ":" + std::to_string(t.lsn) +
                   " is of an epoch no recovery of this store has ended");
}

coord::TenantConfig Store::membership() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->record.config;
}
uint64_t Store::epoch() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return impl_->record.config.epoch;
}

}  // namespace hyperloop::txn
