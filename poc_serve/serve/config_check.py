"""Strict check of a Serve config file: every key must be one Ray Serve or poc_serve knows.

Ray Serve drops unknown keys silently, so a misspelt ``num_replica`` would deploy one replica
without a word. ``python -m poc_serve.serve.config_check serve_config.yaml`` lists such keys.
"""

from __future__ import annotations

import sys
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from ray.serve.schema import ServeDeploySchema

from poc_serve.serve.config import PoCAppArgs

POC_IMPORT_PATH = "poc_serve.app:build_app"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _walk(data: Any, model: type[BaseModel], where: str, errors: list[str]) -> None:
    if isinstance(data, list):
        for i, item in enumerate(data):
            _walk(item, model, f"{where}[{i}]", errors)
        return
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            errors.append(f"{path}: unknown key for {model.__name__}")
            continue
        for sub in _models_in(fields[key].annotation):
            _walk(value, sub, path, errors)


def check_serve_config(config: dict[str, Any]) -> list[str]:
    """Every unknown key of ``config`` (a parsed Serve config) and every invalid poc_serve ``args``."""
    errors: list[str] = []
    _walk(config, ServeDeploySchema, "", errors)
    for i, app in enumerate(config.get("applications") or []):
        if app.get("import_path") == POC_IMPORT_PATH:
            try:
                PoCAppArgs.model_validate(app.get("args") or {})
            except ValidationError as exc:
                errors += [f"applications[{i}].args.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    if not errors:
        try:
            ServeDeploySchema.model_validate(config)
        except Exception as exc:  # Ray's own validation (types, ranges)
            errors.append(str(exc))
    return errors


def main(paths: list[str]) -> int:
    """Check each file; print the problems; exit status 1 if any."""
    bad = 0
    for path in paths:
        with open(path) as f:
            errors = check_serve_config(yaml.safe_load(f))
        for e in errors:
            print(f"{path}: {e}")
        bad += bool(errors)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
