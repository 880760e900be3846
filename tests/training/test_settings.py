import json

import pytest

from training.settings import Settings, SettingsError, parse_annotation_data


def test_defaults_from_the_spec_default_argument():
    assert parse_annotation_data("{'advance_settings':{}}") == Settings()


@pytest.mark.parametrize(
    "text",
    ["{'advance_settings': {'epochs': 3, 'lr': 0.1}}", '{"advance_settings": {"epochs": 3, "lr": 0.1}}'],
)
def test_python_literal_and_json_are_both_accepted(text):
    s = parse_annotation_data(text)
    assert (s.epochs, s.lr) == (3, 0.1)


def test_integer_valued_float_and_int_for_float_are_coerced():
    s = parse_annotation_data("{'advance_settings': {'epochs': 4.0, 'lr': 1}}")
    assert s.epochs == 4 and isinstance(s.epochs, int) and s.lr == 1.0 and isinstance(s.lr, float)


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(SettingsError) as e:
        parse_annotation_data("{'advance_settings': {'epoch': 3}}")
    msg = str(e.value)
    assert "epoch" in msg
    for key in ("epochs", "batch_size", "input_size", "lr", "backbone", "seed", "num_workers", "time_budget_s"):
        assert key in msg


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"epochs": 0}, "epochs=0"),
        ({"epochs": "ten"}, "wrong type"),
        ({"epochs": "2.5"}, "wrong type"),
        ({"lr": "inf"}, "wrong type"),
        ({"epochs": True}, "wrong type"),
        ({"batch_size": 1}, "BatchNorm"),
        ({"lr": -1}, "lr=-1"),
        ({"lr": float("nan")}, "wrong type"),
        ({"backbone": "vgg16"}, "resnet18, resnet34, resnet50"),
        ({"input_size": 8}, "16 to 1024"),
        ({"strategy": "fsdp2"}, "ddp"),
        ({"augment_on": "gpu"}, "one of auto, device, workers"),
        ({"checkpoint_interval_s": -5}, "checkpoint_interval_s=-5"),
    ],
)
def test_bad_values_name_key_value_and_fix(settings, fragment):
    with pytest.raises(SettingsError) as e:
        parse_annotation_data(json.dumps({"advance_settings": settings}))
    assert fragment in str(e.value)
    assert "Valid keys: epochs, batch_size" in str(e.value)


def test_numeric_strings_from_form_fields_are_numbers():
    s = parse_annotation_data("{'advance_settings': {'epochs': '10', 'lr': ' 0.1', 'weight_decay': '1e-4'}}")
    assert (s.epochs, s.lr, s.weight_decay) == (10, 0.1, 1e-4) and isinstance(s.epochs, int)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{'advance_setting': {'epochs': 5}}", "did you mean 'advance_settings'"),
        ("{'Advance_Settings': {'epochs': 5}}", "did you mean 'advance_settings'"),
        ("{'epochs': 5}", "must go inside advance_settings"),
        ("{'advance_settings': {}, 'lr': 0.1}", "must go inside advance_settings"),
    ],
)
def test_settings_outside_advance_settings_are_an_error_not_lost(text, fragment):
    with pytest.raises(SettingsError) as e:
        parse_annotation_data(text)
    assert fragment in str(e.value)


def test_platform_fields_beside_advance_settings_are_ignored_with_a_warning(caplog):
    s = parse_annotation_data("{'advance_settings': {'epochs': 2}, 'task_id': 'abc'}")
    assert s.epochs == 2
    assert "task_id" in caplog.text and "ignored" in caplog.text


@pytest.mark.parametrize("text", ["not a dict", "[1, 2]", "{'advance_settings': [1]}", "{'advance_settings': "])
def test_malformed_annotation_data(text):
    with pytest.raises(SettingsError):
        parse_annotation_data(text)


def test_small_stem_below_64_px():
    assert Settings(input_size=32).small_stem and not Settings(input_size=64).small_stem
    assert not Settings(input_size=32, stem="imagenet").small_stem and Settings(input_size=96, stem="cifar").small_stem
