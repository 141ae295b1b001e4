"""Sphinx extension: serve MathJax and the ipywidgets JavaScript from the built site instead of a CDN.

The pages load three scripts that Sphinx and MyST-NB take from CDNs by default: MathJax (the
maths), RequireJS and ``@jupyter-widgets/html-manager`` (the saved widget state of the explorers).
``scripts/env.sh`` installs all three from the npm registry into ``.cache/npm``. When they are
there, this extension copies the files the pages need into ``_static/vendor/`` and points the
pages at them, so ``_build/html`` works offline and opened from disk (``file://``). When they are
not (no npm on the machine), the book keeps the CDN scripts and says so in the build log.

What is copied (about 8 MB):
- MathJax 3 ``es5``: the ``tex-mml-chtml`` component, its CHTML woff-v2 fonts, the TeX
  extensions it may autoload, and the accessibility and menu components (not the speech rule
  engine, which only the menu's speech options load);
- RequireJS;
- html-manager's ``embed-amd.js`` with the font files its CSS refers to.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

LOG = logging.getLogger(__name__)
NPM = Path(".cache") / "npm" / "node_modules"
# (npm package, files or folders inside it, where they go under _static/vendor)
FILES = (
    ("mathjax", ("es5/tex-mml-chtml.js", "es5/output/chtml/fonts/woff-v2", "es5/input/tex/extensions", "es5/a11y",
                 "es5/ui"), "mathjax"),
    ("requirejs", ("require.js",), "requirejs"),
    ("@jupyter-widgets/html-manager", ("dist/embed-amd.js", "dist/*.woff", "dist/*.woff2", "dist/*.ttf", "dist/*.eot",
                                       "dist/*.svg"), "html-manager"),
)
STAGE = Path(".cache") / "book-static"  # an html_static_path: Sphinx copies it into _static/


def _strip(rel: str) -> str:
    """The path under the vendor folder: drop the package's build folder (es5/, dist/)."""
    return rel.split("/", 1)[1] if rel.startswith(("es5/", "dist/")) else rel


def stage(root: Path) -> Path | None:
    """Copy the vendored files from ``root/.cache/npm`` into ``root/.cache/book-static/vendor``;
    None when a package or file is missing (then nothing is staged)."""
    npm, out = root / NPM, root / STAGE / "vendor"
    plan: list[tuple[Path, Path]] = []
    for package, parts, dest in FILES:
        base = npm / package
        for rel in parts:
            matches = sorted(base.glob(rel)) if "*" in rel else [base / rel]
            if not matches or not all(m.exists() for m in matches):
                return None
            for m in matches:
                plan.append((m, out / dest / _strip(str(m.relative_to(base)))))
    for src, dst in plan:
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return root / STAGE


def config_inited(app: Sphinx, config) -> None:
    staged = stage(Path(app.confdir))
    if staged is None:
        LOG.info("local_assets: .cache/npm lacks MathJax, RequireJS or the widget manager (scripts/env.sh installs "
                 "them with npm); the pages load them from CDNs")
        return
    config.html_static_path = list(config.html_static_path) + [str(staged)]
    config.mathjax_path = "vendor/mathjax/tex-mml-chtml.js"  # relative to _static
    config.nb_ipywidgets_js = {
        "vendor/requirejs/require.js": {},
        "vendor/html-manager/embed-amd.js": {},
    }


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", config_inited, priority=900)  # after myst-nb has added its settings
    return {"parallel_read_safe": True, "parallel_write_safe": True}
