"""The reproduction scripts' experiments: every variant the Transformer-XL ablation derives by
overrides is a valid experiment, and only the position encoding, the memory and (for the extra
variant) the reading order differ between them."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from benchmarks.transformer_xl_ablation import DATASETS, VARIANTS
from data_pipeline.configuration import load_config
from pretrain.config import ExperimentConfig


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_ablation_variants_differ_only_in_what_is_ablated(dataset: str) -> None:
    experiment = DATASETS[dataset].experiment
    configs = {
        variant: load_config(ExperimentConfig, experiment, [*overrides, "train.seed=1"])
        for variant, (_, overrides) in VARIANTS.items()
    }
    a = configs["a"]
    assert a.model.position == "relative" and a.model.mem_len == a.train.seq_len
    assert a.data.order == "contiguous"  # every variant reads the same tokens in the same order
    expected = {
        "b": {("model", "mem_len"): (a.train.seq_len, 0)},
        "c": {
            ("model", "mem_len"): (a.train.seq_len, 0),
            ("model", "position"): ("relative", "learned"),
        },
        "d": {
            ("model", "mem_len"): (a.train.seq_len, 0),
            ("model", "position"): ("relative", "learned"),
            ("data", "order"): ("contiguous", "shuffled"),
        },
    }
    for variant, changes in expected.items():
        base, other = asdict(a), asdict(configs[variant])
        found = {
            (section, key): (base[section][key], other[section][key])
            for section in base
            if isinstance(base[section], dict)
            for key in base[section]
            if base[section][key] != other[section][key]
        }
        assert found == changes, variant
        assert other["train"] == base["train"]  # same steps, batch, schedule and seed
