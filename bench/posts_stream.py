"""Streaming a large Stack Exchange Posts.xml: peak memory and throughput of the physics loader.

A synthetic dump is written to a temp file on the fly (default ~1 GB): per question a title and body,
`--answers` answers (the first accepted, the others lower-scored: read and discarded) and, every fourth
question, a tag-wiki post (another post type the loader skips), with real-dump attributes and
HTML-escaped bodies. A fresh child process then runs `load_physics` on it (`--stage preprocess`: the
whole `preprocess`, much slower) and reports the peak RSS over its own baseline after imports, the
seconds and MB/s. The same questions with only their accepted answer (the control) are measured the
same way: the loader keeps the same examples from both, so a bounded loader's memory grows with the
kept text, not with the file.

Writes bench/results/posts_stream.json and .md.

    python bench/posts_stream.py                    # ~1 GB, loader only
    python bench/posts_stream.py --size-mb 100 --stage preprocess
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORDS = (
    "energy mass field charge photon electron momentum force wave quantum spin entropy heat gravity light "
    "frame velocity potential current lattice symmetry vacuum particle orbit tension pressure the a of is "
    "and in to that why how does can we if it this which with for as not be are"
).split()
LICENSE = 'ContentLicense="CC BY-SA 4.0"'


def _bodies(rng: random.Random, n: int, size: int) -> list[str]:
    """`n` distinct HTML bodies of about `size` characters, already quoted as XML attributes."""
    out = []
    for _ in range(n):
        paragraphs, length = [], 0
        while length < size:
            sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."
            if rng.random() < 0.2:
                sentence += f" With $E = m c^{rng.randint(2, 4)}$ and a < b & c > d."
            paragraphs.append(f"<p>{sentence}</p>")
            length += len(paragraphs[-1])
        out.append(quoteattr("\n".join(paragraphs)))
    return out


def write_posts(
    path: Path,
    *,
    size_bytes: int | None = None,
    questions: int | None = None,
    answers: int = 20,
    body_chars: int = 1500,
    seed: int = 0,
) -> dict[str, int]:
    """Write a Posts.xml until it holds `size_bytes` or `questions` questions; the counts written.

    Question q's title, body and accepted answer depend only on (seed, q), so a file with fewer extra
    answers (the control) keeps exactly the same examples.
    """
    if (size_bytes is None) == (questions is None):
        raise ValueError("give exactly one of size_bytes and questions")
    kept_rng, extra_rng = random.Random(seed), random.Random(seed + 1)
    pool = _bodies(kept_rng, 256, body_chars)
    titles = [quoteattr(" ".join(kept_rng.choice(WORDS) for _ in range(8)).capitalize() + "?") for _ in range(256)]
    counts = {"questions": 0, "answers": 0, "other_posts": 0, "bytes": 0}
    next_id = 1
    with path.open("w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        while True:
            q = counts["questions"]
            if (questions is not None and q >= questions) or (size_bytes is not None and f.tell() >= size_bytes):
                break
            qid, aid = next_id, next_id + 1
            next_id += 1 + answers
            date = f'CreationDate="2016-{1 + q % 12:02d}-{1 + q % 28:02d}T10:00:00.000"'
            rows = [
                f'  <row Id="{qid}" PostTypeId="1" AcceptedAnswerId="{aid}" {date} Score="{q % 17}" '
                f'ViewCount="{q * 7 % 5000}" Body={pool[(q * 31) % 256]} OwnerUserId="{q % 999}" '
                f'Title={titles[q % 256]} Tags="&lt;mechanics&gt;&lt;energy&gt;" AnswerCount="{answers}" '
                f'CommentCount="0" {LICENSE} />\n',
                f'  <row Id="{aid}" PostTypeId="2" ParentId="{qid}" {date} Score="50" '
                f'Body={pool[(q * 17 + 5) % 256]} OwnerUserId="{q % 777}" CommentCount="0" {LICENSE} />\n',
            ]
            for k in range(2, answers + 1):  # lower-scored answers: read, never kept
                rows.append(
                    f'  <row Id="{qid + k}" PostTypeId="2" ParentId="{qid}" {date} Score="{extra_rng.randint(0, 49)}" '
                    f'Body={pool[extra_rng.randrange(256)]} OwnerUserId="{k}" CommentCount="1" {LICENSE} />\n'
                )
            if answers > 1 and q % 4 == 0:  # a tag-wiki body: a post type the loader skips
                rows.append(f'  <row Id="{next_id}" PostTypeId="5" {date} Body={pool[q % 256]} {LICENSE} />\n')
                next_id += 1
                counts["other_posts"] += 1
            f.write("".join(rows))
            counts["questions"] += 1
            counts["answers"] += answers
        f.write("</posts>\n")
        counts["bytes"] = f.tell()
    return counts


def measure(path: Path, stage: str = "load") -> dict:
    """Run the loader (or preprocess) on `path` in a fresh interpreter: its RSS, seconds and what it kept."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(path), "--stage", stage],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the measuring child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(path: Path, stage: str) -> None:
    from qa_ebm.config import PhysicsSourceConfig
    from qa_ebm.data.physics import load_physics

    if stage == "preprocess":
        from qa_ebm.config import load_config
        from qa_ebm.data.preprocess import preprocess
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 - MB (Linux: KB)
    baseline = rss()
    t0 = time.perf_counter()
    if stage == "load":
        examples, _ = load_physics(str(path), PhysicsSourceConfig(format="posts_xml"))
        kept = {
            "examples": len(examples),
            "kept_text_mb": sum(len(e["question"]) + len(e["answer"]) for e in examples) / 2**20,
        }
    else:
        with tempfile.TemporaryDirectory() as out:
            # room for the synthetic answers' ~15 sentences, which the tiny config's filter would drop
            overrides = ["data.physics.min_sentences=1", "data.max_sentences=32"]
            config = load_config(ROOT / "configs" / "tiny.yaml", overrides)
            result = preprocess(config, Path(out) / "data", physics=str(path))
            kept = {"examples": sum(result.manifest["counts"].values())}
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "baseline_rss_mb": baseline, "peak_rss_mb": rss(), **kept}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=1024, help="size of the synthetic Posts.xml (default 1024)")
    p.add_argument("--answers", type=int, default=20, help="answers per question (the first is accepted)")
    p.add_argument("--body-chars", type=int, default=1500)
    p.add_argument("--stage", choices=["load", "preprocess"], default="load")
    p.add_argument("--tmp", default=None, help="directory for the temp files (default: the system's)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args.child, args.stage)

    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        big = Path(tmp) / "Posts.xml"
        t0 = time.perf_counter()
        counts = write_posts(
            big, size_bytes=int(args.size_mb * 2**20), answers=args.answers, body_chars=args.body_chars
        )
        print(f"wrote {counts['bytes'] / 2**20:.0f} MB ({counts}) in {time.perf_counter() - t0:.0f} s", flush=True)
        control = Path(tmp) / "Posts-control.xml"
        control_counts = write_posts(control, questions=counts["questions"], answers=1, body_chars=args.body_chars)
        for name, path, c in (("full dump", big, counts), ("control: accepted answers only", control, control_counts)):
            r = measure(path, args.stage)
            growth = r["peak_rss_mb"] - r["baseline_rss_mb"]
            mb = c["bytes"] / 2**20
            rows.append(
                {
                    "file": name,
                    "stage": args.stage,
                    "file_mb": round(mb, 1),
                    **{k: c[k] for k in ("questions", "answers", "other_posts")},
                    "examples": r["examples"],
                    "kept_text_mb": round(r["kept_text_mb"], 1) if "kept_text_mb" in r else None,
                    "seconds": round(r["seconds"], 1),
                    "mb_per_s": round(mb / r["seconds"], 1),
                    "baseline_rss_mb": round(r["baseline_rss_mb"], 1),
                    "peak_rss_mb": round(r["peak_rss_mb"], 1),
                    "rss_growth_mb": round(growth, 1),
                    "rss_growth_per_file_mb": round(growth / mb, 3),
                }
            )
            print(rows[-1], flush=True)
    _write(rows, args)


def _write(rows: list[dict], args: argparse.Namespace) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python bench/posts_stream.py " + " ".join(sys.argv[1:]),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "answers_per_question": args.answers,
        "body_chars": args.body_chars,
    }
    name = "posts_stream" if args.stage == "load" else "posts_stream-preprocess"
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    cols = ["file", "file_mb", "questions", "answers", "examples", "kept_text_mb", "seconds", "mb_per_s"]
    cols += ["baseline_rss_mb", "peak_rss_mb", "rss_growth_mb"]
    lines = [
        f"# Streaming a synthetic Posts.xml ({args.stage})",
        "",
        f"`{meta['command']}` ({meta['machine']}, Python {meta['python']}). Peak RSS is the child process's "
        "`ru_maxrss`; growth is over its baseline after imports. The control holds the same questions with only "
        "their accepted answer, so both keep the same examples.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + " --- |" * len(cols),
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows),
        "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
