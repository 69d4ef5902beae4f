// PersistentMemory (hyperloop/pmem.h) on its own: a DRAM view over a libpmem2
// mapping of a file. What persist()/persist_dirty() made durable survives a
// power failure and a restart (destroy + open again); everything else is lost.
// Errors follow the header: kInvalidArgument, kNotFound, kUnavailable,
// kAlreadyExists, kResourceExhausted. One owner per file: by device and inode
// in this process (./, symlinks, hard links, two ReplicaHosts), by a lock
// against other processes (a forked child), space reserved up front (a small
// tmpfs mounted here, and RLIMIT_FSIZE). Torn power failures: over many
// seeds, persisted bytes survive, unflushed words are old or new, whole.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "fault_test_util.h"
#include "small_fs.h"
#include "hyperloop/pmem.h"
#include "hyperloop/primitives.h"
#include "hyperloop/soft_rnic.h"
#include "soft_test_util.h"

namespace hyperloop::fault_test {
namespace {

using soft_test::AllBytesAre;
using soft_test::BytesEqual;
using soft_test::fill_pattern;
using soft_test::IsOk;
using soft_test::must;
using soft_test::pattern;

constexpr size_t kSize = 64 << 10;

std::unique_ptr<PersistentMemory> open_pm(const std::string& path, size_t size = kSize, bool create = true) {
  return must(PersistentMemory::open(path, size, create), "PersistentMemory::open");
}

// The file's bytes as the file system has them (the durable image).
std::vector<std::byte> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(c.size());
  std::memcpy(b.data(), c.data(), c.size());
  return b;
}

::testing::AssertionResult HasCode(const Status& s, StatusCode code) {
  if (s.code() == code) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << s.to_string() << ", want " << status_code_name(code);
}
template <typename T>
::testing::AssertionResult HasCode(const Result<T>& r, StatusCode code) {
  if (r.is_ok()) return ::testing::AssertionFailure() << "got OK, want " << status_code_name(code);
  return HasCode(r.status(), code);
}

class PmemTest : public ::testing::Test {
 protected:
  TempDir dir_;
  std::string path_ = dir_.file("region.pmem");
};

TEST_F(PmemTest, OpenCreatesAZeroFilledFileOfTheGivenSize) {
  auto pm = open_pm(path_);
  EXPECT_EQ(pm->size(), kSize);
  EXPECT_EQ(pm->path(), path_);
  ASSERT_NE(pm->data(), nullptr);
  EXPECT_TRUE(AllBytesAre(pm->data(), kSize, 0));
  EXPECT_EQ(pm->dirty_bytes(), 0u);
  EXPECT_EQ(std::filesystem::file_size(path_), kSize);
  EXPECT_TRUE(AllBytesAre(file_bytes(path_).data(), kSize, 0));
}

TEST_F(PmemTest, ReopenFindsExactlyWhatWasPersisted) {
  const auto kept = pattern(1000, 7);
  const auto lost = pattern(500, 8);
  {
    auto pm = open_pm(path_);
    std::memcpy(pm->data() + 4096, kept.data(), kept.size());
    pm->persist(4096, kept.size());
    std::memcpy(pm->data() + 10000, lost.data(), lost.size());  // never persisted
  }
  // The file itself holds the persisted bytes and nothing else.
  const auto f = file_bytes(path_);
  ASSERT_EQ(f.size(), kSize);
  EXPECT_TRUE(BytesEqual(f.data() + 4096, kept.data(), kept.size()));
  EXPECT_TRUE(AllBytesAre(f.data() + 10000, lost.size(), 0));

  auto pm = open_pm(path_, kSize, /*create=*/false);
  std::vector<std::byte> want(kSize);
  std::memcpy(want.data() + 4096, kept.data(), kept.size());
  EXPECT_TRUE(BytesEqual(pm->data(), want.data(), kSize));
  EXPECT_EQ(pm->dirty_bytes(), 0u);
}

TEST_F(PmemTest, UnpersistedWritesAreLostOnPowerFail) {
  auto pm = open_pm(path_);
  const auto kept = pattern(256, 1);
  std::memcpy(pm->data(), kept.data(), kept.size());
  pm->persist(0, kept.size());
  const auto lost = pattern(512, 2);
  std::memcpy(pm->data() + 128, lost.data(), lost.size());  // overwrites half the persisted bytes
  pm->mark_dirty(128, lost.size());                            // marked, not persisted: still lost
  std::memcpy(pm->data() + 30000, lost.data(), lost.size());  // not even marked
  EXPECT_TRUE(BytesEqual(pm->data() + 128, lost.data(), lost.size())) << "writes are visible before the fault";
  pm->power_fail();
  std::vector<std::byte> want(kSize);
  std::memcpy(want.data(), kept.data(), kept.size());
  EXPECT_TRUE(BytesEqual(pm->data(), want.data(), kSize));
  EXPECT_EQ(pm->dirty_bytes(), 0u);
  EXPECT_EQ(pm->persist_dirty(), 0u) << "dirty marks must not survive a power failure";
}

TEST_F(PmemTest, UnpersistedWritesAreLostOnRestart) {
  {
    auto pm = open_pm(path_);
    fill_pattern(pm->data(), kSize, 3);
    pm->mark_dirty(0, kSize);  // marked dirty but never persisted
  }
  auto pm = open_pm(path_);
  EXPECT_TRUE(AllBytesAre(pm->data(), kSize, 0));
}

TEST_F(PmemTest, PersistDirtyPersistsMergedOverlappingAndAdjacentRangesAndReturnsTheirBytes) {
  auto pm = open_pm(path_);
  fill_pattern(pm->data(), kSize, 4);  // the whole view changes; only marked ranges become durable
  pm->mark_dirty(100, 50);             // [100, 150)
  pm->mark_dirty(120, 60);             // overlaps:  [100, 180)
  pm->mark_dirty(180, 20);             // adjacent:  [100, 200)
  pm->mark_dirty(5000, 8);             // separate:  [5000, 5008)
  pm->mark_dirty(90, 15);              // overlaps from below: [90, 200)
  pm->mark_dirty(kSize - 4, 100);      // clamped to the end: [kSize-4, kSize)
  EXPECT_EQ(pm->persist_dirty(), 110u + 8u + 4u);
  EXPECT_EQ(pm->dirty_bytes(), 0u);
  EXPECT_EQ(pm->persist_dirty(), 0u) << "nothing left to persist";

  pm->power_fail();
  const auto p = pattern(kSize, 4);
  std::vector<std::byte> want(kSize);
  for (auto [b, e] : {std::pair<size_t, size_t>{90, 200}, {5000, 5008}, {kSize - 4, kSize}})
    std::memcpy(want.data() + b, p.data() + b, e - b);
  EXPECT_TRUE(BytesEqual(pm->data(), want.data(), kSize));
}

TEST_F(PmemTest, PowerFailAfterPersistDirtyKeepsThePersistedBytesAlsoAcrossARestart) {
  const auto a = pattern(300, 5), b = pattern(40, 6);
  {
    auto pm = open_pm(path_);
    std::memcpy(pm->data() + 1000, a.data(), a.size());
    pm->mark_dirty(1000, a.size());
    std::memcpy(pm->data() + 2000, b.data(), b.size());
    pm->mark_dirty(2000, b.size());
    EXPECT_EQ(pm->persist_dirty(), a.size() + b.size());
    pm->power_fail();
    EXPECT_TRUE(BytesEqual(pm->data() + 1000, a.data(), a.size()));
    EXPECT_TRUE(BytesEqual(pm->data() + 2000, b.data(), b.size()));
  }
  auto pm = open_pm(path_, kSize, false);
  EXPECT_TRUE(BytesEqual(pm->data() + 1000, a.data(), a.size()));
  EXPECT_TRUE(BytesEqual(pm->data() + 2000, b.data(), b.size()));
  EXPECT_TRUE(AllBytesAre(pm->data(), 1000, 0));
}

// The header: dirty_bytes() is "bytes marked dirty and not yet persisted".
// A byte marked twice is one dirty byte.
TEST_F(PmemTest, DirtyBytesCountsEachMarkedByteOnce) {
  auto pm = open_pm(path_);
  pm->mark_dirty(0, 10);
  EXPECT_EQ(pm->dirty_bytes(), 10u);
  pm->mark_dirty(100, 10);
  EXPECT_EQ(pm->dirty_bytes(), 20u);
  pm->mark_dirty(5, 10);  // [5, 15): 5 new bytes
  EXPECT_EQ(pm->dirty_bytes(), 25u);
  pm->mark_dirty(100, 10);  // all already dirty
  EXPECT_EQ(pm->dirty_bytes(), 25u);
  EXPECT_EQ(pm->persist_dirty(), 25u);
  EXPECT_EQ(pm->dirty_bytes(), 0u);
}

TEST_F(PmemTest, PersistOutsideOrAcrossTheEndIsClampedAndHarmless) {
  auto pm = open_pm(path_);
  fill_pattern(pm->data(), kSize, 9);
  pm->persist(kSize - 8, 64);  // clamped to 8 bytes
  pm->persist(kSize, 8);       // nothing
  pm->persist(kSize + 100, 8);
  pm->mark_dirty(kSize, 8);
  EXPECT_EQ(pm->dirty_bytes(), 0u);
  pm->power_fail();
  const auto p = pattern(kSize, 9);
  EXPECT_TRUE(BytesEqual(pm->data() + kSize - 8, p.data() + kSize - 8, 8));
  EXPECT_TRUE(AllBytesAre(pm->data(), kSize - 8, 0));
}

TEST_F(PmemTest, OpeningAFileOfAnotherSizeIsInvalidArgument) {
  { auto pm = open_pm(path_); }
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, kSize * 2), StatusCode::kInvalidArgument));
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, kSize - 8), StatusCode::kInvalidArgument));
  EXPECT_EQ(std::filesystem::file_size(path_), kSize) << "a refused open must not resize the file";
  EXPECT_TRUE(IsOk(PersistentMemory::open(path_, kSize)));
}

TEST_F(PmemTest, AMissingFileWithoutCreateIsNotFoundAndNotCreated) {
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, kSize, /*create=*/false), StatusCode::kNotFound));
  EXPECT_FALSE(std::filesystem::exists(path_));
}

TEST_F(PmemTest, SizeZeroIsInvalidArgument) {
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, 0), StatusCode::kInvalidArgument));
  { auto pm = open_pm(path_); }
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, 0, false), StatusCode::kInvalidArgument));
}

// A directory no file can be created in: a read-only directory when not root;
// as root (permissions do not stop root) sysfs, which refuses new files.
TEST_F(PmemTest, AnUnwritableDirectoryIsUnavailableWithTheSystemsReason) {
  std::string dir = dir_.file("ro");
  if (::geteuid() == 0) {
    struct stat st;
    if (::stat("/sys", &st) != 0 || !S_ISDIR(st.st_mode)) GTEST_SKIP() << "root and no /sys";
    dir = "/sys";
  } else {
    std::filesystem::create_directories(dir);
    std::filesystem::permissions(dir, std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
  }
  const auto r = PersistentMemory::open(dir + "/hyperloop_region.pmem", kSize);
  ASSERT_TRUE(HasCode(r, StatusCode::kUnavailable));
  EXPECT_NE(r.status().message().find(std::strerror(EACCES)), std::string::npos)
      << "message without the system's reason: " << r.status().message();
  EXPECT_NE(r.status().message().find("hyperloop_region.pmem"), std::string::npos) << r.status().message();
}

TEST_F(PmemTest, APathThroughARegularFileIsUnavailableWithTheSystemsReason) {
  { std::ofstream(dir_.file("plain")) << "x"; }
  const auto r = PersistentMemory::open(dir_.file("plain") + "/region.pmem", kSize);
  ASSERT_TRUE(HasCode(r, StatusCode::kUnavailable));
  EXPECT_NE(r.status().message().find(std::strerror(ENOTDIR)), std::string::npos) << r.status().message();
}

TEST_F(PmemTest, ContainingFindsTheObjectForInnerRangesOnly) {
  auto pm = open_pm(path_);
  std::byte* d = pm->data();
  EXPECT_EQ(PersistentMemory::containing(d, kSize), pm.get());
  EXPECT_EQ(PersistentMemory::containing(d, 1), pm.get());
  EXPECT_EQ(PersistentMemory::containing(d + 100, 200), pm.get());
  EXPECT_EQ(PersistentMemory::containing(d + kSize - 1, 1), pm.get());
  // Crossing the end, starting before, or elsewhere entirely (checked while
  // pm is the only object, so no neighbour can hold those addresses).
  EXPECT_EQ(PersistentMemory::containing(d + kSize - 1, 2), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d, kSize + 1), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d + 10, kSize), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d - 1, 2), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d - 4096, 8), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d + kSize, 1), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d + 2 * kSize, 8), nullptr);
  uint64_t local = 0;
  EXPECT_EQ(PersistentMemory::containing(&local, 8), nullptr);
  // A second object is found for its own ranges; pm still for its own.
  auto other = open_pm(dir_.file("other.pmem"), 4096);
  EXPECT_EQ(PersistentMemory::containing(other->data() + 8, 8), other.get());
  EXPECT_EQ(PersistentMemory::containing(other->data(), 4097), nullptr);
  EXPECT_EQ(PersistentMemory::containing(d + 8, 8), pm.get());
  // Destroyed: no longer found.
  std::byte* od = other->data();
  other.reset();
  EXPECT_EQ(PersistentMemory::containing(od, 8), nullptr);
}

// ---- one owner per file -------------------------------------------------------------------

::testing::AssertionResult RefusedAsInUse(const Result<std::unique_ptr<PersistentMemory>>& r, StatusCode code,
                                          const std::string& path, const std::string& owner) {
  if (r.is_ok()) return ::testing::AssertionFailure() << path << " opened a second time (a file open twice)";
  const std::string& m = r.status().message();
  if (r.status().code() != code) return ::testing::AssertionFailure() << "got " << r.status().to_string();
  if (m.find("in use by another") == std::string::npos || m.find(path) == std::string::npos ||
      m.find(owner) == std::string::npos)
    return ::testing::AssertionFailure() << "message without the reason or the paths: " << m;
  return ::testing::AssertionSuccess();
}

TEST_F(PmemTest, TheSameFileUnderAnotherNameIsRefusedWhileOpenInThisProcess) {
  auto pm = open_pm(path_);
  const std::string dot = dir_.path().string() + "/./region.pmem";
  const std::string sym = dir_.file("symlink.pmem");
  const std::string hard = dir_.file("hardlink.pmem");
  ASSERT_EQ(::symlink(path_.c_str(), sym.c_str()), 0) << std::strerror(errno);
  ASSERT_EQ(::link(path_.c_str(), hard.c_str()), 0) << std::strerror(errno);
  for (const std::string& other : {path_, dot, sym, hard}) {
    EXPECT_TRUE(RefusedAsInUse(PersistentMemory::open(other, kSize), StatusCode::kAlreadyExists, other, path_));
    EXPECT_TRUE(RefusedAsInUse(PersistentMemory::open(other, kSize, false), StatusCode::kAlreadyExists, other, path_));
  }
  // The refusals left the owner alone: it still persists into the file.
  std::memcpy(pm->data() + 64, "owner", 5);
  pm->persist(64, 5);
  EXPECT_EQ(std::memcmp(file_bytes(path_).data() + 64, "owner", 5), 0);
  // Closed: any of the names opens it again (one at a time).
  pm.reset();
  for (const std::string& other : {hard, sym, dot}) {
    auto again = PersistentMemory::open(other, kSize, false);
    ASSERT_TRUE(IsOk(again)) << other;
    EXPECT_EQ(std::memcmp((*again)->data() + 64, "owner", 5), 0) << other;
  }
}

TEST_F(PmemTest, TwoTenantsOrTwoReplicaHostsCannotShareAFile) {
  soft::Fabric fabric;
  auto nic1 = must(fabric.create_nic(), "create_nic");
  auto nic2 = must(fabric.create_nic(), "create_nic");
  auto h1 = must(prim::ReplicaHost::create(*nic1, {.agent_thread = false}), "ReplicaHost::create");
  auto h2 = must(prim::ReplicaHost::create(*nic2, {.agent_thread = false}), "ReplicaHost::create");
  const std::string hard = dir_.file("hardlink.pmem");
  ASSERT_TRUE(IsOk(h1->register_tenant(1, kSize, path_)));
  ASSERT_EQ(::link(path_.c_str(), hard.c_str()), 0) << std::strerror(errno);
  const Status same_host = h1->register_tenant(2, kSize, dir_.path().string() + "/./region.pmem");
  EXPECT_TRUE(HasCode(same_host, StatusCode::kAlreadyExists));
  EXPECT_NE(same_host.message().find("in use by another"), std::string::npos) << same_host.to_string();
  const Status other_host = h2->register_tenant(1, kSize, hard);
  EXPECT_TRUE(HasCode(other_host, StatusCode::kAlreadyExists));
  EXPECT_NE(other_host.message().find(hard), std::string::npos) << other_host.to_string();
  // The refused tenants are not registered; a file of their own works.
  EXPECT_TRUE(HasCode(h2->tenant_access(1), StatusCode::kNotFound));
  EXPECT_TRUE(IsOk(h2->register_tenant(1, kSize, dir_.file("own.pmem"))));
  // A host that lost power gives its files up: its restart opens them.
  h1->power_fail();
  EXPECT_TRUE(IsOk(h2->register_tenant(2, kSize, hard)));
}

// A child process holds the file's lock (as another daemon would) while this
// process opens it, and the other way round. The child only makes system
// calls between fork and _exit.
TEST_F(PmemTest, AFileLockedByAnotherProcessIsRefusedAndAnOpenFileIsLocked) {
  { auto pm = open_pm(path_); }  // the file exists
  int go[2], done[2];
  ASSERT_EQ(::pipe(go), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0) << std::strerror(errno);
  if (child == 0) {
    const int fd = ::open(path_.c_str(), O_RDWR);
    const char ok = (fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) == 0) ? 'L' : 'E';
    (void)!::write(go[1], &ok, 1);
    char c;
    (void)!::read(done[0], &c, 1);
    ::_exit(0);
  }
  char got = 0;
  ASSERT_EQ(::read(go[0], &got, 1), 1);
  ASSERT_EQ(got, 'L') << "the child could not lock the file";
  EXPECT_TRUE(RefusedAsInUse(PersistentMemory::open(path_, kSize), StatusCode::kUnavailable, path_, "process"));
  (void)!::write(done[1], "x", 1);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  // The child is gone, and its lock with it: now this process holds the file,
  // and a child's lock attempt fails.
  auto pm = open_pm(path_, kSize, false);
  const pid_t child2 = ::fork();
  ASSERT_GE(child2, 0) << std::strerror(errno);
  if (child2 == 0) {
    const int fd = ::open(path_.c_str(), O_RDWR);
    if (fd < 0) ::_exit(2);
    ::_exit(::flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : (errno == EWOULDBLOCK ? 1 : 3));
  }
  ASSERT_EQ(::waitpid(child2, &status, 0), child2);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << "another process could lock a file that is open here (0: locked, 2/3: error)";
  // release() gives the lock up.
  pm->release();
  const pid_t child3 = ::fork();
  ASSERT_GE(child3, 0) << std::strerror(errno);
  if (child3 == 0) {
    const int fd = ::open(path_.c_str(), O_RDWR);
    ::_exit(fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : 1);
  }
  ASSERT_EQ(::waitpid(child3, &status, 0), child3);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the lock outlived release()";
  for (int fd : {go[0], go[1], done[0], done[1]}) ::close(fd);
}

TEST_F(PmemTest, AReleasedObjectNoLongerReachesTheFile) {
  auto old = open_pm(path_);
  std::memcpy(old->data(), "before", 6);
  old->persist(0, 6);
  old->release();
  auto next = open_pm(path_, kSize, false);  // the restart
  EXPECT_EQ(std::memcmp(next->data(), "before", 6), 0);
  std::memcpy(old->data(), "stale!", 6);  // the dead owner's view stays usable...
  old->persist(0, 6);                     // ...and reaches nothing
  old->mark_dirty(0, 6);
  old->persist_dirty();
  old->power_fail({.tear = true, .seed = 1});
  EXPECT_EQ(std::memcmp(file_bytes(path_).data(), "before", 6), 0) << "a released object wrote the file";
  old.reset();  // and its end does not unregister the new owner
  EXPECT_TRUE(HasCode(PersistentMemory::open(path_, kSize), StatusCode::kAlreadyExists));
}

// A file system smaller than the region: a 1 MiB tmpfs mounted for the test
// (the tests run as root). Before space was reserved up front, the mapping
// of a sparse file raised SIGBUS at the first access past the free space.
TEST_F(PmemTest, AFileSystemTooSmallIsResourceExhaustedAtOpenNeverASigbus) {
  test_fs::SmallFileSystem fs;
  ASSERT_TRUE(fs.ok()) << fs.why();
  const std::string path = fs.file("big.pmem");
  const auto r = PersistentMemory::open(path, 4 << 20);
  ASSERT_TRUE(HasCode(r, StatusCode::kResourceExhausted));
  EXPECT_NE(r.status().message().find(std::strerror(ENOSPC)), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
  EXPECT_EQ(std::filesystem::file_size(path), 0u) << "a refused open must leave the new file empty";
  // What fits opens, and all of it can be written and persisted.
  auto pm = open_pm(fs.file("fits.pmem"), 512 << 10);
  fill_pattern(pm->data(), 512 << 10, 3);
  pm->persist(0, 512 << 10);
  EXPECT_TRUE(HasCode(PersistentMemory::open(fs.file("second.pmem"), 768 << 10), StatusCode::kResourceExhausted));
}

// The same through the process's file size limit (no mount needed): EFBIG.
TEST_F(PmemTest, AFileOverTheFileSizeLimitIsResourceExhaustedWithTheSystemsReason) {
  struct rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  struct sigaction ignore{}, previous{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGXFSZ, &ignore, &previous), 0);
  struct rlimit small = old;
  small.rlim_cur = 1 << 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const auto r = PersistentMemory::open(path_, 4 << 20);
  const auto fits = PersistentMemory::open(dir_.file("fits.pmem"), 1 << 20);
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::sigaction(SIGXFSZ, &previous, nullptr);
  ASSERT_TRUE(HasCode(r, StatusCode::kResourceExhausted));
  EXPECT_NE(r.status().message().find(std::strerror(EFBIG)), std::string::npos) << r.status().message();
  EXPECT_TRUE(IsOk(fits));
}

TEST_F(PmemTest, ImpossibleSizesAreRefusedBeforeAnythingIsAllocated) {
  for (size_t size : {PersistentMemory::kMaxSize + 1, size_t{1} << 60, ~size_t{0}})
    EXPECT_NO_THROW(EXPECT_TRUE(HasCode(PersistentMemory::open(path_, size), StatusCode::kInvalidArgument)));
  EXPECT_FALSE(std::filesystem::exists(path_) && std::filesystem::file_size(path_) != 0);
  // Possible in principle, more than this file system has: refused at the reservation.
  EXPECT_NO_THROW(EXPECT_TRUE(HasCode(PersistentMemory::open(path_, size_t{1} << 46), StatusCode::kResourceExhausted)));
}

// ---- torn power failures ------------------------------------------------------------------

// Over many seeds: a region with an old durable image, new stores in some of
// its lines (some words of a line, whole lines, the NIC's way: marked dirty,
// and the CPU's: not marked), some of them persisted. After power_fail with
// tear: every persisted byte is new; every other word is its old or its new
// value, whole; untouched lines are old; the view equals the file. Across
// seeds, unflushed lines are lost, kept whole and kept in part.
TEST_F(PmemTest, ATornPowerFailureKeepsPersistedBytesAndWholeOldOrNewWords) {
  constexpr size_t kRegion = 8 << 10;
  constexpr size_t kLine = PersistentMemory::kLineBytes, kWord = PersistentMemory::kWordBytes;
  const auto old_image = pattern(kRegion, 0x01);
  const auto new_image = pattern(kRegion, 0x02);  // every word differs from old_image's
  for (size_t w = 0; w < kRegion; w += kWord)
    ASSERT_NE(std::memcmp(old_image.data() + w, new_image.data() + w, kWord), 0) << "patterns share a word";
  uint64_t lost = 0, whole = 0, partial = 0, kept_words = 0;
  std::set<std::vector<std::byte>> images;
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    const std::string path = dir_.file("tear" + std::to_string(seed % 2) + ".pmem");
    auto pm = open_pm(path, kRegion);
    std::memcpy(pm->data(), old_image.data(), kRegion);
    pm->persist(0, kRegion);
    std::mt19937_64 rng(mix64(seed));
    std::vector<int> state(kRegion / kWord, 0);  // 0: untouched, 1: unflushed new, 2: persisted new
    for (int k = 0; k < 24; ++k) {
      const size_t w0 = rng() % (kRegion / kWord), n = 1 + rng() % 16;
      for (size_t w = w0; w < std::min(w0 + n, kRegion / kWord); ++w) {
        std::memcpy(pm->data() + w * kWord, new_image.data() + w * kWord, kWord);
        state[w] = std::max(state[w], 1);
      }
      if (rng() % 2) pm->mark_dirty(w0 * kWord, n * kWord);
    }
    for (int k = 0; k < 4; ++k) {
      const size_t w0 = rng() % (kRegion / kWord), n = 1 + rng() % 8;
      pm->persist(w0 * kWord, n * kWord);
      for (size_t w = w0; w < std::min(w0 + n, kRegion / kWord); ++w)
        if (state[w]) state[w] = 2;
    }
    kept_words += pm->power_fail({.tear = true, .seed = seed});
    const std::byte* v = pm->data();
    EXPECT_EQ(pm->dirty_bytes(), 0u);
    EXPECT_TRUE(BytesEqual(v, file_bytes(path).data(), kRegion)) << "the view is not the file";
    for (size_t w = 0; w < kRegion / kWord; ++w) {
      const bool is_old = std::memcmp(v + w * kWord, old_image.data() + w * kWord, kWord) == 0;
      const bool is_new = std::memcmp(v + w * kWord, new_image.data() + w * kWord, kWord) == 0;
      if (state[w] == 0) {
        EXPECT_TRUE(is_old) << "word " << w << " was never written";
      } else if (state[w] == 1) {
        EXPECT_TRUE(is_old || is_new) << "word " << w << " is torn";
      } else {
        EXPECT_TRUE(is_new) << "word " << w << " was persisted and is lost";
      }
    }
    for (size_t line = 0; line < kRegion / kLine; ++line) {
      size_t unflushed = 0, survived = 0;
      for (size_t w = line * kLine / kWord; w < (line + 1) * kLine / kWord; ++w)
        if (state[w] == 1) {
          ++unflushed;
          survived += std::memcmp(v + w * kWord, new_image.data() + w * kWord, kWord) == 0;
        }
      if (unflushed == 0) continue;
      if (survived == 0) ++lost;
      else if (survived == unflushed) ++whole;
      else ++partial;
    }
    images.emplace(v, v + kRegion);
    // Same image and seed: the same tear.
    auto twin_path = dir_.file("twin.pmem");
    {
      auto twin = open_pm(twin_path, kRegion);
      std::memcpy(twin->data(), old_image.data(), kRegion);
      twin->persist(0, kRegion);
      std::mt19937_64 rng2(mix64(seed));
      for (int k = 0; k < 24; ++k) {
        const size_t w0 = rng2() % (kRegion / kWord), n = 1 + rng2() % 16;
        for (size_t w = w0; w < std::min(w0 + n, kRegion / kWord); ++w)
          std::memcpy(twin->data() + w * kWord, new_image.data() + w * kWord, kWord);
        if (rng2() % 2) twin->mark_dirty(w0 * kWord, n * kWord);
      }
      for (int k = 0; k < 4; ++k) {
        const size_t w0 = rng2() % (kRegion / kWord), n = 1 + rng2() % 8;
        twin->persist(w0 * kWord, n * kWord);
      }
      twin->power_fail({.tear = true, .seed = seed});
      EXPECT_TRUE(BytesEqual(twin->data(), v, kRegion)) << "the same seed tore differently";
    }
    std::filesystem::remove(twin_path);
  }
  EXPECT_GT(lost, 0u) << "no unflushed line was ever lost";
  EXPECT_GT(whole, 0u) << "no unflushed line ever survived whole";
  EXPECT_GT(partial, 0u) << "no unflushed line ever survived in part (some of its words)";
  EXPECT_GT(kept_words, 0u);
  EXPECT_GT(images.size(), 190u) << "seeds hardly change what survives";
}

// Without tear, the old model: every unflushed word is lost.
TEST_F(PmemTest, APowerFailureWithoutTearLosesEveryUnflushedWord) {
  auto pm = open_pm(path_);
  fill_pattern(pm->data(), kSize, 8);
  pm->persist(128, 64);
  EXPECT_EQ(pm->power_fail(PowerFailOptions{.tear = false, .seed = 99}), 0u);
  const auto p = pattern(kSize, 8);
  EXPECT_TRUE(BytesEqual(pm->data() + 128, p.data() + 128, 64));
  EXPECT_TRUE(AllBytesAre(pm->data(), 128, 0));
  EXPECT_TRUE(AllBytesAre(pm->data() + 192, kSize - 192, 0));
}

}  // namespace
}  // namespace hyperloop::fault_test
