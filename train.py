"""Trains a DDPM: python train.py --config configs/mnist_dup.py --workdir runs/mnist_dup [--config.x=v].

Any config field can be overridden with --config.<section>.<field>=value; `python train.py
--helpconfig` lists every field with its value in --config (the defaults). Rerunning the same
command resumes from the latest checkpoint. Errors print one line and exit with status 2 (--debug
shows the traceback). When training ends, the last line says what to run next.
"""
from minidiff import runtime

runtime.configure_cpu()  # before JAX is imported

import ast  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FLAGS = flags.FLAGS


def _clean(e: BaseException) -> str:
  """An exception's message as one readable line (ml_collections nests reprs of KeyErrors)."""
  text = str(e)
  for _ in range(3):  # '\'stepz\'\nDid you mean …' → stepz … Did you mean …
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      break
    if not isinstance(value, str):
      break
    text = value
  return " ".join(text.replace("'", "").split()) or type(e).__name__


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _overrides() -> str:
  return " ".join(a for a in sys.argv[1:] if a.startswith("--config"))


try:  # ml_collections applies the --config.x=v overrides of sys.argv here, at definition time
  config_flags.DEFINE_config_file(
      "config", os.path.relpath(os.path.join(HERE, "configs", "mnist_dup.py")),
      "Training config file; override a field with --config.<section>.<field>=value "
      "(--helpconfig lists them).", lock_config=True)
except (AttributeError, KeyError) as e:
  if "--debug" in sys.argv:
    raise
  _fail(f"{_overrides()}: no such config field ({_clean(e)}); python train.py --helpconfig "
        f"lists the fields.")
except Exception as e:  # noqa: BLE001 (a config file that does not load, a value of the wrong type)
  if "--debug" in sys.argv:
    raise
  _fail(f"{_overrides()}: {type(e).__name__}: {_clean(e)} (python train.py --helpconfig lists the "
        f"fields and their types).")
flags.DEFINE_string("workdir", "runs/mnist_dup", "Where checkpoints, metrics and results go.")
flags.DEFINE_boolean("helpconfig", False, "List every config field with its value in --config "
                     "(the defaults, after any --config.x=v) and exit.")
flags.DEFINE_boolean("debug", False, "Show the full traceback of an error.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag or --config.x=v is one line and exit status 2."""
  try:
    return FLAGS(argv)
  except Exception as e:  # noqa: BLE001 (flags.Error, and what a config file or override raises)
    if "--debug" in argv:
      raise
    _fail(f"{_clean(e)} (python train.py --help; --helpconfig lists the config fields)")


def config_help(config) -> str:
  """Every config field as --config.<field>=<value>, with its type, grouped by section."""
  from minidiff import config as config_lib  # noqa: PLC0415

  types = {**config_lib.FIELD_TYPES, **config_lib.OPTIONAL_FIELDS}
  lines = [f"Config fields (values of --config={config_flags.get_config_filename(FLAGS['config'])}); "
           f"set one with --config.<field>=<value>.",
           f"Fields that may change when a run resumes: {', '.join(config_lib.RESUMABLE_FIELDS)}."]
  section = None
  def leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from leaves(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v

  for key, value in leaves(config.to_dict()):
    head = key.split(".")[0] if "." in key else ""
    if head != section:
      lines.append(f"\n[{head or 'top level'}]")
      section = head
    kind = types.get(key)
    lines.append(f"  --config.{key}={value!r}" + (f"  ({kind.__name__})" if kind else ""))
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected argument(s) {' '.join(argv[1:])}; flags are written --name=value "
          f"(python train.py --help).", file=sys.stderr)
    return 2
  try:
    FLAGS.config.get("seed")  # a config file that did not load raises here (ml_collections defers it)
  except OSError as e:
    if FLAGS.debug:
      raise
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    _fail(f"--config={config_flags.get_config_filename(FLAGS['config'])} does not load ({reason}); "
          f"give a file with get_config(), e.g. configs/mnist_dup.py.")
  if FLAGS.helpconfig:
    print(config_help(FLAGS.config))
    return 0
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every save at INFO
  logging.getLogger("minidiff").setLevel(logging.INFO)
  from minidiff.train import trainer  # noqa: PLC0415 (after the flags: --help stays fast)
  try:
    state = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    if FLAGS.debug:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"interrupted: rerun the same command to resume {FLAGS.workdir} from its last checkpoint.",
          file=sys.stderr)
    return 130
  print(f"Done: {FLAGS.workdir} trained to step {state.step} (checkpoints/, metrics.jsonl, "
        f"manifest.json). Next: python sample.py --workdir {FLAGS.workdir}  (the memorization study)")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
