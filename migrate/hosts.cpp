// migrate hosts: every host the coordinator knows, up or down.
#include <cstdio>

#include "migrate/verbs.h"

namespace migrate {

void addHostsVerb(CLI::App& app, CommonOptions& common) {
  auto* cmd = app.add_subcommand("hosts", "List hosts, their state, versions and load");
  cmd->callback([&common] {
    Client client(common.client);
    auto hosts = listHosts(client);
    if (common.json()) return printJson(hosts);
    std::printf("%-12s %-5s %-16s %-8s %-8s %-10s %-12s %s\n", "HOST", "UP", "ADDRESS", "CRIU", "RUNC", "CONTAINERS",
                "MEM-AVAIL", "LOAD");
    for (auto& h : hosts) {
      auto load = h.value("load", nlohmann::json::object());
      auto versions = h.value("versions", nlohmann::json::object());
      std::printf("%-12s %-5s %-16s %-8s %-8s %-10zu %-12s %.2f\n", h.value("name", "").c_str(),
                  h.value("up", false) ? "yes" : "no", h.value("dataAddress", "").c_str(),
                  versions.value("criu", "").c_str(), versions.value("runc", "").c_str(),
                  h.value("containers", nlohmann::json::array()).size(),
                  humanBytes(load.value("memAvailableBytes", 0.0)).c_str(), load.value("loadAvg1", 0.0));
    }
  });
}

}  // namespace migrate
