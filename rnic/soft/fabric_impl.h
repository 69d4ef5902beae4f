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

  // TCP (tcp.cc): the listening endpoint, the accept thread, one reader
  // thread per inbound connection, outbound links by endpoint.
  std::mutex tcp_mu;
  int listen_fd = -1;
  uint32_t listen_ipv4 = 0;  // network order
  uint16_t listen_port = 0;
  std::thread acceptor;
  std::vector<std::pair<int, std::thread>> readers;
  std::map<std::pair<uint32_t, uint16_t>, std::shared_ptr<TcpLink>> links;
  std::atomic<bool> stopping{false};
};

// Stops listening, closes every connection and joins the threads (tcp.cc).
void tcp_shutdown(Fabric::Impl* f);


}  // namespace hyperloop::soft
