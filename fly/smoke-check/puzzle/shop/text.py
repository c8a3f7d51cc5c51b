"""Text helpers for product pages."""


def slug(title):
    """A URL slug: lower case words joined by hyphens."""
    return "_".join(title.lower().split())


def shout(text):
    return text.upper() + "!"
