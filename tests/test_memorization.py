"""Tests for minidiff.metrics.memorization: exact NN search, the ratio test, Carlini's distance, copy counts."""
import json

import numpy as np
import pytest

from minidiff.metrics import memorization as mem


def _random_images(n, seed, shape=(8, 8, 1)):
  return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def _brute_force(samples, reference, k):
  a = samples.reshape(len(samples), -1).astype(np.float64)
  b = reference.reshape(len(reference), -1).astype(np.float64)
  dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  idx = np.argsort(dist, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(dist, idx, 1), idx


@pytest.mark.parametrize("k, chunk", [(1, 256), (2, 32), (7, 25)])
def test_nearest_neighbours_equal_brute_force(k, chunk):
  reference = _random_images(300, 0)
  samples = np.concatenate([_random_images(67, 1), reference[[5, 17, 299]]])  # 3 exact copies.
  dist, idx = mem.nearest_neighbours(samples, reference, k=k, chunk=chunk)
  want_dist, want_idx = _brute_force(samples, reference, k)
  assert dist.shape == idx.shape == (70, k)
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(dist, want_dist, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(dist[-3:, 0], 0.0)  # Exact copies: no cancellation error.


def test_nearest_neighbours_bad_input():
  reference = _random_images(10, 0)
  with pytest.raises(ValueError, match="k=11"):
    mem.nearest_neighbours(reference[:2], reference, k=11)
  with pytest.raises(ValueError, match="differ in shape"):
    mem.nearest_neighbours(_random_images(2, 1, (4, 4, 1)), reference)
  with pytest.raises(ValueError, match="Empty"):
    mem.nearest_neighbours(reference[:0], reference)


def test_ratio_test_constructed_cases():
  unique = _random_images(20, 0, (16, 16, 1))
  is_dup = np.zeros(20, bool)
  noise = np.random.default_rng(1).normal(size=(2, 16, 16, 1)).astype(np.float32)
  samples = np.stack([
      unique[3],                                  # Exact copy → ratio 0.
      unique[4] + 0.02 * noise[0],                # Near copy → ratio ≪ 1/3.
      0.5 * unique[1] + 0.5 * unique[2],          # Blend: equidistant from both → ratio 1.
      np.clip(noise[1], -1, 1),                   # Noise: no close image.
  ])
  result = mem.analyse_samples(samples, unique, is_dup)
  np.testing.assert_array_equal(result.is_copy, [True, True, False, False])
  np.testing.assert_array_equal(result.nn_index[:2, 0], [3, 4])
  assert result.ratio[0] == 0.0 and result.ratio[1] < 0.1
  assert result.ratio[2] == pytest.approx(1.0, abs=1e-5)
  assert sorted(result.nn_index[2]) == [1, 2]
  assert result.ratio[3] > 0.8


def test_copies_of_duplicated_images_need_deduplicated_reference():
  unique = _random_images(30, 0, (16, 16, 1))
  is_dup = np.zeros(30, bool)
  is_dup[[5, 9]] = True
  raw = np.concatenate([unique, np.repeat(unique[[5, 9]], 10, axis=0)])  # The training set as seen.
  noise = np.random.default_rng(2).normal(size=(2, 16, 16, 1)).astype(np.float32)
  samples = unique[[5, 9]] + 0.02 * noise
  # De-duplicated reference: both samples are copies of duplicated images.
  result = mem.analyse_samples(samples, unique, is_dup)
  np.testing.assert_array_equal(result.is_copy, [True, True])
  np.testing.assert_array_equal(result.copies_duplicated, [True, True])
  np.testing.assert_array_equal(result.nn_index[:, 0], [5, 9])
  # Raw reference: NN₂ is another copy of NN₁, the ratio is ≈ 1 and the copies are missed.
  dist, _ = mem.nearest_neighbours(samples, raw, k=2)
  ratio = mem.distance_ratio(dist)
  np.testing.assert_allclose(ratio, 1.0, atol=1e-5)
  assert not np.any(mem.ratio_test(dist))
  with pytest.raises(ValueError, match="de-duplicate"):
    mem.analyse_samples(samples, raw, np.zeros(len(raw), bool))


def test_carlini_distance_hand_computed():
  # Reference images c_j · e_j (orthogonal), sample 0: distances are exactly c = 1, 2, 3, 10, 20.
  c = np.array([1.0, 2.0, 3.0, 10.0, 20.0], np.float32)
  unique = (np.eye(5, 16, dtype=np.float32) * c[:, None]).reshape(5, 4, 4, 1)
  sample = np.zeros((1, 4, 4, 1), np.float32)
  # n = 3: 1 / (0.5 · mean(1, 2, 3)) = 1 / (0.5 · 2) = 1.
  got = mem.analyse_samples(sample, unique, np.zeros(5, bool), carlini_n=3)
  assert got.carlini[0] == pytest.approx(1.0, rel=1e-6) and got.carlini_n == 3
  # n = 50 > 5 images: all 5 are used, 1 / (0.5 · 36 / 5) = 1 / 3.6.
  got = mem.analyse_samples(sample, unique, np.zeros(5, bool))
  assert got.carlini[0] == pytest.approx(1 / 3.6, rel=1e-6) and got.carlini_n == 5
  # α = 0.25 with n = 2: 1 / (0.25 · 1.5) = 8/3; and the ratio test: 1/2.
  assert mem.carlini_distance(np.array([[1.0, 2.0]]), alpha=0.25)[0] == pytest.approx(8 / 3)
  assert got.ratio[0] == pytest.approx(0.5)


def test_most_similar_is_pearson_correlation():
  reference = _random_images(40, 0)
  samples = np.concatenate([
      2.0 * reference[[7]] + 0.3,                 # Affine copy: correlation 1.
      np.full((1, 8, 8, 1), 0.2, np.float32),     # Constant image: correlation 0 with all.
      _random_images(20, 1),
  ])
  sim, idx = mem.most_similar(samples, reference, chunk=8)
  a = samples.reshape(len(samples), -1)[2:].astype(np.float64)
  b = reference.reshape(40, -1).astype(np.float64)
  corr = np.corrcoef(np.concatenate([a, b]))[: len(a), len(a):]
  assert idx[0] == 7 and sim[0] == pytest.approx(1.0, abs=1e-5)
  assert sim[1] == 0.0
  np.testing.assert_allclose(sim[2:], corr.max(1), atol=1e-5)
  np.testing.assert_array_equal(idx[2:], corr.argmax(1))


def test_copy_counts_split_by_duplication():
  is_copy = np.array([True, True, False, True, True, True])
  nn = np.array([0, 0, 1, 2, 3, 0])
  is_dup = np.array([True, False, False, True])
  got = mem.copy_counts(is_copy, nn, is_dup)
  assert got["counts"] == [3, 0, 1, 1]
  assert got["copies_of_duplicated"] == 4 and got["copies_of_non_duplicated"] == 1
  assert got["distinct_duplicated_copied"] == 2 and got["distinct_non_duplicated_copied"] == 1
  assert got["n_duplicated"] == 2 and got["n_non_duplicated"] == 2
  assert got["copied"] == [[0, 3, True], [2, 1, False], [3, 1, True]]


def test_memorization_report_is_json_ready():
  unique = _random_images(60, 0, (16, 16, 1))
  is_dup = np.zeros(60, bool)
  is_dup[:5] = True
  rng = np.random.default_rng(3)
  samples = np.concatenate([unique[[0, 0, 1, 2]], unique[[10, 11]],
                            rng.uniform(-1, 1, (4, 16, 16, 1)).astype(np.float32)])
  report = mem.memorization_report(samples, unique, is_dup)
  assert json.loads(json.dumps(report)) == report
  assert report["n_samples"] == 10 and report["n_unique_reference"] == 60
  assert report["memorization_rate"] == pytest.approx(0.6)
  assert report["copy_rate_duplicated"] == pytest.approx(0.4)
  assert report["copy_rate_non_duplicated"] == pytest.approx(0.2)
  assert report["carlini_fraction_below"]["0.5"] == pytest.approx(0.6)
  assert report["similarity_fraction_above"] == pytest.approx(0.6)
  assert report["similarity_at_percentile"] == pytest.approx(1.0, abs=1e-5)
  assert report["copies"]["copied"][0] == [0, 2, True]


def test_analyse_samples_bad_input():
  unique = _random_images(10, 0)
  with pytest.raises(ValueError, match="boolean"):
    mem.analyse_samples(unique[:2], unique, np.zeros(10, int))
  with pytest.raises(ValueError, match="boolean"):
    mem.analyse_samples(unique[:2], unique, np.zeros(9, bool))
  with pytest.raises(ValueError, match="at least 2"):
    mem.analyse_samples(unique[:2], unique[:1], np.zeros(1, bool))


def test_near_duplicates_in_the_reference_are_found_and_warned(caplog):
  rng = np.random.default_rng(3)
  unique = rng.uniform(-1, 1, (6, 4, 4, 1)).astype(np.float32)
  assert mem.near_duplicates(unique).shape == (0, 2)
  unique[4] = unique[1] + 1e-3  # a near copy of image 1: the ratio test could not see copies of it
  with caplog.at_level("WARNING"):
    pairs = mem.near_duplicates(unique)
  np.testing.assert_array_equal(pairs, [[1, 4]])
  assert "1 near-duplicate pair" in caplog.text
