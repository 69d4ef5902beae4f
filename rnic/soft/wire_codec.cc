// rnic/soft: the TCP wire's frame codec (see wire_codec.h).
#include "wire_codec.h"

#include <arpa/inet.h>

#include "hyperloop/mlx5/prm.h"

namespace hyperloop::soft::wire {

namespace {

using namespace hyperloop::mlx5;

// Offsets in a PACKET header.
enum : size_t {
  kOffPayloadLen = 8, kOffType = 12, kOffNak = 13, kOffOpcode = 14, kOffFlags = 15,
  kOffDstUid = 16, kOffSrcNic = 24, kOffKey = 32, kOffDstQpn = 40, kOffSrcQpn = 44,
  kOffPsn = 48, kOffRkey = 52, kOffLength = 56, kOffImm = 60, kOffRaddr = 64,
  kOffSwapAdd = 72, kOffCompare = 80, kOffResult = 88,
};
static_assert(kOffResult + 8 == kPacketHeaderBytes);
constexpr uint8_t kFlagSolicited = 1;
constexpr uint8_t kLastType = uint8_t(PacketType::kAtomicResp);
constexpr uint8_t kLastNak = uint8_t(NakCode::kRemoteOp);

void put8(std::byte* p, uint8_t v) { p[0] = std::byte(v); }
void put16(std::byte* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = std::byte(v >> (8 * i));
}
void put32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = std::byte(v >> (8 * i));
}
void put64(std::byte* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = std::byte(v >> (8 * i));
}
uint8_t get8(const std::byte* p) { return uint8_t(p[0]); }
uint16_t get16(const std::byte* p) { return uint16_t(uint16_t(p[0]) | uint16_t(p[1]) << 8); }
uint32_t get32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(p[i]) << (8 * i);
  return v;
}
uint64_t get64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

void put_prefix(std::byte* out, FrameKind kind) {
  put32(out, kFrameMagic);
  put16(out + 4, kVersion);
  put8(out + 6, uint8_t(kind));
  put8(out + 7, 0);
}

// Which fields a packet type uses (all others travel as zero).
struct Uses {
  bool raddr_rkey, imm_flags, length, swap_compare, result, nak, opcode;
};
Uses uses(PacketType t) {
  switch (t) {
    case PacketType::kWrite: return {true, true, false, false, false, false, true};
    case PacketType::kSend: return {false, true, false, false, false, false, true};
    case PacketType::kRead: return {true, false, true, false, false, false, true};
    case PacketType::kAtomic: return {true, false, true, true, false, false, true};
    case PacketType::kAck: return {false, false, false, false, false, false, false};
    case PacketType::kNak: return {false, false, false, false, false, true, false};
    case PacketType::kReadResp: return {false, false, true, false, false, false, false};
    case PacketType::kAtomicResp: return {false, false, false, false, true, false, false};
  }
  return {};
}

bool opcode_fits(PacketType t, uint8_t op) {
  switch (t) {
    case PacketType::kWrite: return op == kOpRdmaWrite || op == kOpRdmaWriteImm;
    case PacketType::kSend: return op == kOpSend || op == kOpSendImm;
    case PacketType::kRead: return op == kOpRdmaRead;
    case PacketType::kAtomic: return op == kOpAtomicCs || op == kOpAtomicFa;
    default: return op == 0;
  }
}

bool carries_payload(PacketType t) {
  return t == PacketType::kWrite || t == PacketType::kSend || t == PacketType::kReadResp;
}

}  // namespace

const char* describe(DecodeError e) {
  switch (e) {
    case DecodeError::kOk: return "ok";
    case DecodeError::kNeedMore: return "incomplete frame";
    case DecodeError::kBadMagic: return "bad magic";
    case DecodeError::kBadVersion: return "unsupported version";
    case DecodeError::kBadKind: return "unknown frame kind";
    case DecodeError::kReservedNonZero: return "reserved or unused field not zero";
    case DecodeError::kBadType: return "unknown packet type";
    case DecodeError::kBadNak: return "unknown NAK code";
    case DecodeError::kBadOpcode: return "opcode does not fit the packet type";
    case DecodeError::kBadFlags: return "unknown flags";
    case DecodeError::kBadPsn: return "PSN over 24 bits";
    case DecodeError::kPayloadTooLarge: return "payload over the maximum message size";
    case DecodeError::kPayloadForbidden: return "payload on a packet type that carries none";
    case DecodeError::kPayloadOverLength: return "READ response longer than the READ";
    case DecodeError::kLengthTooLarge: return "READ length over the maximum message size";
    case DecodeError::kUnexpectedHello: return "HELLO after the first frame";
    case DecodeError::kExpectedHello: return "first frame is not a HELLO";
  }
  return "?";
}

DecodeError decode_prefix(std::span<const std::byte> in, FrameKind* kind, size_t* header_bytes) {
  if (in.size() < kPrefixBytes) return DecodeError::kNeedMore;
  if (get32(in.data()) != kFrameMagic) return DecodeError::kBadMagic;
  if (get16(in.data() + 4) != kVersion) return DecodeError::kBadVersion;
  const uint8_t k = get8(in.data() + 6);
  if (k == uint8_t(FrameKind::kHello)) *header_bytes = kHelloBytes;
  else if (k == uint8_t(FrameKind::kPacket)) *header_bytes = kPacketHeaderBytes;
  else return DecodeError::kBadKind;
  if (get8(in.data() + 7) != 0) return DecodeError::kReservedNonZero;
  *kind = FrameKind(k);
  return DecodeError::kOk;
}

void encode_hello(uint64_t fabric_id, std::byte out[kHelloBytes]) {
  put_prefix(out, FrameKind::kHello);
  put64(out + 8, fabric_id);
}

DecodeError decode_hello(std::span<const std::byte> in, uint64_t* fabric_id) {
  FrameKind kind;
  size_t hb;
  const DecodeError e = decode_prefix(in, &kind, &hb);
  if (e != DecodeError::kOk) return e;
  if (kind != FrameKind::kHello) return DecodeError::kExpectedHello;
  if (in.size() < kHelloBytes) return DecodeError::kNeedMore;
  *fabric_id = get64(in.data() + 8);
  return DecodeError::kOk;
}

PacketHeader header_of(const Packet& p, uint64_t dst_uid) {
  const Uses u = uses(p.type);
  PacketHeader h;
  h.payload_len = carries_payload(p.type) ? uint32_t(p.payload.size()) : 0;
  h.type = p.type;
  h.nak = u.nak ? p.nak : NakCode(0);
  h.opcode = u.opcode ? p.opcode : 0;
  h.solicited = u.imm_flags && p.solicited;
  h.dst_uid = dst_uid;
  h.src_nic = p.src_nic;
  h.key = p.key;
  h.dst_qpn = p.dst_qpn;
  h.src_qpn = p.src_qpn;
  h.psn = p.psn & kPsnMask;
  h.rkey = u.raddr_rkey ? p.rkey : 0;
  h.raddr = u.raddr_rkey ? p.raddr : 0;
  h.imm = u.imm_flags ? p.imm : 0;
  h.length = u.length ? p.length : 0;
  h.swap_add = u.swap_compare ? p.swap_add : 0;
  h.compare = u.swap_compare ? p.compare : 0;
  h.result = u.result ? p.result : 0;
  return h;
}

void encode_packet_header(const PacketHeader& h, std::byte out[kPacketHeaderBytes]) {
  put_prefix(out, FrameKind::kPacket);
  put32(out + kOffPayloadLen, h.payload_len);
  put8(out + kOffType, uint8_t(h.type));
  put8(out + kOffNak, uint8_t(h.nak));
  put8(out + kOffOpcode, h.opcode);
  put8(out + kOffFlags, h.solicited ? kFlagSolicited : 0);
  put64(out + kOffDstUid, h.dst_uid);
  put64(out + kOffSrcNic, h.src_nic);
  put64(out + kOffKey, h.key);
  put32(out + kOffDstQpn, h.dst_qpn);
  put32(out + kOffSrcQpn, h.src_qpn);
  put32(out + kOffPsn, h.psn);
  put32(out + kOffRkey, h.rkey);
  put32(out + kOffLength, h.length);
  put32(out + kOffImm, h.imm);
  put64(out + kOffRaddr, h.raddr);
  put64(out + kOffSwapAdd, h.swap_add);
  put64(out + kOffCompare, h.compare);
  put64(out + kOffResult, h.result);
}

DecodeError decode_packet_header(std::span<const std::byte> in, uint32_t max_payload, PacketHeader* out) {
  FrameKind kind;
  size_t hb;
  const DecodeError e = decode_prefix(in, &kind, &hb);
  if (e != DecodeError::kOk) return e;
  if (kind != FrameKind::kPacket) return DecodeError::kUnexpectedHello;
  if (in.size() < kPacketHeaderBytes) return DecodeError::kNeedMore;
  const std::byte* b = in.data();
  const uint8_t type = get8(b + kOffType);
  if (type > kLastType) return DecodeError::kBadType;
  PacketHeader h;
  h.type = PacketType(type);
  const Uses u = uses(h.type);
  const uint8_t nak = get8(b + kOffNak);
  if (u.nak ? nak > kLastNak : nak != 0) return DecodeError::kBadNak;
  h.nak = NakCode(nak);
  h.opcode = get8(b + kOffOpcode);
  if (!opcode_fits(h.type, h.opcode)) return DecodeError::kBadOpcode;
  const uint8_t flags = get8(b + kOffFlags);
  if (flags & ~(u.imm_flags ? kFlagSolicited : 0)) return DecodeError::kBadFlags;
  h.solicited = flags & kFlagSolicited;
  h.payload_len = get32(b + kOffPayloadLen);
  h.dst_uid = get64(b + kOffDstUid);
  h.src_nic = get64(b + kOffSrcNic);
  h.key = get64(b + kOffKey);
  h.dst_qpn = get32(b + kOffDstQpn);
  h.src_qpn = get32(b + kOffSrcQpn);
  h.psn = get32(b + kOffPsn);
  if (h.psn > kPsnMask) return DecodeError::kBadPsn;
  h.rkey = get32(b + kOffRkey);
  h.length = get32(b + kOffLength);
  h.imm = get32(b + kOffImm);
  h.raddr = get64(b + kOffRaddr);
  h.swap_add = get64(b + kOffSwapAdd);
  h.compare = get64(b + kOffCompare);
  h.result = get64(b + kOffResult);
  if ((!u.raddr_rkey && (h.rkey || h.raddr)) || (!u.imm_flags && h.imm) || (!u.length && h.length) ||
      (!u.swap_compare && (h.swap_add || h.compare)) || (!u.result && h.result))
    return DecodeError::kReservedNonZero;
  if (!carries_payload(h.type) && h.payload_len) return DecodeError::kPayloadForbidden;
  if (h.payload_len > max_payload) return DecodeError::kPayloadTooLarge;
  if (u.length && h.length > max_payload) return DecodeError::kLengthTooLarge;
  if (h.type == PacketType::kReadResp && h.payload_len > h.length) return DecodeError::kPayloadOverLength;
  *out = h;
  return DecodeError::kOk;
}

void apply(const PacketHeader& h, Packet* p) {
  p->type = h.type;
  p->nak = h.nak;
  p->opcode = h.opcode;
  p->solicited = h.solicited;
  p->dst_qpn = h.dst_qpn;
  p->src_qpn = h.src_qpn;
  p->psn = h.psn;
  p->src_nic = h.src_nic;
  p->key = h.key;
  p->raddr = h.raddr;
  p->rkey = h.rkey;
  p->length = h.length;
  p->swap_add = h.swap_add;
  p->compare = h.compare;
  p->result = h.result;
  p->imm = h.imm;
  p->deliver_at = 0;
}

DecodeError decode_frame(std::span<const std::byte> in, uint32_t max_payload, Frame* f, size_t* consumed) {
  size_t hb;
  DecodeError e = decode_prefix(in, &f->kind, &hb);
  if (e != DecodeError::kOk) return e;
  if (in.size() < hb) return DecodeError::kNeedMore;
  if (f->kind == FrameKind::kHello) {
    e = decode_hello(in, &f->fabric_id);
    if (e == DecodeError::kOk) *consumed = kHelloBytes;
    return e;
  }
  e = decode_packet_header(in, max_payload, &f->header);
  if (e != DecodeError::kOk) return e;
  if (in.size() - kPacketHeaderBytes < f->header.payload_len) return DecodeError::kNeedMore;
  f->payload = in.subspan(kPacketHeaderBytes, f->header.payload_len);
  *consumed = kPacketHeaderBytes + f->header.payload_len;
  return DecodeError::kOk;
}

}  // namespace hyperloop::soft::wire

namespace hyperloop::soft {

using namespace wire;

rnic::QpAddress encode_address(const PeerAddress& a) {
  rnic::QpAddress blob;
  std::byte* p = blob.bytes.data();
  put32(p, kAddrMagic);
  put64(p + 4, a.fabric_id);
  put64(p + 12, a.nic_uid);
  put32(p + 20, a.qpn);
  put32(p + 24, ntohl(a.ipv4));
  put16(p + 28, a.port);
  put16(p + 30, 0);
  put64(p + 32, a.key);
  put32(p + 40, a.psn);
  blob.size = kAddrBytes;
  return blob;
}

bool decode_address(const rnic::QpAddress& blob, PeerAddress* out) {
  if (blob.size != kAddrBytes) return false;
  const std::byte* p = blob.bytes.data();
  if (get32(p) != kAddrMagic || get16(p + 30) != 0) return false;
  PeerAddress a;
  a.fabric_id = get64(p + 4);
  a.nic_uid = get64(p + 12);
  a.qpn = get32(p + 20);
  a.ipv4 = htonl(get32(p + 24));
  a.port = get16(p + 28);
  a.key = get64(p + 32);
  a.psn = get32(p + 40);
  if (a.psn > kPsnMask) return false;
  if (a.nic_uid == 0 || a.qpn == 0 || a.key == 0 || (a.ipv4 == 0) != (a.port == 0)) return false;
  *out = a;
  return true;
}

}  // namespace hyperloop::soft
