"""Prompts as annotators type them: "bus=red bus, person".

`class=prompt` sends `prompt` to SAM3 and labels what it finds `class`, so the labels can be
evaluated against ground truth named by class ("bus") while the prompt says what to look for
("red bus"); a bare prompt is its own class.  Several prompts may share a class ("bus=red bus,
bus=school bus": both phrasings find buses), since that is how a class is described more
completely; the same prompt twice is refused, as it would only find the same instances twice.
Every path that runs prompts (the operator form, `SegmentRun`, the model) parses them here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SEPARATOR = ","
CLASS_MARK = "="


def split_list(text: str | None) -> list[str]:
    """ "car, bus, person" as ["car", "bus", "person"]: a comma-separated string is what an
    annotator enters fastest in the App, and a prompt is a noun phrase, which needs no comma."""
    return [p.strip() for p in (text or "").split(SEPARATOR) if p.strip()]


@dataclass(frozen=True)
class ClassPrompts:
    """The prompts of a run, in order, and the class each labels its instances with."""

    texts: tuple[str, ...]  # what SAM3 is asked
    class_of: dict[str, str]  # prompt text -> class

    @property
    def classes(self) -> list[str]:
        """The classes, each once, in the order first given."""
        return list(dict.fromkeys(self.class_of[t] for t in self.texts))

    def text_for(self, label: str | None) -> str | None:
        """The prompt text a label names: a text itself, or the first text of a class (a ground
        truth box labelled "bus" refines "red bus" when the run has "bus=red bus"); else None."""
        if label in self.class_of:
            return label
        return next((t for t in self.texts if self.class_of[t] == label), None)


def parse_prompts(entries: str | Iterable[str]) -> ClassPrompts:
    """ "class=prompt" or "prompt" entries, as a comma-separated string or a list."""
    texts: list[str] = []
    class_of: dict[str, str] = {}
    for entry in split_list(entries) if isinstance(entries, str) else entries:
        name, mark, text = (part.strip() for part in entry.partition(CLASS_MARK))
        if not mark:
            name = text = name
        if CLASS_MARK in text:
            raise ValueError(f"prompt {entry!r}: give one {CLASS_MARK!r}, as in 'bus=red bus'")
        if not name or not text:
            raise ValueError(f"prompt {entry!r}: both the class and the prompt are needed, as in 'bus=red bus'")
        if text in class_of:
            raise ValueError(f"prompt {text!r} is given twice: it would find the same instances twice")
        texts.append(text)
        class_of[text] = name
    if not texts:
        raise ValueError("give at least one prompt")
    return ClassPrompts(tuple(texts), class_of)
