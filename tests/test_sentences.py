import nltk.data
import pytest

from qa_ebm.data.sentences import PUNKT_FILES, SentenceSplitter, find_pretrained_punkt
from qa_ebm.errors import DataError

CORPUS = [
    "The ball is thrown upward with an initial speed of ten metres per second. It slows down because gravity "
    "acts against its motion. At the top of its path the velocity is zero. Then it falls back to the ground.",
    "Dr. Smith measured the period of the pendulum. She repeated the measurement five times. The mean period "
    "was close to two seconds. Her student, Mr. Brown, plotted the results on a graph.",
    "Energy is conserved in a closed system. Heat flows from the hot body to the cold one. The entropy of "
    "the universe never decreases. This is the second law of thermodynamics.",
    "Light travels faster than sound. That is why we see lightning before we hear thunder. The delay tells "
    "us how far away the storm is. A delay of three seconds means about one kilometre.",
    "An electron has a negative charge. A proton has a positive charge of the same size. Dr. Jones asked "
    "why the atom is neutral. The numbers of protons and electrons are equal.",
    "The spring obeys Hooke's law. The force grows with the extension. If the extension doubles, the force "
    "doubles too. Mr. Green checked this with a set of weights.",
]
CORPUS = CORPUS * 5


@pytest.fixture(scope="module")
def splitter():
    return SentenceSplitter.train(CORPUS)


def test_train_origin(splitter):
    assert splitter.origin == "trained"


def test_splits_at_full_stops(splitter):
    text = "The cart rolls down the slope. Friction slows it. Finally it stops."
    assert splitter.split(text) == ["The cart rolls down the slope.", "Friction slows it.", "Finally it stops."]


def test_no_split_inside_inline_math(splitter):
    text = "The speed is $x = 1.5$ metres per second. Then it stops."
    assert splitter.split(text) == ["The speed is $x = 1.5$ metres per second.", "Then it stops."]


def test_no_split_inside_display_math(splitter):
    text = "We find $$v = 3.0 \\times 10^8. Then c = v.$$ This is fast. Then it stops."
    assert splitter.split(text) == ["We find $$v = 3.0 \\times 10^8. Then c = v.$$ This is fast.", "Then it stops."]


def test_blank_lines_are_hard_boundaries(splitter):
    text = "A list item without a full stop\n\nAnother item without one\n\nA real sentence. And another."
    assert splitter.split(text) == [
        "A list item without a full stop",
        "Another item without one",
        "A real sentence.",
        "And another.",
    ]


def test_whitespace_only_line_is_a_boundary(splitter):
    assert splitter.split("A list item without a full stop\n  \nAnother item.") == [
        "A list item without a full stop",
        "Another item.",
    ]


def test_blank_line_inside_display_math_is_no_boundary(splitter):
    assert splitter.split("We find $$a = 1.\n\nb = 2.$$ Then it stops.") == [
        "We find $$a = 1.\n\nb = 2.$$ Then it stops."
    ]


def test_empty_text(splitter):
    assert splitter.split("") == []
    assert splitter.split("\n\n\n\n") == []


def test_learns_abbreviations(splitter):
    assert "dr" in splitter.params.abbrev_types
    assert splitter.split("Dr. Smith agreed. Then it stops.") == ["Dr. Smith agreed.", "Then it stops."]


def test_save_load_gives_identical_splits(splitter, tmp_path):
    splitter.save(tmp_path / "punkt")
    assert sorted(p.name for p in (tmp_path / "punkt").iterdir()) == sorted(PUNKT_FILES)
    loaded = SentenceSplitter.load(tmp_path / "punkt")
    assert loaded.origin == str(tmp_path / "punkt")
    assert loaded.params.abbrev_types == splitter.params.abbrev_types
    assert loaded.params.collocations == splitter.params.collocations
    assert loaded.params.sent_starters == splitter.params.sent_starters
    assert dict(loaded.params.ortho_context) == dict(splitter.params.ortho_context)
    for text in [*CORPUS[:6], "Dr. Smith agreed. The speed is $x = 1.5$ m. Then it stops.\n\nNew block"]:
        assert loaded.split(text) == splitter.split(text)


def test_save_is_deterministic(splitter, tmp_path):
    splitter.save(tmp_path / "a")
    SentenceSplitter.train(CORPUS).save(tmp_path / "b")  # a fresh training run, too
    SentenceSplitter.load(tmp_path / "a").save(tmp_path / "c")  # and a reload
    for name in PUNKT_FILES:
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes(), name
        assert a == (tmp_path / "c" / name).read_bytes(), name
    assert (tmp_path / "a" / "ortho_context.tab").read_bytes()  # not trivially empty


def test_load_origin_override(splitter, tmp_path):
    splitter.save(tmp_path)
    assert SentenceSplitter.load(tmp_path, origin="pretrained").origin == "pretrained"


def test_load_missing_files_is_a_data_error(splitter, tmp_path):
    splitter.save(tmp_path)
    (tmp_path / "abbrev_types.txt").unlink()
    (tmp_path / "ortho_context.tab").unlink()
    with pytest.raises(DataError, match=r"missing abbrev_types\.txt, ortho_context\.tab") as e:
        SentenceSplitter.load(tmp_path)
    assert "collocations.tab" not in str(e.value)


def test_load_empty_dir_names_every_file(tmp_path):
    with pytest.raises(DataError, match="not a Punkt model directory") as e:
        SentenceSplitter.load(tmp_path)
    assert all(name in str(e.value) for name in PUNKT_FILES)


def test_find_pretrained_punkt_none_without_nltk_data(tmp_path, monkeypatch):
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    assert find_pretrained_punkt() is None


def test_find_pretrained_punkt_finds_installed_data(splitter, tmp_path, monkeypatch):
    data = tmp_path / "nltk_data"
    english = data / "tokenizers" / "punkt_tab" / "english"
    splitter.save(english)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "elsewhere"), str(data)])
    found = find_pretrained_punkt()
    assert found is not None
    assert found.resolve() == english.resolve()
    assert find_pretrained_punkt("german") is None
    loaded = SentenceSplitter.load(found, origin="pretrained")
    text = "The speed is $x = 1.5$ metres per second. Then it stops."
    assert loaded.split(text) == splitter.split(text)
    assert loaded.origin == "pretrained"
