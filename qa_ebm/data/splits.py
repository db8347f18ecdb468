"""Deterministic train/val/test splits grouped so that no question or article is in two splits."""

from __future__ import annotations

import hashlib
from collections import Counter


def assign_splits(groups: list[str], val: float, test: float, seed: int) -> list[str]:
    """Split name per example.

    Groups are ordered by a seeded hash of their key (stable across machines and Python runs), then
    dealt out in that order: val until it holds `val` of the examples, then test, then train. A
    group is never divided, so fractions are met as closely as the group sizes allow; a group that
    would take val or test past twice its share goes to train instead, so one large article can
    never swallow the evaluation splits (or leave train empty).
    """
    sizes = Counter(groups)
    order = sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}\x00{g}".encode()).hexdigest())
    total = len(groups)
    targets = [("val", val * total), ("test", test * total)]
    where: dict[str, str] = {}
    filled = {"val": 0, "test": 0}
    for g in order:
        for name, target in targets:
            if filled[name] < target and filled[name] + sizes[g] <= 2 * target:
                where[g] = name
                filled[name] += sizes[g]
                break
        else:
            where[g] = "train"
    return [where[g] for g in groups]


def hold_out(groups: list[str], share: float, seed: int) -> list[bool]:
    """Per example: whether its group is held out, whole groups holding about `share` of the examples.

    :func:`assign_splits`'s dealing (a seeded hash order, no group divided, none taking more than twice the
    share), so the same groups are held out on every machine. Reading mode holds out train articles from the
    proposal head so that the energy trains on the head's out-of-sample candidates.
    """
    return [split == "val" for split in assign_splits(groups, share, 0.0, seed)]


def assign_splits_by_source(
    groups: list[str],
    sources: list[str],
    val: float,
    test: float,
    seed: int,
    pinned: dict[str, str] | None = None,
) -> list[str]:
    """`assign_splits` within each source, so every split gets its share of every source.

    Without this, a source of large groups (SQuAD articles) can fill val on its own and leave
    another source (physics questions) with no validation examples at all. `pinned` maps groups to
    the split they must go to; the fractions apply to the examples of the other groups.
    """
    pinned = pinned or {}
    out = [pinned.get(g, "") for g in groups]
    for source in sorted(set(sources)):
        idx = [i for i, s in enumerate(sources) if s == source and groups[i] not in pinned]
        for i, name in zip(idx, assign_splits([groups[i] for i in idx], val, test, seed), strict=True):
            out[i] = name
    return out
