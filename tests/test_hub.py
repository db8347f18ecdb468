"""The Hub code paths (users have the Hub; tests do not): `datasets.load_dataset` is faked with rows in
the Hub sets' schemas, so the mapping from those schemas and the arguments passed are pinned."""

from __future__ import annotations

import datasets
import pytest

from qa_ebm.config import PhysicsSourceConfig, SquadSourceConfig
from qa_ebm.data.hub import looks_like_hub_id
from qa_ebm.data.physics import load_physics
from qa_ebm.data.squad import load_squad
from qa_ebm.errors import DataError


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def load_dataset(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        if repo_id.startswith("rajpurkar/"):
            rows = {
                "id": ["a", "b"],
                "title": ["Art", "Art"],
                "context": ["Paris is in France.", "Paris is in France."],
                "question": ["Where is Paris?", "Who built it?"],
                "answers": [
                    {"text": ["France", "in France"], "answer_start": [12, 9]},
                    {"text": [], "answer_start": []},
                ],
            }
            return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)})
        rows = {
            "qid": [7],
            "question": ["<p>Why is the sky blue?</p>"],
            "answers": [
                [
                    {"answer_id": 1, "text": "<p>Low.</p>", "pm_score": 1, "selected": False},
                    {"answer_id": 2, "text": "<p>Rayleigh scattering.</p>", "pm_score": 9, "selected": True},
                ]
            ],
            "date": ["2020-01-01"],
            "metadata": [["https://physics.stackexchange.com/questions/7"]],
        }
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_squad_hub_schema(fake_hub):
    examples, report = load_squad("rajpurkar/squad_v2", SquadSourceConfig(), streaming=True)
    assert fake_hub == [("rajpurkar/squad_v2", {"streaming": True})]
    assert report.kind == "hub" and report.hub == {"id": "rajpurkar/squad_v2"}
    first, second = examples
    assert (first["answer"], first["answer_start"], first["references"]) == ("France", 12, ["France", "in France"])
    assert second["is_impossible"] and report.unanswerable == 1 and first["group"] == "squad:Art"


def test_h4_hub_schema_and_arguments(fake_hub):
    cfg = PhysicsSourceConfig(hub_data_dir="data/physics.stackexchange.com")
    examples, report = load_physics("HuggingFaceH4/stack-exchange-preferences", cfg)
    assert fake_hub == [
        (
            "HuggingFaceH4/stack-exchange-preferences",
            {"data_dir": "data/physics.stackexchange.com", "split": "train", "streaming": False},
        )
    ]
    assert report.format == "h4" and examples[0]["answer"] == "<p>Rayleigh scattering.</p>"


def test_hub_failure_is_one_clear_error(monkeypatch):
    def unreachable(repo_id, **kwargs):
        raise ConnectionError("Couldn't reach 'rajpurkar/squad' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match=r"cannot load 'rajpurkar/squad' from the Hugging Face Hub.*--squad path/to"):
        load_squad("rajpurkar/squad", SquadSourceConfig())


@pytest.mark.parametrize(
    ("spec", "hub"),
    [("rajpurkar/squad", True), ("gpt2", True), ("data/x.json", False), ("./squad", False), ("x.jsonl.gz", False)],
)
def test_hub_id_recognition(spec, hub):
    assert looks_like_hub_id(spec) is hub
