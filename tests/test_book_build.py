"""Build the book (warnings are errors), serve it on 127.0.0.1 and load every chapter in headless
Chromium: figures are on the page and the ipywidgets explorer renders from the saved widget state.

The widget JavaScript (and MathJax) normally comes from a CDN; these machines cannot reach one,
so the test server serves @jupyter-widgets/html-manager, requirejs and mathjax from .cache/npm
(installed by scripts/env.sh from the npm registry) and rewrites the CDN URLs in the HTML it serves.
Screenshots go to _build/screenshots/.
"""
from __future__ import annotations

import functools
import http.server
import mimetypes
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

ROOT = Path(__file__).resolve().parents[1]
NPM = ROOT / ".cache" / "npm" / "node_modules"
SHOTS = ROOT / "_build" / "screenshots"
OUT = ROOT / "_build" / "test-book"  # the test's own build, next to scripts/book.sh's _build/html
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.py"))
BUILD_BUDGET_S = float(os.environ.get("MEMNET_BOOK_BUDGET_S", "300"))
CDN = "https://cdn.jsdelivr.net/npm/"
REQUIRE_CDN = re.compile(r"https://cdnjs\.cloudflare\.com/ajax/libs/require\.js/[^/\"']+/require(\.min)?\.js")


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


def test_pages_have_figures_and_widget_state(html_dir):
    for ch in CHAPTERS:
        page = (html_dir / "book" / f"{ch}.html").read_text()
        imgs = re.findall(r'<img[^>]+src="([^"]+)"', page)
        figures = [s for s in imgs if "_images/" in s or s.startswith("data:image/png")]
        assert len(figures) >= 3, f"{ch}: only {len(figures)} figures"
        assert "application/vnd.jupyter.widget-state+json" in page, f"{ch}: no saved widget state"
        assert "{glue" not in page, f"{ch}: an unresolved glue reference"
    bib = (html_dir / "book" / "bibliography.html").read_text()
    for author in ("Graves", "Rae", "Kaiser", "Wu", "Bulatov", "Behrouz", "Lopez-Paz"):
        assert author in bib, author


# ---------------------------------------------------------------------------- serving
def rewrite_html(text: str) -> str:
    """Point the widget JS at the local npm copies; drop SRI hashes (the local files differ)."""
    text = REQUIRE_CDN.sub("/_npm/requirejs/require.js", text)
    text = text.replace(CDN, "/_npm/")
    return re.sub(r'\s(integrity|crossorigin)="[^"]*"', "", text)


def npm_file(path: str) -> Path | None:
    """/_npm/@scope/name@1.2.3/dist/x.js -> .cache/npm/node_modules/@scope/name/dist/x.js (versions ignored)."""
    parts = path.removeprefix("/_npm/").split("?")[0].split("#")[0].split("/")
    n = 2 if parts[0].startswith("@") else 1
    if len(parts) <= n:
        return None
    pkg = parts[: n - 1] + [parts[n - 1].split("@")[0]]
    f = NPM.joinpath(*pkg, *parts[n:]).resolve()
    return f if f.is_file() and NPM.resolve() in f.parents else None


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


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path.startswith("/_npm/"):
            f = npm_file(self.path)
            if f is None:
                self.send_error(404)
                return
            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            return self._send(f.read_bytes(), "application/javascript" if f.suffix == ".js" else ctype)
        local = Path(self.translate_path(self.path))
        if local.is_dir():
            local = local / "index.html"
        if local.suffix == ".html" and local.is_file():
            text = rewrite_html(local.read_text())
            focus = re.search(r"[?&]focus=([\w-]+)", self.path)
            if focus:  # for a screenshot of one section: drop what precedes it on the page
                text = text.replace("</body>", FOCUS_JS.replace("ID", focus.group(1)) + "</body>")
            return self._send(text.encode(), "text/html; charset=utf-8")
        return super().do_GET()

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
           f"--user-data-dir={tmp}", f"--virtual-time-budget={budget_ms}", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_in_browser(server, chapter, tmp_path):
    if chromium() is None:
        pytest.skip("chromium is not installed (scripts/env.sh installs it on Debian as root)")
    if not (NPM / "@jupyter-widgets" / "html-manager" / "dist" / "embed-amd.js").is_file():
        pytest.skip("widget JS missing in .cache/npm (scripts/env.sh installs it with npm)")
    url = f"{server}/book/{chapter}.html"
    dom = run_chromium(url, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len([s for s in imgs if "_images/" in s or s.startswith("data:image/png")]) >= 3
    # the widget DOM exists only once the html-manager's JS ran and rendered the saved state
    # (the static page holds only <script type="application/vnd.jupyter.widget-view+json"> placeholders)
    assert re.search(r'<div[^>]*class="[^"]*jupyter-widgets[^"]*widget-slider', html), \
        f"{chapter}: the explorer's sliders did not render"
    assert re.search(r'<div[^>]*class="[^"]*jupyter-widgets[^"]*widget-dropdown', html), \
        f"{chapter}: the explorer's head selector did not render"
    assert re.search(r'class="[^"]*jupyter-widgets[^"]*widget-output[^"]*">[\s\S]{0,800}?<img src="data:image/png', html), \
        f"{chapter}: the explorer's figure did not render"
    SHOTS.mkdir(parents=True, exist_ok=True)
    section = re.search(r'<section id="(explore[\w-]*)"', html)
    assert section, f"{chapter}: no 'Explore ...' section"
    for name, query in (("top", ""), ("explorer", f"?focus={section.group(1)}")):
        shot = SHOTS / f"{chapter}-{name}.png"
        shot.unlink(missing_ok=True)
        r = run_chromium(url + query, tmp_path / f"profile-{name}", f"--screenshot={shot}", "--window-size=1280,4000")
        assert r.returncode == 0 and shot.is_file() and shot.stat().st_size > 50_000, r.stderr[-2000:]
