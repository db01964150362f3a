#include <cstdio>
#include <iostream>

#include "common/phase.h"
#include "migrate/verbs.h"

namespace migrate {

using nlohmann::json;

void printJson(const json& value) { std::cout << value.dump(2) << "\n"; }

std::string humanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, unit == 0 ? "%.0f %s" : "%.1f %s", bytes, units[unit]);
  return buffer;
}

std::string humanMs(double ms) {
  char buffer[32];
  if (ms < 1000) std::snprintf(buffer, sizeof buffer, "%.0f ms", ms);
  else std::snprintf(buffer, sizeof buffer, "%.2f s", ms / 1000);
  return buffer;
}

bool migrationSucceeded(const json& m) {
  std::string state = m.value("state", "");
  return state == "succeeded" || state == "committed";
}

bool migrationFinished(const json& m) {
  std::string state = m.value("state", "");
  // `committed`: the container runs on the target; only the source's cleanup
  // is left, which normally follows at once (then `succeeded`). Only when
  // that cleanup failed (an error is recorded; the coordinator retries it)
  // do we stop waiting for it.
  bool cleanupPending = state == "committed" && m.contains("error") && m["error"].is_string() &&
                        !m["error"].get<std::string>().empty();
  // Likewise `rolling-back` once the source runs the container again and only
  // the (unreachable) target's leftovers wait to be removed.
  bool targetCleanupPending = state == "rolling-back" && m.contains("stats") && m["stats"].is_object() &&
                              m["stats"].value("targetCleanupPending", false);
  return state == "succeeded" || cleanupPending || targetCleanupPending || state == "rolled-back" ||
         state == "failed" || state == "cancelled" || state == "abandoned";
}

bool migrationPaused(const json& m) { return m.value("state", "") == "paused"; }

namespace {
double number(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}
}  // namespace

void printMigrationReport(const json& m) {
  const json stats = m.value("stats", json::object());
  std::string head = m.value("container", "?") + ": " + m.value("source", "?") + " -> " + m.value("target", "?");
  if (migrationSucceeded(m)) {
    std::cout << "migrated " << head << " in " << humanMs(number(stats, "totalMs")) << " (" << m.value("id", "")
              << ")\n";
    std::cout << "  state           " << m.value("state", "?") << "\n";
  } else {
    std::cout << m.value("state", "?") << " " << head << " (" << m.value("id", "") << ")\n";
    if (m.contains("error") && m["error"].is_string()) {
      std::cout << "  error           " << m["error"].get<std::string>() << " [" << m.value("errorKind", json("")).get<std::string>()
                << "]\n";
    }
  }
  if (stats.contains("downtimeMs")) {
    std::cout << "  downtime        " << humanMs(number(stats, "downtimeMs")) << " (frozen on " << m.value("source", "?")
              << " until running on " << m.value("target", "?") << ")\n";
  }
  if (stats.contains("downtimeBudget") && stats["downtimeBudget"].is_object()) {
    const json& budget = stats["downtimeBudget"];
    std::cout << "  budget          " << humanMs(number(budget, "budgetMs")) << ", moved "
              << budget.value("mode", "?") << ": " << budget.value("reason", "") << "\n";
    if (budget.contains("basis")) std::cout << "                  (" << budget.value("basis", "") << ")\n";
    if (budget.contains("met")) std::cout << "                  " << (budget["met"].get<bool>() ? "met" : "missed") << "\n";
  }
  if (stats.contains("bytesWire")) {
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.2fx", number(stats, "compressionRatio"));
    std::cout << "  bytes on wire   " << humanBytes(number(stats, "bytesWire")) << " (raw "
              << humanBytes(number(stats, "bytesRaw")) << ", compression " << ratio << ")\n";
  }
  if (stats.contains("bytesPages")) {
    std::cout << "  post-copy       " << humanBytes(number(stats, "bytesPages")) << " of memory followed in "
              << humanMs(number(stats, "pagesMs")) << " (the container ran on " << m.value("target", "?")
              << " meanwhile)\n";
  }
  if (stats.contains("phases") && stats["phases"].is_object()) {
    std::cout << "  phases         ";
    for (Phase phase : kTimedPhases) {
      std::string name(phaseName(phase));
      if (stats["phases"].contains(name)) std::cout << " " << name << " " << humanMs(number(stats["phases"], name.c_str()));
    }
    std::cout << "\n";
  }
  if (stats.contains("criu") && stats["criu"].is_object() && number(stats["criu"], "frozenMs") > 0) {
    const json& criu = stats["criu"];
    std::cout << "  criu            dump froze it " << humanMs(number(criu, "frozenMs")) << " (memdump "
              << humanMs(number(criu, "memdumpMs")) << ", memwrite " << humanMs(number(criu, "memwriteMs")) << ")";
    const json target = stats.value("agentPhases", json::object()).value("target", json::object());
    if (target.contains("criu-restore")) std::cout << ", restore " << humanMs(number(target, "criu-restore"));
    std::cout << "\n";
  }
  if (m.value("state", "") == "committed" && m.contains("error") && m["error"].is_string()) {
    std::cout << "  note            " << m["error"].get<std::string>() << "\n";
  }
  if (stats.contains("kept")) {
    std::cout << "  kept            " << stats.value("kept", std::string()) << "'s copy; lost: "
              << stats.value("lost", std::string("(not recorded)")) << "\n";
  }
  if (migrationPaused(m)) {
    std::string id = m.value("id", "ID");
    std::cout << "  paused since    " << stats.value("pausedAt", std::string("?")) << " (switchover "
              << stats.value("switchoverAt", std::string("?")) << "); " << m.value("target", "?")
              << " runs it, nothing was rolled back\n"
              << "  next            the coordinator retries by itself; `migrate recover " << id
              << "` retries now; `migrate abandon " << id << " --keep source|target` drops a side\n";
  }
}

}  // namespace migrate
