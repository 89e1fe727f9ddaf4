"""Samples trained runs with guidance arms on shared noises and runs the memorization study.

  python sample.py --workdir runs/mnist_dup                       # the config's study (config.study)
  python sample.py --workdir runs/mnist_dup --guidance 'cfg:w=1,3,7.5,static:tau=300:700:100'
  python sample.py --workdirs runs/s0,runs/s1,runs/s2 --outdir docs/results/x   # pool training seeds
  python sample.py --workdir runs/mnist_text --guidance cfg,cfg+random_tokens:k=4 [--prompt "..."]

Results land in --outdir (default WORKDIR/study); a folder that holds another study is never
overwritten (a new `_2` folder is used), the same study resumes. Regenerate a report from its
results.json with `python -m minidiff.study.report DIR/results.json`.
"""
from minidiff import runtime

runtime.configure_cpu()  # before JAX is imported

import logging  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from minidiff.study import engine  # noqa: E402

flags.DEFINE_string("workdir", "runs/mnist_dup", "Training workdir (config.json + checkpoints).")
flags.DEFINE_list("workdirs", [], "Several training seeds of one config, pooled (overrides --workdir).")
flags.DEFINE_string("guidance", None, "Comma-separated arms name[:param=value...] (default: the "
                    "config's study list); a parameter may sweep a list (w=1,3,7.5) or an inclusive "
                    "range (tau=200:800:100); names: none, conditional, cfg, static, opposite, "
                    "dynamic, dynamic_opposite, interval, linear, cosine; text runs may add "
                    "+embedding_noise:lam=.., +random_tokens:k=.., +repeat_words:k=.., "
                    "+random_numbers:k=..")
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
flags.DEFINE_string("outdir", None, "Study folder (default: WORKDIR/study).")
FLAGS = flags.FLAGS


def _prompts() -> tuple[str, ...]:
  prompts = list(FLAGS.prompt)
  if FLAGS.prompts:
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


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("minidiff").setLevel(logging.INFO)
  try:
    engine.sample_and_study(
        FLAGS.workdirs or [FLAGS.workdir], FLAGS.guidance,
        overrides=dict(s.split("=", 1) for s in FLAGS.set), num=FLAGS.num,
        classes=_ints(FLAGS.classes, "classes"), prompts=_prompts(), num_steps=FLAGS.steps,
        eta=FLAGS.eta, sampler=FLAGS.sampler, spacing=FLAGS.spacing, seed=FLAGS.seed,
        batch=FLAGS.batch, x0_steps=_ints(FLAGS.x0_steps, "x0_steps"), baseline=FLAGS.baseline,
        memorized_share=FLAGS.memorized_share,
        memorized_classes=_ints(FLAGS.memorized_classes, "memorized_classes"), outdir=FLAGS.outdir,
        command="python " + " ".join(sys.argv))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  app.run(main)
