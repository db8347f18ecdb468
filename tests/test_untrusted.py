"""Untrusted files: nothing the project loads is unpickled, no remote code runs, and paths read from a file
stay where they belong.

Three layers: a source scan of qa_ebm/ for the calls that can execute a file's content; a live malicious
pickle (unpickling it creates a marker file) put in place of every kind of file the loaders read, in real
runs and pipelines trained here; and the path and remote-code checks of pipeline files and directories.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from tiny import ROOT, answer_runs, tiny_config, tiny_proposal_head

from qa_ebm.errors import CheckpointError, ConfigError, QaEbmError
from qa_ebm.models.pretrained import packaged_model_dir

# ------------------------------------------------------------------------------------------- source scan

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNPICKLING = {"load", "loads", "Unpickler"}  # `pickle` itself may be imported: its exception types are harmless
PICKLE_ONLY = PICKLE_MODULES - {"pickle", "_pickle"}  # libraries with no other purpose
UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"}


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def scan(source: str, filename: str = "<snippet>") -> list[str]:
    """Every call in `source` that could run code from a file it reads, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    transformers_names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "transformers"
        for alias in node.names
    }
    problems = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] in PICKLE_ONLY for m in modules):
                problems.append(f"{where}: imports a pickling library ({', '.join(modules)})")
            if isinstance(node, ast.ImportFrom) and modules[0] in PICKLE_MODULES:
                if any(a.name in UNPICKLING for a in node.names):
                    problems.append(f"{where}: imports an unpickler from {modules[0]}")
            continue
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if owner in PICKLE_MODULES and name in UNPICKLING:
            problems.append(f"{where}: {owner}.{name}")
        if owner == "torch" and name == "load" and not _is_const(_kw(node, "weights_only"), True):
            problems.append(f"{where}: torch.load without weights_only=True")
        if owner in ("np", "numpy") and name == "load" and not _is_const(_kw(node, "allow_pickle"), False):
            if _kw(node, "allow_pickle") is not None:
                problems.append(f"{where}: numpy.load with allow_pickle")
        if owner in ("pd", "pandas") and name == "read_pickle":
            problems.append(f"{where}: pandas.read_pickle")
        if owner == "yaml" and name in UNSAFE_YAML:
            problems.append(f"{where}: yaml.{name} (use yaml.safe_load)")
        if isinstance(func, ast.Name) and name in ("eval", "exec"):
            problems.append(f"{where}: {name}()")
        trust = _kw(node, "trust_remote_code")
        # False, or a parameter of the same name passed through (whose default the scan checks below).
        if trust is not None and not _is_const(trust, False) and not _is_name(trust, "trust_remote_code"):
            problems.append(f"{where}: trust_remote_code={ast.unparse(trust)}")
        if name == "from_pretrained" and owner in transformers_names and trust is None:
            problems.append(f"{where}: {owner}.from_pretrained without trust_remote_code=False")
    for node in ast.walk(tree):  # a function that passes the flag through must default it to False
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            with_default = positional[len(positional) - len(args.defaults) :]
            defaults = {a.arg: d for a, d in zip(with_default, args.defaults, strict=True)}
            defaults |= {a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None}
            named = {a.arg for a in (*positional, *args.kwonlyargs)}
            if "trust_remote_code" in named and not _is_const(defaults.get("trust_remote_code"), False):
                problems.append(f"{filename}:{node.lineno}: {node.name}(trust_remote_code=...) must default to False")
    return problems


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def test_the_library_has_no_call_that_runs_a_files_content():
    files = sorted((ROOT / "qa_ebm").rglob("*.py"))
    assert len(files) > 50  # the scan really walks the package
    problems = [p for f in files for p in scan(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert problems == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(path)",
        "import torch\ntorch.load(path, weights_only=False)",
        "import pickle\npickle.load(f)",
        "from pickle import loads",
        "import joblib",
        "import pickle\npickle.Unpickler(f).load()",
        "import numpy as np\nnp.load(path, allow_pickle=True)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "eval(text)",
        "from transformers import AutoModel\nAutoModel.from_pretrained(name, trust_remote_code=True)",
        "from transformers import AutoModel\nAutoModel.from_pretrained(name, trust_remote_code=flag)",
        "from transformers import AutoTokenizer\nAutoTokenizer.from_pretrained(name)",
        "def load(name, trust_remote_code=True):\n    pass",
        "def load(name, *, trust_remote_code):\n    pass",
    ],
)
def test_the_scan_catches(snippet):
    assert scan(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(path, weights_only=True)",
        "import numpy as np\nnp.load(path)",
        "import yaml\nyaml.safe_load(text)",
        "from transformers import AutoModel\nAutoModel.from_pretrained(name, trust_remote_code=False)",
        "def f(m, trust_remote_code=False):\n    AutoModel.from_pretrained(m, trust_remote_code=trust_remote_code)",
        "import pickle\ntry:\n    pass\nexcept pickle.UnpicklingError:\n    pass",
        "HVAE.from_pretrained(d)",  # the project's own loaders: safetensors + JSON
    ],
)
def test_the_scan_allows(snippet):
    assert scan(snippet) == []


# ------------------------------------------------------------------------------- malicious pickles


class _RunsShellOnUnpickle:
    """A pickle payload: unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def payload(marker: Path, form: str) -> bytes:
    """A live payload as a raw pickle or as a torch.save zip (what a `.pt` / `pytorch_model.bin` holds)."""
    obj = {"weight": _RunsShellOnUnpickle(marker)}
    if form == "pickle":
        return pickle.dumps(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("form", ["pickle", "torch.save"])
def test_the_payload_is_live(tmp_path, form):
    """Control: a loader that unpickled the payload would create the marker, so its absence means something."""
    marker = tmp_path / "pwned"
    data = payload(marker, form)
    if form == "pickle":
        pickle.loads(data)
    else:
        torch.load(io.BytesIO(data), weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A preprocess output, an HVAE run, an EBT run and the answer pipeline exported from them; and, when the
    packaged MiniLM tokenizer is there, a reading pipeline (untrained tiny parts: only its files matter)."""
    base = tmp_path_factory.mktemp("untrusted")
    answer_runs(base, "pipe")
    if packaged_model_dir("all-MiniLM-L6-v2") is not None:
        _reading_pipeline(base / "hvae").save_pretrained(base / "reading")
    return base


def _reading_pipeline(hvae_run: Path):
    from transformers import AutoTokenizer

    from qa_ebm.config import EBTConfig
    from qa_ebm.models.answer_encoder import AnswerEncoder
    from qa_ebm.models.ebt import EBTSpec
    from qa_ebm.pipeline.reading import ReadingPipeline
    from qa_ebm.reading.energy import SpanEnergy, SpanEnergyConfig

    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir("all-MiniLM-L6-v2"), trust_remote_code=False)
    head = tiny_proposal_head(tokenizer, layers=1, stride=16)
    encoder = AnswerEncoder.from_run(hvae_run)
    y, _ = encoder(["a probe answer"])  # (1, P, D): the latent layout the energy reads
    ebt = EBTConfig(d_model=32, n_heads=2, n_layers=1, max_condition_tokens=48)
    spec = EBTSpec(latent_dim=y.shape[2], num_slots=y.shape[1], condition_dim=32)
    energy = SpanEnergy(SpanEnergyConfig(ebt=ebt, top_k=4, max_answer_tokens=3), spec)
    return ReadingPipeline(head, tokenizer, encoder, energy)


def _resume_hvae(root: Path):
    from qa_ebm.training.hvae_trainer import train_hvae

    config = tiny_config("ebt.use_context=false", "train_hvae.steps=6")
    return train_hvae(config, root / "data", root / "hvae", resume=True, progress=False)


def _resume_ebt(root: Path):
    from qa_ebm.training.ebt_trainer import train_ebt

    config = tiny_config("ebt.use_context=false", "train_ebt.steps=6")
    return train_ebt(config, root / "hvae", root / "ebt", resume=True, progress=False)


def _answer_encoder(root: Path):
    from qa_ebm.models.answer_encoder import AnswerEncoder

    return AnswerEncoder.from_run(root / "hvae")


def _hvae_run(root: Path):
    from qa_ebm.training.ebt_trainer import load_hvae_run

    return load_hvae_run(root / "hvae")


def _ebt(root: Path):
    from qa_ebm.training.ebt_trainer import load_ebt

    return load_ebt(root / "ebt")


def _processed(root: Path):
    from qa_ebm.data.processed import load_processed

    return load_processed(root / "data").answer_examples("train")


def _pipeline(kind: str) -> Callable[[Path], object]:
    def load(root: Path):
        from qa_ebm.pipeline import load_pipeline

        return load_pipeline(root / kind)

    return load


# loader -> (what it loads, the artifacts it reads)
LOADERS: dict[str, tuple[Callable[[Path], object], tuple[str, ...]]] = {
    "AnswerEncoder.from_run": (_answer_encoder, ("hvae",)),
    "load_hvae_run": (_hvae_run, ("hvae",)),
    "train-hvae --resume": (_resume_hvae, ("data", "hvae")),
    "load_ebt": (_ebt, ("ebt",)),
    "train-ebt --resume": (_resume_ebt, ("hvae", "ebt")),
    "load_processed": (_processed, ("data",)),
    "load_pipeline(answer)": (_pipeline("pipe"), ("pipe",)),
    "load_pipeline(reading)": (_pipeline("reading"), ("reading",)),
}
CASES = [
    ("AnswerEncoder.from_run", "hvae/model/model.safetensors"),
    ("AnswerEncoder.from_run", "hvae/model/config.json"),
    ("AnswerEncoder.from_run", "hvae/tokenizer/spm.model"),
    ("AnswerEncoder.from_run", "hvae/tokenizer/qa_ebm_tokenizer.json"),
    ("AnswerEncoder.from_run", "hvae/punkt/collocations.tab"),
    ("AnswerEncoder.from_run", "hvae/punkt/ortho_context.tab"),
    ("load_hvae_run", "hvae/latents/train.safetensors"),
    ("load_hvae_run", "hvae/latents/test.safetensors"),
    ("load_hvae_run", "hvae/latents/train.json"),
    ("load_hvae_run", "hvae/manifest.json"),
    ("train-hvae --resume", "hvae/trainer_state/model.safetensors"),
    ("train-hvae --resume", "hvae/trainer_state/optimizer.safetensors"),
    ("train-hvae --resume", "hvae/trainer_state/rng.safetensors"),
    ("train-hvae --resume", "hvae/trainer_state/optimizer.json"),
    ("train-hvae --resume", "hvae/trainer_state/scheduler.json"),
    ("train-hvae --resume", "hvae/trainer_state/state.json"),
    ("load_ebt", "ebt/model/model.safetensors"),
    ("load_ebt", "ebt/model/config.json"),
    ("train-ebt --resume", "ebt/trainer_state/model.safetensors"),
    ("train-ebt --resume", "ebt/trainer_state/optimizer.safetensors"),
    ("train-ebt --resume", "ebt/trainer_state/rng.safetensors"),
    ("train-ebt --resume", "ebt/trainer_state/state.json"),
    ("train-ebt --resume", "ebt/trainer_state/replay.safetensors"),
    ("train-ebt --resume", "ebt/model/config.json"),
    ("load_processed", "data/manifest.json"),
    ("load_processed", "data/dataset/dataset_dict.json"),
    ("load_processed", "data/dataset/train/data-00000-of-00001.arrow"),
    ("load_processed", "data/dataset/train/state.json"),
    ("load_processed", "data/dataset/train/dataset_info.json"),
    ("load_pipeline(answer)", "pipe/qa_pipeline.json"),
    ("load_pipeline(answer)", "pipe/energy/model.safetensors"),
    ("load_pipeline(answer)", "pipe/energy/config.json"),
    ("load_pipeline(answer)", "pipe/model/model.safetensors"),
    ("load_pipeline(answer)", "pipe/model/config.json"),
    ("load_pipeline(answer)", "pipe/tokenizer/spm.model"),
    ("load_pipeline(answer)", "pipe/tokenizer/qa_ebm_tokenizer.json"),
    ("load_pipeline(answer)", "pipe/punkt/sent_starters.txt"),
    ("load_pipeline(reading)", "reading/reading_pipeline.json"),
    ("load_pipeline(reading)", "reading/energy/model.safetensors"),
    ("load_pipeline(reading)", "reading/energy/span_energy.json"),
    ("load_pipeline(reading)", "reading/proposal/head.safetensors"),
    ("load_pipeline(reading)", "reading/proposal/proposal_head.json"),
    ("load_pipeline(reading)", "reading/proposal/encoder/model.safetensors"),
    ("load_pipeline(reading)", "reading/proposal/encoder/config.json"),
    ("load_pipeline(reading)", "reading/proposal/encoder/tokenizer.json"),
    ("load_pipeline(reading)", "reading/proposal/encoder/tokenizer_config.json"),
    ("load_pipeline(reading)", "reading/model/model.safetensors"),
    ("load_pipeline(reading)", "reading/tokenizer/spm.model"),
    ("load_pipeline(reading)", "reading/punkt/abbrev_types.txt"),
    # A pickle where transformers would look for one: refused before torch's loader sees it.
    ("load_pipeline(reading)", "reading/proposal/encoder/pytorch_model.bin"),
]


def _copy(runs: Path, artifacts: tuple[str, ...], dest: Path) -> Path:
    for name in artifacts:
        if not (runs / name).is_dir():
            pytest.skip(f"{name} not built (the packaged all-MiniLM-L6-v2 tokenizer is absent)")
        shutil.copytree(runs / name, dest / name)
    return dest


@pytest.mark.parametrize("form", ["pickle", "torch.save"])
@pytest.mark.parametrize(("loader", "rel"), CASES)
def test_a_pickle_in_place_of_a_saved_file_is_refused_unexecuted(runs, tmp_path, loader, rel, form):
    load, artifacts = LOADERS[loader]
    root = _copy(runs, artifacts, tmp_path / "runs")
    target = root / rel
    if target.name == "pytorch_model.bin":
        (target.parent / "model.safetensors").unlink()
    else:
        assert target.is_file()  # the case names a file the artifact really has
    marker = tmp_path / "pwned"
    target.write_bytes(payload(marker, form))
    try:
        with pytest.raises(QaEbmError) as err:
            load(root)
        message = str(err.value)
        assert str(root / rel.split("/")[0]) in message and "\n" not in message.strip()
        if target.suffix == ".safetensors" and "trainer_state" not in rel and "latents" not in rel:
            assert "refused" in message or "not a readable safetensors" in message
    finally:
        assert not marker.exists(), "the payload ran"


def test_the_command_line_refuses_a_poisoned_pipeline_in_one_line(runs, tmp_path, capsys):
    from qa_ebm.cli.main import main

    root = _copy(runs, ("pipe",), tmp_path)
    marker = tmp_path / "pwned"
    (root / "pipe" / "energy" / "model.safetensors").write_bytes(payload(marker, "pickle"))
    assert main(["answer", "--pipeline", str(root / "pipe"), "What does a capacitor store?"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors" in err and "pickle" in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_a_pickled_pytorch_model_bin_in_a_local_model_dir_is_refused(runs, tmp_path):
    """A user's own model dir (load_encoder, the frozen question encoder) may hold a .bin: transformers reads
    it with torch's weights-only loader, which refuses the payload; the project reports it in one line."""
    from qa_ebm.models.pretrained import load_encoder
    from qa_ebm.models.question_encoder import FrozenConditionEncoder

    if not (runs / "reading").is_dir():
        pytest.skip("the packaged all-MiniLM-L6-v2 tokenizer is absent")
    model_dir = shutil.copytree(runs / "reading" / "proposal" / "encoder", tmp_path / "model")
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (model_dir / "pytorch_model.bin").write_bytes(payload(marker, "torch.save"))
    for load in (lambda: load_encoder(str(model_dir)), lambda: FrozenConditionEncoder(str(model_dir), 16)):
        with pytest.raises(CheckpointError, match="model"):
            load()
    assert not marker.exists()


# --------------------------------------------------------------------------------- remote code


@pytest.fixture
def remote_code_dir(tmp_path) -> tuple[Path, Path]:
    """A model dir whose config, model and tokenizer all need its own Python file, which creates a marker."""
    d, marker = tmp_path / "remote", tmp_path / "pwned"
    d.mkdir()
    auto_map = {
        "AutoConfig": "custom.CustomConfig",
        "AutoModel": "custom.CustomModel",
        "AutoModelForCausalLM": "custom.CustomModel",
        "AutoTokenizer": ["custom.CustomTokenizer", None],
    }
    (d / "config.json").write_text(json.dumps({"model_type": "custom-remote", "auto_map": auto_map}))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CustomTokenizer", "auto_map": auto_map}))
    (d / "custom.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('remote code ran')\n")
    return d, marker


def _remote_loaders() -> dict[str, Callable[[str], object]]:
    from qa_ebm.data.tokenizer import HFTokenizer
    from qa_ebm.metrics.text import ReferenceLM
    from qa_ebm.models.pretrained import load_encoder
    from qa_ebm.models.question_encoder import FrozenConditionEncoder

    return {
        "load_encoder": load_encoder,
        "FrozenConditionEncoder": lambda d: FrozenConditionEncoder(d, 16),
        "HFTokenizer.from_pretrained": HFTokenizer.from_pretrained,
        "ReferenceLM": ReferenceLM,
    }


@pytest.mark.parametrize(
    "loader", ["load_encoder", "FrozenConditionEncoder", "HFTokenizer.from_pretrained", "ReferenceLM"]
)
def test_a_model_dir_that_needs_its_own_code_is_refused(remote_code_dir, loader):
    d, marker = remote_code_dir
    with pytest.raises(QaEbmError, match="custom code"):
        _remote_loaders()[loader](str(d))
    assert not marker.exists()


def test_a_reading_pipeline_whose_encoder_needs_its_own_code_is_refused(runs, tmp_path, remote_code_dir):
    from qa_ebm.pipeline import load_pipeline

    d, marker = remote_code_dir
    root = _copy(runs, ("reading",), tmp_path / "runs")
    for name in ("config.json", "tokenizer_config.json", "custom.py"):
        shutil.copy(d / name, root / "reading" / "proposal" / "encoder" / name)
    with pytest.raises(CheckpointError, match="custom code"):
        load_pipeline(root / "reading")
    assert not marker.exists()


def test_only_the_loader_that_takes_a_flag_can_trust_remote_code():
    """`trust_remote_code` is a parameter of load_encoder (default False) and of nothing the CLI reaches."""
    import inspect

    from qa_ebm.models.pretrained import load_encoder

    assert inspect.signature(load_encoder).parameters["trust_remote_code"].default is False
    cli = [p.read_text() for p in (ROOT / "qa_ebm" / "cli").glob("*.py")] + [
        (ROOT / "qa_ebm" / "config.py").read_text()
    ]
    assert not any("trust_remote_code" in text for text in cli)


# ------------------------------------------------------------------------------------- path traversal


def _spec(tmp_path: Path, **fields) -> Path:
    body = {
        "config": str(ROOT / "configs" / "tiny.yaml"),
        "out": "runs/out",
        "inputs": {"squad": "data/squad.json"},
        "stages": ["preprocess"],
        **fields,
    }
    path = tmp_path / "pipelines" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(body))
    return path


OUTSIDE = ["../../../../../../etc/passwd", "/etc/passwd", "~/.ssh/id_rsa"]


@pytest.mark.parametrize("value", OUTSIDE)
@pytest.mark.parametrize("key", ["config", "out", "inputs", "set"])
def test_a_pipeline_file_naming_a_path_outside_is_refused(tmp_path, monkeypatch, key, value):
    from qa_ebm.pipeline.runner import load_spec

    monkeypatch.chdir(tmp_path)
    fields = {
        "config": {"config": value},
        "out": {"out": value},
        "inputs": {"inputs": {"squad": value}},
        "set": {"set": [f"data.physics.path={value}"]},
    }[key]
    with pytest.raises(ConfigError, match=f"{key}.* lies outside the working directory"):
        load_spec(_spec(tmp_path, **fields))


def test_a_pipeline_file_inside_its_dirs_and_command_line_paths_anywhere_are_fine(tmp_path, monkeypatch):
    from qa_ebm.pipeline.runner import load_spec

    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    path = _spec(
        tmp_path,
        config="configs/tiny.yaml",  # the project's own configs, beside pipelines/
        out="runs/x",
        inputs={"squad": "rajpurkar/squad", "physics": "data/physics.jsonl"},  # a Hub id; a path under the cwd
        set=["data.splits.val_groups=[squad:Geology]", "hvae.word_encoder=all-MiniLM-L6-v2"],
    )
    spec = load_spec(path)
    assert spec.out == Path("runs/x") and spec.config == Path("configs/tiny.yaml")
    assert spec.inputs == {"squad": "rajpurkar/squad", "physics": "data/physics.jsonl"}
    # The user's own command line may point anywhere, and replaces what the file says.
    bad = _spec(tmp_path, out="/etc/qa-ebm", inputs={"squad": "/etc/passwd"})
    spec = load_spec(bad, inputs={"squad": "/data/squad.json"}, out="/scratch/runs/x")
    assert spec.out == Path("/scratch/runs/x") and spec.inputs == {"squad": "/data/squad.json"}


@pytest.mark.parametrize("name", ["../../etc", "/etc", "~/models/x", "question_encoder/../../..", "a/b/c"])
def test_an_answer_pipeline_naming_an_encoder_path_is_refused(runs, tmp_path, name):
    from qa_ebm.pipeline import load_pipeline

    root = _copy(runs, ("pipe",), tmp_path)
    meta_file = root / "pipe" / "qa_pipeline.json"
    meta = json.loads(meta_file.read_text())
    meta["question_encoder"] = {"kind": "pretrained", "name": name}
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"question_encoder.name = .* is a path"):
        load_pipeline(root / "pipe")


@pytest.mark.parametrize("part", ["model", "energy/model.safetensors", "tokenizer/spm.model"])
def test_a_pipeline_dir_with_a_link_leading_out_is_refused(runs, tmp_path, part):
    from qa_ebm.pipeline import load_pipeline

    root = _copy(runs, ("pipe", "hvae"), tmp_path)
    link = root / "pipe" / part
    target = root / "hvae" / part  # a real, loadable file: only where it lies is wrong
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink()
    link.symlink_to(target)
    with pytest.raises(CheckpointError, match=r"a link to .*, outside"):
        load_pipeline(root / "pipe")


def test_a_link_inside_the_pipeline_dir_is_fine(runs, tmp_path):
    from qa_ebm.pipeline import load_pipeline

    root = _copy(runs, ("pipe",), tmp_path)
    punkt = root / "pipe" / "punkt"
    shutil.move(punkt, root / "pipe" / "punkt-files")
    punkt.symlink_to("punkt-files")
    assert load_pipeline(root / "pipe") is not None
