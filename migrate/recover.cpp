// migrate recover ID
#include <iostream>
#include <memory>

#include "migrate/verbs.h"

namespace migrate {

void addRecoverVerb(CLI::App& app, CommonOptions& common) {
  auto id = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("recover", "Retry a paused post-copy migration's recovery now");
  cmd->add_option("id", *id, "Migration id")->required();
  cmd->callback([&common, id] {
    Client client(common.client);
    auto m = recoverMigration(client, *id);
    if (common.json()) return printJson(m);
    std::cout << "asked " << *id << " to recover now (" << m.value("state", "")
              << "); `migrate status " << *id << "` shows whether its pages flow again\n";
  });
}

}  // namespace migrate
