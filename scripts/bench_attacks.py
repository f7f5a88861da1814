"""How well do the erasures resist attacks? Every method x attack x model (original, erased, retrain oracle), per seed.

    OMP_NUM_THREADS=1 nice -n 5 python scripts/bench_attacks.py                 # fmn salun esd x seeds 0 1 2 (~20 min)
    python scripts/bench_attacks.py --methods fmn salun esd advsalun=salun:adversarial_every=10
    python scripts/bench_attacks.py --methods esd --seeds 0 --attacks prompt --no-retain --output /tmp/esd.json
    python scripts/bench_attacks.py --toy --methods fmn --seeds 0 --output /tmp/toy.json   # smoke test (seconds)
    python scripts/bench_attacks.py --methods uce=uce:guide_concepts=[digit],preserve_scale=2,erase_scale=3 \
        rece=rece:guide_concepts=[digit],preserve_scale=2,erase_scale=3 --seeds 0   # closed-form methods (no presets)

For each method and erasure seed (the method config's ``seed``) it erases ``--concept`` ("seven") from the embedded
tiny SD with the model's presets (``erasure_presets.json``; a method entry's keys override them), scores the erasure
with the harness (``--retain``, on by default: forget and retain accuracy, ``--num_images`` per concept, no oracle),
then runs each attack (``AttackConfig()``: the tiny budgets, attack seed ``--attack_seed``) on the original, the
erased model and the retrain oracle with :func:`concept_erase.diffusion.attack.attack_erasure`.

A method entry is a registered method (``fmn``) or ``label=method:key=value,key=value``
(``advsalun=salun:adversarial_every=10``): a configuration measured under its own label.

Each row (method, seed, attack) records the attack success rates (ASR) with and without the attack, the gap to the
oracle (erased - oracle ASR), the attack's seconds on the erased model, the erasure's seconds and their ratio (what
the attack costs relative to the erasure it undoes), and the erased model's attacked prompts. The summary gives, per
method and attack, the mean and (population) std over seeds of the erased model's ASR and of the gap, and whether the
erased model's ASR is within 10 points of the oracle's on each seed. ``--output`` is rewritten atomically after every
row; a rerun skips the rows already there with the same settings (method config, attack config, concept, model).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from concept_erase.core.config import config_to_dict, parse_overrides
from concept_erase.core.errors import ConfigError, UnknownNameError
from concept_erase.core.io import package_versions, strict_json
from concept_erase.core.readers import read_json_object
from concept_erase.core.registry import get_method
from concept_erase.diffusion.attack import ATTACKS, AttackConfig, attack_erasure
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure, model_fingerprint
from concept_erase.diffusion.presets import resolve_settings
from concept_erase.diffusion.tiny_sd import resolve_model

METHODS = ("fmn", "salun", "esd")
WITHIN = 0.10  # "within 10 points of the oracle": erased ASR - oracle ASR at most this
ENTRY = re.compile(r"^(?:(?P<label>[\w.-]+)=)?(?P<method>[\w-]+)(?::(?P<keys>.*))?$")
# --toy: the smallest erasure, evaluation and attack that still run every part (seconds on one CPU thread)
TOY_ERASE = {"max_train_steps": 2, "num_images": 2, "generation_steps": 2, "textual_inversion_steps": 2}
TOY_EVALUATION = {"num_images": 2, "num_inference_steps": 2, "grid_seeds": 1}
TOY_ATTACK = {"steps": 2, "num_images": 2, "eval_images": 2, "batch_size": 2, "num_inference_steps": 2, "grid_seeds": 1}


@dataclasses.dataclass
class Entry:
    """One measured configuration: ``label`` (its name in the results), the registered ``method``, its keys."""

    label: str
    method: str
    keys: dict  # the entry's own keys
    user: dict  # what goes over the presets: the toy sizes (--toy), the entry's keys

    def settings(self, model: Path, seed: int):
        """The resolved settings of this configuration with erasure seed ``seed`` (the method config's seed)."""
        entry = get_method(self.method, tag="diffusion")
        return resolve_settings(entry, model, {**self.user, "seed": seed, "show_progress": False})


def _parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        metavar="ENTRY",
        help="methods, or label=method:key=value,key=value configurations (default: fmn salun esd)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="erasure seeds (default: 0 1 2)")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS, help="default: ti prompt")
    parser.add_argument("--concept", default="seven", help="the erased and attacked concept (default: seven)")
    parser.add_argument("--model", default="tiny-sd", help="the model erased (default: tiny-sd)")
    parser.add_argument("--attack_seed", type=int, default=0, help="the attacks' seed (default: 0)")
    parser.add_argument(
        "--retain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score each erasure's forget and retain accuracy too (default: on; ~15 s per erasure)",
    )
    parser.add_argument("--num_images", type=int, default=64, help="--retain's images per concept (default 64)")
    parser.add_argument("--toy", action="store_true", help="tiny erasures, evaluations and attacks: a smoke test")
    parser.add_argument("--output", default="bench_results/attacks.json")
    return parser.parse_args(argv), parser


def _entries(specs: list[str], model: Path, toy: bool) -> list[Entry]:
    """Each ``--methods`` entry, its keys checked against the method's config (bad ones refused before any work)."""
    out: list[Entry] = []
    for spec in specs:
        match = ENTRY.match(spec.strip())
        if match is None:
            raise ConfigError(
                f"--methods: cannot read {spec!r}; write a method (fmn) or label=method:key=value,key=value"
            )
        pairs = [p for p in (match["keys"] or "").split(",") if p.strip()]
        try:
            entry_info = get_method(match["method"], tag="diffusion")
            keys = parse_overrides(pairs)
        except (ConfigError, UnknownNameError) as exc:
            raise ConfigError(f"--methods {spec!r}: {exc.args[0]}") from None
        fields = {f.name for f in dataclasses.fields(entry_info.config_cls)}
        toy_keys = {k: v for k, v in TOY_ERASE.items() if k in fields} if toy else {}
        entry = Entry(match["label"] or match["method"], entry_info.name, keys, {**toy_keys, **keys})
        if any(e.label == entry.label for e in out):
            raise ConfigError(f"--methods: label {entry.label!r} is given twice; give each configuration its own label")
        try:
            entry.settings(model, 0)
        except ConfigError as exc:
            raise ConfigError(f"--methods {spec!r}: {exc.args[0]}") from None
        out.append(entry)
    return out


def _key(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _row(entry: Entry, seed: int, metrics: dict, erasure: dict) -> dict:
    models = metrics["models"]
    gap = metrics["asr_gap_to_oracle"]
    return {
        "method": entry.label,
        "registered_method": entry.method,
        "seed": seed,
        "attack": metrics["attack"],
        "asr": metrics["asr"],
        "unattacked": metrics["unattacked"],
        "asr_gap_to_oracle": gap,
        "within_10_points_of_oracle": None if gap is None else bool(gap <= WITHIN + 1e-9),
        "attack_seconds": metrics["attack_seconds"],
        "erasure_seconds": metrics["erasure_seconds"],
        "cost_relative_to_erasure": metrics["cost_relative_to_erasure"],
        "attack_seconds_per_model": {n: (m["attack_seconds"] if m else None) for n, m in models.items()},
        "prompts": models["erased"]["prompts"],
        "tokens": models["erased"]["tokens"],
        "loss_first_last": {n: ([m["loss_first"], m["loss_last"]] if m else None) for n, m in models.items()},
        "forget_accuracy": erasure.get("forget_accuracy"),
        "retain_accuracy": erasure.get("retain_accuracy"),
        "original_retain_accuracy": erasure.get("original_retain_accuracy"),
        "budget": metrics["budget"],
        "oracle_source": metrics["oracle_source"],
        "judge": metrics["judge"],
        "cached": metrics.get("cached"),  # the original's and the oracle's attacks reused from the attack cache
        "seconds": metrics["seconds"],
    }


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _summary(rows: list[dict], erasures: list[dict]) -> list[dict]:
    """Per method x attack (in the rows' order): mean and std over seeds, the per-seed oracle check."""
    out = []
    pairs = sorted(dict.fromkeys((r["method"], r["attack"]) for r in rows), key=lambda p: ATTACKS.index(p[1]))
    for label, attack in sorted(pairs, key=lambda p: [r["method"] for r in rows].index(p[0])):
        mine = sorted((r for r in rows if r["method"] == label and r["attack"] == attack), key=lambda r: r["seed"])
        gaps = [r["asr_gap_to_oracle"] for r in mine if r["asr_gap_to_oracle"] is not None]
        erased_mean, erased_std = _mean_std([r["asr"]["erased"] for r in mine])
        gap_mean, gap_std = _mean_std(gaps)
        costs = [r["cost_relative_to_erasure"] for r in mine if r["cost_relative_to_erasure"] is not None]
        retain = [e["retain_accuracy"] for e in erasures if e["method"] == label and "retain_accuracy" in e]
        within = {str(r["seed"]): r["within_10_points_of_oracle"] for r in mine}
        out.append(
            {
                "method": label,
                "attack": attack,
                "seeds": [r["seed"] for r in mine],
                "erased_asr_mean": erased_mean,
                "erased_asr_std": erased_std,
                "asr_gap_to_oracle_mean": gap_mean,
                "asr_gap_to_oracle_std": gap_std,
                "original_asr_mean": _mean_std([r["asr"]["original"] for r in mine])[0],
                "oracle_asr_mean": _mean_std([r["asr"]["oracle"] for r in mine if r["asr"]["oracle"] is not None])[0],
                "unattacked_erased_mean": _mean_std([r["unattacked"]["erased"] for r in mine])[0],
                "within_10_points_of_oracle": within,
                "within_10_points_on_every_seed": bool(within) and all(v is True for v in within.values()),
                "cost_relative_to_erasure_mean": _mean_std(costs)[0],
                "retain_accuracy_mean": _mean_std(retain)[0],
            }
        )
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _table(summary: list[dict]) -> str:
    lines = [
        "| method | attack | seeds | erased ASR % (mean ± std) | gap to oracle, points (mean ± std) | within 10 points "
        "per seed | original ASR % | oracle ASR % | erased, no attack % | attack / erasure time | retain % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        within = " ".join(
            f"{seed}:{'n/a' if v is None else ('yes' if v else 'no')}"
            for seed, v in s["within_10_points_of_oracle"].items()
        )
        cost = s["cost_relative_to_erasure_mean"]
        cells = [
            s["method"],
            s["attack"],
            " ".join(map(str, s["seeds"])),
            f"{_pct(s['erased_asr_mean'])} ± {_pct(s['erased_asr_std'])}",
            f"{_pct(s['asr_gap_to_oracle_mean'])} ± {_pct(s['asr_gap_to_oracle_std'])}",
            within,
            _pct(s["original_asr_mean"]),
            _pct(s["oracle_asr_mean"]),
            _pct(s["unattacked_erased_mean"]),
            "n/a" if cost is None else f"{cost:.2f}x",
            _pct(s["retain_accuracy_mean"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(output: Path, result: dict) -> None:
    """Atomically: a half-written file never replaces the last complete one."""
    text = strict_json(result, output.name, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> None:
    args, parser = _parse(argv)
    try:
        model = resolve_model(args.model)
        model_key = model_fingerprint(model)  # a retrained model under the same name is measured again
        entries = _entries(args.methods, model, args.toy)
        attack_configs = {
            a: AttackConfig(attack=a, seed=args.attack_seed, show_progress=False, **(TOY_ATTACK if args.toy else {}))
            for a in args.attacks
        }
        evaluation = EvaluationConfig(**{"num_images": args.num_images, **(TOY_EVALUATION if args.toy else {})})
    except ConfigError as exc:
        parser.error(str(exc))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = read_json_object(output, "bench result") if output.is_file() else {}
    rows = {(r["method"], r["seed"], r["attack"]): r for r in previous.get("rows", [])}
    erasures = {(e["method"], e["seed"]): e for e in previous.get("erasures", [])}
    command = "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(__file__).name}", *sys.argv[1:]])

    def write() -> list[dict]:
        ordered = sorted(
            rows.values(), key=lambda r: (labels.get(r["method"], len(labels)), r["seed"], ATTACKS.index(r["attack"]))
        )
        done = sorted(erasures.values(), key=lambda e: (labels.get(e["method"], len(labels)), e["seed"]))
        summary = _summary(ordered, done)
        result = {
            "command": command,
            "model": args.model,
            "concept": args.concept,
            "toy": args.toy,
            "attack_seed": args.attack_seed,
            "attack_configs": {a: config_to_dict(c) for a, c in attack_configs.items()},
            "retain_evaluation": {"num_images": evaluation.num_images} if args.retain else None,
            "within_points": WITHIN * 100,
            "summary": summary,
            "rows": ordered,
            "erasures": done,
            "versions": package_versions(),
        }
        _write(output, result)
        return summary

    labels = {e.label: i for i, e in enumerate(entries)}
    with tempfile.TemporaryDirectory() as tmp:
        for entry in entries:
            for seed in args.seeds:
                settings = entry.settings(model, seed)
                method_config = config_to_dict(settings.config)
                erasure_key = _key(model_key, args.concept, entry.method, method_config)
                retain_key = _key(erasure_key, evaluation.generation_key()) if args.retain else None
                keys = {a: _key(erasure_key, config_to_dict(c)) for a, c in attack_configs.items()}
                todo = [a for a in args.attacks if rows.get((entry.label, seed, a), {}).get("settings_key") != keys[a]]
                record = erasures.get((entry.label, seed), {})
                needs_retain = args.retain and record.get("retain_key") != retain_key
                if not todo and not needs_retain:
                    continue
                out = Path(tmp) / f"{entry.label}-{seed}"
                start = time.perf_counter()
                done = erase(model, entry.method, [args.concept], settings, output_dir=out, overwrite=True)
                record = {
                    "method": entry.label,
                    "registered_method": entry.method,
                    "seed": seed,
                    "erasure_seconds": done["seconds"],
                    "settings_key": erasure_key,
                    "keys": entry.keys,
                    "config": done["config"],
                    "config_sources": done["config_sources"],
                }
                if args.retain:
                    metrics = evaluate_erasure(out, evaluation, oracle="none")
                    record.update(
                        forget_accuracy=metrics["forget_accuracy"],
                        retain_accuracy=metrics["retain_accuracy"],
                        original_forget_accuracy=metrics["original"]["forget_accuracy"],
                        original_retain_accuracy=metrics["original"]["retain_accuracy"],
                        evaluation_images=evaluation.num_images,
                        retain_key=retain_key,
                    )
                record["seconds"] = round(time.perf_counter() - start, 1)
                erasures[(entry.label, seed)] = record
                print(json.dumps({k: v for k, v in record.items() if "config" not in k}), flush=True)
                write()
                for attack in todo:
                    metrics = attack_erasure(out, attack_configs[attack], concept=args.concept)
                    row = {**_row(entry, seed, metrics, record), "settings_key": keys[attack]}
                    rows[(entry.label, seed, attack)] = row
                    brief = ("method", "seed", "attack", "asr", "asr_gap_to_oracle", "cost_relative_to_erasure")
                    print(json.dumps({k: row[k] for k in brief}), flush=True)
                    write()
    summary = write()
    print(_table(summary), end="")


if __name__ == "__main__":
    main()
