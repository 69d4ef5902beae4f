// rnic/soft: the TCP wire between software NICs of different fabrics
// (processes, hosts). A fabric that listen()s is reachable at an IPv4
// endpoint carried in its QPs' addresses. Packets to a NIC of another fabric
// go over one outbound link per remote endpoint; packets from other fabrics
// arrive on inbound connections. RC semantics come from the NICs above (PSNs,
// acknowledgements, retransmission): a link that breaks or drops simply loses
// packets, and the QPs fail after their retry timeouts.
//
// One event-loop thread per fabric (TcpLoop) does all TCP I/O: accepting,
// non-blocking connects, reads with incremental frame parsing, writes. NIC
// threads call tcp_send with their NIC's mutex held, so it only appends to
// the link's bounded send queue (trying one non-blocking send first when the
// queue is empty, which saves a thread hop per packet and cannot block) and
// arms EPOLLOUT. Nothing here ever waits for a peer while holding a lock.
//
// Threat model (see also Fabric::listen in soft_rnic.h): anyone local may
// connect to the listening port and send anything. Frames are validated by
// wire_codec before anything is allocated; a bad frame closes its
// connection. Inbound connections are bounded in number and in what they may
// have queued in NICs (backpressure: the loop stops reading), outbound
// queues in bytes and packets. Authenticity of packets is the QPs' job
// (keys and connection binding, engine.cc process_inbox); the wire only
// tells them which connection a packet came from.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <unordered_map>

#include "fabric_impl.h"
#include "socket_io.h"
#include "hyperloop/log.h"
#include "wire_codec.h"

namespace hyperloop::soft {

using hyperloop::internal::set_nodelay;

namespace {

constexpr uint64_t kTickNs = 50'000'000;           // timer resolution of the loop
constexpr uint64_t kDropLogIntervalNs = 1'000'000'000;  // forged-packet logs: at most one a second
constexpr size_t kReadBuffer = 256 * 1024;
constexpr int kReadsPerEvent = 4;                  // fairness between connections
constexpr uint32_t kMaxSendQueuePackets = 65536;

enum Tag : uint64_t { kTagWake = 1, kTagListen = 2, kTagLink = 3, kTagConn = 4 };
uint64_t tagged(Tag t, uint64_t id) { return (uint64_t(t) << 56) | id; }

std::string endpoint(uint32_t ipv4, uint16_t port) {
  char ip[INET_ADDRSTRLEN] = "?";
  inet_ntop(AF_INET, &ipv4, ip, sizeof ip);
  return std::string(ip) + ":" + std::to_string(port);
}

void wlog(LogLevel level, std::string_view event, std::initializer_list<LogField> fields) {
  if (log_enabled(level)) log(level, "wire", event, fields);
}

}  // namespace

uint64_t random_key() {
  for (;;) {
    uint64_t k = 0;
    std::byte* p = reinterpret_cast<std::byte*>(&k);
    size_t got = 0;
    while (got < sizeof k) {
      const ssize_t n = getrandom(p + got, sizeof k - got, 0);
      if (n > 0) got += size_t(n);
      else if (errno != EINTR) std::abort();  // no CSPRNG: an unguessable key cannot be made
    }
    if (k != 0) return k;
  }
}

// ---- outbound links ------------------------------------------------------------------
struct TcpLink {
  enum State : uint8_t { kConnecting, kOpen, kDead };
  Fabric::Impl* f = nullptr;
  uint64_t id = 0;
  std::string where;                 // "ip:port", for logs
  std::pair<uint32_t, uint16_t> ep;
  int epfd = -1;                     // the loop's epoll (lives as long as the loop)

  std::mutex mu;                     // everything below; never held while logging
  std::atomic<uint8_t> state{kConnecting};
  int fd = -1;
  std::vector<std::byte> out;        // queued bytes are [out_off, out.size())
  size_t out_off = 0;
  uint64_t queued_total = 0;         // bytes ever queued / written (absolute positions)
  uint64_t written_total = 0;
  std::deque<uint64_t> frame_ends;   // absolute end of each queued frame: the packet count
  bool want_out = false;             // EPOLLOUT armed
  uint64_t connect_deadline = 0;
  uint64_t last_progress = 0;        // last time the queue was empty or moved
  ~TcpLink() {
    if (fd >= 0) close(fd);
  }

  size_t queued_bytes() const { return out.size() - out_off; }
  void arm(bool want) {  // mu held, state != kDead
    if (want == want_out) return;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (want ? uint32_t(EPOLLOUT) : 0u);
    ev.data.u64 = tagged(kTagLink, id);
    epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
    want_out = want;
  }
  void append(const std::byte* a, size_t n) { out.insert(out.end(), a, a + n); }
  // Bytes the kernel took: drop them and the frames they complete.
  void wrote(size_t n, uint64_t now) {
    out_off += n;
    written_total += n;
    last_progress = now;
    while (!frame_ends.empty() && frame_ends.front() <= written_total) frame_ends.pop_front();
    if (out_off == out.size()) {
      out.clear();
      out_off = 0;
      if (out.capacity() > (1u << 20)) out.shrink_to_fit();  // do not pin a burst's buffer
    } else if (out_off > (1u << 16) && out_off * 2 > out.size()) {
      out.erase(out.begin(), out.begin() + ptrdiff_t(out_off));
      out_off = 0;
    }
  }
  // Writes what the kernel takes now. False on a broken connection.
  bool flush(uint64_t now) {
    while (queued_bytes()) {
      const ssize_t n = ::send(fd, out.data() + out_off, queued_bytes(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        wrote(size_t(n), now);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      return false;
    }
    return true;
  }
};

bool tcp_alive(const TcpLink& link) { return link.state.load(std::memory_order_acquire) != TcpLink::kDead; }

bool tcp_send(TcpLink& link, const Packet& p, uint64_t dst_uid) {
  auto& c = link.f->counters;
  const wire::PacketHeader h = wire::header_of(p, dst_uid);
  std::byte hdr[wire::kPacketHeaderBytes];
  wire::encode_packet_header(h, hdr);
  const size_t total = sizeof hdr + h.payload_len;
  std::lock_guard<std::mutex> l(link.mu);
  const uint8_t st = link.state.load(std::memory_order_relaxed);
  if (st == TcpLink::kDead) {
    c.dead_link.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  const size_t queued = link.queued_bytes();
  if (queued + total > link.f->opts.max_send_queue_bytes || link.frame_ends.size() >= kMaxSendQueuePackets) {
    c.queue_full.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  const uint64_t now = monotonic_ns();
  size_t sent = 0;
  if (st == TcpLink::kOpen && queued == 0) {
    // Fast path: hand the frame to the kernel now, without waiting.
    iovec iov[2] = {{hdr, sizeof hdr}, {const_cast<std::byte*>(p.payload.data()), h.payload_len}};
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = h.payload_len ? 2 : 1;
    ssize_t n;
    do n = ::sendmsg(link.fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n > 0) sent = size_t(n);
    // An error other than EAGAIN: queue anyway; the loop sees the error and cuts the link.
  }
  if (queued == 0) link.last_progress = now;
  link.queued_total += total;
  link.written_total += sent;
  if (sent == total) return true;
  if (sent < sizeof hdr) {
    link.append(hdr + sent, sizeof hdr - sent);
    if (h.payload_len) link.append(p.payload.data(), h.payload_len);
  } else {
    link.append(p.payload.data() + (sent - sizeof hdr), total - sent);
  }
  link.frame_ends.push_back(link.queued_total);
  if (st == TcpLink::kOpen) link.arm(true);
  return true;
}

// ---- inbound connections -----------------------------------------------------------
namespace {

struct EventFd {
  int fd = -1;
  ~EventFd() {
    if (fd >= 0) close(fd);
  }
};

struct Conn {
  uint64_t id = 0;
  int fd = -1;
  std::string peer;                  // "ip:port"
  std::shared_ptr<ConnToken> token;
  uint64_t opened_at = 0;
  bool reading = true;               // EPOLLIN armed
  bool hello = false;
  uint64_t peer_fabric = 0;
  uint64_t frames = 0;
  // Incremental parsing: a header being gathered, then a packet's payload.
  std::byte hdr[wire::kMaxHeaderBytes];
  size_t hdr_have = 0, hdr_need = wire::kPrefixBytes;
  wire::FrameKind kind = wire::FrameKind::kPacket;
  Packet* cur = nullptr;
  uint64_t cur_dst = 0;
  size_t pay_have = 0;
  ~Conn() {
    delete cur;
    if (fd >= 0) close(fd);
  }
};

}  // namespace

struct TcpLoop {
  Fabric::Impl* f = nullptr;
  int epfd = -1;
  std::shared_ptr<EventFd> wake = std::make_shared<EventFd>();
  std::thread thread;
  std::vector<std::shared_ptr<TcpLink>> pending;  // new links; guarded by f->tcp_mu
  uint64_t next_id = 1;                           // guarded by f->tcp_mu

  // Loop thread only.
  std::unordered_map<uint64_t, std::shared_ptr<TcpLink>> links;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns;
  uint64_t next_conn = 1;
  std::vector<std::byte> rbuf = std::vector<std::byte>(kReadBuffer);
  uint64_t logged_drops = 0, last_drop_log = 0, next_tick = 0;

  ~TcpLoop() {
    if (epfd >= 0) close(epfd);
  }
  void signal() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake->fd, &one, sizeof one);
  }
  void run();
  void on_link(TcpLink& l, uint32_t events, uint64_t now);
  void cut(const std::shared_ptr<TcpLink>& l, std::string_view event, std::string reason, bool connect_failed,
           bool peer_closed = false);
  void accept_all(int listen_fd, uint64_t now);
  void on_conn(Conn& c, uint32_t events);
  bool parse(Conn& c, const std::byte* b, size_t n, std::string* why);
  void deliver(Conn& c);
  void pause_if_full(Conn& c);
  void close_conn(uint64_t id, LogLevel level, std::string_view event, std::string reason);
  void tick(uint64_t now);
  void stop_all();
};

void conn_release(ConnToken& c, uint64_t bytes) {
  const uint32_t p = c.packets.fetch_sub(1, std::memory_order_acq_rel) - 1;
  const uint64_t b = c.bytes.fetch_sub(bytes, std::memory_order_acq_rel) - bytes;
  if (c.paused.load(std::memory_order_acquire) && p <= c.resume_packets && b <= c.resume_bytes &&
      c.paused.exchange(false, std::memory_order_acq_rel)) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(c.wake_fd, &one, sizeof one);
  }
}

void wire_note_drop(Fabric::Impl* f, WireDrop why, const Packet& p) {
  auto& c = f->counters;
  (why == WireDrop::kBadKey ? c.bad_key : c.wrong_connection).fetch_add(1, std::memory_order_relaxed);
  c.last_drop_nic.store(p.src_nic, std::memory_order_relaxed);
  c.last_drop_qpn.store(p.dst_qpn, std::memory_order_relaxed);
  c.last_drop_conn.store(p.conn ? p.conn->id : 0, std::memory_order_relaxed);
}

void TcpLoop::cut(const std::shared_ptr<TcpLink>& l, std::string_view event, std::string reason, bool connect_failed,
                  bool peer_closed) {
  size_t dropped = 0;
  {
    std::lock_guard<std::mutex> g(l->mu);
    if (l->state.load() == TcpLink::kDead) return;
    l->state.store(TcpLink::kDead, std::memory_order_release);
    epoll_ctl(epfd, EPOLL_CTL_DEL, l->fd, nullptr);
    close(l->fd);
    l->fd = -1;
    dropped = l->frame_ends.size();
    l->out.clear();
    l->out.shrink_to_fit();
    l->frame_ends.clear();
  }
  auto& c = f->counters;
  (connect_failed ? c.connect_failures : c.links_cut).fetch_add(1);
  c.links_open.fetch_sub(1);
  {
    std::lock_guard<std::mutex> g(f->tcp_mu);
    auto it = f->links.find(l->ep);
    if (it != f->links.end() && it->second == l) f->links.erase(it);
  }
  const std::string where = l->where;
  links.erase(l->id);
  // A peer that closes with nothing of ours queued is an orderly goodbye.
  const LogLevel level = (peer_closed && dropped == 0) ? LogLevel::kInfo : LogLevel::kWarn;
  wlog(level, event, {{"peer", where}, {"reason", reason}, {"packets_dropped", dropped}});
}

void TcpLoop::on_link(TcpLink& l, uint32_t events, uint64_t now) {
  std::shared_ptr<TcpLink> keep = links[l.id];
  std::string failure;
  bool connect_failed = false, opened = false, peer_closed = false;
  {
    std::lock_guard<std::mutex> g(l.mu);
    const uint8_t st = l.state.load();
    if (st == TcpLink::kDead) return;
    if (st == TcpLink::kConnecting) {
      int err = 0;
      socklen_t len = sizeof err;
      if (getsockopt(l.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
        failure = err ? std::strerror(err) : "connection failed";
        connect_failed = true;
      } else if (events & EPOLLOUT) {
        l.state.store(TcpLink::kOpen, std::memory_order_release);
        l.last_progress = now;
        opened = true;
        l.want_out = true;  // armed with EPOLLOUT while connecting
      } else {
        return;
      }
    }
    if (failure.empty()) {
      if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        // The peer never sends on our outbound link: bytes are a protocol
        // violation, EOF or an error means it is gone.
        char b[64];
        const ssize_t n = ::recv(l.fd, b, sizeof b, MSG_DONTWAIT);
        if (n == 0) failure = "peer closed the connection", peer_closed = true;
        else if (n > 0) failure = "peer sent bytes on an outbound link";
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) failure = std::strerror(errno);
      }
      if (failure.empty()) {
        if (!l.flush(now)) failure = std::strerror(errno);
        else l.arm(l.queued_bytes() > 0);
      }
    }
  }
  if (opened) {
    f->counters.links_opened.fetch_add(1);
    wlog(LogLevel::kInfo, "link_open", {{"peer", l.where}});
  }
  if (!failure.empty()) cut(keep, connect_failed ? "connect_failed" : "link_cut", failure, connect_failed, peer_closed);
}

void TcpLoop::accept_all(int listen_fd, uint64_t now) {
  for (;;) {
    sockaddr_in sa{};
    socklen_t len = sizeof sa;
    const int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&sa), &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE)
        wlog(LogLevel::kError, "accept_failed", {{"reason", std::strerror(errno)}});
      return;  // EAGAIN: no more
    }
    const std::string peer = endpoint(sa.sin_addr.s_addr, ntohs(sa.sin_port));
    if (conns.size() >= f->opts.max_inbound_connections) {
      close(fd);
      f->counters.connections_refused.fetch_add(1);
      wlog(LogLevel::kWarn, "connection_refused",
           {{"peer", peer}, {"reason", "max_inbound_connections"}, {"limit", f->opts.max_inbound_connections}});
      continue;
    }
    set_nodelay(fd);
    auto c = std::make_unique<Conn>();
    c->id = next_conn++;
    c->fd = fd;
    c->peer = peer;
    c->opened_at = now;
    c->token = std::make_shared<ConnToken>();
    c->token->id = c->id;
    c->token->wake_fd = wake->fd;
    c->token->resume_packets = f->opts.max_inflight_packets_per_connection / 2;
    c->token->resume_bytes = f->opts.max_inflight_bytes_per_connection / 2;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = tagged(kTagConn, c->id);
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      wlog(LogLevel::kError, "connection_refused", {{"peer", peer}, {"reason", std::strerror(errno)}});
      f->counters.connections_refused.fetch_add(1);
      continue;  // ~Conn closes it
    }
    f->counters.connections_accepted.fetch_add(1);
    f->counters.connections_open.fetch_add(1);
    wlog(LogLevel::kInfo, "connection_accepted", {{"peer", peer}, {"conn", c->id}});
    conns.emplace(c->id, std::move(c));
  }
}

void TcpLoop::close_conn(uint64_t id, LogLevel level, std::string_view event, std::string reason) {
  auto it = conns.find(id);
  if (it == conns.end()) return;
  Conn& c = *it->second;
  epoll_ctl(epfd, EPOLL_CTL_DEL, c.fd, nullptr);
  c.token->open.store(false, std::memory_order_release);  // QPs bound to it may re-bind
  f->counters.connections_open.fetch_sub(1);
  f->counters.connections_closed.fetch_add(1);
  const std::string peer = c.peer;
  const uint64_t frames = c.frames;
  conns.erase(it);
  wlog(level, event, {{"peer", peer}, {"conn", id}, {"reason", reason}, {"frames", frames}});
}

void TcpLoop::deliver(Conn& c) {
  Packet* p = c.cur;
  c.cur = nullptr;
  ++c.frames;
  std::shared_ptr<Port> port = fabric_port(f, c.cur_dst);
  if (!port) {  // that NIC is gone (or never was): lost, as on a wire
    delete p;
    return;
  }
  p->conn = c.token;
  p->credit_bytes = p->payload.size();
  c.token->packets.fetch_add(1, std::memory_order_acq_rel);
  c.token->bytes.fetch_add(p->credit_bytes, std::memory_order_acq_rel);
  std::lock_guard<std::mutex> l(port->mu);
  port->inbox.push_back(*p);
  port->queued.fetch_add(1, std::memory_order_release);
}

// Feeds bytes to c's frame parser. False (and *why) on a bad frame.
bool TcpLoop::parse(Conn& c, const std::byte* b, size_t n, std::string* why) {
  using wire::DecodeError;
  size_t i = 0;
  while (i < n) {
    if (!c.cur) {
      const size_t take = std::min(c.hdr_need - c.hdr_have, n - i);
      std::memcpy(c.hdr + c.hdr_have, b + i, take);
      c.hdr_have += take;
      i += take;
      if (c.hdr_have < c.hdr_need) return true;
      const std::span<const std::byte> h(c.hdr, c.hdr_have);
      if (c.hdr_need == wire::kPrefixBytes) {
        size_t hb = 0;
        const DecodeError e = wire::decode_prefix(h, &c.kind, &hb);
        if (e != DecodeError::kOk) return *why = wire::describe(e), false;
        if (c.kind == wire::FrameKind::kHello && c.hello) return *why = wire::describe(DecodeError::kUnexpectedHello), false;
        if (c.kind != wire::FrameKind::kHello && !c.hello) return *why = wire::describe(DecodeError::kExpectedHello), false;
        c.hdr_need = hb;
        continue;
      }
      c.hdr_have = 0;
      c.hdr_need = wire::kPrefixBytes;
      if (c.kind == wire::FrameKind::kHello) {
        const DecodeError e = wire::decode_hello(h, &c.peer_fabric);
        if (e != DecodeError::kOk) return *why = wire::describe(e), false;
        c.hello = true;
        ++c.frames;
        wlog(LogLevel::kDebug, "hello", {{"peer", c.peer}, {"conn", c.id}, {"fabric", c.peer_fabric}});
        continue;
      }
      wire::PacketHeader ph;
      const DecodeError e = wire::decode_packet_header(h, f->opts.max_message_bytes, &ph);
      if (e != DecodeError::kOk) return *why = wire::describe(e), false;
      // Validated: only now is anything allocated (payload bytes are not
      // touched, so not resident, until they arrive).
      c.cur = new Packet();
      wire::apply(ph, c.cur);
      c.cur->payload.resize(ph.payload_len);
      c.cur_dst = ph.dst_uid;
      c.pay_have = 0;
    }
    const size_t need = c.cur->payload.size() - c.pay_have;
    const size_t take = std::min(need, n - i);
    if (take) std::memcpy(c.cur->payload.data() + c.pay_have, b + i, take);
    c.pay_have += take;
    i += take;
    if (c.pay_have == c.cur->payload.size()) deliver(c);
  }
  return true;
}

void TcpLoop::on_conn(Conn& c, uint32_t events) {
  const uint64_t id = c.id;
  for (int round = 0; round < kReadsPerEvent && c.reading; ++round) {
    const ssize_t n = ::recv(c.fd, rbuf.data(), rbuf.size(), MSG_DONTWAIT);
    if (n == 0) return close_conn(id, LogLevel::kInfo, "connection_closed", "peer closed");
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return close_conn(id, LogLevel::kInfo, "connection_closed", std::strerror(errno));
    }
    std::string why;
    if (!parse(c, rbuf.data(), size_t(n), &why)) {
      f->counters.frames_rejected.fetch_add(1);
      return close_conn(id, LogLevel::kWarn, "frame_rejected", why);
    }
    pause_if_full(c);
    if (size_t(n) < rbuf.size()) break;
  }
  // Paused (EPOLLIN off): a hang-up still tells us the peer is gone.
  if (!c.reading && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
    close_conn(id, LogLevel::kInfo, "connection_closed", "peer closed while paused");
}

void TcpLoop::pause_if_full(Conn& c) {
  ConnToken& t = *c.token;
  if (t.packets.load() < f->opts.max_inflight_packets_per_connection &&
      t.bytes.load() < f->opts.max_inflight_bytes_per_connection)
    return;
  t.paused.store(true, std::memory_order_release);
  // The NICs may have freed everything between the check and the store.
  if (t.packets.load() <= t.resume_packets && t.bytes.load() <= t.resume_bytes &&
      t.paused.exchange(false))
    return;
  c.reading = false;
  epoll_event ev{};
  ev.events = EPOLLRDHUP;
  ev.data.u64 = tagged(kTagConn, c.id);
  epoll_ctl(epfd, EPOLL_CTL_MOD, c.fd, &ev);
  f->counters.backpressure_pauses.fetch_add(1);
  wlog(LogLevel::kDebug, "backpressure", {{"peer", c.peer}, {"conn", c.id}, {"packets", t.packets.load()}});
}

void TcpLoop::tick(uint64_t now) {
  // Outbound: connect timeouts and send stalls.
  std::vector<std::pair<std::shared_ptr<TcpLink>, std::string>> to_cut, to_fail;
  for (auto& [id, l] : links) {
    std::lock_guard<std::mutex> g(l->mu);
    const uint8_t st = l->state.load();
    if (st == TcpLink::kConnecting && now >= l->connect_deadline) to_fail.emplace_back(l, "connect timeout");
    else if (st == TcpLink::kOpen && l->queued_bytes() && now - l->last_progress >= f->opts.send_stall_timeout_ns)
      to_cut.emplace_back(l, "send stalled (the peer does not read)");
  }
  for (auto& [l, why] : to_fail) cut(l, "connect_failed", why, true);
  for (auto& [l, why] : to_cut) cut(l, "link_cut", why, false);
  // Inbound: a connection must say HELLO within the connect timeout, or it
  // just holds a slot.
  std::vector<uint64_t> silent;
  for (auto& [id, c] : conns)
    if (!c->hello && now - c->opened_at >= f->opts.connect_timeout_ns) silent.push_back(id);
  for (uint64_t id : silent) close_conn(id, LogLevel::kWarn, "connection_closed", "no HELLO in time");
  // Refused packets (forged keys, wrong connection): one log line a second at most.
  auto& c = f->counters;
  const uint64_t drops = c.bad_key.load() + c.wrong_connection.load();
  if (drops != logged_drops && now - last_drop_log >= kDropLogIntervalNs) {
    wlog(LogLevel::kWarn, "packets_refused",
         {{"new", drops - logged_drops}, {"bad_key_total", c.bad_key.load()},
          {"wrong_connection_total", c.wrong_connection.load()}, {"last_src_nic", c.last_drop_nic.load()},
          {"last_dst_qpn", c.last_drop_qpn.load()}, {"last_conn", c.last_drop_conn.load()}});
    logged_drops = drops;
    last_drop_log = now;
  }
}

void TcpLoop::run() {
  std::vector<epoll_event> evs(64);
  while (!f->stopping.load(std::memory_order_acquire)) {
    const int n = epoll_wait(epfd, evs.data(), int(evs.size()), int(kTickNs / 1'000'000));
    const uint64_t now = monotonic_ns();
    if (n < 0 && errno != EINTR) {
      wlog(LogLevel::kError, "loop_failed", {{"reason", std::strerror(errno)}});
      break;
    }
    bool woken = false;
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = evs[i].data.u64 >> 56, id = evs[i].data.u64 & ((1ull << 56) - 1);
      const uint32_t e = evs[i].events;
      if (tag == kTagWake) {
        uint64_t v;
        [[maybe_unused]] ssize_t r = ::read(wake->fd, &v, sizeof v);
        woken = true;
      } else if (tag == kTagListen) {
        accept_all(int(id), now);
      } else if (tag == kTagLink) {
        auto it = links.find(id);
        if (it != links.end()) on_link(*it->second, e, now);
      } else if (tag == kTagConn) {
        auto it = conns.find(id);
        if (it != conns.end()) on_conn(*it->second, e);
      }
    }
    if (woken) {
      std::vector<std::shared_ptr<TcpLink>> fresh;
      {
        std::lock_guard<std::mutex> g(f->tcp_mu);
        fresh.swap(pending);
      }
      for (auto& l : fresh) {
        std::lock_guard<std::mutex> g(l->mu);
        if (l->state.load() == TcpLink::kDead) continue;
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;  // EPOLLOUT: the connect's result
        ev.data.u64 = tagged(kTagLink, l->id);
        l->want_out = true;
        epoll_ctl(epfd, EPOLL_CTL_ADD, l->fd, &ev);
        links.emplace(l->id, l);
      }
      // Connections the NICs have drained enough (conn_release cleared paused).
      for (auto& [id, c] : conns) {
        if (c->reading || c->token->paused.load(std::memory_order_acquire)) continue;
        c->reading = true;
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = tagged(kTagConn, id);
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
      }
    }
    if (now >= next_tick) {
      tick(now);
      next_tick = now + kTickNs;
    }
  }
  stop_all();
}

void TcpLoop::stop_all() {
  std::vector<uint64_t> ids;
  for (auto& [id, c] : conns) ids.push_back(id);
  for (uint64_t id : ids) close_conn(id, LogLevel::kInfo, "connection_closed", "fabric shut down");
  std::vector<std::shared_ptr<TcpLink>> ls;
  for (auto& [id, l] : links) ls.push_back(l);
  {
    std::lock_guard<std::mutex> g(f->tcp_mu);
    for (auto& l : pending) ls.push_back(l);
    pending.clear();
  }
  for (auto& l : ls) {
    std::lock_guard<std::mutex> g(l->mu);
    if (l->state.load() == TcpLink::kDead) continue;
    l->state.store(TcpLink::kDead, std::memory_order_release);
    close(l->fd);
    l->fd = -1;
    l->out.clear();
    l->frame_ends.clear();
    f->counters.links_open.fetch_sub(1);
  }
  links.clear();
}

namespace {

// Starts f's loop if it has none. f->tcp_mu held.
Status start_loop_locked(Fabric::Impl* f) {
  if (f->loop) return Status::ok();
  auto loop = std::make_shared<TcpLoop>();
  loop->f = f;
  loop->epfd = epoll_create1(EPOLL_CLOEXEC);
  loop->wake->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (loop->epfd < 0 || loop->wake->fd < 0) return unavailable("epoll/eventfd: " + std::string(std::strerror(errno)));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = tagged(kTagWake, 0);
  if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->wake->fd, &ev) != 0)
    return unavailable("epoll_ctl: " + std::string(std::strerror(errno)));
  loop->thread = std::thread([l = loop.get()] { l->run(); });
  f->loop = std::move(loop);
  return Status::ok();
}

}  // namespace

// ---- addresses and ports -------------------------------------------------------------
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

// Never waits for the network: a new link is returned "connecting" (the
// loop finishes the connect, or declares the link dead after
// connect_timeout_ns); packets sent meanwhile wait in its queue.
Result<std::shared_ptr<Port>> fabric_peer_port(Fabric::Impl* f, const PeerAddress& peer) {
  if (peer.fabric_id == f->id) {
    auto port = fabric_port(f, peer.nic_uid);
    if (!port) return not_found("no soft NIC with that address on this fabric");
    return port;
  }
  if (peer.ipv4 == 0) return not_found("the QP's fabric is another one and does not listen on TCP");
  std::shared_ptr<TcpLink> link;
  bool fresh = false;
  {
    std::lock_guard<std::mutex> l(f->tcp_mu);
    if (f->stopping.load()) return unavailable("the fabric is shutting down");
    HL_RETURN_IF_ERROR(start_loop_locked(f));
    auto it = f->links.find({peer.ipv4, peer.port});
    if (it != f->links.end() && tcp_alive(*it->second)) link = it->second;
    if (!link) {
      const std::string where = endpoint(peer.ipv4, peer.port);
      const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (fd < 0) return unavailable("socket: " + std::string(std::strerror(errno)));
      set_nodelay(fd);
      sockaddr_in sa{};
      sa.sin_family = AF_INET;
      sa.sin_addr.s_addr = peer.ipv4;
      sa.sin_port = htons(peer.port);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 && errno != EINPROGRESS) {
        // Refused at once (nothing listens there): say so now.
        const std::string why = std::strerror(errno);
        close(fd);
        f->counters.connect_failures.fetch_add(1);
        return unavailable("cannot reach the soft fabric at " + where + ": " + why);
      }
      link = std::make_shared<TcpLink>();
      link->f = f;
      link->id = f->loop->next_id++;
      link->where = where;
      link->ep = {peer.ipv4, peer.port};
      link->epfd = f->loop->epfd;
      link->fd = fd;
      link->connect_deadline = monotonic_ns() + f->opts.connect_timeout_ns;
      // The HELLO goes first, before any packet queued while connecting.
      std::byte hello[wire::kHelloBytes];
      wire::encode_hello(f->id, hello);
      link->append(hello, sizeof hello);
      link->queued_total = sizeof hello;
      f->links[link->ep] = link;
      f->loop->pending.push_back(link);
      f->counters.links_open.fetch_add(1);
      fresh = true;
    }
    if (fresh) f->loop->signal();
  }
  auto port = std::make_shared<Port>();
  port->uid = peer.nic_uid;
  port->link = std::move(link);
  return port;
}

// ---- listening --------------------------------------------------------------------------
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
  HL_RETURN_IF_ERROR(start_loop_locked(f));
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return unavailable("socket: " + std::string(std::strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 128) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    return unavailable("cannot listen on " + ipv4 + ":" + std::to_string(port) + ": " + why);
  }
  socklen_t len = sizeof sa;
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = tagged(kTagListen, uint64_t(fd));  // the loop reads the fd from here, not from f
  if (epoll_ctl(f->loop->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    return unavailable("epoll_ctl: " + why);
  }
  f->listen_fd = fd;
  f->listen_ipv4 = sa.sin_addr.s_addr;
  f->listen_port = ntohs(sa.sin_port);
  wlog(LogLevel::kInfo, "listening", {{"endpoint", endpoint(f->listen_ipv4, f->listen_port)}});
  return f->listen_port;
}

WireStats Fabric::wire_stats() const {
  const auto& c = impl_->counters;
  WireStats s;
  s.connections_accepted = c.connections_accepted.load();
  s.connections_refused = c.connections_refused.load();
  s.connections_open = c.connections_open.load();
  s.connections_closed = c.connections_closed.load();
  s.frames_rejected = c.frames_rejected.load();
  s.packets_dropped_bad_key = c.bad_key.load();
  s.packets_dropped_wrong_connection = c.wrong_connection.load();
  s.packets_dropped_queue_full = c.queue_full.load();
  s.packets_dropped_dead_link = c.dead_link.load();
  s.links_opened = c.links_opened.load();
  s.links_open = c.links_open.load();
  s.connect_failures = c.connect_failures.load();
  s.links_cut = c.links_cut.load();
  s.backpressure_pauses = c.backpressure_pauses.load();
  return s;
}

void tcp_shutdown(Fabric::Impl* f) {
  std::shared_ptr<TcpLoop> loop;
  {
    std::lock_guard<std::mutex> l(f->tcp_mu);
    f->stopping.store(true);
    loop = f->loop;
  }
  if (loop) {
    loop->signal();
    if (loop->thread.joinable()) loop->thread.join();
  }
  std::lock_guard<std::mutex> l(f->tcp_mu);
  if (f->listen_fd >= 0) close(f->listen_fd);
  f->listen_fd = -1;
  f->links.clear();
  // f->loop stays: its epoll fd must outlive links still referenced by ports
  // (they are dead, so nothing touches it); freed with the fabric.
}

}  // namespace hyperloop::soft
