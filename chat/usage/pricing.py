"""What a call costs, from the price table (ModelPrice), read on every turn."""

from decimal import Decimal

from chat.usage import sql

# Costs are kept to a hundred-millionth of a dollar: a token of the cheapest model still counts.
COST_QUANTUM = Decimal("0.00000001")


def usage_cost(*, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """What a call costs in USD at the model's current price; 0 when no price matches."""
    if not prompt_tokens and not completion_tokens:
        return Decimal(0)  # a failed call: no price to read
    price = sql.price_per_million(model=model)
    if price is None:
        return Decimal(0)
    input_per_million, output_per_million = price
    cost = (prompt_tokens * input_per_million + completion_tokens * output_per_million) / 1_000_000
    return cost.quantize(COST_QUANTUM)
