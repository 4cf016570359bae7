"""Studies: the experiments behind attnlab, each a function that writes a run folder."""
