"""fromzero: train a language model from random weights through the four stages of an LLM."""

__version__ = "0.1.0"
