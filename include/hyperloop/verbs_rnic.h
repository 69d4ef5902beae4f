// hyperloop/verbs_rnic.h: the device interface over rdma-core's verbs (rnic/verbs).
//
// Any RDMA device libibverbs finds (rxe0 of the kernel's Soft-RoCE, mlx5_0 of
// a ConnectX, ...) behind rnic::Device, with standard verbs only:
//   PDs, MRs (ibv_reg_mr with the same access flags), CQs (ibv_create_cq_ex,
//   falling back to ibv_create_cq), RC QPs through RESET/INIT/RTR/RTS/ERROR
//   with RoCE v2 (or IB LID) addressing, structured posting
//   (ibv_post_send/ibv_post_recv), every ibv_wc status mapped to WcStatus,
//   completion channels (ibv_comp_channel + ibv_req_notify_cq).
// What standard verbs cannot express is reported, never emulated:
//   raw rings, managed queues, WAIT/SEND_EN/RECV_EN  kNotSupported (caps false)
//   WrOpcode::kNop                                   kNotSupported (caps.nop false)
//   WorkCompletion::opcode of an error completion    kUnknown (caps.error_cqe_opcode false)
//   WorkCompletion::syndrome / wqe_counter           0 (mlx5 CQE fields);
//                                                    vendor_syndrome = ibv_wc::vendor_err
// Except on rxe with driver-patches/linux-6.1-rxe-cross-channel loaded (its
// marker /sys/module/rdma_rxe/parameters/cross_channel_abi reads 1): there
// WAIT/SEND_EN/RECV_EN, managed queues and ignore-overrun CQs work, through
// the module's interface (its README; docs/verbs.md), and caps say so. No
// new opcode is ever posted without that marker.
// The primitives' offload mode runs here only on the patched rxe (its own
// ring, SendWqeFormat::kRxe); everywhere else in ForwardMode::kCpuForward.
// mlx5 devices open through rnic/mlx5 instead, unless named "verbs:mlx5_N".
//
// Addressing: port 1 (Options::port); the GID is the first RoCE v2 entry of
// the port's table that maps an IPv4 address, else the first RoCE v2 entry,
// else entry 0 (Options::gid_index overrides). A QP's address carries its
// GID, LID, QPN, first PSN (random), active MTU and link layer; connect() uses
// the smaller of both MTUs. The RNR timer is 0.64 ms (IB code 12); ACK
// timeout, retry and RNR retry counts come from rnic::QpAttr.
//
// CQ overrun: verbs reports it as the asynchronous event IBV_EVENT_CQ_ERR. A
// thread per device waits on the context's async fd (it never touches the
// data path) and marks the CQ; its poll() then returns kResourceExhausted.
//
// Thread-safety and lifetimes: as rnic.h. Each open() is its own ibv_context
// (several on one device is fine: a client and replicas in one process).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hyperloop/rnic.h"

namespace hyperloop::verbs {

struct Options {
  uint8_t port = 1;
  int gid_index = -1;  // -1: choose as described above
};

// Names of the devices libibverbs lists, in its order (empty if none, or if
// rdma-core finds no provider).
std::vector<std::string> device_names();

// Opens `name`. Errors: kNotFound (no such device: the message names the ones
// found), kUnavailable (the device cannot be opened or queried), kInvalidArgument
// (no such port or GID index).
Result<std::unique_ptr<rnic::Device>> open(std::string_view name, const Options& options = {});

}  // namespace hyperloop::verbs
