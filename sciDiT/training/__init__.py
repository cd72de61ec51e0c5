"""Training glue: Lightning modules, data module, augmentation (thin wrappers over sciDiT.models)."""
