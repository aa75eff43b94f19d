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
    out = tmp_path_factory.mktemp("site")
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
