// migrate evacuate HOST [--to H1,H2] [--parallel N] [--postcopy]
#include <iostream>
#include <memory>

#include "migrate/verbs.h"

namespace migrate {

void addEvacuateVerb(CLI::App& app, CommonOptions& common) {
  auto o = std::make_shared<EvacuateOptions>();
  auto* cmd = app.add_subcommand("evacuate", "Migrate every running container off a host");
  cmd->add_option("host", o->host, "Host to drain")->required();
  cmd->add_option("--to", o->targets, "Target hosts (default: all others)")->delimiter(',');
  cmd->add_option("--parallel", o->parallel, "Migrations at once (default: the coordinator's)");
  cmd->add_flag("--postcopy", o->postCopy, "Post-copy migrations (short downtime; the host must stay up until done)");
  cmd->callback([&common, o] {
    Client client(common.client);
    auto result = evacuate(client, *o);
    if (common.json()) return printJson(result);
    auto ids = result.value("migrations", nlohmann::json::array());
    std::cout << "evacuating " << o->host << ": " << ids.size() << " migrations started\n";
    for (auto& id : ids) std::cout << "  " << id.get<std::string>() << "\n";
    for (auto& u : result.value("unplaced", nlohmann::json::array())) {
      std::cout << "  left in place: " << u.value("container", "") << ": " << u.value("reason", "") << "\n";
    }
    std::cout << "follow with `migrate status ID` or `migrate history`\n";
  });
}

}  // namespace migrate
