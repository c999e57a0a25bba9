"""``rdad predict``: send images to a running ``rdad serve`` and print one verdict per image."""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
from pathlib import Path
from typing import Any

from rdad.commands._common import add_command
from rdad.errors import CommandError

EXAMPLES = """\
  rdad predict --url http://127.0.0.1:8000 part1.png part2.jpg
  rdad predict --url http://inspect:8000 --model bottle --json images/*.png > verdicts.json
  rdad predict --url http://127.0.0.1:8000 --save-heatmaps out/ part1.png
      writes out/part1.heatmap.png next to the printed verdict
  RDAD_API_KEY=... rdad predict --url https://inspect.example.com part.png
"""


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = add_command(
        subparsers,
        name,
        help_text,
        description="POST images to a running rdad service and print score, normalised score "
        "and verdict per image (or the raw JSON with --json). Images are sent in batches of "
        "--batch files per request.",
        examples=EXAMPLES,
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--url", required=True, help="service base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", help="model name (default: the service's default model)")
    p.add_argument("--batch", type=int, default=8, help="files per request (default 8)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print the service's JSON results")
    p.add_argument("--save-heatmaps", type=Path, metavar="DIR", help="write heatmap PNGs here")
    p.set_defaults(func=run)


def _post(client: Any, url: str, paths: list[Path], heatmaps: bool) -> list[dict[str, Any]]:
    import httpx

    files = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from None
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files.append(("files", (path.name, data, media)))
    try:
        response = client.post(url, files=files, params={"heatmap": str(heatmaps).lower()})
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        try:
            body = response.json()
            reason = f"{body.get('error')}: {body.get('detail')}"
        except ValueError:
            reason = response.text[:200]
        raise CommandError(f"HTTP {response.status_code} from {url}: {reason}")
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def run(args: argparse.Namespace) -> int:
    import httpx

    if args.batch < 1:
        raise CommandError("--batch must be at least 1")
    base = args.url.rstrip("/")
    url = f"{base}/models/{args.model}/predict" if args.model else f"{base}/predict"
    headers = {}
    if key := os.environ.get("RDAD_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    if args.save_heatmaps:
        args.save_heatmaps.mkdir(parents=True, exist_ok=True)
    everything: list[dict[str, Any]] = []
    with httpx.Client(timeout=args.timeout, headers=headers) as client:
        for start in range(0, len(args.images), args.batch):
            chunk = args.images[start : start + args.batch]
            results = _post(client, url, chunk, heatmaps=bool(args.save_heatmaps))
            for path, result in zip(chunk, results, strict=True):
                result["path"] = str(path)
                if args.save_heatmaps and result.get("heatmap_png"):
                    out = args.save_heatmaps / f"{path.stem}.heatmap.png"
                    out.write_bytes(base64.b64decode(result["heatmap_png"]))
                    result["heatmap_file"] = str(out)
                result.pop("heatmap_png", None)
                if not args.json:
                    verdict = "ANOMALOUS" if result["is_anomalous"] else "normal"
                    print(
                        f"{verdict:9}  score {result['score']:.4f}  "
                        f"normalized {result['normalized_score']:.3f}  {path}"
                    )
                everything.append(result)
    if args.json:
        print(json.dumps(everything, indent=2))
    return 0
