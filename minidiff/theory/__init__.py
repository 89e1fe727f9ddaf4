"""Exact theory: closed-form memorizing denoisers and the attraction-basin constructions."""
