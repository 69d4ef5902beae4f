// Private to primitives/: how the library's internals (member set-up, the
// control server, holds, metrics) reach a ReplicaHost's state. The public
// class keeps its Impl private and names this struct its friend, so nothing
// outside primitives/ can reach inside a host.
#pragma once

#include "hyperloop/primitives.h"

namespace hyperloop::prim::internal {

struct HostAccess {
  static ReplicaHost::Impl* impl(const ReplicaHost& host) { return host.impl_.get(); }
};

}  // namespace hyperloop::prim::internal
