"""Evaluation prompt sets: held-out templates, or a CSV file of prompts in the I2P / UnlearnCanvas layout.

    rows = read_prompt_csv("i2p_nudity.csv")                     # [PromptRow(prompt, seed, guidance, concept), ...]
    by_concept = rows_by_concept(rows, "i2p_nudity.csv", forget=["nudity"])
    plan = image_plan(by_concept["nudity"], num_images=64, seed=0, guidance=7.5)   # ImagePlan(prompts, seeds, guidance)

Columns (a header row is required; other columns, such as I2P's ``categories``, are ignored):

- ``prompt`` (required): the text; every row needs one;
- ``seed`` (optional, I2P: ``evaluation_seed``): an integer in [0, 2**32); empty: the evaluation's seed;
- ``guidance`` (optional, I2P: ``evaluation_guidance``): a finite number >= 0; empty: the evaluation's guidance;
- ``concept`` (optional): the concept the prompt belongs to; a row without one belongs to the forgotten concept
  (allowed only when exactly one is forgotten).

Image ``j`` of a concept with ``n`` rows uses row ``j % n`` and seed ``row seed + j // n``: the rows take turns, as the
templates do, and ``num_images`` equal to the number of rows gives one image per row with the file's own seeds.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from concept_erase.core.config import MAX_CONFIG_BYTES, SEED
from concept_erase.core.errors import ConfigError, InputNotFoundError, excerpt

__all__ = ["COLUMNS", "ImagePlan", "PromptRow", "image_plan", "read_prompt_csv", "rows_by_concept", "template_rows"]

# Our column name -> the names a file may use for it (the I2P names second).
COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt",),
    "seed": ("seed", "evaluation_seed"),
    "guidance": ("guidance", "evaluation_guidance"),
    "concept": ("concept",),
}


@dataclass(frozen=True)
class PromptRow:
    """One prompt; ``seed`` / ``guidance`` None: the evaluation's own; ``row``: its data row in the file (1-based)."""

    prompt: str
    seed: int | None = None
    guidance: float | None = None
    concept: str | None = None
    row: int = 0


class ImagePlan(NamedTuple):
    """Prompt, seed and guidance scale of each image of one concept."""

    prompts: list[str]
    seeds: list[int]
    guidance: list[float]


def template_rows(templates: list[str] | tuple[str, ...], concept: str) -> list[PromptRow]:
    """The rows of ``concept`` from prompt templates (``"{} in pencil"``), with the evaluation's seed and guidance."""
    return [PromptRow(template.format(concept), concept=concept, row=i + 1) for i, template in enumerate(templates)]


def image_plan(rows: list[PromptRow], num_images: int, seed: int, guidance: float) -> ImagePlan:
    """``num_images`` images over ``rows`` (they take turns); image ``j`` has seed ``row seed + j // len(rows)``."""
    plan = ImagePlan([], [], [])
    for j in range(num_images):
        row = rows[j % len(rows)]
        plan.prompts.append(row.prompt)
        plan.seeds.append((row.seed if row.seed is not None else seed) + j // len(rows))
        plan.guidance.append(row.guidance if row.guidance is not None else guidance)
    return plan


def _read_text(path: Path) -> str:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise InputNotFoundError(f"prompt file {excerpt(str(path), quote=False)} {what} (give a CSV file)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"prompt file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError):
        raise ConfigError(f"prompt file {path} is not a readable text file (UTF-8 CSV)") from None


def _columns(path: Path, header: list[str] | None) -> dict[str, str]:
    """Our column name -> the file's, for the columns the file has; a file without a ``prompt`` column is refused."""
    names = [name.strip().lower() for name in header or []]
    found = {}
    for ours, aliases in COLUMNS.items():
        present = [a for a in aliases if a in names]
        if len(present) > 1:
            raise ConfigError(f"prompt file {path} has both {' and '.join(present)} columns; keep one")
        if present:
            found[ours] = header[names.index(present[0])]  # type: ignore[index]
    if "prompt" not in found:
        accepted = ", ".join("|".join(aliases) for aliases in COLUMNS.values())
        shown = excerpt(", ".join(names), quote=False) or "none"
        raise ConfigError(f"prompt file {path} has no 'prompt' column (its columns: {shown}; accepted: {accepted})")
    return found


def _number(text: str) -> float | None:
    """A cell as a float: ``None`` when it is empty, NaN when it is not a number (the caller refuses it)."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return math.nan


def _seed(text: str, where: str) -> int | None:
    value = _number(text)
    if value is None:
        return None
    if not value.is_integer():
        raise ConfigError(f"{where}: seed {excerpt(text)} is not an integer")
    if int(value) not in SEED:
        raise ConfigError(f"{where}: seed {int(value)} must be {SEED}")
    return int(value)


def _guidance(text: str, where: str) -> float | None:
    value = _number(text)
    if value is None:
        return None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: guidance {excerpt(text)} is not a finite number >= 0")
    return value


def read_prompt_csv(path: str | Path) -> list[PromptRow]:
    """The rows of prompt file ``path``; each bad row is refused with one line naming the file, the row and the value."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    columns = _columns(path, reader.fieldnames)
    rows = []
    for number, record in enumerate(reader, start=1):
        where = f"prompt file {path} row {number}"
        cell = {ours: (record.get(theirs) or "").strip() for ours, theirs in columns.items()}
        if not cell["prompt"]:
            raise ConfigError(f"{where}: empty prompt (every row needs a prompt)")
        concept = cell.get("concept", "").lower() or None
        seed, guidance = _seed(cell.get("seed", ""), where), _guidance(cell.get("guidance", ""), where)
        rows.append(PromptRow(cell["prompt"], seed, guidance, concept, number))
    if not rows:
        raise ConfigError(f"prompt file {path} has no prompts (only a header, or nothing)")
    return rows


def rows_by_concept(
    rows: list[PromptRow], path: str | Path, forget: list[str], retain: list[str] | None = None
) -> dict[str, list[PromptRow]]:
    """The rows of each forgotten and retained concept (default retain: the file's other concepts, in file order).

    A row without a concept belongs to the forgotten concept, which must then be the only one; a concept named in
    ``forget`` or ``retain`` must have rows; rows of concepts named in neither are not used.
    """
    grouped: dict[str, list[PromptRow]] = {}
    for row in rows:
        concept = row.concept
        if concept is None:
            if len(forget) != 1:
                raise ConfigError(
                    f"prompt file {path} row {row.row} has no concept: add a concept column, or forget exactly one "
                    f"concept (forgotten: {', '.join(forget) or 'none'})"
                )
            concept = forget[0]
        grouped.setdefault(concept, []).append(row)
    if retain is None:
        retain = [c for c in grouped if c not in forget]
    missing = [c for c in [*forget, *retain] if c not in grouped]
    if missing:
        raise ConfigError(
            f"prompt file {path} has no prompts for {', '.join(missing)} (its concepts: {', '.join(grouped)})"
        )
    return {c: grouped[c] for c in dict.fromkeys([*forget, *retain])}
