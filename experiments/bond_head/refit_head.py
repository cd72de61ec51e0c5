"""Refit only the bond head of a trained VAE, with the encoder and decoder frozen, and write it into a
DiT-stage checkpoint (the DiT sees only encoder latents, so it is unaffected).

Why: in the joint CPU recipe the head learned connectivity but under-learned bond orders (double
bonds mostly decoded as single, measured on QM9 val), because "none" and "single" dominate the
pairs and the decoded positions are ~0.2 A off, too coarse to tell C=C from C-C by distance. This
experiment tests whether class-weighted cross-entropy on the frozen decoder states fixes that.

    python experiments/bond_head/refit_head.py vae_ckpt=<out>/vae/checkpoints/last.ckpt head_out=<out>/bond_head.pt \
        steps=2000 [dit_ckpt=<out>/dit/checkpoints/last.ckpt out=<out>/dit/refit.ckpt]
    python experiments/bond_head/refit_head.py vae_ckpt=... head_in=<out>/bond_head.pt dit_ckpt=... out=...

Class weights are inverse square-root frequencies of the training pairs; Adam with cosine decay. Prints graph equality on
QM9 val molecules before and after, as JSON lines.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from sciDiT.batch import NO_GRAPH, collate
from sciDiT.checkpoint import load_vae_checkpoint
from sciDiT.data.qm9 import load_qm9_split
from sciDiT.models.bonds import CHARGE_OFFSET
from sciDiT.models.vae import POS_SCALE, AllAtomVAE
from sciDiT.training.augment import augment


def graph_equal(vae: AllAtomVAE, sets: list, batch_size: int = 128) -> float:
    """Fraction of molecules whose reconstruction has the true types, bonds and charges."""
    same = 0
    for k in range(0, len(sets), batch_size):
        b = collate(sets[k : k + batch_size])
        r = vae.reconstruct(b)
        ok = ((r.types == b.types) | ~b.mask).all(1) & (r.bonds == b.bonds).flatten(1).all(1) & ((r.charges == b.charges) | ~b.mask).all(1)
        same += int(ok.sum())
    return same / len(sets)


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv)
    torch.manual_seed(0)
    state, hparams = load_vae_checkpoint(opts["vae_ckpt"])
    vae = AllAtomVAE(**hparams["vae"])
    vae.load_state_dict(state)
    vae.eval().requires_grad_(False)
    if "head_in" in opts:  # a head refit earlier: only write it into the DiT checkpoint
        vae.bond_head.load_state_dict(torch.load(opts["head_in"], weights_only=True))
        return write_into_dit(vae, opts)
    vae.bond_head.requires_grad_(True)
    train = load_qm9_split("train")
    train = train.subset(range(min(20000, len(train))))
    val = load_qm9_split("val")
    val_sets = [val[i] for i in range(500)]
    print(json.dumps({"step": 0, "val_graph_equal": graph_equal(vae, val_sets)}), flush=True)
    counts = torch.zeros(4)
    for i in range(0, 2000):
        b = train[i].bonds
        n = train[i].num_tokens
        counts[1:] += torch.bincount(b[:, 2], minlength=4)[1:].float()
        counts[0] += n * (n - 1) / 2 - len(b)
    weights = (counts.sum() / counts).sqrt()
    weights = weights / weights[0]
    opt = torch.optim.Adam(vae.bond_head.parameters(), lr=float(opts.get("lr", 1e-3)))
    steps, batch_size = int(opts.get("steps", 2000)), 64
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        rows = torch.randint(len(train), (batch_size,), generator=gen).tolist()
        batch = augment(collate([train[j] for j in rows]))
        with torch.no_grad():
            mu, _ = vae.encode(batch)
            h = vae.decode_states(mu, batch.mask, batch.domain)  # [B, N, D]
            pos = vae.output_heads(h, batch.mask)[1] * POS_SCALE  # [B, N, 3]
        bond_logits, charge_logits = vae.graph_logits(h, pos)
        n = batch.mask.shape[1]
        known = (batch.bonds != NO_GRAPH) & torch.ones(n, n, dtype=torch.bool).triu(1)
        loss = F.cross_entropy(bond_logits[known], batch.bonds[known], weight=weights)
        atoms = batch.mask
        loss = loss + F.cross_entropy(charge_logits[atoms], (batch.charges + CHARGE_OFFSET)[atoms])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if step % 500 == 0 or step == steps:
            print(json.dumps({"step": step, "loss": float(loss.detach()), "val_graph_equal": graph_equal(vae, val_sets)}), flush=True)
    torch.save(vae.bond_head.state_dict(), opts["head_out"])
    print(json.dumps({"class_weights": weights.tolist(), "wrote": opts["head_out"]}))
    if "dit_ckpt" in opts:
        write_into_dit(vae, opts)


def write_into_dit(vae: AllAtomVAE, opts: dict[str, str]) -> None:
    """Copy of ``dit_ckpt`` with this VAE's bond head, written to ``out``."""
    dit_raw = torch.load(opts["dit_ckpt"], map_location="cpu", weights_only=True)
    state = dit_raw["state_dict"]
    for k, v in vae.bond_head.state_dict().items():
        state[f"model.vae.bond_head.{k}"] = v
    torch.save(dit_raw, opts["out"])
    print(json.dumps({"wrote": opts["out"]}))


if __name__ == "__main__":
    main(sys.argv[1:])
