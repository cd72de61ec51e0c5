"""Generation API and CLI on a tiny untrained checkpoint prepared on real QM9/MP-20 rows (no training)."""

from __future__ import annotations

import subprocess
import sys

import ase.io
import pytest
import torch
from pymatgen.core import Structure
from rdkit import Chem

from conftest import TINY_VAE
from sciDiT.batch import Domain
from sciDiT.errors import SciDiTInputError
from sciDiT.export import MANIFEST
from sciDiT.generate import load_generator
from sciDiT.models.composition import num_distinct
from sciDiT.sample import main

@pytest.fixture(scope="module")
def ckpt(tiny_dit_ckpt) -> str:
    return tiny_dit_ckpt


@pytest.fixture(scope="module")
def gen(ckpt):
    return load_generator(ckpt)


FAST = {"steps": 4, "progress": False}


def _same(a, b) -> bool:
    return all(torch.equal(x.types, y.types) and torch.allclose(x.pos, y.pos, atol=1e-5) and torch.allclose(x.lattice, y.lattice, atol=1e-4)
               for x, y in zip(a, b, strict=True))


def _identical(a, b) -> bool:
    return all(torch.equal(x.types, y.types) and torch.equal(x.pos, y.pos) and torch.equal(x.frac, y.frac) and torch.equal(x.lattice, y.lattice)
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("domain", ["molecule", "crystal"])
def test_same_seed_same_samples_for_any_batch_size(gen, domain):
    """Batched (the default): float32 results agree across batchings to float rounding (bf16 would widen that to bf16 rounding)."""
    kwargs = {"n": 12, "bf16": False, **FAST}
    a = gen.generate_token_sets(domain, seed=3, batch_size=5, **kwargs)
    again = gen.generate_token_sets(domain, seed=3, batch_size=5, **kwargs)
    b = gen.generate_token_sets(domain, seed=3, batch_size=12, **kwargs)
    one = gen.generate_token_sets(domain, seed=3, batch_size=1, **kwargs)
    c = gen.generate_token_sets(domain, seed=4, batch_size=5, **kwargs)
    assert _identical(a, again)  # same call, same bits
    assert _same(a, b) and _same(a, one)  # other batchings: same sets up to float rounding of batched matmuls
    assert not _same(a, c)
    assert [ts.meta["sample_index"] for ts in a] == list(range(12))


def test_same_seed_same_files(ckpt, tmp_path):
    """Two CLI runs with one seed write byte-identical SDF files and CIF folders."""
    for domain, name in (("molecule", "m.sdf"), ("crystal", "x")):
        for run in ("a", "b"):
            assert main([f"ckpt={ckpt}", f"domain={domain}", "n=5", f"out={tmp_path / run / name}", "steps=2", "seed=11", "progress=false"]) == 0
        files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
        assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def _bits(a, b) -> bool:
    """Every decoded field (types, coordinates, lattice, bonds, charges) bit for bit, and the same sample indices."""
    def fields(ts):
        return [ts.types, ts.pos, ts.frac, ts.lattice, ts.bonds, ts.charges]
    return all(all(u is None and v is None or u is not None and v is not None and torch.equal(u, v) for u, v in zip(fields(x), fields(y)))
               and x.meta == y.meta for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("domain", ["molecule", "crystal"])
def test_reproducible_sampling_is_bit_identical_for_any_batch_size_and_n(gen, domain):
    """reproducible=True: each sample in a batch of its own, so batch sizes 1, 3, 7 and two runs give the same bits
    (with guidance, i.e. the doubled CFG batch, and self-conditioning); sample i is the same among fewer samples too."""
    kwargs = {"n": 9, "seed": 3, "cfg_scale": 2.0, "reproducible": True, **FAST}
    one = gen.generate_token_sets(domain, batch_size=1, **kwargs)
    assert len({ts.num_tokens for ts in one}) > 1  # sizes drawn from the histogram: padding would be at stake when batched
    for batch_size in (3, 7):
        assert _bits(one, gen.generate_token_sets(domain, batch_size=batch_size, **kwargs))
    assert _bits(one, gen.generate_token_sets(domain, batch_size=3, **kwargs))  # a second run
    assert _bits(one[:4], gen.generate_token_sets(domain, batch_size=7, **{**kwargs, "n": 4}))  # per-sample generators: n does not matter
    assert not _bits(one, gen.generate_token_sets(domain, batch_size=1, **{**kwargs, "seed": 4}))


def test_sde_sampling_keeps_the_determinism_contract(gen):
    """method=sde draws each sample's step noise from that sample's own generator: bit-identical in
    reproducible mode whatever the batch size, different from the ODE, and sde_noise=0 is Euler."""
    kwargs = {"n": 6, "seed": 2, "reproducible": True, "bf16": False, **FAST}
    sde = gen.generate_token_sets("molecule", method="sde", batch_size=1, **kwargs)
    assert _bits(sde, gen.generate_token_sets("molecule", method="sde", batch_size=4, **kwargs))
    euler = gen.generate_token_sets("molecule", method="euler", batch_size=1, **kwargs)
    assert not _bits(sde, euler)
    assert _bits(euler, gen.generate_token_sets("molecule", method="sde", sde_noise=0.0, batch_size=1, **kwargs))
    with pytest.raises(SciDiTInputError, match="sde_noise must be a finite number >= 0"):
        gen.generate_token_sets("molecule", method="sde", sde_noise=-1.0, **kwargs)
    from sciDiT.flow import DEFAULT_SDE_NOISE
    from sciDiT.sample import KEYS
    assert KEYS["sde_noise"][1] == DEFAULT_SDE_NOISE  # the CLI (which imports no torch at start) states the same default


def test_temperature_scales_the_source_noise_and_nothing_else(gen, monkeypatch, ckpt, tmp_path, capsys):
    """temperature=t starts every ODE from t times the sample's own noise (1 is the default, bit for bit);
    a temperature that is not a positive number is refused (API: one-line error; CLI: exit code 2)."""
    kwargs = {"n": 5, "seed": 1, "reproducible": True, "bf16": False, **FAST}
    seen: list[torch.Tensor] = []
    sample_latents = gen.model.sample_latents

    def spy(*args, **kw):
        seen.append(kw["x0"].clone())
        return sample_latents(*args, **kw)

    monkeypatch.setattr(gen.model, "sample_latents", spy)
    plain = gen.generate_token_sets("crystal", **kwargs)
    assert _bits(plain, gen.generate_token_sets("crystal", temperature=1.0, **kwargs))
    cooled = gen.generate_token_sets("crystal", temperature=0.5, **kwargs)
    x0_plain, x0_cooled = seen[:5], seen[10:]
    assert all(torch.equal(b, 0.5 * a) for a, b in zip(x0_plain, x0_cooled, strict=True)) and x0_plain[0].abs().sum() > 0
    assert not _bits(plain, cooled)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(SciDiTInputError, match="temperature must be a finite number > 0"):
            gen.generate_token_sets("crystal", temperature=bad, **kwargs)
    monkeypatch.undo()
    assert main([f"ckpt={ckpt}", "domain=crystal", "n=3", f"out={tmp_path / 'ok'}", "steps=2", "temperature=0.8", "progress=false"]) == 0
    capsys.readouterr()
    assert main([f"ckpt={ckpt}", "domain=crystal", "n=3", f"out={tmp_path / 'bad'}", "steps=2", "temperature=0", "progress=false"]) == 2
    assert capsys.readouterr().err.strip() == "error: temperature must be a finite number > 0, got 0.0"
    assert not (tmp_path / "bad").exists()


def test_reproducible_files_are_byte_identical_for_any_batch_size(ckpt, tmp_path):
    """CLI reproducible=true: batch sizes 1, 3 and 7 write byte-identical SDF files and CIF folders (in float32;
    the API test above runs bf16=auto, which is bf16 on a bf16-native CPU)."""
    for domain, name in (("molecule", "m.sdf"), ("crystal", "x")):
        for batch_size in (1, 3, 7):
            out = tmp_path / str(batch_size) / name
            args = [f"ckpt={ckpt}", f"domain={domain}", "n=8", f"out={out}", "steps=2", "seed=5", f"batch_size={batch_size}", "reproducible=true", "bf16=false", "progress=false"]
            assert main(args) == 0
        files = sorted(p.relative_to(tmp_path / "1") for p in (tmp_path / "1").rglob("*") if p.is_file())
        assert files and all((tmp_path / "1" / f).read_bytes() == (tmp_path / b / f).read_bytes() for f in files for b in ("3", "7"))


def test_sizes_from_histogram_or_user(gen):
    sets = gen.generate_token_sets("crystal", n=40, seed=0, **FAST)
    seen = {ts.num_tokens for ts in sets}
    allowed = set(torch.nonzero(gen.model.size_counts[Domain.CRYSTAL]).flatten().tolist())
    assert seen <= allowed and len(seen) > 1
    assert [ts.num_tokens for ts in gen.generate_token_sets("molecule", n=3, num_atoms=7, **FAST)] == [7, 7, 7]
    assert [ts.num_tokens for ts in gen.generate_token_sets("molecule", n=3, num_atoms=[3, 9, 5], **FAST)] == [3, 9, 5]
    assert all(ts.domain == Domain.CRYSTAL and ts.lattice.abs().sum() > 0 for ts in sets)


def test_guidance_ema_and_solver_change_samples(gen):
    base = gen.generate_token_sets("molecule", n=6, seed=1, **FAST)
    assert not _same(base, gen.generate_token_sets("molecule", n=6, seed=1, cfg_scale=3.0, **FAST))
    assert not _same(base, gen.generate_token_sets("molecule", n=6, seed=1, use_ema=False, **FAST))
    assert not _same(base, gen.generate_token_sets("molecule", n=6, seed=1, method="heun", **FAST))
    bf16 = gen.generate_token_sets("molecule", n=6, seed=1, bf16=True, **FAST)
    assert all(torch.isfinite(ts.pos).all() for ts in bf16)


def test_generate_returns_rdkit_molecules_and_pymatgen_structures(gen):
    mols = gen.generate("molecule", n=5, seed=0, **FAST)
    assert len(mols) == 5 and all(isinstance(m, Chem.Mol) and m.GetNumConformers() == 1 for m in mols)
    assert [m.GetIntProp("sample_index") for m in mols] == list(range(5))
    xtals = gen.generate("crystal", n=5, seed=0, **FAST)
    assert len(xtals) == 5 and all(x is None or isinstance(x, Structure) for x in xtals)


def test_coherent_compositions_change_only_crystal_types_and_never_add_elements(gen):
    coherent = gen.generate_token_sets("crystal", n=30, seed=2, composition="coherent", **FAST)
    argmax = gen.generate_token_sets("crystal", n=30, seed=2, **FAST)  # the default
    for a, b in zip(coherent, argmax, strict=True):
        assert torch.equal(a.frac, b.frac) and torch.equal(a.lattice, b.lattice)
    k = [int(num_distinct(ts.types[None], torch.ones(1, ts.num_tokens, dtype=torch.bool), 120)) for ts in coherent]
    k_arg = [int(num_distinct(ts.types[None], torch.ones(1, ts.num_tokens, dtype=torch.bool), 120)) for ts in argmax]
    assert all(x <= y for x, y in zip(k, k_arg)) and sum(k) < sum(k_arg)  # untrained decoder: many stray elements
    # molecules are always decoded per atom
    assert _same(gen.generate_token_sets("molecule", n=4, seed=2, **FAST), gen.generate_token_sets("molecule", n=4, seed=2, composition="coherent", **FAST))


def test_checkpoint_without_element_prior_samples_by_argmax_and_refuses_coherent(ckpt, tmp_path):
    raw = torch.load(ckpt, weights_only=True)
    del raw["state_dict"]["model.element_counts"]  # as written before the prior existed
    torch.save(raw, tmp_path / "old.ckpt")
    old = load_generator(tmp_path / "old.ckpt")
    with pytest.raises(SciDiTInputError, match="composition=argmax"):
        old.generate_token_sets("crystal", n=2, composition="coherent", **FAST)
    assert len(old.generate_token_sets("crystal", n=2, **FAST)) == 2


def test_bad_generation_arguments(gen, ckpt, tmp_path):
    for kwargs, match in [({"domain": "cell"}, "domain"), ({"n": 0}, "n must"), ({"method": "rk4"}, "method"),
                          ({"composition": "vote"}, "composition"),
                          ({"num_atoms": [3, 4]}, "num_atoms"), ({"num_atoms": 0}, "num_atoms")]:
        with pytest.raises(SciDiTInputError, match=match):
            gen.generate_token_sets(**{"domain": "molecule", "n": 3, **kwargs, **FAST})
    with pytest.raises(SciDiTInputError, match="not found"):
        load_generator(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(SciDiTInputError, match="not a readable checkpoint"):
        load_generator(tmp_path / "junk.ckpt")
    raw = torch.load(ckpt, weights_only=True)
    vae_only = {"state_dict": {k: v for k, v in raw["state_dict"].items() if k.startswith("model.vae.")}, "hyper_parameters": {"vae": TINY_VAE}}
    torch.save(vae_only, tmp_path / "vae.ckpt")
    with pytest.raises(SciDiTInputError, match="a VAE-stage checkpoint, but a DiT-stage checkpoint is needed"):
        load_generator(tmp_path / "vae.ckpt")


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_writes_sdf_and_cif_folder(ckpt, tmp_path, capsys):
    sdf = tmp_path / "molecules.sdf"
    assert main([f"ckpt={ckpt}", "domain=molecule", "n=7", f"out={sdf}", "steps=3", "seed=5", "cfg_scale=2.0", "progress=false"]) == 0
    assert len(list(Chem.SDMolSupplier(str(sdf), sanitize=False, removeHs=False))) == 7
    folder = tmp_path / "crystals"
    assert main([f"ckpt={ckpt}", "domain=crystal", "n=6", f"out={folder}/", "steps=3", "method=midpoint", "progress=false"]) == 0
    rows = (folder / MANIFEST).read_text().splitlines()[1:]
    cifs = sorted(folder.glob("*.cif"))
    assert len(rows) == 6 and len(cifs) == sum("\tok\t" in r for r in rows)
    for f in cifs:
        assert len(Structure.from_file(f)) == len(ase.io.read(f))
    assert "wrote 6 crystals" in capsys.readouterr().out


def test_cli_writes_decoded_bonds_and_relaxes_on_request(ckpt, tmp_path):
    sdf = tmp_path / "relaxed.sdf"
    assert main([f"ckpt={ckpt}", "domain=molecule", "n=6", f"out={sdf}", "steps=3", "relax=true", "progress=false"]) == 0
    mols = list(Chem.SDMolSupplier(str(sdf), sanitize=False, removeHs=False))
    assert len(mols) == 6 and all(m.GetProp("bond_source") in ("decoded", "decoded_joint") for m in mols)  # joint by default
    # relaxed exactly when the decoded graph sanitizes (an untrained head may decode no sanitizable graph at all)
    assert all(m.GetIntProp("relaxed") <= m.GetIntProp("sanitized") for m in mols)


def test_a_checkpoint_without_a_bond_head_perceives_bonds(ckpt, tmp_path):
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"] = {k: v for k, v in raw["state_dict"].items() if ".bond_head." not in k}
    raw["hyper_parameters"] = {**raw["hyper_parameters"], "vae": {k: v for k, v in raw["hyper_parameters"]["vae"].items() if k != "bond_head"}}
    torch.save(raw, tmp_path / "old.ckpt")
    mols = load_generator(tmp_path / "old.ckpt").generate("molecule", n=3, **FAST)
    assert [m.GetProp("bond_source") for m in mols] == ["perceived"] * 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["domain=molecule", "n=2", "out={tmp}/m.sdf"], "give exactly one of ckpt= and pretrained="),
        (["ckpt={tmp}/none.ckpt", "domain=molecule", "n=2", "out={tmp}/m.sdf"], "checkpoint not found"),
        (["ckpt={ckpt}", "domain=protein", "n=2", "out={tmp}/m.sdf"], "domain="),
        (["ckpt={ckpt}", "domain=molecule", "n=2", "out={tmp}/m.sdf", "stpes=3"], "unknown key 'stpes'"),
        (["ckpt={ckpt}", "domain=molecule", "n=two", "out={tmp}/m.sdf"], "n='two'"),
        (["ckpt={ckpt}", "domain=molecule", "n=2", "out={ckpt}/m.sdf"], "cannot create folder"),
        (["ckpt={ckpt}", "domain=molecule", "n=2", "out={tmp}/"], "not a folder"),
        (["ckpt={ckpt}", "domain=crystal", "n=2", "out={tmp}/user"], "not a previous export"),
        (["ckpt={ckpt}", "domain=molecule", "n=2", "out={tmp}/m.sdf", "steps=0"], "steps must"),
        (["ckpt={ckpt}", "domain=crystal", "n=2", "out={tmp}/c/", "composition=vote"], "composition='vote'"),
        (["ckpt", "domain=molecule"], "not key=value"),
        (["ckpt={ckpt}", "domain=crystal", "n=2", "out={tmp}/x", "relax=true"], "molecules only"),
        (["ckpt={ckpt}", "domain=molecule", "n=2", "out={tmp}/m.sdf", "refine=true"], "refine=true needs a geometry refiner"),
        (["ckpt={ckpt}", "domain=molecule", "n=2", "out={tmp}/m.sdf", "refiner={ckpt}"], "not a geometry refiner file"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, ckpt, tmp_path, capsys):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "keep.txt").write_text("mine")
    code = main([a.format(tmp=tmp_path, ckpt=ckpt) for a in args] + ["progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and err.startswith("error:") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user"]  # nothing (half-)written
    assert (tmp_path / "user" / "keep.txt").read_text() == "mine"


def test_cli_as_a_module_exits_2_on_bad_input(tmp_path):
    run = subprocess.run([sys.executable, "-m", "sciDiT.sample", "domain=molecule", f"out={tmp_path}/m.sdf", "oops=1"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: unknown key 'oops'") and run.stderr.count("\n") == 1


def test_cli_refuses_to_write_non_finite_samples(ckpt, tmp_path, capsys):
    """A diverged checkpoint (NaN in the EMA DiT's output layer) gives one line, exit 2 and no output file."""
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["state_dict"]["ema.module.final_layer.linear.weight"][0, 0] = float("nan")
    bad = tmp_path / "diverged.ckpt"
    torch.save(raw, bad)
    for domain, out in (("molecule", tmp_path / "m.sdf"), ("crystal", tmp_path / "xtals")):
        code = main([f"ckpt={bad}", f"domain={domain}", "n=3", f"out={out}", "steps=2", "progress=false"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: generation produced non-finite coordinates") and "\n" not in err
        assert not out.exists()
