"""Pretraining of encoder, decoder and encoder-decoder Transformers with Transformer-XL memory."""
