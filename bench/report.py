"""Printing the benchmark table: pairs per second, ratios against the baselines, the issue's targets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One workload's timings (seconds for the whole batch; None where not measured)."""

    workload: str
    items: int
    bmas_pairs: int
    tokens: int
    per_item_whole: float | None
    per_item_score: float
    tokenize: float | None
    engine_whole: float | None
    engine_score_cold: float
    engine_score_warm: float
    peak_mib: float
    max_abs_diff: float
    note: str = ""


@dataclass
class HttpFigures:
    """One server, one run: an N-item request against N concurrent one-item requests (medians, s)."""

    items: int
    big_s: float
    many_s: float
    tokenize_s: float
    per_request_cpu_us: float  # server CPU per one-item request above the batched path

    @property
    def many_over_big(self) -> float:
        """items/s of the one-item requests over items/s of the one big request."""
        return self.big_s / self.many_s


def _rate(pairs: int, seconds: float | None) -> str:
    return "-" if not seconds else f"{pairs / seconds:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.1f}x"


def print_table(rows: list[Row], http: HttpFigures | None) -> None:
    """Pairs/s of each stage, then the ratios the issue sets targets on, then HTTP figures."""
    print()
    head = (f"{'workload':<28}{'pairs':>6}{'tokens':>9} | {'loop all':>9}{'loop score':>11}{'tok only':>9}"
            f"{'eng all':>9}{'eng score':>10}{'(cold)':>9} | pairs/s")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.workload:<28}{r.bmas_pairs:>6}{r.tokens:>9} | {_rate(r.bmas_pairs, r.per_item_whole):>9}"
              f"{_rate(r.bmas_pairs, r.per_item_score):>11}{_rate(r.bmas_pairs, r.tokenize):>9}"
              f"{_rate(r.bmas_pairs, r.engine_whole):>9}{_rate(r.bmas_pairs, r.engine_score_warm):>10}"
              f"{_rate(r.bmas_pairs, r.engine_score_cold):>9} |")
    print()
    head = (f"{'workload':<28}{'score: eng/loop':>16}{'(cold)':>8}{'all: eng/loop':>15}{'eng/tok time':>14}"
            f"{'peak MiB':>10}{'max|diff|':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.workload:<28}{_ratio(r.per_item_score, r.engine_score_warm):>16}"
              f"{_ratio(r.per_item_score, r.engine_score_cold):>8}{_ratio(r.per_item_whole, r.engine_whole):>15}"
              f"{_ratio(r.engine_whole, r.tokenize):>14}{r.peak_mib:>10.1f}{r.max_abs_diff:>11.1e}"
              + (f"   ({r.note})" if r.note else ""))
    if http is not None:
        print()
        head = f"{'end to end (real uvicorn server)':<44}{'seconds':>9}{'items/s':>9}{'tok only s':>11}{'e2e/tok':>9}"
        print(head)
        print("-" * len(head))
        n = http.items
        for name, seconds in ((f"POST /score, one {n}-item request", http.big_s),
                              (f"POST /score, {n} concurrent 1-item requests", http.many_s)):
            print(f"{name:<44}{seconds:>9.3f}{n / seconds:>9,.0f}{http.tokenize_s:>11.3f}{seconds / http.tokenize_s:>8.2f}x")
        print(f"{'one-item requests / one big request (items/s)':<44}{http.many_over_big:>9.2f}")
        print(f"{'server CPU per one-item request (us)':<44}{http.per_request_cpu_us:>9.0f}")
    print()
    print("targets: score eng/loop >= 20x (grpo, both tables); all eng/loop >= 5x (grpo, default);")
    print("         e2e 512-item request <= 1.5x tok only; 512 one-item requests (aiohttp) >= 0.6 of one")
    print("         512-item request's items/s, default table and Qwen2.5-VL-shaped checkpoint.")
    print("'eng score' = token ids in, scores out, warm truth cache (truths repeat across epochs);")
    print("'(cold)' = same with every truth's state (distinct ids, counts) built inside the timed call.")
