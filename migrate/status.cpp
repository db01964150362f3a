// migrate status ID
#include <iostream>
#include <memory>

#include "migrate/verbs.h"

namespace migrate {

void addStatusVerb(CLI::App& app, CommonOptions& common) {
  auto id = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("status", "Show one migration");
  cmd->add_option("id", *id, "Migration id")->required();
  cmd->callback([&common, id] {
    Client client(common.client);
    auto m = migrationStatus(client, *id);
    if (common.json()) return printJson(m);
    if (migrationFinished(m) || migrationPaused(m)) return printMigrationReport(m);
    std::cout << m.value("state", "") << " " << m.value("container", "") << ": " << m.value("source", "") << " -> "
              << m.value("target", "") << " (" << *id << ")\n  phase           " << m.value("phase", "");
    if (m.value("bytesDone", 0.0) > 0) {
      std::cout << ", " << humanBytes(m.value("bytesDone", 0.0));
      if (m.value("bytesTotal", 0.0) > 0) std::cout << " / " << humanBytes(m.value("bytesTotal", 0.0));
      if (m.value("rateBytesPerSec", 0.0) > 0) std::cout << " at " << humanBytes(m.value("rateBytesPerSec", 0.0)) << "/s";
    }
    std::cout << "\n";
  });
}

}  // namespace migrate
