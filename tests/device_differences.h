// device_differences.h: where real devices report an error differently, as
// measured by conformance_test on each device. One table, so every test that
// meets a difference asserts the exact value for the device under test (never
// "either"), and docs/conformance.md lists the same rows.
//
// The software RNIC models mlx5 (its syndromes are the PRM's); the kernel's
// Soft-RoCE (rxe, Linux 6.1.192 of Debian 12, rdma-core 44) differs in the
// rows below. A verbs device that is not rxe is expected to behave as mlx5
// until measured otherwise.
#pragma once

#include <string_view>

#include "hyperloop/rnic.h"

namespace hyperloop::device_differences {

enum class Case {
  // A SGE the requester gathers from (a WRITE's or SEND's source) with a
  // bad lkey or an lkey of another PD. (A gather beyond the region's end,
  // and a READ/atomic result into a region without local write, are
  // kLocalProtectionError on both.)
  kGatherSgeUnusable,
  // A receive the responder cannot scatter into: a region without local
  // write, or of another PD.
  kReceiveScatterUnusable,
  // A SEND larger than the receive it consumes: at the receiver / the sender.
  kReceiveTooSmallAtReceiver,
  kReceiveTooSmallAtSender,
  // A request the responder QP's access rights (init(remote_access)) forbid.
  kQpLacksRemoteRight,
};

inline bool is_rxe(const rnic::DeviceCaps& c) {
  return c.backend == "verbs" && std::string_view(c.name).starts_with("rxe");
}

// The completion status the device under test reports for `what`.
inline rnic::WcStatus expected_status(const rnic::DeviceCaps& c, Case what) {
  using rnic::WcStatus;
  const bool rxe = is_rxe(c);
  switch (what) {
    case Case::kGatherSgeUnusable:  // rxe: the key lookup fails, the WQE ends LOC_QP_OP_ERR
    case Case::kReceiveScatterUnusable:
      return rxe ? WcStatus::kLocalQpOperationError : WcStatus::kLocalProtectionError;
    case Case::kReceiveTooSmallAtReceiver:
      return rxe ? WcStatus::kLocalQpOperationError : WcStatus::kLocalLengthError;
    case Case::kReceiveTooSmallAtSender:
      return rxe ? WcStatus::kRemoteOperationError : WcStatus::kRemoteInvalidRequest;
    case Case::kQpLacksRemoteRight:  // rxe NAKs it as an invalid request (IB 9.7.5.2.1)
      return rxe ? WcStatus::kRemoteInvalidRequest : WcStatus::kRemoteAccessError;
  }
  return WcStatus::kGeneralError;
}

// A misaligned atomic (remote address not 8-byte aligned): rdma-core's rxe
// provider refuses it at post time (post_send: kInvalidArgument, nothing
// sent); mlx5 and the software RNIC send it and the responder answers with a
// remote-invalid-request completion.
inline bool misaligned_atomic_refused_at_post(const rnic::DeviceCaps& c) { return is_rxe(c); }

// A CQ overrun: mlx5 and the software RNIC move the QP whose completion did
// not fit to ERROR; rxe (rxe_cq_post fails, IB_EVENT_CQ_ERR is raised) leaves
// it in RTS. Both report the overrun (poll: kResourceExhausted).
inline bool overrun_stops_the_producer(const rnic::DeviceCaps& c) { return !is_rxe(c); }

}  // namespace hyperloop::device_differences
