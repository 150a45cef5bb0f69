"""Data that knows no benchmark: text corpora to token streams, tokenizers, task specs and task data readers."""
