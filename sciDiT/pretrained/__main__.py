"""``python -m sciDiT.pretrained <dit last.ckpt> <out.pt> [decoder=<vae last.ckpt>] [guide=<dit last.ckpt>]``: the slim,
weights-only file to ship (see the package docstring); ``decoder=``: a decoder fine-tuned on the DiT's encoder
(``vae.train_decoder_only=true``) replaces the DiT checkpoint's; ``guide=``: a weaker DiT on the same VAE, packed
for autoguidance (``autoguidance=`` when sampling)."""

import sys

from sciDiT.errors import SciDiTInputError
from sciDiT.pretrained import export_pretrained

args = sys.argv[1:]
options = {key: next((a.removeprefix(f"{key}=") for a in args if a.startswith(f"{key}=")), None) for key in ("decoder", "guide")}
paths = [a for a in args if not a.startswith(("decoder=", "guide="))]
if len(paths) != 2 or len(args) > 2 + sum(v is not None for v in options.values()):
    print("usage: python -m sciDiT.pretrained <dit last.ckpt> <out.pt> [decoder=<vae last.ckpt>] [guide=<dit last.ckpt>]", file=sys.stderr)
    sys.exit(2)
try:
    print(export_pretrained(paths[0], paths[1], **options))
except SciDiTInputError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
