"""Generation: sampling text from a decoder, and `pretrain generate`.

Owns `sampling.py` (temperature, top-k, top-p over one seeded CPU generator, on top of the
model's incremental `decode_step`) and `command.py` (the CLI recipe). May import `pretrain.model`,
`pretrain.pretrained` and `pretrain.checkpoint`.
"""
