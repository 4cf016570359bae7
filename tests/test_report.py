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


def test_series_styles_are_distinct_and_dash_the_named_series():
    """Issue 12: every method was "-o" or "--o", so coinciding lines (topr, topr-l2, topk)
    hid each other."""
    from attnlab.studies.report import MARKERS, series_styles

    names = [f"m{i}" for i in range(2 * len(MARKERS))]
    styles = series_styles(names, dashed=names[::3])
    assert list(styles) == names and len(set(styles.values())) == len(names)
    for i, name in enumerate(names):
        line = styles[name].rstrip(MARKERS)
        assert (line in ("--", ":")) == (i % 3 == 0)
    assert series_styles(["a", "b"]) == {"a": "-o", "b": "-s"}


@pytest.mark.parametrize(("ys", "scale"), [
    ([0.9, 0.5, 0.1], "linear"),            # one decade
    ([1.0, 10 ** -1.5], "linear"),          # exactly 1.5 decades: not more
    ([1.0, 10 ** -1.6], "log"),
    ([0.3, 2e-7, None, float("nan")], "log"),  # None and NaN ignored
    ([0.3, 2e-7, 0.0], "symlog"),          # a zero error cannot sit on a log axis
    ([0.0, 0.0, 0.4], "linear"),
    ([], "linear"),
])
def test_choose_yscale_goes_log_beyond_one_and_a_half_decades(ys, scale):
    from attnlab.studies.report import choose_yscale

    assert choose_yscale(ys) == scale


def test_line_plot_refuses_an_empty_plot_and_a_bad_yscale(tmp_path):
    with pytest.raises(ValueError, match="series must hold at least one point"):
        line_plot(tmp_path / "e.png", {}, xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="series must hold at least one point"):
        line_plot(tmp_path / "e.png", {"a": ([], [])}, xlabel="x", ylabel="y")
    assert not (tmp_path / "e.png").exists()
    with pytest.raises(ValueError, match="yscale must be"):
        line_plot(tmp_path / "e.png", {"a": ([1], [1])}, xlabel="x", ylabel="y", yscale="loglog")


@pytest.mark.parametrize("yscale", ["auto", "log", "symlog", "linear"])
def test_line_plot_with_notes_caption_and_y_scales(tmp_path, yscale):
    import warnings

    series = {"a": ([1, 2, 4], [1.0, 1e-3, 0.0]), "b": ([1, 2, 4], [1.0, 1e-3, 0.0]), "c": ([1, 2], [0.5, 0.2])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = line_plot(tmp_path / "p.png", series, xlabel="r", ylabel="err", yscale=yscale, logx=True,
                         notes={"c": "stops at r=2"}, caption="not shown: d (why)")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
