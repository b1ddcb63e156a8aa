"""Latency of TFLite models with the LiteRT interpreter (XNNPACK by default)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from acsl_tf import _validation
from acsl_tf.export import tflite as _tflite


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Per-``invoke()`` latency statistics, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    runs: int
    threads: int
    clock: str = "wall"

    @classmethod
    def from_times(cls, seconds, threads: int, clock: str = "wall") -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        return cls(
            median_ms=float(np.median(ms)),
            p90_ms=float(np.percentile(ms, 90)),
            mean_ms=float(ms.mean()),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            std_ms=float(ms.std()),
            runs=int(ms.size),
            threads=int(threads),
            clock=str(clock),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"median {self.median_ms:.3f} ms, p90 {self.p90_ms:.3f} ms, mean {self.mean_ms:.3f} ms, "
            f"min {self.min_ms:.3f} ms ({self.runs} runs, {self.threads} thread(s)"
            + (", thread CPU time" if self.clock == "cpu" else "")
            + ")"
        )


@dataclasses.dataclass(frozen=True)
class LatencyComparison:
    """Interleaved latency of two TFLite models.

    ``speedup`` is the median over rounds of ``median_a / median_b`` within each
    round, i.e. how many times faster model B is than model A (> 1: B faster).
    ``min_ratio`` is ``min_a / min_b``: on a loaded machine the fastest invoke
    is the least disturbed one, so it is a useful second estimate.
    """

    a: LatencyStats
    b: LatencyStats
    speedup: float
    round_ratios: list[float]
    rounds: int
    runs_per_round: int
    threads: int
    min_ratio: float = float("nan")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"A: {self.a}\nB: {self.b}\nspeed-up of B over A: {self.speedup:.3f}x "
            f"(median of {self.rounds} interleaved rounds; per-round "
            f"{min(self.round_ratios):.3f}-{max(self.round_ratios):.3f}; ratio of minimums "
            f"{self.min_ratio:.3f}x)"
        )


#: Clocks of the timing loops: wall-clock time, or the CPU time of the
#: calling thread (which runs the whole invoke when the interpreter has one
#: thread; it does not count time the process is waiting for the CPU).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def _check_clock(clock, threads):
    _validation.choice(clock, "clock", tuple(CLOCKS), kind=str)
    if clock == "cpu" and threads != 1:
        raise ValueError(
            'clock="cpu" times the calling thread, which runs the whole invoke only with '
            "threads=1 (other threads' work would be missed). Use threads=1, or "
            f'clock="wall". Received: clock={clock!r}, threads={threads}'
        )


def _check_counts(**minimums):
    """``name=(value, minimum)``: integers >= minimum. A wrong type is a
    ValueError too, as these functions have always raised."""
    for name, (value, minimum) in minimums.items():
        _validation.integer(value, name, minimum=minimum, type_error=ValueError)


class _Runner:
    """An allocated interpreter with fixed random inputs; ``__call__`` times invokes."""

    def __init__(self, path_or_bytes, threads, seed=0, clock="wall"):
        self.clock = CLOCKS[clock]
        content = _tflite._read_tflite(path_or_bytes, argname="path_or_bytes")
        self.interpreter = _tflite._make_interpreter(content, threads=threads)
        it = self.interpreter
        rng = np.random.default_rng(seed)
        for d in it.get_input_details():
            shape = [1 if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])]
            if list(d["shape"]) != shape:
                it.resize_tensor_input(d["index"], shape)
        it.allocate_tensors()
        for d in it.get_input_details():
            dtype = np.dtype(d["dtype"])
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                x = rng.integers(info.min, info.max, size=d["shape"], endpoint=True).astype(dtype)
            else:
                x = rng.random(d["shape"]).astype(dtype)
            it.set_tensor(d["index"], x)

    def __call__(self, n):
        invoke = self.interpreter.invoke
        clock = self.clock
        times = np.empty(n)
        for k in range(n):
            t0 = clock()
            invoke()
            times[k] = clock() - t0
        return times


def benchmark_tflite(
    path_or_bytes, *, threads: int = 1, runs: int = 100, warmup: int = 10, clock: str = "wall"
) -> LatencyStats:
    """Measure single-sample ``invoke()`` latency of a TFLite model.

    Uses ``ai_edge_litert.interpreter.Interpreter`` with its default delegates
    (XNNPACK on CPU), a batch of 1 (dynamic batch dimensions are set to 1) and
    fixed random inputs (uniform [0, 1) for float inputs, the full range for
    integer inputs).

    Args:
        path_or_bytes: Path to a ``.tflite`` file or its bytes.
        threads: Interpreter threads.
        runs: Number of timed invokes.
        warmup: Untimed invokes before timing.
        clock: ``"wall"`` (latency as a user sees it) or ``"cpu"`` (CPU time
            of the calling thread; ``threads=1`` only). On a loaded machine
            wall-clock times include the time the process waits for a core;
            CPU time does not, so it is the steadier measure of the model's
            own cost.

    Returns:
        :class:`LatencyStats` (median, p90, mean, min, max, std in ms).

    Raises:
        ValueError: bad ``threads``/``runs``/``warmup``/``clock``, or not a
            TFLite model.
        FileNotFoundError: ``path_or_bytes`` is a missing path.

    Example:
    ```python
    stats = acsl_tf.benchmark_tflite("model.tflite", threads=1, runs=200)
    print(stats.median_ms)
    ```
    """
    _check_counts(threads=(threads, 1), runs=(runs, 1), warmup=(warmup, 0))
    _check_clock(clock, threads)
    runner = _Runner(path_or_bytes, threads, clock=clock)
    runner(warmup)
    return LatencyStats.from_times(runner(runs), threads, clock)


def compare_tflite(
    path_a,
    path_b,
    *,
    threads: int = 1,
    runs: int = 50,
    rounds: int = 10,
    warmup: int = 10,
    clock: str = "wall",
) -> LatencyComparison:
    """Measure two TFLite models interleaved and report B's speed-up over A.

    Both interpreters live in the same process. Each round times ``runs``
    invokes of one model, then ``runs`` of the other (the order alternates
    between rounds), so slow drifts of the machine (other processes, clock
    changes) hit both models alike. The speed-up is the median over rounds of
    the per-round ratio of median latencies ``A / B``.

    Args:
        path_a: Baseline model (path or bytes).
        path_b: Candidate model (path or bytes), e.g. the pruned one.
        threads: Interpreter threads (both models).
        runs: Timed invokes per model per round.
        rounds: Number of interleaved rounds.
        warmup: Untimed invokes of each model before the first round.
        clock: ``"wall"`` or ``"cpu"`` (the calling thread's CPU time;
            ``threads=1`` only; see :func:`benchmark_tflite`). On a shared
            machine ``"cpu"`` gives the steadier ratio.

    Returns:
        :class:`LatencyComparison` with the pooled statistics of A and B, the
        speed-up and the per-round ratios.

    Example:
    ```python
    cmp = acsl_tf.compare_tflite("base.tflite", "pruned.tflite", rounds=10)
    print(f"{cmp.speedup:.2f}x faster")
    ```
    """
    _check_counts(threads=(threads, 1), runs=(runs, 1), rounds=(rounds, 1), warmup=(warmup, 0))
    _check_clock(clock, threads)
    ra = _Runner(path_a, threads, clock=clock)
    rb = _Runner(path_b, threads, clock=clock)
    ra(warmup)
    rb(warmup)
    times_a, times_b, ratios = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            ta = ra(runs)
            tb = rb(runs)
        else:
            tb = rb(runs)
            ta = ra(runs)
        times_a.append(ta)
        times_b.append(tb)
        ratios.append(float(np.median(ta) / np.median(tb)))
    stats_a = LatencyStats.from_times(np.concatenate(times_a), threads, clock)
    stats_b = LatencyStats.from_times(np.concatenate(times_b), threads, clock)
    return LatencyComparison(
        a=stats_a,
        b=stats_b,
        min_ratio=stats_a.min_ms / stats_b.min_ms,
        speedup=float(np.median(ratios)),
        round_ratios=ratios,
        rounds=int(rounds),
        runs_per_round=int(runs),
        threads=int(threads),
    )
