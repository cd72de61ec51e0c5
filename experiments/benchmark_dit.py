"""Speed of the latent DiT: training throughput, sampling throughput, peak memory and FLOP utilisation.

    python experiments/benchmark_dit.py                    # DiT-S, batch 256 (a GPU job)
    python experiments/benchmark_dit.py --quick            # CPU-sized: batch 32, fewer samples
    python experiments/benchmark_dit.py --compile --out experiments/benchmark_dit_gpu.md

The batch is a real joint QM9 + MP-20 batch (half molecules, half crystals) from
``TokenSetDataModule`` (read from the processed-data cache). A training step is what
``DiTModule`` does: frozen-VAE latents, flow-matching loss with self-conditioning, backward and an
AdamW step on the DiT, in fp32 and under bf16 autocast. Sampling runs :class:`sciDiT.generate.Generator`
(size-sorted batches, batched classifier-free guidance, VAE decoding) on QM9 molecule sizes.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` and divided by the time, then
compared with the FLOP/s of a plain square matmul measured in the same run and dtype. Peak memory
is ``torch.cuda.max_memory_allocated`` per phase on GPU, and the process's peak resident set size so
far (``ru_maxrss``, cumulative) on CPU. Weights are untrained: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from sciDiT.batch import Domain, TokenBatch, collate
from sciDiT.generate import Generator
from sciDiT.models.dit import DIT_SIZES
from sciDiT.models.latent_diffusion import LatentDiffusion
from sciDiT.models.vae import VAE_SIZES
from sciDiT.training.datamodule import TokenSetDataModule


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dit", default="DiT-S", choices=sorted(DIT_SIZES))
    p.add_argument("--vae", default="VAE-S", choices=sorted(VAE_SIZES))
    p.add_argument("--batch-size", type=int, default=256, help="training batch (half QM9, half MP-20)")
    p.add_argument("--train-steps", type=int, default=10, help="timed training steps per setting")
    p.add_argument("--samples", type=int, default=256, help="molecules per sampling run (one batch)")
    p.add_argument("--sample-steps", type=int, nargs="+", default=[100, 20])
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd DiT")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast rows")
    p.add_argument("--quick", action="store_true", help="CPU-sized: batch 32, 3 train steps, 16 samples")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy shared machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.train_steps, args.samples = min(args.batch_size, 32), min(args.train_steps, 3), min(args.samples, 16)
    return args


# -- measurement helpers --------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn`` (after one untimed warm-up call)."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def best_of(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Fastest single call of ``fn`` in seconds (after a warm-up): a peak, for reference kernels."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def count_flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset, or the process's peak RSS so far (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Peak FLOP/s of a plain ``size x size`` matmul in ``dtype`` (best of 10): the reference for utilisation."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = best_of(lambda: a @ b, device, repeats=10)
    return 2 * size**3 / seconds


# -- the workload ---------------------------------------------------------------------------------


def joint_batch(args: argparse.Namespace) -> tuple[TokenBatch, dict[Domain, torch.Tensor]]:
    """A real batch: ``batch_size / 2`` QM9 molecules + ``batch_size / 2`` MP-20 crystals, and the size histograms."""
    half = args.batch_size // 2
    dm = TokenSetDataModule(
        datasets=[{"name": "qm9", "max_train": 4 * half}, {"name": "mp20", "max_train": 4 * half}],
        data_dir=args.data_dir, cache_dir=args.cache_dir, batch_size=args.batch_size, num_workers=0,
    )
    dm.setup("fit")
    sets = [data[i] for data in dm.splits["train"] for i in range(min(half, len(data)))]
    return collate(sets), dm.atom_count_histogram()


def build_model(args: argparse.Namespace, batch: TokenBatch, hist: dict[Domain, torch.Tensor], device: torch.device) -> LatentDiffusion:
    torch.manual_seed(0)
    model = LatentDiffusion(vae=VAE_SIZES[args.vae], dit=DIT_SIZES[args.dit])
    model.prepare([batch], hist)
    return model.to(device)


def train_rows(args, model: LatentDiffusion, batch: TokenBatch, device: torch.device, matmul: dict[str, float]) -> list[dict]:
    opt = torch.optim.AdamW(model.dit.parameters(), lr=1e-4)
    atoms = int(batch.mask.sum())
    eager_dit = model.dit
    settings = [("fp32", False, False)] + ([] if args.no_bf16 else [("bf16", True, False)])
    if args.compile:
        settings += [("fp32+compile", False, True)] + ([] if args.no_bf16 else [("bf16+compile", True, True)])
    rows, flops_of = [], {}
    for name, bf16, compiled in settings:
        model.dit = torch.compile(eager_dit) if compiled else eager_dit
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

        def step(self_condition_prob: float = 0.5) -> None:
            with autocast:
                loss = model.loss(batch, self_condition_prob=self_condition_prob)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        reset_peak(device)
        seconds = timed(step, device, args.train_steps)
        dtype = "bf16" if bf16 else "fp32"
        if dtype not in flops_of:  # expected FLOPs: the self-conditioning pass runs on half of the steps
            flops_of[dtype] = 0.5 * (count_flops(lambda: step(0.0)) + count_flops(lambda: step(1.0)))
        flops = flops_of[dtype]
        rows.append({"phase": f"train {name}", "flops": flops, "seconds": seconds, "per_s": 1 / seconds,
                     "unit": "steps/s", "atoms_per_s": atoms / seconds, "mem": peak_mib(device),
                     "util": flops / seconds / matmul[dtype], "dtype": dtype})
    model.dit = eager_dit
    return rows


def sample_rows(args, model: LatentDiffusion, device: torch.device, matmul: dict[str, float]) -> list[dict]:
    gen = Generator(model, model.dit, device)
    rows = []
    for bf16 in [False] + ([] if args.no_bf16 else [True]):
        dtype = "bf16" if bf16 else "fp32"
        for steps in args.sample_steps:
            def run(k: int = steps) -> None:
                gen.generate_token_sets("molecule", args.samples, steps=k, cfg_scale=args.cfg_scale, seed=0,
                                        batch_size=args.samples, progress=False, compile=args.compile, bf16=bf16)

            reset_peak(device)
            seconds = timed(run, device, repeats=1)
            one, two = count_flops(lambda: run(1)), count_flops(lambda: run(2))
            flops = one + (steps - 1) * (two - one)  # fixed cost (decoding) + per-step cost
            rows.append({"phase": f"sample {steps} steps {dtype}", "flops": flops, "seconds": seconds,
                         "per_s": args.samples / seconds, "unit": "molecules/s", "atoms_per_s": None,
                         "mem": peak_mib(device), "util": flops / seconds / matmul[dtype], "dtype": dtype})
    return rows


# -- report ---------------------------------------------------------------------------------------


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"load average {load:.1f} at start (shared machine)")


def report(args, rows: list[dict], batch: TokenBatch, matmul: dict[str, float], device: torch.device, params: int) -> str:
    mem = "peak GPU MiB (phase)" if device.type == "cuda" else "peak RSS MiB (so far)"
    lines = [
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {machine(device)}",
        f"- model: {args.dit} ({params / 1e6:.1f} M DiT parameters) on a frozen {args.vae}; CFG scale {args.cfg_scale}, Euler",
        f"- training batch: {batch.batch_size} real sets ({int((batch.domain == 0).sum())} QM9 + {int((batch.domain == 1).sum())} MP-20), "
        f"{int(batch.mask.sum())} atoms, padded to {batch.mask.shape[1]} ({batch.padding_fraction:.0%} padding)",
        f"- sampling: {args.samples} QM9-sized molecules in one batch (sizes from the QM9 training histogram)",
        f"- plain matmul reference: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in matmul.items()),
        "",
        f"| phase | throughput | atoms/s | s/call | GFLOP/call | achieved GFLOP/s | of matmul | {mem} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        atoms = f"{r['atoms_per_s']:.0f}" if r["atoms_per_s"] else ""
        lines.append(f"| {r['phase']} | {r['per_s']:.3g} {r['unit']} | {atoms} | {r['seconds']:.3g} | {r['flops'] / 1e9:.1f} | "
                     f"{r['flops'] / r['seconds'] / 1e9:.1f} | {r['util']:.0%} | {r['mem']:.0f} |")
    by = {r["phase"]: r for r in rows}
    ratios = []
    if "bf16" in matmul:
        ratios.append(f"bf16 / fp32 plain matmul speed: {matmul['bf16'] / matmul['fp32']:.2f}x (below 1: no native bf16 on this device)")
    if "train bf16" in by:
        ratios.append(f"bf16 / fp32 training speed: {by['train fp32']['seconds'] / by['train bf16']['seconds']:.2f}x")
    steps = args.sample_steps
    if len(steps) >= 2:
        a, b = (by.get(f"sample {s} steps fp32") for s in steps[:2])
        ratios.append(f"sampling {steps[1]} vs {steps[0]} steps: {b['per_s'] / a['per_s']:.2f}x molecules/s (step ratio {steps[0] / steps[1]:.1f}x)")
    return "\n".join(lines + [""] + [f"- {r}" for r in ratios]) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    batch, hist = joint_batch(args)
    print(f"[bench] data: {time.perf_counter() - t0:.1f} s", flush=True)
    model = build_model(args, batch, hist, device)
    batch = batch.to(device)
    size = 4096 if device.type == "cuda" else 1024
    matmul = {"fp32": matmul_flops_per_s(device, torch.float32, size)}
    if not args.no_bf16:
        matmul["bf16"] = matmul_flops_per_s(device, torch.bfloat16, size)
    rows = train_rows(args, model, batch, device, matmul)
    print(f"[bench] training done: {time.perf_counter() - t0:.1f} s", flush=True)
    rows += sample_rows(args, model, device, matmul)
    params = sum(p.numel() for p in model.dit.parameters())
    text = report(args, rows, batch, matmul, device, params) + f"- total benchmark time: {time.perf_counter() - t0:.0f} s\n"
    print(text)
    if args.out:
        Path(args.out).write_text(f"# DiT speed benchmark ({device.type})\n\n" + text)


if __name__ == "__main__":
    main()
