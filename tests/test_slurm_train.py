"""Tests for tools/slurm_train.sbatch with stand-ins for srun, torchrun and scontrol on PATH: the torchrun command
line each node gets (rendezvous on the first node, --resume appended), and the requeue when USR1 arrives."""

import os
import signal
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "slurm_train.sbatch")


def test_syntax():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0


@pytest.fixture
def fake_slurm(tmp_path):
    """srun runs its command; torchrun writes its arguments one a line to torchrun.args, then sleeps
    FAKE_SLEEP seconds and exits FAKE_STATUS; scontrol prints two hosts and logs requeues to scontrol.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "srun": 'while [[ "$1" == --* ]]; do shift; done; exec "$@"',
        "torchrun": f'printf "%s\\n" "$@" > {tmp_path}/torchrun.args; sleep "${{FAKE_SLEEP:-0}}"; '
                    'exit "${FAKE_STATUS:-0}"',
        "scontrol": f'if [ "$1 $2" = "show hostnames" ]; then printf "gpu-a17\\ngpu-a18\\n"; '
                    f'else echo "$@" >> {tmp_path}/scontrol.log; fi',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu-a[17-18]",
               SLURM_NNODES="2", SLURM_JOB_ID="4242", SLURM_SUBMIT_DIR=str(tmp_path))
    return tmp_path, env


def test_torchrun_command_line(fake_slurm):
    tmp, env = fake_slurm
    r = subprocess.run(["bash", SCRIPT, "--model", "resnet50", "--amp", "--output-dir", "runs/r50"],
                       env=dict(env, FAKE_STATUS="3"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 3  # the training's exit status is the job's
    assert "job 4242 (restart 0) on 2 node(s), rendezvous gpu-a17:29500" in r.stdout
    assert (tmp / "torchrun.args").read_text().split("\n")[:-1] == [
        "--nnodes=2", "--nproc_per_node=8", "--max-restarts=0", "--rdzv-id=4242", "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu-a17:29500", "train_imagenet.py", "--model", "resnet50", "--amp", "--output-dir",
        "runs/r50", "--resume"]
    r = subprocess.run(["bash", SCRIPT, "--coco-dir", "c"], env=dict(env, SCRIPT="train_coco.py", GPUS_PER_NODE="4",
                                                                      PORT="31000"), timeout=60)
    args = (tmp / "torchrun.args").read_text().split("\n")[:-1]
    assert r.returncode == 0 and "--nproc_per_node=4" in args and "--rdzv-endpoint=gpu-a17:31000" in args
    assert args[-4:] == ["train_coco.py", "--coco-dir", "c", "--resume"]


def test_usr1_requeues_the_job(fake_slurm):
    tmp, env = fake_slurm
    p = subprocess.Popen(["bash", SCRIPT, "--epochs", "1"], env=dict(env, FAKE_SLEEP="3"), stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        deadline = time.time() + 30
        while not (tmp / "torchrun.args").exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGUSR1)  # what --signal=B:USR1@120 sends to the batch shell
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert (tmp / "scontrol.log").read_text() == "requeue 4242\n"
    assert "USR1: the time limit is near; requeueing job 4242" in out
    assert p.returncode == 0  # the shell waited for the training to end (here: the stand-in's 3 s)
