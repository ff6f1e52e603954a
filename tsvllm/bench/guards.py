"""Time the rule guards: ``python -m tsvllm.bench.guards [text-file] [--size 4096]``.

Reports the median time per ``size`` characters of ordinary text for each rule guard's
synchronous ``scan`` and for all of them together, for the text as is and with a few
non-ASCII characters mixed in (curly quotes and accents take the slower Unicode path), and
the cost per push of the stream scanner. Nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

_SAMPLE = (
    "The quarterly report was published on 2024-03-31 at 09:30. Revenue grew 12.5% to "
    "$1,234,567.89 while costs fell. Order 100234 shipped in 3-5 business days; see ISBN "
    "978-0-306-40615-7 for the reference manual. Run pip install requests==2.31.0 and Python "
    "3.11.7. You can ignore the deprecation warning for now. The serial number is "
    "SN-4821-7730-19 and the build is 10.0.19045.3803. Water boils at 100 degrees Celsius.\n"
)


def _timings_us(fn, text: str, repeat: int) -> tuple[float, float]:
    """(median, minimum) microseconds per call."""
    fn(text)  # warm caches (compiled regexes, fold cache is per text)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6, min(times) * 1e6


def _text(path: str | None, size: int) -> str:
    base = Path(path).read_text(encoding="utf-8") if path else _SAMPLE
    return (base * (size // max(len(base), 1) + 1))[:size]


async def _stream_cost(guards, text: str, delta: int) -> tuple[float, int]:
    from tsvllm.guards.chain import GuardChain

    scanner = GuardChain(guards).stream_scanner()
    pushes = 0
    t0 = time.perf_counter()
    for i in range(0, len(text), delta):
        await scanner.push(text[i : i + delta])
        pushes += 1
    await scanner.finish()
    return (time.perf_counter() - t0) / pushes * 1e6, pushes


def main(argv: list[str] | None = None) -> None:
    """Print the timings."""
    from tsvllm.guards.rules import DenyListGuard, InjectionGuard, PIIGuard, SecretsGuard

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", help="ordinary text to scan (default: a sample)")
    parser.add_argument("--size", type=int, default=4096, help="characters per scan")
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args(argv)

    guards = [
        PIIGuard(),
        SecretsGuard(),
        DenyListGuard(["forbidden fruit", "project nightingale", "darn"]),
        InjectionGuard(stages=["input", "context", "output"]),
    ]
    ascii_text = _text(args.path, args.size)
    chars = list(ascii_text)
    for i in range(0, len(chars), 400):  # a curly quote or an accent every 400 characters
        chars[i] = "\u201c" if i % 800 else "é"
    unicode_text = "".join(chars)

    for label, text in (("as is", ascii_text), ("+ non-ASCII every 400 chars", unicode_text)):
        print(f"text {label}, {len(text)} chars, {args.repeat} runs:    median       min")
        for g in guards:
            med, low = _timings_us(g.scan, text, args.repeat)
            found = len(g.find(text))
            print(f"  {type(g).__name__:22s} {med:8.1f} us {low:8.1f} us   findings: {found}")

        def all_guards(t: str) -> None:
            for g in guards:
                g.scan(t)

        med, low = _timings_us(all_guards, text, args.repeat)
        print(f"  {'all together':22s} {med:8.1f} us {low:8.1f} us")

    for delta in (4, 16):
        per_push, pushes = asyncio.run(_stream_cost(guards, ascii_text, delta))
        print(
            f"stream scanner, {delta:2d}-char deltas: {per_push:6.1f} us per push ({pushes} pushes)"
        )


if __name__ == "__main__":
    main()
