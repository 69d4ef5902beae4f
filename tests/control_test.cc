// control_test: the control protocol as a hostile or broken peer meets it.
//
//   ControlCodecFuzz   the one decoder, 100,000+ seeded random and
//                      structure-aware inputs per run (runs under ASan/UBSan too)
//   ControlServerTest  a replica host in this process serving control on
//                      loopback: authentication, tenant ownership, nonsense
//                      requests, malformed frames, live fuzzing, limits,
//                      leaks, half-open and silent clients, heartbeats, logs
//   ControlClientTest  Group::connect against daemons that never answer or
//                      cannot prove the secret
//
// Waiting is for events (an answer, EOF, a counter reaching a value), each
// with a bound; nothing sleeps to synchronize.
#include <dirent.h>
#include <gtest/gtest.h>
#if __has_include(<infiniband/verbs.h>)  // rdma-core: built with rnic/verbs
#define HYPERLOOP_HAVE_VERBS_HEADERS 1
#include <infiniband/verbs.h>
#include <netinet/in.h>  // before the kernel header below, which includes linux/in.h
#include <rdma/rdma_user_rxe.h>
#endif

#include <cstring>
#include <random>
#include <thread>

#include "chain_format.h"
#include "control_codec.h"
#include "daemon_test_util.h"
#include "hyperloop/log.h"
#include "hyperloop/primitives.h"
#include "hyperloop/soft_rnic.h"

namespace hyperloop {
namespace {

using namespace hyperloop::daemon_test;
using namespace hyperloop::prim::internal;
using prim::ControlOptions;
using prim::ControlStats;
using prim::ForwardMode;
using prim::Group;
using prim::ReplicaHost;

constexpr size_t kRegion = 65536;

uint64_t now_ns() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

size_t open_fds() {
  size_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d)) ++n;
    closedir(d);
  }
  return n;
}
size_t thread_count() {
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    if (key == "Threads:") {
      size_t n;
      in >> n;
      return n;
    }
    std::getline(in, key);
  }
  return 0;
}

// ---- valid frames and their mutations -------------------------------------------------------------
std::vector<std::byte> frame(MsgType t, std::span<const std::byte> body) {
  std::vector<std::byte> out;
  encode_frame(&out, uint8_t(t), body);
  return out;
}

rnic::QpAddress random_address(std::mt19937_64& rng) {
  rnic::QpAddress a;
  a.size = uint32_t(rng() % (a.bytes.size() + 1));
  for (uint32_t i = 0; i < a.size; ++i) a.bytes[i] = std::byte(uint8_t(rng()));
  return a;
}

CreateRequest random_create(std::mt19937_64& rng) {
  CreateRequest c;
  c.n = uint32_t(1 + rng() % 7);
  c.pos = uint32_t(rng() % c.n);
  c.mode = uint8_t(rng() % 2);
  c.slots = 1u << (1 + rng() % 12);
  c.rearm_batch = uint32_t(1 + rng() % c.slots);
  c.region_size = 8 * (1 + rng() % 100000);
  c.staging_bytes = 1 + rng() % (1 << 20);
  c.op_timeout_ns = 1'000'000 + rng() % 1'000'000'000;
  c.epoch = rng();
  return c;
}

std::vector<std::byte> random_valid_request(std::mt19937_64& rng) {
  switch (rng() % 9) {
    case 0: {
      HelloRequest h;
      h.tenant = uint32_t(rng());
      for (auto& b : h.client_nonce) b = std::byte(uint8_t(rng()));
      return frame(MsgType::kHello, encode_hello(h));
    }
    case 1: {
      AuthRequest a;
      for (auto& b : a.proof) b = std::byte(uint8_t(rng()));
      return frame(MsgType::kAuth, encode_auth(a));
    }
    case 2: return frame(MsgType::kCreate, encode_create(random_create(rng)));
    case 3: return frame(MsgType::kConnect, encode_connect({random_address(rng), random_address(rng), random_address(rng)}));
    case 4: return frame(MsgType::kStart, {});
    case 5: return frame(MsgType::kDrop, {});
    case 6: return frame(MsgType::kPing, {});
    case 7: return frame(MsgType::kStats, {});
    default: return frame(MsgType::kTakeover, {});
  }
}

// One structure-aware mutation: bit flips, boundary values in a 1/2/4/8-byte
// field, truncation, extension, a length that lies, a splice of two frames.
void mutate(std::vector<std::byte>* f, std::mt19937_64& rng) {
  static const uint64_t kBoundary[] = {0, 1, 2, 7, 8, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0xffff, 0x10000,
                                       0x7fffffff, 0x80000000, 0xffffffff, 0x100000000ull, ~0ull};
  if (f->empty()) {
    f->push_back(std::byte(uint8_t(rng())));
    return;
  }
  switch (rng() % 7) {
    case 0:
      for (int i = 0, n = int(1 + rng() % 4); i < n; ++i) (*f)[rng() % f->size()] ^= std::byte(uint8_t(1u << (rng() % 8)));
      break;
    case 1: {
      const int width = 1 << (rng() % 4);
      const size_t at = rng() % f->size();
      const uint64_t v = kBoundary[rng() % std::size(kBoundary)];
      for (int i = 0; i < width && at + size_t(i) < f->size(); ++i) (*f)[at + size_t(i)] = std::byte(uint8_t(v >> (8 * i)));
      break;
    }
    case 2: f->resize(rng() % f->size()); break;
    case 3:
      for (int i = 0, n = int(1 + rng() % 64); i < n; ++i) f->push_back(std::byte(uint8_t(rng())));
      break;
    case 4:
      if (f->size() >= kControlHeaderBytes) {  // body_len that lies
        const uint32_t body = uint32_t(f->size() - kControlHeaderBytes);
        const uint32_t lies[] = {0, body - 1, body + 1, kMaxControlBody, kMaxControlBody + 1, 0xffffffffu};
        const uint32_t v = lies[rng() % std::size(lies)];
        for (int i = 0; i < 4; ++i) (*f)[8 + size_t(i)] = std::byte(uint8_t(v >> (8 * i)));
      }
      break;
    case 5: {
      auto other = random_valid_request(rng);
      f->resize(rng() % (f->size() + 1));
      f->insert(f->end(), other.begin() + std::ptrdiff_t(rng() % other.size()), other.end());
      break;
    }
    default:
      if (f->size() > 6) (*f)[6] = std::byte(uint8_t(rng()));  // the type byte
      break;
  }
}

// Decodes one frame exactly as the daemon does (header, then the request by
// its type, then CREATE's values). Returns whether it was accepted; checks
// that what it accepts re-encodes to the same bytes.
bool decode_like_the_daemon(std::span<const std::byte> bytes) {
  auto h = decode_header(bytes);
  if (!h) return false;
  EXPECT_LE(h->body_len, kMaxControlBody);
  if (bytes.size() < kControlHeaderBytes + h->body_len) return false;  // the daemon waits for more
  auto body = bytes.subspan(kControlHeaderBytes, h->body_len);
  auto r = decode_request(h->type, body);
  if (!r) return false;
  std::vector<std::byte> again;
  switch (r->type) {
    case MsgType::kHello: again = encode_hello(std::get<HelloRequest>(r->body)); break;
    case MsgType::kAuth: again = encode_auth(std::get<AuthRequest>(r->body)); break;
    case MsgType::kCreate:
      again = encode_create(std::get<CreateRequest>(r->body));
      (void)validate_create(std::get<CreateRequest>(r->body), CreateLimits{});
      break;
    case MsgType::kConnect: again = encode_connect(std::get<ConnectRequest>(r->body)); break;
    default: break;
  }
  EXPECT_TRUE(std::equal(again.begin(), again.end(), body.begin(), body.end()))
      << "an accepted " << msg_type_name(r->type) << " does not re-encode to its bytes";
  return true;
}

uint64_t fuzz_seed() {
  if (const char* s = std::getenv("HYPERLOOP_SEED")) return std::strtoull(s, nullptr, 0);
  return 0xc0de'c0de;
}

TEST(ControlCodecFuzz, HundredThousandMutatedAndRandomRequestFrames) {
  const uint64_t seed = fuzz_seed();
  SCOPED_TRACE("replay: HYPERLOOP_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  size_t inputs = 0, accepted = 0;
  for (int i = 0; i < 120'000; ++i, ++inputs) {
    std::vector<std::byte> f;
    if (i % 5 == 0) {  // random bytes, sometimes behind a valid magic/version
      f.resize(rng() % 96);
      for (auto& b : f) b = std::byte(uint8_t(rng()));
      if (f.size() >= 6 && rng() % 2) {
        auto good = frame(MsgType::kPing, {});
        std::copy(good.begin(), good.begin() + 6, f.begin());
      }
    } else {
      f = random_valid_request(rng);
      for (int m = 0, n = int(rng() % 4); m < n; ++m) mutate(&f, rng);
    }
    accepted += decode_like_the_daemon(f) ? 1 : 0;
    if (HasFailure()) break;
  }
  std::printf("control decoder: %zu inputs, %zu accepted as requests\n", inputs, accepted);
  EXPECT_GE(inputs, 100'000u);
  EXPECT_GT(accepted, 0u);
  EXPECT_LT(accepted, inputs);
}

TEST(ControlCodecFuzz, HundredThousandMutatedResponsesAndAnswers) {
  std::mt19937_64 rng(fuzz_seed() ^ 0xa5a5);
  size_t inputs = 0;
  MemberInfo info;
  info.in_addr = random_address(rng);
  info.out_addr = random_address(rng);
  info.ctrl_addr_qp = random_address(rng);
  const std::vector<std::vector<std::byte>> valid = {
      encode_ok(encode_member_info(info)), encode_ok(encode_auth_answer({})), encode_ok(encode_nonce({})),
      encode_error(permission_denied("no")), encode_ok({})};
  for (int i = 0; i < 100'000; ++i, ++inputs) {
    auto b = valid[rng() % valid.size()];
    for (int m = 0, n = int(1 + rng() % 3); m < n; ++m) mutate(&b, rng);
    auto r = decode_response(b);
    if (!r) continue;
    if (!r->status.is_ok()) {
      EXPECT_LE(r->status.message().size(), kMaxErrorMessage);
      for (char c : r->status.message()) EXPECT_GE(static_cast<unsigned char>(c), ' ');
      continue;
    }
    if (auto m = decode_member_info(r->payload)) {
      EXPECT_EQ(encode_member_info(*m).size(), r->payload.size());
      EXPECT_LE(m->in_addr.size, m->in_addr.bytes.size());
    }
    (void)decode_auth_answer(r->payload);
    (void)decode_nonce(r->payload);
    if (HasFailure()) break;
  }
  EXPECT_GE(inputs, 100'000u);
}

TEST(ControlCodec, ValidFramesRoundTrip) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(decode_like_the_daemon(random_valid_request(rng)));
}

TEST(ControlCodec, HeaderRefusalsNameTheReason) {
  auto f = frame(MsgType::kPing, {});
  auto bad = f;
  bad[0] = std::byte{0};
  EXPECT_NE(decode_header(bad).status().message().find("magic"), std::string::npos);
  bad = f;
  bad[4] = std::byte{9};
  EXPECT_NE(decode_header(bad).status().message().find("version 9"), std::string::npos);
  bad = f;
  bad[6] = std::byte{0x42};
  EXPECT_NE(decode_header(bad).status().message().find("type 66"), std::string::npos);
  bad = f;
  bad[7] = std::byte{1};
  EXPECT_FALSE(decode_header(bad).is_ok());
  bad = f;
  bad[11] = std::byte{1};  // body_len 16 MiB
  EXPECT_NE(decode_header(bad).status().message().find("limit"), std::string::npos);
}

TEST(ControlCodec, MemberInfoCarriesItsEntryFormatAndRefusesUnknownOnes) {
  MemberInfo info;
  info.entry_format = prim::internal::EntryFormat::kRxe;
  auto bytes = encode_member_info(info);
  auto back = decode_member_info(bytes);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(back->entry_format, prim::internal::EntryFormat::kRxe);
  for (uint8_t bad : {0, 3, 255}) {  // kNone, and values no version defines
    bytes.back() = std::byte{bad};
    auto r = decode_member_info(bytes);
    ASSERT_FALSE(r.is_ok()) << "entry format " << int(bad) << " accepted";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("entry format"), std::string::npos) << r.status().message();
  }
  bytes.pop_back();  // a version-1 answer: no format byte
  EXPECT_FALSE(decode_member_info(bytes).is_ok());
}

#ifdef HYPERLOOP_HAVE_VERBS_HEADERS
// The kRxe entry, scattered as a slot RECV scatters it (its pieces), puts
// each field where rdma_rxe reads it: checked through the kernel's own
// struct rxe_send_wqe (<rdma/rdma_user_rxe.h>), not through our offsets
// (except sge[0]: C++ lays the header's flexible array out differently).
TEST(ChainFormat, RxeEntriesLandOnTheFieldsOfStructRxeSendWqe) {
  using namespace prim::internal;
  alignas(8) std::byte local[512] = {}, fwd[512] = {};
  auto scatter = [&](const std::byte* e) {
    size_t at = 0;
    for (const PatchPiece& p : patch_pieces(EntryFormat::kRxe)) {
      ASSERT_NE(p.where, PatchPiece::kPad);
      std::memcpy((p.where == PatchPiece::kLocal ? local : fwd) + p.off, e + at, p.len);
      at += p.len;
    }
    EXPECT_EQ(at, kEntryBytes);
  };
  auto sge0 = [](const std::byte* w, uint64_t* addr, uint32_t* len, uint32_t* lkey) {
    std::memcpy(addr, w + rxe_wqe::kSge0, 8);
    std::memcpy(len, w + rxe_wqe::kSge0Length, 4);
    std::memcpy(lkey, w + rxe_wqe::kSge0Lkey, 4);
  };
  std::byte e[kEntryBytes];
  uint64_t addr;
  uint32_t len, lkey;
  entry_clear(EntryFormat::kRxe, e);
  entry_local_cas(EntryFormat::kRxe, e, 0x1122334455667788ull, 0xabcd, 7, 9, 0x5000, 0x77);
  entry_forward_write(EntryFormat::kRxe, e, 0x6000, 0x11, 0x7000, 0x22, 64);
  scatter(e);
  const auto* lw = reinterpret_cast<const rxe_send_wqe*>(local);
  EXPECT_EQ(lw->wr.opcode, uint32_t(IBV_WR_ATOMIC_CMP_AND_SWP));
  EXPECT_EQ(lw->wr.send_flags, uint32_t(IBV_SEND_SIGNALED));
  EXPECT_EQ(lw->wr.wr.atomic.remote_addr, 0x1122334455667788ull);
  EXPECT_EQ(lw->wr.wr.atomic.compare_add, 7u);
  EXPECT_EQ(lw->wr.wr.atomic.swap, 9u);
  EXPECT_EQ(lw->wr.wr.atomic.rkey, 0xabcdu);
  sge0(local, &addr, &len, &lkey);
  EXPECT_EQ(addr, 0x5000u);
  EXPECT_EQ(len, 8u);
  EXPECT_EQ(lkey, 0x77u);
  const auto* fw = reinterpret_cast<const rxe_send_wqe*>(fwd);
  EXPECT_EQ(fw->wr.wr.rdma.remote_addr, 0x7000u);
  EXPECT_EQ(fw->wr.wr.rdma.rkey, 0x22u);
  sge0(fwd, &addr, &len, &lkey);
  EXPECT_EQ(addr, 0x6000u);
  EXPECT_EQ(len, 64u);
  EXPECT_EQ(lkey, 0x11u);
  // A flush is a 1-byte READ; a cleared entry is a zero-length WRITE (rxe's NOP) and forwards nothing.
  entry_clear(EntryFormat::kRxe, e);
  entry_local_read(EntryFormat::kRxe, e, 0x8000, 0x33, 0x9000, 0x44, 1);
  scatter(e);
  EXPECT_EQ(lw->wr.opcode, uint32_t(IBV_WR_RDMA_READ));
  EXPECT_EQ(lw->wr.wr.rdma.remote_addr, 0x9000u);
  EXPECT_EQ(lw->wr.wr.rdma.rkey, 0x44u);
  sge0(local, &addr, &len, &lkey);
  EXPECT_EQ(len, 1u);
  sge0(fwd, &addr, &len, &lkey);
  EXPECT_EQ(len, 0u);
  entry_clear(EntryFormat::kRxe, e);
  scatter(e);
  EXPECT_EQ(lw->wr.opcode, uint32_t(IBV_WR_RDMA_WRITE));
  EXPECT_EQ(lw->wr.send_flags, uint32_t(IBV_SEND_SIGNALED));
  sge0(local, &addr, &len, &lkey);
  EXPECT_EQ(len, 0u);
}

#endif  // HYPERLOOP_HAVE_VERBS_HEADERS

TEST(ControlCodec, CreateValuesAreChecked) {
  CreateRequest good;
  good.n = 3;
  good.pos = 1;
  good.mode = 0;
  good.slots = 64;
  good.rearm_batch = 16;
  good.region_size = kRegion;
  good.staging_bytes = 1 << 20;
  good.op_timeout_ns = 500'000'000;
  ASSERT_TRUE(validate_create(good, {}).is_ok());
  auto refused = [&](auto change, const char* field) {
    CreateRequest c = good;
    change(c);
    auto s = validate_create(c, {});
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s.message();
  };
  refused([](CreateRequest& c) { c.slots = 1u << 31; }, "slots");
  refused([](CreateRequest& c) { c.slots = 48; }, "slots");
  refused([](CreateRequest& c) { c.n = 1000; }, "replicas");
  refused([](CreateRequest& c) { c.n = 0; }, "replicas");
  refused([](CreateRequest& c) { c.pos = 3; }, "position");
  refused([](CreateRequest& c) { c.mode = 7; }, "mode");
  refused([](CreateRequest& c) { c.rearm_batch = 0; }, "rearm_batch");
  refused([](CreateRequest& c) { c.rearm_batch = 65; }, "rearm_batch");
  refused([](CreateRequest& c) { c.region_size = 12; }, "region_size");
  refused([](CreateRequest& c) { c.staging_bytes = 0; }, "staging_bytes");
  refused([](CreateRequest& c) { c.staging_bytes = 1ull << 40; }, "staging_bytes");
  refused([](CreateRequest& c) { c.op_timeout_ns = 0; }, "op_timeout_ns");
}

TEST(ControlCodec, ProofsDependOnSecretTenantAndBothNonces) {
  Nonce a{}, b{};
  a[0] = std::byte{1};
  b[0] = std::byte{2};
  const Proof p = client_proof("secret", 1, a, b);
  EXPECT_TRUE(proofs_equal(p, client_proof("secret", 1, a, b)));
  EXPECT_FALSE(proofs_equal(p, client_proof("secreT", 1, a, b)));
  EXPECT_FALSE(proofs_equal(p, client_proof("secret", 2, a, b)));
  EXPECT_FALSE(proofs_equal(p, client_proof("secret", 1, b, a)));
  EXPECT_FALSE(proofs_equal(p, server_proof("secret", 1, a, b)));  // the two directions differ
  auto n1 = fresh_nonce(), n2 = fresh_nonce();
  ASSERT_TRUE(n1.is_ok() && n2.is_ok());
  EXPECT_NE(*n1, *n2);
}

// ---- a raw control connection (the hostile or broken peer) ---------------------------------------
class RawConn {
 public:
  explicit RawConn(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
  }
  ~RawConn() { close(); }
  RawConn(const RawConn&) = delete;
  bool connected() const { return connected_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  bool send_bytes(std::span<const std::byte> b) {
    size_t off = 0;
    while (off < b.size()) {
      const ssize_t n = ::send(fd_, b.data() + off, b.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += size_t(n);
    }
    return true;
  }
  bool send(MsgType t, std::span<const std::byte> body = {}) { return send_bytes(frame(t, body)); }
  // Reads one frame (bounded). False on EOF, error or timeout.
  bool read_frame(uint8_t* type, std::vector<std::byte>* body, int timeout_ms = 5000) {
    std::byte h[kControlHeaderBytes];
    if (!read_exact(h, timeout_ms)) return false;
    auto hdr = decode_header(h);
    if (!hdr) return false;
    *type = hdr->type;
    body->resize(hdr->body_len);
    return read_exact(*body, timeout_ms);
  }
  // The answer to a request of type t: its status and payload.
  Result<std::vector<std::byte>> call(MsgType t, std::span<const std::byte> body = {}) {
    if (!send(t, body)) return unavailable("send failed");
    uint8_t type;
    std::vector<std::byte> b;
    if (!read_frame(&type, &b)) return unavailable("no answer");
    if (type != (kResponseBit | uint8_t(t))) return internal_error("answer of the wrong type");
    auto r = decode_response(b);
    if (!r) return r.status();
    if (!r->status.is_ok()) return r->status;
    return std::vector<std::byte>(r->payload.begin(), r->payload.end());
  }
  Status authenticate(uint32_t tenant, const std::string& secret) {
    HelloRequest h;
    h.tenant = tenant;
    auto n = fresh_nonce();
    h.client_nonce = *n;
    auto ch = call(MsgType::kHello, encode_hello(h));
    if (!ch) return ch.status();
    auto server = decode_nonce(*ch);
    if (!server) return server.status();
    auto a = call(MsgType::kAuth, encode_auth({client_proof(secret, tenant, *server, h.client_nonce)}));
    return a.status();
  }
  // True once the peer closed the connection (within timeout_ms); data before the EOF is skipped.
  bool sees_eof(int timeout_ms = 5000) {
    const uint64_t deadline = now_ns() + uint64_t(timeout_ms) * 1'000'000;
    std::byte buf[4096];
    for (;;) {
      const uint64_t now = now_ns();
      if (now >= deadline) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, int((deadline - now) / 1'000'000) + 1) <= 0) continue;
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }
  int fd() const { return fd_; }

 private:
  bool read_exact(std::span<std::byte> b, int timeout_ms) {
    size_t off = 0;
    while (off < b.size()) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) <= 0) return false;
      const ssize_t n = ::recv(fd_, b.data() + off, b.size() - off, 0);
      if (n <= 0) return false;
      off += size_t(n);
    }
    return true;
  }
  int fd_ = -1;
  bool connected_ = false;
};

CreateRequest create_for(uint32_t pos, uint32_t n, ForwardMode mode = ForwardMode::kCpuForward) {
  CreateRequest c;
  c.pos = pos;
  c.n = n;
  c.mode = uint8_t(mode);
  c.slots = 64;
  c.rearm_batch = 16;
  c.region_size = kRegion;
  c.staging_bytes = 1 << 20;
  c.op_timeout_ns = kOpTimeoutNs;
  return c;
}

// Waits (bounded) until pred() holds.
template <typename P>
bool eventually(P pred, uint64_t timeout_ns = 5'000'000'000) {
  const uint64_t deadline = now_ns() + timeout_ns;
  while (!pred()) {
    if (now_ns() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Collects log records (for the tests that check what is logged).
class LogCapture {
 public:
  LogCapture() {
    set_log_sink(
        [this](const LogRecord& r) {
          std::lock_guard<std::mutex> l(mu_);
          lines_.push_back(format_logfmt(r));
        },
        LogLevel::kDebug);
  }
  ~LogCapture() { reset_log_sink(); }
  bool has(std::initializer_list<std::string> parts) {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& line : lines_) {
      bool all = true;
      for (const auto& p : parts) all = all && line.find(p) != std::string::npos;
      if (all) return true;
    }
    return false;
  }
  std::string all() {
    std::lock_guard<std::mutex> l(mu_);
    std::string s;
    for (const auto& line : lines_) s += line + "\n";
    return s;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> lines_;
};

// ---- a replica host in this process, serving control ---------------------------------------------
class ControlServerTest : public ::testing::Test {
 protected:
  void start(ControlOptions co = {}) {
    ASSERT_TRUE(fabric_.listen("127.0.0.1").is_ok());
    auto nic = fabric_.create_nic({.name = "replica"});
    ASSERT_TRUE(nic.is_ok()) << nic.status().to_string();
    nic_ = std::move(*nic);
    executor_.emplace();
    executor_->add(*nic_);
    auto host = ReplicaHost::create(*nic_);
    ASSERT_TRUE(host.is_ok());
    host_ = std::move(*host);
    ASSERT_TRUE(host_->register_tenant(1, kRegion, "", tenant_secret(1)).is_ok());
    ASSERT_TRUE(host_->register_tenant(2, kRegion, "", tenant_secret(2)).is_ok());
    ASSERT_TRUE(host_->register_tenant(3, kRegion).is_ok());  // no secret: no remote client
    auto port = host_->serve_control("127.0.0.1", 0, co);
    ASSERT_TRUE(port.is_ok()) << port.status().to_string();
    port_ = *port;
    ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
  }
  std::vector<std::string> endpoints() const { return {"127.0.0.1:" + std::to_string(port_)}; }
  Result<std::unique_ptr<Group>> connect(uint32_t tenant, std::string secret) {
    auto o = group_options(tenant, kRegion, ForwardMode::kCpuForward);
    o.secret = std::move(secret);
    auto eps = endpoints();
    return Group::connect(client_.nic(), eps, o);
  }
  Result<std::unique_ptr<Group>> connect(uint32_t tenant) { return connect(tenant, tenant_secret(tenant)); }
  // A write of `tag` at offset 0 and a flush, both acknowledged.
  ::testing::AssertionResult write_and_flush(Group& g, uint64_t tag) {
    prim::Op w, f;
    std::byte b[8];
    std::memcpy(b, &tag, 8);
    Status s = g.write(w, 0, b);
    if (s.is_ok()) s = g.wait(w, 5'000'000'000);
    if (s.is_ok()) s = w.status();
    if (s.is_ok()) s = g.flush(f, 0, 8);
    if (s.is_ok()) s = g.wait(f, 5'000'000'000);
    if (s.is_ok()) s = f.status();
    if (!s.is_ok()) return ::testing::AssertionFailure() << s.to_string();
    return ::testing::AssertionSuccess();
  }
  uint64_t peek_word(uint32_t tenant) {
    uint64_t v = 0;
    std::byte b[8];
    EXPECT_TRUE(host_->peek(tenant, 0, b).is_ok());
    std::memcpy(&v, b, 8);
    return v;
  }
  ControlStats stats() const { return host_->control_stats(); }

  // Destroyed in reverse: client, host (stops control), NIC, executor, fabric.
  soft::Fabric fabric_;
  std::optional<soft::SingleThreadExecutor> executor_;
  std::unique_ptr<soft::Nic> nic_;
  std::unique_ptr<ReplicaHost> host_;
  Client client_;
  uint16_t port_ = 0;
};

TEST_F(ControlServerTest, RightSecretBuildsAChain) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto g = connect(1);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  ASSERT_TRUE(write_and_flush(**g, 0x1111));
  EXPECT_EQ(peek_word(1), 0x1111u);
  EXPECT_EQ(stats().auth_ok, 1u);
  EXPECT_EQ(stats().members_created, 1u);
}

TEST_F(ControlServerTest, WrongSecretIsPermissionDeniedLoggedAndCreatesNothing) {
  ASSERT_NO_FATAL_FAILURE(start());
  LogCapture logs;
  auto bad = connect(1, tenant_secret(2));
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kPermissionDenied) << bad.status().to_string();
  auto empty = connect(1, "");
  EXPECT_EQ(empty.status().code(), StatusCode::kPermissionDenied) << empty.status().to_string();
  EXPECT_EQ(stats().auth_failed, 2u);
  EXPECT_EQ(stats().members_created, 0u);
  EXPECT_TRUE(logs.has({"component=control", "event=request_refused", "code=PermissionDenied", "tenant=1"})) << logs.all();
  // Nothing was held: the owner gets the tenant at once.
  auto good = connect(1);
  ASSERT_TRUE(good.is_ok()) << good.status().to_string();
}

TEST_F(ControlServerTest, TenantWithoutASecretAcceptsNoRemoteClient) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto g = connect(3, "");
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().code(), StatusCode::kPermissionDenied) << g.status().to_string();
  EXPECT_NE(g.status().message().find("no secret"), std::string::npos) << g.status().to_string();
}

TEST_F(ControlServerTest, UnknownTenantIsNotFound) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto g = connect(9, "whatever");
  EXPECT_EQ(g.status().code(), StatusCode::kNotFound) << g.status().to_string();
}

TEST_F(ControlServerTest, RequestsBeforeAuthenticationAreRefusedAndTheConnectionClosed) {
  ASSERT_NO_FATAL_FAILURE(start());
  for (MsgType t : {MsgType::kCreate, MsgType::kStart, MsgType::kDrop, MsgType::kConnect, MsgType::kAuth}) {
    RawConn c(port_);
    ASSERT_TRUE(c.connected());
    std::vector<std::byte> body;
    if (t == MsgType::kCreate) body = encode_create(create_for(0, 1));
    if (t == MsgType::kConnect) body = encode_connect({});
    if (t == MsgType::kAuth) body = encode_auth({});
    auto r = c.call(t, body);
    ASSERT_FALSE(r.is_ok()) << msg_type_name(t);
    EXPECT_TRUE(r.status().code() == StatusCode::kPermissionDenied ||
                r.status().code() == StatusCode::kFailedPrecondition)
        << msg_type_name(t) << ": " << r.status().to_string();
    EXPECT_TRUE(c.sees_eof()) << msg_type_name(t);
  }
  EXPECT_EQ(stats().members_created, 0u);
  // A HELLO whose proof never comes: the nonce is single use, a second HELLO is refused.
  RawConn c(port_);
  HelloRequest h;
  h.tenant = 1;
  ASSERT_TRUE(c.call(MsgType::kHello, encode_hello(h)).is_ok());
  EXPECT_EQ(c.call(MsgType::kHello, encode_hello(h)).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(c.sees_eof());
}

TEST_F(ControlServerTest, ATenantHeldByAnAuthenticatedClientCannotBeTaken) {
  ASSERT_NO_FATAL_FAILURE(start());
  RawConn owner(port_);
  ASSERT_TRUE(owner.authenticate(1, tenant_secret(1)).is_ok());
  ASSERT_TRUE(owner.call(MsgType::kCreate, encode_create(create_for(0, 1))).is_ok());
  // The real client with the right secret: the tenant is in use.
  auto g = connect(1);
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().code(), StatusCode::kAlreadyExists) << g.status().to_string();
  // Another authenticated session cannot start, connect or drop the owner's member.
  RawConn other(port_);
  ASSERT_TRUE(other.authenticate(1, tenant_secret(1)).is_ok());
  EXPECT_EQ(other.call(MsgType::kStart).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(other.call(MsgType::kConnect, encode_connect({})).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(other.call(MsgType::kDrop).is_ok());  // a no-op for a session without a member
  EXPECT_EQ(other.call(MsgType::kTakeover).status().code(), StatusCode::kNotSupported);
  EXPECT_EQ(stats().members_dropped, 0u);
  // Once the owner lets go, the tenant is free.
  owner.close();
  ASSERT_TRUE(eventually([&] { return stats().members_dropped == 1; }));
  auto g2 = connect(1);
  ASSERT_TRUE(g2.is_ok()) << g2.status().to_string();
}

TEST_F(ControlServerTest, NonsenseCreateIsRefusedAndTheDaemonKeepsServing) {
  ASSERT_NO_FATAL_FAILURE(start());
  RawConn c(port_);
  ASSERT_TRUE(c.authenticate(2, tenant_secret(2)).is_ok());
  std::vector<CreateRequest> bad;
  auto add = [&](auto change) {
    CreateRequest r = create_for(0, 1);
    change(r);
    bad.push_back(r);
  };
  add([](CreateRequest& r) { r.slots = 1u << 31; });  // once killed the daemon with bad_alloc
  add([](CreateRequest& r) { r.n = 1u << 30; });
  add([](CreateRequest& r) { r.pos = 5; });
  add([](CreateRequest& r) { r.mode = 200; });
  add([](CreateRequest& r) { r.rearm_batch = 0; });
  add([](CreateRequest& r) { r.staging_bytes = ~0ull; });
  add([](CreateRequest& r) { r.op_timeout_ns = 0; });
  add([](CreateRequest& r) { r.slots = 8192; });  // over max_slots (4096)
  for (const auto& r : bad) {
    auto a = c.call(MsgType::kCreate, encode_create(r));
    EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument) << a.status().to_string();
  }
  CreateRequest wrong_size = create_for(0, 1);
  wrong_size.region_size = kRegion * 2;
  EXPECT_EQ(c.call(MsgType::kCreate, encode_create(wrong_size)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(stats().members_created, 0u);
  // The same session, then a real client, still get served.
  ASSERT_TRUE(c.call(MsgType::kCreate, encode_create(create_for(0, 1))).is_ok());
  c.close();
  auto g = connect(1);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  ASSERT_TRUE(write_and_flush(**g, 42));
}

TEST_F(ControlServerTest, MalformedFramesCloseOnlyTheirConnection) {
  ASSERT_NO_FATAL_FAILURE(start());
  LogCapture logs;
  auto g = connect(1);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  ASSERT_TRUE(write_and_flush(**g, 1));
  std::vector<std::vector<std::byte>> bad;
  auto ping = frame(MsgType::kPing, {});
  auto b = ping;
  b[0] = std::byte{'X'};  // magic
  bad.push_back(b);
  b = ping;
  b[4] = std::byte{uint8_t(kControlVersion + 1)};  // version
  bad.push_back(b);
  b = ping;
  b[6] = std::byte{77};  // type
  bad.push_back(b);
  b = ping;
  b[6] = std::byte{uint8_t(kResponseBit | 1)};  // a response sent to the daemon
  bad.push_back(b);
  b = ping;
  b[11] = std::byte{0x7f};  // body_len 2 GiB
  bad.push_back(b);
  bad.push_back(frame(MsgType::kHello, std::vector<std::byte>(5)));   // short body: answered, then closed
  bad.push_back(frame(MsgType::kStart, std::vector<std::byte>(3)));   // a body where none belongs
  for (size_t i = 0; i < bad.size(); ++i) {
    RawConn c(port_);
    ASSERT_TRUE(c.send_bytes(bad[i]));
    EXPECT_TRUE(c.sees_eof()) << "malformed frame " << i << " did not close its connection";
    ASSERT_TRUE(write_and_flush(**g, 100 + i)) << "the owner's chain stopped after malformed frame " << i;
  }
  EXPECT_GE(stats().frames_rejected, bad.size());
  EXPECT_TRUE(logs.has({"event=frame_rejected", "bad magic"})) << logs.all();
  EXPECT_EQ(peek_word(1), 100 + bad.size() - 1);
}

TEST_F(ControlServerTest, LiveFuzzLeavesTheDaemonServingAndTheDataIntact) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto g = connect(1);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  ASSERT_TRUE(write_and_flush(**g, 0xfeed));
  std::mt19937_64 rng(fuzz_seed() ^ 0x11fe);
  const int kConns = 400;
  for (int i = 0; i < kConns; ++i) {
    RawConn c(port_);
    ASSERT_TRUE(c.connected());
    if (i % 2) (void)c.authenticate(2, tenant_secret(2));  // half of them mutate after authenticating
    for (int k = 0, n = int(1 + rng() % 6); k < n; ++k) {
      auto f = random_valid_request(rng);
      for (int m = 0, nm = int(rng() % 3); m < nm; ++m) mutate(&f, rng);
      if (!c.send_bytes(f)) break;
    }
    c.close();
  }
  ASSERT_TRUE(eventually([&] { return stats().connections_open == 1; })) << stats().connections_open;
  EXPECT_EQ(peek_word(1), 0xfeedu) << "a fuzzed peer changed tenant 1's data";
  ASSERT_TRUE(write_and_flush(**g, 0xbeef));
  auto g2 = connect(2);
  ASSERT_TRUE(g2.is_ok()) << g2.status().to_string();
}

TEST_F(ControlServerTest, SixHundredConnectionsLeakNoDescriptorAndNoThread) {
  ASSERT_NO_FATAL_FAILURE(start());
  {
    auto g = connect(1);  // warm up what the first client creates once (heartbeat thread, TCP links)
    ASSERT_TRUE(g.is_ok());
  }
  ASSERT_TRUE(eventually([&] { return stats().connections_open == 0; }));
  const size_t fds = open_fds(), threads = thread_count();
  for (int i = 0; i < 600; ++i) {
    RawConn c(port_);
    ASSERT_TRUE(c.connected()) << i;
    if (i % 3 == 1) {
      ASSERT_TRUE(c.authenticate(1, tenant_secret(1)).is_ok());
    } else if (i % 3 == 2) {
      ASSERT_TRUE(c.call(MsgType::kStats).is_ok());
    }
  }
  ASSERT_TRUE(eventually([&] { return stats().connections_open == 0; })) << stats().connections_open;
  // The warm-up group's data-wire links (this process holds both ends) open
  // and close on the wire's own schedule, so allow a few descriptors; a leak
  // per control connection would be 600. soak_test counts a daemon's exactly.
  EXPECT_LE(open_fds(), fds + 4);
  EXPECT_EQ(thread_count(), threads);
  EXPECT_EQ(stats().connections_accepted, 601u);
}

TEST_F(ControlServerTest, HalfOpenSessionsCostNoThreadAndAreClosedAtTheAuthTimeout) {
  ControlOptions co;
  co.auth_timeout_ns = 300'000'000;
  co.max_unauthenticated = 400;
  co.max_connections = 400;
  ASSERT_NO_FATAL_FAILURE(start(co));
  const size_t threads = thread_count();
  std::vector<std::unique_ptr<RawConn>> idle;
  for (int i = 0; i < 300; ++i) {
    idle.push_back(std::make_unique<RawConn>(port_));
    ASSERT_TRUE(idle.back()->connected());
  }
  ASSERT_TRUE(eventually([&] { return stats().connections_accepted == 300; }));
  EXPECT_EQ(thread_count(), threads) << "connections cost threads";
  const uint64_t t0 = now_ns();
  for (auto& c : idle) ASSERT_TRUE(c->sees_eof(3000));
  const double waited_ms = double(now_ns() - t0) / 1e6;
  EXPECT_EQ(stats().auth_timeouts, 300u);
  EXPECT_EQ(stats().connections_open, 0u);
  std::printf("300 half-open sessions closed %.0f ms after the last one opened (auth_timeout 300 ms)\n", waited_ms);
}

TEST_F(ControlServerTest, ConnectionsOverTheLimitsAreClosedAtAccept) {
  ControlOptions co;
  co.max_connections = 8;
  co.max_unauthenticated = 4;
  ASSERT_NO_FATAL_FAILURE(start(co));
  LogCapture logs;
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int i = 0; i < 4; ++i) conns.push_back(std::make_unique<RawConn>(port_));
  ASSERT_TRUE(eventually([&] { return stats().connections_accepted == 4; }));
  RawConn fifth(port_);  // a fifth unauthenticated one
  EXPECT_TRUE(fifth.sees_eof());
  // Authenticated ones count against max_connections only.
  for (auto& c : conns) ASSERT_TRUE(c->authenticate(2, tenant_secret(2)).is_ok());
  for (int i = 0; i < 4; ++i) {
    conns.push_back(std::make_unique<RawConn>(port_));
    ASSERT_TRUE(conns.back()->authenticate(2, tenant_secret(2)).is_ok()) << i;
  }
  RawConn ninth(port_);
  EXPECT_TRUE(ninth.sees_eof());
  EXPECT_EQ(stats().connections_refused, 2u);
  EXPECT_TRUE(logs.has({"event=connection_refused", "max_connections"})) << logs.all();
  conns.clear();
  ASSERT_TRUE(eventually([&] { return stats().connections_open == 0; }));
  auto g = connect(1);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
}

TEST_F(ControlServerTest, AClientThatDoesNotReadItsAnswersIsCut) {
  ControlOptions co;
  co.max_output_bytes = 4096;
  ASSERT_NO_FATAL_FAILURE(start(co));
  RawConn c(port_);
  int sent = 0;
  // Many STATS requests, never reading: the kernel buffers fill, then the
  // daemon's output bound; the daemon closes the connection.
  while (sent < 20000 && c.send(MsgType::kStats)) ++sent;
  EXPECT_TRUE(c.sees_eof(10000)) << "sent " << sent;
  ASSERT_TRUE(eventually([&] { return stats().connections_open == 0; }));
}

TEST_F(ControlServerTest, ASilentClientsMemberIsDroppedWithinTheClientTimeout) {
  ASSERT_NO_FATAL_FAILURE(start());  // default client_timeout: 1.5 s
  RawConn c(port_);
  ASSERT_TRUE(c.authenticate(1, tenant_secret(1)).is_ok());
  ASSERT_TRUE(c.call(MsgType::kCreate, encode_create(create_for(0, 1))).is_ok());
  const uint64_t last_sent = now_ns();  // from here on the client is silent: its host lost power
  ASSERT_TRUE(eventually([&] { return stats().client_timeouts == 1; }, 5'000'000'000));
  ASSERT_TRUE(eventually([&] { return stats().members_dropped == 1; }));
  const double ms = double(now_ns() - last_sent) / 1e6;
  std::printf("a silent client's member was dropped %.0f ms after its last frame (client_timeout 1500 ms)\n", ms);
  EXPECT_LE(ms, 2000.0);
  EXPECT_GE(ms, 1400.0);
  auto g = connect(1);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
}

TEST_F(ControlServerTest, HeartbeatsKeepAnIdleGroupAlive) {
  ControlOptions co;
  co.client_timeout_ns = 200'000'000;  // heartbeats every 50 ms
  ASSERT_NO_FATAL_FAILURE(start(co));
  auto g = connect(1);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  // Idle for at least 3 client timeouts' worth of heartbeats.
  ASSERT_TRUE(eventually([&] { return stats().pings >= 12; }, 10'000'000'000)) << stats().pings;
  EXPECT_EQ(stats().client_timeouts, 0u);
  EXPECT_EQ(stats().members_dropped, 0u);
  ASSERT_TRUE(write_and_flush(**g, 7));
}

TEST_F(ControlServerTest, StatsAnswerIsPrometheusText) {
  ASSERT_NO_FATAL_FAILURE(start());
  auto g = connect(1);
  ASSERT_TRUE(g.is_ok());
  RawConn c(port_);
  auto r = c.call(MsgType::kStats);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const std::string text(reinterpret_cast<const char*>(r->data()), r->size());
  EXPECT_NE(text.find("# TYPE hyperloop_control_auth_ok_total counter\nhyperloop_control_auth_ok_total 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("hyperloop_members 1\n"), std::string::npos) << text;
}

TEST_F(ControlServerTest, AMemberThatBreaksIsLoggedAndCounted) {
  ASSERT_NO_FATAL_FAILURE(start());
  LogCapture logs;
  // A client NIC on the host's own fabric, so the link between them can be cut.
  auto cnic = fabric_.create_nic({.name = "local-client", .ack_timeout_ns = 5'000'000});
  ASSERT_TRUE(cnic.is_ok());
  executor_->add(**cnic);
  auto o = group_options(2, kRegion, ForwardMode::kCpuForward);
  o.progress = nullptr;
  o.op_timeout_ns = 300'000'000;
  ReplicaHost* hosts[] = {host_.get()};
  auto g = Group::create(**cnic, hosts, o);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  ASSERT_TRUE(write_and_flush(**g, 5));
  // The write reaches the replica while its agent (the CPU forwarder) is
  // frozen; then the link is cut and the agent thawed: its acknowledgement to
  // the client can never be delivered, and the member breaks.
  host_->freeze();
  const uint64_t received = nic_->stats().packets_received;
  prim::Op w;
  std::byte b[8] = {};
  ASSERT_TRUE((*g)->write(w, 0, b).is_ok());
  ASSERT_TRUE(eventually([&] { return nic_->stats().packets_received >= received + 2; }));
  fabric_.set_link(**cnic, *nic_, false);
  host_->thaw();
  EXPECT_FALSE((*g)->wait(w, 5'000'000'000).is_ok() && w.status().is_ok());
  ASSERT_TRUE(eventually([&] { return logs.has({"component=member", "event=member_broken", "tenant=2"}); }))
      << "write: " << w.status().to_string() << "\n" << host_->metrics_text() << nic_->stats().packets_dropped;
  EXPECT_NE(host_->metrics_text().find("hyperloop_members_broken_total 1\n"), std::string::npos)
      << host_->metrics_text();
  g->reset();
}

// ---- the client against daemons that do not behave -----------------------------------------------
class ControlClientTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(client_.init("127.0.0.1").is_ok()); }
  Result<std::unique_ptr<Group>> connect_to(uint16_t port, uint64_t timeout_ns) {
    auto o = group_options(1, kRegion, ForwardMode::kCpuForward);
    o.control_timeout_ns = timeout_ns;
    std::vector<std::string> eps = {"127.0.0.1:" + std::to_string(port)};
    return Group::connect(client_.nic(), eps, o);
  }
  Client client_;
};

// A listening socket on loopback that never accepts; with fill_backlog its
// queue is full, so new SYNs go unanswered.
class SilentListener {
 public:
  explicit SilentListener(bool fill_backlog) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    ::listen(fd_, 0);
    socklen_t len = sizeof sa;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    if (fill_backlog) {
      for (int i = 0; i < 4; ++i) {
        const int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        ::connect(c, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
        fillers_.push_back(c);
      }
    }
  }
  ~SilentListener() {
    for (int c : fillers_) ::close(c);
    ::close(fd_);
  }
  uint16_t port() const { return port_; }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
  std::vector<int> fillers_;
};

TEST_F(ControlClientTest, ADaemonThatAcceptsButNeverAnswersTimesOut) {
  SilentListener silent(false);  // the kernel completes the handshake; nobody answers
  const uint64_t t0 = now_ns();
  auto g = connect_to(silent.port(), 300'000'000);
  const double ms = double(now_ns() - t0) / 1e6;
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().code(), StatusCode::kDeadlineExceeded) << g.status().to_string();
  EXPECT_LT(ms, 2000.0);
}

TEST_F(ControlClientTest, AnEndpointThatNeverCompletesTheHandshakeTimesOut) {
  SilentListener silent(true);
  const uint64_t t0 = now_ns();
  auto g = connect_to(silent.port(), 300'000'000);
  const double ms = double(now_ns() - t0) / 1e6;
  ASSERT_FALSE(g.is_ok());
  EXPECT_TRUE(g.status().code() == StatusCode::kDeadlineExceeded || g.status().code() == StatusCode::kUnavailable)
      << g.status().to_string();
  EXPECT_LT(ms, 2000.0);
}

// A fake daemon that answers HELLO and AUTH but cannot know the secret.
TEST_F(ControlClientTest, ADaemonThatCannotProveTheSecretIsRefused) {
  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  ASSERT_EQ(::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(lfd, 4), 0);
  socklen_t len = sizeof sa;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&sa), &len);
  std::thread fake([lfd] {
    const int fd = ::accept(lfd, nullptr, nullptr);
    if (fd < 0) return;
    auto answer = [&](MsgType t, std::vector<std::byte> payload) {
      std::byte h[kControlHeaderBytes];
      if (::recv(fd, h, sizeof h, MSG_WAITALL) != ssize_t(sizeof h)) return;
      auto hdr = decode_header(h);
      std::vector<std::byte> body(hdr ? hdr->body_len : 0);
      if (!body.empty()) ::recv(fd, body.data(), body.size(), MSG_WAITALL);
      std::vector<std::byte> out;
      encode_frame(&out, uint8_t(kResponseBit | uint8_t(t)), encode_ok(payload));
      ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
    };
    answer(MsgType::kHello, encode_nonce({}));
    AuthAnswer a;  // a proof of all zeros
    a.heartbeat_ns = 100'000'000;
    answer(MsgType::kAuth, encode_auth_answer(a));
    std::byte b[64];
    while (::recv(fd, b, sizeof b, 0) > 0) {
    }
    ::close(fd);
  });
  auto g = connect_to(ntohs(sa.sin_port), 2'000'000'000);
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().code(), StatusCode::kPermissionDenied) << g.status().to_string();
  fake.join();
  ::close(lfd);
}


// ---- the daemon process ----------------------------------------------------------------------------
class DaemonControlTest : public ::testing::Test {
 protected:
  Daemon& add_daemon(DaemonSpec spec) {
    daemons_.push_back(std::make_unique<Daemon>("d" + std::to_string(daemons_.size()), dir_.path(), std::move(spec)));
    return *daemons_.back();
  }
  RunResult run_config(const std::string& text) {
    const std::string path = dir_.file("c" + std::to_string(configs_++) + ".cfg");
    write_file(path, text);
    return run_daemon_to_exit(dir_.path(), path);
  }
  std::string line(uint32_t id, const std::string& secret_spec) {
    return "tenant " + std::to_string(id) + " 65536 " + dir_.file("t" + std::to_string(id) + ".pmem") + " " +
           secret_spec + "\n";
  }
  TempDir dir_;
  std::vector<std::unique_ptr<Daemon>> daemons_;
  Client client_;
  int configs_ = 0;
};

TEST_F(DaemonControlTest, SecretsMustBeGivenLongEnoughAndKeptPrivate) {
  ASSERT_TRUE(dir_.ok());
  auto expect_exit2 = [&](const std::string& text, const std::string& needle) {
    auto r = run_config(text);
    EXPECT_EQ(r.code, 2) << r.describe << "; stderr: " << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr lacks '" << needle << "': " << r.err;
  };
  expect_exit2("tenant 1 65536 " + dir_.file("a.pmem") + "\n", "secret=HEX|secret_file=PATH");
  expect_exit2(line(1, "secret=00112233"), "at least 16");
  expect_exit2(line(1, "secret=" + std::string(32, 'z')), "not hex");
  expect_exit2(line(1, "password=" + to_hex(tenant_secret(1))), "expected secret=HEX");
  const std::string file = dir_.file("t1.secret");
  write_file(file, to_hex(tenant_secret(1)) + "\n");
  ASSERT_EQ(::chmod(file.c_str(), 0644), 0);
  expect_exit2(line(1, "secret_file=" + file), "chmod 600");
  expect_exit2(line(1, "secret_file=" + dir_.file("missing.secret")), "cannot read secret file");
  expect_exit2("data_inflight_packets 0\n" + line(1, "secret=" + to_hex(tenant_secret(1))), "data_inflight_packets");
  expect_exit2("max_region_bytes 4096\n" + line(1, "secret=" + to_hex(tenant_secret(1))), "max_region_bytes");
  // A private secret file works, and the client proves what it holds.
  ASSERT_EQ(::chmod(file.c_str(), 0600), 0);
  DaemonSpec spec;
  spec.tenants.push_back({1, 65536, dir_.file("t1.pmem"), "secret_file=" + file});
  Daemon& d = add_daemon(spec);
  ASSERT_TRUE(d.start());
  ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
  std::vector<std::string> eps = {d.endpoint()};
  auto o = group_options(1, 65536, ForwardMode::kOffload);
  auto g = Group::connect(client_.nic(), eps, o);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string() << d.stderr_text();
  g->reset();
  o.secret = "not the secret";
  auto bad = Group::connect(client_.nic(), eps, o);
  EXPECT_EQ(bad.status().code(), StatusCode::kPermissionDenied) << bad.status().to_string();
  // The daemon logged the refusal on stderr (logfmt).
  EXPECT_TRUE(eventually([&] { return d.stderr_text().find("event=request_refused") != std::string::npos; }))
      << d.stderr_text();
}

TEST_F(DaemonControlTest, StatsFlagPrintsTheDaemonsMetrics) {
  ASSERT_TRUE(dir_.ok());
  DaemonSpec spec;
  spec.tenants.push_back({1, 65536, dir_.file("t1.pmem"), {}});
  Daemon& d = add_daemon(spec);
  ASSERT_TRUE(d.start());
  const std::string out_path = dir_.file("stats.out");
  std::string error;
  auto p = Process::spawn({HYPERLOOP_REPLICA_BIN, "--stats", d.endpoint()}, dir_.file("stats.err"), &error);
  ASSERT_TRUE(p) << error;
  std::string text, l, why;
  while (p->read_line(&l, 5000, &why)) text += l + "\n";
  ASSERT_TRUE(p->wait_exit(kExitTimeoutMs));
  EXPECT_TRUE(WIFEXITED(p->wait_status()) && WEXITSTATUS(p->wait_status()) == 0) << p->describe_exit();
  EXPECT_NE(text.find("# TYPE hyperloop_control_connections_accepted_total counter"), std::string::npos) << text;
  EXPECT_NE(text.find("hyperloop_tenants 1"), std::string::npos) << text;
  EXPECT_NE(text.find("hyperloop_wire_packets_dropped_bad_key_total 0"), std::string::npos) << text;
}

// A CONNECT towards an endpoint that never answers (a stopped daemon whose
// accept queue is full, so SYNs go unanswered) once held the host lock across
// a blocking connect and froze every tenant of the daemon.
TEST_F(DaemonControlTest, AConnectTowardsASilentEndpointFreezesNoOtherTenant) {
  ASSERT_TRUE(dir_.ok());
  DaemonSpec a_spec, b_spec;
  a_spec.tenants.push_back({1, 65536, dir_.file("a1.pmem"), {}});
  a_spec.tenants.push_back({2, 65536, dir_.file("a2.pmem"), {}});
  b_spec.tenants.push_back({3, 65536, dir_.file("b3.pmem"), {}});
  Daemon& a = add_daemon(a_spec);
  Daemon& b = add_daemon(b_spec);
  ASSERT_TRUE(a.start());
  ASSERT_TRUE(b.start());
  ASSERT_TRUE(client_.init("127.0.0.1").is_ok());
  // Addresses of real QPs on b, then b stops and its data port's queue fills.
  RawConn on_b(b.control_port());
  ASSERT_TRUE(on_b.authenticate(3, tenant_secret(3)).is_ok());
  auto created = on_b.call(MsgType::kCreate, encode_create(create_for(0, 1)));
  ASSERT_TRUE(created.is_ok()) << created.status().to_string();
  auto b_info = decode_member_info(*created);
  ASSERT_TRUE(b_info.is_ok());
  b.process()->signal(SIGSTOP);
  std::vector<int> fillers;
  for (int i = 0; i < 200; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(b.data_port());
    ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    fillers.push_back(fd);
  }
  // Tenant 1 on a runs a stream of writes in CPU-forwarding mode (the agent on the path).
  std::vector<std::string> eps = {a.endpoint()};
  auto g = Group::connect(client_.nic(), eps, group_options(1, 65536, ForwardMode::kCpuForward));
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> done{0};
  std::atomic<bool> failed{false};
  std::thread writer([&] {
    std::byte b8[8] = {};
    while (!stop.load()) {
      prim::Op op;
      if (!(*g)->write(op, 0, b8).is_ok() || !(*g)->wait(op, 5'000'000'000).is_ok() || !op.status().is_ok()) {
        failed = true;
        return;
      }
      done.fetch_add(1);
    }
  });
  ASSERT_TRUE(eventually([&] { return done.load() >= 10; }));
  // Tenant 2's client connects its member towards b's silent addresses.
  RawConn t2(a.control_port());
  ASSERT_TRUE(t2.authenticate(2, tenant_secret(2)).is_ok());
  ASSERT_TRUE(t2.call(MsgType::kCreate, encode_create(create_for(0, 1))).is_ok());
  const uint64_t before = done.load(), t0 = now_ns();
  auto connected = t2.call(MsgType::kConnect, encode_connect({b_info->in_addr, b_info->out_addr, b_info->ctrl_addr_qp}));
  const double connect_ms = double(now_ns() - t0) / 1e6;
  // While that connect is pending in the background, tenant 1 keeps going.
  const bool progressed = eventually([&] { return done.load() >= before + 200; }, 3'000'000'000);
  stop = true;
  writer.join();
  for (int fd : fillers) ::close(fd);
  b.process()->signal(SIGCONT);
  EXPECT_TRUE(connected.is_ok()) << connected.status().to_string();
  EXPECT_LT(connect_ms, 1000.0) << "CONNECT waited for the network";
  EXPECT_TRUE(progressed) << "tenant 1 made " << done.load() - before << " operations during tenant 2's CONNECT";
  EXPECT_FALSE(failed.load());
}

}  // namespace
}  // namespace hyperloop
