#include "wr_codec.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace hyperloop::rnic::internal {

AlignedBuffer::AlignedBuffer(size_t bytes) {
  n_ = (bytes + 4095) & ~size_t{4095};
  if (n_ == 0) return;
  p_ = static_cast<std::byte*>(std::aligned_alloc(4096, n_));
  if (!p_) throw std::bad_alloc();  // control path only
  std::memset(p_, 0, n_);
}

AlignedBuffer::~AlignedBuffer() { std::free(p_); }

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
  if (this != &o) {
    std::free(p_);
    p_ = o.p_;
    n_ = o.n_;
    o.p_ = nullptr;
    o.n_ = 0;
  }
  return *this;
}

namespace {
uint8_t opcode_of(WrOpcode op) {
  switch (op) {
    case WrOpcode::kNop: return mlx5::kOpNop;
    case WrOpcode::kRdmaWrite: return mlx5::kOpRdmaWrite;
    case WrOpcode::kRdmaWriteImm: return mlx5::kOpRdmaWriteImm;
    case WrOpcode::kSend: return mlx5::kOpSend;
    case WrOpcode::kSendImm: return mlx5::kOpSendImm;
    case WrOpcode::kRdmaRead: return mlx5::kOpRdmaRead;
    case WrOpcode::kAtomicCas: return mlx5::kOpAtomicCs;
    case WrOpcode::kAtomicFaa: return mlx5::kOpAtomicFa;
    case WrOpcode::kWait: return mlx5::kOpWait;
    case WrOpcode::kSendEnable: return mlx5::kOpSendEnable;
    case WrOpcode::kRecvEnable: return mlx5::kOpRecvEnable;
  }
  return 0xff;
}
}  // namespace

Status build_send_wqe(const SendWr& wr, uint32_t qpn, const RingLimits& limits, uint32_t wait_cqn,
                      uint32_t enable_qpn, std::byte* inline_scratch, mlx5::SendWqe* out) {
  mlx5::SendWqe& w = *out;
  w = mlx5::SendWqe{};
  w.ctrl.opcode = opcode_of(wr.opcode);
  if (w.ctrl.opcode == 0xff) return invalid_argument("unknown work request opcode");
  w.ctrl.qpn = qpn;
  uint8_t f = 0;
  if (wr.flags & kSendSignaled) f |= mlx5::kCtrlCqUpdate;
  if (wr.flags & kSendSolicited) f |= mlx5::kCtrlSolicited;
  if (wr.flags & kSendFence) f |= mlx5::kCtrlFence;
  w.ctrl.fm_ce_se = f;
  if (wr.opcode == WrOpcode::kRdmaWriteImm || wr.opcode == WrOpcode::kSendImm)
    w.ctrl.imm = mlx5::to_be32(wr.imm);

  switch (wr.opcode) {
    case WrOpcode::kNop:
      return Status::ok();
    case WrOpcode::kWait:
    case WrOpcode::kSendEnable:
    case WrOpcode::kRecvEnable:
      if (!limits.cross_channel)
        return not_supported("cross-channel work requests need a QP created with cross_channel");
      if (wr.opcode == WrOpcode::kWait) {
        if (!wr.wait_cq) return invalid_argument("WAIT needs wait_cq");
        w.ctrl.opmod = mlx5::kWaitCqPi;
        w.qpn_cqn = wait_cqn;
        w.max_index = wr.index & mlx5::kCqIndexMask;
      } else {
        if (!wr.enable_qp) return invalid_argument("SEND_EN/RECV_EN needs enable_qp");
        w.qpn_cqn = enable_qpn;
        w.max_index = wr.index & mlx5::kWqeIndexMask;
      }
      return Status::ok();
    case WrOpcode::kAtomicCas:
    case WrOpcode::kAtomicFaa:
      if (!limits.atomics) return not_supported("device has no atomics");
      if (wr.sg.size() != 1 || wr.sg[0].length != 8)
        return invalid_argument("atomics need exactly one 8-byte local SGE for the old value");
      w.raddr = wr.remote_addr;
      w.rkey = wr.rkey;
      if (wr.opcode == WrOpcode::kAtomicCas) {
        w.swap_add = wr.swap;
        w.compare = wr.compare_add;
      } else {
        w.swap_add = wr.compare_add;
      }
      w.num_sge = 1;
      w.sge[0] = wr.sg[0];
      return Status::ok();
    default:
      break;
  }
  // RDMA WRITE/READ and SEND.
  w.raddr = wr.remote_addr;
  w.rkey = wr.rkey;
  if (wr.flags & kSendInline) {
    if (wr.opcode == WrOpcode::kRdmaRead) return invalid_argument("RDMA READ cannot be inline");
    uint64_t total = 0;
    for (const Sge& sg : wr.sg) total += sg.length;
    if (total > limits.max_inline) return invalid_argument("inline payload larger than max_inline_data");
    uint32_t off = 0;
    for (const Sge& sg : wr.sg) {
      std::memcpy(inline_scratch + off, reinterpret_cast<const void*>(sg.addr), sg.length);
      off += sg.length;
    }
    w.is_inline = true;
    w.inline_len = off;
    w.inline_data = inline_scratch;
    if (off == 0) w.is_inline = false;  // zero-length: no data segment at all
    return Status::ok();
  }
  uint32_t n = 0;
  for (const Sge& s : wr.sg) {
    if (s.length == 0) continue;
    if (n == limits.max_sge) return invalid_argument("too many SGEs for this QP");
    w.sge[n++] = s;
  }
  w.num_sge = n;
  return Status::ok();
}

WorkCompletion to_work_completion(const mlx5::CqeFields& c, uint64_t wr_id) {
  WorkCompletion wc;
  wc.wr_id = wr_id;
  wc.qpn = c.qpn;
  wc.wqe_counter = c.wqe_counter;
  wc.byte_len = c.byte_cnt;
  const bool err = c.opcode == mlx5::kCqeReqErr || c.opcode == mlx5::kCqeRespErr;
  wc.status = err ? wc_status_from_syndrome(c.syndrome) : WcStatus::kSuccess;
  wc.syndrome = c.syndrome;
  wc.vendor_syndrome = c.vendor_syndrome;
  if (is_requester_cqe(c.opcode)) {
    switch (c.send_opcode) {
      case mlx5::kOpNop: wc.opcode = WcOpcode::kNop; break;
      case mlx5::kOpRdmaWrite:
      case mlx5::kOpRdmaWriteImm: wc.opcode = WcOpcode::kRdmaWrite; break;
      case mlx5::kOpSend:
      case mlx5::kOpSendImm: wc.opcode = WcOpcode::kSend; break;
      case mlx5::kOpRdmaRead: wc.opcode = WcOpcode::kRdmaRead; break;
      case mlx5::kOpAtomicCs: wc.opcode = WcOpcode::kAtomicCas; break;
      case mlx5::kOpAtomicFa: wc.opcode = WcOpcode::kAtomicFaa; break;
      case mlx5::kOpWait: wc.opcode = WcOpcode::kWait; break;
      case mlx5::kOpSendEnable: wc.opcode = WcOpcode::kSendEnable; break;
      case mlx5::kOpRecvEnable: wc.opcode = WcOpcode::kRecvEnable; break;
      default: wc.opcode = WcOpcode::kUnknown; break;
    }
  } else {
    wc.opcode = c.opcode == mlx5::kCqeRespWrImm ? WcOpcode::kRecvRdmaWithImm : WcOpcode::kRecv;
    if (c.opcode == mlx5::kCqeRespWrImm || c.opcode == mlx5::kCqeRespSendImm) {
      wc.has_imm = true;
      wc.imm = mlx5::from_be32(c.imm);
    }
  }
  return wc;
}

}  // namespace hyperloop::rnic::internal
