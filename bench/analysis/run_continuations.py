#!/usr/bin/env python3
"""Can a classifier over request features pick read-run continuations better
than run-length rules? An offline proxy of the trace simulator (session 12,
bench/RESULTS.md "LSTM prefetcher, session 12", part 4).

Each read of a 1 GiB region stream (re-reads of a shard included) names the
next two shards after the run it continued: the region's last 8 runs, a read
continues one when its first shard is the run's last or the next, as the
LSTM predictor's `continue_run`. A candidate read within the last D requests
is skipped (on the hot tier already). Label: read within the next D requests.
A selection stages each shard at most once per D requests; `useful` counts
staged shards read within D requests after.

Prints the run-length rules (`k`: earlier requests of the run, `n`: shards
ahead), then classifiers that learn the label:
  - gradient boosting trained on the first half, judged on the second;
  - prequential: retrained every 2 000 requests on every label known by then;
  - online: an MLP with SGD steps on a replay of resolved samples.

Run (needs numpy and scikit-learn, e.g. in a venv):
    python3 -m venv /tmp/ana && /tmp/ana/bin/pip install numpy scikit-learn
    /tmp/ana/bin/python bench/analysis/run_continuations.py \
        ../shared/traces/umass_websearch_mqsim.csv.gz [D] [--quick]
(about 3.5 min on the development machine; --quick skips the prequential and online parts).
--export=PATH also writes the prequential boosting's probabilities, one line
`read shard steps p` per candidate (read: index among the trace's reads); the
session-12 experiment fed them to the LSTM predictor's run source in place of
its own network (RESULTS, part 5).
"""
import bisect
import collections
import gzip
import heapq
import math
import random
import sys

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neural_network import MLPClassifier

SHARD = 65536
REGION = 1 << 30
RUNS_PER_REGION = 8
CANDIDATES = 2

args = [a for a in sys.argv[1:] if not a.startswith("--")]
TRACE = args[0] if args else "../shared/traces/umass_websearch_mqsim.csv.gz"
D = int(args[1]) if len(args) > 1 else 1000
QUICK = "--quick" in sys.argv
EXPORT = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--export=")), None)

ev = []
for line in gzip.open(TRACE, "rt"):
    if line[0].isdigit():
        t, op, off, ln = line.strip().split(",")
        if op == "R":
            ev.append((int(t), int(off), max(int(ln), 1)))
N = len(ev)
first = [o // SHARD for _, o, _ in ev]
last = [(o + n - 1) // SHARD for _, o, n in ev]
reads_of = collections.defaultdict(list)
for i in range(N):
    for s in range(first[i], last[i] + 1):
        reads_of[s].append(i)


def next_read(s, i):
    r = reads_of.get(s)
    if not r:
        return None
    k = bisect.bisect_right(r, i)
    return r[k] if k < len(r) else None


def prev_read(s, i):
    r = reads_of.get(s)
    if not r:
        return None
    k = bisect.bisect_left(r, i)
    return r[k - 1] if k > 0 else None


# Candidates: features, label, (read index, shard, steps ahead, run length).
NAMES = ["run", "step", "end8", "size", "gap_stream", "gap_trace", "run_shards", "run_bytes", "run_age"]
rows, X, Y = [], [], []
runs = collections.defaultdict(collections.deque)
last_t = {}
prev_t = None
for i, (t, o, n) in enumerate(ev):
    reg = o // REGION
    rs = runs[reg]
    at = next((j for j in range(len(rs) - 1, -1, -1) if first[i] in (rs[j][0], rs[j][0] + 1)), None)
    if at is not None:
        lst, k, start, nbytes, nshards = rs[at]
        del rs[at]
        run = (last[i], k + 1, start, nbytes + n, nshards + (last[i] - lst))
    else:
        run = (last[i], 0, i, n, 1)
        if len(rs) >= RUNS_PER_REGION:
            rs.popleft()
    rs.append(run)
    gap_s = math.log2(1 + (t - last_t.get(reg, t)) / 1000)
    last_t[reg] = t
    gap_g = math.log2(1 + (t - (prev_t if prev_t is not None else t)) / 1000)
    prev_t = t
    end8 = ((o + n) - last[i] * SHARD + SHARD // 8 - 1) // (SHARD // 8)
    for j in range(1, CANDIDATES + 1):
        c = last[i] + j
        pr = prev_read(c, i)
        if pr is not None and i - pr < D:
            continue
        nr = next_read(c, i)
        X.append([run[1], j, end8, math.log2(n), gap_s, gap_g, run[4], math.log2(1 + run[3]), i - run[2]])
        Y.append(nr is not None and nr - i <= D)
        rows.append((i, c, j, run[1]))
X = np.array(X, float)
Y = np.array(Y, bool)
I = np.array([r[0] for r in rows])
R = np.array([r[3] for r in rows])
J = np.array([r[2] for r in rows])
second = I >= N // 2
print("%s: %d reads, %d candidates, %.1f %% read within %d requests" % (TRACE, N, len(Y), 100 * Y.mean(), D))


def evaluate(sel, name):
    staged, st, use = {}, 0, 0
    for k in np.nonzero(sel)[0]:
        i, c = rows[k][0], rows[k][1]
        if c in staged and i - staged[c] < D:
            continue
        staged[c] = i
        st += 1
        nr = next_read(c, i)
        use += nr is not None and nr - i <= D
    print("%-46s staged %6d useful %6d precision %.3f" % (name, st, use, use / max(st, 1)))


for part, mask in (("whole", np.ones(len(Y), bool)), ("2nd half", second)):
    for k, n in ((1, 1), (1, 2), (2, 1), (2, 2), (3, 2)):
        evaluate((R >= k) & (J <= n) & mask, "rule k=%d n=%d (%s)" % (k, n, part))

for feats, name in (([0, 1], "run, step"), ([0, 1, 2], "+ end"), (list(range(len(NAMES))), "all")):
    clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
    clf.fit(X[~second][:, feats], Y[~second])
    p = clf.predict_proba(X[:, feats])[:, 1]
    for tau in (0.35, 0.4, 0.45, 0.5):
        evaluate((p >= tau) & second, "boosting %s, %.2f (2nd half)" % (name, tau))
if QUICK:
    sys.exit(0)


def one_hot(x):
    run, step, end8, _size, gap_s, gap_g, rsh, _rby, rage = x
    f = [1.0 if min(run, 7) == k else 0.0 for k in range(8)]
    f += [1.0 if step == k else 0.0 for k in range(1, CANDIDATES + 1)]
    f += [1.0 if end8 == k else 0.0 for k in range(1, 9)]
    f += [min(gap_s, 30) / 30, min(gap_g, 30) / 30, min(rsh, 16) / 16, min(math.log2(1 + rage), 16) / 16]
    return f


F = np.array([one_hot(x) for x in X])
resolved_at = np.array(
    [(next_read(c, i) if y else i + D) for (i, c, _, _), y in zip(rows, Y)]
)


def prequential(make, Xf, name, every=2000):
    p, model = np.zeros(len(Y)), None
    for start in range(0, N, every):
        m = (I >= start) & (I < start + every)
        known = resolved_at <= start
        if known.sum() > 500 and 0 < Y[known].sum() < known.sum():
            model = make()
            model.fit(Xf[known], Y[known])
        p[m] = model.predict_proba(Xf[m])[:, 1] if model is not None else 0
    for tau in (0.4, 0.45, 0.5):
        evaluate(p >= tau, "%s, %.2f" % (name, tau))
    return p


p = prequential(lambda: HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, random_state=0), X, "prequential boosting, all")
if EXPORT:
    with open(EXPORT, "w") as f:
        for k, (i, c, j, _) in enumerate(rows):
            f.write("%d %d %d %.4f\n" % (i, c, j, p[k]))
prequential(lambda: MLPClassifier((32,), max_iter=300, random_state=0, alpha=1e-3), F, "prequential MLP, no size/bytes")


def online(replay_max, every, steps, hold, name, batch=128):
    rng = random.Random(0)
    clf = MLPClassifier((32,), learning_rate_init=3e-3, random_state=0, alpha=1e-4)
    ready, fresh, pending = False, 0, []
    replay = collections.deque(maxlen=replay_max)
    p = np.zeros(len(Y))
    for k in range(len(Y)):
        i = rows[k][0]
        while pending and pending[0][0] <= i:
            replay.append(heapq.heappop(pending)[1])
            fresh += 1
        if fresh >= every and len(replay) >= batch:
            fresh = 0
            for _ in range(steps):
                idx = [replay[rng.randrange(len(replay))] for _ in range(batch)]
                clf.partial_fit(F[idx], Y[idx], classes=[False, True])
                ready = True
        p[k] = clf.predict_proba(F[k : k + 1])[0, 1] if ready else 0
        heapq.heappush(pending, ((i + D) if (hold and Y[k]) else resolved_at[k], k))
    for tau in (0.4, 0.45, 0.5):
        evaluate(p >= tau, "%s, %.2f" % (name, tau))


online(8192, 64, 16, False, "online MLP, 8 192 kept")
online(65536, 64, 32, False, "online MLP, 65 536 kept")
online(65536, 64, 32, True, "online MLP, 65 536 kept, reads held")
