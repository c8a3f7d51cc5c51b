import unittest

from shop.text import shout, slug


class TestText(unittest.TestCase):
    def test_slug_uses_hyphens(self):
        self.assertEqual(slug("Red  Wool Socks"), "red-wool-socks")

    def test_shout(self):
        self.assertEqual(shout("sale"), "SALE!")


if __name__ == "__main__":
    unittest.main()
