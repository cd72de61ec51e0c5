"""End-to-end sampling speed at measured validity (issue 11, item 4): what a user waits for per 1,000 molecules.

The DiT benchmark (``benchmark_dit.py``) times the network part on an untrained DiT-S. This one samples a
trained model (default: the shipped ``qm9_mp20_cpu``, DiT-T) with each sampler, times the network part and the
graph decoding apart, and scores the molecules in the same run (strict validity on the decoded bonds, valid
and connected, OpenBabel path from the coordinates), so speed-ups are read at equal validity. The reference
is ADiT's sampler (Euler 100 steps, CFG 2) in float32; ratios are molecules/s over it.

    python experiments/benchmark_sampling.py --n 1000 --threads 2 --out experiments/benchmark_sampling_cpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from benchmark_dit import machine  # the DiT benchmark's machine line (this folder)
from sciDiT.evaluation.molecules import is_single_fragment, openbabel_molecule, strict_sanitized
from sciDiT.export import to_molecules
from sciDiT.generate import load_generator
from sciDiT.models.vae import AllAtomVAE
from sciDiT.training.precision import cpu_has_native_bf16

# name -> (generate_token_sets keywords, network evaluations per molecule)
CONFIGS: dict[str, tuple[dict, int]] = {
    "reference: Euler 100, CFG 2, fp32": (dict(steps=100, cfg_scale=2.0, bf16=False), 200),
    "Euler 100, CFG 2": (dict(steps=100, cfg_scale=2.0), 200),
    "Euler 100 (default)": (dict(steps=100), 100),
    "Euler 100, autoguidance 2 on [0.5, 1]": (dict(steps=100, autoguidance=2.0, autoguidance_interval=(0.5, 1.0)), 150),
    "sde 20": (dict(steps=20, method="sde"), 20),
    "Euler 20": (dict(steps=20), 20),
    "Euler 10": (dict(steps=10), 10),
}


@contextlib.contextmanager
def timed_decoding(clock: dict[str, float]) -> Iterator[None]:
    """Accumulate the seconds spent in the VAE's decoding (graph decoding included) into ``clock['decode']``."""
    original = AllAtomVAE.decode_to_batch

    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            clock["decode"] += time.perf_counter() - start

    AllAtomVAE.decode_to_batch = wrapper
    try:
        yield
    finally:
        AllAtomVAE.decode_to_batch = original


def run(gen, kwargs: dict, n: int) -> dict[str, float]:
    """Sample ``n`` molecules (seed 0), time them, and score them."""
    clock = {"decode": 0.0}
    with timed_decoding(clock):
        start = time.perf_counter()
        sets = gen.generate_token_sets("molecule", n=n, seed=0, progress=False, **kwargs)
        total = time.perf_counter() - start
    start = time.perf_counter()
    mols = to_molecules(sets)
    total += time.perf_counter() - start
    valid = [v for v in map(strict_sanitized, mols) if v is not None]
    openbabel = sum(openbabel_molecule(ts) is not None for ts in sets)
    return {"seconds": total, "network": total - clock["decode"], "decode": clock["decode"], "per_s": n / total,
            "valid": len(valid) / n, "connected": sum(map(is_single_fragment, valid)) / n, "openbabel": openbabel / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="qm9_mp20_cpu", help="a DiT checkpoint or a shipped model's name")
    parser.add_argument("--n", type=int, default=1000, help="molecules per configuration")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help="names of CONFIGS to run (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too (markdown)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = load_generator(args.ckpt)
    lines = [f"- command: `python experiments/benchmark_sampling.py --n {args.n} --threads {args.threads}`",
             f"- machine: {machine(torch.device('cpu'), cpu_has_native_bf16())}; model `{args.ckpt}`; {args.n} molecules per row, seed 0",
             "", "| sampler | network evals / molecule | seconds (network + decoding) | molecules/s | vs reference | strict, decoded bonds | "
             "valid and connected | OpenBabel path |", "|---|---|---|---|---|---|---|---|"]
    reference = None
    for name in args.configs:
        kwargs, nfe = CONFIGS[name]
        r = run(gen, kwargs, args.n)
        reference = reference or r["per_s"]
        lines.append(f"| {name} | {nfe} | {r['seconds']:.1f} ({r['network']:.1f} + {r['decode']:.1f}) | {r['per_s']:.1f} | "
                     f"{r['per_s'] / reference:.2f}x | {100 * r['valid']:.1f}% | {100 * r['connected']:.1f}% | {100 * r['openbabel']:.1f}% |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
