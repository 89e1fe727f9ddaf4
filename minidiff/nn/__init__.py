"""Networks (Flax NNX): shared layers, the UNet and the text encoder."""
