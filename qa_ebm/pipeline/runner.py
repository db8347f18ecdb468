"""`qa-ebm pipeline run pipelines/X.yaml`: the stages in order, each skipped when nothing it depends on changed.

A pipeline file names a config, overrides, inputs and the stages to run:

    name: squad
    config: configs/tiny.yaml       # relative to the current dir, else to the pipeline file's repo
    out: runs/squad
    set: [data.splits.val=0, ...]   # the same KEY=VALUE overrides as --set
    inputs: {squad: rajpurkar/squad}
    stages: [preprocess, train_hvae, proposal, span_energy, export, evaluate]

Each stage writes one directory under `out` (data/, hvae/, proposal/, energy/, pipeline/, eval/) through the
same library functions the single commands call, and a `stage.json` there with its key (a hash of the
config sections it reads, its inputs' content hashes and the keys of the stages it builds on), the seconds
it took and its summary. A stage
whose key is unchanged and whose output is complete is skipped, so rerunning after a change redoes
only the stages downstream of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qa_ebm.config import Config, load_config
from qa_ebm.errors import ConfigError, DataError
from qa_ebm.io import inside, sha256_json, write_json

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PipelineSpec:
    name: str
    config: Path
    out: Path
    overrides: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)


@dataclass
class StageReport:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float
    out: Path
    summary: dict[str, Any] = field(default_factory=dict)


def load_spec(path: str | Path, inputs: dict[str, str | None] | None = None, out: str | None = None) -> PipelineSpec:
    """Read and check a pipeline file; `inputs` / `out` given on the command line replace the file's.

    A pipeline file may come from elsewhere, so the paths it names (config, out, inputs, path values of `set`)
    must lie inside the working directory or the pipeline file's own directory (the config may also be one of
    the file's project or qa-ebm's own `configs/`): `../../etc` or an absolute path elsewhere is a ConfigError.
    Paths given on the command line are the user's choice and are taken as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of name, config, out, set, inputs, stages")
    valid = {"name", "config", "out", "set", "inputs", "stages"}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(valid))}")
    stages = raw.get("stages") or []
    if not isinstance(stages, list):
        raise ConfigError(f"{path}: stages must be a list of: {', '.join(STAGES)}")
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ConfigError(f"{path}: stages must be a list of: {', '.join(STAGES)} (got {bad or 'none'})")
    order = [s for s in STAGES if s in stages]
    if stages != order:
        raise ConfigError(f"{path}: stages out of order; the order is {', '.join(order)}")
    for key, kind in (("set", list), ("inputs", dict)):
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise ConfigError(f"{path}: {key} must be a {'list' if kind is list else 'mapping'}")
    roots = (Path.cwd(), path.resolve().parent)
    project = path.resolve().parents[1]
    config = Path(str(raw.get("config", "configs/tiny.yaml")))
    if not config.is_file() and (project / config).is_file():
        config = project / config
    _check_inside(path, "config", str(config), (*roots, project, REPO_ROOT / "configs"))
    if out is None:
        out = str(raw.get("out") or f"runs/{path.stem}")
        _check_inside(path, "out", out, roots, "--out")
    given = {k: v for k, v in (inputs or {}).items() if v}
    file_inputs = {str(k): str(v) for k, v in (raw.get("inputs") or {}).items()}
    for k, v in file_inputs.items():
        if k not in given:
            _check_inside(path, f"inputs.{k}", v, roots, f"--{k}")
    overrides = [str(x) for x in raw.get("set") or []]
    for item in overrides:
        value = item.partition("=")[2].strip()
        if value.startswith(("/", "~")) or ".." in Path(value).parts:
            _check_inside(path, f"set {item.partition('=')[0]}", value, roots)
    return PipelineSpec(
        name=str(raw.get("name", path.stem)),
        config=config,
        out=Path(out),
        overrides=overrides,
        inputs={**file_inputs, **given},
        stages=stages,
    )


def _check_inside(spec: Path, key: str, value: str, roots: tuple[Path, ...], flag: str | None = None) -> None:
    if inside(Path(value).expanduser(), roots):
        return
    instead = f"; to use a path elsewhere, give it on the command line ({flag})" if flag else ""
    raise ConfigError(
        f"{spec}: {key} = {value!r} lies outside the working directory and the pipeline file's directory{instead}"
    )


# --------------------------------------------------------------------------------------- stages


@dataclass
class Context:
    spec: PipelineSpec
    config: Config
    keys: dict[str, str] = field(default_factory=dict)  # stage -> key of its current output
    progress: bool = True

    def dir(self, stage: str) -> Path:
        return self.spec.out / OUT_DIRS[stage]


def _stage_preprocess(ctx: Context) -> dict[str, Any]:
    from qa_ebm.data.preprocess import preprocess

    sources = {k: ctx.spec.inputs[k] for k in ("squad", "physics") if k in ctx.spec.inputs}
    if not sources:
        raise ConfigError(f"pipeline {ctx.spec.name}: no inputs (give --squad and/or --physics)")
    result = preprocess(ctx.config, ctx.dir("preprocess"), **sources, overwrite=True)
    return {"counts": result.manifest.get("counts", {})}


def _stage_train_hvae(ctx: Context) -> dict[str, Any]:
    from qa_ebm.training.hvae_trainer import train_hvae

    result = train_hvae(ctx.config, ctx.dir("preprocess"), ctx.dir("train_hvae"), overwrite=True, progress=ctx.progress)
    return {"step": result.step, "stopped": result.stopped}


def _stage_train_ebt(ctx: Context) -> dict[str, Any]:
    from qa_ebm.training.ebt_trainer import train_ebt

    result = train_ebt(ctx.config, ctx.dir("train_hvae"), ctx.dir("train_ebt"), overwrite=True, progress=ctx.progress)
    return {"step": result.step, "stopped": result.stopped}


def _stage_train_regress(ctx: Context) -> dict[str, Any]:
    from qa_ebm.training.ebt_trainer import train_ebt

    config = dataclasses.replace(ctx.config, train_ebt=dataclasses.replace(ctx.config.train_ebt, objective="regress"))
    result = train_ebt(config, ctx.dir("train_hvae"), ctx.dir("train_regress"), overwrite=True, progress=ctx.progress)
    return {"step": result.step, "stopped": result.stopped}


def _stage_train_baseline(ctx: Context) -> dict[str, Any]:
    from qa_ebm.training.baseline_trainer import train_baseline

    result = train_baseline(
        ctx.config, ctx.dir("train_hvae"), ctx.dir("train_baseline"), overwrite=True, progress=ctx.progress
    )
    return {"step": result.step, "stopped": result.stopped}


def _reading_train_questions(ctx: Context, data: Any, stage: str) -> list[dict[str, Any]]:
    """The train questions (with their passages) a reading stage learns from.

    With ``reading.energy_holdout`` > 0 the train articles are divided (``splits.hold_out``): the proposal stage
    gets the ones not held out, the span_energy stage the held-out ones, on which the frozen head's candidates
    and scores are out-of-sample, as on val, test and a user's questions.
    """
    examples = data.reading_examples("train")
    if not examples:
        raise DataError(f"{ctx.dir('preprocess')}: the train split has no questions with a passage (SQuAD)")
    share = ctx.config.reading.energy_holdout
    if share > 0:
        from qa_ebm.data.splits import hold_out

        titles = [ex["title"] for ex in examples]
        held = hold_out(titles, share, ctx.config.reading.seed)
        examples = [ex for ex, h in zip(examples, held, strict=True) if h == (stage == "span_energy")]
        if not examples:
            who = "the energy" if stage == "span_energy" else "the proposal head"
            raise DataError(
                f"{ctx.dir('preprocess')}: reading.energy_holdout={share} leaves {who} no train questions "
                f"(the holdout takes whole articles; the train split has {len(set(titles))})"
            )
    return examples


def _stage_proposal(ctx: Context) -> dict[str, Any]:
    from qa_ebm.data.processed import load_processed
    from qa_ebm.io import atomic_output_dir
    from qa_ebm.reading.proposal import SpanProposalHead, train_proposal_head

    rc = ctx.config.reading
    # SQuAD v2's unanswerable questions train every window towards CLS: the null score the no-answer decision reads
    examples = _reading_train_questions(ctx, load_processed(ctx.dir("preprocess")), "proposal")
    model, tokenizer = SpanProposalHead.from_encoder(
        rc.encoder,
        max_length=rc.max_length,
        stride=rc.stride,
        max_answer_tokens=rc.max_answer_tokens,
        freeze_encoder=rc.freeze_encoder,
    )
    result = train_proposal_head(
        model,
        tokenizer,
        examples,
        max_seconds=rc.proposal_max_seconds,
        epochs=rc.proposal_epochs,
        batch_size=rc.proposal_batch_size,
        lr=rc.proposal_lr,
        seed=rc.seed,
        mixed_precision=rc.mixed_precision,
        group_by_length=rc.proposal_group_by_length,
        progress=ctx.progress,
    )
    with atomic_output_dir(ctx.dir("proposal"), overwrite=True) as tmp:
        model.save_pretrained(tmp, tokenizer)
    summary = {k: v for k, v in dataclasses.asdict(result).items() if isinstance(v, (int, float, str))}
    return {**summary, "questions": len(examples)}


def _stage_span_energy(ctx: Context) -> dict[str, Any]:
    import random

    from qa_ebm.data.processed import load_processed
    from qa_ebm.io import atomic_output_dir
    from qa_ebm.reading.energy import SpanEnergyConfig
    from qa_ebm.reading.proposal import load_proposal_head
    from qa_ebm.training.reading_trainer import SpanTrainConfig, train_span_energy

    rc = ctx.config.reading
    data = load_processed(ctx.dir("preprocess"))
    # the holdout is dealt over every train question, as the proposal stage deals it; then the answerable ones
    train = [ex for ex in _reading_train_questions(ctx, data, "span_energy") if not ex["is_impossible"]]
    random.Random(rc.seed).shuffle(train)  # a cap takes questions from every article, not the first ones
    val = data.reading_examples("val")  # SQuAD v2's unanswerable questions set the no-answer threshold
    proposal, tokenizer = load_proposal_head(ctx.dir("proposal"))
    result = train_span_energy(
        proposal,
        tokenizer,
        ctx.dir("train_hvae"),
        train[: rc.energy_max_questions],
        val,
        SpanEnergyConfig(
            # the energy reads whole windows: its condition length is the window's
            ebt=dataclasses.replace(ctx.config.ebt, max_condition_tokens=rc.max_length),
            top_k=rc.top_k,
            max_answer_tokens=rc.max_answer_tokens,
            use_proposal_score=rc.use_proposal_score,
        ),
        SpanTrainConfig(
            steps=rc.energy_steps,
            max_seconds=rc.energy_max_seconds,
            batch_size=rc.energy_batch_size,
            lr=rc.energy_lr,
            mcmc_coeff=rc.mcmc_coeff,
            risk_coeff=rc.risk_coeff,
            mixed_precision=rc.mixed_precision,
            seed=rc.seed,
        ),
        progress=ctx.progress,
    )
    with atomic_output_dir(ctx.dir("span_energy"), overwrite=True) as tmp:
        result.model.save_pretrained(tmp)
    return {
        "steps": result.steps,
        "stopped": result.stopped,
        "seconds": round(result.seconds, 1),
        "train_questions": result.train_questions,
        "metrics": result.metrics,
    }


def _reading(ctx: Context) -> bool:
    """A reading pipeline when the spec trains a span energy; else an answer pipeline from train_ebt."""
    return "span_energy" in ctx.spec.stages


def _stage_export(ctx: Context) -> dict[str, Any]:
    from qa_ebm.io import atomic_output_dir

    if _reading(ctx):
        from qa_ebm.pipeline.reading import ReadingPipeline

        pipe = ReadingPipeline.from_runs(
            ctx.dir("proposal"),
            ctx.dir("train_hvae"),
            ctx.dir("span_energy"),
            mixed_precision=ctx.config.reading.mixed_precision,
        )
    else:
        from qa_ebm.pipeline.generative import QAPipeline

        if "train_ebt" not in ctx.spec.stages:
            raise ConfigError(f"pipeline {ctx.spec.name}: export needs train_ebt (or proposal + span_energy)")
        pipe = QAPipeline.from_runs(ctx.dir("train_hvae"), ctx.dir("train_ebt"))
    with atomic_output_dir(ctx.dir("export"), overwrite=True) as tmp:
        pipe.save_pretrained(tmp)
    return {"pipeline": str(ctx.dir("export")), "kind": type(pipe).__name__}


def _stage_evaluate(ctx: Context) -> dict[str, Any]:
    from qa_ebm.data.processed import load_processed

    data = load_processed(ctx.dir("preprocess"))
    evaluate_split = _evaluate_reading if _reading(ctx) else _evaluate_generative(ctx, data)
    summary = {}
    for split in ("val", "test"):  # settings are chosen on val; test is reported beside it
        result = evaluate_split(ctx, data, split)
        if result is not None:
            summary[split] = result
    return summary


def _evaluate_reading(ctx: Context, data: Any, split: str) -> dict[str, Any] | None:
    from qa_ebm.pipeline.evaluate_reading import evaluate_reading, write_results
    from qa_ebm.pipeline.reading import ReadingPipeline

    every = data.reading_examples(split)
    examples = [e for e in every if not e["is_impossible"]]
    if not examples:
        return None
    pipe = ReadingPipeline.from_pretrained(ctx.dir("export"))
    result = evaluate_reading(pipe, examples, unanswerable=[e for e in every if e["is_impossible"]])
    result["split"] = split
    write_results(result, ctx.dir("evaluate") / split, f"Reading pipeline {ctx.spec.name}: {split}")
    return {r["row"]: {"em": r["exact_match"], "f1": r["f1"]} for r in result["rows"]}


def _evaluate_generative(ctx: Context, data: Any) -> Callable[[Context, Any, str], dict[str, Any] | None]:
    """The per-split evaluation of an answer pipeline, with the models every split shares loaded once."""
    from qa_ebm.pipeline.evaluate_generative import (
        evaluate_generative,
        load_baseline,
        load_reference_lm,
        load_regress,
        write_results,
    )
    from qa_ebm.pipeline.generative import QAPipeline

    ec = ctx.config.evaluate
    pipe = QAPipeline.from_pretrained(ctx.dir("export"))
    regress = load_regress(ctx.dir("train_regress")) if "train_regress" in ctx.spec.stages else None
    baseline = load_baseline(ctx.dir("train_baseline")) if "train_baseline" in ctx.spec.stages else None
    reference_lm = load_reference_lm(ec.reference_lm)
    train = data.answer_examples("train")

    def run(ctx: Context, data: Any, split: str) -> dict[str, Any] | None:
        examples = data.answer_examples(split)[: ec.limit]
        if not examples:
            return None
        result = evaluate_generative(
            pipe,
            examples,
            train,
            steps=ec.steps,
            candidates=ec.candidates,
            regress=regress,
            baseline=baseline,
            reference_lm=reference_lm,
        )
        result["split"] = split
        write_results(result, ctx.dir("evaluate") / split, f"Answer pipeline {ctx.spec.name}: {split}")
        keys = ("bleu", "rougeL", "f1", "perplexity")
        return {r["row"]: {k: r[k] for k in keys if k in r} for r in result["rows"]}

    return run


OUT_DIRS = {
    "preprocess": "data",
    "train_hvae": "hvae",
    "train_ebt": "ebt",
    "train_regress": "regress",
    "train_baseline": "baseline",
    "proposal": "proposal",
    "span_energy": "energy",
    "export": "pipeline",
    "evaluate": "eval",
}
# The reading fields the proposal stage reads: the energy's settings change without retraining the head.
PROPOSAL_FIELDS = (
    "encoder",
    "freeze_encoder",
    "max_length",
    "stride",
    "max_answer_tokens",
    "proposal_max_seconds",
    "proposal_batch_size",
    "proposal_lr",
    "proposal_epochs",
    "proposal_group_by_length",
    "energy_holdout",
    "mixed_precision",
    "seed",
)
# stage -> (function, config sections it reads (a name, or (name, fields) for part of one), stages it builds on)
Sections = tuple[str | tuple[str, tuple[str, ...]], ...]
STAGES: dict[str, tuple[Callable[[Context], dict[str, Any]], Sections, tuple[str, ...]]] = {
    "preprocess": (_stage_preprocess, ("data",), ()),
    "train_hvae": (_stage_train_hvae, ("hvae", "train_hvae"), ("preprocess",)),
    "train_ebt": (_stage_train_ebt, ("ebt", "train_ebt"), ("train_hvae",)),
    "train_regress": (_stage_train_regress, ("ebt", "train_ebt"), ("train_hvae",)),
    "train_baseline": (_stage_train_baseline, ("train_baseline",), ("train_hvae",)),
    "proposal": (_stage_proposal, (("reading", PROPOSAL_FIELDS),), ("preprocess",)),
    "span_energy": (_stage_span_energy, ("ebt", "reading"), ("train_hvae", "proposal")),
    # a stage the spec does not run contributes an empty key: export is a reading or an answer pipeline
    "export": (
        _stage_export,
        (("reading", ("mixed_precision",)),),
        ("train_hvae", "train_ebt", "proposal", "span_energy"),
    ),
    "evaluate": (_stage_evaluate, ("evaluate",), ("export", "train_regress", "train_baseline")),
}


def stage_key(ctx: Context, stage: str) -> str:
    _, sections, upstream = STAGES[stage]
    config = ctx.config.to_dict()
    read: dict[str, Any] = {}
    for section in sections:
        if isinstance(section, str):
            read[section] = config[section]
        else:
            name, fields = section
            read[name] = {f: config[name][f] for f in fields}
    parts: dict[str, Any] = {"stage": stage, "config": read}
    parts["upstream"] = {u: ctx.keys.get(u, "") for u in upstream}
    if stage == "preprocess":
        parts["inputs"] = {k: _input_fingerprint(v) for k, v in sorted(ctx.spec.inputs.items())}
    return sha256_json(parts)


def _input_fingerprint(spec: str) -> str:
    from qa_ebm.io import sha256_file

    p = Path(spec)
    return sha256_file(p) if p.is_file() else spec  # a Hub id: its name (the Hub's revision is the user's)


def run_pipeline(spec: PipelineSpec, force: bool = False, progress: bool = True, on_stage=None) -> list[StageReport]:
    """Run the spec's stages in order, skipping the ones whose key and output are unchanged."""
    config = load_config(spec.config, spec.overrides)
    ctx = Context(spec=spec, config=config, progress=progress)
    spec.out.mkdir(parents=True, exist_ok=True)
    config.save(spec.out / "config.yaml")
    reports = []
    for stage in spec.stages:
        key = stage_key(ctx, stage)
        out = ctx.dir(stage)
        recorded = _read_stage(out)
        t0 = time.perf_counter()
        if not force and recorded.get("key") == key:
            report = StageReport(stage, "skipped", 0.0, out, recorded.get("summary", {}))
        else:
            summary = STAGES[stage][0](ctx)
            seconds = time.perf_counter() - t0
            write_json(out / STAGE_FILE, {"stage": stage, "key": key, "seconds": seconds, "summary": summary})
            report = StageReport(stage, "ran", seconds, out, summary)
        ctx.keys[stage] = key
        reports.append(report)
        if on_stage is not None:
            on_stage(report)
    write_json(
        spec.out / "pipeline_run.json",
        {"name": spec.name, "stages": [{**dataclasses.asdict(r), "out": str(r.out)} for r in reports]},
    )
    return reports


def _read_stage(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / STAGE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
