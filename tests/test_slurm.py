"""slurm/train.sh under a real single-node Slurm: a plain job, and a preempted, requeued one."""

import json
import subprocess
import time

import pytest

from cyclegan.checkpoint import complete_checkpoints
from tests.conftest import ROOT, tiny
from tests.slurm import SlurmUnavailable, job_field, local_slurm, wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        with local_slurm(tmp_path_factory.mktemp("slurm")) as env:
            yield env
    except SlurmUnavailable as reason:
        pytest.skip(str(reason))


def submit(env, log, *overrides):
    """sbatch slurm/train.sh on this node's CPUs: one node, two gloo processes."""
    venv = ROOT / ".venv"
    command = [
        "sbatch", "--parsable", f"--chdir={ROOT}", "--gres=none", "--cpus-per-task=2", "--mem=3000",
        f"--output={log}", "--time=10",
        f"--export=ALL,GPUS_PER_NODE=0,PROCS_PER_NODE=2,CONFIG=configs/demo.yaml,VENV={venv},OMP_NUM_THREADS=1",
        str(ROOT / "slurm/train.sh"), *overrides,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def steps_logged(output):
    path = output / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("objective", ["cyclegan", "cut", pytest.param("fastcut", marks=pytest.mark.heavy)])
def test_job_trains_on_two_processes(slurm, demo_shards, tmp_path, objective):
    out = tmp_path / "run"
    job = submit(slurm, tmp_path / "job.log", *tiny(demo_shards, out, "train.max_steps=6", "tracking.mode=offline",
                                                    f"model.objective={objective}"))
    assert wait_for_job(job, slurm) == "COMPLETED", (tmp_path / "job.log").read_text()[-3000:]
    log = (tmp_path / "job.log").read_text()
    assert "2 process(es)" in log and "done at step 6" in log
    assert [c.name for c in complete_checkpoints(out / "checkpoints")] == ["step_0000006"]
    assert (out / "export" / "g_ab.safetensors").is_file()
    assert (out / "export" / "g_ba.json").is_file() == (objective == "cyclegan")  # CUT translates A -> B only
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]
    assert len(json.loads((out / "checksums.json").read_text())["ranks"]) == 2


def test_usr1_checkpoints_requeues_and_resumes(slurm, demo_shards, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.log"
    total = 60
    job = submit(slurm, log, *tiny(demo_shards, out, f"train.max_steps={total}", "tracking.mode=disabled"))
    deadline = time.time() + 300
    while len(steps_logged(out)) < 5:
        assert time.time() < deadline and job_field(job, "JobState", slurm) in ("PENDING", "RUNNING"), log.read_text()
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)
    assert wait_for_job(job, slurm) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert "requeueing job" in text and job_field(job, "Restarts", slurm) == "1", text[-3000:]
    stopped = int(text.split("stopped at step ")[1].split()[0])
    assert 5 <= stopped < total and f"resumed from {out / 'checkpoints'}/step_{stopped:07d} at step {stopped}" in text
    assert f"done at step {total}" in text
    assert steps_logged(out) == list(range(1, total + 1))  # continues the step count, nothing lost or doubled
