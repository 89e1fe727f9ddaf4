"""minidiff: a minimal JAX diffusion codebase for studying memorization and guidance."""
