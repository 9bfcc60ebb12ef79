"""The project's sbatch script on a real 2-node Slurm cluster started by the test on this machine (slurmctld and two
slurmd on 127.0.0.1, no systemd): it brings up a 2-node Ray cluster and trains with STRICT_SPREAD across it."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dpo_ray.workers.distributed import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DAEMONS = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


def _which(name: str):
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name,) if p.exists()), None)


def slurm_conf(root: Path, host: str, munge_socket: Path) -> str:
    ctl, d1, d2 = free_port(), free_port(), free_port()
    return f"""ClusterName=dpotest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctl}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={d1} CPUs=2 RealMemory=2000 State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={d2} CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm():
    """munged, slurmctld and two slurmd (nodes n1, n2) under one temp dir; stopped by their PIDs afterwards."""
    missing = [name for name in DAEMONS if _which(name) is None]
    if missing:
        pytest.skip(
            f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd "
            "slurm-client munge (.ci/run installs them)"
        )
    if os.geteuid() != 0:
        pytest.skip("the test starts slurmd, which must run as root")
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    root.chmod(0o755)  # munged runs as the munge user and must reach its directory
    munge_dir = root / "munge"
    munge_dir.mkdir(mode=0o755)
    for sub in ("state", "spool", "spool/n1", "spool/n2"):
        (root / sub).mkdir()
    munge = pwd.getpwnam("munge")
    os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
    munge_socket = munge_dir / "munge.socket"
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, socket.gethostname(), munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pids = [munge_dir / "munged.pid", root / "slurmctld.pid", root / "slurmd-n1.pid", root / "slurmd-n2.pid"]
    try:
        subprocess.run(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                _which("munged"),
                f"--socket={munge_socket}",
                f"--pid-file={pids[0]}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'seed'}",
            ],
            check=True,
            env=env,
            timeout=30,
        )
        subprocess.run([_which("slurmctld"), "-f", str(conf)], check=True, env=env, timeout=30)
        for node in ("n1", "n2"):
            subprocess.run([_which("slurmd"), "-f", str(conf), "-N", node], check=True, env=env, timeout=30)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            states = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True
            ).stdout
            if states.count("idle") == 2:
                break
            time.sleep(1)
        else:
            pytest.fail(f"Slurm nodes did not come up: {states}\n{(root / 'slurmctld.log').read_text()[-3000:]}")
        yield env, root
    finally:
        for pid_file in reversed(pids):
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), 15)
                except (ProcessLookupError, ValueError):
                    pass


def job_state(env, job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id, "-o"], env=env, capture_output=True, text=True).stdout
    match = re.search(r"JobState=(\S+)", out)
    return match.group(1) if match else "UNKNOWN"


def test_sbatch_brings_up_ray_on_two_nodes_and_trains_spread_across_them(slurm, tmp_path, task_cache_dir):
    env, root = slurm
    env = {k: v for k, v in env.items() if not k.startswith("RAY_")}
    env["DPO_RAY_VENV"] = str(Path(sys.executable).parent.parent)
    run_dir = tmp_path / "run"
    began = time.perf_counter()
    env["SBATCH_ARGS"] = f"--parsable --cpus-per-task=2 --output={root}/job-%j.out --chdir={ROOT}"
    # submit.sh reads --nodes=2 from cluster.nodes and passes everything on to the project's sbatch script
    job_id = (
        subprocess.run(
            [
                str(ROOT / "launch" / "slurm" / "submit.sh"),
                "train",
                f"output_dir={run_dir}",
                f"cache_dir={task_cache_dir}",
                "progress=false",
                "train.max_steps=3",
                "cluster.nodes=2",
                "cluster.placement=STRICT_SPREAD",
                "cluster.policy_ranks=2",
                "cluster.reference_ranks=2",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    deadline = time.monotonic() + 600
    while (state := job_state(env, job_id)) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(2)
    log = (root / f"job-{job_id}.out").read_text() if (root / f"job-{job_id}.out").exists() else "(no job output)"
    assert state == "COMPLETED", f"job {job_id}: {state}\n{log[-6000:]}"
    assert re.search(r"policy ranks on 2 node\(s\)", log), log[-6000:]
    assert "stopping Ray on 2 node(s)" in log
    assert (run_dir / "final" / "model.safetensors").exists()
    print(f"sbatch job {job_id}: {time.perf_counter() - began:.1f}s from sbatch to COMPLETED")
