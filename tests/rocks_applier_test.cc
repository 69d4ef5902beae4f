// The replicated RocksDB in one process (examples/rocksdb/replicated_rocksdb.h):
// a primary RocksDB on the WalFileSystem over a 3-replica chain, an applier
// per replica host driven by the test (deterministic: poll after drain), and
// the checks: every replica's RocksDB holds exactly the primary's data; ring
// space is reused as the appliers publish; a replica is promoted and the
// others follow it; hostile ring bytes are never applied. Real RocksDB 7.8
// WAL bytes are parsed too.
#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "replicated_rocksdb.h"

namespace hyperloop::rocks {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("hl-rocks-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

rocksdb::Options base_options(uint64_t ring_bytes) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.info_log_level = rocksdb::WARN_LEVEL;
  o.write_buffer_size = 64 << 10;  // small memtables: WAL files turn over
  apply_required_options(o, ring_bytes);
  return o;
}

std::unique_ptr<rocksdb::DB> open_plain(const std::string& dir) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.info_log_level = rocksdb::WARN_LEVEL;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, dir, &db);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return std::unique_ptr<rocksdb::DB>(db);
}

std::map<std::string, std::string> contents(rocksdb::DB* db) {
  std::map<std::string, std::string> m;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) m[it->key().ToString()] = it->value().ToString();
  EXPECT_TRUE(it->status().ok());
  return m;
}

// Seeded writes: batches of puts and deletes, each synced.
void write_batches(rocksdb::DB* db, std::mt19937_64& rng, int batches, const std::string& tag) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  for (int i = 0; i < batches; ++i) {
    rocksdb::WriteBatch b;
    const int n = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < n; ++k) {
      const std::string key = "k" + std::to_string(rng() % 500);
      if (rng() % 8 == 0)
        b.Delete(key);
      else
        b.Put(key, tag + std::to_string(i) + std::string(rng() % 300, 'v'));
    }
    ASSERT_TRUE(db->Write(wo, &b).ok());
  }
}

struct Bed {
  std::string dir;
  std::unique_ptr<coord::ConfigStore> config = coord::in_memory_config_store();
  WalOptions w;
  std::unique_ptr<EmbeddedChain> chain;
  std::unique_ptr<PrimaryDb> primary;
  std::vector<std::unique_ptr<rocksdb::DB>> dbs;  // one per replica host
  std::vector<std::unique_ptr<Applier>> appliers;

  explicit Bed(const std::string& name, uint64_t ring_bytes = 4 << 20, bool hold = true) : dir(temp_dir(name)) {
    w.ring_bytes = ring_bytes;
    w.max_chunk = 16 << 10;
    w.progress = config.get();
    w.tenant = EmbeddedChain::kTenant;
    w.full_timeout_ns = 5'000'000;
    if (hold) w.appliers = {"replica-0", "replica-1", "replica-2"};
    EmbeddedOptions eo;
    eo.wal = w;
    auto c = EmbeddedChain::create(eo);
    EXPECT_TRUE(c.is_ok()) << c.status().to_string();
    chain = std::move(c).value();
    for (uint32_t i = 0; i < 3; ++i) {
      dbs.push_back(open_plain(dir + "/replica-" + std::to_string(i)));
      appliers.push_back(make_applier(i, host_reader(chain->host(i), EmbeddedChain::kTenant, data_offset())));
    }
  }
  uint64_t data_offset() const { return txn::Store::data_offset(ring_store_options(EmbeddedChain::kTenant, w)); }
  std::unique_ptr<Applier> make_applier(uint32_t i, ReadFn read) {
    ApplierOptions ao;
    ao.name = "replica-" + std::to_string(i);
    ao.ring_bytes = w.ring_bytes;
    ao.progress = config.get();
    ao.tenant = EmbeddedChain::kTenant;
    auto a = Applier::create(std::move(read), dbs[i].get(), ao);
    EXPECT_TRUE(a.is_ok()) << a.status().to_string();
    return std::move(a).value();
  }
  void open_primary_db() {
    auto p = open_primary(dir + "/primary", base_options(w.ring_bytes), chain->wal());
    ASSERT_TRUE(p.is_ok()) << p.status().to_string();
    primary = std::move(p).value();
  }
  // Everything committed has landed on every replica; each applier takes it.
  void catch_up() {
    ASSERT_TRUE(chain->store().drain().is_ok());
    for (auto& a : appliers) {
      auto n = a->poll();
      ASSERT_TRUE(n.is_ok()) << n.status().to_string();
    }
  }
};

TEST(RocksApplierTest, EveryReplicaHoldsThePrimarysData) {
  Bed bed("same");
  bed.open_primary_db();
  std::mt19937_64 rng(1);
  for (int round = 0; round < 6; ++round) {
    write_batches(bed.primary->db.get(), rng, 150, "r" + std::to_string(round) + ".");
    bed.catch_up();
  }
  const auto want = contents(bed.primary->db.get());
  ASSERT_FALSE(want.empty());
  for (uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(contents(bed.dbs[i].get()), want) << "replica " << i;
    EXPECT_EQ(bed.appliers[i]->applied_sequence(), bed.primary->db->GetLatestSequenceNumber());
  }
  EXPECT_EQ(bed.primary->fs->errors(), 0u);
  EXPECT_GT(bed.primary->fs->syncs(), 800u);
}

TEST(RocksApplierTest, RingSpaceIsReusedAsAppliersPublish) {
  Bed bed("reuse", 256 << 10);  // a 256 KiB ring; ~2 MiB of WAL go through it
  bed.open_primary_db();
  std::mt19937_64 rng(2);
  for (int round = 0; round < 100; ++round) {
    write_batches(bed.primary->db.get(), rng, 40, "x");
    bed.catch_up();
  }
  EXPECT_GT(bed.chain->wal()->stats().bytes, 4 * (256u << 10));
  EXPECT_GT(bed.chain->wal()->stats().head_moves, 3u);
  const auto want = contents(bed.primary->db.get());
  for (uint32_t i = 0; i < 3; ++i) EXPECT_EQ(contents(bed.dbs[i].get()), want) << "replica " << i;
  // Markers were published for every applier, and never beyond the ring's tail.
  auto marks = bed.config->progress(EmbeddedChain::kTenant);
  ASSERT_TRUE(marks.is_ok());
  EXPECT_EQ(marks.value().size(), 6u);
}

TEST(RocksApplierTest, AStalledApplierHoldsTheRingAndTheWriteFailsCleanly) {
  Bed bed("stall", 256 << 10);
  bed.open_primary_db();
  std::mt19937_64 rng(3);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status last;
  uint64_t acked = 0;
  // Nobody polls the appliers: the ring fills and a write fails (no space),
  // after the primary waited full_timeout_ns.
  for (int i = 0; i < 5000 && last.ok(); ++i) {
    last = bed.primary->db->Put(wo, "k" + std::to_string(i), std::string(200, 'a'));
    if (last.ok()) acked = i + 1;
  }
  ASSERT_FALSE(last.ok());
  EXPECT_NE(last.ToString().find("WAL ring full"), std::string::npos) << last.ToString();
  EXPECT_NE(last.ToString().find("replica-0"), std::string::npos) << last.ToString();
  // Every acknowledged write is on every replica: the appliers now catch up.
  bed.catch_up();
  for (uint32_t i = 0; i < 3; ++i) {
    std::string v;
    for (uint64_t k = 0; k < acked; ++k)
      ASSERT_TRUE(bed.dbs[i]->Get(rocksdb::ReadOptions(), "k" + std::to_string(k), &v).ok()) << i << " " << k;
  }
}

TEST(RocksApplierTest, APromotedReplicaTakesOverAndTheOthersFollowIt) {
  Bed bed("promote");
  bed.open_primary_db();
  std::mt19937_64 rng(4);
  write_batches(bed.primary->db.get(), rng, 300, "old.");
  // Replica 1 lags: it has applied only part of the ring when the primary goes.
  ASSERT_TRUE(bed.chain->store().drain().is_ok());
  ASSERT_TRUE(bed.appliers[0]->poll().is_ok());
  ASSERT_TRUE(bed.appliers[2]->poll().is_ok());
  const auto before = contents(bed.primary->db.get());
  const uint64_t seq = bed.primary->db->GetLatestSequenceNumber();
  bed.primary.reset();  // the old primary is gone (closed here; killed in the process test)
  // Promote replica 1: its applier stops, its db becomes the primary's.
  bed.appliers[1].reset();
  bed.dbs[1].reset();
  auto wal2 = ReplicatedWal::open(bed.chain->store(), bed.w);
  ASSERT_TRUE(wal2.is_ok()) << wal2.status().to_string();
  std::shared_ptr<ReplicatedWal> w2 = std::move(wal2).value();
  auto p = open_primary(bed.dir + "/replica-1", base_options(bed.w.ring_bytes), w2);
  ASSERT_TRUE(p.is_ok()) << p.status().to_string();
  EXPECT_GT(p.value()->replayed, 0u);
  EXPECT_EQ(p.value()->db->GetLatestSequenceNumber(), seq);
  EXPECT_EQ(contents(p.value()->db.get()), before);
  // It serves writes; replicas 0 and 2 follow the new generation.
  write_batches(p.value()->db.get(), rng, 200, "new.");
  ASSERT_TRUE(bed.chain->store().drain().is_ok());
  const auto want = contents(p.value()->db.get());
  for (uint32_t i : {0u, 2u}) {
    ASSERT_TRUE(bed.appliers[i]->poll().is_ok());
    EXPECT_EQ(contents(bed.dbs[i].get()), want) << "replica " << i;
  }
}

TEST(RocksApplierTest, HostileRingBytesAreNeverApplied) {
  Bed bed("hostile");
  bed.open_primary_db();
  std::mt19937_64 rng(5);
  write_batches(bed.primary->db.get(), rng, 50, "a");
  ASSERT_TRUE(bed.chain->store().drain().is_ok());
  const auto want = contents(bed.primary->db.get());
  // Replica 0's reader sees a corrupted copy: one bit flipped per read at a
  // seeded place in the ring. The applier applies only what checks out.
  std::mt19937_64 flip(6);
  ReadFn clean = host_reader(bed.chain->host(0), EmbeddedChain::kTenant, bed.data_offset());
  bool corrupt = true;
  ReadFn dirty = [&](uint64_t off, std::span<std::byte> dst) {
    HL_RETURN_IF_ERROR(clean(off, dst));
    if (corrupt && off >= kRingHeaderBytes && !dst.empty()) dst[flip() % dst.size()] ^= std::byte{0x10};
    return Status::ok();
  };
  bed.dbs[0].reset();
  bed.appliers[0].reset();
  fs::remove_all(bed.dir + "/replica-0");
  bed.dbs[0] = open_plain(bed.dir + "/replica-0");
  bed.appliers[0] = bed.make_applier(0, dirty);
  for (int i = 0; i < 20; ++i) {
    auto n = bed.appliers[0]->poll();
    ASSERT_TRUE(n.is_ok()) << n.status().to_string();
    EXPECT_EQ(n.value(), 0u);
  }
  EXPECT_TRUE(contents(bed.dbs[0].get()).empty());
  corrupt = false;
  ASSERT_TRUE(bed.appliers[0]->poll().is_ok());
  EXPECT_EQ(contents(bed.dbs[0].get()), want);
}

TEST(RocksApplierTest, AForgedBatchOrAGapStopsTheApplierWithDataLoss) {
  // A ring in memory holding chunks a hostile writer made with valid crcs.
  const uint64_t ring = 1 << 20;
  std::vector<std::byte> area(kRingHeaderBytes + ring);
  auto put = [&](uint64_t off, std::span<const std::byte> b) { std::memcpy(area.data() + off, b.data(), b.size()); };
  put(0, encode_ring_header(ring));
  ReadFn read = [&](uint64_t off, std::span<std::byte> dst) {
    std::memcpy(dst.data(), area.data() + off, dst.size());
    return Status::ok();
  };
  auto wal_record = [](const std::string& rep) {
    std::vector<std::byte> r(7 + rep.size());
    r[4] = std::byte(rep.size() & 0xff);
    r[5] = std::byte(rep.size() >> 8);
    r[6] = std::byte{1};
    std::memcpy(r.data() + 7, rep.data(), rep.size());
    return r;
  };
  for (int kind = 0; kind < 2; ++kind) {
    const std::string dir = temp_dir("forged" + std::to_string(kind));
    auto db = open_plain(dir);
    ApplierOptions ao;
    ao.name = "victim";
    ao.ring_bytes = ring;
    std::string rep;
    if (kind == 0) {  // sequence 1, count 1, then a record of an unknown type byte
      rep = std::string("\x01\0\0\0\0\0\0\0\x01\0\0\0\x7f\x03key\x03val", 21);
    } else {  // a well-formed Put at sequence 9: a gap after 0
      rocksdb::WriteBatch b;
      b.Put("key", "val");
      rep = b.Data();
      rep[0] = 9;
    }
    const auto rec = wal_record(rep);
    const auto c = encode_chunk({0, 0, 1, 1, 0}, rec);
    put(kRingHeaderBytes, c);
    const uint64_t tail = chunk_span(rec.size());
    std::memcpy(area.data() + kTailOffset, &tail, 8);
    auto a = Applier::create(read, db.get(), ao);
    ASSERT_TRUE(a.is_ok());
    auto n = a.value()->poll();
    EXPECT_EQ(n.status().code(), StatusCode::kDataLoss) << kind << ": " << n.status().to_string();
    EXPECT_EQ(a.value()->poll().status().code(), StatusCode::kDataLoss);  // final
    EXPECT_TRUE(contents(db.get()).empty());
    EXPECT_EQ(db->GetLatestSequenceNumber(), 0u);
  }
}

TEST(RocksApplierTest, RealRocksDbWalBytesParse) {
  const std::string dir = temp_dir("realwal");
  rocksdb::Options o;
  o.create_if_missing = true;
  o.info_log_level = rocksdb::WARN_LEVEL;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(o, dir, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  std::vector<std::pair<uint64_t, uint32_t>> want;
  rocksdb::WriteOptions wo;
  wo.sync = true;
  std::mt19937_64 rng(8);
  for (int i = 0; i < 200; ++i) {
    rocksdb::WriteBatch b;
    const uint32_t n = 1 + rng() % 3;
    for (uint32_t k = 0; k < n; ++k) b.Put("k" + std::to_string(i * 10 + k), std::string(rng() % 40000, 'x'));
    want.emplace_back(db->GetLatestSequenceNumber() + 1, n);
    ASSERT_TRUE(db->Write(wo, &b).ok());
  }
  db.reset();
  std::vector<std::pair<uint64_t, uint32_t>> got;
  for (const auto& e : fs::directory_iterator(dir)) {
    uint64_t number = 0;
    if (!is_wal_name(e.path().string(), &number) || fs::file_size(e.path()) == 0) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    WalParser p([&](std::string_view rep) {
      auto h = batch_header(rep);
      if (!h.is_ok()) return h.status();
      got.emplace_back(h.value().sequence, h.value().count);
      return Status::ok();
    });
    uint64_t off = 0;
    while (off < bytes.size()) {
      const size_t n = std::min<size_t>(bytes.size() - off, 1 + rng() % 50000);
      ASSERT_TRUE(p.feed({static_cast<uint32_t>(n), off, 1, number, off},
                         std::as_bytes(std::span(bytes)).subspan(off, n))
                      .is_ok());
      off += n;
    }
  }
  EXPECT_EQ(got, want);
}

TEST(RocksApplierTest, OptionsTheRingCannotServeAreRefused) {
  const uint64_t ring = 4 << 20;
  rocksdb::Options ok = base_options(ring);
  EXPECT_TRUE(check_options(ok, ring).is_ok());
  auto bad = [&](auto mutate) {
    rocksdb::Options o = base_options(ring);
    mutate(o);
    return check_options(o, ring).code();
  };
  EXPECT_EQ(bad([](rocksdb::Options& o) { o.recycle_log_file_num = 2; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](rocksdb::Options& o) { o.wal_compression = rocksdb::kZSTD; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](rocksdb::Options& o) { o.manual_wal_flush = true; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](rocksdb::Options& o) { o.two_write_queues = true; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](rocksdb::Options& o) { o.max_total_wal_size = 0; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([&](rocksdb::Options& o) { o.max_total_wal_size = ring; }), StatusCode::kInvalidArgument);
  EXPECT_TRUE(is_wal_name("/a/b/000012.log"));
  EXPECT_FALSE(is_wal_name("/a/b/MANIFEST-000012"));
  EXPECT_FALSE(is_wal_name("/a/b/x12.log"));
  EXPECT_FALSE(is_wal_name(".log"));
  EXPECT_EQ(parse_embedded_options("replicas=9").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_embedded_options("mode=fast").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_embedded_options("appliers=1").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_embedded_options("ring_mb").status().code(), StatusCode::kInvalidArgument);
  auto o = parse_embedded_options("replicas=2,mode=cpu,ring_mb=8,chunk_kb=64");
  ASSERT_TRUE(o.is_ok());
  EXPECT_EQ(o.value().replicas, 2u);
  EXPECT_EQ(o.value().mode, prim::ForwardMode::kCpuForward);
  EXPECT_EQ(o.value().wal.ring_bytes, 8u << 20);
}

}  // namespace
}  // namespace hyperloop::rocks
