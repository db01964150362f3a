// The coordinator's durable memory (SQLite, WAL): every migration and its state
// transitions, and which host owns each container.
//
// The owners table is the commit point of a migration: once it names the
// target, the container lives there, whatever else fails afterwards. Every
// transition is committed here BEFORE the coordinator acts on it, so a
// restarted coordinator finds each unfinished migration in a state that says
// what may already have happened (DESIGN.md "Any failure before commit...").
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace migrate {

// Ordered up to Committed: a later state means more may have happened on the
// hosts (Paused is past Restoring: the target runs the container). The states
// after Committed are compared with nothing.
enum class MigrationState {
  Pending,        // Journalled, nothing sent to any agent.
  Prechecking,    // Read-only checks (an image may be sent to the target).
  Preparing,      // prepareReceive sent: the target may hold a reservation.
  Checkpointing,  // checkpointAndSend sent: the source may be frozen or dumped.
  Restoring,      // restore sent: the target may be running the container (post-copy: its pages still come).
  Paused,         // Post-copy past switchover, pages stopped: waits for recovery or an operator; never rolled back by itself.
  Committed,      // The owners table names the target; the source may still hold its copy.
  Succeeded,      // Final: the source cleaned up (commitSource done).
  RollingBack,    // Undoing: abortReceive on the target, then rollbackSource.
  RolledBack,     // Final: the container runs on the source again.
  Failed,         // Final: failed before anything was touched.
  Cancelled,      // Final: cancelled before anything was touched.
  Abandoned,      // Final: an operator dropped one side of a paused migration (stats.kept, stats.lost).
};

std::string_view stateName(MigrationState state);
// Throws Error(InvalidInput) for an unknown name (a journal from a newer build).
MigrationState stateFromName(std::string_view name);
bool isFinal(MigrationState state);

struct MigrationRecord {
  std::string id;
  std::string container;
  std::string source;
  std::string target;
  MigrationState state = MigrationState::Pending;
  nlohmann::json options = nlohmann::json::object();
  std::string error;
  std::string errorKind;  // kindName() of the error; empty when none.
  nlohmann::json stats = nlohmann::json::object();
  int64_t createdAtMs = 0;  // Unix epoch milliseconds.
  int64_t updatedAtMs = 0;
};

class Journal {
 public:
  // Opens (creating if needed) the database at `path`.
  explicit Journal(const std::filesystem::path& path);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Throws Error(Conflict) if the id exists.
  void insert(const MigrationRecord& record);
  void setState(const std::string& id, MigrationState state);
  // Sets state and error together; an empty `error` clears error and kind.
  void setFailure(const std::string& id, MigrationState state, const std::string& error, ErrorKind kind);
  void setStats(const std::string& id, const nlohmann::json& stats);
  // A migration's mode chosen after it started (a downtime budget's switch
  // to post-copy).
  void setOptions(const std::string& id, const nlohmann::json& options);
  // The commit point: owner := target and state := committed, in one transaction.
  void recordCommit(const std::string& id, const std::string& container, const std::string& target);

  std::optional<MigrationRecord> findIfExists(const std::string& id);
  MigrationRecord get(const std::string& id);  // Error(NotFound)
  // Newest first.
  std::vector<MigrationRecord> history(size_t limit);
  // Every migration not in a final state, oldest first.
  std::vector<MigrationRecord> unfinished();

  std::optional<std::string> ownerIfExists(const std::string& container);
  void setOwner(const std::string& container, const std::string& host);
  void removeOwner(const std::string& container);
  std::map<std::string, std::string> owners();

 private:
  class Statement;
  void exec(const char* sql);
  MigrationRecord readRecord(Statement& statement);
  void update(const std::string& id, const char* sql, const std::function<void(Statement&)>& bind);

  std::filesystem::path path_;
  sqlite3* db_ = nullptr;
  std::mutex mutex_;  // One connection, one transaction at a time.
};

int64_t nowEpochMs();

}  // namespace migrate
