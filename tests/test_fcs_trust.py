"""FCS folders read right or refused clearly: channels matched by name in every file, Beckman Coulter ``.lmd``
files, every unreadable file reported (``--skip-unreadable`` predicts the rest), and ``deepsets data info``.

Files are written with ``flowio.create_fcs``; the ``.lmd`` file (an FCS 2.0 data set followed by an FCS 3.x one,
as Beckman Coulter instruments write it) is assembled from a small FCS 2.0 data set and a ``create_fcs`` one.
The command line runs as a subprocess, as a user runs it.
"""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

flowio = pytest.importorskip("flowio")

from deepsets.data import DataError  # noqa: E402
from deepsets.data.fcs import read_fcs_file  # noqa: E402
from deepsets.data.sources import open_source  # noqa: E402

NAMES = ["FSC-A", "SSC-A", "CD3", "Time"]  # Time is not a measurement: left out by default


def _fcs_bytes(events, names) -> bytes:
    buf = io.BytesIO()
    flowio.create_fcs(buf, np.asarray(events, np.float32).ravel().tolist(), list(names))
    return buf.getvalue()


def _write(path: Path, events, names=NAMES) -> Path:
    path.write_bytes(_fcs_bytes(events, names))
    return path


def _fcs20_with_next(events, names) -> bytes:
    """An FCS 2.0 data set of float32 events whose ``$NEXTDATA`` is the data set's own length (what follows it)."""
    events = np.asarray(events, "<f4")
    data = events.tobytes()

    def text(nextdata):
        kw = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "F", "$MODE": "L", "$PAR": str(len(names)),
              "$TOT": str(len(events)), "$NEXTDATA": f"{nextdata:010d}"}
        for i, n in enumerate(names, 1):
            kw.update({f"$P{i}N": n, f"$P{i}B": "32", f"$P{i}E": "0,0", f"$P{i}R": "1024"})
        return b"/" + b"/".join(f"{k}/{v}".encode() for k, v in kw.items()) + b"/"

    t = text(0)  # the fixed-width $NEXTDATA keeps the length
    begin = 58 + len(t)
    total = begin + len(data)
    header = b"FCS2.0    " + b"".join(b"%8d" % v for v in (58, begin - 1, begin, total - 1, 0, 0))
    return header + text(total) + data


def _lmd(path: Path, events, names=NAMES) -> Path:
    """A Beckman Coulter-style ``.lmd``: FCS 2.0 (other channel names, values / 4) then FCS 3.x of ``events``."""
    first = _fcs20_with_next(np.asarray(events) / 4, [f"{n} INT LIN" for n in names])
    path.write_bytes(first + _fcs_bytes(events, names))
    return path


def _events(seed, n=40):
    rng = np.random.default_rng(seed)
    return rng.normal([100 + 10 * seed, 50, 20, 0], 5, (n, 4)).astype(np.float32)


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "deepsets.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)  # a damaged file must not hang anything


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the CLI on a folder of .fcs files and one .lmd file (no --channels)."""
    root = tmp_path_factory.mktemp("fcs-trust")
    folder = root / "train"
    folder.mkdir()
    rows = ["set,label"]
    for i in range(6):
        (_lmd if i == 5 else _write)(folder / f"p{i}.{'lmd' if i == 5 else 'fcs'}", _events(i))
        rows.append(f"p{i},{i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    run = root / "run"
    r = _cli("train", "--data", folder, "--epochs", "1", "--out", run, "--depth", "2", "--dim", "8",
             "--batch-size", "4", "--set-size", "16", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "FSC-A, SSC-A, CD3" in r.stderr + r.stdout  # the .lmd file's FCS 3 data set has the same channels
    return root, run / "checkpoints" / "best.ckpt"


# ------------------------------------------------------------------------------------------- channels by name
def test_permuted_channels_are_read_by_name(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    ev = _events(1)
    _write(folder / "a.fcs", _events(0))
    _write(folder / "b.fcs", ev)
    perm = [3, 2, 0, 1]
    _write(folder / "c.fcs", ev[:, perm], [NAMES[j] for j in perm])  # b's events, channels in another order
    r = open_source(folder)
    assert r.feature_names == ["FSC-A", "SSC-A", "CD3"] and r.left_out == ["Time"]
    np.testing.assert_array_equal(r.read(2), r.read(1))
    np.testing.assert_array_equal(r.read(1), ev[:, :3])
    # named channels and a channel map: by name too
    r = open_source(folder, features=["CD3", "FSC-A"])
    np.testing.assert_array_equal(r.read(2), ev[:, [2, 0]])
    r = open_source(folder, channel_map={"CD3": "T cells"})
    assert r.feature_names == ["FSC-A", "SSC-A", "T cells"]
    np.testing.assert_array_equal(r.read(2), ev[:, :3])


def test_file_with_other_channels_is_refused(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    rows = ["set,label"]
    for i in range(4):
        names = ["FSC-A", "SSC-A", "CD4", "Time"] if i == 2 else NAMES
        _write(folder / f"s{i}.fcs", _events(i), names)
        rows.append(f"s{i},{i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        open_source(folder).read(2)
    msg = str(e.value)
    assert "\n" not in msg and "s2.fcs" in msg and "missing ['CD3']" in msg and "extra ['CD4']" in msg
    r = _cli("train", "--data", folder, "--epochs", "1", "--out", tmp_path / "run", "--depth", "2", "--dim", "8",
             "--no-progress")
    assert r.returncode == 1
    err = [ln for ln in _error_lines(r.stderr) if "error:" in ln]
    assert len(err) == 1 and "s2.fcs" in err[0] and "missing ['CD3']" in err[0] and "extra ['CD4']" in err[0], \
        r.stderr


# ------------------------------------------------------------------------------------------------------- .lmd
def test_lmd_file_reads_its_fcs3_data_set(tmp_path):
    ev = _events(2)
    f = read_fcs_file(_lmd(tmp_path / "x.LMD", ev))
    assert f.version.startswith("3") and f.pnn == NAMES
    np.testing.assert_array_equal(f.events, ev)
    # an .lmd file with a single data set reads as any FCS file
    g = read_fcs_file(_write(tmp_path / "one.lmd", ev))
    np.testing.assert_array_equal(g.events, ev)
    r = open_source(tmp_path / "x.LMD")
    assert r.set_ids == ["x"]
    np.testing.assert_array_equal(r.read(0), ev[:, :3])


# ----------------------------------------------------------------------------------------- unreadable files
def test_every_unreadable_file_is_named_and_skip_unreadable_predicts_the_rest(trained, tmp_path):
    """Two broken files are both named; with --skip-unreadable the others are predicted, and a file whose channels
    come in another order predicts exactly as the original."""
    _, ckpt = trained
    folder = tmp_path / "mixed"
    folder.mkdir()
    ev = _events(3)
    _write(folder / "ok.fcs", _events(1))
    _write(folder / "orig.fcs", ev)
    perm = [2, 3, 1, 0]
    _write(folder / "perm.fcs", ev[:, perm], [NAMES[j] for j in perm])
    (folder / "bad1.fcs").write_bytes(b"not an fcs file at all")
    (folder / "bad2.fcs").write_bytes(_fcs_bytes(_events(4), NAMES)[:300])  # truncated
    r = _cli("predict", "--checkpoint", ckpt, "--input", folder, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    lines = _error_lines(r.stderr)
    assert any("bad1.fcs" in ln and "not an FCS file" in ln for ln in lines), r.stderr
    assert any("bad2.fcs" in ln and "truncated" in ln for ln in lines), r.stderr
    assert "--skip-unreadable" in r.stderr
    out = tmp_path / "p.csv"
    r = _cli("predict", "--checkpoint", ckpt, "--input", folder, "--skip-unreadable", "--whole-sets", "--output", out,
             timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {row["set"]: row["prediction"] for row in csv.DictReader(out.open())}
    assert list(rows) == ["ok", "orig", "perm"] and rows["orig"] == rows["perm"]
    skipped = [ln for ln in _error_lines(r.stderr) if ln.startswith("skipped:")]
    assert len(skipped) == 2 and "bad1.fcs" in skipped[0] and "bad2.fcs" in skipped[1], r.stderr


# ------------------------------------------------------------------------------------------------- data info
def test_data_info_on_fcs_is_not_hematocrit_and_bad_data_exits_1(trained, tmp_path):
    root, _ = trained
    two = _write(tmp_path / "two.fcs", _events(0)[:, :2], ["RBC_Volume", "RBC_HC"])
    r = _cli("data", "info", root / "train")
    assert r.returncode == 0, r.stderr
    detected = [ln for ln in r.stdout.splitlines() if "detected task" in ln]
    assert len(detected) == 1 and "hematocrit" not in detected[0] and "regression" in detected[0], r.stdout
    for p in (two, root / "train" / "p5.lmd"):
        r = _cli("data", "info", p)
        assert r.returncode == 0 and "hematocrit" not in r.stdout and "your own sets" in r.stdout, r.stdout
    bad = tmp_path / "bad.fcs"
    bad.write_bytes(b"garbage")
    r = _cli("data", "info", bad)
    lines = _error_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1 and "bad.fcs" in lines[0] and "not an FCS file" in lines[0], r.stderr
