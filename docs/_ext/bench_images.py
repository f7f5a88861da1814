"""MkDocs hook: publish the benchmark plots under ``bench_results/`` with the docs, without copying them.

The plots are written by the benchmark scripts into ``bench_results/`` at the repository root, outside ``docs/``.
This hook adds every PNG there to the build as ``bench_results/<path>``, so a page links to
``bench_results/sisa_accuracy.png`` and ``mkdocs build --strict`` checks that the file exists.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]


def on_files(files: Files, config) -> Files:
    for path in sorted((ROOT / "bench_results").rglob("*.png")):
        uri = path.relative_to(ROOT).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
