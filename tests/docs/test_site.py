"""The documentation: the README's shape, its two commands and links, the site's navigation, the
pages generated from the code, and the checks that make ``mkdocs build --strict`` fail."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 150


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load(DOCS / "_gen" / "gen_pages.py")


class _Loader(yaml.SafeLoader):
    """mkdocs.yml names a Python function (``!!python/name:``): read it as nothing."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)


def nav_pages(nav: Any = None) -> list[str]:
    if nav is None:
        nav = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=_Loader)["nav"]
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    return [page for value in nav.values() for page in nav_pages(value)]


# --- README ---------------------------------------------------------------------------------


def readme_commands() -> list[str]:
    """The command lines of the README's first fenced block: the two commands."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert block, "README.md must open with a ```bash block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def pip_install_extras(line: str) -> tuple[str, set[str]]:
    """(constraints file, extras) of the `pip install -c LOCK -e ".[...]"` in a command line."""
    match = re.search(r"pip install (?:--quiet )?-c (\S+) -e \"\.\[([\w,]+)\]\"", line)
    assert match, line
    return match.group(1), set(match.group(2).split(","))


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move detail to docs/"


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    assert text.index("```bash") < text.index("\n## "), "the two commands come first"
    serve, test = readme_commands()
    assert serve.endswith("&& rdad serve"), serve
    assert test.endswith("&& python -m pytest"), test
    assert pip_install_extras(serve)[0] == pip_install_extras(test)[0] == "requirements/dev.lock"


def test_readme_test_command_installs_what_ci_installs() -> None:
    """CI runs the README's test command: the same lock and the same extras."""
    ci = (REPO / ".ci" / "run").read_text()
    (line,) = [ln for ln in ci.splitlines() if "pip install" in ln and "-e " in ln]
    assert pip_install_extras(line) == pip_install_extras(readme_commands()[1])
    assert re.search(r"^python -m pytest$", ci, flags=re.M)
    assert re.search(r"^(\w+=\S+ )*mkdocs build --strict\b", ci, flags=re.M), "CI builds the site"


def test_readme_links_resolve_to_files_and_docs_pages() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "README links nowhere"
    pages = set(nav_pages())
    for target in local:
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"
        if target.startswith("docs/") and target.endswith(".md"):
            assert target.removeprefix("docs/") in pages, f"{target} is not in mkdocs.yml's nav"
    # The table routes to every section of the site.
    for page in ("getting-started", "training", "export", "serving", "deploy", "performance"):
        assert f"(docs/{page}.md)" in text, f"README's table lacks docs/{page}.md"
    for page in ("reliability", "architecture", "development"):
        assert f"(docs/{page}.md)" in text, f"README's table lacks docs/{page}.md"


def test_readme_says_how_to_serve_the_site() -> None:
    assert "mkdocs serve" in README.read_text()


# --- the site's pages -------------------------------------------------------------------------


def test_every_page_is_in_the_nav_and_every_nav_page_exists(gen: ModuleType) -> None:
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "_gen" not in p.parts}
    generated = set(gen.PAGES)
    pages = nav_pages()
    assert len(pages) == len(set(pages)), "a page is twice in the nav"
    assert set(pages) == written | generated
    assert not written & generated, "a generated page would overwrite a written one"


def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """What CI runs (``.ci/run``): any warning — a missing page or anchor, a broken link,
    Markdown left unrendered, a setting without a description — fails the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("api", "settings", "metrics", "cli", "modules", "getting-started"):
        assert (tmp_path / page / "index.html").is_file(), page


# --- generated pages --------------------------------------------------------------------------


def test_api_page_has_every_route_of_the_app(gen: ModuleType) -> None:
    schema = gen.openapi_schema()
    page = gen.render_api(schema)
    routes = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]
    assert ("POST", "/predict") in routes and ("GET", "/readyz") in routes
    for method, path in routes:
        assert f"### `{method} {path}`" in page
    for name in schema["components"]["schemas"]:
        assert f"### {name} {{#" in page
    # Field descriptions come from the schema, not from this page.
    result = schema["components"]["schemas"]["PredictionResult"]["properties"]
    assert result["normalized_score"]["description"] in page


def test_settings_page_has_every_field_with_variable_default_and_description(
    gen: ModuleType,
) -> None:
    from rdad.service.settings import Settings

    page = gen.render_settings()
    for name in Settings.model_fields:
        assert f"| `RDAD_{name.upper()}`<br>" in page, name
    row = next(ln for ln in page.splitlines() if ln.startswith("| `RDAD_MAX_BATCH_SIZE`<br>"))
    assert "`--max-batch-size`" in row and "`16`" in row
    row = next(ln for ln in page.splitlines() if ln.startswith("| `RDAD_MODEL_DIR`<br>"))
    assert "`~/.cache/rdad/models`" in row, "defaults are shown as a user's, not the builder's"
    # A field's attribute docstring is its description, field names as their variables.
    assert "Close a batch before `RDAD_MAX_DELAY_MS` when no other image" in page


def test_a_setting_without_description_fails_the_build(
    gen: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gen, "attribute_docstrings", lambda cls: {})
    monkeypatch.setattr(gen, "serve_flags", lambda: {})
    with pytest.raises(SystemExit, match="have no description"):
        gen.render_settings()


def test_metrics_page_has_every_metric(gen: ModuleType) -> None:
    from rdad.service.metrics import Metrics

    page = gen.render_metrics()
    names = [
        family.name
        for family in Metrics(max_batch_size=4).registry.collect()
        if family.name.startswith("rdad_")
    ]
    assert "rdad_requests" in names
    for name in names:
        assert f"`{name}" in page, name


def test_module_map_has_every_module(gen: ModuleType) -> None:
    page = gen.render_modules()
    for folder in ("rdad", "rdad/commands", "model", "service", "service/routes"):
        for path in (REPO / folder).glob("*.py"):
            if path.name != "__init__.py":
                assert f"| `{folder}/{path.name}` |" in page, path
    assert "*(no module docstring)*" not in page


def test_cli_page_has_every_command(gen: ModuleType) -> None:
    from rdad.cli import COMMANDS

    page = gen.render_cli()
    for name in COMMANDS:
        assert f"## rdad {name}\n" in page and f"usage: rdad {name}" in page


# --- strict-mode checks -----------------------------------------------------------------------


def test_markdown_left_unrendered_is_found() -> None:
    hooks = load(DOCS / "_gen" / "hooks.py")
    html = (
        "<p>See [the API][api] and [this](page.md).</p><h2>Title {#anchor}</h2>"
        "<p>!!! note</p><pre><code>[kept][as-is] {#code}</code></pre>"
    )
    found = [kind for kind, _ in hooks.unrendered(html)]
    assert sorted(found) == [
        "undefined reference",
        "unrendered admonition",
        "unrendered attribute list",
        "unrendered link",
    ]
    assert hooks.unrendered('<p>A <a href="x.md">link</a>, {"error": "x"}, [1, 2]</p>') == []
