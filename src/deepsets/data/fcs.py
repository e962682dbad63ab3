"""Robust reader of FCS flow-cytometry files (FCS 2.0, 3.0 and 3.1), built on :mod:`flowio`.

:func:`read_fcs_file` returns an :class:`FCSFile` (channel names, raw events as float32 ``[n_events,
n_channels]``, the TEXT keywords, the version); :func:`fcs_channels` returns just ``($PnN, $PnS)`` and never
decodes the DATA segment. ``flowio`` is an optional dependency (``pip install 'deepsets[cytometry]'``); it is
imported when a file is read.

What is read
    List-mode data (``$MODE/L/``) of type ``$DATATYPE`` ``I`` (unsigned integers), ``F`` (float32), ``D``
    (float64) and ``A`` (ASCII), in little- or big-endian byte order. Values are returned raw: no gain, log
    or time-step scaling. Integer values are bit-masked as the FCS standard says: to ``$PnR`` rounded up to a
    power of two (``$PnR`` is exclusive when it is a power of two; otherwise a value may reach the next power
    of two minus one, the standard's masking rule). ``$PnN``/``$PnS`` have surrounding whitespace removed;
    ``$PnS`` is ``''`` where absent, and a channel without ``$PnN`` (optional in FCS 2.0) is named by its
    ``$PnS`` or else ``P<n>``. ``FCSFile.text`` holds the TEXT keywords as flowio gives them: lower-case, with
    every ``$`` removed (flowio strips ``$`` from values too), escaped delimiters undone, and the last value
    kept when a keyword appears twice. A file whose ``$TOT`` is 0 (and whose DATA segment is empty) reads as
    an array of 0 events.

How each quirk of real instruments is handled
    The strict ``flowio.FlowData`` read is tried first; on a specific flowio error it is retried with the
    matching flowio option (each option is added at most once, so the retries end):

    * ``$ENDDATA`` one byte past the DATA segment (the Miltenyi MACSQuant FCS 3.1 files: the segment is one
      byte longer than ``$TOT`` events; flowio: "off by 1") -> ``ignore_offset_error=True``.
    * HEADER and TEXT disagree on the DATA offsets (``DataOffsetDiscrepancyError``) ->
      ``ignore_offset_discrepancy=True``, i.e. the TEXT ``$BEGINDATA``/``$ENDDATA`` are used; if those do not
      hold ``$TOT`` events, ``use_header_offsets=True`` is tried.
    * Several data sets in one file (``$NEXTDATA`` not 0, e.g. Guava Muse; ``MultipleDataSetsError``) ->
      ``nextdata_offset=0``: **the first data set is read** and the others are ignored. Except in a Beckman
      Coulter ``.lmd`` file (FCS inside; any case of the suffix): its first data set is FCS 2.0 with 10-bit,
      log-compressed values and ``$NEXTDATA`` points to an FCS 3.x data set of the same events at full
      resolution, and **that FCS 3.x data set is read** (an ``.lmd`` file with one data set reads as usual).
    * DATA offsets that do not fit the HEADER's 8 digits (large files): the standard writes ``0`` there, some
      writers leave the field blank. A blank HEADER offset field is read as ``0`` (the in-memory copy given to
      flowio is normalised; the file is not changed), and the offsets come from ``$BEGINDATA``/``$ENDDATA``.
    * Duplicate channel names are kept as they are in ``pnn`` (callers select by name and get the first).

    Where flowio cannot decode a valid layout at all, the DATA segment is decoded here with numpy from
    ``$BEGINDATA`` (or the HEADER) and ``$TOT`` x the bytes of one event:

    * integer ``$PnB`` other than 8/16/32 (e.g. the Cytek xP5's 24-bit big-endian values, which flowio skips
      with "Non-standard bit width"), 64-bit or mixed widths; a ``$PnB`` that is not a multiple of 8 is read
      when each value fills whole bytes (``ceil($PnB/8)``), bit-packed data are refused;
    * a ``$BYTEORD`` flowio does not know (e.g. ``1,2,3`` or ``1,2,3,4,5,6,7,8``);
    * ASCII data (``$DATATYPE/A/``), fixed width or ``$PnB/*/`` (delimited);
    * anything else flowio fails on while its TEXT is readable (e.g. no ``$MODE``, as FCS 3.2 allows).
      ``$TOT`` events are read; bytes left over at the end of the segment are ignored.

Errors
    Every failure raises :class:`~deepsets.data.DataError` with one line that names the file and the reason:
    not an FCS file (no ``FCS`` header; the first bytes are shown), empty file, a damaged HEADER, a file
    truncated inside the TEXT or DATA segment (which byte is needed and how long the file is), a file that
    holds only a header and TEXT but no events, missing TEXT keywords, unsupported layouts (histogram
    ``$MODE``, bit-packed integers, an unknown byte order). The file's bytes are read once
    (``Path.read_bytes()``) and no handle is left open; every step is bounded by the file size, so a damaged
    file fails fast.

``read_fcs_file(path, events=False)`` (and :func:`fcs_channels`) reads only the HEADER and TEXT: it also
succeeds for a file whose DATA segment is missing (header/text only), so read the events to check those.
"""
from __future__ import annotations

import re

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._base import DataError

__all__ = ["FCSFile", "FCS_SUFFIXES", "fcs_channels", "is_fcs_path", "read_fcs_file"]

#: suffixes of FCS files (any case): ``.fcs``, and ``.lmd`` (Beckman Coulter list-mode data, FCS inside)
FCS_SUFFIXES = (".fcs", ".lmd")

_HEADER_LEN = 58  # "FCSx.y" + 4 spaces + 6 offset fields of 8 characters (bytes 10..57)
_FIELDS = (("TEXT start", 10), ("TEXT end", 18), ("DATA start", 26), ("DATA end", 34),
           ("ANALYSIS start", 42), ("ANALYSIS end", 50))
_FLOWIO_BYTEORDS = {"1,2,3,4": "<", "1,2": "<", "4,3,2,1": ">", "2,1": ">"}  # the ones flowio decodes itself
_FAR = 1 << 62  # end of file reported to flowio by _Unbounded


@dataclass
class FCSFile:
    """One FCS file (its first data set).

    ``events`` is float32 ``[n_events, n_channels]`` with raw values (no transform), or ``None`` when only the
    text was read (``read_fcs_file(..., events=False)``). ``text`` holds the TEXT keywords with lower-case keys
    as flowio gives them (``"par"``, ``"tot"``, ``"p1n"``, ...).
    """

    path: Path
    pnn: list[str]
    pns: list[str]
    events: np.ndarray | None
    text: dict
    version: str


def _flowio():
    try:
        import flowio
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading FCS files needs flowio: pip install 'deepsets[cytometry]'") from e
    return flowio


def _one_line(e) -> str:
    s = " ".join(str(e).split())
    return f"{type(e).__name__}: {s}" if s else type(e).__name__


class _Named(io.BytesIO):
    """In-memory file with the file's name, so flowio's own messages name it."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name


class _Unbounded(_Named):
    """In-memory file whose end is reported far away: for TEXT-only reads of a file whose DATA is missing.

    flowio checks that the DATA segment lies inside the file (from ``seek(0, SEEK_END)``) even when asked for
    the TEXT only; this view lets such a read go on. It is only used with ``only_text=True``, where nothing is
    read from the DATA segment, and reading past the real end still returns short (flowio then fails).
    """

    def seek(self, pos, whence=io.SEEK_SET):
        if whence == io.SEEK_END:
            return super().seek(_FAR + pos)
        return super().seek(pos, whence)


# ---------------------------------------------------------------------------------------------------------------
# HEADER
# ---------------------------------------------------------------------------------------------------------------
def _check_header(data: bytes, p: Path) -> tuple[bytes, dict]:
    """Check the HEADER; return ``(bytes for flowio, header offsets)``. Blank offset fields are set to 0."""
    n = len(data)
    if n == 0:
        raise DataError(f"{p}: empty file (0 bytes), not an FCS file")
    if not data.startswith(b"FCS"):
        raise DataError(f"{p}: not an FCS file (no FCS header; found {data[:16]!r})")
    if n < _HEADER_LEN:
        raise DataError(f"{p}: truncated FCS file: the HEADER needs {_HEADER_LEN} bytes but the file has {n} bytes")
    hdr = bytearray(data[:_HEADER_LEN])
    offsets = {}
    for name, at in _FIELDS:
        raw = bytes(hdr[at:at + 8])
        s = raw.strip()
        if not s:
            hdr[at:at + 8] = b"       0"  # the standard's "0" for an offset that does not fit 8 digits
            offsets[name] = 0
        elif s.isdigit():
            offsets[name] = int(s)
        elif name.startswith("ANALYSIS"):
            offsets[name] = -1  # optional; flowio ignores an unreadable ANALYSIS field
        else:
            raise DataError(f"{p}: damaged FCS HEADER: the {name} offset (bytes {at}-{at + 7}) is {raw!r}, "
                            f"not a number")
    t0, t1 = offsets["TEXT start"], offsets["TEXT end"]
    if t0 < _HEADER_LEN or t1 <= t0:
        raise DataError(f"{p}: damaged FCS HEADER: TEXT segment offsets {t0}-{t1} are impossible")
    if t1 >= n:
        raise DataError(f"{p}: truncated FCS file: TEXT segment ends at byte {t1} but the file has {n} bytes")
    buf = data if bytes(hdr) == data[:_HEADER_LEN] else bytes(hdr) + data[_HEADER_LEN:]
    return buf, offsets


# ---------------------------------------------------------------------------------------------------------------
# flowio with retries
# ---------------------------------------------------------------------------------------------------------------
def _flowdata(flowio, buf: bytes, p: Path, only_text: bool, opts: dict | None = None, unbounded: bool = False):
    """``flowio.FlowData`` with the retry strategy of the module docstring. Returns ``(fd, opts)``.

    Raises what flowio raises when no option helps.
    """
    from flowio.exceptions import DataOffsetDiscrepancyError, FCSParsingError, MultipleDataSetsError

    opts = dict(opts or {})
    while True:  # every retry adds an option that was not set before, so this loop ends
        fh = (_Unbounded if unbounded else _Named)(buf, p.name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # flowio's warnings are about the quirks handled here
                return flowio.FlowData(fh, only_text=only_text, **opts), opts
        except MultipleDataSetsError:
            if "nextdata_offset" in opts:
                raise
            opts["nextdata_offset"] = 0  # first data set
        except DataOffsetDiscrepancyError:
            if opts.get("ignore_offset_discrepancy") or opts.get("use_header_offsets"):
                raise
            opts["ignore_offset_discrepancy"] = True  # use the TEXT offsets
        except FCSParsingError as e:
            if "off by 1" in str(e) and not opts.get("ignore_offset_error"):
                opts["ignore_offset_error"] = True
            else:
                raise
        finally:
            fh.close()


def _text_error(p: Path, e: Exception) -> DataError:
    if isinstance(e, KeyError):
        key = str(e.args[0]) if e.args else "?"
        return DataError(f"{p}: FCS TEXT segment lacks the required keyword ${key.upper()}")
    return DataError(f"{p}: cannot parse the FCS TEXT segment: {_one_line(e)}")


def _int_kw(text: dict, key: str, p: Path) -> int:
    if key not in text:
        raise DataError(f"{p}: FCS TEXT segment lacks the required keyword ${key.upper()}")
    try:
        return int(str(text[key]).strip())
    except ValueError:
        raise DataError(f"{p}: FCS keyword ${key.upper()} is {text[key]!r}, not an integer") from None


def _names(text: dict, par: int) -> tuple[list[str], list[str]]:
    pnn, pns = [], []
    for i in range(1, par + 1):
        s = str(text.get(f"p{i}s", "")).strip()
        n = str(text.get(f"p{i}n", "")).strip()
        pnn.append(n or s or f"P{i}")
        pns.append(s)
    return pnn, pns


# ---------------------------------------------------------------------------------------------------------------
# DATA
# ---------------------------------------------------------------------------------------------------------------
def _candidate_offsets(text: dict, version: str, hdr: dict, use_header: bool) -> list[tuple[int, int]]:
    """DATA ``(start, stop)`` candidates, inclusive, best first: TEXT ``$BEGINDATA/$ENDDATA``, then HEADER."""
    header = (hdr["DATA start"], hdr["DATA end"])
    out = []
    if version != "2.0" or "begindata" in text:
        try:
            out.append((int(str(text["begindata"]).strip()), int(str(text["enddata"]).strip())))
        except (KeyError, ValueError):
            pass
    if header != (0, 0) or not out:
        if use_header or version == "2.0":
            out.insert(0, header)
        else:
            out.append(header)
    return list(dict.fromkeys(out))


def _byte_order(text: dict, p: Path) -> str:
    raw = str(text.get("byteord", "")).strip()
    try:
        order = [int(x) for x in raw.split(",")]
    except ValueError:
        order = []
    if order and order == list(range(1, len(order) + 1)):
        return "<"
    if order and order == list(range(len(order), 0, -1)):
        return ">"
    raise DataError(f"{p}: unsupported FCS $BYTEORD {raw!r} (only little- or big-endian orders are read)")


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _pnr(text: dict, i: int) -> int | None:
    try:
        return int(float(str(text[f"p{i}r"]).strip()))
    except (KeyError, ValueError, OverflowError):
        return None


def _layout(text: dict, par: int, p: Path):
    """``(kind, widths in bytes, bits)`` of one event; kind is 'I', 'F', 'D', 'A' or 'A*' (delimited ASCII)."""
    dt = str(text.get("datatype", "")).strip().upper()
    if dt not in ("I", "F", "D", "A"):
        raise DataError(f"{p}: unsupported FCS $DATATYPE {text.get('datatype')!r} (expected I, F, D or A)")
    bits = []
    for i in range(1, par + 1):
        raw = str(text.get(f"p{i}b", "")).strip()
        if dt == "A" and raw == "*":
            return "A*", None, None
        try:
            bits.append(int(raw))
        except ValueError:
            raise DataError(f"{p}: FCS keyword $P{i}B is {raw!r}, not a number of bits") from None
    if dt in ("F", "D"):
        return dt, [4 if dt == "F" else 8] * par, bits
    if dt == "A":
        return "A", bits, bits  # $PnB is the number of characters
    if any(b < 1 or b > 64 for b in bits):
        raise DataError(f"{p}: unsupported integer widths $PnB={bits} (1..64 bits are read)")
    return "I", [(b + 7) // 8 for b in bits], bits


def _decode_by_hand(buf: bytes, text: dict, version: str, hdr: dict, opts: dict, p: Path) -> np.ndarray:
    """Decode ``$TOT`` events of the first data set with numpy (layouts flowio cannot decode)."""
    par, tot = _int_kw(text, "par", p), _int_kw(text, "tot", p)
    mode = str(text.get("mode", "L")).strip().upper()
    if mode not in ("L", ""):
        raise DataError(f"{p}: unsupported FCS $MODE {mode!r} (histogram data); only list mode (L) is read")
    kind, widths, bits = _layout(text, par, p)
    cands = _candidate_offsets(text, version, hdr, bool(opts.get("use_header_offsets")))
    n = len(buf)
    if kind == "A*":
        for start, stop in cands:
            if 0 < start <= stop < n:
                vals = buf[start:stop + 1].replace(b",", b" ").split()
                if len(vals) >= tot * par:
                    try:
                        arr = np.array(vals[:tot * par], dtype=np.float64)
                    except ValueError as e:
                        raise DataError(f"{p}: cannot decode ASCII FCS DATA: {_one_line(e)}") from None
                    return arr.reshape(tot, par).astype(np.float32)
        raise DataError(f"{p}: the ASCII DATA segment does not hold $TOT={tot} events of {par} values")
    bpe = int(sum(widths))
    need = tot * bpe
    if kind == "I" and any(b % 8 for b in bits):
        packed = -(-tot * int(sum(bits)) // 8)
        lengths = [stop - start + 1 for start, stop in cands]
        if packed in lengths and need not in lengths and need + 1 not in lengths:
            raise DataError(f"{p}: unsupported bit-packed integer FCS DATA ($PnB={bits})")
    start = None
    for s, e in cands:
        if s >= _HEADER_LEN and s + need <= n and e - s + 1 >= need:
            start = s
            break
    if start is None:
        s, e = cands[0]
        if s >= n:
            raise DataError(f"{p}: FCS file holds no events (header/text only): $TOT is {tot} but the DATA "
                            f"segment (bytes {s}-{e}) lies beyond the end of the file ({n} bytes)")
        if s + need > n:
            raise DataError(f"{p}: truncated FCS file: $TOT={tot} events of {bpe} bytes need the DATA segment to "
                            f"end at byte {s + need - 1} but the file has {n} bytes")
        raise DataError(f"{p}: FCS DATA segment (bytes {s}-{e}, {e - s + 1} bytes) is too short for $TOT={tot} "
                        f"events of {bpe} bytes ({need} bytes)")
    raw = np.frombuffer(buf, dtype=np.uint8, count=need, offset=start).reshape(tot, bpe)
    if kind == "A":
        fields = np.frombuffer(raw.tobytes(), dtype=np.dtype([(f"c{i}", f"S{w}") for i, w in enumerate(widths)]))
        try:
            cols = [fields[f"c{i}"].astype(np.float64) for i in range(par)]
        except ValueError as e:
            raise DataError(f"{p}: cannot decode ASCII FCS DATA: {_one_line(e)}") from None
        return np.stack(cols, axis=1).astype(np.float32) if par else np.zeros((tot, 0), np.float32)
    order = _byte_order(text, p)
    out = np.empty((tot, par), dtype=np.float32)
    at = 0
    for i, w in enumerate(widths):
        col = raw[:, at:at + w]
        at += w
        if kind in ("F", "D"):
            out[:, i] = np.ascontiguousarray(col).view(f"{order}f{w}")[:, 0]
            continue
        v = np.zeros(tot, dtype=np.uint64)
        for k in range(w):  # byte k is the k-th most (big-endian) or least (little-endian) significant
            shift = 8 * (w - 1 - k) if order == ">" else 8 * k
            v |= col[:, k].astype(np.uint64) << np.uint64(shift)
        limit = 1 << bits[i]
        r = _pnr(text, i + 1)
        if r is not None and r > 0:
            limit = min(limit, _next_pow2(r))
        if limit < (1 << (8 * w)):
            v &= np.uint64(limit - 1)
        out[:, i] = v
    return out


def _data_location_error(buf: bytes, text: dict, version: str, hdr: dict, opts: dict, p: Path):
    """A DataError when the DATA segment lies (partly) beyond the end of the file, else ``None``."""
    tot = _int_kw(text, "tot", p)
    n = len(buf)
    cands = _candidate_offsets(text, version, hdr, bool(opts.get("use_header_offsets")))
    s, e = cands[0]
    if tot > 0 and s >= n:
        return DataError(f"{p}: FCS file holds no events (header/text only): $TOT is {tot} but the DATA segment "
                         f"(bytes {s}-{e}) lies beyond the end of the file ({n} bytes)")
    if tot > 0 and e > n:  # e == n: $ENDDATA one past the end, the off-by-one handled above
        return DataError(f"{p}: truncated FCS file: DATA segment ends at byte {e} but the file has {n} bytes")
    return None


def _flowio_events(fd, par: int, tot: int) -> np.ndarray | None:
    """flowio's events as float32 ``[tot, par]``, or ``None`` when it did not decode ``$TOT`` events."""
    if fd.events is None:
        return None
    flat = np.asarray(fd.events)
    if par == 0 or flat.size < tot * par:
        return None
    return flat[:tot * par].astype(np.float32).reshape(tot, par)  # extra values: padding after $TOT events


# ---------------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------------
def is_fcs_path(path) -> bool:
    """Whether ``path`` names an FCS file by its suffix (``.fcs``, or Beckman Coulter's ``.lmd``; any case)."""
    return Path(path).suffix.lower() in FCS_SUFFIXES


def _lmd_second_data_set(data: bytes, p: Path) -> int:
    """Where the FCS 3.x data set of a Beckman Coulter ``.lmd`` file starts (0: read the first data set).

    An LMD file holds an FCS 2.0 data set (10-bit, log-compressed values) whose ``$NEXTDATA`` points to an FCS
    3.x data set of the same events at full resolution; that one is read. A file with one data set, or whose
    ``$NEXTDATA`` does not point to an FCS 3.x HEADER, is read as any FCS file (its first data set).
    """
    try:
        first = _read(data, p, events=False)
        off = int(str(first.text.get("nextdata", "0")).strip() or 0)
    except (DataError, ValueError):
        return 0  # the full read reports what is wrong with the first data set
    if first.version.startswith("2") and _HEADER_LEN <= off < len(data) and data[off:off + 4] == b"FCS3":
        return off
    return 0


def read_fcs_file(path, *, events: bool = True) -> FCSFile:
    """Read an FCS file: channel names, TEXT keywords and (with ``events=True``) the raw events.

    Returns an :class:`FCSFile` whose ``events`` is float32 ``[$TOT, $PAR]`` (first data set of a file with
    several; of a Beckman Coulter ``.lmd`` file, its FCS 3.x data set), or ``None`` with ``events=False`` (the
    DATA segment is then not read at all). Raises :class:`~deepsets.data.DataError` with one line naming the
    file and the reason; see the module docstring.
    """
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot read: {_one_line(e)}") from e
    if p.suffix.lower() == ".lmd":
        _check_header(data, p)
        off = _lmd_second_data_set(data, p)
        if off:
            try:
                return _read(data[off:], p, events)
            except DataError as e:
                raise DataError(f"{e} (in the FCS 3 data set of this .lmd file, at byte {off})") from e
    return _read(data, p, events)


def _read(data: bytes, p: Path, events: bool) -> FCSFile:
    """:func:`read_fcs_file` of the data set whose HEADER starts ``data``."""
    flowio = _flowio()
    buf, hdr = _check_header(data, p)

    fd, opts, fail = None, {}, None
    try:
        fd, opts = _flowdata(flowio, buf, p, only_text=not events)
    except Exception as e:  # noqa: BLE001 - every flowio failure is diagnosed below
        fail = e
    if fd is None:
        # TEXT only, even if the DATA segment is missing, to find out what went wrong (or all that is needed).
        try:
            fd, opts = _flowdata(flowio, buf, p, only_text=True, opts=opts, unbounded=True)
        except Exception as e:  # noqa: BLE001
            raise _text_error(p, e) from (fail or e)
    text = fd.text
    version = str(fd.version).strip()
    par, tot = _int_kw(text, "par", p), _int_kw(text, "tot", p)
    pnn, pns = _names(text, par)
    if not events:
        return FCSFile(p, pnn, pns, None, dict(text), version)

    mode = str(text.get("mode", "L")).strip().upper()
    if mode not in ("L", ""):
        raise DataError(f"{p}: unsupported FCS $MODE {mode!r} (histogram data); only list mode (L) is read")
    if tot == 0:
        return FCSFile(p, pnn, pns, np.zeros((0, par), dtype=np.float32), dict(text), version)
    err = _data_location_error(buf, text, version, hdr, opts, p)
    if err is not None:
        raise err from fail

    arr = None
    if fail is None and str(text.get("byteord", "")).strip() in _FLOWIO_BYTEORDS:
        arr = _flowio_events(fd, par, tot)
        if arr is None and fd.events is not None and opts.get("ignore_offset_discrepancy"):
            # the TEXT offsets do not hold $TOT events: try the HEADER's
            try:
                fd2, opts2 = _flowdata(flowio, buf, p, only_text=False,
                                       opts={**opts, "ignore_offset_discrepancy": False,
                                             "use_header_offsets": True})
                arr = _flowio_events(fd2, par, tot)
                opts = opts2 if arr is not None else opts
            except Exception:  # noqa: BLE001 - fall through to the decoder below
                pass
    if arr is None:
        # flowio could not decode this layout (non-standard bit width, unknown byte order, ...) or did not find
        # $TOT events where it looked (e.g. FCS 2.0 with the offsets only in TEXT); the decoder below says why
        # when the events are not there
        arr = _decode_by_hand(buf, text, version, hdr, opts, p)
    return FCSFile(p, pnn, pns, arr, dict(text), version)


_MASS_CYTOMETERS = ("cytof", "helios", "fluidigm", "standard biotools", "cyTOF xt".lower())
_METAL_CHANNEL = re.compile(r"^\(?[A-Z][a-z]?\d{2,3}\)?D[id]$")  # Ir191Di, (Nd142)Dd: a mass channel


def mass_cytometry(f: FCSFile) -> bool:
    """Whether an FCS file comes from a mass cytometer: its ``$CYT`` keyword names one (CyTOF, Helios), or
    most of its channels are metal isotopes (``Nd142Di``, ``(Ir191)Dd``)."""
    cyt = str(f.text.get("cyt", "")).lower()
    if any(name in cyt for name in _MASS_CYTOMETERS):
        return True
    metals = sum(bool(_METAL_CHANNEL.match(n.strip())) for n in f.pnn)
    return metals >= max(2, len(f.pnn) // 2)


def fcs_channels(path) -> tuple[list[str], list[str]]:
    """``($PnN names, $PnS names)`` of an FCS file, from its TEXT segment only (the events are not decoded)."""
    f = read_fcs_file(path, events=False)
    return f.pnn, f.pns
