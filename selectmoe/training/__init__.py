"""The training loop, checkpoints and devices that the training stages share."""
