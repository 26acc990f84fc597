"""Reading measured and simulated PDFs, and what users see for bad files."""
import subprocess
import sys

import numpy as np
import pytest

from cbldm.runtime.pdf import rgrid
from cbldm.runtime.pdfio import PDFInputError, read_pdf, resample, write_gr


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cbldm.training.cli_data", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_reads_pdfgetx3_and_xpdfsuite(reference):
    au = read_pdf(reference / "experimental" / "Au144pMBA.gr")
    assert au.format == "pdfgetx3" and au.element == "Au"
    assert au.meta["qmax"] == "28.0" and len(au.r) == 2001 and au.r[-1] == 20.0
    pt = read_pdf(reference / "experimental" / "JQ_S1.gr")
    assert pt.element == "Pt" and pt.r[-1] == 50.0


def test_resample_zeroes_where_no_data_and_records_it(reference):
    au = read_pdf(reference / "experimental" / "Au144pMBA.gr")
    g, rec = resample(au, rgrid())
    r = rgrid()
    assert np.all(g[r > 20.0 + 1e-9] == 0)
    assert rec["zeroed_above_A"] == 20.0 and rec["points_zeroed"] == int(np.sum(r > 20.0 + 1e-9))
    # on-grid points are copied exactly
    i = np.searchsorted(au.r, 10.0)
    assert g[1000] == pytest.approx(au.g[i])
    pt = read_pdf(reference / "experimental" / "JQ_S1.gr")
    _, rec = resample(pt, r)
    assert rec["dropped_beyond_A"] == pytest.approx(29.99) and rec["points_zeroed"] == 0


def test_plain_columns_csv_and_roundtrip(tmp_path):
    r = np.arange(0, 20, 0.02)
    g = np.sin(r) * np.exp(-r / 10)
    (tmp_path / "a.csv").write_text("r,G\n" + "\n".join(f"{a},{b}" for a, b in zip(r, g)))
    d = read_pdf(tmp_path / "a.csv")
    np.testing.assert_allclose(d.g, g)
    (tmp_path / "b.dat").write_text("# comment\n" + "\n".join(f"{a} {b} 0.1 0.01" for a, b in zip(r, g)))
    four = read_pdf(tmp_path / "b.dat")
    np.testing.assert_allclose(four.r, r)
    assert four.notes == ["4 columns: r and G(r) read from the first two, the others not used"]
    assert read_pdf(tmp_path / "a.csv").notes == []
    out = write_gr(tmp_path / "c.gr", r, g, {"composition": "Pt", "qmax": 25.0})
    back = read_pdf(out)
    assert back.element == "Pt" and back.format == "pdfgetx3"
    np.testing.assert_allclose(back.g, g, rtol=1e-9)


BAD = {
    "empty.gr": (b"", "is empty"),
    "comments.gr": (b"# only\n# comments\n", "no numeric data rows"),
    "nan.gr": ("\n".join(f"{0.1*i} {'nan' if i == 50 else 1.0}" for i in range(300)).encode(), "NaN or inf"),
    "inf.gr": ("\n".join(f"{0.1*i} {'inf' if i == 5 else 1.0}" for i in range(300)).encode(), "NaN or inf"),
    "decreasing.gr": ("\n".join(f"{0.1*(i if i != 100 else 1)} 1.0" for i in range(300)).encode(), "not increasing"),
    "short.gr": ("\n".join(f"{0.1*i} 1.0" for i in range(50)).encode(), "need at least 100"),
    "lowr.gr": ("\n".join(f"{0.01*i} 1.0" for i in range(300)).encode(), "reaches only"),
    "zeros.gr": ("\n".join(f"{0.1*i} 0.0" for i in range(300)).encode(), "zero everywhere"),
    "binary.gr": (bytes(range(256)) * 40, "binary"),
    "onecol.gr": ("\n".join(f"{0.1*i}" for i in range(300)).encode(), "one column"),
    "text.gr": (("\n".join(f"{0.1*i} 1.0" for i in range(300)) + "\nhello world\n").encode(), "not numeric"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_raise_one_line_errors(tmp_path, name):
    content, problem = BAD[name]
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(PDFInputError) as err:
        read_pdf(p)
    msg = str(err.value)
    assert msg.startswith(str(p)) and problem in msg and "\n" not in msg


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(PDFInputError, match="is a directory"):
        read_pdf(tmp_path)
    with pytest.raises(PDFInputError, match="no such file"):
        read_pdf(tmp_path / "nope.gr")


def test_cli_reports_each_bad_file_in_one_line_and_keeps_going(tmp_path, reference):
    for name, (content, _) in BAD.items():
        (tmp_path / name).write_bytes(content)
    files = sorted(tmp_path.glob("*.gr")) + [reference / "experimental" / "Au144pMBA.gr", tmp_path]
    res = _cli("resample", *files, "-o", tmp_path / "out")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == len(BAD) + 1  # + the directory
    assert all(l.startswith("error: ") for l in lines) and "Traceback" not in res.stderr
    assert (tmp_path / "out" / "Au144pMBA.model.gr").exists()
    back = read_pdf(tmp_path / "out" / "Au144pMBA.model.gr")
    assert len(back.r) == 3000 and back.meta["zeroed_above_a"] == "20"


def _with_header(tmp_path, name, header: dict):
    r = np.arange(0, 20, 0.01)
    return write_gr(tmp_path / name, r, np.sin(3 * r) * np.exp(-r / 8), header)


@pytest.mark.parametrize("composition,element,alloy,non_metals,notes", [
    ("Pt", "Pt", (), (), []),
    ("pt", "Pt", (), (), []),
    ("AU", "Au", (), (), []),                        # not A + U (uranium)
    ("Au144(SC6H4COOH)60", "Au", (), (), ["(SC6H4COOH)60 in parentheses (ligands) not modelled"]),
    ("Au25(SR)18", "Au", (), (), ["(SR)18 in parentheses"]),
    ("(PPh3)Au", "Au", (), (), ["(PPh3) in parentheses"]),
    ("Pt0.5Au0.5", "Pt", ("Au",), (), []),
    ("NiPt3", "Pt", ("Ni",), (), []),                # the most abundant metal
    ("Au/CeO2", "Au", (), (), ["'/CeO2' after the formula"]),   # a support, not an alloy
    ("Pt NPs", "Pt", (), (), ["'NPs' after the formula"]),
    ("CeO2", "Ce", (), ("O",), []),
    ("Au144S60C420H300O120", "Au", (), ("S", "C", "H", "O"), []),
])
def test_the_particle_is_the_most_abundant_metal_of_the_formula(tmp_path, composition, element, alloy,
                                                                 non_metals, notes):
    from cbldm.runtime.results import read_input

    data, pdf = read_input(_with_header(tmp_path, "a.gr", {"composition": composition, "qmax": 25.0}))
    assert (pdf.element, pdf.alloy, pdf.non_metals) == (element, alloy, non_metals)
    assert data.meta["_element_from"] == "file header"
    assert len(data.notes) == len(notes) and all(n in m for n, m in zip(notes, data.notes)), data.notes


def test_element_given_replaces_a_composition_that_does_not_name_it(tmp_path):
    from cbldm.runtime.results import read_input

    data, pdf = read_input(_with_header(tmp_path, "a.gr", {"composition": "Pt", "qmax": 25.0}), element="Au")
    assert (pdf.element, pdf.alloy) == ("Au", ()) and data.notes == [
        "--element Au given: the header's composition 'Pt' is not used"]
    _, pdf = read_input(_with_header(tmp_path, "b.gr", {"composition": "Pt0.5Au0.5", "qmax": 25.0}), element="au")
    assert (pdf.element, pdf.alloy) == ("Au", ("Pt",))
    _, pdf = read_input(_with_header(tmp_path, "c.gr", {"qmax": 25.0}), element="Ni")
    assert (pdf.element, pdf.alloy) == ("Ni", ())


@pytest.mark.parametrize("header,problem", [
    ({"composition": "H2O", "qmax": 25.0}, "the file's composition 'H2O' names no metal"),
    ({"composition": "C/Pt", "qmax": 25.0}, "the file's composition 'C/Pt' names no metal"),
    ({"composition": "Xx", "qmax": 25.0}, "the file's composition 'Xx' is not a chemical formula cbldm reads"),
    ({"composition": "PT3", "qmax": 25.0}, "is not a chemical formula cbldm reads (at 'T3'"),
    ({"composition": "Pt", "qmin": 1.0, "qmax": 0.5}, "qmax 0.5 1/A (file header) is too low for a PDF"),
    ({"composition": "Pt", "qmin": 6.0, "qmax": 5.5}, "qmin 6 (file header) is not below qmax 5.5 (file header)"),
    ({"composition": "Pt", "qmin": 0.0, "qmax": 2.2}, "qmax 2.2 1/A (file header) is too low for a PDF"),
])
def test_a_header_no_metal_particle_or_pdf_has_is_refused_in_one_line(tmp_path, header, problem):
    from cbldm.runtime.results import read_input

    p = _with_header(tmp_path, "a.gr", header)
    with pytest.raises(PDFInputError) as err:
        read_input(p)
    assert str(err.value).startswith(str(p)) and problem in str(err.value) and "\n" not in str(err.value)


def test_a_header_value_that_is_no_number_is_said_so(tmp_path):
    from cbldm.runtime.results import read_input

    _, pdf = read_input(_with_header(tmp_path, "a.gr", {"composition": "Pt", "qmax": "n/a"}))
    assert pdf.physics.qmax == 25.0 and "the header's qmax 'n/a' is not usable" in pdf.physics.source["qmax"]


def test_an_unreadable_file_is_refused_alone(tmp_path, monkeypatch):
    """Permission denied is one file's problem, said in one line (the CLI: tests/test_cli.py)."""
    import pathlib

    p = tmp_path / "locked.gr"
    p.write_text("0 1\n")
    orig = pathlib.Path.read_bytes
    # root reads any file whatever its mode: the read itself fails here
    monkeypatch.setattr(pathlib.Path, "read_bytes",
                        lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if self == p else orig(self))
    with pytest.raises(PDFInputError) as err:
        read_pdf(p)
    assert str(err.value) == f"{p}: cannot be read (Permission denied)"
