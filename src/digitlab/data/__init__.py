"""Data: datasets and their downloads, image decoding and MNIST framing, the real-world and corrupted sets."""
