"""Shared by the trainer tests: a real byte-level BPE tokenizer built in memory (no download).

Byte-level, so decode(encode(text)) == text for any text, tags included, as with the Qwen and
Llama tokenizers the trainers are used with; ChatML special tokens and template like Qwen's.
"""

from __future__ import annotations

import functools

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


def prompt_counts(url: str, prompt_id: str) -> tuple[int, int]:
    """``(n, successes)`` of one prompt's difficulty posterior, read back from the service: what the
    VADE sampler will sample from, so the proof that a trainer's prompt ids arrived."""
    response = httpx.get(f"{url}/v1/prompts/{prompt_id}", timeout=30)
    response.raise_for_status()
    body = response.json()
    return body["n"], body["successes"]


def test_byte_tokenizer_round_trips_tags_and_special_tokens():
    tok = byte_tokenizer()
    text = "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n<think>a</think><answer>yes</answer><|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids, skip_special_tokens=True).endswith("<answer>yes</answer>")
