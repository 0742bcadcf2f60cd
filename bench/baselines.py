"""The two yardsticks the engine is measured against, run on the same inputs in the same process.

(a) ``PerItemLoop``: the straightforward BMAS implementation — one pair at a time: tokenize the
    response and the truth, gather their rows, normalise, matmul, max, mean. It is also the
    independent implementation the benchmark checks the engine's scores against (1e-5).
(b) ``tokenize_only``: one ``encode_batch`` call over the same response texts with the same
    tokenizer, nothing else: the floor the engine cannot beat (it must tokenize every response).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer


class PerItemLoop:
    """BMAS one pair at a time on a raw (V, d) table."""

    def __init__(self, weight: torch.Tensor, tokenizer: Tokenizer | None = None) -> None:
        self.weight = weight
        self.tokenizer = tokenizer

    def tokenize(self, responses: Sequence[str], truths: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids of every (response, truth) pair, one ``encode`` call per text."""
        assert self.tokenizer is not None
        enc = self.tokenizer.encode
        return [(enc(r, add_special_tokens=False).ids, enc(t, add_special_tokens=False).ids)
                for r, t in zip(responses, truths)]

    def score_ids(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[float]:
        """BMAS (sum reduction) of each (response ids, truth ids) pair."""
        scores = []
        for response, truth in pairs:
            if not response or not truth:
                scores.append(0.0)
                continue
            r = F.normalize(self.weight[torch.tensor(response, device=self.weight.device)].float(), dim=1)
            g = F.normalize(self.weight[torch.tensor(truth, device=self.weight.device)].float(), dim=1)
            sim = r @ g.T
            scores.append(float(sim.amax(dim=1).mean() + sim.amax(dim=0).mean()))
        return scores

    def score_ids_best(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[float, list[float]]:
        """Seconds and scores of ``score_ids`` with the faster of 1 thread and torch's default count.

        Fair to the loop: its matmuls are big enough for intra-op threads on an idle machine, but on a
        busy one the thread synchronisation can cost more than it saves.
        """
        default = torch.get_num_threads()
        best, scores = float("inf"), []
        for threads in sorted({1, default}):
            torch.set_num_threads(threads)
            try:
                started = time.perf_counter()
                scores = self.score_ids(pairs)
                best = min(best, time.perf_counter() - started)
            finally:
                torch.set_num_threads(default)
        return best, scores

    def score_texts(self, responses: Sequence[str], truths: Sequence[str]) -> list[float]:
        """The whole loop: texts in, scores out."""
        return self.score_ids(self.tokenize(responses, truths))


def tokenize_only(tokenizer: Tokenizer, texts: Sequence[str]) -> int:
    """Texts to token ids, one batch call over ``texts``: the floor any BMAS scorer pays per step
    (the ids are read out of the Rust encodings, as any user of them must); returns the token count."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return sum(len(e.ids) for e in encode(list(texts), add_special_tokens=False))
