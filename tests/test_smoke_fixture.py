import json
from pathlib import Path


def test_trained_model_folder(trained_model):
    folder = Path(trained_model["model_path"])
    assert folder.is_dir()
    assert (folder / f"{trained_model['gened_model_name']}.mar").is_file()
    assert json.loads((folder / "index_to_name.json").read_text()) == {"0": "checkers", "1": "circles", "2": "stripes"}
