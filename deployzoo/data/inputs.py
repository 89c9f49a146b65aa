"""Image files a user lists: one unique output name per input, and every file checked before the work.

Every command that writes a file per input image (``predict``'s label maps, ``data to-bin``'s ``.bin``
inputs, ``eval``'s label maps) and every lookup of a file per image (``eval --dumps``) names it with
:func:`output_names`, so two inputs never share one result and the names written agree with the names read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from deployzoo.errors import BadInputError, DeployzooError


def output_names(paths: Sequence[str | Path]) -> list[str]:
    """The name of the files written for each input (``<name>.png``, ``<name>.bin``, dumps ``<name>_<k>.bin``).

    The rule: an input's file stem, when no other input has the same stem (compared case-insensitively, as
    some file systems compare names), so the usual layout is unchanged. An input whose stem another input
    has gets the fewest parent folder names (nearest first) that no other of them ends with, joined with
    ``_``: ``a/x.png``, ``b/x.png`` -> ``a_x``, ``b_x``. Where folders cannot tell them apart (``scene.jpg`` and
    ``scene.png`` side by side) the extension is added too: ``scene_jpg``, ``scene_png``. The result depends
    only on the list, so every command given the same list makes the same names.

    Raises:
        DeployzooError: naming the inputs, when one file is given twice, or when no name can be made that
            is unique (names that differ only in case in one folder; a made name that another input has).
    """
    given = [str(p) for p in paths]
    absolute = [Path(os.path.abspath(p)) for p in given]
    first_seen: dict[Path, str] = {}
    for text, path in zip(given, absolute):
        if path in first_seen:
            raise DeployzooError(f"{first_seen[path]!r} and {text!r} are the same file, given twice: each input "
                                 "gets its own result and output files, so give every file once")
        first_seen[path] = text

    groups: dict[str, list[int]] = {}
    for k, path in enumerate(absolute):
        groups.setdefault(path.stem.casefold(), []).append(k)
    names = [path.stem for path in absolute]
    for members in groups.values():
        if len(members) > 1:
            made = _tell_apart([absolute[k] for k in members])
            if made is None:
                shown = ", ".join(repr(given[k]) for k in members)
                raise DeployzooError(f"inputs {shown} share the file name {absolute[members[0]].stem!r} and no "
                                     "unique name can be made for their output files: rename or move one")
            for k, name in zip(members, made):
                names[k] = name

    owner: dict[str, int] = {}
    for k, name in enumerate(names):
        other = owner.setdefault(name.casefold(), k)
        if other != k:
            raise DeployzooError(f"inputs {given[other]!r} and {given[k]!r} would both write output files named "
                                 f"{name!r} (a name made to tell apart inputs that share a file name): rename one")
    return names


def _tell_apart(paths: list[Path]) -> list[str] | None:
    """Names for paths that share a stem: each path's shortest tail of folders + stem that no other path of the
    group ends with; where folders cannot tell two apart, the group's stems carry their extension too."""
    for with_suffix in (False, True):
        chains = [[*path.parent.relative_to(path.anchor).parts,
                   path.stem + (f"_{path.suffix[1:]}" if with_suffix and path.suffix else "")] for path in paths]
        folded = [[part.casefold() for part in chain] for chain in chains]
        names = []
        for k, chain in enumerate(folded):
            depth = next((d for d in range(1, len(chain) + 1)
                          if all(other[-d:] != chain[-d:] for j, other in enumerate(folded) if j != k)), None)
            if depth is None:
                break
            names.append("_".join(chains[k][-depth:]))
        else:
            return names
    return None


def check_image_files(paths: Sequence[str | Path], skip_bad: bool = False,
                      offers_skip_bad: bool = True) -> tuple[list[str], list[dict[str, str]]]:
    """Look at every image file through its header (exists, a file, not empty, a readable image, a JPEG not
    cut short) before any model is loaded; seconds for thousands of files.

    Returns the usable paths (as given, in order) and ``{"path", "problem"}`` of each one left out; only with
    ``skip_bad`` are bad files left out. ``offers_skip_bad``: the command has ``--skip-bad`` (the error
    then mentions it).

    Raises:
        DeployzooError: without ``skip_bad``, naming every bad file; with it, when no file is usable.
    """
    from deployzoo.data.checks import image_header_hw

    usable, bad = [], []
    for path in paths:
        try:
            image_header_hw(path)
        except BadInputError as exc:
            bad.append({"path": str(path), "problem": exc.problem})
            continue
        usable.append(str(path))
    if bad and not skip_bad:
        if len(bad) == 1:
            hint = "; --skip-bad leaves it out" if offers_skip_bad else ""
            raise BadInputError(bad[0]["path"], bad[0]["problem"] + f" (nothing was run{hint})")
        listed = "; ".join(f"{b['path']}: {b['problem']}" for b in bad[:10])
        more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
        hint = "; --skip-bad leaves them out" if offers_skip_bad else ""
        raise DeployzooError(f"{len(bad)} of {len(paths)} images are unusable (nothing was run{hint}): "
                             f"{listed}{more}")
    if not usable:
        raise DeployzooError(f"none of the {len(paths)} images is usable (the first: {bad[0]['path']}: "
                             f"{bad[0]['problem']})")
    return usable, bad
