"""Other tools: transformers export, lm-evaluation-harness (model and results format)."""
