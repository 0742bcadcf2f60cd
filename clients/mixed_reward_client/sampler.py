"""Prompt samplers that ask the reward service which prompts to roll out next (VADE).

The service keeps a Beta posterior of the policy's success rate per ``prompt_id`` (updated from
every scored item that carries one) and answers ``POST /v1/sample`` with the prompts whose next
GRPO group is most likely to have reward variance. Two forms here, both torch-free:

* :class:`VadeSampler`: plain Python, ``next_batch()`` -> prompt ids / ``next_indices()`` ->
  dataset positions. Wrap it in any trainer (TRL, OpenRLHF: pick the rows, build the batch).
* :class:`VerlVadeSampler`: an index sampler for verl's train dataloader (``RayPPOTrainer(...,
  train_sampler=...)``; ``StatefulDataLoader`` iterates it and checkpoints it through
  ``state_dict``/``load_state_dict``).

For the posterior to learn, the items the trainer scores must carry the same ``prompt_id``
(verl: ``extra_info["prompt_id"]``; ``/score``: the item field; OpenRLHF: the label object).

The service keeps that state per training job: pass the job the trainer scores as (``job=``, the
``job`` of its ``/score`` requests or its token's job), so that the sampler reads the posteriors its
own rollouts feed and not those of another run that uses the same prompt ids. Without it the
sampler acts as its token's job, else ``default`` (what scoring without a job uses too).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx


class VadeSampler:
    """Ask the service for ``batch_size`` distinct prompt ids of a registered pool per step.

    The pool (all of ``prompt_ids``) is registered once, on the first request, so each step sends
    only ``{"pool", "k"}``. ``seed`` makes step ``i`` draw with seed ``seed + i`` (repeatable runs).
    ``job`` names the training job whose posteriors and pool are used (``?job=`` on every call).
    """

    def __init__(
        self,
        url: str,
        prompt_ids: Sequence[str | int],
        batch_size: int,
        *,
        pool: str = "train",
        token: str | None = None,
        job: str | None = None,
        seed: int | None = None,
        timeout: float = 60.0,
        client: httpx.Client | None = None,
    ) -> None:
        if batch_size < 1 or batch_size > len(prompt_ids):
            raise ValueError(f"batch_size={batch_size} must be between 1 and the {len(prompt_ids)} prompts")
        self.prompt_ids = [str(p) for p in prompt_ids]
        self._position = {pid: i for i, pid in enumerate(self.prompt_ids)}
        if len(self._position) != len(self.prompt_ids):
            raise ValueError("prompt_ids must be distinct")
        self.batch_size = batch_size
        self.pool = pool
        self.job = job
        self._params = {"job": job} if job is not None else {}
        self.seed = seed
        self.step = 0
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers)
        self._registered = False

    def register(self) -> None:
        answer = self._client.put(f"/v1/pools/{self.pool}", json={"prompt_ids": self.prompt_ids}, params=self._params)
        answer.raise_for_status()
        self._registered = True

    def next_batch(self, k: int | None = None) -> list[str]:
        """The next ``k`` (default ``batch_size``) distinct prompt ids, most informative first."""
        if not self._registered:
            self.register()
        body: dict[str, Any] = {"pool": self.pool, "k": k or self.batch_size}
        if self.seed is not None:
            body["seed"] = self.seed + self.step
        answer = self._client.post("/v1/sample", json=body, params=self._params)
        answer.raise_for_status()
        self.step += 1
        return list(answer.json()["prompt_ids"])

    def next_indices(self, k: int | None = None) -> list[int]:
        """Positions in ``prompt_ids`` (dataset rows) of the next batch."""
        return [self._position[pid] for pid in self.next_batch(k)]

    def close(self) -> None:
        self._client.close()


class VerlVadeSampler(VadeSampler):
    """Index sampler for verl's ``StatefulDataLoader`` (``RayPPOTrainer(train_sampler=...)``).

    verl 0.9.1 builds its train sampler in ``create_rl_sampler`` (random or sequential, no config
    hook for a custom class), and accepts one through ``RayPPOTrainer``'s ``train_sampler``
    argument, which it hands to ``StatefulDataLoader(sampler=...)``. An epoch is
    ``len(dataset) // batch_size`` batches; each batch is one ``/v1/sample`` call, made when the
    dataloader asks for that batch's first index (with ``dataloader_num_workers > 0`` verl
    prefetches, so the posteriors used are a step or two old: harmless for difficulty).
    ``prompt_ids`` defaults to the dataset positions as strings, so ``extra_info["prompt_id"]``
    must then be the row index (``str`` or ``int``). ``job=`` (with the other keywords of
    :class:`VadeSampler`) names the training job whose state the run's rewards feed.
    """

    def __init__(self, dataset: Sequence[Any], url: str, batch_size: int, *,
                 prompt_ids: Sequence[str | int] | None = None, **kwargs: Any) -> None:
        ids = prompt_ids if prompt_ids is not None else [str(i) for i in range(len(dataset))]
        if len(ids) != len(dataset):
            raise ValueError(f"{len(ids)} prompt_ids for a dataset of {len(dataset)} rows")
        super().__init__(url, ids, batch_size, **kwargs)

    def __len__(self) -> int:
        return (len(self.prompt_ids) // self.batch_size) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        for _ in range(len(self.prompt_ids) // self.batch_size):
            yield from self.next_indices()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state.get("step", 0))
