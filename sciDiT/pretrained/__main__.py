"""``python -m sciDiT.pretrained <dit last.ckpt> <out.pt> [decoder=<vae last.ckpt>]``: the slim, weights-only
file to ship (see the package docstring); ``decoder=``: a decoder fine-tuned on the DiT's encoder
(``vae.train_decoder_only=true``) replaces the DiT checkpoint's."""

import sys

from sciDiT.errors import SciDiTInputError
from sciDiT.pretrained import export_pretrained

args = sys.argv[1:]
decoder = next((a.removeprefix("decoder=") for a in args if a.startswith("decoder=")), None)
paths = [a for a in args if not a.startswith("decoder=")]
if len(paths) != 2 or len(args) > 3:
    print("usage: python -m sciDiT.pretrained <dit last.ckpt> <out.pt> [decoder=<vae last.ckpt>]", file=sys.stderr)
    sys.exit(2)
try:
    print(export_pretrained(paths[0], paths[1], decoder=decoder))
except SciDiTInputError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
