"""How fast the BPE tokenizer trains and encodes, and how well it compresses.

Trains a byte-level BPE on a text file, encodes the whole file with it, checks that
decoding gives the text back, and prints the timings, the token count and the
compression ratio (characters per token), with the char and byte tokenizers for
comparison. Timings are for one Python process, i.e. one core; pin it for steadier
numbers:

    taskset -c 0 python benchmarks/tokenizer_speed.py --vocab-size 4096

Targets on Tiny Shakespeare (1.1 MB) with 4,096 tokens: training under 60 s,
encoding under 10 s.
"""
from __future__ import annotations

import argparse
import time

from gen.core.data import corpus_path, read_text
from gen.plugins.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer



def timed(function, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shakespeare",
                        help="UTF-8 text file to train and encode, or 'shakespeare' (downloaded once)")
    parser.add_argument("--vocab-size", type=int, default=4096,
                        help="BPE vocabulary size to train to (default: 4096)")
    args = parser.parse_args()

    text = read_text(corpus_path(args.data))
    print(f"data: {args.data} ({len(text):,} characters, "
          f"{len(text.encode('utf-8', 'surrogatepass')):,} bytes)")

    bpe, train_seconds = timed(BPETokenizer.train, text, vocab_size=args.vocab_size)
    print(f"{f'bpe train ({bpe.vocab_size:,} tokens)':<28}{train_seconds:8.2f} s")

    # A fresh tokenizer, so the timing includes filling the chunk cache from empty.
    bpe = BPETokenizer.from_dict(bpe.to_dict())
    ids, encode_seconds = timed(bpe.encode, text)
    print(f"{'bpe encode (whole file)':<28}{encode_seconds:8.2f} s")

    decoded, decode_seconds = timed(bpe.decode, ids)
    if decoded != text:
        raise SystemExit("error: decode(encode(text)) differs from the text")
    print(f"{'bpe decode (whole file)':<28}{decode_seconds:8.2f} s  (round trip exact)")

    print()
    print(f"{'tokenizer':<12}{'vocab':>8}{'tokens':>12}{'chars/token':>14}")
    rows = [("bpe", bpe.vocab_size, len(ids))]
    try:
        char = CharTokenizer.train(text)
        rows.append(("char", char.vocab_size, len(char.encode(text))))
    except Exception as error:  # e.g. an empty file; the BPE numbers still stand
        print(f"(char tokenizer skipped: {error})")
    rows.append(("byte", ByteTokenizer.vocab_size, len(ByteTokenizer().encode(text))))
    for name, vocab_size, token_count in rows:
        ratio = len(text) / token_count if token_count else float("nan")
        print(f"{name:<12}{vocab_size:>8,}{token_count:>12,}{ratio:>14.3f}")


if __name__ == "__main__":
    main()
