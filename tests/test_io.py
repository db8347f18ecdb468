import gzip
import os

import pytest

from qa_ebm.errors import DataError, OutputExistsError
from qa_ebm.io import atomic_output_dir, check_output_dir, open_input

TEXT = "héllo wörld\nsecond line\n"


def test_open_input_reads_plain_text(tmp_path):
    p = tmp_path / "plain.txt"
    p.write_text(TEXT, encoding="utf-8")
    with open_input(p) as f:
        assert f.read() == TEXT


def test_open_input_strips_utf8_bom(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    with open_input(p) as f:
        assert f.read() == TEXT


@pytest.mark.parametrize("name", ["data.txt.gz", "data.txt", "no_suffix"])
def test_open_input_gunzips_by_magic_bytes_whatever_the_name(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(gzip.compress(TEXT.encode()))
    with open_input(p) as f:
        assert f.read() == TEXT
    with open_input(p, "rb") as f:
        assert f.read() == TEXT.encode()


def test_open_input_binary_plain(tmp_path):
    p = tmp_path / "plain.bin"
    p.write_bytes(b"\x00\x01abc")
    with open_input(p, "rb") as f:
        assert f.read() == b"\x00\x01abc"


def test_open_input_gz_name_without_gzip_content_is_an_error(tmp_path):
    p = tmp_path / "fake.json.gz"
    p.write_text('{"not": "gzip"}')
    with pytest.raises(DataError, match=r"fake\.json\.gz.*not gzip"):
        open_input(p)


def test_open_input_missing_file(tmp_path):
    p = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=r"missing\.txt: no such file"):
        open_input(p)


def test_open_input_directory_is_an_error(tmp_path):
    with pytest.raises(DataError, match="not a file"):
        open_input(tmp_path)


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_atomic_output_dir_creates_new_dir(tmp_path):
    out = tmp_path / "nested" / "out"
    with atomic_output_dir(out) as tmp:
        assert tmp != out
        assert not out.exists()
        (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new"
    assert _leftovers(out.parent, "out") == []


def test_atomic_output_dir_success_replaces_existing_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").read_text() == "old"  # untouched until the body succeeds
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert (out / "new.txt").read_text() == "new"
    assert _leftovers(tmp_path, "out") == []


def test_atomic_output_dir_failure_keeps_old_content_and_no_temp_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert (out / "old.txt").read_text() == "old"
    assert _leftovers(tmp_path, "out") == []


def test_atomic_output_dir_failure_without_old_dir_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(out):
        raise KeyboardInterrupt
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_dir_refuses_existing_dir_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="--overwrite"), atomic_output_dir(out):
        pytest.fail("body must not run")
    assert (out / "keep.txt").read_text() == "keep"


def test_check_output_dir(tmp_path):
    out = tmp_path / "out"
    assert check_output_dir(out, overwrite=False) == out  # absent: fine
    out.mkdir()
    with pytest.raises(OutputExistsError, match=r"out: output directory exists"):
        check_output_dir(out, overwrite=False)
    assert check_output_dir(out, overwrite=True) == out


def test_check_output_dir_refuses_a_file_even_with_overwrite(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        check_output_dir(f, overwrite=True)


def test_atomic_output_dir_clears_own_stale_temp_dir(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / f".out.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "junk.txt").write_text("junk")
    with atomic_output_dir(out) as tmp:
        assert list(tmp.iterdir()) == []  # starts empty, not with the stale content
        (tmp / "a.txt").write_text("a")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert not stale.exists()


def test_atomic_output_dir_clears_temp_dir_of_a_killed_run(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.tmp-999999999"  # what a SIGKILLed earlier run with another pid leaves behind
    stale.mkdir()
    (stale / "big.arrow").write_text("half-written dataset")
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("a")
    assert _leftovers(tmp_path, "out") == []


def test_atomic_output_dir_restores_the_old_output_of_a_run_killed_mid_swap(tmp_path):
    # killed between moving the good output aside and renaming the new one in: only `.out.old-PID` is left
    out = tmp_path / "out"
    old = tmp_path / ".out.old-999999999"
    old.mkdir()
    (old / "manifest.json").write_text("good")
    with pytest.raises(OutputExistsError):
        with atomic_output_dir(out):
            pass
    assert (out / "manifest.json").read_text() == "good" and not old.exists()
