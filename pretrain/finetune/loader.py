"""Examples in a seeded order, a step's micro-batches per rank, and an exact resumable state.

The training order is an endless sequence of epochs, each a permutation of the examples drawn
from (seed, epoch) alone. A step reads the next ``world_size x grad_accum x micro_batch_size``
places of it: rank r's micro-batch k holds places ``position + (k * world_size + r) * B + b``.
So the whole state is one global position, the same on every rank: a resumed run reads exactly
what the interrupted one would have read next, at any world size (`checkpoint.state.load`
takes a ``global`` state as it is).

Validation splits its examples into batches that every rank runs in equal number (ZeRO-3
gathers parameters in every forward, so no rank may run one fewer); the last ones are filled
with rows that carry no target.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pretrain.config import Family
from pretrain.finetune.examples import Example, collate
from pretrain.loader import Batch, LoaderStateError

STATE_KIND = "finetune_examples"


class ExampleLoader:
    """The trainer's loader (`pretrain.train.trainer.StepLoader`) over in-memory examples."""

    def __init__(
        self,
        examples: list[Example],
        *,
        kind: str,
        family: Family,
        pad_id: int,
        eos_id: int,
        rank: int,
        world_size: int,
        micro_batch_size: int,
        grad_accum: int,
        seed: int,
        fingerprint: str,
    ) -> None:
        self.examples = examples
        self.kind, self.family, self.pad_id, self.eos_id = kind, family, pad_id, eos_id
        self.rank, self.world_size = rank, world_size
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.seed = seed
        self._fingerprint = fingerprint
        self.position = 0
        self._orders: dict[int, np.ndarray] = {}

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {
                epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
            }
        return self._orders[epoch]

    def example_at(self, place: int) -> Example:
        epoch, offset = divmod(place, len(self.examples))
        return self.examples[int(self._order(epoch)[offset])]

    def next_step(self) -> list[Batch]:
        size, world = self.micro_batch_size, self.world_size
        batches = []
        for k in range(self.grad_accum):
            first = self.position + (k * world + self.rank) * size
            rows: list[Example | None] = [self.example_at(first + b) for b in range(size)]
            batches.append(collate(rows, self.kind, self.family, self.pad_id, self.eos_id))
        self.position += self.grad_accum * world * size
        return batches

    @property
    def epoch(self) -> float:
        return self.position / len(self.examples)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": STATE_KIND,
            "global": True,
            "position": self.position,
            "seed": self.seed,
            "fingerprint": self._fingerprint,
            "num_streams": self.world_size * self.micro_batch_size * self.grad_accum,
        }

    def load_state_dict(self, state: dict[str, Any], *, allow_new_streams: bool = False) -> None:
        if state.get("kind") != STATE_KIND:
            raise LoaderStateError("the checkpoint's loader state is not a fine-tuning run's")
        if state["fingerprint"] != self._fingerprint or state["seed"] != self.seed:
            raise LoaderStateError(
                "the checkpoint was fine-tuned on other training examples (or another seed): "
                "its position in their order means nothing here. Use a new checkpoint.dir."
            )
        self.position = int(state["position"])

    def close(self) -> None:
        pass


def validation_batches(
    examples: list[Example],
    *,
    kind: str,
    family: Family,
    pad_id: int,
    eos_id: int,
    rank: int,
    world_size: int,
    batch_size: int,
) -> Iterator[tuple[Batch, list[Example | None]]]:
    """This rank's share of ``examples`` in batches (and the examples of each batch): as many
    batches on every rank, filler rows (None) where the examples run out."""
    per_round = batch_size * world_size
    rounds = -(-len(examples) // per_round)
    for r in range(rounds):
        first = r * per_round + rank * batch_size
        rows = [
            examples[i] if i < len(examples) else None for i in range(first, first + batch_size)
        ]
        yield collate(rows, kind, family, pad_id, eos_id), rows
