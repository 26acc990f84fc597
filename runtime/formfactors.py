"""Waasmaier-Kirfel X-ray form factors (neutral atoms), as DiffPy's SFTXray uses them.

The table in ``data/waasmaier_kirfel.json`` holds the published coefficients
(Acta Cryst. A51 (1995) 416) for H..Cf; f0(s) = c + sum_i a_i exp(-b_i s^2), s = Q / 4 pi.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np


@lru_cache(maxsize=1)
def _table() -> dict:
    text = resources.files("cbldm.runtime").joinpath("data/waasmaier_kirfel.json").read_text()
    return json.loads(text)["elements"]


def known_elements() -> list[str]:
    return list(_table())


def check_element(symbol: str) -> str:
    """Return the canonical symbol or raise ValueError naming the unknown element."""
    sym = symbol.strip().capitalize() if symbol else ""
    if sym not in _table():
        raise ValueError(f"unknown element {symbol!r}")
    return sym


# non-metals and metalloids: no metal-particle lattice (fcc, hcp, bcc, sc, multiply twinned)
# describes them; in a file's composition they are ligands, solvent or a support
NON_METALS = frozenset("H He B C N O F Ne Si P S Cl Ar Ge As Se Br Kr Sb Te I Xe At Rn".split())


def is_metal(symbol: str) -> bool:
    return symbol in _table() and symbol not in NON_METALS


def check_metal(symbol: str) -> str:
    """``check_element``, and a ValueError for a non-metal: cbldm answers metal particles."""
    sym = check_element(symbol)
    if not is_metal(sym):
        raise ValueError(f"{sym} is not a metal: cbldm answers metal nanoparticles")
    return sym


@dataclass(frozen=True)
class Composition:
    """A reduction program's ``composition`` read as a chemical formula: ``formula``, the
    symbols of its top level with their amounts, in order; ``groups``, the groups in
    parentheses, as written (ligands: ``(SC6H4COOH)60``); ``rest``, what follows the formula (a
    support, a solvent, words: ``Au/CeO2``, ``Pt NPs``); ``unread``, the token that is not
    a formula, if any."""

    text: str
    formula: dict
    groups: tuple = ()
    rest: str = ""
    unread: str | None = None

    @property
    def metals(self) -> list[str]:
        """The top level's metals, the most abundant first (ties in the formula's order)."""
        metals = [s for s in self.formula if is_metal(s)]
        return sorted(metals, key=lambda s: -self.formula[s])

    @property
    def non_metals(self) -> list[str]:
        return [s for s in self.formula if not is_metal(s)]


_FORMULA = re.compile(r"\s*((?:[A-Za-z0-9.]|\([^()]*\)|\[[^\[\]]*\])+)(.*)", re.S)
_AMOUNT = r"(?:\d+(?:\.\d*)?|\.\d+)?"
_TOKEN = re.compile(rf"([A-Z][a-z]?)({_AMOUNT})|[(\[]([^()\[\]]*)[)\]]{_AMOUNT}")


_PIECE = re.compile(r"((?:[A-Z][a-z]?[0-9.]*)+)|[0-9]*\.?[0-9]+")


def _spaced_metals(text: str) -> str:
    """A formula of metals written with spaces, as PDFgetX3 users do (``Ni Pt3``, ``Pt 0.5 Ni 0.5``),
    joined (``NiPt3``): read up to the first space, it would be Ni alone and Pt3 'words'. Only where
    every word is a number after a word, or a run of metals' symbols: ``Pt NPs``, ``Au on C``, ``Pt
    Al2O3`` (a support) and ``Au NCs`` (nanoclusters) stay as written."""
    words = text.split()
    if len(words) < 2:
        return text
    for k, w in enumerate(words):
        m = _PIECE.fullmatch(w)
        if m is None:
            return text
        if m.group(1) is None:   # a number: the amount of the word before it
            if k == 0 or _PIECE.fullmatch(words[k - 1]).group(1) is None:
                return text
            continue
        symbols = re.findall(r"[A-Z][a-z]?", w)
        if not all(is_metal(x) for x in symbols):    # 'Pt Al2O3' is a support, 'Au NCs' nanoclusters
            return text
    return "".join(words)


def parse_composition(text: str | None) -> Composition | None:
    """``text`` as a Composition (None when empty). A formula is read up to the first
    character no formula holds outside parentheses (space, ``/``, ``@``, ``-``...); a group in
    parentheses is a ligand, kept as written (``Au25(SR)18``, ``Au144(p-MBA)60``); one symbol
    in one case (``AU``, ``pt``) is that element, not two."""
    if not str(text or "").strip():
        return None
    text = str(text)
    m = _FORMULA.match(_spaced_metals(text))
    if not m:
        return Composition(text, {}, unread=text.strip()[:8])
    f, rest = m.group(1), m.group(2).strip()
    if f.isalpha() and (f.isupper() or f.islower()) and f.capitalize() in _table():
        return Composition(text, {f.capitalize(): 1.0}, rest=rest)
    formula: dict = {}
    groups: list[str] = []
    pos = 0
    while pos < len(f):
        t = _TOKEN.match(f, pos)
        if t is None or (t.group(1) and t.group(1) not in _table()):
            return Composition(text, formula, tuple(groups), rest, f[pos:pos + 2])
        if t.group(1):
            formula[t.group(1)] = formula.get(t.group(1), 0.0) + float(t.group(2) or 1)
        else:
            groups.append(t.group(0))
        pos = t.end()
    return Composition(text, formula, tuple(groups), rest)


def f0(symbol: str, q: np.ndarray) -> np.ndarray:
    """Elastic X-ray form factor of a neutral atom at momentum transfer q (1/Angstrom)."""
    row = _table()[check_element(symbol)]
    s2 = (np.asarray(q, dtype=float) / (4.0 * np.pi)) ** 2
    a = np.asarray(row["a"])
    b = np.asarray(row["b"])
    return row["c"] + np.sum(a[:, None] * np.exp(-b[:, None] * s2[None, :]), axis=0)
