// The verbs of the `migrate` CLI. Each verb file parses into its options
// struct and calls one function of the client library (migrate/client.h);
// main() builds the command table from these explicitly.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "migrate/client.h"

namespace migrate {

struct CommonOptions {
  ClientOptions client;
  std::string output = "text";  // text | json
  bool json() const { return output == "json"; }
};

// A failure whose details the verb already printed (its JSON document says
// what went wrong): main() exits non-zero without printing a second one.
class ReportedFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

void addMoveVerb(CLI::App& app, CommonOptions& common);  // `migrate move CTR --to HOST`, the default verb
void addHostsVerb(CLI::App& app, CommonOptions& common);
void addPsVerb(CLI::App& app, CommonOptions& common);
void addRunVerb(CLI::App& app, CommonOptions& common);
void addLogsVerb(CLI::App& app, CommonOptions& common);
void addRmVerb(CLI::App& app, CommonOptions& common);
void addStatusVerb(CLI::App& app, CommonOptions& common);
void addCancelVerb(CLI::App& app, CommonOptions& common);
void addRecoverVerb(CLI::App& app, CommonOptions& common);
void addAbandonVerb(CLI::App& app, CommonOptions& common);
void addHistoryVerb(CLI::App& app, CommonOptions& common);
void addEvacuateVerb(CLI::App& app, CommonOptions& common);

// Shared rendering (output.cpp).
void printJson(const nlohmann::json& value);
std::string humanBytes(double bytes);
std::string humanMs(double ms);
// The final report of a migration: outcome, downtime, bytes, phases.
void printMigrationReport(const nlohmann::json& migration);
bool migrationSucceeded(const nlohmann::json& migration);
bool migrationFinished(const nlohmann::json& migration);
// Post-copy past switchover, stopped: it waits for recovery or an operator.
bool migrationPaused(const nlohmann::json& migration);

}  // namespace migrate
