#include "replicated_rocksdb.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>

#include <rocksdb/write_batch.h>

namespace hyperloop::rocks {

namespace {
rocksdb::IOStatus io_error(const Status& s) {
  if (s.code() == StatusCode::kResourceExhausted) return rocksdb::IOStatus::NoSpace(s.to_string());
  return rocksdb::IOStatus::IOError("hyperloop WAL: " + s.to_string());
}
Status from_rocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::ok();
  if (s.IsCorruption()) return Status(StatusCode::kDataLoss, what + ": " + s.ToString());
  if (s.IsInvalidArgument()) return invalid_argument(what + ": " + s.ToString());
  return Status(StatusCode::kInternal, what + ": " + s.ToString());
}
// Walks a batch's records before RocksDB sees it: a batch that does not
// parse, holds a record kind a WAL of this setup never carries, or whose
// count is not its header's is refused (RocksDB would take the sequence
// numbers of a batch it then fails to apply).
class BatchCheck final : public rocksdb::WriteBatch::Handler {
 public:
  uint32_t records = 0;
  rocksdb::Status PutCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override { return count(); }
  rocksdb::Status DeleteCF(uint32_t, const rocksdb::Slice&) override { return count(); }
  rocksdb::Status SingleDeleteCF(uint32_t, const rocksdb::Slice&) override { return count(); }
  rocksdb::Status DeleteRangeCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override { return count(); }
  rocksdb::Status MergeCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override { return count(); }
  rocksdb::Status PutBlobIndexCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    return rocksdb::Status::NotSupported("blob index records");
  }
  void LogData(const rocksdb::Slice&) override {}
  rocksdb::Status MarkBeginPrepare(bool) override { return rocksdb::Status::NotSupported("2PC markers"); }
  rocksdb::Status MarkEndPrepare(const rocksdb::Slice&) override { return rocksdb::Status::NotSupported("2PC markers"); }
  rocksdb::Status MarkCommit(const rocksdb::Slice&) override { return rocksdb::Status::NotSupported("2PC markers"); }
  rocksdb::Status MarkRollback(const rocksdb::Slice&) override { return rocksdb::Status::NotSupported("2PC markers"); }
  rocksdb::Status MarkNoop(bool) override { return rocksdb::Status::OK(); }

 private:
  rocksdb::Status count() {
    ++records;
    return rocksdb::Status::OK();
  }
};

Status check_batch(rocksdb::WriteBatch& batch, const BatchHeader& h, const std::string& who) {
  BatchCheck check;
  rocksdb::Status s = batch.Iterate(&check);
  if (!s.ok()) return Status(StatusCode::kDataLoss, who + ": a malformed batch at " + std::to_string(h.sequence) + ": " + s.ToString());
  if (check.records != h.count)
    return Status(StatusCode::kDataLoss, who + ": the batch at " + std::to_string(h.sequence) + " says " +
                                             std::to_string(h.count) + " records and holds " +
                                             std::to_string(check.records));
  return Status::ok();
}

}  // namespace

Status check_options(const rocksdb::Options& o, uint64_t ring_bytes) {
  if (o.recycle_log_file_num != 0) return invalid_argument("replicated WAL: recycle_log_file_num must be 0");
  if (o.wal_compression != rocksdb::kNoCompression)
    return invalid_argument("replicated WAL: wal_compression must be kNoCompression");
  if (o.manual_wal_flush) return invalid_argument("replicated WAL: manual_wal_flush must be false");
  if (o.allow_2pc) return invalid_argument("replicated WAL: allow_2pc must be false");
  if (o.two_write_queues) return invalid_argument("replicated WAL: two_write_queues must be false");
  if (o.unordered_write) return invalid_argument("replicated WAL: unordered_write must be false");
  if (o.max_total_wal_size == 0 || o.max_total_wal_size > ring_bytes / 2)
    return invalid_argument("replicated WAL: max_total_wal_size must be set, at most half the ring (" +
                            std::to_string(ring_bytes / 2) + " bytes)");
  if (o.write_buffer_size > ring_bytes / 4)
    return invalid_argument("replicated WAL: write_buffer_size must be at most a quarter of the ring (" +
                            std::to_string(ring_bytes / 4) + " bytes)");
  return Status::ok();
}

void apply_required_options(rocksdb::Options& o, uint64_t ring_bytes) {
  o.recycle_log_file_num = 0;
  o.wal_compression = rocksdb::kNoCompression;
  o.manual_wal_flush = false;
  o.allow_2pc = false;
  o.two_write_queues = false;
  o.unordered_write = false;
  o.max_total_wal_size = ring_bytes / 4;
  o.write_buffer_size = std::min<size_t>(o.write_buffer_size, ring_bytes / 4);
}

bool is_wal_name(const std::string& path, uint64_t* number) {
  const size_t slash = path.find_last_of('/');
  const std::string_view base = std::string_view(path).substr(slash == std::string::npos ? 0 : slash + 1);
  if (base.size() <= 4 || base.substr(base.size() - 4) != ".log") return false;
  const std::string_view digits = base.substr(0, base.size() - 4);
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (ec != std::errc() || p != digits.data() + digits.size()) return false;
  if (number) *number = n;
  return true;
}

// ---- the WAL file -------------------------------------------------------------

class WalFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  WalFile(std::unique_ptr<rocksdb::FSWritableFile> t, WalFileSystem& fs, uint64_t number)
      : FSWritableFileOwnerWrapper(std::move(t)), fs_(fs), number_(number) {}
  ~WalFile() override {
    std::lock_guard lk(fs_.mu_);
    fs_.open_.erase(this);
  }

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->Append(data, o, dbg);
    if (s.ok()) buffer(data);
    return s;
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           const rocksdb::DataVerificationInfo& v, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->Append(data, o, v, dbg);
    if (s.ok()) buffer(data);
    return s;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice&, uint64_t, const rocksdb::IOOptions&,
                                     rocksdb::IODebugContext*) override {
    return rocksdb::IOStatus::NotSupported("hyperloop WAL: positioned appends (direct I/O WAL) are not supported");
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice&, uint64_t, const rocksdb::IOOptions&,
                                     const rocksdb::DataVerificationInfo&, rocksdb::IODebugContext*) override {
    return rocksdb::IOStatus::NotSupported("hyperloop WAL: positioned appends (direct I/O WAL) are not supported");
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->Flush(o, dbg);
    if (!s.ok()) return s;
    bool big;
    {
      std::lock_guard lk(mu_);
      big = buf_.size() >= fs_.flush_bytes_;
    }
    return big ? replicate(false) : s;
  }
  // The durability point: no local fsync; the ring holds the log.
  rocksdb::IOStatus Sync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override { return replicate(true); }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override { return replicate(true); }
  rocksdb::IOStatus RangeSync(uint64_t, uint64_t, const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    return rocksdb::IOStatus::OK();  // wal_bytes_per_sync: nothing to do, Sync is what counts
  }
  bool IsSyncThreadSafe() const override { return true; }
  bool use_direct_io() const override { return false; }
  rocksdb::IOStatus Close(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus r = replicate(false);
    rocksdb::IOStatus c = target()->Close(o, dbg);
    return r.ok() ? c : r;
  }

  // Replicates what is buffered. Called by RocksDB's threads and, when a
  // newer WAL file is created, by the FileSystem.
  rocksdb::IOStatus replicate(bool sync) {
    std::lock_guard lk(mu_);
    if (buf_.empty()) return rocksdb::IOStatus::OK();
    Status st = fs_.wal_->append(number_, replicated_, buf_);
    if (sync) fs_.syncs_.fetch_add(1);
    if (!st.is_ok()) {
      fs_.errors_.fetch_add(1);
      return io_error(st);
    }
    replicated_ += buf_.size();
    buf_.clear();
    return rocksdb::IOStatus::OK();
  }

 private:
  void buffer(const rocksdb::Slice& data) {
    std::lock_guard lk(mu_);
    const auto* p = reinterpret_cast<const std::byte*>(data.data());
    buf_.insert(buf_.end(), p, p + data.size());
  }
  WalFileSystem& fs_;
  const uint64_t number_;
  std::mutex mu_;
  uint64_t replicated_ = 0;
  std::vector<std::byte> buf_;
};

WalFileSystem::WalFileSystem(std::shared_ptr<rocksdb::FileSystem> base, std::shared_ptr<ReplicatedWal> wal,
                             size_t flush_bytes)
    : FileSystemWrapper(base), wal_(std::move(wal)), flush_bytes_(flush_bytes) {}

WalFileSystem::~WalFileSystem() = default;

rocksdb::IOStatus WalFileSystem::NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                                 std::unique_ptr<rocksdb::FSWritableFile>* r,
                                                 rocksdb::IODebugContext* dbg) {
  uint64_t number = 0;
  if (!is_wal_name(f, &number)) return target()->NewWritableFile(f, o, r, dbg);
  if (o.use_direct_writes)
    return rocksdb::IOStatus::NotSupported("hyperloop WAL: use_direct_io_for_flush_and_compaction on the WAL");
  // The ring holds files in order: what older WAL files still buffer goes first.
  {
    std::lock_guard lk(mu_);
    for (WalFile* w : open_) {
      rocksdb::IOStatus s = w->replicate(false);
      if (!s.ok()) return s;
    }
  }
  std::unique_ptr<rocksdb::FSWritableFile> base;
  rocksdb::IOStatus s = target()->NewWritableFile(f, o, &base, dbg);
  if (!s.ok()) return s;
  auto w = std::make_unique<WalFile>(std::move(base), *this, number);
  {
    std::lock_guard lk(mu_);
    open_.insert(w.get());
  }
  *r = std::move(w);
  return rocksdb::IOStatus::OK();
}

rocksdb::IOStatus WalFileSystem::ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                                    rocksdb::IODebugContext* dbg) {
  if (is_wal_name(f)) return rocksdb::IOStatus::NotSupported("hyperloop WAL: reopening a WAL file for appends");
  return target()->ReopenWritableFile(f, o, r, dbg);
}

rocksdb::IOStatus WalFileSystem::ReuseWritableFile(const std::string& f, const std::string& old,
                                                   const rocksdb::FileOptions& o,
                                                   std::unique_ptr<rocksdb::FSWritableFile>* r,
                                                   rocksdb::IODebugContext* dbg) {
  if (is_wal_name(f) || is_wal_name(old))
    return rocksdb::IOStatus::NotSupported("hyperloop WAL: recycled WAL files (set recycle_log_file_num=0)");
  return target()->ReuseWritableFile(f, old, o, r, dbg);
}

rocksdb::IOStatus WalFileSystem::DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                                            rocksdb::IODebugContext* dbg) {
  rocksdb::IOStatus s = target()->DeleteFile(f, o, dbg);
  uint64_t number = 0;
  if (s.ok() && is_wal_name(f, &number)) wal_->log_deleted(number);
  return s;
}

rocksdb::IOStatus WalFileSystem::RenameFile(const std::string& s, const std::string& t, const rocksdb::IOOptions& o,
                                            rocksdb::IODebugContext* dbg) {
  rocksdb::IOStatus r = target()->RenameFile(s, t, o, dbg);
  uint64_t number = 0;
  // Into the archive (WAL_ttl_seconds / WAL_size_limit_MB): obsolete for recovery.
  if (r.ok() && is_wal_name(s, &number)) wal_->log_deleted(number);
  return r;
}

// ---- the applier ---------------------------------------------------------------

Applier::Applier(ReadFn read, rocksdb::DB* db, const ApplierOptions& o)
    : reader_(std::move(read), o.ring_bytes), db_(db), o_(o), parser_([this](std::string_view rep) {
        return apply(rep);
      }) {}

Result<std::unique_ptr<Applier>> Applier::create(ReadFn read, rocksdb::DB* db, const ApplierOptions& o) {
  if (db == nullptr) return invalid_argument("Applier: no db");
  if (o.name.empty() || o.name.size() > coord::kMaxNameBytes) return invalid_argument("Applier: bad name");
  std::unique_ptr<Applier> a(new Applier(std::move(read), db, o));
  a->last_seq_ = db->GetLatestSequenceNumber();
  Result<RingHeader> h = a->reader_.header();
  if (h.is_ok())
    a->pos_ = h.value().head;
  else if (h.status().code() != StatusCode::kNotFound)
    return h.status();
  return a;
}

Status Applier::apply(std::string_view rep) {
  HL_ASSIGN_OR_RETURN(BatchHeader b, batch_header(rep));
  if (b.count == 0 || b.sequence + b.count - 1 <= last_seq_) {
    ++stats_.batches_skipped;
    return Status::ok();
  }
  if (b.sequence != last_seq_ + 1)
    return Status(StatusCode::kDataLoss, "applier " + o_.name + ": batch at sequence " + std::to_string(b.sequence) +
                                             " after " + std::to_string(last_seq_) + " (a gap)");
  rocksdb::WriteBatch batch{std::string(rep)};
  HL_RETURN_IF_ERROR(check_batch(batch, b, "applier " + o_.name));
  rocksdb::WriteOptions wo;
  wo.disableWAL = true;
  HL_RETURN_IF_ERROR(from_rocks(db_->Write(wo, &batch), "applier " + o_.name + ": batch " + std::to_string(b.sequence)));
  const uint64_t now = db_->GetLatestSequenceNumber();
  if (now != b.sequence + b.count - 1)
    return Status(StatusCode::kDataLoss, "applier " + o_.name + ": the batch at " + std::to_string(b.sequence) +
                                             " of " + std::to_string(b.count) + " left the db at " +
                                             std::to_string(now));
  last_seq_ = now;
  ++stats_.batches_applied;
  return Status::ok();
}

Result<size_t> Applier::poll() {
  if (!failed_.is_ok()) return failed_;
  Result<RingHeader> h = reader_.header();
  if (h.status().code() == StatusCode::kNotFound) return size_t{0};
  if (!h.is_ok()) return h.status();
  if (pos_ < h.value().head) {
    failed_ = Status(StatusCode::kDataLoss, "applier " + o_.name + ": the ring's head " +
                                                std::to_string(h.value().head) + " passed its position " +
                                                std::to_string(pos_) + " (its log space was reused; seed it again)");
    return failed_;
  }
  const uint64_t before = stats_.batches_applied;
  bool new_file = false;
  while (pos_ < h.value().tail) {
    Result<Chunk> c = reader_.chunk(pos_);
    if (c.status().code() == StatusCode::kNotFound) break;  // still landing here
    if (!c.is_ok()) return c.status();
    const bool was_in_file = parser_.in_file();
    const uint64_t old_first = parser_.file_first_pos();
    if (Status st = parser_.feed(c.value().header, c.value().payload); !st.is_ok()) {
      failed_ = st;
      return st;
    }
    if (was_in_file && parser_.file_first_pos() != old_first) new_file = true;
    const uint64_t span = chunk_span(c.value().header.len);
    pos_ += span;
    since_publish_ += span;
    ++stats_.chunks;
    stats_.ring_bytes += span;
  }
  stats_.dropped_tail_bytes = parser_.dropped_tail_bytes();
  if (new_file || since_publish_ >= o_.publish_bytes) HL_RETURN_IF_ERROR(publish());
  return static_cast<size_t>(stats_.batches_applied - before);
}

Status Applier::publish() {
  rocksdb::FlushOptions fo;
  fo.wait = true;
  HL_RETURN_IF_ERROR(from_rocks(db_->Flush(fo), "applier " + o_.name + ": flush"));
  // Everything applied is in SSTs now. What this host still needs from the
  // ring starts at the first chunk of the file being parsed.
  const uint64_t durable_pos = parser_.in_file() ? parser_.file_first_pos() : pos_;
  if (o_.progress) {
    HL_RETURN_IF_ERROR(o_.progress->publish_progress(o_.tenant, o_.name + ".seq", last_seq_));
    HL_RETURN_IF_ERROR(o_.progress->publish_progress(o_.tenant, o_.name + ".pos", durable_pos));
  }
  stats_.published_pos = durable_pos;
  stats_.published_seq = last_seq_;
  ++stats_.publishes;
  since_publish_ = 0;
  return Status::ok();
}

ApplierThread::ApplierThread(Applier& a, uint32_t idle_us) : a_(a) {
  t_ = std::thread([this, idle_us] {
    sched_param p{};
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &p);  // background: best effort
    while (!stop_.load(std::memory_order_acquire)) {
      Result<size_t> n = a_.poll();
      if (!n.is_ok()) {
        std::lock_guard lk(mu_);
        error_ = n.status();
        return;
      }
      if (n.value() == 0) std::this_thread::sleep_for(std::chrono::microseconds(idle_us));
    }
  });
}
ApplierThread::~ApplierThread() { stop(); }
void ApplierThread::stop() {
  stop_.store(true, std::memory_order_release);
  if (t_.joinable()) t_.join();
}
Status ApplierThread::error() const {
  std::lock_guard lk(mu_);
  return error_;
}

ReadFn host_reader(const prim::ReplicaHost& host, uint32_t tenant, uint64_t data_offset) {
  return [&host, tenant, data_offset](uint64_t off, std::span<std::byte> dst) {
    return host.peek(tenant, data_offset + off, dst);
  };
}

Result<std::unique_ptr<MappedRegion>> MappedRegion::open(const std::string& path, size_t region_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return unavailable("open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < region_bytes) {
    ::close(fd);
    return failed_precondition(path + " is smaller than the region (" + std::to_string(region_bytes) + " bytes)");
  }
  void* p = mmap(nullptr, region_bytes, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return unavailable("mmap " + path + ": " + std::strerror(errno));
  std::unique_ptr<MappedRegion> m(new MappedRegion());
  m->base_ = static_cast<const std::byte*>(p);
  m->size_ = region_bytes;
  return m;
}
MappedRegion::~MappedRegion() {
  if (base_) munmap(const_cast<std::byte*>(base_), size_);
}
ReadFn MappedRegion::reader(uint64_t data_offset) const {
  return [this, data_offset](uint64_t off, std::span<std::byte> dst) {
    if (data_offset + off > size_ || dst.size() > size_ - data_offset - off)
      return out_of_range("read past the mapped region");
    std::memcpy(dst.data(), base_ + data_offset + off, dst.size());
    return Status::ok();
  };
}

// ---- the primary -------------------------------------------------------------------

Result<std::unique_ptr<PrimaryDb>> open_primary(const std::string& dir, rocksdb::Options options,
                                              std::shared_ptr<ReplicatedWal> wal) {
  HL_RETURN_IF_ERROR(check_options(options, wal->ring_bytes()));
  std::error_code ec;
  const std::string wal_dir = options.wal_dir.empty() ? dir : options.wal_dir;
  if (std::filesystem::is_directory(wal_dir, ec)) {
    for (const auto& e : std::filesystem::directory_iterator(wal_dir, ec))
      if (is_wal_name(e.path().string())) std::filesystem::remove(e.path(), ec);
  }
  auto p = std::make_unique<PrimaryDb>();
  p->fs = std::make_shared<WalFileSystem>(rocksdb::FileSystem::Default(), wal);
  p->env = rocksdb::NewCompositeEnv(p->fs);
  options.env = p->env.get();
  rocksdb::DB* raw = nullptr;
  HL_RETURN_IF_ERROR(from_rocks(rocksdb::DB::Open(options, dir, &raw), "open " + dir));
  p->db.reset(raw);
  rocksdb::DB* db = raw;
  uint64_t last = db->GetLatestSequenceNumber();
  HL_RETURN_IF_ERROR(wal->replay([&](std::string_view rep) -> Status {
    HL_ASSIGN_OR_RETURN(BatchHeader b, batch_header(rep));
    if (b.count == 0 || b.sequence + b.count - 1 <= last) return Status::ok();
    if (b.sequence != last + 1)
      return Status(StatusCode::kDataLoss, "replay: batch at sequence " + std::to_string(b.sequence) + " after " +
                                               std::to_string(last) + " (a gap)");
    rocksdb::WriteBatch batch{std::string(rep)};
    HL_RETURN_IF_ERROR(check_batch(batch, b, "replay"));
    rocksdb::WriteOptions wo;
    wo.disableWAL = true;
    HL_RETURN_IF_ERROR(from_rocks(db->Write(wo, &batch), "replay"));
    last = db->GetLatestSequenceNumber();
    ++p->replayed;
    return Status::ok();
  }));
  HL_RETURN_IF_ERROR(from_rocks(db->Flush(rocksdb::FlushOptions()), "flush after replay"));
  wal->earlier_generations_flushed();
  return p;
}

}  // namespace hyperloop::rocks
