"""What keeps a run folder consistent under real conditions: signals, concurrent runs, full disks.

* **Signals.** SIGTERM (what SLURM and other schedulers send on preemption) and SIGINT (Ctrl-C) stop a run
  cleanly. Inside ``Trainer.fit`` Lightning handles both itself: its signal connector turns SIGTERM into
  ``SIGTERMException`` at the next batch boundary (and forwards it to the DDP processes it launched), and a
  ``KeyboardInterrupt`` is caught, the ``on_exception`` hooks run and the process exits. :class:`StopRecorder`
  (an ``on_exception`` callback) notes which it was and where; :class:`RunGuard` turns it into one
  :class:`RunInterrupted` whose message names the signal, the epoch and step, the checkpoint that is kept and
  the command that continues the run. No checkpoint is written on the way out (``ModelCheckpoint`` keeps
  ``save_on_exception=False``): ``last.ckpt`` stays the end of the last complete epoch, so ``--resume`` redoes
  the interrupted epoch from its start and every epoch appears once in ``metrics.csv``. Outside ``fit`` (data
  loading, the final evaluation) :func:`terminate_on_sigterm` makes SIGTERM unwind like Ctrl-C does.
* **Concurrent runs.** :class:`RunLock` holds an OS-level lock (``flock`` through the ``filelock`` package) on
  ``OUT/.lock`` while a run writes into ``OUT``; the kernel releases it when the process ends, however it ends
  (SIGKILL included), so it never stays stuck. A second run into the same folder is refused before it touches
  anything (``--overwrite`` included); ``OUT/.lock.info`` says who holds it.
* **Full or unwritable disks.** Checkpoints, ``metrics.csv`` and the learning curve are written atomically (a
  temporary file renamed into place, :mod:`deepsets.files`); when a write fails the temporary file is removed,
  the previous file is untouched, and :class:`StorageError` says which file, why, and what to do.

This module imports neither torch nor Lightning, so the command line can use it at no cost.
"""
from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import socket
import time
from pathlib import Path

from ..files import RunError, atomic_write_text

#: exit codes of a run stopped by a signal (128 + the signal number, as a shell reports it)
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}

LOCK_NAME = ".lock"
LOCK_INFO_NAME = ".lock.info"
#: files of the lock in a run folder (not run output: an --out holding only these counts as empty)
LOCK_FILES = (LOCK_NAME, LOCK_INFO_NAME)


class RunInUseError(RunError):
    """Another run is writing into the same output folder."""


class StorageError(OSError, RunError):
    """A run file could not be written (full disk, file size limit, unwritable folder).

    ``path`` is the file, ``reason`` the OS error's text and ``errno`` its number; the message says what is kept.
    """

    def __init__(self, message: str, path=None, err: OSError | None = None, what: str = "file"):
        super().__init__(message)
        self.path, self.what = path, what
        self.errno = getattr(err, "errno", None)
        self.reason = (getattr(err, "strerror", None) or str(err)) if err is not None else None

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``signal`` is ``"SIGINT"`` or ``"SIGTERM"``, ``exit_code`` 130 or 143.

    A ``KeyboardInterrupt``, so that code catching ``Exception`` does not swallow it.
    """

    def __init__(self, signal_name: str = "SIGINT", message: str | None = None):
        super().__init__(message or f"stopped by {signal_name}")
        self.signal = signal_name
        self.exit_code = EXIT_CODES.get(signal_name, 130)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ------------------------------------------------------------------------------------------------------ signals
def _raise_on_sigterm(signum, frame):
    # While Lightning's trainer runs, its own SIGTERM handler is installed and calls this one after setting its
    # flag: then Lightning stops the loop at the next batch boundary, and nothing is raised here.
    if signal.getsignal(signal.SIGTERM) is _raise_on_sigterm:
        raise RunInterrupted("SIGTERM")


def terminate_on_sigterm():
    """Make SIGTERM raise :class:`RunInterrupted` (like Ctrl-C raises ``KeyboardInterrupt``) instead of killing
    the process on the spot, so that temporary files are removed and locks released. Main thread only, and only
    where SIGTERM has its default action. Returns a function that puts the previous handler back."""
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
        return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return lambda: None


def take_over_sigterm() -> None:
    """From now until Lightning restores the handlers it replaced, SIGTERM raises :class:`RunInterrupted` at once
    (Lightning handles that as it handles Ctrl-C) instead of setting Lightning's flag. Main thread only."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_on_sigterm)


def signal_of(exc: BaseException) -> str | None:
    """``"SIGTERM"``/``"SIGINT"`` when ``exc`` is how Lightning (or Python) reports that signal, else None."""
    if isinstance(exc, RunInterrupted):
        return exc.signal
    if type(exc).__name__ == "SIGTERMException":  # lightning.pytorch.utilities.exceptions; raised by its loops
        return "SIGTERM"
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    if isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt):
        return signal_of(exc.__context__)  # Lightning ends a fit interrupted by Ctrl-C with sys.exit(1)
    return None


# ------------------------------------------------------------------------------------------------------ messages
def resume_command(out: str | Path) -> str:
    return f"deepsets train --out {shlex.quote(str(out))} --resume"


def kept_checkpoint(out: str | Path) -> tuple[Path, int | None, int | None] | None:
    """``(path, epoch, step)`` of ``OUT/checkpoints/last.ckpt`` (the end of the last complete epoch), or None."""
    last = Path(out) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    from ..checkpoint import load_file  # (torch: only when a run ends early)

    try:
        ckpt = load_file(last)
        return last, ckpt.get("epoch"), ckpt.get("global_step")
    except Exception:  # noqa: BLE001 - the message says it could not be read
        return last, None, None


def _kept_text(out, which: str = "the checkpoint") -> tuple[str, bool]:
    """What the run folder still holds, and whether ``--resume`` can continue from it."""
    kept = kept_checkpoint(out)
    if kept is None:
        return "no checkpoint had been written yet", False
    path, epoch, step = kept
    if epoch is None:
        return f"{which} {path} could not be read", False
    return f"{which} {path} (end of epoch {epoch}, step {step}) is kept", True


def _then(out, resumable: bool) -> str:
    if resumable:
        return f"continue with: {resume_command(out)}"
    return f"start it again with: deepsets train --out {shlex.quote(str(out))} --overwrite"


def interrupted_message(signal_name: str, out: str | Path, epoch: int | None, step: int | None) -> str:
    """``stopped by SIGTERM during epoch E (step S); the checkpoint OUT/checkpoints/last.ckpt (end of epoch E-1,
    step S0) is kept; continue with: deepsets train --out OUT --resume``"""
    where = f" during epoch {epoch} (step {step})" if epoch is not None else ""
    kept, resumable = _kept_text(out)
    return f"stopped by {signal_name}{where}; {kept}; {_then(out, resumable)}"


#: errno -> (kind of problem, what to do about it)
_STORAGE_KINDS = {
    **dict.fromkeys(("ENOSPC", "EDQUOT", "EFBIG"), ("no space / file size limit",
                                                    "free space (or raise the quota or file size limit)")),
    **dict.fromkeys(("EACCES", "EPERM", "EROFS"), ("not writable", "make the folder writable")),
}


def storage_message(what: str, path, err: OSError, out: str | Path) -> str:
    """``could not write checkpoint OUT/checkpoints/last.ckpt: No space left on device (errno ENOSPC: no space /
    file size limit); the previous checkpoint ... is kept; free space ... and continue with: ...``"""
    code = errno.errorcode.get(err.errno, str(err.errno)) if err.errno is not None else None
    kind, todo = _STORAGE_KINDS.get(code, (None, "fix the cause"))
    detail = f" (errno {code}{': ' + kind if kind else ''})" if code else ""
    kept, resumable = _kept_text(out, "the previous checkpoint")
    return f"could not write {what} {path}: {err.strerror or err}{detail}; {kept}; {todo} and {_then(out, resumable)}"


def write_error(what: str, path, err: OSError) -> StorageError:
    """A :class:`StorageError` for a failed write of ``path``; :class:`RunGuard` completes its message."""
    return StorageError(f"could not write {what} {path}: {err.strerror or err}", path, err, what)


# ------------------------------------------------------------------------------------------------------ guard
class RunGuard:
    """Context manager around a training run in ``out``: turns signals and failed writes into one clear error.

    ``recorder``: what notes the exception that ended ``fit`` and its epoch and step (``exception``, ``epoch``,
    ``step``: :class:`deepsets.train.callbacks.StopRecorder`, given to the ``Trainer`` too), so that interruptions
    inside ``fit`` report them.
    """

    def __init__(self, out: str | Path, recorder=None):
        self.out = Path(out)
        self.recorder = recorder

    def __enter__(self):
        return self

    def __exit__(self, tp, exc, tb):
        if exc is None:
            return False
        name = signal_of(exc)
        if name is not None:
            for stale in [*self.out.glob(".*.tmp"), *(self.out / "checkpoints").glob(".*.tmp")]:
                stale.unlink(missing_ok=True)  # a write the signal cut short (never renamed into place)
            epoch, step = getattr(self.recorder, "epoch", None), getattr(self.recorder, "step", None)
            if getattr(self.recorder, "exception", None) is not None and name == "SIGINT":
                name = signal_of(self.recorder.exception) or name
            raise RunInterrupted(name, interrupted_message(name, self.out, epoch, step)) from None
        if isinstance(exc, StorageError) and isinstance(exc.path, (str, Path)):
            err = OSError(exc.errno, exc.reason)
            raise StorageError(storage_message(exc.what, exc.path, err, self.out), exc.path, err,
                               exc.what) from None
        return False


class RunLock:
    """An exclusive, OS-level lock on ``OUT/.lock`` for the lifetime of a run (see the module's docstring).

    Nothing is locked where ``out`` cannot hold a run folder (a file, an unwritable place; the run's own checks
    report that) or, with ``create=False``, where the folder does not exist yet.
    """

    def __init__(self, out: str | Path, create: bool = True):
        self.out, self.create = Path(out), create
        self._lock = None
        self.made = False  # this run created the folder: a failure before any run file removes it again

    @property
    def info_path(self) -> Path:
        return self.out / LOCK_INFO_NAME

    def holder(self) -> str:
        """``pid P on HOST, started at T`` of the run holding the lock (as far as its info file says)."""
        try:
            info = json.loads(self.info_path.read_text())
            return f"pid {info['pid']} on {info['host']}, started at {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "its process is unknown: it has not written its details yet"

    def __enter__(self):
        from filelock import FileLock, Timeout

        out = self.out
        if not out.is_dir():
            if out.exists() or not self.create:
                return self
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError:
                return self
            self.made = True
        lock = FileLock(str(out / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunInUseError(f"{out} is in use by another run ({self.holder()}); wait for it to finish or "
                                f"choose another --out") from None
        except OSError:  # cannot create the lock file: the folder is not writable, which the run then reports
            return self
        self._lock = lock
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        try:
            atomic_write_text(self.info_path, json.dumps(info) + "\n")
        except OSError:
            pass  # the lock holds without its description
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            try:
                self.info_path.unlink(missing_ok=True)
            except OSError:
                pass
            self._lock.release()
            self._lock = None
        if self.made and exc[0] is not None:  # failed before writing anything: leave no empty run folder behind
            try:
                if all(p.name in (LOCK_NAME, LOCK_INFO_NAME) for p in self.out.iterdir()):
                    for name in (LOCK_NAME, LOCK_INFO_NAME):
                        (self.out / name).unlink(missing_ok=True)
                    self.out.rmdir()
            except OSError:
                pass
        return False
