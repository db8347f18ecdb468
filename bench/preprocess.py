"""Benchmark `qa-ebm preprocess` on real data, next to the tokenizer alone (the ceiling).

Workloads (read from ../shared/data, never copied into the repo):
- squad-x10: the open SQuAD v1.1 dev articles repeated ten times under distinct titles and ids,
  about the size of SQuAD v1.1 train (~94k questions);
- physics-pairs: the Physics SE question/answer pairs.

For each: wall time, examples/s and peak RSS of a full `preprocess` run in a fresh child process
(median and spread over --repeats after a warm-up), and in the same run the throughput of the same
tokenizer encoding the same answer sentences alone. Writes bench/results/preprocess.json and .md.

    python bench/preprocess.py [--repeats 3] [--num-proc 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SQUAD = SHARED / "squad" / "squad-v1.1-dev-open.json.gz"
PHYSICS = SHARED / "physics_se" / "physics-se-stackmathqa-open.jsonl.gz"
RESULTS = ROOT / "bench" / "results"


def make_squad_x10(dst: Path, times: int = 10) -> int:
    doc = json.loads(gzip.open(SQUAD, "rt").read())
    articles = []
    for k in range(times):
        for a in doc["data"]:
            paragraphs = [
                {"context": p["context"], "qas": [{**qa, "id": f"{qa['id']}-{k}"} for qa in p["qas"]]}
                for p in a["paragraphs"]
            ]
            articles.append({"title": f"{a['title']}__copy{k}", "paragraphs": paragraphs})
    dst.write_text(json.dumps({"version": "1.1", "data": articles}))
    return sum(len(p["qas"]) for a in articles for p in a["paragraphs"])


def _child_preprocess(args: tuple, queue: mp.Queue) -> None:
    from qa_ebm.config import load_config
    from qa_ebm.data.preprocess import preprocess

    kind, path, out, overrides = args
    import datasets

    datasets.disable_progress_bars()
    config = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    t0 = time.perf_counter()
    result = preprocess(config, out, **{kind: str(path)}, overwrite=True)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(
        {
            "seconds": seconds,
            "peak_self_kb": peak_kb,
            "examples": sum(result.manifest["counts"].values()),
            "stages": result.manifest["seconds_by_stage"],
        }
    )


def run_preprocess(kind: str, path: Path, out: Path, overrides: list[str]) -> dict:
    """One full preprocess in a fresh process: its own peak RSS, workers' included."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = ctx.Process(target=_child_preprocess, args=((kind, path, out, overrides), queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"preprocess child failed with exit code {proc.exitcode}")
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_mb"] = max(result["peak_self_kb"], children_peak if children_peak > before else 0) / 1024
    return result


def tokenizer_alone(out: Path, repeats: int) -> dict:
    """Encode the processed answer sentences with the saved tokenizer: the throughput ceiling."""
    import datasets

    from qa_ebm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(out / "tokenizer")
    dsd = datasets.load_from_disk(str(out / "dataset"))
    per_example = [s for split in dsd.values() for s in split["sentences"]]
    questions = [q for split in dsd.values() for q in split["question"]]
    flat = [s for sents in per_example for s in sents]
    times = []
    for _ in range(repeats + 1):  # first is warm-up
        t0 = time.perf_counter()
        for i in range(0, len(flat), 1000):
            tok.encode_batch(flat[i : i + 1000])
        for i in range(0, len(questions), 1000):
            tok.encode_batch(questions[i : i + 1000])
        times.append(time.perf_counter() - t0)
    median = statistics.median(times[1:])
    return {"seconds": median, "examples_per_s": len(per_example) / median, "sentences": len(flat)}


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not SQUAD.exists():
        print(f"skipped: {SQUAD} not found (see ../shared/data/SOURCES.md)")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        squad_x10 = tmp / "squad_x10.json"
        n_questions = make_squad_x10(squad_x10)
        # "reuse": the tokenizer and Punkt model of an earlier run, as when re-processing a corpus.
        reuse = [
            f"data.tokenizer.name={tmp}/out-squad-x10-1/tokenizer/spm.model",
            f"data.punkt={tmp}/out-squad-x10-1/punkt",
        ]
        workloads = [
            ("squad-x10", "squad", squad_x10, n_questions, [], args.num_proc),
            ("squad-x10 reuse tokenizer+punkt", "squad", squad_x10, n_questions, reuse, [1]),
            ("physics-pairs", "physics", PHYSICS, None, [], args.num_proc),
        ]
        for (name, kind, path, n, extra, _), num_proc in ((w, p) for w in workloads for p in w[-1]):
            overrides = [f"data.num_proc={num_proc}", *extra]
            out = tmp / f"out-{name.split()[0]}-{num_proc}{'-reuse' if extra else ''}"
            runs = [run_preprocess(kind, path, out, overrides) for _ in range(args.repeats + 1)][1:]
            ceiling = tokenizer_alone(out, args.repeats)
            secs = [r["seconds"] for r in runs]
            examples = runs[0]["examples"]
            eps = [examples / s for s in secs]
            row = {
                "workload": name,
                "num_proc": num_proc,
                "questions_in": n,
                "examples_out": examples,
                "wall_s": summarise(secs),
                "examples_per_s": summarise(eps),
                "peak_rss_mb": summarise([r["peak_rss_mb"] for r in runs]),
                "tokenizer_alone_examples_per_s": ceiling["examples_per_s"],
                "fraction_of_tokenizer_alone": statistics.median(eps) / ceiling["examples_per_s"],
                "seconds_by_stage_median": {
                    k: statistics.median(r["stages"][k] for r in runs) for k in runs[0]["stages"]
                },
            }
            rows.append(row)
            print(json.dumps(row, indent=2), flush=True)
    result = {
        "benchmark": "preprocess",
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "settings": {"config": "configs/tiny.yaml", "num_proc": args.num_proc, "repeats": args.repeats},
        "goal": "squad-x10 under 60 s, >= 0.5 of tokenizer-alone throughput, peak RSS under 4 GiB",
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preprocess.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "preprocess.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [
        f"# preprocess benchmark\n\nmachine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs, "
        f"Python {result['machine']['python']}; configs/tiny.yaml, median of "
        f"{result['settings']['repeats']} runs after a warm-up (min..max).\n",
        "| workload | num_proc | examples | wall s | examples/s | tokenizer alone ex/s | fraction | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        w, e, m = r["wall_s"], r["examples_per_s"], r["peak_rss_mb"]
        lines.append(
            f"| {r['workload']} | {r['num_proc']} | {r['examples_out']} | "
            f"{w['median']:.1f} ({w['min']:.1f}..{w['max']:.1f}) | "
            f"{e['median']:.0f} | {r['tokenizer_alone_examples_per_s']:.0f} | "
            f"{r['fraction_of_tokenizer_alone']:.2f} | {m['median']:.0f} |"
        )
    lines.append(f"\ngoal: {result['goal']}\n")
    lines.append("seconds by stage (median):\n")
    stages = list(result["results"][0]["seconds_by_stage_median"])
    lines.append("| workload | num_proc | " + " | ".join(stages) + " |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in stages) + " |")
    for r in result["results"]:
        cells = " | ".join(f"{r['seconds_by_stage_median'].get(k, 0):.2f}" for k in stages)
        lines.append(f"| {r['workload']} | {r['num_proc']} | {cells} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
