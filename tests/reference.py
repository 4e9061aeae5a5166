"""The published AudioCLIP code (``../shared/reference/code``), run live on this machine as the parity oracle.

The stored golden arrays were computed on one CPU; on another CPU the reference itself, with the same
code, weights and inputs, lands up to 1.5e-3 of the largest value away from them on the real clips
(``../shared/golden/README.md``, "Across machines"): the random golden checkpoint amplifies rounding.
So parity is proven against the reference computed here, and the stored arrays are kept for what is
stable across CPUs. Nothing of the reference is copied into the project: it is read from ``../shared``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

# the reference's top-level package names, removed from sys.modules once it is built so that nothing
# else in the test session can import them by accident
_REFERENCE_PACKAGES = ("model", "utils", "ignite_trainer", "termcolor", "torchvision", "PIL", "librosa",
                       "soundfile", "sklearn")


def _own(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _REFERENCE_PACKAGES)


def load_reference(shared: Path, golden_dir: Path) -> torch.nn.Module:
    """The reference ``AudioCLIP`` with the golden checkpoint's weights in float32, in eval mode."""
    paths = [str(shared / "reference" / "stubs"), str(shared / "reference" / "code")]
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if _own(name)}  # e.g. the real soundfile
    sys.path[:0] = paths
    try:
        from model import AudioCLIP

        config = json.loads((golden_dir / "reference_outputs.json").read_text())["meta"]["config"]
        reference = AudioCLIP(**config, pretrained=False)
        state = torch.load(golden_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        reference.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        return reference.eval()
    finally:
        for path in paths:
            sys.path.remove(path)
        for name in [n for n in sys.modules if _own(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def reference_outputs(reference: torch.nn.Module, golden: dict[str, np.ndarray], golden_dir: Path) -> dict:
    """What the reference gives on this machine for the golden inputs, under the golden file's keys."""
    meta = json.loads((golden_dir / "reference_outputs.json").read_text())
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for key in [k for k in golden if k.startswith("audio_in/")]:
            name = key.split("/", 1)[1]
            x = torch.from_numpy(golden[key]).float()  # int16 range: the reference scales it itself
            out[f"audio_emb/{name}"] = reference.encode_audio(x).numpy()
            out[f"audio_db/{name}"] = reference.audio._forward_pre_processing(x).numpy()
        out["text_emb"] = reference.encode_text([[t] for t in meta["texts"]]).numpy()
        out["image_emb"] = reference.encode_image(torch.from_numpy(golden["image_in"])).numpy()
        (_, logits), loss = reference(audio=torch.from_numpy(golden["fwd_audio_in"]).float(),
                                      image=torch.from_numpy(golden["image_in"]), text=meta["fwd_text"])
    for pair, value in zip(("audio_image", "audio_text", "image_text"), logits):
        out[f"fwd_logits_{pair}"] = value.numpy()
    out["fwd_loss"] = np.float64(loss)
    return out
