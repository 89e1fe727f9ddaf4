"""Training: state and checkpoints, the training loop, sharding and precision."""
