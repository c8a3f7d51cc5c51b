import unittest

from shop.dates import days_in_february, is_leap


class TestDates(unittest.TestCase):
    def test_centuries_are_not_leap_unless_divisible_by_400(self):
        self.assertFalse(is_leap(1900))
        self.assertTrue(is_leap(2000))

    def test_ordinary_years(self):
        self.assertTrue(is_leap(2024))
        self.assertFalse(is_leap(2023))
        self.assertEqual(days_in_february(2024), 29)


if __name__ == "__main__":
    unittest.main()
