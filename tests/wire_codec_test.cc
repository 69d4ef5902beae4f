// The TCP wire's frame codec (rnic/soft/wire_codec.h): named cases and a
// seeded fuzz run (random bytes plus structure-aware mutations of valid
// frames). Every input must decode without crashing, decode the same way
// twice, and, if accepted, re-encode to exactly the bytes it came from.
// HYPERLOOP_WIRE_FUZZ_INPUTS=<n> changes the count, HYPERLOOP_WIRE_FUZZ_SEED
// the seed.
#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "wire_codec.h"

namespace hyperloop::soft {
namespace {

using wire::DecodeError;
using Bytes = std::vector<std::byte>;
constexpr uint32_t kMax = 4096;  // the configured maximum message in these tests

uint64_t env_or(const char* name, uint64_t dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : dflt;
}

Bytes hello(uint64_t id) {
  Bytes b(wire::kHelloBytes);
  wire::encode_hello(id, b.data());
  return b;
}

Bytes frame(const wire::PacketHeader& h, size_t payload_fill_seed = 1) {
  Bytes b(wire::kPacketHeaderBytes + h.payload_len);
  wire::encode_packet_header(h, b.data());
  for (size_t i = 0; i < h.payload_len; ++i) b[wire::kPacketHeaderBytes + i] = std::byte(uint8_t(i * 7 + payload_fill_seed));
  return b;
}

// A random valid packet frame: a Packet with every field random, through
// header_of (which zeroes what the type does not use).
wire::PacketHeader random_header(std::mt19937_64& rng) {
  Packet p;
  p.type = PacketType(rng() % 8);
  p.nak = NakCode(rng() % 4);
  static const uint8_t ops[][2] = {{mlx5::kOpRdmaWrite, mlx5::kOpRdmaWriteImm}, {mlx5::kOpSend, mlx5::kOpSendImm},
                                   {mlx5::kOpRdmaRead, mlx5::kOpRdmaRead}, {mlx5::kOpAtomicCs, mlx5::kOpAtomicFa}};
  p.opcode = uint8_t(p.type) < 4 ? ops[uint8_t(p.type)][rng() % 2] : uint8_t(rng());
  p.solicited = rng() % 2;
  p.dst_qpn = uint32_t(rng());
  p.src_qpn = uint32_t(rng());
  p.psn = uint32_t(rng());
  p.src_nic = rng();
  p.key = rng();
  p.raddr = rng();
  p.rkey = uint32_t(rng());
  p.length = uint32_t(rng() % (kMax + 1));
  p.swap_add = rng();
  p.compare = rng();
  p.result = rng();
  p.imm = uint32_t(rng());
  size_t n = rng() % 64;
  if (p.type == PacketType::kReadResp) n = std::min<size_t>(n, p.length);
  p.payload.resize(n);
  return wire::header_of(p, rng());
}

// Decodes `in` twice; on success checks the re-encoding. Returns the result.
DecodeError check(const Bytes& in) {
  wire::Frame f1, f2;
  size_t c1 = 0, c2 = 0;
  const std::span<const std::byte> s(in.data(), in.size());
  const DecodeError e1 = wire::decode_frame(s, kMax, &f1, &c1);
  const DecodeError e2 = wire::decode_frame(s, kMax, &f2, &c2);
  EXPECT_EQ(e1, e2);
  if (e1 != DecodeError::kOk) return e1;
  EXPECT_EQ(c1, c2);
  EXPECT_LE(c1, in.size());
  Bytes again;
  if (f1.kind == wire::FrameKind::kHello) {
    again = hello(f1.fabric_id);
  } else {
    EXPECT_LE(f1.header.payload_len, kMax);
    again.resize(wire::kPacketHeaderBytes);
    wire::encode_packet_header(f1.header, again.data());
    again.insert(again.end(), f1.payload.begin(), f1.payload.end());
    // The canonical header from the decoded packet is the same header.
    Packet p;
    wire::apply(f1.header, &p);
    p.payload.resize(f1.header.payload_len);
    EXPECT_EQ(wire::header_of(p, f1.header.dst_uid), f1.header);
  }
  EXPECT_EQ(again.size(), c1);
  EXPECT_TRUE(std::equal(again.begin(), again.end(), in.begin())) << "accepted frame does not re-encode to its bytes";
  return e1;
}

void put32(Bytes& b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[off + i] = std::byte(v >> (8 * i));
}

TEST(WireCodec, ValidFramesRoundTrip) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 2000; ++i) {
    const auto h = random_header(rng);
    ASSERT_EQ(check(frame(h)), DecodeError::kOk);
  }
  ASSERT_EQ(check(hello(0x1234)), DecodeError::kOk);
}

TEST(WireCodec, EveryTruncationOfAValidFrameNeedsMore) {
  std::mt19937_64 rng(2);
  for (int i = 0; i < 200; ++i) {
    Bytes b = frame(random_header(rng));
    for (size_t n = 0; n < b.size(); ++n) {
      Bytes t(b.begin(), b.begin() + ptrdiff_t(n));
      ASSERT_EQ(check(t), DecodeError::kNeedMore) << "truncated to " << n << " of " << b.size();
    }
  }
}

// Named cases: each field's check.
TEST(WireCodec, RejectsEachBadField) {
  wire::PacketHeader w;
  w.type = PacketType::kWrite;
  w.opcode = mlx5::kOpRdmaWrite;
  w.payload_len = 16;
  ASSERT_EQ(check(frame(w)), DecodeError::kOk);
  auto with = [&](auto mutate) {
    Bytes b = frame(w);
    mutate(b);
    return check(b);
  };
  EXPECT_EQ(with([](Bytes& b) { b[0] = std::byte(0); }), DecodeError::kBadMagic);
  EXPECT_EQ(with([](Bytes& b) { b[4] = std::byte(2); }), DecodeError::kBadVersion);
  EXPECT_EQ(with([](Bytes& b) { b[6] = std::byte(9); }), DecodeError::kBadKind);
  EXPECT_EQ(with([](Bytes& b) { b[7] = std::byte(1); }), DecodeError::kReservedNonZero);
  EXPECT_EQ(with([](Bytes& b) { b[12] = std::byte(8); }), DecodeError::kBadType);      // type past kAtomicResp
  EXPECT_EQ(with([](Bytes& b) { b[13] = std::byte(1); }), DecodeError::kBadNak);       // NAK code on a WRITE
  EXPECT_EQ(with([](Bytes& b) { b[14] = std::byte(mlx5::kOpSend); }), DecodeError::kBadOpcode);
  EXPECT_EQ(with([](Bytes& b) { b[15] = std::byte(2); }), DecodeError::kBadFlags);
  EXPECT_EQ(with([](Bytes& b) { put32(b, 48, 0x1000000); }), DecodeError::kBadPsn);
  EXPECT_EQ(with([](Bytes& b) { put32(b, 56, 1); }), DecodeError::kReservedNonZero);   // length on a WRITE
  EXPECT_EQ(with([](Bytes& b) { put32(b, 8, kMax + 1); }), DecodeError::kPayloadTooLarge);
  EXPECT_EQ(with([](Bytes& b) { put32(b, 8, 0xffffffff); }), DecodeError::kPayloadTooLarge);

  wire::PacketHeader nak;
  nak.type = PacketType::kNak;
  nak.nak = NakCode::kRemoteOp;
  ASSERT_EQ(check(frame(nak)), DecodeError::kOk);
  Bytes b = frame(nak);
  b[13] = std::byte(4);  // past kRemoteOp
  EXPECT_EQ(check(b), DecodeError::kBadNak);

  // Payload presence follows the type.
  for (PacketType t : {PacketType::kRead, PacketType::kAtomic, PacketType::kAck, PacketType::kNak, PacketType::kAtomicResp}) {
    wire::PacketHeader h;
    h.type = t;
    h.opcode = t == PacketType::kRead ? mlx5::kOpRdmaRead : t == PacketType::kAtomic ? mlx5::kOpAtomicCs : 0;
    Bytes ok = frame(h);
    ASSERT_EQ(check(ok), DecodeError::kOk) << int(t);
    put32(ok, 8, 1);
    ok.push_back(std::byte(0));
    EXPECT_EQ(check(ok), DecodeError::kPayloadForbidden) << int(t);
  }
  // A READ response is at most as long as the READ; a READ at most kMax.
  wire::PacketHeader rr;
  rr.type = PacketType::kReadResp;
  rr.length = 8;
  rr.payload_len = 8;
  ASSERT_EQ(check(frame(rr)), DecodeError::kOk);
  rr.payload_len = 9;
  EXPECT_EQ(check(frame(rr)), DecodeError::kPayloadOverLength);
  wire::PacketHeader rd;
  rd.type = PacketType::kRead;
  rd.opcode = mlx5::kOpRdmaRead;
  rd.length = kMax + 1;
  EXPECT_EQ(check(frame(rd)), DecodeError::kLengthTooLarge);
}

TEST(WireCodec, AddressesValidate) {
  PeerAddress a{0x1111, 0x2222, 7, 0x3333, htonl(0x7f000001), 4711};
  PeerAddress out;
  ASSERT_TRUE(decode_address(encode_address(a), &out));
  EXPECT_EQ(out.key, a.key);
  EXPECT_EQ(out.ipv4, a.ipv4);
  EXPECT_EQ(out.port, a.port);
  auto bad = [&](auto mutate) {
    rnic::QpAddress blob = encode_address(a);
    mutate(blob);
    return !decode_address(blob, &out);
  };
  EXPECT_TRUE(bad([](rnic::QpAddress& b) { b.size = 36; }));            // the old, keyless format
  EXPECT_TRUE(bad([](rnic::QpAddress& b) { b.bytes[0] = std::byte(0); }));  // magic
  EXPECT_TRUE(bad([](rnic::QpAddress& b) { b.bytes[30] = std::byte(1); })); // reserved
  EXPECT_TRUE(bad([](rnic::QpAddress& b) { std::fill(b.bytes.begin() + 32, b.bytes.begin() + 40, std::byte(0)); }));
  EXPECT_TRUE(bad([](rnic::QpAddress& b) { b.bytes[28] = b.bytes[29] = std::byte(0); }));  // ip without port
  std::mt19937_64 rng(3);
  for (int i = 0; i < 20000; ++i) {  // random blobs: never crash; accepted ones round-trip
    rnic::QpAddress blob = encode_address(a);
    if (i % 2) for (auto& x : blob.bytes) x = std::byte(uint8_t(rng()));
    else blob.bytes[rng() % wire::kAddrBytes] ^= std::byte(uint8_t(1u << (rng() % 8)));
    if (rng() % 8 == 0) blob.size = uint32_t(rng() % 65);
    if (decode_address(blob, &out)) {
      const rnic::QpAddress again = encode_address(out);
      EXPECT_EQ(again.size, blob.size);
      EXPECT_TRUE(std::equal(again.bytes.begin(), again.bytes.begin() + again.size, blob.bytes.begin()));
    }
  }
}

// Inputs that once found bugs, kept as named regressions.
TEST(WireCodec, Regressions) {
  // A HELLO frame is a complete frame even with trailing bytes of the next.
  Bytes h = hello(7);
  h.push_back(std::byte(0x46));
  EXPECT_EQ(check(h), DecodeError::kOk);
}

// The fuzz run: >= 100,000 inputs from one seed.
TEST(WireCodec, Fuzz) {
  const uint64_t seed = env_or("HYPERLOOP_WIRE_FUZZ_SEED", 0x9e3779b97f4a7c15ull);
  const uint64_t inputs = env_or("HYPERLOOP_WIRE_FUZZ_INPUTS", 300000);
  std::mt19937_64 rng(seed);
  static const size_t kFieldOffsets[] = {0, 4, 6, 7, 8, 12, 13, 14, 15, 16, 24, 32, 40, 44, 48, 52, 56, 60, 64, 72, 80, 88};
  static const uint64_t kBoundary[] = {0, 1, 2, 7, 8, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0xffffff, 0x1000000, kMax - 1,
                                       kMax, kMax + 1, 0x7fffffff, 0x80000000, 0xffffffff, ~0ull};
  uint64_t accepted = 0, rejected = 0, need_more = 0;
  for (uint64_t i = 0; i < inputs; ++i) {
    Bytes in;
    const unsigned how = unsigned(rng() % 8);
    if (how == 0) {  // random bytes, sometimes behind a valid prefix
      in.resize(rng() % 200);
      for (auto& b : in) b = std::byte(uint8_t(rng()));
      if (in.size() >= 8 && rng() % 2) {
        Bytes f = frame(random_header(rng));
        std::copy(f.begin(), f.begin() + 8, in.begin());
      }
    } else {
      in = rng() % 16 == 0 ? hello(rng()) : frame(random_header(rng), size_t(rng()));
      switch (how) {
        case 1:  // bit flips
          for (unsigned k = 1 + unsigned(rng() % 4); k; --k) in[rng() % in.size()] ^= std::byte(uint8_t(1u << (rng() % 8)));
          break;
        case 2: {  // a field set to a boundary value
          const size_t off = kFieldOffsets[rng() % std::size(kFieldOffsets)];
          const uint64_t v = kBoundary[rng() % std::size(kBoundary)];
          const size_t width = size_t(1) << (rng() % 4);
          for (size_t k = 0; k < width && off + k < in.size(); ++k) in[off + k] = std::byte(uint8_t(v >> (8 * k)));
          break;
        }
        case 3:  // truncation
          in.resize(rng() % (in.size() + 1));
          break;
        case 4: {  // length lies: payload_len says more or less than what follows
          if (in.size() >= wire::kPacketHeaderBytes) put32(in, 8, uint32_t(rng() % (2 * kMax)));
          break;
        }
        case 5: {  // splice: the head of one frame, the tail of another
          Bytes other = frame(random_header(rng));
          const size_t cut = rng() % (in.size() + 1), from = rng() % (other.size() + 1);
          in.resize(cut);
          in.insert(in.end(), other.begin() + ptrdiff_t(from), other.end());
          break;
        }
        case 6: {  // two frames back to back, the first mutated a little
          Bytes other = frame(random_header(rng));
          in[rng() % in.size()] ^= std::byte(uint8_t(rng()));
          in.insert(in.end(), other.begin(), other.end());
          break;
        }
        default:  // valid as generated
          break;
      }
    }
    const DecodeError e = check(in);
    if (e == DecodeError::kOk) ++accepted;
    else if (e == DecodeError::kNeedMore) ++need_more;
    else ++rejected;
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << "input " << i << " of seed " << seed << " (HYPERLOOP_WIRE_FUZZ_SEED replays it)";
      return;
    }
  }
  RecordProperty("accepted", int(accepted));
  RecordProperty("rejected", int(rejected));
  EXPECT_GT(accepted, inputs / 10);
  EXPECT_GT(rejected, inputs / 10);
  EXPECT_GT(need_more, 0u);
}

}  // namespace
}  // namespace hyperloop::soft
