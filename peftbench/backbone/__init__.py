"""SAM's architectures and checkpoints, and the prompt-free segmenter around them."""
