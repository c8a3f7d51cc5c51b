import unittest

from shop.prices import total, with_tax


class TestPrices(unittest.TestCase):
    def test_total_multiplies_price_by_quantity(self):
        self.assertEqual(total([(250, 2), (100, 3)]), 800)

    def test_empty_order(self):
        self.assertEqual(total([]), 0)

    def test_tax(self):
        self.assertEqual(with_tax(1000, 20), 1200)


if __name__ == "__main__":
    unittest.main()
