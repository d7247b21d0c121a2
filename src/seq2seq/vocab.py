"""Vocabulary: the top-K words by frequency, plus four specials; everything else is <unk>."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from seq2seq.errors import DataError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class Vocabulary:
    """Maps tokens to ids and back. Ids 0-3 are <pad>, <unk>, <s>, </s>."""

    def __init__(self, words: Iterable[str]):
        self.words = list(words)
        if tuple(self.words[:4]) != SPECIALS:
            raise DataError(f"a vocabulary must start with {', '.join(SPECIALS)}")
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise DataError("a vocabulary lists the same word twice")

    @classmethod
    def build(cls, counts: Counter, max_words: int) -> Vocabulary:
        """The `max_words` most frequent words (ties broken alphabetically) after the specials."""
        ranked = sorted((w for w in counts if w not in SPECIALS), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *ranked[:max_words]])

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get = self.index.get
        return [get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of `ids`, stopping at the first </s> and skipping <pad> and <s>."""
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                out.append(self.words[i])
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text("".join(w + "\n" for w in self.words), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            return cls(Path(path).read_text(encoding="utf-8").split("\n")[:-1])
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read vocabulary: {err}") from None
