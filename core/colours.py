"""Token probability -> colour: the terminal's `--show-probs` and the playground page use one scale."""
from __future__ import annotations

# Cold to warm, as (lowest probability, colour name); click and CSS both know these names.
PROBABILITY_COLOURS = ((0.85, "red"), (0.6, "yellow"), (0.3, "green"), (0.1, "cyan"), (0.0, "blue"))


def probability_colour(probability: float) -> str:
    """The colour of a token drawn with this probability under the model."""
    return next(colour for lowest, colour in PROBABILITY_COLOURS if probability >= lowest)
