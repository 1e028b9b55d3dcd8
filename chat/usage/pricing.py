"""What a call costs, from the price table (ModelPrice), read on every turn.

A model with no price costs nothing, unless the operator set a price for unpriced models
(UNPRICED_MODEL_INPUT_PER_MILLION and UNPRICED_MODEL_OUTPUT_PER_MILLION). That is why a key with
a budget may use only a model with a price (chat/usage/limits.py): a budget must not be passed by
calls that cost nothing on paper.
"""

from decimal import Decimal

from django.conf import settings

from chat.usage import sql

# Costs are kept to a hundred-millionth of a dollar: a token of the cheapest model still counts.
COST_QUANTUM = Decimal("0.00000001")


def price_of(model: str) -> tuple[Decimal, Decimal] | None:
    """(input, output) USD per million tokens of `model`: its price (by longest prefix), else the
    operator's price for unpriced models, else None."""
    price = sql.price_per_million(model=model)
    if price is not None:
        return price
    if settings.UNPRICED_MODEL_INPUT_PER_MILLION is None:
        return None
    return settings.UNPRICED_MODEL_INPUT_PER_MILLION, settings.UNPRICED_MODEL_OUTPUT_PER_MILLION


def usage_cost(*, model: str, prompt_tokens: int, completion_tokens: int, asked_for: str = "") -> Decimal:
    """What a call costs in USD at the current price of `model`; 0 when it has none.

    `asked_for` is the model the turn asked for, when upstream reports another name (a dated
    snapshot, or a name of its own): the answering model's price when it has one, else the price
    of the model asked for, which the turn's budget reservation used."""
    if not prompt_tokens and not completion_tokens:
        return Decimal(0)  # a failed call: no price to read
    price = sql.price_per_million(model=model)
    if price is None:
        price = price_of(asked_for or model)
    if price is None:
        return Decimal(0)
    input_per_million, output_per_million = price
    cost = (prompt_tokens * input_per_million + completion_tokens * output_per_million) / 1_000_000
    return cost.quantize(COST_QUANTUM)
