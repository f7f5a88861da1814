"""The benchmark scripts run end to end in their quick (--small) form and write the JSON keys the README quotes."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from concept_erase.core.digits import CONCEPTS
from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL, EVAL_TEMPLATES

ROOT = Path(__file__).resolve().parent.parent


def run_script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``scripts/NAME ARGS`` in a fresh interpreter on one thread (OMP_NUM_THREADS=1), its output captured."""
    cmd = [sys.executable, str(ROOT / "scripts" / name), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


@pytest.mark.slow
def test_bench_saliency_small_run(tmp_path):
    output = tmp_path / "saliency.json"
    proc = run_script("bench_saliency.py", "--small", "--output", str(output), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    for key in (
        "param_bytes",
        "peak_rss_bytes",
        "extra_over_param_bytes",
        "seconds",
        "mask_file_over_numel_div_8",
        "full_sort_estimate_bytes",
    ):
        assert key in result, key
    assert set(result["peak_rss_bytes"]) == {"model_only", "baseline", "saliency"}
    assert result["fraction_kept"] == pytest.approx(0.5, abs=0.01)
    assert result["mask_data_over_numel_div_8"] < 1.01


def test_bench_classifiers_checks_the_goals_per_seed_and_on_the_mean(tmp_path):
    import csv

    done = tmp_path / "grid"
    done.mkdir()
    head = ["scenario", "seed", "method", "ua", "ra", "ta", "mia_efficacy", "avg_gap", "cost_ratio"]
    rows = [
        ["class:3", 0, "oracle (retrain)", 100, 99.5, 87, 100, 0, 1.0],
        ["class:3", 0, "salun", 100, 99.0, 86, 100, 0.5, 0.05],
        ["class:3", 0, "boundary_shrink", 98.0, 99.5, 86, 100, 0.5, 0.12],  # UA and cost goals missed
        ["random:0.1", 0, "oracle (retrain)", 3, 100, 97, 5, 0, 1.0],
        ["random:0.1", 0, "salun", 1, 99.9, 96.5, 2, 2.5, 0.05],  # gap goal missed
    ]
    with (done / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(head)
        writer.writerows(rows)
    (done / "summary.json").write_text("{}")
    (done / "report.md").write_text("# grid\n")
    output = tmp_path / "out.json"
    proc = run_script("bench_classifiers.py", "--from_dir", str(done), "--output", str(output), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    goals = {(g["goal"], g["method"], g["seed"]): g["passed"] for g in json.loads(output.read_text())["goals"]}
    assert goals[("UA >= 99", "salun", "0")] and not goals[("UA >= 99", "boundary_shrink", "0")]
    assert goals[("RA within 2 of the oracle", "salun", "0")]
    assert not goals[("cost <= 10% of the oracle", "boundary_shrink", "mean")]
    assert not goals[("Avg. Gap <= 2.0", "salun", "0")]
    assert output.with_suffix(".md").read_text() == "# grid\n"


@pytest.mark.slow
def test_bench_sisa_quick_run_writes_tables_plots_and_goal_checks(tmp_path):
    output = tmp_path / "sisa.json"
    proc = run_script("bench_sisa.py", "--quick", "--datasets", "digits:mlp", "--output", str(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    digits = result["datasets"]["digits"]
    assert {r["n_shards"] for r in digits["accuracy"]["vs_shards"]} == {1, 2, 8}
    assert {r["n_slices"] for r in digits["accuracy"]["vs_slices"]} == {1, 2}
    assert 0 < digits["accuracy"]["single"]["accuracy"] <= 1
    stream = digits["deletions"]
    assert stream["n_requests"] == len(stream["sisa"]["8"]["requests"]) == 6
    for key in ("measured_speedup", "analytical_speedup", "closed_form_speedup", "measured_over_analytical"):
        assert stream["sisa"]["8"][key] > 0, key
    assert stream["single_every_k"]["retrains"] == 2 and stream["single_every_k"]["staleness_requests_max"] == 2
    assert set(digits["strategies"]["results"]) == {"uniform", "label", "kmeans", "distribution"}
    assert digits["strategies"]["results"]["distribution"]["shards_holding_hot_samples"] == 1
    goals = {g["goal"]: g for g in result["goals"]}
    assert set(goals) == {"measured speed-up >= 80% of the analytical (S=8)", "speed-up >= 4.63x at S=8"}
    assert all(isinstance(g["passed"], bool) for g in goals.values())  # computed; passing is not the point here
    assert "accuracy_loss_points" in goals["speed-up >= 4.63x at S=8"]
    assert len(result["plots"]) == 3 and all(Path(p).is_file() for p in result["plots"])
    assert "## Goals" in output.with_suffix(".md").read_text()


def test_bench_startup_writes_medians_ratios_and_the_help_goal(tmp_path):
    output = tmp_path / "startup.json"
    script = ROOT / "scripts" / "bench_startup.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--repeats", "1", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    rows = result["commands"]
    assert {"python -c pass", "concept-erase --help", "concept-erase list (loads every method)"} <= set(rows)
    assert rows["python -c pass"]["over_bare_python"] == 1.0
    # --help imports none of the library; `list` imports every method (torch, diffusers): one run, relative timing
    assert rows["concept-erase --help"]["median_s"] < rows["concept-erase list (loads every method)"]["median_s"]
    assert [g["goal"] for g in result["goals"]] == ["concept-erase --help <= 0.5 s"]


def test_bench_families_toy_run_scores_every_method_on_every_variant(tmp_path):
    output = tmp_path / "families.json"
    proc = run_script("bench_families.py", "--toy", "--output", str(output), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    models = result["models"]
    assert result["complete"] and list(models) == ["tiny-sd", "tiny-sd-v", "tiny-sdxl"]
    assert [(m["pipeline"], m["prediction_type"]) for m in models.values()] == [
        ("StableDiffusionPipeline", "epsilon"),
        ("StableDiffusionPipeline", "v_prediction"),
        ("StableDiffusionXLPipeline", "epsilon"),
    ]
    assert all(len(m["per_concept"]) == 10 for m in models.values())
    rows = result["rows"]
    assert [(r["model"], r["method"]) for r in rows] == [(m, x) for m in models for x in ("fmn", "salun", "esd")]
    assert [r.get("error") for r in rows] == [None] * 9  # every method runs on every family
    for row in rows:
        assert 0 <= row["forget_accuracy"] <= 1 and 0 <= row["retain_accuracy"] <= 1
        assert row["original_retain_accuracy"] == models[row["model"]]["retain_accuracy"]
        assert row["config"]["max_train_steps"] == 1
    table = output.with_suffix(".md").read_text().splitlines()
    assert table[2].startswith("| model | method | forget % | retain %") and len(table) == 4 + 9


@pytest.mark.slow  # each run is a fresh interpreter (~8 s of imports on a loaded 2-core CPU)
def test_bench_gpu_toy_run_measures_steps_and_fmn_end_to_end(tmp_path):
    output = tmp_path / "gpu.json"
    proc = run_script("bench_gpu.py", "--toy", "--methods", "fmn", "--precisions", "fp32", "--output", str(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["toy"] and result["device"] and {"torch", "diffusers"} <= set(result["versions"])
    assert "bench_gpu.py --toy --methods fmn" in result["command"]
    runs = {r["name"]: r for r in result["runs"]}
    steps = runs["fmn fp32 sdpa"]
    assert steps["status"] == "ok" and steps["steps"] == 1 and steps["step_seconds"] > 0
    assert steps["peak_rss_bytes"] > 0 and "peak_gpu_bytes" in steps
    end_to_end = runs["fmn 35 steps end to end"]
    assert end_to_end["status"] == "ok" and end_to_end["artifact"] in ("pipeline", "weights")
    assert result["comparisons"]["fmn_end_to_end_seconds"] == end_to_end["erase_seconds"]
    assert not any(name.startswith(("fmn bf16", "salun", "esd")) for name in runs)  # only what was asked for
    xformers = runs["fmn fp32 xformers"]["status"]
    assert xformers == ("ok" if importlib.util.find_spec("xformers") else "not installed")
    assert result["skipped_for_time"] == []


@pytest.mark.slow  # each run is a fresh interpreter (~8 s of imports on a loaded 2-core CPU)
def test_bench_gpu_records_runs_that_do_not_fit_the_budget_and_refuses_unknown_methods(tmp_path):
    output = tmp_path / "gpu.json"
    proc = run_script("bench_gpu.py", "--toy", "--budget_s", "0", "--attention", "sdpa", "--output", str(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["model"]["status"] == "ok"  # the pipeline is still built
    names = [r["name"] for r in result["runs"]]
    assert "fmn fp32 sdpa" in names and "salun saliency mask" in names
    assert result["skipped_for_time"] == names
    proc = run_script("bench_gpu.py", "--toy", "--methods", "fmn,sdxl", "--output", str(tmp_path / "bad.json"))
    assert proc.returncode == 2 and not (tmp_path / "bad.json").exists()
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("--methods: invalid value 'sdxl'; accepted values: fmn, esd, salun, uce")
    )


@pytest.mark.slow  # each run is a fresh interpreter (~8 s of imports on a loaded 2-core CPU)
def test_bench_memory_toy_run_gives_each_option_its_saving(tmp_path):
    output = tmp_path / "memory.json"
    only = ["fmn paper (train=unet)", "fmn lora"]
    proc = run_script("bench_memory.py", "--toy", "--only", *only, "--output", str(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    runs = result["runs"]
    assert list(runs) == ["load only", *only]
    assert all(run["status"] == "ok" and run["peak_rss_bytes"] > 0 for run in runs.values())
    assert runs["fmn lora"]["trained_parameter_count"] < runs["fmn paper (train=unet)"]["trained_parameter_count"]
    saving = result["savings"]["fmn lora"]
    paper, lora = runs["fmn paper (train=unet)"]["peak_rss_bytes"], runs["fmn lora"]["peak_rss_bytes"]
    assert saving["against"] == "fmn paper (train=unet)" and saving["saved_bytes"] == paper - lora
    unet_bytes = result["model"]["unet_bytes"]
    assert unet_bytes == 4 * result["model"]["parameters"]["unet"]
    assert result["held_copies"]["esd frozen teacher (a deep copy of the UNet)"]["bytes"] == unet_bytes
    proc = run_script("bench_memory.py", "--only", "fmn 8-bit adam", "--output", str(tmp_path / "bad.json"))
    assert (
        proc.returncode == 2
        and "--only: unknown configuration 'fmn 8-bit adam'; accepted values: fmn paper" in proc.stderr
    )


@pytest.mark.slow  # two fresh interpreters (~8 s of imports each on a loaded 2-core CPU)
def test_bench_presets_toy_run_writes_the_per_digit_table_and_resumes(tmp_path):
    output, model = tmp_path / "presets.json", tmp_path / "tiny-sd"
    shutil.copytree(DEFAULT_MODEL, model)
    args = ("--toy", "--digits", "one", "--methods", "esd", "fmn", "--model", str(model), "--output", str(output))
    proc = run_script("bench_presets.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    assert [(r["digit"], r["method"]) for r in rows] == [("one", "fmn"), ("one", "esd")]
    for row in rows:
        met = row["forget_accuracy"] <= 0.10 and row["retain_accuracy"] >= row["original_retain_accuracy"] - 0.03
        assert row["goal_met"] == met and row["config_sources"]["train"] == "model preset"
        assert row["config_sources"]["max_train_steps"] == "user" and row["evaluation_images"] == 2
    table = output.with_suffix(".md").read_text()
    assert "| one | esd |" in table and "| digit | method | forget % | retain % |" in table
    again = run_script("bench_presets.py", *args)  # every pair is done with these settings: nothing reruns
    assert again.returncode == 0 and '"digit"' not in again.stdout
    assert json.loads(output.read_text())["rows"] == rows
    (model / "retrained.txt").write_text("the same name, other content")  # a retrained model is measured again
    retrained = run_script("bench_presets.py", *args)
    assert retrained.returncode == 0 and retrained.stdout.count('"digit"') == 2, retrained.stderr[-3000:]


@pytest.mark.slow  # three fresh interpreters (~8 s of imports each on a loaded 2-core CPU)
def test_bench_attacks_toy_run_scores_every_attack_per_seed_and_resumes(tmp_path):
    output = tmp_path / "attacks.json"
    args = ("--toy", "--methods", "fmn", "--seeds", "0", "1", "--output", str(output))
    proc = run_script("bench_attacks.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    rows, erasures = result["rows"], {(e["method"], e["seed"]): e for e in result["erasures"]}
    assert [(r["method"], r["seed"], r["attack"]) for r in rows] == [
        ("fmn", 0, "ti"),
        ("fmn", 0, "prompt"),
        ("fmn", 1, "ti"),
        ("fmn", 1, "prompt"),
    ]
    for row in rows:
        erasure = erasures[("fmn", row["seed"])]
        assert erasure["config"]["seed"] == row["seed"] and 0 <= erasure["retain_accuracy"] <= 1
        assert row["erasure_seconds"] == erasure["erasure_seconds"] and row["budget"]["steps"] == 2
        assert row["asr_gap_to_oracle"] == pytest.approx(row["asr"]["erased"] - row["asr"]["oracle"])
        assert row["within_10_points_of_oracle"] == (row["asr_gap_to_oracle"] <= 0.10)
        ratio = row["attack_seconds"] / row["erasure_seconds"]
        assert row["cost_relative_to_erasure"] == pytest.approx(ratio, abs=1e-3)
    assert all("seven" in p for r in rows if r["attack"] == "prompt" for p in r["prompts"])
    assert rows[2]["cached"]["original"] is True  # seed 1's erasure: the same attack on the same original, reused
    summary = {(s["method"], s["attack"]): s for s in result["summary"]}
    ti = [r for r in rows if r["attack"] == "ti"]
    assert summary[("fmn", "ti")]["erased_asr_mean"] == pytest.approx(sum(r["asr"]["erased"] for r in ti) / 2)
    assert summary[("fmn", "ti")]["within_10_points_of_oracle"] == {
        str(r["seed"]): r["within_10_points_of_oracle"] for r in ti
    }
    assert "| fmn | prompt | 0 1 |" in proc.stdout
    # a labelled configuration joins the file; the rows already there with these settings are not redone
    more = ("--toy", "--methods", "fmn", "short=esd:max_train_steps=1", "--seeds", "0", "--attacks", "prompt")
    again = run_script("bench_attacks.py", *more, "--no-retain", "--output", str(output))
    assert again.returncode == 0, again.stderr[-3000:]
    assert '"method": "fmn"' not in again.stdout and '"method": "short"' in again.stdout
    result = json.loads(output.read_text())
    assert result["rows"][:4] == rows and [(r["method"], r["registered_method"]) for r in result["rows"][4:]] == [
        ("short", "esd")
    ]
    short = next(e for e in result["erasures"] if e["method"] == "short")
    assert short["config"]["max_train_steps"] == 1 and "retain_accuracy" not in short
    bad = run_script("bench_attacks.py", "--methods", "x=esd:no_such_key=1", "--output", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "--methods 'x=esd:no_such_key=1': unknown key 'no_such_key'" in bad.stderr
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.slow  # fresh interpreters, each erasing and scoring at toy sizes
def test_bench_multi_concept_toy_run_scores_each_concept_waits_for_oracles_and_resumes(tmp_path):
    output, plot = tmp_path / "multi.json", tmp_path / "multi.png"
    args = ("--toy", "--methods", "fmn", "uce-digit", "--sets", "seven", "seven,two")
    proc = run_script("bench_multi_concept.py", *args, "--output", str(output), "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    # the private test cache has no seven-and-two oracle: that set waits (--wait_minutes 0: not at all), never trained
    assert [(r["set"], r["method"]) for r in result["rows"]] == [("seven", "fmn"), ("seven", "uce-digit")]
    assert result["pending"] == [{"set": "seven,two", "methods": ["fmn", "uce-digit"]}]
    assert "pending (no oracle yet, not measured): seven,two" in proc.stdout and plot.is_file()
    for row in result["rows"]:
        assert row["oracle"] is not None and "tiny-sd-without-seven" in row["oracle_source"]
        assert row["forget_gap_to_oracle"] == pytest.approx(row["forget_accuracy"] - row["oracle"]["forget_accuracy"])
        assert row["retain_drop"] == pytest.approx(row["original"]["retain_accuracy"] - row["retain_accuracy"])
        assert row["retain_goal"] == (row["retain_drop"] <= 0.05 + 1e-9)
    assert result["best"]["seven"]["method"] in ("fmn", "uce-digit")
    resumed = run_script("bench_multi_concept.py", *args, "--output", str(output), "--plot", str(plot))
    assert resumed.returncode == 0 and '"method"' not in resumed.stdout  # done with these settings: nothing reruns
    assert json.loads(output.read_text())["rows"] == result["rows"]
    # without oracles the two-digit set runs, scored per concept; the seven rows stay as they were
    none = ("--toy", "--methods", "fmn", "uce-digit", "--sets", "seven,two", "--oracle", "none")
    again = run_script("bench_multi_concept.py", *none, "--output", str(output), "--plot", str(plot))
    assert again.returncode == 0, again.stderr[-3000:]
    first, result = result, json.loads(output.read_text())
    assert result["rows"][:2] == first["rows"] and result["pending"] == []
    two = result["rows"][2:]
    assert [(r["set"], r["method"]) for r in two] == [("seven,two", "fmn"), ("seven,two", "uce-digit")]
    for row in two:
        assert set(row["forget_per_concept"]) == {"seven", "two"} and row["oracle"] is None
        assert row["forget_accuracy"] == pytest.approx(sum(row["forget_per_concept"].values()) / 2)
        assert "seven" not in row["retain"] and "two" not in row["retain"] and row["forget_goal"] is None
    assert "| seven,two | fmn |" in again.stdout
    bad = run_script("bench_multi_concept.py", "--sets", "seven,seven", "--output", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "must name distinct concepts" in bad.stderr and not (tmp_path / "bad.json").exists()


@pytest.mark.slow  # three fresh interpreters (build, method, end to end): minutes on a loaded 2-core CPU
def test_bench_closed_form_toy_run_times_uce_and_checks_the_edit(tmp_path):
    output = tmp_path / "closed_form.json"
    args = ("--toy", "--methods", "uce", "--templates", "paper", "--counts", "2", "--repeats", "2", "--threads", "1")
    proc = run_script("bench_closed_form.py", *args, "--output", str(output), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["toy"] and "bench_closed_form.py --toy" in result["command"] and result["skipped_for_time"] == []
    (row,) = result["table"]
    assert (row["method"], row["templates"], row["count"], row["status"]) == ("uce", "paper", 2, "ok")
    assert row["sane"] and row["torch_threads"] == 1 and row["end_to_end_seconds"] > 0
    assert row["prompts_encoded"] == 2 + 1 + 6  # each concept, the guide '' once, the six generic preserved concepts
    assert row["encode_seconds"] + row["solve_seconds"] == pytest.approx(row["seconds"], abs=2e-3)
    run = next(r for r in result["runs"] if r["kind"] == "method")
    assert len(run["all_seconds"]) == 2 and run["edited_tensors"] == 2 * row["edited_attn2_layers"] > 0
    assert run["check"]["distance_ratio_max"] < 1 and result["goal"]["met"] is None  # the goal is not judged on toy
    proc = run_script("bench_closed_form.py", "--methods", "uce,esd", "--output", str(tmp_path / "bad.json"))
    assert proc.returncode == 2 and not (tmp_path / "bad.json").exists()
    assert proc.stderr.strip().splitlines()[-1].endswith("--methods: invalid value 'esd'; accepted values: uce, rece")


@pytest.mark.slow
def test_bench_tiny_sd_recipe_toy_run_trains_scores_and_checks_the_goals(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPT_ERASE_CACHE", str(tmp_path / "cache"))
    output, models = tmp_path / "recipe.json", tmp_path / "models"
    toy = ("--set", "vae_steps=2", "unet_steps=2", "batch_size=32", "--num_images", "4")
    args = ("--models_dir", str(models), "--seeds", "0", "--oracles", "seven", *toy, "--output", str(output))
    proc = run_script("bench_tiny_sd_recipe.py", *args, "--per_template", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(output.read_text())
    (model,), (oracle,) = result["models"], result["oracles"]
    assert set(model["per_concept"]) == set(CONCEPTS) and model["training_seconds"] > 0
    assert list(model["per_template"]) == ["training templates", *EVAL_TEMPLATES]  # each paraphrase alone
    assert all(set(scores) == set(CONCEPTS) for scores in model["per_template"].values())
    assert oracle["concept"] == "seven" and (models / "seed-0-without-seven" / "model_index.json").is_file()
    assert 0 <= oracle["unseen_word_baseline"] <= 100 and isinstance(oracle["retain_met"], bool)
    # two untrained-looking toy models cannot meet the accuracy goals: the check can fail
    assert result["met"]["every_digit_at_least_95"] is False and result["met"]["retain_spread"] is None


def test_bench_tiny_sd_recipe_refuses_repeated_seeds_and_unknown_concepts(tmp_path):
    proc = run_script("bench_tiny_sd_recipe.py", "--models_dir", str(tmp_path), "--seeds", "0", "1", "0")
    assert proc.returncode == 2 and "--seeds: repeated seed in [0, 1, 0]" in proc.stderr
    assert not any(tmp_path.iterdir())
    proc = run_script("bench_tiny_sd_recipe.py", "--models_dir", str(tmp_path), "--oracles", "eleven")
    assert proc.returncode == 2 and "--oracles: unknown concept 'eleven'; accepted values: zero" in proc.stderr


def test_bench_erase_refuses_a_kept_directory_that_already_holds_a_run(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "manifest.json").write_text("{}")  # a pipeline would resume it instead of timing a fresh run
    proc = run_script("bench_erase.py", "--keep", str(tmp_path / "demo"), "--output", str(tmp_path / "erase.json"))
    assert proc.returncode == 2 and "--keep:" in proc.stderr and "is not empty" in proc.stderr
    assert not (tmp_path / "erase.json").exists()
