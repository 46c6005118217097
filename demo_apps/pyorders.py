#!/usr/bin/env python3
"""pyorders: a small Python program that knows nothing of usdtkit, for the usdtkit.instrument examples.

    python -m usdtkit.instrument demo_apps/pyorders.py [N]

It handles an order every 0.1 s, forever or N times: ``handle`` (10 ms of "work") builds an ``Order``
and prices its items (``Order.total`` calls ``price`` once per item, 1 to 5 items).
"""
import sys
import time


def price(item):
    return 100 + item


class Order:
    def __init__(self, items):
        self.items = items

    def total(self):
        total = 0
        for item in self.items:
            total += price(item)
        return total


def handle(number):
    order = Order(range(number % 5 + 1))
    time.sleep(0.01)
    return order.total()


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else -1
    number = 0
    while number != count:
        handle(number)
        number += 1
        time.sleep(0.09)


if __name__ == "__main__":
    main()
