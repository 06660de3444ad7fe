"""Evaluation: validation loss, bits per byte and the unigram baseline (more task families join here)."""
