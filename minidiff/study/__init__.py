"""The sampling job and the studies: sampling, reports, plots, prompt perturbations."""
