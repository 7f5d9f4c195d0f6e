"""`optforge site`: a static HTML site of docs/, whose equations render with no network access.

Markdown becomes HTML (python-markdown); the LaTeX is kept out of markdown's way and rendered in
the browser by KaTeX, whose files are copied into the site (from the npm package, fetched once
into ~/.cache/optforge). Open site/index.html from disk or any static server.
"""

from __future__ import annotations

import html
import os
import pathlib
import re
import shutil
import subprocess
import tarfile

KATEX_VERSION = "0.16.22"

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - optforge</title>
<link rel="stylesheet" href="{up}katex/katex.min.css">
<script defer src="{up}katex/katex.min.js"></script>
<script defer src="{up}katex/contrib/auto-render.min.js"></script>
<script>
document.addEventListener("DOMContentLoaded", function () {{
  renderMathInElement(document.body, {{
    delimiters: [{{left: "$$", right: "$$", display: true}}, {{left: "$", right: "$", display: false}}],
    throwOnError: false
  }});
  document.body.setAttribute("data-math", "rendered");
}});
</script>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.2rem 0.5rem; }}
pre {{ background: #f6f8fa; padding: 0.6rem; overflow-x: auto; }} img {{ max-width: 100%; }}
</style>
</head>
<body>
<p><a href="{up}index.html">optforge optimizers</a></p>
{body}
</body>
</html>
"""


def katex_dir() -> pathlib.Path:
    """KaTeX's dist folder, from the npm package (downloaded once)."""
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "optforge"
    dist = cache / f"katex-{KATEX_VERSION}" / "package" / "dist"
    if dist.exists():
        return dist
    cache.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("optforge site needs KaTeX from the npm registry once: install Node.js and npm")
    out = subprocess.run(
        [npm, "pack", f"katex@{KATEX_VERSION}", "--pack-destination", str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    tgz = cache / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as tar:
        tar.extractall(cache / f"katex-{KATEX_VERSION}", filter="data")
    return dist


def to_html(text: str) -> str:
    """Markdown to HTML, with $$...$$ and $...$ passed through untouched for KaTeX."""
    import markdown

    kept: list[str] = []

    def keep(m: re.Match) -> str:
        kept.append(m.group(0))
        return f"MATHPLACEHOLDER{len(kept) - 1}X"

    text = re.sub(r"\$\$.+?\$\$", keep, text, flags=re.S)
    text = re.sub(r"(?<![\\$])\$[^$\n]+?\$", keep, text)
    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    body = re.sub(r"MATHPLACEHOLDER(\d+)X", lambda m: html.escape(kept[int(m.group(1))], quote=False), body)
    body = re.sub(r'href="([^"#:]+)\.md"', r'href="\1.html"', body)
    # a page's rule file (docs/optimizers/x.md links ../../rules/x.py): the site keeps a copy in rules/
    return re.sub(r'href="\.\./\.\./rules/', 'href="../rules/', body)


def build_site(root: pathlib.Path, out: pathlib.Path | None = None) -> pathlib.Path:
    docs = root / "docs"
    out = out or root / "site"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(katex_dir(), out / "katex")
    for md in sorted(docs.rglob("*.md")):
        rel = md.relative_to(docs)
        target = out / rel.with_suffix(".html")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = md.read_text()
        title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), rel.stem)
        up = "../" * (len(rel.parts) - 1)
        target.write_text(PAGE.format(title=html.escape(title), up=up, body=to_html(text)))
    (out / "rules").mkdir()
    for source in sorted((root / "rules").glob("*.py")):  # the pages' "Rule:" links, inside the site
        shutil.copy(source, out / "rules" / source.name)
    for png in docs.rglob("*.png"):
        dest = out / png.relative_to(docs)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, dest)
    return out
