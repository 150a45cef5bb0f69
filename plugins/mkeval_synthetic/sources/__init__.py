"""One module per synthetic source."""
