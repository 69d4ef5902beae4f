// hyperloop/mlx5_rnic.h: ConnectX (mlx5) through stock rdma-core with DevX (rnic/mlx5).
//
// The device interface of rnic.h on a ConnectX-4 or newer, built from PRM
// commands that the NIC's firmware runs (DevX, rdma-core 44's mlx5dv), so
// that queues carry the cross-channel bits upstream verbs cannot ask for:
//   context    mlx5dv_open_device(MLX5DV_CONTEXT_FLAGS_DEVX)
//   caps       QUERY_HCA_CAP (general and atomic, current values)
//   PD, MRs    ibv_alloc_pd (its pdn through mlx5dv_init_obj), ibv_reg_mr
//   CQs        CREATE_CQ over a umem ring and a umem doorbell record, on a
//              DevX UAR; ignore overrun (cqc.oi) where CqAttr asks
//   QPs        CREATE_QP (RC) over one umem holding the receive queue and
//              then the send queue, cd_master / cd_slave_send /
//              cd_slave_receive as QpAttr asks; RST2INIT, INIT2RTR, RTR2RTS,
//              2ERR and 2RST by DevX modify
//   posting    WQEs encoded by the one mlx5 codec (hyperloop/mlx5/wqe.h)
//              into the ring, the doorbell record, then the UAR doorbell;
//              never a doorbell for a managed (cd_slave) queue: its producer
//              is only recorded, and the master's SEND_EN releases it
//   polling    the CQ ring read with mlx5::read_cqe; consumer index to the
//              CQ's doorbell record
// The send and receive rings are ordinary memory the process allocated,
// registered with the NIC as a umem and, on request, as memory regions: the
// primitives' offload mode patches them exactly as on the software RNIC
// (DeviceCaps::raw_send_ring, send_wqe_format kMlx5).
//
// A device whose QUERY_HCA_CAP has no `cd` bit runs without cross-channel:
// caps.cross_channel and managed_queues are false, WAIT/SEND_EN/RECV_EN and
// managed QPs are kNotSupported, and the primitives run in kCpuForward.
//
// What was run: the PRM command encoder is unit-tested field by field
// against offsets from rdma-core's and DPDK's layouts (tests/mlx5_prm_test.cc);
// this backend is compiled with -Werror against Debian 12's rdma-core 44. It
// has never run on ConnectX hardware (these machines have none): see
// docs/mlx5.md for what a user should run first (hyperloop-probe).
//
// Addressing (RoCE v2 and InfiniBand): port 1 (Options::port). On Ethernet
// the GID is chosen as in rnic/verbs (the first RoCE v2 entry holding an IPv4
// address, unless Options::gid_index), and the QP address carries the MAC of
// the GID's netdev: connect() uses the peer's MAC as the destination, so both
// ends must share an L2 segment (no router between them).
//
// Thread-safety and lifetimes: as rnic.h. Each open() is its own context.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hyperloop/rnic.h"
#include "hyperloop/status.h"

namespace hyperloop::mlx5dev {

struct Options {
  uint8_t port = 1;
  int gid_index = -1;  // -1: choose as described above
};

// What QUERY_HCA_CAP reports that the device interface depends on (current
// values). Field names follow the PRM (mlx5_ifc.h).
struct HcaCaps {
  bool cd = false;            // cross-channel: WAIT, SEND_EN, RECV_EN, cd_* QPs
  bool cq_oi = false;         // CQs that ignore overrun
  bool atomic = false;        // atomic operations (then the atomic caps below)
  bool rc = false;
  bool wait_on_data = false;  // WAIT opmod WAIT_DATA (not used by hyperloop)
  bool wait_on_time = false;  // WAIT opmod WAIT_TIME (not used by hyperloop)
  uint8_t port_type = 0;      // 0 InfiniBand, 1 Ethernet
  uint8_t cqe_version = 0;
  uint8_t log_max_qp_sz = 0;  // WQEs per queue, log2
  uint8_t log_max_cq_sz = 0;
  uint8_t log_max_msg = 0;
  uint8_t log_max_ra_req_qp = 0;
  uint8_t log_max_ra_res_qp = 0;
  uint16_t max_wqe_sz_sq = 0;  // bytes
  uint16_t max_wqe_sz_rq = 0;
  // Atomic caps (valid when `atomic`): the requester's 8-byte endianness mode
  // (0: big-endian, 1: host endianness, what hyperloop's CAS semantics need),
  // the operations bitmask (bit 0 CAS, bit 1 FAA) and the QP sizes mask.
  uint8_t atomic_endianness_mode = 0;
  uint16_t atomic_operations = 0;
  uint16_t atomic_size_qp = 0;
};

// Names of the rdma-core devices whose provider is mlx5 (mlx5dv_is_supported),
// in libibverbs' order; empty when there is none (as on these machines).
std::vector<std::string> device_names();

// Opens `name` through DevX. Errors: kNotFound (no such mlx5 device: the
// message names the ones found), kNotSupported (the device or its kernel
// refuses a DevX context), kUnavailable (a query failed), kInvalidArgument
// (no such port or GID index).
Result<std::unique_ptr<rnic::Device>> open(std::string_view name, const Options& options = {});

// The HCA capabilities of a device open()ed here. kInvalidArgument for a
// device of another backend.
Result<HcaCaps> hca_caps(const rnic::Device& device);

}  // namespace hyperloop::mlx5dev
