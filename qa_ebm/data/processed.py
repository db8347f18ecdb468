"""Reading a `qa-ebm preprocess` output directory back, with its promises checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qa_ebm.errors import CheckpointError
from qa_ebm.io import read_json

FORMAT = "qa-ebm/dataset"


@dataclass
class ProcessedData:
    root: Path
    manifest: dict[str, Any]
    dataset: Any  # datasets.DatasetDict

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def punkt_dir(self) -> Path:
        return self.root / "punkt"

    def answer_arrays(self, split: str) -> dict[str, Any]:
        """The split's answerable examples as arrays: ids (N,), input_ids / token_mask (N, S, W), sentence_mask (N, S).

        Unanswerable questions (no target) and answers with no sentence are left out.
        """
        ds = self.dataset[split]
        cols = ds.select_columns(["id", "is_impossible", "num_sentences"])[:]
        keep = np.flatnonzero(~np.asarray(cols["is_impossible"], dtype=bool) & (np.asarray(cols["num_sentences"]) > 0))
        arrays = ds.select(keep).with_format("numpy", columns=["input_ids", "token_mask", "sentence_mask"])[:]
        return {"ids": [cols["id"][i] for i in keep], **arrays}

    def answer_sentences(self, split: str) -> list[list[str]]:
        """The sentences of the answers `answer_arrays(split)` returns, in the same order."""
        ds = self.dataset[split]
        cols = ds.select_columns(["is_impossible", "num_sentences", "sentences"])[:]
        keep = ~np.asarray(cols["is_impossible"], dtype=bool) & (np.asarray(cols["num_sentences"]) > 0)
        return [list(cols["sentences"][i]) for i in np.flatnonzero(keep)]

    def answer_examples(self, split: str) -> list[dict[str, Any]]:
        """The questions `answer_arrays(split)` covers, in its order, as dicts for judging generated answers.

        Keys: id, source, question, context ("" outside SQuAD), answer (the cleaned answer text: its sentences
        joined), references (SQuAD: every gold answer; elsewhere the answer).
        """
        if split not in self.dataset:
            raise CheckpointError(f"{self.root}: no split {split!r} (has {', '.join(self.dataset)})")
        keys = ["id", "source", "question", "context", "references", "is_impossible", "sentences"]
        cols = self.dataset[split].select_columns(keys)[:]
        out = []
        for i in range(len(cols["id"])):
            if cols["is_impossible"][i] or not cols["sentences"][i]:
                continue
            answer = " ".join(cols["sentences"][i])
            refs = list(cols["references"][i]) if cols["source"][i] == "squad" and cols["references"][i] else [answer]
            out.append(
                {
                    "id": cols["id"][i],
                    "source": cols["source"][i],
                    "question": cols["question"][i],
                    "context": cols["context"][i],
                    "answer": answer,
                    "references": refs,
                }
            )
        return out

    def reading_examples(self, split: str, answerable_only: bool = False) -> list[dict[str, Any]]:
        """The split's questions that come with a passage (SQuAD), as dicts for reading mode.

        Keys: id, title, question, context, answer, answer_start, references (all gold answers; empty
        for a v2 unanswerable question), is_impossible.
        """
        if split not in self.dataset:
            raise CheckpointError(f"{self.root}: no split {split!r} (has {', '.join(self.dataset)})")
        keys = ["id", "title", "question", "context", "answer", "answer_start", "references", "is_impossible"]
        cols = self.dataset[split].select_columns(keys)[:]
        rows = [dict(zip(keys, values, strict=True)) for values in zip(*(cols[k] for k in keys), strict=True)]
        rows = [r for r in rows if r["context"]]
        for r in rows:
            r["references"] = [] if r["is_impossible"] else list(r["references"])
        return [r for r in rows if not (answerable_only and r["is_impossible"])]


def load_processed(directory: str | Path) -> ProcessedData:
    import datasets
    import pyarrow as pa

    root = Path(directory)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{root}: not a qa-ebm preprocess output (no manifest.json); run qa-ebm preprocess first")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    for needed in ("dataset", "tokenizer"):
        if not (root / needed).is_dir():
            raise CheckpointError(f"{root}: incomplete preprocess output (no {needed}/)")
    try:
        dataset = datasets.load_from_disk(str(root / "dataset"))
    except (OSError, ValueError, pa.ArrowException) as e:  # a damaged or substituted file: never unpickled
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{root / 'dataset'}: not a readable saved dataset ({type(e).__name__}: {first})") from e
    return ProcessedData(root=root, manifest=manifest, dataset=dataset)
