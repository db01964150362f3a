// migrate-coordinator: knows every host, drives migrations, serves the HTTP
// API. `migrate-coordinator keygen` makes CURVE key pairs for it and the agents.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "common/error.h"
#include "common/files.h"
#include "common/log.h"
#include "coordinator/agent-link.h"
#include "coordinator/coordinator.h"
#include "coordinator/http-api.h"
#include "coordinator/journal.h"
#include "coordinator/webhooks.h"
#include "net/curve-keys.h"

using namespace migrate;

namespace {

constexpr const char* kVersion = "0.1.0";

struct ServeOptions {
  std::string listen = "tcp://198.19.0.1:7700";
  std::string keyDir;
  std::string agentsFile;
  std::string dbFile;
  std::string http;
  std::string httpSocket;
  std::string tokenFile;
  std::string tlsCert;
  std::string tlsKey;
  bool insecureHttp = false;
  HttpLimits httpLimits;
  std::vector<std::string> hookUrls;
  std::string hookSecretFile;
  int heartbeatMs = 2000;
  int parallel = 2;
};

struct KeygenOptions {
  std::string dir;
  std::string name;
  bool force = false;
};

void keygen(const KeygenOptions& o) {
  if (!o.force && (fs::exists(fs::path(o.dir) / (o.name + ".key")) || fs::exists(fs::path(o.dir) / (o.name + ".pub")))) {
    fail(ErrorKind::Conflict, "keygen: " + o.dir + "/" + o.name + ".key or .pub exists (use --force to replace it)");
  }
  fs::create_directories(o.dir);
  CurveKeyPair keys = generateCurveKeyPair();
  saveKeyPair(o.dir, o.name, keys);
  std::cout << keys.publicKey << "\n";
}

// SIGTERM and SIGINT are blocked in every thread and taken here, so the
// shutdown runs on the main thread in order, not inside a signal handler.
int serve(const ServeOptions& o, const sigset_t& stopSignals) {
  setLogTag("migrate-coordinator");
  if (o.http.empty() && o.httpSocket.empty()) fail(ErrorKind::InvalidInput, "give --http and/or --http-socket");
  if (o.tlsCert.empty() != o.tlsKey.empty()) fail(ErrorKind::InvalidInput, "give --tls-cert and --tls-key together");
  if (!o.http.empty() && o.tlsCert.empty() && !o.insecureHttp) {
    fail(ErrorKind::InvalidInput, "--http " + o.http +
                                      " serves HTTPS: give --tls-cert and --tls-key (or --insecure-http for plain "
                                      "HTTP, which sends the bearer token in clear)");
  }
  if (!o.tlsCert.empty() && o.insecureHttp) fail(ErrorKind::InvalidInput, "--insecure-http contradicts --tls-cert");
  CurveKeyPair keys = loadKeyPair(o.keyDir, "coordinator");
  HostRegistry registry(loadAllowList(o.agentsFile), std::chrono::milliseconds(o.heartbeatMs));
  Journal journal(o.dbFile);
  std::string token = loadToken(o.tokenFile);
  std::string hookSecret = o.hookSecretFile.empty() ? std::string() : readFile(o.hookSecretFile);
  while (!hookSecret.empty() && std::isspace(static_cast<unsigned char>(hookSecret.back()))) hookSecret.pop_back();
  Webhooks hooks(o.hookUrls, hookSecret);

  zmq::context_t context;
  ControlServer server(context, o.listen, keys, registry.keyToHost(), 3 * std::chrono::milliseconds(o.heartbeatMs));
  AgentLink link(server, registry, kVersion);
  CoordinatorOptions options;
  options.defaultParallel = o.parallel;
  Coordinator coordinator(journal, registry, link, &hooks, options);
  coordinator.start();
  link.start();

  HttpApiOptions httpOptions;
  if (!o.http.empty()) httpOptions.tcpAddress = o.http;
  if (!o.httpSocket.empty()) httpOptions.unixSocket = o.httpSocket;
  httpOptions.token = token;
  if (!o.tlsCert.empty()) httpOptions.tls = TlsFiles{o.tlsCert, o.tlsKey};
  httpOptions.insecureHttp = o.insecureHttp;
  httpOptions.limits = o.httpLimits;
  HttpApi api(coordinator, httpOptions);
  api.start();
  logInfo(std::string("coordinator ") + kVersion + " ready: control " + server.endpoint() + ", " +
          std::to_string(registry.list().size()) + " hosts allowed");

  int signal = 0;
  sigwait(&stopSignals, &signal);
  logInfo(std::string("stopping on ") + strsignal(signal));
  api.stop();
  coordinator.shutdown();
  logInfo("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Blocked before any thread starts, so every thread inherits the mask.
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGTERM);
  sigaddset(&stopSignals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  CLI::App app{"migrate-coordinator: drives live migrations of containers between hosts"};
  app.require_subcommand(0, 1);
  ServeOptions serveOptions;
  app.add_option("--listen", serveOptions.listen, "Control endpoint agents connect to")->capture_default_str();
  app.add_option("--key-dir", serveOptions.keyDir, "Directory with coordinator.key and coordinator.pub");
  app.add_option("--agents", serveOptions.agentsFile, "Allow-list: lines `hostName publicKeyZ85`");
  app.add_option("--db", serveOptions.dbFile, "SQLite journal");
  app.add_option("--http", serveOptions.http,
                 "HTTP API TCP address, host:port (e.g. 198.19.0.1:8080); serves HTTPS, so it needs --tls-cert "
                 "and --tls-key unless --insecure-http");
  app.add_option("--http-socket", serveOptions.httpSocket, "HTTP API unix socket path (plain HTTP, mode 0660)");
  app.add_option("--tls-cert", serveOptions.tlsCert, "PEM certificate (chain) of the --http listener");
  app.add_option("--tls-key", serveOptions.tlsKey, "PEM private key of --tls-cert");
  app.add_flag("--insecure-http", serveOptions.insecureHttp,
               "Serve plain HTTP on --http (only behind a TLS-terminating proxy on this host, or for tests)");
  app.add_option("--token-file", serveOptions.tokenFile, "Bearer token of the HTTP API");
  app.add_option("--http-max-connections", serveOptions.httpLimits.maxConnections,
                 "HTTP API connections open at once, per listener; more get 429")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--http-max-connections-per-client", serveOptions.httpLimits.maxConnectionsPerClient,
                 "HTTP API connections open at once from one IP address (or uid on the unix socket)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--hook-url", serveOptions.hookUrls, "Outbound hook URL (repeatable)");
  app.add_option("--hook-secret-file", serveOptions.hookSecretFile, "HMAC-SHA256 key for hook signatures");
  app.add_option("--heartbeat-ms", serveOptions.heartbeatMs, "Heartbeat interval asked of agents")
      ->capture_default_str();
  app.add_option("--parallel", serveOptions.parallel, "Default migrations at once in an evacuation")
      ->capture_default_str();

  KeygenOptions keygenOptions;
  auto* keygenCommand = app.add_subcommand("keygen", "Write NAME.key (0600) and NAME.pub into DIR");
  keygenCommand->add_option("--dir", keygenOptions.dir, "Directory")->required();
  keygenCommand->add_option("--name", keygenOptions.name, "Key name (coordinator, host1, ...)")->required();
  keygenCommand->add_flag("--force", keygenOptions.force, "Replace existing keys");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*keygenCommand) {
      keygen(keygenOptions);
      return 0;
    }
    for (auto [value, flag] : {std::pair{&serveOptions.keyDir, "--key-dir"}, {&serveOptions.agentsFile, "--agents"},
                               {&serveOptions.dbFile, "--db"}, {&serveOptions.tokenFile, "--token-file"}}) {
      if (value->empty()) fail(ErrorKind::InvalidInput, std::string(flag) + " is required");
    }
    return serve(serveOptions, stopSignals);
  } catch (const std::exception& e) {
    logError(e.what());
    return 1;
  }
}
