// The TCP wire between soft fabrics, end to end on 127.0.0.1: forged packets,
// a peer that stops reading, an endpoint that never answers, malformed
// frames and connection limits, and memory over many operations.
#include <gtest/gtest.h>

#include <random>

#if defined(__SANITIZE_ADDRESS__)
// From the ASan runtime (GCC ships no header for it).
extern "C" size_t __sanitizer_get_current_allocated_bytes();
#define HL_WIRE_ASAN 1
#endif

#include "wire_codec.h"
#include "wire_test_util.h"

namespace hyperloop::wire_test {
namespace {

using soft::FabricOptions;

uint64_t env_or(const char* name, uint64_t dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : dflt;
}

std::vector<std::byte> bytes_of(uint8_t v, size_t n) { return std::vector<std::byte>(n, std::byte(v)); }

// The attacker: a local process that connects to R1's data port, says HELLO
// and sends frames it builds itself.
struct Attacker {
  explicit Attacker(uint16_t port) : fd(dial(port)) {
    std::byte h[soft::wire::kHelloBytes];
    soft::wire::encode_hello(0xbad, h);
    if (fd < 0 || !send_all(fd, h, sizeof h)) throw std::runtime_error("attacker: connect");
  }
  ~Attacker() {
    if (fd >= 0) close(fd);
  }
  // An empty WRITE claiming to come from (src_nic, src_qpn).
  bool forge_write(uint64_t dst_uid, uint32_t dst_qpn, uint64_t src_nic, uint32_t src_qpn, uint32_t psn, uint64_t key) {
    soft::wire::PacketHeader h;
    h.type = soft::PacketType::kWrite;
    h.opcode = mlx5::kOpRdmaWrite;
    h.dst_uid = dst_uid;
    h.dst_qpn = dst_qpn;
    h.src_nic = src_nic;
    h.src_qpn = src_qpn;
    h.psn = psn & soft::kPsnMask;
    h.key = key;
    std::byte b[soft::wire::kPacketHeaderBytes];
    soft::wire::encode_packet_header(h, b);
    return send_all(fd, b, sizeof b);
  }
  int fd;
};

uint64_t key_of(const rn::QueuePair& q) {
  soft::PeerAddress a;
  if (!soft::decode_address(q.address(), &a)) throw std::runtime_error("address");
  return a.key;
}

// Owner (client) -> R1 over TCP, with an attacker on R1's port.
class WireForgeryTest : public ::testing::Test {
 protected:
  soft::SingleThreadExecutor ex;
  Host owner, r1;
  std::unique_ptr<rn::QueuePair> qo, q1;
  void SetUp() override {
    ex.add(*owner.nic);
    ex.add(*r1.nic);
    qo = owner.qp();
    q1 = r1.qp();
    connect_rts(*qo, *q1);
  }
  void TearDown() override {
    qo.reset();
    q1.reset();
  }
};

// The attack, with keys as the attacker must guess them: every
// forged WRITE is dropped and counted, and the owner's next write+flush lands.
TEST_F(WireForgeryTest, ForgedWritesWithGuessedKeysAreDroppedAndTheOwnersWriteLands) {
  LogCapture logs;
  std::mt19937_64 guess(42);
  Attacker a(r1.port);
  constexpr int kForged = 256;
  // Before the owner has sent anything (PSNs 0..), and with every PSN a
  // guess could hit.
  for (int i = 0; i < kForged; ++i)
    ASSERT_TRUE(a.forge_write(r1.nic->uid(), q1->qpn(), owner.nic->uid(), qo->qpn(), uint32_t(i), guess()));
  ASSERT_TRUE(eventually([&] { return r1.fabric.wire_stats().packets_dropped_bad_key >= kForged; }));
  const auto v1 = bytes_of(0x11, 64);
  ASSERT_EQ(write_and_flush(owner, *qo, r1, 4096, v1), rn::WcStatus::kSuccess);
  EXPECT_TRUE(std::equal(v1.begin(), v1.end(), r1.mem.begin() + 4096)) << "the owner's write was lost";
  // And again in the middle of a stream, around the PSNs now expected.
  for (int i = 0; i < kForged; ++i)
    ASSERT_TRUE(a.forge_write(r1.nic->uid(), q1->qpn(), owner.nic->uid(), qo->qpn(), uint32_t(i % 8), guess()));
  ASSERT_TRUE(eventually([&] { return r1.fabric.wire_stats().packets_dropped_bad_key >= 2 * kForged; }));
  const auto v2 = bytes_of(0x22, 64);
  ASSERT_EQ(write_and_flush(owner, *qo, r1, 4096, v2), rn::WcStatus::kSuccess);
  EXPECT_TRUE(std::equal(v2.begin(), v2.end(), r1.mem.begin() + 4096)) << "the owner's write was lost";
  EXPECT_EQ(r1.nic->stats().packets_dropped_bad_key, uint64_t(2 * kForged));
  EXPECT_TRUE(eventually([&] { return logs.count("packets_refused") >= 1; }));
}

// A leaked key is not enough either once the owner has talked: the QP is
// bound to the owner's connection.
TEST_F(WireForgeryTest, AForgedWriteWithTheRealKeyOnAnotherConnectionIsDropped) {
  const auto v1 = bytes_of(0x31, 64);
  ASSERT_EQ(write_and_flush(owner, *qo, r1, 0, v1), rn::WcStatus::kSuccess);  // PSNs 0, 1
  Attacker a(r1.port);
  for (uint32_t psn = 0; psn < 16; ++psn)
    ASSERT_TRUE(a.forge_write(r1.nic->uid(), q1->qpn(), owner.nic->uid(), qo->qpn(), psn, key_of(*qo)));
  ASSERT_TRUE(eventually([&] { return r1.fabric.wire_stats().packets_dropped_wrong_connection >= 16; }));
  const auto v2 = bytes_of(0x32, 64);
  ASSERT_EQ(write_and_flush(owner, *qo, r1, 0, v2), rn::WcStatus::kSuccess);
  EXPECT_TRUE(std::equal(v2.begin(), v2.end(), r1.mem.begin()));
}

// What the issue reported, reproduced: a forged empty WRITE that R1 accepts
// (here the attacker is given the real key, and speaks before the owner and
// then hangs up, so no binding stands in its way; before keys existed, any
// local process could do this with guessed numbers) advances R1's PSN, and
// the owner's next write+flush reports success while R1 keeps its old
// bytes. The key and the binding above are what prevent it.
TEST_F(WireForgeryTest, ReproducesTheSilentLossWhenTheKeyIsKnown) {
  {
    Attacker a(r1.port);
    ASSERT_TRUE(a.forge_write(r1.nic->uid(), q1->qpn(), owner.nic->uid(), qo->qpn(), 0, key_of(*qo)));
    ASSERT_TRUE(eventually([&] { return r1.nic->stats().packets_received >= 1; }));
  }
  ASSERT_TRUE(eventually([&] { return r1.fabric.wire_stats().connections_closed >= 1; }));
  const auto v = bytes_of(0x44, 64);
  ASSERT_EQ(write_and_flush(owner, *qo, r1, 0, v), rn::WcStatus::kSuccess);
  EXPECT_FALSE(std::equal(v.begin(), v.end(), r1.mem.begin())) << "expected the documented loss";
}

// A peer that accepts but never reads: sends to it never block the executor,
// another QP pair on the same executor keeps completing, and the stalled
// link is cut after the stall timeout.
TEST(WireStall, APeerThatNeverReadsDoesNotFreezeTheExecutor) {
  LogCapture logs;
  FabricOptions fo;
  fo.send_stall_timeout_ns = 500'000'000;
  fo.max_send_queue_bytes = 4 << 20;
  fo.max_message_bytes = 1 << 20;
  soft::SingleThreadExecutor ex;
  soft::NicOptions slow_retry;  // retransmitting 16 MiB every 20 ms would only test CPU speed
  slow_retry.ack_timeout_ns = 100'000'000;
  Host a(fo, slow_retry, 4 << 20), b(fo);
  ex.add(*a.nic);
  ex.add(*b.nic);
  RawListener sink(16, 4096);
  auto stuck_cq = must(a.nic->create_cq(rn::CqAttr{1024}), "cq");  // its errors apart from the other pair's
  auto stuck = a.qp(7, stuck_cq.get());
  soft::PeerAddress fake{0xfeed, 0x1234, 1, 0x5555, htonl(INADDR_LOOPBACK), sink.port};
  must(stuck->connect(soft::encode_address(fake)), "connect to the silent peer");
  must(stuck->ready_to_send(), "rts");
  // Fill every path towards it (socket buffers, then the 4 MiB queue): 16
  // WRITEs of 1 MiB, then their retransmissions. They gather from the
  // second MiB of a's memory: write_and_flush below rewrites the first bytes
  // while these are still being retransmitted (a data race under TSan).
  const rn::Sge big = a.mr->sge(1 << 20, 1 << 20);
  for (int i = 0; i < 16; ++i) {
    rn::SendWr wr;
    wr.opcode = rn::WrOpcode::kRdmaWrite;
    wr.sg = std::span<const rn::Sge>(&big, 1);
    wr.remote_addr = 0x1000;
    wr.rkey = 1;
    must(stuck->post_send(wr), "post");
  }
  auto qa = a.qp(), qb = b.qp();
  connect_rts(*qa, *qb);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) {
    const auto v = bytes_of(uint8_t(i), 256);
    const auto s = std::chrono::steady_clock::now();
    ASSERT_EQ(write_and_flush(a, *qa, b, 0, v, 5s), rn::WcStatus::kSuccess) << "operation " << i;
    ASSERT_LT(std::chrono::steady_clock::now() - s, 2s) << "operation " << i << " was held up";
    ASSERT_TRUE(std::equal(v.begin(), v.end(), b.mem.begin()));
  }
  EXPECT_TRUE(eventually([&] { return a.fabric.wire_stats().packets_dropped_queue_full > 0; }));
  EXPECT_TRUE(eventually([&] { return a.fabric.wire_stats().links_cut >= 1; }, 10s));
  EXPECT_TRUE(eventually([&] { return logs.count("link_cut", "send stalled") >= 1; }));
  // The stuck QP fails by its retry timeout, as with a dead peer.
  rn::WorkCompletion wc = next_wc(*stuck_cq, 10s);
  EXPECT_EQ(wc.status, rn::WcStatus::kRetryExceeded);
  stuck.reset();
  qa.reset();
  qb.reset();
  (void)t0;
}

// connect() towards an endpoint whose SYNs go unanswered (a listening socket
// with backlog 0 whose queue is full and never accepted) returns at once;
// the QP errors within its timeouts; other QPs are unaffected.
TEST(WireConnect, AnEndpointThatNeverAnswersDoesNotBlockConnect) {
  LogCapture logs;
  FabricOptions fo;
  fo.connect_timeout_ns = 300'000'000;
  soft::SingleThreadExecutor ex;
  Host a(fo), b(fo);
  ex.add(*a.nic);
  ex.add(*b.nic);
  RawListener black_hole(0);
  // Fill its accept queue: connects until one does not complete.
  std::vector<int> fillers;
  for (int i = 0; i < 8; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(black_hole.port);
    ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    fillers.push_back(fd);
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, 200) == 0) break;  // this SYN went unanswered: the queue is full
  }
  auto q_cq = must(a.nic->create_cq(rn::CqAttr{1024}), "cq");
  auto q = a.qp(3, q_cq.get());
  soft::PeerAddress fake{0xfeed, 0x1234, 1, 0x5555, htonl(INADDR_LOOPBACK), black_hole.port};
  const auto s = std::chrono::steady_clock::now();
  ASSERT_TRUE(q->connect(soft::encode_address(fake)).is_ok());
  EXPECT_LT(std::chrono::steady_clock::now() - s, 100ms) << "connect waited for the network";
  must(q->ready_to_send(), "rts");
  rn::SendWr wr;
  wr.opcode = rn::WrOpcode::kRdmaWrite;
  wr.flags = rn::kSendSignaled;
  wr.remote_addr = 0x1000;
  wr.rkey = 1;
  must(q->post_send(wr), "post");
  // Meanwhile another pair works.
  auto qa = a.qp(), qb = b.qp();
  connect_rts(*qa, *qb);
  for (int i = 0; i < 20; ++i) {
    const auto v = bytes_of(uint8_t(i + 1), 128);
    ASSERT_EQ(write_and_flush(a, *qa, b, 0, v), rn::WcStatus::kSuccess);
  }
  // 3 retries x 20 ms ack timeout, far below this deadline.
  rn::WorkCompletion wc = next_wc(*q_cq, 5s);
  EXPECT_EQ(wc.status, rn::WcStatus::kRetryExceeded);
  EXPECT_TRUE(eventually([&] { return a.fabric.wire_stats().connect_failures >= 1; }, 5s));
  q.reset();
  EXPECT_TRUE(eventually([&] { return logs.count("connect_failed", "connect timeout") >= 1; }));
  for (int fd : fillers) close(fd);
}

// Malformed frames, bad versions and connection floods: the offending
// connection is closed and logged; everyone else keeps working.
TEST(WireHostile, BadFramesAndTooManyConnectionsCloseOnlyTheOffender) {
  LogCapture logs;
  FabricOptions fo;
  fo.max_inbound_connections = 3;  // the owner's link and two more
  fo.max_message_bytes = 1 << 16;
  soft::SingleThreadExecutor ex;
  Host a, b(fo);
  ex.add(*a.nic);
  ex.add(*b.nic);
  auto qa = a.qp(), qb = b.qp();
  connect_rts(*qa, *qb);
  ASSERT_EQ(write_and_flush(a, *qa, b, 0, bytes_of(1, 64)), rn::WcStatus::kSuccess);

  std::byte hello[soft::wire::kHelloBytes];
  soft::wire::encode_hello(0xbad, hello);
  soft::wire::PacketHeader h;
  h.type = soft::PacketType::kAck;
  std::byte pkt[soft::wire::kPacketHeaderBytes];
  auto attempt = [&](const char* what, std::vector<std::byte> bytes, const char* reason) {
    SCOPED_TRACE(what);
    const uint64_t before = b.fabric.wire_stats().frames_rejected;
    const int fd = dial(b.port);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, bytes.data(), bytes.size()));
    EXPECT_TRUE(closed_by_peer(fd));
    close(fd);
    EXPECT_TRUE(eventually([&] { return b.fabric.wire_stats().frames_rejected == before + 1; }));
    EXPECT_TRUE(eventually([&] { return logs.count("frame_rejected", reason) >= 1; }));
    ASSERT_EQ(write_and_flush(a, *qa, b, 0, bytes_of(2, 64)), rn::WcStatus::kSuccess);
  };
  auto cat = [](std::initializer_list<std::span<const std::byte>> parts) {
    std::vector<std::byte> v;
    for (auto p : parts) v.insert(v.end(), p.begin(), p.end());
    return v;
  };
  std::vector<std::byte> junk(64, std::byte(0x5a));
  attempt("bad magic", junk, "bad magic");
  std::vector<std::byte> v2(hello, hello + sizeof hello);
  v2[4] = std::byte(2);
  attempt("bad version", v2, "unsupported version");
  soft::wire::encode_packet_header(h, pkt);
  attempt("packet before HELLO", cat({pkt}), "first frame is not a HELLO");
  std::vector<std::byte> bad_type(pkt, pkt + sizeof pkt);
  bad_type[12] = std::byte(99);
  attempt("bad type", cat({hello, bad_type}), "unknown packet type");
  soft::wire::PacketHeader big;
  big.type = soft::PacketType::kWrite;
  big.opcode = mlx5::kOpRdmaWrite;
  big.payload_len = (1 << 16) + 1;
  std::byte bigh[soft::wire::kPacketHeaderBytes];
  soft::wire::encode_packet_header(big, bigh);
  attempt("payload over the limit", cat({hello, bigh}), "maximum message size");
  attempt("two HELLOs", cat({hello, hello}), "HELLO after the first frame");

  // Connection flood: two more fit, the next is refused.
  const int c1 = dial(b.port), c2 = dial(b.port);
  ASSERT_TRUE(eventually([&] { return b.fabric.wire_stats().connections_open == 3; }));
  const int c3 = dial(b.port);
  EXPECT_TRUE(closed_by_peer(c3));
  EXPECT_TRUE(eventually([&] { return b.fabric.wire_stats().connections_refused >= 1; }));
  EXPECT_TRUE(eventually([&] { return logs.count("connection_refused", "max_inbound_connections") >= 1; }));
  ASSERT_EQ(write_and_flush(a, *qa, b, 0, bytes_of(3, 64)), rn::WcStatus::kSuccess);
  close(c1);
  close(c2);
  close(c3);
  EXPECT_TRUE(eventually([&] { return b.fabric.wire_stats().connections_open == 1; }));
  EXPECT_GE(logs.count("connection_accepted"), 1u);
  EXPECT_GE(logs.count("connection_closed"), 1u);
}

// A connection that never says HELLO gives its slot back.
TEST(WireHostile, ASilentConnectionIsClosed) {
  FabricOptions fo;
  fo.connect_timeout_ns = 200'000'000;
  Host b(fo);
  const int fd = dial(b.port);
  EXPECT_TRUE(closed_by_peer(fd, 5s));
  close(fd);
}

// RSS of the receiving process stays flat over many operations across TCP
// (before the pool cap it grew by about a packet per operation).
TEST(WireMemory, RssIsFlatOverManyOperations) {
  const uint64_t ops = env_or("HYPERLOOP_WIRE_MEMORY_OPS", 200'000);
  constexpr uint64_t kBoundKib = 16 * 1024;  // 16 MiB
  soft::SingleThreadExecutor ex;
  // A memory test, not a timing one: a transport timer long enough that a
  // loaded CI machine (ASan, a parallel test run) cannot starve the executor
  // past 8 retries (at the default 20 ms it did, once: a retry-exceeded CQE).
  soft::NicOptions patient;
  patient.ack_timeout_ns = 250'000'000;
  Host a({}, patient), b({}, patient);
  ex.add(*a.nic);
  ex.add(*b.nic);
  auto qa = a.qp(), qb = b.qp();
  connect_rts(*qa, *qb);
  const rn::Sge s = a.mr->sge(0, 64);
  constexpr int kBatch = 64;  // WRITEs per signaled completion
  auto run = [&](uint64_t n) {
    for (uint64_t done = 0; done < n; done += kBatch) {
      for (int i = 0; i < kBatch; ++i) {
        rn::SendWr wr;
        wr.wr_id = done + i;
        wr.opcode = rn::WrOpcode::kRdmaWrite;
        wr.flags = i == kBatch - 1 ? uint32_t(rn::kSendSignaled) : 0u;
        wr.sg = std::span<const rn::Sge>(&s, 1);
        wr.remote_addr = b.mr->remote_addr(64 * (i % 64));
        wr.rkey = b.mr->rkey();
        must(qa->post_send(wr), "post");
      }
      const rn::WorkCompletion wc = next_wc(*a.cq);
      ASSERT_EQ(wc.status, rn::WcStatus::kSuccess);
    }
  };
  run(std::min<uint64_t>(ops / 10, 20'000));  // warm up: pools and buffers reach their steady size
  // Under ASan freed memory sits in a quarantine, so RSS grows by design;
  // there the live heap (allocated and not freed) is what is measured.
#ifdef HL_WIRE_ASAN
  auto measure = [] { return uint64_t(__sanitizer_get_current_allocated_bytes() / 1024); };
#else
  auto measure = [] { return rss_kib(); };
#endif
  const uint64_t before = measure();
  run(ops);
  const uint64_t after = measure();
  RecordProperty("rss_before_kib", int(before));
  RecordProperty("rss_after_kib", int(after));
  std::printf("wire memory: %llu operations, %s %llu KiB -> %llu KiB\n", (unsigned long long)ops,
#ifdef HL_WIRE_ASAN
              "live heap",
#else
              "VmRSS",
#endif
              (unsigned long long)before, (unsigned long long)after);
  EXPECT_LT(after, before + kBoundKib) << "RSS grew by " << (after - before) << " KiB";
}

}  // namespace
}  // namespace hyperloop::wire_test
