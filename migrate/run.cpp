// migrate run --on HOST --name N IMAGE [CMD...]
#include <iostream>
#include <memory>

#include "migrate/verbs.h"

namespace migrate {

void addRunVerb(CLI::App& app, CommonOptions& common) {
  auto o = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("run", "Run a container on a host");
  cmd->add_option("--on", o->host, "Host (default: the one with the most free memory)");
  cmd->add_option("--name", o->name, "Container name, unique in the cluster")->required();
  cmd->add_option("--env,-e", o->env, "KEY=value (repeatable)");
  cmd->add_flag("--tcp-established,!--no-tcp-established", o->tcpEstablished,
                "Default for its migrations: keep established TCP connections");
  cmd->add_option("image", o->image, "Image reference or digest")->required();
  cmd->add_option("command", o->args, "Command and arguments");
  // Everything after the image belongs to the container's command.
  cmd->positionals_at_end();
  cmd->prefix_command(false);
  cmd->callback([&common, o] {
    Client client(common.client);
    auto container = runContainer(client, *o);
    if (common.json()) return printJson(container);
    std::cout << container.value("name", o->name) << " running on " << container.value("host", "?");
    if (!container.value("ip", "").empty()) std::cout << " at " << container.value("ip", "");
    std::cout << "\n";
  });
}

}  // namespace migrate
