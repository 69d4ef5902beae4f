// Private to rnic/soft: the fabric's state (in-process ports, link faults,
// the TCP wire).
#pragma once

#include <map>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "nic_impl.h"

namespace hyperloop::soft {

struct TcpLoop;

struct Fabric::Impl {
  std::mutex mu;
  std::unordered_map<uint64_t, std::weak_ptr<Port>> ports;
  // Faults by unordered NIC pair (smaller uid first).
  std::set<std::pair<uint64_t, uint64_t>> cut;
  std::map<std::pair<uint64_t, uint64_t>, Fabric::LinkFaults> lossy;
  std::mt19937_64 rng{0x5eed};
  std::atomic<size_t> fault_count{0};  // lets transmit skip the lock when there are none
  void recount() { fault_count.store(cut.size() + lossy.size(), std::memory_order_release); }

  uint64_t id = 0;  // random: tells this fabric's QP addresses from others'

  FabricOptions opts;

  // TCP (tcp.cc): the listening endpoint, the event loop (started lazily),
  // outbound links by endpoint.
  std::mutex tcp_mu;
  int listen_fd = -1;
  uint32_t listen_ipv4 = 0;  // network order
  uint16_t listen_port = 0;
  std::shared_ptr<TcpLoop> loop;  // guarded by tcp_mu
  std::map<std::pair<uint32_t, uint16_t>, std::shared_ptr<TcpLink>> links;
  std::atomic<bool> stopping{false};

  // WireStats, and the last refused packet (logged by the loop, rate-limited).
  struct Counters {
    std::atomic<uint64_t> connections_accepted{0}, connections_refused{0}, connections_open{0},
        connections_closed{0}, frames_rejected{0}, bad_key{0}, wrong_connection{0}, queue_full{0},
        dead_link{0}, links_opened{0}, links_open{0}, connect_failures{0}, links_cut{0},
        backpressure_pauses{0};
    std::atomic<uint64_t> last_drop_nic{0}, last_drop_qpn{0}, last_drop_conn{0};
  } counters;
};

// Stops listening, closes every connection and joins the threads (tcp.cc).
void tcp_shutdown(Fabric::Impl* f);


}  // namespace hyperloop::soft
