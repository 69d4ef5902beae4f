// The WAL ring (examples/rocksdb/wal_ring.h, replicated_wal.h): the chunk
// format against hostile bytes, RocksDB's WAL framing parsed from any split,
// and the writer over a 3-replica chain (formats, wraps, reuses space only as
// the rules allow, replays across generations). Deterministic: seeded.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "replicated_rocksdb.h"
#include "wal_ring.h"

namespace hyperloop::rocks {
namespace {

WalOptions ring_of(uint64_t ring_bytes) {
  WalOptions w;
  w.ring_bytes = ring_bytes;
  return w;
}

std::vector<std::byte> bytes_of(std::string_view s) {
  std::vector<std::byte> b(s.size());
  std::memcpy(b.data(), s.data(), s.size());
  return b;
}

// A ring in memory: what a replica's copy of the data area holds.
struct MemRing {
  uint64_t ring_bytes;
  std::vector<std::byte> area;
  explicit MemRing(uint64_t rb) : ring_bytes(rb), area(kRingHeaderBytes + rb) {
    auto h = encode_ring_header(rb);
    std::memcpy(area.data(), h.data(), h.size());
  }
  void put(uint64_t pos, std::span<const std::byte> b) {
    size_t done = 0;
    for (const Piece& p : ring_pieces(ring_bytes, pos, b.size())) {
      std::memcpy(area.data() + p.offset, b.data() + done, p.len);
      done += p.len;
    }
  }
  void set_word(size_t off, uint64_t v) { std::memcpy(area.data() + off, &v, 8); }
  ReadFn reader() {
    return [this](uint64_t off, std::span<std::byte> dst) {
      if (off + dst.size() > area.size()) return out_of_range("past the area");
      std::memcpy(dst.data(), area.data() + off, dst.size());
      return Status::ok();
    };
  }
};

TEST(WalRingFormat, ChunkRoundTripsAndWraps) {
  MemRing r(kMinRingBytes);
  const auto payload = bytes_of(std::string(1000, 'x') + "tail");
  // A chunk that wraps the ring's end.
  const uint64_t pos = 3 * kMinRingBytes - 520;
  const auto c = encode_chunk({0, pos, 7, 12, 4096}, payload);
  EXPECT_EQ(c.size(), chunk_span(payload.size()));
  EXPECT_EQ(ring_pieces(r.ring_bytes, pos, c.size()).size(), 2u);
  r.put(pos, c);
  RingReader rd(r.reader(), r.ring_bytes);
  auto got = rd.chunk(pos);
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(got.value().header.generation, 7u);
  EXPECT_EQ(got.value().header.log_number, 12u);
  EXPECT_EQ(got.value().header.file_offset, 4096u);
  EXPECT_EQ(got.value().payload, payload);
  // The same bytes one lap earlier or later are not this chunk.
  EXPECT_EQ(rd.chunk(pos - r.ring_bytes).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(rd.chunk(pos + r.ring_bytes).status().code(), StatusCode::kNotFound);
}

TEST(WalRingFormat, EveryFlippedByteIsRefused) {
  MemRing r(kMinRingBytes);
  const auto payload = bytes_of("a WAL record's bytes, 37 of them....");
  const auto c = encode_chunk({0, 64, 1, 5, 0}, payload);
  for (size_t i = 0; i < c.size(); ++i) {
    for (uint8_t bit : {0x01, 0x80}) {
      auto bad = c;
      bad[i] ^= std::byte{bit};
      r.put(64, bad);
      RingReader rd(r.reader(), r.ring_bytes);
      auto got = rd.chunk(64);
      // Padding bytes are outside the checksum; a flip there still yields the payload intact.
      if (got.is_ok()) {
        EXPECT_GE(i, kChunkHeaderBytes + payload.size()) << "byte " << i;
        EXPECT_EQ(got.value().payload, payload);
      } else {
        EXPECT_EQ(got.status().code(), StatusCode::kNotFound) << "byte " << i;
      }
    }
  }
}

TEST(WalRingFormat, RandomBytesAreNeverAChunk) {
  std::mt19937_64 rng(20261203);
  MemRing r(kMinRingBytes);
  RingReader rd(r.reader(), r.ring_bytes);
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    // Random garbage, and well-formed headers with random lengths and a wrong crc.
    std::vector<std::byte> junk(64 + rng() % 512);
    for (auto& b : junk) b = std::byte(rng());
    if (i % 2) {
      const uint32_t magic = kChunkMagic, len = static_cast<uint32_t>(rng());
      const uint64_t pos = 128;
      std::memcpy(junk.data(), &magic, 4);
      std::memcpy(junk.data() + 4, &len, 4);
      std::memcpy(junk.data() + 8, &pos, 8);
      std::memset(junk.data() + 44, 0, 4);
    }
    r.put(128, junk);
    accepted += rd.chunk(128).is_ok();
  }
  EXPECT_EQ(accepted, 0);
}

TEST(WalRingFormat, HeaderChecks) {
  std::vector<std::byte> z(40);
  EXPECT_EQ(decode_ring_header(z, 0).status().code(), StatusCode::kNotFound);
  auto h = encode_ring_header(1 << 20);
  EXPECT_TRUE(decode_ring_header(h, 1 << 20).is_ok());
  EXPECT_EQ(decode_ring_header(h, 2 << 20).status().code(), StatusCode::kFailedPrecondition);
  auto bad = h;
  bad[0] ^= std::byte{1};
  EXPECT_EQ(decode_ring_header(bad, 0).status().code(), StatusCode::kDataLoss);
  auto inverted = h;
  const uint64_t head = 64, tail = 8;
  std::memcpy(inverted.data() + kHeadOffset, &head, 8);
  std::memcpy(inverted.data() + kTailOffset, &tail, 8);
  EXPECT_EQ(decode_ring_header(inverted, 0).status().code(), StatusCode::kDataLoss);
  auto over = h;
  const uint64_t far = 3u << 20;
  std::memcpy(over.data() + kTailOffset, &far, 8);
  EXPECT_EQ(decode_ring_header(over, 0).status().code(), StatusCode::kDataLoss);
  auto tiny = encode_ring_header(4096);
  EXPECT_EQ(decode_ring_header(tiny, 0).status().code(), StatusCode::kDataLoss);
}

// RocksDB's framing (db/log_writer.cc's rules), written here independently:
// a fragment per block, a new block when fewer than 7 bytes are left (zero
// filled), Full/First/Middle/Last.
std::vector<std::byte> wal_encode(const std::vector<std::string>& records) {
  std::vector<std::byte> out;
  size_t block_off = 0;
  for (const std::string& rec : records) {
    size_t left = rec.size(), at = 0;
    bool first = true;
    do {
      const size_t leftover = kWalBlock - block_off;
      if (leftover < kWalHeader) {
        out.insert(out.end(), leftover, std::byte{0});
        block_off = 0;
      }
      const size_t avail = kWalBlock - block_off - kWalHeader;
      const size_t frag = std::min(avail, left);
      const bool end = frag == left;
      const uint8_t type = first && end ? 1 : first ? 2 : end ? 4 : 3;
      const std::byte hdr[7] = {std::byte{0xde}, std::byte{0xad}, std::byte{0xbe}, std::byte{0xef},
                                std::byte(frag & 0xff), std::byte(frag >> 8), std::byte{type}};
      out.insert(out.end(), hdr, hdr + 7);
      const auto* p = reinterpret_cast<const std::byte*>(rec.data()) + at;
      out.insert(out.end(), p, p + frag);
      block_off += kWalHeader + frag;
      at += frag;
      left -= frag;
      first = false;
    } while (left > 0);
  }
  return out;
}

TEST(WalParserTest, AnySplitGivesTheRecords) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 40; ++round) {
    std::vector<std::string> recs;
    const int n = 1 + static_cast<int>(rng() % 60);
    for (int i = 0; i < n; ++i) {
      const size_t len = rng() % 4 == 0 ? rng() % 90000 : rng() % 300;
      std::string s(len, '\0');
      for (auto& c : s) c = static_cast<char>(rng());
      recs.push_back(std::move(s));
    }
    const auto wal = wal_encode(recs);
    std::vector<std::string> got;
    WalParser p([&](std::string_view r) {
      got.emplace_back(r);
      return Status::ok();
    });
    uint64_t off = 0, pos = 0;
    while (off < wal.size()) {
      const size_t n = std::min<size_t>(wal.size() - off, 1 + rng() % 70000);
      ASSERT_TRUE(p.feed({static_cast<uint32_t>(n), pos, 1, 9, off}, std::span(wal).subspan(off, n)).is_ok());
      off += n;
      pos += chunk_span(n);
    }
    ASSERT_EQ(got, recs) << "round " << round;
    EXPECT_EQ(p.dropped_tail_bytes(), 0u);
  }
}

TEST(WalParserTest, GapsAndBadStartsAreDataLoss) {
  const auto wal = wal_encode({"one", "two", "three"});
  int seen = 0;
  WalParser p([&](std::string_view) {
    ++seen;
    return Status::ok();
  });
  ASSERT_TRUE(p.feed({10, 0, 1, 3, 0}, std::span(wal).first(10)).is_ok());
  // The next chunk of the same file skips bytes.
  EXPECT_EQ(p.feed({5, 64, 1, 3, 12}, std::span(wal).subspan(12, 5)).code(), StatusCode::kDataLoss);
  // A new file that does not start at offset 0.
  WalParser q([&](std::string_view) { return Status::ok(); });
  EXPECT_EQ(q.feed({3, 0, 1, 4, 100}, std::span(wal).first(3)).code(), StatusCode::kDataLoss);
}

TEST(WalParserTest, ANewFileDropsATornTail) {
  const auto a = wal_encode({"complete", std::string(500, 'z')});
  const auto b = wal_encode({"next file"});
  std::vector<std::string> got;
  WalParser p([&](std::string_view r) {
    got.emplace_back(r);
    return Status::ok();
  });
  // File 3 ends in the middle of its second record (its writer died).
  ASSERT_TRUE(p.feed({static_cast<uint32_t>(a.size() - 100), 0, 1, 3, 0}, std::span(a).first(a.size() - 100)).is_ok());
  ASSERT_TRUE(p.feed({static_cast<uint32_t>(b.size()), 4096, 2, 1, 0}, b).is_ok());
  EXPECT_EQ(got, (std::vector<std::string>{"complete", "next file"}));
  EXPECT_GT(p.dropped_tail_bytes(), 0u);
  EXPECT_EQ(p.file_generation(), 2u);
  EXPECT_EQ(p.file_first_pos(), 4096u);
}

TEST(WalParserTest, RefusedTypesAndCrossingRecords) {
  for (uint8_t type : {5, 6, 7, 8, 9, 10, 200}) {
    std::vector<std::byte> rec = {std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0},
                                  std::byte{1}, std::byte{0}, std::byte{type}, std::byte{'x'}};
    WalParser p([](std::string_view) { return Status::ok(); });
    EXPECT_EQ(p.feed({8, 0, 1, 1, 0}, rec).code(), StatusCode::kDataLoss) << int(type);
  }
  // A length that runs past the block.
  std::vector<std::byte> rec = {std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0},
                                std::byte{0xff}, std::byte{0xff}, std::byte{1}};
  WalParser p([](std::string_view) { return Status::ok(); });
  EXPECT_EQ(p.feed({7, 0, 1, 1, 0}, rec).code(), StatusCode::kDataLoss);
  // Middle/Last without First.
  for (uint8_t type : {3, 4}) {
    std::vector<std::byte> r = {std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0},
                                std::byte{1}, std::byte{0}, std::byte{type}, std::byte{'x'}};
    WalParser q([](std::string_view) { return Status::ok(); });
    EXPECT_EQ(q.feed({8, 0, 1, 1, 0}, r).code(), StatusCode::kDataLoss);
  }
}

// ---- the writer over a chain -------------------------------------------------

struct Chain {
  std::unique_ptr<EmbeddedChain> c;
  explicit Chain(const WalOptions& w, uint32_t replicas = 3) {
    EmbeddedOptions o;
    o.replicas = replicas;
    o.wal = w;
    auto r = EmbeddedChain::create(o);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    if (r.is_ok()) c = std::move(r).value();
  }
  // Every replica's copy of the data area, after the chain applied everything.
  std::vector<std::vector<std::byte>> copies(uint64_t ring_bytes) {
    EXPECT_TRUE(c->store().drain().is_ok());
    std::vector<std::vector<std::byte>> out;
    const uint64_t off = txn::Store::data_offset(ring_store_options(EmbeddedChain::kTenant, ring_of(ring_bytes)));
    for (uint32_t i = 0; i < c->replicas(); ++i) {
      std::vector<std::byte> b(kRingHeaderBytes + ring_bytes);
      EXPECT_TRUE(c->host(i).peek(EmbeddedChain::kTenant, off, b).is_ok());
      out.push_back(std::move(b));
    }
    return out;
  }
};

TEST(ReplicatedWalTest, AppendsReplayAndEveryReplicaHoldsTheSameRing) {
  WalOptions w;
  w.ring_bytes = 1 << 20;
  w.max_chunk = 4096;
  Chain ch(w);
  ASSERT_TRUE(ch.c);
  auto& wal = *ch.c->wal();
  std::vector<std::string> recs;
  std::mt19937_64 rng(11);
  for (int i = 0; i < 50; ++i) recs.push_back(std::string(1 + rng() % 9000, static_cast<char>('a' + i % 26)));
  const auto file = wal_encode(recs);
  uint64_t off = 0;
  while (off < file.size()) {  // appends of random sizes, split into 4 KiB chunks
    const size_t n = std::min<size_t>(file.size() - off, 1 + rng() % 20000);
    ASSERT_TRUE(wal.append(5, off, std::span(file).subspan(off, n)).is_ok());
    off += n;
  }
  EXPECT_GT(wal.stats().chunks, wal.stats().appends);
  std::vector<std::string> got;
  ASSERT_TRUE(wal.replay([&](std::string_view r) {
                   got.emplace_back(r);
                   return Status::ok();
                 }).is_ok());
  EXPECT_EQ(got, recs);
  const auto copies = ch.copies(w.ring_bytes);
  for (size_t i = 1; i < copies.size(); ++i) EXPECT_EQ(copies[i], copies[0]) << "replica " << i;
  // And a reader on a replica's own copy finds the same chunks.
  RingReader rd(host_reader(ch.c->host(2), EmbeddedChain::kTenant,
                            txn::Store::data_offset(ring_store_options(EmbeddedChain::kTenant, w))),
                w.ring_bytes);
  auto h = rd.header();
  ASSERT_TRUE(h.is_ok());
  EXPECT_EQ(h.value().tail, wal.tail());
  EXPECT_EQ(h.value().generation, wal.generation());
}

TEST(ReplicatedWalTest, OutOfOrderAppendsAreRefused) {
  Chain ch(ring_of(1 << 20));
  ASSERT_TRUE(ch.c);
  auto& wal = *ch.c->wal();
  const auto b = bytes_of("0123456789");
  EXPECT_EQ(wal.append(5, 3, b).code(), StatusCode::kInvalidArgument);  // a file starts at 0
  ASSERT_TRUE(wal.append(5, 0, b).is_ok());
  EXPECT_EQ(wal.append(5, 20, b).code(), StatusCode::kInvalidArgument);  // a gap
  ASSERT_TRUE(wal.append(6, 0, b).is_ok());
  EXPECT_EQ(wal.append(5, 10, b).code(), StatusCode::kInvalidArgument);  // an older file after a newer one
  EXPECT_EQ(wal.append(4, 0, b).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(wal.stats().chunks, 2u);
}

TEST(ReplicatedWalTest, SpaceIsReusedOnlyPastDeletedFilesAndPublishedAppliers) {
  auto config = coord::in_memory_config_store();
  WalOptions w;
  w.ring_bytes = kMinRingBytes;  // 64 KiB: a few files fill it
  w.max_chunk = 4096;
  w.appliers = {"r0", "r1"};
  w.progress = config.get();
  w.tenant = EmbeddedChain::kTenant;
  w.full_timeout_ns = 2'000'000;
  Chain ch(w);
  ASSERT_TRUE(ch.c);
  auto& wal = *ch.c->wal();
  const std::vector<std::byte> block(3000, std::byte{7});
  // File 1: 5 chunks; file 2: 5 chunks. ~30 KiB.
  for (uint64_t f = 1; f <= 2; ++f)
    for (uint64_t i = 0; i < 5; ++i) ASSERT_TRUE(wal.append(f, i * 3000, block).is_ok());
  // The primary deleted file 1, but the appliers have published nothing.
  wal.log_deleted(1);
  EXPECT_EQ(wal.reclaim().value(), 0u);
  // One applier is past file 1; the other is not: still nothing.
  const uint64_t file2 = 5 * chunk_span(3000);
  ASSERT_TRUE(config->publish_progress(w.tenant, "r0.pos", file2).is_ok());
  EXPECT_EQ(wal.reclaim().value(), 0u);
  ASSERT_TRUE(config->publish_progress(w.tenant, "r1.pos", file2).is_ok());
  EXPECT_EQ(wal.reclaim().value(), file2);
  // File 2 not deleted: the head stays at its first chunk however far the appliers are.
  ASSERT_TRUE(config->publish_progress(w.tenant, "r0.pos", wal.tail()).is_ok());
  ASSERT_TRUE(config->publish_progress(w.tenant, "r1.pos", wal.tail()).is_ok());
  EXPECT_EQ(wal.reclaim().value(), file2);
  // Fill the ring: file 3 until no room; the error names what holds it back.
  Status st;
  uint64_t off = 0;
  for (int i = 0; i < 40 && st.is_ok(); ++i, off += 3000) st = wal.append(3, off, block);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("WAL ring full"), std::string::npos) << st.message();
  EXPECT_LE(wal.tail() - wal.head(), w.ring_bytes);
  // Every chunk from the head to the tail is still intact on every replica.
  std::vector<std::string> recs;
  const auto copies = ch.copies(w.ring_bytes);
  for (size_t i = 1; i < copies.size(); ++i) EXPECT_EQ(copies[i], copies[0]);
  const uint64_t off0 = txn::Store::data_offset(ring_store_options(EmbeddedChain::kTenant, w));
  RingReader rd(host_reader(ch.c->host(0), EmbeddedChain::kTenant, off0), w.ring_bytes);
  for (uint64_t pos = wal.head(); pos < wal.tail();) {
    auto c = rd.chunk(pos);
    ASSERT_TRUE(c.is_ok()) << pos << ": " << c.status().to_string();
    pos += chunk_span(c.value().header.len);
  }
}

TEST(ReplicatedWalTest, ReopenStartsANewGenerationAndKeepsTheFiles) {
  WalOptions w = ring_of(1 << 20);
  Chain ch(w);
  ASSERT_TRUE(ch.c);
  const auto f = wal_encode({"r1", "r2"});
  ASSERT_TRUE(ch.c->wal()->append(8, 0, f).is_ok());
  const uint64_t g1 = ch.c->wal()->generation();
  auto again = ReplicatedWal::open(ch.c->store(), w);
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_EQ(again.value()->generation(), g1 + 1);
  EXPECT_EQ(again.value()->tail(), ch.c->wal()->tail());
  // The new writer's file 8 is another file than the old writer's file 8.
  const auto f2 = wal_encode({"r3"});
  ASSERT_TRUE(again.value()->append(8, 0, f2).is_ok());
  std::vector<std::string> got;
  ASSERT_TRUE(again.value()->replay([&](std::string_view r) {
                                got.emplace_back(r);
                                return Status::ok();
                              }).is_ok());
  EXPECT_EQ(got, (std::vector<std::string>{"r1", "r2", "r3"}));
  // Another size on the same store is refused.
  WalOptions smaller = ring_of(1 << 19);
  smaller.max_chunk = 4096;
  EXPECT_EQ(ReplicatedWal::open(ch.c->store(), smaller).status().code(),
            StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace hyperloop::rocks
