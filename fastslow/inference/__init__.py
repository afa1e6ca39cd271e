"""Inference with trained models: Fast embeddings of items and texts, Slow scores of (text, item) pairs."""
