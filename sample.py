"""Samples trained runs with guidance arms on shared noises and runs the memorization study.

  python sample.py --workdir runs/mnist_dup                       # the config's study (config.study)
  python sample.py --workdir runs/mnist_dup --guidance 'cfg:w=1,3,7.5,static:tau=300:700:100'
  python sample.py --workdir runs/mnist_dup --guidance cfg:w=3 --step 3000   # an earlier checkpoint
  python sample.py --workdirs runs/s0,runs/s1,runs/s2 --outdir docs/results/x   # pool training seeds
  python sample.py --workdir runs/mnist_text --guidance cfg,cfg+random_tokens:k=4 [--prompt "..."]

Results land in --outdir (default WORKDIR/study, or WORKDIR/study_step<N> with --step N); a folder
that holds another study is never overwritten (a new `_2`, `_3`, … folder is used), the same study
resumes from the arms it has. Regenerate a report from its results.json with
`python -m minidiff.study.report DIR/results.json`. Errors print one line and exit with status 2
(--debug shows the traceback).
"""
from minidiff import runtime

runtime.configure_cpu()  # before JAX is imported

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402


def strategies_help() -> str:
  """The guidance rules with their parameters, defaults and help (the registry), and the text
  perturbations."""
  from minidiff.core import registry, specs  # noqa: PLC0415 (JAX: only when help is asked for)

  lines = ["", "Guidance strategies (name[:param=value...]; defaults shown):"]
  for name in registry.RULE_NAMES:  # the peers' mitigations last
    params = " ".join(f"{k}={v}" for k, v in registry.rule_params(name).items()) or "-"
    lines.append(f"  {name:<17} {params}")
    lines.append(f"  {'':<17} {registry.help_of(name)}")
  lines.append("Prompt perturbations (text runs, after '+', e.g. cfg+random_tokens:k=4):")
  for name, cls in specs.PERTURBATIONS.items():
    defaults = " ".join(f"{f.name}={f.default}" for f in specs.dataclasses.fields(cls))
    lines.append(f"  {name:<17} {defaults}  {(cls.__doc__ or '').strip().splitlines()[0]}")
  return "\n".join(lines) + "\n"


if any(a.split("=")[0] in ("--help", "-h", "-?", "--helpshort", "--helpfull") for a in sys.argv[1:]):
  __doc__ += strategies_help()  # absl's --help prints the module doc

flags.DEFINE_string("workdir", "runs/mnist_dup", "Training workdir (config.json + checkpoints).")
flags.DEFINE_list("workdirs", [], "Several training seeds of one config, pooled (overrides --workdir).")
flags.DEFINE_string("guidance", None, "Comma-separated arms name[:param=value...] (default: the "
                    "config's study list); a parameter may sweep a list (w=1,3,7.5) or an inclusive "
                    "range (tau=200:800:100); the strategies and their defaults are listed above "
                    "(python sample.py --help).")
flags.DEFINE_multi_string("set", [], "param=value applied to every strategy that has the param.")
flags.DEFINE_string("baseline", None, "The arm every arm is paired with (default: the cfg arm of "
                    "largest w).")
flags.DEFINE_integer("num", None, "Samples per arm and seed (default: config.study.num_samples).")
flags.DEFINE_list("classes", [], "Requested classes, cycled (default: half memorized classes, half "
                  "the others).")
flags.DEFINE_float("memorized_share", 0.5, "Class studies: share of samples on memorized classes.")
flags.DEFINE_list("memorized_classes", [], "Class studies: the memorized classes (default: those "
                  "with a duplicated image), e.g. to study a control model trained without duplication.")
flags.DEFINE_multi_string("prompt", [], "Text runs: a prompt (repeatable), cycled over the samples "
                          "(default: the study's memorized and class prompts).")
flags.DEFINE_string("prompts", None, "Text runs: a file with one prompt per line (# comments skipped).")
flags.DEFINE_integer("steps", None, "Sampling steps (default: config.sample.num_steps).")
flags.DEFINE_float("eta", None, "DDIM η in [0, 1] (default: config.sample.eta).")
flags.DEFINE_string("sampler", None, "ddim or ddpm (default: config.sample.sampler).")
flags.DEFINE_string("spacing", None, "uniform, trailing or linspace (default: config.sample.spacing).")
flags.DEFINE_integer("seed", 0, "Seed of the initial noises and sampler keys.")
flags.DEFINE_integer("batch", 200, "Samples per jitted call.")
flags.DEFINE_list("x0_steps", [], "Step indices whose x̂₀ is recorded in the .npz (e.g. 0,10,-1).")
flags.DEFINE_integer("step", None, "Sample this checkpoint step (one still on disk) instead of the "
                     "latest; the default --outdir becomes WORKDIR/study_step<N>.")
flags.DEFINE_string("outdir", None, "Study folder (default: WORKDIR/study).")
flags.DEFINE_boolean("debug", False, "Show the full traceback of an error.")
FLAGS = flags.FLAGS


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag is one line and exit status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    if "--debug" in argv:
      raise
    print(f"error: {str(e).splitlines()[0]} (python sample.py --help)", file=sys.stderr)
    sys.exit(2)


def _prompts() -> tuple[str, ...]:
  prompts = list(FLAGS.prompt)
  if FLAGS.prompts:
    if not os.path.isfile(FLAGS.prompts):
      raise FileNotFoundError(f"--prompts={FLAGS.prompts}: no such file; give a text file with "
                              f"one prompt per line.")
    with open(FLAGS.prompts) as f:
      prompts += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
      raise ValueError(f"--prompts={FLAGS.prompts} holds no prompt (one per line).")
  return tuple(prompts)


def _ints(values: list[str], flag: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)}: expected comma-separated integers, "
                     f"e.g. --{flag}=3,7.") from None


def _overrides() -> dict[str, str]:
  bad = [s for s in FLAGS.set if "=" not in s]
  if bad:
    raise ValueError(f"--set {bad[0]}: expected param=value, e.g. --set w_post=3.")
  return dict(s.split("=", 1) for s in FLAGS.set)


def _outdir() -> str | None:
  if FLAGS.outdir or FLAGS.step is None or FLAGS.workdirs:
    return FLAGS.outdir
  return os.path.join(FLAGS.workdir, f"study_step{FLAGS.step}")


def _written_study(outdir: str | None) -> str | None:
  """The folder the study just wrote: of `<base>`, `<base>_2`, …, the newest results.json."""
  workdirs = FLAGS.workdirs or [FLAGS.workdir]
  if outdir:
    base = outdir
  elif len(workdirs) == 1:
    base = os.path.join(workdirs[0], "study")
  else:
    first = os.path.normpath(workdirs[0])
    base = os.path.join(os.path.dirname(os.path.abspath(first)), os.path.basename(first) + "_seeds_study")
  found, n, candidate = [], 1, base
  while os.path.isdir(candidate):
    path = os.path.join(candidate, "results.json")
    if os.path.exists(path):
      found.append((os.path.getmtime(path), candidate))
    n += 1
    candidate = f"{base}_{n}"
  return max(found)[1] if found else None


def _data_dir_for_the_classifier() -> None:
  """The evaluation classifier loads the dataset by name: point it at the run's data.data_dir."""
  import json  # noqa: PLC0415

  path = os.path.join((FLAGS.workdirs or [FLAGS.workdir])[0], "config.json")
  try:
    with open(path) as f:
      data_dir = json.load(f).get("data", {}).get("data_dir", "")
  except (OSError, ValueError, AttributeError):
    return  # the engine reports a missing or corrupt config.json
  if data_dir and not os.environ.get("MINIDIFF_DATA_DIR"):
    os.environ["MINIDIFF_DATA_DIR"] = data_dir


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected argument(s) {' '.join(argv[1:])}; flags are written --name=value "
          f"(python sample.py --help).", file=sys.stderr)
    return 2
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("minidiff").setLevel(logging.INFO)
  try:
    kw = dict(overrides=_overrides(), classes=_ints(FLAGS.classes, "classes"), prompts=_prompts(),
              x0_steps=_ints(FLAGS.x0_steps, "x0_steps"),
              memorized_classes=_ints(FLAGS.memorized_classes, "memorized_classes"))
    _data_dir_for_the_classifier()
    from minidiff.study import engine, sampling  # noqa: PLC0415 (after the flags: errors stay fast)
    sampling.show_step_progress(True)
    engine.sample_and_study(
        FLAGS.workdirs or [FLAGS.workdir], FLAGS.guidance, num=FLAGS.num, num_steps=FLAGS.steps,
        eta=FLAGS.eta, sampler=FLAGS.sampler, spacing=FLAGS.spacing, seed=FLAGS.seed,
        batch=FLAGS.batch, step=FLAGS.step, baseline=FLAGS.baseline,
        memorized_share=FLAGS.memorized_share, outdir=_outdir(),
        command="python " + " ".join(sys.argv), **kw)
    where = _written_study(_outdir())
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    if FLAGS.debug:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: rerun the same command to resume (finished arms are kept).", file=sys.stderr)
    return 130
  if where:
    print(f"Done. Open {os.path.join(where, 'report.md')} (the frontier: frontier.png; per arm: "
          f"seed_*/<arm>_grid.png, <arm>_dt.png, <arm>.npz). Regenerate the report: python -m "
          f"minidiff.study.report {os.path.join(where, 'results.json')}")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
