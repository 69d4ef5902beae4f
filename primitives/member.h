// Private to primitives/: one tenant's position in a chain on a replica host,
// and what the client must know about it.
#pragma once

#include <atomic>
#include <string>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "chain_format.h"
#include "hyperloop/pmem.h"
#include "hyperloop/primitives.h"
#include "hyperloop/rnic.h"

namespace hyperloop::prim::internal {

// Control area of a member (registered memory): the armed counter the client
// reads for credit, a scratch word, the heartbeat, then one message buffer per slot.
inline constexpr size_t kArmedSeqOffset = 0;
inline constexpr size_t kScratchOffset = 8;
// A counter the agent bumps on every turn over the member: the client reads
// it with RDMA READ (Group::heartbeat) to learn the host is alive.
inline constexpr size_t kHeartbeatOffset = 16;
inline constexpr size_t kSlotsOffset = 64;

struct MemberInfo {
  uint64_t region_addr = 0;
  uint32_t region_lkey = 0;
  uint32_t region_rkey = 0;
  uint64_t ctrl_addr = 0;
  uint32_t ctrl_lkey = 0;
  uint32_t ctrl_rkey = 0;
  rnic::QpAddress in_addr;    // receives from the predecessor (or client)
  rnic::QpAddress out_addr;   // sends to the successor (or client, for the tail)
  rnic::QpAddress ctrl_addr_qp;  // the client's direct line (credits, reads)
  // How the client lays out this member's entries (chain_format.h): its
  // device's send WQE format in offload mode, kMlx5 in CPU forwarding.
  EntryFormat entry_format = EntryFormat::kMlx5;
};

// The address of replica `pos`'s result for the operation in slot `seq`:
// in its forward buffer, kEntryBytes into the slot's message buffer, which
// is `(seq mod slots)` strides past kSlotsOffset in its control area.
inline uint64_t slot_result_addr(uint64_t ctrl_addr, uint32_t slots, uint32_t n, uint32_t pos, uint64_t seq) {
  return ctrl_addr + kSlotsOffset + (seq & (slots - 1)) * slot_stride(n) + kEntryBytes + result_offset(n, pos);
}

struct Tenant;

struct Member {
  Tenant* tenant = nullptr;
  uint64_t id = 0;     // unique on its host: what connect/start/drop name
  uint64_t epoch = 0;  // GroupOptions::epoch of the group that created it
  uint32_t pos = 0;
  uint32_t n = 0;
  GroupOptions opts;
  size_t stride = 0;
  std::vector<std::byte> ctrl_mem_storage;
  std::byte* ctrl_mem = nullptr;
  std::unique_ptr<rnic::MemoryRegion> ctrl_mr;
  std::unique_ptr<rnic::CompletionQueue> in_rcq, loop_scq, out_scq, misc_cq;
  std::unique_ptr<rnic::QueuePair> in, out, loop, loop_peer, master, ctrl_qp;
  std::unique_ptr<rnic::MemoryRegion> loop_ring_mr, out_ring_mr;
  mlx5::SendRingView loop_ring, out_ring, master_ring;
  uint64_t armed_seq = 0;      // slots [0, armed_seq) have been armed
  uint64_t done_seq = 0;       // slots [0, done_seq) have completed here
  // Offload: out's SEND is signaled on every signal_every-th slot only (a
  // power of two dividing slots): one CQE, so at most one agent wake-up,
  // per that many operations; each CQE completes the slots up to its own.
  uint32_t signal_every = 1;
  uint32_t signal_offset = 0;  // < signal_every: where in each run of slots the signaled one is
  bool signaled_slot(uint64_t seq) const { return (seq + 1 + signal_offset) % signal_every == 0; }
  // The first signaled slot at or after seq.
  uint64_t next_signaled(uint64_t seq) const {
    return seq + (signal_every - (seq + 1 + signal_offset) % signal_every) % signal_every;
  }
  uint64_t recv_seq = 0;       // CPU mode: messages taken
  uint32_t quiet_turns = 0;    // offload: agent turns without a completion
  bool local_pending = false;  // CPU mode: message recv_seq-1 waits for its local op
  bool started = false;        // armed and serving; the agent skips it before
  EntryFormat format = EntryFormat::kMlx5;  // MemberInfo::entry_format
  // Offload: true where slots are re-armed in place in raw mlx5 rings
  // (rearm_slot); false where every use of a slot is posted anew through
  // post_send/post_recv (the patched rxe, whose ring the kernel consumes).
  bool rearm_in_place = true;
  std::atomic<bool> broken{false};
  std::string why;  // what broke it first (for the member_broken log)

  // Marks the member broken; the first reason is kept.
  void fail(std::string reason) {
    if (!broken.exchange(true)) why = std::move(reason);
  }

  std::byte* slot_buf(uint64_t seq) const { return ctrl_mem + kSlotsOffset + (seq & (opts.slots - 1)) * stride; }
  uint64_t addr_of(const std::byte* p) const { return reinterpret_cast<uint64_t>(p); }
  void beat() {
    std::atomic_ref<uint64_t> hb(*reinterpret_cast<uint64_t*>(ctrl_mem + kHeartbeatOffset));
    hb.store(hb.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }
  void publish_armed() {
    std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(ctrl_mem + kArmedSeqOffset))
        .store(armed_seq, std::memory_order_release);
  }
};

struct Tenant {
  uint32_t id = 0;
  size_t region_size = 0;
  std::unique_ptr<rnic::ProtectionDomain> pd;
  std::vector<std::byte> region_storage;         // DRAM region
  std::unique_ptr<PersistentMemory> pmem;        // or a persistent one
  std::byte* region = nullptr;
  std::unique_ptr<rnic::MemoryRegion> region_mr;
  std::unique_ptr<Member> member;  // the active chain position, if any
  // The highest GroupOptions::epoch a CREATE has carried for this tenant:
  // a CREATE below it is refused, one above the member's fences the member.
  uint64_t fence_epoch = 0;
  std::string epoch_path;  // where fence_epoch is kept (pmem tenants), else empty
  std::string secret;              // what remote clients must prove (empty: none accepted)
};

// The host side of Group::create, implemented in replica_host.cc.
// create_member gives the tenant's chain position to opts.epoch:
//   below the tenant's fence epoch        kPermissionDenied (a stale client)
//   a member of a lower epoch exists      that member is fenced first (its
//                                         forwarding queues to ERROR before
//                                         its receive queue, then destroyed)
//   a member of the same epoch exists     kAlreadyExists
// The member's id (CreatedMember::id) names it to the calls below; a call
// naming a member that is gone (fenced, dropped) changes nothing: connect
// and start return kPermissionDenied (fenced) or kNotFound, drop returns.
struct CreatedMember {
  MemberInfo info;
  uint64_t id = 0;
  uint64_t fenced_id = 0;  // the member this CREATE fenced (0: none)
};
Result<CreatedMember> create_member(ReplicaHost& host, uint32_t tenant, uint32_t pos, uint32_t n,
                                    const GroupOptions& opts);
Status connect_member(ReplicaHost& host, uint32_t tenant, uint64_t member_id, const rnic::QpAddress& prev,
                      const rnic::QpAddress& next, const rnic::QpAddress& client_ctrl);
// Arms every slot and starts serving. Called once all members are connected.
Status start_member(ReplicaHost& host, uint32_t tenant, uint64_t member_id);
void drop_member(ReplicaHost& host, uint32_t tenant, uint64_t member_id);

}  // namespace hyperloop::prim::internal
