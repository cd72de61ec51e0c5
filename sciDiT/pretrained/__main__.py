"""``python -m sciDiT.pretrained <dit last.ckpt> <out.pt>``: the slim, weights-only file to ship (see the package docstring)."""

import sys

from sciDiT.errors import SciDiTInputError
from sciDiT.pretrained import export_pretrained

if len(sys.argv) != 3:
    sys.exit("usage: python -m sciDiT.pretrained <dit last.ckpt> <out.pt>")
try:
    print(export_pretrained(sys.argv[1], sys.argv[2]))
except SciDiTInputError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
