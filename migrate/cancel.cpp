// migrate cancel ID
#include <iostream>
#include <memory>

#include "migrate/verbs.h"

namespace migrate {

void addCancelVerb(CLI::App& app, CommonOptions& common) {
  auto id = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("cancel", "Cancel a migration (before its restore starts)");
  cmd->add_option("id", *id, "Migration id")->required();
  cmd->callback([&common, id] {
    Client client(common.client);
    auto m = cancelMigration(client, *id);
    if (common.json()) return printJson(m);
    std::cout << "cancelling " << *id << " (" << m.value("state", "") << "); `migrate status " << *id
              << "` shows the outcome\n";
  });
}

}  // namespace migrate
