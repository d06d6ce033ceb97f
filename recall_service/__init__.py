"""Recall service: HNSW nearest-neighbour lookups over item embeddings."""
