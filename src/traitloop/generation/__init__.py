"""Text generation backends. hf.py: transformers, batched and length-sorted (CPU and GPU)."""
