"""VAE reconstruction metrics: how well decoded token sets reproduce their inputs.

The VAE keeps token identity (token ``i`` of the output decodes token ``i`` of the input), so
atom types are compared token by token and molecules are compared without searching for an atom
mapping. Both functions return summary figures (floats) plus per-set arrays under ``"per_set"``.

Molecules
    *match*: same number of tokens, identical atom type on every token, and RMSD of the
    positions after optimal rigid (Kabsch) superposition below ``rmsd_threshold`` (default 0.5 A,
    the threshold used for GEOM-QM9 conformer coverage in ConfGF / GeoMol / torsional diffusion:
    below it two QM9 conformers count as "the same structure"). We also report *graph match*:
    identical atom types and identical covalent connectivity perceived from the coordinates
    (RDKit ``DetermineConnectivity``), which is closest in meaning to ADiT's molecule match
    (pymatgen ``MoleculeMatcher``, a graph-isomorphism test followed by an RMSD).
Crystals
    *match*: pymatgen ``StructureMatcher(stol=0.5, ltol=0.3, angle_tol=10)`` (the CDVAE / ADiT
    reconstruction setting) on the decoded structures; RMSD is ``get_rms_dist``'s first value,
    which pymatgen normalises by ``(volume / n_sites) ** (1/3)`` (so it is unitless, not Angstrom).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDetermineBonds
from rdkit.Geometry import Point3D

from sciDiT.batch import TokenSet
from sciDiT.errors import SciDiTInputError
from sciDiT.tokenizers import CrystalTokenizer

MOLECULE_RMSD_THRESHOLD = 0.5  # Angstrom, see module docstring
CRYSTAL_MATCHER_KWARGS = {"stol": 0.5, "ltol": 0.3, "angle_tol": 10.0}
POOL_MIN_PAIRS = 64  # below this a process pool costs more than it saves


def kabsch_superpose(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Point set p [n, 3] moved by the proper rotation + translation that best superposes it onto q [n, 3]."""
    p_mean, q_mean = p.mean(axis=0), q.mean(axis=0)
    u, _, vt = np.linalg.svd((p - p_mean).T @ (q - q_mean))
    d = np.sign(np.linalg.det(u @ vt))  # -1 would be a reflection: flip the weakest axis instead
    return (p - p_mean) @ (u @ np.diag([1.0, 1.0, d]) @ vt) + q_mean


def kabsch_rmsd(p: np.ndarray, q: np.ndarray) -> float:
    """RMSD between point sets p, q [n, 3] after the optimal proper rotation + translation of p onto q."""
    diff = kabsch_superpose(p, q) - q
    return float(np.sqrt((diff**2).sum(axis=1).mean()))


def _check_pairs(pred: list[TokenSet], target: list[TokenSet]) -> None:
    if len(pred) != len(target):
        raise SciDiTInputError(f"reconstruction needs as many predictions as targets, got {len(pred)} and {len(target)}")


def _type_agreement(p: TokenSet, t: TokenSet) -> tuple[int, int]:
    """(tokens with the right type, tokens in the target); a token-count mismatch scores 0 correct."""
    n = t.num_tokens
    if p.num_tokens != n:
        return 0, n
    return int((p.types.cpu() == t.types.cpu()).sum()), n


def _connectivity(types: np.ndarray, pos: np.ndarray) -> np.ndarray | None:
    """Adjacency matrix [n, n] of covalent bonds perceived from coordinates; None if RDKit fails."""
    rw = Chem.RWMol()
    conf = Chem.Conformer(len(types))
    for i, (z, p) in enumerate(zip(types, pos)):
        rw.AddAtom(Chem.Atom(int(z)))
        conf.SetAtomPosition(i, Point3D(*map(float, p)))
    rw.AddConformer(conf, assignId=True)
    mol = rw.GetMol()
    try:
        rdDetermineBonds.DetermineConnectivity(mol)
    except Exception:  # RDKit raises ValueError/RuntimeError on impossible geometries
        return None
    return Chem.GetAdjacencyMatrix(mol).astype(bool)


def molecule_reconstruction(
    pred: list[TokenSet], target: list[TokenSet], rmsd_threshold: float = MOLECULE_RMSD_THRESHOLD
) -> dict:
    """Atom-type accuracy, match rate, RMSD and graph-match rate of decoded molecules vs their inputs.

    Returns ``type_accuracy`` (per token, pooled over all sets), ``match_rate``, ``rmsd_mean``
    (Angstrom, over matched sets; NaN when none match), ``rmsd_mean_all`` (over sets with equal
    token counts), ``graph_match_rate``, and ``per_set`` arrays ``type_accuracy``, ``rmsd`` (inf when
    token counts differ), ``match`` and ``graph_match`` (bool).
    """
    _check_pairs(pred, target)
    RDLogger.DisableLog("rdApp.*")
    n_sets = len(target)
    acc = np.zeros(n_sets)
    rmsd = np.full(n_sets, np.inf)
    match = np.zeros(n_sets, dtype=bool)
    graph = np.zeros(n_sets, dtype=bool)
    correct = total = 0
    for i, (p, t) in enumerate(zip(pred, target)):
        c, n = _type_agreement(p, t)
        correct, total = correct + c, total + n
        acc[i] = c / n if n else 0.0
        if p.num_tokens != t.num_tokens:
            continue
        pp, tp = p.pos.double().cpu().numpy(), t.pos.double().cpu().numpy()
        rmsd[i] = kabsch_rmsd(pp, tp) if np.isfinite(pp).all() else np.inf
        same_types = c == n
        match[i] = same_types and rmsd[i] < rmsd_threshold
        if same_types:
            types = t.types.cpu().numpy()
            adj_p, adj_t = _connectivity(types, pp), _connectivity(types, tp)
            graph[i] = adj_p is not None and adj_t is not None and bool((adj_p == adj_t).all())
    finite = np.isfinite(rmsd)
    return {
        "type_accuracy": correct / total if total else float("nan"),
        "match_rate": float(match.mean()) if n_sets else float("nan"),
        "rmsd_mean": float(rmsd[match].mean()) if match.any() else float("nan"),
        "rmsd_mean_all": float(rmsd[finite].mean()) if finite.any() else float("nan"),
        "graph_match_rate": float(graph.mean()) if n_sets else float("nan"),
        "per_set": {"type_accuracy": acc, "rmsd": rmsd, "match": match, "graph_match": graph},
    }


def _match_structures(pair: tuple) -> float:
    """Normalised RMS distance of a matched pair of pymatgen structures, inf when they do not match."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    s_pred, s_target = pair
    if s_pred is None:
        return float("inf")
    matcher = StructureMatcher(**CRYSTAL_MATCHER_KWARGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = matcher.get_rms_dist(s_pred, s_target)
        except Exception:  # degenerate lattices make pymatgen raise deep inside its lattice search
            return float("inf")
    return float("inf") if res is None else float(res[0])


def safe_structure(tok: CrystalTokenizer, ts: TokenSet):
    """Decoded pymatgen structure, or None when the lattice is degenerate (a failed reconstruction)."""
    try:
        s = tok.to_structure(ts)
        return s if np.isfinite(s.volume) and s.volume > 1e-6 else None
    except Exception:  # non-finite or impossible lattice parameters
        return None


def structure_rms_dists(pairs: list[tuple], workers: int = 2) -> np.ndarray:
    """``_match_structures`` over (pred, target) structure pairs, in a process pool when there are many."""
    if workers > 1 and len(pairs) >= POOL_MIN_PAIRS:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return np.array(list(pool.map(_match_structures, pairs, chunksize=16)), dtype=float)
    return np.array([_match_structures(p) for p in pairs], dtype=float)


def crystal_reconstruction(pred: list[TokenSet], target: list[TokenSet], workers: int = 2) -> dict:
    """Atom-type accuracy, StructureMatcher match rate and normalised RMS distance of decoded crystals.

    Returns ``type_accuracy`` (per token, pooled), ``match_rate``, ``rmsd_mean`` (pymatgen's
    normalised RMS distance over matched sets; NaN when none match), lattice errors
    ``lattice_length_mae`` (Angstrom) and ``lattice_angle_mae`` (degrees), and ``per_set`` arrays
    ``type_accuracy``, ``rmsd`` (inf when not matched) and ``match``.
    """
    _check_pairs(pred, target)
    tok = CrystalTokenizer()
    n_sets = len(target)
    acc = np.zeros(n_sets)
    correct = total = 0
    for i, (p, t) in enumerate(zip(pred, target)):
        c, n = _type_agreement(p, t)
        correct, total = correct + c, total + n
        acc[i] = c / n if n else 0.0
    pairs = [(safe_structure(tok, p), tok.to_structure(t)) for p, t in zip(pred, target)]
    rmsd = structure_rms_dists(pairs, workers)
    match = np.isfinite(rmsd)
    lat_p = np.stack([p.lattice.double().cpu().numpy() for p in pred]) if n_sets else np.zeros((0, 6))
    lat_t = np.stack([t.lattice.double().cpu().numpy() for t in target]) if n_sets else np.zeros((0, 6))
    err = np.abs(lat_p - lat_t)
    return {
        "type_accuracy": correct / total if total else float("nan"),
        "match_rate": float(match.mean()) if n_sets else float("nan"),
        "rmsd_mean": float(rmsd[match].mean()) if match.any() else float("nan"),
        "lattice_length_mae": float(err[:, :3].mean()) if n_sets else float("nan"),
        "lattice_angle_mae": float(err[:, 3:].mean()) if n_sets else float("nan"),
        "per_set": {"type_accuracy": acc, "rmsd": rmsd, "match": match},
    }


def reconstruction_report(pred: list[TokenSet], target: list[TokenSet]) -> dict[str, float]:
    """Summary figures of both domains present, with flat keys such as ``molecule/match_rate``."""
    from sciDiT.batch import Domain

    _check_pairs(pred, target)
    scorers = {Domain.MOLECULE: molecule_reconstruction, Domain.CRYSTAL: crystal_reconstruction}
    report: dict[str, float] = {}
    for domain, scorer in scorers.items():
        idx = [i for i, t in enumerate(target) if t.domain == domain]
        if not idx:
            continue
        result = scorer([pred[i] for i in idx], [target[i] for i in idx])
        name = domain.name.lower()
        report[f"{name}/count"] = float(len(idx))
        report.update({f"{name}/{k}": float(v) for k, v in result.items() if k != "per_set"})
    return report
