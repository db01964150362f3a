// migrate run --on HOST --name N [--userns auto|host] [--user UID[:GID]] IMAGE [CMD...]
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
  cmd->add_option("--userns", o->userns,
                  "auto: a user namespace of its own, 65536 ids the host's agent maps it to (container root is an "
                  "unprivileged host uid; the mapping moves with it, and a target that has it taken refuses the "
                  "migration); host: the host's (container root is host root)")
      ->check(CLI::IsMember({"auto", "host"}))
      ->capture_default_str();
  cmd->add_option("--user,-u", o->user, "UID[:GID] its command runs as, numeric, inside the container "
                                        "(default: the image's user)");
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
