// hyperloop::devices: open_device and list_devices, the by-name entry to the
// backends. It lives in a library of its own that links every backend this
// build has (rnic_soft now; rnic_verbs and rnic_mlx5 when rdma-core is found),
// so hyperloop::rnic stays backend-free and no backend registers itself from
// a static initializer (which the linker drops from a static library nobody
// references): the dispatch below names each backend's entry explicitly.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hyperloop/rnic.h"
#include "hyperloop/soft_rnic.h"
#ifdef HYPERLOOP_HAVE_VERBS
#include "hyperloop/verbs_rnic.h"
#endif
#ifdef HYPERLOOP_HAVE_MLX5
#include "hyperloop/log.h"
#include "hyperloop/mlx5_rnic.h"
#endif

namespace hyperloop::rnic {

Result<std::unique_ptr<Device>> open_device(std::string_view name) {
  if (name == "soft" || name.starts_with("soft:")) {
    soft::NicOptions opts;
    if (name.size() > 5) opts.name = std::string(name.substr(5));
    auto nic = soft::default_fabric().create_nic(opts);
    if (!nic.is_ok()) return nic.status();
    soft::default_executor().add(**nic);
    return std::unique_ptr<Device>(std::move(nic).value());
  }
#ifdef HYPERLOOP_HAVE_VERBS
  // "verbs:NAME" forces standard verbs (rnic/verbs) on any rdma-core device.
  if (name.starts_with("verbs:")) return verbs::open(name.substr(6));
#ifdef HYPERLOOP_HAVE_MLX5
  // An mlx5 device opens through DevX (rnic/mlx5: cross-channel, raw rings);
  // where the kernel or firmware refuses a DevX context, through verbs.
  for (const auto& n : mlx5dev::device_names()) {
    if (n != name) continue;
    auto m = mlx5dev::open(name);
    if (m.is_ok() || m.status().code() != StatusCode::kNotSupported) return m;
    log(LogLevel::kWarn, "devices", "mlx5_devx_refused",
        {{"device", std::string(name)}, {"error", m.status().to_string()}, {"fallback", "rnic/verbs"}});
    break;
  }
#endif
  // Every other rdma-core device (rxe0, ...) through standard verbs.
  auto d = verbs::open(name);
  if (d.is_ok() || d.status().code() != StatusCode::kNotFound) return d;
  return not_found("no RNIC named '" + std::string(name) + "' (this machine has: " + [] {
    std::string s;
    for (const auto& n : list_devices()) s += (s.empty() ? "" : ", ") + n;
    return s;
  }() + ")");
#else
  return not_found("no RNIC named '" + std::string(name) +
                   "' (this build has: soft; rdma-core backends are not built in)");
#endif
}

std::vector<std::string> list_devices() {
  std::vector<std::string> out{"soft"};
#ifdef HYPERLOOP_HAVE_VERBS
  for (auto& n : verbs::device_names()) out.push_back(std::move(n));
#endif
  return out;
}

}  // namespace hyperloop::rnic
