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
    current = torch.cuda.current_device() if ctx.device.startswith("cuda") and torch.cuda.is_available() else None
    return {"sq": cell.config["i"] ** 2, "device": ctx.device, "threads": torch.get_num_threads(),
            "current": current}


def fake_select(device: str) -> None:
    """Stands in for torch.cuda.set_device where there is no GPU: records (pid, device) per call."""
    (Path(os.environ["TOY_SELECTED"]) / f"{os.getpid()}.{device}.{uuid.uuid4().hex}").touch()


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
    assert session["started"] <= session["finished"]  # recorded when the session began, not at its end
    assert session["git_commit"] == info["environment"]["git_commit"]  # each session names the code it ran


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
    with pytest.raises(ValueError, match=re.escape(f"preset must be one of {sorted(base.preset_names('ladder'))}")):
        base.load_preset("ladder", "huge")
    custom = tmp_path / "mine.yaml"
    custom.write_text("levels: {recall: [1, 2]}\nsteps: 40\n")
    p = base.load_preset("ladder", str(custom), {"n_seeds": 2})
    assert p.levels == {"recall": (1, 2)} and p.steps == 40 and p.n_seeds == 2
    with pytest.raises(ValueError, match="study must be one of"):
        base.get_study("nope")


@pytest.mark.parametrize("device, message", [
    ("gpu", "device must be 'cpu', 'cuda' or 'cuda:N'"), ("cpu:0", "device must be"), ("cuda:x", "device must be"),
    ("cuda:0,cpu", "a list must name GPUs as cuda:N"),
] + ([] if torch.cuda.is_available() else [("cuda", "sees no CUDA device"), ("cuda:0", "sees no CUDA device"),
                                           ("cuda:all", "device is 'cuda:all' but this torch")]))
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

    # 'cuda:N' reaches TrainConfig whole, or as 'cuda' with GPU N made current by the launcher
    assert ladder_train._run_config(ladder.get_preset("tiny"), "recall", 1, "softmax", 0, tmp_path, "cuda:1")[0] \
        .train.device in ("cuda:1", "cuda")
    assert va_eval.run_config(value_aware.PRESETS["tiny"], "causal", "relu", tmp_path, 0, "cuda:1").train.device \
        in ("cuda:1", "cuda")
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
def test_pool_workers_run_on_every_visible_gpu(tmp_path):
    path = launcher.run_study("toy", ToyPreset(), out=tmp_path, device="cuda:all", jobs=2 * torch.cuda.device_count(),
                              progress=False)
    (session,) = json.loads((path / "run.json").read_text())["sessions"]
    run = RunDir.open(path)
    for i in range(6):
        device = session["cell_devices"][f"c/{i}"]
        assert run.cell(f"c/{i}")["device"] == device and run.cell(f"c/{i}")["current"] == int(device.split(":")[1])
    assert _runs(path) == {**{f"c~{i}": 1 for i in range(6)}, "total": 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_both_studies_run_a_cell_on_cuda(tmp_path):
    from attnlab.studies import ladder

    p = ladder.get_preset("tiny", levels={"recurrence": (1,)}, n_seeds=1, steps=12, eval_every=4)
    result = ladder.train_cell(p, "recurrence", 1, "expressive", 0, tmp_path, device="cuda")
    assert 0.0 <= result["final_accuracy"] <= 1.0
    path = launcher.run_study("value-aware", "tiny", out=tmp_path / "va", device="cuda", progress=False)
    assert json.loads((path / "run.json").read_text())["sessions"][0]["device"] == "cuda"
    assert "Claim 1" in (path / "report.md").read_text()


@pytest.fixture
def two_fake_gpus(monkeypatch, tmp_path):
    """torch sees two CUDA devices in this process; workers 'select' theirs through fake_select."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "fake GPU")  # run.json's hardware
    monkeypatch.setattr(launcher, "_select_device", fake_select)
    selected = tmp_path / "selected"
    selected.mkdir()
    monkeypatch.setenv("TOY_SELECTED", str(selected))
    return selected


def test_several_gpus_are_parsed_and_checked_before_any_work(two_fake_gpus, tmp_path, capsys):
    assert launcher.check_devices("cuda:all") == ["cuda:0", "cuda:1"]
    assert launcher.check_devices("cuda:1, cuda:0") == ["cuda:1", "cuda:0"]
    assert launcher.check_devices("cuda:1") == ["cuda:1"] and launcher.check_devices("cpu") == ["cpu"]
    with pytest.raises(ValueError, match="must not repeat a GPU"):
        launcher.check_devices("cuda:0,cuda:0")
    with pytest.raises(TypeError, match="device must be a str"):
        launcher.check_devices(0)
    out = tmp_path / "out"
    for argv, message in ((["--device", "cuda:0,cuda:2"], "'cuda:2': only 2 CUDA device(s) are visible"),
                          (["--device", "cuda:all", "--jobs", "1"], "jobs must be at least the number of devices (2")):
        assert launcher.main("ladder", ["--preset", "tiny", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("attnlab study ladder: error:") and message in err and len(err.strip().splitlines()) == 1
        assert not out.exists()  # validated before the run folder exists
    assert not list(two_fake_gpus.iterdir())  # and before any device was selected


def test_pool_workers_are_spread_over_the_gpus_and_each_cell_runs_once(two_fake_gpus, tmp_path):
    path = launcher.run_study("toy", ToyPreset(), out=tmp_path / "out", device="cuda:all", jobs=4, progress=False)
    assert _runs(path) == {**{f"c~{i}": 1 for i in range(6)}, "total": 1}  # every cell once
    (session,) = json.loads((path / "run.json").read_text())["sessions"]
    assert session["device"] == "cuda:all" and session["devices"] == ["cuda:0", "cuda:1"] and session["jobs"] == 4
    selected = {}  # pid -> devices that process selected
    for m in two_fake_gpus.iterdir():
        pid, device, _ = m.name.split(".")
        selected.setdefault(pid, []).append(device)
    workers = {pid: d for pid, d in selected.items() if pid != str(os.getpid())}
    assert len(workers) >= 2 and all(len(d) == 1 for d in workers.values())  # a worker selects its device once
    round_robin = ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert sorted(d[0] for d in workers.values()) == sorted(round_robin[:len(workers)])
    run = RunDir.open(path)
    assert set(session["cell_devices"]) == {f"c/{i}" for i in range(6)} | {"total"}
    for m in (path / "ran").iterdir():
        key, pid = m.name.split(".")[:2]
        key = key.replace("~", "/")
        if key == "total":  # one cell left: it runs in the launcher's process, on the first device
            assert session["cell_devices"][key] == "cuda:0" and selected[str(os.getpid())] == ["cuda:0"]
            continue
        # the cell saw its worker's device, and run.json records it
        assert run.cell(key)["device"] == session["cell_devices"][key] == workers[pid][0]


def test_the_device_reaches_every_train_and_eval_call(tmp_path, monkeypatch):
    """Issue 13: a behavioural check (no GPU needed): each study's run_cell hands ctx.device to
    training and to evaluation, which are spied on instead of run."""
    import attnlab.checkpoints
    import attnlab.train
    from attnlab.studies import ladder, ladder_train, value_aware
    from attnlab.studies.base import CellContext

    trained, evaluated, moved = [], [], []

    def spy_train(cfg, **kwargs):
        trained.append(cfg.train.device)
        out = Path(cfg.train.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "eval_accuracy": 0.5}) + "\n")
        return {"loss": 1.0}

    monkeypatch.setattr(attnlab.train, "train", spy_train)
    monkeypatch.setattr(value_aware, "source_for", lambda *a: None)
    monkeypatch.setattr(value_aware, "load_trained_model", lambda path: (torch.nn.Linear(1, 1), None))
    monkeypatch.setattr(value_aware, "evaluate_tokens", lambda model, cfg, p, m, r, device: evaluated.append(device)
                        or {})
    monkeypatch.setattr(attnlab.checkpoints, "load_trained_model", lambda path: (torch.nn.Linear(1, 1), None))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(str(a[0])) or self)
    monkeypatch.setattr(ladder_train, "_final_accuracy", lambda model, *a: 0.5)
    ctx = CellContext(tmp_path, "cuda:1")
    va = value_aware.PRESETS["tiny"]
    va_cells = value_aware.cells(va)
    for cell in [c for c in va_cells if c.key.startswith("train/")][:1] + \
            [c for c in va_cells if c.key.startswith("eval/") and c.config["method"] == "exact"][:1]:
        value_aware.run_cell(va, cell, ctx)
    lad = ladder.get_preset("tiny")
    ladder.run_cell(lad, ladder.cells(lad)[0], ctx)
    # training: 'cuda:1', or 'cuda' with GPU 1 made current by the launcher (TrainConfig without an index)
    assert len(trained) == 2 and set(trained) <= {"cuda:1", "cuda"} and all(d.startswith("cuda") for d in trained)
    assert evaluated == ["cuda:1"]  # value-aware evaluation
    assert moved == ["cuda:1"]  # the ladder's final evaluation moves its model to the device


def test_checkpoint_every_is_a_tenth_and_refuses_bad_counts():
    assert [base.checkpoint_every(n) for n in (1, 9, 10, 20000)] == [1, 1, 1, 2000]
    assert base.checkpoint_every(100, pieces=4) == 25
    with pytest.raises(ValueError, match="pieces must be >= 1"):
        base.checkpoint_every(100, pieces=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        base.checkpoint_every(0)
    with pytest.raises(TypeError, match="steps must be an int"):
        base.checkpoint_every(10.0)
