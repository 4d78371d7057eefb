"""The courier brands that share the county's co-delivery network."""

BRANDS: tuple[str, ...] = ("EMS", "ZTO", "YTO", "STO", "YUNDA", "JT", "SF", "JD")
BRAND_NAMES: dict[str, str] = {"EMS": "中国邮政", "ZTO": "中通", "YTO": "圆通", "STO": "申通",
                               "YUNDA": "韵达", "JT": "极兔", "SF": "顺丰", "JD": "京东"}
