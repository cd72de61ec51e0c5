"""Score exported samples offline: ``python -m sciDiT.evaluate molecules=x.sdf reference=qm9 out=report.json``.

Arguments are ``key=value`` pairs:

==============  ==============================================================================
molecules=P     an SDF / XYZ file or folder of them (exactly one of molecules / crystals)
crystals=P      a CIF file (one or more blocks), folder of CIFs, or CDVAE CSV with a ``cif`` column
reference=R     ``qm9`` (train split SMILES + a train subset for distributions), ``mp20`` (train for
                novelty, test for distances), a file/folder of the same kind, or ``none`` (default)
out=P           JSON report path (default ``report.json``); a Markdown report and plots go beside it
posebusters=1   PoseBusters checks (slow, molecules);  coverage=1  COV-R/COV-P (slow, crystals)
chgnet=1        CHGNet stability proxy (slow, crystals);  openbabel=0  skip the OpenBabel path
ref_limit=N     reference sets used for distributions / coverage (default 5000 molecules, 1000 crystals)
data_dir=P      data folder (default: ``$SCIDIT_DATA_DIR`` or ``./data``)
==============  ==============================================================================

The JSON holds flat keys (``validity``, ``uniqueness``, ``novelty``, ...). Molecule validity is strict
(RDKit sanitization, no radicals, no fallback), on the SD file's own bonds when it carries bonds
(``*_file_bonds``) and on bonds perceived from coordinates (``*_perceived``), never mixed; see
:mod:`sciDiT.evaluation.molecules`. Bad input prints one line and exits with status 2; nothing is
written then.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

from sciDiT.errors import SciDiTInputError

FLAGS = ("posebusters", "coverage", "chgnet", "openbabel")
KEYS = ("molecules", "crystals", "reference", "out", "ref_limit", "data_dir", "cache_dir", *FLAGS)


def parse_args(argv: list[str]) -> dict[str, str]:
    """``key=value`` pairs into a dict; unknown keys and missing ``=`` are input errors."""
    args: dict[str, str] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise SciDiTInputError(f"bad argument {item!r}; expected key=value with key in {', '.join(KEYS)}")
        args[key] = value
    if ("molecules" in args) == ("crystals" in args):
        raise SciDiTInputError("give exactly one of molecules=PATH or crystals=PATH")
    for flag in FLAGS:
        if args.get(flag, "0").lower() not in ("0", "1", "true", "false", "yes", "no"):
            raise SciDiTInputError(f"{flag} must be true or false, got {args[flag]!r}")
    return args


def _flag(args: dict[str, str], key: str, default: bool) -> bool:
    return args.get(key, str(default)).lower() in ("1", "true", "yes")


def _int(args: dict[str, str], key: str, default: int) -> int:
    try:
        return int(args.get(key, default))
    except ValueError as err:
        raise SciDiTInputError(f"{key} must be an integer, got {args[key]!r}") from err


# -- references -----------------------------------------------------------------------------------
def _qm9_reference(args: dict[str, str], limit: int):
    """QM9 train SMILES (canonicalised once, cached) and the first ``limit`` train molecules."""
    from sciDiT.data.paths import resolve_cache_dir
    from sciDiT.data.qm9 import load_qm9_split
    from sciDiT.evaluation.molecules import canonicalize_smiles

    train = load_qm9_split("train", args.get("data_dir"), args.get("cache_dir"))
    cache = resolve_cache_dir(args.get("cache_dir")) / "qm9_train_canonical_smiles.txt"
    if cache.is_file():
        smiles = set(cache.read_text().split())
    else:
        smiles = canonicalize_smiles(train[i].meta["smiles"] for i in range(len(train)))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("\n".join(sorted(smiles)))
    return smiles, [train[i] for i in range(min(limit, len(train)))]


def _mp20_reference(args: dict[str, str], split: str, limit: int | None = None):
    """MP-20 ``split`` through the cached data loader (parsed once, shared with training)."""
    from sciDiT.data.cdvae import load_cdvae

    data = load_cdvae("mp20", split, args.get("data_dir"), args.get("cache_dir"))
    return [data[i] for i in range(len(data) if limit is None else min(limit, len(data)))]


# -- runs -----------------------------------------------------------------------------------------
def run_molecules(args: dict[str, str]):
    from sciDiT.evaluation.io import read_molecules
    from sciDiT.evaluation.molecules import canonical_smiles, evaluate_molecules, rdkit_molecule

    sets = read_molecules(args["molecules"], keep_bonds=True)
    written = [ts.meta.pop("written", None) for ts in sets]  # the file's own bonds, scored apart from perceived ones
    ref = args.get("reference", "none")
    limit = _int(args, "ref_limit", 5000)
    ref_smiles = ref_sets = None
    if ref == "qm9":
        ref_smiles, ref_sets = _qm9_reference(args, limit)
    elif ref != "none":
        ref_sets = read_molecules(ref)
        # the lenient perception for the reference: more of it is recognised, so novelty is stricter
        ref_mols = (rdkit_molecule(ts, hueckel_retry=True) for ts in ref_sets)
        ref_smiles = [s for s in (canonical_smiles(m) for m in ref_mols if m is not None) if s]
        ref_sets = ref_sets[:limit]
    return evaluate_molecules(sets, ref_smiles, ref_sets, openbabel=_flag(args, "openbabel", True), posebusters=_flag(args, "posebusters", False), written=written)


def run_crystals(args: dict[str, str]):
    from sciDiT.evaluation.crystals import evaluate_crystals
    from sciDiT.evaluation.io import read_crystals

    sets = read_crystals(args["crystals"])
    ref = args.get("reference", "none")
    limit = _int(args, "ref_limit", 1000)
    train = test = None
    if ref == "mp20":
        train = _mp20_reference(args, "train")
        test = _mp20_reference(args, "test", limit)
    elif ref != "none":
        train = read_crystals(ref)
        test = train[:limit]
    from sciDiT.data.paths import resolve_cache_dir

    return evaluate_crystals(
        sets, train, test, with_coverage=_flag(args, "coverage", False), with_chgnet=_flag(args, "chgnet", False), cache_dir=resolve_cache_dir(args.get("cache_dir"))
    )


# -- report ---------------------------------------------------------------------------------------
def _table(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {v:.4f}" if not float(v).is_integer() else f"{k:<{width}}  {int(v)}" for k, v in metrics.items())


def _plots_molecules(ev, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rdkit.Chem import Draw

    out = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    dists = [("sample", ev.sample_dist)] + ([("reference", ev.reference_dist)] if ev.reference_dist else [])
    for label, d in dists:
        n = sum(d.atom_counts.values())
        ks = sorted(d.atom_counts)
        axes[0].plot(ks, [d.atom_counts[k] / n for k in ks], "o-", label=label)
        lengths = d.all_bond_lengths()
        if len(lengths):
            axes[2].hist(lengths, bins=80, range=(0.8, 1.8), density=True, histtype="step", label=label)
    elements = sorted({e for _, d in dists for e in d.atom_types})
    for j, (label, d) in enumerate(dists):
        total = sum(d.atom_types.values())
        axes[1].bar([i + 0.4 * j for i in range(len(elements))], [d.atom_types[e] / total for e in elements], width=0.4, label=label)
    axes[1].set_xticks(range(len(elements)), elements)
    for ax, title in zip(axes, ("atoms per molecule", "element frequency", "bond length (A, EDM bonds)")):
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "distributions.png", dpi=110)
    plt.close(fig)
    out.append("distributions.png")
    if ev.valid_mols:
        from rdkit import Chem

        mols = [Chem.RemoveHs(m, sanitize=False) for m in ev.valid_mols[:16]]
        for m in mols:
            m.RemoveAllConformers()
        Draw.MolsToGridImage(mols, molsPerRow=4, subImgSize=(220, 180)).save(folder / "molecules.png")
        out.append("molecules.png")
    return out


def _plots_crystals(ev, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].hist(ev.density, bins=40, density=True, histtype="step", label="sample (valid)")
    axes[1].hist(ev.num_elements, bins=range(1, 10), density=True, histtype="step", label="sample (valid)")
    if ev.reference_density is not None:
        axes[0].hist(ev.reference_density, bins=40, density=True, histtype="step", label="reference")
        axes[1].hist(ev.reference_num_elements, bins=range(1, 10), density=True, histtype="step", label="reference")
    for ax, title in zip(axes, ("density (g/cm^3)", "elements per crystal")):
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "distributions.png", dpi=110)
    plt.close(fig)
    return ["distributions.png"]


def _molecule_note(metrics: dict[str, float | None]) -> str:
    """One paragraph that says which bonds the headline molecule validity is scored on."""
    if metrics.get("headline_file_bonds"):
        basis = (f"on the bonds written in the file ({100 * (metrics.get('file_bonds_decoded') or 0):.1f}% of records with "
                 "`bond_source` = `decoded`); `*_perceived` re-perceives bonds from the coordinates alone")
    else:
        basis = "on bonds perceived from the coordinates (the file carries none); `*_perceived` is the same figure"
    return ("Headline `validity` is strict (RDKit sanitization, no radical electrons, no fallback; perception at charge 0) "
            f"{basis}. `validity_rdkit_hueckel_retry` is lenient (failed perceptions retried with extended-Hueckel "
            "connectivity) and `validity_openbabel` is ADiT's OpenBabel path; neither is the headline.")


def write_report(kind: str, source: str, ev, out: Path) -> None:
    """Write ``out`` (flat JSON) and ``out`` with ``.md`` (table + plots in ``<stem>_plots/``), atomically."""
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in ev.metrics.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = out.parent / f"{out.stem}_plots"
    plots.mkdir(exist_ok=True)
    images = _plots_molecules(ev, plots) if kind == "molecules" else _plots_crystals(ev, plots)
    lines = [f"# sciDiT evaluation: {kind}", "", f"Samples: `{source}`", ""]
    lines += [_molecule_note(metrics), ""] if kind == "molecules" else []
    lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {'n/a' if v is None else f'{v:.4f}'} |" for k, v in metrics.items()]
    if kind == "crystals":
        lines += ["", "Energy above hull is not reported: it needs a phase diagram of reference energies that is not available offline."]
    lines += [""] + [f"![{name}]({plots.name}/{name})" for name in images]
    for path, text in ((out, json.dumps(metrics, indent=2) + "\n"), (out.with_suffix(".md"), "\n".join(lines) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp_")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        kind = "molecules" if "molecules" in args else "crystals"
        ev = run_molecules(args) if kind == "molecules" else run_crystals(args)
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_table(ev.metrics))
    out = Path(args.get("out", "report.json"))
    write_report(kind, args[kind], ev, out)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
