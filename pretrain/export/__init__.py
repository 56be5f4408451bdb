"""Export: a checkpoint written as a standalone model, and `pretrain export`.

Owns `hf.py` (Hugging Face GPT-2 / Llama layouts) and `command.py` (the CLI recipe). The native
format itself is `pretrain.pretrained` (`load_pretrained`), kept at the top because its import
path is public. May import `pretrain.checkpoint`, `pretrain.pretrained`, `pretrain.tracking`.
"""
