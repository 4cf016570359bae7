"""Data: corpora, tokenizers and synthetic tasks."""
