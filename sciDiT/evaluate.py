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
condition=1     also score each sample against its request (read from the files: SD property / manifest
                column / CIF item ``request``); see :mod:`sciDiT.evaluation.conditional`
predictor=P     molecules: a QM9 property predictor checkpoint, or a folder of them (one per property,
                ``experiments/inverse_design/train_property_predictor.py``)
xtb=1           molecules: GFN2-xTB gaps of the gap-requested samples (tblite; seconds per molecule)
xtb_calibration=P  molecules: JSON ``{"slope", "intercept"}`` from ``experiments/inverse_design/calibrate_xtb.py``
unconditional=P crystals: unconditional samples for the space-group base rate (default: the samples here
                that request no space group)
chgnet_references=P  crystals, with chgnet=1: JSON of elemental reference energies
                (``experiments/inverse_design/fit_chgnet_references.py``) for a CHGNet formation energy
regressor=0     crystals: skip the composition regressor of formation energy / band gap (fitted on
                MP-20 train from ``data_dir`` when a sample requests one; default on)
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
import sys
from pathlib import Path

from sciDiT.errors import SciDiTInputError

FLAGS = ("posebusters", "coverage", "chgnet", "openbabel", "condition", "xtb", "regressor")
CONDITION_KEYS = ("predictor", "xtb", "xtb_calibration", "unconditional", "regressor", "chgnet_references")
KEYS = ("molecules", "crystals", "reference", "out", "ref_limit", "data_dir", "cache_dir", "predictor", "xtb_calibration", "unconditional", "chgnet_references", *FLAGS)


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
    _int(args, "ref_limit", 1)
    if not _flag(args, "condition", False):
        given = [k for k in CONDITION_KEYS if k in args]
        if given:
            raise SciDiTInputError(f"{given[0]}= scores requests: it needs condition=true")
    kind = "molecules" if "molecules" in args else "crystals"
    wrong = [k for k in (("unconditional", "regressor", "chgnet_references") if kind == "molecules" else ("predictor", "xtb", "xtb_calibration")) if k in args]
    if wrong:
        raise SciDiTInputError(f"{wrong[0]}= does not apply to {kind}")
    return args


def _flag(args: dict[str, str], key: str, default: bool) -> bool:
    return args.get(key, str(default)).lower() in ("1", "true", "yes")


def _int(args: dict[str, str], key: str, default: int) -> int:
    """A positive integer argument."""
    try:
        value = int(args.get(key, default))
    except ValueError as err:
        raise SciDiTInputError(f"{key} must be a positive integer, got {args[key]!r}") from err
    if value < 1:
        raise SciDiTInputError(f"{key} must be a positive integer, got {value}")
    return value


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
    requests = None
    if _flag(args, "condition", False):  # read and checked before any scoring: bad input fails at once
        from sciDiT.evaluation.conditional import MOLECULE_KEYS, requests_of

        requests = requests_of(sets, MOLECULE_KEYS)
        predictors, calibration = _condition_inputs(args)
    ev = evaluate_molecules(sets, ref_smiles, ref_sets, openbabel=_flag(args, "openbabel", True), posebusters=_flag(args, "posebusters", False), written=written)
    if requests is not None:
        import numpy as np

        from sciDiT.evaluation.conditional import molecule_condition_metrics

        valid = np.array([s is not None for s in ev.smiles], dtype=bool)
        ev.metrics.update(molecule_condition_metrics(sets, requests, predictors, valid, xtb=_flag(args, "xtb", False), xtb_calibration=calibration))
        scored = {p[0] for p in predictors} | {"num_atoms"}
        for key in sorted({k for r in requests for k in r} - scored):
            print(f"note: {int(ev.metrics[f'n_requested_{key}'])} sample(s) request {key} but no predictor= scores it")
    return ev


def _condition_inputs(args: dict[str, str]):
    """The property predictors and the xTB calibration named by the arguments, read before any scoring."""
    from sciDiT.evaluation.property_predictor import load_judges

    predictors = load_judges(args["predictor"]) if "predictor" in args else []
    calibration = None
    if "xtb_calibration" in args:
        raw = _json_file(args["xtb_calibration"], "xTB calibration")
        try:
            calibration = {"slope": float(raw["slope"]), "intercept": float(raw["intercept"])}
        except (ValueError, KeyError, TypeError) as err:
            raise SciDiTInputError(f"not an xTB calibration JSON with numeric slope and intercept ({type(err).__name__}: {err})",
                                   args["xtb_calibration"]) from None
    return predictors, calibration


def _json_file(path: str, what: str):
    """A small JSON input file's contents; one-line errors when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as err:
        raise SciDiTInputError(f"cannot read the {what} ({err.strerror or type(err).__name__})", path) from None
    except ValueError as err:
        raise SciDiTInputError(f"the {what} is not JSON ({err})", path) from None


def _chgnet_references(args: dict[str, str]) -> dict[str, float] | None:
    if "chgnet_references" not in args:
        return None
    if not _flag(args, "chgnet", False):
        raise SciDiTInputError("chgnet_references= turns CHGNet energies into formation energies: it needs chgnet=true")
    raw = _json_file(args["chgnet_references"], "CHGNet reference energies")
    refs = raw.get("references_ev_per_atom") if isinstance(raw, dict) else None
    if not isinstance(refs, dict) or not all(isinstance(v, (int, float)) for v in refs.values()):
        raise SciDiTInputError("not a CHGNet reference file: expected references_ev_per_atom {element: eV/atom}", args["chgnet_references"])
    return {str(k): float(v) for k, v in refs.items()}


def run_crystals(args: dict[str, str]):
    from sciDiT.evaluation.crystals import evaluate_crystals
    from sciDiT.evaluation.io import read_crystals, unwritten_crystals

    unwritten = unwritten_crystals(args["crystals"])
    sets = read_crystals(args["crystals"]) if not unwritten or _has_cifs(Path(args["crystals"])) else []
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

    requests = None
    if _flag(args, "condition", False):
        from sciDiT.evaluation.conditional import CRYSTAL_KEYS, requests_of

        requests = requests_of(sets, CRYSTAL_KEYS, _unwritten_requests(args["crystals"], sets))
        references = _chgnet_references(args)
        regressor = _composition_regressor(args, requests)
    ev = evaluate_crystals(
        sets, train, test, with_coverage=_flag(args, "coverage", False), with_chgnet=_flag(args, "chgnet", False), cache_dir=resolve_cache_dir(args.get("cache_dir")),
        unwritten=unwritten,
    )
    if requests is not None:
        ev.metrics.update(_crystal_conditions(args, sets, unwritten, requests, references, regressor))
    return ev


def _unwritten_requests(path: str, sets) -> list[tuple[str | None, str]]:
    """Fill in each set's request from the export's manifest (column ``request``, by file), and return the unwritten rows' ones."""
    from sciDiT.evaluation.io import MANIFEST, REQUEST, read_manifest

    rows = read_manifest(path)
    if rows is None or REQUEST not in rows.columns:
        return []
    where = str(Path(path) / MANIFEST)
    by_file = {f: (text, f"{where} row {i}") for i, (f, text) in enumerate(zip(rows["file"], rows[REQUEST])) if f}
    for ts in sets:
        if REQUEST not in ts.meta and by_file.get(ts.meta.get("file"), ("",))[0]:
            ts.meta[REQUEST], ts.meta["request_where"] = by_file[ts.meta["file"]]
    return [(text, f"{where} row {i}") for i, (status, text) in enumerate(zip(rows["status"], rows[REQUEST])) if status != "ok"]


def _composition_regressor(args: dict[str, str], requests: list[dict]):
    """The MP-20 composition regressor when a sample requests a formation energy or band gap (and regressor= is on)."""
    if not _flag(args, "regressor", True) or not any("formation_energy" in r or "band_gap" in r for r in requests):
        return None
    from sciDiT.data.cdvae import split_file
    from sciDiT.evaluation.composition_model import CompositionRegressor, read_mp20_targets

    train = read_mp20_targets(split_file("mp20", "train", args.get("data_dir")))
    test = read_mp20_targets(split_file("mp20", "test", args.get("data_dir")))
    return CompositionRegressor().fit(train, test)


def _crystal_conditions(args: dict[str, str], sets, unwritten: list[str], requests: list[dict], references: dict[str, float] | None,
                        regressor) -> dict[str, float]:
    from sciDiT.evaluation.conditional import crystal_condition_metrics
    from sciDiT.evaluation.crystals import to_structure
    from sciDiT.evaluation.io import read_crystals, unwritten_crystals

    structures = [to_structure(ts) for ts in sets] + [None] * len(unwritten)
    formulas = [s.composition.reduced_formula if s is not None else "" for s in structures[: len(sets)]] + list(unwritten)
    unconditional = None
    if "unconditional" in args:  # samples without a CIF (degenerate lattice) land in no group but count
        unconditional = [to_structure(ts) for ts in read_crystals(args["unconditional"])] + [None] * len(unwritten_crystals(args["unconditional"]))
    return crystal_condition_metrics(structures, formulas, requests, unconditional, regressor, chgnet=_flag(args, "chgnet", False),
                                     chgnet_references=references)


def _has_cifs(folder: Path) -> bool:
    return any(p.name.lower().endswith(".cif") for p in folder.iterdir())


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
        shares = ", ".join(f"{100 * (metrics.get('file_bonds_' + src) or 0):.1f}% `{src}`" for src in ("decoded", "decoded_constrained", "decoded_joint"))
        basis = f"on the bonds written in the file (`bond_source` of the records: {shares}); `*_perceived` re-perceives bonds from the coordinates alone"
    else:
        basis = "on bonds perceived from the coordinates (the file carries none); `*_perceived` is the same figure"
    return ("Headline `validity` is strict (RDKit sanitization, no radical electrons, no fallback; perception at charge 0) "
            f"{basis}. `validity_rdkit_hueckel_retry` is lenient (failed perceptions retried with extended-Hueckel "
            "connectivity) and `validity_openbabel` is ADiT's OpenBabel path; neither is the headline.")


CONDITION_NOTE = (
    "Conditional figures score each sample against the request read from the file. `mae_<key>_<unit>` (EDM's protocol) is "
    "over every scorable sample that requested the key, on its raw atoms; `*_valid` over the strictly valid ones; `*_ubound` "
    "shuffles the requests among the samples; `*_predictor_qm9_test` (lower bound) and `*_atoms_baseline_qm9_test` come from "
    "the predictor's checkpoint; `*_atoms_baseline_samples` applies that \"#atoms\" baseline to the samples' own atom counts "
    "(what their sizes alone explain). `spacegroup_match_rate` is at symprec 0.01 (strict; `*_symprec0.1` lenient), beside "
    "`spacegroup_base_rate`, the rate at which unconditional samples land in the requested group. `chgnet_energy_per_atom_mean_ev` "
    "and its Spearman use CHGNet's total energy per atom after relaxation (a proxy, not a formation energy); "
    "`mae_formation_energy_ev_chgnet` subtracts elemental reference energies fitted on MP-20 train.")


def _is_plots_folder(folder: Path) -> bool:
    return all(p.is_file() and p.suffix == ".png" for p in folder.iterdir())


def check_report_path(out: Path) -> Path:
    """Fail before any scoring when the report, its Markdown twin or its plots folder cannot be written."""
    from sciDiT.export import check_creatable

    check_creatable(out)
    for path in (out, out.with_suffix(".md")):
        if path.is_dir():
            raise SciDiTInputError("is a folder, expected a report file path (e.g. report.json)", path)
    plots = out.parent / f"{out.stem}_plots"
    if plots.exists() and (not plots.is_dir() or not _is_plots_folder(plots)):
        raise SciDiTInputError("exists and is not a previous report's plots folder: choose another out=", plots)
    return out


def write_report(kind: str, source: str, ev, out: Path) -> None:
    """Write ``out`` (flat JSON), ``out`` with ``.md`` (table) and plots in ``<stem>_plots/``, each atomically.

    The plots are drawn into a temporary folder first, so a failure leaves neither files nor folders behind.
    """
    from sciDiT.export import atomic_folder, atomic_write_text

    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in ev.metrics.items()}
    check_report_path(out)
    plots = out.parent / f"{out.stem}_plots"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(plots, may_replace=_is_plots_folder) as tmp:
        images = _plots_molecules(ev, tmp) if kind == "molecules" else _plots_crystals(ev, tmp)
        lines = [f"# sciDiT evaluation: {kind}", "", f"Samples: `{source}`", ""]
        lines += [_molecule_note(metrics), ""] if kind == "molecules" else []
        if "n_conditional" in metrics:
            lines += [CONDITION_NOTE, ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {'n/a' if v is None else f'{v:.4f}'} |" for k, v in metrics.items()]
        if kind == "crystals":
            if metrics.get("n_unwritten"):
                lines += ["", f"{int(metrics['n_unwritten'])} sample(s) listed in the export's manifest have no CIF (degenerate lattice): counted as invalid."]
            lines += ["", "Energy above hull is not reported: it needs a phase diagram of reference energies that is not available offline."]
        lines += [""] + [f"![{name}]({plots.name}/{name})" for name in images]
        atomic_write_text(out, json.dumps(metrics, indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        kind = "molecules" if "molecules" in args else "crystals"
        out = check_report_path(Path(args.get("out", "report.json")))
        ev = run_molecules(args) if kind == "molecules" else run_crystals(args)
        print(_table(ev.metrics))
        write_report(kind, args[kind], ev, out)
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while writing: nothing half-written stays (atomic writes)
        print(f"error: {err.filename or args.get('out', 'report.json')}: cannot write the report ({err.strerror or type(err).__name__})", file=sys.stderr)
        return 2
    if ev.metrics.get("n_unwritten"):
        print(f"note: {int(ev.metrics['n_unwritten'])} sample(s) in the manifest have no CIF (degenerate lattice) and count as invalid")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
