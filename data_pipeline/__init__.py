"""Offline corpus preparation: tokenizer training and corpus -> WebDataset shards + manifest.

Imports no torch: a data-preparation box needs none.
"""
