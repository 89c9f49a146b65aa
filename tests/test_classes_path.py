"""--classes given a path that is not a readable file: an error naming it, not one class called 'x.txt'."""
from __future__ import annotations

import pytest

from deployzoo.errors import BadInputError
from deployzoo.fine_tuned import parse_classes


@pytest.mark.parametrize("value", ["missing.txt", "lists/mine", "classes.NAMES"])
def test_a_missing_class_list_file_is_named(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError, match="class list file not found") as err:
        parse_classes(value)
    assert err.value.path == value


def test_a_folder_is_not_a_class_list(tmp_path):
    with pytest.raises(BadInputError, match="is a folder"):
        parse_classes(str(tmp_path))


def test_names_and_real_files_still_parse(tmp_path):
    listed = tmp_path / "classes.txt"
    listed.write_text("boat\n\ncar\n")
    assert parse_classes(str(listed)) == ("boat", "car")
    assert parse_classes("boat") == ("boat",)
    assert parse_classes("boat, car.txt") == ("boat", "car.txt")  # a comma list is names, whatever they end in
