"""One config model: ``config/config.schema.yaml`` holds every default and rule, and :func:`load` is the
one loader.

Layers, each deep-merged over the one before: the schema's defaults, the workflow's
``config/config.yaml`` (the same values, checked by a test), a site file (``--config FILE``) and a
run's own values (``run.yaml``, or a tick's overrides). The result is validated by the schema and by
the conversion options' own checks (``conversion.CogOptions``), so both always agree, and a bad value is
one line naming the key, the value and the rule: a tick refuses it before it claims anything.
Codec and resampling names are normalised first (``lzw`` is ``LZW``, as ``gdal_translate -co
compress=lzw`` accepts).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from cog_pipeline import WORKFLOW_DIR
from cog_pipeline.core.errors import PipelineError

SCHEMA_FILE = WORKFLOW_DIR / "config" / "config.schema.yaml"
DEFAULTS_FILE = WORKFLOW_DIR / "config" / "config.yaml"


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The parsed config schema."""
    return yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))


def schema_defaults(node: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every ``default`` of the schema, as a config mapping (nested objects included)."""
    node = schema() if node is None else node
    out: dict[str, Any] = {}
    for name, prop in node.get("properties", {}).items():
        if "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        elif prop.get("type") == "object" and "properties" in prop:
            nested = schema_defaults(prop)
            if nested:
                out[name] = nested
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``, nested mappings merged key by key (as Snakemake merges config
    files); neither argument is changed."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_file(path: Path | str, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from ``path`` (PipelineError naming the file if it is missing or not a mapping)."""
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PipelineError(f"{what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(f"{what} {path} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def _normalise(config: dict[str, Any]) -> None:
    """Names GDAL takes in any case, written the one way the schema lists them (in place)."""
    cog = config.get("cog")
    if isinstance(cog, dict):
        for key, case in (("compress", str.upper), ("predictor", str.upper), ("overview_resampling", str.lower)):
            value = cog.get(key)
            if isinstance(value, bool) and key == "predictor":  # YAML 1.1 reads an unquoted NO / YES as a bool
                cog[key] = "YES" if value else "NO"
            elif isinstance(value, str):
                cog[key] = case(value.strip())
        if isinstance(cog.get("num_threads"), int) and not isinstance(cog["num_threads"], bool):
            cog["num_threads"] = str(cog["num_threads"])


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """``config`` normalised and checked: PipelineError with the key, the value and the rule otherwise."""
    config = copy.deepcopy(config)
    _normalise(config)
    import jsonschema  # here: a job reads the config its tick validated (about 0.1 s of start-up each)

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PipelineError(f"{source}: {where}: {error.message}{more}")
    from cog_pipeline.core.conversion import cog_options_from_config, jpeg_options_from_config  # typed checks

    try:
        cog_options_from_config(config.get("cog", {}))
        jpeg_options_from_config(config.get("jpeg", {}))
    except ValueError as exc:
        raise PipelineError(f"{source}: {exc}") from None
    return config


def load(
    site_file: Path | str | None = None, run: dict[str, Any] | None = None, source: str | None = None
) -> dict[str, Any]:
    """The validated config: schema defaults <- config/config.yaml <- ``site_file`` <- ``run``."""
    config = merge(schema_defaults(), read_file(DEFAULTS_FILE, "workflow config"))
    if site_file:
        config = merge(config, read_file(site_file))
    if run:
        config = merge(config, run)
    return validate(config, source or (f"config (with {site_file})" if site_file else "config"))


def qa_enabled(config: Mapping[str, Any]) -> bool:
    """``qa.enabled``: the run has a delivery QA step before conversion (default false; work/qa_step.py)."""
    return bool((config.get("qa") or {}).get("enabled", False))
