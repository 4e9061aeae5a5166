"""Thresholds from the site's own audio (audioclip/monitor/calibrate.py): on a real database of synthetic moments the
proposal meets the target alarms per hour on that history, reviewed events move it as they should, and
``audioclip-stream --calibrate --apply`` writes it into monitor.toml keeping its comments."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from typer.testing import CliRunner

from audioclip.model import load_model
from audioclip.monitor.calibrate import FLOOR, GRID, calibrate
from audioclip.monitor.config import load_config
from audioclip.monitor.events import DetectionEvent
from audioclip.monitor.store import EventStore
from audioclip.stream.cli import app
from audioclip.stream.labels import torch_group_classifier
from audioclip.stream.scoring import score_classifier

EVERY = 30.0  # seconds between moments: 2 h of one source and 1 h of another in 360 rows
START = datetime(2026, 12, 1, tzinfo=timezone.utc)
GROUPS = [("cat", ["cat"]), ("rain", ["rain", "rain on a roof"])]
TOML = """# the porch monitor: keep this comment
labels = ["cat", {{name = "rain", prompts = ["rain", "rain on a roof"]}}]  # two labels

[model]
checkpoint = "{checkpoint}"

[defaults]
hysteresis = 0.05            # ends below threshold - hysteresis

[store]
db = "{db}"
embed_every = {every}

[[sources]]
name = "porch"
device = "default"
"""


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return score_classifier(torch_group_classifier(load_model(tiny_checkpoint), GROUPS), "label")


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_checkpoint, scorer):
    """A monitor.toml and its database: random background moments with bursts of cat-like windows, two sources."""
    tmp = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(0)
    cat = scorer.label_rows[0]
    store = EventStore(tmp / "events.sqlite")
    bursts = {}
    for source, hours in (("porch", 2.0), ("yard", 1.0)):
        n = int(hours * 3600 / EVERY)
        vectors = unit(rng.standard_normal((n, len(cat))))
        starts = rng.choice(np.arange(0, n - 3, 6), size=12, replace=False)
        for s in starts:  # two cat-like moments in a row, more or less clear
            vectors[s:s + 2] = unit(cat + rng.uniform(0.3, 1.2) * unit(rng.standard_normal((2, len(cat)))))
        bursts[source] = sorted(int(s) for s in starts)
        for i, v in enumerate(vectors):
            t = START + timedelta(seconds=i * EVERY)
            store.add_moment(source, t, i * EVERY, i * EVERY + 5.0, str(tiny_checkpoint), v)
    store.close()
    toml = tmp / "monitor.toml"
    toml.write_text(TOML.format(checkpoint=tiny_checkpoint, db=tmp / "events.sqlite", every=EVERY))
    return toml, bursts


def events_at(scores_by_source, threshold, hysteresis) -> int:
    """The alarms a stream would raise on each source's scores (an independent count)."""
    n = 0
    for scores in scores_by_source:
        on = False
        for s in scores:
            if not on and s >= threshold:
                on, n = True, n + 1
            elif on and s < threshold - hysteresis:
                on = False
    return n


def history_scores(toml, scorer, label: int):
    config = load_config(toml)
    store = EventStore(config.store.db)
    out = []
    for source in ("porch", "yard"):
        rows, vectors = store.moments(source=source)
        out.append(scorer.label_scores_of(vectors)[:, label].astype(np.float64))
    store.close()
    return out


def test_the_proposal_meets_the_target_on_the_history_and_is_the_lowest_that_does(site, scorer):
    toml, _ = site
    proposals, history = calibrate(load_config(toml), alarms_per_hour=2.0)
    assert history.hours == pytest.approx(3.0) and [p.label for p in proposals] == ["cat", "rain"]
    for j, p in enumerate(proposals):
        scores = history_scores(toml, scorer, j)
        alarms = events_at(scores, p.threshold, 0.05)
        assert p.alarms_per_hour == pytest.approx(alarms / 3.0)
        assert alarms / 3.0 <= 2.0 and (p.threshold == FLOOR or 2.0 < events_at(scores, p.threshold - GRID, 0.05) / 3.0)
        assert p.current == 0.95 and p.current_alarms_per_hour == pytest.approx(events_at(scores, 0.95, 0.05) / 3.0)
    cat = proposals[0]
    assert FLOOR < cat.threshold < 0.999 and cat.alarms_per_hour > 0  # the bursts decide it, not the grid's ends


def test_reviewed_events_move_the_proposal(site, scorer, tmp_path):
    """Moments inside an event marked correct are not background (the proposal falls); an event marked wrong that
    would still fire raises the threshold above its score."""
    toml, bursts = site
    config = load_config(toml)
    before = calibrate(config, alarms_per_hour=2.0)[0][0]
    db = tmp_path / "reviewed.sqlite"
    shutil.copy(config.store.db, db)
    store = EventStore(db)
    model = str(config.model.checkpoint)
    rng = np.random.default_rng(1)
    cat = scorer.label_rows[0]
    candidates = unit(cat + np.linspace(0.2, 2.0, 200)[:, None] * unit(rng.standard_normal((200, len(cat)))))
    scores = scorer.label_scores_of(candidates)[:, 0]

    def review(event_id, verdict, source, start, end, vector):
        store.record(DetectionEvent(event_id, "end", source, "cat", start, 0.0, 0.99, 0.9, end_utc=end, end_s=1.0))
        store.set_embedding(event_id, model, 5.0, vector)
        assert store.set_review(event_id, verdict)

    yard = [START + timedelta(seconds=s * EVERY) for s in bursts["yard"]]  # one long correct event over them all
    review(1, "correct", "yard", yard[0] - timedelta(seconds=1), yard[-1] + timedelta(seconds=2 * EVERY),
           candidates[np.argmax(scores)])
    kept = calibrate(config, alarms_per_hour=2.0, store=store)[0][0]
    assert kept.threshold < before.threshold and (kept.correct, kept.wrong, kept.kept) == (1, 0, 1)
    assert kept.current_alarms_per_hour < before.current_alarms_per_hour or before.current_alarms_per_hour == 0

    wrong = candidates[np.flatnonzero((scores > kept.threshold + 0.01) & (scores < 0.98))[0]]
    review(2, "wrong", "porch", START, START + timedelta(seconds=20), wrong)
    proposals, _ = calibrate(config, alarms_per_hour=2.0, store=store)
    store.close()
    raised = proposals[0]
    wrong_score = float(scorer.label_scores_of(wrong[None].astype(np.float16))[0, 0])  # as stored: float16
    assert raised.threshold >= wrong_score > kept.threshold and "raised above 1 of 1 events marked wrong" in raised.note
    assert raised.threshold - wrong_score <= GRID and (raised.correct, raised.wrong, raised.kept) == (1, 1, 1)
    assert proposals[1].correct == proposals[1].wrong == 0 and proposals[1].note == ""  # rain: no reviews


def test_apply_writes_the_thresholds_and_keeps_the_comments(site):
    toml, _ = site
    copy = toml.with_name("copy.toml")
    copy.write_text(toml.read_text())
    shown = CliRunner().invoke(app, ["--config", str(copy), "--calibrate", "--alarms-per-hour", "2"])
    assert shown.exit_code == 0, shown.output
    assert "[[labels]]" in shown.stdout and 'name = "cat"' in shown.stdout and copy.read_text() == toml.read_text()
    proposals, _ = calibrate(load_config(copy), alarms_per_hour=2.0)
    done = CliRunner().invoke(app, ["--config", str(copy), "--calibrate", "--alarms-per-hour", "2", "--apply"])
    assert done.exit_code == 0, done.output
    text = copy.read_text()
    assert "# the porch monitor: keep this comment" in text and "# ends below threshold - hysteresis" in text
    assert "# two labels" in text
    applied = load_config(copy)
    assert [label.threshold for label in applied.labels] == [p.threshold for p in proposals]
    assert applied.labels[1].prompts == ("rain", "rain on a roof")
    bad = CliRunner().invoke(app, ["--calibrate", "--alarms-per-hour", "2"])
    assert bad.exit_code == 2 and "pass --config monitor.toml" in bad.stderr
    bad = CliRunner().invoke(app, ["--config", str(copy), "--apply"])
    assert bad.exit_code == 2 and "--apply applies to --calibrate" in bad.stderr
    copy.write_text(copy.read_text().replace("[defaults]\n", '[defaults]\nscore = "softmax"\n'))
    bad = CliRunner().invoke(app, ["--config", str(copy), "--calibrate"])
    assert bad.exit_code == 2 and "calibration proposes thresholds of label scores" in bad.stderr
