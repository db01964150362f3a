// migrate rm CTR [--force]
#include <iostream>
#include <memory>

#include "migrate/verbs.h"

namespace migrate {

namespace {
struct RmOptions {
  std::string container;
  bool force = false;
};
}  // namespace

void addRmVerb(CLI::App& app, CommonOptions& common) {
  auto o = std::make_shared<RmOptions>();
  auto* cmd = app.add_subcommand("rm", "Remove a container");
  cmd->add_option("container", o->container, "Container name")->required();
  cmd->add_flag("--force,-f", o->force, "Kill it first if it runs");
  cmd->callback([&common, o] {
    Client client(common.client);
    auto result = removeContainer(client, o->container, o->force);
    if (common.json()) return printJson(result);
    std::cout << "removed " << o->container << "\n";
  });
}

}  // namespace migrate
