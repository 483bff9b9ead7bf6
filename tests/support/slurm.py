"""A real one-node Slurm cluster for the tests: this machine is its controller and its only compute node.

    cluster = Cluster(folder).start()     # munged, slurmctld and slurmd, running as root; the node idle
    subprocess.run(["sbatch", ...], env=cluster.env(os.environ))   # SLURM_CONF and the munge socket set
    cluster.stop()                        # cancels every job, stops the daemons, ends what they left behind

Everything lives in `folder` (configuration, munge key and socket, state, spool, logs) on ports free at start, so a
cluster here never meets the machine's own Slurm or munge, if any, nor another test session's. Debian's packages are
installed when missing (`install()`, as root with apt-get). The daemons are killed with the process that started them
(PR_SET_PDEATHSIG, SIGKILL: a slurmd busy with jobs may sit out a SIGTERM), so even a test session killed outright
leaves no controller behind; what such a cluster's slurmstepd and jobs leave running is ended by the next start.

Run by hand: `python tests/slurm.py DIR` brings one up and prints how to use it until Ctrl-C.
"""
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["Cluster", "SlurmUnavailable", "install", "PACKAGES"]

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "scancel", "scontrol", "sinfo", "squeue"]


class SlurmUnavailable(Exception):
    """Slurm cannot be installed or started here; the message says why."""


def _missing() -> list[str]:
    return [name for name in DAEMONS if not shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]


def install() -> None:
    """Debian's Slurm and munge, when any of their programs is missing (needs root and the package registry)."""
    if not _missing():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable(f"{', '.join(_missing())} not installed, and installing needs root with apt-get "
                               f"(apt-get install {' '.join(PACKAGES)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    if _missing():
        raise SlurmUnavailable(f"{', '.join(_missing())} still missing after apt-get install {' '.join(PACKAGES)}")


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range: the port the OS hands out for `bind(0)` lies in that range,
    where any connection (gloo's, another test's) may take it before the daemon or job that is told it binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.Random().sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _die_with_parent():
    """preexec_fn: SIGKILL this daemon when the process that started it dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _node_config() -> dict:
    """`slurmd -C`: this machine's CPUs, sockets, cores and memory, as slurm.conf wants them."""
    out = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, timeout=60).stdout
    words = dict(w.split("=", 1) for w in out.split() if "=" in w)
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    if not all(k in words for k in keep):
        raise SlurmUnavailable(f"`slurmd -C` did not describe this node: {out.strip()[:300]}")
    return {k: words[k] for k in keep}


def _program(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def _slurm_confs() -> dict[int, str]:
    """pid -> SLURM_CONF of every process that has one. Read from /proc: slurmstepd's renaming of itself leaves empty
    strings at the start of its environment, where psutil.Process.environ() stops."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            conf = next((v[len(b"SLURM_CONF="):] for v in env if v.startswith(b"SLURM_CONF=")), None)
            if conf:
                found[int(entry.name)] = conf.decode(errors="replace")
    return found


class Cluster:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.socket = self.folder / "munge" / "munge.socket"
        self.node = socket.gethostname().split(".")[0]
        self.daemons: dict[str, subprocess.Popen] = {}

    def env(self, base=None, **extra) -> dict:
        """`base` (default os.environ) with this cluster's configuration, for its commands and the jobs they submit."""
        env = dict(os.environ if base is None else base, SLURM_CONF=str(self.conf), **extra)
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
            env.pop(key)  # a test session inside a Slurm job must not hand its own job's settings on
        return env

    def run(self, *cmd, check=True, timeout=60, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run([_program(cmd[0]), *cmd[1:]], env=kwargs.pop("env", None) or self.env(),
                              capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc

    def _write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "munge").chmod(0o700)
        node = _node_config()
        cpus = int(node["CPUs"])
        ctld_port, slurmd_port = free_port(), free_port()
        lines = [
            "ClusterName=resnetlite",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"AuthInfo=socket={self.socket}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"StateSaveLocation={self.folder / 'state'}",
            f"SlurmdSpoolDir={self.folder / 'spool'}",
            f"SlurmctldPidFile={self.folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.folder / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.folder / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # no cgroups here: processes are tracked by their parent chain, tasks are not bound to CPUs
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_min_interval=100000",
            "ReturnToService=2",
            "JobRequeue=1",
            "MinJobAge=10",  # seconds a finished job stays visible to scontrol show job
            "KillWait=5",  # seconds between a job's SIGTERM and its SIGKILL
            "OverTimeLimit=0",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "MessageTimeout=30",
            "MaxArraySize=1001",
            "PropagateResourceLimitsExcept=ALL",
            "NodeName={} NodeAddr=127.0.0.1 {} State=UNKNOWN".format(
                self.node, " ".join(f"{k}={v}" for k, v in node.items())),
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        self.cpus = cpus
        key = self.folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)

    def _start(self, name, cmd) -> None:
        log = open(self.folder / "log" / f"{name}.out", "ab")
        self.daemons[name] = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        log.close()

    def _wait(self, what, ready, timeout=60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited ({proc.returncode}) while waiting for {what}: "
                                           f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"timed out waiting for {what}: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, name=None, lines=15) -> str:
        names = [name] if name else list(self.daemons)
        out = []
        for n in names:
            for path in (self.folder / "log" / f"{n}.out", self.folder / "log" / f"{n}.log"):
                if path.is_file():
                    out += [f"[{path.name}] {line}" for line in path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)

    def start(self) -> "Cluster":
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmd and munged needs root")
        install()
        self._reap_orphans()
        self._write_config()
        try:
            f = self.folder / "munge"
            self._start("munged", [_program("munged"), "--foreground", "--force", f"--socket={self.socket}",
                                   f"--key-file={f / 'munge.key'}", f"--pid-file={f / 'munged.pid'}",
                                   f"--seed-file={f / 'munged.seed'}",
                                   f"--log-file={self.folder / 'log' / 'munged.log'}"])
            self._wait("munged's socket", self.socket.exists)
            self._start("slurmctld", [_program("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).returncode == 0)
            self._start("slurmd", [_program("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait("the node to be idle", lambda: self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
                       .stdout.strip() == "idle")
        except BaseException:
            self.stop()
            raise
        return self

    def jobs(self) -> list[str]:
        proc = self.run("squeue", "-h", "-o", "%i %T", check=False)
        return proc.stdout.split("\n") if proc.returncode == 0 and proc.stdout.strip() else []

    def cancel_all(self, timeout=30) -> None:
        """Cancel every job, then wait for the queue to empty (KillWait bounds how long a job takes to end)."""
        if "slurmctld" not in self.daemons or self.daemons["slurmctld"].poll() is not None:
            return
        self.run("scancel", "--user=root", check=False)
        deadline = time.monotonic() + timeout
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _leftovers(self, conf=None) -> list:
        """Processes started under this cluster (its daemons, slurmstepd, jobs): those with its SLURM_CONF."""
        import psutil

        found = []
        for pid, their_conf in _slurm_confs().items():
            if pid != os.getpid() and their_conf == str(conf or self.conf):
                try:
                    found.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
        return found

    def _reap_orphans(self) -> None:
        """Kill what a cluster of this module left when its session was killed outright (its daemons died with it;
        slurmstepd and jobs do not): processes whose SLURM_CONF is such a cluster's and whose slurmctld is gone."""
        import psutil

        for conf in set(_slurm_confs().values()) - {str(self.conf)}:
            conf = Path(conf)
            try:
                ours = "ClusterName=resnetlite\n" in conf.read_text()
                pid = int((conf.parent / "slurmctld.pid").read_text())
            except (OSError, ValueError):
                continue
            if ours and not psutil.pid_exists(pid):
                _kill(self._leftovers(conf))

    def stop(self) -> None:
        """Cancel the jobs, stop the daemons, and end anything they left running. Safe to call twice."""
        try:
            self.cancel_all()
        except Exception:
            pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.daemons.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        _kill(self._leftovers())
        self.daemons.clear()


def _kill(procs: list) -> None:
    """SIGKILL each psutil.Process still alive, and wait for them."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # `kill` stops the cluster as Ctrl-C does
    cluster = Cluster(Path(sys.argv[1]).resolve())
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()
