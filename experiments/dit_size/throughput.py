"""Training steps/s of each VAE and DiT size on the joint CPU recipe's batches: the budgets of train.sh.

    python experiments/dit_size/throughput.py --threads 1 --vae VAE-T --dit DiT-T DiT-XS DiT-S

One process, one configuration after another, on the trainer's real batches (``experiment=
qm9_mp20_joint_cpu``: batch 64, size-bucketed), each step as the trainer runs it: autocast in the
precision ``trainer.precision=auto`` picks, backward, gradient clipping, AdamW. Untrained weights
(speed does not depend on them). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterable

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sciDiT.models.dit import DIT_SIZES
from sciDiT.models.latent_diffusion import LatentDiffusion
from sciDiT.models.vae import VAE_SIZES
from sciDiT.training.compile import compile_module
from sciDiT.training.precision import resolve_bf16
from sciDiT.training.vae_module import VAEModule


def steps_per_second(loss_fn: Callable[[object], torch.Tensor], params: Iterable[torch.nn.Parameter], batches: list, bf16: bool, warmup: int) -> float:
    """Steps/s over ``batches[warmup:]`` after ``warmup`` untimed steps (optimiser state, compilation)."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=1e-5, foreach=True)

    def step(batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for batch in batches[:warmup]:
        step(batch)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    return (len(batches) - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vae", nargs="*", default=["VAE-T"], choices=sorted(VAE_SIZES))
    parser.add_argument("--dit", nargs="*", default=["DiT-T", "DiT-XS", "DiT-S"], choices=sorted(DIT_SIZES))
    parser.add_argument("--batches", type=int, default=10, help="timed batches per configuration")
    parser.add_argument("--compile", action="store_true", help="also time each DiT compiled (dit.compile=true; 30 warm-up steps)")
    parser.add_argument("--data-dir", default=None, help="default: SCIDIT_DATA_DIR")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = ["experiment=qm9_mp20_joint_cpu"] + ([f"paths.data_dir={args.data_dir}"] if args.data_dir else [])
    with initialize_config_module("sciDiT.configs", version_base=None):
        cfg = compose("train", overrides=overrides)
    data = instantiate(cfg.data)
    data.setup("fit")
    warmup = 30 if args.compile else 2
    batches = list(itertools.islice(data.train_dataloader(), warmup + args.batches))
    atoms = sum(int(b.mask.sum()) for b in batches) / len(batches)
    bf16 = resolve_bf16("auto", "cpu")
    print(f"{args.threads} thread(s), bf16 autocast {bf16}, batch {cfg.data.batch_size} sets / {atoms:.0f} atoms on average")
    print("| model | parameters | compiled | steps/s |\n|---|---|---|---|")
    vae_cfg = OmegaConf.to_container(cfg.model.vae)
    for name in args.vae:
        module = VAEModule({**vae_cfg, **VAE_SIZES[name]}, loss_weights=dict(cfg.vae.loss_weights), latent_noise=0.2).train()
        rate = steps_per_second(lambda b, m=module: m._losses(b)["loss"], module.parameters(), batches, bf16, warmup)
        print(f"| {name} | {sum(p.numel() for p in module.parameters()) / 1e6:.2f} M | no | {rate:.2f} |", flush=True)
    for name in args.dit:
        for compiled in (False, True) if args.compile else (False,):
            torch.manual_seed(0)
            model = LatentDiffusion(vae_cfg, {**OmegaConf.to_container(cfg.model.dit), **DIT_SIZES[name]}).train()
            if compiled:
                compile_module(model.dit, "cpu", in_place=True)
            rate = steps_per_second(lambda b, m=model: m.loss(b, cfg.dit.self_condition_prob), model.dit.parameters(), batches, bf16, warmup)
            print(f"| {name} | {sum(p.numel() for p in model.dit.parameters()) / 1e6:.2f} M | {'yes' if compiled else 'no'} | {rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
