"""Samples a trained run with one or more guidance strategies; with several, runs the memorization study.

  python sample.py --workdir runs/mnist_dup --guidance dynamic --num 100 [--classes 3,7]
      [--steps 50 --eta 0 --seed 0] [--set w_post=5] [--guidance cfg,static:tau=600,opposite]
  python sample.py --workdir runs/mnist_text --prompt "a handwritten seven" [--prompts FILE]
      [--guidance cfg,cfg+random_tokens:k=4]   (text runs; "+perturbation" specs as in minidiff.study.perturbation)
"""
from minidiff import runtime

runtime.configure_cpu()  # before JAX is imported

import logging  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from minidiff.study import engine  # noqa: E402

flags.DEFINE_string("workdir", "runs/mnist_dup", "Training workdir (config.json + checkpoints).")
flags.DEFINE_string("guidance", None, "Comma-separated specs name[:param=value...] (default: the "
                    "config's study list); "
                    "names: none, conditional, cfg, static, opposite, dynamic, dynamic_opposite, "
                    "interval, linear, cosine.")
flags.DEFINE_multi_string("set", [], "param=value applied to every strategy that has the param.")
flags.DEFINE_integer("num", None, "Samples per strategy (default: config.study.num_samples).")
flags.DEFINE_list("classes", [], "Requested classes, cycled (default: all).")
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
flags.DEFINE_bool("study", None, "Run the memorization study (default: when several strategies).")
flags.DEFINE_string("outdir", None, "Output folder (default: WORKDIR/samples, or WORKDIR/study).")
FLAGS = flags.FLAGS


def _prompts() -> tuple[str, ...]:
  prompts = list(FLAGS.prompt)
  if FLAGS.prompts:
    with open(FLAGS.prompts) as f:
      prompts += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
      raise ValueError(f"--prompts={FLAGS.prompts} holds no prompt (one per line).")
  return tuple(prompts)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("minidiff").setLevel(logging.INFO)
  engine.sample_and_study(
      FLAGS.workdir, FLAGS.guidance, overrides=dict(s.split("=", 1) for s in FLAGS.set),
      num=FLAGS.num, classes=tuple(int(c) for c in FLAGS.classes), num_steps=FLAGS.steps,
      eta=FLAGS.eta, sampler=FLAGS.sampler, spacing=FLAGS.spacing, seed=FLAGS.seed,
      batch=FLAGS.batch, study=FLAGS.study, outdir=FLAGS.outdir,
      x0_steps=tuple(int(k) for k in FLAGS.x0_steps), prompts=_prompts())


if __name__ == "__main__":
  app.run(main)
