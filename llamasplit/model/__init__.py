"""Model reader: GGUF headers into a ModelProfile, never the weights."""
