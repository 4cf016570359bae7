"""Training loop: strict configs, schedule, exact resume, atomic checkpoints, torchrun DDP."""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from attnlab import train as T
from attnlab.data import tasks
from attnlab.models import CausalLM, ModelConfig, build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

class CountingSource:
    """x_{t+1} = x_t + d (mod 11) with a random start and step d in {1, 2}: learnable."""

    vocab_size, seq_len = 11, 16

    def __init__(self, data=None, context=None):
        pass

    def next(self, batch_size, generator, split="train"):
        start = torch.randint(0, 11, (batch_size, 1), generator=generator)
        step = torch.randint(1, 3, (batch_size, 1), generator=generator)
        seq = (start + step * torch.arange(17)) % 11
        mask = torch.ones(batch_size, 16, dtype=torch.bool)
        mask[:, 0] = False  # the step is unknown after one token
        return seq[:, :-1], seq[:, 1:], mask


@pytest.fixture(autouse=True)
def counting_source():
    T.register_source("counting", CountingSource, overwrite=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def small(tmp_path: Path, **train) -> T.RunConfig:
    over = [f"train.{k}={v}" for k, v in {"steps": 8, "batch_size": 4, "log_every": 1, "progress": False,
                                           "warmup_steps": 2, "out_dir": str(tmp_path / "run"), **train}.items()]
    return T.load_config(None, ["model.n_layers=1", "model.d_model=32", "model.n_heads=2",
                                "model.context=16", "model.kernel=expressive", "data.source=counting", *over])


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, exc, match", [
    (["train.stpes=3"], ValueError, "unknown key 'train.stpes'"),
    (["model.n_layer=3"], ValueError, "unknown key 'model.n_layer'"),
    (["optim.lr=3"], ValueError, "unknown key 'optim'"),
    (["train.steps=abc"], TypeError, "train.steps must be int"),
    (["train.steps=0"], ValueError, "train.steps must be >= 1"),
    (["train.lr=1e-5", "train.min_lr=1e-4"], ValueError, "train.lr must be > 0 and >= min_lr"),
    (["train.device=tpu"], ValueError, "train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (["train.device=cuda:x"], ValueError, "train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (["train.device=cuda:01"], ValueError, "train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (["train.early_stop_patience=-1"], ValueError, "train.early_stop_patience must be >= 0"),
    (["train.stop_at_accuracy=1.5", "train.eval_every=2"], ValueError, r"train.stop_at_accuracy must be in \(0, 1\]"),
    (["train.stop_at_accuracy=0"], ValueError, r"train.stop_at_accuracy must be in \(0, 1\]"),
    (["train.early_stop_patience=3"], ValueError, "early stopping .* needs the periodic evaluation: eval_every"),
    (["train.stop_at_accuracy=0.9"], ValueError, "early stopping .* needs the periodic evaluation: eval_every"),
    (["model.d_model=30"], ValueError, r"model.d_model \(30\) must be divisible by n_heads"),
    (["model.n_kv_heads=3"], ValueError, r"model.n_heads \(4\) must be a multiple of n_kv_heads"),
    (["model.kernel=cosine"], ValueError, "model.kernel must be one of"),
    (["data.source=web"], ValueError, "data.source must be one of"),
    (["data.mask_prob=2"], ValueError, r"data.mask_prob must be in \(0, 1\]"),
    (["model=3"], TypeError, "model must be a mapping"),
])
def test_load_config_names_the_bad_key(overrides, exc, match):
    with pytest.raises(exc, match=match):
        T.load_config(None, overrides)


def test_load_config_reads_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {n_layers: 3, kernel: expressive}\ntrain: {lr: 2e-3}\n")
    cfg = T.load_config(path, ["train.steps=7"])
    assert (cfg.model.n_layers, cfg.model.kernel, cfg.train.lr, cfg.train.steps) == (3, "expressive", 2e-3, 7)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        T.load_config(path)


def test_every_preset_builds():
    """Every YAML under configs/ builds with its own loader: a study preset
    (configs/studies/<study>/<preset>.yaml) with the launcher's, validated by its dataclass;
    any other file is a RunConfig whose model runs a forward pass."""
    from attnlab.studies.base import get_study, load_preset

    presets = sorted(CONFIGS.rglob("*.yaml"))
    studies = CONFIGS / "studies"
    run_configs = [p for p in presets if not p.is_relative_to(studies)]
    assert len(run_configs) >= 3 and len(presets) > len(run_configs)
    for path in presets:
        if path.is_relative_to(studies):
            assert isinstance(load_preset(path.parent.name, str(path)), get_study(path.parent.name).preset_type)
            continue
        cfg = T.load_config(path)
        try:
            model_cfg = T.fit_model_config(cfg.model, T.make_source(cfg.data, cfg.model))
        except ImportError:  # the data modules are optional here; build with a stand-in vocab
            model_cfg = ModelConfig(**{**vars(cfg.model), "vocab_size": cfg.model.vocab_size or 64})
        assert build_model(model_cfg)(torch.zeros(1, 4, dtype=torch.long)).shape[-1] == model_cfg.vocab_size


def test_fit_model_config_errors():
    with pytest.raises(ValueError, match=r"model.vocab_size \(5\) must be >= the data's vocab size \(11\)"):
        T.fit_model_config(ModelConfig(vocab_size=5), CountingSource())
    with pytest.raises(ValueError, match=r"model.context \(8\) must be >= the data's sequence length \(16\)"):
        T.fit_model_config(ModelConfig(context=8), CountingSource())
    assert T.fit_model_config(ModelConfig(), CountingSource()).vocab_size == 11


def test_register_source_errors():
    with pytest.raises(ValueError, match="source 'counting' is already registered"):
        T.register_source("counting", CountingSource)
    with pytest.raises(TypeError, match="factory must be callable"):
        T.register_source("other", 3)


def test_lr_schedule():
    tc = T.TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    lrs = [T.lr_at(s, tc) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert T.lr_at(100, tc) == pytest.approx(1e-4) and lrs[55] == pytest.approx(5.5e-4)


# --- the loop --------------------------------------------------------------------------------


def test_training_learns_and_writes_run_files(tmp_path):
    cfg = small(tmp_path, steps=60, lr=3e-3, log_every=10, eval_every=30)
    last = T.train(cfg)
    run = tmp_path / "run"
    ls = losses(run)
    assert len(ls) == 6 and ls[-1] < 0.6 * ls[0]
    assert 0.0 <= last["eval_accuracy"] <= 1.0 and last["tokens_per_s"] > 0
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 0 and info["config"]["model"]["vocab_size"] == 11
    env = info["environment"]
    assert {"torch", "attnlab", "python", "processor", "cpu_count", "git_commit"} <= set(env)
    assert info["device"] == "cpu"
    from safetensors.torch import load_file

    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text()
    model = CausalLM(ModelConfig(**info["config"]["model"]))
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))  # strict: every key present


def test_masked_lm_trains(tmp_path):
    cfg = small(tmp_path, steps=40, lr=3e-3, log_every=10)
    cfg.model = ModelConfig(**{**vars(cfg.model), "kind": "masked"})
    T.train(cfg)
    ls = losses(tmp_path / "run")
    assert len(ls) == 4 and torch.isfinite(torch.tensor(ls)).all() and ls[-1] < ls[0]


class CrashError(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    T.train(small(tmp_path / "a", ckpt_every=3, steps=10))

    class Crashing(CountingSource):  # killed while drawing the 8th batch, after checkpoint 6
        calls = 0

        def next(self, *args, **kw):
            Crashing.calls += 1
            if Crashing.calls == 8:
                raise CrashError
            return super().next(*args, **kw)

    with pytest.raises(CrashError):
        T.train(small(tmp_path / "b", ckpt_every=3, steps=10), source=Crashing())
    run_b = tmp_path / "b" / "run"
    assert len(losses(run_b)) == 7  # steps 7 logged past the last checkpoint (6)
    assert sorted(p.name for p in (run_b / "checkpoints").iterdir()) == ["latest", "step_00000003",
                                                                         "step_00000006"]
    T.train(small(tmp_path / "b", ckpt_every=3, steps=10), resume=True)
    a, b = losses(tmp_path / "a" / "run"), losses(run_b)
    assert len(a) == len(b) == 10 and a == b  # bit-for-bit, including the replayed step 7
    assert not list((run_b / "checkpoints").glob(".tmp-*"))


def test_resume_refuses_another_model(tmp_path):
    T.train(small(tmp_path, steps=2))
    other = small(tmp_path, steps=4)
    other.model.kernel = "softmax"
    with pytest.raises(ValueError, match="written for another model config"):
        T.train(other, resume=True)


def test_batch_size_must_split_over_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"train.batch_size \(4\) must be divisible by the number of processes \(3\)"):
        T.train(small(tmp_path))


def test_main_reports_errors_before_work(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{source: counting}}\ntrain: {{out_dir: {tmp_path / 'run'}, progress: false}}\n")
    assert T.main([str(path), "model.n_layer=2"]) == 2
    assert "unknown key 'model.n_layer'" in capsys.readouterr().err
    assert T.main([str(path), "--resume"]) == 2
    assert "--resume: no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    args = [str(path), "model.n_layers=1", "model.d_model=16", "model.n_heads=2", "train.steps=3"]
    assert T.main(args) == 0 and len(losses(tmp_path / "run")) == 1
    assert T.main([*args[:-1], "train.steps=5", "--resume"]) == 0
    assert [json.loads(ln)["step"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [3, 5]


def test_torchrun_two_processes_match_one(tmp_path):
    """gloo DDP on 2 CPU processes: each takes half of the same global batch."""
    script = tmp_path / "train_counting.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from attnlab import train
        from test_train import CountingSource
        train.register_source("counting", CountingSource, overwrite=True)
        sys.exit(train.main(sys.argv[1:]))
    """))
    common = ["model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.context=16",
              "model.kernel=expressive", "data.source=counting", "train.steps=6", "train.batch_size=8",
              "train.log_every=1", "train.progress=false", "train.warmup_steps=2"]
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("{}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(cfg_path), *common, f"train.out_dir={tmp_path / 'ddp'}"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    T.train(T.load_config(cfg_path, [*common, f"train.out_dir={tmp_path / 'one'}"]))
    ddp, one = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert len(ddp) == len(one) == 6
    assert max(abs(a - b) for a, b in zip(ddp, one, strict=True)) < 1e-5
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2


# --- the data adapters --------------------------------------------------------------------------


def test_task_source_adapter(tmp_path):
    cfg = T.load_config(None, ["data.source=task", "data.name=recall", "data.complexity=1",
                               "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.context=64",
                               "train.steps=3", "train.batch_size=4", "train.log_every=1",
                               "train.progress=false", f"train.out_dir={tmp_path}", "train.eval_every=3"])
    src = T.make_source(cfg.data, cfg.model)
    x, y, m = src.next(4, torch.Generator().manual_seed(0))
    spec = tasks.task_config("recall", 1)
    assert x.shape == y.shape == m.shape == (4, src.seq_len) and m.dtype == torch.bool
    assert src.vocab_size == spec.vocab_size and int(x.max()) < src.vocab_size
    last = T.train(cfg)
    assert 0.0 <= last["eval_accuracy"] <= 1.0


def test_corpus_source_adapter(tmp_path):
    cfg = T.load_config(None, ["data.source=corpus", "data.max_bytes=20000", "model.n_layers=1",
                               "model.d_model=32", "model.n_heads=2", "model.context=32", "train.steps=2",
                               "train.batch_size=2", "train.progress=false", f"train.out_dir={tmp_path}"])
    src = T.make_source(cfg.data, cfg.model)
    x, y, m = src.next(3, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 32) and m.all() and torch.equal(x[:, 1:], y[:, :-1])
    assert T.train(cfg)["loss"] > 0


def test_tensorboard_flag_needs_the_package():
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="tensorboard=true needs the tensorboard package"):
            T.load_config(None, ["train.tensorboard=true"])
    else:
        assert T.load_config(None, ["train.tensorboard=true"]).train.tensorboard


def test_python_dash_m_entry_point(tmp_path):
    cmd = [sys.executable, "-m", "attnlab.train", str(CONFIGS / "ladder-recall.yaml"), "data.complexity=1",
           "model.n_layers=1", "model.d_model=32", "train.steps=2", "train.batch_size=4",
           "train.log_every=1", "train.eval_every=0", "train.progress=false", f"train.out_dir={tmp_path}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(losses(tmp_path)) == 2
    bad = subprocess.run([*cmd[:4], "model.n_head=2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown key 'model.n_head'" in bad.stderr


def test_sections_type_check_when_built_directly():
    with pytest.raises(TypeError, match="steps must be int, got str"):
        T.TrainConfig(steps="3")
    with pytest.raises(TypeError, match="mask_prob must be float"):
        T.DataConfig(mask_prob="high")


# --- run folders: nothing lost, nothing stale ------------------------------------------------


def latest_state(run_dir: Path) -> dict:
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
    return torch.load(ckpt / "state.pt", weights_only=True)


def test_new_run_refuses_a_non_empty_out_dir_and_overwrite_clears_it(tmp_path):
    from attnlab.checkpoints import config_hash

    T.train(small(tmp_path, steps=4))
    run = tmp_path / "run"
    other = small(tmp_path, steps=2, seed=1)
    with pytest.raises(ValueError, match=r"is not empty.*--resume.*--overwrite"):
        T.train(other)
    assert latest_state(run)["step"] == 4  # untouched
    T.train(other, overwrite=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000002"]
    state = latest_state(run)
    assert state["step"] == 2 and state["config"]["train"]["seed"] == 1
    assert state["config_hash"] == config_hash(state["config"])
    assert json.loads((run / "run.json").read_text())["config_hash"] == state["config_hash"]
    assert len(losses(run)) == 2
    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        T.train(other, resume=True, overwrite=True)


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a run folder; refusing to delete it"):
        T.train(small(tmp_path), overwrite=True)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_main_new_run_into_an_old_run_exits_2_naming_resume_and_overwrite(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{source: counting}}\ntrain: {{out_dir: {tmp_path / 'run'}, progress: false}}\n")
    args = [str(path), "model.n_layers=1", "model.d_model=16", "model.n_heads=2", "train.steps=2"]
    assert T.main(args) == 0
    capsys.readouterr()
    assert T.main([*args, "train.seed=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "--overwrite" in err
    assert T.main([*args, "train.seed=3", "--overwrite"]) == 0
    assert latest_state(tmp_path / "run")["config"]["train"]["seed"] == 3


def test_checkpoint_records_the_config_hash_and_resume_checks_it(tmp_path):
    from attnlab.checkpoints import config_hash, run_identity

    cfg = small(tmp_path, steps=2)
    T.train(cfg)
    state = latest_state(tmp_path / "run")
    assert state["config_hash"] == config_hash(state["config"])
    assert "steps" not in run_identity(state["config"])["train"] and "lr" in run_identity(state["config"])["train"]
    for over, match in ((["train.lr=2e-3"], r"another train config \(train.lr: 0.001 -> 0.002\)"),
                        (["data.mask_prob=0.3"], r"another data config \(data.mask_prob: 0.15 -> 0.3\)"),
                        (["model.n_layers=2"], r"another model config \(model.n_layers: 1 -> 2\)")):
        other = T.load_config(None, [f"{k}={v}" for k, v in
                                     (o.split("=") for o in [*small_overrides(tmp_path, steps=4), *over])])
        with pytest.raises(ValueError, match=match):
            T.train(other, resume=True)
    T.train(small(tmp_path, steps=4, log_every=2, ckpt_every=1, keep_checkpoints=3), resume=True)  # bookkeeping
    assert latest_state(tmp_path / "run")["step"] == 4


def small_overrides(tmp_path: Path, **train) -> list[str]:
    return ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.context=16",
            "model.kernel=expressive", "data.source=counting",
            *(f"train.{k}={v}" for k, v in {"steps": 8, "batch_size": 4, "log_every": 1, "progress": False,
                                             "warmup_steps": 2, "out_dir": str(tmp_path / "run"), **train}.items())]


def test_save_checkpoint_replaces_a_stale_step_and_drops_later_ones(tmp_path):
    from attnlab.checkpoints import save_checkpoint

    cfg = small(tmp_path, steps=6, ckpt_every=2, keep_checkpoints=5)
    T.train(cfg)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000002", "step_00000004", "step_00000006"]
    model = build_model(ModelConfig(**latest_state(tmp_path / "run")["config"]["model"]))
    opt = torch.optim.AdamW(model.parameters())
    stale = root / "step_00000004" / "state.pt"
    before = stale.stat().st_mtime_ns
    save_checkpoint(tmp_path / "run", 4, model, opt, torch.Generator(), cfg, keep=5, schedule_steps=6)
    assert (root / "step_00000004" / "state.pt").stat().st_mtime_ns != before  # rewritten, not skipped
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000002", "step_00000004"]  # 6 is abandoned
    assert (root / "latest").read_text() == "step_00000004"


def test_resume_uses_the_last_complete_checkpoint_and_removes_partial_ones(tmp_path, capsys):
    T.train(small(tmp_path, steps=4, ckpt_every=2))
    root = tmp_path / "run" / "checkpoints"
    partial = root / ".tmp-killed"  # what SIGKILL during a checkpoint write leaves
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    (root / "latest").unlink()  # killed before `latest` was written, too
    capsys.readouterr()
    T.train(small(tmp_path, steps=6, ckpt_every=2), resume=True)
    err = capsys.readouterr().err
    assert "resuming from" in err and "step_00000004 (step 4)" in err and "removed 1 partial checkpoint" in err
    assert not partial.exists() and latest_state(tmp_path / "run")["step"] == 6
    assert [json.loads(ln)["step"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4, 5, 6]


def test_load_trained_model_takes_the_newest_checkpoint_even_without_its_state(tmp_path):
    from attnlab.checkpoints import find_checkpoint, load_trained_model

    cfg = small(tmp_path, steps=4, ckpt_every=2, keep_checkpoints=2)
    T.train(cfg)
    run = tmp_path / "run"
    (run / "checkpoints" / "latest").write_text("step_00000002")  # stale: never read
    (run / "checkpoints" / "step_00000004" / "state.pt").unlink()  # a finished study cell keeps weights only
    assert find_checkpoint(run).name == "step_00000002"
    assert find_checkpoint(run, weights_only=True).name == "step_00000004"
    model, loaded = load_trained_model(run)
    assert not model.training and loaded.model == T.fit_model_config(cfg.model, CountingSource())
    from safetensors.torch import load_file

    want = load_file(str(run / "checkpoints" / "step_00000004" / "model.safetensors"))
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="run_dir must be an 'attnlab train' run folder"):
        load_trained_model(tmp_path / "nothing")


def test_resume_with_only_a_partial_checkpoint_says_so(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    (root / ".tmp-abc").mkdir(parents=True)
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(ValueError, match=r"--resume: no checkpoint in .*1 partial one.*'\.tmp-abc'.*--overwrite"):
        T.train(small(tmp_path), resume=True)
    T.train(small(tmp_path, steps=2), overwrite=True)
    assert not (root / ".tmp-abc").exists() and latest_state(tmp_path / "run")["step"] == 2


def test_resume_at_or_past_steps_says_so(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{source: counting}}\ntrain: {{out_dir: {tmp_path / 'run'}, progress: false}}\n")
    args = [str(path), "model.n_layers=1", "model.d_model=16", "model.n_heads=2"]
    assert T.main([*args, "train.steps=3"]) == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    for steps in (3, 2):
        assert T.main([*args, f"train.steps={steps}", "--resume"]) == 0
        out = capsys.readouterr().out.strip()
        assert out == (f"attnlab train: the run in {tmp_path / 'run'} is already at step 3 >= train.steps ({steps}); "
                       "nothing to do (raise train.steps=... to train further)")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_extending_a_run_continues_the_lr_schedule(tmp_path):
    T.train(small(tmp_path, steps=8, lr=1e-3, min_lr=1e-4))
    T.train(small(tmp_path, steps=12, lr=1e-3, min_lr=1e-4), resume=True)
    lrs = [json.loads(ln)["lr"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 12 and lrs[7] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 5 / 6)))
    assert lrs[8:] == [pytest.approx(1e-4)] * 4  # no jump back up: the cosine ended at step 8
    assert latest_state(tmp_path / "run")["schedule_steps"] == 8
    tc = T.TrainConfig(steps=12, warmup_steps=2, lr=1e-3, min_lr=1e-4)
    assert T.lr_at(8, tc, 8) == pytest.approx(1e-4) and T.lr_at(8, tc) > 2e-4


# --- interrupts ------------------------------------------------------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_finishes_the_step_writes_a_checkpoint_and_exits(tmp_path, signum, code):
    script = tmp_path / "train_counting.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from attnlab import train
        from test_train import CountingSource
        train.register_source("counting", CountingSource, overwrite=True)
        sys.exit(train.main(sys.argv[1:]))
    """))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("{}\n")
    run = tmp_path / "run"
    overrides = small_overrides(tmp_path, steps=10**6, progress=True)
    proc = subprocess.Popen([sys.executable, str(script), str(cfg_path), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120  # a hang guard only
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signum)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("attnlab train:")]
    step = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    ckpt = run / "checkpoints" / f"step_{step:08d}"
    again = shlex.join(["attnlab", "train", str(cfg_path), *overrides, "--resume"])
    name = signal.Signals(signum).name
    assert lines == [f"attnlab train: stopped by {name} after step {step}; checkpoint {ckpt}; continue with: {again}"]
    assert (run / "checkpoints" / "latest").read_text() == ckpt.name and latest_state(run)["step"] == step
    T.train(small(tmp_path, steps=step + 2), resume=True)
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == \
        list(range(1, step + 3))


# --- errors before any work ------------------------------------------------------------------


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {n_layers: 2\ntrain: [\n")
    with pytest.raises(ValueError, match=rf"config file {path} is not valid YAML: .*line"):
        T.load_config(path)
    with pytest.raises(ValueError, match=r"config file .*nope.yaml does not exist"):
        T.load_config(tmp_path / "nope.yaml")


def test_backend_that_cannot_compute_the_kernel_fails_when_the_config_loads():
    with pytest.raises(ValueError, match=r"model.backend 'sdpa' does not support model.kernel 'expressive'"):
        T.load_config(None, ["model.backend=sdpa", "model.kernel=expressive"])
    with pytest.raises(ValueError, match=r"model.backend must be 'auto' or one of \["):
        T.load_config(None, ["model.backend=nope"])
    assert T.load_config(None, ["model.backend=sdpa", "model.kernel=softmax"]).model.backend == "sdpa"


@pytest.mark.parametrize("overrides, match", [
    (["data.source=corpus", "data.name=nonexistent"], "data.name must be 'stdlib'"),
    (["data.source=task", "data.name=nonexistent"], "data: name must be one of"),
    (["train.device=cuda"], "train.device is 'cuda' but this torch"),
    (["train.device=cuda:0"], "train.device is 'cuda:0' but this torch"),
])
def test_errors_before_any_work(tmp_path, capsys, overrides, match):
    if any(o.startswith("train.device=cuda") for o in overrides) and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cfg = T.load_config(None, [*small_overrides(tmp_path), *overrides])
    with pytest.raises(ValueError, match=match):
        T.train(cfg)
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    assert T.main([str(path), *small_overrides(tmp_path), *overrides, "train.progress=true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnlab train: error: ") and len(err.strip().splitlines()) == 1 and match in err
    assert not (tmp_path / "run").exists()


def test_main_reports_a_backend_kernel_mismatch_before_work(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: {backend: sdpa, kernel: expressive}\n")
    assert T.main([str(path), *small_overrides(tmp_path)[:4], "data.source=counting"]) == 2
    assert "model.backend 'sdpa' does not support model.kernel 'expressive'" in capsys.readouterr().err


# --- early stopping and cuda:N ---------------------------------------------------------------


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_device_accepts_cuda_with_an_index():
    for device in ("cuda:0", "cuda:1", "cuda:12", "cuda", "cpu", "auto"):
        assert T.TrainConfig(device=device).device == device
    for device in ("cuda:", "cuda:-1", "cuda:1.0", "gpu:0", "cpu:0", "cuda:٣"):
        with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
            T.TrainConfig(device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_trains_on_that_device(tmp_path):
    index = torch.cuda.device_count() - 1
    T.train(small(tmp_path, steps=2, device=f"cuda:{index}"))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["device"] == f"cuda:{index}"
    with pytest.raises(ValueError, match="sees"):
        T.train(small(tmp_path / "x", steps=2, device=f"cuda:{torch.cuda.device_count()}"))


def test_early_stop_rule():
    tc = T.TrainConfig(eval_every=1, early_stop_patience=2, stop_at_accuracy=0.9)
    assert T.early_stop(tc, []) is None
    assert T.early_stop(tc, [(1, 0.5), (2, 0.6), (3, 0.6)]) is None  # one evaluation without a new best
    assert T.early_stop(tc, [(1, 0.5), (2, 0.6), (3, 0.6), (4, 0.55)])[0] == "plateau"
    assert T.early_stop(tc, [(1, 0.5), (2, 0.6), (3, 0.6), (4, 0.61)]) is None  # a new best resets it
    assert T.early_stop(tc, [(1, 0.5), (2, 0.9)])[0] == "target"
    assert T.early_stop(T.TrainConfig(eval_every=1), [(1, 1.0), (2, 1.0), (3, 1.0)]) is None  # off


def test_early_stopping_off_is_the_old_run_bit_for_bit(tmp_path):
    """Off: the config hash is the one of a config without the fields; a target that is never
    reached changes nothing in the metrics (only the hash)."""
    from attnlab.checkpoints import config_hash, run_identity

    off = small(tmp_path / "a", steps=12, eval_every=3)
    assert not {"early_stop_patience", "stop_at_accuracy"} & set(run_identity(off)["train"])
    on = small(tmp_path / "b", steps=12, eval_every=3, early_stop_patience=100)
    assert run_identity(on)["train"]["early_stop_patience"] == 100 and config_hash(on) != config_hash(off)
    T.train(off)
    T.train(on)
    a, b = metric_lines(tmp_path / "a" / "run"), metric_lines(tmp_path / "b" / "run")
    strip = [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in a]
    assert strip == [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in b] and len(a) == 12
    assert not any("stopped" in m for m in a + b)


def test_run_that_reaches_the_target_stops_early_and_resume_does_not_train_on(tmp_path, capsys):
    T.train(small(tmp_path / "ref", steps=30, eval_every=2, lr=3e-3))
    ref = metric_lines(tmp_path / "ref" / "run")
    evals = [(m["step"], m["eval_accuracy"]) for m in ref if "eval_accuracy" in m]
    target = max(acc for _, acc in evals[:5])  # reached by the fifth evaluation at the latest
    assert target > evals[0][1]  # so the stop is not at the first evaluation
    want = next(step for step, acc in evals if acc >= target)
    cfg = small(tmp_path / "es", steps=30, eval_every=2, lr=3e-3, stop_at_accuracy=target)
    out = T.train(cfg)
    run = tmp_path / "es" / "run"
    lines = metric_lines(run)
    assert out["stopped"] == "target" and out["step"] == want
    assert lines[-1]["stopped"] == "target" and lines[-1]["step"] == want and lines[-1]["best_step"] == want
    def strip(ms):
        return [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in ms]

    assert strip(lines[:-1]) == strip(m for m in ref if m["step"] <= want)  # the same run up to the stop
    from attnlab.checkpoints import find_checkpoint
    assert find_checkpoint(run).name == f"step_{want:08d}"  # the checkpoint at the stop is the final one
    assert "stopped early at step" in capsys.readouterr().err
    before = (run / "metrics.jsonl").read_text()
    again = T.train(small(tmp_path / "es", steps=60, eval_every=2, lr=3e-3, stop_at_accuracy=target), resume=True)
    assert again["stopped"] == "target" and (run / "metrics.jsonl").read_text() == before
    assert find_checkpoint(run).name == f"step_{want:08d}"
    assert f"stopped early at step {want}" in capsys.readouterr().err


def test_patience_stops_a_plateau_and_resume_keeps_counting(tmp_path):
    """With a learning rate of ~0 the accuracy cannot change: patience 3 stops at the fourth evaluation."""
    flat = dict(steps=40, eval_every=2, lr=1e-9, min_lr=0.0, early_stop_patience=3)
    out = T.train(small(tmp_path / "a", **flat))
    lines = metric_lines(tmp_path / "a" / "run")
    assert out["stopped"] == "plateau" and lines[-1]["stopped"] == "plateau" and lines[-1]["step"] == 8
    assert lines[-1]["best_step"] == 2 and "in 3 evaluations" in lines[-1]["stop_reason"]
    # interrupted after the second evaluation, the resumed run stops at the same step
    T.train(small(tmp_path / "b", **{**flat, "steps": 4}))
    out = T.train(small(tmp_path / "b", **flat), resume=True)
    assert out["stopped"] == "plateau" and metric_lines(tmp_path / "b" / "run")[-1]["step"] == 8
