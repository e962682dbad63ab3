"""Runs under real conditions, through the command line: SIGTERM/Ctrl-C mid-epoch, a second run into a busy
folder, a disk that fills up during a checkpoint (deepsets.train.guard)."""
import errno
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepsets.train.callbacks import read_metrics
from deepsets.train.guard import storage_message

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "deepsets.cli", "train"]
TINY = ["--task", "normal-var", "--model", "deepsets++", "--depth", "2", "--dim", "16", "--batch-size", "4",
        "--set-size", "64", "--n-train", "200", "--n-test", "8", "--no-progress"]
PER_EPOCH = 45  # optimizer steps per epoch: 180 training sets (200 less the validation tenth) in batches of 4


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only oversubscribe the cores the tests share
    return e


def start(args, **kw):
    return subprocess.Popen(CLI + TINY + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), **kw)


def run(args, timeout=120, **kw):
    proc = start(args, **kw)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_rows(out: Path, n: int, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = read_metrics(out / "metrics.csv") if (out / "metrics.csv").exists() else []
        if len(rows) >= n:
            return rows
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {n} rows in {out / 'metrics.csv'} after {timeout} s")


def wait_for_checkpoint(out: Path, proc, timeout=120):
    """Until the first epoch's last.ckpt is in place (it is written just after that epoch's metrics row)."""
    wait_for_rows(out, 1, proc, timeout)
    deadline = time.time() + timeout
    while not (out / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)


def assert_every_epoch_once(out: Path, epochs: int):
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(epochs))
    assert [r["step"] for r in rows] == [PER_EPOCH * (e + 1) for e in range(epochs)]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_stops_cleanly_and_resume_repeats_no_epoch(sig, code, tmp_path):
    out = tmp_path / "run"
    args = ["--epochs", "8", "--out", str(out)]
    proc = start(args)
    wait_for_rows(out, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    name = sig.name
    assert "Traceback" not in err, err
    m = re.search(rf"stopped by {name} during epoch (\d+) \(step (\d+)\); the checkpoint (\S+) \(end of epoch "
                  rf"(\d+), step (\d+)\) is kept; continue with: deepsets train --out (\S+) --resume", err)
    assert m, err
    epoch, step, kept, kept_epoch, kept_step, again = m.groups()
    assert Path(kept) == out / "checkpoints" / "last.ckpt" and Path(again) == out
    ckpt = torch.load(kept, weights_only=True)
    assert ckpt["epoch"] == int(kept_epoch) < 7 and ckpt["global_step"] == int(kept_step)
    # the end of the last complete epoch, never a mid-epoch state
    assert int(epoch) - 1 <= int(kept_epoch) <= int(epoch) and int(kept_step) == PER_EPOCH * (int(kept_epoch) + 1)
    assert not list(out.rglob("*.tmp"))
    code, _, err = run(args + ["--resume"])
    assert code == 0, err
    assert_every_epoch_once(out, 8)


def test_sigterm_stops_every_ddp_process(tmp_path):
    out = tmp_path / "ddp"
    proc = start(["--epochs", "30", "--out", str(out), "--accelerator", "cpu", "--devices", "2",
                  "--strategy", "ddp"])
    wait_for_rows(out, 1, proc)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=45)
    assert proc.returncode == 143, err
    assert time.time() - t0 < 30
    assert err.count("stopped by SIGTERM") == 1, err  # said once, by rank zero
    assert "Traceback" not in err and "error" not in err, err
    deadline = time.time() + 10  # the process Lightning launched for rank 1 is gone too
    while time.time() < deadline and _processes_writing_to(out):
        time.sleep(0.2)
    assert not _processes_writing_to(out)


def _processes_writing_to(out: Path) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and str(out).encode() in (p / "cmdline").read_bytes():
                found.append(int(p.name))
        except OSError:
            pass
    return found


def test_second_run_into_a_busy_folder_is_refused_and_touches_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["--epochs", "500", "--out", str(out)]  # still running when killed below
    first = start(args)
    wait_for_checkpoint(out, first)
    first.send_signal(signal.SIGSTOP)  # paused, it keeps its lock (and leaves the cores to the runs below)
    before = {p.relative_to(out) for p in out.rglob("*") if not p.name.endswith(".tmp")}
    for extra in ([], ["--overwrite"], ["--resume"]):
        code, _, err = run(args + extra)
        assert code == 1, (extra, err)
        assert f"{out} is in use by another run (pid {first.pid} on " in err, err
        assert "wait for it to finish or choose another --out" in err
        assert first.poll() is None, "the running run goes on"
        assert before <= {p.relative_to(out) for p in out.rglob("*")}, "nothing of the running run is deleted"
    first.send_signal(signal.SIGKILL)  # the kernel releases the lock with the process
    first.wait()
    done = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] + 1
    code, _, err = run(["--epochs", str(done + 1), "--out", str(out), "--resume"])  # one more epoch
    assert code == 0, err
    assert [r["epoch"] for r in read_metrics(out / "metrics.csv")] == list(range(done + 1))


def _file_size_limit(nbytes: int):
    def limit():  # in the child before exec: writes past nbytes fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


def test_full_disk_during_a_write_keeps_the_previous_files(tmp_path):
    """A write that fails (RLIMIT_FSIZE stands in for a full disk) ends the run with one message; the files it
    would have replaced are byte-identical, no temporary file is left, and a later --resume continues."""
    import torch

    out = tmp_path / "run"
    args = ["--epochs", "3", "--out", str(out)]
    proc = start(args)
    wait_for_checkpoint(out, proc)
    proc.kill()  # a run stopped mid-way (SIGKILL), so its resume has epochs left to write
    proc.communicate(timeout=60)
    last, best, metrics, config = (out / "checkpoints" / "last.ckpt", out / "checkpoints" / "best.ckpt",
                                   out / "metrics.csv", out / "config.yaml")
    epoch = torch.load(last, weights_only=True)["epoch"]
    saved = {p: p.read_bytes() for p in (last, best, metrics, config)}
    small = len(saved[metrics]) + 50  # room for the file as it is, not for one more row
    assert small < len(saved[config]) < 20_000 < len(saved[last])
    # small: the next metrics.csv row fails (the unchanged config.yaml is not rewritten); 20 kB: the checkpoint;
    # small with --epochs 4: config.yaml, which a changed budget rewrites, fails first
    cases = ((small, [], "metrics file", metrics), (20_000, [], "checkpoint", out / "checkpoints" / "*.ckpt"),
             (small, ["--epochs", "4"], "config", config))
    for limit, extra, what, path in cases:
        code, _, err = run(args + ["--resume", *extra], preexec_fn=_file_size_limit(limit))
        assert code == 1, err
        assert "Traceback" not in err, err
        expected = (f"could not write {what} {path}: File too large (errno EFBIG: no space / file size limit); the "
                    f"previous checkpoint {last} (end of epoch {epoch}, step {PER_EPOCH * (epoch + 1)}) is kept; free "
                    f"space (or raise the quota or file size limit) and continue with: deepsets train --out {out} "
                    f"--resume")
        assert re.search(re.escape(expected).replace(r"\*", "(best|last)"), err), err
        # the checkpoints and config.yaml are byte-identical; metrics.csv too unless the checkpoint write failed
        # (it then holds the new epoch's row, which --resume drops as it restarts from the kept checkpoint)
        kept = [last, best, config] + ([metrics] if what != "checkpoint" else [])
        assert all(p.read_bytes() == saved[p] for p in kept), f"the previous files are byte-identical ({what})"
        assert not list(out.rglob("*.tmp"))
        saved[metrics] = metrics.read_bytes()
    code, _, err = run(args + ["--resume"])  # space again: the run continues
    assert code == 0, err
    assert_every_epoch_once(out, 3)


@pytest.mark.parametrize("code,kind", [(errno.ENOSPC, "no space / file size limit"), (errno.EDQUOT, "no space"),
                                       (errno.EACCES, "not writable"), (errno.EROFS, "not writable"),
                                       (errno.EIO, None)])
def test_write_errors_say_what_kind_of_problem(code, kind, tmp_path):
    msg = storage_message("checkpoint", tmp_path / "checkpoints" / "last.ckpt", OSError(code, os.strerror(code)),
                          tmp_path)
    assert f"could not write checkpoint {tmp_path}" in msg and f"errno {errno.errorcode[code]}" in msg
    assert "no checkpoint had been written yet" in msg and "--overwrite" in msg
    if kind:
        assert kind in msg
    else:
        assert "fix the cause" in msg
