// Device-independent parts of the device interface: names, status mapping,
// connect_pair. (open_device, which must see the backends, is devices.cc.)
#include "hyperloop/rnic.h"

#include <time.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace hyperloop {

uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

std::string_view status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kInvalidArgument: return "InvalidArgument";
    case StatusCode::kOutOfRange: return "OutOfRange";
    case StatusCode::kNotFound: return "NotFound";
    case StatusCode::kAlreadyExists: return "AlreadyExists";
    case StatusCode::kPermissionDenied: return "PermissionDenied";
    case StatusCode::kFailedPrecondition: return "FailedPrecondition";
    case StatusCode::kResourceExhausted: return "ResourceExhausted";
    case StatusCode::kUnavailable: return "Unavailable";
    case StatusCode::kDeadlineExceeded: return "DeadlineExceeded";
    case StatusCode::kAborted: return "Aborted";
    case StatusCode::kDataLoss: return "DataLoss";
    case StatusCode::kNotSupported: return "NotSupported";
    case StatusCode::kInternal: return "Internal";
  }
  return "Unknown";
}

std::string Status::to_string() const {
  if (is_ok()) return "OK";
  std::string s(status_code_name(code_));
  s += ": ";
  s += message_;
  return s;
}

namespace rnic {

std::string_view wc_opcode_name(WcOpcode o) {
  switch (o) {
    case WcOpcode::kSend: return "SEND";
    case WcOpcode::kRdmaWrite: return "RDMA_WRITE";
    case WcOpcode::kRdmaRead: return "RDMA_READ";
    case WcOpcode::kAtomicCas: return "ATOMIC_CAS";
    case WcOpcode::kAtomicFaa: return "ATOMIC_FAA";
    case WcOpcode::kNop: return "NOP";
    case WcOpcode::kWait: return "WAIT";
    case WcOpcode::kSendEnable: return "SEND_EN";
    case WcOpcode::kRecvEnable: return "RECV_EN";
    case WcOpcode::kRecv: return "RECV";
    case WcOpcode::kRecvRdmaWithImm: return "RECV_RDMA_WITH_IMM";
    case WcOpcode::kUnknown: return "UNKNOWN";
  }
  return "?";
}

std::string_view wc_status_name(WcStatus s) {
  switch (s) {
    case WcStatus::kSuccess: return "success";
    case WcStatus::kLocalLengthError: return "local length error";
    case WcStatus::kLocalQpOperationError: return "local QP operation error";
    case WcStatus::kLocalProtectionError: return "local protection error";
    case WcStatus::kFlushed: return "work request flushed";
    case WcStatus::kBadResponse: return "bad response";
    case WcStatus::kLocalAccessError: return "local access error";
    case WcStatus::kRemoteInvalidRequest: return "remote invalid request";
    case WcStatus::kRemoteAccessError: return "remote access error";
    case WcStatus::kRemoteOperationError: return "remote operation error";
    case WcStatus::kRetryExceeded: return "transport retry counter exceeded";
    case WcStatus::kRnrRetryExceeded: return "RNR retry counter exceeded";
    case WcStatus::kGeneralError: return "general error";
  }
  return "?";
}

WcStatus wc_status_from_syndrome(uint8_t syndrome) {
  using namespace mlx5;
  switch (syndrome) {
    case kSyndromeLocalLength: return WcStatus::kLocalLengthError;
    case kSyndromeLocalQpOp: return WcStatus::kLocalQpOperationError;
    case kSyndromeLocalProt: return WcStatus::kLocalProtectionError;
    case kSyndromeWrFlush: return WcStatus::kFlushed;
    case kSyndromeBadResp: return WcStatus::kBadResponse;
    case kSyndromeLocalAccess: return WcStatus::kLocalAccessError;
    case kSyndromeRemoteInvalReq: return WcStatus::kRemoteInvalidRequest;
    case kSyndromeRemoteAccess: return WcStatus::kRemoteAccessError;
    case kSyndromeRemoteOp: return WcStatus::kRemoteOperationError;
    case kSyndromeTransportRetryExc: return WcStatus::kRetryExceeded;
    case kSyndromeRnrRetryExc: return WcStatus::kRnrRetryExceeded;
    default: return WcStatus::kGeneralError;
  }
}

std::string_view qp_state_name(QpState s) {
  switch (s) {
    case QpState::kReset: return "RESET";
    case QpState::kInit: return "INIT";
    case QpState::kRtr: return "RTR";
    case QpState::kRts: return "RTS";
    case QpState::kError: return "ERROR";
  }
  return "?";
}

namespace {
bool is_pow2(uint32_t v) { return v && !(v & (v - 1)); }
}  // namespace

Status check_cq_attr(const CqAttr& attr, const DeviceCaps& caps) {
  if (!is_pow2(attr.cqe_count) || attr.cqe_count > caps.max_cqe)
    return invalid_argument("cqe_count must be a power of two no larger than caps().max_cqe");
  return Status::ok();
}

Status check_qp_sizes(const QpAttr& a, const DeviceCaps& caps) {
  if (!is_pow2(a.send_wqebbs) || a.send_wqebbs > caps.max_send_wqebbs || a.send_wqebbs < 2)
    return invalid_argument("send_wqebbs must be a power of two in [2, caps().max_send_wqebbs]");
  if (!is_pow2(a.recv_wqes) || a.recv_wqes > caps.max_recv_wqes)
    return invalid_argument("recv_wqes must be a power of two no larger than caps().max_recv_wqes");
  if (a.max_recv_sge == 0 || a.max_recv_sge > caps.max_sge)
    return invalid_argument("max_recv_sge must be in [1, caps().max_sge]");
  return Status::ok();
}

Status check_memory_registration(const void* addr, size_t length, uint32_t access, const DeviceCaps& caps) {
  if (!addr || length == 0) return invalid_argument("memory region needs an address and a length");
  if (access & ~kAccessAll) return invalid_argument("unknown access flags");
  if ((access & (kAccessRemoteWrite | kAccessRemoteAtomic)) && !(access & kAccessLocalWrite))
    return invalid_argument("remote write or atomic access requires local write");
  if (length > caps.max_mr_size) return invalid_argument("memory region larger than caps().max_mr_size");
  const uint64_t a = reinterpret_cast<uint64_t>(addr);
  if (a + length < a) return invalid_argument("memory region wraps the address space");
  return Status::ok();
}

void put_patch_field(std::byte* dst, uint64_t v, size_t bytes, bool big_endian) {
  for (size_t i = 0; i < bytes; ++i) {
    const size_t shift = 8 * (big_endian ? bytes - 1 - i : i);
    dst[i] = std::byte(uint8_t(v >> shift));
  }
}

Result<WritePatchMap> mlx5_write_patch_map(const mlx5::SendRingView& ring, uint32_t index) {
  if (!ring.base || ring.wqebb_count == 0) return invalid_argument("no send ring");
  mlx5::CtrlSeg ctrl;
  std::memcpy(&ctrl, ring.ds(index, 0), sizeof ctrl);
  const uint32_t w0 = mlx5::from_be32(ctrl.opmod_idx_opcode);
  const uint32_t ds = mlx5::from_be32(ctrl.qpn_ds) & 0x3f;
  mlx5::DataSeg data;
  std::memcpy(&data, ring.ds(index, 2), sizeof data);
  if ((w0 & 0xff) != mlx5::kOpRdmaWrite || ((w0 >> 8) & 0xffff) != (index & 0xffff) || ds < 3 ||
      (mlx5::from_be32(data.byte_count) & mlx5::kInlineSeg))
    return invalid_argument("no RDMA WRITE with a gather SGE at send counter " + std::to_string(index));
  WritePatchMap m;
  m.ring = std::span<std::byte>(ring.base, ring.bytes());
  m.remote_addr = size_t(ring.ds(index, 1) - ring.base) + offsetof(mlx5::RaddrSeg, raddr);
  m.rkey = size_t(ring.ds(index, 1) - ring.base) + offsetof(mlx5::RaddrSeg, rkey);
  m.length = size_t(ring.ds(index, 2) - ring.base) + offsetof(mlx5::DataSeg, byte_count);
  m.big_endian = true;
  return m;
}

Result<PostedSendWqe> mlx5_posted_send_wqe(const mlx5::SendRingView& ring, uint32_t producer, uint32_t index) {
  if (!ring.base || ring.wqebb_count == 0) return invalid_argument("no send ring");
  if (producer - index - 1 >= ring.wqebb_count)
    return invalid_argument("send counter " + std::to_string(index) + " is not in the posted window (producer " +
                            std::to_string(producer) + ")");
  mlx5::CtrlSeg ctrl;
  std::memcpy(&ctrl, ring.ds(index, 0), sizeof ctrl);
  const uint32_t ds = mlx5::from_be32(ctrl.qpn_ds) & 0x3f;
  PostedSendWqe w;
  w.ring = std::span<std::byte>(ring.base, ring.bytes());
  w.offset = size_t(ring.ds(index, 0) - ring.base);
  constexpr size_t kBb = 64;  // a WQEBB
  w.bytes = std::max<size_t>(1, (size_t(ds) * 16 + kBb - 1) / kBb) * kBb;
  if (w.offset + w.bytes > w.ring.size())
    return invalid_argument("the WQE at send counter " + std::to_string(index) + " wraps the ring's end");
  return w;
}

Status connect_pair(QueuePair& a, QueuePair& b, uint32_t remote_access) {
  HL_RETURN_IF_ERROR(a.init(remote_access));
  HL_RETURN_IF_ERROR(b.init(remote_access));
  HL_RETURN_IF_ERROR(a.connect(b.address()));
  HL_RETURN_IF_ERROR(b.connect(a.address()));
  HL_RETURN_IF_ERROR(a.ready_to_send());
  HL_RETURN_IF_ERROR(b.ready_to_send());
  return Status::ok();
}

}  // namespace rnic
}  // namespace hyperloop
