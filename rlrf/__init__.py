"""rlrf: align a language model with a recommender's own feedback."""

__version__ = "0.1.0"
