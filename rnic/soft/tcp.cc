// rnic/soft: the TCP wire between software NICs of different fabrics
// (processes, hosts). A fabric that listen()s is reachable at an IPv4
// endpoint carried in its QPs' addresses. Packets to a NIC of another fabric
// go over one outbound connection per remote endpoint, framed as a fixed
// header plus payload; each inbound connection has a reader thread that puts
// packets into the local NIC's inbox. RC semantics come from the NICs above
// (PSNs, acknowledgements, retransmission): a connection that breaks simply
// loses packets, and the QPs fail after their retry timeouts.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "fabric_impl.h"
#include "hyperloop/internal/socket_io.h"

namespace hyperloop::soft {

namespace {

using hyperloop::internal::read_full;
using hyperloop::internal::set_nodelay;
using hyperloop::internal::write_full;

constexpr uint32_t kAddrMagic = 0x484c5357;   // "HLSW": a soft RNIC QP address
constexpr uint32_t kFrameMagic = 0x484c5046;  // "HLPF": a packet frame
constexpr size_t kAddrBytes = 36;
constexpr uint32_t kMaxFramePayload = 64u << 20;

// The frame header: every Packet field but the payload, little-endian.
struct __attribute__((packed)) FrameHeader {
  uint32_t magic;
  uint32_t payload_len;
  uint64_t dst_uid;
  uint64_t src_nic;
  uint32_t dst_qpn, src_qpn, psn, rkey, length, imm;
  uint64_t raddr, swap_add, compare, result;
  uint8_t type, nak, opcode, solicited;
};


}  // namespace

struct TcpLink {
  int fd = -1;
  std::mutex send_mu;
  std::atomic<bool> alive{true};
  ~TcpLink() {
    if (fd >= 0) close(fd);
  }
};

bool tcp_alive(const TcpLink& link) { return link.alive.load(std::memory_order_acquire); }

bool tcp_send(TcpLink& link, const Packet& p, uint64_t dst_uid) {
  if (!tcp_alive(link)) return false;
  FrameHeader h{};
  h.magic = kFrameMagic;
  h.payload_len = uint32_t(p.payload.size());
  h.dst_uid = dst_uid;
  h.src_nic = p.src_nic;
  h.dst_qpn = p.dst_qpn;
  h.src_qpn = p.src_qpn;
  h.psn = p.psn;
  h.rkey = p.rkey;
  h.length = p.length;
  h.imm = p.imm;
  h.raddr = p.raddr;
  h.swap_add = p.swap_add;
  h.compare = p.compare;
  h.result = p.result;
  h.type = uint8_t(p.type);
  h.nak = uint8_t(p.nak);
  h.opcode = p.opcode;
  h.solicited = p.solicited;
  std::lock_guard<std::mutex> l(link.send_mu);
  if (!write_full(link.fd, &h, sizeof h) || (h.payload_len && !write_full(link.fd, p.payload.data(), h.payload_len))) {
    link.alive.store(false, std::memory_order_release);
    return false;
  }
  return true;
}

// ---- addresses ----------------------------------------------------------------------
rnic::QpAddress encode_address(const PeerAddress& a) {
  rnic::QpAddress blob;
  std::byte* p = blob.bytes.data();
  const uint32_t magic = kAddrMagic;
  std::memcpy(p, &magic, 4);
  std::memcpy(p + 4, &a.fabric_id, 8);
  std::memcpy(p + 12, &a.nic_uid, 8);
  std::memcpy(p + 20, &a.qpn, 4);
  std::memcpy(p + 24, &a.ipv4, 4);
  std::memcpy(p + 28, &a.port, 2);
  blob.size = kAddrBytes;
  return blob;
}

bool decode_address(const rnic::QpAddress& blob, PeerAddress* a) {
  if (blob.size != kAddrBytes) return false;
  const std::byte* p = blob.bytes.data();
  uint32_t magic;
  std::memcpy(&magic, p, 4);
  if (magic != kAddrMagic) return false;
  std::memcpy(&a->fabric_id, p + 4, 8);
  std::memcpy(&a->nic_uid, p + 12, 8);
  std::memcpy(&a->qpn, p + 20, 4);
  std::memcpy(&a->ipv4, p + 24, 4);
  std::memcpy(&a->port, p + 28, 2);
  return true;
}

void fabric_identity(Fabric::Impl* f, uint64_t* id, uint32_t* ipv4, uint16_t* port) {
  std::lock_guard<std::mutex> l(f->tcp_mu);
  *id = f->id;
  *ipv4 = f->listen_ipv4;
  *port = f->listen_port;
}

std::shared_ptr<Port> fabric_port(Fabric::Impl* fabric, uint64_t uid) {
  std::lock_guard<std::mutex> l(fabric->mu);
  auto it = fabric->ports.find(uid);
  if (it == fabric->ports.end()) return nullptr;
  auto port = it->second.lock();
  return port && port->alive.load() ? port : nullptr;
}

Result<std::shared_ptr<Port>> fabric_peer_port(Fabric::Impl* f, const PeerAddress& peer) {
  if (peer.fabric_id == f->id) {
    auto port = fabric_port(f, peer.nic_uid);
    if (!port) return not_found("no soft NIC with that address on this fabric");
    return port;
  }
  if (peer.ipv4 == 0) return not_found("the QP's fabric is another one and does not listen on TCP");
  std::shared_ptr<TcpLink> link;
  {
    std::lock_guard<std::mutex> l(f->tcp_mu);
    auto it = f->links.find({peer.ipv4, peer.port});
    if (it != f->links.end() && tcp_alive(*it->second)) {
      // We never read from an outbound link, so a peer that died (and maybe
      // restarted on the same port) shows up only as EOF or a hang-up here.
      pollfd pfd{it->second->fd, POLLIN | POLLRDHUP, 0};
      if (::poll(&pfd, 1, 0) != 0) it->second->alive.store(false, std::memory_order_release);
      else link = it->second;
    }
  }
  if (!link) {
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &peer.ipv4, ip, sizeof ip);
    const std::string where = std::string(ip) + ":" + std::to_string(peer.port);
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return unavailable("socket: " + std::string(std::strerror(errno)));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = peer.ipv4;
    sa.sin_port = htons(peer.port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      const std::string why = std::strerror(errno);
      close(fd);
      return unavailable("cannot reach the soft fabric at " + where + ": " + why);
    }
    set_nodelay(fd);
    link = std::make_shared<TcpLink>();
    link->fd = fd;
    std::lock_guard<std::mutex> l(f->tcp_mu);
    f->links[{peer.ipv4, peer.port}] = link;
  }
  auto port = std::make_shared<Port>();
  port->uid = peer.nic_uid;
  port->link = std::move(link);
  return port;
}

// ---- listening --------------------------------------------------------------------------
namespace {

void read_loop(Fabric::Impl* f, int fd) {
  for (;;) {
    FrameHeader h;
    if (!read_full(fd, &h, sizeof h) || h.magic != kFrameMagic || h.payload_len > kMaxFramePayload) break;
    auto* p = new Packet();
    p->payload.resize(h.payload_len);
    if (h.payload_len && !read_full(fd, p->payload.data(), h.payload_len)) {
      delete p;
      break;
    }
    p->type = PacketType(h.type);
    p->nak = NakCode(h.nak);
    p->opcode = h.opcode;
    p->solicited = h.solicited;
    p->dst_qpn = h.dst_qpn;
    p->src_qpn = h.src_qpn;
    p->psn = h.psn;
    p->src_nic = h.src_nic;
    p->raddr = h.raddr;
    p->rkey = h.rkey;
    p->length = h.length;
    p->swap_add = h.swap_add;
    p->compare = h.compare;
    p->result = h.result;
    p->imm = h.imm;
    std::shared_ptr<Port> port = fabric_port(f, h.dst_uid);
    if (!port) {  // that NIC is gone: the packet is lost, as on a wire
      delete p;
      continue;
    }
    std::lock_guard<std::mutex> l(port->mu);
    port->inbox.push_back(*p);
    port->queued.fetch_add(1, std::memory_order_release);
  }
  shutdown(fd, SHUT_RDWR);
}

void accept_loop(Fabric::Impl* f) {
  for (;;) {
    const int fd = accept4(f->listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // the listening socket was shut down
    }
    if (f->stopping.load()) {
      close(fd);
      return;
    }
    set_nodelay(fd);
    std::lock_guard<std::mutex> l(f->tcp_mu);
    f->readers.emplace_back(fd, std::thread(read_loop, f, fd));
  }
}

}  // namespace

Result<uint16_t> Fabric::listen(const std::string& ipv4, uint16_t port) {
  Impl* f = impl_.get();
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (inet_pton(AF_INET, ipv4.c_str(), &sa.sin_addr) != 1)
    return invalid_argument("'" + ipv4 + "' is not an IPv4 address");
  if (sa.sin_addr.s_addr == htonl(INADDR_ANY))
    return invalid_argument("listen on a concrete address (it travels in QP addresses), not 0.0.0.0");
  std::lock_guard<std::mutex> l(f->tcp_mu);
  if (f->listen_fd >= 0) return Status(StatusCode::kAlreadyExists, "this fabric already listens");
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return unavailable("socket: " + std::string(std::strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 64) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    return unavailable("cannot listen on " + ipv4 + ":" + std::to_string(port) + ": " + why);
  }
  socklen_t len = sizeof sa;
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  f->listen_fd = fd;
  f->listen_ipv4 = sa.sin_addr.s_addr;
  f->listen_port = ntohs(sa.sin_port);
  f->acceptor = std::thread(accept_loop, f);
  return f->listen_port;
}

void tcp_shutdown(Fabric::Impl* f) {
  f->stopping.store(true);
  std::vector<std::pair<int, std::thread>> readers;
  std::thread acceptor;
  {
    std::lock_guard<std::mutex> l(f->tcp_mu);
    if (f->listen_fd >= 0) shutdown(f->listen_fd, SHUT_RDWR);
    acceptor = std::move(f->acceptor);
  }
  if (acceptor.joinable()) acceptor.join();
  {
    std::lock_guard<std::mutex> l(f->tcp_mu);
    readers.swap(f->readers);
    for (auto& [fd, t] : readers) shutdown(fd, SHUT_RDWR);
    for (auto& [ep, link] : f->links) {
      link->alive.store(false);
      shutdown(link->fd, SHUT_RDWR);
    }
    if (f->listen_fd >= 0) close(f->listen_fd);
    f->listen_fd = -1;
  }
  for (auto& [fd, t] : readers) {
    t.join();
    close(fd);
  }
}

}  // namespace hyperloop::soft
