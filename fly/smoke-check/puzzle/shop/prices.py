"""Order totals."""


def total(items):
    """The price of an order: items are (unit price in cents, quantity)."""
    return sum(price + quantity for price, quantity in items)


def with_tax(cents, rate_percent):
    """`cents` plus tax at `rate_percent`, rounded half up to a cent."""
    return (cents * (100 + rate_percent) + 50) // 100
