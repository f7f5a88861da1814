"""One report comparing erasure methods with each other, the original model and the retrain oracle.

    rows = [summarize_evaluation("fmn", "out/eval-fmn/metrics.json"), ...]
    write_erasure_report(rows, "out/report", title="Erasing seven")

Each row joins an evaluation's ``metrics.json`` with the ``erasure.json`` of the erasure it scored: forget and retain
accuracy (with the original's and the oracle's), Frechet distance, erasure wall time as a share of the oracle's
training time, peak memory and artifact size, and whether each goal is met. The report directory holds
``report.md``, ``report.json``, ``comparison.png`` (accuracies and cost per method) and ``grid.png`` (the same prompts
and seeds through the original, every erased model and the oracle).

Attacks (``attack.json`` of :func:`~concept_erase.diffusion.attack.attack_erasure`) join the rows of the erasure
they attacked (:func:`summarize_attack`, :func:`attach_attacks`): each row gains its attack success rate under every
attack (``asr_ti``, ``asr_prompt``, ...), the table a column per attack beside the original's and the oracle's ASR
under the same attack and budget, and ``comparison.png`` a panel of them.

    attacks = [summarize_attack("attack_fmn_ti", "out/attack-fmn-ti/attack.json"), ...]
    attach_attacks(rows, attacks)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend state

from concept_erase.core.errors import ConfigError
from concept_erase.core.io import write_json
from concept_erase.core.readers import read_json_object, require
from concept_erase.diffusion.erasure import read_erasure
from concept_erase.diffusion.evaluation import EvaluationConfig, load_samples, plot_grid
from concept_erase.diffusion.tiny_sd import recorded_training_seconds

__all__ = ["GOALS", "attach_attacks", "summarize_attack", "summarize_evaluation", "write_erasure_report"]

# The demo's goals: forget accuracy within 10 points of the oracle's, retain accuracy within 3 points of the
# original's, and erasure time as a share of the oracle's training time (per method).
GOALS = {"forget_gap_to_oracle": 0.10, "retain_drop": 0.03, "time_share": {"fmn": 0.02, "salun": 0.10, "esd": 0.10}}


_SCORES = ("forget_accuracy", "retain_accuracy", "frechet_to_real")


def _forget_per_concept(scored: dict[str, Any], forget: list[str]) -> dict[str, float | None]:
    """Each forgotten concept's own score in one model's metrics (its accuracy, or NudeNet's exposed share); None
    for a concept the metrics do not score one by one (an evaluation written before ``per_concept``)."""
    per = scored.get("per_concept")
    per = per if isinstance(per, dict) else {}
    out = {}
    for concept in forget:
        entry = per.get(concept) if isinstance(per.get(concept), dict) else {}
        value = entry.get("accuracy", entry.get("exposed_share"))
        out[concept] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return out


def summarize_evaluation(name: str, metrics_path: str | Path) -> dict[str, Any]:
    """A report row from an evaluation's metrics.json (and its erasure's erasure.json, when it scored one)."""

    path = Path(metrics_path)
    if not path.is_file():
        raise ConfigError(f"evaluation metrics not found: {path}")
    what = "evaluation metrics"
    metrics = read_json_object(path, what)
    for key in ("forget_accuracy", "retain_accuracy"):
        require(metrics, key, (float, type(None)), path, what)
    for key in ("forget", "retain"):
        require(metrics, key, list, path, what)
    scored = {"original": require(metrics, "original", dict, path, what)}
    scored["oracle"] = require(metrics, "oracle", (dict, type(None)), path, what, optional=True)
    for source, values in scored.items():
        missing = [k for k in _SCORES if values is not None and k not in values]
        if missing:
            raise ConfigError(f"{what} {path} is corrupt: {source} has no {', '.join(missing)}")
    settings = require(metrics, "settings", dict, path, what, optional=True) or {}
    erasure = read_erasure(settings["erasure"]) if settings.get("erasure") else None
    oracle, original = metrics.get("oracle"), metrics["original"]
    forget = metrics["forget"]
    row: dict[str, Any] = {
        "name": name,
        "method": erasure["method"] if erasure else None,
        "metrics_path": str(path),
        "forget_accuracy": metrics["forget_accuracy"],
        "retain_accuracy": metrics["retain_accuracy"],
        "frechet_to_real": metrics.get("frechet_to_real"),
        "frechet_to_original": metrics.get("frechet_to_original"),
        "forget_per_concept": _forget_per_concept(metrics, forget),
        "original": {k: original[k] for k in _SCORES} | {"forget_per_concept": _forget_per_concept(original, forget)},
        "oracle": (
            {k: oracle[k] for k in _SCORES} | {"forget_per_concept": _forget_per_concept(oracle, forget)}
            if oracle
            else None
        ),
        "oracle_seconds": recorded_training_seconds(settings.get("oracle")),
        "samples": str(path.parent / "samples.safetensors"),
        "forget": metrics["forget"],
        "retain": metrics["retain"],
        "settings": settings,
    }
    if erasure is not None:
        artifact = erasure.get("artifact", {})
        rss = (erasure.get("peak_memory") or {}).get("cpu_peak_rss", 0)
        row.update(
            seconds=erasure.get("seconds"),
            steps=erasure.get("steps"),
            peak_memory_mb=round(rss / 2**20, 1) if isinstance(rss, (int, float)) else None,
            artifact_format=artifact.get("format"),
            artifact_bytes=artifact.get("bytes"),
            artifact_fraction=artifact.get("fraction_of_unet"),
        )
    row["goals"] = _goals(row)
    return row


def summarize_attack(step: str, attack_path: str | Path) -> dict[str, Any]:
    """What a report needs from an attack's attack.json: the attack, its budget, the ASRs and what it attacked."""

    path = Path(attack_path)
    if not path.is_file():
        raise ConfigError(f"attack metrics not found: {path}")
    what = "attack metrics"
    metrics = read_json_object(path, what)
    kind = require(metrics, "attack", str, path, what)
    concept = require(metrics, "concept", str, path, what)
    asr = require(metrics, "asr", dict, path, what)
    for key in ("original", "erased", "oracle"):
        value = asr.get(key)
        if key not in asr or isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            raise ConfigError(f"{what} {path} is corrupt: asr.{key} must be a number or null")
    if asr["erased"] is None or asr["original"] is None:
        raise ConfigError(f"{what} {path} is corrupt: asr.original and asr.erased must be numbers")
    budget = require(metrics, "budget", dict, path, what)
    settings = require(metrics, "settings", dict, path, what)
    unattacked = require(metrics, "unattacked", dict, path, what, optional=True) or {}
    return {
        "step": step,
        "attack": kind,
        "concept": concept,
        "path": str(path),
        "asr": asr["erased"],
        "asr_original": asr["original"],
        "asr_oracle": asr["oracle"],
        "unattacked": unattacked.get("erased"),
        "budget": budget,
        "attack_seconds": metrics.get("attack_seconds"),
        "erasure": settings.get("erasure"),
        "model": settings.get("model"),
        "adapter": settings.get("adapter"),
    }


def _same_path(a: str | Path | None, b: str | Path | None) -> bool:
    return a is not None and b is not None and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _attacked(row: dict[str, Any], attack: dict[str, Any]) -> bool:
    """Whether ``attack`` attacked the model ``row`` evaluated: the same erasure directory or, for a pipeline (with
    an adapter) given directly, the same pipeline and adapter."""
    settings = row["settings"]
    if attack["erasure"] is not None or settings.get("erasure"):
        return _same_path(attack["erasure"], settings.get("erasure"))
    if not _same_path(attack["model"], settings.get("model")):
        return False
    adapter = (settings.get("adapter") or {}).get("path")
    if attack["adapter"] is None or adapter is None:
        return attack["adapter"] is None and adapter is None
    return _same_path(attack["adapter"], adapter) or _same_path(attack["adapter"], Path(adapter).parent)


def attach_attacks(rows: list[dict[str, Any]], attacks: list[dict[str, Any]], strict: bool = True) -> list[dict]:
    """Add each attack (from :func:`summarize_attack`) to the row of the erasure it attacked: ``row["attacks"][kind]``
    and ``row["asr_<kind>"]`` (with ``asr_<kind>_original``, ``asr_<kind>_oracle``). An attack of no row's erasure
    raises :class:`ConfigError` when ``strict``, else it is returned (left out); so is nothing else."""

    left_out = []
    for attack in attacks:
        matches = [row for row in rows if _attacked(row, attack)]
        if not matches:
            if strict:
                evaluated = ", ".join(r["settings"].get("erasure") or r["settings"].get("model") or "?" for r in rows)
                raise ConfigError(
                    f"attack step {attack['step']!r} attacked {attack['erasure'] or attack['model']}, which no "
                    f"evaluation in the report scored (evaluated: {evaluated}); list the evaluation of that erasure"
                )
            left_out.append(attack)
            continue
        for row in matches:
            if attack["concept"] not in row["forget"]:
                raise ConfigError(
                    f"attack step {attack['step']!r} attacked concept {attack['concept']!r}, but evaluation "
                    f"{row['name']!r} erased {', '.join(row['forget'])}: attack the erased concept"
                )
            kind = attack["attack"]
            held = row.setdefault("attacks", {})
            if kind in held:
                raise ConfigError(
                    f"attack steps {held[kind]['step']!r} and {attack['step']!r} both attack {row['name']!r} with "
                    f"{kind}: a report has one column per attack; name one of them in the report's attacks"
                )
            held[kind] = attack
            row[f"asr_{kind}"] = attack["asr"]
            row[f"asr_{kind}_original"] = attack["asr_original"]
            row[f"asr_{kind}_oracle"] = attack["asr_oracle"]
    return left_out


def _attack_kinds(rows: list[dict[str, Any]]) -> list[str]:
    """The attacks in the rows, in the order they first appear."""
    return list(dict.fromkeys(kind for row in rows for kind in row.get("attacks", {})))


def _reference_asr(rows: list[dict[str, Any]], kind: str, model: str) -> list[float | None]:
    """The original's (or the oracle's) ASR under ``kind`` over the rows' attacks (one per attack step)."""
    return [row["attacks"][kind][f"asr_{model}"] for row in rows if kind in row.get("attacks", {})]


def _pct_range(values: list[float | None]) -> str:
    """One share, or the range when the attacks (of different budgets) disagree."""
    known = sorted({v for v in values if v is not None})
    if not known:
        return "n/a"
    return _pct(known[0]) if len(known) == 1 else f"{_pct(known[0])}-{_pct(known[-1])}"


def _budget_text(budget: dict[str, Any]) -> str:
    rate = budget.get("learning_rate")
    parts = [f"{budget.get('steps')} steps", f"learning rate {rate:g}" if isinstance(rate, (int, float)) else ""]
    if budget.get("num_tokens") is not None:
        parts.append(f"{budget['num_tokens']} prefix tokens")
    parts.append(f"{budget.get('num_images')} attacker images")
    parts.append(f"{budget.get('eval_images')} scored generations")
    text = ", ".join(p for p in parts if p)
    return f"{text} (budget defaults: {budget['defaults']})" if budget.get("defaults") else text


def _budgets(rows: list[dict[str, Any]], kind: str) -> str:
    """``kind``'s budget: one text when every attack of that kind had the same, else one per row."""
    texts = {
        row["name"]: _budget_text(row["attacks"][kind]["budget"]) for row in rows if kind in row.get("attacks", {})
    }
    if len(set(texts.values())) == 1:
        return f"{kind}: {next(iter(texts.values()))}"
    return f"{kind}: " + "; ".join(f"{name} {text}" for name, text in texts.items())


def _goals(row: dict[str, Any]) -> dict[str, bool | None]:
    oracle = row["oracle"]
    forget_ok = (
        None if oracle is None else row["forget_accuracy"] - oracle["forget_accuracy"] <= GOALS["forget_gap_to_oracle"]
    )
    retain_ok = row["original"]["retain_accuracy"] - row["retain_accuracy"] <= GOALS["retain_drop"]
    time_ok = None
    share_goal = GOALS["time_share"].get(row.get("method") or "")
    if share_goal is not None and row.get("seconds") is not None and row["oracle_seconds"]:
        row["time_share"] = row["seconds"] / row["oracle_seconds"]
        time_ok = row["time_share"] <= share_goal
    return {"forget": forget_ok, "retain": retain_ok, "time": time_ok}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def _fd(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _several(row: dict[str, Any]) -> list[str]:
    """The erased concepts, when there are several (each gets its own forget column); none for one concept."""
    return list(row["forget"]) if len(row["forget"]) > 1 else []


def _per_concept_cells(scored: dict[str, Any], concepts: list[str]) -> str:
    """`` a | b |``: one model's forget accuracy on each of ``concepts`` (``n/a`` where it was not scored)."""
    per = scored.get("forget_per_concept") or {}
    return "".join(f" {_pct(per.get(concept))} |" for concept in concepts)


def _markdown(rows: list[dict[str, Any]], title: str) -> str:
    first = rows[0]
    oracle = first["oracle"]
    kinds = _attack_kinds(rows)
    attack_head = "".join(f" ASR {kind} |" for kind in kinds)
    several = _several(first)
    concept_head = "".join(f" forget: {concept} |" for concept in several)
    lines = [
        f"# {title}",
        "",
        f"Erased: {', '.join(first['forget'])}. Scored on {first['settings'].get('num_images')} images per concept "
        "from held-out prompt paraphrases never used during erasure, by the embedded digit judge.",
        "",
        "| model | forget acc |"
        + concept_head
        + " retain acc | FD to real | erasure time | time / oracle training | peak RSS | artifact |"
        + attack_head,
        "|---|---|" + "---|" * len(several) + "---|---|---|---|---|---|" + "---|" * len(kinds),
        f"| original | {_pct(first['original']['forget_accuracy'])} |{_per_concept_cells(first['original'], several)}"
        f" {_pct(first['original']['retain_accuracy'])} | {_fd(first['original']['frechet_to_real'])} | | | | |"
        + "".join(f" {_pct_range(_reference_asr(rows, kind, 'original'))} |" for kind in kinds),
    ]
    if oracle:
        oracle_time = f"{first['oracle_seconds']:.0f} s (training)" if first["oracle_seconds"] else ""
        lines.append(
            f"| retrain oracle | {_pct(oracle['forget_accuracy'])} |{_per_concept_cells(oracle, several)}"
            f" {_pct(oracle['retain_accuracy'])} | {_fd(oracle['frechet_to_real'])} | {oracle_time} | 100% | | |"
            + "".join(f" {_pct_range(_reference_asr(rows, kind, 'oracle'))} |" for kind in kinds)
        )
    for row in rows:
        size = (
            f"{row['artifact_format']}, {row['artifact_bytes'] / 1024:.0f} KiB ({_pct(row['artifact_fraction'])} of UNet)"
            if row.get("artifact_bytes")
            else ""
        )
        seconds = f"{row['seconds']:.1f} s" if row.get("seconds") is not None else ""
        memory = f"{row['peak_memory_mb']:.0f} MiB" if row.get("peak_memory_mb") else ""
        attacked = row.get("attacks", {})
        lines.append(
            f"| {row['name']} | {_pct(row['forget_accuracy'])} |{_per_concept_cells(row, several)}"
            f" {_pct(row['retain_accuracy'])} | "
            f"{_fd(row['frechet_to_real'])} | {seconds} | {_pct(row.get('time_share'))} | {memory} | {size} |"
            + "".join(f" {_pct(attacked[kind]['asr']) if kind in attacked else ''} |" for kind in kinds)
        )
    if several:
        lines += [
            "",
            f"Forget acc is the mean over the {len(several)} erased concepts; each one's own accuracy is in its "
            "\"forget:\" column (the original's and the oracle's on the same images' prompts and seeds).",
        ]
    if kinds:
        concept = next(a["concept"] for row in rows for a in row.get("attacks", {}).values())
        lines += [
            "",
            f"ASR (attack success rate): the share of an attack's generations that the judge labels {concept!r}. "
            "Each attack runs with the same budget, attacker images and seeds on the erased model, the original "
            "(the ceiling) and the retrain oracle (the floor: what a perfect unlearner reaches). Attack budgets:",
            "",
            *[f"- {_budgets(rows, kind)}" for kind in kinds],
        ]
    lines += [
        "",
        "Goals: forget accuracy within 10 points of the oracle's; retain accuracy within 3 points of the original's; "
        "erasure time <= 2% (fmn) or 10% (salun, esd) of the oracle's training time.",
        "",
        "| model | forget goal | retain goal | time goal |",
        "|---|---|---|---|",
    ]
    for row in rows:
        g = row["goals"]
        lines.append(f"| {row['name']} | {_mark(g['forget'])} | {_mark(g['retain'])} | {_mark(g['time'])} |")
    lines += ["", "![comparison](comparison.png)", "", "![grid](grid.png)", ""]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    kinds = _attack_kinds(rows)
    fig = Figure(figsize=(16.5 if kinds else 10, 3.8))
    left, right, *attacked = fig.subplots(1, 3 if kinds else 2)
    for offset, key, label in ((-0.2, "forget_accuracy", "forget acc"), (0.2, "retain_accuracy", "retain acc")):
        left.bar(x + offset, [100 * r[key] for r in rows], 0.4, label=label)
    first = rows[0]
    several = _several(first)
    for i, row in enumerate(rows):  # several erased concepts: each one's forget accuracy on its method's bar
        values = [v for v in (row.get("forget_per_concept") or {}).values() if v is not None] if several else []
        left.scatter(
            [i - 0.2] * len(values),
            [100 * v for v in values],
            s=9,
            color="k",
            zorder=3,
            label="forget acc per concept" if i == 0 and values else None,
        )
    left.axhline(100 * first["original"]["retain_accuracy"], color="gray", ls="--", lw=1, label="original retain")
    if first["oracle"]:
        left.axhline(100 * first["oracle"]["forget_accuracy"], color="k", ls=":", lw=1, label="oracle forget")
    left.set_xticks(x, names)
    left.set_ylabel("accuracy judged by the digit classifier (%)")
    left.set_ylim(0, 105)
    left.legend(fontsize=8, loc="center right")
    shares = [100 * r.get("time_share", 0) for r in rows]
    right.bar(x, shares, 0.5, color="tab:green")
    for i, row in enumerate(rows):
        goal = GOALS["time_share"].get(row.get("method") or "")
        if goal is not None:
            right.hlines(100 * goal, i - 0.3, i + 0.3, colors="red", lw=2)
    right.set_xticks(x, names)
    right.set_ylabel("erasure time / oracle training time (%)\nred: goal")
    if kinds:
        _plot_attacks(attacked[0], rows, kinds)
    fig.suptitle(f"erasing {', '.join(first['forget'])}: methods vs the original and the retrain oracle")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_attacks(ax, rows: list[dict[str, Any]], kinds: list[str]) -> None:
    """Grouped bars: each erased model's ASR under each attack (value on top); the original's (dashed) and the
    oracle's (dotted) ASR under the same attack as reference lines: grey when every attack gives the same, else one
    per attack in its colour (attacks of different budgets on several rows: their mean)."""
    x = np.arange(len(rows))
    width = 0.8 / len(kinds)
    colors = {kind: f"C{4 + k}" for k, kind in enumerate(kinds)}  # not the accuracy panel's colours
    for k, kind in enumerate(kinds):
        values = [100 * r["attacks"][kind]["asr"] if kind in r.get("attacks", {}) else np.nan for r in rows]
        bars = ax.bar(x - 0.4 + width * (k + 0.5), values, width, color=colors[kind], label=f"erased, {kind}")
        ax.bar_label(bars, [f"{v:.0f}" if v == v else "" for v in values], fontsize=7, padding=1)
    for model, style in (("original", "--"), ("oracle", ":")):
        levels = {}
        for kind in kinds:
            known = [v for v in _reference_asr(rows, kind, model) if v is not None]
            if known:
                levels[kind] = 100 * float(np.mean(known))
        if len(set(levels.values())) == 1:
            level = next(iter(levels.values()))
            ax.axhline(level, color="gray", ls=style, lw=1.2, label=f"{model} ({', '.join(levels)}): {level:.0f}%")
        else:
            for kind, level in levels.items():
                ax.axhline(level, color=colors[kind], ls=style, lw=1.2, label=f"{model} ({kind}): {level:.0f}%")
    ax.set_xticks(x, [r["name"] for r in rows])
    ax.set_ylabel("attack success rate (%)\n(share judged as the erased concept)")
    ax.set_ylim(-3, 112)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("under attack (same budget on every model)", fontsize=9)


def _grid(rows: list[dict[str, Any]], path: Path) -> bool:
    """original | each erased model | oracle, from the samples every evaluation saved; False if any is missing."""

    if not all(Path(r["samples"]).is_file() for r in rows):
        return False
    loaded = [load_samples(r["samples"]) for r in rows]
    panels = {"original": loaded[0]["original"]}
    panels.update({row["name"]: samples["erased"] for row, samples in zip(rows, loaded)})
    if "oracle" in loaded[0]:
        panels["oracle"] = loaded[0]["oracle"]
    settings = rows[0]["settings"]
    config = EvaluationConfig(
        forget=rows[0]["forget"],
        templates=settings["templates"],
        num_images=settings["num_images"],
        seed=settings["seed"],
    )
    plot_grid(panels, rows[0]["forget"] + rows[0]["retain"], rows[0]["forget"], config, path)
    return True


def write_erasure_report(rows: list[dict[str, Any]], output_dir: str | Path, title: str = "") -> dict[str, str]:
    """Write report.md, report.json, comparison.png and grid.png into ``output_dir`` (which must exist)."""

    if not rows:
        raise ConfigError("an erasure report needs at least one evaluation")
    forgets = {tuple(r["forget"]) for r in rows}
    if len(forgets) > 1:
        raise ConfigError(f"the evaluations erased different concepts ({sorted(forgets)}); report them separately")
    out = Path(output_dir)
    title = title or f"Erasing {', '.join(rows[0]['forget'])} from the tiny Stable Diffusion"
    write_json(out / "report.json", {"title": title, "goals": GOALS, "rows": rows})
    _plot(rows, out / "comparison.png")
    paths = {"report_path": str(out / "report.md"), "report_json": str(out / "report.json")}
    paths["plot_path"] = str(out / "comparison.png")
    if _grid(rows, out / "grid.png"):
        paths["grid_path"] = str(out / "grid.png")
    (out / "report.md").write_text(_markdown(rows, title))
    return paths
