"""Build the book (warnings are errors), serve it on 127.0.0.1 and load every chapter in headless
Chromium with the network cut off: figures are on the page, the maths is typeset, and each
explorer's static player changes its picture when a control moves.

MathJax, RequireJS and the widget manager come from the built site (``_static/vendor``, staged by
``book/_ext/local_assets.py`` from ``.cache/npm``, which scripts/env.sh installs from the npm
registry), so the pages need no CDN: the test checks that no page loads a script from the network,
and opens one chapter from disk (``file://``) as a reader without a server would.
Screenshots go to _build/screenshots/.
"""
from __future__ import annotations

import base64
import functools
import html
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("jupyter_book")
from helpers import png_size_and_dpi  # noqa: E402
from memnet import plots  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "_build" / "screenshots"
OUT = ROOT / "_build" / "test-book"  # the test's own build, next to scripts/book.sh's _build/html
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.py"))
BUILD_BUDGET_S = float(os.environ.get("MEMNET_BOOK_BUDGET_S", "300"))
REMOTE_SCRIPT = re.compile(r'<script[^>]+src="(https?:)?//[^"]*"')
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9")  # only the test server answers


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def html_dir() -> Path:
    if OUT.exists():
        shutil.rmtree(OUT)
    t0 = time.perf_counter()
    exe = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(exe) if exe.exists() else "jupyter-book", "build", str(ROOT), "-W", "--keep-going",
                           "--path-output", str(OUT)], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    print(f"book build: {wall:.0f} s")
    assert proc.returncode == 0, (proc.stdout[-5000:] + proc.stderr[-3000:])
    assert wall < BUILD_BUDGET_S, f"book build took {wall:.0f} s"
    html = OUT / "_build" / "html"
    assert (html / "index.html").is_file()
    return html


def typeset_maths(dom: str) -> int:
    """How many formulas MathJax typeset in a rendered DOM (0 when it never ran)."""
    return len(re.findall(r"<mjx-container", dom))


def test_pages_have_figures_and_players(html_dir):
    vendored = (html_dir / "_static" / "vendor" / "mathjax" / "tex-mml-chtml.js").is_file()
    for page_path in sorted(html_dir.rglob("*.html")):
        page = page_path.read_text()
        if vendored:  # everything a page runs comes from the site itself
            assert not REMOTE_SCRIPT.search(page), f"{page_path.name} loads a script from the network"
    for ch in CHAPTERS:
        page = (html_dir / "book" / f"{ch}.html").read_text()
        imgs = re.findall(r'<img[^>]+src="([^"]+)"', page)
        figures = [s for s in imgs if "_images/" in s or s.startswith("data:image/png")]
        assert len(figures) >= 3, f"{ch}: only {len(figures)} figures"
        alts = re.findall(r'<img alt="([^"]*)"[^>]*src="[^"]*_images/', page)
        assert alts and not [a for a in alts if a.endswith(".png") or len(a) < 30], \
            f"{ch}: figures whose alt text is a file name: {[a for a in alts if a.endswith('.png')][:3]}"
        assert "class=\"memnet-player\"" in page, f"{ch}: no explorer player (memnet.widgets.static_player)"
        assert "{glue" not in page, f"{ch}: an unresolved glue reference"
        assert "_static/memnet.css" in page, f"{ch}: the book's style sheet (long lines wrap) is not linked"
        printed = "".join(re.findall(r'<div class="output stream[^"]*"[^>]*>.*?</pre>', page, re.S))
        assert not re.search(r"^-+(  -+)+$", html.unescape(re.sub(r"<[^>]+>", "", printed)), re.M), \
            f"{ch}: a table printed as text (it wraps in the column): show it with memnet.book.show_report"
        for src in figures:  # saved at 150 dpi or more and no wider than the column (plus the saved margin)
            png = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:") else \
                (html_dir / "book" / src).read_bytes()
            w, _, dpi = png_size_and_dpi(png)
            assert dpi >= 150 and w <= (plots.COLUMN_WIDTH + 2 * plots.PAD) * dpi + 1, \
                f"{ch}: a figure {w} px wide at {dpi:.0f} dpi"
    bib = (html_dir / "book" / "bibliography.html").read_text()
    for author in ("Graves", "Rae", "Kaiser", "Wu", "Bulatov", "Behrouz", "Lopez-Paz"):
        assert author in bib, author


CODE_BLOCK = re.compile(r'<div class="(?:cell_input[^"]*|highlight-python[^"]*|highlight-ipython3[^"]*)"[^>]*>.*?</pre>', re.S)
NOT_FOR_READERS = re.compile(r"\b(nan|NaN|inf|NBVAL_?\w*|the bar|our bar|the issue|the seed's)\b|\w+Warning:"
                             r"|\b\d+\.\d{8,}")  # the last: float32 noise printed as is (0.8999999761581421)


def reader_text(page: str) -> str:
    """The text a reader reads on a page: prose, tables and printed output, without scripts, styles
    and code (cell inputs and source listings, where nan or inf may be Python)."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", CODE_BLOCK.sub(" ", page)))


def test_reader_text_check_sees_outputs_not_code():
    page = ('<div class="cell_input docutils container"><div class="highlight"><pre>x = float("nan")</pre></div></div>'
            '<div class="output stream"><pre>accuracy nan%</pre></div><p>fine</p>'
            '<div class="output stderr"><pre>plots.py:46: UserWarning: layout not applied</pre></div>'
            '<div class="output stream"><pre>top: [0.8999999761581421] at 0.125</pre></div>')
    assert [m.group(0) for m in NOT_FOR_READERS.finditer(reader_text(page))] == \
        ["nan", "UserWarning:", "0.8999999761581421"]


def test_no_nan_inf_markers_or_process_words_for_readers(html_dir):
    for page_path in sorted((html_dir / "book").glob("*.html")):
        text = reader_text(page_path.read_text())
        hits = [text[max(0, m.start() - 60): m.end() + 30].replace("\n", " ") for m in NOT_FOR_READERS.finditer(text)]
        assert not hits, f"{page_path.name}: {hits[:5]}"


# ---------------------------------------------------------------------------- serving
FOCUS_JS = """<script>
document.addEventListener("DOMContentLoaded", () => {
  let el = document.getElementById("ID");
  while (el && el.tagName !== "ARTICLE") {
    let p = el.previousElementSibling;
    while (p) { const q = p.previousElementSibling; if (!/^H[1-6]$/.test(p.tagName)) p.remove(); p = q; }
    el = el.parentElement;
  }
});
</script>"""


MOVE_JS = """<script>
window.addEventListener("load", function () {
  document.querySelectorAll(".memnet-player").forEach(function (p) {
    var img = p.querySelector("img"), before = img.src, el = p.querySelector("[data-k]");
    if (!el) { p.dataset.moved = "no-control"; return; }
    el.value = el.tagName === "SELECT" ? String((+el.value + 1) % el.options.length)
                                       : String(+el.value === +el.max ? 0 : +el.max);
    el.dispatchEvent(new Event("input"));
    p.dataset.moved = String(img.src !== before && img.src.indexOf("data:image/png;base64,") === 0);
  });
});
</script>"""  # moves the first control of every static player, as a reader would, and records whether the picture changed


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        focus = re.search(r"[?&]focus=([\w-]+)", self.path)
        move = re.search(r"[?&]move=1", self.path)
        local = Path(self.translate_path(self.path))
        if (focus or move) and local.suffix == ".html" and local.is_file():
            extra = FOCUS_JS.replace("ID", focus.group(1)) if focus else MOVE_JS  # focus: drop what precedes a section
            text = local.read_text().replace("</body>", extra + "</body>")
            return self._send(text.encode(), "text/html; charset=utf-8")
        return super().do_GET()  # the built files as they are

    def _send(self, body: bytes, ctype: str):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(html_dir):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(html_dir)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def run_chromium(url: str, tmp: Path, *extra: str, budget_ms: int = 20000) -> subprocess.CompletedProcess:
    exe = chromium()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp}", f"--virtual-time-budget={budget_ms}", *OFFLINE, *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_in_browser(server, html_dir, chapter, tmp_path):
    if chromium() is None:
        pytest.skip("chromium is not installed (scripts/env.sh installs it on Debian as root)")
    if not (html_dir / "_static" / "vendor" / "mathjax" / "tex-mml-chtml.js").is_file():
        pytest.skip("the book was built without .cache/npm (scripts/env.sh installs MathJax and the widget JS with npm)")
    url = f"{server}/book/{chapter}.html"
    dom = run_chromium(url, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len([s for s in imgs if "_images/" in s or s.startswith("data:image/png")]) >= 3
    # every explorer is a static player (memnet.widgets.static_player): it works without a kernel
    players = re.findall(r'<div class="memnet-player" id="[^"]+">', html)
    assert players, f"{chapter}: no explorer player on the page"
    moved = run_chromium(url + "?move=1", tmp_path / "profile-move", "--dump-dom").stdout
    states = re.findall(r'<div class="memnet-player" id="[^"]+" data-moved="(\w+)"', moved)
    assert states and set(states) == {"true"} and len(states) == len(players), \
        f"{chapter}: moving an explorer's control did not change its picture ({states})"
    formulas = len(re.findall(r'class="math', (html_dir / "book" / f"{chapter}.html").read_text()))
    assert typeset_maths(html) >= formulas, f"{chapter}: MathJax typeset {typeset_maths(html)} of {formulas} formulas"
    SHOTS.mkdir(parents=True, exist_ok=True)
    section = re.search(r'<section id="(explore[\w-]*)"', html)
    assert section, f"{chapter}: no 'Explore ...' section"
    for name, query in (("top", ""), ("explorer", f"?focus={section.group(1)}")):
        shot = SHOTS / f"{chapter}-{name}.png"
        shot.unlink(missing_ok=True)
        r = run_chromium(url + query, tmp_path / f"profile-{name}", f"--screenshot={shot}", "--window-size=1280,4000")
        assert r.returncode == 0 and shot.is_file() and shot.stat().st_size > 50_000, r.stderr[-2000:]


@pytest.mark.slow
def test_book_opened_from_disk(html_dir, tmp_path):
    """A reader opens _build/html from disk with no network: the maths is typeset and the explorer
    is there (file://, no server)."""
    if chromium() is None:
        pytest.skip("chromium is not installed (scripts/env.sh installs it on Debian as root)")
    if not (html_dir / "_static" / "vendor" / "mathjax" / "tex-mml-chtml.js").is_file():
        pytest.skip("the book was built without .cache/npm (scripts/env.sh installs MathJax and the widget JS with npm)")
    page = (html_dir / "book" / f"{CHAPTERS[0]}.html").resolve()
    dom = run_chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert typeset_maths(dom.stdout) >= 5, "MathJax did not typeset the chapter opened from disk"
    assert re.search(r'<div class="memnet-player"[\s\S]*?<input type="range"', dom.stdout), \
        "the explorer's player is missing from the chapter opened from disk"
