"""Diffusion core: noise schedules, guidance strategies, samplers and spec parsing (imports nothing else of minidiff)."""
