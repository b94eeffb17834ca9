"""Class labels: one per line (Caffe's synset_words.txt style), and how they are shown to people."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["display_label", "load_labels"]

_WNID = re.compile(r"^n\d{8}\s+")


def load_labels(path: str | None, count: int) -> list[str]:
    """Labels one per line (synset_words.txt style); missing file -> class indices as labels."""
    if path is None:
        return [str(i) for i in range(count)]
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read labels file {path}: {exc.strerror}") from None
    labels = [line.strip() for line in lines if line.strip()]
    if len(labels) != count:
        raise ValueError(f"labels file {path} has {len(labels)} labels, the model outputs {count} classes")
    return labels


def display_label(line: str) -> str:
    """A labels-file line as shown to people: synset_words.txt's WordNet id stripped
    ("n02123045 tabby, tabby cat" -> "tabby, tabby cat"); other lines unchanged."""
    return _WNID.sub("", line.strip(), count=1)
