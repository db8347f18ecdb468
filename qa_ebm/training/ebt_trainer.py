"""`qa-ebm train-ebt`: train the energy transformer on (question, answer latent) pairs of an HVAE run.

Run directory:

    config.yaml  manifest.json  metrics.jsonl   as for train-hvae; the manifest records the HVAE run
    model/            EnergyTransformer (or, for the regress baseline, LatentRegressor).save_pretrained
    trainer_state/    model + optimizer + scheduler + RNG + replay buffer; --resume continues it exactly

The gold latents are the HVAE posterior means [mu_g; mu_1..mu_S] of the answers (`latents/` of the HVAE
run), standardised with the train split's statistics. Every random draw of a step (its batch, noise,
step counts, replay choices) comes from generators seeded with (seed, step), so a resumed run computes
what the uninterrupted one did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from qa_ebm.config import Config, TrainEBTConfig
from qa_ebm.data.processed import load_processed
from qa_ebm.energy.samplers import RefinementError, build_sampler
from qa_ebm.energy.schedules import cosine_alpha_bar
from qa_ebm.errors import CheckpointError, ConfigError
from qa_ebm.io import read_json, write_json
from qa_ebm.models.ebt import EBTSpec, EnergyTransformer, LatentModel, LatentRegressor
from qa_ebm.models.question_encoder import build_condition_encoder
from qa_ebm.training.distributed import (
    Share,
    average_gradients,
    check_launch,
    gather_rows,
    mean_over_processes,
    process_seed,
    seed_process,
    share_of,
)
from qa_ebm.training.ebt_objectives import (
    ObjectiveOutput,
    WholeBatch,
    ired_objective,
    masked_mse,
    mcmc_objective,
    regress_objective,
)
from qa_ebm.training.hvae_trainer import _epoch_order
from qa_ebm.training.loop import LoopSettings, LoopState, StepOutput, TrainingLoop
from qa_ebm.training.replay import ReplayBuffer
from qa_ebm.training.runs import (
    TrainingError,
    base_manifest,
    init_wandb,
    load_checkpoint,
    prepare_run_dir,
    remove_replaced,
    save_checkpoint,
    trim_metrics,
)
from qa_ebm.training.schedules import warmup_cosine

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
KEYS = ("y", "slot_mask", "x", "x_mask")
RESUMABLE_CHANGES = {
    "steps",
    "max_seconds",
    "eval_every",
    "save_every",
    "report_to",
    "num_samples",
    "eval_size",
    "nonfinite",
    "max_nonfinite_skips",
}
REPLAY_FILE = "replay.safetensors"  # the replay buffer's tensors, inside the trainer-state dir
RIVALS = 7  # other questions' answers per example in the contrastive losses
# ired learns no step size; its energy gradient predicts the unit-variance noise, so a landscape's few steps
# of this size move y by about the noise the landscape added.
IRED_STEP_SIZE = 0.1
# IRED clamps landscape k to c sqrt(abar_k); its c = 2 fits data in [-1, 1], but standardised latents have
# z-scores beyond 2 (about 5 % of entries), which c = 4 keeps.
IRED_CLAMP = 4.0


@dataclass
class TrainResult:
    out: Path
    step: int
    stopped: str
    metrics: dict[str, Any]


# --------------------------------------------------------------------------------------- inputs


@dataclass
class HVAERun:
    root: Path
    manifest: dict[str, Any]
    latents: dict[str, dict[str, torch.Tensor]]
    ids: dict[str, list[str]]
    fingerprint: str  # sha256 of the train latents: which HVAE (and which data) the energy model learned

    @property
    def latent_dim(self) -> int:
        return int(self.latents["train"]["mu_g"].shape[1])

    @property
    def num_slots(self) -> int:
        return 1 + int(self.latents["train"]["mu_l"].shape[1])


def load_hvae_run(directory: str | Path) -> HVAERun:
    """An HVAE run's manifest and exported latents, with their promises checked."""
    root = Path(directory)
    if not (root / "manifest.json").is_file():
        raise CheckpointError(f"{root}: not a finished train-hvae run (no manifest.json)")
    manifest = read_json(root / "manifest.json")
    if manifest.get("format") != "qa-ebm/hvae-run":
        raise CheckpointError(f"{root}/manifest.json: format {manifest.get('format')!r} is not 'qa-ebm/hvae-run'")
    latents, ids = {}, {}
    for split in SPLITS:
        path = root / "latents" / f"{split}.safetensors"
        if not path.is_file() or not (root / "latents" / f"{split}.json").is_file():
            raise CheckpointError(
                f"{root}: no latents/{split}.safetensors; the run did not finish exporting latents "
                f"(rerun qa-ebm train-hvae --resume on it)"
            )
        try:
            latents[split] = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        ids[split] = read_json(root / "latents" / f"{split}.json").get("ids")
        if not isinstance(ids[split], list):
            raise CheckpointError(f"{root}/latents/{split}.json: no list of 'ids'")
        missing = {"mu_g", "mu_l", "sentence_mask"} - set(latents[split])
        if missing:
            raise CheckpointError(f"{path}: missing tensors {sorted(missing)}")
        shapes = {k: tuple(v.shape) for k, v in latents[split].items()}
        n, D = shapes["mu_g"][0], shapes["mu_g"][1]
        if shapes["mu_l"][0] != n or shapes["mu_l"][2] != D or len(ids[split]) != n:
            raise CheckpointError(f"{path}: inconsistent latent sizes {shapes} for {len(ids[split])} ids")
    dims = {split: int(latents[split]["mu_g"].shape[1]) for split in SPLITS}
    if len(set(dims.values())) > 1:
        raise CheckpointError(f"{root}/latents: latent sizes differ between splits: {dims}")
    fingerprint = hashlib.sha256((root / "latents" / "train.safetensors").read_bytes()).hexdigest()[:16]
    return HVAERun(root, manifest, latents, ids, fingerprint)


def latent_statistics(train: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the train posterior means: row 0 for z_g, row 1 for the real z_i."""
    local = train["mu_l"][train["sentence_mask"].bool()]
    mean = torch.stack([train["mu_g"].mean(0), local.mean(0)])
    std = torch.stack([train["mu_g"].std(0), local.std(0)])
    return mean, std.nan_to_num(1.0).clamp_min(1e-3)


def gold_latents(latents: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[mu_g; mu_1..mu_S] (N, P, D) and the slot mask (N, P), the global slot always real."""
    y = torch.cat([latents["mu_g"][:, None], latents["mu_l"]], dim=1).float()
    mask = torch.cat([torch.ones_like(latents["sentence_mask"][:, :1]), latents["sentence_mask"]], 1).bool()
    return y * mask.unsqueeze(-1), mask


def question_texts(data_dir: Path, ids: dict[str, list[str]], use_context: bool):
    """(questions, contexts) per split in the order of the latents' ids."""
    data = load_processed(data_dir)
    out = {}
    for split, wanted in ids.items():
        cols = data.dataset[split].select_columns(["id", "question", "context"])[:]
        row = {i: n for n, i in enumerate(cols["id"])}
        missing = [i for i in wanted if i not in row]
        if missing:
            raise CheckpointError(
                f"{data_dir}: split {split} lacks {len(missing)} ids of the HVAE latents (e.g. {missing[0]!r}); "
                f"it is not the data the HVAE run was trained on"
            )
        questions = [cols["question"][row[i]] for i in wanted]
        contexts = [cols["context"][row[i]] if use_context else None for i in wanted]
        out[split] = (questions, contexts)
    return out


def resolve_data_dir(run: HVAERun, data_dir: str | Path | None) -> Path:
    recorded = run.manifest.get("data", {})
    path = Path(data_dir) if data_dir is not None else Path(str(recorded.get("dir", "")))
    if not (path / "manifest.json").is_file():
        raise CheckpointError(
            f"{run.root}: its data dir {str(path)!r} is not there; pass --data DIR (the preprocess output it used)"
        )
    found = read_json(path / "manifest.json").get("fingerprint")
    if recorded.get("fingerprint") and found != recorded["fingerprint"]:
        raise CheckpointError(
            f"{path}: data fingerprint {found} differs from {recorded['fingerprint']} recorded by {run.root}"
        )
    return path


def build_arrays(config: Config, run: HVAERun, data_dir: Path, mean: torch.Tensor, std: torch.Tensor):
    """Per split: standardised gold latents, slot masks and condition tokens, as tensors."""
    encoder = build_condition_encoder(config.ebt, str(data_dir / "tokenizer"))
    texts = question_texts(data_dir, run.ids, config.ebt.use_context)
    arrays = {}
    for split in SPLITS:
        y, slot_mask = gold_latents(run.latents[split])
        idx = torch.tensor([0] + [1] * (y.shape[1] - 1))  # the same standardisation as LatentModel.standardize
        y = (y - mean[idx]) / std[idx] * slot_mask.unsqueeze(-1)
        x, x_mask = encoder(*texts[split])
        arrays[split] = {"ids": run.ids[split], "y": y, "slot_mask": slot_mask, "x": x, "x_mask": x_mask}
    return arrays, encoder.spec_fields, texts


def batch_at(
    arrays: dict[str, Any], index: int, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1
) -> tuple[dict[str, torch.Tensor], Share]:
    """The index-th batch (a seeded permutation per epoch, as in train-hvae): this process's share of it."""
    n = len(arrays["ids"])
    epoch, k = divmod(index, math.ceil(n / batch_size))
    share = share_of(_epoch_order(n, seed, epoch)[k * batch_size : (k + 1) * batch_size], process_index, num_processes)
    rows = torch.from_numpy(share.rows.copy())
    return {name: arrays[name][rows] for name in KEYS}, share


def whole_batch(arrays: dict[str, Any], share: Share, device) -> WholeBatch | None:
    """The step's whole batch of gold latents, where rivals come from when this process has only part of it."""
    if share.total == len(share.rows):
        return None
    rows = torch.from_numpy(share.batch.copy())
    return arrays["y"][rows].to(device), arrays["slot_mask"][rows].to(device), share.part


# --------------------------------------------------------------------------------------- training


def build_model(config: Config, spec: EBTSpec) -> LatentModel:
    cls = LatentRegressor if config.train_ebt.objective == "regress" else EnergyTransformer
    return cls(config.ebt, spec)


def param_groups(model: LatentModel, tc: TrainEBTConfig) -> list[dict[str, Any]]:
    """Separate learning rates for the soft-token generator, the backbone and the energy head."""
    if isinstance(model, EnergyTransformer):
        soft = [*model.soft.parameters(), *model.soft_ln.parameters(), *model.slot_pos.parameters()]
        soft += list(model.landscape.parameters())
        head = [*model.head.parameters(), model.log_step_size]
    else:
        soft, head = list(model.slot_pos.parameters()), list(model.readout.parameters())
    groups = [(soft, tc.lr_soft), (list(model.backbone.parameters()), tc.lr_backbone), (head, tc.lr_head)]
    assert sum(len(p) for p, _ in groups) == len(list(model.parameters())), "a parameter is in no group"
    return [{"params": p, "lr": lr} for p, lr in groups]


def train_ebt(
    config: Config,
    hvae_dir: str | Path,
    out: str | Path,
    data_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    tc = config.train_ebt
    run = load_hvae_run(hvae_dir)
    data_path = resolve_data_dir(run, data_dir)
    out = Path(out)
    if resume and (out / "model" / "config.json").is_file():
        _check_same_hvae(out, run)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision)
    check_launch(accelerator, "train_ebt", tc.batch_size, tc.mixed_precision)
    out, replaced = prepare_run_dir(out, config, resume, overwrite, ("ebt", "train_ebt"), RESUMABLE_CHANGES)
    mean, std = latent_statistics(run.latents["train"])
    arrays, spec_fields, texts = build_arrays(config, run, data_path, mean, std)
    if len(arrays["train"]["ids"]) < 2:
        raise ConfigError(f"{run.root}: the train split has {len(arrays['train']['ids'])} answers; need >= 2")
    spec = EBTSpec(latent_dim=run.latent_dim, num_slots=run.num_slots, hvae_run=run.fingerprint, **spec_fields)

    set_seed(tc.seed)
    model = build_model(config, spec)
    model.set_latent_stats(mean, std)
    if isinstance(model, EnergyTransformer):
        model.log_step_size.data.fill_(math.log(tc.step_size))
    optimizer = torch.optim.AdamW(param_groups(model, tc), weight_decay=tc.weight_decay)
    scheduler = warmup_cosine(optimizer, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
    # Not wrapped in DDP: the objectives call `condition`/`energy` (and differentiate the energy), which the
    # wrapper's forward hooks never see; the gradients are averaged explicitly instead (average_gradients).
    # Every process built the same weights from the shared seed.
    model = model.to(accelerator.device)
    optimizer = accelerator.prepare(optimizer)
    seed_process(tc.seed, accelerator)
    replay = ReplayBuffer(
        tc.replay_capacity,
        (spec.num_slots, spec.latent_dim),
        reinit_prob=1 - tc.replay_prob,
        generator=torch.Generator().manual_seed(tc.seed),
    )
    state_dir = out / "trainer_state"
    saved = load_checkpoint(state_dir, accelerator, model, optimizer, scheduler) if resume else None
    if saved is not None:
        replay.load_state_dict(_load_replay(state_dir, saved))
    start = LoopState.from_dict(saved)
    if resume and accelerator.is_main_process:
        trim_metrics(out / "metrics.jsonl", start.step)
    wandb_run = init_wandb(tc.report_to, "train_ebt", config, out, "train-ebt") if accelerator.is_main_process else None
    alpha_bar = cosine_alpha_bar(config.ebt.num_landscapes)
    hvae, tokenizer = _decoder_for_samples(run, tc)

    def save(step: int, loop_state: dict[str, Any]) -> None:
        replay_tensors, replay_meta = _replay_files(replay)
        state = {**loop_state, "seed": tc.seed, "replay": replay_meta}
        save_checkpoint(state_dir, accelerator, model, optimizer, scheduler, state, {REPLAY_FILE: replay_tensors})

    def evaluate(step: int, train_stats: dict[str, float]) -> dict[str, Any]:
        metrics = {"step": step, **mean_over_processes(train_stats, accelerator)}
        if not accelerator.is_main_process:  # the others go on to the next step and wait for it there
            return metrics
        unwrapped = accelerator.unwrap_model(model)
        metrics.update(diagnostics(unwrapped, arrays["val"], tc, config, texts["val"], hvae, tokenizer))
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if wandb_run is not None:
            wandb_run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        if on_eval is not None:
            on_eval(metrics)
        return metrics

    def train_step(step: int) -> StepOutput:
        batch, share = batch_at(
            arrays["train"], step, tc.batch_size, tc.seed, accelerator.process_index, accelerator.num_processes
        )
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        gen = torch.Generator().manual_seed(process_seed(tc.seed * 1_000_003 + step, accelerator.process_index))
        whole = whole_batch(arrays["train"], share, accelerator.device)
        with accelerator.autocast():
            output = _objective(model, batch, tc, replay, alpha_bar, gen, share, whole)
        accelerator.backward(output.loss)
        average_gradients(model.parameters(), accelerator)

        def push_refined() -> None:  # only an applied step's samples: a skipped step's may be non-finite
            # every process keeps the whole batch's, so the buffers stay equal
            replay.push(gather_rows(output.refined, accelerator), gather_rows(batch["slot_mask"], accelerator))

        return StepOutput(
            loss=output.loss.detach(),
            stats={"loss": output.loss.item(), **output.parts},
            inputs=batch,
            after_update=push_refined if output.refined is not None else None,
        )

    started = time.perf_counter()
    model.train()
    loop = TrainingLoop(
        LoopSettings.from_config(tc, "train_ebt", lr_key="lr_backbone"),
        accelerator,
        model,
        optimizer,
        scheduler,
        train_step,
        save,
        evaluate,
        checkpoint_dir=state_dir,
        oom_advice=f"with train_ebt.batch_size={tc.batch_size}; "
        f"try --set train_ebt.batch_size={max(1, tc.batch_size // 2)}",
        desc=f"train-ebt ({tc.objective})",
        progress=progress,
    )
    result = loop.run(start)
    step, stopped, metrics = result.step, result.stopped, result.metrics

    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(out / "model")
        manifest = base_manifest("qa-ebm/ebt-run", config, step, stopped, metrics, time.perf_counter() - started)
        manifest["hvae"] = {"dir": str(run.root.resolve()), "fingerprint": run.fingerprint}
        manifest["data"] = {"dir": str(data_path.resolve())}
        write_json(out / "manifest.json", manifest)
    if wandb_run is not None:
        wandb_run.finish()
    remove_replaced(replaced)  # the new run is complete: drop the old one
    return TrainResult(out=out, step=step, stopped=stopped, metrics=metrics)


def _objective(
    model, batch, tc: TrainEBTConfig, replay: ReplayBuffer, alpha_bar, gen, share: Share, whole: WholeBatch | None
) -> ObjectiveOutput:
    cond = model.condition(batch["x"], batch["x_mask"])
    gold, slot_mask = batch["y"], batch["slot_mask"]
    if tc.objective == "regress":
        return regress_objective(model, cond, gold, slot_mask)
    if tc.objective == "ired":
        return ired_objective(model, cond, gold, slot_mask, alpha_bar, tc, gen, RIVALS, whole)

    def noise(n: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn((n, *gold.shape[1:]), generator=generator)

    # Start points are drawn for the global batch and each process takes its part, so that they do not
    # depend on the number of processes.
    y0 = replay.sample(share.total, noise, device=gold.device).y[share.part]
    return mcmc_objective(model, cond, gold, slot_mask, y0, tc, gen, RIVALS, whole)


def _check_same_hvae(out: Path, run: HVAERun) -> None:
    recorded = read_json(out / "model" / "config.json").get("spec", {}).get("hvae_run")
    if recorded and recorded != run.fingerprint:
        raise CheckpointError(
            f"{out}: trained on HVAE latents {recorded}, but {run.root} has {run.fingerprint}; "
            f"an energy model only fits the latents it was trained on"
        )


def _replay_files(replay: ReplayBuffer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = replay.state_dict()
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    meta = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return tensors, meta


def _load_replay(state_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    path = state_dir / REPLAY_FILE
    if not path.is_file():
        raise CheckpointError(f"{state_dir}: no {REPLAY_FILE}; the trainer state is incomplete")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return {**tensors, **state.get("replay", {})}


# --------------------------------------------------------------------------------------- diagnostics


def make_sampler(model: EnergyTransformer, tc: TrainEBTConfig, num_landscapes: int, max_steps: int | None = None):
    """The refinement rule: gradient descent at the learned step size for mcmc, annealed landscapes for ired."""
    name = tc.sampler if tc.sampler != "auto" else ("ired" if tc.objective == "ired" else "gd")
    steps = max_steps or tc.eval_steps
    step_size = tc.eval_step_size or (IRED_STEP_SIZE if tc.objective == "ired" else model.step_size)
    if name == "ired":
        return build_sampler(
            name,
            num_landscapes=num_landscapes,
            steps_per_landscape=steps,
            step_size=step_size,
            clamp=IRED_CLAMP,
            transition="ddim",  # the trained gradient is a noise estimate: see energy/samplers.py (5')
            unscale_output=True,  # an estimate of y* itself, not of sqrt(abar_0) y*
        )
    return build_sampler(name, step_size=step_size, max_steps=steps)


@torch.no_grad()
def diagnostics(
    model: LatentModel, val: dict[str, Any], tc: TrainEBTConfig, config: Config, texts, hvae=None, tokenizer=None
) -> dict[str, Any]:
    """Latent MSE from the start point and after refinement, energies, verifier recall@1, steps, samples."""
    n = min(len(val["ids"]), tc.eval_size)
    if n == 0:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batch = {k: val[k][:n].to(device) for k in KEYS}
    gold, slot_mask = batch["y"], batch["slot_mask"]
    gen = torch.Generator().manual_seed(tc.seed)
    y0 = torch.randn(gold.shape, generator=gen).to(device) * slot_mask.unsqueeze(-1)
    cond = model.condition(batch["x"], batch["x_mask"])
    metrics: dict[str, Any] = {
        "val_mse_start": masked_mse(y0, gold, slot_mask).mean().item(),
        "val_mse_mean_latent": masked_mse(torch.zeros_like(gold), gold, slot_mask).mean().item(),
    }
    if isinstance(model, LatentRegressor):
        refined = model.predict(cond, slot_mask)
        metrics["val_mse_refined"] = masked_mse(refined, gold, slot_mask).mean().item()
    else:
        sampler = make_sampler(model, tc, config.ebt.num_landscapes)
        result = refine(model, cond, y0, slot_mask, sampler, gen)
        refined = result.y
        metrics.update(
            {
                "val_mse_refined": masked_mse(refined, gold, slot_mask).mean().item(),
                "val_steps": result.steps.float().mean().item(),
                "val_energy_gold": model.energy(cond, gold, slot_mask).mean().item(),
                "val_energy_refined": result.energy.mean().item(),
                "val_energy_start": model.energy(cond, y0, slot_mask).mean().item(),
            }
        )
        recall, e_neg = verifier_recall(model, cond, gold, slot_mask, tc.eval_candidates, tc.seed)
        metrics["val_recall_at_1"], metrics["val_energy_negatives"] = recall, e_neg
        metrics["val_candidates"] = min(tc.eval_candidates, n)
    if hvae is not None and tokenizer is not None and tc.num_samples > 0:
        metrics["samples"] = decode_samples(model, hvae, tokenizer, refined, slot_mask, texts, tc.num_samples)
    model.train(was_training)
    return metrics


def refine(model: EnergyTransformer, cond, y0: torch.Tensor, slot_mask: torch.Tensor, sampler, generator=None):
    """Run a sampler on this model's energy for these questions (landscape index passed through)."""

    def energy_fn(y: torch.Tensor, k: torch.Tensor | None) -> torch.Tensor:
        return model.energy(cond, y, slot_mask, k)

    try:
        return sampler.sample(energy_fn, y0, mask=slot_mask, generator=generator)
    except RefinementError:
        raise
    except RuntimeError as e:  # shapes or dtypes: a model that does not fit its inputs
        raise TrainingError(f"refinement failed: {e}") from e


def verifier_recall(
    model: EnergyTransformer, cond, gold: torch.Tensor, slot_mask: torch.Tensor, candidates: int, seed: int
) -> tuple[float, float]:
    """Recall@1 of each question's gold latent among `candidates` answer latents (its own + others').

    The rivals of question i are other questions' gold answers drawn with a fixed seed; returns the
    fraction of questions whose gold has the lowest energy, and the mean energy of the rivals.
    """
    n = gold.shape[0]
    C = min(candidates, n)
    gen = torch.Generator().manual_seed(seed + 1)
    rival_rows = torch.stack([_others(i, n, C - 1, gen) for i in range(n)])  # (n, C-1)
    rows = torch.cat([torch.arange(n)[:, None], rival_rows], 1).to(gold.device)  # (n, C), gold first
    energies = torch.empty(n, C, device=gold.device)
    for c in range(C):
        energies[:, c] = model.energy(cond, gold[rows[:, c]], slot_mask[rows[:, c]])
    recall = (energies.argmin(1) == 0).float().mean().item()
    return recall, energies[:, 1:].mean().item()


def _others(i: int, n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(n - 1, generator=gen)[:k]
    return perm + (perm >= i).long()  # skip i itself


def _decoder_for_samples(run: HVAERun, tc: TrainEBTConfig):
    if tc.num_samples <= 0:
        return None, None
    from qa_ebm.data.tokenizer import load_tokenizer
    from qa_ebm.models.hvae import HVAE

    return HVAE.from_pretrained(run.root / "model").eval(), load_tokenizer(run.root / "tokenizer")


def decode_samples(model: LatentModel, hvae, tokenizer, y: torch.Tensor, slot_mask, texts, k: int) -> list[dict]:
    """The first k refined latents as text, beside their questions."""
    from qa_ebm.training.hvae_trainer import decode_text

    z = model.unstandardize(y[:k]).cpu()
    counts = slot_mask[:k, 1:].sum(1).cpu()
    decoded = hvae.decode(z[:, 0], z[:, 1:], counts)
    questions = texts[0]
    return [{"question": questions[i], "refined": decode_text(tokenizer, decoded[i])} for i in range(len(decoded))]


def load_ebt(directory: str | Path) -> LatentModel:
    """The model of a train-ebt run dir (or a model dir itself)."""
    d = Path(directory)
    return LatentModel.from_pretrained(d / "model" if (d / "model").is_dir() else d)
