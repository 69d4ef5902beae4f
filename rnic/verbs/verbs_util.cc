// What rnic/verbs and rnic/mlx5 share (see verbs_util.h).
#include "verbs_util.h"

#include <endian.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "hyperloop/clock.h"

namespace hyperloop::verbs::util {

std::string errno_text(int e) { return std::string(std::strerror(e)); }

Status from_errno(int e, const std::string& what) {
  e = e < 0 ? -e : e;
  const std::string m = what + ": " + errno_text(e);
  switch (e) {
    case ENOMEM:
    case ENOSPC:
    case EMFILE:
    case ENFILE:
    case EAGAIN: return resource_exhausted(m);
    case EINVAL: return invalid_argument(m);
    case EOPNOTSUPP:
    case ENOSYS: return not_supported(m);
    case EPERM:
    case EACCES: return permission_denied(m);
    case EFAULT: return invalid_argument(m);
    case ENODEV:
    case ENXIO:
    case EIO: return unavailable(m);
    default: return internal_error(m);
  }
}

uint32_t floor_pow2(uint64_t v) {
  if (v == 0) return 0;
  uint64_t p = 1;
  while (p * 2 <= v && p * 2 <= (1ull << 31)) p *= 2;
  return uint32_t(p);
}

uint32_t random_psn() {
  uint32_t v = 0;
  if (getrandom(&v, sizeof v, 0) != sizeof v) v = uint32_t(monotonic_ns());
  return v & 0xffffff;
}

int choose_gid(ibv_context* ctx, uint8_t port, int table_len) {
  int any_v2 = -1;
  for (int i = 0; i < table_len; ++i) {
    ibv_gid_entry e{};
    if (ibv_query_gid_ex(ctx, port, uint32_t(i), &e, 0) != 0) continue;
    if (e.gid_type != IBV_GID_TYPE_ROCE_V2) continue;
    const uint8_t* g = e.gid.raw;
    static const uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(g, v4_prefix, 12) == 0) return i;
    if (any_v2 < 0) any_v2 = i;
  }
  return any_v2 >= 0 ? any_v2 : 0;
}

Result<std::array<uint8_t, 6>> gid_mac(ibv_context* ctx, uint8_t port, int index) {
  ibv_gid_entry e{};
  if (int rc = ibv_query_gid_ex(ctx, port, uint32_t(index), &e, 0))
    return from_errno(rc, "ibv_query_gid_ex(GID " + std::to_string(index) + ")");
  char ifname[IF_NAMESIZE] = {};
  if (e.ndev_ifindex == 0 || !if_indextoname(e.ndev_ifindex, ifname))
    return not_found("GID " + std::to_string(index) + " has no network device");
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return unavailable("socket: " + errno_text(errno));
  ifreq r{};
  std::memcpy(r.ifr_name, ifname, strnlen(ifname, IF_NAMESIZE - 1));
  const int rc = ioctl(fd, SIOCGIFHWADDR, &r);
  const int err = errno;
  close(fd);
  if (rc != 0) return unavailable(std::string("SIOCGIFHWADDR(") + ifname + "): " + errno_text(err));
  std::array<uint8_t, 6> mac{};
  std::memcpy(mac.data(), r.ifr_hwaddr.sa_data, 6);
  return mac;
}

namespace {
constexpr char kAddrMagic[4] = {'H', 'L', 'V', '1'};
constexpr uint32_t kAddrSize = 32;
constexpr uint32_t kAddrSizeWithMac = 38;
}  // namespace

rnic::QpAddress encode_addr(const PeerAddr& a) {
  rnic::QpAddress out;
  auto* p = reinterpret_cast<uint8_t*>(out.bytes.data());
  std::memcpy(p, kAddrMagic, 4);
  const uint32_t qpn = htobe32(a.qpn), psn = htobe32(a.psn);
  const uint16_t lid = htobe16(a.lid);
  std::memcpy(p + 4, &qpn, 4);
  std::memcpy(p + 8, &psn, 4);
  std::memcpy(p + 12, &lid, 2);
  p[14] = a.mtu;
  p[15] = a.link_layer;
  std::memcpy(p + 16, a.gid.raw, 16);
  out.size = kAddrSize;
  if (a.has_mac) {
    std::memcpy(p + kAddrSize, a.mac.data(), 6);
    out.size = kAddrSizeWithMac;
  }
  return out;
}

bool decode_addr(const rnic::QpAddress& in, PeerAddr* a) {
  if (in.size != kAddrSize && in.size != kAddrSizeWithMac) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(in.bytes.data());
  if (std::memcmp(p, kAddrMagic, 4) != 0) return false;
  uint32_t qpn, psn;
  uint16_t lid;
  std::memcpy(&qpn, p + 4, 4);
  std::memcpy(&psn, p + 8, 4);
  std::memcpy(&lid, p + 12, 2);
  a->qpn = be32toh(qpn);
  a->psn = be32toh(psn);
  a->lid = be16toh(lid);
  a->mtu = p[14];
  a->link_layer = p[15];
  std::memcpy(a->gid.raw, p + 16, 16);
  a->has_mac = in.size == kAddrSizeWithMac;
  a->mac = {};
  if (a->has_mac) std::memcpy(a->mac.data(), p + kAddrSize, 6);
  return a->qpn <= 0xffffff && a->psn <= 0xffffff && a->mtu >= IBV_MTU_256 && a->mtu <= IBV_MTU_4096 &&
         (a->link_layer == IBV_LINK_LAYER_ETHERNET || a->link_layer == IBV_LINK_LAYER_INFINIBAND);
}

VerbsMr::~VerbsMr() {
  if (mr_) ibv_dereg_mr(mr_);
}

Result<std::unique_ptr<rnic::MemoryRegion>> register_memory(ibv_pd* pd, void* addr, size_t length, uint32_t access,
                                                            const rnic::DeviceCaps& caps) {
  HL_RETURN_IF_ERROR(rnic::check_memory_registration(addr, length, access, caps));
  ibv_mr* mr = ibv_reg_mr(pd, addr, length, int(access));
  if (!mr) return from_errno(errno, "ibv_reg_mr(" + caps.name + ")");
  return std::unique_ptr<rnic::MemoryRegion>(std::make_unique<VerbsMr>(mr, access));
}

}  // namespace hyperloop::verbs::util
