"""charsearch: find, train and ship character-level RNN language models."""

__version__ = "0.1.0"
