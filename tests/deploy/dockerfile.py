"""Just enough of Docker's Dockerfile and .dockerignore rules to check ours by reading them,
since no Docker engine runs here to build the image."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    arguments: str  # the rest of the logical line, continuations joined

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD; fails on the shell form."""
        value = json.loads(self.arguments)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value

    def words(self) -> list[str]:
        return shlex.split(self.arguments)


@dataclass
class Stage:
    image: str
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.image}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs, later ones winning (the `ENV key value` form is not used)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in instruction.words():
                key, sep, value = word.partition("=")
                assert sep, f"ENV {instruction.arguments!r}: use key=value"
                values[key] = value
        return values

    def labels(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            for word in instruction.words():
                key, sep, value = word.partition("=")
                assert sep, f"LABEL {instruction.arguments!r}: use key=value"
                values[key] = value
        return values


def instructions(text: str) -> Iterator[Instruction]:
    """Logical instructions: comment lines dropped (also inside a continued instruction,
    as Docker does), backslash continuations joined."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = pending + line
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        yield Instruction(keyword.upper(), " ".join(arguments.split()))
    assert not pending, "the Dockerfile ends inside a continued line"


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"FROM {instruction.arguments!r}"
            found.append(Stage(words[0], alias))
        else:
            assert found, f"{instruction.keyword} before the first FROM"
            found[-1].instructions.append(instruction)
    return found


@dataclass(frozen=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    include: bool  # a `!pattern` line lets matching paths back in


class DockerIgnore:
    """The rules of moby/patternmatcher as BuildKit applies them to the build context:
    patterns are cleaned paths from the context root; `*` and `?` stay within one path
    element, `**` spans any number; the last rule that matches a path or one of its parent
    directories decides; `!` re-includes."""

    def __init__(self, text: str) -> None:
        self.rules: list[_Rule] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append(_Rule(pattern, _regex(pattern), include))

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = False
        for rule in self.rules:
            if any(rule.regex.fullmatch(candidate) for candidate in candidates):
                verdict = not rule.include
        return verdict

    def context(self, root: Path) -> set[str]:
        """The files (relative paths) the build context holds. A directory is not walked
        when it is excluded and no `!` rule names anything inside it."""
        files: set[str] = set()
        for directory, subdirectories, names in os.walk(root):
            relative = Path(directory).relative_to(root).as_posix()
            prefix = "" if relative == "." else relative + "/"
            subdirectories[:] = [d for d in subdirectories if not self._prunable(prefix + d)]
            files.update(p for p in (prefix + n for n in names) if not self.excluded(p))
        return files

    def _prunable(self, directory: str) -> bool:
        reopened = any(
            r.include and (r.pattern + "/").startswith(directory + "/") for r in self.rules
        )
        return self.excluded(directory) and not reopened


def _regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)
