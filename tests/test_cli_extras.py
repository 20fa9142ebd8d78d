"""Command-line odds and ends: ``--version``, ``generate --tokenizer``, hub ids, the tokenizer
messages, and the transformers versions pyproject.toml allows."""

from __future__ import annotations

import logging
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from test_hf_cli import model_dir  # noqa: F401  (the fixture)

import llm_int8
from llm_int8.cli import main
from llm_int8.integrations import load_tokenizer, resolve_model_source

REPO = Path(__file__).resolve().parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"llm-int8 {llm_int8.__version__}"


@pytest.mark.parametrize("hub_id", ["gpt2", "openai-community/gpt2", "bert-base-uncased", "Org_1/model.v2"])
def test_hub_ids_with_or_without_organisation(hub_id):
    assert resolve_model_source(hub_id) == (hub_id, {})


@pytest.mark.parametrize("text", ["a/b/c", "./missing-folder", "/no/such/dir", "bad name"])
def test_what_is_not_a_hub_id_is_named(text):
    with pytest.raises(FileNotFoundError, match="unknown model"):
        resolve_model_source(text)


def _without_tokenizer(folder: Path, out: Path) -> Path:
    shutil.copytree(folder, out)
    for f in out.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    return out


def test_missing_tokenizer_is_said_plainly(model_dir, tmp_path, caplog):  # noqa: F811
    bare = _without_tokenizer(model_dir, tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_tokenizer(bare)
    with caplog.at_level(logging.WARNING):
        assert main(["quantize", str(bare), str(tmp_path / "int8")]) == 0
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "no tokenizer saved" in warning and "--tokenizer" in warning
    assert "sentencepiece" not in warning.lower()


def test_generate_takes_the_tokenizer_from_elsewhere(model_dir, tmp_path, capsys):  # noqa: F811
    assert main(["quantize", str(model_dir), str(tmp_path / "int8")]) == 0
    bare = _without_tokenizer(tmp_path / "int8", tmp_path / "bare")
    prompt = ["generate", "--prompt", "w5 w6 w7", "--max-new-tokens", "4"]
    capsys.readouterr()
    assert main([*prompt, "--model", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer" in err and "sentencepiece" not in err.lower()
    assert main([*prompt, "--model", str(bare), "--tokenizer", str(model_dir)]) == 0
    with_tokenizer = capsys.readouterr().out
    assert main([*prompt, "--model", str(tmp_path / "int8")]) == 0
    assert capsys.readouterr().out == with_tokenizer and with_tokenizer.strip()


def test_transformers_bound_holds_the_installed_version():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirement = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "transformers")
    upper = [s for s in requirement.specifier if s.operator in ("<", "<=", "~=", "==")]
    assert upper, f"transformers has no upper bound in pyproject.toml: {requirement}"
    assert requirement.specifier.contains(version("transformers")), (requirement, version("transformers"))
    assert "peft" in project["optional-dependencies"]
    assert any(Requirement(r).name == "peft" for r in project["optional-dependencies"]["dev"])
