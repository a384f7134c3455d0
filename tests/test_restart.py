"""torchrun restarts: a group that forms again after a killed worker, and refusals that end every rank at once."""
import datetime
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.distributed as dist

import utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
FLAGS = ["--model", "resnet18", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--recipe", "resnet",
         "--lr", "0.05", "--weight-decay", "0", "--color-jitter", "0", "--luab", "--epochs", "3",
         "--max-steps-per-epoch", "4", "--print-freq", "1", "--dist-timeout", "5"]


def train_args(synth_dir, out, *extra):
    """4 steps of 4 images per process and epoch on the conftest set (32 train images), a progress line a step."""
    return ["--data-dir", os.path.join(synth_dir, "imagenet"), "--output-dir", str(out),
            "--byproducts", os.path.join(synth_dir, "imagenet_ab", "train_xml"), *FLAGS, *extra]


def launch(argv, log_file, max_restarts):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={max_restarts}", *argv]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(p, log_path, pattern, timeout=180):
    """Block until a line of the job's output matches `pattern` (a regex); the job must still run."""
    t0 = time.time()
    while not re.search(pattern, log_path.read_text(), re.M):
        tail = log_path.read_text()[-3000:]
        assert p.poll() is None, f"the job ended (rc {p.returncode}) before {pattern!r}:\n{tail}"
        assert time.time() - t0 < timeout, f"no {pattern!r} after {timeout} s:\n{tail}"
        time.sleep(0.02)


def worker(p, rank):
    """The pid of torchrun's (live) worker with RANK=rank."""
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) != p.pid:
                    continue
            with open(f"/proc/{d}/environ", "rb") as f:
                if f"RANK={rank}".encode() in f.read().split(b"\0"):
                    return int(d)
        except (OSError, ValueError, IndexError):
            continue
    raise AssertionError(f"no worker of rank {rank}")


def finish(p, timeout):
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # hung: take the whole job down, then fail
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise


def test_a_restarted_group_forms_apart_from_the_keys_of_a_dead_one():
    """utils.fresh_namespace on one TCP store, as torchrun keeps it across restarts: a group forms; then a rank 0
    dies after drawing its generation; the next group's ranks 1 and 2 start before its rank 0 and still all meet
    in one new generation (3), not in the dead ones."""
    timeout = datetime.timedelta(seconds=30)
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timeout)

    def group(delays):
        out = {}

        def join(rank):
            time.sleep(delays[rank])
            client = dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timeout)
            out[rank] = utils.fresh_namespace(client, rank, len(delays), timeout)
        threads = [threading.Thread(target=join, args=(r,)) for r in range(len(delays))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [out[r] for r in range(len(delays))]

    first = group([0, 0])
    first[0].set("seen", "first")
    assert first[1].get("seen") == b"first" and server.get("pg/current") == b"1"
    server.add("pg/generation", 1)  # a rank 0 that died right after drawing generation 2
    server.set("pg/current", "2")
    second = group([1.0, 0, 0.3])
    second[0].set("seen", "second")
    assert [s.get("seen") for s in second[1:]] == [b"second", b"second"]
    assert server.get("pg/current") == b"3" and not server.check(["pg/2/welcome1", "pg/2/welcome2"])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_restarts_after_a_killed_worker_and_a_killed_save_equal_the_uninterrupted_run(synth_dir, tmp_path):
    """torchrun --max-restarts=2 ... --resume, 2 gloo processes: rank 1 is SIGKILLed in the middle of epoch 1
    (after rank 0 printed its first step), then the restarted rank 0 in the middle of writing a checkpoint (its
    temporary file is a pipe that the test reads 1 MB from, then kills). Both restarts form a group again, resume,
    and the final weights are bitwise those of a run that was never interrupted."""
    script = os.path.join(REPO, "train_imagenet.py")
    with open(tmp_path / "full.txt", "w") as f:
        assert finish(launch([script, *train_args(synth_dir, tmp_path / "full", "--resume")], f, 0), 300) == 0
    out, log_path = tmp_path / "cut", tmp_path / "cut.txt"
    with open(log_path, "w") as f:
        p = launch([script, *train_args(synth_dir, out, "--resume")], f, 2)
        wait_for(p, log_path, r"^epoch 1 \[1/4\]")
        os.kill(worker(p, 1), signal.SIGKILL)  # rank 1 is in step 1 or 2 of 4: mid-epoch
        wait_for(p, log_path, r"^resumed from .* at epoch 1$")
        pid = worker(p, 0)
        pipe = out / f"checkpoint.pt.tmp.{pid}"  # where this rank 0 writes its next checkpoint (atomic_write)
        os.mkfifo(pipe)
        fd, got, t0 = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK), 0, time.time()
        while got < 2**20:  # the checkpoint is ~90 MB: the writer is now blocked in the middle of it
            assert p.poll() is None and time.time() - t0 < 180, log_path.read_text()[-3000:]
            try:
                chunk = os.read(fd, 2**16)  # b"" until rank 0 opens it for writing
            except BlockingIOError:
                chunk = b""
            got += len(chunk)
            if not chunk:
                time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.close(fd)
        assert finish(p, 300) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert len(re.findall(r"^resumed from ", text, re.M)) == 2 and "connectFullMesh" not in text, text[-3000:]
    assert f"removed {pipe}, a temporary file of an interrupted save" in text
    assert sorted(os.listdir(out)) == ["best.pt", "checkpoint.pt", "config.json", "log.jsonl"]
    full, cut = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (tmp_path / "full", out))
    assert [e["epoch"] for e in cut["log"]] == [0, 1, 2]
    for k in full["model"]:
        torch.testing.assert_close(cut["model"][k], full["model"][k], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_a_restart_without_resume_refuses_on_every_rank_at_once(synth_dir, tmp_path):
    """Launched without --resume, a job whose worker is killed cannot continue: the restart finds the run folder
    used and every rank ends at once, with the one line naming --resume and no traceback, well before
    --dist-timeout (5 min) would end a rank left waiting in a collective."""
    out, log_path = tmp_path / "run", tmp_path / "run.txt"
    with open(log_path, "w") as f:
        p = launch([os.path.join(REPO, "train_imagenet.py"), *train_args(synth_dir, out)], f, 1)
        wait_for(p, log_path, r"^epoch 1 \[1/4\]")
        os.kill(worker(p, 1), signal.SIGKILL)
        assert finish(p, 120) == 1
    restart = log_path.read_text().split("exitcode: -9", 1)[1]  # what follows the killed first attempt
    refusals = [line for line in restart.splitlines() if "is not empty" in line]
    assert refusals and set(refusals) == {
        f"--output-dir {out} is not empty (best.pt, checkpoint.pt, config.json, log.jsonl): continue that run "
        "with --resume, replace it with --overwrite, or choose another --output-dir"}, restart[-3000:]
    assert not re.search(r"^\[rank\d\]: Traceback", restart, re.M) and "connectFullMesh" not in restart, restart


@pytest.mark.slow
def test_an_error_on_one_rank_ends_every_rank_with_one_line(tmp_path):
    """utils.exit_together: rank 1 alone has a reason to stop; both ranks exit at once (status 1), and the line
    is printed once, by rank 0; a rank without an error that ran on would have waited in its next collective."""
    script = tmp_path / "job.py"
    script.write_text(f"import sys; sys.path.insert(0, {REPO!r})\n"
                      "import torch.distributed as dist, utils\n"
                      "rank, world, _ = utils.init_distributed('cpu', timeout_min=5)\n"
                      "utils.exit_together('rank 1 refuses: a one-line reason' if rank == 1 else None)\n"
                      "dist.barrier()\n")
    with open(tmp_path / "out.txt", "w") as f:
        assert finish(launch([str(script)], f, 0), 120) == 1
    text = (tmp_path / "out.txt").read_text()
    assert text.count("rank 1 refuses: a one-line reason") == 1, text
    assert not re.search(r"^\[rank\d\]: Traceback", text, re.M), text
