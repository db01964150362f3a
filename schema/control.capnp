# Control protocol between agents and the coordinator.
#
# One `Message` per ZeroMQ frame, over a CURVE-encrypted ROUTER (coordinator)
# / DEALER (agent) pair. The sender's identity is never taken from a message:
# the coordinator attributes every frame to the host whose CURVE public key
# authenticated the connection (ZAP User-Id), and must check that a
# `register.hostName` matches it.
#
# Discipline: ordinals never change; a retired field is renamed `obsoleteX`
# and keeps its slot; new fields are appended. An agent that gets a request
# variant it does not know replies `unimplemented` (capnp reads unknown union
# members as an unknown discriminant, not as an error).

@0xb7b83d74e6af59f5;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("migrate::proto");

const protocolVersion :UInt32 = 4;
# Bumped when a change is not backward compatible; `register` carries it and
# the coordinator refuses agents speaking another major version.
# 2: user namespaces (IdMapping in ContainerInfo, RunContainer and
# ExpectedManifest): a coordinator of 1 sends no mapping, whose migrations a
# target of 2 would refuse at the bundle's manifest, after the source froze.
# 3: the acknowledged bundle digest (stats.sha256, Restore.expectedSha256) is
# the signed tar digest, no longer the compressed stream's: mixed sides would
# disagree on every migration. Also measureCheckpoint (downtime budgets).
# 4: the page relays' channel carries framed answers on two channels (urgent,
# bulk: agent/page-server-protocol.h); a relay of 3 would read frames as
# answers.

struct Message {
  union {
    register @0 :Register;
    # agent -> coordinator, first message on every (re)connection.

    heartbeat @1 :Heartbeat;
    # agent -> coordinator, periodic; also how the coordinator learns the
    # agent's current routing after a reconnect.

    request @2 :Request;
    # coordinator -> agent.

    reply @3 :Reply;
    # agent -> coordinator, exactly one per request.

    progress @4 :Progress;
    # agent -> coordinator, asynchronous, zero or more per long request.

    registered @5 :Registered;
    # coordinator -> agent, answer to `register`.
  }
}

# ---------------------------------------------------------------------------
# Host and container descriptions

struct Capacity {
  memBytes @0 :UInt64;
  # Physical memory of the host.

  diskBytes @1 :UInt64;
  # Size of the filesystem holding the agent's state (images, containers).

  cpus @2 :UInt32;
  # Online CPUs.
}

struct Load {
  loadAvg1 @0 :Float64;
  # /proc/loadavg, one-minute average.

  memAvailableBytes @1 :UInt64;
  # MemAvailable from /proc/meminfo.

  diskAvailableBytes @2 :UInt64;
  # Free bytes on the agent's state filesystem (statvfs f_bavail * f_frsize).

  runningContainers @3 :UInt32;
  # Containers in state `running`.

  activeMigrations @4 :UInt32;
  # Checkpoints being sent plus receivers open on this host.
}

struct ImageInfo {
  digest @0 :Text;
  # Content digest, "sha256:<hex>"; the identity used in prechecks.

  names @1 :List(Text);
  # References that resolve to this image ("docker.io/library/redis:7").

  sizeBytes @2 :UInt64;
  # Unpacked size on disk.
}

enum ContainerState {
  unknown @0;      # The agent cannot tell (runtime state unreadable).
  created @1;      # Created, process not started.
  running @2;
  paused @3;
  stopped @4;      # Process exited.
  checkpointed @5; # Dumped; the source keeps its images until commit or rollback.
  restoring @6;    # Target side, between prepareReceive and a finished restore.
}

struct ContainerInfo {
  id @0 :Text;
  # Full container id (64 hex digits).

  name @1 :Text;
  # Unique name on the host; the name migrations and the CLI use.

  image @2 :Text;
  # Image reference the container was created from.

  state @3 :ContainerState;

  pid @4 :Int32;
  # Host PID of the container's init process; 0 when not running.

  ip @5 :Text;
  # Container IP on the container network, dotted quad; empty if none.

  mac @6 :Text;
  # MAC of the container's interface, "aa:bb:cc:dd:ee:ff"; empty if none.

  createdAt @7 :Int64;
  # Creation time, nanoseconds since the Unix epoch.

  imageDigest @8 :Text;
  # "sha256:<hex>" of the image; what the target must have.

  exitCode @9 :Int32;
  # Exit status when `stopped`; meaningless otherwise.

  idMapping @10 :IdMapping;
  # Its user namespace; unset (size 0) = the host's. A migration keeps it:
  # the target must have it free (expectedManifest.idMapping).
}

struct IdMapping {
  # A container's user namespace (agent/id-mapping.h): container ids
  # 0..size-1 are host ids hostId..hostId+size-1, for uids and gids alike.
  # CRIU restores the namespace with the maps its images hold and the upper
  # dir's files are stored in host ids, so a container keeps its mapping
  # across hosts.

  hostId @0 :UInt32;
  # The host id container id 0 (its root) is.

  size @1 :UInt32;
  # How many ids are mapped; 0 = none: the host's user namespace.
}

struct KeyValue {
  key @0 :Text;
  value @1 :Text;
}

# ---------------------------------------------------------------------------
# Agent -> coordinator

struct Register {
  hostName @0 :Text;
  # The name the agent believes it has; must match the host its CURVE key is
  # registered for, or the coordinator refuses it.

  agentVersion @1 :Text;
  # migrate-agent version string.

  criuVersion @2 :Text;
  # `criu --version`, e.g. "4.2.1".

  runcVersion @3 :Text;
  # `runc --version` first line's version, e.g. "1.1.5".

  cpuInfo @4 :Data;
  # The image file written by `criu cpuinfo dump` on this host; the target of
  # a migration is asked to `criu cpuinfo check` the source's.

  capacity @5 :Capacity;

  images @6 :List(ImageInfo);
  # Every image present on the host.

  containers @7 :List(ContainerInfo);
  # Every container the agent manages, in any state.

  protocolVersion @8 :UInt32;
  # The `protocolVersion` constant the agent was built with.

  kernelVersion @9 :Text;
  # uname -r; CRIU restores only on a kernel that can run what it dumped.

  dataAddress @10 :Text;
  # Address this host's data receivers bind to and senders connect to (the
  # host's fabric address, e.g. 198.19.0.12).

  signingKey @11 :Data;
  # The Ed25519 public key (32 raw bytes) this agent signs its bundles with.
  # Bound to the host by the CURVE allow-list that authenticated this
  # message; the coordinator hands it to the targets of this host's
  # migrations (prepareReceive.sourceSigningKey).
}

struct Heartbeat {
  containers @0 :List(ContainerInfo);
  # Current state of every container; the coordinator reconciles against it.
  # Left unset (not empty) while the agent is busy with a long export or
  # import: the coordinator then keeps the list it had.

  load @1 :Load;

  sentAt @2 :Int64;
  # Agent's wall clock, nanoseconds since the epoch; for skew diagnostics only.
}

struct Progress {
  migrationId @0 :Text;
  # The migration this progress belongs to.

  phase @1 :Text;
  # A name of common/phase.h's Phase ("checkpoint", "stream", "receive",
  # "pages", ...), written and read only through phaseName/phaseFromName.
  # Text rather than a capnp enum so that a phase added later needs no
  # protocol version: a coordinator ignores the counters of a phase it does
  # not know (still taking `error`), where an enum would read as a number.

  bytesDone @2 :UInt64;
  # Bytes handled so far in this phase.

  bytesTotal @3 :UInt64;
  # Expected total for this phase; 0 when unknown.

  requestId @4 :UInt64;
  # The request doing the work; 0 if not tied to one.

  error @5 :Text;
  # Set when this side's part of the migration failed (e.g. the target's
  # receiver ran out of disk): the root cause, which the coordinator reports
  # instead of the other side's "broken pipe".

  errorKind @6 :ErrorKind;
  # Kind of `error`.
}

# ---------------------------------------------------------------------------
# Coordinator -> agent

struct Registered {
  coordinatorVersion @0 :Text;
  # migrate-coordinator version string.

  heartbeatIntervalMs @1 :UInt32;
  # How often the agent should send `heartbeat`.

  hostName @2 :Text;
  # The name the coordinator knows this agent by (from its key allow-list).
}

struct Request {
  requestId @0 :UInt64;
  # Chosen by the coordinator, unique per coordinator run; echoed in `reply`
  # and `progress`.

  migrationId @1 :Text;
  # The migration this request is part of, for logs and context; empty if none.

  timeoutMs @2 :UInt32;
  # How long the coordinator will wait for the reply; 0 = its default. The
  # agent gives up (and cleans up) after this long.

  union {
    runContainer @3 :RunContainer;
    # Reply: `container`.

    listContainers @4 :Void;
    # Reply: `containers`.

    removeContainer @5 :RemoveContainer;
    # Reply: `none`.

    stopContainer @6 :StopContainer;
    # Reply: `container`.

    containerLogs @7 :ContainerLogs;
    # Reply: `logs`.

    prepareReceive @8 :PrepareReceive;
    # Target side of a migration. Reply: `port` of the one-time receiver.

    checkpointAndSend @9 :CheckpointAndSend;
    # Source side. Reply: `stats` once the target has the whole bundle.

    restore @10 :Restore;
    # Target side, after the bundle arrived. Reply: `restored`.

    commitSource @11 :CommitSource;
    # Source side, after the coordinator recorded the new owner: delete the
    # container and its checkpoint. Reply: `none`.

    rollbackSource @12 :RollbackSource;
    # Source side, on failure before commit: restore from the own checkpoint.
    # Reply: `container`.

    abortReceive @13 :AbortReceive;
    # Target side, on failure before commit: close the receiver, kill and
    # remove whatever was restored, release name and IP. Reply: `none`.

    checkCpuInfo @14 :CheckCpuInfo;
    # `criu cpuinfo check` against another host's dump. Reply: `none` when
    # compatible; error `conflict` with CRIU's explanation when not.

    sendImage @15 :SendImage;
    # Stream an image to another agent's `receiveImage` port. Reply: `none`.

    receiveImage @16 :ReceiveImage;
    # Open a one-time receiver for an image. Reply: `port`.

    cancel @17 :Cancel;
    # Stop a running checkpointAndSend: before the freeze, as soon as the
    # dump returns, or mid-stream; it then replies with error `cancelled`
    # and the container is left checkpointed (stop-and-copy) or running
    # (post-copy) for the coordinator's rollback. Other requests finish.
    # Reply to the cancel itself: `none`, also when nothing was running.

    startContainer @18 :StartContainer;
    # Reserved, never implemented: agents answer `unimplemented`. (A
    # stopped container is run again with runContainer.)

    listImages @19 :Void;
    # Reply: `images`.

    describeHost @20 :Void;
    # Fresh copy of what `register` carried. Reply: `hostInfo`.

    finishPostCopy @21 :FinishPostCopy;
    # Source side of a post-copy migration, after the target restored: wait
    # until the last page went. Reply: `stats` (pagesNs, bytesPages); error
    # `failed` when the page channel broke: the source stays frozen (the
    # target ran, so resuming here would lose its writes) until the
    # coordinator asks for recovery (resumePostCopy) or for it back
    # (rollbackSource, only on an operator's `abandon --keep source`).

    postCopyStatus @22 :PostCopyRef;
    # Either side: what this host's page relay for the migration knows.
    # Reply: `postCopy`. Never fails for an unknown migration: the state is
    # then `absent`.

    resumePostCopy @23 :ResumePostCopy;
    # Either side, while the page channel is cut: take a fresh one-time key
    # (target: for the next connection its relay accepts; source: its relay
    # reconnects with it at once). The relays then ask again for every page
    # request still unanswered. Reply: `postCopy`.

    measureCheckpoint @24 :MeasureCheckpoint;
    # Source, before a migration with a downtime budget: what a checkpoint
    # of the running container would move now. Reply: `checkpointSize`.
  }
}

struct MeasureCheckpoint {
  containerName @0 :Text;
}

struct CheckpointSize {
  memoryBytes @0 :UInt64;
  # Resident anonymous and shared memory of its processes (RssAnon +
  # RssShmem): what CRIU dumps.
  rootfsDiffBytes @1 :UInt64;
  rootfsDiffEntries @2 :UInt64;
  # Its writable layer, as the bundle would carry it.
  postCopyRefusal @3 :Text;
  # Why this host could not serve the container's memory post-copy (a
  # sysctl, say); empty when it can.
}

struct PostCopyRef {
  migrationId @0 :Text;
  containerName @1 :Text;
}

struct ResumePostCopy {
  migrationId @0 :Text;
  containerName @1 :Text;
  psk @2 :Data;
}

enum PostCopyRelayState {
  absent @0;     # No relay for this migration on this host (never started, or long gone).
  starting @1;   # Spawned; not yet connected to its peer.
  flowing @2;    # Connected; pages move.
  cut @3;        # The channel to the peer broke; the relay waits for it (reconnects on the source side).
  done @4;       # Every page went (source: CRIU finished; target: lazy-pages exited 0).
  failed @5;     # Cannot go on: CRIU's page server or lazy-pages died; `error` says which.
}

struct PostCopyStatus {
  state @0 :PostCopyRelayState;
  error @1 :Text;
  # Why `cut` or `failed`, naming the part that broke.

  bytesPages @2 :UInt64;
  # Page bytes carried to the target so far (either side's count).

  outstandingRequests @3 :UInt32;
  # Target: page requests of lazy-pages not fully answered yet.

  cutForMs @4 :UInt64;
  # How long the channel has been cut (0 unless `cut`).

  containerFrozen @5 :Bool;
  # Target: the container's cgroup was frozen because its page source
  # (lazy-pages or the relay) died; its processes never ran on a page that
  # did not come from the source.

  relayPid @6 :Int32;
  # The relay process (it outlives the agent; a restarted agent adopts it).

  adopted @7 :Bool;
  # This agent did not start the relay: an earlier run of it did.
}

struct RunContainer {
  name @0 :Text;
  # Unique on the host; `conflict` if taken.

  image @1 :Text;
  # Image reference or digest; must be present on the host (`notFound` else).

  args @2 :List(Text);
  # Command and arguments; empty = the image's entrypoint and cmd.

  env @3 :List(Text);
  # "KEY=value", added to the image's environment.

  workingDir @4 :Text;
  # Empty = the image's.

  requestedIp @5 :Text;
  # Ask CNI for this address; empty = allocate.

  requestedMac @6 :Text;
  # Empty = generated.

  memoryLimitBytes @7 :UInt64;
  # 0 = unlimited.

  labels @8 :List(KeyValue);
  # Free-form metadata kept with the container.

  tcpEstablished @9 :Bool;
  # Default for later migrations of this container: checkpoint established
  # TCP connections (CRIU --tcp-established).

  hostUserns @10 :Bool;
  # False (the default): a user namespace of its own, with a mapping the
  # agent allocates from its --userns-range. True: the host's (root in the
  # container is root on the host).

  user @11 :Text;
  # "uid[:gid]" inside the container; empty = the image's.
}

struct RemoveContainer {
  name @0 :Text;
  force @1 :Bool;
  # Kill a running container first instead of refusing with `conflict`.
}

struct StopContainer {
  name @0 :Text;
  timeoutSeconds @1 :UInt32;
  # Grace period between SIGTERM and SIGKILL; 0 = agent default.
}

struct StartContainer {
  name @0 :Text;
}

struct ContainerLogs {
  name @0 :Text;
  tail @1 :UInt32;
  # Last N lines; 0 = everything.
}

struct ExpectedManifest {
  # What the target checks in the bundle's manifest.json before unpacking the
  # rest; a mismatch refuses the stream early with `invalidInput`.

  containerName @0 :Text;
  imageDigest @1 :Text;
  sourceHost @2 :Text;
  criuVersion @3 :Text;
  runcVersion @4 :Text;

  ip @5 :Text;
  # The container's address, reserved on the target by prepareReceive.

  mac @6 :Text;

  maxBundleBytes @7 :UInt64;
  # Uncompressed size bound; the receiver aborts past it. 0 = agent default.

  idMapping @8 :IdMapping;
  # The container's user namespace as the source reports it; unset (size 0)
  # = the host's. prepareReceive refuses with `conflict` when the target
  # cannot give it (outside its range, or overlapping a container's), before
  # the source freezes; the bundle's manifest must carry the same.
}

struct PrepareReceive {
  migrationId @0 :Text;
  # Also the TLS PSK identity of the data stream.

  containerName @1 :Text;
  # Reserved on the target until restore or abortReceive.

  psk @2 :Data;
  # One-time TLS 1.3 pre-shared key for this migration (32 bytes).

  expectedManifest @3 :ExpectedManifest;

  acceptTimeoutMs @4 :UInt32;
  # How long the receiver waits for the sender; 0 = agent default.

  postCopy @5 :Bool;
  # The receiver also accepts a second TLS connection after the bundle: the
  # page channel between the source's CRIU page server and the target's
  # lazy-pages daemon.

  sourceSigningKey @6 :Data;
  # The Ed25519 public key (32 raw bytes) the source host registered. The
  # target keeps the bundle only if it is signed by exactly this key; empty
  # = refused (a coordinator that knows no key for the source).
}

struct CheckpointAndSend {
  migrationId @0 :Text;
  # TLS PSK identity; must equal the target's prepareReceive.migrationId.

  containerName @1 :Text;

  targetAddress @2 :Text;
  # The target's dataAddress.

  targetPort @3 :UInt16;
  # From the target's prepareReceive reply.

  psk @4 :Data;
  # Same key the target got.

  tcpEstablished @5 :Bool;
  # CRIU --tcp-established.

  leaveRunning @6 :Bool;
  # CRIU --leave-running: keep the source running (a copy, not a move; for
  # tests and dry runs).

  compressionLevel @7 :Int32;
  # zstd level; 0 = default.

  compressionThreads @8 :UInt32;
  # zstd workers; 0 = agent default.

  fileLocks @9 :Bool;
  # CRIU --file-locks.

  postCopy @10 :Bool;
  # Post-copy (CRIU lazy pages): the bundle carries every image but the
  # memory pages; after it, a second TLS connection to the same port carries
  # the pages on demand until finishPostCopy. The container stays frozen here
  # meanwhile.
}

struct Restore {
  migrationId @0 :Text;
  containerName @1 :Text;

  expectedSha256 @2 :Text;
  # Hex SHA-256 of the bundle's tar before signature.json (the digest the
  # source signed; checkpointAndSend's stats.sha256); the target refuses to
  # restore a bundle whose digest, as its reader computed it, differs.
  # Empty = not checked. (Protocol 2 hashed the compressed stream.)

  tcpEstablished @3 :Bool;
  # Restore established TCP connections (must match the dump).

  postCopy @4 :Bool;
  # Restore with `--lazy-pages`: memory is fetched from the source through
  # the page channel while the container runs.
}

struct FinishPostCopy {
  migrationId @0 :Text;
  containerName @1 :Text;
}

struct CommitSource {
  migrationId @0 :Text;
  containerName @1 :Text;
}

struct RollbackSource {
  migrationId @0 :Text;
  containerName @1 :Text;
}

struct AbortReceive {
  migrationId @0 :Text;
}

struct CheckCpuInfo {
  cpuInfo @0 :Data;
  # Another host's `criu cpuinfo dump` image.
}

struct SendImage {
  image @0 :Text;
  # Reference or digest present on this host.

  targetAddress @1 :Text;
  targetPort @2 :UInt16;

  psk @3 :Data;

  pskIdentity @4 :Text;
}

struct ReceiveImage {
  digest @0 :Text;
  # What the incoming image must hash to.

  psk @1 :Data;

  pskIdentity @2 :Text;

  acceptTimeoutMs @3 :UInt32;
}

struct Cancel {
  requestId @0 :UInt64;
  # The request to stop.
}

# ---------------------------------------------------------------------------
# Replies

enum ErrorKind {
  # Mirrors common/error.h ErrorKind: the coordinator retries, rolls back or
  # gives up by kind, never by parsing text.
  failed @0;
  overloaded @1;
  disconnected @2;
  unimplemented @3;
  invalidInput @4;
  notFound @5;
  conflict @6;
  cancelled @7;
}

struct PhaseTiming {
  phase @0 :Text;
  nanos @1 :UInt64;
}

struct MigrationStats {
  freezingNs @0 :UInt64;
  # CRIU stats-dump freezing_time: time to freeze the tree.

  frozenNs @1 :UInt64;
  # CRIU frozen_time: the tree stayed frozen this long during the dump.

  memdumpNs @2 :UInt64;
  # CRIU memdump_time.

  memwriteNs @3 :UInt64;
  # CRIU memwrite_time.

  pagesScanned @4 :UInt64;
  pagesWritten @5 :UInt64;

  checkpointNs @6 :UInt64;
  # Whole `runc checkpoint`, wall time.

  streamNs @7 :UInt64;
  # From connect to the receiver's acknowledgement of the last byte.

  restoreNs @8 :UInt64;
  # Whole `runc restore`, wall time (target).

  bytesRaw @9 :UInt64;
  # Uncompressed bundle (tar) size.

  bytesWire @10 :UInt64;
  # Bytes after compression, before TLS framing.

  sha256 @11 :Text;
  # Hex SHA-256 of the bundle's tar before signature.json (what the bundle's
  # signature signs), as computed by the side replying.

  phases @12 :List(PhaseTiming);
  # Every named phase in order, including ones without a field above.

  pagesNs @13 :UInt64;
  # Post-copy: from the source's reply to checkpointAndSend until the last
  # page went (finishPostCopy).

  bytesPages @14 :UInt64;
  # Post-copy: bytes the page channel carried to the target.

  pageChannelReconnects @15 :UInt32;
  # Post-copy: how often the page relays connected again after a cut.
}

struct RestoreResult {
  container @0 :ContainerInfo;
  stats @1 :MigrationStats;
  # Target-side stats (restoreNs, sha256 as received, phases).
}

struct Reply {
  requestId @0 :UInt64;
  # Echo of `request.requestId`.

  ok @1 :Bool;
  # False: `errorKind` and `errorMessage` say why; the payload is `none`.

  errorKind @2 :ErrorKind;

  errorMessage @3 :Text;
  # Human-readable, naming subsystem and object ("criu: restore of `web`
  # failed: ... (see /var/lib/...)").

  union {
    none @4 :Void;
    port @5 :UInt16;
    containers @6 :List(ContainerInfo);
    logs @7 :Text;
    stats @8 :MigrationStats;
    container @9 :ContainerInfo;
    images @10 :List(ImageInfo);
    restored @11 :RestoreResult;
    hostInfo @12 :Register;
    postCopy @13 :PostCopyStatus;
    checkpointSize @14 :CheckpointSize;
  }
}
