"""Fixtures shared by several test files."""

import pytest

from tools.synth import synth


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """One small synthetic set in the released layouts (tools/synth.py, seed 0), written once per test session:
    4 classes x 8 train / 2 val ImageNet images with ImageNet-AB XML and ILSVRC boxes, 12 + 4 COCO images with
    COCO-AB. Read-only: a test that breaks files copies them first."""
    d = tmp_path_factory.mktemp("synth")
    synth(str(d), seed=0, n_classes=4, n_train=8, n_val=2, coco_train=12, coco_val=4)
    return str(d)
