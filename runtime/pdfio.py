"""Reading and writing PDF files, and resampling a measured G(r) onto the model's r grid.

Read: PDFgetX3 / xPDFsuite ``.gr`` (config header, ``#### start data``, ``#L r G``),
plain two-or-more column text (``.gr .dat .txt .csv``; ``#``, ``%`` or ``!`` comments,
whitespace, comma or semicolon separated, a decimal point or comma, any header lines before the
first row of numbers) and the DeepStruc files.
Every problem is a ``PDFInputError`` whose message is one line naming the file.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbldm.runtime.fileutil import atomic_write_text

MIN_POINTS = 100
MIN_RMAX = 5.0
_NUMBER_ROW = re.compile(r"^[\s,;]*[-+0-9.]")
# words of a program's failure: text after the data that says the table may be cut short
_FAILED = ("error", "exception", "traceback", "fail", "abort", "killed", "segmentation")
_SPLIT = re.compile(r"[\s,;]+")


class PDFInputError(ValueError):
    """A PDF file that cannot be used; ``str()`` is one line: '<file>: <problem>'."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class PDFData:
    r: np.ndarray
    g: np.ndarray
    path: str = ""
    format: str = "columns"
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sha256: str = ""      # of the bytes read: which version of the file an answer is for

    @property
    def composition(self):
        """The header's ``composition`` read as a formula (``formfactors.Composition``), or None."""
        from cbldm.runtime.formfactors import parse_composition

        return parse_composition(self.meta.get("composition"))

    @property
    def element(self) -> str | None:
        """The most abundant metal of the header's composition, if it names one."""
        comp = self.composition
        return comp.metals[0] if comp is not None and comp.metals else None


def looks_like_nm(r: np.ndarray, g: np.ndarray) -> str | None:
    """Why r looks like it is in nm, or None. A metal's first shell is at 2.3-3.3 A: in nm it
    is a peak near 0.25 standing out of the rest. On an r range that ends before 12 that is
    enough. Beyond it (a large particle, 120 A and more in nm: its strongest peak may lie further
    out) the peak at 0.2-0.45 must be a third of the strongest and as narrow as a first shell in
    nm (half-height width under 0.05): an A file has nothing below 1 A but ripples, and the
    narrowest, a termination ripple at Qmax 60, is ~0.06 A wide."""
    top = int(np.argmax(g))
    if r[-1] < 12:
        if 0 < r[top] < 1.0 and g[top] > 3 * np.median(np.abs(g)):
            return (f"its strongest peak is at r = {r[top]:.3g} and r ends at {r[-1]:.3g}: "
                    "r looks like nm; convert r to A (x 10)")
        return None
    window = np.flatnonzero((r >= 0.2) & (r <= 0.45))
    if len(window) == 0:
        return None
    k = int(window[np.argmax(g[window])])
    if g[k] <= max(g[top] / 3, 3 * np.median(np.abs(g))):
        return None
    half = g[k] / 2
    lo, hi = k, k
    while lo > 0 and g[lo] > half:
        lo -= 1
    while hi < len(g) - 1 and g[hi] > half:
        hi += 1
    # a peak, not one stray point: three points above half its height
    if lo == 0 or hi - lo - 1 < 3 or r[hi] - r[lo] >= 0.05:
        return None
    return (f"a narrow peak at r = {r[k]:.3g}, closer than any two atoms can be if r is in A, and r ends at "
            f"{r[-1]:.3g}: r looks like nm; convert r to A (x 10)")


_START_DATA = re.compile(r"^(#{4,})\s*start data", re.IGNORECASE)
_COMMENT = ("#", "%", "!")
_RECIPROCAL = {"fq": "F(Q)", "sq": "S(Q)", "iq": "I(Q)"}
_CALCULATED = ("ycalc", "gcalc", "gfit", "gdiff")


def _labels(line: str) -> list[str]:
    """A label row's column names, lower case, units dropped: '#L r($\\AA$) G($\\AA^{-2}$)' ->
    ['r', 'g'], '# x ycalc y dy' -> ['x', 'ycalc', 'y', 'dy'], 'r,G' -> ['r', 'g']."""
    s = line.strip()
    if s[:2] == "L ":    # SPEC's #L, its '#' stripped
        s = s[2:]
    return [re.sub(r"\(.*$", "", t).strip().lower() for t in re.split(r"[\s,;]+(?![^(]*\))", s) if t.strip()]


def _g_column(p: Path, row: str, columns: int, spec: bool = False) -> int:
    """The column holding the measured G(r), from the label row (the line just before the data):
    the second unless it names as many columns as the data have, the second a calculated curve and
    another the data (diffpy.srfit's 'x ycalc y dy' puts the model second, the data third). A table whose
    first column is Q (its SPEC '#L' line, or a label row of as many names) holds no G(r)."""
    names = _labels(row)
    # a label row names its columns and says nothing else ('# Q range 0.7-25' is a remark)
    if not 2 <= len(names) <= 8 or "=" in row or not all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names):
        return 1
    if names[0] in ("q", "qa", "q_a") and (spec or len(names) == columns):
        raise PDFInputError(p, f"its columns are {', '.join(names[:3])}: a Q-space pattern (F(Q), S(Q) "
                               "or I(Q)), not G(r) (give the .gr file)")
    if names[0] in ("r", "x") and len(names) == columns and names[1] in _CALCULATED:
        data = [k for k, n in enumerate(names) if k > 0 and n in ("y", "g", "gobs", "yobs", "gr")]
        return data[0] if data else 1
    return 1


def _refuse_reciprocal_space(p: Path, meta: dict) -> None:
    """A PDFgetX3/xPDFsuite file made with ``outputtype = fq`` (or sq, iq) holds a Q-space pattern:
    read as G(r), its Q column would pass for r and the pattern for a PDF."""
    kind = str(meta.get("outputtype", "")).strip().lower()
    if kind in _RECIPROCAL:
        raise PDFInputError(p, f"holds {_RECIPROCAL[kind]} (outputtype = {kind}), not G(r) (give the .gr file)")
    if p.suffix.lower() in (".fq", ".sq", ".iq", ".chi") and kind != "gr":
        raise PDFInputError(p, f"is a {p.suffix} file, a Q-space pattern, not G(r) (give the .gr file)")


def _is_data_row(parts: list[str]) -> bool:
    """r and G(r) both numbers: the first row of the data (a header line may start with a digit)."""
    if len(parts) < 2:
        return len(parts) == 1 and _float(parts[0])   # one column: data, refused as such below
    return _float(parts[0]) and _float(parts[1])


def _fields(s: str, comma: bool) -> list[str]:
    """A stripped line's fields, its decimal commas read as points where the table has them."""
    return [t for t in _SPLIT.split(s.replace(",", ".") if comma else s) if t]


def _float(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True


_COMMA_NUMBER = re.compile(r"[-+]?\d*,?\d+(?:[eE][-+]?\d+)?")


def _decimal_comma(lines: list[str]) -> bool:
    """A table written with a decimal comma (European spreadsheets, instrument PCs): its rows of
    numbers split on tabs, spaces or ';' into numbers such as '0,014', and no row is numbers with a
    decimal point. A comma-separated table ('0.01,0.0014' or '1,2') does not split so."""
    seen = False
    for line in lines:
        s = line.strip()
        if not s or s[:1] in _COMMENT:
            continue
        tokens = [t for t in re.split(r"[\s;]+", s) if t]
        if len(tokens) < 2:
            continue
        if all(_COMMA_NUMBER.fullmatch(t) for t in tokens):
            seen = seen or "," in s
        elif all(_float(t) for t in tokens):
            return False          # '0.01 0.0014': a decimal point
    return seen


_ALIASES = {"qsig": "qdamp"}     # PDFgui's and PDFgetX2's older name
# 'Qmax: 25' (free-text headers); only for what the fit reads, a colon being common in remarks
_COLON_KEY = re.compile(r"(composition|qmin|qmax|qdamp|qsig)\s*:\s*(\S.*)", re.IGNORECASE)


def _names_a_metal(text: str) -> bool:
    from cbldm.runtime.formfactors import parse_composition

    comp = parse_composition(text)
    return comp is not None and not comp.unread and bool(comp.metals)


def _parse_header(lines: list[str]) -> dict:
    meta: dict[str, str] = {}
    aliased: dict[str, str] = {}    # read under an older name: taken only where the name itself is not
    for line in lines:
        s = line.strip().lstrip("#%!").strip()
        colon = _COLON_KEY.fullmatch(s)
        if colon:
            key, value = colon.group(1).lower(), colon.group(2)
            if key == "composition" and not _names_a_metal(value):
                continue   # 'Composition: unknown', 'composition: as above': a remark, not a formula
        elif "=" in s and not s.startswith("["):
            key, _, value = s.partition("=")
            key = key.strip().lower()
        else:
            continue
        if key and re.fullmatch(r"[a-z_][a-z0-9_.]*", key):
            (aliased if key in _ALIASES else meta).setdefault(_ALIASES.get(key, key), value.strip())
    return aliased | meta


def read_pdf(path: str | os.PathLike) -> PDFData:
    """Read r and G(r) from a PDF file; raises PDFInputError with a one-line reason."""
    p = Path(path)
    if p.is_dir():
        raise PDFInputError(p, "is a directory, not a PDF file")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise PDFInputError(p, "no such file") from None
    except OSError as exc:
        raise PDFInputError(p, f"cannot be read ({exc.strerror or exc})") from None
    if not raw.strip():
        raise PDFInputError(p, "is empty")
    digest = hashlib.sha256(raw).hexdigest()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):   # UTF-16 with its byte-order mark (Windows PowerShell '>')
        try:
            raw = raw.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            raise PDFInputError(p, "is not readable UTF-16 text") from None
    if b"\x00" in raw[:65536]:
        raise PDFInputError(p, "is binary, not a text PDF file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        if sum(not (c.isprintable() or c.isspace()) for c in text[:65536]) > 0.01 * min(len(text), 65536):
            raise PDFInputError(p, "is binary, not a text PDF file") from None

    lines = text.lstrip("\ufeff").splitlines()      # a byte-order mark (Excel's "CSV UTF-8") is no text
    fmt = "columns"
    start = 0
    for i, line in enumerate(lines):
        marker = _START_DATA.match(line.strip())
        if marker:   # PDFgetX3 and xPDFsuite write '#### start data', PDFgetX2 and PDFgetN '#####'
            fmt = "pdfgetx3" if len(marker.group(1)) == 4 else "pdfgetx2"
            start = i + 1
            break
    comma = _decimal_comma(lines[start:])
    rows: list[list[str]] = []
    linenos: list[int] = []
    label = ""        # the line just before the first data row: where a table names its columns
    preamble: list[str] = []   # free text before the data (Gudrun, spreadsheets, instrument logs)
    footer = ""
    for lineno, line in enumerate(lines[start:], start=start + 1):
        s = line.strip()
        if not s:
            continue
        if s[:1] in _COMMENT:
            if not rows:
                label = s.lstrip("#%! \t") if not s.startswith("#S ") else label
            continue
        if comma:
            s = s.replace(",", ".")
        parts = _fields(s, False)
        if len(rows) <= 2 and not _is_data_row(parts):
            # a header without comment marks ('r,G', a title, 'Qmax: 25', '2026-11-29 run 3'):
            # everything before the first row of numbers, and a line or two of numbers the
            # header goes on after ('2026 11 29'): no table of G(r) has text in its third row
            preamble += [lines[n - 1].strip() for n in linenos] + [s]
            rows, linenos = [], []
            label = s
            continue
        if not _is_data_row(parts):
            rest = [t.strip() for t in lines[lineno:]]
            if not _NUMBER_ROW.match(s) and not any(_is_data_row(_fields(t, comma))
                                                    for t in rest if t and t[:1] not in _COMMENT):
                # a footer (a run log, 'END', a program's summary): the table has ended; unless it
                # is an error message, which says the table may have been cut short
                text = " ".join([s] + rest).lower()
                if any(w in text for w in _FAILED):
                    raise PDFInputError(p, f"line {lineno}, after the data, reads like an error message "
                                           f"({s[:40]!r}): the data may be cut short")
                footer = f"{1 + sum(bool(t) for t in rest)} line(s) of text after the data (line {lineno} on) not read"
                break
            # text between rows of numbers (two tables, or a broken one; which to read is not
            # for us to guess), or a row that starts like numbers and is not
            raise PDFInputError(p, f"line {lineno} is not numeric: {s[:40]!r}")
        if len(parts) < 2:
            raise PDFInputError(p, f"line {lineno} has one column; need r and G(r)")
        rows.append(parts)
        linenos.append(lineno)
    header = lines[:start] if start else [l for l in lines if l.lstrip()[:1] in _COMMENT]
    meta = _parse_header(header + preamble)
    _refuse_reciprocal_space(p, meta)
    columns = max((len(x) for x in rows), default=0)
    # the column G(r) is read from: the second, unless the label row names the columns otherwise
    col = _g_column(p, label, len(rows[0]) if rows else 0, spec=label.startswith("L "))
    values = []
    for lineno, parts in zip(linenos, rows):
        if len(parts) <= col:
            raise PDFInputError(p, f"line {lineno} has {len(parts)} columns; G(r) is column {col + 1} by its labels")
        try:
            values.append([float(parts[0]), float(parts[col])])
        except ValueError:
            raise PDFInputError(p, f"line {lineno} is not numeric: {' '.join(parts)[:40]!r}") from None
    rows = values
    if not rows:
        raise PDFInputError(p, "has no numeric data rows")
    arr = np.asarray(rows, dtype=float)
    r, g = arr[:, 0], arr[:, 1]
    if not np.all(np.isfinite(arr)):
        bad = int(np.argmin(np.isfinite(arr).all(axis=1)))
        raise PDFInputError(p, f"contains NaN or inf (data row {bad + 1})")
    if len(r) < MIN_POINTS:
        raise PDFInputError(p, f"has {len(r)} data points; need at least {MIN_POINTS}")
    steps = np.diff(r)
    if np.any(steps <= 0):
        bad = int(np.argmax(steps <= 0))
        raise PDFInputError(p, f"r is not increasing (data row {bad + 2}: r={r[bad + 1]:g} after {r[bad]:g})")
    if r[0] < 0:
        raise PDFInputError(p, f"r starts below zero ({r[0]:g})")
    nm = looks_like_nm(r, g)
    if nm:
        raise PDFInputError(p, nm)
    if r[-1] < MIN_RMAX:
        raise PDFInputError(p, f"r reaches only {r[-1]:g} A; need data to at least {MIN_RMAX:g} A")
    if not np.any(g != 0):
        raise PDFInputError(p, "G(r) is zero everywhere")

    data = PDFData(r=r, g=g, path=str(p), format=fmt, meta=meta, sha256=digest)
    if footer:
        data.notes.append(footer)
    if columns > 2:   # dr, dG of a PDFgetX3 .gr, or anything else: not used, and said so
        data.notes.append(f"{columns} columns: r and G(r) read from the first two, the others not used" if col == 1
                          else f"{columns} columns: r read from the first, G(r) from column {col + 1} (by the "
                               "columns' labels), the others not used")
    # DeepStruc wrote r as linspace(0, 30, 3000) although DiffPy computed on 0.01 * k
    if len(r) == 3000 and abs(r[0]) < 1e-12 and abs(r[-1] - 30.0) < 1e-9 \
            and abs(steps[0] - 30.0 / 2999) < 1e-9:
        data.r = np.arange(3000) * 0.01
        data.format = "deepstruc"
        data.notes.append("r column linspace(0, 30, 3000) read as r = 0.01 * k (DeepStruc convention)")
    return data


def resample(data: PDFData, r_model: np.ndarray) -> tuple[np.ndarray, dict]:
    """G on ``r_model`` by linear interpolation; zero where the measurement has no data."""
    r, g = data.r, data.g
    inside = (r_model >= r[0] - 1e-9) & (r_model <= r[-1] + 1e-9)
    out = np.zeros_like(r_model, dtype=float)
    out[inside] = np.interp(r_model[inside], r, g)
    step = float(np.median(np.diff(r)))
    same_grid = len(r) == len(r_model) and np.allclose(r, r_model, atol=1e-9)
    record = {
        "source_points": int(len(r)),
        "source_rmin": float(r[0]),
        "source_rmax": float(r[-1]),
        "source_rstep": step,
        "interpolated": not same_grid,
        "zeroed_below_A": float(r[0]) if r[0] > r_model[0] + 1e-9 else None,
        "zeroed_above_A": float(r[-1]) if r[-1] < r_model[-1] - 1e-9 else None,
        "points_zeroed": int((~inside).sum()),
        "dropped_beyond_A": float(r_model[-1]) if r[-1] > r_model[-1] + 1e-9 else None,
        "notes": list(data.notes),
    }
    return out, record


def write_gr(path: str | os.PathLike, r: np.ndarray, g: np.ndarray, header: dict | None = None,
             title: str = "cbldm") -> Path:
    """Write a PDFgetX3-style ``.gr`` (readable by PDFgui, DiffPy and ``read_pdf``), atomically."""
    path = Path(path)
    lines = [f"[{title}]"]
    for key, value in (header or {}).items():
        if isinstance(value, float):
            value = f"{value:.10g}"
        lines.append(f"{key} = {value}")
    lines += ["", "#### start data", "#S 1", "#L r($\\AA$)  G($\\AA^{-2}$)"]
    body = "\n".join(f"{ri:.6f} {gi:.10e}" for ri, gi in zip(np.asarray(r), np.asarray(g)))
    atomic_write_text(path, "\n".join(lines) + "\n" + body + "\n")
    return path

