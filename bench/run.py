"""BMAS benchmark: the engine against a per-item loop and against tokenization alone.

    python bench/run.py            # full run (~5-10 min on 2 CPU cores)
    python bench/run.py --quick    # smaller Qwen-sized check and fewer repetitions (< 2 min)
    python bench/run.py --table default   # skip the Qwen-sized (152,064 x 3,584) random table
    python bench/run.py --table qwen --kernel-only   # the Qwen-sized scoring stage only (bench/gpu_check.sh)

The Qwen part also serves a Qwen2.5-VL-shaped checkpoint (bench/qwen_checkpoint.py; built once
into --qwen-checkpoint if absent, full size 152,064 x 3,584 bf16, 512 wide with --quick) through
`reward-server serve --model-path`, once with a float32 and once with a bfloat16 table, and
prints load time, first-request latency, e2e/tokenization, 512 one-item requests (aiohttp) vs one
512-item request, and the server's peak RSS. One server at a time: tables are never both alive.

It also prints the torch ops and the ops that would synchronise a GPU per 512-item batch, as 64
groups of 8 and as 512 groups of 1 (bench/opcount.py): the engine as configured on this device,
and one chunk per batch (the plan CUDA runs).

Every figure is the median of ``--reps`` repetitions on the same inputs in the same process; the
response texts change on every repetition of the end-to-end runs (a new salt), the ground truths
do not (they repeat across GRPO epochs, and the engine caches them). Scores are checked against the
per-item loop (an independent implementation) at 1e-5 before any figure is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import numpy as np
import opcount
import torch
import workloads
from baselines import PerItemLoop, tokenize_only
from report import HttpFigures, Row, print_table

from reward_server.embeddings.loader import load_table
from reward_server.engine.bmas import prepare_truth
from reward_server.engine.scorer import RewardEngine
from reward_server.engine.tokenization import encode_flat
from reward_server.rewards.registry import resolve_family
from reward_server.rewards.rules import prepare_ground_truth
from reward_server.rewards.scoring import PreparedItem
from reward_server.rewards.spans import answer_span


class PeakRss:
    """Peak resident memory above the level at entry, sampled every millisecond (CPU tensors
    are invisible to tracemalloc, so RSS is the honest measure)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    """Median wall time of ``reps`` calls, and the last result."""
    times, result = [], None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def engine_items(items: list[workloads.Item]) -> list[PreparedItem]:
    return [PreparedItem(i.response, prepare_ground_truth(resolve_family(i.task_type), i.ground_truth)) for i in items]


def check(engine_scores: list[float], reference: list[float], what: str) -> float:
    worst = max((abs(a - b) for a, b in zip(engine_scores, reference)), default=0.0)
    if worst > 1e-5:
        raise SystemExit(f"{what}: engine differs from the per-item loop by {worst:.2e} (> 1e-5)")
    return worst


def bench_texts(
    name: str, table, items: list[workloads.Item], reps: int, sample: int | None = None, budget_mib: int = 256
) -> Row:
    """Whole pipeline and scoring stage on a text workload with the table's own tokenizer."""
    engine = RewardEngine(table, memory_budget_bytes=budget_mib << 20)
    scoring = engine_items(items)
    open_idx = [i for i, it in enumerate(items) if it.task_type == "open_ended"]
    spans = [answer_span(items[i].response) for i in open_idx]
    truths = [scoring[i].truth.text for i in open_idx]
    loop = PerItemLoop(table.weight, table.tokenizer)
    pick = open_idx if sample is None else open_idx[:sample]
    k = len(pick)

    # (a) per-item loop: tokenization + scoring, then scoring alone on the same ids.
    t = time.perf_counter()
    pairs = loop.tokenize(spans[:k], truths[:k])
    loop_tok = time.perf_counter() - t
    loop_score, ref = loop.score_ids_best(pairs)
    loop_whole = (loop_tok + loop_score) * len(open_idx) / k  # per pair rate, scaled to the batch
    loop_score_all = loop_score * len(open_idx) / k

    # (b) tokenization alone: the response spans (truths are cached across epochs, as in the engine).
    tok, _ = timed(lambda: tokenize_only(table.tokenizer, spans), reps)

    # (c) engine: whole (texts in) with a warm truth cache, and scoring stage (ids in) cold and warm.
    with PeakRss() as mem:  # first call: allocates everything, builds truth states and blocks
        engine.score(scoring)  # ... and warms the truth cache: ground truths repeat across epochs
    whole, (results, _) = timed(lambda: engine.score(scoring), reps)
    worst = check([results[i].accuracy for i in pick], ref, name)

    flat, lengths = encode_flat(table, spans)
    sizes, keys, _ = _group_sizes(truths)
    truth_ids = [np.asarray(table.encode([t])[0], dtype=np.int64) for t in keys]

    def kernel(states) -> list[float]:
        return [f + b for f, b in engine.run_batch(engine.prepare_ids(flat, lengths, sizes, states))]

    cold, _ = timed(lambda: kernel([prepare_truth(ids) for ids in truth_ids]), reps)
    warm_states = [prepare_truth(ids) for ids in truth_ids]
    kernel(warm_states)
    warm, scores = timed(lambda: kernel(warm_states), reps)
    check([scores[open_idx.index(i)] for i in pick], ref, name)
    return Row(
        workload=name, items=len(items), bmas_pairs=len(open_idx), tokens=int(lengths.sum()),
        per_item_whole=loop_whole, per_item_score=loop_score_all, tokenize=tok, engine_whole=whole,
        engine_score_cold=cold, engine_score_warm=warm, peak_mib=mem.mib, max_abs_diff=worst,
        note="" if sample is None else f"per-item loop timed on {k} pairs, scaled",
    )


def _group_sizes(truths: list[str]) -> tuple[list[int], list[str], list[str]]:
    """Sizes of consecutive runs of equal truths (workloads keep a group's items together)."""
    sizes: list[int] = []
    keys: list[str] = []
    for t in truths:
        if keys and keys[-1] == t:
            sizes[-1] += 1
        else:
            keys.append(t)
            sizes.append(1)
    return sizes, keys, keys


def bench_qwen(table_default, items: list[workloads.Item], reps: int, sample: int) -> Row:
    """Scoring stage only on a Qwen2.5-VL-7B-sized random table (152,064 x 3,584, float32, seed 0).

    No Qwen tokenizer is downloaded: the workload's BERT token ids are mapped into the Qwen vocab
    by a fixed random injection, which keeps every repetition and overlap of the real texts.
    """
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(152_064, 3_584, generator=gen)
    weight /= weight.norm(dim=1, keepdim=True)
    if torch.cuda.is_available():  # the GPU path: table resident in bf16, matmuls out in float32
        weight = weight.to("cuda", torch.bfloat16)
    mapping = torch.randperm(152_064, generator=gen)[: table_default.vocab_size].numpy()
    table = _IdTable(weight)
    engine = RewardEngine(table)  # type: ignore[arg-type]
    spans = [answer_span(i.response) for i in items]
    flat_bert, lengths = encode_flat(table_default, spans)
    flat = mapping[flat_bert]
    sizes, keys, _ = _group_sizes([i.ground_truth for i in items])
    truth_ids = [mapping[np.asarray(table_default.encode([t])[0], dtype=np.int64)] for t in keys]
    per_pair_truth = [ids for ids, n in zip(truth_ids, sizes) for _ in range(n)]
    responses = np.split(flat, np.cumsum(lengths)[:-1])
    loop = PerItemLoop(weight)
    pairs = [(responses[i].tolist(), per_pair_truth[i].tolist()) for i in range(sample)]
    loop_score, ref = loop.score_ids_best(pairs)

    def kernel(states) -> list[float]:
        return [f + b for f, b in engine.run_batch(engine.prepare_ids(flat, lengths, sizes, states))]

    # Truth states are host arrays on every device: the device gets a batch's truth columns with it.
    cold, _ = timed(lambda: kernel([prepare_truth(ids) for ids in truth_ids]), reps)
    warm_states = [prepare_truth(ids) for ids in truth_ids]
    with PeakRss() as mem:
        kernel(warm_states)
    warm, scores = timed(lambda: kernel(warm_states), reps)
    if weight.dtype == torch.bfloat16:  # bf16 rows against the float32 loop: 1e-5 is a float32 promise
        worst = max(abs(a - b) for a, b in zip(scores[:sample], ref))
        assert worst < 2e-2, worst
    else:
        worst = check(scores[:sample], ref, "qwen")
    return Row(
        workload="grpo, qwen-sized table", items=len(items), bmas_pairs=len(items), tokens=int(lengths.sum()),
        per_item_whole=None, per_item_score=loop_score * len(items) / sample, tokenize=None, engine_whole=None,
        engine_score_cold=cold, engine_score_warm=warm, peak_mib=mem.mib, max_abs_diff=worst,
        note=f"ids in (no tokenizer); per-item loop timed on {sample} pairs, scaled",
    )


class _IdTable:
    """The slice of EmbeddingTable the kernel reads, for a random table without a tokenizer."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.zero_rows = weight.norm(dim=1) == 0
        self.device = weight.device
        self.tokenizer = None
        self.vocab_size = weight.shape[0]


# ----------------------------------------------------------------------------- end to end (HTTP)


@contextlib.contextmanager
def served(extra_args: list[str] | None = None, info: dict | None = None):
    """`reward-server serve` in its own process, as deployed: a server thread inside this process
    would share the client's GIL and measure the two together. ``info`` receives the pid and the
    seconds from spawn to ready (table load included)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_server", "serve", "--port", str(port), "--log-level", "warning",
         *(extra_args or [])],
    )
    url = f"http://127.0.0.1:{port}"
    spawned = time.perf_counter()
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the reward server exited during start-up")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the reward server did not become ready")
            time.sleep(0.2)
        if info is not None:
            info.update(pid=proc.pid, ready_s=time.perf_counter() - spawned)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def http_burst(url: str, pid: int, tokenize: Callable[[list[str]], object], reps: int, prompts: int) -> HttpFigures:
    """One N-item request, then N concurrent one-item requests (aiohttp), ``reps`` times each,
    interleaved, through the server at ``url``; every figure comes from this one run.

    Truths are cached by a warm-up request first (they repeat across epochs); responses are fresh on
    every repetition (the engine caches no responses), the same for both parts. The server's CPU (/proc/PID/stat) is read around each part: what the burst
    costs above the batched request, divided by N, is the per-request CPU of the HTTP path.
    """
    with httpx.Client(base_url=url, timeout=600) as client:
        warm = workloads.grpo_open_ended(prompts=prompts, salt=10_000)
        client.post("/score", json={"items": [i.__dict__ for i in warm]}).raise_for_status()
        big, many, toks, extra_cpu = [], [], [], []
        for rep in range(reps):
            items = workloads.grpo_open_ended(prompts=prompts, salt=rep + 1)  # fresh responses each time
            spans = [answer_span(i.response) for i in items]
            toks.append(timed(lambda s=spans: tokenize(s), 1)[0])
            body = json.dumps({"items": [i.__dict__ for i in items]}).encode()
            cpu, t = _cpu_s(pid), time.perf_counter()
            client.post("/score", content=body, headers={"content-type": "application/json"}).raise_for_status()
            big.append(time.perf_counter() - t)
            big_cpu = _cpu_s(pid) - cpu
            # The same texts as one-item requests: equal engine work, so the CPU difference is HTTP's.
            bodies = [json.dumps({"items": [i.__dict__]}).encode() for i in items]
            seconds, burst_cpu = asyncio.run(_aiohttp_post_many(url, bodies, lambda: _cpu_s(pid)))
            many.append(seconds)
            extra_cpu.append((burst_cpu - big_cpu) / len(bodies))  # server CPU above the batched path
    return HttpFigures(
        items=prompts * 8, big_s=statistics.median(big), many_s=statistics.median(many),
        tokenize_s=statistics.median(toks), per_request_cpu_us=statistics.median(extra_cpu) * 1e6,
    )


def bench_http(table, reps: int, prompts: int) -> HttpFigures:
    """The default table through the real server process (``reward-server serve``)."""
    info: dict = {}
    with served(None, info) as url:
        return http_burst(url, info["pid"], lambda spans: tokenize_only(table.tokenizer, spans), reps, prompts)


async def _aiohttp_post_many(url: str, bodies: list[bytes], cpu: Callable[[], float]) -> tuple[float, float]:
    """Every body as its own concurrent POST through one aiohttp session (no connection limit),
    as OpenRLHF/slime send one request per sample. Returns the wall time of the burst and the
    server CPU (``cpu()`` before and after) it cost.

    The connections are opened first with one ``GET /healthz`` each, a moment before the burst: a
    warm-up burst of scoring requests can take seconds on a loaded machine, and a connection idle
    past uvicorn's keep-alive (5 s) is closed under the client's feet.
    """
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(body: bytes) -> None:
            async with session.post(url + "/score", data=body, headers={"content-type": "application/json"}) as r:
                if r.status != 200:
                    raise RuntimeError(await r.text())
                await r.read()

        async def hello() -> None:
            async with session.get(url + "/healthz") as r:
                await r.read()

        await asyncio.gather(*(hello() for _ in bodies))  # open one connection per request
        before, started = cpu(), time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - started, cpu() - before


def _peak_rss_mib(pid: int) -> float:
    """The server process's peak resident set (VmHWM) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the server process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_qwen_http(directory: Path, dtype: str, reps: int, prompts: int) -> dict[str, float]:
    """The Qwen2.5-VL-shaped checkpoint end to end through `reward-server serve --model-path`:
    load time, first-request latency, one big request vs the tokenization floor (same Qwen
    tokenizer, same spans), one-item requests, peak RSS of the server."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    info: dict = {}
    with served(["--model-path", str(directory), "--dtype", dtype], info) as url:
        first = workloads.grpo_open_ended(prompts=1, salt=20_000)
        t = time.perf_counter()
        httpx.post(url + "/score", json={"items": [i.__dict__ for i in first]}, timeout=600).raise_for_status()
        first_s = time.perf_counter() - t
        figures = http_burst(
            url, info["pid"], lambda spans: tokenizer.encode_batch(spans, add_special_tokens=False), reps, prompts
        )
        rss = _peak_rss_mib(info["pid"])
    return {"dtype": dtype, "ready_s": info["ready_s"], "first_request_ms": first_s * 1e3, "items": figures.items,
            "big_items_per_s": figures.items / figures.big_s, "e2e_over_tokenization": figures.big_s / figures.tokenize_s,
            "many_items_per_s": figures.items / figures.many_s, "many_over_big": figures.big_s / figures.many_s,
            "peak_rss_mib": rss, "per_request_cpu_us": figures.per_request_cpu_us}


def print_qwen_http(results: list[dict[str, float]]) -> None:
    print("\nQwen2.5-VL-shaped checkpoint via `reward-server serve --model-path` (HTTP, separate process)")
    head = f"{'table dtype':<12}{'ready s':>9}{'1st req ms':>11}{'items/s':>9}{'e2e/tok':>9}" \
           f"{'1-item items/s':>15}{'1-item/big':>11}{'CPU us/req':>11}{'peak RSS MiB':>13}"
    print(head)
    for r in results:
        print(f"{r['dtype']:<12}{r['ready_s']:>9.1f}{r['first_request_ms']:>11.0f}{r['big_items_per_s']:>9.0f}"
              f"{r['e2e_over_tokenization']:>9.2f}{r['many_items_per_s']:>15.0f}{r['many_over_big']:>11.2f}"
              f"{r['per_request_cpu_us']:>11.0f}"
              f"{r['peak_rss_mib']:>13.0f}")
    print("target: 1-item/big >= 0.6 (512 concurrent one-item requests vs one 512-item request, items/s)")
    if len(results) == 2:
        print(f"bfloat16 / float32 items/s (one big request): "
              f"{results[1]['big_items_per_s'] / results[0]['big_items_per_s']:.2f}")


def bench_ops(table) -> None:
    """Torch ops and synchronising ops per 512-item batch (bench/opcount.py), counted on this thread
    with one kernel slice: the engine as configured here (cache-sized chunks on CPU: ops follow the
    bytes), then one chunk per batch, the CUDA plan (chunk = budget). The budget of that line is
    512 MiB because rows here are float32: it holds what 256 MiB holds with CUDA's bf16 rows."""
    print("\ntorch ops per warm 512-item batch (engine.score, kernel_threads=1; syncs = ops that would "
          "synchronise a GPU)")
    device = table.device.type
    opcount.print_ops(opcount.ops_per_batch(table), f"engine as configured on {device}")
    budget = 512 << 20 if table.dtype == torch.float32 else 256 << 20
    opcount.print_ops(opcount.ops_per_batch(table, memory_budget_bytes=budget, chunk_bytes=budget),
                      f"one chunk per batch ({budget >> 20} MiB, CUDA plan)")
    print("target: < 300 ops and < 5 syncs per batch, 512 groups of 1 <= 1.2x the ops of 64 groups of 8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller per-item samples")
    parser.add_argument("--table", choices=["all", "default", "qwen"], default="all")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--kernel-only", action="store_true",
                        help="skip the HTTP servers and the op counts: scoring stages only")
    parser.add_argument("--qwen-checkpoint", type=Path, default=None,
                        help="built by bench/qwen_checkpoint.py if absent (default "
                             "/tmp/mixed-reward-qwen25vl-DIM; full size: 2.2 GB on disk)")
    parser.add_argument("--qwen-dim", type=int, default=None,
                        help="table width of a checkpoint to build (default 3584; --quick: 512)")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    torch.manual_seed(0)
    table = load_table(None, device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"default table {table.vocab_size}x{table.dim}; reps={reps} (median)", flush=True)
    rows: list[Row] = []
    grpo = workloads.grpo_open_ended()
    if args.table in ("all", "default"):
        rows.append(bench_texts("grpo 64x8, default table", table, grpo, reps, sample=128 if args.quick else None))
        print(rows[-1].workload, "done", flush=True)
        rows.append(bench_texts("long text 2000/500 tok", table, workloads.long_text(items=64 if args.quick else 256),
                                reps, sample=16 if args.quick else 32))
        print(rows[-1].workload, "done", flush=True)
        rows.append(bench_texts("long text, 16 MiB budget", table, workloads.long_text(items=64 if args.quick else 256),
                                reps, sample=8, budget_mib=16))
        print(rows[-1].workload, "done", flush=True)
        rows.append(bench_texts("mixed 5 task types", table, workloads.mixed(), reps))
        print(rows[-1].workload, "done", flush=True)
    if args.table in ("all", "qwen"):
        rows.append(bench_qwen(table, grpo, max(2, reps - 2), sample=8 if args.quick else 24))
        print(rows[-1].workload, "done", flush=True)
    http = bench_http(table, reps, 64) if args.table in ("all", "default") and not args.kernel_only else None
    print_table(rows, http)
    if not args.kernel_only:
        bench_ops(table)
    if args.table in ("all", "qwen") and not args.kernel_only:
        import qwen_checkpoint

        dim = args.qwen_dim or (512 if args.quick else qwen_checkpoint.QWEN_DIM)
        directory = args.qwen_checkpoint or Path(f"/tmp/mixed-reward-qwen25vl-{dim}")
        if not (directory / "model.safetensors.index.json").is_file():
            qwen_checkpoint.build_qwen_checkpoint(directory, dim=dim)
        del table, grpo
        print_qwen_http([bench_qwen_http(directory, d, reps, 64) for d in ("float32", "bfloat16")])


if __name__ == "__main__":
    main()
