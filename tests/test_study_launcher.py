"""The study launcher: registry, YAML presets, atomic per-cell results, resume, jobs, devices."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from attnlab.studies import base, launcher
from attnlab.studies.base import Cell, Study, register_study
from attnlab.studies.report import RunDir


@dataclass(frozen=True)
class ToyPreset:
    n: int = 6
    seed: int = 0
    jobs: int = 1


def toy_cells(p: ToyPreset) -> list[Cell]:
    return [Cell(f"c/{i}", {"i": i}) for i in range(p.n)] + [Cell("total", {"n": p.n}, stage=1)]


def toy_run_cell(p: ToyPreset, cell: Cell, ctx) -> dict:
    """Leaves a marker per execution (any process), fails on $TOY_FAIL, sums stage 0 in stage 1."""
    marker = ctx.run_path / "ran" / f"{cell.key.replace('/', '~')}.{os.getpid()}.{uuid.uuid4().hex}"
    marker.parent.mkdir(exist_ok=True)
    marker.touch()
    if cell.key == os.environ.get("TOY_FAIL"):
        raise RuntimeError("boom")
    if cell.stage == 1:
        return {"sum": sum(ctx.results[f"c/{i}"]["sq"] for i in range(p.n))}
    return {"sq": cell.config["i"] ** 2, "device": ctx.device, "threads": torch.get_num_threads()}


def toy_report(p, run_dir, results, summary, info) -> None:
    run_dir.write_text("report.md", f"sum {summary['sum']} on {info['device']}\n")


TOY = register_study(Study("toy", ToyPreset, toy_cells, toy_run_cell, lambda p, r: {"sum": r["total"]["sum"]},
                           toy_report))


def _runs(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in (path / "ran").iterdir():
        counts[m.name.split(".")[0]] = counts.get(m.name.split(".")[0], 0) + 1
    return counts


def test_jobs_run_every_cell_once_in_worker_processes(tmp_path):
    path = launcher.run_study("toy", ToyPreset(), out=tmp_path, jobs=2, progress=False)
    assert (path / "report.md").read_text() == "sum 55 on cpu\n"
    assert _runs(path) == {**{f"c~{i}": 1 for i in range(6)}, "total": 1}
    pids = {m.name.split(".")[1] for m in (path / "ran").iterdir() if m.name.startswith("c~")}
    assert str(os.getpid()) not in pids  # stage 0 ran in the pool
    assert len(list((path / "results").glob("*.json"))) == 7
    info = json.loads((path / "run.json").read_text())
    assert info["study"] == "toy" and info["preset"] == "custom" and info["config"] == {"n": 6, "seed": 0, "jobs": 1}
    assert {"torch", "python", "git_commit", "device", "processor"} <= set(info["environment"])
    (session,) = info["sessions"]
    assert session["jobs"] == 2 and session["cells_run"] == 7 and session["device"] == "cpu"


def test_resume_after_a_failure_recomputes_no_finished_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_FAIL", "c/3")
    with pytest.raises(RuntimeError, match="boom"):
        launcher.run_study("toy", ToyPreset(), out=tmp_path, progress=False)
    (path,) = tmp_path.iterdir()
    assert sorted(p.name for p in (path / "results").iterdir()) == ["c~0.json", "c~1.json", "c~2.json"]
    assert not list((path / "results").glob(".*"))  # no half-written result
    monkeypatch.delenv("TOY_FAIL")
    assert launcher.run_study("toy", "ignored", resume=path, jobs=2, progress=False) == path
    assert _runs(path) == {"c~0": 1, "c~1": 1, "c~2": 1, "c~3": 2, "c~4": 1, "c~5": 1, "total": 1}
    launcher.run_study("toy", "ignored", resume=path, progress=False)  # all finished: nothing runs
    assert sum(_runs(path).values()) == 8
    assert [s["cells_run"] for s in json.loads((path / "run.json").read_text())["sessions"]] == [3, 4, 0]


def test_a_cell_whose_config_changed_is_not_finished(tmp_path):
    run = RunDir.create(tmp_path, "toy", config={}, seeds=[0])
    cell = Cell("c/0", {"i": 0})
    run.save_cell(cell.key, {"sq": 0}, cell.hash)
    assert RunDir.open(run.path).cell("c/0", cell.hash) == {"sq": 0}
    assert RunDir.open(run.path).cell("c/0", Cell("c/0", {"i": 1}).hash) is None
    assert Cell("a", {"x": 1, "y": 2}).hash == Cell("b", {"y": 2, "x": 1}).hash  # key order does not matter


def test_resume_refuses_another_preset_and_a_held_folder(tmp_path):
    path = launcher.run_study("toy", ToyPreset(n=2), out=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"overrides may only set \['jobs', 'threads'\], got \['n'\]"):
        launcher.run_study("toy", "x", resume=path, overrides={"n": 3})
    lock = launcher._Lock(path)
    try:
        with pytest.raises(ValueError, match="is in use by another launcher"):
            launcher.run_study("toy", "x", resume=path)
    finally:
        lock.release()
    with pytest.raises(ValueError, match="jobs must be an int >= 1"):
        launcher.run_study("toy", ToyPreset(), out=tmp_path, jobs=0)


def test_every_yaml_preset_builds_and_names_are_checked(tmp_path):
    assert {"value-aware", "ladder"} <= set(base.available_studies())
    for name in ("value-aware", "ladder"):
        assert {"tiny", "quick", "paper"} <= set(base.preset_names(name))
        for preset in base.preset_names(name):
            assert isinstance(base.load_preset(name, preset), base.get_study(name).preset_type)
    with pytest.raises(ValueError, match=r"preset must be one of \['paper', 'quick', 'tiny'\]"):
        base.load_preset("ladder", "huge")
    custom = tmp_path / "mine.yaml"
    custom.write_text("levels: {recall: [1, 2]}\nsteps: 40\n")
    p = base.load_preset("ladder", str(custom), {"n_seeds": 2})
    assert p.levels == {"recall": (1, 2)} and p.steps == 40 and p.n_seeds == 2
    with pytest.raises(ValueError, match="study must be one of"):
        base.get_study("nope")


@pytest.mark.parametrize("device, message", [
    ("gpu", "device must be 'cpu', 'cuda' or 'cuda:N'"), ("cpu:0", "device must be"), ("cuda:x", "device must be"),
] + ([] if torch.cuda.is_available() else [("cuda", "sees no CUDA device"), ("cuda:0", "sees no CUDA device")]))
def test_bad_devices_are_usage_errors_before_any_work(device, message, tmp_path, capsys):
    assert launcher.main("ladder", ["--preset", "tiny", "--out", str(tmp_path), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlab study ladder: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


STUDY_SOURCES = sorted((Path(base.__file__).parent).glob("*.py"))


@pytest.mark.parametrize("path", STUDY_SOURCES, ids=lambda p: p.name)
def test_no_study_hard_codes_the_cpu(path):
    """Issue 13: every device in the studies comes from --device (a default in a signature is fine)."""
    text = path.read_text()
    assert not re.search(r"""device\s*=\s*["']cpu["']|torch\.device\(\s*["']cpu["']\s*\)""",
                         text.replace('device: str = "cpu"', "")), path.name


def test_the_device_reaches_training_and_every_evaluated_tensor(tmp_path, monkeypatch):
    from attnlab.studies import ladder, ladder_train, va_eval, value_aware

    assert ladder_train._run_config(ladder.get_preset("tiny"), "recall", 1, "softmax", 0, tmp_path, "cuda:1")[0] \
        .train.device == "cuda"
    assert va_eval.run_config(value_aware.PRESETS["tiny"], "causal", "relu", tmp_path, 0, "cuda").train.device == "cuda"
    # evaluation: the model and every input it sees are on the requested device
    from attnlab.models import build_model

    preset = value_aware.PRESETS["tiny"]
    cfg = va_eval.run_config(preset, "causal", "relu", tmp_path, 0, "cpu")
    vocab = va_eval.source_for(preset.max_bytes, preset.context).vocab_size
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    model, seen = build_model(cfg.model), []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].device))
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or real_to(self, *a, **k))
    out = va_eval.evaluate_tokens(model, cfg, preset, "topr", 1, "cpu")
    devices = [str(a[0]) for a in moved if a and isinstance(a[0], (str, torch.device))]
    assert devices and set(devices) == {"cpu"} and seen and all(d.type == "cpu" for d in seen)
    assert len(out["token_correct"]) == len(out["token_loss"]) == len(out["token_seq"]) == out["tokens"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_both_studies_run_a_cell_on_cuda(tmp_path):
    from attnlab.studies import ladder

    p = ladder.get_preset("tiny", levels={"recurrence": (1,)}, n_seeds=1, steps=12, eval_every=4)
    result = ladder.train_cell(p, "recurrence", 1, "expressive", 0, tmp_path, device="cuda")
    assert 0.0 <= result["final_accuracy"] <= 1.0
    path = launcher.run_study("value-aware", "tiny", out=tmp_path / "va", device="cuda", progress=False)
    assert json.loads((path / "run.json").read_text())["sessions"][0]["device"] == "cuda"
    assert "Claim 1" in (path / "report.md").read_text()
