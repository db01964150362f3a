// migrate CTR --to HOST: start a migration and follow it to the end.
#include <unistd.h>

#include <iostream>
#include <memory>
#include <thread>

#include "common/duration.h"
#include "common/error.h"
#include "migrate/verbs.h"

namespace migrate {

using nlohmann::json;

namespace {

struct MoveVerbOptions {
  MoveOptions move;
  bool detach = false;
};

// One line on a terminal, rewritten in place; plain lines per phase otherwise.
class ProgressLine {
 public:
  ProgressLine() : tty_(::isatty(STDERR_FILENO)) {}
  ~ProgressLine() { clear(); }

  void update(const json& m) {
    std::string phase = m.value("phase", "");
    if (!tty_) {
      if (phase != lastPhase_) std::cerr << "phase: " << phase << "\n";
      lastPhase_ = phase;
      return;
    }
    double done = m.value("bytesDone", 0.0), total = m.value("bytesTotal", 0.0), rate = m.value("rateBytesPerSec", 0.0);
    std::string line = phase;
    if (done > 0) {
      line += "  " + humanBytes(done);
      if (total > 0) line += " / " + humanBytes(total);
      if (rate > 0) line += "  " + humanBytes(rate) + "/s";
      if (m.contains("etaSeconds") && m["etaSeconds"].is_number()) {
        line += "  ETA " + std::to_string(static_cast<int>(m["etaSeconds"].get<double>() + 0.5)) + "s";
      }
    }
    std::cerr << "\r\033[K" << line << std::flush;
    shown_ = true;
  }

  void clear() {
    if (tty_ && shown_) std::cerr << "\r\033[K" << std::flush;
    shown_ = false;
  }

 private:
  bool tty_;
  bool shown_ = false;
  std::string lastPhase_;
};

void runMove(const CommonOptions& common, const MoveVerbOptions& o) {
  Client client(common.client);
  std::string id = startMigration(client, o.move)["id"];
  if (o.detach) {
    if (common.json()) printJson({{"id", id}});
    else std::cout << id << "\n";
    return;
  }
  if (!common.json()) std::cerr << "migration " << id << ": " << o.move.container << " -> " << o.move.target << "\n";
  json m;
  {
    ProgressLine progress;
    for (;;) {
      m = migrationStatus(client, id);
      // Paused: the coordinator goes on trying; the report says how to help.
      if (migrationFinished(m) || migrationPaused(m)) break;
      if (!common.json()) progress.update(m);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  if (common.json()) printJson(m);
  else printMigrationReport(m);
  if (migrationSucceeded(m)) return;
  // The reason goes on the first line in both forms: a reader of a log sees
  // it without parsing the JSON report.
  auto why = "migration " + id + " " + m.value("state", "") + ": " +
             (m["error"].is_string() ? m["error"].get<std::string>() : std::string("no reason given"));
  if (common.json()) throw ReportedFailure(why);
  fail(kindFromName(m.value("errorKind", json("failed")).is_string() ? m["errorKind"].get<std::string>() : "failed"), why);
}

}  // namespace

void addMoveVerb(CLI::App& app, CommonOptions& common) {
  auto o = std::make_shared<MoveVerbOptions>();
  auto* cmd = app.add_subcommand("move", "Live-migrate a container to another host (the default verb: `migrate CTR --to HOST`)");
  cmd->add_option("container", o->move.container, "Container name")->required();
  cmd->add_option("--to", o->move.target, "Target host")->required();
  cmd->add_flag("--tcp-established,!--no-tcp-established", o->move.tcpEstablished,
                "Checkpoint established TCP connections (default on)");
  cmd->add_flag("--leave-running", o->move.leaveRunning, "Keep the source running (a copy, for tests)");
  cmd->add_flag("--postcopy", o->move.postCopy,
                "Post-copy: run on the target first, memory follows on demand (downtime independent of memory "
                "size; the source host must stay up until the last page went)");
  cmd->add_option_function<std::string>(
      "--max-downtime", [o](const std::string& text) { o->move.maxDowntimeMs = parseDurationMs(text); },
      "Downtime budget (500ms, 2s): estimate stop-and-copy's downtime first and move post-copy when it would "
      "be missed (stats.downtimeBudget says what was estimated and chosen)");
  cmd->add_flag("--detach", o->detach, "Print the migration id and return at once");
  cmd->callback([&common, o] { runMove(common, *o); });
}

}  // namespace migrate
