"""The study's figures: labelled grids (a condition per row, copies framed, the subset stated), d_t
plots that draw w(t) and say when no d was recorded, histograms whose bars do not hide each other."""
import warnings

import numpy as np
from PIL import Image

from minidiff.study import figures, plots


def test_grid_rows_put_one_condition_per_row_memorized_first_and_wrap():
  conditions = ["class 3", "class 7"] * 5 + ["class 0 (memorized)"] * 3  # --classes 3,7 interleaved
  rows, shown = figures.grid_rows(conditions, max_per_row=4, first=["class 0 (memorized)"])
  assert [label for label, _ in rows] == ["class 0 (memorized)", "class 3", "class 3", "class 7",
                                          "class 7"]
  assert rows[0][1] == [10, 11, 12] and rows[1][1] == [0, 2, 4, 6] and rows[2][1] == [8]
  assert all(len({conditions[i] for i in idx}) == 1 for _, idx in rows)  # never mixed in a row
  assert shown == 13
  rows, shown = figures.grid_rows(conditions, max_per_row=4, max_rows=2)
  assert shown == 5 and len(rows) == 2  # a stated subset: class 3 in rows of 4 and 1


def test_labelled_grid_frames_copies_red_and_states_what_it_shows(tmp_path):
  samples = np.full((6, 8, 8, 1), -1.0, np.float32)  # black digits: red pixels can only be frames
  labels = ["class 1", "class 2"] * 3
  copies = np.array([1, 0, 0, 0, 0, 0], bool)
  out = figures.labelled_grid(samples, labels, str(tmp_path / "g.png"), copies=copies, pixels=16)
  assert out == {"shown": 6, "total": 6, "rows": 2}
  px = np.asarray(Image.open(tmp_path / "g.png").convert("RGB")).astype(int)
  red = (px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] < 60)
  assert red.sum() >= 4 * 16 * 2  # one frame: 2 px around a 16 px image
  figures.labelled_grid(samples, labels, str(tmp_path / "n.png"), copies=np.zeros(6, bool), pixels=16)
  px = np.asarray(Image.open(tmp_path / "n.png").convert("RGB")).astype(int)
  assert not ((px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] < 60)).any()
  out = figures.labelled_grid(samples, labels, str(tmp_path / "s.png"), max_per_row=2, max_rows=1)
  assert out["shown"] == 2 and out["total"] == 6


def _captured(monkeypatch):
  figs = []
  monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: figs.append(fig))
  return figs


def test_d_plot_draws_w_and_says_when_no_d_was_recorded(monkeypatch):
  figs = _captured(monkeypatch)
  t = np.arange(9, -1, -1)
  w = np.where(t[:, None] > 4, 0.0, 7.5) * np.ones((10, 3))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no "no artists with labels" legend warning
    plots.plot_d_curves(t, np.full((10, 3), np.nan), np.full(3, -1), "unused", title="none", w=w)
  ax, wax = figs[0].axes
  assert any("no d recorded" in txt.get_text() for txt in ax.texts)
  (line,) = wax.get_lines()
  np.testing.assert_array_equal(line.get_ydata(), w[:, 0])  # w(t) drawn: a step at τ
  plots.plot_d_curves(t, np.random.default_rng(0).random((10, 3)), np.array([2, -1, 3]), "unused",
                      title="d", w=w)
  ax = figs[1].axes[0]
  assert not ax.texts and ax.get_legend() is not None


def test_transition_histogram_bars_sit_side_by_side(monkeypatch):
  figs = _captured(monkeypatch)
  t = np.arange(49, -1, -1) * 20
  same = np.full(30, 10)  # both strategies switch at the same step: overlaid bars would hide one
  plots.plot_transition_hist(t, {"a": same, "b": np.concatenate([same[:20], np.full(10, -1)])},
                             "unused")
  bars = [p for p in figs[0].axes[0].patches if p.get_height() > 0]
  assert sorted(p.get_height() for p in bars) == [20, 30]
  left = sorted(p.get_x() for p in bars)
  assert left[1] - left[0] >= min(p.get_width() for p in bars) - 1e-9  # no overlap
  assert "never: 10/30" in " ".join(t.get_text() for t in figs[0].axes[0].get_legend().get_texts())


def test_copy_audit_shows_twenty_memorized_samples_with_their_scores(tmp_path):
  rng = np.random.default_rng(0)
  samples = rng.uniform(-1, 1, (30, 8, 8, 1)).astype(np.float32)
  unique = rng.uniform(-1, 1, (5, 8, 8, 1)).astype(np.float32)
  memorized = np.arange(30) < 24
  row = dict(flags=dict(copy="1" * 10 + "0" * 20), nn_index=[i % 5 for i in range(30)],
             scores=dict(target_ncc_shift=[0.5] * 24 + [None] * 6))
  shown = figures.copy_audit(samples, unique, row, memorized, str(tmp_path / "a.png"))
  assert len(shown) == 20 and memorized[shown].all() and len(set(shown.tolist())) == 20
  assert Image.open(tmp_path / "a.png").size[0] > 0


def test_cohen_kappa_closed_forms():
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).parents[1] / "scripts" / "eye_check.py"
  spec = importlib.util.spec_from_file_location("eye_check", path)
  eye = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(eye)
  a = np.array([1, 1, 0, 0], bool)
  assert eye.cohen_kappa(a, a) == 1.0 and eye.cohen_kappa(a, ~a) == -1.0
  # p_o = 3/4, p_e = ½·¾ + ½·¼ = ½ → κ = (¾ − ½)/(1 − ½) = ½
  assert eye.cohen_kappa(a, np.array([1, 1, 1, 0], bool)) == 0.5


def test_framed_copies_follow_the_registered_copy_metrics():
  # copy (named image, `target`) wins over copy_any (`ncc_shift_index`); the ratio test frames none
  row = dict(flags=dict(copy="1100", copy_any="0110", copy_ratio="0001"), nn_index=[1, 2, 3, 4],
             scores=dict(target=[5, 6, -1, -1], ncc_shift_index=[7, 8, 9, 9]))
  copies, copied = figures.framed_copies(row)
  assert copies.tolist() == [True, True, True, False]
  assert copied.tolist() == [5, 6, 9, 4]
