"""Reading mode judged side by side: the proposal head alone, the energy's rankings, refine + snap at a
range of step counts, generate mode, and a no-model baseline, all on the same questions.

Rows (EM / F1 with the official SQuAD normalisation, against every gold answer):

    proposal           the proposal head's best span (no energy, no latent): the bar to beat
    proposal_expected_f1  the highest expected F1 under softmax(s / T_p) of the proposal scores alone (T_p
                       chosen on val): the decision rule without the energy, so its gain is not the energy's
    energy             the lowest E_theta(x, y) alone
    rank               the lowest E_total = E_theta - w * proposal score
    expected_f1        the highest expected F1 under softmax(-E_total / T), T the energy's (chosen on val)
    refine@N           refine a latent N steps on E_theta, then snap to the lowest-E_total neighbour
    generate           the refined latent decoded by the HVAE decoder (free text)
    best_sentence      the passage sentence sharing the most words with the question (no model)

Also: questions/s of each row's batched run, and the pipeline's share of time per stage. When the split has
SQuAD v2 unanswerable questions (`unanswerable`), the rank row answers them too, abstaining above the energy's
no-answer threshold (set on val), scored as the official v2 script does: HasAns, NoAns and overall EM / F1.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qa_ebm.metrics.squad import normalize_answer, squad_scores, squad_v2_scores
from qa_ebm.pipeline.reports import save_figure, write_report

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def best_overlap_sentence(question: str, context: str) -> str:
    """The passage sentence with the most (normalised) words in common with the question."""
    words = set(normalize_answer(question).split())
    sentences = [s for s in _SENTENCE_END.split(context) if s.strip()] or [context]
    return max(sentences, key=lambda s: len(words & set(normalize_answer(s).split())))


def evaluate_reading(
    pipe: Any,
    examples: Sequence[dict[str, Any]],
    steps: Sequence[int] = (1, 2, 5, 10, 20),
    batch_size: int = 32,
    generate: bool = True,
    unanswerable: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Every row on the same examples; returns {rows: [{row, exact_match, f1, count, seconds, per_second}]},
    and with `unanswerable` (SQuAD v2 questions without an answer) a ``squad_v2`` section for the rank row."""
    refs = {e["id"]: e["references"] for e in examples}
    questions, contexts = [e["question"] for e in examples], [e["context"] for e in examples]
    lowest = {"decision": "lowest"}
    runs: list[tuple[str, dict[str, Any]]] = [("proposal", {"mode": "proposal"})]
    runs.append(("proposal_expected_f1", {"mode": "proposal", "decision": "expected_f1"}))
    # on answerable questions every row answers with a span; abstention is judged in the squad_v2 section
    runs += [("energy", {"mode": "energy", **lowest}), ("rank", {"mode": "rank", "abstain": False, **lowest})]
    runs.append(("expected_f1", {"mode": "rank", "decision": "expected_f1", "abstain": False}))
    runs += [(f"refine@{n}", {"mode": "refine", "steps": n}) for n in steps]
    if generate:
        runs.append(("generate", {"mode": "generate", "steps": max(steps)}))
    rows, shown = [], {}
    for name, kwargs in runs:
        t0 = time.perf_counter()
        answers = pipe(questions, contexts, batch_size=batch_size, **kwargs)
        seconds = time.perf_counter() - t0
        preds = {e["id"]: a.text for e, a in zip(examples, answers, strict=True)}
        scores = squad_scores(preds, refs)
        used = [a.steps for a in answers]
        rows.append(
            {
                "row": name,
                "exact_match": scores["exact_match"],
                "f1": scores["f1"],
                "count": scores["count"],
                "seconds": round(seconds, 2),
                "per_second": round(len(examples) / max(seconds, 1e-9), 1),
                "mean_steps": sum(used) / max(len(used), 1),
            }
        )
        shown[name] = [{"question": q, "answer": a.text} for q, a in zip(questions[:3], answers[:3], strict=True)]
    t0 = time.perf_counter()
    preds = {e["id"]: best_overlap_sentence(e["question"], e["context"]) for e in examples}
    scores = squad_scores(preds, refs)
    seconds = time.perf_counter() - t0
    rows.append(
        {
            "row": "best_sentence",
            "exact_match": scores["exact_match"],
            "f1": scores["f1"],
            "count": scores["count"],
            "seconds": round(seconds, 2),
            "per_second": round(len(examples) / max(seconds, 1e-9), 1),
            "mean_steps": 0.0,
        }
    )
    cfg = pipe.energy.config
    result = {
        "rows": rows,
        "examples": shown,
        "timings": dict(getattr(pipe, "timings", {})),
        "decision": {"rule": cfg.decision, "temperature": cfg.temperature},  # what `answer` uses by default
        "top_k": pipe.top_k,
        "mixed_precision": pipe.mixed_precision,
    }
    if unanswerable:
        every = [*examples, *unanswerable]
        questions, contexts = [e["question"] for e in every], [e["context"] for e in every]
        answers = pipe(questions, contexts, mode="rank", batch_size=batch_size)
        preds = {e["id"]: a.text for e, a in zip(every, answers, strict=True)}
        result["squad_v2"] = {
            "row": "rank",
            "no_answer_threshold": cfg.no_answer_threshold,
            **squad_v2_scores(preds, {e["id"]: e["references"] for e in every}),
        }
    return result


def markdown(result: dict[str, Any], title: str) -> str:
    lines = [f"# {title}\n", "| row | EM | F1 | questions | questions/s | mean steps |", "| --- " * 6 + "|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['row']} | {r['exact_match']:.1f} | {r['f1']:.1f} | {r['count']} | {r['per_second']} | "
            f"{r['mean_steps']:.1f} |"
        )
    v2 = result.get("squad_v2")
    if v2:
        parts = [f"overall EM {v2['exact']:.1f} / F1 {v2['f1']:.1f} ({v2['total']})"]
        parts += [
            f"{g} EM {v2[g + '_exact']:.1f} / F1 {v2[g + '_f1']:.1f} ({v2[g + '_total']})"
            for g in ("HasAns", "NoAns")
            if g + "_total" in v2
        ]
        threshold = v2["no_answer_threshold"]
        lines += ["", f"SQuAD v2, rank row, no-answer threshold {threshold}: " + "; ".join(parts)]
    decision = result.get("decision")
    if decision:
        lines += ["", f"Default decision rule (chosen on val): {decision['rule']}, T = {decision['temperature']:g}"]
    if "top_k" in result:
        lines += ["", f"Candidates per question: {result['top_k']}; encoders: {result['mixed_precision']}"]
    timings = result.get("timings") or {}
    total = sum(timings.values())
    if total > 0:
        shares = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in timings.items())
        lines += ["", f"Share of pipeline time: {shares}"]
    return "\n".join(lines) + "\n"


def plot_f1_vs_steps(result: dict[str, Any], path: Path) -> None:
    """A PNG of F1 against refinement steps, with the proposal head and ranking as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["row"]: r for r in result["rows"]}
    refine = sorted((int(k.split("@")[1]), r["f1"]) for k, r in rows.items() if k.startswith("refine@"))
    fig, ax = plt.subplots(figsize=(6, 4))
    if refine:
        ax.plot([s for s, _ in refine], [f for _, f in refine], marker="o", label="refine + snap")
    for name, style in (("proposal", "--"), ("rank", ":"), ("expected_f1", (0, (5, 1))), ("energy", "-.")):
        if name in rows:
            ax.axhline(rows[name]["f1"], linestyle=style, color="grey", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("refinement steps")
    ax.set_ylabel("F1")
    ax.legend()
    save_figure(fig, path)


def write_results(result: dict[str, Any], out: Path, title: str) -> None:
    write_report(out, result, markdown(result, title))
    plot_f1_vs_steps(result, out / "f1_vs_steps.png")
