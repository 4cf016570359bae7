"""Run folders: provenance, resumable cells, atomic files, tables and plots."""

from __future__ import annotations

import json

import pytest

from attnlab.studies.report import RunDir, atomic_write_text, line_plot, markdown_table


def test_run_dir_records_provenance_and_resumes(tmp_path):
    run = RunDir.create(tmp_path, "study", config={"a": 1}, seeds=[0, 1])
    info = json.loads((run.path / "run.json").read_text())
    assert info["config"] == {"a": 1} and info["seeds"] == [0, 1]
    assert {"torch", "python", "git_commit", "device"} <= set(info["environment"])
    run.save_cell("x", {"v": 1.5})
    run.save_cell("y", [1, 2])
    again = RunDir.open(run.path)
    assert again.cell("x") == {"v": 1.5} and again.cell("y") == [1, 2] and again.cell("z") is None
    other = RunDir.create(tmp_path, "study", config={}, seeds=[])
    assert other.path != run.path


def test_open_rejects_a_folder_without_run_json(tmp_path):
    with pytest.raises(ValueError, match="must be a study run folder"):
        RunDir.open(tmp_path)


def test_csv_takes_the_union_of_columns(tmp_path):
    run = RunDir.create(tmp_path, "s", config={}, seeds=[])
    path = run.write_csv("t.csv", [{"a": 1}, {"a": 2, "b": 3}])
    assert path.read_text().splitlines() == ["a,b", "1,", "2,3"]


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "hello")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_markdown_table_aligns_numbers():
    table = markdown_table([{"k": "ea", "v": 0.123456}], ["k", "v"], headers=["kernel", "value"])
    assert table.splitlines() == ["| kernel | value |", "|---|---:|", "| ea | 0.1235 |"]


def test_line_plot_writes_a_png(tmp_path):
    path = line_plot(tmp_path / "p.png", {"a": ([1, 2], [3, 4]), "b": ([1, 2], [1, 1])},
                     xlabel="x", ylabel="y", errors={"b": [0.1, 0.1]}, logx=True)
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
