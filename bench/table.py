"""The table every benchmark prints: measure, value, ratio, target."""


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    print(f"\n{'measure':<{width}}  {'value':>{value_width}}  {'ratio':>7}  target")
    for name, value, ratio, target in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {ratio:>7}  {target}")
