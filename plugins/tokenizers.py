"""Built-in tokenizers (pure Python, no torch).

Three tokenizers, all following the `gen.core.Tokenizer` protocol:

- `char`: one token per character of the training text (the classic char-rnn setup).
- `byte`: one token per UTF-8 byte; 256 ids, handles any text, nothing to learn.
- `bpe`:  byte-level byte-pair encoding in the GPT-2 style, trained on the corpus.

Every tokenizer serialises to a small JSON-friendly dict (`to_dict`) and is rebuilt
from it by `from_dict`, which checks the dict and raises `GenError` when it is
malformed: a tokenizer state usually comes from a file someone else wrote.

The byte-level tokenizers round-trip every Python `str`, including lone surrogates
such as "\\ud800" (which `str.encode("utf-8")` refuses): text is encoded with the
"surrogatepass" error handler and decoded with it too. Only bytes that are not valid
UTF-8 at all, such as a character cut in half by a model that stopped mid-sequence,
are decoded with replacement characters.
"""
from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from typing import Sequence

from gen.core import GenError, hookimpl


@hookimpl
def register_tokenizers(register):
    register("char", CharTokenizer)
    register("byte", ByteTokenizer)
    register("bpe", BPETokenizer)


# ---------------------------------------------------------------------------
# Helpers shared by the tokenizers
# ---------------------------------------------------------------------------


def _utf8_bytes(text: str) -> bytes:
    """The UTF-8 bytes of `text`; lone surrogates are kept (as their 3-byte form)."""
    return text.encode("utf-8", "surrogatepass")


def _utf8_text(data: bytes) -> str:
    """The inverse of `_utf8_bytes`, with replacement characters for invalid bytes.

    Invalid bytes are normal while generating: a multi-byte character may be split
    across tokens, and a caller decoding a prefix sees its first half. Falling back to
    "replace" only then keeps lone surrogates intact in every other case.
    """
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


def _check_ids(ids: Sequence[int], vocab_size: int) -> None:
    """Raise GenError if any id is outside 0..vocab_size-1.

    Without this check a negative id would silently index from the end of a table.
    `min`/`max` also accept numpy arrays, which the generation loop may pass.
    """
    if len(ids) == 0:
        return
    lowest, highest = min(ids), max(ids)
    if lowest < 0 or highest >= vocab_size:
        bad = lowest if lowest < 0 else highest
        raise GenError(
            f"token id {int(bad)} is outside the tokenizer's vocabulary (ids 0 to {vocab_size - 1})"
        )


def _check_state(tokenizer_name: str, state, expected_keys: Sequence[str]) -> None:
    """A state must be a dict with exactly the expected keys (catches a state of another kind)."""
    if not isinstance(state, dict):
        raise GenError(
            f"the stored {tokenizer_name} tokenizer state must be a JSON object, "
            f"not {type(state).__name__}"
        )
    missing = [key for key in expected_keys if key not in state]
    unexpected = sorted(key for key in state if key not in expected_keys)
    if missing or unexpected:
        problems = []
        if missing:
            problems.append("missing " + ", ".join(repr(key) for key in missing))
        if unexpected:
            problems.append("unexpected " + ", ".join(repr(key) for key in unexpected))
        expected = ", ".join(repr(key) for key in expected_keys) or "no keys"
        raise GenError(
            f"the stored {tokenizer_name} tokenizer state is malformed ({'; '.join(problems)}); "
            f"expected {expected}"
        )


def _is_int(value) -> bool:
    # bool is a subclass of int, but True is never a sensible token id or size.
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------
# char
# ---------------------------------------------------------------------------


class CharTokenizer:
    """One token per character; the vocabulary is the distinct characters of the training text.

    Ids follow the sorted order of the characters, so the same corpus always gives the
    same ids. Text containing a character the corpus did not have cannot be encoded.
    """

    def __init__(self, characters: str):
        self.characters = characters
        self.vocab_size = len(characters)
        self._id_of = {character: index for index, character in enumerate(characters)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        if not text:
            raise GenError(
                "the corpus is empty; the char tokenizer needs some text to take its "
                "characters from"
            )
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        try:
            return [self._id_of[character] for character in text]
        except KeyError:
            pass
        # Only on failure: find the first unknown character so the message can point at it.
        position = next(i for i, character in enumerate(text) if character not in self._id_of)
        raise GenError(
            f"character {text[position]!r} at position {position} is not in the tokenizer's "
            f"vocabulary of {self.vocab_size} characters"
        )

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size)
        characters = self.characters
        return "".join([characters[i] for i in ids])

    def to_dict(self) -> dict:
        return {"characters": self.characters}

    @classmethod
    def from_dict(cls, state: dict) -> "CharTokenizer":
        _check_state("char", state, ["characters"])
        characters = state["characters"]
        if not isinstance(characters, str) or not characters:
            raise GenError(
                "the stored char tokenizer's 'characters' must be a non-empty string "
                "(the vocabulary, one character per id)"
            )
        if len(set(characters)) != len(characters):
            repeated = next(c for c in characters if characters.count(c) > 1)
            raise GenError(
                f"the stored char tokenizer lists the character {repeated!r} more than once"
            )
        return cls(characters)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------
# byte
# ---------------------------------------------------------------------------


class ByteTokenizer:
    """One token per UTF-8 byte: 256 ids, encodes any text, nothing to train.

    A character outside ASCII takes two to four tokens; `gen.core.TextStream`
    reassembles them while streaming.
    """

    vocab_size = 256

    @classmethod
    def train(cls, text: str = "") -> "ByteTokenizer":
        """The vocabulary is fixed, so the text is accepted and not used."""
        return cls()

    def encode(self, text: str) -> list[int]:
        return list(_utf8_bytes(text))

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size)
        # bytes(numpy_array) would copy the array's raw memory; go through int() instead.
        return _utf8_text(bytes([int(i) for i in ids]))

    def to_dict(self) -> dict:
        return {}

    @classmethod
    def from_dict(cls, state: dict) -> "ByteTokenizer":
        _check_state("byte", state, [])
        return cls()

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


# ---------------------------------------------------------------------------
# bpe
# ---------------------------------------------------------------------------

# Text is first cut into chunks, and merges never cross a chunk boundary: a token can
# be " the" or "ing" but never "e t". This is GPT-2's pattern written for the stdlib
# `re` module, which has no \p{L} / \p{N}: a letter is a word character that is not a
# digit or the underscore ([^\W\d_]), a number is \d, and "other" is anything that is
# neither whitespace nor a letter or digit (the underscore included).
# Every character is a letter, a digit, whitespace or other, so the chunks always
# cover the whole text, which is what makes decode(encode(text)) == text.
PRE_SPLIT_PATTERN = (
    r"'(?:[sdmt]|ll|ve|re)"  # English contractions: 's 'd 'm 't 'll 've 're
    r"| ?[^\W\d_]+"  # a word, with the space before it
    r"| ?\d+"  # a number, with the space before it
    r"| ?(?:[^\s\w]|_)+"  # punctuation and symbols, with the space before them
    r"|\s+(?!\S)"  # a run of whitespace, leaving its last space to start the next word
    r"|\s+"  # trailing whitespace
)
PRE_SPLIT = re.compile(PRE_SPLIT_PATTERN)

BYTE_TOKENS = 256
DEFAULT_BPE_VOCAB_SIZE = 512
# Far beyond any sensible vocabulary (GPT-4o has about 200,000 tokens); a larger
# request is almost certainly a typo and would only waste time and memory.
MAX_BPE_VOCAB_SIZE = 1_000_000
# The longest token a stored tokenizer may describe. Trained tokens are words and runs
# of whitespace, a few dozen bytes; this bound only stops a hostile file.
MAX_TOKEN_BYTES = 1 << 16
# And the bytes of all tokens together, which the tokenizer holds for decoding: a real
# vocabulary of 200,000 tokens holds a few MB; 64,000 tokens of 64 KB each would be 4 GB.
MAX_TOTAL_TOKEN_BYTES = 1 << 26
# The encode cache maps a chunk to its ids. Natural text repeats a small set of
# chunks, so the cache makes encoding a dictionary lookup per word; the bound keeps
# memory in check on text that never repeats (it is simply emptied when full).
ENCODE_CACHE_LIMIT = 100_000


def _merge_pair(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """`word` with every occurrence of `pair` replaced by `new_id`, left to right."""
    first, second = pair
    merged = []
    i, length = 0, len(word)
    while i < length:
        if i + 1 < length and word[i] == first and word[i + 1] == second:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) trained on the corpus to a chosen vocabulary size.

    Ids 0-255 are the bytes; merge number i joins two existing tokens into id 256 + i.
    Any text can be encoded, and decode(encode(text)) == text for every str.
    """

    def __init__(self, merges: Sequence[tuple[int, int]]):
        self.merges = [tuple(pair) for pair in merges]
        self.vocab_size = BYTE_TOKENS + len(self.merges)
        # The rank of a pair is its merge number: lower ranks were learned first and are
        # applied first, which is what makes encoding reproduce the training merges.
        self._rank_of = {pair: rank for rank, pair in enumerate(self.merges)}
        self._token_bytes = [bytes([b]) for b in range(BYTE_TOKENS)]
        for first, second in self.merges:
            self._token_bytes.append(self._token_bytes[first] + self._token_bytes[second])
        self._cache: dict[str, list[int]] = {}

    # -- training ----------------------------------------------------------

    @classmethod
    def train(
        cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB_SIZE
    ) -> "BPETokenizer":
        """Learn merges from `text` until the vocabulary has `vocab_size` tokens.

        Training stops early, with a smaller vocabulary, only if no two adjacent tokens
        are left to merge (every chunk of the text is already one token). On equal
        counts the pair with the smaller ids wins, so training is deterministic.

        Each merge costs time in proportion to the total length of the distinct words
        that contain the merged pair. That is small for text with spaces between
        words (about a second for 4,096 tokens on Shakespeare) but grows with very long
        chunks, such as unsegmented Chinese or Japanese paragraphs.
        """
        if not _is_int(vocab_size) or not BYTE_TOKENS <= vocab_size <= MAX_BPE_VOCAB_SIZE:
            raise GenError(
                f"the bpe vocab_size must be a whole number from {BYTE_TOKENS} (the bytes "
                f"alone) to {MAX_BPE_VOCAB_SIZE:,}; got {vocab_size!r}"
            )

        # BPE only looks inside chunks, so the corpus reduces to its distinct chunks
        # ("words") and how often each occurs: about 25,000 words for Shakespeare's 1 MB.
        word_counts = Counter(PRE_SPLIT.findall(text))
        words = [list(_utf8_bytes(word)) for word in word_counts]
        counts = list(word_counts.values())

        # How often each adjacent pair occurs in the corpus, and which words contain it.
        # The second index is what makes training fast: a merge only revisits the words
        # that contain the merged pair instead of the whole corpus.
        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        words_with_pair: dict[tuple[int, int], set[int]] = defaultdict(set)
        for index, (word, count) in enumerate(zip(words, counts)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
                words_with_pair[pair].add(index)

        # A max-heap of (-count, pair). Counts change as merges happen; rather than
        # update entries in place, a changed pair is pushed again with its new count,
        # and a popped entry whose count is out of date is skipped.
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)

        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - BYTE_TOKENS and heap:
            negative_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair) != -negative_count:
                continue  # a stale entry: this pair's count has changed since it was pushed
            new_id = BYTE_TOKENS + len(merges)
            merges.append(pair)

            changed_pairs = set()
            for index in words_with_pair[pair]:
                old_word, count = words[index], counts[index]
                new_word = _merge_pair(old_word, pair, new_id)
                words[index] = new_word
                # Take the old word's pairs out of the counts and put the new word's in.
                # Words are short, so redoing the whole word is simpler than patching
                # the neighbours of each merge site, and just as fast in practice.
                old_pairs = list(zip(old_word, old_word[1:]))
                new_pairs = list(zip(new_word, new_word[1:]))
                for old_pair in old_pairs:
                    pair_counts[old_pair] -= count
                for new_pair in new_pairs:
                    pair_counts[new_pair] += count
                changed_pairs.update(old_pairs)
                changed_pairs.update(new_pairs)
                old_set, new_set = set(old_pairs), set(new_pairs)
                for gone in old_set - new_set:
                    if gone != pair:  # the merged pair's set is being iterated; dropped below
                        words_with_pair[gone].discard(index)
                for added in new_set - old_set:
                    words_with_pair[added].add(index)

            for changed in changed_pairs:
                count = pair_counts[changed]
                if count > 0:
                    heapq.heappush(heap, (-count, changed))
                else:  # the pair no longer occurs anywhere (the merged pair among them)
                    del pair_counts[changed]
                    words_with_pair.pop(changed, None)

        return cls(merges)

    # -- encoding and decoding --------------------------------------------

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in PRE_SPLIT.findall(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = self._encode_chunk(_utf8_bytes(chunk))
                if len(cache) >= ENCODE_CACHE_LIMIT:
                    cache.clear()
                cache[chunk] = chunk_ids
            ids.extend(chunk_ids)
        return ids

    def _encode_chunk(self, data: bytes) -> list[int]:
        """Apply the merges to one chunk's bytes, lowest rank first.

        This gives the same result as the textbook loop "find the adjacent pair with the
        lowest rank, merge all its occurrences left to right, repeat", but in
        O(n log n) rather than O(n^2): a chunk can be long (a paragraph of Chinese has
        no spaces to split at). Tokens live in an array with `following`/`preceding`
        links so that a merge deletes a token in O(1), and a heap holds candidate
        merges as (rank, position); the lowest rank, then the leftmost position, comes
        out first. A merge creates only pairs of higher rank (a pair involving a new
        token was learned after that token), so ranks come out in increasing order.
        """
        tokens: list[int | None] = list(data)
        length = len(tokens)
        if length < 2:
            return tokens
        rank_of = self._rank_of
        following = list(range(1, length + 1))  # `length` marks the end
        preceding = list(range(-1, length - 1))  # -1 marks the start
        candidates = []
        for position in range(length - 1):
            rank = rank_of.get((tokens[position], tokens[position + 1]))
            if rank is not None:
                candidates.append((rank, position))
        heapq.heapify(candidates)

        while candidates:
            rank, position = heapq.heappop(candidates)
            right = following[position]
            # The candidate is stale if its left token was merged into its neighbour, or
            # its pair has changed since it was pushed (ranks are unique per pair).
            if tokens[position] is None or right == length:
                continue
            if rank_of.get((tokens[position], tokens[right])) != rank:
                continue
            tokens[position] = BYTE_TOKENS + rank
            tokens[right] = None
            after = following[right]
            following[position] = after
            if after != length:
                preceding[after] = position
            # The merged token forms new pairs with its neighbours on both sides.
            before = preceding[position]
            if before != -1:
                new_rank = rank_of.get((tokens[before], tokens[position]))
                if new_rank is not None:
                    heapq.heappush(candidates, (new_rank, before))
            if after != length:
                new_rank = rank_of.get((tokens[position], tokens[after]))
                if new_rank is not None:
                    heapq.heappush(candidates, (new_rank, position))
        return [token for token in tokens if token is not None]

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size)
        token_bytes = self._token_bytes
        return _utf8_text(b"".join([token_bytes[i] for i in ids]))

    def token_text(self, token_id: int) -> str:
        """What one token stands for, for inspecting a vocabulary (may be part of a character)."""
        _check_ids([token_id], self.vocab_size)
        return _utf8_text(self._token_bytes[token_id])

    # -- serialisation ----------------------------------------------------

    def to_dict(self) -> dict:
        # The merges alone define the tokenizer: the ids are implied by their order.
        return {"merges": [[first, second] for first, second in self.merges]}

    @classmethod
    def from_dict(cls, state: dict) -> "BPETokenizer":
        _check_state("bpe", state, ["merges"])
        merges = state["merges"]
        if not isinstance(merges, list):
            raise GenError(
                "the stored bpe tokenizer's 'merges' must be a list of [id, id] pairs, "
                f"not {type(merges).__name__}"
            )
        if len(merges) > MAX_BPE_VOCAB_SIZE - BYTE_TOKENS:
            raise GenError(
                f"the stored bpe tokenizer has {len(merges):,} merges, more than the "
                f"{MAX_BPE_VOCAB_SIZE - BYTE_TOKENS:,} allowed"
            )
        seen = set()
        for number, pair in enumerate(merges):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(map(_is_int, pair))):
                raise GenError(
                    f"merge {number} of the stored bpe tokenizer is {pair!r}; each merge "
                    "must be a pair of token ids such as [101, 32]"
                )
            # Merge `number` creates id 256 + number, so it may only join tokens before it.
            if not all(0 <= token < BYTE_TOKENS + number for token in pair):
                raise GenError(
                    f"merge {number} of the stored bpe tokenizer is {pair!r}; it may only join "
                    f"ids 0 to {BYTE_TOKENS + number - 1} (the bytes and the merges before it)"
                )
            if tuple(pair) in seen:
                raise GenError(
                    f"merge {number} of the stored bpe tokenizer repeats the pair {pair!r}"
                )
            seen.add(tuple(pair))
        # A merge joins two tokens, so lengths can double at each one: 41 merges of a
        # token with itself would describe a 2 TB token. Refuse before building any.
        lengths = [1] * BYTE_TOKENS
        total = BYTE_TOKENS
        for number, (left, right) in enumerate(merges):
            lengths.append(lengths[left] + lengths[right])
            total += lengths[-1]
            if lengths[-1] > MAX_TOKEN_BYTES:
                raise GenError(
                    f"merge {number} of the stored bpe tokenizer makes a token of {lengths[-1]:,} bytes, "
                    f"more than the {MAX_TOKEN_BYTES:,} allowed; the tokenizer is damaged or hostile"
                )
            if total > MAX_TOTAL_TOKEN_BYTES:
                raise GenError(
                    f"the stored bpe tokenizer's tokens reach {total:,} bytes in all by merge {number}, more "
                    f"than the {MAX_TOTAL_TOKEN_BYTES:,} allowed; the tokenizer is damaged or hostile"
                )
        return cls(merges)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"
