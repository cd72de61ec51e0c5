"""Speed of the latent DiT: the fast configuration against the reference one, measured in the same run.

    python experiments/benchmark_dit.py                    # DiT-S, batch 256, 256 molecules (an idle machine or a GPU)
    python experiments/benchmark_dit.py --quick            # CPU-sized check: batch 32, 3 batches, 16 molecules
    python experiments/benchmark_dit.py --no-compile --out experiments/benchmark_dit_gpu.md

Training (a DiT-S step as ``DiTModule`` runs it: frozen-VAE latents, flow-matching loss with
self-conditioning, backward, AdamW) on real joint QM9 + MP-20 data:

- reference (ADiT-equivalent): random half-QM9 / half-MP-20 batches padded to their largest set,
  fp32, eager, per-parameter (for-loop) AdamW;
- fast candidates: the batches the trainer builds (``TokenSetDataModule``'s size-bucketed loader),
  the precision ``trainer.precision=auto`` picks, the AdamW kernel the trainer uses (fused; foreach
  under bf16-mixed with gradient clipping, which Lightning refuses for fused), and each of: padded layout, packed
  layout (``attention_layout=packed``), torch.compile, fp32 where bf16 was picked (to check the
  choice), and attention in autocast's bf16 instead of sciDiT's fp32 on CPU (to check that choice). The fastest candidate is "fast"; padding is counted in the layout the model ran on.

Figures: real atoms/s (the headline ratio fast / reference), useful FLOP/s (the FLOPs the same sets
need with no padding slot at all: the sum over sets of one set's counted FLOPs) as a fraction of
the plain square-matmul FLOP/s of the same precision measured in the same run, and peak memory
(GPU: ``max_memory_allocated``; CPU: the process's peak RSS in the phase, reset through
``/proc/self/clear_refs``). Sampling: molecules/s of the ``--sampler`` setting (bf16 where native,
packed / compiled if faster) against 100 Euler steps with CFG 2 in fp32, padded, eager, on QM9 sizes.
Weights are untrained (speed does not depend on them), so validity is not measured here: it comes
from ``experiments/sampler_sweep.py`` on a trained checkpoint. Timings are the best of ``--rounds``
interleaved rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import sciDiT.models.attention as attention_module

from sciDiT.batch import TokenBatch, collate
from sciDiT.flow import network_evaluations
from sciDiT.generate import Generator
from sciDiT.models.attention import pack_sets
from sciDiT.models.dit import DIT_SIZES
from sciDiT.models.latent_diffusion import LatentDiffusion
from sciDiT.models.vae import VAE_SIZES
from sciDiT.training.compile import compile_problem
from sciDiT.training.datamodule import TokenSetDataModule
from sciDiT.training.optim import adamw, adamw_for
from sciDiT.training.precision import resolve_bf16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dit", default="DiT-S", choices=sorted(DIT_SIZES))
    p.add_argument("--vae", default="VAE-S", choices=sorted(VAE_SIZES))
    p.add_argument("--batch-size", type=int, default=256, help="training batch (sets)")
    p.add_argument("--train-batches", type=int, default=10, help="timed training batches per configuration and round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best round of each configuration counts")
    p.add_argument("--samples", type=int, default=256, help="molecules per sampling run (one batch)")
    p.add_argument("--sampler", default="euler:20:1.0",
                   help="fast sampling setting method:steps:cfg (default: Euler 20 steps, no CFG: the best validity per "
                        "network evaluation in experiments/qm9_mp20_joint_cpu/README.md's sweep)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile candidates")
    p.add_argument("--no-packed", action="store_true", help="leave out the packed-layout candidates")
    p.add_argument("--quick", action="store_true", help="CPU-sized: batch 32, 3 batches, 1 round, 16 molecules")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy shared machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.train_batches, args.rounds, args.samples = min(args.batch_size, 32), min(args.train_batches, 3), 1, min(args.samples, 16)
    method, steps, cfg = args.sampler.split(":")
    args.sampler = (method, int(steps), float(cfg))
    return args


# -- measurement helpers --------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def count_flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory phase (GPU allocator stats; on Linux CPUs the peak RSS via clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def proc_status_mib(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` (``VmHWM``: peak RSS, ``VmRSS``: current) in MiB; None off Linux."""
    with contextlib.suppress(OSError, StopIteration):
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{field}:"))
        return int(line.split()[1]) / 1024
    return None


def peak_mib(device: torch.device) -> float:
    """Peak GPU memory allocated in the phase, or the process's peak RSS in the phase (CPU; ever, without clear_refs)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Best FLOP/s of a plain ``size x size`` matmul in ``dtype`` (best of 10): the reference for utilisation."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    return 2 * size**3 / min(seconds_of(lambda: a @ b, device) for _ in range(10))


# -- the workload ---------------------------------------------------------------------------------


def load_data(args: argparse.Namespace) -> tuple[TokenSetDataModule, list[TokenBatch], list[TokenBatch]]:
    """The joint QM9 + MP-20 data module, its trainer batches (size-bucketed) and random half/half padded batches."""
    half = args.batch_size // 2
    dm = TokenSetDataModule(  # enough sets for the sampler's buckets (32 batches' worth) to behave as in training
        datasets=[{"name": "qm9", "max_train": 16 * args.batch_size}, {"name": "mp20", "max_train": 16 * args.batch_size}],
        data_dir=args.data_dir, cache_dir=args.cache_dir, batch_size=args.batch_size, num_workers=0,
    )
    dm.setup("fit")
    trainer_batches = list(itertools.islice(dm.train_dataloader(), args.train_batches))
    gen = torch.Generator().manual_seed(0)
    random_batches = []
    for _ in range(args.train_batches):
        picks = [(data, torch.randperm(len(data), generator=gen)[:half].tolist()) for data in dm.splits["train"]]
        random_batches.append(collate([data[i] for data, idx in picks for i in idx]))
    return dm, trainer_batches, random_batches


def build_model(args: argparse.Namespace, dm: TokenSetDataModule, batches: list[TokenBatch], device: torch.device) -> LatentDiffusion:
    torch.manual_seed(0)
    model = LatentDiffusion(vae=VAE_SIZES[args.vae], dit=DIT_SIZES[args.dit])
    model.prepare(batches[:2], dm.atom_count_histogram())
    return model.to(device)


@dataclass
class TrainConfig:
    name: str
    batches: str  # "random" (padded) or "trainer" (size-bucketed)
    bf16: bool
    layout: str
    compiled: bool
    adamw: str
    attention: str = "sciDiT"  # "sciDiT": sciDiT's kernel choice (fp32 on CPU); "sdpa": fused SDPA in autocast's precision
    gelu: str = "none"  # GELU approximation: "none" (exact, sciDiT's) or "tanh" (DiT's and ADiT's)
    checkpointing: bool = False  # DiT activation checkpointing (blocks recomputed in the backward pass)


@contextlib.contextmanager
def kernels(model: torch.nn.Module, attention: str, gelu: str):
    """Run ``model`` with the given attention (``sdpa``: sciDiT's choice swapped for plain fused SDPA, which CPU
    autocast runs in bf16) and GELU approximation (``tanh``: as DiT and ADiT ship): the reference and the A/B rows."""
    original = attention_module.attention
    if attention == "sdpa":
        attention_module.attention = lambda q, k, v, attn_mask: F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    gelus = {m: m.approximate for m in model.modules() if isinstance(m, torch.nn.GELU)}
    for m in gelus:
        m.approximate = gelu
    try:
        yield
    finally:
        attention_module.attention = original
        for m, approximate in gelus.items():
            m.approximate = approximate


def train_step(model: LatentDiffusion, opt: torch.optim.Optimizer | None, batch: TokenBatch, bf16: bool, self_condition_prob: float = 0.5) -> None:
    """One DiT training step as DiTModule runs it (``opt=None``: forward and backward only, for FLOP counting)."""
    with torch.autocast(batch.mask.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model.loss(batch, self_condition_prob=self_condition_prob)
    loss.backward()
    if opt is not None:
        opt.step()
    model.dit.zero_grad(set_to_none=True)


def useful_flops(model: LatentDiffusion, batch: TokenBatch, cache: dict[tuple[int, int], float]) -> float:
    """FLOPs of the expected training step on ``batch``'s sets with no padding: the sum of one-set steps' counts."""
    total = 0.0
    for ts in batch.to("cpu").unbatch():
        key = (int(ts.domain), ts.num_tokens)
        if key not in cache:
            one = collate([ts]).to(batch.mask.device)  # the self-conditioning pass runs on half of the steps
            cache[key] = 0.5 * (count_flops(lambda: train_step(model, None, one, False, 0.0)) + count_flops(lambda: train_step(model, None, one, False, 1.0)))
        total += cache[key]
    return total


def run_training(args, model: LatentDiffusion, data: dict[str, list[TokenBatch]], configs: list[TrainConfig], device: torch.device,
                 matmul: dict[str, float]) -> list[dict]:
    eager = model.dit
    compiled = torch.compile(eager, dynamic=True)
    flops_cache: dict[tuple[int, int], float] = {}
    flops = {kind: sum(useful_flops(model, b, flops_cache) for b in batches) for kind, batches in data.items()}
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for cfg in configs:
            eager.attention_layout, eager.activation_checkpointing = cfg.layout, cfg.checkpointing
            model.dit = compiled if cfg.compiled else eager
            opt = adamw(eager.parameters(), lr=1e-5, weight_decay=0.0, implementation=cfg.adamw)
            batches = data[cfg.batches]
            with kernels(model, cfg.attention, cfg.gelu):
                for b, p in itertools.product(batches[:2], (0.0, 1.0)):  # warm-up: optimiser state, and compilation of
                    train_step(model, opt, b, cfg.bf16, p)  # both self-conditioning graphs at two lengths (the dynamic graph)
                reset_peak(device)
                seconds = seconds_of(lambda: [train_step(model, opt, b, cfg.bf16) for b in batches], device)
            atoms = sum(int(b.mask.sum()) for b in batches)
            slots = sum((pack_sets(b.mask, eager.pack_length).index if cfg.layout == "packed" else b.mask).numel() for b in batches)
            dtype = "bf16" if cfg.bf16 else "fp32"
            row = {"config": cfg, "seconds": seconds, "atoms_per_s": atoms / seconds, "padding": 1 - atoms / slots,
                   "useful_flops_per_s": flops[cfg.batches] / seconds, "util": flops[cfg.batches] / seconds / matmul[dtype],
                   "dtype": dtype, "mem": peak_mib(device)}
            if cfg.name not in best or row["seconds"] < best[cfg.name]["seconds"]:
                best[cfg.name] = row
            print(f"[bench] train {cfg.name}: {row['atoms_per_s']:.0f} real atoms/s", flush=True)
    model.dit, eager.attention_layout, eager.activation_checkpointing = eager, "padded", False
    return [best[c.name] for c in configs]


@dataclass
class SampleConfig:
    name: str
    method: str
    steps: int
    cfg_scale: float
    bf16: bool
    layout: str
    compiled: bool
    attention: str = "sciDiT"  # as in TrainConfig
    gelu: str = "none"


def run_sampling(args, model: LatentDiffusion, configs: list[SampleConfig], device: torch.device) -> list[dict]:
    gen = Generator(model, model.dit, device)
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for cfg in configs:
            model.dit.attention_layout = cfg.layout

            def run(c: SampleConfig = cfg) -> None:
                gen.generate_token_sets("molecule", args.samples, steps=c.steps, method=c.method, cfg_scale=c.cfg_scale, seed=0,
                                        batch_size=args.samples, progress=False, compile=c.compiled, bf16=c.bf16)

            if cfg.compiled:  # compile outside the timing; two steps: the first and the self-conditioned graphs
                gen.generate_token_sets("molecule", args.samples, steps=2, method=cfg.method, cfg_scale=cfg.cfg_scale, seed=0,
                                        batch_size=args.samples, progress=False, compile=True, bf16=cfg.bf16)
            reset_peak(device)
            with kernels(model, cfg.attention, cfg.gelu):
                seconds = seconds_of(run, device)
            row = {"config": cfg, "seconds": seconds, "per_s": args.samples / seconds, "mem": peak_mib(device)}
            if cfg.name not in best or seconds < best[cfg.name]["seconds"]:
                best[cfg.name] = row
            print(f"[bench] sample {cfg.name}: {row['per_s']:.3g} molecules/s", flush=True)
    model.dit.attention_layout = "padded"
    return [best[c.name] for c in configs]


# -- report ---------------------------------------------------------------------------------------


def machine(device: torch.device, native_bf16: bool) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"bf16 {'native' if native_bf16 else 'emulated (not used)'}, load average {load:.1f} at start")


def attention_label(config: TrainConfig | SampleConfig, dtype: str, device: torch.device) -> str:
    """The attention kernel and precision a row ran: fused SDPA in the row's precision, or sciDiT's choice."""
    if config.attention == "sdpa" or device.type != "cpu":
        return f"fused SDPA {dtype}"
    return "sciDiT: plain fp32 (<= 64 tokens)"


def report(args, train: list[dict], sample: list[dict], data: dict[str, list[TokenBatch]], matmul: dict[str, float],
           device: torch.device, params: int, native_bf16: bool, notes: list[str]) -> str:
    mem = "peak GPU MiB" if device.type == "cuda" else "peak RSS MiB"
    sizes = {k: f"{len(v)} x {args.batch_size} sets, {sum(int(b.mask.sum()) for b in v)} atoms" for k, v in data.items()}
    lines = [
        f"- command: `python {' '.join(sys.argv)}`",
        f"- machine: {machine(device, native_bf16)}",
        f"- model: {args.dit} ({params / 1e6:.1f} M DiT parameters) on a frozen {args.vae}; untrained weights",
        f"- training data: real QM9 + MP-20 train rows; random half/half batches ({sizes['random']}), "
        f"trainer batches from the size-bucketed loader ({sizes['trainer']})",
        "- plain matmul reference: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in matmul.items()),
        *[f"- {n}" for n in notes],
        "",
        f"| training config | batches | padding | precision | attention | GELU approx. | layout | compile | AdamW | real atoms/s | useful GFLOP/s | of matmul | {mem} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in train:
        c = r["config"]
        lines.append(f"| {c.name} | {c.batches} | {r['padding']:.1%} | {r['dtype']} | {attention_label(c, r['dtype'], device)} | {c.gelu} | {c.layout} | {'yes' if c.compiled else 'no'} | {c.adamw} | "
                     f"{r['atoms_per_s']:.0f} | {r['useful_flops_per_s'] / 1e9:.1f} | {r['util']:.0%} | {r['mem']:.0f} |")
    lines += ["", f"| sampling config | solver | steps | CFG | network evals / molecule | precision | attention | GELU approx. | layout | compile | molecules/s | {mem} |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sample:
        c = r["config"]
        evals = network_evaluations(c.method, c.steps, c.cfg_scale)
        dtype = "bf16" if c.bf16 else "fp32"
        lines.append(f"| {c.name} | {c.method} | {c.steps} | {c.cfg_scale:g} | {evals} | {dtype} | {attention_label(c, dtype, device)} | {c.gelu} | {c.layout} | "
                     f"{'yes' if c.compiled else 'no'} | {r['per_s']:.3g} | {r['mem']:.0f} |")
    ref_t, ref_s = train[0], sample[0]
    fast_t = max(train[1:], key=lambda r: r["atoms_per_s"])
    fast_s = max(sample[1:], key=lambda r: r["per_s"])
    lines += [
        "",
        f"- **training real atoms/s, fast ({fast_t['config'].name}) / reference: {fast_t['atoms_per_s'] / ref_t['atoms_per_s']:.2f}x**",
        f"- useful FLOP/s / matmul FLOP/s of the same precision: reference {ref_t['util']:.0%} ({ref_t['dtype']}), fast {fast_t['util']:.0%} ({fast_t['dtype']})",
        f"- peak memory, training: reference {ref_t['mem']:.0f} MiB, fast {fast_t['mem']:.0f} MiB, "
        + ", ".join(f"{r['config'].name} {r['mem']:.0f} MiB ({r['atoms_per_s'] / ref_t['atoms_per_s']:.2f}x the reference's atoms/s)"
                    for r in train if r["config"].checkpointing),
        f"- **sampling molecules/s, fast ({fast_s['config'].name}) / 100 Euler steps CFG 2 fp32: {fast_s['per_s'] / ref_s['per_s']:.2f}x** "
        "(validity at this setting: see experiments/sampler_sweep.py on a trained checkpoint; not measured here)",
    ]
    if "bf16" in matmul:
        lines.append(f"- bf16 / fp32 plain matmul speed: {matmul['bf16'] / matmul['fp32']:.2f}x")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    native_bf16 = resolve_bf16("auto", device)
    dm, trainer_batches, random_batches = load_data(args)
    model = build_model(args, dm, random_batches, device)
    data = {"random": [b.to(device) for b in random_batches], "trainer": [b.to(device) for b in trainer_batches]}
    print(f"[bench] data and model: {time.perf_counter() - t0:.1f} s", flush=True)
    size = 4096 if device.type == "cuda" else 1024
    matmul = {"fp32": matmul_flops_per_s(device, torch.float32, size)}
    if native_bf16:
        matmul["bf16"] = matmul_flops_per_s(device, torch.bfloat16, size)
    notes = []
    problem = None if args.no_compile else compile_problem(device.type)
    if problem:
        notes.append(f"torch.compile candidates left out: {problem}")
    with_compile = not args.no_compile and problem is None
    layouts = ["padded"] + ([] if args.no_packed else ["packed"])

    train_configs = [TrainConfig("reference", "random", False, "padded", False, "for-loop", "sdpa", "tanh")]
    # the AdamW kernel the trainer runs with its default gradient clipping (foreach under bf16-mixed, else fused)
    opt_bf16, opt_fp32 = (adamw_for(SimpleNamespace(precision=p, gradient_clip_val=1.0)) for p in ("bf16-mixed", "32-true"))
    opt_fast = opt_bf16 if native_bf16 else opt_fp32
    train_configs += [TrainConfig(f"fast {layout}", "trainer", native_bf16, layout, False, opt_fast) for layout in layouts]
    if native_bf16:  # is bf16 really the faster precision for this model here?
        train_configs.append(TrainConfig("fast padded fp32", "trainer", False, "padded", False, opt_fp32))
        if device.type == "cpu":  # and is fp32 attention inside bf16 autocast the faster choice?
            train_configs.append(TrainConfig("fast padded, bf16 attention", "trainer", True, "padded", False, opt_fast, "sdpa"))
    # the kernels DiT ships (fused SDPA, tanh GELU) on the fast configuration: what sciDiT's kernel choices add
    train_configs.append(TrainConfig("fast padded, DiT's kernels", "trainer", native_bf16, "padded", False, opt_fast, "sdpa", "tanh"))
    # the memory option: activation checkpointing, in fp32 (the memory target) and in the fast precision
    train_configs.append(TrainConfig("fast padded fp32, checkpointing", "trainer", False, "padded", False, opt_fp32, checkpointing=True))
    if native_bf16:
        train_configs.append(TrainConfig("fast padded, checkpointing", "trainer", True, "padded", False, opt_fast, checkpointing=True))
    if with_compile:
        train_configs.append(TrainConfig("fast padded compiled", "trainer", native_bf16, "padded", True, opt_fast))
    train = run_training(args, model, data, train_configs, device, matmul)
    print(f"[bench] training done: {time.perf_counter() - t0:.1f} s", flush=True)

    method, steps, cfg_scale = args.sampler
    sample_configs = [SampleConfig("reference", "euler", 100, 2.0, False, "padded", False, "sdpa", "tanh")]
    sample_configs += [SampleConfig(f"fast {layout}", method, steps, cfg_scale, native_bf16, layout, False) for layout in layouts]
    if with_compile:
        sample_configs.append(SampleConfig("fast padded compiled", method, steps, cfg_scale, native_bf16, "padded", True))
    sample = run_sampling(args, model, sample_configs, device)

    params = sum(p.numel() for p in model.dit.parameters())
    text = report(args, train, sample, data, matmul, device, params, native_bf16, notes)
    text += f"- total benchmark time: {time.perf_counter() - t0:.0f} s\n"
    print(text)
    if args.out:
        Path(args.out).write_text(f"# DiT speed benchmark ({device.type})\n\n" + text)


if __name__ == "__main__":
    main()
