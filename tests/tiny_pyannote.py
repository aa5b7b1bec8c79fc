"""Build a tiny random pyannote.audio speaker-diarization pipeline directory.

The layout is that of a released pipeline: ``config.yaml`` plus ``segmentation/``,
``embedding/`` (pyannote model checkpoints) and ``plda/`` (VBx transform files). The
models are small pyannote architectures (its debug segmentation model, an MFCC
x-vector) with random weights, so the
speakers it finds mean nothing; the tests check that the real loading and inference
paths run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EMBEDDING_DIM = 64
LDA_DIM = 16


def _save_checkpoint(model, folder: Path) -> None:
    import lightning
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, folder / "pytorch_model.bin")


def build_tiny_pyannote(root: Path, seed: int = 0) -> Path:
    """Write the pipeline directory into ``root``; return ``root``."""
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding.xvector import XVectorMFCC
    from pyannote.audio.models.segmentation.debug import SimpleSegmentationModel

    torch.manual_seed(seed)
    segmentation = SimpleSegmentationModel()
    segmentation.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=5.0,
        classes=["speaker#1", "speaker#2", "speaker#3"],
        powerset_max_classes=2,
        permutation_invariant=True,
    )
    segmentation.build()
    _save_checkpoint(segmentation, root / "segmentation")

    embedding = XVectorMFCC(dimension=EMBEDDING_DIM)
    embedding.specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=3.0
    )
    embedding.build()
    _save_checkpoint(embedding, root / "embedding")

    rng = np.random.default_rng(seed)
    dim = int(embedding(torch.zeros(1, 1, 16000)).shape[-1])
    (root / "plda").mkdir(parents=True, exist_ok=True)
    lda = rng.normal(size=(dim, LDA_DIM))
    np.savez(
        root / "plda" / "xvec_transform.npz", mean1=np.zeros(dim), mean2=np.zeros(LDA_DIM), lda=lda
    )
    tr = rng.normal(size=(LDA_DIM, LDA_DIM)) + 3 * np.eye(LDA_DIM)
    np.savez(
        root / "plda" / "plda.npz", mu=np.zeros(LDA_DIM), tr=tr, psi=np.linspace(2.0, 0.5, LDA_DIM)
    )

    (root / "config.yaml").write_text(
        """version: 4.0.0
pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    segmentation: $model/segmentation
    embedding: $model/embedding
    plda: $model/plda
    clustering: VBxClustering
    embedding_batch_size: 8
    segmentation_batch_size: 8
params:
  segmentation:
    min_duration_off: 0.0
  clustering:
    threshold: 0.6
    Fa: 0.07
    Fb: 0.8
""",
        encoding="utf-8",
    )
    return root
