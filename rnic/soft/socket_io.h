// Private to rnic/soft: blocking whole-buffer socket I/O for the TCP wire
// (tcp.cc). Not part of the public API, not installed.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstddef>

namespace hyperloop::internal {

// Writes all len bytes (no SIGPIPE). False if the connection failed.
inline bool write_full(int fd, const void* buf, size_t len) {
  const char* p = static_cast<const char*>(buf);
  while (len) {
    const ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= size_t(n);
  }
  return true;
}

// Reads exactly len bytes. False on EOF or error.
inline bool read_full(int fd, void* buf, size_t len) {
  char* p = static_cast<char*>(buf);
  while (len) {
    const ssize_t n = ::recv(fd, p, len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= size_t(n);
  }
  return true;
}

inline void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace hyperloop::internal
