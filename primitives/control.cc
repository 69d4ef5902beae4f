// primitives/: member set-up, local or over TCP.
//
// The control protocol (one TCP connection per Group and daemon, requests
// answered in order; both ends are the same build on the same architecture,
// so fixed-layout structs travel as bytes):
//   request  = u32 length, u8 op, body
//   response = u32 length, u8 StatusCode, body (OK) or message (error)
//   op 1 CREATE  {CreateRequest}            -> MemberInfo
//   op 2 CONNECT {ConnectRequest}           -> (empty)
//   op 3 START   {u32 tenant}               -> (empty)
//   op 4 DROP    {u32 tenant}               -> (empty)
// When a control connection closes, the daemon drops the members it created
// (a dead client frees its tenants for the next one).
#include "control.h"

#include "hyperloop/internal/socket_io.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

namespace hyperloop::prim::internal {

namespace {

using hyperloop::internal::read_full;
using hyperloop::internal::write_full;

enum Op : uint8_t { kCreate = 1, kConnect = 2, kStart = 3, kDrop = 4 };

struct CreateRequest {
  uint32_t tenant, pos, n;
  uint8_t mode;
  uint32_t slots, rearm_batch;
  uint64_t region_size, staging_bytes, op_timeout_ns;
};
struct ConnectRequest {
  uint32_t tenant;
  rnic::QpAddress prev, next, client_ctrl;
};
static_assert(std::is_trivially_copyable_v<MemberInfo> && std::is_trivially_copyable_v<ConnectRequest>);

bool send_frame(int fd, uint8_t tag, const void* body, uint32_t len) {
  const uint32_t total = len + 1;
  return write_full(fd, &total, 4) && write_full(fd, &tag, 1) && (!len || write_full(fd, body, len));
}
bool recv_frame(int fd, uint8_t* tag, std::vector<std::byte>* body) {
  uint32_t total;
  if (!read_full(fd, &total, 4) || total == 0 || total > (1u << 20)) return false;
  if (!read_full(fd, tag, 1)) return false;
  body->resize(total - 1);
  return total == 1 || read_full(fd, body->data(), total - 1);
}

Result<std::pair<uint32_t, uint16_t>> parse_endpoint(const std::string& endpoint) {
  const auto colon = endpoint.rfind(':');
  in_addr a{};
  if (colon == std::string::npos || inet_pton(AF_INET, endpoint.substr(0, colon).c_str(), &a) != 1)
    return invalid_argument("'" + endpoint + "' is not ipv4:port");
  const long port = std::strtol(endpoint.c_str() + colon + 1, nullptr, 10);
  if (port <= 0 || port > 65535) return invalid_argument("'" + endpoint + "' has no valid port");
  return std::pair<uint32_t, uint16_t>{a.s_addr, uint16_t(port)};
}

// ---- in-process ----------------------------------------------------------------------
class LocalControl final : public MemberControl {
 public:
  explicit LocalControl(ReplicaHost& h) : h_(h) {}
  Result<MemberInfo> create(uint32_t t, uint32_t pos, uint32_t n, const GroupOptions& o) override {
    return create_member(h_, t, pos, n, o);
  }
  Status connect(uint32_t t, const rnic::QpAddress& p, const rnic::QpAddress& nx, const rnic::QpAddress& c) override {
    return connect_member(h_, t, p, nx, c);
  }
  Status start(uint32_t t) override { return start_member(h_, t); }
  void drop(uint32_t t) override { drop_member(h_, t); }

 private:
  ReplicaHost& h_;
};

// ---- over TCP --------------------------------------------------------------------------
class RemoteControl final : public MemberControl {
 public:
  RemoteControl(int fd, std::string endpoint) : fd_(fd), endpoint_(std::move(endpoint)) {}
  ~RemoteControl() override { close(fd_); }

  Result<MemberInfo> create(uint32_t t, uint32_t pos, uint32_t n, const GroupOptions& o) override {
    CreateRequest r{t, pos, n, uint8_t(o.mode), o.slots, o.rearm_batch, o.region_size, o.staging_bytes, o.op_timeout_ns};
    std::vector<std::byte> body;
    HL_RETURN_IF_ERROR(call(kCreate, &r, sizeof r, &body));
    if (body.size() != sizeof(MemberInfo)) return unavailable("malformed CREATE answer from " + endpoint_);
    MemberInfo info;
    std::memcpy(&info, body.data(), sizeof info);
    return info;
  }
  Status connect(uint32_t t, const rnic::QpAddress& p, const rnic::QpAddress& nx, const rnic::QpAddress& c) override {
    ConnectRequest r{t, p, nx, c};
    std::vector<std::byte> body;
    return call(kConnect, &r, sizeof r, &body);
  }
  Status start(uint32_t t) override {
    std::vector<std::byte> body;
    return call(kStart, &t, 4, &body);
  }
  void drop(uint32_t t) override {
    std::vector<std::byte> body;
    (void)call(kDrop, &t, 4, &body);
  }

 private:
  Status call(uint8_t op, const void* req, uint32_t len, std::vector<std::byte>* body) {
    uint8_t code;
    if (!send_frame(fd_, op, req, len) || !recv_frame(fd_, &code, body))
      return unavailable("replica daemon at " + endpoint_ + " closed the control connection");
    if (code == uint8_t(StatusCode::kOk)) return Status::ok();
    return Status(StatusCode(code), "replica " + endpoint_ + ": " +
                                        std::string(reinterpret_cast<const char*>(body->data()), body->size()));
  }
  int fd_;
  std::string endpoint_;
};

}  // namespace

std::unique_ptr<MemberControl> local_control(ReplicaHost& host) { return std::make_unique<LocalControl>(host); }

Result<std::unique_ptr<MemberControl>> remote_control(const std::string& endpoint) {
  HL_ASSIGN_OR_RETURN(auto ep, parse_endpoint(endpoint));
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return unavailable("socket: " + std::string(std::strerror(errno)));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = ep.first;
  sa.sin_port = htons(ep.second);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    const std::string why = std::strerror(errno);
    close(fd);
    return unavailable("cannot reach the replica daemon at " + endpoint + ": " + why);
  }
  hyperloop::internal::set_nodelay(fd);
  return std::unique_ptr<MemberControl>(std::make_unique<RemoteControl>(fd, endpoint));
}

// ---- the daemon side --------------------------------------------------------------------
struct ControlServer::Impl {
  ReplicaHost* host = nullptr;
  int listen_fd = -1;
  uint16_t port = 0;
  std::thread acceptor;
  std::mutex mu;
  std::vector<std::pair<int, std::thread>> sessions;

  void serve(int fd) {
    std::set<uint32_t> created;
    std::vector<std::byte> body;
    uint8_t op;
    while (recv_frame(fd, &op, &body)) {
      Status s;
      std::vector<std::byte> out;
      if (op == kCreate && body.size() == sizeof(CreateRequest)) {
        CreateRequest r;
        std::memcpy(&r, body.data(), sizeof r);
        GroupOptions o;
        o.tenant = r.tenant;
        o.mode = ForwardMode(r.mode);
        o.slots = r.slots;
        o.rearm_batch = r.rearm_batch;
        o.region_size = r.region_size;
        o.staging_bytes = r.staging_bytes;
        o.op_timeout_ns = r.op_timeout_ns;
        auto info = create_member(*host, r.tenant, r.pos, r.n, o);
        s = info.status();
        if (info.is_ok()) {
          created.insert(r.tenant);
          out.resize(sizeof(MemberInfo));
          std::memcpy(out.data(), &*info, sizeof(MemberInfo));
        }
      } else if (op == kConnect && body.size() == sizeof(ConnectRequest)) {
        ConnectRequest r;
        std::memcpy(&r, body.data(), sizeof r);
        s = connect_member(*host, r.tenant, r.prev, r.next, r.client_ctrl);
      } else if ((op == kStart || op == kDrop) && body.size() == 4) {
        uint32_t t;
        std::memcpy(&t, body.data(), 4);
        if (op == kStart) {
          s = created.count(t) ? start_member(*host, t) : failed_precondition("START before CREATE");
        } else if (created.erase(t)) {
          drop_member(*host, t);
        }
      } else {
        s = invalid_argument("malformed control request");
      }
      if (!s.is_ok()) out.assign(reinterpret_cast<const std::byte*>(s.message().data()),
                                 reinterpret_cast<const std::byte*>(s.message().data()) + s.message().size());
      if (!send_frame(fd, uint8_t(s.code()), out.data(), uint32_t(out.size()))) break;
    }
    for (uint32_t t : created) drop_member(*host, t);  // the client went away
  }
};

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<ControlServer>> ControlServer::start(ReplicaHost& host, const std::string& ipv4, uint16_t port) {
  auto im = std::make_unique<Impl>();
  im->host = &host;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (inet_pton(AF_INET, ipv4.c_str(), &sa.sin_addr) != 1) return invalid_argument("'" + ipv4 + "' is not IPv4");
  im->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(im->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(im->listen_fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(im->listen_fd, 16) != 0) {
    const std::string why = std::strerror(errno);
    close(im->listen_fd);
    return unavailable("control port " + ipv4 + ":" + std::to_string(port) + ": " + why);
  }
  socklen_t len = sizeof sa;
  getsockname(im->listen_fd, reinterpret_cast<sockaddr*>(&sa), &len);
  im->port = ntohs(sa.sin_port);
  Impl* raw = im.get();
  im->acceptor = std::thread([raw] {
    for (;;) {
      const int fd = accept4(raw->listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;
      }
      std::lock_guard<std::mutex> l(raw->mu);
      raw->sessions.emplace_back(fd, std::thread([raw, fd] { raw->serve(fd); }));
    }
  });
  return std::unique_ptr<ControlServer>(new ControlServer(std::move(im)));
}

ControlServer::~ControlServer() {
  shutdown(impl_->listen_fd, SHUT_RDWR);
  impl_->acceptor.join();
  close(impl_->listen_fd);
  std::lock_guard<std::mutex> l(impl_->mu);
  for (auto& [fd, t] : impl_->sessions) shutdown(fd, SHUT_RDWR);
  for (auto& [fd, t] : impl_->sessions) {
    t.join();
    close(fd);
  }
}

uint16_t ControlServer::port() const { return impl_->port; }

}  // namespace hyperloop::prim::internal
