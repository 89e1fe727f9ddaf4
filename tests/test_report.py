"""The study report rendered from a small synthetic results dict: Wen et al.'s detection figures
(AUC, TPR at 1% FPR, best-threshold accuracy) per seed, statistic and target, the AUC-only table for
results written before the figures existed, and a samples/s cell for every arm of the frontier and
every-arm tables."""
import copy

from minidiff.study import report, summary

FIGS = dict(auc=0.9689, tpr_at_1pct_fpr=0.75, best_accuracy=0.915, best_threshold=0.5058)
NONE_BEST = dict(auc=0.696, tpr_at_1pct_fpr=0.0, best_accuracy=0.78, best_threshold=None)


def _arm(copy_flags, speed, *, figures=True):
  detection = dict(auc_mean_d_eps_memorized=0.9689, auc_first_d_eps_memorized=1.0,
                   auc_mean_d_eps_copies=0.696)
  if figures:
    detection["figures"] = dict(
        memorized=dict(mean_d_eps=FIGS, first_d_eps=FIGS, mean_d_x0=FIGS, first_d_x0=FIGS),
        copies=dict(mean_d_eps=NONE_BEST, first_d_eps=None, mean_d_x0=NONE_BEST,
                    first_d_x0=NONE_BEST))
  return dict(flags=dict(copy=copy_flags, class_correct="1111"), samples_per_s=speed,
              transition=dict(fired=0.0, t_mean=None, t_std=None), detection=detection)


def _results(*, figures=True):
  seed = dict(
      workdir="w", seed=0, checkpoint_step=10,
      ema=dict(decay=0.999, effective_decay=0.5),
      data=dict(n_train=4, n_unique=4, n_duplicated=1, dup_factor=2, memorized_classes=[0]),
      conditions=dict(n=4, groups=dict(memorized=2, other=2),
                      groups_mask=dict(memorized="1100", other="0011"), requested_class=[0, 0, 5, 6]),
      arms={"cfg:w=7.5": _arm("1100", 2.5, figures=figures),
            "amg": _arm("0000", 1.25, figures=figures)})
  results = dict(kind="class", command="python sample.py", baseline="cfg:w=7.5",
                 options=dict(sampling=dict(sampler="ddim", num_steps=10, eta=0.0, spacing="uniform")),
                 arms=[dict(label="cfg:w=7.5", family="cfg"), dict(label="amg", family="amg")],
                 seeds=[seed])
  results["summary"] = summary.summarize(results, tolerance=0.03)
  return results


def _section(text):
  return text.split("## Detection under `cfg:w=7.5`")[1]


def test_detection_renders_every_statistic_and_target_with_the_three_figures():
  section = _section(report.render(_results()))
  rows = [line for line in section.splitlines() if line.startswith("| 0 |")]
  assert len(rows) == 8  # 2 targets × 4 statistics, seed 0
  assert "| 0 | memorized vs other conditions | mean d_t | 0.969 | 0.75 | 0.915 (≥ 0.506) |" in rows
  # calling every sample negative is best (threshold None): said so, not a number
  assert "| 0 | copies vs non-copies | mean d_t | 0.696 | 0 | 0.78 (call none) |" in rows
  assert "| 0 | copies vs non-copies | first-step d_t | — | — | — |" in rows  # an empty group


def test_results_without_figures_keep_the_auc_table():
  section = _section(report.render(_results(figures=False)))
  assert "| seed | mean d_t | first-step d_t | mean d_t, copies |" in section
  assert "| 0 | 0.969 | 1 | 0.696 |" in section and "TPR" not in section


def test_every_arm_has_a_samples_per_second_cell():
  results = _results()
  two = copy.deepcopy(results)  # a second seed: the cell is the seeds' mean
  second = copy.deepcopy(results["seeds"][0])
  second["seed"] = 1
  second["arms"]["amg"]["samples_per_s"] = 2.75
  two["seeds"].append(second)
  two["summary"] = summary.summarize(two, tolerance=0.03)
  text = report.render(two)
  for section in ("## Frontier", "## Every arm"):  # the headline rows and every arm's row
    table = text.split(section)[1].split("\n\n")[2 if section == "## Frontier" else 1].splitlines()
    assert table[0].endswith("| samples/s |"), section
    assert table[2].startswith(("| cfg | `cfg:w=7.5` |", "| `cfg:w=7.5` |")) and table[2].endswith("| 2.5 |")
    assert table[3].startswith(("| amg | `amg` |", "| `amg` |"))
    assert table[3].endswith("| 2.0 |")  # (1.25 + 2.75) / 2


def _every_arm_header(results):
  return report.render(results).split("## Every arm")[1].split("\n\n")[1].splitlines()[0]


def test_every_arm_columns_follow_the_registry_in_order():
  results = _results()  # written before the calibrated metric: its `copy` is the ratio test
  assert _every_arm_header(results) == (
      "| arm | family | ratio test, memorized | clustered 95% | seeds mean ± sd | class acc. | FD | "
      "Δcopy (pts) | Δacc. (pts) | transition t (fired) | samples/s |")
  assert "| family | arm | ratio test, memorized | class acc. | FD |" in report.render(results)
  calibrated = copy.deepcopy(results)
  for arm in calibrated["seeds"][0]["arms"].values():
    arm["flags"].update(copy_any="0000", copy_ratio=arm["flags"]["copy"])
  calibrated["summary"] = summary.summarize(calibrated, tolerance=0.03)
  assert _every_arm_header(calibrated) == (
      "| arm | family | copy, memorized | clustered 95% | seeds mean ± sd | copy of any image, other "
      "| ratio test, memorized | class acc. | FD | Δcopy (pts) | Δacc. (pts) | transition t (fired) "
      "| samples/s |")
