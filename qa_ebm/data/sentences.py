"""Sentence splitting with NLTK Punkt, identical at preprocessing and at answer time.

Punkt is unsupervised. The pretrained English model is used when its data (`punkt_tab`) is
installed; otherwise a model is trained on the corpus being processed. Either way its parameters are
saved beside the dataset in NLTK's plain-text `punkt_tab` layout (never a pickle), and answer time
loads them from there, so both sides split the same way whatever is installed.

LaTeX is protected: math spans are masked before Punkt sees the text (`$x = 1.5$` is no sentence
end), and sentences are cut from the original text at the masked text's offsets.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTrainer

from qa_ebm.data.clean import block_spans, mask_math
from qa_ebm.errors import DataError
from qa_ebm.io import read_text_file

PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


def find_pretrained_punkt(language: str = "english") -> Path | None:
    """The installed `punkt_tab/<language>` directory, or None when NLTK's data is not installed."""
    import nltk.data

    try:
        return Path(nltk.data.find(f"tokenizers/punkt_tab/{language}/"))
    except LookupError:
        return None


class SentenceSplitter:
    """Splits clean text (blocks separated by blank lines) into sentences."""

    def __init__(self, params: PunktParameters, origin: str):
        self.params = params
        self.origin = origin  # "pretrained", "trained" or the dir it was loaded from
        self._punkt = PunktSentenceTokenizer(params)

    @classmethod
    def train(cls, texts: Iterable[str], max_chars: int = 2_000_000) -> SentenceSplitter:
        trainer = PunktTrainer()
        seen = 0
        for text in texts:
            if seen >= max_chars:
                break
            masked = mask_math(text, fill="x")
            trainer.train(masked, finalize=False)
            seen += len(masked)
        trainer.finalize_training()
        return cls(trainer.get_params(), origin="trained")

    @classmethod
    def load(cls, directory: str | Path, origin: str | None = None) -> SentenceSplitter:
        """Read a `punkt_tab` directory (ours, or NLTK's installed one)."""
        d = Path(directory)
        missing = [f for f in PUNKT_FILES if not (d / f).is_file()]
        if missing:
            raise DataError(f"{d}: not a Punkt model directory (missing {', '.join(missing)})")
        params = PunktParameters()
        params.collocations = {tuple(line.split("\t", 1)) for line in _lines(d / "collocations.tab") if "\t" in line}
        params.sent_starters = set(_lines(d / "sent_starters.txt"))
        params.abbrev_types = set(_lines(d / "abbrev_types.txt"))
        for n, line in enumerate(_lines(d / "ortho_context.tab"), 1):
            word, _, value = line.rpartition("\t")
            if not value.isdigit():
                raise DataError(f"{d / 'ortho_context.tab'}: line {n}: expected WORD<tab>FLAGS (an integer)")
            params.ortho_context[word] = int(value)
        return cls(params, origin=origin or str(d))

    def save(self, directory: str | Path) -> None:
        """Write NLTK's `punkt_tab` layout, sorted so the same model always gives the same bytes."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        p = self.params
        _write(d / "collocations.tab", (f"{a}\t{b}" for a, b in sorted(p.collocations)))
        _write(d / "sent_starters.txt", sorted(p.sent_starters))
        _write(d / "abbrev_types.txt", sorted(p.abbrev_types))
        _write(d / "ortho_context.tab", (f"{w}\t{v}" for w, v in sorted(p.ortho_context.items())))

    def split(self, text: str) -> list[str]:
        """Sentences of `text`; blank lines are hard boundaries, math spans are never cut."""
        sentences = []
        masked = mask_math(text, fill="x")
        for a, b in block_spans(masked):
            for start, end in self._punkt.span_tokenize(masked[a:b]):
                sentence = text[a + start : a + end].strip()
                if sentence:
                    sentences.append(sentence)
        return sentences


def _lines(path: Path) -> list[str]:
    return [line for line in read_text_file(path, DataError).split("\n") if line]


def _write(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8", newline="")
