"""The attack_erasure pipeline step and the robustness columns it gives the erasure report.

One tiny pipeline (module-scoped) erases "seven" from the embedded tiny SD with esd (2 training steps), evaluates it,
reports it without attacks, attacks it with ti and prompt (2 attack steps, 4 attacker images, 4 scored generations,
2 denoising steps) and reports it again, with every attack and with only one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from concept_erase.core.errors import ConfigError, OutputOverlapsInputError, UnknownConfigKeyError
from concept_erase.diffusion.report import attach_attacks, summarize_attack, summarize_evaluation
from pipelines.runner import load_pipeline

ERASE = {
    "max_train_steps": 2,
    "num_images": 2,
    "generation_steps": 2,
    "train_batch_size": 2,
    "show_progress": False,
}
EVALUATION = {"forget": ["seven"], "retain": ["one"], "num_images": 4, "num_inference_steps": 2}


def _attack(kind: str) -> dict:
    budget = {"steps": 2, "num_images": 4, "eval_images": 4, "num_inference_steps": 2, "grid_seeds": 2}
    return {"attack": kind, **budget, "show_progress": False}


SPEC = {
    "name": "mini-attack",
    "steps": [
        {"name": "erase_esd", "step": "erase", "config": {"method": "esd", "concepts": ["seven"], "config": ERASE}},
        {
            "name": "eval_esd",
            "step": "evaluate_erasure",
            "config": {"model": "${steps.erase_esd.output_dir}", "evaluation": EVALUATION},
        },
        {"name": "report_plain", "step": "erasure_report", "config": {}},  # before any attack: no ASR columns
        *[
            {
                "name": f"attack_esd_{kind}",
                "step": "attack_erasure",
                "config": {"model": "${steps.erase_esd.output_dir}", "attack": _attack(kind)},
            }
            for kind in ("ti", "prompt")
        ],
        {"name": "report", "step": "erasure_report", "config": {}},  # every earlier attack
        {"name": "report_ti", "step": "erasure_report", "config": {"attacks": ["attack_esd_ti"]}},
    ],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("attack-pipeline") / "run"
    manifest = load_pipeline(SPEC, output_dir=out).run(log=lambda _: None)
    return out, manifest


def _outputs(manifest: dict, step: str) -> dict:
    return manifest["steps"][step]["outputs"]


def _table(report: str) -> dict[str, dict[str, str]]:
    """The first markdown table of a report: {model: {column: cell}}."""
    lines = [line for line in report.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(head):
            break  # the next table
        table[cells[0]] = dict(zip(head, cells))
    return table


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def test_attack_step_outputs_are_the_asr_of_attack_json(run):
    out, manifest = run
    for kind in ("ti", "prompt"):
        outputs = _outputs(manifest, f"attack_esd_{kind}")
        path = Path(outputs["attack_metrics_path"])
        assert path == out / "steps" / f"attack_esd_{kind}" / "attack.json"  # the final step directory
        metrics = json.loads(path.read_text())
        assert metrics["attack"] == kind and metrics["concept"] == "seven" and metrics["method"] == "esd"
        assert metrics["budget"]["steps"] == 2 and metrics["budget"]["eval_images"] == 4
        assert outputs["asr"] == metrics["asr"]["erased"]
        assert outputs["asr_original"] == metrics["asr"]["original"]
        assert outputs["asr_oracle"] == metrics["asr"]["oracle"] is not None  # the shipped oracle, found by auto
        assert all(0.0 <= outputs[k] <= 1.0 for k in ("asr", "asr_original", "asr_oracle"))
        assert outputs["seconds"] == metrics["seconds"] > 0
        assert metrics["settings"]["erasure"] == str(out / "steps" / "erase_esd")
        step_dir = path.parent
        assert (step_dir / "grid.png").is_file() and (step_dir / "report.md").is_file()
        assert (step_dir / "embeddings.safetensors").is_file() == (kind == "ti")


def test_report_has_an_asr_column_per_attack_beside_the_original_and_the_oracle(run):
    out, manifest = run
    report = (out / "steps" / "report" / "report.md").read_text()
    table = _table(report)
    assert set(table) == {"original", "retrain oracle", "esd"}
    for kind in ("ti", "prompt"):
        attack = json.loads(Path(_outputs(manifest, f"attack_esd_{kind}")["attack_metrics_path"]).read_text())
        asr = attack["asr"]
        assert table["esd"][f"ASR {kind}"] == _pct(asr["erased"])
        assert table["original"][f"ASR {kind}"] == _pct(asr["original"])
        assert table["retrain oracle"][f"ASR {kind}"] == _pct(asr["oracle"])
    # the budget under the table, one line per attack
    assert "- ti: 2 steps, learning rate 0.05, 4 attacker images, 4 scored generations" in report
    assert "- prompt: 2 steps, learning rate 0.01, 3 prefix tokens, 4 attacker images" in report
    rows = json.loads((out / "steps" / "report" / "report.json").read_text())["rows"]
    assert rows[0]["asr_ti"] == _outputs(manifest, "attack_esd_ti")["asr"]
    assert rows[0]["asr_prompt_oracle"] == _outputs(manifest, "attack_esd_prompt")["asr_oracle"]
    assert rows[0]["attacks"]["prompt"]["step"] == "attack_esd_prompt"
    # comparison.png gains a third panel (16.5 instead of 10 inches wide)
    with_attacks = Image.open(out / "steps" / "report" / "comparison.png").size
    plain = Image.open(out / "steps" / "report_plain" / "comparison.png").size
    assert with_attacks[0] == pytest.approx(1.65 * plain[0], rel=0.02) and with_attacks[1] == plain[1]


def test_a_report_without_attacks_is_unchanged(run):
    out, manifest = run
    report = (out / "steps" / "report_plain" / "report.md").read_text()
    assert "ASR" not in report and "attack" not in report.lower()
    head = next(line for line in report.splitlines() if line.startswith("| model | forget acc"))
    assert head.count("|") == 9  # the eight columns of the report before attacks
    row = json.loads((out / "steps" / "report_plain" / "report.json").read_text())["rows"][0]
    assert "attacks" not in row and not any(k.startswith("asr_") for k in row)


def test_a_report_lists_only_the_attacks_it_names(run):
    out, _ = run
    report = (out / "steps" / "report_ti" / "report.md").read_text()
    assert "ASR ti" in _table(report)["esd"] and "ASR prompt" not in report and "- prompt:" not in report


def test_attacks_join_the_evaluation_of_the_erasure_they_attacked(run, tmp_path):
    out, manifest = run
    metrics_path = _outputs(manifest, "eval_esd")["erasure_metrics_path"]
    attack_path = _outputs(manifest, "attack_esd_ti")["attack_metrics_path"]
    ti = summarize_attack("attack_esd_ti", attack_path)

    # an attack of another erasure: refused when named, left out when collected by default
    other = {**ti, "step": "attack_other", "erasure": str(tmp_path / "another-erasure")}
    rows = [summarize_evaluation("esd", metrics_path)]
    with pytest.raises(ConfigError, match="attack step 'attack_other' attacked .*another-erasure.* no evaluation"):
        attach_attacks(rows, [other])
    assert attach_attacks(rows, [ti, other], strict=False) == [other] and rows[0]["asr_ti"] == ti["asr"]

    # two attacks of one kind on one erasure: one column each is ambiguous
    rows = [summarize_evaluation("esd", metrics_path)]
    with pytest.raises(ConfigError, match="'attack_esd_ti' and 'again' both attack 'esd' with ti"):
        attach_attacks(rows, [ti, {**ti, "step": "again"}])

    # an attack of a concept the evaluation did not erase
    rows = [summarize_evaluation("esd", metrics_path)]
    with pytest.raises(ConfigError, match="attacked concept 'one', but evaluation 'esd' erased seven"):
        attach_attacks(rows, [{**ti, "concept": "one"}])


def test_corrupt_attack_metrics_are_refused_in_one_line(run, tmp_path):
    _, manifest = run
    metrics = json.loads(Path(_outputs(manifest, "attack_esd_ti")["attack_metrics_path"]).read_text())
    with pytest.raises(ConfigError, match="attack metrics not found"):
        summarize_attack("a", tmp_path / "missing.json")
    path = tmp_path / "attack.json"
    path.write_text(json.dumps({**metrics, "asr": {"original": 1.0, "erased": "high", "oracle": None}}))
    with pytest.raises(ConfigError, match="asr.erased must be a number"):
        summarize_attack("a", path)
    path.write_text(json.dumps({k: v for k, v in metrics.items() if k != "budget"}))
    with pytest.raises(ConfigError, match="budget"):
        summarize_attack("a", path)


def test_a_report_naming_a_step_that_is_no_attack_fails_naming_it(run, tmp_path):
    spec = {
        "name": "bad-report",
        "steps": [
            {"name": "eval", "step": "evaluate_erasure", "config": {"model": "tiny-sd", "evaluation": EVALUATION}},
            {"name": "report", "step": "erasure_report", "config": {"attacks": ["eval"]}},
        ],
    }
    spec["steps"][0]["config"]["oracle"] = "none"
    with pytest.raises(Exception, match="no attack_erasure outputs for eval"):
        load_pipeline(spec, output_dir=tmp_path / "bad").run(log=lambda _: None)


@pytest.mark.parametrize(
    ("attack", "error", "match"),
    [
        ({"attack": "nope"}, ConfigError, "attack: invalid value 'nope'; accepted values: ti, prompt"),
        ({"steps": 0}, ConfigError, "steps must be an integer >= 1"),
        ({"stpes": 2}, UnknownConfigKeyError, "unknown key 'attack.stpes'"),
    ],
)
def test_attack_step_config_is_checked_before_anything_runs(tmp_path, attack, error, match):
    spec = {"name": "bad", "steps": [{"name": "a", "step": "attack_erasure", "config": {"attack": attack}}]}
    with pytest.raises(error, match=match):
        load_pipeline(spec)


def test_attack_step_refuses_to_write_into_an_input_it_reads(tmp_path):
    """The step's directory inside a path its config names (here the judge) is refused before any work."""
    import pipelines.steps  # noqa: F401  (registers the steps)
    from concept_erase.core.registry import get_step
    from concept_erase.diffusion.tiny_sd import ASSETS
    from pipelines.runner import StepContext

    judge = tmp_path / "judge"
    shutil.copytree(ASSETS / "digit-judge", judge)
    context = StepContext("p", "s", judge / "steps" / ".s.tmp-1-00000000", judge, 0, {})
    entry = get_step("attack_erasure")
    config = entry.make_config({"concept": "seven", "judge": str(judge), "attack": {"steps": 1}})
    with pytest.raises(OutputOverlapsInputError, match="lies inside the input"):
        entry.target(context, config)
    assert not (judge / "steps").exists()


def test_the_demo_attacks_every_erasure_with_every_attack_and_reports_them():
    from pipelines.cli import CONFIGS_DIR

    steps = load_pipeline(CONFIGS_DIR / "demo.yaml").config.steps
    erasures = {s.name for s in steps if s.step == "erase"}
    attacked = {(s.config["model"], s.config["attack"]["attack"]): s.name for s in steps if s.step == "attack_erasure"}
    expected = {(f"${{steps.{e}.output_dir}}", kind) for e in erasures for kind in ("ti", "prompt")}
    assert set(attacked) == expected
    report = steps[-1]
    assert report.step == "erasure_report" and sorted(report.config["attacks"]) == sorted(attacked.values())
