"""Safe outputs: atomic file writes (a kill at any moment leaves either the old file or the new one, never half of
one), CSV cells that a spreadsheet does not run as formulas, and outputs that never overwrite an input."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path



class RunError(Exception):
    """An error whose message says everything: what failed, what is kept and what to do."""


class WriteError(OSError, RunError):
    """A file could not be written: ``cannot write PATH: <reason>``. ``errno``, ``strerror`` and ``filename``
    are the failed call's (``errno.ENOSPC`` for a full disk, ...)."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror or 'unknown error'}"


def write_error(path, err: OSError) -> WriteError:
    """``err`` (an OSError of writing ``path``) as a :class:`WriteError` naming ``path``."""
    if isinstance(err, WriteError):
        return err
    return WriteError(err.errno or 0, err.strerror or str(err), str(path))


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where it can be: setting it to read it races other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | Path) -> int:
    """The permission bits a write of ``path`` gives the file: those of the file it replaces, else what a plain
    ``open(path, "w")`` would give a new file (``0o666`` less the umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def check_free_space(path: str | Path, nbytes: int) -> None:
    """Refuse to write ``nbytes`` to ``path`` when the file system of its folder has less free space:
    ``cannot write PATH: not enough free space (N MB needed, M MB free)`` (a :class:`WriteError`, ``ENOSPC``)."""
    import errno
    import shutil

    try:
        usage = shutil.disk_usage(Path(path).parent)
    except OSError:
        return  # cannot tell: the write itself reports a full disk
    if usage.total and usage.free < nbytes:
        raise WriteError(errno.ENOSPC, f"not enough free space ({nbytes / 1e6:.1f} MB needed, "
                                       f"{usage.free / 1e6:.1f} MB free)", str(path))


def atomic_write_bytes(path: str | Path, data: bytes, verify: Callable[[Path], None] | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, renamed into place when complete
    (and, with ``verify``, when ``verify(temporary path)`` returned: an exception it raises removes the file).

    The file keeps the permission bits of the file it replaces; a new file gets ``0o666`` less the umask (as
    ``open`` would give it). Renaming replaces the directory entry: a file that was hard-linked elsewhere is not
    changed through its other names (they keep the old content), and a symbolic link at ``path`` is replaced by
    the file. A failed write (full disk, unwritable folder, ...) removes the temporary file, leaves the previous
    file as it was and raises :class:`WriteError` (an ``OSError``): ``cannot write PATH: <reason>``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = new_file_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        if verify is not None:
            verify(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


# ------------------------------------------------------------------------------------------------ CSV cells
#: a text cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*(e[+-]?\d+)?|\.\d+(e[+-]?\d+)?|inf|infinity|nan)", re.IGNORECASE)


def escape_csv_cell(value):
    """``value`` as a CSV cell a spreadsheet shows as text: a text cell starting with ``=``, ``+``, ``-``, ``@``,
    a tab or a carriage return gets a leading ``'``. Numbers (``-0.5``, ``-1e-3``, ``-inf``, as numbers or as
    text) are left as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START) or _NUMBER.fullmatch(value):
        return value
    return "'" + value


def csv_text(header: Sequence, rows: Iterable[Sequence | Mapping], escape: bool = True) -> str:
    """CSV text of ``header`` and ``rows`` (sequences, or mappings read in the header's order, missing keys
    empty); with ``escape`` every cell goes through :func:`escape_csv_cell`. What every CSV the tool writes is
    made with."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    cell = escape_csv_cell if escape else (lambda v: v)
    w.writerow([cell(h) for h in header])
    for r in rows:
        values = [r.get(h, "") for h in header] if isinstance(r, Mapping) else r
        w.writerow([cell(v) for v in values])
    return buf.getvalue()


# ------------------------------------------------------------------------------------- outputs are not inputs
def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and symbolic links included
    except OSError:
        return a.resolve() == b.resolve()


def refuse_input_as_output(output, inputs: Mapping[str, object], flag: str = "--output") -> None:
    """Raise ``ValueError: --output X is also an input of this command (--input); choose another path`` when the
    path ``output`` is one of ``inputs`` (``{flag: path}``; ``None`` values are skipped): the same file (also
    through a hard or symbolic link), or a file that already exists inside an input folder. Called before
    anything is written."""
    if output is None or str(output) == "":
        return
    out = Path(output).expanduser()
    for name, given in inputs.items():
        if given is None or str(given) == "":
            continue
        inp = Path(given).expanduser()
        clash = _same(out, inp) if inp.exists() or out.exists() else False
        if not clash and inp.is_dir() and out.is_file():
            clash = inp.resolve() in out.resolve().parents
        if clash:
            raise ValueError(f"{flag} {output} is also an input of this command ({name}); choose another path")
