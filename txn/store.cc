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
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "format.h"
#include "hyperloop/internal/memory_limits.h"

namespace hyperloop::txn {

using namespace internal;

// ---- in-flight commits ---------------------------------------------------------------------
// The Ops of one commit: [0, stripes) lock gCAS, then the record gWRITE and
// its gFLUSH; after the commit point the gMEMCPYs and the unlock gCAS. Every
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
  std::deque<std::unique_ptr<InFlight>> applying;  // in LSN order
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
  Status commit(std::vector<Transaction::Write>& writes, std::vector<Transaction::Read>& reads);
  Status read(uint64_t offset, std::span<std::byte> dst, std::vector<Transaction::Read>& reads);
  Status validate_locked(const std::vector<Transaction::Read>& reads) const;
  void reap_locked();
  void truncate_locked(bool force);
  Status refuse_locked() const {
    return unavailable("store needs recover(): " + (broken_reason.empty() ? "not recovered" : broken_reason));
  }
  void break_locked(std::string why) {
    if (healthy) broken_reason = std::move(why);
    healthy = false;
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
  Status s = store_->impl_->read(offset, dst, reads_);
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
  Status st = s->impl_->commit(writes, reads);
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
Status Store::Impl::commit(std::vector<Transaction::Write>& writes, std::vector<Transaction::Read>& reads) {
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

  auto owned = std::make_unique<InFlight>(2 * stripes.size() + ranges.size() + 2);
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

  // Take the stripes and the LSN, and issue lock, record, flush in this order.
  const uint32_t tag = next_tag;
  next_tag = next_tag % kMaxTag + 1;
  const uint64_t txn_id = next_txn++;
  fl->lsn = next_lsn++;
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
  if (st.is_ok()) st = group->write(fl->ops[fl->issued], record_at, rec.bytes);
  if (st.is_ok()) ++fl->issued;
  if (st.is_ok()) st = group->flush(fl->ops[fl->issued], record_at, rec.bytes.size());
  if (st.is_ok()) ++fl->issued;
  if (!st.is_ok()) {
    break_locked("commit could not issue: " + st.to_string());
    const bool nothing_sent = fl->issued == 0;
    if (nothing_sent && st.code() != StatusCode::kUnavailable) return st;
    return unavailable("commit in doubt (the chain broke while it was issued): " + st.to_string());
  }
  prim::Op& flush_op = fl->last();
  l.unlock();

  // The commit point: the record's gFLUSH acknowledged by the tail.
  Status waited_st = group->wait(flush_op);
  l.lock();
  if (!waited_st.is_ok() || !flush_op.done()) {
    break_locked("commit: " + waited_st.to_string());
    return unavailable("commit in doubt (the chain broke before the record was acknowledged): " +
                       waited_st.to_string());
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
  applying.clear();
  head_stage = HeadStage::kNone;
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
  // The group first: it may still use the Ops of in-flight commits.
  if (impl_) impl_->group.reset();
}

size_t Store::region_bytes(const StoreOptions& options) {
  Result<Layout> l = layout_of(options);
  return l.is_ok() ? l.value().region : 0;
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
  return start(std::move(impl));
}

Result<std::unique_ptr<Store>> Store::connect(rnic::Device& client, std::span<const std::string> replicas,
                                              const StoreOptions& options) {
  if (replicas.empty()) return invalid_argument("Store::connect: no replicas");
  HL_ASSIGN_OR_RETURN(auto impl, new_impl(client, options));
  impl->endpoints.assign(replicas.begin(), replicas.end());
  return start(std::move(impl));
}

// The store over its first group, recovered (or formatted).
Result<std::unique_ptr<Store>> Store::start(std::unique_ptr<Impl> impl) {
  std::unique_ptr<Store> s(new Store(std::move(impl)));
  HL_RETURN_IF_ERROR(s->impl_->recover_locked(s->impl_->o.recovery));
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

Status Store::drain() {
  std::shared_lock<std::shared_mutex> life_lock(impl_->life);
  auto& im = *impl_;
  if (!im.group) {
    std::lock_guard<std::mutex> l(im.mu);
    return im.refuse_locked();
  }
  // Polls (no pointers into the apply queue: another thread may reap it).
  // Every operation completes or fails within op_timeout_ns.
  for (;;) {
    {
      std::lock_guard<std::mutex> l(im.mu);
      if (!im.healthy) return im.refuse_locked();
      im.reap_locked();
      if (im.applying.empty() && im.head_stage == Impl::HeadStage::kNone) return Status::ok();
    }
    im.group->poll();
    im.turn();
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

}  // namespace hyperloop::txn
