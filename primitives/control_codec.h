// Private to primitives/: the control protocol's wire format, the one place
// where bytes from a control connection are turned into values.
//
// Every frame, both directions:
//
//   off len  field
//   0   4    magic   "HLCP" (0x50434c48 little-endian)
//   4   2    version kControlVersion
//   6   1    type    a MsgType; responses set bit 7 (0x80 | request type)
//   7   1    flags   0 (anything else is refused)
//   8   4    body_len bytes that follow, at most kMaxControlBody
//
// All integers are little-endian and written field by field (no struct is
// copied to the wire, so no padding travels). Bodies:
//
//   HELLO     u32 tenant, 32 B client nonce             -> 32 B server nonce
//   AUTH      32 B client proof                          -> 32 B server proof, u64 heartbeat_ns
//   CREATE    u32 pos, u32 n, u8 mode, u32 slots, u32 rearm_batch,
//             u64 region_size, u64 staging_bytes, u64 op_timeout_ns,
//             u64 epoch (GroupOptions::epoch)
//                                                        -> MemberInfo (encode_member_info:
//                                                           u64 region_addr, u32 lkey, u32 rkey,
//                                                           u64 ctrl_addr, u32 lkey, u32 rkey,
//                                                           3 QP addresses as in CONNECT,
//                                                           u8 entry format: 1 mlx5, 2 rxe)
//   CONNECT   3 x (u8 size, size bytes) QP addresses: prev, next, client_ctrl
//                                                        -> (empty)
//   START     (empty)                                    -> (empty)
//   DROP      (empty)                                    -> (empty)
//   PING      (empty)                                    no response: a heartbeat
//   STATS     (empty)                                    -> Prometheus text
//   TAKEOVER  reserved for a fenced takeover of a tenant held by another
//             session (issue 10); refused with kNotSupported today
//
// A response body is u8 StatusCode, then the payload above (OK) or a UTF-8
// message of at most kMaxErrorMessage bytes (error).
//
// The proofs (HMAC-SHA256 with the tenant's secret as key):
//   client proof = HMAC(secret, "hyperloop-control-v1 client" | u32 tenant | server nonce | client nonce)
//   server proof = HMAC(secret, "hyperloop-control-v1 server" | u32 tenant | client nonce | server nonce)
// The server proof lets the client check that the daemon knows the secret too.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "hyperloop/primitives.h"
#include "hyperloop/rnic.h"
#include "hyperloop/status.h"
#include "member.h"

namespace hyperloop::prim::internal {

inline constexpr uint32_t kControlMagic = 0x50434c48;  // "HLCP"
inline constexpr uint16_t kControlVersion = 3;  // 2: MemberInfo's entry format; 3: CREATE's epoch
inline constexpr size_t kControlHeaderBytes = 12;
inline constexpr uint32_t kMaxControlBody = 16 << 10;  // the largest (STATS) answers are a few KiB
inline constexpr size_t kMaxErrorMessage = 1024;
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kProofBytes = 32;
inline constexpr uint8_t kResponseBit = 0x80;

enum class MsgType : uint8_t {
  kHello = 1,
  kAuth = 2,
  kCreate = 3,
  kConnect = 4,
  kStart = 5,
  kDrop = 6,
  kPing = 7,
  kStats = 8,
  kTakeover = 9,
};
std::string_view msg_type_name(MsgType t);
bool is_request_type(uint8_t t);

struct FrameHeader {
  uint8_t type = 0;
  uint32_t body_len = 0;
};

using Nonce = std::array<std::byte, kNonceBytes>;
using Proof = std::array<std::byte, kProofBytes>;

struct HelloRequest {
  uint32_t tenant = 0;
  Nonce client_nonce{};
};
struct AuthRequest {
  Proof proof{};
};
struct CreateRequest {
  uint32_t pos = 0, n = 0;
  uint8_t mode = 0;
  uint32_t slots = 0, rearm_batch = 0;
  uint64_t region_size = 0, staging_bytes = 0, op_timeout_ns = 0;
  uint64_t epoch = 0;  // GroupOptions::epoch (version 3)
};
struct ConnectRequest {
  rnic::QpAddress prev, next, client_ctrl;
};
struct AuthAnswer {
  Proof proof{};
  uint64_t heartbeat_ns = 0;  // the client sends a PING at least this often
};

// ---- frames ---------------------------------------------------------------------------
// Writes a header and body into out (appended).
void encode_frame(std::vector<std::byte>* out, uint8_t type, std::span<const std::byte> body);
// Decodes the 12-byte header. Errors (kInvalidArgument): wrong magic,
// version, flags, unknown type, body longer than max_body.
Result<FrameHeader> decode_header(std::span<const std::byte> bytes, uint32_t max_body = kMaxControlBody);

// ---- request bodies (each checks its exact length) --------------------------------------
std::vector<std::byte> encode_hello(const HelloRequest& r);
Result<HelloRequest> decode_hello(std::span<const std::byte> body);
std::vector<std::byte> encode_auth(const AuthRequest& r);
Result<AuthRequest> decode_auth(std::span<const std::byte> body);
std::vector<std::byte> encode_create(const CreateRequest& r);
Result<CreateRequest> decode_create(std::span<const std::byte> body);
std::vector<std::byte> encode_connect(const ConnectRequest& r);
Result<ConnectRequest> decode_connect(std::span<const std::byte> body);

// Any request frame's body, by the type in its header: the one entry point
// the daemon (and the fuzzer) decodes requests through. Bodyless requests
// (START, DROP, PING, STATS, TAKEOVER) must have an empty body.
// Errors: kInvalidArgument (not a request type, wrong length, bad address size).
struct Request {
  MsgType type = MsgType::kPing;
  std::variant<std::monostate, HelloRequest, AuthRequest, CreateRequest, ConnectRequest> body;
};
Result<Request> decode_request(uint8_t type, std::span<const std::byte> body);

// What a daemon accepts in a CREATE, beyond the exact length.
struct CreateLimits {
  uint32_t max_slots = 4096;
  uint64_t max_staging_bytes = 1ull << 30;
  uint64_t min_op_timeout_ns = 1'000'000;            // 1 ms
  uint64_t max_op_timeout_ns = 3'600'000'000'000ull;  // 1 h
};
// Checks a decoded CREATE's values: chain length 1..kMaxReplicas, position
// inside it, a known mode, slots a power of two in [2, max_slots],
// rearm_batch in [1, slots], region size a positive multiple of 8, sizes and
// timeouts inside the limits. Errors: kInvalidArgument naming the field.
Status validate_create(const CreateRequest& r, const CreateLimits& limits);

// ---- responses -------------------------------------------------------------------------
std::vector<std::byte> encode_ok(std::span<const std::byte> payload);
std::vector<std::byte> encode_error(const Status& s);
// Splits a response body: the status (with its message) and, if OK, the payload.
// Errors: kInvalidArgument for an empty body, an unknown code, an OK code in
// an error position, or a message over kMaxErrorMessage.
struct Response {
  Status status;
  std::span<const std::byte> payload;
};
Result<Response> decode_response(std::span<const std::byte> body);

std::vector<std::byte> encode_nonce(const Nonce& n);
Result<Nonce> decode_nonce(std::span<const std::byte> payload);
std::vector<std::byte> encode_auth_answer(const AuthAnswer& a);
Result<AuthAnswer> decode_auth_answer(std::span<const std::byte> payload);
std::vector<std::byte> encode_member_info(const MemberInfo& m);
Result<MemberInfo> decode_member_info(std::span<const std::byte> payload);

// ---- proofs -------------------------------------------------------------------------------
// HMAC-SHA256 (OpenSSL libcrypto) as described above.
Proof client_proof(std::string_view secret, uint32_t tenant, const Nonce& server, const Nonce& client);
Proof server_proof(std::string_view secret, uint32_t tenant, const Nonce& client, const Nonce& server);
// Constant-time comparison.
bool proofs_equal(const Proof& a, const Proof& b);
// A fresh nonce from the CSPRNG. Errors: kInternal if the CSPRNG fails.
Result<Nonce> fresh_nonce();

}  // namespace hyperloop::prim::internal
