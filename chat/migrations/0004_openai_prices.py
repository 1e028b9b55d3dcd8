"""Known OpenAI list prices (USD per million tokens, standard tier), as shipped data.

Operators change them in the admin; a later change of OpenAI's prices is a change there, not a
new migration. Prices apply by longest model-name prefix (gpt-4o-mini before gpt-4o before gpt-4).
"""

from decimal import Decimal

from django.db import migrations

OPENAI_PRICES = {
    "gpt-5": ("1.25", "10.00"),
    "gpt-5-mini": ("0.25", "2.00"),
    "gpt-5-nano": ("0.05", "0.40"),
    "gpt-4.1": ("2.00", "8.00"),
    "gpt-4.1-mini": ("0.40", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.40"),
    "gpt-4o": ("2.50", "10.00"),
    "gpt-4o-mini": ("0.15", "0.60"),
    "gpt-4-turbo": ("10.00", "30.00"),
    "gpt-4": ("30.00", "60.00"),
    "gpt-3.5-turbo": ("0.50", "1.50"),
    "o1": ("15.00", "60.00"),
    "o1-mini": ("1.10", "4.40"),
    "o3": ("2.00", "8.00"),
    "o3-mini": ("1.10", "4.40"),
    "o4-mini": ("1.10", "4.40"),
}


def add_prices(apps, schema_editor):
    ModelPrice = apps.get_model("chat", "ModelPrice")
    for prefix, (input_price, output_price) in OPENAI_PRICES.items():
        ModelPrice.objects.get_or_create(
            model_prefix=prefix,
            defaults={"input_per_million": Decimal(input_price), "output_per_million": Decimal(output_price)},
        )


def remove_prices(apps, schema_editor):
    apps.get_model("chat", "ModelPrice").objects.filter(model_prefix__in=OPENAI_PRICES).delete()


class Migration(migrations.Migration):
    dependencies = [("chat", "0003_usage_rollups_and_prices")]

    operations = [migrations.RunPython(add_prices, remove_prices)]
