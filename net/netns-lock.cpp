#include "net/netns-lock.h"

#include <sstream>
#include <string>

#include "common/error.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "net/netns.h"

namespace migrate {

namespace {

constexpr const char* kTable = "migrate_lock";

// Declaring the table first makes the delete valid whether or not it existed,
// and `nft -f` applies the whole script as one transaction.
std::string removeScript() {
  return std::string("table inet ") + kTable + "\ndelete table inet " + kTable + "\n";
}

std::string lockScript() {
  return removeScript() + "table inet " + kTable +
         " {\n"
         "  chain input {\n"
         "    type filter hook input priority -300; policy drop;\n"
         "    iif \"lo\" accept\n"
         "  }\n"
         "}\n";
}

RunResult nft(const fs::path& netns, const std::vector<std::string>& args, const std::string& input = {}) {
  RunResult result;
  SubprocessOptions options;
  options.args = {"nft"};
  options.args.insert(options.args.end(), args.begin(), args.end());
  runInNetns(netns, [&]() { result = runCapture(options, input); });
  return result;
}

void applyScript(const fs::path& netns, const std::string& script, std::string_view action) {
  auto result = nft(netns, {"-f", "-"}, script);
  if (result.status != 0) {
    fail("netns-lock: " + std::string(action) + " of `" + netns.string() + "` failed: nft exited " +
         std::to_string(result.status) + ": " + result.err);
  }
}

}  // namespace

void lockNetns(const fs::path& netns) {
  applyScript(netns, lockScript(), "lock");
}

void unlockNetns(const fs::path& netns) {
  if (!netnsExists(netns)) return;  // A netns that is gone holds no lock.
  applyScript(netns, removeScript(), "unlock");
}

void removeCriuLockTables(const fs::path& netns) {
  if (!netnsExists(netns)) return;
  auto tables = nft(netns, {"list", "tables"});
  if (tables.status != 0) fail("netns-lock: nft list tables in `" + netns.string() + "`: " + tables.err);
  std::istringstream lines(tables.out);
  std::string word, family, name;
  while (lines >> word >> family >> name) {  // "table inet CRIU-1234"
    if (word != "table" || name.rfind("CRIU-", 0) != 0) continue;
    auto result = nft(netns, {"delete", "table", family, name});
    if (result.status != 0) fail("netns-lock: nft delete table " + family + " " + name + ": " + result.err);
  }
}

bool isNetnsLocked(const fs::path& netns) {
  return nft(netns, {"list", "table", "inet", kTable}).status == 0;
}

NetnsLockGuard::NetnsLockGuard(fs::path netns) : netns_(std::move(netns)) {
  lockNetns(netns_);
}

NetnsLockGuard NetnsLockGuard::adopt(fs::path netns) { return NetnsLockGuard(Adopt{}, std::move(netns)); }

NetnsLockGuard::NetnsLockGuard(NetnsLockGuard&& other) noexcept : netns_(std::exchange(other.netns_, {})) {}

NetnsLockGuard::~NetnsLockGuard() {
  if (netns_.empty()) return;
  try {
    unlockNetns(netns_);
  } catch (const std::exception& e) {
    logWarn(e.what());
  }
}

void NetnsLockGuard::unlock() {
  if (netns_.empty()) return;
  unlockNetns(netns_);
  netns_.clear();
}

void NetnsLockGuard::release() {
  netns_.clear();
}

}  // namespace migrate
