"""Peak training memory of the DiT (issue 11), one fresh process per configuration.

    python experiments/benchmark_memory.py                 # DiT-S, batch 256, the configurations below
    python experiments/benchmark_memory.py --quick         # CPU-sized check: batch 32

A process's peak RSS never falls back (the allocator keeps freed pages), so configurations measured
one after another in one process (``experiments/benchmark_dit.py``'s memory column) all show the
largest peak so far. Here each configuration runs alone in a child process on the same data and
model as ``benchmark_dit.py``: RSS once data and model are loaded, peak RSS (GPU: peak allocated)
over ``--steps`` training steps, the bytes autograd keeps for the backward pass (the activations,
what ``activation_checkpointing`` cuts), and the steps' wall time relative to the first row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_dit as bench  # noqa: E402  (the shared workload: data, model, training step)

from sciDiT.training.optim import adamw, adamw_for  # noqa: E402
from sciDiT.training.precision import resolve_bf16  # noqa: E402

# name: (batches, bf16, activation checkpointing)
CONFIGS = {
    "reference (random padded batches, fp32)": ("random", False, False),
    "trainer batches, fp32": ("trainer", False, False),
    "trainer batches, fp32, checkpointing": ("trainer", False, True),
    "trainer batches, bf16": ("trainer", True, False),
    "trainer batches, bf16, checkpointing": ("trainer", True, True),
}


def measure(args: argparse.Namespace, name: str) -> dict:
    """One configuration in this process: loaded RSS, peak RSS of the training steps, saved activation bytes."""
    kind, bf16, checkpointing = CONFIGS[name]
    device = torch.device(args.device)
    bargs = bench.parse_args(["--batch-size", str(args.batch_size), "--train-batches", str(args.steps), "--dit", args.dit, "--vae", args.vae,
                              "--device", args.device] + (["--data-dir", args.data_dir] if args.data_dir else []))
    dm, trainer_batches, random_batches = bench.load_data(bargs)
    model = bench.build_model(bargs, dm, random_batches, device)
    batches = [b.to(device) for b in (random_batches if kind == "random" else trainer_batches)]
    model.dit.activation_checkpointing = checkpointing
    model.dit.train()
    opt = adamw(model.dit.parameters(), lr=1e-5, weight_decay=0.0,
                implementation=adamw_for(SimpleNamespace(precision="bf16-mixed" if bf16 else "32-true", gradient_clip_val=1.0)))
    loaded = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else bench.proc_status_mib("VmRSS")
    bench.reset_peak(device)
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        start = time.perf_counter()
        for b in batches:
            bench.train_step(model, opt, b, bf16)
        bench.sync(device)
        seconds = time.perf_counter() - start
    return {"name": name, "loaded_mib": loaded, "peak_mib": bench.peak_mib(device), "saved_mib_per_step": sum(saved) / len(batches) / 2**20,
            "seconds": seconds, "atoms": sum(int(b.mask.sum()) for b in batches)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dit", default="DiT-S")
    p.add_argument("--vae", default="VAE-S")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2, help="training steps per configuration (the first also allocates AdamW state)")
    p.add_argument("--quick", action="store_true", help="batch 32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)  # child mode: measure one configuration, print JSON
    args = p.parse_args()
    if args.quick:
        args.batch_size = min(args.batch_size, 32)
    if args.config:
        print("RESULT " + json.dumps(measure(args, args.config)))
        return
    native_bf16 = resolve_bf16("auto", torch.device(args.device))
    rows = []
    for name, (_, bf16, _) in CONFIGS.items():
        if bf16 and not native_bf16:
            continue
        cmd = [sys.executable, __file__, "--config", name, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):]))
        print(f"[memory] {name}: peak {rows[-1]['peak_mib']:.0f} MiB", flush=True)
    mem = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"\n- command: `python {' '.join(sys.argv)}`\n- {args.dit} on a frozen {args.vae}, batch {args.batch_size}, {args.steps} training steps per "
          f"configuration, each in a fresh process; bf16 {'native' if native_bf16 else 'emulated (rows left out)'}\n")
    print(f"| configuration | loaded MiB | {mem} | training on top of loaded | autograd saved tensors, MiB per step (checkpointed blocks keep only their inputs, not counted) | real atoms/s vs first row |")
    print("|---|---|---|---|---|---|")
    base = rows[0]["atoms"] / rows[0]["seconds"]
    for r in rows:
        print(f"| {r['name']} | {r['loaded_mib']:.0f} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['loaded_mib']:.0f} | {r['saved_mib_per_step']:.0f} | "
              f"{r['atoms'] / r['seconds'] / base:.2f}x |")


if __name__ == "__main__":
    main()
