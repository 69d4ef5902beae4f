// wire_test_util.h: hosts (fabric + NIC + memory) on the TCP wire in one
// process, QP pairs between them, a raw-socket "attacker", and log capture.
// Waits poll a condition with a deadline; nothing sleeps to synchronise.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hyperloop/log.h"
#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"

namespace hyperloop::wire_test {

namespace rn = ::hyperloop::rnic;
namespace soft = ::hyperloop::soft;
using namespace std::chrono_literals;

// Polls pred until true or the deadline; returns pred's last value. The
// yield between polls is not synchronisation: the condition is.
inline bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds deadline = 10s) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() > end) return pred();
    std::this_thread::yield();
  }
}

template <typename T>
T must(Result<T> r, const char* what) {
  if (!r.is_ok()) throw std::runtime_error(std::string(what) + ": " + r.status().to_string());
  return std::move(r).value();
}
inline void must(const Status& s, const char* what) {
  if (!s.is_ok()) throw std::runtime_error(std::string(what) + ": " + s.to_string());
}

// One fabric listening on 127.0.0.1 with one NIC, a PD, a CQ and a
// registered memory area.
struct Host {
  explicit Host(soft::FabricOptions fo = {}, soft::NicOptions no = {}, size_t mem_bytes = 1 << 20,
                bool listen = true)
      : fabric(fo), mem(mem_bytes) {
    if (listen) port = must(fabric.listen("127.0.0.1"), "listen");
    nic = must(fabric.create_nic(no), "create_nic");
    pd = must(nic->alloc_pd(), "alloc_pd");
    cq = must(nic->create_cq(rn::CqAttr{4096}), "create_cq");
    mr = must(pd->register_memory(mem.data(), mem.size(), rn::kAccessAll), "register_memory");
  }
  std::unique_ptr<rn::QueuePair> qp(uint8_t retry_count = 7, rn::CompletionQueue* on = nullptr) {
    rn::QpAttr a;
    a.send_cq = on ? on : cq.get();
    a.recv_cq = on ? on : cq.get();
    a.retry_count = retry_count;
    auto q = must(pd->create_qp(a), "create_qp");
    must(q->init(rn::kAccessAllRemote), "init");
    return q;
  }
  soft::Fabric fabric;
  uint16_t port = 0;
  std::vector<std::byte> mem;
  std::unique_ptr<soft::Nic> nic;
  std::unique_ptr<rn::ProtectionDomain> pd;
  std::unique_ptr<rn::CompletionQueue> cq;
  std::unique_ptr<rn::MemoryRegion> mr;
  ~Host() {
    mr.reset();
    // QPs are owned by tests and destroyed before the host.
    cq.reset();
    pd.reset();
  }
};

inline void connect_rts(rn::QueuePair& a, rn::QueuePair& b) {
  must(a.connect(b.address()), "connect a");
  must(b.connect(a.address()), "connect b");
  must(a.ready_to_send(), "rts a");
  must(b.ready_to_send(), "rts b");
}

// Waits for the next completion on cq (deadline); kGeneralError if none.
inline rn::WorkCompletion next_wc(rn::CompletionQueue& cq, std::chrono::milliseconds deadline = 10s) {
  rn::WorkCompletion wc;
  wc.status = rn::WcStatus::kGeneralError;
  wc.wr_id = ~0ull - 1;
  eventually([&] {
    auto r = cq.poll(std::span<rn::WorkCompletion>(&wc, 1));
    return r.is_ok() && r.value() == 1;
  }, deadline);
  return wc;
}

// The owner's replicated-write step: WRITE bytes at `off` of dst's memory,
// then a 1-byte READ (the read-after-write flush), both from `src`'s memory.
// Returns the READ's completion status (the WRITE is unsignaled: errors
// still complete).
inline rn::WcStatus write_and_flush(Host& src, rn::QueuePair& q, Host& dst, size_t off, std::span<const std::byte> bytes,
                                    std::chrono::milliseconds deadline = 10s) {
  std::memcpy(src.mem.data(), bytes.data(), bytes.size());
  const rn::Sge w = src.mr->sge(0, uint32_t(bytes.size()));
  rn::SendWr wr;
  wr.wr_id = 1;
  wr.opcode = rn::WrOpcode::kRdmaWrite;
  wr.sg = std::span<const rn::Sge>(&w, 1);
  wr.remote_addr = dst.mr->remote_addr(off);
  wr.rkey = dst.mr->rkey();
  if (!q.post_send(wr).is_ok()) return rn::WcStatus::kGeneralError;
  const rn::Sge r = src.mr->sge(src.mem.size() - 8, 1);
  rn::SendWr rd;
  rd.wr_id = 2;
  rd.opcode = rn::WrOpcode::kRdmaRead;
  rd.flags = rn::kSendSignaled;
  rd.sg = std::span<const rn::Sge>(&r, 1);
  rd.remote_addr = dst.mr->remote_addr(off);
  rd.rkey = dst.mr->rkey();
  if (!q.post_send(rd).is_ok()) return rn::WcStatus::kGeneralError;
  const rn::WorkCompletion wc = next_wc(*src.cq, deadline);
  return wc.status;
}

// A raw TCP client (the attacker, or a silent peer).
inline int dial(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}
inline bool send_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t k = ::send(fd, c, n, MSG_NOSIGNAL);
    if (k <= 0) return false;
    c += k;
    n -= size_t(k);
  }
  return true;
}
// True once the peer closed fd (EOF or reset), within the deadline.
inline bool closed_by_peer(int fd, std::chrono::milliseconds deadline = 10s) {
  return eventually([&] {
    char b[256];
    const ssize_t n = ::recv(fd, b, sizeof b, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
  }, deadline);
}

// A listening socket on 127.0.0.1 that the test controls.
struct RawListener {
  explicit RawListener(int backlog, int rcvbuf = 0) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, backlog) != 0)
      throw std::runtime_error("RawListener");
    socklen_t len = sizeof sa;
    getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    port = ntohs(sa.sin_port);
  }
  ~RawListener() {
    for (int c : clients) close(c);
    close(fd);
  }
  int fd = -1;
  uint16_t port = 0;
  std::vector<int> clients;
};

// Collects wire log records.
struct LogCapture {
  struct Rec {
    LogLevel level;
    std::string component, event, fields;
  };
  LogCapture() {
    set_log_sink([this](const LogRecord& r) {
      std::string f;
      for (const auto& x : r.fields) f += std::string(x.key) + "=" + x.value + " ";
      std::lock_guard<std::mutex> l(mu);
      recs.push_back({r.level, std::string(r.component), std::string(r.event), f});
    }, LogLevel::kDebug);
  }
  ~LogCapture() { reset_log_sink(); }
  size_t count(const std::string& event, const std::string& needle = "") {
    std::lock_guard<std::mutex> l(mu);
    size_t n = 0;
    for (auto& r : recs)
      if (r.component == "wire" && r.event == event && r.fields.find(needle) != std::string::npos) ++n;
    return n;
  }
  std::mutex mu;
  std::vector<Rec> recs;
};

inline uint64_t rss_kib() {
  FILE* f = fopen("/proc/self/status", "r");
  char line[256];
  uint64_t kib = 0;
  while (f && fgets(line, sizeof line, f))
    if (std::strncmp(line, "VmRSS:", 6) == 0) kib = std::strtoull(line + 6, nullptr, 10);
  if (f) fclose(f);
  return kib;
}

}  // namespace hyperloop::wire_test
