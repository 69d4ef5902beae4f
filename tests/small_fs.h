// small_fs.h: a 1 MiB tmpfs mounted for one test (the tests run as root), for
// "a file system too small for the region" (pmem_test.cc, daemon_test.cc).
#pragma once

#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

namespace hyperloop::test_fs {

class SmallFileSystem {
 public:
  SmallFileSystem() {
    char tmpl[] = "/tmp/hl-small-fs-XXXXXX";
    if (!::mkdtemp(tmpl)) {
      why_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    dir_ = tmpl;
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=1m") != 0) {
      why_ = std::string("mount -t tmpfs -o size=1m (the tests run as root): ") + std::strerror(errno);
      return;
    }
    mounted_ = true;
  }
  ~SmallFileSystem() {
    if (mounted_) (void)::umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) (void)::rmdir(dir_.c_str());
  }
  SmallFileSystem(const SmallFileSystem&) = delete;
  SmallFileSystem& operator=(const SmallFileSystem&) = delete;
  bool ok() const { return mounted_; }
  const std::string& why() const { return why_; }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }

 private:
  std::string dir_, why_;
  bool mounted_ = false;
};

}  // namespace hyperloop::test_fs
