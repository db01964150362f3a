// migrate abandon ID --keep source|target
#include <iostream>
#include <memory>

#include "migrate/verbs.h"

namespace migrate {

namespace {

struct AbandonVerbOptions {
  std::string id;
  std::string keep;
};

}  // namespace

void addAbandonVerb(CLI::App& app, CommonOptions& common) {
  auto o = std::make_shared<AbandonVerbOptions>();
  auto* cmd = app.add_subcommand(
      "abandon", "Drop one side of a paused post-copy migration: the source's frozen copy runs again (losing the "
                 "target's writes since switchover), or the target's copy is kept (only once it has every page)");
  cmd->add_option("id", o->id, "Migration id")->required();
  cmd->add_option("--keep", o->keep, "The copy that goes on: source or target")
      ->required()
      ->check(CLI::IsMember({"source", "target"}));
  cmd->callback([&common, o] {
    Client client(common.client);
    auto m = abandonMigration(client, o->id, o->keep);
    if (common.json()) return printJson(m);
    auto stats = m.value("stats", nlohmann::json::object());
    std::string kept = o->keep == "source" ? m.value("source", "?") : m.value("target", "?");
    std::cout << "abandoned " << o->id << ": `" << m.value("container", "") << "` goes on from " << kept << "'s copy ("
              << m.value("state", "") << ")\n";
    std::cout << "  lost            " << stats.value("lost", std::string("(not recorded)")) << "\n";
    if (m.value("state", "") != "abandoned") {
      std::cout << "  the hosts' cleanup goes on; `migrate status " << o->id << "` shows when it is done\n";
    }
  });
}

}  // namespace migrate
