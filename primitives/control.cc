// primitives/: member set-up, local or over TCP.
//
// The control protocol is in control_codec.h. A Group opens one control
// connection per daemon, authenticates for its tenant (HELLO, AUTH), then
// sends CREATE, CONNECT, START and, when destroyed, DROP; while it lives it
// sends PING heartbeats. The daemon serves every connection from one epoll
// thread: requests are short (nothing in them blocks: QP connects to TCP
// peers are asynchronous), every buffer and count is bounded by
// ControlOptions, and a connection that breaks a rule is answered (where the
// protocol has an answer), logged and closed, and its member dropped.
#include "control.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <thread>
#include <vector>

#include "control_codec.h"
#include "hyperloop/log.h"

namespace hyperloop::prim::internal {

namespace {

uint64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

std::string peer_name(int fd) {
  sockaddr_in sa{};
  socklen_t len = sizeof sa;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) return "?";
  char ip[INET_ADDRSTRLEN] = "?";
  inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
  return std::string(ip) + ":" + std::to_string(ntohs(sa.sin_port));
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

Result<std::pair<uint32_t, uint16_t>> parse_endpoint(const std::string& endpoint) {
  const auto colon = endpoint.rfind(':');
  in_addr a{};
  if (colon == std::string::npos || inet_pton(AF_INET, endpoint.substr(0, colon).c_str(), &a) != 1)
    return invalid_argument("'" + endpoint + "' is not ipv4:port");
  char* end = nullptr;
  const long port = std::strtol(endpoint.c_str() + colon + 1, &end, 10);
  if (port <= 0 || port > 65535 || *end) return invalid_argument("'" + endpoint + "' has no valid port");
  return std::pair<uint32_t, uint16_t>{a.s_addr, uint16_t(port)};
}

// ---- client-side socket I/O with a deadline (the socket is non-blocking) --------------------
int remaining_ms(uint64_t deadline) {
  const uint64_t now = mono_ns();
  if (now >= deadline) return 0;
  return int(std::min<uint64_t>((deadline - now + 999'999) / 1'000'000, 1 << 30));
}

// kOk, kDeadlineExceeded or kUnavailable.
Status wait_fd(int fd, short events, uint64_t deadline, const std::string& what) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r > 0) return Status::ok();
    if (r == 0) return Status(StatusCode::kDeadlineExceeded, what);
    if (errno != EINTR) return unavailable(what + ": " + std::strerror(errno));
  }
}

Status send_all(int fd, std::span<const std::byte> b, uint64_t deadline, const std::string& who) {
  size_t off = 0;
  while (off < b.size()) {
    const ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      HL_RETURN_IF_ERROR(wait_fd(fd, POLLOUT, deadline, who + " did not take a control request in time"));
      continue;
    }
    return unavailable(who + " closed the control connection");
  }
  return Status::ok();
}

Status recv_all(int fd, std::span<std::byte> b, uint64_t deadline, const std::string& who) {
  size_t off = 0;
  while (off < b.size()) {
    const ssize_t n = ::recv(fd, b.data() + off, b.size() - off, MSG_DONTWAIT);
    if (n > 0) {
      off += size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      HL_RETURN_IF_ERROR(wait_fd(fd, POLLIN, deadline, who + " did not answer a control request in time"));
      continue;
    }
    return unavailable(who + " closed the control connection");
  }
  return Status::ok();
}

// ---- in-process ----------------------------------------------------------------------
class LocalControl final : public MemberControl {
 public:
  explicit LocalControl(ReplicaHost& h) : h_(h), hold_(h) {}
  Result<MemberInfo> create(uint32_t t, uint32_t pos, uint32_t n, const GroupOptions& o) override {
    HL_ASSIGN_OR_RETURN(CreatedMember c, create_member(h_, t, pos, n, o));
    id_ = c.id;
    return c.info;
  }
  Status connect(uint32_t t, const rnic::QpAddress& p, const rnic::QpAddress& nx, const rnic::QpAddress& c) override {
    return connect_member(h_, t, id_, p, nx, c);
  }
  Status start(uint32_t t) override { return start_member(h_, t, id_); }
  void drop(uint32_t t) override { drop_member(h_, t, id_); }

 private:
  ReplicaHost& h_;
  uint64_t id_ = 0;  // the member create() made (0: none)
  HostHold hold_;  // destroying the host before the Group is a lifetime error
};

// ---- over TCP: the client ----------------------------------------------------------------
// One authenticated control connection. The heartbeat thread and the Group's
// calls share it under mu.
struct Channel {
  int fd = -1;
  std::string endpoint;
  uint64_t timeout_ns = 0;
  uint64_t heartbeat_ns = 0;
  std::mutex mu;
  uint64_t last_tx_ns = 0;  // guarded by mu
  bool dead = false;        // guarded by mu
  ~Channel() {
    if (fd >= 0) ::close(fd);
  }

  // One request and its answer (kPing: no answer). REQUIRES: mu held.
  Status call_locked(MsgType type, std::span<const std::byte> body, std::vector<std::byte>* payload) {
    if (dead) return unavailable("the control connection to " + endpoint + " is closed");
    const uint64_t deadline = mono_ns() + timeout_ns;
    std::vector<std::byte> frame;
    encode_frame(&frame, uint8_t(type), body);
    Status s = send_all(fd, frame, deadline, "replica daemon at " + endpoint);
    if (s.is_ok()) last_tx_ns = mono_ns();
    if (s.is_ok() && type != MsgType::kPing) s = read_answer(type, deadline, payload);
    if (!s.is_ok()) dead = true;  // the stream is out of step: never reuse it
    return s;
  }

  Status read_answer(MsgType type, uint64_t deadline, std::vector<std::byte>* payload) {
    const std::string who = "replica daemon at " + endpoint;
    std::byte hb[kControlHeaderBytes];
    HL_RETURN_IF_ERROR(recv_all(fd, hb, deadline, who));
    auto h = decode_header(hb);
    if (!h) return unavailable(who + " sent a bad control frame: " + h.status().message());
    if (h->type != (kResponseBit | uint8_t(type)))
      return unavailable(who + " answered " + std::to_string(h->type) + " to a " +
                         std::string(msg_type_name(type)));
    std::vector<std::byte> body(h->body_len);
    HL_RETURN_IF_ERROR(recv_all(fd, body, deadline, who));
    auto r = decode_response(body);
    if (!r) return unavailable(who + " sent a bad answer: " + r.status().message());
    if (!r->status.is_ok()) return Status(r->status.code(), "replica " + endpoint + ": " + r->status.message());
    payload->assign(r->payload.begin(), r->payload.end());
    return Status::ok();
  }
};

// Sends PINGs on every live channel that has been quiet for its heartbeat
// interval. One thread per process, started with the first channel.
class Heartbeats {
 public:
  static Heartbeats& instance() {
    static Heartbeats h;
    return h;
  }
  void add(const std::shared_ptr<Channel>& c) {
    std::lock_guard<std::mutex> l(mu_);
    channels_.push_back(c);
    if (!thread_.joinable()) thread_ = std::thread([this] { run(); });
    cv_.notify_all();
  }
  ~Heartbeats() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    std::unique_lock<std::mutex> l(mu_);
    while (!stop_) {
      uint64_t next = 100'000'000;  // look again at least every 100 ms
      std::vector<std::shared_ptr<Channel>> live;
      for (auto it = channels_.begin(); it != channels_.end();) {
        if (auto c = it->lock()) {
          live.push_back(std::move(c));
          ++it;
        } else {
          it = channels_.erase(it);
        }
      }
      l.unlock();
      const uint64_t now = mono_ns();
      for (auto& c : live) {
        std::unique_lock<std::mutex> cl(c->mu, std::try_to_lock);
        if (!cl.owns_lock() || c->dead) continue;  // a call in flight is traffic too
        const uint64_t quiet = now - std::min(now, c->last_tx_ns);
        if (quiet >= c->heartbeat_ns) {
          (void)c->call_locked(MsgType::kPing, {}, nullptr);
          next = std::min(next, c->heartbeat_ns);
        } else {
          next = std::min(next, c->heartbeat_ns - quiet);
        }
      }
      live.clear();
      l.lock();
      cv_.wait_for(l, std::chrono::nanoseconds(std::max<uint64_t>(next, 1'000'000)), [this] { return stop_; });
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<std::weak_ptr<Channel>> channels_;
  std::thread thread_;
};

class RemoteControl final : public MemberControl {
 public:
  explicit RemoteControl(std::shared_ptr<Channel> c) : c_(std::move(c)) {}

  Result<MemberInfo> create(uint32_t, uint32_t pos, uint32_t n, const GroupOptions& o) override {
    CreateRequest r;
    r.pos = pos;
    r.n = n;
    r.mode = uint8_t(o.mode);
    r.slots = o.slots;
    r.rearm_batch = o.rearm_batch;
    r.region_size = o.region_size;
    r.staging_bytes = o.staging_bytes;
    r.op_timeout_ns = o.op_timeout_ns;
    r.epoch = o.epoch;
    std::vector<std::byte> payload;
    HL_RETURN_IF_ERROR(call(MsgType::kCreate, encode_create(r), &payload));
    auto info = decode_member_info(payload);
    if (!info) return unavailable("replica daemon at " + c_->endpoint + ": " + info.status().message());
    return *info;
  }
  Status connect(uint32_t, const rnic::QpAddress& p, const rnic::QpAddress& nx, const rnic::QpAddress& cl) override {
    std::vector<std::byte> payload;
    return call(MsgType::kConnect, encode_connect({p, nx, cl}), &payload);
  }
  Status start(uint32_t) override {
    std::vector<std::byte> payload;
    return call(MsgType::kStart, {}, &payload);
  }
  void drop(uint32_t) override {
    std::vector<std::byte> payload;
    (void)call(MsgType::kDrop, {}, &payload);
  }

 private:
  Status call(MsgType t, std::span<const std::byte> body, std::vector<std::byte>* payload) {
    std::lock_guard<std::mutex> l(c_->mu);
    return c_->call_locked(t, body, payload);
  }
  std::shared_ptr<Channel> c_;
};

}  // namespace

std::unique_ptr<MemberControl> local_control(ReplicaHost& host) { return std::make_unique<LocalControl>(host); }

namespace {
// A TCP connection to a daemon's control port, connected within timeout_ns.
Result<std::shared_ptr<Channel>> open_channel(const std::string& endpoint, uint64_t timeout_ns) {
  HL_ASSIGN_OR_RETURN(auto ep, parse_endpoint(endpoint));
  if (timeout_ns == 0) return invalid_argument("control_timeout_ns must be positive");
  auto c = std::make_shared<Channel>();
  c->endpoint = endpoint;
  c->timeout_ns = timeout_ns;
  const uint64_t deadline = mono_ns() + timeout_ns;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (c->fd < 0) return unavailable("socket: " + std::string(std::strerror(errno)));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = ep.first;
  sa.sin_port = htons(ep.second);
  if (::connect(c->fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    if (errno != EINPROGRESS)
      return unavailable("cannot reach the replica daemon at " + endpoint + ": " + std::strerror(errno));
    auto w = wait_fd(c->fd, POLLOUT, deadline, "no answer from the replica daemon at " + endpoint);
    if (!w.is_ok()) return w;
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return unavailable("cannot reach the replica daemon at " + endpoint + ": " + std::strerror(err));
  }
  set_nodelay(c->fd);
  return c;
}
}  // namespace

Result<std::string> remote_stats(const std::string& endpoint, uint64_t timeout_ns) {
  HL_ASSIGN_OR_RETURN(auto c, open_channel(endpoint, timeout_ns));
  std::vector<std::byte> payload;
  std::lock_guard<std::mutex> l(c->mu);
  HL_RETURN_IF_ERROR(c->call_locked(MsgType::kStats, {}, &payload));
  return std::string(reinterpret_cast<const char*>(payload.data()), payload.size());
}

Result<std::unique_ptr<MemberControl>> remote_control(const std::string& endpoint, uint32_t tenant,
                                                      std::string_view secret, uint64_t timeout_ns) {
  HL_ASSIGN_OR_RETURN(auto c, open_channel(endpoint, timeout_ns));
  // HELLO -> challenge, AUTH -> the daemon's proof.
  HL_ASSIGN_OR_RETURN(Nonce mine, fresh_nonce());
  std::vector<std::byte> payload;
  {
    std::lock_guard<std::mutex> l(c->mu);
    HL_RETURN_IF_ERROR(c->call_locked(MsgType::kHello, encode_hello({tenant, mine}), &payload));
    auto theirs = decode_nonce(payload);
    if (!theirs) return unavailable("replica daemon at " + endpoint + ": " + theirs.status().message());
    HL_RETURN_IF_ERROR(c->call_locked(MsgType::kAuth, encode_auth({client_proof(secret, tenant, *theirs, mine)}),
                                      &payload));
    auto answer = decode_auth_answer(payload);
    if (!answer) return unavailable("replica daemon at " + endpoint + ": " + answer.status().message());
    if (!proofs_equal(answer->proof, server_proof(secret, tenant, mine, *theirs)))
      return permission_denied("replica daemon at " + endpoint + " does not know tenant " + std::to_string(tenant) +
                               "'s secret (not the daemon you configured?)");
    // At least every 10 ms, at most every 10 s, whatever the daemon says.
    c->heartbeat_ns = std::clamp<uint64_t>(answer->heartbeat_ns, 10'000'000, 10'000'000'000);
  }
  Heartbeats::instance().add(c);
  return std::unique_ptr<MemberControl>(std::make_unique<RemoteControl>(std::move(c)));
}

// ---- the daemon side --------------------------------------------------------------------
namespace {

enum class SessionState : uint8_t { kNew, kChallenged, kAuthed };

struct Session {
  int fd = -1;
  std::string peer;
  SessionState state = SessionState::kNew;
  uint32_t tenant = 0;
  Nonce client_nonce{}, server_nonce{};
  bool owns_member = false;
  uint64_t member_id = 0;  // while owns_member
  uint64_t fenced_by = 0;  // the epoch that fenced this session's member (0: none)
  bool closing = false;  // close once the output is flushed
  uint32_t events = EPOLLIN | EPOLLRDHUP;  // registered with epoll
  std::vector<std::byte> in;
  std::vector<std::byte> out;
  size_t out_off = 0;
  uint64_t opened_ns = 0, last_rx_ns = 0;
};

// Why a session that owns no member cannot CONNECT or START.
Status no_member(const Session& s, const char* what) {
  if (s.fenced_by)
    return permission_denied(std::string(what) + ": this session's member was fenced by epoch " +
                             std::to_string(s.fenced_by) + " (another client took the tenant over)");
  return failed_precondition(std::string(what) + " before CREATE");
}

}  // namespace

struct ControlServer::Impl {
  ReplicaHost* host = nullptr;
  ControlOptions opts;
  int listen_fd = -1, wake_fd = -1, epoll_fd = -1, reserve_fd = -1;
  uint16_t port = 0;
  std::thread loop;
  std::atomic<bool> stop{false};
  std::map<int, Session> sessions;  // loop thread only
  uint32_t unauthenticated = 0;     // loop thread only
  mutable std::mutex stats_mu;
  ControlStats stats;

  template <typename F>
  void count(F f) {
    std::lock_guard<std::mutex> l(stats_mu);
    f(stats);
  }

  void run();
  void accept_all();
  void on_readable(Session& s);
  void on_writable(Session& s);
  void handle(Session& s, uint8_t type, std::span<const std::byte> body);
  void reply(Session& s, MsgType t, std::vector<std::byte> body);
  void refuse(Session& s, MsgType t, const Status& st, bool close_after);
  void close_session(int fd, std::string_view reason);
  void check_timers();
  void update_events(Session& s);
};

void ControlServer::Impl::run() {
  epoll_event evs[64];
  while (!stop.load(std::memory_order_acquire)) {
    const int n = epoll_wait(epoll_fd, evs, 64, 50);  // timers have 50 ms granularity
    for (int i = 0; i < n; ++i) {
      const int fd = evs[i].data.fd;
      if (fd == listen_fd) {
        accept_all();
        continue;
      }
      if (fd == wake_fd) {
        uint64_t v;
        (void)::read(wake_fd, &v, sizeof v);
        continue;
      }
      auto it = sessions.find(fd);
      if (it == sessions.end()) continue;
      if (evs[i].events & (EPOLLHUP | EPOLLERR)) {
        close_session(fd, "connection reset");
        continue;
      }
      if (evs[i].events & EPOLLOUT) on_writable(it->second);
      it = sessions.find(fd);
      if (it == sessions.end()) continue;
      if (evs[i].events & (EPOLLIN | EPOLLRDHUP)) on_readable(it->second);
    }
    check_timers();
  }
}

void ControlServer::Impl::accept_all() {
  for (;;) {
    const int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        // Out of descriptors: take the pending connection with the reserve
        // and close it, so the listening socket does not stay readable forever.
        if (reserve_fd >= 0) {
          ::close(reserve_fd);
          const int victim = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
          if (victim >= 0) ::close(victim);
          reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        count([](ControlStats& s) { ++s.connections_refused; });
        log(LogLevel::kWarn, "control", "connection_refused", {{"reason", "out of file descriptors"}});
        continue;
      }
      return;  // EAGAIN: nothing more pending
    }
    std::string peer = peer_name(fd);
    const char* why = nullptr;
    if (sessions.size() >= opts.max_connections) why = "max_connections reached";
    else if (unauthenticated >= opts.max_unauthenticated) why = "max_unauthenticated reached";
    if (why) {  // counted and logged before the peer can see the close
      count([](ControlStats& s) { ++s.connections_refused; });
      log(LogLevel::kWarn, "control", "connection_refused", {{"peer", peer}, {"reason", why}});
      ::close(fd);
      continue;
    }
    set_nodelay(fd);
    Session s;
    s.fd = fd;
    s.peer = std::move(peer);
    s.opened_ns = s.last_rx_ns = mono_ns();
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
      ::close(fd);
      continue;
    }
    ++unauthenticated;
    count([](ControlStats& st) {
      ++st.connections_accepted;
      ++st.connections_open;
    });
    log(LogLevel::kDebug, "control", "connection_accepted", {{"peer", s.peer}});
    sessions.emplace(fd, std::move(s));
  }
}

void ControlServer::Impl::on_readable(Session& s) {
  const int fd = s.fd;
  // Read what is there, at most one frame's worth beyond what is buffered.
  for (;;) {
    if (s.closing) return;
    const size_t cap = kControlHeaderBytes + kMaxControlBody;
    if (s.in.size() >= cap) break;
    std::byte buf[4096];
    const ssize_t n = ::recv(fd, buf, std::min(sizeof buf, cap - s.in.size()), 0);
    if (n == 0) {
      close_session(fd, "closed by the client");
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      close_session(fd, std::strerror(errno));
      return;
    }
    s.last_rx_ns = mono_ns();
    s.in.insert(s.in.end(), buf, buf + n);
    // Frames, as many as are complete.
    size_t off = 0;
    while (!s.closing && s.in.size() - off >= kControlHeaderBytes) {
      auto h = decode_header(std::span<const std::byte>(s.in).subspan(off, kControlHeaderBytes));
      if (!h) {
        count([](ControlStats& st) { ++st.frames_rejected; });
        log(LogLevel::kWarn, "control", "frame_rejected", {{"peer", s.peer}, {"reason", h.status().message()}});
        close_session(fd, "bad frame");
        return;
      }
      if (h->type & kResponseBit) {
        count([](ControlStats& st) { ++st.frames_rejected; });
        log(LogLevel::kWarn, "control", "frame_rejected", {{"peer", s.peer}, {"reason", "a response sent to the daemon"}});
        close_session(fd, "bad frame");
        return;
      }
      if (s.in.size() - off < kControlHeaderBytes + h->body_len) break;
      std::vector<std::byte> body(s.in.begin() + std::ptrdiff_t(off + kControlHeaderBytes),
                                  s.in.begin() + std::ptrdiff_t(off + kControlHeaderBytes + h->body_len));
      off += kControlHeaderBytes + h->body_len;
      handle(s, h->type, body);
      if (sessions.find(fd) == sessions.end()) return;  // closed while handling
    }
    s.in.erase(s.in.begin(), s.in.begin() + std::ptrdiff_t(off));
  }
}

void ControlServer::Impl::on_writable(Session& s) {
  const int fd = s.fd;
  while (s.out_off < s.out.size()) {
    const ssize_t n = ::send(fd, s.out.data() + s.out_off, s.out.size() - s.out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      s.out_off += size_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    close_session(fd, "send failed");
    return;
  }
  if (s.out_off == s.out.size()) {
    s.out.clear();
    s.out_off = 0;
    if (s.closing) {
      close_session(fd, "closed after an error answer");
      return;
    }
  }
  update_events(s);
}

// A closing session is not read any more (its peer may keep sending); it
// waits only for its last answer to drain.
void ControlServer::Impl::update_events(Session& s) {
  const uint32_t want = (s.closing ? 0u : uint32_t(EPOLLIN | EPOLLRDHUP)) | (s.out_off < s.out.size() ? uint32_t(EPOLLOUT) : 0u);
  if (want == s.events) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.fd = s.fd;
  epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s.fd, &ev);
  s.events = want;
}

void ControlServer::Impl::reply(Session& s, MsgType t, std::vector<std::byte> body) {
  if (s.out.size() - s.out_off + body.size() + kControlHeaderBytes > opts.max_output_bytes) {
    log(LogLevel::kWarn, "control", "client_not_reading", {{"peer", s.peer}});
    close_session(s.fd, "answers not read");
    return;
  }
  encode_frame(&s.out, uint8_t(kResponseBit | uint8_t(t)), body);
  on_writable(s);
}

void ControlServer::Impl::refuse(Session& s, MsgType t, const Status& st, bool close_after) {
  count([](ControlStats& x) { ++x.requests_refused; });
  log(close_after ? LogLevel::kWarn : LogLevel::kInfo, "control", "request_refused",
      {{"peer", s.peer}, {"tenant", s.tenant}, {"request", msg_type_name(t)},
       {"code", status_code_name(st.code())}, {"reason", st.message()}});
  if (close_after) s.closing = true;
  encode_frame(&s.out, uint8_t(kResponseBit | uint8_t(t)), encode_error(st));
  on_writable(s);  // may close the session: s is not used after it
}

void ControlServer::Impl::handle(Session& s, uint8_t type_byte, std::span<const std::byte> body) {
  const MsgType type = MsgType(type_byte);
  auto req = decode_request(type_byte, body);
  if (!req) {  // a frame whose body does not fit its type: answered, then closed
    count([](ControlStats& x) { ++x.frames_rejected; });
    return refuse(s, type, req.status(), /*close_after=*/true);
  }
  switch (type) {
    case MsgType::kPing:
      count([](ControlStats& x) { ++x.pings; });
      return;  // no answer: a heartbeat
    case MsgType::kStats: {
      ControlStats snapshot;
      {
        std::lock_guard<std::mutex> l(stats_mu);
        snapshot = stats;
      }
      std::string text = host_metrics_text(*host, snapshot);
      if (opts.extra_metrics) text += opts.extra_metrics();
      if (text.size() > kMaxControlBody - 1) text.resize(kMaxControlBody - 1);
      return reply(s, type, encode_ok({reinterpret_cast<const std::byte*>(text.data()), text.size()}));
    }
    case MsgType::kHello: {
      if (s.state != SessionState::kNew) return refuse(s, type, failed_precondition("HELLO twice"), true);
      const auto& h = std::get<HelloRequest>(req->body);
      s.tenant = h.tenant;
      auto secret = tenant_secret(*host, h.tenant);
      if (!secret) {
        count([](ControlStats& x) { ++x.auth_failed; });
        return refuse(s, type, secret.status(), true);
      }
      auto nonce = fresh_nonce();
      if (!nonce) return refuse(s, type, nonce.status(), true);
      s.client_nonce = h.client_nonce;
      s.server_nonce = *nonce;
      s.state = SessionState::kChallenged;
      return reply(s, type, encode_ok(encode_nonce(s.server_nonce)));
    }
    case MsgType::kAuth: {
      if (s.state != SessionState::kChallenged)
        return refuse(s, type, failed_precondition("AUTH needs a HELLO first, once"), true);
      const auto& a = std::get<AuthRequest>(req->body);
      auto secret = tenant_secret(*host, s.tenant);
      if (!secret || !proofs_equal(a.proof, client_proof(*secret, s.tenant, s.server_nonce, s.client_nonce))) {
        count([](ControlStats& x) { ++x.auth_failed; });
        return refuse(s, type, permission_denied("wrong credential for tenant " + std::to_string(s.tenant)), true);
      }
      s.state = SessionState::kAuthed;
      --unauthenticated;
      count([](ControlStats& x) { ++x.auth_ok; });
      log(LogLevel::kInfo, "control", "authenticated", {{"peer", s.peer}, {"tenant", s.tenant}});
      AuthAnswer ans;
      ans.proof = server_proof(*secret, s.tenant, s.client_nonce, s.server_nonce);
      ans.heartbeat_ns = std::max<uint64_t>(opts.client_timeout_ns / 4, 1'000'000);
      return reply(s, type, encode_ok(encode_auth_answer(ans)));
    }
    default:
      break;
  }
  if (s.state != SessionState::kAuthed)
    return refuse(s, type, permission_denied(std::string(msg_type_name(type)) + " before authentication"), true);
  switch (type) {
    case MsgType::kCreate: {
      const auto& c = std::get<CreateRequest>(req->body);
      CreateLimits lim;
      lim.max_slots = opts.max_slots;
      lim.max_staging_bytes = opts.max_staging_bytes;
      if (auto v = validate_create(c, lim); !v.is_ok()) return refuse(s, type, v, false);
      if (s.owns_member)
        return refuse(s, type, Status(StatusCode::kAlreadyExists, "this session has a member already"), false);
      GroupOptions o;
      o.tenant = s.tenant;
      o.mode = ForwardMode(c.mode);
      o.slots = c.slots;
      o.rearm_batch = c.rearm_batch;
      o.region_size = c.region_size;
      o.staging_bytes = c.staging_bytes;
      o.op_timeout_ns = c.op_timeout_ns;
      o.epoch = c.epoch;
      Result<CreatedMember> info = resource_exhausted("out of memory creating the member");
      try {
        info = create_member(*host, s.tenant, c.pos, c.n, o);
      } catch (const std::bad_alloc&) {
        // Sizes are bounded by the limits above; this is the host itself
        // running short. The daemon keeps serving.
      }
      if (!info) return refuse(s, type, info.status(), false);
      s.owns_member = true;
      s.member_id = info->id;
      if (info->fenced_id != 0) {
        // The session that held the fenced member keeps its connection (its
        // client learns of the fence from its next request) but owns nothing.
        for (auto& [fd, other] : sessions) {
          if (&other == &s || !other.owns_member || other.tenant != s.tenant || other.member_id != info->fenced_id)
            continue;
          other.owns_member = false;
          other.fenced_by = c.epoch;
          count([](ControlStats& x) { ++x.members_fenced; });
          log(LogLevel::kInfo, "control", "member_fenced",
              {{"peer", other.peer}, {"tenant", s.tenant}, {"by", s.peer}, {"epoch", c.epoch}});
        }
      }
      count([](ControlStats& x) { ++x.members_created; });
      log(LogLevel::kInfo, "control", "member_created",
          {{"peer", s.peer}, {"tenant", s.tenant}, {"pos", c.pos}, {"n", c.n}, {"epoch", c.epoch},
           {"mode", forward_mode_name(o.mode)}, {"slots", c.slots}});
      return reply(s, type, encode_ok(encode_member_info(info->info)));
    }
    case MsgType::kConnect: {
      const auto& c = std::get<ConnectRequest>(req->body);
      if (!s.owns_member) return refuse(s, type, no_member(s, "CONNECT"), false);
      auto st = connect_member(*host, s.tenant, s.member_id, c.prev, c.next, c.client_ctrl);
      if (!st.is_ok()) return refuse(s, type, st, false);
      return reply(s, type, encode_ok({}));
    }
    case MsgType::kStart: {
      if (!s.owns_member) return refuse(s, type, no_member(s, "START"), false);
      Status st = resource_exhausted("out of memory arming the member");
      try {
        st = start_member(*host, s.tenant, s.member_id);
      } catch (const std::bad_alloc&) {
      }
      if (!st.is_ok()) return refuse(s, type, st, false);
      return reply(s, type, encode_ok({}));
    }
    case MsgType::kDrop: {
      if (s.owns_member) {
        drop_member(*host, s.tenant, s.member_id);
        s.owns_member = false;
        count([](ControlStats& x) { ++x.members_dropped; });
        log(LogLevel::kInfo, "control", "member_dropped", {{"peer", s.peer}, {"tenant", s.tenant}, {"reason", "DROP"}});
      }
      return reply(s, type, encode_ok({}));
    }
    case MsgType::kTakeover:
      return refuse(s, type, not_supported("TAKEOVER (fenced takeover of a tenant) is reserved for a later version"),
                    false);
    default:
      return refuse(s, type, internal_error("unhandled request type"), true);
  }
}

void ControlServer::Impl::close_session(int fd, std::string_view reason) {
  auto it = sessions.find(fd);
  if (it == sessions.end()) return;
  Session& s = it->second;
  if (s.owns_member) {
    drop_member(*host, s.tenant, s.member_id);
    count([](ControlStats& x) { ++x.members_dropped; });
    log(LogLevel::kInfo, "control", "member_dropped", {{"peer", s.peer}, {"tenant", s.tenant}, {"reason", reason}});
  }
  if (s.state != SessionState::kAuthed) --unauthenticated;
  log(LogLevel::kDebug, "control", "connection_closed", {{"peer", s.peer}, {"reason", reason}});
  count([](ControlStats& x) { --x.connections_open; });
  epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  sessions.erase(it);
}

void ControlServer::Impl::check_timers() {
  const uint64_t now = mono_ns();
  std::vector<std::pair<int, bool>> expired;  // fd, authenticated
  for (auto& [fd, s] : sessions) {
    if (s.state != SessionState::kAuthed) {
      if (now - s.opened_ns >= opts.auth_timeout_ns) expired.emplace_back(fd, false);
    } else if (now - s.last_rx_ns >= opts.client_timeout_ns) {
      expired.emplace_back(fd, true);
    }
  }
  for (auto [fd, authed] : expired) {
    auto& s = sessions.at(fd);
    if (authed) {
      count([](ControlStats& x) { ++x.client_timeouts; });
      log(LogLevel::kWarn, "control", "client_timeout",
          {{"peer", s.peer}, {"tenant", s.tenant}, {"silent_ms", (now - s.last_rx_ns) / 1'000'000}});
      close_session(fd, "client silent past client_timeout");
    } else {
      count([](ControlStats& x) { ++x.auth_timeouts; });
      log(LogLevel::kWarn, "control", "auth_timeout", {{"peer", s.peer}});
      close_session(fd, "not authenticated within auth_timeout");
    }
  }
}

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<ControlServer>> ControlServer::start(ReplicaHost& host, const std::string& ipv4, uint16_t port,
                                                            const ControlOptions& options) {
  if (options.max_connections == 0 || options.max_unauthenticated == 0 || options.auth_timeout_ns == 0 ||
      options.client_timeout_ns == 0 || options.max_slots < 2 || options.max_output_bytes < 4096)
    return invalid_argument("control limits must be positive (max_slots >= 2, max_output_bytes >= 4096)");
  auto im = std::make_unique<Impl>();
  im->host = &host;
  im->opts = options;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (inet_pton(AF_INET, ipv4.c_str(), &sa.sin_addr) != 1) return invalid_argument("'" + ipv4 + "' is not IPv4");
  im->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (im->listen_fd < 0) return unavailable("socket: " + std::string(std::strerror(errno)));
  int one = 1;
  setsockopt(im->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(im->listen_fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(im->listen_fd, 128) != 0) {
    const std::string why = std::strerror(errno);
    close(im->listen_fd);
    return unavailable("control port " + ipv4 + ":" + std::to_string(port) + ": " + why);
  }
  socklen_t len = sizeof sa;
  getsockname(im->listen_fd, reinterpret_cast<sockaddr*>(&sa), &len);
  im->port = ntohs(sa.sin_port);
  im->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  im->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  im->reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (im->epoll_fd < 0 || im->wake_fd < 0) {
    const std::string why = std::strerror(errno);
    for (int fd : {im->listen_fd, im->epoll_fd, im->wake_fd, im->reserve_fd})
      if (fd >= 0) close(fd);
    return unavailable("epoll/eventfd: " + why);
  }
  for (int fd : {im->listen_fd, im->wake_fd}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(im->epoll_fd, EPOLL_CTL_ADD, fd, &ev);
  }
  Impl* raw = im.get();
  im->loop = std::thread([raw] { raw->run(); });
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(im)));
}

ControlServer::~ControlServer() {
  impl_->stop.store(true, std::memory_order_release);
  const uint64_t one = 1;
  (void)::write(impl_->wake_fd, &one, sizeof one);
  impl_->loop.join();
  std::vector<int> fds;
  for (auto& [fd, s] : impl_->sessions) fds.push_back(fd);
  for (int fd : fds) impl_->close_session(fd, "daemon stopping");
  for (int fd : {impl_->listen_fd, impl_->epoll_fd, impl_->wake_fd, impl_->reserve_fd})
    if (fd >= 0) close(fd);
}

uint16_t ControlServer::port() const { return impl_->port; }

ControlStats ControlServer::stats() const {
  std::lock_guard<std::mutex> l(impl_->stats_mu);
  return impl_->stats;
}

}  // namespace hyperloop::prim::internal
