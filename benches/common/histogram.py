"""A Prometheus histogram from a saved /metrics page, for the benchmark scripts'
reports (imported by their inline Python: benches/assignment-latency.sh,
benches/reads-vs-dispatch.sh)."""
import re


def buckets(metrics_text, name):
    """{upper bound (s): cumulative count} of histogram `name` (+Inf as inf)."""
    out = {}
    for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)', metrics_text, re.M):
        out[float("inf") if le == "+Inf" else float(le)] = int(float(v))
    return out


def quantile(after, p, before=None):
    """The p-quantile (s) of the samples counted between two pages (`before`
    None: all of `after`), interpolated linearly inside its bucket; nan without
    samples; the last finite bound when it falls in +Inf."""
    before = before or {}
    les = sorted(after)
    counts = [after[le] - before.get(le, 0) for le in les]
    total = counts[-1] if counts else 0
    if not total:
        return float("nan")
    want, lo, below = p * total, 0.0, 0
    for le, c in zip(les, counts):
        if c >= want:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (want - below) / max(c - below, 1)
        lo, below = le, c
    return float("nan")
