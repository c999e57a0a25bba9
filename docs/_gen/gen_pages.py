"""Pages of the documentation site generated from the code at build time (mkdocs-gen-files).

Run by ``mkdocs build`` / ``mkdocs serve`` (``plugins: gen-files`` in mkdocs.yml); never written
to the repository, so they cannot drift from the code:

* ``api.md``      the HTTP API, from the service's OpenAPI schema (``create_app(...).openapi()``);
* ``settings.md`` every ``RDAD_*`` variable, from :class:`rdad.service.settings.Settings`;
* ``metrics.md``  every ``rdad_*`` Prometheus metric, from :class:`rdad.service.metrics.Metrics`;
* ``cli.md``      every ``rdad`` subcommand's ``--help``;
* ``modules.md``  the module map, from each module's docstring (read with ``ast``, not imported).

A setting without a description, or a fallback description that is no longer needed, fails the
build: the page must say something true about every field.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

REPO = Path(__file__).resolve().parents[2]

GENERATED = (
    '!!! note "Generated"\n'
    "    This page is generated from the code each time the site is built ({source}); "
    "edit the code, not this page.\n"
)

# ------------------------------------------------------------------------------------------------
# Markdown helpers


def cell(text: Any) -> str:
    """One Markdown table cell: no line breaks, no bare pipes."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rst_to_md(text: str) -> str:
    """Docstrings use reST inline markup: ``code`` and :role:`target` become `code`."""
    text = re.sub(r":(?:mod|class|func|meth|attr|data|exc):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


# ------------------------------------------------------------------------------------------------
# HTTP API (OpenAPI)


def openapi_schema() -> dict[str, Any]:
    """The service's schema. ``create_app`` does no work (models load in the lifespan, which is
    never entered here), so no model, GPU or folder is needed."""
    from rdad.service.app import create_app
    from rdad.service.settings import Settings

    with _without_rdad_environment():  # the defaults' schema, whatever the build shell sets
        app = create_app(Settings(model_dir=Path("models"), model_poll_s=0))
        return app.openapi()


@contextlib.contextmanager
def _without_rdad_environment() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("RDAD_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def _anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def schema_type(schema: dict[str, Any]) -> str:
    """A short human type: `string`, `array of Region`, `"model" | "original"`, ..."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts = [schema_type(s) for s in schema[key]]
            return " or ".join(dict.fromkeys(parts))
    if "enum" in schema:
        return " | ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if kind == "array":
        items = schema.get("items")
        return "array" if not items else f"array of {schema_type(items)}"
    if kind == "string" and schema.get("format") == "binary":
        return "file (binary)"
    if kind is None:
        return "any"
    return str(kind) + _bounds(schema)


def _bounds(schema: dict[str, Any]) -> str:
    marks = [
        ("exclusiveMinimum", ">"),
        ("minimum", "≥"),
        ("exclusiveMaximum", "<"),
        ("maximum", "≤"),
    ]
    bits = [f"{sign} {schema[key]:g}" for key, sign in marks if _number(schema.get(key))]
    return f" ({', '.join(bits)})" if bits else ""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fields(schema: dict[str, Any], prefix: str = "", depth: int = 0) -> Iterator[list[str]]:
    """Rows (field, type, required, description) of an object schema, nested objects flattened
    with dotted names (``inputs[].datatype``)."""
    required = set(schema.get("required", []))
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        description = sub.get("description", "")
        default = f" Default: `{json.dumps(sub['default'])}`." if "default" in sub else ""
        needed = "yes" if name in required else ""
        yield [f"`{path}`", schema_type(sub), needed, description + default]
        if depth < 3:
            if sub.get("type") == "object" and "properties" in sub:
                yield from _fields(sub, f"{path}.", depth + 1)
            items = sub.get("items", {})
            if sub.get("type") == "array" and items.get("type") == "object":
                yield from _fields(items, f"{path}[].", depth + 1)


def render_api(schema: dict[str, Any]) -> str:
    info = schema["info"]
    out = [
        "# HTTP API reference\n",
        GENERATED.format(source="the service's OpenAPI schema, `create_app(Settings()).openapi()`"),
        f"{info['title']} {info['version']}, OpenAPI {schema['openapi']}. A running service serves "
        "the same schema at `/openapi.json`, with Swagger UI at `/docs` and ReDoc at `/redoc` "
        "(no external URL: they work on an air-gapped network). Errors and status codes are "
        "explained in [Errors and status codes](errors.md); limits and timeouts in "
        "[Settings](settings.md).\n",
        "**Authentication**: with `RDAD_API_KEY` set, the predict, model and Open Inference "
        "Protocol routes need `Authorization: Bearer <key>` (401 otherwise, before the body is "
        "read); the health routes and `/metrics` need it too only with `RDAD_AUTH_HEALTH` / "
        "`RDAD_AUTH_METRICS`. Without a key nothing is checked, and `POST /models/{name}/reload` "
        "is off (403) unless `RDAD_RELOAD_WITHOUT_KEY=true`.\n",
        info.get("description", "") + "\n",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append((method.upper(), path, op))
    out.append(
        table(
            ["method", "path", "what it does"],
            [
                [method, f"[`{path}`](#{_op_anchor(method, path)})", op.get("summary", "")]
                for ops in by_tag.values()
                for method, path, op in ops
            ],
        )
    )
    for tag, operations in by_tag.items():
        out.append(f"## {tag[:1].upper()}{tag[1:]}\n")
        for method, path, op in operations:
            out.append(_render_operation(method, path, op))
    out.append("## Schemas\n")
    for name, sub in schema.get("components", {}).get("schemas", {}).items():
        out.append(f"### {name} {{#{_anchor(name)}}}\n")
        if sub.get("description"):
            out.append(rst_to_md(sub["description"]) + "\n")
        rows = list(_fields(sub))
        if rows:
            out.append(table(["field", "type", "required", "description"], rows))
        else:
            out.append(f"Type: {schema_type(sub)}.\n")
    return "\n".join(out)


def _op_anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")


def _render_operation(method: str, path: str, op: dict[str, Any]) -> str:
    out = [f"### `{method} {path}` {{#{_op_anchor(method, path)}}}\n"]
    if op.get("summary"):
        out.append(f"**{op['summary']}**\n")
    if op.get("description"):
        out.append(rst_to_md(op["description"]).strip() + "\n")
    params = op.get("parameters", [])
    if params:
        rows = []
        for p in params:
            sub = p.get("schema", {})
            default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
            rows.append(
                [
                    f"`{p['name']}`",
                    p["in"],
                    schema_type(sub),
                    "yes" if p.get("required") else "",
                    default,
                    p.get("description", sub.get("description", "")),
                ]
            )
        out.append("Parameters:\n")
        out.append(table(["name", "in", "type", "required", "default", "description"], rows))
    body = op.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        kinds = ", ".join(f"`{k}`" for k in body.get("content", {}))
        out.append(f"Request body ({required}): {kinds}. {body.get('description', '')}\n")
        for kind, content in body.get("content", {}).items():
            sub = content.get("schema", {})
            rows = list(_fields(sub))
            if rows:
                out.append(f"`{kind}` fields:\n")
                out.append(table(["field", "type", "required", "description"], rows))
    responses = op.get("responses", {})
    if responses:
        rows = []
        for status, response in sorted(responses.items()):
            bodies = []
            for kind, content in response.get("content", {}).items():
                sub = content.get("schema")
                bodies.append(f"`{kind}`" + (f": {schema_type(sub)}" if sub else ""))
            rows.append([status, response.get("description", ""), "; ".join(bodies)])
        out.append("Responses:\n")
        out.append(table(["status", "meaning", "body"], rows))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Settings


# Fields with neither an attribute docstring in Settings nor an `rdad serve` flag whose help says
# what they do. The build fails when one of these gets a docstring or a flag, or disappears, so
# this list only ever shrinks: prefer a docstring in service/settings.py.
FALLBACK_DESCRIPTIONS: dict[str, str] = {}


def settings_sections() -> dict[str, str]:
    """Field name → the ``# --- section ---`` comment above it in ``Settings``."""
    from rdad.service import settings as module

    section, found = "", {}
    in_class = False
    for line in Path(module.__file__).read_text().splitlines():
        if line.startswith("class Settings("):
            in_class = True
            continue
        if in_class and line and not line.startswith(" "):
            break
        if not in_class:
            continue
        if heading := re.match(r"\s+# --- (.+?) -+$", line):
            section = heading.group(1)
        elif field := re.match(r"    (\w+): ", line):
            found[field.group(1)] = section
    return found


def attribute_docstrings(cls: type) -> dict[str, str]:
    """``name: type = value`` followed by a string literal: that string, per field."""
    import inspect

    tree = ast.parse(inspect.getsource(sys.modules[cls.__module__]))
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    docs = {}
    for prev, stmt in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        ):
            docs[prev.target.id] = inspect.cleandoc(stmt.value.value)
    return docs


def serve_flags() -> dict[str, tuple[list[str], str]]:
    """Settings field → (its `rdad serve` flags, their help), read from the real parser."""
    from rdad.cli import build_parser

    parser = build_parser("serve")
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {
        action.dest: (list(action.option_strings), action.help or "")
        for action in sub.choices["serve"]._actions
        if action.option_strings and action.dest != "help"
    }


def type_name(annotation: Any) -> str:
    from pydantic import SecretStr

    args = get_args(annotation)
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(f"`{a}`" for a in args)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in rest) + ", or unset"
    if origin is list:
        return f"comma-separated {type_name(args[0])}s"
    names = {
        bool: "true/false",
        int: "integer",
        float: "number",
        str: "text",
        Path: "path",
        SecretStr: "secret",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def constraint(metadata: list[Any]) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    bits = []
    for item in metadata:
        for attr, sign in signs.items():
            value = getattr(item, attr, None)
            if value is not None:
                bits.append(f"{sign} {value:g}")
    return ", ".join(bits)


@contextlib.contextmanager
def _cache_home() -> Iterator[None]:
    """Defaults under the user's cache folder (the model cache) shown as ``~/.cache/...``, not
    as the build machine's path."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = "~/.cache"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved


def default_text(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        with _cache_home():
            value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple):
        return "`" + ",".join(str(v) for v in value) + "`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def render_settings() -> str:
    from rdad.service.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    docs = attribute_docstrings(Settings)
    flags = serve_flags()
    sections = settings_sections()
    fields = Settings.model_fields

    stale = sorted(
        name
        for name in FALLBACK_DESCRIPTIONS
        if name not in fields or name in docs or flags.get(name, ("", ""))[1]
    )
    if stale:
        raise SystemExit(f"docs/_gen/gen_pages.py: drop FALLBACK_DESCRIPTIONS for {stale}")

    def env(name: str) -> str:
        return f"{prefix}{name}".upper()

    def link_fields(text: str, own: str) -> str:
        # ``max_delay_ms`` in a docstring is the variable RDAD_MAX_DELAY_MS to a reader here
        # (a field naming itself means something else: uvicorn's own ``root_path``).
        return re.sub(
            r"`(\w+)`",
            lambda m: f"`{env(m.group(1))}`" if m.group(1) in fields.keys() - {own} else m.group(0),
            text,
        )

    def sentence(text: str) -> str:
        # Flag help is terse ("bind address (default ...)"): made a sentence like the docstrings.
        text = text.strip()
        return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")

    grouped: dict[str, list[list[str]]] = {}
    missing = []
    for name, field in fields.items():
        flag_names, flag_help = flags.get(name, ([], ""))
        description = (
            docs.get(name)
            or (flag_help and sentence(flag_help))
            or FALLBACK_DESCRIPTIONS.get(name, "")
        )
        if not description:
            missing.append(name)
        kind = type_name(field.annotation)
        if bounds := constraint(field.metadata):
            kind += f" ({bounds})"
        flag = "<br>".join(f"`{f}`" for f in flag_names) or "(no flag)"
        row = [
            f"`{env(name)}`<br>{flag}",
            kind,
            default_text(field),
            link_fields(rst_to_md(description), name),
        ]
        grouped.setdefault(sections.get(name) or "other", []).append(row)
    if missing:
        raise SystemExit(
            f"docs/_gen/gen_pages.py: Settings fields {missing} have no description: give each "
            "an attribute docstring in service/settings.py"
        )

    out = [
        "# Settings\n",
        GENERATED.format(
            source="the fields of `rdad.service.settings.Settings` and the `rdad serve` parser"
        ),
        f"Every field of the service's settings is an environment variable `{prefix}<FIELD>`; "
        "most are also an `rdad serve` flag, and a flag wins over its variable. List values are "
        f"comma-separated (`{prefix}PROVIDERS=cuda,cpu`). In containers set them in "
        "`docker-compose.yml` or the Kubernetes manifest ([Deploy](deploy.md)).\n",
        "Settings that cannot work together are refused at start with the reason, before any "
        "model loads: a queue shorter than the files one request may bring, a drain delay not "
        "below the grace period, a memory budget smaller than one image at the pixel limit "
        "being decoded beside one upload at the size limit, a pixel limit over twice Pillow's "
        "decompression-bomb limit.\n",
    ]
    for section, rows in grouped.items():
        out.append(f"## {section[:1].upper()}{section[1:]}\n")
        out.append(table(["variable / `rdad serve` flag", "type", "default", "description"], rows))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Prometheus metrics


def render_metrics() -> str:
    from prometheus_client.metrics import MetricWrapperBase

    from rdad.service.metrics import Metrics

    metrics = Metrics(max_batch_size=16)
    rows = []
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        kind = value._type
        name = f"`{value._name}_total`" if kind == "counter" else f"`{value._name}`"
        if kind == "histogram":
            name += " (`_bucket`, `_sum`, `_count`)"
        labels = ", ".join(f"`{label}`" for label in value._labelnames) or "—"
        rows.append([name, kind, labels, value._documentation])
    return "\n".join(
        [
            "# Metrics\n",
            GENERATED.format(source="the metrics `rdad.service.metrics.Metrics` registers"),
            "`GET /metrics` answers in the Prometheus text format: the metrics below, plus the "
            "client's process metrics (`process_resident_memory_bytes`, CPU seconds, open file "
            "descriptors) with one server process. With `rdad serve --workers N` the answer sums "
            "every worker ([Several workers](workers.md)). The Grafana dashboard and alert "
            "rules built on them are in [Deploy](deploy.md#monitoring).\n",
            table(["metric", "type", "labels", "meaning"], rows),
        ]
    )


# ------------------------------------------------------------------------------------------------
# Command line


def render_cli() -> str:
    from rdad.cli import COMMANDS, build_parser

    out = [
        "# Command line\n",
        GENERATED.format(source="`rdad COMMAND --help`"),
        "One entry point, `rdad`, with one subcommand per step. Every subcommand exits 0 on "
        "success and non-zero with a one-line reason on stderr otherwise (`RDAD_DEBUG=1` shows "
        "the traceback of an unexpected failure); wrong arguments exit 2.\n",
    ]
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        for name, (_module, summary) in COMMANDS.items():
            parser = build_parser(name)
            (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            text = sub.choices[name].format_help()
            out.append(f"## rdad {name}\n\n{summary[:1].upper()}{summary[1:]}.\n")
            out.append("```text\n" + text.rstrip() + "\n```\n")
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Module map


PACKAGES = [
    ("rdad", "rdad", "torch-free shared code and the command line"),
    ("rdad/commands", "rdad.commands", "one module per `rdad` subcommand"),
    ("model", "rdad.model", "PyTorch: the network, training, calibration, evaluation, export"),
    ("service", "rdad.service", "the HTTP service over ONNX Runtime / OpenVINO (no torch)"),
    ("service/routes", "rdad.service.routes", "the HTTP routes"),
]


def module_summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    text = rst_to_md(first_paragraph(doc))
    # One line each: the first sentence, unless that leaves almost nothing.
    sentence = re.match(r"(.+?[.:;])(?=\s+[A-Z(`*]|\s*$)", text)
    if sentence and len(sentence.group(1)) >= 40:
        text = sentence.group(1)
    return text.rstrip(":;") or "*(no module docstring)*"


def render_modules(root: Path = REPO) -> str:
    out = [
        "# Module map\n",
        GENERATED.format(source="each module's docstring"),
        "Every module under `rdad/`, `model/` and `service/` with the first sentence of its "
        "docstring. `model/` and `service/` are installed as `rdad.model` and `rdad.service`. "
        "How a request travels through these modules: [Architecture](architecture.md).\n",
    ]
    for folder, package, about in PACKAGES:
        out.append(f"## `{package}` — {about}\n")
        rows = []
        for path in sorted((root / folder).glob("*.py")):
            if path.name == "__init__.py":
                continue
            rows.append([f"`{folder}/{path.name}`", module_summary(path)])
        out.append(table(["module", "what it is"], rows))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------


PAGES = {
    "api.md": lambda: render_api(openapi_schema()),
    "settings.md": render_settings,
    "metrics.md": render_metrics,
    "cli.md": render_cli,
    "modules.md": render_modules,
}


def main() -> None:
    import mkdocs_gen_files

    for name, render in PAGES.items():
        # The generators print nothing; a stray print (or a log line of an import) stays out.
        with contextlib.redirect_stdout(io.StringIO()):
            text = render()
        with mkdocs_gen_files.open(name, "w") as page:
            page.write(text)


if __name__ in {"__main__", "<run_path>"}:
    main()
