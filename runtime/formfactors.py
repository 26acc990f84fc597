"""Waasmaier-Kirfel X-ray form factors (neutral atoms), as DiffPy's SFTXray uses them.

The table in ``data/waasmaier_kirfel.json`` holds the published coefficients
(Acta Cryst. A51 (1995) 416) for H..Cf; f0(s) = c + sum_i a_i exp(-b_i s^2), s = Q / 4 pi.
"""
from __future__ import annotations

import json
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


def f0(symbol: str, q: np.ndarray) -> np.ndarray:
    """Elastic X-ray form factor of a neutral atom at momentum transfer q (1/Angstrom)."""
    row = _table()[check_element(symbol)]
    s2 = (np.asarray(q, dtype=float) / (4.0 * np.pi)) ** 2
    a = np.asarray(row["a"])
    b = np.asarray(row["b"])
    return row["c"] + np.sum(a[:, None] * np.exp(-b[:, None] * s2[None, :]), axis=0)
