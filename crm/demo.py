"""Demo data: a realistic landing folder (docs/rules.md §1) plus its ``shops.toml`` (§3, §7).

``generate()`` writes ``out_dir/landing/<entity>/<YYYY-MM-DDTHHMM>_dropNNN[_tag].<ext>`` for the six
entities and ``out_dir/shops.toml`` for three shops (s1 Asia/Shanghai, s2 America/New_York, s3
Europe/Berlin). Everything is vectorised with numpy + polars (loops only over shops, chunks, files
and a handful of combinations), deterministic for a given ``seed`` and ``anchor``.

The demo (``bench=False``) mixes the formats docs/rules.md §1 allows and plants the situations of the
seed articles:

* orders: an initial Parquet snapshot (tz-aware UTC), a CSV drop of updates (ISO strings with the
  shop's offset), an NDJSON drop of the last hours (naive shop-local strings; rows whose local time
  would be ambiguous in a DST fall-back hour go to a CSV drop with offsets instead), a *stale* CSV
  drop repeating orders with older ``updated_at`` and older values, a CSV drop of bad rows and one
  corrupt Parquet file (random bytes);
* customers with several unpaid orders on one local day, wrong first orders re-placed and paid,
  distribution-platform orders still unpaid in the drop (and older ones whose payment only shows
  up in a later drop), opted-out customers and suppressions by id / phone / email on every channel,
  second-purchase and repeat customers with unpaid orders, reviews hiding a complaint in praise.

``bench=True`` writes only Parquet, a few large files per entity (≤ 1M orders per file, generated
chunk by chunk), without bad rows or special drops.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

__all__ = ["DemoSummary", "generate", "ENTITY_COLUMNS", "SHOP_TIMEZONES"]

MIN = 60
HOUR = 3600
DAY = 86400
NA = np.int64(2**62)  # "no timestamp" sentinel inside the int64 (epoch seconds) arrays
MAX_ORDERS_PER_FILE = 1_000_000

ENTITY_COLUMNS: dict[str, list[str]] = {
    "orders": ["order_id", "shop_id", "customer_id", "platform", "created_at", "paid_at",
               "shipped_at", "delivered_at", "closed_at", "refunded_at", "total_amount",
               "currency", "receiver_city", "updated_at"],
    "order_items": ["order_id", "line_no", "product_id", "quantity", "unit_price"],
    "products": ["product_id", "shop_id", "title", "category", "style_tags", "followup_days"],
    "customers": ["customer_id", "shop_id", "name", "phone", "email", "city", "member_level",
                  "registered_at", "opt_out", "updated_at"],
    "reviews": ["order_id", "created_at", "rating", "text"],
    "suppressions": ["customer_id", "phone", "email", "channel", "created_at", "reason"],
}
ENTITIES = tuple(ENTITY_COLUMNS)
_TS_COLS = {
    "orders": ["created_at", "paid_at", "shipped_at", "delivered_at", "closed_at", "refunded_at",
               "updated_at"],
    "customers": ["registered_at", "updated_at"],
    "reviews": ["created_at"],
    "suppressions": ["created_at"],
}
_DROP_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{4}_drop\d{3}")

# local-hour weights of order creation (more orders 10:00-23:00 local)
_HOUR_W = np.array([0.30, 0.16, 0.08, 0.05, 0.04, 0.05, 0.10, 0.22, 0.40, 0.60, 0.85, 0.95,
                    1.00, 0.95, 0.90, 0.88, 0.88, 0.90, 0.95, 1.00, 1.00, 1.00, 0.92, 0.60])


@dataclass
class DemoSummary:
    landing_dir: Path
    config_path: Path
    anchor: datetime          # tz-aware UTC, the "now" of the demo data
    counts: dict[str, int]    # rows written per entity (all files, incl. bad rows)
    bad_rows: int             # how many deliberately bad rows were written
    files: int


# --------------------------------------------------------------------------------------------
# shops and their vocabularies
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Shop:
    idx: int
    shop_id: str
    name: str
    tz: str
    locale: str
    currency: str
    share: float
    platforms: tuple[str, ...]
    platform_p: tuple[float, ...]
    order_dist_platforms: tuple[str, ...]   # distribution platforms that actually carry orders


_SHOPS = (
    _Shop(0, "s1", "萌宠小铺", "Asia/Shanghai", "zh-CN", "CNY", 0.45,
          ("taobao", "tmall", "jd", "douyin", "fenxiao"), (0.42, 0.24, 0.12, 0.14, 0.08),
          ("fenxiao",)),
    _Shop(1, "s2", "Maple Home Goods", "America/New_York", "en", "USD", 0.33,
          ("shopify", "amazon", "etsy"), (0.72, 0.18, 0.10), ()),
    _Shop(2, "s3", "Berliner Teeladen", "Europe/Berlin", "en", "EUR", 0.22,
          ("shopify", "amazon", "fenxiao", "dropship"), (0.56, 0.14, 0.15, 0.15),
          ("fenxiao", "dropship")),
)
SHOP_TIMEZONES = {s.shop_id: s.tz for s in _SHOPS}

_SHOPS_TOML = """\
# Demo configuration written by crm.demo (docs/rules.md §3 and §7).
# Keys not written here take their defaults (every key: shops.example.toml and docs/rules.md §3).

[gateway]
webhook_url = "http://127.0.0.1:8080/send"
timeout_seconds = 10
max_attempts = 5

[smtp]
host = "127.0.0.1"
port = 1025
sender = "crm@example.com"

[[shops]]
shop_id = "s1"
name = "萌宠小铺"
timezone = "Asia/Shanghai"
locale = "zh-CN"
distribution_platforms = ["fenxiao"]

[shops.reminders]
strategy = "cutoff"

[[shops]]
shop_id = "s2"
name = "Maple Home Goods"
timezone = "America/New_York"
locale = "en"

[shops.reminders]
strategy = "delay"

[[shops]]
shop_id = "s3"
name = "Berliner Teeladen"
timezone = "Europe/Berlin"
locale = "en"
distribution_platforms = ["fenxiao", "dropship"]
"""

# product vocabularies: (noun, category, base price in currency units)
_NOUNS = {
    "s1": [("猫抓板", "猫用品", 29), ("逗猫棒", "猫用品", 15), ("猫窝", "猫用品", 89),
           ("猫爬架", "猫用品", 459), ("自动喂食器", "猫用品", 329), ("猫砂盆", "猫用品", 69),
           ("狗狗牵引绳", "狗用品", 39), ("宠物背包", "狗用品", 129), ("狗窝", "狗用品", 109),
           ("狗狗雨衣", "狗用品", 49), ("磨牙玩具", "玩具", 19), ("发声毛绒玩具", "玩具", 25),
           ("冻干鸡肉粒", "零食", 45), ("猫条", "零食", 32), ("狗狗饼干", "零食", 28),
           ("萌宠零食礼盒", "礼盒", 168), ("生日礼盒", "礼盒", 199), ("宠物项圈", "配饰", 35)],
    "s2": [("Ceramic Mug", "Kitchen", 16), ("Enamel Kettle", "Kitchen", 42),
           ("Bamboo Cutting Board", "Kitchen", 28), ("Cast Iron Dutch Oven", "Kitchen", 189),
           ("Linen Duvet Cover", "Bedding", 149), ("Cotton Throw", "Bedding", 54),
           ("Wool Blanket", "Bedding", 98), ("Scented Candle", "Decor", 22),
           ("Wall Clock", "Decor", 46), ("Table Lamp", "Decor", 79), ("Woven Basket", "Decor", 34),
           ("Waffle Towel Set", "Bath", 39), ("Soap Dispenser", "Bath", 18),
           ("Oak Dining Bench", "Furniture", 420)],
    "s3": [("Assam Tea", "Black tea", 8), ("Darjeeling First Flush", "Black tea", 16),
           ("Ostfriesen Mischung", "Black tea", 7), ("Earl Grey", "Black tea", 9),
           ("Sencha", "Green tea", 11), ("Gyokuro", "Green tea", 34), ("Matcha", "Green tea", 24),
           ("Rooibos Vanille", "Herbal", 7), ("Pfefferminz", "Herbal", 6), ("Kamille", "Herbal", 6),
           ("Milky Oolong", "Oolong", 14), ("Gusseisen Teekanne", "Accessories", 69),
           ("Porzellan Tea Set", "Accessories", 229), ("Teesieb", "Accessories", 9),
           ("Samowar Messing", "Accessories", 540)],
}
_ADJ = {
    "s1": ["小熊", "草莓", "云朵", "兔耳朵", "小黄鸭", "星星", "爱心", "樱花", "奶油", "彩虹", "柴犬", "喵星人"],
    "s2": ["Maple", "Rustic", "Classic", "Farmhouse", "Nordic", "Sage", "Oat", "Charcoal", "Cozy",
           "Harbor", "Birch", "Juniper"],
    "s3": ["Bio", "Premium", "Klassik", "Winter", "Sommer", "Spree", "Kiez", "Royal", "Morgen",
           "Abend", "Garten", "Tempelhof"],
}
_VARIANTS = {
    "s1": (["", " S码", " M码", " L码", " 粉色", " 蓝色"], [1.0, 0.9, 1.0, 1.15, 1.0, 1.0]),
    "s2": (["", " - Small", " - Large", " (Set of 2)", " (Set of 4)"], [1.0, 0.85, 1.25, 1.8, 3.2]),
    "s3": ([" 50g", " 100g", " 250g", " Dose 100g", ""], [0.6, 1.0, 2.2, 1.3, 1.0]),
}
_STYLE = {
    "s1": ([None, "cute", "cute;gift", "gift"], [0.25, 0.40, 0.30, 0.05]),
    "s2": ([None, "rustic", "gift", "minimal;gift", "cute"], [0.45, 0.20, 0.15, 0.12, 0.08]),
    "s3": ([None, "organic", "gift", "organic;gift"], [0.45, 0.30, 0.15, 0.10]),
}
_FOLLOWUP = {  # share of products with followup_days set, and the values
    "s1": (0.22, [3, 14, 30]), "s2": (0.15, [14, 30]), "s3": (0.30, [3, 14, 30]),
}

_CITIES = {
    "s1": ["上海", "北京", "杭州", "广州", "深圳", "成都", "南京", "武汉", "苏州", "西安", "重庆", "长沙"],
    "s2": ["New York", "Brooklyn", "Boston", "Philadelphia", "Newark", "Hartford", "Albany",
           "Pittsburgh", "Baltimore", "Providence"],
    "s3": ["Berlin", "Potsdam", "Hamburg", "München", "Leipzig", "Dresden", "Köln", "Frankfurt"],
}
_ZH_SURNAME = [("王", "wang"), ("李", "li"), ("张", "zhang"), ("刘", "liu"), ("陈", "chen"),
               ("杨", "yang"), ("黄", "huang"), ("赵", "zhao"), ("吴", "wu"), ("周", "zhou"),
               ("徐", "xu"), ("孙", "sun"), ("马", "ma"), ("朱", "zhu"), ("胡", "hu"), ("郭", "guo"),
               ("何", "he"), ("高", "gao"), ("林", "lin"), ("罗", "luo")]
_ZH_GIVEN = [("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("秀英", "xiuying"), ("敏", "min"),
             ("静", "jing"), ("丽", "li"), ("强", "qiang"), ("磊", "lei"), ("洋", "yang"),
             ("艳", "yan"), ("勇", "yong"), ("军", "jun"), ("杰", "jie"), ("娟", "juan"),
             ("涛", "tao"), ("明", "ming"), ("超", "chao"), ("晓燕", "xiaoyan"), ("子涵", "zihan"),
             ("雨桐", "yutong"), ("浩然", "haoran"), ("梓萱", "zixuan"), ("欣怡", "xinyi")]
_EN_FIRST = {
    "s2": ["Emma", "Olivia", "Ava", "Sophia", "Mia", "Liam", "Noah", "James", "Ethan", "Lucas",
           "Grace", "Chloe", "Ryan", "Daniel", "Hannah", "Jack", "Ella", "Owen", "Zoe", "Nathan"],
    "s3": ["Anna", "Lena", "Marie", "Sophie", "Laura", "Lukas", "Felix", "Jonas", "Leon", "Paul",
           "Mia", "Emma", "Ben", "Finn", "Clara", "Julia", "Max", "Tim", "Nina", "David"],
}
_EN_LAST = {
    "s2": [("Smith", "smith"), ("Johnson", "johnson"), ("Williams", "williams"), ("Brown", "brown"),
           ("Miller", "miller"), ("Davis", "davis"), ("Garcia", "garcia"), ("Wilson", "wilson"),
           ("Anderson", "anderson"), ("Taylor", "taylor"), ("Moore", "moore"), ("Clark", "clark"),
           ("O'Brien", "obrien"), ("Nguyen", "nguyen"), ("Walker", "walker")],
    "s3": [("Müller", "mueller"), ("Schmidt", "schmidt"), ("Schneider", "schneider"),
           ("Fischer", "fischer"), ("Weber", "weber"), ("Meyer", "meyer"), ("Wagner", "wagner"),
           ("Becker", "becker"), ("Schulz", "schulz"), ("Hoffmann", "hoffmann"),
           ("Koch", "koch"), ("Richter", "richter"), ("Klein", "klein"), ("Wolf", "wolf"),
           ("Schröder", "schroeder")],
}

# review texts; "praise" must not contain a complaint keyword, "hidden" (praise hiding a
# complaint, rated 4-5) must contain one.
COMPLAINT_KEYWORDS = ["慢", "破", "差", "没想到", "一般", "slow", "broken", "damaged", "disappoint"]
_REVIEWS = {
    "zh": {
        "praise": ["很可爱,猫咪很喜欢", "质量很好,会回购的", "包装精美,送朋友很合适", "宝贝收到了,和图片一样",
                   "性价比高,好评", "客服态度很好,耐心解答", "狗狗超级喜欢,谢谢老板", "颜色好看,做工精细",
                   "第二次买了,还是那么好", "萌萌哒,家里主子很满意"],
        "hidden": ["质量很好,就是物流有点慢", "东西不错,可惜包装有点破", "很可爱,但没想到尺寸这么小",
                   "猫咪喜欢,就是发货慢了两天", "整体满意,客服回复有点慢", "好看,不过做工一般"],
        "neutral": ["一般般吧,还行", "质量一般,价格还可以", "凑合用,颜色和图片有点差别", "还可以,没有想象中好"],
        "negative": ["质量太差了,用了两天就坏了", "收到的时候盒子是破的", "物流太慢,等了一个星期",
                     "和描述不符,很失望", "狗狗完全不感兴趣,差评"],
    },
    "en": {
        "praise": ["Love it, exactly as pictured", "Great quality, will buy again",
                   "Beautiful packaging, perfect gift", "Fast shipping and a lovely product",
                   "Five stars, looks wonderful at home", "Wonderful aroma, brews beautifully",
                   "Excellent, my second order here", "Very happy with this purchase"],
        "hidden": ["Love it, but the box arrived damaged", "Great tea, shipping was a bit slow though",
                   "Lovely mug, one handle was broken on arrival", "Very nice, delivery was slow",
                   "Beautiful, but I was a little disappointed by the size"],
        "neutral": ["It's okay, smaller than expected", "Average quality for the price",
                    "Fine, nothing special", "Decent, but the colour is different from the photo"],
        "negative": ["Arrived broken, very disappointed", "Poor quality, would not recommend",
                     "Took three weeks to arrive, far too slow", "Not as described",
                     "Stopped working after a week"],
    },
}
_SUPPRESSION_REASONS = ["customer request", "complaint", "unsubscribed", "replied STOP",
                        "do not call list", None]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


class _TzGrid:
    """UTC offsets on an hourly grid (DST switches on hour boundaries in the shops' zones)."""

    def __init__(self, tz: str, t0: int, t1: int):
        self.g0 = t0 - t0 % HOUR
        n = (t1 - self.g0) // HOUR + 2
        utc = np.arange(n, dtype=np.int64) * HOUR + self.g0
        local = (
            pl.DataFrame({"t": utc})
            .select(pl.from_epoch("t", time_unit="s").dt.replace_time_zone("UTC")
                    .dt.convert_time_zone(tz).dt.replace_time_zone(None).dt.epoch("s"))
            .to_series().to_numpy()
        )
        self.off = local - utc

    def local(self, t: np.ndarray | int) -> np.ndarray:
        i = np.clip((np.asarray(t, dtype=np.int64) - self.g0) // HOUR, 0, len(self.off) - 1)
        return np.asarray(t, dtype=np.int64) + self.off[i]

    def local_day(self, t) -> np.ndarray:
        return self.local(t) // DAY

    def utc_of_local(self, lt: int) -> int:
        t = lt - int(self.off[0])
        for _ in range(3):
            t = lt - int(self.local(np.int64(t)) - t)
        return int(t)


def _sample_times(rng: np.random.Generator, n: int, start: int, end: int, grid: _TzGrid,
                  recent_share: float = 0.20, followup_share: float = 0.10) -> np.ndarray:
    """n UTC epoch seconds in [start, end) following the local daily curve; a share lies in the
    last 48 h, another in [end-12d, end-7d] (deliveries whose follow-up is due at ``end``)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    parts, got = [], 0
    fol_lo, fol_hi = max(start, end - 12 * DAY), max(start, end - 7 * DAY)
    while got < n:
        m = int((n - got) * 1.9) + 64
        comp = rng.random(m)
        u = rng.random(m)
        t = start + (u * (end - start)).astype(np.int64)
        rec = comp < recent_share
        t[rec] = np.maximum(start, end - 1 - (u[rec] * 48 * HOUR).astype(np.int64))
        fol = (comp >= recent_share) & (comp < recent_share + followup_share) & (fol_hi > fol_lo)
        t[fol] = fol_lo + (u[fol] * (fol_hi - fol_lo)).astype(np.int64)
        hour = (grid.local(t) // HOUR) % 24
        keep = rng.random(m) < _HOUR_W[hour]
        parts.append(t[keep])
        got += int(keep.sum())
    return np.concatenate(parts)[:n]


def _ids(prefix: str, idx: np.ndarray, width: int) -> pl.Series:
    s = pl.Series("i", np.asarray(idx, dtype=np.int64) + 1).cast(pl.String).str.zfill(width)
    return pl.select(pl.concat_str([pl.lit(prefix), s])).to_series()


def _pick(pool: list, idx: np.ndarray, dtype=pl.String) -> pl.Series:
    return pl.Series("v", pool, dtype=dtype).gather(np.asarray(idx, dtype=np.int64))


def _epoch_to_ts(col: str) -> pl.Expr:
    c = pl.col(col)
    return pl.from_epoch(pl.when(c < NA).then(c), time_unit="s").dt.replace_time_zone("UTC")


def _cents_to_dec(col: str) -> pl.Expr:
    return (pl.col(col).cast(pl.Decimal(18, 2)) / 100).cast(pl.Decimal(12, 2))


def _stamp(t: int) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H%M")


def _width(n: int, minimum: int) -> int:
    return max(minimum, len(str(max(n, 1))))


# --------------------------------------------------------------------------------------------
# per-shop plan: products, customers, order times, customer of each order, planted situations
# --------------------------------------------------------------------------------------------

K_REGULAR, K_UNPAID, K_REPLACED_PAID, K_DIST_LAG, K_DIST_CAUGHT_UP = 0, 1, 2, 3, 4


@dataclass
class _Plan:
    shop: _Shop
    grid: _TzGrid
    n: int                      # orders incl. planted ones
    created: np.ndarray         # int64, sorted
    cust: np.ndarray            # int32 customer index
    kind: np.ndarray            # int8
    plat: np.ndarray            # int8 platform index
    n_cust: int
    cust_count: np.ndarray
    cust_first: np.ndarray      # int64 first order time or NA
    cust_special: np.ndarray    # bool: has a planted recent unpaid order
    cust_city: np.ndarray       # int16, -1 = null
    products: pl.DataFrame
    price_cents: np.ndarray
    pop: np.ndarray
    order_w: int
    cust_w: int
    prod_w: int


def _products(shop: _Shop, n: int, rng: np.random.Generator, width: int,
              first: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    sid = shop.shop_id
    nouns, adjs = _NOUNS[sid], _ADJ[sid]
    variants, vmult = _VARIANTS[sid]
    ni = rng.integers(0, len(nouns), n)
    ai = rng.integers(0, len(adjs), n)
    vi = rng.integers(0, len(variants), n)
    plain = np.array([x[1] in ("Accessories", "Furniture") for x in nouns])[ni]
    vi = np.where(plain, variants.index(""), vi)   # no "250g" teapots
    base = np.array([x[2] for x in nouns], dtype=np.float64)[ni]
    mult = np.array(vmult)[vi]
    mult = np.where(base > 100, np.minimum(mult, 1.0), mult)   # no "set of 4" dining benches
    price = base * mult * rng.uniform(0.85, 1.2, n)
    price_cents = (np.round(price) * 100 - np.where(rng.random(n) < 0.6, 1, 0)).astype(np.int64)
    sep = "" if shop.locale == "zh-CN" else " "
    tags, tag_p = _STYLE[sid]
    fshare, fvals = _FOLLOWUP[sid]
    fdays = np.where(rng.random(n) < fshare, np.array(fvals)[rng.integers(0, len(fvals), n)], -1)
    df = pl.DataFrame({
        "product_id": _ids(f"{sid}-p", np.arange(first, first + n), width),
        "shop_id": pl.Series([sid] * n, dtype=pl.String),
        "title": pl.select(pl.concat_str([_pick(adjs, ai), pl.lit(sep), _pick([x[0] for x in nouns], ni),
                                          _pick(variants, vi)])).to_series(),
        "category": _pick([x[1] for x in nouns], ni),
        "style_tags": _pick(tags, rng.choice(len(tags), n, p=tag_p)),
        "followup_days": pl.Series(fdays).cast(pl.Int32),
    }).with_columns(pl.when(pl.col("followup_days") >= 0).then(pl.col("followup_days"))
                    .alias("followup_days"))
    return df, price_cents


def _recent_window(grid: _TzGrid, A: int) -> tuple[int, int]:
    """A UTC interval inside the last 23 h before A, ≥ 15 min before A, on one local date."""
    w1, w0 = A - 15 * MIN, A - 23 * HOUR
    l1 = int(grid.local(np.int64(w1)))
    midnight = grid.utc_of_local(l1 - l1 % DAY)
    if w1 - max(w0, midnight) >= 6 * HOUR:
        return max(w0, midnight), w1
    return w0, midnight - MIN


def _plan_shop(shop: _Shop, n_total: int, A: int, start: int, seed: int) -> _Plan:
    k = shop.idx
    grid = _TzGrid(shop.tz, start - 3 * DAY, A + 60 * DAY)
    rng = _rng(seed, k, 1)

    # how many planted orders (they are part of n_total)
    g = min(max(5, int(round(n_total / 500))), max(1, n_total // 30))
    sizes = _rng(seed, k, 4).choice([2, 3, 4], g, p=[0.55, 0.30, 0.15])
    n_pairs = g
    n_pairs_recent = (n_pairs + 1) // 2
    has_dist = bool(shop.order_dist_platforms)
    n_dist = g if has_dist else 0
    n_dist_old = max(min(3, g), g // 2) if has_dist else 0
    n_regular = n_total - int(sizes.sum()) - 2 * n_pairs - n_dist - n_dist_old

    # products
    n_prod = int(np.clip(n_regular // 120, 24, 3000))
    prod_w = _width(n_prod + 10, 4)
    products, price_cents = _products(shop, n_prod, _rng(seed, k, 2), prod_w)
    ranks = rng.permutation(n_prod)
    pop = 1.0 / (ranks + 4.0) ** 1.1 / np.sqrt(price_cents / np.median(price_cents))
    pop /= pop.sum()

    # customers: skewed order counts (many one-time, some second, some repeat buyers)
    vals = np.array([1, 2, 3, 4, 5, 6, 8, 10, 12])
    p = np.array([0.60, 0.20, 0.09, 0.05, 0.025, 0.015, 0.01, 0.006, 0.004])
    counts = vals[rng.choice(len(vals), n_regular + 16, p=p / p.sum())]
    cs = np.cumsum(counts)
    m = int(np.searchsorted(cs, n_regular)) + 1
    counts = counts[:m].copy()
    counts[-1] -= cs[m - 1] - n_regular
    counts = counts[counts > 0]
    n_zero = max(30, len(counts) // 20)
    counts = np.concatenate([counts, np.zeros(n_zero, dtype=counts.dtype)])
    counts = counts[rng.permutation(len(counts))]
    n_cust = len(counts)
    cust = rng.permutation(np.repeat(np.arange(n_cust, dtype=np.int32), counts))
    created = _sample_times(rng, n_regular, start, A, grid)
    plat = rng.choice(len(shop.platforms), n_regular, p=shop.platform_p).astype(np.int8)
    kind = np.zeros(n_regular, dtype=np.int8)

    # planted situations ----------------------------------------------------------------
    w0, w1 = _recent_window(grid, A)
    need = g + n_pairs + n_dist + n_dist_old
    # special customers: a mix of brand-new (0 regular orders), second and repeat buyers
    pools = [rng.permutation(np.flatnonzero(counts == 0)),
             rng.permutation(np.flatnonzero(counts == 1)),
             rng.permutation(np.flatnonzero(counts >= 2))]
    per = -(-need // 3)
    chosen = np.concatenate([pl_[:per] for pl_ in pools])
    if len(chosen) < need:
        rest = np.setdiff1d(rng.permutation(n_cust), chosen, assume_unique=False)
        chosen = np.concatenate([chosen, rng.permutation(rest)[: need - len(chosen)]])
    chosen = chosen[rng.permutation(len(chosen))][:need].astype(np.int32)
    c_multi, c_pairs = chosen[:g], chosen[g:g + n_pairs]
    c_dist, c_dist_old = chosen[g + n_pairs:g + n_pairs + n_dist], chosen[g + n_pairs + n_dist:]

    def span(lo: int, hi: int, size: int) -> np.ndarray:
        return lo + (rng.random(size) * max(1, hi - lo)).astype(np.int64)

    regular_plats = [i for i, name in enumerate(shop.platforms) if name not in shop.order_dist_platforms]
    dist_plats = [shop.platforms.index(name) for name in shop.order_dist_platforms]

    # (a) several unpaid orders of one customer on one local day, inside the auto-close horizon
    mc = np.repeat(c_multi, sizes)
    mt = span(w0, w1, int(sizes.sum()))
    grp = np.repeat(np.arange(g), sizes)
    order = np.lexsort((mt, grp))
    mt = mt[order]
    mk = np.full(len(mt), K_UNPAID, np.int8)
    mp = np.array(regular_plats, np.int8)[rng.integers(0, len(regular_plats), len(mt))]
    # (b) a wrong first order left unpaid, re-placed and paid minutes later (same customer/day)
    gap = rng.integers(3 * MIN, 40 * MIN, n_pairs)
    ta = np.empty(n_pairs, np.int64)
    ta[:n_pairs_recent] = span(w0, w1 - 41 * MIN, n_pairs_recent)
    n_old = n_pairs - n_pairs_recent
    ta[n_pairs_recent:] = _sample_times(rng, n_old, start + DAY, A - 2 * DAY, grid, 0.0, 0.3)
    tb = ta + gap
    cross = grid.local_day(ta) != grid.local_day(tb)
    ta = np.where(cross, ta - gap - 2 * MIN, ta)
    tb = np.where(cross, ta + gap, tb)
    pt = np.concatenate([ta, tb])
    pc = np.concatenate([c_pairs, c_pairs])
    pk = np.concatenate([np.full(n_pairs, K_UNPAID, np.int8), np.full(n_pairs, K_REPLACED_PAID, np.int8)])
    pp0 = np.array(regular_plats, np.int8)[rng.integers(0, len(regular_plats), n_pairs)]
    pp = np.concatenate([pp0, pp0])
    # (c) distribution-platform orders: unpaid in the drop (status lags), recent and older
    dt_ = np.concatenate([span(w0, w1, n_dist), span(A - 60 * HOUR, A - 40 * HOUR, n_dist_old)])
    dc = np.concatenate([c_dist, c_dist_old])
    dk = np.concatenate([np.full(n_dist, K_DIST_LAG, np.int8), np.full(n_dist_old, K_DIST_CAUGHT_UP, np.int8)])
    dp = (np.array(dist_plats, np.int8)[rng.integers(0, len(dist_plats), len(dt_))]
          if has_dist else np.zeros(0, np.int8))

    created = np.concatenate([created, mt, pt, dt_])
    cust = np.concatenate([cust, mc, pc, dc]).astype(np.int32)
    kind = np.concatenate([kind, mk, pk, dk])
    plat = np.concatenate([plat, mp, pp, dp]).astype(np.int8)
    srt = np.argsort(created, kind="stable")
    created, cust, kind, plat = created[srt], cust[srt], kind[srt], plat[srt]
    n = len(created)

    cust_count = np.bincount(cust, minlength=n_cust)
    cust_first = np.full(n_cust, NA, dtype=np.int64)
    np.minimum.at(cust_first, cust, created)
    cust_special = np.zeros(n_cust, bool)
    cust_special[np.concatenate([c_multi, c_pairs[:n_pairs_recent], c_dist])] = True
    n_cities = len(_CITIES[shop.shop_id])
    cust_city = np.where(rng.random(n_cust) < 0.08, -1,
                         rng.integers(0, n_cities, n_cust)).astype(np.int16)
    return _Plan(shop, grid, n, created, cust, kind, plat, n_cust, cust_count, cust_first,
                 cust_special, cust_city, products, price_cents, pop,
                 _width(n, 6), _width(n_cust, 5), prod_w)


# --------------------------------------------------------------------------------------------
# order lifecycle, items, reviews (truth: all timestamps, also those after the anchor)
# --------------------------------------------------------------------------------------------

def _simulate(plan: _Plan, lo: int, hi: int, A: int, D2: int, seed: int, chunk: int):
    shop, sid = plan.shop, plan.shop.shop_id
    rng = _rng(seed, shop.idx, 10, chunk)
    c = plan.created[lo:hi]
    kind = plan.kind[lo:hi]
    cust = plan.cust[lo:hi]
    n = hi - lo

    # payment
    mix = rng.random(n)
    delay = np.where(mix < 0.6, rng.integers(1 * MIN, 15 * MIN, n),
                     np.where(mix < 0.9, rng.integers(15 * MIN, 3 * HOUR, n),
                              rng.integers(3 * HOUR, 20 * HOUR, n)))
    will_pay = rng.random(n) < 0.85
    paid = np.where((kind == K_REGULAR) & will_pay, c + delay, NA)
    paid = np.where(kind == K_REPLACED_PAID, c + rng.integers(1 * MIN, 20 * MIN, n), paid)
    paid = np.where(kind == K_DIST_CAUGHT_UP, c + rng.integers(2 * MIN, 30 * MIN, n), paid)
    paid_vis = np.where(kind == K_DIST_CAUGHT_UP,
                        D2 + (rng.random(n) * (A - 10 * MIN - D2)).astype(np.int64), paid)
    never = paid == NA
    closed = np.where(never & (kind != K_DIST_LAG), c + DAY, NA)

    # shipping, delivery, refunds
    r = rng.random(n)
    pre_refund = (paid != NA) & (r < 0.015) & (kind != K_DIST_CAUGHT_UP)
    post_refund = (paid != NA) & (r >= 0.015) & (r < 0.045)
    ship_delay = np.clip(rng.lognormal(np.log(20 * HOUR), 0.6, n), 1 * HOUR, 4 * DAY).astype(np.int64)
    shipped = np.where((paid != NA) & ~pre_refund & (kind != K_DIST_CAUGHT_UP), paid + ship_delay, NA)
    delivered = np.where(shipped != NA, shipped + rng.integers(1 * DAY, 5 * DAY, n), NA)
    refunded = np.where(pre_refund, paid + rng.integers(1 * HOUR, 20 * HOUR, n),
                        np.where(post_refund & (delivered != NA),
                                 delivered + rng.integers(12 * HOUR, 6 * DAY, n), NA))

    # items and amount
    n_lines = rng.choice([1, 2, 3, 4, 5], n, p=[0.62, 0.24, 0.09, 0.03, 0.02])
    L = int(n_lines.sum())
    line_order = np.repeat(np.arange(n), n_lines)
    starts = np.cumsum(n_lines) - n_lines
    line_no = np.arange(L) - np.repeat(starts, n_lines) + 1
    prod = rng.choice(len(plan.pop), L, p=plan.pop)
    price = plan.price_cents[prod]
    qty = rng.choice([1, 2, 3, 4, 5], L, p=[0.72, 0.17, 0.07, 0.03, 0.01])
    qty = np.where(price > 15000, 1, qty)
    lr = rng.random(L)
    unit = np.where(lr < 0.12, np.round(price * 0.85), price).astype(np.int64)
    if sid == "s1":
        unit = np.where((lr > 0.97) & (line_no > 1), 0, unit)   # free gift lines
    amount = np.bincount(line_order, weights=(qty * unit).astype(np.float64), minlength=n)
    amount = np.round(amount).astype(np.int64)

    oidx = np.arange(lo, hi)
    order_ids = _ids(f"{sid}-o", oidx, plan.order_w)
    city = np.where(rng.random(n) < 0.85, plan.cust_city[cust],
                    rng.integers(0, len(_CITIES[sid]), n)).astype(np.int64)
    city = np.where(rng.random(n) < 0.03, -1, city)
    cities = _CITIES[sid]
    orders = pl.DataFrame({
        "order_id": order_ids,
        "shop_id": pl.Series([sid] * n, dtype=pl.String),
        "customer_id": _ids(f"{sid}-c", cust, plan.cust_w),
        "platform": _pick(list(shop.platforms), plan.plat[lo:hi]),
        "created": c, "paid": paid, "paid_vis": paid_vis, "shipped": shipped,
        "delivered": delivered, "closed": closed, "refunded": refunded,
        "amount_cents": amount,
        "currency": pl.Series([shop.currency] * n, dtype=pl.String),
        "receiver_city": _pick(cities + [None], np.where(city < 0, len(cities), city)),
    })
    if sid == "s1":   # currency is optional (default CNY): some rows leave it out
        orders = orders.with_columns(
            pl.when(pl.Series(rng.random(n) < 0.1)).then(None).otherwise(pl.col("currency"))
            .alias("currency"))
    items = pl.DataFrame({
        "order_id": order_ids.gather(line_order),
        "line_no": pl.Series(line_no).cast(pl.Int32),
        "product_id": plan.products["product_id"].gather(prod),
        "quantity": pl.Series(qty).cast(pl.Int32),
        "unit_cents": unit,
        "created": c[line_order],
    })

    # reviews for a share of delivered orders
    texts = _REVIEWS["zh" if shop.locale == "zh-CN" else "en"]
    rv = (delivered != NA) & (rng.random(n) < 0.35)
    ri = np.flatnonzero(rv)
    rc = delivered[ri] + np.minimum(rng.exponential(1.2 * DAY, len(ri)), 12 * DAY).astype(np.int64) + 10 * MIN
    ok = rc <= A
    ri, rc = ri[ok], rc[ok]
    m = len(ri)
    rating = rng.choice([5, 4, 3, 2, 1], m, p=[0.70, 0.14, 0.06, 0.04, 0.06])
    refunded_r = refunded[ri] <= A
    rating = np.where(refunded_r, rng.choice([1, 2, 3], m), rating)
    hidden = (rating >= 4) & (rng.random(m) < 0.14)
    # follow-up reviews (追评): a later, worse second review of the same order
    fi = np.flatnonzero(rng.random(m) < 0.05)
    fc = rc[fi] + rng.integers(1 * DAY, 8 * DAY, len(fi))
    fok = fc <= A
    fi, fc = fi[fok], fc[fok]
    rev_order = np.concatenate([ri, ri[fi]])
    rev_created = np.concatenate([rc, fc])
    rev_rating = np.concatenate([rating, rng.choice([1, 2, 3], len(fi))])
    rev_hidden = np.concatenate([hidden, np.zeros(len(fi), bool)])
    cat = np.where(rev_hidden, 1, np.where(rev_rating >= 4, 0, np.where(rev_rating == 3, 2, 3)))
    pools = [texts["praise"], texts["hidden"], texts["neutral"], texts["negative"]]
    offs = np.cumsum([0] + [len(p_) for p_ in pools])
    flat = [t for p_ in pools for t in p_] + [None]
    sizes = np.array([len(p_) for p_ in pools])
    tix = offs[cat] + (rng.random(len(cat)) * sizes[cat]).astype(np.int64)
    tix = np.where((cat == 0) & (rng.random(len(cat)) < 0.12), len(flat) - 1, tix)  # rating only
    reviews = pl.DataFrame({
        "order_id": order_ids.gather(rev_order),
        "created": rev_created,
        "rating": pl.Series(rev_rating).cast(pl.Int32),
        "text": _pick(flat, tix),
    })
    return orders, items, reviews


# --------------------------------------------------------------------------------------------
# customers and suppressions
# --------------------------------------------------------------------------------------------

def _customers(plan: _Plan, lo: int, hi: int, A: int, D1: int, seed: int, chunk: int) -> pl.DataFrame:
    shop, sid = plan.shop, plan.shop.shop_id
    rng = _rng(seed, shop.idx, 20, chunk)
    n = hi - lo
    ci = np.arange(lo, hi)
    first = plan.cust_first[lo:hi]
    count = plan.cust_count[lo:hi]
    special = plan.cust_special[lo:hi]
    # registration: long before the first order, or minutes before it (a new sign-up)
    quick = rng.random(n) < 0.4
    before = np.where(quick, rng.integers(1 * MIN, 1 * HOUR, n),
                      np.minimum(rng.exponential(60 * DAY, n), 400 * DAY).astype(np.int64) + HOUR)
    registered = np.where(first < NA, first - before, A - rng.integers(1 * DAY, 400 * DAY, n))
    if sid == "s1":
        s_i = rng.integers(0, len(_ZH_SURNAME), n)
        g1 = rng.integers(0, len(_ZH_GIVEN), n)
        name = pl.select(pl.concat_str([_pick([x[0] for x in _ZH_SURNAME], s_i),
                                        _pick([x[0] for x in _ZH_GIVEN], g1)])).to_series()
        handle = pl.select(pl.concat_str([_pick([x[1] for x in _ZH_SURNAME], s_i),
                                          _pick([x[1] for x in _ZH_GIVEN], g1)])).to_series()
        pre = rng.choice(["138", "139", "137", "135", "136", "186", "188", "150", "152", "158"], n)
        tail = pl.Series((ci * 7919 + 13) % 10**8).cast(pl.String).str.zfill(8)
        phone = pl.select(pl.concat_str([pl.Series(pre), tail])).to_series()
        p_phone, p_email = 0.06, 0.45
    else:
        firsts, lasts = _EN_FIRST[sid], _EN_LAST[sid]
        f_i = rng.integers(0, len(firsts), n)
        l_i = rng.integers(0, len(lasts), n)
        fn = _pick(firsts, f_i)
        name = pl.select(pl.concat_str([fn, pl.lit(" "), _pick([x[0] for x in lasts], l_i)])).to_series()
        handle = pl.select(pl.concat_str([fn.str.to_lowercase(), pl.lit("."),
                                          _pick([x[1] for x in lasts], l_i)])).to_series()
        if sid == "s2":
            pre = rng.choice(["+1212", "+1646", "+1718", "+1917", "+1347", "+1617"], n)
            tail = pl.Series((ci * 7919 + 29) % 10**7).cast(pl.String).str.zfill(7)
        else:
            pre = rng.choice(["+4930", "+49151", "+49160", "+49170", "+49176"], n)
            tail = pl.Series((ci * 7919 + 31) % 10**8).cast(pl.String).str.zfill(8)
        phone = pl.select(pl.concat_str([pl.Series(pre), tail])).to_series()
        p_phone, p_email = 0.18, 0.06
    email = pl.select(pl.concat_str([handle, pl.Series(ci + 1).cast(pl.String),
                                     pl.lit("@example.com")])).to_series()
    no_phone = rng.random(n) < p_phone
    no_email = rng.random(n) < p_email
    cities = _CITIES[sid]
    city = plan.cust_city[lo:hi].astype(np.int64)
    level0 = np.clip(rng.poisson(0.35 + 0.45 * np.minimum(count, 6)), 0, 5)
    opt0 = rng.random(n) < np.where(special, 0.15, 0.03)
    # changes after the first snapshot: opt-outs and level upgrades, with a newer updated_at
    old = registered <= D1
    flip = old & ~opt0 & (rng.random(n) < np.where(special, 0.10, 0.01))
    upgrade = old & (level0 < 5) & (rng.random(n) < 0.02)
    changed = flip | upgrade
    change_t = np.where(changed, D1 + (rng.random(n) * (A - 5 * MIN - D1)).astype(np.int64), NA)
    edited = rng.random(n) < 0.3
    upd0 = np.where(edited & old, registered + (rng.random(n) * (D1 - registered)).astype(np.int64),
                    registered)
    return pl.DataFrame({
        "customer_id": _ids(f"{sid}-c", ci, plan.cust_w),
        "shop_id": pl.Series([sid] * n, dtype=pl.String),
        "name": name,
        "phone": pl.select(pl.when(pl.Series(no_phone)).then(None).otherwise(phone)).to_series(),
        "email": pl.select(pl.when(pl.Series(no_email)).then(None).otherwise(email)).to_series(),
        "city": _pick(cities + [None], np.where(city < 0, len(cities), city)),
        "level0": pl.Series(level0).cast(pl.Int32),
        "level": pl.Series(np.where(upgrade, level0 + 1, level0)).cast(pl.Int32),
        "registered": registered,
        "opt0": opt0,
        "opt": opt0 | flip,
        "upd0": upd0,
        "upd": np.where(changed, change_t, upd0),
        "changed": changed,
        "special": special,
    })


_SUPP_COMBOS = [("id", "all"), ("id", "sms"), ("id", "email"), ("id", "call"), ("phone", "sms"),
                ("phone", "call"), ("phone", "all"), ("email", "email"), ("email", "all")]


def _suppressions(cust: pl.DataFrame, rng: np.random.Generator, A: int) -> pl.DataFrame:
    """Suppressions for a shop's customers: by customer_id (contact columns sometimes filled),
    by phone only or by email only, on every channel; half of them hit customers with planted
    recent unpaid orders."""
    m = max(18, cust.height // 60)
    per = -(-m // len(_SUPP_COMBOS))
    frames = []
    for how, channel in _SUPP_COMBOS:
        pool = cust
        if how == "phone":
            pool = cust.filter(pl.col("phone").is_not_null())
        elif how == "email":
            pool = cust.filter(pl.col("email").is_not_null())
        sp = pool.filter(pl.col("special"))
        k1 = min(sp.height, per // 2 + 1)
        a = sp[rng.choice(sp.height, k1, replace=False)] if k1 else sp.clear()
        b = pool[rng.choice(pool.height, min(pool.height, per - k1), replace=False)]
        sel = pl.concat([a, b])
        k = sel.height
        keep_contact = pl.Series(rng.random(k) < 0.5)
        lo = np.maximum(sel["registered"].to_numpy(), A - 60 * DAY)
        created = lo + (rng.random(k) * np.maximum(A - 10 * MIN - lo, 1)).astype(np.int64)
        reason = _pick(_SUPPRESSION_REASONS, rng.integers(0, len(_SUPPRESSION_REASONS), k))
        frames.append(sel.select(
            customer_id=pl.col("customer_id") if how == "id" else pl.lit(None, pl.String),
            phone=(pl.col("phone") if how == "phone" else
                   pl.when(keep_contact).then(pl.col("phone")) if how == "id" else pl.lit(None, pl.String)),
            email=(pl.col("email") if how == "email" else
                   pl.when(keep_contact).then(pl.col("email")) if how == "id" else pl.lit(None, pl.String)),
            channel=pl.lit(channel),
            created=pl.Series(created),
            reason=reason,
        ))
    return pl.concat(frames).sort("created", "customer_id", "phone", "email", nulls_last=True)


# --------------------------------------------------------------------------------------------
# snapshots and formatting
# --------------------------------------------------------------------------------------------

def _orders_state(o: pl.DataFrame, T: int) -> pl.DataFrame:
    """The orders as the platform exported them at T: timestamps after T are not yet known."""
    def vis(c: str) -> pl.Expr:
        return pl.when(pl.col(c) <= T).then(pl.col(c)).otherwise(NA)
    return (
        o.filter(pl.col("created") <= T)
        .with_columns(
            paid=pl.when(pl.col("paid_vis") <= T).then(pl.col("paid")).otherwise(NA),
            paid_seen=vis("paid_vis"),
            shipped=vis("shipped"), delivered=vis("delivered"), closed=vis("closed"),
            refunded=vis("refunded"),
        )
        .with_columns(updated=pl.max_horizontal(
            "created", *[pl.when(pl.col(c) < NA).then(pl.col(c))
                         for c in ("paid_seen", "shipped", "delivered", "closed", "refunded")]))
    )


def _orders_out(s: pl.DataFrame) -> pl.DataFrame:
    return s.select(
        "order_id", "shop_id", "customer_id", "platform",
        created_at=_epoch_to_ts("created"), paid_at=_epoch_to_ts("paid"),
        shipped_at=_epoch_to_ts("shipped"), delivered_at=_epoch_to_ts("delivered"),
        closed_at=_epoch_to_ts("closed"), refunded_at=_epoch_to_ts("refunded"),
        total_amount=_cents_to_dec("amount_cents"), currency="currency",
        receiver_city="receiver_city", updated_at=_epoch_to_ts("updated"),
    )


def _items_out(s: pl.DataFrame) -> pl.DataFrame:
    return s.select("order_id", "line_no", "product_id", "quantity",
                    unit_price=_cents_to_dec("unit_cents"))


def _reviews_out(s: pl.DataFrame) -> pl.DataFrame:
    return s.select("order_id", created_at=_epoch_to_ts("created"), rating="rating", text="text")


def _customers_out(s: pl.DataFrame, initial: bool) -> pl.DataFrame:
    return s.select(
        "customer_id", "shop_id", "name", "phone", "email", "city",
        member_level="level0" if initial else "level",
        registered_at=_epoch_to_ts("registered"),
        opt_out="opt0" if initial else "opt",
        updated_at=_epoch_to_ts("upd0" if initial else "upd"),
    )


def _suppressions_out(s: pl.DataFrame) -> pl.DataFrame:
    return s.select("customer_id", "phone", "email", "channel",
                    created_at=_epoch_to_ts("created"), reason="reason")


_FMT = {"offset": "%Y-%m-%dT%H:%M:%S%:z", "naive": "%Y-%m-%d %H:%M:%S",
        "zulu": "%Y-%m-%dT%H:%M:%SZ"}


def _format_ts(df: pl.DataFrame, cols: list[str], mode: str, tz_of: pl.Expr | None) -> pl.DataFrame:
    """Render timestamp columns as strings: with the shop's offset, naive shop-local, or Z."""
    if mode == "zulu":
        return df.with_columns(pl.col(c).dt.strftime(_FMT["zulu"]) for c in cols)
    assert tz_of is not None
    out = []
    for c in cols:
        e = None
        for shop in _SHOPS:
            v = pl.col(c).dt.convert_time_zone(shop.tz).dt.strftime(_FMT[mode])
            e = (pl.when(tz_of == shop.shop_id).then(v) if e is None
                 else e.when(tz_of == shop.shop_id).then(v))
        out.append(e.alias(c))
    return df.with_columns(out)


def _ambiguous_local(df: pl.DataFrame, cols: list[str]) -> pl.Series:
    """Rows with a timestamp whose naive local rendering is ambiguous (DST fall-back hour)."""
    flags = []
    for c in cols:
        e = None
        for shop in _SHOPS:
            back = (pl.col(c).dt.convert_time_zone(shop.tz).dt.replace_time_zone(None)
                    .dt.replace_time_zone(shop.tz, ambiguous="earliest").dt.convert_time_zone("UTC"))
            bad = back.is_not_null() & (back != pl.col(c))
            e = (pl.when(pl.col("shop_id") == shop.shop_id).then(bad) if e is None
                 else e.when(pl.col("shop_id") == shop.shop_id).then(bad))
        flags.append(e.otherwise(False).fill_null(False))
    return df.select(pl.any_horizontal(flags)).to_series()


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------

class _Writer:
    def __init__(self, landing: Path, progress: Callable[[str], None] | None):
        self.landing = landing
        self.progress = progress
        self.counts = {e: 0 for e in ENTITIES}
        self.files = 0
        self.bad_rows = 0
        self.paths: list[Path] = []
        self._seq = {e: 0 for e in ENTITIES}

    def name(self, entity: str, t: int, ext: str, tag: str = "") -> Path:
        self._seq[entity] += 1
        tag = f"_{tag}" if tag else ""
        return self.landing / entity / f"{_stamp(t)}_drop{self._seq[entity]:03d}{tag}.{ext}"

    def write(self, entity: str, df: pl.DataFrame, t: int, fmt: str, tag: str = "",
              bad: bool = False) -> None:
        assert df.columns == ENTITY_COLUMNS[entity], (entity, df.columns)
        path = self.name(entity, t, fmt, tag)
        if fmt == "parquet":
            df.write_parquet(path, compression="zstd", statistics=True)
        elif fmt == "csv":
            df.write_csv(path)
        elif fmt == "ndjson":   # amounts as JSON numbers, not strings
            df.with_columns(pl.col(pl.Decimal).cast(pl.Float64)).write_ndjson(path)
        else:  # pragma: no cover
            raise ValueError(fmt)
        self.counts[entity] += df.height
        self.files += 1
        if bad:
            self.bad_rows += df.height
        self.paths.append(path)
        if self.progress:
            self.progress(f"{entity}/{path.name}: {df.height} rows")

    def raw(self, entity: str, data: bytes, t: int, ext: str, tag: str) -> None:
        path = self.name(entity, t, ext, tag)
        path.write_bytes(data)
        self.files += 1
        self.paths.append(path)
        if self.progress:
            self.progress(f"{entity}/{path.name}: {len(data)} bytes (unreadable)")


def _prepare(out_dir: Path) -> Path:
    landing = out_dir / "landing"
    for e in ENTITIES:
        d = landing / e
        d.mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():   # a re-run replaces the generator's own earlier drops
            if f.is_file() and _DROP_FILE.match(f.name):
                f.unlink()
    return landing


def _norm_anchor(anchor: datetime | None) -> datetime:
    if anchor is None:
        now = datetime.now(timezone.utc)
        return now.replace(minute=0, second=0, microsecond=0)
    if anchor.tzinfo is None:
        anchor = anchor.replace(tzinfo=timezone.utc)
    return anchor.astimezone(timezone.utc)


def generate(out_dir: Path, *, orders: int = 30_000, seed: int = 7,
             anchor: datetime | None = None, weeks: int = 6,
             bench: bool = False, progress: Callable[[str], None] | None = None) -> DemoSummary:
    """Write a landing folder (``out_dir/landing``) and ``out_dir/shops.toml``; see module doc."""
    if orders < 100:
        raise ValueError("orders must be at least 100")
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    out_dir = Path(out_dir)
    anchor_dt = _norm_anchor(anchor)
    A = int(anchor_dt.timestamp())
    start = A - weeks * 7 * DAY
    D1, D2 = A - 36 * HOUR, A - 12 * HOUR
    landing = _prepare(out_dir)
    config_path = out_dir / "shops.toml"
    config_path.write_text(_SHOPS_TOML, encoding="utf-8")
    w = _Writer(landing, progress)

    shares = np.array([s.share for s in _SHOPS])
    n_shop = np.floor(shares * orders).astype(int)
    n_shop[0] += orders - n_shop.sum()
    plans = []
    for shop, n in zip(_SHOPS, n_shop):
        plans.append(_plan_shop(shop, int(n), A, start, seed))
        if progress:
            progress(f"planned {shop.shop_id}: {plans[-1].n} orders, {plans[-1].n_cust} customers")

    if bench:
        _write_bench(w, plans, A, D1, D2, seed)
    else:
        _write_demo(w, plans, A, D1, D2, seed)
    return DemoSummary(landing_dir=landing, config_path=config_path, anchor=anchor_dt,
                       counts=dict(w.counts), bad_rows=w.bad_rows, files=w.files)


def _write_bench(w: _Writer, plans: list[_Plan], A: int, D1: int, D2: int, seed: int) -> None:
    total = sum(p.n for p in plans)
    k_files = max(4, math.ceil(total / MAX_ORDERS_PER_FILE))
    w.write("products", pl.concat([p.products for p in plans]), A, "parquet")
    for k in range(k_files):
        parts = [_simulate(p, p.n * k // k_files, p.n * (k + 1) // k_files, A, D2, seed, k)
                 for p in plans]
        orders = _orders_out(_orders_state(pl.concat([x[0] for x in parts]), A))
        w.write("orders", orders, A, "parquet")
        del orders
        w.write("order_items", _items_out(pl.concat([x[1] for x in parts])), A, "parquet")
        w.write("reviews", _reviews_out(pl.concat([x[2] for x in parts])), A, "parquet")
        del parts
    supp = []
    for p in plans:
        kc = max(1, math.ceil(p.n_cust / MAX_ORDERS_PER_FILE))
        for k in range(kc):
            c = _customers(p, p.n_cust * k // kc, p.n_cust * (k + 1) // kc, A, D1, seed, k)
            w.write("customers", _customers_out(c, initial=False), A, "parquet")
            supp.append(_suppressions(c, _rng(seed, p.shop.idx, 30, k), A))
    w.write("suppressions", _suppressions_out(pl.concat(supp)), A, "parquet")


def _write_demo(w: _Writer, plans: list[_Plan], A: int, D1: int, D2: int, seed: int) -> None:
    rng = _rng(seed, 99)
    sims = [_simulate(p, 0, p.n, A, D2, seed, 0) for p in plans]
    O = pl.concat([s[0] for s in sims])
    I = pl.concat([s[1] for s in sims])
    R = pl.concat([s[2] for s in sims])
    C = pl.concat([_customers(p, 0, p.n_cust, A, D1, seed, 0) for p in plans])
    S = pl.concat([_suppressions(C.filter(pl.col("shop_id") == p.shop.shop_id),
                                 _rng(seed, p.shop.idx, 30, 0), A) for p in plans])
    shop_col = pl.col("shop_id")

    # products: the catalogue, then a few new arrivals (never ordered yet)
    w.write("products", pl.concat([p.products for p in plans]), D1, "ndjson")
    new = [_products(p.shop, 2, _rng(seed, p.shop.idx, 3), p.prod_w, first=p.products.height)[0]
           for p in plans]
    w.write("products", pl.concat(new), D2, "ndjson")

    # customers: initial CSV snapshot (offsets), later CSV with new sign-ups and changes, bad row
    c1 = _customers_out(C.filter(pl.col("registered") <= D1), initial=True)
    w.write("customers", _format_ts(c1, _TS_COLS["customers"], "offset", shop_col), D1, "csv")
    c2 = _customers_out(C.filter((pl.col("registered") > D1) | pl.col("changed")), initial=False)
    w.write("customers", _format_ts(c2, _TS_COLS["customers"], "offset", shop_col), A, "csv")

    # orders: parquet snapshot, CSV (offsets), NDJSON (naive local), stale repeats, bad, corrupt
    s1 = _orders_state(O, D1)
    w.write("orders", _orders_out(s1), D1, "parquet")
    s2 = _orders_state(O, D2).filter(pl.col("updated") > D1)
    w.write("orders", _format_ts(_orders_out(s2), _TS_COLS["orders"], "offset", shop_col), D2, "csv")
    s3 = _orders_out(_orders_state(O, A).filter(pl.col("updated") > D2))
    amb = _ambiguous_local(s3, _TS_COLS["orders"])
    w.write("orders", _format_ts(s3.filter(~amb), _TS_COLS["orders"], "naive", shop_col), A, "ndjson")
    if amb.any():
        w.write("orders", _format_ts(s3.filter(amb), _TS_COLS["orders"], "offset", shop_col), A, "csv",
                tag="dst")
    # stale drop: orders that changed after the first snapshot, repeated with their older state
    changed_ids = pl.concat([s2.select("order_id"), s3.select("order_id")]).unique()
    old_rows = s1.join(changed_ids, on="order_id", how="semi").sort("order_id")
    final_upd = _orders_state(O, A).select("order_id", pl.col("updated").alias("_final"))
    mid_rows = (_orders_state(O, D2).filter(pl.col("created") > D1)
                .join(final_upd, on="order_id")
                .filter(pl.col("updated") < pl.col("_final")).drop("_final").sort("order_id"))
    n_old = int(np.clip(old_rows.height // 10, min(old_rows.height, 8), 300))
    n_mid = int(np.clip(mid_rows.height // 10, min(mid_rows.height, 4), 100))
    stale = pl.concat([
        old_rows[np.sort(rng.choice(old_rows.height, n_old, replace=False))],
        mid_rows[np.sort(rng.choice(mid_rows.height, n_mid, replace=False))],
    ])
    w.write("orders", _format_ts(_orders_out(stale), _TS_COLS["orders"], "offset", shop_col), A, "csv",
            tag="stale")

    # order items: parquet with the first snapshot's orders, CSV for the later ones
    w.write("order_items", _items_out(I.filter(pl.col("created") <= D1)), D1, "parquet")
    w.write("order_items", _items_out(I.filter((pl.col("created") > D1) & (pl.col("created") <= D2))),
            D2, "csv")
    w.write("order_items", _items_out(I.filter((pl.col("created") > D2) & (pl.col("created") <= A))),
            A, "csv")

    # reviews (CSV, offsets)
    r = (R.sort("created", "order_id")
         .with_columns(pl.col("order_id").str.extract(r"^([^-]+)-").alias("_shop")))
    for lo, hi, t in ((None, D2, D2), (D2, A, A)):
        part = r.filter((pl.col("created") > lo) if lo is not None else pl.lit(True),
                        pl.col("created") <= hi)
        out = _reviews_out(part).with_columns(part["_shop"])
        w.write("reviews", _format_ts(out, ["created_at"], "offset", pl.col("_shop"))
                .select(ENTITY_COLUMNS["reviews"]), t, "csv")

    # suppressions (CSV, UTC with Z)
    sp = _suppressions_out(S)
    w.write("suppressions", _format_ts(sp.filter(pl.Series(S["created"].to_numpy() <= D1)),
                                       ["created_at"], "zulu", None), D1, "csv")
    w.write("suppressions", _format_ts(sp.filter(pl.Series(S["created"].to_numpy() > D1)),
                                       ["created_at"], "zulu", None), A, "csv")

    # deliberately bad rows, one CSV drop per entity, and one corrupt file
    _write_bad(w, O, I, R, C, A)
    w.raw("orders", _rng(seed, 98).bytes(4096), A, "parquet", "corrupt")


def _write_bad(w: _Writer, O: pl.DataFrame, I: pl.DataFrame, R: pl.DataFrame, C: pl.DataFrame,
               A: int) -> None:
    local = datetime.fromtimestamp(A - 6 * HOUR, tz=timezone(timedelta(hours=8)))
    ts = local.strftime("%Y-%m-%dT%H:%M:%S+08:00")
    early = (local - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+08:00")
    s1c = O.filter(pl.col("shop_id") == "s1")["customer_id"][:5].to_list()
    S = pl.String

    def row(oid, shop, cust, created, paid, amount):
        return {"order_id": oid, "shop_id": shop, "customer_id": cust, "platform": "taobao",
                "created_at": created, "paid_at": paid, "shipped_at": None, "delivered_at": None,
                "closed_at": None, "refunded_at": None, "total_amount": amount, "currency": "CNY",
                "receiver_city": "上海", "updated_at": paid or created}

    bad_orders = pl.DataFrame([
        row("s1-obad01", "s1", s1c[0], ts, ts, "-12.50"),          # negative total_amount
        row("s1-obad02", "s1", s1c[1], "yesterday", None, "59.00"),  # unparsable created_at
        row("s1-obad03", "s1", s1c[2], ts, early, "88.00"),        # paid_at before created_at
        row("s9-o000001", "s9", "s9-c00001", ts, None, "20.00"),   # unknown shop
        row("", "s1", s1c[3], ts, None, "35.00"),                  # empty order_id
    ], schema={c: S for c in ENTITY_COLUMNS["orders"]})
    bad_orders = bad_orders.with_columns(updated_at=pl.when(pl.col("created_at") == "yesterday")
                                         .then(pl.lit(ts)).otherwise(pl.col("updated_at")))
    w.write("orders", bad_orders, A, "csv", tag="bad", bad=True)

    oid = I["order_id"][0]
    w.write("order_items", pl.DataFrame([{"order_id": oid, "line_no": 99, "product_id":
                                          I["product_id"][0], "quantity": 0, "unit_price": "9.90"}],
                                        schema={"order_id": S, "line_no": pl.Int32, "product_id": S,
                                                "quantity": pl.Int32, "unit_price": S}),
            A, "csv", tag="bad", bad=True)
    w.write("reviews", pl.DataFrame([{"order_id": R["order_id"][0], "created_at": ts, "rating": 7,
                                      "text": "超级好!!!"}],
                                    schema={"order_id": S, "created_at": S, "rating": pl.Int32, "text": S}),
            A, "csv", tag="bad", bad=True)
    w.write("customers", pl.DataFrame([{"customer_id": "s2-cbad01", "shop_id": "s2", "name": "Gold Member",
                                        "phone": None, "email": "gold.member@example.com",
                                        "city": "Boston", "member_level": "gold",
                                        "registered_at": "2025-01-05T10:00:00-05:00", "opt_out": "false",
                                        "updated_at": "2025-01-05T10:00:00-05:00"}],
                                      schema={c: S for c in ENTITY_COLUMNS["customers"]}),
            A, "csv", tag="bad", bad=True)
