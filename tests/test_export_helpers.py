"""The test helper that checks exported graphs against PyTorch (helpers.assert_graphs_match_pytorch), on the
tiny model's 2-s export and the real clips: it passes on the model that was exported and fails on another."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from audioclip.model import load_model

from helpers import assert_graphs_match_pytorch, make_tiny_model

pytestmark = pytest.mark.slow  # the tiny model's export (shared with the streaming tests) takes most of a minute


def test_the_graphs_match_the_model_they_were_exported_from(tiny_export_2s, tiny_checkpoint, clips_dir):
    found = assert_graphs_match_pytorch(tiny_export_2s, load_model(tiny_checkpoint), clips_dir, bound=1e-4,
                                        cosine=0.99999)
    assert found.windows == 10  # five 5-s clips, two whole 2-s windows each
    assert found.max_abs_diff < 1e-4 and found.min_cosine > 0.99999 and found.max_logit_diff < 1e-2
    assert found.top1_agree == found.windows
    # the bound is enforced: one below what was measured fails
    with pytest.raises(AssertionError, match=re.escape("encoder graph: max |diff|")):
        assert_graphs_match_pytorch(tiny_export_2s, load_model(tiny_checkpoint), clips_dir,
                                    bound=found.max_abs_diff * 0.5, cosine=0.99999)


def test_another_models_audio_tower_fails(tiny_export_2s, clips_dir):
    with pytest.raises(AssertionError, match="encoder graph"):
        assert_graphs_match_pytorch(tiny_export_2s, make_tiny_model(seed=1), clips_dir, bound=1e-2, cosine=0.99)


def test_another_models_labels_fail_the_classifier_graph(tiny_export_2s, tiny_checkpoint, clips_dir):
    model = load_model(tiny_checkpoint)  # the same audio tower, other text embeddings of the labels
    with torch.no_grad():
        model.token_embedding.weight.add_(torch.from_numpy(
            np.random.default_rng(0).normal(0, 0.5, tuple(model.token_embedding.weight.shape)).astype(np.float32)))
    with pytest.raises(AssertionError, match="classifier graph"):
        assert_graphs_match_pytorch(tiny_export_2s, model, clips_dir, bound=1e-4, cosine=0.99999)
