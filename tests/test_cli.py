"""The ``attnlab`` command, run through the installed entry point as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab import cli

ENTRY_POINT = Path(sys.executable).parent / "attnlab"
SUBCOMMANDS = [["demo"], ["train"], ["approx-error"], ["build-cpp"], ["study"], ["study", "value-aware"],
               ["study", "ladder"]]


def run(*args: str, cwd: Path | None = None, python_m: bool = False, env: dict | None = None):
    assert ENTRY_POINT.is_file(), f"the attnlab entry point is not installed next to {sys.executable}"
    cmd = [sys.executable, "-m", "attnlab", *args] if python_m else [str(ENTRY_POINT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def one_line_error(result, *needles: str) -> None:
    """A usage error: exit 2 and a single line on stderr that says what is wrong."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_help_through_the_installed_entry_point(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: attnlab {' '.join(command)}"), result.stdout[:200]
    assert result.stderr == ""


def test_top_level_help_lists_every_subcommand_and_imports_no_torch():
    result = run("--help")
    assert result.returncode == 0
    for name in ("demo", "train", "approx-error", "build-cpp", "study"):
        assert f"    {name}" in result.stdout
    # --help stays fast: nothing in `attnlab.cli`'s import chain imports torch
    timing = subprocess.run([sys.executable, "-X", "importtime", "-m", "attnlab", "--help"],
                            capture_output=True, text=True, timeout=300)
    assert timing.returncode == 0 and "attnlab.cli" in timing.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in timing.stderr.splitlines()]
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]


def test_study_help_shows_whole_descriptions():
    out = run("study", "--help").stdout
    assert "(Gupta & Berant, EMNLP 2021)" in out and "(Gros, arXiv 2407.18601)" in out
    out = " ".join(run("study", "value-aware", "--help").stdout.split())
    assert "in language models (Gupta & Berant, EMNLP 2021), on models attnlab trains itself" in out


def test_one_real_option_of_each_subcommand_in_any_order(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train: {{out_dir: {tmp_path / 'run'}}}\n")
    one_line_error(run("demo", "--repeats", "0"), "--repeats must be >= 1")
    one_line_error(run("train", "--resume", str(cfg)), "--resume: no checkpoint in")  # option first
    one_line_error(run("train", str(cfg), "--overwrite", "--resume"), "not allowed with argument")
    one_line_error(run("approx-error", "--out", str(tmp_path / "x"), "--hf-model", "/nonexistent"),
                   "--hf-model", "'/nonexistent' does not exist")
    one_line_error(run("study", "value-aware", "--resume", str(tmp_path / "none")), "--resume must be a run folder")
    one_line_error(run("study", "ladder", "--steps", "0", "--out", str(tmp_path)), "steps must be >= 1")
    assert not (tmp_path / "x").exists() and not (tmp_path / "run").exists()


def test_usage_errors_are_one_line_and_exit_2(tmp_path):
    one_line_error(run(), "the following arguments are required: COMMAND")
    one_line_error(run("bogus"), "invalid choice: 'bogus'")
    one_line_error(run("train"), "the following arguments are required: config (")  # overrides are optional
    one_line_error(run("train", "c.yaml", "--bogus"), "unrecognized arguments: --bogus")
    one_line_error(run("study"), "the following arguments are required: name")
    one_line_error(run("study", "bogus"), "invalid choice: 'bogus'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {n_layers: 2\n")
    one_line_error(run("train", str(bad)), "attnlab train: error: config file", "is not valid YAML")


def test_python_dash_m_attnlab_is_the_same_cli():
    result = run("--help", python_m=True)
    assert result.returncode == 0 and "approx-error" in result.stdout and "build-cpp" in result.stdout
    one_line_error(run("demo", "--tokens", "0", python_m=True), "--tokens must be >= 1")


def test_train_says_where_the_checkpoint_and_metrics_are(tmp_path, capsys, one_thread):
    from attnlab import train as T
    from test_train import CountingSource

    T.register_source("counting", CountingSource, overwrite=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {n_layers: 1, d_model: 16, n_heads: 2, context: 16}\ndata: {source: counting}\n"
                   f"train: {{steps: 2, batch_size: 2, progress: false, out_dir: {tmp_path / 'run'}}}\n")
    assert cli.main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {tmp_path / 'run' / 'checkpoints' / 'step_00000002'}" in out
    assert f"metrics {tmp_path / 'run' / 'metrics.jsonl'}" in out


def test_check_hf_model_refuses_what_cannot_load_without_a_download(tmp_path, monkeypatch):
    from attnlab._argparse import check_hf_model

    with pytest.raises(ValueError, match=r"--hf-model must be a Hugging Face model folder .*'/nonexistent' does not"):
        check_hf_model("/nonexistent")
    with pytest.raises(ValueError, match=r"has no config\.json"):
        check_hf_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    check_hf_model(str(tmp_path))  # a model folder passes
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match=r"cache \(no download\); 'org/not-cached-model' is neither"):
        check_hf_model("org/not-cached-model")
