#!/usr/bin/env python3
"""Validates policy files against the JSON Schema with a real validator (python-jsonschema).

  validate_policies.py SCHEMA FILE.toml...

Reads each file with Python's own TOML parser (tomllib) and prints one JSON line per file:
{"file": FILE, "errors": ["<path>: <message>", ...]} (no errors: the file is valid). Exits 0 when
every file could be read and checked, whatever the verdicts: the caller decides what each should be.
"""
import json
import sys
import tomllib

import jsonschema


def main():
    schema_path, files = sys.argv[1], sys.argv[2:]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    for path in files:
        with open(path, "rb") as f:
            policy = tomllib.load(f)
        errors = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(policy), key=lambda e: list(map(str, e.absolute_path)))
        ]
        print(json.dumps({"file": path, "errors": errors}))


if __name__ == "__main__":
    main()
