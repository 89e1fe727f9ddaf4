"""Evaluation metrics: memorization, Fréchet distance, detection AUC, the evaluation classifier."""
