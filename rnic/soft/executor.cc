// rnic/soft: executors, the threads (or the test) that drive NICs.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "nic_impl.h"

namespace hyperloop::soft {
namespace {

void pin_to_cpu(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  // best effort
}

// Busy-polls while there is work, yields the core when idle, and only after a
// long idle stretch (50 ms) naps between polls, so an idle process does not
// burn a core while an active one keeps NIC-like latency.
class IdleBackoff {
 public:
  void on_poll(size_t work) {
    if (work) {
      idle_ = 0;
      return;
    }
    if (++idle_ < 256) return;
    const uint64_t now = monotonic_ns();
    if (idle_ == 256) idle_since_ = now;
    if (now - idle_since_ < 50'000'000) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }

 private:
  uint64_t idle_ = 0;
  uint64_t idle_since_ = 0;
};

}  // namespace

Executor& default_executor() {
  static SingleThreadExecutor executor;
  return executor;
}

// ---- SingleThreadExecutor ----------------------------------------------------------
SingleThreadExecutor::SingleThreadExecutor(int cpu) : cpu_(cpu), thread_([this] { run(); }) {}

SingleThreadExecutor::~SingleThreadExecutor() {
  stop_.store(true);
  thread_.join();
  std::lock_guard<std::mutex> l(mu_);
  for (Nic* n : nics_) set_executor(*n, nullptr);
}

void SingleThreadExecutor::add(Nic& nic) {
  if (Executor* old = executor_of(nic); old && old != this) old->remove(nic);
  std::lock_guard<std::mutex> l(mu_);
  if (std::find(nics_.begin(), nics_.end(), &nic) == nics_.end()) nics_.push_back(&nic);
  set_executor(nic, this);
}

void SingleThreadExecutor::remove(Nic& nic) {
  std::lock_guard<std::mutex> l(mu_);
  std::erase(nics_, &nic);
  set_executor(nic, nullptr);
}

void SingleThreadExecutor::run() {
  pin_to_cpu(cpu_);
  IdleBackoff backoff;
  while (!stop_.load(std::memory_order_relaxed)) {
    size_t work = 0;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (Nic* n : nics_) work += n->poll_once(64);
    }
    backoff.on_poll(work);
  }
}

// ---- ThreadPerNicExecutor ------------------------------------------------------------
struct ThreadPerNicExecutor::Worker {
  Nic* nic = nullptr;
  std::atomic<bool> stop{false};
  std::thread thread;
};

ThreadPerNicExecutor::ThreadPerNicExecutor(std::vector<int> cpus) : cpus_(std::move(cpus)) {}

ThreadPerNicExecutor::~ThreadPerNicExecutor() {
  std::vector<std::unique_ptr<Worker>> workers;
  {
    std::lock_guard<std::mutex> l(mu_);
    workers.swap(workers_);
  }
  for (auto& w : workers) {
    w->stop.store(true);
    w->thread.join();
    set_executor(*w->nic, nullptr);
  }
}

void ThreadPerNicExecutor::add(Nic& nic) {
  if (Executor* old = executor_of(nic); old && old != this) old->remove(nic);
  std::lock_guard<std::mutex> l(mu_);
  for (auto& w : workers_)
    if (w->nic == &nic) return;
  auto w = std::make_unique<Worker>();
  w->nic = &nic;
  const int cpu = cpus_.empty() ? -1 : cpus_[next_cpu_++ % cpus_.size()];
  Worker* raw = w.get();
  w->thread = std::thread([raw, cpu] {
    pin_to_cpu(cpu);
    IdleBackoff backoff;
    while (!raw->stop.load(std::memory_order_relaxed)) backoff.on_poll(raw->nic->poll_once(64));
  });
  workers_.push_back(std::move(w));
  set_executor(nic, this);
}

void ThreadPerNicExecutor::remove(Nic& nic) {
  std::unique_ptr<Worker> w;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = std::find_if(workers_.begin(), workers_.end(), [&](auto& x) { return x->nic == &nic; });
    if (it == workers_.end()) return;
    w = std::move(*it);
    workers_.erase(it);
  }
  w->stop.store(true);
  w->thread.join();
  set_executor(nic, nullptr);
}

// ---- ManualExecutor --------------------------------------------------------------------
ManualExecutor::ManualExecutor(uint64_t seed, uint64_t ns_per_step)
    : seed_(seed), ns_per_step_(ns_per_step ? ns_per_step : 1), rng_(seed) {}

ManualExecutor::~ManualExecutor() {
  for (Nic* n : nics_) {
    n->set_clock(nullptr);
    set_executor(*n, nullptr);
  }
}

void ManualExecutor::add(Nic& nic) {
  if (Executor* old = executor_of(nic); old && old != this) old->remove(nic);
  if (std::find(nics_.begin(), nics_.end(), &nic) != nics_.end()) return;
  nics_.push_back(&nic);
  nic.set_clock([this] { return now_ns(); });
  set_executor(nic, this);
}

void ManualExecutor::remove(Nic& nic) {
  std::erase(nics_, &nic);
  nic.set_clock(nullptr);
  set_executor(nic, nullptr);
}

void ManualExecutor::at_step(uint64_t step, std::function<void()> action) {
  actions_.emplace(step, std::move(action));
}

void ManualExecutor::run_due_actions() {
  while (!actions_.empty() && actions_.begin()->first <= steps_) {
    auto action = std::move(actions_.begin()->second);
    actions_.erase(actions_.begin());
    action();
  }
}

size_t ManualExecutor::step() {
  if (!actions_.empty()) run_due_actions();
  advance_time(ns_per_step_);
  ++steps_;
  if (nics_.empty()) return 0;
  Nic* n = nics_[rng_() % nics_.size()];
  return n->poll_once(1);
}

bool ManualExecutor::run_until(const std::function<bool()>& pred, uint64_t max_steps) {
  for (uint64_t i = 0; i < max_steps; ++i) {
    if (pred()) return true;
    step();
  }
  return pred();
}

bool ManualExecutor::run_until_idle(uint64_t max_steps) {
  auto all_idle = [&] {
    for (Nic* n : nics_)
      if (!n->idle()) return false;
    return true;
  };
  for (uint64_t i = 0; i < max_steps; ++i) {
    if ((i & 15) == 0 && all_idle()) return true;
    step();
  }
  return all_idle();
}

}  // namespace hyperloop::soft

namespace hyperloop::soft {

// ---- FaultPlan -------------------------------------------------------------------------
void FaultPlan::note(uint64_t step, const std::string& what) {
  log_ += "step " + std::to_string(step) + ": " + what + "\n";
}

void FaultPlan::crash(uint64_t step, Nic& nic) {
  note(step, "crash " + nic.name());
  ex_.at_step(step, [&nic] { nic.crash(); });
}

void FaultPlan::cut(uint64_t step, Nic& a, Nic& b) {
  note(step, "cut " + a.name() + " <-> " + b.name());
  ex_.at_step(step, [this, &a, &b] { fabric_.set_link(a, b, false); });
}

void FaultPlan::heal(uint64_t step, Nic& a, Nic& b) {
  note(step, "heal " + a.name() + " <-> " + b.name());
  ex_.at_step(step, [this, &a, &b] { fabric_.set_link(a, b, true); });
}

void FaultPlan::link_faults(uint64_t step, Nic& a, Nic& b, Fabric::LinkFaults f) {
  note(step, "link " + a.name() + " <-> " + b.name() + ": drop " + std::to_string(f.drop) + ", delay " +
                 std::to_string(f.delay_ns) + " ns");
  ex_.at_step(step, [this, &a, &b, f] { fabric_.set_link_faults(a, b, f); });
}

void FaultPlan::custom(uint64_t step, std::string what, std::function<void()> action) {
  note(step, what);
  ex_.at_step(step, std::move(action));
}

void FaultPlan::random(uint64_t seed, uint64_t first, uint64_t last, size_t count, std::vector<Nic*> nics,
                       size_t max_crashes, std::function<void(size_t)> power_fail) {
  if (nics.size() < 2 || last <= first) return;
  std::mt19937_64 rng(seed);
  auto pick = [&](uint64_t n) { return rng() % n; };
  size_t crashes = 0;
  for (size_t k = 0; k < count; ++k) {
    const uint64_t step = first + pick(last - first);
    const size_t a = pick(nics.size());
    size_t b = pick(nics.size() - 1);
    if (b >= a) ++b;
    switch (pick(4)) {
      case 0:
        link_faults(step, *nics[a], *nics[b], {double(pick(30)) / 100.0, 0});
        link_faults(step + 1 + pick(20000), *nics[a], *nics[b], {0, 0});
        break;
      case 1:
        link_faults(step, *nics[a], *nics[b], {0, 1000 * (1 + pick(50))});
        link_faults(step + 1 + pick(20000), *nics[a], *nics[b], {0, 0});
        break;
      case 2:
        cut(step, *nics[a], *nics[b]);
        heal(step + 1 + pick(50000), *nics[a], *nics[b]);
        break;
      default:
        if (crashes >= max_crashes) break;
        ++crashes;
        if (power_fail && pick(2)) {
          custom(step, "power failure of host " + std::to_string(a), [power_fail, a] { power_fail(a); });
        } else {
          crash(step, *nics[a]);
        }
        break;
    }
  }
}

}  // namespace hyperloop::soft
