// primitives/: the control protocol's encoder and its one decoder.
#include "control_codec.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>

namespace hyperloop::prim::internal {

namespace {

class Writer {
 public:
  explicit Writer(std::vector<std::byte>* out) : out_(out) {}
  void u8(uint8_t v) { out_->push_back(std::byte{v}); }
  void u16(uint16_t v) { le(v, 2); }
  void u32(uint32_t v) { le(v, 4); }
  void u64(uint64_t v) { le(v, 8); }
  void bytes(std::span<const std::byte> b) { out_->insert(out_->end(), b.begin(), b.end()); }
  void address(const rnic::QpAddress& a) {
    const uint32_t n = std::min<uint32_t>(a.size, uint32_t(a.bytes.size()));
    u8(uint8_t(n));
    bytes({a.bytes.data(), n});
  }

 private:
  void le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_->push_back(std::byte(uint8_t(v >> (8 * i))));
  }
  std::vector<std::byte>* out_;
};

// Reads fields in order; any read past the end marks the reader failed, so a
// decoder checks ok() once at the end (and that nothing is left over).
class Reader {
 public:
  explicit Reader(std::span<const std::byte> b) : b_(b) {}
  uint8_t u8() { return uint8_t(le(1)); }
  uint16_t u16() { return uint16_t(le(2)); }
  uint32_t u32() { return uint32_t(le(4)); }
  uint64_t u64() { return le(8); }
  void bytes(std::span<std::byte> dst) {
    if (!take(dst.size())) return;
    std::memcpy(dst.data(), b_.data() + pos_ - dst.size(), dst.size());
  }
  bool address(rnic::QpAddress* a) {
    const uint8_t n = u8();
    if (!ok_ || n > a->bytes.size()) return ok_ = false;
    a->bytes.fill(std::byte{0});
    bytes({a->bytes.data(), n});
    a->size = n;
    return ok_;
  }
  bool ok() const { return ok_; }
  bool done() const { return ok_ && pos_ == b_.size(); }

 private:
  bool take(size_t n) {
    if (!ok_ || n > b_.size() - pos_) return ok_ = false;
    pos_ += n;
    return true;
  }
  uint64_t le(int n) {
    if (!take(size_t(n))) return 0;
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t(uint8_t(b_[pos_ - size_t(n) + size_t(i)])) << (8 * i);
    return v;
  }
  std::span<const std::byte> b_;
  size_t pos_ = 0;
  bool ok_ = true;
};

Status malformed(std::string_view what) { return invalid_argument("malformed " + std::string(what)); }

}  // namespace

std::string_view msg_type_name(MsgType t) {
  switch (t) {
    case MsgType::kHello: return "HELLO";
    case MsgType::kAuth: return "AUTH";
    case MsgType::kCreate: return "CREATE";
    case MsgType::kConnect: return "CONNECT";
    case MsgType::kStart: return "START";
    case MsgType::kDrop: return "DROP";
    case MsgType::kPing: return "PING";
    case MsgType::kStats: return "STATS";
    case MsgType::kTakeover: return "TAKEOVER";
  }
  return "?";
}

bool is_request_type(uint8_t t) { return t >= uint8_t(MsgType::kHello) && t <= uint8_t(MsgType::kTakeover); }

void encode_frame(std::vector<std::byte>* out, uint8_t type, std::span<const std::byte> body) {
  Writer w(out);
  w.u32(kControlMagic);
  w.u16(kControlVersion);
  w.u8(type);
  w.u8(0);
  w.u32(uint32_t(body.size()));
  w.bytes(body);
}

Result<FrameHeader> decode_header(std::span<const std::byte> bytes, uint32_t max_body) {
  if (bytes.size() < kControlHeaderBytes) return malformed("frame header (short)");
  Reader r(bytes.first(kControlHeaderBytes));
  const uint32_t magic = r.u32();
  const uint16_t version = r.u16();
  FrameHeader h;
  h.type = r.u8();
  const uint8_t flags = r.u8();
  h.body_len = r.u32();
  if (magic != kControlMagic) return invalid_argument("not a hyperloop control frame (bad magic)");
  if (version != kControlVersion)
    return invalid_argument("control protocol version " + std::to_string(version) + " (this build speaks " +
                            std::to_string(kControlVersion) + ")");
  if (flags != 0) return malformed("frame header (flags set)");
  if (!is_request_type(h.type & uint8_t(~kResponseBit)))
    return invalid_argument("unknown control message type " + std::to_string(h.type));
  if (h.body_len > max_body)
    return invalid_argument("control frame body of " + std::to_string(h.body_len) + " bytes (limit " +
                            std::to_string(max_body) + ")");
  return h;
}

std::vector<std::byte> encode_hello(const HelloRequest& r) {
  std::vector<std::byte> out;
  Writer w(&out);
  w.u32(r.tenant);
  w.bytes(r.client_nonce);
  return out;
}
Result<HelloRequest> decode_hello(std::span<const std::byte> body) {
  Reader r(body);
  HelloRequest h;
  h.tenant = r.u32();
  r.bytes(h.client_nonce);
  if (!r.done()) return malformed("HELLO");
  return h;
}

std::vector<std::byte> encode_auth(const AuthRequest& a) {
  return std::vector<std::byte>(a.proof.begin(), a.proof.end());
}
Result<AuthRequest> decode_auth(std::span<const std::byte> body) {
  Reader r(body);
  AuthRequest a;
  r.bytes(a.proof);
  if (!r.done()) return malformed("AUTH");
  return a;
}

std::vector<std::byte> encode_create(const CreateRequest& c) {
  std::vector<std::byte> out;
  Writer w(&out);
  w.u32(c.pos);
  w.u32(c.n);
  w.u8(c.mode);
  w.u32(c.slots);
  w.u32(c.rearm_batch);
  w.u64(c.region_size);
  w.u64(c.staging_bytes);
  w.u64(c.op_timeout_ns);
  w.u64(c.epoch);
  return out;
}
Result<CreateRequest> decode_create(std::span<const std::byte> body) {
  Reader r(body);
  CreateRequest c;
  c.pos = r.u32();
  c.n = r.u32();
  c.mode = r.u8();
  c.slots = r.u32();
  c.rearm_batch = r.u32();
  c.region_size = r.u64();
  c.staging_bytes = r.u64();
  c.op_timeout_ns = r.u64();
  c.epoch = r.u64();
  if (!r.done()) return malformed("CREATE");
  return c;
}

Status validate_create(const CreateRequest& c, const CreateLimits& lim) {
  if (c.n < 1 || c.n > kMaxReplicas)
    return invalid_argument("CREATE: a chain has 1 to " + std::to_string(kMaxReplicas) + " replicas, not " +
                            std::to_string(c.n));
  if (c.pos >= c.n) return invalid_argument("CREATE: position " + std::to_string(c.pos) + " outside a chain of " +
                                            std::to_string(c.n));
  if (c.mode != uint8_t(ForwardMode::kOffload) && c.mode != uint8_t(ForwardMode::kCpuForward))
    return invalid_argument("CREATE: unknown forwarding mode " + std::to_string(c.mode));
  if (c.slots < 2 || c.slots > lim.max_slots || (c.slots & (c.slots - 1)))
    return invalid_argument("CREATE: slots must be a power of two in [2, " + std::to_string(lim.max_slots) +
                            "], not " + std::to_string(c.slots));
  if (c.rearm_batch < 1 || c.rearm_batch > c.slots) return invalid_argument("CREATE: rearm_batch must be in [1, slots]");
  if (c.region_size == 0 || c.region_size % 8) return invalid_argument("CREATE: region_size must be a positive multiple of 8");
  if (c.staging_bytes == 0 || c.staging_bytes > lim.max_staging_bytes)
    return invalid_argument("CREATE: staging_bytes must be in [1, " + std::to_string(lim.max_staging_bytes) + "]");
  if (c.op_timeout_ns < lim.min_op_timeout_ns || c.op_timeout_ns > lim.max_op_timeout_ns)
    return invalid_argument("CREATE: op_timeout_ns must be in [" + std::to_string(lim.min_op_timeout_ns) + ", " +
                            std::to_string(lim.max_op_timeout_ns) + "]");
  return Status::ok();
}

std::vector<std::byte> encode_connect(const ConnectRequest& c) {
  std::vector<std::byte> out;
  Writer w(&out);
  w.address(c.prev);
  w.address(c.next);
  w.address(c.client_ctrl);
  return out;
}
Result<ConnectRequest> decode_connect(std::span<const std::byte> body) {
  Reader r(body);
  ConnectRequest c;
  if (!r.address(&c.prev) || !r.address(&c.next) || !r.address(&c.client_ctrl) || !r.done())
    return malformed("CONNECT");
  return c;
}

Result<Request> decode_request(uint8_t type, std::span<const std::byte> body) {
  if (!is_request_type(type)) return invalid_argument("unknown control request type " + std::to_string(type));
  Request r;
  r.type = MsgType(type);
  switch (r.type) {
    case MsgType::kHello: {
      HL_ASSIGN_OR_RETURN(r.body, decode_hello(body));
      return r;
    }
    case MsgType::kAuth: {
      HL_ASSIGN_OR_RETURN(r.body, decode_auth(body));
      return r;
    }
    case MsgType::kCreate: {
      HL_ASSIGN_OR_RETURN(r.body, decode_create(body));
      return r;
    }
    case MsgType::kConnect: {
      HL_ASSIGN_OR_RETURN(r.body, decode_connect(body));
      return r;
    }
    default:
      if (!body.empty()) return malformed(std::string(msg_type_name(r.type)) + " (it carries no body)");
      return r;
  }
}

std::vector<std::byte> encode_ok(std::span<const std::byte> payload) {
  std::vector<std::byte> out;
  out.reserve(1 + payload.size());
  out.push_back(std::byte{uint8_t(StatusCode::kOk)});
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<std::byte> encode_error(const Status& s) {
  const std::string_view m = s.message();
  const size_t n = std::min(m.size(), kMaxErrorMessage);
  std::vector<std::byte> out(1 + n);
  out[0] = std::byte{uint8_t(s.is_ok() ? StatusCode::kInternal : s.code())};
  if (n) std::memcpy(out.data() + 1, m.data(), n);
  return out;
}

Result<Response> decode_response(std::span<const std::byte> body) {
  if (body.empty()) return malformed("response (empty)");
  const uint8_t code = uint8_t(body[0]);
  if (code > uint8_t(StatusCode::kInternal)) return malformed("response (unknown status code)");
  Response r;
  if (code == uint8_t(StatusCode::kOk)) {
    r.payload = body.subspan(1);
    return r;
  }
  if (body.size() - 1 > kMaxErrorMessage) return malformed("response (error message too long)");
  std::string msg(reinterpret_cast<const char*>(body.data()) + 1, body.size() - 1);
  // Only printable text from a peer reaches a Status (and so logs and users).
  for (char& c : msg)
    if (static_cast<unsigned char>(c) < ' ' || static_cast<unsigned char>(c) == 0x7f) c = '?';
  r.status = Status(StatusCode(code), std::move(msg));
  return r;
}

std::vector<std::byte> encode_nonce(const Nonce& n) { return std::vector<std::byte>(n.begin(), n.end()); }
Result<Nonce> decode_nonce(std::span<const std::byte> payload) {
  Reader r(payload);
  Nonce n;
  r.bytes(n);
  if (!r.done()) return malformed("CHALLENGE");
  return n;
}

std::vector<std::byte> encode_auth_answer(const AuthAnswer& a) {
  std::vector<std::byte> out;
  Writer w(&out);
  w.bytes(a.proof);
  w.u64(a.heartbeat_ns);
  return out;
}
Result<AuthAnswer> decode_auth_answer(std::span<const std::byte> payload) {
  Reader r(payload);
  AuthAnswer a;
  r.bytes(a.proof);
  a.heartbeat_ns = r.u64();
  if (!r.done()) return malformed("AUTH answer");
  return a;
}

std::vector<std::byte> encode_member_info(const MemberInfo& m) {
  std::vector<std::byte> out;
  Writer w(&out);
  w.u64(m.region_addr);
  w.u32(m.region_lkey);
  w.u32(m.region_rkey);
  w.u64(m.ctrl_addr);
  w.u32(m.ctrl_lkey);
  w.u32(m.ctrl_rkey);
  w.address(m.in_addr);
  w.address(m.out_addr);
  w.address(m.ctrl_addr_qp);
  w.u8(uint8_t(m.entry_format));
  return out;
}
Result<MemberInfo> decode_member_info(std::span<const std::byte> payload) {
  Reader r(payload);
  MemberInfo m;
  m.region_addr = r.u64();
  m.region_lkey = r.u32();
  m.region_rkey = r.u32();
  m.ctrl_addr = r.u64();
  m.ctrl_lkey = r.u32();
  m.ctrl_rkey = r.u32();
  if (!r.address(&m.in_addr) || !r.address(&m.out_addr) || !r.address(&m.ctrl_addr_qp)) return malformed("CREATE answer");
  const uint8_t format = r.u8();
  if (!r.done()) return malformed("CREATE answer");
  if (format != uint8_t(EntryFormat::kMlx5) && format != uint8_t(EntryFormat::kRxe))
    return malformed("CREATE answer (entry format " + std::to_string(format) + ")");
  m.entry_format = EntryFormat(format);
  return m;
}

namespace {
Proof hmac(std::string_view secret, std::string_view label, uint32_t tenant, const Nonce& a, const Nonce& b) {
  std::vector<unsigned char> msg(label.begin(), label.end());
  for (int i = 0; i < 4; ++i) msg.push_back(uint8_t(tenant >> (8 * i)));
  for (auto x : a) msg.push_back(uint8_t(x));
  for (auto x : b) msg.push_back(uint8_t(x));
  Proof out{};
  unsigned int len = 0;
  // An empty key is valid HMAC input; OpenSSL wants a non-null pointer for it.
  static const unsigned char kEmpty = 0;
  const void* key = secret.empty() ? static_cast<const void*>(&kEmpty) : secret.data();
  if (!HMAC(EVP_sha256(), key, int(secret.size()), msg.data(), msg.size(),
            reinterpret_cast<unsigned char*>(out.data()), &len) ||
      len != out.size()) {
    out.fill(std::byte{0});  // a failure never matches a proof (fresh nonces make a zero proof useless)
  }
  return out;
}
}  // namespace

Proof client_proof(std::string_view secret, uint32_t tenant, const Nonce& server, const Nonce& client) {
  return hmac(secret, "hyperloop-control-v1 client", tenant, server, client);
}
Proof server_proof(std::string_view secret, uint32_t tenant, const Nonce& client, const Nonce& server) {
  return hmac(secret, "hyperloop-control-v1 server", tenant, client, server);
}
bool proofs_equal(const Proof& a, const Proof& b) { return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0; }

Result<Nonce> fresh_nonce() {
  Nonce n;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(n.data()), int(n.size())) != 1)
    return internal_error("the CSPRNG (OpenSSL RAND_bytes) failed");
  return n;
}

}  // namespace hyperloop::prim::internal
