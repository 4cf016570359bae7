"""Integrations with other libraries, each imported on demand (``attnlab.integrations.hf``)."""

__all__: list[str] = []
