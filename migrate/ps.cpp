// migrate ps: containers across all hosts.
#include <cstdio>

#include "migrate/verbs.h"

namespace migrate {

void addPsVerb(CLI::App& app, CommonOptions& common) {
  auto* cmd = app.add_subcommand("ps", "List containers on every host");
  cmd->callback([&common] {
    Client client(common.client);
    auto containers = listContainers(client);
    if (common.json()) return printJson(containers);
    std::printf("%-20s %-12s %-13s %-16s %-8s %s\n", "NAME", "HOST", "STATE", "IP", "PID", "IMAGE");
    for (auto& c : containers) {
      std::string host = c.value("host", "");
      if (!c.value("hostUp", true)) host += " (down)";
      std::printf("%-20s %-12s %-13s %-16s %-8d %s\n", c.value("name", "").c_str(), host.c_str(),
                  c.value("state", "").c_str(), c.value("ip", "-").empty() ? "-" : c.value("ip", "-").c_str(),
                  c.value("pid", 0), c.value("image", "").c_str());
    }
  });
}

}  // namespace migrate
