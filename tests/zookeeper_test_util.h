// zookeeper_test_util.h: a real single-node ZooKeeper server for a test
// (Debian's zookeeper package: java ZooKeeperServerMain on 127.0.0.1, a free
// port outside the ephemeral range, tickTime 200 ms so sessions last 0.4 to
// 4 s, its data in a temporary folder), started by the test and killed at
// its end. Uses daemon_test_util.h's Process, TempDir and free ports.
#pragma once

#include <fstream>
#include <memory>
#include <string>

#include "daemon_test_util.h"
#include "hyperloop/coord.h"

namespace hyperloop::daemon_test {

// One single-node server on 127.0.0.1 for the life of a test.
class ZooKeeperServer {
 public:
  // ok() false (with why()) if it could not be started.
  ZooKeeperServer() {
    if (!dir_.ok()) {
      why_ = "no temporary folder";
      return;
    }
    for (int attempt = 0; attempt < 3 && !proc_; ++attempt) {
      port_ = free_port_outside_ephemeral("127.0.0.1");
      if (port_ == 0) {
        why_ = "no free port";
        return;
      }
      std::ofstream cfg(dir_.file("zoo.cfg"));
      cfg << "tickTime=200\n"  // sessions of 0.4 to 4 s
          << "dataDir=" << dir_.file("data") << "\n"
          << "clientPort=" << port_ << "\nclientPortAddress=127.0.0.1\n"
          << "admin.enableServer=false\n";  // else its AdminServer takes port 8080
      cfg.close();
      std::string err;
      // Debian's zookeeper.jar names its dependencies in its manifest's Class-Path.
      proc_ = Process::spawn({"java", "-Xmx128m", "-cp", "/usr/share/java/zookeeper.jar",
                              "-Dzookeeper.snapshot.trust.empty=true",  // Debian's NEWS: 3.8 and an empty dataDir
                              "org.apache.zookeeper.server.ZooKeeperServerMain", dir_.file("zoo.cfg")},
                             dir_.file("zookeeper.err"), &err);
      if (!proc_) {
        why_ = err;
        return;
      }
      // Connected (the client retries until the JVM listens), or the server died (its port taken: try another).
      coord::ZooKeeperOptions o = options();
      o.connect_timeout_ms = 30'000;
      auto s = coord::zookeeper_config_store(o);
      if (s.is_ok()) return;
      why_ = s.status().to_string() + "; server stderr: " + read_file(dir_.file("zookeeper.err"));
      proc_.reset();
    }
  }
  ~ZooKeeperServer() { proc_.reset(); }  // SIGKILL and reap: nothing of it outlives the test
  bool ok() const { return proc_ != nullptr; }
  const std::string& why() const { return why_; }
  coord::ZooKeeperOptions options(const std::string& root = "/hyperloop") const {
    coord::ZooKeeperOptions o;
    o.hosts = "127.0.0.1:" + std::to_string(port_);
    o.root = root;
    return o;
  }
  Process& process() { return *proc_; }
  // "127.0.0.1:PORT", for a client's --zk.
  std::string hosts() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  TempDir dir_;
  uint16_t port_ = 0;
  std::unique_ptr<Process> proc_;
  std::string why_;
};

}  // namespace hyperloop::daemon_test
