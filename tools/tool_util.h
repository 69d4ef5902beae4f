// tools/tool_util.h: what more than one of the operator's programs parses
// the same way (flags' values, secrets). Header-only, private to tools/.
#pragma once

#include <string>
#include <string_view>

namespace hyperloop::tools {

// Hex text to bytes; false if it is not a non-empty, even number of hex digits.
inline bool parse_hex(std::string_view hex, std::string* out) {
  if (hex.empty() || hex.size() % 2) return false;
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  out->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nib(hex[i]), lo = nib(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(char(hi << 4 | lo));
  }
  return true;
}

}  // namespace hyperloop::tools
