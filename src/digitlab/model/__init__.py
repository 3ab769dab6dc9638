"""Models: the networks by name, their forward passes (with test-time augmentation) and the scores on logits."""
