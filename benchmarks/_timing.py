"Shared by the step benchmarks: time two step functions alternately, so that both see the same machine state."
import statistics, time


def alternate(fns:dict, warmup:int, steps:int) -> dict:
    "Median seconds per call of each function in `fns` (name -> callable), alternating their order every round."
    names, times = list(fns), {k: [] for k in fns}
    for i in range(warmup + steps):
        for name in (names if i % 2 else names[::-1]):
            t0 = time.perf_counter(); fns[name](); dt = time.perf_counter() - t0
            if i >= warmup: times[name].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}
