"""A real single-node Slurm for the tests: installed when missing, started, stopped afterwards.

Debian's slurmctld, slurmd, slurm-client and munge; a throwaway config in a temporary
folder (state, spool, pid and log files there too); munged as the munge user. Job
credentials expire after 10 s instead of 120 s: Slurm holds a requeued job back until its
old credential has expired, and the preemption test should not wait two minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ("slurmctld", "slurmd", "sbatch", "munged")


class SlurmUnavailable(Exception):
    """Slurm cannot be installed or started here; the reason says why."""


def ensure_installed() -> None:
    if all(shutil.which(d) or Path(f"/usr/sbin/{d}").exists() for d in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("Slurm is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(command)} failed: {result.stderr[-500:]}")


def write_config(folder: Path) -> Path:
    cpus = os.cpu_count() or 2
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=local
SlurmctldHost=localhost
AuthType=auth/munge
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
NodeName=localhost CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    return conf


def _start_munge() -> subprocess.Popen | None:
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return None
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    return subprocess.Popen(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "-F"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@contextmanager
def local_slurm(folder: Path):
    """Yield the environment (SLURM_CONF set) in which sbatch, squeue and scontrol reach it."""
    ensure_installed()
    conf = write_config(folder)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    munge = _start_munge()
    daemons = [
        subprocess.Popen(["/usr/sbin/slurmctld", "-D", "-i"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True),
        subprocess.Popen(["/usr/sbin/slurmd", "-D", "-N", "localhost"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True),
    ]
    try:
        deadline = time.time() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
            if "idle" in state:
                break
            if time.time() > deadline:
                logs = "".join((folder / f).read_text()[-800:] for f in ("slurmctld.log", "slurmd.log")
                               if (folder / f).exists())
                raise SlurmUnavailable(f"Slurm did not come up within 60 s (sinfo: {state!r}); {logs}")
            time.sleep(0.5)
        yield env
    finally:
        for process in daemons + ([munge] if munge else []):
            process.terminate()
        for process in daemons + ([munge] if munge else []):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def job_field(job: str, field: str, env: dict) -> str:
    info = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S+)", info)
    return match.group(1) if match else ""


def wait_for_job(job: str, env: dict, timeout: float = 600) -> str:
    """Wait until the job has ended for good; return its final state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_field(job, "JobState", env)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(1)
    raise TimeoutError(f"job {job} did not finish within {timeout} s (state {job_field(job, 'JobState', env)})")
