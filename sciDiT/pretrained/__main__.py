"""``python -m sciDiT.pretrained <dit last.ckpt> <out.pt> [decoder=<vae last.ckpt>] [guide=<dit last.ckpt>] [discriminator=<file>]...
[refiner=<file>] [crystal_refiner=<file>] [composition_model=<file>]``:
the slim, weights-only file to ship (see the package docstring); ``decoder=``: a decoder fine-tuned on the DiT's encoder
(``vae.train_decoder_only=true``) replaces the DiT checkpoint's; ``guide=``: a weaker DiT on the same VAE, packed
for autoguidance (``autoguidance=`` when sampling); ``discriminator=`` (once per domain): a latent discriminator of the
model's samples, packed for discriminator guidance (``discriminator_guidance=`` when sampling); ``refiner=``: a geometry
refiner of the model's molecules (``refine=true`` when sampling); ``crystal_refiner=``: a crystal refiner of the model
(``refine=true`` for crystals); ``composition_model=``: a composition model (``composition_first=true`` for crystals)."""

import sys

from sciDiT.errors import SciDiTInputError
from sciDiT.pretrained import export_pretrained

USAGE = ("usage: python -m sciDiT.pretrained <dit last.ckpt> <out.pt> [decoder=<vae last.ckpt>] [guide=<dit last.ckpt>] "
         "[discriminator=<file>]... [refiner=<file>] [crystal_refiner=<file>] [composition_model=<file>]")
SINGLE = ("decoder", "guide", "refiner", "crystal_refiner", "composition_model")
args = sys.argv[1:]
options = {key: [a.removeprefix(f"{key}=") for a in args if a.startswith(f"{key}=")] for key in SINGLE + ("discriminator",)}
paths = [a for a in args if not a.startswith(tuple(f"{key}=" for key in options))]
if len(paths) != 2 or any(len(options[key]) > 1 for key in SINGLE):
    print(USAGE, file=sys.stderr)
    sys.exit(2)
try:
    print(export_pretrained(paths[0], paths[1], decoder=next(iter(options["decoder"]), None), guide=next(iter(options["guide"]), None),
                            discriminators=options["discriminator"], refiner=next(iter(options["refiner"]), None),
                            crystal_refiner=next(iter(options["crystal_refiner"]), None),
                            composition_model=next(iter(options["composition_model"]), None)))
except SciDiTInputError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
