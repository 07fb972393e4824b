"""Recommender models used by rlrf: the SASRec candidate generator and the knowledge-augmented rerankers."""
