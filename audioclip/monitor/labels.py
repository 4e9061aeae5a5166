"""The monitor's labels: the classifier its configuration describes (prompt groups: :mod:`audioclip.stream.labels`)."""

from __future__ import annotations

from ..stream.labels import load_group_classifier
from ..stream.scoring import score_classifier


def config_classifier(config):
    """The classifier a :class:`~audioclip.monitor.config.MonitorConfig` describes: its model, its
    labels' prompt groups in label order, the defaults' template and score (:mod:`audioclip.stream.scoring`)."""
    groups = [(label.name, label.prompts) for label in config.labels]
    classifier = load_group_classifier(groups=groups, template=config.defaults.template if groups else None,
                                       checkpoint=config.model.checkpoint, onnx=config.model.onnx,
                                       runtime=config.model.runtime, precision=config.model.precision,
                                       threads=config.model.threads)
    return score_classifier(classifier, config.defaults.score)
