"""Seller-noise augmentation: promotional phrases, platform tags and bundle text in titles.

Sellers decorate titles with wording that says nothing about which product it is; a matcher must
ignore it. Injecting such wording into training pairs keeps their label (the product is unchanged)
and teaches exactly that. The phrases carry no model codes, quantities, colours or pack sizes, so
they cannot change the evidence either.
"""

from __future__ import annotations

import random

PROMOTIONS = ("HOT DEAL", "Free Shipping", "BEST PRICE", "Limited Time Offer", "Top Seller", "SALE",
              "Brand New", "Fast Delivery", "Clearance", "Special Offer", "In Stock Now", "Free Returns",
              "Lowest Price Guaranteed", "NEW ARRIVAL", "Exclusive Deal")
PLATFORM_TAGS = ("[Amazon's Choice]", "(eBay Top Rated)", "- Walmart.com", "@ Best Buy", "Official Store",
                 "Prime Eligible", "Fulfilled by Amazon", "Ships from USA", "[Marketplace Seller]",
                 "Authorized Dealer")
BUNDLES = ("with Carrying Case", "+ Free Gift", "Bundle with Accessories", "with Cleaning Kit",
           "Gift Box Included", "+ Screen Protector", "with Starter Kit", "plus Travel Pouch")
_KINDS = (PROMOTIONS, PLATFORM_TAGS, BUNDLES)
_TITLE_FIELDS = ("title", "name")


def add_seller_noise(record: dict[str, str], rng: random.Random, max_phrases: int = 2) -> dict[str, str]:
    """A copy of `record` with 1..max_phrases noise phrases before or after its title."""
    field = next((k for k in record if k.lower() in _TITLE_FIELDS and record[k].strip()), None)
    if field is None:
        return dict(record)
    title = record[field]
    for _ in range(rng.randint(1, max_phrases)):
        kind = rng.choice(_KINDS)
        phrase = rng.choice([p for p in kind if p not in title] or kind)
        # bundles read as a tail; promotions and tags go either side
        title = f"{title} {phrase}" if kind is BUNDLES or rng.random() < 0.5 else f"{phrase} {title}"
    return {**record, field: title}


def noisy_pair(a: dict[str, str], b: dict[str, str], rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
    """Noise on one side or both: matches whose titles diverge only by seller wording."""
    side = rng.choice(("a", "b", "both"))
    return (add_seller_noise(a, rng) if side != "b" else a, add_seller_noise(b, rng) if side != "a" else b)
