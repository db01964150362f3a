// migrate-agent: the node daemon, and a local command line for one host
// (run, ps, logs, checkpoint --export, restore --import, rm, image import...).
#include <fcntl.h>

#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <iostream>

#include "agent/agent-daemon.h"
#include "agent/agent.h"
#include "agent/page-relay.h"
#include "common/error.h"
#include "common/files.h"
#include "common/log.h"

using namespace migrate;
using nlohmann::json;

namespace {

struct GlobalOptions {
  std::string stateDir = "/var/lib/migrate-agent";
  std::string hostName;
  std::string cniConfig;
  std::string output = "text";
  bool checkpointsOnDisk = false;
  BundleLimits importLimits;
  int restoreTimeoutSeconds = 0;
  uint64_t criuLogMaxBytes = RuntimeOptions{}.criuLogMaxBytes;
  std::string usernsRange = IdRange{}.text();
};

AgentOptions agentOptions(const GlobalOptions& g) {
  AgentOptions o;
  o.stateDir = g.stateDir;
  if (!g.hostName.empty()) {
    o.hostName = g.hostName;
  } else {
    char name[256] = {};
    gethostname(name, sizeof name - 1);
    o.hostName = name;
  }
  if (!g.cniConfig.empty()) o.cniConfig = g.cniConfig;
  o.checkpointsInMemory = !g.checkpointsOnDisk;
  o.importLimits = g.importLimits;
  o.runtime.restoreTimeout = std::chrono::seconds(g.restoreTimeoutSeconds);
  o.runtime.criuLogMaxBytes = g.criuLogMaxBytes;
  o.idRange = IdRange::parse(g.usernsRange);
  // Made at the first start, kept in the state dir (0600).
  o.signingKey = std::make_shared<const SigningKey>(SigningKey::loadOrCreate(o.stateDir / "signing.key"));
  return o;
}

// Whose bundles `restore --import` and `import` accept (agent/bundle-signature.h).
struct TrustFlags {
  std::vector<std::string> keyFiles;
  bool trustUnsigned = false;

  void addTo(CLI::App* cmd) {
    cmd->add_option("--trusted-key", keyFiles, "also accept bundles signed by the key in this .pub file")
        ->check(CLI::ExistingFile);
    cmd->add_flag("--trust-unsigned", trustUnsigned,
                  "root only: accept an unsigned bundle or an unknown signer (never an altered bundle)");
  }

  BundleTrust trust(const Agent& agent) const {
    if (trustUnsigned && ::geteuid() != 0) fail(ErrorKind::InvalidInput, "--trust-unsigned is for root only");
    std::vector<fs::path> files(keyFiles.begin(), keyFiles.end());
    return BundleTrust::local(agent.options().stateDir, agent.options().signingKey->publicKey(), files, trustUnsigned);
  }
};

void printContainers(const GlobalOptions& g, const std::vector<Container>& containers) {
  if (g.output == "json") {
    json out = json::array();
    for (auto& c : containers) out.push_back(c.toJson());
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("%-14s %-20s %-13s %-8s %-16s %s\n", "ID", "NAME", "STATUS", "PID", "IP", "IMAGE");
  for (auto& c : containers) {
    std::printf("%-14s %-20s %-13s %-8d %-16s %s\n", c.config.id.substr(0, 12).c_str(), c.config.name.c_str(),
                statusName(c.state.status).c_str(), c.state.pid, c.state.ip.empty() ? "-" : c.state.ip.c_str(),
                c.config.imageName.c_str());
  }
}

void printImages(const GlobalOptions& g, const std::vector<ImageInfo>& images) {
  if (g.output == "json") {
    json out = json::array();
    for (auto& i : images) out.push_back(i.toJson());
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("%-20s %-30s %12s\n", "DIGEST", "NAMES", "SIZE");
  for (auto& i : images) {
    std::string names;
    for (auto& n : i.names) names += (names.empty() ? "" : ",") + n;
    std::printf("%-20s %-30s %12llu\n", i.digest.substr(0, 19).c_str(), names.c_str(),
                static_cast<unsigned long long>(i.size));
  }
}

void printOne(const GlobalOptions& g, const json& j, const std::string& text) {
  if (g.output == "json") std::cout << j.dump(2) << "\n";
  else std::cout << text << "\n";
}

json statsJson(const ExportStats& s) {
  return {{"bytesRaw", s.bytesRaw}, {"bytesCompressed", s.bytesCompressed}, {"tarSha256", s.tarSha256}};
}

json timesJson(const PhaseTimes& t) {
  json j = json::object();
  for (auto& [phase, seconds] : t.seconds) j[phase] = seconds;
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  GlobalOptions g;
  CLI::App app{"migrate-agent: runs, checkpoints and restores containers on this host"};
  app.require_subcommand(1);
  app.add_option("--state", g.stateDir, "state directory of this agent")->capture_default_str();
  app.add_option("--host", g.hostName, "this host's name (default: hostname)");
  app.add_option("--cni-config", g.cniConfig, "CNI conflist for container networking");
  app.add_option("--output,-o", g.output, "text or json")->check(CLI::IsMember({"text", "json"}));
  app.add_flag("--checkpoints-on-disk", g.checkpointsOnDisk,
               "keep CRIU images in the state directory instead of a tmpfs (survive a reboot, slower)");
  // This host's caps on an imported bundle; within them a bundle gets what its manifest declares.
  app.add_option("--max-import-bytes", g.importLimits.maxTotalBytes,
                 "largest checkpoint + rootfs-diff a bundle may declare, bytes")->capture_default_str();
  app.add_option("--max-import-entries", g.importLimits.maxEntries,
                 "most entries (files, dirs, whiteouts) a bundle may declare")->capture_default_str();
  app.add_option("--max-import-entry-bytes", g.importLimits.maxEntryBytes, "largest file in a bundle, bytes")
      ->capture_default_str();
  app.add_option("--restore-timeout", g.restoreTimeoutSeconds,
                 "seconds before a CRIU restore is killed (0: 30 s + 10 s per GiB of images)")->capture_default_str();
  app.add_option("--criu-log-max-bytes", g.criuLogMaxBytes, "restore.log size at which a CRIU restore is killed")
      ->capture_default_str();
  app.add_option("--userns-range", g.usernsRange,
                 "host ids FIRST:COUNT for containers' user namespaces, 65536 each (docs/userns.md)")
      ->capture_default_str();

  std::function<void()> action;

  // image import | ls | rm
  auto* image = app.add_subcommand("image", "manage images")->require_subcommand(1);
  std::string imageSource, imageName, imageRef;
  auto* imageImport = image->add_subcommand("import", "import a rootfs tarball or an OCI layout (dir or tar)");
  imageImport->add_option("source", imageSource)->required();
  imageImport->add_option("name", imageName);
  imageImport->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      auto info = agent.images().import(imageSource, imageName);
      printOne(g, info.toJson(), info.digest);
    };
  });
  image->add_subcommand("ls", "list images")->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      printImages(g, agent.images().list());
    };
  });
  auto* imageRm = image->add_subcommand("rm", "remove an image not used by any container");
  imageRm->add_option("image", imageRef)->required();
  imageRm->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      auto containers = agent.list();
      agent.images().remove(imageRef, [&](const std::string& digest) {
        for (auto& c : containers) {
          if (c.config.imageDigest == digest) return true;
        }
        return false;
      });
    };
  });

  // run
  RunRequest runRequest;
  auto* runCmd = app.add_subcommand("run", "run a container");
  runCmd->add_option("--name", runRequest.name)->required();
  runCmd->add_option("--env,-e", runRequest.env);
  runCmd->add_option("--workdir,-w", runRequest.workingDir);
  runCmd->add_option("--user,-u", runRequest.user);
  runCmd->add_option("--hostname", runRequest.hostname);
  bool noNetwork = false;
  runCmd->add_flag("--no-network", noNetwork, "loopback only");
  std::string userns = "auto";
  runCmd->add_option("--userns", userns,
                     "auto: a user namespace of its own (container root is an unprivileged host uid); "
                     "host: the host's (container root is host root)")
      ->check(CLI::IsMember({"auto", "host"}))
      ->capture_default_str();
  runCmd->add_option("image", runRequest.image)->required();
  runCmd->prefix_command();  // everything after the image is the container's command
  runCmd->callback([&] {
    runRequest.args = runCmd->remaining();
    action = [&] {
      Agent agent(agentOptions(g));
      runRequest.network = !noNetwork;
      runRequest.hostUserns = userns == "host";
      auto c = agent.run(runRequest);
      printOne(g, c.toJson(), c.config.id);
    };
  });

  app.add_subcommand("ps", "list containers")->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      printContainers(g, agent.list());
    };
  });

  std::string ref;
  auto* inspectCmd = app.add_subcommand("inspect", "show a container");
  inspectCmd->add_option("container", ref)->required();
  inspectCmd->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      std::cout << agent.inspect(ref).toJson().dump(2) << "\n";
    };
  });

  size_t tail = 0;
  auto* logsCmd = app.add_subcommand("logs", "print a container's output");
  logsCmd->add_option("container", ref)->required();
  logsCmd->add_option("--tail", tail, "only the last N lines");
  logsCmd->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      auto text = agent.logs(ref, tail);
      if (g.output == "json") std::cout << json{{"logs", text}}.dump(2) << "\n";
      else std::cout << text;
    };
  });

  int stopTimeout = 10;
  auto* stopCmd = app.add_subcommand("stop", "stop a container (SIGTERM, then SIGKILL)");
  stopCmd->add_option("container", ref)->required();
  stopCmd->add_option("--time,-t", stopTimeout, "seconds before SIGKILL");
  stopCmd->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      agent.stop(ref, stopTimeout);
    };
  });

  bool force = false;
  auto* rmCmd = app.add_subcommand("rm", "remove a container");
  rmCmd->add_option("container", ref)->required();
  rmCmd->add_flag("--force,-f", force, "kill it first if running");
  rmCmd->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      agent.remove(ref, force);
    };
  });

  // checkpoint [--export FILE]
  CheckpointRequest ckptRequest;
  std::string exportFile;
  ExportOptions exportOptions;
  auto* ckptCmd = app.add_subcommand("checkpoint", "checkpoint a running container (CRIU dump)");
  ckptCmd->add_option("container", ref)->required();
  ckptCmd->add_flag("--tcp-established", ckptRequest.tcpEstablished, "checkpoint open TCP connections");
  ckptCmd->add_flag("--leave-running,-R", ckptRequest.leaveRunning, "keep the container running");
  ckptCmd->add_option("--export,-e", exportFile, "write the bundle (tar+zstd) to this file ('-' for stdout)");
  ckptCmd->add_option("--compress-level", exportOptions.zstdLevel, "zstd level")->capture_default_str();
  ckptCmd->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      PhaseTimes times;
      auto c = agent.checkpoint(ref, ckptRequest, &times);
      json result = {{"container", c.config.name}, {"id", c.config.id}, {"times", timesJson(times)}};
      if (!exportFile.empty()) {
        Fd fd = exportFile == "-" ? Fd(dup(1))
                                  : openOrFail(exportFile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        FdOutputStream out(fd.get());
        auto stats = agent.exportCheckpoint(ref, out, exportOptions);
        result["export"] = statsJson(stats);
        if (exportFile == "-") return;
      }
      printOne(g, result, c.config.id);
    };
  });

  auto* exportCmd = app.add_subcommand("export", "write a checkpointed container's bundle to a file");
  exportCmd->add_option("container", ref)->required();
  exportCmd->add_option("file", exportFile)->required();
  exportCmd->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      Fd fd = exportFile == "-" ? Fd(dup(1)) : openOrFail(exportFile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
      FdOutputStream out(fd.get());
      auto stats = agent.exportCheckpoint(ref, out, exportOptions);
      if (exportFile != "-") printOne(g, statsJson(stats), stats.tarSha256);
    };
  });

  // restore [--import FILE]
  RestoreRequest restoreRequest;
  std::string importFile, newName;
  TrustFlags trustFlags;
  auto* restoreCmd = app.add_subcommand("restore", "restore a checkpointed container, or one from a bundle");
  trustFlags.addTo(restoreCmd);
  restoreCmd->add_option("container", ref, "container to restore (omit with --import)");
  restoreCmd->add_option("--import,-i", importFile, "bundle file to import first ('-' for stdin)");
  restoreCmd->add_option("--name,-n", newName, "restore under a new name (no static IP, as libpod)");
  restoreCmd->add_flag("--tcp-established", restoreRequest.tcpEstablished, "restore open TCP connections");
  restoreCmd->add_flag("--ignore-static-ip", restoreRequest.ignoreStaticIp, "let CNI pick a new address");
  restoreCmd->add_flag("--ignore-static-mac", restoreRequest.ignoreStaticMac, "let the kernel pick a new MAC");
  restoreCmd->add_flag("--keep", restoreRequest.keepCheckpoint, "keep the checkpoint files after restoring");
  restoreCmd->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      std::string target = ref;
      if (!importFile.empty()) {
        Fd fd = importFile == "-" ? Fd(dup(0)) : openOrFail(importFile, O_RDONLY);
        FdInputStream in(fd.get());
        ImportRequest importRequest;
        if (!newName.empty()) importRequest.name = newName;
        importRequest.trust = trustFlags.trust(agent);
        target = agent.importCheckpoint(in, importRequest).config.id;
      } else if (target.empty()) {
        throw CLI::ValidationError("restore", "name a container or give --import FILE");
      }
      PhaseTimes times;
      Container c;
      try {
        c = agent.restore(target, restoreRequest, &times);
      } catch (const std::exception& e) {
        // A bundle refused as hostile (e.g. its CRIU images) has nothing to
        // retry: what this command imported goes, with its checkpoint tmpfs.
        if (!importFile.empty() && kindOf(e) == ErrorKind::InvalidInput) {
          try {
            agent.remove(target, true);
          } catch (const std::exception& cleanup) {
            logWarn(std::string("removing the refused import: ") + cleanup.what());
          }
        }
        throw;
      }
      json result = c.toJson();
      result["times"] = timesJson(times);
      printOne(g, result, c.config.id);
    };
  });

  auto* importCmd = app.add_subcommand("import", "import a bundle as a checkpointed container");
  importCmd->add_option("file", importFile)->required();
  importCmd->add_option("--name,-n", newName);
  trustFlags.addTo(importCmd);
  importCmd->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      Fd fd = importFile == "-" ? Fd(dup(0)) : openOrFail(importFile, O_RDONLY);
      FdInputStream in(fd.get());
      ImportRequest importRequest;
      if (!newName.empty()) importRequest.name = newName;
      importRequest.trust = trustFlags.trust(agent);
      auto c = agent.importCheckpoint(in, importRequest);
      printOne(g, c.toJson(), c.config.id);
    };
  });

  // daemon: serve the coordinator
  std::string coordinatorEndpoint, coordinatorKeyFile, keyDir, keyName, dataAddress;
  auto* daemonCmd = app.add_subcommand("daemon", "serve the coordinator's requests for this host");
  daemonCmd->add_option("--coordinator", coordinatorEndpoint, "ZeroMQ endpoint, e.g. tcp://198.19.0.1:7700")->required();
  daemonCmd->add_option("--coordinator-key", coordinatorKeyFile, "the coordinator's public key file (pinned)")->required();
  daemonCmd->add_option("--key-dir", keyDir, "directory with this agent's NAME.key and NAME.pub")->required();
  daemonCmd->add_option("--key-name", keyName, "key pair name (default: the host name)");
  daemonCmd->add_option("--data-address", dataAddress, "address for migration streams (this host's fabric address)")
      ->required();
  int daemonZstdLevel = 3, daemonZstdThreads = 2;
  daemonCmd->add_option("--zstd-level", daemonZstdLevel, "stream compression level")->capture_default_str();
  daemonCmd->add_option("--zstd-threads", daemonZstdThreads, "zstd worker threads (0: none)")->capture_default_str();
  daemonCmd->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      DaemonOptions options;
      options.coordinatorEndpoint = coordinatorEndpoint;
      options.keys = loadKeyPair(keyDir, keyName.empty() ? agent.options().hostName : keyName);
      options.coordinatorPublicKey = loadPublicKey(coordinatorKeyFile);
      options.dataAddress = dataAddress;
      options.zstdLevel = daemonZstdLevel;
      options.zstdThreads = daemonZstdThreads;
      static std::atomic<bool> stop{false};
      struct sigaction sa = {};
      sa.sa_handler = [](int) { stop = true; };
      sigaction(SIGTERM, &sa, nullptr);
      sigaction(SIGINT, &sa, nullptr);
      signal(SIGPIPE, SIG_IGN);
      AgentDaemon daemon(agent, options);
      daemon.run(stop);
    };
  });

  app.add_subcommand("signing-key", "print the public key this agent signs its bundles with")->callback([&] {
    action = [&] {
      Agent agent(agentOptions(g));
      std::string key = publicKeyText(agent.options().signingKey->publicKey());
      printOne(g, {{"publicKey", key}, {"file", (agent.options().stateDir / "signing.key").string()}}, key);
    };
  });

  // network-hook: runc's prestart hook for a container in a user namespace
  // (agent/network-hook.h); not for people, so not in --help.
  NetworkHookRequest hookRequest;
  std::string hookIp, hookMac;
  auto* hookCmd = app.add_subcommand("network-hook", "")->group("");
  hookCmd->add_option("id", hookRequest.containerId)->required();
  hookCmd->add_option("--ip", hookIp);
  hookCmd->add_option("--mac", hookMac);
  hookCmd->add_flag("--lock", hookRequest.lock);
  hookCmd->callback([&] {
    action = [&] {
      if (!hookIp.empty()) hookRequest.ip = hookIp;
      if (!hookMac.empty()) hookRequest.mac = hookMac;
      if (g.cniConfig.empty()) fail(ErrorKind::InvalidInput, "network-hook needs --cni-config");
      fs::path state = g.stateDir;
      runNetworkHook(state, g.cniConfig, hookRequest, std::cin,
                     ContainerPaths{state / "containers" / hookRequest.containerId}.networkAttachment());
    };
  });

  // page-relay: a post-copy migration's page relay (agent/page-relay.h),
  // started by the daemon; not for people, so not in --help.
  std::string relayDir;
  int relayExit = 0;
  auto* relayCmd = app.add_subcommand("page-relay", "")->group("");
  relayCmd->add_option("dir", relayDir)->required();
  relayCmd->callback([&] {
    action = [&] { relayExit = runPageRelay(relayDir); };
  });

  std::string keygenDir, keygenName;
  auto* keygenCmd = app.add_subcommand("keygen", "make a CURVE key pair (NAME.key, NAME.pub)");
  keygenCmd->add_option("--dir", keygenDir)->required();
  keygenCmd->add_option("--name", keygenName)->required();
  keygenCmd->callback([&] {
    action = [&] {
      auto keys = generateCurveKeyPair();
      saveKeyPair(keygenDir, keygenName, keys);
      printOne(g, {{"publicKey", keys.publicKey}}, keys.publicKey);
    };
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  setLogTag("migrate-agent" + (g.hostName.empty() ? "" : "[" + g.hostName + "]"));
  try {
    if (action) action();
    return relayExit;
  } catch (const Error& e) {
    if (g.output == "json") std::cout << json{{"error", e.what()}, {"kind", kindName(e.kind())}}.dump(2) << "\n";
    std::cerr << "migrate-agent: " << e.what() << "\n";
    return e.kind() == ErrorKind::InvalidInput ? 2 : 1;
  } catch (const std::exception& e) {
    if (g.output == "json") std::cout << json{{"error", e.what()}, {"kind", "failed"}}.dump(2) << "\n";
    std::cerr << "migrate-agent: " << e.what() << "\n";
    return 1;
  }
}
