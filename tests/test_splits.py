import random
from collections import Counter, defaultdict

import pytest

from qa_ebm.data.splits import assign_splits, hold_out


def _groups(n_groups=1000, max_size=8, seed=0):
    """Examples labelled by group, with random group sizes, shuffled as a loader might return them."""
    rng = random.Random(seed)
    groups = [f"article-{g}" for g in range(n_groups) for _ in range(rng.randint(1, max_size))]
    rng.shuffle(groups)
    return groups


GROUPS = _groups()


def _split_of_group(groups, splits):
    where = defaultdict(set)
    for g, s in zip(groups, splits, strict=True):
        where[g].add(s)
    return where


def test_one_split_name_per_example():
    splits = assign_splits(GROUPS, val=0.1, test=0.1, seed=0)
    assert len(splits) == len(GROUPS)
    assert set(splits) == {"train", "val", "test"}


def test_every_group_in_exactly_one_split():
    splits = assign_splits(GROUPS, val=0.1, test=0.1, seed=0)
    where = _split_of_group(GROUPS, splits)
    assert set(where) == set(GROUPS)
    assert all(len(s) == 1 for s in where.values())


def test_no_group_leaks_between_splits():
    splits = assign_splits(GROUPS, val=0.15, test=0.2, seed=3)
    members = {name: {g for g, s in zip(GROUPS, splits, strict=True) if s == name} for name in ("train", "val", "test")}
    assert not members["train"] & members["val"]
    assert not members["train"] & members["test"]
    assert not members["val"] & members["test"]


def test_deterministic():
    a = assign_splits(GROUPS, val=0.1, test=0.1, seed=7)
    b = assign_splits(list(GROUPS), val=0.1, test=0.1, seed=7)
    assert a == b


def test_independent_of_example_order():
    shuffled = list(GROUPS)
    random.Random(1).shuffle(shuffled)
    a = _split_of_group(GROUPS, assign_splits(GROUPS, val=0.1, test=0.1, seed=0))
    b = _split_of_group(shuffled, assign_splits(shuffled, val=0.1, test=0.1, seed=0))
    assert a == b


def test_changes_with_seed():
    a = _split_of_group(GROUPS, assign_splits(GROUPS, val=0.1, test=0.1, seed=0))
    b = _split_of_group(GROUPS, assign_splits(GROUPS, val=0.1, test=0.1, seed=1))
    changed = sum(a[g] != b[g] for g in a)
    assert changed > 50  # about a third of the 1000 groups move; identical would be 0


@pytest.mark.parametrize(("val", "test"), [(0.1, 0.1), (0.05, 0.2), (0.3, 0.0), (0.0, 0.25)])
def test_fractions_roughly_met(val, test):
    splits = assign_splits(GROUPS, val=val, test=test, seed=0)
    counts = Counter(splits)
    n = len(GROUPS)
    assert abs(counts["val"] / n - val) < 0.02
    assert abs(counts["test"] / n - test) < 0.02
    assert abs(counts["train"] / n - (1 - val - test)) < 0.03


def test_zero_fractions_put_everything_in_train():
    assert set(assign_splits(GROUPS[:100], val=0.0, test=0.0, seed=0)) == {"train"}


def test_single_group_is_never_divided():
    splits = assign_splits(["only"] * 50, val=0.1, test=0.1, seed=0)
    assert len(set(splits)) == 1


def test_empty_input():
    assert assign_splits([], val=0.1, test=0.1, seed=0) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dominant_group_stays_in_train(seed):
    # One article with 90 questions and ten with one each: 10% val / 10% test fit in the singletons.
    groups = ["big"] * 90 + [f"small-{i}" for i in range(10)]
    splits = assign_splits(groups, val=0.1, test=0.1, seed=seed)
    assert splits[0] == "train"
    assert Counter(splits)["train"] >= 80


def test_pinned_groups_go_to_their_split_and_the_rest_by_fraction():
    from qa_ebm.data.splits import assign_splits_by_source

    groups = [f"g{i // 3}" for i in range(60)]
    sources = ["squad"] * 60
    out = assign_splits_by_source(groups, sources, 0.0, 0.0, 0, pinned={"g1": "test", "g4": "val"})
    assert {s for g, s in zip(groups, out, strict=True) if g == "g1"} == {"test"}
    assert {s for g, s in zip(groups, out, strict=True) if g == "g4"} == {"val"}
    assert out.count("train") == 54


def test_hold_out_takes_whole_groups_near_the_share_and_the_same_ones_every_time():
    held = hold_out(GROUPS, 0.35, seed=0)
    where = _split_of_group(GROUPS, held)
    assert all(len(s) == 1 for s in where.values())  # a group is held out whole or not at all
    assert abs(sum(held) / len(GROUPS) - 0.35) < 0.01
    assert held == hold_out(list(GROUPS), 0.35, seed=0)
    assert held != hold_out(GROUPS, 0.35, seed=1)
    assert not any(hold_out(GROUPS, 0.0, seed=0))
