// The process-wide log sink (hyperloop/log.h).
#include "hyperloop/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <utility>

namespace hyperloop {

namespace {

// A sink and the number of log() calls inside it (guarded by SinkState::mu).
struct Installed {
  explicit Installed(LogSink f) : fn(std::move(f)) {}
  const LogSink fn;
  int calls = 0;
};

struct SinkState {
  std::mutex mu;
  std::condition_variable idle;  // some Installed::calls dropped to 0
  std::shared_ptr<Installed> sink;
  std::atomic<uint8_t> min_level{uint8_t(LogLevel::kWarn)};
};

SinkState& state() {
  static SinkState* s = [] {
    auto* st = new SinkState();  // never destroyed: logging may happen during exit
    st->sink = std::make_shared<Installed>(stderr_log_sink());
    return st;
  }();
  return *s;
}

bool needs_quotes(std::string_view v) {
  if (v.empty()) return true;
  for (unsigned char c : v)
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f) return true;
  return false;
}

void append_value(std::string& out, std::string_view v) {
  if (!needs_quotes(v)) {
    out += v;
    return;
  }
  static const char* hex = "0123456789abcdef";
  out += '"';
  for (unsigned char c : v) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c < ' ' || c >= 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += char(c);
    }
  }
  out += '"';
}

}  // namespace

std::string_view log_level_name(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "?";
}

void set_log_sink(LogSink sink, LogLevel min_level) {
  auto& s = state();
  auto next = sink ? std::make_shared<Installed>(std::move(sink)) : nullptr;
  std::unique_lock<std::mutex> l(s.mu);
  std::shared_ptr<Installed> old = std::exchange(s.sink, std::move(next));
  s.min_level.store(uint8_t(min_level), std::memory_order_relaxed);
  // No thread may still be inside the old sink once this returns: a sink
  // often captures an object (a test's log capture) destroyed right after it
  // is replaced. ThreadSanitizer found that use after free in control_test.
  if (old) s.idle.wait(l, [&] { return old->calls == 0; });
}

void reset_log_sink() { set_log_sink(stderr_log_sink(), LogLevel::kWarn); }

LogLevel log_min_level() { return LogLevel(state().min_level.load(std::memory_order_relaxed)); }

void log(LogLevel level, std::string_view component, std::string_view event, std::initializer_list<LogField> fields) {
  auto& s = state();
  if (uint8_t(level) < s.min_level.load(std::memory_order_relaxed)) return;
  std::shared_ptr<Installed> sink;
  {
    std::lock_guard<std::mutex> l(s.mu);
    sink = s.sink;
    if (!sink) return;
    ++sink->calls;
  }
  LogRecord r;
  r.level = level;
  r.component = component;
  r.event = event;
  r.fields = std::span<const LogField>(fields.begin(), fields.size());
  r.unix_ns = uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count());
  // Called without the lock: sinks run concurrently, and may log themselves.
  struct Leave {
    SinkState& s;
    Installed& in;
    ~Leave() {
      std::lock_guard<std::mutex> l(s.mu);
      if (--in.calls == 0) s.idle.notify_all();
    }
  } leave{s, *sink};
  sink->fn(r);
}

std::string format_logfmt(const LogRecord& r) {
  std::string out;
  out.reserve(128);
  char ts[32];
  std::snprintf(ts, sizeof ts, "%llu.%06llu", static_cast<unsigned long long>(r.unix_ns / 1'000'000'000ull),
                static_cast<unsigned long long>((r.unix_ns / 1000) % 1'000'000ull));
  out += "ts=";
  out += ts;
  out += " level=";
  out += log_level_name(r.level);
  out += " component=";
  append_value(out, r.component);
  out += " event=";
  append_value(out, r.event);
  for (const auto& f : r.fields) {
    out += ' ';
    // Keys are the library's own identifiers, but keep them one token too.
    for (char c : f.key) out += (c > ' ' && c != '=' && c != '"' && c < 0x7f) ? c : '_';
    out += '=';
    append_value(out, f.value);
  }
  return out;
}

LogSink stderr_log_sink() {
  return [](const LogRecord& r) {
    std::string line = format_logfmt(r);
    line += '\n';
    // One write per record: lines from several threads do not interleave.
    const char* p = line.data();
    size_t left = line.size();
    while (left) {
      const ssize_t n = ::write(STDERR_FILENO, p, left);
      if (n <= 0) return;
      p += n;
      left -= size_t(n);
    }
  };
}

}  // namespace hyperloop
