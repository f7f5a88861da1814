"""Sequential erasure requests: erase "seven", then "two", then "five", ... each on top of the previous result.

    summary = erase_sequence("tiny-sd", "uce", [["seven"], ["two"], ["five"]], {"erase_scale": 3.0},
                             output_dir="out/seq", compare_single=True)

Each request is one :func:`~concept_erase.diffusion.erasure.erase` call whose ``model`` is the previous request's
erasure directory, so every step directory (``01-seven/``, ``02-two/``, ...) is an ordinary erasure output: its
artifact is relative to the original base model, its ``erasure.json`` names every concept erased so far and its
``requests.json`` carries the whole request log. A request for a concept already erased is a no-op (recorded in the
log, no second edit).

With ``evaluate`` each step is scored (``eval/01-seven/`` ...: the harness of
:mod:`concept_erase.diffusion.evaluation`, every concept erased so far as forgotten, the rest retained), and
``sequence.json`` / ``sequence.md`` / ``sequence.png`` show forget accuracy of every erased concept and the retain
accuracy after each request. ``compare_single`` also erases the union of all requests in one request (``single/``)
and compares it with the end of the sequence. ``oracle``: ``cached`` (default: a shipped or cached retrain oracle
when there is one, never training), ``auto`` (train missing oracles: ~15-20 min each on CPU) or ``none``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no global backend state

from concept_erase.core.config import config_to_dict
from concept_erase.core.errors import ConfigError
from concept_erase.core.io import check_output_dir, config_paths, output_target, write_json
from concept_erase.core.registry import get_method
from concept_erase.diffusion.erasure import erase, erasure_base, read_erasure
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure, judge_inputs
from concept_erase.diffusion.oracle import find_oracle
from concept_erase.diffusion.presets import Settings, resolve_settings

__all__ = ["DRIFT_GOAL", "ORACLE_CHOICES", "SEQUENCE_FILE", "erase_sequence", "normalize_requests"]

SEQUENCE_FILE = "sequence.json"
ORACLE_CHOICES = ("cached", "auto", "none")
DRIFT_GOAL = 0.05  # the first request's concept may come back by at most this much (forget accuracy) by the end


def normalize_requests(requests: Any) -> list[list[str]]:
    """``requests`` as a list of requests, each a non-empty list of concepts (a bare string is one request of one
    concept); one-line errors for anything else."""
    if isinstance(requests, str) or not isinstance(requests, (list, tuple)) or not requests:
        raise ConfigError("requests must be a non-empty list of requests, each a concept or a list of concepts")
    result = []
    for number, request in enumerate(requests, 1):
        concepts = [request] if isinstance(request, str) else request
        if not isinstance(concepts, (list, tuple)) or not all(isinstance(c, str) for c in concepts):
            raise ConfigError(f"request {number} must be a concept or a list of concepts, got {request!r}")
        cleaned = list(dict.fromkeys(" ".join(c.split()) for c in concepts if c.strip()))
        if not cleaned:
            raise ConfigError(f"request {number} is empty: name at least one concept")
        result.append(cleaned)
    return result


def _slug(concepts: list[str]) -> str:
    text = "+".join(concepts).lower()
    return "".join(ch if ch.isalnum() or ch in "+-_" else "_" for ch in text)[:60] or "request"


def _oracle_for(oracle: str, base, concepts: list[str]):
    """What ``evaluate_erasure`` gets as its oracle: ``cached`` is a shipped or cached one, never trained."""
    if oracle != "cached":
        return oracle
    try:
        return find_oracle(base, concepts) or "none"
    except ConfigError:  # a model without a known recipe has no oracle
        return "none"


def _scores(metrics: dict[str, Any] | None, forget: list[str]) -> dict[str, Any] | None:
    if metrics is None:
        return None
    per = metrics["per_concept"]
    return {
        "forget": {c: per[c].get("accuracy") for c in forget},
        "forget_accuracy": metrics["forget_accuracy"],
        "retain_accuracy": metrics["retain_accuracy"],
    }


def _evaluate(step_dir: Path, eval_dir: Path, evaluation: EvaluationConfig, oracle: str, base, judge) -> dict:
    record = read_erasure(step_dir)
    forget = list(record["concepts"])
    eval_dir.mkdir(parents=True)
    metrics = evaluate_erasure(
        step_dir, evaluation, oracle=_oracle_for(oracle, base, forget), judge=judge, output_dir=eval_dir, atomic=False
    )
    return {
        **_scores(metrics, forget),
        "retain": list(metrics["retain"]),
        "original": _scores(metrics["original"], forget),
        "oracle": _scores(metrics["oracle"], forget),
        "oracle_source": metrics["oracle_source"],
        "eval_seconds": metrics["seconds"],
    }


def erase_sequence(
    model: str | Path | None,
    method: str,
    requests: list[list[str]] | list[str],
    config: dict | Any = None,
    output_dir: str | Path = "",
    *,
    evaluate: bool = True,
    evaluation: EvaluationConfig | None = None,
    oracle: str = "cached",
    compare_single: bool = False,
    judge: str | Path | None = None,
    overwrite: bool = False,
    atomic: bool = True,
    presets: bool = True,
    progress=None,
) -> dict[str, Any]:
    """Apply ``requests`` one after another with ``method`` (``config``: its keys, as for ``erase``), starting from
    ``model`` (a pipeline, asset name, or an erasure directory to continue); write each step's erasure directory,
    its evaluation (``evaluate``), the one-request comparison (``compare_single``) and ``sequence.json`` /
    ``sequence.md`` / ``sequence.png`` to ``output_dir`` (atomically). ``progress``: a callable given one line per
    finished request. Returns the ``sequence.json`` summary."""
    requests = normalize_requests(requests)
    if oracle not in ORACLE_CHOICES:
        raise ConfigError(f"oracle must be one of {', '.join(ORACLE_CHOICES)}, got {oracle!r}")
    if not output_dir:
        raise ConfigError("output_dir is empty: name the directory the sequence is written to")
    entry = get_method(method, tag="diffusion")
    base = erasure_base(model)  # an erasure directory: its original base model
    settings = config if isinstance(config, Settings) else resolve_settings(entry, base, config, presets)
    evaluation = evaluation if evaluation is not None else EvaluationConfig()
    start_model = Path(model) if model is not None and _is_erasure_dir(model) else None
    inputs = [start_model, base, *config_paths(config_to_dict(settings.config))]
    inputs += judge_inputs(judge, None, evaluation) if evaluate else []
    if atomic:
        check_output_dir(output_dir, overwrite, inputs)
    say = progress or (lambda line: None)
    begin = time.perf_counter()
    with output_target(output_dir, overwrite, inputs, atomic) as tmp:
        steps, previous = [], model
        for index, request in enumerate(requests, 1):
            name = f"{index:02d}-{_slug(request)}"
            (tmp / name).mkdir()
            record = erase(previous, entry.name, request, settings, output_dir=tmp / name, atomic=False)
            step = {
                "index": index,
                "request": request,
                "erased": record["erased"],
                "concepts": list(record["concepts"]),
                "noop": record["noop"],
                "note": record.get("note", ""),
                "dir": name,
                "erase_seconds": record["seconds"],
            }
            if evaluate:
                step.update(_evaluate(tmp / name, tmp / "eval" / name, evaluation, oracle, base, judge))
            steps.append(step)
            say(_step_line(step))
            previous = tmp / name
        single = None
        if compare_single:
            union = list(dict.fromkeys(c for r in requests for c in r))
            (tmp / "single").mkdir()
            record = erase(model, entry.name, union, settings, output_dir=tmp / "single", atomic=False)
            single = {
                "request": union,
                "concepts": list(record["concepts"]),
                "dir": "single",
                "erase_seconds": record["seconds"],
            }
            if evaluate:
                single.update(_evaluate(tmp / "single", tmp / "eval" / "single", evaluation, oracle, base, judge))
            say(_step_line({**single, "index": "one request", "noop": False}))
        base_name = read_erasure(tmp / steps[0]["dir"])["base_model"]  # as erasure.json names it (an asset's name)
        summary = _summary(entry.name, model, base_name, requests, steps, single, evaluate, evaluation)
        summary["seconds"] = round(time.perf_counter() - begin, 3)
        write_json(tmp / SEQUENCE_FILE, summary)
        (tmp / "sequence.md").write_text(render_sequence(summary))
        if evaluate:
            plot_sequence(summary, tmp / "sequence.png")
    return summary


def _is_erasure_dir(model) -> bool:
    return Path(model).is_dir() and read_erasure(model) is not None


def _step_line(step: dict) -> str:
    head = f"request {step['index']}: {', '.join(step['request'])}" + (
        " (no-op: already erased)" if step["noop"] else ""
    )
    if "forget" not in step:
        return head
    forget = ", ".join(f"{c} {_pct(a)}" for c, a in step["forget"].items())
    return f"{head}; forget {forget}; retain {_pct(step['retain_accuracy'])}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _summary(method, model, base, requests, steps, single, evaluate, evaluation) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "method": method,
        "model": str(model) if model is not None else None,
        "base_model": str(base),
        "requests": requests,
        "steps": steps,
        "single": single,
        "final_dir": steps[-1]["dir"],
        "evaluation": {
            "num_images": evaluation.num_images,
            "num_inference_steps": evaluation.num_inference_steps,
            "seed": evaluation.seed,
        }
        if evaluate
        else None,
        "first_request": None,
    }
    if evaluate:
        first = [c for c in requests[0] if c in steps[0]["forget"]]
        after_own = {c: steps[0]["forget"][c] for c in first}
        at_end = {c: steps[-1]["forget"].get(c) for c in first}
        drift = {c: at_end[c] - after_own[c] for c in first if None not in (at_end[c], after_own[c])}
        worst = max(drift.values()) if drift else None
        summary["first_request"] = {
            "concepts": first,
            "forget_after_own_request": after_own,
            "forget_at_end": at_end,
            "drift": drift,
            "goal": f"forget accuracy within {100 * DRIFT_GOAL:.0f} points of where it was after its own request",
            "goal_met": None if worst is None else bool(worst <= DRIFT_GOAL + 1e-9),
        }
        if single is not None:
            end = steps[-1]
            summary["comparison"] = {
                "sequential": {"forget": end["forget"], "retain_accuracy": end["retain_accuracy"]},
                "single": {"forget": single["forget"], "retain_accuracy": single["retain_accuracy"]},
                "forget_accuracy_difference": _diff(end["forget_accuracy"], single["forget_accuracy"]),
                "retain_accuracy_difference": _diff(end["retain_accuracy"], single["retain_accuracy"]),
            }
    return summary


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def render_sequence(summary: dict[str, Any]) -> str:
    """``sequence.md``: one row per request (forget accuracy of each concept erased so far, retain accuracy on the
    rest), the one-request erasure of the union, and the first request's drift."""
    steps, single = summary["steps"], summary["single"]
    lines = [f"# Sequential erasure with {summary['method']} from {summary['base_model']}", ""]
    concepts = list(dict.fromkeys(c for s in steps for c in s["concepts"]))
    if summary["evaluation"] is None:
        lines += ["| request | concepts | erased now | no-op |", "|---|---|---|---|"]
        for s in steps:
            lines.append(f"| {s['index']} | {', '.join(s['request'])} | {', '.join(s['erased'])} | {s['noop']} |")
        return "\n".join(lines) + "\n"
    head = ["request", "concepts", *[f"forget {c}" for c in concepts], "forget (mean)", "retain", "oracle retain"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label, request, s):
        cells = [_pct(s["forget"].get(c)) if c in s["forget"] else "" for c in concepts]
        oracle = _pct(s["oracle"]["retain_accuracy"]) if s.get("oracle") else "n/a"
        mean, retain = _pct(s["forget_accuracy"]), _pct(s["retain_accuracy"])
        return f"| {label} | {request} | " + " | ".join([*cells, mean, retain, oracle]) + " |"

    for s in steps:
        lines.append(row(str(s["index"]) + (" (no-op)" if s["noop"] else ""), ", ".join(s["request"]), s))
    if single is not None:
        lines.append(row("one request", ", ".join(single["request"]), single))
    original = steps[0]["original"]
    lines += [
        "",
        f"Original model: forget {_pct(original['forget_accuracy'])} on the first request's concepts, "
        f"retain {_pct(original['retain_accuracy'])}.",
    ]
    first = summary["first_request"]
    if first and first["drift"]:
        drift = ", ".join(
            f"{c}: {_pct(first['forget_after_own_request'][c])} after its own request, {_pct(first['forget_at_end'][c])}"
            f" after request {len(steps)} ({100 * d:+.1f} points)"
            for c, d in first["drift"].items()
        )
        verdict = "met" if first["goal_met"] else "missed"
        lines += ["", f"First request: {drift}; goal ({first['goal']}): {verdict}."]
    evaluation = summary["evaluation"]
    lines += [
        "",
        f"{evaluation['num_images']} images per concept, {evaluation['num_inference_steps']} sampler steps, "
        f"seed {evaluation['seed']}; retain = every concept not erased so far.",
    ]
    return "\n".join(lines) + "\n"


def plot_sequence(summary: dict[str, Any], path: Path) -> None:
    """``sequence.png``: x = request number; a line per erased concept (forget accuracy from its own request on)
    and the retain accuracy on the rest; the one-request erasure's values as hollow markers at the end."""
    steps, single = summary["steps"], summary["single"]
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    concepts = list(dict.fromkeys(c for s in steps for c in s["concepts"]))
    colours = {}
    for concept in concepts:
        xs = [s["index"] for s in steps if s["forget"].get(concept) is not None]
        ys = [100 * s["forget"][concept] for s in steps if s["forget"].get(concept) is not None]
        (line,) = ax.plot(xs, ys, marker="o", label=f"forget {concept}")
        colours[concept] = line.get_color()
    xs = [s["index"] for s in steps]
    ax.plot(
        xs,
        [100 * s["retain_accuracy"] for s in steps],
        color="black",
        linestyle="--",
        marker="s",
        label="retain (the rest)",
    )
    if single is not None:
        end = len(steps) + 0.25
        for concept, value in single["forget"].items():
            if value is not None:
                ax.plot([end], [100 * value], marker="o", fillstyle="none", color=colours.get(concept, "grey"))
        ax.plot(
            [end],
            [100 * single["retain_accuracy"]],
            marker="s",
            fillstyle="none",
            color="black",
            label="one request (hollow)",
        )
    ax.set_xticks(xs, [f"{s['index']}\n{'+'.join(s['request'])}" for s in steps])
    ax.set_xlabel("request")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(f"sequential erasure with {summary['method']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
