"""Models shipped in the package: the slim weights-only format and loading by name."""

from __future__ import annotations

import pytest
import torch

from sciDiT.errors import SciDiTInputError
from sciDiT.generate import load_generator
from sciDiT.pretrained import available, export_pretrained, pretrained_path
from sciDiT.sample import main as sample_main


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
    assert sample_main(["pretrained=qm9_mp20_cpu", "domain=crystal", "n=2", "steps=4", f"out={tmp_path / 'x'}", "progress=false"]) == 0
    assert len(list((tmp_path / "x").glob("*.cif"))) + sum(1 for _ in open(tmp_path / "x" / "manifest.tsv")) > 1
