"""Sequential erasure requests: an erasure directory as the model of the next request, the request log beside every
artifact, no-op requests, logs that do not match their model, erase_sequence, the CLI and the pipeline step.

uce (closed form, no images) makes the chains fast; one chain with fmn's LoRA exercises the fusion path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from concept_erase.core.errors import ConfigError, OutputOverlapsInputError
from concept_erase.diffusion.erasure import (
    REQUEST_LOG,
    RequestLogError,
    check_request_log,
    erase,
    load_erased,
    read_erasure,
)
from concept_erase.diffusion.evaluation import EvaluationConfig
from concept_erase.diffusion.sequential import erase_sequence
from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL, save_pipeline
from pipelines.cli import main

UCE = {"guide_concepts": ["digit"], "preserve_scale": 2.0, "erase_scale": 3.0}
FMN_LORA = {
    "train": "lora",
    "max_train_steps": 5,
    "num_images": 2,
    "generation_steps": 2,
    "train_batch_size": 2,
    "show_progress": False,
}


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _log(directory: Path) -> list[dict]:
    return json.loads((directory / REQUEST_LOG).read_text())


def _unet_state(pipe) -> dict[str, torch.Tensor]:
    if any("lora_" in name for name, _ in pipe.unet.named_parameters()):
        pipe.unload_lora_weights()  # a fused LoRA (load_erased): its weights stay, its layers go
    return {name: param.detach().clone() for name, param in pipe.unet.named_parameters()}


def _assert_same_unet(a, b, atol: float = 0.0) -> None:
    sa, sb = _unet_state(a), _unet_state(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.allclose(sa[name], sb[name], atol=atol, rtol=0), name


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """tiny-sd -uce seven-> a -uce two-> b (no presets: the independent reference below uses a plain pipeline)."""
    root = tmp_path_factory.mktemp("chain")
    erase("tiny-sd", "uce", ["seven"], UCE, output_dir=root / "a", presets=False)
    erase(root / "a", "uce", ["two"], UCE, output_dir=root / "b", presets=False)
    return {"root": root, "a": root / "a", "b": root / "b"}


def test_two_request_chain_equals_the_edits_applied_in_sequence(chain, tmp_path):
    a, b = chain["a"], chain["b"]
    record = read_erasure(b)
    assert record["concepts"] == ["seven", "two"] and record["request"] == ["two"] and record["erased"] == ["two"]
    assert record["base_model"] == "tiny-sd" and record["previous"]["path"] == "../a"
    assert record["previous"]["index"] == 1 and record["artifact"]["format"] == "weights"
    assert "seven" not in record["retain_concepts"] and "two" not in record["retain_concepts"]
    # the reference: request 1's result saved as a plain pipeline, request 2 applied to it as to any model
    plain = tmp_path / "after-seven"
    save_pipeline(load_erased(a), plain)
    assert read_erasure(plain) is None
    keys = {**UCE, "templates": record["templates"], "retain_concepts": record["retain_concepts"]}
    erase(plain, "uce", ["two"], keys, output_dir=tmp_path / "ref", presets=False)
    _assert_same_unet(load_erased(b), load_erased(tmp_path / "ref"))
    # the artifact is relative to the ORIGINAL base: plain diffusers + the weights file gives the same model
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(DEFAULT_MODEL), safety_checker=None)
    tensors = load_file(str(b / "erasure.safetensors"))
    missing, unexpected = pipe.unet.load_state_dict({k.removeprefix("unet."): v for k, v in tensors.items()}, False)
    assert not unexpected
    _assert_same_unet(pipe, load_erased(b))
    # it differs from request 1's result (two was edited) and from the base
    assert any(not torch.equal(x, y) for x, y in zip(_unet_state(load_erased(a)).values(), _unet_state(pipe).values()))


def test_request_log_records_both_requests(chain):
    a, b = chain["a"], chain["b"]
    first, log = _log(a), _log(b)
    assert len(first) == 1 and [e["index"] for e in log] == [1, 2]
    assert log[0] == first[0]  # the chain carries the previous entries unchanged
    assert [e["concepts"] for e in log] == [["seven"], ["two"]] and [e["noop"] for e in log] == [False, False]
    for directory, entry in ((a, first[0]), (b, log[1])):
        assert entry["artifact"]["path"] == "erasure.safetensors"
        assert entry["artifact"]["sha256"] == _sha256(directory / "erasure.safetensors")
        assert entry["artifact"]["bytes"] == (directory / "erasure.safetensors").stat().st_size
        assert entry["method"] == "uce" and entry["config"]["erase_scale"] == 3.0
        assert entry["time"].endswith("+00:00") and entry["base_model"] == "tiny-sd"
    assert read_erasure(b)["previous"]["artifact_sha256"] == first[0]["artifact"]["sha256"]
    assert check_request_log(b) == log


def test_request_for_an_already_erased_concept_is_a_noop(chain, tmp_path):
    out = tmp_path / "again"
    record = erase(chain["b"], "uce", ["seven"], UCE, output_dir=out, presets=False)
    assert record["noop"] is True and record["erased"] == [] and "seven by request 1" in record["note"]
    assert (out / "erasure.safetensors").read_bytes() == (chain["b"] / "erasure.safetensors").read_bytes()
    log = _log(out)
    assert len(log) == 3 and log[2]["noop"] is True and log[2]["concepts"] == ["seven"] and log[2]["erased"] == []
    assert log[2]["artifact"]["sha256"] == log[1]["artifact"]["sha256"] and "already erased" in log[2]["note"]
    assert read_erasure(out)["concepts"] == ["seven", "two"]
    _assert_same_unet(load_erased(out), load_erased(chain["b"]))
    # a request mixing erased and new concepts edits only the new ones, and says so
    mixed = erase(chain["a"], "uce", ["seven", "five"], UCE, output_dir=tmp_path / "mixed", presets=False)
    assert mixed["erased"] == ["five"] and mixed["concepts"] == ["seven", "five"]
    assert _log(tmp_path / "mixed")[1]["note"] == "already erased, skipped: seven"


def test_tampered_artifact_is_refused_naming_file_and_hashes(chain, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(chain["b"], bad)
    file = bad / "erasure.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01  # same size, other content
    file.write_bytes(bytes(data))
    expected = _log(bad)[-1]["artifact"]["sha256"]
    for attempt in (lambda: load_erased(bad), lambda: erase(bad, "uce", ["five"], UCE, output_dir=tmp_path / "o")):
        with pytest.raises(RequestLogError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message and str(file) in message
        assert expected in message and _sha256(file) in message
    assert not (tmp_path / "o").exists()


def test_tampered_or_missing_log_is_refused(chain, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(chain["b"], bad)
    log = _log(bad)
    log[1]["erased"] = ["five"]
    (bad / REQUEST_LOG).write_text(json.dumps(log))
    with pytest.raises(RequestLogError, match="the log erased seven, five, erasure.json names seven, two"):
        load_erased(bad)
    (bad / REQUEST_LOG).write_text("[]")
    with pytest.raises(RequestLogError, match="non-empty JSON list"):
        load_erased(bad)
    (bad / REQUEST_LOG).unlink()
    with pytest.raises(RequestLogError, match="requests.json is missing"):
        erase(bad, "uce", ["five"], UCE)


def test_erasure_written_before_request_logs_is_continued_with_a_reconstructed_entry(chain, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(chain["a"], old)
    (old / REQUEST_LOG).unlink()
    record = json.loads((old / "erasure.json").read_text())
    for key in ("request", "erased", "noop"):
        record.pop(key)
    (old / "erasure.json").write_text(json.dumps(record))
    assert check_request_log(old) is None and load_erased(old) is not None  # loads as before
    erase(old, "uce", ["two"], UCE, output_dir=tmp_path / "new", presets=False)
    log = _log(tmp_path / "new")
    assert [e["concepts"] for e in log] == [["seven"], ["two"]] and "reconstructed" in log[0]["note"]
    assert log[0]["artifact"]["sha256"] == _sha256(old / "erasure.safetensors")


def test_log_from_an_erasure_of_another_base_is_refused(chain, tmp_path):
    other = tmp_path / "v"
    erase("tiny-sd-v", "uce", ["seven"], UCE, output_dir=other, presets=False)
    assert read_erasure(other)["base_model"] == "tiny-sd-v"
    mixed = tmp_path / "mixed"
    shutil.copytree(chain["a"], mixed)
    shutil.copy2(other / REQUEST_LOG, mixed / REQUEST_LOG)
    with pytest.raises(
        RequestLogError, match="request 1 was applied to base tiny-sd-v, erasure.json names base tiny-sd"
    ):
        erase(mixed, "uce", ["two"], UCE, output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()
    # a chain on the other base keeps that base
    record = erase(other, "uce", ["two"], UCE, output_dir=tmp_path / "v2", presets=False)
    assert record["base_model"] == "tiny-sd-v" and record["concepts"] == ["seven", "two"]


def test_output_overlapping_the_previous_erasure_is_refused(chain):
    a = chain["a"]
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    for out in (a, a / "inside"):
        with pytest.raises(OutputOverlapsInputError):
            erase(a, "uce", ["two"], UCE, output_dir=out, overwrite=True)
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before


def test_fmn_lora_chain_fuses_both_loras(tmp_path):
    first = tmp_path / "fmn-seven"
    erase("tiny-sd", "fmn", ["seven"], FMN_LORA, output_dir=first, presets=False)
    assert read_erasure(first)["artifact"]["format"] == "lora"
    record = erase(first, "fmn", ["two"], FMN_LORA, output_dir=tmp_path / "fmn-two", presets=False)
    assert record["artifact"]["format"] == "weights"  # relative to the base: the fused weights, not a LoRA
    assert record["changed_parameters"] and all(".attn2." in n for n in record["changed_parameters"])
    assert record["trained_parameter_count"] > 0
    # the reference: the fused first result saved as a plain pipeline, the second LoRA trained on it and fused
    plain = tmp_path / "after-seven"
    fused = load_erased(first)
    fused.unload_lora_weights()  # the fused weights stay, the LoRA layers go: a plain pipeline
    save_pipeline(fused, plain)
    keys = {**FMN_LORA, "templates": record["templates"], "retain_concepts": record["retain_concepts"]}
    erase(plain, "fmn", ["two"], keys, output_dir=tmp_path / "ref", presets=False)
    assert read_erasure(tmp_path / "ref")["artifact"]["format"] == "lora"
    erased = load_erased(tmp_path / "fmn-two")
    _assert_same_unet(erased, load_erased(tmp_path / "ref"), atol=1e-6)
    assert not any("lora" in n for n, _ in erased.unet.named_parameters())


def test_erase_sequence_writes_steps_evaluations_and_comparison(tmp_path):
    out = tmp_path / "seq"
    evaluation = EvaluationConfig(num_images=1, num_inference_steps=2, grid_seeds=1)
    summary = erase_sequence(
        "tiny-sd",
        "uce",
        ["seven", ["two", "five"], "seven"],
        UCE,
        out,
        evaluation=evaluation,
        oracle="none",
        compare_single=True,
    )
    assert [s["dir"] for s in summary["steps"]] == ["01-seven", "02-two+five", "03-seven"]
    assert [s["noop"] for s in summary["steps"]] == [False, False, True]
    assert summary["steps"][-1]["concepts"] == ["seven", "two", "five"]
    assert set(summary["steps"][1]["forget"]) == {"seven", "two", "five"}
    assert "seven" not in summary["steps"][1]["retain"] and "one" in summary["steps"][1]["retain"]
    assert summary["single"]["concepts"] == ["seven", "two", "five"]
    assert set(summary["comparison"]) >= {"sequential", "single", "retain_accuracy_difference"}
    assert summary["first_request"]["concepts"] == ["seven"] and isinstance(summary["first_request"]["goal_met"], bool)
    for name in ("sequence.json", "sequence.md", "sequence.png", "eval/01-seven/metrics.json", "single/erasure.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "sequence.json").read_text())["steps"][0]["index"] == 1
    assert "| one request | seven, two, five |" in (out / "sequence.md").read_text()
    assert len(_log(out / "03-seven")) == 3 and check_request_log(out / "03-seven")[-1]["noop"] is True
    assert read_erasure(out / "02-two+five")["previous"]["path"] == "../01-seven"  # valid after the atomic rename
    assert not list(tmp_path.glob(".seq.tmp-*"))


@pytest.mark.parametrize(
    ("requests", "oracle", "message"),
    [([], "none", "non-empty list"), ([["  "]], "none", "request 1 is empty"), (["seven"], "maybe", "oracle must")],
)
def test_erase_sequence_bad_input_writes_nothing(tmp_path, requests, oracle, message):
    with pytest.raises(ConfigError, match=message):
        erase_sequence("tiny-sd", "uce", requests, UCE, tmp_path / "seq", oracle=oracle)
    assert not (tmp_path / "seq").exists()


# ---------------------------------------------------------------------------------------------------- CLI


def _uce_set() -> list[str]:
    return ["--set", "guide_concepts=[digit]", "preserve_scale=2.0", "erase_scale=3.0"]


def test_cli_erase_on_top_of_a_previous_erasure_and_noop(chain, tmp_path, capsys):
    out = tmp_path / "c"
    assert (
        main(
            [
                "erase",
                "--method",
                "uce",
                "--model",
                str(chain["b"]),
                "--concept",
                "five",
                "--output",
                str(out),
                *_uce_set(),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "erased so far seven, two, five" in printed and "erased five from tiny-sd" in printed
    assert [e["concepts"] for e in _log(out)] == [["seven"], ["two"], ["five"]]
    again = tmp_path / "d"
    assert (
        main(["erase", "--method", "uce", "--model", str(out), "--concept", "two", "--output", str(again), *_uce_set()])
        == 0
    )
    assert "no-op: already erased (two by request 2)" in capsys.readouterr().out
    assert _log(again)[-1]["noop"] is True


def test_cli_refuses_a_tampered_previous_erasure(chain, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(chain["a"], bad)
    (bad / "erasure.safetensors").write_bytes(b"x" + (bad / "erasure.safetensors").read_bytes()[1:])
    out = tmp_path / "out"
    for command in ("erase", "sequence"):
        code = main([command, "--method", "uce", "--model", str(bad), "--concept", "two", "--output", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "does not match the model beside it" in err, err
        assert "Traceback" not in err and not out.exists()


def test_cli_sequence(tmp_path, capsys):
    out = tmp_path / "seq"
    args = ["sequence", "--method", "uce", "--concept", "seven", "--request", "two,five", "--no_evaluate"]
    assert main([*args, "--output", str(out), *_uce_set()]) == 0
    printed = capsys.readouterr().out
    assert "2 requests: seven -> two+five" in printed and "02-two+five" in printed
    assert (out / "sequence.md").is_file() and not (out / "sequence.png").exists()
    assert [e["concepts"] for e in _log(out / "02-two+five")] == [["seven"], ["two", "five"]]
    code = main(["sequence", "--method", "uce", "--output", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "no request" in err and err.count("\n") == 1 and not (tmp_path / "none").exists()
    code = main([*args, "--model", str(out / "01-seven"), "--output", str(out / "01-seven" / "more")])
    err = capsys.readouterr().err
    assert code == 2 and "lies inside the input" in err and not (out / "01-seven" / "more").exists()


def test_sequential_step_in_a_pipeline(tmp_path):
    from pipelines.runner import load_pipeline as load_spec

    spec = {
        "name": "mini-sequence",
        "steps": [
            {
                "name": "sequence",
                "step": "sequential_erasure",
                "config": {"method": "uce", "requests": ["seven", "two"], "config": UCE, "evaluate": False},
            }
        ],
    }
    manifest = load_spec(spec, output_dir=tmp_path / "run").run(log=lambda _: None)
    outputs = manifest["steps"]["sequence"]["outputs"]
    final = Path(outputs["final_dir"])
    assert final.name == "02-two" and read_erasure(final)["concepts"] == ["seven", "two"]
    assert Path(outputs["sequence_path"]).is_file()
    with pytest.raises(ConfigError, match="set per request"):
        load_spec(
            {
                **spec,
                "steps": [
                    {**spec["steps"][0], "config": {**spec["steps"][0]["config"], "evaluation": {"forget": ["seven"]}}}
                ],
            },
            output_dir=tmp_path / "x",
        )


def test_bundled_sequential_config_validates():
    from pipelines.cli import CONFIGS_DIR
    from pipelines.runner import load_pipeline as load_spec

    load_spec(CONFIGS_DIR / "sequential.yaml", output_dir="/nonexistent/sequential")
