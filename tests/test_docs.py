"The docs site: built offline from nbdev's processed notebooks, every page rendered in headless Chromium."
import os, re, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1280,1400", "--virtual-time-budget=4000"]

if CHROMIUM is None:
    if os.environ.get("CI"): raise RuntimeError("CI needs Chromium for the docs test: apt-get install chromium")
    pytest.skip("Chromium is not installed (apt-get install chromium): the docs screenshots are not checked", allow_module_level=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site, built once per pytest run: xdist workers share it through a lock (two builds at once would share `_proc/`)."
    import fcntl
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"): base = base.parent  # this session's, shared by its workers
    out = base / "site"
    with open(base / "site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits for the one build, then reads it
        if not (out / "index.html").exists():
            subprocess.run([sys.executable, "tools/build_docs.py", "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    return out


def notebooks():
    return sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))


def chromium(*args, profile):
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", notebooks())
def test_page_renders_and_lists_every_notebook(site, name, tmp_path):
    page = site / f"{name}.html"
    assert page.exists(), f"no page for nbs/{name}.ipynb"
    shot = tmp_path / f"{name}.png"
    chromium(f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "p1")
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (1400, 1280)
    commonest = np.bincount(img.astype(np.uint8).ravel()).argmax()
    assert img.std() > 10 and (np.abs(img - commonest) > 30).mean() > 0.02, f"{name}: the screenshot is blank"
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "p2").stdout
    nav = dom[dom.index('md-nav--primary'):] if 'md-nav--primary' in dom else ""
    linked = set(re.findall(r'href="(?:\./)?([\w-]+)\.html"', nav))
    assert set(notebooks()) <= linked, f"{name}: the navigation misses {set(notebooks()) - linked}"
    assert "MathJax" in dom or name in ("98_train", "99_cli")


def test_pages_show_the_notebooks_figures(site):
    html = (site / "00_toyworld.html").read_text()
    assert len(re.findall(r"<img[^>]+src=\"data:image/png", html)) >= 2, "00_toyworld's figures (shapes, gallery) are missing: run the notebook and save it"
    assert "mathjax/MathJax.js" in html and (site / "mathjax" / "MathJax.js").exists()


def test_site_shows_the_main_jobs_report(site):
    if not (ROOT / "reports" / "toy" / "REPORT.md").exists(): pytest.skip("no committed report (reports/toy/) to show")
    html = (site / "report.html").read_text()
    assert "Table 1" in html and "Table 2" in html and 'src="figure3.png"' in html and (site / "figure3.png").exists()


def test_the_report_pages_math_is_typeset(site, tmp_path):
    "The Report page's $D_3$, $f_0$ … go through MathJax (arithmatex hands them over whole), not out as raw dollars."
    if not (ROOT / "reports" / "toy" / "REPORT.md").exists(): pytest.skip("no committed report (reports/toy/) to show")
    html = (site / "report.html").read_text()
    assert 'type="math/tex"' in html and "mathjax/MathJax.js" in html
    dom = chromium("--dump-dom", (site / "report.html").as_uri(), profile=tmp_path / "p").stdout
    text = re.sub(r"<script.*?</script>", "", dom, flags=re.S)
    assert not re.search(r"\$[A-Za-z\\]", re.sub(r"<[^>]+>", "", text)), "raw $…$ math on the Report page"


def test_headings_keep_their_code_words_in_the_table_of_contents(site):
    html = (site / "03_pyramid.html").read_text()
    assert "()</a>" not in html and "( )" not in html  # a code span left out of a heading's entry


def _figure_cells(nb_path):
    import json
    nb = json.loads(nb_path.read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code" and re.search(r"plt\.|imshow|\.plot\(|figure3\(|show_", "".join(c["source"]))
            and not "".join(c["source"]).lstrip().startswith("#| export")]


@pytest.mark.parametrize("name", ["00_toyworld", "03_pyramid"])
def test_every_figure_cell_has_its_picture(name):
    "The docs show a notebook's saved outputs: a figure cell committed without its output is a blank on the site."
    cells = _figure_cells(ROOT / "nbs" / f"{name}.ipynb")
    assert cells
    blank = ["".join(c["source"])[:80] for c in cells
             if not any("image/png" in o.get("data", {}) or "text/markdown" in o.get("data", {}) for o in c.get("outputs", []))]
    assert not blank, f"{name}: figure cells without output (run the notebook and save it): {blank}"


def test_links_to_the_records_lead_to_pages_of_the_site(site):
    "A notebook's link to reports/ablations/<name>/ becomes the record's own page on the site, which exists."
    for page in site.glob("*.html"):
        html = page.read_text()
        assert 'href="../reports/' not in html, f"{page.name}: a link out of the site"
        for name in re.findall(r'href="ablations/([\w-]+)/index\.html"', html):
            assert (site / "ablations" / name / "index.html").exists(), f"{page.name}: no page for the record {name}"
