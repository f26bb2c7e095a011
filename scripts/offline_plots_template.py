"""Make `dvc plots show` pages work offline: an HTML template with Vega inside, set for this clone.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN, so it is blank without a
network. This script downloads the three packages once from the npm registry (the versions DVC's
renderer asks the CDN for, checked against the registry's sha512), writes ``.dvc/plots_template.html``
(about 0.8 MB, gitignored) with their minified builds inlined, and points this clone's
``.dvc/config.local`` at it (``plots.html_template``). ``make plots-template`` runs it, or:

    .venv/bin/python scripts/offline_plots_template.py
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / ".dvc" / "plots_template.html"
REGISTRY = "https://registry.npmjs.org"
# (package, version, npm dist.integrity): dvc_render's CDN versions (dvc_render/vega.py).
PACKAGES = (
    ("vega", "5.20.2", "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    ("vega-lite", "5.2.0", "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    ("vega-embed", "6.18.2", "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
)
# DVC's own page (dvc_render.html.PAGE_HTML) with the scripts inlined: no {scripts} placeholder,
# so DVC adds no CDN <script> tags. {refresh_tag} and {plot_divs} are DVC's placeholders.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
%s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def minified_build(name: str, version: str, integrity: str) -> str:
    """``package/build/<name>.min.js`` of the npm tarball, after checking the tarball's sha512."""
    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=120) as response:
        tarball = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != integrity:
        raise SystemExit(f"{url}: sha512 {digest} is not the registry's {integrity}")
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        member = archive.extractfile(f"package/build/{name}.min.js")
        if member is None:
            raise SystemExit(f"{url} has no package/build/{name}.min.js")
        return member.read().decode("utf-8")


def template_html() -> str:
    scripts = []
    for name, version, integrity in PACKAGES:
        code = minified_build(name, version, integrity).replace("</script", "<\\/script")
        scripts.append(f'    <script type="text/javascript">/* {name}@{version} */\n{code}\n    </script>')
    return PAGE % "\n".join(scripts)


def main() -> int:
    html = template_html()
    TEMPLATE.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{TEMPLATE.name}.", suffix=".tmp", dir=TEMPLATE.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(html)
    os.replace(tmp, TEMPLATE)
    # config.local: this clone only, and only once the template is there (a missing template file
    # would be read as the template's text by DVC, and `dvc plots show` would fail).
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc) if dvc.exists() else "dvc", "config", "--local", "plots.html_template", TEMPLATE.name],
                   cwd=REPO, check=True)
    print(f"{TEMPLATE.relative_to(REPO)}: {len(html) / 1e6:.1f} MB, Vega inlined; "
          "`dvc plots show` pages now work offline (plots.html_template in .dvc/config.local)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
