"""The built book, opened in a real browser.

Builds the book (``jupyter-book build``, which renders the committed notebook outputs without executing them) into
a temporary folder, serves it over HTTP on localhost and opens every page of ``_toc.yml`` in headless Chromium at
1280 and 420 CSS pixels wide. On each page and width:

- no console errors (level SEVERE);
- every ``<img>`` loaded (``naturalWidth > 0``);
- every formula rendered by MathJax: each ``.math`` element holds a ``mjx-container``, no TeX error boxes, and no
  raw ``$...$``, ``\\(``, ``\\[`` left in the text outside code;
- nothing wider than the viewport: no element sticks out past the right edge unless it sits inside a container
  that scrolls or clips it (a wide table in a scrolling cell output is fine).
- every figure at its natural aspect ratio (displayed width/height within 2%);
- no table cell whose text wraps inside a number or a word (``0.24`` / ``5``);
- no heading in a cell's HTML output that outranks the section around it or is set larger than 1.2x the text;
- no content hidden sideways in a scroller without a scroll cue of its own (the edge shadows of ``custom.css``);
- solution cells fold their code and their output; exercises on a chapter's page are numbered within the chapter.

Without Chromium, chromedriver or selenium the browser tests skip and say how to install them (CI installs them in
.ci/run). The build itself is checked too: no Sphinx warnings.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (1280, 420)
HEIGHT = 900
INSTALL = ("install Chromium and its driver (Debian/Ubuntu: `apt-get install -y chromium chromium-driver`) and "
           "selenium (`pip install -r requirements.txt`); CHROME_BIN and CHROMEDRIVER name other paths")


def toc_pages() -> list[str]:
    """The documents of ``_toc.yml``, in reading order, without their extensions."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node: dict) -> None:
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                if "file" in child:
                    pages.append(child["file"])
                walk(child)

    walk(toc)
    return [str(Path(p).with_suffix("")) if Path(p).suffix in {".md", ".ipynb"} else p for p in pages]


# ---------------------------------------------------------------------------------------------------------- build


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> tuple[Path, str]:
    """(the html folder, the build log) of a fresh build in a temporary folder.

    ``NORMXLOGIT_BOOK_BUILD=<folder>`` reuses a build made with ``jupyter-book build . --path-output <folder>``
    (its log read from ``<folder>/build.log`` when there is one), to iterate on the browser checks quickly."""
    if reuse := os.environ.get("NORMXLOGIT_BOOK_BUILD"):
        html = Path(reuse) / "_build" / "html"
        assert (html / "index.html").is_file(), f"NORMXLOGIT_BOOK_BUILD={reuse} holds no built book"
        log = Path(reuse) / "build.log"
        return html, log.read_text() if log.is_file() else ""
    jb = shutil.which("jupyter-book")
    if jb is None:
        pytest.fail("jupyter-book is not installed: pip install -r requirements.txt")
    out = tmp_path_factory.mktemp("book")
    run = subprocess.run([jb, "build", str(ROOT), "--path-output", str(out)], capture_output=True, text=True,
                         timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    html = out / "_build" / "html"
    assert (html / "index.html").is_file(), log[-5000:]
    return html, log


def test_the_book_builds_without_warnings(built_book):
    _, log = built_book
    warnings = [line for line in log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)]
    assert not warnings, "\n".join(warnings)


def test_every_toc_page_is_built(built_book):
    html, _ = built_book
    missing = [p for p in toc_pages() if not (html / f"{p}.html").is_file()]
    assert not missing


def test_the_teachers_downloads_are_built_and_linked(built_book):
    # Student copies and the teaching kit are written at build time from the chapters (book/_ext/book_extras.py).
    import json

    html, _ = built_book
    page = (html / "book" / "teachers.html").read_text()
    links = re.findall(r'href="\.\./(_static/downloads/[^"]+)"', page)
    missing = [link for link in links if not (html / link).is_file()]
    assert links and not missing, missing
    chapters = [Path(p).name for p in toc_pages() if re.match(r"book/\d\d_", p)]
    for name in chapters:
        assert f"_static/downloads/students/{name}.ipynb" in links, f"no student copy of {name} on the teachers' page"
        copy = json.loads((html / "_static/downloads/students" / f"{name}.ipynb").read_text())
        assert copy["metadata"]["normxlogit"]["student_copy"]
        assert not any(c.get("outputs") for c in copy["cells"]), f"{name}: a student copy keeps no outputs"
        assert "BEGIN SOLUTION" not in json.dumps(copy), f"{name}: a solution left in the student copy"
        assert f"_static/downloads/teaching/{name}/slides.md" in links


def test_the_repository_url_is_the_same_everywhere():
    # Publishing means setting repository.url in _config.yml; the citation and the Colab instructions repeat it.
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = config["repository"]["url"].rstrip("/")
    files = [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md"))]
    found = {(f.name, m) for f in files for m in re.findall(r"https://github\.com/[\w.-]+/normxlogit\b", f.read_text())}
    assert found, "no repository URL in the README or the book's pages"
    assert {m for _, m in found} == {url}, sorted(found)


# ---------------------------------------------------------------------------------------------------------- browser


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(built_book):
    html, _ = built_book
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _find(env: str, names: tuple[str, ...], extra: tuple[str, ...] = ()) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    for name in names:
        if path := shutil.which(name):
            return path
    return next((p for p in extra if Path(p).is_file()), None)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(f"selenium is not installed; {INSTALL}")
    chrome = _find("CHROME_BIN", ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
    driver_path = _find("CHROMEDRIVER", ("chromedriver",), ("/usr/lib/chromium/chromedriver",))
    if chrome is None or driver_path is None:
        pytest.skip(f"no headless Chromium for the browser test; {INSTALL}")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", f"--window-size={WIDTHS[0]},{HEIGHT}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


# Waits for the page, its images (lazy ones made eager) and MathJax's first typesetting.
_SETTLE = """
const done = arguments[arguments.length - 1];
const wait = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  for (let i = 0; i < 300 && document.readyState !== 'complete'; i++) await wait(100);
  for (const img of document.images) img.loading = 'eager';
  await Promise.all(Array.from(document.images).map(img => img.complete ? null :
      new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); setTimeout(r, 15000); })));
  if (document.querySelector('.math')) {
    for (let i = 0; i < 300 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++) await wait(100);
    try { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; } catch (e) {}
  }
  await wait(300);  // let late layout (fonts, toggle buttons) settle
  done(true);
})();
"""

# Everything the test asserts, measured in the page.
_INSPECT = r"""
const vw = document.documentElement.clientWidth;
const describe = el => {
  const part = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
      Array.from(e.classList).slice(0, 3).map(c => '.' + c).join('');
  const path = [];
  for (let e = el; e && e !== document.body && path.length < 4; e = e.parentElement) path.unshift(part(e));
  const section = el.closest('section[id]');
  return (section ? `[in section #${section.id}] ` : '') + path.join(' > ');
};
const contained = el => {
  for (let p = el.parentElement; p && p !== document.body && p !== document.documentElement; p = p.parentElement) {
    const o = getComputedStyle(p).overflowX;
    if (o === 'auto' || o === 'scroll' || o === 'hidden' || o === 'clip') return true;
  }
  return false;
};
const wide = [];
const offending = new Set();
for (const el of document.body.querySelectorAll('*')) {
  const r = el.getBoundingClientRect();
  if (r.width === 0 && r.height === 0) continue;
  if (r.right <= vw + 1) continue;
  const cs = getComputedStyle(el);
  if (cs.visibility === 'hidden' || cs.display === 'none') continue;
  if (contained(el)) continue;
  offending.add(el);
  if (el.parentElement && offending.has(el.parentElement)) continue;  // report the outermost only
  wide.push(`${describe(el)}: ${Math.round(r.width)} px wide, right edge at ${Math.round(r.right)} px`);
}
const maths = Array.from(document.querySelectorAll('.math'));
const unrendered = maths.filter(m => !m.querySelector('mjx-container'))
    .map(m => m.textContent.trim().slice(0, 80));
const texErrors = Array.from(document.querySelectorAll('mjx-merror'))
    .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120));
const skip = 'pre, code, script, style, textarea, kbd, mjx-container, .highlight, .math';
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
const raw = [];
const pattern = /\\\(|\\\[|\$\$|(^|[^\\\w$])\$[^\s$][^$\n]{0,200}?[^\s\\$]\$(?![\w$])/;
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  if (!n.parentElement || n.parentElement.closest(skip)) continue;
  const m = n.textContent.match(pattern);
  if (m) raw.push(`${describe(n.parentElement)}: "${n.textContent.trim().slice(0, 100)}"`);
}
const images = Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))
    .map(i => `${describe(i)}: ${(i.currentSrc || i.src || '(no src)').slice(-100)}`);
// Figures keep their aspect ratio: displayed width / height within 2% of the image's natural one.
const squashed = [];
for (const img of document.images) {
  const r = img.getBoundingClientRect();
  if (!(img.naturalWidth > 0 && img.naturalHeight > 0) || r.width < 2 || r.height < 2) continue;
  const natural = img.naturalWidth / img.naturalHeight, shown = r.width / r.height;
  if (Math.abs(shown / natural - 1) > 0.02)
    squashed.push(`${describe(img)}: shown ${Math.round(r.width)}x${Math.round(r.height)} px, ` +
                  `${(100 * shown / natural).toFixed(0)}% of its natural aspect ratio`);
}
// Table cells never wrap inside a number or a word: each word's glyphs sit on one line. A word is a number in
// scientific notation (5e-04, whose hyphen a browser would break after) or a run of letters and digits (with inner
// . , ' as in 0.245 or 1,500, and a leading sign); lines may break between words and after a hyphen or slash
// inside a compound ("leave-one-out", "SST-2").
const broken = [];
const word = /(?<![\p{L}\p{N}])(?:[-−+]?\d+(?:[.,]\d+)*[eE][-−+]?\d+|[-−+]?[\p{L}\p{N}]+(?:[.,'’][\p{L}\p{N}]+)*)/gu;
for (const cell of document.querySelectorAll('.bd-article td, .bd-article th')) {
  const cs = getComputedStyle(cell);
  if (!cell.checkVisibility()) continue;  // inside a folded solution or a closed <details>
  const texts = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  let found = null;
  for (let n = texts.nextNode(); n && !found; n = texts.nextNode()) {
    for (const m of n.textContent.matchAll(word)) {
      if (m[0].length < 2) continue;
      const range = document.createRange();
      range.setStart(n, m.index);
      range.setEnd(n, m.index + m[0].length);
      const rects = Array.from(range.getClientRects()).filter(q => q.width > 0.5);
      const tops = rects.map(q => q.top);
      if (tops.length > 1 && Math.max(...tops) - Math.min(...tops) > rects[0].height / 2) {
        found = m[0];
        break;
      }
    }
  }
  if (found) broken.push(`${describe(cell)}: "${found}" is split over lines (cell: "${cell.textContent.trim().slice(0, 60)}")`);
}
// Headings inside a cell's output read as labels of that output: deeper than the section that holds them and no
// larger than 1.2 times the page's running text (a large heading in an output looks like a section of the chapter).
const bodySize = parseFloat(getComputedStyle(document.querySelector('.bd-article p') || document.body).fontSize);
const outranking = [];
for (const h of document.querySelectorAll('.cell_output h1, .cell_output h2, .cell_output h3, .cell_output h4, ' +
                                           '.cell_output h5, .cell_output h6')) {
  const level = +h.tagName[1];
  const section = h.closest('section[id]');
  const own = section && section.querySelector(':scope > h1, :scope > h2, :scope > h3, :scope > h4, :scope > h5');
  const sectionLevel = own ? +own.tagName[1] : 1;
  const size = parseFloat(getComputedStyle(h).fontSize);
  if (level <= sectionLevel || size > 1.2 * bodySize)
    outranking.push(`${describe(h)}: <${h.tagName.toLowerCase()}> "${h.textContent.trim().slice(0, 50)}" at ` +
                    `${size}px inside an <h${sectionLevel}> section (running text ${bodySize}px)`);
}
// Content that overflows sideways scrolls (never clipped out of reach) and shows that it does: on phones and in
// many desktop settings scrollbars are overlays that appear only while scrolling, so a scroller whose content is
// cut at its edge must draw a cue of its own (the book's edge shadows, a gradient background).
const hiddenOverflow = [];
for (const el of document.querySelectorAll('.bd-article *')) {
  if (el.scrollWidth <= el.clientWidth + 1 || el.clientWidth === 0) continue;
  const cs = getComputedStyle(el);
  if (cs.display === 'none' || cs.visibility === 'hidden' || cs.display === 'inline') continue;
  if (cs.overflowX === 'visible') continue;  // overflow that is not cut is checked by `wide` above
  if (!el.checkVisibility()) continue;
  if (el.matches('mjx-container *, .nxg-tok, .sd-tab-set *')) continue;
  // How far the visible content reaches past the box (MathJax's screen-reader copy is clipped on purpose).
  const edge = el.getBoundingClientRect().left + el.clientLeft + el.clientWidth;
  let reach = 0;
  for (const d of el.querySelectorAll('*')) {
    if (d.closest('mjx-assistive-mml') || !d.checkVisibility()) continue;
    const q = d.getBoundingClientRect();
    if (q.width > 0 && q.height > 0) reach = Math.max(reach, q.right - edge);
  }
  const inner = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let n = inner.nextNode(); n; n = inner.nextNode()) {
    if (!n.textContent.trim() || n.parentElement.closest('mjx-assistive-mml') || !n.parentElement.checkVisibility())
      continue;
    const range = document.createRange();
    range.selectNodeContents(n);
    for (const q of range.getClientRects()) if (q.width > 0) reach = Math.max(reach, q.right - edge);
  }
  if (reach <= 2) continue;
  const scrolls = cs.overflowX === 'auto' || cs.overflowX === 'scroll';
  const cue = /gradient/.test(cs.backgroundImage);
  if (!scrolls || !cue)
    hiddenOverflow.push(`${describe(el)}: ${Math.round(reach)} px hidden sideways ` +
                        `(overflow-x: ${cs.overflowX}${scrolls ? ', no scroll cue' : ', cannot be scrolled'})`);
}
// A solution shows nothing, neither its code nor its output, until the reader opens it.
const solutionsShown = Array.from(document.querySelectorAll('.cell.tag_solution'))
    .filter(c => Array.from(c.querySelectorAll('.cell_input, .cell_output')).some(e => e.checkVisibility()))
    .map(c => describe(c));
const exerciseTitles = Array.from(document.querySelectorAll('.exercise .admonition-title'))
    .map(t => t.textContent.trim().slice(0, 60));
return {
  squashed, broken, outranking, hiddenOverflow, solutionsShown, exerciseTitles,
  innerWidth: window.innerWidth, clientWidth: vw, scrollWidth: document.documentElement.scrollWidth,
  wide, maths: maths.length, mjx: document.querySelectorAll('mjx-container').length, unrendered, texErrors, raw,
  images, nimages: document.images.length,
};
"""


def _inspect_page(browser, url: str, width: int) -> tuple[dict, list[dict]]:
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(url)
    browser.execute_async_script(_SETTLE)
    report = browser.execute_script(_INSPECT)
    return report, browser.get_log("browser")


@pytest.mark.parametrize("width", WIDTHS, ids=lambda w: f"{w}px")
@pytest.mark.parametrize("page", toc_pages())
def test_page_in_the_browser(browser, server, page, width):
    report, console = _inspect_page(browser, f"{server}/{page}.html", width)
    problems = []
    for entry in console:
        if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]:
            problems.append(f"console error: {entry['message'][:300]}")
    problems += [f"image not loaded: {i}" for i in report["images"]]
    if report["maths"] and not report["mjx"]:
        problems.append(f"{report['maths']} formulas but no MathJax output (did MathJax load?)")
    problems += [f"formula not rendered by MathJax: {m!r}" for m in report["unrendered"]]
    problems += [f"TeX error in a formula: {e}" for e in report["texErrors"]]
    problems += [f"raw TeX left in the text: {r}" for r in report["raw"]]
    if report["scrollWidth"] > report["clientWidth"]:
        problems.append(f"the page scrolls sideways: {report['scrollWidth']} px of content in a "
                        f"{report['clientWidth']} px viewport")
    problems += [f"wider than the viewport: {w}" for w in report["wide"]]
    problems += [f"figure squashed: {s}" for s in report["squashed"]]
    problems += [f"table cell wraps inside a word: {b}" for b in report["broken"]]
    problems += [f"output heading outranks the page's: {h}" for h in report["outranking"]]
    problems += [f"hidden horizontal overflow: {h}" for h in report["hiddenOverflow"]]
    problems += [f"a solution cell shows its code or output before it is opened: {c}" for c in report["solutionsShown"]]
    if (number := re.match(r"book/(\d\d)_", page)) and report["exerciseTitles"]:
        chapter = int(number.group(1))  # exercises are numbered per chapter: "Exercise 4.2"
        problems += [f"exercise not numbered within chapter {chapter}: {t!r}" for t in report["exerciseTitles"]
                     if not re.match(rf"Exercise {chapter}\.\d+\b", t)]
    assert not problems, f"{page} at {width} px:\n" + "\n".join(problems)
