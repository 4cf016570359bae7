"""Data: corpora, tokenizers, synthetic tasks, and the batch sources of the training loop
(:mod:`attnlab.data.sources`, configured by :class:`attnlab.data.config.DataConfig`)."""
