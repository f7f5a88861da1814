"""Laplace unlearning of a last-layer Laplace posterior on digits, against retraining that posterior and VBU.

The harness's original (digits, ``mlp`` with one hidden layer of 64, the default recipe, seed 0) gives fixed
features; the last layer (650 weights) gets the Laplace posterior ``N(mu, P^-1)`` of ``classifiers.methods.laplace``
on the training set. For each scenario (``class:3``, ``random:0.1``) and prior precision:

- ``retrained``: the same Laplace posterior fitted on the retain set (the reference);
- ``full``: no unlearning;
- ``laplace``: Laplace unlearning (MAP of ``log q - log p(D_e)``, precision ``P - H_e``);
- ``eubo@lambda`` (``classifiers.vbu.unlearn.eubo_unlearn``, L-BFGS over 256 fixed draws, the moons study's
  default ``eubo_lbfgs``) and ``rkl@lambda`` (``rkl_unlearn``, 100 batches of 1,000 draws) on the same full-covariance
  Gaussian. In 650 dimensions draws lie at squared Mahalanobis distance about 650, so a lambda keeps draws only
  below ``exp(-650/2) ~ 1e-141``: lambdas 0, 1e-150 (keeps ~85%) and 1e-130 (keeps ~5%).

Scored by ``KL[q || retrained]`` and ``KL[retrained || q]`` between the Gaussians and the accuracies (percent) of the
posterior mean's point predictions on the forget, retain and test sets (test: ``test_retain`` / ``test_forget``
for class scenarios). Writes JSON:

    python scripts/bench_laplace.py --output bench_results/laplace_digits.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from classifiers.data import load_dataset, make_task
from classifiers.methods.laplace import (
    LaplaceConfig,
    features,
    last_layer,
    last_layer_posterior,
    unlearn_last_layer,
)
from classifiers.models import ModelConfig
from classifiers.oracle import get_original
from classifiers.training import TrainConfig
from classifiers.vbu.gp import GaussianPosterior, kl_gaussians
from classifiers.vbu.unlearn import eubo_unlearn, rkl_unlearn

D = torch.float64


def accuracy(theta, phi, y, classes) -> float | None:
    if len(y) == 0:
        return None
    return 100.0 * float(((phi @ theta.reshape(classes, -1).T).argmax(1) == y).double().mean())


def run(scenario: str, prior_precision: float, lambdas: list[float], seed: int = 0) -> dict:
    splits = load_dataset("digits", seed=seed)
    task = make_task(splits, scenario, seed=seed)
    original = get_original(splits, ModelConfig(), TrainConfig(seed=seed)).model
    fmap, head = last_layer(original)
    data = task.training_data()
    phi_all, y_all = features(fmap, data.tensors[0]), data.tensors[1]
    phi_r, y_r = features(fmap, task.retain.tensors[0]), task.retain.tensors[1]
    phi_e, y_e = features(fmap, task.forget.tensors[0]), task.forget.tensors[1]
    tests = (
        {"test_retain": task.test_retain, "test_forget": task.test_forget} if task.classwise else {"test": task.test}
    )
    tests = {k: (features(fmap, v.tensors[0]), v.tensors[1]) for k, v in tests.items() if len(v)}
    C = task.num_classes
    theta0 = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).to(D).reshape(-1)
    config = LaplaceConfig(prior_precision=prior_precision)
    full, unlearned = unlearn_last_layer(phi_all, y_all, phi_e, y_e, C, theta0, config)
    laplace_seconds = unlearned.seconds
    start = time.perf_counter()
    retrained = last_layer_posterior(phi_r, y_r, C, prior_precision, full.mean)
    retrain_seconds = time.perf_counter() - start

    def gaussian(result) -> GaussianPosterior:
        return GaussianPosterior.from_cov(result.mean, torch.cholesky_inverse(result.chol), "covariance")

    reference = gaussian(retrained)

    def score(q: GaussianPosterior, seconds, **extra) -> dict:
        mean = q.mean
        row = {
            "kl_to_retrained": float(kl_gaussians(q, reference)),
            "kl_from_retrained": float(kl_gaussians(reference, q)),
            "acc_forget": accuracy(mean, phi_e, y_e, C),
            "acc_retain": accuracy(mean, phi_r, y_r, C),
            **{f"acc_{k}": accuracy(mean, p, y, C) for k, (p, y) in tests.items()},
            "seconds": seconds,
        }
        return {**row, **extra}

    rows = {
        "retrained": score(reference, retrain_seconds),
        "full": score(gaussian(full), 0.0),
        "laplace": score(gaussian(unlearned), laplace_seconds, newton_steps=unlearned.newton_steps),
    }
    q = gaussian(full)

    def log_lik(theta: torch.Tensor) -> torch.Tensor:  # (S, d) -> log p(D_e | theta) (S,)
        logits = torch.einsum("na,sca->snc", phi_e, theta.reshape(len(theta), C, -1))
        return logits.log_softmax(-1).gather(-1, y_e.expand(len(theta), -1)[..., None]).squeeze(-1).sum(-1)

    for lam in lambdas:
        for name, fn in (
            ("eubo", lambda lam=lam: eubo_unlearn(q, log_lik, lam, 256, seed, optimizer="lbfgs")),
            ("rkl", lambda lam=lam: rkl_unlearn(q, log_lik, lam, 1000, seed, num_batches=100)),
        ):
            start = time.perf_counter()
            res = fn()
            secs = time.perf_counter() - start
            rows[f"{name}@{lam:g}"] = score(res.posterior, secs, ess=res.ess)
            print(scenario, prior_precision, f"{name}@{lam:g}", json.dumps(rows[f"{name}@{lam:g}"]), flush=True)
    for k in ("retrained", "full", "laplace"):
        print(scenario, prior_precision, k, json.dumps(rows[k]), flush=True)
    return {"scenario": scenario, "prior_precision": prior_precision, "parameters": len(theta0), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="class:3,random:0.1")
    parser.add_argument("--prior_precisions", default="1,100")
    parser.add_argument("--lambdas", default="0,1e-150,1e-130")
    parser.add_argument("--output", type=Path, default=Path("bench_results/laplace_digits.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    lambdas = [float(v) for v in args.lambdas.split(",") if v]
    results = [run(s, float(p), lambdas) for s in args.scenarios.split(",") for p in args.prior_precisions.split(",")]
    out = {"torch": torch.__version__, "wall_seconds": time.perf_counter() - start, "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
