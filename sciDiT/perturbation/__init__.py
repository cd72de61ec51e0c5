"""Perturbation-response prediction: splits, baselines and the predictor interface sciDiT plugs into."""

from sciDiT.perturbation.baselines import (
    BASELINES,
    Additive,
    LinearGeneEmbedding,
    NoChange,
    PerturbedMean,
    ShiftPredictor,
    TrainCells,
)
from sciDiT.perturbation.model import PerturbationFlow, SciDiTPredictor
from sciDiT.perturbation.splits import PerturbationSplit, random_cells_split, replicate_split, unseen_target_split

__all__ = [
    "BASELINES",
    "Additive",
    "LinearGeneEmbedding",
    "NoChange",
    "PerturbationSplit",
    "PerturbationFlow",
    "PerturbedMean",
    "SciDiTPredictor",
    "ShiftPredictor",
    "TrainCells",
    "random_cells_split",
    "replicate_split",
    "unseen_target_split",
]
