#!/usr/bin/env python3
"""Prints every PromQL query of grafana-dashboard.json as a recording rule, so
that `promtool check rules` parses them (make alerts-test). Grafana's variables
become what they stand for at query time ($job a regex, $__rate_interval a range).
"""
import json
import sys
from pathlib import Path


def queries(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from queries(value)


def main():
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("grafana-dashboard.json"))
    exprs = list(queries(json.loads(path.read_text())))
    if not exprs:
        sys.exit(f"{path}: no queries")
    print("groups:\n  - name: grafana-dashboard\n    rules:")
    for i, expr in enumerate(exprs):
        expr = expr.replace("$__rate_interval", "5m").replace("$job", ".*")
        print(f"      - record: dashboard:query{i}\n        expr: {json.dumps(expr)}")


if __name__ == "__main__":
    main()
