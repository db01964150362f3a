#include "coordinator/journal.h"

#include <chrono>

namespace migrate {

using nlohmann::json;

namespace {

struct StateName {
  MigrationState state;
  std::string_view name;
};

constexpr StateName kStateNames[] = {
    {MigrationState::Pending, "pending"},         {MigrationState::Prechecking, "prechecking"},
    {MigrationState::Preparing, "preparing"},     {MigrationState::Checkpointing, "checkpointing"},
    {MigrationState::Restoring, "restoring"},     {MigrationState::Paused, "paused"},
    {MigrationState::Committed, "committed"},
    {MigrationState::Succeeded, "succeeded"},     {MigrationState::RollingBack, "rolling-back"},
    {MigrationState::RolledBack, "rolled-back"},  {MigrationState::Failed, "failed"},
    {MigrationState::Cancelled, "cancelled"},     {MigrationState::Abandoned, "abandoned"},
};

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS migrations (
  id TEXT PRIMARY KEY,
  container TEXT NOT NULL,
  source TEXT NOT NULL,
  target TEXT NOT NULL,
  state TEXT NOT NULL,
  options TEXT NOT NULL DEFAULT '{}',
  error TEXT NOT NULL DEFAULT '',
  errorKind TEXT NOT NULL DEFAULT '',
  stats TEXT NOT NULL DEFAULT '{}',
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS migrations_by_time ON migrations(created_at);
CREATE TABLE IF NOT EXISTS owners (
  container TEXT PRIMARY KEY,
  host TEXT NOT NULL
);
)sql";

constexpr const char* kColumns =
    "id, container, source, target, state, options, error, errorKind, stats, created_at, updated_at";

}  // namespace

int64_t nowEpochMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view stateName(MigrationState state) {
  for (auto& s : kStateNames) {
    if (s.state == state) return s.name;
  }
  return "pending";
}

MigrationState stateFromName(std::string_view name) {
  for (auto& s : kStateNames) {
    if (s.name == name) return s.state;
  }
  fail(ErrorKind::InvalidInput, "journal: unknown migration state `" + std::string(name) + "`");
}

bool isFinal(MigrationState state) {
  return state == MigrationState::Succeeded || state == MigrationState::RolledBack ||
         state == MigrationState::Failed || state == MigrationState::Cancelled || state == MigrationState::Abandoned;
}

// A prepared statement, finalized when it goes out of scope.
class Journal::Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
      fail("journal: prepare `" + std::string(sql) + "`: " + sqlite3_errmsg(db));
    }
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int index, const std::string& value) {
    check(sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT));
    return *this;
  }
  Statement& bind(int index, int64_t value) {
    check(sqlite3_bind_int64(stmt_, index, value));
    return *this;
  }
  // True while there is a row to read.
  bool step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    if (rc == SQLITE_CONSTRAINT) fail(ErrorKind::Conflict, std::string("journal: ") + sqlite3_errmsg(db_));
    if (rc == SQLITE_FULL) fail(ErrorKind::Overloaded, std::string("journal: ") + sqlite3_errmsg(db_));
    fail(std::string("journal: ") + sqlite3_errmsg(db_));
  }
  std::string text(int column) {
    auto p = sqlite3_column_text(stmt_, column);
    return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(stmt_, column)) : std::string();
  }
  int64_t integer(int column) { return sqlite3_column_int64(stmt_, column); }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) fail(std::string("journal: bind: ") + sqlite3_errmsg(db_));
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

Journal::Journal(const std::filesystem::path& path) : path_(path) {
  int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string message = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    fail("journal: open " + path.string() + ": " + message);
  }
  sqlite3_busy_timeout(db_, 5000);
  try {
    exec("PRAGMA journal_mode=WAL");
    // FULL: a commit returns only once it is on disk, since the coordinator
    // acts on every transition right after writing it.
    exec("PRAGMA synchronous=FULL");
    exec(kSchema);
  } catch (...) {
    sqlite3_close(db_);
    throw;
  }
}

Journal::~Journal() { sqlite3_close(db_); }

void Journal::exec(const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    std::string text = message ? message : "unknown error";
    sqlite3_free(message);
    fail("journal " + path_.string() + ": " + text);
  }
}

void Journal::insert(const MigrationRecord& r) {
  std::lock_guard lock(mutex_);
  Statement s(db_, "INSERT INTO migrations (id, container, source, target, state, options, error, errorKind, stats, "
                   "created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
  int64_t now = nowEpochMs();
  s.bind(1, r.id).bind(2, r.container).bind(3, r.source).bind(4, r.target).bind(5, std::string(stateName(r.state)));
  s.bind(6, r.options.dump()).bind(7, r.error).bind(8, r.errorKind).bind(9, r.stats.dump());
  s.bind(10, r.createdAtMs ? r.createdAtMs : now).bind(11, r.updatedAtMs ? r.updatedAtMs : now);
  s.step();
}

void Journal::update(const std::string& id, const char* sql, const std::function<void(Statement&)>& bind) {
  std::lock_guard lock(mutex_);
  Statement s(db_, sql);
  bind(s);
  s.step();
  if (sqlite3_changes(db_) == 0) fail(ErrorKind::NotFound, "journal: no migration `" + id + "`");
}

void Journal::setState(const std::string& id, MigrationState state) {
  update(id, "UPDATE migrations SET state = ?1, updated_at = ?2 WHERE id = ?3", [&](Statement& s) {
    s.bind(1, std::string(stateName(state))).bind(2, nowEpochMs()).bind(3, id);
  });
}

void Journal::setFailure(const std::string& id, MigrationState state, const std::string& error, ErrorKind kind) {
  update(id, "UPDATE migrations SET state = ?1, error = ?2, errorKind = ?3, updated_at = ?4 WHERE id = ?5",
         [&](Statement& s) {
           s.bind(1, std::string(stateName(state))).bind(2, error);
           s.bind(3, error.empty() ? std::string() : std::string(kindName(kind)));
           s.bind(4, nowEpochMs()).bind(5, id);
         });
}

void Journal::setStats(const std::string& id, const json& stats) {
  update(id, "UPDATE migrations SET stats = ?1, updated_at = ?2 WHERE id = ?3",
         [&](Statement& s) { s.bind(1, stats.dump()).bind(2, nowEpochMs()).bind(3, id); });
}

void Journal::setOptions(const std::string& id, const json& options) {
  update(id, "UPDATE migrations SET options = ?1, updated_at = ?2 WHERE id = ?3",
         [&](Statement& s) { s.bind(1, options.dump()).bind(2, nowEpochMs()).bind(3, id); });
}

void Journal::recordCommit(const std::string& id, const std::string& container, const std::string& target) {
  std::lock_guard lock(mutex_);
  exec("BEGIN IMMEDIATE");
  try {
    Statement owner(db_, "INSERT INTO owners (container, host) VALUES (?1, ?2) "
                         "ON CONFLICT(container) DO UPDATE SET host = excluded.host");
    owner.bind(1, container).bind(2, target);
    owner.step();
    Statement state(db_, "UPDATE migrations SET state = ?1, updated_at = ?2 WHERE id = ?3");
    state.bind(1, std::string(stateName(MigrationState::Committed))).bind(2, nowEpochMs()).bind(3, id);
    state.step();
    if (sqlite3_changes(db_) == 0) fail(ErrorKind::NotFound, "journal: no migration `" + id + "`");
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

MigrationRecord Journal::readRecord(Statement& s) {
  MigrationRecord r;
  r.id = s.text(0);
  r.container = s.text(1);
  r.source = s.text(2);
  r.target = s.text(3);
  r.state = stateFromName(s.text(4));
  r.options = json::parse(s.text(5), nullptr, false);
  if (r.options.is_discarded()) r.options = json::object();
  r.error = s.text(6);
  r.errorKind = s.text(7);
  r.stats = json::parse(s.text(8), nullptr, false);
  if (r.stats.is_discarded()) r.stats = json::object();
  r.createdAtMs = s.integer(9);
  r.updatedAtMs = s.integer(10);
  return r;
}

std::optional<MigrationRecord> Journal::findIfExists(const std::string& id) {
  std::lock_guard lock(mutex_);
  Statement s(db_, (std::string("SELECT ") + kColumns + " FROM migrations WHERE id = ?1").c_str());
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return readRecord(s);
}

MigrationRecord Journal::get(const std::string& id) {
  auto record = findIfExists(id);
  if (!record) fail(ErrorKind::NotFound, "no migration `" + id + "`");
  return *record;
}

std::vector<MigrationRecord> Journal::history(size_t limit) {
  std::lock_guard lock(mutex_);
  Statement s(db_, (std::string("SELECT ") + kColumns +
                    " FROM migrations ORDER BY created_at DESC, rowid DESC LIMIT ?1")
                       .c_str());
  s.bind(1, static_cast<int64_t>(limit));
  std::vector<MigrationRecord> out;
  while (s.step()) out.push_back(readRecord(s));
  return out;
}

std::vector<MigrationRecord> Journal::unfinished() {
  // The final states from the one table, so a new one cannot be missed here.
  std::string finals;
  for (auto& s : kStateNames) {
    if (isFinal(s.state)) finals += (finals.empty() ? "'" : ", '") + std::string(s.name) + "'";
  }
  std::lock_guard lock(mutex_);
  Statement s(db_, (std::string("SELECT ") + kColumns + " FROM migrations WHERE state NOT IN (" + finals +
                    ") ORDER BY created_at, rowid")
                       .c_str());
  std::vector<MigrationRecord> out;
  while (s.step()) out.push_back(readRecord(s));
  return out;
}

std::optional<std::string> Journal::ownerIfExists(const std::string& container) {
  std::lock_guard lock(mutex_);
  Statement s(db_, "SELECT host FROM owners WHERE container = ?1");
  s.bind(1, container);
  if (!s.step()) return std::nullopt;
  return s.text(0);
}

void Journal::setOwner(const std::string& container, const std::string& host) {
  std::lock_guard lock(mutex_);
  Statement s(db_, "INSERT INTO owners (container, host) VALUES (?1, ?2) "
                   "ON CONFLICT(container) DO UPDATE SET host = excluded.host");
  s.bind(1, container).bind(2, host);
  s.step();
}

void Journal::removeOwner(const std::string& container) {
  std::lock_guard lock(mutex_);
  Statement s(db_, "DELETE FROM owners WHERE container = ?1");
  s.bind(1, container);
  s.step();
}

std::map<std::string, std::string> Journal::owners() {
  std::lock_guard lock(mutex_);
  Statement s(db_, "SELECT container, host FROM owners");
  std::map<std::string, std::string> out;
  while (s.step()) out[s.text(0)] = s.text(1);
  return out;
}

}  // namespace migrate
