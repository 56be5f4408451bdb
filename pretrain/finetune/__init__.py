"""Fine-tuning a pretrained model on a labelled task, and scoring it: `pretrain finetune`,
`pretrain evaluate --task` and `pretrain make-task`.

Owns the task's data (labelled records read through fsspec, tokenized with the model's
tokenizer), the task models (classification heads; seq2seq uses the families as they are), the
example loader, the task metrics and the task builders on the bundled corpora. Reuses the
trainer, the engine, checkpoints and tracking; imports every stage above it in
tests/test_layout.py's order, and nothing imports it but `pretrain.cli`.
"""
