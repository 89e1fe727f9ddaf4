"""Sweep specs expand into one arm per value combination."""
import pytest

from minidiff.core import specs


def test_lists_ranges_and_products_expand_in_order():
  assert specs.expand_specs("cfg:w=1,3,7.5,static:tau=300:700:100") == [
      "cfg:w=1", "cfg:w=3", "cfg:w=7.5", "static:tau=300", "static:tau=400", "static:tau=500",
      "static:tau=600", "static:tau=700"]
  arms = specs.expand_specs("opposite:tau=400,500,600:s=1,2,4")
  assert len(arms) == 9 and arms[0] == "opposite:tau=400:s=1" and arms[1] == "opposite:tau=400:s=2"
  assert arms[-1] == "opposite:tau=600:s=4"  # the first parameter varies slowest
  assert specs.expand_specs("static:tau=200:800:100:w_post=3")[-1] == "static:tau=800:w_post=3"
  assert specs.expand_specs("cfg+random_tokens:k=1,2") == ["cfg+random_tokens:k=1",
                                                           "cfg+random_tokens:k=2"]
  assert specs.expand_specs("none, conditional,interval:sigma_lo=0.1") == [
      "none", "conditional", "interval:sigma_lo=0.1"]
  assert specs.expand_specs("cfg:w=0.5:2:0.5") == ["cfg:w=0.5", "cfg:w=1", "cfg:w=1.5", "cfg:w=2"]
  assert specs.expand_specs("cfg:w=1,3+random_tokens:k=4") == ["cfg:w=1+random_tokens:k=4",
                                                               "cfg:w=3+random_tokens:k=4"]
  assert specs.expand_specs("opposite:s=-1, 2") == ["opposite:s=-1", "opposite:s=2"]


@pytest.mark.parametrize("text,match", [
    ("3,cfg", "starts with a number"),
    ("static:tau=800:200:100", "hi ≥ lo"),
    ("static:tau=200:800:250", "whole steps"),
    ("static:tau=200:800", "three numbers"),
    ("cfg:w=1,1", "repeat"),
    ("cfg:w=", "empty value"),
])
def test_bad_sweeps_are_one_clear_error(text, match):
  with pytest.raises(ValueError, match=match):
    specs.expand_specs(text)


def test_parse_guidance_accepts_sweeps_and_each_arm_is_validated():
  parsed = specs.parse_guidance("cfg:w=1,3,static:tau=100:300:100", T=1000)
  assert [p.label for p in parsed] == ["cfg:w=1", "cfg:w=3", "static:tau=100", "static:tau=200",
                                       "static:tau=300"]
  assert parsed[3].strategy.tau == 200
  with pytest.raises(ValueError, match="tau"):
    specs.parse_guidance("static:tau=900:1100:100", T=1000)
