#!/usr/bin/env python3
"""Checkpoint/restore benchmarks: the local floor (runc + CRIU, images on
tmpfs), the podman baseline (checkpoint --export / restore --import) and our
agent's export/import, on the same workloads.

  bench.py measure --build DIR --out DIR [--sizes 64,256] [--modes random,text]
                   [--files N] [--runs N] [--methods floor,podman,ours]
                   [--workloads random-64,randrw-1024]
  bench.py report --out DIR          # results.json, table, plot data
  bench.py timed -- CMD...           # one command: wall, cpu, peak RSS (JSON)
  bench.py randrw-client --ip IP --port N --mib N   # drives a pagecheck payload

The randrw-N workload (issue 12) is the pagecheck payload holding N MiB,
written and read at random pages by a client in the lab's client netns for
the whole migration, so that post-copy's page transfer runs against a
container faulting its pages in; only the lab migrations can run it.

`measure` appends one JSON line per run to OUT/runs.jsonl; another producer
may append lines of the same shape:
  {"method", "workload", "mib", "mode", "run", "ok", "downtime", "total",
   "bytes", "peakRssKiB", "cpuSeconds", "phases": {name: seconds}, ...}

Downtime is measured the same way for every method: the sum of the wall times
of the commands on the critical path, from the start of the checkpoint command
(the process is frozen right after it starts) to the return of the restore
command (the process runs again). Commands outside that path (removing the
stopped container so the same id can be restored) are not counted.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

CPUACCT = "/sys/fs/cgroup/cpuacct"
VERIFIED = re.compile(r"verified (\d+)\s*$")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Measuring one command


class Meter:
    """Runs commands one at a time, each in its own cpuacct cgroup (so CPU of
    daemonized helpers such as conmon's monitor is counted too) and reaped with
    wait4 (so peak RSS covers every waited-for descendant, like time -v)."""

    def __init__(self):
        self.base = None
        self.dirs = []
        if os.path.isdir(CPUACCT) and os.access(CPUACCT, os.W_OK):
            self.base = os.path.join(CPUACCT, f"migrate-bench-{os.getpid()}")
            os.makedirs(self.base, exist_ok=True)

    def _step_cgroup(self):
        """A new cpuacct cgroup for one command (None without one), and the
        preexec_fn that puts the child into it."""
        cg = None
        if self.base:
            cg = os.path.join(self.base, f"s{len(self.dirs)}")
            os.mkdir(cg)
            self.dirs.append(cg)

        def join():
            if cg:
                with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
        return cg, join

    def run(self, args, env=None, pass_fds=(), check=True, stdin=None, after=None):
        """Returns dict(wall, cpu, maxrssKiB, status, out, err). `after`, if
        given, runs once the process exited and before the clock stops (e.g.
        reading conmon's sync pipe)."""
        cg, join = self._step_cgroup()

        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.monotonic()
            p = subprocess.Popen(args, stdout=out, stderr=err, stdin=stdin or subprocess.DEVNULL,
                                 env=env, pass_fds=pass_fds, preexec_fn=join)
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            extra = after() if after else None
            wall = time.monotonic() - start
            out.seek(0)
            err.seek(0)
            o, e = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        cpu = usage.ru_utime + usage.ru_stime
        if cg:
            with open(os.path.join(cg, "cpuacct.usage")) as f:
                cpu = max(cpu, int(f.read()) / 1e9)
        r = {"wall": wall, "cpu": cpu, "maxrssKiB": usage.ru_maxrss, "status": p.returncode,
             "out": o, "err": e, "extra": extra}
        if check and p.returncode != 0:
            raise RuntimeError(f"`{' '.join(args)}` exited with {p.returncode}: {e.strip()[-2000:]}")
        return r

    def spawn(self, args, **kw):
        """Starts a command in its own step cgroup without waiting; reap() it."""
        cg, join = self._step_cgroup()

        p = subprocess.Popen(args, preexec_fn=join, **kw)
        p.bench_cgroup = cg
        return p

    def reap(self, p, timeout=None):
        """wait4 on a spawned command: dict(cpu, maxrssKiB, status), or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        if p.bench_cgroup:
            with open(os.path.join(p.bench_cgroup, "cpuacct.usage")) as f:
                cpu = max(cpu, int(f.read()) / 1e9)
        return {"cpu": cpu, "maxrssKiB": usage.ru_maxrss, "status": p.returncode}

    def close(self):
        """Removes the step cgroups; conmon monitors leave them once their
        container is gone, so retry for a while."""
        if not self.base:
            return
        deadline = time.monotonic() + 20
        for d in self.dirs + [self.base]:
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        log(f"could not remove cgroup {d} (still in use)")
                        break
                    time.sleep(0.2)


def cgroup_cpu(path):
    """CPU seconds of a container's cpuacct cgroup (runc moves CRIU's restore
    there, so that is where restore CPU lands)."""
    try:
        with open(os.path.join(CPUACCT, path.lstrip("/"), "cpuacct.usage")) as f:
            return int(f.read()) / 1e9
    except OSError:
        return 0.0


def pid_cgroup(pid):
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "cpuacct" in controllers.split(","):
                    return path
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------
# CRIU stats images (stats-dump, stats-restore): a magic, then one
# size-prefixed protobuf stats_entry. Times are in microseconds.

DUMP_FIELDS = {1: "freezingTime", 2: "frozenTime", 3: "memdumpTime", 4: "memwriteTime", 5: "pagesScanned",
               6: "pagesSkippedParent", 7: "pagesWritten", 8: "irmapResolve", 9: "pagesLazy"}
RESTORE_FIELDS = {1: "pagesCompared", 2: "pagesSkippedCow", 3: "forkingTime", 4: "restoreTime", 5: "pagesRestored"}


def _varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(buf):
    i, out = 0, {}
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            out[field], i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            out[field] = buf[i:i + n]
            i += n
        elif wire == 5:
            out[field] = struct.unpack_from("<I", buf, i)[0]
            i += 4
        elif wire == 1:
            out[field] = struct.unpack_from("<Q", buf, i)[0]
            i += 8
        else:
            break
    return out


def criu_stats(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    try:
        # Two magic words (IMG_SERVICE_MAGIC, STATS_MAGIC), then the entry.
        size = struct.unpack_from("<I", data, 8)[0]
        entry = _fields(data[12:12 + size])
        out = {}
        for field, names in ((1, DUMP_FIELDS), (2, RESTORE_FIELDS)):
            if isinstance(entry.get(field), (bytes, bytearray)):
                for k, v in _fields(entry[field]).items():
                    if k in names and isinstance(v, int):
                        name = names[k]
                        out[name] = v / 1e6 if name.endswith("Time") else v
        return out
    except (struct.error, IndexError, TypeError):
        return {}


# ---------------------------------------------------------------------------
# Workloads


RANDRW_PORT = 7000
RANDRW_SEED = 12


def workload_command(wl):
    if wl["kind"] == "memhog":
        return ["/usr/local/bin/memhog", str(wl["mib"]), wl["mode"]]
    if wl["kind"] == "pagecheck":
        return ["/usr/local/bin/pagecheck", str(RANDRW_PORT), str(wl["mib"]), str(RANDRW_SEED)]
    # Many small files in the writable layer, written by shell builtins (no
    # fork per file), then a small memhog so "verified" means running again.
    script = (f"mkdir -p /files; s=x; for k in 1 2 3 4 5 6 7 8 9 10; do s=$s$s; done; i=0; "
              f"while [ $i -lt {wl['count']} ]; do echo \"$i ${{s:0:1000}}\" > /files/f$i; i=$((i+1)); done; "
              f"exec /usr/local/bin/memhog 16 text")
    return ["/bin/sh", "-c", script]


def read_rounds(path):
    """Last "verified N" round in a k8s-file log, and whether it says CORRUPT."""
    last, corrupt = 0, False
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = VERIFIED.search(line)
                if m:
                    last = int(m.group(1))
                elif "CORRUPT" in line:
                    corrupt = True
    except OSError:
        pass
    return last, corrupt


def wait_round(log_path_fn, at_least, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last, corrupt = read_rounds(log_path_fn())
        if corrupt:
            raise RuntimeError(f"memory CORRUPT after restore ({log_path_fn()})")
        if last >= at_least:
            return last
        time.sleep(0.05)
    raise RuntimeError(f"no `verified {at_least}` in {log_path_fn()} within {timeout}s")


# ---------------------------------------------------------------------------
# Methods


class Floor:
    """runc checkpoint to tmpfs and runc restore from it, both under conmon as
    our agent does, no transfer: what CRIU itself costs here."""
    name = "floor"
    reachable = False  # no network a client could reach the container on

    def __init__(self, ctx):
        self.ctx = ctx
        self.dir = os.path.join(ctx.tmp, self.name)
        self.root = os.path.join(self.dir, "runc-root")
        self.rootfs = os.path.join(self.dir, "rootfs")
        os.makedirs(self.rootfs)
        os.makedirs(self.root)
        subprocess.run(["tar", "-xf", ctx.image, "-C", self.rootfs], check=True)
        self.criu_conf = os.path.join(self.dir, "criu.conf")
        with open(self.criu_conf, "w") as f:
            f.write("network-lock nftables\n")  # as the agent configures CRIU
        self.live = set()
        self.shm = tempfile.mkdtemp(prefix=f"migrate-bench-{self.name}.", dir="/dev/shm")

    def _conmon(self, ident, bundle, restore=None):
        args = ["conmon", "--api-version", "1", "-c", ident, "-u", ident, "-n", ident, "-r", "/usr/sbin/runc",
                "-b", bundle, "-p", os.path.join(bundle, "pidfile"), "-P", os.path.join(bundle, "conmon.pid"),
                "-l", "k8s-file:" + os.path.join(bundle, "ctr.log"),
                "--exit-dir", os.path.join(bundle, "exits"), "--socket-dir-path", os.path.join(bundle, "sock"),
                "--runtime-arg", "--root=" + self.root]
        if restore:
            args += ["--restore", restore["images"], "--runtime-opt", "--work-path=" + restore["work"]]
        return args

    def start(self, wl, ident):
        bundle = os.path.join(self.dir, ident)
        for d in ("exits", "sock"):
            os.makedirs(os.path.join(bundle, d), exist_ok=True)
        subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
        spec_path = os.path.join(bundle, "config.json")
        with open(spec_path) as f:
            spec = json.load(f)
        spec["root"] = {"path": self.rootfs, "readonly": False}
        spec["process"]["terminal"] = False
        spec["process"]["args"] = workload_command(wl)
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
        spec["hostname"] = ident
        spec["linux"]["cgroupsPath"] = f"/migrate-bench-floor/{ident}"
        spec.setdefault("annotations", {})["org.criu.config"] = self.criu_conf
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        h = {"id": ident, "bundle": bundle, "log": os.path.join(bundle, "ctr.log")}
        self.live.add(ident)
        res = self._run_conmon(self._conmon(ident, bundle))
        if res["extra"].get("data", -1) <= 0:
            raise RuntimeError(f"floor: runc create failed: {res['extra']}")
        subprocess.run(["runc", "--root", self.root, "start", ident], check=True)
        return h

    def _run_conmon(self, args):
        r, w = os.pipe()
        env = dict(os.environ, _OCI_SYNCPIPE=str(w))

        def reply():
            os.close(w)
            data = b""
            while b"\n" not in data:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                data += chunk
            return json.loads(data.split(b"\n")[0] or b"{}")

        try:
            return self.ctx.meter.run(args, env=env, pass_fds=(w,), after=reply)
        finally:
            for fd in (r, w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def log_path(self, h):
        return h["log"]

    def migrate(self, h):
        ident, bundle = h["id"], h["bundle"]
        images = os.path.join(self.shm, ident)
        work = os.path.join(bundle, "criu-work")
        os.makedirs(images)
        os.makedirs(work, exist_ok=True)
        ck = self.ctx.meter.run(["runc", "--root", self.root, "checkpoint", "--image-path", images,
                                 "--work-path", work, ident])
        h["frozenRound"] = read_rounds(h["log"])[0]
        dump_stats = criu_stats(os.path.join(work, "stats-dump"))
        nbytes = tree_size(images)
        rwork = os.path.join(bundle, "criu-work-restore")
        os.makedirs(rwork, exist_ok=True)
        rs = self._run_conmon(self._conmon(ident, bundle, {"images": images, "work": rwork}))
        pid = rs["extra"].get("data", -1)
        if pid <= 0:
            raise RuntimeError(f"floor: runc restore failed: {rs['extra']} {tail(os.path.join(rwork, 'restore.log'))}")
        ctr_cpu = cgroup_cpu(f"/migrate-bench-floor/{ident}")
        restore_stats = criu_stats(os.path.join(rwork, "stats-restore"))
        shutil.rmtree(images, ignore_errors=True)
        return {"downtime": ck["wall"] + rs["wall"], "total": ck["wall"] + rs["wall"], "bytes": nbytes,
                "peakRssKiB": max(ck["maxrssKiB"], rs["maxrssKiB"]),
                "cpuSeconds": ck["cpu"] + rs["cpu"] + ctr_cpu,
                "phases": {"checkpoint": ck["wall"], "restore": rs["wall"]},
                "criuDump": dump_stats, "criuRestore": restore_stats}

    def cleanup(self, h):
        ident = h["id"]
        subprocess.run(["runc", "--root", self.root, "delete", "--force", ident],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_conmon_gone(os.path.join(h["bundle"], "conmon.pid"))
        self.live.discard(ident)
        shutil.rmtree(os.path.join(self.rootfs, "files"), ignore_errors=True)
        shutil.rmtree(h["bundle"], ignore_errors=True)
        rmdir_cgroups(f"migrate-bench-floor/{ident}")

    def close(self):
        for ident in list(self.live):
            subprocess.run(["runc", "--root", self.root, "delete", "--force", ident],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rmdir_cgroups(f"migrate-bench-floor/{ident}")
        rmdir_cgroups("migrate-bench-floor")
        shutil.rmtree(self.shm, ignore_errors=True)


PIPE_MAX_NEEDED = 4 << 20  # CRIU's lazy page server sizes a pipe to PIPE_MAX_SIZE pages


class PostCopy(Floor):
    """Post-copy (lazy) migration on one host through runc: runc checkpoint
    --lazy-pages serves the memory from CRIU's page server, `criu lazy-pages`
    on the "target" (its own runc root) fetches it on demand, and runc restore
    --lazy-pages runs the process before its memory has arrived.

    Needs fs.pipe-max-size >= 4 MiB: without CAP_SYS_RESOURCE (this machine)
    CRIU's pipe_read_dest_init() fails F_SETPIPE_SZ(4 MiB) with EPERM, its
    result is ignored, and the first page request splices into fd -1
    ("page-pipe: splice: -1: Bad file descriptor")."""
    name = "postcopy"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.troot = os.path.join(self.dir, "runc-root-target")
        os.makedirs(self.troot)

    def start(self, wl, ident):
        h = super().start(wl, ident)
        tbundle = os.path.join(self.dir, ident + "-target")
        for d in ("exits", "sock"):
            os.makedirs(os.path.join(tbundle, d), exist_ok=True)
        with open(os.path.join(h["bundle"], "config.json")) as f:
            spec = json.load(f)
        spec["linux"]["cgroupsPath"] = f"/migrate-bench-floor/{ident}-target"
        with open(os.path.join(tbundle, "config.json"), "w") as f:
            json.dump(spec, f)
        h["tbundle"] = tbundle
        return h

    def _target_conmon(self, ident, tbundle, images, work):
        args = self._conmon(ident, tbundle, {"images": images, "work": work})
        args[args.index("--root=" + self.root)] = "--root=" + self.troot
        return args + ["--runtime-opt", "--lazy-pages"]

    def migrate(self, h):
        ident, bundle, tbundle = h["id"], h["bundle"], h["tbundle"]
        images = os.path.join(self.shm, ident)
        work = os.path.join(bundle, "criu-work")
        rwork = os.path.join(tbundle, "criu-work")
        for d in (images, work, rwork):
            os.makedirs(d, exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        sr, sw = os.pipe()
        t0 = time.monotonic()
        ck = self.ctx.meter.spawn(["runc", "--root", self.root, "checkpoint", "--lazy-pages",
                                   "--page-server", f"127.0.0.1:{port}", "--status-fd", str(sw),
                                   "--image-path", images, "--work-path", work, ident],
                                  pass_fds=(sw,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(sw)
        lazy = None
        try:
            ready = os.read(sr, 1)  # runc writes \0 once the page server listens
            os.close(sr)
            t_ready = time.monotonic()
            if ready != b"\0":
                ck.wait()
                raise RuntimeError(f"postcopy: lazy dump failed: {ck.stderr.read().decode()[-800:]} "
                                   f"{tail(os.path.join(work, 'dump.log'))}")
            h["frozenRound"] = read_rounds(h["log"])[0]
            # The target side starts with the log so far, as a migrated container's would.
            shutil.copy(h["log"], os.path.join(tbundle, "ctr.log"))
            lazy = self.ctx.meter.spawn(["criu", "lazy-pages", "--page-server", "--address", "127.0.0.1",
                                         "--port", str(port), "--images-dir", images, "--work-dir", rwork,
                                         "-o", "lazy-pages.log", "-v4"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sock = os.path.join(rwork, "lazy-pages.socket")
            while not os.path.exists(sock):
                if lazy.poll() is not None:
                    raise RuntimeError(f"postcopy: criu lazy-pages exited: {tail(os.path.join(rwork, 'lazy-pages.log'))}")
                time.sleep(0.002)
            t_lazy = time.monotonic()
            rs = self._run_conmon(self._target_conmon(ident, tbundle, images, rwork))
            t_running = time.monotonic()
            pid = rs["extra"].get("data", -1)
            if pid <= 0:
                raise RuntimeError(f"postcopy: runc restore --lazy-pages failed: {rs['extra']} "
                                   f"{tail(os.path.join(rwork, 'restore.log'))}")
            h["log"] = os.path.join(tbundle, "ctr.log")
            h["root"] = self.troot
            ctr_cpu = cgroup_cpu(f"/migrate-bench-floor/{ident}-target")
            ckr = self.ctx.meter.reap(ck, timeout=300)  # returns once every page went over
            t_complete = time.monotonic()
            lzr = self.ctx.meter.reap(lazy, timeout=30)
            lazy = None
            if ckr is None or ckr["status"] != 0:
                raise RuntimeError(f"postcopy: page transfer failed: {tail(os.path.join(work, 'dump.log'))}")
        finally:
            if lazy is not None and lazy.poll() is None:
                lazy.kill()
                lazy.wait()
            if ck.poll() is None:
                ck.kill()
                ck.wait()
        # CRIU's stats-dump is not meaningful for a lazy dump; the lazy-pages
        # daemon logs how many pages it had to fetch.
        lazy_pages = 0
        try:
            with open(os.path.join(rwork, "lazy-pages.log"), errors="replace") as f:
                for line in f:
                    m = re.search(r"Found (\d+) pages to be handled by UFFD", line)
                    if m:
                        lazy_pages += int(m.group(1))
        except OSError:
            pass
        nbytes = tree_size(images) + lazy_pages * 4096
        shutil.rmtree(images, ignore_errors=True)
        return {"downtime": t_running - t0, "total": t_complete - t0, "bytes": nbytes,
                "peakRssKiB": max(ckr["maxrssKiB"], rs["maxrssKiB"], (lzr or {}).get("maxrssKiB", 0)),
                "cpuSeconds": ckr["cpu"] + rs["cpu"] + (lzr or {}).get("cpu", 0.0) + ctr_cpu,
                "phases": {"lazyDump": t_ready - t0, "lazyDaemon": t_lazy - t_ready, "restore": t_running - t_lazy,
                           "pageTransfer": t_complete - t_running},
                "lazyPages": lazy_pages, "criuRestore": criu_stats(os.path.join(rwork, "stats-restore"))}

    def cleanup(self, h):
        for root in (self.root, self.troot):
            subprocess.run(["runc", "--root", root, "delete", "--force", h["id"]],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_conmon_gone(os.path.join(h["tbundle"], "conmon.pid"))
        rmdir_cgroups(f"migrate-bench-floor/{h['id']}-target")
        shutil.rmtree(h["tbundle"], ignore_errors=True)
        super().cleanup(h)

    def close(self):
        for ident in list(self.live):
            subprocess.run(["runc", "--root", self.troot, "delete", "--force", ident],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rmdir_cgroups(f"migrate-bench-floor/{ident}-target")
        super().close()


class Ours:
    """migrate-agent checkpoint --export FILE, copy, restore --import FILE, on
    one host (the bundle a migration streams, staged in a file)."""
    name = "ours"
    reachable = False
    host = "bench"

    def __init__(self, ctx, state_parent=None, name="ours"):
        self.ctx = ctx
        self.name = name
        self.state = tempfile.mkdtemp(prefix=f"migrate-bench-{name}.", dir=state_parent or ctx.tmp)
        self.files = os.path.join(ctx.tmp, name + "-files")
        os.makedirs(self.files)
        self.agent(["image", "import", ctx.image, "test"])
        self.live = set()

    def agent(self, args, meter=False, check=True):
        cmd = [self.ctx.agent, "--state", self.state, "--host", self.host, "-o", "json"] + args
        if meter:
            return self.ctx.meter.run(cmd, check=check)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RuntimeError(f"{self.name}: migrate-agent {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def start(self, wl, ident):
        out = json.loads(self.agent(["run", "--no-network", "--name", ident, "test"] + workload_command(wl)))
        self.live.add(ident)
        return {"id": ident, "cid": out["id"], "dir": out["dir"]}

    def log_path(self, h):
        return os.path.join(h["dir"], "ctr.log")

    def migrate(self, h):
        ident = h["id"]
        exported = os.path.join(self.files, ident + ".tar.zst")
        copied = os.path.join(self.files, ident + ".copy.tar.zst")
        ck = self.agent(["checkpoint", ident, "--export", exported], meter=True)
        ckj = json.loads(ck["out"])
        h["frozenRound"] = read_rounds(self.log_path(h))[0]
        dump_stats = criu_stats(os.path.join(h["dir"], "criu-work", "stats-dump"))
        cp = self.ctx.meter.run(["cp", exported, copied])
        self.agent(["rm", ident])  # the source's copy goes once another host runs it: not downtime
        rs = self.agent(["restore", "--import", copied], meter=True)
        rsj = json.loads(rs["out"])
        ctr_cpu = cgroup_cpu(f"/migrate/{self.host}/{h['cid']}")
        restore_stats = criu_stats(os.path.join(rsj.get("dir", h["dir"]), "criu-work", "stats-restore"))
        h["dir"] = rsj.get("dir", h["dir"])
        nbytes = os.path.getsize(exported)
        os.unlink(exported)
        os.unlink(copied)
        t_ck, t_rs = ckj.get("times", {}), rsj.get("times", {})
        phases = {"dump": t_ck.get("dump", 0.0),
                  "export": ck["wall"] - t_ck.get("dump", 0.0),
                  "copy": cp["wall"],
                  "import": rs["wall"] - sum(t_rs.values()),
                  "storage": t_rs.get("storage", 0.0), "network": t_rs.get("network", 0.0),
                  "restore": t_rs.get("restore", 0.0)}
        return {"downtime": ck["wall"] + cp["wall"] + rs["wall"], "total": ck["wall"] + cp["wall"] + rs["wall"],
                "bytes": nbytes, "bytesRaw": ckj.get("export", {}).get("bytesRaw"),
                "peakRssKiB": max(ck["maxrssKiB"], cp["maxrssKiB"], rs["maxrssKiB"]),
                "cpuSeconds": ck["cpu"] + cp["cpu"] + rs["cpu"] + ctr_cpu,
                "phases": phases, "criuDump": dump_stats, "criuRestore": restore_stats}

    def cleanup(self, h):
        self.agent(["rm", "-f", h["id"]], check=False)
        self.live.discard(h["id"])

    def close(self):
        for ident in list(self.live):
            self.agent(["rm", "-f", ident], check=False)
        self.agent(["image", "rm", "test"], check=False)
        subprocess.run(["umount", "-R", self.state], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.rmtree(self.files, ignore_errors=True)
        rmdir_cgroups(f"migrate/{self.host}")


class LabMigration:
    """Our live migration between two lab hosts: `migrate CTR --to host2
    --tcp-established` through the coordinator, with an agent daemon per lab
    host (scripts/cluster.sh). Downtime is the coordinator's own figure (from
    sending checkpointAndSend until the target's restore reply: frozen on host1
    until running on host2); total is the whole CLI command."""
    name = "migration"
    reachable = True  # from the lab's client netns, at the container's IP

    def __init__(self, ctx, post_copy=False):
        # post_copy: `--postcopy` (CRIU lazy pages through the agents' TLS
        # page channel); total then runs until the last page went.
        self.post_copy = post_copy
        if post_copy:
            self.name = "migration-postcopy"
        self.ctx = ctx
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.cluster = os.path.join(top, "scripts", "cluster.sh")
        self.cluster_env = dict(os.environ, BUILD_DIR=ctx.build, LAB_QUIET="1")
        self.cli = os.path.join(ctx.build, "migrate", "migrate")
        self.cli_env = dict(os.environ, MIGRATE_COORDINATOR="unix:/run/migrate-lab/coordinator.sock",
                            MIGRATE_TOKEN_FILE="/var/lib/migrate-lab/keys/token")
        subprocess.run([self.cluster, "up", "2", ctx.image, "test"], check=True, env=self.cluster_env)
        self.live = set()

    def migrate_cli(self, args, check=True):
        # --output before the verb: after `run IMAGE` everything is the container's command.
        p = subprocess.run([self.cli, "--output", "json"] + args, capture_output=True, text=True,
                           env=self.cli_env)
        if check and p.returncode != 0:
            raise RuntimeError(f"migration: migrate {' '.join(args)}: {p.stderr.strip()} {p.stdout.strip()[-500:]}")
        return json.loads(p.stdout) if p.stdout.strip() else {}

    @staticmethod
    def daemon_pids():
        pids = []
        for f in ["/run/migrate-lab/coordinator.pid", "/run/migrate-lab/host1/agent.pid",
                  "/run/migrate-lab/host2/agent.pid"]:
            try:
                with open(f) as fh:
                    pids.append(int(fh.read().strip()))
            except (OSError, ValueError):
                pass
        return pids

    @staticmethod
    def cpu_seconds(pids):
        total = 0.0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return total

    @staticmethod
    def peak_rss_kib(pids):
        peak = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
        return peak

    def start(self, wl, ident):
        out = self.migrate_cli(["run", "--on", "host1", "--name", ident, "test"] + workload_command(wl))
        self.live.add(ident)
        return {"id": ident, "cid": out["id"], "host": "host1", "ip": out.get("ip")}

    def log_path(self, h):
        return f"/var/lib/migrate-lab/{h['host']}/containers/{h['cid']}/ctr.log"

    def migrate(self, h):
        pids = self.daemon_pids()
        cpu0 = self.cpu_seconds(pids)
        t = time.monotonic()
        m = self.migrate_cli([h["id"], "--to", "host2", "--tcp-established"] + (["--postcopy"] if self.post_copy else []))
        wall = time.monotonic() - t
        if m.get("state") != "succeeded":
            raise RuntimeError(f"migration {m.get('id')} {m.get('state')}: {m.get('error')}")
        cpu = self.cpu_seconds(pids) - cpu0
        h["host"] = "host2"
        # The log came along in the bundle: its last round before the freeze is
        # at most the last one there now (the next one proves it runs again).
        h["frozenRound"] = read_rounds(self.log_path(h))[0]
        stats = m.get("stats", {})
        phases = {k: v / 1000.0 for k, v in stats.get("phases", {}).items()}
        return {"downtime": stats.get("downtimeMs", 0) / 1000.0, "total": wall,
                "bytes": stats.get("bytesWire", 0) + stats.get("bytesPages", 0),
                "bytesRaw": stats.get("bytesRaw"), "peakRssKiB": self.peak_rss_kib(pids), "cpuSeconds": cpu,
                "phases": phases, "agentPhases": stats.get("agentPhases"), "criuMigration": stats.get("criu"),
                "pagesMs": stats.get("pagesMs")}

    def cleanup(self, h):
        self.migrate_cli(["rm", "--force", h["id"]], check=False)
        self.live.discard(h["id"])

    def close(self):
        for ident in list(self.live):
            self.migrate_cli(["rm", "--force", ident], check=False)
        subprocess.run([self.cluster, "down"], env=self.cluster_env, stderr=subprocess.DEVNULL)


class Podman:
    """What a user would do today: podman container checkpoint --export
    (zstd), copy, podman container restore --import; podman 4.3.1 on runc,
    with its own storage and run roots under the bench's temp dir."""
    name = "podman"
    reachable = False

    def __init__(self, ctx):
        self.ctx = ctx
        self.dir = os.path.join(ctx.tmp, "podman")
        for d in ("root", "runroot", "tmp", "files"):
            os.makedirs(os.path.join(self.dir, d))
        self.base = ["podman", "--root", os.path.join(self.dir, "root"), "--runroot", os.path.join(self.dir, "runroot"),
                     "--tmpdir", os.path.join(self.dir, "tmp"), "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                     "--events-backend", "file", "--storage-driver", "overlay"]
        self.live = set()
        # podman leaves its parent cgroup and its SHM lock file behind; remove
        # them at the end only if this run made them.
        self.made_cgroup = not os.path.exists(os.path.join(CPUACCT, "libpod_parent"))
        self.made_lock = not os.path.exists("/dev/shm/libpod_lock")
        self.podman(["import", ctx.image, "localhost/migrate-test"])

    def podman(self, args, meter=False, check=True):
        if meter:
            return self.ctx.meter.run(self.base + args, check=check)
        p = subprocess.run(self.base + args, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    @staticmethod
    def probe(ctx):
        """Why podman cannot run here, or None."""
        if not shutil.which("podman"):
            return "podman is not installed"
        try:
            p = Podman(ctx)
        except Exception as e:  # noqa: BLE001 - the reason is the report
            shutil.rmtree(os.path.join(ctx.tmp, "podman"), ignore_errors=True)
            return f"podman cannot import an image here: {e}"
        try:
            h = p.start({"kind": "memhog", "mib": 1, "mode": "text"}, "probe")
            wait_round(lambda: p.log_path(h), 1, 30)
            p.cleanup(h)
        except Exception as e:  # noqa: BLE001
            p.close()
            return f"podman cannot run a container here: {str(e)[-600:]}"
        return p

    def start(self, wl, ident):
        self.live.add(ident)
        cid = self.podman(["run", "-d", "--name", ident, "--network", "none", "--log-driver", "k8s-file",
                           "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000",
                           "localhost/migrate-test"] + workload_command(wl)).strip()
        h = {"id": ident, "cid": cid}
        h["log"] = self._log_of(ident)
        return h

    def _log_of(self, ident):
        return self.podman(["inspect", "--format", "{{.HostConfig.LogConfig.Path}}", ident]).strip()

    def log_path(self, h):
        return h["log"]

    def migrate(self, h):
        ident = h["id"]
        exported = os.path.join(self.dir, "files", ident + ".tar.zst")
        copied = os.path.join(self.dir, "files", ident + ".copy.tar.zst")
        ck = self.podman(["container", "checkpoint", "--export", exported, "--compress", "zstd", ident], meter=True)
        h["frozenRound"] = read_rounds(h["log"])[0]
        cp = self.ctx.meter.run(["cp", exported, copied])
        self.podman(["rm", ident])
        rs = self.podman(["container", "restore", "--import", copied], meter=True)
        ctr_cpu = cgroup_cpu(f"/libpod_parent/libpod-{h['cid']}")
        nbytes = os.path.getsize(exported)
        os.unlink(exported)
        os.unlink(copied)
        h["log"] = self._log_of(ident)
        return {"downtime": ck["wall"] + cp["wall"] + rs["wall"], "total": ck["wall"] + cp["wall"] + rs["wall"],
                "bytes": nbytes, "peakRssKiB": max(ck["maxrssKiB"], cp["maxrssKiB"], rs["maxrssKiB"]),
                "cpuSeconds": ck["cpu"] + cp["cpu"] + rs["cpu"] + ctr_cpu,
                "phases": {"checkpoint+export": ck["wall"], "copy": cp["wall"], "import+restore": rs["wall"]}}

    def cleanup(self, h):
        self.podman(["rm", "-f", "-t", "0", h["id"]], check=False)
        self.live.discard(h["id"])

    def close(self):
        for ident in list(self.live):
            self.podman(["rm", "-f", "-t", "0", ident], check=False)
        self.podman(["rmi", "-a", "-f"], check=False)
        subprocess.run(self.base + ["system", "reset", "-f"], capture_output=True)
        # Overlay mounts podman may have left (it unmounts its own on reset).
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for m in sorted((m for m in mounts if m.startswith(self.dir)), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.made_cgroup:
            rmdir_cgroups("libpod_parent")
        if self.made_lock:
            try:
                os.unlink("/dev/shm/libpod_lock")
            except OSError:
                pass


# ---------------------------------------------------------------------------
# Helpers


def tree_size(path):
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def tail(path, n=8):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_conmon_gone(pidfile, timeout=10):
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)


def rmdir_cgroups(rel):
    """Removes the cgroup `rel` (and children) in every v1 hierarchy."""
    root = "/sys/fs/cgroup"
    for hierarchy in os.listdir(root):
        top = os.path.join(root, hierarchy, rel)
        if not os.path.isdir(top) or os.path.islink(os.path.join(root, hierarchy)):
            continue
        for base, dirs, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
            for _ in range(50):
                try:
                    os.rmdir(base)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


class Context:
    def __init__(self, args):
        self.build = args.build
        self.agent = os.path.join(args.build, "agent", "migrate-agent")
        self.image = os.path.join(args.build, "tests", "test-image.tar")
        self.tmp = tempfile.mkdtemp(prefix="migrate-bench.", dir="/var/tmp")
        # Agents' state dirs go below it, and containers in a user namespace
        # must be able to traverse to their rootfs (mkdtemp makes it 0700).
        os.chmod(self.tmp, 0o711)
        self.meter = Meter()
        self.restore_pipe_max = None


RANDRW = re.compile(r"randrw-(\d+)$")


def randrw_workload(mib):
    # needsClient: a client in the lab's client netns drives it, so only
    # methods whose containers are reachable there (the lab migrations) run it.
    return {"name": f"randrw-{mib}", "kind": "pagecheck", "mib": mib, "mode": "randrw", "needsClient": True}


def workloads(args):
    out = []
    for mode in [m for m in args.modes.split(",") if m]:
        for mib in [int(s) for s in args.sizes.split(",") if s]:
            out.append({"name": f"{mode}-{mib}", "kind": "memhog", "mib": mib, "mode": mode})
    if args.files:
        out.append({"name": f"files-{args.files}", "kind": "files", "count": args.files, "mib": 16, "mode": "files"})
    if 1024 in [int(s) for s in args.sizes.split(",") if s]:
        out.append(randrw_workload(1024))
    if not args.workloads:
        return out
    chosen = []
    for name in [n for n in args.workloads.split(",") if n]:
        match = [w for w in out if w["name"] == name]
        if match:
            chosen += match
        elif RANDRW.match(name):
            chosen.append(randrw_workload(int(RANDRW.match(name).group(1))))
        else:
            raise SystemExit(f"unknown workload {name} (known: {', '.join(w['name'] for w in out)}, randrw-N)")
    return chosen


# ---------------------------------------------------------------------------
# The randrw client: writes and reads random pages of a pagecheck payload
# (tests/payloads/pagecheck.c) and checks what it can without the payload's
# content function: every write's counter is the last plus one and every
# page read holds the version last acknowledged. The bytes themselves are
# checked by the payload's own scan (S) at the end. The C++ test client
# (tests/support/page-check-client.h) also checks every page's checksum.


def randrw_client(args):
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))  # the step in flight completes (PEP 475)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.create_connection((args.ip, args.port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(60)  # a migration freezes the payload for seconds: a stall, not a failure
    buf = bytearray()
    result = {"steps": 0, "acknowledged": 0, "longestReplyMs": 0.0, "violation": None, "error": None}

    def request(line):
        t = time.monotonic()
        sock.sendall(line.encode() + b"\n")
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed by the payload while waiting for the reply to `{line}`")
            buf.extend(chunk)
        end = buf.index(b"\n")
        reply = buf[:end].decode(errors="replace")
        del buf[:end + 1]
        result["longestReplyMs"] = max(result["longestReplyMs"], (time.monotonic() - t) * 1000)
        return reply

    rng = random.Random(1)
    pages = args.mib * 1024 * 1024 // 4096
    versions, written = {}, []
    last_progress = 0.0
    try:
        while not stopping:
            page = rng.randrange(pages)
            version = versions.get(page, 0) + 1
            reply = request(f"W {page} {version}")
            if reply != f"ok {result['acknowledged'] + 1}":
                result["violation"] = f"`W {page} {version}` answered `{reply}` after {result['acknowledged']} acknowledged writes"
                break
            if page not in versions:
                written.append(page)
            versions[page] = version
            result["acknowledged"] += 1
            page = rng.choice(written) if rng.random() < 0.5 else rng.randrange(pages)
            reply = request(f"R {page}").split()
            if len(reply) != 4 or reply[0] != "page" or reply[2] != str(versions.get(page, 0)):
                result["violation"] = f"`R {page}` answered `{' '.join(reply)}`, expected version {versions.get(page, 0)}"
                break
            result["steps"] += 1
            if time.monotonic() - last_progress >= 0.1:
                print(f"steps {result['steps']}", file=sys.stderr, flush=True)
                last_progress = time.monotonic()
        if not result["violation"]:
            reply = request("C")
            if reply != f"count {result['acknowledged']}":
                result["violation"] = f"`C` answered `{reply}` after {result['acknowledged']} acknowledged writes"
        if not result["violation"]:
            reply = request("S")
            if reply != "scan 0":
                result["violation"] = f"`S` answered `{reply}`"
    except OSError as e:
        result["error"] = str(e) or type(e).__name__
    print(json.dumps(result), flush=True)
    return 0 if not result["violation"] and not result["error"] else 1


class RandRWClient:
    """`bench.py randrw-client` in the lab's client netns against a
    container's pagecheck payload; its progress lines read on a thread."""

    def __init__(self, ip, mib):
        self.proc = subprocess.Popen(
            ["nsenter", "--net=/run/netns/client", "--", sys.executable, os.path.abspath(__file__), "randrw-client",
             "--ip", ip, "--port", str(RANDRW_PORT), "--mib", str(mib)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.last = 0
        self.reader = threading.Thread(target=self._progress, daemon=True)
        self.reader.start()

    def _progress(self):
        for line in self.proc.stderr:
            if line.startswith("steps "):
                self.last = int(line.split()[1])

    def wait_steps(self, at_least, timeout):
        deadline = time.monotonic() + timeout
        while self.last < at_least:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"randrw client: {self.last} steps, not {at_least}: {self.stop()}")
            time.sleep(0.05)

    def stop(self):
        """Its summary; the step in flight finishes first."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"randrw client exited {self.proc.returncode} without a summary"}


def wait_log(path_fn, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path_fn(), errors="replace") as f:
                if text in f.read():
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no `{text}` in {path_fn()} within {timeout}s")


def wait_running(m, h, wl):
    """Until the workload runs and is checked: memhog's first verified
    round; randrw's payload filled and its client stepping."""
    if wl["kind"] != "pagecheck":
        wait_round(lambda: m.log_path(h), 1, 180)
        return
    wait_log(lambda: m.log_path(h), "ready ", 180)
    h["client"] = RandRWClient(h["ip"], wl["mib"])
    h["client"].wait_steps(100, 60)


def wait_running_again(m, h, wl, rec):
    """After the move: memhog verified a round it started after the freeze;
    randrw's client made 200 more steps, then stopped clean."""
    if wl["kind"] != "pagecheck":
        rec["frozenRound"] = h["frozenRound"]
        wait_round(lambda: m.log_path(h), h["frozenRound"] + 1, 180)
        return
    client = h.pop("client")
    client.wait_steps(client.last + 200, 180)
    rec["randrw"] = client.stop()
    if rec["randrw"].get("violation") or rec["randrw"].get("error"):
        raise RuntimeError(f"randrw: {rec['randrw']}")


def measure(args):
    if os.geteuid() != 0:
        log("needs root (runc, CRIU, overlay mounts)")
        return 2
    ctx = Context(args)
    os.makedirs(args.out, exist_ok=True)
    runs_file = os.path.join(args.out, "runs.jsonl")
    notes_file = os.path.join(args.out, "notes.json")
    notes = {}
    methods = []
    interrupted = []

    def on_signal(signum, _):
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    chosen = workloads(args)
    try:
        for name in args.methods.split(","):
            if all(wl.get("needsClient") for wl in chosen) and name not in ("migration", "migration-postcopy"):
                notes.setdefault("workloads", f"{args.workloads} runs only under the lab migrations (its client "
                                              "reaches the container from the lab's client netns)")
                continue
            if name == "floor":
                methods.append(Floor(ctx))
            elif name == "postcopy":
                with open("/proc/sys/fs/pipe-max-size") as f:
                    current = int(f.read())
                if current < PIPE_MAX_NEEDED:
                    try:
                        with open("/proc/sys/fs/pipe-max-size", "w") as f:
                            f.write(str(PIPE_MAX_NEEDED))
                        ctx.restore_pipe_max = current
                        notes["postcopy"] = (f"fs.pipe-max-size raised from {current} to {PIPE_MAX_NEEDED} for the run "
                                             "(CRIU's lazy page server needs a 4 MiB pipe; no CAP_SYS_RESOURCE here)")
                    except OSError as e:
                        notes["postcopy"] = f"skipped: fs.pipe-max-size is {current} and cannot be raised: {e}"
                        log(notes["postcopy"])
                        continue
                methods.append(PostCopy(ctx))
            elif name == "ours":
                methods.append(Ours(ctx))
            elif name == "ours-tmpfs":
                # Same agent, its state dir (CRIU images, staging) on tmpfs.
                methods.append(Ours(ctx, state_parent="/dev/shm", name="ours-tmpfs"))
            elif name in ("migration", "migration-postcopy"):
                for tool in ("coordinator/migrate-coordinator", "migrate/migrate"):
                    if not os.access(os.path.join(ctx.build, tool), os.X_OK):
                        raise SystemExit(f"migration: {tool} is not built in {ctx.build}")
                methods.append(LabMigration(ctx, post_copy=name == "migration-postcopy"))
            elif name == "podman":
                p = Podman.probe(ctx)
                if isinstance(p, str):
                    log(f"podman column skipped: {p}")
                    notes["podman"] = f"skipped: {p}"
                else:
                    methods.append(p)
            else:
                raise SystemExit(f"unknown method {name}")
        with open(runs_file, "a") as runs:
            for wl in chosen:
                for run in range(1, args.runs + 1):
                    for m in methods:  # interleaved, so drift hits every method alike
                        if wl.get("needsClient") and not m.reachable:
                            continue
                        ident = f"b{os.getpid() % 10000}-{m.name.replace('-', '')}-{wl['name']}-{run}"
                        rec = {"method": m.name, "workload": wl["name"], "mib": wl["mib"], "mode": wl["mode"],
                               "run": run}
                        h = None
                        try:
                            h = m.start(wl, ident)
                            wait_running(m, h, wl)
                            rec.update(m.migrate(h))
                            t = time.monotonic()
                            # Running again after the restore, memory intact.
                            wait_running_again(m, h, wl, rec)
                            rec["verifiedAfter"] = time.monotonic() - t
                            rec["ok"] = True
                        except Exception as e:  # noqa: BLE001 - a failed run is a result too
                            rec["ok"] = False
                            rec["error"] = str(e)[-1500:]
                            if os.environ.get("BENCH_DEBUG"):
                                import traceback
                                traceback.print_exc()
                            log(f"{m.name} {wl['name']} run {run} failed: {rec['error']}")
                        finally:
                            if h is not None and "client" in h:
                                h.pop("client").stop()
                            if h is not None:
                                try:
                                    m.cleanup(h)
                                except Exception as e:  # noqa: BLE001
                                    log(f"cleanup of {ident}: {e}")
                        runs.write(json.dumps(rec) + "\n")
                        runs.flush()
                        if rec["ok"]:
                            log(f"{m.name:10} {wl['name']:12} run {run}: downtime {rec['downtime']:.2f}s "
                                f"bytes {rec['bytes'] / 2**20:.1f} MiB cpu {rec['cpuSeconds']:.2f}s")
    except KeyboardInterrupt:
        log("interrupted, cleaning up")
    finally:
        for m in methods:
            try:
                m.close()
            except Exception as e:  # noqa: BLE001
                log(f"closing {m.name}: {e}")
        ctx.meter.close()
        shutil.rmtree(ctx.tmp, ignore_errors=True)
        if ctx.restore_pipe_max:
            with open("/proc/sys/fs/pipe-max-size", "w") as f:
                f.write(str(ctx.restore_pipe_max))
        with open(notes_file, "w") as f:
            json.dump(notes, f)
    return 130 if interrupted else 0


# ---------------------------------------------------------------------------
# Report


def summarize(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def report(args):
    runs = []
    with open(os.path.join(args.out, "runs.jsonl")) as f:
        for line in f:
            if line.strip():
                runs.append(json.loads(line))
    notes = {}
    if os.path.exists(os.path.join(args.out, "notes.json")):
        with open(os.path.join(args.out, "notes.json")) as f:
            notes = json.load(f)
    order = ["floor", "postcopy", "ours", "ours-tmpfs", "migration", "migration-postcopy", "podman"]
    methods = sorted({r["method"] for r in runs}, key=lambda m: order.index(m) if m in order else 99)
    wls = []
    for r in runs:
        if r["workload"] not in [w["workload"] for w in wls]:
            wls.append({"workload": r["workload"], "mib": r["mib"], "mode": r["mode"]})
    mode_rank = {"random": 0, "text": 1, "files": 2}
    wls.sort(key=lambda w: (mode_rank.get(w["mode"], 9), w["mib"]))

    results = {"notes": notes, "workloads": []}
    for w in wls:
        entry = dict(w, methods={})
        for m in methods:
            rs = [r for r in runs if r["method"] == m and r["workload"] == w["workload"]]
            ok = [r for r in rs if r.get("ok")]
            if not rs:
                continue
            e = {"runs": len(rs), "failed": len(rs) - len(ok)}
            for key in ("downtime", "total", "bytes", "peakRssKiB", "cpuSeconds", "verifiedAfter", "pagesMs"):
                e[key] = summarize([r.get(key) for r in ok])
            phase_names = []
            for r in ok:
                for p in r.get("phases", {}):
                    if p not in phase_names:
                        phase_names.append(p)
            e["phases"] = {p: summarize([r["phases"].get(p) for r in ok]) for p in phase_names}
            for stats_key in ("criuDump", "criuRestore"):
                keys = sorted({k for r in ok for k in r.get(stats_key, {})})
                if keys:
                    e[stats_key] = {k: summarize([r.get(stats_key, {}).get(k) for r in ok]) for k in keys}
            if len(ok) < len(rs):
                e["errors"] = [r.get("error") for r in rs if not r.get("ok")][:3]
            entry["methods"][m] = e
        med = lambda m: (entry["methods"].get(m, {}).get("downtime") or {}).get("median")  # noqa: E731
        ratios = {}
        for a, b in (("ours", "floor"), ("postcopy", "floor"), ("ours-tmpfs", "floor"), ("migration", "floor"),
                     ("migration-postcopy", "floor"), ("podman", "ours"), ("podman", "migration"),
                     ("podman", "migration-postcopy")):
            if med(a) and med(b):
                ratios[f"{a}/{b}"] = med(a) / med(b)
        # Issue 12: post-copy's page transfer (the container running and
        # faulting meanwhile) against stop-and-copy's stream of the same
        # memory (the container frozen); the target is at most 2x.
        pages = (entry["methods"].get("migration-postcopy", {}).get("pagesMs") or {}).get("median")
        stream = ((entry["methods"].get("migration", {}).get("phases") or {}).get("stream") or {}).get("median")
        if pages and stream:
            ratios["pages/stream"] = pages / 1000.0 / stream
        entry["ratios"] = ratios
        results["workloads"].append(entry)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

    # Table on stdout.
    def cell(s, fmt="{:.2f}"):
        if not s:
            return "-"
        return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"

    print("Downtime, seconds: median [min-max] of the runs (frozen -> running again)")
    header = f"{'workload':14}" + "".join(f"{m:>22}" for m in methods) + "  ratios (downtime medians)"
    print(header)
    for e in results["workloads"]:
        line = f"{e['workload']:14}"
        for m in methods:
            me = e["methods"].get(m)
            c = cell(me["downtime"]) if me else "-"
            if me and me["failed"]:
                c += f" ({me['failed']}!)"
            line += f"{c:>22}"
        line += "  " + "  ".join(f"{k} {v:.2f}x" for k, v in e["ratios"].items())
        print(line)
    print()
    print("Per method, medians: total s | bytes written/sent MiB | peak RSS MiB | CPU s")
    for e in results["workloads"]:
        parts = []
        for m in methods:
            me = e["methods"].get(m)
            if not me or not me["downtime"]:
                continue
            parts.append(f"{m}: {me['total']['median']:.2f} | {me['bytes']['median'] / 2**20:.2f} | "
                         f"{me['peakRssKiB']['median'] / 1024:.0f} | {me['cpuSeconds']['median']:.2f}")
        print(f"{e['workload']:14} " + " ; ".join(parts))
    if any(e["methods"].get(m, {}).get("phases") for e in results["workloads"] for m in ("ours", "ours-tmpfs")):
        print()
        print("Where our time goes (medians, s):")
        for m in ("ours", "ours-tmpfs"):
            for e in results["workloads"]:
                me = e["methods"].get(m)
                if not me or not me.get("phases"):
                    continue
                ph = "  ".join(f"{k} {v['median']:.2f}" for k, v in me["phases"].items() if v)
                print(f"{m:10} {e['workload']:14} {ph}")
    for e in results["workloads"]:
        if "pages/stream" in e["ratios"]:
            pages = e["methods"]["migration-postcopy"]["pagesMs"]["median"] / 1000.0
            stream = e["methods"]["migration"]["phases"]["stream"]["median"]
            print(f"post-copy pages vs stop-and-copy stream, {e['workload']}: pages {pages:.2f}s, stream "
                  f"{stream:.2f}s, {e['ratios']['pages/stream']:.2f}x (target <= 2x)")
    for k, v in notes.items():
        print(f"note: {k}: {v}")

    # Plot data: one block per (mode, method): mib median min max.
    with open(os.path.join(args.out, "plot.dat"), "w") as f:
        for mode in ("random", "text"):
            for m in methods:
                rows = [e for e in results["workloads"] if e["mode"] == mode and e["methods"].get(m, {}).get("downtime")]
                f.write(f"# {mode} {m}\n")
                for e in rows:
                    d = e["methods"][m]["downtime"]
                    f.write(f"{e['mib']} {d['median']:.4f} {d['min']:.4f} {d['max']:.4f}\n")
                if not rows:
                    f.write("64 NaN NaN NaN\n")  # keeps the block, so gnuplot's index stays aligned
                f.write("\n\n")
    with open(os.path.join(args.out, "plot.methods"), "w") as f:
        f.write(" ".join(methods) + "\n")
    write_timeline(args.out, runs)
    return 0


# The lab migrations' phases on one time line per run (issue 13): the
# coordinator's phases one after the other, under them the target's restore
# taken apart, and the downtime (frozen until running again) marked.
TIMELINE_PHASES = ["precheck", "prepare", "checkpoint", "stream", "restore", "pages", "commit"]
TIMELINE_TARGET = ["storage", "network", "image-check", "criu-restore"]


def write_timeline(out, runs):
    rows = [r for r in runs if r.get("ok") and r["method"] in ("migration", "migration-postcopy") and r.get("phases")]
    names = TIMELINE_PHASES + ["target:" + p for p in TIMELINE_TARGET]
    with open(os.path.join(out, "timeline.dat"), "w") as f, \
            open(os.path.join(out, "timeline-downtime.dat"), "w") as d:
        f.write("# y start end phase-index label\n")
        for y, r in enumerate(rows):
            label = f"{r['workload']}:{r['method'].replace('migration', 'mig')}#{r['run']}"
            at, starts = 0.0, {}
            for i, p in enumerate(TIMELINE_PHASES):
                length = r["phases"].get(p)
                if not length:
                    continue
                starts[p] = at
                f.write(f"{y} {at:.4f} {at + length:.4f} {i + 1} {label}\n")
                at += length
            target = (r.get("agentPhases") or {}).get("target") or {}
            sub = starts.get("restore")
            for i, p in enumerate(TIMELINE_TARGET):
                if sub is None or not target.get(p):
                    continue
                length = target[p] / 1000.0
                f.write(f"{y - 0.3} {sub:.4f} {sub + length:.4f} {len(TIMELINE_PHASES) + i + 1} {label}\n")
                sub += length
            if "checkpoint" in starts:
                frozen = starts["checkpoint"]
                d.write(f"{y + 0.3} {frozen:.4f} {r['downtime']:.4f}\n")
    with open(os.path.join(out, "timeline.phases"), "w") as f:
        f.write(" ".join(names) + "\n")
    if rows:
        print()
        print("Where the downtime goes, lab migrations (medians, s; the target's restore taken apart):")
        for key in sorted({(r["workload"], r["method"]) for r in rows}):
            mine = [r for r in rows if (r["workload"], r["method"]) == key]
            parts = []
            for p in ("checkpoint", "stream", "restore"):
                m = summarize([r["phases"].get(p) for r in mine])
                if m:
                    parts.append(f"{p} {m['median']:.2f}")
            for p in TIMELINE_TARGET:
                m = summarize([((r.get("agentPhases") or {}).get("target") or {}).get(p) for r in mine])
                if m:
                    parts.append(f"target {p} {m['median'] / 1000:.2f}")
            down = summarize([r["downtime"] for r in mine])
            print(f"{key[0]:14} {key[1]:19} downtime {down['median']:.2f}: " + "  ".join(parts))


def timed(args):
    meter = Meter()
    try:
        r = meter.run(args.cmd, check=False)
    finally:
        meter.close()
    sys.stderr.write(r["err"])
    print(json.dumps({k: r[k] for k in ("wall", "cpu", "maxrssKiB", "status")}))
    print(r["out"], end="", file=sys.stderr)
    return r["status"]


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="verb", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--build", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--sizes", default="64,256,1024")
    m.add_argument("--modes", default="random,text")
    m.add_argument("--files", type=int, default=20000)
    m.add_argument("--runs", type=int, default=3)
    m.add_argument("--methods", default="floor,ours,podman")
    m.add_argument("--workloads", default="", help="only these, by name (random-64, files-2000, randrw-1024, ...)")
    c = sub.add_parser("randrw-client")
    c.add_argument("--ip", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--mib", type=int, required=True)
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    t = sub.add_parser("timed")
    t.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.verb == "timed" and args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    return {"measure": measure, "report": report, "timed": timed, "randrw-client": randrw_client}[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
