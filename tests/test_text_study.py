import json
import os

import numpy as np
import pytest

from minidiff import config as config_lib
from minidiff.data.duplication import Manifest
from minidiff.data.tokenizer import FILENAME, Tokenizer
from minidiff.metrics import memorization
from minidiff.study import engine, text_study
from minidiff.train import inputs

GROUP_KEYS = {"n", "copy_rate", "own_image_copy_rate", "duplicated_image_copy_rate",
              "carlini_fraction_below_0_5", "class_accuracy"}
ROW_KEYS = {"memorized_prompts", "non_memorized_prompts", "auc_mean_d_eps_memorized_vs_not",
            "auc_mean_d_x0_memorized_vs_not", "auc_first_d_eps_memorized_vs_not", "n_samples",
            "transition_fired", "samples_per_s", "compile_s"}


def test_tiny_text_model_overfits_its_caption_and_copies_the_image_under_cfg(tiny_text_run, tmp_path):
  manifest = Manifest.load(os.path.join(tiny_text_run, "manifest.json"))
  (u,) = manifest.duplicated_ids
  caption = manifest.captions[u]
  tok = Tokenizer.load(os.path.join(tiny_text_run, FILENAME))  # saved beside the checkpoints
  assert tok.decode(tok.encode(caption)) == caption
  out = str(tmp_path / "samples")
  # The same 8 initial noises with the caption and with a class caption ("a handwritten zero").
  engine.sample_and_study(tiny_text_run, "cfg:w=3", prompts=[caption] * 8 + ["a handwritten zero"] * 8,
                         num=16, outdir=out, batch=8)
  samples = np.load(os.path.join(out, "cfg_w3.npz"))["samples"]
  subset = inputs.load_training_data(config_lib.load_workdir_config(tiny_text_run))
  mem = memorization.analyse_samples(samples, subset.unique_images, manifest.is_duplicated)
  own = mem.is_copy & (mem.nn_index[:, 0] == u)
  assert own[:8].mean() >= 0.5, (mem.ratio, mem.nn_index[:, 0])  # copies of the caption's image
  assert not own[8:].any()  # a class caption does not give that image


def test_text_study_schema_has_memorized_and_non_memorized_rows(tiny_text_run, tmp_path):
  out = str(tmp_path / "study")
  results = engine.sample_and_study(tiny_text_run, outdir=out, batch=8,
                                   classifier_cache=str(tmp_path / "cache"))
  on_disk = json.load(open(os.path.join(out, "results.json")))
  assert on_disk == json.loads(json.dumps(results)) and on_disk["kind"] == "text"
  assert list(on_disk["strategies"]) == ["cfg:w=3", "cfg:w=3+repeat_words:k=2",
                                         "cfg:w=3+random_tokens:k=2"]
  assert on_disk["n_memorized"] == 4 and on_disk["n_non_memorized"] == 4
  assert len(on_disk["prompts"]["memorized"]) == 1 and len(on_disk["prompts"]["non_memorized"]) == 4
  for name, row in on_disk["strategies"].items():
    assert ROW_KEYS <= set(row), (name, ROW_KEYS - set(row))
    assert GROUP_KEYS == set(row["memorized_prompts"]) == set(row["non_memorized_prompts"])
    assert 0.0 <= row["auc_mean_d_eps_memorized_vs_not"] <= 1.0
  assert on_disk["strategies"]["cfg:w=3+random_tokens:k=2"]["perturbation"] == dict(name="RandomTokens", k=2)
  noisy = on_disk["perturbed_examples"]["cfg:w=3+random_tokens:k=2"][0].split()
  assert len(noisy) == len(on_disk["perturbed_examples"]["cfg:w=3"][0].split()) + 2
  report = open(os.path.join(out, "report.md")).read()
  assert "| `cfg:w=3+repeat_words:k=2` |" in report and "memorized: copies" in report
  assert os.path.exists(os.path.join(out, "dt_eps_memorized_vs_not.png"))


@pytest.mark.parametrize("kw, match", [
    (dict(prompts=["a a a a a a a a a a a a a a a a"]), "max_tokens"),
    (dict(guidance_specs="cfg+gaussian"), "Unknown prompt perturbation"),
    (dict(classes=(3,)), "--prompt"),
])
def test_bad_text_sampling_inputs_fail_before_compiling(tiny_text_run, kw, match):
  with pytest.raises(ValueError, match=match):
    engine.sample_and_study(tiny_text_run, kw.pop("guidance_specs", "cfg"), num=2, **kw)


def test_default_prompts_split_memorized_and_class_captions(tiny_text_run):
  manifest = Manifest.load(os.path.join(tiny_text_run, "manifest.json"))
  prompts, _ = text_study.default_prompts(manifest, "mnist_offline", 6)
  group, image, label = text_study.prompt_groups(prompts + ["a purple cow"], manifest, "mnist_offline")
  np.testing.assert_array_equal(group, [0, 0, 0, 1, 1, 1, 2])
  np.testing.assert_array_equal(image[:3], manifest.duplicated_ids[0])
  np.testing.assert_array_equal(label, [3, 3, 3, 0, 1, 2, -1])
