"""init_weights() on a model built under deepspeed.zero.Init, over 2 real gloo ranks.

Only this test imports DeepSpeed; the model code receives the gather context as an argument.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from tests.helpers.distributed import run_distributed


def _build_partitioned_and_gather() -> dict[str, torch.Tensor]:
    """Runs on each rank: build under zero.Init, initialise, gather every parameter whole."""
    import deepspeed

    from pretrain.model import FAMILIES
    from tests.model.common import tiny_config

    config = tiny_config(position="relative", mem_len=4, family="encoder_decoder")
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path={"train_batch_size": 2}):
        model = FAMILIES[config.family](config)
    params = dict(model.named_parameters())
    # ZeRO-3 leaves each rank an empty placeholder; the real shards live in p.ds_tensor.
    partitioned = all(p.data.numel() < getattr(p, "ds_numel", 0) for p in params.values())
    gather = functools.partial(deepspeed.zero.GatheredParameters, modifier_rank=0)
    torch.manual_seed(0)
    model.init_weights(gather=gather)
    with deepspeed.zero.GatheredParameters(list(params.values())):
        whole = {name: p.detach().clone() for name, p in params.items()}
    whole["_partitioned"] = torch.tensor(partitioned)
    return whole


@pytest.mark.distributed
def test_init_weights_under_zero_init_matches_an_ordinary_model(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed", reason="deepspeed is the engine's dependency")
    from pretrain.model import FAMILIES
    from tests.model.common import tiny_config

    run = run_distributed(
        "tests.model.test_zero_init:_build_partitioned_and_gather", workdir=tmp_path, nproc=2
    )
    config = tiny_config(position="relative", mem_len=4, family="encoder_decoder")
    torch.manual_seed(0)
    reference = FAMILIES[config.family](config)
    torch.manual_seed(0)
    reference.init_weights()
    expected = dict(reference.named_parameters())
    for rank in run.ranks:
        got = rank.value
        assert got.pop("_partitioned").item(), "parameters were not partitioned across ranks"
        assert got.keys() == expected.keys()
        for name, value in got.items():
            # Rank 0 initialised each gathered parameter with the same RNG stream as the
            # ordinary model, and its values were scattered to both ranks.
            assert torch.equal(value, expected[name].detach()), name
    norms = [v for k, v in got.items() if k.endswith("norm_attn.weight")]
    assert norms and all(bool((n == 1).all()) for n in norms)
