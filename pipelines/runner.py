"""Config-driven pipelines: a list of registered steps run in order into one output directory, resumably.

A pipeline file::

    name: quickstart
    output_dir: outputs/quickstart      # optional; `--output_dir` overrides
    seed: 0                             # default for every step config that has a `seed` field
    steps:
      - name: train                     # unique step id (a directory name)
        step: train_classifier          # a step type registered with concept_erase.core.registry.register_step
        config: {epochs: 20}
      - name: evaluate
        step: evaluate_classifier
        config: {model_dir: "${steps.train.model_dir}"}   # an output of an earlier step

Each step type is ``fn(context, config) -> dict`` of JSON-serialisable outputs; a value that is exactly one
``${steps.<id>.<key>}`` takes the output's value (any type), a reference inside a longer string is replaced by its
text. The output directory holds ``steps/<id>/`` (each written atomically, with ``run.json`` and ``config.yaml``),
``.work/<id>/`` (persistent scratch space for checkpoints, kept when a step fails), ``pipeline.yaml`` (the resolved
pipeline) and ``manifest.json`` (status, outputs, config hash and timings of every step).

The whole pipeline is validated before anything runs (unique step names, registered step types, every config
parsed; values holding references are left out of that check, so give the fields they fill a default; every
reference names an earlier step and, when that step type declares its outputs, one of them) and the output directory
must not be, contain or lie inside any input path of a step or the pipeline file. Re-running skips steps that
completed with the same resolved config; the first step that has to run makes every later step run again too, and
temporaries left by a killed run (``.<id>.tmp-<pid>-...`` of a process that is gone) are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from concept_erase.core.config import config_to_dict, dump_config, from_dict, merge_dicts, parse_overrides, read_yaml
from concept_erase.core.errors import ConceptEraseError, ConfigError, OutputExistsError, PipelineError
from concept_erase.core.io import (
    RunRecorder,
    atomic_file,
    atomic_output_dir,
    check_disjoint,
    check_output_dir,
    config_paths,
    remove_stale_temporaries,
    strict_json,
)
from concept_erase.core.readers import read_json_object
from concept_erase.core.registry import Entry, get_step

__all__ = ["PipelineConfig", "StepSpec", "StepContext", "Pipeline", "load_pipeline", "run_pipeline", "MANIFEST_NAME"]

MANIFEST_NAME = "manifest.json"
_REF_RE = re.compile(r"\$\{steps\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_.-]+)\}")
_STEP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_HASH_FILE = ".config_hash"
# a temporary left by atomic_output_dir / atomic_file: ``.<name>.tmp-<pid>-<8 hex>`` (or ``.old-``)
_TMP_RE = re.compile(r"^\.(.+)\.(?:tmp|old)-\d+-[0-9a-f]{8}$")


@dataclass
class StepSpec:
    name: str
    step: str
    config: dict = field(default_factory=dict)


@dataclass
class PipelineConfig:
    name: str = "pipeline"
    output_dir: str | None = None
    seed: int = 0
    description: str = ""
    steps: list[StepSpec] = field(default_factory=list)


@dataclass
class StepContext:
    """What a step function gets besides its config."""

    pipeline: str
    step_id: str
    step_dir: Path  # write outputs here: a temporary directory renamed to ``output_dir/steps/<id>`` on success
    output_dir: Path  # the pipeline's output directory
    seed: int
    outputs: dict[str, dict]  # outputs of the earlier steps, by step id
    log: Callable[[str], None] = print

    def outputs_with(self, key: str, step_ids: list[str] | None = None, what: str = "evaluation") -> list[str]:
        """The ids of ``step_ids`` (default: every earlier step that has one) whose outputs hold ``key``; a named step
        without it, or none at all, raises :class:`ConfigError`."""
        ids = step_ids or [s for s, out in self.outputs.items() if key in out]
        missing = [s for s in ids if key not in self.outputs.get(s, {})]
        if missing or not ids:
            raise ConfigError(
                f"no {what} outputs for {', '.join(missing) or 'the report'}; earlier steps: {', '.join(self.outputs)}"
            )
        return ids

    def check_inputs(self, *inputs: str | Path | None) -> None:
        """Refuse a step whose output (its step directory, and ``steps/<id>`` it becomes) is, contains or lies inside
        a path it reads from its config: the step would write into, or replace, that input."""
        for output in (Path(self.step_dir), Path(self.output_dir) / "steps" / self.step_id):
            check_disjoint(output, inputs)

    def work_dir(self, step_id: str | None = None) -> Path:
        """``output_dir/.work/<id>``: persistent scratch space (checkpoints) that survives a failed step."""
        path = self.output_dir / ".work" / (step_id or self.step_id)
        path.mkdir(parents=True, exist_ok=True)
        return path


# ---------------------------------------------------------------------------------------------------- loading


def _apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Top-level ``key=value`` and ``steps.<id>.<config key>=value`` overrides (steps are a list, matched by id)."""
    parsed = parse_overrides(overrides)
    step_overrides = parsed.pop("steps", None)
    data = merge_dicts(data, parsed)
    if step_overrides is None:
        return data
    steps = data.get("steps")
    if not isinstance(step_overrides, dict) or not isinstance(steps, list):
        raise ConfigError("step overrides look like steps.<step id>.<config key>=value")
    ids = [s.get("name") for s in steps if isinstance(s, dict)]
    steps = [dict(s) if isinstance(s, dict) else s for s in steps]
    for step_id, values in step_overrides.items():
        if step_id not in ids:
            raise ConfigError(f"override steps.{step_id}: no step named {step_id!r}; steps: {', '.join(map(str, ids))}")
        if not isinstance(values, dict):
            raise ConfigError(f"override steps.{step_id} must name a config key: steps.{step_id}.<key>=value")
        spec = steps[ids.index(step_id)]
        spec["config"] = merge_dicts(spec.get("config") or {}, values)
    data["steps"] = steps
    return data


def load_pipeline(
    source: str | Path | dict, overrides: list[str] | None = None, output_dir: str | Path | None = None
) -> Pipeline:
    """Read, override and validate a pipeline (a YAML path or a mapping); nothing runs and nothing is written."""
    data = read_yaml(source) if not isinstance(source, dict) else dict(source)
    if overrides:
        data = _apply_overrides(data, overrides)
    config = from_dict(PipelineConfig, data)
    if output_dir is not None:
        config.output_dir = str(output_dir)
    return Pipeline(config, source=None if isinstance(source, dict) else source)


# ---------------------------------------------------------------------------------------------------- references


def _references(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return _REF_RE.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in _references(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _references(v)]
    return []


def _strip_references(data: dict) -> dict:
    """``data`` without the values that hold references (recursing into mappings), for validation before running."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = _strip_references(value)
        elif not _references(value):
            out[key] = value
    return out


def _resolve(value: Any, outputs: dict[str, dict], where: str) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, outputs, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, outputs, where) for v in value]
    if not isinstance(value, str) or not _REF_RE.search(value):
        return value

    def lookup(step_id: str, key: str) -> Any:
        produced = outputs.get(step_id, {})
        if key not in produced:
            raise PipelineError(
                f"{where}: ${{steps.{step_id}.{key}}}: step {step_id!r} has no output {key!r}; "
                f"its outputs: {', '.join(produced) or '(none)'}"
            )
        return produced[key]

    whole = _REF_RE.fullmatch(value)
    if whole:
        return lookup(*whole.groups())
    return _REF_RE.sub(lambda m: str(lookup(*m.groups())), value)


def _remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporaries in ``directory`` (``.<name>.tmp-<pid>-<hex>``, ``.<name>.old-<pid>-<hex>``) whose
    process is gone (a run killed with kill -9 cannot clean up after itself); those of a live process are kept.
    This covers the steps this run skips too, which :func:`atomic_output_dir` never sees. Returns what was removed."""
    if not directory.is_dir():
        return []
    finals = sorted({m.group(1) for p in directory.iterdir() if (m := _TMP_RE.match(p.name))})
    return [path for name in finals for path in remove_stale_temporaries(directory / name)]


def _relocate(value: Any, old: str, new: str) -> Any:
    """Rewrite paths inside the temporary step directory to the final one."""
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old) :]
    if isinstance(value, dict):
        return {k: _relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relocate(v, old, new) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------- running


@dataclass
class _PlannedStep:
    spec: StepSpec
    entry: Entry
    raw: dict  # config with references, pipeline seed filled in


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _config_hash(step_type: str, config: Any) -> str:
    blob = json.dumps({"step": step_type, "config": config_to_dict(config)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = text[0] if text else ""
    return text if isinstance(exc, ConceptEraseError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def _with_prefix(exc: ConceptEraseError, prefix: str) -> ConceptEraseError:
    try:
        return type(exc)(f"{prefix}: {exc}")
    except TypeError:  # a subclass with another constructor
        return PipelineError(f"{prefix}: {exc}")


class Pipeline:
    """A validated pipeline. :meth:`run` executes it into ``output_dir``."""

    def __init__(self, config: PipelineConfig, source: str | Path | None = None):
        self.config = config
        self.source = source  # the pipeline file, when it was read from one
        self.steps = self._validate(config)

    @staticmethod
    def _validate(config: PipelineConfig) -> list[_PlannedStep]:
        if not config.steps:
            raise PipelineError(f"pipeline {config.name!r} has no steps")
        planned: list[_PlannedStep] = []
        seen: list[str] = []
        declared: dict[str, tuple[str, tuple[str, ...] | None]] = {}  # step id -> (step type, its output keys)
        for i, spec in enumerate(config.steps):
            where = f"steps[{i}] {spec.name!r}"
            if not _STEP_ID_RE.match(spec.name):
                raise PipelineError(
                    f"{where}: a step name must be letters, digits, '_' or '-', starting with a letter or digit"
                )
            if spec.name in seen:
                raise PipelineError(f"{where}: duplicate step name; step names must be unique")
            try:
                entry = get_step(spec.step)
            except ConceptEraseError as exc:
                raise _with_prefix(exc, where) from None
            raw = dict(spec.config)
            if entry.config_cls is not None and "seed" in {f.name for f in dataclasses.fields(entry.config_cls)}:
                raw.setdefault("seed", config.seed)
            for step_id, key in _references(raw):
                if step_id not in seen:
                    raise PipelineError(
                        f"{where}: ${{steps.{step_id}.{key}}} must refer to an earlier step; earlier steps: "
                        f"{', '.join(seen) or '(none)'}"
                    )
                step_type, keys = declared[step_id]
                if keys is not None and key not in keys:
                    raise PipelineError(
                        f"{where}: ${{steps.{step_id}.{key}}}: step {step_id!r} ({step_type}) has no output {key!r}; "
                        f"its outputs: {', '.join(keys) or '(none)'}"
                    )
            try:
                entry.make_config(_strip_references(raw))
            except ConceptEraseError as exc:
                raise _with_prefix(exc, f"{where} ({spec.step})") from None
            planned.append(_PlannedStep(spec, entry, raw))
            seen.append(spec.name)
            declared[spec.name] = (spec.step, entry.outputs)
        return planned

    def resolved_config(self) -> dict:
        """The pipeline with overrides applied and every step's defaults filled in (references kept)."""
        steps = []
        for p in self.steps:
            defaults = config_to_dict(p.entry.make_config(_strip_references(p.raw))) if p.entry.config_cls else {}
            steps.append({"name": p.spec.name, "step": p.spec.step, "config": merge_dicts(defaults or {}, p.raw)})
        return {**config_to_dict(self.config), "steps": steps}

    def run(
        self, output_dir: str | Path | None = None, overwrite: bool = False, log: Callable[[str], None] = print
    ) -> dict:
        """Run every step not already completed with the same config; return the manifest.

        Raises:
            OutputExistsError: the output directory holds something that is not this pipeline's output (and
                ``overwrite`` is false).
            PipelineError: a step failed (the manifest records it; completed steps are kept).
        """
        target = output_dir or self.config.output_dir
        if not target:
            raise ConfigError("no output directory: set output_dir in the pipeline file or pass --output_dir")
        check_disjoint(target, self.input_paths())  # before anything is created or replaced
        return _Run(self, Path(target).absolute(), overwrite, log).execute()

    def input_paths(self) -> list[str]:
        """The local paths the steps read that are given literally (references point into the output directory):
        values of path-like config keys (``model_dir``, ``mask_path``, ``model``, ``dataset``, ...) and the pipeline
        file itself."""
        paths = [str(self.source)] if self.source is not None else []
        for p in self.steps:
            values = p.entry.make_config(_strip_references(p.raw)) if p.entry.config_cls else None
            paths += config_paths(config_to_dict(values) if values is not None else {})
        return paths


class _Run:
    def __init__(self, pipeline: Pipeline, out: Path, overwrite: bool, log: Callable[[str], None]):
        self.pipeline, self.out, self.log = pipeline, out, log
        self.previous = self._prepare(overwrite)

    def _prepare(self, overwrite: bool) -> dict:
        previous = self._read_previous(overwrite)
        for directory in (self.out, self.out / "steps"):  # left by a run that was killed (kill -9)
            for path in _remove_stale_temporaries(directory):
                self.log(f"removed {path.name}, a temporary left by a run that was killed")
        return previous

    def _read_previous(self, overwrite: bool) -> dict:
        out, name = self.out, self.pipeline.config.name
        manifest_path = out / MANIFEST_NAME
        if overwrite:
            check_output_dir(out, overwrite=True)  # refuses a file
            shutil.rmtree(out, ignore_errors=True)
        elif manifest_path.is_file():
            previous = _read_manifest(manifest_path)
            if previous.get("pipeline") != name:
                raise OutputExistsError(
                    f"output directory {out} holds pipeline {previous.get('pipeline')!r}, not {name!r}; "
                    "pass --overwrite to replace it or choose another --output_dir"
                )
            return previous
        else:
            check_output_dir(out, overwrite=False)
        out.mkdir(parents=True, exist_ok=True)
        return {}

    def _write_manifest(self) -> None:
        _write_text_atomic(
            self.out / MANIFEST_NAME, strict_json(self.manifest, MANIFEST_NAME, indent=2, default=str) + "\n"
        )

    def execute(self) -> dict:
        cfg = self.pipeline.config
        resolved = self.pipeline.resolved_config()
        _write_text_atomic(self.out / "pipeline.yaml", yaml.safe_dump(resolved, sort_keys=False))
        old_steps = self.previous.get("steps", {})
        self.manifest = {
            "pipeline": cfg.name,
            "output_dir": str(self.out),
            "config": resolved,
            "status": "running",
            "started": _now(),
            "finished": None,
            "runs": int(self.previous.get("runs", 0)) + 1,
            "last_run": {"ran": [], "skipped": []},
            "steps": {p.spec.name: dict(old_steps.get(p.spec.name, {}), step=p.spec.step) for p in self.pipeline.steps},
        }
        outputs: dict[str, dict] = {}
        rerun_rest = False
        n = len(self.pipeline.steps)
        for i, planned in enumerate(self.pipeline.steps, start=1):
            step_id = planned.spec.name
            record = self.manifest["steps"][step_id]
            label = f"[{i}/{n}] {step_id} ({planned.spec.step})"
            try:
                config = planned.entry.make_config(_resolve(planned.raw, outputs, f"step {step_id!r}"))
                digest = _config_hash(planned.spec.step, config)
            except ConceptEraseError as exc:
                self._mark_pending(i)
                self._fail(step_id, record, exc, label, started=_now(), seconds=0.0)
            if not rerun_rest and self._reusable(step_id, record, digest):
                outputs[step_id] = record["outputs"]
                self.manifest["last_run"]["skipped"].append(step_id)
                self.log(f"{label}: skipped (completed in an earlier run)")
                continue
            rerun_rest = True  # everything after a step that runs must run again
            self._mark_pending(i)
            outputs[step_id] = self._run_step(planned, config, digest, record, outputs, label)
        self.manifest.update(status="completed", finished=_now())
        self._write_manifest()
        with contextlib.suppress(OSError):
            (self.out / ".work").rmdir()  # only when empty: failed steps keep their checkpoints
        return self.manifest

    def _mark_pending(self, index: int) -> None:
        """Steps after position ``index`` (1-based) no longer hold valid results."""
        for later in self.pipeline.steps[index:]:
            old = self.manifest["steps"][later.spec.name]
            self.manifest["steps"][later.spec.name] = {
                "step": later.spec.step,
                "status": "pending",
                "runs": old.get("runs", 0),
            }

    def _reusable(self, step_id: str, record: dict, digest: str) -> bool:
        return (
            record.get("status") == "completed"
            and record.get("config_hash") == digest
            and (self.out / "steps" / step_id).is_dir()
            and isinstance(record.get("outputs"), dict)
        )

    def _prepare_work_dir(self, step_id: str, digest: str) -> None:
        """Keep ``.work/<id>`` only when it was made for the same config (a resumable failed attempt)."""
        work = self.out / ".work" / step_id
        hash_file = work / _HASH_FILE
        if work.exists() and (not hash_file.is_file() or hash_file.read_bytes().strip() != digest.encode()):
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        hash_file.write_text(digest + "\n")

    def _run_step(
        self, planned: _PlannedStep, config: Any, digest: str, record: dict, outputs: dict, label: str
    ) -> dict:
        step_id = planned.spec.name
        final = self.out / "steps" / step_id
        started, start = _now(), time.perf_counter()
        record.update(
            status="running",
            config=config_to_dict(config),
            config_hash=digest,
            started=started,
            finished=None,
            wall_time_s=None,
            outputs=None,
            error=None,
            runs=int(record.get("runs", 0)) + 1,
        )
        self.manifest["last_run"]["ran"].append(step_id)
        self._write_manifest()
        self.log(f"{label}: running")
        self._prepare_work_dir(step_id, digest)
        seed = getattr(config, "seed", self.pipeline.config.seed)
        try:
            with atomic_output_dir(final, overwrite=True) as tmp:
                context = StepContext(self.pipeline.config.name, step_id, tmp, self.out, seed, dict(outputs), self.log)
                with RunRecorder(
                    f"step:{planned.spec.step}", config, seed=seed, pipeline=self.pipeline.config.name, step=step_id
                ) as recorder:
                    produced = planned.entry.target(context, config)
                produced = self._check_outputs(produced, step_id)
                produced = _relocate(produced, str(tmp), str(final))
                recorder.record["outputs"] = produced
                recorder.write(tmp)
                if config is not None:
                    dump_config(config, tmp / "config.yaml")
        except Exception as exc:
            self._fail(step_id, record, exc, label, started, time.perf_counter() - start)
        seconds = round(time.perf_counter() - start, 4)
        record.update(status="completed", outputs=produced, finished=_now(), wall_time_s=seconds)
        self._write_manifest()
        shutil.rmtree(self.out / ".work" / step_id, ignore_errors=True)
        scalars = " ".join(f"{k}={v:.4g}" for k, v in produced.items() if isinstance(v, float))
        self.log(f"{label}: completed in {seconds:.2f}s {scalars}".rstrip())
        return produced

    @staticmethod
    def _check_outputs(produced: Any, step_id: str) -> dict:
        if produced is None:
            return {}
        if not isinstance(produced, dict):
            raise PipelineError(
                f"step {step_id!r} returned {type(produced).__name__}; a step must return a dict of outputs"
            )
        try:
            return json.loads(json.dumps(produced, default=_path_to_str))
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"step {step_id!r} returned outputs that are not JSON-serialisable: {exc}") from None

    def _fail(self, step_id: str, record: dict, exc: BaseException, label: str, started: str, seconds: float):
        message = _one_line(exc)
        record.update(status="failed", error=message, started=record.get("started") or started, finished=_now())
        record["wall_time_s"] = round(seconds, 4)
        self.manifest.update(status="failed", finished=_now())
        self._write_manifest()
        self.log(f"{label}: failed: {message}")
        raise PipelineError(
            f"step {step_id!r} ({record['step']}) failed: {message} (completed steps are kept in {self.out}; "
            "rerun to resume)"
        ) from exc


def _read_manifest(path: Path) -> dict:
    """A previous run's manifest, checked: a truncated, non-JSON or malformed one is refused in one line."""

    def corrupt(what: str) -> PipelineError:
        return PipelineError(f"{path} is corrupt ({what}); pass --overwrite to start again")

    try:
        data = read_json_object(path, "manifest", PipelineError)
    except PipelineError as exc:
        raise PipelineError(f"{exc}; pass --overwrite to start again") from None
    if not isinstance(data.get("pipeline"), str):
        raise corrupt("'pipeline' is missing or not a string")
    runs = data.get("runs", 0)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise corrupt(f"'runs' must be a non-negative integer, got {runs!r}")
    steps = data.get("steps", {})
    if not isinstance(steps, dict):
        raise corrupt(f"'steps' must be an object, got {type(steps).__name__}")
    for step_id, record in steps.items():
        if not isinstance(record, dict):
            raise corrupt(f"steps.{step_id} must be an object, got {type(record).__name__}")
        step_runs = record.get("runs", 0)
        if isinstance(step_runs, bool) or not isinstance(step_runs, int) or step_runs < 0:
            raise corrupt(f"steps.{step_id}.runs must be a non-negative integer, got {step_runs!r}")
        if record.get("outputs") is not None and not isinstance(record["outputs"], dict):
            raise corrupt(f"steps.{step_id}.outputs must be an object, got {type(record['outputs']).__name__}")
    return data


def _path_to_str(obj: Any) -> str:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def run_pipeline(
    source: str | Path | dict,
    output_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Load, validate and run a pipeline; return its manifest."""
    pipeline = load_pipeline(source, overrides)
    return pipeline.run(output_dir, overwrite=overwrite, log=log)
