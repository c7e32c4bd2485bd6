"""A private SLURM cluster on this machine, for the tests: munged, slurmctld and two slurmd.

Debian's slurm-wlm and munge are installed with apt when missing (root only; otherwise the tests
that need them are skipped, saying why). Everything the daemons read or write lives in one temp
folder: its own munge key and socket, slurm.conf (never /etc/slurm), state, spool, pid and log
files. Nodes n1 and n2 both run here (`NodeHostname=localhost`, one slurmd each on its own port,
`slurmd -N NAME`); their names resolve through a line this module adds to /etc/hosts and removes
on stop. No cgroups in a sandbox: proctrack/linuxproc (a step's processes are its descendants),
task/none. `stop()` ends the daemons it started, by pid.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time

HOSTS_FILE = "/etc/hosts"
NODES = ("n1", "n2")
CPUS_PER_NODE = 2
# A requeued job may start again only after the step credential lifetime (default 120 s).
CRED_EXPIRE_S = 20
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


def ensure_installed() -> str | None:
    """None when slurmctld, slurmd and munged are here (installing them if needed), else why not."""
    tools = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol")
    if all(shutil.which(t) for t in tools):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and this is not a root apt system"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "slurm-wlm", "munge"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-500:]}"
    missing = [t for t in tools if not shutil.which(t)]
    return f"installed, but still missing {missing}" if missing else None


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, root: str):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.procs: list[subprocess.Popen] = []
        self.hosts_line = f"127.0.0.1 {' '.join(NODES)}  # dtr-scale test cluster {os.getpid()}"

    # --- start / stop ---------------------------------------------------------------------
    def start(self) -> "Cluster":
        os.makedirs(self.root, exist_ok=True)
        os.chmod(self.root, 0o755)  # munged wants its socket's folder traversable by all
        try:
            self._add_hosts_line()
            self._start_munge()
            self._write_conf()
            self._spawn(["slurmctld", "-D", "-f", self.conf], "slurmctld.out")
            for node in NODES:
                os.makedirs(os.path.join(self.root, "spool", node), exist_ok=True)
                self._spawn(["slurmd", "-D", "-N", node, "-f", self.conf], f"slurmd.{node}.out")
            self._wait_idle(60)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.procs:
            try:
                self.stop_jobs()
            except AssertionError:
                pass  # stop the daemons anyway
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        self.procs.clear()
        self._remove_hosts_line()

    def _spawn(self, cmd: list[str], log_name: str) -> subprocess.Popen:
        log = open(os.path.join(self.root, log_name), "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def _start_munge(self) -> None:
        key = os.path.join(self.root, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        r = self.root
        self._spawn(["munged", "-F", "-f", f"--socket={r}/munge.sock", f"--key-file={key}",
                     f"--log-file={r}/munged.log", f"--pid-file={r}/munged.pid", f"--seed-file={r}/munged.seed"],
                    "munged.out")
        _wait(lambda: os.path.exists(f"{r}/munge.sock"), 20, "munged socket", self.logs)

    def _write_conf(self) -> None:
        r = self.root
        ctld_port, slurmd_port, *node_ports = free_ports(2 + len(NODES))
        lines = [
            "ClusterName=dtrtest",
            f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={r}/munge.sock,cred_expire={CRED_EXPIRE_S}",
            "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.%n.pid",
            f"SlurmctldLogFile={r}/slurmctld.log", f"SlurmdLogFile={r}/slurmd.%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none", "MpiDefault=none", "ReturnToService=2",
            "KillWait=30", "MinJobAge=600", "InactiveLimit=0",
            "SlurmctldDebug=info", "SlurmdDebug=info",
        ]
        lines += [f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={p} CPUs={CPUS_PER_NODE} "
                  f"RealMemory=2000 State=UNKNOWN" for n, p in zip(NODES, node_ports)]
        lines.append(f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP")
        os.makedirs(f"{r}/state", exist_ok=True)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _wait_idle(self, timeout: float) -> None:
        def idle():
            out = self.scontrol("show", "nodes", "-o", check=False)
            return out.count("State=IDLE") == len(NODES)
        _wait(idle, timeout, "both slurmd nodes idle", self.logs)

    def _add_hosts_line(self) -> None:
        with open(HOSTS_FILE, "a") as f:
            f.write(self.hosts_line + "\n")

    def _remove_hosts_line(self) -> None:
        with open(HOSTS_FILE) as f:
            lines = f.readlines()
        kept = [line for line in lines if line.rstrip("\n") != self.hosts_line]
        if kept != lines:
            # /etc/hosts is often a bind mount: rewrite it in place rather than replace it
            with open(HOSTS_FILE, "w") as f:
                f.writelines(kept)

    # --- using it -------------------------------------------------------------------------
    def env(self, **extra: str) -> dict:
        env = dict(os.environ, SLURM_CONF=self.conf, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"] + ["MASTER_ADDR", "MASTER_PORT"]:
            env.pop(key, None)
        env.update(extra)
        return env

    def scontrol(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["scontrol", *args], env=self.env(), capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"scontrol {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def tool(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=60)

    def job(self, job_id: int) -> dict:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, Comment, ...)."""
        out = self.scontrol("show", "job", "-o", str(job_id))
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))

    def wait_state(self, job_id: int, states, timeout: float, log_path: str | None = None) -> dict:
        states = {states} if isinstance(states, str) else set(states)
        info = {}

        def reached():
            nonlocal info
            info = self.job(job_id)
            return info.get("JobState") in states

        _wait(reached, timeout, f"job {job_id} in {sorted(states)} (now {info.get('JobState')})",
              lambda: _tail(log_path) + self.logs())
        return info

    def wait_requeued_or_ended(self, job_id: int, timeout: float, log_path: str | None = None) -> dict:
        """Until the job was requeued (Restarts > 0: it may be pending or running again) or ended."""
        info = {}

        def reached():
            nonlocal info
            info = self.job(job_id)
            return info.get("Restarts", "0") != "0" or info.get("JobState") in ENDED

        _wait(reached, timeout, f"job {job_id} requeued or ended (now {info.get('JobState')})",
              lambda: _tail(log_path) + self.logs())
        return info

    def stop_jobs(self, timeout: float = 120) -> None:
        """Stop every job for good (the launch scripts' own stop: comment dtr-stop, then scancel) and
        wait until they are gone, so that no training process outlives the cluster."""
        out = self.tool("squeue", "-h", "-o", "%i").stdout.split()
        for job in out:
            self.tool("scontrol", "update", f"JobId={job}", "Comment=dtr-stop")
            self.tool("scancel", job)

        def gone():
            listing = self.tool("squeue", "-h", "-o", "%i %T")
            return listing.returncode == 0 and not listing.stdout.strip()
        if out:
            _wait(gone, timeout, "all jobs gone", self.logs)

    def logs(self) -> str:
        return "".join(f"--- {name} ---\n{_tail(os.path.join(self.root, name))}"
                       for name in ("slurmctld.log", "slurmd.n1.log", "slurmd.n2.log", "munged.log"))


def _tail(path: str | None, n: int = 4000) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()[-n:] + "\n"


def _wait(predicate, timeout: float, what: str, context=lambda: "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{context()}")
