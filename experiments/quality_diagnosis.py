"""Where generation quality is lost: decoder robustness, DiT error, and how generated molecules fail.

    OMP_NUM_THREADS=1 SCIDIT_DATA_DIR=../shared/data python experiments/quality_diagnosis.py \
        outputs/baseline_10min/dit/checkpoints/last.ckpt --out experiments/quality_diagnosis

On one trained checkpoint (VAE + EMA DiT) the pipeline is cut into stages and each is scored alone:

1. **Decoder robustness.** Real test sets (QM9 test split, MP-20 test) are encoded to their
   posterior means, standardised exactly as the DiT sees them (``LatentDiffusion.latents``: per
   dimension ``(mu - latent_mean) / latent_std``), given Gaussian noise of ``sigma`` in those units,
   and decoded. Molecules: strict RDKit validity (bonds perceived from coordinates), the OpenBabel path
   (ADiT's metric), EDM stability, and whether the decoded elements equal the true ones; crystals:
   structural and SMACT validity. ``sigma = 0`` is plain reconstruction.
2. **DiT error.** Per-dimension 1-Wasserstein distance between generated latents (Euler, 100 steps,
   CFG 1: the flow's output before decoding) and the real test latents, next to two yardsticks: the
   W1 of the flow's N(0, 1) source against the real latents (no training) and the W1 between two
   halves of the real latents (sampling noise). Then molecule validity over a grid of sampling steps x
   solver x CFG scale with the same seed and set sizes in every cell (paired comparison).
3. **Where molecules fail.** Generated molecules (Euler, 100 steps, CFG 1), the plain reconstructions
   of part 1 (sigma = 0) and real test molecules: the first failure of each molecule on the strict path (odd electron count, an atom with
   more neighbours than its valence, no bond-order assignment, sanitization, radicals), fragments,
   formal charges of the assigned molecules, EDM valence errors by element, and bond lengths by
   element pair against QM9.

Writes ``<out>/results.json`` and ``<out>/diagnosis.png`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds
from scipy.stats import wasserstein_distance

from sciDiT.batch import Domain, TokenSet, collate
from sciDiT.data import load_cdvae, load_qm9_split
from sciDiT.evaluation.crystals import composition_validity, structure_validity, to_structure
from sciDiT.evaluation.molecules import EDM_VALENCE, edm_bond_orders, edm_stability, openbabel_molecule, rdkit_molecule, strict_sanitized
from sciDiT.flow import integrate, model_velocity, sample_noise
from sciDiT.generate import Generator, load_generator
from sciDiT.tokenizers import MoleculeTokenizer, symbol

SIGMAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
STEPS = (10, 20, 50, 100, 200)
METHODS = ("euler", "heun")
CFGS = (1.0, 1.5, 2.0, 3.0)
MAX_NEIGHBOURS = {1: 1, 6: 4, 7: 4, 8: 2, 9: 1}  # N may carry 4 (ammonium-like, charged), O 2
PAIRS = ("C-H", "C-C", "C-N", "C-O", "N-H", "O-H")
BATCH = 256


# -- data and latents --------------------------------------------------------------------------------
def test_sets(n: int, seed: int) -> dict[Domain, list[TokenSet]]:
    """A seeded random subset of ``n`` QM9 test molecules and ``n`` MP-20 test crystals."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for domain, data in ((Domain.MOLECULE, load_qm9_split("test")), (Domain.CRYSTAL, load_cdvae("mp20", "test"))):
        out[domain] = [data[i] for i in torch.randperm(len(data), generator=g)[:n].tolist()]
    return out


@torch.no_grad()
def noisy_decodes(gen: Generator, sets: list[TokenSet], sigma: float, seed: int) -> tuple[list[TokenSet], np.ndarray]:
    """Decodes of ``sets`` after noise ``sigma`` on their standardised latents, and those clean latents [atoms, L]."""
    model, g = gen.model, torch.Generator().manual_seed(seed)
    decoded, latents = [], []
    for k in range(0, len(sets), BATCH):
        batch = collate(sets[k : k + BATCH])
        x1 = model.latents(batch)  # [B, N, L] standardised, zeros at padding
        latents.append(x1[batch.mask].numpy())
        noisy = x1 + sigma * torch.randn(x1.shape, generator=g) * batch.mask[..., None]  # [B, N, L]
        decoded += model.vae.decode_to_batch(model.to_vae(noisy, batch.domain), batch.mask, batch.domain).unbatch()
    return decoded, np.concatenate(latents)


@torch.no_grad()
def generated_latents(gen: Generator, domain: Domain, n: int, seed: int) -> tuple[np.ndarray, list[TokenSet]]:
    """Flow outputs [atoms, L] (standardised units, Euler 100 steps, CFG 1) of ``n`` sets and their decodes."""
    model, g = gen.model, torch.Generator().manual_seed(seed)
    sizes = model.sample_set_sizes(domain, n, g)  # [n]
    latents, decoded = [], []
    for k in range(0, n, BATCH):
        s = sizes[k : k + BATCH]
        mask = torch.arange(int(s.max()))[None, :] < s[:, None]  # [b, N]
        dom = torch.full((len(s),), int(domain))  # [b]
        x0 = sample_noise(mask, model.vae.latent_dim, generator=g)  # [b, N, L]
        velocity = model_velocity(gen.ema_dit, mask, {"domain": dom}, cfg_scale=1.0, self_condition=gen.ema_dit.self_condition)
        x1 = integrate(velocity, x0, steps=100, method="euler")  # [b, N, L]
        latents.append(x1[mask].numpy())
        decoded += model.vae.decode_to_batch(model.to_vae(x1, dom), mask, dom).unbatch()
    return np.concatenate(latents), decoded


def w1_per_dim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1-Wasserstein distance per latent dimension between row samples ``a`` [n, L] and ``b`` [m, L]."""
    return np.array([wasserstein_distance(a[:, d], b[:, d]) for d in range(a.shape[1])])


# -- scores ------------------------------------------------------------------------------------------
def molecule_scores(sets: list[TokenSet], truth: list[TokenSet] | None = None, retry: bool = False) -> dict[str, float]:
    """Strict RDKit validity, OpenBabel validity, EDM stability (+ decoded elements equal the truth,
    + the lenient Hueckel-retry validity when ``retry``)."""
    stab = [edm_stability(s) for s in sets]
    out = {
        "validity_strict": float(np.mean([rdkit_molecule(s) is not None for s in sets])),
        "validity_openbabel": float(np.mean([openbabel_molecule(s) is not None for s in sets])),
        "atom_stability": sum(s[0] for s in stab) / sum(s[1] for s in stab),
        "molecule_stability": float(np.mean([s[2] for s in stab])),
    }
    if retry:
        out["validity_rdkit_hueckel_retry"] = float(np.mean([rdkit_molecule(s, hueckel_retry=True) is not None for s in sets]))
    if truth is not None:
        out["types_match"] = float(np.mean([torch.equal(a.types, b.types) for a, b in zip(sets, truth)]))
    return out


def crystal_scores(sets: list[TokenSet]) -> dict[str, float]:
    """CDVAE structural, SMACT compositional and overall validity."""
    structural = np.array([structure_validity(to_structure(s)) for s in sets])
    composition = np.array([composition_validity(s) for s in sets])
    return {"structural_validity": float(structural.mean()), "compositional_validity": float(composition.mean()),
            "validity": float((structural & composition).mean())}


# -- failure analysis --------------------------------------------------------------------------------
def _connectivity(ts: TokenSet) -> Chem.Mol | None:
    mol = MoleculeTokenizer().to_rdkit(ts, bonds=False)
    try:
        rdDetermineBonds.DetermineConnectivity(mol)
    except Exception:  # RDKit raises on impossible geometries
        return None
    return mol


def first_failure(ts: TokenSet) -> str:
    """Why ``ts`` fails the strict perceived path (``valid`` if it does not), in pipeline order.

    A failed bond-order assignment is explained by the first that applies: an odd electron count (no
    closed-shell neutral molecule exists), an atom with more covalent-radius neighbours than its
    valence (H 1, C 4, N 4, O 2, F 1: clashes or over-bonded cages), else no fitting orders.
    """
    mol = _connectivity(ts)
    if mol is None:
        return "connectivity fails"
    assigned = MoleculeTokenizer().to_rdkit(ts, bonds=False)
    try:
        rdDetermineBonds.DetermineBonds(assigned, charge=0)
    except Exception:  # no bond orders fit the connectivity at charge 0
        if sum(ts.types.tolist()) % 2:
            return "odd electron count"
        if any(a.GetDegree() > MAX_NEIGHBOURS.get(a.GetAtomicNum(), 8) for a in mol.GetAtoms()):
            return "atom over its valence"
        return "no bond orders at charge 0"
    trial = Chem.Mol(assigned)
    try:
        Chem.SanitizeMol(trial)
    except Exception:  # bad valence / aromaticity
        return "sanitization fails"
    return "valid" if strict_sanitized(assigned) is not None else "radical"


def bond_lengths(sets: list[TokenSet]) -> dict[str, np.ndarray]:
    """Lengths (A) of covalent-radius bonds (RDKit connectivity) by element pair like ``C-H``."""
    out: dict[str, list[float]] = {}
    for ts in sets:
        mol = _connectivity(ts)
        if mol is None:
            continue
        pos = mol.GetConformer().GetPositions()
        for b in mol.GetBonds():
            i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
            key = "-".join(sorted((symbol(int(ts.types[i])), symbol(int(ts.types[j]))), key=lambda s: (s != "C", s != "N", s != "O", s)))
            out.setdefault(key, []).append(float(np.linalg.norm(pos[i] - pos[j])))
    return {k: np.array(v) for k, v in out.items()}


def failure_report(sets: list[TokenSet]) -> dict:
    """Failure reasons, fragments, formal charges and EDM valence errors by element of ``sets``."""
    reasons = Counter(first_failure(s) for s in sets)
    fragments = Counter()
    for s in sets:
        mol = _connectivity(s)
        fragments[len(Chem.GetMolFrags(mol)) if mol is not None else 0] += 1
    charged = assigned = 0
    for s in sets:
        mol = MoleculeTokenizer().to_rdkit(s, bonds=False)
        try:
            rdDetermineBonds.DetermineBonds(mol, charge=0)
        except Exception:  # unassignable: counted among the failures above
            continue
        assigned += 1
        charged += any(a.GetFormalCharge() for a in mol.GetAtoms())
    valence: dict[str, Counter] = {}
    for s in sets:
        types = s.types.numpy()
        total = edm_bond_orders(types, s.pos.double().numpy()).sum(axis=1)
        for z, v in zip(types.tolist(), total.tolist()):
            if z in EDM_VALENCE:
                want = EDM_VALENCE[z]
                valence.setdefault(symbol(z), Counter())["under" if v < want else "over" if v > want else "ok"] += 1
    n = len(sets)
    return {
        "first_failure": {k: v / n for k, v in reasons.most_common()},
        "fragments": {str(k): v / n for k, v in sorted(fragments.items())},
        "assigned_at_charge_0": assigned / n,
        "charged_among_assigned": charged / assigned if assigned else float("nan"),
        "edm_valence_by_element": {e: {k: c[k] / sum(c.values()) for k in ("ok", "under", "over")} | {"atoms": sum(c.values())}
                                   for e, c in sorted(valence.items())},
    }


def bond_length_report(sample: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per element pair: counts, means, stds, W1 to real and the share outside real's 1-99 percentile range
    widened by 0.05 A on each side (perception tolerates errors of about 0.1 A)."""
    out = {}
    for pair in PAIRS:
        s, r = sample.get(pair, np.zeros(0)), real.get(pair, np.zeros(0))
        if not len(s) or not len(r):
            continue
        lo, hi = np.percentile(r, [1, 99]) + np.array([-0.05, 0.05])
        out[pair] = {"n_sample": len(s), "n_real": len(r), "mean_sample": float(s.mean()), "mean_real": float(r.mean()),
                     "std_sample": float(s.std()), "std_real": float(r.std()), "w1": float(wasserstein_distance(s, r)),
                     "outside_real_range": float(((s < lo) | (s > hi)).mean())}
    return out


# -- plot and tables ---------------------------------------------------------------------------------
def plot(results: dict, bonds: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    dec = results["decoder"]
    for key, label in (("validity_strict", "QM9 strict RDKit"), ("validity_openbabel", "QM9 OpenBabel"),
                       ("molecule_stability", "QM9 EDM mol. stability"), ("types_match", "QM9 elements all right")):
        axes[0].plot(SIGMAS, [dec[str(s)]["molecule"][key] for s in SIGMAS], "o-", label=label)
    for key, label in (("structural_validity", "MP-20 structural"), ("compositional_validity", "MP-20 SMACT")):
        axes[0].plot(SIGMAS, [dec[str(s)]["crystal"][key] for s in SIGMAS], "s--", label=label)
    axes[0].set(title="VAE decodes of real test latents + noise", xlabel="sigma (standardised latent units)", ylabel="share", ylim=(0, 1.02))
    axes[0].legend(fontsize=7)
    w1 = results["dit_w1"]["molecule"]
    axes[1].plot(sorted(w1["generated_vs_real"], reverse=True), label="generated vs real")
    axes[1].plot(sorted(w1["noise_vs_real"], reverse=True), label="N(0,1) source vs real")
    axes[1].plot(sorted(w1["real_half_vs_half"], reverse=True), label="real half vs half")
    axes[1].set(title="QM9 per-dimension W1 of latents (sorted)", xlabel="latent dimension (sorted)", ylabel="W1 (std units)")
    axes[1].legend(fontsize=7)
    grid = results.get("grid", [])
    for method, style in zip(METHODS, ("-", "--")):
        for cfg in CFGS:
            rows = sorted((c for c in grid if c["method"] == method and c["cfg"] == cfg), key=lambda c: c["steps"])
            if rows:
                axes[2].plot([c["steps"] for c in rows], [c["validity_strict"] for c in rows], style, marker="o", label=f"{method} cfg {cfg:g}")
    axes[2].set(title="generated QM9 strict validity", xscale="log", xlabel="sampling steps", ylabel="share")
    if grid:
        axes[2].legend(fontsize=7, ncol=2)
    for (label, by_pair), style in zip(bonds.items(), ("-", ":", "--")):
        for pair, color in (("C-H", "C0"), ("C-C", "C1")):
            if pair in by_pair:
                axes[3].hist(by_pair[pair], bins=120, range=(0.8, 2.0), density=True, histtype="step", color=color, ls=style, label=f"{pair} {label}")
    axes[3].set(title="bond lengths (covalent-radius bonds)", xlabel="A", yscale="log")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tables(results: dict) -> str:
    lines = ["| sigma | QM9 strict RDKit | QM9 Hueckel retry (lenient) | QM9 OpenBabel | QM9 EDM mol. stability | QM9 elements right | MP-20 structural | MP-20 SMACT | MP-20 both |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in SIGMAS:
        m, c = results["decoder"][str(s)]["molecule"], results["decoder"][str(s)]["crystal"]
        lines.append(f"| {s:g} | {m['validity_strict']:.3f} | {m['validity_rdkit_hueckel_retry']:.3f} | {m['validity_openbabel']:.3f} | {m['molecule_stability']:.3f} | "
                     f"{m['types_match']:.3f} | {c['structural_validity']:.3f} | {c['compositional_validity']:.3f} | {c['validity']:.3f} |")
    lines += ["", "| domain | W1 generated vs real (mean / max) | W1 N(0,1) vs real | W1 real half vs half |", "|---|---|---|---|"]
    for dom, w in results["dit_w1"].items():
        g, z, h = (np.array(w[k]) for k in ("generated_vs_real", "noise_vs_real", "real_half_vs_half"))
        lines.append(f"| {dom} | {g.mean():.3f} / {g.max():.3f} | {z.mean():.3f} / {z.max():.3f} | {h.mean():.3f} / {h.max():.3f} |")
    if results.get("grid"):
        lines += ["", "| solver | steps | CFG | strict RDKit | OpenBabel | EDM mol. stability | EDM atom stability |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['method']} | {c['steps']} | {c['cfg']:g} | {c['validity_strict']:.3f} | {c['validity_openbabel']:.3f} | "
                  f"{c['molecule_stability']:.3f} | {c['atom_stability']:.3f} |"
                  for c in sorted(results["grid"], key=lambda c: (c["method"], c["steps"], c["cfg"]))]
    f = results["failures"]
    lines += ["", "| molecules | strict RDKit | Hueckel retry (lenient) | OpenBabel | EDM mol. stability | EDM atom stability |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['validity_strict']:.3f} | {v['validity_rdkit_hueckel_retry']:.3f} | {v['validity_openbabel']:.3f} | "
              f"{v['molecule_stability']:.3f} | {v['atom_stability']:.3f} |" for k, v in f["scores"].items()]
    groups = ("generated", "reconstructed", "real")
    head = "| " + " | ".join(groups) + " |"
    reasons = sorted(set().union(*(f[g]["first_failure"] for g in groups)))
    lines += ["", "| first failure (strict path) " + head, "|---" * 4 + "|"]
    lines += [f"| {r} | " + " | ".join(f"{f[g]['first_failure'].get(r, 0):.3f}" for g in groups) + " |" for r in reasons]
    frags = sorted(set().union(*(f[g]["fragments"] for g in groups)), key=int)
    lines += ["", "| fragments (connectivity) " + head, "|---" * 4 + "|"]
    lines += [f"| {k} | " + " | ".join(f"{f[g]['fragments'].get(k, 0):.3f}" for g in groups) + " |" for k in frags]
    lines += ["", "| element: EDM valence ok / under / over " + head, "|---" * 4 + "|"]
    for e in f["real"]["edm_valence_by_element"]:
        cells = [f[g]["edm_valence_by_element"].get(e, {"ok": 0, "under": 0, "over": 0}) for g in groups]
        lines.append(f"| {e} | " + " | ".join(f"{c['ok']:.3f} / {c['under']:.3f} / {c['over']:.3f}" for c in cells) + " |")
    lines += ["", "| bond orders at charge 0 " + head, "|---" * 4 + "|",
              "| assigned | " + " | ".join(f"{f[g]['assigned_at_charge_0']:.3f}" for g in groups) + " |",
              "| with a formal charge, among assigned | " + " | ".join(f"{f[g]['charged_among_assigned']:.3f}" for g in groups) + " |"]
    for key, label in (("bond_lengths", "generated"), ("bond_lengths_reconstructed", "reconstructed")):
        lines += ["", f"| bond ({label} vs real) | n {label} / real | mean (A) | std (A) | W1 (A) | outside real 1-99% +-0.05 A |", "|---|---|---|---|---|---|"]
        for pair, b in f[key].items():
            lines.append(f"| {pair} | {b['n_sample']} / {b['n_real']} | {b['mean_sample']:.3f} / {b['mean_real']:.3f} | "
                         f"{b['std_sample']:.3f} / {b['std_real']:.3f} | {b['w1']:.3f} | {b['outside_real_range']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="DiT-stage checkpoint (<output_dir>/dit/checkpoints/last.ckpt)")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and diagnosis.png")
    parser.add_argument("--n-decode", type=int, default=500, help="real test sets per domain for the decoder and W1 parts")
    parser.add_argument("--n-cell", type=int, default=200, help="generated molecules per sampling-grid cell")
    parser.add_argument("--n-fail", type=int, default=1000, help="generated (and real) molecules for the failure analysis")
    parser.add_argument("--no-grid", action="store_true", help="skip the steps x solver x CFG grid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    RDLogger.DisableLog("rdApp.*")
    torch.manual_seed(args.seed)
    gen = load_generator(args.ckpt)
    results: dict = {"ckpt": str(args.ckpt), "n_decode": args.n_decode, "n_cell": args.n_cell, "n_fail": args.n_fail, "seed": args.seed}
    start = time.time()
    real = test_sets(max(args.n_decode, args.n_fail), args.seed)

    results["decoder"], real_latents = {}, {}
    for sigma in SIGMAS:
        row = {}
        for domain, name in ((Domain.MOLECULE, "molecule"), (Domain.CRYSTAL, "crystal")):
            sets = real[domain][: args.n_decode]
            decoded, latents = noisy_decodes(gen, sets, sigma, args.seed + 1)
            real_latents[name] = latents
            if sigma == 0 and domain == Domain.MOLECULE:
                reconstructed = decoded
            row[name] = molecule_scores(decoded, sets, retry=True) if domain == Domain.MOLECULE else crystal_scores(decoded)
        results["decoder"][str(sigma)] = row
        print(f"decoder sigma={sigma}: {row}  [{time.time() - start:.0f} s]", flush=True)

    results["dit_w1"] = {}
    rng = np.random.default_rng(args.seed)
    for domain, name in ((Domain.MOLECULE, "molecule"), (Domain.CRYSTAL, "crystal")):
        lat, _ = generated_latents(gen, domain, args.n_decode, args.seed + 2)
        r = real_latents[name]
        half = rng.permutation(len(r))
        results["dit_w1"][name] = {"generated_vs_real": w1_per_dim(lat, r).tolist(),
                                   "noise_vs_real": w1_per_dim(rng.standard_normal(r.shape), r).tolist(),
                                   "real_half_vs_half": w1_per_dim(r[half[: len(r) // 2]], r[half[len(r) // 2 :]]).tolist()}
        print(f"W1 {name}: generated {np.mean(results['dit_w1'][name]['generated_vs_real']):.3f}  [{time.time() - start:.0f} s]", flush=True)

    generated = gen.generate_token_sets("molecule", args.n_fail, steps=100, method="euler", cfg_scale=1.0, seed=args.seed + 4, progress=False)
    truth = real[Domain.MOLECULE][: args.n_fail]
    sample_bonds, recon_bonds, real_bonds = bond_lengths(generated), bond_lengths(reconstructed), bond_lengths(truth)
    groups = {"generated": generated, "reconstructed": reconstructed, "real": truth}
    results["failures"] = {**{k: failure_report(v) for k, v in groups.items()},
                           "bond_lengths": bond_length_report(sample_bonds, real_bonds),
                           "bond_lengths_reconstructed": bond_length_report(recon_bonds, real_bonds),
                           "scores": {k: molecule_scores(v, retry=True) for k, v in groups.items()}}
    print(f"failures done  [{time.time() - start:.0f} s]", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part, so an interrupted grid keeps what it measured
        results["seconds"] = time.time() - start
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        plot(results, {"QM9 test": real_bonds, "reconstructed": recon_bonds, "generated": sample_bonds}, args.out / "diagnosis.png")

    save()
    if not args.no_grid:
        results["grid"] = []
        cells = sorted(itertools.product(METHODS, STEPS, CFGS), key=lambda c: c[1] * (1 + (c[0] == "heun")) * (1 + (c[2] != 1)))  # cheap first
        for method, steps, cfg in cells:
            sets = gen.generate_token_sets("molecule", args.n_cell, steps=steps, method=method, cfg_scale=cfg, seed=args.seed + 3, progress=False)
            results["grid"].append({"method": method, "steps": steps, "cfg": cfg, **molecule_scores(sets)})
            print(f"grid {results['grid'][-1]}  [{time.time() - start:.0f} s]", flush=True)
            save()
    print(tables(results))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'diagnosis.png'}")


if __name__ == "__main__":
    main()
