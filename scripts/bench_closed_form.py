"""How closed-form erasure (``uce``, and ``rece`` where it is registered) scales with the number of erased concepts on
the SD 1.5-shaped pipeline with random weights (``scripts/_sd15.py``), on CPU, text encoding included.

    python scripts/bench_closed_form.py --output bench_results/closed_form_scale.json     # 2 threads, ~10 min alone
    python scripts/bench_closed_form.py --toy --counts 1 --repeats 1 --output /tmp/cf.json    # tiny pipeline: a smoke

For N concepts the request erases N distinct synthetic two-word names (``kaka kaka``, ``kaka karo``, ...: every one
is plain ASCII the toolkit's tokenizer writes) towards the method's default guide and preserves the same six generic
concepts (``GENERIC_RETAIN``) at every N. Two template sets: ``paper`` (``["{}"]``: the bare concept, as UCE's code
``trainscripts/uce_sd_erase.py`` encodes it) and ``generic`` (the toolkit's eight ``GENERIC_TEMPLATES``, its default
on a model it did not train: eight times the prompts).

Every measurement runs in a fresh interpreter with ``torch.set_num_threads(--threads)``:

* ``method``: the registered method's own function on an :class:`ErasureRequest` (the pipeline already loaded), called
  ``--repeats`` times on the original weights (restored before each call); ``seconds`` is the median, text encoding
  included. A forward hook on the text encoder counts the prompts it encodes and the time spent in it, so the rest is
  the solve. Then the sanity check: for every erased concept ``i``, the edited ``W' c_i`` is closer to the original
  ``W g_i`` (its guide's states) than ``W c_i`` was, summed over every edited projection (``c_i``/``g_i``: the bare
  concept's / guide's text-encoder states from the concept's last token to the end of the context); and the preserved
  concepts' relative drift ``||W' p - W p|| / ||W p||``.
* ``end_to_end``: one ``concept_erase.diffusion.erasure.erase`` call on the saved pipeline (load, the method, the
  weights adapter and ``erasure.json`` written to a temporary directory).

The goal (issue 20): 100 concepts with ``uce`` in at most 5 s on 2 CPU cores (SPEED's GPU figure), with the paper's
template ``{}``. The machine's load average at the start and the end is recorded: figures from a shared machine are
upper bounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _sd15 import command_line, registered, run_isolated, run_worker_or_benchmark, save_sd15_pipeline

from concept_erase.core.io import package_versions
from concept_erase.core.registry import get_method
from concept_erase.diffusion.base import GENERIC_RETAIN, GENERIC_TEMPLATES, ErasureRequest, encode_prompts
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.loading import load_pipeline

METHODS = ("uce", "rece")
TEMPLATES = {"paper": ["{}"], "generic": list(GENERIC_TEMPLATES)}
SYLLABLES = ("ka", "ro", "mi", "ten", "zu", "vel", "dor", "an", "is", "qua")
GOAL_SECONDS = 5.0  # issue 20: 100 concepts with uce on 2 CPU cores, SPEED's GPU figure
GOAL_COUNT = 100


def concept_names(count: int) -> list[str]:
    """``count`` distinct two-word synthetic names (the digits of ``i`` spelled as syllables; up to 10,000)."""
    names = []
    for i in range(count):
        s = [SYLLABLES[(i // 10**k) % 10] for k in (3, 2, 1, 0)]
        names.append(f"{s[0]}{s[1]} {s[2]}{s[3]}")
    return names


# ---------------------------------------------------------------------------------------------------- the workers


def attn2_weights(unet) -> dict[str, torch.nn.Parameter]:
    """Every cross-attention key and value weight, by parameter name."""
    return {
        f"{name}.{proj}.weight": getattr(module, proj).weight
        for name, module in unet.named_modules()
        if name.endswith(".attn2")
        for proj in ("to_k", "to_v")
    }


class EncoderMeter:
    """Counts the prompts the text encoder(s) encode and the seconds spent in them (forward hooks)."""

    def __init__(self, pipe):
        self.prompts, self.seconds, self._start = 0, 0.0, None
        encoders = [getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2")]
        for encoder in (e for e in encoders if e is not None):
            encoder.register_forward_pre_hook(self._before)
            encoder.register_forward_hook(self._after)

    def reset(self) -> None:
        self.prompts, self.seconds = 0, 0.0

    def _before(self, module, args):
        self._start = time.perf_counter()

    def _after(self, module, args, output):
        self.seconds += time.perf_counter() - self._start
        self.prompts += len(args[0]) if args else 0


def last_position(tokenizer, text: str) -> int:
    """The bare prompt's last word's position (start token included): the one before end of text (0: empty)."""
    return len(tokenizer(text, truncation=True, max_length=tokenizer.model_max_length).input_ids) - 2


def sanity(pipe, concepts: list[str], guide: str, preserve: list[str], before: dict, after: dict) -> dict[str, Any]:
    """Per erased concept, ``sum_W ||W' c - W g||^2 / sum_W ||W c - W g||^2`` (below 1: the edit moved the concept
    towards its guide), and the preserved concepts' largest relative drift ``||W' p - W p|| / ||W p||``."""
    tokenizer = pipe.tokenizer
    states = encode_prompts(pipe, [*concepts, guide, *preserve]).states.double()
    g_start = last_position(tokenizer, guide)
    ratios = []
    for i, concept in enumerate(concepts):
        c = states[i, last_position(tokenizer, concept) :]
        g = states[len(concepts), g_start : g_start + len(c)]
        c = c[: len(g)]
        moved = sum(float((after[n].double() @ c.T - w.double() @ g.T).square().sum()) for n, w in before.items())
        was = sum(float((w.double() @ c.T - w.double() @ g.T).square().sum()) for w in before.values())
        ratios.append(moved / was)
    drifts = []
    for j, concept in enumerate(preserve):
        p = states[len(concepts) + 1 + j, last_position(tokenizer, concept) :]
        change = sum(float(((after[n].double() - w.double()) @ p.T).square().sum()) for n, w in before.items())
        norm = sum(float((w.double() @ p.T).square().sum()) for w in before.values())
        drifts.append((change / norm) ** 0.5)
    return {
        "every_concept_closer_to_its_guide": all(r < 1 for r in ratios),
        "distance_ratio_max": round(max(ratios), 6),
        "distance_ratio_median": round(statistics.median(ratios), 6),
        "preserved_relative_drift_max": round(max(drifts), 6) if drifts else None,
    }


def method_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The registered method on an ErasureRequest, ``repeats`` times from the original weights; then the check."""
    torch.set_num_threads(spec["threads"])
    pipe = load_pipeline(spec["model_dir"], device="cpu")
    concepts, templates, preserve = concept_names(spec["count"]), TEMPLATES[spec["templates"]], list(GENERIC_RETAIN)
    request = ErasureRequest(pipe, concepts, "sd15-random", preserve, list(templates), torch.device("cpu"))
    entry = get_method(spec["method"], tag="diffusion")
    config = entry.make_config({"show_progress": False})
    weights = attn2_weights(pipe.unet)
    original = {name: w.detach().clone() for name, w in weights.items()}
    meter = EncoderMeter(pipe)
    calls = []
    for _ in range(spec["repeats"]):
        with torch.no_grad():
            for name, w in weights.items():
                w.copy_(original[name])
        meter.reset()
        start = time.perf_counter()
        outcome = entry.target(request, config)
        calls.append({"seconds": time.perf_counter() - start, "encode": meter.seconds, "prompts": meter.prompts})
    median = sorted(calls, key=lambda c: c["seconds"])[len(calls) // 2]
    edited = outcome.train_result.trained_parameters
    details = outcome.details
    return {
        "seconds": round(median["seconds"], 3),
        "encode_seconds": round(median["encode"], 3),
        "solve_seconds": round(median["seconds"] - median["encode"], 3),
        "all_seconds": [round(c["seconds"], 3) for c in calls],
        "prompts_encoded": median["prompts"],
        "erased_rows": details.get("erased_rows"),
        "preserved_rows": details.get("preserved_rows"),
        "edited_tensors": len(edited),
        "edited_attn2_layers": len({name.rsplit(".", 2)[0] for name in edited}),
        "torch_threads": torch.get_num_threads(),
        "check": sanity(pipe, concepts, config.guide_concepts[0], preserve, {n: original[n] for n in edited}, weights),
    }


def end_to_end_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One ``erase()`` call on the saved pipeline: load, the method, the artifact written."""
    torch.set_num_threads(spec["threads"])
    settings = {
        "retain_concepts": list(GENERIC_RETAIN),
        "templates": TEMPLATES[spec["templates"]],
        "show_progress": False,
    }
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        record = erase(spec["model_dir"], spec["method"], concept_names(spec["count"]), settings, Path(tmp) / "out")
        seconds = time.perf_counter() - start
    return {
        "erase_seconds": round(seconds, 3),
        "method_seconds": record["seconds"],
        "artifact": record["artifact"]["format"],
        "torch_threads": torch.get_num_threads(),
    }


def build_worker(spec: dict[str, Any]) -> dict[str, Any]:
    return save_sd15_pipeline(spec["model_dir"], toy=spec["toy"])


WORKERS = {"build": build_worker, "method": method_worker, "end_to_end": end_to_end_worker}


# ---------------------------------------------------------------------------------------------------- the plan


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The method runs (uce first, the paper's template first, counts ascending), then the end-to-end runs."""
    methods = [m for m in args.methods if registered(m)]
    common = {"threads": args.threads}
    runs = [
        {**common, "kind": "method", "name": f"{m} {t} {n}", "method": m, "templates": t, "count": n}
        for m in methods
        for t in args.templates
        for n in args.counts
    ]
    if args.end_to_end:
        runs += [
            {**common, "kind": "end_to_end", "name": f"{m} {t} {n} end to end", "method": m, "templates": t, "count": n}
            for m in methods
            for t in args.templates
            for n in args.counts
        ]
    return runs


def execute(runs: list[dict[str, Any]], args: argparse.Namespace, model_dir: str, deadline: float) -> list[dict]:
    done = []
    for run in runs:
        left = deadline - time.monotonic()
        if left < args.min_run_s:
            done.append({**run, "status": "skipped for time"})
            continue
        print(f"[{left:5.0f} s left] {run['name']}", flush=True)
        spec = {**run, "model_dir": model_dir, "repeats": args.repeats}
        done.append({**run, **run_isolated(__file__, spec, min(args.run_timeout_s, left))})
    return done


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method, template set and count: the method's figures and the end-to-end time."""
    ends = {(r["method"], r["templates"], r["count"]): r for r in runs if r["kind"] == "end_to_end"}
    rows = []
    for r in (r for r in runs if r["kind"] == "method"):
        e2e = ends.get((r["method"], r["templates"], r["count"]), {})
        row = {k: r.get(k) for k in ("method", "templates", "count", "status")}
        if r["status"] == "ok":
            row.update({k: r[k] for k in ("seconds", "encode_seconds", "solve_seconds", "prompts_encoded")})
            row.update({k: r[k] for k in ("erased_rows", "preserved_rows", "edited_attn2_layers", "torch_threads")})
            row["sane"] = r["check"]["every_concept_closer_to_its_guide"]
        row["end_to_end_seconds"] = e2e.get("erase_seconds")
        rows.append(row)
    return rows


def goal(rows: list[dict[str, Any]], toy: bool) -> dict[str, Any]:
    match = [r for r in rows if (r["method"], r["templates"], r["count"]) == ("uce", "paper", GOAL_COUNT)]
    seconds = match[0].get("seconds") if match else None
    return {
        "goal": f"uce, {GOAL_COUNT} concepts, templates ['{{}}'] (the paper's code), at most {GOAL_SECONDS} s on 2 "
        "CPU cores, text encoding included",
        "seconds": seconds,
        "met": None if seconds is None or toy else seconds <= GOAL_SECONDS,
    }


def check_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag, accepted in (("methods", METHODS), ("templates", tuple(TEMPLATES))):
        bad = [v for v in getattr(args, flag) if v not in accepted]
        if bad:
            parser.error(f"--{flag}: invalid value {bad[0]!r}; accepted values: {', '.join(accepted)}")
    if not args.counts or any(n < 1 or n > 10_000 for n in args.counts):
        parser.error("--counts: give concept counts between 1 and 10000, e.g. 1,10,100")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")


def counts(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; give comma-separated integers, e.g. 1,10,100"
        ) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="bench_results/closed_form_scale.json")
    parser.add_argument("--toy", action="store_true", help="the tiny SD 1.5-shaped pipeline: a smoke run")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--counts", type=counts, default=[1, 10, 100])
    parser.add_argument("--templates", type=lambda s: s.split(","), default=list(TEMPLATES))
    parser.add_argument("--repeats", type=int, default=3, help="calls per method run; the median is reported")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every run")
    parser.add_argument("--no_end_to_end", dest="end_to_end", action="store_false", help="skip the erase() runs")
    parser.add_argument("--budget_s", type=float, default=3600, help="all runs together, pipeline build included")
    parser.add_argument("--run_timeout_s", type=float, default=1200)
    parser.add_argument("--min_run_s", type=float, default=10, help="a run is skipped when less than this is left")
    parser.add_argument("--model_dir", help="an SD 1.5-shaped pipeline saved by an earlier run (skips the build)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.worker:
        check_choices(parser, args)
    run_worker_or_benchmark(args, WORKERS, benchmark)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or str(Path(tmp) / "sd15")
        spec = {"kind": "build", "model_dir": model_dir, "toy": args.toy}
        build = run_isolated(__file__, spec, args.run_timeout_s) if not args.model_dir else {"status": "given"}
        if build["status"] not in ("ok", "given"):
            raise SystemExit(f"building the SD 1.5-shaped pipeline failed: {build}")
        runs = execute(plan(args), args, model_dir, start + args.budget_s)
    rows = table(runs)
    return {
        "benchmark": "closed_form_scale",
        "command": command_line(),
        "toy": args.toy,
        "device": "cpu",
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "methods_not_registered": [m for m in args.methods if not registered(m)],
        "model": {"pipeline": "toy" if args.toy else "SD 1.5-shaped, random weights", **build},
        "concepts": {"example": concept_names(2), "preserved": list(GENERIC_RETAIN)},
        "templates": {k: TEMPLATES[k] for k in args.templates},
        "repeats": args.repeats,
        "table": rows,
        "goal": goal(rows, args.toy),
        "runs": runs,
        "skipped_for_time": [r["name"] for r in runs if r["status"] in ("skipped for time", "timeout")],
        "total_seconds": round(time.monotonic() - start, 1),
        "versions": package_versions(),
    }


if __name__ == "__main__":
    main()
