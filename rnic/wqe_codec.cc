// The one mlx5 WQE/CQE codec (see include/hyperloop/mlx5/wqe.h).
#include <algorithm>
#include <atomic>
#include <cstring>

#include "hyperloop/mlx5/wqe.h"

namespace hyperloop::mlx5 {
namespace {

enum class Shape { kNone, kCtrlOnly, kRdma, kSend, kAtomic, kWaitEn };

Shape shape_of(uint8_t opcode) {
  switch (opcode) {
    case kOpNop: return Shape::kCtrlOnly;
    case kOpRdmaWrite:
    case kOpRdmaWriteImm:
    case kOpRdmaRead: return Shape::kRdma;
    case kOpSend:
    case kOpSendImm: return Shape::kSend;
    case kOpAtomicCs:
    case kOpAtomicFa: return Shape::kAtomic;
    case kOpWait:
    case kOpSendEnable:
    case kOpRecvEnable: return Shape::kWaitEn;
    default: return Shape::kNone;
  }
}

// 16-byte units before the data/inline segments.
uint32_t header_ds(Shape s) { return s == Shape::kRdma ? 2 : 1; }

uint32_t inline_ds(uint32_t len) { return (len + 4 + kDsBytes - 1) / kDsBytes; }

template <typename Seg>
void put(std::byte* p, const Seg& s) { std::memcpy(p, &s, sizeof(Seg)); }
template <typename Seg>
Seg get(const std::byte* p) { Seg s; std::memcpy(&s, p, sizeof(Seg)); return s; }

}  // namespace

std::string_view wqe_error_name(WqeError e) {
  switch (e) {
    case WqeError::kOk: return "ok";
    case WqeError::kBadOpcode: return "unknown opcode";
    case WqeError::kBadDs: return "ds does not fit the opcode";
    case WqeError::kTooManySge: return "too many data segments";
    case WqeError::kBadInline: return "inline length does not match ds";
    case WqeError::kBadAtomic: return "atomic result segment is not 8 bytes";
    case WqeError::kWrongQpn: return "ctrl QPN is not this queue's";
    case WqeError::kWrongIndex: return "ctrl wqe_index is not the consumer index";
  }
  return "?";
}

uint32_t send_wqe_ds(const SendWqe& w) {
  const Shape s = shape_of(w.ctrl.opcode);
  switch (s) {
    case Shape::kNone: return 0;
    case Shape::kCtrlOnly: return 1;
    case Shape::kAtomic: return 4;
    case Shape::kWaitEn: return 2;
    case Shape::kRdma:
    case Shape::kSend: {
      if (w.is_inline) {
        if (w.ctrl.opcode == kOpRdmaRead || w.inline_len > kMaxInlineBytes) return 0;
        return header_ds(s) + (w.inline_len ? inline_ds(w.inline_len) : 0);
      }
      if (w.num_sge > kMaxSge) return 0;
      return header_ds(s) + w.num_sge;
    }
  }
  return 0;
}

uint32_t encode_send_wqe(const SendRingView& ring, uint32_t pi, const SendWqe& w) {
  const uint32_t ds = send_wqe_ds(w);
  if (ds == 0 || ds > kMaxWqeDs) return 0;
  const uint32_t bbs = ds_to_wqebbs(ds);
  if (bbs > ring.wqebb_count) return 0;
  for (uint32_t i = 0; i < bbs; ++i) std::memset(ring.bb(pi + i), 0, kSendWqeBB);

  CtrlFields c = w.ctrl;
  c.wqe_index = uint16_t(pi);
  c.ds = uint8_t(ds);
  put(ring.ds(pi, 0), encode_ctrl(c));
  const Shape s = shape_of(w.ctrl.opcode);
  uint32_t d = 1;
  if (s == Shape::kRdma || s == Shape::kAtomic) put(ring.ds(pi, d++), encode_raddr(w.raddr, w.rkey));
  if (s == Shape::kAtomic) {
    put(ring.ds(pi, d++), encode_atomic(w.swap_add, w.compare));
    put(ring.ds(pi, d++), encode_data(w.sge[0].addr, 8, w.sge[0].lkey));
  } else if (s == Shape::kWaitEn) {
    put(ring.ds(pi, d++), encode_wait_en(w.max_index, w.qpn_cqn));
  } else if (s == Shape::kRdma || s == Shape::kSend) {
    if (w.is_inline) {
      if (w.inline_len) {
        const uint32_t hdr = to_be32(w.inline_len | kInlineSeg);
        std::memcpy(ring.ds(pi, d), &hdr, 4);
        // Payload follows the 4-byte header, 16-byte unit by unit (wrap-aware).
        uint32_t off = 4, done = 0;
        while (done < w.inline_len) {
          const uint32_t chunk = std::min(kDsBytes - off, w.inline_len - done);
          std::memcpy(ring.ds(pi, d) + off, w.inline_data + done, chunk);
          done += chunk;
          off += chunk;
          if (off == kDsBytes) { off = 0; ++d; }
        }
      }
    } else {
      for (uint32_t i = 0; i < w.num_sge; ++i)
        put(ring.ds(pi, d++), encode_data(w.sge[i].addr, w.sge[i].length, w.sge[i].lkey));
    }
  }
  return bbs;
}

WqeError decode_send_wqe(const SendRingView& ring, uint32_t ci, SendWqe* out, uint32_t* wqebbs) {
  SendWqe& w = *out;
  w.ctrl = decode_ctrl(get<CtrlSeg>(ring.ds(ci, 0)));
  w.raddr = w.swap_add = w.compare = 0;
  w.rkey = w.max_index = w.qpn_cqn = 0;
  w.num_sge = 0;
  w.is_inline = false;
  w.inline_len = 0;
  w.inline_data = nullptr;
  const uint32_t ds = w.ctrl.ds;
  const Shape s = shape_of(w.ctrl.opcode);
  if (s == Shape::kNone) return WqeError::kBadOpcode;
  if (ds == 0 || ds > kMaxWqeDs || ds_to_wqebbs(ds) > ring.wqebb_count) return WqeError::kBadDs;
  *wqebbs = ds_to_wqebbs(ds);
  uint32_t d = 1;
  switch (s) {
    case Shape::kNone: return WqeError::kBadOpcode;
    case Shape::kCtrlOnly:
      return WqeError::kOk;  // NOP: any size, contents ignored (hardware NOP padding)
    case Shape::kWaitEn: {
      if (ds != 2) return WqeError::kBadDs;
      const auto seg = get<WaitEnSeg>(ring.ds(ci, 1));
      w.max_index = from_be32(seg.max_index);
      w.qpn_cqn = from_be32(seg.qpn_cqn);
      return WqeError::kOk;
    }
    case Shape::kAtomic: {
      if (ds != 4) return WqeError::kBadDs;
      const auto ra = get<RaddrSeg>(ring.ds(ci, 1));
      const auto at = get<AtomicSeg>(ring.ds(ci, 2));
      const auto da = get<DataSeg>(ring.ds(ci, 3));
      w.raddr = from_be64(ra.raddr);
      w.rkey = from_be32(ra.rkey);
      w.swap_add = from_be64(at.swap_add);
      w.compare = from_be64(at.compare);
      if (from_be32(da.byte_count) != 8) return WqeError::kBadAtomic;
      w.num_sge = 1;
      w.sge[0] = Sge{from_be64(da.addr), 8, from_be32(da.lkey)};
      return WqeError::kOk;
    }
    case Shape::kRdma:
    case Shape::kSend: {
      if (s == Shape::kRdma) {
        if (ds < 2) return WqeError::kBadDs;
        const auto ra = get<RaddrSeg>(ring.ds(ci, d++));
        w.raddr = from_be64(ra.raddr);
        w.rkey = from_be32(ra.rkey);
      }
      const uint32_t segs = ds - d;
      if (segs == 0) return WqeError::kOk;  // zero-length transfer
      uint32_t first;
      std::memcpy(&first, ring.ds(ci, d), 4);
      first = from_be32(first);
      if (first & kInlineSeg) {
        if (w.ctrl.opcode == kOpRdmaRead) return WqeError::kBadInline;
        const uint32_t len = first & ~kInlineSeg;
        if (len > kMaxInlineBytes || len == 0 || inline_ds(len) != segs) return WqeError::kBadInline;
        w.is_inline = true;
        w.inline_len = len;
        return WqeError::kOk;
      }
      if (segs > kMaxSge) return WqeError::kTooManySge;
      for (uint32_t i = 0; i < segs; ++i) {
        const auto da = get<DataSeg>(ring.ds(ci, d + i));
        w.sge[i] = Sge{from_be64(da.addr), from_be32(da.byte_count), from_be32(da.lkey)};
      }
      w.num_sge = segs;
      return WqeError::kOk;
    }
  }
  return WqeError::kBadOpcode;
}

void copy_inline(const SendRingView& ring, uint32_t ci, uint32_t len, std::byte* dst) {
  const CtrlFields c = decode_ctrl(get<CtrlSeg>(ring.ds(ci, 0)));
  uint32_t d = shape_of(c.opcode) == Shape::kRdma ? 2 : 1;
  uint32_t off = 4, done = 0;
  while (done < len) {
    const uint32_t chunk = std::min(kDsBytes - off, len - done);
    std::memcpy(dst + done, ring.ds(ci, d) + off, chunk);
    done += chunk;
    off += chunk;
    if (off == kDsBytes) { off = 0; ++d; }
  }
}

bool encode_recv_wqe(const RecvRingView& ring, uint32_t index, std::span<const Sge> sges) {
  const uint32_t max = std::min(ring.max_sge(), kMaxSge);
  if (sges.size() > max) return false;
  std::byte* p = ring.wqe(index);
  for (size_t i = 0; i < sges.size(); ++i)
    put(p + i * kDsBytes, encode_data(sges[i].addr, sges[i].length, sges[i].lkey));
  if (sges.size() < max) put(p + sges.size() * kDsBytes, encode_data(0, 0, kInvalidLkey));
  return true;
}

uint32_t decode_recv_wqe(const RecvRingView& ring, uint32_t index, Sge* out) {
  const std::byte* p = ring.wqe(index);
  const uint32_t max = std::min(ring.max_sge(), kMaxSge);
  uint32_t n = 0;
  for (; n < max; ++n) {
    const auto da = get<DataSeg>(p + n * kDsBytes);
    const uint32_t lkey = from_be32(da.lkey);
    if (lkey == kInvalidLkey) break;
    out[n] = Sge{from_be64(da.addr), from_be32(da.byte_count), lkey};
  }
  return n;
}

void init_cq_ring(const CqRingView& ring) {
  std::memset(ring.base, 0, ring.bytes());
  for (uint32_t i = 0; i < ring.cqe_count; ++i)
    reinterpret_cast<Cqe64*>(ring.cqe(i))->op_own = uint8_t(kCqeInvalid << 4);
}

void write_cqe(const CqRingView& ring, uint32_t pi, const CqeFields& f) {
  auto* slot = ring.cqe(pi);
  const bool error = f.opcode == kCqeReqErr || f.opcode == kCqeRespErr;
  if (error) {
    ErrCqe e{};
    e.vendor_err_synd = f.vendor_syndrome;
    e.syndrome = f.syndrome;
    e.s_wqe_opcode_qpn = to_be32((uint32_t(f.send_opcode) << 24) | (f.qpn & kQpnMask));
    e.wqe_counter = to_be16(f.wqe_counter);
    e.srqn = 0;
    std::memcpy(slot, &e, 63);
  } else {
    Cqe64 c{};
    c.byte_cnt = to_be32(f.byte_cnt);
    c.imm_inval_pkey = f.imm;
    c.sop_drop_qpn = to_be32((uint32_t(f.send_opcode) << 24) | (f.qpn & kQpnMask));
    c.wqe_counter = to_be16(f.wqe_counter);
    std::memcpy(slot, &c, 63);
  }
  const uint8_t owner = (pi & ring.cqe_count) ? 1 : 0;
  const uint8_t op_own = uint8_t(f.opcode << 4) | (f.solicited ? 2 : 0) | owner;
  std::atomic_ref<uint8_t>(reinterpret_cast<Cqe64*>(slot)->op_own).store(op_own, std::memory_order_release);
}

bool read_cqe(const CqRingView& ring, uint32_t ci, CqeFields* out) {
  auto* slot = ring.cqe(ci);
  const uint8_t op_own =
      std::atomic_ref<uint8_t>(reinterpret_cast<Cqe64*>(slot)->op_own).load(std::memory_order_acquire);
  const uint8_t opcode = op_own >> 4;
  if (opcode == kCqeInvalid || (op_own & kCqeOwnerMask) != ((ci & ring.cqe_count) ? 1 : 0)) return false;
  out->opcode = opcode;
  out->solicited = op_own & 2;
  if (opcode == kCqeReqErr || opcode == kCqeRespErr) {
    ErrCqe e;
    std::memcpy(&e, slot, sizeof e);
    const uint32_t w = from_be32(e.s_wqe_opcode_qpn);
    out->send_opcode = uint8_t(w >> 24);
    out->qpn = w & kQpnMask;
    out->wqe_counter = from_be16(e.wqe_counter);
    out->syndrome = e.syndrome;
    out->vendor_syndrome = e.vendor_err_synd;
    out->byte_cnt = 0;
    out->imm = 0;
  } else {
    Cqe64 c;
    std::memcpy(&c, slot, sizeof c);
    const uint32_t w = from_be32(c.sop_drop_qpn);
    out->send_opcode = uint8_t(w >> 24);
    out->qpn = w & kQpnMask;
    out->wqe_counter = from_be16(c.wqe_counter);
    out->byte_cnt = from_be32(c.byte_cnt);
    out->imm = c.imm_inval_pkey;
    out->syndrome = 0;
    out->vendor_syndrome = 0;
  }
  return true;
}

}  // namespace hyperloop::mlx5
