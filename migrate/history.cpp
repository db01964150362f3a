// migrate history [--limit N]
#include <cstdio>
#include <memory>

#include "migrate/verbs.h"

namespace migrate {

void addHistoryVerb(CLI::App& app, CommonOptions& common) {
  auto limit = std::make_shared<size_t>(20);
  auto* cmd = app.add_subcommand("history", "Recent migrations, newest first");
  cmd->add_option("--limit", *limit, "How many")->capture_default_str();
  cmd->callback([&common, limit] {
    Client client(common.client);
    auto list = migrationHistory(client, *limit);
    if (common.json()) return printJson(list);
    std::printf("%-20s %-16s %-10s %-10s %-12s %-10s %s\n", "ID", "CONTAINER", "SOURCE", "TARGET", "STATE", "DOWNTIME",
                "CREATED");
    for (auto& m : list) {
      auto stats = m.value("stats", nlohmann::json::object());
      std::string downtime = stats.contains("downtimeMs") ? humanMs(stats.value("downtimeMs", 0.0)) : "-";
      std::printf("%-20s %-16s %-10s %-10s %-12s %-10s %s\n", m.value("id", "").c_str(), m.value("container", "").c_str(),
                  m.value("source", "").c_str(), m.value("target", "").c_str(), m.value("state", "").c_str(),
                  downtime.c_str(), m.value("createdAt", "").c_str());
      // A paused one waits for someone: say why under its row.
      if (migrationPaused(m) && m.contains("error") && m["error"].is_string()) {
        std::printf("  paused: %s\n", m["error"].get<std::string>().c_str());
      }
    }
  });
}

}  // namespace migrate
