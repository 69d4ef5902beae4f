// The PRM command encoder (see prm_cmd.h).
#include "prm_cmd.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace hyperloop::mlx5::prm {

// Bit p of the command (MSB-first) is bit 7 - p%8 of byte p/8: the same bit
// MLX5_SET addresses through big-endian dwords.
void set(std::span<std::byte> buf, Field f, uint64_t v) {
  for (uint32_t i = 0; i < f.width; ++i) {
    const uint32_t p = f.bit + i;
    const uint8_t mask = uint8_t(0x80u >> (p % 8));
    const bool on = (v >> (f.width - 1 - i)) & 1;
    auto& b = reinterpret_cast<uint8_t&>(buf[p / 8]);
    b = on ? uint8_t(b | mask) : uint8_t(b & ~mask);
  }
}

uint64_t get(std::span<const std::byte> buf, Field f) {
  uint64_t v = 0;
  for (uint32_t i = 0; i < f.width; ++i) {
    const uint32_t p = f.bit + i;
    v = (v << 1) | ((uint8_t(buf[p / 8]) >> (7 - p % 8)) & 1);
  }
  return v;
}

void set_bytes(std::span<std::byte> buf, Field f, std::span<const uint8_t> bytes) {
  std::memcpy(buf.data() + f.bit / 8, bytes.data(), std::min<size_t>(bytes.size(), f.width / 8));
}

namespace {
Bytes command(size_t bytes, uint16_t opcode) {
  Bytes b(bytes, std::byte{0});
  set(b, cmd::kOpcode, opcode);
  return b;
}
// A qpc field of a command whose qpc starts at bit `base`.
Field in_qpc(uint32_t base, Field f) { return Field{base + f.bit, f.width}; }
}  // namespace

Bytes query_hca_cap_in(uint16_t cap_type) {
  Bytes b = command(kQueryHcaCapInBytes, kOpQueryHcaCap);
  set(b, cmd::kOpMod, uint16_t(cap_type << 1) | kCapCurrent);
  return b;
}

Bytes create_cq_in(const CqParams& p) {
  using namespace create_cq;
  Bytes b = command(kCreateCqInBytes, kOpCreateCq);
  set(b, kCqeSz, 0);
  set(b, kOi, p.ignore_overrun);
  set(b, kLogCqSize, p.log_cq_size);
  set(b, kUarPage, p.uar_page);
  set(b, kCEqn, p.eqn);
  set(b, kLogPageSize, p.log_page_size);
  set(b, kDbrUmemValid, 1);
  set(b, kDbrUmemId, p.dbr_umem_id);
  set(b, kCqUmemOffset, 0);
  set(b, kCqUmemId, p.cq_umem_id);
  set(b, kCqUmemValid, 1);
  return b;
}

Bytes create_qp_in(const QpParams& p) {
  Bytes b = command(kCreateQpInBytes, kOpCreateQp);
  const uint32_t q = create_qp::kQpc;
  set(b, in_qpc(q, qpc::kSt), 0);        // RC
  set(b, in_qpc(q, qpc::kPmState), 3);   // migrated
  set(b, in_qpc(q, qpc::kPd), p.pdn);
  set(b, in_qpc(q, qpc::kLogRqSize), p.log_rq_size);
  set(b, in_qpc(q, qpc::kLogRqStride), p.log_rq_stride);
  set(b, in_qpc(q, qpc::kLogSqSize), p.log_sq_size);
  set(b, in_qpc(q, qpc::kTsFormat), p.ts_format);
  set(b, in_qpc(q, qpc::kUarPage), p.uar_page);
  set(b, in_qpc(q, qpc::kLogPageSize), p.log_page_size);
  set(b, in_qpc(q, qpc::kCqnSnd), p.cqn_snd);
  set(b, in_qpc(q, qpc::kCqnRcv), p.cqn_rcv);
  set(b, in_qpc(q, qpc::kCdMaster), p.cd_master);
  set(b, in_qpc(q, qpc::kCdSlaveSend), p.cd_slave_send);
  set(b, in_qpc(q, qpc::kCdSlaveReceive), p.cd_slave_receive);
  set(b, in_qpc(q, qpc::kDbrUmemValid), 1);
  set(b, in_qpc(q, qpc::kDbrUmemId), p.dbr_umem_id);
  set(b, create_qp::kWqUmemId, p.wq_umem_id);
  set(b, create_qp::kWqUmemValid, 1);
  return b;
}

namespace {
Bytes modify(uint16_t opcode, uint32_t qpn, uint8_t port) {
  Bytes b = command(kModifyQpInBytes, opcode);
  set(b, modify_qp::kQpn, qpn);
  set(b, in_qpc(modify_qp::kQpc, qpc::kAdsVhcaPortNum), port);
  return b;
}
}  // namespace

Bytes rst2init_in(const Rst2InitParams& p) {
  Bytes b = modify(kOpRst2InitQp, p.qpn, p.port);
  const uint32_t q = modify_qp::kQpc;
  set(b, in_qpc(q, qpc::kRre), p.rre);
  set(b, in_qpc(q, qpc::kRwe), p.rwe);
  set(b, in_qpc(q, qpc::kRae), p.rae);
  set(b, in_qpc(q, qpc::kAtomicMode), p.atomic_mode);
  return b;
}

Bytes init2rtr_in(const Init2RtrParams& p) {
  Bytes b = modify(kOpInit2RtrQp, p.qpn, p.port);
  const uint32_t q = modify_qp::kQpc;
  set(b, in_qpc(q, qpc::kMtu), p.mtu);
  set(b, in_qpc(q, qpc::kLogMsgMax), p.log_msg_max);
  set(b, in_qpc(q, qpc::kRemoteQpn), p.remote_qpn);
  set(b, in_qpc(q, qpc::kNextRcvPsn), p.next_rcv_psn);
  set(b, in_qpc(q, qpc::kMinRnrNak), p.min_rnr_nak);
  set(b, in_qpc(q, qpc::kLogRraMax), p.log_rra_max);
  if (p.roce) {
    set(b, in_qpc(q, qpc::kAdsGrh), 1);
    set_bytes(b, in_qpc(q, qpc::kAdsRgid), p.rgid);
    set(b, in_qpc(q, qpc::kAdsRmac47_32), uint64_t(p.rmac[0]) << 8 | p.rmac[1]);
    set(b, in_qpc(q, qpc::kAdsRmac31_0),
        uint64_t(p.rmac[2]) << 24 | uint64_t(p.rmac[3]) << 16 | uint64_t(p.rmac[4]) << 8 | p.rmac[5]);
    set(b, in_qpc(q, qpc::kAdsSrcAddrIndex), p.src_addr_index);
    set(b, in_qpc(q, qpc::kAdsHopLimit), p.hop_limit);
    set(b, in_qpc(q, qpc::kAdsUdpSport), p.udp_sport);
  } else {
    set(b, in_qpc(q, qpc::kAdsRlid), p.rlid);
  }
  return b;
}

Bytes rtr2rts_in(const Rtr2RtsParams& p) {
  Bytes b = modify(kOpRtr2RtsQp, p.qpn, p.port);
  const uint32_t q = modify_qp::kQpc;
  set(b, in_qpc(q, qpc::kRetryCount), p.retry_count);
  set(b, in_qpc(q, qpc::kRnrRetry), p.rnr_retry);
  set(b, in_qpc(q, qpc::kAdsAckTimeout), p.ack_timeout);
  set(b, in_qpc(q, qpc::kNextSendPsn), p.next_send_psn);
  set(b, in_qpc(q, qpc::kLogSraMax), p.log_sra_max);
  return b;
}

Bytes qp_2err_in(uint32_t qpn) {
  Bytes b = command(kQpStateInBytes, kOp2ErrQp);
  set(b, modify_qp::kQpn, qpn);
  return b;
}

Bytes qp_2rst_in(uint32_t qpn) {
  Bytes b = command(kQpStateInBytes, kOp2RstQp);
  set(b, modify_qp::kQpn, qpn);
  return b;
}

Bytes query_qp_in(uint32_t qpn) {
  Bytes b = command(kQpStateInBytes, kOpQueryQp);
  set(b, modify_qp::kQpn, qpn);
  return b;
}

uint8_t queried_qp_state(std::span<const std::byte> out) {
  return uint8_t(get(out, in_qpc(query_qp::kQpc, qpc::kState)));
}

std::string cmd_status_name(uint8_t status) {
  switch (status) {
    case 0x00: return "OK";
    case 0x01: return "INT_ERR";
    case 0x02: return "BAD_OP_ERR";
    case 0x03: return "BAD_PARAM_ERR";
    case 0x04: return "BAD_SYS_STATE_ERR";
    case 0x05: return "BAD_RES_ERR";
    case 0x06: return "RES_BUSY";
    case 0x08: return "LIM_ERR";
    case 0x09: return "BAD_RES_STATE_ERR";
    case 0x0a: return "IX_ERR";
    case 0x0f: return "NO_RES_ERR";
    case 0x10: return "BAD_QP_STATE_ERR";
    case 0x30: return "BAD_PKT_ERR";
    case 0x40: return "BAD_SIZE_OUTS_CQES_ERR";
    case 0x50: return "BAD_INP_LEN_ERR";
    case 0x51: return "BAD_OUTP_LEN_ERR";
  }
  return "unknown status";
}

namespace {
std::string hex(uint64_t v) {
  char s[24];
  std::snprintf(s, sizeof s, "0x%llx", static_cast<unsigned long long>(v));
  return s;
}
}  // namespace

Status check_cmd_out(std::span<const std::byte> out, const char* what) {
  if (out.size() < kCmdOutBytes) return internal_error(std::string(what) + ": output shorter than a command header");
  const auto status = uint8_t(get(out, cmd::kOutStatus));
  if (status == 0) return Status::ok();
  return unavailable(std::string(what) + " failed: status " + cmd_status_name(status) + " (" + hex(status) +
                     "), syndrome " + hex(get(out, cmd::kOutSyndrome)));
}

uint32_t created_id(std::span<const std::byte> out) { return uint32_t(get(out, cmd::kOutObjId)); }

Status parse_hca_caps(std::span<const std::byte> general_out, std::span<const std::byte> atomic_out,
                      mlx5dev::HcaCaps* c) {
  if (general_out.size() < kQueryHcaCapOutBytes)
    return invalid_argument("QUERY_HCA_CAP(general) output is " + std::to_string(general_out.size()) + " bytes, not " +
                            std::to_string(kQueryHcaCapOutBytes));
  const auto g = general_out.subspan(hca_cap::kCapability / 8);
  using namespace hca_cap;
  *c = mlx5dev::HcaCaps{};
  c->cd = get(g, kCd);
  c->cq_oi = get(g, kCqOi);
  c->atomic = get(g, kAtomic);
  c->rc = get(g, kRc);
  c->wait_on_data = get(g, kWaitOnData);
  c->wait_on_time = get(g, kWaitOnTime);
  c->port_type = uint8_t(get(g, kPortType));
  c->cqe_version = uint8_t(get(g, kCqeVersion));
  c->log_max_qp_sz = uint8_t(get(g, kLogMaxQpSz));
  c->log_max_cq_sz = uint8_t(get(g, kLogMaxCqSz));
  c->log_max_msg = uint8_t(get(g, kLogMaxMsg));
  c->log_max_ra_req_qp = uint8_t(get(g, kLogMaxRaReqQp));
  c->log_max_ra_res_qp = uint8_t(get(g, kLogMaxRaResQp));
  c->max_wqe_sz_sq = uint16_t(get(g, kMaxWqeSzSq));
  c->max_wqe_sz_rq = uint16_t(get(g, kMaxWqeSzRq));
  if (!c->atomic) return Status::ok();
  if (atomic_out.size() < kQueryHcaCapOutBytes)
    return invalid_argument("QUERY_HCA_CAP(atomic) output is " + std::to_string(atomic_out.size()) + " bytes, not " +
                            std::to_string(kQueryHcaCapOutBytes));
  const auto a = atomic_out.subspan(hca_cap::kCapability / 8);
  c->atomic_endianness_mode = uint8_t(get(a, atomic_cap::kReq8BEndiannessMode));
  c->atomic_operations = uint16_t(get(a, atomic_cap::kOperations));
  c->atomic_size_qp = uint16_t(get(a, atomic_cap::kSizeQp));
  return Status::ok();
}

}  // namespace hyperloop::mlx5::prm
