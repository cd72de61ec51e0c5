"""Every bad input gets one clear line (exit code 2), no traceback, no new files and no user file touched.

One table of malformed inputs through every entry point: ``python -m sciDiT.train`` (its ``cli``, and
two runs as a real subprocess), ``python -m sciDiT.sample`` and ``python -m sciDiT.evaluate`` (their
``main``), the Python API (``load_generator`` / ``Generator``), the Perturb-seq loader and the cell
predictor (``SciDiTPredictor``). The malformed files are derived from real QM9 / MP-20 / Papalexi rows
(emptied, truncated, overwritten with bytes, an element renamed, a lattice flattened ...). API rows
must raise :class:`SciDiTInputError` (what the CLIs turn into exit code 2) with a one-line message.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sciDiT.data.perturbseq import load_perturbseq
from sciDiT.data.qm9 import load_qm9_split
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.io import read_crystals, write_cifs, write_sdf
from sciDiT.generate import load_generator
from sciDiT.perturbation.model import SciDiTPredictor
from sciDiT.tokenizers import MoleculeTokenizer

BINARY = bytes(range(256)) * 4  # not UTF-8, not HDF5, not a zip archive
UNWRITABLE = "/proc/scidit_no_such_dir"  # even root cannot create folders in /proc


@dataclass(frozen=True)
class Probe:
    """One malformed input: the entry point, its arguments (CLI) or call (API), and a fragment of the expected line."""

    id: str
    entry: str  # train | train_process | sample | evaluate | api
    args: tuple[str, ...] | Callable[[dict], object]
    expect: str


def _with(predictor: SciDiTPredictor, **attrs) -> SciDiTPredictor:
    other = copy.copy(predictor)
    other.__dict__.update(attrs)
    return other


def _control(ctx: dict):
    return ctx["cells"][ctx["cells"].obs["perturbation"] == "control"].copy()


S = ("ckpt={ckpt}", "domain=molecule", "n=2", "out={tmp}/m.sdf", "steps=2", "progress=false")  # a sample call that works


def _sample(*changes: str) -> tuple[str, ...]:
    keys = {c.split("=", 1)[0] for c in changes}
    return tuple(a for a in S if a.split("=", 1)[0] not in keys) + changes


TV = ("experiment=quickstart", "stage=vae", "paths.output_dir={tmp}/run")  # a train call that passes the checks

PROBES = [
    # -- evaluate: molecule files ------------------------------------------------------------------
    Probe("sdf-empty", "evaluate", ("molecules={in}/empty.sdf",), "empty.sdf: empty SDF file"),
    Probe("sdf-binary", "evaluate", ("molecules={in}/binary.sdf",), "binary.sdf: not a text SDF file"),
    Probe("sdf-garbage", "evaluate", ("molecules={in}/garbage.sdf",), "garbage.sdf: record 0 is not a readable molfile"),
    Probe("sdf-truncated", "evaluate", ("molecules={in}/truncated.sdf",), "truncated.sdf: record"),
    Probe("sdf-unknown-element", "evaluate", ("molecules={in}/unknown_element.sdf",), "unknown_element.sdf: record 0"),
    Probe("xyz-empty", "evaluate", ("molecules={in}/empty.xyz",), "empty.xyz: empty XYZ file"),
    Probe("xyz-binary", "evaluate", ("molecules={in}/binary.xyz",), "binary.xyz: not a text XYZ file"),
    Probe("xyz-garbage", "evaluate", ("molecules={in}/garbage.xyz",), "garbage.xyz: frame 0: line 1 should be a positive atom count"),
    Probe("xyz-count-too-large", "evaluate", ("molecules={in}/count_high.xyz",), "count_high.xyz: frame 0: line 1 announces 4 atoms but the file ends after 3"),
    Probe("xyz-count-too-small", "evaluate", ("molecules={in}/count_low.xyz",), "count_low.xyz: frame 1: line 5 should be a positive atom count"),
    Probe("xyz-count-in-multiframe", "evaluate", ("molecules={in}/count_multi.xyz",), "count_multi.xyz: frame 0: line 1 announces 4 atoms but only 3"),
    Probe("xyz-unknown-element", "evaluate", ("molecules={in}/unknown_element.xyz",), "unknown_element.xyz: cannot parse XYZ: unknown element 'Xx'"),
    Probe("xyz-bad-coordinate", "evaluate", ("molecules={in}/bad_coordinate.xyz",), "bad_coordinate.xyz: frame 0: line 3 is not 'symbol x y z'"),
    Probe("molecules-missing", "evaluate", ("molecules={in}/missing.sdf",), "missing.sdf: no such file"),
    Probe("molecules-wrong-suffix", "evaluate", ("molecules={in}/good.cif",), "good.cif: expected a .sdf/.xyz file"),
    Probe("molecules-empty-folder", "evaluate", ("molecules={in}/empty_folder",), "empty_folder: folder holds no .sdf/.xyz files"),
    # -- evaluate: crystal files -------------------------------------------------------------------
    Probe("cif-empty", "evaluate", ("crystals={in}/empty.cif",), "empty.cif: empty CIF file"),
    Probe("cif-binary", "evaluate", ("crystals={in}/binary.cif",), "binary.cif: not a text CIF file"),
    Probe("cif-garbage", "evaluate", ("crystals={in}/garbage.cif",), "garbage.cif#block0: not a CIF"),
    Probe("cif-truncated-header", "evaluate", ("crystals={in}/truncated_header.cif",), "truncated_header.cif#block0: malformed CIF: truncated or incomplete"),
    Probe("cif-truncated-row", "evaluate", ("crystals={in}/truncated_row.cif",), "truncated_row.cif#block0: malformed CIF"),
    Probe("cif-unknown-element", "evaluate", ("crystals={in}/unknown_element.cif",), "unknown_element.cif#block0:"),
    Probe("cif-zero-angles", "evaluate", ("crystals={in}/zero_angles.cif",), "zero_angles.cif#block0: degenerate lattice: lattice angle outside (0, 180)"),
    Probe("cif-zero-volume", "evaluate", ("crystals={in}/zero_volume.cif",), "zero_volume.cif#block0: degenerate lattice: zero or negative cell volume"),
    Probe("cif-flat-angle", "evaluate", ("crystals={in}/flat_angle.cif",), "flat_angle.cif#block0: degenerate lattice: lattice angle outside (0, 180)"),
    Probe("cif-negative-length", "evaluate", ("crystals={in}/negative_length.cif",), "negative_length.cif#block0: degenerate lattice: non-positive lattice length"),
    Probe("csv-without-cif-column", "evaluate", ("crystals={in}/no_cif_column.csv",), "no_cif_column.csv: not a CDVAE CSV with a 'cif' column"),
    Probe("export-manifest-lists-missing-cif", "evaluate", ("crystals={in}/export_missing_cif",), "manifest.tsv: manifest lists 1 CIF file(s) that are not in the folder"),
    # -- evaluate: arguments and outputs -----------------------------------------------------------
    Probe("eval-unknown-key", "evaluate", ("molecules={in}/good.sdf", "referenc=qm9"), "bad argument 'referenc=qm9'"),
    Probe("eval-both-kinds", "evaluate", ("molecules={in}/good.sdf", "crystals={in}/good.cif"), "exactly one of"),
    Probe("eval-bad-flag", "evaluate", ("molecules={in}/good.sdf", "posebusters=maybe"), "posebusters must be true or false"),
    Probe("eval-ref-limit-zero", "evaluate", ("molecules={in}/good.sdf", "ref_limit=0"), "ref_limit must be a positive integer, got 0"),
    Probe("eval-ref-limit-text", "evaluate", ("molecules={in}/good.sdf", "ref_limit=many"), "ref_limit must be a positive integer, got 'many'"),
    Probe("eval-out-unwritable", "evaluate", ("molecules={in}/good.sdf", f"out={UNWRITABLE}/r.json"), "r.json: cannot write here"),
    Probe("eval-out-is-folder", "evaluate", ("molecules={in}/good.sdf", "out={tmp}/user"), "user: is a folder, expected a report file path"),
    Probe("eval-out-under-file", "evaluate", ("molecules={in}/good.sdf", "out={tmp}/user/keep.txt/r.json"), "cannot create folder"),
    Probe("eval-plots-folder-is-users", "evaluate", ("molecules={in}/good.sdf", "out={tmp}/user.json"), "user_plots: exists and is not a previous report's plots folder"),
    # -- sample CLI ----------------------------------------------------------------------------------
    Probe("sample-ckpt-not-a-checkpoint", "sample", _sample("ckpt={in}/not_a_checkpoint.ckpt"), "not_a_checkpoint.ckpt: not a readable checkpoint"),
    Probe("sample-ckpt-truncated", "sample", _sample("ckpt={in}/truncated.ckpt"), "truncated.ckpt: not a readable checkpoint"),
    Probe("sample-ckpt-missing", "sample", _sample("ckpt={in}/missing.ckpt"), "missing.ckpt: checkpoint not found"),
    Probe("sample-n-zero", "sample", _sample("n=0"), "n must be a positive integer, got 0"),
    Probe("sample-n-negative", "sample", _sample("n=-5"), "n must be a positive integer, got -5"),
    Probe("sample-n-text", "sample", _sample("n=many"), "n='many'"),
    Probe("sample-steps-negative", "sample", _sample("steps=-1"), "steps must be a positive integer, got -1"),
    Probe("sample-batch-size-zero", "sample", _sample("batch_size=0"), "batch_size must be a positive integer, got 0"),
    Probe("sample-cfg-scale-nan", "sample", _sample("cfg_scale=nan"), "cfg_scale must be a finite number, got nan"),
    Probe("sample-cfg-scale-inf", "sample", _sample("cfg_scale=inf"), "cfg_scale must be a finite number, got inf"),
    Probe("sample-seed-too-large", "sample", _sample(f"seed={2**70}", "out={tmp}/new/deeper/m.sdf"), "seed must be an integer that fits in 64 bits"),
    Probe("sample-num-atoms-zero", "sample", _sample("num_atoms=0"), "num_atoms must lie in 1.."),
    Probe("sample-num-atoms-huge", "sample", _sample("num_atoms=100000"), "num_atoms must lie in 1.."),
    Probe("sample-method-unknown", "sample", _sample("method=rk4"), "method='rk4' is not one of"),
    Probe("sample-device-meta", "sample", _sample("device=meta", "out={tmp}/new/m.sdf"), "device='meta' is not usable for sampling"),
    Probe("sample-device-missing-gpu", "sample", _sample("device=cuda:63"), "device='cuda:63' is not usable here"),
    Probe("sample-device-nonsense", "sample", _sample("device=banana"), "device='banana' is not a torch device"),
    Probe("sample-bool-garbage", "sample", _sample("use_ema=maybe"), "use_ema='maybe'"),
    Probe("sample-domain-unknown", "sample", _sample("domain=protein"), "domain='protein' is not one of"),
    Probe("sample-out-unwritable", "sample", _sample(f"out={UNWRITABLE}/m.sdf"), "m.sdf: cannot write here"),
    Probe("sample-out-under-file", "sample", _sample("out={tmp}/user/keep.txt/m.sdf"), "cannot create folder"),
    Probe("sample-out-existing-folder", "sample", _sample("out={tmp}/user"), "user: molecules are written to one SDF file, not a folder"),
    Probe("sample-out-users-folder", "sample", _sample("domain=crystal", "out={tmp}/user"), "user: folder is not empty and is not a previous export"),
    # -- Python API ------------------------------------------------------------------------------------
    Probe("api-seed-too-large", "api", lambda c: c["gen"].generate("molecule", n=2, seed=2**70, steps=2, progress=False), "seed must be an integer that fits in 64 bits"),
    Probe("api-seed-float", "api", lambda c: c["gen"].generate("crystal", n=2, seed=1.5, steps=2, progress=False), "seed must be an integer"),
    Probe("api-n-negative", "api", lambda c: c["gen"].generate("crystal", n=-1, progress=False), "n must be a positive integer, got -1"),
    Probe("api-steps-zero", "api", lambda c: c["gen"].generate_token_sets("crystal", n=2, steps=0, progress=False), "steps must be a positive integer, got 0"),
    Probe("api-cfg-scale-nan", "api", lambda c: c["gen"].generate("molecule", n=2, cfg_scale=math.nan, steps=2, progress=False), "cfg_scale must be a finite number"),
    Probe("api-num-atoms-count", "api", lambda c: c["gen"].generate("molecule", n=3, num_atoms=[4, 5], steps=2, progress=False), "num_atoms has 2 entries for n=3"),
    Probe("api-device-meta", "api", lambda c: load_generator(c["ckpt"], device="meta"), "device='meta' is not usable for sampling"),
    Probe("api-not-a-checkpoint", "api", lambda c: load_generator(c["in"] / "not_a_checkpoint.ckpt"), "not_a_checkpoint.ckpt: not a readable checkpoint"),
    Probe("api-truncated-checkpoint", "api", lambda c: load_generator(c["in"] / "truncated.ckpt"), "truncated.ckpt: not a readable checkpoint"),
    Probe("api-export-nothing", "api", lambda c: c["gen"].export([], c["tmp"] / "m.sdf"), "nothing to export"),
    Probe("api-export-unwritable", "api", lambda c: c["gen"].export(c["gen"].generate_token_sets("molecule", n=1, steps=2, progress=False), f"{UNWRITABLE}/m.sdf"),
          "m.sdf: cannot write here"),
    # -- Perturb-seq h5ad loader ---------------------------------------------------------------------
    Probe("h5ad-not-hdf5", "api", lambda c: load_perturbseq(c["in"] / "text.h5ad"), "text.h5ad: cannot read h5ad"),
    Probe("h5ad-binary", "api", lambda c: load_perturbseq(c["in"] / "binary.h5ad"), "binary.h5ad: cannot read h5ad"),
    Probe("h5ad-empty", "api", lambda c: load_perturbseq(c["in"] / "empty.h5ad"), "empty.h5ad: cannot read h5ad"),
    Probe("h5ad-missing", "api", lambda c: load_perturbseq(c["in"] / "missing.h5ad"), "missing.h5ad: Perturb-seq file not found"),
    Probe("h5ad-no-perturbation-column", "api", lambda c: load_perturbseq(c["in"] / "no_perturbation.h5ad"), "no_perturbation.h5ad: obs has no perturbation column 'perturbation'"),
    Probe("h5ad-log-normalised", "api", lambda c: load_perturbseq(c["in"] / "lognorm.h5ad"), "lognorm.h5ad: X does not hold raw counts"),
    Probe("h5ad-no-counts-layer", "api", lambda c: load_perturbseq(c["in"] / "lognorm.h5ad", counts_layer="raw"), "lognorm.h5ad: no layer 'raw'"),
    # -- cell predictor ------------------------------------------------------------------------------
    Probe("predictor-n-cells-negative", "api", lambda c: c["predictor"].predict(_control(c), ["STAT1"], n_cells=-1), "n_cells must be a positive integer, got -1"),
    Probe("predictor-n-cells-zero", "api", lambda c: c["predictor"].predict(_control(c), ["STAT1"], n_cells=0), "n_cells must be a positive integer, got 0"),
    Probe("predictor-batch-size-zero", "api", lambda c: c["predictor"].predict(_control(c), ["STAT1"], batch_size=0), "batch_size must be a positive integer, got 0"),
    Probe("predictor-steps-zero", "api", lambda c: _with(c["predictor"], steps=0).predict(_control(c), ["STAT1"]), "steps must be a positive integer, got 0"),
    Probe("predictor-cfg-scale-nan", "api", lambda c: _with(c["predictor"], cfg_scale=math.nan).predict(_control(c), ["STAT1"]), "cfg_scale must be a finite number"),
    Probe("predictor-seed-negative", "api", lambda c: _with(c["predictor"], seed=-1).predict(_control(c), ["STAT1"]), "seed must be a non-negative integer, got -1"),
    Probe("predictor-unknown-gene", "api", lambda c: c["predictor"].predict(_control(c), ["NOTAGENE"]), "NOTAGENE"),
    Probe("predictor-malformed-label", "api", lambda c: c["predictor"].predict(_control(c), ["STAT1++JAK2"]), "malformed combination label 'STAT1++JAK2'"),
    Probe("predictor-no-control-cells", "api", lambda c: c["predictor"].predict(_control(c)[:0], ["STAT1"]), "control has no cells"),
    Probe("predictor-not-a-checkpoint", "api", lambda c: SciDiTPredictor.load(c["in"] / "not_a_checkpoint.ckpt"), "not_a_checkpoint.ckpt: not a readable cell predictor checkpoint"),
    Probe("predictor-truncated-checkpoint", "api", lambda c: SciDiTPredictor.load(c["in"] / "truncated_cells.ckpt"), "truncated_cells.ckpt: not a readable cell predictor checkpoint"),
    # -- train CLI: Hydra composition ----------------------------------------------------------------
    Probe("train-unknown-experiment", "train", ("experiment=nope",), "Could not find 'experiment/nope'; Available options in 'experiment': mp20_composition_cpu, mp20_spacegroup_cond_cpu, mp20_spacegroup_cpu"),
    Probe("train-misspelled-key", "train", (*TV, "data.batchsize=8"), "Could not override 'data.batchsize'"),
    Probe("train-unknown-option", "train", (*TV, "trainer=tpu"), "Could not find 'trainer/tpu'; Available options in 'trainer': cpu"),
    Probe("train-unknown-model-size", "train", (*TV, "model/vae=VAE-XXL"), "Could not find 'model/vae/VAE-XXL'"),
    Probe("train-unparsable-override", "train", (*TV, "seed==3"), "Error parsing override 'seed==3'"),
    Probe("train-unresolvable-interpolation", "train", (*TV, "seed=${{oops}}"), "config key seed: Interpolation key 'oops' not found"),
    # -- train CLI: values ---------------------------------------------------------------------------------
    Probe("train-seed-text", "train", (*TV, "seed=abc"), "seed='abc' must be an integer"),
    Probe("train-stage-unknown", "train", (*TV, "stage=both"), "stage='both' is not one of vae, dit, all"),
    Probe("train-batch-size-zero", "train", (*TV, "data.batch_size=0"), "data.batch_size=0 must be a positive integer"),
    Probe("train-batch-size-negative", "train", (*TV, "data.batch_size=-4"), "data.batch_size=-4 must be a positive integer"),
    Probe("train-batch-size-text", "train", (*TV, "data.batch_size=big"), "data.batch_size='big' must be a positive integer"),
    Probe("train-max-steps-zero", "train", (*TV, "trainer.max_steps=0"), "trainer.max_steps=0 must be a positive integer"),
    Probe("train-stage-steps-negative", "train", (*TV, "max_steps.vae=-3"), "max_steps.vae=-3 must be a positive integer"),
    Probe("train-lr-nan", "train", (*TV, "vae.lr=nan"), "vae.lr=nan must be a finite positive number"),
    Probe("train-lr-inf", "train", (*TV, "dit.lr=inf"), "dit.lr=inf must be a finite positive number"),
    Probe("train-lr-negative", "train", (*TV, "vae.lr=-0.1"), "vae.lr=-0.1 must be a finite positive number"),
    Probe("train-ema-decay-above-one", "train", (*TV, "dit.ema_decay=1.5"), "dit.ema_decay=1.5 must be a number in [0, 1]"),
    Probe("train-workers-negative", "train", (*TV, "data.num_workers=-1"), "data.num_workers=-1 must be a non-negative integer"),
    Probe("train-accelerator-unknown", "train", (*TV, "trainer.accelerator=tpu"), "trainer.accelerator='tpu' is not one of"),
    Probe("train-devices-zero", "train", (*TV, "trainer.devices=0"), "trainer.devices=0 must be a positive integer, -1 (all)"),
    Probe("train-output-unwritable", "train", (*TV, f"paths.output_dir={UNWRITABLE}/run"), "paths.output_dir: cannot create it"),
    Probe("train-output-is-file", "train", (*TV, "paths.output_dir={tmp}/user/keep.txt"), "keep.txt: paths.output_dir: exists and is not a folder"),
    Probe("train-ckpt-not-a-checkpoint", "train", (*TV, "ckpt_path={in}/not_a_checkpoint.ckpt"), "not_a_checkpoint.ckpt: ckpt_path: not a checkpoint"),
    Probe("train-ckpt-truncated", "train", (*TV, "ckpt_path={in}/truncated.ckpt"), "truncated.ckpt: ckpt_path: not a checkpoint"),
    Probe("train-ckpt-missing", "train", (*TV, "ckpt_path={in}/missing.ckpt"), "missing.ckpt: ckpt_path: checkpoint not found"),
    Probe("train-ckpt-is-folder", "train", (*TV, "ckpt_path={in}/empty_folder"), "empty_folder: ckpt_path: is a folder"),
    Probe("train-ckpt-with-stage-all", "train", ("experiment=quickstart", "paths.output_dir={tmp}/run", "ckpt_path={ckpt}"), "ckpt_path resumes a single stage"),
    Probe("train-dit-without-vae", "train", ("experiment=quickstart", "stage=dit", "paths.output_dir={tmp}/run"), "stage=dit needs a trained VAE: set dit.vae_ckpt="),
    Probe("train-dit-vae-not-a-checkpoint", "train", ("experiment=quickstart", "stage=dit", "paths.output_dir={tmp}/run", "dit.vae_ckpt={in}/not_a_checkpoint.ckpt"),
          "not_a_checkpoint.ckpt: dit.vae_ckpt: not a checkpoint"),
    Probe("train-cells-batch-size-zero", "train", ("experiment=perturbseq_papalexi", "stage=vae", "paths.output_dir={tmp}/run", "data.batch_size=0"),
          "data.batch_size=0 must be a positive integer"),
    Probe("train-condition-unknown", "train", ("experiment=qm9_mp20_cond_cpu", "stage=vae", "paths.output_dir={tmp}/run", "data.conditions=[gapp]"),
          "data.conditions: unknown condition 'gapp'; known: alpha, gap"),
    Probe("train-condition-not-in-dit", "train", ("experiment=qm9_mp20_cond_cpu", "stage=vae", "paths.output_dir={tmp}/run", "data.conditions=[gap]"),
          "model.dit.conditions declares ['alpha', 'homo'"),
    Probe("train-condition-without-its-domain", "train", ("experiment=qm9_mp20_cond_cpu", "stage=vae", "paths.output_dir={tmp}/run",
                                                          "data.datasets=[{{name:mp20}}]"), "data.datasets holds no molecules to take them from"),
    Probe("train-condition-wrong-dit-spec", "train", ("experiment=qm9_mp20_cond_cpu", "stage=vae", "paths.output_dir={tmp}/run",
                                                      "model.dit.conditions.gap.dim=2"), "condition 'gap' needs model.dit.conditions.gap="),
    # -- train as a real process: exit code, Hydra's run folder removed after a late failure -----------
    Probe("train-process-unknown-experiment", "train_process", ("experiment=nope",), "Could not find 'experiment/nope'"),
    Probe("train-process-unknown-dataset", "train_process", (*TV[:2], "data.datasets=[{{name:qm99}}]", "paths.output_dir={tmp}/new/deeper/run"),
          "unknown dataset 'qm99' in data.datasets"),
]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, data_dir, cache_dir, tiny_dit_ckpt, tiny_predictor, cells) -> Path:
    """The malformed files, each derived from real QM9 / MP-20 / Papalexi rows or a real checkpoint."""
    d = tmp_path_factory.mktemp("bad_inputs")
    qm9 = load_qm9_split("train", data_dir, cache_dir, limit=3)
    write_sdf([qm9[i] for i in range(3)], d / "good.sdf")
    write_cifs(read_crystals(data_dir / "mp20" / "test.csv.gz", limit=1), d / "good.cif")
    sdf, cif = (d / "good.sdf").read_text(), (d / "good.cif").read_text()
    xyz = [MoleculeTokenizer().to_xyz(qm9[i]) for i in (1, 2)]  # water-sized molecules: 3 atoms, then more
    lines1 = xyz[0].splitlines()
    sdf_lines = sdf.splitlines()
    atom = sdf_lines[4]
    angles = re.compile(r"(_cell_angle_(alpha|beta|gamma))\s+\S+")
    text = {
        "empty.sdf": "", "garbage.sdf": "this is not\na molfile\n", "truncated.sdf": "\n".join(sdf_lines[:6]) + "\n",
        "unknown_element.sdf": "\n".join([*sdf_lines[:4], atom[:31] + "Xx " + atom[34:], *sdf_lines[5:]]) + "\n",
        "empty.xyz": "", "garbage.xyz": "hello world\n",
        "count_high.xyz": "\n".join(["4", *lines1[1:]]) + "\n",
        "count_low.xyz": "\n".join(["2", *lines1[1:]]) + "\n",
        "count_multi.xyz": "\n".join(["4", *lines1[1:]]) + "\n" + xyz[1],
        "unknown_element.xyz": "\n".join([*lines1[:2], "Xx" + lines1[2][lines1[2].index(" "):], *lines1[3:]]) + "\n",
        "bad_coordinate.xyz": "\n".join([*lines1[:2], lines1[2].rsplit(" ", 1)[0] + " x", *lines1[3:]]) + "\n",
        "empty.cif": "", "garbage.cif": "a CIF file\nwith nothing in it\n",
        "truncated_header.cif": cif[: cif.index("_atom_site_occupancy") + len("_atom_site_occupancy")] + "\n",
        "truncated_row.cif": cif[: cif.rindex("  Au") + 12] + "\n",
        "unknown_element.cif": cif.replace("Pr", "Xx"),
        "zero_angles.cif": angles.sub(r"\1   0.0", cif),
        "zero_volume.cif": angles.sub(r"\1   120.0", cif),
        "flat_angle.cif": cif.replace("_cell_angle_gamma   120.00000000", "_cell_angle_gamma   180.00000000"),
        "negative_length.cif": re.sub(r"_cell_length_a\s+\S+", "_cell_length_a   -7.8", cif),
        "no_cif_column.csv": "material_id,formula\nmp-1,NaCl\n",
        "not_a_checkpoint.ckpt": "model weights would be here\n", "text.h5ad": "not an h5ad\n", "empty.h5ad": "",
    }
    assert "Pr" in cif and "_cell_angle_gamma   120.00000000" in cif and atom[31:34].strip()  # the edits above change something
    for name, content in text.items():
        (d / name).write_text(content)
    for name in ("binary.sdf", "binary.xyz", "binary.cif", "binary.h5ad"):
        (d / name).write_bytes(BINARY)
    raw = Path(tiny_dit_ckpt).read_bytes()
    (d / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    saved = tiny_predictor.save(d / "cells.ckpt").read_bytes()
    (d / "truncated_cells.ckpt").write_bytes(saved[: len(saved) // 2])
    (d / "cells.ckpt").unlink()
    (d / "empty_folder").mkdir()
    export = d / "export_missing_cif"
    export.mkdir()
    (export / "sample_00000.cif").write_text(cif)
    header = "index\tfile\tformula\tnum_atoms\ta\tb\tc\talpha\tbeta\tgamma\tvolume\tstatus\tmessage\n"
    ok = "\t".join(["7.8", "7.8", "4.3", "90", "90", "120", "227.7", "ok", ""])
    (export / "manifest.tsv").write_text(header + f"0\tsample_00000.cif\tAu3In3Pr3\t9\t{ok}\n1\tsample_00001.cif\tAu3In3Pr3\t9\t{ok}\n")
    lognorm = cells[:20].copy()
    del lognorm.uns["scidit"]
    del lognorm.layers["counts"]
    lognorm.write_h5ad(d / "lognorm.h5ad")  # X is log-normalised, not counts
    no_pert = lognorm.copy()
    del no_pert.obs["perturbation"]
    no_pert.write_h5ad(d / "no_perturbation.h5ad")
    return d


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots``: folders by name, files by size, mtime and content hash."""
    state: dict[str, tuple] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            state[str(p)] = ("dir",) if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return state


def _run_process(module: str, args: list[str]) -> tuple[int, str]:
    root = str(Path(__file__).resolve().parents[1])  # this checkout's sciDiT, whatever the working directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("probe", PROBES, ids=[p.id for p in PROBES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(probe, inputs, tiny_dit_ckpt, tiny_predictor, cells, tmp_path, capsys, monkeypatch):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "keep.txt").write_text("mine")
    (tmp_path / "user_plots").mkdir()  # a folder of the user's where evaluate out=user.json would put its plots
    (tmp_path / "user_plots" / "notes.txt").write_text("mine too")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path, inputs)
    fill = {"in": inputs, "tmp": tmp_path, "ckpt": tiny_dit_ckpt}
    args = [] if callable(probe.args) else [a.format(**fill) for a in probe.args]
    if probe.entry == "api":
        ctx = {**fill, "gen": load_generator(tiny_dit_ckpt), "predictor": tiny_predictor, "cells": cells}
        with pytest.raises(SciDiTInputError) as info:
            probe.args(ctx)
        code, err = 2, f"error: {info.value}"
    elif probe.entry in ("sample", "evaluate", "train"):
        import sciDiT.train
        from sciDiT.evaluate import main as evaluate_main
        from sciDiT.sample import main as sample_main

        monkeypatch.setattr(sciDiT.train, "_run", lambda: pytest.fail("the config passed the checks"))
        code = {"sample": sample_main, "evaluate": evaluate_main, "train": sciDiT.train.cli}[probe.entry](args)
        err = capsys.readouterr().err
    else:
        code, err = _run_process("sciDiT.train", args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and probe.expect.format(**fill) in lines[0], lines[0]
    assert _snapshot(tmp_path, inputs) == before  # nothing new, nothing changed, nothing removed
    assert not Path(UNWRITABLE).exists()


def test_the_table_covers_every_entry_point_and_at_least_40_inputs():
    entries = {p.entry for p in PROBES}
    assert entries == {"train", "train_process", "sample", "evaluate", "api"} and len(PROBES) >= 40
    assert len({p.id for p in PROBES}) == len(PROBES)


def test_generated_crystals_without_a_cif_count_as_invalid(inputs, tmp_path, capsys):
    """An export's manifest rows with a degenerate lattice stay in the denominator of every validity."""
    import json

    from sciDiT.evaluate import main as evaluate_main

    export = tmp_path / "export"
    export.mkdir()
    (export / "sample_00000.cif").write_text((inputs / "good.cif").read_text())
    header = (inputs / "export_missing_cif" / "manifest.tsv").read_text().splitlines()[:2]
    bad = "1\t\tNaCl\t2\t3.0\t3.0\t3.0\t0.0\t0.0\t0.0\tnan\tinvalid_lattice\tlattice angle outside (0, 180) degrees"
    (export / "manifest.tsv").write_text("\n".join([*header, bad]) + "\n")
    assert evaluate_main([f"crystals={export}", f"out={tmp_path / 'r.json'}"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n_samples"] == 2 and report["n_unwritten"] == 1
    assert report["structural_validity"] == 0.5  # the written PrInAu crystal is valid, the flat one is not
    assert report["compositional_validity"] == 1.0  # NaCl is charge balanced, PrInAu an alloy (metals only)
    assert report["validity"] == 0.5
    assert "1 sample(s) in the manifest have no CIF" in capsys.readouterr().out
