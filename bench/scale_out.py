"""One process vs two: `qa-ebm train-hvae` and `train-ebt` on one CPU process and under `accelerate launch`.

Both runs use the same config (so the same global batch at every step: each of the two processes trains
on half of it, gradients averaged) on the bundled sample data with the tests' tiny model sizes
(tests/tiny.py). Reports the train loss at each eval, the wall time of each command (start-up included),
and the one-writer checks: metrics lines per eval, summary lines, leftover temp files, the checkpoint's
per-process RNG states, latents per split. Writes bench/results/scale_out.json and .md.

    python bench/scale_out.py [--steps 20] [--eval-every 5]

Wall time is not a speed-up measurement here: the two processes share the machine's cores with the
launcher (and on the shared development machine, with other work).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from tiny import SMALL, sample_data, tiny_config  # noqa: E402

LAUNCH_TWO = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
LAUNCH_TWO += ["--mixed_precision", "no", "--dynamo_backend", "no"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(processes: int, args: list[str]) -> tuple[float, str]:
    """Wall time and stdout of `qa-ebm ARGS` on one process, or launched on two CPU processes."""
    launcher = [] if processes == 1 else [*LAUNCH_TWO, "--main_process_port", str(free_port())]
    command = [sys.executable, *launcher, "-m", "qa_ebm.cli.main", *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def checks(run: Path, stdout: str, steps: int) -> dict:
    from safetensors.torch import load_file

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m["step"] for m in lines]
    latents = sorted(p.name for p in (run / "latents").iterdir()) if (run / "latents").is_dir() else []
    return {
        "metrics_lines_per_eval": max(evals.count(s) for s in set(evals)),
        "summary_lines": stdout.count(f"stopped at step {steps}"),
        "leftovers": [str(p.relative_to(run)) for p in run.rglob("*") if p.name.startswith(".") or ".tmp" in p.name],
        "checkpoint_step": json.loads((run / "trainer_state" / "state.json").read_text())["step"],
        "rng_states": sorted(load_file(str(run / "trainer_state" / "rng.safetensors"))),
        "latent_files": latents,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=5)
    args = parser.parse_args()
    schedule = [
        f"{stage}.{key}={value}"
        for stage in ("train_hvae", "train_ebt")
        for key, value in (("steps", args.steps), ("eval_every", args.eval_every), ("save_every", args.eval_every))
    ]
    config = ["--config", str(ROOT / "configs" / "tiny.yaml"), *(f"--set={s}" for s in [*SMALL, *schedule])]
    rows: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = sample_data(tiny_config(), root / "data")
        for n in (1, 2):
            hvae, ebt = root / f"hvae{n}", root / f"ebt{n}"
            seconds, stdout = run_cli(n, ["train-hvae", *config, "--data", str(data), "--out", str(hvae)])
            rows[f"train-hvae/{n}"] = {"seconds": seconds, "run": hvae, "stdout": stdout}
            # Both energy models learn the one-process HVAE's latents: they differ only by how they trained.
            ebt_args = ["train-ebt", *config, "--hvae", str(root / "hvae1"), "--out", str(ebt)]
            seconds, stdout = run_cli(n, ebt_args)
            rows[f"train-ebt/{n}"] = {"seconds": seconds, "run": ebt, "stdout": stdout}
        results = {}
        for key, row in rows.items():
            lines = [json.loads(line) for line in (row["run"] / "metrics.jsonl").read_text().splitlines()]
            results[key] = {
                "seconds": round(row["seconds"], 1),
                "train_loss": {m["step"]: m["train_loss"] for m in lines},
                "checks": checks(row["run"], row["stdout"], args.steps),
            }
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": os.getloadavg()[0],
        "steps": args.steps,
        "command_two_processes": "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 "
        "-m qa_ebm.cli.main train-hvae ...",
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale_out.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "scale_out.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    res = report["results"]
    out = [
        "# One process vs two (accelerate launch, CPU, gloo)",
        "",
        f"`python bench/scale_out.py --steps {report['steps']}`: tiny sample-data runs, same config (same global "
        f"batch per step). {report['machine']}, load average {report['load_average']:.1f} when it finished.",
        "",
        "| command | step | train loss, 1 process | train loss, 2 processes | gap |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for stage in ("train-hvae", "train-ebt"):
        one, two = res[f"{stage}/1"]["train_loss"], res[f"{stage}/2"]["train_loss"]
        for step in one:
            gap = abs(two[step] - one[step]) / abs(one[step])
            out.append(f"| {stage} | {step} | {one[step]:.4f} | {two[step]:.4f} | {100 * gap:.2f} % |")
    out += [
        "",
        "| command | processes | wall time (s) | metrics lines per eval | summary lines | temp leftovers "
        "| checkpoint step | RNG states saved | latent files |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for key, row in res.items():
        stage, n = key.split("/")
        c = row["checks"]
        latents = f"{len(c['latent_files'])} ({', '.join(c['latent_files'])})" if c["latent_files"] else "-"
        out.append(
            f"| {stage} | {n} | {row['seconds']} | {c['metrics_lines_per_eval']} | {c['summary_lines']} | "
            f"{len(c['leftovers'])} | {c['checkpoint_step']} | {', '.join(c['rng_states'])} | {latents} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
