"""Shared by the trainer tests: a real byte-level BPE tokenizer built in memory (no download).

Byte-level, so decode(encode(text)) == text for any text, tags included, as with the Qwen and
Llama tokenizers the trainers are used with; ChatML special tokens and template like Qwen's.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "<think>The picture shows a cat.</think><answer>yes</answer>",
    "<think>Count the bars.</think><answer>12,000</answer> <answer>no</answer> (A) [10, 20, 30, 40]",
    "Is there a cat in the image? Answer yes or no. Describe the image. a cat sitting on a mat",
]


@functools.lru_cache(maxsize=1)
def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def prompt_counts(url: str, prompt_id: str, job: str | None = None) -> tuple[int, int]:
    """``(n, successes)`` of one prompt's difficulty posterior, read back from the service: what the
    VADE sampler will sample from, so the proof that a trainer's prompt ids arrived (and, with
    ``job``, that they arrived as that training job's)."""
    response = httpx.get(f"{url}/v1/prompts/{prompt_id}", params={"job": job} if job else None, timeout=30)
    response.raise_for_status()
    body = response.json()
    return body["n"], body["successes"]


def prompt_missing(url: str, prompt_id: str, job: str | None = None) -> bool:
    """Whether the job (default: ``default``) has no posterior for the prompt at all."""
    response = httpx.get(f"{url}/v1/prompts/{prompt_id}", params={"job": job} if job else None, timeout=30)
    return response.status_code == 404


# --- one service, two policies and jobs (SPEC §15) ---------------------------------------------

POLICY_B = "policy-b"  # the second table's name on the tenancy server
JOB = "exp2"
# An open-ended answer in the words of policy-b's tokenizer ("w5" is one token there, several word
# pieces in the default table's): its reward says which table scored it.
W_THINK = "<think>look</think>"
W_RESPONSE = W_THINK + "<answer>w5 w6 w7</answer>"
W_TRUTH = "w5 w8 w9"

# The new families through every adapter: a math item (math-verify equivalence) and a temporal
# grounding item (tIoU), each fully right and well formatted: reward 2, accuracy 1.
MATH_TRUTH = "\\frac{1}{2}"
MATH_RESPONSE = W_THINK + "<answer>\\boxed{0.5}</answer>"
TEMPORAL_TRUTH = {"segment": [2.0, 6.0]}
TEMPORAL_RESPONSE = W_THINK + "<answer>from 2 to 6 seconds</answer>"


@contextmanager
def tenancy_server(default_table: Any, directory: Path) -> Iterator[Any]:
    """The service with a second named table, ``policy-b`` (a tiny checkpoint with its own
    tokenizer and rows), and difficulty state kept per job."""
    from checkpoints import build_decoder_checkpoint
    from serving import running_server

    checkpoint = build_decoder_checkpoint(directory / POLICY_B, vocab=64, dim=16, seed=5)
    with running_server(default_table, table=[f"{POLICY_B}={checkpoint.path}"],
                        state_path=str(directory / "state.db")) as srv:
        yield srv


def direct_rewards(url: str, items: list[dict[str, Any]], **fields: Any) -> list[float]:
    """What ``POST /score`` gives ``items`` with top-level ``fields`` (``model=...``): the reference
    an adapter's rewards are compared with."""
    response = httpx.post(f"{url}/score", json={"items": items, **fields}, timeout=120)
    response.raise_for_status()
    return [row["reward"] for row in response.json()["results"]]


def test_byte_tokenizer_round_trips_tags_and_special_tokens():
    tok = byte_tokenizer()
    text = "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n<think>a</think><answer>yes</answer><|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids, skip_special_tokens=True).endswith("<answer>yes</answer>")
