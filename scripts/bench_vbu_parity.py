"""VBU parity check (docs/vbu.md, "Parity with the authors' code"): S = 1 on the moons study's data, seed 0.

    python scripts/bench_vbu_parity.py --methods rkl,rkl_pooled --output /tmp/vbu_parity.json
    python scripts/bench_vbu_parity.py --methods eubo --eubo_steps 15000 --lambdas 1e-9,1e-5 --output /tmp/e.json

For each method and lambda: KL on D_e and D_r between the retrained and the unlearned predictive distributions (the
study's metric, 2,000 seeded draws) and the unlearning seconds; the un-unlearned posterior as ``full``. One thread.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from classifiers.vbu.experiment import MoonsConfig, bernoulli_kl, moons_data
from classifiers.vbu.gp import SparseGPClassifier
from classifiers.vbu.shards import METHODS, ShardedGPUnlearner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="rkl,rkl_pooled")
    parser.add_argument("--lambdas", default="0,1e-9,1e-7,1e-5,1e-3,0.1")
    parser.add_argument("--eubo_steps", type=int, default=15000)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        parser.error(f"unknown method {bad[0]!r}; accepted: {', '.join(METHODS)}")
    X, y, Z, erase = moons_data(MoonsConfig())
    keep = np.setdiff1d(np.arange(len(X)), erase)
    vbu = ShardedGPUnlearner(SparseGPClassifier(Z), eubo_steps=args.eubo_steps).fit(X, y)
    reference = vbu.predict_proba(X, posteriors=vbu.retrained_posteriors(erase)[0])

    def kls(posteriors) -> dict:
        kl = bernoulli_kl(reference, vbu.predict_proba(X, posteriors=posteriors))
        return {"kl_erased": float(kl[erase].mean()), "kl_remaining": float(kl[keep].mean())}

    rows = [{"method": "full", "lambda": None, **kls(vbu.posteriors_)}]
    print(rows[0], flush=True)
    for method in methods:
        for lam in (float(v) for v in args.lambdas.split(",") if v):
            start = time.perf_counter()
            posteriors, _ = vbu.unlearned_posteriors(erase, method, lam)
            rows.append({"method": method, "lambda": lam, **kls(posteriors), "seconds": time.perf_counter() - start})
            print(rows[-1], flush=True)
    with open(args.output, "w") as fh:
        json.dump({"eubo_steps": args.eubo_steps, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
