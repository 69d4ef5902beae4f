// daemon_test_util.h: child processes, hyperloop-replica daemons and a TCP
// client for the daemon tests (tests/daemon_test.cc).
//
//   Process     a child started with fork/exec: stdin /dev/null, stdout on a
//               pipe the test reads lines from (with a bound), stderr to a
//               file. It dies with the test process (PR_SET_PDEATHSIG) and is
//               SIGKILLed and reaped by its destructor: no child outlives a
//               test, failed or not. Exits are awaited on a pidfd (bounded).
//   Daemon      one hyperloop-replica: writes its config, starts it (possibly
//               under a prefix such as `ip netns exec NS`), waits for its
//               "ready control=<port> data=<port>" line and parses the ports.
//   Client      the test process's side of a chain: by default a listening
//               fabric, one soft NIC with a short transport timer, one
//               executor; or a device opened by name (the device under test,
//               HYPERLOOP_TEST_DEVICE: device_test_util.h), whose daemons then
//               get `device NAME` in their configs (DaemonSpec::device).
//   Watchdog    a per-test bound on the whole test: if it is still running
//               after the limit, it reports the phase it was in, runs the
//               registered cleanup (network namespaces) and aborts, so a hang
//               fails loudly instead of stalling the suite.
//   TempDir     a fresh directory (tmpfs if there is one), removed at the end.
//
// Nothing here sleeps to synchronize: readiness is the daemon's ready line,
// exit is the pidfd becoming readable, progress is counted acknowledgements.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "device_test_util.h"
#include "hyperloop/primitives.h"
#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"
#include "hyperloop/status.h"

#ifndef HYPERLOOP_REPLICA_BIN
#error "HYPERLOOP_REPLICA_BIN must name the hyperloop-replica executable"
#endif

namespace hyperloop::daemon_test {

// A Status-returning setup step that must succeed (the message says which).
#define DAEMON_ASSERT_OK(expr)                                                      \
  do {                                                                              \
    const ::hyperloop::Status st_ = (expr);                                         \
    ASSERT_TRUE(st_.is_ok()) << #expr << ": " << st_.to_string();                   \
  } while (0)

namespace soft = ::hyperloop::soft;

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

inline std::string describe(const Status& s) { return s.to_string(); }

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// The full path of `name` found on PATH (or name itself if it has a '/');
// empty if there is no such executable.
inline std::string find_executable(const std::string& name) {
  if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/sbin:/usr/bin:/sbin:/bin";
  dirs += ":/usr/sbin:/sbin";  // ip lives in sbin, which a non-login PATH may lack
  std::istringstream is(dirs);
  for (std::string dir; std::getline(is, dir, ':');) {
    if (dir.empty()) continue;
    const std::string full = dir + "/" + name;
    struct stat st;
    if (::stat(full.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(full.c_str(), X_OK) == 0) return full;
  }
  return "";
}

// ---- a fresh directory -------------------------------------------------------------------
// On tmpfs (/dev/shm) when there is one, else /tmp. Why tmpfs: a soft NIC
// makes written bytes durable (msync of the region file) on its polling
// thread when it serves a READ, and on a loaded disk one msync of a fresh
// file was seen to take 190-270 ms, longer than the peers' whole retry budget
// (ack_timeout 20 ms x 8): their QPs then fail with "transport retry counter
// exceeded" and the chain breaks. The files stay across a daemon's restart
// on tmpfs as on disk (what these tests need; power loss is durability_test's).
inline std::string temp_base() {
  struct stat st;
  if (::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && ::access("/dev/shm", W_OK) == 0) return "/dev/shm";
  return "/tmp";
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = temp_base() + "/hl-daemon-test-XXXXXX";
    if (::mkdtemp(tmpl.data())) path_ = tmpl;
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// ---- a child process ----------------------------------------------------------------------
// Soft NICs are threads: a NIC thread that is not scheduled answers nothing,
// and its peers' transport timers (20 ms, 7 retries: the daemons' default)
// expire. On a small machine busy with other work (compilers, other test
// binaries) NIC threads were seen unscheduled for 100-700 ms, breaking chains
// that are perfectly healthy. As root, the test process and the daemons run
// at a higher priority (nice -10) so that they get the CPU when they have
// work; nothing else changes (without root the calls fail and are ignored).
inline constexpr int kChildNice = -10;
inline void raise_own_priority() {
  if (::geteuid() == 0) (void)::setpriority(PRIO_PROCESS, 0, kChildNice);  // this thread and its future threads
}

class Process {
 public:
  // Starts argv (argv[0] is looked up on PATH unless it contains a '/').
  // stdout goes to a pipe read by read_line(), stderr to stderr_path.
  static std::unique_ptr<Process> spawn(const std::vector<std::string>& argv, const std::string& stderr_path,
                                        std::string* error) {
    const std::string exe = argv.empty() ? "" : find_executable(argv[0]);
    if (exe.empty()) {
      *error = "no executable '" + (argv.empty() ? std::string() : argv[0]) + "'";
      return nullptr;
    }
    // Everything the child needs is prepared before fork: between fork and
    // exec it makes async-signal-safe calls only (the test is multithreaded).
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv[0] = const_cast<char*>(exe.c_str());
    cargv.push_back(nullptr);
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
      *error = "pipe: " + std::string(std::strerror(errno));
      return nullptr;
    }
    const int err_fd = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (err_fd < 0 || null_fd < 0) {
      *error = "cannot open " + stderr_path + " or /dev/null: " + std::strerror(errno);
      for (int fd : {out[0], out[1], err_fd, null_fd})
        if (fd >= 0) ::close(fd);
      return nullptr;
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // the test process died: so does the child
      if (::getppid() != parent) ::_exit(127);
      ::setpriority(PRIO_PROCESS, 0, kChildNice);  // see kChildNice (fails harmlessly unless root)
      ::dup2(null_fd, 0);
      ::dup2(out[1], 1);
      ::dup2(err_fd, 2);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    const int fork_errno = errno;
    ::close(out[1]);
    ::close(err_fd);
    ::close(null_fd);
    if (pid < 0) {
      ::close(out[0]);
      *error = "fork: " + std::string(std::strerror(fork_errno));
      return nullptr;
    }
    auto p = std::unique_ptr<Process>(new Process());
    p->pid_ = pid;
    p->out_fd_ = out[0];
    p->pidfd_ = int(::syscall(SYS_pidfd_open, pid, 0));
    p->what_ = exe;
    return p;
  }

  ~Process() {
    kill_and_reap();
    if (out_fd_ >= 0) ::close(out_fd_);
    if (pidfd_ >= 0) ::close(pidfd_);
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool reaped() const { return reaped_; }
  int wait_status() const { return status_; }

  // One line of the child's stdout, within timeout_ms. False on timeout or
  // end of file (why says which).
  bool read_line(std::string* line, int timeout_ms, std::string* why) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        *line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return true;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        *why = "no line on stdout within " + std::to_string(timeout_ms) + " ms";
        return false;
      }
      pollfd pfd{out_fd_, POLLIN, 0};
      const int r = ::poll(&pfd, 1, int(left));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) continue;  // the deadline check above ends the loop
      char chunk[512];
      const ssize_t n = ::read(out_fd_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        *why = "stdout closed (the process exited) before a full line" +
               (buf_.empty() ? std::string() : " (partial: '" + buf_ + "')");
        return false;
      }
      buf_.append(chunk, size_t(n));
    }
  }

  // Waits up to timeout_ms for the child to exit and reaps it. True if it did.
  bool wait_exit(int timeout_ms) {
    if (reaped_) return true;
    if (pidfd_ >= 0) {
      const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
      for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        pollfd pfd{pidfd_, POLLIN, 0};
        const int r = ::poll(&pfd, 1, int(std::max<int64_t>(left, 0)));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        break;
      }
    } else {
      // No pidfd (old kernel): the child's stdout pipe reaches end of file
      // when it exits (no one else holds its write end).
      std::string line, why;
      while (read_line(&line, timeout_ms, &why)) {
      }
      if (why.rfind("stdout closed", 0) != 0) return false;
    }
    return reap(0);
  }

  void signal(int sig) {
    if (!reaped_) ::kill(pid_, sig);
  }

  // SIGKILL and reap (always terminates: the child is not in our control path).
  void kill_and_reap() {
    if (reaped_ || pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    reap(0);
  }

  std::string describe_exit() const {
    if (!reaped_) return "still running";
    if (WIFEXITED(status_)) return "exit code " + std::to_string(WEXITSTATUS(status_));
    if (WIFSIGNALED(status_)) return "killed by signal " + std::to_string(WTERMSIG(status_));
    return "status " + std::to_string(status_);
  }

 private:
  Process() = default;
  bool reap(int flags) {
    for (;;) {
      const pid_t r = ::waitpid(pid_, &status_, flags);
      if (r < 0 && errno == EINTR) continue;
      if (r == pid_) {
        reaped_ = true;
        return true;
      }
      return false;
    }
  }
  pid_t pid_ = -1;
  int out_fd_ = -1;
  int pidfd_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::string buf_;
  std::string what_;
};

// Runs argv to completion (bounded): exit code (-1: did not finish or killed
// by a signal) and stderr.
struct RunResult {
  int code = -1;
  std::string err;
  std::string out;
  std::string describe;
};
inline RunResult run_command(const std::vector<std::string>& argv, const std::string& scratch_dir,
                             int timeout_ms = 10'000) {
  RunResult r;
  static std::atomic<int> seq{0};
  const std::string err_path = scratch_dir + "/cmd-" + std::to_string(seq++) + ".stderr";
  std::string error;
  auto p = Process::spawn(argv, err_path, &error);
  if (!p) {
    r.describe = error;
    r.err = error;
    return r;
  }
  std::string line, why;
  while (p->read_line(&line, timeout_ms, &why)) r.out += line + "\n";
  const bool exited = p->wait_exit(timeout_ms);
  r.err = read_file(err_path);
  ::unlink(err_path.c_str());
  if (!exited) {
    r.describe = "did not exit within " + std::to_string(timeout_ms) + " ms";
    return r;  // the destructor kills it
  }
  r.describe = p->describe_exit();
  if (WIFEXITED(p->wait_status())) r.code = WEXITSTATUS(p->wait_status());
  return r;
}

inline std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& a : v) s += (s.empty() ? "" : " ") + a;
  return s;
}

// ---- hyperloop-replica ----------------------------------------------------------------------
// The secret daemon_test gives tenant `id` (raw bytes; the config holds hex).
inline std::string tenant_secret(uint32_t id) { return "daemon_test tenant " + std::to_string(id) + " secret"; }
inline std::string to_hex(std::string_view bytes) {
  static const char* d = "0123456789abcdef";
  std::string h;
  for (unsigned char c : bytes) {
    h += d[c >> 4];
    h += d[c & 15];
  }
  return h;
}

struct TenantSpec {
  uint32_t id;
  size_t bytes;
  std::string path;
  std::string secret_spec;  // the config's secret=... / secret_file=...; empty: secret=hex(tenant_secret(id))
};

struct DaemonSpec {
  // The config's `device` line; empty: none (the daemon's default, soft).
  // A device other than soft gets no data_port line (the daemon refuses the
  // soft wire's directives there) and reports data=0.
  std::string device;
  std::string address = "127.0.0.1";
  uint16_t control_port = 0;
  uint16_t data_port = 0;
  std::vector<TenantSpec> tenants;
  std::vector<std::string> extra_lines;  // more directives (limits), written before the tenants
};

inline std::string config_text(const DaemonSpec& d) {
  std::ostringstream os;
  os << "# hyperloop-replica config written by daemon_test\n";
  if (!d.device.empty()) os << "device " << d.device << "\n";
  os << "address " << d.address << "\n";
  if (d.device.empty() || d.device == "soft") os << "data_port " << d.data_port << "   # 0: any free port\n";
  os << "control_port " << d.control_port << "\n";
  for (const auto& l : d.extra_lines) os << l << "\n";
  for (const auto& t : d.tenants)
    os << "tenant " << t.id << " " << t.bytes << " " << t.path << " "
       << (t.secret_spec.empty() ? "secret=" + to_hex(tenant_secret(t.id)) : t.secret_spec) << "\n";
  return os.str();
}

inline constexpr int kReadyTimeoutMs = 10'000;
inline constexpr int kExitTimeoutMs = 10'000;

class Daemon {
 public:
  // name: a label (file names); prefix: run the daemon under it (e.g. ip netns exec NS).
  Daemon(std::string name, std::string dir, DaemonSpec spec, std::vector<std::string> prefix = {})
      : name_(std::move(name)), dir_(std::move(dir)), spec_(std::move(spec)), prefix_(std::move(prefix)) {
    config_path_ = dir_ + "/" + name_ + ".cfg";
  }

  DaemonSpec& spec() { return spec_; }
  const std::string& name() const { return name_; }
  const std::string& config_path() const { return config_path_; }
  uint16_t control_port() const { return control_port_; }
  uint16_t data_port() const { return data_port_; }
  std::string endpoint() const { return spec_.address + ":" + std::to_string(control_port_); }
  Process* process() { return proc_.get(); }
  bool running() const { return proc_ && !proc_->reaped(); }
  std::string stderr_text() const { return read_file(stderr_path()); }
  std::string stderr_path() const { return dir_ + "/" + name_ + "." + std::to_string(starts_) + ".stderr"; }

  // (Re)writes the config from spec() and starts the daemon; waits for the
  // ready line. The message says what went wrong, with the daemon's stderr.
  ::testing::AssertionResult start() {
    if (running()) return ::testing::AssertionFailure() << name_ << " is already running";
    write_file(config_path_, config_text(spec_));
    ++starts_;
    std::vector<std::string> argv = prefix_;
    argv.push_back(HYPERLOOP_REPLICA_BIN);
    argv.push_back(config_path_);
    std::string error;
    proc_ = Process::spawn(argv, stderr_path(), &error);
    if (!proc_) return ::testing::AssertionFailure() << "cannot start " << join(argv) << ": " << error;
    std::string line, why;
    if (!proc_->read_line(&line, kReadyTimeoutMs, &why)) {
      proc_->wait_exit(100);
      return ::testing::AssertionFailure() << "daemon " << name_ << " (" << join(argv) << ") not ready: " << why << "; "
                                           << proc_->describe_exit() << "; stderr: " << stderr_text();
    }
    unsigned c = 0, d = 0;
    // A device other than soft has no TCP data port: data=0, and only then.
    const bool soft_wire = spec_.device.empty() || spec_.device == "soft";
    if (std::sscanf(line.c_str(), "ready control=%u data=%u", &c, &d) != 2 || c == 0 || c > 65535 ||
        (soft_wire ? d == 0 : d != 0) || d > 65535)
      return ::testing::AssertionFailure() << "daemon " << name_ << ": unexpected first line '" << line << "'"
                                           << (soft_wire ? "" : " (device " + spec_.device + ": want data=0)");
    if (spec_.control_port && c != spec_.control_port)
      return ::testing::AssertionFailure() << "daemon " << name_ << " was configured with control_port "
                                           << spec_.control_port << " but reports " << c;
    if (spec_.data_port && d != spec_.data_port)
      return ::testing::AssertionFailure()
             << "daemon " << name_ << " was configured with data_port " << spec_.data_port << " but reports " << d;
    control_port_ = uint16_t(c);
    data_port_ = uint16_t(d);
    if (!spec_.device.empty()) return on_its_device();
    return ::testing::AssertionSuccess();
  }

  // The daemon's log says it opened the device its config names (its
  // "event=device" line, written before the ready line): a soft NIC for
  // soft, else a non-soft device of that name.
  ::testing::AssertionResult on_its_device() const {
    const std::string log = stderr_text();
    std::istringstream ls(log);
    for (std::string line; std::getline(ls, line);) {
      if (line.find(" event=device ") == std::string::npos) continue;
      const bool soft = device_test::is_soft_name(spec_.device);
      const bool backend_ok = soft ? line.find(" backend=soft") != std::string::npos
                                   : line.find(" backend=") != std::string::npos &&
                                         line.find(" backend=soft") == std::string::npos;
      const bool name_ok = soft || line.find(" name=" + spec_.device + " ") != std::string::npos;
      if (backend_ok && name_ok) return ::testing::AssertionSuccess();
      return ::testing::AssertionFailure() << "daemon " << name_ << " was configured with device " << spec_.device
                                           << " but logged: " << line;
    }
    return ::testing::AssertionFailure() << "daemon " << name_ << " logged no event=device line; stderr: " << log;
  }

  // Sends sig and waits (bounded) for the exit; the daemon is reaped.
  ::testing::AssertionResult stop(int sig) {
    if (!running()) return ::testing::AssertionFailure() << name_ << " is not running";
    proc_->signal(sig);
    if (!proc_->wait_exit(kExitTimeoutMs))
      return ::testing::AssertionFailure() << "daemon " << name_ << " did not exit within " << kExitTimeoutMs
                                           << " ms of signal " << sig << "; stderr: " << stderr_text();
    return ::testing::AssertionSuccess();
  }
  std::string describe_exit() const { return proc_ ? proc_->describe_exit() : "never started"; }
  int exit_status() const { return proc_ ? proc_->wait_status() : -1; }

  void kill() {
    if (proc_) proc_->kill_and_reap();
  }

 private:
  std::string name_, dir_, config_path_;
  DaemonSpec spec_;
  std::vector<std::string> prefix_;
  std::unique_ptr<Process> proc_;
  uint16_t control_port_ = 0, data_port_ = 0;
  int starts_ = 0;
};

// Runs the daemon on a config text and waits for it to exit (it must, on an
// error): exit code and stderr. A daemon that gets ready instead is killed
// and reported as code -2 with its ready line in `out`.
inline RunResult run_daemon_to_exit(const std::string& dir, const std::string& config_path,
                                    int timeout_ms = kExitTimeoutMs) {
  RunResult r;
  static std::atomic<int> seq{0};
  const std::string err_path = dir + "/failing-" + std::to_string(seq++) + ".stderr";
  std::string error;
  auto p = Process::spawn({HYPERLOOP_REPLICA_BIN, config_path}, err_path, &error);
  if (!p) {
    r.describe = error;
    return r;
  }
  std::string line, why;
  if (p->read_line(&line, timeout_ms, &why)) {
    r.out = line;
    r.code = -2;
    r.describe = "it started ('" + line + "') instead of failing";
    p->kill_and_reap();
    r.err = read_file(err_path);
    return r;
  }
  if (!p->wait_exit(timeout_ms)) {
    r.describe = "did not exit within " + std::to_string(timeout_ms) + " ms";
    r.err = read_file(err_path);
    return r;
  }
  r.err = read_file(err_path);
  r.describe = p->describe_exit();
  if (WIFEXITED(p->wait_status())) r.code = WEXITSTATUS(p->wait_status());
  return r;
}

// ---- the client side ---------------------------------------------------------------------------
inline constexpr uint64_t kAckTimeoutNs = 20'000'000;    // the client NIC's transport timer
inline constexpr uint64_t kOpTimeoutNs = 2'000'000'000;  // GroupOptions::op_timeout_ns

class Client {
 public:
  // The client's device, the one place that chooses it. device empty: today's
  // soft NIC (below). Otherwise rnic::open_device(device), checked to be that
  // device (device_test_util.h): a verbs device needs nothing else (control
  // goes over TCP, data over the device); for "soft" (open_device's soft NIC,
  // on the process's default fabric and executor, the stand-in for a named
  // device) the default fabric first listens on ipv4 so that daemons reach
  // it, and ack_timeout_ns does not apply (open_device's defaults).
  // Without a device: listens on ipv4 (a concrete local address) and creates
  // the NIC and its executor thread (at the raised priority, see kChildNice).
  // ack_timeout_ns: the NIC's transport timer.
  Status init(const std::string& ipv4, uint64_t ack_timeout_ns = kAckTimeoutNs, const std::string& device = {}) {
    raise_own_priority();
    if (!device.empty()) {
      if (device_test::is_soft_name(device)) {
        auto port = soft::default_fabric().listen(ipv4);
        if (!port.is_ok() && port.status().code() != StatusCode::kAlreadyExists) return port.status();
      }
      auto d = device_test::open_named_device(device);
      if (!d.is_ok()) return d.status();
      device_ = std::move(d).value();
      return Status::ok();
    }
    executor_.emplace();
    auto port = fabric_.listen(ipv4);
    if (!port.is_ok()) return port.status();
    soft::NicOptions no;
    no.name = "client";
    no.ack_timeout_ns = ack_timeout_ns;
    auto nic = fabric_.create_nic(no);
    if (!nic.is_ok()) return nic.status();
    nic_ = std::move(*nic);
    executor_->add(*nic_);
    return Status::ok();
  }
  // The client's device (either kind).
  rnic::Device& nic() { return device_ ? *device_ : *nic_; }

 private:
  std::unique_ptr<rnic::Device> device_;  // a device opened by name (or null: the soft NIC below)
  // Destroyed in reverse: the NIC (detaches from the executor), the executor,
  // the fabric (must outlive its NICs).
  soft::Fabric fabric_;
  std::optional<soft::SingleThreadExecutor> executor_;
  std::unique_ptr<soft::Nic> nic_;
};

// The client's waiting loops (Group::wait, backpressure, READs) spin; on a
// small machine that also runs three daemons that spinning takes the CPU
// their NIC threads need. This hook naps 20 us per turn: CPU courtesy only,
// nothing waits on it (every wait is for an acknowledgement, bounded).
inline void client_nap() {
  timespec ts{0, 20'000};
  ::nanosleep(&ts, nullptr);
}

inline prim::GroupOptions group_options(uint32_t tenant, size_t region, prim::ForwardMode mode) {
  prim::GroupOptions o;
  o.progress = client_nap;
  o.tenant = tenant;
  o.region_size = region;
  o.mode = mode;
  o.slots = 64;
  o.rearm_batch = 16;
  o.staging_bytes = 1 << 20;
  o.op_timeout_ns = kOpTimeoutNs;
  o.secret = tenant_secret(tenant);
  return o;
}

// ---- a bound on the whole test -------------------------------------------------------------------
class Watchdog {
 public:
  explicit Watchdog(std::chrono::seconds limit) : limit_(limit), thread_([this] { run(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> l(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // What the test is doing now (reported if the limit passes).
  void phase(std::string what) {
    std::lock_guard<std::mutex> l(mu_);
    phase_ = std::move(what);
  }
  // Run before aborting on a hang (e.g. delete network namespaces, files),
  // latest first.
  void on_hang(std::function<void()> cleanup) {
    std::lock_guard<std::mutex> l(mu_);
    cleanups_.insert(cleanups_.begin(), std::move(cleanup));
  }

 private:
  void run() {
    std::unique_lock<std::mutex> l(mu_);
    if (cv_.wait_for(l, limit_, [this] { return done_; })) return;
    std::fprintf(stderr, "\ndaemon_test: HANG: the test is still running after %lld s; it was: %s. Aborting.\n",
                 static_cast<long long>(limit_.count()), phase_.c_str());
    std::fflush(stderr);
    auto cleanups = cleanups_;
    l.unlock();
    for (auto& c : cleanups) c();
    std::abort();  // children die with us (PR_SET_PDEATHSIG)
  }
  std::chrono::seconds limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::string phase_ = "starting";
  std::vector<std::function<void()>> cleanups_;
  std::thread thread_;
};

// ---- ports and process states -------------------------------------------------------------------
// A free TCP port on ipv4 outside the kernel's ephemeral range, so nothing
// takes it as the local port of an outgoing connection while a daemon that
// owned it restarts (a port from "port 0" would be ephemeral). 0 if none found.
inline uint16_t free_port_outside_ephemeral(const std::string& ipv4) {
  unsigned lo = 32768, hi = 60999;
  if (std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range"); in) in >> lo >> hi;
  unsigned first = 10000, last = lo > 10001 ? lo - 1 : 0;
  if (last < first + 1000) first = hi + 1, last = 65535;
  if (last <= first) return 0;
  std::mt19937 rng(std::random_device{}() ^ unsigned(::getpid()));
  for (int attempt = 0; attempt < 200; ++attempt) {
    const uint16_t port = uint16_t(first + rng() % (last - first + 1));
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    ::inet_pton(AF_INET, ipv4.c_str(), &sa.sin_addr);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    ::close(fd);
    if (ok) return port;
  }
  return 0;
}


}  // namespace hyperloop::daemon_test
