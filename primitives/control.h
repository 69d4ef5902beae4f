// Private to primitives/: how a Group sets up its member on a replica host,
// in-process (a ReplicaHost object) or in another process or host (a
// hyperloop-replica daemon, over the TCP control protocol of control_codec.h).
#pragma once

#include <memory>
#include <string>
#include <string_view>

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
// An authenticated control connection to a daemon at "ipv4:port" for
// `tenant`; every step (connect, each request) is bounded by timeout_ns. It
// sends heartbeats until destroyed. Errors: kInvalidArgument, kUnavailable
// (cannot connect, connection closed), kDeadlineExceeded, kPermissionDenied
// (wrong secret, or the daemon could not prove it knows it), kNotFound.
Result<std::unique_ptr<MemberControl>> remote_control(const std::string& endpoint, uint32_t tenant,
                                                      std::string_view secret, uint64_t timeout_ns);

// A daemon's metrics (the STATS request; no authentication needed).
Result<std::string> remote_stats(const std::string& endpoint, uint64_t timeout_ns);

// The daemon side: serves control requests for `host` on a listening socket
// from one epoll thread until destroyed.
class ControlServer {
 public:
  // Listens on ipv4:port. Errors: kInvalidArgument, kUnavailable (port in use ...).
  static Result<std::unique_ptr<ControlServer>> start(ReplicaHost& host, const std::string& ipv4, uint16_t port,
                                                      const ControlOptions& options);
  ~ControlServer();
  uint16_t port() const;
  ControlStats stats() const;
  struct Impl;

 private:
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The host's counters and the control service's `c` in Prometheus text (what
// STATS answers; the control loop passes its own counters, so it never reads
// the host's pointer to the server while that is being set).
std::string host_metrics_text(const ReplicaHost& host, const ControlStats& c);

// Appends one metric in Prometheus text format (HELP, TYPE, sample).
void append_metric(std::string* out, std::string_view name, std::string_view type, std::string_view help,
                   uint64_t value);

// The tenant's secret on this host. Errors: kNotFound (not registered),
// kPermissionDenied (registered without a secret: no remote client may use it).
Result<std::string> tenant_secret(ReplicaHost& host, uint32_t tenant);

}  // namespace hyperloop::prim::internal
