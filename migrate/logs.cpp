// migrate logs CTR [--tail N]
#include <iostream>
#include <memory>

#include "migrate/verbs.h"

namespace migrate {

namespace {
struct LogsOptions {
  std::string container;
  uint32_t tail = 0;
};
}  // namespace

void addLogsVerb(CLI::App& app, CommonOptions& common) {
  auto o = std::make_shared<LogsOptions>();
  auto* cmd = app.add_subcommand("logs", "Print a container's log, wherever it runs");
  cmd->add_option("container", o->container, "Container name")->required();
  cmd->add_option("--tail", o->tail, "Last N lines (0: all)");
  cmd->callback([&common, o] {
    Client client(common.client);
    auto logs = containerLogs(client, o->container, o->tail);
    if (common.json()) return printJson(logs);
    std::cout << logs.value("logs", "");
  });
}

}  // namespace migrate
