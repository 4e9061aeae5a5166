"""Finding an input device by index or name, and finding it again after a replug (pure: lists of devices).

The same against PortAudio and PulseAudio, with a device that really goes and comes back, is in
test_monitor_sources.py.
"""

from __future__ import annotations

import pytest

from audioclip.stream.devices import AudioDeviceError, InputDevice, pick_device, stable_name


def mic(index: int, name: str, default: bool = False) -> InputDevice:
    return InputDevice(index, name, "ALSA", 2, 44100.0, default)


USB_1 = mic(3, "USB PnP Sound Device: Audio (hw:1,0)")
BEFORE = [mic(0, "HDA Intel PCH: ALC3246 Analog (hw:0,0)"), USB_1, mic(4, "pulse", default=True)]
# after a replug the card is number 2 and another card took index 3
AFTER = [mic(0, "HDA Intel PCH: ALC3246 Analog (hw:0,0)"), mic(3, "Webcam C270: USB Audio (hw:3,0)"),
         mic(5, "USB PnP Sound Device: Audio (hw:2,0)"), mic(6, "pulse", default=True)]


def test_first_open_by_index_exact_name_part_of_a_name_or_the_default():
    assert pick_device(BEFORE, 3) is USB_1 and pick_device(BEFORE, "3") is USB_1
    assert pick_device(BEFORE, "USB PnP Sound Device: Audio (hw:1,0)") is USB_1
    assert pick_device(BEFORE, "usb pnp") is USB_1
    assert pick_device(BEFORE, None).name == "pulse"
    with pytest.raises(AudioDeviceError, match=r"ambiguous input device 'a'; input devices: 0: 'HDA"):
        pick_device(BEFORE, "a")
    with pytest.raises(AudioDeviceError, match="unknown input device '9'"):
        pick_device(BEFORE, 9)


@pytest.mark.parametrize("key", [3, "USB PnP Sound Device: Audio (hw:1,0)", "USB"])
def test_a_replugged_device_is_found_under_its_new_index_and_card_number(key):
    found = pick_device(AFTER, key, previous=USB_1)
    assert (found.index, found.name) == (5, "USB PnP Sound Device: Audio (hw:2,0)")


def test_an_index_is_not_trusted_once_its_device_is_gone():
    gone = [d for d in AFTER if "PnP" not in d.name]
    assert pick_device(gone, 3).name.startswith("Webcam")  # a first open takes the index as given
    with pytest.raises(AudioDeviceError, match=r"input device 'USB PnP .*\(hw:1,0\)' \(index 3 when opened\) "
                                               r"is not connected"):
        pick_device(gone, 3, previous=USB_1)
    # a part of a name is matched again as at the first open: here another device has "USB" in its name
    assert pick_device(gone, "USB", previous=USB_1).name == "Webcam C270: USB Audio (hw:3,0)"


def test_two_alike_devices_are_told_apart_by_the_exact_name_or_not_guessed():
    twins = [mic(3, "USB PnP Sound Device: Audio (hw:1,0)"), mic(4, "USB PnP Sound Device: Audio (hw:2,0)")]
    assert pick_device(twins, 3, previous=USB_1).index == 3
    assert pick_device(twins[::-1], "USB PnP Sound Device: Audio (hw:1,0)", previous=USB_1).index == 3
    moved = [mic(7, "USB PnP Sound Device: Audio (hw:4,0)"), mic(8, "USB PnP Sound Device: Audio (hw:5,0)")]
    with pytest.raises(AudioDeviceError, match="is not connected"):  # neither is surely the one that was opened
        pick_device(moved, 3, previous=USB_1)


def test_windows_renumbered_names_and_the_default_device():
    before = mic(1, "Microphone (USB PnP Sound Device)")
    after = [mic(0, "Microsoft Sound Mapper - Input", default=True), mic(2, "Microphone (2- USB PnP Sound Device)")]
    assert pick_device(after, 1, previous=before).index == 2
    assert stable_name("Microphone (2- USB PnP Sound Device)") == stable_name("Microphone (USB PnP Sound Device)")
    assert stable_name("Microphone (2- USB PnP Sound Device)") != stable_name("Line In (2- USB PnP Sound Device)")
    assert pick_device(after, None, previous=before).index == 0  # "the default" is the default now
