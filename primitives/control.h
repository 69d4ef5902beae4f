// Private to primitives/: how a Group sets up its member on a replica host,
// in-process (a ReplicaHost object) or in another process or host (a
// hyperloop-replica daemon, over a small TCP control protocol).
#pragma once

#include <memory>
#include <string>

#include "member.h"

namespace hyperloop::prim::internal {

class MemberControl {
 public:
  virtual ~MemberControl() = default;
  virtual Result<MemberInfo> create(uint32_t tenant, uint32_t pos, uint32_t n, const GroupOptions& o) = 0;
  virtual Status connect(uint32_t tenant, const rnic::QpAddress& prev, const rnic::QpAddress& next,
                         const rnic::QpAddress& client_ctrl) = 0;
  virtual Status start(uint32_t tenant) = 0;
  virtual void drop(uint32_t tenant) = 0;
};

std::unique_ptr<MemberControl> local_control(ReplicaHost& host);
// A control connection to a daemon at "ipv4:port". Errors: kInvalidArgument,
// kUnavailable (cannot connect).
Result<std::unique_ptr<MemberControl>> remote_control(const std::string& endpoint);

// The daemon side: serves control requests for `host` on a listening socket
// until stop() (see control.cc for the protocol).
class ControlServer {
 public:
  // Listens on ipv4:port. Errors: kInvalidArgument, kUnavailable (port in use ...).
  static Result<std::unique_ptr<ControlServer>> start(ReplicaHost& host, const std::string& ipv4, uint16_t port);
  ~ControlServer();
  uint16_t port() const;
  struct Impl;

 private:
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hyperloop::prim::internal
