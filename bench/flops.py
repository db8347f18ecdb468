"""Analytic model FLOPs per step, from a config and the shapes of one batch.

Conventions (Kaplan et al. 2020, Chinchilla appendix F; nanoGPT's `estimate_mfu`):

- a matmul of (m, k) by (k, n) is 2 m k n FLOPs (multiply and add);
- one pre-LN transformer layer of width d over one sequence of T positions, forward:
      linear  24 d^2 T    (QKV 3 d^2, output d^2, MLP 2 x 4 d^2 = 12 d^2 multiply-adds per position)
      attention 4 T T' d  (Q K^T and attention x V over T' keys; the full T x T' matrix is computed,
                           causal or padded or not, so it is counted in full)
- a training step (forward + backward) is 3x the forward: the backward forms the gradients of the
  inputs and of the weights, one forward's worth each (the "6 N" rule);
- embedding lookups, layer norms, softmax and the optimiser are not counted (they are O(d T), not
  O(d^2 T)), which is why model FLOPs utilisation (MFU) below the matmul ceiling is expected even for a
  perfect implementation at these small widths.

Positions are the padded positions the model actually processes (the HVAE pads sentences to
max_words, the peer LM pads to the batch's longest answer), so MFU measures how well the hardware is
used; how much of it is padding is reported separately as the real-token fraction.
"""

from __future__ import annotations

from dataclasses import dataclass


def layer_forward(d: int, positions: int, keys: int | None = None, sequences: int = 1) -> float:
    """Forward FLOPs of one transformer layer (MLP 4d) over `sequences` sequences of `positions` each."""
    keys = positions if keys is None else keys
    return sequences * (24 * d * d * positions + 4 * positions * keys * d)


def linear(d_in: int, d_out: int, rows: int) -> float:
    return 2 * d_in * d_out * rows


@dataclass
class HVAEShapes:
    """One HVAE batch: B answers with N real sentences, S sentence slots of W tokens, P prefix vectors."""

    B: int
    N: int
    S: int
    W: int
    P: int
    d: int
    L: int
    V: int
    word_layers: int
    sentence_layers: int
    decoder_layers: int


def hvae_forward(
    s: HVAEShapes,
    word_groups: list[tuple[int, int]] | None = None,
    sentence_slots: int | None = None,
    logit_rows: int | None = None,
) -> dict[str, float]:
    """Forward FLOPs by component, as executed.

    `word_groups` (default [(N, W)]): (sentences, token positions) of each group of sentences the word
    encoder and the decoder process (forward groups sentences by length and cuts each group's trailing
    padding); `sentence_slots` (default S): slots the sentence encoder processes; `logit_rows` (default
    N (P + W), what a `transformers` LM head computes): rows of the LM head (forward scores real tokens only).
    """
    groups = [(s.N, s.W)] if word_groups is None else word_groups
    S_enc = s.S if sentence_slots is None else sentence_slots
    logit_rows = sum(n * (s.P + w) for n, w in groups) if logit_rows is None else logit_rows
    d, L = s.d, s.L
    latents = (
        linear(d, 2 * L, s.B)  # q(z_g | x)
        + linear(d + L, 2 * L, s.B * s.S)  # q(z_i | x, z_g), every slot
        + linear(2 * L, d, s.B * s.S)
        + linear(d, 2 * L, s.B * s.S)  # prior MLP, every slot
        + linear(2 * L, d, s.N)
        + linear(d, d, s.N)  # plan MLP, real sentences
        + linear(L, s.S, s.B)  # sentence-count head
    )
    return {
        "word_encoder": sum(s.word_layers * layer_forward(d, w, sequences=n) for n, w in groups),
        "sentence_encoder": s.sentence_layers * layer_forward(d, S_enc + 1, sequences=s.B),
        "latents": latents + linear(d, s.P * d, s.N),  # + the plan -> prefix projection
        "decoder": sum(s.decoder_layers * layer_forward(d, s.P + w, sequences=n) for n, w in groups)
        + linear(d, s.V, logit_rows),
    }


def lm_forward(sequences: int, positions: int, d: int, layers: int, vocab: int) -> float:
    """A plain decoder-only LM (GPT-2) over padded sequences, logits at every position."""
    return layers * layer_forward(d, positions, sequences=sequences) + linear(d, vocab, sequences * positions)


@dataclass
class EBTShapes:
    """One EBT batch: B questions of Lc condition tokens; P latent slots of D dims, M soft tokens each."""

    B: int
    Lc: int
    P: int
    M: int
    D: int
    d: int
    layers: int


def ebt_condition_forward(s: EBTShapes) -> float:
    """The question stream, computed once per batch and cached (its keys / values feed every energy call)."""
    return s.layers * layer_forward(s.d, s.Lc, sequences=s.B)


def ebt_energy_forward(s: EBTShapes) -> float:
    """One energy evaluation given the cached condition: soft tokens attend to [condition; soft tokens]."""
    T = s.P * s.M
    soft_in = linear(s.D, s.M * s.d, s.B * s.P)
    head = linear(s.d, s.d, s.B) + linear(s.d, 1, s.B)
    return soft_in + s.layers * layer_forward(s.d, T, keys=s.Lc + T, sequences=s.B) + head


def ebt_attention_forward(s: EBTShapes) -> float:
    """The attention part of `ebt_energy_forward` (Q K^T and attention x V over condition + soft keys)."""
    T = s.P * s.M
    return s.layers * s.B * 4 * T * (s.Lc + T) * s.d


def refinement_step(s: EBTShapes) -> float:
    """dE/dy at one latent: the energy forward F, then a backward that forms input gradients only (no
    weight gradients): one more F for the linear layers, and twice the attention's forward, because
    autograd forms the gradients of every key and value, the cached question's included (they are
    concatenated with the soft tokens' own, and the concatenation is differentiated as a whole)."""
    return 2 * ebt_energy_forward(s) + ebt_attention_forward(s)


def ebt_mcmc_train_step(s: EBTShapes, steps: int, truncate: int, rivals: int) -> float:
    """One mcmc-objective training step (training/ebt_objectives.py), in units of the energy forward F.

    An estimate, not cross-checked: torch.utils.flop_counter cannot follow `autograd.grad` inside a step.

    - `steps - truncate` untracked refinement steps: `refinement_step` each (no graph kept);
    - `truncate` tracked steps and the gold latent's gradient: forward F + input gradient F with the graph
      kept, then the outer backward through both (2 F for the forward, 2 F for the double backward): 6 F;
    - the refined latent's and `rivals` rolled latents' energies, trained: 3 F each;
    - the condition stream once, trained: 3x its forward.
    """
    F = ebt_energy_forward(s)
    trained = (6 * (truncate + 1) + 3 * (1 + rivals)) * F
    return (steps - truncate) * refinement_step(s) + trained + 3 * ebt_condition_forward(s)
