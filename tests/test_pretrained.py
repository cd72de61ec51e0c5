"""Models shipped in the package: the slim weights-only format and loading by name."""

from __future__ import annotations

import pytest
import torch
from rdkit import Chem
from conftest import TINY_VAE

from sciDiT.errors import SciDiTInputError
from sciDiT.generate import load_generator
from sciDiT.pretrained import available, export_pretrained, pretrained_path
from sciDiT.sample import main as sample_main
from sciDiT.training.vae_module import VAEModule


def test_slim_export_samples_exactly_like_the_full_checkpoint(tiny_dit_ckpt, tmp_path):
    slim = export_pretrained(tiny_dit_ckpt, tmp_path / "tiny.pt")
    full = torch.load(tiny_dit_ckpt, weights_only=True)
    small = torch.load(slim, weights_only=True)
    assert "optimizer_states" not in small and not any(k.startswith("ema.module.") for k in small["state_dict"])
    assert slim.stat().st_size < 0.8 * len(open(tiny_dit_ckpt, "rb").read())
    ema = {k.removeprefix("ema.module."): v for k, v in full["state_dict"].items() if k.startswith("ema.module.")}
    assert all(torch.equal(small["state_dict"]["model.dit." + k], v) for k, v in ema.items())
    a = load_generator(tiny_dit_ckpt).generate_token_sets("molecule", 6, steps=3, seed=1, progress=False, bf16=False)
    b = load_generator(str(slim)).generate_token_sets("molecule", 6, steps=3, seed=1, progress=False, bf16=False)
    assert all(torch.equal(x.pos, y.pos) and torch.equal(x.types, y.types) for x, y in zip(a, b))


def test_slim_export_of_a_conditional_model_keeps_its_conditions(tiny_cond_ckpt, tmp_path):
    slim = export_pretrained(tiny_cond_ckpt, tmp_path / "cond.pt")
    full, small = load_generator(tiny_cond_ckpt), load_generator(str(slim))
    assert small.condition_stats == full.condition_stats and "gap" in small.condition_stats
    kwargs = dict(steps=3, seed=2, progress=False, bf16=False, condition={"gap": 6.5})
    a, b = full.generate_token_sets("molecule", 4, **kwargs), small.generate_token_sets("molecule", 4, **kwargs)
    assert all(torch.equal(x.pos, y.pos) and torch.equal(x.types, y.types) for x, y in zip(a, b))


def test_unknown_pretrained_name_is_a_one_line_error():
    with pytest.raises(SciDiTInputError, match="no pretrained model 'nope'; shipped: "):
        load_generator("nope")
    with pytest.raises(SciDiTInputError, match="no pretrained model"):
        pretrained_path("nope")


def test_sample_cli_takes_exactly_one_of_ckpt_and_pretrained(tiny_dit_ckpt, tmp_path, capsys):
    assert sample_main([f"ckpt={tiny_dit_ckpt}", "pretrained=qm9_mp20_cpu", "domain=molecule", f"out={tmp_path / 'm.sdf'}"]) == 2
    assert "exactly one of ckpt= and pretrained=" in capsys.readouterr().err
    assert not (tmp_path / "m.sdf").exists()


def test_the_shipped_model_loads_by_name_and_generates_decoded_graphs(tmp_path):
    assert "qm9_mp20_cpu" in available()
    assert (pretrained_path("qm9_mp20_cpu").with_suffix(".md")).read_text().startswith("# Model card")
    gen = load_generator("qm9_mp20_cpu")
    mols = gen.generate("molecule", n=3, steps=4, seed=0, progress=False)
    assert all(m.GetProp("bond_source") in ("decoded", "decoded_joint") for m in mols) and len(mols) == 3  # joint decoding by default
    assert gen.refiner is not None and [m.GetProp("geometry_source") for m in mols] == ["refined"] * 3  # its refiner places the atoms
    assert gen.weak_dit is not None  # its autoguidance model is packed in the file
    guided = gen.generate("molecule", n=3, steps=4, seed=0, progress=False, autoguidance=2.0)
    assert len(guided) == 3 and any(Chem.MolToSmiles(a) != Chem.MolToSmiles(b) or
                                    abs(a.GetConformer().GetPositions() - b.GetConformer().GetPositions()).max() > 1e-3
                                    for a, b in zip(mols, guided))
    assert sample_main(["pretrained=qm9_mp20_cpu", "domain=crystal", "n=2", "steps=4", f"out={tmp_path / 'x'}", "progress=false"]) == 0
    assert len(list((tmp_path / "x").glob("*.cif"))) + sum(1 for _ in open(tmp_path / "x" / "manifest.tsv")) > 1
    assert set(gen.discriminators) == {"molecule", "crystal"}  # validity guidance's heads are packed too
    tilted = gen.generate("molecule", n=3, steps=4, seed=0, progress=False, discriminator_guidance=20.0)
    assert any(abs(a.GetConformer().GetPositions() - b.GetConformer().GetPositions()).max() > 1e-3 for a, b in zip(mols, tilted))
    assert sample_main(["pretrained=qm9_mp20_cpu", "domain=crystal", "n=2", "steps=4", "discriminator_guidance=10", f"out={tmp_path / 'y'}",
                        "progress=false"]) == 0


def _vae_ckpt(module, path) -> str:
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


def test_a_decoder_fine_tuned_on_the_dit_encoder_replaces_the_decoder(tiny_dit_ckpt, tmp_path):
    full = torch.load(tiny_dit_ckpt, weights_only=True)
    vae_state = {k.removeprefix("model.vae."): v for k, v in full["state_dict"].items() if k.startswith("model.vae.")}
    base = VAEModule(vae=TINY_VAE)
    base.model.load_state_dict(vae_state)
    tuned = VAEModule(vae=TINY_VAE, init_ckpt=_vae_ckpt(base, tmp_path / "base.ckpt"), train_decoder_only=True)
    frozen = {id(p) for p in tuned.model.encoder_modules().parameters()}
    assert frozen and all(not p.requires_grad for p in tuned.model.encoder_modules().parameters())
    assert all(p.requires_grad for p in tuned.model.parameters() if id(p) not in frozen)
    assert len(tuned.trainable_parameters()) == sum(1 for p in tuned.model.parameters() if id(p) not in frozen)
    with torch.no_grad():
        tuned.model.pos_head.weight.add_(1.0)  # what a fine-tune changes
    slim = export_pretrained(tiny_dit_ckpt, tmp_path / "tuned.pt", decoder=_vae_ckpt(tuned, tmp_path / "tuned.ckpt"))
    state = torch.load(slim, weights_only=True)["state_dict"]
    assert torch.equal(state["model.vae.pos_head.weight"], tuned.model.pos_head.weight)
    assert torch.equal(state["model.vae.to_latent.weight"], full["state_dict"]["model.vae.to_latent.weight"])
    assert load_generator(str(slim)).generate_token_sets("molecule", 2, steps=2, seed=0, progress=False, bf16=False)

    other = VAEModule(vae=TINY_VAE)  # another encoder: its latents are not the ones the DiT samples
    with pytest.raises(SciDiTInputError, match="encoder differs from the DiT's"):
        export_pretrained(tiny_dit_ckpt, tmp_path / "bad.pt", decoder=_vae_ckpt(other, tmp_path / "other.ckpt"))
    assert not (tmp_path / "bad.pt").exists()


def test_autoguidance_packs_a_weaker_dit_of_the_same_vae_and_uses_it(tiny_dit_ckpt, tmp_path):
    full = torch.load(tiny_dit_ckpt, weights_only=True)
    weak_state = dict(full["state_dict"])
    for k in [k for k in weak_state if k.startswith("ema.module.")]:
        weak_state[k] = weak_state[k] * 0.5  # a different, "weaker" DiT on the same VAE and latents
    weak = tmp_path / "weak.ckpt"
    torch.save({**full, "state_dict": weak_state}, weak)
    kwargs = dict(steps=4, seed=3, progress=False, bf16=False)
    plain = load_generator(tiny_dit_ckpt).generate_token_sets("molecule", 4, **kwargs)
    with pytest.raises(SciDiTInputError, match="autoguidance needs a weaker DiT"):
        load_generator(tiny_dit_ckpt).generate_token_sets("molecule", 4, autoguidance=2.0, **kwargs)

    packed = load_generator(str(export_pretrained(tiny_dit_ckpt, tmp_path / "guided.pt", guide=weak)))
    assert packed.weak_dit is not None
    same = packed.generate_token_sets("molecule", 4, autoguidance=1.0, **kwargs)  # scale 1: the main model alone
    assert all(torch.equal(x.pos, y.pos) for x, y in zip(plain, same))
    guided = packed.generate_token_sets("molecule", 4, autoguidance=2.0, autoguidance_interval=(0.5, 1.0), **kwargs)
    assert not all(torch.allclose(x.pos, y.pos) for x, y in zip(plain, guided))
    by_path = load_generator(tiny_dit_ckpt, guide=weak).generate_token_sets("molecule", 4, autoguidance=2.0, **kwargs)
    assert all(torch.allclose(x.pos, y.pos, atol=1e-2) for x, y in zip(by_path, guided))  # the packed copy is bf16
    with pytest.raises(SciDiTInputError, match="autoguidance_interval"):
        packed.generate_token_sets("molecule", 2, autoguidance=2.0, autoguidance_interval=(0.8, 0.2), **kwargs)

    other_vae = dict(full["state_dict"])
    other_vae["model.vae.to_latent.weight"] = other_vae["model.vae.to_latent.weight"] + 1.0  # another encoder
    other = tmp_path / "other.ckpt"
    torch.save({**full, "state_dict": other_vae}, other)
    with pytest.raises(SciDiTInputError, match="encoder differs"):
        load_generator(tiny_dit_ckpt, guide=other)
    assert sample_main([f"ckpt={tiny_dit_ckpt}", "domain=molecule", "n=2", "steps=2", f"out={tmp_path / 'm.sdf'}", "autoguidance=2"]) == 2
    assert not (tmp_path / "m.sdf").exists()
