// migrate: the command line of the cluster. `migrate web --to host2` moves a
// container; the other verbs list, run and inspect things through the
// coordinator's HTTP API.
#include <iostream>
#include <set>

#include "common/error.h"
#include "migrate/verbs.h"

using namespace migrate;

namespace {

// `migrate CTR --to HOST` means `migrate move CTR --to HOST`: the first word
// that is neither a verb nor a global option (or its value) is a container.
std::vector<std::string> withDefaultVerb(int argc, char** argv, const std::set<std::string>& verbs) {
  static const std::set<std::string> kGlobalWithValue = {"--coordinator", "--token-file", "--ca", "--output", "-o"};
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (kGlobalWithValue.count(a)) {
      ++i;
      continue;
    }
    if (a.rfind("-", 0) == 0) continue;
    if (!verbs.count(a)) args.insert(args.begin() + static_cast<long>(i), "move");
    break;
  }
  return args;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"migrate: live migration of containers between hosts"};
  app.require_subcommand(1);
  app.fallthrough();
  CommonOptions common;
  app.add_option("--coordinator", common.client.coordinator,
                 "unix:/path, https://host:port, or http://host:port for a coordinator started with "
                 "--insecure-http (default: $MIGRATE_COORDINATOR, else unix:/run/migrate-lab/coordinator.sock)");
  app.add_option("--token-file", common.client.tokenFile, "Bearer token file (default: $MIGRATE_TOKEN_FILE)");
  app.add_option("--ca", common.client.caFile,
                 "CA certificate file that the coordinator's https:// certificate must verify against "
                 "(default: $MIGRATE_CA, else the system's CAs)");
  app.add_option("--output,-o", common.output, "text or json")->check(CLI::IsMember({"text", "json"}));

  // The command table.
  addMoveVerb(app, common);
  addHostsVerb(app, common);
  addPsVerb(app, common);
  addRunVerb(app, common);
  addLogsVerb(app, common);
  addRmVerb(app, common);
  addStatusVerb(app, common);
  addCancelVerb(app, common);
  addRecoverVerb(app, common);
  addAbandonVerb(app, common);
  addHistoryVerb(app, common);
  addEvacuateVerb(app, common);

  std::set<std::string> verbs;
  for (auto* sub : app.get_subcommands({})) verbs.insert(sub->get_name());
  std::vector<std::string> args = withDefaultVerb(argc, argv, verbs);
  std::reverse(args.begin(), args.end());  // CLI11 takes them reversed.
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ReportedFailure& e) {
    std::cerr << "migrate: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    if (common.json()) {
      std::cout << nlohmann::json{{"error", e.what()}, {"kind", kindName(kindOf(e))}}.dump(2) << "\n";
    }
    std::cerr << "migrate: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
