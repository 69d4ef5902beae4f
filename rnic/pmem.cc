// PersistentMemory: a DRAM view over a libpmem2 mapping of a file.
#include "hyperloop/pmem.h"

#include <fcntl.h>
#include <libpmem2.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <utility>
#include <vector>

namespace hyperloop {

namespace {
std::mutex g_registry_mu;
std::map<uintptr_t, PersistentMemory*> g_registry;  // view start -> object
// The files open in this process, by identity (device, inode) -> the path
// they were opened as: one owner per file, whatever path names it.
std::map<std::pair<dev_t, ino_t>, std::string> g_files;  // guarded by g_registry_mu

std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }
}  // namespace

struct PersistentMemory::Impl {
  std::string path;
  size_t size = 0;
  int fd = -1;
  pmem2_source* src = nullptr;
  pmem2_config* cfg = nullptr;
  pmem2_map* map = nullptr;
  std::byte* durable = nullptr;
  pmem2_persist_fn persist_fn = nullptr;
  std::byte* view = nullptr;
  std::pair<dev_t, ino_t> id{};
  bool registered = false;  // id is in g_files (guarded by g_registry_mu)

  mutable std::mutex mu;
  bool released = false;  // release() was called: the file is no longer ours (guarded by mu)
  std::vector<std::pair<size_t, size_t>> dirty;  // [begin, end), merged on persist

  // Sorts and merges the dirty ranges in place. REQUIRES: mu held.
  void merge_dirty() {
    if (dirty.size() < 2) return;
    std::sort(dirty.begin(), dirty.end());
    size_t w = 0;
    for (size_t i = 1; i < dirty.size(); ++i) {
      if (dirty[i].first <= dirty[w].second) {
        dirty[w].second = std::max(dirty[w].second, dirty[i].second);
      } else {
        dirty[++w] = dirty[i];
      }
    }
    dirty.resize(w + 1);
  }

  // Leaves g_files (the file may be opened again in this process).
  void unregister_file() {
    std::lock_guard<std::mutex> l(g_registry_mu);
    if (registered) g_files.erase(id);
    registered = false;
  }

  ~Impl() {
    unregister_file();
    if (map) pmem2_map_delete(&map);
    if (cfg) pmem2_config_delete(&cfg);
    if (src) pmem2_source_delete(&src);
    if (fd >= 0) close(fd);  // also drops the flock
    std::free(view);
  }
  // REQUIRES: mu held.
  void persist_locked(size_t b, size_t e) {
    if (released) return;
    std::memcpy(durable + b, view + b, e - b);
    persist_fn(durable + b, e - b);
  }
};

PersistentMemory::PersistentMemory(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PersistentMemory::~PersistentMemory() {
  std::lock_guard<std::mutex> l(g_registry_mu);
  g_registry.erase(reinterpret_cast<uintptr_t>(impl_->view));
}

Result<std::unique_ptr<PersistentMemory>> PersistentMemory::open(const std::string& path, size_t size, bool create) {
  if (size == 0) return invalid_argument("persistent memory size must be positive");
  if (size > kMaxSize)
    return invalid_argument("persistent memory of " + std::to_string(size) + " bytes for " + path + " is over the limit of " +
                            std::to_string(kMaxSize) + " bytes");
  auto im = std::make_unique<Impl>();
  im->path = path;
  im->size = size;
  // O_CLOEXEC: a child this process starts (fork + exec) must not inherit the
  // descriptor, and with it the lock.
  im->fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0644);
  if (im->fd < 0) {
    if (errno == ENOENT) return not_found("no persistent memory file " + path);
    return unavailable(sys_error("cannot open " + path));
  }
  struct stat st;
  if (fstat(im->fd, &st) != 0) return unavailable(sys_error("cannot stat " + path));
  if (!S_ISREG(st.st_mode)) return invalid_argument(path + " is not a regular file");
  // One owner per file. In this process: by identity, so that "./x", a
  // symlink or a hard link to an open file is refused like its own name.
  im->id = {st.st_dev, st.st_ino};
  {
    std::lock_guard<std::mutex> l(g_registry_mu);
    if (auto it = g_files.find(im->id); it != g_files.end())
      return Status(StatusCode::kAlreadyExists, path + " is in use by another persistent memory region of this process (" +
                                                    it->second + ": the same file)");
    g_files.emplace(im->id, path);
    im->registered = true;
  }
  // In other processes: an exclusive lock, held until the descriptor closes.
  if (flock(im->fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      return unavailable(path + " is in use by another process (it holds the file's lock)");
    return unavailable(sys_error("cannot lock " + path));
  }
  const bool fresh = st.st_size == 0;
  if (!fresh && size_t(st.st_size) != size)
    return invalid_argument(path + " holds " + std::to_string(st.st_size) + " bytes, not " + std::to_string(size));
  // Reserve every block now (a fresh file is also sized by this), so that a
  // file system too small is an error here and never a SIGBUS on a later
  // access of the mapping.
  if (const int err = posix_fallocate(im->fd, 0, off_t(size)); err != 0) {
    if (fresh) (void)ftruncate(im->fd, 0);  // leave it as found: empty
    const std::string why = "cannot reserve " + std::to_string(size) + " bytes for " + path + ": " + std::strerror(err);
    if (err == ENOSPC || err == EFBIG || err == EDQUOT) return Status(StatusCode::kResourceExhausted, why);
    return unavailable(why);
  }
  if (pmem2_source_from_fd(&im->src, im->fd) != 0 || pmem2_config_new(&im->cfg) != 0 ||
      pmem2_config_set_required_store_granularity(im->cfg, PMEM2_GRANULARITY_PAGE) != 0 ||
      pmem2_map_new(&im->map, im->cfg, im->src) != 0)
    return unavailable("cannot map " + path + " with libpmem2: " + pmem2_errormsg());
  im->durable = static_cast<std::byte*>(pmem2_map_get_address(im->map));
  im->persist_fn = pmem2_get_persist_fn(im->map);
  im->view = static_cast<std::byte*>(std::aligned_alloc(4096, (size + 4095) & ~size_t{4095}));
  if (!im->view) return Status(StatusCode::kResourceExhausted, "no memory for the view of " + path);
  std::memcpy(im->view, im->durable, size);  // what survived is what we start from
  auto pm = std::unique_ptr<PersistentMemory>(new PersistentMemory(std::move(im)));
  std::lock_guard<std::mutex> l(g_registry_mu);
  g_registry[reinterpret_cast<uintptr_t>(pm->impl_->view)] = pm.get();
  return pm;
}

std::byte* PersistentMemory::data() const { return impl_->view; }
size_t PersistentMemory::size() const { return impl_->size; }
const std::string& PersistentMemory::path() const { return impl_->path; }

void PersistentMemory::mark_dirty(size_t offset, size_t len) {
  if (len == 0 || offset >= impl_->size) return;
  len = std::min(len, impl_->size - offset);
  std::lock_guard<std::mutex> l(impl_->mu);
  auto& d = impl_->dirty;
  // Extending the last range covers the common sequential case cheaply.
  if (!d.empty() && offset >= d.back().first && offset <= d.back().second) {
    d.back().second = std::max(d.back().second, offset + len);
  } else {
    d.emplace_back(offset, offset + len);
  }
}

void PersistentMemory::persist(size_t offset, size_t len) {
  if (len == 0 || offset >= impl_->size) return;
  len = std::min(len, impl_->size - offset);
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->persist_locked(offset, offset + len);
}

size_t PersistentMemory::persist_dirty() {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->merge_dirty();
  size_t bytes = 0;
  for (const auto& [b, e] : impl_->dirty) {
    impl_->persist_locked(b, e);
    bytes += e - b;
  }
  impl_->dirty.clear();
  return bytes;
}

size_t PersistentMemory::dirty_bytes() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->merge_dirty();
  size_t bytes = 0;
  for (const auto& [b, e] : impl_->dirty) bytes += e - b;
  return bytes;
}

void PersistentMemory::power_fail() { power_fail(PowerFailOptions{}); }

size_t PersistentMemory::power_fail(const PowerFailOptions& options) {
  Impl& im = *impl_;
  std::lock_guard<std::mutex> l(im.mu);
  if (im.released) return 0;  // not ours any more: the file is someone else's
  size_t kept = 0;
  if (options.tear) {
    // Every 64-byte line whose view differs from the durable image holds
    // stores not yet made durable (marked dirty or not: a cache may write any
    // line back at any time). Per such line, drawn from the seed: lost, kept
    // whole, or written back in part, a subset of its 8-byte words. A word is
    // never torn: it is either the durable image's (old) or the view's (new).
    std::mt19937_64 rng(options.seed);
    for (size_t line = 0; line < im.size; line += kLineBytes) {
      const size_t line_end = std::min(im.size, line + kLineBytes);
      if (std::memcmp(im.view + line, im.durable + line, line_end - line) == 0) continue;
      const uint64_t fate = rng() % 3;  // 0: lost, 1: kept whole, 2: some words kept
      if (fate == 0) continue;
      bool wrote = false;
      for (size_t w = line; w < line_end; w += kWordBytes) {
        const size_t w_end = std::min(line_end, w + kWordBytes);
        if (std::memcmp(im.view + w, im.durable + w, w_end - w) == 0) continue;
        if (fate == 2 && (rng() & 1) == 0) continue;
        std::memcpy(im.durable + w, im.view + w, w_end - w);
        wrote = true;
        ++kept;
      }
      if (wrote) im.persist_fn(im.durable + line, line_end - line);
    }
  }
  std::memcpy(im.view, im.durable, im.size);
  im.dirty.clear();
  return kept;
}

void PersistentMemory::release() {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    if (impl_->released) return;
    impl_->released = true;
    impl_->dirty.clear();
    (void)flock(impl_->fd, LOCK_UN);
  }
  impl_->unregister_file();
}

PersistentMemory* PersistentMemory::containing(const void* addr, size_t len) {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  std::lock_guard<std::mutex> l(g_registry_mu);
  auto it = g_registry.upper_bound(a);
  if (it == g_registry.begin()) return nullptr;
  --it;
  PersistentMemory* pm = it->second;
  const uintptr_t base = it->first;
  return (a - base <= pm->impl_->size && len <= pm->impl_->size - (a - base)) ? pm : nullptr;
}

}  // namespace hyperloop
