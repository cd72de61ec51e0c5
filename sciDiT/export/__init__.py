"""Export generated samples to the files chemistry tools read: SDF for molecules, CIF for crystals.

Every write is atomic (temporary file or folder, then rename), so an error never leaves a
half-written sample set behind.
"""

from sciDiT.export.atomic import atomic_folder, atomic_write_text, check_creatable, check_writable_parent
from sciDiT.export.cif import MANIFEST, ManifestRow, lattice_problem, write_cif_file, write_cif_folder
from sciDiT.export.sdf import relax_molecule, to_molecules, write_sdf

__all__ = [
    "MANIFEST",
    "ManifestRow",
    "atomic_folder",
    "atomic_write_text",
    "check_creatable",
    "check_writable_parent",
    "lattice_problem",
    "relax_molecule",
    "to_molecules",
    "write_cif_file",
    "write_cif_folder",
    "write_sdf",
]
