// Private to rnic/soft: the one encoder/decoder of the TCP wire's frames.
// Pure functions over bytes (no sockets, no allocation), so the event loop
// (tcp.cc) and the fuzz test (tests/wire_codec_test.cc) use the same code.
//
// Every field is written and read one by one, little-endian, at a fixed
// offset: no struct is memcpy'd, so no padding or host layout reaches the
// wire. A frame is a prefix (magic, version, kind, a zero byte) and a
// kind-specific fixed header; a PACKET frame is followed by payload_len
// payload bytes. The first frame on a connection is a HELLO (the sender
// fabric's id); every later frame is a PACKET.
//
// The decoder validates everything before the caller allocates anything:
// magic, version, kind, reserved bytes, packet type and NAK code ranges, the
// opcode against the type, the PSN's 24 bits, payload_len against the
// configured maximum message size, and payload presence against the type
// (READ requests, atomics, ACKs, NAKs and atomic responses carry none; READ
// responses at most the requested length). Fields a type does not use must be
// zero (the encoder writes zeros there), so a frame has exactly one encoding:
// whatever decodes re-encodes to the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "nic_impl.h"

namespace hyperloop::soft::wire {

inline constexpr uint32_t kFrameMagic = 0x484c5046;  // "HLPF"
inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kPrefixBytes = 8;
inline constexpr size_t kHelloBytes = 16;           // prefix + fabric id
inline constexpr size_t kPacketHeaderBytes = 96;    // prefix + packet fields
inline constexpr size_t kMaxHeaderBytes = kPacketHeaderBytes;

enum class FrameKind : uint8_t { kHello = 1, kPacket = 2 };

// Everything of a Packet that travels, plus where it goes.
struct PacketHeader {
  uint32_t payload_len = 0;
  PacketType type = PacketType::kAck;
  NakCode nak = NakCode::kRnr;
  uint8_t opcode = 0;
  bool solicited = false;
  uint64_t dst_uid = 0;
  uint64_t src_nic = 0;
  uint64_t key = 0;       // the sending QP's key (see SoftQp::key)
  uint32_t dst_qpn = 0;
  uint32_t src_qpn = 0;
  uint32_t psn = 0;
  uint32_t rkey = 0;
  uint32_t length = 0;
  uint32_t imm = 0;
  uint64_t raddr = 0;
  uint64_t swap_add = 0;
  uint64_t compare = 0;
  uint64_t result = 0;
  bool operator==(const PacketHeader&) const = default;
};

enum class DecodeError : uint8_t {
  kOk = 0,
  kNeedMore,          // not an error: the frame is not complete yet
  kBadMagic,
  kBadVersion,
  kBadKind,
  kReservedNonZero,   // a reserved byte or a field the type does not use
  kBadType,
  kBadNak,
  kBadOpcode,
  kBadFlags,
  kBadPsn,
  kPayloadTooLarge,   // over the configured maximum message size
  kPayloadForbidden,  // this type carries no payload
  kPayloadOverLength, // a READ response longer than the READ asked for
  kLengthTooLarge,    // a READ asks for more than the maximum message size
  kUnexpectedHello,   // a HELLO after the first frame
  kExpectedHello,     // a PACKET before the HELLO
};
const char* describe(DecodeError e);

// The prefix (first kPrefixBytes): checks magic, version, kind and the
// reserved byte, and says how many header bytes this frame has.
DecodeError decode_prefix(std::span<const std::byte> in, FrameKind* kind, size_t* header_bytes);

void encode_hello(uint64_t fabric_id, std::byte out[kHelloBytes]);
// `in` holds at least kHelloBytes.
DecodeError decode_hello(std::span<const std::byte> in, uint64_t* fabric_id);

// The header of packet p sent to NIC dst_uid, with the fields p's type does
// not use set to zero (a pooled Packet may hold stale ones).
PacketHeader header_of(const Packet& p, uint64_t dst_uid);
void encode_packet_header(const PacketHeader& h, std::byte out[kPacketHeaderBytes]);
// `in` holds at least kPacketHeaderBytes. max_payload: the largest payload
// (message) accepted.
DecodeError decode_packet_header(std::span<const std::byte> in, uint32_t max_payload, PacketHeader* h);
// Copies a decoded header into a packet (not the payload).
void apply(const PacketHeader& h, Packet* p);

// A whole frame at the start of `in` (for tests; the event loop parses
// incrementally with the functions above). *consumed: the frame's bytes when
// kOk. For a HELLO, *fabric_id is set; for a PACKET, *h and *payload.
struct Frame {
  FrameKind kind = FrameKind::kPacket;
  uint64_t fabric_id = 0;
  PacketHeader header;
  std::span<const std::byte> payload;
};
DecodeError decode_frame(std::span<const std::byte> in, uint32_t max_payload, Frame* f, size_t* consumed);

// QP addresses (the opaque rnic::QpAddress blob of a soft QP), same rules:
// magic (bumped to "HLS2" when the key was added, "HLS3" with the first
// PSN), fixed size, every field little-endian, reserved bytes zero;
// decode_address (nic_impl.h) rejects anything else, including a zero key,
// uid or QP number and a PSN wider than 24 bits.
inline constexpr uint32_t kAddrMagic = 0x484c5333;  // "HLS3"
inline constexpr size_t kAddrBytes = 44;

}  // namespace hyperloop::soft::wire
