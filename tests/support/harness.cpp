#include "tests/support/harness.h"

#include <fcntl.h>
#include <sys/file.h>
#include <signal.h>
#include <unistd.h>

#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/subprocess.h"
#include "common/syscall.h"

namespace migrate::test {

using nlohmann::json;

fs::path binary(const std::string& name) {
  for (auto dir : {"agent", "coordinator", "migrate", "tests/payloads"}) {
    auto p = fs::path(MIGRATE_BINARY_DIR) / dir / name;
    if (fs::exists(p)) return p;
  }
  fail(ErrorKind::NotFound, "test binary " + name + " not built");
}

fs::path testImage() { return TEST_IMAGE; }


AgentHome::AgentHome(std::string hostName) : host_(std::move(hostName)), dir_("/var/tmp", "migrate-test-" + host_) {}

AgentHome::~AgentHome() {
  // Remove every container this agent still has, whatever state the test left.
  try {
    auto list = json::parse(tryAgent({"--output", "json", "ps"}).out);
    for (auto& c : list) tryAgent({"rm", "--force", c.at("id").get<std::string>()});
  } catch (const std::exception&) {
  }
}

AgentHome::Result AgentHome::tryAgent(const std::vector<std::string>& args) {
  std::vector<std::string> full = wrap;
  full.insert(full.end(), {binary("migrate-agent").string(), "--state", dir().string(), "--host", host_});
  full.insert(full.end(), extraArgs.begin(), extraArgs.end());
  full.insert(full.end(), args.begin(), args.end());
  auto r = runCapture(SubprocessOptions::of(full));
  return Result{r.status, r.out, r.err};
}

std::string AgentHome::agent(const std::vector<std::string>& args) {
  auto r = tryAgent(args);
  if (r.status != 0) {
    fail("migrate-agent " + commandLine(args) + " exited " + std::to_string(r.status) + ": " + r.err);
  }
  return r.out;
}

json AgentHome::agentJson(const std::vector<std::string>& args) {
  std::vector<std::string> full = {"--output", "json"};
  full.insert(full.end(), args.begin(), args.end());
  return json::parse(agent(full));
}

AgentPair::AgentPair() {
  source.importTestImage();
  target.importTestImage();
  target.trustSigner(source);
}

unsigned long lastCount(AgentHome& home, const std::string& name) {
  auto c = counts(home.agent({"logs", name}));
  return c.empty() ? 0 : c.back();
}

void AgentHome::importTestImage() { agent({"image", "import", testImage().string(), "test"}); }

void AgentHome::trustSigner(AgentHome& signer) {
  std::string key = signer.agent({"signing-key"});
  fs::create_directories(dir() / "trusted-signers");
  writeFileAtomic(dir() / "trusted-signers" / (signer.host() + ".pub"), key);
}

std::string LabGuard::script() { return std::string(MIGRATE_SOURCE_DIR) + "/scripts/lab.sh"; }

LabGuard::LabGuard(int hosts)
    : sessionLock_(openOrFail("/run/lock/migrate-lab-session.lock", O_RDWR | O_CREAT, 0644)) {
  SYSCALL(::flock(sessionLock_.get(), LOCK_EX), "flock /run/lock/migrate-lab-session.lock");
  SubprocessOptions o = SubprocessOptions::of({script(), "up", std::to_string(hosts)});
  o.env = {{"LAB_QUIET", "1"}};
  run(o);
}

LabGuard::~LabGuard() {
  SubprocessOptions o = SubprocessOptions::of({script(), "down"});
  o.env = {{"LAB_QUIET", "1"}};
  runCapture(o);
}

AgentHome::Result LabGuard::exec(const std::string& host, const std::vector<std::string>& args) {
  std::vector<std::string> full = {script(), "exec", host};
  full.insert(full.end(), args.begin(), args.end());
  auto r = runCapture(SubprocessOptions::of(full));
  return AgentHome::Result{r.status, r.out, r.err};
}

void placeInLabHost(AgentHome& home, const std::string& host) {
  home.wrap = {"nsenter", "--net=/run/netns/" + host, "--"};
  home.extraArgs = {"--cni-config", "/run/migrate-lab/" + host + "/cni.conflist"};
}

std::string ClusterGuard::script() { return std::string(MIGRATE_SOURCE_DIR) + "/scripts/cluster.sh"; }

namespace {

SubprocessOptions clusterCommand(std::vector<std::string> args) {
  SubprocessOptions o = SubprocessOptions::of(std::move(args));
  o.env = {{"LAB_QUIET", "1"}, {"BUILD_DIR", MIGRATE_BINARY_DIR}};
  return o;
}

}  // namespace

ClusterGuard::ClusterGuard(int hosts)
    : sessionLock_(openOrFail("/run/lock/migrate-lab-session.lock", O_RDWR | O_CREAT, 0644)) {
  SYSCALL(::flock(sessionLock_.get(), LOCK_EX), "flock /run/lock/migrate-lab-session.lock");
  try {
    run(clusterCommand({script(), "up", std::to_string(hosts), testImage().string(), "test"}));
  } catch (...) {
    runCapture(clusterCommand({script(), "down"}));
    throw;
  }
}

ClusterGuard::~ClusterGuard() { runCapture(clusterCommand({script(), "down"})); }

AgentHome::Result ClusterGuard::tryMigrate(const std::vector<std::string>& args) {
  std::vector<std::string> full = {binary("migrate").string()};
  full.insert(full.end(), args.begin(), args.end());
  SubprocessOptions o = SubprocessOptions::of(full);
  o.env = {{"MIGRATE_COORDINATOR", "unix:/run/migrate-lab/coordinator.sock"},
           {"MIGRATE_TOKEN_FILE", "/var/lib/migrate-lab/keys/token"}};
  auto r = runCapture(o);
  return AgentHome::Result{r.status, r.out, r.err};
}

std::string ClusterGuard::migrate(const std::vector<std::string>& args) {
  auto r = tryMigrate(args);
  if (r.status != 0) fail("migrate " + commandLine(args) + " exited " + std::to_string(r.status) + ": " + r.err + r.out);
  return r.out;
}

json ClusterGuard::migrateJson(const std::vector<std::string>& args) {
  std::vector<std::string> full = args;
  full.insert(full.end(), {"--output", "json"});
  return json::parse(migrate(full));
}

int ClusterGuard::agentPid(const std::string& host) const {
  return std::stoi(readFile("/run/migrate-lab/" + host + "/agent.pid"));
}

int ClusterGuard::coordinatorPid() const { return std::stoi(readFile("/run/migrate-lab/coordinator.pid")); }

void ClusterGuard::startAgent(const std::string& host) { run(clusterCommand({script(), "start-agent", host})); }

void ClusterGuard::startCoordinator() { run(clusterCommand({script(), "start-coordinator"})); }

json ClusterGuard::agentJson(const std::string& host, const std::vector<std::string>& args) {
  std::vector<std::string> full = {binary("migrate-agent").string(), "--state", agentState(host).string(), "--host",
                                   host, "--output", "json"};
  full.insert(full.end(), args.begin(), args.end());
  return json::parse(run(full));
}

TcpClient::TcpClient(const std::string& ip, int port) {
  int out[2];
  SYSCALL(::pipe2(out, O_CLOEXEC), "pipe2");
  output_ = Fd(out[0]);
  Fd write(out[1]);
  int err[2];
  SYSCALL(::pipe2(err, O_CLOEXEC | O_NONBLOCK), "pipe2");
  progress_ = Fd(err[0]);
  Fd progressWrite(err[1]);
  SubprocessOptions o = SubprocessOptions::of({"nsenter", "--net=/run/netns/client", "--", binary("tcp-client").string(),
                                               ip, std::to_string(port), "120", "10"});
  o.stdoutFd = write.get();
  o.stderrFd = progressWrite.get();
  process_.emplace(o);
}

unsigned long TcpClient::verified() {
  char buf[4096];
  ssize_t n;
  while ((n = ::read(progress_.get(), buf, sizeof buf)) > 0) progressText_.append(buf, static_cast<size_t>(n));
  // The last complete "verified N" line.
  constexpr std::string_view kPrefix = "verified ";
  auto end = progressText_.rfind('\n');
  if (end == std::string::npos) return 0;
  auto start = progressText_.rfind(kPrefix, end);
  if (start == std::string::npos) return 0;
  return std::stoul(progressText_.substr(start + kPrefix.size(), end - start - kPrefix.size()));
}

json TcpClient::stop() {
  process_->kill(SIGTERM);
  int status = process_->wait();
  std::string summary;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(output_.get(), buf, sizeof buf)) > 0) summary.append(buf, static_cast<size_t>(n));
  json j = json::parse(summary);
  j["exitStatus"] = status;
  return j;
}

std::string errorKindOf(const AgentHome::Result& result) {
  auto j = nlohmann::json::parse(result.out, nullptr, false);
  if (!j.is_object() || !j.contains("kind") || !j["kind"].is_string()) return "";
  return j["kind"];
}

size_t occurrences(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t p = 0; (p = text.find(needle, p)) != std::string::npos; p += needle.size()) ++n;
  return n;
}

bool processAlive(int pid) {
  auto status = readFileIfExists("/proc/" + std::to_string(pid) + "/status");
  if (!status) return false;
  auto state = status->find("State:");
  return state != std::string::npos && status->find_first_not_of(" \t", state + 6) != std::string::npos &&
         (*status)[status->find_first_not_of(" \t", state + 6)] != 'Z';
}

std::vector<unsigned long> counts(const std::string& log) {
  std::vector<unsigned long> out;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("count ", 0) == 0) out.push_back(std::stoul(line.substr(6)));
  }
  return out;
}

std::vector<std::string> mountsUnder(const fs::path& dir) {
  std::vector<std::string> found;
  std::istringstream mounts(readFile("/proc/self/mountinfo"));
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, mountPoint;
    fields >> id >> parent >> dev >> root >> mountPoint;
    if (mountPoint == dir.string() || mountPoint.rfind(dir.string() + "/", 0) == 0) found.push_back(mountPoint);
  }
  return found;
}

}  // namespace migrate::test
