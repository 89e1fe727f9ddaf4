"""Guidance rules added one file each: every module here is imported by minidiff.core.registry, so a
rule class defined in it (with `name`, `family` and `help`) is a spec name for sample.py, the study
and the API. See docs/api.md, "Adding a guidance rule"."""
