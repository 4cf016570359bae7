"""Approximations of attention: value-aware oracles, sparse and feature-map methods."""
