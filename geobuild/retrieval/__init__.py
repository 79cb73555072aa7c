"""Nearest-neighbour search: faiss indexes and exact torch / numpy top-k."""
