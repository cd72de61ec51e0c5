"""Sampling entry point: write generated molecules to SDF and crystals to CIF.

    python -m sciDiT.sample ckpt=outputs/run/dit/checkpoints/last.ckpt domain=molecule n=1000 out=molecules.sdf
    python -m sciDiT.sample ckpt=... domain=crystal n=1000 out=crystals/ steps=100 cfg_scale=2.0 seed=0
    python -m sciDiT.sample ckpt=... domain=molecule n=100 out=gap.sdf condition.gap=6.5 guidance.gap=2.0
    python -m sciDiT.sample ckpt=... domain=crystal n=100 out=lfpo/ condition.spacegroup=225 condition.elements=[Li,Fe,P,O]
    python -m sciDiT.sample pretrained=qm9_mp20_cpu property_guide=qm9_props.pt domain=molecule n=100 out=gap.sdf condition.gap=7.5 property_guidance=2
    python -m sciDiT.sample pretrained=qm9_mp20_cpu discriminator_guidance=20 autoguidance=2 domain=molecule n=100 out=m.sdf
    python -m sciDiT.sample pretrained=qm9_mp20_cpu refine=true domain=molecule n=100 out=m.sdf

Arguments are ``key=value`` pairs (see ``KEYS``; ``python -m sciDiT.sample --help`` lists them).
``condition.KEY=VALUE`` requests a property of a conditional checkpoint, or of a property regressor
given as ``property_guide`` (classifier guidance; keys and units:
:mod:`sciDiT.data.conditions`; lists as ``[Li,Fe,P,O]``), ``guidance.KEY=SCALE`` guides on it, and
``allow_extrapolation=true`` admits values outside the training range. The request is written into
every SD record (property ``request``) and manifest row (column ``request``).
Crystals go to a folder of one CIF per structure plus ``manifest.tsv`` (or one multi-block file
when ``out`` ends in ``.cif``). Bad input ends with one line on stderr and exit code 2, before any
sampling starts; outputs are written atomically.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sciDiT.errors import SciDiTInputError

USAGE = "usage: python -m sciDiT.sample ckpt=PATH|pretrained=NAME domain=molecule|crystal n=N out=PATH [key=value ...]"


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _bool_or_auto(text: str) -> bool | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return _bool(text)
    except ValueError:
        raise ValueError(f"expected true, false or auto, got {text!r}") from None


def _composition(text: str) -> str:
    if text not in ("auto", "argmax", "coherent", "requested", "balanced"):
        raise ValueError("expected auto, argmax, coherent, requested or balanced")
    return text


def _bond_decoding(text: str) -> str:
    if text not in ("argmax", "constrained", "joint"):  # sciDiT.generate.BOND_DECODINGS, not imported before parsing
        raise ValueError("expected argmax, constrained or joint")
    return text


def _atoms(text: str) -> int | None:
    return None if text.strip().lower() in ("null", "none", "") else int(text)


def _interval(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.strip().strip("[]()").split(","))


# key -> (parser, default, help)
KEYS: dict[str, tuple[Callable[[str], Any], Any, str]] = {
    "ckpt": (str, None, "DiT-stage checkpoint (<output_dir>/dit/checkpoints/last.ckpt); this or pretrained is required"),
    "pretrained": (str, None, "name of a model shipped in the package instead of ckpt (e.g. qm9_mp20_cpu)"),
    "domain": (str, None, "molecule or crystal; required"),
    "out": (str, None, "molecules: an .sdf file; crystals: a folder (or a .cif file for one multi-block CIF); required"),
    "n": (int, 1000, "number of samples"),
    "num_atoms": (_atoms, None, "atoms per sample (default: drawn from the training histogram)"),
    "steps": (int, 100, "solver steps"),
    "method": (str, "euler", "solver: euler, heun or midpoint (ODE), or sde (stochastic, same marginals: corrects the DiT's drift)"),
    "sde_noise": (float, 2.0, "method=sde: noise strength s, diffusion g(t)^2 = 2 s (1 - t) (0 = euler)"),
    "cfg_scale": (float, 1.0, "classifier-free guidance scale on all conditions at once: the domain and any request (1 = none; per condition: guidance.KEY)"),
    "temperature": (float, 1.0, "scale of the ODE's source noise (1 = the trained model; below 1 trades diversity for fidelity: crystals turn into alloys)"),
    "autoguidance": (float, 1.0, "guide the DiT with a weaker DiT on the same VAE (packed in the checkpoint, or guide=) at this scale (1 = none)"),
    "autoguidance_interval": (_interval, (0.5, 1.0), "times [t_min,t_max] of the path where autoguidance acts (default the late half: sharper coordinates)"),
    "guide": (str, None, "autoguidance: a weaker DiT-stage checkpoint trained on the same VAE (default: the one packed in the checkpoint)"),
    "property_guide": (str, None, "a noisy-latent property regressor on the same VAE: condition.KEY requests of its properties steer sampling (classifier guidance)"),
    "property_guidance": (float, 1.0, "classifier guidance scale of property_guide (1 = Bayes' rule, larger follows the request harder, 0 = sizes only)"),
    "property_guidance_interval": (_interval, (0.1, 1.0), "times [t_min,t_max] of the path where property guidance acts (t_min > 0)"),
    "property_screen": (int, 1, "generate-and-screen: of this many candidates per sample keep the one nearest the request, by screen_predictor's "
                        "reading of the decoded molecules (else by property_guide's reading of the latents)"),
    "screen_predictor": (str, None, "QM9 property predictors trained on half B (file or folder; train_property_predictor.py --half B) for property_screen"),
    "discriminator": (str, None, "a latent discriminator (the data or the model's valid samples against its other samples), for discriminator_guidance "
                      "(default: the one packed in the checkpoint for the domain, if any)"),
    "discriminator_guidance": (float, 0.0, "discriminator guidance scale (0 = off, 1 = the density-ratio correction of Kim et al. 2023)"),
    "discriminator_guidance_interval": (_interval, (0.1, 1.0), "times [t_min,t_max] of the path where discriminator guidance acts (t_min > 0)"),
    "seed": (int, 0, "random seed (same seed, same samples)"),
    "batch_size": (int, 256, "samples per forward pass"),
    "reproducible": (_bool, False, "each sample in a batch of its own: bit-identical output for a seed, whatever batch_size (slower)"),
    "device": (str, "cpu", "torch device, e.g. cpu or cuda"),
    "use_ema": (_bool, True, "sample with the EMA weights"),
    "compile": (_bool, False, "torch.compile the DiT"),
    "bf16": (_bool_or_auto, "auto", "bfloat16 autocast for the DiT: true, false or auto (on where bf16 is native)"),
    "progress": (_bool, True, "show a progress bar"),
    "composition": (_composition, "auto", "crystal types: argmax (per atom), coherent (one element set per crystal, prior from training), requested "
                    "(exactly condition.elements or the crystal's composition), balanced (charge balanced, SMACT) or auto (requested where "
                    "the composition is fixed, else argmax)"),
    "bond_decoding": (_bond_decoding, "joint", "molecules: argmax bond order per pair, constrained (most probable graph with exact valences) "
                      "or joint (elements, charges and bonds chosen together: neutral, closed shell, connected where possible)"),
    "bond_min_prob": (float, None, "constrained / joint: the least probability the decoder must give an element, charge or bond that is chosen "
                      "(default 1e-2, or 1e-4 when refining: the refiner then builds the geometry of the chosen graph)"),
    "condition_sizes": (_bool, True, "with a request: draw atom counts from the training sizes given the requested values (EDM's protocol), not the unconditional histogram"),
    "allow_extrapolation": (_bool, False, "admit condition values outside the training range (and unseen space groups / elements)"),
    "refine": (_bool_or_auto, "auto", "molecules: the model's geometry refiner places each decoded molecule's atoms on its decoded graph "
               "(learned; SD geometry_source=refined); crystals: its crystal refiner restores each decoded crystal's elements, sites "
               "and cell (learned; manifest structure_source=refined): true, false or auto (on where the model has one)"),
    "refiner": (str, None, "a geometry refiner file for refine=true (default: the one packed in the checkpoint, if any)"),
    "crystal_refiner": (str, None, "a crystal refiner file for refine=true on crystals (default: the one packed in the checkpoint, if any)"),
    "composition_model": (str, None, "a composition model file (experiments/composition_first) for composition_first (default: the one packed in the checkpoint, if any)"),
    "composition_first": (_bool_or_auto, "auto", "crystals: draw each crystal's composition from the composition model, then its structure "
                          "from a DiT conditioned on composition, decoded to exactly those atoms: true, false or auto (on where the model "
                          "has a composition model and no composition, elements or num_atoms is requested)"),
    "composition_temperature": (float, 1.0, "composition_first: the composition model's sampling temperature (1 = the trained model; "
                                "below 1 draws its likelier compositions more often: more charge-balanced, fewer new ones)"),
    "relax": (_bool, False, "molecules: force-field minimise each sanitizable molecule on its decoded graph (MMFF94, UFF fallback)"),
}
REQUIRED = ("domain", "out")
PREFIXES = {"condition": "request a property: condition.KEY=VALUE (keys, domains and units below)",
            "guidance": "classifier-free guidance on one requested condition: guidance.KEY=SCALE (1 = none)"}


def _condition_value(text: str) -> Any:
    """``[Li,Fe,P,O]`` -> a list of strings; a number -> int or float; anything else stays text (checked later)."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [item.strip() for item in text[1:-1].split(",") if item.strip()]
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments -> typed options (defaults filled in); SciDiTInputError on any bad one."""
    opts: dict[str, Any] = {key: default for key, (_, default, _) in KEYS.items()}
    opts.update(condition={}, guidance={})
    for arg in argv:
        key, sep, text = arg.lstrip("+").partition("=")
        if not sep:
            raise SciDiTInputError(f"argument {arg!r} is not key=value ({USAGE})")
        prefix, dot, name = key.partition(".")
        if dot and prefix in PREFIXES:
            if not name:
                raise SciDiTInputError(f"argument {arg!r}: {prefix}. needs a key, e.g. {prefix}.gap=")
            if prefix == "guidance":
                try:
                    opts["guidance"][name] = float(text)
                except ValueError:
                    raise SciDiTInputError(f"{key}={text!r}: expected a number") from None
            else:
                opts["condition"][name] = _condition_value(text)
            continue
        if key not in KEYS:
            raise SciDiTInputError(f"unknown key {key!r}; known keys: {', '.join(KEYS)}")
        try:
            opts[key] = KEYS[key][0](text)
        except ValueError as err:
            raise SciDiTInputError(f"{key}={text!r}: {err}") from err
    if (opts["ckpt"] is None) == (opts["pretrained"] is None):
        raise SciDiTInputError(f"give exactly one of ckpt= and pretrained= ({USAGE})")
    missing = [k for k in REQUIRED if opts[k] is None]
    if missing:
        raise SciDiTInputError(f"missing {', '.join(f'{k}=' for k in missing)} ({USAGE})")
    return opts


def check_out(domain: str, out: str) -> Path:
    """Fail before sampling when the output cannot be written (missing or unwritable folder, wrong kind)."""
    from sciDiT.export import check_creatable
    from sciDiT.export.cif import is_previous_export

    path = check_creatable(Path(out.rstrip("/") or out))
    if domain == "molecule" and (path.is_dir() or out.endswith("/")):
        raise SciDiTInputError("molecules are written to one SDF file, not a folder", out)
    if domain == "crystal" and path.exists() and not path.is_dir() and path.suffix.lower() != ".cif":
        raise SciDiTInputError("crystals are written to a folder (or a .cif file), and this is a file", out)
    if domain == "crystal" and path.is_dir() and any(path.iterdir()) and not is_previous_export(path):
        raise SciDiTInputError("folder is not empty and is not a previous export: choose a new or empty folder", out)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        for key, (_, default, text) in KEYS.items():
            print(f"  {key:<11} {text} [default: {default}]")
        from sciDiT.data.conditions import describe_keys

        for prefix, text in PREFIXES.items():
            print(f"  {prefix + '.KEY':<11} {text}")
        print("condition keys (domain, meaning, unit):")
        for line in describe_keys():
            print(f"  {line}")
        return 0
    try:
        opts = parse_args(argv)
        # heavy imports (torch, RDKit, pymatgen) only after the arguments parsed, so typos fail fast
        from sciDiT.generate import load_generator, parse_domain

        domain = parse_domain(opts["domain"]).name.lower()
        if opts["relax"] and domain != "molecule":
            raise SciDiTInputError("relax=true applies to molecules only")
        out = check_out(domain, opts["out"])
        if opts["pretrained"] is not None:
            from sciDiT.pretrained import pretrained_path

            opts["ckpt"] = str(pretrained_path(opts["pretrained"]))
        gen = load_generator(opts["ckpt"], device=opts["device"], guide=opts["guide"], property_guide=opts["property_guide"],
                             discriminator=opts["discriminator"], refiner=opts["refiner"], screen_predictor=opts["screen_predictor"],
                             crystal_refiner=opts["crystal_refiner"], composition_model=opts["composition_model"])
        start = time.perf_counter()
        sets = gen.generate_token_sets(
            domain, opts["n"], num_atoms=opts["num_atoms"], steps=opts["steps"], method=opts["method"], sde_noise=opts["sde_noise"],
            cfg_scale=opts["cfg_scale"], temperature=opts["temperature"], seed=opts["seed"], batch_size=opts["batch_size"], use_ema=opts["use_ema"],
            progress=opts["progress"], compile=opts["compile"], bf16=opts["bf16"], composition=opts["composition"],
            composition_first=opts["composition_first"], composition_temperature=opts["composition_temperature"],
            bond_decoding=opts["bond_decoding"], bond_min_prob=opts["bond_min_prob"],
            condition=opts["condition"], guidance=opts["guidance"], allow_extrapolation=opts["allow_extrapolation"],
            condition_sizes=opts["condition_sizes"], reproducible=opts["reproducible"],
            autoguidance=opts["autoguidance"], autoguidance_interval=opts["autoguidance_interval"],
            property_guidance=opts["property_guidance"], property_guidance_interval=opts["property_guidance_interval"],
            discriminator_guidance=opts["discriminator_guidance"], discriminator_guidance_interval=opts["discriminator_guidance_interval"],
            property_screen=opts["property_screen"], refine=opts["refine"],
        )
        seconds = time.perf_counter() - start
        gen.export(sets, out, relax=opts["relax"])
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    note = ""
    if domain == "crystal":
        from sciDiT.export import lattice_problem

        valid = sum(not lattice_problem(ts.lattice.tolist()) for ts in sets)
        note = f"; {valid} with a valid lattice, the rest listed in the manifest" if out.suffix.lower() != ".cif" else f"; {valid} with a valid lattice"
    print(f"[sciDiT] wrote {len(sets)} {domain}s to {out} ({seconds:.1f} s sampling, {len(sets) / seconds:.1f} sets/s{note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
