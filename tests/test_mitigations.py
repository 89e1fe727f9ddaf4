"""The peers' mitigations (minidiff.core.mitigations, run as rules of the one sampler; study arms): closed forms
on exact denoisers, the model's continuous-embedding boundary, and the arms end to end."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.core import guidance, mitigations, registry, samplers, specs
from minidiff.core.schedule import linear_schedule
from minidiff.data.tokenizer import NULL_ID, PAD_ID
from minidiff.nn.unet import UNet, UNetConfig
from minidiff.study import arms as arms_lib
from minidiff.study import engine, sampling
from minidiff.study.conditions import ConditionSet
from minidiff.theory.ideal import EmpiricalDensity, GaussianDensity
from minidiff.train import sharding

SCHEDULE = linear_schedule(100)
# The smallest UNets: one level, no self-attention but the middle block's (compiles are the cost).
CLASS = UNetConfig(resolution=4, base_channels=8, channel_mults=(1,), attention_resolutions=(),
                   num_groups=4, num_classes=3)
TEXT = UNetConfig(resolution=4, base_channels=8, channel_mults=(1,), attention_resolutions=(),
                  num_groups=4, conditioning="text", vocab_size=20, max_tokens=8, text_dim=16,
                  text_layers=1, text_heads=2, cross_attention_resolutions=(4,))


def _randomised(config):
  """(graphdef, params) of a UNet with random values everywhere (zero-initialised output layers
  would make ε ≡ 0 and hide every path). Drawn with numpy: one compile fewer per leaf."""
  graphdef, params = nnx.split(UNet(config, rngs=nnx.Rngs(0)), nnx.Param)
  rng = np.random.default_rng(3)
  return graphdef, jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype),
                                params)


# --- the model boundary: a continuous condition embedding ----------------------------------------


def test_class_and_text_embeddings_give_the_same_output_bit_for_bit():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4, 4, 1)), jnp.float32)
  t = jnp.asarray([5, 50, 99], jnp.int32)
  tokens = jnp.asarray([[NULL_ID, 5, 6, PAD_ID], [NULL_ID, PAD_ID, PAD_ID, PAD_ID],
                        [NULL_ID, 7, 8, 9]], jnp.int32)
  noise = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4, 16)), jnp.float32)
  for config, cond in [(CLASS, jnp.asarray([0, 2, 3], jnp.int32)),
                       (TEXT, {"tokens": tokens, "noise": noise})]:
    graphdef, params = _randomised(config)

    @jax.jit
    def both(params, x, t, cond):
      model = nnx.merge(graphdef, params)
      emb = model.embed_condition(cond)
      return model(x, t, cond), model(x, t, emb), emb

    direct, via, emb = both(params, x, t, cond)
    np.testing.assert_array_equal(np.asarray(direct), np.asarray(via))
    assert float(jnp.abs(direct).max()) > 0  # a real output, not the zero-initialised one
    if config.conditioning == "class":  # the class embedding is the table's row
      table = params["conditioner"]["embed"]["embedding"][...]
      np.testing.assert_array_equal(np.asarray(emb["embedding"]), np.asarray(table)[[0, 2, 3]])
    else:
      assert emb["embedding"].shape == (3, 4, 16) and emb["mask"].dtype == jnp.bool_


# --- Wen et al.: embedding optimisation on the exact denoiser -------------------------------------

ATOMS = np.asarray([[1.0, 1.0, -1.0, -1.0], [-1.0, 1.0, 1.0, -1.0]], np.float32).reshape(2, 2, 2, 1)


def _exact_eps(x_t, t, logits):
  """ε* of the training set {a, b} with weights softmax(logits) per sample (ideal.py's exact
  denoiser): a continuous condition; logits (0, 0) is the null condition (equal weights)."""
  def one(x, lw):
    density = EmpiricalDensity(jnp.asarray(ATOMS.reshape(2, -1)), jax.nn.log_softmax(lw), (2, 2, 1))
    return density.eps(x[None], t, SCHEDULE)[0]
  return jax.vmap(one)(x_t, logits)


def test_embedding_optimisation_lowers_the_first_step_d_to_the_target_on_the_exact_denoiser():
  # x_t = 0 is as far from √ᾱ a as from √ᾱ b (‖a‖ = ‖b‖): the weights decide E[x₀ | x_t]
  x = jnp.zeros((3, 2, 2, 1), jnp.float32)
  t = 60
  null = jnp.zeros((3, 2))
  eps_u = _exact_eps(x, t, null)
  d_fn = lambda e: jnp.linalg.norm((_exact_eps(x, t, e) - eps_u).reshape(3, -1), axis=1)  # noqa: E731
  start = jnp.asarray([[4.0, 0.0], [3.0, 0.0], [0.0, 0.0]])  # two memorized conditions, the null
  target = 0.05
  # eager: 200 unrolled Adam steps under one jit take minutes to compile
  out = mitigations.optimise_embedding(d_fn, start, target=target, steps=200, lr=0.1)
  d0, d1 = np.asarray(out.d_first), np.asarray(out.d_final)
  assert d0[0] > 4 * target and d0[1] > 4 * target and d0[2] < 1e-6
  # d = 0 exactly at equal weights, so the optimum is the null condition: d falls below the target
  assert np.all(d1[:2] < target) and np.all(d1[:2] < d0[:2])
  gap = np.abs(np.diff(np.asarray(out.embedding), axis=1))[:, 0]
  assert gap[0] < 4.0 and gap[1] < 3.0  # the weights moved towards ½, ½ (gap 0)
  # a sample already below the target is never touched (frozen), bit for bit
  np.testing.assert_array_equal(np.asarray(out.embedding)[2], np.asarray(start)[2])
  assert int(out.steps[2]) == 0 and 0 < int(out.steps[0]) < 200


# --- CADS ----------------------------------------------------------------------------------------


def test_cads_gamma_is_piecewise_linear_in_the_normalised_time():
  T = 101  # noqa: N806 (u = t/100)
  t = jnp.asarray([0, 60, 75, 90, 100])
  g = mitigations.cads_gamma(t, T, tau1=0.6, tau2=0.9)
  np.testing.assert_allclose(np.asarray(g), [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_cads_noise_and_rescaling_closed_forms():
  rng = np.random.default_rng(0)
  y = jnp.asarray(rng.standard_normal((4, 6)) * 2 + 1, jnp.float32)
  n = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
  gamma = jnp.asarray([1.0, 0.5, 0.2, 0.0])
  raw = mitigations.anneal_condition(y, gamma, n, s=0.3, psi=0.0, rescale=False)
  g = np.asarray(gamma)[:, None]
  want = np.sqrt(g) * np.asarray(y) + 0.3 * np.sqrt(1 - g) * np.asarray(n)  # √γ y + s √(1−γ) n
  np.testing.assert_allclose(np.asarray(raw), want, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(raw)[0], np.asarray(y)[0])  # γ = 1: untouched
  full = np.asarray(mitigations.anneal_condition(y, gamma, n, s=0.3, psi=1.0, rescale=True))
  # ψ = 1: every sample keeps y's own mean and standard deviation
  np.testing.assert_allclose(full.mean(1), np.asarray(y).mean(1), atol=1e-5)
  np.testing.assert_allclose(full.std(1), np.asarray(y).std(1), rtol=1e-5)
  half = np.asarray(mitigations.anneal_condition(y, gamma, n, s=0.3, psi=0.5, rescale=True))
  np.testing.assert_allclose(half, 0.5 * full + 0.5 * want, atol=1e-5)  # ψ mixes the two
  same = mitigations.anneal_condition(y, gamma, n, s=0.0, psi=1.0, rescale=True)
  assert same is y  # zero noise: the condition itself
  # text: statistics over the real tokens only
  y3, n3 = y.reshape(2, 2, 6), n.reshape(2, 2, 6)
  mask = jnp.asarray([[True, False], [True, True]])
  out = np.asarray(mitigations.anneal_condition(y3, jnp.asarray([0.3, 0.3]), n3, s=0.5, psi=1.0,
                                                rescale=True, mask=mask))
  np.testing.assert_allclose(out[0, 0].std(), np.asarray(y3)[0, 0].std(), rtol=1e-5)


# --- AMG -----------------------------------------------------------------------------------------


def test_nearest_two_is_the_float64_brute_force_and_the_similarity_its_ratio():
  rng = np.random.default_rng(0)
  points, x = rng.standard_normal((30, 5)), rng.standard_normal((7, 5))
  idx, dist = jax.jit(mitigations.nearest_two)(jnp.asarray(x, jnp.float32),
                                               jnp.asarray(points, jnp.float32))
  d = np.linalg.norm(x[:, None] - points[None], axis=2)
  np.testing.assert_array_equal(np.asarray(idx), np.argsort(d, axis=1)[:, :2])
  np.testing.assert_allclose(np.asarray(dist), np.sort(d, axis=1)[:, :2], rtol=1e-4)
  sigma = mitigations.similarity(jnp.asarray(x), jnp.asarray(points[np.asarray(idx)[:, 0]]),
                                 jnp.asarray(points[np.asarray(idx)[:, 1]]))
  np.testing.assert_allclose(np.asarray(sigma), 1 - d.min(1) / np.sort(d, 1)[:, 1], rtol=1e-4)


def test_despecification_lowers_w_by_c_spe_times_the_excess_similarity_down_to_w_min():
  amg = mitigations.AntiMemorization(w=7.5, threshold=0.5, c_spe=20.0, w_min=1.0, c_sim=0.0)
  w = mitigations.despecified_weight(amg, jnp.asarray([0.2, 0.5, 0.6, 0.99]))
  # 20·0.1 = 2; 20·0.49 = 9.8 is more than w − w_min = 6.5, so w stops at w_min
  np.testing.assert_allclose(np.asarray(w), [7.5, 7.5, 7.5 - 2.0, 1.0], rtol=1e-6)


def test_dissimilarity_guidance_moves_the_sample_away_from_the_nearest_atom():
  # Every condition is N(a, 0.05 I) (x̂₀ depends on x_t, so ∇σ is not zero); the training images
  # searched are a and two far images b, c. AMG pushes each sample's x̂₀ away from a.
  a = np.full((2, 2, 1), 0.3, np.float32)
  density = GaussianDensity.fit(a[None] + 0.22 * np.random.default_rng(0).standard_normal((400, 2, 2, 1)))
  eps_fn = lambda x_t, t, cond: density.eps(x_t, t, SCHEDULE)  # noqa: E731  ε_c = ε_u
  train = np.stack([a, a - 1.5, a + 1.5])  # NN₁ = a for every sample, NN₂ 3 away
  x_T = jnp.asarray(np.random.default_rng(1).standard_normal((6, 2, 2, 1)), jnp.float32)  # noqa: N806
  cond = jnp.zeros(6, jnp.int32)
  null = jnp.ones(6, jnp.int32)
  key = jax.random.key(0)
  run = lambda amg: samplers.sample(  # noqa: E731
      eps_fn, SCHEDULE, x_T, cond, null, key, strategy=amg.with_images(train), num_steps=10)
  plain, d_plain = run(mitigations.AntiMemorization(w=3.0, threshold=0.0, c_spe=0.0, c_sim=0.0))
  dist = lambda x: np.linalg.norm(np.asarray(x).reshape(6, -1) - a.reshape(1, -1), axis=1)  # noqa: E731
  for through_model in (0, 1):  # ε̂ held fixed, or the exact gradient through the denoiser
    pushed, d_pushed = run(mitigations.AntiMemorization(w=3.0, threshold=0.0, c_spe=0.0, c_sim=2.0,
                                                        through_model=through_model))
    assert np.all(dist(pushed) > dist(plain) + 1e-3), (through_model, dist(pushed), dist(plain))
    assert np.all(np.asarray(d_pushed.transition_step) == 0)  # λ = 0: triggered at the first step
  # no guidance term: exactly the sampler's CFG on the same keys
  cfg, _ = samplers.sample(eps_fn, SCHEDULE, x_T, cond, null, key, strategy=guidance.Constant(3.0),
                           num_steps=10)
  np.testing.assert_allclose(np.asarray(plain), np.asarray(cfg), atol=1e-6)


# --- specs and arms ------------------------------------------------------------------------------


def test_specs_parse_into_mitigation_arms_with_their_families():
  arms = arms_lib.parse_arms("cfg,wen:target=0.1,0.05,amg:threshold=0.4:c_sim=0,cads:s=0.1", T=1000)
  assert [(a.label, a.family) for a in arms] == [
      ("cfg", "cfg"), ("wen:target=0.1", "wen"), ("wen:target=0.05", "wen"),
      ("amg:threshold=0.4:c_sim=0", "amg"), ("cads:s=0.1", "cads")]
  assert arms[1].strategy == mitigations.EmbeddingOptimisation(target=0.1)
  assert arms[3].strategy.c_sim == 0.0 and arms[4].strategy.s == 0.1
  assert registry.MITIGATION_NAMES == ("wen", "amg", "cads") == registry.RULE_NAMES[-3:]


def test_mitigation_parameters_sweep_one_arm_per_value_and_list_their_defaults():
  # what sample.py --help prints per strategy: every parameter with its default
  assert registry.rule_params("wen") == dict(w=7.5, target=0.07, steps=10, lr=0.1)
  assert registry.rule_params("amg") == dict(w=7.5, threshold=0.5, c_spe=20.0, w_min=1.0,
                                                 c_sim=10.0, through_model=0)
  assert registry.rule_params("cads") == dict(w=7.5, tau1=0.6, tau2=0.9, s=0.25, psi=1.0,
                                                  rescale=1)
  labels = [g.label for g in specs.parse_guidance(
      "wen:target=0.5,1,2,amg:threshold=0.3,0.5:c_sim=0,10,cads:s=0:0.5:0.25", T=1000)]
  assert labels == ["wen:target=0.5", "wen:target=1", "wen:target=2",
                    "amg:threshold=0.3:c_sim=0", "amg:threshold=0.3:c_sim=10",
                    "amg:threshold=0.5:c_sim=0", "amg:threshold=0.5:c_sim=10",
                    "cads:s=0", "cads:s=0.25", "cads:s=0.5"]  # 3 + 2×2 + 3 arms, first varies slowest
  swept = specs.parse_guidance("wen:target=0.5,1,2", T=1000)
  assert [g.strategy.target for g in swept] == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("spec, match", [
    ("wen:target=0", "target"), ("wen:steps=1.5", "steps"), ("cads:tau1=0.9:tau2=0.6", "tau1"),
    ("cads:psi=2", "psi"), ("amg:threshold=1", "threshold"), ("amg:w=2:w_min=3", "w_min"),
    ("amg:lr=1", "no parameter")])
def test_bad_mitigation_specs_fail_with_one_line(spec, match):
  with pytest.raises(ValueError, match=match):
    specs.parse_guidance(spec, T=1000)


def _sampler_run(config, num=4):
  graphdef, params = _randomised(config)
  eps_apply = lambda p, x_t, t, c: nnx.merge(graphdef, p)(x_t, t, c)  # noqa: E731
  embed = lambda p, c: nnx.merge(graphdef, p).embed_condition(c)  # noqa: E731
  options = sampling.SamplingOptions(num=num, num_steps=3, batch=num)
  rng = np.random.default_rng(2)
  return arms_lib.SamplerRun(eps_apply, params, SCHEDULE, options, sharding.data_mesh(),
                             embed_apply=embed,
                             train_images=rng.uniform(-1, 1, (5, 4, 4, 1)).astype(np.float32))


def test_cads_without_noise_and_wen_without_steps_equal_cfg_bit_for_bit():
  run = _sampler_run(CLASS)
  labels = np.asarray([0, 1, 2, 0], np.int32)
  conditions = ConditionSet("class", labels, np.asarray([3], np.int32), labels.astype(np.int64),
                            -np.ones(4, np.int64), dict(memorized=labels == 0, other=labels != 0))
  x_T, key = sampling.shared_noise(run.options, shape=(4, 4, 1))  # noqa: N806
  sample = lambda spec: arms_lib.run_arm(run, arms_lib.parse_arms(spec, T=100)[0], conditions,  # noqa: E731
                                         x_T, key)
  cfg = sample("cfg:w=3")
  for spec in ("cads:w=3:s=0", "wen:w=3:steps=0"):
    np.testing.assert_array_equal(sample(spec).samples, cfg.samples, err_msg=spec)
  amg = sample("amg:w=3:threshold=0")
  assert np.isfinite(amg.samples).all() and np.all(amg.transition_step == 0)
  assert np.all(amg.w[0] < 3.0)  # despecified at the first step (σ > 0 = λ)


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("classifier_cache"))


def _check_study(results, labels):
  assert [a["label"] for a in results["arms"]] == labels
  seed = results["seeds"][0]
  for label in labels:
    row = seed["arms"][label]
    assert row["samples_per_s"] > 0 and "copy" in row["groups"]["all"]
    figs = row["detection"]["figures"]["memorized"]["mean_d_eps"]
    assert figs is None or 0.0 <= figs["tpr_at_1pct_fpr"] <= 1.0


@pytest.mark.parametrize("run_name", ["tiny_run", "tiny_text_run"])
def test_every_mitigation_runs_as_a_study_arm_on_class_and_text_runs(run_name, request, tmp_path,
                                                                     classifier_cache):
  workdir = request.getfixturevalue(run_name)
  labels = ["cfg", "wen:steps=2", "amg:threshold=0.3", "cads:tau1=0.2"]
  options = engine.StudyOptions(sampling=sampling.SamplingOptions(num=4, num_steps=3, batch=4),
                                classifier_cache=classifier_cache, fd_resamples=5,
                                figures=False)
  results = engine.run_study([workdir], ",".join(labels), options=options,
                             outdir=str(tmp_path / "study"))
  _check_study(results, labels)
  assert [a["family"] for a in results["arms"]] == ["cfg", "wen", "amg", "cads"]
  load = lambda slug: np.load(tmp_path / "study" / "seed_0" / f"{slug}.npz")["samples"]  # noqa: E731
  assert not np.array_equal(load("cads_tau10.2"), load("cfg"))  # the annealed condition acts
  assert math.isfinite(results["seeds"][0]["arms"]["wen:steps=2"]["samples_per_s"])
